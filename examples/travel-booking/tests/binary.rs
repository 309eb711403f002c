//! The `travel-booking` binary's embedded default, as `cargo run -p
//! travel-booking` runs it.

use std::process::Command;

fn run(args: &[&str]) -> (bool, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_travel-booking"))
        .args(args)
        .output()
        .expect("run travel-booking");
    let stdout = String::from_utf8_lossy(&out.stdout).to_string();
    let stderr = String::from_utf8_lossy(&out.stderr);
    (out.status.success(), format!("{stdout}{stderr}"))
}

#[test]
fn the_default_books_one_trip_and_compensates_the_other() {
    let (ok, out) = run(&[]);
    assert!(ok, "{out}");
    assert!(out.contains("embedded"), "{out}");
    assert!(out.contains("BookFlight: booked FL-0001"), "{out}");
    assert!(out.contains("CancelHotel: cancelled HO-0002"), "{out}");
    assert!(
        out.contains("SUCCEEDED — booked flight FL-0001, hotel HO-0001, car CA-0001"),
        "{out}"
    );
    assert!(
        out.contains(
            "FAILED — CarUnavailable; compensations CancelCar → CancelHotel → CancelFlight; undone: HO-0002, FL-0002"
        ),
        "{out}"
    );
    assert!(out.contains("1 trip(s) booked, 1 compensated"), "{out}");
}

#[test]
fn fail_flight_undoes_nothing() {
    let (ok, out) = run(&["--fail", "flight"]);
    assert!(ok, "{out}");
    assert!(
        out.contains("FAILED — FlightUnavailable; compensations CancelFlight; undone: nothing"),
        "{out}"
    );
    assert!(out.contains("0 trip(s) booked, 1 compensated"), "{out}");
}

#[test]
fn bad_flags_are_refused() {
    let (ok, out) = run(&["--failure-rate", "2"]);
    assert!(!ok, "{out}");
    assert!(out.contains("--failure-rate"), "{out}");
    let (ok, _) = run(&["--fail", "boat"]);
    assert!(!ok);
}
