//! The embedded backend with tracing on (an in-memory span exporter, so
//! this file is its own test process): the trace id is known while the
//! execution runs, and a redrive goes on in the same trace.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use sagaflow::{Sagaflow, Status, TaskContext, TaskError, handler_fn};
use serde_json::{Value, json};

const LIMIT: Duration = Duration::from_secs(10);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_trace_is_known_while_running_and_kept_by_a_redrive() {
    let telemetry = sagaflow_telemetry::testing::init();
    let (tx, mut tokens) = tokio::sync::mpsc::unbounded_channel::<String>();
    let broken = Arc::new(AtomicBool::new(true));
    let flag = Arc::clone(&broken);
    let saga = Sagaflow::builder()
        .handler(
            "hold",
            handler_fn(move |_: Value, ctx: TaskContext| {
                let _ = tx.send(ctx.task_token.clone().unwrap_or_default());
                async move { Ok::<_, TaskError>(json!(null)) }
            }),
        )
        .handler(
            "flaky",
            handler_fn(move |_: Value, _ctx: TaskContext| {
                let down = flag.load(Ordering::SeqCst);
                async move {
                    if down {
                        Err(TaskError::new("Down", "later"))
                    } else {
                        Ok(json!("up"))
                    }
                }
            }),
        )
        .state_machine(
            "hold",
            r#"{"StartAt": "H", "States": {"H": {"Type": "Task", "Resource": "hold.waitForTaskToken", "End": true}}}"#,
        )
        .state_machine(
            "flaky",
            r#"{"StartAt": "F", "States": {"F": {"Type": "Task", "Resource": "flaky", "End": true}}}"#,
        )
        .build()
        .await
        .unwrap();

    let held = saga.start("hold", json!({}), None).await.unwrap();
    let token = tokens.recv().await.unwrap();
    let running = held.describe().await.unwrap();
    assert_eq!(running.status, Status::Running);
    let trace = running.trace_id.expect("a trace id while it runs");
    assert_eq!(trace.len(), 32);
    assert!(trace.chars().all(|c| c.is_ascii_hexdigit()), "{trace}");
    saga.send_task_success(&token, json!("ok")).await.unwrap();
    let ended = held.wait(LIMIT).await.unwrap();
    assert_eq!(ended.trace_id.as_deref(), Some(trace.as_str()));

    let e = saga.start("flaky", json!({}), None).await.unwrap();
    let failed = e.wait(LIMIT).await.unwrap();
    assert_eq!(failed.status, Status::Failed);
    let first = failed.trace_id.expect("trace id");
    assert_ne!(first, trace, "one trace per execution");
    let spans_in = |id: &str| {
        telemetry
            .spans
            .get_finished_spans()
            .unwrap_or_default()
            .iter()
            .filter(|s| s.span_context.trace_id().to_string() == id)
            .count()
    };
    let before = spans_in(&first);
    assert!(before > 0, "the first run exported no span");
    broken.store(false, Ordering::SeqCst);
    e.redrive().await.unwrap();
    let again = e.wait(LIMIT).await.unwrap();
    assert_eq!(again.status, Status::Succeeded);
    assert_eq!(
        again.trace_id.as_deref(),
        Some(first.as_str()),
        "the same trace"
    );
    // The second run's spans (its task, the execution's end) are in it.
    let deadline = tokio::time::Instant::now() + LIMIT;
    while spans_in(&first) <= before {
        assert!(
            tokio::time::Instant::now() < deadline,
            "no span of the redriven run"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    saga.shutdown().await;
}
