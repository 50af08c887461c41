//! The Vault nodes of an HA cluster and which one calls go to.
//!
//! Calls go to the node believed active. A node that fails moves the choice to the next
//! address (round robin); a standby's redirect moves it to the node redirected to, but
//! only when that node is one of the configured addresses and the redirect does not go
//! from `https` to `http`: the token travels with every request, so a redirect (from a
//! compromised or misconfigured node, or a proxy in between) must never send it to a
//! host the operator did not name, nor in clear text.

use std::sync::RwLock;

pub struct Nodes {
    inner: RwLock<Inner>,
}

struct Inner {
    addrs: Vec<String>,
    active: usize,
}

impl Nodes {
    pub fn new(addrs: Vec<String>) -> Self {
        assert!(!addrs.is_empty(), "at least one Vault address");
        Nodes {
            inner: RwLock::new(Inner { addrs, active: 0 }),
        }
    }

    pub fn len(&self) -> usize {
        self.inner.read().expect("nodes lock").addrs.len()
    }

    /// (index, address) of the node calls go to now.
    pub fn current(&self) -> (usize, String) {
        let inner = self.inner.read().expect("nodes lock");
        (inner.active, inner.addrs[inner.active].clone())
    }

    /// Node `index` failed: move on, unless another caller already did.
    pub fn failed(&self, index: usize) {
        let mut inner = self.inner.write().expect("nodes lock");
        if inner.active == index {
            inner.active = (index + 1) % inner.addrs.len();
        }
    }

    /// Node `index` redirected to `location` (a URL on the active node). Follows it only
    /// to a configured node, never from `https` to `http`; otherwise the redirecting node
    /// counts as failed and the refusal is returned for the caller to log.
    pub fn redirected(&self, index: usize, location: &str) -> Result<(), RedirectRefused> {
        let target = origin(location);
        let mut inner = self.inner.write().expect("nodes lock");
        let from_https = inner.addrs[index].starts_with("https://");
        let refused = match &target {
            None => RedirectRefused::NotAUrl,
            Some(t) if from_https && t.starts_with("http://") => RedirectRefused::Downgrade,
            Some(t) => match inner.addrs.iter().position(|a| same_origin(a, t)) {
                Some(i) => {
                    inner.active = i;
                    return Ok(());
                }
                None => RedirectRefused::NotConfigured,
            },
        };
        if inner.active == index {
            inner.active = (index + 1) % inner.addrs.len();
        }
        Err(refused)
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
        // A host nobody configured: not learnt, not followed; the next node is tried.
        assert_eq!(
            n.redirected(1, "https://vault-0.internal:8200/v1/x"),
            Err(RedirectRefused::NotConfigured)
        );
        assert_eq!(n.current(), (0, "http://a:1".into()));
        assert_eq!(n.len(), 2);
        assert_eq!(n.redirected(0, "not a url"), Err(RedirectRefused::NotAUrl));
        assert_eq!(n.current().0, 1);
    }

    #[test]
    fn redirects_never_go_from_https_to_http() {
        let n = Nodes::new(vec!["https://a:1".into(), "http://a:2".into()]);
        assert_eq!(
            n.redirected(0, "http://a:2/v1/transit/sign/k"),
            Err(RedirectRefused::Downgrade)
        );
        assert_eq!(n.current().0, 1, "moved on as after a failure");
        // http -> https is an upgrade: fine.
        let n = Nodes::new(vec!["http://a:1".into(), "https://b:2".into()]);
        assert_eq!(n.redirected(0, "https://b:2/v1/x"), Ok(()));
        assert_eq!(n.current().0, 1);
    }
}
