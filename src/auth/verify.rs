//! Inbound mail authentication: SPF (RFC 7208), DKIM (RFC 6376), DMARC (RFC 7489 / RFC 9989)
//! and iprev (RFC 8601 §3) for a received message, and the `Authentication-Results:` header
//! (RFC 8601) that reports them.
//!
//! Owns: the owned result types ([`AuthResults`]) and their header rendering. mail-auth does the
//! protocol work through the `[dns]` resolver; this module corrects mail-auth's relaxed body
//! hashes before its DKIM check (mail-auth#62, see [`super::canon`]) and makes sure nothing a
//! client sent (HELO, MAIL FROM, header contents) can break out of the header it writes.
//! Never rejects mail itself: policy decisions belong to the caller.

use std::fmt::Write as _;
use std::net::IpAddr;

use base64::Engine;
use mail_auth::dmarc::Policy;
use mail_auth::dmarc::verify::DmarcParameters;
use mail_auth::spf::verify::SpfParameters;
use mail_auth::{
    AuthenticatedMessage, DkimResult, DmarcResult, Error, IprevResult, MessageAuthenticator,
    Parameters, SpfResult,
};
use serde::Serialize;

use super::canon;
use super::check::CheckError;
use crate::config::Config;

/// An RFC 8601 result keyword.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum AuthResult {
    Pass,
    Fail,
    SoftFail,
    Neutral,
    None,
    TempError,
    PermError,
}

impl AuthResult {
    pub fn as_str(&self) -> &'static str {
        match self {
            AuthResult::Pass => "pass",
            AuthResult::Fail => "fail",
            AuthResult::SoftFail => "softfail",
            AuthResult::Neutral => "neutral",
            AuthResult::None => "none",
            AuthResult::TempError => "temperror",
            AuthResult::PermError => "permerror",
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct SpfCheck {
    pub result: AuthResult,
    /// The identity checked: the MAIL FROM domain, or the HELO name for a null sender.
    pub domain: String,
    /// MAIL FROM as given (empty for `<>`).
    pub mail_from: String,
    pub helo: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct DkimCheck {
    pub result: AuthResult,
    /// `d=`, `s=`, `a=` of the signature (empty when it could not be parsed).
    pub domain: String,
    pub selector: String,
    pub algorithm: String,
    /// First 8 characters of `b=`, to tell signatures apart (RFC 6008).
    pub header_b: String,
    pub reason: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct DmarcCheck {
    pub result: AuthResult,
    /// The RFC5322.From domain.
    pub header_from: String,
    /// The policy requested by the domain owner: none, quarantine, reject (empty without one).
    pub policy: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct IprevCheck {
    pub result: AuthResult,
    pub ip: IpAddr,
    /// PTR names found for the address.
    pub ptr: Vec<String>,
}

/// Everything verified about one received message.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct AuthResults {
    pub spf: SpfCheck,
    /// One entry per DKIM-Signature (none when the message is unsigned).
    pub dkim: Vec<DkimCheck>,
    pub dmarc: DmarcCheck,
    pub iprev: IprevCheck,
}

impl AuthResults {
    /// The `Authentication-Results:` header field (folded, CRLF-terminated) for a message
    /// received by `authserv_id` (our host name).
    pub fn header(&self, authserv_id: &str) -> String {
        let mut parts: Vec<String> = Vec::new();

        let mut spf = format!("spf={}", self.spf.result.as_str());
        if !self.spf.mail_from.is_empty() {
            let _ = write!(spf, " smtp.mailfrom={}", pvalue(&self.spf.mail_from));
        }
        if !self.spf.helo.is_empty() {
            let _ = write!(spf, " smtp.helo={}", pvalue(&self.spf.helo));
        }
        parts.push(spf);

        if self.dkim.is_empty() {
            parts.push("dkim=none".to_string());
        }
        for d in &self.dkim {
            let mut s = format!("dkim={}", d.result.as_str());
            if let Some(reason) = &d.reason {
                let _ = write!(s, " ({})", comment(reason));
            }
            if !d.domain.is_empty() {
                let _ = write!(s, " header.d={}", pvalue(&d.domain));
            }
            if !d.selector.is_empty() {
                let _ = write!(s, " header.s={}", pvalue(&d.selector));
            }
            if !d.algorithm.is_empty() {
                let _ = write!(s, " header.a={}", pvalue(&d.algorithm));
            }
            if !d.header_b.is_empty() {
                let _ = write!(s, " header.b={}", pvalue(&d.header_b));
            }
            parts.push(s);
        }

        let mut dmarc = format!("dmarc={}", self.dmarc.result.as_str());
        if !self.dmarc.policy.is_empty() {
            let _ = write!(dmarc, " (p={})", self.dmarc.policy);
        }
        if !self.dmarc.header_from.is_empty() {
            let _ = write!(dmarc, " header.from={}", pvalue(&self.dmarc.header_from));
        }
        parts.push(dmarc);

        let mut iprev = format!(
            "iprev={} policy.iprev={}",
            self.iprev.result.as_str(),
            self.iprev.ip
        );
        if !self.iprev.ptr.is_empty() {
            let _ = write!(iprev, " ({})", comment(&self.iprev.ptr.join(", ")));
        }
        parts.push(iprev);

        let mut out = format!("Authentication-Results: {}", pvalue(authserv_id));
        for p in parts {
            out.push_str(";\r\n\t");
            out.push_str(&p);
        }
        out.push_str("\r\n");
        out
    }
}

/// A property value: left as is when it is an RFC 2045 token or an address made of safe
/// characters, otherwise a quoted-string. Control characters (CR, LF...) are dropped, so no
/// value can end the header.
fn pvalue(value: &str) -> String {
    let clean: String = value.chars().filter(|c| !c.is_control()).collect();
    let safe = !clean.is_empty()
        && clean
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "!#$%&'*+-.=?^_`{|}~@/".contains(c));
    if safe {
        clean
    } else {
        let escaped: String = clean
            .chars()
            .flat_map(|c| match c {
                '"' | '\\' => vec!['\\', c],
                c => vec![c],
            })
            .collect();
        format!("\"{escaped}\"")
    }
}

/// Text for a `( comment )`: no control characters, parentheses or backslashes.
fn comment(text: &str) -> String {
    text.chars()
        .filter(|c| !c.is_control() && !matches!(c, '(' | ')' | '\\'))
        .collect::<String>()
        .to_ascii_lowercase()
}

fn spf_result(r: SpfResult) -> AuthResult {
    match r {
        SpfResult::Pass => AuthResult::Pass,
        SpfResult::Fail => AuthResult::Fail,
        SpfResult::SoftFail => AuthResult::SoftFail,
        SpfResult::Neutral => AuthResult::Neutral,
        SpfResult::TempError => AuthResult::TempError,
        SpfResult::PermError => AuthResult::PermError,
        SpfResult::None => AuthResult::None,
    }
}

fn dkim_result(r: &DkimResult) -> (AuthResult, Option<String>) {
    match r {
        DkimResult::Pass => (AuthResult::Pass, None),
        // RFC 6376 §6.1.3: a body hash mismatch fails the signature.
        DkimResult::Neutral(e @ Error::Dkim(mail_auth::dkim::DkimError::FailedBodyHashMatch)) => {
            (AuthResult::Fail, Some(e.to_string()))
        }
        DkimResult::Neutral(e) => (AuthResult::Neutral, Some(e.to_string())),
        DkimResult::Fail(e) => (AuthResult::Fail, Some(e.to_string())),
        DkimResult::PermError(e) => (AuthResult::PermError, Some(e.to_string())),
        DkimResult::TempError(e) => (AuthResult::TempError, Some(e.to_string())),
        DkimResult::None => (AuthResult::None, None),
    }
}

fn dmarc_result(r: &DmarcResult) -> AuthResult {
    match r {
        DmarcResult::Pass => AuthResult::Pass,
        DmarcResult::Fail(_) => AuthResult::Fail,
        DmarcResult::TempError(_) => AuthResult::TempError,
        DmarcResult::PermError(_) => AuthResult::PermError,
        DmarcResult::None => AuthResult::None,
    }
}

fn iprev_result(r: &IprevResult) -> AuthResult {
    match r {
        IprevResult::Pass => AuthResult::Pass,
        IprevResult::Fail(_) => AuthResult::Fail,
        IprevResult::TempError(_) => AuthResult::TempError,
        IprevResult::PermError(_) => AuthResult::PermError,
        IprevResult::None => AuthResult::None,
    }
}

/// Verifies inbound mail. Build it once (it holds the resolver and its cache) and share it;
/// `verify` takes `&self`.
#[derive(Clone)]
pub struct Verifier {
    auth: MessageAuthenticator,
    /// Our host name, the SPF `%{r}` macro.
    hostname: String,
}

impl Verifier {
    pub fn from_config(config: &Config) -> Result<Verifier, CheckError> {
        let auth = super::dns::authenticator(&config.dns)
            .map_err(|message| CheckError::Resolver { message })?;
        Ok(Verifier {
            auth,
            hostname: config.hostname.clone(),
        })
    }

    /// Check SPF for (`client_ip`, `helo`, `mail_from`; empty for `<>`), every DKIM signature
    /// of `message`, DMARC for its From domain, and the client's reverse DNS.
    pub async fn verify(
        &self,
        message: &[u8],
        client_ip: IpAddr,
        helo: &str,
        mail_from: &str,
    ) -> AuthResults {
        let spf_out = self
            .auth
            .verify_spf(Parameters::new(SpfParameters::verify(
                client_ip,
                helo,
                &self.hostname,
                mail_from,
            )))
            .await;
        let spf = SpfCheck {
            result: spf_result(spf_out.result()),
            domain: spf_out.domain().to_string(),
            mail_from: mail_from.to_string(),
            helo: helo.to_string(),
        };

        let iprev_out = self.auth.verify_iprev(Parameters::new(client_ip)).await;
        let iprev = IprevCheck {
            result: iprev_result(&iprev_out.result),
            ip: client_ip,
            ptr: iprev_out
                .ptr
                .as_ref()
                .map(|p| {
                    p.iter()
                        .map(|n| n.trim_end_matches('.').to_string())
                        .collect()
                })
                .unwrap_or_default(),
        };

        let Some(mut parsed) = AuthenticatedMessage::parse(message) else {
            // No header section at all: nothing to verify beyond SPF.
            return AuthResults {
                spf,
                dkim: Vec::new(),
                dmarc: DmarcCheck {
                    result: AuthResult::PermError,
                    header_from: String::new(),
                    policy: String::new(),
                },
                iprev,
            };
        };
        fix_body_hashes(&mut parsed, message);

        let dkim_out = self.auth.verify_dkim(Parameters::new(&parsed)).await;
        let dkim = dkim_out
            .iter()
            .map(|o| {
                let (result, reason) = dkim_result(o.result());
                let sig = o.signature();
                DkimCheck {
                    result,
                    domain: sig.map(|s| s.d.clone()).unwrap_or_default(),
                    selector: sig.map(|s| s.s.clone()).unwrap_or_default(),
                    algorithm: sig.map(|s| s.a.name().to_string()).unwrap_or_default(),
                    header_b: sig
                        .map(|s| {
                            base64::engine::general_purpose::STANDARD
                                .encode(&s.b)
                                .chars()
                                .take(8)
                                .collect()
                        })
                        .unwrap_or_default(),
                    reason,
                }
            })
            .collect();

        let mail_from_domain = mail_from
            .rsplit_once('@')
            .map(|(_, d)| d)
            .unwrap_or(helo)
            .to_string();
        let dmarc_out = self
            .auth
            .verify_dmarc(Parameters::new(DmarcParameters::new(
                &parsed,
                &dkim_out,
                &mail_from_domain,
                &spf_out,
            )))
            .await;
        let dmarc = DmarcCheck {
            result: dmarc_result(&dmarc_out.result()),
            header_from: dmarc_out.domain().to_string(),
            policy: match dmarc_out.dmarc_record() {
                None => String::new(),
                Some(_) => match dmarc_out.policy() {
                    Policy::Reject => "reject",
                    Policy::Quarantine => "quarantine",
                    _ => "none",
                }
                .to_string(),
            },
        };

        AuthResults {
            spf,
            dkim,
            dmarc,
            iprev,
        }
    }
}

/// Replace mail-auth's precomputed body hashes with correct ones (mail-auth#62): its relaxed
/// canonicaliser keeps trailing whitespace-only lines, failing good signatures.
fn fix_body_hashes(parsed: &mut AuthenticatedMessage<'_>, message: &[u8]) {
    let body = message
        .get(parsed.body_offset as usize..)
        .unwrap_or_default();
    for (cb, ha, l, bh) in parsed.body_hashes.iter_mut() {
        // mail-auth uses l = 0 for "no l= tag".
        let limit = (*l > 0).then_some(*l);
        *bh = canon::body_hash(*cb, *ha, body, limit);
    }
}

/// Verify with a resolver built from `config` (convenience for one-off checks; a listener
/// should build one [`Verifier`] and keep it, so its DNS cache is reused).
pub async fn verify(
    config: &Config,
    message: &[u8],
    client_ip: IpAddr,
    helo: &str,
    mail_from: &str,
) -> AuthResults {
    match Verifier::from_config(config) {
        Ok(v) => v.verify(message, client_ip, helo, mail_from).await,
        Err(e) => {
            tracing::warn!(error = %e, "cannot verify inbound mail");
            AuthResults {
                spf: SpfCheck {
                    result: AuthResult::TempError,
                    domain: String::new(),
                    mail_from: mail_from.to_string(),
                    helo: helo.to_string(),
                },
                dkim: Vec::new(),
                dmarc: DmarcCheck {
                    result: AuthResult::TempError,
                    header_from: String::new(),
                    policy: String::new(),
                },
                iprev: IprevCheck {
                    result: AuthResult::TempError,
                    ip: client_ip,
                    ptr: Vec::new(),
                },
            }
        }
    }
}

#[cfg(test)]
#[path = "verify_tests.rs"]
mod tests;
