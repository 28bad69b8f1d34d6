//! A typical `delivered` event with every common field filled, for the benches that publish
//! or ship events; `i` makes its ids and recipient distinct.

use gannet::events::{Event, EventKind, TlsInfo};

pub fn delivered(i: u64) -> Event {
    let mut e = Event::new(EventKind::Delivered {
        site: "gmail-smtp-in.l.google.com".into(),
        mx_host: "gmail-smtp-in.l.google.com".into(),
        remote_ip: "142.250.1.27".into(),
        source_ip: "192.0.2.10".into(),
        tls: Some(TlsInfo {
            version: "TLSv1.3".into(),
            cipher: "TLS13_AES_256_GCM_SHA384".into(),
        }),
        reply: "250 2.0.0 OK 1700000000 a1-20020a170902".into(),
        queue_secs: 0.8,
        provider: "google".into(),
    });
    e.queue_id = format!("661C1B01CD958{i:08}");
    e.message_id = format!("661c1b01dff57.{i}@gannet.example");
    e.recipient = format!("someone{i}@gmail.com");
    e.sender = "bounces@news.example".into();
    e.tenant = "acme".into();
    e.campaign = "spring-sale".into();
    e.class = "promotional".into();
    e.pool = "promo".into();
    e.attempt = 1;
    e
}
