//! Migration of a suppression store of the earlier layout (a sled database directly in
//! `[suppression] path`, keyed by clear `address \0 tenant \0 stream`) into the current one
//! (`tree/` keyed by the address's keyed hash, addresses sealed, `person-keys`).
//!
//! Owns: recognising the old files, copying every entry, soft-bounce count and erasure into
//! the new store, and deleting the old files once the copy is flushed. Runs once, at open,
//! before anything reads the store; says what it did in the log.
//!
//! Crash safety: the copy is idempotent (an entry written twice is replaced, its slot
//! reused), so a migration cut short is simply run again from the old files at the next
//! start. Once the copy is flushed a marker file (`migrated-from-clear`) is written, then the
//! old files are deleted, then the marker: a start that finds the marker only finishes the
//! deletion (the old `db` may be half gone and must not be read again).
//! Never does: keep the old files (they hold addresses in clear), or guess at what it cannot
//! read (an unreadable entry stays refused in its scope, reason `unreadable`).

use std::path::Path;

use super::store::{Entry, SledStore, StoreError, SuppressionStore, normalize};

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
pub(super) fn from_clear_layout(path: &Path, store: &SledStore) -> Result<(), StoreError> {
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
        let f = std::fs::File::create(&marker).map_err(|e| fail(e.to_string()))?;
        f.sync_all().map_err(|e| fail(e.to_string()))?;
        sync_dir(path).map_err(|e| fail(e.to_string()))?;
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

/// Copy everything; (entries, soft-bounce counts, erasures, skipped keys).
fn copy(path: &Path, store: &SledStore) -> Result<(usize, usize, usize, usize), sled::Error> {
    let old = super::store::open_sled(&sled::Config::new().path(path))?;
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
fn add(store: &SledStore, batch: &mut Vec<Entry>, skipped: &mut usize) -> usize {
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
        let s = SledStore::open(&path, key.clone()).unwrap();
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
        let s = SledStore::open(&path, key).unwrap();
        assert_eq!(s.len(), 3);
        assert_eq!(s.get("alice.old@x.test").unwrap().len(), 1);
    }
}
