//! The send log: every event of the event stream kept in SQLite, queryable by recipient,
//! message, campaign, tenant and time, with personal fields sealed under per-person keys.
//!
//! Owns: the send-log database (see `store`), its journal (`journal`: the durable bus
//! subscriber appends every event there and acknowledges it after the fdatasync, so
//! `EventBus::wait_durable` means "in the send log's journal"; the ingester moves the journal
//! into SQLite in large transactions), the master key (`keys`), daily pruning of whole days
//! past `[sendlog] retention_days`, and the read side used by the HTTP API and the CLI
//! (filters, cursor paging, CSV/NDJSON rendering, campaign statistics). A query through
//! [`SendLog::read`] first waits for every event published before it to reach SQLite.
//! Never does: publish facts about mail (it only records them; the one thing it publishes is
//! the `log_access` operator event of the queries it answers, through the callers), decide
//! anything about delivery, or write a clear address to disk.

pub mod export;
pub mod journal;
pub mod keys;
pub mod render;
pub mod store;

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use tokio_util::sync::CancellationToken;

use crate::config::Config;
use crate::events::{Event, EventBus, EventKind, Mode};
use crate::ship;

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
    #[error(transparent)]
    Journal(#[from] journal::JournalError),
    #[error("send-log task failed: {0}")]
    Task(String),
}

/// How long after an erasure began the lines of events naming the person are written
/// shredded to the send log's journal and shipping's outbox
/// ([`crate::ship::outbox::Outbox::shred_arriving`]): longer than a delivery attempt in
/// flight at the erasure can take with the default timeouts.
pub const ERASURE_WINDOW: std::time::Duration = std::time::Duration::from_secs(30 * 60);

/// How a person's address is looked for in lower-cased event JSON and stored answers when
/// they are erased: every store's shred pass compares with this.
pub fn erasure_needle(address: &str) -> Vec<u8> {
    address.trim().to_ascii_lowercase().into_bytes()
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

/// The send log opened for `serve`: the database and its journal, the journal's backlog
/// already moved into the database.
pub struct Opened {
    ingester: journal::Ingester,
    appender: ship::outbox::Appender,
}

impl Opened {
    /// The journal, which event shipping's destinations read too (see `ship::start`).
    pub fn journal(&self) -> ship::outbox::Outbox {
        self.ingester.journal().clone()
    }

    /// The time of the newest event held (the journal is ingested at open): where a replay
    /// of possibly lost `received` events starts.
    pub fn last_event_time_us(&self) -> Result<Option<u64>, SendLogError> {
        Ok(self.ingester.writer.last_event_time_us()?)
    }
}

/// [`open_writer`], then open the journal beside the database and ingest what it holds past
/// the stored position (events a crash left between their ack and the SQLite commit).
/// Blocking.
pub fn open(config: &Config) -> Result<Opened, SendLogError> {
    let w = open_writer(config)?;
    let (journal, appender) = journal::open(&w.info().path, &w.info().key)?;
    // Shipping destinations read the journal too: each is registered at its cursor before
    // the catch-up below may delete segments.
    ship::hold_destinations(config, &journal)
        .map_err(|(path, source)| journal::JournalError::Io { path, source })?;
    let mut ingester = journal::Ingester::new(w, journal, config.sendlog.ingest_batch.max(1))?;
    journal::catch_up_at_start(&mut ingester)?;
    Ok(Opened { ingester, appender })
}

/// Load the master key and open the database for writing, signing checkpoints with
/// `[sendlog] checkpoint_key` (blocking: call from a blocking thread or before the runtime
/// starts).
pub fn open_writer(config: &Config) -> Result<Writer, SendLogError> {
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
    progress: Arc<journal::Progress>,
    /// Requests the ingester task carries out between batches (erasures). Capacity 16;
    /// senders wait when full (erasures are rare operator actions).
    cmds: tokio::sync::mpsc::Sender<Cmd>,
    pub purposes: Arc<Vec<String>>,
    pub retention_days: u32,
}

impl SendLog {
    /// Subscribe the journal to `bus` (durable mode) and start the appender and the
    /// ingester. Call before the stages publish. The task stops after `stop` is cancelled,
    /// once what was published until then is in the journal and the database.
    pub fn start(
        config: &Config,
        opened: Opened,
        bus: &EventBus,
        stop: CancellationToken,
    ) -> (SendLog, tokio::task::JoinHandle<()>) {
        let Opened { ingester, appender } = opened;
        let sub = bus.subscribe(
            "sendlog",
            Mode::Durable {
                bound: config.sendlog.bound,
            },
        );
        let progress = journal::Progress::new(&ingester);
        let (cmds, cmd_rx) = tokio::sync::mpsc::channel(16);
        let handle = SendLog {
            info: ingester.writer.info().clone(),
            bus: bus.clone(),
            progress: progress.clone(),
            cmds,
            purposes: Arc::new(config.sendlog.purposes.clone()),
            retention_days: config.sendlog.retention_days,
        };
        let appender_task = tokio::spawn(journal::run_appender(
            appender,
            sub,
            progress.clone(),
            config.sendlog.batch,
            config.sendlog.commit_interval,
            config.sendlog.bound as u64,
            config.sendlog.ingest_batch.max(1) as u64,
            stop.clone(),
        ));
        // The ingester stops after the appender has appended everything published before
        // the stop, and ingests that first.
        let ingester_stop = CancellationToken::new();
        let ingester_task = tokio::spawn(run_ingester(
            ingester,
            progress,
            cmd_rx,
            config.sendlog.ingest_interval,
            config.sendlog.retention_days,
            ingester_stop.clone(),
        ));
        let task = tokio::spawn(async move {
            let _ = appender_task.await;
            ingester_stop.cancel();
            let _ = ingester_task.await;
        });
        (handle, task)
    }

    /// Run `f` with a fresh read-only connection on a blocking thread, once every event
    /// published before the call is in the database (waiting at most
    /// [`journal::CATCH_UP_WAIT`]; past it, `f` sees what is there and a warning says so).
    pub async fn read<T: Send + 'static>(
        &self,
        f: impl FnOnce(&mut Reader) -> Result<T, StoreError> + Send + 'static,
    ) -> Result<T, SendLogError> {
        if !self.progress.catch_up(self.bus.last_seq()).await {
            tracing::warn!(
                waited_s = journal::CATCH_UP_WAIT.as_secs(),
                "send log: the database is behind its journal (see errors above); answering from what it holds"
            );
        }
        self.read_ingested(f).await
    }

    /// [`SendLog::read`] without waiting for the ingester: what the database holds now (an
    /// export's later chunks, which stop at a `seq` read once caught up).
    pub async fn read_ingested<T: Send + 'static>(
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

    /// GDPR Art. 17: destroy the key of `address` (crypto-shredding), overwrite their lines
    /// in the journal (which shipping destinations read too), and record the erasure
    /// (`erased` event, without the address).
    pub async fn erase(&self, address: &str, actor: &str) -> Result<Erased, SendLogError> {
        let hash = self.info.key.address_hash(address);
        let needle = erasure_needle(address);
        // Lines naming them that are appended from now on are written shredded, so none
        // slips in behind the pass below (a delivery in flight, a purge just recorded).
        self.progress
            .journal
            .shred_arriving(&needle, ERASURE_WINDOW);
        // The journal holds every event published so far (the purges just recorded among
        // them); the ingester moves them into the database before it destroys the key, so
        // the row count and the statistics include them.
        let end = self
            .progress
            .appended_through(self.bus.last_seq(), None)
            .await
            .ok_or_else(|| SendLogError::Task("the send-log journal has stopped".into()))?;
        let (tx, rx) = tokio::sync::oneshot::channel();
        self.cmds
            .send(Cmd::Erase {
                hash,
                needle,
                end,
                reply: tx,
            })
            .await
            .map_err(|_| SendLogError::Task("the send-log writer has stopped".into()))?;
        let erased = rx
            .await
            .map_err(|_| SendLogError::Task("the send-log writer has stopped".into()))??;
        self.bus.publish(Event::new(EventKind::Erased {
            actor: actor.to_string(),
            subject: hex::encode(hash),
            rows: erased.rows,
        }));
        Ok(erased)
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

/// What the ingester task does for the handle besides ingesting.
enum Cmd {
    Erase {
        hash: [u8; 32],
        /// The lower-cased address: journal lines mentioning it are shredded.
        needle: Vec<u8>,
        /// The journal's end once it held everything published before the erasure.
        end: ship::outbox::Pos,
        reply: tokio::sync::oneshot::Sender<Result<Erased, SendLogError>>,
    },
}

/// What [`SendLog::erase`] did.
#[derive(Debug, Clone, Copy)]
pub struct Erased {
    /// Send-log rows naming the person, now unreadable.
    pub rows: u64,
    /// Journal lines naming them overwritten in place (events no shipping destination had
    /// taken yet, or the ingester had not yet let go of).
    pub journal_lines: u64,
}

/// The ingester loop: every `interval` (or at once when a reader waits, or the journal's
/// backlog reaches `[sendlog] ingest_batch`), move the journal's new lines into SQLite;
/// erasures and pruning between ingests. On a database error the lines stay in the journal
/// and the next ingest tries again (after a growing delay).
async fn run_ingester(
    mut ing: journal::Ingester,
    progress: Arc<journal::Progress>,
    mut cmds: tokio::sync::mpsc::Receiver<Cmd>,
    interval: Duration,
    retention_days: u32,
    stop: CancellationToken,
) {
    let mut prune = tokio::time::interval(Duration::from_secs(3600));
    prune.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut retry: Option<Duration> = None;
    loop {
        let wait = retry.unwrap_or(interval);
        let stopping = tokio::select! {
            _ = stop.cancelled() => true,
            Some(Cmd::Erase { hash, needle, end, reply }) = cmds.recv() => {
                let now = std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)
                    .unwrap_or(Duration::ZERO)
                    .as_micros() as i64;
                let p = progress.clone();
                let Ok((i, r)) = tokio::task::spawn_blocking(move || {
                    let r = ing.erase(&hash, &needle, end, now, &p);
                    (ing, r)
                })
                .await
                else {
                    tracing::error!("send-log ingester panicked during an erasure");
                    return;
                };
                ing = i;
                let _ = reply.send(r);
                continue;
            }
            _ = prune.tick() => {
                if retention_days > 0 {
                    ing = prune_days(ing, retention_days).await;
                }
                continue;
            }
            _ = progress.ingest_now_notified() => false,
            _ = tokio::time::sleep(wait) => false,
        };
        let end = progress.journal.end();
        if ing.at().byte < end.byte {
            let p = progress.clone();
            let Ok((i, r)) = tokio::task::spawn_blocking(move || {
                let r = ing.catch_up(end, Some(&*p));
                (ing, r)
            })
            .await
            else {
                // The writer is gone with the panicked thread; lines stay in the journal
                // for the next start.
                tracing::error!(
                    "send-log ingester panicked; events stay in the journal until the next start"
                );
                std::future::pending::<()>().await;
                unreachable!()
            };
            ing = i;
            match r {
                Ok(_) => retry = None,
                Err(e) => {
                    let d = retry.map_or(Duration::from_millis(100), |d| {
                        (d * 2).min(Duration::from_secs(10))
                    });
                    tracing::error!(error = %e, retry_in_ms = d.as_millis() as u64,
                        "cannot move events from the journal into the send-log database; they stay in the journal (queries may miss them until this recovers)");
                    retry = Some(d);
                    if stopping {
                        // They are ingested at the next start.
                        return;
                    }
                    continue;
                }
            }
        }
        if stopping {
            return;
        }
    }
}

async fn prune_days(ing: journal::Ingester, retention_days: u32) -> journal::Ingester {
    let now_us = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or(Duration::ZERO)
        .as_micros() as i64;
    let cutoff = prune_cutoff(now_us, retention_days);
    let mut ing = ing;
    match tokio::task::spawn_blocking(move || {
        let r = ing.writer.prune_before(cutoff);
        (ing, r)
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
