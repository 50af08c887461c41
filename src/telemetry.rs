//! Logging (and, later, traces and metrics). Decides nothing; only records.
//!
//! Logs go to stderr: JSON when not on a terminal (containers), readable text on one,
//! filtered by `RUST_LOG` (read by `config`, passed in here). No secret is ever logged:
//! tokens live in `config::Secret`, whose `Debug` is redacted, and inputs are never
//! recorded, only key names and versions.

use std::io::IsTerminal;

use tracing_subscriber::{fmt, EnvFilter};

/// Without `RUST_LOG`: info, minus the HTTP-client crates' own error reports of failed
/// Vault calls (Aegis logs each failure once, with its meaning).
const DEFAULT_FILTER: &str = "info,rustify=off,vaultrs=warn";

use crate::config::LogFormat;

/// Installs the global subscriber. Safe to call more than once (later calls are no-ops).
pub fn init(format: LogFormat, filter: Option<&str>) {
    let filter = EnvFilter::try_new(filter.unwrap_or(DEFAULT_FILTER))
        .unwrap_or_else(|_| EnvFilter::new(DEFAULT_FILTER));
    let json = match format {
        LogFormat::Json => true,
        LogFormat::Text => false,
        LogFormat::Auto => !std::io::stderr().is_terminal(),
    };
    let builder = fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_target(false);
    let _ = if json {
        builder
            .json()
            .flatten_event(true)
            .with_current_span(false)
            .try_init()
    } else {
        builder.try_init()
    };
}
