//! The in-memory index every suppression check reads: one fixed-size slot per entry, keyed by
//! a hash of the entry's key (the address's keyed hash, then `tenant \0 stream`), so a check
//! costs a few hash probes in memory and never touches the disk (the durable store's page-ins
//! made hits cost 50+ µs at millions of entries).
//!
//! Owns the slots, the small table of reason texts they point into, and the set of scopes
//! (`tenant \0 stream`) in use with their counts. Filled by the store that owns it
//! (`store::SqliteStore`) at open from its table and kept in step by the store's writers,
//! which hold the store's write lock across the durable write and the index update. Never
//! reads or writes the disk and never decides what goes in.
//!
//! A slot is 28 bytes (a 64-bit key, a 32-bit tag from a second, independent keyed hash, the
//! reason's number, created and expiry as u32 seconds, and the entry's 48-bit row id in the
//! store's table), about 32 bytes an entry with the tables' spare capacity (64 tables, so that
//! growing one never holds two copies of the whole index). The row id is how
//! a replace, a removal or a listing finds the entry's row without a second on-disk index
//! (random keyed-hash keys would scatter every insert over a 10M-entry B-tree). Every entry of
//! one address is found by probing each scope in use ([`Index::rows_of_person`]): scopes are
//! tenants times streams, a few hundred where millions of entries share them. The 96 bits of
//! two SipHash-1-3 hashes with keys drawn at start make a false hit (an address refused
//! because another one is listed) a 1 in 2^96 / entries event per probe, and unforgeable from
//! outside (the keys are never shown). Hand-written rather than a crate: what is kept per
//! entry (a few bytes beside the hash) is the point, and a general map of strings would hold
//! the address itself, several times the size.

use std::collections::HashMap;
use std::hash::{BuildHasher, Hasher, RandomState};
use std::sync::RwLock;

use super::store::{ALL_TENANTS, Entry, Lookup};

/// Reason number meaning "the reason text did not fit in the table" (it then reads as
/// `manual`); the table holds 65,535 different reasons before that happens.
const REASON_OVERFLOW: u16 = u16::MAX;

/// What is kept of one entry (20 bytes, 4-aligned, so a bucket with its [`Key`] is 28).
#[derive(Debug, Clone, Copy)]
struct Slot {
    tag: u32,
    created: u32,
    /// 0 = never; saturated at u32::MAX (year 2106).
    expires: u32,
    reason: u16,
    /// The row id in the store's table: high 16 bits, then low 32 bits.
    row_hi: u16,
    row_lo: u32,
}

impl Slot {
    fn row(&self) -> u64 {
        (u64::from(self.row_hi) << 32) | u64::from(self.row_lo)
    }
}

/// The largest row id a slot holds (2^48 - 1; SQLite hands out row ids one above the
/// largest, so a table reaches it only after 2^48 inserts).
pub const MAX_ROW: u64 = (1 << 48) - 1;

/// Tables the slots are spread over. One table of 10M slots doubles from 243 to 486 MB in one
/// step, both held while it moves every slot under the write lock (checks wait for the whole
/// move); 64 tables grow one at a time, each 1/64 of that.
const SHARDS: usize = 64;

/// The table of a key: bits 40..46, which neither the table's bucket index (the low bits) nor
/// its control byte (the top 7 bits) uses, so each table still sees uniform hashes.
fn shard(key: u64) -> usize {
    (key >> 40) as usize & (SHARDS - 1)
}

/// A slot's 64-bit key as two u32 (4-aligned, so a bucket has no padding).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Key([u32; 2]);

impl Key {
    fn new(k: u64) -> Key {
        Key([k as u32, (k >> 32) as u32])
    }
}

impl std::hash::Hash for Key {
    fn hash<H: Hasher>(&self, state: &mut H) {
        state.write_u64(u64::from(self.0[0]) | (u64::from(self.0[1]) << 32));
    }
}

/// Keys are already uniform hashes: the table uses them as they are.
#[derive(Default, Clone, Copy)]
struct PassThrough(u64);

impl Hasher for PassThrough {
    fn finish(&self) -> u64 {
        self.0
    }
    fn write(&mut self, bytes: &[u8]) {
        // Only u64 keys are hashed (write_u64); fold anything else in, for completeness.
        for b in bytes {
            self.0 = self.0.rotate_left(8) ^ u64::from(*b);
        }
    }
    fn write_u64(&mut self, n: u64) {
        self.0 = n;
    }
}

#[derive(Default, Clone, Copy)]
struct BuildPassThrough;

impl BuildHasher for BuildPassThrough {
    type Hasher = PassThrough;
    fn build_hasher(&self) -> PassThrough {
        PassThrough(0)
    }
}

struct Inner {
    /// [`SHARDS`] tables, an entry in the one its key's bits 40..46 name ([`shard`]).
    slots: Vec<HashMap<Key, Slot, BuildPassThrough>>,
    reasons: Vec<String>,
    reason_ids: HashMap<String, u16>,
    /// `tenant \0 stream` → how many entries have that scope.
    scopes: HashMap<String, u64>,
    /// Where a scope's text is put together (no allocation per insert).
    scope_buf: String,
}

/// The index (one per store). Lookups share a read lock; the store's writers take the write
/// lock for a batch at a time (std `RwLock`: sections are short and never await).
pub struct Index {
    key: RandomState,
    tag: RandomState,
    inner: RwLock<Inner>,
}

/// One entry's fields as the index takes them (the address as its keyed hash).
pub struct Row<'a> {
    pub person: &'a [u8; 32],
    pub tenant: &'a str,
    pub stream: &'a str,
    pub reason: &'a str,
    pub created: u64,
    pub expires: u64,
    /// Its row id in the store's table (at most [`MAX_ROW`]).
    pub row: u64,
}

/// One entry whose place was computed with [`Index::at`], as a writer puts it.
pub struct Put<'a> {
    pub at: At,
    pub tenant: &'a str,
    pub stream: &'a str,
    pub reason: &'a str,
    pub created: u64,
    pub expires: u64,
    pub row: u64,
}

/// The place of one entry in the index: its 64-bit key and 32-bit tag ([`Index::at`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct At {
    key: u64,
    tag: u32,
}

fn secs32(s: u64) -> u32 {
    u32::try_from(s).unwrap_or(u32::MAX)
}

impl Default for Index {
    fn default() -> Index {
        Index::with_capacity(0)
    }
}

impl Index {
    /// An empty index with room for `n` entries.
    pub fn with_capacity(n: usize) -> Index {
        Index {
            key: RandomState::new(),
            tag: RandomState::new(),
            inner: RwLock::new(Inner {
                slots: (0..SHARDS)
                    .map(|_| {
                        HashMap::with_capacity_and_hasher(n.div_ceil(SHARDS), BuildPassThrough)
                    })
                    .collect(),
                reasons: Vec::new(),
                reason_ids: HashMap::new(),
                scopes: HashMap::new(),
                scope_buf: String::new(),
            }),
        }
    }

    /// The two hash states after the person (the address's keyed hash): a check hashes it
    /// once and each candidate scope from there.
    fn address_state(&self, person: &[u8; 32]) -> (impl Hasher + Clone, impl Hasher + Clone) {
        let mut k = self.key.build_hasher();
        let mut t = self.tag.build_hasher();
        for h in [&mut k as &mut dyn Hasher, &mut t] {
            h.write(person);
        }
        (k, t)
    }

    fn finish(
        state: &(impl Hasher + Clone, impl Hasher + Clone),
        tenant: &str,
        stream: &str,
    ) -> (u64, u32) {
        let (mut k, mut t) = (state.0.clone(), state.1.clone());
        for h in [&mut k as &mut dyn Hasher, &mut t] {
            h.write(tenant.as_bytes());
            h.write_u8(0);
            h.write(stream.as_bytes());
        }
        (k.finish(), t.finish() as u32)
    }

    fn hash(&self, person: &[u8; 32], tenant: &str, stream: &str) -> (u64, u32) {
        Index::finish(&self.address_state(person), tenant, stream)
    }

    fn read(&self) -> std::sync::RwLockReadGuard<'_, Inner> {
        // A writer that panicked left whole slots (each insert is one map operation).
        self.inner.read().unwrap_or_else(|p| p.into_inner())
    }

    fn write(&self) -> std::sync::RwLockWriteGuard<'_, Inner> {
        self.inner.write().unwrap_or_else(|p| p.into_inner())
    }

    /// Where the entry (person, tenant, stream) sits in the index. A writer computes it once,
    /// outside every lock (an import does so on several threads), and hands it to
    /// [`Index::rows_of`], [`Index::live`] and [`Index::insert_at`].
    pub fn at(&self, person: &[u8; 32], tenant: &str, stream: &str) -> At {
        let (key, tag) = self.hash(person, tenant, stream);
        At { key, tag }
    }

    /// Insert or replace many entries; returns how many were not in the index before.
    /// Hashing happens before the write lock is taken.
    #[cfg(test)]
    pub fn insert_many<'a>(&self, rows: impl IntoIterator<Item = Row<'a>>) -> usize {
        let hashed: Vec<Put<'a>> = rows.into_iter().map(|r| self.put_of(r)).collect();
        self.insert_at(hashed)
    }

    fn put_of<'a>(&self, r: Row<'a>) -> Put<'a> {
        Put {
            at: self.at(r.person, r.tenant, r.stream),
            tenant: r.tenant,
            stream: r.stream,
            reason: r.reason,
            created: r.created,
            expires: r.expires,
            row: r.row,
        }
    }

    /// Insert one entry while the index is still owned by its loader (no lock taken): the
    /// store's open, millions of times. True if it was not there.
    pub fn load(&mut self, r: Row<'_>) -> bool {
        let put = self.put_of(r);
        let inner = self.inner.get_mut().unwrap_or_else(|p| p.into_inner());
        inner.put(put)
    }

    /// Insert or replace entries whose places were computed with [`Index::at`]. Returns how
    /// many were not in the index before.
    pub fn insert_at<'a>(&self, rows: impl IntoIterator<Item = Put<'a>>) -> usize {
        let mut g = self.write();
        let inner = &mut *g;
        rows.into_iter().filter(|p| inner.put_ref(p)).count()
    }

    /// For each place, the row id of the entry there (live or not); one read lock for all.
    pub fn rows_of(&self, ats: impl IntoIterator<Item = At>) -> Vec<Option<u64>> {
        let g = self.read();
        ats.into_iter().map(|at| g.row_at(at)).collect()
    }

    /// Insert or replace one entry; true if it was not there.
    #[cfg(test)]
    pub fn insert(&self, row: Row<'_>) -> bool {
        self.insert_many([row]) == 1
    }

    /// Forget one entry; its row id if it was there.
    pub fn remove(&self, person: &[u8; 32], tenant: &str, stream: &str) -> Option<u64> {
        let at = self.at(person, tenant, stream);
        let mut g = self.write();
        let row = g.row_at(at)?;
        g.slots[shard(at.key)].remove(&Key::new(at.key));
        g.scope_gone(tenant, stream);
        Some(row)
    }

    /// Every entry of `person` (any scope, expired ones included): (tenant, stream, row id),
    /// found by probing each scope in use.
    pub fn rows_of_person(&self, person: &[u8; 32]) -> Vec<(String, String, u64)> {
        let state = self.address_state(person);
        let g = self.read();
        let mut out = Vec::new();
        for scope in g.scopes.keys() {
            let (tenant, stream) = scope.split_once('\0').unwrap_or((scope, ""));
            let (key, tag) = Index::finish(&state, tenant, stream);
            if let Some(row) = g.row_at(At { key, tag }) {
                out.push((tenant.to_string(), stream.to_string(), row));
            }
        }
        out
    }

    /// Whether the entry at `at` is there, and live at `now`.
    pub fn live(&self, at: At, now: u64) -> bool {
        let g = self.read();
        g.slots[shard(at.key)]
            .get(&Key::new(at.key))
            .is_some_and(|s| s.tag == at.tag && (s.expires == 0 || u64::from(s.expires) > now))
    }

    pub fn len(&self) -> usize {
        self.read().slots.iter().map(HashMap::len).sum()
    }

    /// The live entry that stops a send to `person` (the keyed hash of `address`, which the
    /// answer carries) described by `q`: the entry for every tenant and stream if there is
    /// one, else the first in key order of the scopes that cover `q`. Its `source` is empty
    /// (the index does not keep it).
    pub fn check(
        &self,
        person: &[u8; 32],
        address: String,
        q: &Lookup<'_>,
        now: u64,
    ) -> Option<Entry> {
        let mut streams: [(&str, &str); 4] = [("", ""); 4];
        let mut ns = 1;
        // In key order of the stream text: "", campaign:, class:, list:.
        for (prefix, name) in [
            ("campaign:", q.campaign),
            ("class:", q.class),
            ("list:", q.list),
        ] {
            if !name.is_empty() {
                streams[ns] = (prefix, name);
                ns += 1;
            }
        }
        let mut tenants: [&str; 2] = [ALL_TENANTS, q.tenant];
        let nt = if q.tenant.is_empty() || q.tenant == ALL_TENANTS {
            1
        } else {
            if q.tenant.as_bytes() < ALL_TENANTS.as_bytes() {
                tenants.swap(0, 1);
            }
            2
        };
        // The global scope first (it wins), then the others in key order.
        let mut order: [(usize, usize); 8] = [(0, 0); 8];
        let mut n = 0;
        let global = tenants[..nt].iter().position(|t| *t == ALL_TENANTS)?;
        order[n] = (global, 0);
        n += 1;
        for ti in 0..nt {
            for si in 0..ns {
                if (ti, si) != (global, 0) {
                    order[n] = (ti, si);
                    n += 1;
                }
            }
        }
        let state = self.address_state(person);
        let mut stream_text = String::new();
        let g = self.read();
        for &(ti, si) in &order[..n] {
            let (prefix, name) = streams[si];
            stream_text.clear();
            stream_text.push_str(prefix);
            stream_text.push_str(name);
            let (k, tag) = Index::finish(&state, tenants[ti], &stream_text);
            let Some(s) = g.slots[shard(k)].get(&Key::new(k)) else {
                continue;
            };
            if s.tag != tag || (s.expires != 0 && u64::from(s.expires) <= now) {
                continue;
            }
            return Some(Entry {
                address,
                tenant: tenants[ti].to_string(),
                stream: stream_text,
                reason: g.reason(s.reason).to_string(),
                source: String::new(),
                created: u64::from(s.created),
                expires: u64::from(s.expires),
            });
        }
        None
    }
}

impl Inner {
    fn put(&mut self, p: Put<'_>) -> bool {
        self.put_ref(&p)
    }

    /// Insert or replace; true if new (then its scope counts one more).
    fn put_ref(&mut self, p: &Put<'_>) -> bool {
        let reason = self.reason_id(p.reason);
        let row = p.row.min(MAX_ROW);
        let slot = Slot {
            tag: p.at.tag,
            created: secs32(p.created),
            expires: secs32(p.expires),
            reason,
            row_hi: (row >> 32) as u16,
            row_lo: row as u32,
        };
        let new = self.slots[shard(p.at.key)]
            .insert(Key::new(p.at.key), slot)
            .is_none();
        if new {
            self.scope_buf.clear();
            self.scope_buf.push_str(p.tenant);
            self.scope_buf.push('\0');
            self.scope_buf.push_str(p.stream);
            match self.scopes.get_mut(self.scope_buf.as_str()) {
                Some(n) => *n += 1,
                None => {
                    self.scopes.insert(self.scope_buf.clone(), 1);
                }
            }
        }
        new
    }

    fn scope_gone(&mut self, tenant: &str, stream: &str) {
        let scope = format!("{tenant}\0{stream}");
        if let Some(n) = self.scopes.get_mut(&scope) {
            *n -= 1;
            if *n == 0 {
                self.scopes.remove(&scope);
            }
        }
    }

    fn row_at(&self, at: At) -> Option<u64> {
        self.slots[shard(at.key)]
            .get(&Key::new(at.key))
            .filter(|s| s.tag == at.tag)
            .map(Slot::row)
    }

    fn reason_id(&mut self, reason: &str) -> u16 {
        if let Some(id) = self.reason_ids.get(reason) {
            return *id;
        }
        let Ok(id) = u16::try_from(self.reasons.len()) else {
            return REASON_OVERFLOW;
        };
        if id == REASON_OVERFLOW {
            return REASON_OVERFLOW;
        }
        self.reasons.push(reason.to_string());
        self.reason_ids.insert(reason.to_string(), id);
        id
    }

    fn reason(&self, id: u16) -> &str {
        self.reasons
            .get(usize::from(id))
            .map_or("manual", String::as_str)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const A: [u8; 32] = [0xa; 32];
    const B: [u8; 32] = [0xb; 32];

    fn row<'a>(person: &'a [u8; 32], tenant: &'a str, stream: &'a str, reason: &'a str) -> Row<'a> {
        Row {
            person,
            tenant,
            stream,
            reason,
            created: 7,
            expires: 0,
            row: 1,
        }
    }

    #[test]
    fn scopes_are_tried_global_first_then_in_key_order() {
        let ix = Index::default();
        assert_eq!(
            ix.insert_many([
                row(&A, "acme", "", "unsubscribe"),
                row(&A, "*", "class:promotional", "manual"),
                row(&A, "acme", "list:news", "unsubscribe"),
            ]),
            3
        );
        let q = |tenant, class, list| Lookup {
            address: "a@x.test",
            tenant,
            class,
            list,
            campaign: "",
        };
        let hit = |l: Lookup<'_>| {
            ix.check(&A, "a@x.test".into(), &l, 10)
                .map(|e| e.scope_text())
        };
        assert_eq!(
            hit(q("acme", "promotional", "")).as_deref(),
            Some("* class:promotional")
        );
        assert_eq!(
            hit(q("acme", "transactional", "news")).as_deref(),
            Some("acme")
        );
        assert_eq!(hit(q("zeta", "transactional", "news")), None);
        assert_eq!(hit(q("", "", "news")), None);
        assert!(ix.insert(row(&A, "*", "", "complaint")));
        assert_eq!(hit(q("", "", "")).as_deref(), Some("*"));
        let mut scopes: Vec<_> = ix
            .rows_of_person(&A)
            .into_iter()
            .map(|(t, s, _)| format!("{t} {s}"))
            .collect();
        scopes.sort();
        assert_eq!(
            scopes,
            ["* ", "* class:promotional", "acme ", "acme list:news"]
        );
        assert_eq!(ix.remove(&A, "*", ""), Some(1));
        assert_eq!(ix.remove(&A, "*", ""), None);
        assert_eq!(ix.len(), 3);
        assert!(ix.rows_of_person(&B).is_empty());
    }

    #[test]
    fn expiry_and_replacement() {
        let ix = Index::default();
        ix.insert(Row {
            expires: 100,
            ..row(&B, "*", "", "soft-bounce")
        });
        let q = Lookup {
            address: "b@x.test",
            ..Lookup::default()
        };
        assert_eq!(
            ix.check(&B, "b@x.test".into(), &q, 99).map(|e| e.expires),
            Some(100)
        );
        assert!(ix.check(&B, "b@x.test".into(), &q, 100).is_none());
        assert!(!ix.live(ix.at(&B, "*", ""), 100));
        assert!(ix.live(ix.at(&B, "*", ""), 99));
        assert_eq!(
            ix.rows_of([
                ix.at(&B, "*", ""),
                ix.at(&B, "acme", ""),
                ix.at(&A, "*", "")
            ]),
            vec![Some(1), None, None]
        );
        let far = Row {
            row: MAX_ROW,
            ..row(&A, "*", "", "manual")
        };
        assert!(ix.insert(far));
        assert_eq!(ix.rows_of([ix.at(&A, "*", "")]), vec![Some(MAX_ROW)]);
        assert!(!ix.insert(row(&B, "*", "", "hard-bounce")), "replaced");
        let e = ix.check(&B, "b@x.test".into(), &q, 100).expect("hit");
        assert_eq!(
            (e.reason.as_str(), e.created, e.expires),
            ("hard-bounce", 7, 0)
        );
    }
}
