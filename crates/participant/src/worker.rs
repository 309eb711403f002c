//! Serving Task states over NATS JetStream: the [`Worker`] a microservice
//! embeds.
//!
//! ```no_run
//! # async fn example() -> Result<(), Box<dyn std::error::Error>> {
//! use sagaflow_participant::{handler_fn, TaskContext, TaskError};
//! use sagaflow_participant::worker::Worker;
//!
//! let client = sagaflow_nats::connect("nats://127.0.0.1:4222").await?;
//! let worker = Worker::builder(client)
//!     .handler("flights.book", handler_fn(|order: serde_json::Value, ctx: TaskContext| async move {
//!         // Key the service's own writes by ctx.idempotency_key() to make them idempotent.
//!         Ok::<_, TaskError>(serde_json::json!({ "booking": ctx.task_id, "order": order }))
//!     }))
//!     .concurrency(16)
//!     .build()
//!     .await?;
//! let stop = worker.shutdown_handle();
//! let running = tokio::spawn(worker.run());
//! // ... later, for example on SIGTERM:
//! stop.shutdown();
//! running.await?;
//! # Ok(())
//! # }
//! ```
//!
//! # How tasks flow
//!
//! A coordinator publishes each task on `sagaflow.task.HANDLER` (the tasks
//! stream, work-queue retention). Every handler has one durable pull
//! consumer, `handler-HANDLER`, shared by every process that serves that
//! handler: adding processes scales a participant out, and the broker hands
//! each task to one of them. A worker pulls only as many tasks as it has free
//! slots (`concurrency`), runs each handler in its own tokio task, and hands
//! the result (`TaskSucceeded` / `TaskFailed`) over:
//!
//! 1. first straight to the coordinator that owns the execution's
//!    partition, as a core NATS request on the task's `result_to` subject
//!    (`sagaflow.result.P.KEY`); the coordinator answers once the result is
//!    recorded in the execution's history;
//! 2. failing that (no owner at the moment, no answer within
//!    `min(ack_wait / 3, 5 s)`, an answer saying it was not recorded), to
//!    the task's `reply_to` inbox subject with a JetStream publish whose
//!    `Nats-Msg-Id` is `REPLY_TO/TASK_ID/result`, where the owner finds it.
//!
//! Only once the result is recorded or stored is the task acknowledged; if
//! neither worked the task is handed back (NAK with a delay) and runs again.
//! Delivery is therefore *at least once*: a worker that dies after the
//! handler's effect but before the ack makes the task run again elsewhere
//! after `ack_wait`. A result that arrives twice is harmless: the
//! coordinator ignores a result for a task already answered, and the
//! `Nats-Msg-Id` makes the inbox drop a second identical result published
//! within the stream's duplicate window.
//!
//! While a handler runs, the worker tells the broker it is alive
//! (`AckKind::Progress`) every `ack_wait / 3`, so a long task is not
//! redelivered; each [`TaskContext::heartbeat`](crate::TaskContext::heartbeat)
//! also publishes a `TaskHeartbeat` to the execution's inbox (for ASL
//! `HeartbeatSeconds`).
//!
//! # Idempotency store
//!
//! With [`WorkerBuilder::idempotency`] on, each task has a record in the
//! `SAGAFLOW_IDEMPOTENCY` key-value bucket, keyed by the base64url encoding
//! of `EXECUTION_ARN/TASK_ID`. Every write to it is conditional on the
//! record's last revision:
//!
//! 1. before running the handler, a delivery *claims* the task (creates the
//!    record); a delivery that finds a result publishes it instead of
//!    running the handler, and one that finds another worker's claim waits
//!    for that claim to turn into a result;
//! 2. while the handler runs, the claim is refreshed every `ack_wait / 3`;
//!    a claim left unchanged for longer than its holder's `ack_wait`
//!    (measured on the waiting worker's own clock) belongs to a worker that
//!    died, and is taken over;
//! 3. the result replaces the claim before it is published; a delivery
//!    handed back at shutdown deletes its claim.
//!
//! Each claim names its delivery, so a worker whose write was stored but
//! whose answer was lost recognises its own claim. A task whose worker died
//! runs again up to about twice `ack_wait` after the last refresh (the
//! broker redelivers it after `ack_wait`, and the claim goes stale one
//! `ack_wait` later). While the store cannot be read, or a claim cannot be
//! written, tasks are handed back (retried every second) rather than run
//! unclaimed.
//!
//! What this guarantees, exactly:
//!
//! - a task delivered twice (redelivery after a lost ack, a duplicate
//!   publish outside the tasks stream's duplicate window, a second worker
//!   taking over after `ack_wait`), one delivery after the other or *at
//!   the same time* on two workers, runs its handler **once**, and every
//!   delivery yields the **same** result, *unless* the worker holding the
//!   claim dies (or cannot reach the store) after the handler's effect and
//!   before the record, or stalls for longer than `ack_wait` while the
//!   handler runs: then the handler runs again (the first result recorded
//!   wins, and every later delivery publishes it);
//! - a recorded failure is replayed too: a retry of the same task id gets the
//!   same failure (the coordinator gives every retry attempt a new task id,
//!   so ASL `Retry` still runs the handler again).
//!
//! Handlers whose effect must happen exactly once (a payment, an email)
//! should also key their own writes by
//! [`TaskContext::idempotency_key`](crate::TaskContext::idempotency_key),
//! which is the same on every delivery of a task.
//!
//! # Error names
//!
//! A handler's [`TaskError::error`](crate::TaskError::error) is reported as-is. Names starting with
//! `States.` are reserved by ASL for the runtime's own errors; they are
//! accepted (the AWS Lambda runtime can raise `States.*` errors, and
//! handlers ported from it may forward them), but participants should use
//! their own names (`PaymentDeclined`, `Flights.SoldOut`). The worker
//! itself reports:
//!
//! - [`TASK_FAILED`] (`States.TaskFailed`) when a handler panics (the cause
//!   is the panic message);
//! - [`DATA_LIMIT_EXCEEDED`] (`States.DataLimitExceeded`) when a result is
//!   larger than [`WorkerBuilder::max_payload_bytes`].

mod claims;
mod task;

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::Duration;

use async_nats::jetstream::consumer::{self, PullConsumer};
use async_nats::jetstream::{self, stream};
use futures::StreamExt;
use sagaflow_protocol::{NameError, Namespace};
use tokio::sync::{OwnedSemaphorePermit, Semaphore, mpsc, watch};
use tokio::task::JoinSet;
use tokio::time::Instant;

use crate::Handler;

use self::task::TaskRunner;
pub use self::task::{idempotency_key, result_message, result_msg_id};

/// Error name reported when a handler panics (the cause is the panic
/// message).
pub const TASK_FAILED: &str = "States.TaskFailed";

/// Error name reported when a result is larger than the worker's
/// `max_payload_bytes` (AWS's limit is 256 KiB).
pub const DATA_LIMIT_EXCEEDED: &str = "States.DataLimitExceeded";

/// Default number of tasks running at once in one worker process.
pub const DEFAULT_CONCURRENCY: usize = 64;

/// Default time the broker waits for a sign of life before redelivering a
/// task to another worker.
pub const DEFAULT_ACK_WAIT: Duration = Duration::from_secs(30);

/// Default time in-flight handlers get to finish on shutdown.
pub const DEFAULT_GRACE_PERIOD: Duration = Duration::from_secs(30);

/// Default largest result sent (AWS's payload limit: 256 KiB).
pub const DEFAULT_MAX_PAYLOAD_BYTES: usize = 256 * 1024;

/// The smallest `max_ack_pending` a handler's consumer is given. The
/// consumer is shared by every process serving the handler and each process
/// bounds its own in-flight tasks with `concurrency`; this leaves room for
/// many processes (NATS's own default is 1000).
pub const MIN_MAX_ACK_PENDING: i64 = 1000;

/// How long one pull request waits on the broker for tasks. Also bounds how
/// long shutdown waits for the outstanding pull requests to end.
const POLL_EXPIRES: Duration = Duration::from_secs(2);

/// Pause after the broker refused a pull request, before trying again.
const PULL_ERROR_BACKOFF: Duration = Duration::from_secs(1);

/// Largest pull request.
const MAX_PULL_BATCH: usize = 256;

/// Bytes of a message kept for a result's envelope (the inbox message's
/// execution ARN and task id, its headers).
const RESULT_ENVELOPE_ROOM: usize = 8 * 1024;

/// How long tasks abandoned at the end of the grace period get to hand
/// their message back.
const ABANDON_WAIT: Duration = Duration::from_secs(5);

/// Why a worker could not be built.
#[derive(Debug, thiserror::Error)]
pub enum WorkerError {
    /// Connecting to NATS failed (see [`Worker::connect`]).
    #[error(transparent)]
    Connect(#[from] sagaflow_nats::ConnectError),
    /// Creating or opening the streams and buckets failed.
    #[error("cannot set up the Sagaflow streams and buckets: {0}")]
    Setup(#[from] sagaflow_nats::SetupError),
    /// A handler name is not a valid subject token sequence.
    #[error(transparent)]
    InvalidHandlerName(#[from] NameError),
    /// Two handlers have the same name.
    #[error("handler '{0}' is registered twice")]
    DuplicateHandler(String),
    /// Two handler names map to one durable consumer (a `.` in a handler
    /// name becomes `_` in its consumer's name: `flights.book` and
    /// `flights_book` are both `handler-flights_book`), so one would serve
    /// the other's tasks. Found within one worker, or against the consumer
    /// another process made.
    #[error(
        "handlers '{first}' and '{second}' would share the task consumer {consumer} \
         (a '.' in a handler name becomes '_' in its consumer's name): rename one of them"
    )]
    HandlerNamesClash {
        /// The handler the consumer is (or was first) made for.
        first: String,
        /// The handler refused.
        second: String,
        /// The consumer's name.
        consumer: String,
    },
    /// No handler was registered.
    #[error("the worker has no handler: register at least one with .handler(name, handler)")]
    NoHandlers,
    /// An option is out of range.
    #[error("invalid worker option {option}: {reason}")]
    InvalidOption {
        /// The option.
        option: &'static str,
        /// Why it is refused.
        reason: &'static str,
    },
    /// Creating, opening or updating a handler's durable consumer failed.
    #[error("cannot create or open the task consumer {consumer} of handler '{handler}': {source}")]
    Consumer {
        /// The handler.
        handler: String,
        /// The consumer's name.
        consumer: String,
        /// The broker's or client's error.
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },
}

/// Stops a running [`Worker`] gracefully. Cloneable; any clone stops it.
#[derive(Debug, Clone)]
pub struct ShutdownHandle {
    tx: Arc<watch::Sender<bool>>,
}

impl ShutdownHandle {
    /// Asks the worker to stop: it stops pulling tasks, lets in-flight
    /// handlers finish within the grace period, and hands back (NAKs) the
    /// tasks still running after it so another instance takes them.
    /// Idempotent.
    pub fn shutdown(&self) {
        self.tx.send_replace(true);
    }

    /// Whether shutdown was asked.
    pub fn is_shutdown(&self) -> bool {
        *self.tx.borrow()
    }
}

/// Builds a [`Worker`] (see [`Worker::builder`]).
pub struct WorkerBuilder {
    client: async_nats::Client,
    namespace: Option<Namespace>,
    settings: sagaflow_nats::Settings,
    handlers: Vec<(String, Arc<dyn Handler>)>,
    name_errors: Vec<NameError>,
    concurrency: usize,
    ack_wait: Duration,
    grace_period: Duration,
    idempotency: bool,
    max_payload_bytes: usize,
}

impl std::fmt::Debug for WorkerBuilder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WorkerBuilder")
            .field("namespace", &self.namespace)
            .field("settings", &self.settings)
            .field(
                "handlers",
                &self.handlers.iter().map(|(n, _)| n).collect::<Vec<_>>(),
            )
            .field("concurrency", &self.concurrency)
            .field("ack_wait", &self.ack_wait)
            .field("grace_period", &self.grace_period)
            .field("idempotency", &self.idempotency)
            .field("max_payload_bytes", &self.max_payload_bytes)
            .finish_non_exhaustive()
    }
}

impl WorkerBuilder {
    /// The deployment's namespace (default `sagaflow`). Overrides the
    /// namespace inside [`WorkerBuilder::settings`].
    pub fn namespace(mut self, namespace: Namespace) -> Self {
        self.namespace = Some(namespace);
        self
    }

    /// Settings of the streams and buckets, used if the worker is the first
    /// process to create them (default: [`sagaflow_nats::Settings::default`]).
    pub fn settings(mut self, settings: sagaflow_nats::Settings) -> Self {
        self.settings = settings;
        self
    }

    /// Serves the tasks of handler `name` (the `HANDLER` of
    /// `sagaflow.task.HANDLER`: dot-separated tokens of letters, digits, `-`
    /// and `_`; checked by [`build`](WorkerBuilder::build)).
    pub fn handler(mut self, name: impl Into<String>, handler: impl Handler + 'static) -> Self {
        let name = name.into();
        match sagaflow_protocol::check_handler(&name) {
            Ok(()) => self.handlers.push((name, Arc::new(handler))),
            Err(e) => self.name_errors.push(e),
        }
        self
    }

    /// [`WorkerBuilder::handler`] with a handler already shared.
    pub fn handler_arc(mut self, name: impl Into<String>, handler: Arc<dyn Handler>) -> Self {
        let name = name.into();
        match sagaflow_protocol::check_handler(&name) {
            Ok(()) => self.handlers.push((name, handler)),
            Err(e) => self.name_errors.push(e),
        }
        self
    }

    /// Most tasks running at once in this process, over every handler
    /// (default 64, at least 1).
    pub fn concurrency(mut self, n: usize) -> Self {
        self.concurrency = n;
        self
    }

    /// How long the broker waits for an ack or a sign of life before it
    /// redelivers a task, e.g. to another instance when this one died
    /// (default 30 s). Running handlers are kept alive automatically.
    /// Instances sharing a handler should use the same value: the last one
    /// started sets it on the shared consumer.
    pub fn ack_wait(mut self, ack_wait: Duration) -> Self {
        self.ack_wait = ack_wait;
        self
    }

    /// How long in-flight handlers get to finish after
    /// [`ShutdownHandle::shutdown`] (default 30 s).
    pub fn grace_period(mut self, grace: Duration) -> Self {
        self.grace_period = grace;
        self
    }

    /// Records results in the idempotency store and replays them on
    /// redelivery instead of running the handler again (default off). See
    /// the [module documentation](self) for what this guarantees.
    pub fn idempotency(mut self, on: bool) -> Self {
        self.idempotency = on;
        self
    }

    /// Largest result sent, in bytes of the result's JSON (default 256 KiB,
    /// AWS's limit). A larger success is reported as a `TaskFailed`
    /// [`DATA_LIMIT_EXCEEDED`]. A failure's error name is cut to 256
    /// characters and its cause to 32,768 bytes (AWS's limits), or to this
    /// limit if lower. It is lowered to what fits in a message (the streams'
    /// `max_message_bytes` and the server's `max_payload`, less 8 KiB for
    /// the envelope).
    pub fn max_payload_bytes(mut self, bytes: usize) -> Self {
        self.max_payload_bytes = bytes;
        self
    }

    /// Sets up the streams and buckets ([`sagaflow_nats::setup`]) and
    /// creates or opens each handler's durable consumer.
    pub async fn build(self) -> Result<Worker, WorkerError> {
        if let Some(e) = self.name_errors.into_iter().next() {
            return Err(WorkerError::InvalidHandlerName(e));
        }
        if self.handlers.is_empty() {
            return Err(WorkerError::NoHandlers);
        }
        let mut seen = HashSet::new();
        let mut consumers: HashMap<String, &str> = HashMap::new();
        let ns = self.settings.namespace.clone();
        for (name, _) in &self.handlers {
            if !seen.insert(name.as_str()) {
                return Err(WorkerError::DuplicateHandler(name.clone()));
            }
            let consumer = ns.task_consumer(name);
            if let Some(first) = consumers.insert(consumer.clone(), name) {
                return Err(WorkerError::HandlerNamesClash {
                    first: first.to_string(),
                    second: name.clone(),
                    consumer,
                });
            }
        }
        if self.concurrency == 0 {
            return Err(WorkerError::InvalidOption {
                option: "concurrency",
                reason: "it must be at least 1",
            });
        }
        if self.ack_wait < Duration::from_millis(100) {
            return Err(WorkerError::InvalidOption {
                option: "ack_wait",
                reason: "it must be at least 100 ms",
            });
        }
        if self.max_payload_bytes == 0 {
            return Err(WorkerError::InvalidOption {
                option: "max_payload_bytes",
                reason: "it must be at least 1",
            });
        }
        let mut settings = self.settings;
        if let Some(ns) = self.namespace {
            settings.namespace = ns;
        }
        let infra = sagaflow_nats::setup(self.client, settings).await?;
        // A result must fit in a message with its envelope (the execution
        // and task ids, headers): a larger one could never be stored, and
        // its task would be handed back for ever. Over that, a success is
        // reported as States.DataLimitExceeded instead.
        let max_payload_bytes = self
            .max_payload_bytes
            .min(infra.message_limit().saturating_sub(RESULT_ENVELOPE_ROOM))
            .max(1);
        let max_ack_pending = i64::try_from(self.concurrency)
            .unwrap_or(i64::MAX)
            .max(MIN_MAX_ACK_PENDING);
        let mut slots = Vec::with_capacity(self.handlers.len());
        for (name, handler) in self.handlers {
            let spec = ConsumerSpec {
                handler: name.clone(),
                name: infra.ns().task_consumer(&name),
                filter_subject: infra.ns().task_subject(&name),
                task_prefix: infra.ns().task_subject(""),
                ack_wait: self.ack_wait,
                max_ack_pending,
            };
            let consumer = spec.open(&infra.tasks).await?;
            slots.push(Slot {
                spec,
                consumer,
                handler,
            });
        }
        let (shutdown, _) = watch::channel(false);
        Ok(Worker {
            infra,
            slots,
            concurrency: self.concurrency,
            ack_wait: self.ack_wait,
            grace_period: self.grace_period,
            idempotency: self.idempotency,
            max_payload_bytes,
            shutdown: Arc::new(shutdown),
        })
    }
}

/// A handler's consumer, as the worker wants it.
#[derive(Debug, Clone)]
struct ConsumerSpec {
    handler: String,
    name: String,
    filter_subject: String,
    /// `sagaflow.task.`: what every handler's filter starts with.
    task_prefix: String,
    ack_wait: Duration,
    max_ack_pending: i64,
}

impl ConsumerSpec {
    fn config(&self) -> consumer::pull::Config {
        consumer::pull::Config {
            durable_name: Some(self.name.clone()),
            name: Some(self.name.clone()),
            description: Some(format!("Sagaflow tasks of handler {}", self.handler)),
            filter_subject: self.filter_subject.clone(),
            ack_policy: consumer::AckPolicy::Explicit,
            deliver_policy: consumer::DeliverPolicy::All,
            ack_wait: self.ack_wait,
            max_ack_pending: self.max_ack_pending,
            ..Default::default()
        }
    }

    fn error(&self, source: impl std::error::Error + Send + Sync + 'static) -> WorkerError {
        WorkerError::Consumer {
            handler: self.handler.clone(),
            consumer: self.name.clone(),
            source: Box::new(source),
        }
    }

    /// Creates the consumer, or opens it and brings its ack wait, filter and
    /// `max_ack_pending` to what this worker needs.
    async fn open(&self, tasks: &stream::Stream) -> Result<PullConsumer, WorkerError> {
        let existing: PullConsumer = tasks
            .get_or_create_consumer(&self.name, self.config())
            .await
            .map_err(|e| self.error(e))?;
        let current = &existing.cached_info().config;
        // The consumer of another handler whose name maps to the same
        // consumer name: taking it over would serve that handler's tasks
        // with this one.
        if current.filter_subject != self.filter_subject
            && let Some(other) = current.filter_subject.strip_prefix(&self.task_prefix)
            && !other.is_empty()
        {
            return Err(WorkerError::HandlerNamesClash {
                first: other.to_string(),
                second: self.handler.clone(),
                consumer: self.name.clone(),
            });
        }
        let pending_ok =
            current.max_ack_pending < 0 || current.max_ack_pending >= self.max_ack_pending;
        if current.ack_wait == self.ack_wait
            && current.filter_subject == self.filter_subject
            && current.ack_policy == consumer::AckPolicy::Explicit
            && pending_ok
        {
            return Ok(existing);
        }
        let mut config = self.config();
        if current.max_ack_pending < 0 || current.max_ack_pending > self.max_ack_pending {
            config.max_ack_pending = current.max_ack_pending;
        }
        tracing::info!(
            handler = %self.handler,
            consumer = %self.name,
            "updating the task consumer's settings (ack wait, filter, max ack pending)"
        );
        tasks
            .update_consumer(config)
            .await
            .map_err(|e| self.error(e))
    }
}

/// One handler being served.
struct Slot {
    spec: ConsumerSpec,
    consumer: PullConsumer,
    handler: Arc<dyn Handler>,
}

/// Serves Task states over NATS JetStream (see the [module
/// documentation](self)). Made by [`Worker::builder`], driven by
/// [`Worker::run`].
pub struct Worker {
    infra: sagaflow_nats::Infra,
    slots: Vec<Slot>,
    concurrency: usize,
    ack_wait: Duration,
    grace_period: Duration,
    idempotency: bool,
    max_payload_bytes: usize,
    shutdown: Arc<watch::Sender<bool>>,
}

impl std::fmt::Debug for Worker {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Worker")
            .field("namespace", self.infra.ns())
            .field("handlers", &self.handlers())
            .field("concurrency", &self.concurrency)
            .field("ack_wait", &self.ack_wait)
            .field("grace_period", &self.grace_period)
            .field("idempotency", &self.idempotency)
            .field("max_payload_bytes", &self.max_payload_bytes)
            .finish_non_exhaustive()
    }
}

/// A task message pulled for a handler, with the slot it holds.
struct Pulled {
    slot: usize,
    message: jetstream::Message,
    permit: OwnedSemaphorePermit,
}

impl Worker {
    /// A builder for a worker using this connection (see
    /// [`sagaflow_nats::connect()`]).
    pub fn builder(client: async_nats::Client) -> WorkerBuilder {
        WorkerBuilder {
            client,
            namespace: None,
            settings: sagaflow_nats::Settings::default(),
            handlers: Vec::new(),
            name_errors: Vec::new(),
            concurrency: DEFAULT_CONCURRENCY,
            ack_wait: DEFAULT_ACK_WAIT,
            grace_period: DEFAULT_GRACE_PERIOD,
            idempotency: false,
            max_payload_bytes: DEFAULT_MAX_PAYLOAD_BYTES,
        }
    }

    /// Connects to NATS at `url` ([`sagaflow_nats::connect()`]: checks the
    /// server's version and JetStream) and returns a builder.
    pub async fn connect(url: &str) -> Result<WorkerBuilder, WorkerError> {
        Ok(Worker::builder(sagaflow_nats::connect(url).await?))
    }

    /// Connects to NATS at `url` with credentials and TLS options
    /// ([`sagaflow_nats::connect_with`]) and returns a builder. The user
    /// needs the participant's permissions (`docs/operations.md`,
    /// "Security").
    pub async fn connect_with(
        url: &str,
        options: &sagaflow_nats::ConnectOptions,
    ) -> Result<WorkerBuilder, WorkerError> {
        Ok(Worker::builder(
            sagaflow_nats::connect_with(url, options).await?,
        ))
    }

    /// The handlers served, in registration order.
    pub fn handlers(&self) -> Vec<&str> {
        self.slots.iter().map(|s| s.spec.handler.as_str()).collect()
    }

    /// The streams and buckets the worker uses.
    pub fn infra(&self) -> &sagaflow_nats::Infra {
        &self.infra
    }

    /// A handle that stops [`Worker::run`] gracefully. Take it before
    /// calling `run`.
    pub fn shutdown_handle(&self) -> ShutdownHandle {
        ShutdownHandle {
            tx: self.shutdown.clone(),
        }
    }

    /// Serves tasks until [`ShutdownHandle::shutdown`] is called, then
    /// stops pulling, waits for in-flight handlers up to the grace period
    /// and hands back (NAKs) the tasks still running after it.
    ///
    /// Dropping the returned future (or aborting the task running it)
    /// abandons in-flight tasks without acking them: the broker redelivers
    /// them after `ack_wait`, as if the process had died.
    pub async fn run(self) {
        let semaphore = Arc::new(Semaphore::new(self.concurrency.min(Semaphore::MAX_PERMITS)));
        let (abandon_tx, abandon_rx) = watch::channel(false);
        // Claims name the worker in the logs: its process and a unique
        // token of its connection.
        let worker_name = format!(
            "pid {} ({})",
            std::process::id(),
            self.infra
                .js
                .client()
                .new_inbox()
                .rsplit('.')
                .next()
                .unwrap_or_default()
        );
        let claims = self
            .idempotency
            .then(|| task::Claims::new(self.infra.idempotency.clone(), worker_name, self.ack_wait));
        let fair_share = (self.concurrency / self.slots.len().max(1)).clamp(1, MAX_PULL_BATCH);
        let runners: Vec<Arc<TaskRunner>> = self
            .slots
            .iter()
            .map(|slot| {
                Arc::new(TaskRunner {
                    js: self.infra.js.clone(),
                    claims: claims.clone(),
                    handler_name: slot.spec.handler.clone(),
                    handler: slot.handler.clone(),
                    ack_wait: self.ack_wait,
                    max_payload_bytes: self.max_payload_bytes,
                    inbox_prefix: self
                        .infra
                        .ns()
                        .inbox_wildcard()
                        .trim_end_matches('>')
                        .to_string(),
                    result_prefix: self
                        .infra
                        .ns()
                        .result_wildcard()
                        .trim_end_matches('>')
                        .to_string(),
                    abandon: abandon_rx.clone(),
                })
            })
            .collect();

        let (tx, mut rx) = mpsc::channel::<Pulled>(self.concurrency.min(1024));
        let mut pullers = futures::stream::FuturesUnordered::new();
        for (index, slot) in self.slots.iter().enumerate() {
            pullers.push(pull_loop(
                index,
                slot,
                &self.infra.tasks,
                semaphore.clone(),
                fair_share,
                self.shutdown.subscribe(),
                tx.clone(),
            ));
        }
        drop(tx);
        tracing::info!(handlers = ?self.handlers(), concurrency = self.concurrency, "worker started");

        let mut tasks = JoinSet::new();
        let mut shutdown_rx = self.shutdown.subscribe();
        let mut deadline: Option<Instant> = None;
        loop {
            tokio::select! {
                Some(()) = pullers.next(), if !pullers.is_empty() => {}
                pulled = rx.recv() => match pulled {
                    Some(Pulled { slot, message, permit }) => {
                        match runners.get(slot) {
                            Some(runner) => {
                                let runner = runner.clone();
                                tasks.spawn(async move {
                                    runner.process(message).await;
                                    drop(permit);
                                });
                            }
                            // Cannot happen (slots are indexed from the same
                            // vector); hand the task back rather than lose it.
                            None => task::nak_now(&message).await,
                        }
                    }
                    // Every puller stopped (shutdown) and the queue is empty.
                    None => break,
                },
                Some(joined) = tasks.join_next(), if !tasks.is_empty() => log_join(joined),
                true = stop_requested(&mut shutdown_rx), if deadline.is_none() => {
                    tracing::info!(grace = ?self.grace_period, "worker shutting down: no new tasks");
                    deadline = Some(Instant::now() + self.grace_period);
                }
            }
        }
        let deadline = deadline.unwrap_or_else(|| Instant::now() + self.grace_period);
        let finished = tokio::time::timeout_at(deadline, drain(&mut tasks)).await;
        if finished.is_err() {
            tracing::warn!(
                still_running = tasks.len(),
                "grace period over: handing back the tasks still running"
            );
            abandon_tx.send_replace(true);
            if tokio::time::timeout(ABANDON_WAIT, drain(&mut tasks))
                .await
                .is_err()
            {
                tasks.shutdown().await;
            }
        }
        // Acks are published without waiting for the broker's answer: send
        // the last ones before returning (not waiting for ever on a broker
        // that is away: those tasks are then redelivered after `ack_wait`).
        match tokio::time::timeout(ABANDON_WAIT, self.infra.js.client().flush()).await {
            Ok(Ok(())) => {}
            Ok(Err(e)) => tracing::warn!(error = %e, "could not send the last acks"),
            Err(_) => tracing::warn!("could not send the last acks in time"),
        }
        tracing::info!("worker stopped");
    }
}

async fn drain(tasks: &mut JoinSet<()>) {
    while let Some(joined) = tasks.join_next().await {
        log_join(joined);
    }
}

fn log_join(joined: Result<(), tokio::task::JoinError>) {
    if let Err(e) = joined
        && e.is_panic()
    {
        // Handler panics are caught inside the task; this is the worker's
        // own code panicking, which must not stop the other tasks.
        tracing::error!(error = %e, "a task of the worker panicked");
    }
}

/// Pulls a handler's tasks while there are free slots, until shutdown.
async fn pull_loop(
    index: usize,
    slot: &Slot,
    tasks_stream: &stream::Stream,
    semaphore: Arc<Semaphore>,
    fair_share: usize,
    mut shutdown: watch::Receiver<bool>,
    tx: mpsc::Sender<Pulled>,
) {
    let handler = slot.spec.handler.as_str();
    let mut consumer = slot.consumer.clone();
    'pull: loop {
        let first = tokio::select! {
            biased;
            _ = stop_requested(&mut shutdown) => break 'pull,
            permit = semaphore.clone().acquire_owned() => match permit {
                Ok(p) => p,
                Err(_) => break 'pull,
            },
        };
        // Ask for as many tasks as there are free slots, up to a fair share
        // so that an idle handler waiting for work does not hold every slot.
        let mut permits = vec![first];
        while permits.len() < fair_share {
            match semaphore.clone().try_acquire_owned() {
                Ok(p) => permits.push(p),
                Err(_) => break,
            }
        }
        let batch = consumer
            .batch()
            .max_messages(permits.len())
            .expires(POLL_EXPIRES)
            .messages()
            .await;
        let mut batch = match batch {
            Ok(batch) => batch,
            Err(e) => {
                drop(permits);
                tracing::warn!(handler, error = %e, "cannot pull tasks; retrying");
                if backoff(&mut shutdown).await {
                    break 'pull;
                }
                match slot.spec.open(tasks_stream).await {
                    Ok(reopened) => consumer = reopened,
                    Err(e) => tracing::warn!(handler, error = %e, "cannot reopen the consumer"),
                }
                continue 'pull;
            }
        };
        loop {
            let next = tokio::select! {
                biased;
                _ = stop_requested(&mut shutdown) => {
                    // The pull request may still deliver tasks until it
                    // expires: take them and hand them straight back rather
                    // than leave them unacknowledged for a whole ack wait.
                    let hand_back = async {
                        while let Some(Ok(message)) = batch.next().await {
                            task::nak_now(&message).await;
                        }
                    };
                    let _ = tokio::time::timeout(POLL_EXPIRES + Duration::from_secs(1), hand_back).await;
                    break 'pull;
                }
                next = batch.next() => next,
            };
            match next {
                None => break,
                Some(Err(e)) => {
                    tracing::warn!(handler, error = %e, "pulling tasks failed; retrying");
                    drop(permits);
                    if backoff(&mut shutdown).await {
                        break 'pull;
                    }
                    // The pull request is sent without waiting for an
                    // answer: a consumer deleted or recreated meanwhile (an
                    // operator's `nats consumer rm`, streams recreated on a
                    // server that lost its store) shows up here, as "no
                    // responders" or "consumer deleted". It is created
                    // again, or pulling would fail for ever.
                    match slot.spec.open(tasks_stream).await {
                        Ok(reopened) => consumer = reopened,
                        Err(e) => tracing::warn!(handler, error = %e, "cannot reopen the consumer"),
                    }
                    continue 'pull;
                }
                Some(Ok(message)) => {
                    let Some(permit) = permits.pop() else {
                        // The broker sent more than asked for: hand it back.
                        task::nak_now(&message).await;
                        continue;
                    };
                    if tx
                        .send(Pulled {
                            slot: index,
                            message,
                            permit,
                        })
                        .await
                        .is_err()
                    {
                        break 'pull;
                    }
                }
            }
        }
    }
    tracing::debug!(handler, "stopped pulling tasks");
}

/// Resolves when shutdown is asked (true) or the worker is gone (false).
/// (Returns a plain bool: the `watch::Ref` of `wait_for` is not `Send`.)
async fn stop_requested(shutdown: &mut watch::Receiver<bool>) -> bool {
    shutdown.wait_for(|stop| *stop).await.is_ok()
}

/// Waits [`PULL_ERROR_BACKOFF`]; true if shutdown was asked meanwhile.
async fn backoff(shutdown: &mut watch::Receiver<bool>) -> bool {
    tokio::select! {
        _ = stop_requested(shutdown) => true,
        _ = tokio::time::sleep(PULL_ERROR_BACKOFF) => false,
    }
}
