//! TLS for the inbound listeners: loading the PEM certificate chain and key into a rustls
//! server config (aws-lc-rs provider), making self-signed development certificates, and the
//! connection type that is plain TCP until STARTTLS (or TLS from the first byte).
//!
//! Never verifies client certificates and never reads files on the runtime threads
//! (`tokio::fs`).

use std::io;
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;
use tokio_rustls::TlsAcceptor;
use tokio_rustls::server::TlsStream;

use super::SmtpError;

async fn read_file(listener: &str, path: &Path) -> Result<Vec<u8>, SmtpError> {
    tokio::fs::read(path)
        .await
        .map_err(|source| SmtpError::TlsFile {
            listener: listener.to_string(),
            path: path.to_path_buf(),
            source,
        })
}

/// Load a PEM certificate chain and private key into a TLS acceptor.
pub async fn load_acceptor(
    listener: &str,
    cert_path: PathBuf,
    key_path: PathBuf,
) -> Result<TlsAcceptor, SmtpError> {
    let pem_err = |path: &Path, message: String| SmtpError::TlsPem {
        listener: listener.to_string(),
        path: path.to_path_buf(),
        message,
    };
    let cert_pem = read_file(listener, &cert_path).await?;
    let certs: Vec<CertificateDer<'static>> = rustls_pemfile::certs(&mut cert_pem.as_slice())
        .collect::<Result<_, _>>()
        .map_err(|e| pem_err(&cert_path, format!("invalid PEM: {e}")))?;
    if certs.is_empty() {
        return Err(pem_err(
            &cert_path,
            "no CERTIFICATE block found (expected a PEM certificate chain)".into(),
        ));
    }
    let key_pem = read_file(listener, &key_path).await?;
    let key: PrivateKeyDer<'static> = rustls_pemfile::private_key(&mut key_pem.as_slice())
        .map_err(|e| pem_err(&key_path, format!("invalid PEM: {e}")))?
        .ok_or_else(|| {
            pem_err(
                &key_path,
                "no PRIVATE KEY block found (expected PKCS#8, PKCS#1 or SEC1 PEM)".into(),
            )
        })?;
    let config_err = |message: String| SmtpError::TlsConfig {
        listener: listener.to_string(),
        cert: cert_path.clone(),
        key: key_path.clone(),
        message,
    };
    let config = rustls::ServerConfig::builder_with_provider(Arc::new(
        rustls::crypto::aws_lc_rs::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .map_err(|e| config_err(e.to_string()))?
    .with_no_client_auth()
    .with_single_cert(certs, key)
    .map_err(|e| config_err(e.to_string()))?;
    Ok(TlsAcceptor::from(Arc::new(config)))
}

/// Make a self-signed certificate for `names` (DNS names or IP addresses), for development
/// and tests. Returns (certificate PEM, private key PEM). Never use it for a real domain.
pub fn generate_dev_cert(names: &[String]) -> Result<(String, String), SmtpError> {
    let err = |message: String| SmtpError::DevCert {
        names: names.to_vec(),
        message,
    };
    if names.is_empty() {
        return Err(err(
            "give at least one host name, e.g. --name localhost".into()
        ));
    }
    let certified =
        rcgen::generate_simple_self_signed(names.to_vec()).map_err(|e| err(e.to_string()))?;
    Ok((certified.cert.pem(), certified.signing_key.serialize_pem()))
}

/// A client connection: plain TCP, or TLS after STARTTLS / on an implicit-TLS listener.
pub enum Conn {
    Plain(TcpStream),
    Tls(Box<TlsStream<TcpStream>>),
}

impl Conn {
    pub fn is_tls(&self) -> bool {
        matches!(self, Conn::Tls(_))
    }
}

impl AsyncRead for Conn {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Conn::Plain(s) => Pin::new(s).poll_read(cx, buf),
            Conn::Tls(s) => Pin::new(s.as_mut()).poll_read(cx, buf),
        }
    }
}

impl AsyncWrite for Conn {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            Conn::Plain(s) => Pin::new(s).poll_write(cx, buf),
            Conn::Tls(s) => Pin::new(s.as_mut()).poll_write(cx, buf),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Conn::Plain(s) => Pin::new(s).poll_flush(cx),
            Conn::Tls(s) => Pin::new(s.as_mut()).poll_flush(cx),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Conn::Plain(s) => Pin::new(s).poll_shutdown(cx),
            Conn::Tls(s) => Pin::new(s.as_mut()).poll_shutdown(cx),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dev_cert_is_pem() {
        let (cert, key) = generate_dev_cert(&["localhost".into(), "127.0.0.1".into()]).unwrap();
        assert!(cert.starts_with("-----BEGIN CERTIFICATE-----"), "{cert}");
        assert!(key.contains("PRIVATE KEY-----"), "{key}");
    }

    #[test]
    fn dev_cert_needs_a_name() {
        let e = generate_dev_cert(&[]).unwrap_err().to_string();
        assert!(e.contains("--name"), "{e}");
    }

    #[tokio::test]
    async fn load_errors_name_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let missing = dir.path().join("missing.pem");
        let e = load_acceptor("mx", missing.clone(), missing.clone())
            .await
            .err()
            .unwrap()
            .to_string();
        assert!(e.contains("missing.pem") && e.contains("\"mx\""), "{e}");

        let empty = dir.path().join("empty.pem");
        std::fs::write(&empty, "not pem").unwrap();
        let e = load_acceptor("mx", empty.clone(), empty)
            .await
            .err()
            .unwrap()
            .to_string();
        assert!(e.contains("empty.pem") && e.contains("CERTIFICATE"), "{e}");
    }

    #[tokio::test]
    async fn loads_a_dev_pair() {
        let dir = tempfile::tempdir().unwrap();
        let (cert, key) = generate_dev_cert(&["localhost".into()]).unwrap();
        let (c, k) = (dir.path().join("c.pem"), dir.path().join("k.pem"));
        std::fs::write(&c, cert).unwrap();
        std::fs::write(&k, key).unwrap();
        assert!(load_acceptor("mx", c, k).await.is_ok());
    }
}
