//! The loan approval scenarios, for the embedded tests and the tests over
//! NATS. How a manual review is answered is the caller's: through the
//! library, or through the API client.

#![allow(dead_code)]

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use loan_approval::{Bank, DEFINITION, STATE_MACHINE, application, review_token_in};
use sagaflow::{ExecutionResult, Options, Sagaflow, Status};
use sagaflow_testkit::NatsServer;
use serde_json::{Value, json};

pub const LIMIT: Duration = Duration::from_secs(60);

pub async fn embedded(bank: &Arc<Bank>) -> Sagaflow {
    loan_approval::register(Sagaflow::builder(), bank)
        .state_machine(STATE_MACHINE, DEFINITION)
        .build()
        .await
        .expect("embedded sagaflow")
}

pub struct OverNats {
    pub server: NatsServer,
    pub saga: Sagaflow,
    pub participants: Sagaflow,
}

pub fn nats_options(url: &str) -> Options {
    let mut o = Options {
        nats_url: Some(url.to_string()),
        worker_grace_period: Duration::from_millis(200),
        ..Options::default()
    };
    o.cluster.partitions = 4;
    o.cluster.settings.lease_ttl = Duration::from_secs(2);
    o
}

pub async fn over_nats(bank: &Arc<Bank>) -> OverNats {
    let server = NatsServer::start().expect("nats-server");
    let saga = Sagaflow::builder()
        .options(nats_options(&server.url()))
        .run_coordinator(true)
        .serve_handlers(false)
        .build()
        .await
        .expect("coordinator and client");
    let participants = loan_approval::register(Sagaflow::builder(), bank)
        .options(nats_options(&server.url()))
        .build()
        .await
        .expect("participants");
    saga.deploy(STATE_MACHINE, DEFINITION)
        .await
        .expect("deploy");
    OverNats {
        server,
        saga,
        participants,
    }
}

impl OverNats {
    pub async fn stop(self) {
        self.participants.shutdown().await;
        self.saga.shutdown().await;
    }
}

async fn run(saga: &Sagaflow, input: Value) -> (ExecutionResult, Vec<String>) {
    let execution = saga.start(STATE_MACHINE, input, None).await.expect("start");
    let result = execution.wait(LIMIT).await.expect("wait");
    let states = execution.states_entered().await.expect("history");
    (result, states)
}

/// A good score and a small amount: approved without a person, paid out,
/// notified.
pub async fn auto_approved(saga: &Sagaflow, bank: &Bank, id: &str) {
    let (result, states) = run(saga, application(id, "Ada", 20_000.0, 780)).await;
    assert_eq!(result.status, Status::Succeeded, "{result:?}");
    let out = result.output.expect("output");
    assert_eq!(out["decision"], "APPROVED");
    assert_eq!(out["review"]["by"], "automatic approval");
    assert_eq!(
        states,
        [
            "ValidateApplication",
            "CreditCheck",
            "Decide",
            "AutoApproved",
            "DisburseFunds",
            "NotifyApplicant",
            "Approved"
        ]
    );
    let paid = bank.disbursements_of(id);
    assert_eq!(paid.len(), 1);
    assert!(!paid[0].reversed);
    assert_eq!(out["disbursement"], json!(paid[0].id));
}

/// A poor score: rejected at once, nothing paid.
pub async fn rejected_by_score(saga: &Sagaflow, bank: &Bank, id: &str) {
    let (result, states) = run(saga, application(id, "Bob", 20_000.0, 500)).await;
    assert_eq!(result.status, Status::Succeeded, "{result:?}");
    assert_eq!(result.output.expect("output")["decision"], "REJECTED");
    assert_eq!(
        states,
        ["ValidateApplication", "CreditCheck", "Decide", "Rejected"]
    );
    assert!(bank.disbursements_of(id).is_empty());
    assert_eq!(bank.steps_of(id), ["ValidateApplication", "CreditCheck"]);
}

/// A middling score: a person decides through the callback token;
/// `answer` sends the decision (approve: true) with the token.
pub async fn manual_review<F, Fut>(saga: &Sagaflow, bank: &Bank, id: &str, approve: bool, answer: F)
where
    F: FnOnce(String) -> Fut,
    Fut: Future<Output = ()>,
{
    let execution = saga
        .start(STATE_MACHINE, application(id, "Cy", 30_000.0, 650), None)
        .await
        .expect("start");
    let token = bank
        .review_token(id, LIMIT)
        .await
        .expect("the review was requested");
    // The execution waits for the person, however long.
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(
        execution.describe().await.expect("describe").status,
        Status::Running
    );
    assert!(bank.disbursements_of(id).is_empty());
    if saga.mode() == sagaflow::Mode::Distributed {
        // The demo reads the token from the history, where the review
        // task's parameters carry it.
        let history = execution.history().await.expect("history");
        assert_eq!(review_token_in(&history).as_deref(), Some(token.as_str()));
    }
    answer(token.clone()).await;
    let result = execution.wait(LIMIT).await.expect("wait");
    let states = execution.states_entered().await.expect("history");
    assert_eq!(result.status, Status::Succeeded, "{result:?}");
    let out = result.output.expect("output");
    if approve {
        assert_eq!(out["decision"], "APPROVED");
        assert_eq!(out["review"]["by"], "officer");
        assert_eq!(states.last().map(String::as_str), Some("Approved"));
        assert!(states.contains(&"DisburseFunds".to_string()));
        assert_eq!(bank.disbursements_of(id).len(), 1);
    } else {
        assert_eq!(out["decision"], "REJECTED");
        assert_eq!(
            states,
            [
                "ValidateApplication",
                "CreditCheck",
                "Decide",
                "ManualReview",
                "Rejected"
            ]
        );
        assert!(bank.disbursements_of(id).is_empty());
    }
    // A token answers once.
    assert!(matches!(
        saga.send_task_success(&token, json!({})).await,
        Err(sagaflow::Error::TaskDoesNotExist)
    ));
}

/// The notification fails for good: the disbursement is reversed, the
/// execution fails with `NotificationFailed`.
pub async fn disbursement_reversed(saga: &Sagaflow, bank: &Bank, id: &str) {
    let mut input = application(id, "Dee", 10_000.0, 800);
    input["fail"] = json!("notify");
    let (result, states) = run(saga, input).await;
    assert_eq!(result.status, Status::Failed, "{result:?}");
    assert_eq!(result.error.as_deref(), Some("NotificationFailed"));
    let cause: Value = serde_json::from_str(result.cause.as_deref().unwrap_or("")).expect("cause");
    assert_eq!(cause["error"], "NotificationServiceDown");
    let paid = bank.disbursements_of(id);
    assert_eq!(paid.len(), 1, "paid out once");
    assert!(paid[0].reversed, "and reversed");
    assert_eq!(cause["reversed"], json!([paid[0].id]));
    assert_eq!(
        states[states.len() - 4..],
        [
            "NotifyApplicant",
            "ReverseDisbursement",
            "DisbursementReversed",
            "NotificationFailed"
        ]
    );
    // The notification was tried three times (MaxAttempts 2 retries), then
    // the reversal ran.
    assert_eq!(
        bank.steps_of(id),
        [
            "ValidateApplication",
            "CreditCheck",
            "DisburseFunds",
            "NotifyApplicantFailed",
            "NotifyApplicantFailed",
            "NotifyApplicantFailed",
            "ReverseDisbursement"
        ]
    );
}

/// An application without an applicant fails validation.
pub async fn invalid_application(saga: &Sagaflow, bank: &Bank, id: &str) {
    let (result, states) = run(saga, json!({"application_id": id, "amount": 10})).await;
    assert_eq!(result.status, Status::Failed);
    assert_eq!(result.error.as_deref(), Some("InvalidApplication"));
    assert_eq!(states, ["ValidateApplication"]);
    assert!(bank.steps_of(id).is_empty());
}
