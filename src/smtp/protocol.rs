//! One inbound ESMTP session as a sans-I/O state machine: bytes from the client go in, reply
//! bytes and [`Action`]s come out. The socket loop (`session.rs`) only moves bytes and performs
//! the actions (TLS handshake, password check, hand-off to the acceptor); everything SMTP —
//! command parsing (smtp-proto), sequencing, extensions, relay control, limits, reply codes,
//! DATA / BDAT framing and the `Received:` line — is decided here, so it is tested by tables.
//!
//! Owns per-session state only: HELO name, TLS and AUTH status, the current transaction, the
//! error count, and three reusable buffers (partial command line, message content, pending
//! replies). Replies are appended to one output buffer and written by the caller when the
//! input is drained, so a pipelined group gets one write. Limits hold inside: a command line
//! never buffers past `max_line_length`, message content never past `max_message_size` (plus
//! one read), recipients never past `max_recipients`.
//!
//! Never does I/O, never sleeps, never looks at the clock except for the `Received:` date.

use std::borrow::Cow;
use std::net::IpAddr;
use std::sync::Arc;

use ipnet::IpNet;
use smtp_proto::{Error as ParseError, MailFrom, RcptTo, Request};

use super::auth::{self, Credentials, SaslError};
use super::budget::{Held, InflightBudget};
use super::data::{self, DataDecoder};
use crate::config::{Config, ListenerConfig};
use crate::message::address;
use crate::message::{Accepted, Envelope, Origin, Rejection, Submission};
use crate::metrics::Metrics;

/// A body buffer that grew past this is shrunk back after the message, so one large message
/// does not pin memory for the rest of a long session.
const KEEP_BODY_CAPACITY: usize = 1024 * 1024;

/// The listener settings a session needs; built once per listener and shared.
pub struct ProtocolConfig {
    /// Our name: greeting, EHLO reply, `Received: ... by`.
    pub hostname: String,
    /// Listener name (`[[listener]] name`): `Origin.listener` and metric labels.
    pub listener: String,
    pub max_message_size: usize,
    pub max_recipients: usize,
    /// Longest command or SASL line, CRLF included.
    pub max_line_length: usize,
    pub max_errors: usize,
    pub require_auth: bool,
    pub relay_from: Vec<IpNet>,
    /// STARTTLS can be offered (a certificate is loaded and the listener is not implicit TLS).
    pub starttls: bool,
    /// AUTH PLAIN/LOGIN can be offered once the session is under TLS (SMTP users exist).
    pub auth: bool,
    /// Where `RCPT TO:<postmaster>` goes (`postmaster` key; RFC 5321 §4.5.1).
    pub postmaster: String,
    /// `role = "bounces"`: only addresses this accepts are taken (from anyone, no relay right
    /// needed); others get 550 5.1.1. None: the relay rules apply.
    pub rcpt_filter: Option<RcptFilter>,
    /// Asked about each recipient that passed relay control, before `250`: a refusal is
    /// answered as it is (the suppression list's `550 5.7.1`). None: nothing more is checked.
    pub rcpt_check: Option<RcptCheck>,
    /// The listener's budget of message bytes in flight (`max_inflight_bytes`); None:
    /// unlimited.
    pub budget: Option<Arc<InflightBudget>>,
    metrics: Metrics,
}

/// A recipient about to be accepted (see [`ProtocolConfig::rcpt_check`]).
#[derive(Debug, Clone, Copy)]
pub struct RcptQuery<'a> {
    pub listener: &'a str,
    /// Envelope sender (empty for the null sender).
    pub mail_from: &'a str,
    pub rcpt: &'a str,
    pub auth_user: Option<&'a str>,
}

/// A per-recipient check at RCPT: `Some` refuses the recipient with that reply. Runs inside
/// the session's state machine, so it must be quick and must not block (an in-memory lookup).
pub type RcptCheck = Arc<dyn Fn(&RcptQuery<'_>) -> Option<Rejection> + Send + Sync>;

/// Which recipients a receive-only listener accepts (see [`ProtocolConfig::rcpt_filter`]).
pub type RcptFilter = Arc<dyn Fn(&str) -> bool + Send + Sync>;

impl ProtocolConfig {
    pub fn new(
        config: &Config,
        listener: &ListenerConfig,
        starttls: bool,
        auth: bool,
        metrics: Metrics,
    ) -> ProtocolConfig {
        ProtocolConfig {
            hostname: config.hostname.clone(),
            listener: listener.name.clone(),
            max_message_size: listener.max_message_size,
            max_recipients: listener.max_recipients,
            max_line_length: listener.max_line_length,
            max_errors: listener.max_errors,
            require_auth: listener.require_auth,
            relay_from: listener.relay_from.clone(),
            starttls,
            auth,
            postmaster: config.postmaster_address(),
            rcpt_filter: None,
            rcpt_check: None,
            budget: (listener.max_inflight_bytes > 0).then(|| {
                let gauge = metrics
                    .smtp_inflight_bytes
                    .with_label_values(&[listener.name.as_str()]);
                InflightBudget::new(listener.max_inflight_bytes, Some(gauge))
            }),
            metrics,
        }
    }

    fn count_rejected(&self, code: u16) {
        let code = code.to_string();
        self.metrics
            .rejected
            .with_label_values(&[self.listener.as_str(), code.as_str()])
            .inc();
    }
}

/// What the socket loop must do next.
#[derive(Debug)]
pub enum Action {
    /// All input is consumed: write the pending output (if any), then read more bytes.
    Read,
    /// `220 Ready to start TLS` is pending: write it, discard any unread input (RFC 3207 §4.2:
    /// nothing pipelined after STARTTLS may be acted on), run the handshake, then call
    /// [`Protocol::tls_established`].
    StartTls,
    /// Check these credentials (slow), then call [`Protocol::auth_result`].
    Authenticate(Credentials),
    /// A message is complete: hand it to the acceptor, then call [`Protocol::submitted`].
    /// Do not feed more input until then (replies stay in order).
    Submit(Box<Submission>),
    /// Write the pending output and close the connection.
    Close,
}

/// The transaction between MAIL and the end of the message.
struct Txn {
    mail_from: String,
    rcpts: Vec<String>,
    /// RCPT commands seen, accepted or not (DATA with none accepted says why).
    rcpt_attempts: usize,
    smtputf8: bool,
    /// A BDAT chunk has been accepted: the message is being sent with CHUNKING.
    bdat: bool,
    /// A BDAT chunk was refused for size: the rest of the chunks are read and refused too.
    bdat_oversize: bool,
}

/// How a BDAT chunk that is not being kept is answered once its bytes have been read.
#[derive(Debug, Clone, Copy)]
enum ChunkRefusal {
    /// Sequence error (no MAIL / no RCPT / after DATA): counts against `max_errors`.
    Sequence(u16, &'static str, &'static str),
    /// Message too large (552 5.3.4).
    Size,
    /// The listener's bytes-in-flight budget is spent (452 4.3.1); the transaction ends.
    Budget,
}

enum State {
    /// Waiting for a command line.
    Command,
    /// Discarding the rest of an over-long line; `500 5.5.2` once its LF arrives.
    SkipLine,
    /// Reading DATA content.
    Data {
        decoder: DataDecoder,
        oversize: bool,
        /// The listener's bytes-in-flight budget could not cover the content: it is
        /// discarded as it arrives and the message is refused with 452 4.3.1.
        over_budget: bool,
    },
    /// Reading `left` more bytes of a BDAT chunk.
    Bdat {
        left: usize,
        size: usize,
        last: bool,
        refusal: Option<ChunkRefusal>,
    },
    /// AUTH PLAIN sent `334`, waiting for the response line.
    AuthPlain,
    /// AUTH LOGIN asked for the user name.
    AuthLoginUser,
    /// AUTH LOGIN asked for the password.
    AuthLoginPass {
        user: String,
    },
    /// Waiting for the socket loop: TLS handshake, password check, acceptor.
    WaitTls,
    WaitAuth {
        user: String,
    },
    WaitSubmit,
    /// Nothing more is read; the connection is to be closed.
    Closed,
}

enum LineRead<'a> {
    /// No complete line yet (any partial line is buffered); input is exhausted.
    Partial,
    /// A complete line, borrowed from the input.
    Input(&'a [u8]),
    /// A complete line, in `Protocol::line`.
    Buffered,
    /// A complete line longer than `max_line_length` was consumed.
    TooLong,
}

/// One SMTP session's protocol state. See the module documentation.
pub struct Protocol {
    cfg: Arc<ProtocolConfig>,
    client_ip: IpAddr,
    relay_ip: bool,
    session_id: String,
    txn_seq: u32,
    tls: bool,
    helo: Option<String>,
    esmtp: bool,
    auth_user: Option<String>,
    txn: Option<Txn>,
    state: State,
    errors: usize,
    line: Vec<u8>,
    body: Vec<u8>,
    /// This session's share of the listener's bytes-in-flight budget: covers `body` while it
    /// grows and the submission until the acceptor answers.
    held: Held,
    out: Vec<u8>,
}

/// `IPv4-mapped` IPv6 addresses (from a dual-stack socket) are treated as the IPv4 address.
pub fn canonical_ip(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(ip, IpAddr::V4),
        v4 => v4,
    }
}

impl Protocol {
    /// Start a session; the `220` greeting is pending in the output. `tls` is true on an
    /// implicit-TLS listener (the handshake already happened).
    pub fn new(cfg: Arc<ProtocolConfig>, client_ip: IpAddr, tls: bool) -> Protocol {
        let client_ip = canonical_ip(client_ip);
        let relay_ip = cfg.relay_from.iter().any(|net| net.contains(&client_ip));
        let cfg_budget = cfg.budget.clone();
        let mut p = Protocol {
            cfg,
            client_ip,
            relay_ip,
            session_id: format!("{:012x}", rand::random::<u64>() & 0xffff_ffff_ffff),
            txn_seq: 0,
            tls,
            helo: None,
            esmtp: false,
            auth_user: None,
            txn: None,
            state: State::Command,
            errors: 0,
            line: Vec::new(),
            body: Vec::new(),
            held: Held::new(cfg_budget),
            out: Vec::with_capacity(512),
        };
        let greeting = format!("{} ESMTP Gannet", p.cfg.hostname);
        p.reply_plain(220, &greeting);
        p
    }

    /// Identifies the session in logs and in `Received: ... id`.
    pub fn session_id(&self) -> &str {
        &self.session_id
    }

    /// Replies not yet written.
    pub fn output(&self) -> &[u8] {
        &self.out
    }

    /// Call after writing [`Protocol::output`].
    pub fn clear_output(&mut self) {
        self.out.clear();
    }

    /// True while message content is being read (DATA or a BDAT chunk of a transaction that
    /// can take it): the data timeout applies, and a shutdown waits (a bounded time) for the
    /// message to end. A chunk refused for sequence is only being skipped: not a message.
    pub fn in_body(&self) -> bool {
        match &self.state {
            State::Data { .. } => true,
            State::Bdat { refusal, .. } => !matches!(refusal, Some(ChunkRefusal::Sequence(..))),
            _ => false,
        }
    }

    /// Capacity of the partial-line buffer (tests check it stays bounded).
    #[cfg(test)]
    pub(crate) fn buffered_line_capacity(&self) -> usize {
        self.line.capacity()
    }

    pub fn is_closed(&self) -> bool {
        matches!(self.state, State::Closed)
    }

    /// The server is shutting down: say so and end the session.
    pub fn shutting_down(&mut self) {
        self.reply(421, "4.3.2", "Service shutting down, try again later");
        self.state = State::Closed;
    }

    /// The client was silent for too long: say so and end the session.
    pub fn timed_out(&mut self) {
        self.reply(421, "4.4.2", "Timeout exceeded, closing connection");
        self.state = State::Closed;
    }

    /// Consume bytes from `input` until the socket loop has to do something. Returns
    /// [`Action::Read`] only when `input` is empty.
    pub fn advance(&mut self, input: &mut &[u8]) -> Action {
        loop {
            match &mut self.state {
                State::Closed => return Action::Close,
                State::WaitTls | State::WaitAuth { .. } | State::WaitSubmit => {
                    debug_assert!(false, "advance() called while an action is outstanding");
                    return Action::Close;
                }
                State::SkipLine => match memchr::memchr(b'\n', input) {
                    None => {
                        *input = &[];
                        return Action::Read;
                    }
                    Some(p) => {
                        *input = &input[p + 1..];
                        self.line_too_long();
                    }
                },
                State::Data {
                    decoder,
                    oversize,
                    over_budget,
                } => {
                    let done = decoder.feed(input, &mut self.body);
                    if self.body.len() > self.cfg.max_message_size {
                        *oversize = true;
                    } else if !*oversize && !*over_budget && !self.held.grow_to(self.body.len()) {
                        *over_budget = true;
                        self.held.release();
                    }
                    if (*oversize || *over_budget) && self.body.len() > 2 {
                        // Keep only the last two bytes: the decoder looks at the last one.
                        let n = self.body.len();
                        self.body.drain(..n - 2);
                    }
                    if !done {
                        return Action::Read;
                    }
                    let (oversize, over_budget) = (*oversize, *over_budget);
                    self.state = State::Command;
                    if over_budget && !oversize {
                        self.refuse_over_budget();
                        continue;
                    }
                    if let Some(action) = self.finish_message(oversize, false) {
                        return action;
                    }
                }
                State::Bdat {
                    left,
                    size,
                    last,
                    refusal,
                } => {
                    let n = (*left).min(input.len());
                    if refusal.is_none() {
                        self.body.extend_from_slice(&input[..n]);
                        if !self.held.grow_to(self.body.len()) {
                            *refusal = Some(ChunkRefusal::Budget);
                            self.held.release();
                            self.body.clear();
                        }
                    }
                    *input = &input[n..];
                    *left -= n;
                    if *left > 0 {
                        return Action::Read;
                    }
                    let (size, last, refusal) = (*size, *last, *refusal);
                    self.state = State::Command;
                    if let Some(action) = self.chunk_done(size, last, refusal) {
                        return action;
                    }
                }
                State::Command
                | State::AuthPlain
                | State::AuthLoginUser
                | State::AuthLoginPass { .. } => match self.take_line(input) {
                    LineRead::Partial => return Action::Read,
                    LineRead::TooLong => self.line_too_long(),
                    LineRead::Input(line) => {
                        if let Some(action) = self.handle_line(line) {
                            return action;
                        }
                    }
                    LineRead::Buffered => {
                        let line = std::mem::take(&mut self.line);
                        let action = self.handle_line(&line);
                        self.line = line;
                        self.line.clear();
                        if let Some(action) = action {
                            return action;
                        }
                    }
                },
            }
        }
    }

    /// The TLS handshake after [`Action::StartTls`] succeeded. The session starts over
    /// (RFC 3207 §4.2): the client must send EHLO again.
    pub fn tls_established(&mut self) {
        self.tls = true;
        self.helo = None;
        self.esmtp = false;
        self.auth_user = None;
        self.reset_txn();
        self.state = State::Command;
    }

    /// The result of the check requested by [`Action::Authenticate`].
    pub fn auth_result(&mut self, ok: bool) {
        let State::WaitAuth { user } = std::mem::replace(&mut self.state, State::Command) else {
            debug_assert!(false, "auth_result() without Action::Authenticate");
            return;
        };
        if ok {
            self.auth_user = Some(user);
            self.reply(235, "2.7.0", "Authentication successful");
        } else {
            self.error(535, "5.7.8", "Authentication credentials invalid");
        }
    }

    /// The credentials of [`Action::Authenticate`] were not checked because the client's
    /// network or the user name is locked out after too many failures (`auth_guard`):
    /// `454 4.7.0` (RFC 4954 §6, temporary authentication failure).
    pub fn auth_locked(&mut self) {
        let State::WaitAuth { .. } = std::mem::replace(&mut self.state, State::Command) else {
            debug_assert!(false, "auth_locked() without Action::Authenticate");
            return;
        };
        self.error(
            454,
            "4.7.0",
            "Too many failed authentication attempts; try again later",
        );
    }

    /// The acceptor's answer for the message handed on with [`Action::Submit`].
    pub fn submitted(&mut self, result: Result<Accepted, Rejection>) {
        debug_assert!(matches!(self.state, State::WaitSubmit));
        self.state = State::Command;
        // Durable (or refused): the content no longer counts as in flight.
        self.held.release();
        match result {
            Ok(accepted) => {
                let text = format!("Ok: queued as {}", one_line(&accepted.queue_id));
                self.reply(250, "2.0.0", &text);
            }
            Err(rejection) => {
                let code = if (400..600).contains(&rejection.code) {
                    rejection.code
                } else {
                    451
                };
                self.cfg.count_rejected(code);
                let class = if code >= 500 { '5' } else { '4' };
                let enhanced = if valid_enhanced(&rejection.enhanced, class) {
                    rejection.enhanced.clone()
                } else {
                    format!("{class}.0.0")
                };
                self.reply(code, &enhanced, &one_line(&rejection.message));
                if code == 421 {
                    // 421 means the server is closing the channel (RFC 5321 §3.8).
                    self.state = State::Closed;
                }
            }
        }
    }

    // ---- lines ------------------------------------------------------------------------------

    fn take_line<'a>(&mut self, input: &mut &'a [u8]) -> LineRead<'a> {
        let max = self.cfg.max_line_length;
        match memchr::memchr(b'\n', input) {
            Some(p) => {
                let (line, rest) = input.split_at(p + 1);
                *input = rest;
                if self.line.len() + line.len() > max {
                    self.line.clear();
                    LineRead::TooLong
                } else if self.line.is_empty() {
                    LineRead::Input(line)
                } else {
                    self.line.extend_from_slice(line);
                    LineRead::Buffered
                }
            }
            None => {
                if self.line.len() + input.len() > max {
                    self.line.clear();
                    self.state = State::SkipLine;
                } else {
                    self.line.extend_from_slice(input);
                }
                *input = &[];
                LineRead::Partial
            }
        }
    }

    fn line_too_long(&mut self) {
        self.state = State::Command;
        self.error(500, "5.5.2", "Line too long");
    }

    fn handle_line(&mut self, line: &[u8]) -> Option<Action> {
        match std::mem::replace(&mut self.state, State::Command) {
            State::Command => self.command(line),
            State::AuthPlain => self.sasl_plain(&sasl_text(line)),
            State::AuthLoginUser => {
                let text = sasl_text(line);
                if text == "*" {
                    return self.sasl_cancelled();
                }
                match auth::decode_login_step(&text) {
                    Ok(user) => {
                        self.reply_plain(334, "UGFzc3dvcmQ6");
                        self.state = State::AuthLoginPass { user };
                        None
                    }
                    Err(e) => self.sasl_error(e),
                }
            }
            State::AuthLoginPass { user } => {
                let text = sasl_text(line);
                if text == "*" {
                    return self.sasl_cancelled();
                }
                match auth::decode_login_step(&text) {
                    Ok(password) => self.authenticate(Credentials { user, password }),
                    Err(e) => self.sasl_error(e),
                }
            }
            other => {
                self.state = other;
                None
            }
        }
    }

    // ---- commands ---------------------------------------------------------------------------

    fn command(&mut self, line: &[u8]) -> Option<Action> {
        let request = match Request::parse(&mut line.iter()) {
            Ok(r) => r,
            Err(e) => {
                self.parse_error(e);
                return None;
            }
        };
        match request {
            Request::Ehlo { host } => self.hello(host, true),
            Request::Helo { host } => self.hello(host, false),
            Request::Mail { from } => self.mail(from),
            Request::Rcpt { to } => {
                // smtp-proto returns "" for both `<>` and `<postmaster>`: look at the line.
                let postmaster = to.address.is_empty() && names_postmaster(line);
                self.rcpt(to, postmaster)
            }
            Request::Data => self.data(),
            Request::Bdat {
                chunk_size,
                is_last,
            } => self.bdat(chunk_size, is_last),
            Request::Auth {
                mechanism,
                initial_response,
            } => return self.auth(mechanism, &initial_response),
            Request::StartTls => return self.starttls(),
            Request::Rset => {
                self.reset_txn();
                self.reply(250, "2.0.0", "Ok");
            }
            Request::Noop { .. } => self.reply(250, "2.0.0", "Ok"),
            Request::Vrfy { .. } => self.reply(
                252,
                "2.5.0",
                "Cannot VRFY user, but will accept message and attempt delivery",
            ),
            Request::Help { .. } => self.reply(214, "2.0.0", "See RFC 5321"),
            Request::Quit => {
                self.reply(221, "2.0.0", "Bye");
                self.state = State::Closed;
                return Some(Action::Close);
            }
            Request::Lhlo { .. } => self.error(500, "5.5.1", "LHLO is LMTP; use EHLO"),
            Request::Expn { .. }
            | Request::Etrn { .. }
            | Request::Atrn { .. }
            | Request::Burl { .. } => self.error(502, "5.5.1", "Command not implemented"),
        }
        None
    }

    fn parse_error(&mut self, e: ParseError) {
        match e {
            ParseError::UnknownCommand => self.error(500, "5.5.1", "Unknown command"),
            ParseError::InvalidSenderAddress => {
                self.error(501, "5.1.7", "Bad sender address syntax")
            }
            ParseError::InvalidRecipientAddress => {
                self.error(501, "5.1.3", "Bad recipient address syntax")
            }
            ParseError::SyntaxError { syntax } => {
                self.error(501, "5.5.4", &format!("Syntax: {syntax}"))
            }
            ParseError::InvalidParameter { param } => {
                self.error(501, "5.5.4", &format!("Invalid {param} parameter"))
            }
            ParseError::UnsupportedParameter { param } => {
                let param: String = param
                    .chars()
                    .filter(|c| c.is_ascii_graphic())
                    .take(32)
                    .collect();
                self.error(555, "5.5.4", &format!("Unsupported parameter {param}"))
            }
            ParseError::NeedsMoreData { .. }
            | ParseError::ResponseTooLong
            | ParseError::InvalidResponse { .. } => self.error(501, "5.5.4", "Syntax error"),
        }
    }

    fn hello(&mut self, host: Cow<'_, str>, esmtp: bool) {
        self.reset_txn();
        self.helo = Some(host.into_owned());
        self.esmtp = esmtp;
        if !esmtp {
            let text = self.cfg.hostname.clone();
            self.reply_plain(250, &text);
            return;
        }
        let mut lines: Vec<Cow<'_, str>> = vec![
            self.cfg.hostname.clone().into(),
            "PIPELINING".into(),
            format!("SIZE {}", self.cfg.max_message_size).into(),
            "8BITMIME".into(),
            "SMTPUTF8".into(),
            "ENHANCEDSTATUSCODES".into(),
            "CHUNKING".into(),
        ];
        if self.cfg.starttls && !self.tls {
            lines.push("STARTTLS".into());
        }
        if self.cfg.auth && self.tls {
            lines.push("AUTH PLAIN LOGIN".into());
        }
        let last = lines.len() - 1;
        for (i, text) in lines.iter().enumerate() {
            self.out.extend_from_slice(b"250");
            self.out.push(if i == last { b' ' } else { b'-' });
            self.out.extend_from_slice(text.as_bytes());
            self.out.extend_from_slice(b"\r\n");
        }
    }

    fn mail(&mut self, from: MailFrom<Cow<'_, str>>) {
        if self.helo.is_none() {
            return self.error(503, "5.5.1", "Send HELO/EHLO first");
        }
        if self.txn.is_some() {
            return self.error(503, "5.5.1", "Nested MAIL command");
        }
        if self.cfg.require_auth && self.auth_user.is_none() {
            self.cfg.count_rejected(530);
            return self.error(530, "5.7.0", "Authentication required");
        }
        let allowed_flags =
            smtp_proto::MAIL_BODY_7BIT | smtp_proto::MAIL_BODY_8BITMIME | smtp_proto::MAIL_SMTPUTF8;
        let unsupported = from.flags & !allowed_flags != 0
            || from.trans_id.is_some()
            || from.by != 0
            || from.env_id.is_some()
            || from.solicit.is_some()
            || from.mtrk.is_some()
            || from.hold_for != 0
            || from.hold_until != 0
            || from.mt_priority != 0
            || (!self.esmtp && (from.flags != 0 || from.size != 0));
        if unsupported {
            return self.error(555, "5.5.4", "Unsupported MAIL parameter");
        }
        if from.size > self.cfg.max_message_size {
            self.cfg.count_rejected(552);
            return self.reply(
                552,
                "5.3.4",
                "Message size exceeds fixed maximum message size",
            );
        }
        let smtputf8 = from.flags & smtp_proto::MAIL_SMTPUTF8 != 0;
        let address = from.address;
        if address.contains('\u{FFFD}') {
            return self.error(501, "5.1.7", "Bad sender address syntax");
        }
        if !smtputf8 && !address.is_ascii() {
            return self.error(553, "5.6.7", "Non-ASCII sender address needs SMTPUTF8");
        }
        // Re-quote a quoted local part smtp-proto unquoted; refuse `a@` and other broken paths.
        let mail_from = if address.is_empty() {
            String::new()
        } else {
            match address::from_unquoted(&address) {
                Ok(a) => a,
                Err(e) => {
                    let text = format!("Bad sender address syntax: {}", one_line(&e.to_string()));
                    return self.error(501, "5.1.7", &text);
                }
            }
        };
        self.reset_body();
        self.txn = Some(Txn {
            mail_from,
            rcpts: Vec::new(),
            rcpt_attempts: 0,
            smtputf8,
            bdat: false,
            bdat_oversize: false,
        });
        self.reply(250, "2.1.0", "Ok");
    }

    fn rcpt(&mut self, to: RcptTo<Cow<'_, str>>, postmaster: bool) {
        let relay_allowed = self.relay_ip || self.auth_user.is_some();
        let (smtputf8, accepted) = match self.txn.as_mut() {
            None => return self.error(503, "5.5.1", "Need MAIL command"),
            Some(txn) if txn.bdat => {
                return self.error(503, "5.5.1", "RCPT not allowed after BDAT");
            }
            Some(txn) => {
                txn.rcpt_attempts += 1;
                (txn.smtputf8, txn.rcpts.len())
            }
        };
        if to.flags != 0 || to.orcpt.is_some() || to.rrvs != 0 {
            return self.error(555, "5.5.4", "Unsupported RCPT parameter");
        }
        if postmaster {
            // RFC 5321 §4.5.1: mail to <postmaster> is accepted from anyone (no relay right
            // needed) and goes to the configured postmaster address.
            if accepted >= self.cfg.max_recipients {
                return self.reply(452, "4.5.3", "Too many recipients");
            }
            let address = self.cfg.postmaster.clone();
            if let Some(txn) = self.txn.as_mut() {
                txn.rcpts.push(address);
            }
            return self.reply(250, "2.1.5", "Ok");
        }
        let address = to.address;
        if address.is_empty() || address.contains('\u{FFFD}') {
            return self.error(501, "5.1.3", "Bad recipient address syntax");
        }
        if !smtputf8 && !address.is_ascii() {
            return self.error(553, "5.6.7", "Non-ASCII recipient address needs SMTPUTF8");
        }
        let address = match address::from_unquoted(&address) {
            Ok(a) => a,
            Err(e) => {
                let text = format!("Bad recipient address syntax: {}", one_line(&e.to_string()));
                return self.error(501, "5.1.3", &text);
            }
        };
        if let Some(accepts) = &self.cfg.rcpt_filter {
            if !accepts(&address) {
                self.cfg.count_rejected(550);
                return self.error(550, "5.1.1", "No such user here");
            }
        } else if !relay_allowed {
            self.cfg.count_rejected(550);
            return self.error(550, "5.7.1", "Relay access denied");
        }
        if accepted >= self.cfg.max_recipients {
            return self.reply(452, "4.5.3", "Too many recipients");
        }
        if let Some(check) = &self.cfg.rcpt_check {
            let refusal = check(&RcptQuery {
                listener: &self.cfg.listener,
                mail_from: self.txn.as_ref().map_or("", |t| t.mail_from.as_str()),
                rcpt: &address,
                auth_user: self.auth_user.as_deref(),
            });
            if let Some(r) = refusal {
                // Not a client error (the address is fine, we will not mail it): no error count.
                let code = if (400..600).contains(&r.code) {
                    r.code
                } else {
                    550
                };
                let class = if code >= 500 { '5' } else { '4' };
                let enhanced = if valid_enhanced(&r.enhanced, class) {
                    r.enhanced.clone()
                } else {
                    format!("{class}.0.0")
                };
                self.cfg.count_rejected(code);
                return self.reply(code, &enhanced, &one_line(&r.message));
            }
        }
        if let Some(txn) = self.txn.as_mut() {
            txn.rcpts.push(address);
        }
        self.reply(250, "2.1.5", "Ok");
    }

    /// Why this transaction cannot take message content yet, if it cannot.
    fn content_refusal(&self) -> Option<(u16, &'static str, &'static str)> {
        match &self.txn {
            None => Some((503, "5.5.1", "Need MAIL command")),
            Some(t) if t.rcpts.is_empty() && t.rcpt_attempts > 0 => {
                Some((554, "5.5.1", "No valid recipients"))
            }
            Some(t) if t.rcpts.is_empty() => Some((503, "5.5.1", "Need RCPT command")),
            _ => None,
        }
    }

    fn data(&mut self) {
        if let Some((code, enhanced, text)) = self.content_refusal() {
            return self.error(code, enhanced, text);
        }
        if self.txn.as_ref().is_some_and(|t| t.bdat) {
            return self.error(503, "5.5.1", "DATA not allowed after BDAT");
        }
        self.body.clear();
        self.reply_plain(354, "End data with <CR><LF>.<CR><LF>");
        self.state = State::Data {
            decoder: DataDecoder::new(),
            oversize: false,
            over_budget: false,
        };
    }

    fn bdat(&mut self, size: usize, last: bool) {
        // The chunk's bytes follow the command whatever we answer (RFC 3030 §2): read them in
        // every case, so the session stays in step with the client (reading them as commands
        // would let a message body smuggle commands in), and keep them only when the
        // transaction can take them. A chunk refused for sequence (no MAIL, no RCPT) is only
        // skipped: the session counts as in the command state ([`Protocol::in_body`] is false),
        // so the command timeout and a shutdown apply while a client trickles its bytes.
        let refusal = if let Some((code, enhanced, text)) = self.content_refusal() {
            Some(ChunkRefusal::Sequence(code, enhanced, text))
        } else if let Some(txn) = self.txn.as_mut() {
            if !txn.bdat {
                txn.bdat = true;
                self.body.clear();
            }
            if txn.bdat_oversize || self.body.len().saturating_add(size) > self.cfg.max_message_size
            {
                txn.bdat_oversize = true;
                Some(ChunkRefusal::Size)
            } else {
                None
            }
        } else {
            None
        };
        self.state = State::Bdat {
            left: size,
            size,
            last,
            refusal,
        };
    }

    fn chunk_done(
        &mut self,
        size: usize,
        last: bool,
        refusal: Option<ChunkRefusal>,
    ) -> Option<Action> {
        match refusal {
            Some(ChunkRefusal::Sequence(code, enhanced, text)) => {
                self.error(code, enhanced, text);
                None
            }
            Some(ChunkRefusal::Size) => {
                if last {
                    self.cfg.count_rejected(552);
                    self.reset_txn();
                }
                self.reply(
                    552,
                    "5.3.4",
                    "Message size exceeds fixed maximum message size",
                );
                None
            }
            Some(ChunkRefusal::Budget) => {
                self.refuse_over_budget();
                None
            }
            None if last => self.finish_message(false, true),
            None => {
                self.reply(250, "2.0.0", &format!("{size} octets received"));
                None
            }
        }
    }

    /// The listener's bytes-in-flight budget could not hold this message: refuse it (RFC 5321
    /// §4.2.3 452 "insufficient system storage", RFC 3463 X.3.1) and end the transaction.
    fn refuse_over_budget(&mut self) {
        self.cfg.count_rejected(452);
        self.reset_txn();
        self.reply(
            452,
            "4.3.1",
            "Insufficient system storage: too much mail in flight on this listener, try again shortly",
        );
    }

    /// The message content is complete: refuse it for size, or hand it on.
    fn finish_message(&mut self, oversize: bool, bdat: bool) -> Option<Action> {
        let txn = self.txn.take()?;
        if oversize {
            self.cfg.count_rejected(552);
            self.reset_body();
            self.held.release();
            self.reply(
                552,
                "5.3.4",
                "Message size exceeds fixed maximum message size",
            );
            return None;
        }
        self.txn_seq += 1;
        let received = self.received_line(txn.smtputf8);
        let mut body = Vec::with_capacity(received.len() + self.body.len() + 2);
        body.extend_from_slice(received.as_bytes());
        data::append_normalised(&self.body, &mut body);
        if bdat && !self.body.is_empty() && !body.ends_with(b"\r\n") {
            body.extend_from_slice(b"\r\n");
        }
        self.reset_body();
        self.state = State::WaitSubmit;
        Some(Action::Submit(Box::new(Submission {
            envelope: Envelope {
                mail_from: txn.mail_from,
                rcpts: txn.rcpts,
            },
            body,
            origin: Origin {
                listener: self.cfg.listener.clone(),
                client_ip: self.client_ip,
                helo: self.helo.clone().unwrap_or_default(),
                auth_user: self.auth_user.clone(),
                api_token: None,
            },
            class: None,
            tenant: None,
            campaign: None,
        })))
    }

    /// `Received:` trace field (RFC 5321 §4.4, protocol names from RFC 3848 and RFC 6531).
    fn received_line(&self, smtputf8: bool) -> String {
        let base = if smtputf8 {
            "UTF8SMTP"
        } else if self.esmtp {
            "ESMTP"
        } else {
            "SMTP"
        };
        let mut with = base.to_string();
        if base != "SMTP" {
            if self.tls {
                with.push('S');
            }
            if self.auth_user.is_some() {
                with.push('A');
            }
        }
        let literal = match self.client_ip {
            IpAddr::V4(v4) => format!("[{v4}]"),
            IpAddr::V6(v6) => format!("[IPv6:{v6}]"),
        };
        let helo: String = self
            .helo
            .as_deref()
            .unwrap_or("unknown")
            .chars()
            .map(|c| {
                if c.is_ascii_control() || c.is_whitespace() || "();\\\"".contains(c) {
                    '?'
                } else {
                    c
                }
            })
            .collect();
        format!(
            "Received: from {helo} ({literal})\r\n\tby {host} (Gannet) with {with} id {id}-{seq};\r\n\t{date}\r\n",
            host = self.cfg.hostname,
            id = self.session_id,
            seq = self.txn_seq,
            date = crate::message::headers::rfc2822_now(),
        )
    }

    fn starttls(&mut self) -> Option<Action> {
        if self.tls {
            self.error(503, "5.5.1", "Already running TLS");
            return None;
        }
        if !self.cfg.starttls {
            self.error(502, "5.5.1", "STARTTLS not available");
            return None;
        }
        self.reply(220, "2.0.0", "Ready to start TLS");
        self.state = State::WaitTls;
        Some(Action::StartTls)
    }

    fn auth(&mut self, mechanism: u64, initial: &str) -> Option<Action> {
        if !self.cfg.auth {
            self.error(502, "5.5.1", "AUTH not available");
            return None;
        }
        if !self.tls {
            self.error(
                538,
                "5.7.11",
                "Encryption required for requested authentication mechanism",
            );
            return None;
        }
        if !self.esmtp {
            self.error(503, "5.5.1", "Send EHLO first");
            return None;
        }
        if self.auth_user.is_some() {
            self.error(503, "5.5.1", "Already authenticated");
            return None;
        }
        if self.txn.is_some() {
            self.error(503, "5.5.1", "AUTH not allowed during a mail transaction");
            return None;
        }
        match mechanism {
            smtp_proto::AUTH_PLAIN if initial.is_empty() => {
                self.reply_plain(334, "");
                self.state = State::AuthPlain;
                None
            }
            smtp_proto::AUTH_PLAIN => self.sasl_plain(initial),
            smtp_proto::AUTH_LOGIN if initial.is_empty() => {
                self.reply_plain(334, "VXNlcm5hbWU6");
                self.state = State::AuthLoginUser;
                None
            }
            smtp_proto::AUTH_LOGIN => match auth::decode_login_step(initial) {
                Ok(user) => {
                    self.reply_plain(334, "UGFzc3dvcmQ6");
                    self.state = State::AuthLoginPass { user };
                    None
                }
                Err(e) => self.sasl_error(e),
            },
            _ => {
                self.error(504, "5.5.4", "Unrecognized authentication type");
                None
            }
        }
    }

    fn sasl_plain(&mut self, text: &str) -> Option<Action> {
        if text == "*" {
            return self.sasl_cancelled();
        }
        match auth::decode_plain(text) {
            Ok(credentials) => self.authenticate(credentials),
            Err(e) => self.sasl_error(e),
        }
    }

    fn authenticate(&mut self, credentials: Credentials) -> Option<Action> {
        self.state = State::WaitAuth {
            user: credentials.user.clone(),
        };
        Some(Action::Authenticate(credentials))
    }

    fn sasl_cancelled(&mut self) -> Option<Action> {
        self.error(501, "5.7.0", "Authentication cancelled");
        None
    }

    fn sasl_error(&mut self, e: SaslError) -> Option<Action> {
        match e {
            SaslError::Base64 => self.error(501, "5.5.2", "Invalid base64 data"),
            SaslError::Malformed => self.error(501, "5.5.2", "Malformed authentication data"),
            SaslError::ProxyAuth => self.error(535, "5.7.8", "Authentication credentials invalid"),
        }
        None
    }

    // ---- helpers ----------------------------------------------------------------------------

    fn reset_txn(&mut self) {
        self.txn = None;
        self.reset_body();
        self.held.release();
    }

    fn reset_body(&mut self) {
        self.body.clear();
        if self.body.capacity() > KEEP_BODY_CAPACITY {
            self.body = Vec::new();
        }
    }

    /// A reply that counts against `max_errors`. Past the limit the session ends with
    /// `421 4.7.0` in its place.
    fn error(&mut self, code: u16, enhanced: &str, text: &str) {
        self.errors += 1;
        if self.errors > self.cfg.max_errors {
            self.reply(421, "4.7.0", "Too many errors, closing connection");
            self.state = State::Closed;
        } else {
            self.reply(code, enhanced, text);
        }
    }

    fn reply(&mut self, code: u16, enhanced: &str, text: &str) {
        self.push_code(code, b' ');
        self.out.extend_from_slice(enhanced.as_bytes());
        self.out.push(b' ');
        self.out.extend_from_slice(text.as_bytes());
        self.out.extend_from_slice(b"\r\n");
    }

    /// A reply without an enhanced status code (greeting, 334 challenges, 354, HELO).
    fn reply_plain(&mut self, code: u16, text: &str) {
        self.push_code(code, b' ');
        self.out.extend_from_slice(text.as_bytes());
        self.out.extend_from_slice(b"\r\n");
    }

    fn push_code(&mut self, code: u16, sep: u8) {
        self.out.extend_from_slice(&[
            b'0' + (code / 100 % 10) as u8,
            b'0' + (code / 10 % 10) as u8,
            b'0' + (code % 10) as u8,
            sep,
        ]);
    }
}

/// A SASL response line without its line end, as text (invalid UTF-8 cannot be base64).
fn sasl_text(line: &[u8]) -> String {
    let line = line.strip_suffix(b"\n").unwrap_or(line);
    let line = line.strip_suffix(b"\r").unwrap_or(line);
    String::from_utf8_lossy(line).into_owned()
}

/// True when the path of a `RCPT TO:` line is `<postmaster>` (any case, RFC 5321 §4.5.1).
fn names_postmaster(line: &[u8]) -> bool {
    let Some(start) = memchr::memchr(b'<', line) else {
        return false;
    };
    let rest = &line[start + 1..];
    let Some(end) = memchr::memchr(b'>', rest) else {
        return false;
    };
    rest[..end].eq_ignore_ascii_case(b"postmaster")
}

/// Text safe to put in a reply line.
fn one_line(text: &str) -> String {
    text.chars()
        .map(|c| if c.is_control() { ' ' } else { c })
        .collect()
}

/// `class.subject.detail` with the class matching the reply code (RFC 3463).
fn valid_enhanced(enhanced: &str, class: char) -> bool {
    let mut parts = enhanced.split('.');
    let ok = |p: Option<&str>, max: usize| {
        p.is_some_and(|p| !p.is_empty() && p.len() <= max && p.bytes().all(|b| b.is_ascii_digit()))
    };
    enhanced.starts_with(class)
        && ok(parts.next(), 1)
        && ok(parts.next(), 3)
        && ok(parts.next(), 3)
        && parts.next().is_none()
}
