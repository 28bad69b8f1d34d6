//! Spool write path: making 4 kB messages durable (encode + group-committed append + fdatasync)
//! from many concurrent writers, as SMTP sessions do, with records in clear and sealed
//! (`[spool] encrypt`). Throughput in messages. `spool_seal` measures the CPU part alone:
//! encoding a record in clear vs sealed, and reading one back, in bytes.

use std::time::Duration;

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use gannet::config::SpoolConfig;
use gannet::metrics::Metrics;
use gannet::sendlog::MasterKey;
use gannet::spool::{MessageRecord, Spool, SpoolKey, record};

fn record() -> MessageRecord {
    let mut body =
        b"From: bench@sender.test\r\nTo: user@dest.test\r\nSubject: bench\r\n\r\n".to_vec();
    while body.len() < 4000 {
        body.extend_from_slice(
            b"Lorem ipsum dolor sit amet, consectetur adipiscing elit sed do.\r\n",
        );
    }
    MessageRecord {
        received_at_ms: 1,
        mail_from: "bench@sender.test".into(),
        rcpts: vec!["user@dest.test".into()],
        class: "promotional".into(),
        tenant: String::new(),
        campaign: String::new(),
        body,
        attrs: Default::default(),
    }
}

fn bench(c: &mut Criterion) {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let rec = record();
    let mut g = c.benchmark_group("spool_commit");
    g.measurement_time(Duration::from_secs(5));
    for (writers, sealed) in [(1usize, false), (1, true), (20, false), (20, true)] {
        let dir = tempfile::tempdir().unwrap();
        let cfg = SpoolConfig {
            path: dir.path().to_path_buf(),
            encrypt: sealed,
            ..SpoolConfig::default()
        };
        let (spool, _) = rt
            .block_on(async {
                Spool::open_with_key(
                    &cfg,
                    dir.path(),
                    Metrics::new(),
                    MasterKey::from_bytes([7; 32]),
                )
            })
            .unwrap();
        let batch = 200usize;
        let name = if sealed { "sealed" } else { "clear" };
        g.throughput(Throughput::Elements(batch as u64));
        g.bench_function(format!("append_4k_{writers}_writers_{name}"), |b| {
            b.iter(|| {
                rt.block_on(async {
                    let mut tasks = Vec::with_capacity(writers);
                    for _ in 0..writers {
                        let s = spool.clone();
                        let r = rec.clone();
                        let per = batch / writers;
                        tasks.push(tokio::spawn(async move {
                            for _ in 0..per {
                                let loc = s.append(&r).await.unwrap();
                                s.complete(loc.key);
                            }
                        }));
                    }
                    for t in tasks {
                        t.await.unwrap();
                    }
                })
            })
        });
    }
    g.finish();

    let key = SpoolKey::new(MasterKey::from_bytes([7; 32]));
    let clear = record::encode(&rec);
    let sealed = record::encode_sealed(&rec, &key);
    let mut g = c.benchmark_group("spool_seal");
    g.throughput(Throughput::Bytes(clear.len() as u64));
    g.bench_function("encode_4k_clear", |b| b.iter(|| record::encode(&rec)));
    g.bench_function("encode_4k_sealed", |b| {
        b.iter(|| record::encode_sealed(&rec, &key))
    });
    g.bench_function("read_4k_clear", |b| {
        b.iter(|| record::decode_owned(clear.clone(), None).unwrap())
    });
    g.bench_function("read_4k_sealed", |b| {
        b.iter(|| record::decode_owned(sealed.clone(), Some(&key)).unwrap())
    });
    g.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
