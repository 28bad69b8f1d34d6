//! The durable spool: message bodies in append-only segment files that Gannet fdatasyncs itself,
//! and a sled index of per-message delivery state.
//!
//! Owns: the `segments/` directory (files named by segment number, never by anything personal),
//! the group-commit writer thread, the sled database under `index/` (rebuildable), and a
//! second sled database under `state/` for operator state (suspensions, warm-up counters),
//! which cannot be rebuilt from the segments and so must not live in the index.
//!
//! Invariants:
//! - `append` resolves only after the record is on stable storage (write + fdatasync; a new
//!   segment's directory entry is fsynced too). Many appends share one fdatasync.
//! - The segment files are the truth about which messages exist. What changes afterwards
//!   (per-recipient outcomes, the DSNs still owed for failed recipients, "done" tombstones) is
//!   made durable by the state `journal` (group commit, like bodies) and then applied to sled,
//!   which is only the journal's cache: sled's flush is not durable (CRATES.md). At open the
//!   journal is replayed into the index; a missing or torn index and journal are rebuilt by
//!   scanning the segments: every message is then pending (a redelivery, never a loss).
//! - A segment file is deleted once every message in it is done and it is no longer written to;
//!   its tombstones are removed from the index after the deletion is durable.
//! - One damaged record never hides the records after it: the start-up scan finds the next
//!   valid record by header and checksum, copies the damaged bytes to `quarantine/`, reports
//!   them (error log naming segment and offset, `gannet_spool_damaged_records`, and
//!   [`Spool::damaged`] for the queue listing), and never deletes that segment by itself.
//!
//! - With a key (`[storage] key_file`; `serve` always gives one), every record written while
//!   `[spool] encrypt` is on is sealed under its own message key (`seal`, `record`), and the
//!   owed-DSN data of the journal and index under the spool's state key: no envelope address,
//!   body or remote reply is written in clear. `key-check` holds the key's fingerprint; another
//!   key is refused at open ([`SpoolError::WrongKey`]).
//! - [`Spool::shred_recipient`] (erasure) zeroes the salt of every record addressed only to one
//!   person, and of every finished record that names them, in place: those records can no
//!   longer be opened by anyone, and a scan steps over them as done.
//!
//! Never does: decide when or where to deliver (queue/), parse messages (message/).

mod journal;
pub mod record;
pub mod seal;
mod storage;
mod writer;

pub use record::{MessageRecord, RecordError};
pub use seal::SpoolKey;

use std::collections::HashMap;
use std::fs::File;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use tokio::sync::{mpsc, oneshot};

use crate::config::SpoolConfig;
use crate::metrics::Metrics;

// The largest message validation lets a listener accept (`config::MAX_MESSAGE_SIZE`) must fit
// a record with 64 MiB to spare for the envelope and the headers Gannet adds (trace, DKIM): a
// record over the format's limit could be written but never read back, so `append` refuses
// one. Checked at compile time so the two limits cannot drift apart.
const _: () = assert!(crate::config::MAX_MESSAGE_SIZE + (64 << 20) <= record::MAX_PAYLOAD);

/// Identifies a spooled message: the segment it lives in and the record's offset there.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct MsgKey {
    pub segment: u64,
    pub offset: u64,
}

impl MsgKey {
    /// Big-endian bytes, so sled keys sort by segment and a segment is one key prefix.
    pub fn to_bytes(self) -> [u8; 16] {
        let mut b = [0u8; 16];
        b[..8].copy_from_slice(&self.segment.to_be_bytes());
        b[8..].copy_from_slice(&self.offset.to_be_bytes());
        b
    }

    /// The queue id shown to clients and in logs.
    pub fn queue_id(self) -> String {
        format!("{:013X}{:08X}", self.segment, self.offset)
    }
}

/// Where a record is: its key and its length in bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Location {
    pub key: MsgKey,
    pub len: u32,
}

/// Delivery state of one recipient as the index records it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum RcptState {
    Pending = 0,
    Delivered = 1,
    Failed = 2,
}

/// A delivery status notification owed for one failed recipient: everything needed to write
/// the DSN after a restart. Saved in the index with the recipient states (see
/// [`Spool::record_progress`]); a message with owed DSNs is never released.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct DsnOwed {
    /// Index of the recipient in the record's `rcpts`.
    pub rcpt: u32,
    /// The final reply: code, enhanced status code, text.
    pub code: u16,
    #[serde(default)]
    pub enhanced: String,
    #[serde(default)]
    pub text: String,
    /// The remote MTA that gave the reply, if one did.
    #[serde(default)]
    pub remote_host: Option<String>,
}

#[derive(Debug, thiserror::Error)]
pub enum SpoolError {
    #[error("spool directory {path}: {source}")]
    Dir {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error(
        "spool index at {path} cannot be opened: {source} (it can be deleted: it is rebuilt from the segments; suspensions and warm-up counters are kept apart in state/ and survive)"
    )]
    Index { path: PathBuf, source: sled::Error },
    #[error(
        "spool operator state at {path} cannot be opened: {source} (it holds suspensions and warm-up counters; deleting it loses them, queued mail is not affected)"
    )]
    State { path: PathBuf, source: sled::Error },
    #[error(
        "the spool at {path} was written with another master key than [storage] key_file (its key-check does not match); restore the key file the spool was written with (gannet never re-keys silently)"
    )]
    WrongKey { path: PathBuf },
    #[error("spool write to {path} failed: {source}")]
    Write {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("spool read of message {queue_id} from {path} failed: {reason}")]
    Read {
        queue_id: String,
        path: PathBuf,
        reason: String,
    },
    #[error("spool writer is not running (shutting down)")]
    Closed,
    #[error(
        "the spool's file system at {path} is full (or below [spool] min_free_bytes = {min_free}): new mail is refused with 452 4.3.1 until deliveries or the operator free space"
    )]
    Full { path: PathBuf, min_free: u64 },
    #[error("spool is busy: {0} submissions already wait for the disk")]
    Busy(usize),
    #[error(
        "message of {size} bytes is over the spool record limit of {limit} bytes (lower max_message_size)"
    )]
    TooLarge { size: usize, limit: usize },
}

/// A message found in the spool at start-up that still has recipients to deliver.
#[derive(Debug)]
pub struct Recovered {
    pub location: Location,
    pub record: MessageRecord,
    pub states: Vec<RcptState>,
    /// DSNs still owed for failed recipients (sent again after the restart).
    pub dsn_owed: Vec<DsnOwed>,
}

/// One request to the group-commit writer.
struct WriteReq {
    bytes: Vec<u8>,
    reply: oneshot::Sender<Result<Location, SpoolError>>,
}

/// Per-segment bookkeeping, for deleting a segment once all its messages are done.
#[derive(Default)]
struct SegState {
    live: usize,
    /// No longer written to: may be deleted when `live` reaches zero.
    sealed: bool,
    /// Holds a damaged record: kept for the operator, never deleted automatically.
    damaged: bool,
}

/// A stretch of a segment that is not a readable record although records follow it (or a
/// complete record that fails its checks): once an acknowledged message, now lost unless the
/// operator can repair it from the quarantine copy.
#[derive(Debug, Clone, serde::Serialize, PartialEq, Eq)]
pub struct DamagedRecord {
    /// The segment file.
    pub segment: PathBuf,
    pub offset: u64,
    pub length: u64,
    /// Why the bytes could not be read.
    pub error: String,
    /// Copy of the damaged bytes; `None` when copying failed (the segment still has them).
    pub quarantine: Option<PathBuf>,
    /// Messages of the segment still to deliver; delete the segment by hand once this is 0.
    pub segment_live_messages: usize,
}

/// Handle to the spool. Cheap to clone; all clones share one writer and one index.
#[derive(Clone)]
pub struct Spool {
    inner: Arc<Inner>,
}

struct Inner {
    tx: mpsc::Sender<WriteReq>,
    /// Opens sealed records; with `encrypt`, seals new ones. None only in tests and benches
    /// that open a spool without a master key.
    key: Option<Arc<SpoolKey>>,
    encrypt: bool,
    /// Damaged records found by the start-up scan (fixed after `open`).
    damaged: Vec<DamagedRecord>,
    queue_limit: usize,
    db: sled::Db,
    /// Operator state, apart from the rebuildable index.
    state: sled::Db,
    state_path: PathBuf,
    segments: Arc<Segments>,
    /// Durable state changes (group commit), applied to the index in order.
    journal: journal::Journal,
    /// Free bytes on the segments' file system, as last measured (by the writer after each
    /// commit, and by [`Spool::refresh_free_space`]); u64::MAX before the first measurement.
    free: Arc<AtomicU64>,
    min_free: u64,
    /// In a disk-full episode (logged once when it starts and once when it ends).
    refusing: std::sync::atomic::AtomicBool,
}

/// Segment files and their live-message counts; shared by the handle and the writer thread
/// (which must not hold the handle, or the channel would never close).
struct Segments {
    dir: PathBuf,
    index: sled::Tree,
    /// Short critical sections only (counter updates), never held across I/O or `.await`:
    /// a std Mutex is cheaper than an async one here.
    segs: Mutex<HashMap<u64, SegState>>,
}

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or(Duration::ZERO)
        .as_millis() as u64
}

fn segment_path(dir: &Path, segment: u64) -> PathBuf {
    dir.join(format!("{segment:016x}.seg"))
}

/// Free bytes (for unprivileged users) on the file system holding `dir`; u64::MAX when it
/// cannot be measured (then only a real ENOSPC refuses mail).
fn free_space(dir: &Path) -> u64 {
    fs2::available_space(dir).unwrap_or(u64::MAX)
}

/// True for "no space left on device" (ENOSPC) and "disk quota exceeded" (EDQUOT).
fn is_full(e: &std::io::Error) -> bool {
    e.kind() == std::io::ErrorKind::StorageFull || e.kind() == std::io::ErrorKind::QuotaExceeded
}

fn fsync_dir(dir: &Path) -> std::io::Result<()> {
    File::open(dir)?.sync_all()
}

impl Spool {
    /// Open (or create) the spool under `config.path`, scan existing segments and return the
    /// messages that still need delivery. Blocking: call before serving, or via spawn_blocking.
    /// Without a key: records are written in clear (tests and benches only; `serve` uses
    /// [`Spool::open_with_key`]).
    pub fn open(
        config: &SpoolConfig,
        base: &Path,
        metrics: Metrics,
    ) -> Result<(Spool, Vec<Recovered>), SpoolError> {
        Self::open_with_storage(config, base, metrics, Arc::new(storage::OsStorage), None)
    }

    /// [`Spool::open`] with the master key: sealed records are opened with it, and new ones
    /// sealed while `[spool] encrypt` is on. The key must be the one the spool was written
    /// with (`key-check`), or [`SpoolError::WrongKey`].
    pub fn open_with_key(
        config: &SpoolConfig,
        base: &Path,
        metrics: Metrics,
        key: crate::sendlog::MasterKey,
    ) -> Result<(Spool, Vec<Recovered>), SpoolError> {
        Self::open_with_storage(
            config,
            base,
            metrics,
            Arc::new(storage::OsStorage),
            Some(key),
        )
    }

    /// The spool directory of `config`, relative paths taken from `base`.
    pub fn root(config: &SpoolConfig, base: &Path) -> PathBuf {
        if config.path.is_relative() {
            base.join(&config.path)
        } else {
            config.path.clone()
        }
    }

    /// The file holding the master key's fingerprint: its existence means data sealed with
    /// that key may exist (the `protected` path for `MasterKey::load_or_create`).
    pub fn key_check_path(config: &SpoolConfig, base: &Path) -> PathBuf {
        Self::root(config, base).join("key-check")
    }

    /// [`Spool::open`] with the writer's file-system calls going through `storage` (tests
    /// count syncs and inject failures this way).
    pub(crate) fn open_with_storage(
        config: &SpoolConfig,
        base: &Path,
        metrics: Metrics,
        storage: Arc<dyn storage::Storage>,
        key: Option<crate::sendlog::MasterKey>,
    ) -> Result<(Spool, Vec<Recovered>), SpoolError> {
        let root = Self::root(config, base);
        let segments_dir = root.join("segments");
        std::fs::create_dir_all(&segments_dir).map_err(|e| SpoolError::Dir {
            path: segments_dir.clone(),
            source: e,
        })?;
        let key = key.map(|k| Arc::new(SpoolKey::new(k)));
        if let Some(k) = &key {
            check_key(&root.join("key-check"), k)?;
        }
        let index_path = root.join("index");
        // 8 MiB of sled's page cache: the index is written far more than read (reads happen at
        // start-up), and a larger cache only filled slowly over hours, which the soak
        // (scripts/soak) saw as RSS still growing after the first half hour.
        let db = sled::Config::new()
            .path(&index_path)
            .cache_capacity(8 * 1024 * 1024)
            .flush_every_ms(Some(200))
            .open()
            .map_err(|e| SpoolError::Index {
                path: index_path.clone(),
                source: e,
            })?;
        let index = db.open_tree("msg").map_err(|e| SpoolError::Index {
            path: index_path.clone(),
            source: e,
        })?;
        let state_path = root.join("state");
        let state = sled::Config::new()
            .path(&state_path)
            .cache_capacity(1024 * 1024)
            .flush_every_ms(Some(200))
            .open()
            .map_err(|e| SpoolError::State {
                path: state_path.clone(),
                source: e,
            })?;
        match move_state_out_of_index(&db, &state) {
            Ok(0) => {}
            Ok(n) => tracing::info!(trees = n, path = %state_path.display(),
                "moved operator state (suspensions, warm-up counters) out of the spool index, so an index rebuild keeps it"),
            Err(e) => {
                return Err(SpoolError::State {
                    path: state_path,
                    source: e,
                });
            }
        }

        // State changes made durable by the journal but perhaps not by sled come back first.
        let journal_dir = root.join("journal");
        let t = std::time::Instant::now();
        let journals = journal::replay(&journal_dir, &segments_dir, &index)?;
        let replay_ms = t.elapsed().as_millis() as u64;
        let t = std::time::Instant::now();
        let (recovered, segs, max_seg, damaged) = scan(
            &segments_dir,
            &root.join("quarantine"),
            &index,
            key.as_deref(),
        )?;
        tracing::info!(target: "gannet::startup", replay_ms, scan_ms = t.elapsed().as_millis() as u64,
            segments = segs.len(), messages = recovered.len(), "spool recovered");
        metrics.spool_damaged_records.set(damaged.len() as i64);

        let (tx, rx) = mpsc::channel(config.commit_queue.max(1));
        let segments = Arc::new(Segments {
            dir: segments_dir.clone(),
            index,
            segs: Mutex::new(segs),
        });
        // Segments left with nothing to deliver can go now.
        let empty: Vec<u64> = segments
            .lock()
            .iter()
            .filter(|(_, s)| s.live == 0 && !s.damaged)
            .map(|(k, _)| *k)
            .collect();
        for seg in empty {
            segments.delete(seg);
        }
        let journal = journal::start(journal_dir, journals, segments.clone())?;
        let free = Arc::new(AtomicU64::new(free_space(&segments_dir)));
        let inner = Arc::new(Inner {
            tx,
            encrypt: config.encrypt && key.is_some(),
            key,
            damaged,
            queue_limit: config.commit_queue.max(1),
            db,
            state,
            state_path,
            segments: segments.clone(),
            journal,
            free: free.clone(),
            min_free: config.min_free_bytes,
            refusing: std::sync::atomic::AtomicBool::new(false),
        });
        let spool = Spool { inner };
        let first_segment = (now_ms() * 1000).max(max_seg + 1);
        writer::start(
            writer::WriterConfig {
                dir: segments_dir,
                first_segment,
                max_segment_bytes: config.max_segment_bytes,
                max_commit_bytes: config.max_commit_bytes,
                free,
            },
            storage,
            rx,
            segments,
            metrics,
        );
        Ok((spool, recovered))
    }

    /// Make a message durable. Resolves after the fdatasync that covers it.
    pub async fn append(&self, record: &MessageRecord) -> Result<Location, SpoolError> {
        let bytes = match (&self.inner.key, self.inner.encrypt) {
            (Some(key), true) => record::encode_sealed(record, key),
            _ => record::encode(record),
        };
        if bytes.len() - record::HEADER_LEN > record::MAX_PAYLOAD {
            // It could be written but never read back.
            return Err(SpoolError::TooLarge {
                size: bytes.len(),
                limit: record::MAX_PAYLOAD,
            });
        }
        if self.inner.free.load(Ordering::Relaxed) < self.inner.min_free + bytes.len() as u64 {
            // Below the floor: refuse now rather than fill the disk the journal, the index and
            // the send log need to finish what is queued (and so free space again).
            let e = SpoolError::Full {
                path: self.inner.segments.dir.clone(),
                min_free: self.inner.min_free,
            };
            self.note_full(&e);
            return Err(e);
        }
        let (reply, rx) = oneshot::channel();
        // Bounded channel: when the disk falls behind, callers wait here (and SMTP clients
        // wait for their 250) instead of buffering without limit; if even the queue is full
        // for long, the caller's timeout turns it into a 4xx.
        let permit = match self.inner.tx.try_reserve() {
            Ok(p) => p,
            Err(mpsc::error::TrySendError::Full(_)) => {
                match tokio::time::timeout(Duration::from_secs(30), self.inner.tx.reserve()).await {
                    Ok(Ok(p)) => p,
                    Ok(Err(_)) => return Err(SpoolError::Closed),
                    Err(_) => return Err(SpoolError::Busy(self.inner.queue_limit)),
                }
            }
            Err(mpsc::error::TrySendError::Closed(_)) => return Err(SpoolError::Closed),
        };
        permit.send(WriteReq { bytes, reply });
        let r = rx.await.map_err(|_| SpoolError::Closed)?;
        match &r {
            Err(e @ SpoolError::Full { .. }) => self.note_full(e),
            Ok(_)
                if self.inner.refusing.load(Ordering::Relaxed)
                    && self.inner.refusing.swap(false, Ordering::Relaxed) =>
            {
                tracing::info!(path = %self.inner.segments.dir.display(),
                    "spool has free space again; accepting new mail");
            }
            _ => {}
        }
        r
    }

    /// Log the start of a disk-full episode once (not once per refused message).
    fn note_full(&self, e: &SpoolError) {
        if !self.inner.refusing.swap(true, Ordering::Relaxed) {
            tracing::error!(error = %e, "spool disk full; refusing new mail (SMTP 452 4.3.1, HTTP 507) and delivering what is queued");
        }
    }

    /// Read a message back (for a retry, or after a restart). Runs the file read on the
    /// blocking pool.
    pub async fn read(&self, loc: Location) -> Result<MessageRecord, SpoolError> {
        let path = segment_path(&self.inner.segments.dir, loc.key.segment);
        let key = self.inner.key.clone();
        tokio::task::spawn_blocking(move || {
            let fail = |reason: String| SpoolError::Read {
                queue_id: loc.key.queue_id(),
                path: path.clone(),
                reason,
            };
            let file = File::open(&path).map_err(|e| fail(e.to_string()))?;
            let mut buf = vec![0u8; loc.len as usize];
            file.read_exact_at(&mut buf, loc.key.offset)
                .map_err(|e| fail(e.to_string()))?;
            record::decode_owned(buf, key.as_deref()).map_err(|e| fail(e.to_string()))
        })
        .await
        .map_err(|e| SpoolError::Read {
            queue_id: loc.key.queue_id(),
            path: PathBuf::new(),
            reason: e.to_string(),
        })?
    }

    /// Record per-recipient outcomes of a message that still has pending recipients.
    pub fn record_states(&self, key: MsgKey, states: &[RcptState]) {
        self.record_progress(key, states, &[]);
    }

    /// Record per-recipient outcomes and the DSNs still owed of a message that is not done
    /// (pending recipients, or a DSN not yet durably queued). The index value is one state
    /// byte per recipient, then (when DSNs are owed) their JSON. Never waits: the journal
    /// makes it durable with the next group commit (see [`Spool::flush_index`]).
    pub fn record_progress(&self, key: MsgKey, states: &[RcptState], owed: &[DsnOwed]) {
        self.inner.journal.put(
            key,
            encode_progress(states, owed, self.inner.key.as_deref()),
            false,
        );
    }

    /// Every recipient of the message has a final outcome: mark it done and, once that is
    /// durable, release its segment when that was the segment's last live message. Never
    /// waits.
    pub fn complete(&self, key: MsgKey) {
        self.inner.journal.put(key, vec![1u8], true);
    }

    /// Erasure (GDPR Art. 17): destroy the key of every record addressed only to `address`
    /// (case-insensitive), and of every finished record that names it among others, by
    /// zeroing its salt in the segment file (`pwrite` + `fdatasync`). Those records can then
    /// be opened by no one; a later scan steps over them as done. Finished notices Gannet
    /// generated (null sender: DSNs to the original sender) whose body names the address are
    /// shredded too. Records of mail still owed to other recipients keep their key (they must still be delivered), sealed as before.
    /// Call after the person's queued mail was purged. Blocking; returns how many records were
    /// shredded. Records written in clear (`[spool] encrypt = false`) cannot be shredded and are
    /// counted in the warning.
    pub fn shred_recipient(&self, address: &str) -> Result<usize, SpoolError> {
        let Some(key) = self.inner.key.as_deref() else {
            return Ok(0);
        };
        // Purges made before the call are in the index (done messages are recognised).
        self.inner.journal.barrier();
        let dir = &self.inner.segments.dir;
        let mut segments: Vec<u64> = std::fs::read_dir(dir)
            .map_err(|e| SpoolError::Dir {
                path: dir.clone(),
                source: e,
            })?
            .flatten()
            .filter_map(|e| {
                let name = e.file_name().into_string().ok()?;
                u64::from_str_radix(name.strip_suffix(".seg")?, 16).ok()
            })
            .collect();
        segments.sort_unstable();
        let want = address.trim().to_lowercase();
        let mine = |r: &String| r.trim().to_lowercase() == want;
        let (mut shredded, mut clear) = (0, 0);
        for seg in segments {
            let path = segment_path(dir, seg);
            let data = match std::fs::read(&path) {
                Ok(d) => d,
                // Finished and deleted meanwhile.
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
                Err(e) => return Err(SpoolError::Dir { path, source: e }),
            };
            let mut patches = Vec::new();
            for found in record::scan_with(&data, Some(key)) {
                let record::Found::Record { offset, record, .. } = found else {
                    continue;
                };
                // A notice Gannet generated (null sender: a DSN to the original sender)
                // quotes the failed recipient in its body.
                let notice = record.mail_from.is_empty();
                if !record.rcpts.iter().any(mine) && !notice {
                    continue;
                }
                let msg = MsgKey {
                    segment: seg,
                    offset: offset as u64,
                };
                let done = matches!(self.inner.segments.index.get(msg.to_bytes()),
                    Ok(Some(v)) if v.first() == Some(&1));
                let names_them = || {
                    record
                        .body
                        .to_ascii_lowercase()
                        .windows(want.len())
                        .any(|w| w == want.as_bytes())
                };
                let shred = if record.rcpts.iter().any(mine) {
                    done || record.rcpts.iter().all(mine)
                } else {
                    // A finished DSN that names them (one still owed to its sender is
                    // delivered first; it is sealed meanwhile).
                    done && names_them()
                };
                if !shred {
                    continue;
                }
                match record::shred_patch(&data[offset..]) {
                    Some((at, zeros)) => patches.push((offset + at, zeros)),
                    None => clear += 1,
                }
            }
            if patches.is_empty() {
                continue;
            }
            let write = |e| SpoolError::Write {
                path: path.clone(),
                source: e,
            };
            let file = match std::fs::OpenOptions::new().write(true).open(&path) {
                Ok(f) => f,
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
                Err(e) => return Err(write(e)),
            };
            for (at, zeros) in &patches {
                file.write_all_at(zeros, *at as u64).map_err(write)?;
            }
            file.sync_data().map_err(write)?;
            shredded += patches.len();
        }
        if clear > 0 {
            tracing::warn!(
                records = clear,
                "erasure: spool records of this person were written in clear ([spool] encrypt = false) and stay until their segment is deleted"
            );
        }
        Ok(shredded)
    }

    /// Damaged records the start-up scan found (each copied to `quarantine/` and reported),
    /// with how many messages of their segment are still live.
    pub fn damaged(&self) -> Vec<DamagedRecord> {
        if self.inner.damaged.is_empty() {
            return Vec::new();
        }
        let segs = self.inner.segments.lock();
        self.inner
            .damaged
            .iter()
            .map(|d| {
                let seg = d
                    .segment
                    .file_stem()
                    .and_then(|s| s.to_str())
                    .and_then(|s| u64::from_str_radix(s, 16).ok());
                DamagedRecord {
                    segment_live_messages: seg.and_then(|seg| segs.get(&seg)).map_or(0, |s| s.live),
                    ..d.clone()
                }
            })
            .collect()
    }

    /// Measure the free space of the segments' file system again (blocking: one statvfs), so
    /// a spool that refused mail for lack of space accepts again soon after space returns,
    /// even when no commit happens meanwhile. `serve` calls it every second.
    pub fn refresh_free_space(&self) {
        self.inner
            .free
            .store(free_space(&self.inner.segments.dir), Ordering::Relaxed);
    }

    /// Number of segment files currently tracked (for tests and metrics).
    pub fn segment_count(&self) -> usize {
        self.inner.segments.lock().len()
    }

    /// A named sled tree for small operator state that must survive restarts (suspensions,
    /// warm-up counters). Not for message data. It lives in `state/`, not in the index, so
    /// deleting a damaged index (which is rebuilt from the segments) does not lose it.
    pub fn state_tree(&self, name: &str) -> Result<sled::Tree, SpoolError> {
        self.inner
            .state
            .open_tree(format!("state:{name}"))
            .map_err(|e| SpoolError::State {
                path: self.inner.state_path.clone(),
                source: e,
            })
    }

    /// Wait until every state change made so far is durable (journal) and in the index, then
    /// push sled's buffered index and operator-state updates to the OS (operator state has no
    /// journal: sled's flush is its only durability point, see module docs). Blocking.
    pub fn flush_index(&self) {
        self.inner.journal.barrier();
        if let Err(e) = self.inner.db.flush() {
            tracing::warn!(error = %e, "spool index flush failed");
        }
        if let Err(e) = self.inner.state.flush() {
            tracing::warn!(error = %e, path = %self.inner.state_path.display(),
                "spool operator state flush failed (suspensions, warm-up counters)");
        }
    }
}

impl Segments {
    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<u64, SegState>> {
        // A poisoned lock means a panic while updating counters; the counters are still
        // usable (worst case a segment is kept longer), so carry on.
        self.segs.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// One message of `segment` is done; true when the segment may now be deleted.
    fn release_one(&self, segment: u64) -> bool {
        let mut segs = self.lock();
        match segs.get_mut(&segment) {
            Some(s) => {
                s.live = s.live.saturating_sub(1);
                s.live == 0 && s.sealed && !s.damaged
            }
            None => false,
        }
    }

    /// Called by the writer for each record it made durable.
    fn note_appended(&self, segment: u64, count: usize) {
        self.lock().entry(segment).or_default().live += count;
    }

    /// Called by the writer when it stops writing to a segment.
    fn seal(&self, segment: u64) {
        let delete = {
            let mut segs = self.lock();
            let s = segs.entry(segment).or_default();
            s.sealed = true;
            s.live == 0 && !s.damaged
        };
        if delete {
            self.delete(segment);
        }
    }

    fn delete(&self, segment: u64) {
        let path = segment_path(&self.dir, segment);
        match std::fs::remove_file(&path) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => {
                tracing::warn!(path = %path.display(), error = %e, "cannot delete finished spool segment");
                return;
            }
        }
        if let Err(e) = fsync_dir(&self.dir) {
            tracing::warn!(path = %self.dir.display(), error = %e, "directory fsync failed");
            return;
        }
        self.lock().remove(&segment);
        // Only now that the file is durably gone may its tombstones go.
        let prefix = segment.to_be_bytes();
        let mut batch = sled::Batch::default();
        for item in self.index.scan_prefix(prefix).keys().flatten() {
            batch.remove(item);
        }
        if let Err(e) = self.index.apply_batch(batch) {
            tracing::warn!(error = %e, "spool index cleanup failed");
        }
    }
}

/// Operator state used to live in the index database as trees named `state:NAME`, where the
/// advice to delete a damaged index also deleted it. Copy such trees into the state database
/// (unless it already has them) and drop them from the index; returns how many were moved.
fn move_state_out_of_index(index: &sled::Db, state: &sled::Db) -> sled::Result<usize> {
    let mut moved = 0;
    for name in index.tree_names() {
        if !name.starts_with(b"state:") {
            continue;
        }
        let old = index.open_tree(&name)?;
        let new = state.open_tree(&name)?;
        if new.is_empty() {
            for kv in old.iter() {
                let (k, v) = kv?;
                new.insert(k, v)?;
            }
        }
        state.flush()?;
        drop(old);
        index.drop_tree(&name)?;
        moved += 1;
    }
    Ok(moved)
}

/// Marks owed-DSN data sealed under the spool's state key (clear JSON starts with `[`).
const SEALED_OWED: u8 = 2;

/// Index value of a message in progress: `0`, one state byte per recipient, then the owed
/// DSNs as JSON (absent when none are owed; values written before DSNs were kept end there).
/// With a key the JSON (remote replies and hosts, which often quote the address) is sealed:
/// [`SEALED_OWED`] then `SpoolKey::seal_state` of it.
fn encode_progress(states: &[RcptState], owed: &[DsnOwed], key: Option<&SpoolKey>) -> Vec<u8> {
    let mut v = Vec::with_capacity(states.len() + 1);
    v.push(0u8);
    v.extend(states.iter().map(|s| *s as u8));
    if !owed.is_empty() {
        // Serialising plain strings and numbers cannot fail.
        let json = serde_json::to_vec(owed).unwrap_or_default();
        match key {
            Some(k) => {
                v.push(SEALED_OWED);
                v.extend(k.seal_state(&json));
            }
            None => v.extend(json),
        }
    }
    v
}

/// Check `key` against the spool's `key-check` file, or write that file (durably, before any
/// record is sealed) when the spool has none yet.
fn check_key(path: &Path, key: &SpoolKey) -> Result<(), SpoolError> {
    let want = hex::encode(key.fingerprint());
    match std::fs::read_to_string(path) {
        Ok(text) if text.trim() == want => Ok(()),
        Ok(_) => Err(SpoolError::WrongKey {
            path: path.to_path_buf(),
        }),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            let write = |e| SpoolError::Write {
                path: path.to_path_buf(),
                source: e,
            };
            let tmp = path.with_extension("tmp");
            {
                let mut f = File::create(&tmp).map_err(write)?;
                std::io::Write::write_all(&mut f, format!("{want}\n").as_bytes())
                    .and_then(|()| f.sync_all())
                    .map_err(write)?;
            }
            std::fs::rename(&tmp, path).map_err(write)?;
            if let Some(dir) = path.parent() {
                fsync_dir(dir).map_err(write)?;
            }
            Ok(())
        }
        Err(e) => Err(SpoolError::Dir {
            path: path.to_path_buf(),
            source: e,
        }),
    }
}

/// The inverse of [`encode_progress`] for a record with `n` recipients. Unreadable owed-DSN
/// data is reported and turned back into owed DSNs for every failed recipient (the reply is
/// lost, the notice is not).
fn decode_progress(
    v: &[u8],
    n: usize,
    key: MsgKey,
    spool_key: Option<&SpoolKey>,
) -> (Vec<RcptState>, Vec<DsnOwed>) {
    let states: Vec<RcptState> = (0..n)
        .map(|i| match v.get(i + 1) {
            Some(1) => RcptState::Delivered,
            Some(2) => RcptState::Failed,
            _ => RcptState::Pending,
        })
        .collect();
    let rest = v.get(n + 1..).unwrap_or_default();
    if rest.is_empty() {
        return (states, Vec::new());
    }
    let opened;
    let rest = match rest.split_first() {
        Some((&SEALED_OWED, sealed)) => {
            opened = spool_key
                .and_then(|k| k.open_state(sealed))
                .unwrap_or_default();
            &opened[..]
        }
        _ => rest,
    };
    match serde_json::from_slice::<Vec<DsnOwed>>(rest) {
        Ok(owed) => (
            states,
            owed.into_iter().filter(|o| (o.rcpt as usize) < n).collect(),
        ),
        Err(e) => {
            tracing::error!(queue_id = %key.queue_id(), error = %e,
                "owed DSN data in the spool index is unreadable; sending DSNs for every failed recipient without the remote reply");
            let owed = states
                .iter()
                .enumerate()
                .filter(|(_, s)| **s == RcptState::Failed)
                .map(|(i, _)| DsnOwed {
                    rcpt: i as u32,
                    code: 550,
                    enhanced: "5.0.0".into(),
                    text: "delivery failed (the remote reply was lost from the spool index)".into(),
                    remote_host: None,
                })
                .collect();
            (states, owed)
        }
    }
}

type ScanResult = (
    Vec<Recovered>,
    HashMap<u64, SegState>,
    u64,
    Vec<DamagedRecord>,
);

/// Read every segment, skip messages the index marks done, and count live messages per segment.
/// Damaged records are copied to `quarantine` and reported; their segments are kept.
fn scan(
    dir: &Path,
    quarantine: &Path,
    index: &sled::Tree,
    key: Option<&SpoolKey>,
) -> Result<ScanResult, SpoolError> {
    let mut segments: Vec<u64> = std::fs::read_dir(dir)
        .map_err(|e| SpoolError::Dir {
            path: dir.to_path_buf(),
            source: e,
        })?
        .flatten()
        .filter_map(|e| {
            let name = e.file_name().into_string().ok()?;
            let hex = name.strip_suffix(".seg")?;
            u64::from_str_radix(hex, 16).ok()
        })
        .collect();
    segments.sort_unstable();
    let mut recovered = Vec::new();
    let mut segs = HashMap::new();
    let mut damaged = Vec::new();
    let mut max_seg = 0;
    for seg in segments {
        max_seg = max_seg.max(seg);
        let path = segment_path(dir, seg);
        let data = std::fs::read(&path).map_err(|e| SpoolError::Dir {
            path: path.clone(),
            source: e,
        })?;
        let mut state = SegState {
            sealed: true,
            ..SegState::default()
        };
        for found in record::scan_with(&data, key) {
            match found {
                record::Found::Record {
                    offset,
                    len,
                    record: rec,
                } => {
                    let msg_key = MsgKey {
                        segment: seg,
                        offset: offset as u64,
                    };
                    let progress = match index.get(msg_key.to_bytes()) {
                        Ok(Some(v)) if v.first() == Some(&1) => None,
                        Ok(Some(v)) => Some(decode_progress(&v, rec.rcpts.len(), msg_key, key)),
                        _ => Some((vec![RcptState::Pending; rec.rcpts.len()], Vec::new())),
                    };
                    if let Some((states, dsn_owed)) = progress {
                        state.live += 1;
                        recovered.push(Recovered {
                            location: Location {
                                key: msg_key,
                                len: len as u32,
                            },
                            record: MessageRecord {
                                body: Vec::new(), // read again at delivery time
                                ..rec
                            },
                            states,
                            dsn_owed,
                        });
                    }
                }
                record::Found::Shredded { .. } => {
                    // Erased: nothing in it can be read, and nothing in it is owed to anyone.
                }
                record::Found::TornTail { offset, error } => {
                    // A write cut short by a crash: nothing in it was acknowledged.
                    tracing::warn!(segment = %path.display(), offset, error = %error,
                        "spool segment ends in an incomplete record (a write cut short by a crash; it was never acknowledged); ignoring it");
                }
                record::Found::Damaged { offset, len, error } => {
                    state.damaged = true;
                    let bytes = &data[offset..offset + len];
                    let copy = quarantine_copy(quarantine, seg, offset, bytes);
                    let quarantine = match copy {
                        Ok(q) => Some(q),
                        Err(e) => {
                            tracing::error!(path = %quarantine.display(), error = %e,
                                "cannot copy a damaged spool record to the quarantine directory; the segment keeps the bytes");
                            None
                        }
                    };
                    let q = quarantine
                        .as_ref()
                        .map_or_else(|| "(copy failed)".to_string(), |q| q.display().to_string());
                    tracing::error!(segment = %path.display(), offset, length = len, error = %error, quarantine = %q,
                        "spool segment holds a damaged record (an accepted message that cannot be read back); the records after it were recovered; its bytes are copied to the quarantine file; the segment is kept until you delete it by hand (see `gannet queue list`)");
                    damaged.push(DamagedRecord {
                        segment: path.clone(),
                        offset: offset as u64,
                        length: len as u64,
                        error: error.to_string(),
                        quarantine,
                        segment_live_messages: 0,
                    });
                }
            }
        }
        segs.insert(seg, state);
    }
    Ok((recovered, segs, max_seg, damaged))
}

/// Copy damaged bytes to `quarantine/{segment}-{offset}.damaged` (once: a later start finds the
/// same damage and the same file) and make the copy durable.
fn quarantine_copy(
    quarantine: &Path,
    segment: u64,
    offset: usize,
    bytes: &[u8],
) -> std::io::Result<PathBuf> {
    let path = quarantine.join(format!("{segment:016x}-{offset:016x}.damaged"));
    if std::fs::metadata(&path).is_ok_and(|m| m.len() == bytes.len() as u64) {
        return Ok(path);
    }
    std::fs::create_dir_all(quarantine)?;
    let tmp = path.with_extension("tmp");
    {
        let mut f = File::create(&tmp)?;
        std::io::Write::write_all(&mut f, bytes)?;
        f.sync_all()?;
    }
    std::fs::rename(&tmp, &path)?;
    fsync_dir(quarantine)?;
    Ok(path)
}

#[cfg(test)]
mod tests;
