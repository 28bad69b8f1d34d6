//! The SQLite store of the send log: schema, the batched append, and the read queries.
//!
//! Owns: the database file (WAL, `synchronous = FULL` so a commit is on stable storage before
//! the events are acknowledged, `secure_delete` so destroyed keys do not linger in free pages),
//! the `events` table (one row per event, personal fields sealed per person, a SHA-256 hash
//! chain over the stored bytes), `subjects` (the per-person key salts crypto-shredding deletes)
//! and `campaign_counts` (counters kept at append time, so statistics are one small read and
//! stay true when rows are pruned or shredded).
//! Never does: talk to the event bus, the network or the async runtime (callers run it on
//! blocking threads); write a clear address anywhere.
//!
//! The SQL is plain and portable on purpose: cluster mode can put the same tables on
//! PostgreSQL behind the same query code.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use rusqlite::{Connection, OpenFlags, OptionalExtension, params};
use serde_json::{Map, Value};
use sha2::{Digest, Sha256};

use super::keys::{CheckpointKey, MasterKey, SealKey, checkpoint_valid};
use crate::events::{Event, EventKind};

/// What went wrong with the send-log database.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error(
        "send log {path}: {source} (check [sendlog] path, free disk space and file permissions)"
    )]
    Sqlite {
        path: PathBuf,
        source: rusqlite::Error,
    },
    #[error(
        "send log {path} was written with a different master key than {key_file}; start with the key file it was written with (gannet never re-keys silently)"
    )]
    WrongKey { path: PathBuf, key_file: PathBuf },
    #[error(
        "send log {path} was signed with another checkpoint key than {key_file} (public key {stored}); start with the key file it was signed with"
    )]
    WrongCheckpointKey {
        path: PathBuf,
        key_file: PathBuf,
        stored: String,
    },
    #[error("cannot create the send log directory {path}: {source}")]
    Dir {
        path: PathBuf,
        source: std::io::Error,
    },
}

/// The tables and indexes every store has (see [`TIME_INDEX`], [`TIME_BLOCKS`],
/// [`SENDER_INDEX`] and [`SENDER_ROWS`] for the ones that depend on when it was created).
/// The campaign and tenant indexes are partial: rows
/// without one (transactional mail, a single-tenant install, operator events) stay out of
/// them, so those rows cost two index inserts, and each commit two rewritten index pages,
/// fewer (the two were a measurable share of the send log's CPU in `benches/e2e.sh`). A
/// store created before keeps its full indexes; the queries in [`Reader::select`] use
/// either.
const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS meta (k TEXT PRIMARY KEY, v BLOB NOT NULL);
CREATE TABLE IF NOT EXISTS subjects (
    hash BLOB PRIMARY KEY,
    salt BLOB NOT NULL,
    created_us INTEGER NOT NULL
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS events (
    seq INTEGER PRIMARY KEY,
    id TEXT NOT NULL,
    time_us INTEGER NOT NULL,
    type TEXT NOT NULL,
    queue_id TEXT NOT NULL,
    message_id TEXT NOT NULL,
    tenant TEXT NOT NULL,
    campaign TEXT NOT NULL,
    class TEXT NOT NULL,
    pool TEXT NOT NULL,
    attempt INTEGER NOT NULL,
    variant TEXT NOT NULL,
    site TEXT NOT NULL,
    category TEXT NOT NULL,
    rcpt_hash BLOB,
    sender_hash BLOB,
    rcpt BLOB,
    sender BLOB,
    data_key BLOB,
    data BLOB NOT NULL,
    prev BLOB NOT NULL,
    hash BLOB NOT NULL
);
CREATE INDEX IF NOT EXISTS events_rcpt ON events (rcpt_hash, seq) WHERE rcpt_hash IS NOT NULL;
CREATE INDEX IF NOT EXISTS events_message ON events (message_id, seq);
CREATE INDEX IF NOT EXISTS events_queue ON events (queue_id, seq);
CREATE INDEX IF NOT EXISTS events_campaign ON events (campaign, seq) WHERE campaign <> '';
CREATE INDEX IF NOT EXISTS events_tenant ON events (tenant, seq) WHERE tenant <> '';
CREATE TABLE IF NOT EXISTS erasures (
    hash BLOB PRIMARY KEY,
    time_us INTEGER NOT NULL,
    rows INTEGER NOT NULL
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS checkpoints (
    seq INTEGER PRIMARY KEY,
    time_us INTEGER NOT NULL,
    hash BLOB NOT NULL,
    signature BLOB NOT NULL
);
CREATE TABLE IF NOT EXISTS campaign_counts (
    campaign TEXT NOT NULL,
    variant TEXT NOT NULL,
    site TEXT NOT NULL,
    type TEXT NOT NULL,
    category TEXT NOT NULL,
    n INTEGER NOT NULL,
    PRIMARY KEY (campaign, variant, site, type, category)
) WITHOUT ROWID;
";

/// Whether the database holds a table or index called `name`.
fn has_table(conn: &Connection, name: &str) -> rusqlite::Result<bool> {
    conn.query_row(
        "SELECT 1 FROM sqlite_master WHERE name = ?1",
        params![name],
        |_| Ok(()),
    )
    .optional()
    .map(|r| r.is_some())
}

/// Stores created before 2026-12-05 12:30 UTC index `time_us`; newer ones keep
/// [`TIME_BLOCKS`] instead.
const TIME_INDEX: &str = "CREATE INDEX IF NOT EXISTS events_time ON events (time_us);";

/// Rows of `events` per row of `time_blocks`.
const BLOCK_ROWS: i64 = 1024;

/// The earliest and latest `time_us` of each block of [`BLOCK_ROWS`] `seq`s (block =
/// `seq / BLOCK_ROWS`), written by the writer in the rows' own transaction. Times come nearly
/// in `seq` order (a replayed event's is older), so a time filter becomes a `seq` range
/// (every block whose times overlap it) and the rows' `time_us` is compared only in there:
/// the same answers as an index on `time_us`, for one small upsert per commit instead of an
/// index entry per row.
const TIME_BLOCKS: &str = "CREATE TABLE IF NOT EXISTS time_blocks (
    block INTEGER PRIMARY KEY,
    min_us INTEGER NOT NULL,
    max_us INTEGER NOT NULL
);";

/// Stores created before 2026-12-05 12:30 UTC index `sender_hash` (only an erasure's row
/// count read it); newer ones count rows per sender in [`SENDER_ROWS`].
const SENDER_INDEX: &str = "CREATE INDEX IF NOT EXISTS events_sender ON events (sender_hash) WHERE sender_hash IS NOT NULL;";

/// How many rows of `events` name each sender (by keyed hash): added to at append, taken
/// from at pruning, in the rows' own transactions, so it is always `COUNT(*) ... WHERE
/// sender_hash = ?` without an index entry per row (a campaign's sender is on every row).
const SENDER_ROWS: &str = "CREATE TABLE IF NOT EXISTS sender_rows (
    hash BLOB PRIMARY KEY,
    n INTEGER NOT NULL
) WITHOUT ROWID;";

/// The SQL condition that keeps `seq` inside the blocks whose times can match a
/// `time_us >= since` (`bound` "since") or `time_us < until` ("until") filter, with the time
/// as parameter `?n`.
fn block_bound(bound: &str, n: usize) -> String {
    match bound {
        "since" => format!(
            "seq >= (SELECT COALESCE(MIN(block) * {BLOCK_ROWS}, 9223372036854775807) FROM time_blocks WHERE max_us >= ?{n})"
        ),
        _ => format!(
            "seq < (SELECT COALESCE((MAX(block) + 1) * {BLOCK_ROWS}, 0) FROM time_blocks WHERE min_us < ?{n})"
        ),
    }
}

fn open_conn(path: &Path, flags: OpenFlags) -> rusqlite::Result<Connection> {
    let c = Connection::open_with_flags(path, flags)?;
    c.busy_timeout(std::time::Duration::from_secs(30))?;
    c.pragma_update(None, "secure_delete", "ON")?;
    Ok(c)
}

/// The database location and key, shared by the writer and every reader.
#[derive(Clone)]
pub struct StoreInfo {
    pub path: PathBuf,
    pub key: MasterKey,
}

impl StoreInfo {
    pub(super) fn err(&self) -> impl Fn(rusqlite::Error) -> StoreError + '_ {
        move |source| StoreError::Sqlite {
            path: self.path.clone(),
            source,
        }
    }
}

/// Most per-person keys the writer keeps derived. Each costs about 700 bytes (its AES-GCM
/// context), so 100,000 held ~70 MB, a fifth of Gannet's memory with a million recipients
/// queued (issue 21 item 6); past this many the cache starts again. A miss costs one
/// derivation (an indexed lookup and an HMAC), small beside the row's own insert; with a
/// large campaign of distinct recipients nearly every event misses whatever the size.
const PERSON_KEYS_CACHED: usize = 16_384;

/// Addresses whose keyed hash the writer keeps (~150 bytes each): a campaign's sender is on
/// every event, and a recipient on each of their attempts, so most events need no HMAC (two
/// per event were ~1 µs of the ingester's ~10 µs per event). Cleared when full; an erasure
/// removes the person's entries.
const ADDRESS_HASHES_CACHED: usize = 8_192;

/// Messages whose variant the writer remembers (~100 bytes each). Events of a message mostly
/// follow its `received` within seconds; 200,000 took an hour of steady traffic to fill (~25 MB
/// of slowly growing RSS in the soak) for hits a query gives as well.
const VARIANTS_CACHED: usize = 20_000;

/// The one writer (owned by the send-log task; moved to a blocking thread for each batch).
pub struct Writer {
    info: StoreInfo,
    conn: Connection,
    /// Hash of the last stored row (the chain's head).
    head: [u8; 32],
    /// Per-person keys already derived, by address hash. Cleared at [`PERSON_KEYS_CACHED`].
    keys: HashMap<[u8; 32], Arc<SealKey>>,
    /// Keyed hashes of recent addresses, as events spell them. Cleared at
    /// [`ADDRESS_HASHES_CACHED`].
    hashes: HashMap<String, [u8; 32]>,
    /// Variant of each recent message (from its `received` event), by queue id. Cleared at
    /// [`VARIANTS_CACHED`]; an older message's variant is one indexed query away.
    variants: HashMap<String, String>,
    /// Queue ids of recent DSN messages: they inherit the campaign of the message they report
    /// on, but are not part of its statistics.
    dsns: std::collections::HashSet<String>,
    /// Signs the chain's head every `interval` (see [`Writer::sign_checkpoints`]).
    checkpoints: Option<Checkpoints>,
    /// What new rows' `data` holds ([`DataFormat::Kind`] but in tests and benches).
    data_format: DataFormat,
    /// The store keeps [`TIME_BLOCKS`] (else it has [`TIME_INDEX`]).
    time_blocks: bool,
    /// The store keeps [`SENDER_ROWS`] (else it has [`SENDER_INDEX`]).
    sender_rows: bool,
}

/// The writer's checkpoint schedule.
struct Checkpoints {
    key: CheckpointKey,
    interval: std::time::Duration,
    /// When the last checkpoint was written (None: not yet in this process).
    last: Option<std::time::Instant>,
}

/// How a store is laid out when it is created; a store that exists keeps the layout it was
/// created with, and the queries use whichever it has.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Layout {
    /// SQLite's page size in bytes (fixed once the first table exists).
    pub page_size: u32,
    /// An index on `time_us` ([`TIME_INDEX`]), else [`TIME_BLOCKS`].
    pub time_index: bool,
    /// An index on `sender_hash` ([`SENDER_INDEX`]), else [`SENDER_ROWS`].
    pub sender_index: bool,
}

impl Layout {
    /// Stores created before 2026-12-05 12:30 UTC: 4 KiB pages. Tests and benches create
    /// such stores ([`open_writer_as`]) to show they still work and what the change saved.
    pub const BEFORE: Layout = Layout {
        page_size: 4096,
        time_index: true,
        sender_index: true,
    };
    /// New stores: 16 KiB pages, so a row and its index entries dirty fewer pages per commit
    /// (fewer WAL frames, page headers and cells to balance per event); time blocks and
    /// per-sender counts instead of two indexes.
    pub const NOW: Layout = Layout {
        page_size: 16384,
        time_index: false,
        sender_index: false,
    };
}

/// Pages the WAL may hold before a commit checkpoints it into the database: SQLite's default,
/// 16 MiB with 16 KiB pages (4 MiB with 4 KiB). Set here so `benches/sendlog_ingest.rs` can
/// compare: 4,000 pages (64 MiB) or 250 (4 MiB) cost the same CPU per event, the final
/// checkpoint counted (2026-12-05), so the WAL stays at the default.
#[doc(hidden)]
pub const WAL_AUTOCHECKPOINT_PAGES: u32 = 1000;

/// Create or open the database at `path`, checking it was written with `key`. A new store
/// gets [`Layout::NOW`].
pub fn open_writer(path: &Path, key: MasterKey, key_file: &Path) -> Result<Writer, StoreError> {
    open_writer_as(path, key, key_file, Layout::NOW, WAL_AUTOCHECKPOINT_PAGES)
}

/// [`open_writer`], creating a new store with `layout` and checkpointing the WAL every
/// `autocheckpoint` pages: for tests and benches (old layouts, settings to compare).
#[doc(hidden)]
pub fn open_writer_as(
    path: &Path,
    key: MasterKey,
    key_file: &Path,
    layout: Layout,
    autocheckpoint: u32,
) -> Result<Writer, StoreError> {
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir).map_err(|e| StoreError::Dir {
            path: dir.to_path_buf(),
            source: e,
        })?;
    }
    let info = StoreInfo {
        path: path.to_path_buf(),
        key,
    };
    let conn = open_conn(path, OpenFlags::default()).map_err(info.err())?;
    // An 8 MiB page cache for the writer: index inserts land on random pages (address
    // hashes, message ids), and SQLite's default 2 MiB cache re-reads them from the OS. More
    // does not hold a large log's indexes anyway (a 1 GB log has ~300 MB of them) and only
    // filled slowly over hours, which the soak saw as RSS growing after the first half hour.
    let fresh = !has_table(&conn, "events").map_err(info.err())?;
    // The page size holds only when set before the first table (and before WAL mode).
    if fresh {
        conn.pragma_update(None, "page_size", layout.page_size)
            .map_err(info.err())?;
    }
    conn.pragma_update(None, "journal_mode", "WAL")
        .and_then(|_| conn.pragma_update(None, "synchronous", "FULL"))
        .and_then(|_| conn.pragma_update(None, "cache_size", -8192))
        .and_then(|_| conn.pragma_update(None, "wal_autocheckpoint", autocheckpoint))
        .map_err(info.err())?;
    // A new store gets `layout`; one that exists keeps what it has (a store of an older
    // Gannet has the indexes, and gets them again if it lost them).
    let (time_blocks, sender_rows) = if fresh {
        (!layout.time_index, !layout.sender_index)
    } else {
        let has = |t| has_table(&conn, t).map_err(info.err());
        (has("time_blocks")?, has("sender_rows")?)
    };
    // A store with time blocks or sender counts that also has the index they replace was
    // opened by an older Gannet since (its schema creates the indexes), which appended and
    // pruned rows without keeping them: build them again from the rows, once.
    let mut repair = String::new();
    if !fresh {
        let has = |t| has_table(&conn, t).map_err(info.err());
        if time_blocks && has("events_time")? {
            tracing::warn!(path = %path.display(),
                "send log: an older Gannet wrote to this log; rebuilding its time blocks from every row (once)");
            repair.push_str(&format!(
                "DELETE FROM time_blocks; INSERT INTO time_blocks (block, min_us, max_us) \
                 SELECT seq / {BLOCK_ROWS}, MIN(time_us), MAX(time_us) FROM events GROUP BY seq / {BLOCK_ROWS}; \
                 DROP INDEX events_time;"
            ));
        }
        if sender_rows && has("events_sender")? {
            tracing::warn!(path = %path.display(),
                "send log: an older Gannet wrote to this log; recounting its rows per sender (once)");
            repair.push_str(
                "DELETE FROM sender_rows; INSERT INTO sender_rows (hash, n) \
                 SELECT sender_hash, COUNT(*) FROM events WHERE sender_hash IS NOT NULL GROUP BY sender_hash; \
                 DROP INDEX events_sender;",
            );
        }
    }
    let ddl = format!(
        "BEGIN IMMEDIATE; {SCHEMA} {} {} {repair} COMMIT;",
        if time_blocks { TIME_BLOCKS } else { TIME_INDEX },
        if sender_rows {
            SENDER_ROWS
        } else {
            SENDER_INDEX
        },
    );
    if let Err(e) = conn.execute_batch(&ddl) {
        let _ = conn.execute_batch("ROLLBACK");
        return Err(info.err()(e));
    }
    let fp = info.key.fingerprint();
    let stored: Option<Vec<u8>> = conn
        .query_row("SELECT v FROM meta WHERE k = 'key_check'", [], |r| r.get(0))
        .optional()
        .map_err(info.err())?;
    match stored {
        Some(v) if v != fp => {
            return Err(StoreError::WrongKey {
                path: path.to_path_buf(),
                key_file: key_file.to_path_buf(),
            });
        }
        Some(_) => {}
        None => {
            conn.execute(
                "INSERT INTO meta (k, v) VALUES ('key_check', ?1)",
                params![fp.to_vec()],
            )
            .map_err(info.err())?;
        }
    }
    let head: Option<Vec<u8>> = conn
        .query_row(
            "SELECT hash FROM events ORDER BY seq DESC LIMIT 1",
            [],
            |r| r.get(0),
        )
        .optional()
        .map_err(info.err())?;
    let head = head
        .and_then(|h| <[u8; 32]>::try_from(h.as_slice()).ok())
        .unwrap_or([0u8; 32]);
    Ok(Writer {
        info,
        conn,
        head,
        keys: HashMap::new(),
        hashes: HashMap::new(),
        variants: HashMap::new(),
        dsns: std::collections::HashSet::new(),
        checkpoints: None,
        data_format: DataFormat::Kind,
        time_blocks,
        sender_rows,
    })
}

/// The fields of one stored row, in chain order.
struct Row<'a> {
    id: &'a str,
    time_us: i64,
    kind: &'a str,
    queue_id: &'a str,
    message_id: &'a str,
    tenant: &'a str,
    campaign: &'a str,
    class: &'a str,
    pool: &'a str,
    attempt: i64,
    variant: &'a str,
    site: &'a str,
    category: &'a str,
    rcpt_hash: Option<&'a [u8]>,
    sender_hash: Option<&'a [u8]>,
    rcpt: Option<&'a [u8]>,
    sender: Option<&'a [u8]>,
    data_key: Option<&'a [u8]>,
    data: &'a [u8],
}

/// SHA-256 over the previous row's hash and every stored column (length-prefixed, so no two
/// rows encode alike). Computed over what is stored, so crypto-shredding leaves it intact.
fn chain_hash(prev: &[u8], r: &Row<'_>) -> [u8; 32] {
    let mut h = Sha256::new();
    h.update(prev);
    let mut field = |b: Option<&[u8]>| match b {
        None => h.update(u32::MAX.to_be_bytes()),
        Some(b) => {
            h.update((b.len() as u32).to_be_bytes());
            h.update(b);
        }
    };
    field(Some(r.id.as_bytes()));
    field(Some(&r.time_us.to_be_bytes()));
    field(Some(r.kind.as_bytes()));
    field(Some(r.queue_id.as_bytes()));
    field(Some(r.message_id.as_bytes()));
    field(Some(r.tenant.as_bytes()));
    field(Some(r.campaign.as_bytes()));
    field(Some(r.class.as_bytes()));
    field(Some(r.pool.as_bytes()));
    field(Some(&r.attempt.to_be_bytes()));
    field(Some(r.variant.as_bytes()));
    field(Some(r.site.as_bytes()));
    field(Some(r.category.as_bytes()));
    field(r.rcpt_hash);
    field(r.sender_hash);
    field(r.rcpt);
    field(r.sender);
    field(r.data_key);
    field(Some(r.data));
    h.finalize().into()
}

/// What a row's `data` column holds (before sealing). Both read alike: a row's JSON is its
/// columns with the `data` object's fields laid over them ([`render_row`]), and the hash
/// chain covers whichever bytes were stored.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DataFormat {
    /// The whole event as `Event` serialises it, recipient and sender left empty: every row
    /// written before 2026-12-05 10:00 UTC. Written now only by tests and benches
    /// ([`Writer::write_data_as`]) to show such logs still read and verify.
    Event,
    /// The kind's JSON only (`{"type": ..., and that kind's facts}`): the id, time, queue and
    /// message ids, tenant, campaign, class, pool and attempt are in their own columns, and
    /// repeating them here made each row ~150 bytes larger (more bytes to seal, hash, insert,
    /// write to the WAL and checkpoint, per event) for nothing.
    Kind,
}

/// An event as `Event` serialises it, with the recipient and sender left empty (they are
/// sealed in their own columns): [`DataFormat::Event`], written from a borrow. Same fields
/// in the same order as `Event`.
#[derive(serde::Serialize)]
struct Unaddressed<'a> {
    id: &'a str,
    time_us: u64,
    queue_id: &'a str,
    message_id: &'a str,
    recipient: &'static str,
    sender: &'static str,
    tenant: &'a str,
    campaign: &'a str,
    class: &'a str,
    pool: &'a str,
    attempt: u32,
    #[serde(flatten)]
    kind: &'a EventKind,
}

/// The `data` column's JSON of `ev` in `format` (before sealing).
pub(super) fn data_json(ev: &Event, format: DataFormat) -> Vec<u8> {
    match format {
        DataFormat::Event => serde_json::to_vec(&Unaddressed::of(ev)),
        DataFormat::Kind => serde_json::to_vec(&ev.kind),
    }
    .unwrap_or_default()
}

impl<'a> Unaddressed<'a> {
    fn of(ev: &'a Event) -> Self {
        Unaddressed {
            id: &ev.id,
            time_us: ev.time_us,
            queue_id: &ev.queue_id,
            message_id: &ev.message_id,
            recipient: "",
            sender: "",
            tenant: &ev.tenant,
            campaign: &ev.campaign,
            class: &ev.class,
            pool: &ev.pool,
            attempt: ev.attempt,
            kind: &ev.kind,
        }
    }
}

/// The clear, non-personal facts kept in columns for indexes and statistics.
fn site_and_category(kind: &EventKind) -> (&str, &str) {
    match kind {
        EventKind::Delivered { site, .. } => (site, ""),
        EventKind::Deferred { site, category, .. } | EventKind::Bounced { site, category, .. } => {
            (site, category)
        }
        EventKind::Expired { category, .. } => ("", category),
        EventKind::Backoff { site, .. } => (site, ""),
        _ => ("", ""),
    }
}

impl Writer {
    pub fn info(&self) -> &StoreInfo {
        &self.info
    }

    /// Write new rows' `data` in `format`: tests and benches write [`DataFormat::Event`] to
    /// show logs written before [`DataFormat::Kind`] still read and verify, and what the
    /// change saved.
    #[doc(hidden)]
    pub fn write_data_as(&mut self, format: DataFormat) {
        self.data_format = format;
    }

    /// Sign the head of the hash chain with `key` at the first commit after each `interval`
    /// (a row of `checkpoints`: seq, time, hash, Ed25519 signature). A rewrite of the chain
    /// (every hash recomputed after a change) then no longer matches a signed checkpoint.
    /// The store remembers the public key of the first signer; another key is refused.
    pub fn sign_checkpoints(
        &mut self,
        key: CheckpointKey,
        key_file: &Path,
        interval: std::time::Duration,
    ) -> Result<(), StoreError> {
        let public = key.public();
        let stored: Option<Vec<u8>> = self
            .conn
            .query_row(
                "SELECT v FROM meta WHERE k = 'checkpoint_public_key'",
                [],
                |r| r.get(0),
            )
            .optional()
            .map_err(self.info.err())?;
        match stored {
            Some(v) if v != public => {
                return Err(StoreError::WrongCheckpointKey {
                    path: self.info.path.clone(),
                    key_file: key_file.to_path_buf(),
                    stored: hex::encode(v),
                });
            }
            Some(_) => {}
            None => {
                self.conn
                    .execute(
                        "INSERT INTO meta (k, v) VALUES ('checkpoint_public_key', ?1)",
                        params![public.to_vec()],
                    )
                    .map_err(self.info.err())?;
            }
        }
        self.checkpoints = Some(Checkpoints {
            key,
            interval,
            last: None,
        });
        Ok(())
    }

    /// The time of the newest event in the store (the last one appended), None when it holds
    /// none: at start-up, what a replay of possibly lost events starts from.
    pub fn last_event_time_us(&self) -> Result<Option<u64>, StoreError> {
        self.conn
            .query_row(
                "SELECT time_us FROM events ORDER BY seq DESC LIMIT 1",
                [],
                |r| r.get::<_, i64>(0),
            )
            .optional()
            .map(|t| t.map(|t| t.max(0) as u64))
            .map_err(self.info.err())
    }

    /// Copy the whole WAL into the database and empty it (benches: a round's cost then
    /// includes the checkpoint work its commits left behind, whatever the WAL's size).
    #[doc(hidden)]
    pub fn checkpoint_wal(&self) -> Result<(), StoreError> {
        self.conn
            .query_row("PRAGMA wal_checkpoint(TRUNCATE)", [], |_| Ok(()))
            .map_err(self.info.err())
    }

    /// The public key the store's checkpoints were first signed with, if any.
    pub fn checkpoint_public_key(&self) -> Result<Option<Vec<u8>>, StoreError> {
        self.conn
            .query_row(
                "SELECT v FROM meta WHERE k = 'checkpoint_public_key'",
                [],
                |r| r.get(0),
            )
            .optional()
            .map_err(self.info.err())
    }

    /// Inside the append's transaction: sign the new head when a checkpoint is due.
    fn checkpoint_if_due(&mut self) -> rusqlite::Result<bool> {
        let Some(cp) = &self.checkpoints else {
            return Ok(false);
        };
        if cp.last.is_some_and(|t| t.elapsed() < cp.interval) {
            return Ok(false);
        }
        let seq: i64 = self
            .conn
            .prepare_cached("SELECT COALESCE(MAX(seq), 0) FROM events")?
            .query_row([], |r| r.get(0))?;
        let time_us = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_micros() as i64)
            .unwrap_or(0);
        let signature = cp.key.sign(seq, time_us, &self.head);
        self.conn
            .prepare_cached(
                "INSERT OR REPLACE INTO checkpoints (seq, time_us, hash, signature) VALUES (?1, ?2, ?3, ?4)",
            )?
            .execute(params![seq, time_us, &self.head[..], signature])?;
        Ok(true)
    }

    fn person(&mut self, hash: &[u8; 32], now_us: i64) -> rusqlite::Result<Arc<SealKey>> {
        if let Some(k) = self.keys.get(hash) {
            return Ok(k.clone());
        }
        let erased: Option<i64> = self
            .conn
            .prepare_cached("SELECT time_us FROM erasures WHERE hash = ?1")?
            .query_row(params![hash.to_vec()], |r| r.get(0))
            .optional()?;
        if erased.is_some() {
            // An erased person's later events are sealed under a key nobody keeps.
            let key = Arc::new(self.info.key.person_key(&rand::random::<[u8; 32]>()));
            self.keys.insert(*hash, key.clone());
            return Ok(key);
        }
        let salt: [u8; 32] = rand::random();
        self.conn
            .prepare_cached(
                "INSERT OR IGNORE INTO subjects (hash, salt, created_us) VALUES (?1, ?2, ?3)",
            )?
            .execute(params![hash.to_vec(), salt.to_vec(), now_us])?;
        let salt: Vec<u8> = self
            .conn
            .prepare_cached("SELECT salt FROM subjects WHERE hash = ?1")?
            .query_row(params![hash.to_vec()], |r| r.get(0))?;
        let key = Arc::new(self.info.key.person_key(&salt));
        if self.keys.len() >= PERSON_KEYS_CACHED {
            self.keys.clear();
        }
        self.keys.insert(*hash, key.clone());
        Ok(key)
    }

    /// [`MasterKey::address_hash`] of `address`, from [`Writer::hashes`] when it is there.
    fn address_hash(&mut self, address: &str) -> [u8; 32] {
        if let Some(h) = self.hashes.get(address) {
            return *h;
        }
        let h = self.info.key.address_hash(address);
        if self.hashes.len() >= ADDRESS_HASHES_CACHED {
            self.hashes.clear();
        }
        self.hashes.insert(address.to_string(), h);
        h
    }

    fn variant_of(&mut self, queue_id: &str) -> rusqlite::Result<String> {
        if queue_id.is_empty() {
            return Ok(String::new());
        }
        if let Some(v) = self.variants.get(queue_id) {
            return Ok(v.clone());
        }
        let v: Option<String> = self
            .conn
            .prepare_cached(
                "SELECT variant FROM events WHERE queue_id = ?1 AND type = 'received' LIMIT 1",
            )?
            .query_row(params![queue_id], |r| r.get(0))
            .optional()?;
        Ok(v.unwrap_or_default())
    }

    /// Append `events` in one transaction (one fsync). On error nothing of the batch is kept.
    pub fn append<'a>(
        &mut self,
        events: impl IntoIterator<Item = &'a Event>,
    ) -> Result<usize, StoreError> {
        self.append_through(events, None)
    }

    /// Where the ingester has read the send log's journal up to (`(byte, event)`, stored by
    /// [`Writer::append_through`]); None before the first ingest.
    pub fn journal_pos(&self) -> Result<Option<(u64, u64)>, StoreError> {
        let v: Option<Vec<u8>> = self
            .conn
            .query_row("SELECT v FROM meta WHERE k = 'journal_pos'", [], |r| {
                r.get(0)
            })
            .optional()
            .map_err(self.info.err())?;
        Ok(v.and_then(|v| {
            let text = String::from_utf8(v).ok()?;
            let (b, e) = text.split_once(' ')?;
            Some((b.parse().ok()?, e.parse().ok()?))
        }))
    }

    /// Append `events` and, when given, record the journal position they were read up to,
    /// in one transaction: after a crash the log holds both or neither, so the ingester
    /// goes on from the stored position without losing or repeating a row.
    pub fn append_through<'a>(
        &mut self,
        events: impl IntoIterator<Item = &'a Event>,
        journal: Option<(u64, u64)>,
    ) -> Result<usize, StoreError> {
        let path = self.info.path.clone();
        let err = |source| StoreError::Sqlite {
            path: path.clone(),
            source,
        };
        self.conn.execute_batch("BEGIN IMMEDIATE").map_err(err)?;
        let r = self
            .append_in_tx(events)
            .and_then(|n| {
                if let Some((byte, event)) = journal {
                    self.conn
                        .prepare_cached(
                            "INSERT INTO meta (k, v) VALUES ('journal_pos', ?1) \
                             ON CONFLICT (k) DO UPDATE SET v = excluded.v",
                        )?
                        .execute(params![format!("{byte} {event}").into_bytes()])?;
                }
                Ok(n)
            })
            .and_then(|n| Ok((n, n > 0 && self.checkpoint_if_due()?)));
        match r {
            Ok((n, signed)) => match self.conn.execute_batch("COMMIT") {
                Ok(()) => {
                    if signed && let Some(cp) = &mut self.checkpoints {
                        cp.last = Some(std::time::Instant::now());
                    }
                    Ok(n)
                }
                Err(e) => {
                    let _ = self.conn.execute_batch("ROLLBACK");
                    self.reload_head();
                    Err(err(e))
                }
            },
            Err(e) => {
                let _ = self.conn.execute_batch("ROLLBACK");
                self.reload_head();
                Err(err(e))
            }
        }
    }

    fn reload_head(&mut self) {
        let head: Option<Vec<u8>> = self
            .conn
            .query_row(
                "SELECT hash FROM events ORDER BY seq DESC LIMIT 1",
                [],
                |r| r.get(0),
            )
            .optional()
            .ok()
            .flatten();
        self.head = head
            .and_then(|h| <[u8; 32]>::try_from(h.as_slice()).ok())
            .unwrap_or([0u8; 32]);
        self.variants.clear();
    }

    /// Whether the event `id` about message `queue_id` is stored already.
    fn holds(&self, queue_id: &str, id: &str) -> rusqlite::Result<bool> {
        self.conn
            .prepare_cached("SELECT 1 FROM events WHERE queue_id = ?1 AND id = ?2 LIMIT 1")?
            .query_row(params![queue_id, id], |_| Ok(()))
            .optional()
            .map(|r| r.is_some())
    }

    fn append_in_tx<'a>(
        &mut self,
        events: impl IntoIterator<Item = &'a Event>,
    ) -> rusqlite::Result<usize> {
        let mut counts: HashMap<(String, String, String, &'static str, String), i64> =
            HashMap::new();
        // Per block of this batch: its earliest and latest time (see TIME_BLOCKS).
        let mut blocks: Vec<(i64, i64, i64)> = Vec::new();
        // Rows per sender in this batch (see SENDER_ROWS).
        let mut senders: HashMap<[u8; 32], i64> = HashMap::new();
        let mut n = 0;
        for ev in events {
            if matches!(ev.kind, EventKind::Received { replayed: true, .. })
                && self.holds(&ev.queue_id, &ev.id)?
            {
                continue;
            }
            let now = ev.time_us as i64;
            let rcpt_hash = (!ev.recipient.is_empty()).then(|| self.address_hash(&ev.recipient));
            let sender_hash = (!ev.sender.is_empty()).then(|| self.address_hash(&ev.sender));
            let rcpt_key = match &rcpt_hash {
                Some(h) => Some(self.person(h, now)?),
                None => None,
            };
            let sender_key = match &sender_hash {
                Some(h) => Some(self.person(h, now)?),
                None => None,
            };
            let aad = ev.id.as_bytes();
            let rcpt = rcpt_key
                .as_ref()
                .map(|k| k.seal(aad, ev.recipient.as_bytes()));
            let sender = sender_key
                .as_ref()
                .map(|k| k.seal(aad, ev.sender.as_bytes()));
            // Everything else about the event (replies, IPs, operator filters) is sealed under
            // the recipient's key, or the sender's when there is no recipient.
            let json = data_json(ev, self.data_format);
            let (data_key, data) = match (&rcpt_hash, &rcpt_key, &sender_hash, &sender_key) {
                (Some(h), Some(k), _, _) | (None, None, Some(h), Some(k)) => {
                    (Some(h.to_vec()), k.seal(aad, &json))
                }
                _ => (None, json),
            };
            if let EventKind::Received { listener, .. } = &ev.kind
                && listener == "dsn"
            {
                if self.dsns.len() > 100_000 {
                    self.dsns.clear();
                }
                self.dsns.insert(ev.queue_id.clone());
            }
            let variant = match &ev.kind {
                EventKind::Received { variant, .. } => {
                    if self.variants.len() >= VARIANTS_CACHED {
                        self.variants.clear();
                    }
                    self.variants.insert(ev.queue_id.clone(), variant.clone());
                    variant.clone()
                }
                _ => self.variant_of(&ev.queue_id)?,
            };
            let (site, category) = site_and_category(&ev.kind);
            let row = Row {
                id: &ev.id,
                time_us: now,
                kind: ev.type_name(),
                queue_id: &ev.queue_id,
                message_id: &ev.message_id,
                tenant: &ev.tenant,
                campaign: &ev.campaign,
                class: &ev.class,
                pool: &ev.pool,
                attempt: ev.attempt as i64,
                variant: &variant,
                site,
                category,
                rcpt_hash: rcpt_hash.as_ref().map(|h| &h[..]),
                sender_hash: sender_hash.as_ref().map(|h| &h[..]),
                rcpt: rcpt.as_deref(),
                sender: sender.as_deref(),
                data_key: data_key.as_deref(),
                data: &data,
            };
            let hash = chain_hash(&self.head, &row);
            self.conn
                .prepare_cached(
                    "INSERT INTO events (id, time_us, type, queue_id, message_id, tenant, campaign, \
                     class, pool, attempt, variant, site, category, rcpt_hash, sender_hash, rcpt, \
                     sender, data_key, data, prev, hash) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, \
                     ?9, ?10, ?11, ?12, ?13, ?14, ?15, ?16, ?17, ?18, ?19, ?20, ?21)",
                )?
                .execute(params![
                    row.id,
                    row.time_us,
                    row.kind,
                    row.queue_id,
                    row.message_id,
                    row.tenant,
                    row.campaign,
                    row.class,
                    row.pool,
                    row.attempt,
                    row.variant,
                    row.site,
                    row.category,
                    row.rcpt_hash,
                    row.sender_hash,
                    row.rcpt,
                    row.sender,
                    row.data_key,
                    row.data,
                    &self.head[..],
                    &hash[..],
                ])?;
            self.head = hash;
            if self.time_blocks {
                let block = self.conn.last_insert_rowid() / BLOCK_ROWS;
                match blocks.last_mut() {
                    Some((b, lo, hi)) if *b == block => {
                        *lo = (*lo).min(now);
                        *hi = (*hi).max(now);
                    }
                    _ => blocks.push((block, now, now)),
                }
            }
            if self.sender_rows
                && let Some(h) = sender_hash
            {
                *senders.entry(h).or_default() += 1;
            }
            if !ev.campaign.is_empty() && !self.dsns.contains(&ev.queue_id) {
                *counts
                    .entry((
                        ev.campaign.clone(),
                        variant.clone(),
                        site.to_string(),
                        ev.type_name(),
                        category.to_string(),
                    ))
                    .or_default() += match &ev.kind {
                    EventKind::Received { recipients, .. } => *recipients as i64,
                    _ => 1,
                };
            }
            n += 1;
        }
        for ((campaign, variant, site, kind, category), n) in counts {
            self.conn
                .prepare_cached(
                    "INSERT INTO campaign_counts (campaign, variant, site, type, category, n) \
                     VALUES (?1, ?2, ?3, ?4, ?5, ?6) ON CONFLICT (campaign, variant, site, type, \
                     category) DO UPDATE SET n = n + excluded.n",
                )?
                .execute(params![campaign, variant, site, kind, category, n])?;
        }
        for (block, lo, hi) in blocks {
            self.conn
                .prepare_cached(
                    "INSERT INTO time_blocks (block, min_us, max_us) VALUES (?1, ?2, ?3) \
                     ON CONFLICT (block) DO UPDATE SET min_us = MIN(min_us, excluded.min_us), \
                     max_us = MAX(max_us, excluded.max_us)",
                )?
                .execute(params![block, lo, hi])?;
        }
        for (hash, n) in senders {
            self.conn
                .prepare_cached(
                    "INSERT INTO sender_rows (hash, n) VALUES (?1, ?2) \
                     ON CONFLICT (hash) DO UPDATE SET n = n + excluded.n",
                )?
                .execute(params![&hash[..], n])?;
        }
        Ok(n)
    }

    /// Crypto-shredding: destroy the key of the person with address hash `hash` (their salt
    /// is deleted; `secure_delete` zeroes it in the page and the WAL is checkpointed and
    /// truncated), and remember the erasure by hash. Their rows stay, countable and chained,
    /// but can no longer be read. Returns how many rows name them.
    pub fn erase(&mut self, hash: &[u8; 32], now_us: i64) -> Result<u64, StoreError> {
        let path = self.info.path.clone();
        self.keys.remove(hash);
        self.hashes.retain(|_, h| h != hash);
        let as_sender = if self.sender_rows {
            "(SELECT COALESCE(MAX(n), 0) FROM sender_rows WHERE hash = ?1)"
        } else {
            "(SELECT COUNT(*) FROM events WHERE sender_hash = ?1)"
        };
        let run = || -> rusqlite::Result<u64> {
            let tx = self.conn.unchecked_transaction()?;
            let rows: i64 = tx.query_row(
                &format!("SELECT (SELECT COUNT(*) FROM events WHERE rcpt_hash = ?1) + {as_sender}"),
                params![hash.to_vec()],
                |r| r.get(0),
            )?;
            tx.execute(
                "DELETE FROM subjects WHERE hash = ?1",
                params![hash.to_vec()],
            )?;
            tx.execute(
                "INSERT INTO erasures (hash, time_us, rows) VALUES (?1, ?2, ?3) \
                 ON CONFLICT (hash) DO UPDATE SET time_us = excluded.time_us, rows = excluded.rows",
                params![hash.to_vec(), now_us, rows],
            )?;
            tx.commit()?;
            self.conn
                .query_row("PRAGMA wal_checkpoint(TRUNCATE)", [], |_| Ok(()))?;
            Ok(rows as u64)
        };
        run().map_err(|source| StoreError::Sqlite { path, source })
    }

    /// Delete every event before `cutoff_us` (a day boundary). Returns how many went. The hash
    /// of the last deleted row is kept (`meta.pruned_head`) so the chain still verifies.
    pub fn prune_before(&mut self, cutoff_us: i64) -> Result<usize, StoreError> {
        let path = self.info.path.clone();
        let (time_blocks, sender_rows) = (self.time_blocks, self.sender_rows);
        let run = || -> rusqlite::Result<usize> {
            let tx = self.conn.unchecked_transaction()?;
            // Without an index on time, only the blocks whose times reach before the cutoff
            // are read.
            let within = if time_blocks {
                format!(" AND {}", block_bound("until", 1))
            } else {
                String::new()
            };
            let last: Option<(i64, Vec<u8>)> = tx
                .query_row(
                    &format!(
                        "SELECT seq, hash FROM events WHERE seq = (SELECT MAX(seq) FROM events WHERE time_us < ?1{within})"
                    ),
                    params![cutoff_us],
                    |r| Ok((r.get(0)?, r.get(1)?)),
                )
                .optional()?;
            let Some((last, last_hash)) = last else {
                return Ok(0);
            };
            tx.execute(
                "INSERT INTO meta (k, v) VALUES ('pruned_head', ?1) ON CONFLICT (k) DO UPDATE SET v = excluded.v",
                params![last_hash],
            )?;
            if sender_rows {
                let gone: Vec<(Vec<u8>, i64)> = tx
                    .prepare(
                        "SELECT sender_hash, COUNT(*) FROM events WHERE seq <= ?1 \
                         AND sender_hash IS NOT NULL GROUP BY sender_hash",
                    )?
                    .query_map(params![last], |r| Ok((r.get(0)?, r.get(1)?)))?
                    .collect::<rusqlite::Result<_>>()?;
                for (hash, n) in gone {
                    tx.execute(
                        "UPDATE sender_rows SET n = n - ?2 WHERE hash = ?1",
                        params![hash, n],
                    )?;
                }
                tx.execute("DELETE FROM sender_rows WHERE n <= 0", [])?;
            }
            let n = tx.execute("DELETE FROM events WHERE seq <= ?1", params![last])?;
            if time_blocks {
                // Blocks all of whose rows went; a block partly pruned keeps its (older)
                // bounds, which only widen the range a time filter reads.
                tx.execute(
                    "DELETE FROM time_blocks WHERE block < (?1 + 1) / ?2",
                    params![last, BLOCK_ROWS],
                )?;
            }
            tx.commit()?;
            Ok(n)
        };
        run().map_err(|source| StoreError::Sqlite { path, source })
    }
}

/// A read-only connection for one query (WAL: readers never block the writer).
pub struct Reader {
    pub(super) info: StoreInfo,
    pub(super) conn: Connection,
    /// The store keeps [`TIME_BLOCKS`] (else it has [`TIME_INDEX`]).
    time_blocks: bool,
    /// Person keys looked up by this reader, by address hash (None: erased).
    pub(super) salts: HashMap<Vec<u8>, Option<Arc<SealKey>>>,
}

/// The key of the person with address hash `hash`, from `cache` or derived from their salt
/// (None when they were erased). A function of the reader's fields rather than a method, so
/// a query can look keys up while its statement still borrows the connection.
pub(super) fn person_key(
    conn: &Connection,
    cache: &mut HashMap<Vec<u8>, Option<Arc<SealKey>>>,
    master: &MasterKey,
    hash: &[u8],
) -> rusqlite::Result<Option<Arc<SealKey>>> {
    if let Some(k) = cache.get(hash) {
        return Ok(k.clone());
    }
    let salt: Option<Vec<u8>> = conn
        .prepare_cached("SELECT salt FROM subjects WHERE hash = ?1")?
        .query_row(params![hash], |r| r.get(0))
        .optional()?;
    let key = salt.map(|s| Arc::new(master.person_key(&s)));
    cache.insert(hash.to_vec(), key.clone());
    Ok(key)
}

impl Reader {
    pub fn open(info: &StoreInfo) -> Result<Reader, StoreError> {
        let conn = open_conn(
            &info.path,
            OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_NO_MUTEX,
        )
        .map_err(info.err())?;
        let time_blocks = has_table(&conn, "time_blocks").map_err(info.err())?;
        Ok(Reader {
            info: info.clone(),
            conn,
            time_blocks,
            salts: HashMap::new(),
        })
    }

    pub fn address_hash(&self, address: &str) -> [u8; 32] {
        self.info.key.address_hash(address)
    }

    /// When the person with this address was erased, if they were.
    pub fn erased_at(&self, address: &str) -> Result<Option<i64>, StoreError> {
        self.conn
            .query_row(
                "SELECT time_us FROM erasures WHERE hash = ?1",
                params![self.address_hash(address).to_vec()],
                |r| r.get(0),
            )
            .optional()
            .map_err(self.info.err())
    }

    /// The highest `seq` stored (0 when empty).
    pub fn last_seq(&self) -> Result<u64, StoreError> {
        self.conn
            .query_row("SELECT COALESCE(MAX(seq), 0) FROM events", [], |r| {
                r.get::<_, i64>(0)
            })
            .map(|n| n as u64)
            .map_err(self.info.err())
    }

    /// Events matching `f`, after `f.after`, at most `f.limit`, in log order.
    pub fn events(&mut self, f: &EventFilter) -> Result<Vec<Value>, StoreError> {
        let info = self.info.clone();
        self.events_inner(f).map_err(info.err())
    }

    /// The SQL and arguments that select the rows of `f`, in log order.
    pub(super) fn select(&self, f: &EventFilter) -> (String, Vec<rusqlite::types::Value>) {
        let mut sql = format!("SELECT {EVENT_COLUMNS} FROM events WHERE seq > ?1");
        let mut args: Vec<rusqlite::types::Value> = vec![(f.after as i64).into()];
        fn add(
            sql: &mut String,
            args: &mut Vec<rusqlite::types::Value>,
            cond: &str,
            v: rusqlite::types::Value,
        ) {
            args.push(v);
            sql.push_str(&format!(" AND {cond} ?{}", args.len()));
        }
        if let Some(r) = &f.recipient {
            add(
                &mut sql,
                &mut args,
                "rcpt_hash =",
                self.info.key.address_hash(r).to_vec().into(),
            );
        }
        if let Some(m) = &f.message_id {
            let m = m.trim_matches(['<', '>']).to_string();
            args.push(m.into());
            let n = args.len();
            sql.push_str(&format!(" AND (message_id = ?{n} OR queue_id = ?{n})"));
        }
        if let Some(v) = &f.queue_id {
            add(&mut sql, &mut args, "queue_id =", v.clone().into());
        }
        // `<> ''` repeats the partial indexes' condition word for word: SQLite uses a partial
        // index only when the query's WHERE says what the index's does (a log written before
        // the indexes were partial has full ones, which serve the same query).
        if let Some(v) = &f.campaign {
            add(&mut sql, &mut args, "campaign =", v.clone().into());
            if !v.is_empty() {
                sql.push_str(" AND campaign <> ''");
            }
        }
        if let Some(v) = &f.tenant {
            add(&mut sql, &mut args, "tenant =", v.clone().into());
            if !v.is_empty() {
                sql.push_str(" AND tenant <> ''");
            }
        }
        if let Some(v) = &f.kind {
            add(&mut sql, &mut args, "type =", v.clone().into());
        }
        // In a store with time blocks, the rows' times are compared only inside the `seq`
        // range of the blocks that can hold a match.
        if let Some(v) = f.since_us {
            add(&mut sql, &mut args, "time_us >=", v.into());
            if self.time_blocks {
                sql.push_str(&format!(" AND {}", block_bound("since", args.len())));
            }
        }
        if let Some(v) = f.until_us {
            add(&mut sql, &mut args, "time_us <", v.into());
            if self.time_blocks {
                sql.push_str(&format!(" AND {}", block_bound("until", args.len())));
            }
        }
        if let Some(v) = f.through {
            add(&mut sql, &mut args, "seq <=", (v as i64).into());
        }
        args.push((f.limit as i64).into());
        sql.push_str(&format!(" ORDER BY seq LIMIT ?{}", args.len()));
        (sql, args)
    }

    fn events_inner(&mut self, f: &EventFilter) -> rusqlite::Result<Vec<Value>> {
        let (sql, args) = self.select(f);
        let mut stmt = self.conn.prepare_cached(&sql)?;
        let raw: Vec<RawRow> = stmt
            .query_map(rusqlite::params_from_iter(args), RawRow::from_row)?
            .collect::<rusqlite::Result<_>>()?;
        drop(stmt);
        let mut out = Vec::with_capacity(raw.len());
        for r in raw {
            out.push(self.render(r)?);
        }
        Ok(out)
    }

    pub(super) fn render(&mut self, r: RawRow) -> rusqlite::Result<Value> {
        render_row(&self.conn, &mut self.salts, &self.info.key, r)
    }

    /// Counters of one campaign, by variant and provider (site).
    pub fn campaign_counts(&mut self, campaign: &str) -> Result<Vec<CountRow>, StoreError> {
        let info = self.info.clone();
        let run = || -> rusqlite::Result<Vec<CountRow>> {
            let mut stmt = self.conn.prepare_cached(
                "SELECT variant, site, type, category, n FROM campaign_counts WHERE campaign = ?1",
            )?;
            stmt.query_map(params![campaign], |r| {
                Ok(CountRow {
                    variant: r.get(0)?,
                    site: r.get(1)?,
                    kind: r.get(2)?,
                    category: r.get(3)?,
                    n: r.get(4)?,
                })
            })?
            .collect()
        };
        run().map_err(info.err())
    }
}

/// One stored row as the event's JSON (plus `seq`): its clear columns, with the fields of
/// its `data` object laid over them (all of the event but the addresses in a row of
/// [`DataFormat::Event`], the kind's facts in one of [`DataFormat::Kind`]), and the opened
/// addresses. A row whose person was erased keeps only its clear columns and says
/// `"erased": true`. Keys come from `cache` (see [`person_key`]).
pub(super) fn render_row(
    conn: &Connection,
    cache: &mut HashMap<Vec<u8>, Option<Arc<SealKey>>>,
    master: &MasterKey,
    r: RawRow,
) -> rusqlite::Result<Value> {
    let mut open_with = |hash: &Option<Vec<u8>>,
                         aad: &[u8],
                         sealed: &Option<Vec<u8>>|
     -> rusqlite::Result<Option<Vec<u8>>> {
        let (Some(h), Some(s)) = (hash, sealed) else {
            return Ok(None);
        };
        Ok(person_key(conn, cache, master, h)?.and_then(|k| k.open(aad, s)))
    };
    let aad = r.id.clone().into_bytes();
    let rcpt = open_with(&r.rcpt_hash, &aad, &r.rcpt)?;
    let sender = open_with(&r.sender_hash, &aad, &r.sender)?;
    let data = match &r.data_key {
        None => Some(r.data),
        Some(_) => open_with(&r.data_key, &aad, &Some(r.data))?,
    };
    let parsed: Option<Map<String, Value>> = data
        .and_then(|d| serde_json::from_slice::<Value>(&d).ok())
        .and_then(|v| match v {
            Value::Object(m) => Some(m),
            _ => None,
        });
    let erased = parsed.is_none()
        || (r.rcpt_hash.is_some() && rcpt.is_none())
        || (r.sender_hash.is_some() && sender.is_none());
    let mut m = Map::new();
    m.insert("seq".into(), r.seq.into());
    m.insert("id".into(), r.id.into());
    m.insert("time_us".into(), r.time_us.into());
    m.insert("type".into(), r.kind.into());
    m.insert("queue_id".into(), r.queue_id.into());
    m.insert("message_id".into(), r.message_id.into());
    m.insert("tenant".into(), r.tenant.into());
    m.insert("campaign".into(), r.campaign.into());
    m.insert("class".into(), r.class.into());
    m.insert("pool".into(), r.pool.into());
    m.insert("attempt".into(), r.attempt.into());
    match parsed {
        Some(fields) => m.extend(fields),
        None => {
            if !r.site.is_empty() {
                m.insert("site".into(), r.site.into());
            }
            if !r.category.is_empty() {
                m.insert("category".into(), r.category.into());
            }
        }
    }
    let text = |b: Option<Vec<u8>>| {
        b.map(|b| String::from_utf8_lossy(&b).into_owned())
            .unwrap_or_default()
    };
    m.insert("recipient".into(), text(rcpt).into());
    m.insert("sender".into(), text(sender).into());
    if !r.variant.is_empty() {
        m.insert("variant".into(), r.variant.into());
    }
    if erased {
        m.insert("erased".into(), true.into());
    }
    Ok(Value::Object(m))
}

/// What `gannet logs verify` found.
#[derive(Debug, Clone, PartialEq)]
pub struct VerifyReport {
    /// Rows checked.
    pub rows: u64,
    /// Signed checkpoints whose signature and hash were checked.
    pub checkpoints: u64,
    /// The first row whose stored bytes do not match the chain, and why.
    pub first_broken: Option<Broken>,
}

#[derive(Debug, Clone, PartialEq)]
pub struct Broken {
    pub seq: i64,
    pub id: String,
    pub reason: String,
}

impl Reader {
    /// Walk the whole log in order, recomputing every row's hash from its stored bytes and the
    /// previous row's hash, and checking every signed checkpoint against `checkpoint_public`
    /// (its Ed25519 signature and the hash of the row it names); stop at the first row that
    /// does not match. Without a public key, checkpoints are compared by hash only.
    pub fn verify(
        &mut self,
        checkpoint_public: Option<&[u8; 32]>,
    ) -> Result<VerifyReport, StoreError> {
        let info = self.info.clone();
        let run = || -> rusqlite::Result<VerifyReport> {
            type Cp = (i64, i64, Vec<u8>, Vec<u8>);
            let cps: Vec<Cp> = self
                .conn
                .prepare("SELECT seq, time_us, hash, signature FROM checkpoints ORDER BY seq")?
                .query_map([], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?)))?
                .collect::<rusqlite::Result<_>>()?;
            let mut cps = cps.into_iter().peekable();
            let mut checked = 0u64;
            let mut first_row: Option<i64> = None;
            let mut last_row: i64 = 0;
            let signed = |cp: &Cp| {
                checkpoint_public.is_none_or(|k| checkpoint_valid(k, cp.0, cp.1, &cp.2, &cp.3))
            };
            const FORGED: &str = "its signed checkpoint does not carry a valid signature of the checkpoint key (a forged or altered checkpoint)";
            let pruned: Option<Vec<u8>> = self
                .conn
                .query_row("SELECT v FROM meta WHERE k = 'pruned_head'", [], |r| {
                    r.get(0)
                })
                .optional()?;
            let mut expected_prev: Vec<u8> = pruned.unwrap_or_else(|| vec![0u8; 32]);
            let mut stmt = self.conn.prepare(&format!(
                "SELECT {EVENT_COLUMNS}, prev, hash FROM events ORDER BY seq"
            ))?;
            let mut rows = stmt.query([])?;
            let mut n = 0u64;
            while let Some(r) = rows.next()? {
                n += 1;
                let seq: i64 = r.get(col::SEQ)?;
                let id: String = r.get(col::ID)?;
                let text = |i: usize| -> rusqlite::Result<String> {
                    // A damaged text column may no longer be UTF-8: hash its bytes as stored.
                    match r.get_ref(i)? {
                        rusqlite::types::ValueRef::Text(t) => {
                            Ok(String::from_utf8_lossy(t).into_owned())
                        }
                        other => Ok(format!("{other:?}")),
                    }
                };
                let blob = |i: usize| -> rusqlite::Result<Option<Vec<u8>>> {
                    Ok(match r.get_ref(i)? {
                        rusqlite::types::ValueRef::Null => None,
                        rusqlite::types::ValueRef::Blob(b) | rusqlite::types::ValueRef::Text(b) => {
                            Some(b.to_vec())
                        }
                        other => Some(format!("{other:?}").into_bytes()),
                    })
                };
                let (
                    kind,
                    queue_id,
                    message_id,
                    tenant,
                    campaign,
                    class,
                    pool,
                    variant,
                    site,
                    category,
                ) = (
                    text(col::KIND)?,
                    text(col::QUEUE_ID)?,
                    text(col::MESSAGE_ID)?,
                    text(col::TENANT)?,
                    text(col::CAMPAIGN)?,
                    text(col::CLASS)?,
                    text(col::POOL)?,
                    text(col::VARIANT)?,
                    text(col::SITE)?,
                    text(col::CATEGORY)?,
                );
                let (rcpt_hash, sender_hash, rcpt, sender, data_key) = (
                    blob(col::RCPT_HASH)?,
                    blob(col::SENDER_HASH)?,
                    blob(col::RCPT)?,
                    blob(col::SENDER)?,
                    blob(col::DATA_KEY)?,
                );
                let data = blob(col::DATA)?.unwrap_or_default();
                let prev = blob(col::PREV)?.unwrap_or_default();
                let hash = blob(col::HASH)?.unwrap_or_default();
                let broken = |reason: String, checked: u64| VerifyReport {
                    rows: n,
                    checkpoints: checked,
                    first_broken: Some(Broken {
                        seq,
                        id: id.clone(),
                        reason,
                    }),
                };
                if prev != expected_prev {
                    return Ok(broken(
                        "its link to the previous record does not match (a record before it was changed, removed or inserted)".into(), checked,
                    ));
                }
                let row = Row {
                    id: &id,
                    time_us: r.get(col::TIME_US)?,
                    kind: &kind,
                    queue_id: &queue_id,
                    message_id: &message_id,
                    tenant: &tenant,
                    campaign: &campaign,
                    class: &class,
                    pool: &pool,
                    attempt: r.get(col::ATTEMPT)?,
                    variant: &variant,
                    site: &site,
                    category: &category,
                    rcpt_hash: rcpt_hash.as_deref(),
                    sender_hash: sender_hash.as_deref(),
                    rcpt: rcpt.as_deref(),
                    sender: sender.as_deref(),
                    data_key: data_key.as_deref(),
                    data: &data,
                };
                if chain_hash(&prev, &row)[..] != hash[..] {
                    return Ok(broken(
                        "its stored contents do not match its hash (the record was changed)".into(),
                        checked,
                    ));
                }
                // Checkpoints up to this row: ones before the first row kept were pruned with
                // their rows (only the signature can be checked); one between two rows names
                // a row that was removed.
                while let Some(cp) = cps.next_if(|cp| cp.0 <= seq) {
                    if !signed(&cp) {
                        return Ok(broken(FORGED.into(), checked));
                    }
                    checked += 1;
                    if cp.0 == seq {
                        if cp.2 != hash {
                            return Ok(broken(
                                "it does not match the signed checkpoint of this record (the chain was rewritten up to here: a record at or before it was changed and the hashes recomputed)".into(), checked,
                            ));
                        }
                    } else if first_row.is_some() {
                        return Ok(broken(
                            format!(
                                "a signed checkpoint names record seq {}, which is missing before this one (records were removed)",
                                cp.0
                            ),
                            checked,
                        ));
                    }
                }
                first_row.get_or_insert(seq);
                last_row = seq;
                expected_prev = hash;
            }
            if let Some(cp) = cps.next() {
                let reason = if signed(&cp) {
                    format!(
                        "the log ends at seq {last_row}, but a signed checkpoint vouches for this record (records were removed from the end)"
                    )
                } else {
                    FORGED.to_string()
                };
                return Ok(VerifyReport {
                    rows: n,
                    checkpoints: checked,
                    first_broken: Some(Broken {
                        seq: cp.0,
                        id: String::new(),
                        reason,
                    }),
                });
            }
            Ok(VerifyReport {
                rows: n,
                checkpoints: checked,
                first_broken: None,
            })
        };
        run().map_err(info.err())
    }
}

/// The columns every reader of whole event rows selects, in this order ([`col`] names their
/// places, so no reader counts positions by hand).
pub(super) const EVENT_COLUMNS: &str = "seq, id, time_us, type, queue_id, message_id, tenant, \
    campaign, class, pool, attempt, variant, site, category, rcpt_hash, sender_hash, rcpt, sender, \
    data_key, data";

/// Where each of [`EVENT_COLUMNS`] is in a selected row.
pub(super) mod col {
    pub const SEQ: usize = 0;
    pub const ID: usize = 1;
    pub const TIME_US: usize = 2;
    pub const KIND: usize = 3;
    pub const QUEUE_ID: usize = 4;
    pub const MESSAGE_ID: usize = 5;
    pub const TENANT: usize = 6;
    pub const CAMPAIGN: usize = 7;
    pub const CLASS: usize = 8;
    pub const POOL: usize = 9;
    pub const ATTEMPT: usize = 10;
    pub const VARIANT: usize = 11;
    pub const SITE: usize = 12;
    pub const CATEGORY: usize = 13;
    pub const RCPT_HASH: usize = 14;
    pub const SENDER_HASH: usize = 15;
    pub const RCPT: usize = 16;
    pub const SENDER: usize = 17;
    pub const DATA_KEY: usize = 18;
    pub const DATA: usize = 19;
    /// The chain's columns, selected after the event's by `verify`.
    pub const PREV: usize = 20;
    pub const HASH: usize = 21;
}

pub(super) struct RawRow {
    pub(super) seq: i64,
    pub(super) id: String,
    pub(super) time_us: i64,
    pub(super) kind: String,
    pub(super) queue_id: String,
    pub(super) message_id: String,
    pub(super) tenant: String,
    pub(super) campaign: String,
    pub(super) class: String,
    pub(super) pool: String,
    pub(super) attempt: i64,
    pub(super) variant: String,
    pub(super) site: String,
    pub(super) category: String,
    pub(super) rcpt_hash: Option<Vec<u8>>,
    pub(super) sender_hash: Option<Vec<u8>>,
    pub(super) rcpt: Option<Vec<u8>>,
    pub(super) sender: Option<Vec<u8>>,
    pub(super) data_key: Option<Vec<u8>>,
    pub(super) data: Vec<u8>,
}

impl RawRow {
    /// A row selected with [`EVENT_COLUMNS`].
    pub(super) fn from_row(r: &rusqlite::Row<'_>) -> rusqlite::Result<RawRow> {
        Ok(RawRow {
            seq: r.get(col::SEQ)?,
            id: r.get(col::ID)?,
            time_us: r.get(col::TIME_US)?,
            kind: r.get(col::KIND)?,
            queue_id: r.get(col::QUEUE_ID)?,
            message_id: r.get(col::MESSAGE_ID)?,
            tenant: r.get(col::TENANT)?,
            campaign: r.get(col::CAMPAIGN)?,
            class: r.get(col::CLASS)?,
            pool: r.get(col::POOL)?,
            attempt: r.get(col::ATTEMPT)?,
            variant: r.get(col::VARIANT)?,
            site: r.get(col::SITE)?,
            category: r.get(col::CATEGORY)?,
            rcpt_hash: r.get(col::RCPT_HASH)?,
            sender_hash: r.get(col::SENDER_HASH)?,
            rcpt: r.get(col::RCPT)?,
            sender: r.get(col::SENDER)?,
            data_key: r.get(col::DATA_KEY)?,
            data: r.get(col::DATA)?,
        })
    }
}

/// One counter of `campaign_counts`.
#[derive(Debug, Clone)]
pub struct CountRow {
    pub variant: String,
    pub site: String,
    pub kind: String,
    pub category: String,
    pub n: i64,
}

/// What `GET /api/v1/events` and `gannet logs query` filter on.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct EventFilter {
    pub recipient: Option<String>,
    /// A `Message-ID` (angle brackets optional) or a queue id (32 hex digits).
    pub message_id: Option<String>,
    pub queue_id: Option<String>,
    pub campaign: Option<String>,
    pub tenant: Option<String>,
    /// Event type (`delivered`, `bounced`, ...).
    pub kind: Option<String>,
    pub since_us: Option<i64>,
    pub until_us: Option<i64>,
    /// Cursor: only rows with a larger `seq`.
    pub after: u64,
    /// Only rows up to this `seq` (exports stop at the end the log had when they started).
    pub through: Option<u64>,
    pub limit: usize,
}
