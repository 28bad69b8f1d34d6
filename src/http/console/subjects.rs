//! Data-subject requests: the access export (GDPR Art. 15) and erasure (Art. 17) with four
//! eyes: one user requests, a different one confirms, and only then the erasure runs; the
//! confirmation shows a receipt.
//!
//! The export is `http::logs::subject_report` and the erasure `http::logs::erase_person`:
//! the API's code paths, recorded under `console:NAME`. Owns only the pending requests (in
//! memory: a restart drops requests not yet confirmed, and the requester asks again) and
//! their receipts, which keep a masked address and the keyed hash, never the address.
//! Each step is a `console` event (`erasure_requested`, `erasure_confirmed`,
//! `erasure_cancelled`) naming the user.

use std::sync::Mutex;

use axum::Router;
use axum::extract::{Form, Path, Query, State};
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use maud::html;
use serde::Deserialize;
use serde_json::{Value, json};

use super::auth::Right;
use super::page::{self, Notice, csrf, layout, text, time_us};
use super::{Console, Ctx};
use crate::http::logs::{erase_person, subject_report};

pub fn routes() -> Router<Console> {
    Router::new()
        .route("/console/subjects", get(view))
        .route("/console/subjects/access", get(access))
        .route("/console/subjects/erasures", post(request))
        .route("/console/subjects/erasures/{id}", get(receipt))
        .route("/console/subjects/erasures/{id}/confirm", post(confirm))
        .route("/console/subjects/erasures/{id}/cancel", post(cancel))
}

/// Requests kept (pending and done); past it the oldest finished ones go.
const MAX_REQUESTS: usize = 1000;

#[derive(Debug, Clone)]
enum State_ {
    Pending { address: String },
    Done { receipt: Value },
    Cancelled { by: String },
}

#[derive(Debug, Clone)]
struct Request {
    id: u64,
    masked: String,
    requested_by: String,
    requested_at: String,
    state: State_,
}

/// The four-eyes erasure requests. A std Mutex: short sections, never across an await.
#[derive(Default)]
pub struct Requests {
    inner: Mutex<(u64, Vec<Request>)>,
}

impl Requests {
    fn lock(&self) -> std::sync::MutexGuard<'_, (u64, Vec<Request>)> {
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }
}

fn now_text() -> String {
    time::OffsetDateTime::now_utc()
        .format(&time::format_description::well_known::Rfc3339)
        .unwrap_or_default()
}

/// `a***@example.com`: enough to recognise a request, not to contact the person.
fn mask(address: &str) -> String {
    match address.rsplit_once('@') {
        Some((local, domain)) => {
            let first: String = local.chars().take(1).collect();
            format!("{first}***@{domain}")
        }
        None => "***".into(),
    }
}

async fn page_(c: &Console, ctx: &Ctx, notice: Notice, status: StatusCode) -> Response {
    let s = &ctx.session;
    let requests = c.erasures.lock().1.clone();
    let body = html! {
        h2 { "Access export (Art. 15)" }
        form.box method="get" action="/console/subjects/access" {
            div { label for="access-address" { "Address" } input id="access-address" name="address" type="email" required; }
            div { button type="submit" { "Show what we hold" } }
        }
        h2 { "Erasure (Art. 17)" }
        p.muted { "One user requests; a different user confirms. Only the confirmation erases." }
        form.box method="post" action="/console/subjects/erasures" {
            (csrf(s))
            div { label for="erase-address" { "Address" } input id="erase-address" name="address" type="email" required; }
            div { button.danger type="submit" { "Request erasure" } }
        }
        h2 { "Requests" }
        @if requests.is_empty() { p { "None." } }
        @else {
            div.table { table {
                thead { tr { th scope="col" { "Id" } th scope="col" { "Person" } th scope="col" { "Requested by" } th scope="col" { "At" } th scope="col" { "State" } th scope="col" { "Action" } } }
                tbody { @for r in requests.iter().rev() {
                    tr {
                        td { (r.id) } td { (r.masked) } td { (r.requested_by) } td { (r.requested_at) }
                        @match &r.state {
                            State_::Pending { .. } => {
                                td { "waiting for a second user" }
                                td {
                                    @if r.requested_by != s.user {
                                        form.inline method="post" action={ "/console/subjects/erasures/" (r.id) "/confirm" } {
                                            (csrf(s))
                                            button.danger type="submit" aria-label={ "Confirm erasure request " (r.id) } { "Confirm erasure" }
                                        }
                                    } @else {
                                        form.inline method="post" action={ "/console/subjects/erasures/" (r.id) "/cancel" } {
                                            (csrf(s))
                                            button type="submit" aria-label={ "Cancel erasure request " (r.id) } { "Cancel" }
                                        }
                                    }
                                }
                            }
                            State_::Done { .. } => {
                                td { "erased" }
                                td { a href={ "/console/subjects/erasures/" (r.id) } { "Receipt" } }
                            }
                            State_::Cancelled { by } => {
                                td { "cancelled by " (by) }
                                td {}
                            }
                        }
                    }
                } }
            } }
        }
    };
    (status, layout("Data subjects", Some(s), &notice, body)).into_response()
}

async fn view(State(c): State<Console>, ctx: Ctx) -> Response {
    if let Err(r) = ctx.require(Right::DataSubjects) {
        return *r;
    }
    page_(&c, &ctx, Notice::None, StatusCode::OK).await
}

#[derive(Deserialize)]
struct AccessForm {
    #[serde(default)]
    address: String,
    #[serde(default)]
    download: String,
}

/// What the send log holds about one person; `download=1` gives the JSON file.
async fn access(State(c): State<Console>, ctx: Ctx, Query(f): Query<AccessForm>) -> Response {
    if let Err(r) = ctx.require(Right::DataSubjects) {
        return *r;
    }
    let s = &ctx.session;
    let v = match subject_report(&c.api, &ctx.actor(), f.address.trim()).await {
        Ok(v) => v,
        Err(e) => return page::error(e.status, Some(s), &e.message),
    };
    if !f.download.is_empty() {
        let mut resp = (
            [(header::CONTENT_TYPE, "application/json")],
            serde_json::to_string_pretty(&v).unwrap_or_default(),
        )
            .into_response();
        if let Ok(h) = HeaderValue::from_str("attachment; filename=\"gannet-access-export.json\"") {
            resp.headers_mut().insert(header::CONTENT_DISPOSITION, h);
        }
        return resp;
    }
    let empty = Vec::new();
    let messages = v["messages"].as_array().unwrap_or(&empty);
    let purposes = v["purposes"].as_array().unwrap_or(&empty);
    layout(
        "Access export",
        Some(s),
        &Notice::None,
        html! {
            p { "Person: " strong { (text(&v["address"])) }
                @if !v["erased_at_us"].is_null() { " — erased at " (time_us(&v["erased_at_us"])) } }
            p { "Purposes: " (purposes.iter().map(text).collect::<Vec<_>>().join(", "))
                ". Retention: " (text(&v["retention_days"])) " days." }
            p { a href={ "/console/subjects/access?download=1&address=" (page::urlencode(f.address.trim())) } download { "Download as JSON" } }
            h2 { "Messages" }
            div.table { table {
                thead { tr { th scope="col" { "First seen (UTC)" } th scope="col" { "Message-ID" } th scope="col" { "Campaign" } th scope="col" { "Outcome" } th scope="col" { "Provider" } th scope="col" { "MX host" } th scope="col" { "Attempts" } } }
                tbody { @for m in messages {
                    tr { td { (time_us(&m["first_time_us"])) } td { (text(&m["message_id"])) } td { (text(&m["campaign"])) }
                         td { (text(&m["outcome"])) } td { (text(&m["provider"])) } td { (text(&m["mx_host"])) } td { (text(&m["attempts"])) } }
                } }
            } }
            p.muted { (v["lookups"].as_array().map_or(0, Vec::len)) " recorded lookups of this person." }
        },
    )
    .into_response()
}

#[derive(Deserialize)]
struct EraseForm {
    #[serde(default)]
    address: String,
}

async fn request(State(c): State<Console>, ctx: Ctx, Form(f): Form<EraseForm>) -> Response {
    if let Err(r) = ctx.require(Right::DataSubjects) {
        return *r;
    }
    let address = f.address.trim().to_string();
    if !address.contains('@') || address.len() > 320 {
        return page_(
            &c,
            &ctx,
            Notice::Error(format!("{address:?} is not an email address.")),
            StatusCode::BAD_REQUEST,
        )
        .await;
    }
    let id = {
        let mut g = c.erasures.lock();
        g.0 += 1;
        let id = g.0;
        if g.1.len() >= MAX_REQUESTS
            && let Some(pos) =
                g.1.iter()
                    .position(|r| !matches!(r.state, State_::Pending { .. }))
        {
            g.1.remove(pos);
        }
        g.1.push(Request {
            id,
            masked: mask(&address),
            requested_by: ctx.session.user.clone(),
            requested_at: now_text(),
            state: State_::Pending {
                address: address.clone(),
            },
        });
        id
    };
    c.event(
        &ctx.session.user,
        "erasure_requested",
        &format!("request {id}"),
        &ctx.ip,
        Some(&address),
    );
    page_(
        &c,
        &ctx,
        Notice::Ok(format!(
            "Erasure request {id} recorded. Another user must confirm it."
        )),
        StatusCode::OK,
    )
    .await
}

async fn confirm(State(c): State<Console>, ctx: Ctx, Path(id): Path<u64>) -> Response {
    if let Err(r) = ctx.require(Right::DataSubjects) {
        return *r;
    }
    // Take the address out while it is still pending (a second confirmation finds it gone).
    let taken = {
        let mut g = c.erasures.lock();
        match g.1.iter_mut().find(|r| r.id == id) {
            None => Err((StatusCode::NOT_FOUND, format!("No erasure request {id}."))),
            Some(r) if r.requested_by == ctx.session.user => Err((
                StatusCode::FORBIDDEN,
                "Four eyes: the user who requested an erasure cannot confirm it.".to_string(),
            )),
            Some(r) => match std::mem::replace(
                &mut r.state,
                State_::Done {
                    receipt: json!({"state": "running"}),
                },
            ) {
                State_::Pending { address } => Ok((address, r.clone())),
                other => {
                    r.state = other;
                    Err((
                        StatusCode::CONFLICT,
                        format!("Erasure request {id} is not waiting for confirmation."),
                    ))
                }
            },
        }
    };
    let (address, req) = match taken {
        Ok(t) => t,
        Err((status, msg)) => return page_(&c, &ctx, Notice::Error(msg), status).await,
    };
    match erase_person(&c.api, &ctx.actor(), &address).await {
        Ok(v) => {
            let e = &v["erased"];
            let receipt = json!({
                "request": id,
                "person": req.masked,
                "subject": e["subject"],
                "requested_by": req.requested_by,
                "requested_at": req.requested_at,
                "confirmed_by": ctx.session.user,
                "confirmed_at": now_text(),
                "send_log_rows": e["send_log_rows"],
                "queued_recipients_dropped": e["queued_recipients_dropped"],
                "suppression_entries_removed": e["suppression_entries_removed"],
            });
            if let Some(r) = c.erasures.lock().1.iter_mut().find(|r| r.id == id) {
                r.state = State_::Done {
                    receipt: receipt.clone(),
                };
            }
            c.event(
                &ctx.session.user,
                "erasure_confirmed",
                &format!("request {id}, requested by {}", req.requested_by),
                &ctx.ip,
                None,
            );
            receipt_page(
                &ctx,
                &receipt,
                Notice::Ok(format!("Request {id}: the person is erased.")),
            )
        }
        Err(e) => {
            // Put it back so it can be confirmed again once the cause is fixed.
            if let Some(r) = c.erasures.lock().1.iter_mut().find(|r| r.id == id) {
                r.state = State_::Pending { address };
            }
            page_(&c, &ctx, Notice::Error(e.message), e.status).await
        }
    }
}

async fn cancel(State(c): State<Console>, ctx: Ctx, Path(id): Path<u64>) -> Response {
    if let Err(r) = ctx.require(Right::DataSubjects) {
        return *r;
    }
    let ok = {
        let mut g = c.erasures.lock();
        match g.1.iter_mut().find(|r| r.id == id) {
            Some(r) if matches!(r.state, State_::Pending { .. }) => {
                r.state = State_::Cancelled {
                    by: ctx.session.user.clone(),
                };
                true
            }
            _ => false,
        }
    };
    if ok {
        c.event(
            &ctx.session.user,
            "erasure_cancelled",
            &format!("request {id}"),
            &ctx.ip,
            None,
        );
        page_(
            &c,
            &ctx,
            Notice::Ok(format!("Request {id} cancelled.")),
            StatusCode::OK,
        )
        .await
    } else {
        page_(
            &c,
            &ctx,
            Notice::Error(format!("Request {id} is not pending.")),
            StatusCode::CONFLICT,
        )
        .await
    }
}

async fn receipt(State(c): State<Console>, ctx: Ctx, Path(id): Path<u64>) -> Response {
    if let Err(r) = ctx.require(Right::DataSubjects) {
        return *r;
    }
    let found = c
        .erasures
        .lock()
        .1
        .iter()
        .find(|r| r.id == id)
        .and_then(|r| match &r.state {
            State_::Done { receipt } => Some(receipt.clone()),
            _ => None,
        });
    match found {
        Some(r) => receipt_page(&ctx, &r, Notice::None),
        None => page::error(
            StatusCode::NOT_FOUND,
            Some(&ctx.session),
            &format!("No receipt for request {id} (not confirmed yet, or unknown)."),
        ),
    }
}

fn receipt_page(ctx: &Ctx, r: &Value, notice: Notice) -> Response {
    let rows = [
        ("Request", "request"),
        ("Person", "person"),
        ("Subject (keyed hash)", "subject"),
        ("Requested by", "requested_by"),
        ("Requested at", "requested_at"),
        ("Confirmed by", "confirmed_by"),
        ("Confirmed at", "confirmed_at"),
        ("Send-log rows made unreadable", "send_log_rows"),
        ("Queued recipients dropped", "queued_recipients_dropped"),
        (
            "Clear suppression entries removed (a keyed-hash entry now refuses mail to the person)",
            "suppression_entries_removed",
        ),
    ];
    layout(
        "Erasure receipt",
        Some(&ctx.session),
        &notice,
        html! {
            dl id="receipt" {
                @for (label, key) in rows { dt { (label) } dd { (text(&r[key])) } }
            }
        },
    )
    .into_response()
}
