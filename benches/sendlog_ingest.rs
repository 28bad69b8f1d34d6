//! The send log's ingest cost per event: what the ingester does for every event of
//! `benches/e2e.sh` (`Writer::append_through`: keyed hashes, seals, the row's JSON, the chain
//! hash, the SQLite row and index inserts and the commit), without the rest of Gannet.
//!
//! Events as e2e.sh makes them: per message a `received` and a `delivered`, queue ids in spool
//! order, time-based Message-IDs, one sender; one recipient (`SENDLOG_INGEST_RCPTS=1`, as
//! e2e.sh) or a new recipient per message (`distinct`). `SENDLOG_INGEST_MESSAGES` messages
//! (default 20,000 as e2e.sh) into a fresh store per round, in transactions of
//! `SENDLOG_INGEST_BATCH` events (default 2,200: what 500 ms of e2e.sh's traffic gives the
//! ingester), `SENDLOG_INGEST_ROUNDS` rounds of each `data` format (default 5, alternating:
//! the whole event as rows were written before 2026-12-05 10:00, then the kind's facts
//! only, as now). Prints the process CPU per event of each round, the medians and their
//! ratio. Under the test suite: 200 messages, one round.

#[path = "common/size.rs"]
mod size;

use gannet::events::{Event, EventKind};
use gannet::sendlog::MasterKey;
use gannet::sendlog::store::{DataFormat, open_writer};

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

fn main() {
    let messages = size::size("SENDLOG_INGEST_MESSAGES", 20_000, 200);
    let rounds = size::size("SENDLOG_INGEST_ROUNDS", 5, 1);
    let batch = size::size("SENDLOG_INGEST_BATCH", 2_200, 100).max(1) as usize;
    let distinct = std::env::var("SENDLOG_INGEST_RCPTS").is_ok_and(|v| v == "distinct");
    let evs = events(messages, distinct);
    let mut per_event = [Vec::new(), Vec::new()];
    for (round, format) in
        (0..rounds * 2).map(|i| (i / 2, [DataFormat::Event, DataFormat::Kind][i as usize % 2]))
    {
        let dir = tempfile::tempdir().expect("temp dir");
        let db = dir.path().join("sendlog.sqlite");
        let mut w = open_writer(&db, MasterKey::from_bytes([7; 32]), &dir.path().join("key"))
            .expect("open the store");
        w.write_data_as(format);
        let start = cpu_secs();
        for (i, chunk) in evs.chunks(batch).enumerate() {
            let pos = ((i + 1) * batch) as u64;
            w.append_through(chunk, Some((pos * 500, pos)))
                .expect("append");
        }
        let us = (cpu_secs() - start) * 1e6 / evs.len() as f64;
        let bytes: u64 = std::fs::read_dir(dir.path())
            .expect("list the store")
            .filter_map(|e| e.ok()?.metadata().ok())
            .map(|m| m.len())
            .sum();
        eprintln!(
            "sendlog_ingest round {round} data {format:?}: {} events, {us:.2} us CPU/event, {:.0} bytes/event on disk (db + wal)",
            evs.len(),
            bytes as f64 / evs.len() as f64
        );
        per_event[(format == DataFormat::Kind) as usize].push(us);
    }
    let median = |v: &mut Vec<f64>| {
        v.sort_by(f64::total_cmp);
        v[v.len() / 2]
    };
    let (event, kind) = (median(&mut per_event[0]), median(&mut per_event[1]));
    eprintln!(
        "sendlog_ingest: median us CPU/event over {rounds} rounds each ({}): data Event {event:.2}, Kind {kind:.2}, Kind/Event {:.3}",
        if distinct {
            "a recipient per message"
        } else {
            "one recipient"
        },
        kind / event
    );
}
