//! The API: one NATS service (`sagaflow`, see [`sagaflow_protocol::api`])
//! with one endpoint per [`Operation`] under the namespace's API prefix
//! (`sagaflow.api.execution.start`, ...), and the event triggers that start
//! executions from plain NATS messages.
//!
//! Every coordinator serves the API in the same queue group, so requests are
//! spread over them. The API never advances an execution itself: it reads
//! the store (state machines, execution index, histories) and publishes
//! events to the execution's inbox; the engine that owns the execution's
//! partition applies them.
//!
//! Requests are JSON; replies are [`Reply`] JSON. Errors also carry the
//! `Nats-Service-Error` / `Nats-Service-Error-Code` headers of the NATS
//! service protocol (with an HTTP-like code: 400, 404, 409, 413, 500), and
//! the body still holds the [`ApiError`], so a client gets the code, the
//! message and the details. Bad input (malformed JSON, wrong types, too
//! large) never stops the service: it gets an `InvalidRequest` or
//! `PayloadTooLarge` error.

use std::hash::{BuildHasher, Hasher};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use async_nats::service::ServiceExt;

use bytes::Bytes;
use futures::StreamExt;
use serde::Serialize;
use serde::de::DeserializeOwned;
use serde_json::{Value, json};
use tokio::sync::{Semaphore, watch};
use tokio::task::JoinHandle;

use sagaflow_asl::interp::Outcome;
use sagaflow_protocol::api::{
    ApiError, CreateStateMachine, DescribeStateMachine, ExecutionDescription, ExecutionHistory,
    ExecutionList, ExecutionRequest, ExecutionStatus, HistoryRequest, ListExecutions,
    MAX_LIST_RESULTS, Operation, Reply, SendTaskFailure, SendTaskHeartbeat, SendTaskSuccess,
    StartExecutionReply, StartExecutionRequest, StateMachineSummary, StateMachineVersion,
    StopExecutionRequest,
};
use sagaflow_protocol::{
    ExecutionRef, InboxMessage, Namespace, StartExecution, check_name, decode_task_token, headers,
};

pub use super::engine::Trigger;
use super::engine::{ClusterHandle, ClusterOptions};
use super::history_view;
use super::store::{FirstStep, ListPosition, Store, StoreError, StoredHistory};
use crate::RuntimeOptions;

/// The NATS service's name.
pub const SERVICE_NAME: &str = "sagaflow";
/// The queue group every coordinator's API endpoints join.
pub const QUEUE_GROUP: &str = "sagaflow-api";
/// The prefix of the event triggers' queue groups (see
/// [`trigger_queue_group`]).
pub const TRIGGER_QUEUE_GROUP: &str = "sagaflow-triggers";

/// The queue group of one trigger: `sagaflow-triggers.` and 16 hex digits
/// of a SHA-256 of the namespace, the subject and the state machine. Every
/// coordinator serving the same trigger joins the same group, so a message
/// starts one execution of that machine; two triggers on overlapping
/// subjects (two machines started by one event) or two namespaces on one
/// account each get their own copy. Stable across builds.
pub fn trigger_queue_group(namespace: &Namespace, trigger: &Trigger) -> String {
    use sha2::{Digest, Sha256};
    let mut hash = Sha256::new();
    for part in [
        namespace.prefix(),
        trigger.subject.as_str(),
        trigger.state_machine.as_str(),
    ] {
        hash.update((part.len() as u64).to_be_bytes());
        hash.update(part.as_bytes());
    }
    let digest = hash.finalize();
    let hex: String = digest[..8].iter().map(|b| format!("{b:02x}")).collect();
    format!("{TRIGGER_QUEUE_GROUP}.{hex}")
}
/// Header naming the execution a trigger message starts.
pub const EXECUTION_NAME_HEADER: &str = "Sagaflow-Execution-Name";

/// Error codes (AWS-like).
pub mod codes {
    /// The definition is invalid; `details` lists every problem.
    pub const INVALID_DEFINITION: &str = "InvalidDefinition";
    /// No such state machine (or version).
    pub const STATE_MACHINE_DOES_NOT_EXIST: &str = "StateMachineDoesNotExist";
    /// No such execution.
    pub const EXECUTION_DOES_NOT_EXIST: &str = "ExecutionDoesNotExist";
    /// An execution with this name exists with another input.
    pub const EXECUTION_ALREADY_EXISTS: &str = "ExecutionAlreadyExists";
    /// A name or ARN is not valid.
    pub const INVALID_NAME: &str = "InvalidName";
    /// A task token does not decode.
    pub const INVALID_TOKEN: &str = "InvalidToken";
    /// The task's execution does not exist.
    pub const TASK_DOES_NOT_EXIST: &str = "TaskDoesNotExist";
    /// The task no longer waits: answered, timed out or cancelled, or its
    /// execution has ended (AWS's answer then).
    pub const TASK_TIMED_OUT: &str = "TaskTimedOut";
    /// The request is malformed.
    pub const INVALID_REQUEST: &str = "InvalidRequest";
    /// Only failed, timed-out or aborted executions can be redriven.
    pub const EXECUTION_NOT_REDRIVABLE: &str = "ExecutionNotRedrivable";
    /// A request, input or output is too large.
    pub const PAYLOAD_TOO_LARGE: &str = "PayloadTooLarge";
    /// An execution input that cannot be taken (nested too deep).
    pub const INVALID_EXECUTION_INPUT: &str = "InvalidExecutionInput";
    /// A task output that cannot be taken (nested too deep).
    pub const INVALID_OUTPUT: &str = "InvalidOutput";
    /// Something failed inside the coordinator or NATS.
    pub const INTERNAL: &str = "Internal";
    /// The coordinator has more requests than it takes at once and queues:
    /// the request was not handled; send it again (the client does, after
    /// a pause).
    pub const THROTTLED: &str = "ThrottlingException";
}

/// The HTTP-like status of an error code, for the `Nats-Service-Error-Code`
/// header.
pub fn status_of(code: &str) -> usize {
    match code {
        codes::STATE_MACHINE_DOES_NOT_EXIST
        | codes::EXECUTION_DOES_NOT_EXIST
        | codes::TASK_DOES_NOT_EXIST => 404,
        codes::EXECUTION_ALREADY_EXISTS | codes::EXECUTION_NOT_REDRIVABLE => 409,
        codes::PAYLOAD_TOO_LARGE => 413,
        codes::THROTTLED => 429,
        codes::INTERNAL => 500,
        _ => 400,
    }
}

/// Options of the API.
#[derive(Debug, Clone)]
pub struct ApiOptions {
    /// Largest execution input or task result, in bytes of JSON (the
    /// runtime's `max_payload_bytes`, AWS: 256 KiB).
    pub max_payload_bytes: usize,
    /// Requests handled at once by this process.
    pub max_in_flight: usize,
    /// Requests waiting for one of those places (each for at most
    /// [`MAX_QUEUE_WAIT`]); more are answered [`codes::THROTTLED`] at once,
    /// so that a flood of requests costs bounded memory.
    pub max_queued: usize,
    /// The interpreter's options the coordinators run with, for the
    /// replays the API makes (history with payloads, redrive checks).
    pub interp: sagaflow_asl::interp::Options,
}

impl Default for ApiOptions {
    fn default() -> Self {
        ApiOptions::from_runtime(&RuntimeOptions::default())
    }
}

impl ApiOptions {
    /// Options matching the runtime's limits.
    pub fn from_runtime(runtime: &RuntimeOptions) -> ApiOptions {
        ApiOptions {
            max_payload_bytes: runtime.max_payload_bytes,
            max_in_flight: 256,
            max_queued: 1024,
            interp: runtime.interp_options(),
        }
    }
}

/// Starting the API service or the triggers failed.
#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    /// The NATS service could not be started.
    #[error("cannot start the API service: {0}")]
    Service(String),
    /// A trigger could not subscribe.
    #[error("cannot subscribe trigger on '{subject}': {message}")]
    Trigger {
        /// The subject.
        subject: String,
        /// The client's error.
        message: String,
    },
    /// A trigger is malformed.
    #[error("invalid trigger '{0}': expected SUBJECT=STATE_MACHINE")]
    InvalidTrigger(String),
    /// A trigger's subject could match subjects that are not events: the
    /// namespace's own (every history append, task and API request would
    /// start an execution, and each start another), or the server's.
    #[error(
        "trigger subject '{subject}' could match {what}; choose a subject outside them (for \
         example 'events.orders.created')"
    )]
    TriggerOverlaps {
        /// The trigger's subject.
        subject: String,
        /// What it could match.
        what: String,
    },
}

/// Refuses a trigger subject that could match the namespace's own subjects
/// (`{prefix}.…`: inbox, history, tasks, results, API) or the server's
/// (`$JS.…`, `$KV.…`, `$SYS.…`) and replies' (`_INBOX.…`).
fn check_trigger_subject(subject: &str, namespace: &Namespace) -> Result<(), ServeError> {
    let overlaps = |what: String| ServeError::TriggerOverlaps {
        subject: subject.to_string(),
        what,
    };
    let mut tokens = subject.split('.');
    let first = tokens.next().unwrap_or_default();
    let more = tokens.next().is_some();
    if first == ">" || ((first == "*" || first == namespace.prefix()) && more) {
        return Err(overlaps(format!(
            "the subjects of namespace '{}' ('{}.>')",
            namespace.prefix(),
            namespace.prefix()
        )));
    }
    if first.starts_with('$') || first == "_INBOX" {
        return Err(overlaps(format!("the server's own subjects ('{first}.>')")));
    }
    Ok(())
}

impl Trigger {
    /// Parses `SUBJECT=STATE_MACHINE`.
    pub fn parse(text: &str) -> Result<Trigger, ServeError> {
        let bad = || ServeError::InvalidTrigger(text.to_string());
        let (subject, machine) = text.split_once('=').ok_or_else(bad)?;
        let subject = subject.trim();
        let machine = machine.trim();
        if subject.is_empty()
            || subject.contains(char::is_whitespace)
            || check_name("state machine name", machine).is_err()
        {
            return Err(bad());
        }
        Ok(Trigger {
            subject: subject.to_string(),
            state_machine: machine.to_string(),
        })
    }
}

fn internal(e: StoreError) -> ApiError {
    match e {
        StoreError::TooLarge { what, bytes } => ApiError::new(
            codes::PAYLOAD_TOO_LARGE,
            format!("a {what} of {bytes} bytes exceeds the server's limit"),
        ),
        other => ApiError::new(codes::INTERNAL, other.to_string()),
    }
}

fn invalid_name(e: impl std::fmt::Display) -> ApiError {
    ApiError::new(codes::INVALID_NAME, e.to_string())
}

fn now() -> String {
    super::engine::rfc3339(jiff::Timestamp::now())
}

/// A random 64-bit number (seeds, fresh names): std's randomly keyed
/// SipHash over the time and a process-wide counter.
pub fn random_u64() -> u64 {
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u64(COUNTER.fetch_add(1, Ordering::Relaxed));
    h.write_i128(jiff::Timestamp::now().as_nanosecond());
    h.finish()
}

/// A fresh execution name shaped like a UUID (version 4).
pub fn fresh_name() -> String {
    let a = random_u64();
    let b = random_u64();
    format!(
        "{:08x}-{:04x}-4{:03x}-{:04x}-{:012x}",
        a >> 32,
        (a >> 16) & 0xffff,
        a & 0x0fff,
        ((b >> 48) & 0x3fff) | 0x8000,
        b & 0xffff_ffff_ffff
    )
}

fn json_len(value: &Value) -> usize {
    serde_json::to_vec(value)
        .map(|v| v.len())
        .unwrap_or(usize::MAX)
}

fn parse_arn(arn: &str) -> Result<ExecutionRef, ApiError> {
    ExecutionRef::from_arn(arn).map_err(invalid_name)
}

/// The API's logic, usable without NATS's service layer (the triggers and
/// the engine call [`Api::start_execution`] directly).
#[derive(Clone)]
pub struct Api {
    store: Store,
    options: ApiOptions,
}

impl Api {
    /// The API over a store.
    pub fn new(store: Store, options: ApiOptions) -> Api {
        Api { store, options }
    }

    /// The store.
    pub fn store(&self) -> &Store {
        &self.store
    }

    fn max_request_bytes(&self) -> usize {
        self.store.infra().message_limit()
    }

    fn inbox_subject(&self, exec: &ExecutionRef) -> String {
        self.store
            .infra()
            .ns()
            .inbox_subject(self.store.partition_of(exec), exec)
    }

    /// Publishes an event to an execution's inbox and waits for the stream's
    /// acknowledgement. Returns whether the broker dropped it as a duplicate
    /// of `msg_id`.
    async fn publish(
        &self,
        exec: &ExecutionRef,
        message: &InboxMessage,
        msg_id: Option<String>,
        traceparent: Option<&str>,
    ) -> Result<bool, ApiError> {
        let body = serde_json::to_vec(message)
            .map_err(|e| ApiError::new(codes::INTERNAL, e.to_string()))?;
        if body.len() > self.max_request_bytes() {
            return Err(ApiError::new(
                codes::PAYLOAD_TOO_LARGE,
                format!(
                    "the event is {} bytes; the inbox accepts at most {}",
                    body.len(),
                    self.max_request_bytes()
                ),
            ));
        }
        let mut hdrs = async_nats::HeaderMap::new();
        if let Some(id) = msg_id {
            hdrs.insert(headers::MSG_ID, id.as_str());
        }
        if let Some(tp) = traceparent {
            hdrs.insert(headers::TRACEPARENT, tp);
        }
        let ack = self
            .store
            .infra()
            .js
            .publish_with_headers(self.inbox_subject(exec), hdrs, body.into())
            .await
            .map_err(|e| ApiError::new(codes::INTERNAL, format!("publish to inbox: {e}")))?
            .await
            .map_err(|e| ApiError::new(codes::INTERNAL, format!("publish to inbox: {e}")))?;
        Ok(ack.duplicate)
    }

    /// An execution's index entry, or its start still queued in its inbox
    /// (described as RUNNING).
    async fn index_entry(&self, exec: &ExecutionRef) -> Result<ExecutionDescription, ApiError> {
        if let Some(desc) = self.store.execution(exec).await.map_err(internal)? {
            return Ok(desc);
        }
        if let Some(desc) = self.queued_start(exec).await {
            return Ok(desc);
        }
        // The engine indexes a start before it takes it out of the inbox
        // (and a redrive): one taken between the two reads is in the index
        // now.
        if let Some(desc) = self.store.execution(exec).await.map_err(internal)? {
            return Ok(desc);
        }
        Err(ApiError::new(
            codes::EXECUTION_DOES_NOT_EXIST,
            format!("execution {} does not exist", exec.arn()),
        ))
    }

    /// The start waiting in an execution's inbox, if its oldest message is
    /// one (a stop accepted meanwhile comes after it), and when it was
    /// queued.
    async fn queued_start_message(
        &self,
        exec: &ExecutionRef,
    ) -> Option<(StartExecution, Option<jiff::Timestamp>)> {
        let message = self
            .store
            .infra()
            .inbox
            .get_first_raw_message_by_subject(self.inbox_subject(exec).as_str(), 1)
            .await
            .ok()?;
        match serde_json::from_slice(&message.payload).ok()? {
            InboxMessage::StartExecution(start) if start.execution_arn == exec.arn() => Some((
                start,
                jiff::Timestamp::from_nanosecond(message.time.unix_timestamp_nanos()).ok(),
            )),
            _ => None,
        }
    }

    /// An execution whose start is accepted but still queued in its inbox
    /// (its partition's owner has not taken it yet: milliseconds normally,
    /// longer during a failover), described as RUNNING from that start, so
    /// that a describe right after a start finds it, as on AWS.
    async fn queued_start(&self, exec: &ExecutionRef) -> Option<ExecutionDescription> {
        let (start, queued_at) = self.queued_start_message(exec).await?;
        let start_date = queued_at.map(super::engine::rfc3339).unwrap_or_else(now);
        Some(ExecutionDescription {
            execution_arn: exec.arn(),
            name: exec.name().to_string(),
            state_machine: exec.state_machine().to_string(),
            version: start.version,
            status: ExecutionStatus::Running,
            start_date,
            stop_date: None,
            input: Some(start.input),
            output: None,
            error: None,
            cause: None,
            redrive_count: 0,
            trace_id: None,
        })
    }

    // ------------------------------------------------------ state machines

    /// `CreateStateMachine`: validates the definition and stores a new
    /// version (the same definition as the latest version returns that
    /// version).
    pub async fn create_state_machine(
        &self,
        req: CreateStateMachine,
    ) -> Result<StateMachineVersion, ApiError> {
        check_name("state machine name", &req.name).map_err(invalid_name)?;
        if let Err(invalid) = sagaflow_asl::parse::parse_definition(&req.definition) {
            let count = invalid.errors.len();
            let first = invalid
                .errors
                .first()
                .map(|e| e.to_string())
                .unwrap_or_default();
            let mut err = ApiError::new(
                codes::INVALID_DEFINITION,
                format!("the definition has {count} error(s); the first: {first}"),
            );
            err.details = Some(
                serde_json::to_value(&invalid.errors)
                    .map_err(|e| ApiError::new(codes::INTERNAL, e.to_string()))?,
            );
            return Err(err);
        }
        self.store
            .create_machine(&req.name, &req.definition, &now())
            .await
            .map_err(internal)
    }

    /// `DescribeStateMachine`.
    pub async fn describe_state_machine(
        &self,
        req: DescribeStateMachine,
    ) -> Result<StateMachineVersion, ApiError> {
        check_name("state machine name", &req.name).map_err(invalid_name)?;
        self.store
            .machine(&req.name, req.version)
            .await
            .map_err(internal)?
            .ok_or_else(|| machine_missing(&req.name, req.version))
    }

    /// `ListStateMachines`.
    pub async fn list_state_machines(&self) -> Result<Vec<StateMachineSummary>, ApiError> {
        self.store.list_machines().await.map_err(internal)
    }

    // ---------------------------------------------------------- executions

    /// The input and version an existing execution started with, if it
    /// exists: from a start still waiting in its inbox, else from its
    /// history, else (indexed but unreadable) from the index.
    ///
    /// In that order because the engine takes a start out of the inbox only
    /// after its history (and index entry) are written: a start not found in
    /// the inbox and then not in the history was not there when the inbox
    /// was read. The other order could miss a start taken between the two
    /// reads, and answer from the index alone ("already started", whatever
    /// the input).
    async fn existing_start(
        &self,
        exec: &ExecutionRef,
    ) -> Result<Option<(Option<Value>, u64)>, ApiError> {
        if let Some(found) = self.start_in_inbox_or_history(exec).await? {
            return Ok(Some(found));
        }
        let Some(entry) = self.store.execution(exec).await.map_err(internal)? else {
            return Ok(None);
        };
        // Indexed meanwhile: a start the engine was taking (index entry and
        // history written, then out of the inbox) is in one of the two now.
        if let Some(found) = self.start_in_inbox_or_history(exec).await? {
            return Ok(Some(found));
        }
        Ok(Some((None, entry.version)))
    }

    /// The input and version of an execution's start, from its inbox (still
    /// queued) or else its history.
    async fn start_in_inbox_or_history(
        &self,
        exec: &ExecutionRef,
    ) -> Result<Option<(Option<Value>, u64)>, ApiError> {
        if let Some((start, _)) = self.queued_start_message(exec).await {
            return Ok(Some((Some(start.input), start.version)));
        }
        // The start is in the first step: read alone, not the whole
        // history (a repeated trigger message would read it every time).
        let batches = match self
            .store
            .first_history_step(exec)
            .await
            .map_err(internal)?
        {
            FirstStep::None => return Ok(None),
            FirstStep::Whole(batch)
                if history_view::started_input(batch.entries.iter()).is_some() =>
            {
                vec![batch]
            }
            FirstStep::Whole(_) | FirstStep::InParts => {
                self.store
                    .read_history(exec)
                    .await
                    .map_err(internal)?
                    .batches
            }
        };
        let entries = || batches.iter().flat_map(|b| b.entries.iter());
        if let Some(input) = history_view::started_input(entries()) {
            let version = batches
                .iter()
                .find_map(|b| b.meta.as_ref().map(|m| m.version))
                .unwrap_or(0);
            return Ok(Some((Some(input), version)));
        }
        Ok(None)
    }

    /// `StartExecution`. Idempotent by name: starting an existing execution
    /// again with the same input answers `already_started`; with another
    /// input, `ExecutionAlreadyExists`. (AWS is idempotent this way only
    /// while the execution runs; we also are after it ended, so that
    /// redelivered trigger events do not fail.)
    pub async fn start_execution(
        &self,
        req: StartExecutionRequest,
    ) -> Result<StartExecutionReply, ApiError> {
        check_name("state machine name", &req.state_machine).map_err(invalid_name)?;
        let name = match req.name {
            Some(name) => {
                check_name("execution name", &name).map_err(invalid_name)?;
                name
            }
            None => fresh_name(),
        };
        let exec = ExecutionRef::new(&req.state_machine, &name).map_err(invalid_name)?;
        let input = req.input.unwrap_or_else(|| json!({}));
        // The depth first (as embedded): measuring the size recurses.
        if sagaflow_asl::interp::too_deeply_nested(&input) {
            return Err(ApiError::new(
                codes::INVALID_EXECUTION_INPUT,
                format!(
                    "the input nests arrays and objects more than {} levels deep",
                    sagaflow_asl::interp::MAX_DEPTH
                ),
            ));
        }
        let size = json_len(&input);
        if size > self.options.max_payload_bytes {
            return Err(ApiError::new(
                codes::PAYLOAD_TOO_LARGE,
                format!(
                    "the input is {size} bytes; at most {} are allowed",
                    self.options.max_payload_bytes
                ),
            ));
        }
        let machine = self
            .store
            .machine(&req.state_machine, req.version)
            .await
            .map_err(internal)?
            .ok_or_else(|| machine_missing(&req.state_machine, req.version))?;

        let same_or_conflict = |existing: Option<(Option<Value>, u64)>| match existing {
            Some((Some(old), version)) if old == input => Ok(StartExecutionReply {
                execution_arn: exec.arn(),
                version,
                already_started: true,
            }),
            Some((None, version)) => Ok(StartExecutionReply {
                // Indexed, input unknown: assume the same start.
                execution_arn: exec.arn(),
                version,
                already_started: true,
            }),
            Some((Some(_), _)) => Err(ApiError::new(
                codes::EXECUTION_ALREADY_EXISTS,
                format!(
                    "execution {} already exists with a different input",
                    exec.arn()
                ),
            )),
            None => Err(ApiError::new(codes::INTERNAL, "unreachable")),
        };
        if let Some(existing) = self.existing_start(&exec).await? {
            return same_or_conflict(Some(existing));
        }
        // The caller's trace context, as W3C asks: a malformed one is
        // ignored; a valid one is passed on in its canonical form (it goes
        // into a message header).
        let traceparent = req.traceparent.as_deref().and_then(|text| {
            let context = sagaflow_telemetry::propagation::parse_traceparent(text)?;
            sagaflow_telemetry::propagation::format_traceparent(&context)
        });
        let message = InboxMessage::StartExecution(StartExecution {
            execution_arn: exec.arn(),
            version: machine.version,
            input: input.clone(),
            seed: random_u64(),
            traceparent: traceparent.clone(),
            parent: None,
        });
        let duplicate = self
            .publish(
                &exec,
                &message,
                Some(format!("start/{}", exec.key())),
                traceparent.as_deref(),
            )
            .await?;
        if duplicate {
            // Someone started it at the same time: compare with theirs.
            return match self.existing_start(&exec).await? {
                Some(existing) => same_or_conflict(Some(existing)),
                // The broker still remembers a start of this name, but
                // the execution is gone: it ended and was deleted after its
                // retention. A new start would be dropped as a repeat
                // until the broker forgets the first.
                None => Err(ApiError::new(
                    codes::EXECUTION_ALREADY_EXISTS,
                    format!(
                        "execution {} was started less than {} s ago and deleted since \
                         (its retention ran out); its name can be used again once {} s \
                         have passed since that start",
                        exec.arn(),
                        self.store.infra().settings.duplicate_window.as_secs(),
                        self.store.infra().settings.duplicate_window.as_secs(),
                    ),
                )),
            };
        }
        Ok(StartExecutionReply {
            execution_arn: exec.arn(),
            version: machine.version,
            already_started: false,
        })
    }

    /// `DescribeExecution`: the index entry with the input and output from
    /// the history.
    pub async fn describe_execution(
        &self,
        req: ExecutionRequest,
    ) -> Result<ExecutionDescription, ApiError> {
        let exec = parse_arn(&req.execution_arn)?;
        let mut desc = self.index_entry(&exec).await?;
        let history = self.store.read_history(&exec).await.map_err(internal)?;
        let entries = || history.batches.iter().flat_map(|b| b.entries.iter());
        if let Some(input) = history_view::started_input(entries()) {
            desc.input = Some(input);
        }
        if desc.status != ExecutionStatus::Running {
            match history_view::last_outcome(entries()) {
                Some(Outcome::Succeeded { output }) => {
                    desc.output = Some(Arc::unwrap_or_clone(output));
                }
                // A Fail state without Error or Cause has none (AWS leaves
                // the fields out), as the index has it.
                Some(Outcome::Failed { error, cause } | Outcome::TimedOut { error, cause }) => {
                    desc.error = desc.error.or(Some(error).filter(|e| !e.is_empty()));
                    desc.cause = desc.cause.or(Some(cause).filter(|c| !c.is_empty()));
                }
                Some(Outcome::Aborted { error, cause }) => {
                    desc.error = desc.error.or(error);
                    desc.cause = desc.cause.or(cause);
                }
                None => {}
            }
        }
        Ok(desc)
    }

    /// `GetExecutionHistory`: Step Functions-style events, a page at a time
    /// (at most `max_results`, 1,000 by default and at most, and what fits
    /// in a message); `next_token` goes on.
    pub async fn execution_history(
        &self,
        req: HistoryRequest,
    ) -> Result<ExecutionHistory, ApiError> {
        let exec = parse_arn(&req.execution_arn)?;
        let history: StoredHistory = self.store.read_history(&exec).await.map_err(internal)?;
        if history.batches.is_empty() {
            // Not started yet (or unknown): the index tells which.
            self.index_entry(&exec).await?;
        }
        let invalid_token = || ApiError::new(codes::INVALID_REQUEST, "invalid next token");
        // A token is where the next page starts: an event's index, counted
        // from the oldest; in reverse order, prefixed with `r`, the index
        // after the next page's newest event.
        let position = match req.next_token.as_deref() {
            None => None,
            Some(token) => {
                let number = if req.reverse_order {
                    token.strip_prefix('r').ok_or_else(invalid_token)?
                } else {
                    token
                };
                Some(number.parse::<usize>().map_err(|_| invalid_token())?)
            }
        };
        let limit = req
            .max_results
            .unwrap_or(MAX_LIST_RESULTS)
            .clamp(1, MAX_LIST_RESULTS);
        // Records are stored without copies of state inputs and outputs;
        // replaying the events brings them back. Only this page's events
        // are kept.
        let stored = || {
            history
                .batches
                .iter()
                .flat_map(|b| b.entries.iter().cloned())
        };
        let machine = self.machine_of(&history).await?;
        let interp = &self.options.interp;
        // The page, and where it starts (forward) or ends (in reverse).
        let (mut page, from, total) = if req.reverse_order {
            // The events before `end`, newest first: the first page needs
            // the count (a replay that keeps no event).
            let end = match position {
                Some(end) => end,
                None => history_view::render_page(machine.clone(), interp, stored, 0, 0).1,
            };
            let start = end.saturating_sub(limit);
            let (mut page, total) =
                history_view::render_page(machine, interp, stored, start, end - start);
            if end > total {
                return Err(invalid_token());
            }
            page.reverse();
            (page, end, total)
        } else {
            let start = position.unwrap_or(0);
            let (page, total) = history_view::render_page(machine, interp, stored, start, limit);
            if start > total {
                return Err(invalid_token());
            }
            (page, start, total)
        };
        // The reply's envelope fits in the rest.
        let budget = self.max_request_bytes().saturating_sub(4096);
        let mut used = 2;
        let mut taken = 0;
        for event in &page {
            let size = serde_json::to_vec(event).map_or(usize::MAX, |b| b.len()) + 1;
            if taken > 0 && used + size > budget {
                break;
            }
            used += size;
            taken += 1;
        }
        page.truncate(taken);
        let events = page;
        let next_token = if req.reverse_order {
            // The newest `taken` events before `from` were sent.
            let next_end = from - taken;
            (next_end > 0).then(|| format!("r{next_end}"))
        } else {
            let next_start = from + taken;
            (next_start < total).then(|| next_start.to_string())
        };
        Ok(ExecutionHistory { events, next_token })
    }

    /// `ListExecutions`: one page (at most `max_results`, 1,000 by default
    /// and at most), newest first; `next_token` goes on.
    pub async fn list_executions(&self, req: ListExecutions) -> Result<ExecutionList, ApiError> {
        if let Some(m) = &req.state_machine {
            check_name("state machine name", m).map_err(invalid_name)?;
        }
        let after = match req.next_token.as_deref() {
            None => None,
            Some(token) => Some(
                ListPosition::parse(token)
                    .ok_or_else(|| ApiError::new(codes::INVALID_REQUEST, "invalid next token"))?,
            ),
        };
        let limit = req
            .max_results
            .unwrap_or(MAX_LIST_RESULTS)
            .clamp(1, MAX_LIST_RESULTS);
        let (executions, next_token) = self
            .store
            .list_executions_page(
                req.state_machine.as_deref(),
                req.status,
                after.as_ref(),
                limit,
                // The reply's other fields and envelope fit in the rest.
                self.max_request_bytes().saturating_sub(4096),
            )
            .await
            .map_err(internal)?;
        Ok(ExecutionList {
            executions,
            next_token: next_token.map(|p| p.token()),
        })
    }

    /// `StopExecution`: asks the engine to abort it (a finished execution
    /// is left as it is).
    pub async fn stop_execution(&self, req: StopExecutionRequest) -> Result<(), ApiError> {
        let exec = parse_arn(&req.execution_arn)?;
        check_error_cause(req.error.as_deref(), req.cause.as_deref())?;
        let mut entry = self.store.execution(&exec).await.map_err(internal)?;
        let running = |entry: &Option<ExecutionDescription>| {
            entry
                .as_ref()
                .is_some_and(|e| e.status == ExecutionStatus::Running)
        };
        // A start or a redrive accepted and still in the inbox is running
        // as far as its caller knows: the stop goes in after it.
        if !running(&entry) && !self.queued_in_inbox(&exec).await {
            // The engine writes the index entry of a start or a redrive
            // before it takes the message out of the inbox: one taken
            // between the two reads shows in the index now.
            entry = self.store.execution(&exec).await.map_err(internal)?;
            if !running(&entry) {
                return match entry {
                    Some(_) => Ok(()),
                    None => Err(ApiError::new(
                        codes::EXECUTION_DOES_NOT_EXIST,
                        format!("execution {} does not exist", exec.arn()),
                    )),
                };
            }
        }
        // The run it stops, as the index showed it when asked: the running
        // one, or the one a queued redrive (of an ended execution) or start
        // (of none yet) is about to run. (Read again now, a run that ended
        // meanwhile would make the stop aim at a redrive made later.)
        let run = match &entry {
            Some(e) if e.status == ExecutionStatus::Running => e.redrive_count,
            Some(e) => e.redrive_count.saturating_add(1),
            None => 0,
        };
        self.publish(
            &exec,
            &InboxMessage::StopExecution {
                execution_arn: exec.arn(),
                error: req.error,
                cause: req.cause,
                parent: None,
                redrive_count: Some(run),
            },
            None,
            None,
        )
        .await?;
        Ok(())
    }

    /// `RedriveExecution`: only failed, timed-out or aborted executions.
    pub async fn redrive_execution(&self, req: ExecutionRequest) -> Result<(), ApiError> {
        let exec = parse_arn(&req.execution_arn)?;
        let entry = self.index_entry(&exec).await?;
        match entry.status {
            ExecutionStatus::Failed | ExecutionStatus::TimedOut | ExecutionStatus::Aborted => {}
            other => {
                return Err(ApiError::new(
                    codes::EXECUTION_NOT_REDRIVABLE,
                    format!(
                        "execution {} is {}; only FAILED, TIMED_OUT or ABORTED executions can be redriven",
                        exec.arn(),
                        other.as_str()
                    ),
                ));
            }
        }
        if !self.history_redrivable(&exec).await? {
            return Err(ApiError::new(
                codes::EXECUTION_NOT_REDRIVABLE,
                format!(
                    "execution {} cannot be redriven: no state was running when it ended",
                    exec.arn()
                ),
            ));
        }
        // One redrive per redrive count: concurrent requests collapse.
        self.publish(
            &exec,
            &InboxMessage::RedriveExecution {
                execution_arn: exec.arn(),
                redrive_count: Some(entry.redrive_count),
            },
            Some(format!("redrive/{}/{}", exec.key(), entry.redrive_count)),
            None,
        )
        .await?;
        Ok(())
    }

    /// Whether an inbox message for the execution waits to be taken (the
    /// inbox is a work queue: a message taken is gone).
    async fn queued_in_inbox(&self, exec: &ExecutionRef) -> bool {
        self.store
            .infra()
            .inbox
            .get_last_raw_message_by_subject(self.inbox_subject(exec).as_str())
            .await
            .is_ok()
    }

    /// The state machine version a history was started with, parsed;
    /// `None` when the history has no start or the version is gone or does
    /// not parse; an error when the store could not be read (not taken for
    /// "gone": the caller would answer wrongly).
    async fn machine_of(
        &self,
        history: &StoredHistory,
    ) -> Result<Option<std::sync::Arc<sagaflow_asl::model::StateMachine>>, ApiError> {
        let Some(meta) = history.batches.first().and_then(|b| b.meta.as_ref()) else {
            return Ok(None);
        };
        let Some(version) = self
            .store
            .machine(&meta.state_machine, Some(meta.version))
            .await
            .map_err(internal)?
        else {
            return Ok(None);
        };
        Ok(
            sagaflow_asl::parse::parse_accepted_definition(&version.definition)
                .ok()
                .map(std::sync::Arc::new),
        )
    }

    /// Whether the execution's history, replayed, leaves a state to run
    /// again: an execution that failed between states (the state-transition
    /// limit) or before its first cannot be redriven. When the history or
    /// its machine cannot be read or replayed to the same end, the engine
    /// decides.
    async fn history_redrivable(&self, exec: &ExecutionRef) -> Result<bool, ApiError> {
        use sagaflow_asl::interp::Execution;
        let history = self.store.read_history(exec).await.map_err(internal)?;
        let Some(machine) = self.machine_of(&history).await? else {
            return Ok(true);
        };
        let mut execution = Execution::new(machine, self.options.interp.clone());
        let mut out = Vec::new();
        for entry in history.batches.iter().flat_map(|b| &b.entries) {
            if let crate::HistoryItem::Event(event) = &entry.item {
                out.clear();
                if !matches!(
                    super::engine::apply_guarded(&mut execution, entry.at, event.clone(), &mut out),
                    Ok(Ok(()))
                ) {
                    return Ok(true);
                }
            }
        }
        // A replay that does not end as the execution did (its definition
        // changed under it) proves nothing: the engine decides.
        Ok(match execution.outcome() {
            Some(
                sagaflow_asl::interp::Outcome::Failed { .. }
                | sagaflow_asl::interp::Outcome::TimedOut { .. }
                | sagaflow_asl::interp::Outcome::Aborted { .. },
            ) => execution.redrivable(),
            _ => true,
        })
    }

    /// The execution and task a token names; the execution must be running.
    /// A task answered already (its history shows the answer) is
    /// `TaskTimedOut`; one whose answer is still in the inbox is caught by
    /// the answer's `Nats-Msg-Id` ([`answer_msg_id`]).
    async fn token_target(&self, token: &str) -> Result<(ExecutionRef, String), ApiError> {
        let invalid = || ApiError::new(codes::INVALID_TOKEN, "the task token is not valid");
        let (execution, task_id) = decode_task_token(token).ok_or_else(invalid)?;
        let exec = ExecutionRef::from_arn(&execution).map_err(|_| invalid())?;
        match self.store.execution(&exec).await.map_err(internal)? {
            None => Err(ApiError::new(
                codes::TASK_DOES_NOT_EXIST,
                format!("execution {} does not exist", exec.arn()),
            )),
            Some(entry) if entry.status != ExecutionStatus::Running => Err(ApiError::new(
                codes::TASK_TIMED_OUT,
                format!(
                    "execution {} has finished ({}); its tasks no longer wait",
                    exec.arn(),
                    entry.status.as_str()
                ),
            )),
            Some(_) => {
                let stored = self.store.read_history(&exec).await.map_err(internal)?;
                let entries = stored.batches.iter().flat_map(|b| b.entries.iter());
                match callback_state(entries, &task_id, token) {
                    CallbackState::Waiting => Ok((exec, task_id)),
                    CallbackState::Unknown => Err(invalid()),
                    CallbackState::Closed => Err(ApiError::new(
                        codes::TASK_TIMED_OUT,
                        format!(
                            "task {task_id} of {} no longer waits for an answer",
                            exec.arn()
                        ),
                    )),
                }
            }
        }
    }

    /// `SendTaskSuccess`.
    pub async fn send_task_success(&self, req: SendTaskSuccess) -> Result<(), ApiError> {
        let size = json_len(&req.output);
        if size > self.options.max_payload_bytes {
            return Err(ApiError::new(
                codes::PAYLOAD_TOO_LARGE,
                format!(
                    "the output is {size} bytes; at most {} are allowed",
                    self.options.max_payload_bytes
                ),
            ));
        }
        if sagaflow_asl::interp::too_deeply_nested(&req.output) {
            return Err(ApiError::new(
                codes::INVALID_OUTPUT,
                format!(
                    "the output nests arrays and objects more than {} levels deep",
                    sagaflow_asl::interp::MAX_DEPTH
                ),
            ));
        }
        let (exec, task_id) = self.token_target(&req.task_token).await?;
        let answer = answer_msg_id(&exec, &task_id, &req.task_token);
        let repeated = self
            .publish(
                &exec,
                &InboxMessage::TaskSucceeded {
                    execution_arn: exec.arn(),
                    task_id: task_id.clone(),
                    output: req.output,
                    callback: true,
                },
                Some(answer),
                None,
            )
            .await?;
        answered_once(repeated, &exec, &task_id)
    }

    /// `SendTaskFailure` (error defaults to `States.TaskFailed`).
    pub async fn send_task_failure(&self, req: SendTaskFailure) -> Result<(), ApiError> {
        check_error_cause(req.error.as_deref(), req.cause.as_deref())?;
        let (exec, task_id) = self.token_target(&req.task_token).await?;
        let answer = answer_msg_id(&exec, &task_id, &req.task_token);
        let repeated = self
            .publish(
                &exec,
                &InboxMessage::TaskFailed {
                    execution_arn: exec.arn(),
                    task_id: task_id.clone(),
                    error: req.error.unwrap_or_else(|| "States.TaskFailed".to_string()),
                    cause: req.cause.unwrap_or_default(),
                    callback: true,
                },
                Some(answer),
                None,
            )
            .await?;
        answered_once(repeated, &exec, &task_id)
    }

    /// `SendTaskHeartbeat`.
    pub async fn send_task_heartbeat(&self, req: SendTaskHeartbeat) -> Result<(), ApiError> {
        let (exec, task_id) = self.token_target(&req.task_token).await?;
        self.publish(
            &exec,
            &InboxMessage::TaskHeartbeat {
                execution_arn: exec.arn(),
                task_id,
            },
            None,
            None,
        )
        .await?;
        Ok(())
    }

    // ------------------------------------------------------------ dispatch

    /// Handles one request: decodes it, runs the operation and encodes the
    /// reply (`{"ok": ...}` or `{"error": ...}`). Never panics.
    pub async fn handle(
        &self,
        op: Operation,
        payload: &[u8],
        request_headers: Option<&async_nats::HeaderMap>,
    ) -> Result<Bytes, ApiError> {
        if payload.len() > self.max_request_bytes() {
            return Err(ApiError::new(
                codes::PAYLOAD_TOO_LARGE,
                format!(
                    "the request is {} bytes; at most {} are accepted",
                    payload.len(),
                    self.max_request_bytes()
                ),
            ));
        }
        match op {
            Operation::CreateStateMachine => {
                ok(self.create_state_machine(decode(payload)?).await?)
            }
            Operation::DescribeStateMachine => {
                ok(self.describe_state_machine(decode(payload)?).await?)
            }
            Operation::ListStateMachines => {
                let _: Value = decode_or_empty(payload)?;
                ok(self.list_state_machines().await?)
            }
            Operation::StartExecution => {
                let mut req: StartExecutionRequest = decode(payload)?;
                if req.traceparent.is_none() {
                    req.traceparent = request_headers
                        .and_then(|h| h.get(headers::TRACEPARENT))
                        .map(|v| v.as_str().to_string());
                }
                ok(self.start_execution(req).await?)
            }
            Operation::DescribeExecution => ok(self.describe_execution(decode(payload)?).await?),
            Operation::GetExecutionHistory => ok(self.execution_history(decode(payload)?).await?),
            Operation::ListExecutions => {
                ok(self.list_executions(decode_or_empty(payload)?).await?)
            }
            Operation::StopExecution => {
                self.stop_execution(decode(payload)?).await?;
                ok(json!({}))
            }
            Operation::RedriveExecution => {
                self.redrive_execution(decode(payload)?).await?;
                ok(json!({}))
            }
            Operation::SendTaskSuccess => {
                self.send_task_success(decode(payload)?).await?;
                ok(json!({}))
            }
            Operation::SendTaskFailure => {
                self.send_task_failure(decode(payload)?).await?;
                ok(json!({}))
            }
            Operation::SendTaskHeartbeat => {
                self.send_task_heartbeat(decode(payload)?).await?;
                ok(json!({}))
            }
        }
        .and_then(|reply| {
            if reply.len() > self.max_request_bytes() {
                Err(ApiError::new(
                    codes::PAYLOAD_TOO_LARGE,
                    format!(
                        "the reply is {} bytes; at most {} fit in a message",
                        reply.len(),
                        self.max_request_bytes()
                    ),
                ))
            } else {
                Ok(reply)
            }
        })
    }

    /// Answers one service request.
    async fn answer(&self, op: Operation, request: async_nats::service::Request) {
        let message = &request.message;
        let result = self
            .handle(op, &message.payload, message.headers.as_ref())
            .await;
        self.respond(op, request, result).await;
    }

    /// Sends the reply to a request.
    async fn respond(
        &self,
        op: Operation,
        request: async_nats::service::Request,
        result: Result<Bytes, ApiError>,
    ) {
        let sent = match result {
            Ok(body) => request.respond(Ok(body)).await,
            Err(error) => {
                let error = fit_error(error, self.max_request_bytes());
                let body =
                    serde_json::to_vec(&Reply::<()>::Error(error.clone())).unwrap_or_else(|_| {
                        b"{\"error\":{\"code\":\"Internal\",\"message\":\"\"}}".to_vec()
                    });
                let mut hdrs = async_nats::HeaderMap::new();
                let description = sagaflow_participant::cut_text(
                    format!("{}: {}", error.code, error.message),
                    ERROR_HEADER_BYTES,
                )
                .replace(['\r', '\n'], " ");
                hdrs.insert(
                    async_nats::service::NATS_SERVICE_ERROR,
                    description.as_str(),
                );
                hdrs.insert(
                    async_nats::service::NATS_SERVICE_ERROR_CODE,
                    status_of(&error.code).to_string().as_str(),
                );
                request.respond_with_headers(Ok(body.into()), hdrs).await
            }
        };
        if let Err(e) = sent {
            tracing::debug!(operation = ?op, error = %e, "could not reply to an API request");
        }
    }
}

/// Most bytes of an error reply's message (which may quote a rejected
/// value); the `Nats-Service-Error` header holds less of it.
const ERROR_MESSAGE_BYTES: usize = 16 * 1024;
const ERROR_HEADER_BYTES: usize = 1024;

/// An error reply that fits in a message of `limit` bytes: its message cut
/// to [`ERROR_MESSAGE_BYTES`], and of its details (an invalid definition's
/// errors) as many as fit, the message saying how many were left out. A
/// reply too large for the broker would not be sent at all, and the caller
/// would wait for its time-out.
fn fit_error(mut error: ApiError, limit: usize) -> ApiError {
    error.message = sagaflow_participant::cut_text(error.message, ERROR_MESSAGE_BYTES);
    // Room for the message (in the body), the headers and the envelope.
    let budget = limit.saturating_sub(ERROR_MESSAGE_BYTES + ERROR_HEADER_BYTES + 4096);
    let Some(details) = error.details.take() else {
        return error;
    };
    if serde_json::to_vec(&details).map_or(usize::MAX, |b| b.len()) <= budget {
        error.details = Some(details);
        return error;
    }
    let Value::Array(items) = details else {
        error.message.push_str(" (details too large to show)");
        return error;
    };
    let total = items.len();
    let mut used: usize = 2;
    let mut kept = Vec::new();
    for item in items {
        let size = serde_json::to_vec(&item).map_or(usize::MAX, |b| b.len()) + 1;
        if used.saturating_add(size) > budget {
            break;
        }
        used += size;
        kept.push(item);
    }
    error.message.push_str(&format!(
        " (the first {} of {total} details shown)",
        kept.len()
    ));
    error.details = Some(Value::Array(kept));
    error
}

/// The `Nats-Msg-Id` of a task's answer (`SendTaskSuccess` or
/// `SendTaskFailure`): the same for every answer to the task, so that the
/// broker keeps only the first within its duplicate window. It names the
/// token too (a hash of it): a later execution of the same name, whose
/// task of the same id has another token, is not taken for a repeat.
fn answer_msg_id(exec: &ExecutionRef, task_id: &str, token: &str) -> String {
    use sha2::{Digest, Sha256};
    // As the token is decoded: surrounding white space is not part of it.
    let digest = Sha256::digest(token.trim().as_bytes());
    let hex: String = digest[..8].iter().map(|b| format!("{b:02x}")).collect();
    format!("{}/{task_id}/answer/{hex}", exec.key())
}

/// `Ok` for the first answer to a task; a repeat (the broker dropped it as
/// a duplicate of an answer not applied yet) gets AWS's answer for a task
/// that no longer waits.
fn answered_once(repeated: bool, exec: &ExecutionRef, task_id: &str) -> Result<(), ApiError> {
    if repeated {
        return Err(ApiError::new(
            codes::TASK_TIMED_OUT,
            format!("task {task_id} of {} was answered already", exec.arn()),
        ));
    }
    Ok(())
}

fn machine_missing(name: &str, version: Option<u64>) -> ApiError {
    let what = match version {
        Some(v) => format!("version {v} of state machine '{name}' does not exist"),
        None => format!("state machine '{name}' does not exist"),
    };
    ApiError::new(codes::STATE_MACHINE_DOES_NOT_EXIST, what)
}

/// AWS's limits: error names up to 256 characters, causes up to 32,768.
fn check_error_cause(error: Option<&str>, cause: Option<&str>) -> Result<(), ApiError> {
    sagaflow_protocol::api::check_error_cause(error, cause)
        .map_err(|message| ApiError::new(codes::INVALID_REQUEST, message))
}

fn decode<T: DeserializeOwned>(payload: &[u8]) -> Result<T, ApiError> {
    serde_json::from_slice(payload).map_err(|e| {
        ApiError::new(
            codes::INVALID_REQUEST,
            format!("the request is not valid: {e}"),
        )
    })
}

/// An empty payload is an empty object.
fn decode_or_empty<T: DeserializeOwned>(payload: &[u8]) -> Result<T, ApiError> {
    if payload.iter().all(u8::is_ascii_whitespace) {
        decode(b"{}")
    } else {
        decode(payload)
    }
}

fn ok<T: Serialize>(value: T) -> Result<Bytes, ApiError> {
    serde_json::to_vec(&Reply::Ok(value))
        .map(Bytes::from)
        .map_err(|e| ApiError::new(codes::INTERNAL, e.to_string()))
}

/// A running API service; [`ApiService::stop`] (or dropping it) ends it.
pub struct ApiService {
    service: Option<async_nats::service::Service>,
    loops: Vec<JoinHandle<()>>,
}

impl ApiService {
    /// Stops serving: the endpoints unsubscribe; requests being handled are
    /// abandoned (their callers time out and may retry elsewhere).
    pub async fn stop(mut self) {
        self.halt();
    }

    fn halt(&mut self) {
        if let Some(service) = self.service.take() {
            // `Service::stop` only signals and aborts: it completes at once.
            let _ = futures::FutureExt::now_or_never(service.stop());
        }
        for handle in self.loops.drain(..) {
            handle.abort();
        }
    }

    /// A task that keeps the service running until it is aborted (for
    /// [`ClusterHandle::attach`]).
    pub fn into_task(self) -> JoinHandle<()> {
        tokio::spawn(async move {
            let _service = self;
            std::future::pending::<()>().await
        })
    }
}

impl Drop for ApiService {
    fn drop(&mut self) {
        self.halt();
    }
}

/// How long a request waits for a place among those handled at once before
/// it is answered [`codes::THROTTLED`] (the client's default time-out is
/// 10 s).
pub const MAX_QUEUE_WAIT: Duration = Duration::from_secs(5);

fn throttled() -> ApiError {
    ApiError::new(
        codes::THROTTLED,
        "the coordinator has too many requests at once; send the request again",
    )
}

/// Serves the API over NATS (the store's client) until stopped.
pub async fn serve(store: Store, options: ApiOptions) -> Result<ApiService, ServeError> {
    let client = store.infra().client.clone();
    let prefix = store.infra().ns().api_prefix();
    let in_flight = options.max_in_flight.clamp(1, Semaphore::MAX_PERMITS / 2);
    let limit = Arc::new(Semaphore::new(in_flight));
    // Requests taken: handled or waiting to be.
    let accepted = Arc::new(Semaphore::new(
        in_flight + options.max_queued.min(Semaphore::MAX_PERMITS / 2),
    ));
    let api = Api::new(store, options);
    let service = client
        .service_builder()
        .description("Sagaflow: state machines and executions (Step Functions-like API)")
        .queue_group(QUEUE_GROUP)
        .start(SERVICE_NAME, env!("CARGO_PKG_VERSION"))
        .await
        .map_err(|e| ServeError::Service(e.to_string()))?;
    let group = service.group(prefix);
    let mut loops = Vec::new();
    for op in Operation::ALL {
        let endpoint = group
            .endpoint_builder()
            .name(format!("{op:?}"))
            .add(op.endpoint())
            .await
            .map_err(|e| ServeError::Service(e.to_string()));
        let mut endpoint = match endpoint {
            Ok(e) => e,
            Err(e) => {
                let _ = service.stop().await;
                for l in loops {
                    JoinHandle::abort(&l);
                }
                return Err(e);
            }
        };
        let api = api.clone();
        let limit = limit.clone();
        let accepted = accepted.clone();
        loops.push(tokio::spawn(async move {
            while let Some(request) = endpoint.next().await {
                let Ok(ticket) = accepted.clone().try_acquire_owned() else {
                    // Full: refused at once rather than queued without end
                    // (the client sends it again, to this coordinator or
                    // another).
                    api.respond(op, request, Err(throttled())).await;
                    continue;
                };
                let api = api.clone();
                let limit = limit.clone();
                tokio::spawn(async move {
                    match tokio::time::timeout(MAX_QUEUE_WAIT, limit.acquire_owned()).await {
                        Ok(Ok(permit)) => {
                            api.answer(op, request).await;
                            drop(permit);
                        }
                        // Waited too long: its caller may have given up; it
                        // is not handled behind its back.
                        _ => api.respond(op, request, Err(throttled())).await,
                    }
                    drop(ticket);
                });
            }
        }));
    }
    Ok(ApiService {
        service: Some(service),
        loops,
    })
}

// ---------------------------------------------------------------- triggers

/// Running trigger subscriptions; [`TriggerService::stop`] (or dropping
/// it) ends them.
pub struct TriggerService {
    loops: Vec<JoinHandle<()>>,
    /// Set to ask the loops to drain their subscriptions.
    drain: watch::Sender<bool>,
    /// The starts under way hold these permits.
    in_flight: Arc<Semaphore>,
    permits: u32,
}

/// How long a stop waits for the triggers' messages already received, and
/// then for their starts, to be handled.
pub const TRIGGER_DRAIN_LIMIT: Duration = Duration::from_secs(30);

impl TriggerService {
    /// Stops every trigger subscription, gracefully: no message is taken
    /// any more (the others coordinators' subscriptions get them), the
    /// messages already received are handled, and the starts under way
    /// finish (for at most [`TRIGGER_DRAIN_LIMIT`] in all). A trigger
    /// message is not lost because its coordinator was stopped.
    pub async fn stop(mut self) {
        let deadline = tokio::time::Instant::now() + TRIGGER_DRAIN_LIMIT;
        let _ = self.drain.send(true);
        let mut loops = std::mem::take(&mut self.loops);
        let drained =
            tokio::time::timeout_at(deadline, futures::future::join_all(loops.iter_mut())).await;
        if drained.is_err() {
            tracing::warn!(
                "trigger messages still being received after {TRIGGER_DRAIN_LIMIT:?}; stopping anyway"
            );
            for l in &loops {
                l.abort();
            }
        }
        if tokio::time::timeout_at(deadline, self.in_flight.acquire_many(self.permits))
            .await
            .is_err()
        {
            tracing::warn!(
                "trigger starts still under way after {TRIGGER_DRAIN_LIMIT:?}; stopping anyway"
            );
        }
    }

    /// A task that keeps the triggers running until it is aborted (for
    /// [`ClusterHandle::attach`]).
    pub fn into_task(self) -> JoinHandle<()> {
        tokio::spawn(async move {
            let _triggers = self;
            std::future::pending::<()>().await
        })
    }
}

impl Drop for TriggerService {
    fn drop(&mut self) {
        for handle in self.loops.drain(..) {
            handle.abort();
        }
    }
}

/// Starts what a coordinator serves besides its partitions: the API (when
/// `options.api`) and the triggers, attached to `handle` so that they stop
/// with it. [`super::Cluster::start`] calls it.
pub(crate) async fn attach_services(
    handle: &mut ClusterHandle,
    options: &ClusterOptions,
) -> Result<(), ServeError> {
    let api_options = ApiOptions::from_runtime(&options.runtime);
    if options.api {
        let service = serve(handle.store().clone(), api_options.clone()).await?;
        handle.attach(service.into_task());
    }
    if !options.triggers.is_empty() {
        let triggers =
            serve_triggers(handle.store().clone(), api_options, &options.triggers).await?;
        // Stopped first at shutdown, gracefully.
        handle.attach_triggers(triggers);
    }
    Ok(())
}

/// A valid execution name for a message id: the id itself when it is one,
/// else `msg-` and a 128-bit hash of it (stable, so that a redelivered
/// message names the same execution).
pub fn name_for_message_id(id: &str) -> String {
    if check_name("execution name", id).is_ok() {
        return id.to_string();
    }
    let fnv = |seed: u64| {
        let mut hash = seed;
        for b in id.bytes() {
            hash ^= u64::from(b);
            hash = hash.wrapping_mul(0x0000_0100_0000_01b3);
        }
        hash
    };
    format!(
        "msg-{:016x}{:016x}",
        fnv(0xcbf2_9ce4_8422_2325),
        fnv(0x8422_2325_cbf2_9ce4)
    )
}

/// What a trigger message asks for.
fn trigger_request(
    trigger: &Trigger,
    payload: &[u8],
    message_headers: Option<&async_nats::HeaderMap>,
) -> Result<StartExecutionRequest, ApiError> {
    let input = if payload.iter().all(u8::is_ascii_whitespace) {
        json!({})
    } else {
        serde_json::from_slice::<Value>(payload).map_err(|e| {
            ApiError::new(
                codes::INVALID_REQUEST,
                format!("the event is not JSON: {e}"),
            )
        })?
    };
    let header = |name: &str| {
        message_headers
            .and_then(|h| h.get(name))
            .map(|v| v.as_str().to_string())
    };
    let name = match (header(EXECUTION_NAME_HEADER), header(headers::MSG_ID)) {
        (Some(name), _) => Some(name),
        (None, Some(id)) => Some(name_for_message_id(&id)),
        (None, None) => None,
    };
    Ok(StartExecutionRequest {
        state_machine: trigger.state_machine.clone(),
        version: None,
        name,
        input: Some(input),
        traceparent: header(headers::TRACEPARENT),
    })
}

async fn on_trigger_message(api: &Api, trigger: &Trigger, message: async_nats::Message) {
    let result = match trigger_request(trigger, &message.payload, message.headers.as_ref()) {
        Ok(req) => api.start_execution(req).await,
        Err(e) => Err(e),
    };
    match &result {
        Ok(reply) => tracing::debug!(
            subject = %message.subject,
            execution = %reply.execution_arn,
            already_started = reply.already_started,
            "trigger started an execution"
        ),
        Err(e) => tracing::warn!(
            subject = %message.subject,
            state_machine = %trigger.state_machine,
            // It may quote a long header value.
            error = %sagaflow_participant::cut_text(e.to_string(), ERROR_HEADER_BYTES),
            "trigger message dropped"
        ),
    }
    if let Some(reply_to) = message.reply.clone() {
        let body = match result {
            Ok(r) => serde_json::to_vec(&Reply::Ok(r)),
            Err(e) => {
                serde_json::to_vec(&Reply::<()>::Error(fit_error(e, api.max_request_bytes())))
            }
        };
        if let Ok(body) = body
            && let Err(e) = api
                .store
                .infra()
                .client
                .publish(reply_to, body.into())
                .await
        {
            tracing::debug!(error = %e, "could not answer a trigger message");
        }
    }
}

/// Subscribes every trigger (each in its own queue group,
/// [`trigger_queue_group`], so that each message starts one execution of
/// each triggered machine whichever coordinators run). A message's
/// JSON payload is the input (empty: `{}`); the execution is named by the
/// `Sagaflow-Execution-Name` header, else by `Nats-Msg-Id` (so a
/// redelivered event starts nothing new), else freshly. Messages with a
/// reply subject are answered with the `StartExecutionReply` (or the
/// error); malformed ones are logged and dropped.
pub async fn serve_triggers(
    store: Store,
    options: ApiOptions,
    triggers: &[Trigger],
) -> Result<TriggerService, ServeError> {
    let client = store.infra().client.clone();
    let namespace = store.infra().ns().clone();
    let permits =
        u32::try_from(options.max_in_flight.clamp(1, Semaphore::MAX_PERMITS)).unwrap_or(u32::MAX);
    let limit = Arc::new(Semaphore::new(permits as usize));
    let (drain, drain_rx) = watch::channel(false);
    let api = Api::new(store, options);
    for trigger in triggers {
        check_trigger_subject(&trigger.subject, &namespace)?;
    }
    let mut loops = Vec::new();
    for trigger in triggers {
        let subscribed = client
            .queue_subscribe(
                trigger.subject.clone(),
                trigger_queue_group(&namespace, trigger),
            )
            .await;
        let mut subscriber = match subscribed {
            Ok(s) => s,
            Err(e) => {
                for l in loops {
                    JoinHandle::abort(&l);
                }
                return Err(ServeError::Trigger {
                    subject: trigger.subject.clone(),
                    message: e.to_string(),
                });
            }
        };
        let api = api.clone();
        let limit = limit.clone();
        let trigger = Arc::new(trigger.clone());
        let mut drain_rx = drain_rx.clone();
        loops.push(tokio::spawn(async move {
            let mut draining = false;
            loop {
                let message = tokio::select! {
                    message = subscriber.next() => message,
                    // Stopping: unsubscribe, and take what was received
                    // before; the stream ends after it.
                    // (Also when the service is dropped: its loops are
                    // aborted then.)
                    _ = drain_rx.changed(), if !draining => {
                        draining = true;
                        if let Err(e) = subscriber.drain().await {
                            tracing::warn!(subject = %trigger.subject, error = %e, "cannot drain a trigger subscription");
                            break;
                        }
                        continue;
                    }
                };
                let Some(message) = message else {
                    break;
                };
                let Ok(permit) = limit.clone().acquire_owned().await else {
                    break;
                };
                let api = api.clone();
                let trigger = trigger.clone();
                tokio::spawn(async move {
                    on_trigger_message(&api, &trigger, message).await;
                    drop(permit);
                });
            }
        }));
    }
    Ok(TriggerService {
        loops,
        drain,
        in_flight: limit,
        permits,
    })
}

/// Where a callback token stands in an execution's history.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum CallbackState {
    /// No task of the history was given this token (a forged or mistyped
    /// token: its execution and task decode, its nonce does not match).
    Unknown,
    /// The task was given this token and still waits for its answer.
    Waiting,
    /// The task was given this token and has been answered, timed out or
    /// cancelled since.
    Closed,
}

/// Whether `token` is the token of task `task_id` in these history entries,
/// and whether that task still waits. The token is compared in full, so a
/// token whose execution and task decode but whose nonce was not issued is
/// refused.
fn callback_state<'a>(
    entries: impl IntoIterator<Item = &'a crate::HistoryEntry>,
    task_id: &str,
    token: &str,
) -> CallbackState {
    use crate::HistoryItem;
    use sagaflow_asl::interp::{Command, Event};
    let mut state = CallbackState::Unknown;
    for entry in entries {
        match &entry.item {
            HistoryItem::Command(Command::ScheduleTask(request))
                if &*request.task_id == task_id =>
            {
                state = if request.task_token.as_deref() == Some(token.trim()) {
                    CallbackState::Waiting
                } else {
                    CallbackState::Unknown
                };
            }
            HistoryItem::Command(Command::CancelTask { task_id: t })
            | HistoryItem::Event(Event::TaskSucceeded { task_id: t, .. })
            | HistoryItem::Event(Event::TaskFailed { task_id: t, .. })
                if t == task_id && state == CallbackState::Waiting =>
            {
                state = CallbackState::Closed;
            }
            _ => {}
        }
    }
    state
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn trigger_subjects_that_could_match_other_traffic_are_refused() {
        let ns = Namespace::new("orders").unwrap();
        for subject in [
            ">",
            "orders.>",
            "orders.inbox.*",
            "*.>",
            "*.created",
            "$JS.API.>",
            "$KV.ORDERS_EXECUTIONS.>",
            "_INBOX.x",
        ] {
            let e = check_trigger_subject(subject, &ns).expect_err(subject);
            assert!(e.to_string().contains(subject), "{e}");
        }
        for subject in [
            "events.orders.created",
            "orders",
            "order.created",
            "events.>",
            "*",
        ] {
            check_trigger_subject(subject, &ns).unwrap_or_else(|e| panic!("{subject}: {e}"));
        }
    }

    #[test]
    fn an_error_reply_is_held_to_the_message_size() {
        let limit = 1024 * 1024;
        let size = |e: &ApiError| {
            serde_json::to_vec(&Reply::<()>::Error(e.clone()))
                .unwrap()
                .len()
        };
        // A message quoting a huge rejected value.
        let long = ApiError::new(codes::INVALID_NAME, "x".repeat(2 * limit));
        let fitted = fit_error(long, limit);
        assert!(fitted.message.len() <= ERROR_MESSAGE_BYTES);
        assert!(fitted.message.ends_with("(truncated)"));
        // More validation errors than fit: the first ones, and how many.
        let details: Vec<Value> = (0..20_000)
            .map(|i| json!({"path": format!("/States/S{i}/Next"), "message": "x".repeat(80)}))
            .collect();
        let mut many = ApiError::new(codes::INVALID_DEFINITION, "the definition is invalid");
        many.details = Some(Value::Array(details.clone()));
        assert!(size(&many) > limit);
        let fitted = fit_error(many, limit);
        assert!(
            size(&fitted) < limit - ERROR_HEADER_BYTES,
            "{}",
            size(&fitted)
        );
        let kept = fitted.details.as_ref().and_then(Value::as_array).unwrap();
        assert!(!kept.is_empty());
        assert_eq!(kept[..], details[..kept.len()]);
        assert!(
            fitted.message.ends_with(&format!(
                "(the first {} of 20000 details shown)",
                kept.len()
            )),
            "{}",
            fitted.message
        );
        // What fits is left as it is.
        let mut few = ApiError::new(codes::INVALID_DEFINITION, "the definition is invalid");
        few.details = Some(Value::Array(details[..3].to_vec()));
        assert_eq!(fit_error(few.clone(), limit), few);
    }

    #[test]
    fn each_trigger_has_its_own_stable_queue_group() {
        let ns = Namespace::default();
        let t = |spec: &str| Trigger::parse(spec).unwrap();
        let a = trigger_queue_group(&ns, &t("shop.order.*=orders"));
        // Pinned (checked with Python's hashlib): coordinators of different
        // builds must agree on it.
        assert_eq!(a, "sagaflow-triggers.2b436daf02169570");
        for other in [
            trigger_queue_group(&ns, &t("shop.order.*=audit")),
            trigger_queue_group(&ns, &t("shop.order.created=orders")),
            trigger_queue_group(&Namespace::new("acme").unwrap(), &t("shop.order.*=orders")),
        ] {
            assert_ne!(a, other);
        }
    }

    #[test]
    fn fresh_names_are_valid_and_distinct() {
        let names: std::collections::HashSet<String> = (0..1000).map(|_| fresh_name()).collect();
        assert_eq!(names.len(), 1000);
        for n in names.iter().take(20) {
            assert!(check_name("x", n).is_ok(), "{n}");
            assert_eq!(n.len(), 36);
            assert_eq!(n.as_bytes()[14], b'4');
        }
    }

    #[test]
    fn callback_tokens_are_checked_against_the_history() {
        use crate::{HistoryEntry, HistoryItem};
        use sagaflow_asl::interp::{Command, Event, TaskRequest};
        let at: sagaflow_asl::interp::Timestamp = "2024-01-01T00:00:00Z".parse().unwrap();
        let schedule = |task: &str, token: &str| HistoryEntry {
            at,
            item: HistoryItem::Command(Command::ScheduleTask(TaskRequest {
                task_id: task.into(),
                state_name: "Review".into(),
                resource: "review.waitForTaskToken".into(),
                input: Arc::new(json!({})),
                attempt: 0,
                timeout_seconds: None,
                heartbeat_seconds: None,
                task_token: Some(token.into()),
                credentials: None,
            })),
        };
        let mut history = vec![
            schedule("Review@0#0", "tok-a"),
            schedule("Other@0#0", "tok-b"),
        ];
        let state = |h: &[HistoryEntry], task: &str, token: &str| callback_state(h, task, token);
        assert_eq!(
            state(&history, "Review@0#0", "tok-a"),
            CallbackState::Waiting
        );
        assert_eq!(
            state(&history, "Review@0#0", "tok-b"),
            CallbackState::Unknown
        );
        assert_eq!(
            state(&history, "Missing@0#0", "tok-a"),
            CallbackState::Unknown
        );
        history.push(HistoryEntry {
            at,
            item: HistoryItem::Event(Event::TaskFailed {
                task_id: "Review@0#0".into(),
                error: "States.Timeout".into(),
                cause: String::new(),
            }),
        });
        assert_eq!(
            state(&history, "Review@0#0", "tok-a"),
            CallbackState::Closed
        );
        assert_eq!(
            state(&history, "Other@0#0", "tok-b"),
            CallbackState::Waiting
        );
        history.push(HistoryEntry {
            at,
            item: HistoryItem::Command(Command::CancelTask {
                task_id: "Other@0#0".into(),
            }),
        });
        assert_eq!(state(&history, "Other@0#0", "tok-b"), CallbackState::Closed);
        // A retry schedules the task again (a new attempt id, a new token).
        history.push(schedule("Review@0#1", "tok-c"));
        assert_eq!(
            state(&history, "Review@0#1", "tok-c"),
            CallbackState::Waiting
        );
    }

    #[test]
    fn triggers_parse() {
        assert_eq!(
            Trigger::parse("orders.created=order-saga").unwrap(),
            Trigger {
                subject: "orders.created".into(),
                state_machine: "order-saga".into()
            }
        );
        for bad in ["", "a", "=m", "s=", "s=a b", "a b=m"] {
            assert!(Trigger::parse(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn message_ids_become_stable_valid_names() {
        assert_eq!(name_for_message_id("order-42"), "order-42");
        let n = name_for_message_id("orders/42:created");
        assert!(n.starts_with("msg-"));
        assert!(check_name("x", &n).is_ok());
        assert_eq!(n, name_for_message_id("orders/42:created"));
        assert_ne!(n, name_for_message_id("orders/43:created"));
        assert!(check_name("x", &name_for_message_id(&"x".repeat(200))).is_ok());
    }

    #[test]
    fn trigger_requests() {
        let t = Trigger {
            subject: "s".into(),
            state_machine: "m".into(),
        };
        let r = trigger_request(&t, b"", None).unwrap();
        assert_eq!(r.input, Some(json!({})));
        assert_eq!(r.name, None);
        let mut h = async_nats::HeaderMap::new();
        h.insert(headers::MSG_ID, "evt-1");
        let r = trigger_request(&t, br#"{"a":1}"#, Some(&h)).unwrap();
        assert_eq!(r.name.as_deref(), Some("evt-1"));
        assert_eq!(r.input, Some(json!({"a": 1})));
        h.insert(EXECUTION_NAME_HEADER, "named");
        let r = trigger_request(&t, b"[1]", Some(&h)).unwrap();
        assert_eq!(r.name.as_deref(), Some("named"));
        let e = trigger_request(&t, b"{nope", None).unwrap_err();
        assert_eq!(e.code, codes::INVALID_REQUEST);
    }

    #[test]
    fn decoding_refuses_bad_requests() {
        let e = decode::<ExecutionRequest>(b"{").unwrap_err();
        assert_eq!(e.code, codes::INVALID_REQUEST);
        let e = decode::<ExecutionRequest>(br#"{"executionArn": 5}"#).unwrap_err();
        assert_eq!(e.code, codes::INVALID_REQUEST);
        let l: ListExecutions = decode_or_empty(b"  ").unwrap();
        assert_eq!(l.state_machine, None);
        assert_eq!(status_of(codes::EXECUTION_DOES_NOT_EXIST), 404);
        assert_eq!(status_of(codes::INVALID_TOKEN), 400);
        assert_eq!(status_of(codes::PAYLOAD_TOO_LARGE), 413);
    }

    #[test]
    fn error_and_cause_limits() {
        assert!(check_error_cause(Some("E"), Some("c")).is_ok());
        assert!(check_error_cause(Some(&"e".repeat(257)), None).is_err());
        assert!(check_error_cause(None, Some(&"c".repeat(32_769))).is_err());
    }
}
