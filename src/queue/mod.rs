//! The queue: what waits for delivery, where it goes next, and what happens after an attempt.
//!
//! Owns: routing jobs (one message's recipients for one domain) to ready queues per
//! (site, pool), the retry scheduler, the dispatcher tasks that drain ready queues over
//! outbound connections, and outcome handling (delivered / deferred with backoff / bounced or
//! expired, with a bounce request handed on for a DSN).
//!
//! Invariants:
//! - Every recipient outcome is published exactly once per attempt as one event
//!   (`delivered`, `deferred`, `bounced`, `expired`, `purged`); the outcome log line and the
//!   counters are the event stream's subscribers (`events::log`, `metrics::events`).
//! - An outcome's events are published before the spool records the state they describe.
//! - A message's spool record is released only when all its recipients are final.
//! - Never does: write bodies (spool/), speak SMTP (delivery/), build DSNs (bounce/).

mod control;
mod dispatch;
mod message;
mod ready;
mod scheduler;

pub use control::{Filter, Suspension};
pub use message::{Job, QueuedMessage};
pub use ready::ReadyQueue;

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use dashmap::DashMap;
use rand::Rng;
use serde::Serialize;
use tokio::sync::{mpsc, oneshot};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::config::Config;
use crate::delivery::{ClientOptions, Destination, MxResolver, Outcome, Reply, ResolveError};
use crate::events::{Event, EventBus, EventKind, TlsInfo};
use crate::metrics::Metrics;
use crate::shaping::{BackoffState, Limiter, Shaping, Transition, Warmup};
use crate::spool::{RcptState, Spool};

/// Recipients that failed permanently, for a delivery status notification.
#[derive(Debug)]
pub struct BounceRequest {
    pub msg: Arc<QueuedMessage>,
    /// (recipient, final reply, remote host if any)
    pub failed: Vec<(String, Reply, Option<String>)>,
    /// The pool the failed attempt used (for the `dsn` event).
    pub pool: String,
    /// The message has no pending recipients left: once the DSN is durable, release the
    /// message from the spool (not before, so a crash cannot lose the bounce).
    pub release_after: bool,
}

/// Where one attempt went: the facts an outcome event carries. Empty strings / None when no
/// connection was made (DNS failure, limits, expiry while queued).
#[derive(Debug, Clone, Default)]
pub struct Via {
    pub site: String,
    /// The pool the attempt used; empty means the class's pool.
    pub pool: String,
    pub mx_host: String,
    pub remote_ip: Option<IpAddr>,
    pub source_ip: Option<IpAddr>,
    pub tls: Option<TlsInfo>,
}

/// A spool state change held until its events are durable.
type StateChange = Box<dyn FnOnce() + Send>;

/// Resolved destinations are reused this long before the domain is looked up again.
const DEST_TTL: Duration = Duration::from_secs(300);
/// Bodies kept in memory for first attempts, at most (beyond this, read from the spool).
const BODY_CACHE_BYTES: usize = 64 * 1024 * 1024;

/// Handle to the queue. Cheap to clone.
#[derive(Clone)]
pub struct Queue {
    inner: Arc<Inner>,
}

struct Inner {
    config: Arc<Config>,
    spool: Spool,
    resolver: MxResolver,
    metrics: Metrics,
    bus: EventBus,
    client: ClientOptions,
    tls: tokio_rustls::TlsConnector,
    ready: DashMap<(String, String), Arc<ReadyQueue>>,
    dests: DashMap<String, (Destination, Instant)>,
    /// Jobs waiting for their domain's resolution, by domain. std Mutex: short sections.
    resolving: Mutex<HashMap<String, Vec<Job>>>,
    /// Jobs a connection is delivering right now (for listings).
    in_flight: DashMap<u64, (Arc<QueuedMessage>, String, usize)>,
    suspensions: control::Suspensions,
    /// Jobs held back by a suspension, with the (site, pool) they were headed for.
    /// std Mutex: short sections.
    parked: Mutex<Vec<(Job, String, String)>>,
    sched_tx: mpsc::Sender<scheduler::Cmd>,
    /// Spool state changes waiting for their events to be durable (see `after_durable`).
    /// Unbounded: its length is bounded by the durable subscriber's bound, which holds back
    /// acceptance through `EventBus::admit`.
    durable_tx: mpsc::UnboundedSender<(u64, StateChange)>,
    bounce_tx: mpsc::Sender<BounceRequest>,
    next_job: AtomicU64,
    cache_bytes: AtomicUsize,
    shaping: Arc<Shaping>,
    backoff: BackoffState,
    limiter: Limiter,
    warmup: Warmup,
    shutdown: CancellationToken,
    tasks: TaskTracker,
}

/// One row of `gannet queue list`.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
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

#[derive(Debug, Clone, Serialize)]
pub struct QueueListing {
    pub queued_recipients: usize,
    pub queues: Vec<QueueRow>,
}

impl Queue {
    /// Start the queue's scheduler. Bounce requests come out of the returned receiver.
    pub fn start(
        config: Arc<Config>,
        spool: Spool,
        resolver: MxResolver,
        metrics: Metrics,
        bus: EventBus,
        shutdown: CancellationToken,
    ) -> Result<(Queue, mpsc::Receiver<BounceRequest>), String> {
        let (sched_tx, sched_rx) = mpsc::channel(1024);
        let (durable_tx, mut durable_rx) = mpsc::unbounded_channel::<(u64, StateChange)>();
        {
            let bus = bus.clone();
            tokio::spawn(async move {
                while let Some((seq, change)) = durable_rx.recv().await {
                    bus.wait_durable(seq).await;
                    change();
                }
            });
        }
        // Bounce requests are few; when the DSN writer falls behind, senders wait.
        let (bounce_tx, bounce_rx) = mpsc::channel(1024);
        let d = &config.delivery;
        let client = ClientOptions {
            connect_timeout: d.connect_timeout,
            command_timeout: d.command_timeout,
            data_timeout: d.data_timeout,
            opportunistic_tls: d.opportunistic_tls,
            require_tls: d.require_tls,
        };
        let tls = crate::delivery::opportunistic_tls_connector()?;
        let shaping = Arc::new(Shaping::from_config(&config).map_err(|e| e.to_string())?);
        let backoff = BackoffState::new(shaping.backoff_rules());
        let limiter = Limiter::in_process(backoff.clone());
        let warmup = Warmup::new(&shaping, &config.pools).map_err(|e| e.to_string())?;
        let warmup_tree = spool.state_tree("warmup").map_err(|e| e.to_string())?;
        if let Ok(Some(v)) = warmup_tree.get("snapshot")
            && let Ok(snap) = serde_json::from_slice(&v)
        {
            warmup.restore(&snap);
        }
        let suspensions =
            control::Suspensions::load(spool.state_tree("suspensions").map_err(|e| e.to_string())?);
        let queue = Queue {
            inner: Arc::new(Inner {
                config,
                spool,
                resolver,
                metrics,
                bus,
                client,
                tls,
                ready: DashMap::new(),
                dests: DashMap::new(),
                resolving: Mutex::new(HashMap::new()),
                in_flight: DashMap::new(),
                suspensions,
                parked: Mutex::new(Vec::new()),
                sched_tx,
                durable_tx,
                bounce_tx,
                next_job: AtomicU64::new(1),
                cache_bytes: AtomicUsize::new(0),
                shaping,
                backoff,
                limiter,
                warmup,
                shutdown,
                tasks: TaskTracker::new(),
            }),
        };
        let q = queue.clone();
        tokio::spawn(scheduler::run(sched_rx, move |job| q.route(job)));
        // Backoff states end on time even when no reply comes; warm-up counters are saved so
        // a restart does not reset today's counts.
        let q = queue.clone();
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(Duration::from_secs(1));
            let mut n = 0u64;
            loop {
                tokio::select! {
                    _ = tick.tick() => {}
                    _ = q.inner.shutdown.cancelled() => break,
                }
                for t in q
                    .inner
                    .backoff
                    .expire(tokio::time::Instant::now().into_std())
                {
                    q.log_transition(&t);
                }
                n += 1;
                if n.is_multiple_of(10) {
                    q.save_warmup(&warmup_tree);
                }
            }
            q.save_warmup(&warmup_tree);
        });
        Ok((queue, bounce_rx))
    }

    fn save_warmup(&self, tree: &sled::Tree) {
        if let Ok(v) = serde_json::to_vec(&self.inner.warmup.snapshot()) {
            let _ = tree.insert("snapshot", v);
        }
    }

    /// Show a negative reply from `site` (via `source`) to the backoff rules.
    pub(super) fn observe_reply(&self, site: &str, source: &str, reply: &Reply) {
        if let Some(t) = self.inner.backoff.on_reply(
            site,
            source,
            reply.code,
            &reply.enhanced,
            &reply.text,
            tokio::time::Instant::now().into_std(),
        ) {
            self.log_transition(&t);
        }
    }

    /// Publish a backoff state change (logged and counted by the subscribers).
    pub(super) fn log_transition(&self, t: &Transition) {
        // Backoff state is kept per (site, pool): the key is `site|pool`.
        let (site, pool) = t.site.split_once('|').unwrap_or((t.site.as_str(), ""));
        let mut e = Event::new(EventKind::Backoff {
            change: t.kind.as_str().to_string(),
            action: t.action.as_str().to_string(),
            site: site.to_string(),
            source: t.source.clone().unwrap_or_default(),
            rule: t.rule.to_string(),
            seconds: t.duration.as_secs(),
        });
        e.pool = pool.to_string();
        self.inner.bus.publish(e);
    }

    fn class_priority(&self, class: &str) -> i32 {
        self.inner
            .config
            .classes
            .get(class)
            .map_or(0, |c| c.priority)
    }

    /// The pool a class sends from (the first pool for an unknown class).
    pub fn class_pool(&self, class: &str) -> String {
        self.inner
            .config
            .classes
            .get(class)
            .map(|c| c.pool.clone())
            .or_else(|| self.inner.config.pools.first().map(|p| p.name.clone()))
            .unwrap_or_default()
    }

    /// Queue a message's pending recipients. `body`, when given, is kept in memory for the
    /// first attempt (within the cache budget) so it need not be read back from disk.
    pub fn enqueue(&self, msg: Arc<QueuedMessage>, body: Option<Arc<Vec<u8>>>) {
        let mut by_domain: HashMap<String, Vec<u32>> = HashMap::new();
        let mut bounced = Vec::new();
        {
            let states = msg.states();
            for (i, r) in msg.rcpts.iter().enumerate() {
                if states[i] != RcptState::Pending {
                    continue;
                }
                match crate::message::domain_of(r) {
                    Some(d) => by_domain.entry(d).or_default().push(i as u32),
                    None => bounced.push(i as u32),
                }
            }
        }
        let pending: usize = by_domain.values().map(|v| v.len()).sum::<usize>() + bounced.len();
        if pending == 0 {
            // Recovered with every recipient already final (a crash between the last outcome
            // and the release): nothing to send, so release it now.
            self.inner.spool.complete(msg.location.key);
            return;
        }
        self.inner.metrics.queued_recipients.add(pending as i64);
        if let Some(body) = body
            && self.inner.cache_bytes.load(Ordering::Relaxed) + body.len() <= BODY_CACHE_BYTES
        {
            let n = msg.cache_body(body);
            self.inner.cache_bytes.fetch_add(n, Ordering::Relaxed);
        }
        let priority = self.class_priority(&msg.class);
        if !bounced.is_empty() {
            let job = self.new_job(msg.clone(), String::new(), bounced, 0, priority);
            let reply = Reply::new(553, "5.1.3", "recipient address has no domain");
            self.complete_all(job, Outcome::Bounced(reply), &Via::default());
        }
        for (domain, rcpts) in by_domain {
            let job = self.new_job(msg.clone(), domain, rcpts, 0, priority);
            self.route(job);
        }
    }

    fn new_job(
        &self,
        msg: Arc<QueuedMessage>,
        domain: String,
        rcpts: Vec<u32>,
        attempts: u32,
        priority: i32,
    ) -> Job {
        Job {
            id: self.inner.next_job.fetch_add(1, Ordering::Relaxed),
            msg,
            domain,
            rcpts,
            attempts,
            priority,
        }
    }

    /// Send a job toward its ready queue, resolving its domain first when needed.
    fn route(&self, job: Job) {
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
            self.inner.tasks.spawn(async move {
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

    fn push_ready(&self, job: Job, dest: Destination) {
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
            dispatch::spawn_connection(self.clone(), rq);
        }
    }

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
        let (all_done, snapshot) = {
            let mut states = msg.states();
            for (idx, outcome) in job.rcpts.iter().zip(outcomes) {
                let i = *idx as usize;
                let expired = matches!(outcome, Outcome::Deferred(_)) && msg.age() >= max_age;
                let outcome = match outcome {
                    // RFC 3463 X.4.7 "delivery time expired", as a permanent failure.
                    Outcome::Deferred(r) if expired => Outcome::Bounced(Reply::new(
                        554,
                        "5.4.7",
                        format!(
                            "message expired after {}s in the queue; last error: {r}",
                            msg.age().as_secs()
                        ),
                    )),
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
                    },
                    Outcome::Deferred(r) => {
                        let d = *delay.get_or_insert_with(|| self.retry_delay(attempt, &msg));
                        EventKind::Deferred {
                            site: via.site.clone(),
                            mx_host: via.mx_host.clone(),
                            remote_ip: ip_text(via.remote_ip),
                            source_ip: ip_text(via.source_ip),
                            reply: r.to_string(),
                            category: String::new(),
                            retry_in_secs: d.as_secs(),
                        }
                    }
                    Outcome::Bounced(r) if expired => EventKind::Expired {
                        reply: r.to_string(),
                        category: String::new(),
                    },
                    Outcome::Bounced(r) => EventKind::Bounced {
                        site: via.site.clone(),
                        mx_host: via.mx_host.clone(),
                        remote_ip: ip_text(via.remote_ip),
                        source_ip: ip_text(via.source_ip),
                        reply: r.to_string(),
                        category: String::new(),
                    },
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
                        failed.push((msg.rcpts[i].clone(), r, host.clone()));
                    }
                    Outcome::Deferred(_) => deferred.push(*idx),
                }
            }
            let done = states.iter().all(|s| *s != RcptState::Pending);
            (done, (!done && finals > 0).then(|| states.clone()))
        };
        self.inner.metrics.queued_recipients.sub(finals as i64);
        if all_done || !deferred.is_empty() {
            let released = msg.drop_body();
            self.inner
                .cache_bytes
                .fetch_sub(released, Ordering::Relaxed);
        }
        let dsn = !failed.is_empty() && !msg.mail_from.is_empty();
        let spool = self.inner.spool.clone();
        let bounce_tx = self.inner.bounce_tx.clone();
        let key = msg.location.key;
        let m = msg.clone();
        let dsn_pool = pool.clone();
        self.after_durable(last_seq, move || {
            if let Some(states) = snapshot {
                spool.record_states(key, &states);
            }
            if all_done && !dsn {
                spool.complete(key);
            }
            if dsn {
                let req = BounceRequest {
                    msg: m,
                    failed,
                    pool: dsn_pool,
                    release_after: all_done,
                };
                if let Err(mpsc::error::TrySendError::Full(req)) = bounce_tx.try_send(req) {
                    tokio::spawn(async move {
                        let _ = bounce_tx.send(req).await;
                    });
                }
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
    fn publish_for(
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
    fn after_durable(&self, seq: u64, f: impl FnOnce() + Send + 'static) {
        if !self.inner.bus.has_durable() {
            f();
            return;
        }
        let _ = self.inner.durable_tx.send((seq, Box::new(f)));
    }

    /// Delay before attempt `attempt + 1`: the configured schedule (last entry repeats) with
    /// jitter, never past the message's expiry (so expiry is noticed on time).
    fn retry_delay(&self, attempt: u32, msg: &QueuedMessage) -> Duration {
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
        }
    }

    fn park(&self, job: Job, site: String, pool: String) {
        self.inner
            .parked
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .push((job, site, pool));
    }

    /// Called by dispatchers for each job they take: a job whose suspension came after it was
    /// queued is parked instead of sent.
    pub(super) fn hold_if_suspended(&self, job: Job, rq: &ReadyQueue) -> Option<Job> {
        if self
            .inner
            .suspensions
            .is_suspended(&job, Some(&rq.site), &rq.pool)
        {
            self.park(job, rq.site.clone(), rq.pool.clone());
            None
        } else {
            Some(job)
        }
    }

    /// Hold every job matching `filter` out of delivery until resumed (survives restarts).
    /// Returns the suspension and how many recipients were held at once.
    pub fn suspend(&self, filter: Filter, actor: &str) -> (Suspension, usize) {
        let s = self.inner.suspensions.add(filter.clone());
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
            reason: String::new(),
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
        let mut jobs = Vec::new();
        for rq in self.inner.ready.iter() {
            jobs.extend(rq.remove_where(|j| filter.matches(j, Some(&rq.site), &rq.pool)));
        }
        {
            let mut parked = self.inner.parked.lock().unwrap_or_else(|p| p.into_inner());
            let all = std::mem::take(&mut *parked);
            for (j, site, pool) in all {
                if filter.matches(&j, Some(&site), &pool) {
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
                    if filter.site.is_none() && filter.matches(&j, None, &pool) {
                        jobs.push(j);
                    } else {
                        waiting.push(j);
                    }
                }
            }
        }
        let (tx, rx) = oneshot::channel();
        let f = filter.clone();
        let q = self.clone();
        let pred: scheduler::Predicate = Box::new(move |j: &Job| {
            // Waiting jobs do not carry their site; the last resolution of the domain does.
            let site = q.inner.dests.get(&j.domain).map(|d| d.0.site.clone());
            f.matches(j, site.as_deref(), &q.class_pool(&j.msg.class))
        });
        if self
            .inner
            .sched_tx
            .send(scheduler::Cmd::Take(pred, tx))
            .await
            .is_ok()
            && let Ok(taken) = rx.await
        {
            jobs.extend(taken);
        }
        let mut n = 0;
        for job in jobs {
            n += job.rcpts.len();
            self.finalize_purged(job, actor);
        }
        tracing::info!(target: "gannet::control", event = "purged", filter = ?filter, recipients = n, actor);
        n
    }

    fn finalize_purged(&self, job: Job, actor: &str) {
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
            let done = states.iter().all(|s| *s != RcptState::Pending);
            (done, (!done).then(|| states.clone()))
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
            Some(states) => spool.record_states(key, &states),
            None => spool.complete(key),
        });
    }

    /// Wait until every dispatcher and resolver task has finished (after shutdown).
    pub async fn wait_idle(&self) {
        self.inner.tasks.close();
        self.inner.tasks.wait().await;
    }

    pub fn spool(&self) -> &Spool {
        &self.inner.spool
    }
}

/// An address as event text ("" for none).
fn ip_text(ip: Option<IpAddr>) -> String {
    ip.map(|i| i.to_string()).unwrap_or_default()
}

#[cfg(test)]
mod tests;
