//! The message as it travels through Gannet, and the hand-off from listeners to the pipeline.
//!
//! Owns: [`Submission`] (what a listener — SMTP now, HTTP later — produces once a client has
//! handed over a whole message), [`Accepted`] / [`Rejection`] (the pipeline's answer), the
//! [`Acceptor`] trait the listeners call, and header helpers in [`headers`]. Listeners never touch
//! the spool or the queue directly: they call an `Acceptor` and reply according to its answer.

pub mod address;
pub mod compose;
pub mod headers;
pub mod template;

use std::net::IpAddr;
use std::sync::Arc;

use futures::future::BoxFuture;

/// The SMTP envelope. `mail_from` is empty for the null reverse-path (`MAIL FROM:<>`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Envelope {
    pub mail_from: String,
    pub rcpts: Vec<String>,
}

/// Where a submission came from: for `Received:`, logs and class selection.
#[derive(Debug, Clone)]
pub struct Origin {
    /// Listener name from config (`[[listener]] name`), or `"http"`.
    pub listener: String,
    pub client_ip: IpAddr,
    /// EHLO/HELO argument given by the client.
    pub helo: String,
    /// Authenticated SMTP user, if any.
    pub auth_user: Option<String>,
    /// Name (`[[api_token]] name`) of the API token an HTTP injection was made with, if any.
    pub api_token: Option<String>,
}

/// A complete message handed over by a client, not yet durable.
#[derive(Debug, Clone)]
pub struct Submission {
    pub envelope: Envelope,
    /// The message (headers + body) with CRLF line ends, dot-unstuffed; the listener has already
    /// prepended its `Received:` line.
    pub body: Vec<u8>,
    pub origin: Origin,
    /// Class requested explicitly by the injection API (takes precedence over headers).
    pub class: Option<String>,
    /// Tenant and campaign given explicitly by the injection API.
    pub tenant: Option<String>,
    pub campaign: Option<String>,
}

/// The pipeline took the message: it is on stable storage and queued.
#[derive(Debug, Clone)]
pub struct Accepted {
    /// Queue id, for the `250 2.0.0 Ok: queued as ID` reply and logs.
    pub queue_id: String,
}

/// The pipeline refused the message, with the reply a listener should give.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{code} {enhanced} {message}")]
pub struct Rejection {
    /// SMTP reply code: 4xx temporary, 5xx permanent.
    pub code: u16,
    /// Enhanced status code (RFC 3463), e.g. `5.7.1`.
    pub enhanced: String,
    /// Human-readable text, one line, no CR/LF.
    pub message: String,
    /// The field at fault, for HTTP errors (`{"error": {"field"}}`); None when not about a field.
    pub field: Option<String>,
}

impl Rejection {
    pub fn new(code: u16, enhanced: &str, message: impl Into<String>) -> Self {
        Rejection {
            code,
            enhanced: enhanced.to_string(),
            message: message.into().replace(['\r', '\n'], " "),
            field: None,
        }
    }

    pub fn with_field(mut self, field: &str) -> Self {
        self.field = Some(field.to_string());
        self
    }

    pub fn is_permanent(&self) -> bool {
        self.code >= 500
    }
}

/// What listeners hand complete messages to. Implemented by the intake pipeline; tests can use
/// a stand-in. The future resolves only once the message is durable (or refused).
pub trait Acceptor: Send + Sync + 'static {
    fn accept(&self, submission: Submission) -> BoxFuture<'static, Result<Accepted, Rejection>>;
}

pub type SharedAcceptor = Arc<dyn Acceptor>;

/// The domain part of an address (`user@Example.COM` → `example.com`), lowercased.
/// Returns None for addresses without `@`.
pub fn domain_of(address: &str) -> Option<String> {
    address
        .rsplit_once('@')
        .map(|(_, d)| d.trim_end_matches('.').to_ascii_lowercase())
        .filter(|d| !d.is_empty())
}
