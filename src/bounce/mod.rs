//! Bounces: what Gannet makes of every "no" — reply classification (`classify`, rules from
//! `config/bounce_rules.toml`) — and the delivery status notifications Gannet sends (RFC 3464)
//! when recipients fail (`dsn`, `notify_loop`).
//!
//! Never does: decide that a recipient failed or when to retry (queue/), suppress an address
//! (suppression/), or send anything itself (the DSN goes through intake like any other message).

pub mod classify;
pub mod dsn;
#[doc(hidden)]
pub mod samples;

pub use classify::{Classification, Classifier, ReplyView, RuleRef, RulesError, split_reply};

use std::net::{IpAddr, Ipv4Addr};
use std::time::{Duration, UNIX_EPOCH};

use tokio::sync::mpsc;

use crate::events::{DsnStatus, Event, EventBus, EventKind};
use crate::message::{Envelope, Origin, SharedAcceptor, Submission};
use crate::queue::BounceRequest;
use crate::spool::Spool;

/// Turn bounce requests into DSN messages and submit them like any other mail. Runs until the
/// channel closes. The failed message is released from the spool only after its DSN is durable.
/// Publishes one `dsn` event per request (sent, or failed with the error).
pub async fn notify_loop(
    mut rx: mpsc::Receiver<BounceRequest>,
    acceptor: SharedAcceptor,
    spool: Spool,
    hostname: String,
    bus: EventBus,
) {
    while let Some(req) = rx.recv().await {
        let msg = &req.msg;
        let original = match spool.read(msg.location).await {
            Ok(r) => r.body,
            Err(e) => {
                tracing::warn!(queue_id = %msg.queue_id, error = %e, "original message unreadable; DSN goes without its header");
                Vec::new()
            }
        };
        let arrival = httpdate::fmt_http_date(
            UNIX_EPOCH
                + Duration::from_millis(
                    msg.received_at
                        .duration_since(UNIX_EPOCH)
                        .unwrap_or_default()
                        .as_millis() as u64,
                ),
        )
        .replace("GMT", "+0000");
        let input = dsn::DsnInput {
            reporting_mta: &hostname,
            to: &msg.mail_from,
            queue_id: &msg.queue_id,
            arrival_date: arrival,
            failed: req
                .failed
                .iter()
                .map(|(a, r, h)| dsn::FailedRecipient {
                    address: a,
                    reply: r,
                    remote_host: h.as_deref(),
                })
                .collect(),
            original: &original,
        };
        let dsn_event = |status, dsn_queue_id: String, error: String| {
            let mut e = Event::new(EventKind::Dsn {
                status,
                dsn_queue_id,
                failed: req.failed.len() as u32,
                error,
            });
            e.queue_id = msg.queue_id.clone();
            e.message_id = msg.message_id.clone();
            e.recipient = msg.mail_from.clone();
            e.sender = msg.mail_from.clone();
            e.tenant = msg.tenant.clone();
            e.campaign = msg.campaign.clone();
            e.class = msg.class.clone();
            e.pool = req.pool.clone();
            e
        };
        let body = match dsn::build(&input) {
            Ok(b) => b,
            Err(e) => {
                bus.publish(dsn_event(
                    DsnStatus::Failed,
                    String::new(),
                    format!("cannot build DSN: {e}"),
                ));
                continue;
            }
        };
        let sub = Submission {
            envelope: Envelope {
                mail_from: String::new(),
                rcpts: vec![msg.mail_from.clone()],
            },
            body,
            origin: Origin {
                listener: "dsn".into(),
                client_ip: IpAddr::V4(Ipv4Addr::LOCALHOST),
                helo: hostname.clone(),
                auth_user: None,
                api_token: None,
            },
            class: Some(msg.class.clone()),
            tenant: (!msg.tenant.is_empty()).then(|| msg.tenant.clone()),
            campaign: (!msg.campaign.is_empty()).then(|| msg.campaign.clone()),
        };
        match acceptor.accept(sub).await {
            Ok(a) => {
                let seq = bus.publish(dsn_event(DsnStatus::Sent, a.queue_id, String::new()));
                if req.release_after {
                    bus.wait_durable(seq).await;
                    spool.complete(msg.location.key);
                }
            }
            Err(e) => {
                bus.publish(dsn_event(DsnStatus::Failed, String::new(), e.to_string()));
            }
        }
    }
}
