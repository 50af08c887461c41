//! Aegis: a localhost signing sidecar backed by Vault/OpenBao Transit.
//!
//! Callers speak Transit's own API to Aegis on loopback. Aegis forwards signing to
//! Transit with its own credential, and verifies signatures locally from cached public
//! keys of every version it has seen. See ARCHITECTURE.md for the map of modules.
#![forbid(unsafe_code)]

pub mod api;
pub mod audit;
pub mod b64;
pub mod backoff;
pub mod cli;
pub mod config;
pub mod crypto;
pub mod dev;
pub mod error;
#[doc(hidden)]
pub mod fuzzing;
pub mod ids;
pub mod keys;
pub mod lifecycle;
pub mod model;
pub mod policy;
pub mod sealed;
pub mod server;
pub mod sign;
pub mod sync;
pub mod telemetry;
pub mod transit;
pub mod vault;
pub mod verify;
