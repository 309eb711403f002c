//! `order-processing`: runs the order-processing workflow (written for AWS
//! Step Functions, unchanged) with Lambda-style participants.
//!
//! - `order-processing` (or `order-processing run`): everything in this
//!   process, no NATS;
//! - `order-processing participants --nats URL`: serves `validate_data`,
//!   `process_order` and `send_notification` over NATS until Ctrl-C;
//! - `order-processing demo --nats URL`: deploys the workflow and runs
//!   orders against a coordinator and participants running elsewhere.

use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, bail};
use clap::{Parser, Subcommand};
use order_processing::{DEFINITION, STATE_MACHINE, Shop, order};
use sagaflow::{Sagaflow, Status};
use serde_json::Value;

const ORDER_TIMEOUT: Duration = Duration::from_secs(60);

#[derive(Debug, Parser)]
#[command(
    name = "order-processing",
    about = "The order-processing workflow (AWS Step Functions ASL, unchanged) with Lambda-style participants.",
    long_about = "The order-processing workflow (AWS Step Functions ASL, unchanged) with Lambda-style \
                  participants.\n\nWithout a command it runs everything in this process with no NATS \
                  (Sagaflow's embedded mode): one valid order, and one without an order_id that \
                  validate_data rejects."
)]
struct Cli {
    #[command(subcommand)]
    command: Option<Command>,
    /// One order's input, as JSON, instead of the two sample orders.
    #[arg(long, global = true, value_name = "JSON")]
    input: Option<String>,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Everything in this process, no NATS (the default).
    Run,
    /// Serve validate_data, process_order and send_notification over NATS until Ctrl-C.
    Participants {
        #[command(flatten)]
        nats: NatsArgs,
    },
    /// Deploy the workflow and run orders over NATS.
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
    sagaflow::app::run_app("order-processing", || run(cli))
}

async fn run(cli: Cli) -> anyhow::Result<ExitCode> {
    let orders = match &cli.input {
        Some(text) => vec![serde_json::from_str::<Value>(text).context("--input is not JSON")?],
        None => {
            let run = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.as_millis() % 1_000_000)
                .unwrap_or(0);
            vec![order(Some(&format!("order-{run:06}"))), order(None)]
        }
    };
    let shop = Arc::new(Shop::new(true));
    let (saga, label) = match &cli.command {
        None | Some(Command::Run) => (
            order_processing::register(Sagaflow::builder(), &shop)
                .state_machine(STATE_MACHINE, DEFINITION)
                .build()
                .await?,
            "embedded: coordinator and participants in this process, no NATS".to_string(),
        ),
        Some(Command::Participants { nats }) => {
            return participants(&shop, nats).await;
        }
        Some(Command::Demo {
            nats,
            with_participants,
        }) => {
            let mut builder = Sagaflow::builder()
                .nats_url(Some(&nats.nats))
                .run_coordinator(nats.with_coordinator)
                .serve_handlers(*with_participants);
            if *with_participants {
                builder = order_processing::register(builder, &shop);
            }
            let saga = builder
                .build()
                .await
                .with_context(|| format!("cannot reach Sagaflow on {}", nats.nats))?;
            saga.deploy_when_ready(STATE_MACHINE, DEFINITION, COORDINATOR_PATIENCE).await.context(
                "cannot deploy the workflow (is a coordinator running? `sagaflow coordinator --nats URL`)",
            )?;
            (saga, format!("distributed over NATS at {}", nats.nats))
        }
    };
    println!("Sagaflow order processing — {label}");
    let mut lines = Vec::new();
    let mut as_expected = true;
    for input in &orders {
        let id = input
            .get("order_id")
            .and_then(Value::as_str)
            .unwrap_or("(no order_id)")
            .to_string();
        println!("\n▶ order {id}");
        let execution = saga.start(STATE_MACHINE, input.clone(), None).await?;
        let result = execution.wait(ORDER_TIMEOUT).await?;
        let states = execution.states_entered().await?;
        let trace = match &result.trace_id {
            Some(t) => {
                let ui = std::env::var("JAEGER_UI")
                    .unwrap_or_else(|_| "http://localhost:16686".to_string());
                format!("\n    trace: {t} (Jaeger: {ui}/trace/{t})")
            }
            None => String::new(),
        };
        let line = match result.status {
            Status::Succeeded => {
                let out = result.output.unwrap_or_default();
                format!(
                    "order {id}: SUCCEEDED — status {}, total {}, notified {}",
                    out["status"].as_str().unwrap_or("?"),
                    out["total"],
                    out.pointer("/notification/to")
                        .and_then(Value::as_str)
                        .unwrap_or("?")
                )
            }
            status => format!(
                "order {id}: {} — {}: {}",
                status.as_str(),
                result.error.as_deref().unwrap_or("?"),
                result.cause.as_deref().unwrap_or("")
            ),
        };
        // A valid order succeeds; one without order_id fails validation.
        let expected = if input.get("order_id").is_some() {
            result.status == Status::Succeeded
        } else {
            result.status == Status::Failed && result.error.as_deref() == Some("ValidationError")
        };
        as_expected &= expected;
        lines.push(format!("{line}\n    states: {}{trace}", states.join(" → ")));
    }
    println!("\nSummary");
    for l in &lines {
        println!("  {l}");
    }
    saga.shutdown().await;
    if cli.input.is_none() && !as_expected {
        println!("  the sample orders did not end as expected");
        return Ok(ExitCode::FAILURE);
    }
    Ok(ExitCode::SUCCESS)
}

async fn participants(shop: &Arc<Shop>, nats: &NatsArgs) -> anyhow::Result<ExitCode> {
    if nats.nats.is_empty() {
        bail!("--nats is empty");
    }
    let saga = order_processing::register(Sagaflow::builder(), shop)
        .nats_url(Some(&nats.nats))
        .run_coordinator(nats.with_coordinator)
        .build()
        .await
        .with_context(|| format!("cannot serve the participants on {}", nats.nats))?;
    println!(
        "order-processing participants serving validate_data, process_order, send_notification on {}; Ctrl-C to stop",
        nats.nats
    );
    // Ctrl-C, or SIGTERM from `docker stop`.
    sagaflow::app::stop_signal()
        .await
        .context("cannot listen for Ctrl-C or SIGTERM")?;
    saga.shutdown().await;
    Ok(ExitCode::SUCCESS)
}
