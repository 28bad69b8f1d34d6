//! Routing-map footprint: mail to many distinct domains (ROUTING_BENCH_DOMAINS, default
//! 100,000 under `cargo bench`, 500 in the test suite's single pass), each its own site
//! (implicit MX in a loopback test DNS), delivered to a loopback sink; then the queue's sweep.
//! Prints the ready-queue and destination map sizes and the process RSS at the start, once
//! everything is delivered, and after the sweep (and after `malloc_trim`, since glibc keeps
//! freed memory). Issue 15 item 3: the maps must return to their start once queues drain.
//!
//! Not a speed benchmark (no criterion): the figures are sizes; the delivery rate is printed
//! only as context.

#[allow(dead_code)]
#[path = "../tests/e2e/common/dns.rs"]
mod dns;

#[path = "common/size.rs"]
mod size;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use gannet::config::Config;
use gannet::delivery::MxResolver;
use gannet::intake::Intake;
use gannet::message::{Acceptor, Envelope, Origin, Submission};
use gannet::metrics::Metrics;
use gannet::queue::{Queue, Shapers};
use gannet::spool::Spool;
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

/// Recipients per message (each of a different domain).
const PER_MESSAGE: usize = 100;
/// Messages in flight at once (keeps concurrent DNS queries and sockets bounded).
const WAVE: usize = 20;
const SINK_IP: &str = "127.0.0.2";

fn rss_kib() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmRSS:"))
                .and_then(|l| l.split_whitespace().nth(1)?.parse().ok())
        })
        .unwrap_or(0)
}

/// A sink that accepts everything and counts accepted recipients. It closes first after
/// QUIT, so TIME_WAIT stays on its side, not on the sender's ports.
async fn sink(accepted: Arc<AtomicUsize>) -> u16 {
    let l = TcpListener::bind((SINK_IP, 0)).await.expect("bind sink");
    let port = l.local_addr().expect("sink address").port();
    tokio::spawn(async move {
        loop {
            let Ok((s, _)) = l.accept().await else {
                continue;
            };
            let accepted = accepted.clone();
            tokio::spawn(async move {
                let (r, mut w) = s.into_split();
                let mut r = BufReader::new(r);
                let _ = w.write_all(b"220 sink ESMTP\r\n").await;
                let mut rcpts = 0;
                let mut line = String::new();
                loop {
                    line.clear();
                    if r.read_line(&mut line).await.unwrap_or(0) == 0 {
                        return;
                    }
                    let up = line.to_ascii_uppercase();
                    let reply: &[u8] = if up.starts_with("EHLO") {
                        b"250-sink\r\n250-PIPELINING\r\n250 8BITMIME\r\n"
                    } else if up.starts_with("RCPT") {
                        rcpts += 1;
                        b"250 ok\r\n"
                    } else if up.starts_with("DATA") {
                        if w.write_all(b"354 go\r\n").await.is_err() {
                            return;
                        }
                        loop {
                            line.clear();
                            if r.read_line(&mut line).await.unwrap_or(0) == 0 {
                                return;
                            }
                            if line == ".\r\n" {
                                break;
                            }
                        }
                        accepted.fetch_add(rcpts, Ordering::Relaxed);
                        rcpts = 0;
                        b"250 queued\r\n"
                    } else if up.starts_with("QUIT") {
                        let _ = w.write_all(b"221 bye\r\n").await;
                        return;
                    } else {
                        b"250 ok\r\n"
                    };
                    if w.write_all(reply).await.is_err() {
                        return;
                    }
                }
            });
        }
    });
    port
}

fn submission(rcpts: Vec<String>) -> Submission {
    Submission {
        envelope: Envelope {
            mail_from: String::new(),
            rcpts,
        },
        body: b"From: a@s.test\r\nSubject: routing bench\r\n\r\nhello\r\n".to_vec(),
        origin: Origin {
            listener: "default".into(),
            client_ip: "127.0.0.1".parse().expect("ip"),
            helo: "bench".into(),
            auth_user: None,
            api_token: None,
        },
        class: None,
        tenant: None,
        campaign: None,
    }
}

fn main() {
    // Test runners list targets first (`--list`, as cargo-nextest does): name the one
    // benchmark, as criterion would, and run nothing.
    if std::env::args().any(|a| a == "--list") {
        println!("footprint: benchmark");
        return;
    }
    let domains = size::size("ROUTING_BENCH_DOMAINS", 100_000, 500) as usize;
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    rt.block_on(run(domains));
}

async fn run(domains: usize) {
    let names: Vec<String> = (0..domains).map(|i| format!("d{i}.bench")).collect();
    let mut zone = dns::Zone::new();
    for n in &names {
        zone = zone.a(n, SINK_IP);
    }
    let dns = dns::TestDns::start(zone).await;
    let accepted = Arc::new(AtomicUsize::new(0));
    let port = sink(accepted.clone()).await;
    let dir = tempfile::tempdir().expect("tempdir");
    let text = format!(
        "hostname = \"gannet.bench\"\n\
         [spool]\npath = \"{}\"\n\
         [dns]\nnameservers = [\"{}\"]\nnegative_ttl = \"1s\"\nmin_ttl = \"1s\"\nmax_ttl = \"5s\"\n\
         stale_grace = \"1s\"\n\
         [delivery]\nport = {port}\nretry_schedule = [\"1s\"]\nretry_jitter = 0.0\n\
         idle_timeout = \"100ms\"\nready_queue_idle = \"1s\"\nloopback_is_self = false\n\
         [[pool]]\nname = \"p\"\nsources = [{{ ip = \"0.0.0.0\", ehlo = \"out.bench\" }}]\n\
         [class.promotional]\npool = \"p\"\n",
        dir.path().display(),
        dns.addr,
    );
    let config = Arc::new(Config::from_toml(&text, "bench").expect("bench config"));
    let metrics = Metrics::new();
    let (spool, _) = Spool::open(&config.spool, dir.path(), metrics.clone()).expect("spool");
    let resolver = MxResolver::new(&config).expect("resolver");
    let bus = gannet::events::EventBus::new(&metrics.registry);
    let shaping = gannet::shaping::Shaping::from_config(&config).expect("shaping");
    // The metrics subscriber as `serve` registers it (issue 20: series stay bounded however
    // many domains are mailed; counted at the end).
    let providers: Vec<String> = shaping.provider_names().map(str::to_string).collect();
    metrics.preset(&config, &providers);
    tokio::spawn(gannet::metrics::events::run_with(
        metrics.clone(),
        bus.subscribe("metrics", gannet::events::Mode::Lossy { capacity: 65_536 }),
        gannet::metrics::labels::Labels::new(
            providers.iter().cloned(),
            config.metrics.top_campaigns,
            config.metrics.campaign_idle.as_secs(),
        ),
    ));
    let shapers = Shapers::in_process(shaping, &config).expect("shapers");
    let (queue, bounce_rx) = Queue::start(
        config.clone(),
        spool.clone(),
        resolver,
        metrics.clone(),
        bus.clone(),
        shapers,
        None,
        CancellationToken::new(),
    )
    .expect("queue");
    // Final outcomes other than delivery (there should be none), with a sample reply.
    let failed = Arc::new(AtomicUsize::new(0));
    let sample = Arc::new(std::sync::Mutex::new(None::<String>));
    {
        let mut events = bus.subscribe("bench", gannet::events::Mode::Lossy { capacity: 65_536 });
        let (failed, sample) = (failed.clone(), sample.clone());
        tokio::spawn(async move {
            while let Some(p) = events.recv().await {
                let t = p.event.type_name();
                if t == "bounced" || t == "expired" || t == "deferred" {
                    if t != "deferred" {
                        failed.fetch_add(1, Ordering::Relaxed);
                    }
                    let mut s = sample.lock().unwrap_or_else(|e| e.into_inner());
                    if s.is_none() {
                        *s = Some(format!("{t}: {}", p.event.kind.reply().unwrap_or("")));
                    }
                }
            }
        });
    }
    let queued = metrics.queued_recipients.clone();
    let intake = Intake::new(
        config.clone(),
        queue.clone(),
        None,
        metrics.clone(),
        bus.clone(),
    );
    tokio::spawn(gannet::bounce::notify_loop(
        bounce_rx,
        Arc::new(intake.clone()),
        spool,
        "gannet.bench".into(),
        bus,
        gannet::bounce::NotifyOptions::default(),
    ));

    let start_stats = queue.routing_stats();
    let start_rss = rss_kib();
    let t0 = Instant::now();
    for (wave_no, wave) in names.chunks(PER_MESSAGE * WAVE).enumerate() {
        let mut pending = Vec::new();
        for chunk in wave.chunks(PER_MESSAGE) {
            let rcpts = chunk.iter().map(|d| format!("r@{d}")).collect();
            let i = intake.clone();
            pending.push(tokio::spawn(
                async move { i.accept(submission(rcpts)).await },
            ));
        }
        for p in pending {
            p.await.expect("task").expect("accepted");
        }
        // Until every recipient so far is final (delivered, or failed and counted).
        let mut last = (0, Instant::now());
        while queued.get() > 0 {
            tokio::time::sleep(Duration::from_millis(20)).await;
            let done = accepted.load(Ordering::Relaxed);
            if done != last.0 {
                last = (done, Instant::now());
            } else if last.1.elapsed() > Duration::from_secs(120) {
                panic!(
                    "no progress for 120 s in wave {wave_no}: {done} delivered, {} queued, {:?}, first non-delivery: {:?}",
                    queued.get(),
                    queue.routing_stats(),
                    sample.lock().unwrap_or_else(|e| e.into_inner())
                );
            }
        }
    }
    let delivered = accepted.load(Ordering::Relaxed);
    let elapsed = t0.elapsed();
    let peak = queue.routing_stats();
    let peak_rss = rss_kib();
    // Let the answers pass their TTL + grace and the queues their idle time; the queue's own
    // sweep runs every 10 s, this one only makes the wait deterministic.
    let mut after = queue.sweep_routing(Instant::now());
    let deadline = Instant::now() + Duration::from_secs(60);
    while after != start_stats && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(250)).await;
        after = queue.sweep_routing(Instant::now());
    }
    let swept_rss = rss_kib();
    // SAFETY: malloc_trim only returns free heap pages to the OS.
    unsafe {
        libc::malloc_trim(0);
    }
    let trimmed_rss = rss_kib();
    println!(
        "queue_routing: {domains} domains, {delivered} delivered, {} failed, in {:.1} s ({:.0} recipients/s); first non-delivery: {:?}",
        failed.load(Ordering::Relaxed),
        elapsed.as_secs_f64(),
        domains as f64 / elapsed.as_secs_f64(),
        sample.lock().unwrap_or_else(|e| e.into_inner())
    );
    println!(
        "  start : ready queues {:>7}  destinations {:>7}  rss {:>7} KiB",
        start_stats.ready_queues, start_stats.destinations, start_rss
    );
    println!(
        "  peak  : ready queues {:>7}  destinations {:>7}  rss {:>7} KiB",
        peak.ready_queues, peak.destinations, peak_rss
    );
    println!(
        "  swept : ready queues {:>7}  destinations {:>7}  rss {:>7} KiB (after malloc_trim {} KiB)",
        after.ready_queues, after.destinations, swept_rss, trimmed_rss
    );
    // Series on /metrics: one per distinct name+labels line; no domain may be a label.
    let text = metrics.render();
    let series = text.lines().filter(|l| !l.starts_with('#')).count();
    let dropped = text
        .lines()
        .find(|l| l.starts_with("gannet_events_dropped_total{subscriber=\"metrics\"}"))
        .unwrap_or("no metrics drops");
    println!("  /metrics: {series} series after {domains} domains ({dropped})");
    let labelled: Vec<&String> = names
        .iter()
        .step_by((domains / 100).max(1))
        .filter(|d| text.contains(d.as_str()))
        .collect();
    assert!(
        labelled.is_empty(),
        "mailed domains appear in metric labels: {labelled:?}"
    );
    assert!(series < 1000, "{series} series: not bounded");
    assert_eq!(
        (after.ready_queues, after.destinations),
        (start_stats.ready_queues, start_stats.destinations),
        "the routing maps return to their start once every queue drained"
    );
}
