//! The console's recipient search page over a large send log (issue 22 "Speed"): server time
//! of one page (the query of 50 events by recipient, as `http::logs::search_page` runs it,
//! plus rendering the whole page with `http::console::logs::results_page`), against the bare
//! query in the same run as the baseline; and the page's weight with its stylesheet.
//!
//! CONSOLE_BENCH_EVENTS synthetic events (default 1,000,000 under `cargo bench`, 2,000 in the
//! test pass; the target is 10M: set the variable). `SENDLOG_BENCH_DIR=DIR` keeps the
//! generated log in DIR and reuses it (with `benches/sendlog_query.rs`) once `DIR.READY` exists:
//! `SENDLOG_BENCH_DIR=/work/data/sendlog-10m CONSOLE_BENCH_EVENTS=10000000 cargo bench --bench
//! console_search` (see `common/sendlog_fixture.rs`).

#[path = "common/size.rs"]
mod size;
use std::time::{Duration, Instant};

use criterion::{Criterion, criterion_group, criterion_main};
use gannet::config::ConsoleRole;
use gannet::http::console::logs::{PAGE, SearchForm, results_page};
use gannet::http::console::page::{CSS, Notice};
use gannet::http::console::session::Session;
use gannet::sendlog::{EventFilter, Reader};

#[path = "common/sendlog_events.rs"]
mod sendlog_events;
#[path = "common/sendlog_fixture.rs"]
mod sendlog_fixture;

fn recipient(k: u64) -> String {
    format!("user{}@dest{}.test", (k * 104_729) % 100_000, k % 13)
}

fn bench(c: &mut Criterion) {
    let n = size::size("CONSOLE_BENCH_EVENTS", 1_000_000, 2_000);
    let log = sendlog_fixture::open(n, "console_search");
    let n = log.n;
    if log.appended > 0 {
        eprintln!(
            "console_search: {} events appended in {:.1} s ({:.0} events/s)",
            log.appended,
            log.append_secs,
            log.appended as f64 / log.append_secs.max(1e-9)
        );
    }
    eprintln!(
        "console_search: {n} events in the send log, {} bytes on disk",
        log.bytes
    );
    let info = log.info.clone();
    let mut r = Reader::open(&info).unwrap();
    let session = Session {
        user: "alice".into(),
        role: ConsoleRole::Compliance,
        csrf: "x".repeat(43),
        expires: Instant::now() + Duration::from_secs(3600),
    };
    let filter = |a: &str| EventFilter {
        recipient: Some(a.to_string()),
        limit: PAGE,
        ..Default::default()
    };

    // Page weight: the heaviest of a sample of recipients' first pages, plus the stylesheet.
    let heaviest = (1..200u64)
        .map(|k| {
            let a = recipient(k);
            let rows = r.events(&filter(&a)).unwrap();
            results_page(
                &session,
                &SearchForm::by_recipient(&a),
                &rows,
                None,
                Notice::None,
            )
            .into_string()
            .len()
        })
        .max()
        .unwrap_or(0);
    eprintln!(
        "console_search: heaviest search page {heaviest} bytes + stylesheet {} bytes = {} bytes (target <= 102400)",
        CSS.len(),
        heaviest + CSS.len()
    );

    let mut g = c.benchmark_group("console_search");
    g.measurement_time(Duration::from_secs(5)).sample_size(20);
    g.bench_function("query_only_baseline", |b| {
        let mut k = 0u64;
        b.iter(|| {
            k += 1;
            r.events(&filter(&recipient(k))).unwrap().len()
        })
    });
    g.bench_function("query_and_render_page", |b| {
        let mut k = 0u64;
        b.iter(|| {
            k += 1;
            let a = recipient(k);
            let rows = r.events(&filter(&a)).unwrap();
            results_page(
                &session,
                &SearchForm::by_recipient(&a),
                &rows,
                None,
                Notice::None,
            )
            .into_string()
            .len()
        })
    });
    g.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
