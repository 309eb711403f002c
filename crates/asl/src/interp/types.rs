//! What goes into the interpreter ([`Event`]) and what comes out
//! ([`Command`]).

use std::sync::Arc;

use serde::{Deserialize, Serialize};
use serde_json::Value;

pub use crate::model::StateType;

/// The moment an event happened, as received from the runtime's clock.
pub type Timestamp = jiff::Timestamp;

/// Who and what an execution is; part of [`Event::ExecutionStarted`] and of
/// the context object (`$$.Execution`, `$$.StateMachine`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ExecutionInfo {
    /// `$$.Execution.Id` (an ARN-like id, unique per execution).
    pub execution_id: String,
    /// `$$.Execution.Name`.
    pub execution_name: String,
    /// `$$.StateMachine.Id`.
    pub state_machine_id: String,
    /// `$$.StateMachine.Name`.
    pub state_machine_name: String,
    /// `$$.Execution.RoleArn` (kept for AWS compatibility; may be empty).
    #[serde(default)]
    pub role_arn: String,
    /// The seed of every random value of this execution (`States.UUID`,
    /// `States.MathRandom`, jitter, task tokens).
    pub seed: u64,
    /// The interpreter rules the execution started under: [`RULES`] for a
    /// new one. A history is always replayed under the rules it was written
    /// with, so that a newer interpreter gives the commands the older one
    /// gave (the same tokens, random values and Map concurrency). Histories
    /// that predate this field are rules 0.
    #[serde(default)]
    pub rules: u32,
}

/// The interpreter rules of new executions ([`ExecutionInfo::rules`]).
///
/// - 0: the random stream starts at the seed; task tokens draw their nonce
///   from it; an inline Map has no concurrency limit of its own; values may
///   nest to any depth.
/// - 1: the random stream starts from a state derived from the seed, and
///   task tokens and child seeds are keyed hashes of it
///   ([`crate::rand::Secrets`]); an inline Map runs at most 40 iterations
///   at once; values nest at most 100 levels.
/// - 2: `States.Timeout` in `ErrorEquals` also matches a heartbeat timeout
///   (`States.HeartbeatTimeout`), which `States.TaskFailed` does not, as on
///   AWS; variables (`Assign`) are held to the payload size and nesting
///   limits.
/// - 3: the output a `Catch` makes (the state's input with the error
///   written at its `ResultPath`) is held to the payload size and nesting
///   limits, so that a loop through a catcher cannot grow it without end;
///   each retry counts as a state transition toward
///   [`Options::max_state_transitions`](crate::interp::Options), so that a
///   `Retry` with a huge `MaxAttempts` cannot grow a history without end;
///   a Map with more items than state transitions left fails at once, and
///   its iterations' inputs (built when it starts) are held to
///   [`MAP_INPUTS_FACTOR`](crate::interp::MAP_INPUTS_FACTOR) payloads in
///   all.
pub const RULES: u32 = 3;

/// An input to the interpreter: something that happened outside it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type")]
pub enum Event {
    /// The execution starts with this input.
    ExecutionStarted {
        /// Identity of the execution.
        info: ExecutionInfo,
        /// `$$.Execution.Input` and the first state's raw input.
        input: Value,
    },
    /// A participant (or the runtime) completed a task.
    TaskSucceeded {
        /// The task's invocation id, from [`TaskRequest::task_id`].
        task_id: String,
        /// The task's result.
        output: Value,
    },
    /// A task failed with an error name (matched by Retry/Catch) and a cause.
    /// Heartbeat timeouts are reported this way with `States.HeartbeatTimeout`.
    TaskFailed {
        /// The task's invocation id.
        task_id: String,
        /// The error name.
        error: String,
        /// The cause (free text, often JSON).
        cause: String,
    },
    /// A timer started by [`Command::StartTimer`] fired.
    TimerFired {
        /// The timer's id.
        timer_id: String,
    },
    /// Someone asked a failed, timed-out or aborted execution to run again
    /// from where it stopped (`RedriveExecution`): the top-level state that
    /// was running is entered again with the input it had. Ignored when the
    /// execution is running or succeeded.
    RedriveRequested,
    /// Someone asked the execution to stop (`StopExecution`).
    StopRequested {
        /// Error recorded with the abort (optional in the API).
        error: Option<String>,
        /// Cause recorded with the abort.
        cause: Option<String>,
    },
}

/// A task to run: what the runtime dispatches to a participant.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct TaskRequest {
    /// Deterministic invocation id: the same on every replay, distinct for
    /// each state visit, Map/Parallel index and retry attempt. Use it as the
    /// idempotency key.
    pub task_id: Arc<str>,
    /// The Task state's name.
    pub state_name: Arc<str>,
    /// `Resource`, verbatim.
    pub resource: Arc<str>,
    /// The effective input: after InputPath and Parameters. Shared with
    /// the interpreter (and history records) without copying.
    pub input: Arc<Value>,
    /// Retry attempt (0 for the first try) = `$$.State.RetryCount`.
    pub attempt: u32,
    /// Resolved `TimeoutSeconds`. The interpreter enforces it with a timer of
    /// its own; runtimes may pass it on to participants.
    pub timeout_seconds: Option<u64>,
    /// Resolved `HeartbeatSeconds`: the runtime reports
    /// `States.HeartbeatTimeout` when no heartbeat arrives for this long.
    pub heartbeat_seconds: Option<u64>,
    /// `$$.Task.Token`, for `.waitForTaskToken` resources.
    pub task_token: Option<String>,
    /// `Credentials`, if the state had them.
    pub credentials: Option<Value>,
}

/// Why a timer was started.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind")]
pub enum TimerPurpose {
    /// A Wait state.
    Wait {
        /// The Wait state's name.
        state_name: String,
    },
    /// The backoff before a retry.
    Retry {
        /// The retried state's name.
        state_name: String,
        /// The delay, in seconds (after jitter, before rounding to ms).
        delay_seconds: f64,
    },
    /// A Task's `TimeoutSeconds`.
    TaskTimeout {
        /// The task's invocation id.
        task_id: String,
    },
    /// The machine's top-level `TimeoutSeconds`.
    ExecutionTimeout,
}

/// How an execution ended.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "status", rename_all = "SCREAMING_SNAKE_CASE")]
pub enum Outcome {
    /// The execution succeeded with this output.
    Succeeded {
        /// The output (shared, not copied).
        output: Arc<Value>,
    },
    /// The execution failed.
    Failed {
        /// The error name.
        error: String,
        /// The cause.
        cause: String,
    },
    /// The machine's `TimeoutSeconds` elapsed.
    TimedOut {
        /// Always `States.Timeout`.
        error: String,
        /// A message.
        cause: String,
    },
    /// The execution was stopped.
    Aborted {
        /// As given to the stop request.
        error: Option<String>,
        /// As given to the stop request.
        cause: Option<String>,
    },
}

/// A step of the execution worth recording in its history (what Step
/// Functions shows as `...StateEntered`, `...StateExited`, and so on).
/// These carry no effect; the runtime stores and displays them.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "record")]
pub enum Record {
    /// A state was entered (`TaskStateEntered`, `ChoiceStateEntered`, ...).
    StateEntered {
        /// Path of the state: `BookFlight`, `Fanout@0#0[2]/Charge`.
        path: Arc<str>,
        /// The state's name.
        name: Arc<str>,
        /// The state's `Type`.
        state_type: StateType,
        /// The raw input (shared, not copied).
        input: Arc<Value>,
    },
    /// A state completed (`TaskStateExited`, ...).
    StateExited {
        /// Path of the state.
        path: Arc<str>,
        /// The state's name.
        name: Arc<str>,
        /// The state's `Type`.
        state_type: StateType,
        /// The output (shared, not copied).
        output: Arc<Value>,
    },
    /// A Map iteration started (`MapIterationStarted`).
    MapIterationStarted {
        /// Path of the Map state.
        path: String,
        /// The item's index.
        index: usize,
    },
    /// A Map iteration succeeded.
    MapIterationSucceeded {
        /// Path of the Map state.
        path: String,
        /// The item's index.
        index: usize,
    },
    /// A Map iteration failed.
    MapIterationFailed {
        /// Path of the Map state.
        path: String,
        /// The item's index.
        index: usize,
        /// The error name.
        error: String,
    },
    /// A Parallel branch or Map iteration was abandoned because another failed.
    BranchAborted {
        /// Path of the Parallel/Map state.
        path: String,
        /// Branch or item index.
        index: usize,
    },
    /// A state failed and a retrier will run it again after a delay.
    RetryScheduled {
        /// Path of the state.
        path: String,
        /// The error that is retried.
        error: String,
        /// The attempt that comes next (1 for the first retry).
        attempt: u32,
        /// The delay, in seconds.
        delay_seconds: f64,
    },
    /// The execution was redriven: it runs again from `state`.
    Redriven {
        /// How many times it has been redriven.
        count: u32,
        /// The top-level state it restarts at.
        state: String,
    },
    /// A catcher caught an error and execution goes on at `next`.
    Caught {
        /// Path of the failed state.
        path: String,
        /// The error name.
        error: String,
        /// The cause.
        cause: String,
        /// The catcher's `Next`.
        next: String,
    },
}

/// An output of the interpreter: an effect for the runtime to carry out, or
/// a record for the history.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "command")]
pub enum Command {
    /// Dispatch a task; answer with `TaskSucceeded` / `TaskFailed`.
    ScheduleTask(TaskRequest),
    /// A scheduled task's result is no longer wanted (its branch was
    /// abandoned or it timed out). Late answers are ignored anyway.
    CancelTask {
        /// The task's invocation id.
        task_id: String,
    },
    /// Answer with `TimerFired` at `fire_at`.
    StartTimer {
        /// Deterministic timer id.
        timer_id: String,
        /// When to fire.
        fire_at: Timestamp,
        /// Why.
        purpose: TimerPurpose,
    },
    /// A started timer is no longer wanted.
    CancelTimer {
        /// The timer's id.
        timer_id: String,
    },
    /// A history record (no effect).
    Record(Record),
    /// The execution ended. No command follows this one.
    Complete(Outcome),
}
