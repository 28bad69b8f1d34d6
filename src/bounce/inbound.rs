//! The inbound side of `[[listener]] role = "bounces"`: which recipients such a listener takes
//! (VERP return paths, `[bounce] fbl_addresses`, `unsub-<token>@hostname` mailto opt-outs) and
//! what becomes of each mail it accepted: parsed and classified (`report`), authenticated
//! (`auth::Verifier`: failing DMARC → `inbound_rejected`), correlated with the original send,
//! and published as `bounce_report`, `complaint`, `unsubscribed` or `inbound_rejected`.
//!
//! Owns [`Inbound`] (an `Acceptor`: the SMTP listener hands it complete mails exactly as it hands
//! ordinary mail to intake). Never spools, queues or relays anything, never suppresses (the
//! suppression policy subscribes to the events), never answers a 4xx/5xx after DATA for what a
//! report says (a bad report is logged as `inbound_rejected`, not bounced back).
//!
//! Correlation: a VERP token names the queue id (authenticated by its HMAC); the recipient,
//! tenant, campaign, class and pool then come from the send log's events for that queue id (the
//! spool record may already be gone after delivery). Reports without a VERP token (FBL
//! addresses) are correlated by the returned Message-ID through the send log.

use std::sync::Arc;

use futures::future::BoxFuture;
use serde_json::Value;

use super::report::{Analysis, ReportKind, ReportRules};
use super::verp::{VerpKey, looks_like_verp};
use crate::auth::{AuthResult, Verifier};
use crate::events::{Event, EventBus, EventKind};
use crate::message::{Accepted, Acceptor, Rejection, Submission};
use crate::sendlog::{EventFilter, SendLog};
use crate::suppression::token::{UnsubscribeKey, token_from_mailto};

/// Everything the bounces listener needs; built once by `serve`, shared by its sessions.
pub struct Inbound {
    pub rules: Arc<ReportRules>,
    pub verp: Option<VerpKey>,
    pub unsubscribe: Option<UnsubscribeKey>,
    /// Domain of `unsub-<token>@...` addresses (the host name, as injection writes them).
    pub unsubscribe_domain: String,
    /// `[bounce] fbl_addresses`, lower case.
    pub fbl: Vec<String>,
    pub verifier: Option<Verifier>,
    pub sendlog: Option<SendLog>,
    pub bus: EventBus,
}

/// What an accepted recipient address is.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Rcpt {
    Verp(String),
    Fbl,
    Unsubscribe(String),
}

/// The original send a report is about.
#[derive(Debug, Default, Clone)]
struct Original {
    queue_id: String,
    message_id: String,
    recipient: String,
    sender: String,
    tenant: String,
    campaign: String,
    class: String,
    pool: String,
}

impl Inbound {
    /// RCPT check: VERP-shaped addresses of the bounce domain (the token itself is checked after
    /// DATA, so a forged one is logged as rejected), FBL addresses, unsubscribe mailtos.
    pub fn accepts_rcpt(&self, address: &str) -> bool {
        self.kind_of(address).is_some()
    }

    fn kind_of(&self, address: &str) -> Option<Rcpt> {
        let lower = address.to_ascii_lowercase();
        if let Some(k) = &self.verp
            && looks_like_verp(address, k.domain())
        {
            return Some(Rcpt::Verp(address.to_string()));
        }
        if self.fbl.contains(&lower) {
            return Some(Rcpt::Fbl);
        }
        if self.unsubscribe.is_some()
            && let Some((_, d)) = address.rsplit_once('@')
            && d.eq_ignore_ascii_case(&self.unsubscribe_domain)
            && let Some(t) = token_from_mailto(address)
        {
            return Some(Rcpt::Unsubscribe(t.to_string()));
        }
        None
    }

    async fn handle(self: Arc<Self>, sub: Submission) {
        let client_ip = sub.origin.client_ip.to_string();
        let reject = |reason: &str, original: &Original| {
            let mut e = Event::new(EventKind::InboundRejected {
                reason: reason.to_string(),
                client_ip: client_ip.clone(),
            });
            fill(&mut e, original);
            e.sender = sub.envelope.mail_from.clone();
            self.bus.publish(e);
        };
        // Opt-outs by mail: the token alone decides (it is sealed; the body does not matter).
        for rcpt in &sub.envelope.rcpts {
            if let Some(Rcpt::Unsubscribe(token)) = self.kind_of(rcpt) {
                let Some(key) = &self.unsubscribe else {
                    continue;
                };
                match key.verify(&token) {
                    Ok(claims) => {
                        let list = claims
                            .scope
                            .split_once(':')
                            .filter(|(k, _)| *k == "list" || *k == "campaign")
                            .map(|(_, v)| v.to_string())
                            .unwrap_or_default();
                        let mut e = Event::new(EventKind::Unsubscribed {
                            via: "mailto".to_string(),
                            scope: claims.tenant.clone().unwrap_or_else(|| "*".to_string()),
                            list,
                        });
                        e.recipient = claims.address.clone();
                        e.tenant = claims.tenant.clone().unwrap_or_default();
                        e.campaign = claims.campaign.clone().unwrap_or_default();
                        if let Some(class) = claims.scope.strip_prefix("class:") {
                            e.class = class.to_string();
                        }
                        self.bus.publish(e);
                    }
                    Err(_) => reject("forged-unsubscribe-token", &Original::default()),
                }
            }
        }
        let verp_rcpt = sub
            .envelope
            .rcpts
            .iter()
            .find_map(|r| match self.kind_of(r) {
                Some(Rcpt::Verp(a)) => Some(a),
                _ => None,
            });
        let fbl = sub
            .envelope
            .rcpts
            .iter()
            .any(|r| self.kind_of(r) == Some(Rcpt::Fbl));
        if verp_rcpt.is_none() && !fbl {
            return;
        }
        let rules = self.rules.clone();
        let body = Arc::new(sub.body.clone());
        let b = body.clone();
        let analysis = match tokio::task::spawn_blocking(move || rules.analyse(&b)).await {
            Ok(a) => a,
            Err(_) => return reject("parse-failed", &Original::default()),
        };
        if analysis.kind == ReportKind::AutoReply {
            return reject("auto-reply", &Original::default());
        }
        if analysis.kind == ReportKind::NotABounce {
            return reject("not-a-bounce", &Original::default());
        }
        // A VERP token must be ours before anything else is believed.
        let mut original = Original::default();
        if let Some(addr) = &verp_rcpt {
            let Some(key) = &self.verp else { return };
            match key.decode(addr) {
                Some(t) => original.queue_id = t.key.queue_id(),
                None => return reject("forged-verp", &Original::default()),
            }
        }
        if let Some(v) = &self.verifier {
            let results = v
                .verify(
                    &body,
                    sub.origin.client_ip,
                    &sub.origin.helo,
                    &sub.envelope.mail_from,
                )
                .await;
            if results.dmarc.result == AuthResult::Fail {
                return reject("dmarc-fail", &original);
            }
        }
        self.correlate(&mut original, &analysis).await;
        if original.queue_id.is_empty() {
            return reject("uncorrelated", &original);
        }
        self.publish(&analysis, &original, &body);
    }

    /// Fill the original send's fields from the send log: by queue id (VERP) or by the
    /// returned Message-ID; the recipient is the one the report names if it belongs to that
    /// send, else the send's only recipient.
    async fn correlate(&self, original: &mut Original, analysis: &Analysis) {
        let Some(log) = &self.sendlog else {
            return;
        };
        let filter = if !original.queue_id.is_empty() {
            EventFilter {
                queue_id: Some(original.queue_id.clone()),
                limit: 1000,
                ..Default::default()
            }
        } else if let Some(mid) = &analysis.original_message_id {
            EventFilter {
                message_id: Some(mid.clone()),
                limit: 1000,
                ..Default::default()
            }
        } else {
            return;
        };
        let Ok(events) = log.read(move |r| r.events(&filter)).await else {
            return;
        };
        let named: Vec<String> = analysis
            .recipients
            .iter()
            .map(|r| r.address.to_ascii_lowercase())
            .collect();
        let with_rcpt: Vec<&Value> = events
            .iter()
            .filter(|e| !str_of(e, "recipient").is_empty())
            .collect();
        let chosen = with_rcpt
            .iter()
            .find(|e| named.contains(&str_of(e, "recipient").to_ascii_lowercase()))
            .or_else(|| {
                let first = with_rcpt.first()?;
                let all_same = with_rcpt
                    .iter()
                    .all(|e| str_of(e, "recipient") == str_of(first, "recipient"));
                all_same.then_some(first)
            })
            .copied()
            .or_else(|| events.first());
        if let Some(e) = chosen {
            original.queue_id = str_of(e, "queue_id").to_string();
            original.message_id = str_of(e, "message_id").to_string();
            original.recipient = str_of(e, "recipient").to_string();
            original.sender = str_of(e, "sender").to_string();
            original.tenant = str_of(e, "tenant").to_string();
            original.campaign = str_of(e, "campaign").to_string();
            original.class = str_of(e, "class").to_string();
            original.pool = str_of(e, "pool").to_string();
        }
    }

    fn publish(&self, analysis: &Analysis, original: &Original, raw: &[u8]) {
        let report = super::report::parse(raw);
        match analysis.kind {
            ReportKind::Arf => {
                let mut e = Event::new(EventKind::Complaint {
                    feedback_type: analysis.feedback_type.clone().unwrap_or_default(),
                    user_agent: report.user_agent.clone(),
                    reporter: report.reporting_mta.clone(),
                });
                fill(&mut e, original);
                if e.recipient.is_empty() {
                    e.recipient = analysis
                        .recipients
                        .first()
                        .map(|r| r.address.clone())
                        .unwrap_or_default();
                }
                self.bus.publish(e);
            }
            ReportKind::Dsn => {
                // The recipient the send log names, else the first the report names.
                let r = analysis
                    .recipients
                    .iter()
                    .find(|r| r.address.eq_ignore_ascii_case(&original.recipient))
                    .or_else(|| analysis.recipients.first());
                let Some(r) = r else { return };
                let mut e = Event::new(EventKind::BounceReport {
                    format: report.format.to_string(),
                    status: r.status.clone(),
                    diagnostic: r.diagnostic.clone(),
                    category: r.category.clone(),
                    hard: r.hard,
                    reporting_mta: report.reporting_mta.clone(),
                });
                fill(&mut e, original);
                if e.recipient.is_empty() {
                    e.recipient = r.address.clone();
                }
                self.bus.publish(e);
            }
            ReportKind::AutoReply | ReportKind::NotABounce => {}
        }
    }
}

fn str_of<'a>(v: &'a Value, key: &str) -> &'a str {
    v.get(key).and_then(Value::as_str).unwrap_or("")
}

fn fill(e: &mut Event, o: &Original) {
    e.queue_id = o.queue_id.clone();
    e.message_id = o.message_id.clone();
    e.recipient = o.recipient.clone();
    e.sender = o.sender.clone();
    e.tenant = o.tenant.clone();
    e.campaign = o.campaign.clone();
    e.class = o.class.clone();
    e.pool = o.pool.clone();
}

/// The listener hands every accepted mail here. The reply is always 250 once the mail is read:
/// what it says is reported through events, never bounced back to the reporting system.
pub struct InboundAcceptor(pub Arc<Inbound>);

impl Acceptor for InboundAcceptor {
    fn accept(&self, submission: Submission) -> BoxFuture<'static, Result<Accepted, Rejection>> {
        let inbound = self.0.clone();
        Box::pin(async move {
            inbound.handle(submission).await;
            Ok(Accepted {
                queue_id: "report".to_string(),
            })
        })
    }
}
