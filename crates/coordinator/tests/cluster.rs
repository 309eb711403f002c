//! The coordinator over a real nats-server: executions run to the end,
//! survive restarts, and are never advanced twice.

use std::time::Duration;

use async_nats::jetstream::{self, consumer};
use futures::StreamExt;
use serde_json::{Value, json};

use sagaflow_coordinator::cluster::store::Forget;
use sagaflow_coordinator::cluster::{Cluster, ClusterHandle, ClusterOptions};
use sagaflow_protocol::api::{ExecutionDescription, ExecutionStatus};
use sagaflow_protocol::{ExecutionRef, InboxMessage, Namespace, StartExecution, TaskMessage};
use sagaflow_testkit::NatsServer;

const SAGA: &str = r#"{
  "StartAt": "BookFlight",
  "States": {
    "BookFlight": {"Type": "Task", "Resource": "arn:aws:lambda:us-east-1:123456789012:function:book_flight",
      "ResultPath": "$.flight", "Next": "BookCar",
      "Catch": [{"ErrorEquals": ["States.ALL"], "ResultPath": "$.error", "Next": "Failed"}]},
    "BookCar": {"Type": "Task", "Resource": "book_car", "ResultPath": "$.car", "End": true,
      "Catch": [{"ErrorEquals": ["States.ALL"], "ResultPath": "$.error", "Next": "CancelFlight"}]},
    "CancelFlight": {"Type": "Task", "Resource": "cancel_flight", "ResultPath": null, "Next": "Failed"},
    "Failed": {"Type": "Fail", "Error": "BookingFailed", "Cause": "compensated"}
  }
}"#;

fn options() -> ClusterOptions {
    let mut o = ClusterOptions {
        partitions: 4,
        api: false,
        ..ClusterOptions::default()
    };
    o.settings.lease_ttl = Duration::from_secs(2);
    o
}

async fn start_cluster(url: &str) -> ClusterHandle {
    let client = sagaflow_nats::connect(url).await.expect("connect");
    Cluster::start(client, options()).await.expect("cluster")
}

async fn deploy(cluster: &ClusterHandle) -> u64 {
    cluster
        .store()
        .create_machine("travel", SAGA, "2024-01-01T00:00:00Z")
        .await
        .expect("machine")
        .version
}

async fn start(
    url: &str,
    cluster: &ClusterHandle,
    name: &str,
    input: Value,
    version: u64,
) -> ExecutionRef {
    let client = async_nats::connect(url).await.unwrap();
    let js = jetstream::new(client);
    let exec = ExecutionRef::new("travel", name).unwrap();
    let ns = Namespace::default();
    let start = InboxMessage::StartExecution(StartExecution {
        execution_arn: exec.arn(),
        version,
        input,
        seed: 1,
        traceparent: None,
        parent: None,
    });
    let subject = ns.inbox_subject(cluster.store().partition_of(&exec), &exec);
    js.publish(subject, serde_json::to_vec(&start).unwrap().into())
        .await
        .unwrap()
        .await
        .unwrap();
    exec
}

async fn wait_done(cluster: &ClusterHandle, exec: &ExecutionRef) -> ExecutionDescription {
    for _ in 0..400 {
        if let Ok(Some(d)) = cluster.store().execution(exec).await
            && d.status != ExecutionStatus::Running
        {
            return d;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    panic!("{} did not finish", exec.arn());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_saga_succeeds_and_another_compensates() {
    let server = NatsServer::start().expect("nats-server");
    let cluster = start_cluster(&server.url()).await;
    let version = deploy(&cluster).await;
    let ledger = Ledger::default();
    tokio::spawn(ledger_participant(server.url(), ledger.clone(), "p1"));

    let ok = start(&server.url(), &cluster, "ok-1", json!({"trip": 1}), version).await;
    let bad = start(
        &server.url(),
        &cluster,
        "bad-1",
        json!({"trip": 2, "fail": "car"}),
        version,
    )
    .await;
    let ok = wait_done(&cluster, &ok).await;
    let bad = wait_done(&cluster, &bad).await;
    assert_eq!(ok.status, ExecutionStatus::Succeeded, "{ok:?}");
    assert_eq!(bad.status, ExecutionStatus::Failed, "{bad:?}");
    assert_eq!(bad.error.as_deref(), Some("BookingFailed"));

    // The car failure was compensated: the flight cancelled once.
    let done = [ok, bad];
    check_ledger(&ledger, &done);
    // The histories hold every step, in order, each once.
    check_histories(cluster.store(), &done).await;
    let history = cluster
        .store()
        .read_history(&ExecutionRef::from_arn(&done[0].execution_arn).unwrap())
        .await
        .unwrap();
    assert!(history.batches[0].meta.is_some());
    cluster.shutdown().await;
}

/// What an execution's history says happened: the top-level states
/// entered, in order, the task ids scheduled and the task ids answered.
async fn history_of(
    store: &sagaflow_coordinator::cluster::Store,
    arn: &str,
) -> (Vec<String>, Vec<String>, Vec<String>) {
    use sagaflow_asl::interp::{Command, Event, Record};
    use sagaflow_coordinator::HistoryItem;
    let history = store
        .read_history(&ExecutionRef::from_arn(arn).unwrap())
        .await
        .unwrap_or_else(|e| panic!("history of {arn}: {e}"));
    let (mut entered, mut scheduled, mut answered) = (Vec::new(), Vec::new(), Vec::new());
    for entry in history.batches.iter().flat_map(|b| &b.entries) {
        match &entry.item {
            HistoryItem::Command(Command::Record(Record::StateEntered { name, .. })) => {
                entered.push(name.to_string());
            }
            HistoryItem::Command(Command::ScheduleTask(t)) => scheduled.push(t.task_id.to_string()),
            HistoryItem::Event(Event::TaskSucceeded { task_id, .. })
            | HistoryItem::Event(Event::TaskFailed { task_id, .. }) => {
                answered.push(task_id.clone());
            }
            _ => {}
        }
    }
    (entered, scheduled, answered)
}

/// Every execution advanced exactly once along its path: its states entered
/// once each, in order, and every task scheduled once and answered once. An
/// execution advanced twice (by two owners, or by a replayed event) would
/// show a state entered again or a task scheduled or answered again.
async fn check_histories(
    store: &sagaflow_coordinator::cluster::Store,
    done: &[ExecutionDescription],
) {
    for d in done {
        let (entered, scheduled, answered) = history_of(store, &d.execution_arn).await;
        let expected: &[&str] = match d.status {
            ExecutionStatus::Succeeded => &["BookFlight", "BookCar"],
            _ => &["BookFlight", "BookCar", "CancelFlight", "Failed"],
        };
        assert_eq!(entered, expected, "{}: states entered", d.execution_arn);
        let tasks = expected.len().min(3);
        assert_eq!(scheduled.len(), tasks, "{}: {scheduled:?}", d.execution_arn);
        assert_eq!(answered, scheduled, "{}: answers", d.execution_arn);
    }
}

/// What the test participant did: effects keyed by (execution, handler),
/// each a set of task ids (a task id seen twice is a redelivery, not a
/// second effect).
type Ledger = std::sync::Arc<
    std::sync::Mutex<
        std::collections::HashMap<(String, String), std::collections::HashSet<String>>,
    >,
>;

/// A participant written against the wire protocol: answers every task
/// (`book_car` fails when the input says so) and keeps a ledger.
async fn ledger_participant(url: String, ledger: Ledger, name: &'static str) {
    let client = async_nats::connect(&url).await.expect("connect");
    let js = jetstream::new(client);
    let ns = Namespace::default();
    let stream = loop {
        match js.get_stream(ns.tasks_stream()).await {
            Ok(s) => break s,
            Err(_) => tokio::time::sleep(Duration::from_millis(50)).await,
        }
    };
    let consumer = stream
        .get_or_create_consumer::<consumer::pull::Config>(
            name,
            consumer::pull::Config {
                durable_name: Some(name.into()),
                filter_subject: ns.task_wildcard(),
                ack_policy: consumer::AckPolicy::Explicit,
                ack_wait: Duration::from_secs(2),
                ..Default::default()
            },
        )
        .await
        .expect("consumer");
    let mut messages = consumer.messages().await.expect("messages");
    while let Some(Ok(message)) = messages.next().await {
        let task: TaskMessage = serde_json::from_slice(&message.payload).expect("task");
        tokio::time::sleep(Duration::from_millis(5)).await;
        ledger
            .lock()
            .unwrap()
            .entry((task.execution_arn.clone(), task.handler.clone()))
            .or_default()
            .insert(task.task_id.clone());
        let reply = if task.handler == "book_car" && task.input["fail"] == json!("car") {
            InboxMessage::TaskFailed {
                execution_arn: task.execution_arn.clone(),
                task_id: task.task_id.clone(),
                error: "CarUnavailable".into(),
                cause: "no cars".into(),
                callback: false,
            }
        } else {
            InboxMessage::TaskSucceeded {
                execution_arn: task.execution_arn.clone(),
                task_id: task.task_id.clone(),
                output: json!({"by": task.handler}),
                callback: false,
            }
        };
        let body = serde_json::to_vec(&reply).unwrap();
        if let Ok(ack) = js.publish(task.reply_to.clone(), body.into()).await
            && ack.await.is_ok()
        {
            let _ = message.ack().await;
        }
    }
}

async fn store_for(url: &str) -> sagaflow_coordinator::cluster::Store {
    let client = sagaflow_nats::connect(url).await.unwrap();
    let infra = sagaflow_nats::setup(client, options().settings)
        .await
        .unwrap();
    sagaflow_coordinator::cluster::Store::new(infra, options().partitions)
}

async fn publish_start(
    url: &str,
    store: &sagaflow_coordinator::cluster::Store,
    name: &str,
    input: Value,
    version: u64,
) -> ExecutionRef {
    let client = async_nats::connect(url).await.unwrap();
    let js = jetstream::new(client);
    let exec = ExecutionRef::new("travel", name).unwrap();
    let start = InboxMessage::StartExecution(StartExecution {
        execution_arn: exec.arn(),
        version,
        input,
        seed: 1,
        traceparent: None,
        parent: None,
    });
    let subject = Namespace::default().inbox_subject(store.partition_of(&exec), &exec);
    js.publish(subject, serde_json::to_vec(&start).unwrap().into())
        .await
        .unwrap()
        .await
        .unwrap();
    exec
}

async fn wait_all(
    store: &sagaflow_coordinator::cluster::Store,
    execs: &[ExecutionRef],
    limit: Duration,
) -> Vec<ExecutionDescription> {
    let deadline = tokio::time::Instant::now() + limit;
    loop {
        let mut done = Vec::new();
        for e in execs {
            if let Ok(Some(d)) = store.execution(e).await
                && d.status != ExecutionStatus::Running
            {
                done.push(d);
            }
        }
        if done.len() == execs.len() {
            return done;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "{} of {} finished",
            done.len(),
            execs.len()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

fn check_ledger(ledger: &Ledger, done: &[ExecutionDescription]) {
    let ledger = ledger.lock().unwrap();
    for d in done {
        let effects = |h: &str| {
            ledger
                .get(&(d.execution_arn.clone(), h.to_string()))
                .map_or(0, |s| s.len())
        };
        assert_eq!(
            effects("book_flight"),
            1,
            "{}: flight booked once",
            d.execution_arn
        );
        match d.status {
            ExecutionStatus::Succeeded => {
                assert_eq!(effects("book_car"), 1);
                assert_eq!(
                    effects("cancel_flight"),
                    0,
                    "{}: nothing to undo",
                    d.execution_arn
                );
            }
            ExecutionStatus::Failed => {
                assert_eq!(d.error.as_deref(), Some("BookingFailed"));
                assert_eq!(
                    effects("cancel_flight"),
                    1,
                    "{}: flight cancelled exactly once",
                    d.execution_arn
                );
            }
            other => panic!("{}: unexpected {other:?}", d.execution_arn),
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_crashed_coordinator_is_replaced_and_nothing_is_lost() {
    let server = NatsServer::start().expect("nats-server");
    let url = server.url();
    let store = store_for(&url).await;
    let version = store
        .create_machine("travel", SAGA, "2024-01-01T00:00:00Z")
        .await
        .unwrap()
        .version;
    let ledger = Ledger::default();
    tokio::spawn(ledger_participant(url.clone(), ledger.clone(), "p1"));

    // Coordinator A runs on a runtime of its own, which is shut down
    // abruptly: no lease is released, nothing is flushed.
    let runtime_a = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .unwrap();
    let url_a = url.clone();
    runtime_a.spawn(async move {
        let client = sagaflow_nats::connect(&url_a).await.unwrap();
        let _handle = Cluster::start(client, options()).await.unwrap();
        std::future::pending::<()>().await;
    });

    let mut execs = Vec::new();
    for i in 0..40 {
        let input = if i % 2 == 0 {
            json!({"i": i})
        } else {
            json!({"i": i, "fail": "car"})
        };
        execs.push(publish_start(&url, &store, &format!("trip-{i}"), input, version).await);
    }
    // Let A make progress (some sagas ended, some still running), then
    // crash it.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    loop {
        let mut ended = 0;
        for e in &execs {
            if let Ok(Some(d)) = store.execution(e).await
                && d.status != ExecutionStatus::Running
            {
                ended += 1;
            }
        }
        if ended > 0 {
            break;
        }
        assert!(tokio::time::Instant::now() < deadline, "A made no progress");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    runtime_a.shutdown_background();
    let mut unfinished = 0;
    for e in &execs {
        match store.execution(e).await.unwrap() {
            Some(d) if d.status != ExecutionStatus::Running => {}
            _ => unfinished += 1,
        }
    }
    assert!(
        unfinished > 0,
        "the crash must leave work for the next coordinator"
    );

    // Coordinator B takes over once A's leases expire.
    let b = start_cluster(&url).await;
    let done = wait_all(&store, &execs, Duration::from_secs(60)).await;
    check_ledger(&ledger, &done);
    check_histories(&store, &done).await;
    b.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_coordinators_share_the_work_and_never_advance_an_execution_twice() {
    let server = NatsServer::start().expect("nats-server");
    let url = server.url();
    let store = store_for(&url).await;
    let version = store
        .create_machine("travel", SAGA, "2024-01-01T00:00:00Z")
        .await
        .unwrap()
        .version;
    let ledger = Ledger::default();
    tokio::spawn(ledger_participant(url.clone(), ledger.clone(), "p1"));
    let a = start_cluster(&url).await;
    let b = start_cluster(&url).await;
    let mut execs = Vec::new();
    for i in 0..40 {
        let input = if i % 3 == 0 {
            json!({"i": i, "fail": "car"})
        } else {
            json!({"i": i})
        };
        execs.push(publish_start(&url, &store, &format!("two-{i}"), input, version).await);
    }
    // While they run, take partition 0's lease away from its owner a few
    // times: the other coordinator takes the partition while the first
    // still holds its executions in memory (until its next renewal fails),
    // so both may try to advance the same execution. Only one append can
    // win (expected last sequence); the histories below show no step twice.
    let infra = store.infra();
    let mut owners_of_p0 = std::collections::HashSet::new();
    for _ in 0..6 {
        if let Ok(Some(owner)) = infra.leases.get("p0").await {
            owners_of_p0.insert(String::from_utf8_lossy(&owner).to_string());
        }
        let _ = infra.leases.delete("p0").await;
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    let done = wait_all(&store, &execs, Duration::from_secs(60)).await;
    check_ledger(&ledger, &done);
    check_histories(&store, &done).await;
    if let Ok(Some(owner)) = infra.leases.get("p0").await {
        owners_of_p0.insert(String::from_utf8_lossy(&owner).to_string());
    }
    assert!(
        !owners_of_p0.is_empty(),
        "partition 0 had an owner during the run"
    );
    // Both coordinators own partitions (the work is shared). Rebalancing
    // runs every third of the lease TTL: wait for it rather than race it.
    let mut owners = std::collections::HashSet::new();
    for _ in 0..100 {
        owners.clear();
        for p in 0..options().partitions {
            if let Ok(Some(v)) = infra.leases.get(format!("p{p}")).await {
                owners.insert(String::from_utf8_lossy(&v).to_string());
            }
        }
        if owners.len() == 2 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(owners.len(), 2, "leases: {owners:?}");
    a.shutdown().await;
    b.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn of_two_appends_expecting_the_same_sequence_exactly_one_wins() {
    use sagaflow_coordinator::cluster::store::{HistoryBatch, StoreError};
    let server = NatsServer::start().expect("nats-server");
    let store = store_for(&server.url()).await;
    let exec = ExecutionRef::new("travel", "race").unwrap();
    let batch = HistoryBatch {
        meta: None,
        entries: Vec::new(),
        part: None,
    };
    let first = store.append_history(&exec, 0, &batch).await.unwrap();
    let (x, y) = tokio::join!(
        store.append_history(&exec, first, &batch),
        store.append_history(&exec, first, &batch)
    );
    let wins = [&x, &y].iter().filter(|r| r.is_ok()).count();
    assert_eq!(wins, 1, "{x:?} {y:?}");
    assert!(
        [x, y]
            .into_iter()
            .any(|r| matches!(r, Err(StoreError::Conflict { .. })))
    );
    assert!(matches!(
        store.append_history(&exec, 0, &batch).await,
        Err(StoreError::Conflict { .. })
    ));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn index_changes_are_read_from_where_the_last_read_stopped() {
    let server = NatsServer::start().expect("nats-server");
    let store = store_for(&server.url()).await;
    // Executions of one partition.
    let mut execs = Vec::new();
    let mut n = 0;
    while execs.len() < 3 {
        let exec = ExecutionRef::new("travel", &format!("x{n}")).unwrap();
        if store.partition_of(&exec) == 1 {
            execs.push(exec);
        }
        n += 1;
    }
    let desc = |exec: &ExecutionRef, status: ExecutionStatus| ExecutionDescription {
        execution_arn: exec.arn(),
        name: exec.name().to_string(),
        state_machine: "travel".into(),
        version: 1,
        status,
        start_date: "2024-01-01T00:00:00.000Z".into(),
        stop_date: (status != ExecutionStatus::Running).then(|| "2024-01-01T00:00:01.000Z".into()),
        input: None,
        output: None,
        error: None,
        cause: None,
        redrive_count: 0,
        trace_id: None,
    };
    let (none, cursor) = store.partition_index_changes(1, 0).await.unwrap();
    assert!(none.is_empty());
    assert_eq!(cursor, 0);
    for exec in &execs {
        store
            .put_execution(&desc(exec, ExecutionStatus::Running))
            .await
            .unwrap();
    }
    // The first read: every entry as it stands.
    let (all, cursor) = store.partition_index_changes(1, 0).await.unwrap();
    assert_eq!(all.len(), 3, "{all:?}");
    assert!(
        all.iter()
            .all(|c| c.entry.as_ref().unwrap().status == ExecutionStatus::Running)
    );
    // Nothing changed: nothing read.
    let (same, again) = store.partition_index_changes(1, cursor).await.unwrap();
    assert!(same.is_empty(), "{same:?}");
    assert_eq!(again, cursor);
    // One ends, one is deleted: only those two changes come.
    store
        .put_execution(&desc(&execs[0], ExecutionStatus::Succeeded))
        .await
        .unwrap();
    // (Only an ended execution is deleted.)
    store
        .put_execution(&desc(&execs[1], ExecutionStatus::Aborted))
        .await
        .unwrap();
    assert_eq!(
        store.forget_execution(&execs[1]).await.unwrap(),
        Forget::Forgotten
    );
    let (changes, later) = store.partition_index_changes(1, cursor).await.unwrap();
    assert!(later > cursor);
    assert_eq!(changes.len(), 2, "{changes:?}");
    assert_eq!(changes[0].key, execs[0].key());
    assert_eq!(
        changes[0].entry.as_ref().unwrap().status,
        ExecutionStatus::Succeeded
    );
    assert_eq!(changes[1].key, execs[1].key());
    assert_eq!(changes[1].entry, None);
    // Another partition's entries are not read.
    let other = (0..)
        .map(|i| ExecutionRef::new("travel", &format!("y{i}")).unwrap())
        .find(|e| store.partition_of(e) != 1)
        .unwrap();
    store
        .put_execution(&desc(&other, ExecutionStatus::Running))
        .await
        .unwrap();
    let (none, _) = store.partition_index_changes(1, later).await.unwrap();
    assert!(none.is_empty(), "{none:?}");
    // A running execution (redriven, say, after its retention ran out) is
    // not deleted.
    assert_eq!(
        store.forget_execution(&execs[2]).await.unwrap(),
        Forget::Running
    );
    assert_eq!(
        store.execution(&execs[2]).await.unwrap().map(|d| d.status),
        Some(ExecutionStatus::Running)
    );
}

/// Waiting for an execution goes on while no coordinator answers (one
/// restarting, failing over): the wait ends with the execution's end, not
/// with the first error.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn waiting_outlasts_a_coordinator_restart() {
    let server = NatsServer::start().expect("nats-server");
    let url = server.url();
    let with_api = || {
        let mut o = options();
        o.api = true;
        o
    };
    let a = Cluster::start(sagaflow_nats::connect(&url).await.unwrap(), with_api())
        .await
        .expect("cluster a");
    let version = a
        .store()
        .create_machine(
            "waiter",
            r#"{"StartAt": "W", "States": {"W": {"Type": "Wait", "Seconds": 1, "End": true}}}"#,
            "2024-01-01T00:00:00Z",
        )
        .await
        .expect("machine")
        .version;
    let api = sagaflow_coordinator::cluster::client::ApiClient::new(
        sagaflow_nats::connect(&url).await.unwrap(),
        Namespace::default(),
    )
    .with_timeout(Duration::from_millis(500));
    let started = api
        .start_execution(sagaflow_protocol::api::StartExecutionRequest {
            state_machine: "waiter".into(),
            version: Some(version),
            name: Some("w1".into()),
            input: Some(json!({})),
            traceparent: None,
        })
        .await
        .expect("started");
    assert_eq!(
        started.execution_arn,
        ExecutionRef::new("waiter", "w1").unwrap().arn()
    );
    // Wait until it is indexed (running), then take the only coordinator
    // away.
    for _ in 0..100 {
        if api.describe_execution(&started.execution_arn).await.is_ok() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    a.shutdown().await;
    let waiting = {
        let api = api.clone();
        let arn = started.execution_arn.clone();
        tokio::spawn(async move { api.wait_for_completion(&arn, Duration::from_secs(30)).await })
    };
    // Nobody answers for a while.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert!(
        !waiting.is_finished(),
        "the wait ended while no coordinator answered"
    );
    let b = Cluster::start(sagaflow_nats::connect(&url).await.unwrap(), with_api())
        .await
        .expect("cluster b");
    let done = tokio::time::timeout(Duration::from_secs(30), waiting)
        .await
        .expect("the wait ends")
        .expect("the wait did not panic")
        .expect("the execution's end");
    assert_eq!(done.status, ExecutionStatus::Succeeded);
    b.shutdown().await;
}
