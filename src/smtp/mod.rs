//! The inbound ESMTP server: listeners, sessions, STARTTLS / implicit TLS, AUTH, limits.
//!
//! Owns: the TCP listeners named in `[[listener]]`, every inbound SMTP session on them, the TLS
//! material they load, and the SMTP users' password checks. A session speaks RFC 5321 with
//! PIPELINING, SIZE, 8BITMIME, SMTPUTF8, ENHANCEDSTATUSCODES, CHUNKING, STARTTLS and AUTH
//! PLAIN/LOGIN (only over TLS), enforces relay control and the listener's limits, and hands
//! each complete message on as a [`crate::message::Submission`] through the shared
//! [`crate::message::Acceptor`]. It replies `250` only when the acceptor says the message is
//! durable.
//!
//! Never: writes spool files, queues, signs or classifies messages, adds `Message-ID`/`Date`
//! (the intake pipeline does), or blocks the runtime (argon2 runs on the blocking pool).
//!
//! Layout: [`protocol`] is the whole session as a sans-I/O state machine (bytes in, replies and
//! actions out) and [`data`] decodes DATA content around smtp-proto; `session` is the socket
//! loop that only moves bytes, `listener` accepts connections under the session limits, `tls`
//! and `auth` hold the TLS and password helpers.

mod auth;
mod auth_guard;
pub mod budget;
pub mod data;
mod listener;
mod per_ip;
pub mod protocol;
mod session;
mod tls;

#[cfg(test)]
mod tests;

pub use auth::hash_password;
pub use listener::SmtpListener;
pub use tls::{generate_dev_cert, load_acceptor};

use std::net::SocketAddr;
use std::path::PathBuf;

/// What can go wrong setting up a listener or the helper commands. Every variant names the
/// listener, address or file involved so the operator can fix the config.
#[derive(Debug, thiserror::Error)]
pub enum SmtpError {
    #[error("no [[listener]] number {index} in the config (it defines {count})")]
    NoSuchListener { index: usize, count: usize },
    #[error(
        "listener {listener:?}: cannot bind {address}: {source} (is another process using the port, or does the address belong to this host?)"
    )]
    Bind {
        listener: String,
        address: SocketAddr,
        source: std::io::Error,
    },
    #[error("listener {listener:?}: cannot read TLS file {}: {source}", path.display())]
    TlsFile {
        listener: String,
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("listener {listener:?}: TLS file {}: {message}", path.display())]
    TlsPem {
        listener: String,
        path: PathBuf,
        message: String,
    },
    #[error(
        "listener {listener:?}: TLS certificate {} and key {} do not work together: {message}",
        cert.display(),
        key.display()
    )]
    TlsConfig {
        listener: String,
        cert: PathBuf,
        key: PathBuf,
        message: String,
    },
    #[error(
        "listener {listener:?}: tls = \"implicit\" needs tls_cert and tls_key (make a dev pair with `gannet dev-cert`)"
    )]
    TlsRequired { listener: String },
    #[error("cannot hash password: {0}")]
    HashPassword(String),
    #[error("cannot generate a certificate for {names:?}: {message}")]
    DevCert { names: Vec<String>, message: String },
}
