//! Queue depth for the gauges: recipients and oldest age grouped by (class, pool, provider,
//! state), read at scrape time from the same places `queue list` reads.
//!
//! The provider of a group is the shaping provider its site matched (`other` when none did);
//! jobs not yet routed to a site (waiting for a retry before resolution, or resolving) use the
//! domain's last resolution when there is one, else `unrouted`. Never does: change anything.

use std::collections::HashMap;
use std::sync::Arc;

use tokio::sync::oneshot;

use super::{Queue, QueuedMessage, scheduler};
use crate::metrics::gauges::Depth;

type Key = (String, String, String, &'static str);

impl Queue {
    /// Every queued recipient, grouped for the `gannet_queue_*` gauges.
    pub async fn depth(&self) -> Vec<Depth> {
        let mut groups: HashMap<Key, (usize, u64)> = HashMap::new();
        let mut add = |m: &QueuedMessage, pool: &str, provider: String, state, n: usize| {
            let g = groups
                .entry((m.class.clone(), pool.to_string(), provider, state))
                .or_default();
            g.0 += n;
            g.1 = g.1.max(m.age().as_secs());
        };
        for rq in self.inner.ready.iter() {
            let provider = rq.limits.provider.as_deref().unwrap_or("other").to_string();
            rq.for_each(|j| add(&j.msg, &rq.pool, provider.clone(), "ready", j.rcpts.len()));
        }
        let parked: Vec<(Arc<QueuedMessage>, String, String, usize)> = self
            .inner
            .parked
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .iter()
            .map(|(j, site, pool)| (j.msg.clone(), site.clone(), pool.clone(), j.rcpts.len()))
            .collect();
        for (m, site, pool, n) in parked {
            let provider = self.provider_of_site(&site, &pool);
            add(&m, &pool, provider, "suspended", n);
        }
        let resolving: Vec<(Arc<QueuedMessage>, String, usize)> = self
            .inner
            .resolving
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .values()
            .flatten()
            .map(|j| (j.msg.clone(), j.domain.clone(), j.rcpts.len()))
            .collect();
        for (m, domain, n) in resolving {
            let pool = self.class_pool(&m.class);
            add(&m, &pool, self.provider_of_domain(&domain), "resolving", n);
        }
        let in_flight: Vec<(Arc<QueuedMessage>, String, usize)> = self
            .inner
            .in_flight
            .iter()
            .map(|e| e.value().clone())
            .collect();
        for (m, domain, n) in in_flight {
            let pool = self.class_pool(&m.class);
            add(&m, &pool, self.provider_of_domain(&domain), "in-flight", n);
        }
        let (tx, rx) = oneshot::channel();
        let visit: scheduler::Visitor = Box::new(move |it| {
            let v: Vec<(Arc<QueuedMessage>, String, usize)> = it
                .map(|j| (j.msg.clone(), j.domain.clone(), j.rcpts.len()))
                .collect();
            let _ = tx.send(v);
        });
        if self
            .inner
            .sched_tx
            .send(scheduler::Cmd::Visit(visit))
            .await
            .is_ok()
        {
            for (m, domain, n) in rx.await.unwrap_or_default() {
                let pool = self.class_pool(&m.class);
                add(&m, &pool, self.provider_of_domain(&domain), "scheduled", n);
            }
        }
        groups
            .into_iter()
            .map(
                |((class, pool, provider, state), (recipients, oldest_secs))| Depth {
                    class,
                    pool,
                    provider,
                    state,
                    recipients,
                    oldest_secs,
                },
            )
            .collect()
    }

    /// Operator (and circuit-breaker) suspensions in force.
    pub fn suspension_count(&self) -> usize {
        self.inner.suspensions.list().len()
    }

    fn provider_of_site(&self, site: &str, pool: &str) -> String {
        if let Some(rq) = self.inner.ready.get(&(site.to_string(), pool.to_string())) {
            return rq.limits.provider.as_deref().unwrap_or("other").to_string();
        }
        let hosts: Vec<String> = site.split(',').map(str::to_string).collect();
        self.inner
            .shaping
            .provider_for("", &hosts)
            .unwrap_or("other")
            .to_string()
    }

    fn provider_of_domain(&self, domain: &str) -> String {
        match self.inner.dests.get(domain) {
            Some(d) => self
                .inner
                .shaping
                .provider_for(domain, &d.dest.mx_names)
                .unwrap_or("other")
                .to_string(),
            None => "unrouted".to_string(),
        }
    }
}

impl Queue {
    /// Warm-up progress of every source with a plan, on `today` (see `Warmup::progress`).
    pub fn warmup_progress(&self, today: crate::shaping::Day) -> Vec<(String, i64, usize)> {
        self.inner.dispatch.warmup.progress(today)
    }

    /// Sites with a backoff rule in force, and sources on a warm-up schedule.
    pub fn shaping_state(&self) -> (usize, usize) {
        let d = &self.inner.dispatch;
        (d.backoff.sites_in_backoff(), d.warmup.warming_sources())
    }
}
