//! NATS security: the example server configuration of `docs/examples/nats-server.conf`,
//! used as it is (only its nkeys, the client's password, the port and the
//! store directory are replaced), with a coordinator, a participant and an
//! API client each connected as its own user.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde_json::{Value, json};

use sagaflow_coordinator::cluster::client::{ApiClient, ApiClientError};
use sagaflow_coordinator::cluster::{Cluster, ClusterOptions};
use sagaflow_nats::{ConnectError, ConnectOptions, connect_resolved, connect_with};
use sagaflow_participant::{TaskContext, TaskError, Worker, handler_fn};
use sagaflow_protocol::Namespace;
use sagaflow_protocol::api::{ExecutionStatus, StartExecutionRequest};
use sagaflow_testkit::{NatsServer, ServerOptions};

/// The configuration shipped in the docs.
const CONFIG: &str = include_str!("../../../docs/examples/nats-server.conf");
const DOC_COORDINATOR_NKEY: &str = "UCV3PKZGUU3HAIIJF4ZS4G6EZK57PUUWOTP7TGNNUELNUKNFS3N5UYV7";
const DOC_PARTICIPANT_NKEY: &str = "UBWJ7TYDVEDBF4WANPOU2QWCYPDYYVG2JJPRXAU76OYAA4EFBIV55HSI";
const DOC_PASSWORD: &str = "password: \"change-me\"";
const DOC_PORT: &str = "port: 4222";
const DOC_STORE: &str = "store_dir: \"/var/lib/nats/jetstream\"";

const DEFINITION: &str = r#"{
  "StartAt": "BookFlight",
  "States": {
    "BookFlight": {"Type": "Task", "Resource": "book_flight", "ResultPath": "$.flight", "End": true}
  }
}"#;

/// Replaces `from` (which must occur exactly once) with `to`.
fn replace_once(text: &str, from: &str, to: &str) -> String {
    assert_eq!(
        text.matches(from).count(),
        1,
        "the example configuration no longer holds `{from}` exactly once"
    );
    text.replace(from, to)
}

/// The server, the seeds of its two nkey users and the client's password.
struct Deployment {
    server: NatsServer,
    _store: tempfile::TempDir,
    coordinator_seed: String,
    participant_seed: String,
    password: String,
}

fn start_server() -> Deployment {
    let coordinator = nkeys::KeyPair::new_user();
    let participant = nkeys::KeyPair::new_user();
    let password = format!("pw-{}", nkeys::KeyPair::new_user().public_key());
    let store = tempfile::tempdir().expect("store dir");
    let mut config = replace_once(CONFIG, DOC_COORDINATOR_NKEY, &coordinator.public_key());
    config = replace_once(&config, DOC_PARTICIPANT_NKEY, &participant.public_key());
    config = replace_once(&config, DOC_PASSWORD, &format!("password: \"{password}\""));
    // The test kit passes the port on the command line too (-p -1: a free
    // one); JetStream is enabled by the file's `jetstream` block alone.
    config = replace_once(&config, DOC_PORT, "port: -1");
    config = replace_once(
        &config,
        DOC_STORE,
        &format!("store_dir: {:?}", store.path().display().to_string()),
    );
    let server = NatsServer::start_with(ServerOptions {
        config_file: Some(config),
        jetstream: false,
        store_dir: None,
    })
    .expect("nats-server with the example configuration");
    Deployment {
        server,
        _store: store,
        coordinator_seed: coordinator.seed().expect("seed"),
        participant_seed: participant.seed().expect("seed"),
        password,
    }
}

/// The errors the server sent a connection (permission violations).
#[derive(Clone, Default)]
struct ServerErrors(Arc<Mutex<Vec<String>>>);

impl ServerErrors {
    fn all(&self) -> Vec<String> {
        self.0.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }

    /// Waits (at most 5 s) for an error mentioning `subject`.
    async fn wait_for(&self, subject: &str) -> String {
        for _ in 0..100 {
            if let Some(found) = self.all().into_iter().find(|e| e.contains(subject)) {
                return found;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        panic!("no server error about {subject}; got {:?}", self.all());
    }
}

/// Connects with `options`, recording the server's errors.
async fn connect_as(url: &str, options: &ConnectOptions) -> (async_nats::Client, ServerErrors) {
    let errors = ServerErrors::default();
    let mut resolved = options.resolve(url).expect("options");
    let sink = errors.clone();
    resolved.options = resolved.options.event_callback(move |event| {
        let sink = sink.clone();
        async move {
            if let async_nats::Event::ServerError(e) = event {
                sink.0
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .push(e.to_string());
            }
        }
    });
    let client = connect_resolved(resolved).await.expect("connect");
    (client, errors)
}

fn coordinator_options(d: &Deployment) -> ConnectOptions {
    ConnectOptions::new()
        .name("coordinator")
        .nkey_seed(&d.coordinator_seed)
        .inbox_prefix("_INBOX_coordinator")
}

fn participant_options(d: &Deployment) -> ConnectOptions {
    ConnectOptions::new()
        .name("participant")
        .nkey_seed(&d.participant_seed)
        .inbox_prefix("_INBOX_participant")
}

fn client_options(d: &Deployment) -> ConnectOptions {
    ConnectOptions::new()
        .name("client")
        .user_password("client", &d.password)
}

fn violations(log: &str) -> Vec<&str> {
    log.lines()
        .filter(|l| l.contains("Publish Violation") || l.contains("Subscription Violation"))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_role_runs_a_saga_with_the_example_permissions_and_nothing_more() {
    let d = start_server();
    let url = d.server.url();

    // The coordinator creates every stream and bucket and serves the API.
    let (coordinator, coordinator_errors) = connect_as(&url, &coordinator_options(&d)).await;
    let mut cluster_options = ClusterOptions {
        partitions: 4,
        api: true,
        ..ClusterOptions::default()
    };
    cluster_options.settings.lease_ttl = Duration::from_secs(2);
    // Ended executions are deleted 3 s after they stop: the coordinator's
    // purge of their history subjects and of the participant's idempotency
    // records runs under its permissions too.
    cluster_options.settings.retention = Duration::from_secs(3);
    cluster_options.reconcile_every = Duration::from_millis(300);
    let cluster = Cluster::start(coordinator.clone(), cluster_options.clone())
        .await
        .expect("the coordinator starts with its permissions");

    // The participant serves book_flight, with the idempotency store.
    let (participant, participant_errors) = connect_as(&url, &participant_options(&d)).await;
    let worker = Worker::builder(participant.clone())
        .settings(cluster_options.settings.clone())
        .grace_period(Duration::from_millis(200))
        .idempotency(true)
        .handler(
            "book_flight",
            handler_fn(|order: Value, ctx: TaskContext| async move {
                Ok::<_, TaskError>(json!({"booking": ctx.task_id, "for": order["who"]}))
            }),
        )
        .build()
        .await
        .expect("the participant starts with its permissions");
    let stop = worker.shutdown_handle();
    let running = tokio::spawn(worker.run());

    // The client deploys and runs a saga through the API.
    let (client, client_errors) = connect_as(&url, &client_options(&d)).await;
    let api = ApiClient::new(client.clone(), Namespace::default());
    api.create_state_machine("trip", DEFINITION)
        .await
        .expect("deploy as client");
    for name in ["one", "two"] {
        let started = api
            .start_execution(StartExecutionRequest {
                state_machine: "trip".into(),
                version: None,
                name: Some(name.into()),
                input: Some(json!({"who": name})),
                traceparent: None,
            })
            .await
            .expect("start as client");
        let done = api
            .wait_for_completion(&started.execution_arn, Duration::from_secs(30))
            .await
            .expect("wait as client");
        assert_eq!(done.status, ExecutionStatus::Succeeded, "{done:?}");
        assert_eq!(done.output.as_ref().unwrap()["flight"]["for"], json!(name));
        let history = api
            .execution_history(&started.execution_arn)
            .await
            .expect("history as client");
        assert!(history.events.len() >= 4, "{history:?}");
    }
    assert_eq!(api.list_state_machines().await.expect("list").len(), 1);

    // The coordinator acknowledged every inbox message (work-queue
    // retention: acknowledged messages are removed).
    let mut inbox = cluster.store().infra().inbox.clone();
    let mut left = u64::MAX;
    for _ in 0..100 {
        left = inbox.info().await.unwrap().state.messages;
        if left == 0 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(left, 0, "inbox messages left unacknowledged");

    // Retention: the first execution is deleted, history and index entry.
    let first = sagaflow_protocol::ExecutionRef::new("trip", "one")
        .unwrap()
        .arn();
    let mut gone = false;
    for _ in 0..200 {
        match api.describe_execution(&first).await {
            Err(e) if e.code() == Some("ExecutionDoesNotExist") => {
                gone = true;
                break;
            }
            _ => tokio::time::sleep(Duration::from_millis(50)).await,
        }
    }
    assert!(gone, "{first} was not deleted after its retention");
    assert!(api.execution_history(&first).await.is_err());

    // Nobody was refused anything so far.
    assert_eq!(coordinator_errors.all(), Vec::<String>::new());
    assert_eq!(participant_errors.all(), Vec::<String>::new());
    assert_eq!(client_errors.all(), Vec::<String>::new());
    assert_eq!(violations(&d.server.log()), Vec::<&str>::new());

    // The participant cannot write histories, start tasks, call the API,
    // read other handlers' tasks or snoop on other users' replies.
    participant
        .publish("sagaflow.history.0.forged", "{}".into())
        .await
        .unwrap();
    participant_errors
        .wait_for("Publish to \"sagaflow.history.0.forged\"")
        .await;
    participant
        .publish("sagaflow.task.book_flight", "{}".into())
        .await
        .unwrap();
    participant_errors
        .wait_for("Publish to \"sagaflow.task.book_flight\"")
        .await;
    let as_participant = ApiClient::new(participant.clone(), Namespace::default())
        .with_timeout(Duration::from_secs(1));
    let refused = as_participant.list_state_machines().await;
    assert!(
        matches!(refused, Err(ApiClientError::Timeout { .. })),
        "{refused:?}"
    );
    participant_errors
        .wait_for("Publish to \"sagaflow.api.machine.list\"")
        .await;
    let _snoop = participant.subscribe("_INBOX.>").await.unwrap();
    participant_errors
        .wait_for("Subscription to \"_INBOX.>\"")
        .await;
    let mut js = async_nats::jetstream::new(participant.clone());
    js.set_timeout(Duration::from_secs(1));
    let other = js
        .get_stream("SAGAFLOW_TASKS")
        .await
        .expect("stream info is allowed")
        .get_consumer::<async_nats::jetstream::consumer::pull::Config>("handler-cancel_flight")
        .await;
    assert!(other.is_err(), "another handler's consumer: {other:?}");
    participant_errors
        .wait_for("CONSUMER.INFO.SAGAFLOW_TASKS.handler-cancel_flight")
        .await;

    // The client cannot read histories nor publish tasks or inbox events.
    let mut js = async_nats::jetstream::new(client.clone());
    js.set_timeout(Duration::from_secs(1));
    let history = js.get_stream("SAGAFLOW_HISTORY").await;
    assert!(history.is_err(), "the client read the history stream");
    client_errors
        .wait_for("$JS.API.STREAM.INFO.SAGAFLOW_HISTORY")
        .await;
    let direct = js
        .get_stream_no_info("SAGAFLOW_HISTORY")
        .await
        .expect("a handle needs no request")
        .direct_get_last_for_subject("sagaflow.history.0.x")
        .await;
    assert!(direct.is_err(), "the client read the history directly");
    client_errors
        .wait_for("$JS.API.DIRECT.GET.SAGAFLOW_HISTORY")
        .await;
    client
        .publish("sagaflow.task.book_flight", "{}".into())
        .await
        .unwrap();
    client_errors
        .wait_for("Publish to \"sagaflow.task.book_flight\"")
        .await;
    client
        .publish("sagaflow.inbox.0.forged", "{}".into())
        .await
        .unwrap();
    client_errors
        .wait_for("Publish to \"sagaflow.inbox.0.forged\"")
        .await;

    // What they tried did not reach the streams: no task waits, and the
    // coordinator (allowed everything it needs) sees no forged history.
    let infra = cluster.store().infra().clone();
    let mut tasks = infra.tasks.clone();
    assert_eq!(tasks.info().await.unwrap().state.messages, 0);
    let forged = infra
        .history
        .get_last_raw_message_by_subject("sagaflow.history.0.forged")
        .await;
    assert!(forged.is_err(), "a forged history record was stored");
    assert_eq!(coordinator_errors.all(), Vec::<String>::new());

    // The server logged each refusal, naming the user.
    let log = d.server.log();
    let refused = violations(&log);
    for (who, subject) in [
        ("nkey:", "sagaflow.history.0.forged"),
        ("nkey:", "sagaflow.api.machine.list"),
        ("nkey:", "_INBOX.>"),
        ("user:client", "$JS.API.STREAM.INFO.SAGAFLOW_HISTORY"),
        ("user:client", "sagaflow.task.book_flight"),
    ] {
        assert!(
            refused
                .iter()
                .any(|l| l.contains(who) && l.contains(&format!("Subject \"{subject}\""))),
            "no violation of {who} on {subject} in {refused:#?}"
        );
    }
    stop.shutdown();
    running.await.unwrap();
    cluster.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wrong_credentials_are_refused_with_a_clear_error() {
    let d = start_server();
    let url = d.server.url();

    let wrong = connect_with(&url, &ConnectOptions::new().user_password("client", "nope"))
        .await
        .unwrap_err();
    assert!(matches!(wrong, ConnectError::Refused { .. }), "{wrong:?}");
    let text = wrong.to_string();
    assert!(
        text.contains("refused user 'client' with its password"),
        "{text}"
    );
    assert!(!text.contains("nope"), "the password is shown: {text}");

    let stranger = nkeys::KeyPair::new_user();
    let unknown = connect_with(
        &url,
        &ConnectOptions::new().nkey_seed(stranger.seed().unwrap()),
    )
    .await
    .unwrap_err();
    assert!(
        matches!(unknown, ConnectError::Refused { .. }),
        "{unknown:?}"
    );
    assert!(
        unknown
            .to_string()
            .contains(&format!("refused nkey {}", stranger.public_key())),
        "{unknown}"
    );

    let anonymous = connect_with(&url, &ConnectOptions::new())
        .await
        .unwrap_err();
    assert!(
        anonymous
            .to_string()
            .contains("refused a connection without credentials"),
        "{anonymous}"
    );

    // The seed file form, and credentials written in the URL, which
    // async-nats alone would ignore.
    let dir = tempfile::tempdir().unwrap();
    let seed_file = dir.path().join("participant.nk");
    std::fs::write(&seed_file, format!("{}\n", d.participant_seed)).unwrap();
    connect_with(
        &url,
        &ConnectOptions::new()
            .nkey_file(&seed_file)
            .inbox_prefix("_INBOX_participant"),
    )
    .await
    .expect("nkey seed file");
    let with_password = url.replace("nats://", &format!("nats://client:{}@", d.password));
    let client = sagaflow_nats::connect(&with_password)
        .await
        .expect("user and password in the URL");
    // The client may call the API (nobody serves it here).
    let api = ApiClient::new(client, Namespace::default()).with_timeout(Duration::from_secs(2));
    let none = api.list_state_machines().await;
    assert!(
        matches!(none, Err(ApiClientError::NoResponders { .. })),
        "{none:?}"
    );
    let wrong_in_url = url.replace("nats://", "nats://client:nope@");
    let e = sagaflow_nats::connect(&wrong_in_url).await.unwrap_err();
    assert!(
        e.to_string().contains("refused user 'client'") && !e.to_string().contains("nope"),
        "{e}"
    );
}
