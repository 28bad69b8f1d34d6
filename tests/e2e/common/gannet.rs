//! The `gannet serve` child process, as a user runs it, plus the config template tests fill in.
//!
//! Owns: a temporary directory per instance (config file, spool, certificate, stdout/stderr
//! logs that survive restarts), the child process, and the addresses its config names. Reads
//! outcomes from the JSON log lines on stdout and queue state from the HTTP API. Never reaches
//! into Gannet's library: everything goes through the binary, its files and its sockets.
//!
//! Placeholders replaced in the config text before it is written:
//! - `${DIR}`: the instance's temporary directory; `${SPOOL}`: `${DIR}/spool`;
//! - `${SMTP}`, `${HTTP}`: `127.0.0.1:PORT` with a free port each;
//! - `${PORT_name}`: a free port (same name, same port), for extra listeners;
//! - `${CERT}`, `${KEY}`: paths of a self-signed certificate and key (PEM) in `${DIR}`.
//!
//! The child is killed (SIGKILL) when the `Gannet` is dropped; if the test is panicking, its
//! logs are printed first so a failed assertion shows what Gannet said.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{ExitStatus, Stdio};
use std::time::Duration;

use serde_json::Value;
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpStream;
use tokio::process::{Child, Command};

use super::dns::TestDns;

/// Path of the binary under test (built by cargo for this test target).
pub const GANNET_BIN: &str = env!("CARGO_BIN_EXE_gannet");

/// An argon2 PHC hash of `password`, made by `gannet hash-password` (for `[[smtp_user]]` and
/// `[[console_user]]` entries).
pub async fn hash_password(password: &str) -> String {
    let mut cmd = Command::new(GANNET_BIN);
    cmd.arg("hash-password");
    let out = super::tools::run(
        cmd,
        Some(format!("{password}\n").as_bytes()),
        Duration::from_secs(60),
    )
    .await;
    out.assert_success();
    out.stdout
        .lines()
        .find(|l| l.starts_with("$argon2"))
        .unwrap_or_else(|| panic!("no argon2 hash printed:\n{out}"))
        .to_string()
}

/// How long `start`/`restart` wait for the listeners and `/health`.
const START_TIMEOUT: Duration = Duration::from_secs(30);

/// A running (or stopped, between `kill9`/`sigterm` and `restart`) Gannet instance.
pub struct Gannet {
    dir: tempfile::TempDir,
    config_path: PathBuf,
    config_text: String,
    /// `[[listener]]` addresses in config order.
    listeners: Vec<SocketAddr>,
    /// Listeners with `tls = "implicit"` (no plaintext QUIT during the readiness check).
    implicit_tls: Vec<SocketAddr>,
    http: SocketAddr,
    child: Option<Child>,
    runs: u32,
    /// Extra environment of every start ([`TestConfig::env`]).
    env: Vec<(String, String)>,
}

/// One delivery outcome: a `"target":"gannet::outcome"` JSON log line.
#[derive(Debug, Clone)]
pub struct Outcome {
    /// `delivered`, `deferred` or `bounced`.
    pub event: String,
    pub queue_id: String,
    pub recipient: String,
    pub sender: String,
    pub host: String,
    pub ip: String,
    pub reply: String,
    pub attempt: u64,
    pub class: String,
    /// The whole log line.
    pub raw: Value,
}

/// `GET /api/v1/queues`.
#[derive(Debug, Clone)]
pub struct QueueStatus {
    pub queued_recipients: u64,
    pub queues: Vec<QueueEntry>,
    pub raw: Value,
}

#[derive(Debug, Clone)]
pub struct QueueEntry {
    pub domain: String,
    pub site: String,
    pub class: String,
    pub recipients: u64,
    pub oldest_age_secs: u64,
    pub raw: Value,
}

/// A field of a JSON log line: top level, or under `fields` (tracing-subscriber's default).
fn field<'a>(v: &'a Value, name: &str) -> Option<&'a Value> {
    v.get(name)
        .or_else(|| v.get("fields").and_then(|f| f.get(name)))
}

fn field_str(v: &Value, name: &str) -> String {
    match field(v, name) {
        Some(Value::String(s)) => s.clone(),
        Some(Value::Null) | None => String::new(),
        Some(other) => other.to_string(),
    }
}

fn field_u64(v: &Value, name: &str) -> u64 {
    match field(v, name) {
        Some(Value::Number(n)) => n.as_u64().unwrap_or(0),
        Some(Value::String(s)) => s.parse().unwrap_or(0),
        _ => 0,
    }
}

impl Outcome {
    /// Any other field of the line (`status` of a `dsn` line, ...), "" when absent.
    pub fn get(&self, name: &str) -> String {
        field_str(&self.raw, name)
    }

    fn from_json(v: Value) -> Option<Outcome> {
        if field_str(&v, "target") != "gannet::outcome" {
            return None;
        }
        Some(Outcome {
            event: field_str(&v, "event"),
            queue_id: field_str(&v, "queue_id"),
            recipient: field_str(&v, "recipient"),
            sender: field_str(&v, "sender"),
            host: field_str(&v, "host"),
            ip: field_str(&v, "ip"),
            reply: field_str(&v, "reply"),
            attempt: field_u64(&v, "attempt"),
            class: field_str(&v, "class"),
            raw: v,
        })
    }
}

impl QueueStatus {
    fn from_json(v: Value) -> QueueStatus {
        let queues = v
            .get("queues")
            .and_then(Value::as_array)
            .map(|qs| {
                qs.iter()
                    .map(|q| QueueEntry {
                        domain: field_str(q, "domain"),
                        site: field_str(q, "site"),
                        class: field_str(q, "class"),
                        recipients: field_u64(q, "recipients"),
                        oldest_age_secs: field_u64(q, "oldest_age_secs"),
                        raw: q.clone(),
                    })
                    .collect()
            })
            .unwrap_or_default();
        QueueStatus {
            queued_recipients: field_u64(&v, "queued_recipients"),
            queues,
            raw: v,
        }
    }
}

/// Builds the config TOML most tests need; the result has `${...}` placeholders that
/// [`Gannet::start`] fills in. Defaults: one listener on `${SMTP}` relaying for 127.0.0.1,
/// HTTP on `${HTTP}`, spool in `${SPOOL}`, retry every second, `max_age` 1 hour, pool
/// `default` sourcing from 127.0.0.1, classes `promotional` (listener default, priority 0) and
/// `transactional` (priority 10) both on `default`, short delivery timeouts. Extend with
/// [`TestConfig::pool`], [`TestConfig::class`], [`TestConfig::file`], [`TestConfig::extra`].
#[derive(Debug, Clone)]
pub struct TestConfig {
    hostname: String,
    /// Raw top-level `key = value` lines (before the first table).
    top: Vec<String>,
    nameservers: Vec<SocketAddr>,
    /// Raw `key = value` lines inside `[dns]`.
    dns_options: Vec<String>,
    delivery_port: u16,
    retry_schedule: Vec<String>,
    max_age: String,
    relay_from: Vec<String>,
    routes: Vec<(String, String)>,
    sources: Vec<(String, String)>,
    listener_options: Vec<String>,
    /// Raw `key = value` lines inside `[http]`.
    http_options: Vec<String>,
    /// Raw `key = value` lines inside `[spool]`.
    spool_options: Vec<String>,
    delivery_options: Vec<String>,
    extra: Vec<String>,
    /// Further `[[pool]]`s: name → sources.
    pools: Vec<(String, Vec<(String, String)>)>,
    /// `[class.NAME]` → (pool, priority).
    classes: std::collections::BTreeMap<String, (String, i32)>,
    files: Vec<(String, Vec<u8>)>,
    env: Vec<(String, String)>,
}

impl TestConfig {
    /// Resolve through `dns`; deliver to port `delivery_port` of every MX host.
    pub fn new(dns: &TestDns, delivery_port: u16) -> TestConfig {
        TestConfig {
            hostname: "gannet.test".into(),
            top: Vec::new(),
            nameservers: vec![dns.addr],
            dns_options: Vec::new(),
            delivery_port,
            retry_schedule: vec!["1s".into()],
            max_age: "1h".into(),
            relay_from: vec!["127.0.0.1/32".into()],
            routes: Vec::new(),
            sources: vec![("127.0.0.1".into(), "out.gannet.test".into())],
            listener_options: Vec::new(),
            http_options: Vec::new(),
            spool_options: Vec::new(),
            delivery_options: Vec::new(),
            extra: Vec::new(),
            pools: Vec::new(),
            classes: [
                ("promotional".to_string(), ("default".to_string(), 0)),
                ("transactional".to_string(), ("default".to_string(), 10)),
            ]
            .into(),
            files: Vec::new(),
            env: Vec::new(),
        }
    }

    /// Adds a `[[pool]]` with these `(ip, ehlo)` sources (the `default` pool stays).
    pub fn pool(mut self, name: &str, sources: &[(&str, &str)]) -> Self {
        let sources = sources
            .iter()
            .map(|(ip, ehlo)| (ip.to_string(), ehlo.to_string()))
            .collect();
        self.pools.push((name.into(), sources));
        self
    }

    /// Sets `[class.NAME] pool, priority` (adds the class or replaces the default mapping of
    /// `promotional` / `transactional`).
    pub fn class(mut self, name: &str, pool: &str, priority: i32) -> Self {
        self.classes.insert(name.into(), (pool.into(), priority));
        self
    }

    /// A file written into the instance directory before start; refer to it as
    /// `${DIR}/name` in the config. Start with [`Gannet::start_config`] (or [`super::World`]).
    pub fn file(mut self, name: &str, contents: impl AsRef<[u8]>) -> Self {
        self.files.push((name.into(), contents.as_ref().to_vec()));
        self
    }

    /// An environment variable of the Gannet process (e.g. `SSL_CERT_FILE`: the CA bundle
    /// certificate verification trusts). Start with [`Gannet::start_config`].
    pub fn env(mut self, key: &str, value: &str) -> Self {
        self.env.push((key.into(), value.into()));
        self
    }

    /// Files added with [`TestConfig::file`].
    pub fn files(&self) -> &[(String, Vec<u8>)] {
        &self.files
    }

    /// A raw top-level `key = value` line (e.g. `"postmaster = \"ops@dest.test\""`).
    pub fn top_level(mut self, line: &str) -> Self {
        self.top.push(line.into());
        self
    }

    pub fn hostname(mut self, name: &str) -> Self {
        self.hostname = name.into();
        self
    }

    /// `[delivery] retry_schedule` (e.g. `&["1s", "2s"]`).
    pub fn retry_schedule(mut self, delays: &[&str]) -> Self {
        self.retry_schedule = delays.iter().map(|s| s.to_string()).collect();
        self
    }

    /// `[delivery] max_age` (e.g. `"3s"`).
    pub fn max_age(mut self, age: &str) -> Self {
        self.max_age = age.into();
        self
    }

    /// `[[listener]] relay_from` of the default listener.
    pub fn relay_from(mut self, nets: &[&str]) -> Self {
        self.relay_from = nets.iter().map(|s| s.to_string()).collect();
        self
    }

    /// Adds a `[[route]]` static next hop (`host` is `IP:PORT` or `name:PORT`).
    pub fn route(mut self, domain: &str, host: &str) -> Self {
        self.routes.push((domain.into(), host.into()));
        self
    }

    /// Replaces the `default` pool's sources with these `(ip, ehlo)` pairs.
    pub fn sources(mut self, sources: &[(&str, &str)]) -> Self {
        self.sources = sources
            .iter()
            .map(|(ip, ehlo)| (ip.to_string(), ehlo.to_string()))
            .collect();
        self
    }

    /// A raw `key = value` line inside the default `[[listener]]` (e.g. `"max_recipients = 3"`).
    pub fn listener_option(mut self, line: &str) -> Self {
        self.listener_options.push(line.into());
        self
    }

    /// A raw `key = value` line inside `[http]` (e.g. `"tls_cert = \"${CERT}\""`). With
    /// `tls_cert` the readiness check only connects to the HTTP port (it speaks plain HTTP).
    pub fn http_option(mut self, line: &str) -> Self {
        self.http_options.push(line.into());
        self
    }

    /// A raw `key = value` line inside `[spool]` (e.g. `"max_segment_bytes = 65536"`); a
    /// `path = ...` line replaces the default `${SPOOL}`.
    pub fn spool_option(mut self, line: &str) -> Self {
        self.spool_options.push(line.into());
        self
    }

    /// A raw `key = value` line inside `[dns]` (e.g. `"min_ttl = \"1s\""`).
    pub fn dns_option(mut self, line: &str) -> Self {
        self.dns_options.push(line.into());
        self
    }

    /// A raw `key = value` line inside `[delivery]` (e.g. `"max_connections_per_destination = 2"`).
    pub fn delivery_option(mut self, line: &str) -> Self {
        self.delivery_options.push(line.into());
        self
    }

    /// Raw TOML appended at the end (more `[[listener]]`s, `[[dkim]]`, `[[pool]]`, ...).
    pub fn extra(mut self, toml: &str) -> Self {
        self.extra.push(toml.into());
        self
    }

    /// Uses `toml` as the shaping file (`[shaping] file`), replacing the built-in
    /// `config/shaping.toml` as a whole (limits, backoff rules, warm-up schedules).
    pub fn shaping(self, toml: &str) -> Self {
        self.file("shaping.toml", toml)
            .extra("[shaping]\nfile = \"${DIR}/shaping.toml\"")
    }

    /// The config text, with placeholders.
    pub fn build(&self) -> String {
        let q = |s: &str| toml_str(s);
        let list = |v: &[String]| v.iter().map(|s| q(s)).collect::<Vec<_>>().join(", ");
        let mut t = String::new();
        t += &format!("hostname = {}\n", q(&self.hostname));
        for l in &self.top {
            t += l;
            t += "\n";
        }
        t += "\n";
        t += "[spool]\n";
        if !self
            .spool_options
            .iter()
            .any(|l| l.trim_start().starts_with("path"))
        {
            t += "path = \"${SPOOL}\"\n";
        }
        for l in &self.spool_options {
            t += l;
            t += "\n";
        }
        t += "\n";
        t += "[[listener]]\nname = \"default\"\naddress = \"${SMTP}\"\n";
        t += &format!("relay_from = [{}]\n", list(&self.relay_from));
        t += "default_class = \"promotional\"\n";
        for l in &self.listener_options {
            t += l;
            t += "\n";
        }
        t += "\n[http]\naddress = \"${HTTP}\"\n";
        for l in &self.http_options {
            t += l;
            t += "\n";
        }
        t += "\n";
        let ns: Vec<String> = self.nameservers.iter().map(|a| a.to_string()).collect();
        t += &format!(
            "[dns]\nnameservers = [{}]\ntimeout = \"2s\"\nnegative_ttl = \"1s\"\n",
            list(&ns)
        );
        for l in &self.dns_options {
            t += l;
            t += "\n";
        }
        t += "\n";
        t += "[delivery]\n";
        t += &format!("port = {}\n", self.delivery_port);
        t += &format!("retry_schedule = [{}]\n", list(&self.retry_schedule));
        t += "retry_jitter = 0.0\n";
        t += &format!("max_age = {}\n", q(&self.max_age));
        t += "connect_timeout = \"5s\"\ncommand_timeout = \"10s\"\ndata_timeout = \"10s\"\n";
        t += "idle_timeout = \"2s\"\n";
        // Sinks are MX hosts on loopback: only Gannet's own listener address is "myself".
        if !self
            .delivery_options
            .iter()
            .any(|l| l.trim_start().starts_with("loopback_is_self"))
        {
            t += "loopback_is_self = false\n";
        }
        for l in &self.delivery_options {
            t += l;
            t += "\n";
        }
        for (domain, host) in &self.routes {
            t += &format!("\n[[route]]\ndomain = {}\nhost = {}\n", q(domain), q(host));
        }
        let sources = |v: &[(String, String)]| {
            v.iter()
                .map(|(ip, ehlo)| format!("{{ ip = {}, ehlo = {} }}", q(ip), q(ehlo)))
                .collect::<Vec<_>>()
                .join(", ")
        };
        t += &format!(
            "\n[[pool]]\nname = \"default\"\nsources = [{}]\n",
            sources(&self.sources)
        );
        for (name, srcs) in &self.pools {
            t += &format!(
                "\n[[pool]]\nname = {}\nsources = [{}]\n",
                q(name),
                sources(srcs)
            );
        }
        for (name, (pool, priority)) in &self.classes {
            t += &format!(
                "\n[class.{name}]\npool = {}\npriority = {priority}\n",
                q(pool)
            );
        }
        for e in &self.extra {
            t += "\n";
            t += e;
            t += "\n";
        }
        t
    }
}

/// A TOML basic string.
fn toml_str(s: &str) -> String {
    let mut out = String::from("\"");
    for ch in s.chars() {
        match ch {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

impl Gannet {
    /// Writes `config_toml` (placeholders filled in) to a fresh temporary directory, starts
    /// `gannet serve --config FILE`, and waits until every listener accepts and `GET /health`
    /// answers 200. Panics with Gannet's output if it exits or is not ready within 30 s.
    pub async fn start(config_toml: &str) -> Gannet {
        Self::start_with_files(config_toml, &[]).await
    }

    /// [`Gannet::start`] after writing `files` (name, contents) into the instance directory,
    /// where the config reaches them as `${DIR}/name` (DKIM keys, shaping data, ...).
    pub async fn start_with_files(config_toml: &str, files: &[(String, Vec<u8>)]) -> Gannet {
        Self::start_with_env(config_toml, files, &[]).await
    }

    async fn start_with_env(
        config_toml: &str,
        files: &[(String, Vec<u8>)],
        env: &[(String, String)],
    ) -> Gannet {
        // A free port can be taken by a parallel test between choosing and binding it; then
        // Gannet exits at startup and we try again with other ports.
        let mut last_err = String::new();
        for _ in 0..3 {
            let dir = tempfile::Builder::new()
                .prefix("gannet-e2e-")
                .tempdir()
                .expect("create temp dir");
            for (name, contents) in files {
                let path = dir.path().join(name);
                if let Some(parent) = path.parent() {
                    std::fs::create_dir_all(parent).expect("create dir for test file");
                }
                std::fs::write(&path, contents)
                    .unwrap_or_else(|e| panic!("write {}: {e}", path.display()));
            }
            let text = fill_placeholders(config_toml, dir.path());
            let config_path = dir.path().join("gannet.toml");
            std::fs::write(&config_path, &text).expect("write config");
            let (listeners, implicit_tls, http) = addresses_of(&text);
            let mut g = Gannet {
                dir,
                config_path,
                config_text: text,
                listeners,
                implicit_tls,
                http,
                child: None,
                runs: 0,
                env: env.to_vec(),
            };
            match g.spawn_and_wait().await {
                Ok(()) => return g,
                Err(e) if e.contains("in use") => {
                    last_err = e;
                    g.kill9().await;
                    continue;
                }
                Err(e) => {
                    g.kill9().await;
                    let log = g.log();
                    let text = g.config_text.clone();
                    drop(g); // not while panicking: its Drop would print the log a second time
                    panic!("gannet did not start: {e}\n--- config ---\n{text}\n{log}");
                }
            }
        }
        panic!("gannet did not start after 3 tries (ports in use?): {last_err}");
    }

    fn stdout_path(&self) -> PathBuf {
        self.dir.path().join("stdout.log")
    }

    fn stderr_path(&self) -> PathBuf {
        self.dir.path().join("stderr.log")
    }

    /// Spawns the child (appending to the logs) and waits until it is ready.
    async fn spawn_and_wait(&mut self) -> Result<(), String> {
        self.runs += 1;
        let open = |p: PathBuf| {
            std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(&p)
                .unwrap_or_else(|e| panic!("open {}: {e}", p.display()))
        };
        let out = open(self.stdout_path());
        let mut err = open(self.stderr_path());
        use std::io::Write;
        let _ = writeln!(err, "==== harness: start #{} ====", self.runs);
        let child = Command::new(GANNET_BIN)
            .arg("serve")
            .arg("--config")
            .arg(&self.config_path)
            .current_dir(self.dir.path())
            .env("RUST_BACKTRACE", "1")
            .envs(self.env.iter().map(|(k, v)| (k, v)))
            .stdin(Stdio::null())
            .stdout(Stdio::from(out))
            .stderr(Stdio::from(err))
            .kill_on_drop(true)
            .spawn()
            .map_err(|e| format!("cannot run {GANNET_BIN}: {e}"))?;
        self.child = Some(child);
        let deadline = tokio::time::Instant::now() + START_TIMEOUT;
        loop {
            if let Some(child) = self.child.as_mut()
                && let Ok(Some(status)) = child.try_wait()
            {
                let log = self.log();
                let reason = if log.contains("in use") {
                    "address in use"
                } else {
                    "exited"
                };
                return Err(format!("gannet {reason} during startup with {status}"));
            }
            if self.ready().await {
                return Ok(());
            }
            if tokio::time::Instant::now() >= deadline {
                return Err(format!(
                    "gannet not ready after {START_TIMEOUT:?} (listeners {:?}, http {})",
                    self.listeners, self.http
                ));
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Every listener accepts a connection and `/health` answers 200.
    async fn ready(&self) -> bool {
        for addr in &self.listeners {
            let Ok(Ok(mut s)) =
                tokio::time::timeout(Duration::from_secs(1), TcpStream::connect(addr)).await
            else {
                return false;
            };
            // Be polite to a plain SMTP listener; implicit TLS ones just see a closed socket.
            if !self.implicit_tls.contains(addr) {
                let _ = s.write_all(b"QUIT\r\n").await;
            }
        }
        if http_tls(&self.config_text) {
            return TcpStream::connect(self.http).await.is_ok();
        }
        matches!(http(self.http, "GET", "/health", None).await, Ok((200, _)))
    }

    /// The first `[[listener]]` address.
    pub fn smtp_addr(&self) -> SocketAddr {
        *self.listeners.first().expect("config has a [[listener]]")
    }

    /// All `[[listener]]` addresses, in config order.
    pub fn listener_addrs(&self) -> &[SocketAddr] {
        &self.listeners
    }

    /// `[http] address`.
    pub fn http_addr(&self) -> SocketAddr {
        self.http
    }

    /// The config file (placeholders filled in).
    pub fn config_path(&self) -> &Path {
        &self.config_path
    }

    /// The config text as written.
    pub fn config_text(&self) -> &str {
        &self.config_text
    }

    /// The instance's temporary directory (spool under `spool/`).
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// Process id of the running child.
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().and_then(Child::id)
    }

    /// Resident memory of the Gannet process now (`VmRSS` of `/proc/PID/status`), in bytes;
    /// None when it is not running.
    pub fn rss_bytes(&self) -> Option<u64> {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.pid()?)).ok()?;
        let line = status.lines().find(|l| l.starts_with("VmRSS:"))?;
        let kib: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
        Some(kib * 1024)
    }

    /// SIGKILL: no chance to flush or clean up (a crash or power loss of the process).
    pub async fn kill9(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.start_kill();
            let _ = child.wait().await;
        }
    }

    /// Sends SIGTERM and returns at once (the process keeps running until it has shut down);
    /// pair with [`Gannet::wait_exit`].
    pub fn send_sigterm(&mut self) {
        let child = self.child.as_ref().expect("gannet is running");
        let pid = child.id().expect("child has a pid") as libc::pid_t;
        // SAFETY: kill(2) on our own child, which has not been reaped yet (we hold it), so the
        // pid cannot belong to another process.
        unsafe {
            libc::kill(pid, libc::SIGTERM);
        }
    }

    /// Waits (up to `timeout`) for the process to exit; returns its status. Panics with the
    /// log (after killing it) if it is still running then.
    pub async fn wait_exit(&mut self, timeout: Duration) -> ExitStatus {
        let mut child = self.child.take().expect("gannet is running");
        match tokio::time::timeout(timeout, child.wait()).await {
            Ok(Ok(status)) => status,
            Ok(Err(e)) => panic!("waiting for gannet to exit: {e}"),
            Err(_) => {
                let _ = child.start_kill();
                let _ = child.wait().await;
                panic!(
                    "gannet still running {timeout:?} after SIGTERM\n{}",
                    self.log()
                );
            }
        }
    }

    /// SIGTERM, then waits (up to `timeout`) for the process to exit; returns its status.
    pub async fn sigterm_within(&mut self, timeout: Duration) -> ExitStatus {
        self.send_sigterm();
        self.wait_exit(timeout).await
    }

    /// Starts Gannet on `config` ([`TestConfig::build`] plus its files).
    pub async fn start_config(config: &TestConfig) -> Gannet {
        Self::start_with_env(&config.build(), config.files(), &config.env).await
    }

    /// SIGTERM and wait up to 30 s for exit.
    pub async fn sigterm(&mut self) -> ExitStatus {
        self.sigterm_within(Duration::from_secs(30)).await
    }

    /// Starts again with the same config and spool (after `kill9` or `sigterm`; kills a
    /// running child first). The logs continue in the same files.
    pub async fn restart(&mut self) {
        self.kill9().await;
        // The old process's sockets may linger for a moment; retry briefly on "in use".
        let mut tries = 0;
        loop {
            match self.spawn_and_wait().await {
                Ok(()) => return,
                Err(e) if e.contains("in use") && tries < 20 => {
                    tries += 1;
                    self.kill9().await;
                    tokio::time::sleep(Duration::from_millis(250)).await;
                }
                Err(e) => {
                    self.kill9().await;
                    panic!("gannet did not restart: {e}\n{}", self.log());
                }
            }
        }
    }

    /// Whether the child is still running.
    pub fn is_running(&mut self) -> bool {
        match self.child.as_mut() {
            Some(c) => matches!(c.try_wait(), Ok(None)),
            None => false,
        }
    }

    /// Everything Gannet wrote so far (stdout then stderr), across restarts.
    pub fn log(&self) -> String {
        let out = std::fs::read_to_string(self.stdout_path()).unwrap_or_default();
        let err = std::fs::read_to_string(self.stderr_path()).unwrap_or_default();
        format!("--- gannet stdout ---\n{out}\n--- gannet stderr ---\n{err}")
    }

    /// Stdout lines that are JSON objects, across restarts.
    pub fn log_json(&self) -> Vec<Value> {
        std::fs::read_to_string(self.stdout_path())
            .unwrap_or_default()
            .lines()
            .filter_map(|l| serde_json::from_str::<Value>(l).ok())
            .filter(Value::is_object)
            .collect()
    }

    /// Every delivery outcome logged so far, oldest first, across restarts.
    pub fn outcomes(&self) -> Vec<Outcome> {
        self.log_json()
            .into_iter()
            .filter_map(Outcome::from_json)
            .collect()
    }

    /// Outcomes for one recipient.
    pub fn outcomes_for(&self, recipient: &str) -> Vec<Outcome> {
        self.outcomes()
            .into_iter()
            .filter(|o| o.recipient.eq_ignore_ascii_case(recipient))
            .collect()
    }

    /// Waits until `f` holds for the outcomes so far and returns them; panics with the log
    /// after `timeout`.
    pub async fn wait_outcomes(
        &self,
        timeout: Duration,
        what: &str,
        mut f: impl FnMut(&[Outcome]) -> bool,
    ) -> Vec<Outcome> {
        let found = super::poll(timeout, || {
            let o = self.outcomes();
            f(&o).then_some(o)
        })
        .await;
        match found {
            Some(o) => o,
            None => panic!(
                "timed out after {timeout:?} waiting for {what}\n{}",
                self.log()
            ),
        }
    }

    /// Waits for the first `event` outcome (`delivered`/`deferred`/`bounced`) for `recipient`.
    pub async fn wait_event(&self, event: &str, recipient: &str, timeout: Duration) -> Outcome {
        let what = format!("a {event:?} outcome for {recipient}");
        let all = self
            .wait_outcomes(timeout, &what, |os| {
                os.iter()
                    .any(|o| o.event == event && o.recipient.eq_ignore_ascii_case(recipient))
            })
            .await;
        all.into_iter()
            .find(|o| o.event == event && o.recipient.eq_ignore_ascii_case(recipient))
            .expect("checked above")
    }

    /// `GET path` on the HTTP API: (status, body).
    pub async fn http_get(&self, path: &str) -> (u16, String) {
        http(self.http, "GET", path, None)
            .await
            .unwrap_or_else(|e| panic!("GET {path}: {e}\n{}", self.log()))
    }

    /// `POST path` with a JSON body (or none): (status, body).
    pub async fn http_post(&self, path: &str, json: Option<&str>) -> (u16, String) {
        http(self.http, "POST", path, json)
            .await
            .unwrap_or_else(|e| panic!("POST {path}: {e}\n{}", self.log()))
    }

    /// `GET /api/v1/queues`, parsed. Panics unless 200 with JSON.
    pub async fn queue_status(&self) -> QueueStatus {
        let (status, body) = self.http_get("/api/v1/queues").await;
        assert_eq!(status, 200, "GET /api/v1/queues answered {status}: {body}");
        let v: Value = serde_json::from_str(&body)
            .unwrap_or_else(|e| panic!("GET /api/v1/queues: not JSON ({e}): {body}"));
        QueueStatus::from_json(v)
    }

    /// Polls `GET /api/v1/queues` until nothing is queued, for at most `within`; returns the
    /// last status either way so the caller's assertion shows what was left. A sink that has
    /// every message does not mean the queue has recorded every outcome yet.
    pub async fn queue_drained(&self, within: Duration) -> QueueStatus {
        let until = tokio::time::Instant::now() + within;
        loop {
            let q = self.queue_status().await;
            if q.queued_recipients == 0 || tokio::time::Instant::now() >= until {
                return q;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// JSON log lines of one tracing target (e.g. `gannet::shaping`), oldest first, across
    /// restarts.
    pub fn log_events(&self, target: &str) -> Vec<Value> {
        self.log_json()
            .into_iter()
            .filter(|v| field_str(v, "target") == target)
            .collect()
    }

    /// Sum of the samples of Prometheus metric `name` (from `GET /metrics`) whose labels
    /// include every `(label, value)` of `labels`; 0 when there is none.
    pub async fn metric(&self, name: &str, labels: &[(&str, &str)]) -> f64 {
        let (status, body) = self.http_get("/metrics").await;
        assert_eq!(status, 200, "GET /metrics answered {status}: {body}");
        let mut sum = 0.0;
        for line in body.lines().filter(|l| !l.starts_with('#')) {
            let (series, value) = match line.rsplit_once(' ') {
                Some(x) => x,
                None => continue,
            };
            let (metric, label_text) = match series.split_once('{') {
                Some((m, rest)) => (m, rest.trim_end_matches('}')),
                None => (series, ""),
            };
            if metric != name {
                continue;
            }
            let have = prometheus_labels(label_text);
            let all = labels
                .iter()
                .all(|(k, v)| have.iter().any(|(hk, hv)| hk == k && hv == v));
            if all {
                sum += value.parse::<f64>().unwrap_or(0.0);
            }
        }
        sum
    }

    /// `POST /api/v1/queues/flush`: retry everything now. Panics unless 2xx.
    pub async fn flush(&self) {
        let (status, body) = self.http_post("/api/v1/queues/flush", None).await;
        assert!(
            (200..300).contains(&status),
            "POST /api/v1/queues/flush answered {status}: {body}"
        );
    }

    /// Runs `gannet ARGS... --config FILE` (a CLI command against this instance) and returns
    /// its output. Never panics on a non-zero exit: check [`super::ToolOutput::assert_success`].
    pub async fn cli(&self, args: &[&str]) -> super::ToolOutput {
        self.cli_with_env(args, &[]).await
    }

    /// [`Gannet::cli`] with extra environment variables (e.g. `GANNET_API_TOKEN`).
    pub async fn cli_with_env(&self, args: &[&str], env: &[(&str, &str)]) -> super::ToolOutput {
        let mut cmd = Command::new(GANNET_BIN);
        cmd.args(args).arg("--config").arg(&self.config_path);
        cmd.env_remove("GANNET_API_TOKEN");
        for (k, v) in env {
            cmd.env(k, v);
        }
        super::tools::run(cmd, None, Duration::from_secs(60)).await
    }

    /// `GET path` with `Authorization: Bearer TOKEN`: (status, body).
    pub async fn http_get_with_token(&self, path: &str, token: &str) -> (u16, String) {
        http_with_headers(
            self.http,
            "GET",
            path,
            None,
            &[("Authorization", &format!("Bearer {token}"))],
        )
        .await
        .unwrap_or_else(|e| panic!("GET {path}: {e}\n{}", self.log()))
    }
}

/// A config written to a fresh directory (placeholders filled in, [`TestConfig::file`]s
/// written) without starting Gannet: for commands that must refuse it (`serve` stopping at
/// start, `check-config`) or that need no running instance.
pub struct ConfigDir {
    dir: tempfile::TempDir,
    path: PathBuf,
}

impl ConfigDir {
    pub fn write(config: &TestConfig) -> ConfigDir {
        let dir = tempfile::Builder::new()
            .prefix("gannet-e2e-cfg-")
            .tempdir()
            .expect("create temp dir");
        for (name, contents) in config.files() {
            let path = dir.path().join(name);
            std::fs::write(&path, contents)
                .unwrap_or_else(|e| panic!("write {}: {e}", path.display()));
        }
        let path = dir.path().join("gannet.toml");
        std::fs::write(&path, fill_placeholders(&config.build(), dir.path()))
            .expect("write config");
        ConfigDir { dir, path }
    }

    /// The config file.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The directory (`${DIR}`).
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// Runs `gannet ARGS... --config FILE` in the directory; killed after `timeout` (then
    /// `status` is `None`).
    pub async fn run(&self, args: &[&str], timeout: Duration) -> super::ToolOutput {
        let mut cmd = Command::new(GANNET_BIN);
        cmd.args(args)
            .arg("--config")
            .arg(&self.path)
            .current_dir(self.dir.path());
        super::tools::run(cmd, None, timeout).await
    }
}

impl Drop for Gannet {
    fn drop(&mut self) {
        if let Some(child) = self.child.as_mut() {
            let _ = child.start_kill();
        }
        if std::thread::panicking() {
            let log = self.log();
            let start = log.len().saturating_sub(30_000);
            let start = (start..log.len())
                .find(|i| log.is_char_boundary(*i))
                .unwrap_or(0);
            eprintln!(
                "==== gannet log ({} run(s), last 30 kB) ====\n{}\n==== end of gannet log ====",
                self.runs,
                &log[start..]
            );
        }
    }
}

/// `a="x",b="y,z"` (the inside of a Prometheus sample's braces) as (name, value) pairs, with
/// `\"` and `\\` unescaped.
fn prometheus_labels(text: &str) -> Vec<(String, String)> {
    let mut out = Vec::new();
    let mut rest = text;
    while let Some(eq) = rest.find("=\"") {
        let name = rest[..eq].trim_start_matches(',').trim().to_string();
        let mut value = String::new();
        let mut chars = rest[eq + 2..].char_indices();
        let mut end = rest.len();
        while let Some((i, c)) = chars.next() {
            match c {
                '\\' => {
                    if let Some((_, n)) = chars.next() {
                        value.push(if n == 'n' { '\n' } else { n });
                    }
                }
                '"' => {
                    end = eq + 2 + i + 1;
                    break;
                }
                c => value.push(c),
            }
        }
        out.push((name, value));
        rest = &rest[end.min(rest.len())..];
    }
    out
}

/// Replaces the `${...}` placeholders (see the module doc).
fn fill_placeholders(text: &str, dir: &Path) -> String {
    let mut out = String::with_capacity(text.len());
    let mut ports: HashMap<String, u16> = HashMap::new();
    let mut rest = text;
    while let Some(start) = rest.find("${") {
        out.push_str(&rest[..start]);
        let after = &rest[start + 2..];
        let Some(end) = after.find('}') else {
            out.push_str(&rest[start..]);
            rest = "";
            break;
        };
        let name = &after[..end];
        let value = match name {
            "DIR" => dir.display().to_string(),
            "SPOOL" => dir.join("spool").display().to_string(),
            "SMTP" | "HTTP" => {
                let p = *ports
                    .entry(name.to_string())
                    .or_insert_with(super::free_port);
                format!("127.0.0.1:{p}")
            }
            "CERT" | "KEY" => {
                let (cert, key) = super::test_cert_pem();
                let cert_path = dir.join("cert.pem");
                let key_path = dir.join("key.pem");
                std::fs::write(&cert_path, cert).expect("write cert");
                std::fs::write(&key_path, key).expect("write key");
                if name == "CERT" { cert_path } else { key_path }
                    .display()
                    .to_string()
            }
            n if n.starts_with("PORT_") => ports
                .entry(n.to_string())
                .or_insert_with(super::free_port)
                .to_string(),
            other => panic!("unknown placeholder ${{{other}}} in test config"),
        };
        out.push_str(&value);
        rest = &after[end + 1..];
    }
    out.push_str(rest);
    out
}

/// Whether the config text's `[http]` has `tls_cert` (the API speaks HTTPS only).
fn http_tls(text: &str) -> bool {
    toml::from_str::<toml::Value>(text)
        .ok()
        .and_then(|v| v.get("http").and_then(|h| h.get("tls_cert")).cloned())
        .is_some()
}

/// `[[listener]] address`es, those with implicit TLS, and `[http] address` of a config text.
fn addresses_of(text: &str) -> (Vec<SocketAddr>, Vec<SocketAddr>, SocketAddr) {
    let v: toml::Value =
        toml::from_str(text).unwrap_or_else(|e| panic!("test config is not TOML: {e}\n{text}"));
    let parse = |s: &str| -> SocketAddr {
        s.parse()
            .unwrap_or_else(|e| panic!("test config: bad address {s:?}: {e}"))
    };
    let mut listeners = Vec::new();
    let mut implicit = Vec::new();
    for l in v
        .get("listener")
        .and_then(|l| l.as_array())
        .map(Vec::as_slice)
        .unwrap_or_default()
    {
        let Some(addr) = l.get("address").and_then(|a| a.as_str()).map(parse) else {
            continue;
        };
        if l.get("tls").and_then(|t| t.as_str()) == Some("implicit") {
            implicit.push(addr);
        }
        listeners.push(addr);
    }
    let http = v
        .get("http")
        .and_then(|h| h.get("address"))
        .and_then(|a| a.as_str())
        .map(parse)
        .unwrap_or_else(|| parse("127.0.0.1:8025"));
    (listeners, implicit, http)
}

/// A minimal HTTP/1.1 client (Connection: close): enough for Gannet's JSON API.
pub async fn http(
    addr: SocketAddr,
    method: &str,
    path: &str,
    json: Option<&str>,
) -> Result<(u16, String), String> {
    http_with_headers(addr, method, path, json, &[]).await
}

/// [`http`] with extra request headers.
pub async fn http_with_headers(
    addr: SocketAddr,
    method: &str,
    path: &str,
    json: Option<&str>,
    headers: &[(&str, &str)],
) -> Result<(u16, String), String> {
    let mut all = vec![("Accept", "application/json")];
    all.extend_from_slice(headers);
    let body = json.map(|j| ("application/json", j.as_bytes()));
    http_request(addr, method, path, body, &all)
        .await
        .map(|r| (r.status, r.body))
}

/// A whole HTTP answer: status, every header (name lower-cased, in order) and the body.
#[derive(Debug, Clone)]
pub struct HttpReply {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: String,
}

impl HttpReply {
    /// The first value of header `name` (lower case).
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    }

    /// Every value of header `name` (lower case), e.g. each `set-cookie`.
    pub fn all(&self, name: &str) -> Vec<&str> {
        self.headers
            .iter()
            .filter(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
            .collect()
    }
}

/// One HTTP/1.1 request (Connection: close) with an optional `(content type, body)`; answers
/// with every header, for tests that look at cookies or redirects.
pub async fn http_request(
    addr: SocketAddr,
    method: &str,
    path: &str,
    content: Option<(&str, &[u8])>,
    headers: &[(&str, &str)],
) -> Result<HttpReply, String> {
    let fut = async {
        let mut s = TcpStream::connect(addr)
            .await
            .map_err(|e| format!("connect {addr}: {e}"))?;
        let body: &[u8] = content.map_or(&[], |(_, b)| b);
        let mut req = format!(
            "{method} {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\nContent-Length: {}\r\n",
            body.len()
        );
        if let Some((ctype, _)) = content {
            req.push_str(&format!("Content-Type: {ctype}\r\n"));
        }
        for (k, v) in headers {
            req.push_str(&format!("{k}: {v}\r\n"));
        }
        req.push_str("\r\n");
        let mut bytes = req.into_bytes();
        bytes.extend_from_slice(body);
        s.write_all(&bytes)
            .await
            .map_err(|e| format!("write: {e}"))?;
        let mut r = BufReader::new(s);
        let mut status_line = String::new();
        r.read_line(&mut status_line)
            .await
            .map_err(|e| format!("read status: {e}"))?;
        let status: u16 = status_line
            .split_whitespace()
            .nth(1)
            .and_then(|c| c.parse().ok())
            .ok_or_else(|| format!("bad status line {status_line:?}"))?;
        let mut chunked = false;
        let mut all_headers: Vec<(String, String)> = Vec::new();
        let mut length: Option<usize> = None;
        loop {
            let mut h = String::new();
            r.read_line(&mut h)
                .await
                .map_err(|e| format!("read header: {e}"))?;
            let h = h.trim_end();
            if h.is_empty() {
                break;
            }
            if let Some((k, v)) = h.split_once(':') {
                let k = k.trim().to_ascii_lowercase();
                let v = v.trim();
                all_headers.push((k.clone(), v.to_string()));
                if k == "transfer-encoding" && v.eq_ignore_ascii_case("chunked") {
                    chunked = true;
                }
                if k == "content-length" {
                    length = v.parse().ok();
                }
            }
        }
        let mut body = Vec::new();
        if chunked {
            loop {
                let mut size = String::new();
                r.read_line(&mut size)
                    .await
                    .map_err(|e| format!("read chunk size: {e}"))?;
                let n = usize::from_str_radix(size.trim().split(';').next().unwrap_or(""), 16)
                    .map_err(|_| format!("bad chunk size {size:?}"))?;
                if n == 0 {
                    break;
                }
                let mut chunk = vec![0; n + 2];
                r.read_exact(&mut chunk)
                    .await
                    .map_err(|e| format!("read chunk: {e}"))?;
                chunk.truncate(n);
                body.extend_from_slice(&chunk);
            }
        } else if let Some(n) = length {
            body.resize(n, 0);
            r.read_exact(&mut body)
                .await
                .map_err(|e| format!("read body: {e}"))?;
        } else {
            r.read_to_end(&mut body)
                .await
                .map_err(|e| format!("read body: {e}"))?;
        }
        Ok(HttpReply {
            status,
            headers: all_headers,
            body: String::from_utf8_lossy(&body).into_owned(),
        })
    };
    tokio::time::timeout(Duration::from_secs(10), fut)
        .await
        .map_err(|_| format!("{method} http://{addr}{path}: no answer within 10 s"))?
}
