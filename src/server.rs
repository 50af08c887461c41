//! Wiring and serving: builds the shared state, starts background tasks, serves HTTP.
//!
//! [`run`] takes an already-bound listener and a shutdown future, so tests bind
//! 127.0.0.1:0 and stop the server when they like (mini-redis style). HTTP/1.1 and h2c
//! (HTTP/2 with prior knowledge) are served on the same port.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use tokio::net::TcpListener;
use tracing::{info, warn};

use crate::api::{http, AppState, Readiness};
use crate::config::Config;
use crate::keys::KeyCache;
use crate::sign::Signer;
use crate::vault::{VaultClient, VaultError};
use crate::verify::Verifier;

/// Builds the state shared by all requests.
pub fn build_state(config: Config) -> Result<Arc<AppState>, VaultError> {
    let config = Arc::new(config);
    let vault = Arc::new(VaultClient::new(&config.vault)?);
    let keys = Arc::new(KeyCache::new(vault.clone(), config.transit_mount.clone()));
    let readiness = Arc::new(Readiness::default());
    readiness.set_not_ready("starting: Vault has not yet accepted the credential");
    Ok(Arc::new(AppState {
        signer: Signer::new(keys.clone(), vault.clone()),
        verifier: Verifier::new(keys.clone(), vault),
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
    let startup = tokio::spawn(become_ready(state.clone()));
    let refresher = tokio::spawn(
        state
            .keys
            .clone()
            .run_refresher(state.config.refresh_interval),
    );
    info!(%addr, vault = %state.config.vault.addr, mount = %state.config.transit_mount, "aegis listening");
    let result = axum::serve(listener, http::router(state))
        .with_graceful_shutdown(shutdown)
        .await;
    startup.abort();
    refresher.abort();
    result
}

/// Polls Vault until it accepts the credential and every allowlisted key is loaded, then
/// flips readiness. Retries quickly at first so readiness follows Vault within ~100 ms.
async fn become_ready(state: Arc<AppState>) {
    let mut delay = Duration::from_millis(50);
    loop {
        match check_ready(&state).await {
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

async fn check_ready(state: &AppState) -> Result<(), String> {
    let vault = state.keys.vault();
    vault.reload_token().map_err(|e| e.to_string())?;
    let token = vault
        .lookup_self()
        .await
        .map_err(|e| format!("Vault did not accept the credential: {e}"))?;
    info!(display_name = %token.display_name, policies = ?token.policies, ttl_s = token.ttl, "Vault accepted the credential");
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
