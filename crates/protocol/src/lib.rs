//! # sagaflow-protocol
//!
//! What coordinators, participants and API clients say to each other over
//! NATS: subject and stream names ([`Namespace`]), execution identities
//! ([`ExecutionRef`]), the task message a participant receives
//! ([`TaskMessage`]), the events that reach an execution's inbox
//! ([`InboxMessage`]), the answer to a result sent straight to a partition's
//! owner ([`ResultReply`]), the API requests and replies ([`api`]) and header
//! names ([`headers`]). Pure data and encoding: no I/O.
//!
//! ```
//! use sagaflow_protocol::{ExecutionRef, Namespace};
//!
//! let ns = Namespace::default();
//! let exec = ExecutionRef::new("travel", "trip-42").unwrap();
//! assert_eq!(exec.arn(), "arn:aws:states:local:000000000000:execution:travel:trip-42");
//! let p = exec.partition(16);
//! assert!(p < 16);
//! assert!(ns.inbox_subject(p, &exec).starts_with("sagaflow.inbox."));
//! assert_eq!(ExecutionRef::from_arn(&exec.arn()).unwrap(), exec);
//! ```

#![warn(missing_docs)]

pub mod api;

use base64::Engine as _;
use serde::{Deserialize, Serialize};
use serde_json::Value;

/// The version of this protocol; carried in API replies.
pub const PROTOCOL_VERSION: u32 = 1;

/// Region and account used in ARNs, so that AWS tooling can parse them.
pub const ARN_PREFIX: &str = "arn:aws:states:local:000000000000";

/// Header names.
pub mod headers {
    /// JetStream's de-duplication id: the broker drops a second message with
    /// the same id inside the stream's duplicate window.
    pub const MSG_ID: &str = "Nats-Msg-Id";
    /// JetStream optimistic concurrency: the append fails unless the last
    /// message on the subject has this sequence (0: no message yet).
    pub const EXPECTED_LAST_SUBJECT_SEQUENCE: &str = "Nats-Expected-Last-Subject-Sequence";
    /// W3C trace context.
    pub const TRACEPARENT: &str = "traceparent";
    /// W3C trace state.
    pub const TRACESTATE: &str = "tracestate";
    /// The task's invocation id (also inside the message), for logs.
    pub const TASK_ID: &str = "Sagaflow-Task-Id";
}

/// A name that is not usable in a subject or an ARN.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid {what} '{value}': {reason}")]
pub struct NameError {
    /// What the name is for ("state machine name", "execution name", ...).
    pub what: &'static str,
    /// The name given.
    pub value: String,
    /// Why it is refused.
    pub reason: &'static str,
}

/// Checks a state machine or execution name with AWS's rules: 1 to 80
/// characters, none of whitespace, `< > { } [ ] ? * " # % \ ^ | ~ ` $ & , ; : /`,
/// nor control characters.
pub fn check_name(what: &'static str, value: &str) -> Result<(), NameError> {
    let err = |reason| NameError {
        what,
        value: value.to_string(),
        reason,
    };
    if value.is_empty() || value.chars().count() > 80 {
        return Err(err("it must be 1 to 80 characters long"));
    }
    if value
        .chars()
        .any(|c| c.is_whitespace() || c.is_control() || "<>{}[]?*\"#%\\^|~`$&,;:/".contains(c))
    {
        return Err(err(
            "it may not contain whitespace, control characters or any of < > { } [ ] ? * \" # % \\ ^ | ~ ` $ & , ; : /",
        ));
    }
    Ok(())
}

/// Checks a participant handler name: one or more subject tokens
/// (`book_flight`, `flights.book`) made of letters, digits, `-` and `_`.
pub fn check_handler(value: &str) -> Result<(), NameError> {
    let ok = !value.is_empty()
        && value.split('.').all(|token| {
            !token.is_empty()
                && token
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
        });
    if ok {
        Ok(())
    } else {
        Err(NameError {
            what: "handler name",
            value: value.to_string(),
            reason: "it must be dot-separated tokens of letters, digits, '-' and '_'",
        })
    }
}

/// Which execution: its state machine and its name (unique per machine).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct ExecutionRef {
    state_machine: String,
    name: String,
}

impl ExecutionRef {
    /// An execution of `state_machine` named `name` (both checked).
    pub fn new(state_machine: &str, name: &str) -> Result<ExecutionRef, NameError> {
        check_name("state machine name", state_machine)?;
        check_name("execution name", name)?;
        Ok(ExecutionRef {
            state_machine: state_machine.to_string(),
            name: name.to_string(),
        })
    }

    /// Parses an execution ARN (`arn:aws:states:REGION:ACCOUNT:execution:MACHINE:NAME`).
    pub fn from_arn(arn: &str) -> Result<ExecutionRef, NameError> {
        let bad = |reason| NameError {
            what: "execution ARN",
            value: arn.to_string(),
            reason,
        };
        let parts: Vec<&str> = arn.split(':').collect();
        match parts.as_slice() {
            ["arn", _, "states", _, _, "execution", machine, name] => {
                ExecutionRef::new(machine, name)
            }
            _ => Err(bad(
                "expected arn:aws:states:REGION:ACCOUNT:execution:STATE_MACHINE:NAME",
            )),
        }
    }

    /// The state machine's name.
    pub fn state_machine(&self) -> &str {
        &self.state_machine
    }

    /// The execution's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// `arn:aws:states:local:000000000000:execution:MACHINE:NAME`.
    pub fn arn(&self) -> String {
        format!(
            "{ARN_PREFIX}:execution:{}:{}",
            self.state_machine, self.name
        )
    }

    /// A subject-safe token naming the execution (base64url of
    /// `MACHINE:NAME`, no padding).
    pub fn key(&self) -> String {
        base64::engine::general_purpose::URL_SAFE_NO_PAD
            .encode(format!("{}:{}", self.state_machine, self.name))
    }

    /// Decodes [`ExecutionRef::key`].
    pub fn from_key(key: &str) -> Result<ExecutionRef, NameError> {
        let bad = |reason| NameError {
            what: "execution key",
            value: key.to_string(),
            reason,
        };
        let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD
            .decode(key)
            .map_err(|_| bad("not base64url"))?;
        let text = String::from_utf8(bytes).map_err(|_| bad("not UTF-8"))?;
        let (machine, name) = text.split_once(':').ok_or_else(|| bad("no ':'"))?;
        ExecutionRef::new(machine, name)
    }

    /// The partition this execution belongs to (FNV-1a of the key).
    pub fn partition(&self, partitions: u32) -> u32 {
        let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
        for b in self.key().bytes() {
            hash ^= u64::from(b);
            hash = hash.wrapping_mul(0x0000_0100_0000_01b3);
        }
        (hash % u64::from(partitions.max(1))) as u32
    }
}

/// `arn:aws:states:local:000000000000:stateMachine:NAME`.
pub fn state_machine_arn(name: &str) -> String {
    format!("{ARN_PREFIX}:stateMachine:{name}")
}

/// Names of the streams, buckets and subjects of one Sagaflow deployment.
/// Several deployments can share a NATS server with different prefixes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Namespace {
    prefix: String,
}

impl Default for Namespace {
    fn default() -> Self {
        Namespace {
            prefix: "sagaflow".to_string(),
        }
    }
}

impl Namespace {
    /// A namespace with this prefix: one subject token of lowercase
    /// letters, digits, `-` and `_`.
    ///
    /// Uppercase letters are refused because stream and bucket names are
    /// the prefix in uppercase: `Acme` and `acme` would share them while
    /// their subjects differ. Each prefix gives names no other prefix
    /// gives (`acme-prod` gives `ACME-PROD_HISTORY`, `acme_prod` gives
    /// `ACME_PROD_HISTORY`).
    pub fn new(prefix: &str) -> Result<Namespace, NameError> {
        let refuse = |reason| NameError {
            what: "namespace",
            value: prefix.to_string(),
            reason,
        };
        if prefix.contains('.') {
            return Err(refuse("it must be a single subject token"));
        }
        check_handler(prefix).map_err(|e| NameError {
            what: "namespace",
            ..e
        })?;
        if prefix.chars().any(|c| c.is_ascii_uppercase()) {
            return Err(refuse(
                "it must be lowercase (stream and bucket names are its uppercase form)",
            ));
        }
        Ok(Namespace {
            prefix: prefix.to_string(),
        })
    }

    /// The prefix.
    pub fn prefix(&self) -> &str {
        &self.prefix
    }

    fn upper(&self, suffix: &str) -> String {
        // One-to-one: the prefix is lowercase and no suffix has a `_`, so
        // the name is split back at its last `_`.
        format!("{}_{suffix}", self.prefix.to_uppercase())
    }

    /// Stream of execution histories (`SAGAFLOW_HISTORY`).
    pub fn history_stream(&self) -> String {
        self.upper("HISTORY")
    }

    /// Stream of events waiting for their execution (`SAGAFLOW_INBOX`).
    pub fn inbox_stream(&self) -> String {
        self.upper("INBOX")
    }

    /// Stream of tasks waiting for a participant (`SAGAFLOW_TASKS`).
    pub fn tasks_stream(&self) -> String {
        self.upper("TASKS")
    }

    /// KV bucket of state machine definitions.
    pub fn machines_bucket(&self) -> String {
        self.upper("MACHINES")
    }

    /// KV bucket indexing executions (status, machine, dates).
    pub fn executions_bucket(&self) -> String {
        self.upper("EXECUTIONS")
    }

    /// KV bucket of partition leases.
    pub fn leases_bucket(&self) -> String {
        self.upper("LEASES")
    }

    /// KV bucket of live coordinators (for rebalancing).
    pub fn coordinators_bucket(&self) -> String {
        self.upper("COORDINATORS")
    }

    /// KV bucket of the participants' idempotency store.
    pub fn idempotency_bucket(&self) -> String {
        self.upper("IDEMPOTENCY")
    }

    /// `sagaflow.history.P.KEY`.
    pub fn history_subject(&self, partition: u32, exec: &ExecutionRef) -> String {
        format!("{}.history.{partition}.{}", self.prefix, exec.key())
    }

    /// `sagaflow.history.>`.
    pub fn history_wildcard(&self) -> String {
        format!("{}.history.>", self.prefix)
    }

    /// `sagaflow.inbox.P.KEY`.
    pub fn inbox_subject(&self, partition: u32, exec: &ExecutionRef) -> String {
        format!("{}.inbox.{partition}.{}", self.prefix, exec.key())
    }

    /// `sagaflow.inbox.P.*`: every inbox subject of one partition.
    pub fn inbox_partition_filter(&self, partition: u32) -> String {
        format!("{}.inbox.{partition}.*", self.prefix)
    }

    /// `sagaflow.result.P.KEY`: where a participant sends a task's result
    /// first, as a core NATS request answered by the partition's owner once
    /// the result is recorded in the execution's history (see
    /// [`TaskMessage::result_to`]).
    pub fn result_subject(&self, partition: u32, exec: &ExecutionRef) -> String {
        format!("{}.result.{partition}.{}", self.prefix, exec.key())
    }

    /// `sagaflow.result.P.*`: every result subject of one partition.
    pub fn result_partition_filter(&self, partition: u32) -> String {
        format!("{}.result.{partition}.*", self.prefix)
    }

    /// `sagaflow.result.>`.
    pub fn result_wildcard(&self) -> String {
        format!("{}.result.>", self.prefix)
    }

    /// `sagaflow.inbox.>`.
    pub fn inbox_wildcard(&self) -> String {
        format!("{}.inbox.>", self.prefix)
    }

    /// `sagaflow.task.HANDLER`.
    pub fn task_subject(&self, handler: &str) -> String {
        format!("{}.task.{handler}", self.prefix)
    }

    /// `sagaflow.task.>`.
    pub fn task_wildcard(&self) -> String {
        format!("{}.task.>", self.prefix)
    }

    /// The durable consumer shared by every instance of a handler.
    pub fn task_consumer(&self, handler: &str) -> String {
        format!("handler-{}", handler.replace('.', "_"))
    }

    /// The durable consumer of a partition's inbox.
    pub fn inbox_consumer(&self, partition: u32) -> String {
        format!("partition-{partition}")
    }

    /// `sagaflow.done.KEY`: a core NATS notice published when an execution
    /// completes (for `start --wait`).
    pub fn done_subject(&self, exec: &ExecutionRef) -> String {
        format!("{}.done.{}", self.prefix, exec.key())
    }

    /// `sagaflow.api`: the API service's subject prefix.
    pub fn api_prefix(&self) -> String {
        format!("{}.api", self.prefix)
    }

    /// The subject of an API operation: `sagaflow.api.execution.start`.
    pub fn api_subject(&self, op: api::Operation) -> String {
        format!("{}.{}", self.api_prefix(), op.endpoint())
    }
}

/// A task for a participant, published on `sagaflow.task.HANDLER` with the
/// header `Nats-Msg-Id` set to `EXECUTION_KEY/TASK_ID`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct TaskMessage {
    /// The execution's ARN.
    pub execution_arn: String,
    /// The execution's name.
    pub execution_name: String,
    /// The state machine's name.
    pub state_machine: String,
    /// The deterministic invocation id: the idempotency key.
    pub task_id: String,
    /// The Task state's name.
    pub state_name: String,
    /// The state's `Resource`, verbatim.
    pub resource: String,
    /// The handler that serves it.
    pub handler: String,
    /// The handler's input.
    pub input: Value,
    /// Retry attempt (0 first).
    pub attempt: u32,
    /// `HeartbeatSeconds`, when set: heartbeat more often than this.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub heartbeat_seconds: Option<u64>,
    /// `TimeoutSeconds`, when set.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timeout_seconds: Option<u64>,
    /// `$$.Task.Token` for `.waitForTaskToken` tasks.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub task_token: Option<String>,
    /// The execution's inbox subject: heartbeats go there, and the result
    /// too when it cannot be handed over through `result_to` (a JetStream
    /// publish, with `Nats-Msg-Id` `REPLY_TO/TASK_ID/result`).
    pub reply_to: String,
    /// Where the result goes first: a core NATS request on
    /// `sagaflow.result.P.KEY`, answered with a [`ResultReply`] by the
    /// partition's owner once the result is recorded in the history. No
    /// answer, or one that says it was not recorded, sends the result to
    /// `reply_to` instead.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub result_to: Option<String>,
}

/// The coordinator's answer to a result sent to [`TaskMessage::result_to`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ResultReply {
    /// The result is in the execution's history (or was not needed any
    /// more: the task had been answered, cancelled or timed out). The task
    /// may be acknowledged.
    pub recorded: bool,
    /// Why it was not recorded (send it to the inbox instead).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

impl TaskMessage {
    /// The `Nats-Msg-Id` of this task: `EXECUTION_KEY/TASK_ID`, from its
    /// execution's key ([`ExecutionRef::key`]).
    pub fn msg_id(&self, execution_key: &str) -> String {
        format!("{execution_key}/{}", self.task_id)
    }
}

/// What a child execution reports to (for `states:startExecution.sync`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ParentTask {
    /// The parent execution's ARN.
    pub execution_arn: String,
    /// The parent's task id.
    pub task_id: String,
}

/// The start of an execution, as queued in its inbox.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct StartExecution {
    /// The execution's ARN.
    pub execution_arn: String,
    /// The state machine version it runs.
    pub version: u64,
    /// The input.
    pub input: Value,
    /// The seed of its randomness.
    pub seed: u64,
    /// W3C trace context of the caller, if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub traceparent: Option<String>,
    /// The parent task waiting for this execution (`.sync`), if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub parent: Option<ParentTask>,
}

/// An event for one execution, published to its inbox subject
/// (`sagaflow.inbox.P.KEY`) in the JetStream inbox stream.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all_fields = "camelCase")]
pub enum InboxMessage {
    /// Start the execution.
    StartExecution(StartExecution),
    /// A task succeeded.
    TaskSucceeded {
        /// The execution's ARN.
        execution_arn: String,
        /// The task's id.
        task_id: String,
        /// The result.
        output: Value,
        /// True when sent through SendTaskSuccess/SendTaskFailure
        #[serde(default)]
        callback: bool,
    },
    /// A task failed.
    TaskFailed {
        /// The execution's ARN.
        execution_arn: String,
        /// The task's id.
        task_id: String,
        /// The error name.
        error: String,
        /// The cause.
        cause: String,
        /// True when sent through SendTaskSuccess/SendTaskFailure
        #[serde(default)]
        callback: bool,
    },
    /// A running task is alive.
    TaskHeartbeat {
        /// The execution's ARN.
        execution_arn: String,
        /// The task's id.
        task_id: String,
    },
    /// Stop the execution.
    StopExecution {
        /// The execution's ARN.
        execution_arn: String,
        /// Error recorded with the abort.
        #[serde(default)]
        error: Option<String>,
        /// Cause recorded with the abort.
        #[serde(default)]
        cause: Option<String>,
        /// Sent by a parent stopping its `.sync` child: the parent task it
        /// comes from. The stop applies only to an execution that task
        /// started (not to a later, unrelated execution given the same
        /// name).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        parent: Option<ParentTask>,
        /// The run it stops (how many times the execution had been
        /// redriven): a stop delivered again after that run ended and the
        /// execution was redriven leaves the new run alone. Absent from
        /// messages of older builds: then it stops whatever runs.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        redrive_count: Option<u32>,
    },
    /// Run a failed execution again from where it failed.
    RedriveExecution {
        /// The execution's ARN.
        execution_arn: String,
        /// How many times it had been redriven when the redrive was asked:
        /// the run it redrives. A redelivered message finds the execution
        /// redriven already (a higher count) and changes nothing. Absent
        /// from messages of older builds: then any ended run is redriven.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        redrive_count: Option<u32>,
    },
}

impl InboxMessage {
    /// The ARN of the execution the message is for.
    pub fn execution_arn(&self) -> &str {
        match self {
            InboxMessage::StartExecution(s) => &s.execution_arn,
            InboxMessage::TaskSucceeded { execution_arn, .. }
            | InboxMessage::TaskFailed { execution_arn, .. }
            | InboxMessage::TaskHeartbeat { execution_arn, .. }
            | InboxMessage::StopExecution { execution_arn, .. }
            | InboxMessage::RedriveExecution { execution_arn, .. } => execution_arn,
        }
    }
}

/// Decodes a `$$.Task.Token` into the execution id and task id it names
/// (the interpreter makes tokens as base64url of `EXECUTION\nTASK\nNONCE`).
pub fn decode_task_token(token: &str) -> Option<(String, String)> {
    let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(token.trim())
        .ok()?;
    let text = String::from_utf8(bytes).ok()?;
    let mut parts = text.splitn(3, '\n');
    let execution = parts.next()?.to_string();
    let task = parts.next()?.to_string();
    parts.next()?;
    if execution.is_empty() || task.is_empty() {
        return None;
    }
    Some((execution, task))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn names_follow_aws_rules() {
        assert!(check_name("x", "trip-42_a.b").is_ok());
        for bad in ["", "a b", "a:b", "a/b", "a*", "a\u{7}", &"x".repeat(81)] {
            assert!(check_name("x", bad).is_err(), "{bad:?}");
        }
        assert!(check_handler("flights.book").is_ok());
        for bad in ["", "a..b", "a.*", "a b", ".a", "a>"] {
            assert!(check_handler(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn execution_refs_round_trip() {
        let e = ExecutionRef::new("travel", "trip.42").unwrap();
        assert_eq!(ExecutionRef::from_arn(&e.arn()).unwrap(), e);
        assert_eq!(ExecutionRef::from_key(&e.key()).unwrap(), e);
        assert!(!e.key().contains('.'));
        assert!(ExecutionRef::from_arn("arn:aws:states:x:y:stateMachine:a").is_err());
        assert!(ExecutionRef::from_key("%%%").is_err());
        let spread: std::collections::HashSet<u32> = (0..200)
            .map(|i| {
                ExecutionRef::new("m", &format!("e{i}"))
                    .unwrap()
                    .partition(8)
            })
            .collect();
        assert_eq!(spread.len(), 8, "executions spread over every partition");
    }

    #[test]
    fn namespace_names() {
        let ns = Namespace::new("acme-prod").unwrap();
        assert_eq!(ns.history_stream(), "ACME-PROD_HISTORY");
        assert_eq!(
            Namespace::new("acme_prod").unwrap().history_stream(),
            "ACME_PROD_HISTORY"
        );
        let err = Namespace::new("Acme-prod").unwrap_err().to_string();
        assert!(err.contains("lowercase"), "{err}");
        assert_eq!(
            ns.task_subject("flights.book"),
            "acme-prod.task.flights.book"
        );
        assert_eq!(ns.task_consumer("flights.book"), "handler-flights_book");
        assert!(Namespace::new("a.b").is_err());
        assert_eq!(
            ns.api_subject(api::Operation::StartExecution),
            "acme-prod.api.execution.start"
        );
    }

    #[test]
    fn inbox_messages_have_a_stable_shape() {
        let m = InboxMessage::TaskSucceeded {
            execution_arn: "arn".into(),
            task_id: "T@0#0".into(),
            output: json!({"ok": true}),
            callback: false,
        };
        let v = serde_json::to_value(&m).unwrap();
        assert_eq!(
            v,
            json!({"type": "TaskSucceeded", "executionArn": "arn", "taskId": "T@0#0", "output": {"ok": true}, "callback": false})
        );
        let back: InboxMessage = serde_json::from_value(v).unwrap();
        assert_eq!(back, m);
        assert!(serde_json::from_str::<InboxMessage>(r#"{"type": "Nope"}"#).is_err());
    }

    #[test]
    fn task_tokens_decode() {
        let token = base64::engine::general_purpose::URL_SAFE_NO_PAD.encode("exec\nT@0#0\nabc");
        assert_eq!(
            decode_task_token(&token),
            Some(("exec".to_string(), "T@0#0".to_string()))
        );
        assert_eq!(decode_task_token("garbage!"), None);
        let short = base64::engine::general_purpose::URL_SAFE_NO_PAD.encode("exec");
        assert_eq!(decode_task_token(&short), None);
    }
}
