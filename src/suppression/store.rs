//! The suppression list: who must not be mailed, in which scope, why and until when.
//!
//! Owns [`SuppressionStore`] (the seam a cluster backend replaces: Redis or SQL shared by every
//! node), [`Entry`], [`Lookup`], [`normalize`] and the embedded default [`SledStore`]. Never
//! decides what goes in (that is `policy`, the API and the CLI) and never publishes events.
//!
//! The tree is keyed by the address's keyed hash (HMAC-SHA256 under the master key: the send
//! log's lookup hash, `sendlog::keys`), then `tenant \0 stream`, so every entry of one address
//! sits under one prefix (`get`, `remove`, erasure). A check does not read the tree: it hashes
//! the address once and probes the in-memory `index` (built from the tree at open, about 40
//! bytes an entry) for each scope that could cover the send. `tenant` is `*` for every tenant;
//! `stream` is empty for every stream, else `class:NAME`, `list:NAME` or `campaign:NAME`. A
//! global entry (tenant `*`, every stream) wins over narrower ones when several match.
//!
//! The list must remember addresses (listings and exports print them), but never in clear:
//! each entry keeps its address sealed (AES-256-GCM) under a key of its own whose salt sits in
//! the key-slot file (`slots`). Removing an entry or erasing a person (GDPR Art. 17) zeroes
//! those slots in place, so the bytes sled may keep of removed values can no longer be
//! opened, with or without the master key. An erased person is kept only as their keyed hash
//! (tree `erased`), which refuses them in every scope. Stores of the earlier layout (clear
//! addresses as sled keys) are migrated at open (`migrate`).

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use std::sync::Arc;

use super::index::{Index, Row};
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
    Open { path: PathBuf, source: sled::Error },
    #[error("suppression store: {0} (the entry was not changed; retry, and check disk space)")]
    Io(#[from] sled::Error),
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
        "cannot migrate the suppression store at {path} from the clear-address layout: {message} (the old files are kept; fix the cause and start again)"
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
/// [`SledStore`] is the default). Calls are short and synchronous: lookups hit memory; writers
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
    /// Entries in key order after `cursor`, at most `limit`.
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

/// How long [`open_sled`] waits for a lock left by this process's own earlier handle.
const SLED_LOCK_WAIT: std::time::Duration = std::time::Duration::from_secs(2);

/// Open a sled database, waiting up to [`SLED_LOCK_WAIT`] while its file lock is held.
///
/// sled 0.34 releases its `flock` from background threads some milliseconds after the last
/// handle is dropped (spacejam/sled#1234, #1289), so a store closed and opened again in one
/// process (tests, benchmarks) can find its own lock still held. Another process holding the
/// directory (a second Gannet on the same data directory) holds it for its whole life, so
/// that still fails, only later.
pub(super) fn open_sled(config: &sled::Config) -> sled::Result<sled::Db> {
    let deadline = std::time::Instant::now() + SLED_LOCK_WAIT;
    loop {
        match config.open() {
            // sled reports it as ErrorKind::Other with this text (config.rs, 0.34.7).
            Err(sled::Error::Io(e))
                if e.to_string().starts_with("could not acquire lock")
                    && std::time::Instant::now() < deadline =>
            {
                std::thread::sleep(std::time::Duration::from_millis(10));
            }
            other => return other,
        }
    }
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

/// The tree key of an entry: the person's keyed hash (32 bytes), then `tenant \0 stream`. The
/// hash first, so every entry of one address sits under one prefix (`get`, `remove`, `erase`).
fn key(person: &[u8; 32], tenant: &str, stream: &str) -> Vec<u8> {
    let mut k = Vec::with_capacity(32 + tenant.len() + stream.len() + 1);
    k.extend_from_slice(person);
    k.extend_from_slice(tenant.as_bytes());
    k.push(0);
    k.extend_from_slice(stream.as_bytes());
    k
}

/// A tree key → (person hash, tenant, stream).
fn split_key(k: &[u8]) -> Option<(&[u8; 32], &[u8], &[u8])> {
    let person: &[u8; 32] = k.get(..32)?.try_into().ok()?;
    let rest = &k[32..];
    let t = memchr::memchr(0, rest)?;
    Some((person, &rest[..t], &rest[t + 1..]))
}

/// Files of the store's directory (`[suppression] path`).
const TREE_DIR: &str = "tree";
const SLOTS_FILE: &str = "person-keys";
const KEY_CHECK_FILE: &str = "key-check";

/// The embedded store, in the directory `[suppression] path`:
/// - `tree/`: a sled database. Tree `entries`: key = the address's keyed hash ‖ `tenant \0
///   stream`, value = [`encode`] (times, reason, source, the entry's key slot and its address
///   sealed under that slot's key). Tree `soft_bounce_attempts`: keyed hash → 16 bytes per
///   recent soft bounce (big-endian unix seconds, then the attempt's identity). Tree `erased`:
///   keyed hash → big-endian unix seconds of the erasure.
/// - `person-keys`: the key slots ([`Slots`]).
/// - `key-check`: the master key's fingerprint; another key is refused at open.
///
/// Checks read the in-memory [`Index`] (built from the tree at open, keyed by the hash), never
/// the tree; listings and exports read the tree and open each address with its slot's key.
#[derive(Clone)]
pub struct SledStore {
    db: sled::Db,
    entries: sled::Tree,
    soft: sled::Tree,
    erased: sled::Tree,
    /// What `check` reads: every entry of `entries`, in memory.
    index: Arc<Index>,
    /// The keyed hashes of `erased`, in memory (erasures are few; a check must not read disk).
    erased_mem: Arc<std::sync::RwLock<std::collections::HashMap<[u8; 32], u64>>>,
    /// Held by every writer of `entries` across the tree write, the slot writes and the index
    /// update, so they never disagree and "was it new" is answered once per key even when
    /// imports and the policy write at the same time. Lookups do not take it.
    writer: Arc<std::sync::Mutex<()>>,
    slots: Arc<Slots>,
    key: MasterKey,
}

impl SledStore {
    /// Open (or create) the store in directory `path` with the master key. A store in the
    /// earlier layout (clear addresses as sled keys) is migrated first (`migrate`); a store
    /// written with another master key is refused ([`StoreError::WrongKey`]).
    pub fn open(path: &Path, key: MasterKey) -> Result<SledStore, StoreError> {
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
        let store = SledStore::open_layout(path, key)?;
        super::migrate::from_clear_layout(path, &store)?;
        Ok(store)
    }

    fn open_layout(path: &Path, key: MasterKey) -> Result<SledStore, StoreError> {
        let tree = path.join(TREE_DIR);
        let db = open_sled(
            &sled::Config::new()
                .path(&tree)
                .cache_capacity(256 * 1024 * 1024),
        )
        .map_err(|source| StoreError::Open {
            path: tree.clone(),
            source,
        })?;
        let slots = Slots::open(&path.join(SLOTS_FILE), key.clone())?;
        SledStore::on(db, slots, key)
    }

    /// Where the master key's fingerprint is kept (what `[storage] key_file` protects).
    pub fn key_check_path(path: &Path) -> PathBuf {
        path.join(KEY_CHECK_FILE)
    }

    /// A store in memory only, under a random key (tests, benchmarks of the lookup path).
    pub fn temporary() -> Result<SledStore, StoreError> {
        let key = MasterKey::from_bytes(rand::random());
        SledStore::on(
            sled::Config::new().temporary(true).open()?,
            Slots::memory(key.clone()),
            key,
        )
    }

    fn on(db: sled::Db, slots: Slots, key: MasterKey) -> Result<SledStore, StoreError> {
        let entries = db.open_tree("entries")?;
        let erased = db.open_tree("erased")?;
        let (index, used) = SledStore::load(&entries)?;
        slots.set_used(&used);
        let mut erased_mem = std::collections::HashMap::new();
        for kv in erased.iter() {
            let (k, v) = kv?;
            if let Ok(hash) = <[u8; 32]>::try_from(&k[..]) {
                erased_mem.insert(hash, u64::from_be_bytes(v[..].try_into().unwrap_or([0; 8])));
            }
        }
        Ok(SledStore {
            entries,
            soft: db.open_tree("soft_bounce_attempts")?,
            erased,
            index: Arc::new(index),
            erased_mem: Arc::new(std::sync::RwLock::new(erased_mem)),
            writer: Default::default(),
            slots: Arc::new(slots),
            key,
            db,
        })
    }

    /// The index of every entry in `entries` (one pass in key order), and the bit set of the
    /// key slots they use. An entry whose value cannot be read is logged and indexed as
    /// `unreadable`, its scope refused: a list that cannot say why must not let the mail
    /// through.
    fn load(entries: &sled::Tree) -> Result<(Index, Vec<u64>), StoreError> {
        let started = std::time::Instant::now();
        let index = Index::with_capacity(0);
        let mut used: Vec<u64> = Vec::new();
        let mut chunk: Vec<(sled::IVec, sled::IVec)> = Vec::with_capacity(LOAD_CHUNK);
        let mut n = 0usize;
        let mut flush = |chunk: &mut Vec<(sled::IVec, sled::IVec)>, used: &mut Vec<u64>| {
            let mut rows = Vec::with_capacity(chunk.len());
            for (k, v) in chunk.iter() {
                let text = |b| std::str::from_utf8(b).ok();
                let parts = split_key(k).and_then(|(p, t, s)| Some((p, text(t)?, text(s)?)));
                let Some((person, tenant, stream)) = parts else {
                    tracing::error!(key = %hex::encode(k), "suppression key unreadable; skipped");
                    continue;
                };
                match Meta::read(v).and_then(|m| Some((text(m.reason)?, m))) {
                    Some((reason, m)) => {
                        let w = m.slot as usize / 64;
                        if used.len() <= w {
                            used.resize(w + 1, 0);
                        }
                        used[w] |= 1 << (m.slot % 64);
                        rows.push(Row {
                            person,
                            tenant,
                            stream,
                            reason,
                            created: m.created,
                            expires: m.expires,
                        });
                    }
                    None => {
                        tracing::error!(key = %hex::encode(k), "suppression entry unreadable; its address stays refused in its scope until the entry is replaced or removed");
                        rows.push(Row {
                            person,
                            tenant,
                            stream,
                            reason: "unreadable",
                            created: 0,
                            expires: 0,
                        });
                    }
                }
            }
            n += index.insert_many(rows);
            chunk.clear();
        };
        for kv in entries.iter() {
            chunk.push(kv?);
            if chunk.len() == LOAD_CHUNK {
                flush(&mut chunk, &mut used);
            }
        }
        flush(&mut chunk, &mut used);
        tracing::info!(
            entries = n,
            ms = started.elapsed().as_millis() as u64,
            "suppression list loaded into memory"
        );
        Ok((index, used))
    }

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

    /// The write lock of `entries` (see the field).
    fn writing(&self) -> std::sync::MutexGuard<'_, ()> {
        self.writer.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The directory `[suppression] path` names, or `suppression` in the spool directory.
    pub fn path_for(config: &crate::config::Config) -> PathBuf {
        match &config.suppression.path {
            Some(p) => config.resolve_path(p),
            None => config.resolve_path(&config.spool.path).join("suppression"),
        }
    }

    #[cfg(test)]
    pub(crate) fn raw_insert_for_tests(&self, k: &[u8], v: &[u8]) {
        self.entries.insert(k, v).expect("insert");
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

    /// The slot of the entry stored under `k`, if there is one (replacing an entry reuses its
    /// slot under a new salt, so the old sealed address can no longer be opened).
    fn slot_of(&self, k: &[u8]) -> Result<Option<u32>, StoreError> {
        Ok(self
            .entries
            .get(k)?
            .and_then(|v| Meta::read(&v).map(|m| m.slot)))
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

    /// [`SledStore::prepare`] for many entries, on one thread per core when there are enough
    /// of them: the keyed hash, the key derivation and the seal of each entry are most of an
    /// import's CPU outside sled, and none of them needs the write lock. The first error in
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

    /// Write `rows` (prepared entries, one per key) under the write lock the caller holds:
    /// slots for them (an existing entry's slot is reused under the new salt, so its old
    /// sealed address can no longer be opened), salts first, then one sled batch, then the
    /// index. Returns how many were new.
    fn write_rows(&self, rows: Vec<Ready<'_>>) -> Result<usize, StoreError> {
        // The index says whether each exists (one read lock for the batch): only a replaced
        // entry costs a tree read.
        let exists = self.index.contains_many(rows.iter().map(|r| r.at));
        let mut slots: Vec<Option<u32>> = Vec::with_capacity(rows.len());
        for (r, exists) in rows.iter().zip(exists) {
            slots.push(if exists { self.slot_of(&r.key)? } else { None });
        }
        let fresh = self
            .slots
            .allocate(slots.iter().filter(|s| s.is_none()).count());
        let mut fresh = fresh.into_iter();
        let mut salts = Vec::with_capacity(rows.len());
        let mut indexed = Vec::with_capacity(rows.len());
        let mut batch = sled::Batch::default();
        for (r, slot) in rows.into_iter().zip(slots) {
            let slot = match slot {
                Some(s) => s,
                None => fresh.next().unwrap_or(u32::MAX),
            };
            let Ready {
                entry,
                key,
                at,
                salt,
                mut value,
            } = r;
            value[SLOT_AT..SLOT_AT + 4].copy_from_slice(&slot.to_be_bytes());
            salts.push((slot, salt));
            batch.insert(key, value);
            indexed.push((at, entry.reason.as_str(), entry.created, entry.expires));
        }
        self.slots.write(&mut salts)?;
        self.entries.apply_batch(batch)?;
        Ok(self.index.insert_at(indexed))
    }

    /// Copy the soft-bounce records of `person` (migration from the earlier layout).
    pub(super) fn put_soft_raw(&self, person: &[u8; 32], records: &[u8]) -> Result<(), StoreError> {
        self.soft.insert(person, records)?;
        Ok(())
    }

    /// Copy an erasure entry (migration from the earlier layout).
    pub(super) fn put_erased_raw(&self, person: &[u8; 32], at: u64) -> Result<(), StoreError> {
        self.erased.insert(person, at.to_be_bytes().to_vec())?;
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

    /// Make the slots durable, then flush sled (sled's flush is the best it offers).
    fn flush_all(&self) -> Result<(), StoreError> {
        self.slots.sync()?;
        self.db.flush()?;
        Ok(())
    }
}

/// Entries read from the tree per index insertion at open.
const LOAD_CHUNK: usize = 65_536;

/// Version byte of the value form.
const VALUE_V2: u8 = 2;

/// Where the slot number sits in a value (after the version byte and the two times).
const SLOT_AT: usize = 17;

/// Entries an import prepares per thread at least (fewer are not worth a thread).
const PREPARE_PER_THREAD: usize = 1_000;

/// An entry ready to be written ([`SledStore::prepare`]): its tree key, its place in the
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
fn encode(e: &Entry, slot: u32, sealed: &[u8]) -> Vec<u8> {
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

impl SuppressionStore for SledStore {
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
        let _w = self.writing();
        Ok(self.write_rows(vec![ready])? == 1)
    }

    fn add_new(&self, entry: &Entry, now: u64) -> Result<bool, StoreError> {
        let Some(ready) = self.prepare(entry)? else {
            return Ok(false);
        };
        // Under the write lock nobody writes between the look and the insert.
        let _w = self.writing();
        if self.index.live(ready.at, now) {
            return Ok(false);
        }
        self.write_rows(vec![ready])?;
        Ok(true)
    }

    fn add_many(&self, entries: &[Entry]) -> Result<usize, StoreError> {
        let mut rows = self.prepare_all(entries)?;
        // In key order (the tree is walked once, left to right, instead of at random); of two
        // lines for one key the later wins, as it would one by one.
        rows.reverse();
        rows.sort_by(|a, b| a.key.cmp(&b.key));
        rows.dedup_by(|later, kept| later.key == kept.key);
        // One batch and one index update under the write lock: how many were new is counted
        // against what every other writer left, not against a look taken before they wrote.
        let _w = self.writing();
        self.write_rows(rows)
    }

    fn remove(
        &self,
        address: &str,
        tenant: &str,
        stream: &str,
    ) -> Result<Option<Entry>, StoreError> {
        let address = normalize(address)?;
        let person = self.person(&address);
        let k = key(&person, tenant, stream);
        let _w = self.writing();
        let Some(old) = self.entries.remove(&k)? else {
            return Ok(None);
        };
        self.index.remove(&person, tenant, stream);
        let mut e = self.decode(&k, &old).or_else(|_| {
            // Shown without the parts that cannot be read; it is removed all the same.
            Ok::<_, StoreError>(Entry {
                address: String::new(),
                tenant: tenant.to_string(),
                stream: stream.to_string(),
                reason: "unreadable".to_string(),
                source: String::new(),
                created: 0,
                expires: 0,
            })
        })?;
        e.address = address;
        // Removed bytes may stay in sled's files: their key goes for good.
        if let Some(m) = Meta::read(&old) {
            self.slots.shred(&[m.slot])?;
        }
        Ok(Some(e))
    }

    fn get(&self, address: &str) -> Result<Vec<Entry>, StoreError> {
        let address = normalize(address)?;
        let person = self.person(&address);
        let mut out = Vec::new();
        for kv in self.entries.scan_prefix(person) {
            let (k, v) = kv?;
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
        use std::ops::Bound;
        let prefix = filter.prefix.to_lowercase();
        let start = match cursor {
            Some(c) => Bound::Excluded(c.to_vec()),
            None => Bound::Unbounded,
        };
        let domain = filter.domain.to_lowercase();
        let mut page = Page::default();
        // A page reads at most this many keys, so a rare filter answers with a cursor instead
        // of scanning ten million entries in one request. (The tree is in keyed-hash order:
        // an address prefix is a filter, not a range.)
        let mut budget = 100_000usize.max(limit);
        for kv in self.entries.range::<Vec<u8>, _>((start, Bound::Unbounded)) {
            let (k, v) = kv?;
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
                match self.decode(&k, &v) {
                    Ok(e) => {
                        let ok = e.address.starts_with(&prefix)
                            && (domain.is_empty()
                                || e.address.rsplit_once('@').is_some_and(|(_, d)| d == domain));
                        if ok {
                            page.entries.push(e);
                        }
                    }
                    // Still enforced by checks (the index holds it); a listing or export
                    // that cannot show it stops with the error rather than look complete.
                    Err(err) => return Err(err),
                }
            }
            if page.entries.len() >= limit || budget == 0 {
                page.next = Some(k.to_vec());
                return Ok(page);
            }
        }
        Ok(page)
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
        let mut count = 0u32;
        let word =
            |c: &[u8], at: usize| u64::from_be_bytes(c[at..at + 8].try_into().unwrap_or([0; 8]));
        self.soft.update_and_fetch(person, |old| {
            let mut records: Vec<u8> = old
                .unwrap_or(&[])
                .chunks_exact(16)
                .filter(|c| word(c, 0) >= from)
                .flatten()
                .copied()
                .collect();
            if !records.chunks_exact(16).any(|c| word(c, 8) == attempt) {
                records.extend_from_slice(&now.to_be_bytes());
                records.extend_from_slice(&attempt.to_be_bytes());
            }
            count = (records.len() / 16) as u32;
            Some(records)
        })?;
        Ok(count)
    }

    fn len(&self) -> usize {
        self.index.len()
    }

    fn flush(&self) -> Result<(), StoreError> {
        self.flush_all()
    }

    fn erase(&self, address: &str, now: u64) -> Result<usize, StoreError> {
        let address = normalize(address)?;
        let person = self.person(&address);
        let _w = self.writing();
        self.put_erased_raw(&person, now)?;
        let mut shred = Vec::new();
        let mut n = 0;
        for kv in self.entries.scan_prefix(person) {
            let (k, v) = kv?;
            self.entries.remove(&k)?;
            if let Some(m) = Meta::read(&v) {
                shred.push(m.slot);
            }
            if let Some((_, tenant, stream)) = split_key(&k) {
                self.index.remove(
                    &person,
                    &String::from_utf8_lossy(tenant),
                    &String::from_utf8_lossy(stream),
                );
            }
            n += 1;
        }
        self.soft.remove(person)?;
        // The keys of every sealed copy of the address go first (pwrite + fdatasync): sled
        // may keep the removed values in its files, but nobody can open them any more.
        self.slots.shred(&shred)?;
        self.db.flush()?;
        Ok(n)
    }
}
