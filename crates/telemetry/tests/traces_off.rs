//! Metrics exported, traces not (`OTEL_TRACES_EXPORTER=none`): executions
//! still count in the metrics, but no trace is sampled, so no span is built
//! and no trace id is handed out for a trace that is nowhere.

use sagaflow_telemetry::{Config, ExecutionTrace};

#[test]
fn with_traces_off_no_execution_trace_is_sampled() {
    let config = Config::from_lookup("traces-off", |name| match name {
        // Nothing listens there: nothing is exported during the test.
        "OTEL_EXPORTER_OTLP_ENDPOINT" => Some("http://127.0.0.1:9".to_string()),
        "OTEL_EXPORTER_OTLP_PROTOCOL" => Some("http/protobuf".to_string()),
        "OTEL_TRACES_EXPORTER" => Some("none".to_string()),
        _ => None,
    })
    .expect("config");
    assert!(!config.traces && config.metrics, "{config:?}");
    let guard = sagaflow_telemetry::init_with(config).expect("metrics exporter");
    let trace = ExecutionTrace::start("arn:exec:off", "machine", None).expect("metrics are on");
    assert!(
        !trace.is_sampled(),
        "no span built for a trace not exported"
    );
    drop(guard);
}
