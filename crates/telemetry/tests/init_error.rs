//! `init_with` called from async code returns its errors (its exporters'
//! runtime is shut down without blocking the caller's), and sets up
//! logging all the same.

use sagaflow_telemetry::{Config, Protocol, TelemetryError};

#[tokio::test(flavor = "multi_thread", worker_threads = 1)]
async fn an_exporter_that_cannot_be_built_is_an_error_in_async_code() {
    let mut config = Config::from_lookup("init-error", |_| None).expect("config");
    // gRPC over TLS needs a TLS feature this build leaves out.
    config.endpoint = Some("https://collector.invalid:4317".to_string());
    config.protocol = Protocol::Grpc;
    assert!(!tracing::dispatcher::has_been_set());
    match sagaflow_telemetry::init_with(config) {
        Err(TelemetryError::Exporter { signal, .. }) => assert_eq!(signal, "traces"),
        Err(other) => panic!("expected an exporter error, got {other}"),
        Ok(_) => panic!("an https gRPC endpoint cannot be served by this build"),
    }
    // The program runs on without export, its logs (RUST_LOG) still shown.
    assert!(
        tracing::dispatcher::has_been_set(),
        "a log subscriber is installed"
    );
}
