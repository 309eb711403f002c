//! The travel booking scenarios over a real nats-server: an in-process
//! coordinator (`cluster::Cluster`) and the participants served by a
//! worker on their own connection.

mod common;

use std::sync::Arc;

use travel_booking::Services;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_trip_without_failure_is_booked_over_nats() {
    let services = Arc::new(Services::new(false));
    let env = common::over_nats(&services).await;
    common::success(&env.saga, &services, "n-ok").await;
    env.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_failure_point_compensates_in_reverse_order_over_nats() {
    let services = Arc::new(Services::new(false));
    let env = common::over_nats(&services).await;
    for fail in ["flight", "hotel", "car"] {
        common::failure(&env.saga, &services, &format!("n-{fail}"), fail).await;
    }
    env.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn compensations_are_retried_over_nats() {
    let services = Arc::new(Services::new(false));
    let env = common::over_nats(&services).await;
    common::flaky_compensations(&env.saga, &services, "n-flaky").await;
    env.stop().await;
}
