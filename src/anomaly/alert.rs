//! The mail that tells administrators of an anomaly: built here, made durable and delivered by
//! Gannet itself (intake, the same path as DSNs), in the alert class (transactional by
//! default) so it never waits behind the bulk mail that caused the anomaly.
//!
//! Owns: the text of the alert (what, where, how bad, what the breaker did, how to resume).
//! Never does: decide whether to alert (the detector task does), retry forever (one retry
//! after a refusal; the anomaly is also an event, a metric and a log line).

use std::net::{IpAddr, Ipv4Addr};
use std::time::Duration;

use mail_builder::MessageBuilder;
use mail_builder::headers::raw::Raw;

use super::detector::Change;
use crate::message::{Envelope, Origin, SharedAcceptor, Submission};

/// Listener name on the `received` event of an alert mail.
pub const ALERT_LISTENER: &str = "anomaly";

/// Where alerts go and how they are sent.
#[derive(Clone)]
pub struct Alerter {
    pub acceptor: SharedAcceptor,
    pub admins: Vec<String>,
    pub from: String,
    pub class: Option<String>,
    pub hostname: String,
}

/// One line naming the anomaly, for the subject, the suspension's reason and logs.
pub fn describe(c: &Change, window_secs: u64) -> String {
    let k = &c.key;
    let mut what = format!(
        "{} {} {:.2}% (threshold {:.2}%, {} in the window of {}s)",
        c.severity.as_str(),
        c.metric.as_str(),
        c.rate * 100.0,
        c.threshold * 100.0,
        c.sample,
        window_secs
    );
    for (name, v) in [
        ("tenant", &k.tenant),
        ("campaign", &k.campaign),
        ("pool", &k.pool),
        ("provider", &k.provider),
    ] {
        if !v.is_empty() {
            what.push_str(&format!(" {name}={v}"));
        }
    }
    what
}

/// The alert message for `c`. `suspension` names the breaker's suspension, when it made one.
pub fn build(
    a: &Alerter,
    c: &Change,
    window_secs: u64,
    suspension: Option<u64>,
) -> std::io::Result<Vec<u8>> {
    let k = &c.key;
    let mut text = format!(
        "Gannet ({host}) saw an anomaly:\r\n\r\n  {what}\r\n\r\n\
         metric:    {metric}\r\n\
         severity:  {severity}\r\n\
         rate:      {rate:.3}% over the last {window_secs}s ({sample} in the denominator)\r\n\
         threshold: {threshold:.3}%\r\n\
         baseline:  {baseline:.3}% (EWMA before the window)\r\n\
         tenant:    {tenant}\r\n\
         campaign:  {campaign}\r\n\
         pool:      {pool}\r\n\
         provider:  {provider}\r\n\r\n",
        host = a.hostname,
        what = describe(c, window_secs),
        metric = c.metric.as_str(),
        severity = c.severity.as_str(),
        rate = c.rate * 100.0,
        sample = c.sample,
        threshold = c.threshold * 100.0,
        baseline = c.baseline * 100.0,
        tenant = k.tenant,
        campaign = k.campaign,
        pool = k.pool,
        provider = k.provider,
    );
    match suspension {
        Some(id) => {
            let mut args = String::new();
            if !k.tenant.is_empty() {
                args.push_str(&format!(" --tenant {}", k.tenant));
            }
            args.push_str(&format!(" --campaign {}", k.campaign));
            text.push_str(&format!(
                "The circuit breaker suspended this campaign (suspension {id}): its queued mail \
                 is held, nothing is bounced. After fixing the cause, release it with\r\n\r\n  \
                 gannet queue resume{args}\r\n\r\n\
                 or POST /api/v1/queues/resume with the same filter.\r\n"
            ));
        }
        None => text.push_str(
            "Nothing was suspended. Look at the outcomes of this key in the send log and \
             gannet_recipients_total / gannet_bounces_total.\r\n",
        ),
    }
    let message_id = format!("anomaly.{:016x}@{}", rand::random::<u64>(), a.hostname);
    let subject = format!("[gannet] {}", describe(c, window_secs));
    MessageBuilder::new()
        .message_id(message_id)
        .from(("Gannet anomaly detector", a.from.as_str()))
        .to(a.admins.iter().map(|s| s.as_str()).collect::<Vec<&str>>())
        .subject(subject)
        .header("Auto-Submitted", Raw::new("auto-generated"))
        .text_body(text)
        .write_to_vec()
}

/// Build and hand the alert to intake (durable, then delivered like any mail); one retry after
/// a refusal (intake busy). Errors are logged: the anomaly is an event and a metric too.
pub async fn send(a: Alerter, c: Change, window_secs: u64, suspension: Option<u64>) {
    if a.admins.is_empty() {
        return;
    }
    let body = match build(&a, &c, window_secs, suspension) {
        Ok(b) => b,
        Err(e) => {
            tracing::error!(error = %e, "cannot build the anomaly alert mail");
            return;
        }
    };
    let sub = Submission {
        envelope: Envelope {
            mail_from: a.from.clone(),
            rcpts: a.admins.clone(),
        },
        body,
        origin: Origin {
            listener: ALERT_LISTENER.into(),
            client_ip: IpAddr::V4(Ipv4Addr::LOCALHOST),
            helo: a.hostname.clone(),
            auth_user: None,
            api_token: None,
        },
        class: a.class.clone(),
        tenant: None,
        campaign: None,
    };
    for attempt in 0..2 {
        match a.acceptor.accept(sub.clone()).await {
            Ok(acc) => {
                tracing::info!(target: "gannet::anomaly", queue_id = %acc.queue_id,
                    admins = a.admins.len(), "anomaly alert mail queued");
                return;
            }
            Err(e) if attempt == 0 && !e.is_permanent() => {
                tokio::time::sleep(Duration::from_secs(1)).await;
            }
            Err(e) => {
                tracing::error!(target: "gannet::anomaly", error = %e,
                    "intake refused the anomaly alert mail; check [anomaly] alert_from / admins / alert_class");
                return;
            }
        }
    }
}
