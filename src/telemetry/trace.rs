//! W3C trace context in and out: a caller's `traceparent` becomes the parent of the
//! request span, and each Vault request carries the current span's `traceparent`.
//!
//! Both are no-ops unless traces are exported ([`super::exporting_traces`]; no propagator
//! is installed otherwise), so an unconfigured sidecar adds no header, parses none, and
//! does not even look.

use opentelemetry_http::{HeaderExtractor, HeaderInjector};
use tracing::Span;
use tracing_opentelemetry::OpenTelemetrySpanExt as _;

/// Makes the trace context in `headers` (if any) the parent of `span`.
pub fn continue_from(span: &Span, headers: &http::HeaderMap) {
    if !super::exporting_traces() || span.is_disabled() {
        return;
    }
    let parent =
        opentelemetry::global::get_text_map_propagator(|p| p.extract(&HeaderExtractor(headers)));
    let _ = span.set_parent(parent);
}

/// Adds the current span's context (`traceparent`, `tracestate`) to outgoing `headers`.
pub fn inject_current(headers: &mut http::HeaderMap) {
    if !super::exporting_traces() {
        return;
    }
    let cx = Span::current().context();
    opentelemetry::global::get_text_map_propagator(|p| {
        p.inject_context(&cx, &mut HeaderInjector(headers))
    });
}

/// Marks `span` as failed for trace backends (`otel.status_code`), with a message.
pub fn mark_error(span: &Span, message: &str) {
    if span.is_disabled() {
        return;
    }
    span.set_status(opentelemetry::trace::Status::error(message.to_string()));
}
