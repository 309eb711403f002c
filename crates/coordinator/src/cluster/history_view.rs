//! Renders a stored history (events applied, commands produced) as Step
//! Functions-style history events, the shape `GetExecutionHistory` returns
//! on AWS:
//!
//! ```json
//! {"id": 3, "previousEventId": 2, "timestamp": "2024-01-01T00:00:00Z",
//!  "type": "TaskScheduled", "taskScheduledEventDetails": {...}}
//! ```
//!
//! As on AWS, inputs, outputs and task parameters are JSON *text* (strings),
//! not nested JSON. `previousEventId` is simply the id before (AWS links some
//! events to their cause instead; tools only rely on the ids increasing).
//!
//! Event types are AWS's (`ExecutionStarted`, `TaskStateEntered`,
//! `TaskScheduled`, `TaskStarted`, `TaskSucceeded`, `TaskFailed`, `TaskTimedOut`,
//! `MapIterationStarted`, `ParallelStateStarted`, `ExecutionSucceeded`, ...),
//! `ExecutionRedriven` (`executionRedrivenEventDetails`: `redriveCount` as on
//! AWS, and `state`, where it restarts), plus three of ours for steps AWS
//! does not show as events:
//!
//! - `TaskRetryScheduled` (`taskRetryScheduledEventDetails`: `name`, `error`,
//!   `attempt`, `delaySeconds`): a Retry rule will run the state again;
//! - `CatchTriggered` (`catchTriggeredEventDetails`: `name`, `error`,
//!   `cause`, `next`): a Catch rule caught an error and execution goes on at
//!   `next` (typically a compensation);
//! - `ParallelBranchAborted` (`parallelBranchAbortedEventDetails`: `name`,
//!   `index`): a Parallel branch was abandoned because another one failed.
//!
//! `TaskStarted` follows `TaskScheduled` with the same timestamp: it marks
//! the task's hand-over to the transport (the tasks stream, or an in-process
//! handler), not a report from the participant, which would cost a write per
//! task.
//!
//! Events that the interpreter ignored (a late answer for a task that timed
//! out or was cancelled) are not shown.

use std::collections::HashMap;

use serde_json::{Map, Value, json};

use sagaflow_asl::interp::{Command, Event, Outcome, Record, StateType, TimerPurpose};

use crate::driver::{HistoryEntry, HistoryItem};

/// The error names that make a task failure a `TaskTimedOut` event.
const TIMEOUT_ERRORS: [&str; 2] = ["States.Timeout", "States.HeartbeatTimeout"];

/// AWS's name of a state type in event types (`Task`, `Choice`, ...).
pub fn state_type_name(state_type: StateType) -> &'static str {
    match state_type {
        StateType::Pass => "Pass",
        StateType::Task => "Task",
        StateType::Choice => "Choice",
        StateType::Wait => "Wait",
        StateType::Succeed => "Succeed",
        StateType::Fail => "Fail",
        StateType::Parallel => "Parallel",
        StateType::Map => "Map",
    }
}

/// A scheduled task, remembered until its answer.
struct Scheduled {
    resource: String,
}

/// Builds the event list.
struct Renderer {
    events: Vec<Value>,
    /// Events rendered so far (kept or not).
    count: usize,
    /// The events kept: those numbered (from 0) in this range.
    keep: std::ops::Range<usize>,
    /// Tasks scheduled and not yet answered, by task id.
    pending: HashMap<String, Scheduled>,
    /// Timers started for a task's `TimeoutSeconds`, by timer id.
    task_timers: HashMap<String, String>,
    /// Name and type of every state entered, by path.
    states: HashMap<String, (String, StateType)>,
    /// Paths of the Parallel/Map states entered and not yet exited or
    /// failed, in the order they were entered.
    open: Vec<String>,
}

fn text(value: &Value) -> String {
    value.to_string()
}

/// `(resourceType, resource)` as AWS splits them for service integrations
/// (`arn:aws:states:::lambda:invoke` → `lambda`, `invoke`); other resources
/// are kept whole with the type `sagaflow`, Lambda ARNs get `lambda`.
pub fn split_resource(resource: &str) -> (String, String) {
    if let Some(rest) = crate::resource::integration(resource)
        && let Some((service, action)) = rest.split_once(':')
    {
        return (service.to_string(), action.to_string());
    }
    if resource.starts_with("arn:aws:lambda:") {
        return ("lambda".to_string(), resource.to_string());
    }
    ("sagaflow".to_string(), resource.to_string())
}

impl Renderer {
    fn new(keep: std::ops::Range<usize>) -> Renderer {
        Renderer {
            events: Vec::new(),
            count: 0,
            keep,
            pending: HashMap::new(),
            task_timers: HashMap::new(),
            states: HashMap::new(),
            open: Vec::new(),
        }
    }

    fn entry(&mut self, entry: &HistoryEntry) {
        match &entry.item {
            HistoryItem::Event(e) => self.event(&entry.at, e),
            HistoryItem::Command(c) => self.command(&entry.at, c),
        }
    }

    fn push(&mut self, at: &jiff::Timestamp, kind: &str, details: Option<(&str, Value)>) {
        let index = self.count;
        self.count += 1;
        if !self.keep.contains(&index) {
            return;
        }
        let id = index as u64 + 1;
        let mut event = Map::new();
        event.insert("id".into(), json!(id));
        event.insert("previousEventId".into(), json!(id - 1));
        event.insert("timestamp".into(), json!(at.to_string()));
        event.insert("type".into(), json!(kind));
        if let Some((key, value)) = details {
            event.insert(key.into(), value);
        }
        self.events.push(Value::Object(event));
    }

    fn name_of(&self, path: &str) -> String {
        match self.states.get(path) {
            Some((name, _)) => name.clone(),
            None => path.rsplit('/').next().unwrap_or(path).to_string(),
        }
    }

    fn type_of(&self, path: &str) -> Option<StateType> {
        self.states.get(path).map(|(_, t)| *t)
    }

    fn task_failed(&mut self, at: &jiff::Timestamp, task_id: &str, error: &str, cause: &str) {
        let Some(task) = self.pending.remove(task_id) else {
            return;
        };
        let (resource_type, resource) = split_resource(&task.resource);
        let details = json!({
            "resourceType": resource_type,
            "resource": resource,
            "error": error,
            "cause": cause,
        });
        if TIMEOUT_ERRORS.contains(&error) {
            self.push(
                at,
                "TaskTimedOut",
                Some(("taskTimedOutEventDetails", details)),
            );
        } else {
            self.push(at, "TaskFailed", Some(("taskFailedEventDetails", details)));
        }
    }

    /// `ParallelStateFailed` / `MapStateFailed` when the failed state is a
    /// Parallel or Map state (once per state visit), after those of the
    /// Parallel and Map states still open inside it, innermost first (the
    /// failure came through them).
    fn fanout_failed(&mut self, at: &jiff::Timestamp, path: &str, error: &str, cause: &str) {
        self.fail_open_within(at, path, None, error, cause);
        self.fail_open(at, path, error, cause);
    }

    /// The failure of the Parallel or Map states still open inside the
    /// fan-out state at `path` (only in its iteration or branch `index`,
    /// when given), innermost first.
    fn fail_open_within(
        &mut self,
        at: &jiff::Timestamp,
        path: &str,
        index: Option<usize>,
        error: &str,
        cause: &str,
    ) {
        let inside: Vec<String> = self
            .open
            .iter()
            .rev()
            .filter(|open| is_within(open, path, index))
            .cloned()
            .collect();
        for open in inside {
            self.fail_open(at, &open, error, cause);
        }
    }

    /// `ParallelStateFailed` / `MapStateFailed` for an open fan-out state.
    fn fail_open(&mut self, at: &jiff::Timestamp, path: &str, error: &str, cause: &str) {
        let kind = match self.type_of(path) {
            Some(StateType::Parallel) => "ParallelStateFailed",
            Some(StateType::Map) => "MapStateFailed",
            _ => return,
        };
        let Some(position) = self.open.iter().position(|open| open == path) else {
            return;
        };
        self.open.remove(position);
        self.push(
            at,
            kind,
            Some((
                "stateFailedEventDetails",
                json!({"name": self.name_of(path), "error": error, "cause": cause}),
            )),
        );
    }

    fn event(&mut self, at: &jiff::Timestamp, event: &Event) {
        match event {
            Event::ExecutionStarted { info, input } => self.push(
                at,
                "ExecutionStarted",
                Some((
                    "executionStartedEventDetails",
                    json!({
                        "input": text(input),
                        "inputDetails": {"truncated": false},
                        "roleArn": info.role_arn,
                    }),
                )),
            ),
            Event::TaskSucceeded { task_id, output } => {
                let Some(task) = self.pending.remove(task_id) else {
                    return;
                };
                let (resource_type, resource) = split_resource(&task.resource);
                self.push(
                    at,
                    "TaskSucceeded",
                    Some((
                        "taskSucceededEventDetails",
                        json!({
                            "resourceType": resource_type,
                            "resource": resource,
                            "output": text(output),
                            "outputDetails": {"truncated": false},
                        }),
                    )),
                );
            }
            Event::TaskFailed {
                task_id,
                error,
                cause,
            } => self.task_failed(at, task_id, error, cause),
            Event::TimerFired { timer_id } => {
                // A task's TimeoutSeconds elapsed: the interpreter fails it
                // with States.Timeout (AWS shows TaskTimedOut).
                if let Some(task_id) = self.task_timers.remove(timer_id) {
                    self.task_failed(
                        at,
                        &task_id,
                        "States.Timeout",
                        "The task did not complete within its TimeoutSeconds.",
                    );
                }
            }
            // Shown by the records the interpreter produces for them.
            Event::StopRequested { .. } | Event::RedriveRequested => {}
        }
    }

    fn record(&mut self, at: &jiff::Timestamp, record: &Record) {
        match record {
            Record::StateEntered {
                path,
                name,
                state_type,
                input,
            } => {
                self.states
                    .insert(path.to_string(), (name.to_string(), *state_type));
                self.open.retain(|open| **open != **path);
                if matches!(state_type, StateType::Parallel | StateType::Map) {
                    self.open.push(path.to_string());
                }
                let type_name = state_type_name(*state_type);
                self.push(
                    at,
                    &format!("{type_name}StateEntered"),
                    Some((
                        "stateEnteredEventDetails",
                        json!({
                            "name": name,
                            "input": text(input),
                            "inputDetails": {"truncated": false},
                        }),
                    )),
                );
                match state_type {
                    StateType::Parallel => self.push(at, "ParallelStateStarted", None),
                    StateType::Map => self.push(at, "MapStateStarted", None),
                    _ => {}
                }
            }
            Record::StateExited {
                path,
                name,
                state_type,
                output,
            } => {
                self.open.retain(|open| **open != **path);
                match state_type {
                    StateType::Parallel => self.push(at, "ParallelStateSucceeded", None),
                    StateType::Map => self.push(at, "MapStateSucceeded", None),
                    _ => {}
                }
                let type_name = state_type_name(*state_type);
                self.push(
                    at,
                    &format!("{type_name}StateExited"),
                    Some((
                        "stateExitedEventDetails",
                        json!({
                            "name": name,
                            "output": text(output),
                            "outputDetails": {"truncated": false},
                        }),
                    )),
                );
            }
            Record::MapIterationStarted { path, index } => {
                let details = json!({"name": self.name_of(path), "index": index});
                self.push(
                    at,
                    "MapIterationStarted",
                    Some(("mapIterationStartedEventDetails", details)),
                );
            }
            Record::MapIterationSucceeded { path, index } => {
                let details = json!({"name": self.name_of(path), "index": index});
                self.push(
                    at,
                    "MapIterationSucceeded",
                    Some(("mapIterationSucceededEventDetails", details)),
                );
            }
            Record::MapIterationFailed { path, index, error } => {
                // What failed inside the iteration without being caught.
                self.fail_open_within(at, path, Some(*index), error, "");
                let details = json!({"name": self.name_of(path), "index": index, "error": error});
                self.push(
                    at,
                    "MapIterationFailed",
                    Some(("mapIterationFailedEventDetails", details)),
                );
            }
            Record::BranchAborted { path, index } => {
                // What ran inside the branch is abandoned with it.
                self.open
                    .retain(|open| !is_within(open, path, Some(*index)));
                let name = self.name_of(path);
                if self.type_of(path) == Some(StateType::Parallel) {
                    self.push(
                        at,
                        "ParallelBranchAborted",
                        Some((
                            "parallelBranchAbortedEventDetails",
                            json!({"name": name, "index": index}),
                        )),
                    );
                } else {
                    self.push(
                        at,
                        "MapIterationAborted",
                        Some((
                            "mapIterationAbortedEventDetails",
                            json!({"name": name, "index": index}),
                        )),
                    );
                }
            }
            Record::RetryScheduled {
                path,
                error,
                attempt,
                delay_seconds,
            } => {
                self.fanout_failed(at, path, error, "");
                let details = json!({
                    "name": self.name_of(path),
                    "error": error,
                    "attempt": attempt,
                    "delaySeconds": delay_seconds,
                });
                self.push(
                    at,
                    "TaskRetryScheduled",
                    Some(("taskRetryScheduledEventDetails", details)),
                );
            }
            Record::Redriven { count, state } => {
                // AWS: ExecutionRedriven with the redrive count.
                self.push(
                    at,
                    "ExecutionRedriven",
                    Some((
                        "executionRedrivenEventDetails",
                        json!({"redriveCount": count, "state": state}),
                    )),
                );
            }
            Record::Caught {
                path,
                error,
                cause,
                next,
            } => {
                self.fanout_failed(at, path, error, cause);
                let details = json!({
                    "name": self.name_of(path),
                    "error": error,
                    "cause": cause,
                    "next": next,
                });
                self.push(
                    at,
                    "CatchTriggered",
                    Some(("catchTriggeredEventDetails", details)),
                );
            }
        }
    }

    fn command(&mut self, at: &jiff::Timestamp, command: &Command) {
        match command {
            Command::ScheduleTask(request) => {
                let (resource_type, resource) = split_resource(&request.resource);
                let mut details = Map::new();
                details.insert("resourceType".into(), json!(resource_type));
                details.insert("resource".into(), json!(resource));
                details.insert("region".into(), json!("local"));
                details.insert("parameters".into(), json!(text(&request.input)));
                if let Some(t) = request.timeout_seconds {
                    details.insert("timeoutInSeconds".into(), json!(t));
                }
                if let Some(h) = request.heartbeat_seconds {
                    details.insert("heartbeatInSeconds".into(), json!(h));
                }
                details.insert("taskId".into(), json!(&*request.task_id));
                self.pending.insert(
                    request.task_id.to_string(),
                    Scheduled {
                        resource: request.resource.to_string(),
                    },
                );
                self.push(
                    at,
                    "TaskScheduled",
                    Some(("taskScheduledEventDetails", Value::Object(details))),
                );
                // The task is handed to the transport as soon as its
                // scheduling is recorded; participants do not report their
                // start (it would cost a write per task).
                self.push(
                    at,
                    "TaskStarted",
                    Some((
                        "taskStartedEventDetails",
                        json!({"resourceType": resource_type, "resource": resource}),
                    )),
                );
            }
            Command::CancelTask { task_id } => {
                // A timed-out task is cancelled right after its timer fired
                // (already shown); an abandoned one just stops mattering.
                self.pending.remove(task_id);
            }
            Command::StartTimer {
                timer_id,
                purpose: TimerPurpose::TaskTimeout { task_id },
                ..
            } => {
                self.task_timers.insert(timer_id.clone(), task_id.clone());
            }
            Command::StartTimer { .. } => {}
            Command::CancelTimer { timer_id } => {
                self.task_timers.remove(timer_id);
            }
            Command::Record(record) => self.record(at, record),
            Command::Complete(outcome) => self.complete(at, outcome),
        }
    }

    fn complete(&mut self, at: &jiff::Timestamp, outcome: &Outcome) {
        let (kind, key, details) = match outcome {
            Outcome::Succeeded { output } => (
                "ExecutionSucceeded",
                "executionSucceededEventDetails",
                json!({"output": text(output), "outputDetails": {"truncated": false}}),
            ),
            Outcome::Failed { error, cause } => {
                // A failure no Catch took came through the fan-out states
                // still open, innermost first, as AWS shows.
                let open: Vec<String> = self.open.iter().rev().cloned().collect();
                for path in open {
                    self.fail_open(at, &path, error, cause);
                }
                (
                    "ExecutionFailed",
                    "executionFailedEventDetails",
                    json!({"error": error, "cause": cause}),
                )
            }
            Outcome::TimedOut { error, cause } => (
                "ExecutionTimedOut",
                "executionTimedOutEventDetails",
                json!({"error": error, "cause": cause}),
            ),
            Outcome::Aborted { error, cause } => {
                let mut d = Map::new();
                if let Some(e) = error {
                    d.insert("error".into(), json!(e));
                }
                if let Some(c) = cause {
                    d.insert("cause".into(), json!(c));
                }
                (
                    "ExecutionAborted",
                    "executionAbortedEventDetails",
                    Value::Object(d),
                )
            }
        };
        // Everything still running is over.
        self.open.clear();
        self.pending.clear();
        self.task_timers.clear();
        self.push(at, kind, Some((key, details)));
    }
}

/// Whether the state at `path` runs inside the Parallel or Map state at
/// `fanout` (in its branch or iteration `index`, when given): its path is
/// `{fanout}@{visit}#{retry}[{index}]/...`.
fn is_within(path: &str, fanout: &str, index: Option<usize>) -> bool {
    let Some(rest) = path
        .strip_prefix(fanout)
        .and_then(|rest| rest.strip_prefix('@'))
    else {
        return false;
    };
    let Some((counters, rest)) = rest.split_once('[') else {
        return false;
    };
    if !counters.bytes().all(|b| b.is_ascii_digit() || b == b'#') || counters.is_empty() {
        return false;
    }
    let Some((number, _)) = rest.split_once("]/") else {
        return false;
    };
    match index {
        Some(index) => number.parse::<usize>().is_ok_and(|n| n == index),
        None => number.bytes().all(|b| b.is_ascii_digit()) && !number.is_empty(),
    }
}

/// The entries of a stored history with every command regenerated by
/// replaying its events through the interpreter, with state inputs and
/// outputs in the records. The cluster stores records without these copies
/// (they can be derived: the interpreter is deterministic); the history view
/// shows them. `None` when the replay does not fit the stored events (a
/// definition changed under a running execution): show what is stored then.
pub fn replay_with_payloads(
    machine: std::sync::Arc<sagaflow_asl::model::StateMachine>,
    options: &sagaflow_asl::interp::Options,
    stored: impl IntoIterator<Item = HistoryEntry>,
) -> Option<Vec<HistoryEntry>> {
    let mut entries = Vec::new();
    replay_into(machine, options, stored, |entry| entries.push(entry)).then_some(entries)
}

/// [`replay_with_payloads`], handing each entry to `sink` as it comes
/// instead of keeping them; `false` when the replay did not give the stored
/// effects (what `sink` got is then to be thrown away).
fn replay_into(
    machine: std::sync::Arc<sagaflow_asl::model::StateMachine>,
    options: &sagaflow_asl::interp::Options,
    stored: impl IntoIterator<Item = HistoryEntry>,
    mut sink: impl FnMut(HistoryEntry),
) -> bool {
    let options = sagaflow_asl::interp::Options {
        record_payloads: true,
        ..options.clone()
    };
    let mut execution = sagaflow_asl::interp::Execution::new(machine, options);
    let mut out = Vec::new();
    // The effects (every command but records) the replay gave that the
    // stored history has not shown yet: the stored history must give
    // exactly these, in this order. Each event's are stored right after it,
    // so this holds one event's effects, not the history's.
    let mut unmatched: std::collections::VecDeque<Command> = std::collections::VecDeque::new();
    for entry in stored {
        match &entry.item {
            HistoryItem::Command(Command::Record(_)) => continue,
            HistoryItem::Command(c) => {
                if unmatched.pop_front().as_ref() != Some(c) {
                    return false;
                }
                continue;
            }
            HistoryItem::Event(_) => {}
        }
        let HistoryItem::Event(event) = &entry.item else {
            continue;
        };
        out.clear();
        match super::engine::apply_guarded(&mut execution, entry.at, event.clone(), &mut out) {
            Ok(Ok(())) => {}
            _ => return false,
        }
        unmatched.extend(
            out.iter()
                .filter(|c| !matches!(c, Command::Record(_)))
                .cloned(),
        );
        let at = entry.at;
        sink(entry);
        for c in out.drain(..) {
            sink(HistoryEntry {
                at,
                item: HistoryItem::Command(c),
            });
        }
    }
    unmatched.is_empty()
}

/// One page of a history's Step Functions-style events: those numbered
/// (from 0) `start..start + limit`, and how many events there are in all.
/// The events are rendered as the history is replayed with its payloads
/// (the stored history when the replay does not give its effects), and only
/// the page's are kept (besides the stored history the caller holds).
pub fn render_page<I: Iterator<Item = HistoryEntry>>(
    machine: Option<std::sync::Arc<sagaflow_asl::model::StateMachine>>,
    options: &sagaflow_asl::interp::Options,
    stored: impl Fn() -> I,
    start: usize,
    limit: usize,
) -> (Vec<Value>, usize) {
    let keep = start..start.saturating_add(limit);
    if let Some(machine) = machine {
        let mut r = Renderer::new(keep.clone());
        if replay_into(machine, options, stored(), |entry| r.entry(&entry)) {
            return (r.events, r.count);
        }
    }
    let mut r = Renderer::new(keep);
    for entry in stored() {
        r.entry(&entry);
    }
    (r.events, r.count)
}

/// Renders a history, oldest first, as Step Functions-style events.
pub fn render<'a>(entries: impl IntoIterator<Item = &'a HistoryEntry>) -> Vec<Value> {
    let mut r = Renderer::new(0..usize::MAX);
    for entry in entries {
        r.entry(entry);
    }
    r.events
}

/// The input of an execution: its `ExecutionStarted` event's.
pub fn started_input<'a>(entries: impl IntoIterator<Item = &'a HistoryEntry>) -> Option<Value> {
    entries.into_iter().find_map(|e| match &e.item {
        HistoryItem::Event(Event::ExecutionStarted { input, .. }) => Some(input.clone()),
        _ => None,
    })
}

/// How an execution ended the last time it did (a redriven execution may
/// have ended more than once).
pub fn last_outcome<'a>(entries: impl IntoIterator<Item = &'a HistoryEntry>) -> Option<Outcome> {
    entries
        .into_iter()
        .filter_map(|e| match &e.item {
            HistoryItem::Command(Command::Complete(o)) => Some(o.clone()),
            _ => None,
        })
        .last()
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use proptest::prelude::*;
    use sagaflow_asl::interp::{ExecutionInfo, TaskRequest};

    use super::*;

    fn at(second: u32) -> jiff::Timestamp {
        format!("2024-01-01T00:00:{second:02}Z").parse().unwrap()
    }

    fn ev(second: u32, e: Event) -> HistoryEntry {
        HistoryEntry {
            at: at(second),
            item: HistoryItem::Event(e),
        }
    }

    fn cmd(second: u32, c: Command) -> HistoryEntry {
        HistoryEntry {
            at: at(second),
            item: HistoryItem::Command(c),
        }
    }

    fn entered(path: &str, t: StateType, input: Value) -> Command {
        Command::Record(Record::StateEntered {
            path: path.into(),
            name: path.rsplit('/').next().unwrap().into(),
            state_type: t,
            input: Arc::new(input),
        })
    }

    fn exited(path: &str, t: StateType, output: Value) -> Command {
        Command::Record(Record::StateExited {
            path: path.into(),
            name: path.rsplit('/').next().unwrap().into(),
            state_type: t,
            output: Arc::new(output),
        })
    }

    fn task(id: &str, resource: &str, input: Value, timeout: Option<u64>) -> Command {
        Command::ScheduleTask(TaskRequest {
            task_id: id.into(),
            state_name: "Book".into(),
            resource: resource.into(),
            input: Arc::new(input),
            attempt: 0,
            timeout_seconds: timeout,
            heartbeat_seconds: None,
            task_token: None,
            credentials: None,
        })
    }

    fn started(input: Value) -> Event {
        Event::ExecutionStarted {
            info: ExecutionInfo {
                execution_id: "arn:x".into(),
                execution_name: "e".into(),
                state_machine_id: "arn:m".into(),
                state_machine_name: "m".into(),
                role_arn: "arn:role".into(),
                seed: 1,
                rules: sagaflow_asl::interp::RULES,
            },
            input,
        }
    }

    fn types(events: &[Value]) -> Vec<&str> {
        events.iter().map(|e| e["type"].as_str().unwrap()).collect()
    }

    /// A saga: Book fails, a retry, then a timeout caught, a compensation
    /// Pass, and a Fail.
    fn saga() -> Vec<HistoryEntry> {
        vec![
            ev(0, started(json!({"trip": 1}))),
            cmd(0, entered("Book", StateType::Task, json!({"trip": 1}))),
            cmd(
                0,
                task("Book@0#0", "book_flight", json!({"trip": 1}), Some(5)),
            ),
            cmd(
                0,
                Command::StartTimer {
                    timer_id: "t1".into(),
                    fire_at: at(5),
                    purpose: TimerPurpose::TaskTimeout {
                        task_id: "Book@0#0".into(),
                    },
                },
            ),
            ev(
                1,
                Event::TaskFailed {
                    task_id: "Book@0#0".into(),
                    error: "Busy".into(),
                    cause: "try later".into(),
                },
            ),
            cmd(
                1,
                Command::CancelTimer {
                    timer_id: "t1".into(),
                },
            ),
            cmd(
                1,
                Command::Record(Record::RetryScheduled {
                    path: "Book".into(),
                    error: "Busy".into(),
                    attempt: 1,
                    delay_seconds: 1.5,
                }),
            ),
            cmd(
                2,
                task("Book@0#1", "book_flight", json!({"trip": 1}), Some(5)),
            ),
            cmd(
                2,
                Command::StartTimer {
                    timer_id: "t2".into(),
                    fire_at: at(7),
                    purpose: TimerPurpose::TaskTimeout {
                        task_id: "Book@0#1".into(),
                    },
                },
            ),
            ev(
                7,
                Event::TimerFired {
                    timer_id: "t2".into(),
                },
            ),
            cmd(
                7,
                Command::CancelTask {
                    task_id: "Book@0#1".into(),
                },
            ),
            cmd(
                7,
                Command::Record(Record::Caught {
                    path: "Book".into(),
                    error: "States.Timeout".into(),
                    cause: "late".into(),
                    next: "Undo".into(),
                }),
            ),
            // A late answer for the timed-out task: ignored.
            ev(
                8,
                Event::TaskSucceeded {
                    task_id: "Book@0#1".into(),
                    output: json!(1),
                },
            ),
            cmd(8, entered("Undo", StateType::Pass, json!({"e": 1}))),
            cmd(8, exited("Undo", StateType::Pass, json!({"e": 2}))),
            cmd(
                8,
                Command::Complete(Outcome::Failed {
                    error: "BookingFailed".into(),
                    cause: "no seats".into(),
                }),
            ),
        ]
    }

    #[test]
    fn a_page_is_the_same_slice_of_the_whole_rendering() {
        let h = saga();
        let all = render(&h);
        let options = sagaflow_asl::interp::Options::default();
        for (start, limit) in [(0, 1), (0, 3), (2, 4), (all.len() - 1, 5), (all.len(), 5)] {
            let (page, total) = render_page(None, &options, || h.iter().cloned(), start, limit);
            assert_eq!(total, all.len());
            let end = (start + limit).min(all.len());
            assert_eq!(page, all[start..end].to_vec(), "{start}+{limit}");
        }
    }

    #[test]
    fn renders_a_saga_like_step_functions() {
        let events = render(&saga());
        assert_eq!(
            types(&events),
            vec![
                "ExecutionStarted",
                "TaskStateEntered",
                "TaskScheduled",
                "TaskStarted",
                "TaskFailed",
                "TaskRetryScheduled",
                "TaskScheduled",
                "TaskStarted",
                "TaskTimedOut",
                "CatchTriggered",
                "PassStateEntered",
                "PassStateExited",
                "ExecutionFailed",
            ]
        );
        for (i, e) in events.iter().enumerate() {
            assert_eq!(e["id"], json!(i + 1));
            assert_eq!(e["previousEventId"], json!(i));
        }
        assert_eq!(
            events[0],
            json!({
                "id": 1, "previousEventId": 0, "timestamp": "2024-01-01T00:00:00Z",
                "type": "ExecutionStarted",
                "executionStartedEventDetails": {
                    "input": "{\"trip\":1}", "inputDetails": {"truncated": false},
                    "roleArn": "arn:role"
                }
            })
        );
        assert_eq!(
            events[2]["taskScheduledEventDetails"],
            json!({
                "resourceType": "sagaflow", "resource": "book_flight", "region": "local",
                "parameters": "{\"trip\":1}", "timeoutInSeconds": 5, "taskId": "Book@0#0"
            })
        );
        assert_eq!(
            events[3]["taskStartedEventDetails"],
            json!({"resourceType": "sagaflow", "resource": "book_flight"})
        );
        assert_eq!(events[3]["timestamp"], events[2]["timestamp"]);
        assert_eq!(events[4]["taskFailedEventDetails"]["error"], json!("Busy"));
        assert_eq!(events[8]["timestamp"], json!("2024-01-01T00:00:07Z"));
        assert_eq!(
            events[8]["taskTimedOutEventDetails"]["error"],
            json!("States.Timeout")
        );
        assert_eq!(
            events[9]["catchTriggeredEventDetails"],
            json!({"name": "Book", "error": "States.Timeout", "cause": "late", "next": "Undo"})
        );
        assert_eq!(
            events[11]["stateExitedEventDetails"]["output"],
            json!("{\"e\":2}")
        );
        assert_eq!(
            events[12]["executionFailedEventDetails"],
            json!({"error": "BookingFailed", "cause": "no seats"})
        );
    }

    #[test]
    fn task_success_and_heartbeat_timeout() {
        let h = vec![
            ev(0, started(json!({}))),
            cmd(
                0,
                task("A@0#0", "arn:aws:states:::lambda:invoke", json!({}), None),
            ),
            cmd(
                0,
                task(
                    "B@0#0",
                    "arn:aws:lambda:us-east-1:1:function:f",
                    json!({}),
                    None,
                ),
            ),
            ev(
                1,
                Event::TaskSucceeded {
                    task_id: "A@0#0".into(),
                    output: json!({"ok": true}),
                },
            ),
            // A duplicate answer is not shown twice.
            ev(
                1,
                Event::TaskSucceeded {
                    task_id: "A@0#0".into(),
                    output: json!({"ok": true}),
                },
            ),
            ev(
                2,
                Event::TaskFailed {
                    task_id: "B@0#0".into(),
                    error: "States.HeartbeatTimeout".into(),
                    cause: "".into(),
                },
            ),
            cmd(
                3,
                Command::Complete(Outcome::Succeeded {
                    output: Arc::new(json!([1])),
                }),
            ),
        ];
        let events = render(&h);
        assert_eq!(
            types(&events),
            vec![
                "ExecutionStarted",
                "TaskScheduled",
                "TaskStarted",
                "TaskScheduled",
                "TaskStarted",
                "TaskSucceeded",
                "TaskTimedOut",
                "ExecutionSucceeded"
            ]
        );
        assert_eq!(
            events[5]["taskSucceededEventDetails"],
            json!({
                "resourceType": "lambda", "resource": "invoke",
                "output": "{\"ok\":true}", "outputDetails": {"truncated": false}
            })
        );
        assert_eq!(
            events[6]["taskTimedOutEventDetails"]["resource"],
            json!("arn:aws:lambda:us-east-1:1:function:f")
        );
        assert_eq!(
            events[7]["executionSucceededEventDetails"]["output"],
            json!("[1]")
        );
    }

    #[test]
    fn map_and_parallel_events() {
        let h = vec![
            ev(0, started(json!([1, 2]))),
            cmd(0, entered("Fan", StateType::Map, json!([1, 2]))),
            cmd(
                0,
                Command::Record(Record::MapIterationStarted {
                    path: "Fan".into(),
                    index: 0,
                }),
            ),
            cmd(
                0,
                Command::Record(Record::MapIterationSucceeded {
                    path: "Fan".into(),
                    index: 0,
                }),
            ),
            cmd(
                0,
                Command::Record(Record::MapIterationFailed {
                    path: "Fan".into(),
                    index: 1,
                    error: "E".into(),
                }),
            ),
            cmd(
                0,
                Command::Record(Record::BranchAborted {
                    path: "Fan".into(),
                    index: 2,
                }),
            ),
            cmd(
                0,
                Command::Record(Record::Caught {
                    path: "Fan".into(),
                    error: "E".into(),
                    cause: "c".into(),
                    next: "Par".into(),
                }),
            ),
            cmd(0, entered("Par", StateType::Parallel, json!({}))),
            cmd(
                0,
                Command::Record(Record::BranchAborted {
                    path: "Par".into(),
                    index: 1,
                }),
            ),
            cmd(0, exited("Par", StateType::Parallel, json!([]))),
            cmd(0, entered("W", StateType::Wait, json!({}))),
            cmd(0, exited("W", StateType::Wait, json!({}))),
            cmd(
                0,
                Command::Complete(Outcome::Aborted {
                    error: None,
                    cause: Some("bye".into()),
                }),
            ),
        ];
        let events = render(&h);
        assert_eq!(
            types(&events),
            vec![
                "ExecutionStarted",
                "MapStateEntered",
                "MapStateStarted",
                "MapIterationStarted",
                "MapIterationSucceeded",
                "MapIterationFailed",
                "MapIterationAborted",
                "MapStateFailed",
                "CatchTriggered",
                "ParallelStateEntered",
                "ParallelStateStarted",
                "ParallelBranchAborted",
                "ParallelStateSucceeded",
                "ParallelStateExited",
                "WaitStateEntered",
                "WaitStateExited",
                "ExecutionAborted",
            ]
        );
        assert_eq!(
            events[3]["mapIterationStartedEventDetails"],
            json!({"name": "Fan", "index": 0})
        );
        assert_eq!(
            events[16]["executionAbortedEventDetails"],
            json!({"cause": "bye"})
        );
    }

    #[test]
    fn timed_out_execution_and_input_helpers() {
        let h = vec![
            ev(0, started(json!({"a": 1}))),
            cmd(
                9,
                Command::Complete(Outcome::TimedOut {
                    error: "States.Timeout".into(),
                    cause: "too slow".into(),
                }),
            ),
        ];
        let events = render(&h);
        assert_eq!(
            types(&events),
            vec!["ExecutionStarted", "ExecutionTimedOut"]
        );
        assert_eq!(started_input(&h), Some(json!({"a": 1})));
        assert!(matches!(last_outcome(&h), Some(Outcome::TimedOut { .. })));
        assert_eq!(started_input(&[]), None);
        assert!(render(&[]).is_empty());
        let saga = saga();
        assert!(matches!(last_outcome(&saga), Some(Outcome::Failed { .. })));
    }

    #[test]
    fn resources_split_like_aws() {
        assert_eq!(
            split_resource("arn:aws:states:::sqs:sendMessage.waitForTaskToken"),
            ("sqs".into(), "sendMessage.waitForTaskToken".into())
        );
        assert_eq!(
            split_resource("flights.book"),
            ("sagaflow".into(), "flights.book".into())
        );
        assert_eq!(
            split_resource("arn:aws:states:::weird"),
            ("sagaflow".into(), "arn:aws:states:::weird".into())
        );
    }

    fn arb_entry() -> impl Strategy<Value = HistoryEntry> {
        let id = prop::sample::select(vec!["A", "B", "C"]);
        let path = prop::sample::select(vec!["P", "Q/R", "M"]);
        let ty = prop::sample::select(vec![
            StateType::Task,
            StateType::Map,
            StateType::Parallel,
            StateType::Pass,
        ]);
        prop_oneof![
            id.clone()
                .prop_map(|i| cmd(0, task(i, "r", json!(1), Some(1)))),
            id.clone().prop_map(|i| ev(
                1,
                Event::TaskSucceeded {
                    task_id: i.into(),
                    output: json!(null)
                }
            )),
            id.clone().prop_map(|i| ev(
                1,
                Event::TaskFailed {
                    task_id: i.into(),
                    error: "States.Timeout".into(),
                    cause: "".into()
                }
            )),
            id.clone().prop_map(|i| cmd(
                1,
                Command::StartTimer {
                    timer_id: i.into(),
                    fire_at: at(1),
                    purpose: TimerPurpose::TaskTimeout { task_id: i.into() }
                }
            )),
            id.prop_map(|i| ev(2, Event::TimerFired { timer_id: i.into() })),
            (path.clone(), ty).prop_map(|(p, t)| cmd(2, entered(p, t, json!({})))),
            (path.clone(), 0usize..3).prop_map(|(p, i)| cmd(
                2,
                Command::Record(Record::BranchAborted {
                    path: p.into(),
                    index: i
                })
            )),
            path.prop_map(|p| cmd(
                2,
                Command::Record(Record::Caught {
                    path: p.into(),
                    error: "E".into(),
                    cause: "C".into(),
                    next: "N".into()
                })
            )),
            Just(cmd(
                3,
                Command::Complete(Outcome::Failed {
                    error: "E".into(),
                    cause: "C".into()
                })
            )),
        ]
    }

    proptest! {
        #[test]
        fn never_panics_and_ids_are_consecutive(h in prop::collection::vec(arb_entry(), 0..40)) {
            let events = render(&h);
            for (i, e) in events.iter().enumerate() {
                prop_assert_eq!(&e["id"], &json!(i + 1));
                prop_assert!(e["type"].is_string());
            }
        }
    }
}

/// The identity of the executions the tests below run.
#[cfg(test)]
fn test_info() -> sagaflow_asl::interp::ExecutionInfo {
    sagaflow_asl::interp::ExecutionInfo {
        execution_id: "e".into(),
        execution_name: "e".into(),
        state_machine_id: "m".into(),
        state_machine_name: "m".into(),
        role_arn: String::new(),
        seed: 1,
        rules: sagaflow_asl::interp::RULES,
    }
}

#[cfg(test)]
mod fanout_failure_tests {
    use std::sync::Arc;

    use sagaflow_asl::interp::{Command, Event, Execution, Options};
    use serde_json::json;

    use super::*;

    /// Runs `definition` through the interpreter, every task failing with
    /// `CardDeclined`, and renders the history it records.
    fn run_failing(definition: &str) -> Vec<Value> {
        let machine = Arc::new(sagaflow_asl::parse::parse_definition(definition).unwrap());
        let mut exec = Execution::new(machine, Options::default());
        let at: jiff::Timestamp = "2024-01-01T00:00:00Z".parse().unwrap();
        let mut history = Vec::new();
        let mut events = vec![Event::ExecutionStarted {
            info: test_info(),
            input: json!({"items": [1]}),
        }];
        while let Some(event) = events.pop() {
            let mut out = Vec::new();
            exec.apply(at, event.clone(), &mut out).unwrap();
            history.push(HistoryEntry {
                at,
                item: HistoryItem::Event(event),
            });
            for c in out {
                if let Command::ScheduleTask(request) = &c {
                    events.push(Event::TaskFailed {
                        task_id: request.task_id.to_string(),
                        error: "CardDeclined".into(),
                        cause: "no funds".into(),
                    });
                }
                history.push(HistoryEntry {
                    at,
                    item: HistoryItem::Command(c),
                });
            }
        }
        assert!(exec.outcome().is_some(), "ended");
        render(&history)
    }

    /// The event types from the task's failure on.
    fn after_task_failed(events: &[Value]) -> Vec<&str> {
        let types: Vec<&str> = events.iter().map(|e| e["type"].as_str().unwrap()).collect();
        let from = types
            .iter()
            .position(|t| *t == "TaskFailed")
            .expect("a task failed");
        types[from..].to_vec()
    }

    const NESTED: &str = r#"{"StartAt": "Fan", "States": {"Fan": {"Type": "Map", "ItemsPath": "$.items",
        __CATCH__
        "ItemProcessor": {"StartAt": "Par", "States": {"Par": {"Type": "Parallel", "End": true,
            "Branches": [{"StartAt": "Charge", "States": {"Charge": {"Type": "Task", "Resource": "charge", "End": true}}}]}}},
        "End": true}__UNDO__}}"#;

    #[test]
    fn an_uncaught_failure_shows_the_fanout_states_it_came_through() {
        let events = run_failing(&NESTED.replace("__CATCH__", "").replace("__UNDO__", ""));
        assert_eq!(
            after_task_failed(&events),
            vec![
                "TaskFailed",
                "ParallelStateFailed",
                "MapIterationFailed",
                "MapStateFailed",
                "ExecutionFailed",
            ]
        );
        let map_failed = events
            .iter()
            .find(|e| e["type"] == "MapStateFailed")
            .unwrap();
        assert_eq!(
            map_failed["stateFailedEventDetails"],
            json!({"name": "Fan", "error": "CardDeclined", "cause": "no funds"})
        );
    }

    #[test]
    fn a_caught_failure_shows_the_fanout_states_it_came_through() {
        let caught = r#""Catch": [{"ErrorEquals": ["States.ALL"], "Next": "Undo"}],"#;
        let events = run_failing(
            &NESTED
                .replace("__CATCH__", caught)
                .replace("__UNDO__", r#", "Undo": {"Type": "Pass", "End": true}"#),
        );
        assert_eq!(
            after_task_failed(&events),
            vec![
                "TaskFailed",
                "ParallelStateFailed",
                "MapIterationFailed",
                "MapStateFailed",
                "CatchTriggered",
                "PassStateEntered",
                "PassStateExited",
                "ExecutionSucceeded",
            ]
        );
    }

    #[test]
    fn a_path_is_within_a_fanout_state_by_its_prefix() {
        assert!(is_within("Fan@0#0[2]/Par", "Fan", None));
        assert!(is_within("Fan@0#0[2]/Par", "Fan", Some(2)));
        assert!(!is_within("Fan@0#0[2]/Par", "Fan", Some(1)));
        assert!(is_within("Fan@3#1[12]/Par@0#0[0]/Inner", "Fan", Some(12)));
        assert!(!is_within("Fan", "Fan", None));
        assert!(!is_within("Fanout@0#0[2]/Par", "Fan", None));
        assert!(!is_within("Fan@x[2]/Par", "Fan", None));
        assert!(!is_within("Fan@0#0[2]", "Fan", None));
    }
}

#[cfg(test)]
mod replay_tests {
    use std::sync::Arc;

    use sagaflow_asl::interp::{Command, Event, Execution, Options, Record};
    use serde_json::json;

    use super::*;

    #[test]
    fn replay_brings_back_the_payloads_of_slim_records() {
        let machine = Arc::new(
            sagaflow_asl::parse::parse_definition(
                r#"{"StartAt": "A", "States": {"A": {"Type": "Pass", "Result": 1, "ResultPath": "$.a", "End": true}}}"#,
            )
            .unwrap(),
        );
        let slim = Options {
            record_payloads: false,
            ..Options::default()
        };
        let mut exec = Execution::new(machine.clone(), slim.clone());
        let at: jiff::Timestamp = "2024-01-01T00:00:00Z".parse().unwrap();
        let start = Event::ExecutionStarted {
            info: test_info(),
            input: json!({"x": 1}),
        };
        let mut out = Vec::new();
        exec.apply(at, start.clone(), &mut out).unwrap();
        let mut stored = vec![HistoryEntry {
            at,
            item: HistoryItem::Event(start),
        }];
        stored.extend(out.into_iter().map(|c| HistoryEntry {
            at,
            item: HistoryItem::Command(c),
        }));
        let entered = |entries: &[HistoryEntry]| {
            entries.iter().find_map(|e| match &e.item {
                HistoryItem::Command(Command::Record(Record::StateEntered { input, .. })) => {
                    Some(Value::clone(input))
                }
                _ => None,
            })
        };
        assert_eq!(entered(&stored), Some(Value::Null), "stored slim");
        let replayed = replay_with_payloads(machine.clone(), &slim, stored.clone()).unwrap();
        assert_eq!(entered(&replayed), Some(json!({"x": 1})));
        assert_eq!(
            replayed.len(),
            stored.len(),
            "the same entries, payloads restored"
        );
        // A page replayed as it is rendered is that slice of the whole
        // replayed rendering (payloads included).
        let all = render(&replayed);
        assert!(all.len() > 1);
        for (start, limit) in [(0, 1), (1, 1), (0, all.len()), (all.len(), 3)] {
            let (page, total) = render_page(
                Some(machine.clone()),
                &slim,
                || stored.iter().cloned(),
                start,
                limit,
            );
            assert_eq!(total, all.len());
            let end = (start + limit).min(all.len());
            assert_eq!(page, all[start..end].to_vec(), "{start}+{limit}");
        }
        // A stored history whose effects the replay does not give (one
        // missing, one more, one different) is not replayed.
        let effect = |e: &HistoryEntry| matches!(&e.item, HistoryItem::Command(c) if !matches!(c, Command::Record(_)));
        let last_effect = stored.iter().rposition(effect).expect("an effect stored");
        let mut missing = stored.clone();
        missing.remove(last_effect);
        let mut more = stored.clone();
        more.push(stored[last_effect].clone());
        let mut different = stored.clone();
        different[last_effect].item = HistoryItem::Command(Command::CancelTimer {
            timer_id: "t".into(),
        });
        for (name, history) in [
            ("missing", missing),
            ("more", more),
            ("different", different),
        ] {
            assert!(
                replay_with_payloads(machine.clone(), &slim, history).is_none(),
                "{name}"
            );
        }
    }
}
