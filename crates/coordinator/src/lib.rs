//! # sagaflow-coordinator
//!
//! Drives Sagaflow executions: feeds the pure interpreter
//! ([`sagaflow_asl::interp::Execution`]) its events and carries out its
//! commands: dispatching tasks to participants, arming timers (Wait, retry
//! backoff, task and execution timeouts), enforcing heartbeats and keeping
//! each execution's history.
//!
//! The seams: participants are reached through a [`dispatch::Dispatcher`]
//! (in-process here: [`dispatch::EmbeddedDispatcher`]), time comes from a
//! [`clock::Clock`] (the system's, or a virtual one on tokio's paused clock).
//! [`local`] is the local runner behind `sagaflow run`.

#![warn(missing_docs)]

pub mod clock;
pub mod cluster;
pub mod dispatch;
pub mod driver;
pub mod local;
pub mod resource;

pub use clock::{Clock, SystemClock, VirtualClock};
pub use dispatch::{
    Completion, CompletionSender, DispatchError, Dispatcher, EmbeddedDispatcher, UnknownTaskToken,
};
pub use driver::{
    Begin, Control, Coordinator, DriveError, ExecutionRun, HistoryEntry, HistoryItem, HistoryLog,
    Prepared, RuntimeOptions,
};
pub use local::{
    RunError, RunReport, RunRequest, RunStatus, run, run_blocking, run_blocking_with_handlers,
    run_with_handlers,
};
