//! The sending-domain part of the operations page: per `[[dkim]]` key its domain, selector and
//! key type, whether the published DNS record matches the key, and the newest check of the
//! domain (time, SPF/DKIM/DMARC/alignment/PTR results, what to fix); "check now" for
//! operators.
//!
//! Reads `ApiState::domain_checks` (what the periodic `run_periodic_checks` or a "check now"
//! found) and runs `DomainChecks::run_once`, i.e. `auth::check_domain`, the code behind
//! `gannet check-domain` and `GET /api/v1/domains/{domain}/check`. Never asks DNS or reads a
//! key itself.

use axum::extract::State;
use axum::http::StatusCode;
use axum::response::Response;
use maud::{Markup, html};

use super::auth::{Right, allows};
use super::page::{Notice, csrf};
use super::session::Session;
use super::{Console, Ctx};
use crate::auth::{CheckKind, LastCheck};
use crate::config::DkimAlgorithm;

fn key_type(a: DkimAlgorithm) -> &'static str {
    match a {
        DkimAlgorithm::RsaSha256 => "RSA (rsa-sha256)",
        DkimAlgorithm::Ed25519Sha256 => "Ed25519 (ed25519-sha256)",
    }
}

fn when(unix: u64) -> String {
    i64::try_from(unix)
        .ok()
        .and_then(|s| time::OffsetDateTime::from_unix_timestamp(s).ok())
        .and_then(|t| {
            t.format(&time::format_description::well_known::Rfc3339)
                .ok()
        })
        .unwrap_or_default()
}

/// What the newest check said about one selector's DNS record: (matches, detail).
fn record_state(last: Option<&LastCheck>, record: &str) -> (Option<bool>, String) {
    match last.map(|l| &l.result) {
        None => (None, "not checked yet".into()),
        Some(Err(e)) => (None, format!("the check could not run: {e}")),
        Some(Ok(report)) => match report
            .checks
            .iter()
            .find(|f| f.check == CheckKind::Dkim && f.subject.eq_ignore_ascii_case(record))
        {
            Some(f) => (Some(f.ok), f.detail.clone()),
            None => (None, "no finding for this selector".into()),
        },
    }
}

/// The domain's result in a few words, per kind of check.
fn summary(last: Option<&LastCheck>) -> String {
    match last.map(|l| &l.result) {
        None => "not checked yet".into(),
        Some(Err(e)) => format!("could not run: {e}"),
        Some(Ok(r)) => {
            let failing = r.checks.iter().filter(|c| !c.ok).count();
            let kinds: Vec<String> = CheckKind::ALL
                .iter()
                .filter_map(|k| {
                    r.kind_ok(*k)
                        .map(|ok| format!("{} {}", k.as_str(), if ok { "ok" } else { "FAIL" }))
                })
                .collect();
            if failing == 0 {
                format!(
                    "all {} checks passed ({})",
                    r.checks.len(),
                    kinds.join(", ")
                )
            } else {
                format!(
                    "{failing} of {} checks failed ({})",
                    r.checks.len(),
                    kinds.join(", ")
                )
            }
        }
    }
}

/// The "Sending domains" section of the operations page.
pub fn section(c: &Console, s: &Session) -> Markup {
    let config = &c.api.config;
    let checks = &c.api.domain_checks;
    let interval = config.dkim_policy.check_interval;
    let mut domains: Vec<String> = Vec::new();
    for d in &config.dkim {
        let d = d.domain.trim_end_matches('.').to_ascii_lowercase();
        if !domains.contains(&d) {
            domains.push(d);
        }
    }
    html! {
        h2 id="domains" { "Sending domains (DKIM and DNS checks)" }
        @if config.dkim.is_empty() {
            p { "No [[dkim]] key is configured: mail goes out unsigned." }
        } @else {
            p.muted {
                @if interval.is_zero() { "Periodic checks are off ([dkim_policy] check_interval = \"0s\")." }
                @else { "Checked every " (humantime::format_duration(interval)) " ([dkim_policy] check_interval)." }
            }
            div.table { table id="dkim-keys" {
                thead { tr {
                    th scope="col" { "Domain" } th scope="col" { "Selector" } th scope="col" { "Key type" }
                    th scope="col" { "DNS record" } th scope="col" { "Last check (UTC)" } th scope="col" { "Detail" }
                } }
                tbody { @for k in &config.dkim {
                    @let domain = k.domain.trim_end_matches('.').to_ascii_lowercase();
                    @let last = checks.last(&domain);
                    @let record = format!("{}._domainkey.{domain}", k.selector);
                    @let (ok, detail) = record_state(last.as_ref(), &record);
                    tr {
                        td { (domain) } td { (k.selector) } td { (key_type(k.algorithm)) }
                        td { @match ok {
                            Some(true) => strong { "matches" },
                            Some(false) => strong.bad { "does not match" },
                            None => "unknown",
                        } }
                        td { (last.as_ref().map(|l| when(l.at_unix)).unwrap_or_default()) }
                        td { (detail) }
                    }
                } }
            } }
            div.table { table id="domain-checks" {
                thead { tr { th scope="col" { "Domain" } th scope="col" { "Last check (UTC)" } th scope="col" { "Result" } th scope="col" { "To fix" } } }
                tbody { @for d in &domains {
                    @let last = checks.last(d);
                    tr {
                        td { (d) }
                        td { (last.as_ref().map(|l| when(l.at_unix)).unwrap_or_default()) }
                        td { (summary(last.as_ref())) }
                        td {
                            @if let Some(Ok(r)) = last.as_ref().map(|l| &l.result) {
                                ul { @for f in r.checks.iter().filter(|f| !f.ok) {
                                    li { (f.check.as_str()) " " (f.subject) ": " (f.detail)
                                        @if let Some(fix) = &f.fix { br; "Fix: " code { (fix) } } }
                                } }
                            }
                        }
                    }
                } }
            } }
            @if allows(s.role, Right::ControlQueue) {
                form method="post" action="/console/domains/check" {
                    (csrf(s))
                    button type="submit" { "Check the sending domains now" }
                }
            }
        }
    }
}

/// POST /console/domains/check: run the checks now and show the operations page.
pub async fn check_now(State(c): State<Console>, ctx: Ctx) -> Response {
    if let Err(r) = ctx.require(Right::ControlQueue) {
        return *r;
    }
    let n = c.api.config.dkim.len();
    c.api.domain_checks.run_once(&c.api.config).await;
    c.event(
        &ctx.session.user,
        "domain_check",
        &format!("{n} [[dkim]] keys"),
        &ctx.ip,
        None,
    );
    super::queue::render(
        &c,
        &ctx,
        Notice::Ok("The sending domains were checked just now.".into()),
        StatusCode::OK,
    )
    .await
}
