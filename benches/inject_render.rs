//! Render cost per recipient of HTTP injection (src/message/compose.rs): the benchmark
//! template (`benches/data/inject_template.json`: HTML + text, a loop of four products, a
//! custom header) built for one recipient with `Batch::build` (minijinja render + mail-builder
//! MIME), the work `POST /api/v1/messages` does per recipient before intake. Recipients have
//! the same shape as `benches/data/make_inject_batch.py` writes for `benches/inject.sh`.
//! Reported per recipient (elements/s).

use std::hint::black_box;

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use gannet::message::compose::{Batch, BatchRequest, Extras, Recipient};
use gannet::message::template::TemplateLimits;
use serde_json::json;

const TEMPLATE: &str = include_str!("data/inject_template.json");

fn recipient(i: usize) -> Recipient {
    let products: Vec<_> = (0..4)
        .map(|k| {
            let colour = ["Blue", "Red", "Green", "Black"][k];
            let discount = [0, 10, 15, 25][(i + k) % 4];
            json!({
                "sku": format!("SKU{:05}", (i * 7 + k) % 5000),
                "name": format!("Product {} <{colour}>", (i * 7 + k) % 5000),
                "price": 9.99 + ((i + k * 13) % 200) as f64,
                "discount": discount,
                "url": format!("https://shop.sender.test/p/{}", (i * 7 + k) % 5000),
                "blurb": "Hand-picked for you & made to last: a customer favourite this season.",
            })
        })
        .collect();
    serde_json::from_value(json!({
        "email": format!("user{i}@dest.test"),
        "name": format!("Customer Nümber {i}"),
        "substitutions": {
            "first_name": format!("Name{i}"),
            "last_order": format!("order #{}", 100000 + i),
            "points": (i * 37) % 1000,
            "segment": format!("s{}", i % 8),
            "products": products,
        },
    }))
    .expect("recipient")
}

fn bench(c: &mut Criterion) {
    let mut req: serde_json::Value = serde_json::from_str(TEMPLATE).expect("template JSON");
    req["recipients"] = json!([]);
    let req: BatchRequest = serde_json::from_value(req).expect("batch request");
    let batch = Batch::prepare(&req, TemplateLimits::default()).expect("template compiles");
    let rcpts: Vec<Recipient> = (0..1000).map(recipient).collect();
    let extras = Extras {
        message_id: "0193a1b2c3d4e5f6a7b8c9d0e1f2a3b4".into(),
        hostname: "gannet.bench.test".into(),
        date: 1_764_800_000,
        extra_headers: Vec::new(),
    };
    let size = batch.build(&rcpts[0], &extras).expect("renders").len();
    eprintln!("inject_render: one rendered message is {size} bytes");
    let mut g = c.benchmark_group("inject_render");
    g.throughput(Throughput::Elements(1));
    let mut i = 0;
    g.bench_function("build_one_recipient", |b| {
        b.iter(|| {
            i = (i + 1) % rcpts.len();
            black_box(batch.build(black_box(&rcpts[i]), &extras).expect("renders"))
        })
    });
    g.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
