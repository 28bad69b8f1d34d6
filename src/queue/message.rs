//! A queued message and a job (its share for one recipient domain).

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use crate::spool::{DsnOwed, Location, MessageRecord, RcptState};

/// A message in the queue: envelope, attributes and per-recipient state. Shared (Arc) by the
/// jobs of its recipient domains.
#[derive(Debug)]
pub struct QueuedMessage {
    pub location: Location,
    pub queue_id: String,
    pub mail_from: String,
    pub rcpts: Vec<String>,
    pub class: String,
    pub tenant: String,
    pub campaign: String,
    /// The `Message-ID` header value without angle brackets (the record's
    /// `attrs["message_id"]`), empty for records written before it was kept.
    pub message_id: String,
    /// The record's other named fields (`variant`, ...), for events and later stages.
    pub attrs: std::collections::BTreeMap<String, String>,
    pub received_at: SystemTime,
    /// Per-recipient state. Short critical sections; std Mutex.
    states: Mutex<Vec<RcptState>>,
    /// DSNs owed for failed recipients, not yet durably queued. Locked only while `states`
    /// is held (states first), so a snapshot of both is consistent.
    owed: Mutex<Vec<DsnOwed>>,
    /// The body while it is likely needed soon (first attempt); None means read the spool.
    body: Mutex<Option<Arc<Vec<u8>>>>,
    /// Bytes held in `body`, charged to the queue's cache budget.
    cached: AtomicUsize,
}

impl QueuedMessage {
    /// The one way to make a queued message: from the spool record at `location` (as intake
    /// wrote it or recovery read it back) and its recipients' states. The body is handed back
    /// (the queue keeps bodies only in its cache, see [`super::Queue::enqueue`]).
    pub fn from_record(
        location: Location,
        record: MessageRecord,
        states: Vec<RcptState>,
    ) -> (QueuedMessage, Vec<u8>) {
        let MessageRecord {
            received_at_ms,
            mail_from,
            rcpts,
            class,
            tenant,
            campaign,
            body,
            attrs,
        } = record;
        let msg = QueuedMessage {
            queue_id: location.key.queue_id(),
            location,
            mail_from,
            rcpts,
            class,
            tenant,
            campaign,
            message_id: attrs.get("message_id").cloned().unwrap_or_default(),
            attrs,
            received_at: UNIX_EPOCH + Duration::from_millis(received_at_ms),
            states: Mutex::new(states),
            owed: Mutex::new(Vec::new()),
            body: Mutex::new(None),
            cached: AtomicUsize::new(0),
        };
        (msg, body)
    }

    pub fn states(&self) -> std::sync::MutexGuard<'_, Vec<RcptState>> {
        self.states.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The DSNs still owed (as the spool recovered them, or as outcomes added them).
    pub fn with_owed_dsns(self, owed: Vec<DsnOwed>) -> QueuedMessage {
        *self.owed.lock().unwrap_or_else(|p| p.into_inner()) = owed;
        self
    }

    /// The owed DSNs. Take [`QueuedMessage::states`] first when both are needed.
    pub fn owed_dsns(&self) -> std::sync::MutexGuard<'_, Vec<DsnOwed>> {
        self.owed.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The DSN for recipients `sent` is durably queued: they are no longer owed. Returns the
    /// states and owed DSNs left (one consistent snapshot) and whether the message is done
    /// (every recipient final, nothing owed).
    pub fn dsn_queued(&self, sent: &[u32]) -> (Vec<RcptState>, Vec<DsnOwed>, bool) {
        let states = self.states();
        let mut owed = self.owed_dsns();
        owed.retain(|o| !sent.contains(&o.rcpt));
        let done = owed.is_empty() && states.iter().all(|s| *s != RcptState::Pending);
        (states.clone(), owed.clone(), done)
    }

    pub(super) fn cache_body(&self, body: Arc<Vec<u8>>) -> usize {
        let n = body.len();
        *self.body.lock().unwrap_or_else(|p| p.into_inner()) = Some(body);
        self.cached.store(n, Ordering::Relaxed);
        n
    }

    /// Drop the cached body; returns the bytes released.
    pub(super) fn drop_body(&self) -> usize {
        *self.body.lock().unwrap_or_else(|p| p.into_inner()) = None;
        self.cached.swap(0, Ordering::Relaxed)
    }

    pub fn cached_body(&self) -> Option<Arc<Vec<u8>>> {
        self.body.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }

    pub fn age(&self) -> std::time::Duration {
        SystemTime::now()
            .duration_since(self.received_at)
            .unwrap_or_default()
    }
}

/// One message's recipients for one domain: the unit the scheduler moves and a connection
/// delivers.
#[derive(Debug)]
pub struct Job {
    pub id: u64,
    pub msg: Arc<QueuedMessage>,
    pub domain: String,
    /// Indexes into `msg.rcpts`.
    pub rcpts: Vec<u32>,
    /// Attempts made so far.
    pub attempts: u32,
    /// Priority of the message's class (higher first).
    pub priority: i32,
}
