//! End-to-end tests of the `sagaflow` commands that work over NATS: a real
//! nats-server, a `sagaflow coordinator` and `sagaflow stub-participants`
//! processes, and the client commands against them.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use serde_json::{Value, json};

use sagaflow_testkit::NatsServer;

fn bin() -> Command {
    Command::new(env!("CARGO_BIN_EXE_sagaflow"))
}

/// A child process killed when dropped.
struct Running(Child);

impl Drop for Running {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn spawn(args: &[&str]) -> Running {
    Running(
        bin()
            .args(args)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("spawn sagaflow"),
    )
}

fn run(args: &[&str]) -> Output {
    bin().args(args).output().expect("run sagaflow")
}

fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).to_string()
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).to_string()
}

fn temp_dir(test: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("sagaflow-cli-nats-{}-{test}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

fn write(dir: &Path, name: &str, content: &str) -> String {
    let p = dir.join(name);
    std::fs::write(&p, content).unwrap();
    p.display().to_string()
}

const SAGA: &str = r#"{
  "StartAt": "Greet",
  "States": {
    "Greet": {"Type": "Task", "Resource": "greet", "ResultPath": "$.greeting", "Next": "Done"},
    "Done": {"Type": "Succeed"}
  }
}"#;

const STUBS: &str =
    r#"{"greet": {"returns": {"text": "hello"}}, "arn:aws:lambda:x": {"echo": true}}"#;

#[test]
fn commands_over_nats() {
    let server = NatsServer::start().expect("nats-server");
    let url = server.url();
    let dir = temp_dir("commands");
    let saga = write(&dir, "saga.json", SAGA);
    let saga_v2 = write(
        &dir,
        "saga-v2.json",
        &SAGA.replacen('{', r#"{"Comment": "v2", "#, 1),
    );
    let broken = write(
        &dir,
        "broken.json",
        r#"{"StartAt": "Nowhere", "States": {"A": {"Type": "Pass", "Next": "Gone"}}}"#,
    );
    let stubs = write(&dir, "stubs.json", STUBS);
    let with = |args: &[&str]| {
        let mut v: Vec<String> = args.iter().map(|s| s.to_string()).collect();
        v.push("--nats".into());
        v.push(url.clone());
        run(&v.iter().map(String::as_str).collect::<Vec<_>>())
    };

    // Nobody serves the API yet.
    let o = with(&["machines"]);
    assert_eq!(o.status.code(), Some(3), "{}", stderr(&o));
    assert!(
        stderr(&o).contains("no coordinator is serving the API"),
        "{}",
        stderr(&o)
    );

    let _coordinator = spawn(&["coordinator", "--nats", &url, "--partitions", "4"]);
    let _participants = spawn(&["stub-participants", "--stubs", &stubs, "--nats", &url]);
    // Wait for the API.
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let o = with(&["machines", "--json"]);
        if o.status.success() {
            break;
        }
        assert!(Instant::now() < deadline, "no API: {}", stderr(&o));
        std::thread::sleep(Duration::from_millis(200));
    }

    // An invalid definition: every error, located, exit 2.
    let o = with(&["deploy", "broken", &broken]);
    assert_eq!(o.status.code(), Some(2), "{}", stderr(&o));
    let err = stderr(&o);
    assert!(err.contains("broken.json:1:"), "{err}");
    assert!(err.contains("/StartAt ["), "{err}");
    assert!(err.contains("/States/A/Next ["), "{err}");

    let o = with(&["deploy", "hello", &saga]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(
        stdout(&o).contains("deployed hello version 1"),
        "{}",
        stdout(&o)
    );
    // The same definition again: the same version.
    let o = with(&["deploy", "hello", &saga, "--json"]);
    let v: Value = serde_json::from_str(&stdout(&o)).unwrap();
    assert_eq!(v["version"], json!(1));
    let o = with(&["deploy", "hello", &saga_v2, "--json"]);
    let v: Value = serde_json::from_str(&stdout(&o)).unwrap();
    assert_eq!(v["version"], json!(2));

    let o = with(&["machines"]);
    let text = stdout(&o);
    assert!(text.starts_with("NAME   VERSION  ARN"), "{text}");
    assert!(
        text.contains("hello  2        arn:aws:states:local:000000000000:stateMachine:hello"),
        "{text}"
    );

    let o = with(&[
        "start",
        "hello",
        "--input",
        r#"{"who": "you"}"#,
        "--name",
        "e1",
        "--wait",
        "--timeout",
        "60",
        "--json",
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    let d: Value = serde_json::from_str(&stdout(&o)).unwrap();
    assert_eq!(d["status"], json!("SUCCEEDED"), "{d}");
    assert_eq!(
        d["output"],
        json!({"who": "you", "greeting": {"text": "hello"}})
    );

    // Again, same input: already started; another input: refused.
    let o = with(&[
        "start",
        "hello",
        "--input",
        r#"{"who": "you"}"#,
        "--name",
        "e1",
    ]);
    assert!(stdout(&o).starts_with("already started"), "{}", stdout(&o));
    let o = with(&["start", "hello", "--input", "{}", "--name", "e1"]);
    assert_eq!(o.status.code(), Some(3));
    assert!(
        stderr(&o).starts_with("error: ExecutionAlreadyExists: "),
        "{}",
        stderr(&o)
    );

    let o = with(&["describe", "hello:e1"]);
    let text = stdout(&o);
    assert!(text.contains("status     SUCCEEDED"), "{text}");
    assert!(text.contains("machine    hello (version 2)"), "{text}");
    let o = with(&["describe", "hello", "--version", "1"]);
    assert!(stdout(&o).contains("version  1"), "{}", stdout(&o));

    let o = with(&["history", "hello:e1", "--json"]);
    let events: Value = serde_json::from_str(&stdout(&o)).unwrap();
    let types: Vec<&str> = events
        .as_array()
        .unwrap()
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
            "TaskSucceeded",
            "TaskStateExited",
            "SucceedStateEntered",
            "SucceedStateExited",
            "ExecutionSucceeded"
        ]
    );
    let o = with(&[
        "history",
        "arn:aws:states:local:000000000000:execution:hello:e1",
    ]);
    assert!(stdout(&o).starts_with("ID  TIMESTAMP"), "{}", stdout(&o));

    let o = with(&["list", "hello", "--status", "succeeded"]);
    let text = stdout(&o);
    assert!(text.starts_with("MACHINE  NAME  VERSION  STATUS"), "{text}");
    assert!(text.contains("hello    e1    2        SUCCEEDED"), "{text}");
    let o = with(&["list", "--status", "nope"]);
    assert_eq!(o.status.code(), Some(3));

    // Errors are `error: CODE: message`, exit 3.
    let o = with(&["stop", "hello:missing"]);
    assert_eq!(o.status.code(), Some(3));
    assert!(
        stderr(&o).starts_with("error: ExecutionDoesNotExist: "),
        "{}",
        stderr(&o)
    );
    let o = with(&["redrive", "hello:e1"]);
    assert!(
        stderr(&o).starts_with("error: ExecutionNotRedrivable: "),
        "{}",
        stderr(&o)
    );
    let o = with(&["send-task-success", "garbage!", "{}"]);
    assert!(
        stderr(&o).starts_with("error: InvalidToken: "),
        "{}",
        stderr(&o)
    );
    // A malformed output is refused before any request, named as the
    // argument it is.
    let o = with(&["send-task-success", "garbage!", "{bad"]);
    assert_eq!(o.status.code(), Some(3));
    assert_eq!(
        stderr(&o).trim(),
        "error: the task result: '{bad' is neither an existing file nor JSON (at 1:2: \
         key must be a string at line 1 column 2)"
    );
    let o = with(&["send-task-failure", "garbage!", "--error", "E"]);
    assert!(
        stderr(&o).starts_with("error: InvalidToken: "),
        "{}",
        stderr(&o)
    );
    let o = with(&["send-task-heartbeat", "garbage!"]);
    assert!(
        stderr(&o).starts_with("error: InvalidToken: "),
        "{}",
        stderr(&o)
    );
    let o = with(&["describe", "nope"]);
    assert!(
        stderr(&o).starts_with("error: StateMachineDoesNotExist: "),
        "{}",
        stderr(&o)
    );
    let o = with(&["start", "nope"]);
    assert_eq!(o.status.code(), Some(3));

    // Another namespace: nobody there.
    let o = with(&["machines", "--namespace", "other"]);
    assert!(
        stderr(&o).contains("other.api.machine.list"),
        "{}",
        stderr(&o)
    );
}

#[test]
fn unreachable_nats_is_an_error() {
    let o = run(&["machines", "--nats", "nats://127.0.0.1:1"]);
    assert_eq!(o.status.code(), Some(3));
    let text = stderr(&o);
    assert!(text.contains("cannot connect to NATS"), "{text}");
    // Each cause once: the client's error repeats its source in its text.
    assert_eq!(text.matches("Connection refused").count(), 1, "{text}");
}

/// Empty option variables count as unset, as in the `nats` CLI: they
/// neither replace the default URL nor stand for a missing value.
#[test]
fn empty_option_variables_are_taken_as_unset() {
    let server = NatsServer::start().expect("nats-server");
    let mut cmd = bin();
    cmd.args(["machines", "--nats", &server.url()]);
    for name in [
        "NATS_CA",
        "NATS_USER",
        "NATS_CREDS",
        "NATS_TOKEN",
        "NATS_INBOX_PREFIX",
    ] {
        cmd.env(name, "");
    }
    let o = cmd.output().expect("run sagaflow");
    // Connected (no coordinator runs: the API does not answer).
    let text = stderr(&o);
    assert!(text.contains("no coordinator is serving the API"), "{text}");
    // An empty NATS_URL leaves the default in place (nothing listens on
    // the default port here: the error names it).
    let o = bin()
        .args(["machines"])
        .env("NATS_URL", "")
        .output()
        .expect("run sagaflow");
    let text = stderr(&o);
    assert!(text.contains("127.0.0.1:4222"), "{text}");
}

/// Waits for a child to exit, for at most `limit`.
fn wait_exit(child: &mut Child, limit: Duration) -> Option<std::process::ExitStatus> {
    let deadline = Instant::now() + limit;
    loop {
        if let Some(status) = child.try_wait().expect("wait") {
            return Some(status);
        }
        if Instant::now() > deadline {
            return None;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[cfg(unix)]
#[test]
fn sigterm_stops_the_coordinator_and_the_stubs_cleanly() {
    use std::io::Read as _;
    let server = NatsServer::start().expect("nats-server");
    let url = server.url();
    let dir = temp_dir("sigterm");
    let stubs = write(&dir, "stubs.json", STUBS);
    let start = |args: &[&str]| {
        bin()
            .args(args)
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn sagaflow")
    };
    let coordinator = start(&["coordinator", "--nats", &url, "--partitions", "2"]);
    let participants = start(&["stub-participants", "--stubs", &stubs, "--nats", &url]);
    let deadline = Instant::now() + Duration::from_secs(60);
    while !run(&["machines", "--nats", &url]).status.success() {
        assert!(Instant::now() < deadline, "no API");
        std::thread::sleep(Duration::from_millis(200));
    }
    // Let the stubs' worker start too (its consumers are made at start).
    std::thread::sleep(Duration::from_millis(500));
    for (mut child, what) in [(coordinator, "partitions"), (participants, "tasks")] {
        let pid = child.id().to_string();
        let kill = Command::new("kill").args(["-TERM", &pid]).status().unwrap();
        assert!(kill.success());
        let status = wait_exit(&mut child, Duration::from_secs(30));
        if status.is_none() {
            let _ = child.kill();
        }
        let mut err = String::new();
        child
            .stderr
            .take()
            .unwrap()
            .read_to_string(&mut err)
            .unwrap();
        let status = status.unwrap_or_else(|| panic!("still running after SIGTERM: {err}"));
        assert!(status.success(), "{status}: {err}");
        assert!(
            err.contains(&format!("SIGTERM: stopping, handing back {what}")),
            "{err}"
        );
    }
}

#[test]
fn the_http_stub_is_served_only_when_asked() {
    use std::io::Read as _;
    let server = NatsServer::start().expect("nats-server");
    let url = server.url();
    let dir = temp_dir("http-stub");
    let stubs = write(
        &dir,
        "stubs.json",
        r#"{"sagaflow_http_invoke": {"returns": {"StatusCode": 200}}}"#,
    );
    // Every coordinator serves HTTP Tasks: a stub beside them would take
    // some of them at random.
    let out = run(&["stub-participants", "--stubs", &stubs, "--nats", &url]);
    assert!(!out.status.success());
    let err = stderr(&out);
    assert!(
        err.contains("skipping stub 'sagaflow_http_invoke'") && err.contains("--stub-http"),
        "{err}"
    );
    assert!(err.contains("no stub can be served"), "{err}");
    // Asked for (coordinators run with --no-http-worker): served.
    let mut child = bin()
        .args([
            "stub-participants",
            "--stubs",
            &stubs,
            "--nats",
            &url,
            "--stub-http",
        ])
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn sagaflow");
    let mut stderr = child.stderr.take().unwrap();
    let mut seen = Vec::new();
    let mut buf = [0u8; 256];
    let deadline = Instant::now() + Duration::from_secs(30);
    while !String::from_utf8_lossy(&seen).contains("serving 1 stub(s)") {
        assert!(
            Instant::now() < deadline,
            "{}",
            String::from_utf8_lossy(&seen)
        );
        let n = stderr.read(&mut buf).unwrap();
        assert!(n > 0, "exited: {}", String::from_utf8_lossy(&seen));
        seen.extend_from_slice(&buf[..n]);
    }
    assert!(String::from_utf8_lossy(&seen).contains("sagaflow_http_invoke"));
    let _ = child.kill();
    let _ = child.wait();
}
