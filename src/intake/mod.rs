//! Intake: turns a listener's [`Submission`] into a durable, queued message.
//!
//! Owns the steps between "the client sent the whole message" and "250": choosing the traffic
//! class (injection field, then `X-Gannet-Class`, then the authenticated user's default, then
//! the listener's default), reading tenant and campaign (`X-Gannet-Tenant`,
//! `X-Gannet-Campaign`), removing every `X-Gannet-*` control header, adding `Message-ID` and
//! `Date` when missing, sender authorisation (`authz`: allowed From domains and classes per
//! listener, SMTP user and API token), DKIM signing, making the message durable in the spool,
//! and queueing it.
//!
//! Invariant: `accept` resolves Ok only after the spool's fdatasync covered the message.
//! Invariant: the `received` event is published here and nowhere else, after the fdatasync
//! and before the message is queued (so it precedes every outcome event of the message); at
//! start-up, [`replay_received`] publishes it again for recovered messages that may have lost
//! it (see `received`).
//! Invariant: before any work, intake waits on [`EventBus::admit`]: a lossless event
//! subscriber that falls behind holds back acceptance (451 after [`ADMIT_WAIT`]), never
//! delivery, and never loses an event.
//! Never does: talk to clients (listeners do) or deliver (queue/).

mod authz;
pub mod received;
mod suppress;

use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use futures::future::BoxFuture;

use crate::config::{Config, SuppressedAction};
use crate::events::EventBus;
use crate::message::{Accepted, Acceptor, Rejection, Submission, headers};
use crate::metrics::Metrics;
use crate::queue::{Queue, QueuedMessage};
use crate::spool::{MessageRecord, RcptState, SpoolError};

/// Signs messages before they are spooled (DKIM). Implemented by `auth`; kept as a trait so
/// intake does not depend on how signing is configured.
pub trait Signer: Send + Sync + 'static {
    /// Header lines (CRLF-terminated) to prepend, empty for none, or a rejection by policy.
    fn sign(&self, message: &[u8], now: SystemTime) -> Result<Vec<u8>, Rejection>;

    /// Sign one of Gannet's own notices (a DSN from MAILER-DAEMON@hostname): with a key when
    /// one applies, otherwise unsigned even where policy refuses unsigned mail (a DSN must
    /// always be sendable).
    fn sign_notice(&self, message: &[u8], now: SystemTime) -> Result<Vec<u8>, Rejection>;
}

/// The intake pipeline. Cheap to clone.
#[derive(Clone)]
pub struct Intake {
    inner: Arc<Inner>,
}

struct Inner {
    config: Arc<Config>,
    queue: Queue,
    signer: Option<Arc<dyn Signer>>,
    #[allow(dead_code)] // kept for intake's own gauges; counters come from the event stream
    metrics: Metrics,
    bus: EventBus,
    /// The suppression list (`with_suppressions`); None = nothing is checked.
    suppressions: Option<crate::suppression::SharedStore>,
}

/// Longest value accepted in X-Gannet-Tenant / X-Gannet-Campaign.
const MAX_ID_LEN: usize = 128;

/// How long a submission waits for lossless event subscribers to catch up before it is
/// refused with a temporary error (the client retries; nothing is lost).
pub const ADMIT_WAIT: Duration = Duration::from_secs(30);

impl Intake {
    pub fn new(
        config: Arc<Config>,
        queue: Queue,
        signer: Option<Arc<dyn Signer>>,
        metrics: Metrics,
        bus: EventBus,
    ) -> Intake {
        Intake {
            inner: Arc::new(Inner {
                config,
                queue,
                signer,
                metrics,
                bus,
                suppressions: None,
            }),
        }
    }

    /// Check every recipient against `store` before spooling (see `suppress`).
    pub fn with_suppressions(self, store: crate::suppression::SharedStore) -> Intake {
        let mut inner = Arc::try_unwrap(self.inner).unwrap_or_else(|a| Inner {
            config: a.config.clone(),
            queue: a.queue.clone(),
            signer: a.signer.clone(),
            metrics: a.metrics.clone(),
            bus: a.bus.clone(),
            suppressions: a.suppressions.clone(),
        });
        inner.suppressions = Some(store);
        Intake {
            inner: Arc::new(inner),
        }
    }

    /// The suppression check for SMTP `RCPT TO` (see `suppress::at_rcpt`): a refusal when the
    /// recipient is suppressed for everyone, or for the tenant of the authenticated SMTP user
    /// (`[[smtp_user]] tenant`), and `[suppression] smtp_action = "reject"`; None otherwise
    /// (with `drop`, suppressed recipients are accepted and left out after DATA).
    pub fn refuse_at_rcpt(
        &self,
        mail_from: &str,
        rcpt: &str,
        auth_user: Option<&str>,
    ) -> Option<Rejection> {
        let store = self.inner.suppressions.as_ref()?;
        if self.inner.config.suppression.smtp_action != SuppressedAction::Reject {
            return None;
        }
        let tenant = self.user_tenant(auth_user).unwrap_or("");
        suppress::at_rcpt(store, &self.inner.bus, mail_from, rcpt, tenant)
    }

    /// The tenant `[[smtp_user]] tenant` binds the authenticated user to, if any.
    fn user_tenant(&self, auth_user: Option<&str>) -> Option<&str> {
        let user = auth_user?;
        self.inner
            .config
            .smtp_users
            .iter()
            .find(|u| u.name == user)?
            .tenant
            .as_deref()
    }

    fn choose_class(&self, sub: &Submission, header: Option<String>) -> Result<String, Rejection> {
        let c = &self.inner.config;
        let (class, origin) = if let Some(cl) = &sub.class {
            (cl.clone(), "the injection request")
        } else if let Some(h) = header {
            (h, "X-Gannet-Class")
        } else if let Some(cl) = sub
            .origin
            .auth_user
            .as_ref()
            .and_then(|u| c.smtp_users.iter().find(|x| &x.name == u))
            .and_then(|u| u.default_class.clone())
        {
            (cl, "the SMTP user's default_class")
        } else if let Some(cl) = c
            .listeners
            .iter()
            .find(|l| l.name == sub.origin.listener)
            .and_then(|l| l.default_class.clone())
        {
            (cl, "the listener's default_class")
        } else if let Some(fallback) = c.fallback_class() {
            (fallback.to_string(), "the configured default_class")
        } else {
            return Err(Rejection::new(
                451,
                "4.3.5",
                "no traffic class is configured",
            ));
        };
        if !c.classes.contains_key(&class) {
            let known: Vec<&str> = c.classes.keys().map(String::as_str).collect();
            return Err(Rejection::new(
                550,
                "5.7.0",
                format!(
                    "unknown traffic class {class:?} (from {origin}); configured classes: {}",
                    known.join(", ")
                ),
            )
            .with_field("class"));
        }
        Ok(class)
    }

    async fn process(&self, sub: Submission) -> Result<Accepted, Rejection> {
        if tokio::time::timeout(ADMIT_WAIT, self.inner.bus.admit())
            .await
            .is_err()
        {
            tracing::warn!(
                listener = %sub.origin.listener,
                "event subscribers are {}s behind; answering 4xx until they catch up",
                ADMIT_WAIT.as_secs()
            );
            return Err(Rejection::new(
                451,
                "4.3.2",
                "event log behind, try again shortly",
            ));
        }
        let Submission {
            envelope,
            mut body,
            origin,
            class,
            tenant,
            campaign,
        } = sub;
        // One pass over the header block for everything intake reads from it.
        let facts = HeaderFacts::read(&body);
        check_hop_count(facts.hops, self.inner.config.hop_limit)?;
        let header_class = facts.class;
        let header_tenant = facts.tenant;
        let header_campaign = facts.campaign;
        // A/B label (set by HTTP injection's `variant`, or by an SMTP client): kept in the
        // record's attrs so logs and events can carry it.
        let variant = clean_id(facts.variant, "variant")?;
        let probe = Submission {
            envelope: envelope.clone(),
            body: Vec::new(),
            origin: origin.clone(),
            class,
            tenant: None,
            campaign: None,
        };
        let class = self.choose_class(&probe, header_class)?;
        authz::check(&self.inner.config, &origin, &class, &envelope.rcpts, &body)?;
        // An SMTP user bound to a tenant sends for that tenant whatever the header says (its
        // recipients were already checked against that tenant's list at RCPT).
        let user_tenant = self
            .user_tenant(origin.auth_user.as_deref())
            .map(str::to_string);
        let tenant = clean_id(tenant.or(user_tenant).or(header_tenant), "tenant")?;
        let campaign = clean_id(campaign.or(header_campaign), "campaign")?;
        let envelope = match &self.inner.suppressions {
            Some(store) => {
                let drop = origin.listener != "http"
                    && self.inner.config.suppression.smtp_action == SuppressedAction::Drop;
                let streams = suppress::Streams {
                    class: &class,
                    tenant: &tenant,
                    campaign: &campaign,
                };
                match suppress::filter(store, &self.inner.bus, &origin, &streams, drop, envelope)? {
                    suppress::Filtered::Send(envelope) => envelope,
                    suppress::Filtered::Dropped { id } => return Ok(Accepted { queue_id: id }),
                }
            }
            None => envelope,
        };
        if facts.control {
            strip_control_headers(&mut body);
        }
        let message_id = match facts.message_id {
            Some(id) if facts.has_date => id,
            had => {
                let seed = format!(
                    "{:x}.{:016x}",
                    SystemTime::now()
                        .duration_since(UNIX_EPOCH)
                        .unwrap_or(Duration::ZERO)
                        .as_micros(),
                    rand::random::<u64>()
                );
                headers::ensure_message_id_and_date(&mut body, &self.inner.config.hostname, &seed);
                had.unwrap_or_else(|| format!("{seed}@{}", self.inner.config.hostname))
            }
        };
        if let Some(signer) = &self.inner.signer {
            let signer = signer.clone();
            let notice = origin.listener == crate::config::DSN_LISTENER;
            // RSA signing costs about a millisecond: keep it off the async workers.
            let (b, sig) = tokio::task::spawn_blocking(move || {
                let sig = if notice {
                    signer.sign_notice(&body, SystemTime::now())
                } else {
                    signer.sign(&body, SystemTime::now())
                };
                (body, sig)
            })
            .await
            .map_err(|e| Rejection::new(451, "4.3.0", format!("signing task failed: {e}")))?;
            body = b;
            let sig = sig?;
            if !sig.is_empty() {
                headers::prepend(&mut body, &sig);
            }
        }
        let received_at = SystemTime::now();
        let record = MessageRecord {
            received_at_ms: received_at
                .duration_since(UNIX_EPOCH)
                .unwrap_or(Duration::ZERO)
                .as_millis() as u64,
            mail_from: envelope.mail_from,
            rcpts: envelope.rcpts,
            class,
            tenant,
            campaign,
            body,
            attrs: [("message_id".to_string(), message_id)].into(),
        };
        let mut record = record;
        if !variant.is_empty() {
            record.attrs.insert("variant".into(), variant);
        }
        // The origin goes into the record so the `received` event can be rebuilt at recovery.
        let origin_attrs = [
            (received::ATTR_LISTENER, origin.listener.clone()),
            (received::ATTR_CLIENT_IP, origin.client_ip.to_string()),
            (
                received::ATTR_AUTH,
                origin.auth_user.clone().unwrap_or_default(),
            ),
        ];
        for (k, v) in origin_attrs {
            if !v.is_empty() {
                record.attrs.insert(k.to_string(), v);
            }
        }
        let location = self
            .inner
            .queue
            .spool()
            .append(&record)
            .await
            .map_err(|e| {
                // A full disk is reported by the spool once per episode, not per message.
                if !matches!(e, SpoolError::Full { .. }) {
                    tracing::error!(error = %e, "cannot make a message durable; answering 4xx");
                }
                match e {
                    SpoolError::Busy(_) => {
                        Rejection::new(451, "4.3.1", "spool busy, try again shortly")
                    }
                    // RFC 3463 X.3.1 "mail system full"; 452 is RFC 5321's "insufficient
                    // system storage".
                    SpoolError::Full { .. } => Rejection::new(
                        452,
                        "4.3.1",
                        "insufficient system storage: the spool disk is full, try again later",
                    ),
                    SpoolError::TooLarge { .. } => {
                        Rejection::new(552, "5.3.4", "message too big for the spool")
                    }
                    _ => Rejection::new(451, "4.3.0", "local storage error, try again later"),
                }
            })?;
        let states = vec![RcptState::Pending; record.rcpts.len()];
        let (msg, body) = QueuedMessage::from_record(location, record, states);
        let msg = Arc::new(msg);
        let queue_id = msg.queue_id.clone();
        let pool = self.inner.queue.class_pool(&msg.class);
        let ev = received::event(&msg, body.len() as u64, pool, false);
        self.inner.bus.publish(ev);
        self.inner.queue.enqueue(msg, Some(Arc::new(body)));
        Ok(Accepted { queue_id })
    }
}

impl Acceptor for Intake {
    fn accept(&self, submission: Submission) -> BoxFuture<'static, Result<Accepted, Rejection>> {
        let this = self.clone();
        Box::pin(async move { this.process(submission).await })
    }
}

/// What intake reads from a message's header block, found in one pass (the header scan was
/// the largest part of intake's own CPU when every field was looked up separately).
#[derive(Debug, Default, PartialEq)]
struct HeaderFacts {
    /// `Received:` fields (loop protection).
    hops: usize,
    /// The first `X-Gannet-Class`, `-Tenant`, `-Campaign`, `-Variant` values (unfolded, trimmed).
    class: Option<String>,
    tenant: Option<String>,
    campaign: Option<String>,
    variant: Option<String>,
    /// Any `X-Gannet-*` field present (to be removed).
    control: bool,
    /// The first `Message-ID` without angle brackets, and whether a `Date` is present.
    message_id: Option<String>,
    has_date: bool,
}

impl HeaderFacts {
    fn read(body: &[u8]) -> HeaderFacts {
        let mut f = HeaderFacts::default();
        let value = |v: &[u8]| {
            String::from_utf8_lossy(v)
                .replace("\r\n", "")
                .trim()
                .to_string()
        };
        for (name, v, _) in headers::fields(body) {
            let first = |slot: &mut Option<String>| {
                if slot.is_none() {
                    *slot = Some(value(v));
                }
            };
            if name.eq_ignore_ascii_case("received") {
                f.hops += 1;
            } else if name.eq_ignore_ascii_case("date") {
                f.has_date = true;
            } else if name.eq_ignore_ascii_case("message-id") {
                if f.message_id.is_none() {
                    let id = value(v);
                    f.message_id =
                        Some(id.trim_start_matches('<').trim_end_matches('>').to_string());
                }
            } else if name.len() >= 9 && name[..9].eq_ignore_ascii_case("x-gannet-") {
                f.control = true;
                match name[9..].to_ascii_lowercase().as_str() {
                    "class" => first(&mut f.class),
                    "tenant" => first(&mut f.tenant),
                    "campaign" => first(&mut f.campaign),
                    "variant" => first(&mut f.variant),
                    _ => {}
                }
            }
        }
        f
    }
}

/// Loop protection (RFC 5321 §6.3): more than `limit` `Received:` headers means the message
/// is going round in circles. Refused at DATA rather than bounced later: the loop shows in the
/// message itself, so it is known while the sending MTA is still connected; a refusal leaves the
/// notice to that MTA (which knows where it came from), sends no DSN of ours into the loop and
/// takes no spool space.
#[cfg(test)]
fn check_hops(body: &[u8], limit: usize) -> Result<(), Rejection> {
    check_hop_count(HeaderFacts::read(body).hops, limit)
}

fn check_hop_count(hops: usize, limit: usize) -> Result<(), Rejection> {
    if hops > limit {
        return Err(Rejection::new(
            554,
            "5.4.6",
            format!(
                "mail loop: the message has {hops} Received: headers, more than hop_limit {limit}"
            ),
        ));
    }
    Ok(())
}

/// Tenant / campaign ids: printable, no spaces, bounded; absent is "".
fn clean_id(v: Option<String>, field: &str) -> Result<String, Rejection> {
    let Some(v) = v else {
        return Ok(String::new());
    };
    let v = v.trim().to_string();
    if v.len() > MAX_ID_LEN || v.chars().any(|c| c.is_control() || c.is_whitespace()) {
        return Err(Rejection::new(
            550,
            "5.6.0",
            format!("{field} id must be at most {MAX_ID_LEN} printable characters without spaces"),
        )
        .with_field(field));
    }
    Ok(v)
}

/// Remove every `X-Gannet-*` header: they are instructions to Gannet, not part of the mail.
fn strip_control_headers(body: &mut Vec<u8>) {
    let names: Vec<String> = headers::fields(body)
        .into_iter()
        .filter(|(n, _, _)| n.len() >= 9 && n[..9].eq_ignore_ascii_case("x-gannet-"))
        .map(|(n, _, _)| n)
        .collect();
    for n in names {
        headers::remove(body, &n);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn strips_every_control_header() {
        let mut b =
            b"X-Gannet-Class: t\r\nFrom: a@b\r\nX-GANNET-Tenant: x\r\n\r\nX-Gannet-Body: stays\r\n"
                .to_vec();
        strip_control_headers(&mut b);
        assert_eq!(b, b"From: a@b\r\n\r\nX-Gannet-Body: stays\r\n");
    }

    /// Loop protection: more than `hop_limit` Received: headers (header block only) → 554 5.4.6.
    #[test]
    fn hop_limit_table() {
        let msg = |n: usize| {
            let mut m = String::new();
            for i in 0..n {
                m.push_str(&format!(
                    "Received: from h{i} by h{};\r\n\tThu, 3 Dec 2026\r\n",
                    i + 1
                ));
            }
            m.push_str("Subject: x\r\n\r\nReceived: in the body does not count\r\n");
            m.into_bytes()
        };
        let cases = [
            (0, 1, true),
            (1, 1, true),
            (2, 1, false),
            (50, 50, true),
            (51, 50, false),
        ];
        for (n, limit, ok) in cases {
            let r = check_hops(&msg(n), limit);
            assert_eq!(r.is_ok(), ok, "{n} headers, limit {limit}: {r:?}");
            if let Err(e) = r {
                assert_eq!((e.code, e.enhanced.as_str()), (554, "5.4.6"));
                assert!(
                    e.message.contains(&format!("{n} Received:")),
                    "{}",
                    e.message
                );
            }
        }
    }

    /// One pass reads what separate `headers::get` calls read.
    #[test]
    fn header_facts_match_separate_lookups() {
        let m = b"Received: a\r\nX-Gannet-Class: promo\r\nx-gannet-variant:  B\r\nX-GANNET-Tenant: t\r\nMessage-ID:\r\n <id@h>\r\nReceived: b\r\nX-Gannet-Class: second\r\n\r\nMessage-ID: <body@x>\r\n";
        let f = HeaderFacts::read(m);
        assert_eq!(f.hops, 2);
        for (got, name) in [
            (&f.class, "X-Gannet-Class"),
            (&f.tenant, "X-Gannet-Tenant"),
            (&f.campaign, "X-Gannet-Campaign"),
            (&f.variant, "X-Gannet-Variant"),
        ] {
            assert_eq!(got, &headers::get(m, name), "{name}");
        }
        assert_eq!(f.message_id.as_deref(), Some("id@h"));
        assert!(f.control && !f.has_date);
        assert!(!HeaderFacts::read(b"From: a@b\r\nDate: x\r\n\r\n").control);
    }

    #[test]
    fn ids_are_checked() {
        assert_eq!(clean_id(None, "tenant").unwrap(), "");
        assert_eq!(clean_id(Some(" acme ".into()), "tenant").unwrap(), "acme");
        let e = clean_id(Some("a b".into()), "campaign").unwrap_err();
        assert_eq!(e.field.as_deref(), Some("campaign"));
    }
}
