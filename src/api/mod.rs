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

/// Readiness latch: true once Vault accepted the credential and allowlisted keys loaded.
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

/// What every handler shares.
pub struct AppState {
    pub config: Arc<Config>,
    pub keys: Arc<KeyCache>,
    pub signer: Signer,
    pub verifier: Verifier,
    pub readiness: Arc<Readiness>,
}
