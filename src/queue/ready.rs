//! Ready queue: jobs due now for one (site, pool), waiting for a connection to take them.
//!
//! Jobs wait in priority lanes (the class priority): a connection always takes from the
//! highest lane first, so a transactional message never waits behind promotional ones queued
//! for the same site. The queue also counts its connections and tells the caller when another
//! one should be opened (work waiting, no idle connection, under the cap).

use std::cmp::Reverse;
use std::collections::{BTreeMap, VecDeque};
use std::sync::Mutex;
use std::time::Duration;

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
    /// Hosts to connect to; refreshed when a domain of this site is resolved again.
    dest: Mutex<Destination>,
    /// Lanes and counters. Short critical sections, never across `.await`: std Mutex.
    state: Mutex<State>,
    notify: Notify,
}

#[derive(Default)]
struct State {
    lanes: BTreeMap<Reverse<i32>, VecDeque<Job>>,
    len: usize,
    /// Connection tasks alive for this queue.
    active: usize,
    /// Of those, how many are waiting for a job.
    idle: usize,
    max_connections: usize,
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
                max_connections: max_connections.max(1),
                ..State::default()
            }),
            notify: Notify::new(),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub fn destination(&self) -> Destination {
        self.dest.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }

    pub fn set_destination(&self, d: Destination) {
        *self.dest.lock().unwrap_or_else(|p| p.into_inner()) = d;
    }

    pub fn set_max_connections(&self, n: usize) {
        self.lock().max_connections = n.max(1);
    }

    /// Add a job. Returns true when the caller should start a new connection task (which then
    /// counts as active already).
    pub fn push(&self, job: Job) -> bool {
        let spawn = {
            let mut s = self.lock();
            s.lanes
                .entry(Reverse(job.priority))
                .or_default()
                .push_back(job);
            s.len += 1;
            if s.active < s.max_connections && s.len > s.idle {
                s.active += 1;
                true
            } else {
                false
            }
        };
        self.notify.notify_one();
        spawn
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
        if s.len > s.idle && s.active < s.max_connections {
            s.active += 1;
            true
        } else {
            false
        }
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
