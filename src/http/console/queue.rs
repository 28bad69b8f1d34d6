//! The operations page: the queue per domain, site, campaign and pool; suspensions with
//! suspend / resume by campaign (and optionally tenant, pool, site); recent backoffs and
//! anomalies from the send log; the sending domains' DKIM and DNS checks (`domains`).
//!
//! Calls the same `Queue` methods as `/api/v1/queues/*` (`list`, `suspend`, `resume`,
//! `suspensions`) with the actor `console:NAME`, so the `suspended` / `resumed` events name
//! the console user. Never changes queue state another way.

use axum::Router;
use axum::extract::{Form, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use maud::html;
use serde::Deserialize;
use serde_json::Value;

use super::auth::{Right, allows};
use super::page::{Notice, csrf, layout, text, time_us};
use super::{Console, Ctx};
use crate::queue::Filter;
use crate::sendlog::EventFilter;

pub fn routes() -> Router<Console> {
    Router::new()
        .route("/console/queue", get(view))
        .route("/console/queue/suspend", post(suspend))
        .route("/console/queue/resume", post(resume))
        .route("/console/domains/check", post(super::domains::check_now))
}

/// Recent backoff and anomaly events shown (each).
const RECENT: usize = 20;

async fn recent(c: &Console, kind: &'static str) -> Vec<Value> {
    let Some(log) = c.api.sendlog.clone() else {
        return Vec::new();
    };
    log.read(move |r| {
        let mut rows = r.events(&EventFilter {
            kind: Some(kind.to_string()),
            limit: 100_000,
            ..EventFilter::default()
        })?;
        let keep = rows.len().saturating_sub(RECENT);
        let mut rows: Vec<Value> = rows.drain(keep..).collect();
        rows.reverse();
        Ok(rows)
    })
    .await
    .unwrap_or_default()
}

pub(super) async fn render(c: &Console, ctx: &Ctx, notice: Notice, status: StatusCode) -> Response {
    let s = &ctx.session;
    let listing = c.api.queue.list(&Filter::default()).await;
    let suspensions = c.api.queue.suspensions();
    let (backoff_sites, warming) = c.api.queue.shaping_state();
    let backoffs = recent(c, "backoff").await;
    let anomalies = recent(c, "anomaly").await;
    let control = allows(s.role, Right::ControlQueue);
    let body = html! {
        p { (listing.queued_recipients) " recipients queued; " (backoff_sites) " sites in backoff; " (warming) " sources warming up." }
        h2 { "Queue" }
        div.table { table {
            thead { tr {
                th scope="col" { "Domain" } th scope="col" { "Site" } th scope="col" { "Campaign" } th scope="col" { "Tenant" }
                th scope="col" { "Pool" } th scope="col" { "Class" } th scope="col" { "State" } th scope="col" { "Recipients" } th scope="col" { "Oldest (s)" }
            } }
            tbody { @for r in &listing.queues {
                tr {
                    td { (r.domain) } td { (r.site.clone().unwrap_or_default()) } td { (r.campaign) } td { (r.tenant) }
                    td { (r.pool) } td { (r.class) } td { (r.state) } td { (r.recipients) } td { (r.oldest_age_secs) }
                }
            } }
        } }
        h2 { "Suspensions" }
        @if suspensions.is_empty() { p { "None." } }
        @else {
            div.table { table {
                thead { tr { th scope="col" { "Id" } th scope="col" { "Filter" } th scope="col" { "Reason" } @if control { th scope="col" { "Resume" } } } }
                tbody { @for sp in &suspensions {
                    tr {
                        td { (sp.id) }
                        td { (serde_json::to_string(&sp.filter).unwrap_or_default()) }
                        td { (sp.reason) }
                        @if control { td {
                            form method="post" action="/console/queue/resume" {
                                (csrf(s))
                                @if let Some(v) = &sp.filter.campaign { input type="hidden" name="campaign" value=(v); }
                                @if let Some(v) = &sp.filter.tenant { input type="hidden" name="tenant" value=(v); }
                                @if let Some(v) = &sp.filter.pool { input type="hidden" name="pool" value=(v); }
                                @if let Some(v) = &sp.filter.site { input type="hidden" name="site" value=(v); }
                                @if let Some(v) = &sp.filter.domain { input type="hidden" name="domain" value=(v); }
                                @if let Some(v) = &sp.filter.class { input type="hidden" name="class" value=(v); }
                                button type="submit" aria-label={ "Resume suspension " (sp.id) } { "Resume" }
                            }
                        } }
                    }
                } }
            } }
        }
        @if control {
            h2 { "Suspend" }
            form.box method="post" action="/console/queue/suspend" {
                (csrf(s))
                div { label for="campaign" { "Campaign" } input id="campaign" name="campaign"; }
                div { label for="tenant" { "Tenant" } input id="tenant" name="tenant"; }
                div { label for="pool" { "Pool" } input id="pool" name="pool"; }
                div { label for="site" { "Site" } input id="site" name="site"; }
                div { button.danger type="submit" { "Suspend" } }
            }
        }
        h2 { "Recent backoffs" }
        (events(&backoffs, &["change", "action", "site", "source", "rule", "seconds"]))
        h2 { "Recent anomalies" }
        (events(&anomalies, &["metric", "severity", "state", "provider", "campaign", "rate", "threshold", "action"]))
        (super::domains::section(c, s))
    };
    (status, layout("Operations", Some(s), &notice, body)).into_response()
}

fn events(rows: &[Value], cols: &[&str]) -> maud::Markup {
    html! {
        @if rows.is_empty() { p { "None recorded." } }
        @else {
            div.table { table {
                thead { tr { th scope="col" { "Time (UTC)" } @for c in cols { th scope="col" { (c) } } } }
                tbody { @for e in rows {
                    tr { td { (time_us(&e["time_us"])) } @for c in cols { td { (text(&e[*c])) } } }
                } }
            } }
        }
    }
}

async fn view(State(c): State<Console>, ctx: Ctx) -> Response {
    if let Err(r) = ctx.require(Right::ViewQueue) {
        return *r;
    }
    render(&c, &ctx, Notice::None, StatusCode::OK).await
}

#[derive(Deserialize)]
struct FilterForm {
    #[serde(default)]
    campaign: String,
    #[serde(default)]
    tenant: String,
    #[serde(default)]
    pool: String,
    #[serde(default)]
    site: String,
    #[serde(default)]
    domain: String,
    #[serde(default)]
    class: String,
}

impl FilterForm {
    fn filter(&self) -> Filter {
        let opt = |s: &String| Some(s.trim().to_string()).filter(|s| !s.is_empty());
        Filter {
            campaign: opt(&self.campaign),
            tenant: opt(&self.tenant),
            pool: opt(&self.pool),
            site: opt(&self.site),
            domain: opt(&self.domain),
            class: opt(&self.class),
        }
    }
}

async fn suspend(State(c): State<Console>, ctx: Ctx, Form(f): Form<FilterForm>) -> Response {
    if let Err(r) = ctx.require(Right::ControlQueue) {
        return *r;
    }
    let filter = f.filter();
    if filter.is_empty() {
        return render(
            &c,
            &ctx,
            Notice::Error("Name a campaign (or a tenant, pool or site) to suspend.".into()),
            StatusCode::BAD_REQUEST,
        )
        .await;
    }
    let (sp, held) = c.api.queue.suspend(filter, &ctx.actor());
    render(
        &c,
        &ctx,
        Notice::Ok(format!(
            "Suspension {} is in force; {held} queued recipients held.",
            sp.id
        )),
        StatusCode::OK,
    )
    .await
}

async fn resume(State(c): State<Console>, ctx: Ctx, Form(f): Form<FilterForm>) -> Response {
    if let Err(r) = ctx.require(Right::ControlQueue) {
        return *r;
    }
    let (removed, released) = c.api.queue.resume(&f.filter(), &ctx.actor());
    render(
        &c,
        &ctx,
        Notice::Ok(format!(
            "Resumed: {removed} suspensions removed, {released} recipients released."
        )),
        StatusCode::OK,
    )
    .await
}
