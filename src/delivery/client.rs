//! The SMTP client side of one outbound connection.
//!
//! Owns: a TCP connection bound to a pool source address, the greeting/EHLO/STARTTLS
//! exchange, and SMTP transactions with PIPELINING (MAIL, every RCPT and DATA in one write;
//! replies read back in order), dot-stuffing, and a timeout per phase.
//!
//! mail-send does the session set-up (greeting, EHLO, STARTTLS with its certificate-tolerant
//! connector: opportunistic TLS, like Postfix's `may` level). When STARTTLS is offered but fails
//! (an error reply, a handshake rustls refuses: old protocol version, no common cipher, a broken
//! peer), the same address is tried again in plaintext, as Postfix's `may` does, and the
//! connection records why it is not encrypted ([`Connection::tls_fallback`]); only with
//! `require_tls` does a TLS failure fail the connection. The transaction part is ours:
//! mail-send's `send()` is not pipelined, stops at the first refused recipient, reads with a
//! fresh buffer each time (dropping pipelined replies that arrive together) and resolves DNS
//! itself when binding a source address (CRATES.md). smtp-proto parses the replies.
//!
//! Never does: choose hosts, retry, or decide what an outcome means for the queue.

use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use mail_send::SmtpClient;
use smtp_proto::response::parser::ResponseReceiver;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::{TcpSocket, TcpStream};

use super::reply::Reply;
use crate::message::address;

/// Anything we can speak SMTP over (plain TCP or TLS).
pub trait Io: AsyncRead + AsyncWrite + Unpin + Send {}
impl<T: AsyncRead + AsyncWrite + Unpin + Send> Io for T {}

/// Timeouts and behaviour for outbound sessions.
#[derive(Debug, Clone)]
pub struct ClientOptions {
    pub connect_timeout: Duration,
    pub command_timeout: Duration,
    pub data_timeout: Duration,
    pub opportunistic_tls: bool,
    /// Policy: never send in plaintext. A host that does not offer STARTTLS, or whose STARTTLS
    /// fails, is a failed connection (deferred) instead of a plaintext fallback.
    pub require_tls: bool,
}

/// Why a connection or transaction failed as a whole (not a recipient's reply).
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error("connect to {host}[{addr}] from {source_ip} failed: {error}")]
    Connect {
        host: String,
        addr: SocketAddr,
        source_ip: IpAddr,
        error: std::io::Error,
    },
    #[error("{host}[{addr}] timed out after {after:?} waiting for the {phase} reply")]
    Timeout {
        host: String,
        addr: SocketAddr,
        phase: &'static str,
        after: Duration,
    },
    #[error("{host}[{addr}] refused the session at {phase}: {reply}")]
    Refused {
        host: String,
        addr: SocketAddr,
        phase: &'static str,
        reply: Reply,
    },
    #[error("TLS with {host}[{addr}] failed: {error}")]
    Tls {
        host: String,
        addr: SocketAddr,
        error: String,
    },
    #[error("{host}[{addr}] broke the protocol during {phase}: {error}")]
    Protocol {
        host: String,
        addr: SocketAddr,
        phase: &'static str,
        error: String,
    },
}

impl ClientError {
    /// The reply to record for recipients affected by this failure.
    pub fn as_reply(&self) -> Reply {
        match self {
            ClientError::Refused { reply, .. } if reply.is_permanent() => reply.clone(),
            ClientError::Refused { reply, .. } => reply.clone(),
            other => Reply::new(451, "4.4.1", other.to_string()),
        }
    }
}

/// Extensions the server announced that change how we send.
#[derive(Debug, Clone, Copy, Default)]
pub struct Capabilities {
    pub pipelining: bool,
    pub eight_bit: bool,
    pub smtputf8: bool,
    pub starttls: bool,
    /// SIZE limit, 0 when none announced.
    pub size: usize,
}

/// The replies of one transaction.
#[derive(Debug)]
pub struct TxnReplies {
    /// One final reply per recipient, in the order given.
    pub rcpts: Vec<Reply>,
}

/// An established outbound SMTP session.
pub struct Connection {
    io: Box<dyn Io>,
    parser: ResponseReceiver,
    rbuf: Vec<u8>,
    rpos: usize,
    wbuf: Vec<u8>,
    pub caps: Capabilities,
    pub host: String,
    pub addr: SocketAddr,
    pub source_ip: IpAddr,
    pub tls: bool,
    /// Why this session is in plaintext although the server offered STARTTLS (the TLS error
    /// that made us reconnect without it); None when encrypted or TLS was never offered.
    pub tls_fallback: Option<String>,
    /// TLS version and cipher suite negotiated by STARTTLS (e.g. `TLSv1.3`,
    /// `TLS13_AES_256_GCM_SHA384`); None in plaintext.
    tls_params: Option<(String, String)>,
    opts: ClientOptions,
    /// Set when the session is in an unknown state and must not be reused.
    pub broken: bool,
}

fn caps_of(ehlo: &smtp_proto::EhloResponse<String>) -> Capabilities {
    use smtp_proto::*;
    let has = |f: u32| ehlo.capabilities & f != 0;
    Capabilities {
        pipelining: has(EXT_PIPELINING),
        eight_bit: has(EXT_8BIT_MIME),
        smtputf8: has(EXT_SMTP_UTF8),
        starttls: has(EXT_START_TLS),
        size: if has(EXT_SIZE) { ehlo.size } else { 0 },
    }
}

async fn bind_connect(source_ip: IpAddr, addr: SocketAddr) -> std::io::Result<TcpStream> {
    let socket = if addr.is_ipv4() {
        TcpSocket::new_v4()?
    } else {
        TcpSocket::new_v6()?
    };
    if !source_ip.is_unspecified() {
        socket.bind(SocketAddr::new(source_ip, 0))?;
    }
    let stream = socket.connect(addr).await?;
    stream.set_nodelay(true)?;
    Ok(stream)
}

impl Connection {
    /// Connect from `source_ip` to `addr`, read the greeting, say EHLO (HELO as fallback), and
    /// upgrade with STARTTLS when offered and allowed. A failed STARTTLS is retried once on a
    /// fresh connection in plaintext unless `require_tls` (opportunistic TLS, RFC 3207 §4.1
    /// and Postfix's `may` level); the connection then carries the reason in `tls_fallback`.
    pub async fn open(
        source_ip: IpAddr,
        ehlo_name: &str,
        host: &str,
        addr: SocketAddr,
        opts: &ClientOptions,
        tls: &tokio_rustls::TlsConnector,
    ) -> Result<Connection, ClientError> {
        let try_tls = opts.opportunistic_tls || opts.require_tls;
        match Self::setup(source_ip, ehlo_name, host, addr, opts, tls, try_tls).await {
            Err(ClientError::Tls { error, .. }) if !opts.require_tls => {
                tracing::warn!(
                    target: "gannet::tls",
                    event = "tls_fallback",
                    host,
                    %addr,
                    error = %error,
                    "STARTTLS with {host}[{addr}] failed ({error}); retrying without TLS: this \
                     delivery will not be encrypted (set [delivery] require_tls = true to defer instead)"
                );
                let mut conn =
                    Self::setup(source_ip, ehlo_name, host, addr, opts, tls, false).await?;
                conn.tls_fallback = Some(error);
                Ok(conn)
            }
            other => other,
        }
    }

    async fn setup(
        source_ip: IpAddr,
        ehlo_name: &str,
        host: &str,
        addr: SocketAddr,
        opts: &ClientOptions,
        tls: &tokio_rustls::TlsConnector,
        try_tls: bool,
    ) -> Result<Connection, ClientError> {
        let timeout_err = |phase, after| ClientError::Timeout {
            host: host.to_string(),
            addr,
            phase,
            after,
        };
        let proto_err = |phase, e: mail_send::Error| match e {
            mail_send::Error::UnexpectedReply(r) => ClientError::Refused {
                host: host.to_string(),
                addr,
                phase,
                reply: Reply::from_proto(&r),
            },
            mail_send::Error::Timeout => ClientError::Timeout {
                host: host.to_string(),
                addr,
                phase,
                after: opts.command_timeout,
            },
            other => ClientError::Protocol {
                host: host.to_string(),
                addr,
                phase,
                error: other.to_string(),
            },
        };
        let stream = tokio::time::timeout(opts.connect_timeout, bind_connect(source_ip, addr))
            .await
            .map_err(|_| timeout_err("connect", opts.connect_timeout))?
            .map_err(|e| ClientError::Connect {
                host: host.to_string(),
                addr,
                source_ip,
                error: e,
            })?;
        let mut client = SmtpClient {
            stream,
            timeout: opts.command_timeout,
        };
        let greeting = tokio::time::timeout(opts.command_timeout, client.read())
            .await
            .map_err(|_| timeout_err("greeting", opts.command_timeout))?
            .map_err(|e| proto_err("greeting", e))?;
        if !(200..300).contains(&greeting.code) {
            return Err(ClientError::Refused {
                host: host.to_string(),
                addr,
                phase: "greeting",
                reply: Reply::from_proto(&greeting),
            });
        }
        let ehlo = client.ehlo(ehlo_name).await;
        let caps = match ehlo {
            Ok(r) => caps_of(&r),
            Err(mail_send::Error::UnexpectedReply(_)) => {
                // RFC 5321 §3.2: fall back to HELO when EHLO is not understood.
                let r = client
                    .cmd(format!("HELO {ehlo_name}\r\n"))
                    .await
                    .map_err(|e| proto_err("HELO", e))?;
                if !(200..300).contains(&r.code) {
                    return Err(ClientError::Refused {
                        host: host.to_string(),
                        addr,
                        phase: "HELO",
                        reply: Reply::from_proto(&r),
                    });
                }
                Capabilities::default()
            }
            Err(e) => return Err(proto_err("EHLO", e)),
        };
        if opts.require_tls && !(caps.starttls && try_tls) {
            return Err(ClientError::Tls {
                host: host.to_string(),
                addr,
                error: "the server does not offer STARTTLS and [delivery] require_tls is set"
                    .into(),
            });
        }
        if caps.starttls && try_tls {
            let name = host.trim_end_matches('.');
            let mut tls_client =
                client
                    .start_tls(tls, name)
                    .await
                    .map_err(|e| ClientError::Tls {
                        host: host.to_string(),
                        addr,
                        error: e.to_string(),
                    })?;
            let params = {
                let (_, session) = tls_client.stream.get_ref();
                let version = session
                    .protocol_version()
                    .and_then(|v| v.as_str())
                    .map(|v| v.replace('_', "."))
                    .unwrap_or_default();
                let cipher = session
                    .negotiated_cipher_suite()
                    .and_then(|c| c.suite().as_str())
                    .unwrap_or_default()
                    .to_string();
                (version, cipher)
            };
            let caps = caps_of(
                &tls_client
                    .ehlo(ehlo_name)
                    .await
                    .map_err(|e| proto_err("EHLO after STARTTLS", e))?,
            );
            let mut conn = Connection::new(
                Box::new(tls_client.stream),
                caps,
                host,
                addr,
                source_ip,
                true,
                opts,
            );
            conn.tls_params = Some(params);
            return Ok(conn);
        }
        Ok(Connection::new(
            Box::new(client.stream),
            caps,
            host,
            addr,
            source_ip,
            false,
            opts,
        ))
    }

    fn new(
        io: Box<dyn Io>,
        caps: Capabilities,
        host: &str,
        addr: SocketAddr,
        source_ip: IpAddr,
        tls: bool,
        opts: &ClientOptions,
    ) -> Connection {
        Connection {
            io,
            parser: ResponseReceiver::default(),
            rbuf: Vec::with_capacity(4096),
            rpos: 0,
            wbuf: Vec::with_capacity(8192),
            caps,
            host: host.to_string(),
            addr,
            source_ip,
            tls,
            tls_fallback: None,
            tls_params: None,
            opts: opts.clone(),
            broken: false,
        }
    }

    /// (TLS version, cipher suite) of the session, None in plaintext.
    pub fn tls_params(&self) -> Option<(&str, &str)> {
        self.tls_params
            .as_ref()
            .map(|(v, c)| (v.as_str(), c.as_str()))
    }

    fn err_timeout(&self, phase: &'static str, after: Duration) -> ClientError {
        ClientError::Timeout {
            host: self.host.clone(),
            addr: self.addr,
            phase,
            after,
        }
    }

    fn err_proto(&self, phase: &'static str, error: impl ToString) -> ClientError {
        ClientError::Protocol {
            host: self.host.clone(),
            addr: self.addr,
            phase,
            error: error.to_string(),
        }
    }

    async fn flush_wbuf(&mut self, phase: &'static str) -> Result<(), ClientError> {
        let after = self.opts.command_timeout;
        let res = tokio::time::timeout(after, async {
            self.io.write_all(&self.wbuf).await?;
            self.io.flush().await
        })
        .await;
        self.wbuf.clear();
        match res {
            Err(_) => Err(self.err_timeout(phase, after)),
            Ok(Err(e)) => Err(self.err_proto(phase, e)),
            Ok(Ok(())) => Ok(()),
        }
    }

    /// Read `n` replies, keeping bytes that arrive early for the next call.
    async fn read_replies(
        &mut self,
        n: usize,
        phase: &'static str,
        after: Duration,
    ) -> Result<Vec<Reply>, ClientError> {
        let mut out = Vec::with_capacity(n);
        let deadline = tokio::time::Instant::now() + after;
        while out.len() < n {
            while out.len() < n && self.rpos < self.rbuf.len() {
                let mut it = self.rbuf[self.rpos..].iter();
                let before = it.len();
                let res = self.parser.parse(&mut it);
                self.rpos += before - it.len();
                match res {
                    Ok(r) => {
                        let reply = Reply::from_proto(&r);
                        self.parser.reset();
                        if reply.code == 421 {
                            // RFC 5321 §3.8: 421 means the server is closing the channel; no
                            // further replies will come, and the connection is not reusable.
                            // The 421 answers one command; the commands after it get a reply
                            // of their own saying they were not answered. Copying the 421
                            // would give its text (say "mailbox full" about one recipient) to
                            // every later recipient, and with it the wrong bounce category.
                            self.broken = true;
                            let unanswered = unanswered_after(&reply);
                            out.push(reply);
                            while out.len() < n {
                                out.push(unanswered.clone());
                            }
                            return Ok(out);
                        }
                        out.push(reply);
                    }
                    Err(smtp_proto::Error::NeedsMoreData { .. }) => break,
                    Err(e) => {
                        self.broken = true;
                        return Err(self.err_proto(phase, format!("unparseable reply: {e:?}")));
                    }
                }
            }
            if out.len() == n {
                break;
            }
            if self.rpos == self.rbuf.len() {
                self.rbuf.clear();
                self.rpos = 0;
            }
            if self.rbuf.len() > 64 * 1024 {
                self.broken = true;
                return Err(self.err_proto(phase, "reply longer than 64 KiB"));
            }
            let mut chunk = [0u8; 4096];
            let read = tokio::time::timeout_at(deadline, self.io.read(&mut chunk)).await;
            match read {
                Err(_) => {
                    self.broken = true;
                    return Err(self.err_timeout(phase, after));
                }
                Ok(Err(e)) => {
                    self.broken = true;
                    return Err(self.err_proto(phase, e));
                }
                Ok(Ok(0)) => {
                    self.broken = true;
                    return Err(self.err_proto(phase, "connection closed by server"));
                }
                Ok(Ok(k)) => self.rbuf.extend_from_slice(&chunk[..k]),
            }
        }
        Ok(out)
    }

    /// Run one transaction: MAIL FROM, RCPT TO for each recipient, DATA and the body.
    /// Returns one final reply per recipient. An `Err` means the session failed as a whole
    /// (timeout, disconnect) and every recipient's fate is unknown: treat as deferred.
    ///
    /// Addresses are written in RFC 5321 form ([`address::to_wire`]): a local part that is not
    /// a dot-string goes out quoted, and an address that cannot be written safely is refused
    /// here (553) instead of being sent, so no address can close the path early and add an
    /// ESMTP parameter (`"x> NOTIFY=NEVER"@d`).
    pub async fn send(
        &mut self,
        mail_from: &str,
        rcpts: &[&str],
        body: &[u8],
    ) -> Result<TxnReplies, ClientError> {
        let mail_path = match address::to_wire(mail_from) {
            Ok(p) => p,
            Err(e) => {
                let r = Reply::new(
                    553,
                    "5.1.7",
                    format!("sender not sent to the next hop: {e}"),
                );
                return Ok(TxnReplies {
                    rcpts: vec![r; rcpts.len()],
                });
            }
        };
        let mut paths = Vec::with_capacity(rcpts.len());
        let mut refused = Vec::with_capacity(rcpts.len());
        for r in rcpts {
            match address::to_wire(r) {
                Ok(p) => {
                    paths.push(p);
                    refused.push(None);
                }
                Err(e) => refused.push(Some(Reply::new(
                    553,
                    "5.1.3",
                    format!("recipient not sent to the next hop: {e}"),
                ))),
            }
        }
        if refused.iter().all(Option::is_none) {
            let paths: Vec<&str> = paths.iter().map(|p| p.as_ref()).collect();
            return self.transact(&mail_path, &paths, body).await;
        }
        let sent = if paths.is_empty() {
            Vec::new()
        } else {
            let paths: Vec<&str> = paths.iter().map(|p| p.as_ref()).collect();
            self.transact(&mail_path, &paths, body).await?.rcpts
        };
        let mut sent = sent.into_iter();
        let rcpts = refused
            .into_iter()
            .map(|r| {
                r.or_else(|| sent.next()).unwrap_or_else(|| {
                    Reply::new(451, "4.3.0", "no reply recorded for this recipient")
                })
            })
            .collect();
        Ok(TxnReplies { rcpts })
    }

    /// [`Connection::send`] once every address is in its wire form.
    async fn transact(
        &mut self,
        mail_from: &str,
        rcpts: &[&str],
        body: &[u8],
    ) -> Result<TxnReplies, ClientError> {
        let utf8 = !mail_from.is_ascii() || rcpts.iter().any(|r| !r.is_ascii());
        if utf8 && !self.caps.smtputf8 {
            let r = Reply::new(
                553,
                "5.6.7",
                format!(
                    "{} does not support SMTPUTF8, needed for a non-ASCII address",
                    self.host
                ),
            );
            return Ok(TxnReplies {
                rcpts: vec![r; rcpts.len()],
            });
        }
        if self.caps.size > 0 && body.len() > self.caps.size {
            let r = Reply::new(
                552,
                "5.3.4",
                format!(
                    "message of {} bytes exceeds {}'s SIZE limit of {}",
                    body.len(),
                    self.host,
                    self.caps.size
                ),
            );
            return Ok(TxnReplies {
                rcpts: vec![r; rcpts.len()],
            });
        }
        let mut mail = format!("MAIL FROM:<{mail_from}>");
        if self.caps.size > 0 {
            mail.push_str(&format!(" SIZE={}", body.len()));
        }
        if self.caps.eight_bit && !body.is_ascii() {
            mail.push_str(" BODY=8BITMIME");
        }
        if utf8 {
            mail.push_str(" SMTPUTF8");
        }
        mail.push_str("\r\n");

        let cmd_t = self.opts.command_timeout;
        let (mail_reply, rcpt_replies, data_reply) = if self.caps.pipelining {
            self.wbuf.extend_from_slice(mail.as_bytes());
            for r in rcpts {
                self.wbuf
                    .extend_from_slice(format!("RCPT TO:<{r}>\r\n").as_bytes());
            }
            self.wbuf.extend_from_slice(b"DATA\r\n");
            self.flush_wbuf("MAIL/RCPT/DATA").await?;
            let mut replies = self
                .read_replies(rcpts.len() + 2, "MAIL/RCPT/DATA", cmd_t)
                .await?;
            let data = replies.pop();
            let mail = replies.remove(0);
            (mail, replies, data)
        } else {
            self.wbuf.extend_from_slice(mail.as_bytes());
            self.flush_wbuf("MAIL FROM").await?;
            let mail = self.read_replies(1, "MAIL FROM", cmd_t).await?.remove(0);
            let mut rr = Vec::with_capacity(rcpts.len());
            if mail.is_positive() {
                for r in rcpts {
                    self.wbuf
                        .extend_from_slice(format!("RCPT TO:<{r}>\r\n").as_bytes());
                    self.flush_wbuf("RCPT TO").await?;
                    rr.push(self.read_replies(1, "RCPT TO", cmd_t).await?.remove(0));
                }
            }
            let data = if rr.iter().any(|r| r.is_positive()) {
                self.wbuf.extend_from_slice(b"DATA\r\n");
                self.flush_wbuf("DATA").await?;
                Some(self.read_replies(1, "DATA", cmd_t).await?.remove(0))
            } else {
                None
            };
            (mail, rr, data)
        };

        if !mail_reply.is_positive() {
            self.reset_after_failure(data_reply.as_ref()).await?;
            return Ok(TxnReplies {
                rcpts: vec![mail_reply; rcpts.len()],
            });
        }
        let accepted = rcpt_replies.iter().filter(|r| r.is_positive()).count();
        let data_reply = match data_reply {
            Some(d) => d,
            None => {
                // Non-pipelined and no recipient accepted: DATA was never sent.
                self.rset().await?;
                return Ok(TxnReplies {
                    rcpts: rcpt_replies,
                });
            }
        };
        if !data_reply.is_intermediate() {
            // DATA refused (with PIPELINING this is expected when no RCPT succeeded).
            self.rset().await?;
            let rcpts = rcpt_replies
                .into_iter()
                .map(|r| {
                    if r.is_positive() {
                        data_reply.clone()
                    } else {
                        r
                    }
                })
                .collect();
            return Ok(TxnReplies { rcpts });
        }
        if accepted == 0 {
            // RFC 2920 §3.1: 354 with no valid recipient: send an empty body to end DATA.
            self.wbuf.extend_from_slice(b".\r\n");
            self.flush_wbuf("end of DATA").await?;
            let _ = self
                .read_replies(1, "end of DATA", self.opts.data_timeout)
                .await?;
            return Ok(TxnReplies {
                rcpts: rcpt_replies,
            });
        }
        dot_stuff(body, &mut self.wbuf);
        let data_t = self.opts.data_timeout;
        let written = tokio::time::timeout(data_t, async {
            self.io.write_all(&self.wbuf).await?;
            self.io.flush().await
        })
        .await;
        self.wbuf.clear();
        match written {
            Err(_) => {
                self.broken = true;
                return Err(self.err_timeout("message body", data_t));
            }
            Ok(Err(e)) => {
                self.broken = true;
                return Err(self.err_proto("message body", e));
            }
            Ok(Ok(())) => {}
        }
        let final_reply = self.read_replies(1, "end of DATA", data_t).await?.remove(0);
        let rcpts = rcpt_replies
            .into_iter()
            .map(|r| {
                if r.is_positive() {
                    final_reply.clone()
                } else {
                    r
                }
            })
            .collect();
        Ok(TxnReplies { rcpts })
    }

    async fn reset_after_failure(&mut self, data_reply: Option<&Reply>) -> Result<(), ClientError> {
        if let Some(d) = data_reply
            && d.is_intermediate()
            && !self.broken
        {
            // Server said 354 although MAIL failed: end the empty DATA first.
            self.wbuf.extend_from_slice(b".\r\n");
            self.flush_wbuf("end of DATA").await?;
            self.read_replies(1, "end of DATA", self.opts.data_timeout)
                .await?;
        }
        self.rset().await
    }

    async fn rset(&mut self) -> Result<(), ClientError> {
        if self.broken {
            return Ok(()); // the server closed the channel (421); nothing to reset
        }
        self.wbuf.extend_from_slice(b"RSET\r\n");
        self.flush_wbuf("RSET").await?;
        let r = self
            .read_replies(1, "RSET", self.opts.command_timeout)
            .await?
            .remove(0);
        if !r.is_positive() {
            self.broken = true;
        }
        Ok(())
    }

    /// Say QUIT and close; errors are irrelevant at this point.
    pub async fn quit(mut self) {
        if self.broken {
            let _ = self.io.shutdown().await;
            return;
        }
        self.wbuf.extend_from_slice(b"QUIT\r\n");
        if self.flush_wbuf("QUIT").await.is_ok() {
            let _ = self
                .read_replies(
                    1,
                    "QUIT",
                    Duration::from_secs(5).min(self.opts.command_timeout),
                )
                .await;
        }
        let _ = self.io.shutdown().await;
    }
}

/// Append `body` to `out` with SMTP transparency (RFC 5321 §4.5.2: a line starting with "."
/// gets another "."), a final CRLF if the body lacks one, and the ".\r\n" terminator.
pub fn dot_stuff(body: &[u8], out: &mut Vec<u8>) {
    out.reserve(body.len() + body.len() / 64 + 8);
    let mut start = 0;
    if body.first() == Some(&b'.') {
        out.push(b'.');
    }
    for pos in memchr::memmem::find_iter(body, b"\n.") {
        out.extend_from_slice(&body[start..=pos]);
        out.push(b'.');
        start = pos + 1;
    }
    out.extend_from_slice(&body[start..]);
    if !body.is_empty() && !body.ends_with(b"\r\n") {
        out.extend_from_slice(b"\r\n");
    }
    out.extend_from_slice(b".\r\n");
}

/// The reply recorded for a pipelined command the server never answered because it closed
/// the connection with `closing` (a 421) first: temporary, X.4.2 "bad connection" (so it is
/// classified `routing`), and without the 421's own text.
fn unanswered_after(closing: &Reply) -> Reply {
    let code = if closing.enhanced.is_empty() {
        closing.code.to_string()
    } else {
        format!("{} {}", closing.code, closing.enhanced)
    };
    Reply::new(
        421,
        "4.4.2",
        format!(
            "not answered: the server closed the connection ({code}) in reply to an earlier command"
        ),
    )
}

#[cfg(test)]
mod tests {
    use super::dot_stuff;

    /// Issue 17 review 4d: what the commands after a 421 get is classified as a connection
    /// problem, not by the 421's text about someone else's mailbox.
    #[test]
    fn commands_after_a_421_are_unanswered_not_the_421() {
        let closing = super::Reply::new(421, "4.2.2", "<a@x.test>: mailbox full, over quota");
        let r = super::unanswered_after(&closing);
        assert_eq!((r.code, r.enhanced.as_str()), (421, "4.4.2"));
        assert!(!r.text.contains("mailbox full"), "{r}");
        let c = crate::bounce::Classifier::builtin();
        assert_eq!(
            &*c.classify((&closing).into(), None).category,
            "mailbox-full"
        );
        assert_eq!(&*c.classify((&r).into(), None).category, "routing");
    }

    #[test]
    fn dot_stuffing_table() {
        let cases: &[(&[u8], &[u8])] = &[
            (b"a\r\n", b"a\r\n.\r\n"),
            (b".a\r\n", b"..a\r\n.\r\n"),
            (b"a\r\n.\r\nb\r\n", b"a\r\n..\r\nb\r\n.\r\n"),
            (b"a\r\n..b\r\n", b"a\r\n...b\r\n.\r\n"),
            (b"no final crlf", b"no final crlf\r\n.\r\n"),
            (b"", b".\r\n"),
        ];
        for (input, want) in cases {
            let mut out = Vec::new();
            dot_stuff(input, &mut out);
            assert_eq!(
                String::from_utf8_lossy(&out),
                String::from_utf8_lossy(want),
                "input {:?}",
                String::from_utf8_lossy(input)
            );
        }
    }
}
