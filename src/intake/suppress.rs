//! The suppression check at intake, for every way in (SMTP after DATA, HTTP injection): a
//! recipient on the suppression list is taken out of the envelope and published as
//! `suppressed` (stage `smtp` or `http`); when no recipient is left the submission is refused
//! with 550 5.7.1 (for HTTP that is the recipient's own result).
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

/// `envelope` without suppressed recipients, or a 550 5.7.1 when none is left.
pub(super) fn filter(
    store: &SharedStore,
    bus: &EventBus,
    origin: &Origin,
    s: &Streams<'_>,
    mut envelope: Envelope,
) -> Result<Envelope, Rejection> {
    let now = crate::suppression::policy::now_secs();
    let stage = if origin.listener == "http" {
        "http"
    } else {
        "smtp"
    };
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
                bus.publish(e);
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
    if envelope.rcpts.is_empty()
        && let Some(reason) = first_reason
    {
        return Err(Rejection::new(
            550,
            "5.7.1",
            format!("recipient is on the suppression list ({reason}); not sent"),
        ));
    }
    Ok(envelope)
}
