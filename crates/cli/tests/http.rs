//! `sagaflow run` serves HTTP Tasks with the real handler, credentials from
//! `--http-connections` (or `SAGAFLOW_HTTP_CONNECTIONS`), against a loopback
//! server started by the test.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::mpsc;

use serde_json::{Value, json};

const KEY: &str = "cli-key-SECRET-42";

fn temp_dir(test: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("sagaflow-cli-http-{}-{test}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

fn write(dir: &Path, name: &str, content: &str) -> String {
    let p = dir.join(name);
    std::fs::write(&p, content).unwrap();
    p.display().to_string()
}

/// Answers one request with `status` and a JSON body; sends the request's
/// head (lower-cased) on the returned channel.
fn one_shot_server(status: &'static str, body: &'static str) -> (String, mpsc::Receiver<String>) {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("http://{}/charges", listener.local_addr().unwrap());
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        let Ok((stream, _)) = listener.accept() else {
            return;
        };
        let mut reader = BufReader::new(stream);
        let mut head = String::new();
        let mut length = 0usize;
        loop {
            let mut line = String::new();
            if reader.read_line(&mut line).unwrap_or(0) == 0 || line == "\r\n" {
                break;
            }
            let lower = line.to_ascii_lowercase();
            if let Some(v) = lower.strip_prefix("content-length:") {
                length = v.trim().parse().unwrap_or(0);
            }
            head.push_str(&lower);
        }
        let mut request_body = vec![0u8; length];
        let _ = reader.read_exact(&mut request_body);
        head.push_str(&String::from_utf8_lossy(&request_body));
        let _ = tx.send(head);
        let mut stream = reader.into_inner();
        let _ = write!(
            stream,
            "HTTP/1.1 {status}\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
            body.len()
        );
    });
    (url, rx)
}

const DEFINITION: &str = r#"{
  "StartAt": "Charge",
  "States": {
    "Charge": {
      "Type": "Task",
      "Resource": "arn:aws:states:::http:invoke",
      "Parameters": {
        "ApiEndpoint.$": "$.url",
        "Method": "POST",
        "Authentication": {"ConnectionArn": "arn:aws:events:us-east-1:123456789012:connection/Partner/1"},
        "RequestBody": {"amount": 7}
      },
      "Catch": [{"ErrorEquals": ["States.Http.StatusCode.402"], "Next": "Declined"}],
      "End": true
    },
    "Declined": {"Type": "Fail", "Error": "Declined"}
  }
}"#;

fn connections() -> String {
    format!(
        r#"{{"Connections": [{{"Name": "Partner", "AuthorizationType": "API_KEY",
        "AuthParameters": {{"ApiKeyAuthParameters": {{"ApiKeyName": "x-api-key", "ApiKeyValue": "{KEY}"}}}}}}]}}"#
    )
}

fn sagaflow(args: &[&str], env: Option<(&str, &str)>) -> Output {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_sagaflow"));
    cmd.arg("run")
        .args(args)
        .env_remove("SAGAFLOW_HTTP_CONNECTIONS");
    if let Some((k, v)) = env {
        cmd.env(k, v);
    }
    cmd.env("RUST_LOG", "trace").output().unwrap()
}

fn report(o: &Output) -> Value {
    serde_json::from_slice(&o.stdout)
        .unwrap_or_else(|e| panic!("{e}: {}", String::from_utf8_lossy(&o.stdout)))
}

#[test]
fn run_calls_the_api_with_the_connection() {
    let dir = temp_dir("ok");
    let def = write(&dir, "def.json", DEFINITION);
    let stubs = write(&dir, "stubs.json", "{}");
    let conns = write(&dir, "conns.json", &connections());
    let (url, seen) = one_shot_server("200 OK", r#"{"charge":"ch_1"}"#);
    let input = json!({"url": url}).to_string();
    let o = sagaflow(
        &[
            "--definition",
            &def,
            "--stubs",
            &stubs,
            "--input",
            &input,
            "--http-connections",
            &conns,
        ],
        None,
    );
    assert_eq!(
        o.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&o.stderr)
    );
    let r = report(&o);
    assert_eq!(r["status"], json!("SUCCEEDED"));
    assert_eq!(r["output"]["StatusCode"], json!(200));
    assert_eq!(r["output"]["ResponseBody"], json!({"charge": "ch_1"}));
    assert_eq!(r["calls"], json!({"sagaflow_http_invoke": 1}));
    let request = seen.recv().unwrap();
    assert!(
        request.contains(&format!("x-api-key: {}", KEY.to_ascii_lowercase())),
        "{request}"
    );
    assert!(
        request.contains("idempotency-key: arn:aws:states:"),
        "{request}"
    );
    assert!(request.ends_with(r#"{"amount":7}"#), "{request}");
    let all = format!(
        "{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    );
    assert!(!all.contains(KEY), "the key leaked: {all}");
    // Logs written to a pipe are plain text, without terminal colours.
    let logs = String::from_utf8_lossy(&o.stderr);
    assert!(logs.contains("TRACE") || logs.contains("DEBUG"), "{logs}");
    assert!(
        !logs.contains('\u{1b}'),
        "colour codes in piped logs: {logs}"
    );
}

#[test]
fn run_catches_a_status_code_error_with_connections_from_the_environment() {
    let dir = temp_dir("declined");
    let def = write(&dir, "def.json", DEFINITION);
    let stubs = write(&dir, "stubs.json", "{}");
    let conns = write(&dir, "conns.json", &connections());
    let (url, _seen) = one_shot_server("402 Payment Required", r#"{"error":"declined"}"#);
    let input = json!({"url": url}).to_string();
    let o = sagaflow(
        &["--definition", &def, "--stubs", &stubs, "--input", &input],
        Some(("SAGAFLOW_HTTP_CONNECTIONS", &conns)),
    );
    let r = report(&o);
    assert_eq!(r["status"], json!("FAILED"));
    assert_eq!(r["error"], json!("Declined"));
}

#[test]
fn a_bad_connections_file_is_refused() {
    let dir = temp_dir("bad");
    let def = write(&dir, "def.json", DEFINITION);
    let stubs = write(&dir, "stubs.json", "{}");
    let conns = write(&dir, "conns.json", r#"{"Connections": [{"Name": "x"}]}"#);
    let o = sagaflow(
        &[
            "--definition",
            &def,
            "--stubs",
            &stubs,
            "--http-connections",
            &conns,
        ],
        None,
    );
    assert_eq!(o.status.code(), Some(3));
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(err.contains("invalid connections file"), "{err}");
}

/// A child process killed when dropped.
struct Running(std::process::Child);

impl Drop for Running {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[test]
fn the_coordinator_serves_http_tasks_over_nats() {
    let server = sagaflow_testkit::NatsServer::start().expect("nats-server");
    let nats = server.url();
    let dir = temp_dir("coordinator");
    let def = write(&dir, "def.json", DEFINITION);
    let conns = write(&dir, "conns.json", &connections());
    let (url, seen) = one_shot_server("200 OK", r#"{"charge":"ch_9"}"#);
    let cli = |args: &[&str]| {
        Command::new(env!("CARGO_BIN_EXE_sagaflow"))
            .args(args)
            .args(["--nats", &nats])
            .env_remove("SAGAFLOW_HTTP_CONNECTIONS")
            .output()
            .unwrap()
    };
    // The coordinator process runs the HTTP worker with the connections.
    let _coordinator = Running(
        Command::new(env!("CARGO_BIN_EXE_sagaflow"))
            .args(["coordinator", "--nats", &nats, "--partitions", "2"])
            .args(["--http-connections", &conns])
            .env_remove("SAGAFLOW_HTTP_CONNECTIONS")
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .unwrap(),
    );
    // Deploy as soon as the coordinator answers.
    let mut deployed = None;
    for _ in 0..100 {
        let o = cli(&["deploy", "charge", &def]);
        if o.status.success() {
            deployed = Some(o);
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
    assert!(deployed.is_some(), "no coordinator answered");
    let input = json!({"url": url}).to_string();
    let o = cli(&[
        "start", "charge", "--input", &input, "--name", "c-1", "--wait", "--json",
    ]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let done: Value = serde_json::from_slice(&o.stdout)
        .unwrap_or_else(|e| panic!("{e}: {}", String::from_utf8_lossy(&o.stdout)));
    assert_eq!(done["status"], json!("SUCCEEDED"), "{done}");
    assert_eq!(done["output"]["StatusCode"], json!(200), "{done}");
    assert_eq!(done["output"]["ResponseBody"], json!({"charge": "ch_9"}));
    let request = seen.recv().unwrap();
    assert!(
        request.contains(&format!("x-api-key: {}", KEY.to_ascii_lowercase())),
        "{request}"
    );
    let history = cli(&["history", "charge:c-1", "--json"]);
    assert!(history.status.success());
    let text = String::from_utf8_lossy(&history.stdout);
    assert!(text.contains("TaskSucceeded"), "{text}");
    assert!(!text.contains(KEY), "the key reached the history: {text}");
}
