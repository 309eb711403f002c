//! Interpreter tests with a small simulated runtime: virtual time, tasks
//! answered by a script, timers fired in time order.

use std::collections::BTreeMap;
use std::sync::Arc;

use proptest::prelude::*;
use serde_json::{Value, json};

use super::*;
use crate::parse::parse_definition;

type Answer = Option<Result<Value, (String, String)>>;

struct Sim {
    exec: Execution,
    now: Timestamp,
    log: Vec<Command>,
    tasks: Vec<TaskRequest>,
    timers: BTreeMap<(Timestamp, u64), String>,
    seq: u64,
    /// The rules the execution starts under (`run`, `try_run`).
    rules: u32,
}

fn t0() -> Timestamp {
    "2024-01-01T00:00:00Z".parse().unwrap()
}

fn info() -> ExecutionInfo {
    ExecutionInfo {
        execution_id: "arn:sagaflow:execution:test:exec-1".into(),
        execution_name: "exec-1".into(),
        state_machine_id: "arn:sagaflow:stateMachine:test".into(),
        state_machine_name: "test".into(),
        role_arn: String::new(),
        seed: 42,
        rules: RULES,
    }
}

impl Sim {
    fn new(definition: &str) -> Sim {
        Sim::with_options(definition, Options::default())
    }

    fn with_options(definition: &str, options: Options) -> Sim {
        let machine = parse_definition(definition).unwrap_or_else(|e| panic!("{e:?}"));
        Sim {
            exec: Execution::new(Arc::new(machine), options),
            now: t0(),
            log: Vec::new(),
            tasks: Vec::new(),
            timers: BTreeMap::new(),
            seq: 0,
            rules: RULES,
        }
    }

    fn apply(&mut self, event: Event) {
        let mut out = Vec::new();
        self.exec.apply(self.now, event, &mut out).unwrap();
        for c in &out {
            match c {
                Command::ScheduleTask(t) => self.tasks.push(t.clone()),
                Command::CancelTask { task_id } => self.tasks.retain(|t| *t.task_id != **task_id),
                Command::StartTimer {
                    timer_id, fire_at, ..
                } => {
                    self.seq += 1;
                    self.timers.insert((*fire_at, self.seq), timer_id.clone());
                }
                Command::CancelTimer { timer_id } => self.timers.retain(|_, id| id != timer_id),
                _ => {}
            }
        }
        self.log.extend(out);
    }

    /// Runs to completion: each scheduled task is answered by `answer`
    /// (`None` leaves it unanswered); when no task can be answered, the
    /// earliest timer fires.
    fn run(&mut self, input: Value, answer: impl FnMut(&TaskRequest) -> Answer) -> Outcome {
        match self.try_run(input, answer) {
            Some(outcome) => outcome,
            None => panic!(
                "stuck: no task to answer and no timer; log: {:#?}",
                self.log
            ),
        }
    }

    /// Like `run`, but `None` when the execution waits for something that
    /// never comes (an unanswered task without a timeout).
    fn try_run(
        &mut self,
        input: Value,
        mut answer: impl FnMut(&TaskRequest) -> Answer,
    ) -> Option<Outcome> {
        self.apply(Event::ExecutionStarted {
            info: ExecutionInfo {
                rules: self.rules,
                ..info()
            },
            input,
        });
        let mut unanswered: Vec<String> = Vec::new();
        for _ in 0..10_000 {
            if let Some(o) = self.exec.outcome() {
                return Some(o.clone());
            }
            let next = self
                .tasks
                .iter()
                .position(|t| !unanswered.iter().any(|u| **u == *t.task_id));
            if let Some(i) = next {
                let task = self.tasks.remove(i);
                match answer(&task) {
                    Some(Ok(output)) => self.apply(Event::TaskSucceeded {
                        task_id: task.task_id.to_string(),
                        output,
                    }),
                    Some(Err((error, cause))) => self.apply(Event::TaskFailed {
                        task_id: task.task_id.to_string(),
                        error,
                        cause,
                    }),
                    None => {
                        unanswered.push(task.task_id.to_string());
                        self.tasks.push(task);
                    }
                }
                continue;
            }
            let ((at, seq), timer_id) = self.timers.iter().next().map(|(k, v)| (*k, v.clone()))?;
            self.timers.remove(&(at, seq));
            self.now = at;
            self.apply(Event::TimerFired { timer_id });
        }
        panic!("did not finish");
    }

    /// Fires timers until the execution completes (no tasks involved).
    fn try_run_more(&mut self) -> Outcome {
        while self.exec.outcome().is_none() {
            let ((at, seq), timer_id) = self
                .timers
                .iter()
                .next()
                .map(|(k, v)| (*k, v.clone()))
                .expect("a timer to fire");
            self.timers.remove(&(at, seq));
            self.now = at;
            self.apply(Event::TimerFired { timer_id });
        }
        self.exec.outcome().unwrap().clone()
    }

    fn retry_delays(&self) -> Vec<f64> {
        self.log
            .iter()
            .filter_map(|c| match c {
                Command::StartTimer {
                    purpose: TimerPurpose::Retry { delay_seconds, .. },
                    ..
                } => Some(*delay_seconds),
                _ => None,
            })
            .collect()
    }

    fn entered(&self) -> Vec<String> {
        self.log
            .iter()
            .filter_map(|c| match c {
                Command::Record(Record::StateEntered { path, .. }) => Some(path.to_string()),
                _ => None,
            })
            .collect()
    }
}

fn ok(v: Value) -> Answer {
    Some(Ok(v))
}

fn err(e: &str, c: &str) -> Answer {
    Some(Err((e.to_string(), c.to_string())))
}

fn succeeded(o: &Outcome) -> &Value {
    match o {
        Outcome::Succeeded { output } => output,
        other => panic!("expected success, got {other:?}"),
    }
}

fn failed(o: &Outcome) -> (&str, &str) {
    match o {
        Outcome::Failed { error, cause } => (error, cause),
        other => panic!("expected failure, got {other:?}"),
    }
}

#[test]
fn pass_states_process_input_and_output() {
    let mut sim = Sim::new(
        r#"{"StartAt": "A", "States": {
            "A": {"Type": "Pass", "Result": {"x": 1}, "ResultPath": "$.a", "Next": "B"},
            "B": {"Type": "Pass", "Parameters": {"sum.$": "States.MathAdd($.a.x, $.n)", "fixed": true}, "ResultPath": "$.b", "Next": "C"},
            "C": {"Type": "Pass", "InputPath": "$.b", "OutputPath": "$.sum", "End": true}
        }}"#,
    );
    let o = sim.run(json!({"n": 41}), |_| None);
    assert_eq!(succeeded(&o), &json!(42));
    assert_eq!(sim.entered(), vec!["A", "B", "C"]);
}

#[test]
fn task_result_selector_and_result_path() {
    let mut sim = Sim::new(
        r#"{"StartAt": "T", "States": {
            "T": {"Type": "Task", "Resource": "arn:aws:lambda:us-east-1:1:function:book",
                  "Parameters": {"who.$": "$.name", "exec.$": "$$.Execution.Name"},
                  "ResultSelector": {"id.$": "$.bookingId"}, "ResultPath": "$.booking", "End": true}
        }}"#,
    );
    let o = sim.run(json!({"name": "ada"}), |t| {
        assert_eq!(*t.input, json!({"who": "ada", "exec": "exec-1"}));
        assert_eq!(&*t.task_id, "T@0#0");
        assert_eq!(t.attempt, 0);
        ok(json!({"bookingId": "B1", "noise": [1, 2, 3]}))
    });
    assert_eq!(
        succeeded(&o),
        &json!({"name": "ada", "booking": {"id": "B1"}})
    );
}

#[test]
fn retry_backoff_then_catch_with_error_output() {
    let mut sim = Sim::new(
        r#"{"StartAt": "T", "States": {
            "T": {"Type": "Task", "Resource": "flaky",
                  "Retry": [{"ErrorEquals": ["Busy"], "IntervalSeconds": 1, "MaxAttempts": 3, "BackoffRate": 2}],
                  "Catch": [{"ErrorEquals": ["States.ALL"], "ResultPath": "$.error", "Next": "Undo"}],
                  "End": true},
            "Undo": {"Type": "Pass", "End": true}
        }}"#,
    );
    let mut attempts = Vec::new();
    let o = sim.run(json!({"k": 1}), |t| {
        attempts.push((t.task_id.to_string(), t.attempt));
        err("Busy", "try later")
    });
    assert_eq!(
        succeeded(&o),
        &json!({"k": 1, "error": {"Error": "Busy", "Cause": "try later"}})
    );
    assert_eq!(sim.retry_delays(), vec![1.0, 2.0, 4.0]);
    assert_eq!(
        attempts,
        vec![
            ("T@0#0".into(), 0),
            ("T@0#1".into(), 1),
            ("T@0#2".into(), 2),
            ("T@0#3".into(), 3)
        ]
    );
    assert_eq!(sim.now, t0() + jiff::SignedDuration::from_secs(7));
}

#[test]
fn each_retrier_has_its_own_counter_and_max_delay_caps() {
    let mut sim = Sim::new(
        r#"{"StartAt": "T", "States": {
            "T": {"Type": "Task", "Resource": "r",
                  "Retry": [
                    {"ErrorEquals": ["A"], "IntervalSeconds": 10, "MaxAttempts": 2, "BackoffRate": 3, "MaxDelaySeconds": 20},
                    {"ErrorEquals": ["B"], "IntervalSeconds": 1, "MaxAttempts": 1}
                  ],
                  "End": true}
        }}"#,
    );
    let script = ["A", "B", "A", "B"];
    let mut n = 0;
    let o = sim.run(json!({}), |_| {
        n += 1;
        err(script.get(n - 1).copied().unwrap_or("A"), "")
    });
    // A (10 s), B (1 s), A (min(30, 20) = 20 s), then B again: its single retry is used up.
    assert_eq!(sim.retry_delays(), vec![10.0, 1.0, 20.0]);
    assert_eq!(failed(&o).0, "B");
}

#[test]
fn max_attempts_zero_never_retries_and_first_matching_retrier_wins() {
    let mut sim = Sim::new(
        r#"{"StartAt": "T", "States": {
            "T": {"Type": "Task", "Resource": "r",
                  "Retry": [{"ErrorEquals": ["E"], "MaxAttempts": 0}, {"ErrorEquals": ["States.ALL"], "MaxAttempts": 5}],
                  "End": true}
        }}"#,
    );
    let o = sim.run(json!({}), |_| err("E", "boom"));
    assert_eq!(failed(&o), ("E", "boom"));
    assert!(sim.retry_delays().is_empty());
}

#[test]
fn full_jitter_stays_within_the_computed_delay() {
    let mut sim = Sim::new(
        r#"{"StartAt": "T", "States": {
            "T": {"Type": "Task", "Resource": "r",
                  "Retry": [{"ErrorEquals": ["E"], "IntervalSeconds": 4, "MaxAttempts": 3, "JitterStrategy": "FULL"}],
                  "End": true}
        }}"#,
    );
    sim.run(json!({}), |_| err("E", ""));
    let delays = sim.retry_delays();
    assert_eq!(delays.len(), 3);
    for (d, max) in delays.iter().zip([4.0, 8.0, 16.0]) {
        assert!((0.0..=max).contains(d), "{d} within {max}");
    }
    assert!(
        delays.iter().any(|d| ![4.0, 8.0, 16.0].contains(d)),
        "jitter changed something"
    );
}

#[test]
fn runtime_errors_are_never_caught() {
    let mut sim = Sim::new(
        r#"{"StartAt": "T", "States": {
            "T": {"Type": "Task", "Resource": "r", "InputPath": "$.missing",
                  "Retry": [{"ErrorEquals": ["States.ALL"]}],
                  "Catch": [{"ErrorEquals": ["States.ALL"], "Next": "C"}], "End": true},
            "C": {"Type": "Pass", "End": true}
        }}"#,
    );
    let o = sim.run(json!({}), |_| panic!("no task may run"));
    assert_eq!(failed(&o).0, "States.Runtime");
}

#[test]
fn parameters_path_miss_is_runtime_error_with_aws_wording() {
    let mut sim = Sim::new(
        r#"{"StartAt": "T", "States": {
            "T": {"Type": "Task", "Resource": "r", "Parameters": {"address.$": "$.application.address"}, "End": true}
        }}"#,
    );
    let o = sim.run(json!({"flagged": false}), |_| panic!("no task may run"));
    let (error, cause) = failed(&o);
    assert_eq!(error, "States.Runtime");
    assert!(cause.contains("The JSONPath '$.application.address' specified for the field 'address.$' could not be found in the input '{\"flagged\":false}'"), "{cause}");
}

#[test]
fn result_path_into_a_string_is_catchable_match_failure() {
    let mut sim = Sim::new(
        r#"{"StartAt": "T", "States": {
            "T": {"Type": "Task", "Resource": "r", "ResultPath": "$.a.b",
                  "Catch": [{"ErrorEquals": ["States.ResultPathMatchFailure"], "ResultPath": "$.err", "Next": "C"}], "End": true},
            "C": {"Type": "Pass", "End": true}
        }}"#,
    );
    let o = sim.run(json!({"a": "text"}), |_| ok(json!(1)));
    let out = succeeded(&o);
    assert_eq!(out["a"], json!("text"));
    assert_eq!(out["err"]["Error"], json!("States.ResultPathMatchFailure"));
}

#[test]
fn travel_booking_compensates_in_reverse_order() {
    let def = r#"{"StartAt": "BookFlight", "States": {
        "BookFlight": {"Type": "Task", "Resource": "book_flight", "ResultPath": "$.flight", "Next": "BookHotel",
            "Catch": [{"ErrorEquals": ["States.ALL"], "ResultPath": "$.error", "Next": "Failed"}]},
        "BookHotel": {"Type": "Task", "Resource": "book_hotel", "ResultPath": "$.hotel", "Next": "BookCar",
            "Catch": [{"ErrorEquals": ["States.ALL"], "ResultPath": "$.error", "Next": "CancelFlight"}]},
        "BookCar": {"Type": "Task", "Resource": "book_car", "ResultPath": "$.car", "End": true,
            "Catch": [{"ErrorEquals": ["States.ALL"], "ResultPath": "$.error", "Next": "CancelHotel"}]},
        "CancelHotel": {"Type": "Task", "Resource": "cancel_hotel", "ResultPath": null, "Next": "CancelFlight",
            "Retry": [{"ErrorEquals": ["States.ALL"], "MaxAttempts": 5}]},
        "CancelFlight": {"Type": "Task", "Resource": "cancel_flight", "ResultPath": null, "Next": "Failed",
            "Retry": [{"ErrorEquals": ["States.ALL"], "MaxAttempts": 5}]},
        "Failed": {"Type": "Fail", "Error": "BookingFailed", "Cause": "compensated"}
    }}"#;
    let mut sim = Sim::new(def);
    let mut calls = Vec::new();
    let mut cancel_hotel_tries = 0;
    let o = sim.run(json!({"trip": 7}), |t| {
        calls.push(t.resource.to_string());
        match &*t.resource {
            "book_car" => err("CarUnavailable", "no cars"),
            "cancel_hotel" => {
                cancel_hotel_tries += 1;
                if cancel_hotel_tries < 3 {
                    err("Flaky", "")
                } else {
                    ok(json!({}))
                }
            }
            _ => ok(json!({"ref": t.resource})),
        }
    });
    assert_eq!(failed(&o), ("BookingFailed", "compensated"));
    assert_eq!(
        calls,
        vec![
            "book_flight",
            "book_hotel",
            "book_car",
            "cancel_hotel",
            "cancel_hotel",
            "cancel_hotel",
            "cancel_flight"
        ]
    );
}

#[test]
fn parallel_keeps_branch_order_and_propagates_first_failure() {
    let def = r#"{"StartAt": "P", "States": {
        "P": {"Type": "Parallel", "End": true, "Branches": [
            {"StartAt": "A", "States": {"A": {"Type": "Task", "Resource": "a", "End": true}}},
            {"StartAt": "B", "States": {"B": {"Type": "Pass", "Result": "b", "End": true}}},
            {"StartAt": "C", "States": {"C": {"Type": "Task", "Resource": "c", "End": true}}}
        ]}
    }}"#;
    let mut sim = Sim::new(def);
    let o = sim.run(json!({"x": 1}), |t| {
        ok(json!(format!("{}-done", t.resource)))
    });
    assert_eq!(succeeded(&o), &json!(["a-done", "b", "c-done"]));

    let mut sim = Sim::new(def);
    let o = sim.run(json!({"x": 1}), |t| match &*t.resource {
        "a" => err("A.Failed", "a broke"),
        _ => None,
    });
    assert_eq!(failed(&o), ("A.Failed", "a broke"));
    assert!(
        sim.log
            .iter()
            .any(|c| matches!(c, Command::CancelTask { task_id } if task_id.ends_with("C@0#0")))
    );
}

#[test]
fn parallel_catch_and_retry_rerun_all_branches() {
    let def = r#"{"StartAt": "P", "States": {
        "P": {"Type": "Parallel", "Next": "Done",
              "Retry": [{"ErrorEquals": ["X"], "MaxAttempts": 1, "IntervalSeconds": 2}],
              "Catch": [{"ErrorEquals": ["States.ALL"], "ResultPath": "$.e", "Next": "Done"}],
              "Branches": [
            {"StartAt": "A", "States": {"A": {"Type": "Task", "Resource": "a", "End": true}}},
            {"StartAt": "B", "States": {"B": {"Type": "Task", "Resource": "b", "End": true}}}
        ]},
        "Done": {"Type": "Succeed"}
    }}"#;
    let mut sim = Sim::new(def);
    let mut ids = Vec::new();
    let o = sim.run(json!({}), |t| {
        ids.push(t.task_id.to_string());
        if &*t.resource == "b" {
            err("X", "bad")
        } else {
            ok(json!(1))
        }
    });
    assert_eq!(succeeded(&o), &json!({"e": {"Error": "X", "Cause": "bad"}}));
    assert_eq!(
        ids,
        vec![
            "P@0#0[0]/A@0#0",
            "P@0#0[1]/B@0#0",
            "P@0#1[0]/A@0#0",
            "P@0#1[1]/B@0#0"
        ]
    );
    assert_eq!(sim.retry_delays(), vec![2.0]);
}

#[test]
fn map_with_item_selector_and_concurrency_one() {
    let def = r#"{"StartAt": "M", "States": {
        "M": {"Type": "Map", "ItemsPath": "$.items", "MaxConcurrency": 1,
              "ItemSelector": {"i.$": "$$.Map.Item.Index", "v.$": "$$.Map.Item.Value", "tag.$": "$.tag"},
              "ItemProcessor": {"StartAt": "Work", "States": {"Work": {"Type": "Task", "Resource": "work", "End": true}}},
              "ResultPath": "$.results", "End": true}
    }}"#;
    let mut sim = Sim::new(def);
    let mut seen = Vec::new();
    let o = sim.run(json!({"items": ["a", "b", "c"], "tag": "t"}), |t| {
        // Only one task at a time with MaxConcurrency 1.
        seen.push(t.input.clone());
        ok(json!(t.input["i"].as_u64().unwrap() * 10))
    });
    assert_eq!(succeeded(&o)["results"], json!([0, 10, 20]));
    assert_eq!(*seen[1], json!({"i": 1, "v": "b", "tag": "t"}));
    let max_in_flight = {
        let mut in_flight: i32 = 0;
        let mut max = 0;
        for c in &sim.log {
            match c {
                Command::ScheduleTask(_) => in_flight += 1,
                Command::Record(Record::MapIterationSucceeded { .. }) => in_flight -= 1,
                _ => {}
            }
            max = max.max(in_flight);
        }
        max
    };
    assert_eq!(max_in_flight, 1);
}

#[test]
fn map_failure_stops_new_iterations_and_propagates_item_error() {
    let def = r#"{"StartAt": "M", "States": {
        "M": {"Type": "Map", "MaxConcurrency": 2,
              "Iterator": {"StartAt": "Work", "States": {"Work": {"Type": "Task", "Resource": "work", "End": true}}},
              "End": true}
    }}"#;
    let mut sim = Sim::new(def);
    let mut started = Vec::new();
    let o = sim.run(json!([1, 2, 3, 4, 5]), |t| {
        started.push(Value::clone(&t.input));
        if *t.input == json!(2) {
            err("Item.Bad", "two")
        } else {
            None
        }
    });
    assert_eq!(failed(&o), ("Item.Bad", "two"));
    assert_eq!(
        started,
        vec![json!(1), json!(2)],
        "items 3..5 never started"
    );
}

#[test]
fn map_tolerated_failures() {
    let def = |count: u32| {
        format!(
            r#"{{"StartAt": "M", "States": {{
            "M": {{"Type": "Map", "ToleratedFailureCount": {count},
                  "ItemProcessor": {{"StartAt": "W", "States": {{"W": {{"Type": "Task", "Resource": "w", "End": true}}}}}},
                  "End": true}}
        }}}}"#
        )
    };
    let answer = |t: &TaskRequest| {
        if t.input.as_u64().unwrap().is_multiple_of(2) {
            err("Even", "")
        } else {
            ok(json!("ok"))
        }
    };
    let mut sim = Sim::new(&def(2));
    let o = sim.run(json!([1, 2, 3, 4, 5]), answer);
    assert_eq!(
        succeeded(&o),
        &json!(["ok", {"Error": "Even", "Cause": ""}, "ok", {"Error": "Even", "Cause": ""}, "ok"])
    );
    let mut sim = Sim::new(&def(1));
    let o = sim.run(json!([1, 2, 3, 4, 5]), answer);
    assert_eq!(failed(&o).0, "States.ExceedToleratedFailureThreshold");
}

#[test]
fn map_item_batcher_groups_items() {
    let def = r#"{"StartAt": "M", "States": {
        "M": {"Type": "Map", "ItemBatcher": {"MaxItemsPerBatch": 2, "BatchInput": {"job.$": "$.job"}},
              "ItemsPath": "$.items",
              "ItemProcessor": {"StartAt": "W", "States": {"W": {"Type": "Pass", "End": true}}},
              "End": true}
    }}"#;
    let mut sim = Sim::new(def);
    let o = sim.run(json!({"items": [1, 2, 3], "job": "j"}), |_| None);
    assert_eq!(
        succeeded(&o),
        &json!([{"BatchInput": {"job": "j"}, "Items": [1, 2]}, {"BatchInput": {"job": "j"}, "Items": [3]}])
    );
}

#[test]
fn empty_map_succeeds_with_empty_array() {
    let mut sim = Sim::new(
        r#"{"StartAt": "M", "States": {"M": {"Type": "Map", "ItemProcessor": {"StartAt": "W", "States": {"W": {"Type": "Task", "Resource": "w", "End": true}}}, "End": true}}}"#,
    );
    assert_eq!(succeeded(&sim.run(json!([]), |_| None)), &json!([]));
}

#[test]
fn task_timeout_is_states_timeout_and_catchable() {
    let mut sim = Sim::new(
        r#"{"StartAt": "T", "States": {
            "T": {"Type": "Task", "Resource": "slow", "TimeoutSeconds": 5,
                  "Catch": [{"ErrorEquals": ["States.TaskFailed"], "Next": "Wrong"}, {"ErrorEquals": ["States.Timeout"], "ResultPath": "$.e", "Next": "Right"}],
                  "End": true},
            "Wrong": {"Type": "Fail", "Error": "wrong"},
            "Right": {"Type": "Succeed"}
        }}"#,
    );
    let o = sim.run(json!({}), |_| None);
    assert_eq!(succeeded(&o)["e"]["Error"], json!("States.Timeout"));
    assert_eq!(sim.now, t0() + jiff::SignedDuration::from_secs(5));
    assert!(
        sim.log
            .iter()
            .any(|c| matches!(c, Command::CancelTask { task_id } if task_id == "T@0#0"))
    );
    // A late answer is ignored.
    let before = sim.log.len();
    sim.apply(Event::TaskSucceeded {
        task_id: "T@0#0".into(),
        output: json!(1),
    });
    assert_eq!(sim.log.len(), before);
}

#[test]
fn heartbeat_and_timeout_seconds_from_paths_reach_the_task() {
    let mut sim = Sim::new(
        r#"{"StartAt": "T", "States": {
            "T": {"Type": "Task", "Resource": "r", "TimeoutSecondsPath": "$.t", "HeartbeatSecondsPath": "$.h", "End": true}
        }}"#,
    );
    sim.run(json!({"t": 30, "h": 10}), |t| {
        assert_eq!(
            (t.timeout_seconds, t.heartbeat_seconds),
            (Some(30), Some(10))
        );
        ok(json!(null))
    });
    let mut sim = Sim::new(
        r#"{"StartAt": "T", "States": {"T": {"Type": "Task", "Resource": "r", "TimeoutSecondsPath": "$.t", "End": true}}}"#,
    );
    let o = sim.run(json!({"t": "soon"}), |_| panic!("must not run"));
    assert_eq!(failed(&o).0, "States.Runtime");
    // A whole number written as a float is accepted, as in literal fields.
    let mut sim = Sim::new(
        r#"{"StartAt": "W", "States": {"W": {"Type": "Wait", "SecondsPath": "$.s", "Next": "T"},
            "T": {"Type": "Task", "Resource": "r", "TimeoutSecondsPath": "$.t", "End": true}}}"#,
    );
    sim.run(json!({"s": 2.0, "t": 5.0}), |t| {
        assert_eq!(t.timeout_seconds, Some(5));
        ok(json!(null))
    });
    assert_eq!(sim.now, t0() + jiff::SignedDuration::from_secs(2));
}

#[test]
fn machine_timeout_times_out_the_execution() {
    let mut sim = Sim::new(
        r#"{"TimeoutSeconds": 10, "StartAt": "W", "States": {
            "W": {"Type": "Wait", "Seconds": 60, "End": true}
        }}"#,
    );
    let o = sim.run(json!({}), |_| None);
    assert!(matches!(o, Outcome::TimedOut { ref error, .. } if error == "States.Timeout"));
    assert_eq!(sim.now, t0() + jiff::SignedDuration::from_secs(10));
}

#[test]
fn wait_forms() {
    let mut sim = Sim::new(
        r#"{"StartAt": "A", "States": {
            "A": {"Type": "Wait", "Seconds": 5, "Next": "B"},
            "B": {"Type": "Wait", "SecondsPath": "$.s", "Next": "C"},
            "C": {"Type": "Wait", "TimestampPath": "$.ts", "Next": "D"},
            "D": {"Type": "Wait", "Timestamp": "2024-01-01T01:00:00Z", "End": true}
        }}"#,
    );
    let o = sim.run(json!({"s": 10, "ts": "2024-01-01T00:30:00+00:00"}), |_| {
        None
    });
    assert_eq!(succeeded(&o)["s"], json!(10));
    assert_eq!(
        sim.now,
        "2024-01-01T01:00:00Z".parse::<Timestamp>().unwrap()
    );
}

#[test]
fn stop_aborts_and_cancels() {
    let mut sim = Sim::new(
        r#"{"StartAt": "T", "States": {"T": {"Type": "Task", "Resource": "r", "TimeoutSeconds": 100, "End": true}}}"#,
    );
    sim.apply(Event::ExecutionStarted {
        info: info(),
        input: json!({}),
    });
    sim.apply(Event::StopRequested {
        error: Some("Stop".into()),
        cause: None,
    });
    assert!(matches!(sim.exec.outcome(), Some(Outcome::Aborted { .. })));
    assert!(
        sim.log
            .iter()
            .any(|c| matches!(c, Command::CancelTask { .. }))
    );
    assert!(
        sim.log
            .iter()
            .any(|c| matches!(c, Command::CancelTimer { .. }))
    );
    assert_eq!(sim.exec.pending_tasks().count(), 0);
    assert_eq!(sim.exec.pending_timers().count(), 0);
}

#[test]
fn wait_for_task_token_puts_token_in_request_and_context() {
    let mut sim = Sim::new(
        r#"{"StartAt": "Approve", "States": {
            "Approve": {"Type": "Task", "Resource": "arn:aws:states:::sqs:sendMessage.waitForTaskToken",
                        "Parameters": {"token.$": "$$.Task.Token"}, "End": true}
        }}"#,
    );
    let o = sim.run(json!({}), |t| {
        let token = t.task_token.clone().expect("a token");
        assert_eq!(t.input["token"], json!(token));
        ok(json!({"approved": true}))
    });
    assert_eq!(succeeded(&o), &json!({"approved": true}));
}

#[test]
fn variables_are_assigned_and_visible_in_nested_scopes() {
    let mut sim = Sim::new(
        r#"{"StartAt": "A", "States": {
            "A": {"Type": "Pass", "Result": {"v": 5}, "ResultPath": "$.a", "Assign": {"five.$": "$.v", "name": "x"}, "Next": "M"},
            "M": {"Type": "Map", "ItemsPath": "$.items",
                  "ItemSelector": {"v.$": "$$.Map.Item.Value"},
                  "ItemProcessor": {"StartAt": "In", "States": {
                      "In": {"Type": "Pass", "Parameters": {"sum.$": "States.MathAdd($five, $.v)", "name.$": "$name"}, "End": true}
                  }},
                  "End": true}
        }}"#,
    );
    let o = sim.run(json!({"items": [1, 2]}), |_| None);
    assert_eq!(
        succeeded(&o),
        &json!([{"sum": 6, "name": "x"}, {"sum": 7, "name": "x"}])
    );
}

#[test]
fn assign_reads_values_from_before_the_state() {
    let mut sim = Sim::new(
        r#"{"StartAt": "A", "States": {
            "A": {"Type": "Pass", "Assign": {"x": 1}, "Next": "B"},
            "B": {"Type": "Pass", "Assign": {"x": 2, "old.$": "$x"}, "Next": "C"},
            "C": {"Type": "Pass", "Parameters": {"x.$": "$x", "old.$": "$old"}, "End": true}
        }}"#,
    );
    let o = sim.run(json!({}), |_| None);
    assert_eq!(succeeded(&o), &json!({"x": 2, "old": 1}));
}

#[test]
fn fail_state_with_error_path_and_intrinsic_cause() {
    let mut sim = Sim::new(
        r#"{"StartAt": "F", "States": {
            "F": {"Type": "Fail", "ErrorPath": "$.code", "CausePath": "States.Format('order {} failed', $.id)"}
        }}"#,
    );
    let o = sim.run(json!({"code": "Order.Invalid", "id": 12}), |_| None);
    assert_eq!(failed(&o), ("Order.Invalid", "order 12 failed"));
}

#[test]
fn choice_without_match_fails_with_no_choice_matched() {
    let mut sim = Sim::new(
        r#"{"StartAt": "C", "States": {
            "C": {"Type": "Choice", "Choices": [{"Variable": "$.n", "NumericGreaterThan": 10, "Next": "Big"}]},
            "Big": {"Type": "Succeed"}
        }}"#,
    );
    let o = sim.run(json!({"n": 1}), |_| None);
    assert_eq!(failed(&o).0, "States.NoChoiceMatched");
}

#[test]
fn an_endless_loop_hits_the_transition_limit() {
    let options = Options {
        max_state_transitions: 1000,
        ..Options::default()
    };
    let mut sim = Sim::with_options(
        r#"{"StartAt": "A", "States": {
            "A": {"Type": "Pass", "Next": "B"},
            "B": {"Type": "Choice", "Choices": [{"Variable": "$.stop", "BooleanEquals": true, "Next": "End"}], "Default": "A"},
            "End": {"Type": "Succeed"}
        }}"#,
        options,
    );
    let o = sim.run(json!({"stop": false}), |_| None);
    let (error, cause) = failed(&o);
    assert_eq!(error, "States.Runtime");
    assert!(cause.contains("1000 state transitions"), "{cause}");
}

/// A loop through a catcher whose error carries the whole input (a Fail's
/// `CausePath` of `States.JsonToString($)`) doubles the input on each turn:
/// under rules 3 the catcher's output is held to the payload limit, and
/// the execution fails with `States.DataLimitExceeded` rather than growing
/// until the transition limit (or the memory) runs out.
#[test]
fn a_catcher_output_over_the_payload_limit_fails_the_state() {
    let definition = r#"{"StartAt": "P", "States": {
        "P": {"Type": "Parallel", "End": true,
              "Branches": [{"StartAt": "F", "States": {
                  "F": {"Type": "Fail", "Error": "E", "CausePath": "States.JsonToString($)"}}}],
              "Catch": [{"ErrorEquals": ["E"], "ResultPath": "$.e", "Next": "P"}]}
    }}"#;
    let options = |max_state_transitions| Options {
        max_payload_bytes: 10_000,
        max_state_transitions,
        ..Options::default()
    };
    let mut sim = Sim::with_options(definition, options(60));
    let o = sim.run(json!({"n": 1}), |_| None);
    let (error, cause) = failed(&o);
    assert_eq!(error, "States.DataLimitExceeded", "{cause}");
    assert!(cause.contains("after its Catch"), "{cause}");
    // Histories of rules 2 replay as they ran: the loop goes on to the
    // transition limit (kept low: the input more than doubles each turn).
    let mut sim = Sim::with_options(definition, options(16));
    sim.rules = 2;
    let o = sim.run(json!({"n": 1}), |_| None);
    let (error, cause) = failed(&o);
    assert_eq!(error, "States.Runtime", "{cause}");
    assert!(cause.contains("16 state transitions"), "{cause}");
}

/// Under rules 3 each retry counts as a state transition: a `Retry` with
/// a huge `MaxAttempts` on a task that keeps failing ends at the
/// transition limit instead of adding to the history for ever.
#[test]
fn retries_count_toward_the_transition_limit() {
    let definition = r#"{"StartAt": "T", "States": {
        "T": {"Type": "Task", "Resource": "r", "End": true,
              "Retry": [{"ErrorEquals": ["States.ALL"], "MaxAttempts": 99999999,
                         "IntervalSeconds": 1, "BackoffRate": 1}]}
    }}"#;
    let options = || Options {
        max_state_transitions: 50,
        ..Options::default()
    };
    // The task fails 100 times, then succeeds.
    let flaky = || {
        let mut calls = 0;
        move |_: &TaskRequest| -> Answer {
            calls += 1;
            if calls > 100 {
                Some(Ok(json!("done")))
            } else {
                Some(Err(("Flaky".into(), String::new())))
            }
        }
    };
    let mut sim = Sim::with_options(definition, options());
    let o = sim.run(json!({}), flaky());
    let (error, cause) = failed(&o);
    assert_eq!(error, "States.Runtime", "{cause}");
    assert!(cause.contains("retries count as transitions"), "{cause}");
    let retries = sim
        .log
        .iter()
        .filter(|c| matches!(c, Command::Record(Record::RetryScheduled { .. })))
        .count();
    assert_eq!(retries, 49, "one state entered, 49 retries");
    // Rules 2: retries are not counted.
    let mut sim = Sim::with_options(definition, options());
    sim.rules = 2;
    let o = sim.run(json!({}), flaky());
    assert_eq!(*succeeded(&o), json!("done"));
}

/// Rules 3: a Map's iteration inputs are built when it starts, so what
/// they may take is bounded before any is built: more items than state
/// transitions left fail the Map at once (each needs one).
#[test]
fn a_map_with_more_items_than_transitions_left_fails_before_it_starts() {
    let definition = r#"{"StartAt": "M", "States": {
        "M": {"Type": "Map", "ItemsPath": "$.items", "End": true,
              "ItemProcessor": {"StartAt": "P", "States": {"P": {"Type": "Pass", "End": true}}}}
    }}"#;
    let options = || Options {
        max_state_transitions: 20,
        ..Options::default()
    };
    let input = json!({"items": (0..30).collect::<Vec<u32>>()});
    let mut sim = Sim::with_options(definition, options());
    let o = sim.run(input.clone(), |_| None);
    let (error, cause) = failed(&o);
    assert_eq!(error, "States.Runtime");
    assert!(
        cause.contains("has 30 items, more than the 19 state transitions left"),
        "{cause}"
    );
    assert!(
        !sim.log
            .iter()
            .any(|c| matches!(c, Command::Record(Record::MapIterationStarted { .. }))),
        "no iteration started"
    );
    // Rules 2: the iterations run until the limit.
    let mut sim = Sim::with_options(definition, options());
    sim.rules = 2;
    let o = sim.run(input, |_| None);
    let (error, cause) = failed(&o);
    assert_eq!(error, "States.Runtime");
    assert!(cause.contains("20 state transitions"), "{cause}");
}

/// Rules 3: an ItemSelector that copies a large input into every item is
/// stopped once the iterations' inputs pass 64 payloads in all, rather
/// than building them all in memory.
#[test]
fn the_inputs_of_a_maps_iterations_are_held_to_64_payloads_in_all() {
    let definition = r#"{"StartAt": "M", "States": {
        "M": {"Type": "Map", "ItemsPath": "$.items", "ItemSelector": {"all.$": "$"}, "End": true,
              "ItemProcessor": {"StartAt": "P", "States": {"P": {"Type": "Pass", "Result": 1, "End": true}}}}
    }}"#;
    let options = Options {
        max_payload_bytes: 1_000,
        ..Options::default()
    };
    // About 500 bytes each, copied into 200 items: 100 KB > 64 KB.
    let input = json!({"items": vec![0; 200], "pad": "x".repeat(80)});
    let mut sim = Sim::with_options(definition, options);
    let o = sim.run(input, |_| None);
    let (error, cause) = failed(&o);
    assert_eq!(error, "States.DataLimitExceeded");
    assert!(cause.contains("exceed 64000 bytes in all"), "{cause}");
}

#[test]
fn a_heartbeat_timeout_is_caught_as_a_timeout() {
    let definition = r#"{"StartAt": "T", "States": {
        "T": {"Type": "Task", "Resource": "r", "HeartbeatSeconds": 5, "End": true,
              "Catch": [{"ErrorEquals": ["States.TaskFailed"], "ResultPath": "$.e", "Next": "AsFailure"},
                        {"ErrorEquals": ["States.Timeout"], "ResultPath": "$.e", "Next": "AsTimeout"}]},
        "AsFailure": {"Type": "Pass", "Result": "failure", "End": true},
        "AsTimeout": {"Type": "Pass", "Result": "timeout", "End": true}
    }}"#;
    let heartbeat_lost = |_: &TaskRequest| -> Answer {
        Some(Err((
            errors::HEARTBEAT_TIMEOUT.into(),
            "no heartbeat for 5 s".into(),
        )))
    };
    let mut sim = Sim::new(definition);
    let o = sim.run(json!({}), heartbeat_lost);
    assert_eq!(*succeeded(&o), json!("timeout"));
    // Histories of rules 1 replay as they ran: States.TaskFailed caught it.
    let mut sim = Sim::new(definition);
    sim.rules = 1;
    let o = sim.run(json!({}), heartbeat_lost);
    assert_eq!(*succeeded(&o), json!("failure"));
    // A Retry on States.Timeout retries it.
    let mut sim = Sim::new(
        r#"{"StartAt": "T", "States": {
            "T": {"Type": "Task", "Resource": "r", "HeartbeatSeconds": 5, "End": true,
                  "Retry": [{"ErrorEquals": ["States.Timeout"], "IntervalSeconds": 1, "MaxAttempts": 1}]}
        }}"#,
    );
    let mut calls = 0;
    let o = sim.run(json!({}), |t| {
        calls += 1;
        if t.attempt == 0 {
            heartbeat_lost(t)
        } else {
            Some(Ok(json!("done")))
        }
    });
    assert_eq!(*succeeded(&o), json!("done"));
    assert_eq!(calls, 2);
}

#[test]
fn a_variable_grown_at_every_turn_stops_at_the_nesting_limit() {
    // ASL has no append: wrapping a variable in an array at every turn
    // nests it one level deeper each time.
    let mut sim = Sim::new(
        r#"{"StartAt": "Init", "States": {
            "Init": {"Type": "Pass", "Assign": {"acc": []}, "Next": "Loop"},
            "Loop": {"Type": "Pass", "Assign": {"acc.$": "States.Array($acc)"}, "Next": "Check"},
            "Check": {"Type": "Choice", "Choices": [{"Variable": "$.stop", "BooleanEquals": true, "Next": "Done"}], "Default": "Loop"},
            "Done": {"Type": "Succeed"}
        }}"#,
    );
    let o = sim.run(json!({"stop": false}), |_| None);
    let (error, cause) = failed(&o);
    assert_eq!(error, "States.DataLimitExceeded");
    assert!(
        cause.contains("'acc'") && cause.contains("100 levels"),
        "{cause}"
    );
    // It stopped there, long before the transition limit.
    let entered = sim
        .log
        .iter()
        .filter(|c| matches!(c, Command::Record(Record::StateEntered { .. })))
        .count();
    assert!(entered < 220, "{entered} states entered");
}

#[test]
fn a_variable_over_the_payload_limit_fails_its_state_and_can_be_caught() {
    let options = Options {
        max_payload_bytes: 100,
        ..Options::default()
    };
    // Three copies of a 40-byte string: over 100 bytes.
    let mut sim = Sim::with_options(
        r#"{"StartAt": "P", "States": {
            "P": {"Type": "Pass", "Assign": {"big.$": "States.Array($.s, $.s, $.s)"}, "End": true}
        }}"#,
        options.clone(),
    );
    let o = sim.run(json!({"s": "y".repeat(40)}), |_| None);
    let (error, cause) = failed(&o);
    assert_eq!(error, "States.DataLimitExceeded");
    assert!(cause.contains("'big'"), "{cause}");
    // On a Task, a Catch naming the error takes it.
    let mut sim = Sim::with_options(
        r#"{"StartAt": "T", "States": {
            "T": {"Type": "Task", "Resource": "r", "Assign": {"big.$": "States.Array($.s, $.s, $.s)"}, "End": true,
                  "Catch": [{"ErrorEquals": ["States.DataLimitExceeded"], "ResultPath": null, "Next": "C"}]},
            "C": {"Type": "Pass", "Result": "caught", "End": true}
        }}"#,
        options,
    );
    let o = sim.run(json!({}), |_| Some(Ok(json!({"s": "z".repeat(40)}))));
    assert_eq!(*succeeded(&o), json!("caught"));
}

#[test]
fn data_limit_exceeded_is_not_caught_by_states_all() {
    let options = Options {
        max_payload_bytes: 100,
        ..Options::default()
    };
    let mut sim = Sim::with_options(
        r#"{"StartAt": "T", "States": {
            "T": {"Type": "Task", "Resource": "r", "Catch": [{"ErrorEquals": ["States.ALL"], "Next": "C"}], "End": true},
            "C": {"Type": "Succeed"}
        }}"#,
        options,
    );
    let o = sim.run(json!({}), |_| ok(json!("x".repeat(200))));
    assert_eq!(failed(&o).0, "States.DataLimitExceeded");
}

#[test]
fn duplicate_and_unknown_events_are_ignored() {
    let mut sim = Sim::new(
        r#"{"StartAt": "T", "States": {"T": {"Type": "Task", "Resource": "r", "Next": "U"}, "U": {"Type": "Task", "Resource": "u", "End": true}}}"#,
    );
    sim.apply(Event::ExecutionStarted {
        info: info(),
        input: json!({}),
    });
    sim.apply(Event::TaskSucceeded {
        task_id: "T@0#0".into(),
        output: json!(1),
    });
    let n = sim.log.len();
    sim.apply(Event::TaskSucceeded {
        task_id: "T@0#0".into(),
        output: json!(2),
    });
    sim.apply(Event::TaskFailed {
        task_id: "nope".into(),
        error: "E".into(),
        cause: "".into(),
    });
    sim.apply(Event::TimerFired {
        timer_id: "nope".into(),
    });
    assert_eq!(sim.log.len(), n);
    let mut out = Vec::new();
    assert_eq!(
        sim.exec.apply(
            t0(),
            Event::ExecutionStarted {
                info: info(),
                input: json!({})
            },
            &mut out
        ),
        Err(ApplyError::AlreadyStarted)
    );
}

#[test]
fn events_before_start_are_rejected() {
    let machine =
        parse_definition(r#"{"StartAt": "A", "States": {"A": {"Type": "Succeed"}}}"#).unwrap();
    let mut exec = Execution::new(Arc::new(machine), Options::default());
    let mut out = Vec::new();
    assert!(matches!(
        exec.apply(
            t0(),
            Event::TimerFired {
                timer_id: "x".into()
            },
            &mut out
        ),
        Err(ApplyError::NotStarted("TimerFired"))
    ));
}

#[test]
fn context_object_fields() {
    let mut sim = Sim::new(
        r#"{"StartAt": "T", "States": {
            "T": {"Type": "Task", "Resource": "r",
                  "Parameters": {"ctx.$": "$$"},
                  "Retry": [{"ErrorEquals": ["E"], "MaxAttempts": 1}], "End": true}
        }}"#,
    );
    let mut ctxs = Vec::new();
    sim.run(json!({"in": 1}), |t| {
        ctxs.push(t.input["ctx"].clone());
        if ctxs.len() == 1 {
            err("E", "")
        } else {
            ok(json!(0))
        }
    });
    assert_eq!(ctxs[0]["Execution"]["Name"], json!("exec-1"));
    assert_eq!(ctxs[0]["Execution"]["Input"], json!({"in": 1}));
    assert_eq!(
        ctxs[0]["Execution"]["StartTime"],
        json!("2024-01-01T00:00:00.000Z")
    );
    assert_eq!(ctxs[0]["StateMachine"]["Name"], json!("test"));
    assert_eq!(ctxs[0]["State"]["Name"], json!("T"));
    assert_eq!(ctxs[0]["State"]["RetryCount"], json!(0));
    assert_eq!(ctxs[1]["State"]["RetryCount"], json!(1));
}

// ------------------------------------------------------------- properties

const SAGA: &str = r#"{"StartAt": "P", "States": {
    "P": {"Type": "Parallel", "Next": "M",
          "Retry": [{"ErrorEquals": ["Retryable"], "MaxAttempts": 2, "JitterStrategy": "FULL"}],
          "Catch": [{"ErrorEquals": ["States.ALL"], "ResultPath": "$.error", "Next": "Undo"}],
          "Branches": [
            {"StartAt": "A", "States": {"A": {"Type": "Task", "Resource": "a", "TimeoutSeconds": 3, "End": true}}},
            {"StartAt": "B", "States": {"B": {"Type": "Task", "Resource": "b", "End": true}}}
          ], "ResultPath": "$.p"},
    "M": {"Type": "Map", "ItemsPath": "$.items", "MaxConcurrency": 2, "ResultPath": "$.m", "Next": "W",
          "ItemProcessor": {"StartAt": "C", "States": {"C": {"Type": "Task", "Resource": "c", "End": true,
              "Retry": [{"ErrorEquals": ["States.ALL"], "MaxAttempts": 1}]}}}},
    "W": {"Type": "Wait", "Seconds": 1, "End": true},
    "Undo": {"Type": "Task", "Resource": "undo", "End": true}
}}"#;

fn script_answer(script: &[u8], n: &mut usize) -> Answer {
    let pick = script.get(*n).copied().unwrap_or(0);
    *n += 1;
    match pick % 5 {
        0 | 1 => ok(json!({"n": *n})),
        2 => err("Retryable", "r"),
        3 => err("Fatal", "f"),
        _ => None,
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(64))]

    /// Same definition + same events = same commands.
    #[test]
    fn replay_is_deterministic(script in proptest::collection::vec(any::<u8>(), 0..40)) {
        let run = || {
            let mut sim = Sim::new(SAGA);
            let mut n = 0;
            let outcome = sim.try_run(json!({"items": [1, 2, 3]}), |_| script_answer(&script, &mut n));
            (outcome, sim.log)
        };
        let (o1, log1) = run();
        let (o2, log2) = run();
        prop_assert_eq!(o1, o2);
        prop_assert_eq!(log1, log2);
    }

    /// Arbitrary events (real ids mixed with garbage) never panic and never
    /// produce commands after completion.
    #[test]
    fn arbitrary_events_never_panic(ops in proptest::collection::vec((0u8..6, 0usize..8, any::<bool>()), 0..60)) {
        let mut sim = Sim::new(SAGA);
        sim.apply(Event::ExecutionStarted { info: info(), input: json!({"items": [1, 2]}) });
        for (kind, pick, flag) in ops {
            let task = sim.tasks.get(pick % sim.tasks.len().max(1)).map(|t| t.task_id.to_string()).unwrap_or_else(|| "ghost".into());
            let timer = sim.timers.values().nth(pick % sim.timers.len().max(1)).cloned().unwrap_or_else(|| "ghost".into());
            let event = match kind {
                0 => Event::TaskSucceeded { task_id: task, output: json!({"x": pick}) },
                1 => Event::TaskFailed { task_id: task, error: if flag { "Retryable".into() } else { "Fatal".into() }, cause: String::new() },
                2 => Event::TimerFired { timer_id: timer },
                3 => Event::TaskSucceeded { task_id: format!("junk{pick}"), output: Value::Null },
                4 => Event::TimerFired { timer_id: format!("junk{pick}") },
                _ => Event::StopRequested { error: None, cause: None },
            };
            let done_before = sim.exec.outcome().is_some();
            let mut out = Vec::new();
            sim.exec.apply(sim.now, event, &mut out).unwrap();
            if done_before {
                prop_assert!(out.is_empty());
            }
            for c in &out {
                match c {
                    Command::ScheduleTask(t) => sim.tasks.push(t.clone()),
                    Command::CancelTask { task_id } => sim.tasks.retain(|t| *t.task_id != **task_id),
                    Command::StartTimer { timer_id, fire_at, .. } => { sim.seq += 1; sim.timers.insert((*fire_at, sim.seq), timer_id.clone()); }
                    Command::CancelTimer { timer_id } => sim.timers.retain(|_, id| id != timer_id),
                    _ => {}
                }
            }
            let completes = out.iter().filter(|c| matches!(c, Command::Complete(_))).count();
            prop_assert!(completes <= 1);
            if completes == 1 {
                prop_assert!(matches!(out.last(), Some(Command::Complete(_))), "Complete is the last command");
            }
        }
    }
}

/// A definition that reads its input through every kind of path: Choice
/// variables, ItemsPath, SecondsPath, TimestampPath, intrinsics, templates,
/// ResultPath writes, Fail paths.
const INPUT_HUNGRY: &str = r#"{"StartAt": "C", "States": {
    "C": {"Type": "Choice", "Choices": [
        {"And": [{"Variable": "$.a", "IsPresent": true}, {"Variable": "$.a", "IsNumeric": true},
                 {"Variable": "$.a", "NumericGreaterThanPath": "$.b"}], "Next": "M"},
        {"Variable": "$.s", "StringMatches": "x*", "Next": "W"},
        {"Variable": "$.t", "TimestampLessThan": "2030-01-01T00:00:00Z", "Next": "F"}
      ], "Default": "P"},
    "M": {"Type": "Map", "ItemsPath": "$.items", "MaxConcurrencyPath": "$.n",
          "ItemSelector": {"v.$": "$$.Map.Item.Value", "f.$": "States.Format('{}-{}', $.a, $$.Map.Item.Index)"},
          "ItemProcessor": {"StartAt": "I", "States": {"I": {"Type": "Pass", "Parameters": {
              "h.$": "States.Hash(States.JsonToString($.v), 'SHA-256')",
              "l.$": "States.ArrayLength(States.Array($.v, $.f))"}, "End": true}}},
          "ResultPath": "$.out.items", "Next": "P"},
    "W": {"Type": "Wait", "SecondsPath": "$.a", "Next": "W2"},
    "W2": {"Type": "Wait", "TimestampPath": "$.t", "Next": "P"},
    "F": {"Type": "Fail", "ErrorPath": "$.s", "CausePath": "States.Format('{}', $.t)"},
    "P": {"Type": "Pass", "InputPath": "$.x", "Parameters": {"y.$": "States.StringSplit($.s, ',')",
          "z.$": "States.MathAdd($.a, $.b)", "k.$": "States.JsonMerge($.o, $.p, false)"},
          "ResultPath": "$.r.q", "OutputPath": "$.r", "End": true}
}}"#;

fn arb_json() -> impl Strategy<Value = Value> {
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::Bool),
        any::<i64>().prop_map(Value::from),
        any::<f64>()
            .prop_filter("finite", |f| f.is_finite())
            .prop_map(Value::from),
        "[a-z,x*0-9:T.Z-]{0,24}".prop_map(Value::String),
        Just(json!("2024-05-01T10:00:00Z")),
    ];
    leaf.prop_recursive(4, 64, 8, |inner| {
        prop_oneof![
            proptest::collection::vec(inner.clone(), 0..6).prop_map(Value::Array),
            proptest::collection::btree_map(
                prop_oneof![
                    Just("a".to_string()),
                    Just("b".to_string()),
                    Just("s".to_string()),
                    Just("t".to_string()),
                    Just("n".to_string()),
                    Just("x".to_string()),
                    Just("o".to_string()),
                    Just("p".to_string()),
                    Just("items".to_string()),
                    "[a-z]{1,3}"
                ],
                inner,
                0..8
            )
            .prop_map(|m| Value::Object(m.into_iter().collect())),
        ]
    })
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    /// Whatever the execution input, the interpreter completes or waits,
    /// and never panics.
    #[test]
    fn arbitrary_inputs_never_panic(input in arb_json()) {
        let mut sim = Sim::new(INPUT_HUNGRY);
        let outcome = sim.try_run(input, |_| None);
        prop_assert!(outcome.is_some(), "no tasks here: every run completes");
    }
}

#[test]
fn commands_and_events_round_trip_through_json() {
    let mut sim = Sim::new(SAGA);
    let mut n = 0;
    let script = [0u8, 2, 0, 3, 0, 0, 0];
    sim.try_run(json!({"items": [1, 2]}), |_| script_answer(&script, &mut n));
    assert!(sim.log.len() > 10);
    for command in &sim.log {
        let text = serde_json::to_string(command).unwrap();
        let back: Command = serde_json::from_str(&text).unwrap_or_else(|e| panic!("{text}: {e}"));
        assert_eq!(&back, command);
    }
    let event = Event::TaskFailed {
        task_id: "T@0#0".into(),
        error: "E".into(),
        cause: "C".into(),
    };
    let back: Event = serde_json::from_str(&serde_json::to_string(&event).unwrap()).unwrap();
    assert_eq!(back, event);
}

#[test]
fn redrive_restarts_the_failed_state_with_its_input() {
    let mut sim = Sim::new(
        r#"{"StartAt": "A", "States": {
            "A": {"Type": "Pass", "Result": 1, "ResultPath": "$.a", "Assign": {"v": "kept"}, "Next": "T"},
            "T": {"Type": "Task", "Resource": "r", "Parameters": {"n.$": "$$.Execution.RedriveCount", "v.$": "$v"},
                  "Retry": [{"ErrorEquals": ["E"], "MaxAttempts": 1}], "End": true}
        }}"#,
    );
    assert!(!sim.exec.redrivable(), "not started");
    let o = sim.run(json!({"x": 1}), |_| err("E", "down"));
    assert_eq!(failed(&o).0, "E");
    assert!(sim.exec.redrivable());
    // Succeeded or running executions are not redriven.
    sim.apply(Event::RedriveRequested);
    assert!(!sim.exec.redrivable(), "running again");
    let before = sim.log.len();
    sim.apply(Event::RedriveRequested); // (already running again: ignored)
    let tasks: Vec<TaskRequest> = sim
        .log
        .iter()
        .filter_map(|c| match c {
            Command::ScheduleTask(t) => Some(t.clone()),
            _ => None,
        })
        .collect();
    assert_eq!(
        sim.log.len(),
        before,
        "a second redrive while running does nothing"
    );
    let last = tasks.last().unwrap();
    assert_eq!(
        &*last.task_id, "T@2#0",
        "a new visit: retry counters reset, ids stay unique"
    );
    assert_eq!(*last.input, json!({"n": 1, "v": "kept"}));
    assert!(
        sim.log
            .iter()
            .any(|c| matches!(c, Command::Record(Record::Redriven { count: 1, .. })))
    );
    sim.apply(Event::TaskSucceeded {
        task_id: last.task_id.to_string(),
        output: json!("ok"),
    });
    assert_eq!(succeeded(sim.exec.outcome().unwrap()), &json!("ok"));
    assert!(!sim.exec.redrivable(), "succeeded");
    let n = sim.log.len();
    sim.apply(Event::RedriveRequested);
    assert_eq!(sim.log.len(), n, "a succeeded execution is not redriven");
}

/// Answers the tasks a redrive scheduled (those still in `sim.tasks`) with
/// `answer`, until the execution ends; returns the ids of the tasks run.
fn run_redrive(sim: &mut Sim, mut answer: impl FnMut(&TaskRequest) -> Answer) -> Vec<String> {
    let mut ran = Vec::new();
    while sim.exec.outcome().is_none() {
        let task = sim.tasks.remove(0);
        ran.push(task.task_id.to_string());
        match answer(&task) {
            Some(Ok(output)) => sim.apply(Event::TaskSucceeded {
                task_id: task.task_id.to_string(),
                output,
            }),
            Some(Err((error, cause))) => sim.apply(Event::TaskFailed {
                task_id: task.task_id.to_string(),
                error,
                cause,
            }),
            None => panic!("every task is answered"),
        }
    }
    ran
}

#[test]
fn a_redriven_parallel_runs_only_the_branches_that_did_not_succeed() {
    let mut sim = Sim::new(
        r#"{"StartAt": "P", "States": {"P": {"Type": "Parallel", "End": true, "Branches": [
            {"StartAt": "A", "States": {"A": {"Type": "Task", "Resource": "a", "End": true}}},
            {"StartAt": "B", "States": {"B": {"Type": "Task", "Resource": "b", "End": true}}},
            {"StartAt": "C", "States": {"C": {"Type": "Task", "Resource": "c", "End": true}}}
        ]}}}"#,
    );
    // A succeeds, B fails, which cancels C.
    let o = sim.run(json!({}), |t| match &*t.resource {
        "a" => ok(json!("a1")),
        "b" => err("Down", "b is down"),
        _ => None,
    });
    assert_eq!(failed(&o).0, "Down");
    assert!(sim.exec.redrivable());
    sim.tasks.clear();
    sim.apply(Event::RedriveRequested);
    let ran = run_redrive(&mut sim, |t| ok(json!(format!("{}2", t.resource))));
    // B and C run again, with new ids; A does not, and keeps its result.
    assert_eq!(ran, vec!["P@1#0[1]/B@0#0", "P@1#0[2]/C@0#0"]);
    assert_eq!(
        succeeded(sim.exec.outcome().unwrap()),
        &json!(["a1", "b2", "c2"])
    );
}

#[test]
fn a_redriven_map_runs_only_the_iterations_that_did_not_succeed() {
    let mut sim = Sim::new(
        r#"{"StartAt": "M", "States": {"M": {"Type": "Map", "MaxConcurrency": 1, "End": true,
            "ItemProcessor": {"StartAt": "T", "States": {"T": {"Type": "Task", "Resource": "t", "End": true}}}}}}"#,
    );
    // Items 0 and 1 succeed, item 2 fails; item 3 never started.
    let o = sim.run(json!([0, 1, 2, 3]), |t| match t.input.as_u64() {
        Some(2) => err("Bad", "item 2"),
        Some(n) => ok(json!(n * 10)),
        None => None,
    });
    assert_eq!(failed(&o).0, "Bad");
    sim.tasks.clear();
    sim.apply(Event::RedriveRequested);
    let ran = run_redrive(&mut sim, |t| ok(json!(t.input.as_u64().unwrap() * 100)));
    assert_eq!(ran, vec!["M@1#0[2]/T@0#0", "M@1#0[3]/T@0#0"]);
    assert_eq!(
        succeeded(sim.exec.outcome().unwrap()),
        &json!([0, 10, 200, 300])
    );
}

#[test]
fn a_stopped_parallel_keeps_its_finished_branches_for_a_redrive() {
    let mut sim = Sim::new(
        r#"{"StartAt": "P", "States": {"P": {"Type": "Parallel", "End": true, "Branches": [
            {"StartAt": "A", "States": {"A": {"Type": "Task", "Resource": "a", "End": true}}},
            {"StartAt": "B", "States": {"B": {"Type": "Task", "Resource": "b", "End": true}}}
        ]}}}"#,
    );
    let o = sim.try_run(json!({}), |t| match &*t.resource {
        "a" => ok(json!("a1")),
        _ => None,
    });
    assert!(o.is_none(), "B waits");
    sim.apply(Event::StopRequested {
        error: None,
        cause: None,
    });
    sim.tasks.clear();
    sim.apply(Event::RedriveRequested);
    let ran = run_redrive(&mut sim, |_| ok(json!("b2")));
    assert_eq!(ran, vec!["P@1#0[1]/B@0#0"]);
    assert_eq!(succeeded(sim.exec.outcome().unwrap()), &json!(["a1", "b2"]));
}

#[test]
fn a_parallel_retried_after_a_failure_runs_every_branch_again() {
    // Retry (not redrive) runs the whole state again, as on AWS; a later
    // redrive keeps only what the last attempt finished.
    let mut sim = Sim::new(
        r#"{"StartAt": "P", "States": {"P": {"Type": "Parallel", "End": true,
            "Retry": [{"ErrorEquals": ["Down"], "MaxAttempts": 1, "IntervalSeconds": 1}],
            "Branches": [
            {"StartAt": "A", "States": {"A": {"Type": "Task", "Resource": "a", "End": true}}},
            {"StartAt": "B", "States": {"B": {"Type": "Task", "Resource": "b", "End": true}}}
        ]}}}"#,
    );
    let mut a_calls = 0;
    let o = sim.run(json!({}), |t| match &*t.resource {
        "a" => {
            a_calls += 1;
            ok(json!(format!("a{a_calls}")))
        }
        _ => err("Down", "b is down"),
    });
    assert_eq!(failed(&o).0, "Down");
    assert_eq!(a_calls, 2, "the retry ran A again");
    sim.tasks.clear();
    sim.apply(Event::RedriveRequested);
    let ran = run_redrive(&mut sim, |_| ok(json!("b3")));
    assert_eq!(ran, vec!["P@1#0[1]/B@0#0"]);
    assert_eq!(succeeded(sim.exec.outcome().unwrap()), &json!(["a2", "b3"]));
}

#[test]
fn a_stopped_execution_can_be_redriven() {
    let mut sim = Sim::new(
        r#"{"StartAt": "W", "States": {"W": {"Type": "Wait", "Seconds": 10, "End": true}}}"#,
    );
    sim.apply(Event::ExecutionStarted {
        info: info(),
        input: json!({"k": 1}),
    });
    sim.apply(Event::StopRequested {
        error: None,
        cause: None,
    });
    assert!(matches!(sim.exec.outcome(), Some(Outcome::Aborted { .. })));
    assert!(sim.exec.redrivable());
    sim.apply(Event::RedriveRequested);
    assert!(sim.exec.outcome().is_none());
    let o = sim.try_run_more();
    assert_eq!(succeeded(&o), &json!({"k": 1}));
}

#[test]
fn a_branch_that_fails_at_once_beside_one_that_ends_at_once_fails_the_parallel() {
    // Both branches end in the first round: the failure aborts the Parallel
    // while the other branch's end is still queued.
    let def = r#"{"StartAt": "P", "States": {"P": {"Type": "Parallel", "End": true, "Branches": [
        {"StartAt": "F", "States": {"F": {"Type": "Fail", "Error": "NoStock", "Cause": "none left"}}},
        {"StartAt": "S", "States": {"S": {"Type": "Pass", "End": true}}}
    ]}}}"#;
    let mut sim = Sim::new(def);
    let o = sim.run(json!({}), |_| None);
    assert_eq!(failed(&o), ("NoStock", "none left"));

    // The same in a Map, and with a Catch that goes on to another Parallel
    // (which reuses the aborted branches' slots).
    let def = r#"{"StartAt": "M", "States": {
        "M": {"Type": "Map", "ItemsPath": "$.items", "Next": "Done",
              "Catch": [{"ErrorEquals": ["States.ALL"], "ResultPath": "$.error", "Next": "Again"}],
              "ItemProcessor": {"StartAt": "C", "States": {
                "C": {"Type": "Choice", "Choices": [{"Variable": "$", "StringEquals": "bad", "Next": "F"}],
                      "Default": "S"},
                "F": {"Type": "Fail", "Error": "Bad"},
                "S": {"Type": "Pass", "End": true}}}},
        "Again": {"Type": "Parallel", "Next": "Done", "Branches": [
            {"StartAt": "A", "States": {"A": {"Type": "Task", "Resource": "a", "End": true}}},
            {"StartAt": "B", "States": {"B": {"Type": "Pass", "Result": "b", "End": true}}}]},
        "Done": {"Type": "Succeed"}
    }}"#;
    let mut sim = Sim::new(def);
    let o = sim.run(json!({"items": ["bad", "good", "good"]}), |t| {
        ok(json!(format!("{}-done", t.resource)))
    });
    assert_eq!(succeeded(&o), &json!(["a-done", "b"]));
}

#[test]
fn a_second_redrive_after_a_stop_or_a_timeout_restarts_from_the_state_that_failed() {
    let def = r#"{"StartAt": "A", "TimeoutSeconds": 60, "States": {
        "A": {"Type": "Task", "Resource": "a", "Next": "B"},
        "B": {"Type": "Task", "Resource": "b", "End": true}}}"#;
    for timed_out in [false, true] {
        let mut sim = Sim::new(def);
        sim.apply(Event::ExecutionStarted {
            info: info(),
            input: json!({}),
        });
        if timed_out {
            let o = sim.try_run_more();
            assert!(matches!(o, Outcome::TimedOut { .. }), "{o:?}");
        } else {
            sim.apply(Event::StopRequested {
                error: None,
                cause: None,
            });
        }
        sim.tasks.clear();
        sim.timers.clear();
        sim.apply(Event::RedriveRequested);
        let ran = run_redrive(&mut sim, |t| match &*t.resource {
            "a" => ok(json!("a")),
            _ => err("B.Down", "b is down"),
        });
        assert_eq!(ran.len(), 2, "{ran:?}");
        sim.tasks.clear();
        sim.timers.clear();
        sim.apply(Event::RedriveRequested);
        // B failed: the second redrive runs B, not A again.
        let ran = run_redrive(&mut sim, |_| ok(json!("b")));
        assert_eq!(ran.len(), 1, "timed out: {timed_out}, ran {ran:?}");
        assert!(ran[0].contains("B@"), "timed out: {timed_out}, ran {ran:?}");
        assert_eq!(succeeded(sim.exec.outcome().unwrap()), &json!("b"));
    }
}

#[test]
fn a_state_whose_output_fails_is_retried_caught_and_redriven_with_its_input() {
    // The merged output is over the size limit: the retry runs on the
    // state's input, and the catcher merges the error into that input.
    let def = r#"{"StartAt": "T", "States": {
        "T": {"Type": "Task", "Resource": "r", "ResultPath": "$.r",
              "Retry": [{"ErrorEquals": ["States.DataLimitExceeded"], "MaxAttempts": 1, "IntervalSeconds": 1}],
              "Catch": [{"ErrorEquals": ["States.DataLimitExceeded"], "ResultPath": "$.error", "Next": "Done"}],
              "End": true},
        "Done": {"Type": "Pass", "End": true}}}"#;
    let options = Options {
        max_payload_bytes: 1000,
        ..Options::default()
    };
    let mut sim = Sim::with_options(def, options.clone());
    let mut inputs = Vec::new();
    let o = sim.run(json!({"order": 7}), |t| {
        inputs.push(Value::clone(&t.input));
        ok(json!("x".repeat(990)))
    });
    assert_eq!(inputs, vec![json!({"order": 7}), json!({"order": 7})]);
    let output = succeeded(&o);
    assert_eq!(output["order"], json!(7), "{output}");
    assert_eq!(output["error"]["Error"], json!("States.DataLimitExceeded"));

    // An uncaught output failure (OutputPath finds nothing): a redrive runs
    // the task again on its input.
    let def = r#"{"StartAt": "T", "States": {
        "T": {"Type": "Task", "Resource": "r", "ResultPath": "$.r", "OutputPath": "$.r.missing",
              "End": true}}}"#;
    let mut sim = Sim::new(def);
    let o = sim.run(json!({"order": 8}), |_| ok(json!({})));
    assert_eq!(failed(&o).0, "States.Runtime");
    sim.tasks.clear();
    sim.apply(Event::RedriveRequested);
    assert_eq!(sim.tasks.len(), 1);
    assert_eq!(*sim.tasks[0].input, json!({"order": 8}));
}

#[test]
fn task_tokens_are_keyed_by_the_seed_not_drawn_from_the_random_stream() {
    use crate::rand::Secrets;
    use base64::Engine as _;
    let def = r#"{"StartAt": "U", "States": {
        "U": {"Type": "Pass", "Parameters": {"n.$": "States.MathRandom(0, 1000000000)"}, "Next": "A"},
        "A": {"Type": "Task", "Resource": "arn:aws:states:::lambda:invoke.waitForTaskToken",
              "Parameters": {"FunctionName": "notify", "Payload": {"t.$": "$$.Task.Token"}}, "Next": "B"},
        "B": {"Type": "Task", "Resource": "arn:aws:states:::lambda:invoke.waitForTaskToken",
              "Parameters": {"FunctionName": "approve", "Payload": {"t.$": "$$.Task.Token"}}, "End": true}}}"#;
    let mut sim = Sim::new(def);
    let mut tokens = Vec::new();
    let mut inputs = Vec::new();
    sim.run(json!({}), |t| {
        tokens.push(t.task_token.clone().expect("a token"));
        inputs.push(Value::clone(&t.input));
        ok(json!({}))
    });
    assert_eq!(tokens.len(), 2);
    let info = info();
    for (token, task_id) in tokens.iter().zip(["A@1#0", "B@2#0"]) {
        let raw = base64::engine::general_purpose::URL_SAFE_NO_PAD
            .decode(token.as_bytes())
            .unwrap();
        let expected = format!(
            "{}\n{task_id}\n{}",
            info.execution_id,
            Secrets::new(info.seed).token_nonce(&info.execution_id, task_id)
        );
        assert_eq!(String::from_utf8(raw).unwrap(), expected);
    }
    assert_ne!(inputs[0]["Payload"]["t"], json!(null));
}

#[test]
fn a_selection_larger_than_its_input_is_held_to_the_size_limit() {
    let options = Options {
        max_payload_bytes: 1000,
        ..Options::default()
    };
    let input = json!(["x".repeat(300)]);
    // A union selects the same node four times.
    let def = r#"{"StartAt": "P", "States": {"P": {"Type": "Pass", "OutputPath": "$[0,0,0,0]", "End": true}}}"#;
    let mut sim = Sim::with_options(def, options.clone());
    let o = sim.run(input.clone(), |_| None);
    assert_eq!(failed(&o).0, "States.DataLimitExceeded");
    // The same through InputPath into a task's input.
    let def = r#"{"StartAt": "T", "States": {"T": {"Type": "Task", "Resource": "r", "InputPath": "$[*,*,*,*]", "End": true}}}"#;
    let mut sim = Sim::with_options(def, options.clone());
    let o = sim.run(input.clone(), |_| ok(json!(1)));
    assert_eq!(failed(&o).0, "States.DataLimitExceeded");
    // Within the limit, a union is fine.
    let def = r#"{"StartAt": "P", "States": {"P": {"Type": "Pass", "OutputPath": "$[0,0]", "End": true}}}"#;
    let mut sim = Sim::with_options(def, options);
    let o = sim.run(input, |_| None);
    assert_eq!(succeeded(&o).as_array().map(Vec::len), Some(2));
}

#[test]
fn an_inline_map_runs_at_most_40_iterations_at_once() {
    let def = |mode: &str, max: &str| {
        format!(
            r#"{{"StartAt": "M", "States": {{"M": {{"Type": "Map", {max}
                "ItemProcessor": {{"ProcessorConfig": {{"Mode": "{mode}"}},
                  "StartAt": "T", "States": {{"T": {{"Type": "Task", "Resource": "t", "End": true}}}}}},
                "End": true}}}}}}"#
        )
    };
    let items = json!((0..100).collect::<Vec<_>>());
    for (mode, max, at_once) in [
        ("INLINE", "", 40),
        ("INLINE", r#""MaxConcurrency": 500,"#, 40),
        ("INLINE", r#""MaxConcurrency": 7,"#, 7),
        ("DISTRIBUTED", "", 100),
        ("DISTRIBUTED", r#""MaxConcurrency": 60,"#, 60),
    ] {
        let mut sim = Sim::new(&def(mode, max));
        sim.apply(Event::ExecutionStarted {
            info: info(),
            input: items.clone(),
        });
        assert_eq!(sim.tasks.len(), at_once, "{mode} {max}");
        let ran = run_redrive(&mut sim, |t| ok(Value::clone(&t.input)));
        assert_eq!(ran.len(), 100);
        assert_eq!(
            succeeded(sim.exec.outcome().unwrap()),
            &items,
            "{mode} {max}"
        );
    }
}

#[test]
fn a_value_nested_deeper_than_the_limit_fails_the_state_that_made_it() {
    // Each round nests the input one level deeper under `p`.
    let def = r#"{"StartAt": "Grow", "States": {
        "Grow": {"Type": "Pass", "ResultPath": "$.p", "Next": "Check"},
        "Check": {"Type": "Choice", "Choices": [{"Variable": "$.stop", "IsPresent": true, "Next": "Done"}],
                  "Default": "Grow"},
        "Done": {"Type": "Succeed"}}}"#;
    let mut sim = Sim::new(def);
    let o = sim.run(json!({"x": 1}), |_| None);
    let (error, cause) = failed(&o);
    assert_eq!(error, "States.DataLimitExceeded");
    assert!(
        cause.contains("nested more than 100 levels deep"),
        "{cause}"
    );
    let grown = sim.entered().iter().filter(|s| *s == "Grow").count();
    assert!((95..=105).contains(&grown), "{grown}");

    // A task result from an embedded handler is held to it too.
    let mut deep = json!(1);
    for _ in 0..150 {
        deep = json!([deep]);
    }
    let def =
        r#"{"StartAt": "T", "States": {"T": {"Type": "Task", "Resource": "r", "End": true}}}"#;
    let mut sim = Sim::new(def);
    let o = sim.run(json!({}), |_| ok(deep.clone()));
    let (error, cause) = failed(&o);
    assert_eq!(error, "States.DataLimitExceeded");
    assert!(
        cause.contains("returned a result nested more than"),
        "{cause}"
    );
}

#[test]
fn a_history_is_replayed_under_the_rules_it_was_written_with() {
    use crate::rand::{RandomSource, SplitMix64};
    use base64::Engine as _;
    // A history from before rules 1: its ExecutionStarted has no `rules`.
    let started: Event = serde_json::from_value(json!({
        "type": "ExecutionStarted",
        "info": {"executionId": "e", "executionName": "e", "stateMachineId": "m",
                 "stateMachineName": "m", "seed": 9},
        "input": {"items": (0..50).collect::<Vec<_>>()}
    }))
    .unwrap();
    let Event::ExecutionStarted { info, .. } = &started else {
        unreachable!()
    };
    assert_eq!(info.rules, 0);
    let def = r#"{"StartAt": "A", "States": {
        "A": {"Type": "Task", "Resource": "arn:aws:states:::lambda:invoke.waitForTaskToken",
              "Parameters": {"FunctionName": "f", "Payload": {"t.$": "$$.Task.Token"}}, "Next": "M"},
        "M": {"Type": "Map", "ItemsPath": "$.items", "End": true,
              "ItemProcessor": {"StartAt": "T", "States": {"T": {"Type": "Task", "Resource": "t", "End": true}}}}}}"#;
    let mut sim = Sim::new(def);
    sim.apply(started);
    // The token's nonce was drawn from the stream, which starts at the seed.
    let token = sim.tasks[0].task_token.clone().unwrap();
    let raw = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(token.as_bytes())
        .unwrap();
    let mut stream = SplitMix64::new(9);
    let nonce = format!("{:016x}{:016x}", stream.next_u64(), stream.next_u64());
    assert_eq!(
        String::from_utf8(raw).unwrap(),
        format!("e\nA@0#0\n{nonce}")
    );
    // And its inline Map had no limit of 40.
    let task = sim.tasks.remove(0);
    sim.apply(Event::TaskSucceeded {
        task_id: task.task_id.to_string(),
        output: json!({"items": (0..50).collect::<Vec<_>>()}),
    });
    assert_eq!(sim.tasks.len(), 50);
}
