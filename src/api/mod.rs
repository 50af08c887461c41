//! The faces callers talk to. `http` speaks Vault's own HTTP API (gRPC comes later).
//!
//! This layer knows routes and wire formats; it renders [`crate::error::Error`] through
//! the single status mapping in `error.rs`, and decides nothing about keys or Vault.

pub mod http;

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

use crate::config::Config;
use crate::keys::KeyCache;
use crate::sign::Signer;
use crate::verify::Verifier;

/// Startup latch: true once the allowlisted keys are loaded. Readiness as a whole also
/// needs a live Vault credential: see [`AppState::ready`].
#[derive(Default)]
pub struct Readiness {
    ready: AtomicBool,
    reason: Mutex<String>,
}

impl Readiness {
    pub fn set_ready(&self) {
        self.ready.store(true, Ordering::Release);
    }
    pub fn set_not_ready(&self, reason: impl Into<String>) {
        self.ready.store(false, Ordering::Release);
        *self.reason.lock().expect("readiness lock") = reason.into();
    }
    pub fn is_ready(&self) -> bool {
        self.ready.load(Ordering::Acquire)
    }
    pub fn reason(&self) -> String {
        self.reason.lock().expect("readiness lock").clone()
    }
}

impl AppState {
    /// Ready to sign: Vault accepts the sidecar's credential now and the allowlisted keys
    /// are loaded. Verification from cache works whether ready or not.
    pub fn ready(&self) -> Result<(), String> {
        let auth = self.keys.vault().auth_status();
        if !auth.authenticated {
            return Err(format!(
                "not authenticated to Vault ({} auth): {}",
                auth.method,
                auth.last_error.as_deref().unwrap_or("login pending")
            ));
        }
        if !self.readiness.is_ready() {
            return Err(self.readiness.reason());
        }
        Ok(())
    }
}

/// What every handler shares.
pub struct AppState {
    pub config: Arc<Config>,
    pub keys: Arc<KeyCache>,
    pub signer: Signer,
    pub verifier: Verifier,
    pub readiness: Arc<Readiness>,
}
