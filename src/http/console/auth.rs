//! Who may sign in to the console and what each role may do.
//!
//! Owns: the users from `[[console_user]]` (argon2 hash, role, TOTP), the password and TOTP
//! checks (a TOTP step is accepted once per user, RFC 6238 §5.2), and the sign-in throttle
//! (growing delays, then a lockout). The throttle takes `now` from its caller and never sleeps
//! or reads a clock itself; the handler sleeps the delay it is told.
//! Never does: sessions or cookies (`session`), HTML (`page`).

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use argon2::password_hash::{PasswordHash, PasswordVerifier};

use crate::config::{ConsoleConfig, ConsoleRole, ConsoleUserConfig};

/// One thing a console page lets a user do; every handler checks one.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Right {
    /// Queue listing, suspensions, backoffs and anomalies.
    ViewQueue,
    /// Suspend and resume.
    ControlQueue,
    /// Send-log search and a message's story (every search is recorded).
    SearchLogs,
    /// CSV / JSONL export of a search.
    ExportLogs,
    /// Suppression search.
    ViewSuppressions,
    /// Suppression add, remove, import, export.
    EditSuppressions,
    /// Data-subject access export; erasure request and confirmation (four eyes).
    DataSubjects,
    /// The audit trail (who looked up whom, who changed what).
    Audit,
}

/// The rights of each role (the table README shows).
pub fn allows(role: ConsoleRole, right: Right) -> bool {
    use ConsoleRole::*;
    use Right::*;
    match role {
        Admin => true,
        Viewer => matches!(right, ViewQueue | ViewSuppressions | SearchLogs),
        Operator => matches!(
            right,
            ViewQueue | ControlQueue | ViewSuppressions | EditSuppressions | SearchLogs
        ),
        Compliance => matches!(
            right,
            ViewQueue
                | ViewSuppressions
                | EditSuppressions
                | SearchLogs
                | ExportLogs
                | DataSubjects
        ),
    }
}

/// Whether `s` decodes as a base32 TOTP secret of at least 128 bits (RFC 4226 §4).
pub fn totp_secret_ok(s: &str) -> bool {
    totp_rs::Secret::try_from_base32(s.trim().to_ascii_uppercase())
        .is_ok_and(|sec| sec.as_bytes().len() >= 16)
}

/// The TOTP of a secret: SHA-1, 6 digits, 30 s steps, one step of skew either way (what
/// authenticator apps use).
pub fn totp(secret_base32: &str, account: &str) -> Option<totp_rs::Totp> {
    let secret =
        totp_rs::Secret::try_from_base32(secret_base32.trim().to_ascii_uppercase()).ok()?;
    totp_rs::Builder::new()
        .with_secret(secret)
        .with_account_name(account.to_string())
        .with_issuer(Some("Gannet"))
        .build()
        .ok()
}

/// A new secret for `gannet console enrol NAME`: its base32 form and the otpauth URI.
pub fn enrol(name: &str) -> Result<(String, String), String> {
    let secret = totp_rs::Secret::generate();
    let b32 = secret.to_base32();
    let t = totp_rs::Builder::new()
        .with_secret(secret)
        .with_account_name(name.to_string())
        .with_issuer(Some("Gannet"))
        .build()
        .map_err(|e| format!("cannot make a TOTP for {name:?}: {e}"))?;
    let uri = t
        .to_url()
        .map_err(|e| format!("cannot write the otpauth URI for {name:?}: {e}"))?;
    Ok((b32, uri))
}

/// A configured user, ready to check.
pub struct User {
    pub name: String,
    pub role: ConsoleRole,
    password_hash: String,
    totp: Option<totp_rs::Totp>,
}

/// Why a sign-in was refused (the page says only "wrong name, password or code"; the event
/// and log say which).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    Locked,
    UnknownUser,
    Password,
    MissingTotp,
    Totp,
    /// A code already used for this user (RFC 6238 §5.2).
    TotpReplay,
}

impl Refusal {
    pub fn as_str(self) -> &'static str {
        match self {
            Refusal::Locked => "locked",
            Refusal::UnknownUser => "unknown_user",
            Refusal::Password => "password",
            Refusal::MissingTotp => "totp_missing",
            Refusal::Totp => "totp",
            Refusal::TotpReplay => "totp_replay",
        }
    }
}

/// A throw-away hash checked for unknown names, so they cost what known ones do.
const DUMMY_HASH: &str = "$argon2id$v=19$m=19456,t=2,p=1$8nbpC5bJMcUh0lUMUZmn2A$7fMcxRZjGpt1i/6EHtWiotTpHVpbJnXPLTfnQ0lP5Kg";

/// Most names the throttle remembers; past it, entries without a lockout are dropped first.
const MAX_TRACKED: usize = 10_000;

#[derive(Debug, Default, Clone)]
struct Failures {
    in_a_row: u32,
    locked_until: Option<Instant>,
}

/// The users and their sign-in state. One per console; a std Mutex guards the maps (short
/// sections, never held across an await).
pub struct Users {
    users: HashMap<String, User>,
    failures: Mutex<HashMap<String, Failures>>,
    /// Last TOTP step accepted per user (a code works once).
    last_step: Mutex<HashMap<String, u64>>,
    config: ConsoleConfig,
}

fn key(name: &str) -> String {
    name.trim().to_ascii_lowercase().chars().take(64).collect()
}

impl Users {
    pub fn new(users: &[ConsoleUserConfig], config: &ConsoleConfig) -> Users {
        Users {
            users: users
                .iter()
                .map(|u| {
                    (
                        key(&u.name),
                        User {
                            name: u.name.clone(),
                            role: u.role,
                            password_hash: u.password_hash.clone(),
                            totp: u.totp_secret.as_deref().and_then(|s| totp(s, &u.name)),
                        },
                    )
                })
                .collect(),
            failures: Mutex::new(HashMap::new()),
            last_step: Mutex::new(HashMap::new()),
            config: config.clone(),
        }
    }

    pub fn is_empty(&self) -> bool {
        self.users.is_empty()
    }

    /// Whether `name` is locked out at `now` (checked before any password work).
    pub fn locked(&self, name: &str, now: Instant) -> bool {
        let f = self.failures.lock().unwrap_or_else(|e| e.into_inner());
        f.get(&key(name))
            .and_then(|x| x.locked_until)
            .is_some_and(|t| now < t)
    }

    /// Check the password (argon2, slow: call on a blocking thread) and the TOTP code at
    /// `unix_secs`. Does not touch the throttle: the caller records the result.
    pub fn check(
        &self,
        name: &str,
        password: &str,
        code: &str,
        unix_secs: u64,
    ) -> Result<(String, ConsoleRole), Refusal> {
        let user = self.users.get(&key(name));
        let hash = user.map_or(DUMMY_HASH, |u| u.password_hash.as_str());
        let ok = PasswordHash::new(hash).is_ok_and(|h| {
            argon2::Argon2::default()
                .verify_password(password.as_bytes(), &h)
                .is_ok()
        });
        let Some(user) = user else {
            return Err(Refusal::UnknownUser);
        };
        if !ok {
            return Err(Refusal::Password);
        }
        if let Some(t) = &user.totp {
            let code: String = code.chars().filter(|c| !c.is_whitespace()).collect();
            if code.is_empty() {
                return Err(Refusal::MissingTotp);
            }
            let Some(step) = t.check(&code, unix_secs) else {
                return Err(Refusal::Totp);
            };
            let mut last = self.last_step.lock().unwrap_or_else(|e| e.into_inner());
            let k = key(name);
            if last.get(&k).is_some_and(|l| step <= *l) {
                return Err(Refusal::TotpReplay);
            }
            last.insert(k, step);
        }
        Ok((user.name.clone(), user.role))
    }

    /// Record a failed sign-in of `name` at `now`: returns how long to wait before answering
    /// (doubling with each failure in a row) and whether the user is now locked out.
    pub fn failed(&self, name: &str, now: Instant) -> (Duration, bool) {
        let mut f = self.failures.lock().unwrap_or_else(|e| e.into_inner());
        if f.len() >= MAX_TRACKED {
            f.retain(|_, x| x.locked_until.is_some_and(|t| now < t));
        }
        let e = f.entry(key(name)).or_default();
        if e.locked_until.is_some_and(|t| now >= t) {
            // A lockout that ended starts the count again.
            *e = Failures::default();
        }
        e.in_a_row += 1;
        let exp = (e.in_a_row - 1).min(5);
        let delay = self.config.failure_delay * (1u32 << exp);
        let locked = e.in_a_row >= self.config.lockout_after;
        if locked {
            e.locked_until = Some(now + self.config.lockout);
        }
        (delay, locked)
    }

    /// A successful sign-in clears the count.
    pub fn succeeded(&self, name: &str) {
        let mut f = self.failures.lock().unwrap_or_else(|e| e.into_inner());
        f.remove(&key(name));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn users() -> Users {
        let hash = crate::smtp::hash_password("pw").unwrap();
        let (secret, _) = enrol("alice").unwrap();
        Users::new(
            &[ConsoleUserConfig {
                name: "alice".into(),
                password_hash: hash,
                role: ConsoleRole::Compliance,
                totp_secret: Some(secret),
            }],
            &ConsoleConfig {
                failure_delay: Duration::from_millis(100),
                ..ConsoleConfig::default()
            },
        )
    }

    fn code(u: &Users, at: u64) -> String {
        u.users["alice"]
            .totp
            .as_ref()
            .unwrap()
            .generate(at)
            .to_string()
    }

    #[test]
    fn password_and_totp_are_both_required_and_a_code_works_once() {
        let u = users();
        let t = 1_800_000_000;
        assert_eq!(
            u.check("alice", "bad", &code(&u, t), t),
            Err(Refusal::Password)
        );
        assert_eq!(u.check("alice", "pw", "", t), Err(Refusal::MissingTotp));
        assert_eq!(u.check("alice", "pw", "000000", t), Err(Refusal::Totp));
        assert_eq!(u.check("bob", "pw", "", t), Err(Refusal::UnknownUser));
        assert!(u.check("Alice", "pw", &code(&u, t), t).is_ok());
        assert_eq!(
            u.check("alice", "pw", &code(&u, t), t),
            Err(Refusal::TotpReplay)
        );
        assert!(u.check("alice", "pw", &code(&u, t + 30), t + 30).is_ok());
    }

    #[test]
    fn delays_grow_and_the_fifth_failure_locks_out() {
        let u = users();
        let now = Instant::now();
        let delays: Vec<_> = (0..5).map(|_| u.failed("alice", now)).collect();
        let ms: Vec<u128> = delays.iter().map(|(d, _)| d.as_millis()).collect();
        assert_eq!(ms, vec![100, 200, 400, 800, 1600]);
        assert_eq!(
            delays.iter().map(|(_, l)| *l).collect::<Vec<_>>(),
            vec![false, false, false, false, true]
        );
        assert!(u.locked("ALICE", now + Duration::from_secs(60)));
        assert!(!u.locked("alice", now + Duration::from_secs(16 * 60)));
    }

    #[test]
    fn roles_have_their_rights() {
        use ConsoleRole::*;
        assert!(!allows(Viewer, Right::ControlQueue));
        assert!(!allows(Viewer, Right::DataSubjects));
        assert!(!allows(Viewer, Right::ExportLogs));
        assert!(!allows(Operator, Right::DataSubjects));
        assert!(!allows(Compliance, Right::ControlQueue));
        assert!(!allows(Compliance, Right::Audit));
        assert!(allows(Admin, Right::Audit));
    }
}
