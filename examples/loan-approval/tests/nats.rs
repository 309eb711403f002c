//! The loan approval scenarios over a real nats-server, with an in-process
//! coordinator; the manual review is answered as a person would, through
//! the API (`ApiClient::send_task_success/failure`, what `sagaflow
//! send-task-success` calls).

mod common;

use std::sync::Arc;
use std::time::Duration;

use loan_approval::{Bank, REJECTED};
use sagaflow_coordinator::cluster::client::ApiClient;
use sagaflow_protocol::Namespace;
use serde_json::json;

async fn api(url: &str) -> ApiClient {
    let nats = sagaflow_nats::connect(url).await.expect("connect");
    ApiClient::new(nats, Namespace::default()).with_timeout(Duration::from_secs(10))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn scores_decide_without_a_person_over_nats() {
    let bank = Arc::new(Bank::new(false));
    let env = common::over_nats(&bank).await;
    common::auto_approved(&env.saga, &bank, "n-auto").await;
    common::rejected_by_score(&env.saga, &bank, "n-low").await;
    common::invalid_application(&env.saga, &bank, "n-invalid").await;
    env.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_loan_officer_approves_and_rejects_through_the_api() {
    let bank = Arc::new(Bank::new(false));
    let env = common::over_nats(&bank).await;
    let client = api(&env.server.url()).await;
    common::manual_review(&env.saga, &bank, "n-approve", true, |token| {
        let client = client.clone();
        async move {
            client
                .send_task_success(&token, json!({"approved": true, "by": "officer"}))
                .await
                .unwrap();
        }
    })
    .await;
    common::manual_review(&env.saga, &bank, "n-reject", false, |token| {
        let client = client.clone();
        async move {
            client
                .send_task_failure(
                    &token,
                    Some(REJECTED.to_string()),
                    Some("income too low".to_string()),
                )
                .await
                .unwrap();
        }
    })
    .await;
    env.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_notification_reverses_the_disbursement_over_nats() {
    let bank = Arc::new(Bank::new(false));
    let env = common::over_nats(&bank).await;
    common::disbursement_reversed(&env.saga, &bank, "n-reverse").await;
    assert_eq!(bank.outstanding(), 0.0);
    env.stop().await;
}
