//! SMTP AUTH support: decoding SASL PLAIN / LOGIN responses (pure) and checking passwords
//! against the argon2 PHC hashes in `[[smtp_user]]` (on the blocking pool, a few at a time).
//!
//! Never logs or keeps a password beyond the check; never compares passwords itself (argon2's
//! verifier does, in constant time). Unknown users cost the same as known ones.

use std::collections::HashMap;
use std::sync::Arc;

use argon2::password_hash::{PasswordHash, PasswordHasher, PasswordVerifier, SaltString};
use base64::Engine as _;
use tokio::sync::Semaphore;

use super::SmtpError;
use crate::config::SmtpUserConfig;

/// A user name and password taken from an AUTH exchange. `Debug` hides the password.
#[derive(Clone, PartialEq, Eq)]
pub struct Credentials {
    pub user: String,
    pub password: String,
}

impl std::fmt::Debug for Credentials {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Credentials")
            .field("user", &self.user)
            .field("password", &"<redacted>")
            .finish()
    }
}

/// Why a SASL response could not be used.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SaslError {
    /// Not base64 (501 5.5.2).
    Base64,
    /// Decoded, but not a well-formed PLAIN message or not UTF-8 (501 5.5.2).
    Malformed,
    /// PLAIN with an authorization identity other than the user (535 5.7.8).
    ProxyAuth,
}

/// Decode one base64 SASL line (without its CRLF). `=` stands for an empty response.
pub fn decode_base64(line: &str) -> Result<Vec<u8>, SaslError> {
    let line = line.trim();
    if line == "=" {
        return Ok(Vec::new());
    }
    base64::engine::general_purpose::STANDARD
        .decode(line)
        .map_err(|_| SaslError::Base64)
}

/// Decode a SASL PLAIN message (RFC 4616): `[authzid] NUL authcid NUL passwd`.
pub fn decode_plain(line: &str) -> Result<Credentials, SaslError> {
    let raw = decode_base64(line)?;
    let mut parts = raw.split(|b| *b == 0);
    let (Some(authz), Some(user), Some(pass), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Err(SaslError::Malformed);
    };
    let utf8 = |b: &[u8]| String::from_utf8(b.to_vec()).map_err(|_| SaslError::Malformed);
    let (authz, user, password) = (utf8(authz)?, utf8(user)?, utf8(pass)?);
    if user.is_empty() {
        return Err(SaslError::Malformed);
    }
    if !authz.is_empty() && authz != user {
        return Err(SaslError::ProxyAuth);
    }
    Ok(Credentials { user, password })
}

/// Decode one LOGIN step (user name or password) as UTF-8 text.
pub fn decode_login_step(line: &str) -> Result<String, SaslError> {
    String::from_utf8(decode_base64(line)?).map_err(|_| SaslError::Malformed)
}

/// Hash a password as an argon2id PHC string for `[[smtp_user]] password_hash`
/// (what `gannet hash-password` prints). Uses argon2's default cost and a random salt.
pub fn hash_password(password: &str) -> Result<String, SmtpError> {
    let salt = SaltString::encode_b64(&rand::random::<[u8; 16]>())
        .map_err(|e| SmtpError::HashPassword(e.to_string()))?;
    argon2::Argon2::default()
        .hash_password(password.as_bytes(), &salt)
        .map(|h| h.to_string())
        .map_err(|e| SmtpError::HashPassword(e.to_string()))
}

/// A hash of a random throw-away password, checked when the user name is unknown so that
/// unknown and known users take the same time.
const DUMMY_HASH: &str = "$argon2id$v=19$m=19456,t=2,p=1$8nbpC5bJMcUh0lUMUZmn2A$7fMcxRZjGpt1i/6EHtWiotTpHVpbJnXPLTfnQ0lP5Kg";

/// Checks credentials against the configured users. Shared by all sessions of a listener;
/// `slots` bounds how many argon2 checks run at once (each takes tens of milliseconds and
/// ~19 MiB), so a flood of AUTH attempts queues instead of exhausting memory or the blocking
/// pool.
pub struct Authenticator {
    users: HashMap<String, String>,
    slots: Semaphore,
}

impl Authenticator {
    pub fn new(users: &[SmtpUserConfig]) -> Self {
        let parallel = std::thread::available_parallelism().map_or(2, |n| n.get());
        Authenticator {
            users: users
                .iter()
                .map(|u| (u.name.clone(), u.password_hash.clone()))
                .collect(),
            slots: Semaphore::new(parallel),
        }
    }

    /// Whether any user is configured (AUTH is offered only then).
    pub fn has_users(&self) -> bool {
        !self.users.is_empty()
    }

    /// True when the password matches the user's hash.
    pub async fn verify(self: &Arc<Self>, credentials: Credentials) -> bool {
        let Ok(_slot) = self.slots.acquire().await else {
            return false;
        };
        let (known, hash) = match self.users.get(&credentials.user) {
            Some(h) => (true, h.clone()),
            None => (false, DUMMY_HASH.to_string()),
        };
        let checked = tokio::task::spawn_blocking(move || {
            let Ok(parsed) = PasswordHash::new(&hash) else {
                return false;
            };
            argon2::Argon2::default()
                .verify_password(credentials.password.as_bytes(), &parsed)
                .is_ok()
        })
        .await
        .unwrap_or(false);
        known && checked
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn b64(raw: &[u8]) -> String {
        base64::engine::general_purpose::STANDARD.encode(raw)
    }

    #[test]
    fn plain_table() {
        let ok = |u: &str, p: &str| {
            Ok(Credentials {
                user: u.into(),
                password: p.into(),
            })
        };
        for (raw, expected) in [
            (&b"\0alice\0secret"[..], ok("alice", "secret")),
            (b"alice\0alice\0secret", ok("alice", "secret")),
            (b"\0alice\0", ok("alice", "")),
            (b"bob\0alice\0secret", Err(SaslError::ProxyAuth)),
            (b"\0alice", Err(SaslError::Malformed)),
            (b"\0\0secret", Err(SaslError::Malformed)),
            (b"\0a\0b\0c", Err(SaslError::Malformed)),
            (b"\0\xff\0x", Err(SaslError::Malformed)),
        ] {
            assert_eq!(decode_plain(&b64(raw)), expected, "{raw:?}");
        }
        assert_eq!(decode_plain("not base64!"), Err(SaslError::Base64));
        assert_eq!(decode_plain("="), Err(SaslError::Malformed));
    }

    #[test]
    fn login_steps() {
        assert_eq!(decode_login_step(&b64(b"alice")), Ok("alice".into()));
        assert_eq!(decode_login_step("="), Ok(String::new()));
        assert_eq!(decode_login_step("%%%"), Err(SaslError::Base64));
    }

    #[test]
    fn credentials_debug_hides_password() {
        let c = Credentials {
            user: "alice".into(),
            password: "hunter2".into(),
        };
        assert!(!format!("{c:?}").contains("hunter2"));
    }

    #[test]
    fn dummy_hash_parses() {
        assert!(PasswordHash::new(DUMMY_HASH).is_ok());
    }

    #[tokio::test]
    async fn hash_then_verify() {
        let hash = hash_password("correct horse").unwrap();
        assert!(hash.starts_with("$argon2id$"), "{hash}");
        let auth = Arc::new(Authenticator::new(&[SmtpUserConfig {
            name: "alice".into(),
            password_hash: hash,
            default_class: None,
            tenant: None,
            allowed_from_domains: None,
            allowed_classes: None,
        }]));
        let creds = |u: &str, p: &str| Credentials {
            user: u.into(),
            password: p.into(),
        };
        assert!(auth.verify(creds("alice", "correct horse")).await);
        assert!(!auth.verify(creds("alice", "wrong")).await);
        assert!(!auth.verify(creds("mallory", "correct horse")).await);
    }
}
