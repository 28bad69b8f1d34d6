//! One-click unsubscribe (RFC 8058): `POST /u/{token}` with `List-Unsubscribe=One-Click`
//! suppresses the token's recipient in the token's tenant and stream and answers 200 with no
//! redirect, after the suppression is written; `GET /u/{token}` answers a small confirmation
//! page whose button posts the same form (no JavaScript).
//!
//! Owns only the HTTP side: it verifies the token (`suppression::token`), publishes one
//! `unsubscribed` event and waits until the durable subscribers (the suppression policy, the
//! send log) have it. Never writes the list itself (the policy does, from the event), and never
//! says which address a token names.

use std::time::Duration;

use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{Html, IntoResponse, Response};

use super::ApiState;
use crate::events::{Event, EventKind};
use crate::suppression::token::Claims;

/// How long the POST waits for the suppression to be durable before answering 503.
const DURABLE_WAIT: Duration = Duration::from_secs(10);

fn text(status: StatusCode, body: &'static str) -> Response {
    (
        status,
        [(header::CONTENT_TYPE, "text/plain; charset=utf-8")],
        body,
    )
        .into_response()
}

fn claims(s: &ApiState, token: &str) -> Result<Claims, Box<Response>> {
    let Some(key) = &s.unsubscribe else {
        return Err(Box::new(text(
            StatusCode::SERVICE_UNAVAILABLE,
            "unsubscribe is not configured on this server\n",
        )));
    };
    key.verify(token).map_err(|e| {
        tracing::info!(error = %e, "unsubscribe token refused");
        Box::new(text(
            StatusCode::NOT_FOUND,
            "this unsubscribe link is not valid (altered, or issued by another server)\n",
        ))
    })
}

/// `GET /u/{token}`: a confirmation page with a button (no JavaScript, no address shown).
pub async fn page(State(s): State<ApiState>, Path(token): Path<String>) -> Response {
    if let Err(r) = claims(&s, &token) {
        return *r;
    }
    let html = format!(
        "<!doctype html>\n<html lang=\"en\"><head><meta charset=\"utf-8\"><meta name=\"viewport\" content=\"width=device-width\">\
         <title>Unsubscribe</title></head><body>\n<h1>Unsubscribe</h1>\n\
         <p>Stop receiving these emails?</p>\n\
         <form method=\"post\" action=\"/u/{token}\">\
         <input type=\"hidden\" name=\"List-Unsubscribe\" value=\"One-Click\">\
         <button type=\"submit\">Unsubscribe</button></form>\n</body></html>\n"
    );
    Html(html).into_response()
}

/// `POST /u/{token}`, body `List-Unsubscribe=One-Click` (RFC 8058 section 3.2).
pub async fn one_click(
    State(s): State<ApiState>,
    Path(token): Path<String>,
    headers: HeaderMap,
    body: String,
) -> Response {
    let claims = match claims(&s, &token) {
        Ok(c) => c,
        Err(r) => return *r,
    };
    let form = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_none_or(|v| {
            v.starts_with("application/x-www-form-urlencoded") || v.starts_with("multipart/")
        });
    let one_click = body
        .split('&')
        .any(|kv| kv.trim() == "List-Unsubscribe=One-Click")
        || body.contains("List-Unsubscribe=One-Click");
    if !form || !one_click {
        return text(
            StatusCode::BAD_REQUEST,
            "expected the form body List-Unsubscribe=One-Click (RFC 8058)\n",
        );
    }
    let class = claims
        .scope
        .strip_prefix("class:")
        .unwrap_or_default()
        .to_string();
    let mut e = Event::new(EventKind::Unsubscribed {
        via: "one-click".to_string(),
        scope: claims.tenant.clone().unwrap_or_else(|| "*".to_string()),
        list: claims.scope.clone(),
    });
    e.recipient = claims.address.clone();
    e.tenant = claims.tenant.clone().unwrap_or_default();
    e.campaign = claims.campaign.clone().unwrap_or_default();
    e.class = class;
    let seq = s.bus.publish(e);
    if tokio::time::timeout(DURABLE_WAIT, s.bus.wait_durable(seq))
        .await
        .is_err()
    {
        tracing::error!(
            "unsubscribe published but not durable after {DURABLE_WAIT:?}; the suppression store or send log is stuck"
        );
        return text(
            StatusCode::SERVICE_UNAVAILABLE,
            "your request was received but could not be confirmed yet; please try again\n",
        );
    }
    text(StatusCode::OK, "You are unsubscribed.\n")
}
