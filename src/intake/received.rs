//! The `received` event of a message, and its replay at start-up.
//!
//! Owns: building the one `received` event of a message from what its spool record keeps (so
//! the event can be built again, identical, after a restart), its deterministic id, and the
//! rule for which recovered messages get it published again.
//!
//! Why a replay: intake answers 250 once the spool's fdatasync covered the message, and
//! publishes `received` right after; the durable subscribers (send log, shipping outbox) make
//! it durable in their next batch. A kill -9 between the two loses the event, while the
//! message itself survives and is delivered. Every *final* state waits for its events to be
//! durable (`Queue::after_durable`), and subscribers make events durable in publish order,
//! so a message with any final recipient has its `received` on disk. Only messages whose
//! recipients are all still pending can miss it, and of those only the ones received shortly
//! before the newest event a durable subscriber has on disk ([`REPLAY_SLACK`]) or after it.
//! Those are published again, marked `replayed`, with the id and time they had the first
//! time: the send log skips one it already holds, destinations deduplicate on the id.

use std::time::{Duration, UNIX_EPOCH};

use sha2::{Digest, Sha256};

use crate::events::{Event, EventBus, EventKind};
use crate::queue::QueuedMessage;
use crate::spool::RcptState;

/// How far before the newest durable event a lost `received` may have been received: the
/// time between taking a message's receive time and publishing its event (signing is before;
/// this is the spool append with its group commit, and a session's scheduling), with a wide
/// margin. Messages received earlier than this, with only pending recipients, had their event
/// made durable before that newest one.
pub const REPLAY_SLACK: Duration = Duration::from_secs(300);

/// Record attributes that keep the origin of a message, so its `received` can be rebuilt.
pub const ATTR_LISTENER: &str = "listener";
pub const ATTR_CLIENT_IP: &str = "client_ip";
pub const ATTR_AUTH: &str = "auth";

/// The `received` event of `msg` (whose spooled body is `size` bytes), sent through `pool`.
/// The same message gives the same event, id and time included, whenever it is built.
pub fn event(msg: &QueuedMessage, size: u64, pool: String, replayed: bool) -> Event {
    let attr = |k: &str| msg.attrs.get(k).cloned().unwrap_or_default();
    let ms = received_ms(msg);
    let kind = EventKind::Received {
        listener: attr(ATTR_LISTENER),
        client_ip: attr(ATTR_CLIENT_IP),
        auth: attr(ATTR_AUTH),
        size,
        recipients: msg.rcpts.len() as u32,
        variant: attr("variant"),
        replayed,
    };
    let mut ev = Event::at(kind, event_id(&msg.queue_id, ms), ms * 1000);
    ev.queue_id = msg.queue_id.clone();
    ev.message_id = msg.message_id.clone();
    ev.sender = msg.mail_from.clone();
    ev.tenant = msg.tenant.clone();
    ev.campaign = msg.campaign.clone();
    ev.class = msg.class.clone();
    ev.pool = pool;
    ev
}

/// A UUIDv7 of the receive time whose other bits come from the queue id: time-ordered like
/// every event id, and the same for the same message.
fn event_id(queue_id: &str, received_at_ms: u64) -> String {
    let digest = Sha256::digest(queue_id.as_bytes());
    let mut bits = [0u8; 10];
    bits.copy_from_slice(&digest[..10]);
    uuid::Builder::from_unix_timestamp_millis(received_at_ms, &bits)
        .into_uuid()
        .to_string()
}

/// Whether a recovered message's `received` may be missing from a durable subscriber whose
/// newest event on disk is from `high_water_us` (None: it holds no event at all).
pub fn needs_replay(msg: &QueuedMessage, high_water_us: Option<u64>) -> bool {
    if msg.states().iter().any(|s| *s != RcptState::Pending) {
        return false;
    }
    let Some(high) = high_water_us else {
        return true;
    };
    received_ms(msg) * 1000 + REPLAY_SLACK.as_micros() as u64 >= high
}

/// The receive time the spool record keeps (milliseconds since the Unix epoch).
fn received_ms(msg: &QueuedMessage) -> u64 {
    msg.received_at
        .duration_since(UNIX_EPOCH)
        .unwrap_or(Duration::ZERO)
        .as_millis() as u64
}

/// Start-up, for one recovered message before it is queued: publish its `received` again
/// (marked `replayed`) when [`needs_replay`] says it may be missing. `high_water_us` is the
/// oldest of the durable subscribers' newest events on disk. True when it was published.
pub fn replay(
    bus: &EventBus,
    msg: &QueuedMessage,
    size: u64,
    pool: String,
    high_water_us: Option<u64>,
) -> bool {
    if !needs_replay(msg, high_water_us) {
        return false;
    }
    bus.publish(event(msg, size, pool, true));
    true
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::spool::{Location, MessageRecord, MsgKey};

    fn msg(received_at_ms: u64, states: Vec<RcptState>) -> QueuedMessage {
        let record = MessageRecord {
            received_at_ms,
            mail_from: "s@a.test".into(),
            rcpts: vec!["r@b.test".into(); states.len()],
            class: "transactional".into(),
            tenant: String::new(),
            campaign: "c".into(),
            body: b"Subject: x\r\n\r\nhi\r\n".to_vec(),
            attrs: [
                ("message_id".to_string(), "m@a.test".to_string()),
                (ATTR_LISTENER.to_string(), "smtp".to_string()),
                (ATTR_CLIENT_IP.to_string(), "127.0.0.9".to_string()),
            ]
            .into(),
        };
        let loc = Location {
            key: MsgKey {
                segment: 7,
                offset: 42,
            },
            len: 0,
        };
        QueuedMessage::from_record(loc, record, states).0
    }

    #[test]
    fn the_same_message_gives_the_same_event() {
        let m = msg(1_700_000_000_123, vec![RcptState::Pending]);
        let a = event(&m, 20, "p".into(), false);
        let b = event(&m, 20, "p".into(), false);
        assert_eq!(a, b);
        assert_eq!(a.time_us, 1_700_000_000_123_000);
        let id = uuid::Uuid::parse_str(&a.id).expect("a uuid");
        assert_eq!(id.get_version_num(), 7);
        let EventKind::Received {
            listener,
            client_ip,
            ..
        } = &a.kind
        else {
            panic!("not received: {a:?}")
        };
        assert_eq!(
            (listener.as_str(), client_ip.as_str()),
            ("smtp", "127.0.0.9")
        );
        assert_ne!(event_id("elsewhere", 1_700_000_000_123), a.id);
    }

    #[test]
    fn only_all_pending_messages_near_or_after_the_high_water_are_replayed() {
        let t = 1_700_000_000_000u64;
        let high = Some(t * 1000);
        let pending = |ms| msg(ms, vec![RcptState::Pending, RcptState::Pending]);
        assert!(needs_replay(&pending(t + 5), high), "after the high water");
        assert!(needs_replay(&pending(t - 10_000), high), "within the slack");
        assert!(!needs_replay(&pending(t - 400_000), high), "long before");
        assert!(
            needs_replay(&pending(t - 400_000), None),
            "nothing durable yet"
        );
        let partly = msg(t + 5, vec![RcptState::Pending, RcptState::Delivered]);
        assert!(
            !needs_replay(&partly, high),
            "a final state had its events durable"
        );
        assert!(!needs_replay(&partly, None));
    }
}
