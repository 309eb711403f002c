//! The order-processing workflow, exactly as written for AWS, on the
//! embedded backend and over a real nats-server (in-process coordinator,
//! participants on their own connection).

use std::sync::Arc;
use std::time::Duration;

use order_processing::{DEFINITION, STATE_MACHINE, Shop, order};
use sagaflow::{Options, Sagaflow, Status};
use sagaflow_testkit::NatsServer;
use serde_json::{Value, json};

const LIMIT: Duration = Duration::from_secs(60);

/// The definition given in the issue, verbatim.
const GIVEN: &str = r#"{"Comment": "Example of Step Function Workflow", "StartAt": "ValidateData", "States": {"ValidateData": {"Type": "Task", "Resource": "arn:aws:lambda:us-east-1:123456789012:function:validate_data", "Next": "ProcessOrder"}, "ProcessOrder": {"Type": "Task", "Resource": "arn:aws:lambda:us-east-1:123456789012:function:process_order", "Next": "SendNotification"}, "SendNotification": {"Type": "Task", "Resource": "arn:aws:lambda:us-east-1:123456789012:function:send_notification", "End": true}}}"#;

#[test]
fn the_definition_file_is_the_given_one_unchanged() {
    let file: Value = serde_json::from_str(DEFINITION).unwrap();
    let given: Value = serde_json::from_str(GIVEN).unwrap();
    assert_eq!(file, given);
}

async fn scenarios(saga: &Sagaflow, shop: &Shop, prefix: &str) {
    // A valid order goes through the three functions.
    let id = format!("{prefix}-1");
    let execution = saga
        .start(STATE_MACHINE, order(Some(&id)), None)
        .await
        .unwrap();
    let result = execution.wait(LIMIT).await.unwrap();
    assert_eq!(result.status, Status::Succeeded, "{result:?}");
    let out = result.output.unwrap();
    assert_eq!(out["order_id"], json!(id));
    assert_eq!(out["validated"], json!(true));
    assert_eq!(out["status"], "PROCESSED");
    assert_eq!(out["total"], json!(30.97));
    assert_eq!(out["notification"]["to"], "ada@example.com");
    assert_eq!(
        execution.states_entered().await.unwrap(),
        ["ValidateData", "ProcessOrder", "SendNotification"]
    );
    assert_eq!(shop.order(&id).unwrap()["total"], json!(30.97));
    assert_eq!(
        shop.notifications(),
        [(id.clone(), "ada@example.com".to_string())]
    );

    // Without order_id, validate_data fails the execution (no Catch).
    let execution = saga.start(STATE_MACHINE, order(None), None).await.unwrap();
    let result = execution.wait(LIMIT).await.unwrap();
    assert_eq!(result.status, Status::Failed, "{result:?}");
    assert_eq!(result.error.as_deref(), Some("ValidationError"));
    assert_eq!(result.cause.as_deref(), Some("order_id is missing"));
    assert_eq!(execution.states_entered().await.unwrap(), ["ValidateData"]);
    let history = execution.history().await.unwrap();
    assert!(
        history.iter().any(|e| e["type"] == "TaskFailed"
            && e.pointer("/taskFailedEventDetails/error") == Some(&json!("ValidationError"))),
        "{history:?}"
    );
    assert_eq!(shop.order_count(), 1, "nothing was processed");
    assert_eq!(shop.notifications().len(), 1, "nobody was notified");
}

#[tokio::test]
async fn orders_run_embedded() {
    let shop = Arc::new(Shop::new(false));
    let saga = order_processing::register(Sagaflow::builder(), &shop)
        .state_machine(STATE_MACHINE, DEFINITION)
        .build()
        .await
        .unwrap();
    scenarios(&saga, &shop, "e").await;
    saga.shutdown().await;
}

fn nats_options(url: &str) -> Options {
    let mut o = Options {
        nats_url: Some(url.to_string()),
        worker_grace_period: Duration::from_millis(200),
        ..Options::default()
    };
    o.cluster.partitions = 4;
    o.cluster.settings.lease_ttl = Duration::from_secs(2);
    o
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn orders_run_over_nats() {
    let server = NatsServer::start().expect("nats-server");
    let saga = Sagaflow::builder()
        .options(nats_options(&server.url()))
        .run_coordinator(true)
        .serve_handlers(false)
        .state_machine(STATE_MACHINE, DEFINITION)
        .build()
        .await
        .unwrap();
    let shop = Arc::new(Shop::new(false));
    let participants = order_processing::register(Sagaflow::builder(), &shop)
        .options(nats_options(&server.url()))
        .build()
        .await
        .unwrap();
    scenarios(&saga, &shop, "n").await;
    participants.shutdown().await;
    saga.shutdown().await;
}
