//! The suppression check at intake, for every way in: at SMTP `RCPT TO` (entries for every
//! stream: global ones, and the tenant's when the SMTP user is bound to one), and
//! for every recipient once the message is complete (SMTP after DATA, HTTP injection), when
//! its tenant, class and campaign are known. A suppressed recipient is taken out of the
//! envelope and published as `suppressed` (stage `smtp` or `http`).
//!
//! What happens then follows `[suppression] smtp_action`:
//! - `reject` (default): SMTP refuses a globally suppressed recipient at RCPT with 550 5.7.1
//!   ([`at_rcpt`]); after DATA, when no recipient is left, the message gets 550 5.7.1. HTTP
//!   always answers this way (it is that recipient's result).
//! - `drop`: SMTP accepts every recipient; after DATA the suppressed ones are silently left
//!   out, and when none is left the client still gets `250 ... queued as S...`: an id that
//!   names no spooled message (real ids are hex digits only) and that the `suppressed` events
//!   carry as their queue id, so the send log finds them.
//!
//! Never changes the list; reads it through the `SharedStore` handle.

use crate::events::{Event, EventBus, EventKind};
use crate::message::{Envelope, Origin, Rejection};
use crate::suppression::{Lookup, SharedStore};

/// What the check needs to know about the message.
pub(super) struct Streams<'a> {
    pub class: &'a str,
    pub tenant: &'a str,
    pub campaign: &'a str,
}

/// What is left to send.
pub(super) enum Filtered {
    /// The envelope without its suppressed recipients (at least one is left).
    Send(Envelope),
    /// Every recipient was suppressed and `smtp_action = "drop"`: answer 250 with this id.
    Dropped { id: String },
}

fn refusal(reason: &str) -> Rejection {
    Rejection::new(
        550,
        "5.7.1",
        format!("recipient is on the suppression list ({reason}); not sent"),
    )
}

/// `envelope` without suppressed recipients; when none is left, a 550 5.7.1 (or, with
/// `drop`, [`Filtered::Dropped`]).
pub(super) fn filter(
    store: &SharedStore,
    bus: &EventBus,
    origin: &Origin,
    s: &Streams<'_>,
    drop: bool,
    mut envelope: Envelope,
) -> Result<Filtered, Rejection> {
    let now = crate::suppression::policy::now_secs();
    let stage = if origin.listener == "http" {
        "http"
    } else {
        "smtp"
    };
    let mut events = Vec::new();
    let mut first_reason = None;
    envelope.rcpts.retain(|rcpt| {
        let lookup = Lookup {
            address: rcpt,
            tenant: s.tenant,
            class: s.class,
            campaign: s.campaign,
            list: "",
        };
        match store.check(&lookup, now) {
            Ok(Some(entry)) => {
                let mut e = Event::new(EventKind::Suppressed {
                    stage: stage.to_string(),
                    reason: entry.reason.clone(),
                    scope: entry.scope_text(),
                });
                e.recipient = rcpt.clone();
                e.sender = envelope.mail_from.clone();
                e.tenant = s.tenant.to_string();
                e.campaign = s.campaign.to_string();
                e.class = s.class.to_string();
                events.push(e);
                first_reason.get_or_insert(entry.reason);
                false
            }
            Ok(None) => true,
            Err(e) => {
                // Fail open: the list is unreadable, refusing all mail would be worse; loud.
                tracing::error!(error = %e, "suppression check failed at intake; accepting");
                true
            }
        }
    });
    let all_gone = envelope.rcpts.is_empty() && first_reason.is_some();
    let dropped_id = (all_gone && drop).then(|| format!("S{:020X}", rand::random::<u128>() >> 48));
    for mut e in events {
        if let Some(id) = &dropped_id {
            e.queue_id = id.clone();
        }
        bus.publish(e);
    }
    if let Some(id) = dropped_id {
        return Ok(Filtered::Dropped { id });
    }
    if all_gone && let Some(reason) = first_reason {
        return Err(refusal(&reason));
    }
    Ok(Filtered::Send(envelope))
}

/// The check at SMTP `RCPT TO`, before the message's streams are known: entries for every
/// stream apply, of every tenant (hard bounces, complaints, global manual entries) and, when
/// the client is an SMTP user bound to a tenant (`tenant` not empty), of that tenant; entries
/// of one stream are checked after DATA. A hit is published as `suppressed` (stage `smtp`)
/// and answered 550 5.7.1.
pub(super) fn at_rcpt(
    store: &SharedStore,
    bus: &EventBus,
    mail_from: &str,
    rcpt: &str,
    tenant: &str,
) -> Option<Rejection> {
    let lookup = Lookup {
        address: rcpt,
        tenant,
        ..Lookup::default()
    };
    match store.check(&lookup, crate::suppression::policy::now_secs()) {
        Ok(Some(entry)) => {
            let mut e = Event::new(EventKind::Suppressed {
                stage: "smtp".to_string(),
                reason: entry.reason.clone(),
                scope: entry.scope_text(),
            });
            e.recipient = rcpt.to_string();
            e.sender = mail_from.to_string();
            e.tenant = tenant.to_string();
            bus.publish(e);
            Some(refusal(&entry.reason))
        }
        Ok(None) => None,
        Err(e) => {
            tracing::error!(error = %e, "suppression check failed at RCPT; accepting");
            None
        }
    }
}
