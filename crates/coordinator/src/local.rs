//! The local runner: one execution of a definition against stub
//! participants, in-process, optionally on a virtual clock. Behind
//! `sagaflow run`.

use std::collections::BTreeMap;
use std::hash::{BuildHasher, RandomState};
use std::sync::Arc;

use serde::{Serialize, Serializer};
use serde_json::Value;

use sagaflow_asl::interp::{Command, ExecutionInfo, Outcome, TimerPurpose};
use sagaflow_asl::parse::{ValidationError, parse_definition};
use sagaflow_asl::rand::{RandomSource, SplitMix64};
use sagaflow_participant::Handler;
use sagaflow_participant::stubs::Stubs;

use crate::clock::{Clock, SystemClock, VirtualClock};
use crate::dispatch::EmbeddedDispatcher;
use crate::driver::{Coordinator, DriveError, HistoryEntry, HistoryItem, RuntimeOptions};
use crate::resource::static_tasks;

/// The name of the state machine in the execution's ids (`$$.StateMachine.Name`).
pub const STATE_MACHINE_NAME: &str = "LocalStateMachine";
const ARN_PREFIX: &str = "arn:aws:states:us-east-1:123456789012";

/// What to run.
#[derive(Debug)]
pub struct RunRequest {
    /// The definition (ASL JSON text).
    pub definition: String,
    /// The execution input.
    pub input: Value,
    /// The stub participants.
    pub stubs: Stubs,
    /// `$$.Execution.Name` (default: a UUID derived from the seed).
    pub execution_name: Option<String>,
    /// Run on a virtual clock: timers and stub delays take no real time.
    /// [`run`] must then be called on a current-thread tokio runtime whose
    /// clock is paused ([`run_blocking`] builds one).
    pub virtual_clock: bool,
    /// The execution's random seed (default: random).
    pub seed: Option<u64>,
    /// The time the execution starts at (default: now). Without
    /// `virtual_clock` the clock is offset to start there and runs in real time.
    pub start_time: Option<jiff::Timestamp>,
    /// Ctrl-C (SIGINT) stops the execution as `StopExecution` does: what
    /// runs is cancelled and the run ends ABORTED, its report showing how
    /// far it got (`sagaflow run` sets it).
    pub stop_on_ctrl_c: bool,
}

/// How the run ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum RunStatus {
    /// The execution succeeded.
    Succeeded,
    /// The execution failed.
    Failed,
    /// The machine's `TimeoutSeconds` elapsed.
    TimedOut,
    /// The execution was stopped.
    Aborted,
    /// The definition is invalid; nothing ran.
    InvalidDefinition,
}

fn seconds_list<S: Serializer>(
    map: &BTreeMap<String, Vec<f64>>,
    serializer: S,
) -> Result<S::Ok, S::Error> {
    let as_json: BTreeMap<&str, Vec<Value>> = map
        .iter()
        .map(|(k, v)| (k.as_str(), v.iter().map(|s| seconds_json(*s)).collect()))
        .collect();
    as_json.serialize(serializer)
}

/// Seconds as a JSON number: an integer when whole.
pub fn seconds_json(s: f64) -> Value {
    if s.fract() == 0.0 && s.abs() < 9.0e15 {
        Value::from(s as i64)
    } else {
        serde_json::Number::from_f64(s).map_or(Value::Null, Value::Number)
    }
}

/// The result of a local run, as printed by `sagaflow run`.
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct RunReport {
    /// How it ended.
    pub status: RunStatus,
    /// The execution's output (`null` unless it succeeded).
    pub output: Value,
    /// The error name (`null` when it succeeded).
    pub error: Option<String>,
    /// The cause.
    pub cause: Option<String>,
    /// Number of calls per stub key.
    pub calls: BTreeMap<String, u64>,
    /// Stub keys in call order.
    pub call_order: Vec<String>,
    /// Retry backoff delays, in seconds, per retried state, in order.
    #[serde(serialize_with = "seconds_list")]
    pub retry_delays_seconds: BTreeMap<String, Vec<f64>>,
    /// The validation errors, for [`RunStatus::InvalidDefinition`] only.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub errors: Option<Vec<ValidationError>>,
    /// The execution's full history (not serialized).
    #[serde(skip)]
    pub history: Vec<HistoryEntry>,
}

impl RunReport {
    /// The report of a definition that did not validate.
    pub fn invalid(errors: Vec<ValidationError>) -> RunReport {
        RunReport {
            status: RunStatus::InvalidDefinition,
            output: Value::Null,
            error: None,
            cause: None,
            calls: BTreeMap::new(),
            call_order: Vec::new(),
            retry_delays_seconds: BTreeMap::new(),
            errors: Some(errors),
            history: Vec::new(),
        }
    }

    /// The report as one line of JSON.
    pub fn to_json(&self) -> String {
        // Serializing plain maps, strings and numbers cannot fail.
        serde_json::to_string(self)
            .unwrap_or_else(|e| format!("{{\"status\":\"ERROR\",\"cause\":\"{e}\"}}"))
    }
}

/// A Task whose stub is missing.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MissingStub {
    /// The key to add to the stubs file.
    pub key: String,
    /// The Task state.
    pub state_name: String,
    /// Its `Resource`.
    pub resource: String,
}

impl std::fmt::Display for MissingStub {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "'{}' (state '{}', resource '{}')",
            self.key, self.state_name, self.resource
        )
    }
}

/// The run could not happen or could not finish (a problem of the set-up
/// or of the runtime, never the execution's own failure).
#[derive(Debug, thiserror::Error)]
pub enum RunError {
    /// Tasks whose handler is known statically have no stub.
    #[error("missing stubs for {} task resource(s): {}", .0.len(), .0.iter().map(ToString::to_string).collect::<Vec<_>>().join(", "))]
    MissingStubs(Vec<MissingStub>),
    /// The execution name is not one AWS would accept.
    #[error("invalid execution name '{name}': {reason}")]
    InvalidExecutionName {
        /// The name.
        name: String,
        /// Why.
        reason: String,
    },
    /// The input is one StartExecution refuses: larger than the payload
    /// limit or nested too deep (the execution does not start, as on the
    /// cluster).
    #[error("invalid input: {0}")]
    InvalidInput(String),
    /// The driver failed.
    #[error(transparent)]
    Drive(#[from] DriveError),
    /// The tokio runtime could not be built.
    #[error("could not start the runtime: {0}")]
    Runtime(#[from] std::io::Error),
}

/// The error of a run stopped by Ctrl-C ([`RunRequest::stop_on_ctrl_c`]).
pub const INTERRUPTED: &str = "Sagaflow.Interrupted";

/// Refuses an input StartExecution refuses (on the cluster and embedded):
/// nested more than the interpreter's depth limit, or larger than
/// `max_bytes` of JSON. The depth first: measuring the size recurses.
fn check_input(input: &serde_json::Value, max_bytes: usize) -> Result<(), RunError> {
    if sagaflow_asl::interp::too_deeply_nested(input) {
        return Err(RunError::InvalidInput(format!(
            "it nests arrays and objects more than {} levels deep",
            sagaflow_asl::interp::MAX_DEPTH
        )));
    }
    let size = serde_json::to_vec(input).map_or(usize::MAX, |v| v.len());
    if size > max_bytes {
        return Err(RunError::InvalidInput(format!(
            "it is {size} bytes; at most {max_bytes} are allowed"
        )));
    }
    Ok(())
}

/// Checks an execution name as AWS's StartExecution does: 1 to 80
/// characters, no whitespace, brackets, wildcards, control characters or
/// any of `"#%\^|~`$&,;:/`.
pub fn check_execution_name(name: &str) -> Result<(), RunError> {
    let bad = |reason: String| RunError::InvalidExecutionName {
        name: name.to_string(),
        reason,
    };
    let len = name.chars().count();
    if len == 0 || len > 80 {
        return Err(bad(format!("must be 1 to 80 characters, got {len}")));
    }
    if let Some(c) = name
        .chars()
        .find(|c| c.is_whitespace() || c.is_control() || "<>{}[]?*\"#%\\^|~`$&,;:/".contains(*c))
    {
        return Err(bad(format!("must not contain {c:?}")));
    }
    Ok(())
}

/// A UUID-shaped (version 4 layout) name derived from the seed.
pub fn name_from_seed(seed: u64) -> String {
    let mut r = SplitMix64::new(seed ^ 0x6e61_6d65); // "name"
    let a = r.next_u64();
    let b = r.next_u64();
    format!(
        "{:08x}-{:04x}-4{:03x}-{:04x}-{:012x}",
        a >> 32,
        (a >> 16) & 0xffff,
        a & 0x0fff,
        0x8000 | ((b >> 48) & 0x3fff),
        b & 0xffff_ffff_ffff
    )
}

fn random_seed() -> u64 {
    RandomState::new().hash_one(std::time::SystemTime::now())
}

/// Runs one execution. An invalid definition is a report with status
/// `INVALID_DEFINITION`; the execution's own failure is a report with
/// status `FAILED`; errors are reserved for set-up and runtime problems.
pub async fn run(request: RunRequest) -> Result<RunReport, RunError> {
    run_with_handlers(request, Vec::new()).await
}

/// [`run`] with real handlers besides the stubs: a stub with the same key
/// wins. `sagaflow run` serves HTTP Tasks this way, with
/// [`crate::resource::HTTP_INVOKE_HANDLER`] mapped to `sagaflow-http`'s
/// handler (a stub keyed by the resource or that name replaces it).
pub async fn run_with_handlers(
    request: RunRequest,
    handlers: Vec<(String, Arc<dyn Handler>)>,
) -> Result<RunReport, RunError> {
    let machine = match parse_definition(&request.definition) {
        Ok(m) => Arc::new(m),
        Err(invalid) => return Ok(RunReport::invalid(invalid.errors)),
    };
    let mut missing: Vec<MissingStub> = Vec::new();
    for task in static_tasks(&machine) {
        if task
            .candidates
            .iter()
            .any(|k| request.stubs.contains(k) || handlers.iter().any(|(h, _)| h == k))
        {
            continue;
        }
        if !missing.iter().any(|m| m.key == task.name) {
            missing.push(MissingStub {
                key: task.name,
                state_name: task.state_name,
                resource: task.resource,
            });
        }
    }
    if !missing.is_empty() {
        return Err(RunError::MissingStubs(missing));
    }
    let seed = request.seed.unwrap_or_else(random_seed);
    let name = match request.execution_name {
        Some(n) => {
            check_execution_name(&n)?;
            n
        }
        None => name_from_seed(seed),
    };
    check_input(&request.input, RuntimeOptions::default().max_payload_bytes)?;
    let info = ExecutionInfo {
        execution_id: format!("{ARN_PREFIX}:execution:{STATE_MACHINE_NAME}:{name}"),
        execution_name: name,
        state_machine_id: format!("{ARN_PREFIX}:stateMachine:{STATE_MACHINE_NAME}"),
        state_machine_name: STATE_MACHINE_NAME.to_string(),
        role_arn: String::new(),
        seed,
        rules: sagaflow_asl::interp::RULES,
    };
    let clock: Arc<dyn Clock> = match (request.virtual_clock, request.start_time) {
        (false, None) => Arc::new(SystemClock),
        (_, start) => Arc::new(VirtualClock::new(
            start.unwrap_or_else(jiff::Timestamp::now),
        )),
    };
    let mut served: Vec<_> = request.stubs.handlers().collect();
    for (key, handler) in handlers {
        if !request.stubs.contains(&key) {
            served.push((key, handler));
        }
    }
    let dispatcher = Arc::new(EmbeddedDispatcher::new(served));
    let coordinator = Coordinator::new(clock, dispatcher.clone(), RuntimeOptions::default());
    let execution_id = info.execution_id.clone();
    let log = crate::driver::HistoryLog::default();
    let prepared = coordinator.prepare(
        machine,
        crate::driver::Begin::Start {
            info,
            input: request.input,
        },
        &log,
    )?;
    let (controls, receiver) = tokio::sync::mpsc::unbounded_channel();
    let interrupt = request.stop_on_ctrl_c.then(|| {
        tokio::spawn(async move {
            if tokio::signal::ctrl_c().await.is_ok() {
                let _ = controls.send(crate::driver::Control::Stop {
                    error: Some(INTERRUPTED.to_string()),
                    cause: Some("the run was interrupted (Ctrl-C)".to_string()),
                });
            }
        })
    });
    let finished = coordinator.drive(prepared, log, receiver).await;
    if let Some(interrupt) = interrupt {
        interrupt.abort();
    }
    let finished = finished?;

    let call_order: Vec<String> = dispatcher
        .calls()
        .into_iter()
        .filter(|c| c.execution_id == execution_id)
        .map(|c| c.key)
        .collect();
    let mut calls = BTreeMap::new();
    for key in &call_order {
        *calls.entry(key.clone()).or_insert(0) += 1;
    }
    let mut retry_delays_seconds: BTreeMap<String, Vec<f64>> = BTreeMap::new();
    for entry in &finished.history {
        if let HistoryItem::Command(Command::StartTimer {
            purpose:
                TimerPurpose::Retry {
                    state_name,
                    delay_seconds,
                },
            ..
        }) = &entry.item
        {
            retry_delays_seconds
                .entry(state_name.clone())
                .or_default()
                .push(*delay_seconds);
        }
    }
    let (status, output, error, cause) = match finished.outcome {
        Outcome::Succeeded { output } => (
            RunStatus::Succeeded,
            Arc::unwrap_or_clone(output),
            None,
            None,
        ),
        // A Fail state without Error/Cause leaves them out, as AWS does.
        Outcome::Failed { error, cause } => (
            RunStatus::Failed,
            Value::Null,
            Some(error).filter(|e| !e.is_empty()),
            Some(cause).filter(|c| !c.is_empty()),
        ),
        Outcome::TimedOut { error, cause } => {
            (RunStatus::TimedOut, Value::Null, Some(error), Some(cause))
        }
        Outcome::Aborted { error, cause } => (RunStatus::Aborted, Value::Null, error, cause),
    };
    Ok(RunReport {
        status,
        output,
        error,
        cause,
        calls,
        call_order,
        retry_delays_seconds,
        errors: None,
        history: finished.history,
    })
}

/// [`run`] on a runtime of its own: current-thread, with tokio's clock
/// paused when `virtual_clock` is set.
pub fn run_blocking(request: RunRequest) -> Result<RunReport, RunError> {
    run_blocking_with_handlers(request, Vec::new())
}

/// [`run_with_handlers`] on a runtime of its own (as [`run_blocking`]; I/O
/// is enabled for handlers that call out).
pub fn run_blocking_with_handlers(
    request: RunRequest,
    handlers: Vec<(String, Arc<dyn Handler>)>,
) -> Result<RunReport, RunError> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .enable_io()
        .start_paused(request.virtual_clock)
        .build()?;
    runtime.block_on(run_with_handlers(request, handlers))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn seconds_are_integers_when_whole() {
        assert_eq!(seconds_json(2.0).to_string(), "2");
        assert_eq!(seconds_json(1.5).to_string(), "1.5");
        assert_eq!(seconds_json(0.0).to_string(), "0");
        assert_eq!(seconds_json(f64::NAN), Value::Null);
    }

    #[test]
    fn inputs_start_executions_refuse_are_refused() {
        let limit = RuntimeOptions::default().max_payload_bytes;
        assert!(check_input(&serde_json::json!({"a": 1}), limit).is_ok());
        let big = serde_json::json!({"pad": "x".repeat(limit)});
        let e = check_input(&big, limit).unwrap_err().to_string();
        assert!(e.starts_with("invalid input: it is "), "{e}");
        let mut deep = serde_json::json!(1);
        for _ in 0..=sagaflow_asl::interp::MAX_DEPTH {
            deep = serde_json::json!([deep]);
        }
        let e = check_input(&deep, limit).unwrap_err().to_string();
        assert!(e.contains("levels deep"), "{e}");
    }

    #[test]
    fn execution_names() {
        assert!(check_execution_name("order-42_retry.1").is_ok());
        assert!(check_execution_name("").is_err());
        assert!(check_execution_name("a b").is_err());
        assert!(check_execution_name("a:b").is_err());
        assert!(check_execution_name(&"x".repeat(81)).is_err());
        assert!(check_execution_name(&"é".repeat(80)).is_ok());
        let n = name_from_seed(7);
        assert_eq!(n, name_from_seed(7));
        assert_ne!(n, name_from_seed(8));
        assert_eq!(n.len(), 36);
        assert!(check_execution_name(&n).is_ok());
    }

    #[test]
    fn invalid_report_shape() {
        let r = RunReport::invalid(vec![ValidationError {
            pointer: "/States".into(),
            code: "MISSING_FIELD",
            message: "m".into(),
            line: Some(1),
            column: Some(2),
        }]);
        let v: Value = serde_json::from_str(&r.to_json()).unwrap();
        assert_eq!(
            v,
            serde_json::json!({
                "status": "INVALID_DEFINITION", "output": null, "error": null, "cause": null,
                "calls": {}, "callOrder": [], "retryDelaysSeconds": {},
                "errors": [{"pointer": "/States", "code": "MISSING_FIELD", "message": "m", "line": 1, "column": 2}]
            })
        );
    }

    #[test]
    fn report_shape() {
        let mut r = RunReport::invalid(vec![]);
        r.status = RunStatus::Failed;
        r.errors = None;
        r.retry_delays_seconds
            .insert("Charge".into(), vec![1.0, 2.5]);
        r.calls.insert("charge".into(), 3);
        r.call_order = vec!["charge".into(); 3];
        assert_eq!(
            r.to_json(),
            r#"{"status":"FAILED","output":null,"error":null,"cause":null,"calls":{"charge":3},"callOrder":["charge","charge","charge"],"retryDelaysSeconds":{"Charge":[1,2.5]}}"#
        );
    }

    #[test]
    fn missing_stub_message_lists_every_key() {
        let e = RunError::MissingStubs(vec![
            MissingStub {
                key: "a".into(),
                state_name: "A".into(),
                resource: "arn:x:function:a".into(),
            },
            MissingStub {
                key: "b".into(),
                state_name: "B".into(),
                resource: "b".into(),
            },
        ]);
        let m = e.to_string();
        assert!(
            m.contains("'a' (state 'A'") && m.contains("'b' (state 'B'"),
            "{m}"
        );
    }

    fn request(definition: &str, stubs: &str) -> RunRequest {
        RunRequest {
            definition: definition.to_string(),
            input: serde_json::json!({"items": [1, 2]}),
            stubs: Stubs::from_str(stubs).unwrap(),
            execution_name: None,
            virtual_clock: true,
            seed: Some(1),
            start_time: None,
            stop_on_ctrl_c: false,
        }
    }

    const NESTED: &str = r#"{"StartAt": "P", "States": {"P": {"Type": "Parallel", "Next": "M", "Branches": [
        {"StartAt": "A", "States": {"A": {"Type": "Task", "Resource": "arn:aws:lambda:r:1:function:a", "End": true}}}]},
      "M": {"Type": "Map", "ItemsPath": "$[0].items", "End": true, "ItemProcessor": {"StartAt": "B", "States": {
        "B": {"Type": "Task", "Resource": "arn:aws:states:::lambda:invoke", "Parameters": {"FunctionName": "b", "Payload.$": "$"}, "End": true}}}}}}"#;

    #[test]
    fn missing_stubs_are_found_in_nested_graphs() {
        match run_blocking(request(NESTED, "{}")) {
            Err(RunError::MissingStubs(m)) => {
                let keys: Vec<&str> = m.iter().map(|s| s.key.as_str()).collect();
                assert_eq!(keys.len(), 2, "{keys:?}");
                assert!(keys.contains(&"a") && keys.contains(&"b"), "{keys:?}");
            }
            other => panic!("expected missing stubs, got {other:?}"),
        }
    }

    #[test]
    fn nested_run_reports_calls() {
        let r = run_blocking(request(
            NESTED,
            r#"{"a": {"echo": true}, "b": {"returns": "ok"}}"#,
        ))
        .unwrap();
        assert_eq!(r.status, RunStatus::Succeeded, "{}", r.to_json());
        assert_eq!(r.calls.get("a"), Some(&1));
        assert_eq!(r.calls.get("b"), Some(&2));
        assert_eq!(r.call_order.len(), 3);
        assert!(!r.history.is_empty());
    }

    /// A participant's failure is held to AWS's limits as a Worker sends it
    /// (error name 256 characters, cause 32,768 bytes): the same answers
    /// make the same run locally and on the cluster.
    #[test]
    fn a_failure_is_held_to_the_limits_a_worker_applies() {
        let definition = r#"{"StartAt": "T", "States": {
            "T": {"Type": "Task", "Resource": "arn:aws:lambda:r:1:function:t", "End": true,
                  "Catch": [{"ErrorEquals": ["States.ALL"], "ResultPath": "$.err", "Next": "Done"}]},
            "Done": {"Type": "Pass", "End": true}}}"#;
        let stubs = serde_json::json!({"t": {"throws": {
            "error": "E".repeat(300),
            "cause": "c".repeat(40_000),
        }}});
        let r = run_blocking(request(definition, &stubs.to_string())).unwrap();
        assert_eq!(r.status, RunStatus::Succeeded, "{}", r.to_json());
        let err = &r.output["err"];
        assert_eq!(err["Error"].as_str().unwrap().chars().count(), 256);
        let cause = err["Cause"].as_str().unwrap();
        assert!(cause.len() <= 32_768, "{}", cause.len());
        assert!(cause.ends_with("(truncated)"));
    }

    #[test]
    fn invalid_definition_and_bad_name() {
        let r = run_blocking(request("{}", "{}")).unwrap();
        assert_eq!(r.status, RunStatus::InvalidDefinition);
        assert!(!r.errors.unwrap_or_default().is_empty());
        let mut req = request(
            r#"{"StartAt": "S", "States": {"S": {"Type": "Succeed"}}}"#,
            "{}",
        );
        req.execution_name = Some("a/b".into());
        assert!(matches!(
            run_blocking(req),
            Err(RunError::InvalidExecutionName { .. })
        ));
    }
}
