//! The coordinator over a real nats-server: executions run to the end,
//! survive restarts, and are never advanced twice.

use std::time::Duration;

use async_nats::jetstream::{self, consumer};
use futures::StreamExt;
use serde_json::{Value, json};

use sagaflow_coordinator::cluster::{Cluster, ClusterHandle, ClusterOptions};
use sagaflow_protocol::api::{ExecutionDescription, ExecutionStatus};
use sagaflow_protocol::{ExecutionRef, InboxMessage, Namespace, StartExecution, TaskMessage};
use sagaflow_testkit::NatsServer;

const SAGA: &str = r#"{
  "StartAt": "BookFlight",
  "States": {
    "BookFlight": {"Type": "Task", "Resource": "arn:aws:lambda:us-east-1:123456789012:function:book_flight",
      "ResultPath": "$.flight", "Next": "BookCar",
      "Catch": [{"ErrorEquals": ["States.ALL"], "ResultPath": "$.error", "Next": "Failed"}]},
    "BookCar": {"Type": "Task", "Resource": "book_car", "ResultPath": "$.car", "End": true,
      "Catch": [{"ErrorEquals": ["States.ALL"], "ResultPath": "$.error", "Next": "CancelFlight"}]},
    "CancelFlight": {"Type": "Task", "Resource": "cancel_flight", "ResultPath": null, "Next": "Failed"},
    "Failed": {"Type": "Fail", "Error": "BookingFailed", "Cause": "compensated"}
  }
}"#;

fn options() -> ClusterOptions {
    let mut o = ClusterOptions {
        partitions: 4,
        api: false,
        ..ClusterOptions::default()
    };
    o.settings.lease_ttl = Duration::from_secs(2);
    o
}

async fn start_cluster(url: &str) -> ClusterHandle {
    let client = sagaflow_nats::connect(url).await.expect("connect");
    Cluster::start(client, options()).await.expect("cluster")
}

/// A participant written against the wire protocol: answers every task;
/// `book_car` fails when the input says so.
async fn participant(url: String) {
    let client = async_nats::connect(&url).await.expect("connect");
    let js = jetstream::new(client);
    let ns = Namespace::default();
    let stream = loop {
        match js.get_stream(ns.tasks_stream()).await {
            Ok(s) => break s,
            Err(_) => tokio::time::sleep(Duration::from_millis(50)).await,
        }
    };
    let consumer = stream
        .get_or_create_consumer::<consumer::pull::Config>(
            "test-participant",
            consumer::pull::Config {
                durable_name: Some("test-participant".into()),
                filter_subject: ns.task_wildcard(),
                ack_policy: consumer::AckPolicy::Explicit,
                ..Default::default()
            },
        )
        .await
        .expect("consumer");
    let mut messages = consumer.messages().await.expect("messages");
    while let Some(Ok(message)) = messages.next().await {
        let task: TaskMessage = serde_json::from_slice(&message.payload).expect("task");
        let reply = if task.handler == "book_car" && task.input["fail"] == json!("car") {
            InboxMessage::TaskFailed {
                execution_arn: task.execution_arn.clone(),
                task_id: task.task_id.clone(),
                error: "CarUnavailable".into(),
                cause: "no cars".into(),
                callback: false,
            }
        } else {
            InboxMessage::TaskSucceeded {
                execution_arn: task.execution_arn.clone(),
                task_id: task.task_id.clone(),
                output: json!({"by": task.handler}),
                callback: false,
            }
        };
        js.publish(
            task.reply_to.clone(),
            serde_json::to_vec(&reply).unwrap().into(),
        )
        .await
        .expect("publish")
        .await
        .expect("ack");
        message.ack().await.expect("ack task");
    }
}

async fn deploy(cluster: &ClusterHandle) -> u64 {
    cluster
        .store()
        .create_machine("travel", SAGA, "2024-01-01T00:00:00Z")
        .await
        .expect("machine")
        .version
}

async fn start(
    url: &str,
    cluster: &ClusterHandle,
    name: &str,
    input: Value,
    version: u64,
) -> ExecutionRef {
    let client = async_nats::connect(url).await.unwrap();
    let js = jetstream::new(client);
    let exec = ExecutionRef::new("travel", name).unwrap();
    let ns = Namespace::default();
    let start = InboxMessage::StartExecution(StartExecution {
        execution_arn: exec.arn(),
        version,
        input,
        seed: 1,
        traceparent: None,
        parent: None,
    });
    let subject = ns.inbox_subject(cluster.store().partition_of(&exec), &exec);
    js.publish(subject, serde_json::to_vec(&start).unwrap().into())
        .await
        .unwrap()
        .await
        .unwrap();
    exec
}

async fn wait_done(cluster: &ClusterHandle, exec: &ExecutionRef) -> ExecutionDescription {
    for _ in 0..400 {
        if let Ok(Some(d)) = cluster.store().execution(exec).await
            && d.status != ExecutionStatus::Running
        {
            return d;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    panic!("{} did not finish", exec.arn());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_saga_succeeds_and_another_compensates() {
    let server = NatsServer::start().expect("nats-server");
    let cluster = start_cluster(&server.url()).await;
    let version = deploy(&cluster).await;
    tokio::spawn(participant(server.url()));

    let ok = start(&server.url(), &cluster, "ok-1", json!({"trip": 1}), version).await;
    let bad = start(
        &server.url(),
        &cluster,
        "bad-1",
        json!({"trip": 2, "fail": "car"}),
        version,
    )
    .await;
    let ok = wait_done(&cluster, &ok).await;
    let bad = wait_done(&cluster, &bad).await;
    assert_eq!(ok.status, ExecutionStatus::Succeeded, "{ok:?}");
    assert_eq!(bad.status, ExecutionStatus::Failed, "{bad:?}");
    assert_eq!(bad.error.as_deref(), Some("BookingFailed"));

    // The history holds every step, in order.
    let history = cluster
        .store()
        .read_history(&ExecutionRef::from_arn(&ok.execution_arn).unwrap())
        .await
        .unwrap();
    assert!(history.batches[0].meta.is_some());
    assert!(history.last_sequence > 0);
    cluster.shutdown().await;
}
