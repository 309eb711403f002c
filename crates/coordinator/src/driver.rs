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
    /// (see `sagaflow_telemetry::init`) and the trace is sampled: open it in
    /// Jaeger.
    pub trace_id: Option<String>,
    /// The `traceparent` of the execution's span when telemetry is on: a
    /// [`Begin::Redrive`] goes on in the same trace.
    pub execution_span: Option<String>,
}

/// Where [`Coordinator::drive`] begins.
#[derive(Debug, Clone)]
pub enum Begin {
    /// A new execution.
    Start {
        /// Who it is.
        info: ExecutionInfo,
        /// Its input.
        input: Value,
    },
    /// `RedriveExecution`: an execution that ended FAILED, TIMED_OUT or
    /// ABORTED runs again from the top-level state that was running when
    /// it ended, with the input that state had. Its history (the log given
    /// to [`Coordinator::prepare`]) is replayed first and goes on growing.
    Redrive {
        /// [`ExecutionRun::execution_span`] of its last run, to go on in
        /// the same trace.
        execution_span: Option<String>,
    },
}

/// An execution ready to run, from [`Coordinator::prepare`].
pub struct Prepared {
    execution: Execution,
    info: ExecutionInfo,
    trace: Option<ExecutionTrace>,
    first: Event,
}

impl Prepared {
    /// The id of the execution's trace (32 hex digits) when telemetry is
    /// on and the trace is sampled (exported): known before it runs.
    pub fn trace_id(&self) -> Option<String> {
        self.trace
            .as_ref()
            .filter(|t| t.is_sampled())
            .map(ExecutionTrace::trace_id)
    }
}

impl std::fmt::Debug for Prepared {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Prepared")
            .field("execution_id", &self.info.execution_id)
            .field("first", &self.first)
            .finish_non_exhaustive()
    }
}

/// A request from outside to a running execution.
#[derive(Debug, Clone, PartialEq)]
pub enum Control {
    /// `StopExecution`: cancel what runs, run no further state, end
    /// ABORTED with this error and cause.
    Stop {
        /// The error recorded with the abort.
        error: Option<String>,
        /// The cause recorded with the abort.
        cause: Option<String>,
    },
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
    /// [`Begin::Redrive`] of an execution that cannot run again.
    #[error("the execution cannot be redriven: {0}")]
    NotRedrivable(&'static str),
}

/// A timer's sleeping task, aborted when this is dropped.
struct TimerTask(AbortHandle);

impl Drop for TimerTask {
    fn drop(&mut self) {
        self.0.abort();
    }
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
        let (_controls, receiver) = mpsc::unbounded_channel();
        let prepared = self.prepare(machine, Begin::Start { info, input }, &log)?;
        self.drive(prepared, log, receiver).await
    }

    /// Gets an execution ready for [`Coordinator::drive`]: a new one
    /// ([`Begin::Start`]), or one that ended and runs again
    /// ([`Begin::Redrive`]), rebuilt from the history in `log`. Fails, and
    /// changes nothing, when a redrive is not possible.
    pub fn prepare(
        &self,
        machine: Arc<StateMachine>,
        begin: Begin,
        log: &HistoryLog,
    ) -> Result<Prepared, DriveError> {
        let mut execution = Execution::new(machine, self.options.interp_options());
        match begin {
            Begin::Start { info, input } => {
                // One trace per execution, under the caller's current span if any.
                let trace = ExecutionTrace::start(
                    &info.execution_id,
                    &info.state_machine_name,
                    sagaflow_telemetry::propagation::current_traceparent().as_deref(),
                );
                let first = Event::ExecutionStarted {
                    info: info.clone(),
                    input,
                };
                Ok(Prepared {
                    execution,
                    info,
                    trace,
                    first,
                })
            }
            Begin::Redrive { execution_span } => {
                // History in: the recorded events rebuild the execution as
                // it ended (the interpreter is deterministic).
                let entries = log.entries();
                let info = entries
                    .iter()
                    .find_map(|e| match &e.item {
                        HistoryItem::Event(Event::ExecutionStarted { info, .. }) => {
                            Some(info.clone())
                        }
                        _ => None,
                    })
                    .ok_or(DriveError::NotRedrivable(
                        "its history has no ExecutionStarted event",
                    ))?;
                // Each event's commands are kept when the trace is to go on
                // (its spans are rebuilt from them), once the redrive is
                // known to be possible.
                let traced = execution_span.is_some();
                let mut replayed = Vec::new();
                let mut commands = Vec::new();
                for entry in &entries {
                    if let HistoryItem::Event(event) = &entry.item {
                        execution.apply(entry.at, event.clone(), &mut commands)?;
                        if traced {
                            replayed.push((entry.at, event, std::mem::take(&mut commands)));
                        }
                        commands.clear();
                    }
                }
                if !execution.redrivable() {
                    return Err(DriveError::NotRedrivable(match execution.outcome() {
                        None => "it has not ended",
                        Some(Outcome::Succeeded { .. }) => "it succeeded",
                        Some(_) => "no state was running when it ended",
                    }));
                }
                // The same trace goes on.
                let mut trace = execution_span.as_deref().and_then(|span| {
                    ExecutionTrace::resume(span, None, &info.execution_id, &info.state_machine_name)
                });
                if let Some(trace) = trace.as_mut() {
                    for (at, event, commands) in &replayed {
                        trace.observe(*at, event, commands, false);
                    }
                }
                Ok(Prepared {
                    execution,
                    info,
                    trace,
                    first: Event::RedriveRequested,
                })
            }
        }
    }

    /// Drives a [`Prepared`] execution to its end. Each history entry is
    /// appended to `log` as it happens; `controls` carries requests from
    /// outside ([`Control::Stop`]) while it runs.
    pub async fn drive(
        &self,
        prepared: Prepared,
        log: HistoryLog,
        mut controls: mpsc::UnboundedReceiver<Control>,
    ) -> Result<ExecutionRun, DriveError> {
        let Prepared {
            mut execution,
            info,
            mut trace,
            first: mut event,
        } = prepared;
        let (reply, mut completions) = mpsc::unbounded_channel::<Completion>();
        let (fire, mut fired) = mpsc::unbounded_channel::<String>();
        let history = &log;
        // Tasks dispatched and not answered. Cancelled when the run ends,
        // however it ends: an error returned, or the run abandoned (its
        // future dropped) leaves no handler running and no callback waiting.
        let mut pending = PendingTasks {
            dispatcher: self.dispatcher.clone(),
            execution_id: info.execution_id.clone(),
            tasks: HashSet::new(),
        };
        let pending_tasks = &mut pending.tasks;
        // Aborted when dropped too: a run abandoned (its future dropped)
        // leaves no sleeping timer behind.
        let mut timers: HashMap<String, TimerTask> = HashMap::new();
        let mut commands = Vec::new();
        let mut controls_open = true;

        let outcome = loop {
            let at = self.clock.now();
            let redrive = matches!(event, Event::RedriveRequested);
            execution.apply(at, event.clone(), &mut commands)?;
            if redrive && commands.is_empty() {
                // Nothing to run again (no state was running when it
                // ended): the request changed nothing and is not recorded.
                return Err(DriveError::NotRedrivable(
                    "no state was running when it ended",
                ));
            }
            if let Some(trace) = trace.as_mut() {
                trace.on_event(at, &event, true);
            }
            history.push(HistoryEntry {
                at,
                item: HistoryItem::Event(event),
            });
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
                        pending_tasks.insert(request.task_id.to_string());
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
                        pending_tasks.remove(&task_id);
                        self.dispatcher.cancel(&info.execution_id, &task_id).await;
                    }
                    Command::StartTimer {
                        timer_id, fire_at, ..
                    } => {
                        let clock = Arc::clone(&self.clock);
                        let fire = fire.clone();
                        let id = timer_id.clone();
                        let handle = tokio::spawn(async move {
                            // A time further than a tokio instant reaches
                            // is slept towards in steps: the timer fires
                            // at its time, never before.
                            loop {
                                tokio::time::sleep_until(clock.instant_at(fire_at)).await;
                                if clock.now() >= fire_at {
                                    break;
                                }
                            }
                            let _ = fire.send(id);
                        });
                        // The timer it replaces (if any) is aborted as it drops.
                        timers.insert(timer_id, TimerTask(handle.abort_handle()));
                    }
                    Command::CancelTimer { timer_id } => {
                        timers.remove(&timer_id);
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
            if pending_tasks.is_empty() && timers.is_empty() {
                return Err(DriveError::Stalled);
            }
            event = loop {
                // Biased, in this order: a stop first (it must not wait
                // behind a stream of results), then results, then timers:
                // when a result and a timer are both ready (a task answering
                // exactly at its timeout on a virtual clock), the result is
                // taken, every time, so that the same seed gives the same
                // run.
                tokio::select! {
                    biased;
                    control = controls.recv(), if controls_open => match control {
                        Some(Control::Stop { error, cause }) => {
                            break Event::StopRequested { error, cause };
                        }
                        None => controls_open = false,
                    },
                    Some(c) = completions.recv() => {
                        // Late answers of cancelled tasks are dropped here.
                        if pending_tasks.remove(&c.task_id) {
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
        for task_id in std::mem::take(&mut pending.tasks) {
            self.dispatcher.cancel(&info.execution_id, &task_id).await;
        }
        drop(timers);
        Ok(ExecutionRun {
            info,
            outcome,
            history: log.entries(),
            trace_id: trace
                .as_ref()
                .filter(|t| t.is_sampled())
                .map(ExecutionTrace::trace_id),
            execution_span: trace.as_ref().map(ExecutionTrace::traceparent),
        })
    }
}

/// The tasks a run dispatched and still waits for; dropped with some left
/// (the run returned an error or was abandoned), it cancels them on a task
/// of its own (cancelling is asynchronous).
struct PendingTasks {
    dispatcher: Arc<dyn Dispatcher>,
    execution_id: String,
    tasks: HashSet<String>,
}

impl Drop for PendingTasks {
    fn drop(&mut self) {
        if self.tasks.is_empty() {
            return;
        }
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            return;
        };
        let dispatcher = self.dispatcher.clone();
        let execution_id = std::mem::take(&mut self.execution_id);
        let tasks = std::mem::take(&mut self.tasks);
        runtime.spawn(async move {
            for task_id in tasks {
                dispatcher.cancel(&execution_id, &task_id).await;
            }
        });
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
            rules: sagaflow_asl::interp::RULES,
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

    /// A dispatcher whose `hang` handler never answers, the flag it sets
    /// when dropped, and a coordinator on a virtual clock using it.
    fn hanging() -> (Arc<AtomicBool>, Arc<EmbeddedDispatcher>, Coordinator) {
        let dropped = Arc::new(AtomicBool::new(false));
        let handlers: Vec<(String, Arc<dyn Handler>)> =
            vec![("hang".into(), Arc::new(Hang(Arc::clone(&dropped))))];
        let dispatcher = Arc::new(EmbeddedDispatcher::new(handlers));
        let c = Coordinator::new(
            Arc::new(VirtualClock::new(Timestamp::UNIX_EPOCH)),
            dispatcher.clone(),
            RuntimeOptions::default(),
        );
        (dropped, dispatcher, c)
    }

    /// Panics in `call` itself, before there is a future to poll.
    struct PanicsAtCall;
    impl Handler for PanicsAtCall {
        fn call(&self, _: Value, _: TaskContext) -> BoxFuture<'_, Result<Value, TaskError>> {
            panic!("no future for you")
        }
    }

    #[tokio::test(start_paused = true)]
    async fn a_handler_that_panics_in_call_fails_its_task() {
        let m = machine(
            r#"{"StartAt": "T", "States": {"T": {"Type": "Task", "Resource": "p", "End": true}}}"#,
        );
        let handlers: Vec<(String, Arc<dyn Handler>)> = vec![("p".into(), Arc::new(PanicsAtCall))];
        let c = Coordinator::new(
            Arc::new(VirtualClock::new(Timestamp::UNIX_EPOCH)),
            Arc::new(EmbeddedDispatcher::new(handlers)),
            RuntimeOptions::default(),
        );
        let run = tokio::time::timeout(Duration::from_secs(60), c.run(m, info("p"), json!({})))
            .await
            .expect("the execution ends")
            .unwrap();
        assert_eq!(
            run.outcome,
            Outcome::Failed {
                error: "States.TaskFailed".into(),
                cause: "no future for you".into()
            }
        );
    }

    /// A Wait until a time further ahead than a tokio instant reaches (60
    /// years on from the clock's start): it ends at that time, not before.
    #[tokio::test(start_paused = true)]
    async fn a_wait_far_ahead_ends_at_its_time() {
        let m = machine(
            r#"{"StartAt": "W", "States": {"W": {"Type": "Wait", "Timestamp": "2030-01-01T00:00:00Z", "End": true}}}"#,
        );
        let clock = Arc::new(VirtualClock::new(Timestamp::UNIX_EPOCH));
        let c = Coordinator::new(
            clock.clone(),
            Arc::new(EmbeddedDispatcher::new(
                Vec::<(String, Arc<dyn Handler>)>::new(),
            )),
            RuntimeOptions::default(),
        );
        let run = c.run(m, info("far"), json!({})).await.unwrap();
        assert!(
            matches!(run.outcome, Outcome::Succeeded { .. }),
            "{:?}",
            run.outcome
        );
        let until: Timestamp = "2030-01-01T00:00:00Z".parse().unwrap();
        let ended = run.history.last().map(|h| h.at).unwrap();
        assert!(ended >= until, "ended at {ended}");
        assert!(clock.now() >= until);
    }

    #[tokio::test(start_paused = true)]
    async fn an_abandoned_run_stops_its_handlers() {
        let m = machine(
            r#"{"StartAt": "T", "States": {"T": {"Type": "Task", "Resource": "hang", "End": true}}}"#,
        );
        let (dropped, dispatcher, c) = hanging();
        // The caller gives up on the run (its future is dropped).
        let abandoned =
            tokio::time::timeout(Duration::from_secs(5), c.run(m, info("gone"), json!({}))).await;
        assert!(abandoned.is_err(), "the task never answers");
        // The cancellation runs on a task of its own.
        for _ in 0..10 {
            tokio::task::yield_now().await;
        }
        assert!(dropped.load(Ordering::SeqCst), "the handler was stopped");
        assert_eq!(dispatcher.running(), 0);
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
    async fn a_stop_cancels_the_task_and_a_redrive_runs_the_state_again() {
        let m = machine(
            r#"{"StartAt": "P", "States": {
                "P": {"Type": "Pass", "Result": 1, "ResultPath": "$.p", "Next": "T"},
                "T": {"Type": "Task", "Resource": "hang", "End": true}}}"#,
        );
        let (dropped, dispatcher, c) = hanging();
        let log = HistoryLog::default();
        let begin = Begin::Start {
            info: info("s"),
            input: json!({"k": 1}),
        };
        let prepared = c.prepare(Arc::clone(&m), begin, &log).unwrap();
        let (controls, rx) = mpsc::unbounded_channel();
        let stopper = async {
            // Once the handler runs.
            while dispatcher.running() == 0 {
                tokio::task::yield_now().await;
            }
            tokio::time::sleep(Duration::from_secs(1)).await;
            controls
                .send(Control::Stop {
                    error: Some("Halt".into()),
                    cause: None,
                })
                .unwrap();
        };
        let (run, ()) = tokio::join!(c.drive(prepared, log.clone(), rx), stopper);
        let run = run.unwrap();
        assert_eq!(
            run.outcome,
            Outcome::Aborted {
                error: Some("Halt".into()),
                cause: None
            }
        );
        tokio::task::yield_now().await;
        assert!(dropped.load(Ordering::SeqCst), "the task was not cancelled");
        let events = log.entries().len();

        // A redrive replays the log and enters T again (not P).
        let redrive = Begin::Redrive {
            execution_span: None,
        };
        let prepared = c.prepare(Arc::clone(&m), redrive.clone(), &log).unwrap();
        let (controls, rx) = mpsc::unbounded_channel();
        let running = tokio::spawn({
            let c = Coordinator::new(
                Arc::new(VirtualClock::new(Timestamp::UNIX_EPOCH)),
                dispatcher.clone(),
                RuntimeOptions::default(),
            );
            let log = log.clone();
            async move { c.drive(prepared, log, rx).await }
        });
        while dispatcher.running() == 0 {
            tokio::task::yield_now().await;
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
        // While it runs, it cannot be redriven.
        assert!(matches!(
            c.prepare(Arc::clone(&m), redrive.clone(), &log),
            Err(DriveError::NotRedrivable(_))
        ));
        controls
            .send(Control::Stop {
                error: None,
                cause: None,
            })
            .unwrap();
        let run = running.await.unwrap().unwrap();
        assert!(matches!(run.outcome, Outcome::Aborted { .. }));
        let entered: Vec<String> = log.entries()[events..]
            .iter()
            .filter_map(|h| match &h.item {
                HistoryItem::Command(Command::Record(Record::StateEntered { name, .. })) => {
                    Some(name.to_string())
                }
                _ => None,
            })
            .collect();
        assert_eq!(entered, ["T"]);
        assert!(matches!(
            log.entries()[events].item,
            HistoryItem::Event(Event::RedriveRequested)
        ));
    }

    #[test]
    fn a_history_without_a_start_or_a_success_is_not_redriven() {
        let m = machine(r#"{"StartAt": "P", "States": {"P": {"Type": "Pass", "End": true}}}"#);
        let c = Coordinator::new(
            Arc::new(VirtualClock::new(Timestamp::UNIX_EPOCH)),
            Arc::new(EmbeddedDispatcher::new(Vec::new())),
            RuntimeOptions::default(),
        );
        let redrive = Begin::Redrive {
            execution_span: None,
        };
        let empty = HistoryLog::default();
        assert!(matches!(
            c.prepare(Arc::clone(&m), redrive.clone(), &empty),
            Err(DriveError::NotRedrivable(_))
        ));
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        let log = HistoryLog::default();
        let run = rt
            .block_on(c.run_with_log(Arc::clone(&m), info("ok"), json!(1), log.clone()))
            .unwrap();
        assert!(matches!(run.outcome, Outcome::Succeeded { .. }));
        let before = log.entries().len();
        assert!(matches!(
            c.prepare(m, redrive, &log),
            Err(DriveError::NotRedrivable("it succeeded"))
        ));
        assert_eq!(log.entries().len(), before, "nothing recorded");
    }

    #[tokio::test(start_paused = true)]
    async fn task_timeout_cancels_the_handler() {
        let m = machine(
            r#"{"StartAt": "T", "States": {"T": {"Type": "Task", "Resource": "hang", "TimeoutSeconds": 3, "End": true}}}"#,
        );
        let (dropped, _, c) = hanging();
        let run = c.run(m, info("t"), json!({})).await.unwrap();
        assert!(matches!(&run.outcome, Outcome::Failed { error, .. } if error == "States.Timeout"));
        tokio::task::yield_now().await;
        assert!(dropped.load(Ordering::SeqCst));
    }
}
