//! Data-subject requests: the access export (GDPR Art. 15) as a page, a JSON or a CSV
//! download, and erasure (Art. 17) with four eyes: one user requests, a different one
//! confirms, and only then the erasure runs in its own task; the request's page shows its
//! progress step by step and then the receipt.
//!
//! The export is `http::logs::subject_report` (CSV: `http::logs::subject_csv`) and the erasure
//! `http::logs::erase_person_with`: the API's code paths, recorded under `console:NAME`.
//! Owns only the requests (in memory: a restart drops requests not yet confirmed, and the
//! requester asks again), their progress and receipts, which keep a masked address and the
//! keyed hash, never the address. Each step is a `console` event (`erasure_requested`,
//! `erasure_confirmed`, `erasure_failed`, `erasure_cancelled`) naming the user.

use std::sync::Mutex;

use axum::Router;
use axum::extract::{Form, Path, Query, State};
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Redirect, Response};
use axum::routing::{get, post};
use maud::html;
use serde::Deserialize;
use serde_json::{Value, json};

use super::auth::Right;
use super::page::{self, Notice, csrf, layout, text, time_us};
use super::{Console, Ctx};
use crate::http::logs::{ERASURE_STEPS, erase_person_with, subject_csv, subject_report};

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
    Pending {
        address: String,
    },
    /// Confirmed and erasing: the steps of `ERASURE_STEPS` finished so far, with counts.
    Running {
        confirmed_by: String,
        confirmed_at: String,
        steps: Vec<(&'static str, u64)>,
    },
    Done {
        receipt: Value,
    },
    Cancelled {
        by: String,
    },
}

#[derive(Debug, Clone)]
struct Request {
    id: u64,
    masked: String,
    requested_by: String,
    requested_at: String,
    state: State_,
    /// Why the last confirmation failed (the request is pending again).
    failed: Option<String>,
}

/// What each erasure step did, for people (keys: `http::logs::ERASURE_STEPS`).
fn step_label(step: &str) -> &'static str {
    match step {
        "suppression_entries_removed" => {
            "Suppression: keyed-hash entry added (refuses mail to the person); clear entries removed"
        }
        "queued_recipients_dropped" => "Queued mail to the person dropped (recipients)",
        "spool_records_shredded" => "Spool records shredded (message keys destroyed)",
        "outbox_events_shredded" => "Event-shipping outbox lines shredded",
        "idempotent_answers_shredded" => "Stored injection answers shredded",
        "send_log_rows" => "Send-log key destroyed: rows made unreadable",
        _ => "Other step",
    }
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
                                td { "waiting for a second user"
                                     @if let Some(why) = &r.failed { br; span.bad { "last confirmation failed: " (why) } } }
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
                            State_::Running { steps, .. } => {
                                td { "erasing (" (steps.len()) " of " (ERASURE_STEPS.len()) " steps done)" }
                                td { a href={ "/console/subjects/erasures/" (r.id) } { "Progress" } }
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

/// What the send log holds about one person; `download=json` (or `1`) gives the JSON file,
/// `download=csv` the CSV (`http::logs::subject_csv`). Each is recorded as a `subject_export`
/// in its format.
async fn access(State(c): State<Console>, ctx: Ctx, Query(f): Query<AccessForm>) -> Response {
    if let Err(r) = ctx.require(Right::DataSubjects) {
        return *r;
    }
    let s = &ctx.session;
    let format = match f.download.as_str() {
        "" => "html",
        "csv" => "csv",
        "json" | "1" => "json",
        other => {
            return page::error(
                StatusCode::BAD_REQUEST,
                Some(s),
                &format!("download={other:?}: choose json or csv."),
            );
        }
    };
    let v = match subject_report(&c.api, &ctx.actor(), f.address.trim(), format).await {
        Ok(v) => v,
        Err(e) => return page::error(e.status, Some(s), &e.message),
    };
    let file = match format {
        "json" => Some((
            "application/json",
            "json",
            serde_json::to_string_pretty(&v).unwrap_or_default(),
        )),
        "csv" => match subject_csv(&v) {
            Ok(text) => Some(("text/csv; charset=utf-8", "csv", text)),
            Err(e) => return page::error(e.status, Some(s), &e.message),
        },
        _ => None,
    };
    if let Some((content_type, ext, body)) = file {
        let mut resp = ([(header::CONTENT_TYPE, content_type)], body).into_response();
        if let Ok(h) = HeaderValue::from_str(&format!(
            "attachment; filename=\"gannet-access-export.{ext}\""
        )) {
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
            p {
                a href={ "/console/subjects/access?download=json&address=" (page::urlencode(f.address.trim())) } download { "Download as JSON" }
                " · "
                a href={ "/console/subjects/access?download=csv&address=" (page::urlencode(f.address.trim())) } download { "Download as CSV" }
            }
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
            failed: None,
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

/// Confirm a pending request (a user other than the requester): the erasure starts in its
/// own task (a client that goes away does not stop it half-way) and the answer sends the
/// browser to the request's page, which shows the progress and then the receipt.
async fn confirm(State(c): State<Console>, ctx: Ctx, Path(id): Path<u64>) -> Response {
    if let Err(r) = ctx.require(Right::DataSubjects) {
        return *r;
    }
    let confirmed_at = now_text();
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
                State_::Running {
                    confirmed_by: ctx.session.user.clone(),
                    confirmed_at: confirmed_at.clone(),
                    steps: Vec::new(),
                },
            ) {
                State_::Pending { address } => {
                    r.failed = None;
                    Ok((address, r.clone()))
                }
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
    c.event(
        &ctx.session.user,
        "erasure_confirmed",
        &format!("request {id}, requested by {}", req.requested_by),
        &ctx.ip,
        None,
    );
    let (task_c, actor, user, ip) = (
        c.clone(),
        ctx.actor(),
        ctx.session.user.clone(),
        ctx.ip.clone(),
    );
    tokio::spawn(async move {
        let c = task_c;
        let progress = {
            let requests = c.erasures.clone();
            move |step: &'static str, n: u64| {
                if let Some(r) = requests.lock().1.iter_mut().find(|r| r.id == id)
                    && let State_::Running { steps, .. } = &mut r.state
                {
                    steps.push((step, n));
                }
            }
        };
        let result = erase_person_with(&c.api, &actor, &address, &progress).await;
        let mut g = c.erasures.lock();
        let Some(r) = g.1.iter_mut().find(|r| r.id == id) else {
            return;
        };
        match result {
            Ok(v) => {
                let e = &v["erased"];
                let mut receipt = json!({
                    "request": id,
                    "person": req.masked,
                    "subject": e["subject"],
                    "requested_by": req.requested_by,
                    "requested_at": req.requested_at,
                    "confirmed_by": user,
                    "confirmed_at": confirmed_at,
                    "finished_at": now_text(),
                });
                for step in ERASURE_STEPS {
                    receipt[step] = e[step].clone();
                }
                r.state = State_::Done { receipt };
            }
            Err(e) => {
                // Pending again, so it can be confirmed once the cause is fixed.
                r.state = State_::Pending { address };
                r.failed = Some(e.message.clone());
                drop(g);
                c.event(
                    &user,
                    "erasure_failed",
                    &format!("request {id}: {}", e.message),
                    &ip,
                    None,
                );
            }
        }
    });
    Redirect::to(&format!("/console/subjects/erasures/{id}")).into_response()
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

/// A request's page: the progress of a running erasure (refreshing itself every 2 s, no
/// JavaScript), its receipt once done, or why the last confirmation failed.
async fn receipt(State(c): State<Console>, ctx: Ctx, Path(id): Path<u64>) -> Response {
    if let Err(r) = ctx.require(Right::DataSubjects) {
        return *r;
    }
    let found = c.erasures.lock().1.iter().find(|r| r.id == id).cloned();
    let s = &ctx.session;
    match found.map(|r| (r.state.clone(), r)) {
        Some((State_::Done { receipt }, _)) => receipt_page(&ctx, &receipt, Notice::None),
        Some((
            State_::Running {
                confirmed_by,
                confirmed_at,
                steps,
            },
            r,
        )) => progress_page(&ctx, &r, &confirmed_by, &confirmed_at, &steps),
        Some((State_::Pending { .. }, r)) => page::error(
            StatusCode::CONFLICT,
            Some(s),
            &match r.failed {
                Some(why) => format!("Request {id} is pending again: its erasure failed ({why})."),
                None => format!("Request {id} waits for a second user to confirm it."),
            },
        ),
        Some((State_::Cancelled { by }, _)) => page::error(
            StatusCode::CONFLICT,
            Some(s),
            &format!("Request {id} was cancelled by {by}."),
        ),
        None => page::error(
            StatusCode::NOT_FOUND,
            Some(s),
            &format!("No erasure request {id}."),
        ),
    }
}

/// A running erasure: each step done (with its count), the one running, those to come.
fn progress_page(
    ctx: &Ctx,
    r: &Request,
    confirmed_by: &str,
    confirmed_at: &str,
    steps: &[(&'static str, u64)],
) -> Response {
    let body = html! {
        p { "Request " (r.id) " for " strong { (r.masked) } ", requested by " (r.requested_by)
            " at " (r.requested_at) ", confirmed by " (confirmed_by) " at " (confirmed_at) "." }
        p role="status" { "Erasing: " (steps.len()) " of " (ERASURE_STEPS.len()) " steps done. This page refreshes itself." }
        ol id="progress" {
            @for (i, step) in ERASURE_STEPS.iter().enumerate() {
                @let done = steps.iter().find(|(k, _)| k == step);
                li {
                    (step_label(step)) ": "
                    @match done {
                        Some((_, n)) => strong { "done (" (n) ")" },
                        None if i == steps.len() => strong { "running" },
                        None => "waiting",
                    }
                }
            }
        }
        p { a href={ "/console/subjects/erasures/" (r.id) } { "Refresh" } }
    };
    let mut resp = layout(
        "Erasure in progress",
        Some(&ctx.session),
        &Notice::None,
        body,
    )
    .into_response();
    resp.headers_mut()
        .insert(header::REFRESH, HeaderValue::from_static("2"));
    resp
}

fn receipt_page(ctx: &Ctx, r: &Value, notice: Notice) -> Response {
    let mut rows: Vec<(&str, &str)> = vec![
        ("Request", "request"),
        ("Person", "person"),
        ("Subject (keyed hash)", "subject"),
        ("Requested by", "requested_by"),
        ("Requested at", "requested_at"),
        ("Confirmed by", "confirmed_by"),
        ("Confirmed at", "confirmed_at"),
        ("Finished at", "finished_at"),
    ];
    rows.extend(ERASURE_STEPS.iter().map(|k| (step_label(k), *k)));
    layout(
        "Erasure receipt",
        Some(&ctx.session),
        &notice,
        html! {
            dl id="receipt" {
                @for (label, key) in rows { dt { (label) } dd data-key=(key) { (text(&r[key])) } }
            }
            p.muted { "The receipt names the person by a masked address and the keyed hash the send log and suppression list keep; the address itself is gone." }
        },
    )
    .into_response()
}
