//! DKIM signing of outgoing mail: [`DkimSigner`] holds every configured `[[dkim]]` key, picks the
//! keys for a message's From domain at signing time (rotation windows are checked against the
//! clock passed in, so a new selector takes over without a restart) and returns the
//! `DKIM-Signature:` header lines to prepend.
//!
//! Owns: key loading and validation at start-up (every error names `dkim[i]`, the file and the
//! domain), the header list (From over-signed), the `[dkim_policy]` decision for mail whose From
//! domain has no key. Never modifies the message itself, never does I/O after start-up.
//!
//! Signatures are built from mail-auth's parts (header canonicalisation, tag formatting) with the
//! body hash computed by [`super::canon`] (mail-auth#62) and the signature made with aws-lc-rs.

use std::collections::HashSet;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use mail_auth::common::crypto::HashAlgorithm;
use mail_auth::common::headers::{HeaderWriter, Writable};

use super::fields::Fields;
use mail_auth::dkim::{Canonicalization, Signature};

use super::canon;
use super::keys::{KeyProblem, PrivateKey, parse_private_key};
use super::names::{normalize_domain, valid_selector};
use crate::config::{Config, DkimAlgorithm, DkimConfig};
use crate::message::Rejection;

/// Header fields signed when `[[dkim]] headers` is empty. Only fields present in the message are
/// listed in `h=`, except From, which is listed once more than it occurs (over-signed) so no
/// From can be added later without breaking the signature.
pub const DEFAULT_SIGNED_HEADERS: &[&str] = &[
    "From",
    "Sender",
    "Reply-To",
    "To",
    "Cc",
    "Subject",
    "Date",
    "Message-ID",
    "In-Reply-To",
    "References",
    "MIME-Version",
    "Content-Type",
    "Content-Transfer-Encoding",
    "List-Id",
    "List-Unsubscribe",
    "List-Unsubscribe-Post",
    "Feedback-ID",
];

/// Start-up and key-generation errors.
#[derive(Debug, thiserror::Error)]
pub enum DkimError {
    #[error("dkim[{index}] (domain {domain}): cannot read key file {path}: {source}")]
    KeyRead {
        index: usize,
        domain: String,
        path: String,
        source: std::io::Error,
    },
    #[error("dkim[{index}] (domain {domain}): key file {path}: {problem}")]
    KeyUnusable {
        index: usize,
        domain: String,
        path: String,
        problem: KeyProblem,
    },
    #[error("config key `{key}`: {message}")]
    Invalid { key: String, message: String },
}

fn invalid(key: impl Into<String>, message: impl Into<String>) -> DkimError {
    DkimError::Invalid {
        key: key.into(),
        message: message.into(),
    }
}

/// One `[[dkim]]` entry, loaded and checked.
#[derive(Debug)]
pub struct ConfiguredKey {
    /// Position in the config (`dkim[index]`), for messages.
    pub index: usize,
    /// Lowercase A-label domain (the `d=` tag).
    pub domain: String,
    pub selector: String,
    pub key: PrivateKey,
    pub key_path: PathBuf,
    /// Header names to sign, deduplicated, always containing From.
    pub headers: Vec<String>,
    pub header_canon: Canonicalization,
    pub body_canon: Canonicalization,
    pub expire: Option<Duration>,
    pub active_from: Option<SystemTime>,
    pub active_until: Option<SystemTime>,
}

impl ConfiguredKey {
    /// Signs at `now`: `active_from <= now < active_until` (either bound may be absent).
    pub fn active_at(&self, now: SystemTime) -> bool {
        self.active_from.is_none_or(|f| f <= now) && self.active_until.is_none_or(|u| now < u)
    }

    /// Load and check `config.dkim[index]`.
    pub fn load(config: &Config, index: usize) -> Result<ConfiguredKey, DkimError> {
        let d: &DkimConfig = &config.dkim[index];
        let key_name = |field: &str| format!("dkim[{index}].{field}");
        let domain = normalize_domain(&d.domain).ok_or_else(|| {
            invalid(
                key_name("domain"),
                format!(
                    "expected a domain name such as example.com, got {:?}",
                    d.domain
                ),
            )
        })?;
        if !valid_selector(&d.selector) {
            return Err(invalid(
                key_name("selector"),
                format!(
                    "expected a selector of letters, digits, '-' and '_' (dots separate labels), \
                     got {:?}",
                    d.selector
                ),
            ));
        }
        let headers = header_list(&d.headers).map_err(|m| invalid(key_name("headers"), m))?;
        let (header_canon, body_canon) = parse_canonicalization(d.canonicalization.as_deref())
            .map_err(|m| invalid(key_name("canonicalization"), m))?;
        if d.expire == Some(Duration::ZERO) {
            return Err(invalid(
                key_name("expire"),
                "must be above zero (e.g. \"7d\"), or left out for no x= tag",
            ));
        }
        let active_from = parse_instant(d.active_from.as_deref())
            .map_err(|m| invalid(key_name("active_from"), m))?;
        let active_until = parse_instant(d.active_until.as_deref())
            .map_err(|m| invalid(key_name("active_until"), m))?;
        if let (Some(f), Some(u)) = (active_from, active_until)
            && f >= u
        {
            return Err(invalid(
                key_name("active_until"),
                "must be later than active_from",
            ));
        }
        let key_path = config.resolve_path(&d.key);
        let pem = std::fs::read(&key_path).map_err(|source| DkimError::KeyRead {
            index,
            domain: domain.clone(),
            path: key_path.display().to_string(),
            source,
        })?;
        let key =
            parse_private_key(&pem, d.algorithm).map_err(|problem| DkimError::KeyUnusable {
                index,
                domain: domain.clone(),
                path: key_path.display().to_string(),
                problem,
            })?;
        Ok(ConfiguredKey {
            index,
            domain,
            selector: d.selector.clone(),
            key,
            key_path,
            headers,
            header_canon,
            body_canon,
            expire: d.expire,
            active_from,
            active_until,
        })
    }

    fn config_algorithm(&self) -> DkimAlgorithm {
        match self.key {
            PrivateKey::Rsa(_) => DkimAlgorithm::RsaSha256,
            PrivateKey::Ed25519(_) => DkimAlgorithm::Ed25519Sha256,
        }
    }
}

fn header_list(configured: &[String]) -> Result<Vec<String>, String> {
    let source: Vec<&str> = if configured.is_empty() {
        DEFAULT_SIGNED_HEADERS.to_vec()
    } else {
        configured.iter().map(|s| s.trim()).collect()
    };
    let mut out: Vec<String> = Vec::new();
    for name in source {
        if name.is_empty() || !name.bytes().all(|b| (33..=126).contains(&b) && b != b':') {
            return Err(format!(
                "{name:?} is not a header field name (printable ASCII without ':' or spaces)"
            ));
        }
        if name.eq_ignore_ascii_case("DKIM-Signature") {
            return Err("DKIM-Signature cannot be signed by itself; remove it".to_string());
        }
        if !out.iter().any(|h| h.eq_ignore_ascii_case(name)) {
            out.push(name.to_string());
        }
    }
    if !out.iter().any(|h| h.eq_ignore_ascii_case("From")) {
        return Err("must include From (RFC 6376 §5.4: From is always signed)".to_string());
    }
    Ok(out)
}

fn parse_canonicalization(
    value: Option<&str>,
) -> Result<(Canonicalization, Canonicalization), String> {
    let Some(value) = value else {
        return Ok((Canonicalization::Relaxed, Canonicalization::Relaxed));
    };
    let one = |s: &str| match s.trim().to_ascii_lowercase().as_str() {
        "relaxed" => Some(Canonicalization::Relaxed),
        "simple" => Some(Canonicalization::Simple),
        _ => None,
    };
    // As in the c= tag, a single name applies to headers and the body defaults to simple.
    let parsed = match value.split_once('/') {
        Some((h, b)) => one(h).zip(one(b)),
        None => one(value).map(|h| (h, Canonicalization::Simple)),
    };
    parsed.ok_or_else(|| {
        format!(
            "expected relaxed/relaxed, relaxed/simple, simple/relaxed or simple/simple, \
             got {value:?}"
        )
    })
}

fn parse_instant(value: Option<&str>) -> Result<Option<SystemTime>, String> {
    let Some(value) = value else {
        return Ok(None);
    };
    time::OffsetDateTime::parse(value.trim(), &time::format_description::well_known::Rfc3339)
        .map(|t| Some(SystemTime::from(t)))
        .map_err(|e| {
            format!(
                "expected an RFC 3339 instant such as \"2026-03-01T00:00:00Z\", got {value:?} ({e})"
            )
        })
}

/// Signs outgoing messages with the configured DKIM keys. Cheap to clone (an `Arc` inside) and
/// `Send + Sync`: intake can sign from any thread.
///
/// Signing costs one private-key operation per applicable key (RSA-2048 is ~0.3–1 ms of CPU):
/// call [`DkimSigner::sign`] from a blocking-capable thread (`spawn_blocking`, a worker pool),
/// not directly on the async runtime.
#[derive(Clone, Debug)]
pub struct DkimSigner {
    inner: Arc<SignerInner>,
}

#[derive(Debug)]
struct SignerInner {
    keys: Vec<ConfiguredKey>,
    fallback_domain: Option<String>,
    reject_unsigned: bool,
}

impl DkimSigner {
    /// Load and validate every `[[dkim]]` key and the `[dkim_policy]`. Fails on the first
    /// problem, naming `dkim[i]`, the key file and the domain.
    pub fn from_config(config: &Config) -> Result<DkimSigner, DkimError> {
        let keys = (0..config.dkim.len())
            .map(|i| ConfiguredKey::load(config, i))
            .collect::<Result<Vec<_>, _>>()?;
        for (i, a) in keys.iter().enumerate() {
            for b in &keys[..i] {
                if a.domain == b.domain
                    && a.selector == b.selector
                    && windows_overlap(a, b)
                    && (a.config_algorithm() != b.config_algorithm()
                        || !a.key.matches_public(&b.key.public_key_dns()))
                {
                    return Err(invalid(
                        format!("dkim[{}].selector", a.index),
                        format!(
                            "selector {} of {} is also used by dkim[{}] with another key at the \
                             same time; DNS holds one key per selector, so give each key its own \
                             selector",
                            a.selector, a.domain, b.index
                        ),
                    ));
                }
            }
        }
        let policy = &config.dkim_policy;
        let fallback_domain = match &policy.fallback_domain {
            None => None,
            Some(d) => {
                let norm = normalize_domain(d).ok_or_else(|| {
                    invalid(
                        "dkim_policy.fallback_domain",
                        format!("expected a domain name, got {d:?}"),
                    )
                })?;
                if !keys.iter().any(|k| k.domain == norm) {
                    return Err(invalid(
                        "dkim_policy.fallback_domain",
                        format!(
                            "no [[dkim]] key is configured for {norm}; add one or remove the fallback"
                        ),
                    ));
                }
                Some(norm)
            }
        };
        Ok(DkimSigner {
            inner: Arc::new(SignerInner {
                keys,
                fallback_domain,
                reject_unsigned: policy.reject_unsigned,
            }),
        })
    }

    /// No `[[dkim]]` key is configured.
    pub fn is_empty(&self) -> bool {
        self.inner.keys.is_empty()
    }

    /// The loaded keys, in config order.
    pub fn keys(&self) -> &[ConfiguredKey] {
        &self.inner.keys
    }

    /// The keys that would sign mail from `from_domain` at `now`: those of the From domain
    /// (or, failing that, of its closest parent domain with a key: aligned under relaxed DMARC),
    /// else those of `[dkim_policy] fallback_domain`. Only keys whose window contains `now`.
    pub fn keys_for(&self, from_domain: Option<&str>, now: SystemTime) -> Vec<&ConfiguredKey> {
        let active_for = |domain: &str| -> Vec<&ConfiguredKey> {
            self.inner
                .keys
                .iter()
                .filter(|k| k.domain == domain && k.active_at(now))
                .collect()
        };
        if let Some(from) = from_domain.and_then(normalize_domain) {
            let mut candidate = from.as_str();
            loop {
                let found = active_for(candidate);
                if !found.is_empty() {
                    return found;
                }
                match candidate.split_once('.') {
                    Some((_, parent)) if parent.contains('.') => candidate = parent,
                    _ => break,
                }
            }
        }
        match &self.inner.fallback_domain {
            Some(fallback) => active_for(fallback),
            None => Vec::new(),
        }
    }

    /// Returns the DKIM-Signature header lines (CRLF-terminated) to prepend, or an empty Vec
    /// when no key applies and policy allows unsigned mail; `Err` (550 5.7.1) when
    /// `[dkim_policy] reject_unsigned` refuses it. `now` decides which keys are active and
    /// sets `t=` (and `x=` with `expire`).
    ///
    /// `message` is the whole message with CRLF line ends, as it will be transmitted (a missing
    /// final CRLF is assumed, since SMTP adds it).
    pub fn sign(&self, message: &[u8], now: SystemTime) -> Result<Vec<u8>, Rejection> {
        self.sign_with_policy(message, now, self.inner.reject_unsigned)
    }

    /// [`DkimSigner::sign`] with `reject_unsigned` given instead of taken from
    /// `[dkim_policy]`: Gannet's own DSNs pass `false` (signed when a key applies to the host
    /// name, exempt otherwise).
    pub fn sign_with_policy(
        &self,
        message: &[u8],
        now: SystemTime,
        reject_unsigned: bool,
    ) -> Result<Vec<u8>, Rejection> {
        let from = from_domain(message);
        let keys = self.keys_for(from.as_deref(), now);
        if keys.is_empty() {
            if reject_unsigned {
                let what = match &from {
                    Some(d) => format!("no DKIM signing key for From domain {d}"),
                    None => "no From address to choose a DKIM signing key by".to_string(),
                };
                return Err(Rejection::new(
                    550,
                    "5.7.1",
                    format!("{what}; this gateway does not send unsigned mail"),
                )
                .with_field("from"));
            }
            if !self.is_empty() {
                tracing::debug!(from = ?from, "no DKIM key applies; sending unsigned");
            }
            return Ok(Vec::new());
        }
        let now_secs = now
            .duration_since(SystemTime::UNIX_EPOCH)
            .map_or(0, |d| d.as_secs());
        let parts = MessageParts::new(message);
        let mut out = Vec::with_capacity(600 * keys.len());
        for key in keys {
            match sign_one(key, &parts, now_secs) {
                Ok(header) => out.extend_from_slice(header.as_bytes()),
                Err(e) => {
                    tracing::error!(
                        dkim = key.index,
                        domain = %key.domain,
                        selector = %key.selector,
                        error = %e,
                        "DKIM signing failed"
                    );
                    return Err(Rejection::new(
                        451,
                        "4.3.0",
                        "temporary failure signing the message; try again later",
                    ));
                }
            }
        }
        Ok(out)
    }
}

fn windows_overlap(a: &ConfiguredKey, b: &ConfiguredKey) -> bool {
    let starts_before_end =
        |x: &ConfiguredKey, y: &ConfiguredKey| match (x.active_from, y.active_until) {
            (Some(f), Some(u)) => f < u,
            _ => true,
        };
    starts_before_end(a, b) && starts_before_end(b, a)
}

/// The domain of the first address in the first From header, lowercase A-label.
pub fn from_domain(message: &[u8]) -> Option<String> {
    let (_, value) =
        Fields::new(message).find(|(name, _)| name.trim_ascii().eq_ignore_ascii_case(b"From"))?;
    let parsed = mail_parser::parsers::MessageStream::new(value).parse_address();
    let address = match &parsed {
        mail_parser::HeaderValue::Address(a) => a.first()?.address.as_deref()?.to_string(),
        _ => return None,
    };
    crate::message::domain_of(&address).and_then(|d| normalize_domain(&d))
}

/// What every signature of one message shares: the body hashes (one per body canonicalisation,
/// computed once) and the header names present.
struct MessageParts<'m> {
    message: &'m [u8],
    body: &'m [u8],
    present: HashSet<String>,
    body_hashes: [std::cell::OnceCell<Vec<u8>>; 2],
}

impl<'m> MessageParts<'m> {
    fn new(message: &'m [u8]) -> Self {
        let mut it = Fields::new(message);
        let present = (&mut it)
            .map(|(name, _)| String::from_utf8_lossy(name.trim_ascii()).to_ascii_lowercase())
            .collect();
        let body = it.body();
        MessageParts {
            message,
            body,
            present,
            body_hashes: Default::default(),
        }
    }

    fn body_hash(&self, c: Canonicalization) -> &[u8] {
        let slot = match c {
            Canonicalization::Relaxed => 0,
            Canonicalization::Simple => 1,
        };
        self.body_hashes[slot]
            .get_or_init(|| canon::body_hash(c, HashAlgorithm::Sha256, self.body, None))
    }
}

fn sign_one(
    key: &ConfiguredKey,
    parts: &MessageParts<'_>,
    now_secs: u64,
) -> Result<String, String> {
    // h=: the configured names present in the message, plus one more From (over-signing).
    // mail-auth's canonicaliser signs every instance of each listed name, and lists a name it
    // cannot find again (the extra From) as a null instance.
    let mut h: Vec<String> = key
        .headers
        .iter()
        .filter(|name| {
            name.eq_ignore_ascii_case("From") || parts.present.contains(&name.to_ascii_lowercase())
        })
        .cloned()
        .collect();
    h.push("From".to_string());

    let mut signature = Signature {
        v: 1,
        a: key.key.algorithm(),
        d: key.domain.clone(),
        s: key.selector.clone(),
        h,
        ch: key.header_canon,
        cb: key.body_canon,
        ..Default::default()
    };
    let (_, canonical_headers, signed_headers, _) =
        signature.canonicalize(Fields::new(parts.message));
    signature.h = signed_headers;
    signature.bh = parts.body_hash(key.body_canon).to_vec();
    signature.t = now_secs;
    if let Some(expire) = key.expire {
        signature.x = now_secs + expire.as_secs().max(1);
    }

    // The signing input (RFC 6376 §3.7): canonical signed headers, then this DKIM-Signature
    // header canonicalised with an empty b= and no trailing CRLF.
    let mut input = Vec::with_capacity(1024);
    canonical_headers.write(&mut input);
    signature.write(&mut input, false);
    signature.b = key.key.sign(&input).map_err(|e| e.to_string())?;
    Ok(signature.to_header())
}

#[cfg(test)]
#[path = "signer_tests.rs"]
pub(crate) mod tests;
