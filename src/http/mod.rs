//! The HTTP API (axum): health, Prometheus metrics and the admin endpoints.
//!
//! Owns the HTTP listener, routing, bearer-token checks and the JSON error shape
//! `{"error": {"code", "message", "field"}}`. Handlers only call the handles they are given
//! (queue, metrics); they never reach into a stage's internals.
//!
//! Tokens: `[[api_token]]` entries hold the SHA-256 of a token and its scopes; a request sends
//! `Authorization: Bearer TOKEN`. With no tokens configured, admin endpoints answer loopback
//! clients only, so a fresh install is usable locally and closed to the network.

use std::net::SocketAddr;
use std::sync::Arc;

use axum::extract::rejection::{JsonRejection, QueryRejection};
use axum::extract::{ConnectInfo, FromRequestParts, Query, State};
use axum::http::request::Parts;
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use serde_json::json;
use sha2::{Digest, Sha256};
use tokio_util::sync::CancellationToken;

pub mod bounces;
pub mod console;
pub mod idempotency;
pub mod inject;
mod inject_request;

use crate::config::Config;
use crate::events::EventBus;
use crate::metrics::Metrics;
use crate::queue::{Filter, Queue};

pub mod logs;
pub mod openapi;
pub mod rate;
pub mod suppressions;
pub mod suppressions_bulk;
pub mod tls;
pub mod unsubscribe;

/// What handlers may use.
#[derive(Clone)]
pub struct ApiState {
    pub config: Arc<Config>,
    pub queue: Queue,
    pub metrics: Metrics,
    /// The event stream (handlers that change state publish through the stage they call;
    /// `/metrics` uses it to wait until the counters include every event published).
    pub bus: EventBus,
    /// The send log's read side; None when `[sendlog] enabled = false`.
    pub sendlog: Option<crate::sendlog::SendLog>,
    /// Intake, the same pipeline SMTP uses (HTTP injection hands messages to it).
    pub acceptor: crate::message::SharedAcceptor,
    /// Signs one-click unsubscribe tokens for promotional injected mail.
    pub unsubscribe: Option<crate::suppression::token::UnsubscribeKey>,
    /// The suppression list (`/api/v1/suppressions`); None when not open.
    pub suppressions: Option<crate::suppression::SharedStore>,
    /// Bounce rules and provider data for `POST /api/v1/bounces/classify`.
    pub bounce_rules: Arc<crate::bounce::report::ReportRules>,
    /// Answered `Idempotency-Key`s of `POST /api/v1/messages`; None: keys are refused (503).
    pub idempotency: Option<idempotency::IdempotencyStore>,
    /// Per-token request rates (`[[api_token]] rate`); applied before every handler.
    pub rates: rate::SharedRates,
    /// Event shipping's outbox of its own (erasure shreds the person's pending lines); None
    /// when no destination is configured or they read the send log's journal.
    pub outbox: Option<crate::ship::outbox::Outbox>,
    /// True when shipping destinations read the send log's journal: erasure has the send log
    /// shred the person's lines there first.
    pub ship_reads_journal: bool,
    /// The newest sending-domain check of each `[[dkim]]` domain (the periodic run's, or a
    /// console "check now"), shown on the console's operations page.
    pub domain_checks: crate::auth::DomainChecks,
}

/// An API error, rendered as `{"error": {"code", "message", "field"}}`.
#[derive(Debug)]
pub struct ApiError {
    pub status: StatusCode,
    pub code: &'static str,
    pub message: String,
    pub field: Option<String>,
}

impl ApiError {
    pub fn new(status: StatusCode, code: &'static str, message: impl Into<String>) -> Self {
        ApiError {
            status,
            code,
            message: message.into(),
            field: None,
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        (
            self.status,
            Json(
                json!({"error": {"code": self.code, "message": self.message, "field": self.field}}),
            ),
        )
            .into_response()
    }
}

/// SHA-256 of a token, hex — what `[[api_token]] hash` holds.
pub fn token_hash(token: &str) -> String {
    hex::encode(Sha256::digest(token.as_bytes()))
}

/// Check the request may use `scope`.
pub fn authorize(
    config: &Config,
    headers: &HeaderMap,
    peer: SocketAddr,
    scope: &str,
) -> Result<(), ApiError> {
    authorize_actor(config, headers, peer, scope).map(|_| ())
}

/// [`authorize`], returning who is acting (for events): the token's name, or, with no tokens
/// configured, `"cli"` for the `gannet` command line (its User-Agent) and `"loopback"` for
/// any other local client.
pub fn authorize_actor(
    config: &Config,
    headers: &HeaderMap,
    peer: SocketAddr,
    scope: &str,
) -> Result<String, ApiError> {
    let bearer = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .map(str::trim);
    if config.api_tokens.is_empty() {
        if !peer.ip().is_loopback() {
            return Err(ApiError::new(
                StatusCode::FORBIDDEN,
                "forbidden",
                "no [[api_token]] is configured, so the API answers loopback clients only",
            ));
        }
        check_host(config, headers)?;
        let cli = headers
            .get(header::USER_AGENT)
            .and_then(|v| v.to_str().ok())
            .is_some_and(|ua| ua.starts_with(CLI_USER_AGENT));
        return Ok(if cli { "cli" } else { "loopback" }.to_string());
    }
    let Some(token) = bearer else {
        return Err(ApiError::new(
            StatusCode::UNAUTHORIZED,
            "unauthorized",
            "send Authorization: Bearer <token>",
        ));
    };
    let hash = token_hash(token);
    match config
        .api_tokens
        .iter()
        .find(|t| t.hash.eq_ignore_ascii_case(&hash))
    {
        None => Err(ApiError::new(
            StatusCode::UNAUTHORIZED,
            "unauthorized",
            "unknown API token",
        )),
        Some(t) if t.scopes.iter().any(|s| s == scope) => Ok(t.name.clone()),
        Some(t) => Err(ApiError::new(
            StatusCode::FORBIDDEN,
            "forbidden",
            format!("token {:?} lacks the {scope:?} scope", t.name),
        )),
    }
}

/// The User-Agent the `gannet` CLI sends (its actions show actor `"cli"` in events).
pub const CLI_USER_AGENT: &str = "gannet-cli";

/// The loopback-only API is reachable from a browser on this host; a page whose own name was
/// rebound to 127.0.0.1 (DNS rebinding) sends that name in `Host:`. So accept only Host values
/// that cannot come from rebinding: `localhost`, the listener's IP address (any IP literal when
/// it listens on all addresses), and the names in `[http] allowed_hosts`. The port is not
/// compared (a rebinding page uses the real one anyway). No Host at all is not a browser.
fn check_host(config: &Config, headers: &HeaderMap) -> Result<(), ApiError> {
    let Some(value) = headers.get(header::HOST) else {
        return Ok(());
    };
    let raw = value.to_str().unwrap_or("");
    if host_allowed(config, raw) {
        return Ok(());
    }
    Err(ApiError {
        status: StatusCode::FORBIDDEN,
        code: "forbidden",
        message: format!(
            "Host {:?} is not an address of this API; with no [[api_token]] configured it \
             answers only to localhost, {} or a name in [http] allowed_hosts (protection \
             against DNS rebinding)",
            raw.chars().take(100).collect::<String>(),
            config.http.address.ip()
        ),
        field: Some("Host".to_string()),
    })
}

/// See [`check_host`]. `raw` is a Host header value: `name`, `name:port`, `[v6]:port`.
pub fn host_allowed(config: &Config, raw: &str) -> bool {
    let raw = raw.trim();
    let host = if let Some(rest) = raw.strip_prefix('[') {
        match rest.split_once(']') {
            Some((h, tail)) if tail.is_empty() || tail.starts_with(':') => h,
            _ => return false,
        }
    } else {
        match raw.rsplit_once(':') {
            Some((h, port)) if !h.contains(':') && port.bytes().all(|b| b.is_ascii_digit()) => h,
            _ => raw,
        }
    };
    let host = host.trim_end_matches('.');
    if host.is_empty() {
        return false;
    }
    if let Ok(ip) = host.parse::<std::net::IpAddr>() {
        let ours = config.http.address.ip();
        return ours.is_unspecified() || ip == ours;
    }
    host.eq_ignore_ascii_case("localhost")
        || config
            .http
            .allowed_hosts
            .iter()
            .any(|h| h.trim_end_matches('.').eq_ignore_ascii_case(host))
}

/// Extractor for handlers that need the `admin` scope: checks the bearer token (or, with no
/// tokens configured, that the client is on loopback) before the handler runs, and names the
/// actor for the events the action publishes.
pub struct Admin {
    pub actor: String,
}

impl FromRequestParts<ApiState> for Admin {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, s: &ApiState) -> Result<Self, ApiError> {
        let actor = authorize_actor(&s.config, &parts.headers, peer(parts)?, "admin")?;
        Ok(Admin { actor })
    }
}

/// The client's address, which every scope check needs (served with connect info).
pub(crate) fn peer(parts: &Parts) -> Result<SocketAddr, ApiError> {
    parts
        .extensions
        .get::<ConnectInfo<SocketAddr>>()
        .map(|c| c.0)
        .ok_or_else(|| {
            ApiError::new(
                StatusCode::INTERNAL_SERVER_ERROR,
                "internal",
                "client address unknown",
            )
        })
}

#[utoipa::path(get, path = "/health", tag = "meta", security(()),
    responses((status = 200, description = "The process answers", body = Object, example = json!({"status": "ok"}))))]
async fn health() -> impl IntoResponse {
    Json(json!({"status": "ok"}))
}

/// How long a scrape waits for the metrics subscriber to count what was published before it.
const SCRAPE_CATCH_UP: std::time::Duration = std::time::Duration::from_secs(2);

#[utoipa::path(get, path = "/metrics", tag = "meta", security(()),
    responses((status = 200, description = "Prometheus text format; every name starts with gannet_", body = String, content_type = "text/plain")))]
async fn metrics(State(s): State<ApiState>) -> impl IntoResponse {
    // Counters come from the event stream: wait until they include every event published
    // before this request, so a scrape agrees with the log lines already written.
    let seq = s.bus.last_seq();
    if !s.metrics.events_seen.wait_for(seq, SCRAPE_CATCH_UP).await {
        tracing::warn!(
            seq,
            "metrics subscriber is behind; serving counters as they are"
        );
    }
    s.bus.update_backlog_gauges();
    // Gauges of state, read now (queue depth walks the queue; disk and /proc off the runtime).
    s.metrics.set_queue_depth(&s.queue.depth().await);
    s.metrics.suspensions.set(s.queue.suspension_count() as i64);
    let (backoff, warming) = s.queue.shaping_state();
    s.metrics.backoff_sites.set(backoff as i64);
    s.metrics.warming_sources.set(warming as i64);
    s.metrics.set_warmup_progress(
        &s.queue
            .warmup_progress(crate::shaping::Day::from_system_time(
                std::time::SystemTime::now(),
            )),
    );
    let (m, dir) = (
        s.metrics.clone(),
        s.config.resolve_path(&s.config.spool.path),
    );
    let _ = tokio::task::spawn_blocking(move || crate::metrics::gauges::system(&m, &dir)).await;
    (
        [(header::CONTENT_TYPE, "text/plain; version=0.0.4")],
        s.metrics.render(),
    )
}

fn bad_request(e: impl std::fmt::Display, field: &str) -> ApiError {
    ApiError {
        status: StatusCode::BAD_REQUEST,
        code: "invalid_request",
        message: e.to_string(),
        field: Some(field.to_string()),
    }
}

#[utoipa::path(get, path = "/api/v1/queues", tag = "queues", params(crate::queue::Filter),
    responses((status = 200, description = "Queued recipients per domain, class, pool, tenant, state", body = crate::queue::QueueListing),
        (status = 400, description = "Bad request", body = openapi::ErrorResponse),
        (status = 401, description = "No or unknown token", body = openapi::ErrorResponse),
        (status = 403, description = "Token lacks the scope, or not loopback", body = openapi::ErrorResponse),
        (status = 429, description = "Token over its rate (Retry-After)", body = openapi::ErrorResponse)))]
async fn queues(
    State(s): State<ApiState>,
    _: Admin,
    filter: Result<Query<Filter>, QueryRejection>,
) -> Result<impl IntoResponse, ApiError> {
    let Query(filter) = filter.map_err(|e| bad_request(e.body_text(), "query"))?;
    Ok(Json(s.queue.list(&filter).await))
}

fn filter_body(body: Result<Json<Filter>, JsonRejection>) -> Result<Filter, ApiError> {
    body.map(|Json(f)| f)
        .map_err(|e| bad_request(e.body_text(), "filter"))
}

#[utoipa::path(post, path = "/api/v1/queues/suspend", tag = "queues", request_body = crate::queue::Filter,
    responses((status = 200, description = "`{\"suspension\": {\"id\", \"filter\"}, \"held\": N}`", body = Object),
        (status = 400, description = "Bad request", body = openapi::ErrorResponse),
        (status = 401, description = "No or unknown token", body = openapi::ErrorResponse),
        (status = 403, description = "Token lacks the scope, or not loopback", body = openapi::ErrorResponse),
        (status = 429, description = "Token over its rate (Retry-After)", body = openapi::ErrorResponse)))]
async fn suspend(
    State(s): State<ApiState>,
    admin: Admin,
    body: Result<Json<Filter>, JsonRejection>,
) -> Result<impl IntoResponse, ApiError> {
    let filter = filter_body(body)?;
    let (suspension, held) = s.queue.suspend(filter, &admin.actor);
    Ok(Json(json!({"suspension": suspension, "held": held})))
}

#[utoipa::path(post, path = "/api/v1/queues/resume", tag = "queues", request_body = crate::queue::Filter,
    responses((status = 200, description = "`{\"removed\": N, \"released\": M}`", body = Object),
        (status = 400, description = "Bad request", body = openapi::ErrorResponse),
        (status = 401, description = "No or unknown token", body = openapi::ErrorResponse),
        (status = 403, description = "Token lacks the scope, or not loopback", body = openapi::ErrorResponse),
        (status = 429, description = "Token over its rate (Retry-After)", body = openapi::ErrorResponse)))]
async fn resume(
    State(s): State<ApiState>,
    admin: Admin,
    body: Result<Json<Filter>, JsonRejection>,
) -> Result<impl IntoResponse, ApiError> {
    let filter = filter_body(body)?;
    let (removed, released) = s.queue.resume(&filter, &admin.actor);
    Ok(Json(json!({"removed": removed, "released": released})))
}

#[utoipa::path(post, path = "/api/v1/queues/purge", tag = "queues", request_body = crate::queue::Filter,
    responses((status = 200, description = "`{\"purged\": N}`; the filter must name at least one field", body = Object),
        (status = 400, description = "Bad request", body = openapi::ErrorResponse),
        (status = 401, description = "No or unknown token", body = openapi::ErrorResponse),
        (status = 403, description = "Token lacks the scope, or not loopback", body = openapi::ErrorResponse),
        (status = 429, description = "Token over its rate (Retry-After)", body = openapi::ErrorResponse)))]
async fn purge(
    State(s): State<ApiState>,
    admin: Admin,
    body: Result<Json<Filter>, JsonRejection>,
) -> Result<impl IntoResponse, ApiError> {
    let filter = filter_body(body)?;
    if filter.is_empty() {
        return Err(bad_request(
            "refusing to purge the whole queue: name at least one of domain, site, tenant, campaign, class, pool",
            "filter",
        ));
    }
    let n = s.queue.purge(&filter, &admin.actor).await;
    Ok(Json(json!({"purged": n})))
}

#[utoipa::path(get, path = "/api/v1/queues/suspensions", tag = "queues",
    responses((status = 200, description = "`{\"suspensions\": [...]}`", body = Object),
        (status = 400, description = "Bad request", body = openapi::ErrorResponse),
        (status = 401, description = "No or unknown token", body = openapi::ErrorResponse),
        (status = 403, description = "Token lacks the scope, or not loopback", body = openapi::ErrorResponse),
        (status = 429, description = "Token over its rate (Retry-After)", body = openapi::ErrorResponse)))]
async fn suspensions(State(s): State<ApiState>, _: Admin) -> Result<impl IntoResponse, ApiError> {
    Ok(Json(json!({"suspensions": s.queue.suspensions()})))
}

#[utoipa::path(post, path = "/api/v1/queues/flush", tag = "queues",
    responses((status = 200, description = "`{\"flushed\": N}`: deferred deliveries retried now", body = Object),
        (status = 400, description = "Bad request", body = openapi::ErrorResponse),
        (status = 401, description = "No or unknown token", body = openapi::ErrorResponse),
        (status = 403, description = "Token lacks the scope, or not loopback", body = openapi::ErrorResponse),
        (status = 429, description = "Token over its rate (Retry-After)", body = openapi::ErrorResponse)))]
async fn flush(State(s): State<ApiState>, admin: Admin) -> Result<impl IntoResponse, ApiError> {
    let n = s.queue.flush(&admin.actor).await;
    Ok(Json(json!({"flushed": n})))
}

#[utoipa::path(get, path = "/api/v1/domains/{domain}/check", tag = "queues",
    params(("domain" = String, Path, description = "The From domain to check"),
        ("return_path" = Option<String>, Query, description = "Return-Path domain when it differs")),
    responses((status = 200, description = "The check-domain report", body = Object),
        (status = 400, description = "Bad request", body = openapi::ErrorResponse),
        (status = 401, description = "No or unknown token", body = openapi::ErrorResponse),
        (status = 403, description = "Token lacks the scope, or not loopback", body = openapi::ErrorResponse),
        (status = 429, description = "Token over its rate (Retry-After)", body = openapi::ErrorResponse)))]
async fn domain_check(
    State(s): State<ApiState>,
    _: Admin,
    axum::extract::Path(domain): axum::extract::Path<String>,
    params: Query<std::collections::HashMap<String, String>>,
) -> Result<impl IntoResponse, ApiError> {
    let rp = params.get("return_path").map(String::as_str);
    match crate::auth::check_domain(&s.config, &domain, rp).await {
        Ok(report) => Ok(Json(report)),
        Err(e) => Err(bad_request(e, "domain")),
    }
}

async fn not_found() -> ApiError {
    ApiError::new(StatusCode::NOT_FOUND, "not_found", "no such endpoint")
}

/// All routes. Later API work adds routers here.
pub fn router(state: ApiState) -> Router {
    let inject_limit = state.config.inject.max_request_bytes;
    Router::new()
        .route(
            "/api/v1/messages",
            post(inject::post_messages).layer(axum::extract::DefaultBodyLimit::max(inject_limit)),
        )
        .route("/health", get(health))
        .route("/api/v1/openapi.json", get(openapi::openapi_json))
        .route("/metrics", get(metrics))
        .route("/api/v1/queues", get(queues))
        .route("/api/v1/queues/flush", post(flush))
        .route("/api/v1/queues/suspend", post(suspend))
        .route("/api/v1/queues/resume", post(resume))
        .route("/api/v1/queues/purge", post(purge))
        .route("/api/v1/queues/suspensions", get(suspensions))
        .route("/api/v1/domains/{domain}/check", get(domain_check))
        .route("/api/v1/events", get(logs::events))
        .route("/api/v1/messages/{id}", get(logs::message))
        .route(
            "/api/v1/campaigns/{campaign}/stats",
            get(logs::campaign_stats),
        )
        .route("/api/v1/erasures", post(logs::erase))
        .route("/api/v1/subjects/{address}", get(logs::subject))
        .route(
            "/api/v1/suppressions",
            get(suppressions::list).post(suppressions::add),
        )
        .route(
            "/api/v1/suppressions/import",
            // Streamed line by line, any size (see suppressions_bulk).
            post(suppressions_bulk::import).layer(axum::extract::DefaultBodyLimit::disable()),
        )
        .route(
            "/api/v1/suppressions/export",
            get(suppressions_bulk::export),
        )
        .route(
            "/api/v1/suppressions/{address}",
            get(suppressions::get_one).delete(suppressions::remove),
        )
        .route(
            "/u/{token}",
            get(unsubscribe::page).post(unsubscribe::one_click),
        )
        .route(
            "/api/v1/bounces/classify",
            post(bounces::classify).layer(axum::extract::DefaultBodyLimit::max(bounces::MAX_BODY)),
        )
        .fallback(not_found)
        .with_state(state.clone())
        .merge(console::router(state.clone()))
        .layer(axum::middleware::from_fn_with_state(
            state.rates.clone(),
            rate::limit,
        ))
}

/// Serve the API on an already-bound listener until `shutdown`; over TLS when `tls` is given
/// (`[http] tls_cert` / `tls_key`).
pub async fn run(
    listener: tokio::net::TcpListener,
    router: Router,
    tls: Option<tokio_rustls::TlsAcceptor>,
    shutdown: CancellationToken,
) -> std::io::Result<()> {
    let service = router.into_make_service_with_connect_info::<SocketAddr>();
    let stop = shutdown.clone();
    match tls {
        None => {
            axum::serve(listener, service)
                .with_graceful_shutdown(async move { stop.cancelled().await })
                .await
        }
        Some(acceptor) => {
            use axum::serve::ListenerExt;
            // tap_io: axum gives connect info (the client address) for tapped listeners.
            let listener = tls::TlsListener::new(listener, acceptor, shutdown).tap_io(|_| {});
            axum::serve(listener, service)
                .with_graceful_shutdown(async move { stop.cancelled().await })
                .await
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(http: &str) -> Config {
        Config::from_toml(
            &format!(
                "[http]\n{http}\n[[pool]]\nname = \"p\"\nsources = [{{ ip = \"127.0.0.1\", ehlo = \"h\" }}]\n\
                 [class.c]\npool = \"p\"\n"
            ),
            "t",
        )
        .unwrap()
    }

    /// Issue 15 item 12: with no `[[api_token]]`, only loopback clients, and only Host values
    /// that DNS rebinding cannot produce.
    #[test]
    fn loopback_only_api_checks_the_client_and_the_host() {
        let c = config("address = \"127.0.0.1:8025\"\nallowed_hosts = [\"gannet.admin.test\"]");
        let local: SocketAddr = "127.0.0.1:40000".parse().unwrap();
        let remote: SocketAddr = "192.0.2.7:40000".parse().unwrap();
        let with_host = |h: Option<&str>| {
            let mut m = HeaderMap::new();
            if let Some(h) = h {
                m.insert(header::HOST, h.parse().unwrap());
            }
            m
        };
        let table: &[(SocketAddr, Option<&str>, bool)] = &[
            (local, Some("127.0.0.1:8025"), true),
            (local, Some("127.0.0.1"), true),
            (local, Some("localhost:8025"), true),
            (local, Some("LOCALHOST."), true),
            (local, Some("gannet.admin.test:8025"), true),
            (local, None, true),
            (local, Some("evil.example:8025"), false),
            (local, Some("127.0.0.1.evil.example"), false),
            (local, Some("localhost.evil.example:8025"), false),
            (local, Some("127.0.0.2:8025"), false),
            (local, Some("[::1]:8025"), false),
            (local, Some(""), false),
            (remote, Some("127.0.0.1:8025"), false),
            (remote, None, false),
        ];
        for (peer, host, ok) in table {
            let r = authorize(&c, &with_host(*host), *peer, "admin");
            assert_eq!(r.is_ok(), *ok, "peer {peer} host {host:?}: {r:?}");
            if let Err(e) = r {
                assert_eq!(e.status, StatusCode::FORBIDDEN);
            }
        }
        // Listening on every address: any IP literal reached one of ours.
        let any = config("address = \"0.0.0.0:8025\"");
        assert!(host_allowed(&any, "127.0.0.2:8025"));
        assert!(host_allowed(&any, "[::1]:8025"));
        assert!(!host_allowed(&any, "evil.example"));
    }
}
