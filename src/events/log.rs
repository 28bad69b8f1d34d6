//! The JSON log subscriber: turns events into the log lines operators (and the e2e tests) read.
//!
//! Owns the shape of those lines, unchanged from when stages logged them themselves:
//! - target `gannet::outcome`: one line per recipient outcome with `event` (`delivered`,
//!   `deferred`, `bounced` — an expiry is a `bounced` line with `type = "expired"` —,
//!   `purged`, `dsn`), `queue_id`, `recipient`, `sender`, `host`, `ip`, `reply`, `attempt`,
//!   `class`, `tenant`, `campaign`, plus `message_id`, `site`, `source_ip`, `pool`, `tls`;
//! - target `gannet::accept`: `event = "accepted"` per received message;
//! - target `gannet::shaping`: `event = "backoff"` per backoff transition;
//! - target `gannet::control`: `suspended`, `resumed`, `flushed` with the actor.
//!
//! Never does: decide or count anything (metrics/ has its own subscriber). Registered
//! lossless by `serve` so no line is ever dropped; a log that cannot keep up pushes back on
//! acceptance through [`super::EventBus::admit`], never on delivery.

use super::{Event, EventKind, Subscription};

/// Log every event the subscription carries until the bus goes away.
pub async fn run(mut sub: Subscription) {
    while let Some(p) = sub.recv().await {
        log_event(&p.event);
        while let Some(p) = sub.try_recv() {
            log_event(&p.event);
        }
    }
}

/// One event as its log line (see the module doc).
pub fn log_event(e: &Event) {
    match &e.kind {
        // Logged when it was accepted; start-up logs how many were published again.
        EventKind::Received { replayed: true, .. } => {}
        EventKind::Received {
            listener,
            client_ip,
            auth,
            size,
            recipients,
            ..
        } => {
            tracing::info!(
                target: "gannet::accept",
                event = "accepted",
                queue_id = %e.queue_id,
                message_id = %e.message_id,
                listener = %listener,
                client_ip = %client_ip,
                auth = %auth,
                recipients = *recipients,
                class = %e.class,
                tenant = %e.tenant,
                campaign = %e.campaign,
                size = *size,
            );
        }
        EventKind::Delivered {
            site,
            mx_host,
            remote_ip,
            source_ip,
            tls,
            reply,
            ..
        } => {
            let tls = tls
                .as_ref()
                .map(|t| format!("{} {}", t.version, t.cipher))
                .unwrap_or_default();
            outcome(
                e,
                "delivered",
                site,
                mx_host,
                remote_ip,
                source_ip,
                &tls,
                reply,
            );
        }
        EventKind::Deferred {
            site,
            mx_host,
            remote_ip,
            source_ip,
            reply,
            ..
        } => outcome(
            e, "deferred", site, mx_host, remote_ip, source_ip, "", reply,
        ),
        EventKind::Bounced {
            site,
            mx_host,
            remote_ip,
            source_ip,
            reply,
            ..
        } => outcome(e, "bounced", site, mx_host, remote_ip, source_ip, "", reply),
        // An expiry is a bounce to everyone who read these lines before events existed.
        EventKind::Expired { reply, .. } => outcome(e, "bounced", "", "", "", "", "", reply),
        EventKind::Purged { .. } => {
            let reply = "550 5.0.0 purged from the queue by an operator";
            outcome(e, "purged", "", "", "", "", "", reply);
        }
        EventKind::Dsn {
            status,
            dsn_queue_id,
            failed,
            error,
        } => match status {
            super::DsnStatus::Sent => tracing::info!(
                target: "gannet::outcome",
                event = "dsn",
                status = "sent",
                queue_id = %e.queue_id,
                message_id = %e.message_id,
                dsn_queue_id = %dsn_queue_id,
                recipient = %e.recipient,
                failed = *failed,
            ),
            super::DsnStatus::Failed => tracing::error!(
                target: "gannet::outcome",
                event = "dsn",
                status = "failed",
                queue_id = %e.queue_id,
                message_id = %e.message_id,
                recipient = %e.recipient,
                failed = *failed,
                error = %error,
                "cannot queue DSN; it stays owed and is retried"
            ),
            super::DsnStatus::Held => tracing::info!(
                target: "gannet::outcome",
                event = "dsn",
                status = "held",
                queue_id = %e.queue_id,
                message_id = %e.message_id,
                recipient = %e.recipient,
                failed = *failed,
            ),
        },
        EventKind::Suspended {
            actor,
            suspension_id,
            filter,
            held,
            reason,
        } => tracing::info!(
            target: "gannet::control",
            event = "suspended",
            id = *suspension_id,
            filter = %filter,
            held = *held,
            actor = %actor,
            reason = %reason,
        ),
        EventKind::Resumed {
            actor,
            filter,
            removed,
            released,
        } => tracing::info!(
            target: "gannet::control",
            event = "resumed",
            filter = %filter,
            removed = *removed,
            released = *released,
            actor = %actor,
        ),
        // Who read the send log; the person looked up stays in the (sealed) send log only.
        EventKind::LogAccess {
            actor,
            action,
            format,
            rows,
            ..
        } => tracing::info!(
            target: "gannet::control",
            event = "log_access",
            action = %action,
            format = %format,
            rows = *rows,
            actor = %actor,
        ),
        EventKind::Erased {
            actor,
            subject,
            rows,
        } => tracing::info!(
            target: "gannet::control",
            event = "erased",
            subject = %subject,
            rows = *rows,
            actor = %actor,
        ),
        EventKind::Console {
            actor,
            action,
            detail,
            client_ip,
        } => tracing::info!(
            target: "gannet::control",
            event = "console",
            action = %action,
            detail = %detail,
            client_ip = %client_ip,
            actor = %actor,
        ),
        // Bounce reports, complaints, opt-outs and suppressions: one line with the event's
        // own fields, so the line never drifts from the event (the recipient stays out of the
        // log like everywhere else; the send log keeps it sealed).
        EventKind::BounceReport { .. }
        | EventKind::Complaint { .. }
        | EventKind::Unsubscribed { .. }
        | EventKind::Suppressed { .. }
        | EventKind::SuppressionChanged { .. }
        | EventKind::InboundRejected { .. } => {
            let fields = serde_json::to_value(&e.kind).unwrap_or_default();
            tracing::info!(
                target: "gannet::bounce",
                event = e.type_name(),
                queue_id = %e.queue_id,
                tenant = %e.tenant,
                campaign = %e.campaign,
                fields = %fields,
            );
        }
        // An anomaly is a warning for whoever reads the log at 3 a.m.: what, where, how bad.
        EventKind::Anomaly {
            metric,
            severity,
            state,
            provider,
            rate,
            threshold,
            sample,
            action,
            ..
        } => tracing::warn!(
            target: "gannet::anomaly",
            event = "anomaly",
            metric = %metric,
            severity = %severity,
            state = %state,
            tenant = %e.tenant,
            campaign = %e.campaign,
            pool = %e.pool,
            provider = %provider,
            rate = *rate,
            threshold = *threshold,
            sample = *sample,
            action = %action,
        ),
        EventKind::Flushed { actor, released } => tracing::info!(
            target: "gannet::control",
            event = "flushed",
            released = *released,
            actor = %actor,
        ),
        EventKind::Backoff {
            change,
            action,
            site,
            source,
            rule,
            seconds,
        } => {
            let what = match change.as_str() {
                "started" => "backoff started",
                "extended" => "backoff extended",
                _ => "backoff ended, returned to normal",
            };
            let src = if source.is_empty() {
                String::new()
            } else {
                format!(" source {source}")
            };
            let d = humantime::format_duration(std::time::Duration::from_secs(*seconds));
            let text = if change == "ended" {
                format!("{what}: site {site}{src}: {action} by rule {rule} lasted {d}")
            } else {
                format!("{what}: site {site}{src}: {action} for {d} (rule {rule})")
            };
            tracing::info!(
                target: "gannet::shaping",
                event = "backoff",
                kind = %change,
                action = %action,
                site = %site,
                source = %source,
                rule = %rule,
                seconds = *seconds,
                "{text}"
            );
        }
    }
}

#[allow(clippy::too_many_arguments)]
fn outcome(
    e: &Event,
    event: &str,
    site: &str,
    host: &str,
    ip: &str,
    source_ip: &str,
    tls: &str,
    reply: &str,
) {
    tracing::info!(
        target: "gannet::outcome",
        event,
        r#type = e.type_name(),
        queue_id = %e.queue_id,
        message_id = %e.message_id,
        recipient = %e.recipient,
        sender = %e.sender,
        host,
        ip,
        reply,
        attempt = e.attempt,
        class = %e.class,
        tenant = %e.tenant,
        campaign = %e.campaign,
        pool = %e.pool,
        site,
        source_ip,
        tls,
    );
}
