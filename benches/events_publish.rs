//! Cost of publishing one event (`EventBus::publish`): with no subscriber, and with the two
//! built-in ones `serve` registers (the JSON log and the metrics counters, both lossless,
//! drained by their tasks on a tokio runtime as in production). Targets: ≤ 1 µs and ≤ 3 µs.
//! The event is a typical `delivered` outcome with every common field filled.

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use gannet::events::{Event, EventBus, EventKind, Mode, TlsInfo};

fn delivered() -> Event {
    let mut e = Event::new(EventKind::Delivered {
        site: "gmail-smtp-in.l.google.com".into(),
        mx_host: "gmail-smtp-in.l.google.com".into(),
        remote_ip: "142.250.1.27".into(),
        source_ip: "192.0.2.10".into(),
        tls: Some(TlsInfo {
            version: "TLSv1.3".into(),
            cipher: "TLS13_AES_256_GCM_SHA384".into(),
        }),
        reply: "250 2.0.0 OK 1700000000 a1-20020a170902".into(),
        queue_secs: 0.8,
        provider: String::new(),
    });
    e.queue_id = "661C1B01CD95800000000".into();
    e.message_id = "661c1b01dff57.e30b3bad06ea4ce6@gannet.example".into();
    e.recipient = "someone@gmail.com".into();
    e.sender = "bounces@news.example".into();
    e.tenant = "acme".into();
    e.campaign = "spring-sale".into();
    e.class = "promotional".into();
    e.pool = "promo".into();
    e.attempt = 1;
    e
}

fn publish(c: &mut Criterion) {
    let mut g = c.benchmark_group("events_publish");
    g.throughput(Throughput::Elements(1));

    let metrics = gannet::metrics::Metrics::new();
    let bus = EventBus::new(&metrics.registry);
    let template = delivered();
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
