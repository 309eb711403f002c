//! Attribute names on Sagaflow's spans and metrics.

/// The execution's ARN (execution, state and task spans).
pub const EXECUTION_ID: &str = "sagaflow.execution.id";
/// The state machine's name.
pub const STATE_MACHINE: &str = "sagaflow.state_machine";
/// How the execution ended: `SUCCEEDED`, `FAILED`, `TIMED_OUT`, `ABORTED`.
pub const EXECUTION_STATUS: &str = "sagaflow.execution.status";
/// True on the execution span when at least one Catch was taken.
pub const COMPENSATED: &str = "sagaflow.compensated";
/// How many times the execution was redriven (on a redrive's span).
pub const REDRIVE_COUNT: &str = "sagaflow.redrive_count";
/// The state's name.
pub const STATE_NAME: &str = "sagaflow.state.name";
/// The state's path (`Fanout@0#0[2]/Charge` inside branches).
pub const STATE_PATH: &str = "sagaflow.state.path";
/// The state's `Type`.
pub const STATE_TYPE: &str = "sagaflow.state.type";
/// True on a state entered via a Catch, the states after it in its frame,
/// and everything inside them (task and handler spans).
pub const COMPENSATION: &str = "sagaflow.compensation";
/// The task's `Resource`.
pub const RESOURCE: &str = "sagaflow.task.resource";
/// The retry attempt (0 for the first try).
pub const ATTEMPT: &str = "sagaflow.task.attempt";
/// The task's invocation id (its idempotency key).
pub const TASK_ID: &str = "sagaflow.task.id";
/// How a task attempt ended: `succeeded`, `failed`, `cancelled`.
pub const TASK_OUTCOME: &str = "sagaflow.task.outcome";
/// The participant handler that served the task.
pub const HANDLER: &str = "sagaflow.task.handler";
/// The delay before a retry, in seconds (on `retry` events).
pub const RETRY_DELAY_SECONDS: &str = "sagaflow.retry.delay_seconds";
/// A branch or iteration index (on `branch_aborted`, `iteration_failed`).
pub const INDEX: &str = "sagaflow.index";
