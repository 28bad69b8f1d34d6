//! Cost of publishing one event (`EventBus::publish`): with no subscriber, and with the two
//! built-in ones `serve` registers (the JSON log and the metrics counters, both lossless,
//! drained by their tasks on a tokio runtime as in production). Targets: ≤ 1 µs and ≤ 3 µs.
//! The event is a typical `delivered` outcome with every common field filled.

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use gannet::events::{Event, EventBus, Mode};

#[path = "common/delivered.rs"]
mod delivered;
use delivered::delivered;

fn publish(c: &mut Criterion) {
    let mut g = c.benchmark_group("events_publish");
    g.throughput(Throughput::Elements(1));

    let metrics = gannet::metrics::Metrics::new();
    let bus = EventBus::new(&metrics.registry);
    let template = delivered(0);
    // Building the event (id, clock, strings) is part of the cost a stage pays.
    g.bench_function("no_subscriber", |b| {
        b.iter(|| {
            let mut e = Event::new(template.kind.clone());
            e.recipient.clone_from(&template.recipient);
            e.queue_id.clone_from(&template.queue_id);
            bus.publish(e)
        })
    });

    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .expect("runtime");
    let metrics = gannet::metrics::Metrics::new();
    let bus = EventBus::new(&metrics.registry);
    let mode = Mode::Lossless { bound: 65_536 };
    rt.spawn(gannet::events::log::run(bus.subscribe("log", mode)));
    rt.spawn(gannet::metrics::events::run(
        metrics.clone(),
        bus.subscribe("metrics", mode),
    ));
    g.bench_function("log_and_metrics_subscribers", |b| {
        b.iter(|| {
            let mut e = Event::new(template.kind.clone());
            e.recipient.clone_from(&template.recipient);
            e.queue_id.clone_from(&template.queue_id);
            bus.publish(e)
        })
    });
    g.finish();
    drop(rt);
}

criterion_group!(benches, publish);
criterion_main!(benches);
