//! `POST /api/v1/messages`: personalised campaign batches over HTTP (scope `inject`).
//!
//! Owns: reading the request (size limit → 413, malformed JSON → 400 naming the field, too
//! many recipients → 413 with the limit, template errors → 400 naming the template and line),
//! building one message per recipient (`message::compose`, on one blocking thread per core,
//! each recipient parsed only then: `inject_request`), streamed through a bounded channel,
//! adding one-click unsubscribe headers for classes with `list_unsubscribe`, and handing every
//! message to the same `Acceptor` as SMTP, many at once so they share group commits. The
//! answer goes out only after every accepted message is durable; it lists each recipient's
//! queue id and Message-ID, or why it was refused.
//! Never does: touch the spool or queue itself (intake does), decide suppression (later stage).

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::{ConnectInfo, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use futures::StreamExt;
use serde::Serialize;

use super::idempotency::Begin;
use super::{ApiError, ApiState};
use crate::message::compose::{Batch, BatchRequest, Extras, RecipientError};
use crate::message::template::TemplateLimits;
use crate::message::{Envelope, Origin, Rejection, Submission};
use crate::suppression::token::{self, Claims};

/// The answer for one recipient, in request order.
#[derive(Debug, Clone, Serialize, serde::Deserialize, PartialEq, utoipa::ToSchema)]
pub struct RecipientResult {
    pub email: String,
    /// `queued` (durable, will be delivered) or `rejected`.
    pub status: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub queue_id: Option<String>,
    /// The `Message-ID` (without angle brackets) of the recipient's message.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub message_id: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<RecipientErrorBody>,
}

#[derive(Debug, Clone, Serialize, serde::Deserialize, PartialEq, utoipa::ToSchema)]
pub struct RecipientErrorBody {
    pub code: String,
    pub message: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub field: Option<String>,
    /// True when retrying later may succeed (spool busy, storage error).
    #[serde(default)]
    pub temporary: bool,
}

/// The whole answer.
#[derive(Debug, Clone, Serialize, serde::Deserialize, PartialEq, utoipa::ToSchema)]
pub struct InjectResponse {
    pub accepted: usize,
    pub rejected: usize,
    pub results: Vec<RecipientResult>,
}

/// Ids passed to intake: printable, no spaces, at most 128 characters (intake's own rule).
fn check_id(v: &Option<String>, field: &str) -> Result<(), ApiError> {
    if let Some(v) = v
        && (v.is_empty() || v.len() > 128 || v.chars().any(|c| c.is_control() || c.is_whitespace()))
    {
        return Err(field_error(
            StatusCode::BAD_REQUEST,
            "invalid_request",
            format!("{field} must be 1 to 128 printable characters without spaces"),
            field,
        ));
    }
    Ok(())
}

fn field_error(
    status: StatusCode,
    code: &'static str,
    message: impl Into<String>,
    field: &str,
) -> ApiError {
    ApiError {
        status,
        code,
        message: message.into(),
        field: Some(field.to_string()),
    }
}

/// Parse the body, naming the field at fault (`recipients[3].email`) when it does not fit.
pub fn parse_request(body: &[u8]) -> Result<BatchRequest, ApiError> {
    let de = &mut serde_json::Deserializer::from_slice(body);
    serde_path_to_error::deserialize(de).map_err(|e| {
        let path = e.path().to_string();
        let inner = e.inner().to_string();
        let field = if path.is_empty() || path == "." {
            // "missing field `from`" / "unknown field `x`": name the field in the message.
            inner
                .split('`')
                .nth(1)
                .map(str::to_string)
                .unwrap_or_else(|| "body".to_string())
        } else {
            path
        };
        field_error(
            StatusCode::BAD_REQUEST,
            "invalid_json",
            format!("request body is not a valid batch: {inner}"),
            &field,
        )
    })
}

/// What one recipient's build produced before intake.
type Built = Result<(Submission, String), RecipientError>;

/// One recipient's end: (queue id, Message-ID) or why not.
type Outcome = Result<(String, String), Failure>;

/// Unsubscribe and Feedback-ID header fields for one recipient of a promotional class.
fn promotional_headers(
    s: &ApiState,
    key: &token::UnsubscribeKey,
    email: &str,
    req: &BatchRequest,
    class: &str,
) -> Result<Vec<String>, RecipientError> {
    let claims = Claims {
        address: email.to_string(),
        tenant: req.tenant.clone(),
        scope: format!("class:{class}"),
        campaign: req.campaign.clone(),
        issued: Claims::today(),
    };
    let t = key
        .issue(&claims)
        .map_err(|e| RecipientError::InvalidName {
            what: format!("no unsubscribe token ({e})"),
        })?;
    let base = s
        .config
        .unsubscribe
        .base_url
        .clone()
        .unwrap_or_else(|| format!("https://{}", s.config.hostname));
    let clean = |v: &Option<String>| v.as_deref().unwrap_or("").replace(':', "-");
    Ok(vec![
        format!(
            "List-Unsubscribe: <{}>,\r\n <mailto:{}>",
            token::https_url(&base, &t),
            token::mailto_address(&t, &s.config.hostname)
        ),
        "List-Unsubscribe-Post: List-Unsubscribe=One-Click".to_string(),
        format!(
            "Feedback-ID: {}:{}:{}:{}",
            clean(&req.campaign),
            clean(&req.tenant),
            class.replace(':', "-"),
            s.config.hostname
        ),
    ])
}

/// The `Idempotency-Key` request header: 1 to 255 visible ASCII characters.
pub const IDEMPOTENCY_HEADER: &str = "idempotency-key";

fn idempotency_key(headers: &HeaderMap) -> Result<Option<String>, ApiError> {
    let Some(v) = headers.get(IDEMPOTENCY_HEADER) else {
        return Ok(None);
    };
    match v.to_str() {
        Ok(k) if !k.is_empty() && k.len() <= 255 && k.bytes().all(|b| b.is_ascii_graphic()) => {
            Ok(Some(k.to_string()))
        }
        _ => Err(field_error(
            StatusCode::BAD_REQUEST,
            "invalid_idempotency_key",
            "Idempotency-Key must be 1 to 255 visible ASCII characters (a UUID is a good choice)",
            "Idempotency-Key",
        )),
    }
}

fn json_response(status: StatusCode, text: String, replayed: bool) -> Response {
    let mut r = (
        status,
        [(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/json"),
        )],
        text,
    )
        .into_response();
    if replayed {
        r.headers_mut()
            .insert("idempotent-replayed", HeaderValue::from_static("true"));
    }
    r
}

/// `POST /api/v1/messages`.
///
/// With an `Idempotency-Key`, the first answer is stored durably (24 h) before it is sent and
/// a retry with the same key and body gets it again without sending anything; the same key
/// with another body is 422, and while the first request is still running 409 (with
/// `Retry-After`). The batch runs in its own task, so a client that hangs up mid-batch does
/// not cut it short: what it queued is still answered to the retry.
#[utoipa::path(post, path = "/api/v1/messages", tag = "inject",
    request_body = BatchRequest,
    params(("Idempotency-Key" = Option<String>, Header, description = "1 to 255 visible ASCII characters; a retry with the same key and body gets the first answer (24 h)")),
    responses(
        (status = 200, description = "Every recipient's result in request order, sent once every accepted message is durable", body = InjectResponse),
        (status = 409, description = "A request with this Idempotency-Key is still running (Retry-After)", body = crate::http::openapi::ErrorResponse),
        (status = 413, description = "Over a size or recipient limit (the message states it)", body = crate::http::openapi::ErrorResponse),
        (status = 422, description = "Idempotency-Key reused with another body", body = crate::http::openapi::ErrorResponse),
        (status = 400, description = "Bad request (names the field)", body = crate::http::openapi::ErrorResponse),
        (status = 401, description = "No or unknown token", body = crate::http::openapi::ErrorResponse),
        (status = 403, description = "Token lacks the scope, or not loopback", body = crate::http::openapi::ErrorResponse),
        (status = 429, description = "Token over its rate (Retry-After)", body = crate::http::openapi::ErrorResponse),
        (status = 507, description = "The spool disk is full: nothing was queued; send the batch again later", body = crate::http::openapi::ErrorResponse)))]
pub async fn post_messages(
    State(s): State<ApiState>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Result<Response, ApiError> {
    let actor = super::authorize_actor(&s.config, &headers, peer, "inject")?;
    // The token's name, for sender authorisation in intake (none when no tokens exist).
    let api_token = (!s.config.api_tokens.is_empty()).then_some(actor);
    let limits = &s.config.inject;
    let body = body.map_err(|e| {
        if e.status() == StatusCode::PAYLOAD_TOO_LARGE {
            field_error(
                StatusCode::PAYLOAD_TOO_LARGE,
                "too_large",
                format!(
                    "request body is over the limit of {} bytes ([inject] max_request_bytes); split the batch",
                    limits.max_request_bytes
                ),
                "body",
            )
        } else {
            field_error(StatusCode::BAD_REQUEST, "invalid_request", e.body_text(), "body")
        }
    })?;
    let key = idempotency_key(&headers)?;
    let guard = match (&key, &s.idempotency) {
        (None, _) => None,
        (Some(_), None) => {
            return Err(ApiError::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "idempotency_unavailable",
                "this instance keeps no idempotency keys; send the request without Idempotency-Key",
            ));
        }
        (Some(key), Some(store)) => {
            match store.begin(api_token.as_deref().unwrap_or(""), key, &body) {
                Begin::Started(g) => Some((store.clone(), g)),
                Begin::Answered(at) => {
                    let text = store.answer(at).await.map_err(|e| {
                        tracing::error!(error = %e, "cannot replay an idempotent answer");
                        ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, "internal", e.to_string())
                    })?;
                    return Ok(json_response(StatusCode::OK, text, true));
                }
                Begin::Mismatch => {
                    return Err(field_error(
                        StatusCode::UNPROCESSABLE_ENTITY,
                        "idempotency_key_reused",
                        "this Idempotency-Key was used in the last 24 hours for a different request body; use a new key for a new batch",
                        "Idempotency-Key",
                    ));
                }
                Begin::Busy => {
                    let mut r = field_error(
                        StatusCode::CONFLICT,
                        "idempotency_key_in_progress",
                        "a request with this Idempotency-Key is still being processed; retry after it has been answered",
                        "Idempotency-Key",
                    )
                    .into_response();
                    r.headers_mut()
                        .insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
                    return Ok(r);
                }
            }
        }
    };
    let task = tokio::spawn(async move {
        let answer = run_batch(s, peer, api_token, body).await?;
        // Serialising strings and numbers cannot fail.
        let text = serde_json::to_string(&answer).unwrap_or_default();
        if let Some((store, guard)) = guard
            && let Err(e) = store.finish(guard, text.clone()).await
        {
            // The messages are durable and queued: the answer must still go out. Only a
            // retry with this key could now send them again.
            tracing::error!(error = %e, "idempotency key not recorded; a retry with it would send the batch again");
        }
        Ok::<_, ApiError>(text)
    });
    let text = task.await.map_err(|e| {
        ApiError::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            "internal",
            format!("the batch task failed: {e}"),
        )
    })??;
    Ok(json_response(StatusCode::OK, text, false))
}

/// Everything after authorisation and the body: validate, render, hand to intake, answer.
async fn run_batch(
    s: ApiState,
    peer: SocketAddr,
    api_token: Option<String>,
    body: Bytes,
) -> Result<InjectResponse, ApiError> {
    let limits = &s.config.inject;
    let lazy = super::inject_request::parse(body)?;
    if lazy.len() > limits.max_recipients {
        return Err(field_error(
            StatusCode::PAYLOAD_TOO_LARGE,
            "too_many_recipients",
            format!(
                "{} recipients is over the limit of {} per request ([inject] max_recipients); split the batch",
                lazy.len(),
                limits.max_recipients
            ),
            "recipients",
        ));
    }
    if lazy.is_empty() {
        return Err(field_error(
            StatusCode::BAD_REQUEST,
            "invalid_request",
            "recipients is empty",
            "recipients",
        ));
    }
    let req = &lazy.head;
    check_id(&req.tenant, "tenant")?;
    check_id(&req.campaign, "campaign")?;
    check_id(&req.variant, "variant")?;
    check_id(&req.class, "class")?;
    // The class intake will choose (the request's, else the first configured one), so the
    // promotional headers match it.
    let class = match &req.class {
        Some(c) if s.config.classes.contains_key(c) => c.clone(),
        Some(c) => {
            let known: Vec<&str> = s.config.classes.keys().map(String::as_str).collect();
            return Err(field_error(
                StatusCode::BAD_REQUEST,
                "unknown_class",
                format!(
                    "unknown traffic class {c:?}; configured classes: {}",
                    known.join(", ")
                ),
                "class",
            ));
        }
        None => s.config.fallback_class().unwrap_or_default().to_string(),
    };
    let promotional = s
        .config
        .classes
        .get(&class)
        .is_some_and(|c| c.list_unsubscribe);
    let tl = TemplateLimits {
        max_template_bytes: limits.max_template_bytes,
        max_rendered_bytes: limits.max_rendered_bytes,
        ..TemplateLimits::default()
    };
    let batch = Batch::prepare(req, tl).map_err(|e| {
        let status = if e.too_large {
            StatusCode::PAYLOAD_TOO_LARGE
        } else {
            StatusCode::BAD_REQUEST
        };
        let code = if e.too_large {
            "too_large"
        } else {
            "template_error"
        };
        field_error(status, code, e.message, &e.field)
    })?;
    let unsubscribe_key = match (promotional, &s.unsubscribe) {
        (true, Some(k)) => Some(k.clone()),
        _ => None,
    };

    let lazy = Arc::new(lazy);
    let req = &lazy.head;
    let batch = Arc::new(batch);
    let concurrency = limits.concurrency.max(1);
    // Bounded: the renderers wait when intake is `concurrency` messages behind, so a batch
    // holds about 2 x `concurrency` recipients parsed at once whatever its size.
    let (tx, rx) = tokio::sync::mpsc::channel::<(usize, Built, Held)>(concurrency);
    // Rendering (minijinja + mail-builder, ~30 us a recipient) runs on one blocking thread per
    // core, each taking every `workers`-th recipient; intake orders nothing, the answer is
    // sorted by index at the end.
    let workers = std::thread::available_parallelism()
        .map_or(1, |n| n.get())
        .clamp(1, 4)
        .min(lazy.len());
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0);
    let producers: Vec<_> = (0..workers)
        .map(|w| {
            let (lazy, batch, s, tx) = (lazy.clone(), batch.clone(), s.clone(), tx.clone());
            let (class, api_token, unsubscribe_key) =
                (class.clone(), api_token.clone(), unsubscribe_key.clone());
            tokio::task::spawn_blocking(move || {
                let req = &lazy.head;
                for i in (w..lazy.len()).step_by(workers) {
                    let held = Held::new(&s.metrics);
                    let id = uuid::Uuid::now_v7().simple().to_string();
                    let built = (|| {
                        // Parsed here and dropped with its message (see `inject_request`).
                        let r = &lazy.recipient(i).map_err(|e| RecipientError::Malformed {
                            message: e.to_string(),
                        })?;
                        let extra_headers = match &unsubscribe_key {
                            Some(k) => promotional_headers(&s, k, &r.email, req, &class)?,
                            None => Vec::new(),
                        };
                        let extras = Extras {
                            message_id: id.clone(),
                            hostname: s.config.hostname.clone(),
                            date: now,
                            extra_headers,
                        };
                        let mut body = batch.build(r, &extras)?;
                        if let Some(v) = &req.variant {
                            let line = format!("X-Gannet-Variant: {v}\r\n");
                            body.splice(0..0, line.into_bytes());
                        }
                        let sub = Submission {
                            envelope: Envelope {
                                mail_from: req.from.email().to_string(),
                                rcpts: vec![r.email.clone()],
                            },
                            body,
                            origin: Origin {
                                listener: "http".to_string(),
                                client_ip: peer.ip(),
                                helo: String::new(),
                                auth_user: None,
                                api_token: api_token.clone(),
                            },
                            class: Some(class.clone()),
                            tenant: req.tenant.clone(),
                            campaign: req.campaign.clone(),
                        };
                        Ok((sub, format!("{id}@{}", s.config.hostname)))
                    })();
                    if tx.blocking_send((i, built, held)).is_err() {
                        return;
                    }
                }
            })
        })
        .collect();
    drop(tx);
    let stream = futures::stream::unfold(rx, |mut rx| async move {
        rx.recv().await.map(|item| (item, rx))
    });
    let acceptor = s.acceptor.clone();
    let mut outcomes: Vec<(usize, Outcome)> = stream
        .map(|(i, built, held)| {
            let acceptor = acceptor.clone();
            async move {
                let _held = held;
                match built {
                    Ok((sub, mid)) => match acceptor.accept(sub).await {
                        Ok(a) => (i, Ok((a.queue_id, mid))),
                        Err(r) => (i, Err(Failure::Intake(r))),
                    },
                    Err(e) => (i, Err(Failure::Build(e))),
                }
            }
        })
        .buffer_unordered(concurrency)
        .collect()
        .await;
    for p in producers {
        let _ = p.await;
    }
    outcomes.sort_by_key(|(i, _)| *i);
    // Nothing accepted because the spool's disk is full: the whole request is 507 (RFC 4918
    // §11.5), so a client retries it later as a whole; with some accepted, the per-recipient
    // answer says which to send again (`smtp_4_3_1`, temporary).
    let full = |o: &Outcome| matches!(o, Err(Failure::Intake(r)) if r.code == 452 && r.enhanced == "4.3.1");
    if outcomes.iter().all(|(_, o)| o.is_err()) && outcomes.iter().any(|(_, o)| full(o)) {
        return Err(ApiError::new(
            StatusCode::INSUFFICIENT_STORAGE,
            "insufficient_storage",
            "the spool disk is full: nothing of this batch was queued; send it again later",
        ));
    }
    let mut accepted = 0;
    let results: Vec<RecipientResult> = outcomes
        .into_iter()
        .map(|(i, o)| {
            let email = lazy.emails[i].clone();
            match o {
                Ok((queue_id, message_id)) => {
                    accepted += 1;
                    RecipientResult {
                        email,
                        status: "queued".into(),
                        queue_id: Some(queue_id),
                        message_id: Some(message_id),
                        error: None,
                    }
                }
                Err(f) => RecipientResult {
                    email,
                    status: "rejected".into(),
                    queue_id: None,
                    message_id: None,
                    error: Some(f.body()),
                },
            }
        })
        .collect();
    let rejected = results.len() - accepted;
    tracing::info!(
        target: "gannet::inject",
        accepted,
        rejected,
        client_ip = %peer.ip(),
        class = %class,
        campaign = req.campaign.as_deref().unwrap_or(""),
        "batch injected"
    );
    Ok(InjectResponse {
        accepted,
        rejected,
        results,
    })
}

/// One recipient of a batch held parsed (`gannet_inject_held_recipients`) from its parse
/// until its answer is known; dropping it releases the count.
struct Held(prometheus::IntGauge);

impl Held {
    fn new(m: &crate::metrics::Metrics) -> Held {
        m.inject_held_recipients.inc();
        let now = m.inject_held_recipients.get();
        if now > m.inject_held_recipients_peak.get() {
            m.inject_held_recipients_peak.set(now);
        }
        Held(m.inject_held_recipients.clone())
    }
}

impl Drop for Held {
    fn drop(&mut self) {
        self.0.dec();
    }
}

/// Why a recipient got no queue id.
enum Failure {
    Build(RecipientError),
    Intake(Rejection),
}

impl Failure {
    fn body(self) -> RecipientErrorBody {
        match self {
            Failure::Build(e) => RecipientErrorBody {
                code: e.code().to_string(),
                field: Some(
                    match &e {
                        RecipientError::InvalidAddress { .. } => "email",
                        RecipientError::InvalidName { .. } => "name",
                        RecipientError::Malformed { .. } => "recipient",
                        _ => "substitutions",
                    }
                    .to_string(),
                ),
                message: e.to_string(),
                temporary: false,
            },
            Failure::Intake(r) => RecipientErrorBody {
                code: format!("smtp_{}", r.enhanced.replace('.', "_")),
                temporary: !r.is_permanent(),
                message: format!("{} {} {}", r.code, r.enhanced, r.message),
                field: r.field,
            },
        }
    }
}
