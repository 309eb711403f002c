//! # Order processing, a Sagaflow example
//!
//! A Step Functions workflow written for AWS, run unchanged
//! (`order_processing.asl.json`): `ValidateData` → `ProcessOrder` →
//! `SendNotification`, each a Lambda function
//! (`arn:aws:lambda:us-east-1:123456789012:function:NAME`). The three
//! participants are written as Lambda handlers: an `event` (the raw JSON)
//! and a `context` ([`LambdaContext`]), as they would be on AWS.
//!
//! `validate_data` fails with `ValidationError` when the order has no
//! `order_id`; the workflow has no Catch, so the execution fails with it.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex, PoisonError};

use sagaflow::{Handler, LambdaContext, SagaflowBuilder, TaskError, lambda_fn};
use serde_json::{Value, json};

/// The state machine (ASL), exactly as written for AWS.
pub const DEFINITION: &str = include_str!("../order_processing.asl.json");

/// The name the state machine is deployed under.
pub const STATE_MACHINE: &str = "order-processing";

/// What the participants of this process did: orders processed and
/// notifications sent (the services' own state, in memory).
#[derive(Debug, Default)]
pub struct Shop {
    orders: Mutex<BTreeMap<String, Value>>,
    notifications: Mutex<Vec<(String, String)>>,
    /// Print each step as it happens.
    pub verbose: bool,
}

impl Shop {
    /// An empty shop.
    pub fn new(verbose: bool) -> Shop {
        Shop {
            verbose,
            ..Shop::default()
        }
    }

    /// The processed order `order_id`, if any.
    pub fn order(&self, order_id: &str) -> Option<Value> {
        self.orders
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .get(order_id)
            .cloned()
    }

    /// How many orders were processed.
    pub fn order_count(&self) -> usize {
        self.orders
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .len()
    }

    /// Notifications sent: (order id, recipient), in order.
    pub fn notifications(&self) -> Vec<(String, String)> {
        self.notifications
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    fn say(&self, line: String) {
        if self.verbose {
            println!("  {line}");
        }
    }
}

fn with(event: &Value, extra: Value) -> Value {
    let mut out = event.clone();
    if let (Some(o), Value::Object(extra)) = (out.as_object_mut(), extra) {
        o.extend(extra);
    }
    out
}

/// `validate_data`: the order needs an `order_id` and at least one item.
pub fn validate_data(
    shop: &Shop,
    event: &Value,
    context: &LambdaContext,
) -> Result<Value, TaskError> {
    let Some(order_id) = event.get("order_id").and_then(Value::as_str) else {
        shop.say(format!(
            "{}: order_id is missing (request {})",
            context.function_name, context.request_id
        ));
        return Err(TaskError::new("ValidationError", "order_id is missing"));
    };
    let items = event
        .get("items")
        .and_then(Value::as_array)
        .map_or(0, Vec::len);
    if items == 0 {
        shop.say(format!(
            "{}: order {order_id} has no items",
            context.function_name
        ));
        return Err(TaskError::new(
            "ValidationError",
            format!("order {order_id} has no items"),
        ));
    }
    shop.say(format!(
        "{}: order {order_id} is valid ({items} item(s))",
        context.function_name
    ));
    Ok(with(event, json!({"validated": true})))
}

/// `process_order`: prices the order and records it.
pub fn process_order(
    shop: &Shop,
    event: &Value,
    context: &LambdaContext,
) -> Result<Value, TaskError> {
    let order_id = event
        .get("order_id")
        .and_then(Value::as_str)
        .ok_or_else(|| TaskError::new("ValidationError", "order_id is missing"))?;
    let mut total = 0.0;
    for item in event
        .get("items")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
    {
        let price = item.get("price").and_then(Value::as_f64).unwrap_or(0.0);
        let quantity = item.get("quantity").and_then(Value::as_f64).unwrap_or(1.0);
        total += price * quantity;
    }
    let total = (total * 100.0).round() / 100.0;
    let processed = json!({"status": "PROCESSED", "total": total});
    shop.orders
        .lock()
        .unwrap_or_else(PoisonError::into_inner)
        .insert(order_id.to_string(), with(event, processed.clone()));
    shop.say(format!(
        "{}: order {order_id} processed, total {total:.2}",
        context.function_name
    ));
    Ok(with(event, processed))
}

/// `send_notification`: tells the customer.
pub fn send_notification(
    shop: &Shop,
    event: &Value,
    context: &LambdaContext,
) -> Result<Value, TaskError> {
    let order_id = event.get("order_id").and_then(Value::as_str).unwrap_or("?");
    let to = event
        .get("customer_email")
        .and_then(Value::as_str)
        .unwrap_or("customer@example.com")
        .to_string();
    let message = format!("Your order {order_id} is on its way.");
    shop.notifications
        .lock()
        .unwrap_or_else(PoisonError::into_inner)
        .push((order_id.to_string(), to.clone()));
    shop.say(format!("{}: notified {to}", context.function_name));
    Ok(with(
        event,
        json!({"notification": {"to": to, "message": message}}),
    ))
}

/// The three Lambda-style handlers, by function name.
pub fn handlers(shop: &Arc<Shop>) -> Vec<(String, Arc<dyn Handler>)> {
    type Step = fn(&Shop, &Value, &LambdaContext) -> Result<Value, TaskError>;
    let steps: [(&str, Step); 3] = [
        ("validate_data", validate_data),
        ("process_order", process_order),
        ("send_notification", send_notification),
    ];
    steps
        .into_iter()
        .map(|(name, step)| {
            let shop = Arc::clone(shop);
            let handler: Arc<dyn Handler> =
                Arc::new(lambda_fn(move |event: Value, context: LambdaContext| {
                    let result = step(&shop, &event, &context);
                    async move { result }
                }));
            (name.to_string(), handler)
        })
        .collect()
}

/// Registers the three handlers on a builder.
pub fn register(builder: SagaflowBuilder, shop: &Arc<Shop>) -> SagaflowBuilder {
    handlers(shop)
        .into_iter()
        .fold(builder, |b, (name, h)| b.handler_arc(name, h))
}

/// A sample order.
pub fn order(order_id: Option<&str>) -> Value {
    let mut order = json!({
        "customer_email": "ada@example.com",
        "items": [
            {"sku": "BOOK-42", "price": 12.5, "quantity": 2},
            {"sku": "PEN-7", "price": 1.99, "quantity": 3}
        ]
    });
    if let Some(id) = order_id {
        order["order_id"] = json!(id);
    }
    order
}
