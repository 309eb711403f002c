//! The facade on the embedded backend: deploy, start, wait, history,
//! callbacks and the errors.

use std::sync::Arc;
use std::time::Duration;

use sagaflow::{Error, Mode, Sagaflow, Status, TaskContext, TaskError, handler_fn, lambda_fn};
use serde_json::{Value, json};
use tokio::sync::mpsc;

const LIMIT: Duration = Duration::from_secs(10);

const CALLBACK: &str = r#"{
  "StartAt": "Ask",
  "States": {
    "Ask": {"Type": "Task", "Resource": "arn:aws:states:::lambda:invoke.waitForTaskToken",
            "Parameters": {"FunctionName": "ask", "Payload": {"token.$": "$$.Task.Token"}},
            "Catch": [{"ErrorEquals": ["No"], "ResultPath": "$.error", "Next": "Refused"}],
            "End": true},
    "Refused": {"Type": "Fail", "Error": "Refused"}
  }
}"#;

async fn saga() -> (Sagaflow, tokio::sync::mpsc::UnboundedReceiver<String>) {
    let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
    (builder(tx).build().await.unwrap(), rx)
}

/// Handlers `double` (a number), `boom`, `slow` and `ask` (sends the task
/// token to `tx`), with a state machine for each.
fn builder(tx: tokio::sync::mpsc::UnboundedSender<String>) -> sagaflow::SagaflowBuilder {
    Sagaflow::builder()
        .handler(
            "double",
            handler_fn(|n: i64, _ctx: TaskContext| async move { Ok::<_, TaskError>(n * 2) }),
        )
        .handler(
            "boom",
            handler_fn(|_: Value, _ctx: TaskContext| async move {
                Err::<Value, _>(TaskError::new("Boom", "it broke"))
            }),
        )
        .handler(
            "slow",
            handler_fn(|_: Value, _ctx: TaskContext| async move {
                tokio::time::sleep(Duration::from_secs(3600)).await;
                Ok::<_, TaskError>(json!(null))
            }),
        )
        .handler(
            "ask",
            lambda_fn(move |event: Value, _ctx| {
                let tx = tx.clone();
                async move {
                    let token = event["token"].as_str().unwrap_or_default().to_string();
                    let _ = tx.send(token);
                    Ok(json!("asked"))
                }
            }),
        )
        .state_machine(
            "double",
            r#"{"StartAt": "D", "States": {"D": {"Type": "Task", "Resource": "double", "End": true}}}"#,
        )
        .state_machine(
            "boom",
            r#"{"StartAt": "B", "States": {"B": {"Type": "Task", "Resource": "arn:aws:lambda:eu-west-1:1:function:boom", "End": true}}}"#,
        )
        .state_machine(
            "slow",
            r#"{"StartAt": "S", "States": {"S": {"Type": "Task", "Resource": "slow", "End": true}}}"#,
        )
        .state_machine("callback", CALLBACK)
}

#[tokio::test]
async fn runs_succeeded_and_failed_executions() {
    let (saga, _) = saga().await;
    assert_eq!(saga.mode(), Mode::Embedded);
    let e = saga.start("double", json!(21), Some("d1")).await.unwrap();
    assert_eq!(e.name(), "d1");
    assert!(e.arn().ends_with(":execution:double:d1"), "{}", e.arn());
    let r = e.wait(LIMIT).await.unwrap();
    assert_eq!(r.status, Status::Succeeded);
    assert_eq!(r.output, Some(json!(42)));
    assert_eq!(e.describe().await.unwrap(), r);
    let history = e.history().await.unwrap();
    assert_eq!(history.first().unwrap()["type"], "ExecutionStarted");
    assert_eq!(history.last().unwrap()["type"], "ExecutionSucceeded");

    let e = saga.start("boom", json!({}), None).await.unwrap();
    let r = e.wait(LIMIT).await.unwrap();
    assert_eq!(r.status, Status::Failed);
    assert_eq!(r.error.as_deref(), Some("Boom"));
    assert_eq!(r.cause.as_deref(), Some("it broke"));
    assert_eq!(r.output, None);
    assert_eq!(e.states_entered().await.unwrap(), ["B"]);
    // A handle by ARN sees the same execution.
    assert_eq!(saga.execution(e.arn()).describe().await.unwrap(), r);
    saga.shutdown().await;
}

#[tokio::test]
async fn starts_are_idempotent_by_name() {
    let (saga, _) = saga().await;
    let a = saga.start("double", json!(1), Some("same")).await.unwrap();
    let b = saga.start("double", json!(1), Some("same")).await.unwrap();
    assert_eq!(a.arn(), b.arn());
    assert!(matches!(
        saga.start("double", json!(2), Some("same")).await,
        Err(Error::ExecutionAlreadyExists(_))
    ));
    // Deploying again makes a new version; new executions use it.
    assert_eq!(
        saga.deploy(
            "double",
            r#"{"StartAt": "P", "States": {"P": {"Type": "Pass", "Result": "v2", "End": true}}}"#
        )
        .await
        .unwrap(),
        2
    );
    let c = saga.start("double", json!(1), Some("other")).await.unwrap();
    assert_eq!(c.wait(LIMIT).await.unwrap().output, Some(json!("v2")));
    saga.shutdown().await;
}

#[tokio::test]
async fn errors_are_typed() {
    let (saga, _) = saga().await;
    assert!(matches!(
        saga.deploy("bad", r#"{"StartAt": "Nope", "States": {}}"#).await,
        Err(Error::InvalidDefinition { name, .. }) if name == "bad"
    ));
    assert!(matches!(
        saga.deploy(
            "bad name!",
            r#"{"StartAt": "P", "States": {"P": {"Type": "Succeed"}}}"#
        )
        .await,
        Err(Error::InvalidName(_))
    ));
    assert!(matches!(
        saga.start("missing", json!({}), None).await,
        Err(Error::StateMachineDoesNotExist(_))
    ));
    assert!(matches!(
        saga.execution("arn:aws:states:local:000000000000:execution:double:nope")
            .describe()
            .await,
        Err(Error::ExecutionDoesNotExist(_))
    ));
    assert!(matches!(
        saga.send_task_success("not-a-token", json!({})).await,
        Err(Error::TaskDoesNotExist)
    ));
    let slow = saga.start("slow", json!({}), None).await.unwrap();
    assert!(matches!(
        slow.wait(Duration::from_millis(50)).await,
        Err(Error::Timeout { .. })
    ));
    assert_eq!(slow.describe().await.unwrap().status, Status::Running);
    // The history so far: the task went out, nothing came back.
    let types: Vec<String> = slow
        .history()
        .await
        .unwrap()
        .iter()
        .map(|e| e["type"].as_str().unwrap_or_default().to_string())
        .collect();
    assert_eq!(types[0], "ExecutionStarted", "{types:?}");
    assert!(types.contains(&"TaskScheduled".to_string()), "{types:?}");
    assert!(
        !types
            .iter()
            .any(|t| t.starts_with("Execution") && t != "ExecutionStarted"),
        "{types:?}"
    );
    let duplicate = Sagaflow::builder()
        .handler(
            "x",
            handler_fn(|v: Value, _c: TaskContext| async move { Ok::<_, TaskError>(v) }),
        )
        .handler(
            "x",
            handler_fn(|v: Value, _c: TaskContext| async move { Ok::<_, TaskError>(v) }),
        )
        .build()
        .await;
    assert!(matches!(duplicate, Err(Error::DuplicateHandler(n)) if n == "x"));
    saga.shutdown().await;
}

#[tokio::test]
async fn callback_tasks_wait_for_their_token() {
    let (saga, mut tokens) = saga().await;
    let yes = saga.start("callback", json!({}), None).await.unwrap();
    let token = tokens.recv().await.unwrap();
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert_eq!(yes.describe().await.unwrap().status, Status::Running);
    saga.send_task_success(&token, json!({"answer": "yes"}))
        .await
        .unwrap();
    let r = yes.wait(LIMIT).await.unwrap();
    assert_eq!(r.status, Status::Succeeded);
    assert_eq!(r.output, Some(json!({"answer": "yes"})));
    assert!(matches!(
        saga.send_task_success(&token, json!({})).await,
        Err(Error::TaskDoesNotExist)
    ));

    let no = saga.start("callback", json!({}), None).await.unwrap();
    let token = tokens.recv().await.unwrap();
    saga.send_task_failure(&token, "No", "not today")
        .await
        .unwrap();
    let r = no.wait(LIMIT).await.unwrap();
    assert_eq!(r.status, Status::Failed);
    assert_eq!(r.error.as_deref(), Some("Refused"));
    assert_eq!(no.states_entered().await.unwrap(), ["Ask", "Refused"]);
    saga.shutdown().await;
}

/// A parent calling `startExecution` of `child` with `pattern` (`""`,
/// `".sync"`, `".sync:2"`) and `name` (none: derived), catching every error.
fn parent(child: &str, pattern: &str, name: Option<&str>, timeout: Option<u64>) -> String {
    let mut parameters = json!({
        "StateMachineArn": format!("arn:aws:states:local:000000000000:stateMachine:{child}"),
        "Input.$": "$.n",
    });
    if let Some(name) = name {
        parameters["Name"] = json!(name);
    }
    let mut call = json!({
        "Type": "Task",
        "Resource": format!("arn:aws:states:::states:startExecution{pattern}"),
        "Parameters": parameters,
        "Catch": [{"ErrorEquals": ["States.ALL"], "ResultPath": "$.error", "Next": "Caught"}],
        "End": true
    });
    if let Some(t) = timeout {
        call["TimeoutSeconds"] = json!(t);
    }
    json!({"StartAt": "Call", "States": {"Call": call, "Caught": {"Type": "Pass", "End": true}}})
        .to_string()
}

async fn family() -> Sagaflow {
    let (tx, _) = tokio::sync::mpsc::unbounded_channel();
    builder(tx)
        .state_machine("sync2", parent("double", ".sync:2", Some("kid-1"), None))
        .state_machine("sync1", parent("double", ".sync", None, None))
        .state_machine("fire", parent("double", "", Some("kid-3"), None))
        .state_machine("sync_fail", parent("boom", ".sync:2", None, None))
        .state_machine(
            "sync_slow",
            parent("slow", ".sync:2", Some("kid-slow"), Some(1)),
        )
        .build()
        .await
        .unwrap()
}

/// Runs `machine` on `{"n": n}` as execution `name`, to its end.
async fn run(saga: &Sagaflow, machine: &str, n: i64, name: &str) -> sagaflow::ExecutionResult {
    let execution = saga.start(machine, json!({"n": n}), Some(name)).await;
    execution.unwrap().wait(LIMIT).await.unwrap()
}

#[tokio::test]
async fn child_executions_run_on_the_machines_deployed_here() {
    let saga = family().await;

    // .sync:2: the child's output as JSON, in DescribeExecution's fields.
    let r = run(&saga, "sync2", 21, "p2").await;
    assert_eq!(r.status, Status::Succeeded, "{r:?}");
    let out = r.output.unwrap();
    assert_eq!(out["Output"], json!(42), "{out}");
    assert_eq!(out["Status"], "SUCCEEDED");
    assert_eq!(out["Name"], "kid-1");
    assert_eq!(out["Input"], json!(21));
    assert_eq!(
        out["StateMachineArn"],
        "arn:aws:states:local:000000000000:stateMachine:double"
    );
    let kid = out["ExecutionArn"].as_str().unwrap().to_string();
    assert!(kid.ends_with(":execution:double:kid-1"), "{kid}");
    let child = saga.execution(kid.as_str()).describe().await.unwrap();
    assert_eq!(child.status, Status::Succeeded);
    assert_eq!(child.output, Some(json!(42)));

    // .sync: the output as a JSON string; the name derived from the parent.
    let r = run(&saga, "sync1", 5, "p1").await;
    let out = r.output.unwrap();
    assert_eq!(out["Output"], json!("10"), "{out}");
    assert_eq!(out["Input"], json!("5"), "{out}");
    let name = out["Name"].as_str().unwrap();
    assert!(name.starts_with("p1-") && name.len() == 3 + 16, "{name}");

    // Request-response: started, not waited for.
    let r = run(&saga, "fire", 1, "p3").await;
    let out = r.output.unwrap();
    assert!(out.get("Output").is_none(), "{out}");
    assert!(out["StartDate"].is_string(), "{out}");
    let kid = out["ExecutionArn"].as_str().unwrap();
    let child = saga.execution(kid).wait(LIMIT).await.unwrap();
    assert_eq!(child.output, Some(json!(2)));

    // A failed child fails the task with States.TaskFailed, its cause the
    // child's description.
    let r = run(&saga, "sync_fail", 1, "p4").await;
    let error = &r.output.unwrap()["error"];
    assert_eq!(error["Error"], "States.TaskFailed", "{error}");
    let cause: Value = serde_json::from_str(error["Cause"].as_str().unwrap()).unwrap();
    assert_eq!(cause["Status"], "FAILED");
    assert_eq!(cause["Error"], "Boom");
    assert_eq!(cause["Cause"], "it broke");
    saga.shutdown().await;
}

#[tokio::test]
async fn a_sync_child_is_stopped_when_its_parent_stops_waiting() {
    let saga = family().await;
    let r = run(&saga, "sync_slow", 1, "p5").await;
    assert_eq!(r.output.unwrap()["error"]["Error"], "States.Timeout");
    let child = saga
        .execution("arn:aws:states:local:000000000000:execution:slow:kid-slow")
        .wait(LIMIT)
        .await
        .unwrap();
    assert_eq!(child.status, Status::Aborted, "{child:?}");
    assert_eq!(child.error.as_deref(), Some("States.Aborted"));
    saga.shutdown().await;
}

/// A shutdown takes the running handlers (and waiting callback tasks) of
/// the executions it abandons along: nothing keeps running behind it.
#[tokio::test]
async fn shutdown_stops_the_handlers_still_running() {
    struct Hang(
        Arc<std::sync::atomic::AtomicBool>,
        mpsc::UnboundedSender<()>,
    );
    impl sagaflow::Handler for Hang {
        fn call(
            &self,
            _: Value,
            _: TaskContext,
        ) -> std::pin::Pin<
            Box<dyn std::future::Future<Output = Result<Value, TaskError>> + Send + '_>,
        > {
            struct Flag(Arc<std::sync::atomic::AtomicBool>);
            impl Drop for Flag {
                fn drop(&mut self) {
                    self.0.store(true, std::sync::atomic::Ordering::SeqCst);
                }
            }
            let flag = Flag(Arc::clone(&self.0));
            let _ = self.1.send(());
            Box::pin(async move {
                let _flag = flag;
                std::future::pending::<()>().await;
                Ok(Value::Null)
            })
        }
    }
    let dropped = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let (running, mut started) = mpsc::unbounded_channel();
    let saga = Sagaflow::builder()
        .handler("hang", Hang(Arc::clone(&dropped), running))
        .build()
        .await
        .unwrap();
    saga.deploy(
        "hang",
        r#"{"StartAt": "H", "States": {"H": {"Type": "Task", "Resource": "hang", "End": true}}}"#,
    )
    .await
    .unwrap();
    saga.start("hang", json!({}), None).await.unwrap();
    started.recv().await.expect("the handler runs");
    saga.shutdown().await;
    for _ in 0..100 {
        if dropped.load(std::sync::atomic::Ordering::SeqCst) {
            return;
        }
        tokio::task::yield_now().await;
    }
    panic!("the handler still runs after the shutdown");
}

/// A run abandoned at shutdown ends: described as broken down and listed
/// as ABORTED, not RUNNING for ever.
#[tokio::test]
async fn a_run_abandoned_at_shutdown_is_no_longer_running() {
    let (saga, _) = saga().await;
    // One whose handler runs, one not even polled yet.
    let running = saga.start("slow", json!({}), Some("cut")).await.unwrap();
    tokio::time::sleep(Duration::from_millis(50)).await;
    let unstarted = saga.start("slow", json!({}), Some("cut2")).await.unwrap();
    assert_eq!(running.describe().await.unwrap().status, Status::Running);
    let handle = saga.clone();
    saga.shutdown().await;
    for slow in [&running, &unstarted] {
        let mut described = slow.describe().await;
        for _ in 0..100 {
            if !matches!(&described, Ok(r) if r.status == Status::Running) {
                break;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
            described = slow.describe().await;
        }
        assert!(
            matches!(&described, Err(Error::Runtime { message, .. }) if message.contains("abandoned")),
            "{described:?}"
        );
    }
    let listed = handle.list_executions(Some("slow"), None).await.unwrap();
    assert_eq!(listed.len(), 2);
    assert!(
        listed.iter().all(|s| s.status == Status::Aborted),
        "{listed:?}"
    );
}

/// With a retention, ended executions are forgotten (as over NATS): an
/// application running for long does not keep them all, and their names
/// can be used again once the duplicate window has passed since their
/// start.
#[tokio::test]
async fn ended_executions_are_forgotten_after_the_retention() {
    let (tx, _rx) = mpsc::unbounded_channel();
    let mut options = sagaflow::Options::default();
    options.cluster.settings.retention = Duration::from_millis(100);
    options.cluster.settings.duplicate_window = Duration::from_millis(2000);
    let saga = builder(tx).options(options).build().await.unwrap();
    let old = saga.start("double", json!(2), Some("old")).await.unwrap();
    assert_eq!(old.wait(LIMIT).await.unwrap().output, Some(json!(4)));
    // Past the retention, and past the once-a-second look.
    tokio::time::sleep(Duration::from_millis(1200)).await;
    let new = saga.start("double", json!(3), Some("new")).await.unwrap();
    assert_eq!(new.wait(LIMIT).await.unwrap().output, Some(json!(6)));
    assert!(
        matches!(old.describe().await, Err(Error::ExecutionDoesNotExist(_))),
        "the ended execution is forgotten"
    );
    let names: Vec<String> = saga
        .list_executions(Some("double"), None)
        .await
        .unwrap()
        .into_iter()
        .map(|s| s.name)
        .collect();
    assert_eq!(names, ["new"]);
    // Its name is not free again within the duplicate window (as over
    // NATS, where the broker would drop the new start as a repeat)...
    match saga.start("double", json!(2), Some("old")).await {
        Err(Error::NameNotYetReusable { execution, message }) => {
            assert_eq!(execution, old.arn());
            assert!(message.contains("deleted since"), "{message}");
        }
        other => panic!("{other:?}"),
    }
    // ... and is once the window has passed (and the next look came),
    // even with another input.
    tokio::time::sleep(Duration::from_millis(1300)).await;
    let again = saga.start("double", json!(5), Some("old")).await.unwrap();
    assert_eq!(again.wait(LIMIT).await.unwrap().output, Some(json!(10)));
}

/// A patience with no end (`Duration::MAX`) is taken as "wait for ever",
/// not an overflow.
#[tokio::test]
async fn an_endless_patience_is_taken() {
    let (saga, _rx) = saga().await;
    let version = saga
        .deploy_when_ready(
            "endless",
            r#"{"StartAt": "P", "States": {"P": {"Type": "Succeed"}}}"#,
            Duration::MAX,
        )
        .await
        .expect("deployed");
    assert_eq!(version, 1);
}
