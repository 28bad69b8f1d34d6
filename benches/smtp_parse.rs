//! Throughput of the SMTP server's sans-I/O layer (src/smtp/protocol.rs, src/smtp/data.rs):
//! a pipelined MAIL/RCPT/DATA transaction with a 4 kB body through the whole session state
//! machine, and the same body through the DATA decoder alone. Reported in bytes, so results
//! read as MB/s; no sockets, no acceptor work.

use std::hint::black_box;
use std::net::IpAddr;
use std::sync::Arc;

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use gannet::config::Config;
use gannet::message::Accepted;
use gannet::metrics::Metrics;
use gannet::smtp::data::{DataDecoder, append_normalised};
use gannet::smtp::protocol::{Action, Protocol, ProtocolConfig};

const CONFIG: &str = r#"
hostname = "mx.bench.test"
[[listener]]
name = "bench"
address = "127.0.0.1:0"
relay_from = ["127.0.0.0/8"]
[[pool]]
name = "p"
sources = [{ ip = "127.0.0.1", ehlo = "h" }]
[class.c]
pool = "p"
"#;

/// A 4 kB marketing-style message: headers, 76-column lines, a few dot-stuffed lines.
fn body_4k() -> Vec<u8> {
    let mut m = b"From: Shop <news@shop.example>\r\nTo: <customer@example.net>\r\n\
Subject: Your weekly offers\r\nMIME-Version: 1.0\r\nContent-Type: text/plain; charset=utf-8\r\n\r\n"
        .to_vec();
    let mut i = 0;
    while m.len() < 4096 - 80 {
        if i % 10 == 9 {
            m.extend_from_slice(b"..a line that started with a dot, stuffed by the client\r\n");
        } else {
            m.extend_from_slice(
                b"Lorem ipsum dolor sit amet, consectetur adipiscing elit, sed do eiusmod t\r\n",
            );
        }
        i += 1;
    }
    m
}

fn protocol() -> Protocol {
    let config = Config::from_toml(CONFIG, "bench").expect("bench config");
    let cfg = ProtocolConfig::new(&config, &config.listeners[0], false, false, Metrics::new());
    let ip: IpAddr = "127.0.0.1".parse().expect("ip");
    let mut p = Protocol::new(Arc::new(cfg), ip, false);
    let mut hello: &[u8] = b"EHLO client.bench.test\r\n";
    assert!(matches!(p.advance(&mut hello), Action::Read));
    p.clear_output();
    p
}

fn transaction(c: &mut Criterion) {
    let mut input = b"MAIL FROM:<sender@shop.example> SIZE=4200 BODY=8BITMIME\r\n\
RCPT TO:<customer@example.net>\r\nRCPT TO:<other@example.org>\r\nDATA\r\n"
        .to_vec();
    input.extend_from_slice(&body_4k());
    input.extend_from_slice(b".\r\n");
    let mut p = protocol();
    let mut group = c.benchmark_group("smtp_parse");
    group.throughput(Throughput::Bytes(input.len() as u64));
    group.bench_function("pipelined_transaction_4k", |b| {
        b.iter(|| {
            let mut rest: &[u8] = &input;
            loop {
                match p.advance(&mut rest) {
                    Action::Read => break,
                    Action::Submit(s) => {
                        black_box(&s);
                        p.submitted(Ok(Accepted {
                            queue_id: "Q1".into(),
                        }));
                    }
                    other => panic!("unexpected {other:?}"),
                }
            }
            black_box(p.output());
            p.clear_output();
        })
    });

    let mut data = body_4k();
    data.extend_from_slice(b".\r\n");
    group.throughput(Throughput::Bytes(data.len() as u64));
    let mut content = Vec::with_capacity(8192);
    let mut normalised = Vec::with_capacity(8192);
    group.bench_function("data_body_4k", |b| {
        b.iter(|| {
            content.clear();
            normalised.clear();
            let mut d = DataDecoder::new();
            let mut rest: &[u8] = &data;
            assert!(d.feed(&mut rest, &mut content));
            append_normalised(&content, &mut normalised);
            black_box(&normalised);
        })
    });
    group.finish();
}

criterion_group!(benches, transaction);
criterion_main!(benches);
