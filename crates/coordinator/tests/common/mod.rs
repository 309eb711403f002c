//! What every end-to-end test needs: a nats-server of its own, an
//! in-process coordinator serving the API, participants (`Worker`s) and an
//! API client.

#![allow(dead_code)]

use std::time::Duration;

use async_nats::jetstream;
use serde_json::Value;
use tokio::task::JoinHandle;

use sagaflow_coordinator::cluster::client::{ApiClient, ApiClientError};
use sagaflow_coordinator::cluster::{Cluster, ClusterHandle, ClusterOptions};
use sagaflow_participant::{ShutdownHandle, Worker, WorkerBuilder};
use sagaflow_protocol::api::{ExecutionDescription, ExecutionStatus, StartExecutionRequest};
use sagaflow_protocol::{ExecutionRef, InboxMessage, Namespace, StartExecution};
use sagaflow_testkit::NatsServer;

/// How long a test waits for an execution before giving up (only to avoid
/// hanging: executions here end within seconds).
pub const LIMIT: Duration = Duration::from_secs(30);

/// The coordinator's options for these tests: 4 partitions, 2 s leases, the
/// API served.
pub fn options() -> ClusterOptions {
    let mut o = ClusterOptions {
        partitions: 4,
        api: true,
        ..ClusterOptions::default()
    };
    o.settings.lease_ttl = Duration::from_secs(2);
    o
}

/// One deployment: server, coordinator, participants, API client.
pub struct Env {
    pub server: NatsServer,
    pub nats: async_nats::Client,
    pub options: ClusterOptions,
    pub cluster: Option<ClusterHandle>,
    pub api: ApiClient,
    workers: Vec<(ShutdownHandle, JoinHandle<()>)>,
}

impl Env {
    /// A deployment with [`options`].
    pub async fn start() -> Env {
        Env::start_with(options()).await
    }

    /// A deployment with these coordinator options.
    pub async fn start_with(options: ClusterOptions) -> Env {
        Env::start_on(NatsServer::start().expect("nats-server"), options).await
    }

    /// A deployment on this server, with these coordinator options.
    pub async fn start_on(server: NatsServer, options: ClusterOptions) -> Env {
        let nats = sagaflow_nats::connect(&server.url())
            .await
            .expect("connect");
        let cluster = Cluster::start(nats.clone(), options.clone())
            .await
            .expect("cluster");
        let api = ApiClient::new(nats.clone(), Namespace::default())
            .with_timeout(Duration::from_secs(10));
        Env {
            server,
            nats,
            options,
            cluster: Some(cluster),
            api,
            workers: Vec::new(),
        }
    }

    /// Starts a participant process: `configure` registers its handlers
    /// (and options) on a builder using this deployment's settings.
    pub async fn worker(&mut self, configure: impl FnOnce(WorkerBuilder) -> WorkerBuilder) {
        let client = sagaflow_nats::connect(&self.server.url())
            .await
            .expect("connect worker");
        let builder = Worker::builder(client)
            .settings(self.options.settings.clone())
            .grace_period(Duration::from_millis(200));
        let worker = configure(builder).build().await.expect("worker");
        let stop = worker.shutdown_handle();
        let running = tokio::spawn(worker.run());
        self.workers.push((stop, running));
    }

    /// Creates (or versions) a state machine; panics with the API's error
    /// when the definition is refused.
    pub async fn deploy(&self, name: &str, definition: &str) -> u64 {
        self.api
            .create_state_machine(name, definition)
            .await
            .unwrap_or_else(|e| panic!("deploying {name}: {e:?}"))
            .version
    }

    /// Starts an execution through the API; returns its ARN.
    pub async fn start_execution(&self, machine: &str, name: &str, input: Value) -> String {
        self.api
            .start_execution(StartExecutionRequest {
                state_machine: machine.into(),
                version: None,
                name: Some(name.into()),
                input: Some(input),
                traceparent: None,
            })
            .await
            .unwrap_or_else(|e| panic!("starting {machine}/{name}: {e:?}"))
            .execution_arn
    }

    /// Waits (at most [`LIMIT`]) for an execution to end.
    pub async fn wait(&self, arn: &str) -> ExecutionDescription {
        self.api
            .wait_for_completion(arn, LIMIT)
            .await
            .unwrap_or_else(|e| panic!("waiting for {arn}: {e:?}"))
    }

    /// Starts an execution and waits for its end.
    pub async fn run(&self, machine: &str, name: &str, input: Value) -> ExecutionDescription {
        let arn = self.start_execution(machine, name, input).await;
        self.wait(&arn).await
    }

    /// The execution's description (panics if there is none). While a
    /// coordinator restarts, no one may answer the API for a moment: retry
    /// then, for a few seconds.
    pub async fn describe(&self, arn: &str) -> ExecutionDescription {
        let mut tries = 0;
        loop {
            match self.api.describe_execution(arn).await {
                Ok(d) => return d,
                Err(ApiClientError::NoResponders { .. } | ApiClientError::Timeout { .. })
                    if tries < 50 =>
                {
                    tries += 1;
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
                Err(e) => panic!("describing {arn}: {e:?}"),
            }
        }
    }

    /// Polls until `done` holds for the description (at most [`LIMIT`]).
    pub async fn wait_until(
        &self,
        arn: &str,
        done: impl Fn(&ExecutionDescription) -> bool,
    ) -> ExecutionDescription {
        let deadline = tokio::time::Instant::now() + LIMIT;
        loop {
            match self.api.describe_execution(arn).await {
                Ok(d) if done(&d) => return d,
                // Not there yet, or no coordinator answering for a moment
                // (one restarts): look again until the deadline.
                Ok(_)
                | Err(
                    ApiClientError::Api(_)
                    | ApiClientError::NoResponders { .. }
                    | ApiClientError::Timeout { .. },
                ) => {}
                Err(e) => panic!("describing {arn}: {e:?}"),
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "{arn}: condition not reached in {LIMIT:?}"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// The execution's history, as GetExecutionHistory returns it.
    pub async fn history(&self, arn: &str) -> Vec<Value> {
        self.api
            .execution_history(arn)
            .await
            .unwrap_or_else(|e| panic!("history of {arn}: {e:?}"))
            .events
    }

    /// The event types of the execution's history, in order.
    /// Waits until an execution's history shows an event of type `kind`
    /// (none while its start is still queued).
    pub async fn until_event(&self, arn: &str, kind: &str) {
        let deadline = tokio::time::Instant::now() + LIMIT;
        while !self
            .api
            .execution_history(arn)
            .await
            .is_ok_and(|h| h.events.iter().any(|e| e["type"] == kind))
        {
            assert!(
                tokio::time::Instant::now() < deadline,
                "no {kind} in the history of {arn}"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    pub async fn history_types(&self, arn: &str) -> Vec<String> {
        self.history(arn)
            .await
            .iter()
            .map(|e| e["type"].as_str().unwrap_or("?").to_string())
            .collect()
    }

    /// The inbox subject of an execution (as the engine and API use it).
    pub fn inbox_subject(&self, exec: &ExecutionRef) -> String {
        let store = self.cluster.as_ref().expect("running").store();
        store
            .infra()
            .ns()
            .inbox_subject(store.partition_of(exec), exec)
    }

    /// The inbox subject of `exec` on a partition that is not its own.
    pub fn wrong_inbox_subject(&self, exec: &ExecutionRef) -> String {
        let store = self.cluster.as_ref().expect("running").store();
        let wrong = (store.partition_of(exec) + 1) % store.partitions();
        store.infra().ns().inbox_subject(wrong, exec)
    }

    /// Turns the reads of KV bucket `bucket` (its name in the namespace,
    /// without `KV_`) off, or back on. With direct gets off its reads fail
    /// as when NATS is away; writes still work.
    pub async fn set_bucket_reads(&self, bucket: &str, allowed: bool) {
        let js = jetstream::new(self.nats.clone());
        let stream = format!("KV_{bucket}");
        let mut config = js
            .get_stream(&stream)
            .await
            .expect("bucket")
            .cached_info()
            .config
            .clone();
        config.allow_direct = allowed;
        js.update_stream(config).await.expect("bucket updated");
    }

    /// Publishes raw bytes to a JetStream subject and waits for the ack.
    pub async fn publish_raw(&self, subject: String, body: Vec<u8>) {
        let js = jetstream::new(self.nats.clone());
        js.publish(subject, body.into())
            .await
            .expect("publish")
            .await
            .expect("stored");
    }

    /// Waits (at most [`LIMIT`]) until the inbox, a work queue, is empty:
    /// every message in it was handled and acknowledged, and what a step
    /// recorded for it is in the history by then.
    pub async fn until_inbox_empty(&self) {
        let mut inbox = self
            .cluster
            .as_ref()
            .expect("running")
            .store()
            .infra()
            .inbox
            .clone();
        let deadline = std::time::Instant::now() + LIMIT;
        while inbox.info().await.expect("inbox info").state.messages > 0 {
            assert!(
                std::time::Instant::now() < deadline,
                "the inbox was not emptied"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Publishes a message to an execution's inbox.
    pub async fn publish_inbox(&self, exec: &ExecutionRef, message: &InboxMessage) {
        let body = serde_json::to_vec(message).expect("encode");
        self.publish_raw(self.inbox_subject(exec), body).await;
    }

    /// Stops the coordinator (it hands back its partitions) and starts a
    /// new one with the same options.
    pub async fn restart_coordinator(&mut self) {
        if let Some(cluster) = self.cluster.take() {
            cluster.shutdown().await;
        }
        let nats = sagaflow_nats::connect(&self.server.url())
            .await
            .expect("connect");
        self.cluster = Some(
            Cluster::start(nats, self.options.clone())
                .await
                .expect("cluster"),
        );
    }

    /// Stops the participants and the coordinator.
    pub async fn shutdown(mut self) {
        for (stop, _) in &self.workers {
            stop.shutdown();
        }
        for (_, running) in self.workers.drain(..) {
            let _ = tokio::time::timeout(Duration::from_secs(5), running).await;
        }
        if let Some(cluster) = self.cluster.take() {
            cluster.shutdown().await;
        }
    }
}

/// The events of a history with this type.
pub fn events_of<'a>(history: &'a [Value], kind: &str) -> Vec<&'a Value> {
    history.iter().filter(|e| e["type"] == kind).collect()
}

/// Asserts an execution ended with this status.
pub fn assert_status(d: &ExecutionDescription, status: ExecutionStatus) {
    assert_eq!(d.status, status, "{d:#?}");
}

/// The start of `exec` on version `version` of its machine, as the API puts
/// it in the inbox (seed 1).
pub fn start_message(exec: &ExecutionRef, version: u64, input: Value) -> InboxMessage {
    InboxMessage::StartExecution(StartExecution {
        execution_arn: exec.arn(),
        version,
        input,
        seed: 1,
        traceparent: None,
        parent: None,
    })
}
