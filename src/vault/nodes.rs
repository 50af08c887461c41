//! The Vault nodes of an HA cluster and which one calls go to.
//!
//! Calls go to one node, the sidecar's *home*. With several addresses (and
//! `AEGIS_VAULT_PREFER_STANDBY`, the default) `vault::discover` asks every node's
//! `sys/health` at start and picks the home with [`choose_home`]: one of the standbys,
//! drawn per sidecar, so a fleet spreads evenly over them (OpenBao 2.5+ standbys serve
//! reads and Transit sign themselves and forward writes to the active node); the active
//! node when there is no standby. Otherwise calls start at the first address.
//!
//! A node that fails moves the choice to the next address (round robin), or to a new home
//! when `vault::discover` finds one; a standby's redirect moves it to the node redirected
//! to, but only when that node is one of the configured addresses and the redirect does
//! not go from `https` to `http`: the token travels with every request, so a redirect (from
//! a compromised or misconfigured node, or a proxy in between) must never send it to a
//! host the operator did not name, nor in clear text.

use std::sync::RwLock;

pub struct Nodes {
    inner: RwLock<Inner>,
}

struct Inner {
    addrs: Vec<String>,
    current: usize,
}

/// What a node's `sys/health` says it is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    Active,
    Standby,
    /// Sealed, uninitialised, not answering, or not answering like OpenBao.
    Unusable,
}

/// The home among nodes of these roles: a standby when there is one, else an active
/// node; `draw` picks among them (a random number per sidecar, so a fleet spreads evenly;
/// the same draw finds the same node again while the cluster is unchanged). `avoid`, the
/// node that just failed, is chosen only when nothing else is usable. `None` when no
/// node is usable.
pub fn choose_home(roles: &[Role], draw: u64, avoid: Option<usize>) -> Option<usize> {
    let pick = |wanted: Role, avoid: Option<usize>| {
        let candidates: Vec<usize> = (0..roles.len())
            .filter(|&i| roles[i] == wanted && Some(i) != avoid)
            .collect();
        let n = candidates.len() as u64;
        (n > 0).then(|| candidates[(draw % n) as usize])
    };
    pick(Role::Standby, avoid)
        .or_else(|| pick(Role::Active, avoid))
        .or_else(|| pick(Role::Standby, None))
        .or_else(|| pick(Role::Active, None))
}

impl Nodes {
    pub fn new(addrs: Vec<String>) -> Self {
        assert!(!addrs.is_empty(), "at least one Vault address");
        Nodes {
            inner: RwLock::new(Inner { addrs, current: 0 }),
        }
    }

    pub fn len(&self) -> usize {
        self.inner.read().expect("nodes lock").addrs.len()
    }

    /// The configured addresses, in order.
    pub fn addrs(&self) -> Vec<String> {
        self.inner.read().expect("nodes lock").addrs.clone()
    }

    /// (index, address) of the node calls go to now.
    pub fn current(&self) -> (usize, String) {
        let inner = self.inner.read().expect("nodes lock");
        (inner.current, inner.addrs[inner.current].clone())
    }

    /// Calls go to node `index` from now on.
    pub fn set_current(&self, index: usize) {
        let mut inner = self.inner.write().expect("nodes lock");
        assert!(index < inner.addrs.len(), "a configured node");
        inner.current = index;
    }

    /// Node `index` failed: move on, unless another caller already did.
    pub fn failed(&self, index: usize) {
        let mut inner = self.inner.write().expect("nodes lock");
        if inner.current == index {
            inner.current = (index + 1) % inner.addrs.len();
        }
    }

    /// Node `index` redirected to `location` (a URL on the active node). Follows it only
    /// to a configured node, never from `https` to `http`; otherwise nothing changes and
    /// the refusal is returned for the caller to log and to treat the node as failed.
    pub fn redirected(&self, index: usize, location: &str) -> Result<(), RedirectRefused> {
        let target = origin(location);
        let mut inner = self.inner.write().expect("nodes lock");
        let from_https = inner.addrs[index].starts_with("https://");
        match &target {
            None => Err(RedirectRefused::NotAUrl),
            Some(t) if from_https && t.starts_with("http://") => Err(RedirectRefused::Downgrade),
            Some(t) => match inner.addrs.iter().position(|a| same_origin(a, t)) {
                Some(i) => {
                    inner.current = i;
                    Ok(())
                }
                None => Err(RedirectRefused::NotConfigured),
            },
        }
    }
}

/// Why a standby's redirect was not followed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RedirectRefused {
    /// `Location` is not an absolute URL.
    NotAUrl,
    /// From an `https` node to an `http` URL: the token would travel in clear text.
    Downgrade,
    /// To a host that is not one of the configured Vault addresses.
    NotConfigured,
}

impl RedirectRefused {
    pub fn as_str(self) -> &'static str {
        match self {
            RedirectRefused::NotAUrl => "the redirect's Location is not a URL",
            RedirectRefused::Downgrade => "the redirect goes from https to http",
            RedirectRefused::NotConfigured => {
                "the redirect goes to a node that is not in VAULT_ADDR (list every node there)"
            }
        }
    }
}

fn origin(url: &str) -> Option<String> {
    let u = url::Url::parse(url).ok()?;
    let host = u.host_str()?;
    Some(match u.port() {
        Some(p) => format!("{}://{host}:{p}", u.scheme()),
        None => format!("{}://{host}", u.scheme()),
    })
}

fn same_origin(a: &str, b: &str) -> bool {
    origin(a).as_deref() == Some(b)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn failover_is_round_robin_and_shared() {
        let n = Nodes::new(vec![
            "http://a:1".into(),
            "http://b:2".into(),
            "http://c:3".into(),
        ]);
        assert_eq!(n.current(), (0, "http://a:1".into()));
        n.failed(0);
        n.failed(0); // a second caller saw the same failure: no double move
        assert_eq!(n.current().0, 1);
        n.failed(1);
        n.failed(2);
        assert_eq!(n.current().0, 0);
    }

    #[test]
    fn redirects_are_followed_only_to_configured_nodes() {
        let n = Nodes::new(vec!["http://a:1".into(), "http://b:2".into()]);
        assert_eq!(n.redirected(0, "http://b:2/v1/transit/sign/k"), Ok(()));
        assert_eq!(n.current(), (1, "http://b:2".into()));
        // A host nobody configured: not learnt, not followed (the caller then treats the
        // redirecting node as failed).
        assert_eq!(
            n.redirected(1, "https://vault-0.internal:8200/v1/x"),
            Err(RedirectRefused::NotConfigured)
        );
        assert_eq!(n.current(), (1, "http://b:2".into()));
        assert_eq!(n.len(), 2);
        assert_eq!(n.redirected(1, "not a url"), Err(RedirectRefused::NotAUrl));
        assert_eq!(n.current().0, 1);
    }

    #[test]
    fn the_home_is_a_standby_spread_by_the_draw() {
        use Role::{Active, Standby, Unusable};
        let roles = [Active, Standby, Standby];
        // Six sidecars with consecutive draws: three on each standby, none on the active.
        let homes: Vec<usize> = (0..6)
            .map(|d| choose_home(&roles, d, None).unwrap())
            .collect();
        assert_eq!(homes, [1, 2, 1, 2, 1, 2]);
        // The same draw finds the same standby again; the failed one is avoided.
        assert_eq!(choose_home(&roles, 7, None), Some(2));
        assert_eq!(choose_home(&roles, 7, Some(2)), Some(1));
        // No standby: the active node; nothing usable: none.
        assert_eq!(choose_home(&[Unusable, Active, Unusable], 5, None), Some(1));
        assert_eq!(choose_home(&[Standby, Active], 5, Some(0)), Some(1));
        assert_eq!(choose_home(&[Unusable, Unusable], 5, None), None);
        // The failed node is still chosen when it is the only usable one.
        assert_eq!(choose_home(&[Unusable, Standby], 5, Some(1)), Some(1));
    }

    #[test]
    fn redirects_never_go_from_https_to_http() {
        let n = Nodes::new(vec!["https://a:1".into(), "http://a:2".into()]);
        assert_eq!(
            n.redirected(0, "http://a:2/v1/transit/sign/k"),
            Err(RedirectRefused::Downgrade)
        );
        assert_eq!(n.current().0, 0, "not followed");
        // http -> https is an upgrade: fine.
        let n = Nodes::new(vec!["http://a:1".into(), "https://b:2".into()]);
        assert_eq!(n.redirected(0, "https://b:2/v1/x"), Ok(()));
        assert_eq!(n.current().0, 1);
    }
}
