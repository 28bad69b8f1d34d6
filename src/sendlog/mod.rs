//! The send log: every event of the event stream kept in SQLite, queryable by recipient,
//! message, campaign, tenant and time, with personal fields sealed under per-person keys.
//!
//! Owns: the send-log database (see `store`), the master key (`keys`), the subscriber task
//! that appends events in batched transactions and acknowledges them to the bus only after
//! the commit (so `EventBus::wait_durable` means "in the send log"), daily pruning of whole
//! days past `[sendlog] retention_days`, and the read side used by the HTTP API and the CLI
//! (filters, cursor paging, CSV/NDJSON rendering, campaign statistics).
//! Never does: publish facts about mail (it only records them; the one thing it publishes is
//! the `log_access` operator event of the queries it answers, through the callers), decide
//! anything about delivery, or write a clear address to disk.

pub mod export;
pub mod keys;
pub mod render;
pub mod store;

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use tokio_util::sync::CancellationToken;

use crate::config::Config;
use crate::events::{Event, EventBus, EventKind, Mode, Published, Subscription};

pub use keys::{KeyError, MasterKey};
pub use store::{
    Broken, CountRow, EventFilter, Reader, StoreError, StoreInfo, VerifyReport, Writer,
};

/// Why the send log cannot start or answer.
#[derive(Debug, thiserror::Error)]
pub enum SendLogError {
    #[error(transparent)]
    Key(#[from] KeyError),
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("the send log is turned off ([sendlog] enabled = false)")]
    Disabled,
    #[error("send-log task failed: {0}")]
    Task(String),
}

/// Where the send log and its key live, resolved against the config file's directory.
pub fn paths(config: &Config) -> (PathBuf, PathBuf) {
    let db = match &config.sendlog.path {
        Some(p) => config.resolve_path(p),
        None => config
            .resolve_path(&config.spool.path)
            .join("sendlog.sqlite"),
    };
    (db, config.resolve_path(&config.storage.key_file))
}

/// Load the master key and open the database for writing, signing checkpoints with
/// `[sendlog] checkpoint_key` (blocking: call from a blocking thread or before the runtime
/// starts).
pub fn open(config: &Config) -> Result<Writer, SendLogError> {
    let (db, key_file) = paths(config);
    let key = MasterKey::load_or_create(&key_file, &db)?;
    let mut w = store::open_writer(&db, key, &key_file)?;
    let cp_file = config.resolve_path(&config.sendlog.checkpoint_key);
    // A store that was never signed (new, or written before checkpoints existed) gets a new
    // key; one that was signed needs the key it was signed with.
    let cp_key = if w.checkpoint_public_key()?.is_some() {
        keys::CheckpointKey::load(&cp_file).map_err(|e| match e {
            KeyError::Read { source, .. } if source.kind() == std::io::ErrorKind::NotFound => {
                KeyError::Missing {
                    path: cp_file.clone(),
                    data: db.clone(),
                }
            }
            e => e,
        })?
    } else {
        keys::CheckpointKey::load_or_create(&cp_file, std::path::Path::new(""))?
    };
    w.sign_checkpoints(cp_key, &cp_file, config.sendlog.checkpoint_interval)?;
    Ok(w)
}

/// Open the send log of `config` for reading only (the CLI's offline commands).
pub fn open_reader(config: &Config) -> Result<Reader, SendLogError> {
    let (db, key_file) = paths(config);
    let key = MasterKey::load_or_create(&key_file, &db)?;
    // Opening the writer once checks the key against the store.
    let w = store::open_writer(&db, key, &key_file)?;
    let info = w.info().clone();
    drop(w);
    Ok(Reader::open(&info)?)
}

/// The handle the HTTP API holds: runs queries on blocking threads. Cheap to clone.
#[derive(Clone)]
pub struct SendLog {
    info: StoreInfo,
    bus: EventBus,
    /// Requests the writer task carries out between batches (erasures). Capacity 16; senders
    /// wait when full (erasures are rare operator actions).
    cmds: tokio::sync::mpsc::Sender<Cmd>,
    pub purposes: Arc<Vec<String>>,
    pub retention_days: u32,
}

impl SendLog {
    /// Subscribe the store to `bus` (durable mode) and start the writer task. Call before
    /// the stages publish. The task stops after `stop` is cancelled and what was published
    /// until then is written.
    pub fn start(
        config: &Config,
        writer: Writer,
        bus: &EventBus,
        stop: CancellationToken,
    ) -> (SendLog, tokio::task::JoinHandle<()>) {
        let sub = bus.subscribe(
            "sendlog",
            Mode::Durable {
                bound: config.sendlog.bound,
            },
        );
        let (cmds, cmd_rx) = tokio::sync::mpsc::channel(16);
        let handle = SendLog {
            info: writer.info().clone(),
            bus: bus.clone(),
            cmds,
            purposes: Arc::new(config.sendlog.purposes.clone()),
            retention_days: config.sendlog.retention_days,
        };
        let task = tokio::spawn(run_writer(
            writer,
            sub,
            cmd_rx,
            Batching {
                max: config.sendlog.batch.max(1),
                linger: config.sendlog.commit_interval,
            },
            config.sendlog.retention_days,
            stop,
        ));
        (handle, task)
    }

    /// Run `f` with a fresh read-only connection on a blocking thread.
    pub async fn read<T: Send + 'static>(
        &self,
        f: impl FnOnce(&mut Reader) -> Result<T, StoreError> + Send + 'static,
    ) -> Result<T, SendLogError> {
        let info = self.info.clone();
        tokio::task::spawn_blocking(move || {
            let mut r = Reader::open(&info)?;
            f(&mut r)
        })
        .await
        .map_err(|e| SendLogError::Task(e.to_string()))?
        .map_err(SendLogError::from)
    }

    /// GDPR Art. 17: destroy the key of `address` (crypto-shredding) and record the erasure
    /// (`erased` event, without the address). Returns how many send-log rows named them.
    pub async fn erase(&self, address: &str, actor: &str) -> Result<u64, SendLogError> {
        let hash = self.info.key.address_hash(address);
        let (tx, rx) = tokio::sync::oneshot::channel();
        self.cmds
            .send(Cmd::Erase { hash, reply: tx })
            .await
            .map_err(|_| SendLogError::Task("the send-log writer has stopped".into()))?;
        let rows = rx
            .await
            .map_err(|_| SendLogError::Task("the send-log writer has stopped".into()))??;
        self.bus.publish(Event::new(EventKind::Erased {
            actor: actor.to_string(),
            subject: hex::encode(hash),
            rows,
        }));
        Ok(rows)
    }

    /// The keyed hash that stands for `address` in the store.
    pub fn address_hash(&self, address: &str) -> [u8; 32] {
        self.info.key.address_hash(address)
    }

    /// Record that `actor` read the log (`log_access` operator event).
    pub fn record_access(
        &self,
        actor: &str,
        action: &str,
        person: Option<&str>,
        filter: serde_json::Value,
        format: &str,
        rows: u64,
    ) {
        let mut ev = Event::new(EventKind::LogAccess {
            actor: actor.to_string(),
            action: action.to_string(),
            filter,
            format: format.to_string(),
            rows,
        });
        if let Some(p) = person {
            ev.recipient = p.to_string();
        }
        self.bus.publish(ev);
    }
}

/// What the writer task does for the handle besides appending.
enum Cmd {
    Erase {
        hash: [u8; 32],
        reply: tokio::sync::oneshot::Sender<Result<u64, StoreError>>,
    },
}

/// The subscriber loop: batch what is waiting, append it in one transaction, then ack.
/// How the writer groups events into transactions.
struct Batching {
    /// Most events in one transaction.
    max: usize,
    /// How long the first event of a batch may wait for more before the commit. Every commit
    /// rewrites the tail page of each index and fsyncs the WAL, so ten events per commit cost
    /// nearly what a thousand do: waiting lowers the send log's CPU cost per event under load.
    /// Nothing on the acceptance path waits for it, but the spool's record of a finished
    /// message does (and so, after a crash, how much is delivered twice): the default is 0,
    /// where events gather while the previous commit runs.
    linger: Duration,
}

async fn run_writer(
    mut writer: Writer,
    mut sub: Subscription,
    mut cmds: tokio::sync::mpsc::Receiver<Cmd>,
    batching: Batching,
    retention_days: u32,
    stop: CancellationToken,
) {
    let mut prune = tokio::time::interval(Duration::from_secs(3600));
    prune.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        let first = tokio::select! {
            p = sub.recv() => p,
            _ = stop.cancelled() => None,
            Some(cmd) = cmds.recv() => {
                match cmd {
                    Cmd::Erase { hash, reply } => {
                        let now = std::time::SystemTime::now()
                            .duration_since(std::time::UNIX_EPOCH)
                            .unwrap_or(Duration::ZERO)
                            .as_micros() as i64;
                        let Ok((w, r)) = tokio::task::spawn_blocking(move || {
                            let r = writer.erase(&hash, now);
                            (writer, r)
                        })
                        .await
                        else {
                            tracing::error!("send-log writer panicked during an erasure");
                            return;
                        };
                        writer = w;
                        let _ = reply.send(r);
                    }
                }
                continue;
            }
            _ = prune.tick() => {
                if retention_days > 0 {
                    writer = prune_days(writer, retention_days).await;
                }
                continue;
            }
        };
        let mut items: Vec<Published> = Vec::new();
        let stopping = first.is_none();
        if let Some(p) = first {
            items.push(p);
        }
        let batch = batching.max;
        let drain = |items: &mut Vec<Published>, sub: &mut Subscription| {
            while items.len() < batch {
                match sub.try_recv() {
                    Some(p) => items.push(p),
                    None => break,
                }
            }
        };
        drain(&mut items, &mut sub);
        if !stopping && !batching.linger.is_zero() {
            let deadline = tokio::time::Instant::now() + batching.linger;
            while items.len() < batch {
                tokio::select! {
                    r = tokio::time::timeout_at(deadline, sub.recv()) => match r {
                        Ok(Some(p)) => {
                            items.push(p);
                            drain(&mut items, &mut sub);
                        }
                        // Deadline, or the bus closed (the next recv sees it and drains).
                        _ => break,
                    },
                    _ = stop.cancelled() => break,
                }
            }
        }
        if !items.is_empty() {
            writer = write_batch(writer, items, &sub).await;
        }
        if stopping {
            // Drain what was published before the stop, then leave.
            loop {
                let mut rest = Vec::new();
                while rest.len() < batch {
                    match sub.try_recv() {
                        Some(p) => rest.push(p),
                        None => break,
                    }
                }
                if rest.is_empty() {
                    return;
                }
                writer = write_batch(writer, rest, &sub).await;
            }
        }
    }
}

/// Append `items` and ack them; on a database error, retry the same batch until it commits
/// (nothing is acked, so intake's back-pressure and `wait_durable` hold the line meanwhile).
async fn write_batch(mut writer: Writer, items: Vec<Published>, sub: &Subscription) -> Writer {
    let last = items.last().map(|p| p.seq).unwrap_or(0);
    let items = Arc::new(items);
    let mut delay = Duration::from_millis(100);
    loop {
        let batch = items.clone();
        let r = tokio::task::spawn_blocking(move || {
            let r = writer.append(batch.iter().map(|p| p.event.as_ref()));
            (writer, r)
        })
        .await;
        match r {
            Ok((w, Ok(_))) => {
                sub.ack(last);
                return w;
            }
            Ok((w, Err(e))) => {
                tracing::error!(error = %e, events = items.len(), "cannot write events to the send log; retrying (intake will push back while this lasts)");
                writer = w;
                tokio::time::sleep(delay).await;
                delay = (delay * 2).min(Duration::from_secs(10));
            }
            Err(e) => {
                // The blocking task panicked: the writer is gone with it. Nothing sensible
                // remains to do but say so loudly; events stay unacknowledged.
                tracing::error!(error = %e, "send-log writer panicked; events are no longer recorded");
                std::future::pending::<()>().await;
                unreachable!()
            }
        }
    }
}

async fn prune_days(writer: Writer, retention_days: u32) -> Writer {
    let now_us = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or(Duration::ZERO)
        .as_micros() as i64;
    let cutoff = prune_cutoff(now_us, retention_days);
    let mut writer = writer;
    match tokio::task::spawn_blocking(move || {
        let r = writer.prune_before(cutoff);
        (writer, r)
    })
    .await
    {
        Ok((w, r)) => {
            match r {
                Ok(0) => {}
                Ok(n) => tracing::info!(events = n, "send log: pruned events past retention"),
                Err(e) => tracing::warn!(error = %e, "send log: pruning failed; will retry"),
            }
            w
        }
        Err(e) => {
            tracing::error!(error = %e, "send-log pruning panicked");
            std::future::pending::<()>().await;
            unreachable!()
        }
    }
}

/// The first instant kept: midnight UTC, `retention_days` whole days before today's.
pub fn prune_cutoff(now_us: i64, retention_days: u32) -> i64 {
    const DAY_US: i64 = 86_400 * 1_000_000;
    (now_us.div_euclid(DAY_US) - retention_days as i64) * DAY_US
}

/// Parse a time filter: RFC 3339 (`2026-12-03T10:00:00Z`), a date (`2026-12-03`, midnight
/// UTC) or Unix seconds. Returns microseconds since the epoch.
pub fn parse_time(s: &str) -> Option<i64> {
    let s = s.trim();
    if let Ok(secs) = s.parse::<i64>() {
        return secs.checked_mul(1_000_000);
    }
    use time::format_description::well_known::Rfc3339;
    if let Ok(t) = time::OffsetDateTime::parse(s, &Rfc3339) {
        return Some((t.unix_timestamp_nanos() / 1000) as i64);
    }
    let fmt = time::format_description::parse_borrowed::<2>("[year]-[month]-[day]").ok()?;
    time::Date::parse(s, &fmt)
        .ok()
        .map(|d| d.midnight().assume_utc().unix_timestamp() * 1_000_000)
}

/// Where the send log would be for `config` (for messages).
pub fn describe(config: &Config) -> String {
    let (db, key) = paths(config);
    format!("{} (key {})", db.display(), key.display())
}

#[cfg(test)]
mod tests;
