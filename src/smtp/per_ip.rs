//! `max_sessions_per_ip`: open sessions per client address, capped. Owns only the counts; the
//! listener creates one limiter and each session claims a slot for its peer address.
//!
//! An IPv4 client counts by its address, an IPv6 client by its network (`ipv6_prefix_length`,
//! /64 by default: a host is usually given a whole /64 and can use any address in it, so a
//! per-address cap would be none). [`client_key`] is that grouping; AUTH failures use it too.

use std::collections::HashMap;
use std::net::{IpAddr, Ipv6Addr};
use std::sync::{Arc, Mutex};

/// The address a client is counted under: IPv4 as is, IPv6 masked to its first `v6_prefix`
/// bits (`2001:db8:1:2:aaaa::1` → `2001:db8:1:2::` for /64).
pub(super) fn client_key(ip: IpAddr, v6_prefix: u8) -> IpAddr {
    match ip {
        IpAddr::V4(_) => ip,
        IpAddr::V6(v6) => {
            let bits = u32::from(v6_prefix.min(128));
            let mask = if bits == 0 {
                0
            } else {
                u128::MAX << (128 - bits)
            };
            IpAddr::V6(Ipv6Addr::from(u128::from(v6) & mask))
        }
    }
}

/// Open sessions per client address, capped at `max`. A std `Mutex` is right here: each
/// section is one hash-map update with no `.await` inside, once per connection.
pub(super) struct IpLimiter {
    max: usize,
    v6_prefix: u8,
    counts: Mutex<HashMap<IpAddr, usize>>,
}

/// One claimed per-IP session slot; dropping it gives the slot back.
pub(super) struct IpSlot {
    limiter: Arc<IpLimiter>,
    ip: IpAddr,
}

impl IpLimiter {
    pub fn new(max: usize, v6_prefix: u8) -> Arc<Self> {
        Arc::new(IpLimiter {
            max,
            v6_prefix,
            counts: Mutex::new(HashMap::new()),
        })
    }

    /// Take a slot for `ip` (counted under [`client_key`]), or None when its address or IPv6
    /// network already has `max` sessions.
    pub fn claim(self: &Arc<Self>, ip: IpAddr) -> Option<IpSlot> {
        let ip = client_key(ip, self.v6_prefix);
        let mut counts = self.counts.lock().unwrap_or_else(|e| e.into_inner());
        let count = counts.entry(ip).or_insert(0);
        if *count >= self.max {
            return None;
        }
        *count += 1;
        Some(IpSlot {
            limiter: self.clone(),
            ip,
        })
    }
}

impl Drop for IpSlot {
    fn drop(&mut self) {
        let mut counts = self
            .limiter
            .counts
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        if let Some(count) = counts.get_mut(&self.ip) {
            *count -= 1;
            if *count == 0 {
                counts.remove(&self.ip);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn slots_are_capped_per_address_and_given_back_on_drop() {
        let limiter = IpLimiter::new(2, 64);
        let a: IpAddr = "127.0.0.1".parse().unwrap();
        let b: IpAddr = "127.0.0.2".parse().unwrap();
        let first = limiter.claim(a).unwrap();
        let _second = limiter.claim(a).unwrap();
        assert!(
            limiter.claim(a).is_none(),
            "a third session from one address"
        );
        assert!(
            limiter.claim(b).is_some(),
            "another address has its own count"
        );
        drop(first);
        assert!(limiter.claim(a).is_some(), "a dropped slot is given back");
    }

    /// Issue 21 item 4: addresses of one IPv6 /64 share one count (a client cannot open
    /// `max_sessions_per_ip` sessions from each of its 2^64 addresses); another /64 has its own.
    #[test]
    fn ipv6_clients_are_counted_per_prefix() {
        let limiter = IpLimiter::new(2, 64);
        let a: IpAddr = "2001:db8:1:2::1".parse().unwrap();
        let b: IpAddr = "2001:db8:1:2:ffff::9".parse().unwrap();
        let c: IpAddr = "2001:db8:1:3::1".parse().unwrap();
        let _one = limiter.claim(a).unwrap();
        let _two = limiter.claim(b).unwrap();
        assert!(
            limiter
                .claim("2001:db8:1:2:1234::42".parse().unwrap())
                .is_none(),
            "a third session from the same /64"
        );
        assert!(limiter.claim(c).is_some(), "another /64 has its own count");
        let v4 = IpLimiter::new(1, 64);
        let _x = v4.claim("192.0.2.1".parse().unwrap()).unwrap();
        assert!(
            v4.claim("192.0.2.2".parse().unwrap()).is_some(),
            "IPv4 clients count by address"
        );
    }

    #[test]
    fn client_key_masks_ipv6_only() {
        let k = |s: &str, p| client_key(s.parse().unwrap(), p).to_string();
        assert_eq!(k("2001:db8:1:2:aaaa::1", 64), "2001:db8:1:2::");
        assert_eq!(k("2001:db8:1:2:aaaa::1", 128), "2001:db8:1:2:aaaa::1");
        assert_eq!(k("2001:db8:1:2:aaaa::1", 48), "2001:db8:1::");
        assert_eq!(k("192.0.2.7", 64), "192.0.2.7");
    }
}
