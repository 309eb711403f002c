//! The `loan-approval` binary's embedded default, as `cargo run -p
//! loan-approval` runs it.

use std::process::Command;

fn run(args: &[&str]) -> (bool, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_loan-approval"))
        .args(args)
        .output()
        .expect("run loan-approval");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.success(), text)
}

#[test]
fn the_default_approves_rejects_and_reviews() {
    let (ok, out) = run(&[]);
    assert!(ok, "{out}");
    assert!(
        out.contains("SUCCEEDED — APPROVED (automatic approval), disbursement D-0001"),
        "{out}"
    );
    assert!(out.contains("SUCCEEDED — REJECTED (score 520)"), "{out}");
    assert!(out.contains("sagaflow send-task-success "), "{out}");
    assert!(
        out.contains("SUCCEEDED — APPROVED (auto-review), disbursement D-0002"),
        "{out}"
    );
    assert!(
        out.contains("bank: 50000.00 paid out and not reversed"),
        "{out}"
    );
}

#[test]
fn auto_review_reject_and_a_failed_notification() {
    let (ok, out) = run(&["--score", "650", "--auto-review", "reject"]);
    assert!(ok, "{out}");
    assert!(out.contains("ManualReview → Rejected"), "{out}");
    assert!(out.contains("bank: 0.00 paid out"), "{out}");

    let (ok, out) = run(&["--score", "800", "--fail-notification"]);
    assert!(ok, "{out}");
    assert!(out.contains("FAILED — NotificationFailed"), "{out}");
    assert!(out.contains("ReverseDisbursement: "), "{out}");
    assert!(out.contains("bank: 0.00 paid out"), "{out}");
}
