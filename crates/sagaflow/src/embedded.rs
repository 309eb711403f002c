//! The embedded backend: the coordinator's driver and the handlers in this
//! process, executions and histories in memory.
//!
//! Child executions (`arn:aws:states:::states:startExecution`, `.sync`,
//! `.sync:2`) start executions of the state machines deployed here, named
//! and shaped as over NATS (`sagaflow_coordinator::resource::child_execution`,
//! `child_report`); a `.sync` child whose parent stops waiting (timeout, a
//! failed sibling branch) is stopped and ends `ABORTED`.
//!
//! Stop and redrive go through the interpreter as over NATS: a stop is
//! `StopRequested` (the history ends with `ExecutionAborted`), a redrive
//! replays the history and applies `RedriveRequested`.

use std::collections::HashMap;
use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex, PoisonError, Weak};
use std::time::Duration;

use serde_json::Value;
use tokio::sync::{mpsc, watch};
use tokio::task::AbortHandle;

use sagaflow_asl::interp::{ExecutionInfo, Outcome};
use sagaflow_asl::model::StateMachine;
use sagaflow_coordinator::cluster::history_view;
use sagaflow_coordinator::resource::{self, Pattern};
use sagaflow_coordinator::{
    Begin, Control, Coordinator, EmbeddedDispatcher, ExecutionRun, HistoryLog, RuntimeOptions,
    SystemClock,
};
use sagaflow_participant::{Handler, TaskContext, TaskError};
use sagaflow_protocol::api::{StateMachineSummary, StateMachineVersion};
use sagaflow_protocol::{ExecutionRef, state_machine_arn};

use crate::{Error, ExecutionResult, ExecutionSummary, Status};

/// How an execution ended: its run, or why the driver gave up.
type Ended = Result<Arc<ExecutionRun>, String>;

struct Entry {
    name: String,
    state_machine: String,
    /// The version it started with (a redrive runs it again).
    machine: Arc<StateMachine>,
    input: Value,
    /// RFC 3339, milliseconds.
    start_date: String,
    /// The end of its current run (a redrive starts another).
    done: watch::Receiver<Option<Ended>>,
    /// Its history so far, across redrives.
    log: HistoryLog,
    task: AbortHandle,
    /// Requests to the current run (stop).
    controls: mpsc::UnboundedSender<Control>,
    /// Its trace's id when tracing is on (the same across redrives).
    trace_id: Option<String>,
}

/// What `entry` hands out: name, start date and the end to wait for.
type EntryView = (String, String, watch::Receiver<Option<Ended>>);

fn rfc3339(ts: jiff::Timestamp) -> String {
    sagaflow_asl::interp::format_timestamp(ts)
}

/// One version of a deployed state machine.
struct Deployed {
    machine: Arc<StateMachine>,
    definition: String,
    /// RFC 3339, milliseconds.
    created: String,
}

pub(crate) struct Embedded {
    coordinator: Arc<Coordinator>,
    /// Largest execution input or callback output, in bytes of JSON (the
    /// API's limit).
    max_payload_bytes: usize,
    dispatcher: Arc<EmbeddedDispatcher>,
    machines: Mutex<HashMap<String, Vec<Deployed>>>,
    executions: Mutex<HashMap<String, Entry>>,
    /// How long an ended execution is kept (0: for ever), as
    /// `Settings::retention` over NATS.
    retention: std::time::Duration,
    /// When ended executions were last looked through for removal.
    pruned: Mutex<Option<std::time::Instant>>,
    /// Executions forgotten less than the duplicate window after their
    /// start, by ARN, with their start: their name cannot be used again
    /// yet, as over NATS.
    forgotten: Mutex<HashMap<String, jiff::Timestamp>>,
    /// `Settings::duplicate_window`.
    duplicate_window: std::time::Duration,
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

impl Embedded {
    pub(crate) fn new(
        handlers: Vec<(String, Arc<dyn Handler>)>,
        runtime: RuntimeOptions,
        settings: &sagaflow_nats::Settings,
    ) -> Arc<Embedded> {
        let (retention, duplicate_window) = (settings.retention, settings.duplicate_window);
        Arc::new_cyclic(|me: &Weak<Embedded>| {
            // Child executions are served here, unless a handler keyed by the
            // full resource (a stub) takes them first.
            let mut handlers = handlers;
            handlers.push((
                resource::START_EXECUTION.to_string(),
                Arc::new(ChildExecutions {
                    embedded: me.clone(),
                }),
            ));
            let dispatcher = Arc::new(
                EmbeddedDispatcher::new(handlers)
                    .with_callbacks()
                    // An application runs for long: no record of every call.
                    .without_call_records()
                    // Results over the limit fail as a Worker reports them.
                    .with_max_result_bytes(runtime.max_payload_bytes),
            );
            let max_payload_bytes = runtime.max_payload_bytes;
            let coordinator = Arc::new(Coordinator::new(
                Arc::new(SystemClock),
                Arc::clone(&dispatcher) as Arc<dyn sagaflow_coordinator::Dispatcher>,
                runtime,
            ));
            Embedded {
                coordinator,
                dispatcher,
                max_payload_bytes,
                machines: Mutex::default(),
                executions: Mutex::default(),
                retention,
                pruned: Mutex::default(),
                forgotten: Mutex::default(),
                duplicate_window,
            }
        })
    }

    /// Forgets the executions that ended more than the retention ago (at
    /// most once a second, when an execution starts), so that an
    /// application running for long does not keep every execution's input
    /// and history. Their names can be used again once the duplicate window
    /// has passed since they started, as over NATS.
    fn prune(&self, executions: &mut HashMap<String, Entry>) {
        if self.retention.is_zero() {
            return;
        }
        {
            let mut pruned = lock(&self.pruned);
            let now = std::time::Instant::now();
            if pruned.is_some_and(|at| now.duration_since(at) < std::time::Duration::from_secs(1)) {
                return;
            }
            *pruned = Some(now);
        }
        let Ok(retention) = jiff::SignedDuration::try_from(self.retention) else {
            return;
        };
        let Some(cutoff) = jiff::Timestamp::now().checked_sub(retention).ok() else {
            return;
        };
        let now = jiff::Timestamp::now();
        let window = jiff::SignedDuration::try_from(self.duplicate_window)
            .unwrap_or(jiff::SignedDuration::MAX);
        let mut forgotten = lock(&self.forgotten);
        forgotten.retain(|_, started| now.duration_since(*started) < window);
        executions.retain(|arn, e| {
            let ended_at = match &*e.done.borrow() {
                Some(Ok(run)) => run.history.last().map(|h| h.at),
                // Broken down or abandoned: no end recorded; counted from
                // its start.
                Some(Err(_)) => e.start_date.parse::<jiff::Timestamp>().ok(),
                None => return true,
            };
            if ended_at.is_some_and(|at| at >= cutoff) {
                return true;
            }
            if let Some(started) = e
                .start_date
                .parse::<jiff::Timestamp>()
                .ok()
                .filter(|s| now.duration_since(*s) < window)
            {
                forgotten.insert(arn.clone(), started);
            }
            false
        });
    }

    pub(crate) fn deploy(&self, name: &str, definition: &str) -> Result<u64, Error> {
        sagaflow_protocol::check_name("state machine name", name)?;
        let machine = sagaflow_asl::parse::parse_definition(definition).map_err(|e| {
            Error::InvalidDefinition {
                name: name.to_string(),
                message: e.to_string(),
            }
        })?;
        let mut machines = lock(&self.machines);
        let versions = machines.entry(name.to_string()).or_default();
        // The same definition again: the latest version, as over NATS.
        if versions.last().is_some_and(|d| d.definition == definition) {
            return Ok(versions.len() as u64);
        }
        versions.push(Deployed {
            machine: Arc::new(machine),
            definition: definition.to_string(),
            created: rfc3339(jiff::Timestamp::now()),
        });
        Ok(versions.len() as u64)
    }

    /// `DescribeStateMachine`: a version (the latest when `None`).
    pub(crate) fn describe_machine(
        &self,
        name: &str,
        version: Option<u64>,
    ) -> Result<StateMachineVersion, Error> {
        let machines = lock(&self.machines);
        let versions = machines
            .get(name)
            .ok_or_else(|| Error::StateMachineDoesNotExist(name.to_string()))?;
        let number = version.unwrap_or(versions.len() as u64);
        let deployed = number
            .checked_sub(1)
            .and_then(|i| versions.get(usize::try_from(i).ok()?))
            .ok_or_else(|| Error::StateMachineDoesNotExist(format!("{name} version {number}")))?;
        Ok(StateMachineVersion {
            name: name.to_string(),
            arn: state_machine_arn(name),
            version: number,
            definition: deployed.definition.clone(),
            created: deployed.created.clone(),
        })
    }

    /// `ListStateMachines`, by name.
    pub(crate) fn list_machines(&self) -> Vec<StateMachineSummary> {
        let mut list: Vec<StateMachineSummary> = lock(&self.machines)
            .iter()
            .map(|(name, versions)| StateMachineSummary {
                name: name.clone(),
                arn: state_machine_arn(name),
                latest_version: versions.len() as u64,
            })
            .collect();
        list.sort_by(|a, b| a.name.cmp(&b.name));
        list
    }

    pub(crate) fn start(
        &self,
        state_machine: &str,
        input: Value,
        name: Option<&str>,
    ) -> Result<String, Error> {
        self.start_new(state_machine, input, name)
            .map(|(arn, _)| arn)
    }

    /// [`Embedded::start`], also telling whether this call started it
    /// (`false`: an execution of that name and input existed).
    fn start_new(
        &self,
        state_machine: &str,
        input: Value,
        name: Option<&str>,
    ) -> Result<(String, bool), Error> {
        // In the API's order: names, then the input, then the machine.
        sagaflow_protocol::check_name("state machine name", state_machine)?;
        let name = name
            .map(str::to_string)
            .unwrap_or_else(sagaflow_coordinator::cluster::api::fresh_name);
        let exec = ExecutionRef::new(state_machine, &name)?;
        self.check_size("input", &input)?;
        let machine = lock(&self.machines)
            .get(state_machine)
            .and_then(|v| v.last().map(|d| Arc::clone(&d.machine)))
            .ok_or_else(|| Error::StateMachineDoesNotExist(state_machine.to_string()))?;
        let arn = exec.arn();
        let mut executions = lock(&self.executions);
        self.prune(&mut executions);
        if lock(&self.forgotten).contains_key(&arn) {
            let window = self.duplicate_window.as_secs();
            return Err(Error::NameNotYetReusable {
                message: format!(
                    "execution {arn} was started less than {window} s ago and deleted since \
                     (its retention ran out); its name can be used again once {window} s have \
                     passed since that start"
                ),
                execution: arn,
            });
        }
        if let Some(existing) = executions.get(&arn) {
            return if existing.input == input {
                Ok((arn, false))
            } else {
                Err(Error::ExecutionAlreadyExists(arn))
            };
        }
        let info = ExecutionInfo {
            execution_id: arn.clone(),
            execution_name: name.clone(),
            state_machine_id: state_machine_arn(state_machine),
            state_machine_name: state_machine.to_string(),
            role_arn: String::new(),
            seed: sagaflow_coordinator::cluster::api::random_u64(),
            rules: sagaflow_asl::interp::RULES,
        };
        let log = HistoryLog::default();
        let begin = Begin::Start {
            info,
            input: input.clone(),
        };
        let prepared = self
            .coordinator
            .prepare(Arc::clone(&machine), begin, &log)
            .map_err(|e| Error::Runtime {
                execution: arn.clone(),
                message: e.to_string(),
            })?;
        let trace_id = prepared.trace_id();
        let (done, task, controls) = self.spawn_run(prepared, &log);
        executions.insert(
            arn.clone(),
            Entry {
                name,
                state_machine: state_machine.to_string(),
                machine,
                input,
                start_date: rfc3339(jiff::Timestamp::now()),
                done,
                log,
                task,
                controls,
                trace_id,
            },
        );
        Ok((arn, true))
    }

    /// Refuses a payload over the limit or nested too deep, as the API
    /// does (the depth first: measuring the size recurses).
    fn check_size(&self, what: &str, value: &Value) -> Result<(), Error> {
        crate::check_depth(what, value)?;
        let size = serde_json::to_vec(value).map_or(usize::MAX, |v| v.len());
        if size > self.max_payload_bytes {
            return Err(Error::PayloadTooLarge(format!(
                "the {what} is {size} bytes; at most {} are allowed",
                self.max_payload_bytes
            )));
        }
        Ok(())
    }

    /// Drives a prepared run in a task of its own.
    fn spawn_run(
        &self,
        prepared: sagaflow_coordinator::Prepared,
        log: &HistoryLog,
    ) -> (
        watch::Receiver<Option<Ended>>,
        AbortHandle,
        mpsc::UnboundedSender<Control>,
    ) {
        let (tx, rx) = watch::channel(None);
        let (controls, control_rx) = mpsc::unbounded_channel();
        let coordinator = Arc::clone(&self.coordinator);
        let log = log.clone();
        // Aborted (shutdown, even before its first poll) or unwound by a
        // panic, the run still ends: as broken down, not RUNNING for ever.
        let guard = EndOnDrop(tx);
        let task = tokio::spawn(async move {
            let guard = guard;
            let ended = coordinator
                .drive(prepared, log, control_rx)
                .await
                .map(Arc::new)
                .map_err(|e| e.to_string());
            guard.0.send_replace(Some(ended));
        });
        (rx, task.abort_handle(), controls)
    }

    fn entry(&self, arn: &str) -> Result<EntryView, Error> {
        lock(&self.executions)
            .get(arn)
            .map(|e| (e.name.clone(), e.start_date.clone(), e.done.clone()))
            .ok_or_else(|| Error::ExecutionDoesNotExist(arn.to_string()))
    }

    /// `StopExecution`: a running execution cancels its tasks, runs no
    /// further state and ends `ABORTED` with `error` and `cause`; an ended
    /// one is left as it is.
    pub(crate) fn stop(
        &self,
        arn: &str,
        error: Option<&str>,
        cause: Option<&str>,
    ) -> Result<(), Error> {
        sagaflow_protocol::api::check_error_cause(error, cause).map_err(Error::InvalidRequest)?;
        let executions = lock(&self.executions);
        let e = executions
            .get(arn)
            .ok_or_else(|| Error::ExecutionDoesNotExist(arn.to_string()))?;
        if e.done.borrow().is_none() {
            // The run is gone only when it ended meanwhile: nothing to stop.
            let _ = e.controls.send(Control::Stop {
                error: error.map(str::to_string),
                cause: cause.map(str::to_string),
            });
        }
        Ok(())
    }

    /// `RedriveExecution`: a FAILED, TIMED_OUT or ABORTED execution runs
    /// again from the top-level state that was running when it ended.
    pub(crate) fn redrive(&self, arn: &str) -> Result<(), Error> {
        let mut executions = lock(&self.executions);
        let e = executions
            .get_mut(arn)
            .ok_or_else(|| Error::ExecutionDoesNotExist(arn.to_string()))?;
        let ended = e.done.borrow().clone();
        let run = match ended {
            Some(Ok(run)) => run,
            Some(Err(message)) => {
                return Err(Error::Runtime {
                    execution: arn.to_string(),
                    message,
                });
            }
            None => {
                return Err(Error::ExecutionNotRedrivable {
                    execution: arn.to_string(),
                    reason: "it is RUNNING".to_string(),
                });
            }
        };
        let begin = Begin::Redrive {
            execution_span: run.execution_span.clone(),
        };
        let prepared = self
            .coordinator
            .prepare(Arc::clone(&e.machine), begin, &e.log)
            .map_err(|err| match err {
                sagaflow_coordinator::DriveError::NotRedrivable(reason) => {
                    Error::ExecutionNotRedrivable {
                        execution: arn.to_string(),
                        reason: reason.to_string(),
                    }
                }
                other => Error::Runtime {
                    execution: arn.to_string(),
                    message: other.to_string(),
                },
            })?;
        let (done, task, controls) = self.spawn_run(prepared, &e.log);
        e.done = done;
        e.task = task;
        e.controls = controls;
        Ok(())
    }

    /// `ListExecutions`: newest first, optionally of one state machine and
    /// one status.
    pub(crate) fn list(
        &self,
        state_machine: Option<&str>,
        status: Option<Status>,
    ) -> Vec<ExecutionSummary> {
        let executions = lock(&self.executions);
        let mut list: Vec<ExecutionSummary> = executions
            .iter()
            .filter(|(_, e)| state_machine.is_none_or(|m| m == e.state_machine))
            .map(|(arn, e)| {
                let ended = e.done.borrow().clone();
                let (status, stop_date) = match &ended {
                    None => (Status::Running, None),
                    Some(Ok(run)) => (
                        status_of(&run.outcome),
                        run.history.last().map(|h| rfc3339(h.at)),
                    ),
                    // The run broke down (a runtime bug) or was abandoned
                    // at shutdown: it did not end by itself.
                    Some(Err(_)) => (Status::Aborted, None),
                };
                ExecutionSummary {
                    arn: arn.clone(),
                    name: e.name.clone(),
                    state_machine: e.state_machine.clone(),
                    status,
                    start_date: e.start_date.clone(),
                    stop_date,
                }
            })
            .filter(|s| status.is_none_or(|wanted| wanted == s.status))
            .collect();
        drop(executions);
        list.sort_by(|a, b| b.start_date.cmp(&a.start_date).then(a.arn.cmp(&b.arn)));
        list
    }

    pub(crate) fn describe(&self, arn: &str) -> Result<ExecutionResult, Error> {
        let (name, _, done) = self.entry(arn)?;
        let ended = done.borrow().clone();
        let mut result = result_of(arn, name, ended)?;
        if result.trace_id.is_none() {
            // Known from the start, also while it runs.
            result.trace_id = lock(&self.executions)
                .get(arn)
                .and_then(|e| e.trace_id.clone());
        }
        Ok(result)
    }

    pub(crate) async fn wait(
        &self,
        arn: &str,
        timeout: Duration,
    ) -> Result<ExecutionResult, Error> {
        let (name, _, done) = self.entry(arn)?;
        let ended = match tokio::time::timeout(timeout, ended(done)).await {
            Ok(ended) => ended,
            Err(_) => {
                return Err(Error::Timeout {
                    execution: arn.to_string(),
                    waited: timeout,
                });
            }
        };
        result_of(arn, name, Some(ended))
    }

    /// The history so far (Step Functions-style events), also while it runs.
    pub(crate) fn history(&self, arn: &str) -> Result<Vec<Value>, Error> {
        let (log, done) = lock(&self.executions)
            .get(arn)
            .map(|e| (e.log.clone(), e.done.clone()))
            .ok_or_else(|| Error::ExecutionDoesNotExist(arn.to_string()))?;
        if let Some(Err(message)) = done.borrow().clone() {
            return Err(Error::Runtime {
                execution: arn.to_string(),
                message,
            });
        }
        Ok(history_view::render(&log.entries()))
    }

    pub(crate) fn complete(
        &self,
        token: &str,
        result: Result<Value, TaskError>,
    ) -> Result<(), Error> {
        match &result {
            Ok(output) => self.check_size("output", output)?,
            Err(e) => sagaflow_protocol::api::check_error_cause(Some(&e.error), Some(&e.cause))
                .map_err(Error::InvalidRequest)?,
        }
        self.dispatcher
            .complete_task(token, result)
            .map_err(|_| Error::TaskDoesNotExist)
    }

    /// `SendTaskHeartbeat`.
    pub(crate) fn heartbeat(&self, token: &str) -> Result<(), Error> {
        self.dispatcher
            .heartbeat_task(token)
            .map_err(|_| Error::TaskDoesNotExist)
    }

    pub(crate) fn shutdown(&self) {
        for entry in lock(&self.executions).values() {
            entry.task.abort();
        }
        // Their handlers and waiting callback tasks go too.
        self.dispatcher.cancel_all();
    }
}

/// Ends a run that did not end by itself (its task aborted at shutdown, or
/// unwound by a panic) when its task lets go of it.
struct EndOnDrop(watch::Sender<Option<Ended>>);

impl Drop for EndOnDrop {
    fn drop(&mut self) {
        self.0.send_if_modified(|ended| {
            if ended.is_some() {
                return false;
            }
            *ended = Some(Err(if std::thread::panicking() {
                "the execution's run broke down (a Sagaflow defect)".to_string()
            } else {
                "the execution was abandoned (shut down)".to_string()
            }));
            true
        });
    }
}

/// Waits for a run's end; a run abandoned (aborted: stopped or shut down)
/// ends with an error.
async fn ended(mut done: watch::Receiver<Option<Ended>>) -> Ended {
    match done.wait_for(Option::is_some).await {
        Ok(ended) => ended
            .clone()
            .unwrap_or_else(|| Err("no outcome".to_string())),
        Err(_) => Err("the execution was abandoned (shut down)".to_string()),
    }
}

fn status_of(outcome: &Outcome) -> Status {
    match outcome {
        Outcome::Succeeded { .. } => Status::Succeeded,
        Outcome::Failed { .. } => Status::Failed,
        Outcome::TimedOut { .. } => Status::TimedOut,
        Outcome::Aborted { .. } => Status::Aborted,
    }
}

fn result_of(arn: &str, name: String, ended: Option<Ended>) -> Result<ExecutionResult, Error> {
    let mut result = ExecutionResult {
        arn: arn.to_string(),
        name,
        status: Status::Running,
        output: None,
        error: None,
        cause: None,
        trace_id: None,
    };
    let run = match ended {
        None => return Ok(result),
        Some(Err(message)) => {
            return Err(Error::Runtime {
                execution: arn.to_string(),
                message,
            });
        }
        Some(Ok(run)) => run,
    };
    result.trace_id = run.trace_id.clone();
    result.status = status_of(&run.outcome);
    match &run.outcome {
        Outcome::Succeeded { output } => result.output = Some(Value::clone(output)),
        // A Fail state without Error or Cause: none, as the coordinators'
        // index has it.
        Outcome::Failed { error, cause } => {
            result.error = Some(error.clone()).filter(|e| !e.is_empty());
            result.cause = Some(cause.clone()).filter(|c| !c.is_empty());
        }
        Outcome::TimedOut { error, cause } => {
            result.error = Some(error.clone());
            result.cause = Some(cause.clone());
        }
        Outcome::Aborted { error, cause } => {
            result.error = error.clone();
            result.cause = cause.clone();
        }
    }
    Ok(result)
}

/// Serves `arn:aws:states:::states:startExecution` (and `.sync`, `.sync:2`)
/// with the state machines deployed in this process.
struct ChildExecutions {
    embedded: Weak<Embedded>,
}

/// Stops a `.sync` child if its parent stops waiting (the handler's future
/// is dropped: task timeout, failed sibling, shutdown).
struct StopOnDrop {
    embedded: Weak<Embedded>,
    arn: Option<String>,
}

impl Drop for StopOnDrop {
    fn drop(&mut self) {
        if let (Some(arn), Some(embedded)) = (self.arn.take(), self.embedded.upgrade()) {
            let _ = embedded.stop(
                &arn,
                Some("States.Aborted"),
                Some("the parent execution no longer waits for this execution"),
            );
        }
    }
}

const TASK_FAILED: &str = "States.TaskFailed";

impl Handler for ChildExecutions {
    fn call(
        &self,
        input: Value,
        ctx: TaskContext,
    ) -> Pin<Box<dyn Future<Output = Result<Value, TaskError>> + Send + '_>> {
        Box::pin(async move {
            let failed = |cause: String| TaskError::new(TASK_FAILED, cause);
            let embedded = self
                .embedded
                .upgrade()
                .ok_or_else(|| failed("the runtime is shutting down".to_string()))?;
            let parent = ExecutionRef::from_arn(&ctx.execution_id)
                .map_err(|e| failed(format!("parent execution: {e}")))?;
            let refused = |e: resource::ChildError| TaskError::new(e.error, e.cause);
            let child =
                resource::child_execution(&parent, &ctx.task_id, &input).map_err(refused)?;
            let child_input = resource::child_input(&input).map_err(refused)?;
            resource::check_new_child_input(&child_input).map_err(refused)?;
            let (_, pattern) = resource::strip_pattern(&ctx.resource);
            let taken = |arn: &str| {
                TaskError::new(
                    "StepFunctions.ExecutionAlreadyExistsException",
                    format!("execution {arn} already exists"),
                )
            };
            let arn = match embedded.start_new(
                child.state_machine(),
                child_input.clone(),
                Some(child.name()),
            ) {
                Ok((arn, true)) => arn,
                // The same name and input: a request-response start is
                // idempotent, as AWS's StartExecution; a `.sync` task does
                // not wait on an execution it did not start (as over NATS).
                Ok((arn, false)) if pattern != Pattern::Sync => arn,
                Ok((arn, false)) => return Err(taken(&arn)),
                Err(Error::ExecutionAlreadyExists(arn)) => return Err(taken(&arn)),
                Err(e) => return Err(failed(e.to_string())),
            };
            let (name, start_date, done) =
                embedded.entry(&arn).map_err(|e| failed(e.to_string()))?;
            if pattern != Pattern::Sync {
                return Ok(serde_json::json!({"ExecutionArn": arn, "StartDate": start_date}));
            }
            let v2 = ctx.resource.ends_with(".sync:2");
            // Wait without keeping the runtime alive.
            drop(embedded);
            let mut guard = StopOnDrop {
                embedded: self.embedded.clone(),
                arn: Some(arn.clone()),
            };
            let run_end = ended(done).await;
            guard.arn = None;
            // When the child ended, as its history says (and its listing).
            let stop_date = match &run_end {
                Ok(run) => run.history.last().map(|h| rfc3339(h.at)),
                Err(_) => None,
            }
            .unwrap_or_else(|| rfc3339(jiff::Timestamp::now()));
            let result =
                result_of(&arn, name.clone(), Some(run_end)).map_err(|e| failed(e.to_string()))?;
            let report = resource::child_report(
                &arn,
                &child_input,
                &name,
                &start_date,
                child.state_machine(),
                result.status.as_str(),
                Some(&stop_date),
                match &result.output {
                    Some(output) if result.status == Status::Succeeded => Ok(output),
                    _ => Err((result.error.as_deref(), result.cause.as_deref())),
                },
                v2,
            );
            if result.status == Status::Succeeded {
                Ok(report)
            } else {
                Err(failed(resource::child_failure_cause(&report)))
            }
        })
    }
}
