//! The Vault nodes of an HA cluster and which one calls go to.
//!
//! Calls go to the node believed active. A node that fails moves the choice to the next
//! address (round robin); a standby's redirect moves it to the node redirected to when
//! that node is one of ours, else to the redirect's origin itself.

use std::sync::RwLock;

/// Bound on nodes learnt from redirects, so a misbehaving server cannot grow the list.
const MAX_NODES: usize = 16;

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

    /// Node `index` redirected to `location` (a URL on the active node).
    pub fn redirected(&self, index: usize, location: &str) {
        let Some(origin) = origin(location) else {
            return self.failed(index);
        };
        let mut inner = self.inner.write().expect("nodes lock");
        inner.active = match inner.addrs.iter().position(|a| same_origin(a, &origin)) {
            Some(i) => i,
            // The active node's api_addr is not in our list (a DNS name, a new node).
            None if inner.addrs.len() < MAX_NODES => {
                inner.addrs.push(origin);
                inner.addrs.len() - 1
            }
            None => (index + 1) % inner.addrs.len(),
        };
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
    fn redirects_pick_the_named_node_or_learn_it() {
        let n = Nodes::new(vec!["http://a:1".into(), "http://b:2".into()]);
        n.redirected(0, "http://b:2/v1/transit/sign/k");
        assert_eq!(n.current(), (1, "http://b:2".into()));
        n.redirected(1, "https://vault-0.internal:8200/v1/x");
        assert_eq!(n.current(), (2, "https://vault-0.internal:8200".into()));
        n.redirected(2, "not a url");
        assert_eq!(n.current().0, 0);
    }
}
