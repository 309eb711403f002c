//! The driver loop: feeds an [`Execution`] its events and carries out its
//! commands (dispatch tasks, arm timers, record history) until it completes.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;

use serde::Serialize;
use tokio::sync::mpsc;
use tokio::task::AbortHandle;

use sagaflow_asl::interp::{
    self, ApplyError, Command, Event, Execution, ExecutionInfo, Outcome, Timestamp,
};
use sagaflow_asl::model::StateMachine;
use serde_json::Value;

use crate::clock::Clock;
use crate::dispatch::{Completion, DispatchError, Dispatcher};

/// Options of the runtime around the interpreter.
#[derive(Debug, Clone)]
pub struct RuntimeOptions {
    /// Largest state input/output or task result, in bytes of JSON (AWS:
    /// 256 KiB); larger fails the state with `States.DataLimitExceeded`.
    pub max_payload_bytes: usize,
}

impl Default for RuntimeOptions {
    fn default() -> Self {
        RuntimeOptions {
            max_payload_bytes: interp::Options::default().max_payload_bytes,
        }
    }
}

impl RuntimeOptions {
    /// The interpreter's options.
    pub fn interp_options(&self) -> interp::Options {
        interp::Options {
            max_payload_bytes: self.max_payload_bytes,
        }
    }
}

/// One entry of an execution's history: an event that went in or a command
/// that came out (records included), with the time it happened. This is
/// what a durable store keeps.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct HistoryEntry {
    /// When.
    pub at: Timestamp,
    /// What.
    pub item: HistoryItem,
}

/// An event or a command.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(tag = "direction", content = "body", rename_all = "camelCase")]
pub enum HistoryItem {
    /// An event applied to the execution.
    Event(Event),
    /// A command the execution produced.
    Command(Command),
}

/// A finished execution.
#[derive(Debug, Clone)]
pub struct ExecutionRun {
    /// Who it was.
    pub info: ExecutionInfo,
    /// How it ended.
    pub outcome: Outcome,
    /// Everything that happened, in order.
    pub history: Vec<HistoryEntry>,
}

/// The driver could not carry an execution to its end. None of these is
/// caused by a definition or a participant.
#[derive(Debug, thiserror::Error)]
pub enum DriveError {
    /// The interpreter rejected an event (a runtime bug).
    #[error("the interpreter rejected an event: {0}")]
    Protocol(#[from] ApplyError),
    /// A task could not be handed over.
    #[error(transparent)]
    Dispatch(#[from] DispatchError),
    /// Nothing is running and nothing is scheduled, yet the execution has
    /// not completed (an interpreter bug).
    #[error("the execution is stuck: no task running, no timer armed, and no outcome")]
    Stalled,
}

/// Drives executions with one clock and one dispatcher. Several executions
/// may run at once (each [`Coordinator::run`] future is independent).
pub struct Coordinator {
    clock: Arc<dyn Clock>,
    dispatcher: Arc<dyn Dispatcher>,
    options: RuntimeOptions,
}

impl Coordinator {
    /// A coordinator.
    pub fn new(
        clock: Arc<dyn Clock>,
        dispatcher: Arc<dyn Dispatcher>,
        options: RuntimeOptions,
    ) -> Coordinator {
        Coordinator {
            clock,
            dispatcher,
            options,
        }
    }

    /// Runs one execution of `machine` to its end.
    pub async fn run(
        &self,
        machine: Arc<StateMachine>,
        info: ExecutionInfo,
        input: Value,
    ) -> Result<ExecutionRun, DriveError> {
        let mut execution = Execution::new(machine, self.options.interp_options());
        let (reply, mut completions) = mpsc::unbounded_channel::<Completion>();
        let (fire, mut fired) = mpsc::unbounded_channel::<String>();
        let mut history = Vec::new();
        let mut pending: HashSet<String> = HashSet::new();
        let mut timers: HashMap<String, AbortHandle> = HashMap::new();
        let mut commands = Vec::new();

        let mut event = Event::ExecutionStarted {
            info: info.clone(),
            input,
        };
        let outcome = loop {
            let at = self.clock.now();
            history.push(HistoryEntry {
                at,
                item: HistoryItem::Event(event.clone()),
            });
            execution.apply(at, event, &mut commands)?;
            let mut outcome = None;
            for command in commands.drain(..) {
                let at = self.clock.now();
                history.push(HistoryEntry {
                    at,
                    item: HistoryItem::Command(command.clone()),
                });
                match command {
                    Command::ScheduleTask(request) => {
                        pending.insert(request.task_id.clone());
                        self.dispatcher
                            .dispatch(&info, request, reply.clone())
                            .await?;
                    }
                    Command::CancelTask { task_id } => {
                        pending.remove(&task_id);
                        self.dispatcher.cancel(&info.execution_id, &task_id).await;
                    }
                    Command::StartTimer {
                        timer_id, fire_at, ..
                    } => {
                        let when = self.clock.instant_at(fire_at);
                        let fire = fire.clone();
                        let id = timer_id.clone();
                        let handle = tokio::spawn(async move {
                            tokio::time::sleep_until(when).await;
                            let _ = fire.send(id);
                        });
                        if let Some(old) = timers.insert(timer_id, handle.abort_handle()) {
                            old.abort();
                        }
                    }
                    Command::CancelTimer { timer_id } => {
                        if let Some(h) = timers.remove(&timer_id) {
                            h.abort();
                        }
                    }
                    Command::Record(_) => {}
                    Command::Complete(o) => outcome = Some(o),
                }
            }
            if let Some(o) = outcome.or_else(|| execution.outcome().cloned()) {
                break o;
            }
            if pending.is_empty() && timers.is_empty() {
                return Err(DriveError::Stalled);
            }
            event = loop {
                tokio::select! {
                    Some(c) = completions.recv() => {
                        // Late answers of cancelled tasks are dropped here.
                        if pending.remove(&c.task_id) {
                            break match c.result {
                                Ok(output) => Event::TaskSucceeded { task_id: c.task_id, output },
                                Err(e) => Event::TaskFailed {
                                    task_id: c.task_id,
                                    error: e.error,
                                    cause: e.cause,
                                },
                            };
                        }
                    }
                    Some(timer_id) = fired.recv() => {
                        if timers.remove(&timer_id).is_some() {
                            break Event::TimerFired { timer_id };
                        }
                    }
                    else => return Err(DriveError::Stalled),
                }
            };
        };
        for task_id in pending {
            self.dispatcher.cancel(&info.execution_id, &task_id).await;
        }
        for (_, h) in timers {
            h.abort();
        }
        Ok(ExecutionRun {
            info,
            outcome,
            history,
        })
    }
}
