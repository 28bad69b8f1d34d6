//! Encryption at rest of what the spool writes: one AES-256-GCM key per message, derived from
//! the master key (`[storage] key_file`, loaded by `sendlog::keys::MasterKey`) and a random
//! 32-byte salt that the record itself carries in a fixed slot (see `record`'s format).
//!
//! Owns: deriving a message's key from its salt (HMAC-SHA256 as the KDF, label
//! `gannet/v1/spool-message`), sealing and opening a record's payload in place (one AEAD pass,
//! no copy), sealing the small owed-DSN data of the state journal and index under a spool-wide
//! state key (random nonce), and the fingerprint written to `key-check` so a different master
//! key is an error at open, never a spool full of "damaged" records.
//!
//! Why per message and salt in the record: destroying a key must really remove its bytes.
//! sled keeps deleted values in its files for long (CRATES.md), a key table would too; the
//! salt's 32 bytes sit at a known offset of a segment file Gannet writes itself, so erasure
//! overwrites them in place (`pwrite` of zeros + `fdatasync`): the rest of the record (the
//! sealed envelope and body) can then no longer be opened by anyone, master key or not.
//!
//! Never does: read or write files, choose what to shred (`Spool::shred_recipient` does).

use aws_lc_rs::aead::{Aad, LessSafeKey, NONCE_LEN, Nonce, Tag};

use crate::sendlog::MasterKey;
use crate::sendlog::keys::{SealKey, aes_key};

/// Length of a message's salt (the record's key slot).
pub const SALT_LEN: usize = 32;
/// Length of the AES-GCM tag after a sealed payload.
pub const TAG_LEN: usize = 16;

/// Bound into every sealed record (associated data): a record sealed for another purpose or
/// format version does not open as a spool record.
const RECORD_AAD: &[u8] = b"gannet/v1/spool-record";
const STATE_AAD: &[u8] = b"gannet/v1/spool-state";

/// The spool's keys: the master key (per-message keys come from it) and the state key.
/// Cheap to share behind an `Arc`.
pub struct SpoolKey {
    master: MasterKey,
    state: SealKey,
}

impl std::fmt::Debug for SpoolKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("SpoolKey(..)")
    }
}

impl SpoolKey {
    pub fn new(master: MasterKey) -> SpoolKey {
        let state = master.seal_key(b"gannet/v1/spool-state", &[]);
        SpoolKey { master, state }
    }

    /// What `key-check` holds: shows which master key wrote the spool, reveals nothing.
    pub fn fingerprint(&self) -> [u8; 32] {
        self.master.derive(b"gannet/v1/spool-key-check", &[])
    }

    fn message_key(&self, salt: &[u8; SALT_LEN]) -> LessSafeKey {
        aes_key(&self.master.derive(b"gannet/v1/spool-message", salt))
    }

    /// Seal `buf` in place under the key of `salt`. The key is used for this one record,
    /// so a fixed nonce is safe.
    pub fn seal_record(&self, salt: &[u8; SALT_LEN], buf: &mut [u8]) -> Tag {
        self.message_key(salt)
            .seal_in_place_separate_tag(
                Nonce::assume_unique_for_key([0; NONCE_LEN]),
                Aad::from(RECORD_AAD),
                buf,
            )
            .expect("AES-GCM seal of a record within the format's size limit")
    }

    /// Open `buf` (ciphertext then tag) in place; the plaintext, or None when it was not
    /// sealed under the key of `salt` or was changed.
    pub fn open_record<'a>(&self, salt: &[u8; SALT_LEN], buf: &'a mut [u8]) -> Option<&'a [u8]> {
        self.message_key(salt)
            .open_in_place(
                Nonce::assume_unique_for_key([0; NONCE_LEN]),
                Aad::from(RECORD_AAD),
                buf,
            )
            .ok()
            .map(|p| &*p)
    }

    /// `nonce || ciphertext || tag` of small state data (owed DSNs: replies and hosts).
    pub fn seal_state(&self, plain: &[u8]) -> Vec<u8> {
        self.state.seal(STATE_AAD, plain)
    }

    /// The inverse of [`SpoolKey::seal_state`].
    pub fn open_state(&self, sealed: &[u8]) -> Option<Vec<u8>> {
        self.state.open(STATE_AAD, sealed)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_record_opens_only_with_its_salt_and_unchanged() {
        let k = SpoolKey::new(MasterKey::from_bytes([3; 32]));
        let salt = [9u8; SALT_LEN];
        let mut buf = b"rcpt@example.test".to_vec();
        let tag = k.seal_record(&salt, &mut buf);
        assert_ne!(&buf[..], b"rcpt@example.test");
        buf.extend_from_slice(tag.as_ref());
        assert_eq!(
            k.open_record(&salt, &mut buf.clone()),
            Some(&b"rcpt@example.test"[..])
        );
        assert_eq!(k.open_record(&[0; SALT_LEN], &mut buf.clone()), None);
        let other = SpoolKey::new(MasterKey::from_bytes([4; 32]));
        assert_eq!(other.open_record(&salt, &mut buf.clone()), None);
        buf[0] ^= 1;
        assert_eq!(k.open_record(&salt, &mut buf), None);
    }

    #[test]
    fn state_round_trips_and_hides_the_text() {
        let k = SpoolKey::new(MasterKey::from_bytes([3; 32]));
        let s = k.seal_state(b"550 5.1.1 <x@y.test> unknown");
        assert!(!s.windows(3).any(|w| w == b"x@y"));
        assert_eq!(
            k.open_state(&s).as_deref(),
            Some(&b"550 5.1.1 <x@y.test> unknown"[..])
        );
        assert_eq!(
            SpoolKey::new(MasterKey::from_bytes([5; 32])).open_state(&s),
            None
        );
    }
}
