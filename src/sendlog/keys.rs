//! Keys for personal data at rest: the master key file, the keyed hash used for lookups, and
//! the per-person AEAD keys that crypto-shredding destroys.
//!
//! Owns: reading (or, on first start, creating with mode 0600) `[storage] key_file`; deriving
//! from the master key (HMAC-SHA256 as the KDF, one label per purpose) the lookup key for
//! [`MasterKey::address_hash`] and, from a random per-person salt kept in the send log, each
//! person's AES-256-GCM key. Destroying the salt destroys the key: without it the rows stay
//! countable but can no longer be read.
//! Also owns the Ed25519 checkpoint key (`CheckpointKey`) that signs the hash chain's
//! checkpoints, and the check of those signatures.
//! Never does: store a clear address, or re-key silently (a missing or different key is an
//! error the operator must resolve).

use std::io::Write;
use std::path::{Path, PathBuf};

use aws_lc_rs::aead::{AES_256_GCM, Aad, LessSafeKey, NONCE_LEN, Nonce, UnboundKey};
use aws_lc_rs::hmac;
use aws_lc_rs::signature::{ED25519, Ed25519KeyPair, KeyPair, UnparsedPublicKey};

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
        "the key file {path} is not 64 hexadecimal characters (32 bytes); it is damaged or not a gannet key file"
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
    /// HMAC-SHA256 keyed with the master key: the KDF of every sub-key (set up once, as a
    /// derivation per record or entry is on hot paths).
    kdf: hmac::Key,
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
            kdf: base,
            lookup: hmac::Key::new(hmac::HMAC_SHA256, lookup_bytes.as_ref()),
        }
    }

    /// Read `path`; when it does not exist and `protected` (the data it guards) does not
    /// exist either, create a new random key with mode 0600. A missing key for existing data
    /// is [`KeyError::Missing`].
    pub fn load_or_create(path: &Path, protected: &Path) -> Result<MasterKey, KeyError> {
        Ok(MasterKey::from_bytes(load_or_create_secret(
            path,
            protected,
            "master key",
        )?))
    }

    /// The keyed hash that stands for an address in every lookup column (lower-cased first,
    /// so `Bob@Example.com` and `bob@example.com` are one person).
    pub fn address_hash(&self, address: &str) -> [u8; 32] {
        self.lowercase_address_hash(&address.trim().to_lowercase())
    }

    /// [`MasterKey::address_hash`] of an address already trimmed and lower-cased (no copy).
    pub fn lowercase_address_hash(&self, address: &str) -> [u8; 32] {
        let tag = hmac::sign(&self.lookup, address.as_bytes());
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
        let mut ctx = hmac::Context::with_key(&self.kdf);
        ctx.update(label);
        ctx.update(salt);
        let mut out = [0u8; 32];
        out.copy_from_slice(ctx.sign().as_ref());
        out
    }

    /// The AEAD key of one person, from the random salt kept for them.
    pub fn person_key(&self, salt: &[u8]) -> SealKey {
        self.seal_key(b"gannet/v1/person", salt)
    }

    /// The AEAD key for `label` (and `salt`, empty for a store-wide key).
    pub fn seal_key(&self, label: &[u8], salt: &[u8]) -> SealKey {
        SealKey {
            key: aes_key(&self.derive(label, salt)),
        }
    }
}

/// An AES-256-GCM key from 32 derived bytes.
pub fn aes_key(bytes: &[u8; 32]) -> LessSafeKey {
    LessSafeKey::new(UnboundKey::new(&AES_256_GCM, bytes).expect("32-byte AES-256 key"))
}

/// An AES-256-GCM key that seals small values as `nonce || ciphertext || tag` with a random
/// nonce: a person's key (send log, suppression list), the spool's state key, the outbox's
/// and the idempotency file's line keys. One allocation per seal and per open.
pub struct SealKey {
    key: LessSafeKey,
}

const TAG_LEN: usize = 16;

impl SealKey {
    /// `nonce || ciphertext || tag` of `plain`, bound to `aad`.
    pub fn seal(&self, aad: &[u8], plain: &[u8]) -> Vec<u8> {
        let mut out = Vec::with_capacity(NONCE_LEN + plain.len() + TAG_LEN);
        self.seal_into(aad, plain, &mut out);
        out
    }

    /// [`SealKey::seal`], appended to `out`.
    pub fn seal_into(&self, aad: &[u8], plain: &[u8], out: &mut Vec<u8>) {
        let nonce: [u8; NONCE_LEN] = rand::random();
        out.extend_from_slice(&nonce);
        let start = out.len();
        out.extend_from_slice(plain);
        let tag = self
            .key
            .seal_in_place_separate_tag(
                Nonce::assume_unique_for_key(nonce),
                Aad::from(aad),
                &mut out[start..],
            )
            .expect("AES-GCM seal of a small buffer");
        out.extend_from_slice(tag.as_ref());
    }

    /// The plaintext, or None when the blob was not sealed by this key for `aad`.
    pub fn open(&self, aad: &[u8], sealed: &[u8]) -> Option<Vec<u8>> {
        self.open_vec(aad, sealed.to_vec())
    }

    /// [`SealKey::open`] of a blob the caller owns, opened in place.
    pub fn open_vec(&self, aad: &[u8], mut sealed: Vec<u8>) -> Option<Vec<u8>> {
        if sealed.len() < NONCE_LEN + TAG_LEN {
            return None;
        }
        let nonce: [u8; NONCE_LEN] = sealed[..NONCE_LEN].try_into().ok()?;
        let n = self
            .key
            .open_in_place(
                Nonce::assume_unique_for_key(nonce),
                Aad::from(aad),
                &mut sealed[NONCE_LEN..],
            )
            .ok()?
            .len();
        sealed.copy_within(NONCE_LEN..NONCE_LEN + n, 0);
        sealed.truncate(n);
        Some(sealed)
    }

    /// [`SealKey::open`] into `buf` (cleared first, its allocation reused): an export opens
    /// two or three seals per row, and a fresh buffer for each was a visible share of its
    /// time. False, with `buf` empty, when the blob was not sealed by this key for `aad`.
    pub fn open_into(&self, aad: &[u8], sealed: &[u8], buf: &mut Vec<u8>) -> bool {
        buf.clear();
        if sealed.len() < NONCE_LEN + TAG_LEN {
            return false;
        }
        let Ok(nonce) = <[u8; NONCE_LEN]>::try_from(&sealed[..NONCE_LEN]) else {
            return false;
        };
        buf.extend_from_slice(&sealed[NONCE_LEN..]);
        match self
            .key
            .open_in_place(Nonce::assume_unique_for_key(nonce), Aad::from(aad), buf)
        {
            Ok(plain) => {
                let n = plain.len();
                buf.truncate(n);
                true
            }
            Err(_) => {
                buf.clear();
                false
            }
        }
    }
}

/// Read a 32-byte secret kept as hex in `path`, or create one (mode 0600) when neither it nor
/// `protected` (the data it guards) exists. `what` names it in the log line.
fn load_or_create_secret(path: &Path, protected: &Path, what: &str) -> Result<[u8; 32], KeyError> {
    match std::fs::read_to_string(path) {
        Ok(text) => parse_secret(path, &text),
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
            tracing::info!(path = %path.display(), "created a new {what} (mode 0600); back it up apart from the data directory");
            Ok(key)
        }
        Err(e) => Err(KeyError::Read {
            path: path.to_path_buf(),
            source: e,
        }),
    }
}

fn parse_secret(path: &Path, text: &str) -> Result<[u8; 32], KeyError> {
    let bytes = hex::decode(text.trim()).map_err(|_| KeyError::Malformed {
        path: path.to_path_buf(),
    })?;
    bytes.try_into().map_err(|_| KeyError::Malformed {
        path: path.to_path_buf(),
    })
}

/// The Ed25519 key that signs the send log's checkpoints (`[sendlog] checkpoint_key`: a
/// 32-byte seed in hex, created with mode 0600 on first start like the master key).
pub struct CheckpointKey {
    pair: Ed25519KeyPair,
}

impl std::fmt::Debug for CheckpointKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "CheckpointKey({})", hex::encode(self.public()))
    }
}

impl CheckpointKey {
    /// Read `path`, or create it when neither it nor the send log `protected` exists.
    pub fn load_or_create(path: &Path, protected: &Path) -> Result<CheckpointKey, KeyError> {
        let seed = load_or_create_secret(path, protected, "send-log checkpoint signing key")?;
        CheckpointKey::from_seed(path, &seed)
    }

    /// Read an existing key file (never creates one).
    pub fn load(path: &Path) -> Result<CheckpointKey, KeyError> {
        let text = std::fs::read_to_string(path).map_err(|e| KeyError::Read {
            path: path.to_path_buf(),
            source: e,
        })?;
        CheckpointKey::from_seed(path, &parse_secret(path, &text)?)
    }

    fn from_seed(path: &Path, seed: &[u8; 32]) -> Result<CheckpointKey, KeyError> {
        let pair = Ed25519KeyPair::from_seed_unchecked(seed).map_err(|_| KeyError::Malformed {
            path: path.to_path_buf(),
        })?;
        Ok(CheckpointKey { pair })
    }

    /// The public half (32 bytes): what an auditor needs to check the checkpoints.
    pub fn public(&self) -> [u8; 32] {
        let mut out = [0u8; 32];
        out.copy_from_slice(self.pair.public_key().as_ref());
        out
    }

    /// Sign the checkpoint claiming that record `seq`, written at `time_us`, has chain hash
    /// `hash`.
    pub fn sign(&self, seq: i64, time_us: i64, hash: &[u8]) -> Vec<u8> {
        self.pair
            .sign(&checkpoint_message(seq, time_us, hash))
            .as_ref()
            .to_vec()
    }
}

/// The bytes a checkpoint signature covers.
fn checkpoint_message(seq: i64, time_us: i64, hash: &[u8]) -> Vec<u8> {
    let mut m = Vec::with_capacity(64 + hash.len());
    m.extend_from_slice(b"gannet/v1/sendlog-checkpoint\0");
    m.extend_from_slice(&seq.to_be_bytes());
    m.extend_from_slice(&time_us.to_be_bytes());
    m.extend_from_slice(hash);
    m
}

/// Whether `signature` is `public`'s signature of the checkpoint (`seq`, `time_us`, `hash`).
pub fn checkpoint_valid(
    public: &[u8],
    seq: i64,
    time_us: i64,
    hash: &[u8],
    signature: &[u8],
) -> bool {
    UnparsedPublicKey::new(&ED25519, public)
        .verify(&checkpoint_message(seq, time_us, hash), signature)
        .is_ok()
}

/// Why a store's `key-check` file does not let it open.
#[derive(Debug, thiserror::Error)]
pub enum KeyCheckError {
    #[error(
        "{path} was written with another master key than [storage] key_file (its key-check does not match); restore the key file it was written with (gannet never re-keys silently)"
    )]
    WrongKey { path: PathBuf },
    #[error("cannot read or write the key check {path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
}

/// Check `key` against the `key-check` file at `path` (the fingerprint under `label`, one per
/// store), or write that file durably when there is none yet (a new store). What every store
/// of personal data under the master key does at open, so another key is an error instead of
/// a store whose every record reads as damaged.
pub fn check_key_file(path: &Path, key: &MasterKey, label: &[u8]) -> Result<(), KeyCheckError> {
    let want = hex::encode(key.derive(label, &[]));
    let io = |source| KeyCheckError::Io {
        path: path.to_path_buf(),
        source,
    };
    match std::fs::read_to_string(path) {
        Ok(text) if text.trim() == want => Ok(()),
        Ok(_) => Err(KeyCheckError::WrongKey {
            path: path.to_path_buf(),
        }),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            if let Some(dir) = path.parent() {
                std::fs::create_dir_all(dir).map_err(io)?;
            }
            let tmp = path.with_extension("tmp");
            {
                let mut f = std::fs::File::create(&tmp).map_err(io)?;
                f.write_all(format!("{want}\n").as_bytes())
                    .and_then(|()| f.sync_all())
                    .map_err(io)?;
            }
            std::fs::rename(&tmp, path).map_err(io)?;
            if let Some(dir) = path.parent() {
                std::fs::File::open(dir)
                    .and_then(|d| d.sync_all())
                    .map_err(io)?;
            }
            Ok(())
        }
        Err(e) => Err(io(e)),
    }
}
