//! The suppression list: who must not be mailed, in which scope, why and until when.
//!
//! Owns [`SuppressionStore`] (the seam a cluster backend replaces: Redis or SQL shared by every
//! node), [`Entry`], [`Lookup`], [`normalize`] and the embedded default [`SqliteStore`]. Never
//! decides what goes in (that is `policy`, the API and the CLI) and never publishes events.
//!
//! An entry is filed under the address's keyed hash (HMAC-SHA256 under the master key: the
//! send log's lookup hash, `sendlog::keys`), then `tenant \0 stream`. A check does not read
//! the disk: it hashes the address once and probes the in-memory `index` (built from the table
//! at open, about 32 bytes an entry, each with its row id) for each scope that could cover the
//! send. `tenant` is `*` for every tenant; `stream` is empty for every stream, else
//! `class:NAME`, `list:NAME` or `campaign:NAME`. A global entry (tenant `*`, every stream)
//! wins over narrower ones when several match.
//!
//! The list must remember addresses (listings and exports print them), but never in clear:
//! each entry keeps its address sealed (AES-256-GCM) under a key of its own whose salt sits in
//! the key-slot file (`slots`). Removing an entry or erasing a person (GDPR Art. 17) zeroes
//! those slots in place, so old copies of removed rows (WAL frames not yet overwritten) can no
//! longer be opened, with or without the master key. An erased person is kept only as their
//! keyed hash (table `erased`), which refuses them in every scope. Stores of the earlier
//! layouts (a sled tree; before it, clear addresses as sled keys) are migrated at open
//! (`migrate`).

use std::path::{Path, PathBuf};

use std::sync::{Arc, Mutex};

use rusqlite::{Connection, OptionalExtension};
use serde::{Deserialize, Serialize};

use super::index::{Index, Put, Row};
use super::slots::{SlotError, Slots};
use crate::sendlog::MasterKey;

/// Tenant scope of an entry that applies to every tenant.
pub const ALL_TENANTS: &str = "*";

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error(
        "address {0:?} cannot be suppressed: expected local@domain (the list keys on the whole address)"
    )]
    BadAddress(String),
    #[error(
        "cannot open the suppression store at {path}: {source} (check [suppression] path is writable; another gannet may hold its lock)"
    )]
    Open {
        path: PathBuf,
        source: rusqlite::Error,
    },
    #[error("suppression store: {0} (the entry was not changed; retry, and check disk space)")]
    Io(#[from] rusqlite::Error),
    #[error(
        "a suppression listing cursor must be one a listing of this store gave out (cursors of stores before the SQLite one are not accepted: start the listing again)"
    )]
    BadCursor,
    #[error(
        "tenant {0:?} cannot scope a suppression: use * (every tenant) or a tenant name without control characters"
    )]
    BadTenant(String),
    #[error("suppression entry under key {key} is unreadable: {message}")]
    Corrupt { key: String, message: String },
    #[error(
        "the suppression store at {path}: {source} (check [suppression] path is writable and the disk has space)"
    )]
    Dir {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error(
        "the suppression store was written with another master key than [storage] key_file ({path} does not match); restore the key file it was written with (gannet never re-keys silently)"
    )]
    WrongKey { path: PathBuf },
    #[error(transparent)]
    Slots(#[from] SlotError),
    #[error(
        "cannot migrate the suppression store at {path} from an earlier layout: {message} (the old files are kept; fix the cause and start again)"
    )]
    Migrate { path: PathBuf, message: String },
}

/// One suppression.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Entry {
    /// Normalised address (see [`normalize`]).
    pub address: String,
    /// `*` (every tenant) or a tenant name.
    pub tenant: String,
    /// Empty (every stream) or `class:NAME`, `list:NAME`, `campaign:NAME`.
    #[serde(default)]
    pub stream: String,
    /// `hard-bounce`, `soft-bounce`, `complaint`, `unsubscribe`, `manual`, `spam-trap`, ...
    pub reason: String,
    /// The event id that caused it, or who added it (`api:TOKEN`, `cli`, `import`).
    #[serde(default)]
    pub source: String,
    /// Unix seconds when it was added.
    pub created: u64,
    /// Unix seconds when it lapses; 0 = never.
    #[serde(default)]
    pub expires: u64,
}

impl Entry {
    /// Whether the entry still applies at `now` (unix seconds).
    pub fn live(&self, now: u64) -> bool {
        self.expires == 0 || self.expires > now
    }

    /// Whether it applies to a send described by `q` (ignoring expiry).
    pub fn covers(&self, q: &Lookup<'_>) -> bool {
        let tenant_ok = self.tenant == ALL_TENANTS || self.tenant == q.tenant;
        let stream_ok = self.stream.is_empty()
            || match self.stream.split_once(':') {
                Some(("class", n)) => n == q.class,
                Some(("campaign", n)) => !n.is_empty() && n == q.campaign,
                Some(("list", n)) => !n.is_empty() && n == q.list,
                _ => false,
            };
        tenant_ok && stream_ok
    }

    /// The scope as one text (`*`, `acme`, `acme class:promotional`), for events and listings.
    pub fn scope_text(&self) -> String {
        if self.stream.is_empty() {
            self.tenant.clone()
        } else {
            format!("{} {}", self.tenant, self.stream)
        }
    }
}

/// What is being sent: the recipient and the streams the message belongs to.
#[derive(Debug, Clone, Copy, Default)]
pub struct Lookup<'a> {
    /// Any form; normalised by the store.
    pub address: &'a str,
    /// Empty when the message has no tenant (then only `*` entries apply).
    pub tenant: &'a str,
    pub class: &'a str,
    pub campaign: &'a str,
    pub list: &'a str,
}

/// Filters of a listing; empty fields match everything.
#[derive(Debug, Clone, Default)]
pub struct ListFilter {
    /// Address prefix (normalised), e.g. `alice` or `alice@example.`.
    pub prefix: String,
    /// Exact domain of the address.
    pub domain: String,
    pub reason: String,
    pub tenant: String,
}

/// One page of a listing; `next` is the cursor of the following page (None at the end).
#[derive(Debug, Clone, Default)]
pub struct Page {
    pub entries: Vec<Entry>,
    pub next: Option<Vec<u8>>,
}

/// The suppression list behind an interface, so a cluster can share one (the embedded
/// [`SqliteStore`] is the default). Calls are short and synchronous: lookups hit memory; writers
/// that import many entries should run on a blocking thread.
pub trait SuppressionStore: Send + Sync {
    /// The live entry that stops this send, if any (a global one first). Its `source` may be
    /// empty: a backend may answer from an index that keeps only what a refusal needs (the
    /// embedded one does); [`SuppressionStore::get`] gives whole entries.
    fn check(&self, q: &Lookup<'_>, now: u64) -> Result<Option<Entry>, StoreError>;
    /// Insert or replace the entry with the same (address, tenant, stream); true if it did not
    /// exist before.
    fn add(&self, entry: &Entry) -> Result<bool, StoreError>;
    /// Insert unless a live entry with the same (address, tenant, stream) exists, which is
    /// then kept as it is (its reason, source and created time stay: a repeated hard bounce
    /// does not rewrite a manual entry). An entry that has lapsed is replaced. True if inserted.
    fn add_new(&self, entry: &Entry, now: u64) -> Result<bool, StoreError>;
    /// Many entries at once (import); returns how many were new.
    fn add_many(&self, entries: &[Entry]) -> Result<usize, StoreError>;
    /// Remove one entry; returns it if it existed.
    fn remove(
        &self,
        address: &str,
        tenant: &str,
        stream: &str,
    ) -> Result<Option<Entry>, StoreError>;
    /// Every entry of one address (any scope, expired ones included).
    fn get(&self, address: &str) -> Result<Vec<Entry>, StoreError>;
    /// Entries after `cursor`, at most `limit`, in an order of the backend's choosing that
    /// stays the same while paging (the embedded store: the order they were first added).
    fn list(
        &self,
        filter: &ListFilter,
        cursor: Option<&[u8]>,
        limit: usize,
    ) -> Result<Page, StoreError>;
    /// Count a soft bounce of `address` at `now` and return how many fell within the last
    /// `window_secs` (older ones are forgotten). `attempt` identifies the failed attempt (a
    /// hash of queue id, recipient and attempt number): the same attempt reported again (an
    /// event batch applied twice, an outcome re-published after a restart) counts once.
    fn soft_bounce(
        &self,
        address: &str,
        now: u64,
        window_secs: u64,
        attempt: u64,
    ) -> Result<u32, StoreError>;
    /// Number of entries.
    fn len(&self) -> usize;
    fn is_empty(&self) -> bool {
        self.len() == 0
    }
    /// Make what was written so far as durable as the backend can.
    fn flush(&self) -> Result<(), StoreError>;
    /// GDPR erasure of `address`: forget every entry and soft-bounce count of it (and destroy
    /// the keys of its sealed copies) and remember only its keyed hash, which makes
    /// [`SuppressionStore::check`] refuse it in every scope from now on. Returns how many
    /// entries were removed.
    fn erase(&self, address: &str, now: u64) -> Result<usize, StoreError>;
}

/// What `check` answers for an erased address (the address itself is not kept).
pub const ERASED_REASON: &str = "erasure";

/// The normalised form of an address: trimmed, angle brackets removed, lower-cased as a whole.
/// The local part is lower-cased too: RFC 5321 lets it be case-sensitive, but no large mailbox
/// provider treats it so, and a suppression that misses `Alice@` for `alice@` would mail
/// someone who opted out. Dots and `+tags` are kept: those can be different mailboxes.
pub fn normalize(address: &str) -> Result<String, StoreError> {
    let t = address.trim();
    let a = t
        .strip_prefix('<')
        .and_then(|x| x.strip_suffix('>'))
        .unwrap_or(t);
    let ok = a.len() <= 512
        && !a.bytes().any(|b| b.is_ascii_control())
        && a.rsplit_once('@').is_some_and(|(local, domain)| {
            !local.is_empty() && !domain.is_empty() && !domain.contains([' ', '"'])
        });
    if ok {
        Ok(a.to_lowercase())
    } else {
        Err(StoreError::BadAddress(address.to_string()))
    }
}

/// The key of an entry: the person's keyed hash (32 bytes), then `tenant \0 stream`. The
/// hash first, so every entry of one address sits under one prefix (`get`, `remove`, `erase`).
pub(super) fn key(person: &[u8; 32], tenant: &str, stream: &str) -> Vec<u8> {
    let mut k = Vec::with_capacity(32 + tenant.len() + stream.len() + 1);
    k.extend_from_slice(person);
    k.extend_from_slice(tenant.as_bytes());
    k.push(0);
    k.extend_from_slice(stream.as_bytes());
    k
}

/// An entry key → (person hash, tenant, stream).
fn split_key(k: &[u8]) -> Option<(&[u8; 32], &[u8], &[u8])> {
    let person: &[u8; 32] = k.get(..32)?.try_into().ok()?;
    let rest = &k[32..];
    let t = memchr::memchr(0, rest)?;
    Some((person, &rest[..t], &rest[t + 1..]))
}

/// Files of the store's directory (`[suppression] path`).
const DB_FILE: &str = "list.sqlite";
const SLOTS_FILE: &str = "person-keys";
const KEY_CHECK_FILE: &str = "key-check";

/// The tables. `entries` is a rowid table: an import appends its rows at the end of the
/// B-tree (row ids grow) instead of inserting 10M random keyed-hash keys all over it, and no
/// other on-disk index is kept; the in-memory [`Index`] maps an entry's key to its row id.
/// `meta` keeps the number of entries as of the last write (the index's capacity at open).
const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS entries (
    id INTEGER PRIMARY KEY,
    k BLOB NOT NULL,
    v BLOB NOT NULL
);
CREATE TABLE IF NOT EXISTS erased (
    person BLOB PRIMARY KEY,
    at INTEGER NOT NULL
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS soft_bounces (
    person BLOB PRIMARY KEY,
    records BLOB NOT NULL
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS meta (
    k TEXT PRIMARY KEY,
    v INTEGER NOT NULL
) WITHOUT ROWID;
";

/// SQLite's page cache for the store's one connection (KiB): imports append, listings read
/// in row order, and checks never read the table, so a small cache is enough.
const CACHE_KIB: i64 = 16 * 1024;

/// The embedded store, in the directory `[suppression] path`:
/// - `list.sqlite` (SQLite, WAL, `synchronous = FULL`, `secure_delete = ON`, locked
///   exclusively by the process that opened it). Table `entries`: row id, key = the address's
///   keyed hash ‖ `tenant \0 stream`, value = [`encode`] (times, reason, source, the entry's
///   key slot and its address sealed under that slot's key). Table `soft_bounces`: keyed hash
///   → 16 bytes per recent soft bounce (big-endian unix seconds, then the attempt's identity).
///   Table `erased`: keyed hash → unix seconds of the erasure.
/// - `person-keys`: the key slots ([`Slots`]).
/// - `key-check`: the master key's fingerprint; another key is refused at open.
///
/// Checks read the in-memory [`Index`] (built from the table at open, keyed by the hash, with
/// each entry's row id), never the table; listings and exports read the table in row order
/// and open each address with its slot's key. Every write commits durably before it returns
/// (the salts it uses are made durable first).
#[derive(Clone)]
pub struct SqliteStore {
    /// The connection; its lock is the write lock: held by every writer across the slot
    /// writes, the commit and the index update, so they never disagree and "was it new" is
    /// answered once per key even when imports and the policy write at the same time. Readers
    /// of the table take it for one query at a time; lookups do not take it.
    conn: Arc<Mutex<Connection>>,
    /// What `check` reads: every entry of `entries`, in memory.
    index: Arc<Index>,
    /// The keyed hashes of `erased`, in memory (erasures are few; a check must not read disk).
    erased_mem: Arc<std::sync::RwLock<std::collections::HashMap<[u8; 32], u64>>>,
    slots: Arc<Slots>,
    key: MasterKey,
}

impl SqliteStore {
    /// Open (or create) the store in directory `path` with the master key. A store of an
    /// earlier layout (the sled tree `tree/`, or clear addresses as sled keys) is migrated
    /// first (`migrate`); a store written with another master key is refused
    /// ([`StoreError::WrongKey`]).
    pub fn open(path: &Path, key: MasterKey) -> Result<SqliteStore, StoreError> {
        let io = |source| StoreError::Dir {
            path: path.to_path_buf(),
            source,
        };
        std::fs::create_dir_all(path).map_err(io)?;
        crate::sendlog::keys::check_key_file(
            &path.join(KEY_CHECK_FILE),
            &key,
            b"gannet/v1/suppression-key-check",
        )
        .map_err(|e| match e {
            crate::sendlog::keys::KeyCheckError::WrongKey { path } => StoreError::WrongKey { path },
            crate::sendlog::keys::KeyCheckError::Io { path, source } => {
                StoreError::Dir { path, source }
            }
        })?;
        let file = path.join(DB_FILE);
        let mut conn = open_db(&file)?;
        super::migrate::from_sled_tree(path, &mut conn)?;
        let slots = Slots::open(&path.join(SLOTS_FILE), key.clone())?;
        let store = SqliteStore::on(conn, slots, key)?;
        super::migrate::from_clear_layout(path, &store)?;
        Ok(store)
    }

    /// Where the master key's fingerprint is kept (what `[storage] key_file` protects).
    pub fn key_check_path(path: &Path) -> PathBuf {
        path.join(KEY_CHECK_FILE)
    }

    /// A store in memory only, under a random key (tests, benchmarks of the lookup path).
    pub fn temporary() -> Result<SqliteStore, StoreError> {
        let key = MasterKey::from_bytes(rand::random());
        let conn = Connection::open_in_memory()?;
        configure(&conn)?;
        SqliteStore::on(conn, Slots::memory(key.clone()), key)
    }

    fn on(conn: Connection, slots: Slots, key: MasterKey) -> Result<SqliteStore, StoreError> {
        let (index, used) = SqliteStore::load(&conn)?;
        slots.set_used(&used);
        let mut erased_mem = std::collections::HashMap::new();
        {
            let mut stmt = conn.prepare("SELECT person, at FROM erased")?;
            let mut rows = stmt.query([])?;
            while let Some(r) = rows.next()? {
                let person: Vec<u8> = r.get(0)?;
                let at: i64 = r.get(1)?;
                if let Ok(hash) = <[u8; 32]>::try_from(&person[..]) {
                    erased_mem.insert(hash, u64::try_from(at).unwrap_or(0));
                }
            }
        }
        Ok(SqliteStore {
            conn: Arc::new(Mutex::new(conn)),
            index: Arc::new(index),
            erased_mem: Arc::new(std::sync::RwLock::new(erased_mem)),
            slots: Arc::new(slots),
            key,
        })
    }

    /// The index of every entry in `entries` (one pass in row order), and the bit set of the
    /// key slots they use. An entry whose value cannot be read is logged and indexed as
    /// `unreadable`, its scope refused: a list that cannot say why must not let the mail
    /// through.
    fn load(conn: &Connection) -> Result<(Index, Vec<u64>), StoreError> {
        let started = std::time::Instant::now();
        // Room for every entry from the start (no rehash while millions are loaded): the count
        // of the last write, bounded by the largest row id (a count that cannot be true).
        let counted: i64 = conn
            .query_row("SELECT v FROM meta WHERE k = 'entries'", [], |r| r.get(0))
            .optional()?
            .unwrap_or(0);
        let max_row: i64 =
            conn.query_row("SELECT coalesce(max(id), 0) FROM entries", [], |r| r.get(0))?;
        let room = usize::try_from(counted.clamp(0, max_row.max(0))).unwrap_or(0);
        let mut index = Index::with_capacity(room);
        let mut used: Vec<u64> = Vec::new();
        let mut n = 0usize;
        let mut stmt = conn.prepare("SELECT id, k, v FROM entries")?;
        let mut rows = stmt.query([])?;
        while let Some(r) = rows.next()? {
            let id = u64::try_from(r.get::<_, i64>(0)?).unwrap_or(0);
            let k = r.get_ref(1)?.as_blob().unwrap_or(&[]);
            let v = r.get_ref(2)?.as_blob().unwrap_or(&[]);
            let text = |b| std::str::from_utf8(b).ok();
            let parts = split_key(k).and_then(|(p, t, s)| Some((p, text(t)?, text(s)?)));
            let Some((person, tenant, stream)) = parts else {
                tracing::error!(key = %hex::encode(k), row = id, "suppression key unreadable; skipped");
                continue;
            };
            let row = match Meta::read(v).and_then(|m| Some((text(m.reason)?, m))) {
                Some((reason, m)) => {
                    let w = m.slot as usize / 64;
                    if used.len() <= w {
                        used.resize(w + 1, 0);
                    }
                    used[w] |= 1 << (m.slot % 64);
                    Row {
                        person,
                        tenant,
                        stream,
                        reason,
                        created: m.created,
                        expires: m.expires,
                        row: id,
                    }
                }
                None => {
                    tracing::error!(key = %hex::encode(k), "suppression entry unreadable; its address stays refused in its scope until the entry is replaced or removed");
                    Row {
                        person,
                        tenant,
                        stream,
                        reason: "unreadable",
                        created: 0,
                        expires: 0,
                        row: id,
                    }
                }
            };
            if index.load(row) {
                n += 1;
            }
        }
        tracing::info!(
            entries = n,
            ms = started.elapsed().as_millis() as u64,
            "suppression list loaded into memory"
        );
        Ok((index, used))
    }

    /// The connection, under the write lock (see the field).
    fn writing(&self) -> std::sync::MutexGuard<'_, Connection> {
        self.conn.lock().unwrap_or_else(|p| p.into_inner())
    }

    #[cfg(test)]
    pub(crate) fn raw_insert_for_tests(&self, k: &[u8], v: &[u8]) {
        self.writing()
            .execute("INSERT INTO entries (k, v) VALUES (?1, ?2)", (k, v))
            .expect("insert");
    }

    /// The key and value of row `id`, if it exists.
    fn read_row(conn: &Connection, id: u64) -> Result<Option<KeyValue>, StoreError> {
        Ok(conn
            .prepare_cached("SELECT k, v FROM entries WHERE id = ?1")?
            .query_row([id as i64], |r| Ok((r.get(0)?, r.get(1)?)))
            .optional()?)
    }

    /// Record the number of entries (the index's room at the next open), in the caller's
    /// transaction.
    fn count(tx: &Connection, n: usize) -> Result<(), StoreError> {
        tx.prepare_cached("INSERT OR REPLACE INTO meta (k, v) VALUES ('entries', ?1)")?
            .execute([n as i64])?;
        Ok(())
    }

    /// Write `rows` (prepared entries, one per key) under the write lock the caller holds:
    /// slots for them (an existing entry's slot is reused under the new salt, so its old
    /// sealed address can no longer be opened), salts first and made durable, then one
    /// transaction (new entries appended, replaced ones updated in their row), then the
    /// index. Returns how many were new.
    fn write_rows(&self, conn: &mut Connection, rows: Vec<Ready<'_>>) -> Result<usize, StoreError> {
        // The index says whether each exists and where (one read lock for the batch): only a
        // replaced entry costs a row read.
        let existing = self.index.rows_of(rows.iter().map(|r| r.at));
        let mut slots: Vec<Option<u32>> = Vec::with_capacity(rows.len());
        for id in &existing {
            slots.push(match id {
                Some(id) => SqliteStore::read_row(conn, *id)?
                    .and_then(|(_, v)| Meta::read(&v).map(|m| m.slot)),
                None => None,
            });
        }
        let fresh = self
            .slots
            .allocate(slots.iter().filter(|s| s.is_none()).count());
        let mut fresh = fresh.into_iter();
        let mut salts = Vec::with_capacity(rows.len());
        let mut ready = Vec::with_capacity(rows.len());
        for (mut r, slot) in rows.into_iter().zip(slots) {
            let slot = match slot {
                Some(s) => s,
                None => fresh.next().unwrap_or(u32::MAX),
            };
            r.value[SLOT_AT..SLOT_AT + 4].copy_from_slice(&slot.to_be_bytes());
            salts.push((slot, r.salt));
            ready.push(r);
        }
        self.slots.write(&mut salts)?;
        // The salts reach the disk before the rows that need them to be read.
        self.slots.sync()?;
        let new = existing.iter().filter(|e| e.is_none()).count();
        let tx = conn.transaction()?;
        let mut ids = Vec::with_capacity(ready.len());
        {
            let mut insert = tx.prepare_cached("INSERT INTO entries (k, v) VALUES (?1, ?2)")?;
            let mut update = tx.prepare_cached("UPDATE entries SET v = ?2 WHERE id = ?1")?;
            for (r, id) in ready.iter().zip(&existing) {
                let updated = match id {
                    Some(id) => update.execute((*id as i64, &r.value))? == 1,
                    None => false,
                };
                if updated {
                    ids.push(id.unwrap_or(0));
                } else {
                    insert.execute((&r.key, &r.value))?;
                    ids.push(u64::try_from(tx.last_insert_rowid()).unwrap_or(0));
                }
            }
        }
        SqliteStore::count(&tx, self.index.len() + new)?;
        tx.commit()?;
        Ok(self
            .index
            .insert_at(ready.iter().zip(ids).map(|(r, row)| Put {
                at: r.at,
                tenant: &r.entry.tenant,
                stream: &r.entry.stream,
                reason: &r.entry.reason,
                created: r.entry.created,
                expires: r.entry.expires,
                row,
            })))
    }

    /// Copy the soft-bounce records of `person` (migration from the earlier layout).
    pub(super) fn put_soft_raw(&self, person: &[u8; 32], records: &[u8]) -> Result<(), StoreError> {
        self.writing().execute(
            "INSERT OR REPLACE INTO soft_bounces (person, records) VALUES (?1, ?2)",
            (&person[..], records),
        )?;
        Ok(())
    }

    /// Copy an erasure entry (migration from the earlier layout).
    pub(super) fn put_erased_raw(&self, person: &[u8; 32], at: u64) -> Result<(), StoreError> {
        self.writing().execute(
            "INSERT OR REPLACE INTO erased (person, at) VALUES (?1, ?2)",
            (&person[..], at as i64),
        )?;
        self.erased_mem
            .write()
            .unwrap_or_else(|p| p.into_inner())
            .insert(*person, at);
        Ok(())
    }

    /// The keyed hash the store files an address under (migration, tests).
    pub(super) fn person_of(&self, address: &str) -> [u8; 32] {
        self.person(address)
    }
}

/// An entry's key and value as stored.
type KeyValue = (Vec<u8>, Vec<u8>);

/// Open the database file, take its lock for this process's life and set the store's pragmas.
fn open_db(file: &Path) -> Result<Connection, StoreError> {
    let err = |source| StoreError::Open {
        path: file.to_path_buf(),
        source,
    };
    let c = Connection::open(file).map_err(err)?;
    c.busy_timeout(std::time::Duration::from_secs(2))
        .map_err(err)?;
    // Exclusive before WAL: no shared-memory index, and a second Gannet on the same directory
    // is refused at open instead of keeping an index that this one's writes never reach.
    c.pragma_update(None, "locking_mode", "EXCLUSIVE")
        .and_then(|_| c.pragma_update(None, "journal_mode", "WAL"))
        .map_err(err)?;
    configure(&c).map_err(|e| match e {
        StoreError::Io(source) => err(source),
        e => e,
    })?;
    c.execute_batch("BEGIN EXCLUSIVE; COMMIT;").map_err(err)?;
    Ok(c)
}

/// Pragmas and tables of every connection (file or memory).
fn configure(c: &Connection) -> Result<(), StoreError> {
    // secure_delete: a removed or replaced row's bytes are zeroed in the file (its address is
    // sealed under a shredded slot anyway); FULL: a suppression acknowledged survives a crash.
    c.pragma_update(None, "secure_delete", "ON")?;
    c.pragma_update(None, "synchronous", "FULL")?;
    c.pragma_update(None, "cache_size", -CACHE_KIB)?;
    c.pragma_update(None, "mmap_size", 0)?;
    c.execute_batch(SCHEMA)?;
    Ok(())
}

/// Rows read per lock of the connection while listing (writers wait at most one chunk).
const LIST_CHUNK: usize = 1_000;

/// A listing's cursor: the row id of the last entry the page looked at (big-endian).
fn cursor_row(cursor: Option<&[u8]>) -> Result<u64, StoreError> {
    match cursor {
        None => Ok(0),
        Some(c) => <[u8; 8]>::try_from(c)
            .map(u64::from_be_bytes)
            .map_err(|_| StoreError::BadCursor),
    }
}

impl SqliteStore {
    /// The keyed hash of a normalised address (the send log's lookup hash).
    fn person(&self, address: &str) -> [u8; 32] {
        self.key.lowercase_address_hash(address)
    }

    /// The erasure entry for `person`, if they were erased: one lookup in memory.
    fn erased_entry(&self, person: &[u8; 32]) -> Option<Entry> {
        let erased = self.erased_mem.read().unwrap_or_else(|p| p.into_inner());
        erased.get(person).map(|at| Entry {
            address: String::new(),
            tenant: ALL_TENANTS.to_string(),
            stream: String::new(),
            reason: ERASED_REASON.to_string(),
            source: "gdpr".to_string(),
            created: *at,
            expires: 0,
        })
    }

    /// The directory `[suppression] path` names, or `suppression` in the spool directory.
    pub fn path_for(config: &crate::config::Config) -> PathBuf {
        match &config.suppression.path {
            Some(p) => config.resolve_path(p),
            None => config.resolve_path(&config.spool.path).join("suppression"),
        }
    }

    /// An entry from its tree key and value; its address opened with its slot's key.
    fn decode(&self, k: &[u8], v: &[u8]) -> Result<Entry, StoreError> {
        let corrupt = |message: &str| StoreError::Corrupt {
            key: hex::encode(k),
            message: message.to_string(),
        };
        let (person, tenant, stream) =
            split_key(k).ok_or_else(|| corrupt("key is not hash, tenant\\0stream"))?;
        let m = Meta::read(v).ok_or_else(|| corrupt("value too short"))?;
        let address = self
            .slots
            .open_address(m.slot, person, m.sealed)
            .ok_or_else(|| {
                corrupt("its address cannot be opened (its key slot was lost or zeroed)")
            })?;
        let text = |b: &[u8]| {
            std::str::from_utf8(b)
                .map(str::to_string)
                .map_err(|_| corrupt("not UTF-8"))
        };
        Ok(Entry {
            address,
            tenant: text(tenant)?,
            stream: text(stream)?,
            reason: text(m.reason)?,
            source: text(m.source)?,
            created: m.created,
            expires: m.expires,
        })
    }

    /// `entry` made ready for the tree without any lock: checked (a tenant holding a control
    /// character would make the key ambiguous), its address normalised and hashed, and sealed
    /// under a fresh salt. None when its person was erased: an erased person is suppressed
    /// everywhere already, and their address must not be written again (a bounce of mail that
    /// was in flight at the erasure, say).
    fn prepare<'a>(&self, entry: &'a Entry) -> Result<Option<Ready<'a>>, StoreError> {
        if entry.tenant.is_empty() || entry.tenant.chars().any(char::is_control) {
            return Err(StoreError::BadTenant(entry.tenant.clone()));
        }
        let address = normalize(&entry.address)?;
        let person = self.person(&address);
        if self.erased_entry(&person).is_some() {
            return Ok(None);
        }
        let (salt, sealed) = self.slots.seal_address(&person, &address);
        Ok(Some(Ready {
            entry,
            key: key(&person, &entry.tenant, &entry.stream),
            at: self.index.at(&person, &entry.tenant, &entry.stream),
            salt,
            // The slot is filled in under the write lock, once it is known.
            value: encode(entry, 0, &sealed),
        }))
    }

    /// [`SqliteStore::prepare`] for many entries, on one thread per core when there are enough
    /// of them: the keyed hash, the key derivation and the seal of each entry are most of an
    /// import's CPU outside SQLite, and none of them needs the write lock. The first error in
    /// the entries' order is returned, as one by one.
    fn prepare_all<'a>(&self, entries: &'a [Entry]) -> Result<Vec<Ready<'a>>, StoreError> {
        let one = |chunk: &'a [Entry]| -> Result<Vec<Ready<'a>>, StoreError> {
            let mut out = Vec::with_capacity(chunk.len());
            for e in chunk {
                out.extend(self.prepare(e)?);
            }
            Ok(out)
        };
        let threads = std::thread::available_parallelism()
            .map_or(1, std::num::NonZeroUsize::get)
            .min(entries.len() / PREPARE_PER_THREAD)
            .max(1);
        if threads == 1 {
            return one(entries);
        }
        let per = entries.len().div_ceil(threads);
        std::thread::scope(|s| {
            let parts: Vec<_> = entries
                .chunks(per)
                .map(|chunk| s.spawn(move || one(chunk)))
                .collect();
            let mut out = Vec::with_capacity(entries.len());
            for part in parts {
                match part.join() {
                    Ok(rows) => out.extend(rows?),
                    Err(panic) => std::panic::resume_unwind(panic),
                }
            }
            Ok(out)
        })
    }
}

/// Version byte of the value form.
const VALUE_V2: u8 = 2;

/// Where the slot number sits in a value (after the version byte and the two times).
const SLOT_AT: usize = 17;

/// Entries an import prepares per thread at least (fewer are not worth a thread).
const PREPARE_PER_THREAD: usize = 1_000;

/// An entry ready to be written ([`SqliteStore::prepare`]): its tree key, its place in the
/// index, a fresh salt and its value with the address sealed under that salt's key (slot 0
/// until the write fills in the slot it got).
struct Ready<'a> {
    entry: &'a Entry,
    key: Vec<u8>,
    at: super::index::At,
    salt: [u8; super::slots::SLOT_LEN],
    value: Vec<u8>,
}

/// The value of an entry: `0x02, created (u64 BE), expires (u64 BE), slot (u32 BE), reason
/// length (u16 BE), sealed address length (u16 BE), reason, sealed address, source` (tenant
/// and stream are in the key; the address only sealed). Hand-written rather than a serde
/// format: the index is loaded from millions of these at open without decoding anything but
/// the times, the slot and the reason.
pub(super) fn encode(e: &Entry, slot: u32, sealed: &[u8]) -> Vec<u8> {
    let reason = &e.reason.as_bytes()[..e.reason.len().min(u16::MAX as usize)];
    let mut v = Vec::with_capacity(25 + reason.len() + sealed.len() + e.source.len());
    v.push(VALUE_V2);
    v.extend_from_slice(&e.created.to_be_bytes());
    v.extend_from_slice(&e.expires.to_be_bytes());
    v.extend_from_slice(&slot.to_be_bytes());
    v.extend_from_slice(&(reason.len() as u16).to_be_bytes());
    v.extend_from_slice(&(sealed.len() as u16).to_be_bytes());
    v.extend_from_slice(reason);
    v.extend_from_slice(sealed);
    v.extend_from_slice(e.source.as_bytes());
    v
}

/// The parts of a value, borrowed.
struct Meta<'a> {
    created: u64,
    expires: u64,
    slot: u32,
    reason: &'a [u8],
    sealed: &'a [u8],
    source: &'a [u8],
}

impl<'a> Meta<'a> {
    fn read(v: &'a [u8]) -> Option<Meta<'a>> {
        if v.len() < 25 || v[0] != VALUE_V2 {
            return None;
        }
        let r = u16::from_be_bytes([v[21], v[22]]) as usize;
        let s = u16::from_be_bytes([v[23], v[24]]) as usize;
        let rest = &v[25..];
        Some(Meta {
            created: u64::from_be_bytes(v[1..9].try_into().ok()?),
            expires: u64::from_be_bytes(v[9..17].try_into().ok()?),
            slot: u32::from_be_bytes(v[17..21].try_into().ok()?),
            reason: rest.get(..r)?,
            sealed: rest.get(r..r + s)?,
            source: rest.get(r + s..)?,
        })
    }
}

impl SuppressionStore for SqliteStore {
    fn check(&self, q: &Lookup<'_>, now: u64) -> Result<Option<Entry>, StoreError> {
        let Ok(address) = normalize(q.address) else {
            return Ok(None);
        };
        let person = self.person(&address);
        if let Some(e) = self.erased_entry(&person) {
            return Ok(Some(e));
        }
        Ok(self.index.check(&person, address, q, now))
    }

    fn add(&self, entry: &Entry) -> Result<bool, StoreError> {
        let Some(ready) = self.prepare(entry)? else {
            return Ok(false);
        };
        let mut conn = self.writing();
        Ok(self.write_rows(&mut conn, vec![ready])? == 1)
    }

    fn add_new(&self, entry: &Entry, now: u64) -> Result<bool, StoreError> {
        let Some(ready) = self.prepare(entry)? else {
            return Ok(false);
        };
        // Under the write lock nobody writes between the look and the insert.
        let mut conn = self.writing();
        if self.index.live(ready.at, now) {
            return Ok(false);
        }
        self.write_rows(&mut conn, vec![ready])?;
        Ok(true)
    }

    fn add_many(&self, entries: &[Entry]) -> Result<usize, StoreError> {
        let rows = self.prepare_all(entries)?;
        // Of two lines for one key the later wins, as it would one by one; the others keep
        // the import's order (the order listings and exports show them in).
        let mut order: Vec<usize> = (0..rows.len()).collect();
        order.sort_unstable_by(|&a, &b| rows[a].key.cmp(&rows[b].key).then(b.cmp(&a)));
        let mut keep = vec![false; rows.len()];
        for (i, &at) in order.iter().enumerate() {
            keep[at] = i == 0 || rows[order[i - 1]].key != rows[at].key;
        }
        let rows: Vec<Ready<'_>> = rows
            .into_iter()
            .zip(keep)
            .filter_map(|(r, keep)| keep.then_some(r))
            .collect();
        // One transaction and one index update under the write lock: how many were new is
        // counted against what every other writer left, not against a look taken before.
        let mut conn = self.writing();
        self.write_rows(&mut conn, rows)
    }

    fn remove(
        &self,
        address: &str,
        tenant: &str,
        stream: &str,
    ) -> Result<Option<Entry>, StoreError> {
        let address = normalize(address)?;
        let person = self.person(&address);
        let at = self.index.at(&person, tenant, stream);
        let mut conn = self.writing();
        let Some(id) = self.index.rows_of([at]).pop().flatten() else {
            return Ok(None);
        };
        let old = SqliteStore::read_row(&conn, id)?;
        let tx = conn.transaction()?;
        tx.prepare_cached("DELETE FROM entries WHERE id = ?1")?
            .execute([id as i64])?;
        SqliteStore::count(&tx, self.index.len().saturating_sub(1))?;
        tx.commit()?;
        self.index.remove(&person, tenant, stream);
        let Some((k, v)) = old else {
            return Ok(None);
        };
        let mut e = self.decode(&k, &v).unwrap_or_else(|_| Entry {
            // Shown without the parts that cannot be read; it is removed all the same.
            address: String::new(),
            tenant: tenant.to_string(),
            stream: stream.to_string(),
            reason: "unreadable".to_string(),
            source: String::new(),
            created: 0,
            expires: 0,
        });
        e.address = address;
        // Old page versions may stay in the WAL for a while: the key of the sealed address
        // goes for good.
        if let Some(m) = Meta::read(&v) {
            self.slots.shred(&[m.slot])?;
        }
        Ok(Some(e))
    }

    fn get(&self, address: &str) -> Result<Vec<Entry>, StoreError> {
        let address = normalize(address)?;
        let person = self.person(&address);
        let mut rows = Vec::new();
        {
            let conn = self.writing();
            for (_, _, id) in self.index.rows_of_person(&person) {
                rows.extend(SqliteStore::read_row(&conn, id)?);
            }
        }
        // In key order (tenant, then stream), whatever order the scopes were probed in.
        rows.sort();
        let mut out = Vec::with_capacity(rows.len());
        for (k, v) in rows {
            let mut e = match self.decode(&k, &v) {
                Ok(e) => e,
                Err(err) => {
                    tracing::error!(error = %err, "suppression entry shown without its stored fields");
                    let (_, t, s) = split_key(&k).unwrap_or((&person, b"*", b""));
                    Entry {
                        address: String::new(),
                        tenant: String::from_utf8_lossy(t).into_owned(),
                        stream: String::from_utf8_lossy(s).into_owned(),
                        reason: "unreadable".to_string(),
                        source: String::new(),
                        created: 0,
                        expires: 0,
                    }
                }
            };
            e.address = address.clone();
            out.push(e);
        }
        Ok(out)
    }

    fn list(
        &self,
        filter: &ListFilter,
        cursor: Option<&[u8]>,
        limit: usize,
    ) -> Result<Page, StoreError> {
        let prefix = filter.prefix.to_lowercase();
        let domain = filter.domain.to_lowercase();
        let mut after = cursor_row(cursor)?;
        let mut page = Page::default();
        // A page reads at most this many rows, so a rare filter answers with a cursor instead
        // of scanning ten million entries in one request. (Rows are in insertion order: an
        // address prefix is a filter, not a range.)
        let mut budget = 100_000usize.max(limit);
        loop {
            // One chunk per lock of the connection; entries are opened outside it.
            let chunk: Vec<(u64, Vec<u8>, Vec<u8>)> = {
                let conn = self.writing();
                let mut stmt = conn.prepare_cached(
                    "SELECT id, k, v FROM entries WHERE id > ?1 ORDER BY id LIMIT ?2",
                )?;
                let rows = stmt.query_map((after as i64, LIST_CHUNK.min(budget) as i64), |r| {
                    Ok((
                        u64::try_from(r.get::<_, i64>(0)?).unwrap_or(0),
                        r.get(1)?,
                        r.get(2)?,
                    ))
                })?;
                rows.collect::<Result<_, _>>()?
            };
            if chunk.is_empty() {
                return Ok(page);
            }
            for (id, k, v) in chunk {
                after = id;
                budget -= 1;
                // Cheap filters first: the address is opened only for entries that pass them.
                let cheap_ok = filter.reason.is_empty() && filter.tenant.is_empty() || {
                    match (split_key(&k), Meta::read(&v)) {
                        (Some((_, t, _)), Some(m)) => {
                            (filter.reason.is_empty() || m.reason == filter.reason.as_bytes())
                                && (filter.tenant.is_empty() || t == filter.tenant.as_bytes())
                        }
                        _ => true,
                    }
                };
                if cheap_ok {
                    // Still enforced by checks (the index holds it); a listing or export
                    // that cannot show it stops with the error rather than look complete.
                    let e = self.decode(&k, &v)?;
                    let ok = e.address.starts_with(&prefix)
                        && (domain.is_empty()
                            || e.address.rsplit_once('@').is_some_and(|(_, d)| d == domain));
                    if ok {
                        page.entries.push(e);
                    }
                }
                if page.entries.len() >= limit || budget == 0 {
                    page.next = Some(after.to_be_bytes().to_vec());
                    return Ok(page);
                }
            }
        }
    }

    fn soft_bounce(
        &self,
        address: &str,
        now: u64,
        window_secs: u64,
        attempt: u64,
    ) -> Result<u32, StoreError> {
        let address = normalize(address)?;
        let person = self.person(&address);
        // An erased address is not counted (that would write it down again).
        if self.erased_entry(&person).is_some() {
            return Ok(0);
        }
        let from = now.saturating_sub(window_secs);
        let word =
            |c: &[u8], at: usize| u64::from_be_bytes(c[at..at + 8].try_into().unwrap_or([0; 8]));
        let conn = self.writing();
        let old: Option<Vec<u8>> = conn
            .prepare_cached("SELECT records FROM soft_bounces WHERE person = ?1")?
            .query_row([&person[..]], |r| r.get(0))
            .optional()?;
        let mut records: Vec<u8> = old
            .unwrap_or_default()
            .chunks_exact(16)
            .filter(|c| word(c, 0) >= from)
            .flatten()
            .copied()
            .collect();
        if !records.chunks_exact(16).any(|c| word(c, 8) == attempt) {
            records.extend_from_slice(&now.to_be_bytes());
            records.extend_from_slice(&attempt.to_be_bytes());
        }
        conn.prepare_cached(
            "INSERT OR REPLACE INTO soft_bounces (person, records) VALUES (?1, ?2)",
        )?
        .execute((&person[..], &records))?;
        Ok((records.len() / 16) as u32)
    }

    fn len(&self) -> usize {
        self.index.len()
    }

    fn flush(&self) -> Result<(), StoreError> {
        // Every write committed durably (salts first) before it returned.
        self.slots.sync()?;
        Ok(())
    }

    fn erase(&self, address: &str, now: u64) -> Result<usize, StoreError> {
        let address = normalize(address)?;
        let person = self.person(&address);
        let mut conn = self.writing();
        let rows = self.index.rows_of_person(&person);
        let mut shred = Vec::new();
        let tx = conn.transaction()?;
        tx.execute(
            "INSERT OR REPLACE INTO erased (person, at) VALUES (?1, ?2)",
            (&person[..], now as i64),
        )?;
        for (_, _, id) in &rows {
            if let Some((_, v)) = SqliteStore::read_row(&tx, *id)?
                && let Some(m) = Meta::read(&v)
            {
                shred.push(m.slot);
            }
            tx.prepare_cached("DELETE FROM entries WHERE id = ?1")?
                .execute([*id as i64])?;
        }
        tx.execute("DELETE FROM soft_bounces WHERE person = ?1", [&person[..]])?;
        SqliteStore::count(&tx, self.index.len().saturating_sub(rows.len()))?;
        tx.commit()?;
        self.erased_mem
            .write()
            .unwrap_or_else(|p| p.into_inner())
            .insert(person, now);
        for (tenant, stream, _) in &rows {
            self.index.remove(&person, tenant, stream);
        }
        // The keys of every sealed copy of the address go (pwrite + fdatasync): old page
        // versions may stay in the WAL for a while, but nobody can open them any more.
        self.slots.shred(&shred)?;
        Ok(rows.len())
    }
}
