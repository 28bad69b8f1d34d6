//! Console pages over the suppression list: search, add, remove (with a reason), import
//! (pasted CSV or JSONL) and export.
//!
//! Every action calls the API's handler (`http::suppressions::{list, add, remove}`,
//! `http::suppressions_bulk::{import, export}`) with the actor `console:NAME`, so the same
//! checks run and the same `suppression_changed` events are published. A removal's reason is
//! recorded as a `console` event (`suppression_removed`) about the address.

use axum::body::Body;
use axum::extract::{Form, Query, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use maud::html;
use serde::Deserialize;
use serde_json::Value;

use super::auth::{Right, allows};
use super::page::{self, Notice, csrf, layout, text};
use super::{Console, Ctx};
use crate::http::suppressions::{AddRequest, ListQuery, ScopeQuery, SuppressionUser};
use crate::http::suppressions_bulk::{ExportQuery, ImportQuery};

pub fn routes() -> Router<Console> {
    Router::new()
        .route("/console/suppressions", get(list))
        .route("/console/suppressions/add", post(add))
        .route("/console/suppressions/remove", post(remove))
        .route("/console/suppressions/import", post(import))
        .route("/console/suppressions/export", get(export))
}

#[derive(Debug, Default, Deserialize)]
struct Search {
    #[serde(default)]
    prefix: String,
    #[serde(default)]
    domain: String,
    #[serde(default)]
    reason: String,
    #[serde(default)]
    tenant: String,
    #[serde(default)]
    cursor: String,
}

fn who(ctx: &Ctx) -> SuppressionUser {
    SuppressionUser { actor: ctx.actor() }
}

async fn render(c: &Console, ctx: &Ctx, q: Search, notice: Notice, status: StatusCode) -> Response {
    let s = &ctx.session;
    let lq = ListQuery {
        prefix: q.prefix.trim().to_string(),
        domain: q.domain.trim().to_string(),
        reason: q.reason.trim().to_string(),
        tenant: q.tenant.trim().to_string(),
        cursor: Some(q.cursor.clone()).filter(|c| !c.is_empty()),
        limit: Some(100),
    };
    let (notice, entries, next) = match crate::http::suppressions::list(
        State(c.api.clone()),
        who(ctx),
        Ok(Query(lq)),
    )
    .await
    {
        Ok(Json(v)) => (
            notice,
            v["entries"].as_array().cloned().unwrap_or_default(),
            v["next_cursor"].as_str().map(str::to_string),
        ),
        Err(e) => (Notice::Error(e.message), Vec::new(), None),
    };
    let edit = allows(s.role, Right::EditSuppressions);
    let body = html! {
        form.box method="get" action="/console/suppressions" role="search" {
            div { label for="prefix" { "Address starts with" } input id="prefix" name="prefix" value=(q.prefix); }
            div { label for="domain" { "Domain" } input id="domain" name="domain" value=(q.domain); }
            div { label for="reason" { "Reason" } input id="reason" name="reason" value=(q.reason); }
            div { label for="tenant" { "Tenant" } input id="tenant" name="tenant" value=(q.tenant); }
            div { button type="submit" { "Search" } }
        }
        div.table { table {
            caption.muted { (entries.len()) " entries" }
            thead { tr {
                th scope="col" { "Address" } th scope="col" { "Tenant" } th scope="col" { "Stream" }
                th scope="col" { "Reason" } th scope="col" { "Source" }
                @if edit { th scope="col" { "Remove" } }
            } }
            tbody { @for e in &entries {
                tr {
                    td { (text(&e["address"])) } td { (text(&e["tenant"])) } td { (text(&e["stream"])) }
                    td { (text(&e["reason"])) } td { (text(&e["source"])) }
                    @if edit { td {
                        form method="post" action="/console/suppressions/remove" {
                            (csrf(s))
                            input type="hidden" name="address" value=(text(&e["address"]));
                            input type="hidden" name="tenant" value=(text(&e["tenant"]));
                            input type="hidden" name="stream" value=(text(&e["stream"]));
                            @let id = format!("why-{}", text(&e["address"]));
                            label for=(id) { "Reason for removal" }
                            input id=(id) name="why" required;
                            button.danger type="submit" { "Remove" }
                        }
                    } }
                }
            } }
        } }
        @if let Some(n) = next {
            p { a rel="next" href={ "/console/suppressions?prefix=" (page::urlencode(&q.prefix)) "&domain=" (page::urlencode(&q.domain)) "&reason=" (page::urlencode(&q.reason)) "&tenant=" (page::urlencode(&q.tenant)) "&cursor=" (page::urlencode(&n)) } { "Next page" } }
        }
        @if edit {
            h2 { "Add an entry" }
            form.box method="post" action="/console/suppressions/add" {
                (csrf(s))
                div { label for="add-address" { "Address" } input id="add-address" name="address" type="email" required; }
                div { label for="add-tenant" { "Tenant (* for all)" } input id="add-tenant" name="tenant" value="*"; }
                div { label for="add-stream" { "Stream (empty: every stream)" } input id="add-stream" name="stream" placeholder="list:news"; }
                div { label for="add-reason" { "Reason" } input id="add-reason" name="reason" value="manual"; }
                div { button type="submit" { "Add" } }
            }
            h2 { "Import" }
            form.box method="post" action="/console/suppressions/import" {
                (csrf(s))
                div { label for="import-format" { "Format" }
                    select id="import-format" name="format" { option value="csv" { "CSV" } option value="jsonl" { "JSONL" } } }
                div { label for="import-lines" { "Lines (CSV with its header line, or one JSON object per line)" }
                    textarea id="import-lines" name="lines" required {} }
                div { button type="submit" { "Import" } }
            }
            h2 { "Export" }
            p {
                a href="/console/suppressions/export?format=csv" download { "Export CSV" } " · "
                a href="/console/suppressions/export?format=jsonl" download { "Export JSONL" }
            }
        }
    };
    (status, layout("Suppressions", Some(s), &notice, body)).into_response()
}

async fn list(State(c): State<Console>, ctx: Ctx, Query(q): Query<Search>) -> Response {
    if let Err(r) = ctx.require(Right::ViewSuppressions) {
        return *r;
    }
    render(&c, &ctx, q, Notice::None, StatusCode::OK).await
}

#[derive(Deserialize)]
struct AddForm {
    address: String,
    #[serde(default)]
    tenant: String,
    #[serde(default)]
    stream: String,
    #[serde(default)]
    reason: String,
}

async fn add(State(c): State<Console>, ctx: Ctx, Form(f): Form<AddForm>) -> Response {
    if let Err(r) = ctx.require(Right::EditSuppressions) {
        return *r;
    }
    let tenant = f.tenant.trim();
    let req = AddRequest {
        address: f.address.trim().to_string(),
        tenant: Some(if tenant.is_empty() { "*" } else { tenant }.to_string()),
        stream: f.stream.trim().to_string(),
        reason: Some(f.reason.trim().to_string()).filter(|r| !r.is_empty()),
        expires: 0,
    };
    let (notice, status) = match crate::http::suppressions::add(
        State(c.api.clone()),
        who(&ctx),
        Ok(Json(req)),
    )
    .await
    {
        Ok((_, Json(v))) => (
            Notice::Ok(format!(
                "Added {} ({}).",
                text(&v["entry"]["address"]),
                text(&v["entry"]["reason"])
            )),
            StatusCode::OK,
        ),
        Err(e) => (Notice::Error(e.message), e.status),
    };
    render(&c, &ctx, Search::default(), notice, status).await
}

#[derive(Deserialize)]
struct RemoveForm {
    address: String,
    #[serde(default)]
    tenant: String,
    #[serde(default)]
    stream: String,
    #[serde(default)]
    why: String,
}

async fn remove(State(c): State<Console>, ctx: Ctx, Form(f): Form<RemoveForm>) -> Response {
    if let Err(r) = ctx.require(Right::EditSuppressions) {
        return *r;
    }
    let why = f.why.trim().to_string();
    if why.is_empty() {
        return render(
            &c,
            &ctx,
            Search::default(),
            Notice::Error("Say why the entry is removed (the reason is recorded).".into()),
            StatusCode::BAD_REQUEST,
        )
        .await;
    }
    let q = ScopeQuery {
        tenant: Some(f.tenant.clone()).filter(|t| !t.is_empty()),
        stream: f.stream.clone(),
    };
    let r = crate::http::suppressions::remove(
        State(c.api.clone()),
        who(&ctx),
        axum::extract::Path(f.address.clone()),
        Ok(Query(q)),
    )
    .await;
    let (notice, status) = match r {
        Ok(_) => {
            c.event(
                &ctx.session.user,
                "suppression_removed",
                &why,
                &ctx.ip,
                Some(&f.address),
            );
            (
                Notice::Ok(format!("Removed {} (reason: {why}).", f.address)),
                StatusCode::OK,
            )
        }
        Err(e) => (Notice::Error(e.message), e.status),
    };
    render(&c, &ctx, Search::default(), notice, status).await
}

#[derive(Deserialize)]
struct ImportForm {
    #[serde(default)]
    format: String,
    #[serde(default)]
    lines: String,
}

async fn import(State(c): State<Console>, ctx: Ctx, Form(f): Form<ImportForm>) -> Response {
    if let Err(r) = ctx.require(Right::EditSuppressions) {
        return *r;
    }
    let q = ImportQuery {
        format: Some(if f.format.is_empty() {
            "csv".into()
        } else {
            f.format
        }),
    };
    let r = crate::http::suppressions_bulk::import(
        State(c.api.clone()),
        who(&ctx),
        HeaderMap::new(),
        Ok(Query(q)),
        Body::from(f.lines),
    )
    .await;
    let (notice, status) = match r {
        Ok(resp) => {
            let ok = resp.status().is_success();
            let v: Value = axum::body::to_bytes(resp.into_body(), 1 << 20)
                .await
                .ok()
                .and_then(|b| serde_json::from_slice(&b).ok())
                .unwrap_or(Value::Null);
            let summary = format!(
                "Imported {} of {} lines ({} new).",
                text(&v["imported"]),
                text(&v["lines"]),
                text(&v["created"])
            );
            if ok {
                (Notice::Ok(summary), StatusCode::OK)
            } else {
                let first = text(&v["error"]["message"]);
                (
                    Notice::Error(format!("{summary} {first}")),
                    StatusCode::UNPROCESSABLE_ENTITY,
                )
            }
        }
        Err(e) => (Notice::Error(e.message), e.status),
    };
    render(&c, &ctx, Search::default(), notice, status).await
}

#[derive(Deserialize)]
struct ExportForm {
    #[serde(default)]
    format: String,
}

async fn export(State(c): State<Console>, ctx: Ctx, Query(f): Query<ExportForm>) -> Response {
    if let Err(r) = ctx.require(Right::EditSuppressions) {
        return *r;
    }
    let format = if f.format == "jsonl" { "jsonl" } else { "csv" };
    let q = ExportQuery {
        format: Some(format.to_string()),
        ..ExportQuery::default()
    };
    match crate::http::suppressions_bulk::export(
        State(c.api.clone()),
        who(&ctx),
        HeaderMap::new(),
        Ok(Query(q)),
    )
    .await
    {
        Ok(mut resp) => {
            if let Ok(v) = HeaderValue::from_str(&format!(
                "attachment; filename=\"gannet-suppressions.{format}\""
            )) {
                resp.headers_mut().insert(header::CONTENT_DISPOSITION, v);
            }
            resp
        }
        Err(e) => page::error(e.status, Some(&ctx.session), &e.message),
    }
}
