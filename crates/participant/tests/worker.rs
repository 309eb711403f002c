//! The worker against a real nats-server (one per test, from the test kit).

use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_nats::jetstream::consumer::{self, PullConsumer};
use futures::StreamExt;
use sagaflow_nats::{Infra, Settings};
use sagaflow_participant::worker::{
    DATA_LIMIT_EXCEEDED, TASK_FAILED, idempotency_key, result_msg_id,
};
use sagaflow_participant::{
    ShutdownHandle, TaskContext, TaskError, Worker, WorkerBuilder, WorkerError, handler_fn,
};
use sagaflow_protocol::{ExecutionRef, InboxMessage, TaskMessage, headers};
use sagaflow_testkit::NatsServer;
use serde_json::{Value, json};
use tokio::sync::{Notify, mpsc};
use tokio::task::JoinHandle;

/// Only to avoid hanging forever: nothing here is expected to take long.
const PATIENCE: Duration = Duration::from_secs(10);

struct Env {
    _server: NatsServer,
    client: async_nats::Client,
    infra: Infra,
    inbox: PullConsumer,
}

async fn env() -> Env {
    let server = NatsServer::start().expect("nats-server starts");
    let client = sagaflow_nats::connect(&server.url())
        .await
        .expect("connect");
    let infra = sagaflow_nats::setup(client.clone(), Settings::default())
        .await
        .expect("setup");
    let inbox = infra
        .inbox
        .create_consumer(consumer::pull::Config {
            durable_name: Some("test-inbox".into()),
            filter_subject: infra.ns().inbox_wildcard(),
            ack_policy: consumer::AckPolicy::Explicit,
            ..Default::default()
        })
        .await
        .expect("inbox consumer");
    Env {
        _server: server,
        client,
        infra,
        inbox,
    }
}

impl Env {
    fn builder(&self) -> WorkerBuilder {
        Worker::builder(self.client.clone())
    }

    /// A task for execution `e{n}` of handler `handler`.
    fn task(&self, n: usize, handler: &str, input: Value) -> TaskMessage {
        let exec = ExecutionRef::new("travel", &format!("e{n}")).expect("names");
        TaskMessage {
            execution_arn: exec.arn(),
            execution_name: exec.name().to_string(),
            state_machine: "travel".into(),
            task_id: format!("Book@{n}#0"),
            state_name: "Book".into(),
            resource: format!("arn:aws:lambda:us-east-1:123456789012:function:{handler}"),
            handler: handler.into(),
            input,
            attempt: 0,
            heartbeat_seconds: None,
            timeout_seconds: None,
            task_token: None,
            reply_to: self.infra.ns().inbox_subject(exec.partition(16), &exec),
            // Most tests watch the inbox: no direct hand-over.
            result_to: None,
        }
    }

    async fn publish_task(&self, task: &TaskMessage, msg_id: &str) {
        let mut h = async_nats::HeaderMap::new();
        h.insert(headers::MSG_ID, msg_id);
        let payload = serde_json::to_vec(task).expect("encode");
        self.publish_raw(&task.handler, h, payload).await;
    }

    async fn publish_raw(&self, handler: &str, h: async_nats::HeaderMap, payload: Vec<u8>) {
        self.infra
            .js
            .publish_with_headers(self.infra.ns().task_subject(handler), h, payload.into())
            .await
            .expect("publish")
            .await
            .expect("stored");
    }

    /// The next inbox message (acked), with its `Nats-Msg-Id`.
    async fn next_inbox(&self) -> (InboxMessage, Option<String>) {
        let deadline = tokio::time::Instant::now() + PATIENCE;
        loop {
            assert!(
                tokio::time::Instant::now() < deadline,
                "no inbox message within {PATIENCE:?}"
            );
            let mut batch = self
                .inbox
                .batch()
                .max_messages(1)
                .expires(Duration::from_millis(500))
                .messages()
                .await
                .expect("pull inbox");
            if let Some(m) = batch.next().await {
                let m = m.expect("inbox message");
                m.ack().await.expect("ack");
                let id = m
                    .headers
                    .as_ref()
                    .and_then(|h| h.get(headers::MSG_ID))
                    .map(|v| v.as_str().to_string());
                let msg = serde_json::from_slice(&m.payload).expect("inbox JSON");
                return (msg, id);
            }
        }
    }

    /// The next `n` results (heartbeats skipped).
    async fn results(&self, n: usize) -> Vec<InboxMessage> {
        let mut out = Vec::new();
        while out.len() < n {
            let (m, _) = self.next_inbox().await;
            if !matches!(m, InboxMessage::TaskHeartbeat { .. }) {
                out.push(m);
            }
        }
        out
    }

    /// Waits until the tasks stream is empty (every task acked or
    /// terminated).
    async fn tasks_drained(&self) {
        let deadline = tokio::time::Instant::now() + PATIENCE;
        loop {
            let mut tasks = self.infra.tasks.clone();
            let info = tasks.info().await.expect("stream info");
            if info.state.messages == 0 {
                return;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "tasks stream still holds {} messages",
                info.state.messages
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

fn spawn(worker: Worker) -> (ShutdownHandle, JoinHandle<()>) {
    let stop = worker.shutdown_handle();
    (stop, tokio::spawn(worker.run()))
}

async fn stop(stop: ShutdownHandle, run: JoinHandle<()>) {
    stop.shutdown();
    tokio::time::timeout(PATIENCE * 2, run)
        .await
        .expect("worker stops")
        .expect("worker did not panic");
}

fn succeeded(m: &InboxMessage) -> (&str, &Value) {
    match m {
        InboxMessage::TaskSucceeded {
            task_id, output, ..
        } => (task_id, output),
        other => panic!("expected TaskSucceeded, got {other:?}"),
    }
}

fn failed(m: &InboxMessage) -> (&str, &str, &str) {
    match m {
        InboxMessage::TaskFailed {
            task_id,
            error,
            cause,
            ..
        } => (task_id, error, cause),
        other => panic!("expected TaskFailed, got {other:?}"),
    }
}

fn echo() -> impl sagaflow_participant::Handler + 'static {
    handler_fn(|input: Value, ctx: TaskContext| async move {
        Ok::<_, TaskError>(json!({
            "input": input,
            "taskId": ctx.task_id,
            "execution": ctx.execution_id,
            "name": ctx.execution_name,
            "state": ctx.state_name,
            "resource": ctx.resource,
            "attempt": ctx.attempt,
        }))
    })
}

#[tokio::test]
async fn a_task_succeeds_with_the_handlers_output() {
    let env = env().await;
    let worker = env
        .builder()
        .handler("flights.book", echo())
        .concurrency(4)
        .ack_wait(Duration::from_secs(7))
        .build()
        .await
        .expect("build");
    assert_eq!(worker.handlers(), vec!["flights.book"]);

    let info = env
        .infra
        .tasks
        .consumer_info(env.infra.ns().task_consumer("flights.book"))
        .await
        .expect("durable consumer exists");
    assert_eq!(info.config.ack_wait, Duration::from_secs(7));
    assert_eq!(info.config.filter_subject, "sagaflow.task.flights.book");
    assert_eq!(info.config.ack_policy, consumer::AckPolicy::Explicit);
    assert!(info.config.max_ack_pending >= 4);

    let (stop_h, run) = spawn(worker);
    let task = env.task(1, "flights.book", json!({"from": "CDG"}));
    env.publish_task(&task, "k/1").await;

    let (msg, msg_id) = env.next_inbox().await;
    let (task_id, output) = succeeded(&msg);
    assert_eq!(task_id, task.task_id);
    assert_eq!(msg.execution_arn(), task.execution_arn);
    assert_eq!(
        output,
        &json!({
            "input": {"from": "CDG"},
            "taskId": task.task_id,
            "execution": task.execution_arn,
            "name": "e1",
            "state": "Book",
            "resource": task.resource,
            "attempt": 0,
        })
    );
    assert_eq!(
        msg_id.as_deref(),
        Some(result_msg_id(&task.reply_to, &task.task_id).as_str())
    );
    env.tasks_drained().await;
    stop(stop_h, run).await;
}

/// The handler's consumer deleted while the worker pulls (an operator's
/// `nats consumer rm`, streams recreated): the worker creates it again and
/// goes on serving, rather than failing every pull from then on.
#[tokio::test]
async fn a_deleted_consumer_is_created_again_and_tasks_still_run() {
    let env = env().await;
    let worker = env
        .builder()
        .handler("flights.book", echo())
        .build()
        .await
        .expect("build");
    let (stop_h, run) = spawn(worker);
    let first = env.task(1, "flights.book", json!({"n": 1}));
    env.publish_task(&first, "k/1").await;
    let (msg, _) = env.next_inbox().await;
    assert_eq!(succeeded(&msg).0, first.task_id);

    let name = env.infra.ns().task_consumer("flights.book");
    env.infra
        .tasks
        .delete_consumer(&name)
        .await
        .expect("consumer deleted");
    let second = env.task(2, "flights.book", json!({"n": 2}));
    env.publish_task(&second, "k/2").await;
    let (msg, _) = env.next_inbox().await;
    assert_eq!(succeeded(&msg).0, second.task_id);
    assert!(
        env.infra.tasks.consumer_info(&name).await.is_ok(),
        "the consumer exists again"
    );
    env.tasks_drained().await;
    stop(stop_h, run).await;
}

#[tokio::test]
async fn a_task_error_becomes_task_failed_with_its_name() {
    let env = env().await;
    let handler = handler_fn(|input: Value, _ctx: TaskContext| async move {
        let name = input["error"].as_str().unwrap_or("Nope").to_string();
        Err::<Value, _>(TaskError::new(name, "no seats left"))
    });
    let worker = env
        .builder()
        .handler("book", handler)
        .build()
        .await
        .expect("build");
    let (stop_h, run) = spawn(worker);
    env.publish_task(
        &env.task(1, "book", json!({"error": "Flights.SoldOut"})),
        "a",
    )
    .await;
    env.publish_task(
        &env.task(2, "book", json!({"error": "States.Timeout"})),
        "b",
    )
    .await;

    let mut got: Vec<(String, String, String)> = env
        .results(2)
        .await
        .iter()
        .map(|m| {
            let (t, e, c) = failed(m);
            (t.to_string(), e.to_string(), c.to_string())
        })
        .collect();
    got.sort();
    assert_eq!(
        got,
        vec![
            (
                "Book@1#0".to_string(),
                "Flights.SoldOut".to_string(),
                "no seats left".to_string()
            ),
            // States.* names from handlers are passed through as-is.
            (
                "Book@2#0".to_string(),
                "States.Timeout".to_string(),
                "no seats left".to_string()
            ),
        ]
    );
    env.tasks_drained().await;
    stop(stop_h, run).await;
}

#[tokio::test]
async fn a_panicking_handler_fails_its_task_and_the_worker_keeps_serving() {
    let env = env().await;
    let handler = handler_fn(|input: Value, _ctx: TaskContext| async move {
        if input["panic"] == json!(true) {
            panic!("the flight database is on fire");
        }
        Ok::<_, TaskError>(json!("fine"))
    });
    let worker = env
        .builder()
        .handler("book", handler)
        .concurrency(1)
        .build()
        .await
        .expect("build");
    let (stop_h, run) = spawn(worker);

    env.publish_task(&env.task(1, "book", json!({"panic": true})), "a")
        .await;
    let first = env.results(1).await;
    let (_, error, cause) = failed(&first[0]);
    assert_eq!(error, TASK_FAILED);
    assert!(cause.contains("the flight database is on fire"), "{cause}");

    env.publish_task(&env.task(2, "book", json!({})), "b").await;
    let second = env.results(1).await;
    assert_eq!(succeeded(&second[0]), ("Book@2#0", &json!("fine")));
    env.tasks_drained().await;
    stop(stop_h, run).await;
}

#[tokio::test]
async fn malformed_tasks_are_terminated_and_the_worker_keeps_serving() {
    let env = env().await;
    let calls = Arc::new(AtomicUsize::new(0));
    let c = calls.clone();
    let handler = handler_fn(move |_: Value, _ctx: TaskContext| {
        c.fetch_add(1, Ordering::SeqCst);
        async { Ok::<_, TaskError>(json!(1)) }
    });
    let worker = env
        .builder()
        .handler("book", handler)
        .ack_wait(Duration::from_secs(1))
        .build()
        .await
        .expect("build");
    let (stop_h, run) = spawn(worker);

    let mut h = async_nats::HeaderMap::new();
    h.insert(headers::MSG_ID, "garbage");
    env.publish_raw("book", h, b"{not json".to_vec()).await;
    let mut h = async_nats::HeaderMap::new();
    h.insert(headers::MSG_ID, "wrong-shape");
    env.publish_raw("book", h, br#"{"taskId": 3}"#.to_vec())
        .await;
    let mut bad_reply = env.task(9, "book", json!({}));
    bad_reply.reply_to = "sagaflow.inbox.*".into();
    env.publish_task(&bad_reply, "bad-reply").await;
    // A task id with a line break could not go into a header.
    let mut bad_id = env.task(8, "book", json!({}));
    bad_id.task_id = "Book@8#0\r\nX-Injected: 1".into();
    let mut h = async_nats::HeaderMap::new();
    h.insert(headers::MSG_ID, "bad-id");
    env.publish_raw("book", h, serde_json::to_vec(&bad_id).unwrap())
        .await;
    env.publish_task(&env.task(1, "book", json!({})), "good")
        .await;

    let results = env.results(1).await;
    assert_eq!(succeeded(&results[0]).0, "Book@1#0");
    // Terminated messages are not redelivered (ack wait is 1 s): nothing is
    // left pending on the consumer and the handler only saw the good task.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let info = env
        .infra
        .tasks
        .consumer_info(env.infra.ns().task_consumer("book"))
        .await
        .expect("consumer info");
    assert_eq!(info.num_ack_pending, 0);
    assert_eq!(info.num_redelivered, 0);
    assert_eq!(calls.load(Ordering::SeqCst), 1);
    stop(stop_h, run).await;
}

#[tokio::test]
async fn heartbeats_reach_the_inbox_before_the_result() {
    let env = env().await;
    let handler = handler_fn(|_: Value, ctx: TaskContext| async move {
        ctx.heartbeat().await;
        tokio::time::sleep(Duration::from_millis(50)).await;
        ctx.heartbeat().await;
        Ok::<_, TaskError>(json!("done"))
    });
    let worker = env
        .builder()
        .handler("book", handler)
        .build()
        .await
        .expect("build");
    let (stop_h, run) = spawn(worker);
    let task = env.task(1, "book", json!({}));
    env.publish_task(&task, "a").await;

    let beat = InboxMessage::TaskHeartbeat {
        execution_arn: task.execution_arn.clone(),
        task_id: task.task_id.clone(),
    };
    assert_eq!(env.next_inbox().await.0, beat);
    assert_eq!(env.next_inbox().await.0, beat);
    let (last, _) = env.next_inbox().await;
    assert_eq!(succeeded(&last), ("Book@1#0", &json!("done")));
    stop(stop_h, run).await;
}

/// A handler calling `heartbeat()` in a tight loop does not flood its
/// partition's inbox: heartbeats are coalesced (one per window of a second
/// at most, the last one sent before the result).
#[tokio::test]
async fn heartbeats_in_a_tight_loop_are_coalesced() {
    let env = env().await;
    let handler = handler_fn(|_: Value, ctx: TaskContext| async move {
        // A burst (queued at once), then a beat every millisecond for
        // 300 ms.
        for _ in 0..10_000 {
            ctx.heartbeat().await;
        }
        let until = tokio::time::Instant::now() + Duration::from_millis(300);
        while tokio::time::Instant::now() < until {
            ctx.heartbeat().await;
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
        Ok::<_, TaskError>(json!("done"))
    });
    let worker = env
        .builder()
        .handler("book", handler)
        .build()
        .await
        .expect("build");
    let (stop_h, run) = spawn(worker);
    let task = env.task(1, "book", json!({}));
    env.publish_task(&task, "a").await;
    let mut beats = 0;
    loop {
        match env.next_inbox().await.0 {
            InboxMessage::TaskHeartbeat { .. } => beats += 1,
            last => {
                assert_eq!(succeeded(&last), ("Book@1#0", &json!("done")));
                break;
            }
        }
    }
    assert!((1..=3).contains(&beats), "{beats} heartbeat messages");
    stop(stop_h, run).await;
}

/// Records how many calls run at once.
#[derive(Default)]
struct Gauge {
    now: AtomicUsize,
    max: AtomicUsize,
}

impl Gauge {
    fn enter(&self) {
        let n = self.now.fetch_add(1, Ordering::SeqCst) + 1;
        self.max.fetch_max(n, Ordering::SeqCst);
    }
    fn leave(&self) {
        self.now.fetch_sub(1, Ordering::SeqCst);
    }
}

#[tokio::test]
async fn concurrency_bounds_the_tasks_running_at_once() {
    let env = env().await;
    let gauge = Arc::new(Gauge::default());
    let g = gauge.clone();
    let handler = handler_fn(move |_: Value, _ctx: TaskContext| {
        let g = g.clone();
        async move {
            g.enter();
            tokio::time::sleep(Duration::from_millis(300)).await;
            g.leave();
            Ok::<_, TaskError>(json!(null))
        }
    });
    for n in 0..6 {
        env.publish_task(&env.task(n, "book", json!({})), &format!("t{n}"))
            .await;
    }
    let worker = env
        .builder()
        .handler("book", handler)
        .concurrency(2)
        .build()
        .await
        .expect("build");
    let (stop_h, run) = spawn(worker);
    let results = env.results(6).await;
    let mut ids: Vec<&str> = results.iter().map(|m| succeeded(m).0).collect();
    ids.sort();
    assert_eq!(
        ids,
        vec![
            "Book@0#0", "Book@1#0", "Book@2#0", "Book@3#0", "Book@4#0", "Book@5#0"
        ]
    );
    assert_eq!(gauge.max.load(Ordering::SeqCst), 2);
    stop(stop_h, run).await;
}

#[tokio::test]
async fn two_workers_share_a_handlers_tasks() {
    let env = env().await;
    let seen: Arc<Mutex<Vec<(&'static str, String)>>> = Arc::default();
    let make = |who: &'static str| {
        let seen = seen.clone();
        handler_fn(move |_: Value, ctx: TaskContext| {
            let seen = seen.clone();
            async move {
                seen.lock().expect("lock").push((who, ctx.task_id.clone()));
                tokio::time::sleep(Duration::from_millis(150)).await;
                Ok::<_, TaskError>(json!(who))
            }
        })
    };
    let a = env
        .builder()
        .handler("book", make("a"))
        .concurrency(1)
        .build()
        .await
        .expect("build a");
    let b = env
        .builder()
        .handler("book", make("b"))
        .concurrency(1)
        .build()
        .await
        .expect("build b");
    let (stop_a, run_a) = spawn(a);
    let (stop_b, run_b) = spawn(b);
    for n in 0..10 {
        env.publish_task(&env.task(n, "book", json!({})), &format!("t{n}"))
            .await;
    }
    let results = env.results(10).await;
    let mut by_task: HashMap<String, Value> = HashMap::new();
    for m in &results {
        let (id, who) = succeeded(m);
        assert!(
            by_task.insert(id.to_string(), who.clone()).is_none(),
            "{id} twice"
        );
    }
    assert_eq!(by_task.len(), 10);
    let seen = seen.lock().expect("lock").clone();
    assert_eq!(seen.len(), 10, "no task ran twice: {seen:?}");
    let on_a = seen.iter().filter(|(w, _)| *w == "a").count();
    assert!(on_a > 0 && on_a < 10, "both workers got tasks: {seen:?}");
    stop(stop_a, run_a).await;
    stop(stop_b, run_b).await;
}

#[tokio::test]
async fn a_task_of_a_dead_worker_is_redelivered_to_another() {
    let env = env().await;
    let (started_tx, mut started_rx) = mpsc::unbounded_channel();
    let stuck = handler_fn(move |_: Value, _ctx: TaskContext| {
        let _ = started_tx.send(());
        async {
            futures::future::pending::<()>().await;
            Ok::<_, TaskError>(json!("never"))
        }
    });
    let a = env
        .builder()
        .handler("book", stuck)
        .ack_wait(Duration::from_secs(1))
        .build()
        .await
        .expect("build a");
    let run_a = tokio::spawn(a.run());
    env.publish_task(&env.task(1, "book", json!({})), "t1")
        .await;
    tokio::time::timeout(PATIENCE, started_rx.recv())
        .await
        .expect("worker a got the task");
    // Worker a dies mid-task: nothing is acked.
    run_a.abort();
    assert!(run_a.await.expect_err("aborted").is_cancelled());

    let b = env
        .builder()
        .handler(
            "book",
            handler_fn(|_: Value, ctx: TaskContext| async move {
                Ok::<_, TaskError>(json!({"by": "b", "attempt": ctx.attempt}))
            }),
        )
        .ack_wait(Duration::from_secs(1))
        .build()
        .await
        .expect("build b");
    let (stop_b, run_b) = spawn(b);
    let results = env.results(1).await;
    assert_eq!(
        succeeded(&results[0]),
        ("Book@1#0", &json!({"by": "b", "attempt": 0}))
    );
    env.tasks_drained().await;
    stop(stop_b, run_b).await;
}

/// Publishes the same task twice (distinct `Nats-Msg-Id`s, so the tasks
/// stream keeps both) and returns the handler's call count, the two results
/// as published on the reply subject, and how many results the inbox kept.
async fn same_task_twice(idempotency: bool) -> (usize, Vec<Vec<u8>>, usize, Env) {
    let env = env().await;
    let calls = Arc::new(AtomicUsize::new(0));
    let c = calls.clone();
    let handler = handler_fn(move |_: Value, _ctx: TaskContext| {
        let n = c.fetch_add(1, Ordering::SeqCst);
        async move { Ok::<_, TaskError>(json!({ "call": n })) }
    });
    let worker = env
        .builder()
        .handler("pay", handler)
        .idempotency(idempotency)
        .build()
        .await
        .expect("build");
    let (stop_h, run) = spawn(worker);
    let task = env.task(1, "pay", json!({}));
    let mut replies = env
        .client
        .subscribe(task.reply_to.clone())
        .await
        .expect("subscribe");
    env.client.flush().await.expect("flush");

    let mut published = Vec::new();
    for id in ["first", "second"] {
        env.publish_task(&task, id).await;
        let m = tokio::time::timeout(PATIENCE, replies.next())
            .await
            .expect("a result")
            .expect("subscription open");
        published.push(m.payload.to_vec());
    }
    env.tasks_drained().await;
    stop(stop_h, run).await;
    let mut inbox = env.infra.inbox.clone();
    let kept = inbox.info().await.expect("inbox info").state.messages as usize;
    (calls.load(Ordering::SeqCst), published, kept, env)
}

#[tokio::test]
async fn with_idempotency_a_task_delivered_twice_runs_once() {
    let (calls, published, kept, env) = same_task_twice(true).await;
    assert_eq!(calls, 1);
    assert_eq!(
        published[0], published[1],
        "both deliveries publish the same result"
    );
    // The second publish carries the same Nats-Msg-Id: the inbox keeps one.
    assert_eq!(kept, 1);
    assert_the_first_call_is_recorded_and_published(&env, &published[0]).await;
}

/// The result published is the handler's first call's, and it is what the
/// idempotency store recorded for task `Book@1#0` of handler `pay`.
async fn assert_the_first_call_is_recorded_and_published(env: &Env, published: &[u8]) {
    let msg: InboxMessage = serde_json::from_slice(published).expect("json");
    assert_eq!(succeeded(&msg), ("Book@1#0", &json!({"call": 0})));
    let task = env.task(1, "pay", json!({}));
    let recorded = env
        .infra
        .idempotency
        .get(idempotency_key(&task.execution_arn, &task.task_id))
        .await
        .expect("kv get")
        .expect("recorded");
    assert_eq!(recorded.to_vec(), published);
}

#[tokio::test]
async fn without_idempotency_a_task_delivered_twice_runs_twice() {
    let (calls, published, kept, _env) = same_task_twice(false).await;
    assert_eq!(calls, 2);
    assert_ne!(published[0], published[1]);
    // Still a single result in the inbox thanks to the result's Nats-Msg-Id.
    assert_eq!(kept, 1);
}

/// Two deliveries of one task at the same time, on two workers: the second
/// waits for the first's claim instead of running the handler, through a
/// handler run longer than the claim's stale period (so the claim must be
/// refreshed).
#[tokio::test]
async fn with_idempotency_two_deliveries_at_once_run_the_handler_once() {
    let env = env().await;
    let calls = Arc::new(AtomicUsize::new(0));
    let (started_tx, mut started_rx) = mpsc::unbounded_channel();
    let mut workers = Vec::new();
    for _ in 0..2 {
        let c = calls.clone();
        let started = started_tx.clone();
        let handler = handler_fn(move |_: Value, _ctx: TaskContext| {
            let n = c.fetch_add(1, Ordering::SeqCst);
            let _ = started.send(());
            async move {
                // Four stale periods of the claim (ack wait 300 ms).
                tokio::time::sleep(Duration::from_millis(1200)).await;
                Ok::<_, TaskError>(json!({ "call": n }))
            }
        });
        let worker = env
            .builder()
            .handler("pay", handler)
            .concurrency(1)
            .ack_wait(Duration::from_millis(300))
            .idempotency(true)
            .build()
            .await
            .expect("build");
        workers.push(spawn(worker));
    }
    let task = env.task(1, "pay", json!({}));
    let mut replies = env
        .client
        .subscribe(task.reply_to.clone())
        .await
        .expect("subscribe");
    env.client.flush().await.expect("flush");
    env.publish_task(&task, "first").await;
    tokio::time::timeout(PATIENCE, started_rx.recv())
        .await
        .expect("the handler started");
    // The first delivery occupies one worker's only slot: the second goes
    // to the other worker while the handler still runs.
    env.publish_task(&task, "second").await;
    let mut published = Vec::new();
    for _ in 0..2 {
        let m = tokio::time::timeout(PATIENCE, replies.next())
            .await
            .expect("a result")
            .expect("subscription open");
        published.push(m.payload.to_vec());
    }
    env.tasks_drained().await;
    for (stop_h, run) in workers {
        stop(stop_h, run).await;
    }
    assert_eq!(calls.load(Ordering::SeqCst), 1, "the handler ran once");
    assert_eq!(
        published[0], published[1],
        "both deliveries publish the same result"
    );
    assert_the_first_call_is_recorded_and_published(&env, &published[0]).await;
}

/// A claim its holder stopped refreshing (the worker died) is taken over
/// once it stayed unchanged for the holder's ack wait.
#[tokio::test]
async fn a_claim_left_by_a_dead_worker_is_taken_over() {
    let env = env().await;
    let task = env.task(1, "pay", json!({}));
    let key = idempotency_key(&task.execution_arn, &task.task_id);
    env.infra
        .idempotency
        .create(
            key.as_str(),
            br#"{"claim":{"worker":"gone","staleAfterMs":200}}"#.as_slice().into(),
        )
        .await
        .expect("a claim");
    let calls = Arc::new(AtomicUsize::new(0));
    let c = calls.clone();
    let handler = handler_fn(move |_: Value, _ctx: TaskContext| {
        c.fetch_add(1, Ordering::SeqCst);
        async { Ok::<_, TaskError>(json!("taken over")) }
    });
    let worker = env
        .builder()
        .handler("pay", handler)
        .idempotency(true)
        .build()
        .await
        .expect("build");
    let (stop_h, run) = spawn(worker);
    let published = tokio::time::Instant::now();
    env.publish_task(&task, "t1").await;
    let results = env.results(1).await;
    assert_eq!(succeeded(&results[0]), ("Book@1#0", &json!("taken over")));
    // Not before the claim stayed unchanged for its 200 ms: a claim is not
    // simply overwritten.
    assert!(
        published.elapsed() >= Duration::from_millis(200),
        "taken over after {:?}",
        published.elapsed()
    );
    assert_eq!(calls.load(Ordering::SeqCst), 1);
    let recorded = env
        .infra
        .idempotency
        .get(key.as_str())
        .await
        .expect("kv get")
        .expect("recorded");
    let recorded: InboxMessage = serde_json::from_slice(&recorded).expect("a result");
    assert_eq!(succeeded(&recorded), ("Book@1#0", &json!("taken over")));
    env.tasks_drained().await;
    stop(stop_h, run).await;
}

#[tokio::test]
async fn graceful_shutdown_finishes_an_in_flight_task() {
    let env = env().await;
    let (started_tx, mut started_rx) = mpsc::unbounded_channel();
    let handler = handler_fn(move |_: Value, _ctx: TaskContext| {
        let _ = started_tx.send(());
        async {
            tokio::time::sleep(Duration::from_millis(500)).await;
            Ok::<_, TaskError>(json!("finished"))
        }
    });
    let worker = env
        .builder()
        .handler("book", handler)
        .build()
        .await
        .expect("build");
    let (stop_h, run) = spawn(worker);
    env.publish_task(&env.task(1, "book", json!({})), "t1")
        .await;
    tokio::time::timeout(PATIENCE, started_rx.recv())
        .await
        .expect("started");
    stop(stop_h, run).await;
    let results = env.results(1).await;
    assert_eq!(succeeded(&results[0]), ("Book@1#0", &json!("finished")));
    env.tasks_drained().await;
}

#[tokio::test]
async fn tasks_still_running_after_the_grace_period_are_handed_back() {
    handed_back_at_shutdown(false).await;
}

/// The claim of a task handed back is released: the next delivery runs at
/// once instead of waiting for the claim to go stale (30 s here).
#[tokio::test]
async fn with_idempotency_a_task_handed_back_releases_its_claim() {
    handed_back_at_shutdown(true).await;
}

async fn handed_back_at_shutdown(idempotency: bool) {
    let env = env().await;
    let (started_tx, mut started_rx) = mpsc::unbounded_channel();
    let never = Arc::new(Notify::new());
    let n = never.clone();
    let slow = handler_fn(move |_: Value, _ctx: TaskContext| {
        let _ = started_tx.send(());
        let n = n.clone();
        async move {
            n.notified().await;
            Ok::<_, TaskError>(json!("slow"))
        }
    });
    // The default ack wait (30 s) is longer than this test's patience: the
    // task can only reach worker b in time if worker a hands it back.
    let a = env
        .builder()
        .handler("book", slow)
        .grace_period(Duration::from_millis(200))
        .idempotency(idempotency)
        .build()
        .await
        .expect("build a");
    let (stop_a, run_a) = spawn(a);
    env.publish_task(&env.task(1, "book", json!({})), "t1")
        .await;
    tokio::time::timeout(PATIENCE, started_rx.recv())
        .await
        .expect("started");
    stop(stop_a, run_a).await;

    let b = env
        .builder()
        .handler(
            "book",
            handler_fn(|_: Value, _ctx: TaskContext| async { Ok::<_, TaskError>(json!("by b")) }),
        )
        .idempotency(idempotency)
        .build()
        .await
        .expect("build b");
    let (stop_b, run_b) = spawn(b);
    let results = env.results(1).await;
    assert_eq!(succeeded(&results[0]), ("Book@1#0", &json!("by b")));
    stop(stop_b, run_b).await;
}

#[tokio::test]
async fn oversized_results_are_reported_as_data_limit_exceeded() {
    let env = env().await;
    let handler = handler_fn(|_: Value, _ctx: TaskContext| async {
        Ok::<_, TaskError>(json!("x".repeat(1000)))
    });
    let worker = env
        .builder()
        .handler("book", handler)
        .max_payload_bytes(500)
        .build()
        .await
        .expect("build");
    let (stop_h, run) = spawn(worker);
    let task = env.task(1, "book", json!({}));
    env.publish_task(&task, "t1").await;
    let results = env.results(1).await;
    let (_, error, cause) = failed(&results[0]);
    assert_eq!(error, DATA_LIMIT_EXCEEDED);
    // AWS's cause, naming the state.
    assert_eq!(
        cause,
        format!(
            "The state/task '{}' returned a result with a size exceeding the maximum number of bytes service limit.",
            task.state_name
        )
    );
    stop(stop_h, run).await;
}

/// A limit over what a message holds is lowered to it: a result that could
/// never be stored (and whose task would be handed back for ever) is
/// reported as `States.DataLimitExceeded` instead.
#[tokio::test]
async fn a_result_limit_over_the_message_size_is_lowered_to_it() {
    let env = env().await;
    // 2 MiB of result; the streams hold 1 MiB messages.
    let handler = handler_fn(|_: Value, _ctx: TaskContext| async {
        Ok::<_, TaskError>(json!("x".repeat(2 * 1024 * 1024)))
    });
    let worker = env
        .builder()
        .handler("book", handler)
        .max_payload_bytes(8 * 1024 * 1024)
        .build()
        .await
        .expect("build");
    let (stop_h, run) = spawn(worker);
    let task = env.task(1, "book", json!({}));
    env.publish_task(&task, "t1").await;
    let results = env.results(1).await;
    assert_eq!(failed(&results[0]).1, DATA_LIMIT_EXCEEDED);
    env.tasks_drained().await;
    stop(stop_h, run).await;
}

/// A handler still running past its task's TimeoutSeconds is stopped (the
/// coordinator gave up on the task): its slot is free again and its task
/// acked, with `States.Timeout`. One that stops sending heartbeats is
/// stopped after HeartbeatSeconds, with `States.HeartbeatTimeout`.
#[tokio::test]
async fn a_handler_past_its_timeout_or_heartbeat_is_stopped() {
    let env = env().await;
    let dropped = Arc::new(AtomicUsize::new(0));
    struct CountDrop(Arc<AtomicUsize>);
    impl Drop for CountDrop {
        fn drop(&mut self) {
            self.0.fetch_add(1, Ordering::SeqCst);
        }
    }
    let seen = Arc::clone(&dropped);
    let hangs = handler_fn(move |_: Value, _ctx: TaskContext| {
        let guard = CountDrop(Arc::clone(&seen));
        async move {
            let _guard = guard;
            std::future::pending::<()>().await;
            Ok::<_, TaskError>(json!(null))
        }
    });
    let quick =
        handler_fn(|_: Value, _ctx: TaskContext| async { Ok::<_, TaskError>(json!("quick")) });
    let worker = env
        .builder()
        .handler("book", hangs)
        .handler("quick", quick)
        .concurrency(1)
        .build()
        .await
        .expect("build");
    let (stop_h, run) = spawn(worker);
    let started = std::time::Instant::now();
    let mut task = env.task(1, "book", json!({}));
    task.timeout_seconds = Some(1);
    env.publish_task(&task, "t1").await;
    let results = env.results(1).await;
    let (id, error, cause) = failed(&results[0]);
    assert_eq!((id, error), ("Book@1#0", "States.Timeout"), "{cause}");
    // TimeoutSeconds, and the second of grace.
    assert!(started.elapsed() >= Duration::from_secs(2));
    assert_eq!(dropped.load(Ordering::SeqCst), 1, "the handler was stopped");
    // Its one slot is free: the next task runs.
    let next = env.task(2, "quick", json!({}));
    env.publish_task(&next, "t2").await;
    assert_eq!(
        succeeded(&env.results(1).await[0]),
        ("Book@2#0", &json!("quick"))
    );

    // No heartbeat for HeartbeatSeconds.
    let mut task = env.task(3, "book", json!({}));
    task.heartbeat_seconds = Some(1);
    env.publish_task(&task, "t3").await;
    let results = env.results(1).await;
    assert_eq!(failed(&results[0]).1, "States.HeartbeatTimeout");
    assert_eq!(dropped.load(Ordering::SeqCst), 2);
    env.tasks_drained().await;
    stop(stop_h, run).await;
}

/// A task whose reply subject is not an inbox subject of the namespace is
/// terminated without running: a task message cannot make the worker
/// publish elsewhere.
#[tokio::test]
async fn a_reply_subject_outside_the_inbox_is_refused() {
    let env = env().await;
    let calls = Arc::new(AtomicUsize::new(0));
    let seen = Arc::clone(&calls);
    let handler = handler_fn(move |_: Value, _ctx: TaskContext| {
        seen.fetch_add(1, Ordering::SeqCst);
        async { Ok::<_, TaskError>(json!("ran")) }
    });
    let worker = env
        .builder()
        .handler("book", handler)
        .build()
        .await
        .expect("build");
    let (stop_h, run) = spawn(worker);
    let mut task = env.task(1, "book", json!({}));
    task.reply_to = "sagaflow.history.0.victim".into();
    env.publish_task(&task, "t1").await;
    env.tasks_drained().await;
    assert_eq!(calls.load(Ordering::SeqCst), 0);
    // The worker goes on serving.
    let task = env.task(2, "book", json!({}));
    env.publish_task(&task, "t2").await;
    assert_eq!(succeeded(&env.results(1).await[0]).1, &json!("ran"));
    stop(stop_h, run).await;
}

#[tokio::test]
async fn bad_configurations_are_refused() {
    let env = env().await;
    let err = env
        .builder()
        .handler("no spaces", echo())
        .build()
        .await
        .expect_err("bad name");
    assert!(matches!(err, WorkerError::InvalidHandlerName(_)), "{err}");
    let err = env.builder().build().await.expect_err("no handler");
    assert!(matches!(err, WorkerError::NoHandlers), "{err}");
    let err = env
        .builder()
        .handler("a", echo())
        .handler("a", echo())
        .build()
        .await
        .expect_err("duplicate");
    assert!(
        matches!(err, WorkerError::DuplicateHandler(ref h) if h == "a"),
        "{err}"
    );
    // Two names, one consumer name: refused in one worker...
    let err = env
        .builder()
        .handler("flights.book", echo())
        .handler("flights_book", echo())
        .build()
        .await
        .expect_err("clash");
    assert!(
        matches!(err, WorkerError::HandlerNamesClash { ref first, ref second, ref consumer }
            if first == "flights.book" && second == "flights_book" && consumer == "handler-flights_book"),
        "{err}"
    );
    // ... and across workers: the second does not take over the first's
    // consumer, which keeps its filter.
    let first = env
        .builder()
        .handler("cars.book", echo())
        .build()
        .await
        .expect("first worker");
    let err = env
        .builder()
        .handler("cars_book", echo())
        .build()
        .await
        .expect_err("clash across workers");
    assert!(
        matches!(err, WorkerError::HandlerNamesClash { ref first, ref second, .. }
            if first == "cars.book" && second == "cars_book"),
        "{err}"
    );
    let info = env
        .infra
        .tasks
        .consumer_info("handler-cars_book")
        .await
        .expect("consumer info");
    assert_eq!(
        info.config.filter_subject,
        env.infra.ns().task_subject("cars.book")
    );
    drop(first);
    let err = env
        .builder()
        .handler("a", echo())
        .concurrency(0)
        .build()
        .await
        .expect_err("zero concurrency");
    assert!(
        matches!(
            err,
            WorkerError::InvalidOption {
                option: "concurrency",
                ..
            }
        ),
        "{err}"
    );
}

#[tokio::test]
async fn a_custom_namespace_is_used() {
    let server = NatsServer::start().expect("nats-server starts");
    let client = sagaflow_nats::connect(&server.url())
        .await
        .expect("connect");
    let ns = sagaflow_protocol::Namespace::new("acme").expect("ns");
    let worker = Worker::builder(client)
        .namespace(ns)
        .handler("book", echo())
        .build()
        .await
        .expect("build");
    assert_eq!(worker.infra().ns().tasks_stream(), "ACME_TASKS");
    worker
        .infra()
        .tasks
        .consumer_info("handler-book")
        .await
        .expect("consumer in the acme tasks stream");
}

#[tokio::test]
async fn the_last_worker_started_sets_the_shared_consumers_ack_wait() {
    let env = env().await;
    let consumer = env.infra.ns().task_consumer("book");
    let _a = env
        .builder()
        .handler("book", echo())
        .ack_wait(Duration::from_secs(5))
        .concurrency(2000)
        .build()
        .await
        .expect("build a");
    let info = env
        .infra
        .tasks
        .consumer_info(&consumer)
        .await
        .expect("info");
    assert_eq!(info.config.ack_wait, Duration::from_secs(5));
    assert_eq!(info.config.max_ack_pending, 2000);
    let _b = env
        .builder()
        .handler("book", echo())
        .ack_wait(Duration::from_secs(2))
        .concurrency(3)
        .build()
        .await
        .expect("build b");
    let info = env
        .infra
        .tasks
        .consumer_info(&consumer)
        .await
        .expect("info");
    assert_eq!(info.config.ack_wait, Duration::from_secs(2));
    // Never lowered: the first worker still needs its 2000.
    assert_eq!(info.config.max_ack_pending, 2000);
}

/// A stand-in for a partition owner on `sagaflow.result.>`: answers each
/// result with `recorded` and forwards it to the test.
async fn result_taker(
    env: &Env,
    recorded: bool,
) -> (
    tokio::sync::mpsc::UnboundedReceiver<InboxMessage>,
    JoinHandle<()>,
) {
    let mut sub = env
        .client
        .subscribe(env.infra.ns().result_wildcard())
        .await
        .expect("subscribe");
    let client = env.client.clone();
    let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
    let task = tokio::spawn(async move {
        while let Some(m) = sub.next().await {
            let msg: InboxMessage = serde_json::from_slice(&m.payload).expect("result JSON");
            let _ = tx.send(msg);
            let answer = sagaflow_protocol::ResultReply {
                recorded,
                error: (!recorded).then(|| "history unavailable".to_string()),
            };
            if let Some(reply) = m.reply {
                client
                    .publish(reply, serde_json::to_vec(&answer).expect("encode").into())
                    .await
                    .expect("answer");
            }
        }
    });
    env.client.flush().await.expect("flush");
    (rx, task)
}

/// The task of `env.task`, with its result sent to the partition's owner
/// first.
fn direct_task(env: &Env, n: usize, handler: &str, input: Value) -> TaskMessage {
    let mut task = env.task(n, handler, input);
    let exec = ExecutionRef::from_arn(&task.execution_arn).expect("arn");
    task.result_to = Some(env.infra.ns().result_subject(exec.partition(16), &exec));
    task
}

/// Messages in the inbox stream.
async fn inbox_messages(env: &Env) -> u64 {
    let mut inbox = env.infra.inbox.clone();
    inbox.info().await.expect("inbox info").state.messages
}

/// A worker serving `flights.book` with [`echo`], and one task for it
/// (number `n`, from `from`) whose result goes to the owner first.
async fn serve_direct_task(
    env: &Env,
    n: usize,
    from: &str,
) -> (TaskMessage, ShutdownHandle, JoinHandle<()>) {
    let worker = env
        .builder()
        .handler("flights.book", echo())
        .build()
        .await
        .expect("build");
    let (stop_h, run) = spawn(worker);
    let task = direct_task(env, n, "flights.book", json!({"from": from}));
    env.publish_task(&task, &format!("k/{n}")).await;
    (task, stop_h, run)
}

/// The next result the stand-in owner took.
async fn next_taken(
    taken: &mut tokio::sync::mpsc::UnboundedReceiver<InboxMessage>,
) -> InboxMessage {
    tokio::time::timeout(PATIENCE, taken.recv())
        .await
        .expect("a result within the patience")
        .expect("taker alive")
}

#[tokio::test]
async fn a_result_recorded_by_the_coordinator_skips_the_inbox() {
    let env = env().await;
    let (mut taken, taker) = result_taker(&env, true).await;
    let (task, stop_h, run) = serve_direct_task(&env, 1, "CDG").await;
    let msg = next_taken(&mut taken).await;
    let (task_id, output) = succeeded(&msg);
    assert_eq!(task_id, task.task_id);
    assert_eq!(output["input"], json!({"from": "CDG"}));
    // Acked once recorded, and never stored in the inbox.
    env.tasks_drained().await;
    assert_eq!(inbox_messages(&env).await, 0);
    stop(stop_h, run).await;
    taker.abort();
}

#[tokio::test]
async fn a_result_the_coordinator_did_not_record_goes_to_the_inbox() {
    let env = env().await;
    let (mut taken, taker) = result_taker(&env, false).await;
    let (task, stop_h, run) = serve_direct_task(&env, 2, "NRT").await;
    assert_eq!(succeeded(&next_taken(&mut taken).await).0, task.task_id);
    let (msg, msg_id) = env.next_inbox().await;
    let (task_id, output) = succeeded(&msg);
    assert_eq!(task_id, task.task_id);
    assert_eq!(output["input"], json!({"from": "NRT"}));
    assert_eq!(
        msg_id.as_deref(),
        Some(result_msg_id(&task.reply_to, &task.task_id).as_str())
    );
    env.tasks_drained().await;
    stop(stop_h, run).await;
    taker.abort();
}

#[tokio::test]
async fn a_result_nobody_takes_directly_goes_to_the_inbox() {
    let env = env().await;
    // No partition owner listens: "no responders", then the inbox.
    let (task, stop_h, run) = serve_direct_task(&env, 3, "SFO").await;
    let (msg, _) = env.next_inbox().await;
    assert_eq!(succeeded(&msg).0, task.task_id);
    env.tasks_drained().await;
    stop(stop_h, run).await;
}
