//! Crash tests over a real nats-server, with coordinators and participants
//! as separate processes that are killed with SIGKILL at random moments (or
//! paused with SIGSTOP past their leases, then resumed).
//!
//! The child processes are this test binary itself, started with
//! `--ignored --exact child_process` and a role in `SAGAFLOW_CRASH_ROLE`
//! (without it, `child_process` does nothing). A child exits when its
//! standard input reaches end of file, so that it does not outlive the test
//! process, however that one ends.
//!
//! Every test runs at least 200 travel-booking sagas (BookFlight, BookHotel,
//! BookCar; half of them fail at BookCar and cancel the hotel, then the
//! flight), started so that [`WINDOW`] run at a time: the next is started
//! when one ends, until at least 200 were started *and* the test has done its
//! kills (so that, however fast or slow the machine, a kill finds sagas
//! running), then the last ones are left to end. Once all have ended, it
//! checks:
//!
//! - that every saga ended SUCCEEDED or FAILED as its input says;
//! - in its history: that it went through the expected states, each task
//!   scheduled once (attempt 0) and answered once, and completed once (an
//!   execution advanced twice would schedule or answer a task twice);
//! - in the participants' effects ledger (a KV bucket each effect is created
//!   in once, keyed by execution, handler and task id): that every booking
//!   was made once, under the task id the history scheduled, and every
//!   completed booking of a failed saga cancelled exactly once;
//! - in the participants' invocation log (a stream each handler call is
//!   recorded in, not deduplicated by task: process id, start, end and
//!   whether the effect was applied or found already there): that no task
//!   ran that the history did not schedule, no effect was applied twice,
//!   and a task ran more than once only where the test allows it: never
//!   when coordinators are killed, only after the process that ran it was
//!   killed when participants are, and in the nats-server restart test
//!   (the broker itself dies; §2 of `docs/guarantees.md`: dispatch is at
//!   least once) reruns are tolerated, counted and shown, and only the
//!   effects are held to once.
//!
//! Kills are timed so that they hit a process that is doing something: a
//! coordinator is killed only while it holds a partition lease, a
//! participant only once it has started handling tasks, and both only
//! while sagas run; each test asserts so at the end.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::future::Future;
use std::hash::BuildHasher;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use async_nats::jetstream::{self, consumer, kv, stream};
use base64::Engine as _;
use futures::StreamExt;
use serde_json::{Value, json};

use sagaflow_asl::interp::{Command as Step, Event, Record};
use sagaflow_coordinator::cluster::{Cluster, ClusterOptions, Store};
use sagaflow_coordinator::driver::HistoryItem;
use sagaflow_participant::worker::Worker;
use sagaflow_participant::{TaskContext, TaskError, handler_fn};
use sagaflow_protocol::api::{ExecutionDescription, ExecutionStatus};
use sagaflow_protocol::{ExecutionRef, InboxMessage, Namespace, StartExecution, headers};
use sagaflow_testkit::NatsServer;

/// How many sagas a test runs at least.
const SAGAS: usize = 200;
/// How many it runs at most (while its kills are not done).
const MAX_SAGAS: usize = 4 * SAGAS;
/// How many sagas run at a time: the next is started when one ends, so that
/// sagas end all along the run (not all at once).
const WINDOW: usize = 24;
/// How long a handler takes, in milliseconds (drawn in this range), so that
/// kills land mid-task.
const HANDLER_MILLIS: (u64, u64) = (50, 150);
const LEDGER: &str = "TEST_LEDGER";
const INVOCATIONS: &str = "TEST_INVOCATIONS";
const INVOCATION_SUBJECT: &str = "test.invocations";
/// The longest wait for one step of a test (a lease taken, a first task).
const STEP_DEADLINE: Duration = Duration::from_secs(120);
/// The longest wait for every saga to end.
const RUN_DEADLINE: Duration = Duration::from_secs(240);
/// How often the parent looks at the index, the leases and the log.
const POLL: Duration = Duration::from_millis(50);

const ROLE_ENV: &str = "SAGAFLOW_CRASH_ROLE";
const ID_ENV: &str = "SAGAFLOW_CRASH_ID";
const URL_ENV: &str = "NATS_URL";

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

/// The Task states of a saga that succeeds, with their handlers, in order.
const SUCCESS_TASKS: [(&str, &str); 3] = [
    ("BookFlight", "book_flight"),
    ("BookHotel", "book_hotel"),
    ("BookCar", "book_car"),
];
/// The Task states of a saga that fails at BookCar and compensates.
const FAILURE_TASKS: [(&str, &str); 5] = [
    ("BookFlight", "book_flight"),
    ("BookHotel", "book_hotel"),
    ("BookCar", "book_car"),
    ("CancelHotel", "cancel_hotel"),
    ("CancelFlight", "cancel_flight"),
];
/// The states a failing saga enters, in order.
const FAILURE_STATES: [&str; 6] = [
    "BookFlight",
    "BookHotel",
    "BookCar",
    "CancelHotel",
    "CancelFlight",
    "Failed",
];
const HANDLERS: [&str; 5] = [
    "book_flight",
    "book_hotel",
    "book_car",
    "cancel_hotel",
    "cancel_flight",
];

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

fn unb64(text: &str) -> String {
    base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(text)
        .ok()
        .and_then(|b| String::from_utf8(b).ok())
        .unwrap_or_else(|| format!("<not base64: {text}>"))
}

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

/// Whether saga number `i` fails at BookCar (and compensates).
fn fails(i: usize) -> bool {
    i % 2 == 1
}

// ----------------------------------------------------------- the children

/// The child processes: a coordinator or a participant, by role. Run
/// without a role (`cargo test -- --ignored`), it does nothing.
#[test]
#[ignore = "a child process of the crash tests, started by them"]
fn child_process() {
    let Ok(role) = std::env::var(ROLE_ENV) else {
        return;
    };
    let url = std::env::var(URL_ENV).expect("NATS_URL");
    let id = std::env::var(ID_ENV).expect("SAGAFLOW_CRASH_ID");
    // The parent holds the other end of our standard input: end of file
    // means it is gone (even killed with SIGKILL), and so must we be.
    std::thread::spawn(|| {
        let _ = std::io::copy(&mut std::io::stdin().lock(), &mut std::io::sink());
        std::process::exit(0);
    });
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    runtime.block_on(async move {
        match role.as_str() {
            "coordinator" => {
                let client = sagaflow_nats::connect(&url).await.expect("connect");
                // The id is the parent's, so that it can tell which leases
                // this process holds.
                let options = ClusterOptions {
                    coordinator_id: Some(id),
                    ..cluster_options()
                };
                let _cluster = Cluster::start(client, options).await.expect("start");
                std::future::pending::<()>().await;
            }
            "participant" => participant(&url, id).await,
            other => panic!("unknown role {other}"),
        }
    });
}

/// Where a participant process records every handler call: one message per
/// start and per end on `test.invocations.ID`, deduplicated only by the
/// call's own number (a retried publish), never by task.
struct InvocationLog {
    js: jetstream::Context,
    subject: String,
    process: String,
    pid: u32,
    next: AtomicU64,
}

impl InvocationLog {
    async fn record(&self, kind: &str, call: u64, mut record: Value) -> Result<(), TaskError> {
        record["process"] = json!(self.process);
        record["pid"] = json!(self.pid);
        record["call"] = json!(call);
        record["kind"] = json!(kind);
        record["at_ms"] = json!(now_ms());
        let payload = serde_json::to_vec(&record).expect("json");
        let mut hdrs = async_nats::HeaderMap::new();
        hdrs.insert(
            headers::MSG_ID,
            format!("{}/{call}/{kind}", self.process).as_str(),
        );
        // NATS may be briefly away (the server restart test): retry, with
        // the same message id.
        let mut last_error = String::new();
        for _ in 0..150 {
            let stored = match self
                .js
                .publish_with_headers(self.subject.clone(), hdrs.clone(), payload.clone().into())
                .await
            {
                Ok(ack) => ack.await.map(|_| ()).map_err(|e| e.to_string()),
                Err(e) => Err(e.to_string()),
            };
            match stored {
                Ok(()) => return Ok(()),
                Err(e) => {
                    last_error = e;
                    tokio::time::sleep(Duration::from_millis(200)).await;
                }
            }
        }
        Err(TaskError::new("Log.Unavailable", last_error))
    }
}

/// A participant whose effects are entries created in the ledger bucket,
/// keyed by the task's execution, handler and id: a task run again finds
/// its entry and does not apply its effect twice. Every call is recorded in
/// the invocation log, with whether the effect was applied by this call.
async fn participant(url: &str, id: String) {
    let client = sagaflow_nats::connect(url).await.expect("connect");
    let js = jetstream::new(client.clone());
    let ledger = loop {
        match js.get_key_value(LEDGER).await {
            Ok(kv) => break kv,
            Err(_) => tokio::time::sleep(Duration::from_millis(50)).await,
        }
    };
    let ledger = Arc::new(ledger);
    let log = Arc::new(InvocationLog {
        js: js.clone(),
        subject: format!("{INVOCATION_SUBJECT}.{id}"),
        process: id,
        pid: std::process::id(),
        next: AtomicU64::new(0),
    });
    let mut builder = Worker::builder(client)
        .concurrency(16)
        .ack_wait(Duration::from_secs(2))
        .idempotency(true);
    for handler in HANDLERS {
        let ledger = ledger.clone();
        let log = log.clone();
        builder = builder.handler(
            handler,
            handler_fn(move |input: Value, ctx: TaskContext| {
                let ledger = ledger.clone();
                let log = log.clone();
                async move {
                    let call = log.next.fetch_add(1, Ordering::Relaxed);
                    let task = json!({
                        "handler": handler,
                        "execution": ctx.execution_id,
                        "task_id": ctx.task_id,
                        "attempt": ctx.attempt,
                    });
                    log.record("start", call, task.clone()).await?;
                    // Take a little time, so that kills land mid-task.
                    let (low, high) = HANDLER_MILLIS;
                    let millis = low
                        + std::hash::RandomState::new().hash_one(SystemTime::now()) % (high - low);
                    tokio::time::sleep(Duration::from_millis(millis)).await;
                    let mut end = task;
                    if handler == "book_car" && input["fail"] == json!("car") {
                        end["outcome"] = json!("failed");
                        log.record("end", call, end).await?;
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
                    // A create whose answer was lost is retried and finds
                    // its own entry: then "already" without a second effect.
                    let mut tries = 0;
                    let outcome = loop {
                        match ledger.create(&key, "done".into()).await {
                            Ok(_) => break "applied",
                            Err(e) if e.kind() == kv::CreateErrorKind::AlreadyExists => {
                                break "already";
                            }
                            Err(e) if tries < 100 => {
                                tries += 1;
                                let _ = e;
                                tokio::time::sleep(Duration::from_millis(200)).await;
                            }
                            Err(e) => {
                                return Err(TaskError::new("Ledger.Unavailable", e.to_string()));
                            }
                        }
                    };
                    end["outcome"] = json!(outcome);
                    log.record("end", call, end).await?;
                    Ok::<Value, TaskError>(json!({"confirmation": format!("{handler}-ok")}))
                }
            }),
        );
    }
    let worker = builder.build().await.expect("worker");
    worker.run().await;
}

// ------------------------------------------------------------- the parent

static NEXT_CHILD: AtomicUsize = AtomicUsize::new(0);

/// A child process, killed with SIGKILL on drop. Its standard input is a
/// pipe the parent never writes to: when the parent dies, the child sees end
/// of file and exits.
struct ChildProcess {
    role: &'static str,
    /// Unique in the test binary: the coordinator's id, the participant's
    /// name in the invocation log.
    id: String,
    url: String,
    child: Child,
}

impl ChildProcess {
    fn spawn(role: &'static str, url: &str) -> ChildProcess {
        let id = format!("{role}-{}", NEXT_CHILD.fetch_add(1, Ordering::Relaxed));
        let child = Command::new(std::env::current_exe().expect("exe"))
            .args([
                "--ignored",
                "--exact",
                "child_process",
                "--nocapture",
                "--test-threads=1",
            ])
            .env(ROLE_ENV, role)
            .env(ID_ENV, &id)
            .env(URL_ENV, url)
            .stdin(Stdio::piped())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("spawn child");
        ChildProcess {
            role,
            id,
            url: url.to_string(),
            child,
        }
    }

    fn pid(&self) -> u32 {
        self.child.id()
    }

    /// SIGKILL, then start a fresh process (with a new id) in the same role.
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
                SystemTime::now()
                    .duration_since(UNIX_EPOCH)
                    .map(|d| d.as_nanos() as u64)
                    .unwrap_or(7)
            });
        eprintln!("crash test seed: {seed} (set SAGAFLOW_CRASH_SEED to repeat)");
        Rng(seed)
    }

    /// In `low..high`.
    fn range(&mut self, low: u64, high: u64) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^= z >> 31;
        low + z % (high - low)
    }

    fn millis(&mut self, low: u64, high: u64) -> Duration {
        Duration::from_millis(self.range(low, high))
    }
}

/// Where the sagas stand, as the parent last saw it.
struct Progress {
    /// The sagas started (their start message stored), by number.
    execs: Vec<ExecutionRef>,
    /// How the finished ones ended, by saga number.
    done: Vec<Option<ExecutionDescription>>,
    finished: usize,
    /// Keep starting sagas past [`SAGAS`] (the test is not done killing).
    more: bool,
}

#[derive(Debug, Clone, Copy)]
struct Counts {
    started: usize,
    finished: usize,
}

impl Counts {
    /// Started and not finished.
    fn running(self) -> usize {
        self.started - self.finished
    }
}

struct Run {
    server: NatsServer,
    store: Store,
    ledger: kv::Store,
    invocations: stream::Stream,
    prefix: String,
    progress: Arc<Mutex<Progress>>,
    starter: Option<tokio::task::JoinHandle<()>>,
    started_at: Instant,
}

impl Run {
    fn counts(&self) -> Counts {
        let p = self.progress.lock().unwrap_or_else(PoisonError::into_inner);
        Counts {
            started: p.execs.len(),
            finished: p.finished,
        }
    }

    /// Reads the index entries of the running sagas now.
    async fn refresh(&self) -> Counts {
        refresh(&self.store, &self.progress).await
    }

    /// The test is done killing: no saga is started past [`SAGAS`] any more.
    fn no_more(&self) {
        self.progress
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .more = false;
    }

    fn elapsed(&self) -> String {
        format!("{:.1}s", self.started_at.elapsed().as_secs_f64())
    }
}

async fn prepare(prefix: &str) -> Run {
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
            storage: stream::StorageType::File,
            ..Default::default()
        })
        .await
        .expect("ledger");
    let invocations = js
        .create_stream(stream::Config {
            name: INVOCATIONS.into(),
            subjects: vec![format!("{INVOCATION_SUBJECT}.>")],
            storage: stream::StorageType::File,
            ..Default::default()
        })
        .await
        .expect("invocation log");
    let store = Store::new(infra, cluster_options().partitions);
    store
        .create_machine("travel", SAGA, "2024-01-01T00:00:00Z")
        .await
        .expect("machine");
    Run {
        server,
        store,
        ledger,
        invocations,
        prefix: prefix.to_string(),
        progress: Arc::new(Mutex::new(Progress {
            execs: Vec::new(),
            done: Vec::new(),
            finished: 0,
            more: true,
        })),
        starter: None,
        started_at: Instant::now(),
    }
}

async fn refresh(store: &Store, progress: &Mutex<Progress>) -> Counts {
    let running: Vec<(usize, ExecutionRef)> = {
        let p = progress.lock().unwrap_or_else(PoisonError::into_inner);
        (0..p.execs.len())
            .filter(|i| p.done[*i].is_none())
            .map(|i| (i, p.execs[i].clone()))
            .collect()
    };
    for (i, exec) in running {
        // Unreadable now (NATS away): still running, as far as we know.
        if let Ok(Some(d)) = store.execution(&exec).await
            && d.status != ExecutionStatus::Running
        {
            let mut p = progress.lock().unwrap_or_else(PoisonError::into_inner);
            if p.done[i].is_none() {
                p.done[i] = Some(d);
                p.finished += 1;
            }
        }
    }
    let p = progress.lock().unwrap_or_else(PoisonError::into_inner);
    Counts {
        started: p.execs.len(),
        finished: p.finished,
    }
}

/// Starts sagas in the background, keeping [`WINDOW`] of them running until
/// [`SAGAS`] are started and [`Run::no_more`] was called (at most
/// [`MAX_SAGAS`]), and follows them until all have ended.
fn start_sagas(run: &mut Run) {
    let store = run.store.clone();
    let progress = run.progress.clone();
    let prefix = run.prefix.clone();
    run.starter = Some(tokio::spawn(async move {
        let js = store.infra().js.clone();
        let ns = Namespace::default();
        loop {
            let counts = refresh(&store, &progress).await;
            let target = if progress.lock().unwrap_or_else(PoisonError::into_inner).more {
                MAX_SAGAS
            } else {
                SAGAS
            };
            if counts.started >= target && counts.finished == counts.started {
                return;
            }
            let mut started = counts.started;
            while started < target && started - counts.finished < WINDOW {
                let exec =
                    &ExecutionRef::new("travel", &format!("{prefix}-{started}")).expect("name");
                let input = if fails(started) {
                    json!({"trip": started, "fail": "car"})
                } else {
                    json!({"trip": started})
                };
                let start = InboxMessage::StartExecution(StartExecution {
                    execution_arn: exec.arn(),
                    version: 1,
                    input,
                    seed: started as u64,
                    traceparent: None,
                    parent: None,
                });
                let subject = ns.inbox_subject(store.partition_of(exec), exec);
                let mut hdrs = async_nats::HeaderMap::new();
                // A start retried after a lost ack is dropped by the broker.
                hdrs.insert(headers::MSG_ID, format!("start/{}", exec.arn()).as_str());
                let stored = match js
                    .publish_with_headers(
                        subject,
                        hdrs,
                        serde_json::to_vec(&start).expect("json").into(),
                    )
                    .await
                {
                    Ok(ack) => ack.await.is_ok(),
                    Err(_) => false,
                };
                if !stored {
                    break; // NATS away: again at the next round.
                }
                started += 1;
                let mut p = progress.lock().unwrap_or_else(PoisonError::into_inner);
                p.execs.push(exec.clone());
                p.done.push(None);
            }
            tokio::time::sleep(POLL).await;
        }
    }));
}

/// Polls `probe` until it gives a value; panics after [`STEP_DEADLINE`].
async fn wait_for<T, F, Fut>(what: &str, mut probe: F) -> T
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Option<T>>,
{
    let deadline = Instant::now() + STEP_DEADLINE;
    loop {
        if let Some(value) = probe().await {
            return value;
        }
        assert!(
            Instant::now() < deadline,
            "gave up waiting for {what} after {STEP_DEADLINE:?}"
        );
        tokio::time::sleep(POLL).await;
    }
}

async fn wait_finished(run: &Run, n: usize) {
    wait_for(&format!("{n} sagas to finish"), || async move {
        (run.counts().finished >= n).then_some(())
    })
    .await;
}

/// The partitions whose lease `coordinator` holds now.
async fn leases_of(run: &Run, coordinator: &str) -> Vec<u32> {
    let leases = &run.store.infra().leases;
    let mut held = Vec::new();
    for p in 0..run.store.partitions() {
        if let Ok(Some(owner)) = leases.get(format!("p{p}")).await
            && owner.as_ref() == coordinator.as_bytes()
        {
            held.push(p);
        }
    }
    held
}

/// Whether participant `process` recorded a handler call.
async fn has_handled_tasks(run: &Run, process: &str) -> bool {
    run.invocations
        .get_last_raw_message_by_subject(format!("{INVOCATION_SUBJECT}.{process}").as_str())
        .await
        .is_ok()
}

/// One SIGKILL, as the test saw it the moment before.
struct Kill {
    /// The killed process's id (coordinator id, participant name).
    process: String,
    pid: u32,
    at: String,
    counts: Counts,
    /// What it held: the partitions whose lease it had (coordinator), or
    /// whether it had recorded a handler call (participant).
    holding: String,
    held_something: bool,
}

impl std::fmt::Debug for Kill {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{} (pid {}) at {}: {} started, {} finished, {} running; {}",
            self.process,
            self.pid,
            self.at,
            self.counts.started,
            self.counts.finished,
            self.counts.running(),
            self.holding
        )
    }
}

/// Kills the coordinator with SIGKILL and restarts it three times: the
/// first time once a random number of sagas have finished, every time only
/// once the running process holds a partition lease, then after a random
/// 0-800 ms.
async fn kill_coordinator_three_times(
    run: &Run,
    rng: &mut Rng,
    coordinator: &mut ChildProcess,
) -> Vec<Kill> {
    let first = rng.range(5, 150) as usize;
    eprintln!("coordinator test: first kill once {first} sagas have finished");
    let mut kills = Vec::new();
    for round in 0..3 {
        if round == 0 {
            wait_finished(run, first).await;
        }
        let id = coordinator.id.clone();
        let taken = wait_for(&format!("{id} to take a partition"), || {
            let id = id.clone();
            async move {
                let held = leases_of(run, &id).await;
                (!held.is_empty()).then_some(held)
            }
        })
        .await;
        eprintln!(
            "[{}] {id} holds partitions {taken:?} ({:?})",
            run.elapsed(),
            run.counts()
        );
        tokio::time::sleep(rng.millis(0, 800)).await;
        let held = leases_of(run, &id).await;
        let counts = run.refresh().await;
        kills.push(Kill {
            process: id,
            pid: coordinator.pid(),
            at: run.elapsed(),
            counts,
            holding: format!("leases {held:?}"),
            held_something: !held.is_empty(),
        });
        coordinator.kill_and_restart();
        if let Some(kill) = kills.last() {
            eprintln!("[{}] killed {kill:?}", run.elapsed());
        }
    }
    kills
}

/// Kills participant `p1` with SIGKILL and restarts it three times: the
/// first time once a random number of sagas have finished, every time only
/// once the running process has started handling tasks, then after a random
/// 0-800 ms.
async fn kill_participant_three_times(
    run: &Run,
    rng: &mut Rng,
    participant: &mut ChildProcess,
) -> Vec<Kill> {
    let first = rng.range(5, 150) as usize;
    eprintln!("participant test: first kill once {first} sagas have finished");
    let mut kills = Vec::new();
    for round in 0..3 {
        if round == 0 {
            wait_finished(run, first).await;
        }
        let id = participant.id.clone();
        wait_for(&format!("{id} to handle a task"), || {
            let id = id.clone();
            async move { has_handled_tasks(run, &id).await.then_some(()) }
        })
        .await;
        eprintln!(
            "[{}] {id} handles tasks ({:?})",
            run.elapsed(),
            run.counts()
        );
        tokio::time::sleep(rng.millis(0, 800)).await;
        let handled = has_handled_tasks(run, &id).await;
        let counts = run.refresh().await;
        kills.push(Kill {
            process: id,
            pid: participant.pid(),
            at: run.elapsed(),
            counts,
            holding: format!("handled tasks: {handled}"),
            held_something: handled,
        });
        participant.kill_and_restart();
        if let Some(kill) = kills.last() {
            eprintln!("[{}] killed {kill:?}", run.elapsed());
        }
    }
    kills
}

/// Sends `signal` (`STOP`, `CONT`) to a process.
fn signal(pid: u32, signal: &str) {
    let status = Command::new("kill")
        .args([&format!("-{signal}"), &pid.to_string()])
        .status()
        .expect("kill");
    assert!(status.success(), "kill -{signal} {pid}");
}

/// Pauses coordinator `paused` (SIGSTOP) three times, each time once it
/// holds a partition lease and after a random 0-800 ms, until `other` has
/// taken every partition (its leases lapsed), then resumes it (SIGCONT): it
/// wakes up holding executions in memory, with timers due, results taken
/// in and steps half made, while another coordinator owns them.
async fn pause_coordinator_three_times(
    run: &Run,
    rng: &mut Rng,
    paused: &ChildProcess,
    other: &ChildProcess,
) -> Vec<Kill> {
    let first = rng.range(5, 150) as usize;
    eprintln!("pause test: first pause once {first} sagas have finished");
    let mut pauses = Vec::new();
    for round in 0..3 {
        if round == 0 {
            wait_finished(run, first).await;
        }
        let id = paused.id.clone();
        wait_for(&format!("{id} to take a partition"), || {
            let id = id.clone();
            async move {
                let held = leases_of(run, &id).await;
                (!held.is_empty()).then_some(held)
            }
        })
        .await;
        tokio::time::sleep(rng.millis(0, 800)).await;
        let held = leases_of(run, &id).await;
        let counts = run.refresh().await;
        signal(paused.pid(), "STOP");
        pauses.push(Kill {
            process: id.clone(),
            pid: paused.pid(),
            at: run.elapsed(),
            counts,
            holding: format!("leases {held:?}"),
            held_something: !held.is_empty(),
        });
        eprintln!("[{}] paused {:?}", run.elapsed(), pauses.last());
        let partitions = run.store.partitions() as usize;
        let other_id = other.id.clone();
        wait_for(&format!("{other_id} to take every partition"), || {
            let other_id = other_id.clone();
            async move { (leases_of(run, &other_id).await.len() == partitions).then_some(()) }
        })
        .await;
        // Some work for the new owner before the old one wakes up.
        tokio::time::sleep(rng.millis(0, 800)).await;
        signal(paused.pid(), "CONT");
        eprintln!("[{}] resumed {id} ({:?})", run.elapsed(), run.counts());
    }
    pauses
}

/// Every kill hit a process that held something while sagas were running.
fn assert_kills_mid_run(kills: &[Kill]) {
    assert_eq!(kills.len(), 3, "{kills:#?}");
    for kill in kills {
        assert!(
            kill.counts.running() > 0,
            "a kill landed when no saga was running: {kill:?}\nall kills: {kills:#?}"
        );
        assert!(
            kill.held_something,
            "a kill hit a process that held nothing: {kill:?}\nall kills: {kills:#?}"
        );
    }
}

/// Starts no saga past [`SAGAS`] any more and waits until every one started
/// has ended; on time-out, shows where some of the others stand before
/// failing.
async fn wait_all(run: &mut Run) -> Vec<ExecutionDescription> {
    run.no_more();
    let deadline = Instant::now() + RUN_DEADLINE;
    loop {
        if run.starter.as_ref().is_none_or(|s| s.is_finished()) {
            break;
        }
        if Instant::now() >= deadline {
            let running: Vec<ExecutionRef> = {
                let p = run.progress.lock().unwrap_or_else(PoisonError::into_inner);
                (0..p.execs.len())
                    .filter(|i| p.done[*i].is_none())
                    .map(|i| p.execs[i].clone())
                    .collect()
            };
            for exec in running.iter().take(3) {
                let index = run.store.execution(exec).await;
                eprintln!("unfinished {}: index {index:?}", exec.arn());
                if let Ok(h) = run.store.read_history(exec).await {
                    eprintln!("{}", history_excerpt(&h));
                }
            }
            panic!(
                "{} sagas still running after {RUN_DEADLINE:?} ({:?})",
                running.len(),
                run.counts()
            );
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    if let Some(starter) = run.starter.take() {
        starter.await.expect("the saga starter failed");
    }
    let p = run.progress.lock().unwrap_or_else(PoisonError::into_inner);
    assert!(p.execs.len() >= SAGAS && p.finished == p.execs.len());
    eprintln!("[{}] all {} sagas ended", run.elapsed(), p.execs.len());
    p.done.iter().flatten().cloned().collect()
}

// ------------------------------------------------------------- the checks

fn history_excerpt(h: &sagaflow_coordinator::cluster::store::StoredHistory) -> String {
    let mut out = String::new();
    for b in &h.batches {
        for e in &b.entries {
            let line: String = serde_json::to_string(&e.item)
                .unwrap_or_default()
                .chars()
                .take(220)
                .collect();
            out.push_str(&format!("  {} {line}\n", e.at));
        }
    }
    out
}

/// What an execution's history says happened.
struct Trail {
    /// `(state, task id, attempt)` of every ScheduleTask, in order.
    scheduled: Vec<(String, String, u32)>,
    /// How many results were recorded for each task id.
    answers: BTreeMap<String, usize>,
    /// The states entered, in order.
    entered: Vec<String>,
    completions: usize,
}

fn trail(h: &sagaflow_coordinator::cluster::store::StoredHistory) -> Trail {
    let mut t = Trail {
        scheduled: Vec::new(),
        answers: BTreeMap::new(),
        entered: Vec::new(),
        completions: 0,
    };
    for b in &h.batches {
        for e in &b.entries {
            match &e.item {
                HistoryItem::Command(Step::ScheduleTask(r)) => {
                    t.scheduled
                        .push((r.state_name.to_string(), r.task_id.to_string(), r.attempt))
                }
                HistoryItem::Command(Step::Record(Record::StateEntered { name, .. })) => {
                    t.entered.push(name.to_string());
                }
                HistoryItem::Command(Step::Complete(_)) => t.completions += 1,
                HistoryItem::Event(
                    Event::TaskSucceeded { task_id, .. } | Event::TaskFailed { task_id, .. },
                ) => *t.answers.entry(task_id.clone()).or_default() += 1,
                _ => {}
            }
        }
    }
    t
}

/// One handler call, from the invocation log.
#[derive(Debug, Clone)]
struct Call {
    process: String,
    pid: u64,
    call: u64,
    /// The stream sequence of its start record: calls of one task are
    /// ordered by it.
    sequence: u64,
    at_ms: u64,
    handler: String,
    attempt: u64,
    /// `applied`, `already`, `failed`; `None`: no end recorded (the process
    /// died first).
    outcome: Option<String>,
}

/// Every handler call, by (execution, task id).
async fn read_invocations(run: &Run) -> BTreeMap<(String, String), Vec<Call>> {
    let mut log = run
        .store
        .infra()
        .js
        .get_stream(INVOCATIONS)
        .await
        .expect("invocation log");
    let last = log.info().await.expect("log info").state.last_sequence;
    let mut records = Vec::new();
    if last > 0 {
        let consumer = log
            .create_consumer(consumer::pull::OrderedConfig {
                deliver_policy: consumer::DeliverPolicy::All,
                ..Default::default()
            })
            .await
            .expect("log consumer");
        let mut messages = consumer.messages().await.expect("log messages");
        loop {
            let message = tokio::time::timeout(Duration::from_secs(30), messages.next())
                .await
                .expect("reading the invocation log timed out")
                .expect("the invocation log ended early")
                .expect("log message");
            let sequence = message.info().expect("log message info").stream_sequence;
            let record: Value = serde_json::from_slice(&message.payload).expect("log record");
            records.push((sequence, record));
            if sequence >= last {
                break;
            }
        }
    }
    // Starts first, then ends matched to them by (process, call); a record
    // stored twice (a publish retried past the duplicate window) counts once.
    let mut calls: HashMap<(String, u64), ((String, String), Call)> = HashMap::new();
    let text = |r: &Value, k: &str| r[k].as_str().unwrap_or_default().to_string();
    for (sequence, r) in records.iter().filter(|(_, r)| r["kind"] == "start") {
        let key = (text(r, "process"), r["call"].as_u64().unwrap_or(u64::MAX));
        calls.entry(key).or_insert_with(|| {
            (
                (text(r, "execution"), text(r, "task_id")),
                Call {
                    process: text(r, "process"),
                    pid: r["pid"].as_u64().unwrap_or(0),
                    call: r["call"].as_u64().unwrap_or(u64::MAX),
                    sequence: *sequence,
                    at_ms: r["at_ms"].as_u64().unwrap_or(0),
                    handler: text(r, "handler"),
                    attempt: r["attempt"].as_u64().unwrap_or(u64::MAX),
                    outcome: None,
                },
            )
        });
    }
    for (_, r) in records.iter().filter(|(_, r)| r["kind"] == "end") {
        let key = (text(r, "process"), r["call"].as_u64().unwrap_or(u64::MAX));
        match calls.get_mut(&key) {
            Some((_, call)) => call.outcome = Some(text(r, "outcome")),
            None => panic!("an end without a start in the invocation log: {r}"),
        }
    }
    let mut by_task: BTreeMap<(String, String), Vec<Call>> = BTreeMap::new();
    for (task, call) in calls.into_values() {
        by_task.entry(task).or_default().push(call);
    }
    for calls in by_task.values_mut() {
        calls.sort_by_key(|c| c.sequence);
    }
    by_task
}

/// When a task may run more than once.
enum Reruns<'a> {
    /// Never: no participant is killed, NATS stays up.
    Never,
    /// Only after the processes named here were killed: every call of a
    /// task but its last ran in one of them.
    AfterKillOf(&'a HashSet<String>),
    /// Allowed (the broker itself was killed: its consumer state and
    /// duplicate window may lose what it had handed out; the worker may lose
    /// its idempotency record). Only the effects are held to once.
    Tolerated,
}

/// What the checks saw, for the tests' own assertions and the report.
struct Seen {
    calls: BTreeMap<(String, String), Vec<Call>>,
    /// Tasks that ran more than once.
    reruns: Vec<((String, String), Vec<Call>)>,
}

/// Every saga ended SUCCEEDED or FAILED as its input says, went through the
/// expected states with each task scheduled and answered once; every booking
/// was made once, under the task id its history scheduled, and every
/// completed booking of a failed saga cancelled exactly once; no handler
/// ran for a task no history scheduled, no effect was applied twice, and a
/// task ran twice only as `reruns` allows.
async fn check(run: &Run, done: &[ExecutionDescription], reruns: Reruns<'_>) -> Seen {
    assert!(done.len() >= SAGAS, "{} sagas", done.len());

    // The effects ledger: (execution, handler) -> the task ids with an effect.
    let mut effects: HashMap<(String, String), Vec<String>> = HashMap::new();
    let mut keys = run.ledger.keys().await.expect("ledger keys");
    while let Some(key) = keys.next().await {
        let key = key.expect("key");
        let mut parts = key.splitn(3, '.');
        let exec = unb64(parts.next().unwrap_or_default());
        let handler = parts.next().unwrap_or_default().to_string();
        let task = unb64(parts.next().unwrap_or_default());
        effects.entry((exec, handler)).or_default().push(task);
    }
    let mut effects_seen = 0;

    let calls = read_invocations(run).await;
    let mut tasks_scheduled: HashSet<(String, String)> = HashSet::new();

    for d in done {
        let arn = d.execution_arn.clone();
        let number: usize = d
            .name
            .rsplit('-')
            .next()
            .and_then(|n| n.parse().ok())
            .expect("saga number");
        let exec = ExecutionRef::from_arn(&arn).expect("arn");
        let history = run.store.read_history(&exec).await.expect("history");
        let trail = trail(&history);
        let show = || format!("{arn}\nhistory:\n{}", history_excerpt(&history));

        // How it ended.
        if fails(number) {
            assert_eq!(d.status, ExecutionStatus::Failed, "{d:?}\n{}", show());
            assert_eq!(d.error.as_deref(), Some("BookingFailed"), "{}", show());
        } else {
            assert_eq!(d.status, ExecutionStatus::Succeeded, "{d:?}\n{}", show());
        }

        // The history: the expected path, each task scheduled once (first
        // attempt) and answered once, one completion.
        let tasks: &[(&str, &str)] = if fails(number) {
            &FAILURE_TASKS
        } else {
            &SUCCESS_TASKS
        };
        let states: Vec<&str> = trail.scheduled.iter().map(|(s, _, _)| s.as_str()).collect();
        let expected: Vec<&str> = tasks.iter().map(|(s, _)| *s).collect();
        assert_eq!(states, expected, "tasks scheduled: {}", show());
        assert!(
            trail.scheduled.iter().all(|(_, _, attempt)| *attempt == 0),
            "a task was retried: {}",
            show()
        );
        let ids: HashSet<&str> = trail.scheduled.iter().map(|(_, t, _)| t.as_str()).collect();
        assert_eq!(
            ids.len(),
            trail.scheduled.len(),
            "a task id was scheduled twice: {}",
            show()
        );
        for (_, task, _) in &trail.scheduled {
            assert_eq!(
                trail.answers.get(task).copied().unwrap_or(0),
                1,
                "task {task} not answered exactly once: {}",
                show()
            );
        }
        assert!(
            trail.answers.keys().all(|t| ids.contains(t.as_str())),
            "an answer for a task never scheduled: {}",
            show()
        );
        let entered: Vec<&str> = trail.entered.iter().map(String::as_str).collect();
        if fails(number) {
            assert_eq!(entered, FAILURE_STATES, "states entered: {}", show());
        } else {
            assert_eq!(
                entered,
                ["BookFlight", "BookHotel", "BookCar"],
                "states entered: {}",
                show()
            );
        }
        assert_eq!(trail.completions, 1, "completions: {}", show());

        // The effects: one per effectful task, under the scheduled task id;
        // none for the other handlers (nothing undone for a success, no car
        // for a failure).
        for handler in HANDLERS {
            let scheduled: Vec<&str> = trail
                .scheduled
                .iter()
                .zip(tasks)
                .filter(|(_, (_, h))| *h == handler)
                .map(|((_, t, _), _)| t.as_str())
                .collect();
            let effectful = !(handler == "book_car" && fails(number));
            let expected: Vec<&str> = if effectful { scheduled } else { Vec::new() };
            let got: Vec<&str> = effects
                .get(&(arn.clone(), handler.to_string()))
                .map(|v| v.iter().map(String::as_str).collect())
                .unwrap_or_default();
            assert_eq!(
                got,
                expected,
                "{}: effects of {handler} (booked once, cancelled exactly once, nothing undone \
                 for a success): {}",
                d.name,
                show()
            );
            effects_seen += got.len();
        }

        // The handler calls: every scheduled task ran, with its attempt.
        for ((_, task, _), (_, handler)) in trail.scheduled.iter().zip(tasks) {
            let key = (arn.clone(), task.clone());
            let task_calls = calls.get(&key).map(Vec::as_slice).unwrap_or_default();
            assert!(
                !task_calls.is_empty(),
                "{task} of {} never ran: {}",
                d.name,
                show()
            );
            assert!(
                task_calls
                    .iter()
                    .all(|c| c.handler == *handler && c.attempt == 0),
                "{task} of {} ran in the wrong handler or attempt: {task_calls:#?}",
                d.name
            );
            tasks_scheduled.insert(key);
        }
    }
    assert_eq!(
        effects_seen,
        effects.values().map(Vec::len).sum::<usize>(),
        "effects in the ledger for no saga of this run"
    );

    // No handler ran for a task no history scheduled; no effect applied
    // twice; reruns only as allowed.
    let mut seen_reruns = Vec::new();
    for (task, task_calls) in &calls {
        assert!(
            tasks_scheduled.contains(task),
            "a handler ran for a task no history scheduled: {task:?} {task_calls:#?}"
        );
        let applied = task_calls
            .iter()
            .filter(|c| c.outcome.as_deref() == Some("applied"))
            .count();
        assert!(
            applied <= 1,
            "an effect applied {applied} times: {task:?} {task_calls:#?}"
        );
        if task_calls.len() > 1 {
            seen_reruns.push((task.clone(), task_calls.clone()));
            match &reruns {
                Reruns::Never => panic!(
                    "a task ran {} times though no participant was killed: {task:?} \
                     {task_calls:#?}",
                    task_calls.len()
                ),
                Reruns::AfterKillOf(killed) => {
                    let earlier = &task_calls[..task_calls.len() - 1];
                    assert!(
                        earlier.iter().all(|c| killed.contains(&c.process)),
                        "a task ran again though the process that ran it first was not \
                         killed (killed: {killed:?}): {task:?} {task_calls:#?}"
                    );
                }
                Reruns::Tolerated => {}
            }
        }
    }
    Seen {
        calls,
        reruns: seen_reruns,
    }
}

fn print_reruns(seen: &Seen, since_ms: Option<u64>) {
    let calls: usize = seen.calls.values().map(Vec::len).sum();
    eprintln!(
        "{calls} handler calls for {} tasks; {} tasks ran more than once",
        seen.calls.len(),
        seen.reruns.len()
    );
    for ((exec, task), calls) in seen.reruns.iter().take(10) {
        let calls: Vec<String> = calls
            .iter()
            .map(|c| {
                let at = match since_ms {
                    Some(t) => format!("{:+}ms", c.at_ms as i64 - t as i64),
                    None => c.at_ms.to_string(),
                };
                format!(
                    "{}(pid {}, call {}) at {at}: {}",
                    c.process,
                    c.pid,
                    c.call,
                    c.outcome.as_deref().unwrap_or("no end")
                )
            })
            .collect();
        eprintln!("  {exec} {task}: {}", calls.join(", "));
    }
}

// -------------------------------------------------------------- the tests

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn coordinators_killed_at_random_moments_lose_nothing() {
    let mut rng = Rng::new();
    let mut run = prepare("c").await;
    let url = run.server.url();
    let mut coordinator = ChildProcess::spawn("coordinator", &url);
    let p1 = ChildProcess::spawn("participant", &url);
    let p2 = ChildProcess::spawn("participant", &url);
    start_sagas(&mut run);
    let kills = kill_coordinator_three_times(&run, &mut rng, &mut coordinator).await;
    let done = wait_all(&mut run).await;
    // Stopped first, so that the invocation log is final.
    drop((coordinator, p1, p2));
    let seen = check(&run, &done, Reruns::Never).await;
    print_reruns(&seen, None);
    assert_kills_mid_run(&kills);
}

/// A coordinator paused (SIGSTOP) past its leases while another takes its
/// partitions over, then resumed, three times: it wakes up with executions
/// in memory that are now another's. Nothing is advanced twice, no task
/// effect happens twice, every saga ends, every compensation runs once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn coordinators_paused_past_their_lease_lose_nothing() {
    let mut rng = Rng::new();
    let mut run = prepare("s").await;
    let url = run.server.url();
    let c1 = ChildProcess::spawn("coordinator", &url);
    let c2 = ChildProcess::spawn("coordinator", &url);
    let p1 = ChildProcess::spawn("participant", &url);
    let p2 = ChildProcess::spawn("participant", &url);
    start_sagas(&mut run);
    let pauses = pause_coordinator_three_times(&run, &mut rng, &c1, &c2).await;
    let done = wait_all(&mut run).await;
    drop((c1, c2, p1, p2));
    let seen = check(&run, &done, Reruns::Never).await;
    print_reruns(&seen, None);
    assert_kills_mid_run(&pauses);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn participants_killed_mid_task_lose_nothing() {
    let mut rng = Rng::new();
    let mut run = prepare("p").await;
    let url = run.server.url();
    let coordinator = ChildProcess::spawn("coordinator", &url);
    let mut p1 = ChildProcess::spawn("participant", &url);
    let p2 = ChildProcess::spawn("participant", &url);
    start_sagas(&mut run);
    let kills = kill_participant_three_times(&run, &mut rng, &mut p1).await;
    let done = wait_all(&mut run).await;
    drop((coordinator, p1, p2));
    let killed: HashSet<String> = kills.iter().map(|k| k.process.clone()).collect();
    let seen = check(&run, &done, Reruns::AfterKillOf(&killed)).await;
    print_reruns(&seen, None);

    // Which kills landed mid-task: calls the killed process started and
    // never ended.
    for kill in &kills {
        let cut: Vec<&(String, String)> = seen
            .calls
            .iter()
            .filter(|(_, calls)| {
                calls
                    .iter()
                    .any(|c| c.process == kill.process && c.outcome.is_none())
            })
            .map(|(task, _)| task)
            .collect();
        eprintln!(
            "{} (pid {}) was killed with {} tasks in its hands",
            kill.process,
            kill.pid,
            cut.len()
        );
    }
    // Redelivery happened: a task a killed process had started ran again in
    // another process.
    let redelivered = seen
        .reruns
        .iter()
        .filter(|(_, calls)| {
            calls.iter().enumerate().any(|(i, first)| {
                killed.contains(&first.process)
                    && calls[i + 1..].iter().any(|c| c.process != first.process)
            })
        })
        .count();
    assert!(
        redelivered > 0,
        "no task of a killed participant ran again elsewhere: no kill landed mid-task \
         (kills: {kills:#?})"
    );
    assert_kills_mid_run(&kills);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_nats_server_restart_mid_run_loses_nothing() {
    let mut rng = Rng::new();
    let mut run = prepare("n").await;
    let url = run.server.url();
    let coordinator = ChildProcess::spawn("coordinator", &url);
    let p1 = ChildProcess::spawn("participant", &url);
    let p2 = ChildProcess::spawn("participant", &url);
    start_sagas(&mut run);
    let first = rng.range(5, 150) as usize;
    eprintln!("server test: restart once {first} sagas have finished");
    wait_finished(&run, first).await;
    tokio::time::sleep(rng.millis(0, 300)).await;
    let counts = run.refresh().await;
    assert!(
        counts.running() > 0,
        "the restart must land while sagas run: {counts:?}"
    );
    run.server.restart().expect("restart nats-server");
    let restarted_ms = now_ms();
    run.no_more();
    eprintln!("[{}] nats-server restarted with {counts:?}", run.elapsed());
    let done = wait_all(&mut run).await;
    drop((coordinator, p1, p2));
    let seen = check(&run, &done, Reruns::Tolerated).await;
    // Times relative to the moment the server was back.
    print_reruns(&seen, Some(restarted_ms));
}
