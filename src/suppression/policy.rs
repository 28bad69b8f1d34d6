//! Suppression policy: which events put an address on the list, in which scope.
//!
//! Owns the decision table ([`decide`], pure) and the subscriber task ([`run`]) that applies it:
//! a `Mode::Durable` subscriber of the event bus. Durable, not merely lossless, because an
//! opt-out must hold before anyone is told it does: the task acknowledges an event only after
//! the entries it caused are written and flushed, so the unsubscribe endpoint (which waits for
//! `EventBus::wait_durable` of its `unsubscribed` event before answering 200) and the queue
//! (whose state changes wait the same way) never run ahead of the list. It subscribes only to
//! the kinds [`wants`] names, so every other event (`received`, `delivered`, `deferred`, ...)
//! never waits for it. Publishes one
//! `suppression_changed` event per entry it adds. Never sends mail, never reads the spool.
//!
//! | event | entry |
//! |---|---|
//! | `bounced` / `bounce_report` with `hard` | `hard-bounce`, every tenant, every stream |
//! | `complaint` | `complaint`, every tenant, every stream |
//! | `unsubscribed` | `unsubscribe`, the event's tenant scope and list/class stream |
//! | `bounced` / `expired` / `bounce_report`, soft, category in `soft_bounce_categories` | `soft-bounce` (every tenant, every stream, lapsing after `soft_bounce_expiry_days`) once `soft_bounce_limit` fall within `soft_bounce_days` |

use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use tokio_util::sync::CancellationToken;

use super::store::{ALL_TENANTS, Entry, SuppressionStore};
use crate::config::SuppressionConfig;
use crate::events::{Event, EventBus, EventKind, Mode, Published, Subscription};

/// What one event means for the list.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Decision {
    Nothing,
    /// Suppress now.
    Add(Entry),
    /// Count a soft bounce; suppress with this entry once the limit is reached.
    SoftBounce(Entry),
}

/// Seconds since the Unix epoch.
pub fn now_secs() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

/// The policy for one event (pure: `now` is given).
pub fn decide(e: &Event, policy: &SuppressionConfig, now: u64) -> Decision {
    if e.recipient.is_empty() {
        return Decision::Nothing;
    }
    let entry = |reason: &str, tenant: &str, stream: String, expires: u64| Entry {
        address: e.recipient.clone(),
        tenant: tenant.to_string(),
        stream,
        reason: reason.to_string(),
        source: e.id.clone(),
        created: now,
        expires,
    };
    let soft = |category: &str| {
        if policy.soft_bounce_limit > 0
            && policy.soft_bounce_categories.iter().any(|c| c == category)
        {
            let expires = match policy.soft_bounce_expiry_days {
                0 => 0,
                d => now + u64::from(d) * 86_400,
            };
            Decision::SoftBounce(entry("soft-bounce", ALL_TENANTS, String::new(), expires))
        } else {
            Decision::Nothing
        }
    };
    match &e.kind {
        EventKind::Bounced { hard: true, .. } | EventKind::BounceReport { hard: true, .. } => {
            Decision::Add(entry("hard-bounce", ALL_TENANTS, String::new(), 0))
        }
        EventKind::Bounced { category, .. }
        | EventKind::Expired { category, .. }
        | EventKind::BounceReport { category, .. } => soft(category),
        EventKind::Complaint { .. } => {
            Decision::Add(entry("complaint", ALL_TENANTS, String::new(), 0))
        }
        EventKind::Unsubscribed { scope, list, .. } => {
            let tenant = if scope.is_empty() {
                if e.tenant.is_empty() {
                    ALL_TENANTS
                } else {
                    e.tenant.as_str()
                }
            } else {
                scope.as_str()
            };
            // The token's stream (`list:news`, `class:promotional`), else the stream the
            // message came from; with neither, every stream of the tenant.
            let stream = if list.contains(':') {
                list.clone()
            } else if !list.is_empty() {
                format!("list:{list}")
            } else if !e.class.is_empty() {
                format!("class:{}", e.class)
            } else {
                String::new()
            };
            Decision::Add(entry("unsubscribe", tenant, stream, 0))
        }
        _ => Decision::Nothing,
    }
}

/// The kinds of event [`decide`] can act on: the only ones the policy subscribes to (and so
/// the only ones whose durability waits for it).
pub fn wants(kind: &EventKind) -> bool {
    matches!(
        kind,
        EventKind::Bounced { .. }
            | EventKind::Expired { .. }
            | EventKind::BounceReport { .. }
            | EventKind::Complaint { .. }
            | EventKind::Unsubscribed { .. }
    )
}

/// Subscribe the policy to `bus` (durable) and start its task; call before the stages publish.
/// The task stops once `stop` is cancelled, after applying what was already published.
pub fn start(
    policy: SuppressionConfig,
    store: Arc<dyn SuppressionStore>,
    bus: &EventBus,
    stop: CancellationToken,
) -> tokio::task::JoinHandle<()> {
    let sub = bus.subscribe_only(
        "suppression",
        Mode::Durable {
            bound: policy.bound,
        },
        wants,
    );
    tokio::spawn(run(policy, store, bus.clone(), sub, stop))
}

/// The subscriber loop: take what is waiting, apply it on a blocking thread, flush, then ack
/// and announce the new entries.
pub async fn run(
    policy: SuppressionConfig,
    store: Arc<dyn SuppressionStore>,
    bus: EventBus,
    mut sub: Subscription,
    stop: CancellationToken,
) {
    let policy = Arc::new(policy);
    loop {
        let first = tokio::select! {
            p = sub.recv() => p,
            _ = stop.cancelled() => sub.try_recv(),
        };
        let Some(first) = first else { return };
        let mut batch = vec![first];
        while batch.len() < 1024 {
            match sub.try_recv() {
                Some(p) => batch.push(p),
                None => break,
            }
        }
        let last = batch.last().map(|p| p.seq).unwrap_or(0);
        let added = loop {
            let (store, policy, items) = (store.clone(), policy.clone(), batch.clone());
            match tokio::task::spawn_blocking(move || apply(&*store, &policy, &items)).await {
                Ok(Ok(added)) => break added,
                Ok(Err(e)) => {
                    tracing::error!(error = %e, events = batch.len(), "cannot update the suppression list; retrying (intake pushes back while this lasts)");
                }
                Err(e) => tracing::error!(error = %e, "suppression policy task failed; retrying"),
            }
            tokio::time::sleep(Duration::from_secs(1)).await;
        };
        sub.ack(last);
        for (entry, cause) in added {
            let mut ev = Event::new(EventKind::SuppressionChanged {
                change: "added".to_string(),
                reason: entry.reason.clone(),
                scope: entry.scope_text(),
                actor: "policy".to_string(),
                expires: entry.expires,
                entries: 1,
            });
            // About the list, not the message: no queue id (a message's story stays its own).
            ev.recipient = entry.address;
            ev.tenant = cause.tenant.clone();
            ev.campaign = cause.campaign.clone();
            ev.class = cause.class.clone();
            bus.publish(ev);
        }
    }
}

/// Which failed attempt an event reports, for counting soft bounces once: the message, the
/// recipient, the attempt and the kind of report (a `bounce_report` for a send is another
/// report than its `bounced`). Events without a queue id fall back to their own id.
fn attempt_identity(e: &Event) -> u64 {
    use std::hash::{Hash, Hasher};
    // SipHash with fixed keys: stable across runs (the identity is stored).
    #[allow(deprecated)]
    let mut h = std::hash::SipHasher::new_with_keys(0x6761_6e6e_6574, 0x736f_6674);
    if e.queue_id.is_empty() {
        e.id.hash(&mut h);
    } else {
        (e.type_name(), &e.queue_id, &e.recipient, e.attempt).hash(&mut h);
    }
    h.finish()
}

/// Apply a batch; returns the entries that were new, with the event that caused each.
pub(super) fn apply(
    store: &dyn SuppressionStore,
    policy: &SuppressionConfig,
    items: &[Published],
) -> Result<Vec<(Entry, Arc<Event>)>, super::store::StoreError> {
    let now = now_secs();
    let window = u64::from(policy.soft_bounce_days) * 86_400;
    let mut added = Vec::new();
    for p in items {
        let entry = match decide(&p.event, policy, now) {
            Decision::Nothing => continue,
            Decision::Add(entry) => entry,
            Decision::SoftBounce(entry) => {
                match store.soft_bounce(&entry.address, now, window, attempt_identity(&p.event)) {
                    Ok(n) if n >= policy.soft_bounce_limit => entry,
                    Ok(_) => continue,
                    Err(super::store::StoreError::BadAddress(_)) => continue,
                    Err(e) => return Err(e),
                }
            }
        };
        match store.add_new(&entry, now) {
            Ok(true) => added.push((entry, p.event.clone())),
            Ok(false) => {}
            // An address the list cannot key (should not reach an event): nothing to suppress.
            Err(
                super::store::StoreError::BadAddress(a) | super::store::StoreError::BadTenant(a),
            ) => {
                tracing::warn!(address = %a, event = %p.event.id, "event names an address the suppression list cannot hold; ignored");
            }
            Err(e) => return Err(e),
        }
    }
    if !added.is_empty() {
        store.flush()?;
    }
    Ok(added)
}
