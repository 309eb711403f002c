//! What [`crate::init`] reads from the environment: the standard
//! OpenTelemetry variables.

use std::time::Duration;

use opentelemetry_sdk::trace::Sampler;

use crate::TelemetryError;

/// The largest `OTEL_BSP_MAX_QUEUE_SIZE`: the exporter allocates its whole
/// queue at start-up, so a huge value would exhaust memory before the first
/// span.
const MAX_QUEUE_SIZE: usize = 65_536;

/// How spans and metrics travel to the collector
/// (`OTEL_EXPORTER_OTLP_PROTOCOL`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Protocol {
    /// OTLP over gRPC (`grpc`, the default; port 4317).
    Grpc,
    /// OTLP over HTTP with protobuf bodies (`http/protobuf`; port 4318).
    HttpProtobuf,
}

/// Which traces are kept (`OTEL_TRACES_SAMPLER` and `OTEL_TRACES_SAMPLER_ARG`).
#[derive(Debug, Clone, PartialEq)]
pub enum SamplerConfig {
    /// `always_on`.
    AlwaysOn,
    /// `always_off`.
    AlwaysOff,
    /// `traceidratio` with the ratio.
    TraceIdRatio(f64),
    /// `parentbased_always_on` (the default).
    ParentBasedAlwaysOn,
    /// `parentbased_always_off`.
    ParentBasedAlwaysOff,
    /// `parentbased_traceidratio` with the ratio.
    ParentBasedTraceIdRatio(f64),
}

impl SamplerConfig {
    /// The SDK's sampler.
    pub fn sampler(&self) -> Sampler {
        match self {
            SamplerConfig::AlwaysOn => Sampler::AlwaysOn,
            SamplerConfig::AlwaysOff => Sampler::AlwaysOff,
            SamplerConfig::TraceIdRatio(r) => Sampler::TraceIdRatioBased(*r),
            SamplerConfig::ParentBasedAlwaysOn => Sampler::ParentBased(Box::new(Sampler::AlwaysOn)),
            SamplerConfig::ParentBasedAlwaysOff => {
                Sampler::ParentBased(Box::new(Sampler::AlwaysOff))
            }
            SamplerConfig::ParentBasedTraceIdRatio(r) => {
                Sampler::ParentBased(Box::new(Sampler::TraceIdRatioBased(*r)))
            }
        }
    }

    /// Parses the two variables; an unknown sampler name or a ratio that is
    /// not a number between 0 and 1 is an error (the specification says to
    /// fall back to the default; refusing tells the operator at once).
    pub fn parse(name: Option<&str>, arg: Option<&str>) -> Result<SamplerConfig, TelemetryError> {
        let ratio = || -> Result<f64, TelemetryError> {
            match arg.map(str::trim).filter(|a| !a.is_empty()) {
                None => Ok(1.0),
                Some(a) => match a.parse::<f64>() {
                    Ok(r) if (0.0..=1.0).contains(&r) => Ok(r),
                    _ => Err(TelemetryError::Config(format!(
                        "OTEL_TRACES_SAMPLER_ARG '{a}' is not a ratio between 0 and 1"
                    ))),
                },
            }
        };
        match name.map(|n| n.trim().to_ascii_lowercase()).as_deref() {
            None | Some("") | Some("parentbased_always_on") => {
                Ok(SamplerConfig::ParentBasedAlwaysOn)
            }
            Some("always_on") => Ok(SamplerConfig::AlwaysOn),
            Some("always_off") => Ok(SamplerConfig::AlwaysOff),
            Some("traceidratio") => Ok(SamplerConfig::TraceIdRatio(ratio()?)),
            Some("parentbased_always_off") => Ok(SamplerConfig::ParentBasedAlwaysOff),
            Some("parentbased_traceidratio") => {
                Ok(SamplerConfig::ParentBasedTraceIdRatio(ratio()?))
            }
            Some(other) => Err(TelemetryError::Config(format!(
                "OTEL_TRACES_SAMPLER '{other}' is not one of always_on, always_off, \
                 traceidratio, parentbased_always_on, parentbased_always_off, \
                 parentbased_traceidratio"
            ))),
        }
    }
}

/// Everything [`crate::init_with`] needs.
#[derive(Debug, Clone, PartialEq)]
pub struct Config {
    /// `service.name` of the resource (`OTEL_SERVICE_NAME`, else the
    /// program's default).
    pub service_name: String,
    /// Where to export (`OTEL_EXPORTER_OTLP_ENDPOINT`); `None` (and no
    /// signal endpoint below): no export, no spans, no metrics (only logs).
    /// Over `http/protobuf`, `/v1/traces` and `/v1/metrics` are appended.
    pub endpoint: Option<String>,
    /// Where traces go, used as is, before [`Config::endpoint`]
    /// (`OTEL_EXPORTER_OTLP_TRACES_ENDPOINT`).
    pub traces_endpoint: Option<String>,
    /// Where metrics go, used as is, before [`Config::endpoint`]
    /// (`OTEL_EXPORTER_OTLP_METRICS_ENDPOINT`).
    pub metrics_endpoint: Option<String>,
    /// Whether traces are exported (`OTEL_TRACES_EXPORTER`: `otlp`, the
    /// default, or `none`).
    pub traces: bool,
    /// Whether metrics are exported (`OTEL_METRICS_EXPORTER`: `otlp`, the
    /// default, or `none`; Jaeger, for one, takes no metrics).
    pub metrics: bool,
    /// `OTEL_EXPORTER_OTLP_PROTOCOL`.
    pub protocol: Protocol,
    /// `OTEL_TRACES_SAMPLER` (+ `_ARG`).
    pub sampler: SamplerConfig,
    /// Longest time one export may take (`OTEL_EXPORTER_OTLP_TIMEOUT`, in
    /// milliseconds; default 10 s). A collector that is down costs at most
    /// this per batch, on the exporter's own thread.
    pub export_timeout: Duration,
    /// Most spans waiting for export; beyond it new spans are dropped
    /// (`OTEL_BSP_MAX_QUEUE_SIZE`, default 2048).
    pub max_queue_size: usize,
    /// How often metrics are exported (`OTEL_METRIC_EXPORT_INTERVAL`, in
    /// milliseconds; default 60 s).
    pub metric_interval: Duration,
    /// The log filter when `RUST_LOG` is not set (for example `warn`).
    pub default_log_filter: String,
}

impl Config {
    /// The log filter when `RUST_LOG` is unset: warnings and errors.
    pub const DEFAULT_LOG_FILTER: &'static str = "warn";

    /// Where traces are exported, if they are.
    pub fn traces_url(&self) -> Option<String> {
        self.signal_url(self.traces, &self.traces_endpoint, "v1/traces")
    }

    /// Where metrics are exported, if they are.
    pub fn metrics_url(&self) -> Option<String> {
        self.signal_url(self.metrics, &self.metrics_endpoint, "v1/metrics")
    }

    fn signal_url(&self, on: bool, own: &Option<String>, path: &str) -> Option<String> {
        if !on {
            return None;
        }
        if let Some(own) = own {
            return Some(own.clone());
        }
        let endpoint = self.endpoint.as_ref()?;
        Some(match self.protocol {
            Protocol::Grpc => endpoint.clone(),
            Protocol::HttpProtobuf => format!("{}/{path}", endpoint.trim_end_matches('/')),
        })
    }

    /// The configuration from the process's environment.
    pub fn from_env(service_name_default: &str) -> Result<Config, TelemetryError> {
        Config::from_lookup(service_name_default, |name| std::env::var(name).ok())
    }

    /// The configuration from a lookup function (the environment, or a map in
    /// tests).
    pub fn from_lookup(
        service_name_default: &str,
        lookup: impl Fn(&str) -> Option<String>,
    ) -> Result<Config, TelemetryError> {
        let get = |name: &str| lookup(name).filter(|v| !v.trim().is_empty());
        let protocol = match get("OTEL_EXPORTER_OTLP_PROTOCOL").as_deref().map(str::trim) {
            None | Some("grpc") => Protocol::Grpc,
            Some("http/protobuf") => Protocol::HttpProtobuf,
            Some(other) => {
                return Err(TelemetryError::Config(format!(
                    "OTEL_EXPORTER_OTLP_PROTOCOL '{other}' is not supported (use grpc or http/protobuf)"
                )));
            }
        };
        let millis = |name: &str, default: u64| -> Result<Duration, TelemetryError> {
            match get(name) {
                None => Ok(Duration::from_millis(default)),
                Some(v) => v
                    .trim()
                    .parse::<u64>()
                    .map(Duration::from_millis)
                    .map_err(|_| {
                        TelemetryError::Config(format!(
                            "{name} '{v}' is not a number of milliseconds"
                        ))
                    }),
            }
        };
        let max_queue_size = match get("OTEL_BSP_MAX_QUEUE_SIZE") {
            None => 2048,
            Some(v) => v
                .trim()
                .parse::<usize>()
                .ok()
                .filter(|n| (1..=MAX_QUEUE_SIZE).contains(n))
                .ok_or_else(|| {
                    TelemetryError::Config(format!(
                        "OTEL_BSP_MAX_QUEUE_SIZE '{v}' is not a number from 1 to {MAX_QUEUE_SIZE}"
                    ))
                })?,
        };
        let exporter = |name: &str| -> Result<bool, TelemetryError> {
            match get(name).map(|v| v.trim().to_ascii_lowercase()).as_deref() {
                None | Some("otlp") => Ok(true),
                Some("none") => Ok(false),
                Some(other) => Err(TelemetryError::Config(format!(
                    "{name} '{other}' is not supported (use otlp or none)"
                ))),
            }
        };
        // The specification's switch for the whole SDK: nothing is exported.
        let disabled = match get("OTEL_SDK_DISABLED").map(|v| v.trim().to_ascii_lowercase()) {
            None => false,
            Some(v) if v == "true" => true,
            Some(v) if v == "false" => false,
            Some(v) => {
                return Err(TelemetryError::Config(format!(
                    "OTEL_SDK_DISABLED '{v}' is neither true nor false"
                )));
            }
        };
        let endpoint = |name: &str| get(name).map(|e| e.trim().to_string());
        Ok(Config {
            service_name: get("OTEL_SERVICE_NAME")
                .map(|s| s.trim().to_string())
                .unwrap_or_else(|| service_name_default.to_string()),
            endpoint: endpoint("OTEL_EXPORTER_OTLP_ENDPOINT"),
            traces_endpoint: endpoint("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT"),
            metrics_endpoint: endpoint("OTEL_EXPORTER_OTLP_METRICS_ENDPOINT"),
            traces: exporter("OTEL_TRACES_EXPORTER")? && !disabled,
            metrics: exporter("OTEL_METRICS_EXPORTER")? && !disabled,
            protocol,
            sampler: SamplerConfig::parse(
                get("OTEL_TRACES_SAMPLER").as_deref(),
                get("OTEL_TRACES_SAMPLER_ARG").as_deref(),
            )?,
            export_timeout: millis("OTEL_EXPORTER_OTLP_TIMEOUT", 10_000)?,
            max_queue_size,
            metric_interval: millis("OTEL_METRIC_EXPORT_INTERVAL", 60_000)?,
            default_log_filter: Config::DEFAULT_LOG_FILTER.to_string(),
        })
    }
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;

    use super::*;

    fn config(vars: &[(&str, &str)]) -> Result<Config, TelemetryError> {
        let map: HashMap<String, String> = vars
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        Config::from_lookup("svc", |k| map.get(k).cloned())
    }

    #[test]
    fn nothing_set_means_no_export() {
        let c = config(&[]).unwrap();
        assert_eq!(c.endpoint, None);
        assert_eq!(c.service_name, "svc");
        assert_eq!(c.protocol, Protocol::Grpc);
        assert_eq!(c.sampler, SamplerConfig::ParentBasedAlwaysOn);
        assert_eq!(c.export_timeout, Duration::from_secs(10));
    }

    #[test]
    fn the_standard_variables_are_read() {
        let c = config(&[
            ("OTEL_EXPORTER_OTLP_ENDPOINT", "http://jaeger:4318"),
            ("OTEL_EXPORTER_OTLP_PROTOCOL", "http/protobuf"),
            ("OTEL_SERVICE_NAME", "coordinator-1"),
            ("OTEL_TRACES_SAMPLER", "parentbased_traceidratio"),
            ("OTEL_TRACES_SAMPLER_ARG", "0.25"),
            ("OTEL_EXPORTER_OTLP_TIMEOUT", "500"),
        ])
        .unwrap();
        assert_eq!(c.endpoint.as_deref(), Some("http://jaeger:4318"));
        assert_eq!(c.protocol, Protocol::HttpProtobuf);
        assert_eq!(c.service_name, "coordinator-1");
        assert_eq!(c.sampler, SamplerConfig::ParentBasedTraceIdRatio(0.25));
        assert_eq!(c.export_timeout, Duration::from_millis(500));
    }

    #[test]
    fn signal_endpoints_exporters_and_the_sdk_switch() {
        let c = config(&[
            ("OTEL_EXPORTER_OTLP_ENDPOINT", "http://c:4318/"),
            ("OTEL_EXPORTER_OTLP_PROTOCOL", "http/protobuf"),
        ])
        .unwrap();
        assert_eq!(c.traces_url().as_deref(), Some("http://c:4318/v1/traces"));
        assert_eq!(c.metrics_url().as_deref(), Some("http://c:4318/v1/metrics"));

        // A signal's own endpoint wins and is taken as is; it alone turns
        // export on.
        let c = config(&[
            (
                "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT",
                "http://t:9/custom/traces",
            ),
            ("OTEL_EXPORTER_OTLP_PROTOCOL", "http/protobuf"),
        ])
        .unwrap();
        assert_eq!(c.traces_url().as_deref(), Some("http://t:9/custom/traces"));
        assert_eq!(c.metrics_url(), None);

        // Metrics off (Jaeger takes none); traces still go.
        let c = config(&[
            ("OTEL_EXPORTER_OTLP_ENDPOINT", "http://jaeger:4317"),
            ("OTEL_METRICS_EXPORTER", "none"),
        ])
        .unwrap();
        assert_eq!(c.traces_url().as_deref(), Some("http://jaeger:4317"));
        assert_eq!(c.metrics_url(), None);

        // The whole SDK off: nothing is exported, whatever the endpoints.
        let c = config(&[
            ("OTEL_EXPORTER_OTLP_ENDPOINT", "http://jaeger:4317"),
            ("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", "http://t:9"),
            ("OTEL_SDK_DISABLED", "TRUE"),
        ])
        .unwrap();
        assert_eq!((c.traces_url(), c.metrics_url()), (None, None));
    }

    #[test]
    fn bad_values_are_refused_with_their_name() {
        for (k, v) in [
            ("OTEL_SDK_DISABLED", "yes"),
            ("OTEL_TRACES_EXPORTER", "zipkin"),
            ("OTEL_METRICS_EXPORTER", "prometheus"),
            ("OTEL_EXPORTER_OTLP_PROTOCOL", "http/json"),
            ("OTEL_TRACES_SAMPLER", "sometimes"),
            ("OTEL_EXPORTER_OTLP_TIMEOUT", "soon"),
            ("OTEL_BSP_MAX_QUEUE_SIZE", "0"),
            // The exporter's queue is allocated whole at start-up.
            ("OTEL_BSP_MAX_QUEUE_SIZE", "100000000000"),
        ] {
            let e = config(&[(k, v)]).unwrap_err().to_string();
            assert!(e.contains(k), "{e}");
        }
        let e = config(&[
            ("OTEL_TRACES_SAMPLER", "traceidratio"),
            ("OTEL_TRACES_SAMPLER_ARG", "1.5"),
        ])
        .unwrap_err();
        assert!(e.to_string().contains("OTEL_TRACES_SAMPLER_ARG"));
    }

    #[test]
    fn a_ratio_sampler_without_argument_keeps_everything() {
        let c = config(&[("OTEL_TRACES_SAMPLER", "TraceIdRatio")]).unwrap();
        assert_eq!(c.sampler, SamplerConfig::TraceIdRatio(1.0));
    }
}
