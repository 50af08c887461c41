//! Telemetry settings: the OpenTelemetry SDK's standard environment variables, read here
//! (and only here) into [`TelemetryConfig`], so the exporters are built from typed values.
//!
//! | variable | meaning | default |
//! |---|---|---|
//! | `OTEL_EXPORTER_OTLP_ENDPOINT` | base URL of the OTLP receiver (traces and metrics) | unset: no OTLP export |
//! | `OTEL_EXPORTER_OTLP_TRACES_ENDPOINT`, `..._METRICS_ENDPOINT` | per-signal URL, used as given | |
//! | `OTEL_EXPORTER_OTLP_PROTOCOL` (and `..._TRACES_PROTOCOL`, `..._METRICS_PROTOCOL`) | `grpc` or `http/protobuf` | `http/protobuf` |
//! | `OTEL_EXPORTER_OTLP_HEADERS` | `k=v,k2=v2`, percent-encoded values (kept secret) | |
//! | `OTEL_EXPORTER_OTLP_TIMEOUT` | export timeout, ms | 10000 |
//! | `OTEL_TRACES_EXPORTER`, `OTEL_METRICS_EXPORTER` | `otlp` or `none` (`prometheus` for metrics: `/metrics` only) | `otlp` when an endpoint is set |
//! | `OTEL_SERVICE_NAME` | `service.name` | `aegis` |
//! | `OTEL_RESOURCE_ATTRIBUTES` | `k=v,...` resource attributes | |
//! | `OTEL_TRACES_SAMPLER`, `OTEL_TRACES_SAMPLER_ARG` | `always_on`, `always_off`, `traceidratio`, `parentbased_*` | `parentbased_always_on` |
//! | `OTEL_METRIC_EXPORT_INTERVAL` | OTLP metrics push interval, ms | 60000 |
//! | `OTEL_SDK_DISABLED` | `true`: no OTLP export at all | false |
//! | `AEGIS_METRICS_LISTEN` | extra listener serving only `/metrics`, `/healthz`, `/readyz` | unset |
//!
//! Prometheus text at `GET /metrics` on the main listener is always on.

use std::net::SocketAddr;
use std::time::Duration;

use super::{parse_bool, Env, Secret};

/// How spans and metrics leave the process.
#[derive(Debug, Clone, PartialEq)]
pub struct TelemetryConfig {
    /// `service.name` of the resource.
    pub service_name: String,
    /// Other resource attributes (`OTEL_RESOURCE_ATTRIBUTES`), in order.
    pub resource_attributes: Vec<(String, String)>,
    /// Where spans go; `None`: not exported (no spans are built for export at all).
    pub traces: Option<OtlpExport>,
    /// Where metrics are pushed; `None`: `/metrics` only.
    pub metrics: Option<OtlpExport>,
    pub metrics_interval: Duration,
    pub sampler: Sampler,
    /// A second listener for scrapers (`AEGIS_METRICS_LISTEN`).
    pub metrics_listen: Option<SocketAddr>,
}

impl Default for TelemetryConfig {
    fn default() -> Self {
        TelemetryConfig {
            service_name: "aegis".into(),
            resource_attributes: Vec::new(),
            traces: None,
            metrics: None,
            metrics_interval: Duration::from_secs(60),
            sampler: Sampler::ParentBased(Box::new(Sampler::AlwaysOn)),
            metrics_listen: None,
        }
    }
}

/// One OTLP destination.
#[derive(Debug, Clone, PartialEq)]
pub struct OtlpExport {
    /// For gRPC the receiver's base URL; for HTTP the full URL of the signal's path.
    pub endpoint: String,
    pub protocol: OtlpProtocol,
    /// Sent with every export (often a collector's credential, hence secret).
    pub headers: Vec<(String, Secret)>,
    pub timeout: Duration,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OtlpProtocol {
    Grpc,
    HttpProtobuf,
}

/// `OTEL_TRACES_SAMPLER`.
#[derive(Debug, Clone, PartialEq)]
pub enum Sampler {
    AlwaysOn,
    AlwaysOff,
    TraceIdRatio(f64),
    /// Follows the caller's sampling decision; the inner sampler decides for root spans.
    ParentBased(Box<Sampler>),
}

/// The two signals exported over OTLP.
#[derive(Clone, Copy)]
enum Signal {
    Traces,
    Metrics,
}

impl Signal {
    fn upper(self) -> &'static str {
        match self {
            Signal::Traces => "TRACES",
            Signal::Metrics => "METRICS",
        }
    }
    fn http_path(self) -> &'static str {
        match self {
            Signal::Traces => "v1/traces",
            Signal::Metrics => "v1/metrics",
        }
    }
}

/// Reads the telemetry settings; problems are added to `errors`.
pub(super) fn telemetry_config(env: &dyn Env, errors: &mut Vec<String>) -> TelemetryConfig {
    let defaults = TelemetryConfig::default();
    let mut resource_attributes = match env.var("OTEL_RESOURCE_ATTRIBUTES") {
        Some(text) => key_values("OTEL_RESOURCE_ATTRIBUTES", &text, errors),
        None => Vec::new(),
    };
    let from_attributes = resource_attributes
        .iter()
        .position(|(k, _)| k == "service.name")
        .map(|i| resource_attributes.remove(i).1);
    let service_name = env
        .var("OTEL_SERVICE_NAME")
        .or(from_attributes)
        .unwrap_or(defaults.service_name);

    let disabled = match env.var("OTEL_SDK_DISABLED") {
        Some(v) => parse_bool(&v).unwrap_or_else(|| {
            errors.push(format!(
                "OTEL_SDK_DISABLED: expected true or false, got {v:?}"
            ));
            false
        }),
        None => false,
    };
    let headers: Vec<(String, Secret)> = match env.var("OTEL_EXPORTER_OTLP_HEADERS") {
        Some(text) => {
            // The values are not echoed in errors: they may be credentials.
            let mut problems = Vec::new();
            let pairs = key_values("", &text, &mut problems);
            if !problems.is_empty() {
                errors.push(
                    "OTEL_EXPORTER_OTLP_HEADERS: expected key=value pairs (values not shown)"
                        .into(),
                );
            }
            pairs
                .into_iter()
                .map(|(k, v)| (k, Secret::new(v)))
                .collect()
        }
        None => Vec::new(),
    };
    let timeout = match env.var("OTEL_EXPORTER_OTLP_TIMEOUT") {
        Some(v) => {
            millis("OTEL_EXPORTER_OTLP_TIMEOUT", &v, errors).unwrap_or(Duration::from_secs(10))
        }
        None => Duration::from_secs(10),
    };
    let mut export = |signal: Signal, exporters: &str| -> Option<OtlpExport> {
        let wanted = env.var(&format!("OTEL_{}_EXPORTER", signal.upper()));
        let choice = wanted.as_deref().unwrap_or("otlp");
        let names: Vec<&str> = choice.split(',').map(str::trim).collect();
        if let Some(bad) = names
            .iter()
            .find(|n| !exporters.split('|').any(|e| e == **n))
        {
            errors.push(format!(
                "OTEL_{}_EXPORTER: {bad:?} is not supported (expected {})",
                signal.upper(),
                exporters.replace('|', ", ")
            ));
            return None;
        }
        if disabled || !names.contains(&"otlp") {
            return None;
        }
        otlp_export(env, signal, headers.clone(), timeout, errors)
    };
    let traces = export(Signal::Traces, "otlp|none");
    let metrics = export(Signal::Metrics, "otlp|prometheus|none");

    let metrics_interval = match env.var("OTEL_METRIC_EXPORT_INTERVAL") {
        Some(v) => {
            millis("OTEL_METRIC_EXPORT_INTERVAL", &v, errors).unwrap_or(defaults.metrics_interval)
        }
        None => defaults.metrics_interval,
    };
    let sampler = sampler(env, errors).unwrap_or(defaults.sampler);
    let metrics_listen = env.var("AEGIS_METRICS_LISTEN").and_then(|v| {
        v.parse::<SocketAddr>()
            .map_err(|e| errors.push(format!("AEGIS_METRICS_LISTEN: {e} (got {v:?})")))
            .ok()
    });
    TelemetryConfig {
        service_name,
        resource_attributes,
        traces,
        metrics,
        metrics_interval,
        sampler,
        metrics_listen,
    }
}

/// The endpoint and protocol of one signal; `None` when no endpoint is configured.
fn otlp_export(
    env: &dyn Env,
    signal: Signal,
    headers: Vec<(String, Secret)>,
    timeout: Duration,
    errors: &mut Vec<String>,
) -> Option<OtlpExport> {
    let protocol_var = format!("OTEL_EXPORTER_OTLP_{}_PROTOCOL", signal.upper());
    let (name, protocol) = match env.var(&protocol_var) {
        Some(p) => (protocol_var, p),
        None => (
            "OTEL_EXPORTER_OTLP_PROTOCOL".to_string(),
            env.var("OTEL_EXPORTER_OTLP_PROTOCOL")
                .unwrap_or_else(|| "http/protobuf".into()),
        ),
    };
    let protocol = match protocol.as_str() {
        "grpc" => OtlpProtocol::Grpc,
        "http/protobuf" => OtlpProtocol::HttpProtobuf,
        other => {
            errors.push(format!(
                "{name}: expected grpc or http/protobuf, got {other:?}"
            ));
            return None;
        }
    };
    let signal_var = format!("OTEL_EXPORTER_OTLP_{}_ENDPOINT", signal.upper());
    let (name, endpoint) = if let Some(e) = env.var(&signal_var) {
        (signal_var, e)
    } else {
        let base = env.var("OTEL_EXPORTER_OTLP_ENDPOINT")?;
        let endpoint = match protocol {
            OtlpProtocol::Grpc => base,
            OtlpProtocol::HttpProtobuf => {
                format!("{}/{}", base.trim_end_matches('/'), signal.http_path())
            }
        };
        ("OTEL_EXPORTER_OTLP_ENDPOINT".to_string(), endpoint)
    };
    match url::Url::parse(&endpoint) {
        Ok(u) if matches!(u.scheme(), "http" | "https") && u.host().is_some() => {}
        _ => {
            errors.push(format!(
                "{name}: expected an http:// or https:// URL, got {endpoint:?}"
            ));
            return None;
        }
    }
    Some(OtlpExport {
        endpoint,
        protocol,
        headers,
        timeout,
    })
}

fn sampler(env: &dyn Env, errors: &mut Vec<String>) -> Option<Sampler> {
    let name = env.var("OTEL_TRACES_SAMPLER")?;
    let ratio = || -> Option<f64> {
        match env.var("OTEL_TRACES_SAMPLER_ARG") {
            None => Some(1.0),
            Some(v) => match v.trim().parse::<f64>() {
                Ok(r) if (0.0..=1.0).contains(&r) => Some(r),
                _ => None,
            },
        }
    };
    let sampler = match name.as_str() {
        "always_on" => Sampler::AlwaysOn,
        "always_off" => Sampler::AlwaysOff,
        "traceidratio" => Sampler::TraceIdRatio(ratio()?),
        "parentbased_always_on" => Sampler::ParentBased(Box::new(Sampler::AlwaysOn)),
        "parentbased_always_off" => Sampler::ParentBased(Box::new(Sampler::AlwaysOff)),
        "parentbased_traceidratio" => {
            Sampler::ParentBased(Box::new(Sampler::TraceIdRatio(ratio()?)))
        }
        other => {
            errors.push(format!(
                "OTEL_TRACES_SAMPLER: {other:?} is not supported (expected always_on, always_off, traceidratio, parentbased_always_on, parentbased_always_off or parentbased_traceidratio)"
            ));
            return None;
        }
    };
    Some(sampler)
}

/// A positive number of milliseconds.
fn millis(name: &str, v: &str, errors: &mut Vec<String>) -> Option<Duration> {
    match v.trim().parse::<u64>() {
        Ok(ms) if ms > 0 => Some(Duration::from_millis(ms)),
        _ => {
            errors.push(format!(
                "{name}: expected a positive number of milliseconds, got {v:?}"
            ));
            None
        }
    }
}

/// `k=v,k2=v2` with percent-encoded values (the W3C Baggage-like form the SDKs use).
fn key_values(name: &str, text: &str, errors: &mut Vec<String>) -> Vec<(String, String)> {
    let mut out = Vec::new();
    for pair in text.split(',').map(str::trim).filter(|p| !p.is_empty()) {
        match pair.split_once('=') {
            Some((k, v)) if !k.trim().is_empty() => {
                let value = percent_encoding::percent_decode_str(v.trim())
                    .decode_utf8_lossy()
                    .into_owned();
                out.push((k.trim().to_string(), value));
            }
            _ => errors.push(format!("{name}: expected key=value, got {pair:?}")),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn load<const N: usize>(env: [(&str, &str); N]) -> Result<TelemetryConfig, Vec<String>> {
        let mut errors = Vec::new();
        let c = telemetry_config(&env, &mut errors);
        if errors.is_empty() {
            Ok(c)
        } else {
            Err(errors)
        }
    }

    #[test]
    fn nothing_set_exports_nothing() {
        let c = load([]).unwrap();
        assert_eq!(c, TelemetryConfig::default());
        assert_eq!(c.service_name, "aegis");
    }

    #[test]
    fn base_endpoint_gets_signal_paths_over_http_and_stays_bare_over_grpc() {
        let c = load([("OTEL_EXPORTER_OTLP_ENDPOINT", "http://collector:4318/")]).unwrap();
        let t = c.traces.unwrap();
        assert_eq!(t.endpoint, "http://collector:4318/v1/traces");
        assert_eq!(t.protocol, OtlpProtocol::HttpProtobuf);
        assert_eq!(
            c.metrics.unwrap().endpoint,
            "http://collector:4318/v1/metrics"
        );

        let c = load([
            ("OTEL_EXPORTER_OTLP_ENDPOINT", "http://collector:4317"),
            ("OTEL_EXPORTER_OTLP_PROTOCOL", "grpc"),
            ("OTEL_EXPORTER_OTLP_METRICS_ENDPOINT", "http://other:4317"),
            ("OTEL_METRIC_EXPORT_INTERVAL", "500"),
        ])
        .unwrap();
        assert_eq!(c.traces.unwrap().endpoint, "http://collector:4317");
        let m = c.metrics.unwrap();
        assert_eq!(m.endpoint, "http://other:4317");
        assert_eq!(m.protocol, OtlpProtocol::Grpc);
        assert_eq!(c.metrics_interval, Duration::from_millis(500));
    }

    #[test]
    fn exporters_can_be_turned_off() {
        let base = ("OTEL_EXPORTER_OTLP_ENDPOINT", "http://c:4318");
        let c = load([base, ("OTEL_TRACES_EXPORTER", "none")]).unwrap();
        assert!(c.traces.is_none() && c.metrics.is_some());
        let c = load([base, ("OTEL_METRICS_EXPORTER", "prometheus")]).unwrap();
        assert!(c.traces.is_some() && c.metrics.is_none());
        let c = load([base, ("OTEL_SDK_DISABLED", "true")]).unwrap();
        assert!(c.traces.is_none() && c.metrics.is_none());
    }

    #[test]
    fn resource_sampler_and_headers() {
        let c = load([
            ("OTEL_EXPORTER_OTLP_ENDPOINT", "https://c:4318"),
            (
                "OTEL_RESOURCE_ATTRIBUTES",
                "service.name=from-attrs,k8s.pod.name=p%201, deployment.environment=prod",
            ),
            ("OTEL_TRACES_SAMPLER", "parentbased_traceidratio"),
            ("OTEL_TRACES_SAMPLER_ARG", "0.25"),
            ("OTEL_EXPORTER_OTLP_HEADERS", "authorization=Bearer%20abc"),
        ])
        .unwrap();
        assert_eq!(c.service_name, "from-attrs");
        assert_eq!(
            c.resource_attributes,
            vec![
                ("k8s.pod.name".to_string(), "p 1".to_string()),
                ("deployment.environment".to_string(), "prod".to_string())
            ]
        );
        assert_eq!(
            c.sampler,
            Sampler::ParentBased(Box::new(Sampler::TraceIdRatio(0.25)))
        );
        let t = c.traces.unwrap();
        assert_eq!(t.headers[0].0, "authorization");
        assert_eq!(t.headers[0].1.expose(), "Bearer abc");
        // OTEL_SERVICE_NAME wins over the attribute.
        let c = load([
            ("OTEL_SERVICE_NAME", "svc"),
            ("OTEL_RESOURCE_ATTRIBUTES", "service.name=x"),
        ])
        .unwrap();
        assert_eq!(c.service_name, "svc");
    }

    #[test]
    fn bad_values_are_reported_without_echoing_headers() {
        let errors = load([
            ("OTEL_EXPORTER_OTLP_ENDPOINT", "collector:4318"),
            ("OTEL_EXPORTER_OTLP_PROTOCOL", "http/json"),
            ("OTEL_TRACES_SAMPLER", "sometimes"),
            ("OTEL_METRIC_EXPORT_INTERVAL", "0"),
            ("OTEL_EXPORTER_OTLP_HEADERS", "s3cr3t-without-equals"),
            ("AEGIS_METRICS_LISTEN", "nowhere"),
            ("OTEL_TRACES_EXPORTER", "jaeger"),
        ])
        .unwrap_err();
        let all = errors.join("\n");
        for needle in [
            "OTEL_EXPORTER_OTLP_PROTOCOL",
            "OTEL_TRACES_SAMPLER",
            "OTEL_METRIC_EXPORT_INTERVAL",
            "OTEL_EXPORTER_OTLP_HEADERS",
            "AEGIS_METRICS_LISTEN",
            "OTEL_TRACES_EXPORTER",
        ] {
            assert!(all.contains(needle), "{needle} missing in {all}");
        }
        assert!(!all.contains("s3cr3t"), "{all}");
        let errors = load([("OTEL_EXPORTER_OTLP_ENDPOINT", "collector:4318")]).unwrap_err();
        assert!(errors[0].contains("http:// or https://"), "{errors:?}");
    }
}
