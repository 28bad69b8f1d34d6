//! Synthetic send-log events shared by the send-log and console benches: event `i` of
//! message `i / 5` (received, then delivered/deferred/bounced per recipient) over 100,000
//! recipients (`user{N}@dest{M}.test`) and 20 campaigns.

use gannet::events::{Event, EventKind};

/// Event number `i` of the generated log.
pub fn event(i: u64) -> Event {
    let msg = i / 5;
    let kind = match i % 5 {
        0 => EventKind::Received {
            listener: "default".into(),
            client_ip: "127.0.0.1".into(),
            auth: String::new(),
            size: 4000,
            recipients: 4,
            variant: if msg.is_multiple_of(2) { "A" } else { "B" }.into(),
            replayed: false,
        },
        1 | 2 => EventKind::Delivered {
            site: format!("mx{}.example", msg % 7),
            mx_host: "mx.example".into(),
            remote_ip: "192.0.2.1".into(),
            source_ip: "198.51.100.1".into(),
            tls: None,
            reply: "250 2.0.0 ok queued as ABC123".into(),
            queue_secs: 0.2,
            provider: String::new(),
        },
        3 => EventKind::Deferred {
            site: format!("mx{}.example", msg % 7),
            mx_host: "mx.example".into(),
            remote_ip: "192.0.2.1".into(),
            source_ip: "198.51.100.1".into(),
            reply: "451 4.7.1 try again later".into(),
            category: "rate-limited".into(),
            provider: String::new(),
            retry_in_secs: 60,
        },
        _ => EventKind::Bounced {
            site: format!("mx{}.example", msg % 7),
            mx_host: "mx.example".into(),
            remote_ip: "192.0.2.1".into(),
            source_ip: "198.51.100.1".into(),
            reply: "550 5.1.1 user unknown".into(),
            category: "bad-mailbox".into(),
            hard: true,
            provider: String::new(),
        },
    };
    let mut e = Event::new(kind);
    e.time_us = 1_790_000_000_000_000 + i * 1000;
    e.queue_id = format!("{msg:021X}");
    e.message_id = format!("m{msg}@bench.test");
    if !i.is_multiple_of(5) {
        e.recipient = format!("user{}@dest{}.test", (i * 7919) % 100_000, i % 13);
        e.attempt = 1;
    }
    e.sender = "news@shop.test".into();
    e.campaign = format!("c{}", msg % 20);
    e.tenant = "acme".into();
    e.class = "promotional".into();
    e.pool = "default".into();
    e
}
