//! Finding the sidecar's home node: which configured nodes are standbys, asked cheaply.
//!
//! With several addresses and `AEGIS_VAULT_PREFER_STANDBY` (the default), the first call
//! asks every node's `sys/health` at once (unauthenticated, no token sent; 200 active, 429
//! standby, 503 sealed, 501 uninitialised) and makes a standby the home
//! ([`nodes::choose_home`]); concurrent first calls wait for the same answers. Nothing
//! asks again while the home answers: not periodically (every periodic call would be
//! multiplied by the fleet), only when the home node fails. Then the failing call asks
//! again and moves to a new home, at most once per [`REDISCOVERY_SPACING`] while rounds
//! find one; rounds that find none (the cluster is down or sealed) are spaced out with a
//! jittered backoff up to [`MAX_REDISCOVERY_SPACING`], so a fleet waiting out an outage
//! does not probe every node every second. In between, and when no node answers, the
//! usual round robin applies. Each probe is bounded by the connect timeout, all of them by
//! the call's total timeout.
//!
//! A standby's redirect still moves calls to the active node (OpenBao redirects only when
//! it cannot forward); they come back to a standby when that node fails.

use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use serde::Deserialize;
use tracing::{debug, info};

use super::nodes::{self, Role};
use super::VaultClient;
use crate::backoff::Backoff;

/// The least time between two rounds of `sys/health` after failures, so a cluster that is
/// down costs each sidecar at most one round per this.
pub(super) const REDISCOVERY_SPACING: Duration = Duration::from_secs(1);
/// The longest spacing after rounds that found no usable node (pauses drawn from
/// [`Backoff`], doubling from 1-2 s).
pub(super) const MAX_REDISCOVERY_SPACING: Duration = Duration::from_secs(60);

/// When rounds of probes after failures may run.
struct Rounds {
    /// When the last round after a failure started (the round at start does not count: a
    /// home failing right after it is still replaced).
    last: Option<Instant>,
    /// How long after `last` the next round may start.
    wait: Duration,
    /// The waits after rounds that found no home.
    pauses: Backoff,
}

/// State of the home search; present only when there is a choice to make.
pub(super) struct Discovery {
    /// This sidecar's draw among the standbys.
    draw: u64,
    /// Set once the first round of probes is done.
    found: AtomicBool,
    /// The spacing of rounds; held while a round runs (single flight).
    rounds: tokio::sync::Mutex<Rounds>,
    probe_timeout: Duration,
}

impl Discovery {
    pub(super) fn new(probe_timeout: Duration) -> Self {
        Discovery {
            draw: rand::random(),
            found: AtomicBool::new(false),
            rounds: tokio::sync::Mutex::new(Rounds {
                last: None,
                wait: REDISCOVERY_SPACING,
                pauses: Backoff::new(REDISCOVERY_SPACING * 2, MAX_REDISCOVERY_SPACING),
            }),
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
        let _round = d.rounds.lock().await;
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
            let mut rounds = d.rounds.lock().await;
            if self.nodes.current().0 != index {
                return; // another call already moved on while this one waited
            }
            if rounds.last.is_none_or(|t| t.elapsed() >= rounds.wait) {
                rounds.last = Some(Instant::now());
                let roles = self.probe(d, deadline).await;
                if let Some(home) = nodes::choose_home(&roles, d.draw, Some(index)) {
                    rounds.pauses.reset();
                    rounds.wait = REDISCOVERY_SPACING;
                    self.settle(home, &roles, "the home node failed");
                    return;
                }
                rounds.wait = rounds.pauses.next_pause();
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

    /// Two loopback ports nothing listens on: every probe is refused at once.
    fn dead_cluster() -> VaultClient {
        let dead: Vec<String> = (0..2)
            .map(|_| {
                let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
                format!("http://{}", l.local_addr().unwrap())
            })
            .collect();
        let dead: Vec<&str> = dead.iter().map(String::as_str).collect();
        crate::vault::tests::client_with(&dead, Duration::from_secs(5), true)
    }

    /// A cluster that stays down is probed less and less often: the wait after each round
    /// that found no node doubles (jittered), up to the cap, and no round runs before it.
    #[tokio::test]
    async fn rounds_that_find_no_node_are_spaced_out() {
        let client = dead_cluster();
        let d = client
            .discovery
            .as_ref()
            .expect("two nodes, standbys preferred");
        let deadline = Instant::now() + Duration::from_secs(5);
        let mut waits = Vec::new();
        for i in 0..8 {
            if i > 0 {
                // As if the last wait had passed: this failure runs a round.
                let mut rounds = d.rounds.lock().await;
                let wait = rounds.wait;
                rounds.last = rounds.last.map(|t| t - wait);
            }
            let index = client.nodes.current().0;
            client.node_failed(index, deadline).await;
            waits.push(d.rounds.lock().await.wait);
        }
        let secs: Vec<f64> = waits.iter().map(Duration::as_secs_f64).collect();
        for (i, w) in secs.iter().enumerate() {
            let step = (2.0f64 * 2f64.powi(i as i32)).min(MAX_REDISCOVERY_SPACING.as_secs_f64());
            assert!(*w >= step / 2.0 && *w < step, "round {i}: {secs:?}");
        }
        // A failure before the wait has passed runs no round: the wait stays.
        let index = client.nodes.current().0;
        let before = d.rounds.lock().await.last;
        client.node_failed(index, deadline).await;
        assert_eq!(d.rounds.lock().await.last, before);
    }

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
