//! Finding the sidecar's home node: which configured nodes are standbys, asked cheaply.
//!
//! With several addresses and `AEGIS_VAULT_PREFER_STANDBY` (the default), the first call
//! asks every node's `sys/health` at once (unauthenticated, no token sent; 200 active, 429
//! standby, 503 sealed, 501 uninitialised) and makes a standby the home
//! ([`nodes::choose_home`]); concurrent first calls wait for the same answers. Nothing
//! asks again while the home answers: not periodically (every periodic call would be
//! multiplied by the fleet), only when the home node fails. Then the failing call asks
//! again and moves to a new home, at most once per [`REDISCOVERY_SPACING`]; in between,
//! and when no node answers, the usual round robin applies. Each probe is bounded by the
//! connect timeout, all of them by the call's total timeout.
//!
//! A standby's redirect still moves calls to the active node (OpenBao redirects only when
//! it cannot forward); they come back to a standby when that node fails.

use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use serde::Deserialize;
use tracing::{debug, info};

use super::nodes::{self, Role};
use super::VaultClient;

/// The least time between two rounds of `sys/health` after failures, so a cluster that is
/// down costs each sidecar at most one round per this.
pub(super) const REDISCOVERY_SPACING: Duration = Duration::from_secs(1);

/// State of the home search; present only when there is a choice to make.
pub(super) struct Discovery {
    /// This sidecar's draw among the standbys.
    draw: u64,
    /// Set once the first round of probes is done.
    found: AtomicBool,
    /// When the last round after a failure started (the round at start does not count: a
    /// home failing right after it is still replaced); held while a round runs (single
    /// flight).
    last: tokio::sync::Mutex<Option<Instant>>,
    probe_timeout: Duration,
}

impl Discovery {
    pub(super) fn new(probe_timeout: Duration) -> Self {
        Discovery {
            draw: rand::random(),
            found: AtomicBool::new(false),
            last: tokio::sync::Mutex::new(None),
            probe_timeout,
        }
    }
}

/// The fields of `sys/health` that say what a node is.
#[derive(Deserialize)]
struct Health {
    #[serde(default)]
    initialized: bool,
    #[serde(default = "yes")]
    sealed: bool,
    #[serde(default)]
    standby: bool,
}

fn yes() -> bool {
    true
}

/// A node's role from its `sys/health` status and body (both must agree: a 429 from a
/// proxy in front of Vault is not a standby).
fn role(status: u16, body: &[u8]) -> Role {
    let Ok(h) = serde_json::from_slice::<Health>(body) else {
        return Role::Unusable;
    };
    match (status, h.initialized && !h.sealed, h.standby) {
        (200, true, false) => Role::Active,
        (429, true, true) => Role::Standby,
        _ => Role::Unusable,
    }
}

impl VaultClient {
    /// Before a call: the first round of probes, once.
    pub(super) async fn ensure_home(&self, deadline: Instant) {
        let Some(d) = &self.discovery else { return };
        if d.found.load(Ordering::Acquire) {
            return;
        }
        let _round = d.last.lock().await;
        if d.found.load(Ordering::Acquire) {
            return; // another call found it while this one waited
        }
        let roles = self.probe(d, deadline).await;
        if let Some(home) = nodes::choose_home(&roles, d.draw, None) {
            self.settle(home, &roles, "start");
        }
        d.found.store(true, Ordering::Release);
    }

    /// Node `index` failed a call: a new home when a round of probes is allowed and finds
    /// one, else the next node (round robin).
    pub(super) async fn node_failed(&self, index: usize, deadline: Instant) {
        if let Some(d) = &self.discovery {
            let mut last = d.last.lock().await;
            if self.nodes.current().0 != index {
                return; // another call already moved on while this one waited
            }
            if last.is_none_or(|t| t.elapsed() >= REDISCOVERY_SPACING) {
                *last = Some(Instant::now());
                let roles = self.probe(d, deadline).await;
                if let Some(home) = nodes::choose_home(&roles, d.draw, Some(index)) {
                    self.settle(home, &roles, "the home node failed");
                    return;
                }
            }
        }
        self.nodes.failed(index);
    }

    fn settle(&self, home: usize, roles: &[Role], why: &'static str) {
        self.nodes.set_current(home);
        let standbys = roles.iter().filter(|r| **r == Role::Standby).count();
        info!(
            node = %self.nodes.current().1,
            role = ?roles[home],
            standbys,
            nodes = roles.len(),
            why,
            "Vault calls go to this node"
        );
    }

    /// Every node's role, asked at once; a node that does not answer in time is unusable.
    async fn probe(&self, d: &Discovery, deadline: Instant) -> Vec<Role> {
        let addrs = self.nodes.addrs();
        let probes = addrs.iter().map(|addr| async move {
            let answer = async {
                let resp = self
                    .http
                    .get(format!("{addr}/v1/sys/health"))
                    .timeout(d.probe_timeout)
                    .send()
                    .await?;
                let status = resp.status().as_u16();
                Ok::<_, reqwest::Error>((status, resp.bytes().await?))
            };
            match answer.await {
                Ok((status, body)) => role(status, &body),
                Err(e) => {
                    debug!(node = %addr, error = %e, "no health answer");
                    Role::Unusable
                }
            }
        });
        tokio::time::timeout_at(deadline.into(), futures_util::future::join_all(probes))
            .await
            .unwrap_or_else(|_| vec![Role::Unusable; addrs.len()])
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn roles_follow_openbao_health_answers() {
        let body = |init: bool, sealed: bool, standby: bool| {
            format!(
                r#"{{"initialized":{init},"sealed":{sealed},"standby":{standby},"version":"2.7.2"}}"#
            )
        };
        assert_eq!(role(200, body(true, false, false).as_bytes()), Role::Active);
        assert_eq!(role(429, body(true, false, true).as_bytes()), Role::Standby);
        assert_eq!(role(503, body(true, true, true).as_bytes()), Role::Unusable);
        assert_eq!(
            role(501, body(false, true, false).as_bytes()),
            Role::Unusable
        );
        // A rate limit in front of Vault, or a proxy's page, is not a standby.
        assert_eq!(role(429, br#"{"errors":["rate limited"]}"#), Role::Unusable);
        assert_eq!(role(200, b"<html>ok</html>"), Role::Unusable);
    }
}
