//! AUTH brute-force defence: failed AUTH attempts counted per client network (an IPv4 address
//! or an IPv6 prefix, `per_ip::client_key`) and per user name. Each failure's `535` is answered
//! after a delay that doubles with every failure (`auth_fail_delay` up to `auth_max_delay`);
//! after `auth_lockout_after` failures the network, or the user name, is locked out for
//! `auth_lockout`: AUTH then gets `454 4.7.0` without the password being checked, so guessing
//! stops paying even from many addresses (the per-user count) or for many users (the per-network
//! count).
//!
//! Owns only the counters; pure (every call takes `now`), no I/O, no sleeping: the session
//! waits out the delay and writes the log line. A success clears the user's count (not the
//! network's: a valid account does not buy more guesses for others). Counts older than the
//! lockout are forgotten. Memory is bounded: each map holds at most [`MAX_TRACKED`] keys;
//! when full, forgotten entries are pruned, then the oldest goes.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// Most networks (and, separately, user names) tracked at once.
pub const MAX_TRACKED: usize = 65_536;

/// The listener's AUTH defence settings (`[[listener]] auth_*`).
#[derive(Debug, Clone, Copy)]
pub struct GuardConfig {
    pub fail_delay: Duration,
    pub max_delay: Duration,
    /// Failures before a lockout; 0 = never lock out.
    pub lockout_after: u32,
    pub lockout: Duration,
}

/// What is locked out.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Locked {
    Network(IpAddr),
    User(String),
}

impl std::fmt::Display for Locked {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Locked::Network(ip) => write!(f, "client network {ip}"),
            Locked::User(u) => write!(f, "user {u:?}"),
        }
    }
}

/// A lockout in force: what, and for how much longer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Lockout {
    pub locked: Locked,
    pub remaining: Duration,
}

/// What a failed attempt costs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Failure {
    /// Wait this long before answering `535`.
    pub delay: Duration,
    /// Failures counted so far (the larger of the network's and the user's).
    pub failures: u32,
    /// Set when this failure started a lockout.
    pub locked: Option<Lockout>,
}

#[derive(Debug, Clone, Copy)]
struct Entry {
    failures: u32,
    last: Instant,
    locked_until: Option<Instant>,
}

/// Both counter maps behind one std `Mutex`: each call is a few hash-map operations with no
/// `.await` inside, once per AUTH attempt.
#[derive(Default)]
struct Maps {
    nets: HashMap<IpAddr, Entry>,
    users: HashMap<String, Entry>,
}

/// The counters of one listener; shared by its sessions.
pub struct AuthGuard {
    cfg: GuardConfig,
    maps: Mutex<Maps>,
}

impl AuthGuard {
    pub fn new(cfg: GuardConfig) -> AuthGuard {
        AuthGuard {
            cfg,
            maps: Mutex::new(Maps::default()),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Maps> {
        self.maps.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// How long a count is remembered after its last failure.
    fn memory(&self) -> Duration {
        self.cfg
            .lockout
            .max(self.cfg.max_delay)
            .max(Duration::from_secs(60))
    }

    /// Before checking a password: `Err` when the network or the user is locked out.
    pub fn check(&self, net: IpAddr, user: &str, now: Instant) -> Result<(), Lockout> {
        let maps = self.lock();
        let locked = |e: Option<&Entry>| {
            e.and_then(|e| e.locked_until)
                .filter(|until| *until > now)
                .map(|until| until - now)
        };
        if let Some(remaining) = locked(maps.nets.get(&net)) {
            return Err(Lockout {
                locked: Locked::Network(net),
                remaining,
            });
        }
        if let Some(remaining) = locked(maps.users.get(user)) {
            return Err(Lockout {
                locked: Locked::User(user.to_string()),
                remaining,
            });
        }
        Ok(())
    }

    /// A password check failed: count it for the network and the user.
    pub fn failed(&self, net: IpAddr, user: &str, now: Instant) -> Failure {
        let memory = self.memory();
        let mut maps = self.lock();
        let n = bump(&mut maps.nets, net, now, memory);
        let u = bump(&mut maps.users, user.to_string(), now, memory);
        let failures = n.failures.max(u.failures);
        let doublings = failures.saturating_sub(1).min(30);
        let delay = self
            .cfg
            .fail_delay
            .saturating_mul(1u32 << doublings)
            .min(self.cfg.max_delay);
        let mut locked = None;
        if self.cfg.lockout_after > 0 {
            let until = now + self.cfg.lockout;
            if n.failures >= self.cfg.lockout_after
                && let Some(e) = maps.nets.get_mut(&net)
                && e.locked_until.is_none_or(|t| t <= now)
            {
                e.locked_until = Some(until);
                locked = Some(Lockout {
                    locked: Locked::Network(net),
                    remaining: self.cfg.lockout,
                });
            }
            if u.failures >= self.cfg.lockout_after
                && let Some(e) = maps.users.get_mut(user)
                && e.locked_until.is_none_or(|t| t <= now)
            {
                e.locked_until = Some(until);
                locked = locked.or(Some(Lockout {
                    locked: Locked::User(user.to_string()),
                    remaining: self.cfg.lockout,
                }));
            }
        }
        Failure {
            delay,
            failures,
            locked,
        }
    }

    /// A password check succeeded: the user's count starts over.
    pub fn succeeded(&self, user: &str) {
        self.lock().users.remove(user);
    }

    /// Networks and users tracked now (tests check the bound).
    #[cfg(test)]
    pub fn tracked(&self) -> (usize, usize) {
        let maps = self.lock();
        (maps.nets.len(), maps.users.len())
    }
}

/// Count one failure for `key`; a count idle for `memory` (and not locked) starts over.
fn bump<K: std::hash::Hash + Eq + Clone>(
    map: &mut HashMap<K, Entry>,
    key: K,
    now: Instant,
    memory: Duration,
) -> Entry {
    if !map.contains_key(&key) && map.len() >= MAX_TRACKED {
        make_room(map, now, memory);
    }
    let e = map.entry(key).or_insert(Entry {
        failures: 0,
        last: now,
        locked_until: None,
    });
    let stale =
        now.saturating_duration_since(e.last) >= memory && e.locked_until.is_none_or(|t| t <= now);
    if stale {
        *e = Entry {
            failures: 0,
            last: now,
            locked_until: None,
        };
    }
    e.failures = e.failures.saturating_add(1);
    e.last = now;
    *e
}

/// Drop forgotten entries; when none is, the one idle longest.
fn make_room<K: std::hash::Hash + Eq + Clone>(
    map: &mut HashMap<K, Entry>,
    now: Instant,
    memory: Duration,
) {
    map.retain(|_, e| {
        now.saturating_duration_since(e.last) < memory || e.locked_until.is_some_and(|t| t > now)
    });
    if map.len() >= MAX_TRACKED
        && let Some(oldest) = map
            .iter()
            .min_by_key(|(_, e)| e.last)
            .map(|(k, _)| k.clone())
    {
        map.remove(&oldest);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn guard(lockout_after: u32) -> AuthGuard {
        AuthGuard::new(GuardConfig {
            fail_delay: Duration::from_millis(100),
            max_delay: Duration::from_millis(1000),
            lockout_after,
            lockout: Duration::from_secs(600),
        })
    }

    const NET: &str = "192.0.2.1";

    #[test]
    fn delays_double_per_failure_up_to_the_cap() {
        let g = guard(0);
        let now = Instant::now();
        let net: IpAddr = NET.parse().unwrap();
        let delays: Vec<u128> = (0..6)
            .map(|_| g.failed(net, "alice", now).delay.as_millis())
            .collect();
        assert_eq!(delays, [100, 200, 400, 800, 1000, 1000]);
        assert!(g.check(net, "alice", now).is_ok(), "lockout is off");
    }

    #[test]
    fn a_network_is_locked_out_after_n_failures_whatever_the_user() {
        let g = guard(3);
        let now = Instant::now();
        let net: IpAddr = NET.parse().unwrap();
        assert_eq!(g.failed(net, "u1", now).locked, None);
        assert_eq!(g.failed(net, "u2", now).locked, None);
        let third = g.failed(net, "u3", now);
        assert_eq!(third.locked.map(|l| l.locked), Some(Locked::Network(net)));
        let err = g.check(net, "someone-else", now).unwrap_err();
        assert_eq!(err.locked, Locked::Network(net));
        let other: IpAddr = "192.0.2.2".parse().unwrap();
        assert!(g.check(other, "u1", now).is_ok(), "another network may try");
        let later = now + Duration::from_secs(601);
        assert!(g.check(net, "u1", later).is_ok(), "the lockout ends");
    }

    #[test]
    fn a_user_is_locked_out_after_n_failures_from_any_network() {
        let g = guard(3);
        let now = Instant::now();
        for i in 1..=3u8 {
            let net = IpAddr::from([198, 51, 100, i]);
            g.failed(net, "alice", now);
        }
        let fresh = IpAddr::from([203, 0, 113, 9]);
        let err = g.check(fresh, "alice", now).unwrap_err();
        assert_eq!(err.locked, Locked::User("alice".into()));
        assert!(g.check(fresh, "bob", now).is_ok());
    }

    #[test]
    fn success_clears_the_user_but_not_the_network() {
        let g = guard(3);
        let now = Instant::now();
        let net: IpAddr = NET.parse().unwrap();
        g.failed(net, "alice", now);
        g.failed(net, "alice", now);
        g.succeeded("alice");
        let f = g.failed(net, "alice", now);
        assert_eq!(f.failures, 3, "the network's count goes on");
        assert_eq!(f.locked.map(|l| l.locked), Some(Locked::Network(net)));
    }

    #[test]
    fn old_counts_are_forgotten() {
        let g = guard(3);
        let now = Instant::now();
        let net: IpAddr = NET.parse().unwrap();
        g.failed(net, "alice", now);
        g.failed(net, "alice", now);
        let f = g.failed(net, "alice", now + Duration::from_secs(3600));
        assert_eq!(f.failures, 1);
        assert_eq!(f.locked, None);
    }

    #[test]
    fn tracked_keys_stay_bounded() {
        let g = guard(0);
        let now = Instant::now();
        for i in 0..(MAX_TRACKED as u32 + 5) {
            g.failed(IpAddr::from(i.to_be_bytes()), &format!("user{i}"), now);
        }
        let (nets, users) = g.tracked();
        assert!(
            nets <= MAX_TRACKED && users <= MAX_TRACKED,
            "{nets} {users}"
        );
    }
}
