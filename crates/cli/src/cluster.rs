//! The commands that talk to a deployment over NATS: `coordinator`,
//! `deploy`, `start`, `describe`, `history`, `list`, `machines`, `stop`,
//! `redrive`, `send-task-*` and `stub-participants`.
//!
//! Every one takes `--nats URL` (default: `$NATS_URL`, then
//! `nats://127.0.0.1:4222`), the NATS credential and TLS options of [`Conn`]
//! (`--nats-creds`, `--nats-user`/`--nats-password`, `--nats-token`,
//! `--nats-nkey`, `--nats-inbox-prefix`, `--tls-ca`, `--tls-cert`/`--tls-key`),
//! `--namespace` and `--json` (machine-readable output instead of aligned
//! text).

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Duration;

use anyhow::{Context, anyhow, bail};
use serde_json::Value;

use sagaflow_coordinator::cluster::api::Trigger;
use sagaflow_coordinator::cluster::client::{ApiClient, ApiClientError};
use sagaflow_coordinator::cluster::{Cluster, ClusterOptions};
use sagaflow_protocol::api::{
    ExecutionDescription, ExecutionStatus, StartExecutionRequest, StateMachineVersion,
};
use sagaflow_protocol::{ExecutionRef, Namespace};

use crate::{EXIT_INVALID, out, read_input, read_stubs};

/// Where the deployment is, and how to authenticate to its NATS server.
///
/// The credential options take the environment variables of the `nats`
/// CLI; at most one way to authenticate may be given (user and password,
/// token, nkey seed file, credentials file, or credentials in the URL).
#[derive(Clone, clap::Args)]
pub struct Conn {
    /// The NATS server (`nats://user:password@host:4222` and
    /// `nats://token@host:4222` are accepted; prefer the options below,
    /// which keep secrets out of the process list).
    #[arg(
        long,
        env = "NATS_URL",
        default_value = "nats://127.0.0.1:4222",
        value_name = "URL",
        hide_env_values = true
    )]
    pub nats: String,
    /// NATS credentials file (JWT and nkey seed, as written by `nsc`).
    #[arg(long = "nats-creds", env = "NATS_CREDS", value_name = "FILE")]
    pub nats_creds: Option<PathBuf>,
    /// NATS user (with --nats-password).
    #[arg(long = "nats-user", env = "NATS_USER", value_name = "USER")]
    pub nats_user: Option<String>,
    /// NATS password (prefer the environment variable).
    #[arg(
        long = "nats-password",
        env = "NATS_PASSWORD",
        value_name = "PASSWORD",
        hide_env_values = true
    )]
    pub nats_password: Option<String>,
    /// NATS token (prefer the environment variable).
    #[arg(
        long = "nats-token",
        env = "NATS_TOKEN",
        value_name = "TOKEN",
        hide_env_values = true
    )]
    pub nats_token: Option<String>,
    /// File holding an nkey user seed (`SU...`).
    #[arg(long = "nats-nkey", env = "NATS_NKEY", value_name = "FILE")]
    pub nats_nkey: Option<PathBuf>,
    /// Prefix of this connection's reply subjects (default `_INBOX`), to
    /// match the user's subscribe permissions.
    #[arg(
        long = "nats-inbox-prefix",
        env = "NATS_INBOX_PREFIX",
        value_name = "PREFIX"
    )]
    pub nats_inbox_prefix: Option<String>,
    /// PEM file of the CAs that sign the server's certificate; requires TLS.
    #[arg(long = "tls-ca", env = "NATS_CA", value_name = "FILE")]
    pub tls_ca: Option<PathBuf>,
    /// PEM client certificate, for servers that verify clients (with --tls-key).
    #[arg(
        long = "tls-cert",
        env = "NATS_CERT",
        value_name = "FILE",
        requires = "tls_key"
    )]
    pub tls_cert: Option<PathBuf>,
    /// PEM private key of the client certificate.
    #[arg(
        long = "tls-key",
        env = "NATS_KEY",
        value_name = "FILE",
        requires = "tls_cert"
    )]
    pub tls_key: Option<PathBuf>,
    /// The deployment's namespace (prefix of its subjects, streams and buckets).
    #[arg(long, default_value = "sagaflow", value_name = "NAME")]
    pub namespace: String,
    /// Print JSON instead of text.
    #[arg(long)]
    pub json: bool,
}

impl std::fmt::Debug for Conn {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Conn")
            .field("nats", &self.display_url())
            .field("options", &self.connect_options())
            .field("namespace", &self.namespace)
            .field("json", &self.json)
            .finish()
    }
}

impl Conn {
    fn namespace(&self) -> anyhow::Result<Namespace> {
        Namespace::new(&self.namespace).map_err(|e| anyhow!("--namespace: {e}"))
    }

    /// The URL with any password or token masked, for messages.
    fn display_url(&self) -> String {
        sagaflow_nats::connect::redact_url(&self.nats)
    }

    /// The credential and TLS options.
    fn connect_options(&self) -> sagaflow_nats::ConnectOptions {
        sagaflow_nats::ConnectOptions {
            name: Some(format!("sagaflow-cli {}", env!("CARGO_PKG_VERSION"))),
            user: self.nats_user.clone(),
            password: self.nats_password.clone(),
            token: self.nats_token.clone(),
            nkey_file: self.nats_nkey.clone(),
            creds_file: self.nats_creds.clone(),
            tls_ca_file: self.tls_ca.clone(),
            tls_cert_file: self.tls_cert.clone(),
            tls_key_file: self.tls_key.clone(),
            inbox_prefix: self.nats_inbox_prefix.clone(),
            ..sagaflow_nats::ConnectOptions::default()
        }
    }

    async fn connect(&self) -> anyhow::Result<async_nats::Client> {
        Ok(sagaflow_nats::connect_with(&self.nats, &self.connect_options()).await?)
    }

    async fn api(&self) -> anyhow::Result<ApiClient> {
        let ns = self.namespace()?;
        Ok(ApiClient::new(self.connect().await?, ns))
    }
}

/// `sagaflow coordinator`.
#[derive(Debug, clap::Args)]
pub struct CoordinatorArgs {
    #[command(flatten)]
    conn: Conn,
    /// Partitions executions are spread over (the same on every coordinator).
    #[arg(long, default_value_t = 16, value_name = "N")]
    partitions: u32,
    /// This coordinator's id (default: random): letters, digits and `-_=.`.
    #[arg(long, value_name = "ID")]
    id: Option<String>,
    /// Start an execution of MACHINE for every message on SUBJECT.
    #[arg(long = "trigger", value_name = "SUBJECT=MACHINE")]
    triggers: Vec<String>,
    /// Replicas of the streams and buckets it creates (3 in a NATS cluster).
    #[arg(long, default_value_t = 1, value_name = "N")]
    replicas: usize,
    /// Delete an ended execution (history and index entry) this many hours
    /// after it stopped; 0 keeps everything. Running executions are never
    /// deleted. Give every coordinator the same value.
    #[arg(long, default_value = "0", value_name = "HOURS", value_parser = parse_hours)]
    retention_hours: Duration,
    /// HTTP Tasks (`arn:aws:states:::http:invoke`): this coordinator serves
    /// them with an in-process worker unless --no-http-worker.
    #[command(flatten)]
    http: crate::http::HttpArgs,
    /// Do not serve HTTP Tasks here (another process does).
    #[arg(long)]
    no_http_worker: bool,
}

/// A number of hours (fractions allowed), 0 or more.
fn parse_hours(text: &str) -> Result<Duration, String> {
    let hours: f64 = text
        .trim()
        .parse()
        .map_err(|_| format!("'{text}' is not a number of hours"))?;
    if !hours.is_finite() || hours < 0.0 {
        return Err(format!("'{text}': give 0 or a positive number of hours"));
    }
    Duration::try_from_secs_f64(hours * 3600.0).map_err(|e| format!("'{text}': {e}"))
}

/// `sagaflow deploy`.
#[derive(Debug, clap::Args)]
pub struct DeployArgs {
    #[command(flatten)]
    conn: Conn,
    /// The state machine's name.
    name: String,
    /// The definition (ASL JSON).
    #[arg(value_name = "DEF.json")]
    definition: PathBuf,
}

/// `sagaflow start`.
#[derive(Debug, clap::Args)]
pub struct StartArgs {
    #[command(flatten)]
    conn: Conn,
    /// The state machine's name.
    machine: String,
    /// The input: inline JSON, or a file. Default: {}.
    #[arg(long, value_name = "JSON|FILE")]
    input: Option<String>,
    /// The execution's name (default: a fresh unique one). Starting the
    /// same name with the same input again does nothing.
    #[arg(long, value_name = "EXEC")]
    name: Option<String>,
    /// The version to run (default: the latest).
    #[arg(long, value_name = "N")]
    version: Option<u64>,
    /// Wait for the execution to end and print its description.
    #[arg(long)]
    wait: bool,
    /// With --wait: give up after this many seconds.
    #[arg(long, value_name = "SECS", default_value_t = 300, requires = "wait")]
    timeout: u64,
}

/// A command naming one execution.
#[derive(Debug, clap::Args)]
pub struct ExecArgs {
    #[command(flatten)]
    conn: Conn,
    /// The execution: its ARN or MACHINE:NAME.
    #[arg(value_name = "EXEC")]
    execution: String,
}

/// `sagaflow describe`.
#[derive(Debug, clap::Args)]
pub struct DescribeArgs {
    #[command(flatten)]
    conn: Conn,
    /// An execution (ARN or MACHINE:NAME), or a state machine (NAME).
    #[arg(value_name = "EXEC|MACHINE")]
    target: String,
    /// For a state machine: this version (default: the latest).
    #[arg(long, value_name = "N")]
    version: Option<u64>,
}

/// `sagaflow list`.
#[derive(Debug, clap::Args)]
pub struct ListArgs {
    #[command(flatten)]
    conn: Conn,
    /// Only this state machine's executions.
    machine: Option<String>,
    /// Only executions with this status (RUNNING, SUCCEEDED, FAILED,
    /// TIMED_OUT, ABORTED).
    #[arg(long, value_name = "STATUS")]
    status: Option<String>,
}

/// `sagaflow machines`.
#[derive(Debug, clap::Args)]
pub struct MachinesArgs {
    #[command(flatten)]
    conn: Conn,
}

/// `sagaflow stop`.
#[derive(Debug, clap::Args)]
pub struct StopArgs {
    #[command(flatten)]
    conn: Conn,
    /// The execution: its ARN or MACHINE:NAME.
    #[arg(value_name = "EXEC")]
    execution: String,
    /// The error recorded with the abort.
    #[arg(long, value_name = "E")]
    error: Option<String>,
    /// The cause recorded with the abort.
    #[arg(long, value_name = "C")]
    cause: Option<String>,
}

/// `sagaflow send-task-success`.
#[derive(Debug, clap::Args)]
pub struct TaskSuccessArgs {
    #[command(flatten)]
    conn: Conn,
    /// The task token (`$$.Task.Token`).
    token: String,
    /// The task's result: inline JSON, or a file.
    #[arg(value_name = "JSON|FILE")]
    output: String,
}

/// `sagaflow send-task-failure`.
#[derive(Debug, clap::Args)]
pub struct TaskFailureArgs {
    #[command(flatten)]
    conn: Conn,
    /// The task token (`$$.Task.Token`).
    token: String,
    /// The error name (default: States.TaskFailed).
    #[arg(long, value_name = "E")]
    error: Option<String>,
    /// The cause.
    #[arg(long, value_name = "C")]
    cause: Option<String>,
}

/// `sagaflow send-task-heartbeat`.
#[derive(Debug, clap::Args)]
pub struct TaskHeartbeatArgs {
    #[command(flatten)]
    conn: Conn,
    /// The task token (`$$.Task.Token`).
    token: String,
}

/// `sagaflow stub-participants`.
#[derive(Debug, clap::Args)]
pub struct StubParticipantsArgs {
    #[command(flatten)]
    conn: Conn,
    /// The stubs file (see docs/local-runner.md); each key is served as a
    /// handler.
    #[arg(long, value_name = "STUBS.json")]
    stubs: PathBuf,
    /// Tasks run at once.
    #[arg(long, default_value_t = 16, value_name = "N")]
    concurrency: usize,
    /// Also serve the file's `sagaflow_http_invoke` stub (HTTP Tasks). Only
    /// with coordinators run with --no-http-worker: theirs would otherwise
    /// share the HTTP Tasks with the stub at random.
    #[arg(long)]
    stub_http: bool,
}

fn runtime() -> anyhow::Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("cannot start the async runtime")
}

/// Runs an async command to its end.
pub fn block_on<F: std::future::Future<Output = anyhow::Result<ExitCode>>>(
    f: F,
) -> anyhow::Result<ExitCode> {
    runtime()?.block_on(f)
}

/// An execution ARN from an ARN or `MACHINE:NAME`.
pub fn execution_arn(text: &str) -> anyhow::Result<String> {
    if text.starts_with("arn:") {
        return Ok(ExecutionRef::from_arn(text)?.arn());
    }
    match text.split_once(':') {
        Some((machine, name)) => Ok(ExecutionRef::new(machine, name)?.arn()),
        None => bail!("'{text}' is not an execution: expected an execution ARN or MACHINE:NAME"),
    }
}

fn print_json(value: &impl serde::Serialize) -> anyhow::Result<()> {
    out(&serde_json::to_string_pretty(value)?);
    Ok(())
}

/// Plain aligned columns: a header line, then one line per row.
pub fn table(headers: &[&str], rows: &[Vec<String>]) -> String {
    let mut widths: Vec<usize> = headers.iter().map(|h| h.chars().count()).collect();
    for row in rows {
        for (i, cell) in row.iter().enumerate() {
            if let Some(w) = widths.get_mut(i) {
                *w = (*w).max(cell.chars().count());
            }
        }
    }
    let line = |cells: &mut dyn Iterator<Item = &str>| {
        let mut s = String::new();
        for (i, cell) in cells.enumerate() {
            if i > 0 {
                s.push_str("  ");
            }
            s.push_str(cell);
            let pad = widths
                .get(i)
                .copied()
                .unwrap_or(0)
                .saturating_sub(cell.chars().count());
            s.extend(std::iter::repeat_n(' ', pad));
        }
        s.trim_end().to_string()
    };
    let mut lines = vec![line(&mut headers.iter().copied())];
    for row in rows {
        lines.push(line(&mut row.iter().map(String::as_str)));
    }
    lines.join("\n")
}

/// `key  value` lines (a two-column table without a header).
fn fields(pairs: &[(&str, String)]) -> String {
    let width = pairs.iter().map(|(k, _)| k.len()).max().unwrap_or(0);
    pairs
        .iter()
        .map(|(k, v)| format!("{k:width$}  {v}"))
        .collect::<Vec<_>>()
        .join("\n")
}

fn describe_text(d: &ExecutionDescription) -> String {
    let mut pairs = vec![
        ("execution", d.execution_arn.clone()),
        ("status", d.status.as_str().to_string()),
        (
            "machine",
            format!("{} (version {})", d.state_machine, d.version),
        ),
        ("started", d.start_date.clone()),
    ];
    if let Some(s) = &d.stop_date {
        pairs.push(("stopped", s.clone()));
    }
    if let Some(i) = &d.input {
        pairs.push(("input", i.to_string()));
    }
    if let Some(o) = &d.output {
        pairs.push(("output", o.to_string()));
    }
    if let Some(e) = &d.error {
        pairs.push(("error", e.clone()));
    }
    if let Some(c) = &d.cause {
        pairs.push(("cause", c.clone()));
    }
    if d.redrive_count > 0 {
        pairs.push(("redrives", d.redrive_count.to_string()));
    }
    if let Some(t) = &d.trace_id {
        pairs.push(("trace", t.clone()));
    }
    fields(&pairs)
}

fn machine_text(m: &StateMachineVersion, with_definition: bool) -> String {
    let mut text = fields(&[
        ("machine", m.name.clone()),
        ("version", m.version.to_string()),
        ("arn", m.arn.clone()),
        ("created", m.created.clone()),
    ]);
    if with_definition {
        text.push_str("\ndefinition:\n");
        text.push_str(&m.definition);
    }
    text
}

/// One line of an event's details: its `...EventDetails` object, compact,
/// cut to `max` characters.
pub fn event_summary(event: &Value, max: usize) -> String {
    let details = event.as_object().and_then(|o| {
        o.iter()
            .find(|(k, _)| k.ends_with("EventDetails"))
            .map(|(_, v)| v.to_string())
    });
    let text = details.unwrap_or_default();
    if text.chars().count() > max {
        let cut: String = text.chars().take(max.saturating_sub(3)).collect();
        format!("{cut}...")
    } else {
        text
    }
}

fn executions_table(list: &[ExecutionDescription]) -> String {
    let rows: Vec<Vec<String>> = list
        .iter()
        .map(|d| {
            vec![
                d.state_machine.clone(),
                d.name.clone(),
                d.version.to_string(),
                d.status.as_str().to_string(),
                d.start_date.clone(),
                d.stop_date.clone().unwrap_or_default(),
            ]
        })
        .collect();
    table(
        &["MACHINE", "NAME", "VERSION", "STATUS", "STARTED", "STOPPED"],
        &rows,
    )
}

// ------------------------------------------------------------- commands

/// `sagaflow coordinator`: runs until Ctrl-C.
pub async fn coordinator(args: CoordinatorArgs) -> anyhow::Result<ExitCode> {
    let namespace = args.conn.namespace()?;
    let triggers = args
        .triggers
        .iter()
        .map(|t| Trigger::parse(t).map_err(|e| anyhow!("--trigger: {e}")))
        .collect::<anyhow::Result<Vec<_>>>()?;
    if args.partitions == 0 {
        bail!("--partitions must be at least 1");
    }
    if args.replicas == 0 {
        bail!("--replicas must be at least 1");
    }
    let http = (!args.no_http_worker)
        .then(|| args.http.handler())
        .transpose()?;
    let client = args.conn.connect().await?;
    let options = ClusterOptions {
        settings: sagaflow_nats::Settings {
            namespace: namespace.clone(),
            replicas: args.replicas,
            retention: args.retention_hours,
            ..sagaflow_nats::Settings::default()
        },
        partitions: args.partitions,
        coordinator_id: args.id,
        triggers,
        ..ClusterOptions::default()
    };
    let handle = Cluster::start(client.clone(), options.clone()).await?;
    let http_worker = match http {
        Some(h) => {
            let worker = sagaflow_participant::worker::Worker::builder(client)
                .settings(options.settings.clone())
                .handler(sagaflow_coordinator::resource::HTTP_INVOKE_HANDLER, h)
                .build()
                .await?;
            let stop = worker.shutdown_handle();
            Some((stop, tokio::spawn(worker.run())))
        }
        None => None,
    };
    crate::err(&format!(
        "coordinator {} serving namespace '{}' on {} ({} partitions, API on {}.>); Ctrl-C or SIGTERM to stop",
        handle.id(),
        namespace.prefix(),
        args.conn.display_url(),
        args.partitions,
        namespace.api_prefix()
    ));
    let signal = stop_signal().await?;
    crate::err(&format!("{signal}: stopping, handing back partitions"));
    if let Some((stop, running)) = http_worker {
        stop.shutdown();
        let _ = running.await;
    }
    handle.shutdown().await;
    Ok(ExitCode::SUCCESS)
}

/// `FILE:LINE:COL: /pointer [CODE] message` from a validation error as
/// the API returns it (JSON).
fn located_detail(file: &Path, d: &Value) -> String {
    let pointer = match d["pointer"].as_str() {
        Some("") | None => "(root)",
        Some(p) => p,
    };
    let code = d["code"].as_str().unwrap_or("INVALID");
    let message = d["message"].as_str().unwrap_or("");
    match (d["line"].as_u64(), d["column"].as_u64()) {
        (Some(l), Some(c)) => format!("{}:{l}:{c}: {pointer} [{code}] {message}", file.display()),
        _ => format!("{}: {pointer} [{code}] {message}", file.display()),
    }
}

/// `sagaflow deploy`.
pub async fn deploy(args: DeployArgs) -> anyhow::Result<ExitCode> {
    let mut bytes = std::fs::read(&args.definition)
        .with_context(|| format!("cannot read {}", args.definition.display()))?;
    crate::skip_bom(&mut bytes);
    let definition = match String::from_utf8(bytes) {
        Ok(text) => text,
        Err(e) => {
            // Not UTF-8: report it like `validate` does, without asking.
            let errors = match sagaflow_asl::parse::parse_definition_bytes(e.as_bytes()) {
                Err(invalid) => invalid.errors,
                Ok(_) => Vec::new(),
            };
            // The same report as for a definition the API refuses.
            let lines = errors
                .iter()
                .map(|e| crate::located(&args.definition, e))
                .collect();
            return report_invalid(&args, serde_json::json!(errors), lines);
        }
    };
    let api = args.conn.api().await?;
    match api.create_state_machine(&args.name, &definition).await {
        Ok(v) => {
            if args.conn.json {
                print_json(&v)?;
            } else {
                out(&format!(
                    "deployed {} version {} ({})",
                    v.name, v.version, v.arn
                ));
            }
            Ok(ExitCode::SUCCESS)
        }
        Err(ApiClientError::Api(e)) if e.code == "InvalidDefinition" => {
            let details = e
                .details
                .as_ref()
                .and_then(Value::as_array)
                .cloned()
                .unwrap_or_default();
            let lines = details
                .iter()
                .map(|d| located_detail(&args.definition, d))
                .collect();
            report_invalid(&args, Value::Array(details), lines)
        }
        Err(e) => Err(e.into()),
    }
}

/// `deploy`'s report of a refused definition: with `--json` the
/// `{"valid": false, "errors": [...]}` object on stdout; a header and one
/// located line per error on stderr; exit code 2.
fn report_invalid(
    args: &DeployArgs,
    errors: Value,
    lines: Vec<String>,
) -> anyhow::Result<ExitCode> {
    if args.conn.json {
        print_json(&serde_json::json!({"valid": false, "errors": errors}))?;
    }
    crate::err(&format!(
        "{}: invalid definition ({} error(s)):",
        args.definition.display(),
        lines.len()
    ));
    for line in &lines {
        crate::err(line);
    }
    Ok(ExitCode::from(EXIT_INVALID))
}

/// `sagaflow start`.
pub async fn start(args: StartArgs) -> anyhow::Result<ExitCode> {
    let input = read_input(args.input.as_deref(), "--input")?;
    let api = args.conn.api().await?;
    let started = api
        .start_execution(StartExecutionRequest {
            state_machine: args.machine.clone(),
            version: args.version,
            name: args.name.clone(),
            input: Some(input),
            traceparent: None,
        })
        .await?;
    if !args.wait {
        if args.conn.json {
            print_json(&started)?;
        } else {
            let what = if started.already_started {
                "already started"
            } else {
                "started"
            };
            out(&format!(
                "{what} {} (version {})",
                started.execution_arn, started.version
            ));
        }
        return Ok(ExitCode::SUCCESS);
    }
    let done = api
        .wait_for_completion(&started.execution_arn, Duration::from_secs(args.timeout))
        .await?;
    if args.conn.json {
        print_json(&done)?;
    } else {
        out(&describe_text(&done));
    }
    Ok(ExitCode::SUCCESS)
}

/// `sagaflow describe`.
pub async fn describe(args: DescribeArgs) -> anyhow::Result<ExitCode> {
    let api = args.conn.api().await?;
    let machine = if let Some(rest) = args
        .target
        .strip_prefix(&format!("{}:stateMachine:", sagaflow_protocol::ARN_PREFIX))
    {
        Some(rest.to_string())
    } else if !args.target.contains(':') {
        Some(args.target.clone())
    } else {
        None
    };
    if let Some(name) = machine {
        let m = api.describe_state_machine(&name, args.version).await?;
        if args.conn.json {
            print_json(&m)?;
        } else {
            out(&machine_text(&m, true));
        }
        return Ok(ExitCode::SUCCESS);
    }
    let d = api
        .describe_execution(&execution_arn(&args.target)?)
        .await?;
    if args.conn.json {
        print_json(&d)?;
    } else {
        out(&describe_text(&d));
    }
    Ok(ExitCode::SUCCESS)
}

/// `sagaflow history`.
pub async fn history(args: ExecArgs) -> anyhow::Result<ExitCode> {
    let api = args.conn.api().await?;
    let h = api
        .execution_history(&execution_arn(&args.execution)?)
        .await?;
    if args.conn.json {
        print_json(&h.events)?;
    } else {
        let rows: Vec<Vec<String>> = h
            .events
            .iter()
            .map(|e| {
                vec![
                    e["id"].to_string(),
                    e["timestamp"].as_str().unwrap_or("").to_string(),
                    e["type"].as_str().unwrap_or("").to_string(),
                    event_summary(e, 100),
                ]
            })
            .collect();
        out(&table(&["ID", "TIMESTAMP", "TYPE", "DETAILS"], &rows));
    }
    Ok(ExitCode::SUCCESS)
}

/// `sagaflow list`.
pub async fn list(args: ListArgs) -> anyhow::Result<ExitCode> {
    let status = args
        .status
        .as_deref()
        .map(|s| {
            ExecutionStatus::parse(s).ok_or_else(|| {
                anyhow!("--status '{s}': expected RUNNING, SUCCEEDED, FAILED, TIMED_OUT or ABORTED")
            })
        })
        .transpose()?;
    let api = args.conn.api().await?;
    let list = api.list_executions(args.machine.as_deref(), status).await?;
    if args.conn.json {
        print_json(&list)?;
    } else {
        out(&executions_table(&list));
    }
    Ok(ExitCode::SUCCESS)
}

/// `sagaflow machines`.
pub async fn machines(args: MachinesArgs) -> anyhow::Result<ExitCode> {
    let api = args.conn.api().await?;
    let list = api.list_state_machines().await?;
    if args.conn.json {
        print_json(&list)?;
    } else {
        let rows: Vec<Vec<String>> = list
            .iter()
            .map(|m| vec![m.name.clone(), m.latest_version.to_string(), m.arn.clone()])
            .collect();
        out(&table(&["NAME", "VERSION", "ARN"], &rows));
    }
    Ok(ExitCode::SUCCESS)
}

fn done(conn: &Conn, what: &str) -> anyhow::Result<ExitCode> {
    if conn.json {
        print_json(&serde_json::json!({"ok": true}))?;
    } else {
        out(what);
    }
    Ok(ExitCode::SUCCESS)
}

/// `sagaflow stop`.
pub async fn stop(args: StopArgs) -> anyhow::Result<ExitCode> {
    let arn = execution_arn(&args.execution)?;
    let api = args.conn.api().await?;
    api.stop_execution(&arn, args.error, args.cause).await?;
    done(&args.conn, &format!("stop requested for {arn}"))
}

/// `sagaflow redrive`.
pub async fn redrive(args: ExecArgs) -> anyhow::Result<ExitCode> {
    let arn = execution_arn(&args.execution)?;
    let api = args.conn.api().await?;
    api.redrive_execution(&arn).await?;
    done(&args.conn, &format!("redrive requested for {arn}"))
}

/// `sagaflow send-task-success`.
pub async fn send_task_success(args: TaskSuccessArgs) -> anyhow::Result<ExitCode> {
    let output = read_input(Some(&args.output), "the task result")?;
    let api = args.conn.api().await?;
    api.send_task_success(&args.token, output).await?;
    done(&args.conn, "task success sent")
}

/// `sagaflow send-task-failure`.
pub async fn send_task_failure(args: TaskFailureArgs) -> anyhow::Result<ExitCode> {
    let api = args.conn.api().await?;
    api.send_task_failure(&args.token, args.error, args.cause)
        .await?;
    done(&args.conn, "task failure sent")
}

/// `sagaflow send-task-heartbeat`.
pub async fn send_task_heartbeat(args: TaskHeartbeatArgs) -> anyhow::Result<ExitCode> {
    let api = args.conn.api().await?;
    api.send_task_heartbeat(&args.token).await?;
    done(&args.conn, "task heartbeat sent")
}

/// `sagaflow stub-participants`: serves every stub whose key is a handler
/// name until Ctrl-C.
pub async fn stub_participants(args: StubParticipantsArgs) -> anyhow::Result<ExitCode> {
    let stubs = read_stubs(&args.stubs)?;
    let namespace = args.conn.namespace()?;
    let client = args.conn.connect().await?;
    let mut builder = sagaflow_participant::worker::Worker::builder(client)
        .namespace(namespace.clone())
        .concurrency(args.concurrency.max(1));
    let mut served = Vec::new();
    for (key, handler) in stubs.handlers() {
        if key == sagaflow_coordinator::resource::HTTP_INVOKE_HANDLER && !args.stub_http {
            crate::err(&format!(
                "skipping stub '{key}': every coordinator serves HTTP Tasks itself; to stub them, \
                 run the coordinators with --no-http-worker and this command with --stub-http"
            ));
        } else if sagaflow_protocol::check_handler(&key).is_ok() {
            served.push(key.clone());
            builder = builder.handler_arc(key, handler);
        } else {
            crate::err(&format!(
                "skipping stub '{key}': not a handler name (dot-separated letters, digits, '-', '_'); \
                 name stubs after the resource's function or handler name"
            ));
        }
    }
    if served.is_empty() {
        bail!("{}: no stub can be served over NATS", args.stubs.display());
    }
    let worker = builder.build().await?;
    let stop = worker.shutdown_handle();
    let mut running = tokio::spawn(worker.run());
    crate::err(&format!(
        "serving {} stub(s) on {} (namespace '{}'): {}; Ctrl-C or SIGTERM to stop",
        served.len(),
        args.conn.display_url(),
        namespace.prefix(),
        served.join(", ")
    ));
    tokio::select! {
        signal = stop_signal() => {
            let signal = signal?;
            crate::err(&format!("{signal}: stopping, handing back tasks"));
            stop.shutdown();
            let _ = running.await;
        }
        _ = &mut running => bail!("the worker stopped on its own (connection lost?)"),
    }
    Ok(ExitCode::SUCCESS)
}

/// Ctrl-C or SIGTERM ([`sagaflow_participant::stop_signal`]).
async fn stop_signal() -> anyhow::Result<&'static str> {
    sagaflow_participant::stop_signal()
        .await
        .context("cannot listen for Ctrl-C or SIGTERM")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn retention_hours_parse() {
        assert_eq!(parse_hours("0"), Ok(Duration::ZERO));
        assert_eq!(parse_hours("1.5"), Ok(Duration::from_secs(5400)));
        assert_eq!(parse_hours(" 24 "), Ok(Duration::from_secs(86_400)));
        for bad in ["-1", "nan", "inf", "abc", "", "1e300"] {
            assert!(parse_hours(bad).is_err(), "{bad:?}");
        }
    }
    use serde_json::json;

    #[test]
    fn executions_are_named_by_arn_or_machine_and_name() {
        let arn = "arn:aws:states:local:000000000000:execution:m:e";
        assert_eq!(execution_arn(arn).unwrap(), arn);
        assert_eq!(execution_arn("m:e").unwrap(), arn);
        assert!(execution_arn("m").is_err());
        assert!(execution_arn("m:").is_err());
        assert!(execution_arn("arn:aws:states:x:y:stateMachine:m").is_err());
        assert!(execution_arn("m:e:f").is_err());
    }

    #[test]
    fn tables_align_columns() {
        let t = table(
            &["NAME", "N"],
            &[
                vec!["a".into(), "1".into()],
                vec!["longer".into(), "22".into()],
            ],
        );
        assert_eq!(t, "NAME    N\na       1\nlonger  22");
        assert_eq!(table(&["A", "B"], &[]), "A  B");
        // A short row does not panic.
        assert_eq!(table(&["A", "B"], &[vec!["x".into()]]), "A  B\nx");
    }

    #[test]
    fn event_summaries_are_cut() {
        let e = json!({"id": 1, "type": "TaskFailed", "taskFailedEventDetails": {"error": "E"}});
        assert_eq!(event_summary(&e, 100), r#"{"error":"E"}"#);
        assert_eq!(event_summary(&e, 8), r#"{"err..."#);
        assert_eq!(event_summary(&json!({"type": "X"}), 10), "");
    }

    #[test]
    fn validation_details_are_located() {
        let d = json!({"pointer": "/States/A/Next", "code": "UNKNOWN_STATE", "message": "no", "line": 3, "column": 7});
        assert_eq!(
            located_detail(Path::new("d.json"), &d),
            "d.json:3:7: /States/A/Next [UNKNOWN_STATE] no"
        );
        assert_eq!(
            located_detail(Path::new("d.json"), &json!({"pointer": ""})),
            "d.json: (root) [INVALID] "
        );
    }
}
