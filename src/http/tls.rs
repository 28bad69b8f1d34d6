//! Optional TLS on the HTTP listener (`[http] tls_cert`, `tls_key`: the same PEM files and
//! loader as the SMTP listeners).
//!
//! Owns: `TlsListener`, an axum `Listener` whose connections are TLS streams. One task accepts
//! TCP connections and hands each to its own handshake task (bounded by `HANDSHAKE_TIMEOUT`),
//! so a client that connects and says nothing cannot hold up the others; finished handshakes
//! wait in a bounded channel (`READY`) for the server to take them. A failed handshake is
//! logged at debug and costs only that connection.
//! Never: loads files (serve does, with `smtp::tls::load_acceptor`) or looks at requests.

use std::net::SocketAddr;
use std::time::Duration;

use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;
use tokio_rustls::TlsAcceptor;
use tokio_rustls::server::TlsStream;
use tokio_util::sync::CancellationToken;

/// How long a client may take to finish the TLS handshake.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// Handshaken connections waiting for the server; when full, handshake tasks wait (each holds
/// one socket), which is the back-pressure on a flood of new connections.
const READY: usize = 64;

/// Most handshakes in progress at once; further TCP connections wait in the kernel backlog.
const MAX_HANDSHAKES: usize = 256;

pub struct TlsListener {
    local: SocketAddr,
    rx: mpsc::Receiver<(TlsStream<TcpStream>, SocketAddr)>,
}

impl TlsListener {
    /// Start accepting on `tcp` until `shutdown`.
    pub fn new(tcp: TcpListener, acceptor: TlsAcceptor, shutdown: CancellationToken) -> Self {
        let local = tcp
            .local_addr()
            .unwrap_or_else(|_| SocketAddr::from(([0, 0, 0, 0], 0)));
        let (tx, rx) = mpsc::channel(READY);
        let permits = std::sync::Arc::new(tokio::sync::Semaphore::new(MAX_HANDSHAKES));
        tokio::spawn(async move {
            loop {
                let Ok(permit) = permits.clone().acquire_owned().await else {
                    return;
                };
                let (tcp_stream, peer) = tokio::select! {
                    _ = shutdown.cancelled() => return,
                    r = tcp.accept() => match r {
                        Ok(x) => x,
                        Err(e) => {
                            // Out of file descriptors and the like: wait a moment, go on.
                            tracing::warn!(error = %e, "HTTP listener: accept failed");
                            tokio::time::sleep(Duration::from_millis(100)).await;
                            continue;
                        }
                    },
                };
                let acceptor = acceptor.clone();
                let tx = tx.clone();
                tokio::spawn(async move {
                    let _permit = permit;
                    match tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(tcp_stream)).await
                    {
                        Ok(Ok(tls)) => {
                            let _ = tx.send((tls, peer)).await;
                        }
                        Ok(Err(e)) => {
                            tracing::debug!(%peer, error = %e, "HTTP listener: TLS handshake failed")
                        }
                        Err(_) => tracing::debug!(%peer, "HTTP listener: TLS handshake timed out"),
                    }
                });
            }
        });
        TlsListener { local, rx }
    }
}

impl axum::serve::Listener for TlsListener {
    type Io = TlsStream<TcpStream>;
    type Addr = SocketAddr;

    async fn accept(&mut self) -> (Self::Io, Self::Addr) {
        match self.rx.recv().await {
            Some(c) => c,
            // The accept task ended (shutdown): the server stops asking once shutdown is seen;
            // until then there is nothing more to hand out.
            None => std::future::pending().await,
        }
    }

    fn local_addr(&self) -> std::io::Result<Self::Addr> {
        Ok(self.local)
    }
}
