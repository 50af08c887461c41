//! Wiring and serving: builds the shared state, starts background tasks, serves HTTP.
//!
//! [`run`] takes an already-bound listener and a shutdown future, so tests bind
//! 127.0.0.1:0 and stop the server when they like (mini-redis style). HTTP/1.1 and h2c
//! (HTTP/2 with prior knowledge) are served on the same port.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use tokio::net::TcpListener;
use tracing::{error, info, warn};

use crate::api::{http, AppState, Readiness};
use crate::audit::Auditor;
use crate::config::{Config, ConfigErrors};
use crate::keys::{snapshot, KeyCache};
use crate::sign::Signer;
use crate::telemetry::metrics::{self, GaugeSources, KeyLabels};
use crate::vault::VaultClient;
use crate::verify::Verifier;

/// Builds the state shared by all requests. Fails on configuration that can only be
/// checked by reading files (TLS material): the caller exits with the config exit code.
pub fn build_state(config: Config) -> Result<Arc<AppState>, ConfigErrors> {
    let config = Arc::new(config);
    let vault = Arc::new(VaultClient::new(&config.vault)?);
    let keys = Arc::new(KeyCache::new(
        vault.clone(),
        config.transit_mount.clone(),
        Some(config.retention.clone()),
    ));
    let readiness = Arc::new(Readiness::default());
    readiness.set_not_ready("starting: the allowlisted keys are not loaded yet");
    let auditor = Auditor::start(&config.audit)
        .map_err(|e| ConfigErrors(vec![format!("cannot start the audit trail: {e}")]))?;
    let key_labels = Arc::new(KeyLabels::new(config.keys.clone()));
    Ok(Arc::new(AppState {
        auditor,
        signer: Signer::new(
            keys.clone(),
            vault.clone(),
            config.sign_max_batch,
            config.sign_max_in_flight,
        ),
        verifier: Verifier::new(keys.clone(), vault, key_labels.clone()),
        key_labels,
        keys,
        readiness,
        config,
    }))
}

/// Serves until `shutdown` completes. Background tasks stop with it.
pub async fn run(
    listener: TcpListener,
    state: Arc<AppState>,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    let addr = listener.local_addr()?;
    let metrics_listener = match state.config.telemetry.metrics_listen {
        Some(at) => Some(TcpListener::bind(at).await.inspect_err(
            |e| error!(addr = %at, error = %e, "cannot listen for metrics (AEGIS_METRICS_LISTEN)"),
        )?),
        None => None,
    };
    register_gauges(&state);
    restore_snapshot(&state).await;
    let vault = state.keys.vault_arc();
    let mut tasks = vec![
        tokio::spawn(vault.run_auth()),
        tokio::spawn(become_ready(state.clone())),
        tokio::spawn(
            state
                .keys
                .clone()
                .run_refresher(state.config.refresh_interval),
        ),
    ];
    if let Some(dir) = &state.config.cache_dir {
        tasks.push(tokio::spawn(
            state
                .keys
                .clone()
                .run_snapshotter(dir.clone(), state.config.vault.addrs.clone()),
        ));
    }
    if let Some(listener) = metrics_listener {
        let at = listener.local_addr()?;
        info!(addr = %at, "serving /metrics, /healthz and /readyz");
        let router = http::admin_router(state.clone());
        tasks.push(tokio::spawn(async move {
            if let Err(e) = axum::serve(listener, router).await {
                error!(error = %e, "metrics listener failed");
            }
        }));
    }
    let auditor = state.auditor.clone();
    let state_flush = state.config.audit.flush_timeout;
    info!(%addr, vault = ?state.config.vault.addrs, auth = state.config.vault.auth.method(), mount = %state.config.transit_mount, "aegis listening");
    let result = axum::serve(
        listener,
        http::router(state).into_make_service_with_connect_info::<std::net::SocketAddr>(),
    )
    .with_graceful_shutdown(shutdown)
    .await;
    for t in tasks {
        t.abort();
    }
    let pending = auditor.flush(state_flush).await;
    if pending > 0 {
        warn!(
            pending,
            "audit events not yet delivered; they stay spooled for the next start"
        );
    }
    result
}

/// Starts the alerting series at 0, and lets the state gauges (readiness, credential,
/// keys) read the running sidecar. They hold only a weak reference: a stopped server reads as not ready, with no keys.
fn register_gauges(state: &Arc<AppState>) {
    metrics::get().start_series(
        state.config.vault.auth.method(),
        state.config.keys.iter().flatten().map(String::as_str),
    );
    let weak = Arc::downgrade(state);
    let (w1, w2) = (weak.clone(), weak.clone());
    metrics::register_gauges(GaugeSources {
        ready: Box::new(move || w1.upgrade().is_some_and(|s| s.ready().is_ok())),
        auth: Box::new(move || match w2.upgrade() {
            Some(s) => {
                let a = s.keys.vault().auth_status();
                (a.authenticated, a.expires_in)
            }
            None => (false, None),
        }),
        keys: Box::new(move || weak.upgrade().map(|s| s.keys.gauges()).unwrap_or_default()),
        rotation_period: state.config.rotation_period,
    });
}

/// Loads the keyset snapshot of `AEGIS_CACHE_DIR`, if any, so verification works before
/// Vault answers. A snapshot of another mount is ignored; a damaged one is refused whole.
async fn restore_snapshot(state: &AppState) {
    let Some(dir) = &state.config.cache_dir else {
        return;
    };
    match snapshot::read(dir) {
        Ok(None) => info!(dir = %dir.display(), "no keyset snapshot yet"),
        Ok(Some(p)) if p.mount != state.config.transit_mount => warn!(
            snapshot_mount = %p.mount,
            mount = %state.config.transit_mount,
            "keyset snapshot is for another Transit mount; ignored"
        ),
        Ok(Some(p)) => {
            let written_at = p.written_at.clone();
            let n = state.keys.restore(p).await;
            info!(keys = n, %written_at, "keysets restored from the snapshot; verifying from them until Vault answers");
        }
        Err(e) => error!(error = %e, "keyset snapshot refused; starting without it"),
    }
}

/// Waits for Vault to accept the credential, loads every allowlisted key (and refreshes
/// keys restored from a snapshot), then marks the sidecar ready. Loading retries quickly
/// at first so readiness follows Vault closely.
async fn become_ready(state: Arc<AppState>) {
    let vault = state.keys.vault();
    vault.wait_authenticated().await;
    state.keys.refresh_all().await;
    let mut delay = Duration::from_millis(50);
    loop {
        match load_allowlisted(&state).await {
            Ok(()) => {
                state.readiness.set_ready();
                info!("ready: Vault accepted the credential and the allowlisted keys are loaded");
                return;
            }
            Err(reason) => {
                warn!(%reason, retry_in_ms = delay.as_millis() as u64, "not ready");
                state.readiness.set_not_ready(reason);
            }
        }
        tokio::time::sleep(delay).await;
        delay = (delay * 2).min(Duration::from_secs(5));
    }
}

async fn load_allowlisted(state: &AppState) -> Result<(), String> {
    if let Some(keys) = &state.config.keys {
        for key in keys {
            state
                .keys
                .get(key)
                .await
                .map_err(|e| format!("cannot load allowlisted key {key:?}: {e}"))?;
        }
    }
    Ok(())
}
