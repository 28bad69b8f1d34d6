//! VERP return paths: each delivery's envelope sender becomes `b-<token>@<[bounce] domain>`,
//! where the token names exactly one send (queue id + recipient index) and carries an HMAC, so
//! an asynchronous bounce maps back to that send and a forged or altered token maps to nothing.
//!
//! Owns [`VerpKey`] (from `[bounce] secret`, else `[bounce] key_file`, default `bounce.key` in
//! the spool directory, created 0600), [`VerpKey::address`] and [`VerpKey::decode`]. Pure code
//! apart from reading/creating the key file at start. Never decides where a DSN goes: Gannet's
//! own DSNs are addressed from the spool record's `mail_from`, never from the VERP address.
//!
//! Token = lower-case RFC 4648 base32 (no padding) of `varint(segment) || varint(offset) ||
//! varint(recipient index) || tag`, tag = the first 10 bytes of HMAC-SHA256(key,
//! `"gannet verp v1" || payload`). Why 80 bits is enough: a forger gets no oracle but our own
//! listener, one guess per SMTP transaction; at a million guesses a second, the expected time to
//! hit one valid tag for a chosen send is 2^79 / 10^6 s ≈ 19 billion years. Base32 because local
//! parts are compared case-insensitively by many MTAs (base64 would not survive that); typical
//! tokens are 24 characters, well inside the 64 of a local part.

use std::io::Write;
use std::path::{Path, PathBuf};

use aws_lc_rs::{constant_time, hkdf, hmac, rand::SecureRandom, rand::SystemRandom};

use crate::config::Config;
use crate::spool::MsgKey;

/// Bytes of HMAC-SHA256 kept in a token (80 bits; see the module doc).
pub const TAG_LEN: usize = 10;
const KEY_LEN: usize = 32;
const DOMAIN_SEPARATOR: &[u8] = b"gannet verp v1";
/// Local-part prefix of VERP addresses.
pub const PREFIX: &str = "b-";

/// Why the VERP key could not be loaded.
#[derive(Debug, thiserror::Error)]
pub enum VerpError {
    #[error(
        "bounce key file {path}: {message} (it must hold 64 hex characters or 32 raw bytes; delete it to have Gannet create a new one, which invalidates return paths of mail already sent)"
    )]
    KeyFile { path: PathBuf, message: String },
    #[error("cannot create bounce key file {path}: {source} (check the directory's permissions)")]
    KeyCreate {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("no random bytes for a new bounce key")]
    Random,
}

/// What a valid token names: one recipient of one spooled message.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct VerpTarget {
    pub key: MsgKey,
    /// Index into the message's recipients.
    pub rcpt: u32,
}

/// The HMAC key of VERP tokens and the bounce domain. Cheap to clone.
#[derive(Clone)]
pub struct VerpKey {
    key: hmac::Key,
    domain: String,
}

impl std::fmt::Debug for VerpKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "VerpKey({})", self.domain)
    }
}

impl VerpKey {
    /// A key from 32 bytes, for `domain`.
    pub fn from_bytes(bytes: &[u8; KEY_LEN], domain: &str) -> VerpKey {
        VerpKey {
            key: hmac::Key::new(hmac::HMAC_SHA256, bytes),
            domain: domain.to_ascii_lowercase(),
        }
    }

    /// A key derived from a shared secret (HKDF-SHA256, fixed salt and info), so every node of a
    /// cluster that shares the secret accepts the same tokens.
    pub fn from_secret(secret: &str, domain: &str) -> VerpKey {
        let salt = hkdf::Salt::new(hkdf::HKDF_SHA256, b"gannet verp salt");
        let prk = salt.extract(secret.as_bytes());
        let info: &[&[u8]] = &[b"gannet verp key v1"];
        let mut out = [0u8; KEY_LEN];
        prk.expand(info, hkdf::HKDF_SHA256)
            .and_then(|okm| okm.fill(&mut out))
            .expect("HKDF-SHA256 can produce 32 bytes");
        VerpKey::from_bytes(&out, domain)
    }

    /// The key `[bounce]` configures, or None when `[bounce] domain` is not set (no VERP).
    /// Reads (or creates) a small file: call it at start, off the async runtime.
    pub fn from_config(config: &Config) -> Result<Option<VerpKey>, VerpError> {
        let Some(domain) = config.bounce.domain.as_deref() else {
            return Ok(None);
        };
        if let Some(secret) = &config.bounce.secret {
            return Ok(Some(VerpKey::from_secret(secret, domain)));
        }
        let path = match &config.bounce.key_file {
            Some(p) => config.resolve_path(p),
            None => config.resolve_path(&config.spool.path).join("bounce.key"),
        };
        let bytes = load_or_create(&path)?;
        Ok(Some(VerpKey::from_bytes(&bytes, domain)))
    }

    /// The bounce domain (lower case).
    pub fn domain(&self) -> &str {
        &self.domain
    }

    /// The token for one recipient of one message.
    pub fn token(&self, target: VerpTarget) -> String {
        let mut payload = Vec::with_capacity(32);
        put_varint(&mut payload, target.key.segment);
        put_varint(&mut payload, target.key.offset);
        put_varint(&mut payload, u64::from(target.rcpt));
        let tag = self.tag(&payload);
        payload.extend_from_slice(&tag);
        base32_encode(&payload)
    }

    /// `b-<token>@<domain>`: the envelope sender of that delivery.
    pub fn address(&self, target: VerpTarget) -> String {
        format!("{PREFIX}{}@{}", self.token(target), self.domain)
    }

    /// The send a VERP address (or bare local part) names; None for anything not made by this
    /// key: another domain, a changed character, a forged tag, trailing bytes.
    pub fn decode(&self, address: &str) -> Option<VerpTarget> {
        let (local, domain) = match address.rsplit_once('@') {
            Some((l, d)) => (l, Some(d)),
            None => (address, None),
        };
        if let Some(d) = domain
            && !d.eq_ignore_ascii_case(&self.domain)
        {
            return None;
        }
        let local = local.to_ascii_lowercase();
        let token = local.strip_prefix(PREFIX)?;
        let bytes = base32_decode(token)?;
        if bytes.len() <= TAG_LEN {
            return None;
        }
        let (payload, tag) = bytes.split_at(bytes.len() - TAG_LEN);
        constant_time::verify_slices_are_equal(&self.tag(payload), tag).ok()?;
        let mut rest = payload;
        let segment = take_varint(&mut rest)?;
        let offset = take_varint(&mut rest)?;
        let rcpt = u32::try_from(take_varint(&mut rest)?).ok()?;
        if !rest.is_empty() {
            return None;
        }
        Some(VerpTarget {
            key: MsgKey { segment, offset },
            rcpt,
        })
    }

    fn tag(&self, payload: &[u8]) -> [u8; TAG_LEN] {
        let mut ctx = hmac::Context::with_key(&self.key);
        ctx.update(DOMAIN_SEPARATOR);
        ctx.update(payload);
        let full = ctx.sign();
        let mut out = [0u8; TAG_LEN];
        out.copy_from_slice(&full.as_ref()[..TAG_LEN]);
        out
    }
}

/// True when `address` has the shape of a VERP address of `domain` (no key check).
pub fn looks_like_verp(address: &str, domain: &str) -> bool {
    address.rsplit_once('@').is_some_and(|(l, d)| {
        d.eq_ignore_ascii_case(domain) && l.to_ascii_lowercase().starts_with(PREFIX)
    })
}

fn load_or_create(path: &Path) -> Result<[u8; KEY_LEN], VerpError> {
    let bad = |message: String| VerpError::KeyFile {
        path: path.to_path_buf(),
        message,
    };
    match std::fs::read(path) {
        Ok(bytes) => {
            if let Some(t) = std::str::from_utf8(&bytes).ok().map(str::trim)
                && t.len() == 2 * KEY_LEN
            {
                let raw = hex::decode(t).map_err(|e| bad(format!("not valid hex ({e})")))?;
                return raw
                    .try_into()
                    .map_err(|_| bad("hex does not decode to 32 bytes".into()));
            }
            bytes
                .as_slice()
                .try_into()
                .map_err(|_| bad(format!("holds {} bytes", bytes.len())))
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            let mut key = [0u8; KEY_LEN];
            SystemRandom::new()
                .fill(&mut key)
                .map_err(|_| VerpError::Random)?;
            let err = |source| VerpError::KeyCreate {
                path: path.to_path_buf(),
                source,
            };
            if let Some(dir) = path.parent()
                && !dir.as_os_str().is_empty()
            {
                std::fs::create_dir_all(dir).map_err(err)?;
            }
            let mut opts = std::fs::OpenOptions::new();
            opts.write(true).create_new(true);
            #[cfg(unix)]
            {
                use std::os::unix::fs::OpenOptionsExt;
                opts.mode(0o600);
            }
            let mut file = opts.open(path).map_err(err)?;
            file.write_all(format!("{}\n", hex::encode(key)).as_bytes())
                .and_then(|_| file.sync_all())
                .map_err(err)?;
            Ok(key)
        }
        Err(e) => Err(bad(e.to_string())),
    }
}

fn put_varint(out: &mut Vec<u8>, mut v: u64) {
    while v >= 0x80 {
        out.push((v as u8) | 0x80);
        v >>= 7;
    }
    out.push(v as u8);
}

/// LEB128; refuses over-long and non-minimal encodings, so one send has exactly one token.
fn take_varint(input: &mut &[u8]) -> Option<u64> {
    let mut v: u64 = 0;
    for i in 0..10 {
        let (&b, rest) = input.split_first()?;
        *input = rest;
        let part = u64::from(b & 0x7f);
        if i == 9 && part > 1 {
            return None;
        }
        v |= part << (7 * i);
        if b & 0x80 == 0 {
            if b == 0 && i > 0 {
                return None;
            }
            return Some(v);
        }
    }
    None
}

const ALPHABET: &[u8; 32] = b"abcdefghijklmnopqrstuvwxyz234567";

fn base32_encode(data: &[u8]) -> String {
    let mut out = String::with_capacity(data.len().div_ceil(5) * 8);
    let mut buf: u32 = 0;
    let mut bits = 0;
    for &b in data {
        buf = (buf << 8) | u32::from(b);
        bits += 8;
        while bits >= 5 {
            bits -= 5;
            out.push(ALPHABET[((buf >> bits) & 31) as usize] as char);
        }
    }
    if bits > 0 {
        out.push(ALPHABET[((buf << (5 - bits)) & 31) as usize] as char);
    }
    out
}

/// Strict: lower-case alphabet only, and the unused low bits of the last character must be
/// zero (otherwise two spellings would decode to the same bytes).
fn base32_decode(s: &str) -> Option<Vec<u8>> {
    let mut out = Vec::with_capacity(s.len() * 5 / 8);
    let mut buf: u32 = 0;
    let mut bits = 0;
    for c in s.bytes() {
        let v = ALPHABET.iter().position(|&a| a == c)? as u32;
        buf = (buf << 5) | v;
        bits += 5;
        if bits >= 8 {
            bits -= 8;
            out.push((buf >> bits) as u8);
        }
        buf &= (1 << bits) - 1;
    }
    if bits >= 5 || buf != 0 {
        return None;
    }
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key() -> VerpKey {
        VerpKey::from_bytes(&[7u8; 32], "Bounces.Example.COM")
    }

    fn target(segment: u64, offset: u64, rcpt: u32) -> VerpTarget {
        VerpTarget {
            key: MsgKey { segment, offset },
            rcpt,
        }
    }

    #[test]
    fn round_trip_table() {
        let k = key();
        for t in [
            target(0, 0, 0),
            target(1, 4096, 3),
            target(12, 987_654_321, 999),
            target(u64::MAX, u64::MAX, u32::MAX),
        ] {
            let a = k.address(t);
            assert!(
                a.starts_with("b-") && a.ends_with("@bounces.example.com"),
                "{a}"
            );
            let local = a.split('@').next().unwrap();
            assert!(local.len() <= 64, "{a}");
            assert_eq!(k.decode(&a), Some(t), "{a}");
            // Case-insensitive, as MTAs may change case.
            assert_eq!(k.decode(&a.to_ascii_uppercase()), Some(t), "{a}");
        }
        let typical = k.token(target(3, 1_048_576, 0));
        assert_eq!(typical.len(), 24, "{typical}");
    }

    #[test]
    fn forged_or_altered_tokens_decode_to_nothing() {
        let k = key();
        let a = k.address(target(5, 77_000, 2));
        let (local, domain) = a.split_once('@').unwrap();
        // Every single-character change of the token.
        let token = &local[2..];
        for i in 0..token.len() {
            for c in ALPHABET.iter().map(|&c| c as char) {
                if token.as_bytes()[i] as char == c {
                    continue;
                }
                let mut t = token.to_string();
                t.replace_range(i..i + 1, &c.to_string());
                assert_eq!(k.decode(&format!("b-{t}@{domain}")), None, "{t}");
            }
        }
        // Another key, another domain, a truncated or extended token, no prefix, garbage.
        let other = VerpKey::from_bytes(&[8u8; 32], "bounces.example.com");
        assert_eq!(other.decode(&a), None);
        assert_eq!(k.decode(&format!("{local}@elsewhere.example")), None);
        assert_eq!(
            k.decode(&format!("{}@{domain}", &local[..local.len() - 1])),
            None
        );
        assert_eq!(k.decode(&format!("{local}a@{domain}")), None);
        assert_eq!(k.decode(&format!("{}@{domain}", &local[2..])), None);
        for junk in [
            "",
            "b-",
            "b-!!!@bounces.example.com",
            "b-aaaa@bounces.example.com",
        ] {
            assert_eq!(k.decode(junk), None, "{junk}");
        }
    }

    #[test]
    fn secret_keys_agree_across_nodes() {
        let a = VerpKey::from_secret("s3cret", "b.example");
        let b = VerpKey::from_secret("s3cret", "b.example");
        let t = target(1, 2, 3);
        assert_eq!(b.decode(&a.address(t)), Some(t));
        assert_eq!(
            VerpKey::from_secret("other", "b.example").decode(&a.address(t)),
            None
        );
    }

    #[test]
    fn key_file_is_created_then_reused() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("k/bounce.key");
        let k1 = load_or_create(&p).unwrap();
        let k2 = load_or_create(&p).unwrap();
        assert_eq!(k1, k2);
        std::fs::write(&p, "short").unwrap();
        let e = load_or_create(&p).unwrap_err().to_string();
        assert!(
            e.contains("bounce key file") && e.contains("holds 5 bytes"),
            "{e}"
        );
    }
}
