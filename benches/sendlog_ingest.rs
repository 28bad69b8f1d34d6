//! The send log's ingest cost per event: what the ingester does for every event of
//! `benches/e2e.sh` (`Writer::append_through`: keyed hashes, seals, the row's JSON, the chain
//! hash, the SQLite row and index inserts and the commit), without the rest of Gannet.
//!
//! Events as e2e.sh makes them: per message a `received` and a `delivered`, queue ids in spool
//! order, time-based Message-IDs, one sender; one recipient (`SENDLOG_INGEST_RCPTS=1`, as
//! e2e.sh) or a new recipient per message (`distinct`). `SENDLOG_INGEST_MESSAGES` messages
//! (default 20,000 as e2e.sh) into a fresh store per round, in transactions of
//! `SENDLOG_INGEST_BATCH` events (default 2,200: what 500 ms of e2e.sh's traffic gives the
//! ingester), `SENDLOG_INGEST_ROUNDS` rounds of each store layout (default 5, alternating: a
//! store as created before 2026-12-05 12:30 UTC (`Layout::BEFORE`, SQLite's default WAL
//! checkpoint), then one created now). `SENDLOG_INGEST_PAGE_SIZE`,
//! `SENDLOG_INGEST_AUTOCHECKPOINT` (pages), `SENDLOG_INGEST_TIME_INDEX=1` and
//! `SENDLOG_INGEST_SENDER_INDEX=1` (the indexes stores had before) change the second
//! variant, to compare settings.
//! Prints the process CPU per event of each round (the final WAL checkpoint included), the
//! store's size (database and WAL before that checkpoint, database after it) and the
//! process's RSS after it, the medians and their ratio. Under the test suite: 200
//! messages, one round.

#[path = "common/size.rs"]
mod size;

use gannet::events::{Event, EventKind};
use gannet::sendlog::MasterKey;
use gannet::sendlog::store::{Layout, WAL_AUTOCHECKPOINT_PAGES, open_writer_as};

fn cpu_secs() -> f64 {
    let mut t = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: `t` is a valid timespec for the call to fill.
    unsafe { libc::clock_gettime(libc::CLOCK_PROCESS_CPUTIME_ID, &mut t) };
    t.tv_sec as f64 + t.tv_nsec as f64 * 1e-9
}

fn events(messages: u64, distinct: bool) -> Vec<Event> {
    let t0 = 1_790_000_000_000_000u64;
    let mut out = Vec::with_capacity(messages as usize * 2);
    for m in 0..messages {
        let queue_id = format!("{:013X}{:08X}", 1 + m / 4000, (m % 4000) * 5000);
        let message_id = format!(
            "{:x}.{:016x}@gannet.bench.test",
            t0 + m * 300,
            m.wrapping_mul(0x9E37_79B9_7F4A_7C15)
        );
        let mut r = Event::new(EventKind::Received {
            listener: "default".into(),
            client_ip: "127.0.0.1".into(),
            auth: String::new(),
            size: 4000,
            recipients: 1,
            variant: String::new(),
            replayed: false,
        });
        r.time_us = t0 + m * 300;
        r.queue_id = queue_id.clone();
        r.message_id = message_id.clone();
        r.sender = "sender@src.test".into();
        r.class = "promotional".into();
        r.pool = "default".into();
        let mut d = Event::new(EventKind::Delivered {
            site: "dest.test".into(),
            mx_host: "127.0.0.1".into(),
            remote_ip: "127.0.0.1".into(),
            source_ip: "127.0.0.1".into(),
            tls: None,
            reply: "250 2.0.0 Ok: queued as 4FZ1cK3XHbz9sQ".into(),
            queue_secs: 0.012,
            provider: String::new(),
        });
        d.time_us = t0 + m * 300 + 150;
        d.queue_id = queue_id;
        d.message_id = message_id;
        d.recipient = if distinct {
            format!("user{m}@dest.test")
        } else {
            "rcpt@dest.test".into()
        };
        d.sender = r.sender.clone();
        d.class = r.class.clone();
        d.pool = r.pool.clone();
        d.attempt = 1;
        out.push(r);
        out.push(d);
    }
    out
}

/// The process's resident set in KiB (`VmRSS`), 0 when /proc cannot say.
fn rss_kib() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("VmRSS:"))
                .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        })
        .unwrap_or(0)
}

fn main() {
    let messages = size::size("SENDLOG_INGEST_MESSAGES", 20_000, 200);
    let rounds = size::size("SENDLOG_INGEST_ROUNDS", 5, 1);
    let batch = size::size("SENDLOG_INGEST_BATCH", 2_200, 100).max(1) as usize;
    let distinct = std::env::var("SENDLOG_INGEST_RCPTS").is_ok_and(|v| v == "distinct");
    let mut now = Layout::NOW;
    now.page_size = size::size(
        "SENDLOG_INGEST_PAGE_SIZE",
        now.page_size as u64,
        now.page_size as u64,
    ) as u32;
    let flag = |var: &str, default: bool| std::env::var(var).map_or(default, |v| v == "1");
    now.time_index = flag("SENDLOG_INGEST_TIME_INDEX", now.time_index);
    now.sender_index = flag("SENDLOG_INGEST_SENDER_INDEX", now.sender_index);
    let ckpt = size::size(
        "SENDLOG_INGEST_AUTOCHECKPOINT",
        WAL_AUTOCHECKPOINT_PAGES as u64,
        WAL_AUTOCHECKPOINT_PAGES as u64,
    ) as u32;
    let variants = [("before", Layout::BEFORE, 1000), ("now", now, ckpt)];
    eprintln!("sendlog_ingest: now = {now:?}, wal_autocheckpoint {ckpt} pages");
    let evs = events(messages, distinct);
    let mut per_event = [Vec::new(), Vec::new()];
    for (round, v) in (0..rounds * 2).map(|i| (i / 2, i as usize % 2)) {
        let (name, layout, ckpt) = variants[v];
        let dir = tempfile::tempdir().expect("temp dir");
        let db = dir.path().join("sendlog.sqlite");
        let mut w = open_writer_as(
            &db,
            MasterKey::from_bytes([7; 32]),
            &dir.path().join("key"),
            layout,
            ckpt,
        )
        .expect("open the store");
        let start = cpu_secs();
        for (i, chunk) in evs.chunks(batch).enumerate() {
            let pos = ((i + 1) * batch) as u64;
            w.append_through(chunk, Some((pos * 500, pos)))
                .expect("append");
        }
        // The database and WAL sizes as the run left them, then the checkpoint the commits
        // left to do, counted in the round's CPU (a larger WAL only defers it).
        let len = |f: &str| std::fs::metadata(dir.path().join(f)).map_or(0, |m| m.len());
        let (db_bytes, wal_bytes) = (len("sendlog.sqlite"), len("sendlog.sqlite-wal"));
        w.checkpoint_wal().expect("checkpoint");
        let us = (cpu_secs() - start) * 1e6 / evs.len() as f64;
        let db_bytes_after = len("sendlog.sqlite");
        eprintln!(
            "sendlog_ingest round {round} {name}: {} events, {us:.2} us CPU/event, {:.0} bytes/event on disk once checkpointed (before the last checkpoint: db {db_bytes} + wal {wal_bytes}), RSS {} KiB",
            evs.len(),
            db_bytes_after as f64 / evs.len() as f64,
            rss_kib()
        );
        per_event[v].push(us);
    }
    let median = |v: &mut Vec<f64>| {
        v.sort_by(f64::total_cmp);
        v[v.len() / 2]
    };
    let (before, now) = (median(&mut per_event[0]), median(&mut per_event[1]));
    eprintln!(
        "sendlog_ingest: median us CPU/event over {rounds} rounds each ({}): before {before:.2}, now {now:.2}, now/before {:.3}",
        if distinct {
            "a recipient per message"
        } else {
            "one recipient"
        },
        now / before
    );
}
