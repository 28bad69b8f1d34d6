//! `POST /api/v1/bounces/classify`: what a returned mail is (DSN, ARF, auto-reply, not a
//! bounce) and the category of each recipient — the same JSON as `gannet bounce classify
//! --json FILE`, from the same code (`bounce::report`).
//!
//! Reads nothing but the request body (the raw message, any content type) and changes no state:
//! it never correlates, publishes or suppresses (the inbound listener does that for real
//! reports). Scope `suppression`.

use axum::Json;
use axum::body::Bytes;
use axum::extract::{ConnectInfo, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::IntoResponse;
use std::net::SocketAddr;

use super::{ApiError, ApiState, authorize};
use crate::bounce::report::MAX_REPORT_SIZE;

/// Largest body accepted (a bounce with its returned message is far smaller).
pub const MAX_BODY: usize = MAX_REPORT_SIZE;

#[utoipa::path(post, path = "/api/v1/bounces/classify", tag = "suppression",
    request_body(content = String, description = "The raw returned message (RFC 5322); any content type", content_type = "text/plain"),
    responses((status = 200, description = "What the mail is, each recipient's status and category", body = Object),
        (status = 400, description = "Bad request (names the field)", body = crate::http::openapi::ErrorResponse),
        (status = 401, description = "No or unknown token", body = crate::http::openapi::ErrorResponse),
        (status = 403, description = "Token lacks the scope, or not loopback", body = crate::http::openapi::ErrorResponse),
        (status = 429, description = "Token over its rate (Retry-After)", body = crate::http::openapi::ErrorResponse)))]
pub async fn classify(
    State(s): State<ApiState>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    headers: HeaderMap,
    body: Bytes,
) -> Result<impl IntoResponse, ApiError> {
    authorize(&s.config, &headers, peer, "suppression")?;
    if body.is_empty() {
        return Err(ApiError {
            status: StatusCode::BAD_REQUEST,
            code: "invalid_request",
            message: "the request body is empty: send the raw message (RFC 5322), e.g. curl --data-binary @bounce.eml".to_string(),
            field: Some("body".to_string()),
        });
    }
    let rules = s.bounce_rules.clone();
    let analysis = tokio::task::spawn_blocking(move || rules.analyse(&body))
        .await
        .map_err(|e| {
            ApiError::new(
                StatusCode::INTERNAL_SERVER_ERROR,
                "internal",
                format!("classifying the message failed: {e}"),
            )
        })?;
    Ok(Json(analysis))
}
