//! The end-to-end test harness: real servers on loopback around the real `gannet` binary.
//!
//! Owns the pieces every e2e test module uses (and nothing test-specific):
//! - [`dns`]: authoritative DNS on 127.0.0.1 with in-memory records ([`Zone`], [`TestDns`]);
//! - [`sink`]: programmable SMTP sinks on 127.0.0.x ([`Sink`], [`Rule`], [`bind_sinks`]);
//! - [`gannet`]: the `gannet serve` child process ([`Gannet`], [`TestConfig`], [`Outcome`]);
//! - [`tools`]: independent clients — Python smtplib, swaks, Postfix smtp-source — and a raw
//!   socket SMTP client for malformed input ([`SmtpClient`]);
//! - here: free ports, a self-signed certificate, TLS configs, and shared timeouts.
//!
//! A typical test:
//!
//! ```ignore
//! #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
//! async fn delivers_through_mx() {
//!     let (port, sinks) = bind_sinks(&["127.0.0.11"]).await;
//!     let dns = TestDns::start(Zone::new()
//!         .mx("example.test", 10, "mx.example.test")
//!         .a("mx.example.test", "127.0.0.11")).await;
//!     let gannet = Gannet::start(&TestConfig::new(&dns, port).build()).await;
//!     let mut c = SmtpClient::connect(gannet.smtp_addr()).await;
//!     c.send_message("a@sender.test", &["b@example.test"], b"Subject: hi\r\n\r\nhello\r\n").await;
//!     sinks[0].wait_for(1, WAIT).await;
//! }
//! ```
//!
//! Tests run in parallel threads (or processes under nextest): nothing here uses a fixed port.
//! Use the multi-thread runtime: the DNS server and sinks run in the test's runtime while the
//! test awaits.
#![allow(dead_code)] // a shared harness: not every module uses every helper

pub mod dns;
pub mod gannet;
pub mod sink;
pub mod tools;

#[allow(unused_imports)] // re-exports for test modules; not all are used yet
pub use dns::{TestDns, Zone};
#[allow(unused_imports)]
pub use gannet::{Gannet, Outcome, QueueStatus, TestConfig};
#[allow(unused_imports)]
pub use sink::{Rule, Sink, Stage, Transaction, bind_sinks};
#[allow(unused_imports)]
pub use tools::{SmtpClient, ToolOutput};

use std::sync::{Arc, OnceLock};
use std::time::Duration;

use rand::Rng;

/// How long a test waits for something that should happen within a second or two (delivery,
/// an outcome in the log). Generous so a loaded CI machine does not make tests flaky.
pub const WAIT: Duration = Duration::from_secs(30);

/// A port that was free on 127.0.0.1 (TCP and UDP) a moment ago, chosen at random below the
/// kernel's ephemeral range (32768+) so outgoing connections never take it meanwhile.
pub fn free_port() -> u16 {
    let mut rng = rand::thread_rng();
    for _ in 0..200 {
        let port: u16 = rng.gen_range(20000..32000);
        let tcp = std::net::TcpListener::bind(("127.0.0.1", port));
        let udp = std::net::UdpSocket::bind(("127.0.0.1", port));
        if tcp.is_ok() && udp.is_ok() {
            return port;
        }
    }
    panic!("no free port found in 20000..32000 after 200 tries");
}

/// The rustls crypto provider used everywhere in the harness (explicit: the dependency tree
/// enables more than one, so the process default is ambiguous).
pub fn crypto_provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::aws_lc_rs::default_provider())
}

/// A self-signed certificate and key (PEM) for `localhost`, `*.test` names and 127.0.0.1,
/// made once per process.
pub fn test_cert_pem() -> &'static (String, String) {
    static CERT: OnceLock<(String, String)> = OnceLock::new();
    CERT.get_or_init(|| {
        let names = vec![
            "localhost".to_string(),
            "gannet.test".to_string(),
            "*.test".to_string(),
            "127.0.0.1".to_string(),
        ];
        let ck = rcgen::generate_simple_self_signed(names).expect("generate test certificate");
        (ck.cert.pem(), ck.signing_key.serialize_pem())
    })
}

/// TLS server config with [`test_cert_pem`] (used by sinks for STARTTLS).
pub fn tls_server_config() -> Arc<rustls::ServerConfig> {
    static CFG: OnceLock<Arc<rustls::ServerConfig>> = OnceLock::new();
    CFG.get_or_init(|| {
        let (cert, key) = test_cert_pem();
        let certs: Vec<_> = rustls_pemfile::certs(&mut cert.as_bytes())
            .collect::<Result<_, _>>()
            .expect("parse test cert");
        let key = rustls_pemfile::private_key(&mut key.as_bytes())
            .expect("parse test key")
            .expect("test key present");
        let cfg = rustls::ServerConfig::builder_with_provider(crypto_provider())
            .with_safe_default_protocol_versions()
            .expect("tls versions")
            .with_no_client_auth()
            .with_single_cert(certs, key)
            .expect("test server config");
        Arc::new(cfg)
    })
    .clone()
}

/// TLS client config that accepts any certificate (tests talk to self-signed servers).
pub fn tls_client_config() -> Arc<rustls::ClientConfig> {
    static CFG: OnceLock<Arc<rustls::ClientConfig>> = OnceLock::new();
    CFG.get_or_init(|| {
        let provider = crypto_provider();
        let cfg = rustls::ClientConfig::builder_with_provider(provider.clone())
            .with_safe_default_protocol_versions()
            .expect("tls versions")
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(AcceptAnyCert(provider)))
            .with_no_client_auth();
        Arc::new(cfg)
    })
    .clone()
}

#[derive(Debug)]
struct AcceptAnyCert(Arc<rustls::crypto::CryptoProvider>);

impl rustls::client::danger::ServerCertVerifier for AcceptAnyCert {
    fn verify_server_cert(
        &self,
        _end_entity: &rustls::pki_types::CertificateDer<'_>,
        _intermediates: &[rustls::pki_types::CertificateDer<'_>],
        _server_name: &rustls::pki_types::ServerName<'_>,
        _ocsp_response: &[u8],
        _now: rustls::pki_types::UnixTime,
    ) -> Result<rustls::client::danger::ServerCertVerified, rustls::Error> {
        Ok(rustls::client::danger::ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &rustls::pki_types::CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &rustls::pki_types::CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}

/// Polls `f` every 50 ms until it returns `Some`, or `None` after `timeout`. For state that has
/// no notification (files, HTTP); prefer a real wait where one exists.
pub async fn poll<T>(timeout: Duration, mut f: impl FnMut() -> Option<T>) -> Option<T> {
    let deadline = tokio::time::Instant::now() + timeout;
    loop {
        if let Some(v) = f() {
            return Some(v);
        }
        if tokio::time::Instant::now() >= deadline {
            return None;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// A message with the given headers and body lines, CRLF line ends, ready for DATA.
pub fn message(headers: &[(&str, &str)], body: &str) -> Vec<u8> {
    let mut m = String::new();
    for (k, v) in headers {
        m.push_str(k);
        m.push_str(": ");
        m.push_str(v);
        m.push_str("\r\n");
    }
    m.push_str("\r\n");
    for line in body.split('\n') {
        m.push_str(line.trim_end_matches('\r'));
        m.push_str("\r\n");
    }
    m.into_bytes()
}

/// The usual test setup: sinks on `sink_ips` (one shared port), a DNS server with `zone`, and
/// Gannet with [`TestConfig::new`] changed by `configure`.
pub struct World {
    pub dns: TestDns,
    /// The `[delivery] port` every sink listens on.
    pub port: u16,
    /// One per `sink_ips` entry, same order.
    pub sinks: Vec<Sink>,
    pub gannet: Gannet,
}

impl World {
    pub async fn start(
        sink_ips: &[&str],
        zone: Zone,
        configure: impl FnOnce(TestConfig) -> TestConfig,
    ) -> World {
        let (port, sinks) = bind_sinks(sink_ips).await;
        let dns = TestDns::start(zone).await;
        let config = configure(TestConfig::new(&dns, port));
        let gannet = Gannet::start_config(&config).await;
        World {
            dns,
            port,
            sinks,
            gannet,
        }
    }
}

/// Checks that `t` is a delivery status notification (RFC 3464) from the null sender about
/// `rcpt` with `Action: action` (`failed`, `delayed`, ...). Panics with the message otherwise.
pub fn assert_dsn(t: &Transaction, rcpt: &str, action: &str) {
    let text = t.text();
    let lower = text.to_ascii_lowercase();
    let ctx = || format!("--- message ---\n{text}");
    assert_eq!(
        t.mail_from,
        "",
        "a DSN is sent from the null sender <>\n{}",
        ctx()
    );
    let ct = t
        .header("content-type")
        .unwrap_or_default()
        .to_ascii_lowercase();
    let (mime_type, params) = content_type(&ct);
    assert!(
        mime_type == "multipart/report"
            && params
                .iter()
                .any(|(k, v)| k == "report-type" && v == "delivery-status"),
        "DSN Content-Type must be multipart/report; report-type=delivery-status, got {ct:?}\n{}",
        ctx()
    );
    assert!(
        lower.contains("content-type: message/delivery-status"),
        "DSN needs a message/delivery-status part\n{}",
        ctx()
    );
    assert!(
        lower.contains(&format!(
            "final-recipient: rfc822;{}",
            rcpt.to_ascii_lowercase()
        )) || lower.contains(&format!(
            "final-recipient: rfc822; {}",
            rcpt.to_ascii_lowercase()
        )),
        "DSN must name Final-Recipient: rfc822;{rcpt}\n{}",
        ctx()
    );
    assert!(
        lower.contains(&format!("action: {}", action.to_ascii_lowercase())),
        "DSN must say Action: {action}\n{}",
        ctx()
    );
}

/// Message-ID values of accepted messages, deduplicated (at-least-once delivery may repeat).
pub fn distinct_message_ids(ts: &[Transaction]) -> std::collections::BTreeSet<String> {
    ts.iter()
        .filter(|t| t.accepted)
        .filter_map(|t| t.header("message-id"))
        .collect()
}

/// A Content-Type value split into the MIME type and its parameters (RFC 2045 §5.1), quoted
/// values unquoted. Good enough for test assertions, not a full MIME parser.
pub fn content_type(value: &str) -> (String, Vec<(String, String)>) {
    let mut parts = Vec::new();
    let mut cur = String::new();
    let mut quoted = false;
    for ch in value.chars() {
        match ch {
            '"' => quoted = !quoted,
            ';' if !quoted => parts.push(std::mem::take(&mut cur)),
            c => cur.push(c),
        }
    }
    parts.push(cur);
    let mime = parts[0].trim().to_string();
    let params = parts[1..]
        .iter()
        .filter_map(|p| p.split_once('='))
        .map(|(k, v)| (k.trim().to_string(), v.trim().to_string()))
        .collect();
    (mime, params)
}

/// A size-limited tmpfs on a fresh directory, unmounted on drop (needs root; CI runs as root).
pub struct Tmpfs {
    dir: tempfile::TempDir,
}

impl Tmpfs {
    pub fn mount(size: &str) -> Result<Tmpfs, String> {
        let dir = tempfile::Builder::new()
            .prefix("gannet-tmpfs-")
            .tempdir()
            .map_err(|e| e.to_string())?;
        let out = std::process::Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"])
            .arg(dir.path())
            .output()
            .map_err(|e| format!("cannot run mount: {e}"))?;
        if !out.status.success() {
            return Err(String::from_utf8_lossy(&out.stderr).trim().to_string());
        }
        Ok(Tmpfs { dir })
    }

    pub fn path(&self) -> &std::path::Path {
        self.dir.path()
    }

    /// Keep the disk full with the file `name` until the guard is dropped (then the file
    /// goes): a thread tops it up every few milliseconds, so space another writer frees
    /// (SQLite resetting its WAL, say) is taken again before Gannet can use it.
    pub fn keep_full(&self, name: &str) -> KeepFull {
        let path = self.path().join(name);
        let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let fill = |path: &std::path::Path| {
            use std::io::Write;
            let mut f = std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(path)
                .expect("open the filler");
            let chunk = vec![0u8; 64 * 1024];
            for size in [64 * 1024, 4096, 512, 1] {
                while f.write_all(&chunk[..size]).is_ok() {}
            }
            let _ = f.sync_all();
        };
        fill(&path);
        let thread = {
            let (path, stop) = (path.clone(), stop.clone());
            std::thread::spawn(move || {
                while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                    fill(&path);
                    std::thread::sleep(Duration::from_millis(2));
                }
            })
        };
        KeepFull {
            path,
            stop,
            thread: Some(thread),
        }
    }
}

/// See [`Tmpfs::keep_full`].
pub struct KeepFull {
    path: std::path::PathBuf,
    stop: Arc<std::sync::atomic::AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Drop for KeepFull {
    fn drop(&mut self) {
        self.stop.store(true, std::sync::atomic::Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
        let _ = std::fs::remove_file(&self.path);
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = std::process::Command::new("umount")
            .arg("-l")
            .arg(self.dir.path())
            .status();
    }
}
