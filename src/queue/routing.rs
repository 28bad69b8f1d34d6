//! Routing: where a job goes next. Resolves the job's domain (once per domain at a time, with
//! a short cache of destinations), picks the (site, pool) ready queue, starts a dispatcher for
//! a queue that has none, and parks jobs a suspension holds.
//!
//! Never does: decide outcomes (outcome.rs) or talk to an MX (dispatch/).

use std::sync::Arc;
use std::time::Instant;

use super::{DEST_TTL, Job, Queue, ReadyQueue, Via, dispatch};
use crate::delivery::{Destination, Outcome, ResolveError};

impl Queue {
    /// Send a job toward its ready queue, resolving its domain first when needed.
    pub(super) fn route(&self, job: Job) {
        if let Some(entry) = self.inner.dests.get(&job.domain)
            && entry.1 > Instant::now()
        {
            let dest = entry.0.clone();
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
                let result = q.inner.resolver.resolve(&domain).await;
                let jobs = q
                    .inner
                    .resolving
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .remove(&domain)
                    .unwrap_or_default();
                match result {
                    Ok(dest) => {
                        q.inner
                            .dests
                            .insert(domain, (dest.clone(), Instant::now() + DEST_TTL));
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

    pub(super) fn push_ready(&self, job: Job, dest: Destination) {
        let pool = self.class_pool(&job.msg.class);
        self.push_ready_to(job, dest, pool);
    }

    /// Queue a job for `dest` through `pool` (its class's pool, or an overflow pool).
    pub(super) fn push_ready_to(&self, job: Job, dest: Destination, pool: String) {
        if self
            .inner
            .suspensions
            .is_suspended(&job, Some(&dest.site), &pool)
        {
            self.park(job, dest.site, pool);
            return;
        }
        let key = (dest.site.clone(), pool.clone());
        let rq = match self.inner.ready.get(&key) {
            Some(rq) => rq.clone(),
            None => {
                self.inner
                    .ready
                    .entry(key)
                    .or_insert_with(|| {
                        let limits = self.inner.shaping.limits_for(&job.domain, &dest.mx_names);
                        let cap =
                            limits.site.max_connections.map(|c| c as usize).unwrap_or(
                                self.inner.config.delivery.max_connections_per_destination,
                            );
                        Arc::new(ReadyQueue::new(
                            dest.site.clone(),
                            pool,
                            dest.clone(),
                            limits,
                            cap,
                        ))
                    })
                    .clone()
            }
        };
        if rq.push(job) {
            dispatch::spawn_connection(self.inner.dispatch.clone(), rq);
        }
    }

    pub(super) fn park(&self, job: Job, site: String, pool: String) {
        self.inner
            .parked
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .push((job, site, pool));
    }
}
