//! Outcomes: what happens after an attempt. Publishes one event per recipient, then records
//! the state in the spool (held until the events are durable when a durable subscriber is
//! registered), releases finished messages, hands failed recipients on for a DSN (saved as
//! owed together with the states that say they failed, so the notice survives any restart),
//! computes the retry delay and expiry, and finalises purged recipients.
//!
//! Never does: build DSNs (bounce/), log or count (the event subscribers do).

use std::net::IpAddr;
use std::sync::atomic::Ordering;
use std::time::Duration;

use rand::Rng;
use tokio::sync::mpsc;

use super::{BounceRequest, Job, Queue, QueuedMessage, Via, scheduler};
use crate::delivery::{Outcome, Reply};
use crate::events::{Event, EventKind};
use crate::spool::{DsnOwed, RcptState};

impl Queue {
    /// Record outcomes of one attempt for a job's recipients (one outcome per entry of
    /// `job.rcpts`, same order): one event per recipient first, then the spool's state (held
    /// until the events are durable when a durable subscriber is registered), then the DSN
    /// request and the retry.
    pub fn complete(&self, job: Job, outcomes: Vec<Outcome>, via: &Via) {
        let msg = job.msg.clone();
        let attempt = job.attempts + 1;
        let max_age = self.inner.config.delivery.max_age;
        let pool = if via.pool.is_empty() {
            self.class_pool(&msg.class)
        } else {
            via.pool.clone()
        };
        let mut deferred = Vec::new();
        let mut failed = Vec::new();
        let mut finals = 0usize;
        let mut delay = None;
        let mut last_seq = 0;
        let host = (!via.mx_host.is_empty()).then(|| via.mx_host.clone());
        // The provider whose bounce rules go first: the shaping block the site matched, else a
        // `[[provider]]` of the bounce rules matching the MX host. Looked up only on failure.
        let mut provider: Option<String> = None;
        let mut classify = |r: &Reply| {
            let p = provider.get_or_insert_with(|| match &via.provider {
                Some(p) => p.to_string(),
                None => self
                    .inner
                    .classifier
                    .provider_for(None, &job.domain, std::slice::from_ref(&via.mx_host))
                    .unwrap_or_default(),
            });
            let c = self
                .inner
                .classifier
                .classify(r.into(), (!p.is_empty()).then_some(p.as_str()));
            (c.category.to_string(), c.hard, p.clone())
        };
        let (all_final, all_done, snapshot) = {
            let mut states = msg.states();
            for (idx, outcome) in job.rcpts.iter().zip(outcomes) {
                let i = *idx as usize;
                let expired = matches!(outcome, Outcome::Deferred(_)) && msg.age() >= max_age;
                let mut last_error = None;
                let outcome = match outcome {
                    // RFC 3463 X.4.7 "delivery time expired", as a permanent failure.
                    Outcome::Deferred(r) if expired => {
                        last_error = Some(classify(&r));
                        Outcome::Bounced(Reply::new(
                            554,
                            "5.4.7",
                            format!(
                                "message expired after {}s in the queue; last error: {r}",
                                msg.age().as_secs()
                            ),
                        ))
                    }
                    o => o,
                };
                let kind = match &outcome {
                    Outcome::Delivered(r) => EventKind::Delivered {
                        site: via.site.clone(),
                        mx_host: via.mx_host.clone(),
                        remote_ip: ip_text(via.remote_ip),
                        source_ip: ip_text(via.source_ip),
                        tls: via.tls.clone(),
                        reply: r.to_string(),
                        queue_secs: msg.age().as_secs_f64(),
                        provider: via.provider.as_deref().unwrap_or_default().to_string(),
                    },
                    Outcome::Deferred(r) => {
                        let d = *delay.get_or_insert_with(|| self.retry_delay(attempt, &msg));
                        let (category, _, provider) = classify(r);
                        EventKind::Deferred {
                            site: via.site.clone(),
                            mx_host: via.mx_host.clone(),
                            remote_ip: ip_text(via.remote_ip),
                            source_ip: ip_text(via.source_ip),
                            reply: r.to_string(),
                            category,
                            provider,
                            retry_in_secs: d.as_secs(),
                        }
                    }
                    // The category is the last error's: what kept the recipient undeliverable.
                    Outcome::Bounced(r) if expired => {
                        let (category, hard, provider) =
                            last_error.take().unwrap_or_else(|| classify(r));
                        EventKind::Expired {
                            reply: r.to_string(),
                            category,
                            hard,
                            provider,
                        }
                    }
                    Outcome::Bounced(r) => {
                        let (category, hard, provider) = classify(r);
                        EventKind::Bounced {
                            site: via.site.clone(),
                            mx_host: via.mx_host.clone(),
                            remote_ip: ip_text(via.remote_ip),
                            source_ip: ip_text(via.source_ip),
                            reply: r.to_string(),
                            category,
                            hard,
                            provider,
                        }
                    }
                };
                last_seq = self.publish_for(&msg, i, attempt, &pool, kind);
                match outcome {
                    Outcome::Delivered(_) => {
                        states[i] = RcptState::Delivered;
                        finals += 1;
                    }
                    Outcome::Bounced(r) => {
                        states[i] = RcptState::Failed;
                        finals += 1;
                        failed.push(DsnOwed {
                            rcpt: i as u32,
                            code: r.code,
                            enhanced: r.enhanced,
                            text: r.text,
                            remote_host: host.clone(),
                        });
                    }
                    Outcome::Deferred(_) => deferred.push(*idx),
                }
            }
            // A DSN owed is saved with the states that say the recipient failed (one
            // snapshot, one index write): the notice cannot be lost between the two.
            if msg.mail_from.is_empty() {
                failed.clear();
            }
            let mut owed = msg.owed_dsns();
            owed.extend(failed.iter().cloned());
            let done = states.iter().all(|s| *s != RcptState::Pending);
            (
                done,
                done && owed.is_empty(),
                (finals > 0).then(|| (states.clone(), owed.clone())),
            )
        };
        self.inner.metrics.queued_recipients.sub(finals as i64);
        if all_final || !deferred.is_empty() {
            let released = msg.drop_body();
            self.inner
                .cache_bytes
                .fetch_sub(released, Ordering::Relaxed);
        }
        let spool = self.inner.spool.clone();
        let key = msg.location.key;
        let m = msg.clone();
        let q = self.clone();
        self.after_durable(last_seq, move || {
            match snapshot {
                Some(_) if all_done => spool.complete(key),
                Some((states, owed)) => spool.record_progress(key, &states, &owed),
                None => {}
            }
            if !failed.is_empty() {
                q.request_dsn(BounceRequest {
                    msg: m,
                    failed,
                    pool,
                });
            }
        });
        if !deferred.is_empty() {
            let delay = delay.unwrap_or_else(|| self.retry_delay(attempt, &msg));
            let retry = Job {
                rcpts: deferred,
                attempts: attempt,
                ..job
            };
            if let Err(mpsc::error::TrySendError::Full(cmd)) = self
                .inner
                .sched_tx
                .try_send(scheduler::Cmd::Schedule(retry, delay))
            {
                let tx = self.inner.sched_tx.clone();
                tokio::spawn(async move {
                    let _ = tx.send(cmd).await;
                });
            }
        }
    }

    /// The same outcome for every recipient of the job.
    pub fn complete_all(&self, job: Job, outcome: Outcome, via: &Via) {
        let outcomes = vec![outcome; job.rcpts.len()];
        self.complete(job, outcomes, via);
    }

    /// Publish an event about recipient `i` of `msg`, with the common fields filled.
    pub(super) fn publish_for(
        &self,
        msg: &QueuedMessage,
        i: usize,
        attempt: u32,
        pool: &str,
        kind: EventKind,
    ) -> u64 {
        let mut e = Event::new(kind);
        e.queue_id = msg.queue_id.clone();
        e.message_id = msg.message_id.clone();
        e.recipient = msg.rcpts[i].clone();
        e.sender = msg.mail_from.clone();
        e.tenant = msg.tenant.clone();
        e.campaign = msg.campaign.clone();
        e.class = msg.class.clone();
        e.pool = pool.to_string();
        e.attempt = attempt;
        self.inner.bus.publish(e)
    }

    /// Run a spool state change once the events up to `seq` are durable. Without a durable
    /// subscriber that is now; with one, state changes queue on one task in publish order,
    /// so a crash can leave an event without its state change (the work is repeated) but
    /// never a state change without its event.
    ///
    /// When nothing is queued and the events are durable already (a durable subscriber that
    /// takes only some kinds, like the suppression policy, never holds back the others), the
    /// change runs at once instead of taking a turn on that task.
    pub(super) fn after_durable(&self, seq: u64, f: impl FnOnce() + Send + 'static) {
        use std::sync::atomic::Ordering;
        let inner = &self.inner;
        if !inner.bus.has_durable()
            || (inner.durable_waiting.load(Ordering::Acquire) == 0
                && inner.bus.durable_through() >= seq)
        {
            f();
            return;
        }
        inner.durable_waiting.fetch_add(1, Ordering::AcqRel);
        if inner.durable_tx.send((seq, Box::new(f))).is_err() {
            inner.durable_waiting.fetch_sub(1, Ordering::AcqRel);
        }
    }

    /// Delay before attempt `attempt + 1`: the configured schedule (last entry repeats) with
    /// jitter, never past the message's expiry (so expiry is noticed on time).
    pub(super) fn retry_delay(&self, attempt: u32, msg: &QueuedMessage) -> Duration {
        let d = &self.inner.config.delivery;
        let idx = (attempt as usize)
            .saturating_sub(1)
            .min(d.retry_schedule.len() - 1);
        let base = d.retry_schedule[idx].as_secs_f64();
        let j = d.retry_jitter;
        let factor = if j > 0.0 {
            rand::thread_rng().gen_range((1.0 - j)..(1.0 + j))
        } else {
            1.0
        };
        let delay = Duration::from_secs_f64(base * factor);
        let left = d.max_age.saturating_sub(msg.age());
        delay.min(left)
    }

    pub(super) fn finalize_purged(&self, job: Job, actor: &str) {
        let msg = job.msg.clone();
        let pool = self.class_pool(&msg.class);
        let mut last_seq = 0;
        let (all_done, snapshot) = {
            let mut states = msg.states();
            for idx in &job.rcpts {
                let i = *idx as usize;
                states[i] = RcptState::Failed;
                let kind = EventKind::Purged {
                    actor: actor.to_string(),
                };
                last_seq = self.publish_for(&msg, i, job.attempts, &pool, kind);
            }
            // Purged recipients get no DSN, but earlier failures may still owe one.
            let owed = msg.owed_dsns();
            let done = states.iter().all(|s| *s != RcptState::Pending);
            (
                done,
                (!done || !owed.is_empty()).then(|| (states.clone(), owed.clone())),
            )
        };
        self.inner
            .metrics
            .queued_recipients
            .sub(job.rcpts.len() as i64);
        if all_done {
            let released = msg.drop_body();
            self.inner
                .cache_bytes
                .fetch_sub(released, Ordering::Relaxed);
        }
        let spool = self.inner.spool.clone();
        let key = msg.location.key;
        self.after_durable(last_seq, move || match snapshot {
            Some((states, owed)) => spool.record_progress(key, &states, &owed),
            None => spool.complete(key),
        });
    }
}

/// An address as event text ("" for none).
fn ip_text(ip: Option<IpAddr>) -> String {
    ip.map(|i| i.to_string()).unwrap_or_default()
}
