//! The suppression list: who must not be mailed, in which scope, why and until when.
//!
//! Owns [`SuppressionStore`] (the seam a cluster backend replaces: Redis or SQL shared by every
//! node), [`Entry`], [`Lookup`], [`normalize`] and the embedded default [`SledStore`]. Never
//! decides what goes in (that is `policy`, the API and the CLI) and never publishes events.
//!
//! Keys are `address \0 tenant \0 stream`: the normalised address first, so every entry of one
//! address sits under one prefix (`get`, `erase`, listings by address prefix). A check does not
//! read the tree: it probes the in-memory `index` (built from the tree at open, about 40 bytes
//! an entry) for each scope that could cover the send, a few hundred nanoseconds at ten
//! million entries. `tenant` is `*` for
//! every tenant; `stream` is empty for every stream, else `class:NAME`, `list:NAME` or
//! `campaign:NAME`. A global entry (tenant `*`, every stream) wins over narrower ones when
//! several match.
//!
//! Addresses are stored in clear (lower-cased): the list is the one place that must remember
//! them, and an entry is found and removed by its address (API, CLI). The one exception is a
//! GDPR erasure (Art. 17): the person must never be mailed again, yet their address must not
//! be kept, so an erasure entry holds only the keyed hash of the address (the send log's
//! lookup hash, see `sendlog::keys`), and `check` hashes the address it is asked about when
//! (and only when) there are erasure entries at all.

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use super::index::{Index, Row};

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
    #[error("suppression entry under key {key:?} is unreadable: {message}")]
    Corrupt { key: String, message: String },
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

    fn key(&self) -> Vec<u8> {
        key(&self.address, &self.tenant, &self.stream)
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
    /// GDPR erasure of `address`: forget every entry and soft-bounce count of it and remember
    /// only `hash` (its keyed hash), which makes [`SuppressionStore::check`] refuse it in
    /// every scope from now on. Returns how many clear entries were removed.
    fn erase(&self, address: &str, hash: &[u8; 32], now: u64) -> Result<usize, StoreError>;
}

/// The keyed hash the send log uses for an address (`sendlog::keys::MasterKey::address_hash`),
/// given to the store so it can recognise erased addresses without keeping them.
pub type AddressHasher = std::sync::Arc<dyn Fn(&str) -> [u8; 32] + Send + Sync>;

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

/// `entry` with its address normalised, ready to be keyed (a tenant holding a control
/// character would make the key ambiguous).
fn keyed(entry: &Entry) -> Result<Entry, StoreError> {
    if entry.tenant.is_empty() || entry.tenant.chars().any(char::is_control) {
        return Err(StoreError::BadTenant(entry.tenant.clone()));
    }
    let mut e = entry.clone();
    e.address = normalize(&e.address)?;
    Ok(e)
}

fn key(address: &str, tenant: &str, stream: &str) -> Vec<u8> {
    let mut k = Vec::with_capacity(address.len() + tenant.len() + stream.len() + 2);
    k.extend_from_slice(address.as_bytes());
    k.push(0);
    k.extend_from_slice(tenant.as_bytes());
    k.push(0);
    k.extend_from_slice(stream.as_bytes());
    k
}

fn prefix_of(address: &str) -> Vec<u8> {
    let mut k = Vec::with_capacity(address.len() + 1);
    k.extend_from_slice(address.as_bytes());
    k.push(0);
    k
}

/// The embedded store: one sled tree of entries (value: the compact binary form of `encode`;
/// compact JSON from earlier versions is still read) and one of recent soft
/// bounces per address (value: 16 bytes per bounce: big-endian unix seconds, then the
/// attempt's identity). Checks read the in-memory [`Index`] (built from the tree at open),
/// never the tree; listings, `get` and exports read the tree.
#[derive(Clone)]
pub struct SledStore {
    db: sled::Db,
    entries: sled::Tree,
    soft: sled::Tree,
    /// Erasure entries: keyed hash (32 bytes) → big-endian unix seconds of the erasure.
    erased: sled::Tree,
    /// What `check` reads: every entry of `entries`, in memory.
    index: std::sync::Arc<Index>,
    /// The keyed hashes of `erased`, in memory (erasures are few; a check must not read disk).
    erased_mem: std::sync::Arc<std::sync::RwLock<std::collections::HashMap<[u8; 32], u64>>>,
    /// Held by every writer of `entries` across the tree write and the index update, so the
    /// two never disagree and "was it new" is answered once per key even when imports and
    /// the policy write at the same time. Lookups do not take it.
    writer: std::sync::Arc<std::sync::Mutex<()>>,
    /// Set once at start when the send log's key is known; without it erasure entries are
    /// neither written nor checked.
    hasher: std::sync::Arc<std::sync::OnceLock<AddressHasher>>,
}

impl SledStore {
    /// Open (or create) the store in directory `path`.
    pub fn open(path: &Path) -> Result<SledStore, StoreError> {
        let db = sled::Config::new()
            .path(path)
            .cache_capacity(256 * 1024 * 1024)
            .open()
            .map_err(|source| StoreError::Open {
                path: path.to_path_buf(),
                source,
            })?;
        SledStore::on(db)
    }

    /// A store in memory only (tests, benchmarks of the lookup path).
    pub fn temporary() -> Result<SledStore, StoreError> {
        SledStore::on(sled::Config::new().temporary(true).open()?)
    }

    fn on(db: sled::Db) -> Result<SledStore, StoreError> {
        let entries = db.open_tree("entries")?;
        let erased = db.open_tree("erased")?;
        let index = SledStore::load(&entries)?;
        let mut erased_mem = std::collections::HashMap::new();
        for kv in erased.iter() {
            let (k, v) = kv?;
            if let Ok(hash) = <[u8; 32]>::try_from(&k[..]) {
                erased_mem.insert(hash, u64::from_be_bytes(v[..].try_into().unwrap_or([0; 8])));
            }
        }
        Ok(SledStore {
            entries,
            // (`soft_bounces`, the earlier 8-byte format without attempt identities, is no
            // longer read: its counts start again.)
            soft: db.open_tree("soft_bounce_attempts")?,
            erased,
            index: std::sync::Arc::new(index),
            erased_mem: std::sync::Arc::new(std::sync::RwLock::new(erased_mem)),
            writer: Default::default(),
            hasher: Default::default(),
            db,
        })
    }

    /// The index of every entry in `entries` (one pass in key order). An entry that cannot be
    /// read is logged and indexed as `unreadable`, every scope it names refused: a list that
    /// cannot say why must not let the mail through.
    fn load(entries: &sled::Tree) -> Result<Index, StoreError> {
        let started = std::time::Instant::now();
        let index = Index::with_capacity(0);
        let mut chunk: Vec<(sled::IVec, sled::IVec)> = Vec::with_capacity(LOAD_CHUNK);
        let mut n = 0usize;
        let mut flush = |chunk: &mut Vec<(sled::IVec, sled::IVec)>| {
            let mut rows = Vec::with_capacity(chunk.len());
            // Entries written as JSON by an earlier version (rare), decoded whole, and entries
            // that cannot be read at all.
            let mut whole = Vec::new();
            for (k, v) in chunk.iter() {
                let text = |b| std::str::from_utf8(b).ok();
                let parts = split_key(k).and_then(|(a, t, s)| Some((text(a)?, text(t)?, text(s)?)));
                let Some((address, tenant, stream)) = parts else {
                    tracing::error!(key = %String::from_utf8_lossy(k).replace('\0', " "), "suppression key unreadable; skipped");
                    continue;
                };
                match Meta::read(v).and_then(|m| Some((text(m.reason)?, m))) {
                    Some((reason, m)) => rows.push(Row {
                        address,
                        tenant,
                        stream,
                        reason,
                        created: m.created,
                        expires: m.expires,
                    }),
                    None => match SledStore::decode(k, v) {
                        Ok(e) => whole.push(e),
                        Err(e) => {
                            tracing::error!(error = %e, "suppression entry unreadable; its address stays refused in its scope until the entry is replaced or removed");
                            whole.push(Entry {
                                address: address.to_string(),
                                tenant: tenant.to_string(),
                                stream: stream.to_string(),
                                reason: "unreadable".to_string(),
                                source: String::new(),
                                created: 0,
                                expires: 0,
                            });
                        }
                    },
                }
            }
            n += index.insert_many(rows);
            n += index.insert_many(whole.iter().map(Row::of));
            chunk.clear();
        };
        for kv in entries.iter() {
            chunk.push(kv?);
            if chunk.len() == LOAD_CHUNK {
                flush(&mut chunk);
            }
        }
        flush(&mut chunk);
        tracing::info!(
            entries = n,
            ms = started.elapsed().as_millis() as u64,
            "suppression list loaded into memory"
        );
        Ok(index)
    }

    /// Give the store the keyed hash of erasure entries (once, at start).
    pub fn set_address_hasher(&self, hasher: AddressHasher) {
        let _ = self.hasher.set(hasher);
    }

    /// The erasure entry for `address`, if it was erased. Costs one `is_empty` check while
    /// nobody was ever erased; otherwise one HMAC and one lookup in memory.
    fn erased_entry(&self, address: &str) -> Result<Option<Entry>, StoreError> {
        let erased = self.erased_mem.read().unwrap_or_else(|p| p.into_inner());
        if erased.is_empty() {
            return Ok(None);
        }
        let Some(hash) = self.hasher.get() else {
            return Ok(None);
        };
        Ok(erased.get(&hash(address)).map(|at| Entry {
            address: String::new(),
            tenant: ALL_TENANTS.to_string(),
            stream: String::new(),
            reason: ERASED_REASON.to_string(),
            source: "gdpr".to_string(),
            created: *at,
            expires: 0,
        }))
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
        if let Ok(e) = SledStore::decode(k, v) {
            self.index.insert(Row::of(&e));
        }
    }

    /// An entry from its key and value. Values are the compact binary form ([`encode`]) or,
    /// for entries written before it, compact JSON (which starts with `{`).
    fn decode(k: &[u8], v: &[u8]) -> Result<Entry, StoreError> {
        let corrupt = |message: &str| StoreError::Corrupt {
            key: String::from_utf8_lossy(k).replace('\0', " "),
            message: message.to_string(),
        };
        if v.first() == Some(&b'{') {
            return serde_json::from_slice(v).map_err(|e| corrupt(&e.to_string()));
        }
        let (address, tenant, stream) =
            split_key(k).ok_or_else(|| corrupt("key is not address\\0tenant\\0stream"))?;
        let m = Meta::read(v).ok_or_else(|| corrupt("value too short"))?;
        let text = |b: &[u8]| {
            std::str::from_utf8(b)
                .map(str::to_string)
                .map_err(|_| corrupt("not UTF-8"))
        };
        Ok(Entry {
            address: text(address)?,
            tenant: text(tenant)?,
            stream: text(stream)?,
            reason: text(m.reason)?,
            source: text(m.source)?,
            created: m.created,
            expires: m.expires,
        })
    }

    fn encode(e: &Entry) -> Vec<u8> {
        encode(e)
    }
}

/// Entries read from the tree per index insertion at open.
const LOAD_CHUNK: usize = 65_536;

/// Version byte of the binary value form (JSON values start with `{`).
const VALUE_V1: u8 = 1;

/// The value of an entry: `0x01, created (u64 BE), expires (u64 BE), reason length (u16 BE),
/// reason, source` (address, tenant and stream are in the key). Hand-written rather than a
/// serde format: a lookup reads `expires` at a fixed offset without decoding anything, and the
/// whole value is 19 bytes plus the two texts (JSON was ~150 bytes an entry at 10M entries).
fn encode(e: &Entry) -> Vec<u8> {
    let reason = &e.reason.as_bytes()[..e.reason.len().min(u16::MAX as usize)];
    let mut v = Vec::with_capacity(19 + reason.len() + e.source.len());
    v.push(VALUE_V1);
    v.extend_from_slice(&e.created.to_be_bytes());
    v.extend_from_slice(&e.expires.to_be_bytes());
    v.extend_from_slice(&(reason.len() as u16).to_be_bytes());
    v.extend_from_slice(reason);
    v.extend_from_slice(e.source.as_bytes());
    v
}

/// The parts of a binary value, borrowed.
struct Meta<'a> {
    created: u64,
    expires: u64,
    reason: &'a [u8],
    source: &'a [u8],
}

impl<'a> Meta<'a> {
    fn read(v: &'a [u8]) -> Option<Meta<'a>> {
        if v.len() < 19 || v[0] != VALUE_V1 {
            return None;
        }
        let n = u16::from_be_bytes([v[17], v[18]]) as usize;
        let rest = &v[19..];
        Some(Meta {
            created: u64::from_be_bytes(v[1..9].try_into().ok()?),
            expires: u64::from_be_bytes(v[9..17].try_into().ok()?),
            reason: rest.get(..n)?,
            source: rest.get(n..)?,
        })
    }
}

/// `address \0 tenant \0 stream` → its three parts.
fn split_key(k: &[u8]) -> Option<(&[u8], &[u8], &[u8])> {
    let a = memchr::memchr(0, k)?;
    let rest = &k[a + 1..];
    let t = memchr::memchr(0, rest)?;
    Some((&k[..a], &rest[..t], &rest[t + 1..]))
}

impl SuppressionStore for SledStore {
    fn check(&self, q: &Lookup<'_>, now: u64) -> Result<Option<Entry>, StoreError> {
        let Ok(address) = normalize(q.address) else {
            return Ok(None);
        };
        if let Some(e) = self.erased_entry(&address)? {
            return Ok(Some(e));
        }
        Ok(self.index.check(&address, q, now))
    }

    fn add(&self, entry: &Entry) -> Result<bool, StoreError> {
        let e = keyed(entry)?;
        // An erased person is already suppressed everywhere, and their address must not be
        // written again (a bounce of mail that was in flight at the erasure, say).
        if self.erased_entry(&e.address)?.is_some() {
            return Ok(false);
        }
        let _w = self.writing();
        self.entries.insert(e.key(), SledStore::encode(&e))?;
        Ok(self.index.insert(Row::of(&e)))
    }

    fn add_new(&self, entry: &Entry, now: u64) -> Result<bool, StoreError> {
        let e = keyed(entry)?;
        if self.erased_entry(&e.address)?.is_some() {
            return Ok(false);
        }
        // Under the write lock nobody writes between the look and the insert.
        let _w = self.writing();
        if self.index.live(&e.address, &e.tenant, &e.stream, now) {
            return Ok(false);
        }
        self.entries.insert(e.key(), SledStore::encode(&e))?;
        self.index.insert(Row::of(&e));
        Ok(true)
    }

    fn add_many(&self, entries: &[Entry]) -> Result<usize, StoreError> {
        let mut rows = Vec::with_capacity(entries.len());
        for entry in entries {
            let e = keyed(entry)?;
            if self.erased_entry(&e.address)?.is_some() {
                continue;
            }
            rows.push((e.key(), e));
        }
        // In key order (the tree is walked once, left to right, instead of at random); of two
        // lines for one key the later wins, as it would one by one.
        rows.reverse();
        rows.sort_by(|a, b| a.0.cmp(&b.0));
        rows.dedup_by(|later, kept| later.0 == kept.0);
        let mut batch = sled::Batch::default();
        for (k, e) in &rows {
            batch.insert(&k[..], SledStore::encode(e));
        }
        // One batch and one index update under the write lock: how many were new is counted
        // against what every other writer left, not against a look taken before they wrote.
        let _w = self.writing();
        self.entries.apply_batch(batch)?;
        Ok(self.index.insert_many(rows.iter().map(|(_, e)| Row::of(e))))
    }

    fn remove(
        &self,
        address: &str,
        tenant: &str,
        stream: &str,
    ) -> Result<Option<Entry>, StoreError> {
        let address = normalize(address)?;
        let k = key(&address, tenant, stream);
        let _w = self.writing();
        let old = self.entries.remove(&k)?;
        self.index.remove(&address, tenant, stream);
        match old {
            Some(v) => Ok(Some(SledStore::decode(&k, &v)?)),
            None => Ok(None),
        }
    }

    fn get(&self, address: &str) -> Result<Vec<Entry>, StoreError> {
        let address = normalize(address)?;
        self.entries
            .scan_prefix(prefix_of(&address))
            .map(|kv| {
                let (k, v) = kv?;
                SledStore::decode(&k, &v)
            })
            .collect()
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
            None => Bound::Included(prefix.as_bytes().to_vec()),
        };
        let domain = filter.domain.to_lowercase();
        let mut page = Page::default();
        // A page reads at most this many keys, so a rare filter answers with a cursor instead
        // of scanning ten million entries in one request.
        let mut budget = 100_000usize.max(limit);
        for kv in self.entries.range::<Vec<u8>, _>((start, Bound::Unbounded)) {
            let (k, v) = kv?;
            if !k.starts_with(prefix.as_bytes()) {
                return Ok(page);
            }
            budget -= 1;
            let e = SledStore::decode(&k, &v)?;
            let ok = (domain.is_empty()
                || e.address.rsplit_once('@').is_some_and(|(_, d)| d == domain))
                && (filter.reason.is_empty() || e.reason == filter.reason)
                && (filter.tenant.is_empty() || e.tenant == filter.tenant);
            if ok {
                page.entries.push(e);
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
        // An erased address is not counted (that would write it down again).
        if self.erased_entry(&address)?.is_some() {
            return Ok(0);
        }
        let from = now.saturating_sub(window_secs);
        let mut count = 0u32;
        let word =
            |c: &[u8], at: usize| u64::from_be_bytes(c[at..at + 8].try_into().unwrap_or([0; 8]));
        self.soft.update_and_fetch(address.as_bytes(), |old| {
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
        self.db.flush()?;
        Ok(())
    }

    fn erase(&self, address: &str, hash: &[u8; 32], now: u64) -> Result<usize, StoreError> {
        let address = normalize(address)?;
        let _w = self.writing();
        self.erased.insert(hash, now.to_be_bytes().to_vec())?;
        self.erased_mem
            .write()
            .unwrap_or_else(|p| p.into_inner())
            .insert(*hash, now);
        let mut n = 0;
        for kv in self.entries.scan_prefix(prefix_of(&address)) {
            let (k, _) = kv?;
            self.entries.remove(&k)?;
            if let Some((_, tenant, stream)) = split_key(&k) {
                self.index.remove(
                    &address,
                    &String::from_utf8_lossy(tenant),
                    &String::from_utf8_lossy(stream),
                );
            }
            n += 1;
        }
        self.soft.remove(address.as_bytes())?;
        self.db.flush()?;
        Ok(n)
    }
}
