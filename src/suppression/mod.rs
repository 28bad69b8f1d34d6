//! Suppression: who must not receive mail, why, and in which scope; and the signed one-click
//! unsubscribe token.
//!
//! Owns: the list (`store`: the [`SuppressionStore`] seam and its embedded SQLite default, whose
//! checks read the in-memory `index`; `migrate` copies stores of earlier sled layouts), the
//! policy that fills it from events (`policy`: a durable event subscriber) and the unsubscribe
//! token format (`token`), shared by injection (which puts tokens into `List-Unsubscribe`) and
//! the unsubscribe endpoint (which verifies them), and the CSV/JSONL line formats of bulk
//! import and export (`transfer`). Never sends mail and never reads the spool;
//! the stages that refuse or drop mail ask the store through a [`SharedStore`] handle.

mod index;
mod migrate;
pub mod policy;
mod slots;
pub mod store;
pub mod token;
pub mod transfer;

#[cfg(test)]
mod tests;

pub use store::{
    ALL_TENANTS, ERASED_REASON, Entry, ListFilter, Lookup, Page, SqliteStore, StoreError,
    SuppressionStore, normalize,
};

/// The handle stages hold (cheap to clone; a cluster backend can stand behind it).
pub type SharedStore = std::sync::Arc<dyn SuppressionStore>;
