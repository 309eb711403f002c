//! `sagaflow`: run a state machine locally against stub participants,
//! validate a definition, or work with a deployment over NATS (run a
//! coordinator, deploy, start, describe, list, stop, redrive executions,
//! answer task tokens, serve stub participants).
//!
//! Exit codes: 0 — the command did its job (for `run` and `start --wait`:
//! an execution ran, whatever its status; for `validate`: the definition is
//! valid); 2 — the definition is invalid; 3 — anything else (usage errors,
//! unreadable or malformed files, missing stubs, runtime errors, API errors,
//! printed as `error: CODE: message`).

mod bench;
mod cluster;
mod http;

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::{Context, anyhow, bail};
use clap::{Parser, Subcommand};
use serde_json::Value;

use sagaflow_asl::parse::{ValidationError, parse_definition_bytes};
use sagaflow_coordinator::local::{RunReport, RunRequest, RunStatus, run_blocking_with_handlers};
use sagaflow_coordinator::resource::HTTP_INVOKE_HANDLER;
use sagaflow_participant::stubs::{Stubs, StubsError};

/// mimalloc: the interpreter allocates many small values; it runs about a
/// third faster on it than on the system allocator (see the README's
/// benchmark section).
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// The definition is invalid.
const EXIT_INVALID: u8 = 2;
/// Usage, file or runtime error.
const EXIT_ERROR: u8 = 3;

#[derive(Debug, Parser)]
#[command(
    name = "sagaflow",
    version,
    about = "Sagaflow: sagas in the Amazon States Language"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run one execution in-process against stub participants and print the
    /// report (one line of JSON).
    Run(RunArgs),
    /// Check a definition and list every problem with its location.
    Validate(ValidateArgs),
    /// Run a coordinator (engine, API service, triggers) until Ctrl-C.
    Coordinator(cluster::CoordinatorArgs),
    /// Store a state machine definition as a new version.
    Deploy(cluster::DeployArgs),
    /// Start an execution.
    Start(cluster::StartArgs),
    /// Describe an execution (ARN or MACHINE:NAME) or a state machine (NAME).
    Describe(cluster::DescribeArgs),
    /// An execution's history, as Step Functions-style events.
    History(cluster::ExecArgs),
    /// List executions.
    List(cluster::ListArgs),
    /// List state machines.
    Machines(cluster::MachinesArgs),
    /// Stop an execution.
    Stop(cluster::StopArgs),
    /// Run a failed, timed-out or aborted execution again from where it stopped.
    Redrive(cluster::ExecArgs),
    /// Complete a `.waitForTaskToken` task.
    SendTaskSuccess(cluster::TaskSuccessArgs),
    /// Fail a `.waitForTaskToken` task.
    SendTaskFailure(cluster::TaskFailureArgs),
    /// Heartbeat a `.waitForTaskToken` task.
    SendTaskHeartbeat(cluster::TaskHeartbeatArgs),
    /// Serve the stubs of a stubs file as participants over NATS until Ctrl-C.
    StubParticipants(cluster::StubParticipantsArgs),
    /// Benchmark the travel-booking saga over NATS against the raw NATS floor.
    Bench(bench::BenchArgs),
}

#[derive(Debug, clap::Args)]
struct RunArgs {
    /// The state machine definition (ASL JSON).
    #[arg(long, value_name = "DEF.json")]
    definition: PathBuf,
    /// The execution input: inline JSON, or a file to read when the argument
    /// is not JSON. Default: {}.
    #[arg(long, value_name = "IN.json|JSON")]
    input: Option<String>,
    /// The stubs file (see docs/local-runner.md).
    #[arg(long, value_name = "STUBS.json")]
    stubs: PathBuf,
    /// `$$.Execution.Name` (default: a UUID derived from the seed).
    #[arg(long, value_name = "NAME")]
    execution_name: Option<String>,
    /// Run on a virtual clock: Wait states, retry backoffs, timeouts and stub
    /// delays take no real time.
    #[arg(long)]
    virtual_clock: bool,
    /// The execution's random seed (States.UUID, States.MathRandom, jitter).
    #[arg(long, value_name = "N")]
    seed: Option<u64>,
    /// The execution's start time (RFC 3339), e.g. 2024-01-01T00:00:00Z.
    #[arg(long, value_name = "TIMESTAMP")]
    start_time: Option<String>,
    /// HTTP Tasks are served by the real HTTP handler unless the stubs file
    /// stubs them (key `arn:aws:states:::http:invoke` or `sagaflow_http_invoke`).
    #[command(flatten)]
    http: http::HttpArgs,
}

#[derive(Debug, clap::Args)]
struct ValidateArgs {
    /// The state machine definition (ASL JSON).
    #[arg(value_name = "DEF.json")]
    definition: PathBuf,
    /// Print {"valid": bool, "errors": [...]} instead of text.
    #[arg(long)]
    json: bool,
}

/// Logging and, when `OTEL_EXPORTER_OTLP_ENDPOINT` is set, OpenTelemetry
/// export (see docs/tracing.md). A bad `OTEL_*` setting is reported and
/// the command runs without export.
fn init_telemetry(command: &Command) -> Option<sagaflow_telemetry::TelemetryGuard> {
    let service = match command {
        Command::Coordinator(_) => "sagaflow-coordinator",
        Command::StubParticipants(_) => "sagaflow-participants",
        _ => "sagaflow",
    };
    match sagaflow_telemetry::init(service) {
        Ok(guard) => Some(guard),
        Err(e) => {
            // Logging is set up all the same.
            tracing::warn!(error = %e, "telemetry is off");
            None
        }
    }
}

/// The environment variables the options read. An empty one is taken as
/// unset, as the `nats` CLI takes it (clap would take `NATS_URL=` for an
/// empty URL instead of the default, and `NATS_CA=` for a missing value).
const OPTION_VARIABLES: [&str; 11] = [
    "NATS_URL",
    "NATS_CREDS",
    "NATS_USER",
    "NATS_PASSWORD",
    "NATS_TOKEN",
    "NATS_NKEY",
    "NATS_INBOX_PREFIX",
    "NATS_CA",
    "NATS_CERT",
    "NATS_KEY",
    "SAGAFLOW_HTTP_CONNECTIONS",
];

fn main() -> ExitCode {
    for name in OPTION_VARIABLES {
        if std::env::var_os(name).is_some_and(|v| v.is_empty()) {
            // SAFETY: first thing in `main`, before any thread is started
            // (no runtime, no other thread reads the environment yet).
            unsafe { std::env::remove_var(name) };
        }
    }
    sagaflow_http::install_crypto_provider();
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(e) => {
            let _ = e.print();
            // --help and --version are not errors; every usage error exits 3
            // (clap's default, 2, means "invalid definition" here).
            return if e.use_stderr() {
                ExitCode::from(EXIT_ERROR)
            } else {
                ExitCode::SUCCESS
            };
        }
    };
    let _telemetry = init_telemetry(&cli.command);
    let result = match cli.command {
        Command::Run(args) => run(args),
        Command::Validate(args) => validate(args),
        Command::Coordinator(args) => cluster::block_on(cluster::coordinator(args)),
        Command::Deploy(args) => cluster::block_on(cluster::deploy(args)),
        Command::Start(args) => cluster::block_on(cluster::start(args)),
        Command::Describe(args) => cluster::block_on(cluster::describe(args)),
        Command::History(args) => cluster::block_on(cluster::history(args)),
        Command::List(args) => cluster::block_on(cluster::list(args)),
        Command::Machines(args) => cluster::block_on(cluster::machines(args)),
        Command::Stop(args) => cluster::block_on(cluster::stop(args)),
        Command::Redrive(args) => cluster::block_on(cluster::redrive(args)),
        Command::SendTaskSuccess(args) => cluster::block_on(cluster::send_task_success(args)),
        Command::SendTaskFailure(args) => cluster::block_on(cluster::send_task_failure(args)),
        Command::SendTaskHeartbeat(args) => cluster::block_on(cluster::send_task_heartbeat(args)),
        Command::StubParticipants(args) => cluster::block_on(cluster::stub_participants(args)),
        Command::Bench(args) => cluster::block_on(bench::bench(args)),
    };
    match result {
        Ok(code) => code,
        Err(e) => {
            let _ = writeln!(
                std::io::stderr(),
                "error: {}",
                sagaflow_telemetry::error_report(e.as_ref())
            );
            ExitCode::from(EXIT_ERROR)
        }
    }
}

/// Writes a line to stdout; a closed stdout is not worth a panic.
fn out(line: &str) {
    let mut stdout = std::io::stdout().lock();
    let _ = writeln!(stdout, "{line}");
    let _ = stdout.flush();
}

fn err(line: &str) {
    let _ = writeln!(std::io::stderr(), "{line}");
}

/// Reads a file as UTF-8 text, naming the file in every error.
/// A text file's content, without the UTF-8 byte order mark some Windows
/// editors write at its start (`validate` skips it too).
fn read_text(path: &Path) -> anyhow::Result<String> {
    let mut bytes =
        std::fs::read(path).with_context(|| format!("cannot read {}", path.display()))?;
    skip_bom(&mut bytes);
    String::from_utf8(bytes).map_err(|e| {
        anyhow!(
            "{}: invalid UTF-8 at byte {}",
            path.display(),
            e.utf8_error().valid_up_to()
        )
    })
}

/// Drops a UTF-8 byte order mark at the start.
pub(crate) fn skip_bom(bytes: &mut Vec<u8>) {
    if bytes.starts_with(b"\xEF\xBB\xBF") {
        bytes.drain(..3);
    }
}

/// Parses JSON text, naming its origin with line and column on error.
fn parse_json(text: &str, origin: &str) -> anyhow::Result<Value> {
    serde_json::from_str(text)
        .map_err(|e| anyhow!("{origin}:{}:{}: malformed JSON: {e}", e.line(), e.column()))
}

/// A JSON value given on the command line, inline or as a file name;
/// `what` names the argument in errors (`--input`, `the task result`).
fn read_input(arg: Option<&str>, what: &str) -> anyhow::Result<Value> {
    let Some(arg) = arg else {
        return Ok(Value::Object(serde_json::Map::new()));
    };
    let inline = match serde_json::from_str::<Value>(arg) {
        Ok(v) => return Ok(v),
        Err(e) => e,
    };
    let path = Path::new(arg);
    if !path.exists() {
        bail!(
            "{what}: '{arg}' is neither an existing file nor JSON (at {}:{}: {inline})",
            inline.line(),
            inline.column()
        );
    }
    let text = read_text(path)?;
    parse_json(&text, &path.display().to_string())
}

fn read_stubs(path: &Path) -> anyhow::Result<Stubs> {
    let text = read_text(path)?;
    Stubs::from_str(&text).map_err(|e| match e {
        StubsError::Syntax {
            line,
            column,
            message,
        } => anyhow!(
            "{}:{line}:{column}: malformed JSON: {message}",
            path.display()
        ),
        StubsError::Invalid { pointer, message } => {
            let pointer = if pointer.is_empty() {
                "(root)"
            } else {
                &pointer
            };
            anyhow!("{}: {pointer}: {message}", path.display())
        }
    })
}

/// `FILE:LINE:COL: /pointer [CODE] message` (or `FILE: ...` without a position).
fn located(file: &Path, e: &ValidationError) -> String {
    let pointer = if e.pointer.is_empty() {
        "(root)"
    } else {
        &e.pointer
    };
    match (e.line, e.column) {
        (Some(l), Some(c)) => format!(
            "{}:{l}:{c}: {pointer} [{}] {}",
            file.display(),
            e.code,
            e.message
        ),
        _ => format!("{}: {pointer} [{}] {}", file.display(), e.code, e.message),
    }
}

fn run(args: RunArgs) -> anyhow::Result<ExitCode> {
    let mut bytes = std::fs::read(&args.definition)
        .with_context(|| format!("cannot read {}", args.definition.display()))?;
    skip_bom(&mut bytes);
    let definition = match String::from_utf8(bytes) {
        Ok(text) => text,
        Err(e) => {
            // Not UTF-8: an invalid definition like any other, located.
            let errors = match parse_definition_bytes(e.as_bytes()) {
                Err(invalid) => invalid.errors,
                Ok(_) => Vec::new(),
            };
            return Ok(report_invalid(&args.definition, RunReport::invalid(errors)));
        }
    };
    let input = read_input(args.input.as_deref(), "--input")?;
    let stubs = read_stubs(&args.stubs)?;
    let start_time = args
        .start_time
        .as_deref()
        .map(|t| {
            t.parse::<jiff::Timestamp>()
                .map_err(|e| anyhow!("--start-time '{t}': {e}"))
        })
        .transpose()?;
    let http: std::sync::Arc<dyn sagaflow_participant::Handler> =
        std::sync::Arc::new(args.http.handler()?);
    let report = run_blocking_with_handlers(
        RunRequest {
            definition,
            input,
            stubs,
            execution_name: args.execution_name,
            virtual_clock: args.virtual_clock,
            seed: args.seed,
            start_time,
            stop_on_ctrl_c: true,
        },
        vec![(HTTP_INVOKE_HANDLER.to_string(), http)],
    )?;
    if report.status == RunStatus::InvalidDefinition {
        return Ok(report_invalid(&args.definition, report));
    }
    out(&report.to_json());
    Ok(ExitCode::SUCCESS)
}

/// Prints an INVALID_DEFINITION report (stdout) and its errors (stderr).
fn report_invalid(definition: &Path, report: RunReport) -> ExitCode {
    out(&report.to_json());
    let errors = report.errors.as_deref().unwrap_or_default();
    err(&format!(
        "{}: invalid definition ({} error(s)):",
        definition.display(),
        errors.len()
    ));
    for e in errors {
        err(&located(definition, e));
    }
    ExitCode::from(EXIT_INVALID)
}

fn validate(args: ValidateArgs) -> anyhow::Result<ExitCode> {
    let bytes = std::fs::read(&args.definition)
        .with_context(|| format!("cannot read {}", args.definition.display()))?;
    let errors = match parse_definition_bytes(&bytes) {
        Ok(_) => Vec::new(),
        Err(invalid) => invalid.errors,
    };
    if args.json {
        let body = serde_json::json!({ "valid": errors.is_empty(), "errors": errors });
        out(&body.to_string());
    } else if errors.is_empty() {
        out(&format!("{}: valid", args.definition.display()));
    } else {
        for e in &errors {
            out(&located(&args.definition, e));
        }
    }
    Ok(if errors.is_empty() {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(EXIT_INVALID)
    })
}
