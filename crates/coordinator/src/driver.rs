//! The driver loop: feeds an [`Execution`] its events and carries out its
//! commands (dispatch tasks, arm timers, record history) until it completes.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;

use serde::{Deserialize, Serialize};
use tokio::sync::mpsc;
use tokio::task::AbortHandle;

use sagaflow_asl::interp::{
    self, ApplyError, Command, Event, Execution, ExecutionInfo, Outcome, Timestamp,
};
use sagaflow_asl::model::StateMachine;
use serde_json::Value;

use sagaflow_telemetry::ExecutionTrace;
use sagaflow_telemetry::opentelemetry::trace::FutureExt as _;

use crate::clock::Clock;
use crate::dispatch::{Completion, DispatchError, Dispatcher};

/// Options of the runtime around the interpreter.
#[derive(Debug, Clone)]
pub struct RuntimeOptions {
    /// Largest state input/output or task result, in bytes of JSON (AWS:
    /// 256 KiB); larger fails the state with `States.DataLimitExceeded`.
    pub max_payload_bytes: usize,
    /// Most states an execution may enter (AWS's history quota is 25,000
    /// events); beyond it the execution fails with `States.Runtime`.
    pub max_state_transitions: u64,
    /// Keep state inputs and outputs in the history's records.
    pub record_payloads: bool,
}

impl Default for RuntimeOptions {
    fn default() -> Self {
        let d = interp::Options::default();
        RuntimeOptions {
            max_payload_bytes: d.max_payload_bytes,
            max_state_transitions: d.max_state_transitions,
            record_payloads: d.record_payloads,
        }
    }
}

impl RuntimeOptions {
    /// The interpreter's options.
    pub fn interp_options(&self) -> interp::Options {
        interp::Options {
            max_payload_bytes: self.max_payload_bytes,
            max_state_transitions: self.max_state_transitions,
            record_payloads: self.record_payloads,
        }
    }
}

/// One entry of an execution's history: an event that went in or a command
/// that came out (records included), with the time it happened. This is
/// what a durable store keeps.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct HistoryEntry {
    /// When.
    pub at: Timestamp,
    /// What.
    pub item: HistoryItem,
}

/// An event or a command.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "direction", content = "body", rename_all = "camelCase")]
pub enum HistoryItem {
    /// An event applied to the execution.
    Event(Event),
    /// A command the execution produced.
    Command(Command),
}

/// An execution's history as it grows, shared between the driver that
/// appends to it and whoever reads it meanwhile.
#[derive(Debug, Clone, Default)]
pub struct HistoryLog(Arc<std::sync::Mutex<Vec<HistoryEntry>>>);

impl HistoryLog {
    /// Appends an entry.
    pub fn push(&self, entry: HistoryEntry) {
        self.0
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .push(entry);
    }

    /// The entries so far, oldest first.
    pub fn entries(&self) -> Vec<HistoryEntry> {
        self.0
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .clone()
    }
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
    /// The id of the execution's trace (32 hex digits) when telemetry is on
    /// (see `sagaflow_telemetry::init`): open it in Jaeger.
    pub trace_id: Option<String>,
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
        self.run_with_log(machine, info, input, HistoryLog::default())
            .await
    }

    /// [`Coordinator::run`], appending each history entry to `log` as it
    /// happens, so that others can read the history of a running execution.
    pub async fn run_with_log(
        &self,
        machine: Arc<StateMachine>,
        info: ExecutionInfo,
        input: Value,
        log: HistoryLog,
    ) -> Result<ExecutionRun, DriveError> {
        let mut execution = Execution::new(machine, self.options.interp_options());
        let (reply, mut completions) = mpsc::unbounded_channel::<Completion>();
        let (fire, mut fired) = mpsc::unbounded_channel::<String>();
        let history = &log;
        let mut pending: HashSet<String> = HashSet::new();
        let mut timers: HashMap<String, AbortHandle> = HashMap::new();
        let mut commands = Vec::new();
        // One trace per execution, under the caller's current span if any.
        let mut trace = ExecutionTrace::start(
            &info.execution_id,
            &info.state_machine_name,
            sagaflow_telemetry::propagation::current_traceparent().as_deref(),
        );

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
            if let Some(trace) = trace.as_mut() {
                trace.on_event(at, &event, true);
            }
            execution.apply(at, event, &mut commands)?;
            let mut outcome = None;
            for command in commands.drain(..) {
                let at = self.clock.now();
                if let Some(trace) = trace.as_mut() {
                    trace.on_command(at, &command, true);
                }
                history.push(HistoryEntry {
                    at,
                    item: HistoryItem::Command(command.clone()),
                });
                match command {
                    Command::ScheduleTask(request) => {
                        pending.insert(request.task_id.to_string());
                        let task_cx = trace
                            .as_ref()
                            .and_then(|t| t.task_context(&request.task_id));
                        let dispatched = self.dispatcher.dispatch(&info, request, reply.clone());
                        match task_cx {
                            // The dispatcher sees the task's span as the
                            // current OpenTelemetry context.
                            Some(cx) => dispatched.with_context(cx).await?,
                            None => dispatched.await?,
                        }
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
            if let Some(trace) = trace.as_mut() {
                trace.emit_ready();
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
            history: log.entries(),
            trace_id: trace.as_ref().map(ExecutionTrace::trace_id),
        })
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicBool, Ordering};
    use std::time::Duration;

    use futures::future::BoxFuture;
    use sagaflow_asl::interp::Record;
    use sagaflow_asl::parse::parse_definition;
    use sagaflow_participant::stubs::Stubs;
    use sagaflow_participant::{Handler, TaskContext, TaskError};
    use serde_json::json;

    use super::*;
    use crate::clock::VirtualClock;
    use crate::dispatch::EmbeddedDispatcher;

    fn info(name: &str) -> ExecutionInfo {
        ExecutionInfo {
            execution_id: format!("exec:{name}"),
            execution_name: name.into(),
            state_machine_id: "sm".into(),
            state_machine_name: "sm".into(),
            role_arn: String::new(),
            seed: 3,
        }
    }

    fn machine(text: &str) -> Arc<StateMachine> {
        Arc::new(parse_definition(text).unwrap())
    }

    /// Never answers; notes when it is dropped (aborted).
    struct Hang(Arc<AtomicBool>);
    impl Handler for Hang {
        fn call(&self, _: Value, _: TaskContext) -> BoxFuture<'_, Result<Value, TaskError>> {
            struct Flag(Arc<AtomicBool>);
            impl Drop for Flag {
                fn drop(&mut self) {
                    self.0.store(true, Ordering::SeqCst);
                }
            }
            let flag = Flag(Arc::clone(&self.0));
            Box::pin(async move {
                let _flag = flag;
                std::future::pending::<()>().await;
                Ok(Value::Null)
            })
        }
    }

    #[tokio::test(start_paused = true)]
    async fn a_failing_branch_cancels_its_sibling() {
        let m = machine(
            r#"{"StartAt": "P", "States": {"P": {"Type": "Parallel", "End": true, "Branches": [
                {"StartAt": "A", "States": {"A": {"Type": "Task", "Resource": "hang", "End": true}}},
                {"StartAt": "B", "States": {"B": {"Type": "Task", "Resource": "boom", "End": true}}}
            ]}}}"#,
        );
        let dropped = Arc::new(AtomicBool::new(false));
        let stubs =
            Stubs::from_str(r#"{"boom": {"throws": {"error": "Boom"}, "delaySeconds": 5}}"#)
                .unwrap();
        let mut handlers: Vec<(String, Arc<dyn Handler>)> = stubs.handlers().collect();
        handlers.push(("hang".into(), Arc::new(Hang(Arc::clone(&dropped)))));
        let dispatcher = Arc::new(EmbeddedDispatcher::new(handlers));
        let start: Timestamp = "2024-01-01T00:00:00Z".parse().unwrap();
        let c = Coordinator::new(
            Arc::new(VirtualClock::new(start)),
            dispatcher.clone(),
            RuntimeOptions::default(),
        );
        let run = c.run(m, info("p"), json!({})).await.unwrap();
        match &run.outcome {
            Outcome::Failed { error, .. } => assert_eq!(error, "Boom"),
            other => panic!("unexpected outcome {other:?}"),
        }
        tokio::task::yield_now().await;
        assert!(
            dropped.load(Ordering::SeqCst),
            "the hanging branch was not cancelled"
        );
        assert_eq!(dispatcher.running(), 0);
        // The history starts with the start event and ends with Complete,
        // five virtual seconds later.
        assert!(matches!(
            run.history.first().map(|h| &h.item),
            Some(HistoryItem::Event(Event::ExecutionStarted { .. }))
        ));
        let last = run.history.last().unwrap();
        assert!(matches!(
            last.item,
            HistoryItem::Command(Command::Complete(_))
        ));
        assert_eq!(last.at, "2024-01-01T00:00:05Z".parse().unwrap());
        assert!(run.history.iter().any(|h| matches!(
            &h.item,
            HistoryItem::Command(Command::Record(Record::StateEntered { name, .. })) if &**name == "P"
        )));
    }

    #[tokio::test(start_paused = true)]
    async fn executions_run_side_by_side() {
        let m = machine(
            r#"{"StartAt": "W", "States": {
                "W": {"Type": "Wait", "SecondsPath": "$.wait", "Next": "T"},
                "T": {"Type": "Task", "Resource": "t", "End": true}}}"#,
        );
        let stubs = Stubs::from_str(r#"{"t": {"echo": true}}"#).unwrap();
        let dispatcher = Arc::new(EmbeddedDispatcher::new(stubs.handlers()));
        let start: Timestamp = "2024-01-01T00:00:00Z".parse().unwrap();
        let c = Coordinator::new(
            Arc::new(VirtualClock::new(start)),
            dispatcher.clone(),
            RuntimeOptions::default(),
        );
        let t0 = tokio::time::Instant::now();
        let (a, b) = tokio::join!(
            c.run(Arc::clone(&m), info("a"), json!({"wait": 100, "who": "a"})),
            c.run(Arc::clone(&m), info("b"), json!({"wait": 50, "who": "b"}))
        );
        let (a, b) = (a.unwrap(), b.unwrap());
        assert_eq!(
            a.outcome,
            Outcome::Succeeded {
                output: json!({"wait": 100, "who": "a"}).into()
            }
        );
        assert_eq!(
            b.outcome,
            Outcome::Succeeded {
                output: json!({"wait": 50, "who": "b"}).into()
            }
        );
        assert_eq!(t0.elapsed(), Duration::from_secs(100));
        let calls = dispatcher.calls();
        assert_eq!(calls.len(), 2);
        // b waited less, so it called first.
        assert_eq!(calls[0].execution_id, "exec:b");
    }

    #[tokio::test(start_paused = true)]
    async fn task_timeout_cancels_the_handler() {
        let m = machine(
            r#"{"StartAt": "T", "States": {"T": {"Type": "Task", "Resource": "hang", "TimeoutSeconds": 3, "End": true}}}"#,
        );
        let dropped = Arc::new(AtomicBool::new(false));
        let handlers: Vec<(String, Arc<dyn Handler>)> =
            vec![("hang".into(), Arc::new(Hang(Arc::clone(&dropped))))];
        let dispatcher = Arc::new(EmbeddedDispatcher::new(handlers));
        let c = Coordinator::new(
            Arc::new(VirtualClock::new(Timestamp::UNIX_EPOCH)),
            dispatcher.clone(),
            RuntimeOptions::default(),
        );
        let run = c.run(m, info("t"), json!({})).await.unwrap();
        assert!(matches!(&run.outcome, Outcome::Failed { error, .. } if error == "States.Timeout"));
        tokio::task::yield_now().await;
        assert!(dropped.load(Ordering::SeqCst));
    }
}
