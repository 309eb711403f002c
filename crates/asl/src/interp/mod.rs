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
//!
//! Inside, an execution is a tree of *frames*. A frame runs one graph: the
//! machine's top level, a Parallel branch or a Map iteration. Each frame has
//! at most one *active* state; a state that waits (a task, a timer, child
//! frames) leaves the frame blocked until the matching event arrives. Work is
//! processed from a FIFO queue, never by recursion, so deep or long
//! definitions cannot exhaust the stack.
//!
//! ```
//! use std::sync::Arc;
//! use sagaflow_asl::interp::{Command, Event, Execution, ExecutionInfo, Options};
//! use serde_json::json;
//!
//! let machine = sagaflow_asl::parse::parse_definition(r#"{
//!   "StartAt": "Reserve",
//!   "States": {
//!     "Reserve": {"Type": "Task", "Resource": "reserve", "ResultPath": "$.booking", "End": true}
//!   }
//! }"#).unwrap();
//! let mut execution = Execution::new(Arc::new(machine), Options::default());
//! let now: jiff::Timestamp = "2024-01-01T00:00:00Z".parse().unwrap();
//! let info = ExecutionInfo {
//!     execution_id: "exec-1".into(),
//!     execution_name: "exec-1".into(),
//!     state_machine_id: "trip".into(),
//!     state_machine_name: "trip".into(),
//!     role_arn: String::new(),
//!     seed: 7,
//!     rules: sagaflow_asl::interp::RULES,
//! };
//! let mut out = Vec::new();
//! execution.apply(now, Event::ExecutionStarted { info, input: json!({"trip": 1}) }, &mut out).unwrap();
//! let task = out.iter().find_map(|c| match c {
//!     Command::ScheduleTask(t) => Some(t.clone()),
//!     _ => None,
//! }).unwrap();
//! assert_eq!(&*task.resource, "reserve");
//!
//! out.clear();
//! let answer = Event::TaskSucceeded { task_id: task.task_id.to_string(), output: json!("B-42") };
//! execution.apply(now, answer, &mut out).unwrap();
//! assert!(matches!(
//!     execution.outcome(),
//!     Some(sagaflow_asl::interp::Outcome::Succeeded { output }) if **output == json!({"trip": 1, "booking": "B-42"})
//! ));
//! ```

mod data;
mod types;

use std::cell::OnceCell;
use std::collections::{HashMap, VecDeque};
use std::sync::Arc;
use std::sync::atomic::AtomicU64;

use base64::Engine as _;
use serde_json::{Map, Value};

pub use types::*;

use crate::choice;
use crate::errors;
use crate::model::{
    Catcher, Count, FailField, Graph, ItemBatcher, Percentage, ResultPath, Retrier, Seconds, State,
    StateId, StateKind, StateMachine, Template, Transition, Wait,
};
use crate::path::{Env, ReadPath};
use crate::rand::{RandomSource, Secrets, SharedRandom};
use data::{Failure, Payload, eval_expr, eval_template, select};

/// Limits and knobs of the interpreter.
#[derive(Debug, Clone)]
pub struct Options {
    /// Largest state input/output or task result, in bytes of JSON
    /// (AWS: 256 KiB). Larger fails with `States.DataLimitExceeded`.
    pub max_payload_bytes: usize,
    /// Most states an execution may enter (AWS's history quota is 25,000
    /// events). Beyond it the execution fails with `States.Runtime`; this
    /// also stops a Pass/Choice loop that never waits.
    pub max_state_transitions: u64,
    /// Put state inputs and outputs into [`Record::StateEntered`] and
    /// [`Record::StateExited`] (as Step Functions' history shows them).
    /// Off, the records carry `null` and the interpreter copies less.
    pub record_payloads: bool,
}

impl Default for Options {
    fn default() -> Self {
        Options {
            max_payload_bytes: 256 * 1024,
            max_state_transitions: 25_000,
            record_payloads: true,
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

type FrameId = usize;

/// Where a frame's graph is: the chain of (Parallel/Map state, branch index)
/// from the machine's top-level graph.
type GraphLoc = Vec<(StateId, usize)>;

struct Frame {
    loc: GraphLoc,
    /// Prefix of every id made in this frame: "" at the top level,
    /// `Fanout@1#0[2]/` inside the third branch of state `Fanout`.
    prefix: String,
    parent: Option<(FrameId, usize)>,
    steps: u32,
    active: Option<Active>,
    vars: Option<HashMap<String, Value>>,
}

struct Active {
    state: StateId,
    step: u32,
    entered_at: Timestamp,
    raw_input: Payload,
    retry_count: u32,
    retrier_attempts: Vec<u32>,
    task_token: Option<String>,
    waiting: Waiting,
}

enum Waiting {
    Nothing,
    Task {
        task_id: Arc<str>,
        timeout_timer: Option<String>,
    },
    WaitTimer {
        timer_id: String,
        effective: Payload,
    },
    RetryTimer {
        timer_id: String,
    },
    Fanout(Box<Fanout>),
}

struct Fanout {
    is_map: bool,
    inputs: Vec<Payload>,
    children: Vec<Option<FrameId>>,
    results: Vec<Option<Payload>>,
    /// Which children succeeded (a tolerated failure has a result too), or
    /// were carried over from the run before a redrive.
    succeeded: Vec<bool>,
    next_to_start: usize,
    running: usize,
    max_concurrency: usize,
    failures: usize,
    tolerated_count: Option<u64>,
    tolerated_percentage: Option<f64>,
}

#[derive(Clone)]
enum TimerRole {
    /// The active state of this frame is waiting on it (Wait or retry).
    State(FrameId),
    /// A task's TimeoutSeconds.
    TaskTimeout { frame: FrameId, task_id: Arc<str> },
    /// The machine's TimeoutSeconds.
    Execution,
}

enum Flow {
    /// Enter this state of the frame with this raw input.
    Enter(StateId, Payload),
    /// The frame waits for an event.
    Blocked,
    /// The frame waits for these child frames, which start now.
    Fork(Vec<(FrameId, Flow)>),
    /// The frame's graph ended.
    Done(Result<Payload, Failure>),
}

/// The top-level state to run again on redrive, with what it needs.
struct RedrivePoint {
    state: StateId,
    input: Payload,
    steps: u32,
    vars: Option<HashMap<String, Value>>,
    /// When that state is a Parallel or Map: the results of the branches or
    /// iterations that had succeeded, by index. A redrive runs only the
    /// others, as AWS does.
    done: Option<Vec<Option<Payload>>>,
}

/// What the top-level Parallel or Map had finished when a failure of one of
/// its children tore it down (kept for [`RedrivePoint::done`]).
struct FanoutDone {
    state: StateId,
    step: u32,
    retry_count: u32,
    results: Vec<Option<Payload>>,
}

struct Started {
    info: ExecutionInfo,
    input: Arc<Value>,
    start_time: Timestamp,
}

/// One execution of a state machine.
pub struct Execution {
    machine: Arc<StateMachine>,
    options: Options,
    started: Option<Started>,
    frames: Vec<Option<Frame>>,
    /// Slots free for reuse.
    free: Vec<FrameId>,
    /// Slots released during the current drive: reused only from the next
    /// one, so a flow still queued for a frame that was aborted meanwhile
    /// finds its slot empty (and is dropped) instead of a new frame.
    released: Vec<FrameId>,
    tasks: HashMap<Arc<str>, FrameId>,
    timers: HashMap<String, TimerRole>,
    transitions: u64,
    /// SplitMix64 state, seeded from `ExecutionStarted`.
    rng: AtomicU64,
    outcome: Option<Outcome>,
    /// Where a redrive restarts: the top-level state running when the
    /// execution failed, timed out or was stopped.
    redrive_point: Option<RedrivePoint>,
    /// `$$.Execution.RedriveCount`.
    redrive_count: u32,
    /// See [`FanoutDone`].
    fanout_done: Option<FanoutDone>,
    /// [`RedrivePoint::done`] while a redrive enters its state.
    redrive_prefill: Option<Vec<Option<Payload>>>,
    /// A reused buffer for building ids.
    scratch: String,
    /// `$$.Execution`, built on first use and kept until a redrive changes
    /// it: it holds the execution's input, which would otherwise be copied
    /// for every evaluation that reads `$$.Execution.Id` (every item of a
    /// Map's `ItemSelector`).
    execution_context: std::sync::OnceLock<Option<Value>>,
}

impl Execution {
    /// A new execution, waiting for [`Event::ExecutionStarted`].
    pub fn new(machine: Arc<StateMachine>, options: Options) -> Execution {
        Execution {
            machine,
            options,
            started: None,
            frames: Vec::new(),
            free: Vec::new(),
            released: Vec::new(),
            tasks: HashMap::new(),
            timers: HashMap::new(),
            transitions: 0,
            rng: AtomicU64::new(0),
            outcome: None,
            redrive_point: None,
            redrive_count: 0,
            fanout_done: None,
            redrive_prefill: None,
            scratch: String::new(),
            execution_context: std::sync::OnceLock::new(),
        }
    }

    /// The state machine this execution runs.
    pub fn machine(&self) -> &Arc<StateMachine> {
        &self.machine
    }

    /// The rules the execution runs under ([`ExecutionInfo::rules`]).
    fn rules(&self) -> u32 {
        self.started.as_ref().map_or(RULES, |s| s.info.rules)
    }

    /// True when a payload nests deeper than rules 1 allow.
    fn too_deep(&self, payload: &Payload) -> bool {
        self.rules() >= 1 && too_deep(payload)
    }

    /// The outcome, once the execution has completed.
    pub fn outcome(&self) -> Option<&Outcome> {
        self.outcome.as_ref()
    }

    /// True when [`Event::RedriveRequested`] would run it again: it ended
    /// failed, timed out or aborted while a top-level state was running.
    pub fn redrivable(&self) -> bool {
        !matches!(self.outcome, Some(Outcome::Succeeded { .. }) | None)
            && self.redrive_point.is_some()
    }

    /// Ids of the tasks scheduled and not yet answered, in no order.
    pub fn pending_tasks(&self) -> impl Iterator<Item = &str> {
        self.tasks.keys().map(|id| &**id)
    }

    /// Ids of the timers started and not yet fired or cancelled, in no order.
    pub fn pending_timers(&self) -> impl Iterator<Item = &str> {
        self.timers.keys().map(String::as_str)
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
        if self.started.is_none() {
            return match event {
                Event::ExecutionStarted { info, input } => {
                    self.start(at, info, input, out);
                    Ok(())
                }
                Event::TaskSucceeded { .. } => Err(ApplyError::NotStarted("TaskSucceeded")),
                Event::TaskFailed { .. } => Err(ApplyError::NotStarted("TaskFailed")),
                Event::TimerFired { .. } => Err(ApplyError::NotStarted("TimerFired")),
                Event::StopRequested { .. } => Err(ApplyError::NotStarted("StopRequested")),
                Event::RedriveRequested => Err(ApplyError::NotStarted("RedriveRequested")),
            };
        }
        if self.outcome.is_some() {
            return match event {
                Event::ExecutionStarted { .. } => Err(ApplyError::AlreadyStarted),
                Event::RedriveRequested => {
                    self.redrive(at, out);
                    Ok(())
                }
                _ => Ok(()),
            };
        }
        match event {
            Event::ExecutionStarted { .. } => return Err(ApplyError::AlreadyStarted),
            Event::TaskSucceeded { task_id, output } => {
                if let Some(frame) = self.take_task(&task_id, out) {
                    let flow = self.task_result(at, frame, Ok(output), out);
                    self.drive(at, VecDeque::from([(frame, flow)]), out);
                }
            }
            Event::TaskFailed {
                task_id,
                error,
                cause,
            } => {
                if let Some(frame) = self.take_task(&task_id, out) {
                    let flow = self.task_result(at, frame, Err(Failure::new(error, cause)), out);
                    self.drive(at, VecDeque::from([(frame, flow)]), out);
                }
            }
            Event::TimerFired { timer_id } => self.timer_fired(at, &timer_id, out),
            // Only a completed execution can be redriven.
            Event::RedriveRequested => {}
            Event::StopRequested { error, cause } => {
                self.capture_redrive_point();
                self.abort_all(out);
                self.complete(Outcome::Aborted { error, cause }, out);
            }
        }
        Ok(())
    }

    // ----------------------------------------------------------------- start

    fn start(&mut self, at: Timestamp, info: ExecutionInfo, input: Value, out: &mut Vec<Command>) {
        self.rng = AtomicU64::new(if info.rules >= 1 {
            Secrets::new(info.seed).stream_start()
        } else {
            info.seed
        });
        let input = Arc::new(input);
        self.execution_context = std::sync::OnceLock::new();
        self.started = Some(Started {
            info,
            input: input.clone(),
            start_time: at,
        });
        if let Some(seconds) = self.machine.timeout_seconds {
            let timer_id = "execution-timeout".to_string();
            let fire_at = add_seconds(at, seconds as f64);
            self.timers.insert(timer_id.clone(), TimerRole::Execution);
            out.push(Command::StartTimer {
                timer_id,
                fire_at,
                purpose: TimerPurpose::ExecutionTimeout,
            });
        }
        let root = self.alloc(Frame {
            loc: Vec::new(),
            prefix: String::new(),
            parent: None,
            steps: 0,
            active: None,
            vars: None,
        });
        let limit = self.options.max_payload_bytes;
        let flow = match Payload::measure_shared(input, limit).fits(limit) {
            Ok(input) if self.too_deep(&input) => Flow::Done(Err(Failure::new(
                errors::DATA_LIMIT_EXCEEDED,
                format!(
                    "The execution input is nested more than {} levels deep.",
                    data::MAX_DEPTH
                ),
            ))),
            Ok(input) => Flow::Enter(self.machine.graph.start_at, input),
            Err(_) => Flow::Done(Err(Failure::new(
                errors::DATA_LIMIT_EXCEEDED,
                format!("The execution input exceeds the maximum payload size of {limit} bytes."),
            ))),
        };
        self.drive(at, VecDeque::from([(root, flow)]), out);
    }

    // --------------------------------------------------------------- redrive

    /// Remembers the top-level state that is running, for a later redrive.
    fn capture_redrive_point(&mut self) {
        let torn_down = self.fanout_done.take();
        let root = self.frames.iter().flatten().find(|f| f.parent.is_none());
        if let Some(frame) = root
            && let Some(active) = &frame.active
        {
            let done = match &active.waiting {
                // Stopped or timed out while the fan-out ran.
                Waiting::Fanout(fan) => succeeded_results(fan),
                // A child's failure tore this very fan-out down.
                _ => torn_down
                    .filter(|d| {
                        d.state == active.state
                            && d.step == active.step
                            && d.retry_count == active.retry_count
                    })
                    .map(|d| d.results),
            };
            self.redrive_point = Some(RedrivePoint {
                state: active.state,
                input: active.raw_input.clone(),
                steps: frame.steps,
                vars: frame.vars.clone(),
                done,
            });
        }
    }

    fn redrive(&mut self, at: Timestamp, out: &mut Vec<Command>) {
        if matches!(self.outcome, Some(Outcome::Succeeded { .. }) | None) {
            return;
        }
        let Some(point) = self.redrive_point.take() else {
            return;
        };
        self.outcome = None;
        self.redrive_count += 1;
        self.execution_context = std::sync::OnceLock::new();
        let name = graph_at(&self.machine, &Vec::new())
            .state(point.state)
            .name
            .to_string();
        out.push(Command::Record(Record::Redriven {
            count: self.redrive_count,
            state: name,
        }));
        if let Some(seconds) = self.machine.timeout_seconds {
            let timer_id = "execution-timeout".to_string();
            self.timers.insert(timer_id.clone(), TimerRole::Execution);
            out.push(Command::StartTimer {
                timer_id,
                fire_at: add_seconds(at, seconds as f64),
                purpose: TimerPurpose::ExecutionTimeout,
            });
        }
        let root = self.alloc(Frame {
            loc: Vec::new(),
            prefix: String::new(),
            parent: None,
            steps: point.steps,
            active: None,
            vars: point.vars,
        });
        // Entering the state starts its fan-out (if it is one) at once.
        self.redrive_prefill = point.done;
        self.drive(
            at,
            VecDeque::from([(root, Flow::Enter(point.state, point.input))]),
            out,
        );
        self.redrive_prefill = None;
    }

    // ------------------------------------------------------------ the driver

    fn drive(
        &mut self,
        at: Timestamp,
        mut queue: VecDeque<(FrameId, Flow)>,
        out: &mut Vec<Command>,
    ) {
        // No flow of an earlier drive is queued: every slot released then
        // can be reused now.
        self.free.append(&mut self.released);
        while let Some((frame, flow)) = queue.pop_front() {
            if self.outcome.is_some() {
                return;
            }
            // A sibling's failure aborted this frame (a Parallel branch, a
            // Map iteration) after this flow was queued: it goes nowhere.
            if !matches!(self.frames.get(frame), Some(Some(_))) {
                continue;
            }
            match flow {
                Flow::Blocked => {}
                Flow::Fork(children) => queue.extend(children),
                Flow::Enter(state, input) => {
                    let next = self.enter(at, frame, state, input, out);
                    queue.push_back((frame, next));
                }
                Flow::Done(result) => {
                    let parent = self.frame(frame).parent;
                    if parent.is_none() && result.is_err() {
                        self.capture_redrive_point();
                    }
                    // Its only flow was this one: the slot can be reused at
                    // once (a Map of many quick iterations keeps few slots).
                    self.release_now(frame);
                    match parent {
                        None => {
                            let outcome = match result {
                                Ok(output) => Outcome::Succeeded {
                                    output: output.value,
                                },
                                Err(f) => Outcome::Failed {
                                    error: f.error,
                                    cause: f.cause,
                                },
                            };
                            self.abort_all(out);
                            self.complete(outcome, out);
                        }
                        Some((parent, index)) => {
                            self.child_done(at, parent, index, result, out, &mut queue);
                        }
                    }
                }
            }
        }
    }

    fn complete(&mut self, outcome: Outcome, out: &mut Vec<Command>) {
        if self.timers.remove("execution-timeout").is_some() {
            out.push(Command::CancelTimer {
                timer_id: "execution-timeout".to_string(),
            });
        }
        self.outcome = Some(outcome.clone());
        out.push(Command::Complete(outcome));
    }

    // ---------------------------------------------------------------- frames

    fn alloc(&mut self, frame: Frame) -> FrameId {
        if let Some(id) = self.free.pop() {
            self.frames[id] = Some(frame);
            id
        } else {
            self.frames.push(Some(frame));
            self.frames.len() - 1
        }
    }

    /// Frees a slot whose frame has no flow left in the drive's queue.
    fn release_now(&mut self, id: FrameId) {
        if let Some(slot) = self.frames.get_mut(id)
            && slot.take().is_some()
        {
            self.free.push(id);
        }
    }

    /// Frees a slot whose frame may still have a flow queued (a branch or
    /// iteration aborted by a sibling): reused from the next drive on.
    fn release(&mut self, id: FrameId) {
        if let Some(slot) = self.frames.get_mut(id)
            && slot.take().is_some()
        {
            self.released.push(id);
        }
    }

    fn frame(&self, id: FrameId) -> &Frame {
        self.frames[id]
            .as_ref()
            .expect("frame ids handed out are live")
    }

    fn frame_mut(&mut self, id: FrameId) -> &mut Frame {
        self.frames[id]
            .as_mut()
            .expect("frame ids handed out are live")
    }

    fn active(&self, id: FrameId) -> &Active {
        self.frame(id)
            .active
            .as_ref()
            .expect("the frame has an active state")
    }

    fn active_mut(&mut self, id: FrameId) -> &mut Active {
        self.frame_mut(id)
            .active
            .as_mut()
            .expect("the frame has an active state")
    }

    /// The graph a frame runs and the state it is in, from a machine handle
    /// that does not borrow `self`.
    fn state_of<'m>(machine: &'m StateMachine, loc: &GraphLoc, id: StateId) -> &'m State {
        graph_at(machine, loc).state(id)
    }

    // ------------------------------------------------------- entering states

    fn enter(
        &mut self,
        at: Timestamp,
        f: FrameId,
        state_id: StateId,
        input: Payload,
        out: &mut Vec<Command>,
    ) -> Flow {
        let machine = self.machine.clone();
        let state = Self::state_of(&machine, &self.frame(f).loc, state_id);
        if let Err(failure) = self.count_transition(&state.name, "") {
            return Flow::Done(Err(failure));
        }
        let frame = self.frame_mut(f);
        let step = frame.steps;
        frame.steps += 1;
        let path = state_path(&frame.prefix, state);
        out.push(Command::Record(Record::StateEntered {
            path,
            name: state.name.clone(),
            state_type: state.kind.state_type(),
            input: self.recorded(&input.value),
        }));
        self.frame_mut(f).active = Some(Active {
            state: state_id,
            step,
            entered_at: at,
            raw_input: input,
            retry_count: 0,
            retrier_attempts: Vec::new(),
            task_token: None,
            waiting: Waiting::Nothing,
        });
        self.attempt(at, f, out)
    }

    /// Runs the active state of `f` (again, for a retry).
    fn attempt(&mut self, at: Timestamp, f: FrameId, out: &mut Vec<Command>) -> Flow {
        let machine = self.machine.clone();
        let state = Self::state_of(&machine, &self.frame(f).loc, self.active(f).state);
        let result = match &state.kind {
            StateKind::Pass(pass) => self.run_pass(f, state, pass),
            StateKind::Task(task) => {
                return match self.run_task(at, f, state, task, out) {
                    Ok(()) => Flow::Blocked,
                    Err(failure) => self.state_failed(at, f, failure, out),
                };
            }
            StateKind::Choice(choice) => return self.run_choice(f, state, choice, out),
            StateKind::Wait(wait) => {
                return match self.run_wait(at, f, state, wait, out) {
                    Ok(()) => Flow::Blocked,
                    Err(failure) => self.state_failed(at, f, failure, out),
                };
            }
            StateKind::Succeed => {
                return match self.input_path(f, state) {
                    Ok(effective) => match self.output_path(f, state, effective) {
                        Ok(output) => {
                            self.exited(f, state, &output, out);
                            Flow::Done(Ok(output))
                        }
                        Err(failure) => Flow::Done(Err(failure)),
                    },
                    Err(failure) => Flow::Done(Err(failure)),
                };
            }
            StateKind::Fail(fail) => return Flow::Done(Err(self.run_fail(f, state, fail))),
            StateKind::Parallel(parallel) => {
                match self.effective_input(f, state, parallel.parameters.as_ref()) {
                    Ok(effective) => {
                        let inputs = vec![effective; parallel.branches.len()];
                        let fanout = Fanout::new(false, inputs, 0, None, None);
                        return self.start_fanout(at, f, state, fanout, out);
                    }
                    Err(failure) => Err(failure),
                }
            }
            StateKind::Map(map) => match self.prepare_map(f, state, map) {
                Ok(fanout) => return self.start_fanout(at, f, state, fanout, out),
                Err(failure) => Err(failure),
            },
        };
        match result {
            Ok(value) => self.state_succeeded(at, f, value, out),
            Err(failure) => self.state_failed(at, f, failure, out),
        }
    }

    // ------------------------------------------------------------------ Pass

    fn run_pass(
        &self,
        f: FrameId,
        state: &State,
        pass: &crate::model::Pass,
    ) -> Result<Payload, Failure> {
        let effective = self.effective_input(f, state, pass.parameters.as_ref())?;
        Ok(match &pass.result {
            Some(result) => Payload::measure(result.clone(), self.options.max_payload_bytes),
            None => effective,
        })
    }

    // ------------------------------------------------------------------ Task

    fn run_task(
        &mut self,
        at: Timestamp,
        f: FrameId,
        state: &State,
        task: &crate::model::Task,
        out: &mut Vec<Command>,
    ) -> Result<(), Failure> {
        let (step, retry_count) = {
            let active = self.active(f);
            (active.step, active.retry_count)
        };
        let task_id = {
            // Built in a reused buffer: one allocation for the shared id.
            use std::fmt::Write as _;
            let mut id = std::mem::take(&mut self.scratch);
            id.clear();
            id.push_str(&self.frame(f).prefix);
            id.push_str(&state.name);
            let _ = write!(id, "@{step}#{retry_count}");
            let shared = Arc::<str>::from(id.as_str());
            self.scratch = id;
            shared
        };
        if task.resource.ends_with(".waitForTaskToken") {
            let token = self.task_token(&task_id);
            self.active_mut(f).task_token = Some(token);
        }
        let effective = self.effective_input(f, state, task.parameters.as_ref())?;
        let timeout_seconds = match &task.timeout {
            Some(s) => Some(self.seconds(f, state, s, "TimeoutSecondsPath", &effective.value)?),
            None => None,
        };
        let heartbeat_seconds = match &task.heartbeat {
            Some(s) => Some(self.seconds(f, state, s, "HeartbeatSecondsPath", &effective.value)?),
            None => None,
        };
        let Ok(effective) = effective.fits(self.options.max_payload_bytes) else {
            return Err(Failure::new(
                errors::DATA_LIMIT_EXCEEDED,
                format!(
                    "The input of the task '{}' exceeds the maximum payload size of {} bytes.",
                    state.name, self.options.max_payload_bytes
                ),
            ));
        };
        if self.too_deep(&effective) {
            return Err(Failure::new(
                errors::DATA_LIMIT_EXCEEDED,
                format!(
                    "The input of the task '{}' is nested more than {} levels deep.",
                    state.name,
                    data::MAX_DEPTH
                ),
            ));
        }
        let timeout_timer = timeout_seconds.map(|seconds| {
            let timer_id = format!("{task_id}:timeout");
            self.timers.insert(
                timer_id.clone(),
                TimerRole::TaskTimeout {
                    frame: f,
                    task_id: task_id.clone(),
                },
            );
            out.push(Command::StartTimer {
                timer_id: timer_id.clone(),
                fire_at: add_seconds(at, seconds as f64),
                purpose: TimerPurpose::TaskTimeout {
                    task_id: task_id.to_string(),
                },
            });
            timer_id
        });
        self.tasks.insert(task_id.clone(), f);
        let active = self.active_mut(f);
        let task_token = active.task_token.clone();
        active.waiting = Waiting::Task {
            task_id: task_id.clone(),
            timeout_timer,
        };
        out.push(Command::ScheduleTask(TaskRequest {
            task_id,
            state_name: state.name.clone(),
            resource: task.resource.clone(),
            input: effective.value,
            attempt: retry_count,
            timeout_seconds,
            heartbeat_seconds,
            task_token,
            credentials: task.credentials.clone(),
        }));
        Ok(())
    }

    /// A deterministic callback token that names its execution and task
    /// (base64url, no padding), with a nonce keyed by the execution's seed:
    /// whoever holds one token (or any random value of the execution)
    /// cannot work out another.
    fn task_token(&self, task_id: &str) -> String {
        let (execution_id, seed, rules) = self
            .started
            .as_ref()
            .map(|s| (s.info.execution_id.as_str(), s.info.seed, s.info.rules))
            .unwrap_or(("", 0, RULES));
        let nonce = if rules >= 1 {
            Secrets::new(seed).token_nonce(execution_id, task_id)
        } else {
            // Rules 0: drawn from the random stream.
            let mut rng = SharedRandom(&self.rng);
            format!("{:016x}{:016x}", rng.next_u64(), rng.next_u64())
        };
        let raw = format!("{execution_id}\n{task_id}\n{nonce}");
        base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(raw)
    }

    /// The seed of the child execution a task starts
    /// (`states:startExecution`): keyed by this execution's seed, so that
    /// it cannot be worked out from the names involved.
    pub fn child_seed(&self, task_id: &str) -> u64 {
        let seed = self.started.as_ref().map_or(0, |s| s.info.seed);
        Secrets::new(seed).child_seed(task_id)
    }

    /// Removes a task from the pending set, cancelling its timeout timer.
    /// `None` when the task is unknown (a duplicate or late answer).
    fn take_task(&mut self, task_id: &str, out: &mut Vec<Command>) -> Option<FrameId> {
        let f = self.tasks.remove(task_id)?;
        let active = self.frames.get_mut(f)?.as_mut()?.active.as_mut()?;
        let Waiting::Task {
            task_id: waiting_for,
            timeout_timer,
        } = &mut active.waiting
        else {
            return None;
        };
        if &**waiting_for != task_id {
            return None;
        }
        if let Some(timer_id) = timeout_timer.take() {
            self.timers.remove(&timer_id);
            out.push(Command::CancelTimer { timer_id });
        }
        active.waiting = Waiting::Nothing;
        Some(f)
    }

    fn task_result(
        &mut self,
        at: Timestamp,
        f: FrameId,
        result: Result<Value, Failure>,
        out: &mut Vec<Command>,
    ) -> Flow {
        match result {
            Ok(output) => {
                let limit = self.options.max_payload_bytes;
                let output = match Payload::measure(output, limit).fits(limit) {
                    Ok(output) if self.too_deep(&output) => {
                        let machine = self.machine.clone();
                        let state =
                            Self::state_of(&machine, &self.frame(f).loc, self.active(f).state);
                        let failure = Failure::new(
                            errors::DATA_LIMIT_EXCEEDED,
                            format!(
                                "The state/task '{}' returned a result nested more than {} levels deep.",
                                state.name,
                                data::MAX_DEPTH
                            ),
                        );
                        return self.state_failed(at, f, failure, out);
                    }
                    other => other,
                };
                let Ok(output) = output else {
                    let machine = self.machine.clone();
                    let state = Self::state_of(&machine, &self.frame(f).loc, self.active(f).state);
                    let failure = Failure::new(
                        errors::DATA_LIMIT_EXCEEDED,
                        format!(
                            "The state/task '{}' returned a result with a size exceeding the maximum number of bytes service limit.",
                            state.name
                        ),
                    );
                    return self.state_failed(at, f, failure, out);
                };
                self.state_succeeded(at, f, output, out)
            }
            Err(failure) => self.state_failed(at, f, failure, out),
        }
    }

    // ---------------------------------------------------------------- Choice

    fn run_choice(
        &mut self,
        f: FrameId,
        state: &State,
        choice: &crate::model::Choice,
        out: &mut Vec<Command>,
    ) -> Flow {
        let effective = match self.input_path(f, state) {
            Ok(v) => v,
            Err(failure) => return Flow::Done(Err(failure)),
        };
        let env = self.env(f, state, None);
        let mut chosen = None;
        for rule in &choice.choices {
            match choice::evaluate(&rule.condition, &effective.value, &env) {
                Ok(true) => {
                    chosen = Some((rule.next, rule.assign.as_ref()));
                    break;
                }
                Ok(false) => {}
                Err(e) => {
                    return Flow::Done(Err(Failure::runtime(&state.name, e.message)));
                }
            }
        }
        drop(env);
        let (next, rule_assign) = match chosen {
            Some(found) => found,
            None => match choice.default {
                Some(default) => (default, None),
                None => {
                    return Flow::Done(Err(Failure::new(
                        errors::NO_CHOICE_MATCHED,
                        format!(
                            "No Matches! The state '{}' found no rule matching its input and has no Default.",
                            state.name
                        ),
                    )));
                }
            },
        };
        let mut assigned = Vec::new();
        for template in [rule_assign, state.assign.as_ref()].into_iter().flatten() {
            match self.eval_assign(f, template, &effective.value, state) {
                Ok(v) => assigned.push(v),
                Err(failure) => return Flow::Done(Err(failure)),
            }
        }
        let output = match self.output_path(f, state, effective) {
            Ok(v) => v,
            Err(failure) => return Flow::Done(Err(failure)),
        };
        self.exit_state(f, state, &output, assigned, out);
        Flow::Enter(next, output)
    }

    // ------------------------------------------------------------------ Wait

    fn run_wait(
        &mut self,
        at: Timestamp,
        f: FrameId,
        state: &State,
        wait: &Wait,
        out: &mut Vec<Command>,
    ) -> Result<(), Failure> {
        let effective = self.input_path(f, state)?;
        let fire_at = match wait {
            Wait::Seconds(s) => add_seconds(at, *s as f64),
            Wait::Timestamp(ts) => *ts,
            Wait::SecondsPath(path) => {
                let env = self.env(f, state, None);
                let v = select(path, "SecondsPath", &effective.value, &env, &state.name)?;
                match whole_number(&v) {
                    Some(s) => add_seconds(at, s as f64),
                    None => {
                        return Err(Failure::runtime(
                            &state.name,
                            format!(
                                "The SecondsPath '{}' must select a non-negative integer, got {}",
                                path.as_str(),
                                data::truncate_json(&v)
                            ),
                        ));
                    }
                }
            }
            Wait::TimestampPath(path) => {
                let env = self.env(f, state, None);
                let v = select(path, "TimestampPath", &effective.value, &env, &state.name)?;
                match v.as_str().and_then(choice::parse_timestamp) {
                    Some(ts) => ts,
                    None => {
                        return Err(Failure::runtime(
                            &state.name,
                            format!(
                                "The TimestampPath '{}' must select an ISO-8601 timestamp, got {}",
                                path.as_str(),
                                data::truncate_json(&v)
                            ),
                        ));
                    }
                }
            }
        };
        let active = self.active(f);
        let timer_id = format!(
            "{}{}@{}:wait",
            self.frame(f).prefix,
            state.name,
            active.step
        );
        self.timers.insert(timer_id.clone(), TimerRole::State(f));
        self.active_mut(f).waiting = Waiting::WaitTimer {
            timer_id: timer_id.clone(),
            effective,
        };
        out.push(Command::StartTimer {
            timer_id,
            fire_at,
            purpose: TimerPurpose::Wait {
                state_name: state.name.to_string(),
            },
        });
        Ok(())
    }

    // ------------------------------------------------------------------ Fail

    fn run_fail(&self, f: FrameId, state: &State, fail: &crate::model::Fail) -> Failure {
        let input = &*self.active(f).raw_input.value;
        let field = |field: &Option<FailField>, name: &str| -> Result<String, Failure> {
            match field {
                None => Ok(String::new()),
                Some(FailField::Literal(s)) => Ok(s.clone()),
                Some(FailField::Expr(expr)) => {
                    let env = self.env(f, state, None);
                    let mut rng = SharedRandom(&self.rng);
                    let v = eval_expr(expr, name, input, &env, &mut rng, &state.name)?;
                    match v {
                        Value::String(s) => Ok(s),
                        other => Err(Failure::runtime(
                            &state.name,
                            format!(
                                "The {name} must select a string, got {}",
                                data::truncate_json(&other)
                            ),
                        )),
                    }
                }
            }
        };
        let error = match field(&fail.error, "ErrorPath") {
            Ok(e) => e,
            Err(failure) => return failure,
        };
        let cause = match field(&fail.cause, "CausePath") {
            Ok(c) => c,
            Err(failure) => return failure,
        };
        Failure::new(error, cause)
    }

    // ------------------------------------------------------- Parallel and Map

    fn prepare_map(
        &self,
        f: FrameId,
        state: &State,
        map: &crate::model::Map,
    ) -> Result<Fanout, Failure> {
        let effective = self.input_path(f, state)?.value;
        let env = self.env(f, state, None);
        let items = select(&map.items_path, "ItemsPath", &effective, &env, &state.name)?;
        let Value::Array(items) = items else {
            return Err(Failure::runtime(
                &state.name,
                format!(
                    "Items of the Map state must be an array; ItemsPath '{}' selected {}",
                    map.items_path.as_str(),
                    data::truncate_json(&items)
                ),
            ));
        };
        drop(env);
        let max_concurrency = match &map.max_concurrency {
            None => 0,
            Some(c) => self.count(f, state, c, "MaxConcurrencyPath", &effective)?,
        };
        // An inline Map runs at most 40 iterations at once on AWS, whatever
        // its MaxConcurrency (0: no limit of its own).
        let max_concurrency = if map.distributed || self.rules() == 0 {
            max_concurrency
        } else if max_concurrency == 0 {
            crate::model::INLINE_MAP_CONCURRENCY
        } else {
            max_concurrency.min(crate::model::INLINE_MAP_CONCURRENCY)
        };
        let max_concurrency = usize::try_from(max_concurrency).unwrap_or(usize::MAX);
        let tolerated_count = match &map.tolerated_failure_count {
            None => None,
            Some(c) => Some(self.count(f, state, c, "ToleratedFailureCountPath", &effective)?),
        };
        let tolerated_percentage = match &map.tolerated_failure_percentage {
            None => None,
            Some(Percentage::Fixed(p)) => Some(*p),
            Some(Percentage::Path(path)) => {
                let env = self.env(f, state, None);
                let v = select(
                    path,
                    "ToleratedFailurePercentagePath",
                    &effective,
                    &env,
                    &state.name,
                )?;
                match v.as_f64() {
                    Some(p) if (0.0..=100.0).contains(&p) => Some(p),
                    _ => {
                        return Err(Failure::runtime(
                            &state.name,
                            format!(
                                "ToleratedFailurePercentagePath '{}' must select a number between 0 and 100, got {}",
                                path.as_str(),
                                data::truncate_json(&v)
                            ),
                        ));
                    }
                }
            }
        };
        // Rules 3: the iterations' inputs are all built now (AWS builds
        // each as its iteration starts), so what they may take is bounded:
        // every item needs a state transition, and an ItemSelector that
        // copies a large input into each of many items is stopped at a
        // total of MAP_INPUTS_FACTOR payloads.
        let bounded = self.rules() >= 3;
        let left = self
            .options
            .max_state_transitions
            .saturating_sub(self.transitions);
        if bounded && items.len() as u64 > left {
            return Err(Failure::runtime(
                &state.name,
                format!(
                    "The Map state '{}' has {} items, more than the {left} state transitions left of the execution's limit of {}.",
                    state.name,
                    items.len(),
                    self.options.max_state_transitions
                ),
            ));
        }
        let budget = self
            .options
            .max_payload_bytes
            .saturating_mul(MAP_INPUTS_FACTOR);
        let mut used = 0usize;
        let mut inputs = Vec::with_capacity(items.len());
        for (index, item) in items.into_iter().enumerate() {
            let input = match &map.item_selector {
                Some(t) => self.eval(f, t, &effective, state, Some((index, &item)))?,
                None => item,
            };
            if bounded {
                used = used.saturating_add(
                    data::json_len_within(&input, budget - used.min(budget))
                        .unwrap_or(budget.saturating_add(1)),
                );
                if used > budget {
                    return Err(Failure::new(
                        errors::DATA_LIMIT_EXCEEDED,
                        format!(
                            "The inputs of the iterations of the Map state '{}' exceed {budget} bytes in all ({MAP_INPUTS_FACTOR} times the maximum payload size), at item {index}.",
                            state.name
                        ),
                    ));
                }
            }
            inputs.push(input);
        }
        if let Some(batcher) = &map.item_batcher {
            inputs = self.batch(f, state, batcher, &effective, inputs)?;
        }
        let limit = self.options.max_payload_bytes;
        let inputs = inputs
            .into_iter()
            .map(|v| Payload::measure(v, limit))
            .collect();
        Ok(Fanout::new(
            true,
            inputs,
            max_concurrency,
            tolerated_count,
            tolerated_percentage,
        ))
    }

    fn batch(
        &self,
        f: FrameId,
        state: &State,
        batcher: &ItemBatcher,
        effective: &Value,
        items: Vec<Value>,
    ) -> Result<Vec<Value>, Failure> {
        let max_items = match &batcher.max_items_per_batch {
            Some(c) => Some(self.count(f, state, c, "MaxItemsPerBatchPath", effective)?),
            None => None,
        };
        let max_bytes = match &batcher.max_input_bytes_per_batch {
            Some(c) => Some(self.count(f, state, c, "MaxInputBytesPerBatchPath", effective)?),
            None => None,
        };
        let batch_input = match &batcher.batch_input {
            Some(t) => Some(self.eval(f, t, effective, state, None)?),
            None => None,
        };
        let max_items = max_items.filter(|n| *n > 0).unwrap_or(u64::MAX) as usize;
        let max_bytes = max_bytes.filter(|n| *n > 0).unwrap_or(u64::MAX) as usize;
        let mut batches = Vec::new();
        let mut current: Vec<Value> = Vec::new();
        let mut current_bytes = 0usize;
        for item in items {
            let size = serde_json::to_string(&item).map(|s| s.len()).unwrap_or(0) + 1;
            if !current.is_empty()
                && (current.len() >= max_items || current_bytes + size > max_bytes)
            {
                batches.push(std::mem::take(&mut current));
                current_bytes = 0;
            }
            current_bytes += size;
            current.push(item);
        }
        if !current.is_empty() {
            batches.push(current);
        }
        Ok(batches
            .into_iter()
            .map(|items| {
                let mut map = Map::with_capacity(2);
                if let Some(input) = &batch_input {
                    map.insert("BatchInput".to_string(), input.clone());
                }
                map.insert("Items".to_string(), Value::Array(items));
                Value::Object(map)
            })
            .collect())
    }

    fn start_fanout(
        &mut self,
        at: Timestamp,
        f: FrameId,
        state: &State,
        mut fanout: Fanout,
        out: &mut Vec<Command>,
    ) -> Flow {
        // A redrive of a top-level Parallel or Map: what succeeded before
        // is kept and not run again.
        if self.frame(f).parent.is_none()
            && let Some(prefill) = self.redrive_prefill.take()
            && prefill.len() == fanout.inputs.len()
        {
            for (index, result) in prefill.into_iter().enumerate() {
                if let Some(result) = result {
                    fanout.results[index] = Some(result);
                    fanout.succeeded[index] = true;
                }
            }
        }
        if fanout.inputs.is_empty() {
            let empty = Payload {
                value: Arc::new(Value::Array(Vec::new())),
                size: 2,
            };
            return self.state_succeeded(at, f, empty, out);
        }
        self.active_mut(f).waiting = Waiting::Fanout(Box::new(fanout));
        let mut queue = VecDeque::new();
        self.start_children(f, state, &mut queue, out);
        Flow::Fork(queue.into())
    }

    /// Starts as many children as the concurrency limit allows.
    fn start_children(
        &mut self,
        f: FrameId,
        state: &State,
        queue: &mut VecDeque<(FrameId, Flow)>,
        out: &mut Vec<Command>,
    ) {
        loop {
            // Children carried over by a redrive are not started again.
            if let Some(Waiting::Fanout(fan)) =
                self.frame_mut(f).active.as_mut().map(|a| &mut a.waiting)
            {
                while fan.next_to_start < fan.inputs.len() && fan.succeeded[fan.next_to_start] {
                    fan.next_to_start += 1;
                }
            }
            let (loc, prefix, index, input, is_map) = {
                let frame = self.frame(f);
                let active = frame.active.as_ref().expect("active fan-out state");
                let Waiting::Fanout(fan) = &active.waiting else {
                    return;
                };
                if fan.next_to_start >= fan.inputs.len()
                    || (fan.max_concurrency > 0 && fan.running >= fan.max_concurrency)
                {
                    return;
                }
                let index = fan.next_to_start;
                let mut loc = frame.loc.clone();
                loc.push((active.state, if fan.is_map { 0 } else { index }));
                let prefix = format!(
                    "{}{}@{}#{}[{}]/",
                    frame.prefix, state.name, active.step, active.retry_count, index
                );
                (loc, prefix, index, fan.inputs[index].clone(), fan.is_map)
            };
            let start_at = graph_at(&self.machine, &loc).start_at;
            let child = self.alloc(Frame {
                loc,
                prefix,
                parent: Some((f, index)),
                steps: 0,
                active: None,
                vars: None,
            });
            if let Some(Waiting::Fanout(fan)) =
                self.frame_mut(f).active.as_mut().map(|a| &mut a.waiting)
            {
                fan.children[index] = Some(child);
                fan.next_to_start += 1;
                fan.running += 1;
            }
            if is_map {
                out.push(Command::Record(Record::MapIterationStarted {
                    path: format!("{}{}", self.frame(f).prefix, state.name),
                    index,
                }));
            }
            queue.push_back((child, Flow::Enter(start_at, input)));
        }
    }

    fn child_done(
        &mut self,
        at: Timestamp,
        f: FrameId,
        index: usize,
        result: Result<Payload, Failure>,
        out: &mut Vec<Command>,
        queue: &mut VecDeque<(FrameId, Flow)>,
    ) {
        let machine = self.machine.clone();
        let Some(state_id) = self
            .frames
            .get(f)
            .and_then(|fr| fr.as_ref())
            .and_then(|fr| fr.active.as_ref())
            .map(|a| a.state)
        else {
            return;
        };
        let state = Self::state_of(&machine, &self.frame(f).loc, state_id);
        let path = format!("{}{}", self.frame(f).prefix, state.name);
        let Some(Waiting::Fanout(fan)) = self.frame_mut(f).active.as_mut().map(|a| &mut a.waiting)
        else {
            return;
        };
        fan.children[index] = None;
        fan.running -= 1;
        let is_map = fan.is_map;
        let failure = match result {
            Ok(value) => {
                fan.results[index] = Some(value);
                fan.succeeded[index] = true;
                if is_map {
                    out.push(Command::Record(Record::MapIterationSucceeded {
                        path,
                        index,
                    }));
                }
                None
            }
            Err(failure) => {
                if is_map {
                    out.push(Command::Record(Record::MapIterationFailed {
                        path,
                        index,
                        error: failure.error.clone(),
                    }));
                }
                let tolerant = fan.tolerated_count.is_some() || fan.tolerated_percentage.is_some();
                let terminal = failure.error == errors::RUNTIME
                    || failure.error == errors::DATA_LIMIT_EXCEEDED;
                if tolerant && !terminal {
                    fan.failures += 1;
                    fan.results[index] = Some(Payload::measure(failure.error_output(), usize::MAX));
                    let total = fan.inputs.len();
                    let over_count = fan.tolerated_count.is_some_and(|c| fan.failures as u64 > c);
                    let over_pct = fan
                        .tolerated_percentage
                        .is_some_and(|p| fan.failures as f64 * 100.0 > p * total as f64);
                    let over = match (fan.tolerated_count, fan.tolerated_percentage) {
                        (Some(_), Some(_)) => over_count || over_pct,
                        (Some(_), None) => over_count,
                        _ => over_pct,
                    };
                    if over {
                        Some(Failure::new(
                            errors::EXCEED_TOLERATED_FAILURE_THRESHOLD,
                            format!(
                                "The Map state '{}' failed because {} of {} items failed, more than it tolerates.",
                                state.name, fan.failures, total
                            ),
                        ))
                    } else {
                        None
                    }
                } else {
                    Some(failure)
                }
            }
        };
        if let Some(failure) = failure {
            if self.frame(f).parent.is_none() {
                self.fanout_done = self.fanout_done_of(f);
            }
            self.abort_children(f, out);
            let flow = self.state_failed(at, f, failure, out);
            queue.push_back((f, flow));
            return;
        }
        self.start_children(f, state, queue, out);
        let Some(Waiting::Fanout(fan)) = self.frame_mut(f).active.as_mut().map(|a| &mut a.waiting)
        else {
            return;
        };
        if fan.running == 0 && fan.next_to_start >= fan.inputs.len() {
            // `[a,b,c]`: the parts, a comma between each, two brackets.
            let mut size = 2 + fan.results.len();
            let results: Vec<Value> = fan
                .results
                .iter_mut()
                .map(|r| match r.take() {
                    Some(p) => {
                        size += p.size;
                        Arc::unwrap_or_clone(p.value)
                    }
                    None => {
                        size += 4;
                        Value::Null
                    }
                })
                .collect();
            self.active_mut(f).waiting = Waiting::Nothing;
            let results = Payload {
                value: Arc::new(Value::Array(results)),
                size,
            };
            let flow = self.state_succeeded(at, f, results, out);
            queue.push_back((f, flow));
        }
    }

    // ------------------------------------------------------- timers

    fn timer_fired(&mut self, at: Timestamp, timer_id: &str, out: &mut Vec<Command>) {
        let Some(role) = self.timers.remove(timer_id) else {
            return;
        };
        match role {
            TimerRole::Execution => {
                self.capture_redrive_point();
                self.abort_all(out);
                let seconds = self.machine.timeout_seconds.unwrap_or(0);
                self.complete(
                    Outcome::TimedOut {
                        error: errors::TIMEOUT.to_string(),
                        cause: format!("The execution timed out after {seconds} seconds."),
                    },
                    out,
                );
            }
            TimerRole::TaskTimeout { frame, task_id } => {
                if self.tasks.remove(&task_id).is_none() {
                    return;
                }
                let seconds = match self
                    .frames
                    .get_mut(frame)
                    .and_then(|fr| fr.as_mut())
                    .and_then(|fr| fr.active.as_mut())
                {
                    Some(active) => {
                        active.waiting = Waiting::Nothing;
                        Some(())
                    }
                    None => None,
                };
                if seconds.is_none() {
                    return;
                }
                out.push(Command::CancelTask {
                    task_id: task_id.to_string(),
                });
                let failure = Failure::new(errors::TIMEOUT, task_timeout_cause(&task_id));
                let flow = self.state_failed(at, frame, failure, out);
                self.drive(at, VecDeque::from([(frame, flow)]), out);
            }
            TimerRole::State(f) => {
                let Some(active) = self
                    .frames
                    .get_mut(f)
                    .and_then(|fr| fr.as_mut())
                    .and_then(|fr| fr.active.as_mut())
                else {
                    return;
                };
                let flow = match std::mem::replace(&mut active.waiting, Waiting::Nothing) {
                    Waiting::WaitTimer {
                        timer_id: id,
                        effective,
                    } if id == timer_id => self.wait_over(f, effective, out),
                    Waiting::RetryTimer { timer_id: id } if id == timer_id => {
                        self.attempt(at, f, out)
                    }
                    other => {
                        active.waiting = other;
                        return;
                    }
                };
                self.drive(at, VecDeque::from([(f, flow)]), out);
            }
        }
    }

    fn wait_over(&mut self, f: FrameId, effective: Payload, out: &mut Vec<Command>) -> Flow {
        let machine = self.machine.clone();
        let state = Self::state_of(&machine, &self.frame(f).loc, self.active(f).state);
        let assigned = match &state.assign {
            Some(t) => match self.eval_assign(f, t, &effective.value, state) {
                Ok(v) => Some(v),
                Err(failure) => return Flow::Done(Err(failure)),
            },
            None => None,
        };
        let output = match self.output_path(f, state, effective) {
            Ok(v) => v,
            Err(failure) => return Flow::Done(Err(failure)),
        };
        self.exit_state(f, state, &output, assigned, out);
        transition(state, output)
    }

    // ---------------------------------------------------- results and errors

    /// Output processing after a Pass result, a task result or the results
    /// of a Parallel/Map: ResultSelector, ResultPath, OutputPath, Assign.
    fn state_succeeded(
        &mut self,
        at: Timestamp,
        f: FrameId,
        result: Payload,
        out: &mut Vec<Command>,
    ) -> Flow {
        let machine = self.machine.clone();
        let state = Self::state_of(&machine, &self.frame(f).loc, self.active(f).state);
        let (result_selector, result_path) = match &state.kind {
            StateKind::Task(t) => (t.result_selector.as_ref(), Some(&t.result_path)),
            StateKind::Parallel(p) => (p.result_selector.as_ref(), Some(&p.result_path)),
            StateKind::Map(m) => (m.result_selector.as_ref(), Some(&m.result_path)),
            StateKind::Pass(p) => (None, Some(&p.result_path)),
            _ => (None, None),
        };
        let limit = self.options.max_payload_bytes;
        let result = match result_selector {
            Some(t) => match self.eval(f, t, &result.value, state, None) {
                Ok(v) => Payload::measure(v, limit),
                Err(failure) => return self.state_failed(at, f, failure, out),
            },
            None => result,
        };
        let assigned = match &state.assign {
            Some(t) => match self.eval_assign(f, t, &result.value, state) {
                Ok(v) => Some(v),
                Err(failure) => return self.state_failed(at, f, failure, out),
            },
            None => None,
        };
        // The state's input must survive a failure of its output (at
        // OutputPath, at the size or depth limit): a retrier runs the state
        // again on it, a catcher merges the error into it, and a redrive
        // starts from it. The result is merged into it in place, and the
        // merge is undone on such a failure (no copy of the input).
        let mut undo = None;
        let merged = match result_path {
            None => result,
            Some(ResultPath::Discard) => self.active(f).raw_input.clone(),
            Some(ResultPath::Path(path)) if path.is_identity() => result,
            Some(ResultPath::Path(path)) => {
                let raw = std::mem::replace(
                    &mut self.active_mut(f).raw_input,
                    Payload {
                        value: null_value(),
                        size: 4,
                    },
                );
                let raw_size = raw.size;
                let size = raw.size + result.size + result_path_overhead(path.as_str());
                let mut target = Arc::unwrap_or_clone(raw.value);
                match path.write_in_place_undoable(&mut target, Arc::unwrap_or_clone(result.value))
                {
                    Ok(written) => {
                        undo = Some((path, written, raw_size));
                        Payload {
                            value: Arc::new(target),
                            size,
                        }
                    }
                    Err(e) => {
                        // Nothing was written: the input is as it was.
                        self.active_mut(f).raw_input = Payload {
                            value: Arc::new(target),
                            size: raw_size,
                        };
                        let failure = Failure::new(errors::RESULT_PATH_MATCH_FAILURE, e.message);
                        return self.state_failed(at, f, failure, out);
                    }
                }
            }
        };
        let checked = self
            .output_path(f, state, merged.clone())
            .and_then(|output| {
                output.fits(limit).map_err(|_| {
                    Failure::new(
                        errors::DATA_LIMIT_EXCEEDED,
                        format!(
                            "The output of the state '{}' exceeds the maximum payload size of {} bytes.",
                            state.name, self.options.max_payload_bytes
                        ),
                    )
                })
            })
            .and_then(|output| {
                if self.too_deep(&output) {
                    Err(Failure::new(
                        errors::DATA_LIMIT_EXCEEDED,
                        format!(
                            "The output of the state '{}' is nested more than {} levels deep.",
                            state.name,
                            data::MAX_DEPTH
                        ),
                    ))
                } else {
                    Ok(output)
                }
            });
        let output = match checked {
            Ok(output) => output,
            Err(failure) => {
                if let Some((path, written, raw_size)) = undo {
                    // Nothing else holds the merged value now.
                    let mut value = Arc::try_unwrap(merged.value).unwrap_or_else(|v| (*v).clone());
                    path.undo(&mut value, written);
                    self.active_mut(f).raw_input = Payload {
                        value: Arc::new(value),
                        size: raw_size,
                    };
                }
                return self.state_failed(at, f, failure, out);
            }
        };
        drop(merged);
        self.exit_state(f, state, &output, assigned, out);
        transition(state, output)
    }

    /// Counts a state transition; past [`Options::max_state_transitions`]
    /// the execution fails with `States.Runtime` (`why` ends the cause).
    fn count_transition(&mut self, state_name: &str, why: &str) -> Result<(), Failure> {
        self.transitions += 1;
        if self.transitions > self.options.max_state_transitions {
            return Err(Failure::runtime(
                state_name,
                format!(
                    "The execution exceeded the limit of {} state transitions{why}.",
                    self.options.max_state_transitions
                ),
            ));
        }
        Ok(())
    }

    /// Error handling: the first matching retrier, else the first matching
    /// catcher, else the frame fails.
    fn state_failed(
        &mut self,
        at: Timestamp,
        f: FrameId,
        failure: Failure,
        out: &mut Vec<Command>,
    ) -> Flow {
        let machine = self.machine.clone();
        let state = Self::state_of(&machine, &self.frame(f).loc, self.active(f).state);
        let (retry, catch): (&[Retrier], &[Catcher]) = match &state.kind {
            StateKind::Task(t) => (&t.retry, &t.catch),
            StateKind::Parallel(p) => (&p.retry, &p.catch),
            StateKind::Map(m) => (&m.retry, &m.catch),
            _ => (&[], &[]),
        };
        let path = format!("{}{}", self.frame(f).prefix, state.name);
        let rules = self.rules();
        if let Some(index) = retry
            .iter()
            .position(|r| errors::matches_under(&r.error_equals, &failure.error, rules))
        {
            let retrier = &retry[index];
            let active = self.active_mut(f);
            if active.retrier_attempts.len() < retry.len() {
                active.retrier_attempts.resize(retry.len(), 0);
            }
            let done = active.retrier_attempts[index];
            if done < retrier.max_attempts {
                // Rules 3: a retry is a transition (AWS bills it as one, and
                // its history limit bounds retries too).
                if rules >= 3
                    && let Err(failure) =
                        self.count_transition(&state.name, " (retries count as transitions)")
                {
                    return Flow::Done(Err(failure));
                }
                let active = self.active_mut(f);
                active.retrier_attempts[index] = done + 1;
                active.retry_count += 1;
                let attempt = active.retry_count;
                let step = active.step;
                let mut delay =
                    retrier.interval_seconds as f64 * retrier.backoff_rate.powi(done as i32);
                if let Some(max) = retrier.max_delay_seconds {
                    delay = delay.min(max as f64);
                }
                if !delay.is_finite() {
                    delay = retrier.max_delay_seconds.unwrap_or(31_622_400) as f64;
                }
                if retrier.jitter == crate::model::Jitter::Full {
                    delay *= SharedRandom(&self.rng).next_f64();
                }
                let delay = (delay * 1000.0).round() / 1000.0;
                let timer_id = format!("{}@{}#{}:retry", path, step, attempt);
                self.timers.insert(timer_id.clone(), TimerRole::State(f));
                self.active_mut(f).waiting = Waiting::RetryTimer {
                    timer_id: timer_id.clone(),
                };
                out.push(Command::Record(Record::RetryScheduled {
                    path,
                    error: failure.error,
                    attempt,
                    delay_seconds: delay,
                }));
                out.push(Command::StartTimer {
                    timer_id,
                    fire_at: add_seconds(at, delay),
                    purpose: TimerPurpose::Retry {
                        state_name: state.name.to_string(),
                        delay_seconds: delay,
                    },
                });
                return Flow::Blocked;
            }
        }
        if let Some(catcher) = catch
            .iter()
            .find(|c| errors::matches_under(&c.error_equals, &failure.error, rules))
        {
            let error_output = failure.error_output();
            let assigned = match &catcher.assign {
                Some(t) => match self.eval_assign(f, t, &error_output, state) {
                    Ok(v) => Some(v),
                    Err(failure) => return Flow::Done(Err(failure)),
                },
                None => None,
            };
            let error_size = data::json_len_within(&error_output, usize::MAX).unwrap_or(0);
            let mut undo = None;
            let output = match &catcher.result_path {
                ResultPath::Discard => self.active(f).raw_input.clone(),
                ResultPath::Path(p) => {
                    let raw_input = std::mem::replace(
                        &mut self.active_mut(f).raw_input,
                        Payload {
                            value: null_value(),
                            size: 4,
                        },
                    );
                    let raw_size = raw_input.size;
                    let mut target = Arc::unwrap_or_clone(raw_input.value);
                    match p.write_in_place_undoable(&mut target, error_output) {
                        Ok(written) => {
                            undo = Some((p, written, raw_size));
                            Payload {
                                value: Arc::new(target),
                                size: raw_size + error_size + result_path_overhead(p.as_str()),
                            }
                        }
                        Err(e) => {
                            // Nothing was written: the state fails with its
                            // input intact (for a redrive).
                            self.active_mut(f).raw_input = Payload {
                                value: Arc::new(target),
                                size: raw_size,
                            };
                            return Flow::Done(Err(Failure::new(
                                errors::RESULT_PATH_MATCH_FAILURE,
                                e.message,
                            )));
                        }
                    }
                }
            };
            // Rules 3: the catcher's output is a state output like any
            // other (a loop through a catcher that writes its input into
            // the error's cause would double it on every turn). The state
            // then fails with its input intact (for a redrive).
            let output = if rules >= 3 {
                let limit = self.options.max_payload_bytes;
                let checked = match output.fits(limit) {
                    Err(output) => Err((
                        output,
                        format!(
                            "The output of the state '{}' after its Catch exceeds the maximum payload size of {limit} bytes.",
                            state.name
                        ),
                    )),
                    Ok(output) if too_deep(&output) => Err((
                        output,
                        format!(
                            "The output of the state '{}' after its Catch is nested more than {} levels deep.",
                            state.name,
                            data::MAX_DEPTH
                        ),
                    )),
                    Ok(output) => Ok(output),
                };
                match checked {
                    Ok(output) => output,
                    Err((output, cause)) => {
                        if let Some((path, written, raw_size)) = undo {
                            let mut value =
                                Arc::try_unwrap(output.value).unwrap_or_else(|v| (*v).clone());
                            path.undo(&mut value, written);
                            self.active_mut(f).raw_input = Payload {
                                value: Arc::new(value),
                                size: raw_size,
                            };
                        }
                        return Flow::Done(Err(Failure::new(errors::DATA_LIMIT_EXCEEDED, cause)));
                    }
                }
            } else {
                output
            };
            if let Some(values) = assigned {
                self.assign(f, values);
            }
            let next_name = graph_at(&machine, &self.frame(f).loc)
                .state(catcher.next)
                .name
                .clone();
            out.push(Command::Record(Record::Caught {
                path,
                error: failure.error,
                cause: failure.cause,
                next: next_name.to_string(),
            }));
            self.frame_mut(f).active = None;
            return Flow::Enter(catcher.next, output);
        }
        Flow::Done(Err(failure))
    }

    // ------------------------------------------------------------- aborting

    /// Cancels everything a frame's active state waits on, recursively.
    fn abort_frame(&mut self, f: FrameId, out: &mut Vec<Command>) {
        let Some(active) = self
            .frames
            .get_mut(f)
            .and_then(|fr| fr.as_mut())
            .and_then(|fr| fr.active.as_mut())
        else {
            return;
        };
        match std::mem::replace(&mut active.waiting, Waiting::Nothing) {
            Waiting::Nothing => {}
            Waiting::Task {
                task_id,
                timeout_timer,
            } => {
                self.tasks.remove(&task_id);
                out.push(Command::CancelTask {
                    task_id: task_id.to_string(),
                });
                if let Some(timer_id) = timeout_timer {
                    self.timers.remove(&timer_id);
                    out.push(Command::CancelTimer { timer_id });
                }
            }
            Waiting::WaitTimer { timer_id, .. } | Waiting::RetryTimer { timer_id } => {
                self.timers.remove(&timer_id);
                out.push(Command::CancelTimer { timer_id });
            }
            Waiting::Fanout(mut fan) => {
                self.abort_fanout(f, &mut fan, out);
            }
        }
    }

    /// What the fan-out of frame `f` has finished, for a redrive.
    fn fanout_done_of(&self, f: FrameId) -> Option<FanoutDone> {
        let active = self.frame(f).active.as_ref()?;
        let Waiting::Fanout(fan) = &active.waiting else {
            return None;
        };
        Some(FanoutDone {
            state: active.state,
            step: active.step,
            retry_count: active.retry_count,
            results: succeeded_results(fan)?,
        })
    }

    fn abort_children(&mut self, f: FrameId, out: &mut Vec<Command>) {
        let Some(active) = self
            .frames
            .get_mut(f)
            .and_then(|fr| fr.as_mut())
            .and_then(|fr| fr.active.as_mut())
        else {
            return;
        };
        if let Waiting::Fanout(mut fan) = std::mem::replace(&mut active.waiting, Waiting::Nothing) {
            self.abort_fanout(f, &mut fan, out);
        }
    }

    fn abort_fanout(&mut self, f: FrameId, fan: &mut Fanout, out: &mut Vec<Command>) {
        let machine = self.machine.clone();
        let path = {
            let frame = self.frame(f);
            let state = graph_at(&machine, &frame.loc)
                .state(frame.active.as_ref().map(|a| a.state).unwrap_or(StateId(0)));
            format!("{}{}", frame.prefix, state.name)
        };
        for (index, child) in fan.children.iter_mut().enumerate() {
            if let Some(child) = child.take() {
                self.abort_frame(child, out);
                self.release(child);
                out.push(Command::Record(Record::BranchAborted {
                    path: path.clone(),
                    index,
                }));
            }
        }
        fan.running = 0;
    }

    fn abort_all(&mut self, out: &mut Vec<Command>) {
        let roots: Vec<FrameId> = (0..self.frames.len())
            .filter(|&id| matches!(&self.frames[id], Some(fr) if fr.parent.is_none()))
            .collect();
        for root in roots {
            self.abort_frame(root, out);
            // The execution ended: a redrive starts a root of its own (and
            // finds where from in `redrive_point`, captured before this).
            self.release(root);
        }
        // Anything left (there should be nothing) is dropped silently.
        self.tasks.clear();
        self.timers.retain(|id, _| id == "execution-timeout");
    }

    // ------------------------------------------------------------ evaluation

    fn env<'a>(
        &'a self,
        f: FrameId,
        state: &'a State,
        map_item: Option<(usize, &'a Value)>,
    ) -> FrameEnv<'a> {
        FrameEnv {
            exec: self,
            frame: f,
            state,
            map_item,
            context: OnceCell::new(),
            state_machine: OnceCell::new(),
            state_field: OnceCell::new(),
            task: OnceCell::new(),
            map: OnceCell::new(),
        }
    }

    /// Evaluates an `Assign` template: the variables it sets, each held
    /// (rules 2) to the payload size and nesting limits, as on AWS, so that
    /// no variable grows without bound (a loop that wraps a variable in an
    /// array at every turn).
    fn eval_assign(
        &self,
        f: FrameId,
        template: &Template,
        input: &Value,
        state: &State,
    ) -> Result<Value, Failure> {
        let values = self.eval(f, template, input, state, None)?;
        if self.rules() < 2 {
            return Ok(values);
        }
        if let Value::Object(map) = &values {
            let limit = self.options.max_payload_bytes;
            for (name, value) in map {
                if data::deeper_than(value, usize::MAX, data::MAX_DEPTH) {
                    return Err(Failure::new(
                        errors::DATA_LIMIT_EXCEEDED,
                        format!(
                            "The variable '{name}' assigned by the state '{}' is nested more than {} levels deep.",
                            state.name,
                            data::MAX_DEPTH
                        ),
                    ));
                }
                if data::json_len_within(value, limit).is_none() {
                    return Err(Failure::new(
                        errors::DATA_LIMIT_EXCEEDED,
                        format!(
                            "The variable '{name}' assigned by the state '{}' exceeds the maximum payload size of {limit} bytes.",
                            state.name
                        ),
                    ));
                }
            }
        }
        Ok(values)
    }

    fn eval(
        &self,
        f: FrameId,
        template: &Template,
        input: &Value,
        state: &State,
        map_item: Option<(usize, &Value)>,
    ) -> Result<Value, Failure> {
        let env = self.env(f, state, map_item);
        let mut rng = SharedRandom(&self.rng);
        eval_template(template, input, &env, &mut rng, &state.name)
    }

    /// The effective input: `InputPath`, then `Parameters`.
    fn effective_input(
        &self,
        f: FrameId,
        state: &State,
        parameters: Option<&Template>,
    ) -> Result<Payload, Failure> {
        let selected = self.input_path(f, state)?;
        match parameters {
            Some(t) => self
                .eval(f, t, &selected.value, state, None)
                .map(|v| Payload::measure(v, self.options.max_payload_bytes)),
            None => Ok(selected),
        }
    }

    /// The input after `InputPath` (shared with the raw input when the path
    /// is `$`).
    fn input_path(&self, f: FrameId, state: &State) -> Result<Payload, Failure> {
        let raw = &self.active(f).raw_input;
        match &state.input_path {
            None => Ok(Payload::empty_object()),
            Some(p) if p.is_identity() => Ok(raw.clone()),
            Some(p) => {
                let env = self.env(f, state, None);
                let selected = select(p, "InputPath", &raw.value, &env, &state.name)?;
                Ok(self.selection(p, selected, raw.size))
            }
        }
    }

    /// A selected value with its size: bounded by what it was selected from
    /// when it is a part of it, measured (up to the limit) otherwise.
    fn selection(&self, path: &ReadPath, value: Value, from_size: usize) -> Payload {
        if path.selects_part_of_input() {
            Payload {
                value: Arc::new(value),
                size: from_size,
            }
        } else {
            Payload::measure(value, self.options.max_payload_bytes)
        }
    }

    fn output_path(&self, f: FrameId, state: &State, value: Payload) -> Result<Payload, Failure> {
        match &state.output_path {
            None => Ok(Payload::empty_object()),
            Some(p) if p.is_identity() => Ok(value),
            Some(p) => {
                let env = self.env(f, state, None);
                let selected = select(p, "OutputPath", &value.value, &env, &state.name)?;
                Ok(self.selection(p, selected, value.size))
            }
        }
    }

    fn seconds(
        &self,
        f: FrameId,
        state: &State,
        s: &Seconds,
        field: &str,
        effective: &Value,
    ) -> Result<u64, Failure> {
        match s {
            Seconds::Fixed(n) => Ok(*n),
            Seconds::Path(path) => self.positive_integer(f, state, path, field, effective, 1),
        }
    }

    fn count(
        &self,
        f: FrameId,
        state: &State,
        c: &Count,
        field: &str,
        effective: &Value,
    ) -> Result<u64, Failure> {
        match c {
            Count::Fixed(n) => Ok(*n),
            Count::Path(path) => self.positive_integer(f, state, path, field, effective, 0),
        }
    }

    fn positive_integer(
        &self,
        f: FrameId,
        state: &State,
        path: &ReadPath,
        field: &str,
        effective: &Value,
        min: u64,
    ) -> Result<u64, Failure> {
        let env = self.env(f, state, None);
        let v = select(path, field, effective, &env, &state.name)?;
        match whole_number(&v) {
            Some(n) if n >= min => Ok(n),
            _ => Err(Failure::runtime(
                &state.name,
                format!(
                    "The {field} '{}' must select an integer of at least {min}, got {}",
                    path.as_str(),
                    data::truncate_json(&v)
                ),
            )),
        }
    }

    fn assign(&mut self, f: FrameId, values: Value) {
        if let Value::Object(map) = values {
            let vars = self.frame_mut(f).vars.get_or_insert_with(HashMap::new);
            for (k, v) in map {
                vars.insert(k, v);
            }
        }
    }

    /// A state completes: its `Assign` values take effect, its exit is
    /// recorded, and the frame has no active state until the next one.
    fn exit_state(
        &mut self,
        f: FrameId,
        state: &State,
        output: &Payload,
        assigned: impl IntoIterator<Item = Value>,
        out: &mut Vec<Command>,
    ) {
        for values in assigned {
            self.assign(f, values);
        }
        self.exited(f, state, output, out);
        self.frame_mut(f).active = None;
    }

    /// What a history record holds of a payload: the payload itself
    /// (shared), or `null` when payloads are not recorded.
    fn recorded(&self, payload: &Arc<Value>) -> Arc<Value> {
        if self.options.record_payloads {
            payload.clone()
        } else {
            null_value()
        }
    }

    fn exited(&self, f: FrameId, state: &State, output: &Payload, out: &mut Vec<Command>) {
        out.push(Command::Record(Record::StateExited {
            path: state_path(&self.frame(f).prefix, state),
            name: state.name.clone(),
            state_type: state.kind.state_type(),
            output: self.recorded(&output.value),
        }));
    }
}

/// The results of the children that succeeded, by index; `None` when none
/// did (nothing to keep) or all did.
fn succeeded_results(fan: &Fanout) -> Option<Vec<Option<Payload>>> {
    let kept = fan.succeeded.iter().filter(|s| **s).count();
    if kept == 0 || kept == fan.inputs.len() {
        return None;
    }
    Some(
        fan.results
            .iter()
            .zip(&fan.succeeded)
            .map(|(r, ok)| if *ok { r.clone() } else { None })
            .collect(),
    )
}

impl Fanout {
    fn new(
        is_map: bool,
        inputs: Vec<Payload>,
        max_concurrency: usize,
        tolerated_count: Option<u64>,
        tolerated_percentage: Option<f64>,
    ) -> Fanout {
        let n = inputs.len();
        Fanout {
            is_map,
            inputs,
            children: vec![None; n],
            results: vec![None; n],
            succeeded: vec![false; n],
            next_to_start: 0,
            running: 0,
            max_concurrency,
            failures: 0,
            tolerated_count,
            tolerated_percentage,
        }
    }
}

/// A non-negative whole number, also when written as a float (`2.0`), as
/// the literal fields accept it.
fn whole_number(v: &Value) -> Option<u64> {
    v.as_u64().or_else(|| {
        v.as_f64()
            .filter(|f| *f >= 0.0 && f.fract() == 0.0 && *f <= u64::MAX as f64)
            .map(|f| f as u64)
    })
}

/// A shared `null`, for payloads not kept and for values moved out.
fn null_value() -> Arc<Value> {
    static NULL: std::sync::LazyLock<Arc<Value>> =
        std::sync::LazyLock::new(|| Arc::new(Value::Null));
    NULL.clone()
}

/// The path of a state in history records: its name at the top level,
/// `Fanout@0#0[2]/Charge` inside a branch or iteration.
fn state_path(prefix: &str, state: &State) -> Arc<str> {
    if prefix.is_empty() {
        state.name.clone()
    } else {
        Arc::from(format!("{prefix}{}", state.name))
    }
}

fn transition(state: &State, output: Payload) -> Flow {
    match state.transition {
        Transition::Next(next) => Flow::Enter(next, output),
        Transition::End | Transition::None => Flow::Done(Ok(output)),
    }
}

/// The cause of a task's `States.Timeout` when it did not answer within
/// its `TimeoutSeconds`.
pub fn task_timeout_cause(task_id: &str) -> String {
    format!("The task '{task_id}' did not complete within its TimeoutSeconds.")
}

/// How many payloads' worth (of [`Options::max_payload_bytes`]) the inputs
/// of one Map state's iterations may take in all (rules 3): they are built
/// together when the Map starts.
pub const MAP_INPUTS_FACTOR: usize = 64;

fn graph_at<'m>(machine: &'m StateMachine, loc: &GraphLoc) -> &'m Graph {
    let mut graph = &machine.graph;
    for (state, branch) in loc {
        graph = match &graph.state(*state).kind {
            StateKind::Parallel(p) => &p.branches[*branch],
            StateKind::Map(m) => &m.processor,
            _ => unreachable!("a frame location only names Parallel and Map states"),
        };
    }
    graph
}

fn add_seconds(at: Timestamp, seconds: f64) -> Timestamp {
    let duration =
        jiff::SignedDuration::try_from_secs_f64(seconds).unwrap_or(jiff::SignedDuration::MAX);
    at.checked_add(duration).unwrap_or(jiff::Timestamp::MAX)
}

/// The evaluation environment of a state: the context object (built only
/// when a path asks for `$$`) and the variables visible from its frame.
struct FrameEnv<'a> {
    exec: &'a Execution,
    frame: FrameId,
    state: &'a State,
    map_item: Option<(usize, &'a Value)>,
    /// The whole context object, built on first use of `$$` as a whole.
    context: OnceCell<Value>,
    /// Its fields, each built on first use of `$$.Field...`.
    state_machine: OnceCell<Option<Value>>,
    state_field: OnceCell<Option<Value>>,
    task: OnceCell<Option<Value>>,
    map: OnceCell<Option<Value>>,
}

impl FrameEnv<'_> {
    const FIELDS: [&'static str; 5] = ["Execution", "StateMachine", "State", "Task", "Map"];

    fn build_field(&self, name: &str) -> Option<Value> {
        let exec = self.exec;
        let active = || {
            exec.frames
                .get(self.frame)
                .and_then(|f| f.as_ref())
                .and_then(|f| f.active.as_ref())
        };
        match name {
            "Execution" => {
                let started = exec.started.as_ref()?;
                let mut execution = Map::new();
                execution.insert(
                    "Id".into(),
                    Value::String(started.info.execution_id.clone()),
                );
                execution.insert("Input".into(), Value::clone(&started.input));
                execution.insert(
                    "Name".into(),
                    Value::String(started.info.execution_name.clone()),
                );
                execution.insert(
                    "RoleArn".into(),
                    Value::String(started.info.role_arn.clone()),
                );
                execution.insert(
                    "StartTime".into(),
                    Value::String(format_timestamp(started.start_time)),
                );
                execution.insert("RedriveCount".into(), Value::from(exec.redrive_count));
                Some(Value::Object(execution))
            }
            "StateMachine" => {
                let started = exec.started.as_ref()?;
                let mut machine = Map::new();
                machine.insert(
                    "Id".into(),
                    Value::String(started.info.state_machine_id.clone()),
                );
                machine.insert(
                    "Name".into(),
                    Value::String(started.info.state_machine_name.clone()),
                );
                Some(Value::Object(machine))
            }
            "State" => {
                let active = active()?;
                let mut state = Map::new();
                state.insert(
                    "EnteredTime".into(),
                    Value::String(format_timestamp(active.entered_at)),
                );
                state.insert("Name".into(), Value::String(self.state.name.to_string()));
                state.insert("RetryCount".into(), Value::from(active.retry_count));
                Some(Value::Object(state))
            }
            "Task" => {
                let token = active()?.task_token.as_ref()?;
                let mut task = Map::new();
                task.insert("Token".into(), Value::String(token.clone()));
                Some(Value::Object(task))
            }
            "Map" => {
                let (index, value) = self.map_item?;
                let mut item = Map::new();
                item.insert("Index".into(), Value::from(index));
                item.insert("Value".into(), value.clone());
                let mut map = Map::new();
                map.insert("Item".into(), Value::Object(item));
                Some(Value::Object(map))
            }
            _ => None,
        }
    }
}

impl Env for FrameEnv<'_> {
    fn context(&self) -> &Value {
        self.context.get_or_init(|| {
            let mut root = Map::new();
            for name in Self::FIELDS {
                if let Some(value) = self.build_field(name) {
                    root.insert(name.into(), value);
                }
            }
            Value::Object(root)
        })
    }

    fn context_field(&self, name: &str) -> Option<&Value> {
        let cell = match name {
            "Execution" => {
                let exec = self.exec;
                exec.started.as_ref()?;
                return exec
                    .execution_context
                    .get_or_init(|| self.build_field(name))
                    .as_ref();
            }
            "StateMachine" => &self.state_machine,
            "State" => &self.state_field,
            "Task" => &self.task,
            "Map" => &self.map,
            _ => return None,
        };
        cell.get_or_init(|| self.build_field(name)).as_ref()
    }

    fn variable(&self, name: &str) -> Option<&Value> {
        let mut current = Some(self.frame);
        while let Some(id) = current {
            let frame = self.exec.frames.get(id)?.as_ref()?;
            if let Some(v) = frame.vars.as_ref().and_then(|vars| vars.get(name)) {
                return Some(v);
            }
            current = frame.parent.map(|(p, _)| p);
        }
        None
    }
}

#[cfg(test)]
mod tests;

/// An upper bound of the bytes a ResultPath write adds besides the value
/// written: each field it names (quoted and escaped, a colon, a comma) and,
/// for a field it has to create, the braces of a new object. A segment of k
/// characters takes at least k + 1 of the path (`.k`), and adds at most
/// 6k + 6 bytes (every character escaped as `\u00XX`).
fn result_path_overhead(path: &str) -> usize {
    path.len() * 7 + 8
}

pub use data::{MAX_DEPTH, format_timestamp};

/// True when `value` nests arrays and objects more than [`MAX_DEPTH`]
/// levels deep: what a runtime refuses before recording it (an execution
/// input, a task result), since its history could not be read back.
pub fn too_deeply_nested(value: &Value) -> bool {
    data::deeper_than(value, usize::MAX, MAX_DEPTH)
}

/// True when a payload nests deeper than [`data::MAX_DEPTH`].
fn too_deep(payload: &Payload) -> bool {
    data::deeper_than(&payload.value, payload.size, data::MAX_DEPTH)
}
