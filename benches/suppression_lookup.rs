//! Suppression list at scale (issue 17): import rate (target ≥ 200k entries/s), lookup p99
//! (target ≤ 5 µs at 10M entries), resident memory and disk, the time to open (load the index
//! of) a full list, and paging through all of it as the API's listing and export do.
//! `cargo bench --bench suppression_lookup` imports 10M entries (`SUPPRESSION_BENCH_ENTRIES`
//! overrides; `SUPPRESSION_BENCH_DIR=DIR` builds the store in `DIR/suppression` and keeps it, e.g.
//! for `benches/e2e.sh` with `[suppression] path` pointing at it and `[storage] key_file` at
//! `DIR/gannet.key`, the master key the store is sealed with); the test suite's single pass
//! uses 2,000. Rates are given per wall-clock second and per second of the process's CPU
//! (every thread: the import seals on one thread per core), with the
//! load average, since the shared machine's load moves the wall-clock figures several-fold.

#[path = "common/size.rs"]
mod size;
use std::time::{Duration, Instant};

use criterion::{Criterion, criterion_group};
use gannet::sendlog::MasterKey;
use gannet::suppression::{Entry, ListFilter, Lookup, SqliteStore, SuppressionStore};

fn entry(i: u64) -> Entry {
    Entry {
        address: format!("user{i}@dest{}.test", i % 97),
        tenant: if i.is_multiple_of(3) {
            "acme".into()
        } else {
            "*".into()
        },
        stream: if i.is_multiple_of(3) {
            "class:promotional".into()
        } else {
            String::new()
        },
        reason: "hard-bounce".into(),
        source: "bench".into(),
        created: 1_790_000_000,
        expires: 0,
    }
}

fn rss_kib() -> u64 {
    status_kib("VmRSS:")
}

/// A field of /proc/self/status in KiB (`VmRSS:` now, `VmHWM:` the peak so far).
fn status_kib(field: &str) -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with(field))
                .and_then(|l| l.split_whitespace().nth(1)?.parse().ok())
        })
        .unwrap_or(0)
}

/// CPU seconds (user + system, every thread) the process has used so far.
fn cpu_secs() -> f64 {
    // Fields 14 and 15 of /proc/self/stat, after the command name in parentheses.
    let stat = std::fs::read_to_string("/proc/self/stat").unwrap_or_default();
    let ticks: u64 = stat
        .rsplit_once(')')
        .map(|(_, rest)| {
            rest.split_whitespace()
                .skip(11)
                .take(2)
                .filter_map(|t| t.parse::<u64>().ok())
                .sum()
        })
        .unwrap_or(0);
    // SAFETY: sysconf only reads a configuration value.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) }.max(1);
    ticks as f64 / hz as f64
}

/// The 1-minute load average.
fn load() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .ok()
        .and_then(|s| s.split_whitespace().next().map(str::to_string))
        .unwrap_or_default()
}

fn dir_bytes(p: &std::path::Path) -> u64 {
    let mut n = 0;
    for e in std::fs::read_dir(p).into_iter().flatten().flatten() {
        let m = e
            .metadata()
            .map(|m| (m.is_dir(), m.len()))
            .unwrap_or((false, 0));
        n += if m.0 { dir_bytes(&e.path()) } else { m.1 };
    }
    n
}

fn bench(c: &mut Criterion) {
    let n = size::size("SUPPRESSION_BENCH_ENTRIES", 10_000_000, 2_000);
    let tmp = tempfile::tempdir().unwrap();
    let kept = std::env::var_os("SUPPRESSION_BENCH_DIR").map(std::path::PathBuf::from);
    let dir = kept.as_deref().unwrap_or(tmp.path());
    let key = MasterKey::load_or_create(
        &dir.join("gannet.key"),
        &SqliteStore::key_check_path(&dir.join("suppression")),
    )
    .unwrap();
    let rss0 = rss_kib();
    let store = SqliteStore::open(&dir.join("suppression"), key.clone()).unwrap();
    let t = Instant::now();
    let cpu0 = cpu_secs();
    let mut i = 0;
    while i < n {
        let batch: Vec<Entry> = (i..(i + 10_000).min(n)).map(entry).collect();
        store.add_many(&batch).unwrap();
        i += 10_000;
    }
    store.flush().unwrap();
    let secs = t.elapsed().as_secs_f64();
    let cpu = cpu_secs() - cpu0;
    let disk = dir_bytes(dir);
    eprintln!(
        "suppression: {n} entries imported in {secs:.1} s ({:.0} entries/s wall; {cpu:.1} CPU s = {:.0} entries per CPU second; batches of 10,000; load {}), {disk} bytes on disk = {:.0} bytes/entry, RSS +{} MiB (process peak so far {} MiB)",
        n as f64 / secs,
        n as f64 / cpu.max(0.001),
        load(),
        disk as f64 / n as f64,
        rss_kib().saturating_sub(rss0) / 1024,
        status_kib("VmHWM:") / 1024
    );

    // Start-up: a reopened store loads its index from the tree.
    drop(store);
    let rss1 = rss_kib();
    let t = Instant::now();
    let cpu0 = cpu_secs();
    let store = SqliteStore::open(&dir.join("suppression"), key).unwrap();
    eprintln!(
        "suppression: reopened with {} entries in {:.1} s ({:.1} CPU s; index load; load {}), RSS {} MiB (was {} MiB before the open)",
        store.len(),
        t.elapsed().as_secs_f64(),
        cpu_secs() - cpu0,
        load(),
        rss_kib() / 1024,
        rss1 / 1024
    );

    // Paging through the whole list as the API's listing and export do (pages of 5,000).
    let t = Instant::now();
    let cpu0 = cpu_secs();
    let (mut seen, mut pages, mut cursor) = (0u64, 0u64, None::<Vec<u8>>);
    loop {
        let page = store
            .list(&ListFilter::default(), cursor.as_deref(), 5_000)
            .unwrap();
        seen += page.entries.len() as u64;
        pages += 1;
        match page.next {
            Some(c) => cursor = Some(c),
            None => break,
        }
    }
    assert_eq!(seen, n, "every entry is listed once");
    eprintln!(
        "suppression: paged through {seen} entries in {pages} pages of 5,000 in {:.1} s ({:.0} entries/s wall, {:.1} CPU s; load {})",
        t.elapsed().as_secs_f64(),
        seen as f64 / t.elapsed().as_secs_f64(),
        cpu_secs() - cpu0,
        load()
    );

    // p99 by timing single lookups (criterion reports means).
    let mut lat: Vec<u32> = Vec::with_capacity(200_000);
    for k in 0..200_000u64 {
        let i = (k * 104_729) % n;
        let a = entry(i).address;
        let q = Lookup {
            address: &a,
            tenant: "acme",
            class: "promotional",
            ..Lookup::default()
        };
        let t = Instant::now();
        let hit = store.check(&q, 1_800_000_000).unwrap();
        lat.push(t.elapsed().as_nanos() as u32);
        assert!(hit.is_some());
    }
    lat.sort_unstable();
    eprintln!(
        "suppression: lookup (hit) p50 {} ns, p99 {} ns, p99.9 {} ns over {} lookups",
        lat[lat.len() / 2],
        lat[lat.len() * 99 / 100],
        lat[lat.len() * 999 / 1000],
        lat.len()
    );

    // The common case at intake: the recipient is not on the list.
    let mut miss: Vec<u32> = Vec::with_capacity(200_000);
    for k in 0..200_000u64 {
        let a = format!("nobody{}@dest{}.test", k * 104_729, k % 97);
        let q = Lookup {
            address: &a,
            tenant: "acme",
            class: "promotional",
            ..Lookup::default()
        };
        let t = Instant::now();
        let hit = store.check(&q, 1_800_000_000).unwrap();
        miss.push(t.elapsed().as_nanos() as u32);
        assert!(hit.is_none());
    }
    miss.sort_unstable();
    eprintln!(
        "suppression: lookup (miss) p50 {} ns, p99 {} ns, p99.9 {} ns over {} lookups; RSS now {} MiB, peak {} MiB; load {}",
        miss[miss.len() / 2],
        miss[miss.len() * 99 / 100],
        miss[miss.len() * 999 / 1000],
        miss.len(),
        rss_kib() / 1024,
        status_kib("VmHWM:") / 1024,
        load()
    );

    let mut g = c.benchmark_group("suppression");
    g.measurement_time(Duration::from_secs(5)).sample_size(20);
    g.bench_function("check_hit", |b| {
        let mut k = 0u64;
        b.iter(|| {
            k += 1;
            let a = entry((k * 7919) % n).address;
            store
                .check(
                    &Lookup {
                        address: &a,
                        tenant: "acme",
                        class: "promotional",
                        ..Lookup::default()
                    },
                    1_800_000_000,
                )
                .unwrap()
        })
    });
    g.bench_function("check_miss", |b| {
        let mut k = 0u64;
        b.iter(|| {
            k += 1;
            let a = format!("nobody{k}@dest{}.test", k % 97);
            store
                .check(
                    &Lookup {
                        address: &a,
                        tenant: "acme",
                        class: "promotional",
                        ..Lookup::default()
                    },
                    1_800_000_000,
                )
                .unwrap()
        })
    });
    g.finish();
}

criterion_group!(benches, bench);

fn main() {
    // Test runners list targets first (`--list`, as cargo-nextest does): name the benchmarks,
    // as criterion would, and build no store (the set-up imports entries before criterion
    // sees its arguments).
    let args: Vec<String> = std::env::args().collect();
    if args.iter().any(|a| a == "--list") {
        // None of them is ignored (`--list --ignored` asks for those).
        if !args.iter().any(|a| a == "--ignored") {
            println!("suppression/check_hit: benchmark\nsuppression/check_miss: benchmark");
        }
        return;
    }
    benches();
    Criterion::default().configure_from_args().final_summary();
}
