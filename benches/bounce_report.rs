//! Cost of parsing returned mail (src/bounce/report.rs): a typical RFC 3464 DSN (Postfix,
//! user unknown, with the returned message: `tests/fixtures/bounces/02-postfix-user-unknown.eml`),
//! parse alone and parse + classify; a non-standard text bounce (qmail) and an ARF report.
//! Reported per message (elements/s); the target is ≤ 50 µs to parse a typical DSN.

use std::hint::black_box;

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use gannet::bounce::Classifier;
use gannet::bounce::report::{analyse, parse};
use gannet::shaping::Shaping;

const DSN: &[u8] = include_bytes!("../tests/fixtures/bounces/02-postfix-user-unknown.eml");
const QMAIL: &[u8] = include_bytes!("../tests/fixtures/bounces/21-qmail.eml");
const ARF: &[u8] = include_bytes!("../tests/fixtures/bounces/31-arf-rfc5965.eml");

fn bench(c: &mut Criterion) {
    let classifier = Classifier::builtin();
    let shaping = Shaping::builtin();
    let mut g = c.benchmark_group("bounce_report");
    g.throughput(Throughput::Elements(1));
    g.bench_function("dsn_parse", |b| b.iter(|| black_box(parse(black_box(DSN)))));
    g.bench_function("dsn_parse_and_classify", |b| {
        b.iter(|| black_box(analyse(black_box(DSN), &classifier, Some(&shaping))))
    });
    g.bench_function("qmail_parse_and_classify", |b| {
        b.iter(|| black_box(analyse(black_box(QMAIL), &classifier, Some(&shaping))))
    });
    g.bench_function("arf_parse", |b| b.iter(|| black_box(parse(black_box(ARF)))));
    g.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
