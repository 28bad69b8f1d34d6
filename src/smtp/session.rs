//! The socket loop of one SMTP connection: reads bytes into a reusable buffer, feeds them to
//! the [`Protocol`] state machine, writes its replies, and performs the actions it asks for
//! (TLS handshake, password check, hand-off to the acceptor) strictly in order.
//!
//! Owns the connection, its timeouts and its reaction to shutdown. Replies are written when
//! the protocol has consumed everything read so far, so a pipelined group of commands gets one
//! write (RFC 2920). Never interprets SMTP itself; never reads further commands while the
//! acceptor is making a message durable.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::{Buf, BytesMut};
use prometheus::{Histogram, IntGauge};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio_rustls::TlsAcceptor;
use tokio_util::sync::CancellationToken;

use super::auth::Authenticator;
use super::auth_guard::AuthGuard;
use super::per_ip::{IpLimiter, client_key};
use super::protocol::{Action, Protocol, ProtocolConfig, canonical_ip};
use super::tls::Conn;
use crate::message::SharedAcceptor;

/// What every session of one listener shares. Immutable except for the per-IP counts.
pub(super) struct Shared {
    pub proto: Arc<ProtocolConfig>,
    pub tls: Option<TlsAcceptor>,
    pub implicit_tls: bool,
    pub command_timeout: Duration,
    pub data_timeout: Duration,
    /// How long a session in the middle of a message may go on once shutdown started.
    pub shutdown_grace: Duration,
    pub per_ip: Arc<IpLimiter>,
    pub acceptor: SharedAcceptor,
    pub authenticator: Arc<Authenticator>,
    /// Failed-AUTH counters, delays and lockouts (`[[listener]] auth_*`).
    pub auth_guard: AuthGuard,
    /// IPv6 clients are counted by this prefix (per-IP limits, AUTH failures).
    pub ipv6_prefix_length: u8,
    /// The listener's session slots (`max_sessions`): how full it is decides stress.
    pub slots: Arc<Semaphore>,
    pub max_sessions: usize,
    /// Idle timeout for a session waiting for a command while the listener is under stress.
    pub stress_command_timeout: Duration,
    pub sessions: IntGauge,
    pub accept_latency: Histogram,
}

/// Bytes asked for per read. The buffer is empty before every read (the protocol consumes all
/// it is given), so this is also the most a session holds unparsed.
const READ_CHUNK: usize = 32 * 1024;

const TOO_MANY_FROM_IP: &[u8] = b"421 4.7.0 Too many connections from your address\r\n";

/// Why a session ended other than by the protocol closing it.
#[derive(Debug, thiserror::Error)]
enum SessionEnd {
    #[error("client closed the connection")]
    ClientClosed,
    #[error("client closed the connection in the middle of a message; nothing was handed on")]
    ClientClosedInMessage,
    #[error("i/o error: {0}")]
    Io(#[from] std::io::Error),
    #[error("no reply written within {0:?} (client not reading)")]
    WriteTimeout(Duration),
    #[error("tls handshake failed: {0}")]
    Handshake(std::io::Error),
    #[error("tls handshake did not finish within {0:?}")]
    HandshakeTimeout(Duration),
    #[error("shutdown during the tls handshake")]
    HandshakeShutdown,
}

struct GaugeGuard(IntGauge);

impl Drop for GaugeGuard {
    fn drop(&mut self) {
        self.0.dec();
    }
}

/// Serve one accepted connection. `_permit` is the listener's session slot, released on return.
pub(super) async fn run(
    stream: TcpStream,
    peer: SocketAddr,
    shared: Arc<Shared>,
    shutdown: CancellationToken,
    _permit: OwnedSemaphorePermit,
) {
    shared.sessions.inc();
    let _gauge = GaugeGuard(shared.sessions.clone());
    let ip = canonical_ip(peer.ip());
    let Some(_ip_slot) = shared.per_ip.claim(ip) else {
        tracing::info!(%peer, listener = %shared.proto.listener, "too many sessions from this address");
        // On an implicit-TLS listener a reply would need a handshake first; a client already
        // holding its share of sessions just gets the connection closed.
        if !shared.implicit_tls {
            let mut stream = stream;
            let _ = tokio::time::timeout(shared.command_timeout, async {
                stream.write_all(TOO_MANY_FROM_IP).await?;
                stream.shutdown().await
            })
            .await;
        }
        return;
    };
    let conn = if shared.implicit_tls {
        match handshake(stream, &shared, &shutdown).await {
            Ok(conn) => conn,
            Err(e) => {
                tracing::debug!(%peer, error = %e, "implicit tls session ended");
                return;
            }
        }
    } else {
        Conn::Plain(stream)
    };
    let mut proto = Protocol::new(shared.proto.clone(), ip, conn.is_tls());
    if shutdown.is_cancelled() {
        proto.shutting_down();
    }
    let session = proto.session_id().to_string();
    tracing::debug!(%peer, %session, listener = %shared.proto.listener, "smtp session started");
    match drive(conn, &mut proto, &shared, &shutdown, ip).await {
        Ok(()) => tracing::debug!(%peer, %session, "smtp session closed"),
        Err(e) => tracing::debug!(%peer, %session, error = %e, "smtp session ended"),
    }
}

async fn handshake(
    stream: TcpStream,
    shared: &Shared,
    shutdown: &CancellationToken,
) -> Result<Conn, SessionEnd> {
    let Some(acceptor) = shared.tls.as_ref() else {
        return Err(SessionEnd::Handshake(std::io::Error::other(
            "no tls configured",
        )));
    };
    let limit = shared.command_timeout;
    tokio::select! {
        _ = shutdown.cancelled() => Err(SessionEnd::HandshakeShutdown),
        done = tokio::time::timeout(limit, acceptor.accept(stream)) => match done {
            Err(_) => Err(SessionEnd::HandshakeTimeout(limit)),
            Ok(Err(e)) => Err(SessionEnd::Handshake(e)),
            Ok(Ok(tls)) => Ok(Conn::Tls(Box::new(tls))),
        },
    }
}

async fn flush(conn: &mut Conn, proto: &mut Protocol, limit: Duration) -> Result<(), SessionEnd> {
    if proto.output().is_empty() {
        return Ok(());
    }
    tokio::time::timeout(limit, async {
        conn.write_all(proto.output()).await?;
        conn.flush().await
    })
    .await
    .map_err(|_| SessionEnd::WriteTimeout(limit))??;
    proto.clear_output();
    Ok(())
}

/// Checks credentials under the AUTH guard: a locked-out network or user gets `454` without a
/// password check; a failure is counted, logged (target `gannet::auth`) and answered after its
/// delay (or at once when shutdown starts).
async fn authenticate(
    proto: &mut Protocol,
    shared: &Shared,
    peer_ip: std::net::IpAddr,
    credentials: super::auth::Credentials,
    shutdown: &CancellationToken,
) {
    let net = client_key(peer_ip, shared.ipv6_prefix_length);
    let user = credentials.user.clone();
    if let Err(lockout) = shared.auth_guard.check(net, &user, Instant::now()) {
        tracing::warn!(
            target: "gannet::auth",
            event = "auth_refused_locked",
            listener = %shared.proto.listener,
            client = %peer_ip,
            user = %user,
            locked = %lockout.locked,
            remaining_secs = lockout.remaining.as_secs(),
            "AUTH refused without a password check: {} is locked out for {}s more after too many failures",
            lockout.locked,
            lockout.remaining.as_secs()
        );
        proto.auth_locked();
        return;
    }
    if shared.authenticator.verify(credentials).await {
        shared.auth_guard.succeeded(&user);
        proto.auth_result(true);
        return;
    }
    let failure = shared.auth_guard.failed(net, &user, Instant::now());
    tracing::warn!(
        target: "gannet::auth",
        event = "auth_failed",
        listener = %shared.proto.listener,
        client = %peer_ip,
        user = %user,
        failures = failure.failures,
        delay_ms = failure.delay.as_millis() as u64,
        "AUTH failed for user {user:?} from {peer_ip} (failure {}); answering in {:?}",
        failure.failures,
        failure.delay
    );
    if let Some(lockout) = &failure.locked {
        tracing::warn!(
            target: "gannet::auth",
            event = "auth_lockout",
            listener = %shared.proto.listener,
            client = %peer_ip,
            user = %user,
            locked = %lockout.locked,
            lockout_secs = lockout.remaining.as_secs(),
            "{} locked out of AUTH for {}s after {} failures",
            lockout.locked,
            lockout.remaining.as_secs(),
            failure.failures
        );
    }
    tokio::select! {
        _ = tokio::time::sleep(failure.delay) => {}
        _ = shutdown.cancelled() => {}
    }
    proto.auth_result(false);
}

/// True while 90% or more of the listener's session slots are taken.
fn under_stress(shared: &Shared) -> bool {
    let free = shared.slots.available_permits();
    free * 10 <= shared.max_sessions
}

/// Resolves when a session idle since `idle_since` has been idle past the stress timeout while
/// the listener is under stress; checks again every so often while it is not.
async fn stress_expiry(shared: &Shared, idle_since: tokio::time::Instant) {
    let check = (shared.stress_command_timeout / 4)
        .clamp(Duration::from_millis(50), Duration::from_secs(1));
    loop {
        let due = idle_since + shared.stress_command_timeout;
        if under_stress(shared) && tokio::time::Instant::now() >= due {
            return;
        }
        let next = tokio::time::Instant::now() + check;
        let wake = if under_stress(shared) {
            due.min(next)
        } else {
            next
        };
        tokio::time::sleep_until(wake).await;
    }
}

async fn drive(
    mut conn: Conn,
    proto: &mut Protocol,
    shared: &Shared,
    shutdown: &CancellationToken,
    peer_ip: std::net::IpAddr,
) -> Result<(), SessionEnd> {
    let mut inbuf = BytesMut::with_capacity(READ_CHUNK);
    let write_limit = shared.command_timeout;
    // When a session in the middle of a message must give up after shutdown started (its
    // grace period), set the first time the loop sees the shutdown.
    let mut grace_ends: Option<tokio::time::Instant> = None;
    loop {
        let action = {
            let mut input: &[u8] = &inbuf;
            let action = proto.advance(&mut input);
            let consumed = inbuf.len() - input.len();
            inbuf.advance(consumed);
            action
        };
        match action {
            Action::Read => {
                debug_assert!(inbuf.is_empty());
                if shutdown.is_cancelled() && !proto.in_body() {
                    proto.shutting_down();
                    continue;
                }
                flush(&mut conn, proto, write_limit).await?;
                let in_body = proto.in_body();
                let limit = if in_body {
                    shared.data_timeout
                } else {
                    shared.command_timeout
                };
                inbuf.reserve(READ_CHUNK);
                if shutdown.is_cancelled() && grace_ends.is_none() {
                    grace_ends = Some(tokio::time::Instant::now() + shared.shutdown_grace);
                }
                // A message in progress may finish during the grace period, however slowly
                // its bytes come, but no longer: SIGTERM ends every session in bounded time.
                let grace_over = async {
                    match grace_ends {
                        Some(end) => tokio::time::sleep_until(end).await,
                        None => {
                            shutdown.cancelled().await;
                            tokio::time::sleep(shared.shutdown_grace).await;
                        }
                    }
                };
                let read = tokio::select! {
                    biased;
                    _ = shutdown.cancelled(), if !in_body => {
                        proto.shutting_down();
                        continue;
                    }
                    _ = grace_over, if in_body => {
                        tracing::info!(
                            listener = %shared.proto.listener,
                            session = %proto.session_id(),
                            grace = ?shared.shutdown_grace,
                            "message still incomplete when the shutdown grace ended; closing with 421 (the client will send it again)"
                        );
                        proto.shutting_down();
                        continue;
                    }
                    _ = stress_expiry(shared, tokio::time::Instant::now()), if !in_body => {
                        tracing::info!(
                            listener = %shared.proto.listener,
                            session = %proto.session_id(),
                            timeout = ?shared.stress_command_timeout,
                            "listener under stress (90% of max_sessions in use): closing a session idle past stress_command_timeout"
                        );
                        proto.timed_out();
                        continue;
                    }
                    read = tokio::time::timeout(limit, conn.read_buf(&mut inbuf)) => read,
                };
                match read {
                    Err(_elapsed) => proto.timed_out(),
                    Ok(Ok(0)) if in_body => return Err(SessionEnd::ClientClosedInMessage),
                    Ok(Ok(0)) => return Err(SessionEnd::ClientClosed),
                    Ok(Ok(_)) => {}
                    Ok(Err(e)) => return Err(SessionEnd::Io(e)),
                }
            }
            Action::StartTls => {
                flush(&mut conn, proto, write_limit).await?;
                // RFC 3207 §4.2: anything the client pipelined after STARTTLS is discarded.
                inbuf.clear();
                conn = match conn {
                    Conn::Plain(tcp) => handshake(tcp, shared, shutdown).await?,
                    tls @ Conn::Tls(_) => tls,
                };
                proto.tls_established();
            }
            Action::Authenticate(credentials) => {
                authenticate(proto, shared, peer_ip, credentials, shutdown).await;
            }
            Action::Submit(submission) => {
                let started = Instant::now();
                let result = shared.acceptor.accept(*submission).await;
                if result.is_ok() {
                    shared
                        .accept_latency
                        .observe(started.elapsed().as_secs_f64());
                }
                proto.submitted(result);
                if shutdown.is_cancelled() {
                    proto.shutting_down();
                }
            }
            Action::Close => {
                flush(&mut conn, proto, write_limit).await?;
                let _ = tokio::time::timeout(write_limit, conn.shutdown()).await;
                return Ok(());
            }
        }
    }
}
