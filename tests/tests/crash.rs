//! Crash tests over a real nats-server, with coordinators and participants
//! as separate processes that are killed with SIGKILL at random moments.
//!
//! The child processes are this test binary itself, started with
//! `--ignored --exact child_process` and a role in `SAGAFLOW_CRASH_ROLE`.
//!
//! Every test runs 200 travel-booking sagas (BookFlight, BookHotel, BookCar;
//! half of them fail at BookCar and cancel the hotel, then the flight) and
//! checks, in the participants' own ledger (a KV bucket each effect is
//! created in once, keyed by the task's idempotency key), that every saga
//! ended SUCCEEDED or FAILED and that every booking was made once and every
//! completed booking of a failed saga was cancelled exactly once.

use std::collections::HashMap;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use async_nats::jetstream::{self, kv};
use base64::Engine as _;
use futures::StreamExt;
use serde_json::{Value, json};

use sagaflow_coordinator::cluster::{Cluster, ClusterOptions, Store};
use sagaflow_participant::worker::Worker;
use sagaflow_participant::{TaskContext, TaskError, handler_fn};
use sagaflow_protocol::api::{ExecutionDescription, ExecutionStatus};
use sagaflow_protocol::{ExecutionRef, InboxMessage, Namespace, StartExecution};
use sagaflow_testkit::NatsServer;

const SAGAS: usize = 200;
const LEDGER: &str = "TEST_LEDGER";

const SAGA: &str = r#"{
  "StartAt": "BookFlight",
  "States": {
    "BookFlight": {"Type": "Task", "Resource": "arn:aws:lambda:us-east-1:123456789012:function:book_flight",
      "ResultPath": "$.flight", "Next": "BookHotel",
      "Catch": [{"ErrorEquals": ["States.ALL"], "ResultPath": "$.error", "Next": "Failed"}]},
    "BookHotel": {"Type": "Task", "Resource": "book_hotel", "ResultPath": "$.hotel", "Next": "BookCar",
      "Catch": [{"ErrorEquals": ["States.ALL"], "ResultPath": "$.error", "Next": "CancelFlight"}]},
    "BookCar": {"Type": "Task", "Resource": "book_car", "ResultPath": "$.car", "End": true,
      "Catch": [{"ErrorEquals": ["States.ALL"], "ResultPath": "$.error", "Next": "CancelHotel"}]},
    "CancelHotel": {"Type": "Task", "Resource": "cancel_hotel", "ResultPath": null, "Next": "CancelFlight",
      "Retry": [{"ErrorEquals": ["States.ALL"], "IntervalSeconds": 1, "MaxAttempts": 10}]},
    "CancelFlight": {"Type": "Task", "Resource": "cancel_flight", "ResultPath": null, "Next": "Failed",
      "Retry": [{"ErrorEquals": ["States.ALL"], "IntervalSeconds": 1, "MaxAttempts": 10}]},
    "Failed": {"Type": "Fail", "Error": "BookingFailed", "Cause": "compensated"}
  }
}"#;

fn cluster_options() -> ClusterOptions {
    let mut o = ClusterOptions {
        partitions: 8,
        api: false,
        ..ClusterOptions::default()
    };
    o.settings.lease_ttl = Duration::from_secs(2);
    o
}

fn b64(text: &str) -> String {
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(text)
}

// ----------------------------------------------------------- the children

/// The child processes: a coordinator or a participant, by role.
#[test]
#[ignore = "a child process of the crash tests, started by them"]
fn child_process() {
    let role = std::env::var("SAGAFLOW_CRASH_ROLE").expect("role");
    let url = std::env::var("NATS_URL").expect("url");
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    runtime.block_on(async move {
        match role.as_str() {
            "coordinator" => {
                let client = sagaflow_nats::connect(&url).await.expect("connect");
                let _cluster = Cluster::start(client, cluster_options())
                    .await
                    .expect("start");
                std::future::pending::<()>().await;
            }
            "participant" => participant(&url).await,
            other => panic!("unknown role {other}"),
        }
    });
}

/// A participant whose effects are entries created in the ledger bucket,
/// keyed by the task's idempotency key: a redelivered task finds its entry
/// and does nothing twice.
async fn participant(url: &str) {
    let client = sagaflow_nats::connect(url).await.expect("connect");
    let js = jetstream::new(client.clone());
    let ledger = loop {
        match js.get_key_value(LEDGER).await {
            Ok(kv) => break kv,
            Err(_) => tokio::time::sleep(Duration::from_millis(50)).await,
        }
    };
    let ledger = Arc::new(ledger);
    let mut builder = Worker::builder(client)
        .concurrency(16)
        .ack_wait(Duration::from_secs(2))
        .idempotency(true);
    for handler in [
        "book_flight",
        "book_hotel",
        "book_car",
        "cancel_hotel",
        "cancel_flight",
    ] {
        let ledger = ledger.clone();
        builder = builder.handler(
            handler,
            handler_fn(move |input: Value, ctx: TaskContext| {
                let ledger = ledger.clone();
                async move {
                    // Take a little time, so that kills land mid-task.
                    tokio::time::sleep(Duration::from_millis(40)).await;
                    if handler == "book_car" && input["fail"] == json!("car") {
                        return Err(TaskError::new("CarUnavailable", "no cars left"));
                    }
                    let key = format!(
                        "{}.{}.{}",
                        b64(&ctx.execution_id),
                        handler,
                        b64(&ctx.task_id)
                    );
                    // The participant's own store may be briefly away (the
                    // server restart test): retry, as a real service would.
                    let mut tries = 0;
                    loop {
                        match ledger.create(&key, "done".into()).await {
                            Ok(_) => break,
                            Err(e) if e.kind() == kv::CreateErrorKind::AlreadyExists => break,
                            Err(e) if tries < 100 => {
                                tries += 1;
                                let _ = e;
                                tokio::time::sleep(Duration::from_millis(200)).await;
                            }
                            Err(e) => {
                                return Err(TaskError::new("Ledger.Unavailable", e.to_string()));
                            }
                        }
                    }
                    Ok::<Value, TaskError>(json!({"confirmation": format!("{handler}-ok")}))
                }
            }),
        );
    }
    let worker = builder.build().await.expect("worker");
    worker.run().await;
}

// ------------------------------------------------------------- the parent

/// A child process, killed with SIGKILL on drop.
struct ChildProcess {
    role: &'static str,
    url: String,
    child: Child,
}

impl ChildProcess {
    fn spawn(role: &'static str, url: &str) -> ChildProcess {
        let child = Command::new(std::env::current_exe().expect("exe"))
            .args([
                "--ignored",
                "--exact",
                "child_process",
                "--nocapture",
                "--test-threads=1",
            ])
            .env("SAGAFLOW_CRASH_ROLE", role)
            .env("NATS_URL", url)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("spawn child");
        ChildProcess {
            role,
            url: url.to_string(),
            child,
        }
    }

    /// SIGKILL, then start a fresh process in the same role.
    fn kill_and_restart(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        *self = ChildProcess::spawn(self.role, &self.url.clone());
    }
}

impl Drop for ChildProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A small seeded generator for kill times (the seed is printed, so that a
/// failing run can be repeated).
struct Rng(u64);

impl Rng {
    fn new() -> Rng {
        let seed = std::env::var("SAGAFLOW_CRASH_SEED")
            .ok()
            .and_then(|s| s.parse().ok())
            .unwrap_or_else(|| {
                std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)
                    .map(|d| d.as_nanos() as u64)
                    .unwrap_or(7)
            });
        eprintln!("crash test seed: {seed} (set SAGAFLOW_CRASH_SEED to repeat)");
        Rng(seed)
    }

    fn millis(&mut self, low: u64, high: u64) -> Duration {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^= z >> 31;
        Duration::from_millis(low + z % (high - low))
    }
}

struct Run {
    server: NatsServer,
    store: Store,
    ledger: kv::Store,
    execs: Vec<ExecutionRef>,
}

async fn prepare() -> Run {
    let server = NatsServer::start().expect("nats-server");
    let client = sagaflow_nats::connect(&server.url())
        .await
        .expect("connect");
    let infra = sagaflow_nats::setup(client.clone(), cluster_options().settings)
        .await
        .expect("setup");
    let js = jetstream::new(client);
    let ledger = js
        .create_key_value(kv::Config {
            bucket: LEDGER.into(),
            storage: jetstream::stream::StorageType::File,
            ..Default::default()
        })
        .await
        .expect("ledger");
    let store = Store::new(infra, cluster_options().partitions);
    store
        .create_machine("travel", SAGA, "2024-01-01T00:00:00Z")
        .await
        .expect("machine");
    Run {
        server,
        store,
        ledger,
        execs: Vec::new(),
    }
}

async fn start_sagas(run: &mut Run, prefix: &str) {
    let js = run.store.infra().js.clone();
    let ns = Namespace::default();
    let mut acks = Vec::new();
    for i in 0..SAGAS {
        let exec = ExecutionRef::new("travel", &format!("{prefix}-{i}")).expect("name");
        let input = if i % 2 == 0 {
            json!({"trip": i})
        } else {
            json!({"trip": i, "fail": "car"})
        };
        let start = InboxMessage::StartExecution(StartExecution {
            execution_arn: exec.arn(),
            version: 1,
            input,
            seed: i as u64,
            traceparent: None,
            parent: None,
        });
        let subject = ns.inbox_subject(run.store.partition_of(&exec), &exec);
        let ack = js
            .publish(subject, serde_json::to_vec(&start).expect("json").into())
            .await
            .expect("publish");
        acks.push(ack);
        run.execs.push(exec);
    }
    for ack in acks {
        ack.await.expect("ack");
    }
}

/// Waits until at least `n` sagas have finished (so that a kill lands while
/// the others run); true when some are still running then.
async fn progress(run: &Run, n: usize) -> bool {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let done = finished(run).await.len();
        if done >= n || Instant::now() > deadline {
            return done < run.execs.len();
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Kills `child` with SIGKILL and restarts it three times: first once the
/// first sagas have finished, then at random short intervals; at least one
/// kill must land while sagas run.
async fn kill_three_times(run: &Run, rng: &mut Rng, child: &mut ChildProcess) {
    let mut killed_mid_run = 0;
    for round in 0..3 {
        let still_running = if round == 0 {
            progress(run, 20).await
        } else {
            tokio::time::sleep(rng.millis(100, 600)).await;
            finished(run).await.len() < SAGAS
        };
        if still_running {
            killed_mid_run += 1;
        }
        child.kill_and_restart();
    }
    assert!(
        killed_mid_run > 0,
        "at least one kill must land while sagas run"
    );
}

async fn finished(run: &Run) -> Vec<ExecutionDescription> {
    let mut done = Vec::new();
    for exec in &run.execs {
        if let Ok(Some(d)) = run.store.execution(exec).await
            && d.status != ExecutionStatus::Running
        {
            done.push(d);
        }
    }
    done
}

async fn wait_all(run: &Run, limit: Duration) -> Vec<ExecutionDescription> {
    let deadline = Instant::now() + limit;
    loop {
        let done = finished(run).await;
        if done.len() == run.execs.len() {
            return done;
        }
        if Instant::now() >= deadline {
            // Say where the unfinished sagas stand before failing.
            for exec in run
                .execs
                .iter()
                .filter(|e| !done.iter().any(|d| d.execution_arn == e.arn()))
                .take(3)
            {
                let index = run.store.execution(exec).await;
                let history = run.store.read_history(exec).await;
                eprintln!("unfinished {}: index {index:?}", exec.arn());
                if let Ok(h) = history {
                    for b in &h.batches {
                        for e in &b.entries {
                            eprintln!(
                                "  {}",
                                serde_json::to_string(&e.item)
                                    .unwrap_or_default()
                                    .chars()
                                    .take(200)
                                    .collect::<String>()
                            );
                        }
                    }
                }
            }
            panic!("only {} of {} sagas finished", done.len(), run.execs.len());
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// Every saga ended SUCCEEDED or FAILED as its input says; bookings were
/// made once; failed sagas cancelled the hotel and the flight exactly once.
async fn check(run: &Run, done: &[ExecutionDescription]) {
    let mut effects: HashMap<(String, String), usize> = HashMap::new();
    let mut keys = run.ledger.keys().await.expect("ledger keys");
    while let Some(key) = keys.next().await {
        let key = key.expect("key");
        let mut parts = key.splitn(3, '.');
        let exec = parts.next().unwrap_or_default().to_string();
        let handler = parts.next().unwrap_or_default().to_string();
        *effects.entry((exec, handler)).or_default() += 1;
    }
    for d in done {
        let exec = b64(&d.execution_arn);
        let count = |h: &str| {
            effects
                .get(&(exec.clone(), h.to_string()))
                .copied()
                .unwrap_or(0)
        };
        let fails = d
            .name
            .rsplit('-')
            .next()
            .and_then(|n| n.parse::<usize>().ok())
            .unwrap_or(0)
            % 2
            == 1;
        assert_eq!(count("book_flight"), 1, "{}: flight booked once", d.name);
        assert_eq!(count("book_hotel"), 1, "{}: hotel booked once", d.name);
        if fails {
            assert_eq!(d.status, ExecutionStatus::Failed, "{}: {d:?}", d.name);
            assert_eq!(d.error.as_deref(), Some("BookingFailed"));
            assert_eq!(count("book_car"), 0, "{}: no car", d.name);
            assert_eq!(
                count("cancel_hotel"),
                1,
                "{}: hotel cancelled exactly once",
                d.name
            );
            assert_eq!(
                count("cancel_flight"),
                1,
                "{}: flight cancelled exactly once",
                d.name
            );
        } else {
            assert_eq!(d.status, ExecutionStatus::Succeeded, "{}: {d:?}", d.name);
            assert_eq!(count("book_car"), 1, "{}: car booked once", d.name);
            assert_eq!(
                count("cancel_hotel") + count("cancel_flight"),
                0,
                "{}: nothing undone",
                d.name
            );
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn coordinators_killed_at_random_moments_lose_nothing() {
    let mut rng = Rng::new();
    let mut run = prepare().await;
    let url = run.server.url();
    let mut coordinator = ChildProcess::spawn("coordinator", &url);
    let _p1 = ChildProcess::spawn("participant", &url);
    let _p2 = ChildProcess::spawn("participant", &url);
    start_sagas(&mut run, "c").await;
    kill_three_times(&run, &mut rng, &mut coordinator).await;
    let done = wait_all(&run, Duration::from_secs(240)).await;
    check(&run, &done).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn participants_killed_mid_task_lose_nothing() {
    let mut rng = Rng::new();
    let mut run = prepare().await;
    let url = run.server.url();
    let _coordinator = ChildProcess::spawn("coordinator", &url);
    let mut p1 = ChildProcess::spawn("participant", &url);
    let _p2 = ChildProcess::spawn("participant", &url);
    start_sagas(&mut run, "p").await;
    kill_three_times(&run, &mut rng, &mut p1).await;
    let done = wait_all(&run, Duration::from_secs(240)).await;
    check(&run, &done).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_nats_server_restart_mid_run_loses_nothing() {
    let mut rng = Rng::new();
    let mut run = prepare().await;
    let url = run.server.url();
    let _coordinator = ChildProcess::spawn("coordinator", &url);
    let _p1 = ChildProcess::spawn("participant", &url);
    let _p2 = ChildProcess::spawn("participant", &url);
    start_sagas(&mut run, "n").await;
    assert!(
        progress(&run, 10).await,
        "the restart must land while sagas run"
    );
    tokio::time::sleep(rng.millis(0, 300)).await;
    run.server.restart().expect("restart nats-server");
    let done = wait_all(&run, Duration::from_secs(240)).await;
    check(&run, &done).await;
}
