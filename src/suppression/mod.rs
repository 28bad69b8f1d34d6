//! Suppression: who must not receive mail, and the signed one-click unsubscribe token.
//!
//! Owns: the unsubscribe token format (`token`), shared by injection (which puts tokens into
//! `List-Unsubscribe`) and the unsubscribe endpoint (which verifies them). Never sends mail and
//! never reads the spool.

pub mod token;
