//! Keys for personal data at rest: the master key file, the keyed hash used for lookups, and
//! the per-person AEAD keys that crypto-shredding destroys.
//!
//! Owns: reading (or, on first start, creating with mode 0600) `[storage] key_file`; deriving
//! from the master key (HMAC-SHA256 as the KDF, one label per purpose) the lookup key for
//! [`MasterKey::address_hash`] and, from a random per-person salt kept in the send log, each
//! person's AES-256-GCM key. Destroying the salt destroys the key: without it the rows stay
//! countable but can no longer be read.
//! Never does: store a clear address, or re-key silently (a missing or different key is an
//! error the operator must resolve).

use std::io::Write;
use std::path::{Path, PathBuf};

use aws_lc_rs::aead::{AES_256_GCM, Aad, LessSafeKey, NONCE_LEN, Nonce, UnboundKey};
use aws_lc_rs::hmac;

/// Why the master key cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum KeyError {
    #[error(
        "cannot read the master key {path}: {source} (restore it from your backup: the send log was written with it, and a new key would make every stored personal field unreadable)"
    )]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error(
        "cannot create the master key {path}: {source} (check [storage] key_file and that its directory is writable)"
    )]
    Create {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error(
        "the master key {path} is not 64 hexadecimal characters (32 bytes); it is damaged or not a gannet key file"
    )]
    Malformed { path: PathBuf },
    #[error(
        "the master key {path} is missing, but the data it protects exists ({data}); restore the key file from your backup (gannet never re-keys silently)"
    )]
    Missing { path: PathBuf, data: PathBuf },
}

/// The master key: 32 bytes from `[storage] key_file`. Cheap to clone.
#[derive(Clone)]
pub struct MasterKey {
    key: [u8; 32],
    lookup: hmac::Key,
}

impl std::fmt::Debug for MasterKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("MasterKey(..)")
    }
}

impl MasterKey {
    /// A key from its 32 bytes.
    pub fn from_bytes(key: [u8; 32]) -> MasterKey {
        let base = hmac::Key::new(hmac::HMAC_SHA256, &key);
        let lookup_bytes = hmac::sign(&base, b"gannet/v1/address-lookup");
        MasterKey {
            key,
            lookup: hmac::Key::new(hmac::HMAC_SHA256, lookup_bytes.as_ref()),
        }
    }

    /// Read `path`; when it does not exist and `protected` (the data it guards) does not
    /// exist either, create a new random key with mode 0600. A missing key for existing data
    /// is [`KeyError::Missing`].
    pub fn load_or_create(path: &Path, protected: &Path) -> Result<MasterKey, KeyError> {
        match std::fs::read_to_string(path) {
            Ok(text) => Self::parse(path, &text),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                if protected.exists() {
                    return Err(KeyError::Missing {
                        path: path.to_path_buf(),
                        data: protected.to_path_buf(),
                    });
                }
                let key: [u8; 32] = rand::random();
                let create = |e| KeyError::Create {
                    path: path.to_path_buf(),
                    source: e,
                };
                if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
                    std::fs::create_dir_all(dir).map_err(create)?;
                }
                use std::os::unix::fs::OpenOptionsExt;
                let mut f = std::fs::OpenOptions::new()
                    .write(true)
                    .create_new(true)
                    .mode(0o600)
                    .open(path)
                    .map_err(create)?;
                f.write_all(format!("{}\n", hex::encode(key)).as_bytes())
                    .and_then(|_| f.sync_all())
                    .map_err(create)?;
                tracing::info!(path = %path.display(), "created a new master key (mode 0600); back it up apart from the data directory");
                Ok(MasterKey::from_bytes(key))
            }
            Err(e) => Err(KeyError::Read {
                path: path.to_path_buf(),
                source: e,
            }),
        }
    }

    fn parse(path: &Path, text: &str) -> Result<MasterKey, KeyError> {
        let bytes = hex::decode(text.trim()).map_err(|_| KeyError::Malformed {
            path: path.to_path_buf(),
        })?;
        let key: [u8; 32] = bytes.try_into().map_err(|_| KeyError::Malformed {
            path: path.to_path_buf(),
        })?;
        Ok(MasterKey::from_bytes(key))
    }

    /// The keyed hash that stands for an address in every lookup column (lower-cased first,
    /// so `Bob@Example.com` and `bob@example.com` are one person).
    pub fn address_hash(&self, address: &str) -> [u8; 32] {
        let tag = hmac::sign(&self.lookup, address.trim().to_lowercase().as_bytes());
        let mut out = [0u8; 32];
        out.copy_from_slice(tag.as_ref());
        out
    }

    /// A value that shows which key wrote a store (kept beside the data; reveals nothing).
    pub fn fingerprint(&self) -> [u8; 32] {
        self.derive(b"gannet/v1/key-check", &[])
    }

    /// A sub-key for `label`.
    pub fn derive(&self, label: &[u8], salt: &[u8]) -> [u8; 32] {
        let k = hmac::Key::new(hmac::HMAC_SHA256, &self.key);
        let mut ctx = hmac::Context::with_key(&k);
        ctx.update(label);
        ctx.update(salt);
        let mut out = [0u8; 32];
        out.copy_from_slice(ctx.sign().as_ref());
        out
    }

    /// The AEAD key of one person, from the random salt kept for them.
    pub fn person_key(&self, salt: &[u8]) -> PersonKey {
        let k = self.derive(b"gannet/v1/person", salt);
        PersonKey {
            key: LessSafeKey::new(UnboundKey::new(&AES_256_GCM, &k).expect("32-byte AES key")),
        }
    }
}

/// One person's AES-256-GCM key.
pub struct PersonKey {
    key: LessSafeKey,
}

impl PersonKey {
    /// `nonce || ciphertext || tag`, bound to `aad` (the row's event id).
    pub fn seal(&self, aad: &[u8], plain: &[u8]) -> Vec<u8> {
        let nonce: [u8; NONCE_LEN] = rand::random();
        let mut buf = Vec::with_capacity(NONCE_LEN + plain.len() + 16);
        buf.extend_from_slice(&nonce);
        buf.extend_from_slice(plain);
        let mut body = buf.split_off(NONCE_LEN);
        self.key
            .seal_in_place_append_tag(
                Nonce::assume_unique_for_key(nonce),
                Aad::from(aad),
                &mut body,
            )
            .expect("AES-GCM seal of a small buffer");
        buf.extend_from_slice(&body);
        buf
    }

    /// The plaintext, or None when the blob was not sealed by this key for `aad`.
    pub fn open(&self, aad: &[u8], sealed: &[u8]) -> Option<Vec<u8>> {
        if sealed.len() < NONCE_LEN + 16 {
            return None;
        }
        let nonce: [u8; NONCE_LEN] = sealed[..NONCE_LEN].try_into().ok()?;
        let mut body = sealed[NONCE_LEN..].to_vec();
        let plain = self
            .key
            .open_in_place(
                Nonce::assume_unique_for_key(nonce),
                Aad::from(aad),
                &mut body,
            )
            .ok()?;
        Some(plain.to_vec())
    }
}
