//! Event shipping to a real RabbitMQ (issue 19, AMQP): Debian's `rabbitmq-server`, started
//! by the test on loopback ports with its own node name, epmd port and data directory, stopped
//! mid-run and started again; the exchange is declared only after Gannet began publishing
//! (the broker closes the channel until then); a pika consumer reads what arrived.
//!
//! Sink addresses: 127.0.0.175–.176.

use std::collections::{BTreeMap, BTreeSet};
use std::path::PathBuf;
use std::process::Stdio;
use std::time::Duration;

use serde_json::Value;

use crate::common::tools::{SCRIPTS_DIR, smtp_source};
use crate::common::*;

const WAIT: Duration = Duration::from_secs(120);

/// A RabbitMQ node of this test only. Its epmd is a child of the test too (on its own port),
/// so nothing is left running after the test.
struct Broker {
    dir: tempfile::TempDir,
    port: u16,
    dist_port: u16,
    epmd_port: u16,
    epmd: tokio::process::Child,
    node: Option<tokio::process::Child>,
    name: String,
}

impl Broker {
    async fn start() -> Broker {
        Self::start_with("").await
    }

    /// A node with `conf` added to its `rabbitmq.conf` (e.g. a TLS listener).
    async fn start_with(conf: &str) -> Broker {
        let dir = tempfile::tempdir().unwrap();
        let epmd_port = free_port();
        let epmd = tokio::process::Command::new("epmd")
            .arg("-port")
            .arg(epmd_port.to_string())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .kill_on_drop(true)
            .spawn()
            .expect("epmd (package erlang-base, a rabbitmq-server dependency)");
        std::fs::write(dir.path().join("enabled_plugins"), "[].\n").unwrap();
        std::fs::write(
            dir.path().join("rabbitmq.conf"),
            format!("disk_free_limit.absolute = 1MB\n{conf}"),
        )
        .unwrap();
        let mut b = Broker {
            port: free_port(),
            dist_port: free_port(),
            epmd_port,
            epmd,
            node: None,
            name: format!("gannet{}@localhost", std::process::id() ^ rand_u16() as u32),
            dir,
        };
        b.run().await;
        b
    }

    fn pid_file(&self) -> PathBuf {
        self.dir.path().join("rabbit.pid")
    }

    /// Start the node (again, on the same data) and wait until it accepts AMQP connections.
    async fn run(&mut self) {
        let d = self.dir.path();
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(d.join("node.log"))
            .unwrap();
        let child = tokio::process::Command::new("/usr/lib/rabbitmq/bin/rabbitmq-server")
            .env("HOME", d)
            .env("RABBITMQ_NODENAME", &self.name)
            .env("RABBITMQ_NODE_IP_ADDRESS", "127.0.0.1")
            .env("RABBITMQ_NODE_PORT", self.port.to_string())
            .env("RABBITMQ_DIST_PORT", self.dist_port.to_string())
            .env("ERL_EPMD_PORT", self.epmd_port.to_string())
            .env("RABBITMQ_MNESIA_BASE", d.join("mnesia"))
            .env("RABBITMQ_LOG_BASE", d.join("log"))
            .env("RABBITMQ_LOGS", "-")
            .env("RABBITMQ_ENABLED_PLUGINS_FILE", d.join("enabled_plugins"))
            .env("RABBITMQ_CONFIG_FILE", d.join("rabbitmq"))
            .env("RABBITMQ_PID_FILE", self.pid_file())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .kill_on_drop(true)
            .spawn()
            .expect("rabbitmq-server (scripts/test installs it)");
        self.node = Some(child);
        for _ in 0..1200 {
            if tokio::net::TcpStream::connect(("127.0.0.1", self.port))
                .await
                .is_ok()
            {
                return;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        panic!("RabbitMQ did not start:\n{}", self.log());
    }

    fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("node.log")).unwrap_or_default()
    }

    fn beam_pid(&self) -> Option<i32> {
        std::fs::read_to_string(self.pid_file())
            .ok()
            .and_then(|s| s.trim().parse().ok())
    }

    /// SIGTERM to the Erlang VM (a clean broker stop) and wait until it is gone.
    async fn stop(&mut self) {
        if let Some(pid) = self.beam_pid() {
            // SAFETY: kill(2) on the broker this test started (pid from its own pid file).
            unsafe {
                libc::kill(pid, libc::SIGTERM);
            }
            for _ in 0..600 {
                // SAFETY: signal 0 only checks the process exists.
                if unsafe { libc::kill(pid, 0) } != 0 {
                    break;
                }
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
        if let Some(mut c) = self.node.take() {
            let _ = tokio::time::timeout(Duration::from_secs(30), c.wait()).await;
        }
        let _ = std::fs::remove_file(self.pid_file());
    }

    /// How many messages wait in queue `events` (0 while it cannot say).
    async fn count(&self) -> usize {
        self.client(&["count"])
            .await
            .stdout
            .trim()
            .parse()
            .unwrap_or(0)
    }

    async fn client(&self, args: &[&str]) -> ToolOutput {
        let port = self.port.to_string();
        let mut all = vec![port.as_str()];
        all.extend_from_slice(args);
        tools::python_script("amqp_client.py", &all, None).await
    }
}

impl Drop for Broker {
    fn drop(&mut self) {
        if let Some(pid) = self.beam_pid() {
            // SAFETY: as in `stop`; SIGKILL so nothing outlives the test.
            unsafe {
                libc::kill(pid, libc::SIGKILL);
            }
        }
        let _ = self.epmd.start_kill();
    }
}

/// `n` messages to r@ship.test through smtp-source, then wait until the sink has `total`.
async fn send(w: &World, n: usize, total: usize) {
    smtp_source(
        w.gannet.smtp_addr(),
        n,
        4,
        "a@origin.test",
        "r@ship.test",
        300,
    )
    .await
    .assert_success();
    w.sinks[0].wait_for(total, WAIT).await;
}

fn rand_u16() -> u16 {
    (std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .subsec_nanos()
        & 0xffff) as u16
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rabbitmq_gets_every_event_in_order_across_a_broker_restart() {
    const N: usize = 20;
    let _ = SCRIPTS_DIR;
    let mut broker = Broker::start().await;
    let amqp = format!(
        "[[amqp]]\nname = \"rabbit\"\nurl = \"amqp://guest:guest@127.0.0.1:{}/%2f\"\n\
         exchange = \"gannet\"\nrouting_key = \"gannet.{{tenant}}.{{type}}\"\nmax_backoff = \"1s\"\n",
        broker.port
    );
    let w = World::start(
        &["127.0.0.175"],
        Zone::new().mail_domain("ship.test", "127.0.0.175"),
        |c| c.extra(&amqp),
    )
    .await;
    send(&w, N, N).await;
    // The exchange does not exist yet: the broker closes the channel (404) and Gannet tries
    // the batch again, on a new connection, until it does.
    let mut refused = false;
    for _ in 0..300 {
        if w.gannet.log().contains("NOT_FOUND - no exchange 'gannet'") {
            refused = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(refused, "no channel close logged\n{}", w.gannet.log());
    broker.client(&["setup"]).await.assert_success();
    // The broker stops mid-run; mail goes on, events wait in the outbox.
    broker.stop().await;
    send(&w, N, 2 * N).await;
    broker.run().await;
    let want = 4 * N; // received + delivered per message
    let mut count = 0;
    for _ in 0..600 {
        count = broker.count().await;
        if count >= want {
            break;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert!(
        count >= want,
        "{count} of {want} events in the queue\n{}",
        w.gannet.log()
    );
    let out = broker.client(&["drain"]).await;
    out.assert_success();
    let msgs: Vec<Value> = out
        .stdout
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    let mut first_seen: BTreeMap<String, usize> = BTreeMap::new();
    let mut by_message: BTreeMap<String, Vec<(usize, String)>> = BTreeMap::new();
    for (i, m) in msgs.iter().enumerate() {
        let e = &m["event"];
        let t = e["type"].as_str().unwrap();
        assert_eq!(m["routing_key"], format!("gannet.none.{t}"));
        assert_eq!(m["message_id"], e["id"]);
        assert_eq!(m["type"], t);
        assert_eq!(m["delivery_mode"], 2, "persistent");
        first_seen
            .entry(e["id"].as_str().unwrap().to_string())
            .or_insert(i);
        by_message
            .entry(e["queue_id"].as_str().unwrap().to_string())
            .or_default()
            .push((i, t.to_string()));
    }
    assert_eq!(by_message.len(), 2 * N, "every message's events arrived");
    for (qid, evs) in &by_message {
        let r = evs.iter().find(|(_, t)| t == "received").map(|(i, _)| *i);
        let d = evs.iter().find(|(_, t)| t == "delivered").map(|(i, _)| *i);
        let (Some(r), Some(d)) = (r, d) else {
            panic!("{qid}: {evs:?}");
        };
        assert!(r < d, "{qid}: delivered before received: {evs:?}");
    }
    let distinct: BTreeSet<&String> = first_seen.keys().collect();
    assert!(distinct.len() >= want);
    drop(w);
    broker.stop().await;
}

/// A CA, and a certificate for `localhost` it signed: (CA PEM, certificate PEM, key PEM).
fn test_pki() -> (String, String, String) {
    use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, Issuer, KeyPair};
    let ca_key = KeyPair::generate().unwrap();
    let mut ca = CertificateParams::new(Vec::<String>::new()).unwrap();
    ca.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ca.distinguished_name
        .push(DnType::CommonName, "Gannet test CA");
    let ca_pem = ca.self_signed(&ca_key).unwrap().pem();
    let issuer = Issuer::new(ca, ca_key);
    let key = KeyPair::generate().unwrap();
    let cert = CertificateParams::new(vec!["localhost".to_string()])
        .unwrap()
        .signed_by(&key, &issuer)
        .unwrap();
    (ca_pem, cert.pem(), key.serialize_pem())
}

/// amqps:// verifies the broker's certificate: against the CA the process trusts (here
/// through `SSL_CERT_FILE`, which the platform verifier reads on Linux) and for the URL's
/// host. The same broker reached by an address its certificate does not name is refused, and
/// a wrong password gets the broker's refusal in the log; neither publishes anything.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn amqps_publishes_to_a_broker_whose_certificate_verifies() {
    const N: usize = 5;
    let pki = tempfile::tempdir().unwrap();
    let (ca, cert, key) = test_pki();
    let path = |name: &str| pki.path().join(name).display().to_string();
    std::fs::write(path("ca.pem"), &ca).unwrap();
    std::fs::write(path("cert.pem"), &cert).unwrap();
    std::fs::write(path("key.pem"), &key).unwrap();
    let tls_port = free_port();
    let broker = Broker::start_with(&format!(
        "listeners.ssl.local = 127.0.0.1:{tls_port}\n\
         ssl_options.cacertfile = {}\nssl_options.certfile = {}\nssl_options.keyfile = {}\n\
         ssl_options.verify = verify_none\nssl_options.fail_if_no_peer_cert = false\n",
        path("ca.pem"),
        path("cert.pem"),
        path("key.pem")
    ))
    .await;
    broker.client(&["setup"]).await.assert_success();
    let amqp = format!(
        "[[amqp]]\nname = \"verified\"\nurl = \"amqps://guest:guest@localhost:{tls_port}/%2f\"\n\
         exchange = \"gannet\"\nrouting_key = \"gannet.{{tenant}}.{{type}}\"\nmax_backoff = \"1s\"\n\
         [[amqp]]\nname = \"misnamed\"\nurl = \"amqps://guest:guest@127.0.0.1:{tls_port}/%2f\"\n\
         exchange = \"gannet\"\nrouting_key = \"gannet.misnamed.{{type}}\"\nmax_backoff = \"1s\"\n\
         [[amqp]]\nname = \"badpass\"\nurl = \"amqp://guest:wrong@127.0.0.1:{}/%2f\"\n\
         exchange = \"gannet\"\nrouting_key = \"gannet.badpass.{{type}}\"\nmax_backoff = \"1s\"\n",
        broker.port
    );
    let w = World::start(
        &["127.0.0.176"],
        Zone::new().mail_domain("ship.test", "127.0.0.176"),
        |c| c.extra(&amqp).env("SSL_CERT_FILE", &path("ca.pem")),
    )
    .await;
    send(&w, N, N).await;
    let want = 2 * N; // received + delivered per message
    let mut count = 0;
    for _ in 0..600 {
        count = broker.count().await;
        let log = w.gannet.log();
        if count >= want && log.contains("not valid for name") && log.contains("ACCESS_REFUSED") {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(count, want, "events over TLS\n{}", w.gannet.log());
    let log = w.gannet.log();
    assert!(
        log.contains(
            "TLS handshake failed: invalid peer certificate: certificate not valid for name"
        ),
        "the address the certificate does not name is refused\n{log}"
    );
    assert!(
        log.contains("the broker refused the connection: 403 ACCESS_REFUSED"),
        "a wrong password is named in the log\n{log}"
    );
    let out = broker.client(&["drain"]).await;
    out.assert_success();
    for l in out.stdout.lines() {
        let m: Value = serde_json::from_str(l).unwrap();
        // The other two keys are bound too (`gannet.#`): had they published, it would show.
        let key = m["routing_key"].as_str().unwrap();
        assert!(
            key.starts_with("gannet.none."),
            "only the verified destination published: {m}"
        );
    }
}
