//! The ASL conformance suite: one test per case file under
//! `tests/conformance/` (format: `tests/conformance/README.md`).
//!
//! Each case runs through the embedded local runner with a virtual clock, a
//! fixed seed and a fixed start time, and the run report is compared with
//! the case's `expect`. A failing case prints its file, the mismatches, the
//! expected values and the whole actual report.
//!
//! Run: `cargo test -p sagaflow-tests --test conformance` (add a filter such
//! as `choice/` to run a subset).

use std::path::Path;

use libtest_mimic::{Arguments, Failed, Trial};
use sagaflow_coordinator::local::{RunRequest, run_blocking};
use sagaflow_participant::stubs::Stubs;
use sagaflow_tests::{Case, MIN_CASES, case_files, compare, failure_message, load_case, suite_dir};
use serde_json::json;

/// Every case runs with this seed (`States.UUID`, `States.MathRandom`, jitter).
const SEED: u64 = 20240101;
/// Every case starts at this instant (`$$.Execution.StartTime`).
const START_TIME: &str = "2024-01-01T00:00:00Z";

fn main() {
    let args = Arguments::from_args();
    let root = suite_dir();
    let trials = match case_files(&root) {
        Ok(files) => trials(&root, &files),
        Err(e) => vec![Trial::test("suite/load", move || Err(e.to_string().into()))],
    };
    libtest_mimic::run(&args, trials).exit();
}

fn trials(root: &Path, files: &[std::path::PathBuf]) -> Vec<Trial> {
    let count = files.len();
    let mut out = vec![Trial::test("suite/has_enough_cases", move || {
        if count >= MIN_CASES {
            Ok(())
        } else {
            Err(
                format!("only {count} case files found; the suite must keep at least {MIN_CASES}")
                    .into(),
            )
        }
    })];
    for file in files {
        match load_case(root, file) {
            Ok(case) => {
                let name = case.name.clone();
                out.push(Trial::test(name, move || run_case(&case)));
            }
            Err(e) => {
                let name = file
                    .strip_prefix(root)
                    .unwrap_or(file)
                    .to_string_lossy()
                    .into_owned();
                out.push(Trial::test(format!("invalid-case/{name}"), move || {
                    Err(e.to_string().into())
                }));
            }
        }
    }
    out
}

fn run_case(case: &Case) -> Result<(), Failed> {
    let stubs = Stubs::from_value(&case.stubs).map_err(|e| {
        Failed::from(format!(
            "case file: {}\ninvalid stubs: {e}",
            case.path.display()
        ))
    })?;
    let start_time = START_TIME
        .parse::<jiff::Timestamp>()
        .map_err(|e| Failed::from(format!("bad START_TIME: {e}")))?;
    let request = RunRequest {
        definition: case.definition_text(),
        input: case.input.clone(),
        stubs,
        execution_name: case.execution_name.clone(),
        virtual_clock: true,
        seed: Some(SEED),
        start_time: Some(start_time),
        stop_on_ctrl_c: false,
    };
    let report = match run_blocking(request) {
        Ok(report) => serde_json::to_value(&report)
            .map_err(|e| Failed::from(format!("cannot serialize the run report: {e}")))?,
        // A runner error is reported as such, so that the failure message
        // still shows what the case expected.
        Err(e) => json!({"status": "RUNNER_ERROR", "runnerError": e.to_string()}),
    };
    let mismatches = compare(&case.expect, &report);
    if mismatches.is_empty() {
        Ok(())
    } else {
        Err(failure_message(case, &mismatches, &report).into())
    }
}
