//! Cost of classifying one SMTP reply with the shipped bounce rules (src/bounce/classify.rs):
//! every real-world reply of the table in `gannet::bounce::samples`, each with its provider,
//! and the worst case (a reply no rule but the catch-all matches, so every generic rule runs).
//! Reported per reply (elements/s); the target is ≤ 2 µs per reply.

use std::hint::black_box;

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use gannet::bounce::Classifier;
use gannet::bounce::samples::REAL_REPLIES;

fn bench(c: &mut Criterion) {
    let classifier = Classifier::builtin();
    let mut g = c.benchmark_group("bounce_classify");
    g.throughput(Throughput::Elements(REAL_REPLIES.len() as u64));
    g.bench_function("real_replies_table", |b| {
        b.iter(|| {
            for (provider, line, _) in REAL_REPLIES {
                let p = Some(*provider).filter(|p| !p.is_empty());
                black_box(classifier.classify_line(black_box(line), p));
            }
        })
    });
    g.throughput(Throughput::Elements(1));
    g.bench_function("no_rule_matches", |b| {
        b.iter(|| {
            black_box(classifier.classify_line(
                black_box(
                    "299 2.9.9 something nobody ever answered, with a rather long text after it",
                ),
                Some("google"),
            ))
        })
    });
    g.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
