//! One trace per execution across coordinator and participant: a travel
//! booking saga over a real nats-server, coordinator and Worker in this
//! process but talking over NATS, spans caught by the SDK's in-memory
//! exporter.

mod common;

use std::collections::HashMap;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use opentelemetry::trace::{SpanId, Status, TraceId};
use opentelemetry::{KeyValue, Value as OtelValue};
use opentelemetry_sdk::trace::SpanData;
use serde_json::{Value, json};
use tracing::Instrument as _;

use sagaflow_participant::{TaskContext, TaskError, handler_fn};
use sagaflow_protocol::api::ExecutionStatus;
use sagaflow_telemetry::propagation::{format_traceparent, parse_traceparent};

use common::Env;

const TRAVEL: &str = r#"{
  "StartAt": "BookFlight",
  "States": {
    "BookFlight": {"Type": "Task", "Resource": "book_flight", "ResultPath": "$.flight", "Next": "BookHotel"},
    "BookHotel": {"Type": "Task", "Resource": "book_hotel", "ResultPath": "$.hotel", "Next": "BookCar"},
    "BookCar": {"Type": "Task", "Resource": "book_car", "ResultPath": "$.car",
      "Retry": [{"ErrorEquals": ["CarUnavailable"], "IntervalSeconds": 1, "MaxAttempts": 1}],
      "Catch": [{"ErrorEquals": ["States.ALL"], "ResultPath": "$.error", "Next": "CancelHotel"}],
      "Next": "Done"},
    "CancelHotel": {"Type": "Task", "Resource": "cancel_hotel", "ResultPath": null, "Next": "CancelFlight"},
    "CancelFlight": {"Type": "Task", "Resource": "cancel_flight", "ResultPath": null, "Next": "BookingFailed"},
    "BookingFailed": {"Type": "Fail", "Error": "BookingFailed", "Cause": "the car could not be booked"},
    "Done": {"Type": "Succeed"}
  }
}"#;

/// What each handler saw as `ctx.trace_parent`, by task id.
type Seen = Arc<Mutex<HashMap<String, Option<String>>>>;

fn attr<'a>(span: &'a SpanData, key: &str) -> Option<&'a OtelValue> {
    span.attributes
        .iter()
        .find(|kv: &&KeyValue| kv.key.as_str() == key)
        .map(|kv| &kv.value)
}

fn attr_str(span: &SpanData, key: &str) -> String {
    attr(span, key)
        .map(|v| v.as_str().to_string())
        .unwrap_or_default()
}

fn is_compensation(span: &SpanData) -> bool {
    matches!(
        attr(span, "sagaflow.compensation"),
        Some(OtelValue::Bool(true))
    )
}

fn event_names(span: &SpanData) -> Vec<String> {
    span.events.iter().map(|e| e.name.to_string()).collect()
}

fn one<'a>(spans: &'a [SpanData], name: &str) -> &'a SpanData {
    let found: Vec<&SpanData> = spans.iter().filter(|s| s.name == name).collect();
    assert_eq!(found.len(), 1, "spans named {name}: {:?}", names(spans));
    found[0]
}

fn names(spans: &[SpanData]) -> Vec<String> {
    spans.iter().map(|s| s.name.to_string()).collect()
}

/// The spans of one trace, once `expected` of them arrived (they arrive as
/// each span ends; the last ones right after the execution ends).
async fn trace_spans(
    exporter: &opentelemetry_sdk::trace::InMemorySpanExporter,
    trace: TraceId,
    expected: usize,
) -> Vec<SpanData> {
    let mut spans = Vec::new();
    for _ in 0..100 {
        spans = exporter
            .get_finished_spans()
            .expect("spans")
            .into_iter()
            .filter(|s| s.span_context.trace_id() == trace)
            .collect();
        if spans.len() >= expected {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    spans
}

/// The in-memory set-up, shared by the tests of this process.
fn telemetry() -> &'static sagaflow_telemetry::testing::Testing {
    static TESTING: OnceLock<sagaflow_telemetry::testing::Testing> = OnceLock::new();
    TESTING.get_or_init(sagaflow_telemetry::testing::init)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_saga_is_one_trace_across_coordinator_and_participant() {
    let telemetry = telemetry();
    let mut env = Env::start().await;
    let seen: Seen = Arc::default();
    let ok = |reply: Value, seen: Seen| {
        handler_fn(move |_: Value, ctx: TaskContext| {
            let reply = reply.clone();
            let seen = seen.clone();
            async move {
                seen.lock()
                    .unwrap()
                    .insert(ctx.task_id.clone(), ctx.trace_parent.clone());
                Ok::<Value, TaskError>(reply)
            }
        })
    };
    let failing = {
        let seen = seen.clone();
        handler_fn(move |_: Value, ctx: TaskContext| {
            let seen = seen.clone();
            async move {
                seen.lock()
                    .unwrap()
                    .insert(ctx.task_id.clone(), ctx.trace_parent.clone());
                Err::<Value, TaskError>(TaskError::new("CarUnavailable", "no car left in Lisbon"))
            }
        })
    };
    let s = seen.clone();
    env.worker(move |b| {
        b.handler("book_flight", ok(json!({"confirmation": "F-1"}), s.clone()))
            .handler("book_hotel", ok(json!({"confirmation": "H-1"}), s.clone()))
            .handler("book_car", failing)
            .handler("cancel_hotel", ok(json!({"cancelled": true}), s.clone()))
            .handler("cancel_flight", ok(json!({"cancelled": true}), s.clone()))
    })
    .await;
    env.deploy("travel", TRAVEL).await;

    // The caller starts the saga inside a span of its own: ApiClient sends
    // its context, the execution's trace hangs under it.
    let caller = tracing::info_span!("book a trip");
    let caller_tp = sagaflow_telemetry::propagation::span_traceparent(&caller)
        .expect("the caller's span is traced");
    let caller_sc = parse_traceparent(&caller_tp).unwrap();
    let arn = env
        .start_execution("travel", "trip-1", json!({"to": "Lisbon"}))
        .instrument(caller.clone())
        .await;
    drop(caller);
    let done = env.wait(&arn).await;
    assert_eq!(done.status, ExecutionStatus::Failed);
    assert_eq!(done.error.as_deref(), Some("BookingFailed"));
    let trace_id = done
        .trace_id
        .clone()
        .expect("a trace id in the description");
    assert_eq!(trace_id, caller_sc.trace_id().to_string());
    assert_eq!(env.describe(&arn).await.trace_id, Some(trace_id.clone()));

    let trace = caller_sc.trace_id();
    // execution + 6 states + 6 task attempts + 6 handlers (+ the caller).
    let spans = trace_spans(&telemetry.spans, trace, 20).await;
    let all = names(&spans);

    let execution = one(&spans, "execution");
    assert_eq!(execution.parent_span_id, caller_sc.span_id(), "{all:?}");
    assert_eq!(attr_str(execution, "sagaflow.execution.id"), arn);
    assert_eq!(attr_str(execution, "sagaflow.state_machine"), "travel");
    assert_eq!(attr_str(execution, "sagaflow.execution.status"), "FAILED");
    assert!(matches!(execution.status, Status::Error { .. }));
    let exec_id = execution.span_context.span_id();

    // States: children of the execution; the compensation path is marked.
    let states: Vec<&SpanData> = spans
        .iter()
        .filter(|s| s.name.starts_with("state "))
        .collect();
    let state_names: Vec<&str> = states.iter().map(|s| &s.name[6..]).collect();
    for name in [
        "BookFlight",
        "BookHotel",
        "BookCar",
        "CancelHotel",
        "CancelFlight",
        "BookingFailed",
    ] {
        assert!(state_names.contains(&name), "{all:?}");
    }
    assert_eq!(states.len(), 6, "{all:?}");
    for s in &states {
        assert_eq!(
            s.parent_span_id, exec_id,
            "{} is not under the execution",
            s.name
        );
        let compensating = ["CancelHotel", "CancelFlight", "BookingFailed"].contains(&&s.name[6..]);
        assert_eq!(is_compensation(s), compensating, "{}", s.name);
    }
    let book_car = one(&spans, "state BookCar");
    let car_events = event_names(book_car);
    assert!(car_events.contains(&"retry".to_string()), "{car_events:?}");
    assert!(
        car_events.contains(&"exception".to_string()),
        "{car_events:?}"
    );
    assert!(matches!(book_car.status, Status::Error { .. }));
    assert_eq!(
        one(&spans, "state BookFlight").status,
        Status::Ok,
        "a state that succeeded"
    );

    // Task attempts: children of their state; BookCar twice, each failing.
    let state_span: HashMap<&str, SpanId> = states
        .iter()
        .map(|s| (&s.name[6..], s.span_context.span_id()))
        .collect();
    let tasks: Vec<&SpanData> = spans
        .iter()
        .filter(|s| s.name.starts_with("task "))
        .collect();
    assert_eq!(tasks.len(), 6, "{all:?}");
    for t in &tasks {
        let state = &t.name[5..];
        assert_eq!(
            t.parent_span_id, state_span[state],
            "{} is not under its state",
            t.name
        );
        assert_eq!(attr_str(t, "sagaflow.state.name"), state);
        assert!(!attr_str(t, "sagaflow.task.id").is_empty());
        assert!(!attr_str(t, "sagaflow.task.resource").is_empty());
        assert_eq!(
            is_compensation(t),
            state.starts_with("Cancel"),
            "{}",
            t.name
        );
    }
    let mut car_attempts: Vec<i64> = tasks
        .iter()
        .filter(|t| t.name == "task BookCar")
        .map(|t| {
            assert_eq!(event_names(t), vec!["exception".to_string()]);
            let exception = &t.events[0];
            assert!(
                exception
                    .attributes
                    .iter()
                    .any(|kv| kv.key.as_str() == "exception.type"
                        && kv.value.as_str() == "CarUnavailable")
            );
            match attr(t, "sagaflow.task.attempt") {
                Some(OtelValue::I64(n)) => *n,
                other => panic!("attempt: {other:?}"),
            }
        })
        .collect();
    car_attempts.sort();
    assert_eq!(car_attempts, vec![0, 1]);

    // Handlers (participant side, over NATS): children of the task attempt
    // that sent them; the handler saw its own span as ctx.trace_parent.
    let task_by_id: HashMap<String, SpanId> = tasks
        .iter()
        .map(|t| (attr_str(t, "sagaflow.task.id"), t.span_context.span_id()))
        .collect();
    let handlers: Vec<&SpanData> = spans
        .iter()
        .filter(|s| s.name.starts_with("handler "))
        .collect();
    assert_eq!(handlers.len(), 6, "{all:?}");
    let seen = seen.lock().unwrap().clone();
    for h in &handlers {
        let task_id = attr_str(h, "sagaflow.task.id");
        assert_eq!(
            h.parent_span_id, task_by_id[&task_id],
            "{} {task_id}",
            h.name
        );
        // As the span table says: consumer, the attempt an integer.
        assert_eq!(
            h.span_kind,
            sagaflow_telemetry::opentelemetry::trace::SpanKind::Consumer,
            "{}",
            h.name
        );
        assert!(
            matches!(attr(h, "sagaflow.task.attempt"), Some(OtelValue::I64(_))),
            "{}: {:?}",
            h.name,
            attr(h, "sagaflow.task.attempt")
        );
        assert_eq!(
            seen.get(&task_id).cloned().flatten(),
            format_traceparent(&h.span_context),
            "ctx.trace_parent of {task_id}"
        );
    }

    // A start without a caller's context: the execution span is a root.
    let alone = env.run("travel", "trip-2", json!({"to": "Porto"})).await;
    let alone_trace = TraceId::from_hex(alone.trace_id.as_deref().expect("trace id")).unwrap();
    assert_ne!(alone_trace, trace);
    let spans = trace_spans(&telemetry.spans, alone_trace, 19).await;
    assert_eq!(one(&spans, "execution").parent_span_id, SpanId::INVALID);

    // Metrics went to the meter too.
    telemetry.flush_metrics();
    let exported = format!(
        "{:?}",
        telemetry.metrics.get_finished_metrics().expect("metrics")
    );
    for name in [
        "sagaflow.executions.started",
        "sagaflow.executions.failed",
        "sagaflow.executions.compensated",
        "sagaflow.executions.in_flight",
        "sagaflow.state.transitions",
        "sagaflow.task.duration",
        "sagaflow.task.retries",
    ] {
        assert!(exported.contains(name), "{name} missing");
    }
}

const GATED: &str = r#"{
  "StartAt": "First",
  "States": {
    "First": {"Type": "Task", "Resource": "quick", "ResultPath": "$.first", "Next": "Second"},
    "Second": {"Type": "Task", "Resource": "gated", "ResultPath": "$.second", "Next": "Third"},
    "Third": {"Type": "Task", "Resource": "quick", "ResultPath": "$.third", "End": true}
  }
}"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_trace_goes_on_after_the_execution_moves_to_another_coordinator() {
    let telemetry = telemetry();
    let mut env = Env::start().await;
    let entered = Arc::new(tokio::sync::Notify::new());
    let gate = Arc::new(tokio::sync::Semaphore::new(0));
    let (e, g) = (entered.clone(), gate.clone());
    env.worker(move |b| {
        b.handler(
            "quick",
            handler_fn(|_: Value, _: TaskContext| async { Ok::<_, TaskError>(json!("ok")) }),
        )
        .handler(
            "gated",
            handler_fn(move |_: Value, _: TaskContext| {
                let (e, g) = (e.clone(), g.clone());
                async move {
                    e.notify_one();
                    let _permit = g.acquire().await;
                    Ok::<_, TaskError>(json!("late"))
                }
            }),
        )
    })
    .await;
    env.deploy("gated", GATED).await;
    let arn = env.start_execution("gated", "moving", json!({})).await;
    entered.notified().await;

    // The first coordinator goes away while the task runs; another one
    // takes the execution over from its history.
    env.cluster.take().expect("cluster").shutdown().await;
    let second =
        sagaflow_coordinator::cluster::Cluster::start(env.nats.clone(), env.options.clone())
            .await
            .expect("second coordinator");
    env.cluster = Some(second);
    gate.add_permits(1);
    let done = env.wait(&arn).await;
    assert_eq!(done.status, ExecutionStatus::Succeeded);
    let trace = TraceId::from_hex(done.trace_id.as_deref().expect("trace id")).unwrap();

    // execution, 3 states, 3 tasks, 3 handlers: one trace, one tree.
    let spans = trace_spans(&telemetry.spans, trace, 10).await;
    let all = names(&spans);
    let execution = one(&spans, "execution");
    assert_eq!(execution.parent_span_id, SpanId::INVALID);
    let exec_id = execution.span_context.span_id();
    for state in ["First", "Second", "Third"] {
        let span = one(&spans, &format!("state {state}"));
        assert_eq!(span.parent_span_id, exec_id, "{state} in {all:?}");
        assert!(
            span.start_time >= execution.start_time,
            "{state} starts after the execution"
        );
    }
    // The task span ended by the second coordinator keeps the id and the
    // start the first one gave it: the handler (started under the first)
    // hangs under it.
    let second_state = one(&spans, "state Second");
    let second_task = one(&spans, "task Second");
    assert_eq!(
        second_task.parent_span_id,
        second_state.span_context.span_id()
    );
    let gated = one(&spans, "handler gated");
    assert_eq!(gated.parent_span_id, second_task.span_context.span_id());
    assert!(second_task.start_time <= gated.start_time);
    assert!(execution.start_time <= one(&spans, "state First").start_time);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn branch_states_hang_under_their_parallel_state_in_embedded_runs() {
    use sagaflow_asl::interp::ExecutionInfo;
    use sagaflow_coordinator::clock::SystemClock;
    use sagaflow_coordinator::dispatch::EmbeddedDispatcher;
    use sagaflow_coordinator::{Coordinator, RuntimeOptions};
    use sagaflow_participant::stubs::Stubs;

    let telemetry = telemetry();
    let definition = r#"{"StartAt": "Fanout", "States": {"Fanout": {"Type": "Parallel", "End": true,
        "Branches": [
          {"StartAt": "Hotel", "States": {"Hotel": {"Type": "Task", "Resource": "hotel", "End": true}}},
          {"StartAt": "Items", "States": {"Items": {"Type": "Map", "End": true, "ItemsPath": "$.items",
             "ItemProcessor": {"StartAt": "Item", "States": {"Item": {"Type": "Task", "Resource": "item", "End": true}}}}}}
        ]}}}"#;
    let machine = Arc::new(sagaflow_asl::parse::parse_definition(definition).expect("definition"));
    let stubs =
        Stubs::from_str(r#"{"hotel": {"returns": 1}, "item": {"echo": true}}"#).expect("stubs");
    let coordinator = Coordinator::new(
        Arc::new(SystemClock),
        Arc::new(EmbeddedDispatcher::new(stubs.handlers())),
        RuntimeOptions::default(),
    );
    let info = ExecutionInfo {
        execution_id: "exec:fanout".into(),
        execution_name: "fanout".into(),
        state_machine_id: "sm".into(),
        state_machine_name: "fanout".into(),
        role_arn: String::new(),
        seed: 7,
        rules: sagaflow_asl::interp::RULES,
    };
    let run = coordinator
        .run(machine, info, json!({"items": [1, 2]}))
        .await
        .expect("run");
    let trace = TraceId::from_hex(run.trace_id.as_deref().expect("trace id")).unwrap();
    // execution, Fanout, Hotel, Items, Item x2, 3 tasks, 3 handlers.
    let spans = trace_spans(&telemetry.spans, trace, 12).await;
    let all = names(&spans);
    assert_eq!(spans.len(), 12, "{all:?}");
    let fanout = one(&spans, "state Fanout");
    assert_eq!(
        fanout.parent_span_id,
        one(&spans, "execution").span_context.span_id()
    );
    let hotel = one(&spans, "state Hotel");
    assert_eq!(hotel.parent_span_id, fanout.span_context.span_id());
    let items = one(&spans, "state Items");
    assert_eq!(items.parent_span_id, fanout.span_context.span_id());
    let item_states: Vec<&SpanData> = spans.iter().filter(|s| s.name == "state Item").collect();
    assert_eq!(item_states.len(), 2);
    for s in &item_states {
        assert_eq!(s.parent_span_id, items.span_context.span_id());
    }
    let item_ids: Vec<SpanId> = item_states
        .iter()
        .map(|s| s.span_context.span_id())
        .collect();
    assert_ne!(item_ids[0], item_ids[1]);
    for t in spans.iter().filter(|s| s.name == "task Item") {
        assert!(item_ids.contains(&t.parent_span_id), "{all:?}");
    }
    // Embedded handler spans are consumers too, their attempt an integer.
    for h in spans.iter().filter(|s| s.name.starts_with("handler ")) {
        assert_eq!(
            h.span_kind,
            sagaflow_telemetry::opentelemetry::trace::SpanKind::Consumer,
            "{}",
            h.name
        );
        assert!(matches!(
            attr(h, "sagaflow.task.attempt"),
            Some(OtelValue::I64(_))
        ));
    }
    assert_eq!(
        one(&spans, "task Hotel").parent_span_id,
        hotel.span_context.span_id()
    );
    for h in spans.iter().filter(|s| s.name.starts_with("handler ")) {
        assert!(
            spans.iter().any(
                |t| t.name.starts_with("task ") && t.span_context.span_id() == h.parent_span_id
            ),
            "{} has no task parent",
            h.name
        );
    }
}

/// Drives the pure interpreter through the travel saga (car fails twice),
/// feeding `traces` in turn: `switch_at` is the step from which the second
/// trace (resumed from the first's stored context, after replaying the
/// earlier steps) takes over, as a coordinator that takes an execution over.
fn drive_travel(switch_at: Option<usize>) -> (TraceId, usize) {
    use sagaflow_asl::interp::{Command, Event, Execution, ExecutionInfo, Options};
    use sagaflow_telemetry::ExecutionTrace;

    let machine = Arc::new(sagaflow_asl::parse::parse_definition(TRAVEL).expect("definition"));
    let mut exec = Execution::new(machine, Options::default());
    let info = ExecutionInfo {
        execution_id: "arn:exec:moving".into(),
        execution_name: "moving".into(),
        state_machine_id: "sm".into(),
        state_machine_name: "travel".into(),
        role_arn: String::new(),
        seed: 1,
        rules: sagaflow_asl::interp::RULES,
    };
    let mut first = ExecutionTrace::start("arn:exec:moving", "travel", None).expect("enabled");
    let stored = first.traceparent();
    let mut second: Option<ExecutionTrace> = None;
    let mut log: Vec<(jiff::Timestamp, Event, Vec<Command>)> = Vec::new();
    let mut at: jiff::Timestamp = "2025-01-01T00:00:00Z".parse().unwrap();
    let mut queue = vec![Event::ExecutionStarted {
        info,
        input: json!({}),
    }];
    let mut step = 0;
    while let Some(event) = queue.pop() {
        let mut out = Vec::new();
        exec.apply(at, event.clone(), &mut out).expect("apply");
        for c in &out {
            match c {
                Command::ScheduleTask(t) if &*t.resource == "book_car" => {
                    queue.push(Event::TaskFailed {
                        task_id: t.task_id.to_string(),
                        error: "CarUnavailable".into(),
                        cause: "none".into(),
                    })
                }
                Command::ScheduleTask(t) => queue.push(Event::TaskSucceeded {
                    task_id: t.task_id.to_string(),
                    output: json!("ok"),
                }),
                Command::StartTimer { timer_id, .. } => queue.push(Event::TimerFired {
                    timer_id: timer_id.clone(),
                }),
                _ => {}
            }
        }
        log.push((at, event.clone(), out.clone()));
        if Some(step) == switch_at {
            // The first owner goes away with its open spans; the next one
            // rebuilds them from the history so far.
            let mut t = ExecutionTrace::resume(&stored, None, "arn:exec:moving", "travel")
                .expect("resumed");
            for (at, event, out) in &log[..log.len() - 1] {
                t.observe(*at, event, out, false);
            }
            second = Some(t);
        }
        let current = second.as_mut().unwrap_or(&mut first);
        current.observe(at, &event, &out, true);
        current.emit_ready();
        at += jiff::SignedDuration::from_secs(1);
        step += 1;
    }
    (TraceId::from_hex(&first.trace_id()).unwrap(), step)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_resumed_trace_emits_what_the_first_owner_would_have() {
    let telemetry = telemetry();
    let shape = |spans: &[SpanData]| {
        // Ids are random per execution: compare the tree by names, parents'
        // names and times.
        let name_of: HashMap<SpanId, String> = spans
            .iter()
            .map(|s| (s.span_context.span_id(), s.name.to_string()))
            .collect();
        let mut shape: Vec<(
            String,
            String,
            std::time::SystemTime,
            std::time::SystemTime,
            bool,
        )> = spans
            .iter()
            .map(|s| {
                (
                    s.name.to_string(),
                    name_of.get(&s.parent_span_id).cloned().unwrap_or_default(),
                    s.start_time,
                    s.end_time,
                    is_compensation(s),
                )
            })
            .collect();
        shape.sort_by(|a, b| (&a.0, &a.1, a.2).cmp(&(&b.0, &b.1, b.2)));
        shape
    };
    let (whole, steps) = drive_travel(None);
    let reference = shape(&trace_spans(&telemetry.spans, whole, 13).await);
    assert_eq!(reference.len(), 13, "{reference:?}");
    for switch in 1..steps {
        let (moved, _) = drive_travel(Some(switch));
        let spans = trace_spans(&telemetry.spans, moved, 13).await;
        assert_eq!(shape(&spans), reference, "taken over at step {switch}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn heartbeats_carry_the_handlers_trace_context() {
    use futures::StreamExt as _;
    let _telemetry = telemetry();
    let mut env = Env::start().await;
    env.worker(|b| {
        b.handler(
            "beating",
            handler_fn(|_: Value, ctx: TaskContext| async move {
                ctx.heartbeat().await;
                tokio::time::sleep(Duration::from_millis(100)).await;
                Ok::<Value, TaskError>(json!({"beat": true}))
            }),
        )
    })
    .await;
    env.deploy(
        "beats",
        r#"{"StartAt": "Work", "States": {"Work": {"Type": "Task", "Resource": "beating", "HeartbeatSeconds": 30, "End": true}}}"#,
    )
    .await;
    // Heartbeats go to the execution's inbox; watch it.
    let mut inbox = env
        .nats
        .subscribe(env.options.settings.namespace.inbox_wildcard())
        .await
        .expect("subscribe");
    env.nats.flush().await.expect("flush");
    let done = env.run("beats", "b1", json!({})).await;
    assert_eq!(done.status, ExecutionStatus::Succeeded);
    let trace_id = done.trace_id.clone().expect("traced");
    let beat = tokio::time::timeout(Duration::from_secs(10), async {
        while let Some(m) = inbox.next().await {
            let text = String::from_utf8_lossy(&m.payload).to_string();
            if text.contains("TaskHeartbeat") {
                return m;
            }
        }
        panic!("the subscription ended");
    })
    .await
    .expect("a heartbeat in the inbox");
    let tp = beat
        .headers
        .as_ref()
        .and_then(|h| h.get("traceparent"))
        .map(|v| v.as_str().to_string())
        .expect("a traceparent header on the heartbeat");
    let sc = parse_traceparent(&tp).expect("a valid traceparent");
    assert_eq!(sc.trace_id().to_string(), trace_id);
    env.shutdown().await;
}
