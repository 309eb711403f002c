//! The spans of states inside Parallel branches and Map iterations that
//! fail or are aborted: the pure interpreter driven one event a second, its
//! events and commands fed to an `ExecutionTrace`, the spans caught by the
//! SDK's in-memory exporter.

use std::collections::VecDeque;
use std::sync::{Arc, OnceLock};
use std::time::{Duration, SystemTime};

use opentelemetry::trace::{Status, TraceId};
use opentelemetry_sdk::trace::SpanData;
use sagaflow_asl::interp::{Command, Event, Execution, ExecutionInfo, Options, Timestamp};
use sagaflow_telemetry::ExecutionTrace;
use sagaflow_telemetry::testing::Testing;
use serde_json::{Value, json};

/// 2025-01-01T00:00:00Z: step `n` of a run happens `n` seconds later.
const START: i64 = 1_735_689_600;

const CAUSE: &str = "the branch broke";

/// The in-memory set-up, shared by the tests of this process.
fn telemetry() -> &'static Testing {
    static TESTING: OnceLock<Testing> = OnceLock::new();
    TESTING.get_or_init(sagaflow_telemetry::testing::init)
}

fn step_time(step: u64) -> SystemTime {
    SystemTime::UNIX_EPOCH + Duration::from_secs(START as u64 + step)
}

/// Runs `definition`, one event a second: tasks of resource `boom` fail
/// with `Boom`, tasks of resource `slow` never answer, timers fire. Returns
/// the trace's id.
fn drive(name: &str, definition: &str, input: Value) -> TraceId {
    telemetry();
    let machine = Arc::new(sagaflow_asl::parse::parse_definition(definition).expect("definition"));
    let mut exec = Execution::new(machine, Options::default());
    let execution_id = format!("arn:exec:{name}");
    let mut trace = ExecutionTrace::start(&execution_id, name, None).expect("enabled");
    let info = ExecutionInfo {
        execution_id: execution_id.clone(),
        execution_name: name.into(),
        state_machine_id: "sm".into(),
        state_machine_name: name.into(),
        role_arn: String::new(),
        seed: 1,
        rules: sagaflow_asl::interp::RULES,
    };
    let mut queue = VecDeque::from([Event::ExecutionStarted { info, input }]);
    let mut step = 0;
    while let Some(event) = queue.pop_front() {
        let at = Timestamp::from_second(START + step).expect("timestamp");
        let mut out = Vec::new();
        exec.apply(at, event.clone(), &mut out).expect("apply");
        for c in &out {
            match c {
                Command::ScheduleTask(t) if &*t.resource == "boom" => {
                    queue.push_back(Event::TaskFailed {
                        task_id: t.task_id.to_string(),
                        error: "Boom".into(),
                        cause: CAUSE.into(),
                    });
                }
                Command::StartTimer { timer_id, .. } => queue.push_back(Event::TimerFired {
                    timer_id: timer_id.clone(),
                }),
                _ => {}
            }
        }
        trace.observe(at, &event, &out, true);
        trace.emit_ready();
        step += 1;
    }
    TraceId::from_hex(&trace.trace_id()).expect("trace id")
}

/// The spans of one trace, once the execution span has ended.
fn trace_spans(trace: TraceId) -> Vec<SpanData> {
    let mut spans = Vec::new();
    for _ in 0..100 {
        spans = telemetry()
            .spans
            .get_finished_spans()
            .expect("spans")
            .into_iter()
            .filter(|s| s.span_context.trace_id() == trace)
            .collect();
        if spans.iter().any(|s| s.name == "execution") {
            break;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    spans
}

fn attr(span: &SpanData, key: &str) -> Option<String> {
    span.attributes
        .iter()
        .find(|kv| kv.key.as_str() == key)
        .map(|kv| kv.value.as_str().to_string())
}

fn named<'a>(spans: &'a [SpanData], name: &str) -> Vec<&'a SpanData> {
    let mut found: Vec<&SpanData> = spans.iter().filter(|s| s.name == name).collect();
    found.sort_by_key(|s| s.start_time);
    found
}

/// `exception` events of a span, as `(exception.type, exception.message)`.
fn exceptions(span: &SpanData) -> Vec<(String, Option<String>)> {
    span.events
        .iter()
        .filter(|e| e.name == "exception")
        .map(|e| {
            let get = |key: &str| {
                e.attributes
                    .iter()
                    .find(|kv| kv.key.as_str() == key)
                    .map(|kv| kv.value.as_str().to_string())
            };
            (
                get("exception.type").unwrap_or_default(),
                get("exception.message"),
            )
        })
        .collect()
}

fn describe(spans: &[SpanData]) -> Vec<String> {
    spans
        .iter()
        .map(|s| {
            format!(
                "{} path={:?} end={:?} status={:?} events={:?}",
                s.name,
                attr(s, "sagaflow.state.path"),
                s.end_time
                    .duration_since(step_time(0))
                    .map(|d| d.as_millis())
                    .unwrap_or_default(),
                s.status,
                s.events
                    .iter()
                    .map(|e| e.name.to_string())
                    .collect::<Vec<_>>()
            )
        })
        .collect()
}

/// A state that failed inside a branch: status error, an `exception` event,
/// ended when it failed.
fn assert_failed_at(span: &SpanData, step: u64, all: &[String]) {
    assert_eq!(span.status, Status::error("Boom"), "{all:#?}");
    assert_eq!(
        exceptions(span),
        vec![("Boom".to_string(), Some(CAUSE.to_string()))],
        "{all:#?}"
    );
    assert_eq!(span.end_time, step_time(step), "{all:#?}");
}

/// A state of an aborted branch: ended with the abort, unset, no exception.
fn assert_aborted_at(span: &SpanData, step: u64, all: &[String]) {
    assert_eq!(span.status, Status::Unset, "{all:#?}");
    assert!(exceptions(span).is_empty(), "{all:#?}");
    assert_eq!(span.end_time, step_time(step), "{all:#?}");
}

#[test]
fn states_of_a_failed_parallel_branch_end_when_it_fails() {
    let definition = r#"{"StartAt": "P", "States": {
        "P": {"Type": "Parallel", "Next": "Done",
          "Branches": [
            {"StartAt": "A", "States": {"A": {"Type": "Task", "Resource": "slow", "End": true}}},
            {"StartAt": "B", "States": {"B": {"Type": "Task", "Resource": "boom", "End": true}}}
          ],
          "Retry": [{"ErrorEquals": ["Boom"], "IntervalSeconds": 1, "MaxAttempts": 1}],
          "Catch": [{"ErrorEquals": ["States.ALL"], "Next": "Handled"}]},
        "Handled": {"Type": "Pass", "End": true},
        "Done": {"Type": "Succeed"}
    }}"#;
    // Step 0: P, A and B entered; 1: B fails, A aborted, retry scheduled;
    // 2: the retry timer fires, A and B entered again; 3: B fails, A
    // aborted, the Catch goes to Handled, the execution succeeds.
    let trace = drive("parallel", definition, json!({}));
    let spans = trace_spans(trace);
    let all = describe(&spans);

    let p = named(&spans, "state P");
    assert_eq!(p.len(), 1, "{all:#?}");
    let p = p[0];
    assert_eq!(p.end_time, step_time(3), "{all:#?}");
    assert_eq!(
        p.status,
        Status::error("Boom: caught, next Handled"),
        "{all:#?}"
    );

    let b = named(&spans, "state B");
    assert_eq!(b.len(), 2, "{all:#?}");
    assert_eq!(
        attr(b[0], "sagaflow.state.path").as_deref(),
        Some("P@0#0[1]/B")
    );
    assert_eq!(
        attr(b[1], "sagaflow.state.path").as_deref(),
        Some("P@0#1[1]/B")
    );
    assert_failed_at(b[0], 1, &all);
    assert_failed_at(b[1], 3, &all);

    let a = named(&spans, "state A");
    assert_eq!(a.len(), 2, "{all:#?}");
    assert_aborted_at(a[0], 1, &all);
    assert_aborted_at(a[1], 3, &all);

    for s in b.iter().chain(&a) {
        assert_eq!(s.parent_span_id, p.span_context.span_id(), "{all:#?}");
    }
}

#[test]
fn states_of_a_failed_map_iteration_end_when_it_fails() {
    let definition = r#"{"StartAt": "M", "States": {
        "M": {"Type": "Map", "End": true,
          "ItemProcessor": {"StartAt": "Pick", "States": {
            "Pick": {"Type": "Choice",
              "Choices": [{"Variable": "$", "NumericEquals": 1, "Next": "Hold"}],
              "Default": "Charge"},
            "Hold": {"Type": "Task", "Resource": "slow", "End": true},
            "Charge": {"Type": "Task", "Resource": "boom", "End": true}}},
          "Catch": [{"ErrorEquals": ["States.ALL"], "Next": "Handled"}]},
        "Handled": {"Type": "Pass", "End": true}
    }}"#;
    // Step 0: M entered, item 1 holds, item 2 charges; 1: the charge fails,
    // item 1 is aborted, the Catch goes to Handled.
    let trace = drive("map", definition, json!([1, 2]));
    let spans = trace_spans(trace);
    let all = describe(&spans);

    let charge = named(&spans, "state Charge");
    assert_eq!(charge.len(), 1, "{all:#?}");
    assert_eq!(
        attr(charge[0], "sagaflow.state.path").as_deref(),
        Some("M@0#0[1]/Charge")
    );
    assert_failed_at(charge[0], 1, &all);

    let hold = named(&spans, "state Hold");
    assert_eq!(hold.len(), 1, "{all:#?}");
    assert_aborted_at(hold[0], 1, &all);
}

#[test]
fn an_uncaught_failure_fails_the_states_it_went_through() {
    let definition = r#"{"StartAt": "Outer", "States": {
        "Outer": {"Type": "Parallel", "End": true,
          "Branches": [
            {"StartAt": "Wait", "States": {"Wait": {"Type": "Task", "Resource": "slow", "End": true}}},
            {"StartAt": "Inner", "States": {"Inner": {"Type": "Parallel", "End": true,
              "Branches": [
                {"StartAt": "Hold", "States": {"Hold": {"Type": "Task", "Resource": "slow", "End": true}}},
                {"StartAt": "B", "States": {"B": {"Type": "Task", "Resource": "boom", "End": true}}}
              ]}}}
          ]}
    }}"#;
    // Step 0: everything entered; 1: B fails, Hold and Wait are aborted,
    // Inner and Outer fail, the execution fails.
    let trace = drive("nested", definition, json!({}));
    let spans = trace_spans(trace);
    let all = describe(&spans);

    for name in ["state B", "state Inner", "state Outer", "execution"] {
        let found = named(&spans, name);
        assert_eq!(found.len(), 1, "{name}: {all:#?}");
        assert_failed_at(found[0], 1, &all);
    }
    for name in ["state Hold", "state Wait"] {
        let found = named(&spans, name);
        assert_eq!(found.len(), 1, "{name}: {all:#?}");
        assert_aborted_at(found[0], 1, &all);
    }
    let inner = named(&spans, "state Inner")[0];
    assert_eq!(
        named(&spans, "state B")[0].parent_span_id,
        inner.span_context.span_id()
    );
}

/// A task that does not answer within its `TimeoutSeconds` fails with
/// `States.Timeout`: its span says so (an error status and an `exception`
/// event, like any failed attempt), and so does its state's; a task the
/// interpreter cancels for another reason (its branch aborted) stays unset.
#[test]
fn a_task_that_times_out_is_a_failed_attempt() {
    let definition = r#"{"StartAt": "P", "States": {
        "P": {"Type": "Parallel", "End": true,
          "Branches": [
            {"StartAt": "Hold", "States": {"Hold": {"Type": "Task", "Resource": "slow", "TimeoutSeconds": 60, "End": true}}},
            {"StartAt": "Late", "States": {"Late": {"Type": "Task", "Resource": "slow", "TimeoutSeconds": 5, "End": true}}}
          ],
          "Catch": [{"ErrorEquals": ["States.ALL"], "Next": "Handled"}]},
        "Handled": {"Type": "Pass", "End": true}
    }}"#;
    // Step 0: both tasks scheduled, their timeout timers armed. The driver
    // fires timers one a step, in the order they were armed: Hold's first,
    // which fails the Parallel; Late's task is cancelled with its branch.
    let trace = drive("timeout", definition, json!({}));
    let spans = trace_spans(trace);
    let all = describe(&spans);
    let timed_out: Vec<&SpanData> = spans
        .iter()
        .filter(|s| s.name.starts_with("task "))
        .filter(|s| s.status == Status::error("States.Timeout"))
        .collect();
    assert_eq!(timed_out.len(), 1, "{all:#?}");
    let (error, cause) = exceptions(timed_out[0]).pop().expect("an exception event");
    assert_eq!(error, "States.Timeout");
    assert!(
        cause.is_some_and(|c| c.contains("did not complete within its TimeoutSeconds")),
        "{all:#?}"
    );
    // The other branch's task was cancelled with its branch: unset.
    let cancelled: Vec<&SpanData> = spans
        .iter()
        .filter(|s| s.name.starts_with("task ") && s.status == Status::Unset)
        .collect();
    assert_eq!(cancelled.len(), 1, "{all:#?}");
    assert!(exceptions(cancelled[0]).is_empty(), "{all:#?}");
}
