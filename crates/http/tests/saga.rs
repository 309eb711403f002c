//! HTTP Tasks end to end in embedded mode: the interpreter, the embedded
//! driver and dispatcher, the real handler and a loopback partner API.
//! Retry and Catch act on `States.Http.StatusCode.NNN`; no secret reaches
//! the history or the logs.

mod common;

use std::sync::Arc;

use serde_json::{Value, json};
use wiremock::matchers::{header, method, path};
use wiremock::{Mock, MockServer, ResponseTemplate};

use sagaflow_asl::interp::{ExecutionInfo, Outcome};
use sagaflow_asl::parse::parse_definition;
use sagaflow_coordinator::clock::SystemClock;
use sagaflow_coordinator::dispatch::EmbeddedDispatcher;
use sagaflow_coordinator::driver::{Coordinator, ExecutionRun, RuntimeOptions};
use sagaflow_coordinator::local::{RunRequest, RunStatus, run_with_handlers};
use sagaflow_coordinator::resource::HTTP_INVOKE_HANDLER;
use sagaflow_http::{HttpConfig, HttpHandler};
use sagaflow_participant::Handler;
use sagaflow_participant::stubs::Stubs;

use common::*;

/// Reserve (Pass) -> Charge (HTTP, retried on 503, 402 caught) -> Done;
/// the catch compensates (Release) and fails.
const SAGA: &str = r#"{
  "StartAt": "Reserve",
  "States": {
    "Reserve": {"Type": "Pass", "Result": {"reserved": true}, "ResultPath": "$.reservation", "Next": "Charge"},
    "Charge": {
      "Type": "Task",
      "Resource": "arn:aws:states:::http:invoke",
      "Parameters": {
        "ApiEndpoint.$": "$.partner",
        "Method": "POST",
        "Authentication": {"ConnectionArn": "arn:aws:events:us-east-1:123456789012:connection/Keyed/5b2c"},
        "RequestBody": {"amount.$": "$.amount"}
      },
      "Retry": [{"ErrorEquals": ["States.Http.StatusCode.503"], "IntervalSeconds": 1, "MaxAttempts": 2, "BackoffRate": 1}],
      "Catch": [{"ErrorEquals": ["States.Http.StatusCode.402"], "ResultPath": "$.error", "Next": "Release"}],
      "ResultSelector": {"status.$": "$.StatusCode", "charge.$": "$.ResponseBody"},
      "ResultPath": "$.charge",
      "End": true
    },
    "Release": {"Type": "Pass", "Result": "released", "ResultPath": "$.compensation", "Next": "Declined"},
    "Declined": {"Type": "Fail", "Error": "PaymentDeclined", "Cause": "the partner declined the charge"}
  }
}"#;

fn info(name: &str) -> ExecutionInfo {
    ExecutionInfo {
        execution_id: format!("arn:aws:states:us-east-1:123456789012:execution:Saga:{name}"),
        execution_name: name.into(),
        state_machine_id: "arn:aws:states:us-east-1:123456789012:stateMachine:Saga".into(),
        state_machine_name: "Saga".into(),
        role_arn: String::new(),
        seed: 7,
        rules: sagaflow_asl::interp::RULES,
    }
}

/// An embedded coordinator serving HTTP Tasks with the real handler.
fn http_coordinator(options: RuntimeOptions) -> Coordinator {
    let handler: Arc<dyn Handler> = Arc::new(
        HttpHandler::new(
            HttpConfig::default(),
            connections("https://unused.example/token"),
        )
        .unwrap(),
    );
    let dispatcher = Arc::new(EmbeddedDispatcher::new([(
        HTTP_INVOKE_HANDLER.to_string(),
        handler,
    )]));
    Coordinator::new(Arc::new(SystemClock), dispatcher, options)
}

async fn run_saga(partner: &str, name: &str) -> ExecutionRun {
    let coordinator = http_coordinator(RuntimeOptions {
        record_payloads: true,
        ..RuntimeOptions::default()
    });
    let machine = Arc::new(parse_definition(SAGA).unwrap());
    coordinator
        .run(
            machine,
            info(name),
            json!({"partner": partner, "amount": 120}),
        )
        .await
        .unwrap()
}

/// A slow partner and the state's TimeoutSeconds: `States.Timeout`, as on
/// AWS, every run (not the call's own cut-off, `States.Http.Socket`).
#[tokio::test]
async fn a_task_timeout_on_an_http_task_is_states_timeout() {
    let server = MockServer::start().await;
    Mock::given(path("/slow"))
        .respond_with(ResponseTemplate::new(200).set_delay(std::time::Duration::from_secs(30)))
        .mount(&server)
        .await;
    let definition = json!({
        "StartAt": "Call",
        "States": {"Call": {
            "Type": "Task",
            "Resource": "arn:aws:states:::http:invoke",
            "Parameters": {"ApiEndpoint": format!("{}/slow", server.uri()), "Method": "GET"},
            "TimeoutSeconds": 1,
            "End": true
        }}
    })
    .to_string();
    let coordinator = http_coordinator(RuntimeOptions::default());
    let machine = Arc::new(parse_definition(&definition).unwrap());
    for run in 0..3 {
        let done = coordinator
            .run(machine.clone(), info(&format!("t{run}")), json!({}))
            .await
            .unwrap();
        match &done.outcome {
            Outcome::Failed { error, .. } => assert_eq!(error, "States.Timeout", "run {run}"),
            other => panic!("run {run}: {other:?}"),
        }
    }
}

fn history_text(run: &ExecutionRun) -> String {
    serde_json::to_string(&run.history).unwrap()
}

#[tokio::test]
async fn retried_on_503_then_succeeds() {
    let server = MockServer::start().await;
    Mock::given(method("POST"))
        .and(path("/charges"))
        .and(header("x-api-key", API_KEY))
        .respond_with(ResponseTemplate::new(503).set_body_string("busy"))
        .up_to_n_times(1)
        .with_priority(1)
        .expect(1)
        .mount(&server)
        .await;
    Mock::given(method("POST"))
        .and(path("/charges"))
        .respond_with(
            ResponseTemplate::new(200).set_body_json(json!({"charge": "ch_9", "amount": 120})),
        )
        .expect(1)
        .mount(&server)
        .await;
    let capture = LogCapture::default();
    let _guard = tracing::subscriber::set_default(capturing_subscriber(&capture));
    // Other tests of this binary run on other threads without a
    // subscriber: make sure no callsite stays cached as uninteresting.
    tracing::callsite::rebuild_interest_cache();
    let run = run_saga(&format!("{}/charges", server.uri()), "ok").await;
    let Outcome::Succeeded { output } = &run.outcome else {
        panic!("{:?}", run.outcome)
    };
    assert_eq!(
        output["charge"],
        json!({"status": 200, "charge": {"charge": "ch_9", "amount": 120}})
    );
    // Both attempts carried the amount; their idempotency keys differ by attempt.
    let requests = server.received_requests().await.unwrap();
    assert_eq!(requests.len(), 2);
    let keys: Vec<&str> = requests
        .iter()
        .map(|r| r.headers.get("idempotency-key").unwrap().to_str().unwrap())
        .collect();
    assert!(
        keys[0].contains("execution:Saga:ok/Charge@") && keys[0].ends_with("#0"),
        "{keys:?}"
    );
    assert_eq!(keys[1], keys[0].replace("#0", "#1"));
    let body: Value = serde_json::from_slice(&requests[1].body).unwrap();
    assert_eq!(body, json!({"amount": 120}));
    let history = history_text(&run);
    assert!(history.contains("States.Http.StatusCode.503"), "{history}");
    assert_no_secret("history", &history);
    assert_no_secret("logs", &capture.text());
}

#[tokio::test]
async fn a_402_is_caught_and_compensated() {
    let server = MockServer::start().await;
    Mock::given(path("/charges"))
        .respond_with(
            ResponseTemplate::new(402).set_body_json(json!({"reason": "insufficient funds"})),
        )
        .expect(1)
        .mount(&server)
        .await;
    let run = run_saga(&format!("{}/charges", server.uri()), "declined").await;
    let Outcome::Failed { error, cause } = &run.outcome else {
        panic!("{:?}", run.outcome)
    };
    assert_eq!(error, "PaymentDeclined");
    assert_eq!(cause, "the partner declined the charge");
    let history = history_text(&run);
    // The compensation ran with the caught error.
    assert!(history.contains("Release"), "{history}");
    assert!(history.contains("insufficient funds"), "{history}");
    assert_no_secret("history", &history);
}

#[tokio::test]
async fn retries_exhausted_on_503_fail_the_execution() {
    let server = MockServer::start().await;
    Mock::given(path("/charges"))
        .respond_with(ResponseTemplate::new(503))
        .expect(3)
        .mount(&server)
        .await;
    let run = run_saga(&format!("{}/charges", server.uri()), "down").await;
    let Outcome::Failed { error, .. } = &run.outcome else {
        panic!("{:?}", run.outcome)
    };
    assert_eq!(error, "States.Http.StatusCode.503");
}

#[tokio::test]
async fn a_refused_connection_fails_with_a_socket_error() {
    let run = run_saga(&refused_url().await, "refused").await;
    let Outcome::Failed { error, cause } = &run.outcome else {
        panic!("{:?}", run.outcome)
    };
    assert_eq!(error, "States.Http.Socket");
    assert!(cause.contains("connection refused"), "{cause}");
}

fn stubs(json: &str) -> Stubs {
    Stubs::from_str(json).unwrap()
}

#[tokio::test]
async fn the_local_runner_serves_http_tasks_unless_stubbed() {
    let server = MockServer::start().await;
    Mock::given(path("/charges"))
        .respond_with(ResponseTemplate::new(200).set_body_json(json!({"charge": "ch_1"})))
        .expect(1)
        .mount(&server)
        .await;
    let handler: Arc<dyn Handler> = Arc::new(
        HttpHandler::new(
            HttpConfig::default(),
            connections("https://unused.example/token"),
        )
        .unwrap(),
    );
    let request = |stubs_json: &str| RunRequest {
        definition: SAGA.to_string(),
        input: json!({"partner": format!("{}/charges", server.uri()), "amount": 5}),
        stubs: stubs(stubs_json),
        execution_name: Some("local".into()),
        virtual_clock: false,
        seed: Some(1),
        start_time: None,
        stop_on_ctrl_c: false,
    };
    let handlers = vec![(HTTP_INVOKE_HANDLER.to_string(), Arc::clone(&handler))];
    let report = run_with_handlers(request("{}"), handlers.clone())
        .await
        .unwrap();
    assert_eq!(report.status, RunStatus::Succeeded);
    assert_eq!(report.output["charge"]["charge"], json!({"charge": "ch_1"}));
    assert_eq!(report.call_order, vec![HTTP_INVOKE_HANDLER.to_string()]);
    // A stub keyed by the resource replaces the real call.
    let stubbed = r#"{"arn:aws:states:::http:invoke": {"returns": {"StatusCode": 200, "ResponseBody": "stubbed"}}}"#;
    let report = run_with_handlers(request(stubbed), handlers).await.unwrap();
    assert_eq!(report.status, RunStatus::Succeeded, "{report:?}");
    assert_eq!(report.output["charge"]["charge"], json!("stubbed"));
    // Without the handler or a stub, the runner names what is missing.
    let missing = run_with_handlers(request("{}"), Vec::new())
        .await
        .unwrap_err();
    assert!(
        missing.to_string().contains(HTTP_INVOKE_HANDLER),
        "{missing}"
    );
}
