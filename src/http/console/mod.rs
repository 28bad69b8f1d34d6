//! The web console at `/console`: server-rendered pages (maud) for compliance and operations
//! staff, signed in with a password and a TOTP code.
//!
//! Owns: the console's routes, its sign-in flow (login CSRF cookie, throttle, session cookie),
//! the CSRF check of every signed-in POST (`csrf_guard`, one place for all forms) and the
//! right check of every page (`Ctx::require`). Every page calls the same code as the HTTP API
//! (`http::logs`, `http::suppressions`, `http::suppressions_bulk`, the `Queue` handle):
//! nothing here reads a store directly. Actions are recorded under the actor
//! `console:NAME`.
//! Never does: SQL, list or queue logic of its own; JavaScript (pages work without it).

pub mod auth;
mod domains;
pub mod logs;
pub mod page;
mod queue;
pub mod session;
mod subjects;
mod suppressions;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use axum::Router;
use axum::body::Body;
use axum::extract::{ConnectInfo, Form, FromRequestParts, Request, State};
use axum::http::request::Parts;
use axum::http::{HeaderMap, Method, StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Redirect, Response};
use axum::routing::{get, post};
use maud::html;
use serde::Deserialize;

use super::ApiState;
use crate::events::{Event, EventKind};
use auth::{Right, Users, allows};
use page::{Notice, layout};
use session::{LOGIN_COOKIE, Session, Sessions};

/// Largest POST body the console takes (a pasted suppression import).
const MAX_FORM_BYTES: usize = 8 * 1024 * 1024;

/// What every console handler may use. Cheap to clone.
#[derive(Clone)]
pub struct Console {
    pub api: ApiState,
    users: Arc<Users>,
    sessions: Arc<Sessions>,
    erasures: Arc<subjects::Requests>,
    /// Bounds concurrent argon2 checks (each takes tens of ms and ~19 MiB).
    argon: Arc<tokio::sync::Semaphore>,
}

impl Console {
    /// Publish a `console` event.
    fn event(&self, actor: &str, action: &str, detail: &str, ip: &str, person: Option<&str>) {
        let mut ev = Event::new(EventKind::Console {
            actor: actor.to_string(),
            action: action.to_string(),
            detail: detail.to_string(),
            client_ip: ip.to_string(),
        });
        if let Some(p) = person {
            ev.recipient = p.to_string();
        }
        self.api.bus.publish(ev);
    }
}

/// The console's routes (none when no `[[console_user]]` is configured: `/console` is then
/// the API's 404). Warns when the listener is reachable from the network without TLS.
pub fn router(api: ApiState) -> Router {
    if api.config.console_users.is_empty() {
        return Router::new();
    }
    let tls = api.config.http.tls_cert.is_some();
    if exposed_without_tls(&api.config.http) {
        tracing::warn!(
            address = %api.config.http.address,
            "the web console is served without TLS on a non-loopback address: passwords, codes \
             and session cookies cross the network in clear; set [http] tls_cert and tls_key"
        );
    }
    let console = Console {
        users: Arc::new(Users::new(&api.config.console_users, &api.config.console)),
        sessions: Arc::new(Sessions::new(api.config.console.session_ttl, tls)),
        erasures: Arc::new(subjects::Requests::default()),
        argon: Arc::new(tokio::sync::Semaphore::new(2)),
        api,
    };
    let signed_in = Router::new()
        .route("/console", get(home))
        .route("/console/logout", post(logout))
        .merge(logs::routes())
        .merge(suppressions::routes())
        .merge(queue::routes())
        .merge(subjects::routes())
        .route_layer(axum::middleware::from_fn_with_state(
            console.clone(),
            csrf_guard,
        ));
    Router::new()
        .route("/console/login", get(login_form).post(login))
        .route("/console/assets/console.css", get(css))
        .merge(signed_in)
        .layer(axum::extract::DefaultBodyLimit::max(MAX_FORM_BYTES))
        .with_state(console)
}

/// Whether the console would take passwords in clear from the network: a listener on a
/// non-loopback address (or all addresses) without `[http] tls_cert`.
pub fn exposed_without_tls(http: &crate::config::HttpConfig) -> bool {
    http.tls_cert.is_none() && !http.address.ip().is_loopback()
}

fn now_unix() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or(Duration::ZERO)
        .as_secs()
}

fn client_ip(parts_ext: &axum::http::Extensions) -> String {
    parts_ext
        .get::<ConnectInfo<SocketAddr>>()
        .map(|c| c.0.ip().to_string())
        .unwrap_or_default()
}

/// A signed-in request: its session and client address. Without a live session, a GET is
/// sent to the sign-in page and anything else is refused (401).
pub struct Ctx {
    pub session: Session,
    pub ip: String,
}

impl Ctx {
    /// `console:NAME`, the actor of API code paths and events.
    pub fn actor(&self) -> String {
        format!("console:{}", self.session.user)
    }

    /// Refuse (403 page) unless the user's role has `right`.
    pub fn require(&self, right: Right) -> Result<(), Box<Response>> {
        if allows(self.session.role, right) {
            Ok(())
        } else {
            Err(Box::new(page::error(
                StatusCode::FORBIDDEN,
                Some(&self.session),
                &format!(
                    "Your role ({}) does not allow this.",
                    self.session.role.as_str()
                ),
            )))
        }
    }
}

impl FromRequestParts<Console> for Ctx {
    type Rejection = Response;

    async fn from_request_parts(parts: &mut Parts, c: &Console) -> Result<Self, Response> {
        match c.sessions.get(&parts.headers, Instant::now()) {
            Some(session) => Ok(Ctx {
                session,
                ip: client_ip(&parts.extensions),
            }),
            None if parts.method == Method::GET => {
                Err(Redirect::to("/console/login").into_response())
            }
            None => Err(page::error(
                StatusCode::UNAUTHORIZED,
                None,
                "Your session has ended: sign in again.",
            )),
        }
    }
}

/// Every POST of a signed-in page must carry the session's CSRF token in its `csrf` field
/// (forms are `application/x-www-form-urlencoded`); otherwise 403 and nothing runs.
async fn csrf_guard(State(c): State<Console>, req: Request, next: Next) -> Response {
    if req.method() != Method::POST {
        return next.run(req).await;
    }
    let Some(session) = c.sessions.get(req.headers(), Instant::now()) else {
        return page::error(
            StatusCode::UNAUTHORIZED,
            None,
            "Your session has ended: sign in again.",
        );
    };
    let (parts, body) = req.into_parts();
    let bytes = match axum::body::to_bytes(body, MAX_FORM_BYTES).await {
        Ok(b) => b,
        Err(_) => {
            return page::error(
                StatusCode::PAYLOAD_TOO_LARGE,
                Some(&session),
                "The form is too large.",
            );
        }
    };
    let token = form_urlencoded_field(&bytes, "csrf");
    if !token
        .as_deref()
        .is_some_and(|t| session::same(t, &session.csrf))
    {
        tracing::warn!(user = %session.user, path = %parts.uri.path(), "console: POST without a valid CSRF token refused");
        return page::error(
            StatusCode::FORBIDDEN,
            Some(&session),
            "This form lacks its security token (CSRF) or the token is stale: reload the page and try again.",
        );
    }
    next.run(Request::from_parts(parts, Body::from(bytes)))
        .await
}

/// The first value of `name` in a urlencoded body.
fn form_urlencoded_field(body: &[u8], name: &str) -> Option<String> {
    serde_urlencoded::from_bytes::<Vec<(String, String)>>(body)
        .ok()?
        .into_iter()
        .find(|(k, _)| k == name)
        .map(|(_, v)| v)
}

async fn css() -> Response {
    (
        [
            (header::CONTENT_TYPE, "text/css; charset=utf-8"),
            (header::CACHE_CONTROL, "max-age=3600"),
        ],
        page::CSS,
    )
        .into_response()
}

fn login_page(token: &str, notice: &Notice, name: &str) -> maud::Markup {
    layout(
        "Sign in",
        None,
        notice,
        html! {
            form.box method="post" action="/console/login" {
                input type="hidden" name="csrf" value=(token);
                div { label for="name" { "User name" } input id="name" name="name" autocomplete="username" required value=(name); }
                div { label for="password" { "Password" } input id="password" name="password" type="password" autocomplete="current-password" required; }
                div { label for="code" { "Authenticator code (6 digits)" } input id="code" name="code" inputmode="numeric" autocomplete="one-time-code" pattern="[0-9 ]*"; }
                div { button type="submit" { "Sign in" } }
            }
            p.muted { "Viewers have no code; every other role needs the code from their authenticator app." }
        },
    )
}

/// A login form with a fresh CSRF cookie (double submit).
fn login_response(c: &Console, status: StatusCode, notice: Notice, name: &str) -> Response {
    let token = session::random_token();
    let cookie = c
        .sessions
        .set_cookie(LOGIN_COOKIE, &token, Duration::from_secs(3600));
    (
        status,
        [(header::SET_COOKIE, cookie)],
        login_page(&token, &notice, name),
    )
        .into_response()
}

async fn login_form(State(c): State<Console>) -> Response {
    login_response(&c, StatusCode::OK, Notice::None, "")
}

#[derive(Deserialize)]
struct LoginForm {
    #[serde(default)]
    name: String,
    #[serde(default)]
    password: String,
    #[serde(default)]
    code: String,
    #[serde(default)]
    csrf: String,
}

async fn login(
    State(c): State<Console>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    headers: HeaderMap,
    Form(f): Form<LoginForm>,
) -> Response {
    let ip = peer.ip().to_string();
    let cookie = session::cookie(&headers, LOGIN_COOKIE);
    if f.csrf.is_empty() || !cookie.is_some_and(|k| session::same(&k, &f.csrf)) {
        return login_response(
            &c,
            StatusCode::FORBIDDEN,
            Notice::Error(
                "The sign-in form lacks its security token (CSRF) or it is stale: try again."
                    .into(),
            ),
            "",
        );
    }
    let name: String = f.name.trim().chars().take(64).collect();
    let now = Instant::now();
    if c.users.locked(&name, now) {
        c.event(&name, "login_locked", "locked", &ip, None);
        return login_response(
            &c,
            StatusCode::TOO_MANY_REQUESTS,
            Notice::Error(format!(
                "Too many failed sign-ins in a row: this account is locked for {} minutes.",
                c.api.config.console.lockout.as_secs().div_ceil(60)
            )),
            &name,
        );
    }
    let result = {
        let _permit = c.argon.acquire().await;
        let (users, n, pw, code) = (c.users.clone(), name.clone(), f.password, f.code);
        tokio::task::spawn_blocking(move || users.check(&n, &pw, &code, now_unix())).await
    };
    match result {
        Ok(Ok((user, role))) => {
            c.users.succeeded(&user);
            let token = c.sessions.start(&user, role, Instant::now());
            c.event(&user, "login", role.as_str(), &ip, None);
            let mut resp = Redirect::to("/console").into_response();
            let h = resp.headers_mut();
            for v in [
                c.sessions
                    .set_cookie(session::COOKIE, &token, c.sessions.ttl()),
                c.sessions.set_cookie(LOGIN_COOKIE, "", Duration::ZERO),
            ] {
                if let Ok(v) = v.parse() {
                    h.append(header::SET_COOKIE, v);
                }
            }
            resp
        }
        Ok(Err(why)) => {
            let (delay, locked) = c.users.failed(&name, now);
            let detail = if locked {
                format!("{}; now locked", why.as_str())
            } else {
                why.as_str().to_string()
            };
            c.event(&name, "login_failed", &detail, &ip, None);
            tracing::warn!(user = %name, reason = why.as_str(), locked, client_ip = %ip, "console: sign-in refused");
            // Growing delay before the answer (a guesser waits longer each time).
            tokio::time::sleep(delay).await;
            login_response(
                &c,
                StatusCode::UNAUTHORIZED,
                Notice::Error("Wrong user name, password or authenticator code.".into()),
                &name,
            )
        }
        Err(e) => page::error(
            StatusCode::INTERNAL_SERVER_ERROR,
            None,
            &format!("the password check failed: {e}"),
        ),
    }
}

async fn logout(State(c): State<Console>, ctx: Ctx, headers: HeaderMap) -> Response {
    c.sessions.end(&headers);
    c.event(&ctx.session.user, "logout", "", &ctx.ip, None);
    let mut resp = Redirect::to("/console/login").into_response();
    if let Ok(v) = c
        .sessions
        .set_cookie(session::COOKIE, "", Duration::ZERO)
        .parse()
    {
        resp.headers_mut().append(header::SET_COOKIE, v);
    }
    resp
}

async fn home(ctx: Ctx) -> Response {
    let s = &ctx.session;
    layout(
        "Console",
        Some(s),
        &Notice::None,
        html! {
            p { "Signed in as " strong { (s.user) } ", role " strong { (s.role.as_str()) } "." }
            ul {
                @if allows(s.role, Right::SearchLogs) { li { a href="/console/logs" { "Search the send log" } " (every search is recorded with your name)" } }
                @if allows(s.role, Right::ViewSuppressions) { li { a href="/console/suppressions" { "Suppression list" } } }
                @if allows(s.role, Right::ViewQueue) { li { a href="/console/queue" { "Queue, suspensions, backoffs, anomalies and sending-domain (DKIM) checks" } } }
                @if allows(s.role, Right::DataSubjects) { li { a href="/console/subjects" { "Data-subject requests (access, erasure)" } } }
                @if allows(s.role, Right::Audit) { li { a href="/console/audit" { "Audit trail" } } }
            }
        },
    )
    .into_response()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn serving_off_loopback_without_tls_is_flagged() {
        let mut http = crate::config::HttpConfig::default();
        assert!(!exposed_without_tls(&http), "127.0.0.1 without TLS");
        http.address = "0.0.0.0:8025".parse().unwrap();
        assert!(exposed_without_tls(&http), "every address without TLS");
        http.address = "192.0.2.10:8025".parse().unwrap();
        assert!(exposed_without_tls(&http));
        http.tls_cert = Some("cert.pem".into());
        assert!(!exposed_without_tls(&http), "with TLS");
        assert_eq!(
            form_urlencoded_field(b"a=1&csrf=x%2By&csrf=z", "csrf").as_deref(),
            Some("x+y")
        );
    }
}
