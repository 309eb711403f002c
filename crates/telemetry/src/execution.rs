//! One trace per execution, made from the interpreter's events and commands.
//!
//! The runtime feeds [`ExecutionTrace::observe`] with every event it applies
//! and the commands that came out (records included); the trace turns them
//! into spans:
//!
//! ```text
//! execution                         (root, or child of the caller's span)
//! ├── state BookFlight
//! │   └── task BookFlight           (one per attempt; a participant's
//! │       └── handler book_flight    handler span is its child)
//! ├── state BookCar                 (status error, `exception` event; `retry` events)
//! │   ├── task BookCar  (attempt 0, exception)
//! │   └── task BookCar  (attempt 1, exception)
//! └── state CancelHotel             (sagaflow.compensation = true, entered via Catch)
//!     └── task CancelHotel          (sagaflow.compensation = true)
//! ```
//!
//! Spans are emitted when they end, with the times the history recorded;
//! their ids are fixed in advance (see [`crate::ids`]), so that a trace
//! survives a move of the execution to another process: the new owner
//! rebuilds the open spans by replaying the history in *replay* mode
//! (nothing emitted) and carries on with the same ids.
//!
//! Nothing is emitted by `observe` itself: spans and metrics wait in the
//! trace until [`ExecutionTrace::emit_ready`], which a durable runtime calls
//! once the step is stored (a step that is not stored is replayed later and
//! must not leave spans behind).

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::SystemTime;

use async_nats::HeaderMap;
use opentelemetry::trace::{
    Event as SpanEvent, Span as _, SpanContext, SpanId, SpanKind, Status, TraceContextExt,
    TraceFlags, TraceState, Tracer as _,
};
use opentelemetry::{Context, KeyValue, global};
use opentelemetry_sdk::trace::ShouldSample;
use opentelemetry_semantic_conventions::attribute::{
    ERROR_TYPE, EXCEPTION_MESSAGE, EXCEPTION_TYPE,
};
use sagaflow_asl::interp::{
    Command, Event, Outcome, Record, TimerPurpose, Timestamp, task_timeout_cause,
};
use sagaflow_asl::model::StateType;

use crate::attributes as attr;
use crate::ids::{derived_span_id, random_span_id, random_trace_id, with_ids};
use crate::metrics::{machine_attr, metrics};
use crate::propagation::{format_traceparent, inject_context, parse_traceparent};

/// The spans and metrics of one execution (see the module documentation).
pub struct ExecutionTrace {
    /// The execution span (its id, the trace id, the sampling decision).
    root: SpanContext,
    /// The span of the current run: the root, or a redrive's span.
    run: SpanId,
    caller: Option<SpanContext>,
    execution_id: Arc<str>,
    state_machine: Arc<str>,
    started_at: Option<SystemTime>,
    run_started_at: Option<SystemTime>,
    redrives: u32,
    states: HashMap<Arc<str>, OpenState>,
    visits: HashMap<Arc<str>, u32>,
    tasks: HashMap<Arc<str>, OpenTask>,
    /// Frames (by path prefix) that run a compensation path.
    compensating: HashSet<String>,
    /// Paths a Catch sends execution to next.
    catch_targets: HashSet<String>,
    caught: bool,
    /// The task failure of the event being observed: the failed state's
    /// path, the error and the cause (records that fail the states around
    /// it carry no cause).
    task_failure: Option<(String, String, String)>,
    /// The armed `TimeoutSeconds` timers of open tasks: timer id → task id.
    task_timeouts: HashMap<String, Arc<str>>,
    /// The task whose `TimeoutSeconds` timer fired in the event being
    /// observed: its cancellation that follows closes it as failed.
    timed_out: Option<Arc<str>>,
    ready: Vec<Ready>,
    /// Counted in `sagaflow.executions.in_flight` and not yet taken out.
    in_flight: bool,
}

/// The error of a task that did not answer within its `TimeoutSeconds`.
const TASK_TIMEOUT_ERROR: &str = sagaflow_asl::errors::TIMEOUT;

struct OpenState {
    span: SpanId,
    parent: SpanId,
    name: Arc<str>,
    state_type: StateType,
    start: SystemTime,
    compensation: bool,
    events: Vec<SpanEvent>,
}

struct OpenTask {
    span: SpanId,
    parent: SpanId,
    state_name: Arc<str>,
    resource: Arc<str>,
    attempt: u32,
    start: SystemTime,
    compensation: bool,
}

struct FinishedSpan {
    name: String,
    kind: SpanKind,
    span: SpanId,
    /// `None`: the execution span itself (its parent is the caller's span).
    parent: Option<SpanId>,
    start: SystemTime,
    end: SystemTime,
    attributes: Vec<KeyValue>,
    events: Vec<SpanEvent>,
    status: Status,
}

enum Ready {
    Span(Box<FinishedSpan>),
    Started,
    Transition(StateType),
    Retry(String),
    Task {
        resource: Arc<str>,
        seconds: f64,
        outcome: &'static str,
    },
    Completed {
        status: &'static str,
        compensated: bool,
    },
}

impl std::fmt::Debug for ExecutionTrace {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ExecutionTrace")
            .field("trace_id", &self.root.trace_id())
            .field("span_id", &self.root.span_id())
            .field("execution_id", &self.execution_id)
            .finish_non_exhaustive()
    }
}

fn time(ts: Timestamp) -> SystemTime {
    SystemTime::from(ts)
}

/// The path prefix of the frame a state runs in: `` at the top level,
/// `Fanout@0#0[2]/` in a branch.
fn frame_of(path: &str) -> &str {
    match path.rfind('/') {
        Some(i) => &path[..=i],
        None => "",
    }
}

/// Whether `inner` is the path of a state inside the Parallel/Map state at
/// `outer` (`Fanout@0#0[2]/Charge` and `Fanout@0#0[2]/Sub@1#0[0]/Leg` are
/// inside `Fanout`), and, when `index` is given, inside its branch or
/// iteration `index`.
fn is_inside(inner: &str, outer: &str, index: Option<usize>) -> bool {
    let Some(rest) = inner
        .strip_prefix(outer)
        .and_then(|rest| rest.strip_prefix('@'))
    else {
        return false;
    };
    let Some(index) = index else {
        return true;
    };
    // `0#0[2]/Charge`: the state's step and attempt, then the index.
    let Some((_, rest)) = rest.split_once('[') else {
        return false;
    };
    let Some((i, rest)) = rest.split_once(']') else {
        return false;
    };
    rest.starts_with('/') && i.parse() == Ok(index)
}

impl ExecutionTrace {
    /// A new execution's trace, in the caller's trace when `caller` is a
    /// valid `traceparent`, else in a new one. `None` when telemetry is off
    /// (no [`crate::init`] with an endpoint): then nothing is traced.
    pub fn start(
        execution_id: &str,
        state_machine: &str,
        caller: Option<&str>,
    ) -> Option<ExecutionTrace> {
        if !crate::enabled() {
            return None;
        }
        let caller = caller.and_then(parse_traceparent);
        let trace_id = caller
            .as_ref()
            .map_or_else(random_trace_id, |c| c.trace_id());
        let parent_cx = match &caller {
            Some(c) => Context::new().with_remote_span_context(c.clone()),
            None => Context::new(),
        };
        let sampled = crate::sampler()
            .should_sample(
                Some(&parent_cx),
                trace_id,
                "execution",
                &SpanKind::Internal,
                &[],
                &[],
            )
            .decision
            == opentelemetry_sdk::trace::SamplingDecision::RecordAndSample;
        let root = SpanContext::new(
            trace_id,
            random_span_id(),
            if sampled {
                TraceFlags::SAMPLED
            } else {
                TraceFlags::default()
            },
            true,
            TraceState::default(),
        );
        Some(ExecutionTrace::new(
            root,
            caller,
            execution_id,
            state_machine,
            false,
        ))
    }

    /// The trace of an execution started earlier (possibly by another
    /// process), from the `traceparent` of its execution span
    /// ([`ExecutionTrace::traceparent`], stored with the execution). Replay
    /// its history through [`ExecutionTrace::observe`] with `live: false`
    /// before going on. `None` when telemetry is off or `traceparent` is
    /// malformed.
    pub fn resume(
        traceparent: &str,
        caller: Option<&str>,
        execution_id: &str,
        state_machine: &str,
    ) -> Option<ExecutionTrace> {
        if !crate::enabled() {
            return None;
        }
        let root = parse_traceparent(traceparent)?;
        let caller = caller.and_then(parse_traceparent);
        let trace = ExecutionTrace::new(root, caller, execution_id, state_machine, true);
        metrics()
            .executions_in_flight
            .add(1, &[machine_attr(state_machine)]);
        Some(trace)
    }

    fn new(
        root: SpanContext,
        caller: Option<SpanContext>,
        execution_id: &str,
        state_machine: &str,
        in_flight: bool,
    ) -> ExecutionTrace {
        ExecutionTrace {
            run: root.span_id(),
            root,
            caller,
            execution_id: Arc::from(execution_id),
            state_machine: Arc::from(state_machine),
            started_at: None,
            run_started_at: None,
            redrives: 0,
            states: HashMap::new(),
            visits: HashMap::new(),
            tasks: HashMap::new(),
            compensating: HashSet::new(),
            catch_targets: HashSet::new(),
            caught: false,
            task_failure: None,
            task_timeouts: HashMap::new(),
            timed_out: None,
            ready: Vec::new(),
            in_flight,
        }
    }

    /// The `traceparent` of the execution span: store it with the execution
    /// and hand it to [`ExecutionTrace::resume`] after a move.
    pub fn traceparent(&self) -> String {
        format_traceparent(&self.root).unwrap_or_default()
    }

    /// The trace id (32 hex digits), to find the trace in Jaeger.
    pub fn trace_id(&self) -> String {
        self.root.trace_id().to_string()
    }

    /// Whether the trace is sampled (its spans are exported).
    pub fn is_sampled(&self) -> bool {
        self.root.is_sampled()
    }

    /// The context of a task attempt's span (to run an in-process handler
    /// under it); `None` for a task that is not running.
    pub fn task_context(&self, task_id: &str) -> Option<Context> {
        let task = self.tasks.get(task_id)?;
        Some(Context::new().with_remote_span_context(self.context_of(task.span)))
    }

    /// The `traceparent` of a running task attempt's span (for a child
    /// execution started by the task).
    pub fn task_traceparent(&self, task_id: &str) -> Option<String> {
        let task = self.tasks.get(task_id)?;
        format_traceparent(&self.context_of(task.span))
    }

    /// Writes the task attempt's span context as `traceparent`/`tracestate`
    /// headers (for the task message to a participant).
    pub fn inject_task(&self, task_id: &str, headers: &mut HeaderMap) {
        if let Some(cx) = self.task_context(task_id) {
            inject_context(&cx, headers);
        }
    }

    fn context_of(&self, span: SpanId) -> SpanContext {
        SpanContext::new(
            self.root.trace_id(),
            span,
            self.root.trace_flags(),
            true,
            TraceState::default(),
        )
    }

    /// Takes in one applied event and the commands it produced. `live`:
    /// this happens now (spans and metrics are queued for
    /// [`ExecutionTrace::emit_ready`]); otherwise a replay that only
    /// rebuilds which spans are open.
    pub fn observe(&mut self, at: Timestamp, event: &Event, commands: &[Command], live: bool) {
        self.on_event(at, event, live);
        for command in commands {
            self.on_command(at, command, live);
        }
    }

    /// [`ExecutionTrace::observe`] for the event alone (for runtimes that
    /// handle the commands one by one with [`ExecutionTrace::on_command`]).
    pub fn on_event(&mut self, at: Timestamp, event: &Event, live: bool) {
        let t = time(at);
        self.task_failure = None;
        self.timed_out = None;
        match event {
            Event::ExecutionStarted { .. } => {
                self.started_at = Some(t);
                self.run_started_at = Some(t);
                if live {
                    self.ready.push(Ready::Started);
                }
            }
            Event::TaskSucceeded { task_id, .. } => {
                self.close_task(task_id, t, "succeeded", None, live);
            }
            Event::TaskFailed {
                task_id,
                error,
                cause,
            } => {
                let state_path = task_id.rsplit_once('@').map_or(&**task_id, |(p, _)| p);
                self.task_failure = Some((state_path.to_string(), error.clone(), cause.clone()));
                self.close_task(task_id, t, "failed", Some((error, cause)), live);
            }
            Event::TimerFired { timer_id } => {
                // A task's TimeoutSeconds: the task fails with
                // States.Timeout (the interpreter cancels it, then fails
                // its state).
                if let Some(task_id) = self.task_timeouts.remove(timer_id) {
                    let state_path = task_id.rsplit_once('@').map_or(&*task_id, |(p, _)| p);
                    self.task_failure = Some((
                        state_path.to_string(),
                        TASK_TIMEOUT_ERROR.to_string(),
                        task_timeout_cause(&task_id),
                    ));
                    self.timed_out = Some(task_id);
                }
            }
            Event::RedriveRequested | Event::StopRequested { .. } => {}
        }
    }

    /// One command (see [`ExecutionTrace::observe`]).
    pub fn on_command(&mut self, at: Timestamp, command: &Command, live: bool) {
        let t = time(at);
        match command {
            Command::Record(record) => self.on_record(t, record, live),
            Command::ScheduleTask(request) => {
                let state_path = request
                    .task_id
                    .rsplit_once('@')
                    .map_or(&*request.task_id, |(p, _)| p);
                let (parent, compensation) = match self.states.get(state_path) {
                    Some(s) => (s.span, s.compensation),
                    None => (self.run, false),
                };
                let span =
                    derived_span_id(self.root.span_id(), &[b"task", request.task_id.as_bytes()]);
                self.tasks.insert(
                    request.task_id.clone(),
                    OpenTask {
                        span,
                        parent,
                        state_name: request.state_name.clone(),
                        resource: request.resource.clone(),
                        attempt: request.attempt,
                        start: t,
                        compensation,
                    },
                );
            }
            Command::CancelTask { task_id } => {
                if self.timed_out.as_deref() == Some(task_id.as_str()) {
                    let (error, cause) =
                        (TASK_TIMEOUT_ERROR.to_string(), task_timeout_cause(task_id));
                    self.close_task(task_id, t, "failed", Some((&error, &cause)), live);
                } else {
                    self.close_task(task_id, t, "cancelled", None, live);
                }
            }
            Command::StartTimer {
                timer_id,
                purpose: TimerPurpose::TaskTimeout { task_id },
                ..
            } => {
                self.task_timeouts
                    .insert(timer_id.clone(), Arc::from(task_id.as_str()));
            }
            Command::CancelTimer { timer_id } => {
                self.task_timeouts.remove(timer_id);
            }
            Command::StartTimer { .. } => {}
            Command::Complete(outcome) => self.complete(t, outcome, live),
        }
    }

    fn on_record(&mut self, t: SystemTime, record: &Record, live: bool) {
        match record {
            Record::StateEntered {
                path,
                name,
                state_type,
                ..
            } => {
                // A state entered again while its span is open (a loop back
                // to a state inside a retried branch): close the old one.
                self.close_state(path, t, Status::Unset, None, live);
                let visit = {
                    let n = self.visits.entry(path.clone()).or_insert(0);
                    *n += 1;
                    *n - 1
                };
                let parent = self
                    .states
                    .iter()
                    .filter(|(p, _)| {
                        path.len() > p.len()
                            && path.starts_with(&***p)
                            && path.as_bytes()[p.len()] == b'@'
                    })
                    .max_by_key(|(p, _)| p.len())
                    .map(|(_, s)| (s.span, s.compensation));
                let frame = frame_of(path);
                let via_catch = self.catch_targets.remove(&**path);
                if via_catch {
                    self.compensating.insert(frame.to_string());
                }
                let compensation = via_catch
                    || self.compensating.contains(frame)
                    || parent.is_some_and(|(_, c)| c);
                let span = derived_span_id(
                    self.run,
                    &[b"state", path.as_bytes(), visit.to_string().as_bytes()],
                );
                self.states.insert(
                    path.clone(),
                    OpenState {
                        span,
                        parent: parent.map_or(self.run, |(s, _)| s),
                        name: name.clone(),
                        state_type: *state_type,
                        start: t,
                        compensation,
                        events: Vec::new(),
                    },
                );
                if live {
                    self.ready.push(Ready::Transition(*state_type));
                }
            }
            Record::StateExited { path, .. } => {
                self.close_state(path, t, Status::Ok, None, live);
            }
            Record::Caught {
                path,
                error,
                cause,
                next,
            } => {
                self.caught = true;
                self.catch_targets
                    .insert(format!("{}{}", frame_of(path), next));
                // What still runs inside it (the failed branch or iteration)
                // failed with it.
                self.close_state(
                    path,
                    t,
                    Status::error(format!("{error}: caught, next {next}")),
                    Some((error, Some(cause))),
                    live,
                );
            }
            Record::RetryScheduled {
                path,
                error,
                attempt,
                delay_seconds,
            } => {
                // The attempt that failed ends with what ran inside it (the
                // failed branch or iteration): the next attempt runs
                // branches and iterations of its own.
                let cause = self.cause_inside(path, None, error);
                self.close_inside(path, None, t, Some((error, cause.as_deref())), live);
                if let Some(state) = self.states.get_mut(path.as_str()) {
                    state.events.push(SpanEvent::new(
                        "retry",
                        t,
                        vec![
                            KeyValue::new(ERROR_TYPE, error.clone()),
                            KeyValue::new(attr::ATTEMPT, i64::from(*attempt)),
                            KeyValue::new(attr::RETRY_DELAY_SECONDS, *delay_seconds),
                        ],
                        0,
                    ));
                }
                if live {
                    self.ready.push(Ready::Retry(error.clone()));
                }
            }
            Record::MapIterationFailed { path, index, error } => {
                // The iteration's states that are still open failed with it.
                let cause = self.cause_inside(path, Some(*index), error);
                self.close_inside(path, Some(*index), t, Some((error, cause.as_deref())), live);
                if let Some(state) = self.states.get_mut(path.as_str()) {
                    state.events.push(SpanEvent::new(
                        "iteration_failed",
                        t,
                        vec![
                            KeyValue::new(attr::INDEX, *index as i64),
                            KeyValue::new(ERROR_TYPE, error.clone()),
                        ],
                        0,
                    ));
                }
            }
            Record::BranchAborted { path, index } => {
                // Its states end now, neither succeeded nor failed (as the
                // task attempts cancelled with them).
                self.close_inside(path, Some(*index), t, None, live);
                if let Some(state) = self.states.get_mut(path.as_str()) {
                    state.events.push(SpanEvent::new(
                        "branch_aborted",
                        t,
                        vec![KeyValue::new(attr::INDEX, *index as i64)],
                        0,
                    ));
                }
            }
            Record::Redriven { count, .. } => {
                // A new run under the first execution span (which ended with
                // the failure): its own span, a child of the first.
                self.redrives = *count;
                self.run = derived_span_id(
                    self.root.span_id(),
                    &[b"redrive", count.to_string().as_bytes()],
                );
                self.run_started_at = Some(t);
                self.catch_targets.clear();
                self.compensating.clear();
                self.caught = false;
                if live && !self.in_flight {
                    self.in_flight = true;
                    metrics()
                        .executions_in_flight
                        .add(1, &[machine_attr(&self.state_machine)]);
                }
            }
            Record::MapIterationStarted { .. } | Record::MapIterationSucceeded { .. } => {}
        }
    }

    fn close_task(
        &mut self,
        task_id: &str,
        t: SystemTime,
        outcome: &'static str,
        failure: Option<(&String, &String)>,
        live: bool,
    ) {
        let Some(task) = self.tasks.remove(task_id) else {
            return;
        };
        if !live {
            return;
        }
        self.ready.push(Ready::Task {
            resource: task.resource.clone(),
            seconds: t
                .duration_since(task.start)
                .map_or(0.0, |d| d.as_secs_f64()),
            outcome,
        });
        if !self.root.is_sampled() {
            return;
        }
        let mut events = Vec::new();
        let status = match failure {
            Some((error, cause)) => {
                events.push(exception(t, error, cause));
                Status::error(error.clone())
            }
            None if outcome == "succeeded" => Status::Ok,
            None => Status::Unset,
        };
        self.ready.push(Ready::Span(Box::new(FinishedSpan {
            name: format!("task {}", task.state_name),
            kind: SpanKind::Producer,
            span: task.span,
            parent: Some(task.parent),
            start: task.start,
            end: t,
            attributes: vec![
                KeyValue::new(attr::EXECUTION_ID, self.execution_id.to_string()),
                KeyValue::new(attr::STATE_NAME, task.state_name.to_string()),
                KeyValue::new(attr::RESOURCE, task.resource.to_string()),
                KeyValue::new(attr::ATTEMPT, i64::from(task.attempt)),
                KeyValue::new(attr::TASK_ID, task_id.to_string()),
                KeyValue::new(attr::TASK_OUTCOME, outcome),
                KeyValue::new(attr::COMPENSATION, task.compensation),
            ],
            events,
            status,
        })));
    }

    /// The cause of the task failure being observed, when it is the failure
    /// `error` of a state inside `path` (in its branch or iteration `index`,
    /// when given).
    fn cause_inside(&self, path: &str, index: Option<usize>, error: &str) -> Option<String> {
        self.task_failure
            .as_ref()
            .filter(|(state, e, _)| e == error && is_inside(state, path, index))
            .map(|(_, _, cause)| cause.clone())
    }

    /// Ends `path`'s span with `status` (and an `exception` event when it
    /// failed: `failure` is the error and, when known, the cause); what is
    /// still open inside it ends with it (see
    /// [`ExecutionTrace::close_inside`]).
    fn close_state(
        &mut self,
        path: &str,
        t: SystemTime,
        status: Status,
        failure: Option<(&str, Option<&str>)>,
        live: bool,
    ) {
        let Some(mut state) = self.states.remove(path) else {
            return;
        };
        self.close_inside(path, None, t, failure, live);
        if !live || !self.root.is_sampled() {
            return;
        }
        if let Some((error, cause)) = failure {
            state.events.push(exception_event(t, error, cause));
        }
        self.ready.push(Ready::Span(Box::new(FinishedSpan {
            name: format!("state {}", state.name),
            kind: SpanKind::Internal,
            span: state.span,
            parent: Some(state.parent),
            start: state.start,
            end: t,
            attributes: vec![
                KeyValue::new(attr::EXECUTION_ID, self.execution_id.to_string()),
                KeyValue::new(attr::STATE_NAME, state.name.to_string()),
                KeyValue::new(attr::STATE_PATH, path.to_string()),
                KeyValue::new(attr::STATE_TYPE, state_type_name(state.state_type)),
                KeyValue::new(attr::COMPENSATION, state.compensation),
            ],
            events: std::mem::take(&mut state.events),
            status,
        })));
    }

    /// Ends the spans still open inside the Parallel/Map state at `path`
    /// (only in its branch or iteration `index`, when given), innermost
    /// first: as failed with `failure` (status error, an `exception`
    /// event), or, without one, as cut off (status unset: an aborted branch,
    /// a state that ended otherwise).
    fn close_inside(
        &mut self,
        path: &str,
        index: Option<usize>,
        t: SystemTime,
        failure: Option<(&str, Option<&str>)>,
        live: bool,
    ) {
        let mut inner: Vec<Arc<str>> = self
            .states
            .keys()
            .filter(|p| is_inside(p, path, index))
            .cloned()
            .collect();
        // A state's path is longer than the path of the state it runs in.
        inner.sort_by(|a, b| b.len().cmp(&a.len()).then_with(|| a.cmp(b)));
        for p in inner {
            let status =
                failure.map_or(Status::Unset, |(error, _)| Status::error(error.to_string()));
            self.close_state(&p, t, status, failure, live);
        }
    }

    fn complete(&mut self, t: SystemTime, outcome: &Outcome, live: bool) {
        let (status_name, status, failure) = match outcome {
            Outcome::Succeeded { .. } => ("SUCCEEDED", Status::Ok, None),
            Outcome::Failed { error, cause } => (
                "FAILED",
                Status::error(error.clone()),
                Some((error.clone(), cause.clone())),
            ),
            Outcome::TimedOut { error, cause } => (
                "TIMED_OUT",
                Status::error(error.clone()),
                Some((error.clone(), cause.clone())),
            ),
            Outcome::Aborted { error, cause } => (
                "ABORTED",
                Status::error(error.clone().unwrap_or_else(|| "aborted".into())),
                error
                    .clone()
                    .map(|e| (e, cause.clone().unwrap_or_default())),
            ),
        };
        let task_ids: Vec<Arc<str>> = self.tasks.keys().cloned().collect();
        for id in task_ids {
            self.close_task(&id, t, "cancelled", None, live);
        }
        // Outer states last: closing one closes what runs inside it.
        let mut paths: Vec<Arc<str>> = self.states.keys().cloned().collect();
        paths.sort_by_key(|p| std::cmp::Reverse(p.len()));
        for p in paths {
            let state_status = match &failure {
                Some((e, _)) => Status::error(e.clone()),
                None => Status::Unset,
            };
            let fail = failure
                .as_ref()
                .map(|(e, c)| (e.as_str(), Some(c.as_str())));
            self.close_state(&p, t, state_status, fail, live);
        }
        if !live {
            return;
        }
        self.ready.push(Ready::Completed {
            status: status_name,
            compensated: self.caught,
        });
        if !self.root.is_sampled() {
            return;
        }
        let mut attributes = vec![
            KeyValue::new(attr::EXECUTION_ID, self.execution_id.to_string()),
            KeyValue::new(attr::STATE_MACHINE, self.state_machine.to_string()),
            KeyValue::new(attr::EXECUTION_STATUS, status_name),
            KeyValue::new(attr::COMPENSATED, self.caught),
        ];
        let mut events = Vec::new();
        if let Some((error, cause)) = &failure {
            events.push(exception(t, error, cause));
        }
        let (span, parent, name) = if self.run == self.root.span_id() {
            (self.run, None, "execution".to_string())
        } else {
            attributes.push(KeyValue::new(attr::REDRIVE_COUNT, i64::from(self.redrives)));
            (
                self.run,
                Some(self.root.span_id()),
                "execution redrive".to_string(),
            )
        };
        self.ready.push(Ready::Span(Box::new(FinishedSpan {
            name,
            kind: SpanKind::Internal,
            span,
            parent,
            start: self.run_started_at.or(self.started_at).unwrap_or(t),
            end: t,
            attributes,
            events,
            status,
        })));
    }

    /// Emits what [`ExecutionTrace::observe`] queued: ended spans to the
    /// global tracer provider, counts to the `sagaflow` meter.
    pub fn emit_ready(&mut self) {
        if self.ready.is_empty() {
            return;
        }
        let ready = std::mem::take(&mut self.ready);
        let tracer = global::tracer("sagaflow");
        let machine = machine_attr(&self.state_machine);
        let m = metrics();
        for item in ready {
            match item {
                Ready::Started => {
                    m.executions_started.add(1, std::slice::from_ref(&machine));
                    if !self.in_flight {
                        self.in_flight = true;
                        m.executions_in_flight
                            .add(1, std::slice::from_ref(&machine));
                    }
                }
                Ready::Transition(state_type) => m.state_transitions.add(
                    1,
                    &[
                        machine.clone(),
                        KeyValue::new(attr::STATE_TYPE, state_type_name(state_type)),
                    ],
                ),
                Ready::Retry(error) => m
                    .task_retries
                    .add(1, &[machine.clone(), KeyValue::new(ERROR_TYPE, error)]),
                Ready::Task {
                    resource,
                    seconds,
                    outcome,
                } => m.task_duration.record(
                    seconds,
                    &[
                        KeyValue::new(attr::RESOURCE, resource.to_string()),
                        KeyValue::new(attr::TASK_OUTCOME, outcome),
                    ],
                ),
                Ready::Completed {
                    status,
                    compensated,
                } => {
                    let attrs = [
                        machine.clone(),
                        KeyValue::new(attr::EXECUTION_STATUS, status),
                    ];
                    if status == "SUCCEEDED" {
                        m.executions_succeeded
                            .add(1, std::slice::from_ref(&machine));
                    } else {
                        m.executions_failed.add(1, &attrs);
                    }
                    if compensated {
                        m.executions_compensated.add(1, &attrs);
                    }
                    if self.in_flight {
                        self.in_flight = false;
                        m.executions_in_flight
                            .add(-1, std::slice::from_ref(&machine));
                    }
                }
                Ready::Span(span) => self.emit_span(&tracer, *span),
            }
        }
    }

    fn emit_span(&self, tracer: &global::BoxedTracer, s: FinishedSpan) {
        let parent_cx = match s.parent {
            Some(parent) => Context::new().with_remote_span_context(self.context_of(parent)),
            None => match &self.caller {
                Some(c) => Context::new().with_remote_span_context(c.clone()),
                None => Context::new(),
            },
        };
        let builder = tracer
            .span_builder(s.name)
            .with_kind(s.kind)
            .with_start_time(s.start)
            .with_attributes(s.attributes)
            .with_events(s.events);
        let mut span = with_ids(self.root.trace_id(), s.span, || {
            tracer.build_with_context(builder, &parent_cx)
        });
        span.set_status(s.status);
        span.end_with_timestamp(s.end);
    }
}

impl Drop for ExecutionTrace {
    fn drop(&mut self) {
        // Handed to another process, evicted, or finished in a replay: no
        // longer running here.
        if self.in_flight {
            metrics()
                .executions_in_flight
                .add(-1, &[machine_attr(&self.state_machine)]);
        }
    }
}

fn exception(t: SystemTime, error: &str, cause: &str) -> SpanEvent {
    exception_event(t, error, Some(cause))
}

/// An `exception` event; without `exception.message` when the cause is not
/// known (a state inside a branch whose failure reached the trace only as
/// its error name).
fn exception_event(t: SystemTime, error: &str, cause: Option<&str>) -> SpanEvent {
    let mut attributes = vec![KeyValue::new(EXCEPTION_TYPE, error.to_string())];
    if let Some(cause) = cause {
        attributes.push(KeyValue::new(EXCEPTION_MESSAGE, cause.to_string()));
    }
    SpanEvent::new("exception", t, attributes, 0)
}

fn state_type_name(t: StateType) -> &'static str {
    match t {
        StateType::Task => "Task",
        StateType::Pass => "Pass",
        StateType::Choice => "Choice",
        StateType::Wait => "Wait",
        StateType::Succeed => "Succeed",
        StateType::Fail => "Fail",
        StateType::Parallel => "Parallel",
        StateType::Map => "Map",
    }
}
