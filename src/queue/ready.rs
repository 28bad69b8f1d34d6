//! Ready queue: jobs due now for one (site, pool), waiting for a connection to take them.
//!
//! Jobs wait in priority lanes (the class priority): a connection always takes from the
//! highest lane first, so a transactional message never waits behind promotional ones queued
//! for the same site. The queue also counts its connections and tells the caller when another
//! one should be opened (work waiting, no idle connection, under the cap).
//!
//! It holds the site's current [`Destination`] (hosts and addresses): a newer resolution
//! replaces it ([`ReadyQueue::offer_destination`]); an older or repeated one is ignored. A queue
//! left empty with no connection for a while is retired ([`ReadyQueue::retire_if_idle`]): the
//! routing map drops it, and a push that races with that is refused so the caller makes a new
//! queue, never losing the job.
//!
//! Never does: resolve names, connect, or decide outcomes.

use std::cmp::Reverse;
use std::collections::{BTreeMap, VecDeque};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use tokio::sync::Notify;

use super::message::Job;
use crate::delivery::Destination;
use crate::shaping::SiteLimits;

pub struct ReadyQueue {
    pub site: String,
    pub pool: String,
    /// Shaping limits for this site (from the first domain routed here).
    pub limits: SiteLimits,
    /// Key under which limits and backoff state are kept: "site|pool".
    pub shaping_key: String,
    /// Hosts to connect to; replaced when a domain of this site is resolved again. std Mutex:
    /// read (cloned) once per connection, never held across `.await`.
    dest: Mutex<Destination>,
    /// Lanes and counters. Short critical sections, never across `.await`: std Mutex.
    state: Mutex<State>,
    notify: Notify,
}

struct State {
    lanes: BTreeMap<Reverse<i32>, VecDeque<Job>>,
    len: usize,
    /// Connection tasks alive for this queue.
    active: usize,
    /// Of those, how many are waiting for a job.
    idle: usize,
    max_connections: usize,
    /// Last time a job came in or a connection ended (the start of idleness).
    last_used: Instant,
    /// Dropped from the routing map: takes no more jobs.
    retired: bool,
}

impl ReadyQueue {
    pub fn new(
        site: String,
        pool: String,
        dest: Destination,
        limits: SiteLimits,
        max_connections: usize,
    ) -> Self {
        ReadyQueue {
            shaping_key: format!("{site}|{pool}"),
            site,
            pool,
            limits,
            dest: Mutex::new(dest),
            state: Mutex::new(State {
                lanes: BTreeMap::new(),
                len: 0,
                active: 0,
                idle: 0,
                max_connections: max_connections.max(1),
                last_used: Instant::now(),
                retired: false,
            }),
            notify: Notify::new(),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn dest(&self) -> std::sync::MutexGuard<'_, Destination> {
        self.dest.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub fn destination(&self) -> Destination {
        self.dest().clone()
    }

    /// Replace the destination unconditionally.
    pub fn set_destination(&self, d: Destination) {
        *self.dest() = d;
    }

    /// Take `d` if it was resolved after the destination held now (an answer as old or older
    /// is ignored, so a job routed from a stale cache entry cannot undo a refresh).
    /// Returns the replaced destination when the hosts or addresses changed.
    pub fn offer_destination(&self, d: &Destination) -> Option<Destination> {
        let mut cur = self.dest();
        if d.resolved_at <= cur.resolved_at {
            return None;
        }
        let changed = !cur.same_hosts(d);
        let old = std::mem::replace(&mut *cur, d.clone());
        changed.then_some(old)
    }

    /// Whether `addr` is still one of the destination's addresses.
    pub fn has_address(&self, addr: std::net::SocketAddr) -> bool {
        self.dest().hosts.iter().any(|h| h.addrs.contains(&addr))
    }

    /// Whether the destination's records have expired (`valid_until` passed) at `now`.
    pub fn destination_expired(&self, now: Instant) -> bool {
        self.dest().valid_until <= now
    }

    pub fn set_max_connections(&self, n: usize) {
        self.lock().max_connections = n.max(1);
    }

    /// Add a job. Ok(true) when the caller should start a new connection task (which then
    /// counts as active already). Err(job) when the queue was retired: route it again.
    pub fn push(&self, job: Job) -> Result<bool, Job> {
        let spawn = {
            let mut s = self.lock();
            if s.retired {
                return Err(job);
            }
            s.lanes
                .entry(Reverse(job.priority))
                .or_default()
                .push_back(job);
            s.len += 1;
            s.last_used = Instant::now();
            if s.active < s.max_connections && s.len > s.idle {
                s.active += 1;
                true
            } else {
                false
            }
        };
        self.notify.notify_one();
        Ok(spawn)
    }

    pub fn try_pop(&self) -> Option<Job> {
        let mut s = self.lock();
        let job = s.lanes.values_mut().find_map(|lane| lane.pop_front());
        if job.is_some() {
            s.len -= 1;
        }
        job
    }

    /// Wait up to `idle` for a job. None when none came (the connection should close).
    pub async fn next(&self, idle: Duration) -> Option<Job> {
        loop {
            let notified = self.notify.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            if let Some(j) = self.try_pop() {
                return Some(j);
            }
            self.lock().idle += 1;
            let woke = tokio::time::timeout(idle, notified).await.is_ok();
            self.lock().idle -= 1;
            if !woke {
                return self.try_pop();
            }
        }
    }

    /// Take every waiting job (the site is unreachable, or a purge).
    pub fn drain(&self) -> Vec<Job> {
        let mut s = self.lock();
        s.len = 0;
        let lanes = std::mem::take(&mut s.lanes);
        lanes.into_values().flatten().collect()
    }

    /// Remove the jobs for which `pred` holds.
    pub fn remove_where(&self, mut pred: impl FnMut(&Job) -> bool) -> Vec<Job> {
        let mut s = self.lock();
        let mut out = Vec::new();
        for lane in s.lanes.values_mut() {
            let mut keep = VecDeque::with_capacity(lane.len());
            for j in lane.drain(..) {
                if pred(&j) {
                    out.push(j);
                } else {
                    keep.push_back(j);
                }
            }
            *lane = keep;
        }
        s.len -= out.len();
        out
    }

    /// A connection task ends. Returns true when a replacement should start (work is waiting).
    pub fn connection_ended(&self) -> bool {
        let mut s = self.lock();
        s.active -= 1;
        s.last_used = Instant::now();
        if s.len > s.idle && s.active < s.max_connections {
            s.active += 1;
            true
        } else {
            false
        }
    }

    /// Retire the queue when, at `now`, it has no job and no connection and has had neither
    /// for `idle_for`. A retired queue refuses pushes (see [`ReadyQueue::push`]) for good.
    pub fn retire_if_idle(&self, now: Instant, idle_for: Duration) -> bool {
        let mut s = self.lock();
        if s.retired {
            return true;
        }
        if s.len == 0 && s.active == 0 && now.saturating_duration_since(s.last_used) >= idle_for {
            s.retired = true;
            // Lanes of priorities no longer used go with it.
            s.lanes = BTreeMap::new();
        }
        s.retired
    }

    pub fn len(&self) -> usize {
        self.lock().len
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    pub fn active_connections(&self) -> usize {
        self.lock().active
    }

    /// Visit every waiting job (for listings).
    pub fn for_each(&self, mut f: impl FnMut(&Job)) {
        let s = self.lock();
        for lane in s.lanes.values() {
            lane.iter().for_each(&mut f);
        }
    }
}

#[cfg(test)]
mod tests {
    use std::net::SocketAddr;
    use std::sync::Arc;

    use super::*;
    use crate::delivery::mx::Host;
    use crate::queue::QueuedMessage;
    use crate::spool::{Location, MessageRecord, MsgKey, RcptState};

    const IDLE: Duration = Duration::from_secs(600);

    fn dest(ip: &str, resolved_at: Instant) -> Destination {
        Destination {
            site: "mx.example.test".into(),
            mx_names: vec!["mx.example.test".into()],
            hosts: vec![Host {
                name: "mx.example.test".into(),
                addrs: vec![SocketAddr::new(ip.parse().unwrap(), 25)],
                preference: 10,
            }],
            valid_until: resolved_at + Duration::from_secs(30),
            resolved_at,
        }
    }

    fn job() -> Job {
        let record = MessageRecord {
            received_at_ms: 0,
            mail_from: "s@origin.test".into(),
            rcpts: vec!["r@example.test".into()],
            class: "promotional".into(),
            tenant: String::new(),
            campaign: String::new(),
            body: Vec::new(),
            attrs: Default::default(),
        };
        let location = Location {
            key: MsgKey {
                segment: 1,
                offset: 0,
            },
            len: 0,
        };
        let (msg, _) = QueuedMessage::from_record(location, record, vec![RcptState::Pending]);
        Job {
            id: 1,
            msg: Arc::new(msg),
            domain: "example.test".into(),
            rcpts: vec![0],
            attempts: 0,
            priority: 0,
        }
    }

    fn queue() -> ReadyQueue {
        ReadyQueue::new(
            "mx.example.test".into(),
            "p".into(),
            dest("192.0.2.1", Instant::now()),
            SiteLimits::default(),
            2,
        )
    }

    /// Issue 15 item 3: ready queues are evicted once idle, so domains mailed once do not hold
    /// memory forever. Table: (jobs waiting, connections alive, idle for) → retired?
    #[test]
    fn an_idle_ready_queue_is_retired_and_a_busy_one_never() {
        let cases: &[(&str, bool, bool, Duration, bool)] = &[
            // name, job waiting, connection alive, time since last use, retired
            (
                "empty, no connection, idle long enough",
                false,
                false,
                IDLE,
                true,
            ),
            (
                "empty, no connection, idle too briefly",
                false,
                false,
                IDLE / 2,
                false,
            ),
            ("a job waiting", true, false, IDLE * 10, false),
            ("a connection alive", false, true, IDLE * 10, false),
        ];
        for (name, waiting, connected, after, retired) in cases {
            let q = queue();
            if *connected {
                // A push with no idle connection starts one; take the job back out.
                assert_eq!(q.push(job()).ok(), Some(true), "{name}");
                assert!(q.try_pop().is_some(), "{name}");
            }
            if *waiting {
                assert!(q.push(job()).is_ok(), "{name}");
            }
            let now = Instant::now() + *after;
            assert_eq!(q.retire_if_idle(now, IDLE), *retired, "{name}");
        }
    }

    /// A connection ending counts as use: the idle time starts then, not at the last push.
    #[test]
    fn idleness_starts_when_the_last_connection_ends() {
        let q = queue();
        assert_eq!(q.push(job()).ok(), Some(true));
        assert!(q.try_pop().is_some());
        assert!(!q.connection_ended(), "nothing waits: no replacement");
        let ended = Instant::now();
        assert!(!q.retire_if_idle(ended + IDLE / 2, IDLE));
        assert!(q.retire_if_idle(ended + IDLE, IDLE));
    }

    /// A push that races with retirement is refused (the job comes back to be routed to a new
    /// queue), never swallowed by a queue that no dispatcher or listing will see again.
    #[test]
    fn a_retired_queue_hands_pushed_jobs_back() {
        let q = queue();
        assert!(q.retire_if_idle(Instant::now() + IDLE, IDLE));
        let back = q.push(job()).expect_err("a retired queue takes no job");
        assert_eq!(back.domain, "example.test");
        assert_eq!(q.len(), 0);
        assert_eq!(q.active_connections(), 0);
    }

    /// Issue 15 item 3: a newer answer replaces the hosts (reported when the addresses
    /// changed); an older or the same answer never undoes it.
    #[test]
    fn a_newer_destination_replaces_the_hosts_and_an_older_one_does_not() {
        let t0 = Instant::now();
        let q = ReadyQueue::new(
            "mx.example.test".into(),
            "p".into(),
            dest("192.0.2.1", t0),
            SiteLimits::default(),
            2,
        );
        let old_addr = SocketAddr::new("192.0.2.1".parse().unwrap(), 25);
        let new_addr = SocketAddr::new("192.0.2.2".parse().unwrap(), 25);
        // Same answer again: nothing happens.
        assert!(q.offer_destination(&dest("192.0.2.1", t0)).is_none());
        // Re-resolved, same addresses: taken silently (later expiry).
        let t1 = t0 + Duration::from_secs(1);
        assert!(q.offer_destination(&dest("192.0.2.1", t1)).is_none());
        assert_eq!(q.destination().resolved_at, t1);
        // Renumbered: taken, and the old hosts are reported.
        let t2 = t0 + Duration::from_secs(2);
        let replaced = q
            .offer_destination(&dest("192.0.2.2", t2))
            .expect("changed");
        assert_eq!(replaced.hosts[0].addrs, [old_addr]);
        assert!(q.has_address(new_addr) && !q.has_address(old_addr));
        // A job routed from an older cached answer does not bring the old address back.
        assert!(q.offer_destination(&dest("192.0.2.1", t1)).is_none());
        assert!(q.has_address(new_addr));
        assert!(!q.destination_expired(t2));
        assert!(q.destination_expired(t2 + Duration::from_secs(30)));
    }
}
