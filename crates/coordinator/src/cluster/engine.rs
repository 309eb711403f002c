//! The engine: partitions, leases, and the loop that applies inbox events
//! to executions.
//!
//! Executions are spread over `partitions` partitions by a hash of their
//! name. Each partition is owned by one coordinator at a time, through a
//! lease in the leases bucket that the owner renews every third of its TTL.
//! The owner of a partition:
//!
//! 1. on taking it, **recovers** every running execution of the partition
//!    (from the execution index): replays its history through the
//!    interpreter, re-arms its timers and re-publishes its unanswered tasks
//!    (same `Nats-Msg-Id`, so the broker drops those it still has);
//! 2. pulls the partition's inbox (one durable consumer per partition) and
//!    takes the task results participants send it directly (core requests
//!    on `sagaflow.result.P.*`), applies the events to the executions it
//!    caches, appends one history batch per execution with
//!    `Nats-Expected-Last-Subject-Sequence`, then publishes tasks and arms
//!    timers, and only then acknowledges the inbox messages and answers the
//!    results (a result it could not record is answered so: its sender
//!    stores it in the inbox instead);
//! 3. fires timers (Wait, retry backoff, task and execution timeouts,
//!    heartbeat deadlines) as events of their own.
//!
//! A coordinator that loses its lease (it paused, or the network split)
//! can at worst try one more append: it fails on the expected sequence,
//! so no execution is ever advanced twice. A partition does not even try
//! once its lease may have lapsed by this process's clocks (the
//! `cluster::lease` module).

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use async_nats::jetstream::{self, AckKind, consumer};
use futures::{FutureExt, StreamExt};
use serde_json::{Value, json};
use tokio::sync::{mpsc, watch};
use tokio::task::{JoinHandle, JoinSet};

use super::lease::{LeaseTerm, Stamp};
use sagaflow_asl::interp::{
    self, Command, Event, Execution, ExecutionInfo, Outcome, TaskRequest, Timestamp,
};
use sagaflow_asl::model::StateMachine;
use sagaflow_protocol::api::{ExecutionDescription, ExecutionStatus};
use sagaflow_protocol::{
    ExecutionRef, InboxMessage, ParentTask, ResultReply, StartExecution, TaskMessage,
    check_handler, headers, state_machine_arn,
};

use sagaflow_telemetry::ExecutionTrace;

use super::store::{ExecutionMeta, Forget, HistoryBatch, Store, StoreError};
use crate::driver::{HistoryEntry, HistoryItem, RuntimeOptions};
use crate::resource::{self, Pattern, ResultShape};

use crate::resource::START_EXECUTION;

/// Options of a coordinator.
#[derive(Debug, Clone)]
pub struct ClusterOptions {
    /// Streams, buckets, replicas, lease TTL.
    pub settings: sagaflow_nats::Settings,
    /// How many partitions executions are spread over. Every coordinator
    /// of a deployment must use the same number.
    pub partitions: u32,
    /// This coordinator's id (default: random): 1 to 255 letters, digits
    /// and `-_=.`, as it is a key of the coordinators bucket; another is
    /// refused by [`Cluster::start`] ([`ClusterError::InvalidId`]).
    pub coordinator_id: Option<String>,
    /// Interpreter limits. By default the history's records carry no copies
    /// of state inputs and outputs (`record_payloads: false`): they are
    /// derived by replay when a history is shown.
    pub runtime: RuntimeOptions,
    /// Serve the API service.
    pub api: bool,
    /// Subjects whose messages start executions.
    pub triggers: Vec<Trigger>,
    /// Most inbox messages handled in one step of a partition.
    pub max_batch: usize,
    /// How often each partition owner reconciles its executions: reloads a
    /// running execution nobody holds and deletes ended executions whose
    /// retention ran out ([`sagaflow_nats::Settings::retention`]).
    pub reconcile_every: Duration,
}

impl Default for ClusterOptions {
    fn default() -> Self {
        ClusterOptions {
            settings: sagaflow_nats::Settings::default(),
            partitions: 16,
            coordinator_id: None,
            // History records without copies of state inputs and outputs:
            // smaller writes; the history view derives them by replay.
            runtime: RuntimeOptions {
                record_payloads: false,
                ..RuntimeOptions::default()
            },
            api: true,
            triggers: Vec::new(),
            max_batch: 256,
            reconcile_every: Duration::from_secs(15),
        }
    }
}

/// Messages on `subject` start executions of `state_machine`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Trigger {
    /// The NATS subject (wildcards allowed).
    pub subject: String,
    /// The state machine's name.
    pub state_machine: String,
}

/// The coordinator could not start.
#[derive(Debug, thiserror::Error)]
pub enum ClusterError {
    /// Streams or buckets could not be created.
    #[error(transparent)]
    Setup(#[from] sagaflow_nats::SetupError),
    /// Storage failed.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// The API service or a trigger could not start.
    #[error("cannot start the API service: {0}")]
    Api(String),
    /// The coordinator id is not usable as a key of the coordinators and
    /// leases buckets.
    #[error(
        "coordinator id {0:?} is not valid: use 1 to 255 letters, digits and `-_=.` (it is a key of the coordinators bucket)"
    )]
    InvalidId(String),
}

/// Whether `id` can be a coordinator id: a NATS KV key (letters, digits,
/// `-`, `_`, `=`, `.`; not starting or ending with `.`), of a sensible
/// length.
fn valid_coordinator_id(id: &str) -> bool {
    (1..=255).contains(&id.len())
        && !id.starts_with('.')
        && !id.ends_with('.')
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'=' | b'.'))
}

/// The coordinator.
pub struct Cluster;

/// A running coordinator.
pub struct ClusterHandle {
    id: String,
    store: Store,
    shutdown: watch::Sender<bool>,
    leases: JoinHandle<()>,
    extra: Vec<JoinHandle<()>>,
    /// Stopped gracefully before the partitions are handed back.
    triggers: Option<super::api::TriggerService>,
}

impl ClusterHandle {
    /// This coordinator's id.
    pub fn id(&self) -> &str {
        &self.id
    }

    /// The durable state it works on.
    pub fn store(&self) -> &Store {
        &self.store
    }

    /// Keeps a task alive as long as the coordinator (the API service, the
    /// triggers); it is aborted at shutdown.
    pub fn attach(&mut self, task: JoinHandle<()>) {
        self.extra.push(task);
    }

    /// Serves these triggers as long as the coordinator; at shutdown they
    /// stop first, gracefully ([`super::api::TriggerService::stop`]).
    pub fn attach_triggers(&mut self, triggers: super::api::TriggerService) {
        self.triggers = Some(triggers);
    }

    /// Stops: the triggers first (the messages they received are handled),
    /// then hands back its partitions (other coordinators take them at
    /// once) and returns when every partition has stopped.
    pub async fn shutdown(mut self) {
        if let Some(triggers) = self.triggers.take() {
            triggers.stop().await;
        }
        let _ = self.shutdown.send(true);
        let _ = self.leases.await;
        for task in self.extra {
            task.abort();
        }
    }

    /// Waits until the coordinator stops (after [`ClusterHandle::shutdown`]
    /// from elsewhere, or a fatal error).
    pub async fn wait(self) {
        let _ = self.leases.await;
    }
}

impl Cluster {
    /// Creates the streams and buckets if needed and starts the coordinator.
    pub async fn start(
        client: async_nats::Client,
        options: ClusterOptions,
    ) -> Result<ClusterHandle, ClusterError> {
        if let Some(id) = &options.coordinator_id
            && !valid_coordinator_id(id)
        {
            return Err(ClusterError::InvalidId(id.clone()));
        }
        let infra = sagaflow_nats::setup(client, options.settings.clone()).await?;
        let store = Store::new(infra, options.partitions);
        let id = options
            .coordinator_id
            .clone()
            .unwrap_or_else(|| format!("coordinator-{:016x}", random_u64()));
        let (shutdown, shutdown_rx) = watch::channel(false);
        let shared = Arc::new(Shared {
            store: store.clone(),
            options: options.clone(),
            machines: Mutex::new(HashMap::new()),
        });
        let leases = tokio::spawn(lease_loop(shared, id.clone(), shutdown_rx));
        let mut handle = ClusterHandle {
            id,
            store,
            shutdown,
            leases,
            extra: Vec::new(),
            triggers: None,
        };
        // The API (when `options.api`) and the triggers live as long as
        // the coordinator.
        if let Err(e) = super::api::attach_services(&mut handle, &options).await {
            handle.shutdown().await;
            return Err(ClusterError::Api(e.to_string()));
        }
        Ok(handle)
    }
}

/// What the partitions of one coordinator share.
struct Shared {
    store: Store,
    options: ClusterOptions,
    /// Parsed state machines by (name, version).
    machines: Mutex<HashMap<(String, u64), Arc<StateMachine>>>,
}

/// Why a state machine version could not be had.
#[derive(Debug, thiserror::Error)]
enum MachineError {
    /// It does not exist, or its stored definition does not parse: asking
    /// again gives the same answer.
    #[error("{0}")]
    Unusable(String),
    /// The store could not be read now.
    #[error("{0}")]
    Unreadable(String),
}

impl Shared {
    async fn machine(&self, name: &str, version: u64) -> Result<Arc<StateMachine>, MachineError> {
        let key = (name.to_string(), version);
        if let Some(m) = self
            .machines
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .get(&key)
        {
            return Ok(m.clone());
        }
        let stored = self
            .store
            .machine(name, Some(version))
            .await
            .map_err(|e| MachineError::Unreadable(e.to_string()))?
            .ok_or_else(|| {
                MachineError::Unusable(format!(
                    "state machine {name} version {version} does not exist"
                ))
            })?;
        let parsed =
            sagaflow_asl::parse::parse_accepted_definition(&stored.definition).map_err(|e| {
                MachineError::Unusable(format!(
                    "state machine {name} version {version} is invalid: {e}"
                ))
            })?;
        let parsed = Arc::new(parsed);
        self.machines
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .insert(key, parsed.clone());
        Ok(parsed)
    }
}

fn random_u64() -> u64 {
    use std::hash::{BuildHasher, RandomState};
    let a = RandomState::new().hash_one(std::time::SystemTime::now());
    let b = RandomState::new().hash_one(std::process::id());
    a ^ b.rotate_left(17)
}

fn now() -> Timestamp {
    jiff::Timestamp::now()
}

/// `seconds` after `at`, saturating: a `HeartbeatSecondsPath` may give any
/// number, and a deadline past the end of time is never reached.
fn after_seconds(at: Timestamp, seconds: u64) -> Timestamp {
    let duration = i64::try_from(seconds)
        .map(jiff::SignedDuration::from_secs)
        .unwrap_or(jiff::SignedDuration::MAX);
    at.checked_add(duration).unwrap_or(Timestamp::MAX)
}

pub(super) fn rfc3339(ts: Timestamp) -> String {
    sagaflow_asl::interp::format_timestamp(ts)
}

// ------------------------------------------------------------------ leases

async fn lease_loop(shared: Arc<Shared>, id: String, mut shutdown: watch::Receiver<bool>) {
    let store = shared.store.clone();
    let infra = store.infra().clone();
    let partitions = store.partitions();
    let ttl = infra.settings.lease_ttl;
    let interval = (ttl / 3).max(Duration::from_millis(100));
    let mut owned: HashMap<u32, (u64, PartitionHandle)> = HashMap::new();
    // Partitions being handed back: their lease (still renewed, so that
    // nobody takes them while they finish) and the task stopping them. A
    // stop can take a while (a recovery finishing, writes beside the loop):
    // it runs beside this loop, which goes on renewing every other lease.
    let mut stopping: HashMap<u32, (u64, JoinHandle<()>, Arc<LeaseTerm>)> = HashMap::new();
    // Partitions whose lease was lost, still stopping: not taken again
    // until they stopped (one partition, one worker, in this process).
    let mut lost_stopping: HashMap<u32, JoinHandle<()>> = HashMap::new();
    // Start looking at a place that depends on the id, so that coordinators
    // starting together do not all race for partition 0.
    let offset = (random_u64() % u64::from(partitions)) as u32;
    loop {
        if let Err(e) = infra.coordinators.put(&id, "alive".into()).await {
            tracing::warn!(coordinator = %id, error = %e, "cannot record this coordinator as alive: the partitions may be shared unevenly");
        }
        let live = count_keys(&infra.coordinators).await.max(1);
        let share = partitions.div_ceil(live as u32) as usize;

        // Renew what we own; whatever fails to renew is lost.
        let mut lost = Vec::new();
        for (p, (revision, handle)) in owned.iter_mut() {
            let sent = Stamp::now();
            match infra
                .leases
                .update(lease_key(*p), id.clone().into(), *revision)
                .await
            {
                Ok(r) => {
                    *revision = r;
                    handle.term.renewed(sent, ttl);
                }
                Err(e) => {
                    tracing::warn!(partition = p, error = %e, "lost the lease of a partition");
                    lost.push(*p);
                }
            }
        }
        for (p, (revision, _, term)) in stopping.iter_mut() {
            let sent = Stamp::now();
            if let Ok(r) = infra
                .leases
                .update(lease_key(*p), id.clone().into(), *revision)
                .await
            {
                *revision = r;
                term.renewed(sent, ttl);
            }
        }
        // Lost partitions stop beside the loop (their lease is not ours to
        // hand back).
        for p in lost {
            if let Some((_, handle)) = owned.remove(&p) {
                lost_stopping.insert(p, tokio::spawn(handle.stop()));
            }
        }
        lost_stopping.retain(|_, task| !task.is_finished());
        // Partitions handed back that have stopped: their lease goes.
        let stopped: Vec<u32> = stopping
            .iter()
            .filter(|(_, (_, task, _))| task.is_finished())
            .map(|(p, _)| *p)
            .collect();
        for p in stopped {
            if let Some((revision, _, _)) = stopping.remove(&p) {
                let _ = infra
                    .leases
                    .delete_expect_revision(lease_key(p), Some(revision))
                    .await;
                tracing::info!(coordinator = %id, partition = p, "handed back a partition");
            }
        }
        // A partition whose worker stopped (an error it could not get
        // over) is started again while the lease is ours.
        for (p, (_, handle)) in owned.iter_mut() {
            if handle.task.is_finished() {
                tracing::warn!(partition = p, "restarting a partition that stopped");
                *handle = PartitionHandle::start(shared.clone(), *p, handle.term.clone());
            }
        }

        // Take free partitions up to our share.
        for i in 0..partitions {
            if owned.len() >= share {
                break;
            }
            let p = (offset + i) % partitions;
            if owned.contains_key(&p) || stopping.contains_key(&p) || lost_stopping.contains_key(&p)
            {
                continue;
            }
            let sent = Stamp::now();
            if let Ok(revision) = infra.leases.create(lease_key(p), id.clone().into()).await {
                tracing::info!(coordinator = %id, partition = p, "took a partition");
                let term = Arc::new(LeaseTerm::default());
                term.renewed(sent, ttl);
                let handle = PartitionHandle::start(shared.clone(), p, term);
                owned.insert(p, (revision, handle));
            }
        }

        // Hand back what is above our share, so that newcomers get work.
        while owned.len() > share {
            let Some(&p) = owned.keys().max() else { break };
            if let Some((revision, handle)) = owned.remove(&p) {
                let term = handle.term.clone();
                stopping.insert(p, (revision, tokio::spawn(handle.stop()), term));
            }
        }

        tokio::select! {
            _ = tokio::time::sleep(interval) => {}
            _ = shutdown.changed() => break,
        }
    }
    // Stop everything at once, then hand the leases back.
    let mut leases = Vec::new();
    let mut stops = Vec::new();
    for (p, (revision, handle)) in owned.drain() {
        leases.push((p, revision));
        stops.push(tokio::spawn(handle.stop()));
    }
    for (p, (revision, task, _)) in stopping.drain() {
        leases.push((p, revision));
        stops.push(task);
    }
    stops.extend(lost_stopping.into_values());
    futures::future::join_all(stops).await;
    // Only leases still ours (one that lapsed meanwhile may be another's).
    for (p, revision) in leases {
        let _ = infra
            .leases
            .delete_expect_revision(lease_key(p), Some(revision))
            .await;
    }
    let _ = infra.coordinators.delete(&id).await;
}

fn lease_key(partition: u32) -> String {
    format!("p{partition}")
}

async fn count_keys(store: &jetstream::kv::Store) -> usize {
    match store.keys().await {
        Ok(keys) => keys.filter_map(|k| async move { k.ok() }).count().await,
        Err(_) => 1,
    }
}

// -------------------------------------------------------------- partitions

/// How long a stopping partition waits for its writes beside the loop.
const BACKGROUND_GRACE: Duration = Duration::from_secs(5);

struct PartitionHandle {
    stop: watch::Sender<bool>,
    task: JoinHandle<()>,
    /// Until when the lease is surely ours: renewed by the lease loop,
    /// checked by the partition before it writes.
    term: Arc<LeaseTerm>,
}

impl PartitionHandle {
    fn start(shared: Arc<Shared>, partition: u32, term: Arc<LeaseTerm>) -> PartitionHandle {
        let (stop, stop_rx) = watch::channel(false);
        let lease = term.clone();
        let task = tokio::spawn(async move {
            let mut worker = Partition::new(shared, partition, lease);
            if let Err(e) = worker.run(stop_rx).await {
                tracing::error!(partition, error = %e, "partition stopped on an error");
            }
        });
        PartitionHandle { stop, task, term }
    }

    async fn stop(self) {
        let _ = self.stop.send(true);
        let _ = self.task.await;
    }
}

/// A task waiting for its participant.
#[derive(Debug, Clone)]
struct Pending {
    request: TaskRequest,
    shape: Shape,
    pattern: Pattern,
    /// The message published (None: handled by the coordinator itself), for re-publishing after a restart.
    message: Option<Arc<TaskMessage>>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Shape {
    Raw,
    LambdaInvoke,
    /// `states:startExecution.sync` (`v2`: `.sync:2`, output kept as JSON).
    ChildSync {
        v2: bool,
    },
}

/// An execution held in memory by the partition that owns it.
struct Live {
    exec_ref: ExecutionRef,
    /// Where its task messages send results, computed once.
    route: Route,
    exec: Execution,
    meta: ExecutionMeta,
    /// Stream sequence of its last history batch.
    last_sequence: u64,
    start: Timestamp,
    input: Value,
    pending: HashMap<String, Pending>,
    /// Timers armed, by interpreter timer id.
    timers: HashMap<String, Timestamp>,
    /// Heartbeat deadlines by task id.
    heartbeats: HashMap<String, Timestamp>,
    /// How many times it was redriven.
    redrive_count: u32,
    /// `.sync` children to stop: their task was cancelled in the step being
    /// carried out.
    stop_children: Vec<(ExecutionRef, String)>,
    /// When it completed (the step that produced its outcome).
    completed_at: Option<Timestamp>,
    /// Its spans and metrics (None when telemetry is off).
    trace: Option<ExecutionTrace>,
}

impl Live {
    /// An execution in memory with nothing pending yet: its commands fill
    /// in its tasks and timers as they come.
    fn new(
        exec_ref: ExecutionRef,
        route: Route,
        exec: Execution,
        meta: ExecutionMeta,
        start: Timestamp,
        input: Value,
    ) -> Live {
        Live {
            exec_ref,
            route,
            exec,
            meta,
            last_sequence: 0,
            start,
            input,
            pending: HashMap::new(),
            timers: HashMap::new(),
            heartbeats: HashMap::new(),
            redrive_count: 0,
            stop_children: Vec::new(),
            completed_at: None,
            trace: None,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
enum Due {
    Timer(String),
    Heartbeat(String),
}

/// The longest wait between two reloads of an execution that cannot be
/// loaded.
const MAX_RELOAD_WAIT: Duration = Duration::from_secs(300);

/// Timers and heartbeat deadlines of a partition's executions: (when,
/// execution key, what), earliest first.
type Wheel = BTreeMap<(Timestamp, String, Due), ()>;

/// Takes an execution's armed timers and heartbeat deadlines off the wheel
/// (it ended or leaves memory): exact removals, not a walk of the wheel.
fn unarm(wheel: &mut Wheel, key: &str, live: &Live) {
    for (timer, at) in &live.timers {
        wheel.remove(&(*at, key.to_string(), Due::Timer(timer.clone())));
    }
    for (task, at) in &live.heartbeats {
        wheel.remove(&(*at, key.to_string(), Due::Heartbeat(task.clone())));
    }
}

struct Partition {
    shared: Arc<Shared>,
    partition: u32,
    /// Until when its lease is surely ours: nothing is written past it
    /// (this process was paused, say, and another may own the partition
    /// by now).
    lease: Arc<LeaseTerm>,
    live: HashMap<String, Live>,
    /// Executions dropped from memory after a failed write (NATS down):
    /// reloaded from their history and resumed as soon as possible, so that
    /// a timer that fired meanwhile is not lost.
    reload: HashSet<String>,
    /// Executions whose load failed for a reason that retrying does not
    /// cure (a history that does not decode or replay, a definition
    /// version that no longer parses): how many times in a row, and when
    /// to try again (growing from 2 s to 5 min, rather than every second;
    /// a load failed by NATS is tried again every second).
    reload_backoff: HashMap<String, (u32, tokio::time::Instant)>,
    /// Executions whose last load failed that way.
    unloadable: HashSet<String>,
    /// Executions finished while a reconciliation listing runs: the listing
    /// may still show them running; they are not reloaded.
    finished_while_listing: Option<HashSet<String>>,
    /// Work gathered while applying a batch and done together after it
    /// (pipelined): index entries to write before the history appends, task
    /// messages to publish and completions to announce after them.
    index_writes: Vec<(String, ExecutionDescription)>,
    /// Index entries of the fresh starts in the batch: created (if absent)
    /// together with their first history append rather than before it. A
    /// start whose entry could not be written is handed back, and its
    /// redelivery finds the history and puts the entry right.
    index_creates: Vec<(String, ExecutionDescription)>,
    /// Executions whose start is in the batch being handled, delivered for
    /// the first time: applied without reading their (absent) history.
    fresh_starts: HashSet<String>,
    /// Executions without a recorded step whose history subject holds the
    /// parts of a first step that was never stored whole (its writer died
    /// between them): the sequence their start's append must expect.
    unfinished_first_steps: HashMap<String, u64>,
    /// Stops to `.sync` children that could not be sent (NATS away): (parent
    /// key, child, the parent's task), sent again with the reloads.
    failed_child_stops: Vec<(String, ExecutionRef, String)>,
    outgoing: Vec<(String, Arc<TaskMessage>)>,
    completed: Vec<(String, Outcome)>,
    /// Results the coordinator made itself (a child started, a task that
    /// could not be published), by execution: applied with the next step
    /// of the loop, not inside the step that made them (a chain of them,
    /// one child start after another, would nest a step per link).
    follow_ups: Vec<(String, Vec<Input>)>,
    /// (when, execution key, what), earliest first. Holds exactly the
    /// armed timers and heartbeat deadlines of the executions in `live`
    /// (their `timers` and `heartbeats`), less the ones that fired: an
    /// entry leaves it when its timer is cancelled or its task answered, so
    /// that neither memory nor the work of ending an execution grows with
    /// the timers of others.
    wheel: Wheel,
    /// Writes whose outcome is not needed to go on (task messages'
    /// acknowledgements, completions) are awaited beside the loop; the keys
    /// of the executions whose write failed come back here, to be reloaded
    /// (which writes them again).
    failed_writes: mpsc::UnboundedSender<String>,
    failed_writes_rx: Option<mpsc::UnboundedReceiver<String>>,
    /// Those writes while they run: a partition that stops lets them
    /// finish (for a while) before it hands the partition back.
    background: JoinSet<()>,
}

/// Something to apply to one execution.
enum Input {
    /// An inbox message or a result sent directly (with its index in the
    /// batch, to acknowledge or answer it).
    Inbox(usize, InboxMessage),
    /// A timer that came due.
    Timer(String),
    /// A heartbeat deadline that passed.
    HeartbeatExpired(String),
    /// A result the coordinator made itself (child start, dispatch failure).
    Local(Event),
}

/// A message for the partition's owner.
enum Delivery {
    /// From the partition's inbox (JetStream): acknowledged once handled.
    Inbox(Box<jetstream::Message>),
    /// A task result sent straight to the owner (core NATS request):
    /// answered with a [`ResultReply`] once handled.
    Result(async_nats::Message),
}

impl Delivery {
    fn subject(&self) -> &str {
        match self {
            Delivery::Inbox(m) => m.subject.as_str(),
            Delivery::Result(m) => m.subject.as_str(),
        }
    }

    fn payload(&self) -> &[u8] {
        match self {
            Delivery::Inbox(m) => &m.payload,
            Delivery::Result(m) => &m.payload,
        }
    }
}

impl Partition {
    fn new(shared: Arc<Shared>, partition: u32, lease: Arc<LeaseTerm>) -> Partition {
        let (failed_writes, failed_writes_rx) = mpsc::unbounded_channel();
        Partition {
            lease,
            failed_writes,
            failed_writes_rx: Some(failed_writes_rx),
            background: JoinSet::new(),
            shared,
            partition,
            live: HashMap::new(),
            reload: HashSet::new(),
            reload_backoff: HashMap::new(),
            unloadable: HashSet::new(),
            finished_while_listing: None,
            index_writes: Vec::new(),
            index_creates: Vec::new(),
            fresh_starts: HashSet::new(),
            unfinished_first_steps: HashMap::new(),
            failed_child_stops: Vec::new(),
            outgoing: Vec::new(),
            completed: Vec::new(),
            follow_ups: Vec::new(),
            wheel: BTreeMap::new(),
        }
    }

    fn store(&self) -> &Store {
        &self.shared.store
    }

    async fn run(&mut self, mut stop: watch::Receiver<bool>) -> Result<(), String> {
        let infra = self.store().infra().clone();
        let ns = infra.ns().clone();
        // A new owner starts the partition's consumer afresh: messages the
        // previous owner pulled and never acknowledged come back at once
        // (the work-queue stream keeps every message until it is acked),
        // instead of after the ack wait; a stale owner's pulls then fail.
        let _ = infra
            .inbox
            .delete_consumer(&ns.inbox_consumer(self.partition))
            .await;
        // The index as of the last reconciliation (a panicked round loses
        // it: the next one reads every entry again). Recovery reads every
        // entry of the partition's index once; reconciliation rounds then
        // read only what changed since.
        let mut index_view = IndexView::default();
        let mut recovered = self.recover(&mut index_view).await;
        // Retries run at absolute times: a timer made afresh on every turn
        // of the loop would never fire while messages keep coming.
        let retry_every = Duration::from_secs(1);
        let mut next_recovery = tokio::time::Instant::now() + retry_every;
        let mut next_reload = tokio::time::Instant::now() + retry_every;
        let reconcile_every = self
            .shared
            .options
            .reconcile_every
            .max(Duration::from_millis(100));
        // Partitions take turns: partition p's rounds run p/partitions of a
        // period later than partition 0's, so that their reads (every index
        // change of the period) do not all land at once.
        let phase = reconcile_every
            .mul_f64(f64::from(self.partition) / f64::from(self.store().partitions().max(1)));
        let mut next_reconcile = tokio::time::Instant::now() + reconcile_every + phase;
        let mut reconciling: Option<JoinHandle<Listed>> = None;
        let mut results: Option<async_nats::Subscriber> = None;
        let mut failed_writes = self
            .failed_writes_rx
            .take()
            .ok_or("the partition loop runs once")?;
        loop {
            // (Re)open the inbox; while NATS is away, keep firing timers.
            let messages = async {
                let consumer = infra
                    .inbox
                    .get_or_create_consumer::<consumer::pull::Config>(
                        &ns.inbox_consumer(self.partition),
                        consumer::pull::Config {
                            durable_name: Some(ns.inbox_consumer(self.partition)),
                            filter_subject: ns.inbox_partition_filter(self.partition),
                            ack_policy: consumer::AckPolicy::Explicit,
                            ack_wait: Duration::from_secs(30),
                            max_ack_pending: 20_000,
                            ..Default::default()
                        },
                    )
                    .await
                    .map_err(|e| format!("inbox consumer: {e}"))?;
                consumer
                    .stream()
                    .max_messages_per_batch(self.shared.options.max_batch)
                    .heartbeat(Duration::from_secs(5))
                    .expires(Duration::from_secs(10))
                    .messages()
                    .await
                    .map_err(|e| format!("inbox messages: {e}"))
            }
            .await;
            let mut messages = match messages {
                Ok(m) => Some(m),
                Err(e) => {
                    tracing::warn!(partition = self.partition, error = %e, "cannot open the inbox; retrying");
                    None
                }
            };
            // Results participants send straight to the owner (core NATS
            // requests, answered once recorded). Without the subscription
            // they go to the inbox instead: nothing is lost meanwhile.
            if results.is_none() {
                match infra
                    .client
                    .subscribe(ns.result_partition_filter(self.partition))
                    .await
                {
                    Ok(sub) => results = Some(sub),
                    Err(e) => {
                        tracing::warn!(partition = self.partition, error = %e, "cannot subscribe to results; retrying");
                    }
                }
            }
            let reopen_at = tokio::time::Instant::now() + Duration::from_millis(500);
            loop {
                let due = self.wheel.keys().next().map(|(at, _, _)| *at);
                let sleep = match due {
                    Some(at) => {
                        let wait = at.duration_since(now()).unsigned_abs();
                        tokio::time::sleep(if at <= now() { Duration::ZERO } else { wait })
                    }
                    None => tokio::time::sleep(Duration::from_secs(3600)),
                };
                let far = tokio::time::Instant::now() + Duration::from_secs(3600);
                let retry_reloads = tokio::time::sleep_until(
                    if self.reload.is_empty() && self.failed_child_stops.is_empty() {
                        far
                    } else {
                        next_reload
                    },
                );
                let reopen = tokio::time::sleep_until(if messages.is_some() && results.is_some() {
                    far
                } else {
                    reopen_at
                });
                let retry_recovery =
                    tokio::time::sleep_until(if recovered { far } else { next_recovery });
                let reconcile = tokio::time::sleep_until(if reconciling.is_some() {
                    far
                } else {
                    next_reconcile
                });
                let reconciled = async {
                    match reconciling.as_mut() {
                        Some(listing) => listing.await,
                        None => std::future::pending().await,
                    }
                };
                let next = async {
                    match messages.as_mut() {
                        Some(m) => m.next().await,
                        None => std::future::pending().await,
                    }
                };
                let next_result = async {
                    match results.as_mut() {
                        Some(r) => r.next().await,
                        None => std::future::pending().await,
                    }
                };
                tokio::select! {
                    biased;
                    _ = stop.changed() => {
                        self.finish_background().await;
                        return Ok(());
                    }
                    first = next => {
                        let Some(first) = first else {
                            tracing::warn!(partition = self.partition, "the inbox subscription ended; reopening");
                            break;
                        };
                        let mut batch = Vec::new();
                        match first {
                            Ok(m) => batch.push(Delivery::Inbox(Box::new(m))),
                            Err(e) => {
                                tracing::warn!(partition = self.partition, error = %e, "inbox pull failed");
                                continue;
                            }
                        }
                        self.gather(&mut batch, messages.as_mut(), results.as_mut());
                        self.handle_inbox(batch).await;
                        self.fire_if_due().await;
                    }
                    first = next_result => {
                        let Some(first) = first else {
                            tracing::warn!(partition = self.partition, "the result subscription ended; subscribing again");
                            results = None;
                            break;
                        };
                        let mut batch = vec![Delivery::Result(first)];
                        self.gather(&mut batch, messages.as_mut(), results.as_mut());
                        self.handle_inbox(batch).await;
                        self.fire_if_due().await;
                    }
                    _ = sleep => self.fire_due().await,
                    Some(key) = failed_writes.recv() => {
                        self.reload.insert(key);
                    }
                    _ = retry_reloads => {
                        self.retry_child_stops().await;
                        self.retry_reloads().await;
                        next_reload = tokio::time::Instant::now() + retry_every;
                    }
                    _ = retry_recovery => {
                        recovered = self.recover(&mut index_view).await;
                        next_recovery = tokio::time::Instant::now() + retry_every;
                    }
                    _ = reconcile => {
                        // The listing (one read per index entry) runs beside
                        // the loop, which keeps serving the inbox meanwhile.
                        self.finished_while_listing = Some(HashSet::new());
                        reconciling = Some(tokio::spawn(list_for_reconcile(
                            self.store().clone(),
                            self.partition,
                            std::mem::take(&mut index_view),
                        )));
                    }
                    listed = reconciled => {
                        reconciling = None;
                        next_reconcile = tokio::time::Instant::now() + reconcile_every;
                        match listed {
                            Ok(listed) => {
                                index_view = listed.view;
                                self.reconcile(listed.running, listed.misindexed, listed.ended_now).await;
                            }
                            Err(e) => {
                                self.finished_while_listing = None;
                                tracing::warn!(partition = self.partition, error = %e, "reconciliation failed");
                            }
                        }
                    }
                    _ = reopen => break,
                    // Results the coordinator made itself, when nothing else
                    // is ready (a message brings them along in its step):
                    // last, so that a chain of them (one child start after
                    // another) leaves the timers, reloads and
                    // reconciliation their turns.
                    () = std::future::ready(()), if !self.follow_ups.is_empty() => {
                        self.step(Vec::new()).await;
                    }
                }
            }
        }
    }

    /// Runs `write` beside the loop; the executions it returns (those whose
    /// write failed) are put on the reload list. The writes that finished
    /// meanwhile are collected first (rather than waking the loop for each).
    fn beside_loop(&mut self, write: impl Future<Output = Vec<String>> + Send + 'static) {
        while let Some(joined) = self.background.try_join_next() {
            if let Err(e) = joined
                && e.is_panic()
            {
                tracing::error!(partition = self.partition, error = %e, "a write beside the loop panicked");
            }
        }
        let failed_writes = self.failed_writes.clone();
        self.background.spawn(async move {
            for key in write.await {
                let _ = failed_writes.send(key);
            }
        });
    }

    /// Lets the writes still running beside the loop finish, for at most
    /// [`BACKGROUND_GRACE`]: what is cut short is written again by the next
    /// owner (its recovery finds the execution still running in the index,
    /// or its task still to publish).
    async fn finish_background(&mut self) {
        let drained = tokio::time::timeout(BACKGROUND_GRACE, async {
            while self.background.join_next().await.is_some() {}
        })
        .await;
        if drained.is_err() {
            tracing::warn!(
                partition = self.partition,
                left = self.background.len(),
                "writes still running when the partition stopped; the next owner makes them again"
            );
            self.background.shutdown().await;
        }
    }

    // ------------------------------------------------------------ recovery

    /// The safety net under every other recovery path: an execution the
    /// index says is running but that this owner does not hold is reloaded
    /// from its history; if it ended, its index entry is written, else it is
    /// resumed (timers re-armed, tasks re-published: the broker drops the
    /// duplicates).
    /// Reloads the running executions (from [`list_for_reconcile`]) that
    /// nobody holds here.
    async fn reconcile(
        &mut self,
        running: Vec<ExecutionRef>,
        misindexed: Vec<ExecutionRef>,
        ended_now: Vec<String>,
    ) {
        // Running here, ended by an index entry written since the last
        // round: a stale owner's late completion entry over a redrive made
        // here meanwhile (recovery, which starts from the index, would miss
        // the execution after a crash). The entry is put right from memory.
        for key in ended_now {
            if self
                .live
                .get(&key)
                .is_some_and(|live| live.exec.outcome().is_none())
            {
                tracing::warn!(execution = %key, "the index says it ended while it runs here (an entry written late by a former owner?); rewriting it");
                self.rewrite_index(&key).await;
            }
        }
        // Running by their history, ended by their index entry (written
        // late, by a stale owner say): the entry is put right, from memory
        // or by a reload.
        for exec_ref in misindexed {
            let key = exec_ref.key();
            match self.live.get(&key) {
                Some(live) if live.exec.outcome().is_none() => {
                    self.rewrite_index(&key).await;
                }
                // Ended meanwhile: its finish writes the entry.
                Some(_) => {}
                None => {
                    self.reload.insert(key);
                }
            }
        }
        let finished = self.finished_while_listing.take().unwrap_or_default();
        for exec_ref in running {
            let key = exec_ref.key();
            if self.live.contains_key(&key) || self.reload.contains(&key) || finished.contains(&key)
            {
                continue;
            }
            tracing::info!(execution = %exec_ref.arn(), "reconciling an execution held by nobody");
            self.reload.insert(key);
        }
        self.retry_reloads().await;
    }

    /// Writes a running execution's index entry as memory has it; `false`
    /// (and the execution evicted, to be reloaded later) when it cannot.
    async fn rewrite_index(&mut self, key: &str) -> bool {
        let Some(live) = self.live.get(key) else {
            return false;
        };
        if !self.lease.holds() {
            self.evict(key);
            return false;
        }
        match self
            .shared
            .store
            .put_execution(&running_description(live))
            .await
        {
            Ok(()) => true,
            Err(e) => {
                tracing::warn!(execution = %key, error = %e, "cannot rewrite the execution index; reloading it later");
                self.evict(key);
                false
            }
        }
    }

    async fn retry_reloads(&mut self) {
        let keys: Vec<String> = self.reload.iter().cloned().collect();
        let t = tokio::time::Instant::now();
        for key in keys {
            if self
                .reload_backoff
                .get(&key)
                .is_some_and(|(_, next)| *next > t)
            {
                continue;
            }
            let Ok(exec_ref) = ExecutionRef::from_key(&key) else {
                self.reload.remove(&key);
                continue;
            };
            if let Some(old) = self.live.remove(&key) {
                unarm(&mut self.wheel, &key, &old);
            }
            match self.load(&exec_ref).await {
                Ok(Some(())) => {
                    self.reload.remove(&key);
                    let completed = self.live.get(&key).and_then(|l| l.exec.outcome().cloned());
                    match completed {
                        Some(outcome) => self.finish(&key, &outcome).await,
                        None => {
                            // Its index entry as the history has it (a start
                            // applied optimistically to an existing execution
                            // may have rewritten it).
                            // Not carried on without its entry: recovery
                            // finds executions through it. Tried again at
                            // the next round.
                            if !self.rewrite_index(&key).await {
                                continue;
                            }
                            self.resume(&key).await
                        }
                    }
                }
                Ok(None) => {
                    self.reload.remove(&key);
                }
                Err(e) if self.unloadable.contains(&key) => {
                    let (failures, next) = self.reload_backoff.entry(key.clone()).or_insert((0, t));
                    *failures += 1;
                    let wait = Duration::from_secs(1u64 << (*failures).min(9)).min(MAX_RELOAD_WAIT);
                    *next = tokio::time::Instant::now() + wait;
                    tracing::warn!(execution = %key, error = %e, failures = *failures, "cannot load an execution; trying again in {wait:?}");
                }
                Err(e) => {
                    tracing::debug!(execution = %key, error = %e, "reload failed; retrying");
                }
            }
        }
        let reload = &self.reload;
        self.reload_backoff.retain(|key, _| reload.contains(key));
        self.unloadable.retain(|key| reload.contains(key));
    }

    /// Drops an execution from memory after a failed write; it is reloaded
    /// from its history and resumed later (timers re-armed, unanswered
    /// tasks published again). The caller hands back its inbox messages
    /// (nothing of the step was recorded). After a failed append:
    /// - a start applied without reading the history that finds one there
    ///   is a repeat: the reload puts its index entry right, and the
    ///   messages that came with the start (a result, a stop) are applied
    ///   to it when they come again;
    /// - a conflict is reloaded too: the other writer may be a stale owner
    ///   that has not yet noticed its lease is gone, and the execution is
    ///   this coordinator's to carry on (if this one is the stale owner, its
    ///   writes keep failing until its partition stops).
    fn evict(&mut self, key: &str) {
        if let Some(old) = self.live.remove(key) {
            unarm(&mut self.wheel, key, &old);
        }
        self.reload.insert(key.to_string());
    }

    /// Recovers the running executions of the partition, read from its
    /// index into `view` (which reconciliation then keeps up to date).
    /// `false` when they could not even be listed (NATS away): the caller
    /// tries again.
    async fn recover(&mut self, view: &mut IndexView) -> bool {
        let (changes, cursor) = match self
            .store()
            .partition_index_changes(self.partition, 0)
            .await
        {
            Ok(r) => r,
            Err(e) => {
                tracing::warn!(partition = self.partition, error = %e, "cannot list executions to recover; retrying");
                return false;
            }
        };
        *view = IndexView::default();
        view.apply(changes, self.store().infra().settings.retention);
        view.cursor = cursor;
        let running: Vec<ExecutionRef> = view.running.values().cloned().collect();
        for exec_ref in running {
            match self.load(&exec_ref).await {
                Ok(Some(())) => {
                    let key = exec_ref.key();
                    let completed = self.live.get(&key).and_then(|l| l.exec.outcome().cloned());
                    if let Some(outcome) = completed {
                        // It ended but its index entry was not updated.
                        self.finish(&key, &outcome).await;
                        continue;
                    }
                    self.resume(&key).await;
                }
                Ok(None) => {
                    // Indexed but no history yet: its start is still in the
                    // inbox and will arrive.
                }
                Err(e) => {
                    tracing::warn!(execution = %exec_ref.arn(), error = %e, "cannot recover an execution yet; retrying");
                    self.reload.insert(exec_ref.key());
                }
            }
        }
        true
    }

    /// Re-arms timers and heartbeat deadlines and re-publishes unanswered
    /// tasks of a just-loaded execution.
    async fn resume(&mut self, key: &str) {
        let local = self.rearm_and_republish(key, &HashSet::new()).await;
        if !local.is_empty() {
            self.step(vec![(key.to_string(), local)]).await;
        }
    }

    /// The work of [`Partition::resume`]; returns the failures of tasks that
    /// could not be published, as events to apply. The tasks in `alive`
    /// (whose participant just sent a result or a heartbeat) are not
    /// published again.
    async fn rearm_and_republish(&mut self, key: &str, alive: &HashSet<&str>) -> Vec<Input> {
        let Some(live) = self.live.get_mut(key) else {
            return Vec::new();
        };
        let t = now();
        let mut messages = Vec::new();
        let mut in_coordinator = Vec::new();
        let mut wheel = Vec::new();
        for (timer, at) in &live.timers {
            wheel.push((*at, Due::Timer(timer.clone())));
        }
        let mut replaced = Vec::new();
        for p in live.pending.values() {
            if let Some(hb) = p.request.heartbeat_seconds {
                let deadline = after_seconds(t, hb);
                // A deadline this one replaces (armed already: an
                // execution resumed twice) leaves the wheel.
                if let Some(old) = live
                    .heartbeats
                    .insert(p.request.task_id.to_string(), deadline)
                {
                    replaced.push((old, Due::Heartbeat(p.request.task_id.to_string())));
                }
                wheel.push((deadline, Due::Heartbeat(p.request.task_id.to_string())));
            }
            if alive.contains(&*p.request.task_id) {
                continue;
            }
            match &p.message {
                Some(message) => messages.push(message.clone()),
                None => in_coordinator.push(p.clone()),
            }
        }
        for (at, due) in replaced {
            self.wheel.remove(&(at, key.to_string(), due));
        }
        for (at, due) in wheel {
            self.wheel.insert((at, key.to_string(), due), ());
        }
        let mut local = Vec::new();
        for message in messages {
            if let Err(event) = self.publish_task(key, &message).await {
                local.push(Input::Local(event));
            }
        }
        for pending in in_coordinator {
            if let Some(event) = self.dispatch_in_coordinator(key, &pending).await {
                local.push(Input::Local(event));
            }
        }
        local
    }

    /// Loads an execution from its history into the cache. `Ok(None)` when
    /// it has no history.
    async fn load(&mut self, exec_ref: &ExecutionRef) -> Result<Option<()>, String> {
        let key = exec_ref.key();
        if self.live.contains_key(&key) {
            return Ok(Some(()));
        }
        self.unloadable.remove(&key);
        let history = match self.store().read_history(exec_ref).await {
            Ok(history) => history,
            Err(e) => {
                if matches!(e, StoreError::Corrupt { .. }) {
                    self.unloadable.insert(key);
                }
                return Err(e.to_string());
            }
        };
        let Some(meta) = history.batches.first().and_then(|b| b.meta.clone()) else {
            if history.last_sequence > 0 {
                // Only the parts of a first step whose append did not
                // finish: the start's append comes after them.
                self.unfinished_first_steps
                    .insert(key, history.last_sequence);
            }
            return Ok(None);
        };
        // Its first step is recorded now (by whoever wrote it).
        self.unfinished_first_steps.remove(&key);
        let machine = match self.shared.machine(&meta.state_machine, meta.version).await {
            Ok(machine) => machine,
            Err(e) => {
                if matches!(e, MachineError::Unusable(_)) {
                    self.unloadable.insert(key);
                }
                return Err(e.to_string());
            }
        };
        let mut live = Live::new(
            exec_ref.clone(),
            Route::new(exec_ref, self.store()),
            Execution::new(machine, self.shared.options.runtime.interp_options()),
            meta,
            now(),
            Value::Null,
        );
        live.last_sequence = history.last_sequence;
        // The execution's trace goes on where the previous owner left it:
        // same trace, same span ids, open spans rebuilt by the replay.
        live.trace = live.meta.execution_span.as_deref().and_then(|span| {
            ExecutionTrace::resume(
                span,
                live.meta.traceparent.as_deref(),
                &exec_ref.arn(),
                &live.meta.state_machine,
            )
        });
        let mut out = Vec::new();
        for batch in &history.batches {
            for entry in &batch.entries {
                if let HistoryItem::Event(event) = &entry.item {
                    if let Event::ExecutionStarted { input, .. } = event {
                        live.start = entry.at;
                        live.input = input.clone();
                    }
                    out.clear();
                    match apply_guarded(&mut live.exec, entry.at, event.clone(), &mut out) {
                        Ok(Ok(())) => {}
                        Ok(Err(e)) => {
                            self.unloadable.insert(key);
                            return Err(format!("replay of {} failed: {e}", exec_ref.arn()));
                        }
                        Err(panic) => {
                            tracing::error!(execution = %exec_ref.arn(), panic = %panic, "the interpreter panicked in a replay");
                            self.unloadable.insert(key);
                            return Err(format!(
                                "replay of {} failed: the interpreter panicked: {panic}",
                                exec_ref.arn()
                            ));
                        }
                    }
                    if let Some(trace) = live.trace.as_mut() {
                        trace.observe(entry.at, event, &out, false);
                    }
                    track(&mut live, &out, &key, &mut self.wheel);
                    if out.iter().any(|c| matches!(c, Command::Complete(_))) {
                        live.completed_at = Some(entry.at);
                    }
                }
            }
        }
        // The `.sync` children this execution stopped waiting for are sent
        // their stop again: the previous owner may have died between
        // recording the cancellation and sending it. A child that ended (or
        // got the first stop) ignores it; the broker drops a repeat within
        // its duplicate window.
        let children = std::mem::take(&mut live.stop_children);
        if let Some(old) = self.live.insert(key.clone(), live) {
            unarm(&mut self.wheel, &key, &old);
        }
        self.stop_children(&key, children).await;
        Ok(Some(()))
    }

    // --------------------------------------------------------------- steps

    /// Adds to `batch` what the inbox and the result subscription already
    /// hold, up to `max_batch` messages, without waiting.
    fn gather(
        &self,
        batch: &mut Vec<Delivery>,
        mut messages: Option<&mut consumer::pull::Stream>,
        mut results: Option<&mut async_nats::Subscriber>,
    ) {
        let max = self.shared.options.max_batch;
        while batch.len() < max {
            let mut took = false;
            if let Some(m) = messages.as_mut()
                && let Some(Some(Ok(msg))) = m.next().now_or_never()
            {
                batch.push(Delivery::Inbox(Box::new(msg)));
                took = true;
            }
            if batch.len() < max
                && let Some(r) = results.as_mut()
                && let Some(Some(msg)) = r.next().now_or_never()
            {
                batch.push(Delivery::Result(msg));
                took = true;
            }
            if !took {
                break;
            }
        }
    }

    async fn handle_inbox(&mut self, batch: Vec<Delivery>) {
        let mut groups: Vec<(String, Vec<Input>)> = Vec::new();
        let mut index: HashMap<String, usize> = HashMap::new();
        let mut decoded: Vec<bool> = Vec::with_capacity(batch.len());
        for (i, message) in batch.iter().enumerate() {
            let parsed: Result<InboxMessage, String> =
                serde_json::from_slice(message.payload()).map_err(|e| e.to_string());
            let key = message
                .subject()
                .rsplit('.')
                .next()
                .unwrap_or_default()
                .to_string();
            // Only task results come the direct way; anything else sent
            // there is refused (the inbox is the way for the rest).
            let parsed = parsed.and_then(|m| match (message, &m) {
                (Delivery::Inbox(_), _)
                | (
                    Delivery::Result(_),
                    InboxMessage::TaskSucceeded {
                        callback: false, ..
                    }
                    | InboxMessage::TaskFailed {
                        callback: false, ..
                    },
                ) => Ok(m),
                (Delivery::Result(_), _) => Err("not a task result".to_string()),
            });
            if let (Ok(InboxMessage::StartExecution(_)), Delivery::Inbox(m)) = (&parsed, message)
                && m.info().is_ok_and(|i| i.delivered == 1)
            {
                self.fresh_starts.insert(key.clone());
            }
            // A key of another partition (a message published by hand to
            // the wrong subject) is not ours to advance: its owner writes
            // its history.
            let ours = ExecutionRef::from_key(&key)
                .is_ok_and(|r| self.store().partition_of(&r) == self.partition);
            match parsed {
                Ok(m) if ours => {
                    let slot = *index.entry(key.clone()).or_insert_with(|| {
                        groups.push((key.clone(), Vec::new()));
                        groups.len() - 1
                    });
                    groups[slot].1.push(Input::Inbox(i, m));
                    decoded.push(true);
                }
                Ok(_) | Err(_) => {
                    tracing::warn!(subject = %message.subject(), "dropping a malformed inbox message");
                    decoded.push(false);
                }
            }
        }
        let results = self.step(groups).await;
        self.fresh_starts.clear();
        // Acknowledge what was recorded (or needed no record), hand back the
        // rest, terminate what cannot be decoded. A result sent directly
        // is answered: recorded, or not (its sender then stores it in the
        // inbox, whose redelivery retries it).
        let client = &self.store().infra().client;
        for (i, message) in batch.iter().enumerate() {
            match message {
                Delivery::Inbox(message) => {
                    let ack = if !decoded[i] {
                        AckKind::Term
                    } else if results.retry.contains(&i) {
                        // 200 ms, doubling with each redelivery up to 10 s:
                        // a message that keeps failing (its execution
                        // cannot be loaded) is not retried at full speed.
                        let delivered = message.info().map_or(1, |info| info.delivered).max(1);
                        let doublings = u32::try_from(delivered - 1).unwrap_or(u32::MAX).min(6);
                        AckKind::Nak(Some(
                            (Duration::from_millis(200) * (1 << doublings))
                                .min(Duration::from_secs(10)),
                        ))
                    } else {
                        AckKind::Ack
                    };
                    if let Err(e) = message.ack_with(ack).await {
                        tracing::warn!(error = %e, "cannot acknowledge an inbox message");
                    }
                }
                Delivery::Result(message) => {
                    let Some(reply) = message.reply.clone() else {
                        continue;
                    };
                    let answer = if !decoded[i] {
                        ResultReply {
                            recorded: false,
                            error: Some("malformed task result".to_string()),
                        }
                    } else if results.retry.contains(&i) {
                        ResultReply {
                            recorded: false,
                            error: Some("the result could not be recorded now".to_string()),
                        }
                    } else {
                        ResultReply {
                            recorded: true,
                            error: None,
                        }
                    };
                    let body = serde_json::to_vec(&answer).unwrap_or_default();
                    if let Err(e) = client.publish(reply, body.into()).await {
                        tracing::debug!(error = %e, "cannot answer a task result");
                    }
                }
            }
        }
    }

    /// Fires the timers that came due while messages were handled: under a
    /// steady stream of messages (which the loop takes first) timers would
    /// otherwise wait for a lull.
    async fn fire_if_due(&mut self) {
        let t = now();
        if self.wheel.keys().next().is_some_and(|(at, _, _)| *at <= t) {
            self.fire_due().await;
        }
    }

    async fn fire_due(&mut self) {
        let t = now();
        let mut groups: Vec<(String, Vec<Input>)> = Vec::new();
        let mut at_group: HashMap<String, usize> = HashMap::new();
        while let Some(((at, key, due), ())) = self.wheel.pop_first() {
            if at > t {
                self.wheel.insert((at, key, due), ());
                break;
            }
            let input = match due {
                Due::Timer(id) => {
                    let armed = self
                        .live
                        .get(&key)
                        .and_then(|l| l.timers.get(&id))
                        .is_some_and(|when| *when == at);
                    if !armed {
                        continue;
                    }
                    Input::Timer(id)
                }
                Due::Heartbeat(task) => {
                    let armed = self
                        .live
                        .get(&key)
                        .and_then(|l| l.heartbeats.get(&task))
                        .is_some_and(|when| *when == at);
                    if !armed {
                        continue;
                    }
                    Input::HeartbeatExpired(task)
                }
            };
            // By execution, in the order they came due (many may at once:
            // a lookup, not a walk of the groups).
            match at_group.get(&key) {
                Some(&i) => groups[i].1.push(input),
                None => {
                    at_group.insert(key.clone(), groups.len());
                    groups.push((key, vec![input]));
                }
            }
        }
        if !groups.is_empty() {
            self.step(groups).await;
        }
    }

    /// Applies inputs to executions, records them, carries out the commands.
    async fn step(&mut self, groups: Vec<(String, Vec<Input>)>) -> StepResult {
        let groups = merge_groups(std::mem::take(&mut self.follow_ups), groups);
        let mut result = StepResult::default();
        let mut appends = Vec::new();
        // The inbox messages of each execution (by index in the batch), to
        // hand back if its writes fail.
        let mut handed: HashMap<String, Vec<usize>> = HashMap::new();
        for (key, inputs) in groups {
            let inbox_indexes: Vec<usize> = inputs
                .iter()
                .filter_map(|i| match i {
                    Input::Inbox(n, _) => Some(*n),
                    _ => None,
                })
                .collect();
            match self.apply_group(&key, inputs).await {
                Ok(Some(applied)) => {
                    handed.insert(key.clone(), inbox_indexes);
                    appends.push((key, applied));
                }
                Ok(None) => {
                    handed.insert(key, inbox_indexes);
                }
                Err(e) => {
                    tracing::warn!(execution = %key, error = %e, "events handed back");
                    self.evict(&key);
                    result.retry.extend(inbox_indexes);
                }
            }
        }
        let writes_anything =
            !appends.is_empty() || !self.index_writes.is_empty() || !self.index_creates.is_empty();
        if writes_anything && !self.lease.holds() {
            self.lease_lapsed(appends, &mut handed, &mut result);
            return result;
        }
        let store = self.shared.store.clone();
        // Index entries of redelivered starts and redrives first (recovery
        // finds executions through them), all at once.
        let writes = std::mem::take(&mut self.index_writes);
        if !writes.is_empty() {
            let results =
                futures::future::join_all(writes.iter().map(|(_, d)| store.put_execution(d))).await;
            for ((key, _), r) in writes.iter().zip(results) {
                if let Err(e) = r {
                    tracing::warn!(execution = %key, error = %e, "cannot write the execution index");
                    appends.retain(|(k, _)| k != key);
                    result.retry.extend(handed.remove(key).unwrap_or_default());
                    self.evict(key);
                }
            }
        }
        // Send every append, and create the index entries of fresh starts
        // meanwhile; then wait for the appends together.
        let creates = std::mem::take(&mut self.index_creates);
        let create_all =
            futures::future::join_all(creates.iter().map(|(_, d)| store.create_execution(d)));
        let live = &self.live;
        let send_all = async {
            let mut sent = Vec::new();
            for (key, applied) in appends {
                let Some(exec_ref) = live.get(&key).map(|l| l.exec_ref.clone()) else {
                    continue;
                };
                let mut r = store
                    .send_history(&exec_ref, applied.expected, &applied.batch)
                    .await;
                if matches!(r, Err(StoreError::TooLarge { .. })) {
                    // The records' copies of state inputs and outputs made
                    // the batch too large for a message: keep the events and
                    // the commands (what replay needs), drop the copies.
                    let slim = slim_batch(&applied.batch);
                    r = store.send_history(&exec_ref, applied.expected, &slim).await;
                    if matches!(r, Err(StoreError::TooLarge { .. })) {
                        // Still too large (task inputs and results, many of
                        // them at once): store the step in parts.
                        r = store
                            .send_history_in_parts(&exec_ref, applied.expected, &slim)
                            .await;
                    }
                }
                sent.push((key, applied, exec_ref, r));
            }
            sent
        };
        let (created, sent) = futures::join!(create_all, send_all);
        // Fresh starts whose entry could not be created, and those that
        // found one already there (rewritten once their append succeeds:
        // it may be left over from an execution of the same name whose
        // deletion did not finish).
        let mut not_indexed = HashSet::new();
        let mut rewrite = HashSet::new();
        for ((key, _), r) in creates.iter().zip(created) {
            match r {
                Ok(true) => {}
                Ok(false) => {
                    rewrite.insert(key.clone());
                }
                Err(e) => {
                    tracing::warn!(execution = %key, error = %e, "cannot write the execution index");
                    not_indexed.insert(key.clone());
                }
            }
        }
        let mut waiting = Vec::new();
        for (key, applied, exec_ref, sent) in sent {
            match sent {
                Ok(ack) => waiting.push((key, applied, exec_ref, ack)),
                Err(e) => {
                    tracing::warn!(execution = %exec_ref.arn(), error = %e, "history append failed");
                    self.evict(&key);
                    result.retry.extend(handed.remove(&key).unwrap_or_default());
                }
            }
        }
        let mut done = Vec::new();
        for (key, applied, exec_ref, ack) in waiting {
            match self.store().await_history(&exec_ref, ack).await {
                Ok(sequence) => {
                    if let Some(live) = self.live.get_mut(&key) {
                        live.last_sequence = sequence;
                        if let Some(trace) = live.trace.as_mut() {
                            trace.emit_ready();
                        }
                    }
                    done.push((key, applied));
                }
                Err(e) => {
                    tracing::warn!(execution = %exec_ref.arn(), error = %e, "history append failed");
                    self.evict(&key);
                    result.retry.extend(handed.remove(&key).unwrap_or_default());
                }
            }
        }
        let rewrites: Vec<(&String, ExecutionDescription)> = done
            .iter()
            .filter(|(key, _)| rewrite.contains(key))
            .filter_map(|(key, _)| self.live.get(key).map(|l| (key, running_description(l))))
            .collect();
        if !rewrites.is_empty() {
            let results =
                futures::future::join_all(rewrites.iter().map(|(_, d)| store.put_execution(d)))
                    .await;
            for ((key, _), r) in rewrites.iter().zip(results) {
                if let Err(e) = r {
                    tracing::warn!(execution = %key, error = %e, "cannot write the execution index");
                    not_indexed.insert((*key).clone());
                }
            }
        }
        // A recorded start without its index entry is not carried on:
        // recovery could not find it. It is dropped from memory and its start
        // handed back; the redelivery (or the reload, whichever comes first)
        // writes the entry from the history and resumes it.
        if !not_indexed.is_empty() {
            done.retain(|(key, _)| {
                if !not_indexed.contains(key) {
                    return true;
                }
                result.retry.extend(handed.remove(key).unwrap_or_default());
                false
            });
            for key in &not_indexed {
                if self.live.contains_key(key) {
                    self.evict(key);
                }
            }
        }
        // Carry out the commands of what was recorded.
        let mut follow_up: Vec<(String, Vec<Input>)> = Vec::new();
        for (key, applied) in done {
            let local = self.carry_out(&key, applied.commands).await;
            if !local.is_empty() {
                follow_up.push((key, local));
            }
        }
        let outgoing = std::mem::take(&mut self.outgoing);
        for (key, event) in self.publish_tasks(outgoing).await {
            match follow_up.iter_mut().find(|(k, _)| *k == key) {
                Some((_, inputs)) => inputs.push(Input::Local(event)),
                None => follow_up.push((key, vec![Input::Local(event)])),
            }
        }
        let completed = std::mem::take(&mut self.completed);
        self.finish_all(completed).await;
        // Results the coordinator produced itself (child starts, dispatch
        // failures): applied by the next step of the loop.
        self.follow_ups = merge_groups(std::mem::take(&mut self.follow_ups), follow_up);
        result
    }

    /// A step whose lease may have lapsed before it was written (this
    /// process was paused longer than the lease's TTL, say): another
    /// coordinator may own the partition and have loaded these executions
    /// by now, and an append of ours that won the race would leave its copy
    /// behind. Nothing is written; the executions are dropped from memory
    /// as after a failed write and their messages handed back. They are
    /// reloaded once the lease is renewed, or left to the new owner when
    /// the lease loop finds it lost.
    fn lease_lapsed(
        &mut self,
        appends: Vec<(String, Applied)>,
        handed: &mut HashMap<String, Vec<usize>>,
        result: &mut StepResult,
    ) {
        tracing::warn!(
            partition = self.partition,
            "the partition's lease may have lapsed (was this process paused?): nothing is written until it is renewed"
        );
        let keys: HashSet<String> = appends
            .into_iter()
            .map(|(key, _)| key)
            .chain(self.index_writes.drain(..).map(|(key, _)| key))
            .chain(self.index_creates.drain(..).map(|(key, _)| key))
            .collect();
        for key in keys {
            self.evict(&key);
            result.retry.extend(handed.remove(&key).unwrap_or_default());
        }
    }

    /// Applies one execution's inputs. `Ok(None)`: nothing to record.
    async fn apply_group(
        &mut self,
        key: &str,
        inputs: Vec<Input>,
    ) -> Result<Option<Applied>, String> {
        let exec_ref = ExecutionRef::from_key(key).map_err(|e| e.to_string())?;
        let mut meta_for_new = None;
        let mut extra = Vec::new();
        // A start delivered for the first time is for a new execution (the
        // API and child starts check that the name is free, the broker drops
        // repeats): no history to read. The append expects an empty history
        // and fails if there is one after all.
        let optimistic = !self.live.contains_key(key)
            && !self.reload.contains(key)
            && self.fresh_starts.contains(key);
        // Loaded from its history by this call (not held before), and
        // resumed by it.
        let mut loaded_here = false;
        let mut resumed_here = false;
        if !self.live.contains_key(key) && !optimistic {
            self.load(&exec_ref).await?;
            let dropped = self.reload.remove(key);
            loaded_here = self.live.contains_key(key);
            let running = self
                .live
                .get(key)
                .is_some_and(|l| l.exec.outcome().is_none());
            if loaded_here && (dropped || running) {
                // Dropped after a failed write, or running and held by
                // nobody (its index entry said otherwise when the partition
                // was recovered): its timers and tasks were not re-armed.
                // The tasks these messages come from are alive at their
                // participants: not published again.
                let alive: HashSet<&str> = inputs
                    .iter()
                    .filter_map(|i| match i {
                        Input::Inbox(
                            _,
                            InboxMessage::TaskSucceeded { task_id, .. }
                            | InboxMessage::TaskFailed { task_id, .. }
                            | InboxMessage::TaskHeartbeat { task_id, .. },
                        ) => Some(task_id.as_str()),
                        _ => None,
                    })
                    .collect();
                extra = self.rearm_and_republish(key, &alive).await;
                resumed_here = true;
                // Carried on with its index entry, written first.
                if let Some(live) = self.live.get(key).filter(|_| running) {
                    self.index_writes
                        .push((key.to_string(), running_description(live)));
                }
            }
        }
        let mut repeated_start = false;
        // A message from outside (a result, a callback, a stop, a redrive)
        // that changed nothing: a duplicate, or news for a newer copy of the
        // execution than the one held (see the end).
        let mut unanswered = false;
        // A stop for an execution without a history: its start may be
        // waiting in the inbox still (handed back for a retry).
        let mut stop_before_start = false;
        // Starts first: whatever else came for the execution in this group
        // (a stop sent right after it) applies to it, not to nothing.
        let mut inputs: Vec<Input> = inputs.into_iter().chain(extra).collect();
        inputs.sort_by_key(|i| !matches!(i, Input::Inbox(_, InboxMessage::StartExecution(_))));
        let group_has_start = matches!(
            inputs.first(),
            Some(Input::Inbox(_, InboxMessage::StartExecution(_)))
        );
        let mut entries = Vec::new();
        let mut commands = Vec::new();
        let expected = match self.live.get(key) {
            Some(l) => l.last_sequence,
            None => self.unfinished_first_steps.remove(key).unwrap_or(0),
        };
        for input in inputs {
            let t = now();
            let outside = matches!(input, Input::Inbox(..));
            let event = match input {
                Input::Inbox(_, InboxMessage::StartExecution(start)) => {
                    if self.live.contains_key(key) {
                        // A duplicate start. If nobody held the execution,
                        // the first delivery's owner may have died after its
                        // history append and before its index entry, task
                        // messages or timers: reloading it (below) writes
                        // the entry from the history and resumes it.
                        repeated_start |= loaded_here;
                        continue;
                    }
                    match self.new_execution(&exec_ref, &start, t, optimistic).await {
                        Ok((event, meta)) => {
                            meta_for_new = Some(meta);
                            event
                        }
                        Err(MachineError::Unusable(e)) => {
                            tracing::warn!(execution = %start.execution_arn, error = %e, "cannot start an execution");
                            continue;
                        }
                        // The start is handed back and comes again: its
                        // sender was told it started.
                        Err(MachineError::Unreadable(e)) => {
                            return Err(format!("cannot read the state machine: {e}"));
                        }
                    }
                }
                Input::Inbox(_, InboxMessage::TaskHeartbeat { task_id, .. }) => {
                    self.heartbeat(key, &task_id);
                    continue;
                }
                Input::Inbox(
                    _,
                    InboxMessage::TaskSucceeded {
                        task_id,
                        output,
                        callback,
                        ..
                    },
                ) => {
                    let Some(pending) = self.live.get(key).and_then(|l| l.pending.get(&task_id))
                    else {
                        // Unknown or already answered.
                        unanswered = true;
                        continue;
                    };
                    if pending.pattern == Pattern::WaitForTaskToken && !callback {
                        // The participant took the token; the result comes
                        // through SendTaskSuccess.
                        continue;
                    }
                    if let Shape::ChildSync { .. } = pending.shape {
                        // A child's report, held to the limits in the shape
                        // the task returns it (`.sync` gives its input and
                        // output as text), as the embedded runtime does.
                        let state = pending.request.state_name.clone();
                        let shaped = shape_output(pending.shape, output, "");
                        match sagaflow_participant::within_limit(
                            Ok(shaped),
                            &state,
                            self.shared.options.runtime.max_payload_bytes,
                        ) {
                            Ok(output) => Event::TaskSucceeded { task_id, output },
                            Err(e) => Event::TaskFailed {
                                task_id,
                                error: e.error,
                                cause: e.cause,
                            },
                        }
                    } else if sagaflow_asl::interp::too_deeply_nested(&output) {
                        // Recorded, it would make the history unreadable.
                        let state = pending.request.state_name.clone();
                        Event::TaskFailed {
                            task_id,
                            error: sagaflow_asl::errors::DATA_LIMIT_EXCEEDED.to_string(),
                            cause: format!(
                                "The state/task '{state}' returned a result nested more than {} levels deep.",
                                sagaflow_asl::interp::MAX_DEPTH
                            ),
                        }
                    } else {
                        let request_id = format!("{}/{task_id}", exec_ref.arn());
                        let output = shape_output(pending.shape, output, &request_id);
                        Event::TaskSucceeded { task_id, output }
                    }
                }
                Input::Inbox(
                    _,
                    InboxMessage::TaskFailed {
                        task_id,
                        error,
                        cause,
                        ..
                    },
                ) => {
                    // A `.sync` child's failure carries its report as the
                    // cause, in `.sync:2`'s shape.
                    // Shaped, then held to AWS's limit on a cause (as the
                    // embedded runtime does).
                    let shape = self
                        .live
                        .get(key)
                        .and_then(|l| l.pending.get(&task_id))
                        .map(|p| p.shape);
                    let cause = match shape {
                        Some(Shape::ChildSync { v2: false }) => {
                            match serde_json::from_str::<Value>(&cause) {
                                Ok(mut report @ Value::Object(_)) => {
                                    resource::sync_v1(&mut report);
                                    resource::cut_cause(report.to_string())
                                }
                                _ => resource::cut_cause(cause),
                            }
                        }
                        Some(Shape::ChildSync { v2: true }) => resource::cut_cause(cause),
                        _ => cause,
                    };
                    Event::TaskFailed {
                        task_id,
                        error,
                        cause,
                    }
                }
                Input::Inbox(
                    _,
                    InboxMessage::StopExecution {
                        error,
                        cause,
                        parent,
                        redrive_count,
                        ..
                    },
                ) => {
                    // A parent's stop is for the child its task started,
                    // not for a later execution of the same name.
                    if let Some(from) = parent
                        && self
                            .live
                            .get(key)
                            .is_some_and(|l| l.meta.parent.as_ref() != Some(&from))
                    {
                        continue;
                    }
                    // A stop is for the run it was asked for, not for a
                    // later one (a redrive made after it ended).
                    if let Some(run) = redrive_count
                        && self.live.get(key).is_some_and(|l| l.redrive_count != run)
                    {
                        unanswered = true;
                        continue;
                    }
                    Event::StopRequested { error, cause }
                }
                Input::Inbox(
                    _,
                    InboxMessage::RedriveExecution {
                        redrive_count: Some(count),
                        ..
                    },
                ) if self.live.get(key).is_some_and(|l| l.redrive_count != count) => {
                    // Asked for another run than the one held: a redelivery
                    // of a redrive applied already (a later run), or news
                    // for a newer copy than this one (checked below, as for
                    // any message that changes nothing).
                    unanswered = true;
                    continue;
                }
                Input::Inbox(_, InboxMessage::RedriveExecution { .. }) => Event::RedriveRequested,
                Input::Timer(timer_id) => Event::TimerFired { timer_id },
                Input::HeartbeatExpired(task_id) => {
                    let seconds = self
                        .live
                        .get(key)
                        .and_then(|l| l.pending.get(&task_id))
                        .and_then(|p| p.request.heartbeat_seconds)
                        .unwrap_or(0);
                    Event::TaskFailed {
                        task_id,
                        error: sagaflow_asl::errors::HEARTBEAT_TIMEOUT.to_string(),
                        cause: format!("no heartbeat received for {seconds} seconds"),
                    }
                }
                Input::Local(event) => event,
            };
            let Some(live) = self.live.get_mut(key) else {
                stop_before_start |= outside && matches!(event, Event::StopRequested { .. });
                continue;
            };
            let mut out = Vec::new();
            match apply_guarded(&mut live.exec, t, event.clone(), &mut out) {
                Ok(Ok(())) => {}
                Ok(Err(e)) => {
                    tracing::warn!(execution = %exec_ref.arn(), error = %e, "event rejected");
                    unanswered |= outside;
                    continue;
                }
                // A defect of the interpreter: this execution's events are
                // handed back (and it is evicted), the partition goes on.
                Err(panic) => {
                    tracing::error!(execution = %exec_ref.arn(), panic = %panic, "the interpreter panicked");
                    return Err(format!("the interpreter panicked: {panic}"));
                }
            }
            if out.is_empty() {
                // A late or duplicate answer: nothing happened.
                unanswered |= outside;
                continue;
            }
            if let Some(trace) = live.trace.as_mut() {
                // Queued; emitted once the step is stored.
                trace.observe(t, &event, &out, true);
            }
            track(live, &out, key, &mut self.wheel);
            if out.iter().any(|c| matches!(c, Command::Complete(_))) {
                live.completed_at = Some(t);
            }
            if matches!(event, Event::RedriveRequested) && live.exec.outcome().is_none() {
                // Running again: index first, as for a start.
                self.index_writes
                    .push((key.to_string(), running_description(live)));
            }
            entries.push(HistoryEntry {
                at: t,
                item: HistoryItem::Event(event),
            });
            for c in &out {
                entries.push(HistoryEntry {
                    at: t,
                    item: HistoryItem::Command(c.clone()),
                });
            }
            commands.extend(out);
        }
        if repeated_start {
            match self.live.get(key) {
                // Its index entry is written (above, when it was resumed).
                Some(live) if resumed_here && live.exec.outcome().is_none() => {}
                _ => {
                    self.reload.insert(key.to_string());
                }
            }
        }
        // (A start in this group was applied, or refused for good and acked
        // with the stop: nothing to wait for.)
        if entries.is_empty()
            && stop_before_start
            && !group_has_start
            && self.start_queued(&exec_ref).await?
        {
            // Applied to nothing it would be lost: it goes after the start.
            return Err("a stop came before its execution's start: handed back".to_string());
        }
        if entries.is_empty() && unanswered && !loaded_here {
            // The copy held may be stale: another coordinator that held the
            // partition meanwhile (a lease that lapsed) may have advanced
            // the execution, and this message may be news for that newer
            // state (a result of a task this copy never scheduled). Acked
            // here it would be lost; so unless the copy is current, it is
            // dropped and the message handed back, to meet the reloaded
            // history.
            if let Some(held) = self.live.get(key).map(|l| l.last_sequence) {
                let stored = self
                    .store()
                    .history_last_sequence(&exec_ref)
                    .await
                    .map_err(|e| e.to_string())?;
                if stored != held {
                    return Err(format!(
                        "the copy held is stale (history at {stored}, held at {held}): reloading"
                    ));
                }
            }
        }
        if entries.is_empty() {
            // A late or duplicate message loaded a completed execution:
            // nothing to do, nothing to keep in memory.
            if self
                .live
                .get(key)
                .is_some_and(|l| l.exec.outcome().is_some())
            {
                self.live.remove(key);
            }
            return Ok(None);
        }
        Ok(Some(Applied {
            expected,
            batch: HistoryBatch {
                meta: meta_for_new,
                entries,
                part: None,
            },
            commands,
        }))
    }

    /// Whether the oldest message of an execution's inbox is its start (one
    /// handed back, to be tried again); an error when the inbox could not
    /// be read (the caller hands its messages back rather than guess).
    async fn start_queued(&self, exec_ref: &ExecutionRef) -> Result<bool, String> {
        let infra = self.store().infra();
        let subject = infra.ns().inbox_subject(self.partition, exec_ref);
        let first = match infra
            .inbox
            .get_first_raw_message_by_subject(subject.as_str(), 1)
            .await
        {
            Ok(first) => first,
            Err(e)
                if e.kind()
                    == async_nats::jetstream::stream::RawMessageErrorKind::NoMessageFound =>
            {
                return Ok(false);
            }
            Err(e) => return Err(format!("cannot read the inbox: {e}")),
        };
        Ok(matches!(
            serde_json::from_slice::<InboxMessage>(&first.payload),
            Ok(InboxMessage::StartExecution(start)) if start.execution_arn == exec_ref.arn()
        ))
    }

    async fn new_execution(
        &mut self,
        exec_ref: &ExecutionRef,
        start: &StartExecution,
        t: Timestamp,
        optimistic: bool,
    ) -> Result<(Event, ExecutionMeta), MachineError> {
        let machine = self
            .shared
            .machine(exec_ref.state_machine(), start.version)
            .await?;
        let trace = ExecutionTrace::start(
            &exec_ref.arn(),
            exec_ref.state_machine(),
            start.traceparent.as_deref(),
        );
        let meta = ExecutionMeta {
            state_machine: exec_ref.state_machine().to_string(),
            version: start.version,
            traceparent: start.traceparent.clone(),
            execution_span: trace.as_ref().map(ExecutionTrace::traceparent),
            parent: start.parent.clone(),
        };
        let desc = ExecutionDescription {
            execution_arn: exec_ref.arn(),
            name: exec_ref.name().to_string(),
            state_machine: exec_ref.state_machine().to_string(),
            version: start.version,
            status: ExecutionStatus::Running,
            start_date: rfc3339(t),
            stop_date: None,
            input: None,
            output: None,
            error: None,
            cause: None,
            redrive_count: 0,
            trace_id: trace.as_ref().map(ExecutionTrace::trace_id),
        };
        // Recovery finds executions through the index. A first delivery
        // creates the entry together with the history append (if the
        // coordinator dies in between, the start is redelivered and its
        // redelivery puts the entry right, see `Partition::apply_group`);
        // a redelivery writes it before the append.
        if optimistic {
            self.index_creates.push((exec_ref.key(), desc));
        } else {
            self.index_writes.push((exec_ref.key(), desc));
        }
        let mut live = Live::new(
            exec_ref.clone(),
            Route::new(exec_ref, self.store()),
            Execution::new(machine, self.shared.options.runtime.interp_options()),
            meta.clone(),
            t,
            start.input.clone(),
        );
        live.trace = trace;
        self.live.insert(exec_ref.key(), live);
        let event = Event::ExecutionStarted {
            info: ExecutionInfo {
                execution_id: exec_ref.arn(),
                execution_name: exec_ref.name().to_string(),
                state_machine_id: state_machine_arn(exec_ref.state_machine()),
                state_machine_name: exec_ref.state_machine().to_string(),
                role_arn: String::new(),
                seed: start.seed,
                rules: sagaflow_asl::interp::RULES,
            },
            input: start.input.clone(),
        };
        Ok((event, meta))
    }

    fn heartbeat(&mut self, key: &str, task_id: &str) {
        let Some(live) = self.live.get_mut(key) else {
            return;
        };
        let Some(seconds) = live
            .pending
            .get(task_id)
            .and_then(|p| p.request.heartbeat_seconds)
        else {
            return;
        };
        let deadline = after_seconds(now(), seconds);
        // The deadline this one replaces leaves the wheel: a task heartbeated
        // often keeps one entry, not one per heartbeat.
        if let Some(old) = live.heartbeats.insert(task_id.to_string(), deadline) {
            self.wheel
                .remove(&(old, key.to_string(), Due::Heartbeat(task_id.to_string())));
        }
        self.wheel.insert(
            (
                deadline,
                key.to_string(),
                Due::Heartbeat(task_id.to_string()),
            ),
            (),
        );
    }

    /// Carries out recorded commands. Returns results made locally.
    async fn carry_out(&mut self, key: &str, commands: Vec<Command>) -> Vec<Input> {
        let mut local = Vec::new();
        let mut publishes = Vec::new();
        let children = self
            .live
            .get_mut(key)
            .map(|l| std::mem::take(&mut l.stop_children))
            .unwrap_or_default();
        self.stop_children(key, children).await;
        for command in commands {
            match command {
                Command::ScheduleTask(request) => {
                    let Some(live) = self.live.get(key) else {
                        continue;
                    };
                    let Some(pending) = live.pending.get(&*request.task_id) else {
                        continue;
                    };
                    let in_coordinator = match &pending.message {
                        Some(message) => {
                            publishes.push(message.clone());
                            None
                        }
                        None => Some(pending.clone()),
                    };
                    if request.heartbeat_seconds.is_some() {
                        self.heartbeat(key, &request.task_id);
                    }
                    if let Some(pending) = in_coordinator
                        && let Some(event) = self.dispatch_in_coordinator(key, &pending).await
                    {
                        local.push(Input::Local(event));
                    }
                }
                Command::StartTimer {
                    timer_id, fire_at, ..
                } => {
                    // Unless it was cancelled in the same step.
                    let armed = self
                        .live
                        .get(key)
                        .and_then(|l| l.timers.get(&timer_id))
                        .is_some_and(|at| *at == fire_at);
                    if armed {
                        self.wheel
                            .insert((fire_at, key.to_string(), Due::Timer(timer_id)), ());
                    }
                }
                Command::CancelTimer { .. } | Command::CancelTask { .. } | Command::Record(_) => {}
                Command::Complete(outcome) => {
                    self.completed.push((key.to_string(), outcome));
                }
            }
        }
        for message in publishes {
            self.outgoing.push((key.to_string(), message));
        }
        local
    }

    /// A task no participant serves: `states:startExecution` starts a child
    /// (again, after a restart: the child's start is de-duplicated by name);
    /// anything else no handler can serve fails with `States.Runtime`, as in
    /// embedded mode. Returns the event to apply, if one is known at once.
    /// A child that cannot be started now (NATS away) is not a failure of
    /// the task: the execution is reloaded and resumed later, which tries
    /// again (the child's start is de-duplicated by name).
    async fn dispatch_in_coordinator(&mut self, key: &str, pending: &Pending) -> Option<Event> {
        let request = &pending.request;
        if resource::same_integration(
            resource::strip_pattern(&request.resource).0,
            START_EXECUTION,
        ) {
            return match self.start_child(key, request, pending).await {
                Ok(event) => event,
                Err(e) => {
                    tracing::warn!(execution = %key, task = %request.task_id, error = %e, "cannot start a child execution now; trying again shortly");
                    self.reload.insert(key.to_string());
                    None
                }
            };
        }
        Some(Event::TaskFailed {
            task_id: request.task_id.to_string(),
            error: sagaflow_asl::errors::RUNTIME.to_string(),
            cause: match resource::resolve(&request.resource, &request.input) {
                Err(e) => e.to_string(),
                Ok(r) => format!(
                    "state '{}': no valid handler name for resource '{}' (tried: {})",
                    request.state_name,
                    request.resource,
                    r.candidates.join(", ")
                ),
            },
        })
    }

    /// Publishes one task (see [`Partition::publish_tasks`]).
    async fn publish_task(&mut self, key: &str, message: &Arc<TaskMessage>) -> Result<(), Event> {
        match self
            .publish_tasks(vec![(key.to_string(), message.clone())])
            .await
            .pop()
        {
            Some((_, event)) => Err(event),
            None => Ok(()),
        }
    }

    /// Publishes tasks, all sent before any acknowledgement is awaited. A
    /// task that can never be published (too large) comes back as its
    /// failure event; one that could not be published now (NATS down) puts
    /// its execution on the reload list, which publishes it again (same
    /// `Nats-Msg-Id`: the broker drops it if it had arrived after all).
    async fn publish_tasks(
        &mut self,
        items: Vec<(String, Arc<TaskMessage>)>,
    ) -> Vec<(String, Event)> {
        let store = self.shared.store.clone();
        let infra = store.infra();
        let max = infra.message_limit();
        let mut failed = Vec::new();
        let mut acks = Vec::with_capacity(items.len());
        for (key, message) in items {
            let body = match serde_json::to_vec(&message) {
                Ok(b) => b,
                Err(e) => {
                    failed.push((
                        key,
                        Event::TaskFailed {
                            task_id: message.task_id.clone(),
                            error: sagaflow_asl::errors::RUNTIME.to_string(),
                            cause: format!("the task message does not encode: {e}"),
                        },
                    ));
                    continue;
                }
            };
            if body.len() > max {
                failed.push((
                    key,
                    Event::TaskFailed {
                        task_id: message.task_id.clone(),
                        error: sagaflow_asl::errors::DATA_LIMIT_EXCEEDED.to_string(),
                        cause: format!(
                            "the task message is {} bytes, more than the {max} bytes a message may have",
                            body.len()
                        ),
                    },
                ));
                continue;
            }
            let mut hdrs = async_nats::HeaderMap::new();
            hdrs.insert(headers::MSG_ID, message.msg_id(&key).as_str());
            hdrs.insert(headers::TASK_ID, message.task_id.as_str());
            // The participant's handler span hangs under the task's span.
            if let Some(trace) = self.live.get(&key).and_then(|l| l.trace.as_ref()) {
                trace.inject_task(&message.task_id, &mut hdrs);
            }
            let subject = infra.ns().task_subject(&message.handler);
            match infra
                .js
                .publish_with_headers(subject, hdrs, body.into())
                .await
            {
                Ok(ack) => acks.push((key, message.task_id.clone(), ack)),
                Err(e) => {
                    tracing::warn!(task = %message.task_id, error = %e, "task publish failed; publishing it again shortly");
                    self.reload.insert(key);
                }
            }
        }
        if !acks.is_empty() {
            // Acknowledgements are awaited beside the loop: a failed one
            // puts its execution on the reload list.
            self.beside_loop(async move {
                let mut failed = Vec::new();
                for (key, task_id, ack) in acks {
                    if let Err(e) = ack.await {
                        tracing::warn!(task = %task_id, error = %e, "task publish failed; publishing it again shortly");
                        failed.push(key);
                    }
                }
                failed
            });
        }
        failed
    }

    /// `states:startExecution`: starts the child; for request-response the
    /// task's result is known at once.
    async fn start_child(
        &self,
        key: &str,
        request: &TaskRequest,
        pending: &Pending,
    ) -> Result<Option<Event>, String> {
        let Some(live) = self.live.get(key) else {
            return Ok(None);
        };
        let fail = |cause: String| {
            Ok(Some(Event::TaskFailed {
                task_id: request.task_id.to_string(),
                error: "States.TaskFailed".to_string(),
                cause,
            }))
        };
        let refused = |e: resource::ChildError| {
            Ok(Some(Event::TaskFailed {
                task_id: request.task_id.to_string(),
                error: e.error.to_string(),
                cause: e.cause,
            }))
        };
        let input = &request.input;
        let child = match child_ref(&live.exec_ref, request) {
            Ok(c) => c,
            Err(e) => return refused(e),
        };
        let machine = child.state_machine();
        let child_input = match resource::child_input(input) {
            Ok(v) => v,
            Err(e) => return refused(e),
        };
        // A name already taken (AWS: ExecutionAlreadyExists): its start
        // would be dropped as a duplicate and a .sync task would wait forever.
        // Unless the child is this task's own, started before a restart: a
        // derived name is ours by construction; for a given name, the child
        // records its parent task (`.sync`), or has the same input (a
        // request-response start is idempotent, as AWS's StartExecution).
        // Whether the child is indexed (and found to be this task's own).
        let indexed = match self.store().execution(&child).await {
            Ok(None) => false,
            Ok(Some(_)) => {
                let ours = if input.get("Name").is_none() {
                    true
                } else {
                    match self.store().read_history(&child).await {
                        Ok(h) => h.batches.first().is_some_and(|b| {
                            let started_input = b.entries.iter().find_map(|e| match &e.item {
                                HistoryItem::Event(Event::ExecutionStarted { input, .. }) => {
                                    Some(input)
                                }
                                _ => None,
                            });
                            match (
                                &pending.shape,
                                b.meta.as_ref().and_then(|m| m.parent.as_ref()),
                            ) {
                                (Shape::ChildSync { .. }, Some(p)) => {
                                    p.execution_arn == live.exec_ref.arn()
                                        && p.task_id == *request.task_id
                                }
                                (Shape::ChildSync { .. }, None) => false,
                                (_, _) => started_input == Some(&child_input),
                            }
                        }),
                        Err(e) => return Err(e.to_string()),
                    }
                };
                if !ours {
                    return Ok(Some(Event::TaskFailed {
                        task_id: request.task_id.to_string(),
                        error: "StepFunctions.ExecutionAlreadyExistsException".to_string(),
                        cause: format!("execution {} already exists", child.arn()),
                    }));
                }
                true
            }
            Err(e) => return Err(e.to_string()),
        };
        if !indexed && let Err(e) = resource::check_new_child_input(&child_input) {
            return refused(e);
        }
        let version = match self.store().machine(machine, None).await {
            Ok(Some(v)) => v.version,
            Ok(None) => return fail(format!("state machine {machine} does not exist")),
            Err(e) => return Err(e.to_string()),
        };
        let start = InboxMessage::StartExecution(StartExecution {
            execution_arn: child.arn(),
            version,
            input: child_input,
            // Keyed by the parent's seed: its tokens cannot be worked out.
            seed: live.exec.child_seed(&request.task_id),
            // The child's trace hangs under this task's span (else the
            // caller's context is passed on).
            traceparent: live
                .trace
                .as_ref()
                .and_then(|t| t.task_traceparent(&request.task_id))
                .or_else(|| live.meta.traceparent.clone()),
            parent: match pending.shape {
                Shape::ChildSync { .. } => Some(ParentTask {
                    execution_arn: live.exec_ref.arn(),
                    task_id: request.task_id.to_string(),
                }),
                _ => None,
            },
        });
        let infra = self.store().infra();
        let subject = infra
            .ns()
            .inbox_subject(self.store().partition_of(&child), &child);
        let mut hdrs = async_nats::HeaderMap::new();
        hdrs.insert(headers::MSG_ID, format!("start/{}", child.key()).as_str());
        let body = match serde_json::to_vec(&start) {
            Ok(body) => body,
            Err(e) => return fail(format!("the child's start does not encode: {e}")),
        };
        // Stored, or not known to be: a repeat is dropped by name.
        let stored = match infra
            .js
            .publish_with_headers(subject.clone(), hdrs, body.into())
            .await
        {
            Ok(ack) => ack.await.map_err(|e| e.to_string()),
            Err(e) => Err(e.to_string()),
        };
        let stored = stored.map_err(|e| format!("cannot start {}: {e}", child.arn()))?;
        if stored.duplicate && !indexed {
            // A start of that name is already waiting in the inbox (not yet
            // indexed, so the check above missed it): this task's own,
            // published before a restart, or another one's (two tasks
            // naming the same child in one step, or an API start), whose
            // child would never answer this task. (Not found: it was taken
            // meanwhile, and the index check decides when this is tried
            // again.)
            let queued = infra
                .inbox
                .get_last_raw_message_by_subject(subject.as_str())
                .await
                .ok()
                .and_then(|m| serde_json::from_slice::<InboxMessage>(&m.payload).ok());
            let InboxMessage::StartExecution(queued) = queued.ok_or_else(|| {
                format!(
                    "the start of {} is being processed: looked at again later",
                    child.arn()
                )
            })?
            else {
                return Err(format!(
                    "the start of {} is being processed: looked at again later",
                    child.arn()
                ));
            };
            let ours = match &pending.shape {
                Shape::ChildSync { .. } => queued.parent.as_ref().is_some_and(|p| {
                    p.execution_arn == live.exec_ref.arn() && p.task_id == *request.task_id
                }),
                _ => match &start {
                    InboxMessage::StartExecution(mine) => queued.input == mine.input,
                    _ => false,
                },
            };
            if !ours {
                return Ok(Some(Event::TaskFailed {
                    task_id: request.task_id.to_string(),
                    error: "StepFunctions.ExecutionAlreadyExistsException".to_string(),
                    cause: format!("execution {} already exists", child.arn()),
                }));
            }
        }
        Ok(match pending.shape {
            // `.sync`: the child's end answers; `.waitForTaskToken`: the
            // callback with the token the child was given does.
            Shape::ChildSync { .. } => None,
            _ if pending.pattern == Pattern::WaitForTaskToken => None,
            _ => Some(Event::TaskSucceeded {
                task_id: request.task_id.to_string(),
                output: json!({"ExecutionArn": child.arn(), "StartDate": rfc3339(now())}),
            }),
        })
    }

    /// Sends the stops of `parent_key`'s `.sync` children at once (a Map of
    /// many children stopped together is one round trip, not one each);
    /// those that could not be sent are kept to be sent again.
    async fn stop_children(&mut self, parent_key: &str, children: Vec<(ExecutionRef, String)>) {
        if children.is_empty() {
            return;
        }
        let sent = futures::future::join_all(
            children
                .iter()
                .map(|(child, task_id)| self.stop_child(parent_key, child, task_id)),
        )
        .await;
        for ((child, task_id), sent) in children.into_iter().zip(sent) {
            if !sent {
                self.child_stop_failed(parent_key.to_string(), child, task_id);
            }
        }
    }

    /// Asks a `.sync` child to stop (its parent no longer waits for it).
    /// Best effort: a child that has ended ignores it, and a failure is
    /// logged (the child then runs to its end, and its report to the parent
    /// is ignored).
    /// Tells a `.sync` child its parent no longer waits for it; `false` when
    /// the stop could not be stored (tried again later).
    async fn stop_child(&self, parent_key: &str, child: &ExecutionRef, task_id: &str) -> bool {
        let parent_arn = ExecutionRef::from_key(parent_key)
            .map(|p| p.arn())
            .unwrap_or_default();
        let stop = InboxMessage::StopExecution {
            execution_arn: child.arn(),
            error: Some("States.Aborted".to_string()),
            cause: Some("the parent execution no longer waits for this execution".to_string()),
            parent: Some(ParentTask {
                execution_arn: parent_arn,
                task_id: task_id.to_string(),
            }),
            // The run the parent started: a redrive of the child (by a
            // user, once the parent stopped waiting for it) is not stopped
            // by a stop sent again later.
            redrive_count: Some(0),
        };
        let infra = self.store().infra();
        let subject = infra
            .ns()
            .inbox_subject(self.store().partition_of(child), child);
        let mut hdrs = async_nats::HeaderMap::new();
        hdrs.insert(
            headers::MSG_ID,
            format!("stop-child/{}/{parent_key}", child.key()).as_str(),
        );
        let Ok(body) = serde_json::to_vec(&stop) else {
            return true;
        };
        let sent = match infra
            .js
            .publish_with_headers(subject, hdrs, body.into())
            .await
        {
            Ok(ack) => ack.await.map(|_| ()).map_err(|e| e.to_string()),
            Err(e) => Err(e.to_string()),
        };
        match sent {
            Ok(()) => true,
            Err(e) => {
                tracing::warn!(child = %child.arn(), error = %e, "cannot stop a child execution; trying again later");
                false
            }
        }
    }

    /// Keeps a stop that could not be sent, once.
    fn child_stop_failed(&mut self, parent: String, child: ExecutionRef, task_id: String) {
        let stop = (parent, child, task_id);
        if !self.failed_child_stops.contains(&stop) {
            self.failed_child_stops.push(stop);
        }
    }

    /// Sends again the stops to `.sync` children that could not be sent (a
    /// parent that stays as it is, or has ended, is not loaded again to
    /// send them).
    async fn retry_child_stops(&mut self) {
        for (parent, child, task_id) in std::mem::take(&mut self.failed_child_stops) {
            if !self.stop_child(&parent, &child, &task_id).await {
                self.failed_child_stops.push((parent, child, task_id));
            }
        }
    }

    /// An execution completed: update its index entry, tell waiters and a
    /// waiting parent, drop it from memory.
    async fn finish(&mut self, key: &str, outcome: &Outcome) {
        self.finish_all(vec![(key.to_string(), outcome.clone())])
            .await;
    }

    /// [`Partition::finish`] for several executions, their writes done
    /// together.
    async fn finish_all(&mut self, completed: Vec<(String, Outcome)>) {
        let mut finished = Vec::new();
        for (key, outcome) in completed {
            if let Some(f) = self.prepare_finish(&key, &outcome) {
                finished.push(f);
            }
        }
        if finished.is_empty() {
            return;
        }
        // Written beside the loop: the history already holds the outcome.
        // A completion that could not be written is written again by the
        // reload, which finds the execution completed (and by a new owner's
        // recovery, which finds its index entry still running).
        let store = self.shared.store.clone();
        let lease = self.lease.clone();
        self.beside_loop(async move {
            let results =
                futures::future::join_all(finished.iter().map(|f| deliver(&store, &lease, f)))
                    .await;
            finished
                .into_iter()
                .zip(results)
                .filter(|(_, ok)| !ok)
                .map(|(f, _)| f.key)
                .collect()
        });
    }

    fn prepare_finish(&mut self, key: &str, outcome: &Outcome) -> Option<Finished> {
        let live = self.live.remove(key)?;
        if let Some(finished) = self.finished_while_listing.as_mut() {
            finished.insert(key.to_string());
        }
        unarm(&mut self.wheel, key, &live);
        let (status, output, error, cause) = match outcome {
            Outcome::Succeeded { output } => (
                ExecutionStatus::Succeeded,
                Some(Value::clone(output)),
                None,
                None,
            ),
            Outcome::Failed { error, cause } => (
                ExecutionStatus::Failed,
                None,
                Some(error.clone()).filter(|e| !e.is_empty()),
                Some(cause.clone()).filter(|c| !c.is_empty()),
            ),
            Outcome::TimedOut { error, cause } => (
                ExecutionStatus::TimedOut,
                None,
                Some(error.clone()),
                Some(cause.clone()),
            ),
            Outcome::Aborted { error, cause } => {
                (ExecutionStatus::Aborted, None, error.clone(), cause.clone())
            }
        };
        let desc = ExecutionDescription {
            execution_arn: live.exec_ref.arn(),
            name: live.exec_ref.name().to_string(),
            state_machine: live.meta.state_machine.clone(),
            version: live.meta.version,
            status,
            start_date: rfc3339(live.start),
            stop_date: Some(rfc3339(live.completed_at.unwrap_or_else(now))),
            input: None,
            output: None,
            error: error.clone(),
            cause: cause.clone(),
            redrive_count: live.redrive_count,
            trace_id: trace_id_of(&live.meta),
        };
        let infra = self.shared.store.infra();
        let mut full = desc.clone();
        full.input = Some(live.input.clone());
        full.output = output.clone();
        let done = (
            infra.ns().done_subject(&live.exec_ref),
            serde_json::to_vec(&full).unwrap_or_default(),
        );
        let parent = live.meta.parent.as_ref().and_then(|parent| {
            // `.sync:2`'s shape; the parent turns `Output` into a string
            // for `.sync` (see `shape_output`).
            let succeeded = status == ExecutionStatus::Succeeded && output.is_some();
            let report = resource::child_report(
                &desc.execution_arn,
                &live.input,
                &desc.name,
                &desc.start_date,
                &desc.state_machine,
                status.as_str(),
                desc.stop_date.as_deref(),
                match &output {
                    Some(o) if succeeded => Ok(o),
                    _ => Err((error.as_deref(), cause.as_deref())),
                },
                true,
            );
            let limit = self.shared.store.infra().message_limit();
            let report_bytes = if succeeded {
                serde_json::to_vec(&report).map_or(usize::MAX, |r| r.len())
            } else {
                0
            };
            let message = if succeeded && report_bytes.saturating_add(REPORT_ENVELOPE_ROOM) > limit
            {
                // Its input and output together are more than a message
                // holds (payload limits raised near the message size): the
                // parent's task fails as one whose result is too large,
                // rather than the report being refused for ever.
                InboxMessage::TaskFailed {
                    execution_arn: parent.execution_arn.clone(),
                    task_id: parent.task_id.clone(),
                    error: sagaflow_asl::errors::DATA_LIMIT_EXCEEDED.to_string(),
                    cause: format!(
                        "the report of child execution {} (its input and output) is {report_bytes} \
                         bytes, more than a message holds ({limit} bytes)",
                        desc.execution_arn
                    ),
                    callback: false,
                }
            } else if succeeded {
                InboxMessage::TaskSucceeded {
                    execution_arn: parent.execution_arn.clone(),
                    task_id: parent.task_id.clone(),
                    output: report,
                    callback: false,
                }
            } else {
                // The whole report when it fits in a message (the parent
                // shapes it, then cuts it to AWS's limit on a cause); cut
                // here already when it would not.
                let whole = report.to_string();
                let encoded = serde_json::to_string(&whole).map_or(usize::MAX, |e| e.len());
                let cause = if encoded.saturating_add(REPORT_ENVELOPE_ROOM)
                    > self.shared.store.infra().message_limit()
                {
                    resource::cut_cause(whole)
                } else {
                    whole
                };
                InboxMessage::TaskFailed {
                    execution_arn: parent.execution_arn.clone(),
                    task_id: parent.task_id.clone(),
                    error: "States.TaskFailed".to_string(),
                    cause,
                    callback: false,
                }
            };
            let parent_ref = ExecutionRef::from_arn(&parent.execution_arn).ok()?;
            let subject = infra
                .ns()
                .inbox_subject(self.shared.store.partition_of(&parent_ref), &parent_ref);
            let msg_id = format!("child/{}/{}", parent_ref.key(), parent.task_id);
            Some((subject, msg_id, serde_json::to_vec(&message).ok()?))
        });
        Some(Finished {
            key: key.to_string(),
            desc,
            done,
            parent,
        })
    }
}

/// Bytes of a message kept for a child's report envelope (ids, headers).
const REPORT_ENVELOPE_ROOM: usize = 8 * 1024;

/// What announcing a completed execution writes.
struct Finished {
    key: String,
    desc: ExecutionDescription,
    /// The completion notice (core NATS): subject and body.
    done: (String, Vec<u8>),
    /// The result for a waiting parent: subject, `Nats-Msg-Id`, body.
    parent: Option<(String, String, Vec<u8>)>,
}

/// Writes a completion: the parent's result first (a crash after it only
/// repeats it, and the broker drops the repeat by `Nats-Msg-Id`), then the
/// index entry (which takes the execution out of recovery), then the notice.
/// `false` when something could not be written (retried later), or when
/// the partition's lease may have lapsed before the index entry was
/// written (a stale owner's late entry could hide a redrive made
/// meanwhile by the new owner).
async fn deliver(store: &Store, lease: &LeaseTerm, f: &Finished) -> bool {
    let infra = store.infra();
    if let Some((subject, msg_id, body)) = &f.parent {
        let mut hdrs = async_nats::HeaderMap::new();
        hdrs.insert(headers::MSG_ID, msg_id.as_str());
        match infra
            .js
            .publish_with_headers(subject.clone(), hdrs, body.clone().into())
            .await
        {
            Ok(ack) => {
                if let Err(e) = ack.await {
                    tracing::warn!(execution = %f.desc.execution_arn, error = %e, "cannot report to the parent execution; retrying");
                    return false;
                }
            }
            Err(e) => {
                tracing::warn!(execution = %f.desc.execution_arn, error = %e, "cannot report to the parent execution; retrying");
                return false;
            }
        }
    }
    if !lease.holds() {
        tracing::warn!(execution = %f.desc.execution_arn, "the partition's lease may have lapsed: its index entry is written later (or by the new owner)");
        return false;
    }
    if let Err(e) = store.put_execution(&f.desc).await {
        tracing::warn!(execution = %f.desc.execution_arn, error = %e, "cannot update the execution index; retrying");
        return false;
    }
    let _ = infra
        .client
        .publish(f.done.0.clone(), f.done.1.clone().into())
        .await;
    true
}

#[derive(Default)]
struct StepResult {
    /// Inbox messages (by index in the batch) to hand back.
    retry: HashSet<usize>,
}

struct Applied {
    expected: u64,
    batch: HistoryBatch,
    commands: Vec<Command>,
}

/// The index entry of a running execution.
fn running_description(live: &Live) -> ExecutionDescription {
    ExecutionDescription {
        execution_arn: live.exec_ref.arn(),
        name: live.exec_ref.name().to_string(),
        state_machine: live.meta.state_machine.clone(),
        version: live.meta.version,
        status: ExecutionStatus::Running,
        start_date: rfc3339(live.start),
        stop_date: None,
        input: None,
        output: None,
        error: None,
        cause: None,
        redrive_count: live.redrive_count,
        trace_id: trace_id_of(&live.meta),
    }
}

/// The id of the execution's trace, from the span context stored with it
/// (kept even when this coordinator does not trace).
fn trace_id_of(meta: &ExecutionMeta) -> Option<String> {
    meta.execution_span
        .as_deref()
        .and_then(sagaflow_telemetry::propagation::sampled_trace_id_of)
}

/// A history batch whose records carry no state payloads (`null`).
fn slim_batch(batch: &HistoryBatch) -> HistoryBatch {
    let null = Arc::new(Value::Null);
    let entries = batch
        .entries
        .iter()
        .map(|e| {
            let item = match &e.item {
                HistoryItem::Command(Command::Record(interp::Record::StateEntered {
                    path,
                    name,
                    state_type,
                    ..
                })) => HistoryItem::Command(Command::Record(interp::Record::StateEntered {
                    path: path.clone(),
                    name: name.clone(),
                    state_type: *state_type,
                    input: null.clone(),
                })),
                HistoryItem::Command(Command::Record(interp::Record::StateExited {
                    path,
                    name,
                    state_type,
                    ..
                })) => HistoryItem::Command(Command::Record(interp::Record::StateExited {
                    path: path.clone(),
                    name: name.clone(),
                    state_type: *state_type,
                    output: null.clone(),
                })),
                other => other.clone(),
            };
            HistoryEntry { at: e.at, item }
        })
        .collect();
    HistoryBatch {
        meta: batch.meta.clone(),
        entries,
        part: None,
    }
}

/// A result in the shape its task returns it; `request_id` is the Lambda
/// request id a `lambda:invoke` result carries (the task's idempotency key,
/// as the handler's `LambdaContext::request_id`).
fn shape_output(shape: Shape, output: Value, request_id: &str) -> Value {
    match shape {
        Shape::Raw => output,
        Shape::LambdaInvoke => resource::wrap_lambda_invoke(output, request_id),
        Shape::ChildSync { v2 } => {
            let mut output = output;
            if !v2 {
                resource::sync_v1(&mut output);
            }
            output
        }
    }
}

/// What a partition owner knows of its execution index between two
/// reconciliations: kept up to date from the index's changes, so that each
/// round reads only what changed since the previous one (the first reads
/// every entry once).
#[derive(Debug, Default)]
struct IndexView {
    /// Last index stream sequence applied (0: nothing read yet).
    cursor: u64,
    /// Running executions, by key.
    running: HashMap<String, ExecutionRef>,
    /// Ended executions and when they stopped, by key; kept only when a
    /// retention is set (they are deleted once it ran out).
    ended: HashMap<String, (Timestamp, ExecutionRef)>,
}

impl IndexView {
    /// Applies index changes.
    fn apply(&mut self, changes: Vec<super::store::IndexChange>, retention: Duration) {
        for change in changes {
            self.running.remove(&change.key);
            self.ended.remove(&change.key);
            let Some(desc) = change.entry else {
                continue;
            };
            let Ok(exec_ref) = ExecutionRef::from_arn(&desc.execution_arn) else {
                continue;
            };
            if desc.status == ExecutionStatus::Running {
                self.running.insert(change.key, exec_ref);
            } else if !retention.is_zero()
                && let Some(stopped) = desc
                    .stop_date
                    .as_deref()
                    .and_then(|d| d.parse::<Timestamp>().ok())
            {
                self.ended.insert(change.key, (stopped, exec_ref));
            }
        }
    }

    /// The ended executions whose retention ran out at `now`.
    fn expired(&self, retention: Duration, now: Timestamp) -> Vec<(String, ExecutionRef)> {
        let Ok(retention) = jiff::SignedDuration::try_from(retention) else {
            return Vec::new();
        };
        if retention.is_zero() {
            return Vec::new();
        }
        self.ended
            .iter()
            .filter(|(_, (stopped, _))| {
                stopped
                    .checked_add(retention)
                    .is_ok_and(|until| until < now)
            })
            .map(|(key, (_, exec_ref))| (key.clone(), exec_ref.clone()))
            .collect()
    }
}

/// What a reconciliation round read.
struct Listed {
    /// The partition's index view, up to date.
    view: IndexView,
    /// The running executions (none when the index could not be read: the
    /// next round tries again).
    running: Vec<ExecutionRef>,
    /// Those whose history runs though their index entry says they ended
    /// (found by retention).
    misindexed: Vec<ExecutionRef>,
    /// The keys whose entry changed to ended since the previous round.
    ended_now: Vec<String>,
}

/// One reconciliation round's reads, run beside a partition's loop: brings
/// the partition's [`IndexView`] up to date, deletes the ended executions
/// whose retention ran out ([`sagaflow_nats::Settings::retention`]).
async fn list_for_reconcile(store: Store, partition: u32, mut view: IndexView) -> Listed {
    // Bounded: a read that stalls is dropped, the next round tries again.
    let reading = store.partition_index_changes(partition, view.cursor);
    let Ok(Ok((changes, cursor))) = tokio::time::timeout(Duration::from_secs(60), reading).await
    else {
        return Listed {
            view,
            running: Vec::new(),
            misindexed: Vec::new(),
            ended_now: Vec::new(),
        };
    };
    let retention = store.infra().settings.retention;
    // Each key's last change counts.
    let mut ended: HashMap<&str, bool> = HashMap::new();
    for change in &changes {
        let now_ended = change
            .entry
            .as_ref()
            .is_some_and(|d| d.status != ExecutionStatus::Running);
        ended.insert(change.key.as_str(), now_ended);
    }
    let ended_now: Vec<String> = ended
        .into_iter()
        .filter(|(_, ended)| *ended)
        .map(|(key, _)| key.to_string())
        .collect();
    view.apply(changes, retention);
    view.cursor = cursor;
    let running: Vec<ExecutionRef> = view.running.values().cloned().collect();
    let mut misindexed = Vec::new();
    for (key, exec_ref) in view.expired(retention, now()) {
        match store.forget_execution(&exec_ref).await {
            Ok(Forget::Forgotten) => {
                tracing::debug!(execution = %exec_ref.arn(), "retention: forgotten");
                view.ended.remove(&key);
            }
            // Running again (redriven meanwhile): the index change comes
            // in the next round.
            Ok(Forget::Running) => {
                view.ended.remove(&key);
            }
            // Its entry is wrong: put right by the partition's loop.
            Ok(Forget::RunningByItsHistory) => {
                tracing::warn!(execution = %exec_ref.arn(), "retention: the index says it ended, its history runs; rewriting its entry");
                view.ended.remove(&key);
                misindexed.push(exec_ref);
            }
            Err(e) => {
                tracing::warn!(execution = %exec_ref.arn(), error = %e, "retention: cannot delete")
            }
        }
    }
    Listed {
        view,
        running,
        misindexed,
        ended_now,
    }
}

/// The child execution a `states:startExecution` task starts: the machine
/// named by its `StateMachineArn` (an ARN or a name), with the task's `Name`
/// or, without one, a name derived from the parent execution and task.
fn child_ref(
    parent: &ExecutionRef,
    request: &TaskRequest,
) -> Result<ExecutionRef, resource::ChildError> {
    resource::child_execution(parent, &request.task_id, &request.input)
}

/// An execution's ARN and the subjects its results go to.
struct Route {
    arn: String,
    /// Its inbox subject.
    reply_to: String,
    /// The subject of results sent straight to its owner.
    result_to: String,
}

impl Route {
    fn new(exec_ref: &ExecutionRef, store: &Store) -> Route {
        let partition = store.partition_of(exec_ref);
        let ns = store.infra().ns();
        Route {
            arn: exec_ref.arn(),
            reply_to: ns.inbox_subject(partition, exec_ref),
            result_to: ns.result_subject(partition, exec_ref),
        }
    }
}

/// Keeps an execution's pending tasks and timers in step with the commands
/// it produced; the timers cancelled and the heartbeat deadlines of tasks
/// no longer pending leave the wheel.
fn track(live: &mut Live, commands: &[Command], key: &str, wheel: &mut Wheel) {
    for c in commands {
        match c {
            Command::ScheduleTask(request) => {
                let pending = plan_task(&live.exec_ref, &live.route, request);
                live.pending.insert(request.task_id.to_string(), pending);
            }
            Command::CancelTask { task_id } => {
                // A `.sync` child whose parent no longer waits (stopped, timed
                // out, a sibling branch failed) is stopped too, as AWS does.
                if let Some(p) = live.pending.remove(task_id)
                    && matches!(p.shape, Shape::ChildSync { .. })
                    && let Ok(child) = child_ref(&live.exec_ref, &p.request)
                {
                    live.stop_children.push((child, task_id.clone()));
                }
                if let Some(at) = live.heartbeats.remove(task_id) {
                    wheel.remove(&(at, key.to_string(), Due::Heartbeat(task_id.clone())));
                }
            }
            Command::StartTimer {
                timer_id, fire_at, ..
            } => {
                live.timers.insert(timer_id.clone(), *fire_at);
            }
            Command::CancelTimer { timer_id } => {
                if let Some(at) = live.timers.remove(timer_id) {
                    wheel.remove(&(at, key.to_string(), Due::Timer(timer_id.clone())));
                }
            }
            Command::Record(interp::Record::Redriven { count, .. }) => {
                live.redrive_count = *count;
            }
            _ => {}
        }
    }
    // Answered tasks and fired timers leave the interpreter's pending sets.
    let tasks: HashSet<&str> = live.exec.pending_tasks().collect();
    live.pending.retain(|id, _| tasks.contains(id.as_str()));
    live.heartbeats.retain(|id, at| {
        let keep = tasks.contains(id.as_str());
        if !keep {
            wheel.remove(&(*at, key.to_string(), Due::Heartbeat(id.clone())));
        }
        keep
    });
    let timers: HashSet<&str> = live.exec.pending_timers().collect();
    live.timers.retain(|id, at| {
        let keep = timers.contains(id.as_str());
        if !keep {
            wheel.remove(&(*at, key.to_string(), Due::Timer(id.clone())));
        }
        keep
    });
}

/// `first`'s inputs and `then`'s, by execution: an execution in both gets
/// `first`'s inputs before `then`'s, in one group.
fn merge_groups(
    first: Vec<(String, Vec<Input>)>,
    then: Vec<(String, Vec<Input>)>,
) -> Vec<(String, Vec<Input>)> {
    if first.is_empty() {
        return then;
    }
    let mut merged = first;
    let mut at: HashMap<String, usize> = merged
        .iter()
        .enumerate()
        .map(|(i, (key, _))| (key.clone(), i))
        .collect();
    for (key, inputs) in then {
        match at.get(&key) {
            Some(&i) => merged[i].1.extend(inputs),
            None => {
                at.insert(key.clone(), merged.len());
                merged.push((key, inputs));
            }
        }
    }
    merged
}

/// Applies an event, catching a panic of the interpreter (a defect, not
/// something an input may cause): `Err` holds its message. The execution is
/// then in an unknown state and must be dropped (its history is intact).
pub(crate) fn apply_guarded(
    exec: &mut Execution,
    at: Timestamp,
    event: Event,
    out: &mut Vec<Command>,
) -> Result<Result<(), interp::ApplyError>, String> {
    std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| exec.apply(at, event, out)))
        .map_err(|payload| sagaflow_participant::panic_message(payload.as_ref()))
}

/// Where a task goes: a handler (with the message to publish), or a child
/// execution started by the coordinator.
fn plan_task(exec_ref: &ExecutionRef, route: &Route, request: &TaskRequest) -> Pending {
    let (base, pattern) = resource::strip_pattern(&request.resource);
    if resource::same_integration(base, START_EXECUTION) {
        let v2 = request.resource.ends_with(".sync:2");
        return Pending {
            request: request.clone(),
            shape: if pattern == Pattern::Sync {
                Shape::ChildSync { v2 }
            } else {
                Shape::Raw
            },
            pattern,
            message: None,
        };
    }
    let (handler, input, shape) = match resource::resolve(&request.resource, &request.input) {
        Ok(r) => {
            let handler = std::iter::once(r.name.clone())
                .chain(r.candidates.iter().cloned())
                .find(|h| check_handler(h).is_ok());
            let shape = match r.shape {
                ResultShape::Raw => Shape::Raw,
                ResultShape::LambdaInvoke => Shape::LambdaInvoke,
            };
            (handler, r.input, shape)
        }
        Err(_) => (None, Value::clone(&request.input), Shape::Raw),
    };
    let message = handler.as_ref().map(|h| {
        Arc::new(TaskMessage {
            execution_arn: route.arn.clone(),
            execution_name: exec_ref.name().to_string(),
            state_machine: exec_ref.state_machine().to_string(),
            task_id: request.task_id.to_string(),
            state_name: request.state_name.to_string(),
            resource: request.resource.to_string(),
            handler: h.clone(),
            input,
            attempt: request.attempt,
            heartbeat_seconds: request.heartbeat_seconds,
            timeout_seconds: request.timeout_seconds,
            task_token: request.task_token.clone(),
            reply_to: route.reply_to.clone(),
            result_to: Some(route.result_to.clone()),
        })
    });
    Pending {
        request: request.clone(),
        shape,
        pattern,
        message,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ended(status: ExecutionStatus, stop_date: Option<&str>) -> ExecutionDescription {
        ExecutionDescription {
            execution_arn: "arn:aws:states:local:000000000000:execution:m:n".into(),
            name: "n".into(),
            state_machine: "m".into(),
            version: 1,
            status,
            start_date: "2024-01-01T00:00:00Z".into(),
            stop_date: stop_date.map(str::to_string),
            input: None,
            output: None,
            error: None,
            cause: None,
            redrive_count: 0,
            trace_id: None,
        }
    }

    use super::super::store::IndexChange;

    fn change(key: &str, entry: Option<ExecutionDescription>) -> IndexChange {
        IndexChange {
            key: key.into(),
            entry,
        }
    }

    /// Whether a view holding only `desc` finds it expired.
    fn expired(desc: &ExecutionDescription, retention: Duration, now: Timestamp) -> bool {
        let mut view = IndexView::default();
        view.apply(vec![change("k", Some(desc.clone()))], retention);
        !view.expired(retention, now).is_empty()
    }

    /// An execution in memory with `definition`, started at `at`, and the
    /// commands its start produced.
    fn live_started(definition: &str, name: &str, at: Timestamp) -> (Live, Vec<Command>) {
        let machine =
            sagaflow_asl::parse::parse_definition(definition).expect("a valid definition");
        let exec_ref = ExecutionRef::new("m", name).expect("a valid name");
        let mut live = Live::new(
            exec_ref.clone(),
            Route {
                arn: exec_ref.arn(),
                reply_to: "inbox".into(),
                result_to: "result".into(),
            },
            Execution::new(
                Arc::new(machine),
                RuntimeOptions::default().interp_options(),
            ),
            ExecutionMeta {
                state_machine: "m".into(),
                version: 1,
                traceparent: None,
                execution_span: None,
                parent: None,
            },
            at,
            json!({}),
        );
        let mut out = Vec::new();
        let event = Event::ExecutionStarted {
            info: ExecutionInfo {
                execution_id: exec_ref.arn(),
                execution_name: name.into(),
                state_machine_id: state_machine_arn("m"),
                state_machine_name: "m".into(),
                role_arn: String::new(),
                seed: 1,
                rules: interp::RULES,
            },
            input: json!({}),
        };
        live.exec.apply(at, event, &mut out).expect("started");
        (live, out)
    }

    /// What carrying out `commands` and dispatching their tasks puts on the
    /// wheel (timers, heartbeat deadlines), as the partition does.
    fn arm(wheel: &mut Wheel, key: &str, live: &mut Live, commands: &[Command], at: Timestamp) {
        track(live, commands, key, wheel);
        for c in commands {
            match c {
                Command::StartTimer {
                    timer_id, fire_at, ..
                } if live.timers.get(timer_id) == Some(fire_at) => {
                    wheel.insert((*fire_at, key.into(), Due::Timer(timer_id.clone())), ());
                }
                Command::ScheduleTask(request) => {
                    if let Some(seconds) = request.heartbeat_seconds {
                        let deadline = after_seconds(at, seconds);
                        live.heartbeats
                            .insert(request.task_id.to_string(), deadline);
                        wheel.insert(
                            (
                                deadline,
                                key.into(),
                                Due::Heartbeat(request.task_id.to_string()),
                            ),
                            (),
                        );
                    }
                }
                _ => {}
            }
        }
    }

    #[test]
    fn coordinator_ids_are_kv_keys() {
        for ok in ["coordinator-1", "node_a.eu=1", "A"] {
            assert!(valid_coordinator_id(ok), "{ok}");
        }
        let long = "x".repeat(256);
        for bad in [
            "",
            "node:1",
            "a b",
            "user@host",
            ".a",
            "a.",
            "é",
            long.as_str(),
        ] {
            assert!(!valid_coordinator_id(bad), "{bad}");
        }
    }

    #[test]
    fn an_answered_task_and_an_ended_execution_leave_the_wheel() {
        let definition = r#"{"TimeoutSeconds": 86400, "StartAt": "Book", "States": {
            "Book": {"Type": "Task", "Resource": "book", "TimeoutSeconds": 3600,
                     "HeartbeatSeconds": 60, "Next": "Pause"},
            "Pause": {"Type": "Wait", "Seconds": 10, "End": true}}}"#;
        let t0: Timestamp = "2024-01-01T00:00:00Z".parse().unwrap();
        let mut wheel = Wheel::new();
        let (mut a, out) = live_started(definition, "a", t0);
        arm(&mut wheel, "a", &mut a, &out, t0);
        let (mut b, out) = live_started(definition, "b", t0);
        arm(&mut wheel, "b", &mut b, &out, t0);
        // Each: the execution's timeout, the task's timeout, its heartbeat.
        assert_eq!(wheel.len(), 6, "{wheel:?}");

        // a's task is answered: its timeout and heartbeat deadline go, the
        // Wait's timer comes.
        let task_id = a.pending.keys().next().expect("a task pending").clone();
        let mut out = Vec::new();
        a.exec
            .apply(
                t0,
                Event::TaskSucceeded {
                    task_id,
                    output: json!({}),
                },
                &mut out,
            )
            .expect("applied");
        arm(&mut wheel, "a", &mut a, &out, t0);
        let of_a: Vec<&Due> = wheel
            .keys()
            .filter(|(_, k, _)| k == "a")
            .map(|(_, _, due)| due)
            .collect();
        assert_eq!(
            of_a.len(),
            2,
            "the execution's timeout and the Wait: {of_a:?}"
        );
        assert!(
            of_a.iter().all(|due| matches!(due, Due::Timer(_))),
            "{of_a:?}"
        );
        assert_eq!(a.timers.len(), 2);
        assert!(a.heartbeats.is_empty());

        // a ends (or leaves memory): none of its entries stay; b's do.
        unarm(&mut wheel, "a", &a);
        assert_eq!(wheel.len(), 3, "{wheel:?}");
        assert!(wheel.keys().all(|(_, k, _)| k == "b"));
        unarm(&mut wheel, "b", &b);
        assert!(wheel.is_empty(), "{wheel:?}");
    }

    #[test]
    fn workers_refuse_results_the_interpreter_would_refuse() {
        assert_eq!(
            sagaflow_participant::MAX_RESULT_DEPTH,
            sagaflow_asl::interp::MAX_DEPTH
        );
    }

    #[test]
    fn the_index_view_follows_the_changes() {
        let hour = Duration::from_secs(3600);
        let mut view = IndexView::default();
        view.apply(
            vec![
                change("a", Some(ended(ExecutionStatus::Running, None))),
                change("b", Some(ended(ExecutionStatus::Running, None))),
            ],
            hour,
        );
        assert_eq!(view.running.len(), 2);
        // a ends, b is deleted.
        view.apply(
            vec![
                change(
                    "a",
                    Some(ended(
                        ExecutionStatus::Succeeded,
                        Some("2024-01-01T00:00:00Z"),
                    )),
                ),
                change("b", None),
            ],
            hour,
        );
        assert!(view.running.is_empty());
        assert_eq!(view.ended.len(), 1);
        let later: Timestamp = "2024-01-01T02:00:00Z".parse().unwrap();
        assert_eq!(view.expired(hour, later).len(), 1);
        view.apply(vec![change("a", None)], hour);
        assert!(view.ended.is_empty());
        // Without a retention, ended executions are not kept.
        let mut view = IndexView::default();
        view.apply(
            vec![change(
                "a",
                Some(ended(ExecutionStatus::Failed, Some("2024-01-01T00:00:00Z"))),
            )],
            Duration::ZERO,
        );
        assert!(view.ended.is_empty() && view.running.is_empty());
    }

    #[test]
    fn retention_expires_ended_executions_only() {
        let now: Timestamp = "2024-01-01T01:00:00Z".parse().unwrap();
        let hour = Duration::from_secs(3600);
        let old = Some("2024-01-01T00:00:00Z");
        let fresh = Some("2024-01-01T00:30:00Z");
        assert!(expired(
            &ended(ExecutionStatus::Succeeded, Some("2023-12-31T23:59:59Z")),
            hour,
            now
        ));
        assert!(expired(
            &ended(ExecutionStatus::Failed, Some("2023-01-01T00:00:00Z")),
            hour,
            now
        ));
        assert!(
            !expired(&ended(ExecutionStatus::Succeeded, old), hour, now),
            "exactly at the limit"
        );
        assert!(!expired(&ended(ExecutionStatus::Aborted, fresh), hour, now));
        assert!(!expired(
            &ended(ExecutionStatus::Running, old),
            Duration::from_secs(1),
            now
        ));
        assert!(
            !expired(&ended(ExecutionStatus::Succeeded, old), Duration::ZERO, now),
            "zero keeps all"
        );
        assert!(!expired(
            &ended(ExecutionStatus::Succeeded, None),
            hour,
            now
        ));
        assert!(!expired(
            &ended(ExecutionStatus::Succeeded, Some("yesterday")),
            hour,
            now
        ));
        assert!(
            !expired(&ended(ExecutionStatus::Succeeded, old), Duration::MAX, now),
            "no overflow"
        );
    }

    /// A partition whose lease may have lapsed (this process paused past
    /// the lease's TTL) writes nothing: a timer that came due meanwhile is
    /// not recorded, the execution is dropped from memory; once the lease
    /// is renewed, the execution is reloaded and its timer fires then.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_partition_whose_lease_lapsed_writes_nothing_until_it_is_renewed() {
        use sagaflow_protocol::StartExecution;
        let server = sagaflow_testkit::NatsServer::start().expect("nats-server");
        let client = async_nats::connect(server.url()).await.expect("connect");
        let options = ClusterOptions::default();
        let infra = sagaflow_nats::setup(client, options.settings.clone())
            .await
            .expect("set up");
        let store = Store::new(infra, 1);
        let machine = store
            .create_machine(
                "pause",
                r#"{"StartAt": "W", "States": {"W": {"Type": "Wait", "Seconds": 1, "End": true}}}"#,
                "2026-01-01T00:00:00Z",
            )
            .await
            .expect("deployed");
        let shared = Arc::new(Shared {
            store: store.clone(),
            options,
            machines: Mutex::new(HashMap::new()),
        });
        let held = || {
            let term = Arc::new(LeaseTerm::default());
            term.renewed(Stamp::now(), Duration::from_secs(60));
            term
        };
        let mut partition = Partition::new(shared, 0, held());
        let exec = ExecutionRef::new("pause", "paused").unwrap();
        let key = exec.key();
        let start = InboxMessage::StartExecution(StartExecution {
            execution_arn: exec.arn(),
            version: machine.version,
            input: json!({}),
            seed: 7,
            traceparent: None,
            parent: None,
        });
        partition
            .step(vec![(key.clone(), vec![Input::Inbox(0, start)])])
            .await;
        let started = store.read_history(&exec).await.expect("history");
        assert_eq!(started.batches.len(), 1, "the start is recorded");
        assert!(partition.live.contains_key(&key));

        // The process "paused": the lease is no longer surely ours when the
        // Wait's timer comes due.
        partition.lease = Arc::new(LeaseTerm::default());
        tokio::time::sleep(Duration::from_millis(1_100)).await;
        partition.fire_due().await;
        let after = store.read_history(&exec).await.expect("history");
        assert_eq!(
            after.last_sequence, started.last_sequence,
            "nothing appended past the lease"
        );
        assert!(!partition.live.contains_key(&key), "dropped from memory");
        assert!(partition.reload.contains(&key), "to be reloaded");

        // Renewed: reloaded, its timer re-armed (due already), it ends.
        partition.lease = held();
        partition.retry_reloads().await;
        assert!(partition.live.contains_key(&key));
        partition.fire_due().await;
        partition.finish_background().await;
        let done = store.read_history(&exec).await.expect("history");
        let completed = done
            .batches
            .iter()
            .flat_map(|b| &b.entries)
            .any(|e| matches!(e.item, crate::HistoryItem::Command(Command::Complete(_))));
        assert!(completed, "the execution ended in its history");
        let entry = store.execution(&exec).await.expect("index").expect("entry");
        assert_eq!(entry.status, ExecutionStatus::Succeeded);
    }
}
