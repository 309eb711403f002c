//! Sagaflow's OpenTelemetry metrics (meter `sagaflow`).
//!
//! | instrument | kind | attributes |
//! |---|---|---|
//! | `sagaflow.executions.started` | counter | `sagaflow.state_machine` |
//! | `sagaflow.executions.succeeded` | counter | `sagaflow.state_machine` |
//! | `sagaflow.executions.failed` | counter | `sagaflow.state_machine`, `sagaflow.execution.status` (`FAILED`, `TIMED_OUT`, `ABORTED`) |
//! | `sagaflow.executions.compensated` | counter | `sagaflow.state_machine`, `sagaflow.execution.status` |
//! | `sagaflow.executions.in_flight` | up-down counter | `sagaflow.state_machine` |
//! | `sagaflow.state.transitions` | counter | `sagaflow.state_machine`, `sagaflow.state.type` |
//! | `sagaflow.task.duration` | histogram (s) | `sagaflow.task.resource`, `sagaflow.task.outcome` (`succeeded`, `failed`, `cancelled`) |
//! | `sagaflow.task.retries` | counter | `sagaflow.state_machine`, `error.type` |
//!
//! An execution is *compensated* when it ends (whatever its status) after
//! at least one `Catch` was taken: its compensation path ran. It is counted
//! in `compensated` in addition to `succeeded` or `failed`.
//!
//! The instruments are made from the global meter provider the first time
//! they are used: install it (with [`crate::init`]) before.

use std::sync::OnceLock;

use opentelemetry::metrics::{Counter, Histogram, UpDownCounter};
use opentelemetry::{KeyValue, global};

/// The instruments.
#[derive(Debug)]
pub struct SagaMetrics {
    /// Executions started.
    pub executions_started: Counter<u64>,
    /// Executions that succeeded.
    pub executions_succeeded: Counter<u64>,
    /// Executions that failed, timed out or were aborted.
    pub executions_failed: Counter<u64>,
    /// Executions that ended after taking at least one Catch.
    pub executions_compensated: Counter<u64>,
    /// Executions held by this process and not finished.
    pub executions_in_flight: UpDownCounter<i64>,
    /// States entered.
    pub state_transitions: Counter<u64>,
    /// Task attempts, from dispatch to result, in seconds.
    pub task_duration: Histogram<f64>,
    /// Retries scheduled.
    pub task_retries: Counter<u64>,
}

static METRICS: OnceLock<SagaMetrics> = OnceLock::new();

/// The instruments (made on first use from the global meter provider).
pub fn metrics() -> &'static SagaMetrics {
    METRICS.get_or_init(|| {
        let meter = global::meter("sagaflow");
        SagaMetrics {
            executions_started: meter
                .u64_counter("sagaflow.executions.started")
                .with_description("Executions started")
                .build(),
            executions_succeeded: meter
                .u64_counter("sagaflow.executions.succeeded")
                .with_description("Executions that succeeded")
                .build(),
            executions_failed: meter
                .u64_counter("sagaflow.executions.failed")
                .with_description("Executions that failed, timed out or were aborted")
                .build(),
            executions_compensated: meter
                .u64_counter("sagaflow.executions.compensated")
                .with_description("Executions that ended after at least one Catch was taken")
                .build(),
            executions_in_flight: meter
                .i64_up_down_counter("sagaflow.executions.in_flight")
                .with_description("Executions running in this process")
                .build(),
            state_transitions: meter
                .u64_counter("sagaflow.state.transitions")
                .with_description("States entered")
                .build(),
            task_duration: meter
                .f64_histogram("sagaflow.task.duration")
                .with_unit("s")
                .with_description("Task attempts from dispatch to result")
                .build(),
            task_retries: meter
                .u64_counter("sagaflow.task.retries")
                .with_description("Retries scheduled by Retry rules")
                .build(),
        }
    })
}

pub(crate) fn machine_attr(state_machine: &str) -> KeyValue {
    KeyValue::new(crate::attributes::STATE_MACHINE, state_machine.to_string())
}
