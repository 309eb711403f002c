//! Spans and metrics reach an OTLP receiver over gRPC: an embedded travel
//! saga (no NATS) exported to `fake-opentelemetry-collector`.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use fake_opentelemetry_collector::FakeCollectorServer;
use serde_json::json;

use sagaflow_asl::interp::{ExecutionInfo, Outcome};
use sagaflow_asl::parse::parse_definition;
use sagaflow_coordinator::clock::SystemClock;
use sagaflow_coordinator::dispatch::EmbeddedDispatcher;
use sagaflow_coordinator::{Coordinator, RuntimeOptions};
use sagaflow_participant::stubs::Stubs;
use sagaflow_telemetry::{Config, Protocol};

const TRAVEL: &str = r#"{
  "StartAt": "BookFlight",
  "States": {
    "BookFlight": {"Type": "Task", "Resource": "book_flight", "ResultPath": "$.flight", "Next": "BookCar"},
    "BookCar": {"Type": "Task", "Resource": "book_car", "ResultPath": "$.car",
      "Catch": [{"ErrorEquals": ["States.ALL"], "ResultPath": "$.error", "Next": "CancelFlight"}],
      "End": true},
    "CancelFlight": {"Type": "Task", "Resource": "cancel_flight", "ResultPath": null, "Next": "BookingFailed"},
    "BookingFailed": {"Type": "Fail", "Error": "BookingFailed"}
  }
}"#;

const STUBS: &str = r#"{
  "book_flight": {"returns": {"confirmation": "F-1"}},
  "book_car": {"throws": {"error": "CarUnavailable", "cause": "none left"}},
  "cancel_flight": {"returns": {}}
}"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn spans_and_metrics_arrive_at_an_otlp_receiver() {
    let mut collector = FakeCollectorServer::start().await.expect("collector");
    let mut config = Config::from_lookup("travel-test", |_| None).expect("config");
    config.endpoint = Some(collector.endpoint());
    config.protocol = Protocol::Grpc;
    config.export_timeout = Duration::from_secs(5);
    let guard = sagaflow_telemetry::init_with(config).expect("telemetry");
    assert!(guard.exporting());

    let machine = Arc::new(parse_definition(TRAVEL).expect("definition"));
    let stubs = Stubs::from_str(STUBS).expect("stubs");
    let dispatcher = Arc::new(EmbeddedDispatcher::new(stubs.handlers()));
    let coordinator =
        Coordinator::new(Arc::new(SystemClock), dispatcher, RuntimeOptions::default());
    let info = ExecutionInfo {
        execution_id: "arn:aws:states:local:0:execution:travel:trip-1".into(),
        execution_name: "trip-1".into(),
        state_machine_id: "arn:aws:states:local:0:stateMachine:travel".into(),
        state_machine_name: "travel".into(),
        role_arn: String::new(),
        seed: 1,
        rules: sagaflow_asl::interp::RULES,
    };
    let run = coordinator
        .run(machine, info, json!({"to": "Lisbon"}))
        .await
        .expect("run");
    assert!(matches!(&run.outcome, Outcome::Failed { error, .. } if error == "BookingFailed"));
    let trace_id = run.trace_id.clone().expect("a trace id");
    assert!(guard.flush(), "the export finished");

    // execution, 4 states, 3 tasks, 3 handlers.
    let spans = collector.exported_spans(11, Duration::from_secs(20)).await;
    let names: Vec<&str> = spans.iter().map(|s| s.name.as_str()).collect();
    assert_eq!(spans.len(), 11, "{names:?}");
    assert!(spans.iter().all(|s| s.trace_id == trace_id), "{names:?}");
    let by_name: HashMap<&str, &fake_opentelemetry_collector::ExportedSpan> =
        spans.iter().map(|s| (s.name.as_str(), s)).collect();
    let execution = by_name["execution"];
    assert_eq!(execution.parent_span_id, "");
    // The receiver shows attribute values in their protobuf form.
    let attribute = |span: &fake_opentelemetry_collector::ExportedSpan, key: &str| {
        span.attributes.get(key).cloned().unwrap_or_default()
    };
    assert!(
        attribute(execution, "sagaflow.execution.status").contains("\"FAILED\""),
        "{:?}",
        execution.attributes
    );
    for state in ["BookFlight", "BookCar", "CancelFlight", "BookingFailed"] {
        let span = by_name[format!("state {state}").as_str()];
        assert_eq!(span.parent_span_id, execution.span_id, "{state}");
    }
    for (task, handler) in [
        ("BookFlight", "book_flight"),
        ("BookCar", "book_car"),
        ("CancelFlight", "cancel_flight"),
    ] {
        let state = by_name[format!("state {task}").as_str()];
        let task_span = by_name[format!("task {task}").as_str()];
        assert_eq!(task_span.parent_span_id, state.span_id, "{task}");
        let handler_span = by_name[format!("handler {handler}").as_str()];
        assert_eq!(handler_span.parent_span_id, task_span.span_id, "{handler}");
    }
    assert!(
        attribute(by_name["state CancelFlight"], "sagaflow.compensation")
            .contains("BoolValue(true)")
    );
    assert!(
        attribute(by_name["state BookFlight"], "sagaflow.compensation")
            .contains("BoolValue(false)")
    );
    assert!(
        by_name["task BookCar"]
            .events
            .iter()
            .any(|e| e.name == "exception")
    );

    let metrics = collector.exported_metrics(1, Duration::from_secs(20)).await;
    let metric_names: Vec<String> = metrics
        .iter()
        .flat_map(|m| m.metrics.iter().map(|m| m.name.clone()))
        .collect();
    for name in [
        "sagaflow.executions.started",
        "sagaflow.executions.failed",
        "sagaflow.executions.compensated",
        "sagaflow.task.duration",
    ] {
        assert!(
            metric_names.iter().any(|n| n == name),
            "{name} in {metric_names:?}"
        );
    }
    drop(guard);
}
