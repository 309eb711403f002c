//! # sagaflow
//!
//! The one library a Sagaflow application depends on. Register the
//! participants' handlers ([`handler_fn`], [`lambda_fn`] or any [`Handler`])
//! and the state machines (Amazon States Language, JSON), then
//! [`SagaflowBuilder::build`] picks the backend:
//!
//! - **no NATS URL: embedded.** The coordinator and the participants run in
//!   this process, with no NATS: tasks are handed to the handlers
//!   in-process, executions and their histories are kept in memory (gone
//!   when the process ends). For demos, tests and small tools.
//! - **a NATS URL: distributed.** The handlers are served over NATS
//!   JetStream by a participant [`Worker`](sagaflow_participant::Worker);
//!   state machines are deployed and executions started, described and
//!   answered through the coordinators' API (`sagaflow coordinator`), and
//!   with [`Options::run_coordinator`] this process runs a coordinator too.
//!   Executions are durable and survive crashes of any process.
//!
//! Both backends run on the caller's tokio runtime (multi-threaded or not).
//!
//! The calls are the same either way: [`Sagaflow::deploy`],
//! [`Sagaflow::describe_state_machine`], [`Sagaflow::list_state_machines`],
//! [`Sagaflow::start`], [`Execution::wait`], [`Execution::describe`],
//! [`Execution::history`], [`Execution::stop`], [`Execution::redrive`],
//! [`Sagaflow::list_executions`], [`Sagaflow::send_task_success`],
//! [`Sagaflow::send_task_failure`] and [`Sagaflow::send_task_heartbeat`];
//! `tests/both_modes.rs` runs the same scenarios on both backends and
//! compares the histories.
//!
//! ```
//! use sagaflow::{Sagaflow, Status, TaskContext, TaskError, handler_fn};
//! use serde_json::{Value, json};
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> Result<(), sagaflow::Error> {
//! let saga = Sagaflow::builder()
//!     .handler("greet", handler_fn(|input: Value, _ctx: TaskContext| async move {
//!         Ok::<_, TaskError>(json!({ "greeting": format!("hello, {}", input["name"].as_str().unwrap_or("you")) }))
//!     }))
//!     .state_machine("hello", r#"{
//!         "StartAt": "Greet",
//!         "States": {"Greet": {"Type": "Task", "Resource": "greet", "End": true}}
//!     }"#)
//!     .build() // no NATS URL: embedded
//!     .await?;
//!
//! let execution = saga.start("hello", json!({"name": "Ada"}), None).await?;
//! let result = execution.wait(std::time::Duration::from_secs(10)).await?;
//! assert_eq!(result.status, Status::Succeeded);
//! assert_eq!(result.output, Some(json!({"greeting": "hello, Ada"})));
//! assert_eq!(execution.states_entered().await?, vec!["Greet"]);
//! saga.shutdown().await;
//! # Ok(())
//! # }
//! ```

//!
//! The same program over NATS needs only the URL (and a coordinator: here
//! one in this process):
//!
//! ```no_run
//! # async fn f() -> Result<(), sagaflow::Error> {
//! # let definition = "";
//! use sagaflow::{Sagaflow, TaskContext, TaskError, handler_fn};
//! let saga = Sagaflow::builder()
//!     .nats_url(Some("nats://127.0.0.1:4222"))
//!     .run_coordinator(true) // or run `sagaflow coordinator --nats URL`
//!     .handler("greet", handler_fn(|input: serde_json::Value, _ctx: TaskContext| async move {
//!         Ok::<_, TaskError>(input)
//!     }))
//!     .state_machine("hello", definition)
//!     .build()
//!     .await?;
//! # Ok(()) }
//! ```
//!
//! A `.waitForTaskToken` task waits for [`Sagaflow::send_task_success`] or
//! [`Sagaflow::send_task_failure`] with its token on both backends (its
//! handler only hands the token out); over NATS `sagaflow
//! send-task-success TOKEN JSON` answers it too.

#![warn(missing_docs)]

mod distributed;
mod embedded;

use std::sync::Arc;
use std::time::Duration;

use serde_json::Value;

pub mod app;

pub use sagaflow_coordinator::RuntimeOptions;
pub use sagaflow_coordinator::cluster::ClusterOptions;
pub use sagaflow_participant::{
    Handler, LambdaContext, TaskContext, TaskError, handler_fn, lambda_fn,
};
pub use sagaflow_protocol::Namespace;
pub use sagaflow_protocol::api::ExecutionStatus as Status;
pub use sagaflow_protocol::api::{StateMachineSummary, StateMachineVersion};
/// OpenTelemetry set-up (`telemetry::init(service)`: logs, and traces and
/// metrics over OTLP when `OTEL_EXPORTER_OTLP_ENDPOINT` is set) and trace
/// context helpers. See `docs/tracing.md`.
pub use sagaflow_telemetry as telemetry;

use sagaflow_coordinator::cluster::client::ApiClientError;

/// The pause between two tries of [`Sagaflow::deploy_when_ready`].
const RETRY_PAUSE: Duration = Duration::from_millis(500);

/// Something went wrong in a Sagaflow call. Failures of the sagas
/// themselves are not errors: they are an [`ExecutionResult`] with status
/// [`Status::Failed`].
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// Two handlers were registered under one name.
    #[error("handler '{0}' is registered twice")]
    DuplicateHandler(String),
    /// A state machine definition is not valid ASL.
    #[error("state machine '{name}' is not valid: {message}")]
    InvalidDefinition {
        /// The state machine's name.
        name: String,
        /// Every problem found.
        message: String,
    },
    /// A name (state machine, execution) is not allowed.
    #[error(transparent)]
    InvalidName(#[from] sagaflow_protocol::NameError),
    /// No state machine has this name.
    #[error("no state machine named '{0}'; deploy it first")]
    StateMachineDoesNotExist(String),
    /// An execution of this name exists with another input.
    #[error("execution '{0}' already exists with another input")]
    ExecutionAlreadyExists(String),
    /// An execution of this name was started less than the duplicate
    /// window (`Settings::duplicate_window`, 2 minutes) ago and deleted
    /// since (its retention ran out): the name can be used again once that
    /// window has passed.
    #[error("{message}")]
    NameNotYetReusable {
        /// The execution's ARN.
        execution: String,
        /// What happened, and when the name is free again.
        message: String,
    },
    /// No execution has this ARN.
    #[error("no execution '{0}'")]
    ExecutionDoesNotExist(String),
    /// A request the API refuses whatever the state: an `error` longer
    /// than 256 characters or a `cause` longer than 32,768 (AWS's limits).
    #[error("invalid request: {0}")]
    InvalidRequest(String),
    /// An execution input or a callback output is larger than
    /// [`RuntimeOptions::max_payload_bytes`] (distributed: the
    /// coordinators' limit).
    #[error("payload too large: {0}")]
    PayloadTooLarge(String),
    /// An execution input or a callback output nests arrays and objects
    /// more than 100 levels deep ([`sagaflow_asl::interp::MAX_DEPTH`]).
    #[error("payload refused: {0}")]
    InvalidPayload(String),
    /// Only a FAILED, TIMED_OUT or ABORTED execution can be redriven, and
    /// only when a state was running when it ended.
    #[error("execution '{execution}' cannot be redriven: {reason}")]
    ExecutionNotRedrivable {
        /// The execution's ARN.
        execution: String,
        /// Why not.
        reason: String,
    },
    /// No task waits on this task token (unknown, already answered, timed
    /// out or cancelled).
    #[error("no task waits on this task token")]
    TaskDoesNotExist,
    /// The execution did not end in time ([`Execution::wait`]), or a
    /// redrive was not taken up by a coordinator in time
    /// ([`Execution::redrive`], distributed).
    #[error("execution '{execution}': gave up waiting after {waited:?}")]
    Timeout {
        /// The execution's ARN.
        execution: String,
        /// How long was waited.
        waited: Duration,
    },
    /// Embedded: the runtime could not carry the execution on (a Sagaflow
    /// bug, not a saga failure).
    #[error("execution '{execution}' broke down: {message}")]
    Runtime {
        /// The execution's ARN.
        execution: String,
        /// What happened.
        message: String,
    },
    /// Distributed: connecting to NATS failed.
    #[error(transparent)]
    Connect(#[from] sagaflow_nats::ConnectError),
    /// Distributed: the participant worker could not start.
    #[error("cannot serve the handlers over NATS: {0}")]
    Worker(#[from] sagaflow_participant::WorkerError),
    /// Distributed: the in-process coordinator could not start.
    #[error("cannot start the coordinator: {0}")]
    Coordinator(#[from] sagaflow_coordinator::cluster::ClusterError),
    /// Distributed: an API call failed (no coordinator, NATS away, ...).
    #[error(transparent)]
    Api(ApiClientError),
}

/// Refuses a value nested deeper than executions take, as StartExecution
/// and SendTaskSuccess do (both backends give this error).
pub(crate) fn check_depth(what: &str, value: &Value) -> Result<(), Error> {
    if sagaflow_asl::interp::too_deeply_nested(value) {
        return Err(Error::InvalidPayload(format!(
            "the {what} nests arrays and objects more than {} levels deep",
            sagaflow_asl::interp::MAX_DEPTH
        )));
    }
    Ok(())
}

/// The instant `patience` from now; a patience past what an instant holds
/// (`Duration::MAX`: wait for ever) gives a deadline a century away.
pub(crate) fn deadline_after(patience: Duration) -> tokio::time::Instant {
    let now = tokio::time::Instant::now();
    now.checked_add(patience)
        .unwrap_or_else(|| now + Duration::from_secs(100 * 365 * 24 * 3600))
}

/// A distributed call's error about `machine` or the execution `arn`, with
/// the fields the embedded mode gives (the name or ARN, not the API's
/// sentence).
fn about(e: Error, machine: Option<&str>, arn: Option<&str>) -> Error {
    match (e, machine, arn) {
        (Error::StateMachineDoesNotExist(_), Some(machine), _) => {
            Error::StateMachineDoesNotExist(machine.to_string())
        }
        (Error::ExecutionDoesNotExist(_), _, Some(arn)) => {
            Error::ExecutionDoesNotExist(arn.to_string())
        }
        (Error::ExecutionAlreadyExists(_), _, Some(arn)) => {
            Error::ExecutionAlreadyExists(arn.to_string())
        }
        (Error::NameNotYetReusable { message, .. }, _, Some(arn)) => Error::NameNotYetReusable {
            execution: arn.to_string(),
            message,
        },
        (Error::ExecutionNotRedrivable { reason, .. }, _, Some(arn)) => {
            Error::ExecutionNotRedrivable {
                execution: arn.to_string(),
                reason,
            }
        }
        (e, _, _) => e,
    }
}

impl From<ApiClientError> for Error {
    fn from(e: ApiClientError) -> Error {
        match &e {
            ApiClientError::Api(api) => match api.code.as_str() {
                "StateMachineDoesNotExist" => Error::StateMachineDoesNotExist(api.message.clone()),
                // Refused because the name's duplicate window is not over
                // (its execution deleted since): the API's sentence says
                // so, and stays whole.
                "ExecutionAlreadyExists" if api.message.contains("deleted since") => {
                    Error::NameNotYetReusable {
                        execution: String::new(),
                        message: api.message.clone(),
                    }
                }
                "ExecutionAlreadyExists" => Error::ExecutionAlreadyExists(api.message.clone()),
                "ExecutionDoesNotExist" => Error::ExecutionDoesNotExist(api.message.clone()),
                "TaskDoesNotExist" | "TaskTimedOut" | "InvalidToken" => Error::TaskDoesNotExist,
                "InvalidRequest" => Error::InvalidRequest(api.message.clone()),
                "PayloadTooLarge" => Error::PayloadTooLarge(api.message.clone()),
                "InvalidExecutionInput" | "InvalidOutput" => {
                    Error::InvalidPayload(api.message.clone())
                }
                "ExecutionNotRedrivable" => Error::ExecutionNotRedrivable {
                    execution: String::new(),
                    reason: api.message.clone(),
                },
                "InvalidDefinition" => Error::InvalidDefinition {
                    name: String::new(),
                    message: api
                        .details
                        .as_ref()
                        .map(Value::to_string)
                        .unwrap_or_else(|| api.message.clone()),
                },
                _ => Error::Api(e),
            },
            _ => Error::Api(e),
        }
    }
}

/// How a [`Sagaflow`] is set up. `Options::default()` is embedded.
#[derive(Debug, Clone)]
pub struct Options {
    /// The NATS server: `None` runs embedded (in-process, no NATS).
    pub nats_url: Option<String>,
    /// Distributed: also run a coordinator in this process (with
    /// [`Options::cluster`]); otherwise one must run elsewhere
    /// (`sagaflow coordinator --nats URL`). Unlike `sagaflow coordinator`,
    /// it does not serve HTTP Tasks (`arn:aws:states:::http:invoke`):
    /// register `sagaflow_http::HttpHandler` under
    /// `sagaflow_coordinator::resource::HTTP_INVOKE_HANDLER` for them, in
    /// either mode (embedded, an HTTP Task without it fails at once with
    /// `States.Runtime`; distributed, it waits for a participant serving
    /// it, as any task does).
    pub run_coordinator: bool,
    /// Distributed: serve the registered handlers over NATS (a participant
    /// worker). Off for a process that only starts sagas.
    pub serve_handlers: bool,
    /// Distributed: the coordinator's options; `cluster.settings.namespace`
    /// names the deployment for the API client and the worker as well.
    /// Embedded too: `cluster.settings.retention` (0 by default: keep
    /// every execution) is how long an ended execution is kept, as over
    /// NATS; set it for an application that runs for long.
    pub cluster: ClusterOptions,
    /// Distributed: how many tasks the worker runs at once.
    pub worker_concurrency: usize,
    /// Distributed: how long in-flight handlers get to finish on shutdown.
    pub worker_grace_period: Duration,
    /// Distributed: how long an API call waits for its answer.
    pub api_timeout: Duration,
    /// Embedded: the interpreter's limits.
    pub runtime: RuntimeOptions,
}

impl Default for Options {
    fn default() -> Self {
        Options {
            nats_url: None,
            run_coordinator: false,
            serve_handlers: true,
            cluster: ClusterOptions::default(),
            worker_concurrency: sagaflow_participant::worker::DEFAULT_CONCURRENCY,
            worker_grace_period: sagaflow_participant::worker::DEFAULT_GRACE_PERIOD,
            api_timeout: Duration::from_secs(10),
            runtime: RuntimeOptions::default(),
        }
    }
}

/// Which backend a [`Sagaflow`] runs on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// In this process, no NATS.
    Embedded,
    /// Over NATS JetStream.
    Distributed,
}

/// Collects handlers, state machines and [`Options`]; [`SagaflowBuilder::build`]
/// starts the backend.
#[derive(Default)]
pub struct SagaflowBuilder {
    options: Options,
    handlers: Vec<(String, Arc<dyn Handler>)>,
    machines: Vec<(String, String)>,
}

impl SagaflowBuilder {
    /// Replaces every option.
    pub fn options(mut self, options: Options) -> Self {
        self.options = options;
        self
    }

    /// Runs over NATS at `url` (`None`: embedded, the default).
    pub fn nats_url(mut self, url: Option<impl Into<String>>) -> Self {
        self.options.nats_url = url.map(Into::into);
        self
    }

    /// Distributed: also runs a coordinator in this process.
    pub fn run_coordinator(mut self, on: bool) -> Self {
        self.options.run_coordinator = on;
        self
    }

    /// Distributed: serve the registered handlers (default: on).
    pub fn serve_handlers(mut self, on: bool) -> Self {
        self.options.serve_handlers = on;
        self
    }

    /// Registers a handler. `name` is what a Task's `Resource` names: a
    /// plain name, or the function name of a Lambda ARN
    /// (`arn:aws:lambda:REGION:ACCOUNT:function:NAME`) or of
    /// `lambda:invoke`'s `FunctionName`.
    pub fn handler(self, name: impl Into<String>, handler: impl Handler + 'static) -> Self {
        self.handler_arc(name, Arc::new(handler))
    }

    /// [`SagaflowBuilder::handler`] for a shared handler.
    pub fn handler_arc(mut self, name: impl Into<String>, handler: Arc<dyn Handler>) -> Self {
        self.handlers.push((name.into(), handler));
        self
    }

    /// A state machine deployed by [`SagaflowBuilder::build`] (as
    /// [`Sagaflow::deploy`] would).
    pub fn state_machine(mut self, name: impl Into<String>, definition: impl Into<String>) -> Self {
        self.machines.push((name.into(), definition.into()));
        self
    }

    /// Starts the backend chosen by [`Options::nats_url`] and deploys the
    /// registered state machines. On an error nothing is left running: a
    /// backend already started (its worker, its coordinator) is shut down
    /// before the error is returned.
    pub async fn build(self) -> Result<Sagaflow, Error> {
        let mut seen = std::collections::HashSet::new();
        for (name, _) in &self.handlers {
            if !seen.insert(name.as_str()) {
                return Err(Error::DuplicateHandler(name.clone()));
            }
        }
        let backend = match &self.options.nats_url {
            None => Backend::Embedded(embedded::Embedded::new(
                self.handlers,
                self.options.runtime.clone(),
                &self.options.cluster.settings,
            )),
            Some(url) => Backend::Distributed(Arc::new(
                // Boxed: connecting (and starting a coordinator) is a large
                // future, kept off the caller's stack.
                Box::pin(distributed::Distributed::connect(
                    url,
                    &self.options,
                    self.handlers,
                ))
                .await?,
            )),
        };
        let saga = Sagaflow { backend };
        for (name, definition) in &self.machines {
            if let Err(e) = saga.deploy(name, definition).await {
                saga.shutdown().await;
                return Err(e);
            }
        }
        Ok(saga)
    }
}

#[derive(Clone)]
enum Backend {
    Embedded(Arc<embedded::Embedded>),
    Distributed(Arc<distributed::Distributed>),
}

/// A running Sagaflow: deploys state machines, starts executions, answers
/// callback tasks. Cheap to clone.
#[derive(Clone)]
pub struct Sagaflow {
    backend: Backend,
}

impl std::fmt::Debug for Sagaflow {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Sagaflow")
            .field("mode", &self.mode())
            .finish()
    }
}

impl Sagaflow {
    /// A builder with default [`Options`] (embedded).
    pub fn builder() -> SagaflowBuilder {
        SagaflowBuilder::default()
    }

    /// The backend in use.
    pub fn mode(&self) -> Mode {
        match self.backend {
            Backend::Embedded(_) => Mode::Embedded,
            Backend::Distributed(_) => Mode::Distributed,
        }
    }

    /// Validates and stores a state machine (ASL JSON); returns its version
    /// (1, 2, ...: an execution keeps the version it started with). The
    /// same definition as the latest version returns that version, so
    /// deploying at every start of an application adds no versions.
    pub async fn deploy(&self, name: &str, definition: &str) -> Result<u64, Error> {
        match &self.backend {
            Backend::Embedded(e) => e.deploy(name, definition),
            Backend::Distributed(d) => d.deploy(name, definition).await,
        }
    }

    /// `DescribeStateMachine`: a deployed version (the latest when
    /// `version` is `None`) with its definition;
    /// [`Error::StateMachineDoesNotExist`] for an unknown name or version,
    /// [`Error::InvalidName`] for a name no machine can have.
    pub async fn describe_state_machine(
        &self,
        name: &str,
        version: Option<u64>,
    ) -> Result<StateMachineVersion, Error> {
        sagaflow_protocol::check_name("state machine name", name)?;
        match &self.backend {
            Backend::Embedded(e) => e.describe_machine(name, version),
            Backend::Distributed(d) => d.describe_machine(name, version).await,
        }
    }

    /// `ListStateMachines`: every deployed state machine with its latest
    /// version, by name.
    pub async fn list_state_machines(&self) -> Result<Vec<StateMachineSummary>, Error> {
        match &self.backend {
            Backend::Embedded(e) => Ok(e.list_machines()),
            Backend::Distributed(d) => d.list_machines().await,
        }
    }

    /// [`Sagaflow::deploy`], tried again every half second while no
    /// coordinator answers (one starting at the same time, as in a
    /// container set-up), for at most `patience`. Other errors are returned
    /// at once.
    pub async fn deploy_when_ready(
        &self,
        name: &str,
        definition: &str,
        patience: Duration,
    ) -> Result<u64, Error> {
        let deadline = deadline_after(patience);
        loop {
            match self.deploy(name, definition).await {
                Err(Error::Api(
                    ApiClientError::NoResponders { .. }
                    | ApiClientError::Timeout { .. }
                    | ApiClientError::Transport(_),
                )) if tokio::time::Instant::now() + RETRY_PAUSE < deadline => {
                    tokio::time::sleep(RETRY_PAUSE).await;
                }
                other => return other,
            }
        }
    }

    /// Starts an execution of the latest version of `state_machine`.
    /// `name` defaults to a fresh unique name; starting again with the same
    /// name and input returns the same execution (with another input:
    /// [`Error::ExecutionAlreadyExists`]).
    pub async fn start(
        &self,
        state_machine: &str,
        input: Value,
        name: Option<&str>,
    ) -> Result<Execution, Error> {
        let arn = match &self.backend {
            Backend::Embedded(e) => e.start(state_machine, input, name)?,
            Backend::Distributed(d) => {
                let arn = name.and_then(|n| {
                    sagaflow_protocol::ExecutionRef::new(state_machine, n)
                        .ok()
                        .map(|r| r.arn())
                });
                d.start(state_machine, input, name)
                    .await
                    .map_err(|e| about(e, Some(state_machine), arn.as_deref()))?
            }
        };
        Ok(Execution {
            arn,
            backend: self.backend.clone(),
            started_here: Some(tokio::time::Instant::now()),
        })
    }

    /// A handle on an existing execution, by ARN (as [`Execution::arn`]
    /// gives it).
    pub fn execution(&self, arn: impl Into<String>) -> Execution {
        let arn = arn.into();
        // Any region and account name the same execution: the canonical
        // ARN, as the API resolves it.
        let arn = sagaflow_protocol::ExecutionRef::from_arn(&arn).map_or(arn, |r| r.arn());
        Execution {
            arn,
            backend: self.backend.clone(),
            started_here: None,
        }
    }

    /// Answers the `.waitForTaskToken` task waiting on `token`
    /// (`$$.Task.Token`) with `output` (AWS's `SendTaskSuccess`).
    pub async fn send_task_success(&self, token: &str, output: Value) -> Result<(), Error> {
        match &self.backend {
            Backend::Embedded(e) => e.complete(token.trim(), Ok(output)),
            Backend::Distributed(d) => {
                check_depth("output", &output)?;
                Ok(d.api().send_task_success(token, output).await?)
            }
        }
    }

    /// Fails the `.waitForTaskToken` task waiting on `token` with `error`
    /// (matched by `Retry`/`Catch`) and `cause` (AWS's `SendTaskFailure`).
    pub async fn send_task_failure(
        &self,
        token: &str,
        error: &str,
        cause: &str,
    ) -> Result<(), Error> {
        match &self.backend {
            Backend::Embedded(e) => e.complete(token.trim(), Err(TaskError::new(error, cause))),
            Backend::Distributed(d) => Ok(d
                .api()
                .send_task_failure(token, Some(error.to_string()), Some(cause.to_string()))
                .await?),
        }
    }

    /// `SendTaskHeartbeat`: the `.waitForTaskToken` task waiting on
    /// `token` is alive; its `HeartbeatSeconds` counts again from now.
    pub async fn send_task_heartbeat(&self, token: &str) -> Result<(), Error> {
        match &self.backend {
            Backend::Embedded(e) => e.heartbeat(token.trim()),
            Backend::Distributed(d) => Ok(d.api().send_task_heartbeat(token).await?),
        }
    }

    /// `ListExecutions`: the executions, optionally of one state machine
    /// and in one status, newest first (ties by ARN) in both modes.
    pub async fn list_executions(
        &self,
        state_machine: Option<&str>,
        status: Option<Status>,
    ) -> Result<Vec<ExecutionSummary>, Error> {
        if let Some(name) = state_machine {
            sagaflow_protocol::check_name("state machine name", name)?;
        }
        match &self.backend {
            Backend::Embedded(e) => Ok(e.list(state_machine, status)),
            Backend::Distributed(d) => d.list(state_machine, status).await,
        }
    }

    /// Stops: embedded, abandons running executions (their handlers are
    /// stopped, their timers dropped); distributed, stops
    /// the worker (in-flight handlers get the grace period) and the
    /// in-process coordinator (which hands its partitions back).
    pub async fn shutdown(self) {
        match self.backend {
            Backend::Embedded(e) => e.shutdown(),
            Backend::Distributed(d) => d.shutdown().await,
        }
    }
}

/// How an execution stands (or ended).
#[derive(Debug, Clone, PartialEq)]
pub struct ExecutionResult {
    /// The execution's ARN.
    pub arn: String,
    /// Its name.
    pub name: String,
    /// `RUNNING`, `SUCCEEDED`, `FAILED`, `TIMED_OUT` or `ABORTED`.
    pub status: Status,
    /// The output, when it succeeded.
    pub output: Option<Value>,
    /// The error name, when it failed, timed out or was aborted.
    pub error: Option<String>,
    /// The cause, with the error.
    pub cause: Option<String>,
    /// The execution's trace id (32 hex digits), when tracing is on
    /// (`OTEL_EXPORTER_OTLP_ENDPOINT` set, see `docs/tracing.md`) and the
    /// trace is sampled: open it in Jaeger.
    pub trace_id: Option<String>,
}

/// One line of [`Sagaflow::list_executions`].
#[derive(Debug, Clone, PartialEq)]
pub struct ExecutionSummary {
    /// The execution's ARN.
    pub arn: String,
    /// Its name.
    pub name: String,
    /// The state machine it runs.
    pub state_machine: String,
    /// How it stands.
    pub status: Status,
    /// When it started (RFC 3339).
    pub start_date: String,
    /// When it ended (RFC 3339), once it has.
    pub stop_date: Option<String>,
}

/// One execution. Cheap to clone.
#[derive(Clone)]
pub struct Execution {
    arn: String,
    backend: Backend,
    /// When [`Sagaflow::start`] returned it: the execution exists even
    /// when the coordinators do not find it yet.
    started_here: Option<tokio::time::Instant>,
}

/// How long after its start an execution the API does not find is taken
/// for one whose start is still on its way (later, for one deleted since).
const JUST_STARTED: Duration = Duration::from_secs(60);

impl std::fmt::Debug for Execution {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Execution").field("arn", &self.arn).finish()
    }
}

impl Execution {
    /// Started by this handle's [`Sagaflow::start`] less than
    /// [`JUST_STARTED`] ago.
    fn just_started(&self) -> bool {
        self.started_here
            .is_some_and(|at| at.elapsed() < JUST_STARTED)
    }

    /// A malformed ARN is [`Error::InvalidName`] on both backends.
    fn check_arn(&self) -> Result<(), Error> {
        sagaflow_protocol::ExecutionRef::from_arn(&self.arn)?;
        Ok(())
    }

    /// `arn:aws:states:local:000000000000:execution:MACHINE:NAME`.
    pub fn arn(&self) -> &str {
        &self.arn
    }

    /// The execution's name (the ARN's last segment).
    pub fn name(&self) -> &str {
        self.arn.rsplit(':').next().unwrap_or(&self.arn)
    }

    /// How it stands now (status [`Status::Running`] until it ends). An
    /// execution just returned by [`Sagaflow::start`] whose start the
    /// coordinators have not processed yet is reported as running.
    pub async fn describe(&self) -> Result<ExecutionResult, Error> {
        self.check_arn()?;
        match &self.backend {
            Backend::Embedded(e) => e.describe(&self.arn),
            Backend::Distributed(d) => d
                .describe(&self.arn, self.just_started())
                .await
                .map_err(|e| about(e, None, Some(&self.arn))),
        }
    }

    /// Waits until it ends, at most `timeout` ([`Error::Timeout`]).
    pub async fn wait(&self, timeout: Duration) -> Result<ExecutionResult, Error> {
        self.check_arn()?;
        match &self.backend {
            Backend::Embedded(e) => e.wait(&self.arn, timeout).await,
            Backend::Distributed(d) => d
                .wait(&self.arn, timeout, self.just_started())
                .await
                .map_err(|e| about(e, None, Some(&self.arn))),
        }
    }

    /// What happened, as Step Functions-style history events
    /// (`{"id", "timestamp", "type": "TaskStateEntered", "stateEnteredEventDetails": {...}}`,
    /// oldest first): what has happened so far, in both modes (distributed:
    /// empty for an execution just started whose start is still queued).
    pub async fn history(&self) -> Result<Vec<Value>, Error> {
        self.check_arn()?;
        match &self.backend {
            Backend::Embedded(e) => e.history(&self.arn),
            Backend::Distributed(d) => d
                .history(&self.arn, self.just_started())
                .await
                .map_err(|e| about(e, None, Some(&self.arn))),
        }
    }

    /// `StopExecution`: a running execution cancels its tasks, runs no
    /// further state and ends [`Status::Aborted`] with `error` and `cause`
    /// (its history ends with `ExecutionAborted`); an ended one is left as
    /// it is. Returns once the stop is handed over: [`Execution::wait`] for
    /// the end.
    pub async fn stop(&self, error: Option<&str>, cause: Option<&str>) -> Result<(), Error> {
        self.check_arn()?;
        match &self.backend {
            Backend::Embedded(e) => e.stop(&self.arn, error, cause),
            Backend::Distributed(d) => d
                .stop(&self.arn, error, cause, self.just_started())
                .await
                .map_err(|e| about(e, None, Some(&self.arn))),
        }
    }

    /// `RedriveExecution`: a [`Status::Failed`], [`Status::TimedOut`] or
    /// [`Status::Aborted`] execution runs again from the top-level state
    /// that was running when it ended, with the input that state had
    /// (`$$.Execution.RedriveCount` goes up by one; the history goes on,
    /// with an `ExecutionRedriven` event). Others:
    /// [`Error::ExecutionNotRedrivable`]. Returns once the redrive is handed
    /// over: [`Execution::wait`] for the new end.
    pub async fn redrive(&self) -> Result<(), Error> {
        self.check_arn()?;
        match &self.backend {
            Backend::Embedded(e) => e.redrive(&self.arn),
            Backend::Distributed(d) => d
                .redrive(&self.arn)
                .await
                .map_err(|e| about(e, None, Some(&self.arn))),
        }
    }

    /// The names of the states entered, in order (from
    /// [`Execution::history`]).
    pub async fn states_entered(&self) -> Result<Vec<String>, Error> {
        Ok(states_entered(&self.history().await?))
    }
}

/// The names of the states entered, in order, in Step Functions-style
/// history events (the `...StateEntered` events).
pub fn states_entered(events: &[Value]) -> Vec<String> {
    events
        .iter()
        .filter(|e| {
            e.get("type")
                .and_then(Value::as_str)
                .is_some_and(|t| t.ends_with("StateEntered"))
        })
        .filter_map(|e| {
            e.pointer("/stateEnteredEventDetails/name")
                .and_then(Value::as_str)
                .map(str::to_string)
        })
        .collect()
}
