//! Mail authentication: DKIM signing of outgoing mail, checks that a sending domain's DNS is
//! ready for Gannet to send as it, and SPF/DKIM/DMARC verification of inbound mail.
//!
//! Owns: DKIM keys (loading, generation, public records: [`keys`]), the signer intake calls once
//! per message ([`DkimSigner`]), the domain checks behind `gannet check-domain` and the periodic
//! `gannet_domain_check_ok` gauge ([`check_domain`], [`run_periodic_checks`], the newest result
//! per domain in [`DomainChecks`] for the console), and inbound
//! verification producing `Authentication-Results:` ([`Verifier`], [`verify`]).
//!
//! Never: writes the spool, talks SMTP, or changes a message (the signer returns header lines
//! for intake to prepend). DNS is only asked through the resolver built from `[dns]`.
//!
//! mail-auth 0.13 does the protocol work except DKIM body canonicalisation, which [`canon`]
//! does for signing and verifying alike (mail-auth#62).

pub mod canon;
pub mod check;
pub mod check_status;
pub mod dns;
pub mod fields;
pub mod keys;
pub mod names;
pub mod signer;
pub mod verify;

pub use check::{CheckError, CheckKind, DomainReport, Finding, check_domain, run_periodic_checks};
pub use check_status::{DomainChecks, LastCheck};
pub use keys::{DnsRecord, KeyAlgorithm, KeyProblem, KeygenError, keygen};
pub use signer::{DEFAULT_SIGNED_HEADERS, DkimError, DkimSigner};
pub use verify::{AuthResult, AuthResults, Verifier, verify};

#[cfg(test)]
pub(crate) mod testdns;
