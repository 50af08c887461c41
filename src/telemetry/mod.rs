//! Logs, traces and metrics. Decides nothing; only records.
//!
//! - **Logs** go to stderr: JSON when not on a terminal (containers), readable text on one,
//!   filtered by `RUST_LOG` (read by `config`, passed in here).
//! - **Traces** (when an OTLP endpoint is configured): `tracing` spans of the `aegis`
//!   crate, at info and above whatever `RUST_LOG` says, go through `tracing-opentelemetry`
//!   to a batch exporter (gRPC or HTTP/protobuf). Export runs on the SDK's own thread with
//!   a bounded queue: a slow or dead receiver drops spans, never delays a request. A
//!   caller's W3C `traceparent` continues into the request span ([`trace`]). Without an
//!   endpoint no span is built at all (the log layer takes events only), so a request
//!   pays nothing for tracing; with one, log lines also carry their spans.
//! - **Metrics** ([`metrics`]): OpenTelemetry instruments, read by the Prometheus text
//!   exporter behind `GET /metrics`, and pushed over OTLP when configured.
//!
//! No secret is ever recorded: tokens live in `config::Secret`, whose `Debug` is
//! redacted, and inputs are never recorded, only key names and versions.

pub mod metrics;
pub mod trace;

use std::collections::HashMap;
use std::io::IsTerminal;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::OnceLock;
use std::time::Duration;

use opentelemetry::trace::TracerProvider as _;
use opentelemetry::KeyValue;
use opentelemetry_otlp::{WithExportConfig, WithHttpConfig, WithTonicConfig};
use opentelemetry_sdk::metrics::{PeriodicReader, SdkMeterProvider};
use opentelemetry_sdk::trace::SdkTracerProvider;
use opentelemetry_sdk::Resource;
use tracing::Level;
use tracing_subscriber::filter::{filter_fn, FilterExt as _, Targets};
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;
use tracing_subscriber::{fmt, EnvFilter, Layer, Registry};

use crate::config::{LogFormat, OtlpExport, OtlpProtocol, Sampler, TelemetryConfig};

/// Without `RUST_LOG`: info.
const DEFAULT_FILTER: &str = "info";

/// Added to every filter that does not name these crates: the Vault client crates'
/// own reports of failed calls ("Server returned error", a multi-line dump of Vault's
/// answer), which Aegis logs once with their meaning.
const QUIET_CRATES: &str = "rustify=off,vaultrs=off";

/// The log filter: `RUST_LOG` (or the default), with the Vault client crates quiet unless
/// it names them.
fn log_filter(filter: Option<&str>) -> String {
    let filter = filter.unwrap_or(DEFAULT_FILTER);
    if filter.contains("rustify") || filter.contains("vaultrs") {
        filter.to_string()
    } else {
        format!("{filter},{QUIET_CRATES}")
    }
}

/// What was installed, kept for `/metrics` and for the flush at exit.
struct Installed {
    registry: prometheus::Registry,
    meter_provider: SdkMeterProvider,
    tracer_provider: Option<SdkTracerProvider>,
}

static INSTALLED: OnceLock<Installed> = OnceLock::new();

/// Whether spans are exported (set once by [`init`]). Without it no span is built, and
/// the trace context is neither read from callers nor sent to Vault.
static EXPORTING_TRACES: AtomicBool = AtomicBool::new(false);

/// True when spans are exported over OTLP: only then are trace contexts propagated.
pub fn exporting_traces() -> bool {
    EXPORTING_TRACES.load(Ordering::Relaxed)
}

type BoxedLayer = Box<dyn Layer<Registry> + Send + Sync>;

/// Installs logging, tracing export and the meter provider. Safe to call more than once
/// (later calls are no-ops). Call inside the Tokio runtime (the gRPC exporter needs it)
/// and before any metric is recorded. Export problems are logged, never fatal.
pub fn init(format: LogFormat, filter: Option<&str>, telemetry: &TelemetryConfig) {
    if INSTALLED.get().is_some() {
        return;
    }
    let resource = resource(telemetry);
    let mut problems = Vec::new();
    let tracer_provider = telemetry.traces.as_ref().and_then(|export| {
        tracer_provider(export, &telemetry.sampler, resource.clone())
            .map_err(|e| problems.push(format!("traces: {e}")))
            .ok()
    });
    let registry = prometheus::Registry::new();
    let meter_provider = meter_provider(telemetry, &registry, resource, &mut problems);

    let mut layers: Vec<BoxedLayer> = vec![log_layer(format, filter, tracer_provider.is_some())];
    if let Some(provider) = &tracer_provider {
        EXPORTING_TRACES.store(true, Ordering::Relaxed);
        let tracer = provider.tracer("aegis");
        layers.push(
            tracing_opentelemetry::layer()
                .with_tracer(tracer)
                .with_filter(Targets::new().with_target("aegis", Level::INFO))
                .boxed(),
        );
        opentelemetry::global::set_text_map_propagator(
            opentelemetry_sdk::propagation::TraceContextPropagator::new(),
        );
    }
    opentelemetry::global::set_meter_provider(meter_provider.clone());
    let _ = tracing_subscriber::registry().with(layers).try_init();
    let _ = INSTALLED.set(Installed {
        registry,
        meter_provider,
        tracer_provider,
    });
    for p in problems {
        tracing::error!(problem = %p, "OpenTelemetry export disabled");
    }
    if let Some(t) = &telemetry.traces {
        tracing::info!(endpoint = %t.endpoint, protocol = ?t.protocol, "exporting traces over OTLP");
    }
    if let Some(m) = &telemetry.metrics {
        tracing::info!(endpoint = %m.endpoint, protocol = ?m.protocol, interval_ms = telemetry.metrics_interval.as_millis() as u64, "exporting metrics over OTLP");
    }
}

/// The metrics in Prometheus' text format (version 0.0.4).
pub fn render_metrics() -> String {
    let Some(installed) = INSTALLED.get() else {
        return String::new();
    };
    prometheus::TextEncoder::new()
        .encode_to_string(&installed.registry.gather())
        .unwrap_or_else(|e| format!("# metrics could not be encoded: {e}\n"))
}

/// How long the exit waits for the last spans and metrics to be exported.
const EXIT_FLUSH: Duration = Duration::from_secs(3);

/// Exports what is still buffered (spans, a last metrics push), waiting at most
/// `EXIT_FLUSH` (3 s): a dead receiver never holds up the exit. Called once at exit.
pub fn shutdown() {
    let Some(installed) = INSTALLED.get() else {
        return;
    };
    let (done, finished) = std::sync::mpsc::channel();
    let tracer = installed.tracer_provider.clone();
    let meter = installed.meter_provider.clone();
    std::thread::spawn(move || {
        if let Some(t) = tracer {
            if let Err(e) = t.shutdown_with_timeout(EXIT_FLUSH) {
                tracing::warn!(error = %e, "could not export the last spans");
            }
        }
        if let Err(e) = meter.shutdown() {
            tracing::debug!(error = %e, "could not export the last metrics");
        }
        let _ = done.send(());
    });
    if finished.recv_timeout(EXIT_FLUSH).is_err() {
        tracing::warn!(
            timeout_s = EXIT_FLUSH.as_secs(),
            "telemetry not exported in time at exit; exiting without it"
        );
    }
}

/// The stderr log layer. With `spans` false (no trace export) it takes events only: no
/// layer then wants a span, so `tracing` builds none and a request's spans cost nothing
/// (its log lines carry no span list). With trace export the spans exist anyway and log
/// lines list them as before.
fn log_layer(format: LogFormat, filter: Option<&str>, spans: bool) -> BoxedLayer {
    let filter =
        EnvFilter::try_new(log_filter(filter)).unwrap_or_else(|_| EnvFilter::new(log_filter(None)));
    let filter = filter.and(filter_fn(move |meta| spans || meta.is_event()));
    let json = match format {
        LogFormat::Json => true,
        LogFormat::Text => false,
        LogFormat::Auto => !std::io::stderr().is_terminal(),
    };
    let base = fmt::layer()
        .with_writer(std::io::stderr)
        .with_target(false)
        .with_ansi(!json && std::io::stderr().is_terminal());
    if json {
        base.json()
            .flatten_event(true)
            .with_current_span(false)
            .with_filter(filter)
            .boxed()
    } else {
        base.with_filter(filter).boxed()
    }
}

fn resource(cfg: &TelemetryConfig) -> Resource {
    Resource::builder_empty()
        .with_service_name(cfg.service_name.clone())
        .with_attributes(
            cfg.resource_attributes
                .iter()
                .map(|(k, v)| KeyValue::new(k.clone(), v.clone()))
                .chain([
                    KeyValue::new("service.version", env!("CARGO_PKG_VERSION")),
                    KeyValue::new("telemetry.sdk.language", "rust"),
                    KeyValue::new("telemetry.sdk.name", "opentelemetry"),
                ]),
        )
        .build()
}

fn sampler(s: &Sampler) -> opentelemetry_sdk::trace::Sampler {
    use opentelemetry_sdk::trace::Sampler as S;
    match s {
        Sampler::AlwaysOn => S::AlwaysOn,
        Sampler::AlwaysOff => S::AlwaysOff,
        Sampler::TraceIdRatio(r) => S::TraceIdRatioBased(*r),
        Sampler::ParentBased(root) => S::ParentBased(Box::new(sampler(root))),
    }
}

fn tracer_provider(
    export: &OtlpExport,
    sampling: &Sampler,
    resource: Resource,
) -> Result<SdkTracerProvider, String> {
    let builder = opentelemetry_otlp::SpanExporter::builder();
    let exporter = match export.protocol {
        OtlpProtocol::Grpc => builder
            .with_tonic()
            .with_endpoint(&export.endpoint)
            .with_timeout(export.timeout)
            .with_metadata(grpc_metadata(export)?)
            .build(),
        OtlpProtocol::HttpProtobuf => builder
            .with_http()
            .with_endpoint(&export.endpoint)
            .with_timeout(export.timeout)
            .with_headers(http_headers(export))
            .build(),
    }
    .map_err(|e| e.to_string())?;
    Ok(SdkTracerProvider::builder()
        .with_batch_exporter(exporter)
        .with_sampler(sampler(sampling))
        .with_resource(resource)
        .build())
}

fn meter_provider(
    cfg: &TelemetryConfig,
    registry: &prometheus::Registry,
    resource: Resource,
    problems: &mut Vec<String>,
) -> SdkMeterProvider {
    let mut builder = SdkMeterProvider::builder().with_resource(resource);
    // Names are given in full (`aegis_requests_total`), the same in Prometheus and OTLP.
    match opentelemetry_prometheus::exporter()
        .with_registry(registry.clone())
        .without_units()
        .without_counter_suffixes()
        .without_target_info()
        .scope_info_enabled(false)
        .build()
    {
        Ok(exporter) => builder = builder.with_reader(exporter),
        Err(e) => problems.push(format!("prometheus: {e}")),
    }
    if let Some(export) = &cfg.metrics {
        let exporter = opentelemetry_otlp::MetricExporter::builder();
        let exporter = match export.protocol {
            OtlpProtocol::Grpc => grpc_metadata(export).and_then(|metadata| {
                exporter
                    .with_tonic()
                    .with_endpoint(&export.endpoint)
                    .with_timeout(export.timeout)
                    .with_metadata(metadata)
                    .build()
                    .map_err(|e| e.to_string())
            }),
            OtlpProtocol::HttpProtobuf => exporter
                .with_http()
                .with_endpoint(&export.endpoint)
                .with_timeout(export.timeout)
                .with_headers(http_headers(export))
                .build()
                .map_err(|e| e.to_string()),
        };
        match exporter {
            Ok(exporter) => {
                builder = builder.with_reader(
                    PeriodicReader::builder(exporter)
                        .with_interval(cfg.metrics_interval)
                        .build(),
                )
            }
            Err(e) => problems.push(format!("metrics: {e}")),
        }
    }
    builder.build()
}

fn http_headers(export: &OtlpExport) -> HashMap<String, String> {
    export
        .headers
        .iter()
        .map(|(k, v)| (k.clone(), v.expose().to_string()))
        .collect()
}

fn grpc_metadata(
    export: &OtlpExport,
) -> Result<opentelemetry_otlp::tonic_types::metadata::MetadataMap, String> {
    let mut headers = http::HeaderMap::new();
    for (k, v) in &export.headers {
        let name = http::HeaderName::from_bytes(k.to_ascii_lowercase().as_bytes())
            .map_err(|_| format!("OTEL_EXPORTER_OTLP_HEADERS: {k:?} is not a header name"))?;
        let value = http::HeaderValue::from_str(v.expose()).map_err(|_| {
            format!("OTEL_EXPORTER_OTLP_HEADERS: the value of {k:?} is not a valid header value")
        })?;
        headers.insert(name, value);
    }
    Ok(opentelemetry_otlp::tonic_types::metadata::MetadataMap::from_headers(headers))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_vault_client_crates_stay_quiet_unless_named() {
        assert_eq!(log_filter(None), "info,rustify=off,vaultrs=off");
        assert_eq!(log_filter(Some("warn")), "warn,rustify=off,vaultrs=off");
        assert_eq!(
            log_filter(Some("debug,vaultrs=debug")),
            "debug,vaultrs=debug"
        );
    }
}
