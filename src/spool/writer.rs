//! The group-commit writer: one thread that owns the active segment file.
//!
//! It takes every write request waiting in the channel (up to `max_commit_bytes`), appends them
//! with one `write`, makes them durable with one `fdatasync`, and only then answers each
//! request. While it syncs, new requests queue up and form the next batch, so the number of
//! syncs per second stays bounded by the disk's latency, not by the message rate.
//!
//! A dedicated OS thread rather than a tokio task: every step here is blocking file I/O. All
//! file-system calls go through the [`Storage`] seam, so tests can count syncs and inject
//! failures.

use std::path::PathBuf;

use tokio::sync::mpsc;

use std::sync::Arc;

use super::storage::{SegmentFile, Storage};
use super::{Location, MsgKey, Segments, SpoolError, WriteReq, free_space, is_full, segment_path};
use crate::metrics::Metrics;

pub(super) struct WriterConfig {
    pub dir: PathBuf,
    pub first_segment: u64,
    pub max_segment_bytes: u64,
    pub max_commit_bytes: usize,
    /// Free bytes on the file system, measured after every commit.
    pub free: Arc<std::sync::atomic::AtomicU64>,
}

struct Active {
    id: u64,
    file: Box<dyn SegmentFile>,
    len: u64,
}

pub(super) fn start(
    cfg: WriterConfig,
    storage: Arc<dyn Storage>,
    rx: mpsc::Receiver<WriteReq>,
    spool: Arc<Segments>,
    metrics: Metrics,
) {
    std::thread::Builder::new()
        .name("gannet-spool-writer".into())
        .spawn(move || run(cfg, &*storage, rx, spool, metrics))
        .expect("spawning the spool writer thread");
}

/// A write error as the caller sees it: `Full` when the disk is full (452 4.3.1 / HTTP 507).
fn write_error(path: PathBuf, e: std::io::Error) -> SpoolError {
    if is_full(&e) {
        SpoolError::Full { path, min_free: 0 }
    } else {
        SpoolError::Write { path, source: e }
    }
}

fn open_segment(cfg: &WriterConfig, storage: &dyn Storage, id: u64) -> Result<Active, SpoolError> {
    let path = segment_path(&cfg.dir, id);
    let err = |e| write_error(path.clone(), e);
    let file = storage.create_new(&path).map_err(err)?;
    // The new directory entry must be durable before anything in the file is acknowledged.
    if let Err(e) = storage.sync_dir(&cfg.dir) {
        // Give the empty file up rather than write into one whose name may not survive a
        // crash. Should the removal fail too, the file is empty and the next start-up scan
        // deletes it.
        drop(file);
        if let Err(rm) = storage.remove(&path) {
            tracing::warn!(path = %path.display(), error = %rm, "cannot remove an abandoned empty spool segment; the next start-up deletes it");
        }
        return Err(err(e));
    }
    Ok(Active { id, file, len: 0 })
}

fn run(
    cfg: WriterConfig,
    storage: &dyn Storage,
    mut rx: mpsc::Receiver<WriteReq>,
    spool: Arc<Segments>,
    metrics: Metrics,
) {
    let mut next_id = cfg.first_segment;
    let mut active: Option<Active> = None;
    let mut batch: Vec<WriteReq> = Vec::new();
    let mut buf: Vec<u8> = Vec::with_capacity(cfg.max_commit_bytes.min(16 << 20));
    while let Some(first) = rx.blocking_recv() {
        batch.clear();
        buf.clear();
        let mut bytes = first.bytes.len();
        batch.push(first);
        while bytes < cfg.max_commit_bytes {
            match rx.try_recv() {
                Ok(req) => {
                    bytes += req.bytes.len();
                    batch.push(req);
                }
                Err(_) => break,
            }
        }
        // Rotate before writing when the active segment is full.
        if let Some(a) = &active
            && a.len >= cfg.max_segment_bytes
        {
            let id = a.id;
            active = None;
            spool.seal(id);
        }
        if active.is_none() {
            // A segment number is used once, whether or not opening it worked: a failure after
            // the file was created (its directory fsync) must not make every later batch fail
            // with "file exists".
            let id = next_id;
            next_id += 1;
            match open_segment(&cfg, storage, id) {
                Ok(a) => active = Some(a),
                Err(e) => {
                    tracing::error!(error = %e, "cannot start a new spool segment; answering 4xx to this batch and trying a new segment with the next one");
                    fail_batch(&mut batch, &e);
                    continue;
                }
            }
        }
        let Some(a) = active.as_mut() else { continue };
        let mut locs = Vec::with_capacity(batch.len());
        for req in &batch {
            let offset = a.len + buf.len() as u64;
            locs.push(Location {
                key: MsgKey {
                    segment: a.id,
                    offset,
                },
                len: req.bytes.len() as u32,
            });
            buf.extend_from_slice(&req.bytes);
        }
        let result = a.file.append(&buf).and_then(|()| a.file.sync_data());
        cfg.free
            .store(free_space(&cfg.dir), std::sync::atomic::Ordering::Relaxed);
        match result {
            Ok(()) => {
                a.len += buf.len() as u64;
                spool.note_appended(a.id, batch.len());
                metrics.spool_commits.inc();
                metrics.spool_commit_messages.observe(batch.len() as f64);
                for (req, loc) in batch.drain(..).zip(locs) {
                    let _ = req.reply.send(Ok(loc));
                }
            }
            Err(e) => {
                let err = write_error(segment_path(&cfg.dir, a.id), e);
                tracing::error!(error = %err, "spool commit failed; answering 4xx and starting a new segment");
                fail_batch(&mut batch, &err);
                // What was written is unknown: stop using this file. Messages in it that were
                // acknowledged earlier stay valid; the failed tail is skipped by the scan.
                let id = a.id;
                active = None;
                spool.seal(id);
            }
        }
    }
    if let Some(a) = active {
        spool.seal(a.id);
    }
}

fn fail_batch(batch: &mut Vec<WriteReq>, err: &SpoolError) {
    for req in batch.drain(..) {
        let e = match err {
            SpoolError::Full { path, min_free } => SpoolError::Full {
                path: path.clone(),
                min_free: *min_free,
            },
            other => SpoolError::Write {
                path: PathBuf::new(),
                source: std::io::Error::other(other.to_string()),
            },
        };
        let _ = req.reply.send(Err(e));
    }
}
