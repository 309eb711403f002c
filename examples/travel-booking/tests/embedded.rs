//! The travel booking scenarios on the embedded backend (no NATS).

mod common;

use std::sync::Arc;

use travel_booking::Services;

#[tokio::test]
async fn a_trip_without_failure_is_booked() {
    let services = Arc::new(Services::new(false));
    let saga = common::embedded(&services).await;
    common::success(&saga, &services, "e-ok").await;
    saga.shutdown().await;
}

#[tokio::test]
async fn every_failure_point_compensates_in_reverse_order() {
    let services = Arc::new(Services::new(false));
    let saga = common::embedded(&services).await;
    for fail in ["flight", "hotel", "car"] {
        common::failure(&saga, &services, &format!("e-{fail}"), fail).await;
    }
    saga.shutdown().await;
}

#[tokio::test]
async fn compensations_are_retried() {
    let services = Arc::new(Services::new(false));
    let saga = common::embedded(&services).await;
    common::flaky_compensations(&saga, &services, "e-flaky").await;
    saga.shutdown().await;
}

#[tokio::test]
async fn a_failure_rate_leaves_every_trip_consistent() {
    let services = Arc::new(Services::new(false).with_failure_rate(0.3));
    let saga = common::embedded(&services).await;
    let trips: Vec<_> = (0..40)
        .map(|i| travel_booking::trip(&format!("rate-{i}"), None))
        .collect();
    let reports = travel_booking::run_trips(&saga, &trips, common::LIMIT)
        .await
        .unwrap();
    assert_eq!(reports.len(), 40);
    for r in &reports {
        let held = services.active_for(&r.trip_id).len();
        match r.status {
            sagaflow::Status::Succeeded => assert_eq!(held, 3, "{r:?}"),
            sagaflow::Status::Failed => {
                assert_eq!(held, 0, "{r:?}");
                assert_eq!(
                    r.compensations.last().map(String::as_str),
                    Some("CancelFlight")
                );
            }
            other => panic!("unexpected status {other:?}"),
        }
    }
    saga.shutdown().await;
}
