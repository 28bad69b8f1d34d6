//! Event shipping: every event of the stream, at least once, to webhooks, RabbitMQ and JSONL
//! files, through one durable outbox.
//!
//! Owns: the outbox subscriber (a durable subscriber of `events/` whose only work is appending
//! lines to its own files with one fdatasync per batch), one runner per configured destination
//! (`[[webhook]]`, `[[amqp]]`, `[[jsonl]]`) reading the outbox at its own cursor, and
//! housekeeping (deleting what every destination has passed, lag and backlog gauges).
//! Never does: wait on a destination while taking events. A destination that is slow or down
//! only falls behind in the files (`gannet_ship_lag_seconds`, `gannet_ship_backlog_events`);
//! intake can wait for the outbox only if its own disk append stalls for `[outbox] bound`
//! events, the same as for the send log.
//!
//! Guarantee: an event is acknowledged to the bus (`Subscription::ack`) after its line is
//! fdatasynced, so every final state the queue records has its event in the outbox (the
//! queue waits for `EventBus::wait_durable`). A destination's cursor moves after it took a
//! batch; a crash in between sends that batch again: receivers deduplicate on the event `id`.
//! Events in the outbox are sealed at rest (`seal`, under the master key) until every
//! destination has passed them; destinations get the clear event. GDPR erasure shreds the
//! person's pending lines in place (`Outbox::shred`).

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
    appender: JoinHandle<()>,
    others: Vec<JoinHandle<()>>,
    runners_stop: CancellationToken,
    pub outbox: Outbox,
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
            },
            build: Box::new(move || Ok(Box::new(amqp::Amqp::new(&c)) as Box<dyn Destination>)),
        });
    }
    out
}

/// Open the outbox, subscribe it to `bus` (durable) and start every destination. Call before
/// any stage publishes. Returns None when no destination is configured.
pub async fn start(
    config: &Arc<Config>,
    bus: &EventBus,
    registry: &prometheus::Registry,
    stop: CancellationToken,
) -> Result<Option<Shipping>, ShipError> {
    if !enabled(config) {
        return Ok(None);
    }
    let dir = outbox_dir(config);
    let segment_bytes = config.outbox.segment_bytes;
    let key_file = config.resolve_path(&config.storage.key_file);
    let planned = plan(config);
    let names: Vec<String> = planned.iter().map(|p| p.name.clone()).collect();
    // Blocking start-up: open files, load cursors, open destinations' files.
    let opened = tokio::task::spawn_blocking(move || {
        // Lines are sealed under the master key (created 0600 only when no data it protects
        // exists yet).
        let key = crate::sendlog::MasterKey::load_or_create(
            &key_file,
            &Outbox::key_check_path(&dir),
        )
        ?;
        let (outbox, appender) = Outbox::open(&dir, segment_bytes, &key)?;
        let mut ready = Vec::new();
        for p in planned {
            let at = runner::initial_cursor(&outbox, &p.name).map_err(|e| {
                ShipError::Outbox(outbox::OutboxError::Io {
                    path: outbox.dir().join("cursors").join(&p.name),
                    source: e,
                })
            })?;
            let dest = (p.build)().map_err(|message| ShipError::Destination {
                key: p.key.clone(),
                message,
            })?;
            ready.push((p.opts, dest, at));
        }
        for stale in outbox.cursor_names() {
            if !names.contains(&stale) {
                tracing::warn!(target: "gannet::ship", cursor = %stale,
                    "outbox cursor of a destination no longer configured; ignored (delete the file to forget it)");
            }
        }
        Ok::<_, ShipError>((outbox, appender, ready))
    })
    .await
    .map_err(|e| ShipError::Task(e.to_string()))??;
    let (outbox, appender, ready) = opened;
    let metrics = ShipMetrics::new(registry);
    let sub = bus.subscribe(
        "outbox",
        Mode::Durable {
            bound: config.outbox.bound,
        },
    );
    let appender = tokio::spawn(run_appender(
        appender,
        sub,
        config.outbox.batch,
        config.outbox.commit_interval,
        metrics.clone(),
        stop.clone(),
    ));
    let runners_stop = stop.child_token();
    let mut others = Vec::new();
    let mut states = Vec::new();
    for (opts, dest, at) in ready {
        metrics.preset(&opts.name);
        let st = runner::state(&opts.name, at);
        states.push(st.clone());
        others.push(tokio::spawn(runner::run(
            outbox.clone(),
            dest,
            opts,
            st,
            metrics.clone(),
            runners_stop.clone(),
        )));
    }
    others.push(tokio::spawn(housekeeping(
        outbox.clone(),
        states,
        metrics,
        runners_stop.clone(),
    )));
    Ok(Some(Shipping {
        appender,
        others,
        runners_stop,
        outbox,
    }))
}

impl Shipping {
    /// Wait for the appender to write what was published before the stop, and the runners
    /// to leave (what they had not confirmed is sent after the next start).
    pub async fn join(self) {
        self.runners_stop.cancel();
        let _ = self.appender.await;
        for t in self.others {
            let _ = t.await;
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
        .append_until_durable::<outbox::OutboxError>(Arc::new(lines), count, "outbox")
        .await;
    sub.ack(last);
    metrics.appended.inc_by(items.len() as u64);
    a
}

/// Every second: delete segments every destination has passed; set lag and backlog gauges.
async fn housekeeping(
    outbox: Outbox,
    states: Vec<Arc<RunnerState>>,
    metrics: ShipMetrics,
    stop: CancellationToken,
) {
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            _ = stop.cancelled() => return,
        }
        let end = outbox.end();
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
        let Some(min) = states.iter().map(|s| s.cursor()).min() else {
            continue;
        };
        let o = outbox.clone();
        match tokio::task::spawn_blocking(move || o.compact(min)).await {
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
