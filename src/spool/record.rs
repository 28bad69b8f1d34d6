//! The on-disk record format of spool segments, in pure code (no I/O).
//!
//! A segment is a sequence of records. Each record is self-checking, so a scan after a crash
//! tells a torn tail (a write cut short, never acknowledged) from a damaged record in the
//! middle, and finds the records after damage again by their header and checksum
//! ([`scan`]):
//!
//! ```text
//! magic  u32 LE  "GNS1"
//! len    u32 LE  payload length
//! crc    u32 LE  CRC-32 of the payload
//! payload:
//!   received_at_ms u64 LE
//!   mail_from      u16 LE length + bytes
//!   rcpt count     u32 LE, then each: u16 LE length + bytes
//!   class          u16 LE length + bytes
//!   tenant         u16 LE length + bytes
//!   campaign       u16 LE length + bytes
//!   body           u32 LE length + bytes
//!   (optional, absent in records written before it existed)
//!   attr count     u16 LE, then each: key u16 LE length + bytes, value u16 LE length + bytes
//! ```
//!
//! Attributes carry what later stages add about a message (`message_id`, `variant`, `auth`,
//! ...) without another format change: unknown keys are kept and ignored.
//!
//! Sealed records (written when the spool has a key, `[spool] encrypt`, the default) carry
//! the same payload encrypted under the message's own key (`seal`):
//!
//! ```text
//! magic  u32 LE  "GNS2"
//! len    u32 LE  payload length
//! crc    u32 LE  CRC-32 of the payload after the key slot
//! payload:
//!   salt   32 bytes: the message key's salt (all zeros: shredded by an erasure)
//!   AES-256-GCM(message key, nonce 0) of the "GNS1" payload above, then its 16-byte tag
//! ```
//!
//! The checksum leaves the salt out so that erasure can zero it in place and the record stays
//! a well-formed record ([`Found::Shredded`]) that a scan steps over, not damage.
//!
//! Hand-written rather than serde/bincode: the format must stay readable by any later version
//! and carry its own framing and checksum; it is a dozen lines either way.

use super::seal::{SALT_LEN, SpoolKey, TAG_LEN};

/// Marks the start of a record.
pub const MAGIC: u32 = u32::from_le_bytes(*b"GNS1");
/// Marks the start of a sealed record.
pub const MAGIC_SEALED: u32 = u32::from_le_bytes(*b"GNS2");
/// Bytes before the payload: magic, length, CRC.
pub const HEADER_LEN: usize = 12;
/// Largest payload a record may carry (bodies are capped far lower by listeners).
pub const MAX_PAYLOAD: usize = 512 * 1024 * 1024;

/// Everything the spool stores about one message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MessageRecord {
    pub received_at_ms: u64,
    pub mail_from: String,
    pub rcpts: Vec<String>,
    pub class: String,
    pub tenant: String,
    pub campaign: String,
    pub body: Vec<u8>,
    /// Named extra fields (see the module doc); sorted by key when encoded.
    pub attrs: std::collections::BTreeMap<String, String>,
}

impl MessageRecord {
    /// An attribute's value, "" when absent.
    pub fn attr(&self, key: &str) -> &str {
        self.attrs.get(key).map_or("", String::as_str)
    }
}

/// Why a record could not be decoded.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum RecordError {
    #[error("record is truncated (needs {needed} bytes, {available} present)")]
    Truncated { needed: usize, available: usize },
    #[error("bad record magic {0:#010x}")]
    BadMagic(u32),
    #[error("record checksum mismatch")]
    BadChecksum,
    #[error("record payload is malformed: {0}")]
    Malformed(&'static str),
    #[error("record is sealed and no spool key was given")]
    NoKey,
    #[error("sealed record does not open with its key (changed bytes)")]
    Unsealable,
    #[error("record was shredded by an erasure (its key is destroyed)")]
    Shredded,
}

fn put_str16(out: &mut Vec<u8>, s: &str) {
    // Addresses and ids are bounded by the listeners far below 64 KiB; clamp rather than panic.
    let b = &s.as_bytes()[..s.len().min(u16::MAX as usize)];
    out.extend_from_slice(&(b.len() as u16).to_le_bytes());
    out.extend_from_slice(b);
}

fn approx_len(rec: &MessageRecord) -> usize {
    HEADER_LEN
        + SALT_LEN
        + TAG_LEN
        + 64
        + rec.mail_from.len()
        + rec.rcpts.iter().map(|r| r.len() + 2).sum::<usize>()
        + rec.class.len()
        + rec.tenant.len()
        + rec.campaign.len()
        + rec.body.len()
        + rec
            .attrs
            .iter()
            .map(|(k, v)| k.len() + v.len() + 4)
            .sum::<usize>()
}

/// Append the "GNS1" payload of `rec` to `out`.
fn put_payload(out: &mut Vec<u8>, rec: &MessageRecord) {
    out.extend_from_slice(&rec.received_at_ms.to_le_bytes());
    put_str16(out, &rec.mail_from);
    out.extend_from_slice(&(rec.rcpts.len() as u32).to_le_bytes());
    for r in &rec.rcpts {
        put_str16(out, r);
    }
    put_str16(out, &rec.class);
    put_str16(out, &rec.tenant);
    put_str16(out, &rec.campaign);
    out.extend_from_slice(&(rec.body.len() as u32).to_le_bytes());
    out.extend_from_slice(&rec.body);
    if !rec.attrs.is_empty() {
        out.extend_from_slice(&(rec.attrs.len().min(u16::MAX as usize) as u16).to_le_bytes());
        for (k, v) in rec.attrs.iter().take(u16::MAX as usize) {
            put_str16(out, k);
            put_str16(out, v);
        }
    }
}

/// Fill in the length and the CRC (of the payload from `crc_from` on) of a record in `out`.
fn finish_header(out: &mut [u8], crc_from: usize) {
    let payload_len = (out.len() - HEADER_LEN) as u32;
    let crc = crc32fast::hash(&out[crc_from..]);
    out[4..8].copy_from_slice(&payload_len.to_le_bytes());
    out[8..12].copy_from_slice(&crc.to_le_bytes());
}

/// Encode a record (header + payload) ready to append to a segment.
pub fn encode(rec: &MessageRecord) -> Vec<u8> {
    let mut out = Vec::with_capacity(approx_len(rec));
    out.extend_from_slice(&MAGIC.to_le_bytes());
    out.extend_from_slice(&[0u8; 8]); // length and CRC, filled below
    put_payload(&mut out, rec);
    finish_header(&mut out, HEADER_LEN);
    out
}

/// Encode a sealed record under a new message key (a random salt) of `key`: the payload is
/// written once and encrypted in place (one AEAD pass, no copy of the body).
pub fn encode_sealed(rec: &MessageRecord, key: &SpoolKey) -> Vec<u8> {
    let salt: [u8; SALT_LEN] = rand::random();
    let mut out = Vec::with_capacity(approx_len(rec));
    out.extend_from_slice(&MAGIC_SEALED.to_le_bytes());
    out.extend_from_slice(&[0u8; 8]);
    out.extend_from_slice(&salt);
    let start = out.len();
    put_payload(&mut out, rec);
    let tag = key.seal_record(&salt, &mut out[start..]);
    out.extend_from_slice(tag.as_ref());
    finish_header(&mut out, start);
    out
}

/// Read the header at the start of `buf`: returns the whole record length (header + payload).
pub fn record_len(buf: &[u8]) -> Result<usize, RecordError> {
    if buf.len() < HEADER_LEN {
        return Err(RecordError::Truncated {
            needed: HEADER_LEN,
            available: buf.len(),
        });
    }
    let magic = u32::from_le_bytes(buf[0..4].try_into().expect("4 bytes"));
    if magic != MAGIC && magic != MAGIC_SEALED {
        return Err(RecordError::BadMagic(magic));
    }
    let len = u32::from_le_bytes(buf[4..8].try_into().expect("4 bytes")) as usize;
    if len > MAX_PAYLOAD {
        return Err(RecordError::Malformed("payload length beyond limit"));
    }
    if magic == MAGIC_SEALED && len < SALT_LEN + TAG_LEN {
        return Err(RecordError::Malformed(
            "sealed payload shorter than salt and tag",
        ));
    }
    Ok(HEADER_LEN + len)
}

struct Reader<'a> {
    buf: &'a [u8],
}

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> Result<&'a [u8], RecordError> {
        if self.buf.len() < n {
            return Err(RecordError::Malformed("field runs past the payload"));
        }
        let (head, tail) = self.buf.split_at(n);
        self.buf = tail;
        Ok(head)
    }
    fn u16(&mut self) -> Result<usize, RecordError> {
        Ok(u16::from_le_bytes(self.take(2)?.try_into().expect("2 bytes")) as usize)
    }
    fn u32(&mut self) -> Result<usize, RecordError> {
        Ok(u32::from_le_bytes(self.take(4)?.try_into().expect("4 bytes")) as usize)
    }
    fn u64(&mut self) -> Result<u64, RecordError> {
        Ok(u64::from_le_bytes(
            self.take(8)?.try_into().expect("8 bytes"),
        ))
    }
    fn str16(&mut self) -> Result<String, RecordError> {
        let n = self.u16()?;
        String::from_utf8(self.take(n)?.to_vec()).map_err(|_| RecordError::Malformed("not UTF-8"))
    }
}

/// Check the length and checksum of the record at the start of `buf`; its total length and
/// whether it is sealed.
fn check(buf: &[u8]) -> Result<(usize, bool), RecordError> {
    let total = record_len(buf)?;
    if buf.len() < total {
        return Err(RecordError::Truncated {
            needed: total,
            available: buf.len(),
        });
    }
    let sealed = buf[0..4] == MAGIC_SEALED.to_le_bytes();
    let crc_from = if sealed {
        HEADER_LEN + SALT_LEN
    } else {
        HEADER_LEN
    };
    let crc = u32::from_le_bytes(buf[8..12].try_into().expect("4 bytes"));
    if crc32fast::hash(&buf[crc_from..total]) != crc {
        return Err(RecordError::BadChecksum);
    }
    Ok((total, sealed))
}

/// The salt of a checked sealed record; [`RecordError::Shredded`] when it was zeroed.
fn salt_of(buf: &[u8]) -> Result<[u8; SALT_LEN], RecordError> {
    let salt: [u8; SALT_LEN] = buf[HEADER_LEN..HEADER_LEN + SALT_LEN]
        .try_into()
        .expect("checked length");
    if salt == [0; SALT_LEN] {
        return Err(RecordError::Shredded);
    }
    Ok(salt)
}

/// Decode one whole plain record (as returned by [`encode`]), checking magic, length and CRC.
/// A sealed record needs [`decode_with`].
pub fn decode(buf: &[u8]) -> Result<MessageRecord, RecordError> {
    decode_with(buf, None)
}

/// Decode one whole record, plain or sealed (opened with `key`). A shredded record is
/// [`RecordError::Shredded`]. Copies a sealed payload to open it; [`decode_owned`] does not.
pub fn decode_with(buf: &[u8], key: Option<&SpoolKey>) -> Result<MessageRecord, RecordError> {
    let (total, sealed) = check(buf)?;
    if !sealed {
        return parse_payload(&buf[HEADER_LEN..total]);
    }
    let salt = salt_of(buf)?;
    let key = key.ok_or(RecordError::NoKey)?;
    let mut sealed_part = buf[HEADER_LEN + SALT_LEN..total].to_vec();
    let plain = key
        .open_record(&salt, &mut sealed_part)
        .ok_or(RecordError::Unsealable)?;
    parse_payload(plain)
}

/// [`decode_with`] of a buffer holding exactly one record, opened in place (the read path of
/// a delivery: no copy besides the body's own).
pub fn decode_owned(
    mut buf: Vec<u8>,
    key: Option<&SpoolKey>,
) -> Result<MessageRecord, RecordError> {
    let (total, sealed) = check(&buf)?;
    if !sealed {
        return parse_payload(&buf[HEADER_LEN..total]);
    }
    let salt = salt_of(&buf)?;
    let key = key.ok_or(RecordError::NoKey)?;
    let plain = key
        .open_record(&salt, &mut buf[HEADER_LEN + SALT_LEN..total])
        .ok_or(RecordError::Unsealable)?;
    parse_payload(plain)
}

/// The fields of a "GNS1" payload.
fn parse_payload(payload: &[u8]) -> Result<MessageRecord, RecordError> {
    let mut r = Reader { buf: payload };
    let received_at_ms = r.u64()?;
    let mail_from = r.str16()?;
    let n = r.u32()?;
    if n > 1_000_000 {
        return Err(RecordError::Malformed("recipient count beyond limit"));
    }
    let mut rcpts = Vec::with_capacity(n.min(payload.len() / 2));
    for _ in 0..n {
        rcpts.push(r.str16()?);
    }
    let class = r.str16()?;
    let tenant = r.str16()?;
    let campaign = r.str16()?;
    let body_len = r.u32()?;
    let body = r.take(body_len)?.to_vec();
    let mut attrs = std::collections::BTreeMap::new();
    if !r.buf.is_empty() {
        let n = r.u16()?;
        for _ in 0..n {
            let k = r.str16()?;
            let v = r.str16()?;
            attrs.insert(k, v);
        }
    }
    Ok(MessageRecord {
        received_at_ms,
        mail_from,
        rcpts,
        class,
        tenant,
        campaign,
        body,
        attrs,
    })
}

/// Zero the salt of the sealed record that starts at `buf` (a copy of its first bytes is
/// enough): the offset inside the record and the bytes to write there, so the caller can
/// overwrite them in the segment file. None for a plain record (nothing to destroy).
pub fn shred_patch(buf: &[u8]) -> Option<(usize, [u8; SALT_LEN])> {
    (buf.get(0..4)? == MAGIC_SEALED.to_le_bytes()).then_some((HEADER_LEN, [0; SALT_LEN]))
}

/// What a scan of a segment's bytes found at one place.
#[derive(Debug, PartialEq, Eq)]
pub enum Found {
    /// A whole, valid record of `len` bytes at `offset`.
    Record {
        offset: usize,
        len: usize,
        record: MessageRecord,
    },
    /// `len` bytes at `offset` that are not a valid record although the file goes on past
    /// them: a damaged record (it was acknowledged once; the operator must be told).
    Damaged {
        offset: usize,
        len: usize,
        error: RecordError,
    },
    /// An incomplete record at the end of the file: a write cut short by a crash, which was
    /// never acknowledged.
    TornTail { offset: usize, error: RecordError },
    /// A whole sealed record whose key an erasure destroyed: nothing to deliver or report.
    Shredded { offset: usize, len: usize },
}

/// A valid record (magic, length, checksum and fields) at the start of `buf`? None for a
/// shredded one (valid, but nothing in it can be read).
fn record_at(
    buf: &[u8],
    key: Option<&SpoolKey>,
) -> Result<(usize, Option<MessageRecord>), RecordError> {
    let len = record_len(buf)?;
    match decode_with(&buf[..len.min(buf.len())], key) {
        Ok(rec) => Ok((len, Some(rec))),
        Err(RecordError::Shredded) => Ok((len, None)),
        Err(e) => Err(e),
    }
}

/// Where the next valid record after a bad one at `off` starts, if any. The bad record's own
/// length is tried first (a damaged payload leaves the header intact), so a scan does not
/// look inside a body that happens to contain record-like bytes; then every later `MAGIC`.
fn resync(data: &[u8], off: usize, key: Option<&SpoolKey>) -> Option<usize> {
    if let Ok(len) = record_len(&data[off..]) {
        let next = off + len;
        if next < data.len() && record_at(&data[next..], key).is_ok() {
            return Some(next);
        }
    }
    let magic = MAGIC.to_le_bytes();
    let sealed = MAGIC_SEALED.to_le_bytes();
    (off + 1..data.len().saturating_sub(HEADER_LEN - 1)).find(|&i| {
        (data[i..i + 4] == magic || data[i..i + 4] == sealed) && record_at(&data[i..], key).is_ok()
    })
}

/// Whether the unreadable bytes from `off` to the end look like a write cut short: fewer bytes
/// than a header, a header whose record would end past the file, or zeros (space the file
/// system allocated but the crash left unwritten). Anything else is damage.
fn is_torn_tail(rest: &[u8], error: &RecordError) -> bool {
    matches!(error, RecordError::Truncated { .. }) || rest.iter().all(|&b| b == 0)
}

/// Split a segment's bytes into records, damaged stretches and a torn tail, in file order.
/// One damaged record does not hide the records after it: the scan finds the next valid
/// record header and checksum and goes on from there.
/// Sealed records are damage to a scan without a key: see [`scan_with`].
pub fn scan(data: &[u8]) -> Vec<Found> {
    scan_with(data, None)
}

/// [`scan`] opening sealed records with `key`.
pub fn scan_with(data: &[u8], key: Option<&SpoolKey>) -> Vec<Found> {
    let mut found = Vec::new();
    let mut off = 0;
    while off < data.len() {
        match record_at(&data[off..], key) {
            Ok((len, Some(record))) => {
                found.push(Found::Record {
                    offset: off,
                    len,
                    record,
                });
                off += len;
            }
            Ok((len, None)) => {
                found.push(Found::Shredded { offset: off, len });
                off += len;
            }
            Err(error) => match resync(data, off, key) {
                Some(next) => {
                    found.push(Found::Damaged {
                        offset: off,
                        len: next - off,
                        error,
                    });
                    off = next;
                }
                None => {
                    let rest = &data[off..];
                    found.push(if is_torn_tail(rest, &error) {
                        Found::TornTail { offset: off, error }
                    } else {
                        Found::Damaged {
                            offset: off,
                            len: rest.len(),
                            error,
                        }
                    });
                    break;
                }
            },
        }
    }
    found
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> MessageRecord {
        MessageRecord {
            received_at_ms: 1_700_000_000_000,
            mail_from: "a@b.test".into(),
            rcpts: vec!["x@y.test".into(), "δοκιμή@παράδειγμα.test".into()],
            class: "promotional".into(),
            tenant: "t1".into(),
            campaign: "".into(),
            body: b"Subject: hi\r\n\r\n\xe2\x82\xac body\r\n".to_vec(),
            attrs: Default::default(),
        }
    }

    #[test]
    fn attributes_round_trip_and_old_records_read_without_them() {
        let mut rec = sample();
        let old = encode(&rec);
        assert!(decode(&old).unwrap().attrs.is_empty());
        rec.attrs.insert("message_id".into(), "x@y".into());
        rec.attrs.insert("variant".into(), "B".into());
        let enc = encode(&rec);
        assert_eq!(decode(&enc).unwrap(), rec);
        assert_eq!(decode(&enc).unwrap().attr("variant"), "B");
        assert_eq!(decode(&enc).unwrap().attr("nope"), "");
    }

    #[test]
    fn round_trips() {
        let enc = encode(&sample());
        assert_eq!(record_len(&enc).unwrap(), enc.len());
        assert_eq!(decode(&enc).unwrap(), sample());
    }

    #[test]
    fn torn_tail_is_truncated_not_garbage() {
        let enc = encode(&sample());
        for cut in [0, 5, HEADER_LEN, enc.len() - 1] {
            assert!(matches!(
                decode(&enc[..cut]),
                Err(RecordError::Truncated { .. })
            ));
        }
    }

    #[test]
    fn flipped_bit_is_detected() {
        let mut enc = encode(&sample());
        let last = enc.len() - 3;
        enc[last] ^= 0x40;
        assert_eq!(decode(&enc), Err(RecordError::BadChecksum));
    }

    fn sample_n(n: u8) -> MessageRecord {
        let mut r = sample();
        r.mail_from = format!("s{n}@b.test");
        r
    }

    /// (kind, offset, length) of one thing `scan` found.
    type Shape = (&'static str, usize, usize);

    /// Kinds and offsets of what `scan` found, for compact table rows.
    fn shape(found: &[Found]) -> Vec<Shape> {
        found
            .iter()
            .map(|f| match f {
                Found::Record { offset, len, .. } => ("record", *offset, *len),
                Found::Damaged { offset, len, .. } => ("damaged", *offset, *len),
                Found::TornTail { offset, .. } => ("torn", *offset, 0),
                Found::Shredded { offset, len } => ("shredded", *offset, *len),
            })
            .collect()
    }

    /// Issue 15 item 1: one damaged record lost every later record of its segment. Whatever
    /// byte of the first of three records is changed, the other two are found and the first
    /// is reported as damaged (never as a torn tail).
    #[test]
    fn damaged_record_does_not_hide_the_records_after_it() {
        let recs: Vec<Vec<u8>> = (1..=3).map(|n| encode(&sample_n(n))).collect();
        let (a, b) = (recs[0].len(), recs[1].len());
        let data: Vec<u8> = recs.concat();
        for pos in 0..a {
            let mut bad = data.clone();
            bad[pos] ^= 0x5a;
            let found = scan(&bad);
            let s = shape(&found);
            assert_eq!(
                s,
                vec![
                    ("damaged", 0, a),
                    ("record", a, b),
                    ("record", a + b, recs[2].len())
                ],
                "byte {pos} changed"
            );
            let Found::Record { record, .. } = &found[2] else {
                unreachable!()
            };
            assert_eq!(record, &sample_n(3));
        }
    }

    #[test]
    fn scan_table() {
        let r1 = encode(&sample_n(1));
        let r2 = encode(&sample_n(2));
        let (a, b) = (r1.len(), r2.len());
        let mut mid_bad = [r1.clone(), r2.clone(), r1.clone()].concat();
        mid_bad[a + 20] ^= 1;
        let mut last_bad = [r1.clone(), r2.clone()].concat();
        last_bad[a + b - 2] ^= 1;
        let mut garbage_between = r1.clone();
        garbage_between.extend_from_slice(b"GNS1 not a record at all, just noise");
        garbage_between.extend_from_slice(&r2);
        let cases: Vec<(&str, Vec<u8>, Vec<Shape>)> = vec![
            ("empty", vec![], vec![]),
            (
                "two good",
                [r1.clone(), r2.clone()].concat(),
                vec![("record", 0, a), ("record", a, b)],
            ),
            (
                "torn tail (cut inside the payload)",
                [&r1[..], &r2[..b - 5]].concat(),
                vec![("record", 0, a), ("torn", a, 0)],
            ),
            (
                "torn tail (cut inside the header)",
                [&r1[..], &r2[..7]].concat(),
                vec![("record", 0, a), ("torn", a, 0)],
            ),
            (
                "zeros after the last record",
                [&r1[..], &[0u8; 300][..]].concat(),
                vec![("record", 0, a), ("torn", a, 0)],
            ),
            (
                "damaged record in the middle",
                mid_bad,
                vec![("record", 0, a), ("damaged", a, b), ("record", a + b, a)],
            ),
            (
                "complete last record with a bad checksum is damage, not a torn tail",
                last_bad,
                vec![("record", 0, a), ("damaged", a, b)],
            ),
            (
                "noise between records",
                garbage_between,
                vec![("record", 0, a), ("damaged", a, 36), ("record", a + 36, b)],
            ),
        ];
        for (name, data, want) in cases {
            assert_eq!(shape(&scan(&data)), want, "{name}");
        }
    }

    fn key() -> SpoolKey {
        SpoolKey::new(crate::sendlog::MasterKey::from_bytes([7; 32]))
    }

    /// Sealed records: nothing of the envelope or body in clear, round trip with the key, a
    /// changed byte is damage, a zeroed salt is a shredded record the scan steps over.
    #[test]
    fn sealed_records_round_trip_and_shred_in_place() {
        let k = key();
        let a = encode_sealed(&sample_n(1), &k);
        let b = encode_sealed(&sample_n(2), &k);
        assert!(!a.windows(8).any(|w| w == b"s1@b.tes" || w == b"x@y.test"));
        assert_eq!(decode_with(&a, Some(&k)).unwrap(), sample_n(1));
        assert_eq!(decode_owned(a.clone(), Some(&k)).unwrap(), sample_n(1));
        assert_eq!(decode(&a), Err(RecordError::NoKey));
        let other = SpoolKey::new(crate::sendlog::MasterKey::from_bytes([8; 32]));
        assert_eq!(decode_with(&a, Some(&other)), Err(RecordError::Unsealable));
        // Shred the first record in place.
        let mut data = [a.clone(), b.clone()].concat();
        let (at, zeros) = shred_patch(&data).unwrap();
        data[at..at + zeros.len()].copy_from_slice(&zeros);
        assert_eq!(
            decode_with(&data[..a.len()], Some(&k)),
            Err(RecordError::Shredded)
        );
        assert_eq!(
            shape(&scan_with(&data, Some(&k))),
            vec![("shredded", 0, a.len()), ("record", a.len(), b.len())]
        );
        // A changed byte of a sealed payload is damage, and does not hide the next record.
        let mut bad = [a.clone(), b.clone()].concat();
        bad[HEADER_LEN + SALT_LEN + 3] ^= 1;
        assert_eq!(
            shape(&scan_with(&bad, Some(&k))),
            vec![("damaged", 0, a.len()), ("record", a.len(), b.len())]
        );
        // Plain records are never patched.
        assert_eq!(shred_patch(&encode(&sample())), None);
    }

    #[test]
    fn zeroed_region_is_bad_magic() {
        assert_eq!(decode(&[0u8; 64]), Err(RecordError::BadMagic(0)));
    }
}
