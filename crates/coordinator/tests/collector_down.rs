//! A collector that is down costs nothing but the spans: the saga runs over
//! NATS to its end, and stopping telemetry does not hang.

mod common;

use std::time::Duration;

use serde_json::{Value, json};

use sagaflow_participant::{TaskContext, TaskError, handler_fn};
use sagaflow_protocol::api::ExecutionStatus;
use sagaflow_telemetry::{Config, Protocol};

use common::Env;

const SAGA: &str = r#"{
  "StartAt": "BookFlight",
  "States": {
    "BookFlight": {"Type": "Task", "Resource": "book_flight", "ResultPath": "$.flight", "Next": "BookCar"},
    "BookCar": {"Type": "Task", "Resource": "book_car",
      "Catch": [{"ErrorEquals": ["States.ALL"], "ResultPath": "$.error", "Next": "CancelFlight"}],
      "End": true},
    "CancelFlight": {"Type": "Task", "Resource": "cancel_flight", "End": true}
  }
}"#;

fn refused_endpoint() -> String {
    // A port that was free a moment ago: nothing listens there.
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let port = listener.local_addr().expect("addr").port();
    drop(listener);
    format!("http://127.0.0.1:{port}")
}

async fn run_sagas(protocol: Protocol) {
    let mut config = Config::from_lookup("down-test", |_| None).expect("config");
    config.endpoint = Some(refused_endpoint());
    config.protocol = protocol;
    config.export_timeout = Duration::from_millis(500);
    let guard = sagaflow_telemetry::init_with(config).expect("telemetry");

    let mut env = Env::start().await;
    env.worker(|b| {
        b.handler(
            "book_flight",
            handler_fn(|_: Value, _: TaskContext| async { Ok::<_, TaskError>(json!("F-1")) }),
        )
        .handler(
            "book_car",
            handler_fn(|_: Value, _: TaskContext| async {
                Err::<Value, _>(TaskError::new("CarUnavailable", "none left"))
            }),
        )
        .handler(
            "cancel_flight",
            handler_fn(|_: Value, _: TaskContext| async { Ok::<_, TaskError>(json!({})) }),
        )
    })
    .await;
    env.deploy("trip", SAGA).await;
    for i in 0..20 {
        let done = env.run("trip", &format!("trip-{i}"), json!({})).await;
        assert_eq!(done.status, ExecutionStatus::Succeeded);
        assert!(done.trace_id.is_some(), "traced although nothing receives");
    }
    // Nothing could be delivered.
    let flushed = tokio::task::spawn_blocking(move || {
        let flushed = guard.flush();
        drop(guard);
        flushed
    })
    .await
    .expect("flush");
    assert!(!flushed, "an export to a closed port cannot succeed");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_collector_that_is_down_never_blocks_a_saga() {
    // The limit only turns a hang into a failure.
    tokio::time::timeout(Duration::from_secs(120), run_sagas(Protocol::Grpc))
        .await
        .expect("no hang");
    // Same with OTLP over HTTP (a fresh set-up replaces the first).
    tokio::time::timeout(Duration::from_secs(120), run_sagas(Protocol::HttpProtobuf))
        .await
        .expect("no hang");
}
