//! The bus contract: order, lossy drops counted, lossless never dropped and pushing back only
//! on `admit`, the durable watermark, and the JSON shape.

use super::*;

fn ev(n: u32) -> Event {
    let mut e = Event::new(EventKind::Flushed {
        actor: "test".into(),
        released: n as u64,
    });
    e.attempt = n;
    e
}

fn bus() -> (EventBus, prometheus::Registry) {
    let r = prometheus::Registry::new();
    (EventBus::new(&r), r)
}

#[tokio::test]
async fn each_subscriber_sees_every_event_in_order() {
    let (bus, _) = bus();
    let mut a = bus.subscribe("a", Mode::Lossless { bound: 100 });
    let mut b = bus.subscribe("b", Mode::Lossy { capacity: 100 });
    for i in 0..50 {
        bus.publish(ev(i));
    }
    for sub in [&mut a, &mut b] {
        for i in 0..50 {
            let p = sub.recv().await.unwrap();
            assert_eq!(p.event.attempt, i);
            assert_eq!(p.seq, i as u64 + 1);
        }
        assert!(sub.try_recv().is_none());
    }
}

#[tokio::test]
async fn a_lossy_subscriber_that_stops_reading_loses_events_counted_and_never_blocks() {
    let (bus, reg) = bus();
    let _stuck = bus.subscribe("stuck", Mode::Lossy { capacity: 10 });
    let mut live = bus.subscribe("live", Mode::Lossless { bound: 1_000_000 });
    // Publishing is synchronous: if it blocked on the stuck subscriber, this would hang.
    for i in 0..1000 {
        bus.publish(ev(i));
    }
    let text = {
        let mut out = String::new();
        prometheus::TextEncoder::new()
            .encode_utf8(&reg.gather(), &mut out)
            .unwrap();
        out
    };
    assert!(
        text.contains("gannet_events_dropped_total{subscriber=\"stuck\"} 990"),
        "{text}"
    );
    let mut n = 0;
    while live.try_recv().is_some() {
        n += 1;
    }
    assert_eq!(n, 1000, "the lossless subscriber lost nothing");
    assert!(
        !bus.over_bound(),
        "lossy subscribers never hold back admission"
    );
}

#[tokio::test]
async fn a_lossless_subscriber_pushes_back_on_admit_and_loses_nothing() {
    let (bus, _) = bus();
    let mut slow = bus.subscribe("slow", Mode::Lossless { bound: 8 });
    for i in 0..20 {
        bus.publish(ev(i)); // never waits, even past the bound
    }
    assert!(bus.over_bound());
    let admitted = tokio::spawn({
        let bus = bus.clone();
        async move { bus.admit().await }
    });
    tokio::task::yield_now().await;
    assert!(
        !admitted.is_finished(),
        "admit waits while the subscriber is behind"
    );
    for i in 0..20 {
        assert_eq!(slow.recv().await.unwrap().event.attempt, i);
    }
    tokio::time::timeout(std::time::Duration::from_secs(5), admitted)
        .await
        .expect("admit resumes once the subscriber caught up")
        .unwrap();
}

#[tokio::test]
async fn durable_watermark_follows_the_slowest_durable_subscriber() {
    let (bus, _) = bus();
    assert_eq!(bus.durable_through(), 0);
    bus.publish(ev(0));
    assert_eq!(
        bus.durable_through(),
        1,
        "no durable subscriber: all durable"
    );
    let mut d = bus.subscribe("sendlog", Mode::Durable { bound: 100 });
    let s2 = bus.publish(ev(1));
    let s3 = bus.publish(ev(2));
    assert_eq!(bus.durable_through(), 1);
    let waiter = tokio::spawn({
        let bus = bus.clone();
        async move { bus.wait_durable(s3).await }
    });
    assert_eq!(d.recv().await.unwrap().seq, s2);
    d.ack(s2);
    assert_eq!(bus.durable_through(), s2);
    tokio::task::yield_now().await;
    assert!(!waiter.is_finished());
    d.recv().await.unwrap();
    d.ack(s3);
    tokio::time::timeout(std::time::Duration::from_secs(5), waiter)
        .await
        .unwrap()
        .unwrap();
    drop(d);
    let s4 = bus.publish(ev(3));
    assert!(
        bus.durable_through() >= s4,
        "a departed subscriber holds nothing"
    );
}

#[test]
fn json_is_flat_with_a_type_and_round_trips() {
    let mut e = Event::new(EventKind::Delivered {
        site: "mx.example".into(),
        mx_host: "mx1.example".into(),
        remote_ip: "192.0.2.1".into(),
        source_ip: "198.51.100.7".into(),
        tls: Some(TlsInfo {
            version: "TLSv1.3".into(),
            cipher: "TLS13_AES_128_GCM_SHA256".into(),
        }),
        reply: "250 2.0.0 ok".into(),
        queue_secs: 0.5,
        provider: String::new(),
    });
    e.recipient = "a@example.com".into();
    let v: serde_json::Value = serde_json::to_value(&e).unwrap();
    assert_eq!(v["type"], "delivered");
    assert_eq!(v["recipient"], "a@example.com");
    assert_eq!(v["tls"]["version"], "TLSv1.3");
    let back: Event = serde_json::from_value(v).unwrap();
    assert_eq!(back, e);
    assert_eq!(e.type_name(), "delivered");
    assert!(e.time_rfc3339().ends_with('Z'));
    assert_eq!(e.time_rfc3339().len(), "2026-12-03T21:30:00.123456Z".len());
}

#[test]
fn ids_are_time_ordered() {
    let a = Event::new(EventKind::Flushed {
        actor: String::new(),
        released: 0,
    });
    std::thread::sleep(std::time::Duration::from_millis(2));
    let b = Event::new(EventKind::Flushed {
        actor: String::new(),
        released: 0,
    });
    assert!(a.id < b.id);
}
