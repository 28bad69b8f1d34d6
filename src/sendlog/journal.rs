//! The send log's journal: where the send log's durability comes from.
//!
//! Owns: the journal directory (`sendlog.journal/` beside the database: a sealed, append-only
//! [`Outbox`] of its own), the durable bus subscriber that appends every event there and
//! acknowledges it to the bus after the fdatasync (group commit: one `write` + `fdatasync` per
//! batch, no SQLite on that path), and the [`Ingester`] that moves journal lines into SQLite
//! in large transactions (`[sendlog] ingest_interval` / `ingest_batch`), storing the journal
//! position in the same transaction (`meta.journal_pos`), then deletes the journal segments it
//! and every shipping destination have passed. With the send log on, event shipping has no
//! outbox of its own: its destinations read this journal at their cursors (`ship`), so an
//! event costs one sealed append and one fdatasync whoever reads it.
//! Never does: decide what a row holds (`store`), answer queries, or talk to the network.
//!
//! Why: a SQLite commit writes every touched index page and fsyncs the WAL, so committing the
//! ten or so events that arrive during one commit cost the send log most of its CPU. The
//! journal's append is one sequential write and one fdatasync whatever the batch, and the
//! ingester commits thousands of events at once.
//!
//! Crash: an event acked is in the journal; at the next start [`catch_up_at_start`] ingests
//! every line past the stored position before anything publishes, so every acked event is in
//! SQLite exactly once (the position commits with the rows). Readers see what was published
//! before them through [`Progress::catch_up`].

use std::collections::VecDeque;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::{Notify, watch};
use tokio_util::sync::CancellationToken;

use super::store::{StoreError, Writer};
use super::{MasterKey, SendLogError};
use crate::events::{Event, Published, Subscription};
use crate::ship::outbox::{Appender, Outbox, OutboxError, Pos};

/// Segment size of the journal: segments are deleted once ingested, so this is about how
/// much stays on disk (and is shredded by an erasure) past what SQLite holds.
pub const SEGMENT_BYTES: u64 = 16 * 1024 * 1024;

/// Where the journal of the database at `db` lives: `NAME.journal/` beside it (so it is on
/// the disk `[sendlog] path` chose, never on the spool's).
pub fn dir_for(db: &Path) -> PathBuf {
    let mut name = db.file_stem().unwrap_or_default().to_os_string();
    name.push(".journal");
    db.with_file_name(name)
}

/// Why the journal cannot be opened or written.
#[derive(Debug, thiserror::Error)]
pub enum JournalError {
    #[error(
        "send-log journal {path}: {source} (check free disk space and the permissions of the directory beside [sendlog] path)"
    )]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error(transparent)]
    Key(#[from] crate::sendlog::keys::KeyCheckError),
}

impl From<OutboxError> for JournalError {
    fn from(e: OutboxError) -> Self {
        match e {
            OutboxError::Io { path, source } => JournalError::Io { path, source },
            OutboxError::Key(k) => JournalError::Key(k),
        }
    }
}

/// The ingester's name among the journal's readers ([`Outbox::hold`]); a shipping
/// destination's name cannot hold a space.
const INGESTER_HOLD: &str = "send log";

/// Open (or create) the journal of the database at `db`. Blocking.
pub fn open(db: &Path, key: &MasterKey) -> Result<(Outbox, Appender), JournalError> {
    Ok(Outbox::open(&dir_for(db), SEGMENT_BYTES, key)?)
}

/// What the appender, the ingester and the readers share.
pub(super) struct Progress {
    pub journal: Outbox,
    /// Shared with the ingester (see [`Pending`]).
    pending: Arc<Mutex<Pending>>,
    /// The last bus seq appended (fdatasynced) to the journal, and the journal's end then.
    appended: watch::Sender<Appended>,
    /// Everything before this journal position is in SQLite.
    ingested: watch::Sender<Pos>,
    /// Wakes the ingester before its interval (a reader waits, or the backlog is large).
    ingest_now: Notify,
}

#[derive(Debug, Clone, Copy, Default)]
struct Appended {
    seq: u64,
    pos: Pos,
}

/// Events appended to the journal and not yet in SQLite, as the appender had them, so the
/// ingester stores them without reading, opening and parsing their lines again (the JSON
/// parse alone was ~1% of Gannet's CPU in `benches/e2e.sh`). At most [`PENDING_EVENTS`]:
/// past it the oldest batches go and the ingester reads those from the files. A std Mutex:
/// held to push or take whole batches, never across I/O.
#[derive(Default)]
pub(super) struct Pending {
    batches: VecDeque<PendingBatch>,
    events: usize,
}

struct PendingBatch {
    start: Pos,
    end: Pos,
    events: Vec<Arc<Event>>,
}

/// Most events [`Pending`] holds (~a second of a busy server's events; each is shared with
/// the bus, so a few hundred bytes apiece).
const PENDING_EVENTS: usize = 20_000;

fn lock(p: &Mutex<Pending>) -> std::sync::MutexGuard<'_, Pending> {
    p.lock().unwrap_or_else(|e| e.into_inner())
}

/// How long a query waits for the events published before it to reach SQLite before it
/// answers with what is there (and says so in the log).
pub const CATCH_UP_WAIT: Duration = Duration::from_secs(10);

impl Progress {
    pub fn new(ing: &Ingester) -> Arc<Progress> {
        let journal = ing.journal.clone();
        let end = journal.end();
        let ingested = ing.at;
        Arc::new(Progress {
            journal,
            pending: ing.pending.clone(),
            appended: watch::channel(Appended { seq: 0, pos: end }).0,
            ingested: watch::channel(ingested).0,
            ingest_now: Notify::new(),
        })
    }

    /// Resolves when the ingester is asked to run before its interval.
    pub fn ingest_now_notified(&self) -> tokio::sync::futures::Notified<'_> {
        self.ingest_now.notified()
    }

    /// The journal position everything before which is in SQLite.
    pub fn ingested(&self) -> Pos {
        *self.ingested.borrow()
    }

    /// Wait until the journal holds every event up to bus seq `seq`; returns the journal's
    /// end then. None when `deadline` passed first.
    pub async fn appended_through(
        &self,
        seq: u64,
        deadline: Option<tokio::time::Instant>,
    ) -> Option<Pos> {
        let mut rx = self.appended.subscribe();
        let wait = rx.wait_for(|a| a.seq >= seq);
        let a = match deadline {
            Some(d) => tokio::time::timeout_at(d, wait).await.ok()?.ok()?,
            None => wait.await.ok()?,
        };
        Some(a.pos)
    }

    /// Wait (at most [`CATCH_UP_WAIT`]) until SQLite holds every event published on the bus
    /// up to `seq`, waking the ingester at once. Returns false when it gave up.
    pub async fn catch_up(&self, seq: u64) -> bool {
        let deadline = tokio::time::Instant::now() + CATCH_UP_WAIT;
        let Some(pos) = self.appended_through(seq, Some(deadline)).await else {
            return false;
        };
        if self.ingested().byte >= pos.byte {
            return true;
        }
        let mut rx = self.ingested.subscribe();
        self.ingest_now.notify_one();
        matches!(
            tokio::time::timeout_at(deadline, rx.wait_for(|p| p.byte >= pos.byte)).await,
            Ok(Ok(_))
        )
    }
}

/// Moves journal lines into SQLite (owned by the ingester task; moved to a blocking thread
/// for each batch).
pub struct Ingester {
    pub(super) writer: Writer,
    journal: Outbox,
    /// Everything before this is in SQLite (== the stored `journal_pos`).
    at: Pos,
    /// Most events per transaction.
    max: usize,
    /// What the appender handed over (see [`Pending`]).
    pending: Arc<Mutex<Pending>>,
}

impl Ingester {
    /// Where to go on from: the stored position, kept within what the journal holds. A
    /// stored position past the journal's end means the journal was removed or replaced:
    /// say so and start at its beginning. Blocking.
    pub fn new(writer: Writer, journal: Outbox, max: usize) -> Result<Ingester, StoreError> {
        let stored = writer.journal_pos()?;
        let (start, end) = (journal.start(), journal.end());
        let at = match stored {
            None => start,
            Some((byte, event)) => {
                let p = Pos { byte, event };
                if p.byte > end.byte {
                    tracing::warn!(journal = %journal.dir().display(), stored_byte = p.byte, end_byte = end.byte,
                        "send log: the journal ends before the position the database stored (was the journal directory removed?); ingesting it from its start");
                    start
                } else if p.byte < start.byte {
                    tracing::error!(journal = %journal.dir().display(), stored_byte = p.byte, start_byte = start.byte,
                        "send log: journal segments the database had not ingested are gone; events between are missing from the send log");
                    start
                } else {
                    p
                }
            }
        };
        // Shipping destinations may read this journal too: segments go once all have passed.
        journal.hold(INGESTER_HOLD, at);
        Ok(Ingester {
            writer,
            journal,
            at,
            max: max.max(1),
            pending: Arc::default(),
        })
    }

    pub fn at(&self) -> Pos {
        self.at
    }

    pub fn journal(&self) -> &Outbox {
        &self.journal
    }

    /// The journal's durable end now.
    pub fn journal_end(&self) -> Pos {
        self.journal.end()
    }

    /// Move up to `max` events before `end` into SQLite, in one transaction with the new
    /// position. Returns the events passed (0: nothing before `end` left). Blocking.
    pub fn step(&mut self, end: Pos) -> Result<u64, SendLogError> {
        if self.at.byte >= end.byte {
            return Ok(0);
        }
        let (events, next) = match self.take_pending(end) {
            Some(taken) => taken,
            None => self.read_lines(end)?,
        };
        if next.byte <= self.at.byte {
            tracing::warn!(journal = %self.journal.dir().display(), at = self.at.byte, end = end.byte,
                "send log: the journal has no line where the ingester stands; waiting");
            return Ok(0);
        }
        self.writer.append_through(
            events.iter().map(|e| e.as_ref()),
            Some((next.byte, next.event)),
        )?;
        let passed = next.event.saturating_sub(self.at.event);
        self.at = next;
        Ok(passed)
    }

    /// The events the appender handed over that start where the ingester stands, whole
    /// batches up to `end` and (beyond the first) `max` events, and the position after them;
    /// None when they do not start here (the files have them).
    fn take_pending(&mut self, end: Pos) -> Option<(Vec<Arc<Event>>, Pos)> {
        let mut p = lock(&self.pending);
        while p
            .batches
            .front()
            .is_some_and(|b| b.end.byte <= self.at.byte)
        {
            let b = p.batches.pop_front().expect("checked");
            p.events -= b.events.len();
        }
        if p.batches.front()?.start.byte != self.at.byte {
            return None;
        }
        let mut events = Vec::new();
        let mut next = self.at;
        while let Some(b) = p.batches.front() {
            if b.end.byte > end.byte
                || (!events.is_empty() && events.len() + b.events.len() > self.max)
            {
                break;
            }
            let b = p.batches.pop_front().expect("checked");
            p.events -= b.events.len();
            next = b.end;
            events.extend(b.events);
        }
        (!events.is_empty()).then_some((events, next))
    }

    /// Up to `max` events from the journal files where the ingester stands, and the
    /// position after them.
    fn read_lines(&mut self, end: Pos) -> Result<(Vec<Arc<Event>>, Pos), SendLogError> {
        let mut r = self.journal.reader(self.at);
        let lines = match r.read_recent(self.max, end) {
            Some(l) => l,
            None => r.read(self.max, end).map_err(|source| JournalError::Io {
                path: self.journal.dir().to_path_buf(),
                source,
            })?,
        };
        let mut events = Vec::with_capacity(lines.len());
        for l in &lines {
            match serde_json::from_slice::<Event>(&l.json) {
                Ok(e) => events.push(Arc::new(e)),
                Err(e) => tracing::error!(journal = %self.journal.dir().display(), error = %e,
                    "send log: a journal line is not an event; skipped"),
            }
        }
        Ok((events, r.pos()))
    }

    /// Move everything before `end` into SQLite, `max` events per transaction, telling
    /// `progress` after each; then delete the journal segments passed. Blocking.
    pub(super) fn catch_up(
        &mut self,
        end: Pos,
        progress: Option<&Progress>,
    ) -> Result<u64, SendLogError> {
        let mut total = 0;
        loop {
            let n = self.step(end)?;
            if n == 0 {
                break;
            }
            total += n;
            if let Some(p) = progress {
                p.ingested.send_replace(self.at);
            }
        }
        self.journal.hold(INGESTER_HOLD, self.at);
        if total > 0
            && let Err(e) = self.journal.compact_held()
        {
            tracing::warn!(journal = %self.journal.dir().display(), error = %e,
                "send log: cannot delete ingested journal segments; retried after the next ingest");
        }
        Ok(total)
    }

    /// GDPR erasure: ingest everything before `end` (so the rows, counts and the erasure's
    /// row count are all there), destroy the person's key, then overwrite in place the
    /// journal lines naming them that SQLite now holds, so no shipping destination that has
    /// not taken them yet ever does. Returns the rows naming them and the journal lines
    /// overwritten. Blocking.
    pub(super) fn erase(
        &mut self,
        hash: &[u8; 32],
        needle: &[u8],
        end: Pos,
        now_us: i64,
        progress: &Progress,
    ) -> Result<super::Erased, SendLogError> {
        self.catch_up(end, Some(progress))?;
        let rows = self.writer.erase(hash, now_us)?;
        let journal_lines = self
            .journal
            .shred_until(needle, Some(self.at))
            .map_err(|source| JournalError::Io {
                path: self.journal.dir().to_path_buf(),
                source,
            })? as u64;
        tracing::info!(
            rows,
            journal_lines_shredded = journal_lines,
            "send log: person erased"
        );
        Ok(super::Erased {
            rows,
            journal_lines,
        })
    }
}

/// Ingest the journal's backlog at start (what a crash left between an ack and the SQLite
/// commit), before anything publishes. Blocking.
pub fn catch_up_at_start(ing: &mut Ingester) -> Result<u64, SendLogError> {
    let end = ing.journal.end();
    let n = ing.catch_up(end, None)?;
    if n > 0 {
        tracing::info!(
            events = n,
            "send log: events in the journal moved into the database at start"
        );
    }
    Ok(n)
}

/// Take events from the bus, append them to the journal in batches (one fdatasync each),
/// ack. A batch starts with the first event and takes what arrives within `linger`. While
/// SQLite is more than `bound` events behind the journal, no more are taken (intake then
/// waits in `EventBus::admit`).
#[allow(clippy::too_many_arguments)]
pub(super) async fn run_appender(
    mut appender: Appender,
    mut sub: Subscription,
    progress: Arc<Progress>,
    batch: usize,
    linger: Duration,
    bound: u64,
    ingest_batch: u64,
    stop: CancellationToken,
) {
    loop {
        wait_for_ingester(&progress, bound, &stop).await;
        let b = sub.next_batch(batch, linger, &stop).await;
        if !b.items.is_empty() {
            appender = append_batch(appender, b.items, &sub, &progress, ingest_batch).await;
        }
        if b.stopping {
            // Append what was published before the stop, then leave.
            loop {
                let rest = sub.take_waiting(batch);
                if rest.is_empty() {
                    return;
                }
                appender = append_batch(appender, rest, &sub, &progress, ingest_batch).await;
            }
        }
    }
}

async fn wait_for_ingester(progress: &Progress, bound: u64, stop: &CancellationToken) {
    let mut rx = progress.ingested.subscribe();
    loop {
        let behind = progress
            .journal
            .end()
            .event
            .saturating_sub(rx.borrow_and_update().event);
        if behind <= bound {
            return;
        }
        progress.ingest_now.notify_one();
        tokio::select! {
            r = rx.changed() => if r.is_err() { return },
            _ = stop.cancelled() => return,
        }
    }
}

/// Serialise and append `items`, then ack (retrying a failing disk first: nothing is acked
/// meanwhile, so `wait_durable` and `admit` hold the line); hand them to the ingester.
async fn append_batch(
    appender: Appender,
    items: Vec<Published>,
    sub: &Subscription,
    progress: &Progress,
    ingest_batch: u64,
) -> Appender {
    let last = items.last().map(|p| p.seq).unwrap_or(0);
    let (lines, count) = crate::ship::outbox::encode_lines(
        items.iter().map(|p| p.event.as_ref()),
        "send-log journal",
    );
    let (a, end) = appender
        .append_until_durable::<JournalError>(lines.into(), count, "send-log journal")
        .await;
    sub.ack(last);
    let start = progress.appended.borrow().pos;
    if count as usize == items.len() {
        let mut p = lock(&progress.pending);
        p.events += items.len();
        p.batches.push_back(PendingBatch {
            start,
            end,
            events: items.iter().map(|i| i.event.clone()).collect(),
        });
        while p.events > PENDING_EVENTS && p.batches.len() > 1 {
            let old = p.batches.pop_front().expect("more than one");
            p.events -= old.events.len();
        }
    }
    progress.appended.send_replace(Appended {
        seq: last,
        pos: end,
    });
    if end.event.saturating_sub(progress.ingested().event) >= ingest_batch {
        progress.ingest_now.notify_one();
    }
    a
}
