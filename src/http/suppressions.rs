//! `/api/v1/suppressions` (scope `suppression`): list with filters and cursor paging, get one
//! address's entries, add, delete (bulk import and export: `suppressions_bulk`). Every change is a `suppression_changed` event naming the
//! actor (API token name or `loopback`).
//!
//! Owns only the HTTP shape; the list is `suppression::SharedStore`. Never decides policy.

use axum::Json;
use axum::extract::{FromRequestParts, Path, Query, State};
use axum::http::StatusCode;
use axum::http::request::Parts;
use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use serde::Deserialize;
use serde_json::{Value, json};

use super::{ApiError, ApiState, authorize_actor, bad_request};
use crate::events::{Event, EventKind};
use crate::suppression::{ALL_TENANTS, Entry, ListFilter, SharedStore, StoreError, normalize};

/// Extractor for the `suppression` scope; carries who is asking.
pub struct SuppressionUser {
    pub actor: String,
}

impl FromRequestParts<ApiState> for SuppressionUser {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, s: &ApiState) -> Result<Self, ApiError> {
        let peer = super::peer(parts)?;
        let actor = authorize_actor(&s.config, &parts.headers, peer, "suppression")?;
        Ok(SuppressionUser { actor })
    }
}

pub(super) fn store(s: &ApiState) -> Result<&SharedStore, ApiError> {
    s.suppressions.as_ref().ok_or_else(|| {
        ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "suppression_unavailable",
            "the suppression list is not open on this server",
        )
    })
}

pub(super) fn store_error(e: StoreError) -> ApiError {
    match e {
        StoreError::BadAddress(_) => bad_request(e, "address"),
        StoreError::BadTenant(_) => bad_request(e, "tenant"),
        StoreError::BadCursor => bad_request(e, "cursor"),
        e => {
            tracing::error!(error = %e, "suppression store request failed");
            ApiError::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "suppression_store",
                e.to_string(),
            )
        }
    }
}

/// Run store work that may touch the disk on a blocking thread.
async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> Result<T, StoreError> + Send + 'static,
) -> Result<T, ApiError> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, "internal", e.to_string()))?
        .map_err(store_error)
}

fn entry_json(e: &Entry) -> Value {
    json!({
        "address": e.address, "tenant": e.tenant, "stream": e.stream, "reason": e.reason,
        "source": e.source, "created": e.created, "expires": e.expires,
    })
}

fn announce(s: &ApiState, e: &Entry, change: &str, actor: &str) {
    let mut ev = Event::new(EventKind::SuppressionChanged {
        change: change.to_string(),
        reason: e.reason.clone(),
        scope: e.scope_text(),
        actor: actor.to_string(),
        expires: e.expires,
        entries: 1,
    });
    ev.recipient = e.address.clone();
    if e.tenant != ALL_TENANTS {
        ev.tenant = e.tenant.clone();
    }
    s.bus.publish(ev);
}

#[derive(Debug, Deserialize, Default, utoipa::IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct ListQuery {
    #[serde(default)]
    pub(crate) prefix: String,
    #[serde(default)]
    pub(crate) domain: String,
    #[serde(default)]
    pub(crate) reason: String,
    #[serde(default)]
    pub(crate) tenant: String,
    pub(crate) cursor: Option<String>,
    pub(crate) limit: Option<usize>,
}

/// `GET /api/v1/suppressions?prefix=&domain=&reason=&tenant=&cursor=&limit=` →
/// `{"entries": [...], "next_cursor": "..." | null}` (limit 1..=1000, default 100).
#[utoipa::path(get, path = "/api/v1/suppressions", tag = "suppression", params(ListQuery),
    responses((status = 200, description = "`{\"entries\": [...], \"next_cursor\"}`", body = Object),
        (status = 503, description = "The suppression list is not available", body = crate::http::openapi::ErrorResponse),
        (status = 400, description = "Bad request (names the field)", body = crate::http::openapi::ErrorResponse),
        (status = 401, description = "No or unknown token", body = crate::http::openapi::ErrorResponse),
        (status = 403, description = "Token lacks the scope, or not loopback", body = crate::http::openapi::ErrorResponse),
        (status = 429, description = "Token over its rate (Retry-After)", body = crate::http::openapi::ErrorResponse)))]
pub async fn list(
    State(s): State<ApiState>,
    _who: SuppressionUser,
    q: Result<Query<ListQuery>, axum::extract::rejection::QueryRejection>,
) -> Result<Json<Value>, ApiError> {
    let Query(q) = q.map_err(|e| bad_request(e.body_text(), "query"))?;
    let limit = q.limit.unwrap_or(100);
    if !(1..=1000).contains(&limit) {
        return Err(bad_request(
            format!("limit {limit} is out of range 1..=1000"),
            "limit",
        ));
    }
    let cursor = match &q.cursor {
        Some(c) => Some(
            URL_SAFE_NO_PAD
                .decode(c)
                .map_err(|_| bad_request("cursor is not one this API gave out", "cursor"))?,
        ),
        None => None,
    };
    let filter = ListFilter {
        prefix: q.prefix,
        domain: q.domain,
        reason: q.reason,
        tenant: q.tenant,
    };
    let store = store(&s)?.clone();
    let page = tokio::task::spawn_blocking(move || store.list(&filter, cursor.as_deref(), limit))
        .await
        .map_err(|e| ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, "internal", e.to_string()))?
        .map_err(store_error)?;
    Ok(Json(json!({
        "entries": page.entries.iter().map(entry_json).collect::<Vec<_>>(),
        "next_cursor": page.next.map(|c| URL_SAFE_NO_PAD.encode(c)),
    })))
}

/// `GET /api/v1/suppressions/{address}` → `{"address", "entries": [...]}` (404 when none).
#[utoipa::path(get, path = "/api/v1/suppressions/{address}", tag = "suppression",
    params(("address" = String, Path)),
    responses((status = 200, description = "Every entry of the address", body = Object),
        (status = 404, description = "Not suppressed", body = crate::http::openapi::ErrorResponse),
        (status = 503, description = "The suppression list is not available", body = crate::http::openapi::ErrorResponse),
        (status = 400, description = "Bad request (names the field)", body = crate::http::openapi::ErrorResponse),
        (status = 401, description = "No or unknown token", body = crate::http::openapi::ErrorResponse),
        (status = 403, description = "Token lacks the scope, or not loopback", body = crate::http::openapi::ErrorResponse),
        (status = 429, description = "Token over its rate (Retry-After)", body = crate::http::openapi::ErrorResponse)))]
pub async fn get_one(
    State(s): State<ApiState>,
    _who: SuppressionUser,
    Path(address): Path<String>,
) -> Result<Json<Value>, ApiError> {
    let entries = store(&s)?.get(&address).map_err(store_error)?;
    if entries.is_empty() {
        return Err(ApiError::new(
            StatusCode::NOT_FOUND,
            "not_suppressed",
            format!("{address} is not on the suppression list"),
        ));
    }
    Ok(Json(json!({
        "address": normalize(&address).unwrap_or(address),
        "entries": entries.iter().map(entry_json).collect::<Vec<_>>(),
    })))
}

#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct AddRequest {
    pub(crate) address: String,
    #[serde(default)]
    pub(crate) tenant: Option<String>,
    #[serde(default)]
    pub(crate) stream: String,
    #[serde(default)]
    pub(crate) reason: Option<String>,
    #[serde(default)]
    pub(crate) expires: u64,
}

/// `POST /api/v1/suppressions` `{"address", "tenant"?: "*", "stream"?: "", "reason"?:
/// "manual", "expires"?: unix seconds}` → 201 `{"entry": {...}, "created": bool}`.
#[utoipa::path(post, path = "/api/v1/suppressions", tag = "suppression", request_body = AddRequest,
    responses((status = 201, description = "`{\"entry\", \"created\"}`", body = Object),
        (status = 503, description = "The suppression list is not available", body = crate::http::openapi::ErrorResponse),
        (status = 400, description = "Bad request (names the field)", body = crate::http::openapi::ErrorResponse),
        (status = 401, description = "No or unknown token", body = crate::http::openapi::ErrorResponse),
        (status = 403, description = "Token lacks the scope, or not loopback", body = crate::http::openapi::ErrorResponse),
        (status = 429, description = "Token over its rate (Retry-After)", body = crate::http::openapi::ErrorResponse)))]
pub async fn add(
    State(s): State<ApiState>,
    who: SuppressionUser,
    body: Result<Json<AddRequest>, axum::extract::rejection::JsonRejection>,
) -> Result<(StatusCode, Json<Value>), ApiError> {
    let Json(r) = body.map_err(|e| bad_request(e.body_text(), "address"))?;
    if !crate::suppression::transfer::stream_ok(&r.stream) {
        return Err(bad_request(
            format!(
                "stream {:?}: expected empty (every stream), class:NAME, list:NAME or campaign:NAME",
                r.stream
            ),
            "stream",
        ));
    }
    let entry = Entry {
        address: normalize(&r.address).map_err(store_error)?,
        tenant: r.tenant.unwrap_or_else(|| ALL_TENANTS.to_string()),
        stream: r.stream,
        reason: r.reason.unwrap_or_else(|| "manual".to_string()),
        source: format!("api:{}", who.actor),
        created: crate::suppression::policy::now_secs(),
        expires: r.expires,
    };
    let store = store(&s)?.clone();
    let e = entry.clone();
    // sled's flush writes to disk: off the async workers.
    let created = blocking(move || {
        let created = store.add(&e)?;
        store.flush()?;
        Ok(created)
    })
    .await?;
    announce(&s, &entry, "added", &who.actor);
    Ok((
        StatusCode::CREATED,
        Json(json!({"entry": entry_json(&entry), "created": created})),
    ))
}

#[derive(Debug, Deserialize, utoipa::IntoParams, Default)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct ScopeQuery {
    pub(crate) tenant: Option<String>,
    #[serde(default)]
    pub(crate) stream: String,
}

/// `DELETE /api/v1/suppressions/{address}?tenant=*&stream=` → `{"removed": {...}}` (404 when
/// there was no such entry).
#[utoipa::path(delete, path = "/api/v1/suppressions/{address}", tag = "suppression",
    params(("address" = String, Path), ScopeQuery),
    responses((status = 200, description = "`{\"removed\": {...}}`", body = Object),
        (status = 404, description = "No such entry", body = crate::http::openapi::ErrorResponse),
        (status = 503, description = "The suppression list is not available", body = crate::http::openapi::ErrorResponse),
        (status = 400, description = "Bad request (names the field)", body = crate::http::openapi::ErrorResponse),
        (status = 401, description = "No or unknown token", body = crate::http::openapi::ErrorResponse),
        (status = 403, description = "Token lacks the scope, or not loopback", body = crate::http::openapi::ErrorResponse),
        (status = 429, description = "Token over its rate (Retry-After)", body = crate::http::openapi::ErrorResponse)))]
pub async fn remove(
    State(s): State<ApiState>,
    who: SuppressionUser,
    Path(address): Path<String>,
    q: Result<Query<ScopeQuery>, axum::extract::rejection::QueryRejection>,
) -> Result<Json<Value>, ApiError> {
    let Query(q) = q.map_err(|e| bad_request(e.body_text(), "query"))?;
    let tenant = q.tenant.unwrap_or_else(|| ALL_TENANTS.to_string());
    let store = store(&s)?.clone();
    let (a, t, st) = (address.clone(), tenant.clone(), q.stream.clone());
    let removed = blocking(move || {
        let removed = store.remove(&a, &t, &st)?;
        if removed.is_some() {
            store.flush()?;
        }
        Ok(removed)
    })
    .await?;
    match removed {
        Some(e) => {
            announce(&s, &e, "removed", &who.actor);
            Ok(Json(json!({"removed": entry_json(&e)})))
        }
        None => Err(ApiError::new(
            StatusCode::NOT_FOUND,
            "not_suppressed",
            format!(
                "no entry for {address} in tenant {tenant:?}, stream {:?}",
                q.stream
            ),
        )),
    }
}
