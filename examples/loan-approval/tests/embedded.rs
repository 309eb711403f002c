//! The loan approval scenarios on the embedded backend; the manual review
//! is answered through the library.

mod common;

use std::sync::Arc;

use loan_approval::{Bank, REJECTED};
use serde_json::json;

#[tokio::test]
async fn scores_decide_without_a_person() {
    let bank = Arc::new(Bank::new(false));
    let saga = common::embedded(&bank).await;
    common::auto_approved(&saga, &bank, "e-auto").await;
    common::rejected_by_score(&saga, &bank, "e-low").await;
    common::invalid_application(&saga, &bank, "e-invalid").await;
    saga.shutdown().await;
}

#[tokio::test]
async fn a_loan_officer_approves_through_the_callback() {
    let bank = Arc::new(Bank::new(false));
    let saga = common::embedded(&bank).await;
    common::manual_review(&saga, &bank, "e-approve", true, |token| {
        let saga = saga.clone();
        async move {
            saga.send_task_success(&token, json!({"approved": true, "by": "officer"}))
                .await
                .unwrap();
        }
    })
    .await;
    saga.shutdown().await;
}

#[tokio::test]
async fn a_loan_officer_rejects_through_the_callback() {
    let bank = Arc::new(Bank::new(false));
    let saga = common::embedded(&bank).await;
    common::manual_review(&saga, &bank, "e-reject", false, |token| {
        let saga = saga.clone();
        async move {
            saga.send_task_failure(&token, REJECTED, "income too low")
                .await
                .unwrap();
        }
    })
    .await;
    saga.shutdown().await;
}

#[tokio::test]
async fn a_failed_notification_reverses_the_disbursement() {
    let bank = Arc::new(Bank::new(false));
    let saga = common::embedded(&bank).await;
    common::disbursement_reversed(&saga, &bank, "e-reverse").await;
    assert_eq!(bank.outstanding(), 0.0);
    saga.shutdown().await;
}
