//! Programmable SMTP sink: the destination MX in end-to-end tests.
//!
//! Owns: one listening socket on `IP:PORT` (any 127.0.0.x), every transaction it saw
//! ([`Transaction`]: peer IP, EHLO name, envelope, DATA bytes, time, TLS), connection counters,
//! and the scripted replies ([`Rule`]) that tests change while it runs. Never relays anything:
//! accepted messages are only recorded.
//!
//! Speaks ESMTP with PIPELINING, 8BITMIME, SMTPUTF8, ENHANCEDSTATUSCODES and SIZE, plus STARTTLS
//! (self-signed certificate) and CHUNKING (BDAT) when switched on. Replies are 250 unless a
//! rule says otherwise; a `421` reply closes the connection, like a real server.
//!
//! Misbehaviours for fault tests (issue 21): a tarpit that never greets, replies trickled one
//! byte per write, a connection dropped mid-DATA, a broken STARTTLS, a held final reply
//! ([`Sink::set_delay`]); a rule's reply may be any length (a 10 MB line). [`Sink::behave`]
//! turns them all off.
//!
//! ```ignore
//! let (port, sinks) = bind_sinks(&["127.0.0.11", "127.0.0.12"]).await;
//! let mx1 = &sinks[0];
//! mx1.add_rule(Rule::new(Stage::Data, "451 4.7.1 try later").times(1)); // first DATA deferred
//! mx1.add_rule(Rule::new(Stage::Rcpt, "550 5.1.1 no such user").matching("nobody@example.test"));
//! let msgs = mx1.wait_for(1, Duration::from_secs(10)).await;
//! assert_eq!(msgs[0].rcpts, ["user@example.test"]);
//! ```

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use tokio::io::{AsyncBufReadExt, AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, BufReader};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;

use super::dns::IntoIp;

/// Longest command line the sink reads before answering 500 and closing.
const MAX_LINE: u64 = 64 * 1024;
/// Largest message the sink keeps (and advertises in SIZE).
const MAX_MESSAGE: usize = 64 * 1024 * 1024;
/// A connection idle this long is closed (keeps stuck tests from hanging forever).
const IDLE_TIMEOUT: Duration = Duration::from_secs(120);

/// The point in an SMTP session a [`Rule`] replaces the reply of.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stage {
    /// The greeting (`220`); a non-2xx greeting closes the connection.
    Connect,
    /// EHLO/HELO.
    Ehlo,
    /// MAIL FROM (`matching` compares the sender).
    Mail,
    /// RCPT TO (`matching` compares the recipient).
    Rcpt,
    /// The final reply after the message body (`matching` compares any recipient).
    Data,
}

/// A scripted reply: at `stage`, answer `reply` instead of the default, while the rule is live
/// (for `times` uses, until a deadline, or forever). The first live matching rule wins, in the
/// order they were added.
#[derive(Debug, Clone)]
pub struct Rule {
    pub stage: Stage,
    /// Full reply line, e.g. `"451 4.7.1 try later"`.
    pub reply: String,
    matching: Option<String>,
    remaining: Option<usize>,
    until: Option<Instant>,
}

impl Rule {
    /// A rule that answers `reply` at `stage` for every matching command, forever.
    pub fn new(stage: Stage, reply: &str) -> Rule {
        Rule {
            stage,
            reply: reply.to_string(),
            matching: None,
            remaining: None,
            until: None,
        }
    }

    /// Only for this address (case-insensitive): the sender at `Mail`, the recipient at `Rcpt`,
    /// any recipient of the transaction at `Data`.
    pub fn matching(mut self, address: &str) -> Rule {
        self.matching = Some(address.to_lowercase());
        self
    }

    /// Only the first `n` times it matches; afterwards the default reply (or a later rule).
    pub fn times(mut self, n: usize) -> Rule {
        self.remaining = Some(n);
        self
    }

    /// Only for the next `d` (from now).
    pub fn for_duration(mut self, d: Duration) -> Rule {
        self.until = Some(Instant::now() + d);
        self
    }

    fn live(&self, now: Instant) -> bool {
        self.remaining != Some(0) && self.until.is_none_or(|u| now < u)
    }
}

/// One MAIL transaction the sink saw (whether or not the message was accepted).
#[derive(Debug, Clone)]
pub struct Transaction {
    /// Connection number at this sink, from 1.
    pub conn_id: u64,
    /// Client address: `peer.ip()` is the source IP Gannet bound to.
    pub peer: SocketAddr,
    /// Sink address the client connected to.
    pub local: SocketAddr,
    /// EHLO/HELO argument.
    pub ehlo: String,
    /// Whether STARTTLS was done before this transaction.
    pub tls: bool,
    /// MAIL FROM address (without angle brackets; empty for `<>`).
    pub mail_from: String,
    /// MAIL FROM parameters (`SMTPUTF8`, `BODY=8BITMIME`, `SIZE=...`), as sent.
    pub mail_params: Vec<String>,
    /// Recipients the sink answered 2xx, in order.
    pub rcpts: Vec<String>,
    /// Recipients refused, with the reply given.
    pub rejected_rcpts: Vec<(String, String)>,
    /// The message (headers + body), dot-unstuffed, CRLF line ends as sent.
    pub data: Vec<u8>,
    /// Whether the body came with BDAT instead of DATA.
    pub bdat: bool,
    /// Final reply after the body.
    pub reply: String,
    /// Whether that reply was 2xx (the message is "delivered").
    pub accepted: bool,
    /// When the final reply was sent.
    pub at: SystemTime,
    /// Same instant, relative to the sink's start.
    pub elapsed: Duration,
}

impl Transaction {
    /// The header section (up to the first empty line), as text.
    pub fn header_block(&self) -> String {
        let end = find(&self.data, b"\r\n\r\n").map_or(self.data.len(), |i| i + 2);
        String::from_utf8_lossy(&self.data[..end]).into_owned()
    }

    /// Values of every header field named `name` (case-insensitive), unfolded, trimmed.
    pub fn headers(&self, name: &str) -> Vec<String> {
        let mut out = Vec::new();
        let mut current: Option<String> = None;
        for line in self.header_block().split("\r\n") {
            if line.starts_with([' ', '\t']) {
                if let Some(c) = current.as_mut() {
                    c.push(' ');
                    c.push_str(line.trim());
                }
                continue;
            }
            if let Some(c) = current.take() {
                out.push(c);
            }
            if let Some((n, v)) = line.split_once(':')
                && n.trim().eq_ignore_ascii_case(name)
            {
                current = Some(v.trim().to_string());
            }
        }
        if let Some(c) = current {
            out.push(c);
        }
        out
    }

    /// First value of header `name`, if present.
    pub fn header(&self, name: &str) -> Option<String> {
        self.headers(name).into_iter().next()
    }

    /// The body: bytes after the first empty line.
    pub fn body(&self) -> &[u8] {
        find(&self.data, b"\r\n\r\n").map_or(&[][..], |i| &self.data[i + 4..])
    }

    /// The whole message as (lossy) text.
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.data).into_owned()
    }
}

pub(crate) fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    hay.windows(needle.len()).position(|w| w == needle)
}

/// Mutable sink state behind one std `Mutex`: sections are short and never hold it across an
/// `.await`.
#[derive(Default)]
struct State {
    rules: Vec<Rule>,
    starttls: bool,
    /// STARTTLS is offered and answered 220, but the handshake then fails.
    tls_broken: bool,
    /// Misbehaviours (see [`Sink::set_tarpit`], [`Sink::set_trickle`],
    /// [`Sink::set_drop_mid_data`]).
    tarpit: bool,
    trickle: bool,
    drop_mid_data: bool,
    chunking: bool,
    delay: Duration,
    transactions: Vec<Transaction>,
    current: usize,
    max_concurrent: usize,
    opened: u64,
    /// Message bodies received whose final reply has not been sent yet (held by the delay).
    pending: usize,
    transcript: String,
}

struct Shared {
    state: Mutex<State>,
    /// Bumped after every recorded transaction or connection change; waiters watch it.
    changed: watch::Sender<u64>,
    started: Instant,
    next_conn: AtomicU64,
    name: String,
}

impl Shared {
    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn bump(&self) {
        self.changed.send_modify(|v| *v += 1);
    }

    fn note(&self, conn: u64, dir: &str, line: &str) {
        let mut st = self.lock();
        if st.transcript.len() < 256 * 1024 {
            let shown: String = line.chars().take(200).collect();
            let _ = writeln!(st.transcript, "[{conn}] {dir} {}", shown.trim_end());
        }
    }

    /// The reply a rule gives at `stage` for `addrs`, using up one of its `times`.
    fn rule_reply(&self, stage: Stage, addrs: &[&str]) -> Option<String> {
        let now = Instant::now();
        let mut st = self.lock();
        for rule in st.rules.iter_mut() {
            if rule.stage != stage || !rule.live(now) {
                continue;
            }
            if let Some(m) = &rule.matching
                && !addrs.iter().any(|a| a.eq_ignore_ascii_case(m))
            {
                continue;
            }
            if let Some(n) = rule.remaining.as_mut() {
                *n -= 1;
            }
            return Some(rule.reply.clone());
        }
        None
    }
}

/// A running SMTP sink. Stops accepting when dropped (open sessions finish on their own).
pub struct Sink {
    shared: Arc<Shared>,
    addr: SocketAddr,
    task: tokio::task::JoinHandle<()>,
}

impl Sink {
    /// Listens on `ip:port` (port 0 picks one). Fails if the address is taken.
    pub async fn start(ip: impl IntoIp, port: u16) -> std::io::Result<Sink> {
        let ip = ip.into_ip();
        let listener = TcpListener::bind((ip, port)).await?;
        let addr = listener.local_addr()?;
        let (changed, _) = watch::channel(0);
        let shared = Arc::new(Shared {
            state: Mutex::new(State::default()),
            changed,
            started: Instant::now(),
            next_conn: AtomicU64::new(1),
            name: format!("sink-{}.test", addr.ip()),
        });
        let s = shared.clone();
        let task = tokio::spawn(async move {
            loop {
                let Ok((stream, peer)) = listener.accept().await else {
                    continue;
                };
                // Replies go out at once (no Nagle delay): the sink must not be the bottleneck
                // of throughput tests.
                let _ = stream.set_nodelay(true);
                let s = s.clone();
                tokio::spawn(async move {
                    let conn = s.next_conn.fetch_add(1, Ordering::Relaxed);
                    {
                        let mut st = s.lock();
                        st.opened += 1;
                        st.current += 1;
                        st.max_concurrent = st.max_concurrent.max(st.current);
                    }
                    s.bump();
                    let local = stream.local_addr().unwrap_or(addr);
                    let result = session(&s, stream, peer, local, conn).await;
                    if let Err(e) = result {
                        s.note(conn, "!!", &format!("session ended: {e}"));
                    }
                    s.lock().current -= 1;
                    s.bump();
                });
            }
        });
        Ok(Sink { shared, addr, task })
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }
    pub fn ip(&self) -> IpAddr {
        self.addr.ip()
    }
    pub fn port(&self) -> u16 {
        self.addr.port()
    }

    /// Adds a scripted reply (see [`Rule`]); earlier rules take precedence.
    pub fn add_rule(&self, rule: Rule) -> &Self {
        self.shared.lock().rules.push(rule);
        self
    }

    /// Removes every rule: the sink accepts everything again.
    pub fn clear_rules(&self) -> &Self {
        self.shared.lock().rules.clear();
        self
    }

    /// Shorthand: the first `n` message bodies get `reply` (e.g. `"451 4.7.1 try later"`).
    pub fn defer_first(&self, n: usize, reply: &str) -> &Self {
        self.add_rule(Rule::new(Stage::Data, reply).times(n))
    }

    /// Shorthand: every RCPT for `address` gets `reply` (e.g. `"550 5.1.1 no such user"`).
    pub fn reject_rcpt(&self, address: &str, reply: &str) -> &Self {
        self.add_rule(Rule::new(Stage::Rcpt, reply).matching(address))
    }

    /// Offer STARTTLS (self-signed certificate for the sink's name) from now on.
    pub fn set_starttls(&self, on: bool) -> &Self {
        self.shared.lock().starttls = on;
        self
    }

    /// Offer STARTTLS but break every handshake (answer 220, then send bytes that are not TLS
    /// and close): a server whose TLS a client cannot use.
    pub fn set_tls_broken(&self, on: bool) -> &Self {
        {
            let mut st = self.shared.lock();
            st.tls_broken = on;
            if on {
                st.starttls = true;
            }
        }
        self
    }

    /// Tarpit: accept the TCP connection and never say anything (no greeting); the connection
    /// stays open until the client gives up (or the sink's idle timeout).
    pub fn set_tarpit(&self, on: bool) -> &Self {
        self.shared.lock().tarpit = on;
        self
    }

    /// Send every reply one byte per write (each flushed, with a short pause), so the client
    /// sees replies in as many reads as they have bytes.
    pub fn set_trickle(&self, on: bool) -> &Self {
        self.shared.lock().trickle = on;
        self
    }

    /// Close the connection in the middle of the message body: after `354` and the body's first
    /// line, without a reply (the transaction is recorded as not accepted).
    pub fn set_drop_mid_data(&self, on: bool) -> &Self {
        self.shared.lock().drop_mid_data = on;
        self
    }

    /// Every misbehaviour off (tarpit, trickle, drop mid-DATA, broken TLS, delay) and every rule
    /// removed: a well-behaved sink again.
    pub fn behave(&self) -> &Self {
        {
            let mut st = self.shared.lock();
            st.tarpit = false;
            st.trickle = false;
            st.drop_mid_data = false;
            st.tls_broken = false;
            st.delay = Duration::ZERO;
            st.rules.clear();
        }
        self.shared.bump();
        self
    }

    /// Offer CHUNKING (BDAT) from now on.
    pub fn set_chunking(&self, on: bool) -> &Self {
        self.shared.lock().chunking = on;
        self
    }

    /// Wait this long before the final reply to each message body (a slow site). Also applies
    /// to replies held right now: shortening the delay (e.g. to zero after killing the client)
    /// releases them at once, so their outcome is recorded without waiting out the old delay.
    pub fn set_delay(&self, d: Duration) -> &Self {
        self.shared.lock().delay = d;
        self.shared.bump();
        self
    }

    /// Every transaction (accepted or not), in the order the final reply was sent.
    pub fn transactions(&self) -> Vec<Transaction> {
        self.shared.lock().transactions.clone()
    }

    /// `f` over every transaction so far, without copying them (long runs hold tens of
    /// thousands).
    pub fn with_transactions<R>(&self, f: impl FnOnce(&[Transaction]) -> R) -> R {
        f(&self.shared.lock().transactions)
    }

    /// Messages the sink accepted (final reply 2xx).
    pub fn messages(&self) -> Vec<Transaction> {
        self.transactions()
            .into_iter()
            .filter(|t| t.accepted)
            .collect()
    }

    /// Recipients of accepted messages, one entry per delivery (duplicates show up twice).
    pub fn delivered_rcpts(&self) -> Vec<String> {
        self.messages().into_iter().flat_map(|t| t.rcpts).collect()
    }

    /// Connections accepted so far.
    pub fn connections_opened(&self) -> u64 {
        self.shared.lock().opened
    }

    /// Connections open right now.
    pub fn connections_open(&self) -> usize {
        self.shared.lock().current
    }

    /// Most connections that were open at the same time.
    pub fn max_concurrent(&self) -> usize {
        self.shared.lock().max_concurrent
    }

    /// Accepted messages per second since the sink started: index = second, value = count.
    pub fn per_second_counts(&self) -> Vec<usize> {
        let mut buckets: BTreeMap<u64, usize> = BTreeMap::new();
        for t in self.messages() {
            *buckets.entry(t.elapsed.as_secs()).or_default() += 1;
        }
        let last = buckets.keys().next_back().copied().unwrap_or(0);
        (0..=last)
            .map(|s| buckets.get(&s).copied().unwrap_or(0))
            .collect()
    }

    /// Message bodies received whose final reply is still held back by [`Sink::set_delay`]:
    /// deliveries in flight right now.
    pub fn pending(&self) -> usize {
        self.shared.lock().pending
    }

    /// Waits until at least `n` deliveries are in flight (body received, reply held by the
    /// delay); panics after `timeout`.
    pub async fn wait_pending(&self, n: usize, timeout: Duration) {
        let mut rx = self.shared.changed.subscribe();
        let deadline = tokio::time::Instant::now() + timeout;
        while self.pending() < n {
            if tokio::time::timeout_at(deadline, rx.changed())
                .await
                .is_err()
            {
                panic!(
                    "sink {}: {n} deliveries in flight not reached within {timeout:?}\n{}",
                    self.addr,
                    self.transcript()
                );
            }
        }
    }

    /// Commands and replies seen so far (for failure output), truncated per line.
    pub fn transcript(&self) -> String {
        self.shared.lock().transcript.clone()
    }

    /// Waits until `f` holds for the list of all transactions; `Err` with the transcript when
    /// `timeout` passes first.
    pub async fn wait_until(
        &self,
        timeout: Duration,
        mut f: impl FnMut(&[Transaction]) -> bool,
    ) -> Result<Vec<Transaction>, String> {
        let mut rx = self.shared.changed.subscribe();
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            {
                let st = self.shared.lock();
                if f(&st.transactions) {
                    return Ok(st.transactions.clone());
                }
            }
            match tokio::time::timeout_at(deadline, rx.changed()).await {
                Ok(Ok(())) => continue,
                _ => {
                    // One lock at a time: a guard held across `transcript()` would deadlock.
                    let seen = self.shared.lock().transactions.len();
                    return Err(format!(
                        "sink {}: condition not reached within {timeout:?}; {seen} transaction(s) so far\n--- sink transcript ---\n{}",
                        self.addr,
                        self.transcript()
                    ));
                }
            }
        }
    }

    /// Waits until at least `n` messages were accepted and returns them; panics (showing the
    /// sink transcript) after `timeout`.
    pub async fn wait_for(&self, n: usize, timeout: Duration) -> Vec<Transaction> {
        match self
            .wait_until(timeout, |ts| ts.iter().filter(|t| t.accepted).count() >= n)
            .await
        {
            Ok(ts) => ts.into_iter().filter(|t| t.accepted).collect(),
            Err(e) => panic!("waiting for {n} message(s): {e}"),
        }
    }

    /// Waits until at least `n` transactions ended (accepted or refused at DATA).
    pub async fn wait_for_attempts(&self, n: usize, timeout: Duration) -> Vec<Transaction> {
        match self.wait_until(timeout, |ts| ts.len() >= n).await {
            Ok(ts) => ts,
            Err(e) => panic!("waiting for {n} attempt(s): {e}"),
        }
    }
}

impl Drop for Sink {
    fn drop(&mut self) {
        self.task.abort();
        if std::thread::panicking() {
            let t = self.transcript();
            let tail: String = {
                let start = t.len().saturating_sub(8000);
                let start = (start..t.len())
                    .find(|i| t.is_char_boundary(*i))
                    .unwrap_or(0);
                t[start..].to_string()
            };
            eprintln!("--- sink {} transcript (tail) ---\n{tail}", self.addr);
        }
    }
}

/// Binds one sink on each of `ips`, all on the same free port (the `[delivery] port` Gannet
/// uses for every MX). Retries with another port when one of the addresses is taken.
pub async fn bind_sinks(ips: &[&str]) -> (u16, Vec<Sink>) {
    'outer: for _ in 0..50 {
        let port = super::free_port();
        let mut sinks = Vec::new();
        for ip in ips {
            match Sink::start(*ip, port).await {
                Ok(s) => sinks.push(s),
                Err(_) => continue 'outer,
            }
        }
        return (port, sinks);
    }
    panic!("no port was free on all of {ips:?} after 50 tries");
}

/// Anything the session can read and write: plain TCP or TLS over it.
trait Io: AsyncRead + AsyncWrite + Unpin + Send {}
impl<T: AsyncRead + AsyncWrite + Unpin + Send> Io for T {}

struct Conn {
    io: BufReader<Box<dyn Io>>,
    shared: Arc<Shared>,
    id: u64,
}

impl Conn {
    async fn reply(&mut self, text: &str) -> std::io::Result<()> {
        self.shared.note(self.id, "<-", text);
        // One write per reply: with the line end in a second write, Nagle's algorithm holds
        // it until the client's delayed ACK (~40 ms per reply on Linux).
        let mut line = Vec::with_capacity(text.len() + 2);
        line.extend_from_slice(text.as_bytes());
        line.extend_from_slice(b"\r\n");
        let trickle = self.shared.lock().trickle;
        let w = self.io.get_mut();
        if trickle {
            for b in &line {
                w.write_all(std::slice::from_ref(b)).await?;
                w.flush().await?;
                tokio::time::sleep(Duration::from_millis(1)).await;
            }
            return Ok(());
        }
        w.write_all(&line).await?;
        w.flush().await
    }

    /// One line, without CRLF; `None` at EOF. Errors on over-long lines and idle timeout.
    async fn line(&mut self) -> std::io::Result<Option<Vec<u8>>> {
        let mut buf = Vec::new();
        let n = tokio::time::timeout(
            IDLE_TIMEOUT,
            (&mut self.io).take(MAX_LINE).read_until(b'\n', &mut buf),
        )
        .await
        .map_err(|_| std::io::Error::new(std::io::ErrorKind::TimedOut, "idle timeout"))??;
        if n == 0 {
            return Ok(None);
        }
        if !buf.ends_with(b"\n") {
            if n as u64 >= MAX_LINE {
                self.reply("500 5.5.2 line too long").await?;
                return Err(std::io::Error::other("line too long"));
            }
            return Ok(None);
        }
        buf.pop();
        if buf.ends_with(b"\r") {
            buf.pop();
        }
        Ok(Some(buf))
    }
}

/// `<addr> PARAMS` after `FROM:`/`TO:` → (address, params). A `>` inside a quoted local part
/// (`<"x> y"@d>`) does not end the path (RFC 5321 §4.1.2 Quoted-string).
fn parse_path(arg: &str) -> Option<(String, Vec<String>)> {
    let arg = arg.trim_start();
    let rest = arg.strip_prefix('<')?;
    let (mut quoted, mut escaped) = (false, false);
    let end = rest.char_indices().find_map(|(i, c)| {
        match c {
            _ if escaped => escaped = false,
            '\\' if quoted => escaped = true,
            '"' => quoted = !quoted,
            '>' if !quoted => return Some(i),
            _ => {}
        }
        None
    })?;
    let addr = rest[..end].to_string();
    let params = rest[end + 1..]
        .split_whitespace()
        .map(str::to_string)
        .collect();
    Some((addr, params))
}

fn is_ok(reply: &str) -> bool {
    reply.starts_with('2')
}

async fn session(
    shared: &Arc<Shared>,
    stream: TcpStream,
    peer: SocketAddr,
    local: SocketAddr,
    id: u64,
) -> std::io::Result<()> {
    let boxed: Box<dyn Io> = Box::new(stream);
    let mut c = Conn {
        io: BufReader::new(boxed),
        shared: shared.clone(),
        id,
    };
    shared.note(id, "--", &format!("connect from {peer}"));
    if shared.lock().tarpit {
        // Never speak; wait for the client to give up.
        shared.note(
            id,
            "--",
            "tarpit: holding the connection without a greeting",
        );
        let mut sink = [0u8; 512];
        loop {
            match tokio::time::timeout(IDLE_TIMEOUT, c.io.read(&mut sink)).await {
                Ok(Ok(0)) | Ok(Err(_)) | Err(_) => break,
                Ok(Ok(_)) => {}
            }
        }
        shared.note(id, "--", "tarpit: client gone");
        return Ok(());
    }
    let greeting = shared
        .rule_reply(Stage::Connect, &[])
        .unwrap_or_else(|| format!("220 {} ESMTP test sink", shared.name));
    c.reply(&greeting).await?;
    if !is_ok(&greeting) {
        return Ok(());
    }
    let mut ehlo = String::new();
    let mut tls = false;
    let mut tx: Option<Transaction> = None;
    loop {
        let Some(raw) = c.line().await? else {
            shared.note(id, "--", "client closed");
            return Ok(());
        };
        let line = String::from_utf8_lossy(&raw).into_owned();
        shared.note(id, "->", &line);
        let (verb, arg) = match line.split_once(' ') {
            Some((v, a)) => (v.to_ascii_uppercase(), a.to_string()),
            None => (line.to_ascii_uppercase(), String::new()),
        };
        let reply: String = match verb.as_str() {
            "EHLO" | "HELO" => {
                tx = None;
                if let Some(r) = shared.rule_reply(Stage::Ehlo, &[]) {
                    r
                } else {
                    ehlo = arg.trim().to_string();
                    if verb == "HELO" {
                        format!("250 {}", shared.name)
                    } else {
                        let (starttls, chunking) = {
                            let st = shared.lock();
                            (st.starttls && !tls, st.chunking)
                        };
                        let mut lines = vec![
                            shared.name.clone(),
                            "PIPELINING".into(),
                            "8BITMIME".into(),
                            "SMTPUTF8".into(),
                            "ENHANCEDSTATUSCODES".into(),
                            format!("SIZE {MAX_MESSAGE}"),
                        ];
                        if starttls {
                            lines.push("STARTTLS".into());
                        }
                        if chunking {
                            lines.push("CHUNKING".into());
                        }
                        let n = lines.len();
                        lines
                            .iter()
                            .enumerate()
                            .map(|(i, l)| format!("250{}{l}", if i + 1 == n { ' ' } else { '-' }))
                            .collect::<Vec<_>>()
                            .join("\r\n")
                    }
                }
            }
            "STARTTLS" => {
                let offered = shared.lock().starttls && !tls;
                if !offered {
                    "502 5.5.1 STARTTLS not offered".into()
                } else {
                    c.reply("220 2.0.0 ready to start TLS").await?;
                    if shared.lock().tls_broken {
                        // Not a TLS ServerHello: the client's handshake fails (as with a
                        // server that only speaks a protocol version rustls refuses).
                        c.io.get_mut().write_all(b"this is not TLS\r\n").await?;
                        c.io.get_mut().flush().await?;
                        shared.note(id, "--", "TLS handshake broken on purpose; closing");
                        return Ok(());
                    }
                    // Anything the client pipelined after STARTTLS is discarded (RFC 3207 §5).
                    let plain =
                        std::mem::replace(&mut c.io, BufReader::new(Box::new(tokio::io::empty())))
                            .into_inner();
                    let acceptor = tokio_rustls::TlsAcceptor::from(super::tls_server_config());
                    let stream = acceptor.accept(plain).await?;
                    c.io = BufReader::new(Box::new(stream));
                    tls = true;
                    ehlo.clear();
                    tx = None;
                    shared.note(id, "--", "TLS established");
                    continue;
                }
            }
            "MAIL" => {
                let Some(rest) = strip_ci(&arg, "FROM:") else {
                    c.reply("501 5.5.4 syntax: MAIL FROM:<address>").await?;
                    continue;
                };
                match parse_path(rest) {
                    None => "501 5.1.7 bad sender address syntax".into(),
                    Some((from, params)) => {
                        let r = shared
                            .rule_reply(Stage::Mail, &[&from])
                            .unwrap_or_else(|| "250 2.1.0 sender ok".into());
                        if is_ok(&r) {
                            tx = Some(Transaction {
                                conn_id: id,
                                peer,
                                local,
                                ehlo: ehlo.clone(),
                                tls,
                                mail_from: from,
                                mail_params: params,
                                rcpts: Vec::new(),
                                rejected_rcpts: Vec::new(),
                                data: Vec::new(),
                                bdat: false,
                                reply: String::new(),
                                accepted: false,
                                at: SystemTime::now(),
                                elapsed: Duration::ZERO,
                            });
                        }
                        r
                    }
                }
            }
            "RCPT" => match (tx.as_mut(), strip_ci(&arg, "TO:").and_then(parse_path)) {
                (None, _) => "503 5.5.1 MAIL first".into(),
                (Some(_), None) => "501 5.1.3 bad recipient address syntax".into(),
                (Some(t), Some((to, _))) => {
                    let r = shared
                        .rule_reply(Stage::Rcpt, &[&to])
                        .unwrap_or_else(|| "250 2.1.5 recipient ok".into());
                    if is_ok(&r) {
                        t.rcpts.push(to);
                    } else {
                        t.rejected_rcpts.push((to, r.clone()));
                    }
                    r
                }
            },
            "DATA" => match tx.take() {
                None => "503 5.5.1 MAIL first".into(),
                Some(t) if t.rcpts.is_empty() => {
                    tx = Some(t);
                    "554 5.5.1 no valid recipients".into()
                }
                Some(mut t) => {
                    c.reply("354 end data with <CR><LF>.<CR><LF>").await?;
                    let mut data = Vec::new();
                    loop {
                        let mut l = Vec::new();
                        let n = c.io.read_until(b'\n', &mut l).await?;
                        if n == 0 {
                            shared.note(id, "--", "client closed during DATA");
                            return Ok(());
                        }
                        if l == b".\r\n" || l == b".\n" {
                            break;
                        }
                        if shared.lock().drop_mid_data {
                            shared.note(id, "--", "dropping the connection mid-DATA");
                            t.reply = "(connection dropped mid-DATA)".into();
                            t.at = SystemTime::now();
                            t.elapsed = shared.started.elapsed();
                            shared.lock().transactions.push(t);
                            shared.bump();
                            return Ok(());
                        }
                        let l = if l.starts_with(b".") { &l[1..] } else { &l[..] };
                        if data.len() + l.len() <= MAX_MESSAGE {
                            data.extend_from_slice(l);
                        }
                    }
                    shared.note(id, "->", &format!("<{} bytes of data>", data.len()));
                    t.data = data;
                    finish(shared, &mut c, t).await?
                }
            },
            "BDAT" => {
                let mut parts = arg.split_whitespace();
                let size: Option<usize> = parts.next().and_then(|s| s.parse().ok());
                let last = parts.next().is_some_and(|p| p.eq_ignore_ascii_case("LAST"));
                match (size, tx.as_mut()) {
                    (None, _) => "501 5.5.4 syntax: BDAT size [LAST]".into(),
                    (Some(size), t) => {
                        let mut chunk = vec![0u8; size.min(MAX_MESSAGE)];
                        c.io.read_exact(&mut chunk).await?;
                        match t {
                            None => "503 5.5.1 MAIL first".into(),
                            Some(t) if t.rcpts.is_empty() => "554 5.5.1 no valid recipients".into(),
                            Some(t) => {
                                t.data.extend_from_slice(&chunk);
                                t.bdat = true;
                                if last {
                                    let t = tx.take().expect("checked above");
                                    finish(shared, &mut c, t).await?
                                } else {
                                    format!("250 2.0.0 {size} bytes received")
                                }
                            }
                        }
                    }
                }
            }
            "RSET" => {
                tx = None;
                "250 2.0.0 ok".into()
            }
            "NOOP" => "250 2.0.0 ok".into(),
            "VRFY" => "252 2.5.0 cannot verify".into(),
            "QUIT" => {
                c.reply("221 2.0.0 bye").await?;
                return Ok(());
            }
            _ => "500 5.5.1 command not recognized".into(),
        };
        c.reply(&reply).await?;
        if reply.starts_with("421") {
            return Ok(());
        }
    }
}

/// Applies the delay and the DATA rule, records the transaction, returns the final reply.
async fn finish(shared: &Arc<Shared>, c: &mut Conn, mut t: Transaction) -> std::io::Result<String> {
    shared.lock().pending += 1;
    shared.bump();
    // Hold the reply for the current delay, re-read whenever it may have changed.
    let held_since = Instant::now();
    loop {
        let mut changed = shared.changed.subscribe();
        let left = shared.lock().delay.saturating_sub(held_since.elapsed());
        if left.is_zero() {
            break;
        }
        tokio::select! {
            _ = tokio::time::sleep(left) => {}
            _ = changed.changed() => {}
        }
    }
    // A client that went away while we held the reply (e.g. killed) never learns the outcome;
    // this sink then does not keep the message either (like an MTA that commits only as it
    // answers), so a sender that wrongly counted it as delivered is caught by a missing message.
    let gone = match tokio::time::timeout(Duration::from_millis(1), c.io.fill_buf()).await {
        Ok(Ok(buf)) => buf.is_empty(),
        Ok(Err(_)) => true,
        Err(_) => false, // nothing to read yet: still connected
    };
    let rcpts: Vec<&str> = t.rcpts.iter().map(String::as_str).collect();
    let reply = if gone {
        "(client disconnected before the reply; message discarded)".to_string()
    } else {
        shared.rule_reply(Stage::Data, &rcpts).unwrap_or_else(|| {
            format!(
                "250 2.0.0 Ok: queued as S{}.{}",
                c.id,
                shared.lock().transactions.len() + 1
            )
        })
    };
    t.accepted = is_ok(&reply);
    t.reply = reply.clone();
    t.at = SystemTime::now();
    t.elapsed = shared.started.elapsed();
    {
        let mut st = shared.lock();
        st.transactions.push(t);
        st.pending -= 1;
    }
    shared.bump();
    Ok(reply)
}

/// `arg` without a case-insensitive `prefix`.
fn strip_ci<'a>(arg: &'a str, prefix: &str) -> Option<&'a str> {
    match arg.get(..prefix.len()) {
        Some(head) if head.eq_ignore_ascii_case(prefix) => Some(&arg[prefix.len()..]),
        _ => None,
    }
}
