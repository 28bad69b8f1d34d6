//! Delivery: resolving where a domain's mail goes and speaking SMTP to it.
//!
//! Owns: MX resolution ([`mx`]), the outbound SMTP client ([`client`]) and reply semantics
//! ([`reply`]). The queue decides what to send when; this module only carries it out and
//! reports per-recipient outcomes.

pub mod client;
pub mod mx;
pub mod reply;

pub use client::{ClientError, ClientOptions, Connection};
pub use mx::{Destination, MxResolver, ResolveError};
pub use reply::{Outcome, Reply};

/// A TLS connector for opportunistic STARTTLS: encrypts, does not verify certificates (there
/// is no way to know which name an MX should present without DANE/MTA-STS).
pub fn opportunistic_tls_connector() -> Result<tokio_rustls::TlsConnector, String> {
    mail_send::smtp::tls::build_tls_connector(true)
}
