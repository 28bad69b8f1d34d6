//! Encryption at rest of the outbox's lines: each event's JSON is sealed (AES-256-GCM, random
//! nonce) under the outbox key, derived from the master key (`[storage] key_file`, loaded by
//! `sendlog::keys::MasterKey`) with the label `gannet/v1/outbox-line`, and written as one text
//! line: `!` then standard base64 of `nonce ‖ ciphertext ‖ tag`.
//!
//! Owns: the line forms and turning one into the other. A line is one of
//! - `{...}`: an event in clear, written by versions before sealing (still read and shipped);
//! - `!BASE64`: a sealed event;
//! - `#####`: a shredded event (erasure overwrote it in place, same length): skipped.
//!
//! Why one outbox-wide key and not a key per person: erasure does not need to destroy a key
//! here, because the outbox is a set of files Gannet writes itself and holds an event only
//! until every destination has passed it. Erasure overwrites the person's pending lines in
//! place (`Outbox::shred`), which removes their bytes for good (on file systems that write
//! in place), and keeps every position and count the cursors rely on.
//! Never does: read or write files.

use base64::Engine;
use base64::engine::general_purpose::STANDARD;

use crate::sendlog::MasterKey;
use crate::sendlog::keys::SealKey;

const LABEL: &[u8] = b"gannet/v1/outbox-line";

/// First byte of a sealed line.
pub const SEALED: u8 = b'!';
/// The byte a shredded line is filled with.
pub const SHREDDED: u8 = b'#';

/// The outbox key. Cheap to share behind an `Arc`.
pub struct LineKey {
    key: SealKey,
    /// The purpose, bound into every seal (associated data): a line sealed for one store
    /// does not open in another.
    label: &'static [u8],
}

impl std::fmt::Debug for LineKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("LineKey(..)")
    }
}

/// What a line of the outbox holds.
#[derive(Debug, PartialEq, Eq)]
pub enum Opened {
    /// The event's JSON.
    Event(Vec<u8>),
    /// Overwritten by an erasure: nothing to ship.
    Shredded,
    /// Cannot be opened (damaged, or sealed under another key).
    Damaged,
}

impl LineKey {
    /// The outbox's key.
    pub fn new(master: &MasterKey) -> LineKey {
        LineKey::with_label(master, LABEL)
    }

    /// The key of another store of one-line records (the idempotency file's answers), derived
    /// under its own `label`.
    pub fn with_label(master: &MasterKey, label: &'static [u8]) -> LineKey {
        LineKey {
            key: master.seal_key(label, &[]),
            label,
        }
    }

    /// Append the sealed line of `json` (without the newline) to `out`.
    pub fn seal_into(&self, json: &[u8], out: &mut Vec<u8>) {
        let sealed = self.key.seal(self.label, json);
        out.push(SEALED);
        encode_into(&sealed, out);
    }

    /// What `line` (without its newline) holds.
    pub fn open(&self, line: &[u8]) -> Opened {
        match line.first() {
            Some(b'{') => Opened::Event(line.to_vec()),
            Some(&SHREDDED) => Opened::Shredded,
            Some(&SEALED) => STANDARD
                .decode(&line[1..])
                .ok()
                .and_then(|b| self.key.open_vec(self.label, b))
                .map_or(Opened::Damaged, Opened::Event),
            _ => Opened::Damaged,
        }
    }
}

/// Append the base64 text of `input` to `out` (no intermediate `String`).
fn encode_into(input: &[u8], out: &mut Vec<u8>) {
    let start = out.len();
    out.resize(start + input.len().div_ceil(3) * 4, 0);
    let n = STANDARD.encode_slice(input, &mut out[start..]).unwrap_or(0);
    out.truncate(start + n);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lines_round_trip_and_hide_the_event() {
        let k = LineKey::new(&MasterKey::from_bytes([2; 32]));
        let json = br#"{"type":"delivered","recipient":"erin@x.test"}"#;
        let mut line = Vec::new();
        k.seal_into(json, &mut line);
        assert_eq!(line[0], SEALED);
        assert!(!line.contains(&b'\n'));
        assert!(!line.windows(4).any(|w| w == b"erin"));
        assert_eq!(k.open(&line), Opened::Event(json.to_vec()));
        let other = LineKey::new(&MasterKey::from_bytes([3; 32]));
        assert_eq!(other.open(&line), Opened::Damaged);
        assert_eq!(k.open(b"#####"), Opened::Shredded);
        assert_eq!(
            k.open(json),
            Opened::Event(json.to_vec()),
            "older clear lines"
        );
    }
}
