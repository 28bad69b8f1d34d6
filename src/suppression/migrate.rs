//! Migration of suppression stores of the earlier layouts into the SQLite one, and the only
//! sled code left in suppression (reading those old stores):
//! - the sled tree (`tree/` in `[suppression] path`: keyed-hash keys, sealed addresses, the
//!   `person-keys` slots; the layout until sled's import cost and memory at millions of
//!   entries replaced it): its rows are copied as they are (same key and value form, same
//!   slots), in one transaction;
//! - the clear layout before it (a sled database directly in `[suppression] path`, keyed by
//!   clear `address \0 tenant \0 stream`): every entry is added again, hashed and sealed.
//!
//! Owns: recognising the old files, copying every entry, soft-bounce count and erasure into
//! the new store, and deleting the old files once the copy is durable. Runs once, at open,
//! before anything reads the store; says what it did in the log.
//!
//! Crash safety: both copies are idempotent (the tree's copy replaces whatever an earlier,
//! interrupted run left in the tables, in the same transaction; the clear layout's adds
//! replace by key, reusing slots), so a migration cut short is simply run again from the old
//! files at the next start. Once the copy is durable a marker file is written
//! (`migrated-from-sled`, `migrated-from-clear`), then the old files are deleted, then the
//! marker: a start that finds the marker only finishes the deletion (the old files may be
//! half gone and must not be read again).
//! Never does: keep the old files (the clear layout holds addresses in clear), or guess at
//! what it cannot read (an unreadable entry stays refused in its scope, reason `unreadable`).

use std::path::Path;

use rusqlite::Connection;

use super::store::{Entry, SqliteStore, StoreError, SuppressionStore, normalize};

/// How long [`open_sled`] waits for a lock left by this process's own earlier handle.
const SLED_LOCK_WAIT: std::time::Duration = std::time::Duration::from_secs(2);

/// Open a sled database, waiting up to [`SLED_LOCK_WAIT`] while its file lock is held.
///
/// sled 0.34 releases its `flock` from background threads some milliseconds after the last
/// handle is dropped (spacejam/sled#1234, #1289), so a store closed and opened again in one
/// process (tests) can find its own lock still held. Another process holding the directory
/// (a second Gannet on the same data directory) holds it for its whole life, so that still
/// fails, only later.
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

/// The sled tree of the layout before SQLite, and its marker.
const TREE_DIR: &str = "tree";
const TREE_MARKER: &str = "migrated-from-sled";

/// Copy the sled tree in `path/tree` (if any) into the SQLite tables of `conn`, before the
/// store loads its index from them; then delete the tree.
pub(super) fn from_sled_tree(path: &Path, conn: &mut Connection) -> Result<(), StoreError> {
    let tree = path.join(TREE_DIR);
    let marker = path.join(TREE_MARKER);
    let fail = |message: String| StoreError::Migrate {
        path: path.to_path_buf(),
        message,
    };
    if !marker.exists() {
        if !tree.exists() {
            return Ok(());
        }
        tracing::warn!(path = %tree.display(), "suppression store in the sled layout: copying it into SQLite (list.sqlite)");
        let started = std::time::Instant::now();
        let counts = copy_tree(&tree, conn).map_err(fail)?;
        write_marker(&marker, path).map_err(|e| fail(e.to_string()))?;
        tracing::warn!(
            entries = counts.0,
            soft_bounce_counts = counts.1,
            erasures = counts.2,
            ms = started.elapsed().as_millis() as u64,
            "suppression store copied from sled into SQLite; deleting the sled tree"
        );
    }
    if tree.exists() {
        std::fs::remove_dir_all(&tree).map_err(|e| {
            fail(format!(
                "cannot delete the old sled tree {}: {e}",
                tree.display()
            ))
        })?;
    }
    sync_dir(path).map_err(|e| fail(e.to_string()))?;
    std::fs::remove_file(&marker).map_err(|e| fail(e.to_string()))?;
    sync_dir(path).map_err(|e| fail(e.to_string()))?;
    Ok(())
}

/// Copy the tree's rows as they are, in one transaction that first empties the tables (what
/// an interrupted earlier copy left); (entries, soft-bounce counts, erasures).
fn copy_tree(tree: &Path, conn: &mut Connection) -> Result<(usize, usize, usize), String> {
    let old = open_sled(&sled::Config::new().path(tree).cache_capacity(64 << 20))
        .map_err(|e| format!("cannot open the sled tree {}: {e}", tree.display()))?;
    let sql = |e: rusqlite::Error| e.to_string();
    let sled = |e: sled::Error| format!("reading the sled tree: {e}");
    let tx = conn.transaction().map_err(sql)?;
    tx.execute_batch("DELETE FROM entries; DELETE FROM soft_bounces; DELETE FROM erased;")
        .map_err(sql)?;
    let mut n = 0usize;
    {
        let mut insert = tx
            .prepare("INSERT INTO entries (k, v) VALUES (?1, ?2)")
            .map_err(sql)?;
        for kv in old.open_tree("entries").map_err(sled)?.iter() {
            let (k, v) = kv.map_err(sled)?;
            insert.execute((&k[..], &v[..])).map_err(sql)?;
            n += 1;
        }
    }
    let mut soft = 0usize;
    for kv in old.open_tree("soft_bounce_attempts").map_err(sled)?.iter() {
        let (k, v) = kv.map_err(sled)?;
        tx.execute(
            "INSERT OR REPLACE INTO soft_bounces (person, records) VALUES (?1, ?2)",
            (&k[..], &v[..]),
        )
        .map_err(sql)?;
        soft += 1;
    }
    let mut erased = 0usize;
    for kv in old.open_tree("erased").map_err(sled)?.iter() {
        let (k, v) = kv.map_err(sled)?;
        let at = u64::from_be_bytes(v[..].try_into().unwrap_or([0; 8]));
        tx.execute(
            "INSERT OR REPLACE INTO erased (person, at) VALUES (?1, ?2)",
            (&k[..], at as i64),
        )
        .map_err(sql)?;
        erased += 1;
    }
    tx.execute(
        "INSERT OR REPLACE INTO meta (k, v) VALUES ('entries', ?1)",
        [n as i64],
    )
    .map_err(sql)?;
    tx.commit().map_err(sql)?;
    Ok((n, soft, erased))
}

/// Files and directories sled 0.34 keeps directly in its path.
fn old_files(path: &Path) -> Vec<std::path::PathBuf> {
    let Ok(rd) = std::fs::read_dir(path) else {
        return Vec::new();
    };
    rd.flatten()
        .filter(|e| {
            let name = e.file_name();
            let name = name.to_string_lossy();
            name == "conf" || name == "db" || name == "blobs" || name.starts_with("snap.")
        })
        .map(|e| e.path())
        .collect()
}

const MARKER: &str = "migrated-from-clear";
const CHUNK: usize = 10_000;

/// Migrate the old layout in `path` (if any) into `store`.
pub(super) fn from_clear_layout(path: &Path, store: &SqliteStore) -> Result<(), StoreError> {
    let marker = path.join(MARKER);
    let fail = |message: String| StoreError::Migrate {
        path: path.to_path_buf(),
        message,
    };
    if !marker.exists() {
        if !path.join("db").exists() {
            return Ok(());
        }
        tracing::warn!(path = %path.display(), "suppression store in the clear-address layout: migrating it to keyed hashes and sealed addresses");
        let counts = copy(path, store).map_err(|e| fail(e.to_string()))?;
        store.flush()?;
        write_marker(&marker, path).map_err(|e| fail(e.to_string()))?;
        tracing::warn!(
            entries = counts.0,
            soft_bounce_counts = counts.1,
            erasures = counts.2,
            skipped = counts.3,
            "suppression store migrated: addresses are now kept only sealed, keyed by their keyed hash; the old files (addresses in clear) are being deleted"
        );
    }
    for f in old_files(path) {
        let r = if f.is_dir() {
            std::fs::remove_dir_all(&f)
        } else {
            std::fs::remove_file(&f)
        };
        r.map_err(|e| fail(format!("cannot delete the old file {}: {e}", f.display())))?;
    }
    sync_dir(path).map_err(|e| fail(e.to_string()))?;
    std::fs::remove_file(&marker).map_err(|e| fail(e.to_string()))?;
    sync_dir(path).map_err(|e| fail(e.to_string()))?;
    Ok(())
}

fn sync_dir(path: &Path) -> std::io::Result<()> {
    std::fs::File::open(path)?.sync_all()
}

/// Create the marker file `marker` in `dir`, durably (file and directory synced): from here on
/// the copy is complete and only the old files' deletion may remain.
fn write_marker(marker: &Path, dir: &Path) -> std::io::Result<()> {
    std::fs::File::create(marker)?.sync_all()?;
    sync_dir(dir)
}

/// Copy everything; (entries, soft-bounce counts, erasures, skipped keys).
fn copy(path: &Path, store: &SqliteStore) -> Result<(usize, usize, usize, usize), sled::Error> {
    let old = open_sled(&sled::Config::new().path(path).cache_capacity(64 << 20))?;
    let mut skipped = 0;
    let mut n = 0;
    let mut batch = Vec::with_capacity(CHUNK);
    let entries = old.open_tree("entries")?;
    for kv in entries.iter() {
        let (k, v) = kv?;
        match decode_v1(&k, &v) {
            Some(e) => batch.push(e),
            None => {
                tracing::error!(key = %String::from_utf8_lossy(&k).replace('\0', " "), "suppression entry of the old layout has no readable address; not migrated");
                skipped += 1;
            }
        }
        if batch.len() == CHUNK {
            n += add(store, &mut batch, &mut skipped);
        }
    }
    n += add(store, &mut batch, &mut skipped);
    let mut soft = 0;
    for kv in old.open_tree("soft_bounce_attempts")?.iter() {
        let (k, v) = kv?;
        let Some(address) = std::str::from_utf8(&k).ok().and_then(|a| normalize(a).ok()) else {
            skipped += 1;
            continue;
        };
        if store.put_soft_raw(&store.person_of(&address), &v).is_ok() {
            soft += 1;
        }
    }
    let mut erased = 0;
    for kv in old.open_tree("erased")?.iter() {
        let (k, v) = kv?;
        if let Ok(hash) = <[u8; 32]>::try_from(&k[..]) {
            let at = u64::from_be_bytes(v[..].try_into().unwrap_or([0; 8]));
            if store.put_erased_raw(&hash, at).is_ok() {
                erased += 1;
            }
        }
    }
    Ok((n, soft, erased, skipped))
}

/// Add a batch (entries whose address or tenant the store refuses are skipped, logged).
fn add(store: &SqliteStore, batch: &mut Vec<Entry>, skipped: &mut usize) -> usize {
    let mut n = 0;
    if let Err(e) = store.add_many(batch) {
        // One bad line spoils the batch: retry one by one.
        tracing::debug!(error = %e, "migration batch refused; adding one by one");
        for entry in batch.iter() {
            match store.add(entry) {
                Ok(_) => n += 1,
                Err(e) => {
                    tracing::error!(error = %e, "suppression entry of the old layout not migrated");
                    *skipped += 1;
                }
            }
        }
    } else {
        n = batch.len();
    }
    batch.clear();
    n
}

/// An entry of the old layout: key `address \0 tenant \0 stream`, value `0x01, created,
/// expires, reason length (u16), reason, source` or compact JSON. An entry whose key reads but
/// whose value does not is kept refusing its scope (reason `unreadable`).
fn decode_v1(k: &[u8], v: &[u8]) -> Option<Entry> {
    let mut parts = k.splitn(3, |b| *b == 0);
    let text = |b: Option<&[u8]>| std::str::from_utf8(b?).ok().map(str::to_string);
    let (address, tenant, stream) = (
        text(parts.next())?,
        text(parts.next())?,
        text(parts.next())?,
    );
    let unreadable = Entry {
        address: address.clone(),
        tenant: tenant.clone(),
        stream: stream.clone(),
        reason: "unreadable".into(),
        source: String::new(),
        created: 0,
        expires: 0,
    };
    if v.first() == Some(&b'{') {
        return Some(serde_json::from_slice(v).unwrap_or(unreadable));
    }
    let read = || -> Option<Entry> {
        if v.len() < 19 || v[0] != 1 {
            return None;
        }
        let n = u16::from_be_bytes([v[17], v[18]]) as usize;
        let rest = &v[19..];
        Some(Entry {
            address: address.clone(),
            tenant: tenant.clone(),
            stream: stream.clone(),
            reason: String::from_utf8(rest.get(..n)?.to_vec()).ok()?,
            source: String::from_utf8(rest.get(n..)?.to_vec()).ok()?,
            created: u64::from_be_bytes(v[1..9].try_into().ok()?),
            expires: u64::from_be_bytes(v[9..17].try_into().ok()?),
        })
    };
    Some(read().unwrap_or(unreadable))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sendlog::MasterKey;
    use crate::suppression::Lookup;

    /// A store written by the earlier layout (clear keys, binary and JSON values, a soft
    /// bounce count, an erasure, an unreadable value) opens: every entry is found with its
    /// scope, reason, source and expiry; the counts and the erasure carry over; and no file
    /// of the directory holds an address in clear any more.
    #[test]
    fn an_old_store_is_migrated_and_its_clear_files_deleted() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("suppression");
        let key = MasterKey::from_bytes([9; 32]);
        {
            let old = sled::Config::new().path(&path).open().unwrap();
            let entries = old.open_tree("entries").unwrap();
            let mut v = vec![1u8];
            v.extend_from_slice(&5u64.to_be_bytes());
            v.extend_from_slice(&0u64.to_be_bytes());
            v.extend_from_slice(&11u16.to_be_bytes());
            v.extend_from_slice(b"hard-bounceapi:ops");
            entries.insert(b"alice.old@x.test\0*\0", v).unwrap();
            let json = Entry {
                address: "json.old@x.test".into(),
                tenant: "acme".into(),
                stream: "list:news".into(),
                reason: "unsubscribe".into(),
                source: "evt".into(),
                created: 6,
                expires: 0,
            };
            entries
                .insert(
                    b"json.old@x.test\0acme\0list:news",
                    serde_json::to_vec(&json).unwrap(),
                )
                .unwrap();
            entries
                .insert(b"bad.old@x.test\0acme\0", b"\x07??".to_vec())
                .unwrap();
            let mut rec = 100u64.to_be_bytes().to_vec();
            rec.extend_from_slice(&1u64.to_be_bytes());
            old.open_tree("soft_bounce_attempts")
                .unwrap()
                .insert(b"soft.old@x.test", rec)
                .unwrap();
            old.open_tree("erased")
                .unwrap()
                .insert(
                    key.address_hash("gone.old@x.test"),
                    77u64.to_be_bytes().to_vec(),
                )
                .unwrap();
            old.flush().unwrap();
        }
        let s = SqliteStore::open(&path, key.clone()).unwrap();
        assert_eq!(s.len(), 3);
        let got = s.get("alice.old@x.test").unwrap();
        assert_eq!(
            (
                got[0].reason.as_str(),
                got[0].source.as_str(),
                got[0].created
            ),
            ("hard-bounce", "api:ops", 5)
        );
        assert_eq!(s.get("json.old@x.test").unwrap()[0].stream, "list:news");
        let hit = |a: &str, tenant: &str| {
            s.check(
                &Lookup {
                    address: a,
                    tenant,
                    class: "c",
                    list: "news",
                    ..Lookup::default()
                },
                10,
            )
            .unwrap()
            .map(|e| e.reason)
        };
        assert_eq!(hit("bad.old@x.test", "acme").as_deref(), Some("unreadable"));
        assert_eq!(
            hit("json.old@x.test", "acme").as_deref(),
            Some("unsubscribe")
        );
        assert_eq!(hit("gone.old@x.test", "zeta").as_deref(), Some("erasure"));
        assert_eq!(s.soft_bounce("soft.old@x.test", 200, 1000, 2).unwrap(), 2);
        drop(s);
        // Nothing of the old layout is left, and no file holds an address in clear.
        for name in ["conf", "db", "blobs", MARKER] {
            assert!(!path.join(name).exists(), "{name} left");
        }
        let mut stack = vec![path.clone()];
        while let Some(d) = stack.pop() {
            for e in std::fs::read_dir(&d).unwrap().flatten() {
                if e.path().is_dir() {
                    stack.push(e.path());
                } else {
                    let bytes = std::fs::read(e.path()).unwrap();
                    assert!(
                        !bytes.windows(6).any(|w| w == b".old@x"),
                        "{} holds an address",
                        e.path().display()
                    );
                }
            }
        }
        // Opening again does not migrate again and finds the same list.
        let s = SqliteStore::open(&path, key).unwrap();
        assert_eq!(s.len(), 3);
        assert_eq!(s.get("alice.old@x.test").unwrap().len(), 1);
    }
}

#[cfg(test)]
mod tree_tests {
    use super::*;
    use crate::sendlog::MasterKey;
    use crate::suppression::store::{encode, key};
    use crate::suppression::{ERASED_REASON, ListFilter, Lookup};

    fn entry(address: &str, tenant: &str, stream: &str, reason: &str, expires: u64) -> Entry {
        Entry {
            address: address.into(),
            tenant: tenant.into(),
            stream: stream.into(),
            reason: reason.into(),
            source: "evt-1".into(),
            created: 9,
            expires,
        }
    }

    /// Write a store of the sled-tree layout the way its writer did: a slot per entry from
    /// the `person-keys` file, its salt written and synced, the address sealed under that
    /// slot's key, and the row (keyed hash ‖ tenant \0 stream → value form 2) in tree
    /// `entries`; soft-bounce records and erasures in their trees.
    fn write_tree_layout(path: &Path, master: &MasterKey, entries: &[Entry]) {
        let slots =
            crate::suppression::slots::Slots::open(&path.join("person-keys"), master.clone())
                .unwrap();
        slots.set_used(&[u64::MAX; 64]);
        let db = sled::Config::new()
            .path(path.join(TREE_DIR))
            .open()
            .unwrap();
        let tree = db.open_tree("entries").unwrap();
        for e in entries {
            let person = master.lowercase_address_hash(&e.address);
            let slot = slots.allocate(1)[0];
            let (salt, sealed) = slots.seal_address(&person, &e.address);
            slots.write(&mut [(slot, salt)]).unwrap();
            tree.insert(key(&person, &e.tenant, &e.stream), encode(e, slot, &sealed))
                .unwrap();
        }
        let mut k = master.lowercase_address_hash("bad@x.test").to_vec();
        k.extend_from_slice(b"acme\0");
        tree.insert(k, b"\x07??".to_vec()).unwrap();
        let mut rec = 100u64.to_be_bytes().to_vec();
        rec.extend_from_slice(&1u64.to_be_bytes());
        db.open_tree("soft_bounce_attempts")
            .unwrap()
            .insert(master.lowercase_address_hash("soft@x.test"), rec)
            .unwrap();
        db.open_tree("erased")
            .unwrap()
            .insert(
                master.lowercase_address_hash("gone@x.test"),
                77u64.to_be_bytes().to_vec(),
            )
            .unwrap();
        slots.sync().unwrap();
        db.flush().unwrap();
    }

    /// A store of the sled-tree layout (written as its writer wrote it) opens as SQLite:
    /// every entry, scope, reason, source, expiry, sealed address, soft-bounce count and
    /// erasure carries over, an unreadable row stays refused, and the tree is deleted. A copy
    /// cut short after its commit (the tree still there, no marker) copies again without
    /// doubling anything; a marker left by a cut deletion only finishes the deletion.
    #[test]
    fn a_sled_tree_store_is_copied_into_sqlite_once() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("suppression");
        std::fs::create_dir_all(&path).unwrap();
        let master = MasterKey::from_bytes([4; 32]);
        let old = vec![
            entry("alice@x.test", "*", "", "hard-bounce", 0),
            entry("alice@x.test", "acme", "list:news", "unsubscribe", 500),
            entry("bob@x.test", "acme", "class:promotional", "complaint", 0),
        ];
        write_tree_layout(&path, &master, &old);
        let check = |s: &SqliteStore| {
            assert_eq!(s.len(), 4);
            assert_eq!(s.get("alice@x.test").unwrap(), old[..2].to_vec());
            assert_eq!(s.get("BOB@x.test").unwrap(), old[2..].to_vec());
            let hit = |a: &str, tenant: &str, class: &str| {
                s.check(
                    &Lookup {
                        address: a,
                        tenant,
                        class,
                        ..Lookup::default()
                    },
                    10,
                )
                .unwrap()
                .map(|e| e.reason)
            };
            assert_eq!(
                hit("bob@x.test", "acme", "promotional").as_deref(),
                Some("complaint")
            );
            assert_eq!(hit("bob@x.test", "zeta", "promotional"), None);
            assert_eq!(hit("bad@x.test", "acme", "").as_deref(), Some("unreadable"));
            assert_eq!(
                hit("gone@x.test", "zeta", "").as_deref(),
                Some(ERASED_REASON)
            );
            // `get` opened every sealed address with its slot's key (else: `unreadable`); a
            // listing stops at the unreadable row rather than look complete.
            let err = s.list(&ListFilter::default(), None, 10);
            assert!(matches!(err, Err(StoreError::Corrupt { .. })), "{err:?}");
        };
        let s = SqliteStore::open(&path, master.clone()).unwrap();
        check(&s);
        assert_eq!(s.soft_bounce("soft@x.test", 200, 1000, 2).unwrap(), 2);
        drop(s);
        for name in [TREE_DIR, TREE_MARKER] {
            assert!(!path.join(name).exists(), "{name} left");
        }

        // Cut short after the copy's commit: the tree is still there and no marker.
        write_tree_layout(&path, &master, &old);
        let s = SqliteStore::open(&path, master.clone()).unwrap();
        check(&s);
        drop(s);
        assert!(!path.join(TREE_DIR).exists());

        // Cut short in the deletion: the marker says the copy is done; what is left of the
        // tree is not read again.
        std::fs::create_dir_all(path.join(TREE_DIR)).unwrap();
        std::fs::write(path.join(TREE_DIR).join("db"), b"half deleted").unwrap();
        std::fs::write(path.join(TREE_MARKER), b"").unwrap();
        let s = SqliteStore::open(&path, master).unwrap();
        check(&s);
        for name in [TREE_DIR, TREE_MARKER] {
            assert!(!path.join(name).exists(), "{name} left");
        }
    }

    /// A second open of a store that is open is refused (a second Gannet on the same
    /// directory would keep an index that the first one's writes never reach).
    #[test]
    fn an_open_store_cannot_be_opened_twice() {
        let dir = tempfile::tempdir().unwrap();
        let master = MasterKey::from_bytes([3; 32]);
        let s = SqliteStore::open(dir.path(), master.clone()).unwrap();
        let err = SqliteStore::open(dir.path(), master.clone()).err();
        assert!(matches!(err, Some(StoreError::Open { .. })), "{err:?}");
        drop(s);
        SqliteStore::open(dir.path(), master).unwrap();
    }
}
