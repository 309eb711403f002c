//! Benchmark of the pure interpreter on the three-task travel-booking saga.
//!
//! Run: `cargo bench -p sagaflow-asl --bench interpreter`
//!
//! Prints criterion's figures per execution, then a summary: CPU time per
//! state transition and executions per second on one core, for the success
//! path (BookFlight, BookHotel, BookCar: 3 transitions) and the compensation
//! path (BookCar fails; CancelHotel, CancelFlight, then Fail: 6 transitions).

use std::hint::black_box;
use std::sync::Arc;
use std::time::Instant;

use criterion::{Criterion, Throughput};
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
            },
            now: "2024-01-01T00:00:00Z".parse().expect("timestamp"),
        }
    }

    /// Runs one execution; `fail_car` makes BookCar fail. Returns the number
    /// of states entered.
    fn run(&self, options: &Options, fail_car: bool, out: &mut Vec<Command>) -> usize {
        let mut exec = Execution::new(self.machine.clone(), options.clone());
        out.clear();
        exec.apply(
            self.now,
            Event::ExecutionStarted {
                info: self.info.clone(),
                input: self.input.clone(),
            },
            out,
        )
        .expect("start");
        let mut transitions = count_entered(out);
        loop {
            let task = out.iter().find_map(|c| match c {
                Command::ScheduleTask(t) => Some((t.task_id.clone(), t.state_name == "BookCar")),
                _ => None,
            });
            let Some((task_id, is_car)) = task else { break };
            out.clear();
            let event = if is_car && fail_car {
                Event::TaskFailed {
                    task_id,
                    error: "CarUnavailable".into(),
                    cause: "no cars left".into(),
                }
            } else {
                Event::TaskSucceeded {
                    task_id,
                    output: json!({"confirmation": "C-1", "price": 120}),
                }
            };
            exec.apply(self.now, event, out).expect("event");
            transitions += count_entered(out);
        }
        let outcome = exec.outcome().expect("finished");
        assert_eq!(matches!(outcome, Outcome::Failed { .. }), fail_car);
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
    println!("== summary: pure interpreter, one thread ==");
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
            let mut out = Vec::new();
            // Warm up, then measure about a second.
            for _ in 0..20_000 {
                black_box(fixture.run(&options, fail, &mut out));
            }
            let iterations = 200_000;
            let start = Instant::now();
            let mut transitions = 0;
            for _ in 0..iterations {
                transitions += black_box(fixture.run(&options, fail, &mut out));
            }
            let elapsed = start.elapsed();
            let per_exec = elapsed.as_secs_f64() / iterations as f64;
            let per_transition = elapsed.as_secs_f64() / transitions as f64;
            println!(
                "{path:>12} path, {label}: {:.3} us per transition, {:.0} executions/s ({} transitions per execution)",
                per_transition * 1e6,
                1.0 / per_exec,
                transitions / iterations
            );
        }
    }
}

fn main() {
    let fixture = Fixture::new();
    let mut criterion = Criterion::default().configure_from_args();
    {
        let mut group = criterion.benchmark_group("travel_booking");
        let options = Options::default();
        let mut out = Vec::new();
        let success = fixture.run(&options, false, &mut out) as u64;
        let compensation = fixture.run(&options, true, &mut out) as u64;
        group.throughput(Throughput::Elements(success));
        group.bench_function("success_execution", |b| {
            b.iter(|| fixture.run(&options, false, &mut out))
        });
        group.throughput(Throughput::Elements(compensation));
        group.bench_function("compensation_execution", |b| {
            b.iter(|| fixture.run(&options, true, &mut out))
        });
        group.finish();
    }
    criterion.final_summary();
    summary(&fixture);
}
