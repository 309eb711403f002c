//! The facade over a real nats-server: the same calls as embedded.

use std::time::Duration;

use sagaflow::{Error, Mode, Options, Sagaflow, Status, TaskContext, TaskError, handler_fn};
use sagaflow_testkit::NatsServer;
use serde_json::{Value, json};

const LIMIT: Duration = Duration::from_secs(30);

fn options(url: &str) -> Options {
    let mut o = Options {
        nats_url: Some(url.to_string()),
        run_coordinator: true,
        worker_grace_period: Duration::from_millis(200),
        ..Options::default()
    };
    o.cluster.partitions = 2;
    o.cluster.settings.lease_ttl = Duration::from_secs(2);
    o
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_same_calls_work_over_nats() {
    let server = NatsServer::start().expect("nats-server");
    let (tx, mut tokens) = tokio::sync::mpsc::unbounded_channel::<String>();
    let saga = Sagaflow::builder()
        .options(options(&server.url()))
        .handler(
            "double",
            handler_fn(|n: i64, _ctx: TaskContext| async move { Ok::<_, TaskError>(n * 2) }),
        )
        .handler(
            "ask",
            handler_fn(move |_: Value, ctx: TaskContext| {
                let _ = tx.send(ctx.task_token.clone().unwrap_or_default());
                async move { Ok::<_, TaskError>(json!("asked")) }
            }),
        )
        .state_machine(
            "double",
            r#"{"StartAt": "D", "States": {"D": {"Type": "Task", "Resource": "double", "End": true}}}"#,
        )
        .state_machine(
            "callback",
            r#"{"StartAt": "Ask", "States": {"Ask": {"Type": "Task", "Resource": "ask.waitForTaskToken",
                "Catch": [{"ErrorEquals": ["No"], "Next": "Refused"}], "End": true},
                "Refused": {"Type": "Fail", "Error": "Refused"}}}"#,
        )
        .build()
        .await
        .expect("distributed sagaflow");
    assert_eq!(saga.mode(), Mode::Distributed);

    let e = saga.start("double", json!(21), Some("d1")).await.unwrap();
    assert!(e.arn().ends_with(":execution:double:d1"));
    let r = e.wait(LIMIT).await.unwrap();
    assert_eq!(r.status, Status::Succeeded);
    assert_eq!(r.output, Some(json!(42)));
    assert_eq!(e.states_entered().await.unwrap(), ["D"]);
    // Idempotent by name.
    let again = saga.start("double", json!(21), Some("d1")).await.unwrap();
    assert_eq!(again.arn(), e.arn());

    let yes = saga.start("callback", json!({}), None).await.unwrap();
    let token = tokens.recv().await.unwrap();
    saga.send_task_success(&token, json!({"answer": "yes"}))
        .await
        .unwrap();
    let r = yes.wait(LIMIT).await.unwrap();
    assert_eq!(r.status, Status::Succeeded);
    assert_eq!(r.output, Some(json!({"answer": "yes"})));

    let no = saga.start("callback", json!({}), None).await.unwrap();
    let token = tokens.recv().await.unwrap();
    saga.send_task_failure(&token, "No", "not today")
        .await
        .unwrap();
    let r = no.wait(LIMIT).await.unwrap();
    assert_eq!(r.status, Status::Failed);
    assert_eq!(r.error.as_deref(), Some("Refused"));

    assert!(matches!(
        saga.deploy("bad", r#"{"StartAt": "Nope", "States": {}}"#).await,
        Err(Error::InvalidDefinition { name, .. }) if name == "bad"
    ));
    assert!(matches!(
        saga.start("missing", json!({}), None).await,
        Err(Error::StateMachineDoesNotExist(_))
    ));
    saga.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_a_coordinator_the_api_error_says_so() {
    let server = NatsServer::start().expect("nats-server");
    let mut o = options(&server.url());
    o.run_coordinator = false;
    o.api_timeout = Duration::from_secs(2);
    let saga = Sagaflow::builder().options(o).build().await.unwrap();
    let err = saga
        .deploy(
            "x",
            r#"{"StartAt": "P", "States": {"P": {"Type": "Succeed"}}}"#,
        )
        .await
        .unwrap_err();
    assert!(matches!(err, Error::Api(_)), "{err:?}");
    assert!(err.to_string().contains("sagaflow coordinator"), "{err}");
    saga.shutdown().await;
}

/// A build whose deploy fails (no coordinator answers) leaves no worker
/// pulling tasks behind it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_build_leaves_nothing_running() {
    let server = NatsServer::start().expect("nats-server");
    let mut o = options(&server.url());
    o.run_coordinator = false;
    o.api_timeout = Duration::from_millis(500);
    let built = Sagaflow::builder()
        .options(o)
        .handler(
            "h",
            handler_fn(|v: Value, _ctx: TaskContext| async move { Ok::<_, TaskError>(v) }),
        )
        .state_machine(
            "x",
            r#"{"StartAt": "P", "States": {"P": {"Type": "Succeed"}}}"#,
        )
        .build()
        .await;
    let Err(err) = built else {
        panic!("no coordinator answers the deploy, yet the build succeeded");
    };
    assert!(matches!(err, Error::Api(_)), "{err:?}");
    // The worker's pulls expire within a second or so once it stopped.
    let nats = sagaflow_nats::connect(&server.url()).await.unwrap();
    let js = async_nats::jetstream::new(nats);
    let mut waiting = u64::MAX;
    for _ in 0..50 {
        let mut consumer: async_nats::jetstream::consumer::PullConsumer = js
            .get_consumer_from_stream("handler-h", "SAGAFLOW_TASKS")
            .await
            .expect("the worker's consumer");
        waiting = consumer.info().await.expect("consumer info").num_waiting as u64;
        if waiting == 0 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert_eq!(waiting, 0, "a worker still pulls tasks");
}

#[tokio::test]
async fn an_unreachable_server_is_a_connect_error() {
    let err = Sagaflow::builder()
        .nats_url(Some("nats://127.0.0.1:1"))
        .build()
        .await
        .unwrap_err();
    assert!(matches!(err, Error::Connect(_)), "{err:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deploy_when_ready_waits_for_a_coordinator_starting_later() {
    let server = NatsServer::start().expect("nats-server");
    let mut o = options(&server.url());
    o.run_coordinator = false;
    o.api_timeout = Duration::from_secs(1);
    let saga = Sagaflow::builder()
        .options(o.clone())
        .build()
        .await
        .unwrap();
    let definition = r#"{"StartAt": "P", "States": {"P": {"Type": "Succeed"}}}"#;
    // Nobody answers within the patience: the API error comes back.
    assert!(matches!(
        saga.deploy_when_ready("x", definition, Duration::from_millis(700))
            .await,
        Err(Error::Api(_))
    ));
    // A coordinator that starts a little later is waited for.
    let url = server.url();
    let cluster_options = o.cluster.clone();
    let later = tokio::spawn(async move {
        tokio::time::sleep(Duration::from_millis(800)).await;
        let nats = sagaflow_nats::connect(&url).await.unwrap();
        Box::pin(sagaflow_coordinator::cluster::Cluster::start(
            nats,
            cluster_options,
        ))
        .await
        .unwrap()
    });
    let version = saga
        .deploy_when_ready("x", definition, Duration::from_secs(20))
        .await
        .unwrap();
    assert_eq!(version, 1);
    later.await.unwrap().shutdown().await;
    saga.shutdown().await;
}
