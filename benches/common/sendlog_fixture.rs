//! The generated send log the send-log and console benches query: `n` events of
//! `sendlog_events::event` under a fixed master key, appended in batches of 2,000.
//!
//! By default it lives in a temporary directory and goes with the run. With
//! `SENDLOG_BENCH_DIR=DIR` it is built once in `DIR/sendlog.sqlite` and kept: `DIR.READY`
//! (written when the build is complete, holding `events=N`) makes later runs, of either bench,
//! reuse it without writing; a build that stopped half-way resumes after the last event it
//! holds (event `i` has `time_us` = BASE + i ms). `DIR.lock` (flock) keeps two processes from
//! building the same directory. A 10M-event log takes ~13 GB and tens of minutes: build it once.
//! `SENDLOG_BENCH_LAYOUT=before` builds a new log as stores were laid out before 2026-12-05
//! 12:30 UTC (`store::Layout::BEFORE`); `SENDLOG_BENCH_PAGE_SIZE=N` sets its page size.
//! Set-up here runs even when nextest lists the bench binary (`--list`), so without the
//! variable it stays small and can fail only as the old temporary-directory set-up did.

use std::path::{Path, PathBuf};
use std::time::Instant;

use fs2::FileExt;
use gannet::events::Event;
use gannet::sendlog::store::StoreInfo;
use gannet::sendlog::{MasterKey, store};

use super::sendlog_events::event;

/// `time_us` of event 0 (see `sendlog_events::event`).
const BASE_US: u64 = 1_790_000_000_000_000;

/// A send log to read, and where it came from.
pub struct Fixture {
    pub info: StoreInfo,
    /// Events it holds.
    pub n: u64,
    /// The directory's disk use in bytes (the SQLite file and its WAL).
    pub bytes: u64,
    /// Events appended by this run and how long they took (0 when reused).
    pub appended: u64,
    pub append_secs: f64,
    _tmp: Option<tempfile::TempDir>,
}

fn key() -> MasterKey {
    MasterKey::from_bytes([9; 32])
}

fn ready_path(dir: &Path) -> PathBuf {
    let mut p = dir.as_os_str().to_owned();
    p.push(".READY");
    PathBuf::from(p)
}

fn dir_bytes(dir: &Path) -> u64 {
    std::fs::read_dir(dir)
        .map(|rd| {
            rd.flatten()
                .map(|e| e.metadata().map(|m| m.len()).unwrap_or(0))
                .sum()
        })
        .unwrap_or(0)
}

/// The event count a `DIR.READY` file names.
fn ready_events(dir: &Path) -> Option<u64> {
    let text = std::fs::read_to_string(ready_path(dir)).ok()?;
    text.lines()
        .find_map(|l| l.trim().strip_prefix("events="))
        .and_then(|v| v.trim().parse().ok())
}

/// A send log of `n` events: kept in `SENDLOG_BENCH_DIR` when set (reused when complete),
/// else in a temporary directory. `who` names the bench in messages.
pub fn open(n: u64, who: &str) -> Fixture {
    let kept = std::env::var_os("SENDLOG_BENCH_DIR").map(PathBuf::from);
    let Some(dir) = kept else {
        let tmp = tempfile::tempdir().expect("a temporary directory for the bench send log");
        let mut f = build(tmp.path(), 0, n, who);
        f._tmp = Some(tmp);
        return f;
    };
    if let Some(have) = ready_events(&dir) {
        if have != n {
            eprintln!(
                "{who}: {} holds {have} events (its .READY says so); using them, not {n}",
                dir.display()
            );
        }
        return reused(&dir, have);
    }
    std::fs::create_dir_all(&dir)
        .unwrap_or_else(|e| panic!("cannot create SENDLOG_BENCH_DIR {}: {e}", dir.display()));
    let mut lock_name = dir.as_os_str().to_owned();
    lock_name.push(".lock");
    let lock = std::fs::File::create(&lock_name)
        .unwrap_or_else(|e| panic!("cannot create {}: {e}", PathBuf::from(&lock_name).display()));
    if lock.try_lock_exclusive().is_err() {
        eprintln!(
            "{who}: another process is building {}; waiting for it",
            dir.display()
        );
        lock.lock_exclusive()
            .unwrap_or_else(|e| panic!("cannot lock {}: {e}", PathBuf::from(&lock_name).display()));
    }
    if let Some(have) = ready_events(&dir) {
        return reused(&dir, have);
    }
    let f = build(&dir, resume_from(&dir), n, who);
    std::fs::write(ready_path(&dir), format!("events={n}\n"))
        .unwrap_or_else(|e| panic!("cannot write {}: {e}", ready_path(&dir).display()));
    eprintln!(
        "{who}: {} complete ({n} events, {} bytes); {} written",
        dir.display(),
        f.bytes,
        ready_path(&dir).display()
    );
    f
}

fn reused(dir: &Path, n: u64) -> Fixture {
    eprintln!(
        "reusing the send log of {n} events in {} ({} bytes)",
        dir.display(),
        dir_bytes(dir)
    );
    Fixture {
        info: StoreInfo {
            path: dir.join("sendlog.sqlite"),
            key: key(),
        },
        n,
        bytes: dir_bytes(dir),
        appended: 0,
        append_secs: 0.0,
        _tmp: None,
    }
}

/// The first event a half-built log lacks.
fn resume_from(dir: &Path) -> u64 {
    if !dir.join("sendlog.sqlite").exists() {
        return 0;
    }
    let w = store::open_writer(&dir.join("sendlog.sqlite"), key(), &dir.join("k"))
        .unwrap_or_else(|e| panic!("cannot reopen the half-built send log: {e}"));
    match w.last_event_time_us() {
        Ok(Some(t)) => t.saturating_sub(BASE_US) / 1000 + 1,
        _ => 0,
    }
}

fn build(dir: &Path, from: u64, n: u64, who: &str) -> Fixture {
    let db = dir.join("sendlog.sqlite");
    // SENDLOG_BENCH_LAYOUT=before builds the log as stores were created before 2026-12-05
    // 12:30 UTC (4 KiB pages, indexes on time and sender), to compare queries with the new layout.
    let mut layout = match std::env::var("SENDLOG_BENCH_LAYOUT").as_deref() {
        Ok("before") => store::Layout::BEFORE,
        _ => store::Layout::NOW,
    };
    // SENDLOG_BENCH_PAGE_SIZE sets the new log's page size (to compare them).
    if let Some(p) = std::env::var("SENDLOG_BENCH_PAGE_SIZE")
        .ok()
        .and_then(|v| v.parse().ok())
    {
        layout.page_size = p;
    }
    let mut w = store::open_writer_as(
        &db,
        key(),
        &dir.join("k"),
        layout,
        store::WAL_AUTOCHECKPOINT_PAGES,
    )
    .unwrap_or_else(|e| panic!("cannot open the bench send log {}: {e}", db.display()));
    eprintln!("{who}: a new log is laid out as {layout:?}");
    if from > 0 {
        eprintln!("{who}: resuming the send log at event {from}");
    }
    let t = Instant::now();
    let mut i = from;
    let mut next_note = from + 1_000_000;
    while i < n {
        let batch: Vec<Event> = (i..(i + 2000).min(n)).map(event).collect();
        w.append(batch.iter())
            .unwrap_or_else(|e| panic!("appending to the bench send log: {e}"));
        i += 2000;
        if i >= next_note {
            eprintln!(
                "{who}: {i} events ({:.0} events/s)",
                (i - from) as f64 / t.elapsed().as_secs_f64()
            );
            next_note += 1_000_000;
        }
    }
    let append_secs = t.elapsed().as_secs_f64();
    let info = w.info().clone();
    drop(w);
    Fixture {
        info,
        n,
        bytes: dir_bytes(dir),
        appended: n.saturating_sub(from),
        append_secs,
        _tmp: None,
    }
}
