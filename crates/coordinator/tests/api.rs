//! The API service against a real nats-server, without the engine: what the
//! API stores, what it publishes to inboxes, and how it answers bad input.
//! Executions are simulated by writing index entries and history batches
//! with the store.

use std::sync::Arc;
use std::time::Duration;

use base64::Engine as _;
use serde_json::{Value, json};

use sagaflow_asl::interp::{Command, Event, ExecutionInfo, Outcome};
use sagaflow_coordinator::cluster::api::{self, ApiOptions, Trigger};
use sagaflow_coordinator::cluster::client::{ApiClient, ApiClientError};
use sagaflow_coordinator::cluster::store::{ExecutionMeta, HistoryBatch, Store};
use sagaflow_coordinator::{HistoryEntry, HistoryItem};
use sagaflow_nats::Settings;
use sagaflow_protocol::api::{
    ExecutionDescription, ExecutionStatus, ListExecutions, Operation, StartExecutionRequest,
};
use sagaflow_protocol::{ExecutionRef, InboxMessage, Namespace};
use sagaflow_testkit::{NatsServer, ServerOptions};

const DEFINITION: &str = r#"{
  "StartAt": "Hello",
  "States": {"Hello": {"Type": "Pass", "Result": "hi", "End": true}}
}"#;

/// Small messages, to test the size limits cheaply.
const MAX_MESSAGE_BYTES: i32 = 64 * 1024;

struct Env {
    _server: NatsServer,
    store: Store,
    client: ApiClient,
    service: Option<api::ApiService>,
}

impl Env {
    async fn new() -> Env {
        let server = NatsServer::start().expect("nats-server");
        let nats = sagaflow_nats::connect(&server.url())
            .await
            .expect("connect");
        let settings = Settings {
            max_message_bytes: MAX_MESSAGE_BYTES,
            ..Settings::default()
        };
        let infra = sagaflow_nats::setup(nats.clone(), settings)
            .await
            .expect("setup");
        let store = Store::new(infra, 16);
        let options = ApiOptions {
            max_payload_bytes: 16 * 1024,
            ..ApiOptions::default()
        };
        let service = api::serve(store.clone(), options).await.expect("serve");
        let client =
            ApiClient::new(nats, Namespace::default()).with_timeout(Duration::from_secs(5));
        Env {
            _server: server,
            store,
            client,
            service: Some(service),
        }
    }

    async fn inbox_count(&self) -> u64 {
        self.store
            .infra()
            .inbox
            .get_info()
            .await
            .expect("inbox info")
            .state
            .messages
    }

    async fn last_inbox_message(&self, exec: &ExecutionRef) -> InboxMessage {
        let subject = self
            .store
            .infra()
            .ns()
            .inbox_subject(self.store.partition_of(exec), exec);
        let m = self
            .store
            .infra()
            .inbox
            .get_last_raw_message_by_subject(subject.as_str())
            .await
            .expect("inbox message");
        serde_json::from_slice(&m.payload).expect("inbox message decodes")
    }

    /// Simulates what the engine writes when an execution starts (and,
    /// with an outcome, when it ends).
    async fn simulate(&self, machine: &str, name: &str, input: Value, outcome: Option<Outcome>) {
        let exec = ExecutionRef::new(machine, name).unwrap();
        let at: jiff::Timestamp = "2024-01-01T00:00:00Z".parse().unwrap();
        let mut entries = vec![HistoryEntry {
            at,
            item: HistoryItem::Event(Event::ExecutionStarted {
                info: ExecutionInfo {
                    execution_id: exec.arn(),
                    execution_name: name.into(),
                    state_machine_id: sagaflow_protocol::state_machine_arn(machine),
                    state_machine_name: machine.into(),
                    role_arn: String::new(),
                    seed: 7,
                    rules: sagaflow_asl::interp::RULES,
                },
                input,
            }),
        }];
        let status = match &outcome {
            None => ExecutionStatus::Running,
            Some(Outcome::Succeeded { .. }) => ExecutionStatus::Succeeded,
            Some(Outcome::Failed { .. }) => ExecutionStatus::Failed,
            Some(Outcome::TimedOut { .. }) => ExecutionStatus::TimedOut,
            Some(Outcome::Aborted { .. }) => ExecutionStatus::Aborted,
        };
        if let Some(o) = outcome {
            entries.push(HistoryEntry {
                at,
                item: HistoryItem::Command(Command::Complete(o)),
            });
        }
        let batch = HistoryBatch {
            meta: Some(ExecutionMeta {
                state_machine: machine.into(),
                version: 1,
                traceparent: None,
                execution_span: None,
                parent: None,
            }),
            entries,
            part: None,
        };
        self.store
            .append_history(&exec, 0, &batch)
            .await
            .expect("append history");
        self.index(machine, name, status).await;
    }

    async fn index(&self, machine: &str, name: &str, status: ExecutionStatus) {
        self.index_at(machine, name, status, "2024-01-01T00:00:00Z")
            .await;
    }

    /// [`Env::index`] with this start date.
    async fn index_at(&self, machine: &str, name: &str, status: ExecutionStatus, start: &str) {
        let exec = ExecutionRef::new(machine, name).unwrap();
        self.store
            .put_execution(&ExecutionDescription {
                execution_arn: exec.arn(),
                name: name.into(),
                state_machine: machine.into(),
                version: 1,
                status,
                start_date: start.into(),
                stop_date: None,
                input: None,
                output: None,
                error: None,
                cause: None,
                redrive_count: 0,
                trace_id: None,
            })
            .await
            .expect("index");
    }

    /// Appends a history in which task `task_id` was scheduled with `token`.
    async fn schedule(&self, exec: &ExecutionRef, task_id: &str, token: &str) {
        use sagaflow_asl::interp::TaskRequest;
        let request = TaskRequest {
            task_id: task_id.into(),
            state_name: "Wait".into(),
            resource: "approve.waitForTaskToken".into(),
            input: Arc::new(json!({})),
            attempt: 0,
            timeout_seconds: None,
            heartbeat_seconds: None,
            task_token: Some(token.to_string()),
            credentials: None,
        };
        let batch = HistoryBatch {
            meta: None,
            entries: vec![HistoryEntry {
                at: "2024-01-01T00:00:00Z".parse().expect("timestamp"),
                item: HistoryItem::Command(Command::ScheduleTask(request)),
            }],
            part: None,
        };
        self.store
            .append_history(
                exec,
                self.store
                    .history_last_sequence(exec)
                    .await
                    .expect("last sequence"),
                &batch,
            )
            .await
            .expect("append");
    }
}

fn start(machine: &str, name: Option<&str>, input: Value) -> StartExecutionRequest {
    StartExecutionRequest {
        state_machine: machine.into(),
        version: None,
        name: name.map(str::to_string),
        input: Some(input),
        traceparent: None,
    }
}

fn code(result: Result<impl std::fmt::Debug, ApiClientError>) -> String {
    match result {
        Err(ApiClientError::Api(e)) => e.code,
        other => panic!("expected an API error, got {other:?}"),
    }
}

fn token(execution: &str, task: &str) -> String {
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(format!("{execution}\n{task}\nnonce"))
}

#[tokio::test]
async fn state_machines_are_created_described_and_listed() {
    let env = Env::new().await;
    let c = &env.client;
    let v1 = c.create_state_machine("hello", DEFINITION).await.unwrap();
    assert_eq!(v1.version, 1);
    assert_eq!(
        v1.arn,
        "arn:aws:states:local:000000000000:stateMachine:hello"
    );
    assert!(
        v1.created.parse::<jiff::Timestamp>().is_ok(),
        "{}",
        v1.created
    );
    // The same definition again: the same version (a retried deploy adds
    // nothing).
    let again = c.create_state_machine("hello", DEFINITION).await.unwrap();
    assert_eq!(again, v1);
    let changed = DEFINITION.replacen('{', r#"{"Comment": "v2", "#, 1);
    let v2 = c.create_state_machine("hello", &changed).await.unwrap();
    assert_eq!(v2.version, 2);
    assert_eq!(v2.definition, changed);
    assert_eq!(
        c.describe_state_machine("hello", None)
            .await
            .unwrap()
            .version,
        2
    );
    let d1 = c.describe_state_machine("hello", Some(1)).await.unwrap();
    assert_eq!(d1.version, 1);
    assert_eq!(d1.definition, DEFINITION);
    assert_eq!(
        code(c.describe_state_machine("hello", Some(9)).await),
        "StateMachineDoesNotExist"
    );
    assert_eq!(
        code(c.describe_state_machine("nope", None).await),
        "StateMachineDoesNotExist"
    );
    c.create_state_machine("another", DEFINITION).await.unwrap();
    let list = c.list_state_machines().await.unwrap();
    let names: Vec<(&str, u64)> = list
        .iter()
        .map(|m| (m.name.as_str(), m.latest_version))
        .collect();
    assert_eq!(names, vec![("another", 1), ("hello", 2)]);

    assert_eq!(
        code(c.create_state_machine("bad name", DEFINITION).await),
        "InvalidName"
    );
    // Every validation error comes back, located.
    let invalid = r#"{"StartAt": "Nowhere", "States": {"A": {"Type": "Pass", "Next": "Gone"}}}"#;
    match c.create_state_machine("broken", invalid).await {
        Err(ApiClientError::Api(e)) => {
            assert_eq!(e.code, "InvalidDefinition");
            let details = e.details.expect("details").as_array().cloned().unwrap();
            assert!(details.len() >= 2, "{details:?}");
            for d in &details {
                assert!(d["pointer"].is_string() && d["code"].is_string(), "{d}");
                assert!(d["line"].is_u64(), "{d}");
            }
            let pointers: Vec<&str> = details
                .iter()
                .map(|d| d["pointer"].as_str().unwrap())
                .collect();
            assert!(pointers.contains(&"/StartAt"), "{pointers:?}");
            assert!(pointers.contains(&"/States/A/Next"), "{pointers:?}");
        }
        other => panic!("expected InvalidDefinition, got {other:?}"),
    }
    assert_eq!(
        code(c.create_state_machine("broken", "not json").await),
        "InvalidDefinition"
    );
    assert_eq!(
        code(c.describe_state_machine("broken", None).await),
        "StateMachineDoesNotExist"
    );
}

/// A version stored whose creator died before making it the latest (an
/// orphan `v.NAME.N` while `m.NAME` still says N-1) does not block the
/// machine: the next create adopts it as version N and makes its own N+1.
#[tokio::test]
async fn a_version_left_behind_by_a_dead_creator_does_not_block_the_machine() {
    let env = Env::new().await;
    let c = &env.client;
    assert_eq!(
        c.create_state_machine("m", DEFINITION)
            .await
            .unwrap()
            .version,
        1
    );
    let name = base64::engine::general_purpose::URL_SAFE_NO_PAD.encode("m");
    let orphan = json!({
        "name": "m",
        "arn": "arn:aws:states:local:000000000000:stateMachine:m",
        "version": 2,
        "definition": DEFINITION,
        "created": "2026-01-01T00:00:00Z",
    });
    env.store
        .infra()
        .machines
        .create(
            format!("v.{name}.2"),
            serde_json::to_vec(&orphan).unwrap().into(),
        )
        .await
        .expect("orphan stored");
    // A new definition (the same one would be version 1 again).
    let changed = DEFINITION.replacen('{', r#"{"Comment": "v3", "#, 1);
    let v = c
        .create_state_machine("m", &changed)
        .await
        .expect("created");
    assert_eq!(v.version, 3);
    assert_eq!(
        c.describe_state_machine("m", None).await.unwrap().version,
        3
    );
    assert_eq!(
        c.describe_state_machine("m", Some(2))
            .await
            .unwrap()
            .version,
        2
    );
}

#[tokio::test]
async fn start_publishes_one_start_per_execution_name() {
    let env = Env::new().await;
    let c = &env.client;
    assert_eq!(
        code(
            c.start_execution(start("hello", Some("e1"), json!({})))
                .await
        ),
        "StateMachineDoesNotExist"
    );
    c.create_state_machine("hello", DEFINITION).await.unwrap();

    let first = c
        .start_execution(start("hello", Some("e1"), json!({"a": 1})))
        .await
        .unwrap();
    assert!(!first.already_started);
    assert_eq!(first.version, 1);
    assert_eq!(
        first.execution_arn,
        "arn:aws:states:local:000000000000:execution:hello:e1"
    );
    let again = c
        .start_execution(start("hello", Some("e1"), json!({"a": 1})))
        .await
        .unwrap();
    assert!(again.already_started);
    assert_eq!(again.execution_arn, first.execution_arn);
    assert_eq!(env.inbox_count().await, 1);
    // Still queued, with another input: refused.
    assert_eq!(
        code(
            c.start_execution(start("hello", Some("e1"), json!({"a": 2})))
                .await
        ),
        "ExecutionAlreadyExists"
    );
    assert_eq!(env.inbox_count().await, 1);

    let exec = ExecutionRef::new("hello", "e1").unwrap();
    match env.last_inbox_message(&exec).await {
        InboxMessage::StartExecution(s) => {
            assert_eq!(s.execution_arn, exec.arn());
            assert_eq!(s.input, json!({"a": 1}));
            assert_eq!(s.version, 1);
            assert_eq!(s.parent, None);
        }
        other => panic!("expected a start, got {other:?}"),
    }
    // Described right after the start, before any coordinator took it (as
    // on AWS, it exists and runs), with its queued input; its history is
    // empty so far; it is not redrivable.
    let queued = c.describe_execution(&exec.arn()).await.unwrap();
    assert_eq!(queued.status, ExecutionStatus::Running);
    assert_eq!(queued.input, Some(json!({"a": 1})));
    assert_eq!(queued.version, 1);
    assert!(
        queued.start_date.parse::<jiff::Timestamp>().is_ok(),
        "{}",
        queued.start_date
    );
    assert!(
        c.execution_history(&exec.arn())
            .await
            .unwrap()
            .events
            .is_empty()
    );
    assert_eq!(
        code(c.redrive_execution(&exec.arn()).await),
        "ExecutionNotRedrivable"
    );
    // A stop right after the start, before any coordinator took it (none
    // runs here), is not refused as unknown: it goes in after the start.
    c.stop_execution(&exec.arn(), Some("Halt".into()), None)
        .await
        .expect("stop of a queued start");
    assert!(
        matches!(env.last_inbox_message(&exec).await,
            InboxMessage::StopExecution { ref error, .. } if error.as_deref() == Some("Halt")),
        "the stop is queued after the start"
    );
    // Still described from its queued start, and still the same start for
    // a repeated one (with a stop queued after it).
    assert_eq!(
        c.describe_execution(&exec.arn()).await.unwrap().status,
        ExecutionStatus::Running
    );
    let repeated = c
        .start_execution(start("hello", Some("e1"), json!({"a": 1})))
        .await
        .unwrap();
    assert!(repeated.already_started);
    let refused = c
        .start_execution(start("hello", Some("e1"), json!({"a": 3})))
        .await;
    assert!(
        matches!(&refused, Err(ApiClientError::Api(e))
            if e.code == "ExecutionAlreadyExists" && e.message.contains("different input")),
        "{refused:?}"
    );
    assert_eq!(
        code(
            c.stop_execution(
                &ExecutionRef::new("hello", "never").unwrap().arn(),
                None,
                None
            )
            .await
        ),
        "ExecutionDoesNotExist"
    );

    // Concurrent starts of one name: exactly one is the real start.
    let mut handles = Vec::new();
    for _ in 0..6 {
        let c = c.clone();
        handles.push(tokio::spawn(async move {
            c.start_execution(start("hello", Some("race"), json!([1, 2])))
                .await
        }));
    }
    let mut fresh = 0;
    for h in handles {
        if !h.await.unwrap().unwrap().already_started {
            fresh += 1;
        }
    }
    assert_eq!(fresh, 1);
    assert_eq!(env.inbox_count().await, 3);

    // Without a name: a fresh one each time, input defaults to {}.
    let a = c
        .start_execution(StartExecutionRequest {
            state_machine: "hello".into(),
            version: None,
            name: None,
            input: None,
            traceparent: Some("00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01".into()),
        })
        .await
        .unwrap();
    let b = c
        .start_execution(start("hello", None, json!({})))
        .await
        .unwrap();
    assert_ne!(a.execution_arn, b.execution_arn);
    assert_eq!(env.inbox_count().await, 5);
    match env
        .last_inbox_message(&ExecutionRef::from_arn(&a.execution_arn).unwrap())
        .await
    {
        InboxMessage::StartExecution(s) => {
            assert_eq!(s.input, json!({}));
            assert!(s.traceparent.is_some());
        }
        other => panic!("expected a start, got {other:?}"),
    }

    // Limits and names.
    let big = json!({"x": "y".repeat(20 * 1024)});
    assert_eq!(
        code(c.start_execution(start("hello", Some("big"), big)).await),
        "PayloadTooLarge"
    );
    assert_eq!(
        code(
            c.start_execution(start("hello", Some("a:b"), json!({})))
                .await
        ),
        "InvalidName"
    );
    let mut versioned = start("hello", Some("v9"), json!({}));
    versioned.version = Some(9);
    assert_eq!(
        code(c.start_execution(versioned).await),
        "StateMachineDoesNotExist"
    );
    assert_eq!(env.inbox_count().await, 5);
}

#[tokio::test]
async fn started_executions_are_idempotent_and_described() {
    let env = Env::new().await;
    let c = &env.client;
    c.create_state_machine("hello", DEFINITION).await.unwrap();
    env.simulate("hello", "running", json!({"n": 1}), None)
        .await;
    env.simulate(
        "hello",
        "done",
        json!({"n": 2}),
        Some(Outcome::Succeeded {
            output: Arc::new(json!("hi")),
        }),
    )
    .await;
    env.simulate(
        "hello",
        "failed",
        json!({"n": 3}),
        Some(Outcome::Failed {
            error: "Boom".into(),
            cause: "it broke".into(),
        }),
    )
    .await;

    let same = c
        .start_execution(start("hello", Some("running"), json!({"n": 1})))
        .await
        .unwrap();
    assert!(same.already_started);
    assert_eq!(same.version, 1);
    assert_eq!(
        code(
            c.start_execution(start("hello", Some("running"), json!({"n": 9})))
                .await
        ),
        "ExecutionAlreadyExists"
    );
    assert_eq!(
        code(
            c.start_execution(start("hello", Some("done"), json!({})))
                .await
        ),
        "ExecutionAlreadyExists"
    );
    assert_eq!(env.inbox_count().await, 0, "nothing published");

    let arn = |name: &str| ExecutionRef::new("hello", name).unwrap().arn();
    let running = c.describe_execution(&arn("running")).await.unwrap();
    assert_eq!(running.status, ExecutionStatus::Running);
    assert_eq!(running.input, Some(json!({"n": 1})));
    assert_eq!(running.output, None);
    let done = c.describe_execution(&arn("done")).await.unwrap();
    assert_eq!(done.status, ExecutionStatus::Succeeded);
    assert_eq!(done.output, Some(json!("hi")));
    let failed = c.describe_execution(&arn("failed")).await.unwrap();
    assert_eq!(failed.error.as_deref(), Some("Boom"));
    assert_eq!(failed.cause.as_deref(), Some("it broke"));
    assert_eq!(
        code(c.describe_execution(&arn("missing")).await),
        "ExecutionDoesNotExist"
    );
    assert_eq!(
        code(c.describe_execution("not an arn").await),
        "InvalidName"
    );

    let history = c.execution_history(&arn("done")).await.unwrap();
    let types: Vec<&str> = history
        .events
        .iter()
        .map(|e| e["type"].as_str().unwrap())
        .collect();
    // Only the start and the completion were stored; the state records in
    // between are derived by replaying the events (the effects agree).
    assert_eq!(
        types,
        vec![
            "ExecutionStarted",
            "PassStateEntered",
            "PassStateExited",
            "ExecutionSucceeded"
        ]
    );
    assert_eq!(
        history.events[0]["executionStartedEventDetails"]["input"],
        json!("{\"n\":2}")
    );
    assert_eq!(
        code(c.execution_history(&arn("missing")).await),
        "ExecutionDoesNotExist"
    );

    let all = c.list_executions(Some("hello"), None).await.unwrap();
    assert_eq!(all.len(), 3);
    // Page by page (the client above follows the pages itself).
    let page = |max: usize, token: Option<String>| ListExecutions {
        state_machine: Some("hello".into()),
        status: None,
        max_results: Some(max),
        next_token: token,
    };
    let first = c.list_executions_page(&page(2, None)).await.unwrap();
    assert_eq!(first.executions.len(), 2);
    let token = first.next_token.clone().expect("more to come");
    let second = c.list_executions_page(&page(2, Some(token))).await.unwrap();
    assert_eq!(second.executions.len(), 1);
    assert_eq!(second.next_token, None);
    let mut names: Vec<String> = first
        .executions
        .iter()
        .chain(&second.executions)
        .map(|e| e.name.clone())
        .collect();
    names.sort();
    assert_eq!(names, ["done", "failed", "running"]);
    // A page size out of range is brought into it.
    let all_at_once = c.list_executions_page(&page(0, None)).await.unwrap();
    assert_eq!(all_at_once.executions.len(), 1);
    let running = c
        .list_executions(None, Some(ExecutionStatus::Running))
        .await
        .unwrap();
    assert_eq!(running.len(), 1);
    assert_eq!(running[0].name, "running");
    assert!(
        c.list_executions(Some("other"), None)
            .await
            .unwrap()
            .is_empty()
    );

    // Stop and redrive publish to the inbox; refusals publish nothing.
    c.stop_execution(&arn("running"), Some("Halt".into()), None)
        .await
        .unwrap();
    assert_eq!(env.inbox_count().await, 1);
    assert!(matches!(
        env.last_inbox_message(&ExecutionRef::new("hello", "running").unwrap()).await,
        InboxMessage::StopExecution { error: Some(e), cause: None, .. } if e == "Halt"
    ));
    c.stop_execution(&arn("done"), None, None).await.unwrap();
    assert_eq!(
        env.inbox_count().await,
        1,
        "a finished execution is left alone"
    );
    assert_eq!(
        code(c.stop_execution(&arn("missing"), None, None).await),
        "ExecutionDoesNotExist"
    );
    assert_eq!(
        code(c.redrive_execution(&arn("running")).await),
        "ExecutionNotRedrivable"
    );
    assert_eq!(
        code(c.redrive_execution(&arn("done")).await),
        "ExecutionNotRedrivable"
    );
    c.redrive_execution(&arn("failed")).await.unwrap();
    c.redrive_execution(&arn("failed")).await.unwrap();
    assert_eq!(env.inbox_count().await, 2, "one redrive per redrive count");
}

/// More executions than one reply can hold (messages of 64 KiB here):
/// the list comes page by page, every one of them in it, newest first
/// across the pages (not in the order of their names or keys).
#[tokio::test]
async fn many_executions_are_listed_page_by_page() {
    let env = Env::new().await;
    let c = &env.client;
    c.create_state_machine("hello", DEFINITION).await.unwrap();
    let writes = (0..400).map(|i| {
        let env = &env;
        // Start dates in another order than the names; some shared.
        let second = (i * 7919) % 300;
        let start = format!("2024-01-01T00:{:02}:{:02}Z", second / 60, second % 60);
        async move {
            env.index_at(
                "hello",
                &format!("e{i:03}"),
                ExecutionStatus::Succeeded,
                &start,
            )
            .await
        }
    });
    futures::future::join_all(writes).await;
    // Page by page, small pages: one order across them.
    let mut listed = Vec::new();
    let mut token = None;
    let mut pages = 0;
    loop {
        let page = c
            .list_executions_page(&ListExecutions {
                state_machine: Some("hello".into()),
                status: None,
                max_results: Some(37),
                next_token: token.take(),
            })
            .await
            .unwrap();
        assert!(page.executions.len() <= 37);
        pages += 1;
        listed.extend(page.executions);
        match page.next_token {
            Some(t) => token = Some(t),
            None => break,
        }
    }
    assert_eq!(pages, 11);
    let order: Vec<(String, String)> = listed
        .iter()
        .map(|e| (e.start_date.clone(), e.execution_arn.clone()))
        .collect();
    let mut expected = order.clone();
    expected.sort_by(|a, b| b.0.cmp(&a.0).then(a.1.cmp(&b.1)));
    expected.dedup();
    assert_eq!(order, expected, "newest first across pages, none twice");
    assert_eq!(order.len(), 400);
    // A token that is not one of ours.
    let refused = c
        .list_executions_page(&ListExecutions {
            state_machine: None,
            status: None,
            max_results: None,
            next_token: Some("e.3.abc".into()),
        })
        .await;
    assert_eq!(code(refused), "InvalidRequest");
    let all = c
        .list_executions(Some("hello"), None)
        .await
        .expect("listed");
    assert_eq!(all.len(), 400);
    let mut names: Vec<&str> = all.iter().map(|e| e.name.as_str()).collect();
    names.dedup();
    assert_eq!(names.len(), 400, "no execution twice");
    let first = c
        .list_executions_page(&ListExecutions {
            state_machine: None,
            status: None,
            max_results: None,
            next_token: None,
        })
        .await
        .unwrap();
    assert!(first.executions.len() < 400, "{}", first.executions.len());
    assert!(first.next_token.is_some());
}

#[tokio::test]
async fn task_callbacks() {
    let env = Env::new().await;
    let c = &env.client;
    assert_eq!(
        code(c.send_task_success("garbage!", json!({})).await),
        "InvalidToken"
    );
    assert_eq!(
        code(c.send_task_heartbeat(&token("not-an-arn", "T@0#0")).await),
        "InvalidToken"
    );
    let exec = ExecutionRef::new("hello", "cb").unwrap();
    assert_eq!(
        code(
            c.send_task_failure(&token(&exec.arn(), "T@0#0"), None, None)
                .await
        ),
        "TaskDoesNotExist"
    );
    env.index("hello", "cb", ExecutionStatus::Running).await;
    let t = token(&exec.arn(), "Wait@0#0");
    // Until the history says the task was given this token, the token is
    // not valid, though its execution and task decode.
    assert_eq!(
        code(c.send_task_success(&t, json!({"ok": true})).await),
        "InvalidToken"
    );
    env.schedule(&exec, "Wait@0#0", &token(&exec.arn(), "Wait@0#0"))
        .await;
    let forged = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .encode(format!("{}\nWait@0#0\nguessed", exec.arn()));
    assert_eq!(
        code(c.send_task_success(&forged, json!({"ok": true})).await),
        "InvalidToken",
        "a token whose nonce was not issued is refused"
    );
    c.send_task_success(&t, json!({"ok": true})).await.unwrap();
    assert_eq!(
        env.last_inbox_message(&exec).await,
        InboxMessage::TaskSucceeded {
            execution_arn: exec.arn(),
            task_id: "Wait@0#0".into(),
            output: json!({"ok": true}),
            callback: true,
        }
    );
    // A second answer while the first waits in the inbox: the task no
    // longer waits for one (AWS's TaskTimedOut), and nothing more is queued.
    let queued = env.inbox_count().await;
    assert_eq!(
        code(c.send_task_failure(&t, None, Some("no".into())).await),
        "TaskTimedOut"
    );
    assert_eq!(
        code(c.send_task_success(&t, json!({"again": true})).await),
        "TaskTimedOut"
    );
    // The same token read from a file, with its line end: the same task.
    assert_eq!(
        code(c.send_task_success(&format!(" {t}\n"), json!({})).await),
        "TaskTimedOut"
    );
    assert_eq!(env.inbox_count().await, queued);
    // Another task's failure goes in.
    env.schedule(&exec, "Wait@1#0", &token(&exec.arn(), "Wait@1#0"))
        .await;
    let t1 = token(&exec.arn(), "Wait@1#0");
    c.send_task_failure(&t1, None, Some("no".into()))
        .await
        .unwrap();
    assert_eq!(
        env.last_inbox_message(&exec).await,
        InboxMessage::TaskFailed {
            execution_arn: exec.arn(),
            task_id: "Wait@1#0".into(),
            error: "States.TaskFailed".into(),
            cause: "no".into(),
            callback: true,
        }
    );
    // Heartbeats are not answers: any number of them.
    c.send_task_heartbeat(&t).await.unwrap();
    c.send_task_heartbeat(&t).await.unwrap();
    assert_eq!(
        env.last_inbox_message(&exec).await,
        InboxMessage::TaskHeartbeat {
            execution_arn: exec.arn(),
            task_id: "Wait@0#0".into(),
        }
    );
    assert_eq!(
        code(
            c.send_task_success(&t, json!({"x": "y".repeat(20 * 1024)}))
                .await
        ),
        "PayloadTooLarge"
    );
    env.index("hello", "cb", ExecutionStatus::Succeeded).await;
    // AWS's answer for a task closed or an execution ended.
    assert_eq!(code(c.send_task_heartbeat(&t).await), "TaskTimedOut");
}

#[tokio::test]
async fn bad_requests_get_errors_and_the_service_keeps_working() {
    let env = Env::new().await;
    let c = &env.client;
    let raw = |op, body: &[u8]| c.call_raw::<Value>(op, body.to_vec());
    assert_eq!(
        code(raw(Operation::StartExecution, b"{not json").await),
        "InvalidRequest"
    );
    assert_eq!(
        code(raw(Operation::StartExecution, br#"{"stateMachine": 5}"#).await),
        "InvalidRequest"
    );
    assert_eq!(
        code(raw(Operation::CreateStateMachine, b"").await),
        "InvalidRequest"
    );
    assert_eq!(
        code(raw(Operation::DescribeExecution, b"[]").await),
        "InvalidRequest"
    );
    assert_eq!(
        code(raw(Operation::SendTaskSuccess, b"\xff\xfe").await),
        "InvalidRequest"
    );
    let huge = vec![b' '; MAX_MESSAGE_BYTES as usize + 1];
    assert_eq!(
        code(raw(Operation::CreateStateMachine, &huge).await),
        "PayloadTooLarge"
    );
    // An empty body is fine for the list operations.
    assert!(raw(Operation::ListStateMachines, b"").await.is_ok());
    assert!(raw(Operation::ListExecutions, b"").await.is_ok());

    // Errors also carry the service error headers.
    let nats = env.store.infra().client.clone();
    let reply = nats
        .request(
            Namespace::default().api_subject(Operation::DescribeExecution),
            "{".into(),
        )
        .await
        .unwrap();
    let headers = reply.headers.expect("error headers");
    assert_eq!(
        headers.get("Nats-Service-Error-Code").unwrap().as_str(),
        "400"
    );
    assert!(
        headers
            .get("Nats-Service-Error")
            .unwrap()
            .as_str()
            .starts_with("InvalidRequest: ")
    );
    let body: Value = serde_json::from_slice(&reply.payload).unwrap();
    assert_eq!(body["error"]["code"], json!("InvalidRequest"));

    // Still serving.
    c.create_state_machine("hello", DEFINITION).await.unwrap();
    assert_eq!(c.list_state_machines().await.unwrap().len(), 1);

    // A malformed trace context (here with a line break, which no header
    // may hold) is ignored, as W3C asks: the start is answered and stored.
    for traceparent in [
        "00-a\nb",
        "01-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01-x\r\ny",
    ] {
        let started = raw(
            Operation::StartExecution,
            json!({"stateMachine": "hello", "traceparent": traceparent})
                .to_string()
                .as_bytes(),
        )
        .await
        .expect("started");
        assert_eq!(started["alreadyStarted"], json!(false), "{started}");
    }
}

/// An error quoting a rejected value at length still fits in a reply (it
/// went out twice, in the body and the `Nats-Service-Error` header, and was
/// refused by the broker: the caller waited for its time-out).
#[tokio::test]
async fn an_error_quoting_a_long_value_is_answered() {
    let server = NatsServer::start_with(ServerOptions {
        config_file: Some("max_payload: 65536".into()),
        ..ServerOptions::default()
    })
    .expect("nats-server");
    let nats = sagaflow_nats::connect(&server.url())
        .await
        .expect("connect");
    let infra = sagaflow_nats::setup(nats.clone(), Settings::default())
        .await
        .expect("setup");
    let store = Store::new(infra, 16);
    let _service = api::serve(store, ApiOptions::default())
        .await
        .expect("serve");
    let client = ApiClient::new(nats, Namespace::default()).with_timeout(Duration::from_secs(5));
    // A request of 40 KB: under the 64 KiB limit, its error twice over it.
    let long_arn = format!(
        "arn:aws:states:local:000000000000:execution:hello:{}",
        "n".repeat(40 * 1024)
    );
    let reply = client
        .call_raw::<Value>(
            Operation::DescribeExecution,
            json!({"executionArn": long_arn}).to_string().into_bytes(),
        )
        .await;
    assert_eq!(code(reply), "InvalidName");
}

/// More requests at once than a coordinator handles and queues are refused
/// at once (`ThrottlingException`, not handled), instead of piling up in
/// memory; the client sends them again.
#[tokio::test]
async fn requests_over_the_queue_are_throttled_and_the_client_retries() {
    let server = NatsServer::start().expect("nats-server");
    let nats = sagaflow_nats::connect(&server.url())
        .await
        .expect("connect");
    let infra = sagaflow_nats::setup(nats.clone(), Settings::default())
        .await
        .expect("setup");
    let store = Store::new(infra, 4);
    let options = ApiOptions {
        max_in_flight: 1,
        max_queued: 0,
        ..ApiOptions::default()
    };
    let _service = api::serve(store, options).await.expect("serve");
    let client = ApiClient::new(nats.clone(), Namespace::default());
    client
        .create_state_machine("hello", DEFINITION)
        .await
        .unwrap();
    // Thirty at once, without the client's retries: one is handled at a
    // time, the others are refused.
    let subject = Namespace::default().api_subject(Operation::ListStateMachines);
    let replies =
        futures::future::join_all((0..30).map(|_| nats.request(subject.clone(), "".into()))).await;
    let mut throttled = 0;
    let mut answered = 0;
    for reply in replies {
        let reply = reply.expect("a reply");
        let body: Value = serde_json::from_slice(&reply.payload).unwrap();
        if body["error"]["code"] == json!("ThrottlingException") {
            throttled += 1;
            assert_eq!(
                reply
                    .headers
                    .unwrap()
                    .get("Nats-Service-Error-Code")
                    .unwrap()
                    .as_str(),
                "429"
            );
        } else {
            assert_eq!(body["ok"].as_array().map(Vec::len), Some(1), "{body}");
            answered += 1;
        }
    }
    assert!(answered >= 1);
    assert!(throttled >= 1, "none of 30 requests at once was throttled");
    // A client that waits for ever (no overflow computing its deadline).
    let patient = ApiClient::new(nats.clone(), Namespace::default()).with_timeout(Duration::MAX);
    assert_eq!(patient.list_state_machines().await.unwrap().len(), 1);
    // Through the client: every one is answered in the end.
    let listed = futures::future::join_all((0..30).map(|_| client.list_state_machines())).await;
    for l in listed {
        assert_eq!(l.expect("listed after retries").len(), 1);
    }
}

#[tokio::test]
async fn no_responders_without_a_service() {
    let mut env = Env::new().await;
    env.client.list_state_machines().await.unwrap();
    env.service.take().unwrap().stop().await;
    // Let the unsubscriptions reach the server.
    let mut err = None;
    for _ in 0..50 {
        match env.client.list_state_machines().await {
            Err(e @ ApiClientError::NoResponders { .. }) => {
                err = Some(e);
                break;
            }
            _ => tokio::time::sleep(Duration::from_millis(20)).await,
        }
    }
    let err = err.expect("NoResponders once the service stopped");
    let text = err.to_string();
    assert!(text.contains("sagaflow.api.machine.list"), "{text}");
    assert!(text.contains("sagaflow coordinator"), "{text}");
    // Another namespace has no service at all.
    let other = ApiClient::new(
        env.store.infra().client.clone(),
        Namespace::new("elsewhere").unwrap(),
    );
    assert!(matches!(
        other
            .describe_execution("arn:aws:states:local:0:execution:a:b")
            .await,
        Err(ApiClientError::NoResponders { .. })
    ));
}

/// Two triggers on overlapping subjects each start their machine for one
/// message (each has its own queue group).
#[tokio::test]
async fn overlapping_triggers_each_start_their_machine() {
    let env = Env::new().await;
    for machine in ["orders", "audit"] {
        env.client
            .create_state_machine(machine, DEFINITION)
            .await
            .unwrap();
    }
    let triggers = api::serve_triggers(
        env.store.clone(),
        ApiOptions::default(),
        &[
            Trigger::parse("shop.order.*=orders").unwrap(),
            Trigger::parse("shop.order.created=audit").unwrap(),
        ],
    )
    .await
    .unwrap();
    let nats = env.store.infra().client.clone();
    let mut named = async_nats::HeaderMap::new();
    named.insert("Sagaflow-Execution-Name", "o-1");
    nats.publish_with_headers("shop.order.created", named, "{}".into())
        .await
        .unwrap();
    let mut count = 0;
    for _ in 0..100 {
        count = env.inbox_count().await;
        if count >= 2 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(count, 2, "one start per triggered machine");
    for machine in ["orders", "audit"] {
        assert!(matches!(
            env.last_inbox_message(&ExecutionRef::new(machine, "o-1").unwrap())
                .await,
            InboxMessage::StartExecution(_)
        ));
    }
    triggers.stop().await;
}

/// Deploys `orders` and starts it from every `shop.order.*` message.
async fn orders_on_shop_order_subjects(env: &Env) -> api::TriggerService {
    env.client
        .create_state_machine("orders", DEFINITION)
        .await
        .unwrap();
    api::serve_triggers(
        env.store.clone(),
        ApiOptions::default(),
        &[Trigger::parse("shop.order.*=orders").unwrap()],
    )
    .await
    .unwrap()
}

#[tokio::test]
async fn triggers_start_executions_from_messages() {
    let env = Env::new().await;
    let triggers = orders_on_shop_order_subjects(&env).await;
    let nats = env.store.infra().client.clone();
    let mut h = async_nats::HeaderMap::new();
    h.insert("Nats-Msg-Id", "order-1");
    let ask = |h: async_nats::HeaderMap, body: &'static str| {
        let nats = nats.clone();
        async move {
            let reply = nats
                .request_with_headers("shop.order.created", h, body.into())
                .await
                .unwrap();
            serde_json::from_slice::<Value>(&reply.payload).unwrap()
        }
    };
    let r = ask(h.clone(), r#"{"id": 1}"#).await;
    assert_eq!(
        r["ok"]["executionArn"],
        json!("arn:aws:states:local:000000000000:execution:orders:order-1")
    );
    assert_eq!(r["ok"]["alreadyStarted"], json!(false));
    // Redelivered: the same execution.
    let r = ask(h.clone(), r#"{"id": 1}"#).await;
    assert_eq!(r["ok"]["alreadyStarted"], json!(true));
    // Malformed: an error, nothing started.
    let r = ask(async_nats::HeaderMap::new(), "{oops").await;
    assert_eq!(r["error"]["code"], json!("InvalidRequest"));
    assert_eq!(env.inbox_count().await, 1);
    // Fire and forget, named by header.
    let mut named = async_nats::HeaderMap::new();
    named.insert("Sagaflow-Execution-Name", "by-header");
    nats.publish_with_headers("shop.order.paid", named, "{}".into())
        .await
        .unwrap();
    let mut count = 0;
    for _ in 0..100 {
        count = env.inbox_count().await;
        if count == 2 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(count, 2);
    assert!(matches!(
        env.last_inbox_message(&ExecutionRef::new("orders", "by-header").unwrap())
            .await,
        InboxMessage::StartExecution(_)
    ));
    triggers.stop().await;
}

/// Stopping the triggers (a coordinator's graceful shutdown) handles the
/// messages they already received: none is lost.
#[tokio::test]
async fn stopped_triggers_handle_the_messages_they_received() {
    let env = Env::new().await;
    let triggers = orders_on_shop_order_subjects(&env).await;
    let nats = env.store.infra().client.clone();
    const SENT: u64 = 300;
    for i in 0..SENT {
        let mut named = async_nats::HeaderMap::new();
        named.insert("Sagaflow-Execution-Name", format!("o-{i}").as_str());
        nats.publish_with_headers("shop.order.created", named, "{}".into())
            .await
            .unwrap();
    }
    nats.flush().await.unwrap();
    // At once: most of them are still to be handled.
    triggers.stop().await;
    assert_eq!(env.inbox_count().await, SENT, "one start per message");
    // And nothing is taken after the stop.
    nats.publish("shop.order.created", "{}".into())
        .await
        .unwrap();
    nats.flush().await.unwrap();
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(env.inbox_count().await, SENT);
}

#[tokio::test]
async fn wait_for_completion_sees_the_end() {
    let env = Env::new().await;
    env.client
        .create_state_machine("hello", DEFINITION)
        .await
        .unwrap();
    env.simulate("hello", "w", json!({}), None).await;
    let arn = ExecutionRef::new("hello", "w").unwrap().arn();
    // Still running: the wait ends, saying so (not that the API is away).
    let waited = env
        .client
        .wait_for_completion(&arn, Duration::from_millis(300))
        .await;
    assert!(
        matches!(waited, Err(ApiClientError::StillRunning { seen: true, .. })),
        "{waited:?}"
    );
    assert!(
        waited.unwrap_err().to_string().contains("is still running"),
        "the message says it"
    );
    let waiter = {
        let c = env.client.clone();
        let arn = arn.clone();
        // A wait with no end in sight (Duration::MAX) is taken, not an
        // overflow panic.
        tokio::spawn(async move { c.wait_for_completion(&arn, Duration::MAX).await })
    };
    tokio::time::sleep(Duration::from_millis(200)).await;
    env.index("hello", "w", ExecutionStatus::Aborted).await;
    let exec = ExecutionRef::new("hello", "w").unwrap();
    env.store
        .infra()
        .client
        .publish(Namespace::default().done_subject(&exec), "".into())
        .await
        .unwrap();
    let done = tokio::time::timeout(Duration::from_secs(5), waiter)
        .await
        .expect("in time")
        .unwrap()
        .unwrap();
    assert_eq!(done.status, ExecutionStatus::Aborted);
}

#[tokio::test]
async fn a_coordinator_serves_the_api_and_runs_executions() {
    use sagaflow_coordinator::cluster::{Cluster, ClusterOptions};
    let server = NatsServer::start().expect("nats-server");
    let nats = sagaflow_nats::connect(&server.url())
        .await
        .expect("connect");
    let options = ClusterOptions {
        partitions: 4,
        triggers: vec![Trigger::parse("go=hello").unwrap()],
        ..ClusterOptions::default()
    };
    let handle = Cluster::start(nats.clone(), options.clone())
        .await
        .expect("cluster");
    let c = ApiClient::new(nats.clone(), Namespace::default());
    c.create_state_machine("hello", DEFINITION).await.unwrap();
    let started = c
        .start_execution(start("hello", Some("e2e"), json!({"who": "you"})))
        .await
        .unwrap();
    let done = c
        .wait_for_completion(&started.execution_arn, Duration::from_secs(30))
        .await
        .unwrap();
    assert_eq!(done.status, ExecutionStatus::Succeeded, "{done:?}");
    assert_eq!(done.output, Some(json!("hi")));
    assert_eq!(done.input, Some(json!({"who": "you"})));
    let history = c.execution_history(&started.execution_arn).await.unwrap();
    let types: Vec<&str> = history
        .events
        .iter()
        .map(|e| e["type"].as_str().unwrap())
        .collect();
    assert_eq!(
        types,
        vec![
            "ExecutionStarted",
            "PassStateEntered",
            "PassStateExited",
            "ExecutionSucceeded"
        ]
    );
    // A trigger message runs it too.
    let reply = nats.request("go", r#"{"t": 1}"#.into()).await.unwrap();
    let reply: Value = serde_json::from_slice(&reply.payload).unwrap();
    let arn = reply["ok"]["executionArn"]
        .as_str()
        .expect("started")
        .to_string();
    let done = c
        .wait_for_completion(&arn, Duration::from_secs(30))
        .await
        .unwrap();
    assert_eq!(done.status, ExecutionStatus::Succeeded);
    handle.shutdown().await;
    // The API stops with the coordinator (once the unsubscriptions land).
    let mut stopped = false;
    for _ in 0..50 {
        if matches!(
            c.list_state_machines().await,
            Err(ApiClientError::NoResponders { .. })
        ) {
            stopped = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(stopped, "the API still answers after shutdown");
}

#[tokio::test]
async fn a_partition_is_listed_in_one_read_as_key_by_key() {
    let env = Env::new().await;
    assert!(env.store.partition_executions(0).await.unwrap().is_empty());
    for i in 0..40 {
        let status = if i % 3 == 0 {
            ExecutionStatus::Running
        } else {
            ExecutionStatus::Succeeded
        };
        env.index("hello", &format!("e{i}"), status).await;
    }
    // Overwritten and removed keys: the latest value counts, removed ones
    // are not listed.
    env.index("hello", "e1", ExecutionStatus::Running).await;
    let gone = ExecutionRef::new("hello", "e2").unwrap();
    assert_eq!(
        env.store.forget_execution(&gone).await.unwrap(),
        sagaflow_coordinator::cluster::store::Forget::Forgotten
    );
    let mut total = 0;
    for p in 0..env.store.partitions() {
        let mut quick: Vec<(String, ExecutionStatus)> = env
            .store
            .partition_executions(p)
            .await
            .unwrap()
            .into_iter()
            .map(|d| (d.execution_arn, d.status))
            .collect();
        let mut slow: Vec<(String, ExecutionStatus)> = env
            .store
            .list_executions(Some(p), None, None)
            .await
            .unwrap()
            .into_iter()
            .map(|d| (d.execution_arn, d.status))
            .collect();
        quick.sort_by(|a, b| a.0.cmp(&b.0));
        slow.sort_by(|a, b| a.0.cmp(&b.0));
        assert_eq!(quick, slow, "partition {p}");
        total += quick.len();
    }
    assert_eq!(total, 39);
    let e1 = ExecutionRef::new("hello", "e1").unwrap();
    let p = env.store.partition_of(&e1);
    let listed = env.store.partition_executions(p).await.unwrap();
    let e1 = listed
        .iter()
        .find(|d| d.execution_arn == e1.arn())
        .expect("e1 listed");
    assert_eq!(e1.status, ExecutionStatus::Running);
}
