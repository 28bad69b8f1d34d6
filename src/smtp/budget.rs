//! The listener-wide budget of message bytes in flight (`[[listener]] max_inflight_bytes`):
//! content read from clients and not yet answered (buffered during DATA/BDAT, then waiting for
//! the spool's group commit). Per-session limits (`max_message_size`) bound one session; this
//! bounds all of them together, so many large messages at once get `452 4.3.1` instead of
//! taking the process's memory.
//!
//! Owns one counter per listener ([`InflightBudget`]) and each session's share of it
//! ([`Held`]: grown as content arrives, given back when the message is answered, refused or
//! abandoned, and on drop). Never decides a reply: the protocol does.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

/// Bytes every session of one listener may hold together.
#[derive(Debug)]
pub struct InflightBudget {
    limit: usize,
    used: AtomicUsize,
    /// `gannet_smtp_inflight_bytes{listener}`, kept equal to `used`.
    gauge: Option<prometheus::IntGauge>,
}

impl InflightBudget {
    pub fn new(limit: usize, gauge: Option<prometheus::IntGauge>) -> Arc<InflightBudget> {
        Arc::new(InflightBudget {
            limit,
            used: AtomicUsize::new(0),
            gauge,
        })
    }

    /// Bytes held by all sessions now.
    pub fn used(&self) -> usize {
        self.used.load(Ordering::Relaxed)
    }

    /// Take `n` more bytes if that stays within the limit.
    fn take(&self, n: usize) -> bool {
        self.used
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |u| {
                u.checked_add(n).filter(|t| *t <= self.limit)
            })
            .inspect(|_| {
                if let Some(g) = &self.gauge {
                    g.add(n as i64);
                }
            })
            .is_ok()
    }

    fn give(&self, n: usize) {
        self.used.fetch_sub(n, Ordering::AcqRel);
        if let Some(g) = &self.gauge {
            g.sub(n as i64);
        }
    }
}

/// One session's share of its listener's budget (none: unlimited).
#[derive(Debug, Default)]
pub struct Held {
    budget: Option<Arc<InflightBudget>>,
    bytes: usize,
}

impl Held {
    pub fn new(budget: Option<Arc<InflightBudget>>) -> Held {
        Held { budget, bytes: 0 }
    }

    /// Hold `n` bytes in all (more than now: take the difference). False when the listener's
    /// budget cannot give it; what is held stays held.
    pub fn grow_to(&mut self, n: usize) -> bool {
        let Some(b) = &self.budget else {
            return true;
        };
        if n <= self.bytes {
            return true;
        }
        if b.take(n - self.bytes) {
            self.bytes = n;
            true
        } else {
            false
        }
    }

    /// Give everything back.
    pub fn release(&mut self) {
        if let Some(b) = &self.budget {
            b.give(self.bytes);
        }
        self.bytes = 0;
    }
}

impl Drop for Held {
    fn drop(&mut self) {
        self.release();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sessions_share_the_limit_and_give_back_on_release_and_drop() {
        let b = InflightBudget::new(100, None);
        let mut a = Held::new(Some(b.clone()));
        let mut c = Held::new(Some(b.clone()));
        assert!(a.grow_to(60));
        assert!(a.grow_to(50), "shrinking is not asked for: still held");
        assert!(!c.grow_to(41), "60 + 41 is over 100");
        assert!(c.grow_to(40));
        assert_eq!(b.used(), 100);
        a.release();
        assert_eq!(b.used(), 40);
        drop(c);
        assert_eq!(b.used(), 0);
        let mut free = Held::new(None);
        assert!(free.grow_to(usize::MAX));
    }
}
