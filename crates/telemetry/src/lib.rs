//! OpenTelemetry tracing and metrics for Sagaflow.
//!
//! - [`init`] sets up logging (`RUST_LOG`) and, when
//!   `OTEL_EXPORTER_OTLP_ENDPOINT` is set, OTLP export of spans and metrics
//!   (gRPC or HTTP, `OTEL_EXPORTER_OTLP_PROTOCOL`), with the service name
//!   from `OTEL_SERVICE_NAME` and the sampler from `OTEL_TRACES_SAMPLER`.
//!   Without an endpoint nothing is traced and nothing costs.
//! - [`propagation`]: W3C trace context in NATS headers.
//! - [`execution::ExecutionTrace`]: one trace per execution, built from the
//!   interpreter's records (used by the coordinator).
//! - [`metrics`]: the `sagaflow.*` instruments.
//!
//! Export never blocks the program: spans wait in a bounded queue and are
//! sent by a thread of their own with a timeout; a collector that is down
//! only loses spans.
//!
//! ```
//! # fn main() -> Result<(), sagaflow_telemetry::TelemetryError> {
//! // With OTEL_EXPORTER_OTLP_ENDPOINT unset, only logging is set up.
//! let config = sagaflow_telemetry::Config::from_lookup("my-service", |_| None)?;
//! let guard = sagaflow_telemetry::init_with(config)?;
//! assert!(!guard.exporting());
//! tracing::info!("hello");
//! drop(guard); // flushes what is left (bounded wait)
//! # Ok(()) }
//! ```

#![warn(missing_docs)]

pub mod attributes;
mod config;
pub mod execution;
pub mod ids;
pub mod metrics;
pub mod propagation;

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{PoisonError, RwLock};
use std::time::Duration;

use opentelemetry::global;
use opentelemetry::trace::TracerProvider as _;
use opentelemetry_otlp::WithExportConfig;
use opentelemetry_sdk::Resource;
use opentelemetry_sdk::metrics::{PeriodicReader, SdkMeterProvider};
use opentelemetry_sdk::trace::{
    BatchConfigBuilder, BatchSpanProcessor, Sampler, SdkTracerProvider,
};
use tracing_subscriber::Layer as _;
use tracing_subscriber::layer::SubscriberExt as _;
use tracing_subscriber::util::SubscriberInitExt as _;

pub use config::{Config, Protocol, SamplerConfig};
pub use execution::ExecutionTrace;
pub use ids::SagaflowIdGenerator;
/// The OpenTelemetry API this crate uses (for `Context` and
/// `FutureExt::with_context` without a second copy of the crate).
pub use opentelemetry;

/// Telemetry could not be set up.
#[derive(Debug, thiserror::Error)]
pub enum TelemetryError {
    /// An `OTEL_*` variable has a value that cannot be used.
    #[error("telemetry configuration: {0}")]
    Config(String),
    /// The OTLP exporter could not be built.
    #[error("cannot build the OTLP {signal} exporter for {endpoint}: {message}")]
    Exporter {
        /// `traces` or `metrics`.
        signal: &'static str,
        /// The endpoint.
        endpoint: String,
        /// Why.
        message: String,
    },
    /// The exporters' runtime could not start.
    #[error("cannot start the telemetry runtime: {0}")]
    Runtime(#[from] std::io::Error),
}

static ENABLED: AtomicBool = AtomicBool::new(false);
static SAMPLER: RwLock<Option<Sampler>> = RwLock::new(None);

/// Whether spans and metrics are being recorded (an exporting [`init`], or
/// a test set-up). When false, [`ExecutionTrace::start`] returns `None`.
pub fn enabled() -> bool {
    ENABLED.load(Ordering::Relaxed)
}

/// The sampler in use (the default, parent-based always-on, before [`init`]).
pub(crate) fn sampler() -> Sampler {
    SAMPLER
        .read()
        .unwrap_or_else(PoisonError::into_inner)
        .clone()
        .unwrap_or_else(|| SamplerConfig::ParentBasedAlwaysOn.sampler())
}

fn install(
    tracer_provider: &SdkTracerProvider,
    meter_provider: &SdkMeterProvider,
    sampler: Sampler,
) {
    *SAMPLER.write().unwrap_or_else(PoisonError::into_inner) = Some(sampler);
    global::set_tracer_provider(tracer_provider.clone());
    global::set_meter_provider(meter_provider.clone());
    ENABLED.store(true, Ordering::Relaxed);
}

/// Sets up logging and OpenTelemetry from the standard environment
/// variables (see [`Config::from_env`]); `service_name_default` is the
/// service name when `OTEL_SERVICE_NAME` is unset. Keep the guard alive
/// until the program ends.
///
/// On an error (a bad `OTEL_*` value, an exporter that cannot be built)
/// logging is set up all the same, without export: the program can report
/// the error and run on.
pub fn init(service_name_default: &str) -> Result<TelemetryGuard, TelemetryError> {
    match Config::from_env(service_name_default) {
        Ok(config) => init_with(config),
        Err(e) => {
            install_subscriber(Config::DEFAULT_LOG_FILTER, None);
            Err(e)
        }
    }
}

/// [`init`] with an explicit configuration.
///
/// Installs a global `tracing` subscriber (fmt to stderr, filtered by
/// `RUST_LOG` or [`Config::default_log_filter`]; plus the OpenTelemetry
/// layer, for `tracing` spans at INFO and above, when exporting), and the
/// global tracer and meter providers. If a global subscriber is already
/// installed it is left in place. On an error, logging is set up all the
/// same, without export.
pub fn init_with(config: Config) -> Result<TelemetryGuard, TelemetryError> {
    let (traces_url, metrics_url) = (config.traces_url(), config.metrics_url());
    if traces_url.is_none() && metrics_url.is_none() {
        install_subscriber(&config.default_log_filter, None);
        return Ok(TelemetryGuard { inner: None });
    }
    // reqwest may be built with rustls but no crypto provider (another crate
    // of the program asked for `rustls-no-provider`): building the HTTP
    // exporter's client would then panic. Install ring unless a provider is
    // installed already (Err: that one is used).
    let _ = rustls::crypto::ring::default_provider().install_default();
    // The exporters (tonic, reqwest) live on a runtime of their own: they
    // work whatever runtime the program has (or none), and shutting them
    // down never waits on the program's threads.
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .thread_name("sagaflow-otel")
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(e) => {
            install_subscriber(&config.default_log_filter, None);
            return Err(e.into());
        }
    };
    let built = {
        let _entered = runtime.enter();
        build_providers(&config, traces_url.as_deref(), metrics_url.as_deref())
    };
    let (tracer_provider, meter_provider) = match built {
        Ok(providers) => providers,
        Err(e) => {
            // Dropping a runtime blocks, which panics when `init` is
            // called from async code.
            runtime.shutdown_background();
            install_subscriber(&config.default_log_filter, None);
            return Err(e);
        }
    };
    // Traces not exported (`OTEL_TRACES_EXPORTER=none`, metrics still on):
    // no trace is sampled, so no span is built and no trace id is shown.
    let sampler = match traces_url {
        Some(_) => config.sampler.sampler(),
        None => Sampler::AlwaysOff,
    };
    install(&tracer_provider, &meter_provider, sampler);
    install_subscriber(
        &config.default_log_filter,
        Some(tracer_provider.tracer("sagaflow")),
    );
    Ok(TelemetryGuard {
        inner: Some(Providers {
            tracer_provider,
            meter_provider,
            runtime: Some(runtime),
        }),
    })
}

fn resource(config: &Config) -> Resource {
    Resource::builder()
        .with_service_name(config.service_name.clone())
        .build()
}

fn build_providers(
    config: &Config,
    traces_url: Option<&str>,
    metrics_url: Option<&str>,
) -> Result<(SdkTracerProvider, SdkMeterProvider), TelemetryError> {
    let exporter_error = |signal: &'static str, endpoint: &str| {
        let endpoint = endpoint.to_string();
        move |e: opentelemetry_otlp::ExporterBuildError| TelemetryError::Exporter {
            signal,
            endpoint: endpoint.clone(),
            message: e.to_string(),
        }
    };
    let span_exporter = match traces_url {
        None => None,
        Some(url) => Some(
            match config.protocol {
                Protocol::Grpc => opentelemetry_otlp::SpanExporter::builder()
                    .with_tonic()
                    .with_endpoint(url)
                    .with_timeout(config.export_timeout)
                    .build(),
                Protocol::HttpProtobuf => opentelemetry_otlp::SpanExporter::builder()
                    .with_http()
                    .with_protocol(opentelemetry_otlp::Protocol::HttpBinary)
                    .with_endpoint(url)
                    .with_timeout(config.export_timeout)
                    .build(),
            }
            .map_err(exporter_error("traces", url))?,
        ),
    };
    let metric_exporter = match metrics_url {
        None => None,
        Some(url) => Some(
            match config.protocol {
                Protocol::Grpc => opentelemetry_otlp::MetricExporter::builder()
                    .with_tonic()
                    .with_endpoint(url)
                    .with_timeout(config.export_timeout)
                    .build(),
                Protocol::HttpProtobuf => opentelemetry_otlp::MetricExporter::builder()
                    .with_http()
                    .with_protocol(opentelemetry_otlp::Protocol::HttpBinary)
                    .with_endpoint(url)
                    .with_timeout(config.export_timeout)
                    .build(),
            }
            .map_err(exporter_error("metrics", url))?,
        ),
    };
    // A signal that is not exported gets a provider with nothing behind it.
    let mut tracer_provider = SdkTracerProvider::builder();
    if let Some(span_exporter) = span_exporter {
        let processor = BatchSpanProcessor::builder(span_exporter)
            .with_batch_config(
                BatchConfigBuilder::default()
                    .with_max_queue_size(config.max_queue_size)
                    .build(),
            )
            .build();
        tracer_provider = tracer_provider.with_span_processor(processor);
    }
    let tracer_provider = tracer_provider
        .with_sampler(config.sampler.sampler())
        .with_id_generator(SagaflowIdGenerator::default())
        .with_resource(resource(config))
        .build();
    let mut meter_provider = SdkMeterProvider::builder();
    if let Some(metric_exporter) = metric_exporter {
        let reader = PeriodicReader::builder(metric_exporter)
            .with_interval(config.metric_interval)
            .build();
        meter_provider = meter_provider.with_reader(reader);
    }
    let meter_provider = meter_provider.with_resource(resource(config)).build();
    Ok((tracer_provider, meter_provider))
}

/// An error and its causes on one line, `outer: cause: root`, leaving out a
/// cause whose text the line already holds: many errors (NATS's among them)
/// print their source in their own message, and listing each cause after
/// it would repeat it.
///
/// ```
/// #[derive(Debug)]
/// struct Outer(std::io::Error);
/// impl std::fmt::Display for Outer {
///     fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
///         write!(f, "cannot deploy: {}", self.0)
///     }
/// }
/// impl std::error::Error for Outer {
///     fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
///         Some(&self.0)
///     }
/// }
/// let e = Outer(std::io::Error::other("connection refused"));
/// assert_eq!(sagaflow_telemetry::error_report(&e), "cannot deploy: connection refused");
/// ```
pub fn error_report(error: &(dyn std::error::Error + 'static)) -> String {
    let mut line = String::new();
    let mut next = Some(error);
    while let Some(cause) = next {
        let text = cause.to_string();
        if !line.contains(&text) {
            if !line.is_empty() {
                line.push_str(": ");
            }
            line.push_str(&text);
        }
        next = cause.source();
    }
    line
}

/// Whether logs on stderr get colours: only on a terminal (a log file or a
/// collector gets plain text), and not when `NO_COLOR` is set.
pub fn colour_logs() -> bool {
    use std::io::IsTerminal as _;
    std::io::stderr().is_terminal() && std::env::var_os("NO_COLOR").is_none_or(|v| v.is_empty())
}

fn install_subscriber(default_filter: &str, tracer: Option<opentelemetry_sdk::trace::SdkTracer>) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(default_filter));
    let fmt = tracing_subscriber::fmt::layer()
        .with_writer(std::io::stderr)
        .with_ansi(colour_logs())
        .with_filter(filter);
    let otel = tracer.map(|t| {
        tracing_opentelemetry::layer()
            .with_tracer(t)
            .with_filter(tracing_subscriber::filter::LevelFilter::INFO)
    });
    let _ = tracing_subscriber::registry()
        .with(fmt)
        .with(otel)
        .try_init();
}

struct Providers {
    tracer_provider: SdkTracerProvider,
    meter_provider: SdkMeterProvider,
    runtime: Option<tokio::runtime::Runtime>,
}

/// Keeps telemetry running; flushes and stops it when dropped (waiting at
/// most a few seconds, never forever, from any thread or runtime).
#[must_use = "telemetry stops when the guard is dropped"]
pub struct TelemetryGuard {
    inner: Option<Providers>,
}

impl std::fmt::Debug for TelemetryGuard {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TelemetryGuard")
            .field("exporting", &self.exporting())
            .finish()
    }
}

/// The longest a guard waits for the last export when it is dropped.
pub const SHUTDOWN_WAIT: Duration = Duration::from_secs(5);

impl TelemetryGuard {
    /// Whether spans and metrics are exported.
    pub fn exporting(&self) -> bool {
        self.inner.is_some()
    }

    /// Exports what is waiting now (spans and metrics), waiting at most
    /// [`SHUTDOWN_WAIT`]. Returns whether it finished in time without error.
    pub fn flush(&self) -> bool {
        let Some(p) = &self.inner else { return true };
        let (t, m) = (p.tracer_provider.clone(), p.meter_provider.clone());
        off_thread(move || t.force_flush().is_ok() && m.force_flush().is_ok())
    }

    fn stop(&mut self) {
        let Some(mut p) = self.inner.take() else {
            return;
        };
        ENABLED.store(false, Ordering::Relaxed);
        let (t, m) = (p.tracer_provider.clone(), p.meter_provider.clone());
        off_thread(move || {
            let a = t.shutdown_with_timeout(SHUTDOWN_WAIT).is_ok();
            let b = m.shutdown_with_timeout(SHUTDOWN_WAIT).is_ok();
            a && b
        });
        if let Some(rt) = p.runtime.take() {
            rt.shutdown_background();
        }
    }
}

/// Runs `work` on a thread of its own and waits for it at most
/// [`SHUTDOWN_WAIT`]: callable from async code and from drops.
fn off_thread(work: impl FnOnce() -> bool + Send + 'static) -> bool {
    let (tx, rx) = std::sync::mpsc::channel();
    let spawned = std::thread::Builder::new()
        .name("sagaflow-otel-flush".into())
        .spawn(move || {
            let _ = tx.send(work());
        });
    spawned.is_ok() && rx.recv_timeout(SHUTDOWN_WAIT).unwrap_or(false)
}

impl Drop for TelemetryGuard {
    fn drop(&mut self) {
        self.stop();
    }
}

/// For tests of code that emits spans: an SDK in-memory exporter.
#[cfg(feature = "testing")]
pub mod testing {
    use opentelemetry::trace::TracerProvider as _;
    use opentelemetry_sdk::metrics::{InMemoryMetricExporter, PeriodicReader, SdkMeterProvider};
    use opentelemetry_sdk::trace::{InMemorySpanExporter, SdkTracerProvider};

    use super::*;

    /// What [`init`] returns.
    pub struct Testing {
        /// Every span that ended, exported at once.
        pub spans: InMemorySpanExporter,
        /// Metrics, exported by [`Testing::flush_metrics`].
        pub metrics: InMemoryMetricExporter,
        /// The tracer provider.
        pub tracer_provider: SdkTracerProvider,
        /// The meter provider.
        pub meter_provider: SdkMeterProvider,
    }

    impl Testing {
        /// Exports the metrics recorded so far to [`Testing::metrics`].
        pub fn flush_metrics(&self) {
            let _ = self.meter_provider.force_flush();
        }
    }

    /// Installs global providers that export to memory (spans one by one,
    /// as they end), the `tracing` bridge, and turns [`enabled`] on. Call
    /// once per test process.
    pub fn init() -> Testing {
        let spans = InMemorySpanExporter::default();
        let metrics = InMemoryMetricExporter::default();
        let tracer_provider = SdkTracerProvider::builder()
            .with_simple_exporter(spans.clone())
            .with_id_generator(SagaflowIdGenerator::default())
            .build();
        let meter_provider = SdkMeterProvider::builder()
            .with_reader(PeriodicReader::builder(metrics.clone()).build())
            .build();
        install(
            &tracer_provider,
            &meter_provider,
            SamplerConfig::ParentBasedAlwaysOn.sampler(),
        );
        install_subscriber("warn", Some(tracer_provider.tracer("sagaflow")));
        Testing {
            spans,
            metrics,
            tracer_provider,
            meter_provider,
        }
    }
}
