//! Places per client, so that one client cannot take every place of a
//! bounded pool (the connections served, the TLS handshakes pending) and
//! shut the others out: its connections past its share are closed at once.
//! A client is its IPv4 address, or its IPv6 /64 (one host may hold a
//! whole /64).

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::{Arc, Mutex, PoisonError};

/// Places per client, at most `limit` each.
#[derive(Debug)]
pub(crate) struct PerPeer {
    limit: usize,
    held: Mutex<HashMap<IpAddr, usize>>,
}

/// A client's place, given back when dropped.
#[derive(Debug)]
pub(crate) struct PeerPlace {
    pool: Arc<PerPeer>,
    client: IpAddr,
}

impl PerPeer {
    pub(crate) fn new(limit: usize) -> Arc<PerPeer> {
        Arc::new(PerPeer {
            limit,
            held: Mutex::new(HashMap::new()),
        })
    }

    /// A place for a connection from `ip`, unless its client holds `limit`.
    pub(crate) fn admit(self: &Arc<Self>, ip: IpAddr) -> Option<PeerPlace> {
        let client = client_of(ip);
        let mut held = self.held.lock().unwrap_or_else(PoisonError::into_inner);
        let count = held.entry(client).or_default();
        if *count >= self.limit {
            return None;
        }
        *count += 1;
        Some(PeerPlace {
            pool: self.clone(),
            client,
        })
    }
}

impl Drop for PeerPlace {
    fn drop(&mut self) {
        let mut held = self
            .pool
            .held
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        if let Some(count) = held.get_mut(&self.client) {
            *count -= 1;
            if *count == 0 {
                held.remove(&self.client);
            }
        }
    }
}

/// Who `ip` counts as: an IPv4 address (also written as IPv6), or an IPv6
/// /64.
fn client_of(ip: IpAddr) -> IpAddr {
    match ip.to_canonical() {
        IpAddr::V6(v6) => IpAddr::V6((u128::from(v6) & (!0u128 << 64)).into()),
        v4 => v4,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_client_has_its_share_and_gets_it_back() {
        let pool = PerPeer::new(2);
        let ip = |s: &str| s.parse::<IpAddr>().unwrap();
        let first = pool.admit(ip("10.0.0.1")).unwrap();
        let _second = pool.admit(ip("::ffff:10.0.0.1")).unwrap();
        assert!(pool.admit(ip("10.0.0.1")).is_none(), "past its share");
        assert!(pool.admit(ip("10.0.0.2")).is_some(), "another client");
        drop(first);
        let _again = pool.admit(ip("10.0.0.1")).expect("a place given back");
        // One IPv6 /64 is one client; the next /64 another.
        let _a = pool.admit(ip("2001:db8:0:1::1")).unwrap();
        let _b = pool.admit(ip("2001:db8:0:1:ffff::2")).unwrap();
        assert!(pool.admit(ip("2001:db8:0:1::3")).is_none());
        assert!(pool.admit(ip("2001:db8:0:2::1")).is_some());
        drop((_a, _b, _again, _second));
        assert!(
            pool.held.lock().unwrap().is_empty(),
            "clients with no place are forgotten"
        );
    }
}
