//! Throughput of event shipping's outbox (issue 19: ≥ 50k events/s to a fast receiver):
//! appending typical `delivered` events (sealed, one fdatasync per 4,096), then draining the whole
//! backlog, as after an outage, to (a) a webhook receiver on loopback that answers 200 at once
//! (axum; batches of 1,000, signed) and (b) a JSONL file (fdatasync per batch). Catch-up rate =
//! the drain rate. `cargo bench --bench ship_outbox` ships 200,000 events
//! (`SHIP_BENCH_EVENTS` overrides); the test suite's single pass uses 2,000.

#[path = "common/delivered.rs"]
mod delivered;
use delivered::delivered;
#[path = "common/size.rs"]
mod size;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use criterion::{Criterion, criterion_group, criterion_main};
use gannet::ship::outbox::{Outbox, Pos};
use gannet::ship::runner::{self, Destination, RunnerOptions};
use tokio_util::sync::CancellationToken;

async fn drain(outbox: &Outbox, name: &str, dest: Box<dyn Destination>, batch: usize) -> f64 {
    let st = runner::state(name, Pos::default());
    let stop = CancellationToken::new();
    let metrics = gannet::ship::metrics::ShipMetrics::new(&prometheus::Registry::new());
    let t = Instant::now();
    let task = tokio::spawn(runner::run(
        outbox.clone(),
        dest,
        RunnerOptions {
            name: name.into(),
            filter: Default::default(),
            batch_size: batch,
            max_delay: Duration::ZERO,
            max_backoff: Duration::from_secs(1),
            max_backlog_bytes: 0,
        },
        st.clone(),
        metrics,
        stop.clone(),
    ));
    while st.cursor() != outbox.end() {
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    let secs = t.elapsed().as_secs_f64();
    stop.cancel();
    let _ = task.await;
    secs
}

/// Runs the whole measurement once (printed to stderr) and returns the webhook drain time per
/// event, which criterion then reports.
fn measure() -> Duration {
    let n = size::size("SHIP_BENCH_EVENTS", 200_000, 2_000);
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    let dir = tempfile::tempdir().unwrap();
    let key = gannet::sendlog::MasterKey::from_bytes([7; 32]);
    let (outbox, mut appender) = Outbox::open(&dir.path().join("outbox"), 64 << 20, &key).unwrap();

    // Append: serialise + write + one fdatasync per 4,096 events (what the appender does).
    let t = Instant::now();
    let mut i = 0;
    let mut bytes = 0;
    while i < n {
        let k = (n - i).min(4096);
        let mut buf = Vec::with_capacity(k as usize * 600);
        for j in 0..k {
            serde_json::to_writer(&mut buf, &delivered(i + j)).unwrap();
            buf.push(b'\n');
        }
        bytes += buf.len();
        appender.append(&buf, k).unwrap();
        i += k;
    }
    let append_secs = t.elapsed().as_secs_f64();

    rt.block_on(async {
        // A fast receiver: answers 200 at once, counts bytes.
        let got = Arc::new(AtomicU64::new(0));
        let g = got.clone();
        let app = axum::Router::new().route(
            "/hook",
            axum::routing::post(move |body: axum::body::Bytes| {
                let g = g.clone();
                async move {
                    g.fetch_add(body.len() as u64, Ordering::Relaxed);
                    "ok"
                }
            }),
        );
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move { axum::serve(listener, app).await });
        let hook: gannet::config::ship::WebhookConfig = toml::from_str(&format!(
            "url = \"http://{addr}/hook\"\nsecret = \"bench-secret-0123456789\"\nbatch_size = 1000\n"
        ))
        .unwrap();
        let webhook_secs = drain(
            &outbox,
            "webhook",
            Box::new(gannet::ship::webhook::Webhook::new(&hook)),
            1000,
        )
        .await;
        assert!(got.load(Ordering::Relaxed) >= bytes as u64);

        let jsonl: gannet::config::ship::JsonlConfig =
            toml::from_str("dir = \"unused\"\n").unwrap();
        let files =
            gannet::ship::jsonl::JsonlFiles::open(&jsonl, dir.path().join("files")).unwrap();
        let jsonl_secs = drain(&outbox, "jsonl", Box::new(files), 10_000).await;

        let rate = |s: f64| n as f64 / s;
        eprintln!(
            "ship_outbox: {n} events, {:.0} bytes/event\n  append (fdatasync per 4096): {:>9.0} events/s\n  \
             drain to webhook (batches of 1000, loopback 200): {:>9.0} events/s (catch-up rate after an outage)\n  \
             drain to JSONL file (fdatasync per 10000): {:>9.0} events/s",
            bytes as f64 / n as f64,
            rate(append_secs),
            rate(webhook_secs),
            rate(jsonl_secs),
        );
        Duration::from_secs_f64(webhook_secs / n as f64)
    })
}

fn bench(c: &mut Criterion) {
    // Measured once (a run drains the whole backlog); criterion reports the time per event.
    let once = std::sync::OnceLock::new();
    c.bench_function("ship_outbox/drain_to_webhook_per_event", |b| {
        b.iter_custom(|iters| *once.get_or_init(measure) * iters as u32)
    });
}

criterion_group! {
    name = benches;
    // One measurement repeated: criterion's plots of a zero-variance sample panic.
    config = Criterion::default().without_plots();
    targets = bench
}
criterion_main!(benches);
