//! # Loan approval, a Sagaflow example
//!
//! `ValidateApplication` → `CreditCheck` → `Decide` (a Choice on the credit
//! score: below 580 rejected, from 720 up to 50,000 approved automatically,
//! otherwise a loan officer decides) → `ManualReview` (a
//! `lambda:invoke.waitForTaskToken` task: `request_review` hands the task
//! token to a person, who answers with `sagaflow send-task-success TOKEN
//! JSON` to approve or `sagaflow send-task-failure TOKEN --error
//! LoanRejected` to reject) → `DisburseFunds` → `NotifyApplicant`. When the
//! notification fails for good (after its Retry), `ReverseDisbursement`
//! undoes the disbursement and the execution fails with
//! `NotificationFailed`.
//!
//! The bank's state (disbursements, reviews waiting) is a [`Bank`], kept
//! in the memory of the process serving the participants. Failures are
//! injected with the input field `"fail": "notify"` (the notification
//! service is down for good); `"credit_score"` stands for the credit
//! bureau's answer.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use sagaflow::{Handler, LambdaContext, SagaflowBuilder, TaskContext, TaskError};
use sagaflow::{handler_fn, lambda_fn};
use serde_json::{Value, json};
use tokio::sync::Notify;

/// The state machine (ASL), as deployed.
pub const DEFINITION: &str = include_str!("../loan_approval.asl.json");

/// The name the state machine is deployed under.
pub const STATE_MACHINE: &str = "loan-approval";

/// The error a reviewer sends to reject an application.
pub const REJECTED: &str = "LoanRejected";

/// One disbursement.
#[derive(Debug, Clone, PartialEq)]
pub struct Disbursement {
    /// `D-0001`, ...
    pub id: String,
    /// The application.
    pub application_id: String,
    /// The amount paid out.
    pub amount: f64,
    /// True once reversed.
    pub reversed: bool,
}

#[derive(Debug, Default)]
struct BankState {
    next: u64,
    disbursements: BTreeMap<String, Disbursement>,
    by_key: HashMap<String, String>,
    /// Task tokens of the reviews waiting, by application.
    reviews: HashMap<String, String>,
    journal: Vec<(String, String)>,
}

/// The bank's services and their state.
#[derive(Debug, Default)]
pub struct Bank {
    state: Mutex<BankState>,
    review_requested: Notify,
    /// Print each step as it happens.
    pub verbose: bool,
}

impl Bank {
    /// An empty bank.
    pub fn new(verbose: bool) -> Bank {
        Bank {
            verbose,
            ..Bank::default()
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, BankState> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn say(&self, line: String) {
        if self.verbose {
            println!("  {line}");
        }
    }

    fn journal(&self, step: &str, application_id: &str) {
        self.lock()
            .journal
            .push((step.to_string(), application_id.to_string()));
    }

    /// The steps taken for one application, in order.
    pub fn steps_of(&self, application_id: &str) -> Vec<String> {
        self.lock()
            .journal
            .iter()
            .filter(|(_, a)| a == application_id)
            .map(|(s, _)| s.clone())
            .collect()
    }

    /// The disbursements of one application (reversed ones included).
    pub fn disbursements_of(&self, application_id: &str) -> Vec<Disbursement> {
        self.lock()
            .disbursements
            .values()
            .filter(|d| d.application_id == application_id)
            .cloned()
            .collect()
    }

    /// The money paid out and not reversed.
    pub fn outstanding(&self) -> f64 {
        self.lock()
            .disbursements
            .values()
            .filter(|d| !d.reversed)
            .map(|d| d.amount)
            .fold(0.0, |a, b| a + b)
    }

    /// Waits (at most `timeout`) until a review of `application_id` is
    /// requested; returns its task token.
    pub async fn review_token(&self, application_id: &str, timeout: Duration) -> Option<String> {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            let notified = self.review_requested.notified();
            if let Some(t) = self.lock().reviews.get(application_id) {
                return Some(t.clone());
            }
            if tokio::time::timeout_at(deadline, notified).await.is_err() {
                return None;
            }
        }
    }
}

fn field<'a>(input: &'a Value, name: &str) -> Result<&'a Value, TaskError> {
    input.get(name).ok_or_else(|| {
        TaskError::new(
            "InvalidApplication",
            format!("the application has no '{name}'"),
        )
    })
}

fn application_id(input: &Value) -> Result<String, TaskError> {
    field(input, "application_id")?
        .as_str()
        .map(str::to_string)
        .ok_or_else(|| TaskError::new("InvalidApplication", "'application_id' is not a string"))
}

fn validate_application(bank: &Bank, input: &Value) -> Result<Value, TaskError> {
    let id = application_id(input)?;
    let applicant = field(input, "applicant")?.as_str().unwrap_or_default();
    let amount = field(input, "amount")?.as_f64().unwrap_or(-1.0);
    if applicant.trim().is_empty() {
        return Err(TaskError::new(
            "InvalidApplication",
            "the applicant has no name",
        ));
    }
    if !(0.0..=1_000_000.0).contains(&amount) || amount == 0.0 {
        return Err(TaskError::new(
            "InvalidApplication",
            format!("amount {amount} is not between 0 and 1,000,000"),
        ));
    }
    bank.say(format!(
        "ValidateApplication: {id} from {applicant} for {amount} is complete"
    ));
    bank.journal("ValidateApplication", &id);
    Ok(json!({"valid": true}))
}

fn credit_check(bank: &Bank, input: &Value) -> Result<Value, TaskError> {
    let id = application_id(input)?;
    // The credit bureau's answer: given by the input in this example, or
    // derived from the applicant's name.
    let score = match input.get("credit_score").and_then(Value::as_u64) {
        Some(s) => s,
        None => {
            let name = input["applicant"].as_str().unwrap_or_default();
            500 + name.bytes().map(u64::from).sum::<u64>() % 350
        }
    };
    bank.say(format!("CreditCheck: {id} scores {score}"));
    bank.journal("CreditCheck", &id);
    Ok(json!({"score": score, "bureau": "Example Credit Bureau"}))
}

fn request_review(bank: &Bank, event: &Value, context: &LambdaContext) -> Result<Value, TaskError> {
    let id = application_id(event)?;
    let token = event
        .get("task_token")
        .and_then(Value::as_str)
        .map(str::to_string)
        .or_else(|| context.task.task_token.clone())
        .ok_or_else(|| TaskError::new("NoTaskToken", "the review request carries no task token"))?;
    bank.say(format!(
        "ManualReview: {id} ({}, {}, score {}) waits for a loan officer. Answer with:\n      \
         sagaflow send-task-success {token} '{{\"approved\": true, \"by\": \"officer\"}}'\n      \
         sagaflow send-task-failure {token} --error {REJECTED} --cause 'income too low'",
        event["applicant"].as_str().unwrap_or("?"),
        event["amount"],
        event["score"],
    ));
    bank.journal("ManualReview", &id);
    bank.lock().reviews.insert(id, token);
    bank.review_requested.notify_waiters();
    Ok(json!({"review": "requested"}))
}

fn disburse_funds(bank: &Bank, input: &Value, ctx: &TaskContext) -> Result<Value, TaskError> {
    let id = application_id(input)?;
    let amount = input["amount"].as_f64().unwrap_or(0.0);
    let key = ctx.idempotency_key();
    let disbursement = {
        let mut s = bank.lock();
        match s.by_key.get(&key) {
            Some(d) => d.clone(),
            None => {
                s.next += 1;
                let d = format!("D-{:04}", s.next);
                s.by_key.insert(key, d.clone());
                s.disbursements.insert(
                    d.clone(),
                    Disbursement {
                        id: d.clone(),
                        application_id: id.clone(),
                        amount,
                        reversed: false,
                    },
                );
                d
            }
        }
    };
    bank.say(format!(
        "DisburseFunds: paid {amount} to {id} ({disbursement})"
    ));
    bank.journal("DisburseFunds", &id);
    Ok(json!({"disbursement_id": disbursement, "amount": amount}))
}

fn notify_applicant(bank: &Bank, input: &Value, ctx: &TaskContext) -> Result<Value, TaskError> {
    let id = application_id(input)?;
    if input.get("fail").and_then(Value::as_str) == Some("notify") {
        bank.say(format!(
            "NotifyApplicant: {id}: the notification service is down (attempt {})",
            ctx.attempt + 1
        ));
        bank.journal("NotifyApplicantFailed", &id);
        return Err(TaskError::new(
            "NotificationServiceDown",
            "the notification service does not answer",
        ));
    }
    bank.say(format!(
        "NotifyApplicant: told {} the loan is paid out",
        input["applicant"].as_str().unwrap_or("?")
    ));
    bank.journal("NotifyApplicant", &id);
    Ok(json!({"notified": true}))
}

fn reverse_disbursement(bank: &Bank, input: &Value) -> Result<Value, TaskError> {
    let id = application_id(input)?;
    let reversed: Vec<String> = {
        let mut s = bank.lock();
        s.disbursements
            .values_mut()
            .filter(|d| d.application_id == id && !d.reversed)
            .map(|d| {
                d.reversed = true;
                d.id.clone()
            })
            .collect()
    };
    bank.say(format!(
        "ReverseDisbursement: {id}: reversed {}",
        if reversed.is_empty() {
            "nothing".to_string()
        } else {
            reversed.join(", ")
        }
    ));
    bank.journal("ReverseDisbursement", &id);
    Ok(json!({"reversed": reversed}))
}

/// The six handlers, by the names the definition gives.
pub fn handlers(bank: &Arc<Bank>) -> Vec<(String, Arc<dyn Handler>)> {
    type Plain = fn(&Bank, &Value) -> Result<Value, TaskError>;
    type WithCtx = fn(&Bank, &Value, &TaskContext) -> Result<Value, TaskError>;
    let mut out: Vec<(String, Arc<dyn Handler>)> = Vec::new();
    let plain: [(&str, Plain); 3] = [
        ("validate_application", validate_application),
        ("credit_check", credit_check),
        ("reverse_disbursement", reverse_disbursement),
    ];
    for (name, f) in plain {
        let b = Arc::clone(bank);
        out.push((
            name.to_string(),
            Arc::new(handler_fn(move |input: Value, _ctx: TaskContext| {
                let r = f(&b, &input);
                async move { r }
            })),
        ));
    }
    let with_ctx: [(&str, WithCtx); 2] = [
        ("disburse_funds", disburse_funds),
        ("notify_applicant", notify_applicant),
    ];
    for (name, f) in with_ctx {
        let b = Arc::clone(bank);
        out.push((
            name.to_string(),
            Arc::new(handler_fn(move |input: Value, ctx: TaskContext| {
                let r = f(&b, &input, &ctx);
                async move { r }
            })),
        ));
    }
    let b = Arc::clone(bank);
    out.push((
        "request_review".to_string(),
        Arc::new(lambda_fn(move |event: Value, context: LambdaContext| {
            let r = request_review(&b, &event, &context);
            async move { r }
        })),
    ));
    out
}

/// Registers the six handlers on a builder.
pub fn register(builder: SagaflowBuilder, bank: &Arc<Bank>) -> SagaflowBuilder {
    handlers(bank)
        .into_iter()
        .fold(builder, |b, (name, h)| b.handler_arc(name, h))
}

/// An application; `credit_score` stands for the bureau's answer.
pub fn application(id: &str, applicant: &str, amount: f64, credit_score: u64) -> Value {
    json!({
        "application_id": id,
        "applicant": applicant,
        "amount": amount,
        "credit_score": credit_score
    })
}

/// The task token of a `ManualReview` task, read from an execution's
/// history (its `TaskScheduled` parameters carry it to `request_review`).
pub fn review_token_in(history: &[Value]) -> Option<String> {
    history
        .iter()
        .filter(|e| e["type"] == "TaskScheduled")
        .filter_map(|e| e.pointer("/taskScheduledEventDetails/parameters")?.as_str())
        .filter_map(|p| serde_json::from_str::<Value>(p).ok())
        .find_map(|p| {
            p.pointer("/Payload/task_token")?
                .as_str()
                .map(str::to_string)
        })
}
