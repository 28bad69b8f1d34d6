//! The last suppression check: just before a job goes to a ready queue (first attempt and
//! every retry), recipients on the suppression list are taken out of it, finalised like a
//! purge and published as `suppressed` with stage `delivery`. Mail queued before an address was
//! suppressed is therefore never sent on a later attempt.
//!
//! Never does: change the list (suppression/ does) or decide what a suppression covers (the
//! store's `check` does).

use std::sync::atomic::Ordering;

use super::{Job, Queue};
use crate::events::EventKind;
use crate::spool::RcptState;
use crate::suppression::{Lookup, SharedStore};

impl Queue {
    /// Give the queue the suppression list to check before delivery (set once by `serve`,
    /// before recovered mail is queued; without it nothing is checked).
    pub fn set_suppressions(&self, store: SharedStore) {
        let _ = self.inner.suppressions.set(store);
    }

    /// `job` without its suppressed recipients (None when none is left). The suppressed ones
    /// are final: their state is recorded (after their events are durable) and, when that was
    /// the message's last pending recipient, the message is released.
    pub(super) fn drop_suppressed(&self, job: Job, pool: &str) -> Option<Job> {
        let Some(store) = self.inner.suppressions.get() else {
            return Some(job);
        };
        let now = crate::suppression::policy::now_secs();
        let msg = job.msg.clone();
        let list = msg.attrs.get("list").map(String::as_str).unwrap_or("");
        let mut hits = Vec::new();
        let mut keep = Vec::new();
        for idx in &job.rcpts {
            let lookup = Lookup {
                address: &msg.rcpts[*idx as usize],
                tenant: &msg.tenant,
                class: &msg.class,
                campaign: &msg.campaign,
                list,
            };
            match store.check(&lookup, now) {
                Ok(Some(entry)) => hits.push((*idx, entry)),
                Ok(None) => keep.push(*idx),
                Err(e) => {
                    // Fail open on a store error: the list could not be read, the mail was
                    // accepted; logged loudly so the operator sees the store is broken.
                    tracing::error!(queue_id = %msg.queue_id, error = %e, "suppression check failed before delivery; delivering");
                    keep.push(*idx);
                }
            }
        }
        if hits.is_empty() {
            return Some(job);
        }
        let mut last_seq = 0;
        let (all_done, snapshot) = {
            let mut states = msg.states();
            for (idx, entry) in &hits {
                states[*idx as usize] = RcptState::Failed;
                let kind = EventKind::Suppressed {
                    stage: "delivery".to_string(),
                    reason: entry.reason.clone(),
                    scope: entry.scope_text(),
                };
                last_seq = self.publish_for(&msg, *idx as usize, job.attempts, pool, kind);
            }
            let done = states.iter().all(|s| *s != RcptState::Pending);
            (done, (!done).then(|| states.clone()))
        };
        self.inner.metrics.queued_recipients.sub(hits.len() as i64);
        if all_done {
            let released = msg.drop_body();
            self.inner
                .cache_bytes
                .fetch_sub(released, Ordering::Relaxed);
        }
        let spool = self.inner.spool.clone();
        let key = msg.location.key;
        self.after_durable(last_seq, move || match snapshot {
            Some(states) => spool.record_states(key, &states),
            None => spool.complete(key),
        });
        (!keep.is_empty()).then_some(Job { rcpts: keep, ..job })
    }
}
