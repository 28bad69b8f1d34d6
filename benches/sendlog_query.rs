//! Send-log queries over a generated log: SENDLOG_BENCH_EVENTS synthetic events (default
//! 1,000,000; the target is 10M — set the variable) of 200,000 messages × 5 events
//! (received + delivered/deferred/bounced per recipient) over 100,000 recipients and 20
//! campaigns (`SENDLOG_BENCH_DIR=DIR` keeps and reuses it, e.g. /work/data/sendlog-10m; see
//! common/sendlog_fixture.rs). Prints the append rate and disk per event once, then measures
//! query by recipient, the story of one message, campaign statistics and CSV export (rows/s).

#[path = "common/size.rs"]
mod size;
use std::time::Duration;

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use gannet::sendlog::{EventFilter, Reader, export, render};

#[path = "common/sendlog_events.rs"]
mod sendlog_events;
#[path = "common/sendlog_fixture.rs"]
mod sendlog_fixture;

fn bench(c: &mut Criterion) {
    let n = size::size("SENDLOG_BENCH_EVENTS", 1_000_000, 2_000);
    // SENDLOG_BENCH_DIR keeps (and reuses) the generated log: see common/sendlog_fixture.rs.
    let log = sendlog_fixture::open(n, "sendlog_query");
    let n = log.n;
    if log.appended > 0 {
        eprintln!(
            "sendlog: {} events appended in {:.1} s ({:.0} events/s, batches of 2000)",
            log.appended,
            log.append_secs,
            log.appended as f64 / log.append_secs.max(1e-9)
        );
    }
    eprintln!(
        "sendlog: {n} events, {} bytes on disk = {:.0} bytes/event",
        log.bytes,
        log.bytes as f64 / n.max(1) as f64
    );
    let info = log.info.clone();
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
    // CSV export as the API streams it: chunks of `export::CHUNK_ROWS`, a fresh reader (and so
    // fresh person keys) for each. First through the rows' JSON (`Reader::events` +
    // `render::csv_row`, the path before 2026-12-05), then straight from the columns.
    let export = |r: &mut Reader, f: &EventFilter, out: &mut Vec<u8>| -> (usize, u64) {
        let c = r.export_csv(f, out).unwrap();
        (c.rows, c.last_seq)
    };
    let via_json = |r: &mut Reader, f: &EventFilter, out: &mut Vec<u8>| -> (usize, u64) {
        let rows = r.events(f).unwrap();
        for row in &rows {
            out.extend_from_slice(render::csv_row(row).as_bytes());
        }
        (
            rows.len(),
            rows.last().and_then(|e| e["seq"].as_u64()).unwrap_or(0),
        )
    };
    type Chunk<'a> = &'a dyn Fn(&mut Reader, &EventFilter, &mut Vec<u8>) -> (usize, u64);
    let rows = 10_000usize.min(n as usize / 20);
    let paths: [(&str, Chunk); 2] = [("csv_export_via_json", &via_json), ("csv_export", &export)];
    g.throughput(Throughput::Elements(rows as u64));
    for (name, chunk) in paths {
        g.bench_function(name, |b| {
            b.iter(|| {
                let mut f = EventFilter {
                    campaign: Some("c5".into()),
                    limit: export::CHUNK_ROWS,
                    ..Default::default()
                };
                let mut out = Vec::new();
                let mut left = rows;
                while left > 0 {
                    f.limit = export::CHUNK_ROWS.min(left);
                    let mut r = Reader::open(&info).unwrap();
                    let (got, last) = chunk(&mut r, &f, &mut out);
                    left = if got < f.limit { 0 } else { left - got };
                    f.after = last;
                }
                out.len()
            })
        });
    }
    g.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
