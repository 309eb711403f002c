//! `loan-approval`: runs the loan approval saga.
//!
//! - `loan-approval` (or `loan-approval run`): everything in this process,
//!   no NATS; the manual review is answered through the library
//!   (`--auto-review approve|reject`, default approve);
//! - `loan-approval participants --nats URL`: serves the six participants
//!   over NATS until Ctrl-C;
//! - `loan-approval demo --nats URL`: deploys the saga and runs
//!   applications against a coordinator and participants running
//!   elsewhere; a manual review waits for a person
//!   (`sagaflow send-task-success TOKEN JSON`), or `--auto-review` answers it.

use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, bail};
use clap::{Parser, Subcommand, ValueEnum};
use loan_approval::{Bank, DEFINITION, REJECTED, STATE_MACHINE, application, review_token_in};
use sagaflow::{Execution, ExecutionResult, Mode, Sagaflow, Status};
use serde_json::{Value, json};

/// How long an application may take when nobody has to answer.
const AUTOMATIC: Duration = Duration::from_secs(60);
/// How long the demo waits for a person to answer a review.
const BY_HAND: Duration = Duration::from_secs(15 * 60);

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
enum Review {
    Approve,
    Reject,
}

#[derive(Debug, Parser)]
#[command(
    name = "loan-approval",
    about = "The loan approval saga: credit check, a Choice on the score, a manual review by callback token, a reversible disbursement.",
    long_about = "The loan approval saga: validate, check credit, decide on the score (reject, \
                  approve, or ask a loan officer through a callback token), disburse and notify; a \
                  disbursement whose notification fails for good is reversed.\n\nWithout a command it \
                  runs everything in this process with no NATS (Sagaflow's embedded mode)."
)]
struct Cli {
    #[command(subcommand)]
    command: Option<Command>,
    #[command(flatten)]
    apps: AppArgs,
}

#[derive(Debug, clap::Args)]
struct AppArgs {
    /// Answer manual reviews automatically through the library (embedded:
    /// approve unless told otherwise; demo: otherwise a person answers with
    /// `sagaflow send-task-success`).
    #[arg(long, global = true, value_enum)]
    auto_review: Option<Review>,
    /// One application with this credit score (instead of the three
    /// samples: auto-approved, rejected, manual review).
    #[arg(long, global = true)]
    score: Option<u64>,
    /// The amount of that application.
    #[arg(long, global = true, default_value_t = 20_000.0)]
    amount: f64,
    /// The notification service is down for good: approved loans are
    /// disbursed, then reversed.
    #[arg(long, global = true)]
    fail_notification: bool,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Everything in this process, no NATS (the default).
    Run,
    /// Serve the participants over NATS until Ctrl-C.
    Participants {
        #[command(flatten)]
        nats: NatsArgs,
    },
    /// Deploy the saga and run applications over NATS.
    Demo {
        #[command(flatten)]
        nats: NatsArgs,
        /// Also serve the participants in this process.
        #[arg(long)]
        with_participants: bool,
    },
}

#[derive(Debug, clap::Args)]
struct NatsArgs {
    /// The NATS server.
    #[arg(long, env = "NATS_URL", default_value = "nats://127.0.0.1:4222")]
    nats: String,
    /// Also run a coordinator in this process.
    #[arg(long)]
    with_coordinator: bool,
}

/// How long the demo waits for a coordinator to answer (one may be
/// starting at the same time).
const COORDINATOR_PATIENCE: Duration = Duration::from_secs(30);

fn main() -> ExitCode {
    let cli = Cli::parse();
    sagaflow::app::run_app("loan-approval", || run(cli))
}

fn applications(args: &AppArgs) -> Vec<Value> {
    let run = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() % 1_000_000)
        .unwrap_or(0);
    let id = |i: usize| format!("loan-{run:06}-{i}");
    let mut apps = match args.score {
        Some(score) => vec![application(&id(1), "Ada Lovelace", args.amount, score)],
        None => vec![
            application(&id(1), "Ada Lovelace", 20_000.0, 780),
            application(&id(2), "Charles Babbage", 15_000.0, 520),
            application(&id(3), "Mary Somerville", 30_000.0, 650),
        ],
    };
    if args.fail_notification {
        for a in &mut apps {
            a["fail"] = json!("notify");
        }
    }
    apps
}

async fn run(cli: Cli) -> anyhow::Result<ExitCode> {
    if cli.apps.amount.is_nan() || cli.apps.amount <= 0.0 {
        bail!("--amount must be positive");
    }
    let bank = Arc::new(Bank::new(true));
    let (saga, label, auto) = match &cli.command {
        None | Some(Command::Run) => (
            loan_approval::register(Sagaflow::builder(), &bank)
                .state_machine(STATE_MACHINE, DEFINITION)
                .build()
                .await?,
            "embedded: coordinator and participants in this process, no NATS".to_string(),
            // Nobody else can reach an in-process engine: answer here.
            Some(cli.apps.auto_review.unwrap_or(Review::Approve)),
        ),
        Some(Command::Participants { nats }) => return participants(&bank, nats).await,
        Some(Command::Demo {
            nats,
            with_participants,
        }) => {
            let mut builder = Sagaflow::builder()
                .nats_url(Some(&nats.nats))
                .run_coordinator(nats.with_coordinator)
                .serve_handlers(*with_participants);
            if *with_participants {
                builder = loan_approval::register(builder, &bank);
            }
            let saga = builder
                .build()
                .await
                .with_context(|| format!("cannot reach Sagaflow on {}", nats.nats))?;
            saga.deploy_when_ready(STATE_MACHINE, DEFINITION, COORDINATOR_PATIENCE).await.context(
                "cannot deploy the saga (is a coordinator running? `sagaflow coordinator --nats URL`)",
            )?;
            (
                saga,
                format!("distributed over NATS at {}", nats.nats),
                cli.apps.auto_review,
            )
        }
    };
    println!("Sagaflow loan approval — {label}");
    let mut lines = Vec::new();
    let mut ok = true;
    for app in applications(&cli.apps) {
        let id = app["application_id"].as_str().unwrap_or("?").to_string();
        println!(
            "\n▶ application {id}: {} asks for {:.2}, credit score {}",
            app["applicant"].as_str().unwrap_or("?"),
            app["amount"].as_f64().unwrap_or(0.0),
            app["credit_score"]
        );
        let execution = saga.start(STATE_MACHINE, app.clone(), None).await?;
        let result = settle(&saga, &bank, &execution, &id, auto, nats_url(&cli.command)).await?;
        let states = execution.states_entered().await?;
        ok &= matches!(result.status, Status::Succeeded | Status::Failed);
        lines.push(format!(
            "{}\n    states: {}{}",
            summary_line(&id, &result),
            states.join(" → "),
            trace_line(&result)
        ));
    }
    println!("\nSummary");
    for l in &lines {
        println!("  {l}");
    }
    if saga.mode() == Mode::Embedded || bank_is_local(&cli.command) {
        println!(
            "  bank: {:.2} paid out and not reversed",
            bank.outstanding()
        );
    }
    saga.shutdown().await;
    Ok(if ok {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}

/// `\n    trace: ID (Jaeger: URL)` when the execution was traced.
fn trace_line(result: &sagaflow::ExecutionResult) -> String {
    match &result.trace_id {
        Some(t) => {
            let ui =
                std::env::var("JAEGER_UI").unwrap_or_else(|_| "http://localhost:16686".to_string());
            format!("\n    trace: {t} (Jaeger: {ui}/trace/{t})")
        }
        None => String::new(),
    }
}

fn nats_url(command: &Option<Command>) -> Option<&str> {
    match command {
        Some(Command::Demo { nats, .. }) => Some(&nats.nats),
        _ => None,
    }
}

fn bank_is_local(command: &Option<Command>) -> bool {
    matches!(
        command,
        Some(Command::Demo {
            with_participants: true,
            ..
        })
    )
}

fn summary_line(id: &str, result: &ExecutionResult) -> String {
    match (&result.status, &result.output) {
        (Status::Succeeded, Some(out)) => match out["decision"].as_str() {
            Some("APPROVED") => format!(
                "{id}: SUCCEEDED — APPROVED ({}), disbursement {}",
                out.pointer("/review/by")
                    .and_then(Value::as_str)
                    .unwrap_or("reviewed"),
                out["disbursement"].as_str().unwrap_or("?")
            ),
            Some(decision) => format!("{id}: SUCCEEDED — {decision} (score {})", out["score"]),
            None => format!("{id}: SUCCEEDED — {out}"),
        },
        (status, _) => format!(
            "{id}: {} — {}: {}",
            status.as_str(),
            result.error.as_deref().unwrap_or("?"),
            result.cause.as_deref().unwrap_or("")
        ),
    }
}

/// Waits for an application to end, answering (or showing how to answer)
/// its manual review when it asks for one.
async fn settle(
    saga: &Sagaflow,
    bank: &Bank,
    execution: &Execution,
    id: &str,
    auto: Option<Review>,
    nats_url: Option<&str>,
) -> anyhow::Result<ExecutionResult> {
    let limit = if auto.is_some() { AUTOMATIC } else { BY_HAND };
    let deadline = tokio::time::Instant::now() + limit;
    let mut answered = false;
    loop {
        let now = execution.describe().await?;
        if now.status != Status::Running {
            return Ok(now);
        }
        if tokio::time::Instant::now() >= deadline {
            bail!("application {id} did not end within {limit:?}");
        }
        if !answered {
            let token = match saga.mode() {
                Mode::Embedded => bank.review_token(id, Duration::from_millis(200)).await,
                Mode::Distributed => review_token_in(&execution.history().await?),
            };
            if let Some(token) = token {
                answered = true;
                match auto {
                    Some(Review::Approve) => {
                        println!(
                            "  (--auto-review approve: answering through the library: send_task_success)"
                        );
                        saga.send_task_success(
                            &token,
                            json!({"approved": true, "by": "auto-review"}),
                        )
                        .await?;
                    }
                    Some(Review::Reject) => {
                        println!(
                            "  (--auto-review reject: answering through the library: send_task_failure)"
                        );
                        saga.send_task_failure(&token, REJECTED, "rejected by --auto-review")
                            .await?;
                    }
                    None => println!(
                        "  waiting for a loan officer; answer from another terminal:\n    \
                         sagaflow send-task-success --nats {nats} {token} '{{\"approved\": true, \"by\": \"officer\"}}'\n    \
                         sagaflow send-task-failure --nats {nats} {token} --error {REJECTED} --cause 'income too low'",
                        nats = nats_url.unwrap_or("URL"),
                    ),
                }
                continue;
            }
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

async fn participants(bank: &Arc<Bank>, nats: &NatsArgs) -> anyhow::Result<ExitCode> {
    let saga = loan_approval::register(Sagaflow::builder(), bank)
        .nats_url(Some(&nats.nats))
        .run_coordinator(nats.with_coordinator)
        .build()
        .await
        .with_context(|| format!("cannot serve the participants on {}", nats.nats))?;
    println!(
        "loan-approval participants serving validate_application, credit_check, request_review, disburse_funds, notify_applicant, reverse_disbursement on {}; Ctrl-C to stop",
        nats.nats
    );
    // Ctrl-C, or SIGTERM from `docker stop`.
    sagaflow::app::stop_signal()
        .await
        .context("cannot listen for Ctrl-C or SIGTERM")?;
    saga.shutdown().await;
    Ok(ExitCode::SUCCESS)
}
