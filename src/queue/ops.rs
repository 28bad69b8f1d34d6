//! Operator control and listing: flush, suspend / resume (persistent suspensions, see
//! control.rs), purge, and the `queue list` rows. Each action publishes its event with the
//! actor (API token name, `cli` or `loopback`).
//!
//! Never does: deliver, or change a message's state except through outcome.rs (purge).

use std::collections::HashMap;
use std::sync::Arc;

use serde::Serialize;
use tokio::sync::oneshot;

use super::{Filter, Job, Queue, QueuedMessage, Suspension, scheduler};
use crate::events::{Event, EventKind};

/// One row of `gannet queue list`.
#[derive(Debug, Clone, Serialize, PartialEq, Eq, utoipa::ToSchema)]
pub struct QueueRow {
    pub domain: String,
    pub site: Option<String>,
    pub class: String,
    pub tenant: String,
    pub campaign: String,
    pub pool: String,
    pub recipients: usize,
    pub oldest_age_secs: u64,
    /// "ready" (due now), "scheduled" (waiting for a retry), "resolving", "in-flight".
    pub state: String,
}

#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct QueueListing {
    pub queued_recipients: usize,
    pub queues: Vec<QueueRow>,
    /// Damaged spool records the operator must look at (issue 15 item 1).
    #[schema(value_type = Vec<Object>)]
    pub damaged: Vec<crate::spool::DamagedRecord>,
}

impl Queue {
    /// Release every job waiting for a retry now. Returns how many were released.
    pub async fn flush(&self, actor: &str) -> usize {
        self.inner.resolver.clear_negative_cache();
        self.inner.dests.clear();
        let (tx, rx) = oneshot::channel();
        if self
            .inner
            .sched_tx
            .send(scheduler::Cmd::Flush(tx))
            .await
            .is_err()
        {
            return 0;
        }
        let n = rx.await.unwrap_or(0);
        self.inner.bus.publish(Event::new(EventKind::Flushed {
            actor: actor.to_string(),
            released: n as u64,
        }));
        n
    }

    /// Everything queued that matches `filter`, grouped by (domain, class, tenant, campaign,
    /// pool, state).
    pub async fn list(&self, filter: &Filter) -> QueueListing {
        // Waiting jobs of the scheduler are visited on its task; collect what a row needs.
        let (tx, rx) = oneshot::channel();
        let visit: scheduler::Visitor = Box::new(move |it| {
            let v: Vec<(Arc<QueuedMessage>, String, usize)> = it
                .map(|j| (j.msg.clone(), j.domain.clone(), j.rcpts.len()))
                .collect();
            let _ = tx.send(v);
        });
        let scheduled = match self.inner.sched_tx.send(scheduler::Cmd::Visit(visit)).await {
            Ok(()) => rx.await.unwrap_or_default(),
            Err(_) => Vec::new(),
        };

        type Key = (String, String, String, String, String, String);
        let mut rows: HashMap<Key, QueueRow> = HashMap::new();
        let mut add = |m: &QueuedMessage,
                       domain: &str,
                       n: usize,
                       site: Option<&str>,
                       pool: &str,
                       state: &str| {
            let key = (
                domain.to_string(),
                m.class.clone(),
                m.tenant.clone(),
                m.campaign.clone(),
                pool.to_string(),
                state.to_string(),
            );
            let row = rows.entry(key).or_insert_with(|| QueueRow {
                domain: domain.to_string(),
                site: site.map(str::to_string),
                class: m.class.clone(),
                tenant: m.tenant.clone(),
                campaign: m.campaign.clone(),
                pool: pool.to_string(),
                recipients: 0,
                oldest_age_secs: 0,
                state: state.to_string(),
            });
            row.recipients += n;
            row.oldest_age_secs = row.oldest_age_secs.max(m.age().as_secs());
        };
        for rq in self.inner.ready.iter() {
            rq.for_each(|j| {
                add(
                    &j.msg,
                    &j.domain,
                    j.rcpts.len(),
                    Some(&rq.site),
                    &rq.pool,
                    "ready",
                )
            });
        }
        for (j, site, pool) in self
            .inner
            .parked
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .iter()
        {
            add(
                &j.msg,
                &j.domain,
                j.rcpts.len(),
                Some(site),
                pool,
                "suspended",
            );
        }
        for jobs in self
            .inner
            .resolving
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .values()
        {
            for j in jobs {
                let pool = self.class_pool(&j.msg.class);
                add(&j.msg, &j.domain, j.rcpts.len(), None, &pool, "resolving");
            }
        }
        for e in self.inner.in_flight.iter() {
            let (m, domain, n) = e.value();
            add(m, domain, *n, None, &self.class_pool(&m.class), "in-flight");
        }
        for (m, domain, n) in &scheduled {
            add(m, domain, *n, None, &self.class_pool(&m.class), "scheduled");
        }
        let mut queues: Vec<QueueRow> = rows
            .into_values()
            .filter(|r| filter.matches_row(r))
            .collect();
        queues.sort_by(|a, b| (&a.domain, &a.state).cmp(&(&b.domain, &b.state)));
        QueueListing {
            queued_recipients: self.inner.metrics.queued_recipients.get().max(0) as usize,
            queues,
            damaged: self.inner.spool.damaged(),
        }
    }

    /// Hold every job matching `filter` out of delivery until resumed (survives restarts).
    /// Returns the suspension and how many recipients were held at once.
    pub fn suspend(&self, filter: Filter, actor: &str) -> (Suspension, usize) {
        self.suspend_because(filter, actor, "")
    }

    /// [`Queue::suspend`], with the reason the suspension and its event carry (the anomaly
    /// that tripped a circuit breaker). An existing suspension with the same filter is kept
    /// as it is (with its own reason).
    pub fn suspend_because(
        &self,
        filter: Filter,
        actor: &str,
        reason: &str,
    ) -> (Suspension, usize) {
        let s = self.inner.suspensions.add(filter.clone(), reason);
        let mut held = 0;
        for rq in self.inner.ready.iter() {
            for j in rq.remove_where(|j| filter.matches(j, Some(&rq.site), &rq.pool)) {
                held += j.rcpts.len();
                self.park(j, rq.site.clone(), rq.pool.clone());
            }
        }
        self.inner.bus.publish(Event::new(EventKind::Suspended {
            actor: actor.to_string(),
            suspension_id: s.id,
            filter: serde_json::to_value(&s.filter).unwrap_or_default(),
            held: held as u64,
            reason: s.reason.clone(),
        }));
        (s, held)
    }

    /// Remove the suspensions with exactly this filter (all of them for an empty filter) and
    /// release the jobs no other suspension holds. Returns (suspensions removed, recipients
    /// released).
    pub fn resume(&self, filter: &Filter, actor: &str) -> (usize, usize) {
        let removed = self.inner.suspensions.remove(filter);
        let parked =
            std::mem::take(&mut *self.inner.parked.lock().unwrap_or_else(|p| p.into_inner()));
        let mut released = 0;
        for (job, site, pool) in parked {
            if self
                .inner
                .suspensions
                .is_suspended(&job, Some(&site), &pool)
            {
                self.park(job, site, pool);
            } else {
                released += job.rcpts.len();
                self.route(job);
            }
        }
        self.inner.bus.publish(Event::new(EventKind::Resumed {
            actor: actor.to_string(),
            filter: serde_json::to_value(filter).unwrap_or_default(),
            removed: removed as u64,
            released: released as u64,
        }));
        (removed, released)
    }

    pub fn suspensions(&self) -> Vec<Suspension> {
        self.inner.suspensions.list()
    }

    /// Delete matching queued mail (not what is being delivered this instant): recipients are
    /// logged as `purged`, get no DSN, and leave the spool. Returns recipients purged.
    pub async fn purge(&self, filter: &Filter, actor: &str) -> usize {
        let f = filter.clone();
        let (mut jobs, waiting) = self
            .take_where(move |j, site, pool| f.matches(j, site, pool))
            .await;
        jobs.extend(waiting);
        let mut n = 0;
        for job in jobs {
            n += job.rcpts.len();
            self.finalize_purged(job, actor);
        }
        tracing::info!(target: "gannet::control", event = "purged", filter = ?filter, recipients = n, actor);
        n
    }

    /// Take every queued job (ready, parked, waiting for DNS, waiting for a retry) for which
    /// `pred(job, site when known, pool)` holds out of the queue: (those that were due, those
    /// that were waiting for their retry time). What is being delivered this instant is not
    /// taken.
    async fn take_where(
        &self,
        pred: impl Fn(&Job, Option<&str>, &str) -> bool + Send + Sync + 'static,
    ) -> (Vec<Job>, Vec<Job>) {
        let mut jobs = Vec::new();
        for rq in self.inner.ready.iter() {
            jobs.extend(rq.remove_where(|j| pred(j, Some(&rq.site), &rq.pool)));
        }
        {
            let mut parked = self.inner.parked.lock().unwrap_or_else(|p| p.into_inner());
            let all = std::mem::take(&mut *parked);
            for (j, site, pool) in all {
                if pred(&j, Some(&site), &pool) {
                    jobs.push(j);
                } else {
                    parked.push((j, site, pool));
                }
            }
        }
        {
            let mut r = self
                .inner
                .resolving
                .lock()
                .unwrap_or_else(|p| p.into_inner());
            for waiting in r.values_mut() {
                let all = std::mem::take(waiting);
                for j in all {
                    let pool = self.class_pool(&j.msg.class);
                    if pred(&j, None, &pool) {
                        jobs.push(j);
                    } else {
                        waiting.push(j);
                    }
                }
            }
        }
        let (tx, rx) = oneshot::channel();
        let q = self.clone();
        let p: scheduler::Predicate = Box::new(move |j: &Job| {
            // Waiting jobs do not carry their site; the last resolution of the domain does.
            let site = q.inner.dests.get(&j.domain).map(|d| d.dest.site.clone());
            pred(j, site.as_deref(), &q.class_pool(&j.msg.class))
        });
        if self
            .inner
            .sched_tx
            .send(scheduler::Cmd::Take(p, tx))
            .await
            .is_ok()
            && let Ok(taken) = rx.await
        {
            return (jobs, taken);
        }
        (jobs, Vec::new())
    }

    /// GDPR erasure: drop every queued recipient `address` (case-insensitive), logged as
    /// `purged` by `actor`; the other recipients of the same jobs stay queued as they were.
    /// Returns recipients dropped.
    pub async fn purge_recipient(&self, address: &str, actor: &str) -> usize {
        let want = address.trim().to_lowercase();
        let is_it = move |r: &str| r.trim().to_lowercase() == want;
        let hit = is_it.clone();
        let (due, waiting) = self
            .take_where(move |j, _, _| j.rcpts.iter().any(|i| hit(&j.msg.rcpts[*i as usize])))
            .await;
        let mut n = 0;
        let tagged = due
            .into_iter()
            .map(|j| (j, false))
            .chain(waiting.into_iter().map(|j| (j, true)));
        for (job, was_waiting) in tagged {
            let (gone, keep): (Vec<u32>, Vec<u32>) = job
                .rcpts
                .iter()
                .copied()
                .partition(|i| is_it(&job.msg.rcpts[*i as usize]));
            n += gone.len();
            if !keep.is_empty() {
                let rest = Job {
                    id: job.id,
                    msg: job.msg.clone(),
                    domain: job.domain.clone(),
                    rcpts: keep,
                    attempts: job.attempts,
                    priority: job.priority,
                };
                if was_waiting {
                    // Its remaining wait is not known here; a full retry delay is never
                    // earlier than planned (an erasure must not cause an extra attempt).
                    let delay = self.retry_delay(rest.attempts, &rest.msg);
                    let _ = self
                        .inner
                        .sched_tx
                        .send(scheduler::Cmd::Schedule(rest, delay))
                        .await;
                } else {
                    self.route(rest);
                }
            }
            self.finalize_purged(Job { rcpts: gone, ..job }, actor);
        }
        tracing::info!(target: "gannet::control", event = "purged", reason = "erasure", recipients = n, actor);
        n
    }
}
