//! The key slots of the suppression list: one random 32-byte salt per entry, kept in a file
//! of fixed 32-byte slots (`person-keys` in the store's directory) that Gannet overwrites in
//! place. An entry's address is sealed (AES-256-GCM) under the key derived from the master
//! key and its slot's salt (`MasterKey::person_key`); zeroing the slot destroys that key.
//!
//! Owns: the slot file (allocation, the free list, writing salts, reading them back, zeroing
//! them with `pwrite` + `fdatasync`), and sealing / opening an address under a slot's key.
//! Never decides which entry owns which slot (the store keeps the slot number in the entry).
//!
//! Why a file of our own and not a table of the store: SQLite keeps old versions of changed
//! pages in its WAL until it overwrites them (and sled, the store before it, kept removed
//! values in its log files for long, CRATES.md), so a salt "deleted" from the database could
//! be read back from the files with the master key, and the sealed address with it. A slot is
//! 32 bytes at a known offset of a file Gannet writes itself: zeroing it removes the key for
//! good (on file systems that overwrite in place; see README "Send log"). Why one slot per
//! entry rather than per person: an import writes each entry without first looking up whether
//! its person has a key (a read per address), and removing one entry shreds exactly that
//! entry's copy of the address.

use std::fs::File;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use crate::sendlog::MasterKey;

/// Bytes per slot (the salt).
pub const SLOT_LEN: usize = 32;

#[derive(Debug, thiserror::Error)]
#[error("suppression key slots {path}: {source} (check disk space and permissions)")]
pub struct SlotError {
    pub path: PathBuf,
    pub source: std::io::Error,
}

enum Backing {
    File {
        file: File,
        path: PathBuf,
    },
    /// A temporary store (tests, benchmarks): the salts in memory.
    Memory(Mutex<Vec<[u8; SLOT_LEN]>>),
}

/// Which slots are in use and which can be handed out again. Guarded by a std `Mutex`: held
/// for a few pushes and pops, never across I/O.
struct Alloc {
    /// Slots the file has (the next new slot's number).
    len: u32,
    /// Zeroed or never referenced slots below `len`.
    free: Vec<u32>,
}

/// The slot file and the master key its salts are used with.
pub struct Slots {
    backing: Backing,
    alloc: Mutex<Alloc>,
    key: MasterKey,
}

impl Slots {
    /// Open (or create) the slot file at `path`. `used` says which slots entries refer to
    /// (collected while the index is loaded); every other slot is free. A torn last slot (a
    /// crash in the middle of a write) is ignored.
    pub fn open(path: &Path, key: MasterKey) -> Result<Slots, SlotError> {
        let err = |source| SlotError {
            path: path.to_path_buf(),
            source,
        };
        let file = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(path)
            .map_err(err)?;
        let len = file.metadata().map_err(err)?.len() / SLOT_LEN as u64;
        Ok(Slots {
            backing: Backing::File {
                file,
                path: path.to_path_buf(),
            },
            alloc: Mutex::new(Alloc {
                len: u32::try_from(len).unwrap_or(u32::MAX),
                free: Vec::new(),
            }),
            key,
        })
    }

    /// Slots in memory only.
    pub fn memory(key: MasterKey) -> Slots {
        Slots {
            backing: Backing::Memory(Mutex::new(Vec::new())),
            alloc: Mutex::new(Alloc {
                len: 0,
                free: Vec::new(),
            }),
            key,
        }
    }

    fn err(&self, source: std::io::Error) -> SlotError {
        let path = match &self.backing {
            Backing::File { path, .. } => path.clone(),
            Backing::Memory(_) => PathBuf::from("(memory)"),
        };
        SlotError { path, source }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Alloc> {
        self.alloc.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Tell the allocator which slots are in use (once, after the index is loaded): the
    /// others below the file's end are handed out first.
    pub fn set_used(&self, used: &[u64]) {
        let mut a = self.lock();
        let is_used = |s: u32| {
            used.get(s as usize / 64)
                .is_some_and(|w| w & (1u64 << (s % 64)) != 0)
        };
        a.free = (0..a.len).rev().filter(|s| !is_used(*s)).collect();
    }

    /// `n` slots for new entries (free ones first, then new ones at the file's end).
    pub fn allocate(&self, n: usize) -> Vec<u32> {
        let mut a = self.lock();
        let mut out = Vec::with_capacity(n);
        while out.len() < n {
            match a.free.pop() {
                Some(s) => out.push(s),
                None => {
                    out.push(a.len);
                    a.len = a.len.saturating_add(1);
                }
            }
        }
        out
    }

    /// Give slots back (their entry is gone; the caller zeroed them).
    pub fn release(&self, slots: &[u32]) {
        self.lock().free.extend_from_slice(slots);
    }

    /// Write `salts` to their slots (sorted by slot; consecutive slots in one write). Made
    /// durable by [`Slots::sync`], which the store calls before it commits the rows using them.
    pub fn write(&self, salts: &mut [(u32, [u8; SLOT_LEN])]) -> Result<(), SlotError> {
        salts.sort_unstable_by_key(|(s, _)| *s);
        match &self.backing {
            Backing::Memory(m) => {
                let mut v = m.lock().unwrap_or_else(|p| p.into_inner());
                for (s, salt) in salts.iter() {
                    let i = *s as usize;
                    if v.len() <= i {
                        v.resize(i + 1, [0; SLOT_LEN]);
                    }
                    v[i] = *salt;
                }
                Ok(())
            }
            Backing::File { file, .. } => {
                let mut run: Vec<u8> = Vec::with_capacity(salts.len() * SLOT_LEN);
                let mut start = 0u32;
                let mut next = 0u32;
                for (s, salt) in salts.iter() {
                    if run.is_empty() || *s != next {
                        if !run.is_empty() {
                            file.write_all_at(&run, u64::from(start) * SLOT_LEN as u64)
                                .map_err(|e| self.err(e))?;
                            run.clear();
                        }
                        start = *s;
                    }
                    run.extend_from_slice(salt);
                    next = s.wrapping_add(1);
                }
                if !run.is_empty() {
                    file.write_all_at(&run, u64::from(start) * SLOT_LEN as u64)
                        .map_err(|e| self.err(e))?;
                }
                Ok(())
            }
        }
    }

    /// Overwrite `slots` with zeros and make that durable (crypto-shredding), then free them.
    pub fn shred(&self, slots: &[u32]) -> Result<(), SlotError> {
        if slots.is_empty() {
            return Ok(());
        }
        let mut zeros: Vec<(u32, [u8; SLOT_LEN])> =
            slots.iter().map(|s| (*s, [0; SLOT_LEN])).collect();
        self.write(&mut zeros)?;
        self.sync()?;
        self.release(slots);
        Ok(())
    }

    /// fdatasync the slot file.
    pub fn sync(&self) -> Result<(), SlotError> {
        match &self.backing {
            Backing::File { file, .. } => file.sync_data().map_err(|e| self.err(e)),
            Backing::Memory(_) => Ok(()),
        }
    }

    fn salt(&self, slot: u32) -> Option<[u8; SLOT_LEN]> {
        let salt = match &self.backing {
            Backing::Memory(m) => *m
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .get(slot as usize)?,
            Backing::File { file, .. } => {
                let mut b = [0u8; SLOT_LEN];
                file.read_exact_at(&mut b, u64::from(slot) * SLOT_LEN as u64)
                    .ok()?;
                b
            }
        };
        (salt != [0; SLOT_LEN]).then_some(salt)
    }

    /// A fresh salt and the address sealed under its key, bound to `person` (the address's
    /// keyed hash) so a sealed address cannot be moved to another entry.
    pub fn seal_address(&self, person: &[u8; 32], address: &str) -> ([u8; SLOT_LEN], Vec<u8>) {
        let salt: [u8; SLOT_LEN] = rand::random();
        let sealed = self.key.person_key(&salt).seal(person, address.as_bytes());
        (salt, sealed)
    }

    /// The address sealed in `sealed` under slot `slot`'s key, or None when the slot was
    /// shredded (or lost in a crash before it reached the disk) or the bytes were changed.
    pub fn open_address(&self, slot: u32, person: &[u8; 32], sealed: &[u8]) -> Option<String> {
        let salt = self.salt(slot)?;
        let plain = self.key.person_key(&salt).open(person, sealed)?;
        String::from_utf8(plain).ok()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_shredded_slot_no_longer_opens_its_address() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("person-keys");
        let key = MasterKey::from_bytes([1; 32]);
        let slots = Slots::open(&path, key.clone()).unwrap();
        let person = key.address_hash("a@x.test");
        let got = slots.allocate(3);
        assert_eq!(got, vec![0, 1, 2]);
        let (salt, sealed) = slots.seal_address(&person, "a@x.test");
        let (salt2, sealed2) = slots.seal_address(&person, "a@x.test");
        slots.write(&mut [(2, salt2), (1, salt)]).unwrap();
        assert_eq!(
            slots.open_address(1, &person, &sealed).as_deref(),
            Some("a@x.test")
        );
        assert_eq!(
            slots.open_address(2, &person, &sealed),
            None,
            "another slot's key"
        );
        assert_eq!(
            slots.open_address(1, &[0; 32], &sealed),
            None,
            "bound to its person"
        );
        slots.shred(&[1]).unwrap();
        assert_eq!(slots.open_address(1, &person, &sealed), None);
        assert_eq!(
            slots.allocate(1),
            vec![1],
            "a shredded slot is handed out again"
        );
        drop(slots);
        let bytes = std::fs::read(&path).unwrap();
        assert_eq!(bytes.len(), 3 * SLOT_LEN);
        assert!(bytes[SLOT_LEN..2 * SLOT_LEN].iter().all(|b| *b == 0));
        let slots = Slots::open(&path, key).unwrap();
        slots.set_used(&[0b100]);
        assert_eq!(
            slots.open_address(2, &person, &sealed2).as_deref(),
            Some("a@x.test")
        );
        assert_eq!(slots.allocate(3), vec![0, 1, 3]);
    }
}
