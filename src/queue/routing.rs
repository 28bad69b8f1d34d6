//! Routing: where a job goes next. Resolves the job's domain (once per domain at a time)
//! through the destination cache, picks the (site, pool) ready queue and hands it newer
//! answers, starts a dispatcher for a queue that has none, parks jobs a suspension holds, and
//! sweeps out idle ready queues and expired destinations.
//!
//! Destination cache (domain → [`Destination`]): an answer is used until its `valid_until`
//! (the records' smallest TTL within `[dns] min_ttl..=max_ttl`); then the domain is asked
//! again, when a job is routed and when a dispatcher is about to open a connection
//! ([`Queue::refresh_destination`]). A newer answer replaces the ready queue's hosts
//! (`ReadyQueue::offer_destination`, logged when the addresses changed). A temporary failure
//! to re-resolve keeps the previous answer until `valid_until + [dns] stale_grace`, with a
//! warning each `[dns] negative_ttl`; a permanent answer (NXDOMAIN, null MX) is final.
//! Memory: ready queues idle (no job, no connection) for `[delivery] ready_queue_idle` and
//! cached destinations past their grace are dropped by [`Queue::sweep_routing`].
//!
//! Never does: decide outcomes (outcome.rs) or talk to an MX (dispatch/).

use std::sync::Arc;
use std::time::{Duration, Instant};

use super::dispatch::{self, Refreshed};
use super::{Job, Queue, ReadyQueue, Via};
use crate::delivery::{Destination, Outcome, ResolveError};

/// A cached answer for one domain.
pub(super) struct CachedDest {
    pub dest: Destination,
    /// Dropped after this (`valid_until + stale_grace` of the answer as resolved); until then
    /// it may stand in for a failed re-resolution.
    pub keep_until: Instant,
}

/// Sizes of the routing maps (for the sweep's log line, tests and the benchmark).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct RoutingStats {
    pub ready_queues: usize,
    pub destinations: usize,
    /// Domains whose temporary DNS failure is remembered.
    pub negative: usize,
}

/// `name=ip:port,ip:port name2=...` for log lines.
fn hosts_text(d: &Destination) -> String {
    d.hosts
        .iter()
        .map(|h| {
            let addrs: Vec<String> = h.addrs.iter().map(|a| a.to_string()).collect();
            format!("{}={}", h.name, addrs.join(","))
        })
        .collect::<Vec<_>>()
        .join(" ")
}

impl Queue {
    /// Send a job toward its ready queue, resolving its domain first when needed.
    pub(super) fn route(&self, job: Job) {
        if let Some(entry) = self.inner.dests.get(&job.domain)
            && entry.dest.valid_until > Instant::now()
        {
            let dest = entry.dest.clone();
            drop(entry);
            self.push_ready(job, dest);
            return;
        }
        let domain = job.domain.clone();
        let first = {
            let mut r = self
                .inner
                .resolving
                .lock()
                .unwrap_or_else(|p| p.into_inner());
            let waiting = r.entry(domain.clone()).or_default();
            waiting.push(job);
            waiting.len() == 1
        };
        if first {
            let q = self.clone();
            self.inner.dispatch.tasks.spawn(async move {
                let result = q.resolve_cached(&domain).await;
                let jobs = q
                    .inner
                    .resolving
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .remove(&domain)
                    .unwrap_or_default();
                match result {
                    Ok(dest) => {
                        for j in jobs {
                            q.push_ready(j, dest.clone());
                        }
                    }
                    Err(ResolveError::Temporary(reply)) => {
                        for j in jobs {
                            q.complete_all(j, Outcome::Deferred(reply.clone()), &Via::default());
                        }
                    }
                    Err(ResolveError::Permanent(reply)) => {
                        for j in jobs {
                            q.complete_all(j, Outcome::Bounced(reply.clone()), &Via::default());
                        }
                    }
                }
            });
        }
    }

    /// The domain's destination: the cached answer while valid, else a fresh resolution
    /// (cached); a temporary failure falls back to the previous answer within its grace.
    pub(super) async fn resolve_cached(&self, domain: &str) -> Result<Destination, ResolveError> {
        if let Some(c) = self.inner.dests.get(domain)
            && c.dest.valid_until > Instant::now()
        {
            return Ok(c.dest.clone());
        }
        let result = self.inner.resolver.resolve(domain).await;
        let now = Instant::now();
        if let Err(e) = &result {
            let kind = match e {
                ResolveError::Temporary(_) => "temporary",
                ResolveError::Permanent(_) => "permanent",
            };
            self.inner
                .metrics
                .dns_errors
                .with_label_values(&[kind])
                .inc();
        }
        match result {
            Ok(dest) => {
                let keep_until = dest.valid_until + self.inner.config.dns.stale_grace;
                self.inner.dests.insert(
                    domain.to_string(),
                    CachedDest {
                        dest: dest.clone(),
                        keep_until,
                    },
                );
                Ok(dest)
            }
            Err(ResolveError::Temporary(reply)) => {
                if let Some(mut c) = self.inner.dests.get_mut(domain)
                    && c.keep_until > now
                {
                    let again = self
                        .inner
                        .resolver
                        .negative_ttl()
                        .max(Duration::from_secs(1));
                    c.dest.valid_until = (now + again).min(c.keep_until);
                    tracing::warn!(
                        domain,
                        site = %c.dest.site,
                        hosts = %hosts_text(&c.dest),
                        error = %reply,
                        stale_for_at_most_secs = c.keep_until.saturating_duration_since(now).as_secs(),
                        "re-resolving the domain failed; its mail keeps going to the previous MX \
                         addresses until [dns] stale_grace runs out, then it is deferred (check the \
                         domain's DNS and [dns] nameservers)"
                    );
                    return Ok(c.dest.clone());
                }
                Err(ResolveError::Temporary(reply))
            }
            Err(e) => {
                self.inner.dests.remove(domain);
                Err(e)
            }
        }
    }

    /// Before a dispatcher connects for `rq` with a job of `domain`: when the queue's hosts
    /// have expired, resolve again and take the newer answer.
    pub(super) async fn refresh_destination(&self, rq: &ReadyQueue, domain: &str) -> Refreshed {
        if !rq.destination_expired(Instant::now()) {
            return Refreshed::Current;
        }
        match self.resolve_cached(domain).await {
            Ok(d) if d.site == rq.site => {
                self.offer_destination(rq, &d);
                Refreshed::Current
            }
            Ok(d) => Refreshed::Moved(d),
            Err(ResolveError::Temporary(r)) => Refreshed::Failed(Outcome::Deferred(r)),
            Err(ResolveError::Permanent(r)) => Refreshed::Failed(Outcome::Bounced(r)),
        }
    }

    /// Give `rq` a destination answer; say so when its addresses changed.
    fn offer_destination(&self, rq: &ReadyQueue, d: &Destination) {
        if let Some(old) = rq.offer_destination(d) {
            tracing::info!(
                site = %rq.site,
                pool = %rq.pool,
                old = %hosts_text(&old),
                new = %hosts_text(d),
                "the site's MX hosts or addresses changed; new connections use the new ones"
            );
        }
    }

    pub(super) fn push_ready(&self, job: Job, dest: Destination) {
        let pool = self.class_pool(&job.msg.class);
        self.push_ready_to(job, dest, pool);
    }

    /// Queue a job for `dest` through `pool` (its class's pool, or an overflow pool).
    pub(super) fn push_ready_to(&self, job: Job, dest: Destination, pool: String) {
        // Suppressed since it was queued: those recipients are dropped here (`suppress`).
        let Some(job) = self.drop_suppressed(job, &pool) else {
            return;
        };
        if self
            .inner
            .suspensions
            .is_suspended(&job, Some(&dest.site), &pool)
        {
            self.park(job, dest.site, pool);
            return;
        }
        let key = (dest.site.clone(), pool.clone());
        let mut job = job;
        loop {
            let rq = match self.inner.ready.get(&key) {
                Some(rq) => rq.clone(),
                None => {
                    self.inner
                        .ready
                        .entry(key.clone())
                        .or_insert_with(|| {
                            let limits = self.inner.shaping.limits_for(&job.domain, &dest.mx_names);
                            let cap = limits.site.max_connections.map(|c| c as usize).unwrap_or(
                                self.inner.config.delivery.max_connections_per_destination,
                            );
                            Arc::new(ReadyQueue::new(
                                dest.site.clone(),
                                pool.clone(),
                                dest.clone(),
                                limits,
                                cap,
                            ))
                        })
                        .clone()
                }
            };
            self.offer_destination(&rq, &dest);
            match rq.push(job) {
                Ok(spawn) => {
                    if spawn {
                        dispatch::spawn_connection(self.inner.dispatch.clone(), rq);
                    }
                    return;
                }
                Err(back) => {
                    // The sweep retired this queue between our lookup and the push: drop it
                    // from the map (if still there) and make a fresh one.
                    job = back;
                    self.inner.ready.remove_if(&key, |_, q| Arc::ptr_eq(q, &rq));
                }
            }
        }
    }

    pub(super) fn park(&self, job: Job, site: String, pool: String) {
        self.inner
            .parked
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .push((job, site, pool));
    }

    /// Drop ready queues idle (no job, no connection) for `[delivery] ready_queue_idle`,
    /// destinations past `valid_until + [dns] stale_grace` and expired DNS failures, as of
    /// `now`. Returns what is left.
    pub fn sweep_routing(&self, now: Instant) -> RoutingStats {
        let idle = self.inner.config.delivery.ready_queue_idle;
        self.inner
            .ready
            .retain(|_, rq| !rq.retire_if_idle(now, idle));
        self.inner.dests.retain(|_, c| c.keep_until > now);
        // Give the tables' memory back once most of it is unused.
        if self.inner.ready.capacity() > 2 * self.inner.ready.len() + 1024 {
            self.inner.ready.shrink_to_fit();
        }
        if self.inner.dests.capacity() > 2 * self.inner.dests.len() + 1024 {
            self.inner.dests.shrink_to_fit();
        }
        let negative = self.inner.resolver.prune_negative_cache(now);
        RoutingStats {
            ready_queues: self.inner.ready.len(),
            destinations: self.inner.dests.len(),
            negative,
        }
    }

    /// Sizes of the routing maps now (expired DNS failures are dropped first).
    pub fn routing_stats(&self) -> RoutingStats {
        RoutingStats {
            ready_queues: self.inner.ready.len(),
            destinations: self.inner.dests.len(),
            negative: self.inner.resolver.prune_negative_cache(Instant::now()),
        }
    }
}
