//! End-to-end tests of the `sagaflow` binary, including every example of
//! docs/local-runner.md (files under docs/examples/local-runner/).

use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::atomic::{AtomicUsize, Ordering};

use serde_json::{Value, json};

fn bin() -> Command {
    Command::new(env!("CARGO_BIN_EXE_sagaflow"))
}

fn examples() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../docs/examples/local-runner")
}

fn example(name: &str) -> String {
    examples().join(name).display().to_string()
}

/// A fresh directory for one test's files.
fn temp_dir(test: &str) -> PathBuf {
    static N: AtomicUsize = AtomicUsize::new(0);
    let dir = std::env::temp_dir().join(format!(
        "sagaflow-cli-{}-{}-{}",
        std::process::id(),
        test,
        N.fetch_add(1, Ordering::SeqCst)
    ));
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

fn write(dir: &Path, name: &str, content: impl AsRef<[u8]>) -> String {
    let p = dir.join(name);
    std::fs::write(&p, content).unwrap();
    p.display().to_string()
}

fn run(args: &[&str]) -> Output {
    bin().arg("run").args(args).output().unwrap()
}

fn code(o: &Output) -> i32 {
    o.status.code().unwrap_or(-1)
}

fn stdout_json(o: &Output) -> Value {
    let text = String::from_utf8_lossy(&o.stdout);
    assert_eq!(text.lines().count(), 1, "one line of JSON expected: {text}");
    serde_json::from_str(&text).unwrap_or_else(|e| panic!("stdout is not JSON ({e}): {text}"))
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

#[test]
fn doc_example_saga_succeeds_after_retries() {
    let o = run(&[
        "--definition",
        &example("book-trip.asl.json"),
        "--input",
        &example("book-trip.input.json"),
        "--stubs",
        &example("book-trip.stubs.json"),
        "--virtual-clock",
    ]);
    assert_eq!(code(&o), 0, "{}", stderr(&o));
    assert_eq!(
        stdout_json(&o),
        json!({
            "status": "SUCCEEDED",
            "output": {"orderId": "O-1", "reservation": {"reservationId": "R-1"}, "payment": {"chargeId": "C-1"}},
            "error": null,
            "cause": null,
            "calls": {"charge": 3, "reserve": 1},
            "callOrder": ["reserve", "charge", "charge", "charge"],
            "retryDelaysSeconds": {"Charge": [1, 2]}
        })
    );
}

#[test]
fn doc_example_saga_compensates_and_fails() {
    let o = run(&[
        "--definition",
        &example("book-trip.asl.json"),
        "--input",
        &example("book-trip.input.json"),
        "--stubs",
        &example("book-trip.declined.stubs.json"),
    ]);
    assert_eq!(
        code(&o),
        0,
        "a failed execution is still a run: {}",
        stderr(&o)
    );
    assert_eq!(
        stdout_json(&o),
        json!({
            "status": "FAILED",
            "output": null,
            "error": "BookingFailed",
            "cause": "the payment failed; the reservation was cancelled",
            "calls": {"cancelReservation": 1, "charge": 1, "reserve": 1},
            "callOrder": ["reserve", "charge", "cancelReservation"],
            "retryDelaysSeconds": {}
        })
    );
}

#[test]
fn doc_example_virtual_clock_wait_of_an_hour() {
    let o = run(&[
        "--definition",
        &example("wait-and-poll.asl.json"),
        "--stubs",
        &example("wait-and-poll.stubs.json"),
        "--virtual-clock",
    ]);
    assert_eq!(code(&o), 0, "{}", stderr(&o));
    let r = stdout_json(&o);
    assert_eq!(r["status"], "SUCCEEDED");
    assert_eq!(r["output"], json!({"ready": true}));
    assert_eq!(r["callOrder"], json!(["poll", "poll", "poll"]));
    assert_eq!(r["retryDelaysSeconds"], json!({"Poll": [60, 90]}));
}

#[test]
fn virtual_clock_start_time_drives_the_context_object() {
    let dir = temp_dir("start-time");
    let def = write(
        &dir,
        "def.json",
        r#"{"StartAt": "W", "States": {
            "W": {"Type": "Wait", "Seconds": 3600, "Next": "T"},
            "T": {"Type": "Task", "Resource": "t",
                  "Parameters": {"start.$": "$$.Execution.StartTime", "entered.$": "$$.State.EnteredTime",
                                 "name.$": "$$.Execution.Name"},
                  "End": true}}}"#,
    );
    let stubs = write(&dir, "stubs.json", r#"{"t": {"echo": true}}"#);
    let o = run(&[
        "--definition",
        &def,
        "--stubs",
        &stubs,
        "--virtual-clock",
        "--start-time",
        "2024-01-01T00:00:00Z",
        "--execution-name",
        "order-1",
    ]);
    assert_eq!(code(&o), 0, "{}", stderr(&o));
    let out = &stdout_json(&o)["output"];
    assert_eq!(out["name"], "order-1");
    assert!(
        out["start"]
            .as_str()
            .unwrap()
            .starts_with("2024-01-01T00:00:00"),
        "{out}"
    );
    assert!(
        out["entered"]
            .as_str()
            .unwrap()
            .starts_with("2024-01-01T01:00:00"),
        "{out}"
    );
}

#[test]
fn doc_example_heartbeat_timeout_is_caught() {
    let o = run(&[
        "--definition",
        &example("ship.asl.json"),
        "--input",
        r#"{"parcel": 7}"#,
        "--stubs",
        &example("ship.silent.stubs.json"),
        "--virtual-clock",
    ]);
    assert_eq!(code(&o), 0, "{}", stderr(&o));
    let r = stdout_json(&o);
    assert_eq!(r["status"], "SUCCEEDED");
    assert_eq!(r["output"]["parcel"], 7);
    assert_eq!(r["output"]["error"]["Error"], "States.HeartbeatTimeout");
}

#[test]
fn doc_example_heartbeats_keep_the_task_alive() {
    let o = run(&[
        "--definition",
        &example("ship.asl.json"),
        "--stubs",
        &example("ship.heartbeating.stubs.json"),
        "--virtual-clock",
    ]);
    assert_eq!(code(&o), 0, "{}", stderr(&o));
    let r = stdout_json(&o);
    assert_eq!(r["status"], "SUCCEEDED");
    assert_eq!(r["output"], json!({"shipped": true}));
}

#[test]
fn doc_example_task_timeout() {
    let o = run(&[
        "--definition",
        &example("slow.asl.json"),
        "--stubs",
        &example("slow.stubs.json"),
        "--virtual-clock",
    ]);
    assert_eq!(code(&o), 0, "{}", stderr(&o));
    let r = stdout_json(&o);
    assert_eq!(r["status"], "FAILED");
    assert_eq!(r["error"], "States.Timeout");
    assert_eq!(r["calls"], json!({"slow": 1}));
}

#[test]
fn doc_example_invalid_definition_exits_2_with_every_error() {
    let def = example("invalid.asl.json");
    let o = run(&["--definition", &def, "--stubs", &example("slow.stubs.json")]);
    assert_eq!(code(&o), 2, "{}", stderr(&o));
    let r = stdout_json(&o);
    assert_eq!(r["status"], "INVALID_DEFINITION");
    let errors = r["errors"].as_array().unwrap();
    assert!(errors.len() >= 3, "{errors:?}");
    let pointers: Vec<&str> = errors
        .iter()
        .filter_map(|e| e["pointer"].as_str())
        .collect();
    assert!(pointers.contains(&"/States/Start/Next"), "{pointers:?}");
    assert!(pointers.contains(&"/States/Other/Type"), "{pointers:?}");
    let err = stderr(&o);
    assert!(
        err.contains("invalid.asl.json:4:32: /States/Start/Next ["),
        "{err}"
    );

    let v = bin().args(["validate", &def]).output().unwrap();
    assert_eq!(code(&v), 2);
    let text = String::from_utf8_lossy(&v.stdout);
    assert_eq!(text.lines().count(), errors.len(), "{text}");
    assert!(
        text.contains("invalid.asl.json:5:16: /States/Other/Type [INVALID_VALUE]"),
        "{text}"
    );

    let j = bin().args(["validate", &def, "--json"]).output().unwrap();
    assert_eq!(code(&j), 2);
    let body = stdout_json(&j);
    assert_eq!(body["valid"], false);
    assert_eq!(body["errors"].as_array().unwrap().len(), errors.len());
}

#[test]
fn validate_valid_definitions() {
    for name in [
        "book-trip.asl.json",
        "wait-and-poll.asl.json",
        "ship.asl.json",
        "slow.asl.json",
    ] {
        let def = example(name);
        let o = bin().args(["validate", &def]).output().unwrap();
        assert_eq!(
            code(&o),
            0,
            "{name}: {}",
            String::from_utf8_lossy(&o.stdout)
        );
        assert_eq!(
            String::from_utf8_lossy(&o.stdout).trim(),
            format!("{def}: valid")
        );
        let j = bin().args(["validate", &def, "--json"]).output().unwrap();
        assert_eq!(stdout_json(&j), json!({"valid": true, "errors": []}));
    }
}

#[test]
fn malformed_json_exits_3_naming_the_file() {
    let dir = temp_dir("malformed");
    let bad = write(&dir, "bad-stubs.json", "{\"a\":\n  {\"echo\": tru}}");
    let o = run(&["--definition", &example("slow.asl.json"), "--stubs", &bad]);
    assert_eq!(code(&o), 3);
    let err = stderr(&o);
    assert!(err.contains("bad-stubs.json:2:"), "{err}");
    assert!(o.stdout.is_empty());

    let bad_input = write(&dir, "bad-input.json", "[1, 2,\n\n oops]");
    let o = run(&[
        "--definition",
        &example("slow.asl.json"),
        "--stubs",
        &example("slow.stubs.json"),
        "--input",
        &bad_input,
    ]);
    assert_eq!(code(&o), 3);
    assert!(stderr(&o).contains("bad-input.json:3:"), "{}", stderr(&o));

    let bad_shape = write(&dir, "shape.json", r#"{"slow": {"retuns": 1}}"#);
    let o = run(&[
        "--definition",
        &example("slow.asl.json"),
        "--stubs",
        &bad_shape,
    ]);
    assert_eq!(code(&o), 3);
    assert!(
        stderr(&o).contains("shape.json: /slow/retuns: unknown key"),
        "{}",
        stderr(&o)
    );
}

#[test]
fn malformed_definition_json_is_an_invalid_definition() {
    let dir = temp_dir("bad-def");
    let def = write(&dir, "def.json", "{\"StartAt\": ");
    let o = bin().args(["validate", &def]).output().unwrap();
    assert_eq!(code(&o), 2);
    assert!(
        String::from_utf8_lossy(&o.stdout).contains("def.json:1:"),
        "{o:?}"
    );
}

#[test]
fn invalid_utf8_input_exits_3_and_definition_exits_2_located() {
    let dir = temp_dir("utf8");
    let input = write(&dir, "latin1.json", b"{\"name\": \"Jos\xe9\"}");
    let o = run(&[
        "--definition",
        &example("slow.asl.json"),
        "--stubs",
        &example("slow.stubs.json"),
        "--input",
        &input,
    ]);
    assert_eq!(code(&o), 3);
    let err = stderr(&o);
    assert!(
        err.contains("latin1.json: invalid UTF-8 at byte 13"),
        "{err}"
    );
    // A definition that is not UTF-8 is an invalid definition: exit 2,
    // located at the bad byte, like malformed JSON.
    let def = write(&dir, "def.json", b"{\"StartAt\": \"\xff\"}");
    let v = bin().args(["validate", &def]).output().unwrap();
    assert_eq!(code(&v), 2);
    let text = String::from_utf8_lossy(&v.stdout);
    assert!(
        text.contains("def.json:1:14: (root) [INVALID_JSON]") && text.contains("not valid UTF-8"),
        "{text}"
    );
    let r = run(&["--definition", &def, "--stubs", &example("slow.stubs.json")]);
    assert_eq!(code(&r), 2);
    let report: serde_json::Value = serde_json::from_slice(&r.stdout).unwrap();
    assert_eq!(report["status"], "INVALID_DEFINITION");
    assert_eq!(report["errors"][0]["code"], "INVALID_JSON");
    // `deploy` refuses it before connecting, with the report it gives for
    // a definition the API refuses (`--json`: the object on stdout).
    let d = bin()
        .args([
            "deploy",
            "m",
            &def,
            "--json",
            "--nats",
            "nats://127.0.0.1:1",
        ])
        .output()
        .unwrap();
    assert_eq!(code(&d), 2, "{d:?}");
    let report: serde_json::Value = serde_json::from_slice(&d.stdout).unwrap();
    assert_eq!(report["valid"], false);
    assert_eq!(report["errors"][0]["code"], "INVALID_JSON");
    let err = stderr(&d);
    assert!(
        err.contains("invalid definition (1 error(s))") && err.contains("def.json:1:14"),
        "{err}"
    );
}

#[test]
fn inline_input_and_echo() {
    let dir = temp_dir("inline");
    let def = write(
        &dir,
        "def.json",
        r#"{"StartAt": "Echo", "States": {"Echo": {"Type": "Task", "Resource": "arn:aws:lambda:us-east-1:123456789012:function:echo", "End": true}}}"#,
    );
    let stubs = write(&dir, "stubs.json", r#"{"echo": {"echo": true}}"#);
    let o = run(&[
        "--definition",
        &def,
        "--stubs",
        &stubs,
        "--input",
        r#"{"a": [1, 2.5, "x"]}"#,
    ]);
    assert_eq!(code(&o), 0, "{}", stderr(&o));
    assert_eq!(stdout_json(&o)["output"], json!({"a": [1, 2.5, "x"]}));
    // No --input: {}.
    let o = run(&["--definition", &def, "--stubs", &stubs]);
    assert_eq!(stdout_json(&o)["output"], json!({}));
    // Files with a UTF-8 byte order mark (Windows editors write one) run
    // as `validate` finds them: valid.
    let bom = |name: &str, text: &str| {
        let mut bytes = b"\xEF\xBB\xBF".to_vec();
        bytes.extend_from_slice(text.as_bytes());
        write(&dir, name, bytes)
    };
    let def_bom = bom(
        "def-bom.json",
        &std::fs::read_to_string(&def).expect("the definition"),
    );
    let stubs_bom = bom("stubs-bom.json", r#"{"echo": {"echo": true}}"#);
    let input_bom = bom("input-bom.json", r#"{"b": 1}"#);
    let v = bin().args(["validate", &def_bom]).output().unwrap();
    assert_eq!(code(&v), 0, "{v:?}");
    let o = run(&[
        "--definition",
        &def_bom,
        "--stubs",
        &stubs_bom,
        "--input",
        &input_bom,
    ]);
    assert_eq!(code(&o), 0, "{}", stderr(&o));
    assert_eq!(stdout_json(&o)["output"], json!({"b": 1}));
    // Malformed inline JSON: where it breaks.
    let o = run(&[
        "--definition",
        &def,
        "--stubs",
        &stubs,
        "--input",
        r#"{"a": 1,}"#,
    ]);
    assert_eq!(code(&o), 3);
    assert!(
        stderr(&o).contains("neither an existing file nor JSON (at 1:9: trailing comma"),
        "{}",
        stderr(&o)
    );
}

#[test]
fn missing_stubs_are_all_listed_before_running() {
    let dir = temp_dir("missing");
    let stubs = write(&dir, "stubs.json", r#"{"reserve": {"returns": 1}}"#);
    let o = run(&[
        "--definition",
        &example("book-trip.asl.json"),
        "--stubs",
        &stubs,
    ]);
    assert_eq!(code(&o), 3);
    let err = stderr(&o);
    assert!(
        err.contains("'charge'") && err.contains("'cancelReservation'"),
        "{err}"
    );
    assert!(!err.contains("'reserve'"), "{err}");
    assert!(o.stdout.is_empty());
}

#[test]
fn usage_errors_exit_3() {
    let o = bin()
        .args(["run", "--definition", "x.json"])
        .output()
        .unwrap();
    assert_eq!(code(&o), 3);
    let o = bin()
        .args([
            "run",
            "--stubs",
            "s.json",
            "--definition",
            "d.json",
            "--seed",
            "abc",
        ])
        .output()
        .unwrap();
    assert_eq!(code(&o), 3);
    let o = bin().args(["frobnicate"]).output().unwrap();
    assert_eq!(code(&o), 3);
    let o = bin().args(["validate"]).output().unwrap();
    assert_eq!(code(&o), 3);
    let o = bin().args(["--help"]).output().unwrap();
    assert_eq!(code(&o), 0);
    let o = bin()
        .args([
            "run",
            "--definition",
            &example("slow.asl.json"),
            "--stubs",
            &example("slow.stubs.json"),
            "--input",
            "no-such-file.json",
        ])
        .output()
        .unwrap();
    assert_eq!(code(&o), 3);
    assert!(stderr(&o).contains("no-such-file.json"), "{}", stderr(&o));
    let o = bin()
        .args([
            "run",
            "--definition",
            "no-such-def.json",
            "--stubs",
            &example("slow.stubs.json"),
        ])
        .output()
        .unwrap();
    assert_eq!(code(&o), 3);
    assert!(stderr(&o).contains("no-such-def.json"), "{}", stderr(&o));
}

#[test]
fn same_seed_same_report() {
    let dir = temp_dir("seed");
    let def = write(
        &dir,
        "def.json",
        r#"{"StartAt": "P", "States": {"P": {"Type": "Pass",
            "Parameters": {"id.$": "States.UUID()", "name.$": "$$.Execution.Name"}, "End": true}}}"#,
    );
    let stubs = write(&dir, "stubs.json", "{}");
    let a = run(&["--definition", &def, "--stubs", &stubs, "--seed", "42"]);
    let b = run(&["--definition", &def, "--stubs", &stubs, "--seed", "42"]);
    let c = run(&["--definition", &def, "--stubs", &stubs, "--seed", "43"]);
    assert_eq!(code(&a), 0, "{}", stderr(&a));
    assert_eq!(stdout_json(&a), stdout_json(&b));
    assert_ne!(stdout_json(&a)["output"], stdout_json(&c)["output"]);
}

#[test]
fn a_result_and_a_timeout_at_the_same_virtual_instant_settle_the_same_way_every_run() {
    let dir = temp_dir("tie");
    let def = write(
        &dir,
        "def.json",
        r#"{"StartAt": "T", "States": {"T": {"Type": "Task", "Resource": "slow",
            "TimeoutSeconds": 5, "End": true}}}"#,
    );
    let stubs = write(
        &dir,
        "stubs.json",
        r#"{"slow": {"returns": 1, "delaySeconds": 5}}"#,
    );
    let args = [
        "--definition",
        def.as_str(),
        "--stubs",
        stubs.as_str(),
        "--virtual-clock",
        "--seed",
        "1",
    ];
    let first = run(&args);
    assert_eq!(code(&first), 0, "{}", stderr(&first));
    let first = stdout_json(&first);
    // The result is taken before the timeout that fires with it.
    assert_eq!(first["status"], "SUCCEEDED", "{first}");
    for _ in 0..7 {
        assert_eq!(stdout_json(&run(&args)), first);
    }
}

#[test]
fn wait_for_task_token_and_lambda_invoke_wrapping() {
    let dir = temp_dir("token");
    let def = write(
        &dir,
        "def.json",
        r#"{"StartAt": "Approve", "States": {
            "Approve": {"Type": "Task", "Resource": "arn:aws:states:::lambda:invoke.waitForTaskToken",
                        "Parameters": {"FunctionName": "approve", "Payload": {"token.$": "$$.Task.Token"}},
                        "ResultPath": "$.approval", "Next": "Notify"},
            "Notify": {"Type": "Task", "Resource": "arn:aws:states:::lambda:invoke",
                       "Parameters": {"FunctionName.$": "$.fn", "Payload": {"n": 1}}, "End": true}}}"#,
    );
    let stubs = write(
        &dir,
        "stubs.json",
        r#"{"approve": {"returns": {"approved": true}}, "notify": {"echo": true}}"#,
    );
    let o = run(&[
        "--definition",
        &def,
        "--stubs",
        &stubs,
        "--input",
        r#"{"fn": "notify:live"}"#,
    ]);
    assert_eq!(code(&o), 0, "{}", stderr(&o));
    let r = stdout_json(&o);
    assert_eq!(r["status"], "SUCCEEDED", "{r}");
    assert_eq!(r["output"]["Payload"], json!({"n": 1}));
    assert_eq!(r["output"]["StatusCode"], 200);
    assert_eq!(r["callOrder"], json!(["approve", "notify"]));
}

#[test]
fn dynamic_function_without_stub_fails_the_execution() {
    let dir = temp_dir("dynamic");
    let def = write(
        &dir,
        "def.json",
        r#"{"StartAt": "Call", "States": {"Call": {"Type": "Task", "Resource": "arn:aws:states:::lambda:invoke",
            "Parameters": {"FunctionName.$": "$.fn"}, "End": true}}}"#,
    );
    let stubs = write(&dir, "stubs.json", "{}");
    let o = run(&[
        "--definition",
        &def,
        "--stubs",
        &stubs,
        "--input",
        r#"{"fn": "ghost"}"#,
    ]);
    assert_eq!(code(&o), 0, "{}", stderr(&o));
    let r = stdout_json(&o);
    assert_eq!(r["status"], "FAILED");
    assert_eq!(r["error"], "States.Runtime");
    assert!(r["cause"].as_str().unwrap().contains("ghost"), "{r}");
}

/// Ctrl-C stops a local run as StopExecution would: the report says
/// ABORTED and how far it got.
#[cfg(target_os = "linux")]
#[test]
fn ctrl_c_aborts_a_run_with_its_report() {
    use std::time::{Duration, Instant};
    let dir = temp_dir("ctrl-c");
    let def = write(
        &dir,
        "def.json",
        r#"{"StartAt": "Pause", "States": {"Pause": {"Type": "Wait", "Seconds": 3600, "End": true}}}"#,
    );
    let stubs = write(&dir, "stubs.json", "{}");
    let child = bin()
        .args(["run", "--definition", &def, "--stubs", &stubs])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("spawn sagaflow");
    // Once the run catches SIGINT (bit 2 of the caught-signals mask).
    let status = format!("/proc/{}/status", child.id());
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let text = std::fs::read_to_string(&status).unwrap_or_default();
        let caught = text
            .lines()
            .find_map(|l| l.strip_prefix("SigCgt:"))
            .and_then(|mask| u64::from_str_radix(mask.trim(), 16).ok())
            .unwrap_or(0);
        if caught & 0b10 != 0 {
            break;
        }
        assert!(Instant::now() < deadline, "the run never caught SIGINT");
        std::thread::sleep(Duration::from_millis(20));
    }
    let pid = child.id().to_string();
    assert!(
        std::process::Command::new("kill")
            .args(["-INT", &pid])
            .status()
            .unwrap()
            .success()
    );
    let o = child.wait_with_output().unwrap();
    assert_eq!(code(&o), 0, "{}", stderr(&o));
    let report = stdout_json(&o);
    assert_eq!(report["status"], json!("ABORTED"), "{report}");
    assert_eq!(report["error"], json!("Sagaflow.Interrupted"));
}
