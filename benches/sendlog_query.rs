//! Send-log queries over a generated log: SENDLOG_BENCH_EVENTS synthetic events (default
//! 1,000,000; the target is 10M — set the variable) of 200,000 messages × 5 events
//! (received + delivered/deferred/bounced per recipient) over 100,000 recipients and 20
//! campaigns. Prints the append rate and disk per event once, then measures query by
//! recipient, the story of one message, campaign statistics and CSV export (rows/s).

#[path = "common/size.rs"]
mod size;
use std::time::{Duration, Instant};

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use gannet::events::Event;
use gannet::sendlog::{EventFilter, MasterKey, Reader, render, store};

#[path = "common/sendlog_events.rs"]
mod sendlog_events;
use sendlog_events::event;

fn bench(c: &mut Criterion) {
    let n = size::size("SENDLOG_BENCH_EVENTS", 1_000_000, 2_000);
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("sendlog.sqlite");
    let key = MasterKey::from_bytes([9; 32]);
    let mut w = store::open_writer(&db, key, &dir.path().join("k")).unwrap();
    let t = Instant::now();
    let mut i = 0;
    while i < n {
        let batch: Vec<Event> = (i..(i + 2000).min(n)).map(event).collect();
        w.append(batch.iter()).unwrap();
        i += 2000;
    }
    let secs = t.elapsed().as_secs_f64();
    let info = w.info().clone();
    drop(w);
    let bytes: u64 = std::fs::read_dir(dir.path())
        .unwrap()
        .flatten()
        .map(|e| e.metadata().map(|m| m.len()).unwrap_or(0))
        .sum();
    eprintln!(
        "sendlog: {n} events appended in {secs:.1} s ({:.0} events/s, batches of 2000), {} bytes on disk = {:.0} bytes/event",
        n as f64 / secs,
        bytes,
        bytes as f64 / n as f64
    );
    let mut r = Reader::open(&info).unwrap();

    let mut g = c.benchmark_group("sendlog");
    g.measurement_time(Duration::from_secs(5)).sample_size(20);
    g.bench_function("query_by_recipient", |b| {
        let mut k = 0u64;
        b.iter(|| {
            k += 1;
            let f = EventFilter {
                recipient: Some(format!(
                    "user{}@dest{}.test",
                    (k * 104_729) % 100_000,
                    k % 13
                )),
                limit: 100,
                ..Default::default()
            };
            r.events(&f).unwrap()
        })
    });
    g.bench_function("message_story", |b| {
        let mut k = 0u64;
        b.iter(|| {
            k += 1;
            let f = EventFilter {
                message_id: Some(format!("{:021X}", (k * 7919) % (n / 5))),
                limit: 100_000,
                ..Default::default()
            };
            r.events(&f).unwrap()
        })
    });
    g.bench_function("campaign_stats", |b| {
        b.iter(|| render::campaign_stats("c3", &r.campaign_counts("c3").unwrap()))
    });
    g.throughput(Throughput::Elements(10_000));
    g.bench_function("csv_export_10k_rows", |b| {
        b.iter(|| {
            let f = EventFilter {
                campaign: Some("c5".into()),
                limit: 10_000,
                ..Default::default()
            };
            let rows = r.events(&f).unwrap();
            let mut out = String::new();
            for row in &rows {
                out.push_str(&render::csv_row(row));
            }
            out.len()
        })
    });
    g.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
