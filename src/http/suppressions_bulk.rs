//! Bulk import and export of the suppression list (scope `suppression`), streamed both ways:
//! `POST /api/v1/suppressions/import` and `GET /api/v1/suppressions/export`, as CSV or JSONL
//! (line formats: `suppression::transfer`).
//!
//! Import is line by line, not all-or-nothing: every good line is imported, every bad line is
//! reported with its line number and what is wrong, and nothing else is lost. Entries are
//! written in batches of [`BATCH`] on a blocking thread while the body is still arriving, so
//! memory stays flat for a file of any size; the list is flushed once at the end. An entry
//! that exists (same address, tenant and stream) is replaced by the imported line, so
//! importing an export restores it and importing a file twice changes nothing. One
//! `suppression_changed` event (`change` = `imported`, `entries` = the count) records the
//! import and who made it.
//!
//! Owns only the HTTP shape; never decides policy.

use axum::body::Body;
use axum::extract::{Query, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use futures::StreamExt;
use serde::Deserialize;
use serde_json::{Value, json};

use super::suppressions::{SuppressionUser, store, store_error};
use super::{ApiError, ApiState, bad_request};
use crate::events::{Event, EventKind};
use crate::suppression::transfer::{self, Format, Line, LineReader, Lines};
use crate::suppression::{Entry, ListFilter, SharedStore};

/// Entries written per store batch (one `apply_batch`).
pub const BATCH: usize = 10_000;
/// Longest import line; a longer one is reported as bad and skipped.
pub const MAX_LINE: usize = 4096;
/// Bad lines listed in the answer (all are counted).
pub const MAX_LISTED_ERRORS: usize = 100;
/// Entries read from the store per export chunk.
const EXPORT_CHUNK: usize = 5_000;

#[derive(Debug, Deserialize, Default, utoipa::IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct ImportQuery {
    pub(crate) format: Option<String>,
}

/// The format from `?format=`, else the Content-Type (`text/csv`, `application/x-ndjson`,
/// `application/jsonl`).
fn import_format(q: &ImportQuery, headers: &HeaderMap) -> Result<Format, ApiError> {
    if let Some(f) = &q.format {
        return Format::from_name(f)
            .ok_or_else(|| bad_request(format!("format={f:?}: use csv or jsonl"), "format"));
    }
    let ctype = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
        .to_ascii_lowercase();
    if ctype.starts_with("text/csv") {
        Ok(Format::Csv)
    } else if ctype.contains("ndjson") || ctype.contains("jsonl") || ctype.contains("json-lines") {
        Ok(Format::Jsonl)
    } else {
        Err(bad_request(
            format!(
                "cannot tell the import format from Content-Type {ctype:?}: send text/csv or application/x-ndjson, or add ?format=csv|jsonl"
            ),
            "format",
        ))
    }
}

/// What an import did so far.
#[derive(Default)]
struct Tally {
    lines: u64,
    imported: u64,
    created: u64,
    rejected: u64,
    errors: Vec<Value>,
}

impl Tally {
    fn reject(&mut self, line: u64, message: String) {
        self.rejected += 1;
        if self.errors.len() < MAX_LISTED_ERRORS {
            self.errors.push(json!({"line": line, "message": message}));
        }
    }

    fn json(&self) -> Value {
        json!({
            "lines": self.lines, "imported": self.imported, "created": self.created,
            "rejected": self.rejected, "errors": self.errors,
            "errors_truncated": self.rejected > self.errors.len() as u64,
        })
    }
}

async fn write(store: &SharedStore, batch: Vec<Entry>) -> Result<usize, ApiError> {
    let store = store.clone();
    tokio::task::spawn_blocking(move || store.add_many(&batch))
        .await
        .map_err(|e| ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, "internal", e.to_string()))?
        .map_err(store_error)
}

/// `POST /api/v1/suppressions/import?format=csv|jsonl`, the file as the body →
/// `{"lines", "imported", "created", "rejected", "errors": [{"line", "message"}],
/// "errors_truncated"}`: 200 when every line was imported; 422 with the same fields and an
/// `error` naming the first bad line when some were not (the good ones are imported).
#[utoipa::path(post, path = "/api/v1/suppressions/import", tag = "suppression", params(ImportQuery),
    request_body(content = String, content_type = "text/plain",
        description = "CSV or JSONL lines; the format from ?format=csv|jsonl, else the Content-Type (text/csv, application/x-ndjson, application/jsonl)"),
    responses((status = 200, description = "Every line imported: `{\"lines\", \"imported\", \"created\", \"rejected\", \"errors\", \"errors_truncated\"}`", body = Object),
        (status = 422, description = "Some lines were not imported (the good ones were): the same fields and an `error` naming the first bad line", body = Object),
        (status = 400, description = "Bad request (names the field)", body = crate::http::openapi::ErrorResponse),
        (status = 401, description = "No or unknown token", body = crate::http::openapi::ErrorResponse),
        (status = 403, description = "Token lacks the scope, or not loopback", body = crate::http::openapi::ErrorResponse),
        (status = 429, description = "Token over its rate (Retry-After)", body = crate::http::openapi::ErrorResponse)))]
pub async fn import(
    State(s): State<ApiState>,
    who: SuppressionUser,
    headers: HeaderMap,
    q: Result<Query<ImportQuery>, axum::extract::rejection::QueryRejection>,
    body: Body,
) -> Result<Response, ApiError> {
    let Query(q) = q.map_err(|e| bad_request(e.body_text(), "query"))?;
    let format = import_format(&q, &headers)?;
    let store = store(&s)?.clone();
    let mut reader = LineReader::new(format, &who.actor, crate::suppression::policy::now_secs());
    let mut lines = Lines::new(MAX_LINE);
    let mut tally = Tally::default();
    let mut batch: Vec<Entry> = Vec::with_capacity(BATCH);
    let mut pending: Vec<Line> = Vec::new();
    let mut stream = body.into_data_stream();
    let mut finished = false;
    while !finished {
        match stream.next().await {
            Some(Ok(chunk)) => lines.push(&chunk, &mut pending),
            Some(Err(e)) => {
                return Err(stopped(
                    &tally,
                    StatusCode::BAD_REQUEST,
                    format!("the request body broke off: {e}"),
                ));
            }
            None => {
                pending.extend(lines.finish());
                finished = true;
            }
        }
        for line in pending.drain(..) {
            let result = match line {
                Line::Text(t) => reader.read(&t),
                Line::TooLong => {
                    let _ = reader.read(b"");
                    Err(transfer::LineError {
                        line: reader.lines(),
                        message: format!("longer than {MAX_LINE} bytes"),
                    })
                }
            };
            match result {
                Ok(Some(e)) => batch.push(e),
                Ok(None) => {}
                Err(e) => tally.reject(e.line, e.message),
            }
        }
        tally.lines = reader.lines();
        if batch.len() >= BATCH || (finished && !batch.is_empty()) {
            let n = batch.len() as u64;
            let created = write(&store, std::mem::take(&mut batch))
                .await
                .map_err(|e| stopped(&tally, e.status, e.message))?;
            tally.imported += n;
            tally.created += created as u64;
        }
    }
    {
        let store = store.clone();
        tokio::task::spawn_blocking(move || store.flush())
            .await
            .map_err(|e| {
                ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, "internal", e.to_string())
            })?
            .map_err(store_error)?;
    }
    let mut ev = Event::new(EventKind::SuppressionChanged {
        change: "imported".to_string(),
        reason: String::new(),
        scope: String::new(),
        actor: who.actor.clone(),
        expires: 0,
        entries: tally.imported,
    });
    ev.recipient = String::new();
    s.bus.publish(ev);
    let mut answer = tally.json();
    if tally.rejected == 0 {
        return Ok((StatusCode::OK, axum::Json(answer)).into_response());
    }
    let first = tally.errors.first().cloned().unwrap_or(Value::Null);
    answer["error"] = json!({
        "code": "lines_rejected",
        "message": format!(
            "{} of {} lines were not imported (the other lines were); line {}: {}",
            tally.rejected,
            tally.lines,
            first["line"],
            first["message"].as_str().unwrap_or_default()
        ),
        "field": format!("line {}", first["line"]),
    });
    Ok((StatusCode::UNPROCESSABLE_ENTITY, axum::Json(answer)).into_response())
}

/// An import that had to stop: says how far it got, so nothing is silently lost.
fn stopped(t: &Tally, status: StatusCode, why: String) -> ApiError {
    ApiError::new(
        status,
        "import_stopped",
        format!(
            "import stopped after line {}: {why}; {} entries were imported before it and are kept (importing the file again is safe: lines replace their own entries)",
            t.lines, t.imported
        ),
    )
}

/// The end of an export that cannot finish: an error, which makes hyper drop the connection
/// without the chunked body's last chunk, so the client sees a cut-off transfer, never a
/// complete-looking export that is short. What was sent before is let out first: hyper writes
/// what it holds while the body is not ready, and drops it when the body fails.
async fn cut_off(why: String) -> Result<bytes::Bytes, std::io::Error> {
    tokio::task::yield_now().await;
    tokio::time::sleep(CUT_OFF_GRACE).await;
    Err(std::io::Error::other(why))
}

/// How long a failed export waits for what it sent to leave before it cuts the connection.
const CUT_OFF_GRACE: std::time::Duration = std::time::Duration::from_millis(500);

/// Where a streamed export is.
enum Export {
    /// Before the first page; the CSV header line still to send, if any.
    Start(Option<String>),
    /// The cursor of the next page.
    Next(Vec<u8>),
    /// A page could not be read and the reason line was sent: end the body with an error.
    Failed(String),
    Done,
}

#[derive(Debug, Deserialize, Default, utoipa::IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct ExportQuery {
    pub(crate) format: Option<String>,
    #[serde(default)]
    pub(crate) prefix: String,
    #[serde(default)]
    pub(crate) domain: String,
    #[serde(default)]
    pub(crate) reason: String,
    #[serde(default)]
    pub(crate) tenant: String,
}

/// `GET /api/v1/suppressions/export?format=csv|jsonl&prefix=&domain=&reason=&tenant=` →
/// every matching entry, streamed in key order (CSV with a header line). The default format
/// is JSONL, or CSV when the client accepts `text/csv`. An export that cannot finish (the
/// store fails half-way) is cut off: the connection closes without the chunked body's last
/// chunk, so the client sees a broken transfer, not a short list; JSONL first gets a line
/// `{"error": {"code": "export_stopped", "message"}}`.
#[utoipa::path(get, path = "/api/v1/suppressions/export", tag = "suppression", params(ExportQuery),
    responses((status = 200, description = "Every matching entry, streamed in key order",
            content((String = "application/x-ndjson"), (String = "text/csv"))),
        (status = 400, description = "Bad request (names the field)", body = crate::http::openapi::ErrorResponse),
        (status = 401, description = "No or unknown token", body = crate::http::openapi::ErrorResponse),
        (status = 403, description = "Token lacks the scope, or not loopback", body = crate::http::openapi::ErrorResponse),
        (status = 429, description = "Token over its rate (Retry-After)", body = crate::http::openapi::ErrorResponse)))]
pub async fn export(
    State(s): State<ApiState>,
    _who: SuppressionUser,
    headers: HeaderMap,
    q: Result<Query<ExportQuery>, axum::extract::rejection::QueryRejection>,
) -> Result<Response, ApiError> {
    let Query(q) = q.map_err(|e| bad_request(e.body_text(), "query"))?;
    let format = match &q.format {
        Some(f) => Format::from_name(f)
            .ok_or_else(|| bad_request(format!("format={f:?}: use csv or jsonl"), "format"))?,
        None => {
            let accept = headers
                .get(header::ACCEPT)
                .and_then(|v| v.to_str().ok())
                .unwrap_or("");
            if accept.contains("text/csv") {
                Format::Csv
            } else {
                Format::Jsonl
            }
        }
    };
    let store = store(&s)?.clone();
    let filter = ListFilter {
        prefix: q.prefix,
        domain: q.domain,
        reason: q.reason,
        tenant: q.tenant,
    };
    let header_line = (format == Format::Csv).then(transfer::csv_header);
    let stream = futures::stream::unfold(Export::Start(header_line), move |state| {
        let (store, filter) = (store.clone(), filter.clone());
        async move {
            let cursor = match state {
                Export::Start(Some(h)) => {
                    return Some((Ok(bytes::Bytes::from(h)), Export::Start(None)));
                }
                Export::Start(None) => None,
                Export::Next(c) => Some(c),
                Export::Failed(why) => return Some((cut_off(why).await, Export::Done)),
                Export::Done => return None,
            };
            let page = tokio::task::spawn_blocking(move || {
                store.list(&filter, cursor.as_deref(), EXPORT_CHUNK)
            })
            .await;
            let why = match page {
                Ok(Ok(page)) => {
                    let mut out = String::new();
                    for e in &page.entries {
                        out.push_str(&transfer::render(format, e));
                    }
                    let next = page.next.map_or(Export::Done, Export::Next);
                    return Some((Ok(bytes::Bytes::from(out)), next));
                }
                Ok(Err(e)) => e.to_string(),
                Err(e) => format!("export task failed: {e}"),
            };
            tracing::error!(error = %why, "suppression export stopped; the response is cut off");
            match format {
                // A last line that says why, for readers that look at what arrived.
                Format::Jsonl => {
                    let line = json!({"error": {"code": "export_stopped", "message": format!(
                        "the export stopped before its end: {why}; what came before this line is incomplete"
                    )}});
                    Some((
                        Ok(bytes::Bytes::from(format!("{line}\n"))),
                        Export::Failed(why),
                    ))
                }
                Format::Csv => Some((cut_off(why).await, Export::Done)),
            }
        }
    });
    Ok((
        [(header::CONTENT_TYPE, format.content_type())],
        Body::from_stream(stream),
    )
        .into_response())
}
