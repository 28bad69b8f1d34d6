//! Console sessions: random tokens in a cookie, each with its user, role, CSRF token and
//! expiry; the pre-sign-in CSRF token of the login form.
//!
//! Owns: the session map (in memory: a restart signs everyone out), cookie text (`HttpOnly`,
//! `SameSite=Strict`, `Path=/console`, `Max-Age`, and `Secure` when the listener speaks TLS),
//! constant-time token comparison. Never does: password checks (`auth`) or rights.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use axum::http::{HeaderMap, header};
use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use sha2::{Digest, Sha256};

use crate::config::ConsoleRole;

/// The session cookie.
pub const COOKIE: &str = "gannet_console";
/// The login form's CSRF cookie (double submit: the form carries the same value).
pub const LOGIN_COOKIE: &str = "gannet_console_login";

/// Most sessions kept; past it the oldest go first.
const MAX_SESSIONS: usize = 10_000;

/// A signed-in user.
#[derive(Debug, Clone)]
pub struct Session {
    pub user: String,
    pub role: ConsoleRole,
    /// The token every form of this session carries.
    pub csrf: String,
    pub expires: Instant,
}

/// The sessions of one console. A std Mutex: lookups and inserts only, never across an await.
/// Keys are SHA-256 of the cookie value, so the map never holds a usable token.
pub struct Sessions {
    map: Mutex<HashMap<[u8; 32], Session>>,
    ttl: Duration,
    secure: bool,
}

/// 32 random bytes, base64url.
pub fn random_token() -> String {
    URL_SAFE_NO_PAD.encode(rand::random::<[u8; 32]>())
}

fn digest(token: &str) -> [u8; 32] {
    Sha256::digest(token.as_bytes()).into()
}

/// Compare two tokens in time independent of where they differ.
pub fn same(a: &str, b: &str) -> bool {
    let (a, b) = (digest(a), digest(b));
    a.iter()
        .zip(b.iter())
        .fold(0u8, |acc, (x, y)| acc | (x ^ y))
        == 0
}

/// The value of cookie `name` in the request, if any.
pub fn cookie(headers: &HeaderMap, name: &str) -> Option<String> {
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|kv| kv.trim().split_once('='))
        .find(|(k, _)| *k == name)
        .map(|(_, v)| v.to_string())
}

impl Sessions {
    pub fn new(ttl: Duration, secure: bool) -> Sessions {
        Sessions {
            map: Mutex::new(HashMap::new()),
            ttl,
            secure,
        }
    }

    /// Start a session; returns the cookie value.
    pub fn start(&self, user: &str, role: ConsoleRole, now: Instant) -> String {
        let token = random_token();
        let mut m = self.map.lock().unwrap_or_else(|e| e.into_inner());
        m.retain(|_, s| s.expires > now);
        if m.len() >= MAX_SESSIONS
            && let Some(oldest) = m.iter().min_by_key(|(_, s)| s.expires).map(|(k, _)| *k)
        {
            m.remove(&oldest);
        }
        m.insert(
            digest(&token),
            Session {
                user: user.to_string(),
                role,
                csrf: random_token(),
                expires: now + self.ttl,
            },
        );
        token
    }

    /// The live session of the request's cookie.
    pub fn get(&self, headers: &HeaderMap, now: Instant) -> Option<Session> {
        let token = cookie(headers, COOKIE)?;
        let m = self.map.lock().unwrap_or_else(|e| e.into_inner());
        m.get(&digest(&token)).filter(|s| s.expires > now).cloned()
    }

    /// End the request's session.
    pub fn end(&self, headers: &HeaderMap) {
        if let Some(token) = cookie(headers, COOKIE) {
            let mut m = self.map.lock().unwrap_or_else(|e| e.into_inner());
            m.remove(&digest(&token));
        }
    }

    /// `Set-Cookie` for a value; `max_age` 0 deletes it.
    pub fn set_cookie(&self, name: &str, value: &str, max_age: Duration) -> String {
        format!(
            "{name}={value}; Path=/console; HttpOnly; SameSite=Strict; Max-Age={}{}",
            max_age.as_secs(),
            if self.secure { "; Secure" } else { "" }
        )
    }

    pub fn ttl(&self) -> Duration {
        self.ttl
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sessions_expire_and_cookies_are_strict() {
        let s = Sessions::new(Duration::from_secs(60), true);
        let now = Instant::now();
        let token = s.start("alice", ConsoleRole::Admin, now);
        let mut h = HeaderMap::new();
        h.insert(
            header::COOKIE,
            format!("other=1; {COOKIE}={token}").parse().unwrap(),
        );
        assert_eq!(s.get(&h, now).unwrap().user, "alice");
        assert!(s.get(&h, now + Duration::from_secs(61)).is_none());
        let c = s.set_cookie(COOKIE, &token, s.ttl());
        for part in [
            "HttpOnly",
            "SameSite=Strict",
            "Max-Age=60",
            "Secure",
            "Path=/console",
        ] {
            assert!(c.contains(part), "{c}");
        }
        s.end(&h);
        assert!(s.get(&h, now).is_none());
        assert!(same("abc", "abc") && !same("abc", "abd"));
    }
}
