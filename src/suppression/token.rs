//! The signed one-click unsubscribe token (RFC 8058 URLs and the mailto fallback).
//!
//! Owns: the 32-byte key (`UnsubscribeKey`, loaded once at start from `[unsubscribe] key_file`
//! or derived from `[unsubscribe] secret`), issuing tokens for [`Claims`] and verifying them.
//! A token is base64url (no padding) of `0x01 || nonce(12) || AES-256-GCM(key, nonce, claims as
//! compact JSON)`, with the version byte as associated data. It carries no readable address;
//! a forged or altered token fails the AEAD tag. Never stores anything and never decides what
//! an unsubscribe means (that is suppression policy); it only says who asked for what scope.
//!
//! The https URL is `{base_url}/u/{token}`; the mailto is `unsub-{token}@{domain}`.

use aws_lc_rs::aead::{AES_256_GCM, Aad, LessSafeKey, NONCE_LEN, Nonce, UnboundKey};
use aws_lc_rs::hkdf;
use aws_lc_rs::rand::{SecureRandom, SystemRandom};
use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use serde::{Deserialize, Serialize};
use std::io::Write;
use std::path::{Path, PathBuf};

use crate::config::Config;

/// The first byte of every token; a later format gets a new number.
const VERSION: u8 = 1;
/// Longest token text `verify` looks at; claims of real addresses stay far below it.
const MAX_TOKEN_CHARS: usize = 2048;
/// Local-part prefix of the mailto address.
pub const MAILTO_PREFIX: &str = "unsub-";
const KEY_LEN: usize = 32;
const TAG_LEN: usize = 16;

/// What an unsubscribe token asserts. Field names are short on the wire to keep tokens short.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Claims {
    /// The recipient address exactly as the message was sent to it.
    #[serde(rename = "a")]
    pub address: String,
    #[serde(rename = "t", default, skip_serializing_if = "Option::is_none")]
    pub tenant: Option<String>,
    /// `class:NAME`, `list:NAME` or `campaign:NAME`: the stream the unsubscribe applies to.
    #[serde(rename = "s")]
    pub scope: String,
    #[serde(rename = "c", default, skip_serializing_if = "Option::is_none")]
    pub campaign: Option<String>,
    /// Days since the Unix epoch when the token was issued.
    #[serde(rename = "i")]
    pub issued: u32,
}

impl Claims {
    /// Today as days since the Unix epoch, for `issued`.
    pub fn today() -> u32 {
        let secs = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_secs())
            .unwrap_or(0);
        u32::try_from(secs / 86_400).unwrap_or(u32::MAX)
    }
}

#[derive(Debug, thiserror::Error)]
pub enum TokenError {
    #[error(
        "unsubscribe token is not base64url text (or longer than {MAX_TOKEN_CHARS} characters)"
    )]
    Malformed,
    #[error("unsubscribe token has version {0}, this Gannet knows only version {VERSION}")]
    UnknownVersion(u8),
    #[error("unsubscribe token is too short to hold a nonce and a tag")]
    TooShort,
    #[error("unsubscribe token failed authentication: forged, altered, or issued with another key")]
    Forged,
    #[error("unsubscribe token claims are unreadable: {0}")]
    Claims(String),
    #[error(
        "unsubscribe key file {path}: {message}; expected 64 hex characters or 32 raw bytes (delete it to have a new one generated, which invalidates every token issued so far)"
    )]
    KeyFile { path: PathBuf, message: String },
    #[error("cannot create unsubscribe key file {path}: {source}")]
    KeyCreate {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("system random generator failed while issuing an unsubscribe token")]
    Random,
}

/// The unsubscribe token key. Cheap to clone; holds no other state.
#[derive(Clone)]
pub struct UnsubscribeKey {
    key: std::sync::Arc<LessSafeKey>,
}

impl std::fmt::Debug for UnsubscribeKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("UnsubscribeKey(..)")
    }
}

impl UnsubscribeKey {
    /// A key from 32 bytes.
    pub fn from_bytes(bytes: &[u8; KEY_LEN]) -> UnsubscribeKey {
        // AES-256 accepts any 32-byte key, so this cannot fail.
        let unbound = UnboundKey::new(&AES_256_GCM, bytes).expect("32-byte AES-256-GCM key");
        UnsubscribeKey {
            key: std::sync::Arc::new(LessSafeKey::new(unbound)),
        }
    }

    /// A key derived from a shared secret with HKDF-SHA256 (fixed salt and info, so every node
    /// with the same secret derives the same key).
    pub fn from_secret(secret: &str) -> UnsubscribeKey {
        let salt = hkdf::Salt::new(hkdf::HKDF_SHA256, b"gannet unsubscribe token salt");
        let prk = salt.extract(secret.as_bytes());
        let info: &[&[u8]] = &[b"gannet unsubscribe token v1"];
        let mut out = [0u8; KEY_LEN];
        prk.expand(info, hkdf::HKDF_SHA256)
            .and_then(|okm| okm.fill(&mut out))
            .expect("HKDF-SHA256 can produce 32 bytes");
        UnsubscribeKey::from_bytes(&out)
    }

    /// The key `[unsubscribe]` names: `secret` if set, else `key_file` (default
    /// `unsubscribe.key` in the spool directory), created with mode 0600 when absent.
    /// Reads a small file: call it at start, not on the async runtime's hot path.
    pub fn from_config(config: &Config) -> Result<UnsubscribeKey, TokenError> {
        if let Some(secret) = &config.unsubscribe.secret {
            return Ok(UnsubscribeKey::from_secret(secret));
        }
        let path = match &config.unsubscribe.key_file {
            Some(p) => config.resolve_path(p),
            None => config
                .resolve_path(&config.spool.path)
                .join("unsubscribe.key"),
        };
        UnsubscribeKey::from_file(&path)
    }

    /// Load a key file, or create one with a fresh random key (mode 0600) if it does not exist.
    pub fn from_file(path: &Path) -> Result<UnsubscribeKey, TokenError> {
        match std::fs::read(path) {
            Ok(bytes) => UnsubscribeKey::parse_file(path, &bytes),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => UnsubscribeKey::create(path),
            Err(e) => Err(TokenError::KeyFile {
                path: path.to_path_buf(),
                message: e.to_string(),
            }),
        }
    }

    fn parse_file(path: &Path, bytes: &[u8]) -> Result<UnsubscribeKey, TokenError> {
        let bad = |message: String| TokenError::KeyFile {
            path: path.to_path_buf(),
            message,
        };
        let text = std::str::from_utf8(bytes).ok().map(str::trim);
        if let Some(t) = text
            && t.len() == 2 * KEY_LEN
        {
            let raw = hex::decode(t).map_err(|e| bad(format!("not valid hex ({e})")))?;
            let key: [u8; KEY_LEN] = raw
                .try_into()
                .map_err(|_| bad("hex does not decode to 32 bytes".into()))?;
            return Ok(UnsubscribeKey::from_bytes(&key));
        }
        let key: [u8; KEY_LEN] = bytes
            .try_into()
            .map_err(|_| bad(format!("holds {} bytes", bytes.len())))?;
        Ok(UnsubscribeKey::from_bytes(&key))
    }

    fn create(path: &Path) -> Result<UnsubscribeKey, TokenError> {
        let mut key = [0u8; KEY_LEN];
        SystemRandom::new()
            .fill(&mut key)
            .map_err(|_| TokenError::Random)?;
        let err = |source| TokenError::KeyCreate {
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
        Ok(UnsubscribeKey::from_bytes(&key))
    }

    /// A new token for `claims` (a fresh random nonce each time, so two tokens for the same
    /// claims differ).
    pub fn issue(&self, claims: &Claims) -> Result<String, TokenError> {
        let mut nonce = [0u8; NONCE_LEN];
        SystemRandom::new()
            .fill(&mut nonce)
            .map_err(|_| TokenError::Random)?;
        let json = serde_json::to_vec(claims).map_err(|e| TokenError::Claims(e.to_string()))?;
        let mut out = Vec::with_capacity(1 + NONCE_LEN + json.len() + TAG_LEN);
        out.push(VERSION);
        out.extend_from_slice(&nonce);
        let mut sealed = json;
        self.key
            .seal_in_place_append_tag(
                Nonce::assume_unique_for_key(nonce),
                Aad::from([VERSION]),
                &mut sealed,
            )
            .map_err(|_| TokenError::Claims("claims too long to seal".into()))?;
        out.extend_from_slice(&sealed);
        Ok(URL_SAFE_NO_PAD.encode(out))
    }

    /// The claims of a token this key issued; any other text is an error.
    pub fn verify(&self, token: &str) -> Result<Claims, TokenError> {
        if token.len() > MAX_TOKEN_CHARS {
            return Err(TokenError::Malformed);
        }
        let raw = URL_SAFE_NO_PAD
            .decode(token.trim())
            .map_err(|_| TokenError::Malformed)?;
        let (&version, rest) = raw.split_first().ok_or(TokenError::TooShort)?;
        if version != VERSION {
            return Err(TokenError::UnknownVersion(version));
        }
        if rest.len() < NONCE_LEN + TAG_LEN {
            return Err(TokenError::TooShort);
        }
        let (nonce, sealed) = rest.split_at(NONCE_LEN);
        let nonce: [u8; NONCE_LEN] = nonce.try_into().map_err(|_| TokenError::TooShort)?;
        let mut buf = sealed.to_vec();
        let plain = self
            .key
            .open_in_place(
                Nonce::assume_unique_for_key(nonce),
                Aad::from([VERSION]),
                &mut buf,
            )
            .map_err(|_| TokenError::Forged)?;
        serde_json::from_slice(plain).map_err(|e| TokenError::Claims(e.to_string()))
    }
}

/// `{base_url}/u/{token}` (a trailing `/` on the base is ignored).
pub fn https_url(base_url: &str, token: &str) -> String {
    format!("{}/u/{token}", base_url.trim_end_matches('/'))
}

/// `unsub-{token}@{domain}`.
pub fn mailto_address(token: &str, domain: &str) -> String {
    format!("{MAILTO_PREFIX}{token}@{domain}")
}

/// The token inside an address made by [`mailto_address`] (case of the prefix ignored), or
/// `None` when the address is not an unsubscribe address.
pub fn token_from_mailto(address: &str) -> Option<&str> {
    let local = address.rsplit_once('@').map_or(address, |(l, _)| l);
    let prefix = local.get(..MAILTO_PREFIX.len())?;
    if !prefix.eq_ignore_ascii_case(MAILTO_PREFIX) {
        return None;
    }
    let token = &local[MAILTO_PREFIX.len()..];
    (!token.is_empty()).then_some(token)
}

#[cfg(test)]
#[path = "token_tests.rs"]
mod tests;
