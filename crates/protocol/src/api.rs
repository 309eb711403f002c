//! The API: one NATS service (`sagaflow`) whose endpoints take a JSON
//! request and answer a JSON reply. Names follow Step Functions' API.
//!
//! A reply is either the operation's result or an [`ApiError`]; the service
//! also sets the `Nats-Service-Error` / `Nats-Service-Error-Code` headers on
//! errors.

use serde::{Deserialize, Serialize};
use serde_json::Value;

/// The API operations.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Operation {
    /// Create a state machine, or a new version of it.
    CreateStateMachine,
    /// Describe a state machine (latest or a given version).
    DescribeStateMachine,
    /// List state machines.
    ListStateMachines,
    /// Start an execution (idempotent by name).
    StartExecution,
    /// Describe an execution.
    DescribeExecution,
    /// An execution's history.
    GetExecutionHistory,
    /// List executions.
    ListExecutions,
    /// Stop an execution.
    StopExecution,
    /// Redrive a failed execution.
    RedriveExecution,
    /// Complete a `.waitForTaskToken` task.
    SendTaskSuccess,
    /// Fail a `.waitForTaskToken` task.
    SendTaskFailure,
    /// Heartbeat a `.waitForTaskToken` task.
    SendTaskHeartbeat,
}

impl Operation {
    /// Every operation.
    pub const ALL: [Operation; 12] = [
        Operation::CreateStateMachine,
        Operation::DescribeStateMachine,
        Operation::ListStateMachines,
        Operation::StartExecution,
        Operation::DescribeExecution,
        Operation::GetExecutionHistory,
        Operation::ListExecutions,
        Operation::StopExecution,
        Operation::RedriveExecution,
        Operation::SendTaskSuccess,
        Operation::SendTaskFailure,
        Operation::SendTaskHeartbeat,
    ];

    /// The endpoint name, appended to the API prefix (`execution.start`).
    pub fn endpoint(self) -> &'static str {
        match self {
            Operation::CreateStateMachine => "machine.create",
            Operation::DescribeStateMachine => "machine.describe",
            Operation::ListStateMachines => "machine.list",
            Operation::StartExecution => "execution.start",
            Operation::DescribeExecution => "execution.describe",
            Operation::GetExecutionHistory => "execution.history",
            Operation::ListExecutions => "execution.list",
            Operation::StopExecution => "execution.stop",
            Operation::RedriveExecution => "execution.redrive",
            Operation::SendTaskSuccess => "task.success",
            Operation::SendTaskFailure => "task.failure",
            Operation::SendTaskHeartbeat => "task.heartbeat",
        }
    }
}

/// An API error: an AWS-like code and a message for a person.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, thiserror::Error)]
#[error("{code}: {message}")]
pub struct ApiError {
    /// `InvalidDefinition`, `StateMachineDoesNotExist`,
    /// `ExecutionDoesNotExist`, `ExecutionAlreadyExists`, `InvalidName`,
    /// `InvalidToken`, `TaskDoesNotExist`, `InvalidRequest`,
    /// `ExecutionNotRedrivable`, `PayloadTooLarge`, `Internal`.
    pub code: String,
    /// What went wrong.
    pub message: String,
    /// Details (for `InvalidDefinition`: every validation error).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub details: Option<Value>,
}

impl ApiError {
    /// An error with a code and a message.
    pub fn new(code: &str, message: impl Into<String>) -> ApiError {
        ApiError {
            code: code.to_string(),
            message: message.into(),
            details: None,
        }
    }
}

/// The reply envelope: `{"ok": RESULT}` or `{"error": ApiError}`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Reply<T> {
    /// The operation's result.
    Ok(T),
    /// The operation failed.
    Error(ApiError),
}

/// `machine.create`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct CreateStateMachine {
    /// The state machine's name.
    pub name: String,
    /// The ASL definition (JSON text).
    pub definition: String,
}

/// A stored state machine version.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct StateMachineVersion {
    /// The name.
    pub name: String,
    /// `arn:aws:states:local:000000000000:stateMachine:NAME`.
    pub arn: String,
    /// The version (1, 2, ...).
    pub version: u64,
    /// The ASL definition (JSON text).
    pub definition: String,
    /// When this version was created (RFC 3339).
    pub created: String,
}

/// `machine.describe`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct DescribeStateMachine {
    /// The name.
    pub name: String,
    /// A version; the latest when absent.
    #[serde(default)]
    pub version: Option<u64>,
}

/// One entry of `machine.list`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct StateMachineSummary {
    /// The name.
    pub name: String,
    /// The ARN.
    pub arn: String,
    /// The latest version.
    pub latest_version: u64,
}

/// `execution.start`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct StartExecutionRequest {
    /// The state machine's name.
    pub state_machine: String,
    /// A version; the latest when absent.
    #[serde(default)]
    pub version: Option<u64>,
    /// The execution's name; a fresh unique one when absent. Starting the
    /// same name again with the same input returns the first execution.
    #[serde(default)]
    pub name: Option<String>,
    /// The input (default `{}`).
    #[serde(default)]
    pub input: Option<Value>,
    /// W3C trace context of the caller.
    #[serde(default)]
    pub traceparent: Option<String>,
}

/// The reply to `execution.start`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct StartExecutionReply {
    /// The execution's ARN.
    pub execution_arn: String,
    /// The state machine version it runs.
    pub version: u64,
    /// True when an execution with this name already existed (same input).
    pub already_started: bool,
}

/// A request naming one execution (`describe`, `history`, `redrive`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ExecutionRequest {
    /// The execution's ARN.
    pub execution_arn: String,
}

/// The status of an execution (Step Functions' names).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum ExecutionStatus {
    /// Started, not finished.
    Running,
    /// Finished with an output.
    Succeeded,
    /// Finished with an error.
    Failed,
    /// The machine's TimeoutSeconds elapsed.
    TimedOut,
    /// Stopped.
    Aborted,
}

impl ExecutionStatus {
    /// Parses `RUNNING`, `SUCCEEDED`, ... (case-insensitive).
    pub fn parse(text: &str) -> Option<ExecutionStatus> {
        match text.to_ascii_uppercase().as_str() {
            "RUNNING" => Some(ExecutionStatus::Running),
            "SUCCEEDED" => Some(ExecutionStatus::Succeeded),
            "FAILED" => Some(ExecutionStatus::Failed),
            "TIMED_OUT" => Some(ExecutionStatus::TimedOut),
            "ABORTED" => Some(ExecutionStatus::Aborted),
            _ => None,
        }
    }

    /// The name (`RUNNING`, ...).
    pub fn as_str(self) -> &'static str {
        match self {
            ExecutionStatus::Running => "RUNNING",
            ExecutionStatus::Succeeded => "SUCCEEDED",
            ExecutionStatus::Failed => "FAILED",
            ExecutionStatus::TimedOut => "TIMED_OUT",
            ExecutionStatus::Aborted => "ABORTED",
        }
    }
}

/// `execution.describe` and the entries of `execution.list`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ExecutionDescription {
    /// The ARN.
    pub execution_arn: String,
    /// The name.
    pub name: String,
    /// The state machine's name.
    pub state_machine: String,
    /// The version it runs.
    pub version: u64,
    /// The status.
    pub status: ExecutionStatus,
    /// When it started (RFC 3339).
    pub start_date: String,
    /// When it stopped (RFC 3339).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stop_date: Option<String>,
    /// The input (describe only).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub input: Option<Value>,
    /// The output, when it succeeded (describe only).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub output: Option<Value>,
    /// The error, when it failed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    /// The cause, when it failed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cause: Option<String>,
    /// How often it was redriven.
    #[serde(default)]
    pub redrive_count: u32,
    /// The id of its trace (32 hex digits), when the coordinator traces
    /// executions: open it in Jaeger.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub trace_id: Option<String>,
}

/// `execution.history` reply: the events, oldest first (one page of them
/// when asked with [`HistoryRequest`]).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ExecutionHistory {
    /// Step Functions-style events (`{"id", "timestamp", "type", ...details}`).
    pub events: Vec<Value>,
    /// Present when there are more events: ask again with it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub next_token: Option<String>,
}

/// `execution.history`: an execution's events, a page at a time.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct HistoryRequest {
    /// The execution.
    pub execution_arn: String,
    /// Most events in the reply ([`MAX_LIST_RESULTS`] when absent, and at
    /// most that; fewer when they would not fit in a message).
    #[serde(default)]
    pub max_results: Option<usize>,
    /// Where to go on: the [`ExecutionHistory::next_token`] of the page
    /// before (asked in the same order).
    #[serde(default)]
    pub next_token: Option<String>,
    /// Newest events first (AWS's `reverseOrder`).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub reverse_order: bool,
}

/// `execution.list`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ListExecutions {
    /// Only this state machine's executions.
    #[serde(default)]
    pub state_machine: Option<String>,
    /// Only executions with this status.
    #[serde(default)]
    pub status: Option<ExecutionStatus>,
    /// Most executions in the reply ([`MAX_LIST_RESULTS`] when absent, and
    /// at most that).
    #[serde(default)]
    pub max_results: Option<usize>,
    /// Where to go on: the [`ExecutionList::next_token`] of the page
    /// before.
    #[serde(default)]
    pub next_token: Option<String>,
}

/// Most executions in one `execution.list` reply (AWS's `maxResults` limit):
/// a page stays well under the message size limit.
pub const MAX_LIST_RESULTS: usize = 1000;

/// The reply to `execution.list`: one page, newest first (by start date,
/// then ARN, as AWS lists them).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ExecutionList {
    /// The executions of this page.
    pub executions: Vec<ExecutionDescription>,
    /// Present when there are more: ask again with it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub next_token: Option<String>,
}

/// `execution.stop`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct StopExecutionRequest {
    /// The execution's ARN.
    pub execution_arn: String,
    /// Error recorded with the abort.
    #[serde(default)]
    pub error: Option<String>,
    /// Cause recorded with the abort.
    #[serde(default)]
    pub cause: Option<String>,
}

/// `task.success`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct SendTaskSuccess {
    /// `$$.Task.Token`.
    pub task_token: String,
    /// The task's result.
    pub output: Value,
}

/// `task.failure`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct SendTaskFailure {
    /// `$$.Task.Token`.
    pub task_token: String,
    /// The error name.
    #[serde(default)]
    pub error: Option<String>,
    /// The cause.
    #[serde(default)]
    pub cause: Option<String>,
}

/// `task.heartbeat`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct SendTaskHeartbeat {
    /// `$$.Task.Token`.
    pub task_token: String,
}

/// Longest `error` of `StopExecution` and `SendTaskFailure` (AWS's limit),
/// in characters.
pub const MAX_ERROR_CHARS: usize = 256;

/// Longest `cause` of `StopExecution` and `SendTaskFailure` (AWS's limit),
/// in characters.
pub const MAX_CAUSE_CHARS: usize = 32_768;

/// Checks the `error` and `cause` of `StopExecution` and `SendTaskFailure`
/// against AWS's limits; the message says which one is too long.
pub fn check_error_cause(error: Option<&str>, cause: Option<&str>) -> Result<(), String> {
    if error.is_some_and(|e| e.chars().count() > MAX_ERROR_CHARS) {
        return Err(format!(
            "error must be at most {MAX_ERROR_CHARS} characters"
        ));
    }
    if cause.is_some_and(|c| c.chars().count() > MAX_CAUSE_CHARS) {
        return Err(format!(
            "cause must be at most {MAX_CAUSE_CHARS} characters"
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn endpoints_are_distinct() {
        let names: std::collections::HashSet<_> =
            Operation::ALL.iter().map(|o| o.endpoint()).collect();
        assert_eq!(names.len(), Operation::ALL.len());
    }

    #[test]
    fn reply_envelope() {
        let ok: Reply<StartExecutionReply> = Reply::Ok(StartExecutionReply {
            execution_arn: "a".into(),
            version: 1,
            already_started: false,
        });
        assert_eq!(
            serde_json::to_value(&ok).unwrap(),
            json!({"ok": {"executionArn": "a", "version": 1, "alreadyStarted": false}})
        );
        let err: Reply<()> = Reply::Error(ApiError::new("ExecutionDoesNotExist", "no"));
        assert_eq!(
            serde_json::to_value(&err).unwrap(),
            json!({"error": {"code": "ExecutionDoesNotExist", "message": "no"}})
        );
    }

    #[test]
    fn statuses_parse() {
        assert_eq!(
            ExecutionStatus::parse("timed_out"),
            Some(ExecutionStatus::TimedOut)
        );
        assert_eq!(ExecutionStatus::parse("nope"), None);
        for s in [ExecutionStatus::Running, ExecutionStatus::Aborted] {
            assert_eq!(ExecutionStatus::parse(s.as_str()), Some(s));
        }
    }
}
