//! The queue: what waits for delivery, where it goes next, and what happens after an attempt.
//!
//! Owns: the handle, start and enqueue (here); routing jobs (one message's recipients for one
//! domain) to ready queues per (site, pool) and suspension holds (`routing`); outcomes —
//! delivered / deferred / bounced / expired, spool release, DSN requests (`outcome`);
//! operator control and listing (`ops`, `control`); the retry `scheduler`; and the dispatcher
//! tasks (`dispatch/`), which see only their narrow `dispatch::Context` and report each job's
//! result once.
//!
//! Invariants:
//! - Every recipient outcome is published exactly once per attempt as one event
//!   (`delivered`, `deferred`, `bounced`, `expired`, `purged`); the outcome log line and the
//!   counters are the event stream's subscribers (`events::log`, `metrics::events`).
//! - An outcome's events are published before the spool records the state they describe.
//! - A message's spool record is released only when all its recipients are final.
//! - Never does: write bodies (spool/), speak SMTP (delivery/), build DSNs (bounce/).

mod control;
mod depth;
mod dispatch;
mod message;
mod ops;
mod outcome;
mod ready;
mod routing;
mod scheduler;
mod suppress;

pub use control::{Filter, Suspension};
pub use message::{Job, QueuedMessage};
pub use ops::{QueueListing, QueueRow};
pub use ready::ReadyQueue;
pub use routing::RoutingStats;

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::time::{Duration, Instant};

use dashmap::DashMap;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::bounce::classify::Classifier;
use crate::config::Config;
use crate::delivery::{ClientOptions, MxResolver, Outcome, Reply};
use crate::events::{EventBus, TlsInfo};
use crate::metrics::Metrics;
use crate::shaping::{BackoffState, Limiter, Shaping, ShapingError, Warmup};
use crate::spool::{DsnOwed, RcptState, Spool};

/// Recipients that failed permanently, for a delivery status notification. The same entries
/// are already saved as owed in the spool (with the recipient states) before the request is
/// made, so a request lost with the process is made again after the restart.
#[derive(Debug)]
pub struct BounceRequest {
    pub msg: Arc<QueuedMessage>,
    /// The owed DSN entries this notification reports (recipient, final reply, remote host).
    pub failed: Vec<DsnOwed>,
    /// The pool the failed attempt used (for the `dsn` event).
    pub pool: String,
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
    /// The shaping provider the site matched (`google`...), when one did; its bounce rules are
    /// tried first when the reply is classified.
    pub provider: Option<Arc<str>>,
}

/// A spool state change held until its events are durable.
type StateChange = Box<dyn FnOnce() + Send>;

/// Bodies kept in memory for first attempts, at most (beyond this, read from the spool).
const BODY_CACHE_BYTES: usize = 64 * 1024 * 1024;

/// Handle to the queue. Cheap to clone.
#[derive(Clone)]
pub struct Queue {
    inner: Arc<Inner>,
}

/// The shaping handles the queue's dispatchers use, built by `serve` from the configuration:
/// the limits data, the backoff state, the limiter (over its `RateLimits` backend: the
/// in-process one today, a shared one in a cluster) and the warm-up counters.
#[derive(Clone)]
pub struct Shapers {
    pub shaping: Arc<Shaping>,
    pub backoff: BackoffState,
    pub limiter: Limiter,
    pub warmup: Warmup,
    /// Bounce rules that give every deferral, bounce and expiry its category (the shipped
    /// rules from `in_process`; `serve` puts in the configured file).
    pub classifier: Arc<Classifier>,
}

impl Shapers {
    /// The in-process handles for `shaping`'s data (the embedded or configured file).
    pub fn in_process(shaping: Shaping, config: &Config) -> Result<Shapers, ShapingError> {
        let shaping = Arc::new(shaping);
        let backoff = BackoffState::new(shaping.backoff_rules());
        let limiter = Limiter::in_process(backoff.clone());
        let warmup = Warmup::new(&shaping, &config.pools)?;
        Ok(Shapers {
            shaping,
            backoff,
            limiter,
            warmup,
            classifier: Arc::new(Classifier::builtin()),
        })
    }
}

/// Why the queue could not start.
#[derive(Debug, thiserror::Error)]
pub enum QueueError {
    #[error(
        "cannot build the outbound TLS client: {0} (check the TLS libraries and system certificates)"
    )]
    Tls(String),
    #[error(
        "cannot open the queue's {tree:?} operator state: {source} (check [spool] path is writable; this is the spool's state/ database, not the rebuildable index: deleting state/ loses suspensions and warm-up counters, never queued mail)"
    )]
    State {
        tree: &'static str,
        source: crate::spool::SpoolError,
    },
}

struct Inner {
    config: Arc<Config>,
    spool: Spool,
    resolver: MxResolver,
    metrics: Metrics,
    bus: EventBus,
    /// What dispatchers use; they report back through `Reporter`.
    dispatch: Arc<dispatch::Context>,
    ready: DashMap<(String, String), Arc<ReadyQueue>>,
    /// Domain → its last answer (`routing`: reused until `valid_until`, dropped by the sweep).
    dests: DashMap<String, routing::CachedDest>,
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
    /// Changes sent on `durable_tx` and not applied yet: while any wait, a later change queues
    /// behind them (in order); when none waits and its events are durable, it runs at once.
    durable_waiting: Arc<AtomicUsize>,
    bounce_tx: mpsc::Sender<BounceRequest>,
    next_job: AtomicU64,
    cache_bytes: AtomicUsize,
    shaping: Arc<Shaping>,
    /// Categorises outcome replies (immutable rules).
    classifier: Arc<Classifier>,
    /// The suppression list, checked before each attempt (`suppress`); set once by `serve`.
    suppressions: std::sync::OnceLock<crate::suppression::SharedStore>,
}

/// The queue as dispatchers see it ([`dispatch::Report`]). Weak: the queue owns the
/// dispatch context, which must not keep the queue alive.
struct Reporter(Weak<Inner>);

impl Reporter {
    fn queue(&self) -> Option<Queue> {
        self.0.upgrade().map(|inner| Queue { inner })
    }
}

impl dispatch::Report for Reporter {
    fn report(&self, result: dispatch::JobResult) {
        let Some(q) = self.queue() else { return };
        match result {
            dispatch::JobResult::Done { job, outcomes, via } => q.complete(job, outcomes, &via),
            dispatch::JobResult::Overflow { job, dest, pool } => q.push_ready_to(job, dest, pool),
            dispatch::JobResult::Held { job, site, pool } => q.park(job, site, pool),
        }
    }

    fn is_suspended(&self, job: &Job, rq: &ReadyQueue) -> bool {
        self.0.upgrade().is_some_and(|inner| {
            inner
                .suspensions
                .is_suspended(job, Some(&rq.site), &rq.pool)
        })
    }

    fn in_flight(&self, job: &Job, delivering: bool) {
        let Some(inner) = self.0.upgrade() else {
            return;
        };
        if delivering {
            inner.in_flight.insert(
                job.id,
                (job.msg.clone(), job.domain.clone(), job.rcpts.len()),
            );
        } else {
            inner.in_flight.remove(&job.id);
        }
    }

    fn refresh<'a>(&'a self, rq: &'a ReadyQueue, domain: &'a str) -> dispatch::RefreshFuture<'a> {
        let q = self.queue();
        Box::pin(async move {
            match q {
                Some(q) => q.refresh_destination(rq, domain).await,
                None => dispatch::Refreshed::Current,
            }
        })
    }
}

impl Queue {
    /// Start the queue's scheduler. Bounce requests come out of the returned receiver.
    // Each argument is a handle `serve` builds for this stage; a bundle struct would only hide
    // which ones the queue depends on.
    #[allow(clippy::too_many_arguments)]
    pub fn start(
        config: Arc<Config>,
        spool: Spool,
        resolver: MxResolver,
        metrics: Metrics,
        bus: EventBus,
        shapers: Shapers,
        verp: Option<crate::bounce::verp::VerpKey>,
        shutdown: CancellationToken,
    ) -> Result<(Queue, mpsc::Receiver<BounceRequest>), QueueError> {
        let (sched_tx, sched_rx) = mpsc::channel(1024);
        let (durable_tx, mut durable_rx) = mpsc::unbounded_channel::<(u64, StateChange)>();
        let durable_waiting = Arc::new(AtomicUsize::new(0));
        {
            let bus = bus.clone();
            let waiting = durable_waiting.clone();
            tokio::spawn(async move {
                while let Some((seq, change)) = durable_rx.recv().await {
                    bus.wait_durable(seq).await;
                    change();
                    waiting.fetch_sub(1, Ordering::AcqRel);
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
        let tls = crate::delivery::opportunistic_tls_connector().map_err(QueueError::Tls)?;
        let Shapers {
            shaping,
            backoff,
            limiter,
            warmup,
            classifier,
        } = shapers;
        let state = |tree: &'static str| {
            spool
                .state_tree(tree)
                .map_err(|source| QueueError::State { tree, source })
        };
        let warmup_tree = state("warmup")?;
        if let Ok(Some(v)) = warmup_tree.get("snapshot")
            && let Ok(snap) = serde_json::from_slice(&v)
        {
            warmup.restore(&snap);
        }
        let suspensions = control::Suspensions::load(state("suspensions")?);
        let inner = Arc::new_cyclic(|weak: &Weak<Inner>| Inner {
            dispatch: Arc::new(dispatch::Context {
                config: config.clone(),
                limiter,
                backoff,
                warmup,
                client,
                tls,
                spool: spool.clone(),
                bus: bus.clone(),
                metrics: metrics.clone(),
                shutdown,
                tasks: TaskTracker::new(),
                report: Arc::new(Reporter(weak.clone())),
                verp,
            }),
            config,
            spool,
            resolver,
            metrics,
            bus,
            ready: DashMap::new(),
            dests: DashMap::new(),
            resolving: Mutex::new(HashMap::new()),
            in_flight: DashMap::new(),
            suspensions,
            parked: Mutex::new(Vec::new()),
            sched_tx,
            durable_tx,
            durable_waiting,
            bounce_tx,
            next_job: AtomicU64::new(1),
            cache_bytes: AtomicUsize::new(0),
            shaping,
            classifier,
            suppressions: std::sync::OnceLock::new(),
        });
        let queue = Queue { inner };
        let q = queue.clone();
        tokio::spawn(scheduler::run(sched_rx, move |job| q.route(job)));
        // Backoff states end on time even when no reply comes; warm-up counters are saved so
        // a restart does not reset today's counts.
        let q = queue.clone();
        tokio::spawn(async move {
            let cx = q.inner.dispatch.clone();
            let mut tick = tokio::time::interval(Duration::from_secs(1));
            let mut n = 0u64;
            loop {
                tokio::select! {
                    _ = tick.tick() => {}
                    _ = cx.shutdown.cancelled() => break,
                }
                for t in cx.backoff.expire(tokio::time::Instant::now().into_std()) {
                    dispatch::publish_transition(&cx.bus, &t);
                }
                n += 1;
                if n.is_multiple_of(10) {
                    q.save_warmup(&warmup_tree);
                    q.sweep_routing(Instant::now());
                }
            }
            q.save_warmup(&warmup_tree);
        });
        Ok((queue, bounce_rx))
    }

    fn save_warmup(&self, tree: &sled::Tree) {
        if let Ok(v) = serde_json::to_vec(&self.inner.dispatch.warmup.snapshot()) {
            let _ = tree.insert("snapshot", v);
        }
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
        // Recovered with DSNs still owed (a stop or crash before they were queued): ask for
        // them again; the message is released once they are durable.
        let owed = msg.owed_dsns().clone();
        if !owed.is_empty() {
            let pool = self.class_pool(&msg.class);
            self.request_dsn(BounceRequest {
                msg: msg.clone(),
                failed: owed,
                pool,
            });
        } else if pending == 0 {
            // Recovered with every recipient already final (a crash between the last outcome
            // and the release): nothing to send, so release it now.
            self.inner.spool.complete(msg.location.key);
            return;
        }
        if pending == 0 {
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

    /// Hand a DSN request to the DSN writer. Its entries are already owed in the spool: when
    /// the writer is full the request waits for room; when it has stopped (shutdown) the DSN
    /// stays owed and is sent after the next start. Never dropped silently.
    pub(crate) fn request_dsn(&self, req: BounceRequest) {
        match self.inner.bounce_tx.try_send(req) {
            Ok(()) => {}
            Err(mpsc::error::TrySendError::Full(req)) => {
                let tx = self.inner.bounce_tx.clone();
                tokio::spawn(async move {
                    if let Err(mpsc::error::SendError(req)) = tx.send(req).await {
                        dsn_channel_closed(&req);
                    }
                });
            }
            Err(mpsc::error::TrySendError::Closed(req)) => dsn_channel_closed(&req),
        }
    }

    /// Wait until every spool state change queued so far behind its events (see
    /// `after_durable`) has been applied: at shutdown, after the dispatchers and the DSN writer
    /// have stopped and before the index is flushed, so a clean stop leaves no finished
    /// message to be delivered again at the next start.
    pub async fn settle_state_changes(&self) {
        if !self.inner.bus.has_durable() {
            return;
        }
        let (tx, rx) = tokio::sync::oneshot::channel::<()>();
        // Changes run in order: once this marker runs, every earlier one has.
        self.inner.durable_waiting.fetch_add(1, Ordering::AcqRel);
        if self
            .inner
            .durable_tx
            .send((
                0,
                Box::new(move || {
                    let _ = tx.send(());
                }),
            ))
            .is_ok()
        {
            let _ = rx.await;
        }
    }

    /// Wait until every dispatcher and resolver task has finished (after shutdown).
    pub async fn wait_idle(&self) {
        self.inner.dispatch.tasks.close();
        self.inner.dispatch.tasks.wait().await;
    }

    pub fn spool(&self) -> &Spool {
        &self.inner.spool
    }
}

/// The DSN writer has stopped (shutdown): the request is not lost, its DSNs stay owed in the
/// spool and the next start sends them.
fn dsn_channel_closed(req: &BounceRequest) {
    tracing::warn!(
        queue_id = %req.msg.queue_id,
        failed = req.failed.len(),
        "the DSN writer has stopped (shutting down); the DSN stays owed in the spool and is sent after the next start"
    );
}

#[cfg(test)]
mod tests;
