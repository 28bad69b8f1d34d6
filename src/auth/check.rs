//! Sending-domain checks (`gannet check-domain`, and the periodic `gannet_domain_check_ok`
//! gauge): is a domain's DNS ready for Gannet to send as it from the configured pool addresses?
//!
//! Owns: the [`DomainReport`] (one [`Finding`] per check and subject, each failing one naming the
//! record to publish), its human and JSON renderings, and [`run_periodic_checks`]. Asks DNS only
//! through the `[dns]` resolver and mail-auth's SPF/DMARC/iprev evaluation; never changes config
//! or DNS. A check that cannot be decided (DNS timeout) is reported as not ok, with the reason.

use std::collections::BTreeSet;
use std::fmt::Write as _;
use std::net::IpAddr;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use base64::Engine;
use mail_auth::common::parse::TxtRecordParser;
use mail_auth::common::verify::DomainKey;
use mail_auth::dmarc::verify::DmarcParameters;
use mail_auth::dmarc::{Alignment, Policy};
use mail_auth::spf::verify::SpfParameters;
use mail_auth::{
    AuthenticatedMessage, DkimOutput, DmarcResult, IprevResult, MessageAuthenticator, Parameters,
    SpfOutput, SpfResult,
};
use serde::Serialize;
use tokio_util::sync::CancellationToken;

use super::dns::{self, Txt};
use super::keys::DnsRecord;
use super::names::normalize_domain;
use super::signer::ConfiguredKey;
use crate::config::Config;

/// Which kind of check a finding belongs to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum CheckKind {
    Spf,
    Dkim,
    Dmarc,
    Alignment,
    Ptr,
}

impl CheckKind {
    pub const ALL: [CheckKind; 5] = [
        CheckKind::Spf,
        CheckKind::Dkim,
        CheckKind::Dmarc,
        CheckKind::Alignment,
        CheckKind::Ptr,
    ];

    pub fn as_str(&self) -> &'static str {
        match self {
            CheckKind::Spf => "spf",
            CheckKind::Dkim => "dkim",
            CheckKind::Dmarc => "dmarc",
            CheckKind::Alignment => "alignment",
            CheckKind::Ptr => "ptr",
        }
    }
}

/// One check of one subject (a source IP, a selector, a domain).
#[derive(Debug, Clone, Serialize)]
pub struct Finding {
    pub check: CheckKind,
    /// What was checked: an IP, `selector._domainkey.domain`, a domain, `d=...`.
    pub subject: String,
    pub ok: bool,
    /// What was found, in a sentence.
    pub detail: String,
    /// The record to publish (or change to make) when not ok, when Gannet can tell.
    pub fix: Option<String>,
}

/// Everything `check_domain` found for one domain.
#[derive(Debug, Clone, Serialize)]
pub struct DomainReport {
    /// The From domain checked.
    pub domain: String,
    /// The Return-Path (MAIL FROM) domain assumed for SPF and alignment.
    pub return_path_domain: String,
    /// The domain whose keys sign this domain's mail (`d=`), if any.
    pub signing_domain: Option<String>,
    pub checks: Vec<Finding>,
}

impl DomainReport {
    pub fn all_ok(&self) -> bool {
        self.checks.iter().all(|c| c.ok)
    }

    /// Whether every finding of `kind` is ok; None when there is none of that kind.
    pub fn kind_ok(&self, kind: CheckKind) -> Option<bool> {
        let mut of_kind = self.checks.iter().filter(|c| c.check == kind).peekable();
        of_kind.peek()?;
        Some(of_kind.all(|c| c.ok))
    }

    /// A report for people: one line per check, failing ones followed by the fix.
    pub fn render_human(&self) -> String {
        let mut out = String::new();
        let _ = writeln!(out, "Domain {}", self.domain);
        if self.return_path_domain != self.domain {
            let _ = writeln!(out, "Return-Path domain {}", self.return_path_domain);
        }
        for c in &self.checks {
            let mark = if c.ok { "ok  " } else { "FAIL" };
            let _ = writeln!(
                out,
                "  {mark} {:<9} {}: {}",
                c.check.as_str(),
                c.subject,
                c.detail
            );
            if let (false, Some(fix)) = (c.ok, &c.fix) {
                for (i, line) in fix.lines().enumerate() {
                    let lead = if i == 0 { "fix:" } else { "    " };
                    let _ = writeln!(out, "         {lead} {line}");
                }
            }
        }
        let failing = self.checks.iter().filter(|c| !c.ok).count();
        if failing == 0 {
            let _ = writeln!(out, "All {} checks passed.", self.checks.len());
        } else {
            let _ = writeln!(
                out,
                "{failing} of {} checks failed: {}",
                self.checks.len(),
                self.checks
                    .iter()
                    .filter(|c| !c.ok)
                    .map(|c| format!("{} {}", c.check.as_str(), c.subject))
                    .collect::<Vec<_>>()
                    .join(", ")
            );
        }
        out
    }

    /// The report as JSON (`--json`).
    pub fn to_json(&self) -> String {
        serde_json::to_string_pretty(self).unwrap_or_else(|e| {
            format!("{{\"error\": {{\"message\": \"cannot encode report: {e}\"}}}}")
        })
    }
}

#[derive(Debug, thiserror::Error)]
pub enum CheckError {
    #[error("invalid {what} {value:?}: expected a domain name such as example.com")]
    InvalidDomain { what: &'static str, value: String },
    #[error("cannot check DNS: {message} (see the [dns] section)")]
    Resolver { message: String },
}

/// A finding under construction.
fn finding(check: CheckKind, subject: impl Into<String>, ok: bool, detail: String) -> Finding {
    Finding {
        check,
        subject: subject.into(),
        ok,
        detail,
        fix: None,
    }
}

fn with_fix(mut f: Finding, fix: impl Into<String>) -> Finding {
    f.fix = Some(fix.into());
    f
}

/// Check `domain` as a From domain, with `return_path_domain` (default: the domain itself) as
/// the MAIL FROM domain: SPF for every pool source address, each configured DKIM selector's
/// published key, the DMARC record and its alignment rules, and forward-confirmed reverse DNS
/// of each source address.
pub async fn check_domain(
    config: &Config,
    domain: &str,
    return_path_domain: Option<&str>,
) -> Result<DomainReport, CheckError> {
    let domain = normalize_domain(domain).ok_or_else(|| CheckError::InvalidDomain {
        what: "domain",
        value: domain.to_string(),
    })?;
    let rp = match return_path_domain {
        Some(d) => normalize_domain(d).ok_or_else(|| CheckError::InvalidDomain {
            what: "return-path domain",
            value: d.to_string(),
        })?,
        None => domain.clone(),
    };
    let auth =
        dns::authenticator(&config.dns).map_err(|message| CheckError::Resolver { message })?;
    let sources = sources(config);
    let mut checks = Vec::new();

    checks.extend(spf_checks(&auth, config, &domain, &sources, "").await);
    if rp != domain {
        checks.extend(spf_checks(&auth, config, &rp, &sources, " (Return-Path)").await);
    }
    let (signing_domain, dkim) = dkim_checks(&auth, config, &domain).await;
    checks.extend(dkim);
    checks.extend(dmarc_checks(&auth, &domain, &rp, signing_domain.as_deref()).await);
    checks.extend(ptr_checks(&auth, &sources).await);

    Ok(DomainReport {
        domain,
        return_path_domain: rp,
        signing_domain,
        checks,
    })
}

/// Distinct pool source addresses with the EHLO name used from each (first one wins).
fn sources(config: &Config) -> Vec<(IpAddr, String)> {
    let mut out: Vec<(IpAddr, String)> = Vec::new();
    for s in config.pools.iter().flat_map(|p| &p.sources) {
        if !out.iter().any(|(ip, _)| *ip == s.ip) {
            out.push((s.ip, s.ehlo.clone()));
        }
    }
    out
}

fn unspecified(check: CheckKind, ip: IpAddr) -> Finding {
    with_fix(
        finding(
            check,
            ip.to_string(),
            false,
            format!(
                "pool source {ip} lets the kernel choose the address, so Gannet cannot tell \
                 which address receivers will see"
            ),
        ),
        "set `ip` in [[pool]] sources to the public address mail leaves from",
    )
}

fn spf_record(records: &[String]) -> Option<&str> {
    records.iter().map(|r| r.as_str()).find(|r| {
        let r = r.trim_start().to_ascii_lowercase();
        r == "v=spf1" || r.starts_with("v=spf1 ")
    })
}

fn ip_mechanism(ip: &IpAddr) -> String {
    match ip {
        IpAddr::V4(v4) => format!("ip4:{v4}"),
        IpAddr::V6(v6) => format!("ip6:{v6}"),
    }
}

/// The SPF record to publish so that `add` pass: the existing record with `ip4:`/`ip6:`
/// mechanisms inserted before its `all` or `redirect=`, or a new record ending in `-all`.
pub fn suggest_spf(existing: Option<&str>, add: &[IpAddr]) -> String {
    let new: Vec<String> = add.iter().map(ip_mechanism).collect();
    let Some(existing) = existing else {
        return format!("v=spf1 {} -all", new.join(" "));
    };
    let mut terms: Vec<String> = existing.split_whitespace().map(String::from).collect();
    let is_end = |t: &String| {
        let l = t.to_ascii_lowercase();
        let l = l.trim_start_matches(['+', '-', '~', '?']);
        l == "all" || t.to_ascii_lowercase().starts_with("redirect=")
    };
    let at = terms.iter().position(is_end).unwrap_or(terms.len());
    for (i, m) in new.into_iter().enumerate() {
        if !terms.iter().any(|t| t.eq_ignore_ascii_case(&m)) {
            terms.insert(at + i, m);
        }
    }
    terms.join(" ")
}

fn quote_txt(value: &str) -> String {
    super::keys::split_txt(value)
        .iter()
        .map(|s| format!("\"{s}\""))
        .collect::<Vec<_>>()
        .join(" ")
}

async fn spf_checks(
    auth: &MessageAuthenticator,
    config: &Config,
    domain: &str,
    sources: &[(IpAddr, String)],
    role: &str,
) -> Vec<Finding> {
    let records = dns::txt(auth, domain).await;
    let existing = match &records {
        Txt::Records(r) => spf_record(r).map(String::from),
        _ => None,
    };
    let sender = format!("postmaster@{domain}");
    let mut results = Vec::new();
    for (ip, ehlo) in sources {
        if ip.is_unspecified() {
            results.push((*ip, None));
            continue;
        }
        let out: SpfOutput = auth
            .check_host(Parameters::new(SpfParameters::verify_mail_from(
                *ip,
                ehlo,
                &config.hostname,
                &sender,
            )))
            .await;
        results.push((*ip, Some(out.result())));
    }
    let failing: Vec<IpAddr> = results
        .iter()
        .filter(|(ip, r)| !ip.is_unspecified() && *r != Some(SpfResult::Pass))
        .map(|(ip, _)| *ip)
        .collect();
    let record_text = existing
        .as_deref()
        .map(|r| format!(" (record: {r})"))
        .unwrap_or_default();
    let fix = if failing.is_empty() {
        None
    } else {
        let suggested = suggest_spf(existing.as_deref(), &failing);
        Some(match &existing {
            Some(old) => format!(
                "publish {domain}. TXT {} (replacing \"{old}\")",
                quote_txt(&suggested)
            ),
            None => format!("publish {domain}. TXT {}", quote_txt(&suggested)),
        })
    };
    results
        .into_iter()
        .map(|(ip, result)| {
            let Some(result) = result else {
                return unspecified(CheckKind::Spf, ip);
            };
            let subject = format!("{ip}{role}");
            let ok = result == SpfResult::Pass;
            let detail = match (&records, result) {
                (Txt::Error(e), _) => format!("DNS lookup of {domain} TXT failed: {e}"),
                (_, SpfResult::Pass) => format!("SPF of {domain} passes {ip}{record_text}"),
                (_, SpfResult::None) => format!("{domain} publishes no SPF record"),
                (_, SpfResult::TempError) => {
                    format!(
                        "SPF of {domain} could not be evaluated for {ip} (DNS error){record_text}"
                    )
                }
                (_, SpfResult::PermError) => format!(
                    "SPF record of {domain} is broken (permerror: syntax or more than 10 \
                     lookups){record_text}"
                ),
                (_, other) => format!(
                    "SPF of {domain} gives {} for {ip}, not pass{record_text}",
                    other.to_string().to_ascii_lowercase()
                ),
            };
            let f = finding(CheckKind::Spf, subject, ok, detail);
            match (&fix, ok, result) {
                (Some(fix), false, r) if r != SpfResult::TempError => with_fix(f, fix.clone()),
                _ => f,
            }
        })
        .collect()
}

/// The domain whose keys sign mail from `domain`, mirroring the signer: the domain itself, else
/// its closest parent with a key, else the fallback domain.
fn signing_domain_for(config: &Config, domain: &str) -> Option<(String, bool)> {
    let configured: BTreeSet<String> = config
        .dkim
        .iter()
        .filter_map(|d| normalize_domain(&d.domain))
        .collect();
    let mut candidate = domain;
    loop {
        if configured.contains(candidate) {
            return Some((candidate.to_string(), false));
        }
        match candidate.split_once('.') {
            Some((_, parent)) if parent.contains('.') => candidate = parent,
            _ => break,
        }
    }
    config
        .dkim_policy
        .fallback_domain
        .as_deref()
        .and_then(normalize_domain)
        .filter(|f| configured.contains(f))
        .map(|f| (f, true))
}

async fn dkim_checks(
    auth: &MessageAuthenticator,
    config: &Config,
    domain: &str,
) -> (Option<String>, Vec<Finding>) {
    let mut out = Vec::new();
    let keygen_hint = format!(
        "generate a key with `gannet dkim keygen --domain {domain} --selector s1 --algorithm rsa \
         --bits 2048 --out {domain}.s1.pem`, publish the record it prints and add the [[dkim]] \
         entry"
    );
    let Some((signing, is_fallback)) = signing_domain_for(config, domain) else {
        out.push(with_fix(
            finding(
                CheckKind::Dkim,
                domain,
                false,
                format!("no [[dkim]] key signs mail from {domain}: it goes out unsigned"),
            ),
            keygen_hint,
        ));
        return (None, out);
    };
    if is_fallback {
        out.push(with_fix(
            finding(
                CheckKind::Dkim,
                domain,
                false,
                format!(
                    "no [[dkim]] key for {domain}: its mail is signed by the fallback domain \
                     {signing}, which DMARC does not count for {domain}"
                ),
            ),
            keygen_hint,
        ));
    }
    let now = SystemTime::now();
    for (index, entry) in config.dkim.iter().enumerate() {
        if normalize_domain(&entry.domain).as_deref() != Some(signing.as_str()) {
            continue;
        }
        let subject = format!("{}._domainkey.{signing}", entry.selector);
        match ConfiguredKey::load(config, index) {
            Ok(key) => out.push(check_selector(auth, &key, &subject, now).await),
            Err(e) => out.push(with_fix(
                finding(CheckKind::Dkim, subject, false, format!("{e}")),
                format!(
                    "fix the key file of dkim[{index}] or create one with `gannet dkim keygen`"
                ),
            )),
        }
    }
    (Some(signing), out)
}

fn window_note(key: &ConfiguredKey, now: SystemTime) -> String {
    let fmt = |t: SystemTime| {
        time::OffsetDateTime::from(t)
            .format(&time::format_description::well_known::Rfc3339)
            .unwrap_or_else(|_| "?".to_string())
    };
    match (key.active_from, key.active_until) {
        (Some(f), _) if now < f => format!("; signs from {}", fmt(f)),
        (_, Some(u)) if now >= u => format!("; stopped signing at {}", fmt(u)),
        (_, Some(u)) => format!("; signing until {}", fmt(u)),
        _ => "; signing now".to_string(),
    }
}

async fn check_selector(
    auth: &MessageAuthenticator,
    key: &ConfiguredKey,
    subject: &str,
    now: SystemTime,
) -> Finding {
    let expected = DnsRecord::for_key(&key.domain, &key.selector, &key.key);
    let publish = format!("publish {}", expected.zone_line());
    let what = format!(
        "dkim[{}] ({} {}-bit key, {}{})",
        key.index,
        key.key.key_type(),
        key.key.bits(),
        key.key_path.display(),
        window_note(key, now)
    );
    let records = match dns::txt(auth, subject).await {
        Txt::Records(r) => r,
        Txt::NotFound => {
            return with_fix(
                finding(
                    CheckKind::Dkim,
                    subject,
                    false,
                    format!("no DKIM key record at {subject} for {what}"),
                ),
                publish,
            );
        }
        Txt::Error(e) => {
            return finding(
                CheckKind::Dkim,
                subject,
                false,
                format!("DNS lookup of {subject} TXT failed: {e}"),
            );
        }
    };
    // Prefer a record that parses as a DKIM key; describe the first otherwise.
    let record = records
        .iter()
        .find(|r| DomainKey::parse(r.as_bytes()).is_ok())
        .unwrap_or(&records[0]);
    let tags = dns::tags(record);
    let wrong = |detail: String| {
        with_fix(
            finding(CheckKind::Dkim, subject, false, detail),
            publish.clone(),
        )
    };
    if let Some(v) = dns::tag(&tags, "v")
        && v != "DKIM1"
    {
        return wrong(format!(
            "record at {subject} has v={v}, expected v=DKIM1 ({record})"
        ));
    }
    let k = dns::tag(&tags, "k").unwrap_or("rsa").to_ascii_lowercase();
    if k != key.key.key_type() {
        return wrong(format!(
            "record at {subject} is for a k={k} key, but {what} is {}",
            key.key.key_type()
        ));
    }
    let Some(p) = dns::tag(&tags, "p") else {
        return wrong(format!("record at {subject} has no p= tag ({record})"));
    };
    let p: String = p.chars().filter(|c| !c.is_whitespace()).collect();
    if p.is_empty() {
        return wrong(format!("the key at {subject} is revoked (empty p=)"));
    }
    let Ok(published) = base64::engine::general_purpose::STANDARD.decode(&p) else {
        return wrong(format!("p= at {subject} is not valid base64"));
    };
    if !key.key.matches_public(&published) {
        return wrong(format!(
            "the key published at {subject} does not match the private key of {what}"
        ));
    }
    let testing = if dns::tag(&tags, "t").is_some_and(|t| t.split(':').any(|f| f.trim() == "y")) {
        " (t=y: receivers treat it as testing)"
    } else {
        ""
    };
    finding(
        CheckKind::Dkim,
        subject,
        true,
        format!("{subject} publishes the public key of {what}{testing}"),
    )
}

fn mode(a: Alignment) -> &'static str {
    match a {
        Alignment::Strict => "strict",
        _ => "relaxed",
    }
}

fn policy_name(p: Policy) -> &'static str {
    match p {
        Policy::Reject => "reject",
        Policy::Quarantine => "quarantine",
        _ => "none",
    }
}

/// Without a DMARC record there is no organisational domain to compare: count equal domains
/// and parent/child pairs as aligned (what relaxed alignment always allows).
fn loosely_aligned(a: &str, b: &str) -> bool {
    a == b || a.ends_with(&format!(".{b}")) || b.ends_with(&format!(".{a}"))
}

/// The names the RFC 9989 DMARC tree walk asks for `domain`, in order: the domain itself, then
/// at most seven labels, then one label fewer each time down to the top-level domain.
fn tree_walk_names(domain: &str) -> Vec<String> {
    let labels: Vec<&str> = domain.split('.').filter(|l| !l.is_empty()).collect();
    let total = labels.len();
    let mut names = Vec::new();
    if total < 2 {
        return names;
    }
    let mut count = total;
    loop {
        names.push(format!("_dmarc.{}", labels[total - count..].join(".")));
        if count == 1 {
            break;
        }
        count = if count >= 8 { 7 } else { count - 1 };
    }
    names
}

/// Repeat the tree walk's lookups and return the first that fails with a DNS error.
async fn failed_tree_walk_lookup(
    auth: &MessageAuthenticator,
    domain: &str,
) -> Option<(String, String)> {
    for name in tree_walk_names(domain) {
        if let Txt::Error(e) = dns::txt(auth, &name).await {
            return Some((name, e));
        }
    }
    None
}

fn temp_error_text(a: &DmarcResult, b: &DmarcResult) -> String {
    match (a, b) {
        (DmarcResult::TempError(e), _) | (_, DmarcResult::TempError(e)) => e.to_string(),
        _ => "no detail".to_string(),
    }
}

async fn dmarc_checks(
    auth: &MessageAuthenticator,
    domain: &str,
    rp: &str,
    signing: Option<&str>,
) -> Vec<Finding> {
    let mut out = Vec::new();
    // Let mail-auth decide: a message From the domain, SPF passing for the Return-Path domain
    // and a passing signature by the signing domain. Its DMARC evaluation (with the RFC 9989
    // tree walk for the organisational domain) then says which identifiers align.
    let raw = format!("From: postmaster@{domain}\r\n\r\n");
    let Some(message) = AuthenticatedMessage::parse(raw.as_bytes()) else {
        return out;
    };
    let signature = mail_auth::dkim::Signature {
        d: signing.unwrap_or_default().to_string(),
        ..Default::default()
    };
    let dkim_output: Vec<DkimOutput<'_>> = match signing {
        Some(_) => vec![DkimOutput::pass().with_signature(&signature)],
        None => Vec::new(),
    };
    let spf_output = SpfOutput::new(rp.to_string()).with_result(SpfResult::Pass);
    let dmarc = auth
        .verify_dmarc(Parameters::new(DmarcParameters::new(
            &message,
            &dkim_output,
            rp,
            &spf_output,
        )))
        .await;

    let dmarc_name = format!("_dmarc.{domain}");
    let raw_record = dns::txt(auth, &dmarc_name).await;
    let suggested = format!(
        "publish {dmarc_name}. TXT \"v=DMARC1; p=none; rua=mailto:dmarc-reports@{domain}\" \
         (then move to p=quarantine or p=reject once reports show only your own mail)"
    );
    let temp_error = |r: &DmarcResult| matches!(r, DmarcResult::TempError(_));
    let record = dmarc.dmarc_record();
    match (record, &raw_record) {
        (_, Txt::Error(e)) => out.push(finding(
            CheckKind::Dmarc,
            domain,
            false,
            format!("DNS lookup of {dmarc_name} TXT failed: {e}"),
        )),
        (Some(rec), _) => {
            let policy = policy_name(dmarc.policy());
            let whence = match &raw_record {
                Txt::Records(r) if r.iter().any(|t| t.trim_start().starts_with("v=DMARC1")) => {
                    format!("at {dmarc_name}")
                }
                _ => "inherited from the organisational domain".to_string(),
            };
            let advice = if policy == "none" {
                "; p=none only monitors: move to quarantine or reject once reports look clean"
            } else {
                ""
            };
            let sub = if rec.sp != rec.p && !matches!(rec.sp, Policy::Unspecified) {
                format!(", sp={}", policy_name(rec.sp))
            } else {
                String::new()
            };
            out.push(finding(
                CheckKind::Dmarc,
                domain,
                true,
                format!(
                    "DMARC record {whence}: policy for {domain} is p={policy}{sub} \
                     (adkim={}, aspf={}){advice}",
                    mode(rec.adkim),
                    mode(rec.aspf)
                ),
            ));
        }
        (None, _) if temp_error(dmarc.dkim_result()) || temp_error(dmarc.spf_result()) => {
            // A lookup of the RFC 9989 tree walk (the record and the organisational domain's)
            // failed; mail-auth does not say which, so ask again to name it.
            let what = match &raw_record {
                Txt::Records(r) if r.iter().any(|t| t.trim_start().starts_with("v=DMARC1")) => {
                    format!("the DMARC record at {dmarc_name} could not be evaluated")
                }
                _ => format!("the DMARC record of {domain} could not be looked up"),
            };
            let detail = match failed_tree_walk_lookup(auth, domain).await {
                Some((name, e)) => format!(
                    "{what}: the DNS lookup of {name} TXT (finding the organisational domain) \
                     failed: {e}; check that the resolvers in [dns] can answer it, then run \
                     the check again"
                ),
                None => format!(
                    "{what}: a DNS lookup failed while finding the organisational domain ({}); \
                     it answers now, so run the check again",
                    temp_error_text(dmarc.dkim_result(), dmarc.spf_result())
                ),
            };
            out.push(finding(CheckKind::Dmarc, domain, false, detail))
        }
        (None, Txt::Records(r)) if r.iter().any(|t| t.trim_start().starts_with("v=DMARC1")) => out
            .push(with_fix(
                finding(
                    CheckKind::Dmarc,
                    domain,
                    false,
                    format!(
                        "the DMARC record at {dmarc_name} is not usable (no valid p= tag or a \
                         syntax error): {}",
                        r.join(" | ")
                    ),
                ),
                suggested.clone(),
            )),
        (None, _) => out.push(with_fix(
            finding(
                CheckKind::Dmarc,
                domain,
                false,
                format!(
                    "no DMARC record for {domain} (none at {dmarc_name} or its organisational \
                     domain): receivers apply no policy, and bulk senders without one are \
                     refused by large mailbox providers"
                ),
            ),
            suggested,
        )),
    }

    // Alignment of each identifier with the From domain.
    let (adkim, aspf) = record.map_or(("relaxed", "relaxed"), |r| (mode(r.adkim), mode(r.aspf)));
    let aligned = |result: &DmarcResult, a: &str| -> bool {
        match record {
            Some(_) => matches!(result, DmarcResult::Pass),
            None => loosely_aligned(a, domain),
        }
    };
    match signing {
        Some(d) => {
            let ok = aligned(dmarc.dkim_result(), d);
            let detail = if ok {
                format!("DKIM d={d} aligns with From {domain} (adkim={adkim})")
            } else {
                format!(
                    "DKIM d={d} does not align with From {domain} (adkim={adkim}{})",
                    if adkim == "strict" {
                        ": d= must equal the From domain"
                    } else {
                        ""
                    }
                )
            };
            let f = finding(CheckKind::Alignment, format!("dkim d={d}"), ok, detail);
            out.push(if ok {
                f
            } else {
                with_fix(
                    f,
                    format!(
                        "sign with a key of {domain} itself: add a [[dkim]] entry for {domain} \
                         (`gannet dkim keygen --domain {domain} ...`)"
                    ),
                )
            });
        }
        None => out.push(with_fix(
            finding(
                CheckKind::Alignment,
                "dkim",
                false,
                format!("mail from {domain} is not DKIM-signed, so only SPF can align"),
            ),
            format!("add a [[dkim]] key for {domain}"),
        )),
    }
    let ok = aligned(dmarc.spf_result(), rp);
    let detail = if ok {
        format!("Return-Path domain {rp} aligns with From {domain} (aspf={aspf})")
    } else {
        format!(
            "Return-Path domain {rp} does not align with From {domain} (aspf={aspf}), so SPF \
             cannot pass DMARC for this mail{}",
            if signing.is_some() {
                "; DKIM alignment alone can still pass it"
            } else {
                ""
            }
        )
    };
    let f = finding(
        CheckKind::Alignment,
        format!("return-path {rp}"),
        ok,
        detail,
    );
    out.push(if ok {
        f
    } else {
        with_fix(
            f,
            if aspf == "strict" {
                format!(
                    "use a MAIL FROM (Return-Path) address @{domain} (aspf=s needs the same domain)"
                )
            } else {
                format!(
                    "use a MAIL FROM (Return-Path) address in {domain} or a subdomain of it, \
                     e.g. bounces@{domain}, and authorise it in SPF"
                )
            },
        )
    });
    out
}

async fn ptr_checks(auth: &MessageAuthenticator, sources: &[(IpAddr, String)]) -> Vec<Finding> {
    let mut out = Vec::new();
    for (ip, ehlo) in sources {
        if ip.is_unspecified() {
            out.push(unspecified(CheckKind::Ptr, *ip));
            continue;
        }
        let subject = ip.to_string();
        let rev = reverse_name(ip);
        let rr = if ip.is_ipv4() { "A" } else { "AAAA" };
        let ask = format!(
            "ask the owner of {ip} (your hosting provider) to set {rev} PTR {ehlo}., and publish \
             {ehlo}. {rr} {ip}"
        );
        let iprev = auth.verify_iprev(Parameters::new(*ip)).await;
        let names: Vec<String> = iprev
            .ptr
            .as_ref()
            .map(|p| {
                p.iter()
                    .map(|n| n.trim_end_matches('.').to_string())
                    .collect()
            })
            .unwrap_or_default();
        let f = match &iprev.result {
            IprevResult::Pass => {
                let matches_ehlo = names.iter().any(|n| n.eq_ignore_ascii_case(ehlo));
                let note = if matches_ehlo {
                    String::new()
                } else {
                    format!(
                        "; note: the EHLO name {ehlo} differs, and some receivers expect them to \
                         match"
                    )
                };
                finding(
                    CheckKind::Ptr,
                    subject,
                    true,
                    format!(
                        "{ip} has PTR {} which resolves back to it{note}",
                        names.join(", ")
                    ),
                )
            }
            IprevResult::TempError(e) => finding(
                CheckKind::Ptr,
                subject,
                false,
                format!("reverse DNS of {ip} could not be checked: {e}"),
            ),
            IprevResult::Fail(_) if !names.is_empty() => with_fix(
                finding(
                    CheckKind::Ptr,
                    subject,
                    false,
                    format!(
                        "{ip} has PTR {}, but that name does not resolve back to {ip} (no \
                         forward-confirmed reverse DNS)",
                        names.join(", ")
                    ),
                ),
                format!("publish {}. {rr} {ip}", names[0]),
            ),
            _ => with_fix(
                finding(
                    CheckKind::Ptr,
                    subject,
                    false,
                    format!("{ip} has no PTR record ({rev})"),
                ),
                ask,
            ),
        };
        out.push(f);
    }
    out
}

fn reverse_name(ip: &IpAddr) -> String {
    match ip {
        IpAddr::V4(v4) => {
            let o = v4.octets();
            format!("{}.{}.{}.{}.in-addr.arpa.", o[3], o[2], o[1], o[0])
        }
        IpAddr::V6(v6) => {
            let mut s = String::new();
            for b in v6.octets().iter().rev() {
                let _ = write!(s, "{:x}.{:x}.", b & 0xf, b >> 4);
            }
            s.push_str("ip6.arpa.");
            s
        }
    }
}

/// The gauge set by [`run_periodic_checks`].
pub fn domain_check_gauge() -> prometheus::IntGaugeVec {
    prometheus::IntGaugeVec::new(
        prometheus::Opts::new(
            "gannet_domain_check_ok",
            "1 when every check of this kind passed for the sending domain at the last run, else 0",
        ),
        &["domain", "check"],
    )
    .expect("static metric definition is valid")
}

/// The distinct domains of `[[dkim]]` keys, in config order.
pub(crate) fn dkim_domains(config: &Config) -> Vec<String> {
    let mut out: Vec<String> = Vec::new();
    for d in config
        .dkim
        .iter()
        .filter_map(|d| normalize_domain(&d.domain))
    {
        if !out.contains(&d) {
            out.push(d);
        }
    }
    out
}

/// Check every DKIM domain once and set the gauge. Returns the reports (for logs and tests).
pub async fn check_all_once(
    config: &Config,
    gauge: &prometheus::IntGaugeVec,
) -> Vec<Result<DomainReport, CheckError>> {
    let mut reports = Vec::new();
    for domain in dkim_domains(config) {
        let result = check_domain(config, &domain, None).await;
        match &result {
            Ok(report) => {
                for kind in CheckKind::ALL {
                    if let Some(ok) = report.kind_ok(kind) {
                        gauge
                            .with_label_values(&[domain.as_str(), kind.as_str()])
                            .set(i64::from(ok));
                    }
                }
                for c in report.checks.iter().filter(|c| !c.ok) {
                    tracing::warn!(
                        domain = %domain,
                        check = c.check.as_str(),
                        subject = %c.subject,
                        fix = c.fix.as_deref().unwrap_or(""),
                        "sending-domain check failed: {}",
                        c.detail
                    );
                }
            }
            Err(e) => {
                tracing::warn!(domain = %domain, error = %e, "sending-domain checks could not run");
                for kind in CheckKind::ALL {
                    gauge
                        .with_label_values(&[domain.as_str(), kind.as_str()])
                        .set(0);
                }
            }
        }
        reports.push(result);
    }
    reports
}

/// Re-check every configured DKIM domain now and then every `every` (normally
/// `[dkim_policy] check_interval`; zero means never), until `shutdown`, setting
/// `gannet_domain_check_ok{domain,check}` (the gauge of `checks`, registered on `metrics`'
/// registry) to 1 or 0 and keeping each result in `checks` (the console shows them).
pub async fn run_periodic_checks(
    config: Arc<Config>,
    metrics: crate::metrics::Metrics,
    checks: super::check_status::DomainChecks,
    every: Duration,
    shutdown: CancellationToken,
) {
    if every.is_zero() {
        return;
    }
    if let Err(e) = metrics.registry.register(Box::new(checks.gauge().clone())) {
        tracing::warn!(error = %e, "gannet_domain_check_ok not registered; checks still run and log");
    }
    if dkim_domains(&config).is_empty() {
        return;
    }
    let mut interval = tokio::time::interval(every.max(Duration::from_secs(1)));
    interval.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = interval.tick() => {}
        }
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = checks.run_once(&config) => {}
        }
    }
}

#[cfg(test)]
#[path = "check_tests.rs"]
mod tests;
