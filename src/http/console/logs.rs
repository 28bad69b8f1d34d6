//! Console pages over the send log: search (paged), one message's story, CSV / JSONL export,
//! and the admins' audit trail.
//!
//! Every search, story and export goes through `http::logs` (`search_page`, `story`,
//! `events`), so each is recorded as `log_access` under `console:NAME` exactly as the API
//! records its own. Never does: queries of its own.

use axum::Router;
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use maud::html;
use serde::Deserialize;
use serde_json::Value;

use super::auth::Right;
use super::page::{self, Notice, events_table, layout, text, time_us, urlencode};
use super::session::Session;
use super::{Console, Ctx};
use crate::http::logs::{EventsQuery, LogsReader, events, search_page, story};
use crate::sendlog::EventFilter;

pub fn routes() -> Router<Console> {
    Router::new()
        .route("/console/logs", get(search))
        .route("/console/logs/export", get(export))
        .route("/console/messages/{id}", get(message))
        .route("/console/audit", get(audit))
}

/// The search form's fields (all optional; empty ones are ignored).
#[derive(Debug, Default, Deserialize)]
pub struct SearchForm {
    #[serde(default)]
    recipient: String,
    #[serde(default)]
    message_id: String,
    #[serde(default)]
    campaign: String,
    #[serde(default)]
    tenant: String,
    #[serde(default, rename = "type")]
    kind: String,
    #[serde(default)]
    since: String,
    #[serde(default)]
    until: String,
    #[serde(default)]
    cursor: String,
    /// Export only: `csv` or `ndjson`.
    #[serde(default)]
    format: String,
}

impl SearchForm {
    /// A search by recipient.
    pub fn by_recipient(address: &str) -> SearchForm {
        SearchForm {
            recipient: address.to_string(),
            ..SearchForm::default()
        }
    }

    fn is_empty(&self) -> bool {
        [
            &self.recipient,
            &self.message_id,
            &self.campaign,
            &self.tenant,
            &self.kind,
            &self.since,
            &self.until,
        ]
        .iter()
        .all(|v| v.trim().is_empty())
    }

    fn query(&self, limit: usize, format: Option<&str>) -> EventsQuery {
        let opt = |s: &String| Some(s.trim().to_string()).filter(|s| !s.is_empty());
        EventsQuery {
            recipient: opt(&self.recipient),
            message_id: opt(&self.message_id),
            campaign: opt(&self.campaign),
            tenant: opt(&self.tenant),
            kind: opt(&self.kind),
            since: opt(&self.since),
            until: opt(&self.until),
            cursor: opt(&self.cursor),
            limit: Some(limit),
            format: format.map(str::to_string),
            ..EventsQuery::default()
        }
    }

    /// The form as a query string (without the cursor), for page and export links.
    fn query_string(&self) -> String {
        [
            ("recipient", &self.recipient),
            ("message_id", &self.message_id),
            ("campaign", &self.campaign),
            ("tenant", &self.tenant),
            ("type", &self.kind),
            ("since", &self.since),
            ("until", &self.until),
        ]
        .iter()
        .filter(|(_, v)| !v.trim().is_empty())
        .map(|(k, v)| format!("{k}={}", urlencode(v.trim())))
        .collect::<Vec<_>>()
        .join("&")
    }
}

/// Events per page.
pub const PAGE: usize = 50;

const EVENT_TYPES: &[&str] = &[
    "received",
    "delivered",
    "deferred",
    "bounced",
    "expired",
    "dsn",
    "purged",
    "suppressed",
    "bounce_report",
    "complaint",
    "unsubscribed",
    "suppression_changed",
    "log_access",
    "erased",
    "suspended",
    "resumed",
    "backoff",
    "anomaly",
    "console",
];

fn search_form(f: &SearchForm) -> maud::Markup {
    html! {
        form.box method="get" action="/console/logs" role="search" {
            div { label for="recipient" { "Recipient" } input id="recipient" name="recipient" type="email" value=(f.recipient); }
            div { label for="message_id" { "Message-ID or queue id" } input id="message_id" name="message_id" value=(f.message_id); }
            div { label for="campaign" { "Campaign" } input id="campaign" name="campaign" value=(f.campaign); }
            div { label for="tenant" { "Tenant" } input id="tenant" name="tenant" value=(f.tenant); }
            div { label for="type" { "Event type" }
                select id="type" name="type" {
                    option value="" { "any" }
                    @for t in EVENT_TYPES { option value=(t) selected[f.kind == *t] { (t) } }
                }
            }
            div { label for="since" { "From (date or RFC 3339)" } input id="since" name="since" placeholder="2026-12-01" value=(f.since); }
            div { label for="until" { "Until" } input id="until" name="until" placeholder="2026-12-04T12:00:00Z" value=(f.until); }
            div { button type="submit" { "Search" } }
        }
    }
}

async fn search(State(c): State<Console>, ctx: Ctx, Query(f): Query<SearchForm>) -> Response {
    if let Err(r) = ctx.require(Right::SearchLogs) {
        return *r;
    }
    let s = &ctx.session;
    if f.is_empty() {
        return layout(
            "Send log",
            Some(s),
            &Notice::None,
            html! {
                (search_form(&f))
                p.muted { "Every search is recorded with your name and whom you looked up." }
            },
        )
        .into_response();
    }
    let (notice, rows, next) = match search_page(&c.api, &ctx.actor(), &f.query(PAGE, None)).await {
        Ok((rows, next)) => (Notice::None, rows, next),
        Err(e) => (Notice::Error(e.message), Vec::new(), None),
    };
    results_page(s, &f, &rows, next, notice).into_response()
}

/// The search page with its results (the handler's whole output; `benches/console_search`
/// renders it too).
pub fn results_page(
    s: &Session,
    f: &SearchForm,
    rows: &[Value],
    next: Option<String>,
    notice: Notice,
) -> maud::Markup {
    let qs = f.query_string();
    let can_export = super::auth::allows(s.role, Right::ExportLogs);
    layout(
        "Send log",
        Some(s),
        &notice,
        html! {
            (search_form(f))
            p {
                (rows.len()) " events on this page. "
                @if can_export {
                    a href={ "/console/logs/export?format=csv&" (qs) } download { "Export CSV" } " · "
                    a href={ "/console/logs/export?format=ndjson&" (qs) } download { "Export JSONL" }
                }
            }
            (events_table(rows, "Matching events, oldest first"))
            @if let Some(n) = next {
                p { a rel="next" href={ "/console/logs?" (qs) "&cursor=" (urlencode(&n)) } { "Next page" } }
            }
        },
    )
}

/// CSV or JSONL of every matching event: the API's own export (`http::logs::events`).
async fn export(State(c): State<Console>, ctx: Ctx, Query(f): Query<SearchForm>) -> Response {
    if let Err(r) = ctx.require(Right::ExportLogs) {
        return *r;
    }
    let (format, ext) = match f.format.as_str() {
        "csv" => ("csv", "csv"),
        "ndjson" | "jsonl" => ("ndjson", "jsonl"),
        other => {
            return page::error(
                StatusCode::BAD_REQUEST,
                Some(&ctx.session),
                &format!("format {other:?}: use csv or ndjson"),
            );
        }
    };
    let form = SearchForm {
        cursor: String::new(),
        ..f
    };
    let q = form.query(100, Some(format));
    let who = LogsReader { actor: ctx.actor() };
    match events(State(c.api.clone()), who, HeaderMap::new(), Ok(Query(q))).await {
        Ok(mut resp) => {
            if let Ok(v) =
                HeaderValue::from_str(&format!("attachment; filename=\"gannet-send-log.{ext}\""))
            {
                resp.headers_mut().insert(header::CONTENT_DISPOSITION, v);
            }
            resp
        }
        Err(e) => page::error(e.status, Some(&ctx.session), &e.message),
    }
}

async fn message(State(c): State<Console>, ctx: Ctx, Path(id): Path<String>) -> Response {
    if let Err(r) = ctx.require(Right::SearchLogs) {
        return *r;
    }
    let s = &ctx.session;
    let v = match story(&c.api, &ctx.actor(), &id).await {
        Ok(v) => v,
        Err(e) => return page::error(e.status, Some(s), &e.message),
    };
    let empty = Vec::new();
    let recipients = v["recipients"].as_array().unwrap_or(&empty);
    let events = v["events"].as_array().unwrap_or(&empty);
    layout(
        "Message story",
        Some(s),
        &Notice::None,
        html! {
            dl {
                dt { "Message-ID" } dd { code { (text(&v["message_id"])) } }
                dt { "Queue ids" } dd { (v["queue_ids"].as_array().map(|a| a.iter().map(text).collect::<Vec<_>>().join(", ")).unwrap_or_default()) }
            }
            h2 { "Recipients" }
            div.table { table {
                thead { tr { th scope="col" { "Recipient" } th scope="col" { "State" } th scope="col" { "Attempts" } th scope="col" { "Last reply" } } }
                tbody { @for r in recipients {
                    @let last = r["events"].as_array().and_then(|e| e.last()).cloned().unwrap_or(Value::Null);
                    tr { td { (text(&r["recipient"])) } td { (text(&r["state"])) } td { (text(&r["attempts"])) } td { (text(&last["reply"])) } }
                } }
            } }
            h2 { "Every event" }
            (events_table(events, "The message's events, in order"))
        },
    )
    .into_response()
}

/// Kinds the audit trail shows: reads of the log and every operator or console action.
const AUDIT_KINDS: &[&str] = &[
    "log_access",
    "console",
    "erased",
    "suspended",
    "resumed",
    "suppression_changed",
    "purged",
    "flushed",
];

/// Newest audit entries per kind.
const AUDIT_PER_KIND: usize = 200;

/// The audit trail (admins): who looked up whom, who changed what, newest first.
async fn audit(State(c): State<Console>, ctx: Ctx) -> Response {
    if let Err(r) = ctx.require(Right::Audit) {
        return *r;
    }
    let s = &ctx.session;
    let Some(log) = c.api.sendlog.clone() else {
        return page::error(
            StatusCode::SERVICE_UNAVAILABLE,
            Some(s),
            "the send log is turned off ([sendlog] enabled = false)",
        );
    };
    let rows = log
        .read(|r| {
            let mut all: Vec<Value> = Vec::new();
            for kind in AUDIT_KINDS {
                // The newest entries: start far enough back, page forward.
                let f = EventFilter {
                    kind: Some(kind.to_string()),
                    limit: 100_000,
                    ..EventFilter::default()
                };
                let mut page = r.events(&f)?;
                let keep = page.len().saturating_sub(AUDIT_PER_KIND);
                all.extend(page.drain(keep..));
            }
            all.sort_by_key(|e| std::cmp::Reverse(e["seq"].as_u64().unwrap_or(0)));
            Ok(all)
        })
        .await;
    let rows = match rows {
        Ok(r) => r,
        Err(e) => return page::error(StatusCode::INTERNAL_SERVER_ERROR, Some(s), &e.to_string()),
    };
    layout(
        "Audit trail",
        Some(s),
        &Notice::None,
        html! {
            p.muted { "Reads of the send log (who looked up whom), console sign-ins and every operator action, newest first." }
            div.table { table {
                thead { tr { th scope="col" { "Time (UTC)" } th scope="col" { "Who" } th scope="col" { "What" } th scope="col" { "About" } th scope="col" { "Detail" } } }
                tbody { @for e in &rows {
                    tr {
                        td { (time_us(&e["time_us"])) }
                        td { (text(&e["actor"])) }
                        td { (text(&e["type"])) @if !text(&e["action"]).is_empty() { ": " (text(&e["action"])) } @if !text(&e["change"]).is_empty() { ": " (text(&e["change"])) } }
                        td { (text(&e["recipient"])) @if !text(&e["subject"]).is_empty() { "subject " code { (text(&e["subject"])) } } }
                        td { (audit_detail(e)) }
                    }
                } }
            } }
        },
    )
    .into_response()
}

fn audit_detail(e: &Value) -> String {
    let mut parts = Vec::new();
    for k in [
        "detail",
        "format",
        "rows",
        "filter",
        "reason",
        "client_ip",
        "held",
        "released",
    ] {
        let t = text(&e[k]);
        if !t.is_empty() && t != "{}" && t != "null" {
            parts.push(format!("{k}: {t}"));
        }
    }
    parts.join("; ")
}
