//! Event shipping: every event of the stream, at least once, to webhooks, RabbitMQ and JSONL
//! files, through one durable journal.
//!
//! Owns: one runner per configured destination (`[[webhook]]`, `[[amqp]]`, `[[jsonl]]`) reading the
//! journal at its own cursor, on threads of its own (`gannet-ship`), and housekeeping (deleting
//! segments every reader has passed, lag and backlog gauges). The journal is the send log's
//! (`sendlog::journal`) whenever the send log is on: every event is sealed, appended and
//! fdatasynced once, and the send log's ingester is one more reader; the destinations register
//! there when the send log opens ([`hold_destinations`]), so nothing is deleted before they pass
//! it. Only with `[sendlog] enabled = false` does shipping keep an outbox of its own (`[outbox]`),
//! a durable subscriber of `events/` whose only work is appending lines with one fdatasync per
//! batch. An outbox left from before the switch is shipped first, then deleted; the other way
//! round, what destinations had not taken from the send log's journal when the send log was turned
//! off is shipped first from there (the journal stays for the send log).
//! Never does: wait on a destination while taking events. A destination that is slow or down
//! only falls behind in the files (`gannet_ship_lag_seconds`, `gannet_ship_backlog_events`).
//!
//! Guarantee: an event is acknowledged to the bus (`Subscription::ack`) after its line is
//! fdatasynced, so every final state the queue records has its event in the journal (the
//! queue waits for `EventBus::wait_durable`). A destination's cursor moves after it took a
//! batch; a crash in between sends that batch again: receivers deduplicate on the event `id`.
//! Events are sealed at rest (`seal`, under the master key) until every reader has passed
//! them; destinations get the clear event. GDPR erasure shreds the person's pending lines in
//! place (`Outbox::shred`, through the send log for its journal).

pub mod amqp;
pub mod jsonl;
pub mod metrics;
pub mod outbox;
pub mod runner;
pub mod seal;
pub mod webhook;

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use crate::config::Config;
use crate::config::ship::ShipFilter;
use crate::events::{EventBus, Mode, Published, Subscription};
use metrics::ShipMetrics;
use outbox::{Appender, Outbox};
use runner::{Destination, RunnerOptions, RunnerState};

/// Why shipping could not start.
#[derive(Debug, thiserror::Error)]
pub enum ShipError {
    #[error(transparent)]
    Outbox(#[from] outbox::OutboxError),
    #[error("{key}: {message}")]
    Destination { key: String, message: String },
    #[error("shipping start-up task failed: {0}")]
    Task(String),
    #[error(transparent)]
    Key(#[from] crate::sendlog::KeyError),
}

/// The running shipping stage: stop it with the token given to [`start`], then await it.
pub struct Shipping {
    /// The outbox's appender; None when the destinations read the send log's journal.
    appender: Option<JoinHandle<()>>,
    /// The runners and housekeeping, on `runtime`.
    others: Vec<JoinHandle<()>>,
    /// Shipping's own threads (see [`runtime`]); taken at [`Shipping::join`].
    runtime: Option<tokio::runtime::Runtime>,
    runners_stop: CancellationToken,
    /// What the destinations read: the send log's journal, or the outbox of our own.
    pub outbox: Outbox,
    /// True when `outbox` is the send log's journal (the send log shreds it at an erasure).
    pub reads_journal: bool,
    /// An outbox of our own written before shipping read the journal, while its last events
    /// are shipped (then it is deleted); erasure shreds it too. (A send-log journal drained
    /// while the send log is off is not here: erasure with the send log off leaves it.)
    pub legacy: Option<Outbox>,
}

impl Shipping {
    /// The outbox of our own an erasure shreds (the send log shreds the journal).
    pub fn own_outbox(&self) -> Option<Outbox> {
        if self.reads_journal {
            self.legacy.clone()
        } else {
            Some(self.outbox.clone())
        }
    }
}

/// True when some destination is configured (otherwise no outbox is kept at all).
pub fn enabled(config: &Config) -> bool {
    !(config.webhooks.is_empty() && config.amqp.is_empty() && config.jsonl.is_empty())
}

/// Where the outbox lives.
pub fn outbox_dir(config: &Config) -> PathBuf {
    match &config.outbox.path {
        Some(p) => config.resolve_path(p),
        None => config.resolve_path(&config.spool.path).join("outbox"),
    }
}

/// Register every configured destination as a reader of `journal` (the send log's) at its
/// cursor, saving a new destination's at the journal's end, before anything compacts it.
/// Blocking. Errors name the cursor file.
pub fn hold_destinations(
    config: &Config,
    journal: &Outbox,
) -> Result<(), (PathBuf, std::io::Error)> {
    for p in plan(config) {
        let at = runner::initial_cursor(journal, &p.name)
            .map_err(|e| (journal.dir().join("cursors").join(&p.name), e))?;
        journal.hold(&p.name, at);
    }
    Ok(())
}

/// Shipping's own runtime: one worker thread and its blocking threads, all named
/// `gannet-ship`. The SMTP and delivery workers never poll a destination's task or wait behind
/// one on their run queues (a 10,000-line JSONL batch, a webhook body, AMQP frames are bursts
/// of work), the kernel schedules shipping beside them, and what shipping costs is read per
/// thread (`benches/ship_e2e.sh` prints it). The outbox's appender stays on the main runtime:
/// it is on the path of acceptance.
fn runtime() -> std::io::Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .thread_name("gannet-ship")
        .enable_all()
        .build()
}

/// How long a JSONL destination waits for more events to write them in one go.
const JSONL_MAX_DELAY: Duration = Duration::from_millis(250);

struct Planned {
    name: String,
    key: String,
    opts: RunnerOptions,
    build: Box<dyn FnOnce() -> Result<Box<dyn Destination>, String> + Send>,
}

fn plan(config: &Config) -> Vec<Planned> {
    let mut out = Vec::new();
    for (i, j) in config.jsonl.iter().enumerate() {
        let name = j.name();
        let c = j.clone();
        let dir = config.resolve_path(&j.dir);
        out.push(Planned {
            name: name.clone(),
            key: format!("jsonl[{i}] ({})", dir.display()),
            opts: RunnerOptions {
                name,
                filter: ShipFilter {
                    events: j.events.clone(),
                    tenant: j.tenant.clone(),
                },
                batch_size: 10_000,
                // Lines reach the file within a quarter of a second; under load that is a
                // few large writes (and fdatasyncs) a second instead of one per outbox commit.
                max_delay: JSONL_MAX_DELAY,
                max_backoff: Duration::from_secs(30),
                max_backlog_bytes: j.max_backlog_bytes,
            },
            build: Box::new(move || {
                jsonl::JsonlFiles::open(&c, dir)
                    .map(|f| Box::new(f) as Box<dyn Destination>)
                    .map_err(|e| format!("cannot open the events directory: {e}"))
            }),
        });
    }
    for (i, w) in config.webhooks.iter().enumerate() {
        let name = w.name();
        let c = w.clone();
        out.push(Planned {
            name: name.clone(),
            key: format!("webhook[{i}]"),
            opts: RunnerOptions {
                name,
                filter: ShipFilter {
                    events: w.events.clone(),
                    tenant: w.tenant.clone(),
                },
                batch_size: w.batch_size,
                max_delay: w.max_delay,
                max_backoff: w.max_backoff,
                max_backlog_bytes: w.max_backlog_bytes,
            },
            build: Box::new(
                move || Ok(Box::new(webhook::Webhook::new(&c)) as Box<dyn Destination>),
            ),
        });
    }
    for (i, a) in config.amqp.iter().enumerate() {
        let name = a.name();
        let c = a.clone();
        out.push(Planned {
            name: name.clone(),
            key: format!("amqp[{i}]"),
            opts: RunnerOptions {
                name,
                filter: ShipFilter {
                    events: a.events.clone(),
                    tenant: a.tenant.clone(),
                },
                batch_size: a.batch_size,
                max_delay: Duration::from_millis(50),
                max_backoff: a.max_backoff,
                max_backlog_bytes: a.max_backlog_bytes,
            },
            build: Box::new(move || Ok(Box::new(amqp::Amqp::new(&c)) as Box<dyn Destination>)),
        });
    }
    out
}

/// Start every destination. With the send log on, `journal` is its journal and the
/// destinations read it (registered there by [`hold_destinations`] when the send log
/// opened); otherwise open the outbox of our own and subscribe it to `bus` (durable). Call
/// before any stage publishes. Returns None when no destination is configured.
pub async fn start(
    config: &Arc<Config>,
    bus: &EventBus,
    registry: &prometheus::Registry,
    stop: CancellationToken,
    journal: Option<Outbox>,
) -> Result<Option<Shipping>, ShipError> {
    if !enabled(config) {
        return Ok(None);
    }
    let dir = outbox_dir(config);
    let segment_bytes = config.outbox.segment_bytes;
    let key_file = config.resolve_path(&config.storage.key_file);
    let planned = plan(config);
    let names: Vec<String> = planned.iter().map(|p| p.name.clone()).collect();
    let reads_journal = journal.is_some();
    // The send log's journal, which the destinations read while the send log was on.
    let sendlog_journal = crate::sendlog::journal::dir_for(&crate::sendlog::paths(config).0);
    // Blocking start-up: open files, load cursors, open destinations' files.
    let opened = tokio::task::spawn_blocking(move || {
        // Lines are sealed under the master key (created 0600 only when no data it protects
        // exists yet).
        let open_own = || -> Result<(Outbox, Appender, crate::sendlog::MasterKey), ShipError> {
            let key = crate::sendlog::MasterKey::load_or_create(
                &key_file,
                &Outbox::key_check_path(&dir),
            )?;
            let (o, a) = Outbox::open(&dir, segment_bytes, &key)?;
            Ok((o, a, key))
        };
        // `legacy`: what the destinations read before, shipped first from their cursors
        // there. An outbox of our own is deleted once drained; the send log's journal is
        // kept (the send log takes it up again when it is turned back on).
        let (outbox, appender, legacy) = match journal {
            Some(j) if Outbox::key_check_path(&dir).exists() => {
                (j, None, Some(Legacy::Own(open_own()?.0)))
            }
            Some(j) => (j, None, None),
            None => {
                let (o, a, key) = open_own()?;
                let left = if Outbox::key_check_path(&sendlog_journal).exists() {
                    let (j, _) = Outbox::open(
                        &sendlog_journal,
                        crate::sendlog::journal::SEGMENT_BYTES,
                        &key,
                    )?;
                    Some(Legacy::SendLogJournal(j))
                } else {
                    None
                };
                (o, Some(a), left)
            }
        };
        let mut ready = Vec::new();
        let mut draining = 0u64;
        for p in planned {
            let at = runner::initial_cursor(&outbox, &p.name).map_err(|e| {
                ShipError::Outbox(outbox::OutboxError::Io {
                    path: outbox.dir().join("cursors").join(&p.name),
                    source: e,
                })
            })?;
            outbox.hold(&p.name, at);
            // What this destination had not taken from the outbox of our own (written before
            // shipping read the journal) goes first.
            let drain = legacy.as_ref().and_then(|l| {
                let c = l.outbox().load_cursor(&p.name)?;
                (c.byte < l.outbox().end().byte).then_some(c)
            });
            if let (Some(c), Some(l)) = (drain, &legacy) {
                draining += l.outbox().end().event - c.event;
            }
            let dest = (p.build)().map_err(|message| ShipError::Destination {
                key: p.key.clone(),
                message,
            })?;
            ready.push((p.opts, dest, at, drain));
        }
        for stale in outbox.cursor_names() {
            if !names.contains(&stale) {
                tracing::warn!(target: "gannet::ship", cursor = %stale,
                    "shipping cursor of a destination no longer configured; ignored (delete the file to forget it)");
            }
        }
        let legacy = match legacy {
            Some(Legacy::Own(l)) if draining == 0 => {
                remove_legacy(&l);
                None
            }
            Some(Legacy::SendLogJournal(_)) if draining == 0 => None,
            Some(Legacy::Own(l)) => {
                tracing::info!(target: "gannet::ship", outbox = %l.dir().display(), events = draining,
                    "shipping reads the send log's journal now; the events the old outbox still holds go out first, then it is deleted");
                Some(Legacy::Own(l))
            }
            Some(Legacy::SendLogJournal(j)) => {
                tracing::info!(target: "gannet::ship", journal = %j.dir().display(), events = draining,
                    "the send log is off: the events destinations had not taken from its journal go out first, then shipping reads its own outbox (the journal stays for the send log)");
                Some(Legacy::SendLogJournal(j))
            }
            None => None,
        };
        Ok::<_, ShipError>((outbox, appender, legacy, ready))
    })
    .await
    .map_err(|e| ShipError::Task(e.to_string()))??;
    let (outbox, appender, legacy, ready) = opened;
    let rt =
        runtime().map_err(|e| ShipError::Task(format!("cannot start shipping's threads: {e}")))?;
    let metrics = ShipMetrics::new(registry);
    let appender = appender.map(|appender| {
        let sub = bus.subscribe(
            "outbox",
            Mode::Durable {
                bound: config.outbox.bound,
            },
        );
        tokio::spawn(run_appender(
            appender,
            sub,
            config.outbox.batch,
            config.outbox.commit_interval,
            metrics.clone(),
            stop.clone(),
        ))
    });
    let runners_stop = stop.child_token();
    let mut others = Vec::new();
    let mut states = Vec::new();
    let mut drains = Vec::new();
    for (opts, dest, at, drain) in ready {
        metrics.preset(&opts.name);
        let st = runner::state(&opts.name, at);
        states.push(st.clone());
        let (outbox, metrics, stop) = (outbox.clone(), metrics.clone(), runners_stop.clone());
        let legacy = legacy.as_ref().map(|l| l.outbox().clone());
        let (done_tx, done_rx) = tokio::sync::oneshot::channel::<()>();
        drains.push(done_rx);
        others.push(rt.spawn(async move {
            let mut dest = dest;
            if let (Some(l), Some(from)) = (legacy, drain) {
                let old = runner::state(&opts.name, from);
                match runner::drain(l, dest, opts.clone(), old, metrics.clone(), stop.clone()).await
                {
                    Some(d) => dest = d,
                    None => return,
                }
            }
            let _ = done_tx.send(());
            runner::run(outbox, dest, opts, st, metrics, stop).await
        }));
    }
    if let Some(Legacy::Own(l)) = legacy.clone() {
        others.push(rt.spawn(async move {
            for d in drains {
                if d.await.is_err() {
                    return; // Stopped first: drained at the next start.
                }
            }
            let _ = tokio::task::spawn_blocking(move || remove_legacy(&l)).await;
        }));
    }
    others.push(rt.spawn(housekeeping(
        outbox.clone(),
        reads_journal,
        states,
        metrics,
        runners_stop.clone(),
    )));
    Ok(Some(Shipping {
        appender,
        others,
        runtime: Some(rt),
        runners_stop,
        outbox,
        reads_journal,
        legacy: match legacy {
            Some(Legacy::Own(l)) => Some(l),
            _ => None,
        },
    }))
}

/// What the destinations read before this start, drained first (see [`start`]).
#[derive(Clone)]
enum Legacy {
    /// Shipping's own outbox, left from when the send log was off: deleted once drained.
    Own(Outbox),
    /// The send log's journal, left from when the send log was on: kept once drained.
    SendLogJournal(Outbox),
}

impl Legacy {
    fn outbox(&self) -> &Outbox {
        match self {
            Legacy::Own(o) | Legacy::SendLogJournal(o) => o,
        }
    }
}

/// Delete the outbox of our own once every destination has shipped what it held. Blocking.
fn remove_legacy(l: &Outbox) {
    match std::fs::remove_dir_all(l.dir()) {
        Ok(()) => tracing::info!(target: "gannet::ship", outbox = %l.dir().display(),
            "the old shipping outbox is drained and deleted (destinations read the send log's journal)"),
        Err(e) => tracing::warn!(target: "gannet::ship", outbox = %l.dir().display(), error = %e,
            "cannot delete the drained old shipping outbox; delete it by hand"),
    }
}

impl Shipping {
    /// Wait for the appender to write what was published before the stop, and the runners
    /// to leave (what they had not confirmed is sent after the next start).
    pub async fn join(mut self) {
        self.runners_stop.cancel();
        if let Some(a) = self.appender.take() {
            let _ = a.await;
        }
        for t in std::mem::take(&mut self.others) {
            let _ = t.await;
        }
        if let Some(rt) = self.runtime.take() {
            // A POST or file write still running on a blocking thread is abandoned after a
            // moment: its batch was not confirmed, so it goes again after the next start.
            let _ =
                tokio::task::spawn_blocking(move || rt.shutdown_timeout(Duration::from_secs(1)))
                    .await;
        }
    }
}

impl Drop for Shipping {
    fn drop(&mut self) {
        // Dropped without `join` (serve failing after shipping started): never block here.
        if let Some(rt) = self.runtime.take() {
            rt.shutdown_background();
        }
    }
}

/// Take events from the bus, append them in batches (one fdatasync each), ack. A batch
/// starts with the first event that arrives and takes what arrives within `linger`
/// (`[outbox] commit_interval`).
async fn run_appender(
    mut appender: Appender,
    mut sub: Subscription,
    batch: usize,
    linger: Duration,
    metrics: ShipMetrics,
    stop: CancellationToken,
) {
    loop {
        let b = sub.next_batch(batch, linger, &stop).await;
        if !b.items.is_empty() {
            appender = append_batch(appender, b.items, &sub, &metrics).await;
        }
        if b.stopping {
            // Drain what was published before the stop.
            loop {
                let rest = sub.take_waiting(batch);
                if rest.is_empty() {
                    return;
                }
                appender = append_batch(appender, rest, &sub, &metrics).await;
            }
        }
    }
}

/// Serialise and append `items`, then ack (retrying a failing disk first: nothing is acked
/// meanwhile, so the queue's `wait_durable` and intake's `admit` hold the line).
async fn append_batch(
    appender: Appender,
    items: Vec<Published>,
    sub: &Subscription,
    metrics: &ShipMetrics,
) -> Appender {
    let last = items.last().map(|p| p.seq).unwrap_or(0);
    let (lines, count) = outbox::encode_lines(items.iter().map(|p| p.event.as_ref()), "outbox");
    let (a, _) = appender
        .append_until_durable::<outbox::OutboxError>(lines.into(), count, "outbox")
        .await;
    sub.ack(last);
    metrics.appended.inc_by(items.len() as u64);
    a
}

/// Every second: delete segments every reader has passed; set lag and backlog gauges (and,
/// on the send log's journal, count what it appended as the outbox's appender would).
async fn housekeeping(
    outbox: Outbox,
    reads_journal: bool,
    states: Vec<Arc<RunnerState>>,
    metrics: ShipMetrics,
    stop: CancellationToken,
) {
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    let mut counted = outbox.end().event;
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            _ = stop.cancelled() => return,
        }
        let end = outbox.end();
        if reads_journal {
            metrics.appended.inc_by(end.event.saturating_sub(counted));
            counted = end.event;
        }
        for s in &states {
            let c = s.cursor();
            metrics
                .backlog
                .with_label_values(&[&s.name])
                .set(end.event.saturating_sub(c.event) as i64);
            metrics
                .lag
                .with_label_values(&[&s.name])
                .set(s.lag_seconds());
        }
        for s in &states {
            outbox.hold(&s.name, s.cursor());
        }
        let o = outbox.clone();
        match tokio::task::spawn_blocking(move || o.compact_held()).await {
            Ok(Ok(n)) if n > 0 => {
                tracing::debug!(target: "gannet::ship", segments = n, "outbox segments every destination has passed deleted")
            }
            Ok(Err(e)) => {
                tracing::warn!(target: "gannet::ship", error = %e, "cannot delete passed outbox segments; retried in 1s")
            }
            _ => {}
        }
        metrics.outbox_bytes.set(outbox.retained_bytes() as i64);
    }
}

#[cfg(test)]
mod tests;
