//! `sagaflow bench`: the travel-booking saga over NATS, measured against the
//! raw NATS floor on the same machine.
//!
//! 1. The floor: core request/reply and JetStream publish rates.
//! 2. A coordinator in this process and the participants in a child process
//!    (`sagaflow stub-participants`), so that this process's CPU time is the
//!    coordinator's (plus a light load generator).
//! 3. For the success path and the compensation path: completed sagas per
//!    second at saturation, then end-to-end latency (p50/p99) at half that
//!    rate, and the coordinator process's CPU time per state transition.

use std::process::{Child, Command as ProcessCommand, ExitCode, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use futures::StreamExt;
use serde_json::json;
use tokio::sync::Mutex;

use sagaflow_coordinator::cluster::{Cluster, ClusterOptions, Store};
use sagaflow_protocol::{ExecutionRef, InboxMessage, Namespace, StartExecution};

/// `sagaflow bench`.
#[derive(Debug, clap::Args)]
pub struct BenchArgs {
    /// A NATS server to use; by default one is started (JetStream, file
    /// storage in a temporary directory).
    #[arg(long, value_name = "URL")]
    nats: Option<String>,
    /// Sagas per saturation run.
    #[arg(long, default_value_t = 4000, value_name = "N")]
    sagas: usize,
    /// Partitions of the coordinator.
    #[arg(long, default_value_t = 16, value_name = "N")]
    partitions: u32,
    /// Tasks the participant process runs at once.
    #[arg(long, default_value_t = 512, value_name = "N")]
    concurrency: usize,
    /// Seconds of the half-load latency run.
    #[arg(long, default_value_t = 4, value_name = "SECONDS")]
    latency_seconds: u64,
    /// Sagas per second of the light-load latency run (after the half-load
    /// one, as long): the latency of a saga that waits for nothing but its
    /// own steps. 0 skips it.
    #[arg(long, default_value_t = 50.0, value_name = "RATE")]
    light_rate: f64,
    /// Print the figures as JSON.
    #[arg(long)]
    json: bool,
}

const SAGA: &str = r#"{
  "Comment": "Travel booking saga (benchmark)",
  "StartAt": "BookFlight",
  "States": {
    "BookFlight": {"Type": "Task", "Resource": "arn:aws:lambda:us-east-1:123456789012:function:book_flight",
      "ResultPath": "$.flight", "Next": "BookHotel",
      "Catch": [{"ErrorEquals": ["States.ALL"], "ResultPath": "$.error", "Next": "BookingFailed"}]},
    "BookHotel": {"Type": "Task", "Resource": "arn:aws:lambda:us-east-1:123456789012:function:book_hotel",
      "ResultPath": "$.hotel", "Next": "BookCar",
      "Catch": [{"ErrorEquals": ["States.ALL"], "ResultPath": "$.error", "Next": "CancelFlight"}]},
    "BookCar": {"Type": "Task", "Resource": "arn:aws:lambda:us-east-1:123456789012:function:book_car",
      "ResultPath": "$.car", "End": true,
      "Catch": [{"ErrorEquals": ["States.ALL"], "ResultPath": "$.error", "Next": "CancelHotel"}]},
    "CancelHotel": {"Type": "Task", "Resource": "arn:aws:lambda:us-east-1:123456789012:function:cancel_hotel",
      "ResultPath": null, "Next": "CancelFlight",
      "Retry": [{"ErrorEquals": ["States.ALL"], "IntervalSeconds": 1, "MaxAttempts": 5}]},
    "CancelFlight": {"Type": "Task", "Resource": "arn:aws:lambda:us-east-1:123456789012:function:cancel_flight",
      "ResultPath": null, "Next": "BookingFailed",
      "Retry": [{"ErrorEquals": ["States.ALL"], "IntervalSeconds": 1, "MaxAttempts": 5}]},
    "BookingFailed": {"Type": "Fail", "Error": "BookingFailed", "Cause": "the trip was compensated"}
  }
}"#;

const STUBS: &str = r#"{
  "book_flight": {"returns": {"confirmation": "FL-1"}},
  "book_hotel": {"returns": {"confirmation": "HO-1"}},
  "book_car": {"switch": [{"if": {"pointer": "/fail", "equals": "car"},
                           "then": {"throws": {"error": "CarUnavailable", "cause": "no cars left"}}}],
               "else": {"returns": {"confirmation": "CA-1"}}},
  "cancel_hotel": {"returns": {}},
  "cancel_flight": {"returns": {}}
}"#;

/// The participants' child process, killed on drop.
struct Participants(Child);

impl Drop for Participants {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// CPU time (user + system) of process `pid` ("self" for this one), from
/// /proc (USER_HZ is 100 on Linux); `None` elsewhere.
fn cpu_of(pid: &str) -> Option<Duration> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let after = stat.rsplit_once(')')?.1;
    let fields: Vec<&str> = after.split_whitespace().collect();
    let utime: u64 = fields.get(11)?.parse().ok()?;
    let stime: u64 = fields.get(12)?.parse().ok()?;
    Some(Duration::from_millis((utime + stime) * 10))
}

/// The `p` quantile of sorted samples; `None` without samples.
fn percentile(sorted: &[Duration], p: f64) -> Option<Duration> {
    let last = sorted.len().checked_sub(1)?;
    let i = (last as f64 * p).round() as usize;
    sorted.get(i.min(last)).copied()
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

/// A latency in ms, or "n/a" without samples.
fn show_ms(d: Option<Duration>) -> String {
    d.map_or("n/a".to_string(), |d| format!("{:.2} ms", ms(d)))
}

/// What a saga's completion notice says: its status and error.
#[derive(Debug, Clone, PartialEq)]
struct Ended {
    at: Instant,
    status: String,
    error: Option<String>,
}

/// Runs the benchmark. Ctrl-C (or SIGTERM) stops it: the participants
/// process, the nats-server it started (with its store) and the stubs file
/// are removed all the same.
pub async fn bench(args: BenchArgs) -> anyhow::Result<ExitCode> {
    if args.sagas == 0 {
        bail!("--sagas must be at least 1");
    }
    if args.latency_seconds == 0 {
        bail!("--latency-seconds must be at least 1");
    }
    if !args.light_rate.is_finite() || args.light_rate < 0.0 {
        bail!(
            "--light-rate must be 0 (skip) or a positive number of sagas per second, not {}",
            args.light_rate
        );
    }
    let server = match &args.nats {
        Some(_) => None,
        None => Some(
            sagaflow_testkit::NatsServer::start()
                .context("cannot start a nats-server for the benchmark")?,
        ),
    };
    let url = match (&args.nats, &server) {
        (Some(url), _) => url.clone(),
        (None, Some(s)) => s.url(),
        (None, None) => bail!("no NATS server"),
    };
    let server_pid = server.as_ref().and_then(|s| s.pid());
    let stubs_path =
        std::env::temp_dir().join(format!("sagaflow-bench-{}.json", std::process::id()));
    let result = tokio::select! {
        r = run(&args, url, server_pid, &stubs_path) => r,
        signal = sagaflow_participant::stop_signal() => {
            eprintln!("{}: benchmark stopped", signal.unwrap_or("signal"));
            // The coordinator's tasks are still running: leave at once
            // after cleaning up, rather than let them report the server's
            // end.
            let _ = std::fs::remove_file(&stubs_path);
            drop(server);
            std::process::exit(130);
        }
    };
    let _ = std::fs::remove_file(&stubs_path);
    drop(server);
    result
}

async fn run(
    args: &BenchArgs,
    url: String,
    server_pid: Option<u32>,
    stubs_path: &std::path::Path,
) -> anyhow::Result<ExitCode> {
    let say = |line: String| {
        if !args.json {
            println!("{line}");
        }
    };
    say(format!("sagaflow bench against {url}"));

    // ------------------------------------------------------------ the floor
    let client = sagaflow_nats::connect(&url).await?;
    let floor = floor(&client).await?;
    say(format!(
        "floor: core request/reply {:.0}/s (one at a time p50 {:.3} ms); JetStream publish {:.0}/s",
        floor.request_reply_per_sec, floor.request_reply_p50_ms, floor.js_publish_per_sec
    ));

    // ------------------------------------------------- coordinator, participants
    // A namespace of its own: against a shared server, the benchmark must
    // not join (or take partitions of) a real deployment.
    let ns = Namespace::new("sagaflow-bench")?;
    let options = ClusterOptions {
        settings: sagaflow_nats::Settings {
            namespace: ns.clone(),
            ..sagaflow_nats::Settings::default()
        },
        partitions: args.partitions,
        api: false,
        ..ClusterOptions::default()
    };
    let cluster = Cluster::start(client.clone(), options).await?;
    let store = cluster.store().clone();
    store
        .create_machine("travel-bench", SAGA, "2024-01-01T00:00:00Z")
        .await?;
    std::fs::write(stubs_path, STUBS).context("cannot write the stubs file")?;
    let exe = std::env::current_exe().context("cannot find the sagaflow binary")?;
    let participants = Participants(
        ProcessCommand::new(exe)
            .args([
                "stub-participants",
                "--nats",
                &url,
                "--namespace",
                ns.prefix(),
                "--stubs",
            ])
            .arg(stubs_path)
            .args(["--concurrency", &args.concurrency.to_string()])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .context("cannot start the participants")?,
    );
    let participants_pid = participants.0.id();

    let done = Arc::new(Mutex::new(std::collections::HashMap::<String, Ended>::new()));
    let mut notices = client
        .subscribe(format!("{}.done.>", ns.prefix()))
        .await
        .context("cannot subscribe to completions")?;
    let completed = Arc::new(tokio::sync::Notify::new());
    {
        let done = done.clone();
        let completed = completed.clone();
        tokio::spawn(async move {
            while let Some(m) = notices.next().await {
                // Timed when it came, not when the lock was had.
                let at = Instant::now();
                let key = m
                    .subject
                    .as_str()
                    .rsplit('.')
                    .next()
                    .unwrap_or_default()
                    .to_string();
                let body: serde_json::Value =
                    serde_json::from_slice(&m.payload).unwrap_or_default();
                let ended = Ended {
                    at,
                    status: body["status"].as_str().unwrap_or("?").to_string(),
                    error: body["error"].as_str().map(str::to_string),
                };
                done.lock().await.insert(key, ended);
                completed.notify_waiters();
            }
        });
    }
    let load = Load {
        store: store.clone(),
        js: store.infra().js.clone(),
        ns,
        done,
        completed,
        counter: std::sync::atomic::AtomicUsize::new(0),
        run_tag: run_tag(),
    };

    // Warm up (and wait for the participants to be there).
    load.run_batch(200, false, Duration::from_secs(60)).await?;

    let mut figures = Vec::new();
    for (path, fail, transitions) in [("success", false, 3u64), ("compensation", true, 6u64)] {
        // CPU of each process over the saturation run: this one
        // (coordinator and load generator), the participants, the server
        // (when the benchmark started it).
        let processes = [
            Some("self".to_string()),
            Some(participants_pid.to_string()),
            server_pid.map(|p| p.to_string()),
        ];
        let before: Vec<Option<Duration>> = processes
            .iter()
            .map(|p| p.as_deref().and_then(cpu_of))
            .collect();
        let (elapsed, _) = load
            .run_batch(args.sagas, fail, Duration::from_secs(300))
            .await?;
        let spent: Vec<Option<Duration>> = processes
            .iter()
            .zip(&before)
            .map(|(p, b)| {
                p.as_deref()
                    .and_then(cpu_of)
                    .zip(*b)
                    .map(|(a, b)| a.saturating_sub(b))
            })
            .collect();
        let per_saga_us =
            |d: Option<Duration>| d.map(|d| d.as_secs_f64() * 1e6 / args.sagas as f64);
        let cpu = spent[0];
        let per_sec = args.sagas as f64 / elapsed.as_secs_f64();
        let cpu_per_transition_us =
            cpu.map(|c| c.as_secs_f64() * 1e6 / (args.sagas as u64 * transitions) as f64);
        let (coordinator_us, participants_us, server_us) = (
            per_saga_us(spent[0]),
            per_saga_us(spent[1]),
            per_saga_us(spent[2]),
        );
        let (latencies, half_rate) = load
            .paced(
                per_sec / 2.0,
                Duration::from_secs(args.latency_seconds),
                fail,
            )
            .await?;
        let p50 = percentile(&latencies, 0.50);
        let p99 = percentile(&latencies, 0.99);
        let light = if args.light_rate > 0.0 {
            let (latencies, rate) = load
                .paced(
                    args.light_rate,
                    Duration::from_secs(args.latency_seconds),
                    fail,
                )
                .await?;
            Some((
                percentile(&latencies, 0.50),
                percentile(&latencies, 0.99),
                rate,
            ))
        } else {
            None
        };
        say(format!(
            "{path:>12}: {per_sec:.0} sagas/s at saturation ({} sagas in {:.2} s); at {:.0}/s: p50 {}, p99 {};{} coordinator process CPU {} per state transition (saturation run, load generator included)",
            args.sagas,
            elapsed.as_secs_f64(),
            half_rate,
            show_ms(p50),
            show_ms(p99),
            light.map_or(String::new(), |(p50, p99, rate)| format!(
                " at {rate:.0}/s: p50 {}, p99 {};",
                show_ms(p50),
                show_ms(p99)
            )),
            cpu_per_transition_us.map_or("n/a".to_string(), |us| format!("{us:.1} us")),
        ));
        let show = |us: Option<f64>| us.map_or("n/a".to_string(), |us| format!("{us:.0} us"));
        say(format!(
            "{:>12}  CPU per saga at saturation: coordinator process {}, participants {}, nats-server {}",
            "",
            show(coordinator_us),
            show(participants_us),
            show(server_us),
        ));
        figures.push(json!({
            "path": path,
            "sagasPerSecond": per_sec,
            "halfLoadRate": half_rate,
            "p50Ms": p50.map(ms),
            "p99Ms": p99.map(ms),
            "lightLoadRate": light.map(|(_, _, rate)| rate),
            "lightP50Ms": light.and_then(|(p50, _, _)| p50.map(ms)),
            "lightP99Ms": light.and_then(|(_, p99, _)| p99.map(ms)),
            "coordinatorCpuMicrosPerTransition": cpu_per_transition_us,
            "cpuMicrosPerSaga": {
                "coordinatorProcess": coordinator_us,
                "participants": participants_us,
                "natsServer": server_us,
            },
            "transitionsPerSaga": transitions,
        }));
    }
    if args.json {
        println!(
            "{}",
            json!({
                "nats": url,
                "floor": {
                    "requestReplyPerSecond": floor.request_reply_per_sec,
                    "requestReplyP50Ms": floor.request_reply_p50_ms,
                    "jetStreamPublishPerSecond": floor.js_publish_per_sec,
                },
                "sagas": figures,
            })
        );
    }
    cluster.shutdown().await;
    drop(participants);
    // Closed before the server it started goes: no disconnection to report.
    // (The drain returns once under way; the connection closes a moment
    // later.)
    let _ = client.drain().await;
    let until = Instant::now() + Duration::from_secs(2);
    while client.connection_state() == async_nats::connection::State::Connected
        && Instant::now() < until
    {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    Ok(ExitCode::SUCCESS)
}

struct Floor {
    request_reply_per_sec: f64,
    request_reply_p50_ms: f64,
    js_publish_per_sec: f64,
}

async fn floor(client: &async_nats::Client) -> anyhow::Result<Floor> {
    // Core request/reply: a responder, then 64 requesters for 2 seconds.
    let mut sub = client.subscribe("sagaflow-bench.echo").await?;
    let responder = client.clone();
    let echo = tokio::spawn(async move {
        while let Some(m) = sub.next().await {
            if let Some(reply) = m.reply {
                let _ = responder.publish(reply, m.payload).await;
            }
        }
    });
    let mut one = Vec::new();
    for _ in 0..500 {
        let t = Instant::now();
        client.request("sagaflow-bench.echo", "x".into()).await?;
        one.push(t.elapsed());
    }
    one.sort();
    let count = Arc::new(std::sync::atomic::AtomicU64::new(0));
    let until = Instant::now() + Duration::from_secs(2);
    let mut tasks = Vec::new();
    for _ in 0..64 {
        let client = client.clone();
        let count = count.clone();
        tasks.push(tokio::spawn(async move {
            while Instant::now() < until {
                if client
                    .request("sagaflow-bench.echo", "x".into())
                    .await
                    .is_ok()
                {
                    count.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                }
            }
        }));
    }
    for t in tasks {
        let _ = t.await;
    }
    echo.abort();
    let request_reply_per_sec = count.load(std::sync::atomic::Ordering::Relaxed) as f64 / 2.0;

    // JetStream publish with acknowledgement, pipelined.
    let js = async_nats::jetstream::new(client.clone());
    let _ = js.delete_stream("SAGAFLOW_BENCH_FLOOR").await;
    js.create_stream(async_nats::jetstream::stream::Config {
        name: "SAGAFLOW_BENCH_FLOOR".into(),
        subjects: vec!["sagaflow-bench.js".into()],
        storage: async_nats::jetstream::stream::StorageType::File,
        ..Default::default()
    })
    .await?;
    let n = 20_000;
    let start = Instant::now();
    let mut pending = std::collections::VecDeque::new();
    for _ in 0..n {
        pending.push_back(js.publish("sagaflow-bench.js", "x".into()).await?);
        if pending.len() >= 512
            && let Some(ack) = pending.pop_front()
        {
            ack.await?;
        }
    }
    for ack in pending {
        ack.await?;
    }
    let js_publish_per_sec = n as f64 / start.elapsed().as_secs_f64();
    let _ = js.delete_stream("SAGAFLOW_BENCH_FLOOR").await;
    Ok(Floor {
        request_reply_per_sec,
        request_reply_p50_ms: percentile(&one, 0.5).map_or(0.0, ms),
        js_publish_per_sec,
    })
}

struct Load {
    store: Store,
    js: async_nats::jetstream::Context,
    ns: Namespace,
    done: Arc<Mutex<std::collections::HashMap<String, Ended>>>,
    /// Woken at each completion notice.
    completed: Arc<tokio::sync::Notify>,
    counter: std::sync::atomic::AtomicUsize,
    /// In every saga's name: a run against a server used before starts
    /// new executions, not again those of an earlier run.
    run_tag: String,
}

/// How many of `total` sagas paced at `rate` per second are due `elapsed`
/// after the start: saga i is due at i / rate (the first at once).
fn due_count(rate: f64, elapsed: Duration, total: usize) -> usize {
    ((rate * elapsed.as_secs_f64()).floor() as usize + 1).min(total)
}

/// A tag unique to this run (time and process id, in hex).
fn run_tag() -> String {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos());
    format!("{:x}{:x}", nanos, std::process::id())
}

/// Fails unless every saga ended as its path must: SUCCEEDED, or (the
/// compensation path) FAILED with `BookingFailed` after its compensations.
fn check_outcomes<'a>(ended: impl Iterator<Item = &'a Ended>, fail: bool) -> anyhow::Result<()> {
    let mut wrong = 0usize;
    let mut example = None;
    for e in ended {
        let right = if fail {
            e.status == "FAILED" && e.error.as_deref() == Some("BookingFailed")
        } else {
            e.status == "SUCCEEDED"
        };
        if !right {
            wrong += 1;
            example.get_or_insert_with(|| format!("{} {:?}", e.status, e.error));
        }
    }
    if wrong > 0 {
        bail!(
            "{wrong} sagas of the {} path did not end as expected (one ended {}): the figures would not measure that path",
            if fail { "compensation" } else { "success" },
            example.unwrap_or_default()
        );
    }
    Ok(())
}

impl Load {
    /// Publishes the start of one saga; returns its key.
    async fn start(
        &self,
        fail: bool,
    ) -> anyhow::Result<(String, async_nats::jetstream::context::PublishAckFuture)> {
        let n = self
            .counter
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let exec = ExecutionRef::new("travel-bench", &format!("trip-{}-{n}", self.run_tag))?;
        let input = if fail {
            json!({"tripId": n, "customer": "ada", "fail": "car"})
        } else {
            json!({"tripId": n, "customer": "ada"})
        };
        let start = InboxMessage::StartExecution(StartExecution {
            execution_arn: exec.arn(),
            version: 1,
            input,
            seed: n as u64,
            traceparent: None,
            parent: None,
        });
        let subject = self.ns.inbox_subject(self.store.partition_of(&exec), &exec);
        let ack = self
            .js
            .publish(subject, serde_json::to_vec(&start)?.into())
            .await?;
        Ok((exec.key(), ack))
    }

    /// Starts `n` sagas as fast as possible; returns the time until the
    /// last one completed.
    async fn run_batch(
        &self,
        n: usize,
        fail: bool,
        limit: Duration,
    ) -> anyhow::Result<(Duration, Vec<String>)> {
        let begin = Instant::now();
        let mut keys = Vec::with_capacity(n);
        let mut acks = std::collections::VecDeque::new();
        for _ in 0..n {
            let (key, ack) = self.start(fail).await?;
            keys.push(key);
            acks.push_back(ack);
            if acks.len() >= 512
                && let Some(a) = acks.pop_front()
            {
                a.await?;
            }
        }
        for a in acks {
            a.await?;
        }
        // Wait on completion notices rather than polling: the load generator
        // runs in the coordinator's process and must cost it next to nothing.
        let deadline = tokio::time::Instant::now() + limit;
        let mut cursor = 0;
        loop {
            let notified = self.completed.notified();
            {
                let done = self.done.lock().await;
                // Keys complete out of order: skip those done, stop at the
                // first that is not (each key is passed over once).
                while cursor < keys.len() && done.contains_key(&keys[cursor]) {
                    cursor += 1;
                }
                if cursor == keys.len() {
                    check_outcomes(keys.iter().filter_map(|k| done.get(k)), fail)?;
                    let last = keys
                        .iter()
                        .filter_map(|k| done.get(k))
                        .fold(begin, |l, e| l.max(e.at));
                    return Ok((last.duration_since(begin), keys));
                }
            }
            if tokio::time::timeout_at(deadline, notified).await.is_err() {
                bail!(
                    "the sagas did not all complete within {} s",
                    limit.as_secs()
                );
            }
        }
    }

    /// Starts sagas at `rate` per second for `duration`, spread evenly (a
    /// start every millisecond or so; their acknowledgements are awaited
    /// meanwhile, not one by one); returns each one's end-to-end latency,
    /// sorted, and the rate achieved. A saga's latency counts from when its
    /// start was due (`begin + i / rate`), not from when it was sent: when
    /// the process stalls, the starts it owes are sent late, all of them,
    /// and their wait counts (no coordinated omission).
    async fn paced(
        &self,
        rate: f64,
        duration: Duration,
        fail: bool,
    ) -> anyhow::Result<(Vec<Duration>, f64)> {
        let tick = Duration::from_millis(1);
        let begin = Instant::now();
        let total = (rate * duration.as_secs_f64()).floor() as usize;
        let mut started: Vec<(String, Instant)> = Vec::new();
        let mut acks = futures::stream::FuturesUnordered::new();
        let mut ticker = tokio::time::interval(tick);
        ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        while started.len() < total {
            ticker.tick().await;
            let due_by_now = due_count(rate, begin.elapsed(), total);
            while started.len() < due_by_now {
                let due = begin + Duration::from_secs_f64(started.len() as f64 / rate);
                let (key, ack) = self.start(fail).await?;
                acks.push(std::future::IntoFuture::into_future(ack));
                started.push((key, due));
            }
            while let Some(Some(stored)) = futures::FutureExt::now_or_never(acks.next()) {
                stored?;
            }
        }
        let achieved = started.len() as f64 / begin.elapsed().as_secs_f64().max(1e-9);
        while let Some(stored) = acks.next().await {
            stored?;
        }
        let deadline = tokio::time::Instant::now() + Duration::from_secs(120);
        let mut cursor = 0;
        loop {
            let notified = self.completed.notified();
            {
                let done = self.done.lock().await;
                while cursor < started.len() && done.contains_key(&started[cursor].0) {
                    cursor += 1;
                }
                if cursor == started.len() {
                    check_outcomes(started.iter().filter_map(|(k, _)| done.get(k)), fail)?;
                    let mut latencies: Vec<Duration> = started
                        .iter()
                        .filter_map(|(k, t)| {
                            done.get(k).map(|d| d.at.saturating_duration_since(*t))
                        })
                        .collect();
                    latencies.sort();
                    return Ok((latencies, achieved));
                }
            }
            if tokio::time::timeout_at(deadline, notified).await.is_err() {
                bail!("the paced sagas did not all complete");
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percentiles_of_no_samples_are_none() {
        assert_eq!(percentile(&[], 0.5), None);
        let samples: Vec<Duration> = (1..=100).map(Duration::from_millis).collect();
        assert_eq!(percentile(&samples, 0.5), Some(Duration::from_millis(51)));
        assert_eq!(percentile(&samples, 0.99), Some(Duration::from_millis(99)));
        assert_eq!(percentile(&samples, 1.0), Some(Duration::from_millis(100)));
        assert_eq!(show_ms(None), "n/a");
    }

    #[test]
    fn a_saga_that_ended_otherwise_than_its_path_fails_the_run() {
        let ended = |status: &str, error: Option<&str>| Ended {
            at: Instant::now(),
            status: status.into(),
            error: error.map(str::to_string),
        };
        let ok = [ended("SUCCEEDED", None)];
        assert!(check_outcomes(ok.iter(), false).is_ok());
        let compensated = [ended("FAILED", Some("BookingFailed"))];
        assert!(check_outcomes(compensated.iter(), true).is_ok());
        // A success run whose sagas compensated, a compensation run whose
        // sagas failed otherwise: not the path measured.
        assert!(check_outcomes(compensated.iter(), false).is_err());
        let other = [ended("FAILED", Some("States.Timeout"))];
        let err = check_outcomes(other.iter(), true).unwrap_err().to_string();
        assert!(err.contains("1 sagas of the compensation path"), "{err}");
    }

    #[test]
    fn the_first_paced_saga_is_due_at_once() {
        assert_eq!(due_count(50.0, Duration::ZERO, 200), 1);
        assert_eq!(due_count(50.0, Duration::from_millis(19), 200), 1);
        assert_eq!(due_count(50.0, Duration::from_millis(20), 200), 2);
        assert_eq!(due_count(50.0, Duration::from_secs(10), 200), 200);
    }

    #[test]
    fn every_run_names_its_sagas_apart() {
        let a = run_tag();
        std::thread::sleep(Duration::from_millis(2));
        assert_ne!(a, run_tag());
    }
}
