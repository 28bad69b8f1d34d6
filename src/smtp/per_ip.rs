//! `max_sessions_per_ip`: open sessions per client address, capped. Owns only the counts; the
//! listener creates one limiter and each session claims a slot for its peer address.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::{Arc, Mutex};

/// Open sessions per client address, capped at `max`. A std `Mutex` is right here: each
/// section is one hash-map update with no `.await` inside, once per connection.
pub(super) struct IpLimiter {
    max: usize,
    counts: Mutex<HashMap<IpAddr, usize>>,
}

/// One claimed per-IP session slot; dropping it gives the slot back.
pub(super) struct IpSlot {
    limiter: Arc<IpLimiter>,
    ip: IpAddr,
}

impl IpLimiter {
    pub fn new(max: usize) -> Arc<Self> {
        Arc::new(IpLimiter {
            max,
            counts: Mutex::new(HashMap::new()),
        })
    }

    /// Take a slot for `ip`, or None when it already has `max` sessions.
    pub fn claim(self: &Arc<Self>, ip: IpAddr) -> Option<IpSlot> {
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
        let limiter = IpLimiter::new(2);
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
}
