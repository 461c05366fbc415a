//! A short-lived cache of successful name lookups, so a burst of new tunnels
//! to the same host (an agent's many short connections) pays for one lookup,
//! not one per tunnel.
//!
//! Invariants: only successful, non-empty answers are kept, each for at most
//! `ttl` (the system resolver reports no TTL, so the cache stays well under
//! any sensible DNS TTL); at most `cap` names are kept, so an agent spelling
//! endless names under a wildcard cannot grow the proxy. Cached addresses are
//! vetted again on every use by the caller, exactly like fresh ones.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// (host, port) → (when looked up, the answer).
type Entries = HashMap<(String, u16), (Instant, Vec<SocketAddr>)>;

pub(crate) struct DnsCache {
    ttl: Duration,
    cap: usize,
    entries: Mutex<Entries>,
}

impl DnsCache {
    pub(crate) fn new(ttl: Duration, cap: usize) -> DnsCache {
        DnsCache {
            ttl,
            cap,
            entries: Mutex::new(HashMap::new()),
        }
    }

    pub(crate) fn get(&self, host: &str, port: u16, now: Instant) -> Option<Vec<SocketAddr>> {
        let entries = self.entries.lock().ok()?;
        let (at, addrs) = entries.get(&(host.to_string(), port))?;
        (now.saturating_duration_since(*at) < self.ttl).then(|| addrs.clone())
    }

    pub(crate) fn put(&self, host: &str, port: u16, addrs: &[SocketAddr], now: Instant) {
        if self.ttl.is_zero() || self.cap == 0 || addrs.is_empty() {
            return;
        }
        let Ok(mut entries) = self.entries.lock() else {
            return;
        };
        if entries.len() >= self.cap {
            let ttl = self.ttl;
            entries.retain(|_, (at, _)| now.saturating_duration_since(*at) < ttl);
            if entries.len() >= self.cap {
                // Every entry is fresh: a flood of distinct names. Starting
                // over keeps the bound; the names that matter come back.
                entries.clear();
            }
        }
        entries.insert((host.to_string(), port), (now, addrs.to_vec()));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn a(s: &str) -> Vec<SocketAddr> {
        vec![s.parse().unwrap()]
    }

    #[test]
    fn answers_within_ttl_only() {
        let c = DnsCache::new(Duration::from_secs(10), 8);
        let t0 = Instant::now();
        assert_eq!(c.get("a.test", 443, t0), None);
        c.put("a.test", 443, &a("192.0.2.1:443"), t0);
        assert_eq!(
            c.get("a.test", 443, t0 + Duration::from_secs(9)),
            Some(a("192.0.2.1:443"))
        );
        assert_eq!(c.get("a.test", 80, t0), None, "keyed by port too");
        assert_eq!(c.get("a.test", 443, t0 + Duration::from_secs(10)), None);
    }

    #[test]
    fn keeps_nothing_empty_or_disabled() {
        let t0 = Instant::now();
        let c = DnsCache::new(Duration::from_secs(10), 8);
        c.put("a.test", 443, &[], t0);
        assert_eq!(c.get("a.test", 443, t0), None);
        let off = DnsCache::new(Duration::ZERO, 8);
        off.put("a.test", 443, &a("192.0.2.1:443"), t0);
        assert_eq!(off.get("a.test", 443, t0), None);
    }

    #[test]
    fn stays_bounded_under_a_flood_of_names() {
        let c = DnsCache::new(Duration::from_secs(10), 4);
        let t0 = Instant::now();
        for i in 0..1000 {
            c.put(&format!("n{i}.test"), 443, &a("192.0.2.1:443"), t0);
            assert!(c.entries.lock().unwrap().len() <= 4);
        }
        // Expired entries are dropped first, fresh ones kept.
        let c = DnsCache::new(Duration::from_secs(10), 2);
        c.put("old.test", 443, &a("192.0.2.1:443"), t0);
        let t1 = t0 + Duration::from_secs(11);
        c.put("new.test", 443, &a("192.0.2.2:443"), t1);
        c.put("newer.test", 443, &a("192.0.2.3:443"), t1);
        assert_eq!(c.get("new.test", 443, t1), Some(a("192.0.2.2:443")));
        assert_eq!(c.get("newer.test", 443, t1), Some(a("192.0.2.3:443")));
    }
}
