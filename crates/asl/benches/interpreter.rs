//! Benchmark of the pure interpreter on the three-task travel-booking saga.
//!
//! Run: `cargo bench -p sagaflow-asl --bench interpreter`
//!
//! Prints criterion's figures per execution, then a summary: CPU time per
//! state transition and executions per second on one core, for the success
//! path (BookFlight, BookHotel, BookCar: 3 transitions) and the compensation
//! path (BookCar fails; CancelHotel, CancelFlight, then Fail: 6 transitions).

#[cfg(feature = "bench-mimalloc")]
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

use std::hint::black_box;
use std::sync::Arc;
use std::time::Instant;

use criterion::{BatchSize, Criterion, Throughput};
use sagaflow_asl::interp::{Command, Event, Execution, ExecutionInfo, Options, Outcome};
use sagaflow_asl::model::StateMachine;
use serde_json::{Value, json};

const SAGA: &str = r#"{
  "Comment": "Travel booking saga",
  "StartAt": "BookFlight",
  "States": {
    "BookFlight": {"Type": "Task", "Resource": "arn:aws:lambda:us-east-1:123456789012:function:BookFlight",
      "ResultPath": "$.flight", "Next": "BookHotel",
      "Catch": [{"ErrorEquals": ["States.ALL"], "ResultPath": "$.error", "Next": "BookingFailed"}]},
    "BookHotel": {"Type": "Task", "Resource": "arn:aws:lambda:us-east-1:123456789012:function:BookHotel",
      "ResultPath": "$.hotel", "Next": "BookCar",
      "Catch": [{"ErrorEquals": ["States.ALL"], "ResultPath": "$.error", "Next": "CancelFlight"}]},
    "BookCar": {"Type": "Task", "Resource": "arn:aws:lambda:us-east-1:123456789012:function:BookCar",
      "ResultPath": "$.car", "End": true,
      "Catch": [{"ErrorEquals": ["States.ALL"], "ResultPath": "$.error", "Next": "CancelHotel"}]},
    "CancelHotel": {"Type": "Task", "Resource": "arn:aws:lambda:us-east-1:123456789012:function:CancelHotel",
      "ResultPath": null, "Next": "CancelFlight",
      "Retry": [{"ErrorEquals": ["States.ALL"], "IntervalSeconds": 1, "MaxAttempts": 5, "BackoffRate": 2}]},
    "CancelFlight": {"Type": "Task", "Resource": "arn:aws:lambda:us-east-1:123456789012:function:CancelFlight",
      "ResultPath": null, "Next": "BookingFailed",
      "Retry": [{"ErrorEquals": ["States.ALL"], "IntervalSeconds": 1, "MaxAttempts": 5, "BackoffRate": 2}]},
    "BookingFailed": {"Type": "Fail", "Error": "BookingFailed", "Cause": "The trip was compensated"}
  }
}"#;

struct Fixture {
    machine: Arc<StateMachine>,
    input: Value,
    info: ExecutionInfo,
    now: jiff::Timestamp,
}

impl Fixture {
    fn new() -> Fixture {
        Fixture {
            machine: Arc::new(sagaflow_asl::parse::parse_definition(SAGA).expect("valid saga")),
            input: json!({"tripId": "T-1001", "customer": "ada", "from": "LHR", "to": "JFK", "nights": 3}),
            info: ExecutionInfo {
                execution_id: "arn:sagaflow:execution:travel:bench".into(),
                execution_name: "bench".into(),
                state_machine_id: "arn:sagaflow:stateMachine:travel".into(),
                state_machine_name: "travel".into(),
                role_arn: String::new(),
                seed: 1,
                rules: sagaflow_asl::interp::RULES,
            },
            now: "2024-01-01T00:00:00Z".parse().expect("timestamp"),
        }
    }

    /// The events of one execution, recorded from a reference run: the
    /// start, then one answer per scheduled task. `fail_car` makes BookCar
    /// fail, so that the saga compensates.
    fn script(&self, fail_car: bool) -> Vec<Event> {
        let mut exec = Execution::new(self.machine.clone(), Options::default());
        let mut events = vec![Event::ExecutionStarted {
            info: self.info.clone(),
            input: self.input.clone(),
        }];
        let mut out = Vec::new();
        exec.apply(self.now, events[0].clone(), &mut out)
            .expect("start");
        while let Some(task) = out.iter().find_map(|c| match c {
            Command::ScheduleTask(t) => Some(t.clone()),
            _ => None,
        }) {
            let event = if &*task.state_name == "BookCar" && fail_car {
                Event::TaskFailed {
                    task_id: task.task_id.to_string(),
                    error: "CarUnavailable".into(),
                    cause: "no cars left".into(),
                }
            } else {
                Event::TaskSucceeded {
                    task_id: task.task_id.to_string(),
                    output: json!({"confirmation": "C-1", "price": 120}),
                }
            };
            events.push(event.clone());
            out.clear();
            exec.apply(self.now, event, &mut out).expect("event");
        }
        assert_eq!(
            matches!(exec.outcome(), Some(Outcome::Failed { .. })),
            fail_car
        );
        events
    }

    /// Runs one execution from its events (the timed part); returns the
    /// number of states entered.
    fn run(&self, options: &Options, events: Vec<Event>, out: &mut Vec<Command>) -> usize {
        let mut exec = Execution::new(self.machine.clone(), options.clone());
        let mut transitions = 0;
        for event in events {
            out.clear();
            exec.apply(self.now, event, out).expect("event");
            transitions += count_entered(out);
        }
        out.clear();
        debug_assert!(exec.outcome().is_some());
        transitions
    }
}

fn count_entered(out: &[Command]) -> usize {
    out.iter()
        .filter(|c| {
            matches!(
                c,
                Command::Record(sagaflow_asl::interp::Record::StateEntered { .. })
            )
        })
        .count()
}

fn summary(fixture: &Fixture) {
    println!();
    let allocator = if cfg!(feature = "bench-mimalloc") {
        "mimalloc"
    } else {
        "system allocator"
    };
    println!(
        "== summary: pure interpreter, one thread, {allocator} (events built outside the timed part) =="
    );
    for (label, options) in [
        (
            "history records with payloads (default)",
            Options::default(),
        ),
        (
            "records without payloads",
            Options {
                record_payloads: false,
                ..Options::default()
            },
        ),
    ] {
        for (path, fail) in [("success", false), ("compensation", true)] {
            let script = fixture.script(fail);
            let mut out = Vec::new();
            let batch = 2_000;
            let rounds = 100;
            let mut elapsed = std::time::Duration::ZERO;
            let mut transitions = 0;
            for round in 0..rounds + 10 {
                let scripts: Vec<Vec<Event>> = (0..batch).map(|_| script.clone()).collect();
                let start = Instant::now();
                let mut n = 0;
                for events in scripts {
                    n += black_box(fixture.run(&options, events, &mut out));
                }
                // The first rounds warm up.
                if round >= 10 {
                    elapsed += start.elapsed();
                    transitions += n;
                }
            }
            let executions = batch * rounds;
            let per_exec = elapsed.as_secs_f64() / executions as f64;
            let per_transition = elapsed.as_secs_f64() / transitions as f64;
            println!(
                "{path:>12} path, {label}: {:.3} us per transition, {:.0} executions/s ({} transitions per execution)",
                per_transition * 1e6,
                1.0 / per_exec,
                transitions / executions
            );
        }
    }
}

/// A Map over `items` numbers whose ItemSelector reads `$$.Map.Item.Value`
/// (AWS's usual pattern), with a Pass processor: the time per item should
/// not grow with the number of items (the execution input, which holds
/// them all, is not copied for each one).
fn map_summary(fixture: &Fixture) {
    let definition = r#"{"StartAt": "M", "States": {"M": {"Type": "Map", "ItemsPath": "$.items",
        "ItemSelector": {"v.$": "$$.Map.Item.Value", "i.$": "$$.Map.Item.Index"},
        "ItemProcessor": {"StartAt": "P", "States": {"P": {"Type": "Pass", "End": true}}},
        "ResultPath": null, "End": true}}}"#;
    let machine = Arc::new(sagaflow_asl::parse::parse_definition(definition).expect("valid"));
    println!();
    println!("== Map with an ItemSelector reading $$.Map.Item.Value, Pass processor ==");
    for items in [1_000usize, 5_000, 20_000] {
        let input = json!({"items": (0..items).collect::<Vec<_>>()});
        let options = Options::default();
        let mut out = Vec::new();
        let start = Instant::now();
        let mut execution = Execution::new(machine.clone(), options);
        execution
            .apply(
                fixture.now,
                Event::ExecutionStarted {
                    info: fixture.info.clone(),
                    input,
                },
                &mut out,
            )
            .expect("started");
        let elapsed = start.elapsed();
        assert!(
            matches!(execution.outcome(), Some(Outcome::Succeeded { .. })),
            "{:?}",
            execution.outcome()
        );
        println!(
            "{items:>6} items: {:.2} ms, {:.2} us per item",
            elapsed.as_secs_f64() * 1e3,
            elapsed.as_secs_f64() * 1e6 / items as f64
        );
    }
}

fn main() {
    let fixture = Fixture::new();
    let mut criterion = Criterion::default().configure_from_args();
    {
        let mut group = criterion.benchmark_group("travel_booking");
        let options = Options::default();
        let mut out = Vec::new();
        for (name, fail) in [
            ("success_execution", false),
            ("compensation_execution", true),
        ] {
            let script = fixture.script(fail);
            let transitions = fixture.run(&options, script.clone(), &mut out) as u64;
            group.throughput(Throughput::Elements(transitions));
            group.bench_function(name, |b| {
                b.iter_batched(
                    || script.clone(),
                    |events| fixture.run(&options, events, &mut out),
                    BatchSize::SmallInput,
                )
            });
        }
        group.finish();
    }
    criterion.final_summary();
    summary(&fixture);
    map_summary(&fixture);
}
