//! A small SMTP test client that makes tests read like the spec: `c.cmd("RCPT TO:<x@y>",
//! "550 5.7.1").await`. It keeps the whole exchange and prints it when an expectation fails.
//! Every read has a generous deadline so a broken server fails the test instead of hanging it.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use rustls::pki_types::{CertificateDer, ServerName};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;
use tokio_rustls::client::TlsStream;

use super::show;

/// How long a test waits for a reply before declaring the server stuck.
const DEADLINE: Duration = Duration::from_secs(10);

enum Io {
    Plain(TcpStream),
    Tls(Box<TlsStream<TcpStream>>),
    Closed,
}

pub(crate) struct Client {
    io: Io,
    buf: Vec<u8>,
    transcript: Vec<String>,
}

/// A rustls client that trusts exactly `cert_pem` (the listener's dev certificate).
pub(crate) fn tls_connector(cert_pem: &str) -> TlsConnector {
    let mut roots = rustls::RootCertStore::empty();
    for cert in rustls_pemfile::certs(&mut cert_pem.as_bytes()) {
        let cert: CertificateDer<'static> = cert.unwrap();
        roots.add(cert).unwrap();
    }
    let config = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::aws_lc_rs::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .unwrap()
    .with_root_certificates(roots)
    .with_no_client_auth();
    TlsConnector::from(Arc::new(config))
}

impl Client {
    pub async fn connect(addr: SocketAddr) -> Client {
        let tcp = TcpStream::connect(addr).await.unwrap();
        Client {
            io: Io::Plain(tcp),
            buf: Vec::new(),
            transcript: vec![format!("(connected to {addr})")],
        }
    }

    /// Connect with TLS from the first byte (implicit TLS, RFC 8314).
    pub async fn connect_tls(addr: SocketAddr, connector: &TlsConnector) -> Client {
        let mut c = Client::connect(addr).await;
        c.starttls_handshake(connector).await;
        c
    }

    fn fail(&self, what: &str) -> ! {
        panic!(
            "{what}\n--- exchange ---\n{}\n----------------",
            self.transcript.join("\n")
        );
    }

    pub async fn send_raw(&mut self, bytes: &[u8]) {
        self.transcript.push(format!("C: {}", show(bytes)));
        let result = match &mut self.io {
            Io::Plain(s) => s.write_all(bytes).await,
            Io::Tls(s) => match s.write_all(bytes).await {
                Ok(()) => s.flush().await,
                Err(e) => Err(e),
            },
            Io::Closed => self.fail("send on a closed connection"),
        };
        if let Err(e) = result {
            self.fail(&format!("write failed: {e}"));
        }
    }

    pub async fn send(&mut self, line: &str) {
        self.send_raw(format!("{line}\r\n").as_bytes()).await;
    }

    /// Read more bytes into the buffer; Ok(0) at end of stream.
    async fn fill(&mut self) -> std::io::Result<usize> {
        let mut chunk = [0u8; 8192];
        let read = match &mut self.io {
            Io::Plain(s) => tokio::time::timeout(DEADLINE, s.read(&mut chunk)).await,
            Io::Tls(s) => tokio::time::timeout(DEADLINE, s.read(&mut chunk)).await,
            Io::Closed => return Ok(0),
        };
        let n = match read {
            Err(_) => self.fail(&format!("no data from the server within {DEADLINE:?}")),
            Ok(r) => r?,
        };
        self.buf.extend_from_slice(&chunk[..n]);
        Ok(n)
    }

    /// The next complete reply (all its lines), or None if the server closed first.
    pub async fn reply(&mut self) -> Option<String> {
        loop {
            // A reply ends with a line whose fourth byte is a space (or that is 3 bytes long).
            let mut start = 0;
            while let Some(p) = memchr::memmem::find(&self.buf[start..], b"\r\n") {
                let line = &self.buf[start..start + p];
                if line.get(3) != Some(&b'-') {
                    let end = start + p + 2;
                    let reply = String::from_utf8_lossy(&self.buf[..end]).into_owned();
                    self.buf.drain(..end);
                    self.transcript
                        .push(format!("S: {}", show(reply.as_bytes())));
                    return Some(reply.trim_end().to_string());
                }
                start += p + 2;
            }
            match self.fill().await {
                Ok(0) | Err(_) => {
                    if !self.buf.is_empty() {
                        let rest = show(&self.buf);
                        self.fail(&format!("connection ended inside a reply: {rest}"));
                    }
                    self.transcript
                        .push("(server closed the connection)".into());
                    return None;
                }
                Ok(_) => {}
            }
        }
    }

    /// Expect the next reply's last line to start with `prefix` ("250", "550 5.7.1", ...).
    pub async fn expect(&mut self, prefix: &str) -> String {
        match self.reply().await {
            Some(reply) => {
                let last = reply.lines().last().unwrap_or("");
                if !last.starts_with(prefix) {
                    self.fail(&format!(
                        "expected a reply starting {prefix:?}, got {reply:?}"
                    ));
                }
                reply
            }
            None => self.fail(&format!("expected {prefix:?}, but the server closed")),
        }
    }

    /// Send a command line and expect a reply.
    pub async fn cmd(&mut self, line: &str, prefix: &str) -> String {
        self.send(line).await;
        self.expect(prefix).await
    }

    /// Expect the server to close the connection without saying anything more.
    pub async fn expect_closed(&mut self) {
        if let Some(reply) = self.reply().await {
            self.fail(&format!("expected the connection to close, got {reply:?}"));
        }
        self.io = Io::Closed;
    }

    /// Expect the server to drop the connection, whatever it sends first (a TLS alert, say).
    pub async fn expect_disconnect(&mut self) {
        while let Ok(n) = self.fill().await {
            if n == 0 {
                break;
            }
        }
        let rest = show(&std::mem::take(&mut self.buf));
        self.transcript.push(format!(
            "(server dropped the connection after sending: {rest})"
        ));
        self.io = Io::Closed;
    }

    /// After `220 Ready to start TLS` (or on connect for implicit TLS): run the handshake.
    pub async fn starttls_handshake(&mut self, connector: &TlsConnector) {
        let Io::Plain(tcp) = std::mem::replace(&mut self.io, Io::Closed) else {
            self.fail("starttls on a connection that is not plain TCP");
        };
        let name = ServerName::try_from("localhost").unwrap().to_owned();
        match tokio::time::timeout(DEADLINE, connector.connect(name, tcp)).await {
            Ok(Ok(tls)) => {
                self.transcript.push("(tls established)".into());
                self.io = Io::Tls(Box::new(tls));
            }
            Ok(Err(e)) => self.fail(&format!("tls handshake failed: {e}")),
            Err(_) => self.fail("tls handshake timed out"),
        }
    }

    /// EHLO and return the capability lines.
    pub async fn ehlo(&mut self, name: &str) -> String {
        self.cmd(&format!("EHLO {name}"), "250").await
    }

    /// A whole transaction from MAIL to the reply after the body.
    pub async fn send_message(&mut self, from: &str, to: &[&str], body: &str) -> String {
        self.cmd(&format!("MAIL FROM:<{from}>"), "250 2.1.0").await;
        for rcpt in to {
            self.cmd(&format!("RCPT TO:<{rcpt}>"), "250 2.1.5").await;
        }
        self.cmd("DATA", "354").await;
        self.send_raw(body.as_bytes()).await;
        self.send_raw(b".\r\n").await;
        self.expect("250 2.0.0").await
    }
}
