//! A saga with one HTTP Task: reserve a seat (a participant of ours), charge
//! the card at a payment partner's HTTP API (`arn:aws:states:::http:invoke`,
//! authenticated by an API-key connection), and release the seat when the
//! partner declines (a `Catch` on `States.Http.StatusCode.402`).
//!
//! A small local HTTP server stands in for the partner: it wants its API key
//! in `x-api-key`, charges amounts up to 1000 (201 Created) and declines the
//! rest (402 Payment Required).
//!
//! Run: `cargo run -p sagaflow-http --example payment_partner`

use std::sync::Arc;

use serde_json::{Value, json};
use wiremock::{Mock, MockServer, Request, ResponseTemplate};

use sagaflow_asl::interp::{ExecutionInfo, Outcome};
use sagaflow_asl::parse::parse_definition;
use sagaflow_coordinator::clock::SystemClock;
use sagaflow_coordinator::dispatch::EmbeddedDispatcher;
use sagaflow_coordinator::driver::{Coordinator, RuntimeOptions};
use sagaflow_coordinator::resource::HTTP_INVOKE_HANDLER;
use sagaflow_http::{Connections, HttpConfig, HttpHandler};
use sagaflow_participant::{Handler, TaskContext, TaskError, handler_fn};

/// The partner's API key: in the connections file, never in the definition.
const PARTNER_KEY: &str = "pk_demo_0123456789";

const DEFINITION: &str = r#"{
  "Comment": "Book a seat and pay for it at the payment partner; release the seat if payment fails.",
  "StartAt": "ReserveSeat",
  "States": {
    "ReserveSeat": {"Type": "Task", "Resource": "reserve_seat", "ResultPath": "$.seat", "Next": "ChargeCard"},
    "ChargeCard": {
      "Type": "Task",
      "Resource": "arn:aws:states:::http:invoke",
      "Parameters": {
        "ApiEndpoint.$": "$.partnerUrl",
        "Method": "POST",
        "Authentication": {"ConnectionArn": "arn:aws:events:eu-west-1:123456789012:connection/PaymentPartner/6f1e2d"},
        "Headers": {"x-merchant": "sagaflow-demo"},
        "RequestBody": {"amount.$": "$.amount", "currency": "EUR", "reference.$": "$.seat.seatId"}
      },
      "TimeoutSeconds": 10,
      "Retry": [{"ErrorEquals": ["States.Http.StatusCode.503", "States.Http.Socket"], "IntervalSeconds": 1, "MaxAttempts": 2}],
      "Catch": [
        {"ErrorEquals": ["States.Http.StatusCode.402"], "ResultPath": "$.paymentError", "Next": "ReleaseSeat"},
        {"ErrorEquals": ["States.ALL"], "ResultPath": "$.paymentError", "Next": "ReleaseSeat"}
      ],
      "ResultSelector": {"chargeId.$": "$.ResponseBody.chargeId", "status.$": "$.StatusCode"},
      "ResultPath": "$.payment",
      "Next": "Booked"
    },
    "Booked": {"Type": "Succeed"},
    "ReleaseSeat": {"Type": "Task", "Resource": "release_seat", "InputPath": "$.seat", "ResultPath": null, "Next": "PaymentFailed"},
    "PaymentFailed": {"Type": "Fail", "Error": "PaymentFailed", "Cause": "the payment partner declined the charge; the seat was released"}
  }
}"#;

/// Starts the stand-in payment partner on a loopback port.
async fn payment_partner() -> MockServer {
    let server = MockServer::start().await;
    Mock::given(wiremock::matchers::path("/v1/charges"))
        .respond_with(|request: &Request| {
            let key = request
                .headers
                .get("x-api-key")
                .and_then(|v| v.to_str().ok());
            if key != Some(PARTNER_KEY) {
                return ResponseTemplate::new(401)
                    .set_body_json(json!({"error": "unknown API key"}));
            }
            let body: Value = serde_json::from_slice(&request.body).unwrap_or(Value::Null);
            let amount = body["amount"].as_u64().unwrap_or(0);
            if amount == 0 || amount > 1000 {
                return ResponseTemplate::new(402)
                    .set_body_json(json!({"error": "card_declined", "amount": amount}));
            }
            ResponseTemplate::new(201).set_body_json(json!({
                "chargeId": format!("ch_{}", body["reference"].as_str().unwrap_or("x")),
                "amount": amount
            }))
        })
        .mount(&server)
        .await;
    server
}

/// How one booking ended.
#[derive(Debug)]
pub struct Booking {
    /// The amount asked for.
    pub amount: u64,
    /// `SUCCEEDED` or the error name.
    pub status: String,
    /// The output (success) or the cause (failure).
    pub detail: Value,
}

/// Runs the saga twice against the partner: 120 EUR (charged) and 5000 EUR
/// (declined, compensated).
pub async fn demo() -> anyhow::Result<Vec<Booking>> {
    let partner = payment_partner().await;
    let connections = Connections::from_json(
        &format!(
            r#"{{"Connections": [{{"Name": "PaymentPartner", "AuthorizationType": "API_KEY",
                "AuthParameters": {{"ApiKeyAuthParameters": {{"ApiKeyName": "x-api-key", "ApiKeyValue": "{PARTNER_KEY}"}}}}}}]}}"#
        ),
        "inline",
    )?;
    let http: Arc<dyn Handler> = Arc::new(HttpHandler::new(HttpConfig::default(), connections)?);
    let reserve: Arc<dyn Handler> = Arc::new(handler_fn(|_: Value, ctx: TaskContext| async move {
        Ok::<_, TaskError>(json!({"seatId": format!("S{}", ctx.execution_name)}))
    }));
    let release: Arc<dyn Handler> =
        Arc::new(handler_fn(|seat: Value, _ctx: TaskContext| async move {
            println!("  compensation: released seat {}", seat["seatId"]);
            Ok::<_, TaskError>(Value::Null)
        }));
    let dispatcher = Arc::new(EmbeddedDispatcher::new([
        (HTTP_INVOKE_HANDLER.to_string(), http),
        ("reserve_seat".to_string(), reserve),
        ("release_seat".to_string(), release),
    ]));
    let coordinator =
        Coordinator::new(Arc::new(SystemClock), dispatcher, RuntimeOptions::default());
    let machine = Arc::new(parse_definition(DEFINITION).map_err(|e| anyhow::anyhow!("{e:?}"))?);

    let mut bookings = Vec::new();
    for (n, amount) in [(1, 120u64), (2, 5000)] {
        let name = format!("booking-{n}");
        println!("booking {name}: {amount} EUR");
        let info = ExecutionInfo {
            execution_id: format!("arn:aws:states:eu-west-1:123456789012:execution:Booking:{name}"),
            execution_name: name,
            state_machine_id: "arn:aws:states:eu-west-1:123456789012:stateMachine:Booking".into(),
            state_machine_name: "Booking".into(),
            role_arn: String::new(),
            seed: n,
            rules: sagaflow_asl::interp::RULES,
        };
        let input =
            json!({"partnerUrl": format!("{}/v1/charges", partner.uri()), "amount": amount});
        let run = coordinator.run(Arc::clone(&machine), info, input).await?;
        let booking = match run.outcome {
            Outcome::Succeeded { output } => Booking {
                amount,
                status: "SUCCEEDED".into(),
                detail: Value::clone(&output),
            },
            Outcome::Failed { error, cause } | Outcome::TimedOut { error, cause } => Booking {
                amount,
                status: error,
                detail: Value::String(cause),
            },
            Outcome::Aborted { error, .. } => Booking {
                amount,
                status: error.unwrap_or_else(|| "ABORTED".into()),
                detail: Value::Null,
            },
        };
        println!("  -> {}: {}", booking.status, booking.detail);
        bookings.push(booking);
    }
    Ok(bookings)
}

#[allow(dead_code)]
#[tokio::main]
async fn main() -> anyhow::Result<()> {
    demo().await?;
    Ok(())
}
