//! The same scenarios on both backends: embedded (no NATS) and distributed
//! (a real nats-server started here, a coordinator in this process). Each
//! test runs its scenario on one backend, then on the other, and checks
//! the same things; the history test also checks that both backends record
//! the same events in the same order.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use sagaflow::{
    Error, Execution, Mode, Options, Sagaflow, SagaflowBuilder, Status, TaskContext, TaskError,
    handler_fn,
};
use sagaflow_testkit::NatsServer;
use serde_json::{Value, json};
use tokio::sync::mpsc;

const LIMIT: Duration = Duration::from_secs(30);

const TRAVEL: &str = include_str!("../../../examples/travel-booking/travel_booking.asl.json");

/// A backend to run a scenario on: the server lives as long as it does.
struct Backend {
    mode: Mode,
    _server: Option<NatsServer>,
}

impl Backend {
    fn both() -> [Mode; 2] {
        [Mode::Embedded, Mode::Distributed]
    }

    fn new(mode: Mode) -> Backend {
        let server = match mode {
            Mode::Embedded => None,
            Mode::Distributed => Some(NatsServer::start().expect("nats-server")),
        };
        Backend {
            mode,
            _server: server,
        }
    }

    fn options(&self) -> Options {
        match &self._server {
            None => Options::default(),
            Some(server) => {
                let mut o = Options {
                    nats_url: Some(server.url()),
                    run_coordinator: true,
                    worker_grace_period: Duration::from_millis(200),
                    ..Options::default()
                };
                o.cluster.partitions = 2;
                o.cluster.settings.lease_ttl = Duration::from_secs(2);
                o
            }
        }
    }

    async fn build(&self, builder: SagaflowBuilder) -> Sagaflow {
        let saga = builder
            .options(self.options())
            .build()
            .await
            .unwrap_or_else(|e| panic!("{:?}: {e}", self.mode));
        assert_eq!(saga.mode(), self.mode);
        saga
    }
}

fn types(history: &[Value]) -> Vec<String> {
    history
        .iter()
        .map(|e| e["type"].as_str().unwrap_or("?").to_string())
        .collect()
}

/// Waits until the history shows an event of type `kind`.
async fn until_event(e: &Execution, kind: &str) {
    let deadline = tokio::time::Instant::now() + LIMIT;
    loop {
        if types(&e.history().await.unwrap()).iter().any(|t| t == kind) {
            return;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "{}: no {kind} event",
            e.arn()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// A `.waitForTaskToken` handler that sends its task's token to `tx` and
/// leaves the answer to whoever receives it.
fn hands_out_its_token(tx: mpsc::UnboundedSender<String>) -> impl sagaflow::Handler {
    handler_fn(move |_: Value, ctx: TaskContext| {
        let _ = tx.send(ctx.task_token.clone().unwrap_or_default());
        async move { Ok::<_, TaskError>(json!(null)) }
    })
}

/// A sagaflow with state machine `hold` (one Wait of an hour), and an
/// execution of it named `name` that has entered its Wait.
async fn held(backend: &Backend, name: &str, input: Value) -> (Sagaflow, Execution) {
    const HOLD: &str = r#"{"StartAt": "Hold", "States": {"Hold": {"Type": "Wait", "Seconds": 3600, "End": true}}}"#;
    let saga = backend
        .build(Sagaflow::builder().state_machine("hold", HOLD))
        .await;
    let e = saga.start("hold", input, Some(name)).await.unwrap();
    until_event(&e, "WaitStateEntered").await;
    (saga, e)
}

/// A machine of one Task that starts state machine `kid` through
/// `resource` (`startExecution`, `.sync`, `.sync:2`), with these Parameters
/// besides its `StateMachineArn`.
fn calls_kid(resource: &str, parameters: Value) -> String {
    let mut all = json!({"StateMachineArn": "arn:aws:states:local:000000000000:stateMachine:kid"});
    if let (Some(all), Value::Object(more)) = (all.as_object_mut(), parameters) {
        all.extend(more);
    }
    json!({
        "StartAt": "Call",
        "States": {"Call": {"Type": "Task", "Resource": resource, "Parameters": all, "End": true}}
    })
    .to_string()
}

fn confirm(prefix: &'static str) -> impl sagaflow::Handler {
    handler_fn(move |input: Value, _ctx: TaskContext| async move {
        Ok::<_, TaskError>(json!({"confirmation": format!("{prefix}-{}", input["trip_id"])}))
    })
}

fn travel(builder: SagaflowBuilder) -> SagaflowBuilder {
    builder
        .handler("BookFlight", confirm("F"))
        .handler("BookHotel", confirm("H"))
        .handler(
            "BookCar",
            handler_fn(|input: Value, _ctx: TaskContext| async move {
                if input["fail_car"] == json!(true) {
                    return Err(TaskError::new("CarUnavailable", "no cars left"));
                }
                Ok(json!({"confirmation": format!("C-{}", input["trip_id"])}))
            }),
        )
        .handler("CancelCar", confirm("xC"))
        .handler("CancelHotel", confirm("xH"))
        .handler("CancelFlight", confirm("xF"))
        .state_machine("travel", TRAVEL)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn both_backends_record_the_same_history_for_a_saga() {
    let mut seen: Vec<(Mode, Vec<String>, Vec<String>)> = Vec::new();
    for mode in Backend::both() {
        let backend = Backend::new(mode);
        let saga = backend.build(travel(Sagaflow::builder())).await;

        let ok = saga
            .start("travel", json!({"trip_id": 1}), Some("ok"))
            .await
            .unwrap();
        let r = ok.wait(LIMIT).await.unwrap();
        assert_eq!(r.status, Status::Succeeded, "{mode:?}");
        assert_eq!(
            r.output,
            Some(
                json!({"status": "BOOKED", "trip_id": 1, "flight": "F-1", "hotel": "H-1", "car": "C-1"})
            )
        );

        let undone = saga
            .start(
                "travel",
                json!({"trip_id": 2, "fail_car": true}),
                Some("undone"),
            )
            .await
            .unwrap();
        let r = undone.wait(LIMIT).await.unwrap();
        assert_eq!(r.status, Status::Failed, "{mode:?}");
        assert_eq!(r.error.as_deref(), Some("BookingFailed"));
        assert_eq!(
            undone.states_entered().await.unwrap(),
            [
                "BookFlight",
                "BookHotel",
                "BookCar",
                "CancelCar",
                "CancelHotel",
                "CancelFlight",
                "TripCancelled",
                "BookingFailed"
            ],
            "{mode:?}"
        );
        let ok_history = ok.history().await.unwrap();
        let undone_history = undone.history().await.unwrap();
        // Ids count up from 1.
        for history in [&ok_history, &undone_history] {
            for (i, event) in history.iter().enumerate() {
                assert_eq!(event["id"], json!(i + 1), "{mode:?}: {event}");
            }
        }
        seen.push((mode, types(&ok_history), types(&undone_history)));
        saga.shutdown().await;
    }
    let (_, embedded_ok, embedded_undone) = &seen[0];
    let (_, distributed_ok, distributed_undone) = &seen[1];
    assert_eq!(embedded_ok, distributed_ok, "success path");
    assert_eq!(embedded_undone, distributed_undone, "compensation path");
    assert_eq!(
        embedded_ok.first().map(String::as_str),
        Some("ExecutionStarted")
    );
    assert_eq!(
        embedded_ok.last().map(String::as_str),
        Some("ExecutionSucceeded")
    );
    assert_eq!(
        embedded_undone.last().map(String::as_str),
        Some("ExecutionFailed")
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stop_aborts_a_running_execution_on_both_backends() {
    for mode in Backend::both() {
        let backend = Backend::new(mode);
        let (saga, e) = held(&backend, "held", json!({"k": 1})).await;
        assert_eq!(e.describe().await.unwrap().status, Status::Running);

        // AWS's limits on error and cause: refused, and nothing changes.
        let long_error = "e".repeat(257);
        let long_cause = "c".repeat(32_769);
        for (error, cause) in [
            (Some(long_error.as_str()), None),
            (None, Some(long_cause.as_str())),
        ] {
            assert!(
                matches!(e.stop(error, cause).await, Err(Error::InvalidRequest(_))),
                "{mode:?}"
            );
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
        assert_eq!(
            e.describe().await.unwrap().status,
            Status::Running,
            "{mode:?}"
        );

        e.stop(Some("Cancelled"), Some("the customer changed their mind"))
            .await
            .unwrap();
        let r = e.wait(LIMIT).await.unwrap();
        assert_eq!(r.status, Status::Aborted, "{mode:?}");
        assert_eq!(r.error.as_deref(), Some("Cancelled"));
        assert_eq!(r.cause.as_deref(), Some("the customer changed their mind"));
        let history = e.history().await.unwrap();
        let last = history.last().unwrap();
        assert_eq!(last["type"], "ExecutionAborted", "{mode:?}: {last}");
        assert_eq!(last["executionAbortedEventDetails"]["error"], "Cancelled");
        assert_eq!(e.states_entered().await.unwrap(), ["Hold"]);

        // An ended execution is left as it is.
        e.stop(Some("Again"), None).await.unwrap();
        tokio::time::sleep(Duration::from_millis(200)).await;
        let again = e.describe().await.unwrap();
        assert_eq!(again.status, Status::Aborted);
        assert_eq!(again.error.as_deref(), Some("Cancelled"), "{mode:?}");
        assert_eq!(e.history().await.unwrap().len(), history.len());

        // Unknown executions are an error.
        let ghost = saga.execution(e.arn().replace(":held", ":ghost"));
        assert!(
            matches!(
                ghost.stop(None, None).await,
                Err(Error::ExecutionDoesNotExist(_))
            ),
            "{mode:?}"
        );
        saga.shutdown().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redrive_runs_a_failed_execution_again_from_the_failed_state_on_both_backends() {
    const FLAKY: &str = r#"{"StartAt": "Prepare", "States": {
        "Prepare": {"Type": "Pass", "Result": "prepared", "ResultPath": "$.prepared", "Next": "Call"},
        "Call": {"Type": "Task", "Resource": "flaky",
                 "Parameters": {"redrives.$": "$$.Execution.RedriveCount", "prepared.$": "$.prepared"},
                 "End": true}}}"#;
    for mode in Backend::both() {
        let backend = Backend::new(mode);
        let broken = Arc::new(AtomicBool::new(true));
        let flag = Arc::clone(&broken);
        let saga = backend
            .build(
                Sagaflow::builder()
                    .handler(
                        "flaky",
                        handler_fn(move |input: Value, _ctx: TaskContext| {
                            let down = flag.load(Ordering::SeqCst);
                            async move {
                                if down {
                                    Err(TaskError::new("Down", "the partner is down"))
                                } else {
                                    Ok(input)
                                }
                            }
                        }),
                    )
                    .state_machine("flaky", FLAKY),
            )
            .await;
        let e = saga.start("flaky", json!({}), Some("f1")).await.unwrap();
        let r = e.wait(LIMIT).await.unwrap();
        assert_eq!(r.status, Status::Failed, "{mode:?}");
        assert_eq!(r.error.as_deref(), Some("Down"));

        broken.store(false, Ordering::SeqCst);
        e.redrive().await.unwrap();
        let r = e.wait(LIMIT).await.unwrap();
        assert_eq!(r.status, Status::Succeeded, "{mode:?}: {r:?}");
        assert_eq!(
            r.output,
            Some(json!({"redrives": 1, "prepared": "prepared"}))
        );
        // The failed state ran again; the one before it did not.
        assert_eq!(
            e.states_entered().await.unwrap(),
            ["Prepare", "Call", "Call"],
            "{mode:?}"
        );
        let kinds = types(&e.history().await.unwrap());
        let failed = kinds.iter().position(|t| t == "ExecutionFailed").unwrap();
        let redriven = kinds.iter().position(|t| t == "ExecutionRedriven").unwrap();
        assert!(failed < redriven, "{mode:?}: {kinds:?}");
        assert_eq!(kinds.last().map(String::as_str), Some("ExecutionSucceeded"));

        // A succeeded execution is not redriven, and nothing changes.
        let before = e.history().await.unwrap().len();
        assert!(
            matches!(e.redrive().await, Err(Error::ExecutionNotRedrivable { .. })),
            "{mode:?}"
        );
        assert_eq!(e.history().await.unwrap().len(), before);
        assert_eq!(e.describe().await.unwrap().status, Status::Succeeded);
        saga.shutdown().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn callback_heartbeats_keep_a_task_alive_on_both_backends() {
    const ASK: &str = r#"{"StartAt": "Ask", "States": {
        "Ask": {"Type": "Task", "Resource": "ask.waitForTaskToken", "HeartbeatSeconds": 2, "End": true}}}"#;
    for mode in Backend::both() {
        let backend = Backend::new(mode);
        let (tx, mut tokens) = mpsc::unbounded_channel::<String>();
        let saga = backend
            .build(
                Sagaflow::builder()
                    .handler("ask", hands_out_its_token(tx))
                    .state_machine("ask", ASK),
            )
            .await;

        // Beats every 300 ms for 4.8 s (more than twice HeartbeatSeconds),
        // then the answer.
        let alive = saga.start("ask", json!({}), Some("alive")).await.unwrap();
        let token = tokens.recv().await.unwrap();
        // A failure with a cause over AWS's limit is refused; the task
        // still waits.
        assert!(
            matches!(
                saga.send_task_failure(&token, "No", &"c".repeat(32_769))
                    .await,
                Err(Error::InvalidRequest(_))
            ),
            "{mode:?}"
        );
        for _ in 0..16 {
            tokio::time::sleep(Duration::from_millis(300)).await;
            saga.send_task_heartbeat(&token)
                .await
                .unwrap_or_else(|e| panic!("{mode:?}: heartbeat refused: {e}"));
        }
        // The token as read from a line of a file: the same token.
        saga.send_task_success(&format!("{token}\n"), json!({"answer": "yes"}))
            .await
            .unwrap_or_else(|e| panic!("{mode:?}: {e}"));
        let r = alive.wait(LIMIT).await.unwrap();
        assert_eq!(r.status, Status::Succeeded, "{mode:?}: {r:?}");
        assert_eq!(r.output, Some(json!({"answer": "yes"})));

        // No beats: the task times out after HeartbeatSeconds.
        let silent = saga.start("ask", json!({}), Some("silent")).await.unwrap();
        let token = tokens.recv().await.unwrap();
        let r = silent.wait(LIMIT).await.unwrap();
        assert_eq!(r.status, Status::Failed, "{mode:?}");
        assert_eq!(r.error.as_deref(), Some("States.HeartbeatTimeout"));
        // Its token is dead now.
        assert!(
            matches!(
                saga.send_task_heartbeat(&token).await,
                Err(Error::TaskDoesNotExist)
            ),
            "{mode:?}"
        );
        saga.shutdown().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn executions_are_listed_by_machine_and_status_on_both_backends() {
    const PASS: &str = r#"{"StartAt": "P", "States": {"P": {"Type": "Pass", "End": true}}}"#;
    const FAIL: &str = r#"{"StartAt": "F", "States": {"F": {"Type": "Fail", "Error": "No"}}}"#;
    for mode in Backend::both() {
        let backend = Backend::new(mode);
        let saga = backend
            .build(
                Sagaflow::builder()
                    .state_machine("pass", PASS)
                    .state_machine("fail", FAIL),
            )
            .await;
        // Started a few milliseconds apart (start dates have milliseconds).
        for name in ["p1", "p2"] {
            let e = saga.start("pass", json!({}), Some(name)).await.unwrap();
            e.wait(LIMIT).await.unwrap();
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        let f = saga.start("fail", json!({}), Some("f1")).await.unwrap();
        f.wait(LIMIT).await.unwrap();

        // Newest first, as AWS lists them.
        let all: Vec<(String, Status)> = saga
            .list_executions(None, None)
            .await
            .unwrap()
            .into_iter()
            .map(|s| (s.name, s.status))
            .collect();
        assert_eq!(
            all,
            [
                ("f1".to_string(), Status::Failed),
                ("p2".to_string(), Status::Succeeded),
                ("p1".to_string(), Status::Succeeded)
            ],
            "{mode:?}"
        );
        let failed = saga
            .list_executions(None, Some(Status::Failed))
            .await
            .unwrap();
        assert_eq!(failed.len(), 1, "{mode:?}");
        assert_eq!(failed[0].arn, f.arn());
        assert_eq!(failed[0].state_machine, "fail");
        assert!(failed[0].stop_date.is_some(), "{mode:?}");
        let passes = saga.list_executions(Some("pass"), None).await.unwrap();
        assert_eq!(passes.len(), 2, "{mode:?}");
        assert!(passes.iter().all(|s| s.state_machine == "pass"));
        assert!(
            saga.list_executions(Some("pass"), Some(Status::Running))
                .await
                .unwrap()
                .is_empty()
        );
        saga.shutdown().await;
    }
}

/// A definition whose history is the same on both backends: every runtime
/// behaviour the interpreter leaves to the runtime (retries and their
/// backoff timers, Wait, Map with its iterations one at a time, Choice, a
/// caught error, a `.sync` child execution) in one execution.
const EVERYTHING: &str = r#"{
  "StartAt": "Route",
  "States": {
    "Route": {"Type": "Choice", "Choices": [{"Variable": "$.n", "NumericGreaterThan": 0, "Next": "Flaky"}], "Default": "Done"},
    "Flaky": {"Type": "Task", "Resource": "flaky", "ResultPath": "$.flaky",
              "Retry": [{"ErrorEquals": ["Again"], "IntervalSeconds": 1, "MaxAttempts": 2}], "Next": "Pause"},
    "Pause": {"Type": "Wait", "Seconds": 1, "Next": "Each"},
    "Each": {"Type": "Map", "ItemsPath": "$.items", "MaxConcurrency": 1, "ResultPath": "$.each",
             "Iterator": {"StartAt": "Double", "States": {"Double": {"Type": "Task", "Resource": "double", "End": true}}},
             "Next": "Child"},
    "Child": {"Type": "Task", "Resource": "arn:aws:states:::states:startExecution.sync:2",
              "Parameters": {"StateMachineArn": "arn:aws:states:us-east-1:123456789012:stateMachine:child", "Input": {"v.$": "$.n"}},
              "ResultSelector": {"out.$": "$.Output"}, "ResultPath": "$.child", "Next": "Boom"},
    "Boom": {"Type": "Task", "Resource": "boom", "Catch": [{"ErrorEquals": ["Boom"], "ResultPath": "$.caught", "Next": "Done"}], "End": true},
    "Done": {"Type": "Pass", "End": true}
  }
}"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn both_backends_record_the_same_history_for_every_runtime_behaviour() {
    const CHILD: &str = r#"{"StartAt": "D", "States": {"D": {"Type": "Task", "Resource": "double", "InputPath": "$.v", "End": true}}}"#;
    let mut seen: Vec<Vec<String>> = Vec::new();
    for mode in Backend::both() {
        let backend = Backend::new(mode);
        let calls = Arc::new(std::sync::atomic::AtomicU32::new(0));
        let counter = Arc::clone(&calls);
        let saga = backend
            .build(
                Sagaflow::builder()
                    .handler(
                        "flaky",
                        handler_fn(move |_: Value, _ctx: TaskContext| {
                            let n = counter.fetch_add(1, Ordering::SeqCst);
                            async move {
                                if n < 2 {
                                    Err(TaskError::new("Again", format!("attempt {n}")))
                                } else {
                                    Ok(json!("third time lucky"))
                                }
                            }
                        }),
                    )
                    .handler(
                        "double",
                        handler_fn(
                            |n: i64, _ctx: TaskContext| async move { Ok::<_, TaskError>(n * 2) },
                        ),
                    )
                    .handler(
                        "boom",
                        handler_fn(|_: Value, _ctx: TaskContext| async move {
                            Err::<Value, _>(TaskError::new("Boom", "it broke"))
                        }),
                    )
                    .state_machine("child", CHILD)
                    .state_machine("everything", EVERYTHING),
            )
            .await;
        let e = saga
            .start(
                "everything",
                json!({"n": 4, "items": [1, 2, 3]}),
                Some("all"),
            )
            .await
            .unwrap();
        let r = e.wait(LIMIT).await.unwrap();
        assert_eq!(r.status, Status::Succeeded, "{mode:?}: {r:?}");
        let output = r.output.unwrap();
        assert_eq!(output["flaky"], json!("third time lucky"), "{mode:?}");
        assert_eq!(output["each"], json!([2, 4, 6]), "{mode:?}");
        assert_eq!(output["child"], json!({"out": 8}), "{mode:?}");
        assert_eq!(output["caught"]["Error"], json!("Boom"), "{mode:?}");
        assert_eq!(calls.load(Ordering::SeqCst), 3);
        seen.push(types(&e.history().await.unwrap()));
        saga.shutdown().await;
    }
    assert_eq!(seen[0], seen[1], "embedded (left) and distributed (right)");
    for kind in [
        "ChoiceStateEntered",
        "TaskFailed",
        "WaitStateEntered",
        "MapStateStarted",
        "MapIterationSucceeded",
        "ExecutionSucceeded",
    ] {
        assert!(
            seen[0].iter().any(|t| t == kind),
            "no {kind}: {:?}",
            seen[0]
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_execution_keeps_the_version_it_started_with_on_both_backends() {
    fn version(result: &str) -> String {
        format!(
            r#"{{"StartAt": "Hold", "States": {{
                "Hold": {{"Type": "Task", "Resource": "hold.waitForTaskToken", "Next": "Say"}},
                "Say": {{"Type": "Pass", "Result": "{result}", "End": true}}}}}}"#
        )
    }
    for mode in Backend::both() {
        let backend = Backend::new(mode);
        let (tx, mut tokens) = mpsc::unbounded_channel::<String>();
        let saga = backend
            .build(Sagaflow::builder().handler("hold", hands_out_its_token(tx)))
            .await;
        assert!(saga.list_state_machines().await.unwrap().is_empty());
        assert_eq!(saga.deploy("versioned", &version("v1")).await.unwrap(), 1);
        // The same definition again keeps the version.
        assert_eq!(
            saga.deploy("versioned", &version("v1")).await.unwrap(),
            1,
            "{mode:?}"
        );
        let old = saga
            .start("versioned", json!({}), Some("old"))
            .await
            .unwrap();
        let old_token = tokens.recv().await.unwrap();
        assert_eq!(saga.deploy("versioned", &version("v2")).await.unwrap(), 2);

        let latest = saga
            .describe_state_machine("versioned", None)
            .await
            .unwrap();
        assert_eq!(latest.version, 2, "{mode:?}");
        assert_eq!(latest.definition, version("v2"));
        assert!(latest.arn.ends_with(":stateMachine:versioned"));
        let first = saga
            .describe_state_machine("versioned", Some(1))
            .await
            .unwrap();
        assert_eq!(first.definition, version("v1"), "{mode:?}");
        for (name, v) in [
            ("versioned", Some(3)),
            ("versioned", Some(0)),
            ("nope", None),
        ] {
            assert!(
                matches!(
                    saga.describe_state_machine(name, v).await,
                    Err(Error::StateMachineDoesNotExist(_))
                ),
                "{mode:?}: {name} {v:?}"
            );
        }
        let list = saga.list_state_machines().await.unwrap();
        assert_eq!(list.len(), 1, "{mode:?}");
        assert_eq!(
            (list[0].name.as_str(), list[0].latest_version),
            ("versioned", 2)
        );

        // The running execution finishes on version 1; a new one runs 2.
        let new = saga
            .start("versioned", json!({}), Some("new"))
            .await
            .unwrap();
        let new_token = tokens.recv().await.unwrap();
        saga.send_task_success(&old_token, json!(null))
            .await
            .unwrap();
        saga.send_task_success(&new_token, json!(null))
            .await
            .unwrap();
        assert_eq!(
            old.wait(LIMIT).await.unwrap().output,
            Some(json!("v1")),
            "{mode:?}"
        );
        assert_eq!(
            new.wait(LIMIT).await.unwrap().output,
            Some(json!("v2")),
            "{mode:?}"
        );
        saga.shutdown().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_names_and_payloads_over_the_limit_are_refused_on_both_backends() {
    const ASK: &str = r#"{"StartAt": "Ask", "States": {
        "Ask": {"Type": "Task", "Resource": "ask.waitForTaskToken", "End": true}}}"#;
    // 300 KB of JSON: over the default 256 KiB.
    let big = json!({"blob": "x".repeat(300_000)});
    for mode in Backend::both() {
        let backend = Backend::new(mode);
        let (tx, mut tokens) = mpsc::unbounded_channel::<String>();
        let saga = backend
            .build(
                Sagaflow::builder()
                    .handler("ask", hands_out_its_token(tx))
                    .state_machine("ask", ASK),
            )
            .await;
        // Names outside AWS's rules are the same error on both.
        for (machine, name) in [("ask", "a b"), ("ask", &*"n".repeat(81)), ("a:b", "ok")] {
            let refused = saga.start(machine, json!({}), Some(name)).await;
            assert!(
                matches!(refused, Err(Error::InvalidName(_))),
                "{mode:?}: {machine} {name}: {refused:?}"
            );
        }
        assert!(
            matches!(
                saga.deploy("bad name", ASK).await,
                Err(Error::InvalidName(_))
            ),
            "{mode:?}"
        );
        let garbage = saga.execution("not an ARN");
        assert!(
            matches!(garbage.describe().await, Err(Error::InvalidName(_))),
            "{mode:?}"
        );
        assert!(
            matches!(garbage.stop(None, None).await, Err(Error::InvalidName(_))),
            "{mode:?}"
        );
        let refused = saga.start("ask", big.clone(), Some("big")).await;
        assert!(
            matches!(refused, Err(Error::PayloadTooLarge(_))),
            "{mode:?}: {refused:?}"
        );
        let e = saga.start("ask", json!({}), Some("small")).await.unwrap();
        let token = tokens.recv().await.unwrap();
        let refused = saga.send_task_success(&token, big.clone()).await;
        assert!(
            matches!(refused, Err(Error::PayloadTooLarge(_))),
            "{mode:?}: {refused:?}"
        );
        // Nothing was started or answered: the task still waits.
        let names: Vec<String> = saga
            .list_executions(None, None)
            .await
            .unwrap()
            .into_iter()
            .map(|s| s.name)
            .collect();
        assert_eq!(names, ["small"], "{mode:?}");
        assert_eq!(e.describe().await.unwrap().status, Status::Running);
        saga.send_task_success(&token, json!("fits")).await.unwrap();
        assert_eq!(e.wait(LIMIT).await.unwrap().output, Some(json!("fits")));
        saga.shutdown().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_same_mistakes_get_the_same_errors_on_both_backends() {
    for mode in Backend::both() {
        let backend = Backend::new(mode);
        let (saga, e) = held(&backend, "h1", json!({"a": 1})).await;

        let same = saga
            .start("hold", json!({"a": 1}), Some("h1"))
            .await
            .unwrap();
        assert_eq!(
            same.arn(),
            e.arn(),
            "{mode:?}: a repeated start is the same execution"
        );
        let other = saga.start("hold", json!({"a": 2}), Some("h1")).await;
        // The same fields in both modes: the ARN, the machine's name.
        assert!(
            matches!(&other, Err(Error::ExecutionAlreadyExists(arn)) if arn == e.arn()),
            "{mode:?}: {other:?}"
        );
        let unknown = saga.start("nope", json!({}), None).await;
        assert!(
            matches!(&unknown, Err(Error::StateMachineDoesNotExist(m)) if m == "nope"),
            "{mode:?}: {unknown:?}"
        );
        let invalid = saga
            .deploy("broken", r#"{"StartAt": "X", "States": {}}"#)
            .await;
        assert!(
            matches!(&invalid, Err(Error::InvalidDefinition { name, message })
                if name == "broken" && message.contains("must have at least one state")),
            "{mode:?}: {invalid:?}"
        );
        // An input nested deeper than histories can hold is refused before
        // anything is recorded.
        // Deeper than JSON decoding takes, too (over NATS it was a
        // malformed request).
        for depth in [110, 200] {
            let mut deep = json!(1);
            for _ in 0..depth {
                deep = json!([deep]);
            }
            let too_deep = saga.start("hold", deep, None).await;
            assert!(
                matches!(too_deep, Err(Error::InvalidPayload(_))),
                "{mode:?}: {depth}: {too_deep:?}"
            );
        }
        // Checked in one order: the name, the input, then the machine.
        let bad_name = saga.start("nope", json!({}), Some("a b")).await;
        assert!(
            matches!(bad_name, Err(Error::InvalidName(_))),
            "{mode:?}: {bad_name:?}"
        );
        let too_big = saga
            .start("nope", json!({"blob": "x".repeat(300_000)}), None)
            .await;
        assert!(
            matches!(too_big, Err(Error::PayloadTooLarge(_))),
            "{mode:?}: {too_big:?}"
        );
        // The ARN in another region and account names the same execution.
        let elsewhere = saga.execution(
            e.arn()
                .replace(":local:000000000000:", ":us-east-1:123456789012:"),
        );
        assert_ne!(elsewhere.arn(), "");
        assert_eq!(
            elsewhere.describe().await.map(|d| d.status).ok(),
            Some(Status::Running),
            "{mode:?}"
        );
        assert_eq!(elsewhere.arn(), e.arn(), "{mode:?}");

        let running = e.redrive().await;
        assert!(
            matches!(&running, Err(Error::ExecutionNotRedrivable { execution, .. }) if execution == e.arn()),
            "{mode:?}: {running:?}"
        );
        let waited = e.wait(Duration::from_millis(300)).await;
        assert!(
            matches!(waited, Err(Error::Timeout { .. })),
            "{mode:?}: {waited:?}"
        );

        let ghost = saga.execution(e.arn().replace(":h1", ":ghost"));
        for result in [
            ghost.describe().await.map(|_| ()),
            ghost.history().await.map(|_| ()),
            // At once, not after the whole wait.
            ghost.wait(Duration::from_secs(60)).await.map(|_| ()),
        ] {
            assert!(
                matches!(&result, Err(Error::ExecutionDoesNotExist(arn)) if arn == ghost.arn()),
                "{mode:?}: {result:?}"
            );
        }
        for result in [
            saga.send_task_success("no-such-token", json!(1)).await,
            saga.send_task_failure("no-such-token", "E", "c").await,
            saga.send_task_heartbeat("no-such-token").await,
        ] {
            assert!(
                matches!(result, Err(Error::TaskDoesNotExist)),
                "{mode:?}: {result:?}"
            );
        }
        let none = saga.list_executions(Some("nope"), None).await;
        assert!(
            matches!(&none, Ok(list) if list.is_empty()),
            "{mode:?}: {none:?}"
        );
        // A name no machine can have.
        let listed = saga.list_executions(Some("bad name"), None).await;
        assert!(
            matches!(listed, Err(Error::InvalidName(_))),
            "{mode:?}: {listed:?}"
        );
        let described = saga.describe_state_machine("bad name", None).await;
        assert!(
            matches!(described, Err(Error::InvalidName(_))),
            "{mode:?}: {described:?}"
        );
        saga.shutdown().await;
    }
}

/// A `.sync` child with a given `Name`: its parent's retry finds the name
/// taken by the first attempt's child and fails with
/// `StepFunctions.ExecutionAlreadyExistsException` (as on AWS), rather than
/// waiting on the old child; a request-response start of the same name and
/// input is idempotent.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_named_sync_child_is_not_reused_by_a_retry_on_both_backends() {
    const CHILD: &str = r#"{"StartAt": "Work", "States": {"Work": {"Type": "Task", "Resource": "flaky", "End": true}}}"#;
    let parent = |resource: &str| {
        json!({
            "StartAt": "Call",
            "States": {"Call": {
                "Type": "Task",
                "Resource": resource,
                "Parameters": {
                    "StateMachineArn": "arn:aws:states:local:000000000000:stateMachine:kid",
                    "Name.$": "$.child",
                    "Input": {}
                },
                "Retry": [{"ErrorEquals": ["States.TaskFailed"], "MaxAttempts": 1, "IntervalSeconds": 1}],
                "End": true
            }}
        })
        .to_string()
    };
    for mode in Backend::both() {
        let backend = Backend::new(mode);
        let saga = backend
            .build(Sagaflow::builder().handler(
                "flaky",
                handler_fn(|_: Value, _ctx: TaskContext| async move {
                    Err::<Value, _>(TaskError::new("Broken", "always"))
                }),
            ))
            .await;
        saga.deploy("kid", CHILD).await.unwrap();
        saga.deploy(
            "sync_parent",
            &parent("arn:aws:states:::states:startExecution.sync:2"),
        )
        .await
        .unwrap();
        saga.deploy(
            "fire_parent",
            &parent("arn:aws:states:::states:startExecution"),
        )
        .await
        .unwrap();
        let sync = saga
            .start("sync_parent", json!({"child": "k1"}), None)
            .await
            .unwrap()
            .wait(LIMIT)
            .await
            .unwrap();
        assert_eq!(sync.status, Status::Failed, "{mode:?}");
        assert_eq!(
            sync.error.as_deref(),
            Some("StepFunctions.ExecutionAlreadyExistsException"),
            "{mode:?}: {sync:?}"
        );
        // Fire and forget, twice with the same name and input: one child.
        for run in ["f1", "f2"] {
            let fired = saga
                .start("fire_parent", json!({"child": "k2"}), Some(run))
                .await
                .unwrap()
                .wait(LIMIT)
                .await
                .unwrap();
            assert_eq!(fired.status, Status::Succeeded, "{mode:?}: {fired:?}");
        }
        let kids = saga.list_executions(Some("kid"), None).await.unwrap();
        assert_eq!(kids.len(), 2, "{mode:?}: {kids:?}");
        saga.shutdown().await;
    }
}

/// A child execution whose input is a string that is not JSON, or whose
/// `Name` is not a valid name: the task fails with AWS's error names, which
/// a `Catch` can match, on both backends.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_child_with_a_bad_input_or_name_fails_with_aws_errors_on_both_backends() {
    const CHILD: &str = r#"{"StartAt": "Done", "States": {"Done": {"Type": "Succeed"}}}"#;
    let parent = calls_kid(
        "arn:aws:states:::states:startExecution.sync:2",
        json!({"Name.$": "$.name", "Input.$": "$.input"}),
    );
    for mode in Backend::both() {
        let backend = Backend::new(mode);
        let saga = backend.build(Sagaflow::builder()).await;
        saga.deploy("kid", CHILD).await.unwrap();
        saga.deploy("parent", &parent).await.unwrap();
        for (run, input, error) in [
            (
                "bad-input",
                json!({"name": "k1", "input": "hello"}),
                "StepFunctions.InvalidExecutionInputException",
            ),
            (
                "bad-name",
                json!({"name": "no spaces allowed", "input": "{}"}),
                "StepFunctions.InvalidNameException",
            ),
            (
                "number-name",
                json!({"name": 7, "input": "{}"}),
                "StepFunctions.InvalidNameException",
            ),
            // JSON text nested deeper than an input may be (a string in
            // the parent, so no limit of the parent's applies to it).
            (
                "deep-input",
                json!({"name": "k3", "input": format!("{}{}", "[".repeat(110), "]".repeat(110))}),
                "StepFunctions.InvalidExecutionInputException",
            ),
        ] {
            let done = saga
                .start("parent", input, Some(run))
                .await
                .unwrap()
                .wait(LIMIT)
                .await
                .unwrap();
            assert_eq!(done.status, Status::Failed, "{mode:?} {run}");
            assert_eq!(
                done.error.as_deref(),
                Some(error),
                "{mode:?} {run}: {done:?}"
            );
        }
        // A string that is JSON text is the child's input.
        let done = saga
            .start(
                "parent",
                json!({"name": "k2", "input": r#"{"a": 1}"#}),
                Some("json-text"),
            )
            .await
            .unwrap()
            .wait(LIMIT)
            .await
            .unwrap();
        assert_eq!(done.status, Status::Succeeded, "{mode:?}: {done:?}");
        let report = done.output.unwrap();
        assert_eq!(report["Input"], json!({"a": 1}));
        // The report's dates are the child's own, as it is listed.
        let kids = saga.list_executions(Some("kid"), None).await.unwrap();
        let kid = kids.iter().find(|k| k.name == "k2").expect("the child");
        assert_eq!(report["StartDate"], json!(kid.start_date), "{mode:?}");
        assert_eq!(report["StopDate"], json!(kid.stop_date), "{mode:?}");
        saga.shutdown().await;
    }
}

/// A Fail state with neither `Error` nor `Cause`: the execution has none,
/// and a `.sync:2` parent's report says so (`null`), on both backends.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_bare_fail_state_reports_no_error_on_both_backends() {
    for mode in Backend::both() {
        let backend = Backend::new(mode);
        let saga = backend.build(Sagaflow::builder()).await;
        saga.deploy(
            "bare",
            r#"{"StartAt": "F", "States": {"F": {"Type": "Fail"}}}"#,
        )
        .await
        .unwrap();
        saga.deploy(
            "over_bare",
            &json!({
                "StartAt": "Call",
                "States": {"Call": {
                    "Type": "Task",
                    "Resource": "arn:aws:states:::states:startExecution.sync:2",
                    "Parameters": {"StateMachineArn": "arn:aws:states:local:000000000000:stateMachine:bare"},
                    "End": true
                }}
            })
            .to_string(),
        )
        .await
        .unwrap();
        let bare = saga
            .start("bare", json!({}), None)
            .await
            .unwrap()
            .wait(LIMIT)
            .await
            .unwrap();
        assert_eq!(bare.status, Status::Failed, "{mode:?}");
        assert_eq!((bare.error, bare.cause), (None, None), "{mode:?}");
        let parent = saga
            .start("over_bare", json!({}), None)
            .await
            .unwrap()
            .wait(LIMIT)
            .await
            .unwrap();
        assert_eq!(
            parent.error.as_deref(),
            Some("States.TaskFailed"),
            "{mode:?}"
        );
        let report: Value = serde_json::from_str(parent.cause.as_deref().unwrap()).unwrap();
        assert_eq!(report["Status"], json!("FAILED"), "{mode:?}: {report}");
        assert_eq!(report["Error"], Value::Null, "{mode:?}: {report}");
        saga.shutdown().await;
    }
}

/// A handler result over the payload limit (256 KiB) fails its task with
/// `States.DataLimitExceeded` and the same cause on both backends, and both
/// record the same events.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_result_over_the_limit_fails_the_same_way_on_both_backends() {
    let mut seen = Vec::new();
    for mode in Backend::both() {
        let backend = Backend::new(mode);
        let saga = backend
            .build(Sagaflow::builder().handler(
                "huge",
                handler_fn(|_: Value, _ctx: TaskContext| async move {
                    Ok::<_, TaskError>(json!({"pad": "x".repeat(300_000)}))
                }),
            ))
            .await;
        saga.deploy(
            "huge",
            r#"{"StartAt": "T", "States": {"T": {"Type": "Task", "Resource": "huge", "End": true}}}"#,
        )
        .await
        .unwrap();
        let e = saga.start("huge", json!({}), Some("h")).await.unwrap();
        let done = e.wait(LIMIT).await.unwrap();
        assert_eq!(done.status, Status::Failed, "{mode:?}");
        assert_eq!(
            done.error.as_deref(),
            Some("States.DataLimitExceeded"),
            "{mode:?}"
        );
        seen.push((done.cause, types(&e.history().await.unwrap())));
        saga.shutdown().await;
    }
    assert_eq!(seen[0], seen[1]);
    // AWS's cause.
    assert_eq!(
        seen[0].0.as_deref(),
        Some(
            "The state/task 'T' returned a result with a size exceeding the maximum number of bytes service limit."
        )
    );
}

/// A `.sync` child whose report (its input and output together) is over
/// the payload limit: the parent's task fails with
/// `States.DataLimitExceeded`, recorded as the same events on both
/// backends.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_child_report_over_the_limit_fails_the_same_way_on_both_backends() {
    const CHILD: &str = r#"{"StartAt": "Done", "States": {"Done": {"Type": "Succeed"}}}"#;
    let parent = calls_kid(
        "arn:aws:states:::states:startExecution.sync:2",
        json!({"Input.$": "$"}),
    );
    let mut seen = Vec::new();
    for mode in Backend::both() {
        let backend = Backend::new(mode);
        let saga = backend.build(Sagaflow::builder()).await;
        saga.deploy("kid", CHILD).await.unwrap();
        saga.deploy("parent", &parent).await.unwrap();
        // 150 KB in, 150 KB out: 300 KB of report.
        let e = saga
            .start("parent", json!({"pad": "x".repeat(150_000)}), Some("p"))
            .await
            .unwrap();
        let done = e.wait(LIMIT).await.unwrap();
        assert_eq!(done.status, Status::Failed, "{mode:?}");
        assert_eq!(
            done.error.as_deref(),
            Some("States.DataLimitExceeded"),
            "{mode:?}: {done:?}"
        );
        let history = types(&e.history().await.unwrap());
        assert!(
            history.iter().any(|t| t == "TaskFailed")
                && !history.iter().any(|t| t == "TaskSucceeded"),
            "{mode:?}: {history:?}"
        );
        seen.push((done.cause, history));
        saga.shutdown().await;
    }
    assert_eq!(seen[0], seen[1]);
}

/// A `.sync` child failing with a large cause: the parent's task fails with
/// the report, in the shape of its resource (`.sync` gives the input and
/// output as text), cut to AWS's 32,768 characters, the same on both
/// backends.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_childs_huge_failure_cause_is_cut_the_same_way_on_both_backends() {
    const CHILD: &str = r#"{"StartAt": "Fail", "States": {"Fail": {"Type": "Fail", "Error": "Big", "CausePath": "$.c"}}}"#;
    let parent =
        |resource: &str, name: &str| calls_kid(resource, json!({"Name": name, "Input.$": "$"}));
    let mut causes = Vec::new();
    for mode in Backend::both() {
        let backend = Backend::new(mode);
        let saga = backend.build(Sagaflow::builder()).await;
        saga.deploy("kid", CHILD).await.unwrap();
        saga.deploy(
            "v2",
            &parent("arn:aws:states:::states:startExecution.sync:2", "k2"),
        )
        .await
        .unwrap();
        saga.deploy(
            "v1",
            &parent("arn:aws:states:::states:startExecution.sync", "k1"),
        )
        .await
        .unwrap();
        let mut seen = Vec::new();
        for machine in ["v2", "v1"] {
            let done = saga
                .start(machine, json!({"c": "\"".repeat(60_000)}), Some(machine))
                .await
                .unwrap()
                .wait(LIMIT)
                .await
                .unwrap();
            assert_eq!(done.status, Status::Failed, "{mode:?} {machine}");
            assert_eq!(
                done.error.as_deref(),
                Some("States.TaskFailed"),
                "{mode:?} {machine}"
            );
            let cause = done.cause.unwrap_or_default();
            assert_eq!(cause.chars().count(), 32_768, "{mode:?} {machine}");
            assert!(cause.ends_with("... (truncated)"), "{mode:?} {machine}");
            seen.push(cause);
        }
        // The cause comes first in the report and fills the cut.
        assert_ne!(seen[0], seen[1], "{mode:?}: the shapes differ");
        causes.push(seen);
        saga.shutdown().await;
    }
    assert_eq!(causes[0], causes[1]);
}
