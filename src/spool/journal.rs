//! The state journal: per-message delivery state (recipient outcomes, DSNs owed, "done") made
//! durable in batches the way bodies are (group commit: one write and one `fdatasync` for every
//! change waiting), then applied to the sled index in the same order.
//!
//! Why it exists: sled's flush is not durable (CRATES.md) and ran every 200 ms, so the "done"
//! of a delivered message reached the disk long after the remote `250`, and a crash in between
//! sent it again (issue 21: ~164 duplicates per kill under load). Now a change is on stable
//! storage one `fdatasync` after it is made, and sled is only a cache of the journal.
//!
//! Owns: the `journal/` directory under the spool (files `{n:016x}.jnl`, numbered upwards) and
//! the writer thread that appends to the newest one. At open, every file is replayed into the
//! index (the last record of a key wins; keys of segments that no longer exist are skipped),
//! then one compact file is written holding what the index says about live segments, and the
//! older files are deleted. Past [`MAX_JOURNAL_BYTES`] the writer starts a new compact file
//! the same way, so the journal stays about as large as the live queue's state.
//!
//! Never does: decide a state (queue/), keep bodies (segments), or answer anyone: a change is
//! fire-and-forget for its caller; [`Journal::barrier`] waits until all earlier ones are applied.
//!
//! Record: `len` u32 LE (payload length), `crc` u32 LE (CRC-32 of the payload), payload = the
//! message key (16 bytes, `MsgKey::to_bytes`) then the index value. A record that is cut short
//! or fails its checksum ends the replay of its file (a write cut short by a crash).
//!
//! A dedicated OS thread rather than a tokio task: every step is blocking file I/O.

use std::fs::File;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::mpsc;

use super::{MsgKey, Segments, SpoolError, fsync_dir, segment_path};

/// A journal file is replaced by a compact one past this size.
pub const MAX_JOURNAL_BYTES: u64 = 64 << 20;

/// Most changes applied per batch (one write, one fdatasync).
const MAX_BATCH: usize = 16_384;

const RECORD_HEADER: usize = 8;

/// One request to the journal writer.
enum Op {
    /// Store `value` as the index entry of `key`; with `release`, the message is done and its
    /// segment may go once that is durable.
    Put {
        key: MsgKey,
        value: Vec<u8>,
        release: bool,
    },
    /// Answered once every earlier change is durable and applied.
    Barrier(mpsc::Sender<()>),
}

/// Handle to the journal writer. The channel is unbounded on purpose: callers are
/// synchronous (the queue's outcome path, the DSN writer) and must never block on the disk;
/// what can wait in it is bounded by the messages in the queue (each has at most one state
/// change per delivery attempt outstanding), and the writer takes everything waiting at once.
pub(super) struct Journal {
    tx: mpsc::Sender<Op>,
}

impl Journal {
    /// Record `value` for `key` (durably, soon).
    pub fn put(&self, key: MsgKey, value: Vec<u8>, release: bool) {
        if self
            .tx
            .send(Op::Put {
                key,
                value,
                release,
            })
            .is_err()
        {
            tracing::warn!(queue_id = %key.queue_id(), "spool state journal has stopped; this state change is lost (the message may be delivered again after a restart)");
        }
    }

    /// Block until every change made before this call is durable and applied to the index.
    pub fn barrier(&self) {
        let (tx, rx) = mpsc::channel();
        if self.tx.send(Op::Barrier(tx)).is_ok() {
            let _ = rx.recv();
        }
    }
}

fn journal_path(dir: &Path, n: u64) -> PathBuf {
    dir.join(format!("{n:016x}.jnl"))
}

/// Journal files in `dir`, oldest first.
fn files(dir: &Path) -> Result<Vec<u64>, SpoolError> {
    let mut v: Vec<u64> = std::fs::read_dir(dir)
        .map_err(|e| SpoolError::Dir {
            path: dir.to_path_buf(),
            source: e,
        })?
        .flatten()
        .filter_map(|e| {
            let name = e.file_name().into_string().ok()?;
            u64::from_str_radix(name.strip_suffix(".jnl")?, 16).ok()
        })
        .collect();
    v.sort_unstable();
    Ok(v)
}

fn encode(out: &mut Vec<u8>, key: &[u8], value: &[u8]) {
    let len = (key.len() + value.len()) as u32;
    out.extend_from_slice(&len.to_le_bytes());
    let start = out.len() + 4;
    out.extend_from_slice(&[0; 4]);
    out.extend_from_slice(key);
    out.extend_from_slice(value);
    let crc = crc32fast::hash(&out[start..]);
    out[start - 4..start].copy_from_slice(&crc.to_le_bytes());
}

/// The (key, value) records of one file, up to the first incomplete or damaged one.
fn decode(data: &[u8]) -> (Vec<(MsgKey, &[u8])>, Option<usize>) {
    let mut out = Vec::new();
    let mut at = 0;
    while at < data.len() {
        let Some(h) = data.get(at..at + RECORD_HEADER) else {
            return (out, Some(at));
        };
        let len = u32::from_le_bytes([h[0], h[1], h[2], h[3]]) as usize;
        let crc = u32::from_le_bytes([h[4], h[5], h[6], h[7]]);
        let Some(payload) = data.get(at + RECORD_HEADER..at + RECORD_HEADER + len) else {
            return (out, Some(at));
        };
        if len < 16 || crc32fast::hash(payload) != crc {
            return (out, Some(at));
        }
        let mut seg = [0u8; 8];
        let mut off = [0u8; 8];
        seg.copy_from_slice(&payload[..8]);
        off.copy_from_slice(&payload[8..16]);
        let key = MsgKey {
            segment: u64::from_be_bytes(seg),
            offset: u64::from_be_bytes(off),
        };
        out.push((key, &payload[16..]));
        at += RECORD_HEADER + len;
    }
    (out, None)
}

/// Apply every journal file in `dir` to `index` (keys of segments whose file is gone are
/// skipped). Returns the journal files found, oldest first. Run before the segment scan.
pub(super) fn replay(
    dir: &Path,
    segments_dir: &Path,
    index: &sled::Tree,
) -> Result<Vec<u64>, SpoolError> {
    std::fs::create_dir_all(dir).map_err(|e| SpoolError::Dir {
        path: dir.to_path_buf(),
        source: e,
    })?;
    let found = files(dir)?;
    let mut exists = std::collections::HashMap::new();
    let mut applied = 0usize;
    for n in &found {
        let path = journal_path(dir, *n);
        let data = std::fs::read(&path).map_err(|e| SpoolError::Dir {
            path: path.clone(),
            source: e,
        })?;
        let (records, cut) = decode(&data);
        if let Some(at) = cut {
            tracing::warn!(journal = %path.display(), offset = at,
                "spool state journal ends in an incomplete record (a write cut short by a crash); the changes before it are kept");
        }
        for (key, value) in records {
            let live = *exists
                .entry(key.segment)
                .or_insert_with(|| segment_path(segments_dir, key.segment).exists());
            if !live {
                continue;
            }
            index
                .insert(key.to_bytes(), value)
                .map_err(|e| SpoolError::Index {
                    path: dir.to_path_buf(),
                    source: e,
                })?;
            applied += 1;
        }
    }
    if applied > 0 {
        tracing::info!(
            changes = applied,
            files = found.len(),
            "spool state journal replayed into the index"
        );
    }
    Ok(found)
}

/// Write a compact journal file `n` holding every index entry, make it durable, then delete
/// the files in `old`.
fn compact(dir: &Path, n: u64, index: &sled::Tree, old: &[u64]) -> std::io::Result<(File, u64)> {
    let path = journal_path(dir, n);
    let mut buf = Vec::new();
    for (k, v) in index.iter().flatten() {
        if k.len() == 16 {
            encode(&mut buf, &k, &v);
        }
    }
    let mut f = std::fs::OpenOptions::new()
        .create_new(true)
        .append(true)
        .open(&path)?;
    if let Err(e) = f
        .write_all(&buf)
        .and_then(|()| f.sync_data())
        .and_then(|()| fsync_dir(dir))
    {
        // A partial snapshot replayed after the file it replaces would undo newer changes.
        let _ = std::fs::remove_file(&path);
        return Err(e);
    }
    for o in old {
        match std::fs::remove_file(journal_path(dir, *o)) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(e),
        }
    }
    fsync_dir(dir)?;
    Ok((f, buf.len() as u64))
}

/// Compact what `replay` found into a new file and start the writer thread on it.
pub(super) fn start(
    dir: PathBuf,
    found: Vec<u64>,
    segments: Arc<Segments>,
) -> Result<Journal, SpoolError> {
    let n = found.last().map_or(1, |l| l + 1);
    let (file, len) = compact(&dir, n, &segments.index, &found).map_err(|e| SpoolError::Write {
        path: journal_path(&dir, n),
        source: e,
    })?;
    let (tx, rx) = mpsc::channel();
    let w = Writer {
        dir,
        n,
        file: Some(file),
        len,
        segments,
        retry_at: None,
    };
    std::thread::Builder::new()
        .name("gannet-spool-journal".into())
        .spawn(move || w.run(rx))
        .map_err(|e| SpoolError::Write {
            path: PathBuf::from("(journal thread)"),
            source: e,
        })?;
    Ok(Journal { tx })
}

struct Writer {
    dir: PathBuf,
    n: u64,
    /// None after a failed rotation: the next batch tries again.
    file: Option<File>,
    len: u64,
    segments: Arc<Segments>,
    /// After a failed rotation, not before this (a full disk would fail every batch).
    retry_at: Option<std::time::Instant>,
}

impl Writer {
    fn run(mut self, rx: mpsc::Receiver<Op>) {
        let mut batch = Vec::new();
        let mut buf = Vec::new();
        while let Ok(first) = rx.recv() {
            batch.clear();
            buf.clear();
            batch.push(first);
            while batch.len() < MAX_BATCH {
                match rx.try_recv() {
                    Ok(op) => batch.push(op),
                    Err(_) => break,
                }
            }
            for op in &batch {
                if let Op::Put { key, value, .. } = op {
                    encode(&mut buf, &key.to_bytes(), value);
                }
            }
            if !buf.is_empty() {
                self.write(&buf);
            }
            for op in batch.drain(..) {
                match op {
                    Op::Put {
                        key,
                        value,
                        release,
                    } => self.apply(key, value, release),
                    Op::Barrier(done) => {
                        let _ = done.send(());
                    }
                }
            }
            let due = self.retry_at.is_none_or(|t| std::time::Instant::now() >= t);
            if due && (self.len >= MAX_JOURNAL_BYTES || self.file.is_none()) {
                self.rotate();
            }
        }
    }

    /// Append and fdatasync. A failure is logged and the changes are still applied: they are
    /// then as durable as sled makes them (a crash may deliver those messages again).
    fn write(&mut self, buf: &[u8]) {
        let Some(f) = self.file.as_mut() else {
            // Said once when the file was lost; the rotation retries every second.
            return;
        };
        match f.write_all(buf).and_then(|()| f.sync_data()) {
            Ok(()) => self.len += buf.len() as u64,
            Err(e) => {
                tracing::error!(journal = %journal_path(&self.dir, self.n).display(), error = %e,
                    "spool state journal write failed; starting a new journal file (messages finished meanwhile may be delivered again after a crash)");
                // What reached the file is unknown: continue in a fresh compact file.
                self.file = None;
            }
        }
    }

    fn apply(&self, key: MsgKey, value: Vec<u8>, release: bool) {
        if let Err(e) = self.segments.index.insert(key.to_bytes(), value) {
            tracing::warn!(queue_id = %key.queue_id(), error = %e,
                "spool index update failed; the journal still holds the change");
        }
        if release && self.segments.release_one(key.segment) {
            self.segments.delete(key.segment);
        }
    }

    /// Start a new compact file and delete the older ones.
    fn rotate(&mut self) {
        let next = self.n + 1;
        let old: Vec<u64> = files(&self.dir).unwrap_or_default();
        match compact(&self.dir, next, &self.segments.index, &old) {
            Ok((f, len)) => {
                if self.retry_at.take().is_some() {
                    tracing::info!(journal = %journal_path(&self.dir, next).display(),
                        "spool state journal writes again");
                }
                self.file = Some(f);
                self.n = next;
                self.len = len;
            }
            Err(e) => {
                self.retry_at = Some(std::time::Instant::now() + std::time::Duration::from_secs(1));
                tracing::error!(journal = %journal_path(&self.dir, next).display(), error = %e,
                    "cannot start a new spool state journal file; retrying every second (meanwhile state changes are only as durable as sled makes them)");
                // The old file (if any) stays in use; the failed number is never reused.
                self.n = next;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn records_round_trip_and_a_torn_tail_is_cut() {
        let mut buf = Vec::new();
        let k1 = MsgKey {
            segment: 7,
            offset: 0,
        };
        let k2 = MsgKey {
            segment: 7,
            offset: 99,
        };
        encode(&mut buf, &k1.to_bytes(), &[1]);
        encode(&mut buf, &k2.to_bytes(), &[0, 1, 0]);
        let (r, cut) = decode(&buf);
        assert_eq!(cut, None);
        assert_eq!(r, vec![(k1, &[1u8][..]), (k2, &[0u8, 1, 0][..])]);
        // A torn last record.
        let (r, cut) = decode(&buf[..buf.len() - 1]);
        assert_eq!(r.len(), 1);
        assert!(cut.is_some());
        // A changed byte.
        let mut bad = buf.clone();
        let last = bad.len() - 1;
        bad[last] ^= 1;
        let (r, cut) = decode(&bad);
        assert_eq!(r.len(), 1);
        assert!(cut.is_some());
    }
}
