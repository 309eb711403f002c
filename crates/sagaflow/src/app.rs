//! The `main` of a Sagaflow application in one call: [`run_app`].

use std::fmt::Display;
use std::future::Future;
use std::process::ExitCode;

/// Runs an application: sets up logs (`RUST_LOG`) and, when
/// `OTEL_EXPORTER_OTLP_ENDPOINT` is set, OpenTelemetry export under the
/// service name `service` (`OTEL_SERVICE_NAME` wins; see
/// [`crate::telemetry::init`]); starts a multi-threaded tokio runtime; runs
/// `app` on it; flushes the telemetry. An error is printed with its chain of
/// causes (`error: ...`) and gives [`ExitCode::FAILURE`].
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
    E: Display,
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
            // `{:#}` shows an anyhow error's causes too.
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}
