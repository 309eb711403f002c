//! Runs the `payment_partner` example and checks both bookings.

#[path = "../examples/payment_partner.rs"]
mod payment_partner;

use serde_json::json;

#[tokio::test]
async fn the_payment_partner_example_charges_and_compensates() {
    let bookings = payment_partner::demo().await.expect("example ran");
    assert_eq!(bookings.len(), 2);
    assert_eq!(bookings[0].amount, 120);
    assert_eq!(bookings[0].status, "SUCCEEDED");
    assert_eq!(
        bookings[0].detail["payment"],
        json!({"chargeId": "ch_Sbooking-1", "status": 201})
    );
    assert_eq!(bookings[1].amount, 5000);
    assert_eq!(bookings[1].status, "PaymentFailed");
    assert!(
        bookings[1]
            .detail
            .as_str()
            .unwrap()
            .contains("seat was released"),
        "{:?}",
        bookings[1].detail
    );
}
