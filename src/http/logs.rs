//! Send-log endpoints (scope `logs`): event search with cursor paging and streamed CSV/NDJSON
//! export, the story of one message, and campaign statistics.
//!
//! Owns: parsing query parameters into an `EventFilter`, choosing the format from `Accept`,
//! and recording every query as a `log_access` event (who looked up whom, when).
//! Never does: SQL or decryption (that is `sendlog/`), or anything outside the send log.

use axum::body::Body;
use axum::extract::rejection::QueryRejection;
use axum::extract::{FromRequestParts, Path, Query, State};
use axum::http::request::Parts;
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde::Deserialize;
use serde_json::{Value, json};

use super::{ApiError, ApiState, authorize_actor, bad_request};
use crate::sendlog::{EventFilter, SendLog, SendLogError, render};

/// Most events in one JSON page.
const MAX_PAGE: usize = 1000;
/// Rows fetched per database read while streaming an export.
const STREAM_CHUNK: usize = crate::sendlog::export::CHUNK_ROWS;

/// Extractor for the `logs` scope; carries who is asking (token name, or `loopback`).
pub struct LogsReader {
    pub actor: String,
}

impl FromRequestParts<ApiState> for LogsReader {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, s: &ApiState) -> Result<Self, ApiError> {
        let peer = super::peer(parts)?;
        let actor = authorize_actor(&s.config, &parts.headers, peer, "logs")?;
        Ok(LogsReader { actor })
    }
}

fn sendlog(s: &ApiState) -> Result<&SendLog, ApiError> {
    s.sendlog.as_ref().ok_or_else(|| {
        ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "sendlog_disabled",
            "the send log is turned off ([sendlog] enabled = false)",
        )
    })
}

fn store_error(e: SendLogError) -> ApiError {
    tracing::error!(error = %e, "send-log query failed");
    ApiError::new(
        StatusCode::INTERNAL_SERVER_ERROR,
        "sendlog_error",
        e.to_string(),
    )
}

fn spool_erasure_error(message: String) -> ApiError {
    tracing::error!(error = %message, "erasure: the spool records could not be shredded; the person is suppressed and their queued mail dropped, their send-log key is kept");
    ApiError::new(
        StatusCode::INTERNAL_SERVER_ERROR,
        "spool_error",
        format!("{message} (the erasure is not complete; retry it)"),
    )
}

fn suppression_error(message: String) -> ApiError {
    tracing::error!(error = %message, "erasure: the suppression entry could not be written; nothing else was changed");
    ApiError::new(
        StatusCode::INTERNAL_SERVER_ERROR,
        "suppression_error",
        format!("{message} (the erasure was not done; retry it)"),
    )
}

/// Query parameters of `GET /api/v1/events`.
#[derive(Debug, Default, Deserialize, utoipa::IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct EventsQuery {
    pub recipient: Option<String>,
    pub message_id: Option<String>,
    pub queue_id: Option<String>,
    pub campaign: Option<String>,
    pub tenant: Option<String>,
    #[serde(rename = "type")]
    #[param(rename = "type")]
    pub kind: Option<String>,
    pub since: Option<String>,
    pub until: Option<String>,
    pub cursor: Option<String>,
    pub limit: Option<usize>,
    /// `json`, `csv` or `ndjson`: overrides `Accept`.
    pub format: Option<String>,
}

impl EventsQuery {
    fn filter(&self) -> Result<EventFilter, ApiError> {
        let nonempty = |v: &Option<String>| v.clone().filter(|s| !s.trim().is_empty());
        let time = |v: &Option<String>, field: &str| -> Result<Option<i64>, ApiError> {
            match nonempty(v) {
                None => Ok(None),
                Some(t) => crate::sendlog::parse_time(&t).map(Some).ok_or_else(|| {
                    bad_request(
                        format!("{field}={t:?} is not a time: use RFC 3339 (2026-12-03T10:00:00Z), a date (2026-12-03) or Unix seconds"),
                        field,
                    )
                }),
            }
        };
        let after = match nonempty(&self.cursor) {
            None => 0,
            Some(c) => c.parse::<u64>().map_err(|_| {
                bad_request(
                    format!(
                        "cursor={c:?} is not a cursor: pass the \"next\" value of the previous page"
                    ),
                    "cursor",
                )
            })?,
        };
        let limit = self.limit.unwrap_or(100);
        if limit == 0 || limit > MAX_PAGE {
            return Err(bad_request(
                format!("limit={limit} is out of range: 1 to {MAX_PAGE}"),
                "limit",
            ));
        }
        if let Some(k) = nonempty(&self.kind)
            && !k.chars().all(|c| c.is_ascii_lowercase() || c == '_')
        {
            return Err(bad_request(
                format!("type={k:?} is not an event type (e.g. delivered, bounced)"),
                "type",
            ));
        }
        Ok(EventFilter {
            recipient: nonempty(&self.recipient),
            message_id: nonempty(&self.message_id),
            queue_id: nonempty(&self.queue_id),
            campaign: nonempty(&self.campaign),
            tenant: nonempty(&self.tenant),
            kind: nonempty(&self.kind),
            since_us: time(&self.since, "since")?,
            until_us: time(&self.until, "until")?,
            after,
            through: None,
            limit,
        })
    }
}

/// The filter as recorded in the `log_access` event (without the recipient, which the event
/// carries in its own, sealed, field).
fn filter_json(f: &EventFilter) -> Value {
    json!({
        "message_id": f.message_id, "queue_id": f.queue_id, "campaign": f.campaign,
        "tenant": f.tenant, "type": f.kind, "since_us": f.since_us, "until_us": f.until_us,
        "cursor": f.after, "by_recipient": f.recipient.is_some(),
    })
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Format {
    Json,
    Csv,
    Ndjson,
}

fn format_of(q: &EventsQuery, headers: &HeaderMap) -> Result<Format, ApiError> {
    if let Some(f) = &q.format {
        return match f.as_str() {
            "json" => Ok(Format::Json),
            "csv" => Ok(Format::Csv),
            "ndjson" => Ok(Format::Ndjson),
            other => Err(bad_request(
                format!("format={other:?}: use json, csv or ndjson"),
                "format",
            )),
        };
    }
    let accept = headers
        .get(header::ACCEPT)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    Ok(if accept.contains("text/csv") {
        Format::Csv
    } else if accept.contains("application/x-ndjson") {
        Format::Ndjson
    } else {
        Format::Json
    })
}

/// One page of a search (events and the cursor of the next page), recorded as `log_access`
/// by `actor`: the path of `GET /api/v1/events` and of the console's search.
pub async fn search_page(
    s: &ApiState,
    actor: &str,
    q: &EventsQuery,
) -> Result<(Vec<Value>, Option<String>), ApiError> {
    let log = sendlog(s)?.clone();
    let filter = q.filter()?;
    let f = filter.clone();
    let rows = log.read(move |r| r.events(&f)).await.map_err(store_error)?;
    let next = (rows.len() == filter.limit)
        .then(|| rows.last().and_then(|e| e["seq"].as_u64()))
        .flatten()
        .map(|n| n.to_string());
    log.record_access(
        actor,
        "events",
        filter.recipient.as_deref(),
        filter_json(&filter),
        "json",
        rows.len() as u64,
    );
    Ok((rows, next))
}

/// `GET /api/v1/events`
#[utoipa::path(get, path = "/api/v1/events", tag = "logs", params(EventsQuery),
    responses((status = 200, description = "`{\"events\": [...], \"next\": cursor}`, or CSV / NDJSON of every match (Accept or format)",
            content((Object = "application/json"), (String = "text/csv"), (String = "application/x-ndjson"))),
        (status = 503, description = "The send log is turned off", body = crate::http::openapi::ErrorResponse),
        (status = 400, description = "Bad request (names the field)", body = crate::http::openapi::ErrorResponse),
        (status = 401, description = "No or unknown token", body = crate::http::openapi::ErrorResponse),
        (status = 403, description = "Token lacks the scope, or not loopback", body = crate::http::openapi::ErrorResponse),
        (status = 429, description = "Token over its rate (Retry-After)", body = crate::http::openapi::ErrorResponse)))]
pub async fn events(
    State(s): State<ApiState>,
    who: LogsReader,
    headers: HeaderMap,
    q: Result<Query<EventsQuery>, QueryRejection>,
) -> Result<Response, ApiError> {
    let Query(q) = q.map_err(|e| bad_request(e.body_text(), "query"))?;
    let format = format_of(&q, &headers)?;
    if format == Format::Json {
        let (rows, next) = search_page(&s, &who.actor, &q).await?;
        return Ok(axum::Json(json!({"events": rows, "next": next})).into_response());
    }
    let log = sendlog(&s)?.clone();
    let filter = q.filter()?;
    // Streamed export: every matching row up to the end of the log as it is now, read in
    // chunks so memory stays flat however large the export is.
    let through = log.read(|r| r.last_seq()).await.map_err(store_error)?;
    let (name, ctype) = match format {
        Format::Csv => ("csv", "text/csv; charset=utf-8"),
        _ => ("ndjson", "application/x-ndjson"),
    };
    log.record_access(
        &who.actor,
        "events",
        filter.recipient.as_deref(),
        filter_json(&filter),
        name,
        0,
    );
    let start = EventFilter {
        through: Some(through),
        limit: STREAM_CHUNK,
        ..filter
    };
    let header_line = (format == Format::Csv).then(render::csv_header);
    let stream = futures::stream::unfold(
        (Some(start), header_line, log),
        move |(state, header_line, log)| async move {
            if let Some(h) = header_line {
                return Some((Ok(bytes::Bytes::from(h)), (state, None, log)));
            }
            let f = state?;
            let q = f.clone();
            // The log was caught up when `through` was read: later chunks need not wait.
            let chunk = log
                .read_ingested(move |r| {
                    if format == Format::Csv {
                        // Written straight from the stored columns (sendlog::export).
                        let mut out = Vec::with_capacity(q.limit * 320);
                        let c = r.export_csv(&q, &mut out)?;
                        return Ok((out, c.rows, c.last_seq));
                    }
                    let rows = r.events(&q)?;
                    let last = rows.last().and_then(|e| e["seq"].as_u64()).unwrap_or(0);
                    let mut out = Vec::new();
                    for e in &rows {
                        out.extend_from_slice(render::ndjson_row(e).as_bytes());
                    }
                    Ok((out, rows.len(), last))
                })
                .await;
            match chunk {
                Err(e) => {
                    tracing::error!(error = %e, "send-log export stopped");
                    Some((Err(std::io::Error::other(e.to_string())), (None, None, log)))
                }
                Ok((_, 0, _)) => None,
                Ok((out, rows, last)) => {
                    let next = (rows == f.limit).then_some(EventFilter { after: last, ..f });
                    Some((Ok(bytes::Bytes::from(out)), (next, None, log)))
                }
            }
        },
    );
    Ok(([(header::CONTENT_TYPE, ctype)], Body::from_stream(stream)).into_response())
}

/// `GET /api/v1/messages/{id}`: every event of one message (by Message-ID or queue id),
/// grouped by recipient, with attempts, IPs and replies.
#[utoipa::path(get, path = "/api/v1/messages/{id}", tag = "logs",
    params(("id" = String, Path, description = "Message-ID or queue id")),
    responses((status = 200, description = "The story of one message", body = Object),
        (status = 404, description = "No such message in the send log", body = crate::http::openapi::ErrorResponse),
        (status = 503, description = "The send log is turned off", body = crate::http::openapi::ErrorResponse),
        (status = 400, description = "Bad request (names the field)", body = crate::http::openapi::ErrorResponse),
        (status = 401, description = "No or unknown token", body = crate::http::openapi::ErrorResponse),
        (status = 403, description = "Token lacks the scope, or not loopback", body = crate::http::openapi::ErrorResponse),
        (status = 429, description = "Token over its rate (Retry-After)", body = crate::http::openapi::ErrorResponse)))]
pub async fn message(
    State(s): State<ApiState>,
    who: LogsReader,
    Path(id): Path<String>,
) -> Result<Response, ApiError> {
    Ok(axum::Json(story(&s, &who.actor, &id).await?).into_response())
}

/// The story of message `id` (Message-ID or queue id), recorded as `log_access` by `actor`:
/// the path of `GET /api/v1/messages/{id}` and of the console's story page.
pub async fn story(s: &ApiState, actor: &str, id: &str) -> Result<Value, ApiError> {
    let id = id.to_string();
    let log = sendlog(s)?.clone();
    let f = EventFilter {
        message_id: Some(id.clone()),
        limit: 100_000,
        ..EventFilter::default()
    };
    let rows = log.read(move |r| r.events(&f)).await.map_err(store_error)?;
    log.record_access(
        actor,
        "message",
        None,
        json!({"message_id": id}),
        "json",
        rows.len() as u64,
    );
    if rows.is_empty() {
        return Err(ApiError {
            status: StatusCode::NOT_FOUND,
            code: "not_found",
            message: format!(
                "no event in the send log for message {id:?} (a Message-ID or a queue id)"
            ),
            field: Some("id".into()),
        });
    }
    Ok(message_story(&id, rows))
}

/// The story of a message from its events (in log order).
pub fn message_story(id: &str, rows: Vec<Value>) -> Value {
    let mut queue_ids: Vec<String> = Vec::new();
    let mut message_id = String::new();
    let mut recipients: Vec<(String, Vec<Value>)> = Vec::new();
    for e in &rows {
        let qid = e["queue_id"].as_str().unwrap_or("").to_string();
        if !qid.is_empty() && !queue_ids.contains(&qid) {
            queue_ids.push(qid);
        }
        if message_id.is_empty() {
            message_id = e["message_id"].as_str().unwrap_or("").to_string();
        }
        let r = e["recipient"].as_str().unwrap_or("");
        if r.is_empty() {
            continue;
        }
        match recipients.iter_mut().find(|(a, _)| a == r) {
            Some((_, evs)) => evs.push(e.clone()),
            None => recipients.push((r.to_string(), vec![e.clone()])),
        }
    }
    let recipients: Vec<Value> = recipients
        .into_iter()
        .map(|(r, evs)| {
            let last = evs.last().cloned().unwrap_or(Value::Null);
            json!({
                "recipient": r,
                "state": last["type"],
                "attempts": evs.iter().filter(|e| e["attempt"].as_u64().unwrap_or(0) > 0).count(),
                "events": evs,
            })
        })
        .collect();
    json!({
        "id": id,
        "message_id": message_id,
        "queue_ids": queue_ids,
        "recipients": recipients,
        "events": rows,
    })
}

/// `GET /api/v1/campaigns/{campaign}/stats`
#[utoipa::path(get, path = "/api/v1/campaigns/{campaign}/stats", tag = "logs",
    params(("campaign" = String, Path)),
    responses((status = 200, description = "Counts by variant and provider", body = Object),
        (status = 503, description = "The send log is turned off", body = crate::http::openapi::ErrorResponse),
        (status = 400, description = "Bad request (names the field)", body = crate::http::openapi::ErrorResponse),
        (status = 401, description = "No or unknown token", body = crate::http::openapi::ErrorResponse),
        (status = 403, description = "Token lacks the scope, or not loopback", body = crate::http::openapi::ErrorResponse),
        (status = 429, description = "Token over its rate (Retry-After)", body = crate::http::openapi::ErrorResponse)))]
pub async fn campaign_stats(
    State(s): State<ApiState>,
    who: LogsReader,
    Path(campaign): Path<String>,
) -> Result<impl IntoResponse, ApiError> {
    let log = sendlog(&s)?.clone();
    let c = campaign.clone();
    let rows = log
        .read(move |r| r.campaign_counts(&c))
        .await
        .map_err(store_error)?;
    log.record_access(
        &who.actor,
        "campaign_stats",
        None,
        json!({"campaign": campaign}),
        "json",
        rows.len() as u64,
    );
    Ok(axum::Json(render::campaign_stats(&campaign, &rows)))
}

/// Body of `POST /api/v1/erasures`.
#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ErasureRequest {
    pub address: String,
}

fn address_ok(a: &str) -> bool {
    let a = a.trim();
    a.len() <= 320 && a.contains('@') && !a.starts_with('@') && !a.ends_with('@')
}

/// `POST /api/v1/erasures` (scope admin): suppress the person by keyed hash (their clear
/// suppression entries go), drop their queued mail (recorded as `purged`), crypto-shred their
/// send-log rows, and record the erasure without the address.
#[utoipa::path(post, path = "/api/v1/erasures", tag = "logs", request_body = ErasureRequest,
    responses((status = 200, description = "`{\"erased\": {\"subject\", \"send_log_rows\"}}`", body = Object),
        (status = 503, description = "The send log is turned off", body = crate::http::openapi::ErrorResponse),
        (status = 400, description = "Bad request (names the field)", body = crate::http::openapi::ErrorResponse),
        (status = 401, description = "No or unknown token", body = crate::http::openapi::ErrorResponse),
        (status = 403, description = "Token lacks the scope, or not loopback", body = crate::http::openapi::ErrorResponse),
        (status = 429, description = "Token over its rate (Retry-After)", body = crate::http::openapi::ErrorResponse)))]
pub async fn erase(
    State(s): State<ApiState>,
    super::Admin { actor }: super::Admin,
    body: Result<axum::Json<ErasureRequest>, axum::extract::rejection::JsonRejection>,
) -> Result<impl IntoResponse, ApiError> {
    let axum::Json(req) = body.map_err(|e| bad_request(e.body_text(), "address"))?;
    Ok((
        StatusCode::OK,
        axum::Json(erase_person(&s, &actor, &req.address).await?),
    ))
}

/// The steps of an erasure in the order they run, each named by the key of its count in the
/// answer of [`erase_person`]; [`erase_person_with`] reports each as it finishes (the
/// outbox's, when shipping reads the send log's journal, with the send log's: the send log's
/// erasure overwrites the journal's lines).
pub const ERASURE_STEPS: [&str; 6] = [
    "suppression_entries_removed",
    "queued_recipients_dropped",
    "spool_records_shredded",
    "outbox_events_shredded",
    "idempotent_answers_shredded",
    "send_log_rows",
];

/// Erase a person (the steps of `POST /api/v1/erasures`, which the console's confirmed
/// four-eyes request runs too): `{"erased": {"subject", "send_log_rows",
/// "queued_recipients_dropped", "suppression_entries_removed", "spool_records_shredded",
/// "outbox_events_shredded", "idempotent_answers_shredded"}}`.
pub async fn erase_person(s: &ApiState, actor: &str, address: &str) -> Result<Value, ApiError> {
    erase_person_with(s, actor, address, &|_, _| {}).await
}

/// [`erase_person`], calling `done(step, count)` after each of [`ERASURE_STEPS`] (the
/// console's progress page). A step that does not apply (no outbox, no idempotency store)
/// reports 0.
pub async fn erase_person_with(
    s: &ApiState,
    actor: &str,
    address: &str,
    done: &(dyn Fn(&'static str, u64) + Send + Sync),
) -> Result<Value, ApiError> {
    let req = ErasureRequest {
        address: address.to_string(),
    };
    if !address_ok(&req.address) {
        return Err(bad_request(
            format!("{:?} is not an email address", req.address),
            "address",
        ));
    }
    let log = sendlog(s)?.clone();
    let hash = log.address_hash(&req.address);
    let needle = crate::sendlog::erasure_needle(&req.address);
    // Shipping's own outbox writes lines naming them shredded from now on (the send log's
    // journal does from its erase below, before its pass over what is written).
    if let Some(outbox) = &s.outbox {
        outbox.shred_arriving(&needle, crate::sendlog::ERASURE_WINDOW);
    }
    // First the suppression (keyed by hash only), so nothing new is accepted for them; then
    // their queued mail; then their key, so the purges just recorded are shredded with the rest.
    let mut suppression_entries_removed = 0;
    if let Some(store) = s.suppressions.clone() {
        let a = req.address.clone();
        let now = crate::suppression::policy::now_secs();
        suppression_entries_removed = tokio::task::spawn_blocking(move || store.erase(&a, now))
            .await
            .map_err(|e| suppression_error(format!("suppression task failed: {e}")))?
            .map_err(|e| suppression_error(e.to_string()))?;
    }
    done(ERASURE_STEPS[0], suppression_entries_removed as u64);
    let queued = s.queue.purge_recipient(&req.address, actor).await;
    done(ERASURE_STEPS[1], queued as u64);
    // Then the spool records only they were owed (and finished ones naming them) lose their
    // key: their envelope and body can no longer be opened (crypto-shredding in place).
    let spool = s.queue.spool().clone();
    let a = req.address.clone();
    let spool_records_shredded = tokio::task::spawn_blocking(move || spool.shred_recipient(&a))
        .await
        .map_err(|e| spool_erasure_error(format!("spool erasure task failed: {e}")))?
        .map_err(|e| spool_erasure_error(e.to_string()))?;
    done(ERASURE_STEPS[2], spool_records_shredded as u64);
    // The outbox of event shipping: once it holds every event published so far (the
    // purges above included), the person's lines no destination has taken yet are
    // overwritten in place.
    // (When they read the send log's journal, its erasure below overwrites their lines
    // there, and this step is reported with it.)
    let mut outbox_events_shredded = 0;
    if let Some(outbox) = s.outbox.clone() {
        s.bus.wait_durable(s.bus.last_seq()).await;
        let needle = needle.clone();
        outbox_events_shredded += tokio::task::spawn_blocking(move || outbox.shred(&needle))
            .await
            .map_err(|e| spool_erasure_error(format!("outbox erasure task failed: {e}")))?
            .map_err(|e| spool_erasure_error(format!("outbox erasure: {e}")))?
            as u64;
    }
    if !s.ship_reads_journal {
        done(ERASURE_STEPS[3], outbox_events_shredded);
    }
    // Answers to keyed injections that list them.
    let mut idempotent_answers_shredded = 0;
    if let Some(store) = s.idempotency.clone() {
        let needle = needle.clone();
        idempotent_answers_shredded = tokio::task::spawn_blocking(move || store.shred(&needle))
            .await
            .map_err(|e| spool_erasure_error(format!("idempotency erasure task failed: {e}")))?
            .map_err(|e| spool_erasure_error(format!("idempotency erasure: {e}")))?;
    }
    done(ERASURE_STEPS[4], idempotent_answers_shredded as u64);
    let erased = log.erase(&req.address, actor).await.map_err(store_error)?;
    let rows = erased.rows;
    if s.ship_reads_journal {
        outbox_events_shredded += erased.journal_lines;
        done(ERASURE_STEPS[3], outbox_events_shredded);
    }
    done(ERASURE_STEPS[5], rows);
    Ok(json!({"erased": {
        "idempotent_answers_shredded": idempotent_answers_shredded,
        "outbox_events_shredded": outbox_events_shredded,
        "subject": hex::encode(hash),
        "send_log_rows": rows,
        "queued_recipients_dropped": queued,
        "spool_records_shredded": spool_records_shredded,
        "suppression_entries_removed": suppression_entries_removed,
    }}))
}

/// `format` of `GET /api/v1/subjects/{address}`.
#[derive(Debug, Default, Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
pub struct SubjectQuery {
    /// `json` (default) or `csv` (one row per message, [`SUBJECT_CSV_COLUMNS`]).
    #[serde(default)]
    pub format: Option<String>,
}

/// `GET /api/v1/subjects/{address}` (scope logs): everything the send log holds about a
/// person (GDPR Art. 15), with retention and purposes; `format=csv` gives the messages as CSV.
#[utoipa::path(get, path = "/api/v1/subjects/{address}", tag = "logs",
    params(("address" = String, Path, description = "An email address"), SubjectQuery),
    responses((status = 200, description = "Everything the send log holds about the person (JSON), or one CSV row per message",
            content((Object = "application/json"), (String = "text/csv"))),
        (status = 503, description = "The send log is turned off", body = crate::http::openapi::ErrorResponse),
        (status = 400, description = "Bad request (names the field)", body = crate::http::openapi::ErrorResponse),
        (status = 401, description = "No or unknown token", body = crate::http::openapi::ErrorResponse),
        (status = 403, description = "Token lacks the scope, or not loopback", body = crate::http::openapi::ErrorResponse),
        (status = 429, description = "Token over its rate (Retry-After)", body = crate::http::openapi::ErrorResponse)))]
pub async fn subject(
    State(s): State<ApiState>,
    who: LogsReader,
    Path(address): Path<String>,
    q: Result<Query<SubjectQuery>, QueryRejection>,
) -> Result<Response, ApiError> {
    let Query(q) = q.map_err(|e| bad_request(e.body_text(), "format"))?;
    match q.format.as_deref().unwrap_or("json") {
        "json" => {
            Ok(axum::Json(subject_report(&s, &who.actor, &address, "json").await?).into_response())
        }
        "csv" => {
            let v = subject_report(&s, &who.actor, &address, "csv").await?;
            Ok((
                [(header::CONTENT_TYPE, "text/csv; charset=utf-8")],
                subject_csv(&v)?,
            )
                .into_response())
        }
        other => Err(bad_request(
            format!("format={other:?}: use json or csv"),
            "format",
        )),
    }
}

/// The columns of the access export as CSV: one row per message sent to the person, the
/// same fields as the JSON's `messages` (plus the address, and the purposes and retention
/// from config on every row so that each row stands alone).
pub const SUBJECT_CSV_COLUMNS: [&str; 14] = [
    "address",
    "queue_id",
    "message_id",
    "campaign",
    "tenant",
    "first_time_us",
    "outcome",
    "provider",
    "mx_host",
    "remote_ip",
    "reply",
    "attempts",
    "purposes",
    "retention_days",
];

/// A report of [`subject_report`] as CSV (header + one row per message). Cells are the JSON
/// values: strings as they are, null empty, numbers in decimal; `purposes` joined with "; ".
pub fn subject_csv(report: &Value) -> Result<String, ApiError> {
    let fail = |e: csv::Error| {
        ApiError::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            "csv_error",
            format!("cannot write the access export as CSV: {e}"),
        )
    };
    let purposes = report["purposes"]
        .as_array()
        .map(|a| {
            a.iter()
                .map(|p| render::cell(Some(p)))
                .collect::<Vec<_>>()
                .join("; ")
        })
        .unwrap_or_default();
    let mut w = csv::Writer::from_writer(Vec::new());
    w.write_record(SUBJECT_CSV_COLUMNS).map_err(fail)?;
    for m in report["messages"].as_array().into_iter().flatten() {
        let row = SUBJECT_CSV_COLUMNS.map(|col| match col {
            "address" => render::cell(report.get("address")),
            "purposes" => purposes.clone(),
            "retention_days" => render::cell(report.get("retention_days")),
            _ => render::cell(m.get(col)),
        });
        w.write_record(&row).map_err(fail)?;
    }
    let bytes = w.into_inner().map_err(|e| fail(e.into_error().into()))?;
    String::from_utf8(bytes).map_err(|e| {
        ApiError::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            "csv_error",
            format!("the access export is not UTF-8: {e}"),
        )
    })
}

/// Everything the send log holds about `address` (GDPR Art. 15), recorded as `log_access`
/// (`subject_export`, in `format`: `json`, `csv`, `html`) by `actor`: the path of
/// `GET /api/v1/subjects/{address}` and of the console's access export and downloads.
pub async fn subject_report(
    s: &ApiState,
    actor: &str,
    address: &str,
    format: &str,
) -> Result<Value, ApiError> {
    let address = address.to_string();
    if !address_ok(&address) {
        return Err(bad_request(
            format!("{address:?} is not an email address"),
            "address",
        ));
    }
    let log = sendlog(s)?.clone();
    let a = address.clone();
    let (events, erased_at) = log
        .read(move |r| {
            let mut all = Vec::new();
            let mut f = EventFilter {
                recipient: Some(a.clone()),
                limit: 10_000,
                ..EventFilter::default()
            };
            loop {
                let page = r.events(&f)?;
                let done = page.len() < f.limit;
                f.after = page
                    .last()
                    .and_then(|e| e["seq"].as_u64())
                    .unwrap_or(f.after);
                all.extend(page);
                if done {
                    break;
                }
            }
            Ok((all, r.erased_at(&a)?))
        })
        .await
        .map_err(store_error)?;
    log.record_access(
        actor,
        "subject_export",
        erased_at.is_none().then_some(address.as_str()),
        json!({}),
        format,
        events.len() as u64,
    );
    let mail: Vec<&Value> = events
        .iter()
        .filter(|e| e["type"] != "log_access")
        .collect();
    let mut messages: Vec<Value> = Vec::new();
    for e in &mail {
        let qid = e["queue_id"].as_str().unwrap_or("");
        if qid.is_empty() || messages.iter().any(|m| m["queue_id"] == qid) {
            continue;
        }
        let of: Vec<&&Value> = mail.iter().filter(|x| x["queue_id"] == qid).collect();
        let last = of.last().map(|x| (**x).clone()).unwrap_or(Value::Null);
        messages.push(json!({
            "queue_id": qid,
            "message_id": e["message_id"],
            "campaign": e["campaign"],
            "tenant": e["tenant"],
            "first_time_us": of.first().map(|x| x["time_us"].clone()),
            "outcome": last["type"],
            "provider": last.get("site").cloned().unwrap_or(Value::Null),
            "mx_host": last.get("mx_host").cloned().unwrap_or(Value::Null),
            "remote_ip": last.get("remote_ip").cloned().unwrap_or(Value::Null),
            "reply": last.get("reply").cloned().unwrap_or(Value::Null),
            "attempts": of.iter().filter(|x| x["attempt"].as_u64().unwrap_or(0) > 0).count(),
        }));
    }
    let lookups: Vec<&Value> = events
        .iter()
        .filter(|e| e["type"] == "log_access")
        .collect();
    Ok(json!({
        "address": address,
        "erased_at_us": erased_at,
        "messages": messages,
        "events": mail,
        "lookups": lookups,
        "suppressions": erased_at.map(|t| vec![json!({"reason": "erasure", "since_us": t})]).unwrap_or_default(),
        "retention_days": log.retention_days,
        "purposes": *log.purposes,
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn access_export_csv_has_one_row_per_message_with_purposes_and_retention() {
        let report = json!({
            "address": "a@example.test",
            "messages": [
                {"queue_id": "q1", "message_id": "m1@x", "campaign": "spring, \"hot\"",
                 "tenant": "t", "first_time_us": 1_700_000_000_000_000_i64, "outcome": "delivered",
                 "provider": null, "mx_host": "mx.test", "remote_ip": "192.0.2.1",
                 "reply": "250 ok", "attempts": 1},
                {"queue_id": "q2", "outcome": "bounced", "attempts": 2},
            ],
            "purposes": ["delivery", "fraud prevention"],
            "retention_days": 90,
        });
        let text = subject_csv(&report).unwrap();
        let mut r = csv::Reader::from_reader(text.as_bytes());
        assert_eq!(
            r.headers().unwrap().iter().collect::<Vec<_>>(),
            SUBJECT_CSV_COLUMNS.to_vec()
        );
        let rows: Vec<csv::StringRecord> = r.records().map(|x| x.unwrap()).collect();
        assert_eq!(rows.len(), 2);
        assert_eq!(&rows[0][0], "a@example.test");
        assert_eq!(&rows[0][3], "spring, \"hot\"");
        assert_eq!(&rows[0][5], "1700000000000000");
        assert_eq!(&rows[0][7], "", "null is empty");
        assert_eq!(&rows[0][12], "delivery; fraud prevention");
        assert_eq!(&rows[0][13], "90");
        assert_eq!(&rows[1][1], "q2");
        assert_eq!(&rows[1][2], "", "a missing field is empty");
        assert_eq!(&rows[1][11], "2");
        // No messages: the header alone.
        let empty = subject_csv(&json!({"address": "b@x.test", "messages": []})).unwrap();
        assert_eq!(empty.lines().count(), 1);
    }
}
