//! The CLI's NATS credential options against a server started with
//! `docs/examples/nats-server.conf` (only its nkeys, the client's password,
//! the port and the store directory replaced): `sagaflow coordinator` and
//! `sagaflow stub-participants` as the two nkey users, the client commands
//! as the password user.

use std::path::Path;
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use serde_json::{Value, json};

use sagaflow_testkit::{NatsServer, ServerOptions};

const CONFIG: &str = include_str!("../../../docs/examples/nats-server.conf");
const DOC_COORDINATOR_NKEY: &str = "UCV3PKZGUU3HAIIJF4ZS4G6EZK57PUUWOTP7TGNNUELNUKNFS3N5UYV7";
const DOC_PARTICIPANT_NKEY: &str = "UBWJ7TYDVEDBF4WANPOU2QWCYPDYYVG2JJPRXAU76OYAA4EFBIV55HSI";

/// Every environment variable the CLI reads for NATS, removed so that the
/// caller's environment does not leak into the test.
const NATS_ENV: [&str; 10] = [
    "NATS_URL",
    "NATS_CREDS",
    "NATS_USER",
    "NATS_PASSWORD",
    "NATS_TOKEN",
    "NATS_NKEY",
    "NATS_INBOX_PREFIX",
    "NATS_CA",
    "NATS_CERT",
    "NATS_KEY",
];

fn bin(envs: &[(&str, &str)]) -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_sagaflow"));
    for name in NATS_ENV {
        c.env_remove(name);
    }
    for (k, v) in envs {
        c.env(k, v);
    }
    c
}

/// A child process killed when dropped.
struct Running(Child);

impl Drop for Running {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn spawn(args: &[&str], log: &Path) -> Running {
    let log = std::fs::File::create(log).expect("log file");
    Running(
        bin(&[])
            .args(args)
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("spawn sagaflow"),
    )
}

fn run(args: &[&str], envs: &[(&str, &str)]) -> Output {
    bin(envs).args(args).output().expect("run sagaflow")
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).to_string()
}

fn replace_once(text: &str, from: &str, to: &str) -> String {
    assert_eq!(text.matches(from).count(), 1, "`{from}` not found once");
    text.replace(from, to)
}

#[test]
fn commands_authenticate_with_the_example_configuration() {
    let coordinator = nkeys::KeyPair::new_user();
    let participant = nkeys::KeyPair::new_user();
    let password = format!("pw-{}", nkeys::KeyPair::new_user().public_key());
    let dir = tempfile::tempdir().unwrap();
    let store = dir.path().join("js");
    let mut config = replace_once(CONFIG, DOC_COORDINATOR_NKEY, &coordinator.public_key());
    config = replace_once(&config, DOC_PARTICIPANT_NKEY, &participant.public_key());
    config = replace_once(
        &config,
        "password: \"change-me\"",
        &format!("password: \"{password}\""),
    );
    config = replace_once(&config, "port: 4222", "port: -1");
    config = replace_once(
        &config,
        "store_dir: \"/var/lib/nats/jetstream\"",
        &format!("store_dir: {:?}", store.display().to_string()),
    );
    let server = NatsServer::start_with(ServerOptions {
        config_file: Some(config),
        jetstream: false,
        store_dir: None,
    })
    .expect("nats-server");
    let url = server.url();

    let write = |name: &str, content: &str| {
        let p = dir.path().join(name);
        std::fs::write(&p, content).unwrap();
        p.display().to_string()
    };
    let coordinator_nk = write("coordinator.nk", &coordinator.seed().unwrap());
    let participant_nk = write("participant.nk", &participant.seed().unwrap());
    let saga = write(
        "trip.json",
        r#"{"StartAt": "BookFlight", "States": {"BookFlight":
            {"Type": "Task", "Resource": "book_flight", "ResultPath": "$.flight", "End": true}}}"#,
    );
    let stubs = write(
        "stubs.json",
        r#"{"book_flight": {"returns": {"booking": "F-1"}}}"#,
    );
    let client_env = [
        ("NATS_URL", url.as_str()),
        ("NATS_USER", "client"),
        ("NATS_PASSWORD", password.as_str()),
    ];

    let coordinator_log = dir.path().join("coordinator.log");
    let _coordinator = spawn(
        &[
            "coordinator",
            "--nats",
            &url,
            "--nats-nkey",
            &coordinator_nk,
            "--nats-inbox-prefix",
            "_INBOX_coordinator",
            "--partitions",
            "4",
        ],
        &coordinator_log,
    );
    // The API answers the client once the coordinator has created the
    // streams; only then can the participant, which may not create them,
    // start.
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let o = run(&["machines", "--json"], &client_env);
        if o.status.success() {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "no API: {}\ncoordinator: {}",
            stderr(&o),
            std::fs::read_to_string(&coordinator_log).unwrap_or_default()
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    let participant_log = dir.path().join("participant.log");
    let _participant = spawn(
        &[
            "stub-participants",
            "--stubs",
            &stubs,
            "--nats",
            &url,
            "--nats-nkey",
            &participant_nk,
            "--nats-inbox-prefix",
            "_INBOX_participant",
        ],
        &participant_log,
    );

    let o = run(&["deploy", "trip", &saga], &client_env);
    assert!(o.status.success(), "{}", stderr(&o));
    let o = run(
        &[
            "start",
            "trip",
            "--input",
            r#"{"who": "ada"}"#,
            "--wait",
            "--timeout",
            "60",
            "--json",
        ],
        &client_env,
    );
    assert!(
        o.status.success(),
        "{}\nparticipant: {}",
        stderr(&o),
        std::fs::read_to_string(&participant_log).unwrap_or_default()
    );
    let d: Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(d["status"], json!("SUCCEEDED"), "{d}");
    assert_eq!(d["output"]["flight"], json!({"booking": "F-1"}), "{d}");

    // The same with the options instead of the environment, and with the
    // credentials in the URL.
    let o = run(
        &[
            "machines",
            "--nats",
            &url,
            "--nats-user",
            "client",
            "--nats-password",
            &password,
        ],
        &[],
    );
    assert!(o.status.success(), "{}", stderr(&o));
    let in_url = url.replace("nats://", &format!("nats://client:{password}@"));
    let o = run(&["machines", "--nats", &in_url], &[]);
    assert!(o.status.success(), "{}", stderr(&o));

    // No permission was refused to anyone.
    let log = server.log();
    let refused: Vec<&str> = log.lines().filter(|l| l.contains("Violation")).collect();
    assert!(refused.is_empty(), "{refused:#?}");

    // A wrong password: exit 3, the user named, the password never shown.
    let o = run(
        &[
            "machines",
            "--nats",
            &url,
            "--nats-user",
            "client",
            "--nats-password",
            "not-the-password",
        ],
        &[],
    );
    assert_eq!(o.status.code(), Some(3), "{}", stderr(&o));
    assert!(
        stderr(&o).contains("refused user 'client' with its password"),
        "{}",
        stderr(&o)
    );
    assert!(!stderr(&o).contains("not-the-password"), "{}", stderr(&o));
    // No credentials.
    let o = run(&["machines", "--nats", &url], &[]);
    assert_eq!(o.status.code(), Some(3), "{}", stderr(&o));
    assert!(
        stderr(&o).contains("refused a connection without credentials"),
        "{}",
        stderr(&o)
    );
    // Two ways at once.
    let o = run(
        &[
            "machines",
            "--nats-token",
            "t",
            "--nats-nkey",
            &coordinator_nk,
        ],
        &client_env,
    );
    assert_eq!(o.status.code(), Some(3), "{}", stderr(&o));
    assert!(
        stderr(&o).contains("conflicting NATS credentials"),
        "{}",
        stderr(&o)
    );
    // Help never shows a secret taken from the environment.
    let o = run(&["machines", "--help"], &client_env);
    let help = String::from_utf8_lossy(&o.stdout);
    assert!(help.contains("--nats-password"), "{help}");
    assert!(!help.contains(&password), "{help}");
}
