//! The console's HTML: the page frame (navigation by the user's rights, skip link, labels),
//! notices, error pages and small shared pieces (an events table, a CSRF field). maud compiles
//! the markup into the binary and escapes every value it prints.
//!
//! Never does: data access or rights decisions (the handlers pass what to show).

use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use maud::{DOCTYPE, Markup, html};
use serde_json::Value;

use super::auth::{Right, allows};
use super::session::Session;

/// The stylesheet, embedded (no CDN, no file on disk).
pub const CSS: &str = include_str!("assets/console.css");

/// A message shown above a page's content.
pub enum Notice {
    None,
    Ok(String),
    Error(String),
}

impl Notice {
    fn render(&self) -> Markup {
        match self {
            Notice::None => html! {},
            Notice::Ok(m) => html! { p.notice role="status" { (m) } },
            Notice::Error(m) => html! { p.error role="alert" { (m) } },
        }
    }
}

/// A hidden field carrying the session's CSRF token (every POST form has one).
pub fn csrf(s: &Session) -> Markup {
    html! { input type="hidden" name="csrf" value=(s.csrf); }
}

/// The whole page around `body`.
pub fn layout(title: &str, session: Option<&Session>, notice: &Notice, body: Markup) -> Markup {
    html! {
        (DOCTYPE)
        html lang="en" {
            head {
                meta charset="utf-8";
                meta name="viewport" content="width=device-width, initial-scale=1";
                title { (title) " · Gannet console" }
                link rel="stylesheet" href="/console/assets/console.css";
            }
            body {
                a.skip href="#main" { "Skip to content" }
                header {
                    strong { "Gannet" }
                    @if let Some(s) = session {
                        nav aria-label="Main" {
                            ul {
                                li { a href="/console" { "Home" } }
                                @if allows(s.role, Right::SearchLogs) { li { a href="/console/logs" { "Send log" } } }
                                @if allows(s.role, Right::ViewSuppressions) { li { a href="/console/suppressions" { "Suppressions" } } }
                                @if allows(s.role, Right::ViewQueue) { li { a href="/console/queue" { "Operations" } } }
                                @if allows(s.role, Right::DataSubjects) { li { a href="/console/subjects" { "Data subjects" } } }
                                @if allows(s.role, Right::Audit) { li { a href="/console/audit" { "Audit trail" } } }
                            }
                        }
                        span.who {
                            (s.user) " (" (s.role.as_str()) ") "
                            form.inline method="post" action="/console/logout" {
                                (csrf(s))
                                button type="submit" { "Sign out" }
                            }
                        }
                    }
                }
                main id="main" {
                    h1 { (title) }
                    (notice.render())
                    (body)
                }
            }
        }
    }
}

/// An error page (signed in or not) with `status`.
pub fn error(status: StatusCode, session: Option<&Session>, message: &str) -> Response {
    let title = match status {
        StatusCode::FORBIDDEN => "Not allowed",
        StatusCode::NOT_FOUND => "Not found",
        StatusCode::BAD_REQUEST => "Cannot do that",
        StatusCode::TOO_MANY_REQUESTS => "Too many attempts",
        _ => "Something went wrong",
    };
    (
        status,
        layout(
            title,
            session,
            &Notice::Error(message.to_string()),
            html! {},
        ),
    )
        .into_response()
}

/// A JSON field as text ("" for null).
pub fn text(v: &Value) -> String {
    match v {
        Value::Null => String::new(),
        Value::String(s) => s.clone(),
        v => v.to_string(),
    }
}

/// A time in microseconds as RFC 3339 (UTC, seconds).
pub fn time_us(v: &Value) -> String {
    let Some(us) = v.as_i64() else {
        return String::new();
    };
    time::OffsetDateTime::from_unix_timestamp(us.div_euclid(1_000_000))
        .ok()
        .and_then(|t| {
            t.format(&time::format_description::well_known::Rfc3339)
                .ok()
        })
        .unwrap_or_default()
}

/// Send-log events as a table; message ids link to their story.
pub fn events_table(rows: &[Value], caption: &str) -> Markup {
    html! {
        div.table {
            table {
                caption.muted { (caption) }
                thead { tr {
                    th scope="col" { "Time (UTC)" } th scope="col" { "Type" } th scope="col" { "Recipient" }
                    th scope="col" { "Message" } th scope="col" { "Campaign" } th scope="col" { "Tenant" }
                    th scope="col" { "Detail" }
                } }
                tbody {
                    @for e in rows {
                        tr {
                            td { (time_us(&e["time_us"])) }
                            td { (text(&e["type"])) }
                            td { (text(&e["recipient"])) }
                            td {
                                @let mid = text(&e["message_id"]);
                                @let qid = text(&e["queue_id"]);
                                @let id = if mid.is_empty() { qid.clone() } else { mid.clone() };
                                @if !id.is_empty() {
                                    a href={ "/console/messages/" (urlencode(&id)) } { (id) }
                                }
                            }
                            td { (text(&e["campaign"])) }
                            td { (text(&e["tenant"])) }
                            td { (detail(e)) }
                        }
                    }
                }
            }
        }
    }
}

/// The reply, host and actor of an event, when present.
fn detail(e: &Value) -> String {
    let mut parts = Vec::new();
    for k in [
        "reply",
        "mx_host",
        "remote_ip",
        "actor",
        "action",
        "reason",
        "detail",
    ] {
        let t = text(&e[k]);
        if !t.is_empty() {
            parts.push(format!("{k}: {t}"));
        }
    }
    parts.join("; ")
}

/// Percent-encode a path segment or query value.
pub fn urlencode(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || b"-._~".contains(&b) {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}
