//! The OpenAPI 3.1 description of the HTTP API, served at `GET /api/v1/openapi.json`.
//!
//! Owns: the `ApiDoc` list of operations and the shared pieces (the bearer scheme, the error
//! body `ErrorResponse`). Each operation is declared with `#[utoipa::path]` on its handler and
//! its request and answer types derive `ToSchema` / `IntoParams` where they are defined, so the
//! document follows the code; answers the handlers build as free-form JSON are described as
//! objects. The e2e test `openapi` checks that every documented operation is routed (no stale
//! entry) and runs schemathesis against a live instance.
//! Never: handles requests other than serving the document.

use axum::Json;
use axum::response::IntoResponse;
use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityScheme};
use utoipa::{Modify, OpenApi, ToSchema};

/// Every error answer: `{"error": {"code", "message", "field"}}`.
#[derive(ToSchema)]
#[allow(dead_code)] // a description of the JSON `ApiError` writes, never built
pub struct ErrorResponse {
    error: ErrorDetail,
}

#[derive(ToSchema)]
#[allow(dead_code)]
pub struct ErrorDetail {
    /// Machine-readable code (`invalid_json`, `unauthorized`, `rate_limited`, ...).
    code: String,
    /// What went wrong, for a person.
    message: String,
    /// The field, header or parameter at fault (`recipients[3].email`), or null.
    field: Option<String>,
}

struct Bearer;

impl Modify for Bearer {
    fn modify(&self, doc: &mut utoipa::openapi::OpenApi) {
        let c = doc.components.get_or_insert_with(Default::default);
        c.add_security_scheme(
            "bearer",
            SecurityScheme::Http(
                HttpBuilder::new()
                    .scheme(HttpAuthScheme::Bearer)
                    .description(Some(
                        "An [[api_token]] (its SHA-256 is in the config); with no tokens configured, loopback clients only",
                    ))
                    .build(),
            ),
        );
    }
}

#[derive(OpenApi)]
#[openapi(
    info(
        title = "Gannet HTTP API",
        description = "Injection of personalised batches, queue control, the send log, suppression and bounces. Errors are {\"error\": {\"code\", \"message\", \"field\"}}."
    ),
    paths(
        openapi_json,
        super::health,
        super::metrics,
        super::inject::post_messages,
        super::queues,
        super::flush,
        super::suspend,
        super::resume,
        super::purge,
        super::suspensions,
        super::domain_check,
        super::logs::events,
        super::logs::message,
        super::logs::campaign_stats,
        super::logs::erase,
        super::logs::subject,
        super::suppressions::list,
        super::suppressions::add,
        super::suppressions::get_one,
        super::suppressions::remove,
        super::suppressions_bulk::import,
        super::suppressions_bulk::export,
        super::bounces::classify,
    ),
    components(schemas(ErrorResponse, ErrorDetail)),
    modifiers(&Bearer),
    security(("bearer" = []))
)]
pub struct ApiDoc;

/// `GET /api/v1/openapi.json`: this document.
#[utoipa::path(
    get,
    path = "/api/v1/openapi.json",
    tag = "meta",
    security(()),
    responses((status = 200, description = "The OpenAPI 3.1 document of this API", body = Object))
)]
pub async fn openapi_json() -> impl IntoResponse {
    Json(ApiDoc::openapi())
}
