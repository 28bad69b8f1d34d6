//! The webhook destination: batches of events as one JSON array per HTTPS POST, signed the
//! way Stripe and SES sign: `X-Gannet-Signature: t={unix seconds},v1={hex HMAC-SHA256(secret,
//! "{t}.{body}")}`.
//!
//! Owns: one endpoint's HTTP agent and secret, and the mapping of answers to "taken", "try
//! again" (timeouts, connection errors, 408, 429 with `Retry-After`, 5xx) or "refused for
//! good" (other 4xx, 3xx: counted and logged, never retried). Retry timing is the runner's.
//!
//! The POST is ureq's blocking call on a blocking thread: one request per endpoint at a time
//! is all a batching sender needs, and ureq is already in the tree (no second HTTP stack).

use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use futures::future::BoxFuture;

use super::runner::{Destination, SendError, ShipEvent};
use crate::config::ship::WebhookConfig;

/// Signature header value for `body` at unix time `t`.
pub fn sign(secret: &[u8], t: u64, body: &[u8]) -> String {
    let key = aws_lc_rs::hmac::Key::new(aws_lc_rs::hmac::HMAC_SHA256, secret);
    let mut ctx = aws_lc_rs::hmac::Context::with_key(&key);
    ctx.update(t.to_string().as_bytes());
    ctx.update(b".");
    ctx.update(body);
    format!("t={t},v1={}", hex::encode(ctx.sign().as_ref()))
}

/// The JSON array of a batch: the stored lines joined, never re-serialised.
pub fn body(batch: &[ShipEvent]) -> Vec<u8> {
    let mut b = Vec::with_capacity(batch.iter().map(|e| e.json.len() + 1).sum::<usize>() + 2);
    b.push(b'[');
    for (i, e) in batch.iter().enumerate() {
        if i > 0 {
            b.push(b',');
        }
        b.extend_from_slice(&e.json);
    }
    b.push(b']');
    b
}

pub struct Webhook {
    url: String,
    secret: Arc<Vec<u8>>,
    agent: ureq::Agent,
}

impl Webhook {
    pub fn new(c: &WebhookConfig) -> Webhook {
        let tls = ureq::tls::TlsConfig::builder()
            .provider(ureq::tls::TlsProvider::Rustls)
            .unversioned_rustls_crypto_provider(Arc::new(
                rustls::crypto::aws_lc_rs::default_provider(),
            ))
            .build();
        let agent: ureq::Agent = ureq::Agent::config_builder()
            .timeout_global(Some(c.timeout))
            .http_status_as_error(false)
            .max_redirects(0)
            .tls_config(tls)
            .user_agent(concat!("gannet/", env!("CARGO_PKG_VERSION")))
            .build()
            .into();
        Webhook {
            url: c.url.clone(),
            secret: Arc::new(c.secret.as_bytes().to_vec()),
            agent,
        }
    }
}

/// `Retry-After`: seconds, or an HTTP date.
fn retry_after(v: &str) -> Option<Duration> {
    let v = v.trim();
    if let Ok(s) = v.parse::<u64>() {
        return Some(Duration::from_secs(s));
    }
    let at = httpdate::parse_http_date(v).ok()?;
    Some(
        at.duration_since(SystemTime::now())
            .unwrap_or(Duration::ZERO),
    )
}

fn post(agent: &ureq::Agent, url: &str, secret: &[u8], body: Vec<u8>) -> Result<(), SendError> {
    let t = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or(Duration::ZERO)
        .as_secs();
    let sig = sign(secret, t, &body);
    let r = agent
        .post(url)
        .header("Content-Type", "application/json")
        .header("X-Gannet-Signature", &sig)
        .send(&body[..]);
    let resp = match r {
        Ok(r) => r,
        Err(e) => {
            return Err(SendError::Retry {
                reason: format!("POST {url}: {e}"),
                after: None,
            });
        }
    };
    let status = resp.status().as_u16();
    match status {
        200..=299 => Ok(()),
        408 | 429 | 500..=599 => Err(SendError::Retry {
            reason: format!("POST {url}: HTTP {status}"),
            after: resp
                .headers()
                .get("retry-after")
                .and_then(|v| v.to_str().ok())
                .and_then(retry_after),
        }),
        _ => Err(SendError::Refused {
            reason: format!(
                "POST {url}: HTTP {status} (only 2xx is success; 408, 429 and 5xx are retried)"
            ),
        }),
    }
}

impl Destination for Webhook {
    fn needs_fields(&self) -> bool {
        false
    }

    fn send<'a>(&'a mut self, batch: &'a [ShipEvent]) -> BoxFuture<'a, Result<(), SendError>> {
        let b = body(batch);
        let agent = self.agent.clone();
        let url = self.url.clone();
        let secret = self.secret.clone();
        Box::pin(async move {
            tokio::task::spawn_blocking(move || post(&agent, &url, &secret, b))
                .await
                .map_err(|e| SendError::Retry {
                    reason: format!("webhook task failed: {e}"),
                    after: None,
                })?
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn signature_is_hmac_sha256_of_timestamp_dot_body() {
        // Computed independently: python3 -c 'import hmac,hashlib;
        //   print(hmac.new(b"whsec_test_secret_123", b"1700000000.[{}]", hashlib.sha256).hexdigest())'
        assert_eq!(
            sign(b"whsec_test_secret_123", 1_700_000_000, b"[{}]"),
            "t=1700000000,v1=53f74418fb214b748964ddce21fe3258fd062f7d04119e26c0e1b2557e7470f2"
        );
    }

    #[test]
    fn retry_after_takes_seconds_and_dates() {
        assert_eq!(retry_after("7"), Some(Duration::from_secs(7)));
        assert_eq!(
            retry_after("Wed, 21 Oct 2015 07:28:00 GMT"),
            Some(Duration::ZERO)
        );
        assert_eq!(retry_after("soon"), None);
    }
}
