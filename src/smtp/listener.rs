//! One `[[listener]]`: the bound socket, its TLS material, and the accept loop that starts a
//! session task per connection under the listener's session limits.
//!
//! Owns the per-listener limits: `max_sessions` (a semaphore permit is taken *before*
//! `accept`, moved into the session task and released when it ends, so an overloaded listener
//! leaves connections in the kernel backlog instead of accepting them) and
//! `max_sessions_per_ip` (see `per_ip`). Stops accepting when the shutdown
//! token fires and returns from [`SmtpListener::run`] once every session has ended.
//! Never parses SMTP (see `protocol`).

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use tokio::net::TcpListener;
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use super::SmtpError;
use super::auth::Authenticator;
use super::auth_guard::{AuthGuard, GuardConfig};
use super::per_ip::IpLimiter;
use super::protocol::ProtocolConfig;
use super::session::{self, Shared};
use super::tls;
use crate::config::{Config, TlsMode};
use crate::message::SharedAcceptor;
use crate::metrics::Metrics;

/// A bound SMTP listener, ready to [`run`](SmtpListener::run).
pub struct SmtpListener {
    listener: TcpListener,
    local_addr: SocketAddr,
    name: String,
    /// Session permits (`max_sessions`), taken before each `accept`.
    slots: Arc<Semaphore>,
    shared: Arc<Shared>,
}

impl SmtpListener {
    /// Binds the socket and loads TLS material; errors name the listener, address and file.
    pub async fn bind(
        config: Arc<Config>,
        listener_index: usize,
        acceptor: SharedAcceptor,
        metrics: Metrics,
    ) -> Result<SmtpListener, SmtpError> {
        Self::bind_with(config, listener_index, acceptor, metrics, None).await
    }

    /// [`SmtpListener::bind`] for a receive-only listener (`role = "bounces"`): RCPT is
    /// accepted only for addresses `rcpt_filter` accepts, from any client.
    pub async fn bind_with(
        config: Arc<Config>,
        listener_index: usize,
        acceptor: SharedAcceptor,
        metrics: Metrics,
        rcpt_filter: Option<crate::smtp::protocol::RcptFilter>,
    ) -> Result<SmtpListener, SmtpError> {
        Self::bind_inner(config, listener_index, acceptor, metrics, rcpt_filter, None).await
    }

    /// [`SmtpListener::bind`] with a check of each recipient at RCPT (the suppression list).
    pub async fn bind_checked(
        config: Arc<Config>,
        listener_index: usize,
        acceptor: SharedAcceptor,
        metrics: Metrics,
        rcpt_check: Option<crate::smtp::protocol::RcptCheck>,
    ) -> Result<SmtpListener, SmtpError> {
        Self::bind_inner(config, listener_index, acceptor, metrics, None, rcpt_check).await
    }

    async fn bind_inner(
        config: Arc<Config>,
        listener_index: usize,
        acceptor: SharedAcceptor,
        metrics: Metrics,
        rcpt_filter: Option<crate::smtp::protocol::RcptFilter>,
        rcpt_check: Option<crate::smtp::protocol::RcptCheck>,
    ) -> Result<SmtpListener, SmtpError> {
        let l = config
            .listeners
            .get(listener_index)
            .ok_or(SmtpError::NoSuchListener {
                index: listener_index,
                count: config.listeners.len(),
            })?;
        let tls = match (l.tls, &l.tls_cert, &l.tls_key) {
            (TlsMode::None, _, _) => None,
            (_, Some(cert), Some(key)) => Some(
                tls::load_acceptor(&l.name, config.resolve_path(cert), config.resolve_path(key))
                    .await?,
            ),
            (TlsMode::Implicit, _, _) => {
                return Err(SmtpError::TlsRequired {
                    listener: l.name.clone(),
                });
            }
            (TlsMode::Starttls, _, _) => None,
        };
        let implicit_tls = l.tls == TlsMode::Implicit;
        let authenticator = Arc::new(Authenticator::new(&config.smtp_users));
        let mut proto = ProtocolConfig::new(
            &config,
            l,
            tls.is_some() && !implicit_tls,
            tls.is_some() && authenticator.has_users(),
            metrics.clone(),
        );
        proto.rcpt_filter = rcpt_filter;
        proto.rcpt_check = rcpt_check;
        if l.require_auth && !(tls.is_some() && authenticator.has_users()) {
            tracing::warn!(
                listener = %l.name,
                "require_auth is set but AUTH can never be offered (it needs tls_cert/tls_key and at least one [[smtp_user]]): every MAIL will get 530"
            );
        }
        let bind_err = |source| SmtpError::Bind {
            listener: l.name.clone(),
            address: l.address,
            source,
        };
        let listener = TcpListener::bind(l.address).await.map_err(bind_err)?;
        let local_addr = listener.local_addr().map_err(bind_err)?;
        let slots = Arc::new(Semaphore::new(l.max_sessions.max(1)));
        let shared = Arc::new(Shared {
            proto: Arc::new(proto),
            tls,
            implicit_tls,
            command_timeout: l.command_timeout,
            data_timeout: l.data_timeout,
            shutdown_grace: l.shutdown_grace,
            per_ip: IpLimiter::new(l.max_sessions_per_ip.max(1), l.ipv6_prefix_length),
            acceptor,
            authenticator,
            auth_guard: AuthGuard::new(GuardConfig {
                fail_delay: l.auth_fail_delay,
                max_delay: l.auth_max_delay,
                lockout_after: l.auth_lockout_after,
                lockout: l.auth_lockout,
            }),
            ipv6_prefix_length: l.ipv6_prefix_length,
            slots: slots.clone(),
            max_sessions: l.max_sessions.max(1),
            stress_command_timeout: l.stress_command_timeout,
            sessions: metrics.smtp_sessions.with_label_values(&[l.name.as_str()]),
            accept_latency: metrics.accept_latency.clone(),
        });
        Ok(SmtpListener {
            listener,
            local_addr,
            name: l.name.clone(),
            slots,
            shared,
        })
    }

    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    /// Accept connections until `shutdown` fires, then stop accepting (the socket is closed)
    /// and return once every session has ended. Sessions see the same token: idle ones get
    /// `421 4.3.2` at once, one in the middle of a message may finish it within the listener's
    /// `shutdown_grace`, then gets `421 4.3.2` too.
    pub async fn run(self, shutdown: CancellationToken) {
        let SmtpListener {
            listener,
            local_addr,
            name,
            slots,
            shared,
        } = self;
        tracing::info!(listener = %name, address = %local_addr, "smtp listener accepting");
        let tracker = TaskTracker::new();
        loop {
            let permit = tokio::select! {
                biased;
                _ = shutdown.cancelled() => break,
                permit = slots.clone().acquire_owned() => match permit {
                    Ok(p) => p,
                    Err(_) => break,
                },
            };
            let (stream, peer) = tokio::select! {
                biased;
                _ = shutdown.cancelled() => break,
                accepted = listener.accept() => match accepted {
                    Ok(pair) => pair,
                    Err(e) => {
                        // Out of file descriptors and the like: back off briefly rather than
                        // spinning; the permit is dropped so the count stays right.
                        tracing::warn!(listener = %name, error = %e, "accept failed");
                        tokio::select! {
                            _ = shutdown.cancelled() => break,
                            _ = tokio::time::sleep(Duration::from_millis(100)) => continue,
                        }
                    }
                },
            };
            if let Err(e) = stream.set_nodelay(true) {
                tracing::debug!(listener = %name, error = %e, "set_nodelay failed");
            }
            tracker.spawn(session::run(
                stream,
                peer,
                shared.clone(),
                shutdown.clone(),
                permit,
            ));
        }
        drop(listener);
        tracker.close();
        tracing::info!(listener = %name, sessions = tracker.len(), "smtp listener stopped accepting; waiting for sessions");
        tracker.wait().await;
        tracing::info!(listener = %name, "smtp listener finished");
    }
}
