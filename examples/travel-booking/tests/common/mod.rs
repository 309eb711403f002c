//! The scenarios of the travel booking saga, run by the embedded tests and
//! the tests over NATS alike.

#![allow(dead_code)]

use std::sync::Arc;
use std::time::Duration;

use sagaflow::{Options, Sagaflow, Status};
use sagaflow_testkit::NatsServer;
use serde_json::Value;
use travel_booking::{
    DEFINITION, STATE_MACHINE, Services, TripReport, expected_compensations, trip,
};

/// Only to avoid hanging: every scenario ends within seconds.
pub const LIMIT: Duration = Duration::from_secs(60);

/// The example embedded: one process, no NATS.
pub async fn embedded(services: &Arc<Services>) -> Sagaflow {
    let saga = travel_booking::register(Sagaflow::builder(), services)
        .build()
        .await
        .expect("embedded sagaflow");
    saga.deploy(STATE_MACHINE, DEFINITION)
        .await
        .expect("deploy");
    saga
}

/// The example over a real nats-server: a client with an in-process
/// coordinator, and the participants on a connection of their own (as
/// `travel-booking participants` would run them).
pub struct OverNats {
    pub server: NatsServer,
    pub saga: Sagaflow,
    pub participants: Sagaflow,
}

pub fn nats_options(url: &str) -> Options {
    let mut o = Options {
        nats_url: Some(url.to_string()),
        worker_grace_period: Duration::from_millis(200),
        ..Options::default()
    };
    o.cluster.partitions = 4;
    o.cluster.settings.lease_ttl = Duration::from_secs(2);
    o
}

pub async fn over_nats(services: &Arc<Services>) -> OverNats {
    let server = NatsServer::start().expect("nats-server");
    let saga = Sagaflow::builder()
        .options(nats_options(&server.url()))
        .run_coordinator(true)
        .serve_handlers(false)
        .build()
        .await
        .expect("coordinator and client");
    assert_eq!(saga.mode(), sagaflow::Mode::Distributed);
    let participants = travel_booking::register(Sagaflow::builder(), services)
        .options(nats_options(&server.url()))
        .build()
        .await
        .expect("participants");
    saga.deploy(STATE_MACHINE, DEFINITION)
        .await
        .expect("deploy");
    OverNats {
        server,
        saga,
        participants,
    }
}

impl OverNats {
    pub async fn stop(self) {
        self.participants.shutdown().await;
        self.saga.shutdown().await;
    }
}

async fn book(saga: &Sagaflow, input: Value) -> TripReport {
    let trip_id = input["trip_id"].as_str().expect("trip_id").to_string();
    let execution = saga.start(STATE_MACHINE, input, None).await.expect("start");
    let result = execution.wait(LIMIT).await.expect("wait");
    TripReport::of(&trip_id, &execution, &result)
        .await
        .expect("report")
}

/// A trip with no failure books all three and keeps them.
pub async fn success(saga: &Sagaflow, services: &Services, trip_id: &str) {
    let report = book(saga, trip(trip_id, None)).await;
    assert_eq!(report.status, Status::Succeeded, "{report:?}");
    let kinds: Vec<&str> = report.booked.iter().map(|(k, _)| k.as_str()).collect();
    assert_eq!(kinds, ["flight", "hotel", "car"]);
    assert!(report.compensations.is_empty(), "{report:?}");
    assert_eq!(
        report.states,
        ["BookFlight", "BookHotel", "BookCar", "TripBooked"]
    );
    let held: Vec<String> = services
        .active_for(trip_id)
        .into_iter()
        .map(|r| r.confirmation)
        .collect();
    let booked: Vec<String> = report.booked.iter().map(|(_, c)| c.clone()).collect();
    assert_eq!(held, booked, "the ledgers hold exactly the confirmations");
    assert_eq!(
        services.journal.steps_of(trip_id),
        ["BookFlight", "BookHotel", "BookCar"]
    );
}

/// A trip failing at `fail` runs the compensations in reverse order and
/// leaves nothing booked; what it cancelled is what it had booked.
pub async fn failure(saga: &Sagaflow, services: &Services, trip_id: &str, fail: &str) {
    let report = book(saga, trip(trip_id, Some(fail))).await;
    assert_eq!(report.status, Status::Failed, "{report:?}");
    let error = match fail {
        "flight" => "FlightUnavailable",
        "hotel" => "HotelUnavailable",
        _ => "CarUnavailable",
    };
    assert_eq!(report.failure.as_deref(), Some(error), "{report:?}");
    let expected = expected_compensations(fail);
    assert_eq!(report.compensations, expected, "{report:?}");

    // The services' own view: bookings, the failure, then the cancels in
    // reverse order.
    let books: Vec<&str> = ["BookFlight", "BookHotel", "BookCar"]
        .into_iter()
        .take_while(|s| !s.to_ascii_lowercase().ends_with(fail))
        .collect();
    let failed_step = match fail {
        "flight" => "BookFlightFailed",
        "hotel" => "BookHotelFailed",
        _ => "BookCarFailed",
    };
    let mut steps: Vec<&str> = books.clone();
    steps.push(failed_step);
    steps.extend(expected.iter().copied());
    assert_eq!(services.journal.steps_of(trip_id), steps);

    // Nothing of the trip is left in any ledger, and the confirmations
    // undone are exactly those booked.
    assert!(services.active_for(trip_id).is_empty());
    let booked: Vec<String> = services
        .journal
        .entries()
        .into_iter()
        .filter(|e| {
            e.trip_id == trip_id && e.step.starts_with("Book") && !e.step.ends_with("Failed")
        })
        .flat_map(|e| e.confirmations)
        .collect();
    assert_eq!(booked.len(), books.len());
    let mut undone = report.undone.clone();
    undone.sort();
    let mut expected_undone = booked;
    expected_undone.sort();
    assert_eq!(undone, expected_undone, "{report:?}");
}

/// Cancellations that fail once are retried (Retry on the compensations)
/// and still undo everything.
pub async fn flaky_compensations(saga: &Sagaflow, services: &Services, trip_id: &str) {
    let mut input = trip(trip_id, Some("car"));
    input["flaky_cancel"] = Value::Bool(true);
    let trip_id = trip_id.to_string();
    let execution = saga.start(STATE_MACHINE, input, None).await.expect("start");
    let result = execution.wait(LIMIT).await.expect("wait");
    assert_eq!(result.status, Status::Failed);
    let history = execution.history().await.expect("history");
    let retries: Vec<&str> = history
        .iter()
        .filter(|e| e["type"] == "TaskRetryScheduled")
        .filter_map(|e| e.pointer("/taskRetryScheduledEventDetails/name")?.as_str())
        .collect();
    assert_eq!(retries, ["CancelCar", "CancelHotel", "CancelFlight"]);
    assert!(services.active_for(&trip_id).is_empty());
    assert_eq!(
        services.journal.steps_of(&trip_id),
        [
            "BookFlight",
            "BookHotel",
            "BookCarFailed",
            "CancelCar",
            "CancelHotel",
            "CancelFlight"
        ]
    );
}
