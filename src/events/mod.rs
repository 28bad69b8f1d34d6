//! The event stream: one record of every fact Gannet learns about a message, and the bus that
//! carries those records to whoever listens (outcome log, metrics, send log, webhooks,
//! anomaly detector).
//!
//! Owns: [`Event`] (common fields + an [`EventKind`] with the facts of that kind), [`EventBus`]
//! (the publisher handle every stage holds) and [`Subscription`] (what a subscriber reads).
//! Never does: decide anything about a message, or write anything itself. Stages publish; they
//! never call a subscriber directly.
//!
//! # Contract
//! - **Publishing never waits.** [`EventBus::publish`] is synchronous and costs a lock, an id
//!   and one channel push per subscriber; a slow subscriber never slows delivery.
//! - **A lossy subscriber** has a bounded queue; when it is full, the event is dropped for that
//!   subscriber only and counted in `gannet_events_dropped_total{subscriber}`.
//! - **A lossless subscriber** never loses an event. Its queue has a soft bound: publishing
//!   still never waits (outcomes of mail already accepted must be recorded), but the stages
//!   that *admit new work* call [`EventBus::admit`] first, which waits while any lossless
//!   subscriber is more than its bound behind: intake before accepting a message, and a
//!   delivery connection before taking its next job (a queue of a million recipients can
//!   produce a million outcomes faster than the send log records them). Back-pressure lands
//!   on acceptance and on starting attempts, never on an attempt under way, so the backlog
//!   stays bounded by the bound plus the outcomes of the attempts in flight.
//! - **Order.** Every event gets a sequence number (`seq`, this process only) under the same
//!   lock that pushes it to every subscriber, so each subscriber sees events in `seq` order,
//!   and a stage's events appear in the order it published them.
//! - **Durability hook.** A lossless subscriber that keeps events on disk (the send log) can
//!   be registered as *durable* and report, with [`Subscription::ack`], the highest `seq` it
//!   has made durable. [`EventBus::durable_through`] / [`EventBus::wait_durable`] let a stage
//!   hold back a state change until the events describing it are durable ("written before the
//!   state it describes is considered final"): a crash between the two repeats the work (and
//!   its events) rather than leaving a final state without its event. With no durable
//!   subscriber, everything counts as durable at once.
//! - **Durable for some kinds only.** A durable subscriber that needs only some kinds of event
//!   (the suppression policy: bounces, complaints, opt-outs) subscribes with
//!   [`EventBus::subscribe_only`] and a [`KindFilter`]: it never receives the other kinds, and
//!   they never wait for it, so a `delivered` does not wait on the policy's flush.

mod kind;
pub mod log;

pub use kind::{DsnStatus, EventKind, TlsInfo};

use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize};
use tokio::sync::{Notify, mpsc};

/// One fact about a message (or an operator action), with the fields every consumer needs.
/// Fields that do not apply are empty strings / zero / None, so every event has one shape.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Event {
    /// Time-ordered unique id (UUIDv7): receivers deduplicate on it.
    pub id: String,
    /// When it happened, microseconds since the Unix epoch.
    pub time_us: u64,
    /// The spool's queue id, when the event is about a message.
    #[serde(default)]
    pub queue_id: String,
    /// The message's `Message-ID` header value (without angle brackets), when known.
    #[serde(default)]
    pub message_id: String,
    /// The recipient this event is about; empty for message-wide events (`received`).
    #[serde(default)]
    pub recipient: String,
    /// Envelope sender (empty for the null sender).
    #[serde(default)]
    pub sender: String,
    #[serde(default)]
    pub tenant: String,
    #[serde(default)]
    pub campaign: String,
    #[serde(default)]
    pub class: String,
    #[serde(default)]
    pub pool: String,
    /// Delivery attempt this outcome belongs to (1 = first); 0 when not an attempt.
    #[serde(default)]
    pub attempt: u32,
    /// What happened, with the facts of that kind. Serialised flat, with a `type` field.
    #[serde(flatten)]
    pub kind: EventKind,
}

impl Event {
    /// A new event of `kind` now, with a fresh id and the other fields empty.
    pub fn new(kind: EventKind) -> Event {
        let time_us = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap_or(Duration::ZERO)
            .as_micros() as u64;
        Event::at(kind, uuid::Uuid::now_v7().to_string(), time_us)
    }

    /// An event of `kind` with a given id and time (one built again identically, like a
    /// message's `received` at recovery), the other fields empty.
    pub fn at(kind: EventKind, id: String, time_us: u64) -> Event {
        Event {
            id,
            time_us,
            queue_id: String::new(),
            message_id: String::new(),
            recipient: String::new(),
            sender: String::new(),
            tenant: String::new(),
            campaign: String::new(),
            class: String::new(),
            pool: String::new(),
            attempt: 0,
            kind,
        }
    }

    /// The kind's name as it appears in JSON (`"delivered"`, `"bounced"`, ...).
    pub fn type_name(&self) -> &'static str {
        self.kind.name()
    }

    /// RFC 3339 time with microseconds, UTC (`2026-12-03T21:30:00.123456Z`).
    pub fn time_rfc3339(&self) -> String {
        let t = time::OffsetDateTime::from_unix_timestamp_nanos(self.time_us as i128 * 1000)
            .unwrap_or(time::OffsetDateTime::UNIX_EPOCH);
        format!(
            "{:04}-{:02}-{:02}T{:02}:{:02}:{:02}.{:06}Z",
            t.year(),
            t.month() as u8,
            t.day(),
            t.hour(),
            t.minute(),
            t.second(),
            t.microsecond()
        )
    }
}

/// An event as a subscriber receives it: the event and its sequence number in this process.
#[derive(Debug, Clone)]
pub struct Published {
    pub seq: u64,
    pub event: Arc<Event>,
}

/// How a subscriber wants its events.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// Bounded queue of `capacity`; when full, drop and count.
    Lossy { capacity: usize },
    /// Never dropped; `admit` waits while more than `bound` events are unread.
    Lossless { bound: usize },
    /// Lossless, and it reports with `ack` which events it has made durable.
    Durable { bound: usize },
}

/// Which kinds of event a subscriber takes ([`EventBus::subscribe_only`]).
pub type KindFilter = fn(&EventKind) -> bool;

/// The publisher handle. Cheap to clone; one per running instance (no statics).
#[derive(Clone)]
pub struct EventBus {
    inner: Arc<Inner>,
}

struct Inner {
    /// The subscribers and the sequence counter. A std Mutex: publishing holds it only to
    /// push into channels (no `.await`), and holding it across the pushes is what keeps every
    /// subscriber's view in `seq` order.
    state: Mutex<State>,
    /// Woken when a lossless subscriber reads or a durable one acks.
    progress: Notify,
    dropped: prometheus::IntCounterVec,
    backlog: prometheus::IntGaugeVec,
}

struct State {
    next_seq: u64,
    subs: Vec<Sub>,
}

struct Sub {
    name: String,
    mode: Mode,
    tx: SubTx,
    shared: Arc<SubShared>,
    /// None: every event. Some: only the kinds it accepts are pushed.
    only: Option<KindFilter>,
    /// Filtered durable subscribers: seqs pushed and perhaps not acked yet, oldest first
    /// (popped once acked). Its events are the only ones it holds back: it is durable
    /// through the seq before the oldest of these, or through everything when none is left.
    pending: std::collections::VecDeque<u64>,
}

impl Sub {
    /// Highest seq this durable subscriber is durable through (`last`: the last published).
    fn durable_through(&mut self, last: u64) -> u64 {
        let acked = self.shared.acked.load(Ordering::Acquire);
        if self.only.is_none() {
            return acked;
        }
        while self.pending.front().is_some_and(|&s| s <= acked) {
            self.pending.pop_front();
        }
        self.pending.front().map_or(last, |&s| s - 1)
    }
}

enum SubTx {
    Bounded(mpsc::Sender<Published>),
    Unbounded(mpsc::UnboundedSender<Published>),
}

/// What a subscriber and the bus both see.
struct SubShared {
    /// Events pushed and not yet received.
    unread: AtomicUsize,
    /// Highest seq the subscriber has made durable (Durable mode).
    acked: AtomicU64,
    closed: std::sync::atomic::AtomicBool,
}

/// What [`Subscription::next_batch`] returns.
pub struct Batch {
    /// The events of this batch, in `seq` order (may be empty only when `stopping`).
    pub items: Vec<Published>,
    /// The stop was asked for or the bus is gone: write `items`, then drain with
    /// [`Subscription::take_waiting`] and leave.
    pub stopping: bool,
}

/// What a subscriber reads. Dropping it unsubscribes (a lossless subscriber that goes away
/// stops holding back acceptance).
pub struct Subscription {
    name: String,
    rx: SubRx,
    shared: Arc<SubShared>,
    bus: Arc<Inner>,
}

enum SubRx {
    Bounded(mpsc::Receiver<Published>),
    Unbounded(mpsc::UnboundedReceiver<Published>),
}

impl EventBus {
    /// A bus whose drop counters and backlog gauges are registered in `registry`.
    pub fn new(registry: &prometheus::Registry) -> EventBus {
        let dropped = prometheus::IntCounterVec::new(
            prometheus::Opts::new(
                "gannet_events_dropped_total",
                "Events a lossy subscriber could not take because its queue was full",
            ),
            &["subscriber"],
        )
        .expect("metric");
        let backlog = prometheus::IntGaugeVec::new(
            prometheus::Opts::new(
                "gannet_events_backlog",
                "Events published and not yet read, per subscriber",
            ),
            &["subscriber"],
        )
        .expect("metric");
        // A second bus on the same registry (tests) keeps its own unregistered metrics.
        let _ = registry.register(Box::new(dropped.clone()));
        let _ = registry.register(Box::new(backlog.clone()));
        EventBus {
            inner: Arc::new(Inner {
                state: Mutex::new(State {
                    next_seq: 1,
                    subs: Vec::new(),
                }),
                progress: Notify::new(),
                dropped,
                backlog,
            }),
        }
    }

    /// Register a subscriber. Do it before the stages start publishing (in `serve`): a
    /// subscriber sees only events published after it subscribed.
    pub fn subscribe(&self, name: &str, mode: Mode) -> Subscription {
        self.subscribe_with(name, mode, None)
    }

    /// [`EventBus::subscribe`] for the kinds `only` accepts: other events are never pushed to
    /// it and, when it is durable, never wait for it.
    pub fn subscribe_only(&self, name: &str, mode: Mode, only: KindFilter) -> Subscription {
        self.subscribe_with(name, mode, Some(only))
    }

    fn subscribe_with(&self, name: &str, mode: Mode, only: Option<KindFilter>) -> Subscription {
        let shared = Arc::new(SubShared {
            unread: AtomicUsize::new(0),
            acked: AtomicU64::new(0),
            closed: std::sync::atomic::AtomicBool::new(false),
        });
        let (tx, rx) = match mode {
            Mode::Lossy { capacity } => {
                let (tx, rx) = mpsc::channel(capacity.max(1));
                (SubTx::Bounded(tx), SubRx::Bounded(rx))
            }
            Mode::Lossless { .. } | Mode::Durable { .. } => {
                // Unbounded channel, bounded by `admit` at the source (see the module doc).
                let (tx, rx) = mpsc::unbounded_channel();
                (SubTx::Unbounded(tx), SubRx::Unbounded(rx))
            }
        };
        if matches!(mode, Mode::Lossy { .. }) {
            // The drop counter exists (at 0) from the start, so "no drops" is visible.
            self.inner.dropped.with_label_values(&[name]);
        }
        let mut st = self.state();
        // Everything before this point is "durable" for this subscriber: it never saw it.
        shared.acked.store(st.next_seq - 1, Ordering::Release);
        st.subs.push(Sub {
            name: name.to_string(),
            mode,
            tx,
            shared: shared.clone(),
            only,
            pending: std::collections::VecDeque::new(),
        });
        Subscription {
            name: name.to_string(),
            rx,
            shared,
            bus: self.inner.clone(),
        }
    }

    fn state(&self) -> std::sync::MutexGuard<'_, State> {
        self.inner.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Publish one event to every subscriber. Never waits. Returns its sequence number.
    pub fn publish(&self, event: Event) -> u64 {
        let mut st = self.state();
        let seq = st.next_seq;
        st.next_seq += 1;
        if st.subs.is_empty() {
            return seq;
        }
        let event = Arc::new(event);
        let mut gone = false;
        let durable_filtered = |s: &Sub| s.only.is_some() && matches!(s.mode, Mode::Durable { .. });
        for s in &mut st.subs {
            if s.only.is_some_and(|only| !only(&event.kind)) {
                continue;
            }
            let p = Published {
                seq,
                event: event.clone(),
            };
            let ok = match &s.tx {
                SubTx::Bounded(tx) => match tx.try_send(p) {
                    Ok(()) => true,
                    Err(mpsc::error::TrySendError::Full(_)) => {
                        self.inner.dropped.with_label_values(&[&s.name]).inc();
                        continue;
                    }
                    Err(mpsc::error::TrySendError::Closed(_)) => false,
                },
                SubTx::Unbounded(tx) => tx.send(p).is_ok(),
            };
            if ok {
                s.shared.unread.fetch_add(1, Ordering::Relaxed);
                if durable_filtered(s) {
                    // Trim what is acked already, so the list stays as short as the backlog.
                    s.durable_through(seq);
                    s.pending.push_back(seq);
                }
            } else {
                gone = true;
            }
        }
        if gone {
            st.subs.retain(|s| !s.shared.closed.load(Ordering::Acquire));
        }
        seq
    }

    /// Sequence number of the last event published (0 before the first).
    pub fn last_seq(&self) -> u64 {
        self.state().next_seq - 1
    }

    /// True when a durable subscriber is registered (then state changes wait for
    /// [`EventBus::wait_durable`]; without one, everything is durable at once).
    pub fn has_durable(&self) -> bool {
        self.state()
            .subs
            .iter()
            .any(|s| matches!(s.mode, Mode::Durable { .. }))
    }

    /// Wait until every lossless subscriber is within its bound. Stages that admit new work
    /// call this: intake before accepting a message, a delivery connection before taking its
    /// next job; publishing never does.
    pub async fn admit(&self) {
        loop {
            let notified = self.inner.progress.notified();
            if !self.over_bound() {
                return;
            }
            notified.await;
        }
    }

    /// Wait until every lossless subscriber has read everything published (at shutdown, so
    /// the log has every line before the process exits).
    pub async fn drained(&self) {
        loop {
            let notified = self.inner.progress.notified();
            let behind = self.state().subs.iter().any(|s| {
                !matches!(s.mode, Mode::Lossy { .. })
                    && !s.shared.closed.load(Ordering::Acquire)
                    && s.shared.unread.load(Ordering::Relaxed) > 0
            });
            if !behind {
                return;
            }
            notified.await;
        }
    }

    /// True when some lossless subscriber has more unread events than its bound.
    pub fn over_bound(&self) -> bool {
        self.state().subs.iter().any(|s| match s.mode {
            Mode::Lossless { bound } | Mode::Durable { bound } => {
                s.shared.unread.load(Ordering::Relaxed) > bound
            }
            Mode::Lossy { .. } => false,
        })
    }

    /// Highest seq such that every durable subscriber has made it (and all before it) durable.
    /// With no durable subscriber: the last seq published.
    pub fn durable_through(&self) -> u64 {
        let mut st = self.state();
        let last = st.next_seq - 1;
        st.subs
            .iter_mut()
            .filter(|s| matches!(s.mode, Mode::Durable { .. }))
            .map(|s| s.durable_through(last))
            .min()
            .unwrap_or(last)
    }

    /// Wait until the event `seq` (and every one before it) is durable for every durable
    /// subscriber.
    pub async fn wait_durable(&self, seq: u64) {
        loop {
            let notified = self.inner.progress.notified();
            if self.durable_through() >= seq {
                return;
            }
            notified.await;
        }
    }

    /// Names and backlogs of the subscribers (for `/metrics` and listings).
    pub fn update_backlog_gauges(&self) {
        for s in &self.state().subs {
            self.inner
                .backlog
                .with_label_values(&[&s.name])
                .set(s.shared.unread.load(Ordering::Relaxed) as i64);
        }
    }
}

impl Subscription {
    /// The next event, or None once the bus is gone.
    pub async fn recv(&mut self) -> Option<Published> {
        let p = match &mut self.rx {
            SubRx::Bounded(rx) => rx.recv().await,
            SubRx::Unbounded(rx) => rx.recv().await,
        }?;
        self.read_one();
        Some(p)
    }

    /// The next batch for a subscriber that writes events in groups (one fdatasync each: the
    /// send log's journal, the shipping outbox): waits for the first event, takes what is
    /// already waiting, and when the batch is not full sleeps `linger` once and takes what
    /// came meanwhile, up to `max` events. Sleeping rather than receiving: waking at every
    /// event that arrives meanwhile would cost the thread wake-ups the wait is there to save;
    /// a batch that is already full (a backlog) returns at once. Once `stop` is cancelled or
    /// the bus is gone it no longer waits: it returns what is waiting (possibly nothing) with
    /// `stopping` set, and the caller drains with [`Subscription::take_waiting`].
    pub async fn next_batch(
        &mut self,
        max: usize,
        linger: Duration,
        stop: &tokio_util::sync::CancellationToken,
    ) -> Batch {
        let max = max.max(1);
        let first = tokio::select! {
            p = self.recv() => p,
            _ = stop.cancelled() => None,
        };
        let Some(first) = first else {
            return Batch {
                items: self.take_waiting(max),
                stopping: true,
            };
        };
        let mut items = vec![first];
        self.fill(&mut items, max);
        if !linger.is_zero() && items.len() < max {
            tokio::select! {
                _ = tokio::time::sleep(linger) => {}
                _ = stop.cancelled() => {}
            }
            self.fill(&mut items, max);
        }
        Batch {
            items,
            stopping: false,
        }
    }

    /// Up to `max` events that are already waiting, without waiting for more.
    pub fn take_waiting(&mut self, max: usize) -> Vec<Published> {
        let mut items = Vec::new();
        self.fill(&mut items, max.max(1));
        items
    }

    fn fill(&mut self, items: &mut Vec<Published>, max: usize) {
        while items.len() < max {
            match self.try_recv() {
                Some(p) => items.push(p),
                None => break,
            }
        }
    }

    /// The next event if one is waiting (for batching after a `recv`).
    pub fn try_recv(&mut self) -> Option<Published> {
        let p = match &mut self.rx {
            SubRx::Bounded(rx) => rx.try_recv().ok(),
            SubRx::Unbounded(rx) => rx.try_recv().ok(),
        }?;
        self.read_one();
        Some(p)
    }

    fn read_one(&self) {
        let before = self.shared.unread.fetch_sub(1, Ordering::Relaxed);
        // Waking `admit` on every read would be costly: wake at powers of two and below 64,
        // so a waiting intake resumes once the backlog has fallen well under the bound.
        if before.is_power_of_two() || before < 64 {
            self.bus.progress.notify_waiters();
        }
    }

    /// Durable subscribers: every event up to and including `seq` is on stable storage.
    pub fn ack(&self, seq: u64) {
        self.shared.acked.fetch_max(seq, Ordering::AcqRel);
        self.bus.progress.notify_waiters();
    }

    pub fn name(&self) -> &str {
        &self.name
    }
}

impl Drop for Subscription {
    fn drop(&mut self) {
        self.shared.closed.store(true, Ordering::Release);
        // A durable subscriber that leaves must not hold the watermark down.
        self.shared.acked.store(u64::MAX, Ordering::Release);
        self.shared.unread.store(0, Ordering::Relaxed);
        self.bus.progress.notify_waiters();
    }
}

#[cfg(test)]
mod tests;
