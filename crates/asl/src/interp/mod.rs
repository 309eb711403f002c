//! The interpreter: a deterministic state machine. Events in, commands out.
//!
//! ```text
//! Event::ExecutionStarted ─┐
//! Event::TaskSucceeded ────┤     ┌──────────────┐     Command::ScheduleTask
//! Event::TaskFailed ───────┼───▶ │  Execution   │ ───▶ Command::StartTimer
//! Event::TimerFired ───────┤     └──────────────┘     Command::Record / Complete
//! Event::StopRequested ────┘
//! ```
//!
//! Same definition + same events (with the same timestamps) = same commands.

mod types;

use std::sync::Arc;

pub use types::*;

use crate::model::StateMachine;

/// Limits and knobs of the interpreter.
#[derive(Debug, Clone)]
pub struct Options {
    /// Largest state input/output or task result, in bytes of JSON
    /// (AWS: 256 KiB). Larger fails with `States.DataLimitExceeded`.
    pub max_payload_bytes: usize,
}

impl Default for Options {
    fn default() -> Self {
        Options {
            max_payload_bytes: 256 * 1024,
        }
    }
}

/// An event that does not fit the execution's state: a protocol violation
/// by the runtime, never caused by a definition or by participants.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum ApplyError {
    /// The first event must be `ExecutionStarted`.
    #[error("the first event of an execution must be ExecutionStarted, got {0}")]
    NotStarted(&'static str),
    /// `ExecutionStarted` arrived twice.
    #[error("the execution has already started")]
    AlreadyStarted,
}

/// One execution of a state machine.
pub struct Execution {
    machine: Arc<StateMachine>,
    options: Options,
}

impl Execution {
    /// A new execution, waiting for [`Event::ExecutionStarted`].
    pub fn new(machine: Arc<StateMachine>, options: Options) -> Execution {
        Execution { machine, options }
    }

    /// Applies one event that happened at `at`, appending the resulting
    /// commands to `out`. Events about unknown or already answered tasks and
    /// timers (duplicates, late answers) produce no command. Events after
    /// the execution completed produce no command.
    pub fn apply(
        &mut self,
        at: Timestamp,
        event: Event,
        out: &mut Vec<Command>,
    ) -> Result<(), ApplyError> {
        todo!("{at}{event:?}{out:?}{:?}{:?}", self.machine, self.options)
    }

    /// The outcome, once the execution has completed.
    pub fn outcome(&self) -> Option<&Outcome> {
        todo!()
    }
}
