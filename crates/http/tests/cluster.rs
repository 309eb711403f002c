//! HTTP Tasks over NATS: a real nats-server, the cluster engine, and a
//! participant `Worker` serving the reserved handler with the real HTTP
//! handler (what `sagaflow coordinator` runs in-process).

mod common;

use std::time::Duration;

use serde_json::json;
use wiremock::matchers::{header, method, path};
use wiremock::{Mock, MockServer, ResponseTemplate};

use sagaflow_coordinator::cluster::client::ApiClient;
use sagaflow_coordinator::cluster::{Cluster, ClusterOptions};
use sagaflow_coordinator::resource::HTTP_INVOKE_HANDLER;
use sagaflow_http::{HttpConfig, HttpHandler};
use sagaflow_participant::Worker;
use sagaflow_protocol::Namespace;
use sagaflow_protocol::api::{ExecutionStatus, StartExecutionRequest};
use sagaflow_testkit::NatsServer;

use common::*;

const SAGA: &str = r#"{
  "StartAt": "Charge",
  "States": {
    "Charge": {
      "Type": "Task",
      "Resource": "arn:aws:states:::http:invoke",
      "Parameters": {
        "ApiEndpoint.$": "$.partner",
        "Method": "POST",
        "Authentication": {"ConnectionArn": "arn:aws:events:us-east-1:123456789012:connection/Partner/77aa"},
        "RequestBody": {"amount.$": "$.amount"}
      },
      "Retry": [{"ErrorEquals": ["States.Http.StatusCode.503"], "IntervalSeconds": 1, "MaxAttempts": 2}],
      "Catch": [{"ErrorEquals": ["States.Http.StatusCode.402"], "ResultPath": "$.error", "Next": "Refund"}],
      "ResultSelector": {"status.$": "$.StatusCode", "body.$": "$.ResponseBody"},
      "ResultPath": "$.charge",
      "End": true
    },
    "Refund": {"Type": "Pass", "Result": "refunded", "ResultPath": "$.compensation", "End": true}
  }
}"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http_tasks_run_over_nats_with_retry_and_catch() {
    let partner = MockServer::start().await;
    let basic = {
        use base64::Engine as _;
        format!(
            "Basic {}",
            base64::engine::general_purpose::STANDARD.encode(format!("saga:{PASSWORD}"))
        )
    };
    Mock::given(method("POST"))
        .and(path("/ok"))
        .and(header("authorization", basic.as_str()))
        .respond_with(ResponseTemplate::new(503))
        .up_to_n_times(1)
        .with_priority(1)
        .mount(&partner)
        .await;
    Mock::given(method("POST"))
        .and(path("/ok"))
        .and(header("authorization", basic.as_str()))
        .respond_with(ResponseTemplate::new(200).set_body_json(json!({"charge": "ch_7"})))
        .mount(&partner)
        .await;
    Mock::given(path("/declined"))
        .respond_with(ResponseTemplate::new(402).set_body_string("declined"))
        .mount(&partner)
        .await;

    let server = NatsServer::start().expect("nats-server");
    let nats = sagaflow_nats::connect(&server.url())
        .await
        .expect("connect");
    let mut options = ClusterOptions {
        partitions: 2,
        api: true,
        ..ClusterOptions::default()
    };
    options.settings.lease_ttl = Duration::from_secs(2);
    let cluster = Cluster::start(nats.clone(), options.clone())
        .await
        .expect("cluster");
    let handler = HttpHandler::new(
        HttpConfig::default(),
        connections("https://unused.example/token"),
    )
    .unwrap();
    let worker = Worker::builder(nats.clone())
        .settings(options.settings.clone())
        .grace_period(Duration::from_millis(200))
        .handler(HTTP_INVOKE_HANDLER, handler)
        .build()
        .await
        .expect("worker");
    let stop = worker.shutdown_handle();
    let running = tokio::spawn(worker.run());
    let api =
        ApiClient::new(nats.clone(), Namespace::default()).with_timeout(Duration::from_secs(10));
    api.create_state_machine("Payment", SAGA)
        .await
        .expect("deploy");

    for (name, route) in [("ok", "/ok"), ("declined", "/declined")] {
        let arn = api
            .start_execution(StartExecutionRequest {
                state_machine: "Payment".into(),
                version: None,
                name: Some(name.into()),
                input: Some(json!({"partner": format!("{}{route}", partner.uri()), "amount": 3})),
                traceparent: None,
            })
            .await
            .expect("start")
            .execution_arn;
        let done = api
            .wait_for_completion(&arn, Duration::from_secs(30))
            .await
            .expect("wait");
        assert_eq!(done.status, ExecutionStatus::Succeeded, "{name}: {done:?}");
        let output = done.output.expect("output");
        let history = api.execution_history(&arn).await.expect("history").events;
        let history_text = serde_json::to_string(&history).unwrap();
        assert_no_secret("history", &history_text);
        assert_no_secret("output", &output.to_string());
        if name == "ok" {
            assert_eq!(
                output["charge"],
                json!({"status": 200, "body": {"charge": "ch_7"}})
            );
            assert!(
                history_text.contains("States.Http.StatusCode.503"),
                "{history_text}"
            );
        } else {
            assert_eq!(output["compensation"], json!("refunded"));
            assert_eq!(
                output["error"]["Error"],
                json!("States.Http.StatusCode.402")
            );
        }
    }
    stop.shutdown();
    let _ = running.await;
    cluster.shutdown().await;
}
