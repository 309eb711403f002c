//! A participant in 20 lines: serves the `book_flight` and `cancel_flight`
//! Task states of a saga over NATS.
//!
//! Run: `cargo run -p sagaflow-participant --example book_flight -- nats://127.0.0.1:4222`

use sagaflow_participant::worker::Worker;
use sagaflow_participant::{TaskContext, TaskError, handler_fn};
use serde::{Deserialize, Serialize};

#[derive(Deserialize)]
struct Trip {
    from: String,
    to: String,
}

#[derive(Serialize)]
struct Booking {
    confirmation: String,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let url = std::env::args()
        .nth(1)
        .unwrap_or_else(|| "nats://127.0.0.1:4222".into());
    let client = sagaflow_nats::connect(&url).await?;
    let book = handler_fn(|trip: Trip, ctx: TaskContext| async move {
        if trip.from == trip.to {
            return Err(TaskError::new(
                "FlightUnavailable",
                "no flight to where you are",
            ));
        }
        // The same task may be delivered twice: key your writes by
        // ctx.idempotency_key() (execution and task).
        Ok(Booking {
            confirmation: format!("FL-{}", ctx.idempotency_key()),
        })
    });
    let cancel = handler_fn(|_: serde_json::Value, _ctx: TaskContext| async move {
        Ok::<_, TaskError>(serde_json::json!({"cancelled": true}))
    });
    let worker = Worker::builder(client)
        .handler("book_flight", book)
        .handler("cancel_flight", cancel)
        .build()
        .await?;
    worker.run().await;
    Ok(())
}
