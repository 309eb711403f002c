//! The `order-processing` binary's embedded default, as `cargo run -p
//! order-processing` runs it.

use std::process::Command;

#[test]
fn the_default_processes_one_order_and_rejects_the_other() {
    let out = Command::new(env!("CARGO_BIN_EXE_order-processing"))
        .output()
        .expect("run order-processing");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.status.success(), "{text}");
    assert!(
        text.contains("SUCCEEDED — status PROCESSED, total 30.97, notified ada@example.com"),
        "{text}"
    );
    assert!(
        text.contains("states: ValidateData → ProcessOrder → SendNotification"),
        "{text}"
    );
    assert!(
        text.contains("(no order_id): FAILED — ValidationError: order_id is missing"),
        "{text}"
    );
}

#[test]
fn an_order_given_as_input_runs_alone() {
    let out = Command::new(env!("CARGO_BIN_EXE_order-processing"))
        .args([
            "--input",
            r#"{"order_id": "X-1", "items": [{"price": 2, "quantity": 3}]}"#,
        ])
        .output()
        .expect("run order-processing");
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{text}");
    assert!(
        text.contains("order X-1: SUCCEEDED — status PROCESSED, total 6.0"),
        "{text}"
    );
    let out = Command::new(env!("CARGO_BIN_EXE_order-processing"))
        .args(["--input", "not json"])
        .output()
        .expect("run order-processing");
    assert!(!out.status.success());
}
