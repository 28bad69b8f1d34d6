//! Per-token request rates (`[[api_token]] rate`, `burst`): a token over its rate gets `429`
//! with `Retry-After`, before any handler runs.
//!
//! Owns: the `RequestRates` seam (a cluster shares the counters through another backend) and
//! its in-process default `TokenRates`, one `governor` limiter per token that has a rate (built
//! once from the config; quotas never change at run time, a config change is a restart), and
//! the axum middleware `limit` that applies it. Requests without a bearer token or with an
//! unknown one pass through: the handler's scope check answers them (401), so an attacker
//! cannot spend a real token's budget without the token.
//! Never: checks scopes or decides what a request may do.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use axum::extract::{Request, State};
use axum::http::{HeaderValue, StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use futures::future::BoxFuture;
use governor::clock::{Clock, DefaultClock};
use governor::{DefaultDirectRateLimiter, Quota, RateLimiter};

use super::ApiError;
use crate::config::Config;

/// Where request budgets live. `check` takes one request from the token's budget, or says how
/// long until one is free.
pub trait RequestRates: Send + Sync + 'static {
    fn check<'a>(&'a self, token_hash: &'a str) -> BoxFuture<'a, Result<(), Duration>>;
}

/// The single-node backend: one direct governor limiter per rated token, keyed by the
/// lower-case hex hash (what a request's bearer hashes to). Read-only after construction, so no
/// lock: governor's limiters are atomic inside.
pub struct TokenRates {
    limiters: HashMap<String, DefaultDirectRateLimiter>,
    clock: DefaultClock,
}

impl TokenRates {
    pub fn from_config(config: &Config) -> TokenRates {
        let mut limiters = HashMap::new();
        for t in &config.api_tokens {
            let Some(rate) = t.rate else { continue };
            // Validation guarantees count ≥ 1 and burst ≥ 1.
            let burst = std::num::NonZeroU32::new(t.burst.unwrap_or(rate.count))
                .unwrap_or(std::num::NonZeroU32::MIN);
            let period = rate.per / rate.count.max(1);
            let Some(quota) = Quota::with_period(period) else {
                continue;
            };
            limiters.insert(
                t.hash.to_ascii_lowercase(),
                RateLimiter::direct(quota.allow_burst(burst)),
            );
        }
        TokenRates {
            limiters,
            clock: DefaultClock::default(),
        }
    }

    /// True when no token has a rate (the middleware is then not installed).
    pub fn is_empty(&self) -> bool {
        self.limiters.is_empty()
    }
}

impl RequestRates for TokenRates {
    fn check<'a>(&'a self, token_hash: &'a str) -> BoxFuture<'a, Result<(), Duration>> {
        let r = match self.limiters.get(token_hash) {
            None => Ok(()),
            Some(l) => l
                .check()
                .map_err(|not_until| not_until.wait_time_from(self.clock.now())),
        };
        Box::pin(std::future::ready(r))
    }
}

/// Shared handle the middleware holds.
pub type SharedRates = Arc<dyn RequestRates>;

/// axum middleware: 429 with `Retry-After` (whole seconds, at least 1) when the request's token
/// is over its rate.
pub async fn limit(State(rates): State<SharedRates>, req: Request, next: Next) -> Response {
    let hash = req
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .map(|t| super::token_hash(t.trim()));
    if let Some(hash) = hash
        && let Err(wait) = rates.check(&hash).await
    {
        let secs = wait.as_secs() + u64::from(wait.subsec_nanos() > 0);
        let secs = secs.max(1);
        let mut r = ApiError::new(
            StatusCode::TOO_MANY_REQUESTS,
            "rate_limited",
            format!(
                "this API token is over its request rate ([[api_token]] rate); retry in {secs} s"
            ),
        )
        .into_response();
        if let Ok(v) = HeaderValue::from_str(&secs.to_string()) {
            r.headers_mut().insert(header::RETRY_AFTER, v);
        }
        return r;
    }
    next.run(req).await
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(rate: &str, burst: Option<u32>) -> Config {
        let burst = burst.map(|b| format!("burst = {b}\n")).unwrap_or_default();
        Config::from_toml(
            &format!(
                "[[pool]]\nname = \"p\"\nsources = [{{ ip = \"127.0.0.1\", ehlo = \"h\" }}]\n\
                 [class.c]\npool = \"p\"\n\
                 [[api_token]]\nname = \"t\"\nhash = \"{}\"\nscopes = [\"inject\"]\nrate = \"{rate}\"\n{burst}",
                super::super::token_hash("secret").to_ascii_uppercase()
            ),
            "t",
        )
        .unwrap()
    }

    #[tokio::test]
    async fn a_token_over_its_rate_is_told_how_long_to_wait() {
        let r = TokenRates::from_config(&config("2/m", None));
        let h = super::super::token_hash("secret");
        assert!(r.check(&h).await.is_ok());
        assert!(r.check(&h).await.is_ok());
        let wait = r.check(&h).await.expect_err("third request in a minute");
        assert!(
            wait > Duration::from_secs(20) && wait <= Duration::from_secs(30),
            "{wait:?}"
        );
        // Other tokens (and unknown ones) are not limited here.
        assert!(r.check(&super::super::token_hash("other")).await.is_ok());

        let r = TokenRates::from_config(&config("1/h", Some(3)));
        for _ in 0..3 {
            assert!(r.check(&h).await.is_ok());
        }
        assert!(r.check(&h).await.is_err());
    }

    #[test]
    fn rates_and_bursts_are_validated() {
        let base = "[[pool]]\nname = \"p\"\nsources = [{ ip = \"127.0.0.1\", ehlo = \"h\" }]\n[class.c]\npool = \"p\"\n[[api_token]]\nname = \"t\"\nhash = \"0000000000000000000000000000000000000000000000000000000000000000\"\n";
        for (extra, needle) in [
            ("rate = \"0/s\"\n", "invalid rate"),
            ("rate = \"10/d\"\n", "invalid rate"),
            ("rate = \"fast\"\n", "invalid rate"),
            ("rate = \"5/s\"\nburst = 0\n", "api_token[0].burst"),
            ("burst = 5\n", "burst needs a rate"),
        ] {
            let e = Config::from_toml(&format!("{base}{extra}"), "t")
                .expect_err(extra)
                .to_string();
            assert!(e.contains(needle), "{extra}: {e}");
        }
        assert!(Config::from_toml(&format!("{base}rate = \"600/m\"\nburst = 20\n"), "t").is_ok());
    }
}
