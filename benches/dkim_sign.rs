//! DKIM signing cost per message (auth::DkimSigner::sign): RSA-2048 and Ed25519, on a 4 kB and a
//! 100 kB message, reported in messages per second. Also the body canonicalisation + hash alone
//! (auth::canon), in bytes per second, and the private-key operation alone, to show how much of
//! a signature is not the key operation. Compare with `openssl speed rsa2048 ed25519` on the
//! same machine, run at the same time (shared machines vary a lot from minute to minute).

use std::time::{Duration, SystemTime};

use criterion::{BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};
use gannet::auth::DkimSigner;
use gannet::auth::canon::body_hash;
use gannet::auth::keys::parse_private_key;
use gannet::config::{Config, DkimAlgorithm};
use mail_auth::common::crypto::HashAlgorithm;
use mail_auth::dkim::Canonicalization;

fn key(name: &str) -> String {
    format!("{}/tests/fixtures/dkim/{name}", env!("CARGO_MANIFEST_DIR"))
}

fn signer(algorithm: &str, file: &str) -> DkimSigner {
    let text = format!(
        "[[pool]]\nname = \"p\"\nsources = [{{ ip = \"127.0.0.1\", ehlo = \"h\" }}]\n\
         [class.c]\npool = \"p\"\n\
         [[dkim]]\ndomain = \"example.com\"\nselector = \"s\"\nalgorithm = \"{algorithm}\"\nkey = \"{}\"\n",
        key(file)
    );
    let config = Config::from_toml(&text, "bench").expect("bench config");
    DkimSigner::from_config(&config).expect("bench keys")
}

/// A realistic marketing message of about `size` bytes: the usual headers and quoted-printable
/// HTML-ish lines of varying length, some with runs of spaces.
fn message(size: usize) -> Vec<u8> {
    let mut m = b"From: \"Example News\" <news@example.com>\r\n\
To: someone@example.org\r\n\
Subject: Your weekly digest: 12 new things\r\n\
Date: Thu, 28 May 2026 10:00:00 +0000\r\n\
Message-ID: <20260528100000.abc123@example.com>\r\n\
MIME-Version: 1.0\r\n\
List-Unsubscribe: <https://example.com/u/abc123>, <mailto:unsub-abc123@example.com>\r\n\
List-Unsubscribe-Post: List-Unsubscribe=One-Click\r\n\
Feedback-ID: campaign42:tenant7:gannet\r\n\
Content-Type: text/html; charset=utf-8\r\n\
Content-Transfer-Encoding: quoted-printable\r\n\r\n"
        .to_vec();
    let mut i = 0;
    while m.len() < size {
        let line = match i % 4 {
            0 => {
                "<p style=3D\"margin:0;padding:0\">Lorem ipsum dolor sit amet, consectetur adipiscing elit.</p>"
            }
            1 => {
                "<td   align=3D\"left\"    valign=3D\"top\">Sed do eiusmod tempor incididunt ut labore</td>"
            }
            2 => "",
            _ => "<a href=3D\"https://example.com/c/abc123/42\">Read more &rarr;</a>  ",
        };
        m.extend_from_slice(line.as_bytes());
        m.extend_from_slice(b"\r\n");
        i += 1;
    }
    m
}

fn sign(c: &mut Criterion) {
    let now = SystemTime::now();
    let mut group = c.benchmark_group("dkim_sign");
    group.throughput(Throughput::Elements(1));
    group.measurement_time(Duration::from_secs(5));
    for (name, alg, file) in [
        ("rsa2048", "rsa-sha256", "rsa2048.pem"),
        ("ed25519", "ed25519-sha256", "ed25519.pem"),
    ] {
        let signer = signer(alg, file);
        for size in [4 * 1024, 100 * 1024] {
            let msg = message(size);
            group.bench_with_input(
                BenchmarkId::new(name, format!("{}kB", size / 1024)),
                &msg,
                |b, msg| b.iter(|| signer.sign(msg, now).expect("signs")),
            );
        }
    }
    group.finish();

    // The private-key operation alone on a typical signing input (canonical headers + the
    // DKIM-Signature header): the floor under dkim_sign.
    let mut group = c.benchmark_group("dkim_key_op");
    group.throughput(Throughput::Elements(1));
    let input = vec![b'h'; 900];
    for (name, alg, file) in [
        ("rsa2048", DkimAlgorithm::RsaSha256, "rsa2048.pem"),
        ("ed25519", DkimAlgorithm::Ed25519Sha256, "ed25519.pem"),
    ] {
        let pem = std::fs::read(key(file)).expect("fixture key");
        let k = parse_private_key(&pem, alg).expect("fixture key parses");
        group.bench_function(name, |b| b.iter(|| k.sign(&input).expect("signs")));
    }
    group.finish();

    let mut group = c.benchmark_group("dkim_body_hash");
    for size in [4 * 1024, 100 * 1024] {
        let msg = message(size);
        group.throughput(Throughput::Bytes(msg.len() as u64));
        for (cname, canon) in [
            ("relaxed", Canonicalization::Relaxed),
            ("simple", Canonicalization::Simple),
        ] {
            group.bench_with_input(
                BenchmarkId::new(cname, format!("{}kB", size / 1024)),
                &msg,
                |b, msg| b.iter(|| body_hash(canon, HashAlgorithm::Sha256, msg, None)),
            );
        }
    }
    group.finish();
}

criterion_group!(benches, sign);
criterion_main!(benches);
