//! The `main` of a Sagaflow application in one call: [`run_app`].

use std::error::Error;
use std::future::Future;
use std::process::ExitCode;

pub use sagaflow_participant::stop_signal;

/// Runs an application: sets up logs (`RUST_LOG`) and, when
/// `OTEL_EXPORTER_OTLP_ENDPOINT` is set, OpenTelemetry export under the
/// service name `service` (`OTEL_SERVICE_NAME` wins; see
/// [`crate::telemetry::init`]); starts a multi-threaded tokio runtime; runs
/// `app` on it; flushes the telemetry. An error (an `anyhow::Error`, any
/// `std::error::Error`, a `String`) is printed with its chain of causes
/// ([`error_report`]: `error: ...`) and gives [`ExitCode::FAILURE`].
///
/// ```no_run
/// use std::process::ExitCode;
///
/// fn main() -> ExitCode {
///     sagaflow::app::run_app("my-service", || async {
///         // build a `Sagaflow`, deploy, start executions ...
///         Ok::<_, std::io::Error>(ExitCode::SUCCESS)
///     })
/// }
/// ```
pub fn run_app<F, Fut, E>(service: &str, app: F) -> ExitCode
where
    F: FnOnce() -> Fut,
    Fut: Future<Output = Result<ExitCode, E>>,
    E: Into<Box<dyn Error + Send + Sync + 'static>>,
{
    // Flushed when the guard drops, after the runtime below has stopped.
    let _telemetry = match crate::telemetry::init(service) {
        Ok(guard) => Some(guard),
        Err(e) => {
            eprintln!("warning: tracing is off: {e}");
            None
        }
    };
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let result = runtime.block_on(app());
    drop(runtime);
    match result {
        Ok(code) => code,
        Err(e) => {
            let e: Box<dyn Error + Send + Sync + 'static> = e.into();
            eprintln!("error: {}", error_report(e.as_ref()));
            ExitCode::FAILURE
        }
    }
}

pub use sagaflow_telemetry::error_report;

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, thiserror::Error)]
    #[error("cannot connect to NATS at nats://h:1: {0}")]
    struct Outer(#[source] Middle);

    #[derive(Debug, thiserror::Error)]
    #[error("IO error: {0}")]
    struct Middle(#[source] std::io::Error);

    #[test]
    fn the_error_report_names_each_cause_once() {
        let root = std::io::Error::new(std::io::ErrorKind::ConnectionRefused, "refused");
        assert_eq!(
            error_report(&Outer(Middle(root))),
            "cannot connect to NATS at nats://h:1: IO error: refused"
        );
        // Causes not in the message are listed after it.
        let e: Box<dyn Error + Send + Sync> = anyhow::anyhow!("inner").context("outer").into();
        assert_eq!(error_report(e.as_ref()), "outer: inner");
    }
}
