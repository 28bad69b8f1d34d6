//! Clients that talk to Gannet in e2e tests: independent implementations (Python `smtplib`,
//! `swaks`, Postfix `smtp-source`) run as child processes, and [`SmtpClient`], a raw-socket
//! client for exchanges no well-behaved client would produce (malformed input, pipelining out of
//! order, TLS garbage).
//!
//! Owns nothing between calls: every function starts its own process or socket, captures the
//! whole transcript, and puts it in the panic message when an expectation fails.
//!
//! ```ignore
//! let mut c = SmtpClient::connect(gannet.smtp_addr()).await;
//! c.expect("220").await;
//! c.cmd("EHLO client.test", "250").await;
//! c.cmd("MAIL FROM:<a@sender.test>", "250").await;
//! c.cmd("RCPT TO:<b@example.test>", "250").await;
//! let id = c.data(b"Subject: x\r\n\r\nhi\r\n", "250 2.0.0").await;
//! ```

use std::collections::BTreeMap;
use std::fmt;
use std::net::{IpAddr, SocketAddr};
use std::process::{ExitStatus, Stdio};
use std::time::Duration;

use serde_json::Value;
use tokio::io::{AsyncBufReadExt, AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, BufReader};
use tokio::net::{TcpSocket, TcpStream};
use tokio::process::Command;

/// Directory of helper scripts (`tests/e2e/scripts`).
pub const SCRIPTS_DIR: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/e2e/scripts");

/// What a child process did.
#[derive(Debug, Clone)]
pub struct ToolOutput {
    /// The command line, for messages.
    pub command: String,
    /// `None` when it was killed for running past its time limit.
    pub status: Option<ExitStatus>,
    pub stdout: String,
    pub stderr: String,
}

impl ToolOutput {
    pub fn success(&self) -> bool {
        self.status.is_some_and(|s| s.success())
    }

    /// Panics with the whole output unless the process exited 0.
    pub fn assert_success(&self) -> &Self {
        assert!(self.success(), "command failed:\n{self}");
        self
    }

    /// Panics with the whole output unless the process exited non-zero.
    pub fn assert_failure(&self) -> &Self {
        assert!(
            self.status.is_some() && !self.success(),
            "command should have failed:\n{self}"
        );
        self
    }

    /// stdout then stderr.
    pub fn all(&self) -> String {
        format!("{}{}", self.stdout, self.stderr)
    }
}

impl fmt::Display for ToolOutput {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let status = match self.status {
            Some(s) => s.to_string(),
            None => "killed after its time limit".to_string(),
        };
        write!(
            f,
            "$ {}\n[{status}]\n--- stdout ---\n{}\n--- stderr ---\n{}",
            self.command, self.stdout, self.stderr
        )
    }
}

/// Runs `cmd` with `stdin`, killing it after `timeout`; captures stdout and stderr.
pub async fn run(mut cmd: Command, stdin: Option<&[u8]>, timeout: Duration) -> ToolOutput {
    let command = format!("{:?}", cmd.as_std());
    cmd.stdin(if stdin.is_some() {
        Stdio::piped()
    } else {
        Stdio::null()
    })
    .stdout(Stdio::piped())
    .stderr(Stdio::piped())
    .kill_on_drop(true);
    let mut child = match cmd.spawn() {
        Ok(c) => c,
        Err(e) => panic!("cannot run {command}: {e} (is it installed? scripts/test installs it)"),
    };
    if let (Some(input), Some(mut pipe)) = (stdin, child.stdin.take()) {
        let input = input.to_vec();
        tokio::spawn(async move {
            let _ = pipe.write_all(&input).await;
        });
    }
    let mut out = child.stdout.take().expect("piped stdout");
    let mut err = child.stderr.take().expect("piped stderr");
    let collect = async {
        let mut o = Vec::new();
        let mut e = Vec::new();
        let _ = tokio::join!(out.read_to_end(&mut o), err.read_to_end(&mut e));
        let status = child.wait().await.ok();
        (status, o, e)
    };
    let (status, o, e) = match tokio::time::timeout(timeout, collect).await {
        Ok(r) => r,
        Err(_) => (None, Vec::new(), b"(timed out; output lost)".to_vec()),
    };
    ToolOutput {
        command,
        status,
        stdout: String::from_utf8_lossy(&o).into_owned(),
        stderr: String::from_utf8_lossy(&e).into_owned(),
    }
}

/// `python3 -c CODE ARGS...` with `stdin`; 60 s limit.
pub async fn python(code: &str, args: &[&str], stdin: Option<&[u8]>) -> ToolOutput {
    let mut cmd = Command::new("python3");
    cmd.arg("-c").arg(code).args(args);
    run(cmd, stdin, Duration::from_secs(60)).await
}

/// `python3 tests/e2e/scripts/NAME ARGS...` with `stdin`; 60 s limit.
pub async fn python_script(name: &str, args: &[&str], stdin: Option<&[u8]>) -> ToolOutput {
    let mut cmd = Command::new("python3");
    cmd.arg(format!("{SCRIPTS_DIR}/{name}")).args(args);
    run(cmd, stdin, Duration::from_secs(60)).await
}

/// Options for [`python_send`] (Python `smtplib`).
#[derive(Debug, Clone, Default)]
pub struct PySend {
    pub from: String,
    pub rcpts: Vec<String>,
    /// The message bytes exactly as to be sent (CRLF line ends).
    pub message: Vec<u8>,
    /// MAIL FROM parameters, e.g. `SMTPUTF8`, `BODY=8BITMIME`.
    pub mail_options: Vec<String>,
    /// EHLO name (default `client.test`).
    pub ehlo: Option<String>,
    /// Bind the client socket to this address (e.g. `127.0.0.5` for the open-relay test).
    pub source_ip: Option<String>,
    /// Do STARTTLS before the transaction.
    pub starttls: bool,
    /// Connect with implicit TLS (`SMTP_SSL`).
    pub implicit_tls: bool,
}

impl PySend {
    pub fn new(from: &str, rcpts: &[&str], message: &[u8]) -> PySend {
        PySend {
            from: from.into(),
            rcpts: rcpts.iter().map(|r| r.to_string()).collect(),
            message: message.to_vec(),
            ..PySend::default()
        }
    }

    pub fn option(mut self, opt: &str) -> PySend {
        self.mail_options.push(opt.into());
        self
    }
}

/// What Python `smtplib` reported.
#[derive(Debug, Clone)]
pub struct PyResult {
    /// The message was accepted (DATA answered 2xx) for at least one recipient.
    pub ok: bool,
    /// Final reply to DATA, e.g. `250 2.0.0 Ok: queued as ...`.
    pub data_reply: String,
    /// Reply to MAIL FROM.
    pub mail_reply: String,
    /// Recipients refused, with code and text.
    pub refused: BTreeMap<String, (u16, String)>,
    /// Error class and text when something failed.
    pub error: Option<String>,
    /// Reply code of the failure, when there was one.
    pub code: Option<u16>,
    /// The process output; stderr has smtplib's debug transcript.
    pub output: ToolOutput,
}

impl PyResult {
    /// Panics with the transcript unless the message was accepted with no refused recipient.
    pub fn assert_ok(&self) -> &Self {
        assert!(
            self.ok && self.refused.is_empty(),
            "python smtplib send failed: {:?} {:?} refused={:?}\n{}",
            self.code,
            self.error,
            self.refused,
            self.output
        );
        self
    }

    /// Queue id from `250 2.0.0 Ok: queued as ID`.
    pub fn queue_id(&self) -> Option<String> {
        queue_id_from(&self.data_reply)
    }
}

/// Sends one message with Python's `smtplib` (tests/e2e/scripts/smtp_send.py).
pub async fn python_send(addr: SocketAddr, send: &PySend) -> PyResult {
    use base64_lite::encode;
    let args = serde_json::json!({
        "host": addr.ip().to_string(),
        "port": addr.port(),
        "from": send.from,
        "rcpts": send.rcpts,
        "message_b64": encode(&send.message),
        "mail_options": send.mail_options,
        "ehlo": send.ehlo.clone().unwrap_or_else(|| "client.test".into()),
        "source_ip": send.source_ip,
        "starttls": send.starttls,
        "implicit_tls": send.implicit_tls,
    });
    let output = python_script("smtp_send.py", &[], Some(args.to_string().as_bytes())).await;
    let v: Value = output
        .stdout
        .lines()
        .rev()
        .find_map(|l| serde_json::from_str(l).ok())
        .unwrap_or_else(|| panic!("smtp_send.py printed no JSON result:\n{output}"));
    let s = |k: &str| v.get(k).and_then(Value::as_str).unwrap_or("").to_string();
    let refused = v
        .get("refused")
        .and_then(Value::as_object)
        .map(|m| {
            m.iter()
                .map(|(k, r)| {
                    let code = r.get(0).and_then(Value::as_u64).unwrap_or(0) as u16;
                    let text = r.get(1).and_then(Value::as_str).unwrap_or("").to_string();
                    (k.clone(), (code, text))
                })
                .collect()
        })
        .unwrap_or_default();
    PyResult {
        ok: v.get("ok").and_then(Value::as_bool).unwrap_or(false),
        data_reply: s("data_reply"),
        mail_reply: s("mail_reply"),
        refused,
        error: v.get("error").and_then(Value::as_str).map(str::to_string),
        code: v.get("code").and_then(Value::as_u64).map(|c| c as u16),
        output,
    }
}

/// `swaks --server IP --port PORT ARGS...` (30 s limit). Add `--from`, `--to`, `--header`,
/// `--body`, `--data` as needed; see `man swaks`.
pub async fn swaks(addr: SocketAddr, args: &[&str]) -> ToolOutput {
    let mut cmd = Command::new("swaks");
    cmd.arg("--server")
        .arg(addr.ip().to_string())
        .arg("--port")
        .arg(addr.port().to_string())
        .arg("--timeout")
        .arg("20")
        .args(args);
    run(cmd, None, Duration::from_secs(30)).await
}

/// Path of a Postfix tool (`smtp-source`, `smtp-sink`): on PATH or in /usr/sbin.
fn postfix_tool(name: &str) -> String {
    for dir in std::env::var("PATH").unwrap_or_default().split(':') {
        let p = format!("{dir}/{name}");
        if std::path::Path::new(&p).exists() {
            return p;
        }
    }
    format!("/usr/sbin/{name}")
}

/// Postfix `smtp-source`: `messages` messages over `sessions` parallel sessions from `from` to
/// `to` (120 s limit). Each message is about `size` bytes of body.
pub async fn smtp_source(
    addr: SocketAddr,
    messages: usize,
    sessions: usize,
    from: &str,
    to: &str,
    size: usize,
) -> ToolOutput {
    let mut cmd = Command::new(postfix_tool("smtp-source"));
    cmd.arg("-c")
        .arg("-m")
        .arg(messages.to_string())
        .arg("-s")
        .arg(sessions.to_string())
        .arg("-l")
        .arg(size.to_string())
        .arg("-f")
        .arg(from)
        .arg("-t")
        .arg(to)
        .arg("-M")
        .arg("client.test")
        .arg(format!("{}:{}", addr.ip(), addr.port()));
    run(cmd, None, Duration::from_secs(120)).await
}

/// Queue id from a reply such as `250 2.0.0 Ok: queued as ABC123` (also inside a transcript).
pub fn queue_id_from(text: &str) -> Option<String> {
    let i = text.find("queued as ")?;
    let id: String = text[i + 10..]
        .chars()
        .take_while(|c| !c.is_whitespace())
        .collect();
    (!id.is_empty()).then_some(id)
}

/// A tiny base64 encoder (no new dependency for one script argument).
/// The SMTP `AUTH PLAIN` argument for `user` and `pass` (RFC 4616).
pub fn auth_plain(user: &str, pass: &str) -> String {
    base64_lite::encode(format!("\0{user}\0{pass}").as_bytes())
}

pub mod base64_lite {
    const T: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";

    pub fn encode(data: &[u8]) -> String {
        let mut out = String::with_capacity(data.len().div_ceil(3) * 4);
        for chunk in data.chunks(3) {
            let b = [
                chunk[0],
                chunk.get(1).copied().unwrap_or(0),
                chunk.get(2).copied().unwrap_or(0),
            ];
            let n = (u32::from(b[0]) << 16) | (u32::from(b[1]) << 8) | u32::from(b[2]);
            out.push(T[(n >> 18) as usize & 63] as char);
            out.push(T[(n >> 12) as usize & 63] as char);
            out.push(if chunk.len() > 1 {
                T[(n >> 6) as usize & 63] as char
            } else {
                '='
            });
            out.push(if chunk.len() > 2 {
                T[n as usize & 63] as char
            } else {
                '='
            });
        }
        out
    }
}

/// Anything the client can read and write: plain TCP or TLS over it.
trait Io: AsyncRead + AsyncWrite + Unpin + Send {}
impl<T: AsyncRead + AsyncWrite + Unpin + Send> Io for T {}

/// One SMTP reply: code and text lines (without the `NNN-`/`NNN ` prefix).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reply {
    pub code: u16,
    /// Each line in full, as received (e.g. `250-PIPELINING`, `550 5.7.1 relay denied`).
    pub lines: Vec<String>,
}

impl Reply {
    /// The reply as one string, lines joined with `\n`.
    pub fn text(&self) -> String {
        self.lines.join("\n")
    }

    /// Whether the last line starts with `prefix` (e.g. `"550 5.7.1"`).
    pub fn starts_with(&self, prefix: &str) -> bool {
        self.lines.last().is_some_and(|l| l.starts_with(prefix))
    }

    /// EHLO keywords (upper case) of a 250 EHLO reply, without the greeting line.
    pub fn extensions(&self) -> Vec<String> {
        self.lines
            .iter()
            .skip(1)
            .map(|l| l.get(4..).unwrap_or("").to_ascii_uppercase())
            .collect()
    }
}

/// A raw-socket SMTP client that records the exchange (`C:`/`S:` lines) and puts it in every
/// panic message. Every read has a time limit (default 30 s).
pub struct SmtpClient {
    io: Option<BufReader<Box<dyn Io>>>,
    peer: SocketAddr,
    transcript: String,
    timeout: Duration,
}

impl SmtpClient {
    /// Connects to `addr` (greeting not read yet: call `expect("220")`).
    pub async fn connect(addr: SocketAddr) -> SmtpClient {
        let s = TcpStream::connect(addr)
            .await
            .unwrap_or_else(|e| panic!("connect to {addr}: {e}"));
        Self::from_stream(Box::new(s), addr)
    }

    /// Connects from a chosen local address (e.g. 127.0.0.5, outside `relay_from`).
    pub async fn connect_from(local: IpAddr, addr: SocketAddr) -> SmtpClient {
        let sock = if addr.is_ipv4() {
            TcpSocket::new_v4()
        } else {
            TcpSocket::new_v6()
        }
        .expect("tcp socket");
        sock.bind(SocketAddr::new(local, 0))
            .unwrap_or_else(|e| panic!("bind client to {local}: {e}"));
        let s = sock
            .connect(addr)
            .await
            .unwrap_or_else(|e| panic!("connect to {addr} from {local}: {e}"));
        Self::from_stream(Box::new(s), addr)
    }

    /// Connects with implicit TLS (RFC 8314), accepting any certificate.
    pub async fn connect_tls(addr: SocketAddr) -> SmtpClient {
        let s = TcpStream::connect(addr)
            .await
            .unwrap_or_else(|e| panic!("connect to {addr}: {e}"));
        let tls = tokio_rustls::TlsConnector::from(super::tls_client_config())
            .connect(server_name(), s)
            .await
            .unwrap_or_else(|e| panic!("TLS handshake with {addr}: {e}"));
        let mut c = Self::from_stream(Box::new(tls), addr);
        c.transcript.push_str("-- TLS established (implicit)\n");
        c
    }

    fn from_stream(io: Box<dyn Io>, peer: SocketAddr) -> SmtpClient {
        SmtpClient {
            io: Some(BufReader::new(io)),
            peer,
            transcript: format!("-- connected to {peer}\n"),
            timeout: Duration::from_secs(30),
        }
    }

    /// Changes the time limit of each read.
    pub fn set_timeout(&mut self, t: Duration) {
        self.timeout = t;
    }

    /// The exchange so far.
    pub fn transcript(&self) -> &str {
        &self.transcript
    }

    fn io(&mut self) -> &mut BufReader<Box<dyn Io>> {
        self.io.as_mut().expect("connection in use")
    }

    fn fail(&self, what: &str) -> ! {
        panic!(
            "{what}\n--- SMTP exchange with {} ---\n{}",
            self.peer, self.transcript
        )
    }

    /// Writes raw bytes (no CRLF added). Write errors are returned, not panicked: a server may
    /// legitimately close on garbage.
    pub async fn send_raw(&mut self, bytes: &[u8]) -> std::io::Result<()> {
        let shown = String::from_utf8_lossy(&bytes[..bytes.len().min(300)]).into_owned();
        let more = if bytes.len() > 300 {
            format!(" ...({} bytes)", bytes.len())
        } else {
            String::new()
        };
        self.transcript
            .push_str(&format!("C: {}{more}\n", shown.escape_debug()));
        let w = self.io().get_mut();
        w.write_all(bytes).await?;
        w.flush().await
    }

    /// Sends `line` + CRLF.
    pub async fn send_line(&mut self, line: &str) {
        let mut b = line.as_bytes().to_vec();
        b.extend_from_slice(b"\r\n");
        if let Err(e) = self.send_raw(&b).await {
            self.fail(&format!("writing {line:?}: {e}"));
        }
    }

    /// Reads one (possibly multi-line) reply. `Ok(None)` when the server closed the connection
    /// before a reply started; `Err` on timeout or I/O error.
    pub async fn read_reply(&mut self) -> Result<Option<Reply>, String> {
        let timeout = self.timeout;
        let mut lines = Vec::new();
        loop {
            let mut buf = Vec::new();
            let read = tokio::time::timeout(
                timeout,
                (&mut *self.io())
                    .take(64 * 1024)
                    .read_until(b'\n', &mut buf),
            )
            .await;
            let n = match read {
                Err(_) => return Err(format!("no reply within {timeout:?}")),
                Ok(Err(e)) => {
                    if lines.is_empty() && is_reset(&e) {
                        self.transcript.push_str("S: <connection reset>\n");
                        return Ok(None);
                    }
                    return Err(format!("read error: {e}"));
                }
                Ok(Ok(n)) => n,
            };
            if n == 0 {
                if lines.is_empty() {
                    self.transcript.push_str("S: <connection closed>\n");
                    return Ok(None);
                }
                return Err("connection closed in the middle of a reply".into());
            }
            let line = String::from_utf8_lossy(&buf)
                .trim_end_matches(['\r', '\n'])
                .to_string();
            self.transcript.push_str(&format!("S: {line}\n"));
            let code: Option<u16> = line.get(..3).and_then(|c| c.parse().ok());
            let Some(code) = code else {
                return Err(format!("malformed reply line {line:?}"));
            };
            let last = line.as_bytes().get(3) != Some(&b'-');
            lines.push(line);
            if last {
                return Ok(Some(Reply { code, lines }));
            }
        }
    }

    /// Reads a reply and panics (with the exchange) unless its last line starts with `prefix`
    /// (e.g. `"220"`, `"550 5.7.1"`). Returns the reply.
    pub async fn expect(&mut self, prefix: &str) -> Reply {
        match self.read_reply().await {
            Ok(Some(r)) if r.starts_with(prefix) => r,
            Ok(Some(r)) => self.fail(&format!("expected {prefix:?}, got {:?}", r.text())),
            Ok(None) => self.fail(&format!(
                "expected {prefix:?}, server closed the connection"
            )),
            Err(e) => self.fail(&format!("expected {prefix:?}: {e}")),
        }
    }

    /// Sends `line` and expects a reply starting with `prefix`.
    pub async fn cmd(&mut self, line: &str, prefix: &str) -> Reply {
        self.send_line(line).await;
        self.expect(prefix).await
    }

    /// Reads the greeting and says EHLO; returns the EHLO reply.
    pub async fn hello(&mut self, name: &str) -> Reply {
        self.expect("220").await;
        self.cmd(&format!("EHLO {name}"), "250").await
    }

    /// Sends `DATA`, expects 354, sends `message` dot-stuffed with the final `.`, and expects
    /// `prefix`. Returns the final reply.
    pub async fn data(&mut self, message: &[u8], prefix: &str) -> Reply {
        self.cmd("DATA", "354").await;
        let mut out = Vec::with_capacity(message.len() + 16);
        let mut at_line_start = true;
        for &b in message {
            if at_line_start && b == b'.' {
                out.push(b'.');
            }
            out.push(b);
            at_line_start = b == b'\n';
        }
        if !out.ends_with(b"\r\n") {
            out.extend_from_slice(b"\r\n");
        }
        out.extend_from_slice(b".\r\n");
        if let Err(e) = self.send_raw(&out).await {
            self.fail(&format!("writing message body: {e}"));
        }
        self.expect(prefix).await
    }

    /// A whole transaction on a connection that already said EHLO: MAIL, RCPTs (all must be
    /// accepted), DATA; returns the queue id from `250 ... queued as ID`.
    pub async fn send(&mut self, from: &str, rcpts: &[&str], message: &[u8]) -> String {
        self.cmd(&format!("MAIL FROM:<{from}>"), "250").await;
        for r in rcpts {
            self.cmd(&format!("RCPT TO:<{r}>"), "250").await;
        }
        let reply = self.data(message, "250").await;
        match queue_id_from(&reply.text()) {
            Some(id) => id,
            None => self.fail("250 reply without 'queued as ID'"),
        }
    }

    /// Greeting, EHLO, one transaction, QUIT: a whole session. Returns the queue id.
    pub async fn send_message(&mut self, from: &str, rcpts: &[&str], message: &[u8]) -> String {
        self.hello("client.test").await;
        let id = self.send(from, rcpts, message).await;
        self.quit().await;
        id
    }

    /// Sends QUIT and expects 221.
    pub async fn quit(&mut self) {
        self.cmd("QUIT", "221").await;
    }

    /// STARTTLS (expects 220), then the TLS handshake; EHLO must be said again afterwards.
    pub async fn starttls(&mut self) {
        self.cmd("STARTTLS", "220").await;
        let io = self.io.take().expect("connection in use");
        if !io.buffer().is_empty() {
            self.fail("server sent data after its 220 to STARTTLS (RFC 3207 §5 injection)");
        }
        let plain = io.into_inner();
        match tokio_rustls::TlsConnector::from(super::tls_client_config())
            .connect(server_name(), plain)
            .await
        {
            Ok(tls) => {
                self.io = Some(BufReader::new(Box::new(tls)));
                self.transcript.push_str("-- TLS established\n");
            }
            Err(e) => self.fail(&format!("TLS handshake after STARTTLS: {e}")),
        }
    }

    /// Takes the plain connection, e.g. to write TLS garbage after `220` to STARTTLS.
    pub async fn starttls_then_raw(&mut self, garbage: &[u8]) -> std::io::Result<()> {
        self.cmd("STARTTLS", "220").await;
        self.transcript
            .push_str("-- (client sends non-TLS bytes instead of a handshake)\n");
        self.send_raw(garbage).await
    }

    /// Waits until the server closes the connection (reading and recording whatever it sends
    /// meanwhile); panics if it stays open past the time limit.
    pub async fn expect_closed(&mut self) {
        let timeout = self.timeout;
        let mut buf = vec![0u8; 4096];
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            match tokio::time::timeout_at(deadline, self.io().read(&mut buf)).await {
                Err(_) => self.fail(&format!("connection still open after {timeout:?}")),
                Ok(Ok(0)) => {
                    self.transcript.push_str("S: <connection closed>\n");
                    return;
                }
                Ok(Err(_)) => {
                    self.transcript.push_str("S: <connection reset>\n");
                    return;
                }
                Ok(Ok(n)) => {
                    let s = String::from_utf8_lossy(&buf[..n]).into_owned();
                    self.transcript
                        .push_str(&format!("S: {}\n", s.escape_debug()));
                }
            }
        }
    }

    /// Drops the connection without QUIT.
    pub fn disconnect(mut self) {
        self.io.take();
    }
}

fn is_reset(e: &std::io::Error) -> bool {
    matches!(
        e.kind(),
        std::io::ErrorKind::ConnectionReset
            | std::io::ErrorKind::ConnectionAborted
            | std::io::ErrorKind::BrokenPipe
            | std::io::ErrorKind::UnexpectedEof
    )
}

fn server_name() -> rustls::pki_types::ServerName<'static> {
    rustls::pki_types::ServerName::try_from("gannet.test").expect("valid server name")
}
