//! End to end, over NATS: every ASL behaviour that depends on the runtime
//! (retries and their backoff, timeouts, heartbeats, Wait, callbacks,
//! Map/Parallel fan-out, child executions, stop, redrive, `lambda:invoke`,
//! size limits and bad messages). Each test has its own nats-server, an
//! in-process coordinator (4 partitions, 2 s leases) serving the API, and
//! in-process participants (`Worker`), and drives executions through the
//! API client.
//!
//! Timing assertions are lower bounds only (a backoff of 1 s takes *at
//! least* 1 s); upper bounds would flake on a busy machine.

mod common;

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde_json::{Value, json};
use tokio::sync::{mpsc, watch};

use sagaflow_coordinator::cluster::client::ApiClientError;
use sagaflow_participant::{TaskContext, TaskError, handler_fn, lambda_fn};
use sagaflow_protocol::api::{ExecutionStatus, HistoryRequest, StartExecutionRequest};
use sagaflow_protocol::{ExecutionRef, InboxMessage, StartExecution};

use common::{Env, assert_status, events_of, options, start_message};

fn api_code<T: std::fmt::Debug>(result: Result<T, ApiClientError>) -> String {
    match result {
        Err(ApiClientError::Api(e)) => e.code,
        other => panic!("expected an API error, got {other:?}"),
    }
}

// ------------------------------------------------------------ 1. retries

const RETRY: &str = r#"{
  "StartAt": "Flaky",
  "States": {
    "Flaky": {
      "Type": "Task", "Resource": "flaky",
      "Retry": [{"ErrorEquals": ["Flaky.Busy"], "IntervalSeconds": 1, "BackoffRate": 2, "MaxAttempts": 3}],
      "End": true
    }
  }
}"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retries_back_off_and_the_history_shows_every_attempt() {
    let mut env = Env::start().await;
    env.deploy("retry", RETRY).await;
    // (when, attempt, task id) of every call.
    let calls: Arc<Mutex<Vec<(Instant, u32, String)>>> = Arc::default();
    let seen = calls.clone();
    env.worker(|b| {
        b.handler(
            "flaky",
            handler_fn(move |input: Value, ctx: TaskContext| {
                let seen = seen.clone();
                async move {
                    let n = {
                        let mut calls = seen.lock().unwrap();
                        calls.push((Instant::now(), ctx.attempt, ctx.task_id.clone()));
                        calls.len()
                    };
                    if n <= 2 {
                        Err(TaskError::new("Flaky.Busy", format!("try {n}")))
                    } else {
                        Ok(json!({"done": input["order"], "after": n}))
                    }
                }
            }),
        )
    })
    .await;

    let arn = env
        .start_execution("retry", "r1", json!({"order": 7}))
        .await;
    let done = env.wait(&arn).await;
    assert_status(&done, ExecutionStatus::Succeeded);
    assert_eq!(done.output, Some(json!({"done": 7, "after": 3})));

    let calls = calls.lock().unwrap().clone();
    assert_eq!(calls.len(), 3, "{calls:?}");
    let attempts: Vec<u32> = calls.iter().map(|c| c.1).collect();
    assert_eq!(attempts, vec![0, 1, 2]);
    let ids: HashSet<&str> = calls.iter().map(|c| c.2.as_str()).collect();
    assert_eq!(ids.len(), 3, "every attempt has its own task id: {calls:?}");
    // IntervalSeconds 1, BackoffRate 2: at least 1 s, then at least 2 s.
    let first_gap = calls[1].0 - calls[0].0;
    let second_gap = calls[2].0 - calls[1].0;
    assert!(first_gap >= Duration::from_secs(1), "{first_gap:?}");
    assert!(second_gap >= Duration::from_secs(2), "{second_gap:?}");

    let history = env.history(&arn).await;
    let types: Vec<&str> = history
        .iter()
        .map(|e| e["type"].as_str().unwrap())
        .collect();
    assert_eq!(
        types,
        vec![
            "ExecutionStarted",
            "TaskStateEntered",
            "TaskScheduled",
            "TaskStarted",
            "TaskFailed",
            "TaskRetryScheduled",
            "TaskScheduled",
            "TaskStarted",
            "TaskFailed",
            "TaskRetryScheduled",
            "TaskScheduled",
            "TaskStarted",
            "TaskSucceeded",
            "TaskStateExited",
            "ExecutionSucceeded",
        ]
    );
    let retries: Vec<(Value, Value)> = events_of(&history, "TaskRetryScheduled")
        .iter()
        .map(|e| {
            let d = &e["taskRetryScheduledEventDetails"];
            assert_eq!(d["error"], json!("Flaky.Busy"));
            assert_eq!(d["name"], json!("Flaky"));
            (d["attempt"].clone(), d["delaySeconds"].clone())
        })
        .collect();
    assert_eq!(retries.len(), 2);
    assert_eq!(retries[0].1.as_f64(), Some(1.0), "{retries:?}");
    assert_eq!(retries[1].1.as_f64(), Some(2.0), "{retries:?}");
    let scheduled: Vec<&str> = events_of(&history, "TaskScheduled")
        .iter()
        .map(|e| e["taskScheduledEventDetails"]["taskId"].as_str().unwrap())
        .collect();
    let called: Vec<&str> = calls.iter().map(|c| c.2.as_str()).collect();
    assert_eq!(scheduled, called, "the history names the attempts that ran");
    let failures: Vec<&Value> = events_of(&history, "TaskFailed")
        .iter()
        .map(|e| &e["taskFailedEventDetails"]["cause"])
        .collect();
    assert_eq!(failures, vec![&json!("try 1"), &json!("try 2")]);
    env.shutdown().await;
}

// ------------------------------------------------------- 2. task timeout

const TIMEOUT_CAUGHT: &str = r#"{
  "StartAt": "Slow",
  "States": {
    "Slow": {
      "Type": "Task", "Resource": "slow", "TimeoutSeconds": 1,
      "Catch": [{"ErrorEquals": ["States.Timeout"], "ResultPath": "$.error", "Next": "Undo"}],
      "End": true
    },
    "Undo": {"Type": "Pass", "End": true}
  }
}"#;

const TIMEOUT_UNCAUGHT: &str = r#"{
  "StartAt": "Slow",
  "States": {"Slow": {"Type": "Task", "Resource": "slow", "TimeoutSeconds": 1, "End": true}}
}"#;

/// A handler that sleeps `input.sleepMs` then succeeds.
fn sleeper(calls: Arc<AtomicUsize>) -> impl sagaflow_participant::Handler + 'static {
    handler_fn(move |input: Value, _ctx: TaskContext| {
        let calls = calls.clone();
        async move {
            calls.fetch_add(1, Ordering::SeqCst);
            let ms = input["sleepMs"].as_u64().unwrap_or(0);
            tokio::time::sleep(Duration::from_millis(ms)).await;
            Ok::<_, TaskError>(json!({"slept": ms}))
        }
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_task_past_its_timeout_fails_with_states_timeout() {
    let mut env = Env::start().await;
    env.deploy("caught", TIMEOUT_CAUGHT).await;
    env.deploy("uncaught", TIMEOUT_UNCAUGHT).await;
    let calls = Arc::new(AtomicUsize::new(0));
    let c = calls.clone();
    env.worker(|b| b.handler("slow", sleeper(c))).await;

    let began = Instant::now();
    let caught = env
        .start_execution("caught", "t1", json!({"sleepMs": 2500}))
        .await;
    let uncaught = env
        .start_execution("uncaught", "t2", json!({"sleepMs": 2500}))
        .await;
    let caught_done = env.wait(&caught).await;
    assert!(began.elapsed() >= Duration::from_secs(1));
    assert_status(&caught_done, ExecutionStatus::Succeeded);
    let output = caught_done.output.clone().expect("output");
    assert_eq!(output["sleepMs"], json!(2500));
    assert_eq!(
        output["error"]["Error"],
        json!("States.Timeout"),
        "{output}"
    );
    let uncaught_done = env.wait(&uncaught).await;
    assert_status(&uncaught_done, ExecutionStatus::Failed);
    assert_eq!(uncaught_done.error.as_deref(), Some("States.Timeout"));

    let history = env.history(&caught).await;
    let timed_out = events_of(&history, "TaskTimedOut");
    assert_eq!(timed_out.len(), 1, "{history:#?}");
    assert_eq!(
        timed_out[0]["taskTimedOutEventDetails"]["error"],
        json!("States.Timeout")
    );
    assert_eq!(events_of(&history, "CatchTriggered").len(), 1);
    assert!(events_of(&history, "TaskSucceeded").is_empty());

    // The handler's late answers change nothing.
    tokio::time::sleep(Duration::from_millis(2500)).await;
    assert_eq!(calls.load(Ordering::SeqCst), 2);
    assert_eq!(env.history(&caught).await, history);
    assert_status(&env.describe(&caught).await, ExecutionStatus::Succeeded);
    assert_status(&env.describe(&uncaught).await, ExecutionStatus::Failed);
    env.shutdown().await;
}

// ----------------------------------------------------- 3. heartbeat timeout

const HEARTBEAT: &str = r#"{
  "StartAt": "Work",
  "States": {
    "Work": {"Type": "Task", "Resource": "work", "HeartbeatSeconds": 3, "TimeoutSeconds": 30, "End": true}
  }
}"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn heartbeats_keep_a_task_alive_and_their_absence_fails_it() {
    let mut env = Env::start().await;
    env.deploy("hb", HEARTBEAT).await;
    env.worker(|b| {
        b.handler(
            "work",
            handler_fn(|input: Value, ctx: TaskContext| async move {
                let beat = input["beat"].as_bool().unwrap_or(false);
                let began = Instant::now();
                while began.elapsed() < Duration::from_secs(8) {
                    tokio::time::sleep(Duration::from_millis(300)).await;
                    if beat {
                        ctx.heartbeat().await;
                    }
                }
                Ok::<_, TaskError>(json!({"beat": beat}))
            }),
        )
    })
    .await;

    let silent = env
        .start_execution("hb", "silent", json!({"beat": false}))
        .await;
    let chatty = env
        .start_execution("hb", "chatty", json!({"beat": true}))
        .await;
    let silent = env.wait(&silent).await;
    assert_status(&silent, ExecutionStatus::Failed);
    assert_eq!(silent.error.as_deref(), Some("States.HeartbeatTimeout"));
    let chatty_done = env.wait(&chatty).await;
    assert_status(&chatty_done, ExecutionStatus::Succeeded);
    assert_eq!(chatty_done.output, Some(json!({"beat": true})));
    // It ran its 8 s (more than twice the 3 s heartbeat) and was not cut
    // short.
    let history = env.history(&chatty).await;
    assert!(
        events_of(&history, "TaskTimedOut").is_empty(),
        "{history:#?}"
    );
    let history = env.history(&silent.execution_arn).await;
    let timed_out = events_of(&history, "TaskTimedOut");
    assert_eq!(timed_out.len(), 1, "{history:#?}");
    assert_eq!(
        timed_out[0]["taskTimedOutEventDetails"]["error"],
        json!("States.HeartbeatTimeout")
    );
    env.shutdown().await;
}

const HEARTBEAT_FROM_INPUT: &str = r#"{
  "StartAt": "Work",
  "States": {
    "Work": {"Type": "Task", "Resource": "work", "HeartbeatSecondsPath": "$.hb", "End": true}
  }
}"#;

/// A heartbeat period taken from the input may be any positive number: one
/// whose deadline lies past the end of time (jiff's year 9999) is never
/// reached, and neither arming it nor resetting it stops the partition.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_heartbeat_period_past_the_end_of_time_never_expires() {
    let mut env = Env::start().await;
    env.deploy("hb-input", HEARTBEAT_FROM_INPUT).await;
    env.worker(|b| {
        b.handler(
            "work",
            handler_fn(|input: Value, ctx: TaskContext| async move {
                ctx.heartbeat().await;
                tokio::time::sleep(Duration::from_millis(200)).await;
                ctx.heartbeat().await;
                Ok::<_, TaskError>(input)
            }),
        )
    })
    .await;
    for (name, hb) in [
        ("far", json!(1_000_000_000_000_000_u64)),
        ("max", json!(u64::MAX)),
    ] {
        let arn = env
            .start_execution("hb-input", name, json!({"hb": hb}))
            .await;
        let done = env.wait(&arn).await;
        assert_status(&done, ExecutionStatus::Succeeded);
    }
    env.shutdown().await;
}

// ------------------------------------------------------------- 4. Wait

const WAIT_SECONDS: &str = r#"{
  "StartAt": "Pause",
  "States": {"Pause": {"Type": "Wait", "Seconds": 1, "Next": "Done"}, "Done": {"Type": "Pass", "End": true}}
}"#;

const WAIT_UNTIL: &str = r#"{
  "StartAt": "Pause",
  "States": {"Pause": {"Type": "Wait", "TimestampPath": "$.until", "Next": "Done"}, "Done": {"Type": "Pass", "End": true}}
}"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wait_states_wait_at_least_as_long_as_asked() {
    let env = Env::start().await;
    env.deploy("pause", WAIT_SECONDS).await;
    env.deploy("until", WAIT_UNTIL).await;
    // Whole seconds, at least 2 s from now.
    let until_secs = jiff::Timestamp::now().as_second() + 3;
    let until = jiff::Timestamp::from_second(until_secs).unwrap();
    let until_text = until.strftime("%Y-%m-%dT%H:%M:%SZ").to_string();

    let began = Instant::now();
    let a = env.start_execution("pause", "w1", json!({"x": 1})).await;
    let b = env
        .start_execution("until", "w2", json!({"until": until_text}))
        .await;
    let a = env.wait(&a).await;
    let waited = began.elapsed();
    assert_status(&a, ExecutionStatus::Succeeded);
    assert_eq!(a.output, Some(json!({"x": 1})));
    assert!(waited >= Duration::from_secs(1), "{waited:?}");
    let b = env.wait(&b).await;
    assert_status(&b, ExecutionStatus::Succeeded);
    assert!(
        jiff::Timestamp::now() >= until,
        "finished before {until_text}"
    );
    let history = env.history(&b.execution_arn).await;
    let exited = events_of(&history, "WaitStateExited");
    assert_eq!(exited.len(), 1, "{history:#?}");
    let at: jiff::Timestamp = exited[0]["timestamp"].as_str().unwrap().parse().unwrap();
    assert!(at >= until, "left the Wait at {at}, before {until}");
    env.shutdown().await;
}

// -------------------------------------------------------- 5. callbacks

const CALLBACK: &str = r#"{
  "StartAt": "Ask",
  "States": {
    "Ask": {
      "Type": "Task", "Resource": "arn:aws:states:::sqs:sendMessage.waitForTaskToken",
      "Parameters": {"token.$": "$$.Task.Token", "order.$": "$.order"},
      "Catch": [{"ErrorEquals": ["Rejected"], "ResultPath": "$.error", "Next": "Refused"}],
      "End": true
    },
    "Refused": {"Type": "Pass", "End": true}
  }
}"#;

const CALLBACK_HEARTBEAT: &str = r#"{
  "StartAt": "Ask",
  "States": {
    "Ask": {
      "Type": "Task", "Resource": "arn:aws:states:::sqs:sendMessage.waitForTaskToken",
      "Parameters": {"token.$": "$$.Task.Token", "order.$": "$.order"},
      "HeartbeatSeconds": 2,
      "End": true
    }
  }
}"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn callback_tasks_wait_for_their_token() {
    let mut env = Env::start().await;
    env.deploy("callback", CALLBACK).await;
    env.deploy("callback_hb", CALLBACK_HEARTBEAT).await;
    // The participant forwards (order, token) and answers at once, as an
    // SQS send would.
    let (tx, mut rx) = mpsc::unbounded_channel::<(Value, String)>();
    env.worker(|b| {
        b.handler(
            "sendMessage",
            handler_fn(move |input: Value, ctx: TaskContext| {
                let tx = tx.clone();
                async move {
                    let token = input["token"].as_str().unwrap_or_default().to_string();
                    assert_eq!(ctx.task_token.as_deref(), Some(token.as_str()));
                    let _ = tx.send((input["order"].clone(), token));
                    Ok::<_, TaskError>(json!({"MessageId": "m-1"}))
                }
            }),
        )
    })
    .await;
    let mut tokens: HashMap<Value, String> = HashMap::new();
    let mut token_for = async |order: Value| -> String {
        while !tokens.contains_key(&order) {
            let (o, t) = tokio::time::timeout(common::LIMIT, rx.recv())
                .await
                .expect("a token in time")
                .expect("participant alive");
            tokens.insert(o, t);
        }
        tokens[&order].clone()
    };

    // Success: running until SendTaskSuccess, then its output.
    let ok = env
        .start_execution("callback", "ok", json!({"order": 1}))
        .await;
    let token = token_for(json!(1)).await;
    assert!(!token.is_empty());
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert_status(&env.describe(&ok).await, ExecutionStatus::Running);
    // The same execution and task with a nonce that was never issued: refused.
    let forged = {
        use base64::Engine as _;
        let engine = base64::engine::general_purpose::URL_SAFE_NO_PAD;
        let raw = String::from_utf8(engine.decode(&token).expect("base64")).expect("utf-8");
        let (named, _nonce) = raw.rsplit_once('\n').expect("three lines");
        engine.encode(format!("{named}\n0000000000000000"))
    };
    let refused_forgery = env
        .api
        .send_task_success(&forged, json!({"approved": "forged"}))
        .await;
    assert!(
        matches!(&refused_forgery, Err(e) if e.to_string().contains("InvalidToken")),
        "{refused_forgery:?}"
    );
    assert_status(&env.describe(&ok).await, ExecutionStatus::Running);
    env.api
        .send_task_success(&token, json!({"approved": true}))
        .await
        .unwrap();
    // A second answer right behind the first (accepted or refused by the
    // API, depending on timing) does not count.
    let _ = env
        .api
        .send_task_success(&token, json!({"approved": "twice"}))
        .await;
    let done = env.wait(&ok).await;
    assert_status(&done, ExecutionStatus::Succeeded);
    assert_eq!(done.output, Some(json!({"approved": true})));
    // The token is spent.
    assert!(
        env.api
            .send_task_success(&token, json!({"again": true}))
            .await
            .is_err()
    );

    // Failure: reaches the Catch.
    let refused = env
        .start_execution("callback", "refused", json!({"order": 2}))
        .await;
    let token = token_for(json!(2)).await;
    env.api
        .send_task_failure(&token, Some("Rejected".into()), Some("no stock".into()))
        .await
        .unwrap();
    let done = env.wait(&refused).await;
    assert_status(&done, ExecutionStatus::Succeeded);
    assert_eq!(
        done.output,
        Some(json!({"order": 2, "error": {"Error": "Rejected", "Cause": "no stock"}}))
    );

    // Heartbeats keep a HeartbeatSeconds 2 task alive for 4.5 s...
    let alive = env
        .start_execution("callback_hb", "alive", json!({"order": 3}))
        .await;
    let token = token_for(json!(3)).await;
    let began = Instant::now();
    while began.elapsed() < Duration::from_millis(4500) {
        env.api.send_task_heartbeat(&token).await.unwrap();
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    assert_status(&env.describe(&alive).await, ExecutionStatus::Running);
    env.api
        .send_task_success(&token, json!("late but alive"))
        .await
        .unwrap();
    let done = env.wait(&alive).await;
    assert_status(&done, ExecutionStatus::Succeeded);
    assert_eq!(done.output, Some(json!("late but alive")));
    // ... and without them it times out.
    let dead = env
        .start_execution("callback_hb", "dead", json!({"order": 4}))
        .await;
    let _ = token_for(json!(4)).await;
    let done = env.wait(&dead).await;
    assert_status(&done, ExecutionStatus::Failed);
    assert_eq!(done.error.as_deref(), Some("States.HeartbeatTimeout"));
    env.shutdown().await;
}

// ----------------------------------------------------- 6. Map and Parallel

const MAP: &str = r#"{
  "StartAt": "Each",
  "States": {
    "Each": {
      "Type": "Map", "ItemsPath": "$.items", "MaxConcurrency": 2,
      "ItemProcessor": {
        "StartAt": "Work",
        "States": {"Work": {"Type": "Task", "Resource": "item", "End": true}}
      },
      "End": true
    }
  }
}"#;

const PARALLEL: &str = r#"{
  "StartAt": "All",
  "States": {
    "All": {
      "Type": "Parallel",
      "Branches": [
        {"StartAt": "A", "States": {"A": {"Type": "Task", "Resource": "branch", "Parameters": {"i": 0, "sleepMs": 600}, "End": true}}},
        {"StartAt": "B", "States": {"B": {"Type": "Task", "Resource": "branch", "Parameters": {"i": 1, "sleepMs": 300}, "End": true}}},
        {"StartAt": "C", "States": {"C": {"Type": "Task", "Resource": "branch", "Parameters": {"i": 2, "sleepMs": 0}, "End": true}}}
      ],
      "End": true
    }
  }
}"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn map_respects_max_concurrency_and_parallel_keeps_branch_order() {
    let mut env = Env::start().await;
    env.deploy("map", MAP).await;
    env.deploy("parallel", PARALLEL).await;
    let running = Arc::new(AtomicUsize::new(0));
    let peak = Arc::new(AtomicUsize::new(0));
    let calls = Arc::new(AtomicUsize::new(0));
    let (r, p, c) = (running.clone(), peak.clone(), calls.clone());
    let finished: Arc<Mutex<Vec<u64>>> = Arc::default();
    let f = finished.clone();
    env.worker(|b| {
        b.handler(
            "item",
            handler_fn(move |item: Value, _ctx: TaskContext| {
                let (r, p, c) = (r.clone(), p.clone(), c.clone());
                async move {
                    c.fetch_add(1, Ordering::SeqCst);
                    let now = r.fetch_add(1, Ordering::SeqCst) + 1;
                    p.fetch_max(now, Ordering::SeqCst);
                    tokio::time::sleep(Duration::from_millis(300)).await;
                    r.fetch_sub(1, Ordering::SeqCst);
                    match item.as_u64() {
                        Some(13) => Err(TaskError::new("BadItem", "13 is unlucky")),
                        Some(n) => Ok(json!(n * 10)),
                        None => Err(TaskError::new("NotANumber", item.to_string())),
                    }
                }
            }),
        )
        .handler(
            "branch",
            handler_fn(move |input: Value, _ctx: TaskContext| {
                let f = f.clone();
                async move {
                    let ms = input["sleepMs"].as_u64().unwrap_or(0);
                    tokio::time::sleep(Duration::from_millis(ms)).await;
                    let i = input["i"].as_u64().unwrap_or(99);
                    f.lock().unwrap().push(i);
                    Ok::<_, TaskError>(json!({"branch": i}))
                }
            }),
        )
        .concurrency(16)
    })
    .await;

    let done = env
        .run("map", "m1", json!({"items": [1, 2, 3, 4, 5, 6]}))
        .await;
    assert_status(&done, ExecutionStatus::Succeeded);
    assert_eq!(done.output, Some(json!([10, 20, 30, 40, 50, 60])));
    assert_eq!(calls.load(Ordering::SeqCst), 6);
    let most = peak.load(Ordering::SeqCst);
    assert!(most <= 2, "{most} items ran at once");
    assert_eq!(most, 2, "MaxConcurrency 2 lets two items run together");

    let done = env.run("parallel", "p1", json!({})).await;
    assert_status(&done, ExecutionStatus::Succeeded);
    assert_eq!(
        done.output,
        Some(json!([{"branch": 0}, {"branch": 1}, {"branch": 2}]))
    );
    assert_eq!(
        *finished.lock().unwrap(),
        vec![2, 1, 0],
        "the branches finished in reverse order, yet the output is in branch order"
    );

    // A failing iteration fails the Map (and the execution) with its error.
    let done = env.run("map", "m2", json!({"items": [1, 13, 3, 4]})).await;
    assert_status(&done, ExecutionStatus::Failed);
    assert_eq!(done.error.as_deref(), Some("BadItem"));
    assert_eq!(done.cause.as_deref(), Some("13 is unlucky"));
    let history = env.history(&done.execution_arn).await;
    let failed = events_of(&history, "MapIterationFailed");
    assert_eq!(failed.len(), 1, "{history:#?}");
    assert_eq!(
        failed[0]["mapIterationFailedEventDetails"]["index"],
        json!(1)
    );
    env.shutdown().await;
}

// ------------------------------------------------- 7. child executions

const CHILD: &str = r#"{
  "StartAt": "Double",
  "States": {"Double": {"Type": "Task", "Resource": "double", "End": true}}
}"#;

const SLOW_CHILD: &str = r#"{
  "StartAt": "Pause",
  "States": {"Pause": {"Type": "Wait", "Seconds": 2, "End": true}}
}"#;

const BROKEN_CHILD: &str = r#"{
  "StartAt": "Boom",
  "States": {"Boom": {"Type": "Fail", "Error": "ChildBroke", "Cause": "on purpose"}}
}"#;

fn parent(resource: &str, child: &str) -> String {
    json!({
        "StartAt": "Call",
        "States": {
            "Call": {
                "Type": "Task",
                "Resource": resource,
                "Parameters": {
                    "StateMachineArn": format!("arn:aws:states:local:000000000000:stateMachine:{child}"),
                    "Input": {"n.$": "$.n"}
                },
                "End": true
            }
        }
    })
    .to_string()
}

/// Results the coordinator makes itself (a request-response child start
/// answers at once) are applied as the next step of the partition's loop,
/// not inside the step that made them: a Map starting thousands of children
/// one at a time neither nests a step per child (it overflowed the stack)
/// nor keeps the partition from its other work meanwhile.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn thousands_of_child_starts_in_a_row_run_as_steps_of_the_loop() {
    let env = Env::start().await;
    env.deploy(
        "noop",
        r#"{"StartAt": "Done", "States": {"Done": {"Type": "Succeed"}}}"#,
    )
    .await;
    let fan = json!({
        "StartAt": "Fan",
        "States": {"Fan": {
            "Type": "Map", "ItemsPath": "$.items", "MaxConcurrency": 1, "End": true,
            "ItemProcessor": {"StartAt": "Start", "States": {"Start": {
                "Type": "Task", "Resource": "arn:aws:states:::states:startExecution",
                "Parameters": {"StateMachineArn": "arn:aws:states:local:000000000000:stateMachine:noop"},
                "ResultSelector": {"ok": true},
                "End": true}}}}}
    });
    env.deploy("fan", &fan.to_string()).await;
    const CHILDREN: usize = 3000;
    let items: Vec<usize> = (0..CHILDREN).collect();
    // Meanwhile, another execution of the same partition waits (no time:
    // its timer is due at once): its timer fires while the children are
    // still being started.
    env.deploy(
        "pause",
        r#"{"StartAt": "P", "States": {"P": {"Type": "Wait", "Seconds": 0, "End": true}}}"#,
    )
    .await;
    let store = env.cluster.as_ref().expect("running").store().clone();
    let fan_ref = ExecutionRef::new("fan", "fan").unwrap();
    let pause_name = (0..)
        .map(|i| format!("pause-{i}"))
        .find(|n| {
            store.partition_of(&ExecutionRef::new("pause", n).unwrap())
                == store.partition_of(&fan_ref)
        })
        .unwrap();
    let fan_arn = env
        .start_execution("fan", "fan", json!({"items": items}))
        .await;
    env.until_event(&fan_arn, "MapIterationStarted").await;
    let pause = env.run("pause", &pause_name, json!({})).await;
    assert_status(&pause, ExecutionStatus::Succeeded);
    assert_eq!(
        env.describe(&fan_arn).await.status,
        ExecutionStatus::Running,
        "the Wait ended only after the whole chain of child starts"
    );
    let done = env.wait(&fan_arn).await;
    assert_status(&done, ExecutionStatus::Succeeded);
    let out = done.output.expect("output");
    assert_eq!(out.as_array().map(Vec::len), Some(CHILDREN));
    env.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn child_executions_run_and_report_to_their_parent() {
    let mut env = Env::start().await;
    env.deploy("child", CHILD).await;
    env.deploy("slow_child", SLOW_CHILD).await;
    env.deploy("broken_child", BROKEN_CHILD).await;
    let sync2 = "arn:aws:states:::states:startExecution.sync:2";
    let sync1 = "arn:aws:states:::states:startExecution.sync";
    let fire = "arn:aws:states:::states:startExecution";
    env.deploy("parent_v2", &parent(sync2, "child")).await;
    env.deploy("parent_v1", &parent(sync1, "child")).await;
    env.deploy("parent_fire", &parent(fire, "slow_child")).await;
    env.deploy("parent_broken", &parent(sync2, "broken_child"))
        .await;
    env.deploy("parent_broken_v1", &parent(sync1, "broken_child"))
        .await;
    env.worker(|b| b.handler("double", doubler())).await;

    // .sync:2: the child's output as JSON.
    let done = env.run("parent_v2", "v2", json!({"n": 21})).await;
    assert_status(&done, ExecutionStatus::Succeeded);
    let out = done.output.clone().expect("output");
    assert_eq!(out["Output"], json!({"doubled": 42}), "{out}");
    assert_eq!(out["Status"], json!("SUCCEEDED"));
    let child_arn = out["ExecutionArn"].as_str().expect("child ARN").to_string();
    let child = env.describe(&child_arn).await;
    assert_status(&child, ExecutionStatus::Succeeded);
    assert_eq!(child.input, Some(json!({"n": 21})));
    assert_eq!(child.output, Some(json!({"doubled": 42})));

    // .sync: the child's output as a JSON string.
    let done = env.run("parent_v1", "v1", json!({"n": 5})).await;
    assert_status(&done, ExecutionStatus::Succeeded);
    let out = done.output.clone().expect("output");
    let text = out["Output"].as_str().expect("Output is a string");
    assert_eq!(
        serde_json::from_str::<Value>(text).unwrap(),
        json!({"doubled": 10})
    );
    // ... and its input too, as DescribeExecution gives it.
    assert_eq!(out["Input"], json!(r#"{"n":5}"#), "{out}");

    // Request-response: the parent gets the ARN at once; the child runs on.
    let done = env.run("parent_fire", "fire", json!({"n": 1})).await;
    assert_status(&done, ExecutionStatus::Succeeded);
    let out = done.output.clone().expect("output");
    let child_arn = out["ExecutionArn"].as_str().expect("child ARN").to_string();
    assert!(out["StartDate"].is_string(), "{out}");
    assert!(out.get("Output").is_none(), "{out}");
    match env.api.describe_execution(&child_arn).await {
        Ok(d) => assert_eq!(
            d.status,
            ExecutionStatus::Running,
            "the parent did not wait"
        ),
        Err(e) => assert_eq!(
            e.code(),
            Some("ExecutionDoesNotExist"),
            "child not started yet: {e:?}"
        ),
    }
    let child = env.wait(&child_arn).await;
    assert_status(&child, ExecutionStatus::Succeeded);
    assert_eq!(child.input, Some(json!({"n": 1})));

    // A failing child fails the parent's task.
    let done = env.run("parent_broken", "broken", json!({"n": 1})).await;
    assert_status(&done, ExecutionStatus::Failed);
    assert_eq!(done.error.as_deref(), Some("States.TaskFailed"));
    let cause = done.cause.clone().unwrap_or_default();
    assert!(cause.contains("ChildBroke"), "{cause}");
    let report: Value = serde_json::from_str(&cause).expect("the child's report");
    assert_eq!(report["Input"], json!({"n": 1}), "{report}");
    // With .sync the report's input is a string there too.
    let done = env
        .run("parent_broken_v1", "broken_v1", json!({"n": 1}))
        .await;
    assert_status(&done, ExecutionStatus::Failed);
    let cause = done.cause.clone().unwrap_or_default();
    let report: Value = serde_json::from_str(&cause).expect("the child's report");
    assert_eq!(report["Error"], json!("ChildBroke"), "{report}");
    assert_eq!(report["Input"], json!(r#"{"n":1}"#), "{report}");
    env.shutdown().await;
}

/// A parent whose one state runs `child` (named `name`) with `.sync:2`.
/// A child that cannot be started for a moment (here: the execution index,
/// which the start checks for a taken name, stops answering reads) is not a
/// failure of the parent's task: the parent tries again and, once the index
/// answers, the child runs and reports back.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_child_that_cannot_be_started_now_is_started_later() {
    let mut env = Env::start().await;
    env.deploy("child", CHILD).await;
    env.deploy(
        "parent",
        &parent("arn:aws:states:::states:startExecution.sync:2", "child"),
    )
    .await;
    env.worker(|b| b.handler("double", doubler())).await;
    let bucket = env.options.settings.namespace.executions_bucket();
    env.set_bucket_reads(&bucket, false).await;
    // Started through the inbox: the API's start reads the index too.
    let exec = ExecutionRef::new("parent", "p").unwrap();
    env.publish_inbox(&exec, &start_message(&exec, 1, json!({"n": 21})))
        .await;
    tokio::time::sleep(Duration::from_millis(1500)).await;
    env.set_bucket_reads(&bucket, true).await;
    let done = env.wait(&exec.arn()).await;
    assert_status(&done, ExecutionStatus::Succeeded);
    let out = done.output.expect("output");
    assert_eq!(out["Output"], json!({"doubled": 42}), "{out}");
    env.shutdown().await;
}

/// `states:startExecution.waitForTaskToken`: the parent waits until its
/// child (or anyone holding the token it passed on) answers, as on AWS.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_child_started_with_a_task_token_is_waited_for_until_the_callback() {
    let mut env = Env::start().await;
    env.deploy(
        "notifier",
        r#"{"StartAt": "Notify", "States": {"Notify": {"Type": "Task", "Resource": "notify", "End": true}}}"#,
    )
    .await;
    env.deploy(
        "waiting_parent",
        &json!({
            "StartAt": "Call",
            "States": {"Call": {
                "Type": "Task",
                "Resource": "arn:aws:states:::states:startExecution.waitForTaskToken",
                "Parameters": {
                    "StateMachineArn": "arn:aws:states:local:000000000000:stateMachine:notifier",
                    "Input": {"token.$": "$$.Task.Token", "n.$": "$.n"}
                },
                "End": true
            }}
        })
        .to_string(),
    )
    .await;
    let api = env.api.clone();
    let (answer, mut answered) = mpsc::unbounded_channel::<String>();
    env.worker(move |b| {
        b.handler(
            "notify",
            handler_fn(move |input: Value, _ctx: TaskContext| {
                let answer = answer.clone();
                async move {
                    // The child hands the token over and is done; the
                    // parent goes on only when the token is answered.
                    let _ = answer.send(input["token"].as_str().unwrap_or_default().to_string());
                    Ok::<_, TaskError>(json!("notified"))
                }
            }),
        )
    })
    .await;
    let arn = env
        .start_execution("waiting_parent", "w", json!({"n": 7}))
        .await;
    let token = answered.recv().await.expect("the child ran");
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_status(&env.describe(&arn).await, ExecutionStatus::Running);
    api.send_task_success(&token, json!({"approved": 7}))
        .await
        .expect("the token is waited for");
    let done = env.wait(&arn).await;
    assert_status(&done, ExecutionStatus::Succeeded);
    assert_eq!(done.output, Some(json!({"approved": 7})));
    env.shutdown().await;
}

fn sync_parent(child: &str, name: &str) -> String {
    json!({
        "StartAt": "Call",
        "States": {"Call": {
            "Type": "Task",
            "Resource": "arn:aws:states:::states:startExecution.sync:2",
            "Parameters": {
                "StateMachineArn": format!("arn:aws:states:local:000000000000:stateMachine:{child}"),
                "Name": name,
                "Input": {}
            },
            "End": true
        }}
    })
    .to_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stopping_a_parent_stops_its_sync_child() {
    let env = Env::start().await;
    env.deploy(
        "long_child",
        r#"{"StartAt": "Pause", "States": {"Pause": {"Type": "Wait", "Seconds": 600, "End": true}}}"#,
    )
    .await;
    env.deploy(
        "long_parent",
        &sync_parent("long_child", "child-of-stopped"),
    )
    .await;
    let parent_arn = env
        .start_execution("long_parent", "stopped", json!({}))
        .await;
    let child_arn = ExecutionRef::new("long_child", "child-of-stopped")
        .unwrap()
        .arn();
    env.wait_until(&child_arn, |d| d.status == ExecutionStatus::Running)
        .await;
    env.api
        .stop_execution(&parent_arn, None, None)
        .await
        .expect("stop");
    let parent = env.wait(&parent_arn).await;
    assert_status(&parent, ExecutionStatus::Aborted);
    let child = env
        .wait_until(&child_arn, |d| d.status != ExecutionStatus::Running)
        .await;
    assert_status(&child, ExecutionStatus::Aborted);
    env.shutdown().await;
}

/// A parent stops waiting for its `.sync` child (the task's TimeoutSeconds)
/// while the inbox refuses messages: the stop to the child cannot be sent
/// then, and is sent once it can, though the parent has ended meanwhile.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stop_to_a_child_that_could_not_be_sent_is_sent_later() {
    let env = Env::start().await;
    env.deploy(
        "slow_child",
        r#"{"StartAt": "Pause", "States": {"Pause": {"Type": "Wait", "Seconds": 600, "End": true}}}"#,
    )
    .await;
    let mut parent: Value = serde_json::from_str(&sync_parent("slow_child", "kid")).unwrap();
    parent["States"]["Call"]["TimeoutSeconds"] = json!(2);
    env.deploy("impatient", &parent.to_string()).await;
    let parent_arn = env.start_execution("impatient", "p", json!({})).await;
    let child_arn = ExecutionRef::new("slow_child", "kid").unwrap().arn();
    env.wait_until(&child_arn, |d| d.status == ExecutionStatus::Running)
        .await;
    // The inbox refuses every message (a byte limit that discards new
    // ones), then takes them again.
    let store = env.cluster.as_ref().expect("running").store().clone();
    let js = store.infra().js.clone();
    let name = store.infra().ns().inbox_stream();
    let config = js
        .get_stream(&name)
        .await
        .expect("inbox")
        .cached_info()
        .config
        .clone();
    let blocked = async_nats::jetstream::stream::Config {
        max_bytes: 1,
        discard: async_nats::jetstream::stream::DiscardPolicy::New,
        ..config.clone()
    };
    js.update_stream(&blocked).await.expect("block the inbox");
    let parent = env.wait(&parent_arn).await;
    assert_status(&parent, ExecutionStatus::Failed);
    assert_eq!(parent.error.as_deref(), Some("States.Timeout"));
    tokio::time::sleep(Duration::from_millis(500)).await;
    js.update_stream(&config).await.expect("unblock the inbox");
    let child = env
        .wait_until(&child_arn, |d| d.status != ExecutionStatus::Running)
        .await;
    assert_status(&child, ExecutionStatus::Aborted);
    env.shutdown().await;
}

/// A `.sync` child that fails with a cause as large as its input may be:
/// its report (input and cause, escaped once more as the parent's cause)
/// would not fit in a message; the cause is cut to AWS's 32,768 characters
/// and the parent hears of the failure.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_childs_failure_with_a_huge_cause_reaches_its_parent() {
    let env = Env::start().await;
    env.deploy(
        "failing_child",
        r#"{"StartAt": "Fail", "States": {"Fail": {"Type": "Fail", "Error": "Big", "CausePath": "$.c"}}}"#,
    )
    .await;
    env.deploy(
        "waiting_parent",
        &json!({
            "StartAt": "Call",
            "States": {"Call": {
                "Type": "Task",
                "Resource": "arn:aws:states:::states:startExecution.sync:2",
                "Parameters": {
                    "StateMachineArn": "arn:aws:states:local:000000000000:stateMachine:failing_child",
                    "Input.$": "$"
                },
                "End": true
            }}
        })
        .to_string(),
    )
    .await;
    // Quotes: each one is escaped at every level.
    let done = env
        .run("waiting_parent", "p", json!({"c": "\"".repeat(131_000)}))
        .await;
    assert_status(&done, ExecutionStatus::Failed);
    assert_eq!(done.error.as_deref(), Some("States.TaskFailed"));
    let cause = done.cause.unwrap_or_default();
    assert_eq!(cause.chars().count(), 32_768);
    assert!(cause.ends_with("... (truncated)"), "{}", &cause[..100]);
    env.shutdown().await;
}

/// Retention does not delete an execution whose index entry says it ended
/// while its history runs (the entry written late, after a redrive): its
/// history stays, and the coordinator reloads it and puts its entry right.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retention_keeps_an_execution_whose_history_runs() {
    use sagaflow_coordinator::cluster::store::Forget;
    let mut opts = options();
    opts.settings.retention = Duration::from_secs(1);
    opts.reconcile_every = Duration::from_millis(300);
    let env = Env::start_with(opts).await;
    env.deploy(
        "pause",
        r#"{"StartAt": "W", "States": {"W": {"Type": "Wait", "Seconds": 6, "End": true}}}"#,
    )
    .await;
    let arn = env.start_execution("pause", "kept", json!({})).await;
    env.until_event(&arn, "WaitStateEntered").await;
    let store = env.cluster.as_ref().expect("running").store().clone();
    let exec = ExecutionRef::from_arn(&arn).unwrap();
    // The entry says it failed long ago.
    let mut entry = store.execution(&exec).await.unwrap().expect("indexed");
    entry.status = ExecutionStatus::Failed;
    entry.stop_date = Some("2020-01-01T00:00:00Z".into());
    store.put_execution(&entry).await.unwrap();
    assert_eq!(
        store.forget_execution(&exec).await.unwrap(),
        Forget::RunningByItsHistory
    );
    assert!(!store.read_history(&exec).await.unwrap().batches.is_empty());
    // The coordinator's retention rounds (every 300 ms) see the same,
    // delete nothing, and put the entry right while it waits.
    let deadline = Instant::now() + Duration::from_secs(4);
    loop {
        let status = store.execution(&exec).await.unwrap().map(|d| d.status);
        if status == Some(ExecutionStatus::Running) {
            break;
        }
        assert!(Instant::now() < deadline, "the entry still says {status:?}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // It runs to its end, and its entry says so.
    let deadline = Instant::now() + common::LIMIT;
    loop {
        let desc = env.describe(&arn).await;
        if desc.status == ExecutionStatus::Succeeded {
            break;
        }
        assert!(Instant::now() < deadline, "{desc:?}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert!(!store.read_history(&exec).await.unwrap().batches.is_empty());
    env.shutdown().await;
}

/// A former owner's completion entry written late (it paused between
/// its last append and its index write) lands over the entry of a redrive
/// made meanwhile by the new owner: the index says the execution ended
/// while it runs, and recovery, which starts from the index, would miss it
/// after a crash. The owner's next reconciliation round puts the entry
/// right from memory (no retention involved).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_ended_index_entry_written_over_a_running_execution_is_put_right() {
    let mut opts = options();
    opts.reconcile_every = Duration::from_millis(300);
    let env = Env::start_with(opts).await;
    env.deploy(
        "pause",
        r#"{"StartAt": "W", "States": {"W": {"Type": "Wait", "Seconds": 600, "End": true}}}"#,
    )
    .await;
    let arn = env.start_execution("pause", "overwritten", json!({})).await;
    env.until_event(&arn, "WaitStateEntered").await;
    let store = env.cluster.as_ref().expect("running").store().clone();
    let exec = ExecutionRef::from_arn(&arn).unwrap();
    let mut entry = store.execution(&exec).await.unwrap().expect("indexed");
    assert_eq!(entry.status, ExecutionStatus::Running);
    entry.status = ExecutionStatus::Failed;
    entry.stop_date = Some(jiff::Timestamp::now().to_string());
    entry.error = Some("Late".into());
    store.put_execution(&entry).await.unwrap();
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let now = store.execution(&exec).await.unwrap().expect("indexed");
        if now.status == ExecutionStatus::Running {
            assert_eq!(now.error, None, "{now:?}");
            assert_eq!(now.stop_date, None, "{now:?}");
            break;
        }
        assert!(Instant::now() < deadline, "the entry still says {now:?}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    env.shutdown().await;
}

/// server whose messages are smaller than the two) fails the parent's task
/// with `States.DataLimitExceeded`, as a task result too large would; it
/// was refused by the broker and sent again for ever, the parent waiting.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_childs_report_too_large_for_a_message_fails_the_parents_task() {
    let server = sagaflow_testkit::NatsServer::start_with(sagaflow_testkit::ServerOptions {
        config_file: Some("max_payload: 262144".into()),
        ..sagaflow_testkit::ServerOptions::default()
    })
    .expect("nats-server");
    let env = Env::start_on(server, options()).await;
    env.deploy(
        "doubling_child",
        r#"{"StartAt": "Twice", "States": {"Twice": {"Type": "Pass",
            "Parameters": {"a.$": "$.pad", "b.$": "$.pad"}, "End": true}}}"#,
    )
    .await;
    env.deploy(
        "report_parent",
        &json!({
            "StartAt": "Call",
            "States": {"Call": {
                "Type": "Task",
                "Resource": "arn:aws:states:::states:startExecution.sync:2",
                "Parameters": {
                    "StateMachineArn": "arn:aws:states:local:000000000000:stateMachine:doubling_child",
                    "Input.$": "$"
                },
                "End": true
            }}
        })
        .to_string(),
    )
    .await;
    // Input 90 KB, output 180 KB: each within the limits, the report not
    // within a 256 KiB message.
    let done = env
        .run("report_parent", "p", json!({"pad": "x".repeat(90_000)}))
        .await;
    assert_status(&done, ExecutionStatus::Failed);
    assert_eq!(done.error.as_deref(), Some("States.DataLimitExceeded"));
    let child = done.cause.unwrap_or_default();
    assert!(child.contains("doubling_child"), "{child}");
    env.shutdown().await;
}

/// A running execution its partition's owner does not hold (its index
/// entry wrongly said it had ended when the partition was recovered) is
/// loaded when a message comes for it: its timers are armed then, and it
/// runs to its end.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_running_execution_loaded_by_a_message_has_its_timers_armed() {
    let mut env = Env::start().await;
    env.deploy(
        "pause",
        r#"{"StartAt": "W", "States": {"W": {"Type": "Wait", "Seconds": 2, "End": true}}}"#,
    )
    .await;
    let arn = env.start_execution("pause", "w1", json!({})).await;
    env.until_event(&arn, "WaitStateEntered").await;
    let store = env.cluster.as_ref().expect("running").store().clone();
    let exec = ExecutionRef::from_arn(&arn).unwrap();
    // The coordinator goes; the index entry is made to say FAILED.
    env.cluster.take().expect("running").shutdown().await;
    let mut entry = store.execution(&exec).await.unwrap().expect("indexed");
    entry.status = ExecutionStatus::Failed;
    store.put_execution(&entry).await.unwrap();
    env.restart_coordinator().await;
    // Recovery skipped it; a message (a stray heartbeat) loads it.
    env.publish_inbox(
        &exec,
        &InboxMessage::TaskHeartbeat {
            execution_arn: arn.clone(),
            task_id: "no-such-task".into(),
        },
    )
    .await;
    env.until_event(&arn, "ExecutionSucceeded").await;
    env.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_parent_reloaded_after_recording_its_stop_stops_its_sync_child() {
    use sagaflow_asl::interp::{Command, Event, Execution};
    use sagaflow_coordinator::cluster::store::HistoryBatch;
    use sagaflow_coordinator::driver::{HistoryEntry, HistoryItem};

    let mut env = Env::start().await;
    env.deploy(
        "waiting_child",
        r#"{"StartAt": "Pause", "States": {"Pause": {"Type": "Wait", "Seconds": 600, "End": true}}}"#,
    )
    .await;
    let parent = sync_parent("waiting_child", "orphan");
    env.deploy("waiting_parent", &parent).await;
    let parent_arn = env.start_execution("waiting_parent", "p", json!({})).await;
    let child_arn = ExecutionRef::new("waiting_child", "orphan").unwrap().arn();
    env.wait_until(&child_arn, |d| d.status == ExecutionStatus::Running)
        .await;

    // The coordinator dies right after recording the parent's stop, before
    // telling the child: its last step is appended here by hand.
    let cluster = env.cluster.take().expect("coordinator");
    let store = cluster.store().clone();
    cluster.shutdown().await;
    let parent_ref = ExecutionRef::from_arn(&parent_arn).unwrap();
    let history = store.read_history(&parent_ref).await.expect("history");
    let machine = Arc::new(sagaflow_asl::parse::parse_definition(&parent).expect("valid"));
    let mut exec = Execution::new(machine, options().runtime.interp_options());
    let mut out = Vec::new();
    for batch in &history.batches {
        for entry in &batch.entries {
            if let HistoryItem::Event(event) = &entry.item {
                exec.apply(entry.at, event.clone(), &mut out)
                    .expect("replay");
            }
        }
    }
    out.clear();
    let at = jiff::Timestamp::now();
    let stop = Event::StopRequested {
        error: None,
        cause: None,
    };
    exec.apply(at, stop.clone(), &mut out).expect("stop");
    assert!(
        out.iter().any(|c| matches!(c, Command::CancelTask { .. })),
        "{out:?}"
    );
    let mut entries = vec![HistoryEntry {
        at,
        item: HistoryItem::Event(stop),
    }];
    entries.extend(out.into_iter().map(|c| HistoryEntry {
        at,
        item: HistoryItem::Command(c),
    }));
    store
        .append_history(
            &parent_ref,
            history.last_sequence,
            &HistoryBatch {
                meta: None,
                entries,
                part: None,
            },
        )
        .await
        .expect("append");

    // The next owner finds the parent ended and stops the child it had
    // stopped waiting for.
    env.restart_coordinator().await;
    env.describe(&parent_arn).await; // the API answers again
    assert_status(&env.wait(&parent_arn).await, ExecutionStatus::Aborted);
    let child = env
        .wait_until(&child_arn, |d| d.status != ExecutionStatus::Running)
        .await;
    assert_status(&child, ExecutionStatus::Aborted);
    env.shutdown().await;
}

// -------------------------------------------------------------- 8. stop

const NEVER: &str = r#"{
  "StartAt": "Hang",
  "States": {"Hang": {"Type": "Task", "Resource": "hang", "End": true}}
}"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stopped_execution_is_aborted_and_later_answers_are_ignored() {
    let mut env = Env::start().await;
    env.deploy("never", NEVER).await;
    let release = Arc::new(watch::channel(false).0);
    let answered = Arc::new(AtomicUsize::new(0));
    let (tx, mut rx) = mpsc::unbounded_channel::<String>();
    let (rel, ans) = (release.clone(), answered.clone());
    env.worker(|b| {
        b.handler(
            "hang",
            handler_fn(move |_input: Value, ctx: TaskContext| {
                let (rel, ans, tx) = (rel.clone(), ans.clone(), tx.clone());
                async move {
                    let _ = tx.send(ctx.task_id.clone());
                    let _ = rel.subscribe().wait_for(|released| *released).await;
                    ans.fetch_add(1, Ordering::SeqCst);
                    Ok::<_, TaskError>(json!({"too": "late"}))
                }
            }),
        )
    })
    .await;
    let arn = env.start_execution("never", "s1", json!({})).await;
    let first_task = tokio::time::timeout(common::LIMIT, rx.recv())
        .await
        .expect("the task reached its participant")
        .expect("participant alive");
    assert_status(&env.describe(&arn).await, ExecutionStatus::Running);
    env.api
        .stop_execution(&arn, Some("Halted".into()), Some("by the test".into()))
        .await
        .unwrap();
    let done = env.wait(&arn).await;
    assert_status(&done, ExecutionStatus::Aborted);
    assert_eq!(done.error.as_deref(), Some("Halted"));
    assert_eq!(done.cause.as_deref(), Some("by the test"));
    let history = env.history(&arn).await;
    assert_eq!(
        history.last().map(|e| e["type"].clone()),
        Some(json!("ExecutionAborted"))
    );

    // The participant answers now: nothing changes.
    release.send_replace(true);
    let deadline = Instant::now() + common::LIMIT;
    while answered.load(Ordering::SeqCst) == 0 {
        assert!(Instant::now() < deadline, "the handler never returned");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // Also an answer straight to the inbox.
    let exec = ExecutionRef::from_arn(&arn).unwrap();
    env.publish_inbox(
        &exec,
        &InboxMessage::TaskSucceeded {
            execution_arn: arn.clone(),
            task_id: "Hang@0#0".into(),
            output: json!({"forged": true}),
            callback: false,
        },
    )
    .await;
    tokio::time::sleep(Duration::from_millis(1000)).await;
    let after = env.describe(&arn).await;
    assert_status(&after, ExecutionStatus::Aborted);
    assert_eq!(after.output, None);
    assert_eq!(env.history(&arn).await, history);

    // An aborted execution can be redriven (AWS: FAILED, TIMED_OUT or
    // ABORTED): the task runs again, as a new attempt.
    env.api.redrive_execution(&arn).await.unwrap();
    let second_task = tokio::time::timeout(common::LIMIT, rx.recv())
        .await
        .expect("the redriven task reached its participant")
        .expect("participant alive");
    assert_ne!(second_task, first_task);
    let done = env
        .wait_until(&arn, |d| {
            d.redrive_count >= 1 && d.status != ExecutionStatus::Running
        })
        .await;
    assert_status(&done, ExecutionStatus::Succeeded);
    assert_eq!(done.output, Some(json!({"too": "late"})));
    env.shutdown().await;
}

// ------------------------------------------------------------ 9. redrive

const ONCE: &str = r#"{
  "StartAt": "Prepare",
  "States": {
    "Prepare": {"Type": "Pass", "Result": "ready", "ResultPath": "$.prepared", "Next": "Fragile"},
    "Fragile": {"Type": "Task", "Resource": "fragile", "End": true}
  }
}"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_execution_is_redriven_to_success() {
    let mut env = Env::start().await;
    env.deploy("once", ONCE).await;
    let seen: Arc<Mutex<HashMap<String, usize>>> = Arc::default();
    let s = seen.clone();
    env.worker(|b| {
        b.handler(
            "fragile",
            handler_fn(move |input: Value, ctx: TaskContext| {
                let s = s.clone();
                async move {
                    let n = {
                        let mut seen = s.lock().unwrap();
                        let n = seen.entry(ctx.execution_id.clone()).or_default();
                        *n += 1;
                        *n
                    };
                    if n == 1 {
                        Err(TaskError::new("Transient", "first time"))
                    } else {
                        Ok(json!({"input": input, "calls": n}))
                    }
                }
            }),
        )
    })
    .await;
    let arn = env.start_execution("once", "r1", json!({"id": 1})).await;
    let failed = env.wait(&arn).await;
    assert_status(&failed, ExecutionStatus::Failed);
    assert_eq!(failed.error.as_deref(), Some("Transient"));
    assert_eq!(failed.redrive_count, 0);

    env.api.redrive_execution(&arn).await.unwrap();
    let done = env
        .wait_until(&arn, |d| {
            d.redrive_count >= 1 && d.status != ExecutionStatus::Running
        })
        .await;
    assert_status(&done, ExecutionStatus::Succeeded);
    assert_eq!(done.redrive_count, 1);
    assert_eq!(
        done.output,
        Some(json!({"input": {"id": 1, "prepared": "ready"}, "calls": 2}))
    );
    assert_eq!(seen.lock().unwrap().get(&arn), Some(&2));
    let history = env.history(&arn).await;
    let redriven = events_of(&history, "ExecutionRedriven");
    assert_eq!(redriven.len(), 1, "{history:#?}");
    assert_eq!(
        redriven[0]["executionRedrivenEventDetails"]["redriveCount"],
        json!(1)
    );
    // The Pass state before the failure is not run again.
    assert_eq!(events_of(&history, "PassStateEntered").len(), 1);

    assert_eq!(
        api_code(env.api.redrive_execution(&arn).await),
        "ExecutionNotRedrivable"
    );
    env.shutdown().await;
}

/// A redrive message delivered again (its ack was lost, say) after the
/// redriven run failed again does not redrive that run too: the message
/// names the run it redrives.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_redelivered_redrive_does_not_redrive_the_next_run() {
    let mut env = Env::start().await;
    env.deploy("once", ONCE).await;
    let calls = Arc::new(AtomicUsize::new(0));
    let c = calls.clone();
    env.worker(|b| {
        b.handler(
            "fragile",
            handler_fn(move |_input: Value, _ctx: TaskContext| {
                c.fetch_add(1, Ordering::SeqCst);
                async move { Err::<Value, _>(TaskError::new("Broken", "still broken")) }
            }),
        )
    })
    .await;
    let arn = env.start_execution("once", "twice", json!({})).await;
    assert_status(&env.wait(&arn).await, ExecutionStatus::Failed);
    env.api.redrive_execution(&arn).await.unwrap();
    let again = env
        .wait_until(&arn, |d| {
            d.redrive_count >= 1 && d.status != ExecutionStatus::Running
        })
        .await;
    assert_status(&again, ExecutionStatus::Failed);
    assert_eq!(calls.load(Ordering::SeqCst), 2);
    // The same redrive, delivered again (another message id: past the
    // broker's duplicate window, or after a lost ack).
    let exec = ExecutionRef::from_arn(&arn).unwrap();
    env.publish_inbox(
        &exec,
        &InboxMessage::RedriveExecution {
            execution_arn: arn.clone(),
            redrive_count: Some(0),
        },
    )
    .await;
    // Handled once the inbox (a work queue) is empty: a redrive applied
    // is in the history by then (appended before the message is acked).
    env.until_inbox_empty().await;
    let after = env.describe(&arn).await;
    assert_status(&after, ExecutionStatus::Failed);
    assert_eq!(after.redrive_count, 1, "{after:?}");
    assert_eq!(
        events_of(&env.history(&arn).await, "ExecutionRedriven").len(),
        1
    );
    assert_eq!(
        calls.load(Ordering::SeqCst),
        2,
        "the task did not run again"
    );
    env.shutdown().await;
}

/// A stop delivered again (its ack was lost) after the run it stopped was
/// redriven leaves the new run alone: the message names the run it stops.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_redelivered_stop_does_not_stop_the_redriven_run() {
    let env = Env::start().await;
    env.deploy(
        "pause",
        r#"{"StartAt": "W", "States": {"W": {"Type": "Wait", "Seconds": 600, "End": true}}}"#,
    )
    .await;
    let arn = env.start_execution("pause", "stopped", json!({})).await;
    env.until_event(&arn, "WaitStateEntered").await;
    env.api
        .stop_execution(&arn, Some("Halt".into()), None)
        .await
        .unwrap();
    assert_status(&env.wait(&arn).await, ExecutionStatus::Aborted);
    env.api.redrive_execution(&arn).await.unwrap();
    env.wait_until(&arn, |d| {
        d.redrive_count == 1 && d.status == ExecutionStatus::Running
    })
    .await;
    // The first stop, delivered again.
    let exec = ExecutionRef::from_arn(&arn).unwrap();
    env.publish_inbox(
        &exec,
        &InboxMessage::StopExecution {
            execution_arn: arn.clone(),
            error: Some("Halt".into()),
            cause: None,
            parent: None,
            redrive_count: Some(0),
        },
    )
    .await;
    env.until_inbox_empty().await;
    assert_eq!(
        events_of(&env.history(&arn).await, "ExecutionAborted").len(),
        1,
        "only the first run was stopped"
    );
    assert_status(&env.describe(&arn).await, ExecutionStatus::Running);
    env.shutdown().await;
}

const BOOK_BESIDE_FRAGILE: &str = r#"{
  "StartAt": "Both",
  "States": {"Both": {"Type": "Parallel", "End": true, "Branches": [
    {"StartAt": "Book", "States": {"Book": {"Type": "Task", "Resource": "book", "End": true}}},
    {"StartAt": "Fragile", "States": {"Fragile": {"Type": "Task", "Resource": "fragile", "End": true}}}
  ]}}
}"#;

/// A redrive of a Parallel runs only the branch that failed: the booking
/// made by the other branch is not made twice.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_redriven_parallel_does_not_run_its_succeeded_branch_again() {
    let mut env = Env::start().await;
    env.deploy("both", BOOK_BESIDE_FRAGILE).await;
    let bookings = Arc::new(AtomicUsize::new(0));
    let attempts = Arc::new(AtomicUsize::new(0));
    let (b, a) = (bookings.clone(), attempts.clone());
    env.worker(move |w| {
        w.handler(
            "book",
            handler_fn(move |_: Value, _ctx: TaskContext| {
                let n = b.fetch_add(1, Ordering::SeqCst) + 1;
                async move { Ok::<_, TaskError>(json!(format!("booking {n}"))) }
            }),
        )
        .handler(
            "fragile",
            handler_fn(move |_: Value, _ctx: TaskContext| {
                let n = a.fetch_add(1, Ordering::SeqCst) + 1;
                async move {
                    if n == 1 {
                        // Long enough for the booking to be recorded first.
                        tokio::time::sleep(Duration::from_millis(300)).await;
                        Err(TaskError::new("Transient", "first time"))
                    } else {
                        Ok(json!("fine"))
                    }
                }
            }),
        )
    })
    .await;
    let arn = env.start_execution("both", "p1", json!({})).await;
    assert_status(&env.wait(&arn).await, ExecutionStatus::Failed);
    env.api.redrive_execution(&arn).await.unwrap();
    let done = env
        .wait_until(&arn, |d| {
            d.redrive_count >= 1 && d.status != ExecutionStatus::Running
        })
        .await;
    assert_status(&done, ExecutionStatus::Succeeded);
    assert_eq!(done.output, Some(json!(["booking 1", "fine"])));
    assert_eq!(bookings.load(Ordering::SeqCst), 1, "booked once");
    assert_eq!(attempts.load(Ordering::SeqCst), 2);
    env.shutdown().await;
}

/// An execution that failed between states (here: on the state-transition
/// limit) has no state to run again: its redrive is refused at once, as
/// the embedded mode refuses it, rather than accepted and never done.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_redrive_with_no_state_to_run_again_is_refused() {
    let mut o = options();
    o.runtime.max_state_transitions = 5;
    let env = Env::start_with(o).await;
    env.deploy(
        "loop",
        r#"{"StartAt": "A", "States": {
            "A": {"Type": "Choice", "Choices": [{"Variable": "$.stop", "IsPresent": true, "Next": "Z"}], "Default": "B"},
            "B": {"Type": "Pass", "Next": "A"},
            "Z": {"Type": "Succeed"}}}"#,
    )
    .await;
    let done = env.run("loop", "l", json!({})).await;
    assert_status(&done, ExecutionStatus::Failed);
    assert_eq!(done.error.as_deref(), Some("States.Runtime"));
    assert_eq!(
        api_code(env.api.redrive_execution(&done.execution_arn).await),
        "ExecutionNotRedrivable"
    );
    assert_eq!(env.describe(&done.execution_arn).await.redrive_count, 0);
    env.shutdown().await;
}

/// A history larger than one reply (1 MiB) comes page by page: every
/// event once, in order.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_history_over_a_message_is_read_page_by_page() {
    let mut env = Env::start().await;
    let step =
        |next: &str| json!({"Type": "Task", "Resource": "big", "ResultPath": null, "Next": next});
    let mut states = serde_json::Map::new();
    for i in 0..6 {
        states.insert(format!("S{i}"), step(&format!("S{}", i + 1)));
    }
    states.insert("S6".into(), json!({"Type": "Succeed"}));
    env.deploy(
        "long",
        &json!({"StartAt": "S0", "States": states}).to_string(),
    )
    .await;
    env.worker(|b| {
        b.handler(
            "big",
            handler_fn(|_: Value, _ctx: TaskContext| async move {
                Ok::<_, TaskError>(json!({"pad": "x".repeat(200_000)}))
            }),
        )
    })
    .await;
    let done = env.run("long", "l", json!({})).await;
    assert_status(&done, ExecutionStatus::Succeeded);
    let all = env
        .api
        .execution_history(&done.execution_arn)
        .await
        .expect("history");
    let ids: Vec<u64> = all
        .events
        .iter()
        .map(|e| e["id"].as_u64().unwrap())
        .collect();
    assert_eq!(
        ids,
        (1..=ids.len() as u64).collect::<Vec<_>>(),
        "every event once, in order"
    );
    assert_eq!(events_of(&all.events, "TaskSucceeded").len(), 6);
    let first = env
        .api
        .execution_history_page(&HistoryRequest {
            execution_arn: done.execution_arn.clone(),
            max_results: None,
            next_token: None,
            reverse_order: false,
        })
        .await
        .unwrap();
    assert!(
        first.events.len() < all.events.len(),
        "{}",
        first.events.len()
    );
    let bad = env
        .api
        .execution_history_page(&HistoryRequest {
            execution_arn: done.execution_arn.clone(),
            max_results: None,
            next_token: Some("nope".into()),
            reverse_order: false,
        })
        .await;
    assert_eq!(api_code(bad), "InvalidRequest");
    // Newest first (AWS's reverseOrder), in pages of a few events and in
    // pages held to the message size: every event once, in reverse.
    for max_results in [Some(4), None] {
        let mut reversed = Vec::new();
        let mut next_token = None;
        loop {
            let page = env
                .api
                .execution_history_page(&HistoryRequest {
                    execution_arn: done.execution_arn.clone(),
                    max_results,
                    next_token: next_token.take(),
                    reverse_order: true,
                })
                .await
                .expect("a page");
            assert!(!page.events.is_empty());
            assert!(page.events.len() <= max_results.unwrap_or(usize::MAX));
            reversed.extend(page.events);
            match page.next_token {
                Some(token) => next_token = Some(token),
                None => break,
            }
        }
        reversed.reverse();
        assert_eq!(reversed, all.events, "pages of {max_results:?}");
    }
    // A token of one order is refused in the other.
    let forward_token = first.next_token.clone().expect("more than a page");
    let mixed = env
        .api
        .execution_history_page(&HistoryRequest {
            execution_arn: done.execution_arn.clone(),
            max_results: None,
            next_token: Some(forward_token),
            reverse_order: true,
        })
        .await;
    assert_eq!(api_code(mixed), "InvalidRequest");
    env.shutdown().await;
}

// ------------------------------------------------------- 10. lambda:invoke

const LAMBDA: &str = r#"{
  "StartAt": "Invoke",
  "States": {
    "Invoke": {
      "Type": "Task", "Resource": "arn:aws:states:::lambda:invoke",
      "Parameters": {"FunctionName": "arn:aws:lambda:us-east-1:123456789012:function:echo", "Payload.$": "$"},
      "End": true
    }
  }
}"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lambda_invoke_wraps_the_result() {
    let mut env = Env::start().await;
    env.deploy("lambda", LAMBDA).await;
    env.worker(|b| {
        b.handler(
            "echo",
            lambda_fn(|event: Value, ctx| async move {
                Ok(json!({"echo": event, "request": ctx.request_id, "function": ctx.function_name}))
            }),
        )
    })
    .await;
    let done = env.run("lambda", "l1", json!({"hello": "world"})).await;
    assert_status(&done, ExecutionStatus::Succeeded);
    let out = done.output.expect("output");
    assert_eq!(out["StatusCode"], json!(200), "{out}");
    assert_eq!(out["Payload"]["echo"], json!({"hello": "world"}), "{out}");
    // The function named in FunctionName, not the resource's last segment.
    assert_eq!(out["Payload"]["function"], json!("echo"), "{out}");
    let request = out["Payload"]["request"].as_str().expect("request id");
    assert_eq!(out["SdkResponseMetadata"]["RequestId"], json!(request));
    // The task's idempotency key: unique across executions.
    assert!(
        request.starts_with(&format!("{}/", done.execution_arn)),
        "{request}"
    );
    assert_eq!(out["ExecutedVersion"], json!("$LATEST"));
    env.shutdown().await;
}

// ------------------------------------------------------- 11. bad input

const ECHO: &str = r#"{
  "StartAt": "Echo",
  "States": {"Echo": {"Type": "Task", "Resource": "echo", "End": true}}
}"#;

fn echo_handler() -> impl sagaflow_participant::Handler + 'static {
    handler_fn(|input: Value, _ctx: TaskContext| async move { Ok::<_, TaskError>(input) })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_messages_stop_nothing() {
    let mut env = Env::start().await;
    env.deploy("echo", ECHO).await;
    env.worker(|b| b.handler("echo", echo_handler())).await;
    let ns = sagaflow_protocol::Namespace::default();
    let victim = ExecutionRef::new("echo", "victim").unwrap();
    for subject in [
        env.inbox_subject(&victim),
        ns.inbox_subject(0, &victim),
        format!("{}.inbox.1.not-a-key", ns.prefix()),
    ] {
        env.publish_raw(subject.clone(), b"{not json".to_vec())
            .await;
        env.publish_raw(subject.clone(), vec![0xff, 0xfe, 0x00])
            .await;
        env.publish_raw(subject, br#"{"type": "Nope"}"#.to_vec())
            .await;
    }
    // Well-formed, for executions that do not exist.
    env.publish_inbox(
        &victim,
        &InboxMessage::TaskSucceeded {
            execution_arn: victim.arn(),
            task_id: "Echo@0#0".into(),
            output: json!(1),
            callback: false,
        },
    )
    .await;
    env.publish_inbox(&victim, &start_message(&victim, 99, json!({})))
        .await;
    // A well-formed start on another partition's subject: that partition's
    // owner does not write a history that is not its partition's.
    let stray = ExecutionRef::new("echo", "stray").unwrap();
    let start = start_message(&stray, 1, json!({}));
    env.publish_raw(
        env.wrong_inbox_subject(&stray),
        serde_json::to_vec(&start).unwrap(),
    )
    .await;
    let task_subject = ns.task_subject("echo");
    env.publish_raw(task_subject.clone(), b"{not json".to_vec())
        .await;
    env.publish_raw(task_subject, br#"{"executionArn": 5}"#.to_vec())
        .await;

    for i in 0..3 {
        let done = env
            .run("echo", &format!("after-{i}"), json!({"i": i}))
            .await;
        assert_status(&done, ExecutionStatus::Succeeded);
        assert_eq!(done.output, Some(json!({"i": i})));
    }
    // The start for a version that does not exist started nothing, nor did
    // the one on the wrong partition.
    assert_never_started(&env, &victim).await;
    assert_never_started(&env, &stray).await;
    env.shutdown().await;
}

/// A start whose state machine cannot be read at that moment (here: the
/// bucket stops answering reads) is handed back, not dropped: whoever sent
/// it was told it started. It starts once the machine can be read again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_start_whose_machine_cannot_be_read_now_starts_later() {
    let mut env = Env::start().await;
    env.deploy("echo", ECHO).await;
    env.worker(|b| b.handler("echo", echo_handler())).await;
    let bucket = env.options.settings.namespace.machines_bucket();
    // Reads of the bucket go unanswered from now on.
    env.set_bucket_reads(&bucket, false).await;
    let exec = ExecutionRef::new("echo", "later").unwrap();
    env.publish_inbox(&exec, &start_message(&exec, 1, json!({"n": 1})))
        .await;
    // Handed back again and again meanwhile (every 200 ms): not started,
    // still queued (described as RUNNING from its start), no history.
    tokio::time::sleep(Duration::from_secs(1)).await;
    let queued = env.api.describe_execution(&exec.arn()).await.unwrap();
    assert_eq!(queued.status, ExecutionStatus::Running);
    assert!(
        env.api
            .execution_history(&exec.arn())
            .await
            .unwrap()
            .events
            .is_empty()
    );
    // Reads work again: the start goes through.
    env.set_bucket_reads(&bucket, true).await;
    let done = env.wait(&exec.arn()).await;
    assert_status(&done, ExecutionStatus::Succeeded);
    assert_eq!(done.output, Some(json!({"n": 1})));
    env.shutdown().await;
}

/// A deployment with machine `slow` (a 5 s Wait), whose machines bucket
/// answers no reads (starts are handed back until they are on again).
async fn slow_machine_with_reads_off() -> (Env, String) {
    let env = Env::start().await;
    env.deploy(
        "slow",
        r#"{"StartAt": "W", "States": {"W": {"Type": "Wait", "Seconds": 5, "End": true}}}"#,
    )
    .await;
    let bucket = env.options.settings.namespace.machines_bucket();
    env.set_bucket_reads(&bucket, false).await;
    (env, bucket)
}

/// A stop accepted while its execution's start waits in the inbox (handed
/// back: its machine could not be read) and delivered before it is kept
/// for after the start, not applied to nothing and lost.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stop_delivered_before_its_start_is_applied_after_it() {
    let (env, bucket) = slow_machine_with_reads_off().await;
    let exec = ExecutionRef::new("slow", "halted").unwrap();
    env.publish_inbox(&exec, &start_message(&exec, 1, json!({})))
        .await;
    // The API accepts the stop: the start is queued.
    env.api
        .stop_execution(&exec.arn(), Some("Halt".into()), None)
        .await
        .expect("stop of a queued start");
    // Both are delivered meanwhile; only the stop could be applied.
    tokio::time::sleep(Duration::from_secs(1)).await;
    env.set_bucket_reads(&bucket, true).await;
    let done = env.wait(&exec.arn()).await;
    assert_status(&done, ExecutionStatus::Aborted);
    assert_eq!(done.error.as_deref(), Some("Halt"));
    env.shutdown().await;
}

/// Starts and the stops sent right after them, all handed back while the
/// machines cannot be read, then delivered again in whatever order: a
/// start that can never run (its version does not exist) and its stop are
/// both dropped, not handed back to each other for ever; a start that can
/// run gets its stop applied after it. (Whether a start and its stop come
/// back in one group is up to the broker: this test does not force it.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stop_with_its_start_in_one_group_is_applied_or_dropped_with_it() {
    let (env, bucket) = slow_machine_with_reads_off().await;
    let stop = |exec: &ExecutionRef| InboxMessage::StopExecution {
        execution_arn: exec.arn(),
        error: Some("Halt".into()),
        cause: None,
        parent: None,
        redrive_count: Some(0),
    };
    // Held back (reads off), as the API queues them: the start, then the
    // stop.
    let never = ExecutionRef::new("slow", "never").unwrap();
    env.publish_inbox(&never, &start_message(&never, 99, json!({})))
        .await;
    env.publish_inbox(&never, &stop(&never)).await;
    let halted = ExecutionRef::new("slow", "halted").unwrap();
    env.publish_inbox(&halted, &start_message(&halted, 1, json!({})))
        .await;
    env.publish_inbox(&halted, &stop(&halted)).await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    env.set_bucket_reads(&bucket, true).await;
    let done = env.wait(&halted.arn()).await;
    assert_status(&done, ExecutionStatus::Aborted);
    // The inbox empties: nothing is handed back and forth.
    let js = async_nats::jetstream::new(env.nats.clone());
    let mut left = u64::MAX;
    for _ in 0..100 {
        let mut inbox = js
            .get_stream(env.options.settings.namespace.inbox_stream())
            .await
            .expect("inbox");
        left = inbox.info().await.expect("inbox info").state.messages;
        if left == 0 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(left, 0, "messages still in the inbox");
    env.shutdown().await;
}

const WAIT_BESIDE_A_TASK: &str = r#"{
  "StartAt": "Both",
  "States": {"Both": {"Type": "Parallel", "End": true, "Branches": [
    {"StartAt": "Pause", "States": {"Pause": {"Type": "Wait", "Seconds": 3, "End": true}}},
    {"StartAt": "Work", "States": {"Work": {"Type": "Task", "Resource": "gated", "End": true}}}
  ]}}
}"#;

/// Another writer (a stale owner that has not yet noticed its lease is
/// gone) appends to an execution's history, so the owner's next append
/// conflicts. The owner reloads the execution from its history with its
/// timers re-armed: the Wait that was running beside the task still ends.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn after_a_conflicting_append_the_owner_resumes_with_its_timers() {
    use sagaflow_asl::interp::Event;
    use sagaflow_coordinator::cluster::store::HistoryBatch;
    use sagaflow_coordinator::{HistoryEntry, HistoryItem};

    let mut env = Env::start().await;
    env.deploy("beside", WAIT_BESIDE_A_TASK).await;
    let (open, gate) = watch::channel(false);
    env.worker(move |b| {
        b.handler(
            "gated",
            handler_fn(move |_input: Value, _ctx: TaskContext| {
                let mut gate = gate.clone();
                async move {
                    let _ = gate.wait_for(|open| *open).await;
                    Ok::<_, TaskError>(json!("worked"))
                }
            }),
        )
    })
    .await;
    let arn = env.start_execution("beside", "conflict", json!({})).await;
    // The task runs, and the Wait's timer is armed beside it.
    env.until_event(&arn, "TaskStarted").await;
    // The other writer's step: an answer to a task that does not exist,
    // which replays as nothing.
    let store = env.cluster.as_ref().expect("running").store().clone();
    let exec = ExecutionRef::from_arn(&arn).unwrap();
    let stored = store.read_history(&exec).await.expect("history");
    let stray = HistoryBatch {
        meta: None,
        entries: vec![HistoryEntry {
            at: jiff::Timestamp::now(),
            item: HistoryItem::Event(Event::TaskFailed {
                task_id: "no-such-task".into(),
                error: "Stray".into(),
                cause: String::new(),
            }),
        }],
        part: None,
    };
    store
        .append_history(&exec, stored.last_sequence, &stray)
        .await
        .expect("the other writer's append");
    // The task's result now conflicts, is handed back, and comes again.
    open.send(true).unwrap();
    let done = env.wait(&arn).await;
    assert_status(&done, ExecutionStatus::Succeeded);
    assert_eq!(done.output, Some(json!([{}, "worked"])));
    env.shutdown().await;
}

/// The execution does not exist: nothing started it.
async fn assert_never_started(env: &Env, exec: &ExecutionRef) {
    let code = env
        .api
        .describe_execution(&exec.arn())
        .await
        .err()
        .and_then(|e| e.code().map(str::to_string));
    assert_eq!(code.as_deref(), Some("ExecutionDoesNotExist"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_results_sent_directly_get_an_answer_and_stop_nothing() {
    let mut env = Env::start().await;
    env.deploy("echo", ECHO).await;
    env.worker(|b| b.handler("echo", echo_handler())).await;
    let ns = sagaflow_protocol::Namespace::default();
    let victim = ExecutionRef::new("echo", "victim").unwrap();
    let subject = ns.result_subject(
        env.cluster.as_ref().unwrap().store().partition_of(&victim),
        &victim,
    );
    // The owner subscribes once it holds the partition.
    let ask = |body: Vec<u8>| {
        let (nats, subject) = (env.nats.clone(), subject.clone());
        async move {
            for _ in 0..100 {
                match nats.request(subject.clone(), body.clone().into()).await {
                    Ok(reply) => {
                        return serde_json::from_slice::<sagaflow_protocol::ResultReply>(
                            &reply.payload,
                        )
                        .expect("a ResultReply");
                    }
                    Err(_) => tokio::time::sleep(Duration::from_millis(100)).await,
                }
            }
            panic!("no answer on {subject}");
        }
    };
    for body in [
        b"{not json".to_vec(),
        vec![0xff, 0xfe, 0x00],
        br#"{"type": "Nope"}"#.to_vec(),
        // Only task results come this way.
        serde_json::to_vec(&start_message(&victim, 1, json!({}))).unwrap(),
    ] {
        let answer = ask(body).await;
        assert!(!answer.recorded, "{answer:?}");
        assert!(answer.error.is_some(), "{answer:?}");
    }
    // A well-formed result for an execution that does not exist needs no
    // record: answered as recorded, and nothing starts.
    let late = ask(serde_json::to_vec(&InboxMessage::TaskSucceeded {
        execution_arn: victim.arn(),
        task_id: "Echo@0#0".into(),
        output: json!(1),
        callback: false,
    })
    .unwrap())
    .await;
    assert!(late.recorded, "{late:?}");
    let done = env.run("echo", "after", json!({"i": 1})).await;
    assert_status(&done, ExecutionStatus::Succeeded);
    assert_never_started(&env, &victim).await;
    env.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_repeated_start_of_an_ended_execution_changes_nothing() {
    let env = Env::start().await;
    let version = env
        .deploy(
            "quick",
            r#"{"StartAt": "Done", "States": {"Done": {"Type": "Pass", "End": true}}}"#,
        )
        .await;
    let done = env.run("quick", "once", json!({"n": 1})).await;
    assert_status(&done, ExecutionStatus::Succeeded);
    // The same start again, straight into the inbox (no API check, no
    // Nats-Msg-Id): a first delivery, applied without reading the history,
    // finds the history there and changes nothing.
    let exec = ExecutionRef::from_arn(&done.execution_arn).unwrap();
    env.publish_inbox(
        &exec,
        &InboxMessage::StartExecution(StartExecution {
            execution_arn: exec.arn(),
            version,
            input: json!({"n": 2}),
            seed: 7,
            traceparent: None,
            parent: None,
        }),
    )
    .await;
    // Handled (acknowledged) in the end; meanwhile, and for a while after,
    // its index entry never shows it running again (the start creates an
    // entry only where there is none).
    let js = async_nats::jetstream::new(env.nats.clone());
    let mut inbox = js
        .get_stream(env.options.settings.namespace.inbox_stream())
        .await
        .expect("inbox stream");
    let deadline = Instant::now() + common::LIMIT;
    let mut acknowledged_at: Option<Instant> = None;
    loop {
        let status = env.describe(&done.execution_arn).await.status;
        assert_eq!(
            status,
            ExecutionStatus::Succeeded,
            "the index entry changed"
        );
        let pending = inbox.info().await.expect("inbox info").state.messages;
        match (pending, acknowledged_at) {
            (0, None) => acknowledged_at = Some(Instant::now()),
            (0, Some(at)) if at.elapsed() > Duration::from_millis(1500) => break,
            (0, Some(_)) => {}
            _ => acknowledged_at = None,
        }
        assert!(
            Instant::now() < deadline,
            "the repeated start was never acknowledged"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let again = env
        .wait_until(&done.execution_arn, |d| {
            d.status != ExecutionStatus::Running
        })
        .await;
    assert_status(&again, ExecutionStatus::Succeeded);
    assert_eq!(again.output, Some(json!({"n": 1})));
    assert_eq!(again.start_date, done.start_date);
    assert_eq!(again.stop_date, done.stop_date);
    let types = env.history_types(&done.execution_arn).await;
    assert_eq!(
        types.iter().filter(|t| *t == "ExecutionStarted").count(),
        1,
        "{types:?}"
    );
    assert_eq!(
        types.iter().filter(|t| *t == "ExecutionSucceeded").count(),
        1,
        "{types:?}"
    );
    env.shutdown().await;
}

/// A first delivery of a start creates the index entry together with the
/// history append. A coordinator that dies between the two leaves a history
/// that recovery cannot find through the index; the start, never
/// acknowledged, comes again to the next owner, which must put the entry
/// right and carry the execution on.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_recorded_start_whose_index_entry_is_missing_is_resumed_when_it_comes_again() {
    let mut env = Env::start().await;
    let version = env.deploy("echo", ECHO).await;
    let arn = env
        .start_execution("echo", "unindexed", json!({"n": 1}))
        .await;
    // No participant yet: the task waits.
    env.wait_until(&arn, |d| d.status == ExecutionStatus::Running)
        .await;
    env.until_event(&arn, "TaskScheduled").await;
    let original = env.describe(&arn).await;
    // The crash: the history is there, the index entry is not, the start is
    // in the inbox again (a new owner gets it as a first delivery).
    let exec = ExecutionRef::from_arn(&arn).unwrap();
    let store = env.cluster.as_ref().unwrap().store().clone();
    let inbox = env.inbox_subject(&exec);
    env.cluster.take().unwrap().shutdown().await;
    store
        .infra()
        .executions
        .purge(format!("e.{}.{}", store.partition_of(&exec), exec.key()))
        .await
        .expect("purge the index entry");
    assert!(store.execution(&exec).await.unwrap().is_none());
    let start = InboxMessage::StartExecution(StartExecution {
        execution_arn: arn.clone(),
        version,
        input: json!({"n": 1}),
        seed: 1,
        traceparent: None,
        parent: None,
    });
    env.publish_raw(inbox, serde_json::to_vec(&start).unwrap())
        .await;
    env.restart_coordinator().await;
    env.worker(|b| b.handler("echo", echo_handler())).await;
    let done = env
        .wait_until(&arn, |d| d.status != ExecutionStatus::Running)
        .await;
    assert_status(&done, ExecutionStatus::Succeeded);
    assert_eq!(done.output, Some(json!({"n": 1})));
    assert_eq!(done.start_date, original.start_date);
    let types = env.history_types(&arn).await;
    for kind in ["ExecutionStarted", "TaskScheduled", "ExecutionSucceeded"] {
        assert_eq!(
            types.iter().filter(|t| *t == kind).count(),
            1,
            "{kind}: {types:?}"
        );
    }
    env.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn payloads_over_the_limits_fail_with_data_limit_exceeded() {
    let mut o = options();
    o.runtime.max_payload_bytes = 1000;
    let mut env = Env::start_with(o).await;
    let version = env.deploy("echo", ECHO).await;
    env.deploy(
        "big",
        r#"{"StartAt": "Big", "States": {"Big": {"Type": "Task", "Resource": "big", "End": true}}}"#,
    )
    .await;
    env.deploy(
        "big_caught",
        r#"{"StartAt": "Big", "States": {
            "Big": {"Type": "Task", "Resource": "big_w", "End": true,
                    "Catch": [{"ErrorEquals": ["States.DataLimitExceeded"], "ResultPath": "$.error", "Next": "Small"}]},
            "Small": {"Type": "Pass", "End": true}}}"#,
    )
    .await;
    env.deploy(
        "doubled",
        r#"{"StartAt": "Twice", "States": {
            "Twice": {"Type": "Task", "Resource": "echo", "Parameters": {"a.$": "$", "b.$": "$"}, "End": true}}}"#,
    )
    .await;
    let big = || json!({"blob": "x".repeat(2000)});
    // One participant with a small result limit, one with the default
    // (256 KiB): the coordinator's own limit (1000 bytes) applies to it.
    env.worker(|b| {
        b.handler(
            "big_w",
            handler_fn(move |_: Value, _ctx: TaskContext| async move { Ok::<_, TaskError>(big()) }),
        )
        .max_payload_bytes(500)
    })
    .await;
    env.worker(|b| {
        b.handler(
            "big",
            handler_fn(move |_: Value, _ctx: TaskContext| async move { Ok::<_, TaskError>(big()) }),
        )
        .handler("echo", echo_handler())
    })
    .await;

    // The API refuses an oversized input.
    let refused = env
        .api
        .start_execution(StartExecutionRequest {
            state_machine: "echo".into(),
            version: None,
            name: Some("too-big".into()),
            input: Some(big()),
            traceparent: None,
        })
        .await;
    assert_eq!(api_code(refused), "PayloadTooLarge");

    // Straight to the inbox: the execution fails.
    let exec = ExecutionRef::new("echo", "inbox-big").unwrap();
    env.publish_inbox(
        &exec,
        &InboxMessage::StartExecution(StartExecution {
            execution_arn: exec.arn(),
            version,
            input: big(),
            seed: 1,
            traceparent: None,
            parent: None,
        }),
    )
    .await;
    let done = env.wait(&exec.arn()).await;
    assert_status(&done, ExecutionStatus::Failed);
    assert_eq!(done.error.as_deref(), Some("States.DataLimitExceeded"));

    // A result over the participant's limit: the state fails, and a Catch
    // sees it.
    let done = env.run("big_caught", "w1", json!({"small": true})).await;
    assert_status(&done, ExecutionStatus::Succeeded);
    let out = done.output.expect("output");
    assert_eq!(
        out["error"]["Error"],
        json!("States.DataLimitExceeded"),
        "{out}"
    );
    assert_eq!(out["small"], json!(true));

    // A result within the participant's limit but over the coordinator's.
    let done = env.run("big", "c1", json!({})).await;
    assert_status(&done, ExecutionStatus::Failed);
    assert_eq!(done.error.as_deref(), Some("States.DataLimitExceeded"));

    // A state input over the limit (Parameters doubling a 600-byte input).
    let done = env
        .run("doubled", "d1", json!({"blob": "y".repeat(600)}))
        .await;
    assert_status(&done, ExecutionStatus::Failed);
    assert_eq!(done.error.as_deref(), Some("States.DataLimitExceeded"));

    // Small inputs still run.
    let done = env.run("echo", "small", json!({"ok": 1})).await;
    assert_status(&done, ExecutionStatus::Succeeded);
    env.shutdown().await;
}

/// A step whose history is larger than a message: a Parallel state hands
/// its whole (200 KB) input to each of its six branches' tasks, so the step
/// that starts the execution schedules 1.2 MB of task input, and the step
/// that takes the echoed results may record as much. The history is stored
/// in parts and read back whole; the execution runs to its end.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_step_larger_than_a_message_is_stored_in_parts() {
    use futures::StreamExt;
    let mut env = Env::start().await;
    let branches: Vec<String> = (0..6)
        .map(|i| {
            format!(
                r#"{{"StartAt": "T{i}", "States": {{"T{i}": {{"Type": "Task", "Resource": "echo",
                    "ResultSelector": {{"ok": true}}, "ResultPath": "$.r", "OutputPath": "$.r", "End": true}}}}}}"#
            )
        })
        .collect();
    let branches = branches.join(",");
    env.deploy(
        "wide",
        &format!(
            r#"{{"StartAt": "Fan", "States": {{"Fan": {{"Type": "Parallel", "Branches": [{branches}], "End": true}}}}}}"#
        ),
    )
    .await;
    env.worker(|b| b.handler("echo", echo_handler())).await;
    let blob = "x".repeat(200_000);
    let done = env.run("wide", "w1", json!({ "blob": blob })).await;
    assert_status(&done, ExecutionStatus::Succeeded);
    assert_eq!(done.output, Some(json!(vec![json!({"ok": true}); 6])));

    // Read back whole: every task scheduled, with its input.
    let store = env.cluster.as_ref().expect("running").store();
    let exec = ExecutionRef::from_arn(&done.execution_arn).unwrap();
    let stored = store.read_history(&exec).await.expect("history");
    let inputs: Vec<usize> = stored
        .batches
        .iter()
        .flat_map(|b| &b.entries)
        .filter_map(|e| match &e.item {
            sagaflow_coordinator::driver::HistoryItem::Command(
                sagaflow_asl::interp::Command::ScheduleTask(t),
            ) => Some(t.input["blob"].as_str().map_or(0, str::len)),
            _ => None,
        })
        .collect();
    assert_eq!(inputs, vec![200_000; 6]);
    // More messages on the history subject than batches read back: the
    // large steps took several.
    let subject = store
        .infra()
        .ns()
        .history_subject(store.partition_of(&exec), &exec);
    let messages = store
        .infra()
        .history
        .info_with_subjects(subject.as_str())
        .await
        .expect("stream info")
        .next()
        .await
        .map(|r| r.expect("subject").1)
        .unwrap_or(0);
    assert!(
        messages > stored.batches.len(),
        "{messages} messages, {} batches",
        stored.batches.len()
    );
    env.shutdown().await;
}

/// The first step of an execution stored in parts, of which only the first
/// made it (its writer died): the step was not recorded, so the execution
/// has not started; its start, applied again, is stored after that part.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_start_after_an_unfinished_first_step_runs() {
    use sagaflow_coordinator::cluster::store::{BatchPart, ExecutionMeta, HistoryBatch};
    let mut env = Env::start().await;
    let version = env.deploy("echo", ECHO).await;
    env.worker(|b| b.handler("echo", echo_handler())).await;
    let store = env.cluster.as_ref().expect("running").store();
    let exec = ExecutionRef::new("echo", "after-parts").unwrap();
    let unfinished = HistoryBatch {
        meta: Some(ExecutionMeta {
            state_machine: "echo".into(),
            version,
            traceparent: None,
            execution_span: None,
            parent: None,
        }),
        entries: Vec::new(),
        part: Some(BatchPart { index: 0, count: 2 }),
    };
    store
        .append_history(&exec, 0, &unfinished)
        .await
        .expect("append the first part");
    let stored = store.read_history(&exec).await.expect("history");
    assert!(stored.batches.is_empty(), "{:?}", stored.batches);
    assert!(stored.last_sequence > 0);

    let done = env.run("echo", "after-parts", json!({"a": 1})).await;
    assert_status(&done, ExecutionStatus::Succeeded);
    assert_eq!(done.output, Some(json!({"a": 1})));
    let types = env.history_types(&done.execution_arn).await;
    assert_eq!(types.first().map(String::as_str), Some("ExecutionStarted"));
    assert_eq!(
        types.iter().filter(|t| *t == "ExecutionStarted").count(),
        1,
        "{types:?}"
    );
    // Starting it again finds its start behind the unfinished part (the
    // whole history is read when its first message is a part).
    use sagaflow_coordinator::cluster::store::FirstStep;
    assert_eq!(
        store.first_history_step(&exec).await.expect("first step"),
        FirstStep::InParts
    );
    let start = |input: Value| StartExecutionRequest {
        state_machine: "echo".into(),
        version: None,
        name: Some("after-parts".into()),
        input: Some(input),
        traceparent: None,
    };
    let again = env
        .api
        .start_execution(start(json!({"a": 1})))
        .await
        .expect("the same start");
    assert!(again.already_started);
    assert_eq!(
        api_code(env.api.start_execution(start(json!({"a": 2}))).await),
        "ExecutionAlreadyExists"
    );
    // One whose first step is whole: read alone.
    let whole = env.run("echo", "whole", json!({"b": 1})).await;
    let whole_ref = ExecutionRef::from_arn(&whole.execution_arn).unwrap();
    match store
        .first_history_step(&whole_ref)
        .await
        .expect("first step")
    {
        FirstStep::Whole(batch) => assert!(batch.meta.is_some()),
        other => panic!("{other:?}"),
    }
    assert_eq!(
        store
            .first_history_step(&ExecutionRef::new("echo", "never").unwrap())
            .await
            .expect("first step"),
        FirstStep::None
    );
    env.shutdown().await;
}

// ------------------------------------------- 12. execution TimeoutSeconds

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_execution_past_its_timeout_times_out() {
    let env = Env::start().await;
    env.deploy(
        "bounded",
        r#"{"TimeoutSeconds": 1, "StartAt": "Pause",
            "States": {"Pause": {"Type": "Wait", "Seconds": 30, "End": true}}}"#,
    )
    .await;
    let began = Instant::now();
    let done = env.run("bounded", "b1", json!({})).await;
    assert!(began.elapsed() >= Duration::from_secs(1));
    assert_status(&done, ExecutionStatus::TimedOut);
    assert_eq!(done.error.as_deref(), Some("States.Timeout"));
    let types = env.history_types(&done.execution_arn).await;
    assert_eq!(types.last().map(String::as_str), Some("ExecutionTimedOut"));
    env.shutdown().await;
}

// ------------------------------------- 13. timers and tokens are durable

const DURABLE: &str = r#"{
  "StartAt": "Pause",
  "States": {
    "Pause": {"Type": "Wait", "Seconds": 3, "Next": "Ask"},
    "Ask": {
      "Type": "Task", "Resource": "arn:aws:states:::sqs:sendMessage.waitForTaskToken",
      "Parameters": {"token.$": "$$.Task.Token"},
      "End": true
    }
  }
}"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn timers_and_task_tokens_survive_a_coordinator_restart() {
    let mut env = Env::start().await;
    env.deploy("durable", DURABLE).await;
    let (tx, mut rx) = mpsc::unbounded_channel::<String>();
    env.worker(|b| {
        b.handler(
            "sendMessage",
            handler_fn(move |input: Value, _ctx: TaskContext| {
                let tx = tx.clone();
                async move {
                    let _ = tx.send(input["token"].as_str().unwrap_or_default().to_string());
                    Ok::<_, TaskError>(json!({}))
                }
            }),
        )
    })
    .await;
    let began = Instant::now();
    let arn = env.start_execution("durable", "d1", json!({})).await;
    // Restart the coordinator while the Wait runs.
    env.until_event(&arn, "WaitStateEntered").await;
    env.restart_coordinator().await;
    let token = tokio::time::timeout(common::LIMIT, rx.recv())
        .await
        .expect("the Wait ended and the task went out")
        .expect("participant alive");
    assert!(
        began.elapsed() >= Duration::from_secs(3),
        "the Wait was cut short"
    );
    // Restart again while the callback task waits for its token.
    env.restart_coordinator().await;
    assert_status(&env.describe(&arn).await, ExecutionStatus::Running);
    env.api
        .send_task_success(&token, json!({"after": "restarts"}))
        .await
        .unwrap();
    let done = env.wait(&arn).await;
    assert_status(&done, ExecutionStatus::Succeeded);
    assert_eq!(done.output, Some(json!({"after": "restarts"})));
    let types = env.history_types(&arn).await;
    assert_eq!(
        types.iter().filter(|t| *t == "WaitStateExited").count(),
        1,
        "{types:?}"
    );
    assert_eq!(
        types.iter().filter(|t| *t == "TaskScheduled").count(),
        1,
        "{types:?}"
    );
    env.shutdown().await;
}

// --------------------------------------------- 14. unroutable resources

const UNROUTABLE: &str = r#"{
  "StartAt": "Invoke",
  "States": {
    "Invoke": {
      "Type": "Task", "Resource": "arn:aws:states:::lambda:invoke",
      "Parameters": {"FunctionName.$": "$.fn", "Payload": {}},
      "End": true
    }
  }
}"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_task_no_participant_can_serve_fails_instead_of_hanging() {
    let mut env = Env::start().await;
    env.deploy("unroutable", UNROUTABLE).await;
    env.worker(|b| b.handler("echo", echo_handler())).await;
    // A function name that is no handler name.
    let done = env
        .run("unroutable", "bad-name", json!({"fn": "no such function!"}))
        .await;
    assert_status(&done, ExecutionStatus::Failed);
    assert_eq!(done.error.as_deref(), Some("States.Runtime"), "{done:?}");
    assert!(
        done.cause
            .as_deref()
            .unwrap_or_default()
            .contains("no such function!"),
        "{done:?}"
    );
    // No FunctionName at all.
    let done = env.run("unroutable", "no-name", json!({"fn": 5})).await;
    assert_status(&done, ExecutionStatus::Failed);
    assert_eq!(done.error.as_deref(), Some("States.Runtime"), "{done:?}");
    assert!(
        done.cause
            .as_deref()
            .unwrap_or_default()
            .contains("FunctionName"),
        "{done:?}"
    );
    // A good name still works.
    let done = env.run("unroutable", "good", json!({"fn": "echo"})).await;
    assert_status(&done, ExecutionStatus::Succeeded);
    assert_eq!(done.output.expect("output")["Payload"], json!({}));
    env.shutdown().await;
}

// ------------------------------------------------- 15. panicking handlers

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_panicking_participant_fails_its_task_with_states_task_failed() {
    let mut env = Env::start().await;
    env.deploy(
        "panics",
        r#"{"StartAt": "Crash", "States": {
            "Crash": {"Type": "Task", "Resource": "crash", "End": true,
                      "Catch": [{"ErrorEquals": ["States.TaskFailed"], "ResultPath": "$.error", "Next": "Undo"}]},
            "Undo": {"Type": "Pass", "End": true}}}"#,
    )
    .await;
    env.worker(|b| {
        b.handler(
            "crash",
            handler_fn(|input: Value, _ctx: TaskContext| async move {
                if input["crash"] == json!(true) {
                    panic!("handler bug");
                }
                Ok::<_, TaskError>(json!("fine"))
            }),
        )
    })
    .await;
    let done = env.run("panics", "p1", json!({"crash": true})).await;
    assert_status(&done, ExecutionStatus::Succeeded);
    let out = done.output.expect("output");
    assert_eq!(out["error"]["Error"], json!("States.TaskFailed"), "{out}");
    assert!(
        out["error"]["Cause"]
            .as_str()
            .unwrap_or_default()
            .contains("handler bug"),
        "{out}"
    );
    // The worker survived its handler's panic.
    let done = env.run("panics", "p2", json!({"crash": false})).await;
    assert_status(&done, ExecutionStatus::Succeeded);
    assert_eq!(done.output, Some(json!("fine")));
    env.shutdown().await;
}

/// Handler `double`: `{"doubled": 2n}` for input `{"n": n}`.
fn doubler() -> impl sagaflow_participant::Handler + 'static {
    handler_fn(|input: Value, _ctx: TaskContext| async move {
        let n = input["n"].as_i64().unwrap_or(0);
        Ok::<_, TaskError>(json!({"doubled": n * 2}))
    })
}

/// A parent's stop names the task that started the child: an execution
/// of the same name that task did not start (the name used again after
/// the child was deleted) is left running.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_parents_stop_is_for_the_child_its_task_started_only() {
    let env = Env::start().await;
    env.deploy(
        "pause",
        r#"{"StartAt": "W", "States": {"W": {"Type": "Wait", "Seconds": 2, "End": true}}}"#,
    )
    .await;
    let arn = env.start_execution("pause", "reused", json!({})).await;
    let exec = ExecutionRef::from_arn(&arn).unwrap();
    // Running (in its Wait), then a stop from a parent task that started
    // another execution of this name.
    env.until_event(&arn, "WaitStateEntered").await;
    env.publish_inbox(
        &exec,
        &InboxMessage::StopExecution {
            execution_arn: arn.clone(),
            error: Some("States.Aborted".into()),
            cause: Some("the parent execution no longer waits for this execution".into()),
            parent: Some(sagaflow_protocol::ParentTask {
                execution_arn: "arn:aws:states:local:000000000000:execution:parent:old".into(),
                task_id: "Call@0#0".into(),
            }),
            redrive_count: Some(0),
        },
    )
    .await;
    let done = env.wait(&arn).await;
    assert_status(&done, ExecutionStatus::Succeeded);
    env.shutdown().await;
}

// ------------------------------------------------ 16. child names collide

fn named_parent(child: &str, name: Option<&str>) -> String {
    let mut parameters = json!({
        "StateMachineArn": format!("arn:aws:states:local:000000000000:stateMachine:{child}"),
        "Input": {"n.$": "$.n"}
    });
    if let Some(name) = name {
        parameters["Name"] = json!(name);
    }
    json!({
        "StartAt": "Call",
        "States": {
            "Call": {
                "Type": "Task",
                "Resource": "arn:aws:states:::states:startExecution.sync:2",
                "Parameters": parameters,
                "End": true
            }
        }
    })
    .to_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_parent_gets_its_own_child_and_a_taken_child_name_fails_the_task() {
    let mut env = Env::start().await;
    env.deploy("child", CHILD).await;
    env.deploy("parent_a", &named_parent("child", None)).await;
    env.deploy("parent_b", &named_parent("child", None)).await;
    env.deploy("parent_named", &named_parent("child", Some("the-child")))
        .await;
    env.worker(|b| b.handler("double", doubler())).await;

    // Two parents of different machines, with the same execution name.
    let a = env
        .start_execution("parent_a", "same", json!({"n": 1}))
        .await;
    let b = env
        .start_execution("parent_b", "same", json!({"n": 2}))
        .await;
    let a = env.wait(&a).await;
    let b = env.wait(&b).await;
    assert_status(&a, ExecutionStatus::Succeeded);
    assert_status(&b, ExecutionStatus::Succeeded);
    let (a, b) = (a.output.expect("a"), b.output.expect("b"));
    assert_eq!(a["Output"], json!({"doubled": 2}), "{a}");
    assert_eq!(b["Output"], json!({"doubled": 4}), "{b}");
    assert_ne!(a["ExecutionArn"], b["ExecutionArn"]);

    // A parent with the longest name AWS allows still starts children.
    let long = "p".repeat(80);
    let done = env.run("parent_a", &long, json!({"n": 3})).await;
    assert_status(&done, ExecutionStatus::Succeeded);
    assert_eq!(
        done.output.expect("output")["Output"],
        json!({"doubled": 6})
    );

    // An explicit child name already taken: the task fails (AWS:
    // StepFunctions.ExecutionAlreadyExistsException), it does not hang.
    let first = env.run("parent_named", "first", json!({"n": 4})).await;
    assert_status(&first, ExecutionStatus::Succeeded);
    let second = env.run("parent_named", "second", json!({"n": 5})).await;
    assert_status(&second, ExecutionStatus::Failed);
    assert_eq!(
        second.error.as_deref(),
        Some("StepFunctions.ExecutionAlreadyExistsException"),
        "{second:?}"
    );
    env.shutdown().await;
}

/// Two branches naming the same child in one step: the second start is a
/// duplicate of one still waiting in the inbox (not yet indexed); its task
/// fails as AWS's would instead of waiting for a child that answers the
/// other branch.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_tasks_naming_the_same_child_at_once_fail_one_instead_of_hanging() {
    let mut env = Env::start().await;
    env.deploy("child", CHILD).await;
    let call = |state: &str| {
        json!({
            "StartAt": state,
            "States": {state: {
                "Type": "Task",
                "Resource": "arn:aws:states:::states:startExecution.sync:2",
                "Parameters": {
                    "StateMachineArn": "arn:aws:states:local:000000000000:stateMachine:child",
                    "Input": {"n": 1},
                    "Name": "twin"
                },
                "End": true
            }}
        })
    };
    let parent = json!({
        "StartAt": "Both",
        "States": {"Both": {"Type": "Parallel", "Branches": [call("CallA"), call("CallB")], "End": true}}
    });
    env.deploy("twins", &parent.to_string()).await;
    env.worker(|b| b.handler("double", doubler())).await;
    let done = env.run("twins", "t", json!({})).await;
    assert_status(&done, ExecutionStatus::Failed);
    assert_eq!(
        done.error.as_deref(),
        Some("StepFunctions.ExecutionAlreadyExistsException"),
        "{done:?}"
    );
    env.shutdown().await;
}

// ----------------------------------------------------------- retention

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ended_executions_are_deleted_after_their_retention_running_ones_never() {
    let mut o = options();
    o.settings.retention = Duration::from_secs(1);
    o.reconcile_every = Duration::from_millis(300);
    let env = Env::start_with(o).await;
    env.deploy(
        "quick",
        r#"{"StartAt": "Done", "States": {"Done": {"Type": "Pass", "End": true}}}"#,
    )
    .await;
    env.deploy(
        "lasting",
        r#"{"StartAt": "Pause", "States": {"Pause": {"Type": "Wait", "Seconds": 600, "End": true}}}"#,
    )
    .await;
    let lasting = env.start_execution("lasting", "l", json!({})).await;
    let quick = env.start_execution("quick", "q", json!({"n": 1})).await;
    let done = env.wait(&quick).await;
    assert_status(&done, ExecutionStatus::Succeeded);
    assert_eq!(env.history(&quick).await.len(), 4, "kept while fresh");
    // Gone after its retention (1 s), checked by the reconciliation.
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        match env.api.describe_execution(&quick).await {
            Err(e) if e.code() == Some("ExecutionDoesNotExist") => break,
            Ok(_) => {}
            Err(e) => panic!("describing {quick}: {e:?}"),
        }
        assert!(Instant::now() < deadline, "{quick} was not deleted");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(
        env.api.execution_history(&quick).await.is_err(),
        "its history is gone too"
    );
    // The running one is older than the retention by now, and stays.
    assert_status(&env.describe(&lasting).await, ExecutionStatus::Running);
    assert!(!env.history(&lasting).await.is_empty());
    env.shutdown().await;
}

/// An execution deleted after its retention takes its tasks' idempotency
/// records along: a new execution of the same name (whose tasks get the
/// same ids) runs its handlers, rather than being handed the old results.
/// While the broker still remembers the first start (its duplicate
/// window), the API refuses the name and says why.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reused_name_after_deletion_does_not_replay_the_old_results() {
    let mut o = options();
    o.settings.retention = Duration::from_secs(1);
    // Long enough for the start, the run, the retention and the deletion to
    // fit in it on a loaded machine.
    o.settings.duplicate_window = Duration::from_secs(12);
    o.reconcile_every = Duration::from_millis(300);
    let mut env = Env::start_with(o).await;
    env.deploy("count", ECHO_COUNT).await;
    let calls = Arc::new(AtomicUsize::new(0));
    let c = calls.clone();
    env.worker(move |b| {
        b.idempotency(true).handler(
            "count",
            handler_fn(move |input: Value, _ctx: TaskContext| {
                let call = c.fetch_add(1, Ordering::SeqCst) + 1;
                async move { Ok::<_, TaskError>(json!({"run": input["run"], "call": call})) }
            }),
        )
    })
    .await;
    let started = Instant::now();
    let arn = env
        .start_execution("count", "again", json!({"run": 1}))
        .await;
    let first = env.wait(&arn).await;
    assert_eq!(first.output, Some(json!({"run": 1, "call": 1})));
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        match env.api.describe_execution(&arn).await {
            Err(e) if e.code() == Some("ExecutionDoesNotExist") => break,
            Ok(_) => {}
            Err(e) => panic!("describing {arn}: {e:?}"),
        }
        assert!(Instant::now() < deadline, "{arn} was not deleted");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let again = |run: u64| StartExecutionRequest {
        state_machine: "count".into(),
        version: None,
        name: Some("again".into()),
        input: Some(json!({"run": run})),
        traceparent: None,
    };
    assert!(
        started.elapsed() < Duration::from_secs(11),
        "too slow to test the window"
    );
    let refused = env.api.start_execution(again(2)).await;
    assert_eq!(api_code(refused), "ExecutionAlreadyExists");
    // Once the window has passed, the name starts a new execution.
    tokio::time::sleep(Duration::from_secs(13).saturating_sub(started.elapsed())).await;
    let reply = env.api.start_execution(again(2)).await.expect("started");
    assert!(!reply.already_started);
    let second = env.wait(&arn).await;
    assert_eq!(second.output, Some(json!({"run": 2, "call": 2})));
    assert_eq!(calls.load(Ordering::SeqCst), 2);
    env.shutdown().await;
}

const ECHO_COUNT: &str = r#"{
  "StartAt": "Count",
  "States": {"Count": {"Type": "Task", "Resource": "count", "End": true}}
}"#;

// ------------------------------------------- results handed over directly

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn task_results_reach_the_owner_directly_and_skip_the_inbox() {
    let mut env = Env::start().await;
    env.deploy(
        "two",
        r#"{"StartAt": "A", "States": {
            "A": {"Type": "Task", "Resource": "double", "Next": "B"},
            "B": {"Type": "Task", "Resource": "double", "End": true}}}"#,
    )
    .await;
    env.worker(|b| {
        b.handler(
            "double",
            handler_fn(|input: Value, _ctx: TaskContext| async move {
                Ok::<_, TaskError>(json!({"n": input["n"].as_i64().unwrap_or(0) * 2}))
            }),
        )
    })
    .await;
    let done = env.run("two", "d1", json!({"n": 3})).await;
    assert_status(&done, ExecutionStatus::Succeeded);
    assert_eq!(done.output, Some(json!({"n": 12})));
    // The inbox only ever held the start: both results were recorded by the
    // owner as they arrived, not stored in the inbox first.
    let js = async_nats::jetstream::new(env.nats.clone());
    let mut inbox = js
        .get_stream(env.options.settings.namespace.inbox_stream())
        .await
        .expect("inbox stream");
    let state = inbox.info().await.expect("inbox info").state.clone();
    assert_eq!(state.last_sequence, 1, "{state:?}");
    assert_eq!(state.messages, 0, "{state:?}");
    env.shutdown().await;
}

/// A task result nested deeper than a history can be read back with is
/// not recorded as a success: the task fails with States.DataLimitExceeded,
/// and the history stays readable.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_result_nested_too_deep_fails_its_task_and_the_history_stays_readable() {
    let mut env = Env::start().await;
    env.deploy(
        "deep",
        r#"{"StartAt": "T", "States": {"T": {"Type": "Task", "Resource": "deep", "End": true}}}"#,
    )
    .await;
    env.worker(|b| {
        b.handler(
            "deep",
            handler_fn(|input: Value, _ctx: TaskContext| async move {
                let mut deep = json!(1);
                for _ in 0..input["levels"].as_u64().unwrap_or(0) {
                    deep = json!([deep]);
                }
                Ok::<_, TaskError>(deep)
            }),
        )
    })
    .await;
    // 124 levels decode but would make the history unreadable; 200 levels
    // would not even decode as a message (serde_json's limit of 128).
    for levels in [124, 200] {
        let done = env
            .run("deep", &format!("d{levels}"), json!({"levels": levels}))
            .await;
        assert_status(&done, ExecutionStatus::Failed);
        assert_eq!(done.error.as_deref(), Some("States.DataLimitExceeded"));
        let cause = done.cause.clone().unwrap_or_default();
        assert!(cause.contains("nested more than 100 levels"), "{cause}");
        let history = env.history(&done.execution_arn).await;
        assert!(!history.is_empty());
    }
    env.shutdown().await;
}
