//! Tables for the store's scoping, normalisation and paging, and the policy's decisions.

use super::policy::{Decision, decide};
use super::*;
use crate::config::SuppressionConfig;
use crate::events::{Event, EventKind};

fn entry(address: &str, tenant: &str, stream: &str, reason: &str, expires: u64) -> Entry {
    Entry {
        address: address.into(),
        tenant: tenant.into(),
        stream: stream.into(),
        reason: reason.into(),
        source: "test".into(),
        created: 1,
        expires,
    }
}

fn q<'a>(address: &'a str, tenant: &'a str, class: &'a str) -> Lookup<'a> {
    Lookup {
        address,
        tenant,
        class,
        ..Lookup::default()
    }
}

#[test]
fn normalize_lowercases_and_refuses_what_is_not_an_address() {
    for (input, want) in [
        ("Alice@Example.ORG", Some("alice@example.org")),
        (" <bob+news@x.test> ", Some("bob+news@x.test")),
        ("first.last@x.test", Some("first.last@x.test")),
        ("\"a b\"@x.test", Some("\"a b\"@x.test")),
        ("no-at-sign", None),
        ("@x.test", None),
        ("a@", None),
        ("a\r\n@x.test", None),
    ] {
        assert_eq!(normalize(input).ok().as_deref(), want, "{input:?}");
    }
}

#[test]
fn a_check_honours_tenant_and_stream_scopes_and_expiry() {
    let s = SqliteStore::temporary().expect("store");
    s.add(&entry("Global@X.test", "*", "", "hard-bounce", 0))
        .expect("add");
    s.add(&entry(
        "promo@x.test",
        "acme",
        "class:promotional",
        "unsubscribe",
        0,
    ))
    .expect("add");
    s.add(&entry("news@x.test", "*", "list:news", "unsubscribe", 0))
        .expect("add");
    s.add(&entry("gone@x.test", "*", "", "soft-bounce", 100))
        .expect("add");
    let now = 50;
    let hit = |l: Lookup<'_>, t: u64| s.check(&l, t).expect("check").map(|e| e.reason);
    // (lookup, time, expected reason)
    let cases: Vec<(Lookup<'_>, u64, Option<&str>)> = vec![
        (
            q("global@x.test", "", "transactional"),
            now,
            Some("hard-bounce"),
        ),
        (
            q("GLOBAL@x.TEST", "other", "promotional"),
            now,
            Some("hard-bounce"),
        ),
        (
            q("promo@x.test", "acme", "promotional"),
            now,
            Some("unsubscribe"),
        ),
        // An opt-out of promotional mail does not stop a password reset...
        (q("promo@x.test", "acme", "transactional"), now, None),
        // ...nor another tenant's mail.
        (q("promo@x.test", "beta", "promotional"), now, None),
        (
            Lookup {
                list: "news",
                ..q("news@x.test", "acme", "promotional")
            },
            now,
            Some("unsubscribe"),
        ),
        (q("news@x.test", "acme", "promotional"), now, None),
        (
            q("gone@x.test", "", "promotional"),
            now,
            Some("soft-bounce"),
        ),
        (q("gone@x.test", "", "promotional"), 100, None),
        (q("nobody@x.test", "acme", "promotional"), now, None),
        (q("not an address", "acme", "promotional"), now, None),
    ];
    for (l, t, want) in cases {
        assert_eq!(hit(l, t).as_deref(), want, "{l:?} at {t}");
    }
}

#[test]
fn a_global_entry_wins_over_a_scoped_one() {
    let s = SqliteStore::temporary().expect("store");
    s.add(&entry("a@x.test", "acme", "", "unsubscribe", 0))
        .expect("add");
    s.add(&entry("a@x.test", "*", "", "complaint", 0))
        .expect("add");
    let e = s
        .check(&q("a@x.test", "acme", "promotional"), 5)
        .expect("check")
        .expect("suppressed");
    assert_eq!(e.reason, "complaint");
    assert_eq!(s.get("A@x.test").expect("get").len(), 2);
    assert!(s.remove("a@x.test", "*", "").expect("remove").is_some());
    assert_eq!(
        s.check(&q("a@x.test", "acme", "promotional"), 5)
            .expect("check")
            .map(|e| e.reason)
            .as_deref(),
        Some("unsubscribe")
    );
}

#[test]
fn listing_pages_through_every_entry_with_a_cursor_and_filters() {
    let s = SqliteStore::temporary().expect("store");
    let all: Vec<Entry> = (0..250)
        .map(|i| {
            let reason = if i % 5 == 0 {
                "complaint"
            } else {
                "hard-bounce"
            };
            entry(&format!("u{i:03}@d{}.test", i % 2), "*", "", reason, 0)
        })
        .collect();
    assert_eq!(s.add_many(&all).expect("import"), 250);
    assert_eq!(s.add_many(&all[..10]).expect("again"), 0);
    let mut seen = Vec::new();
    let mut cursor: Option<Vec<u8>> = None;
    loop {
        let page = s
            .list(&ListFilter::default(), cursor.as_deref(), 100)
            .expect("list");
        seen.extend(page.entries.into_iter().map(|e| e.address));
        match page.next {
            Some(c) => cursor = Some(c),
            None => break,
        }
    }
    assert_eq!(seen.len(), 250);
    let filter = ListFilter {
        domain: "d0.test".into(),
        reason: "complaint".into(),
        ..ListFilter::default()
    };
    let page = s.list(&filter, None, 1000).expect("list");
    assert_eq!(page.entries.len(), 25, "every 10th address");
    let filter = ListFilter {
        prefix: "u01".into(),
        ..ListFilter::default()
    };
    assert_eq!(s.list(&filter, None, 1000).expect("list").entries.len(), 10);
}

#[test]
fn soft_bounces_count_only_within_the_window() {
    let s = SqliteStore::temporary().expect("store");
    let day = 86_400;
    assert_eq!(s.soft_bounce("a@x.test", 0, 7 * day, 1).expect("count"), 1);
    assert_eq!(
        s.soft_bounce("A@x.test", day, 7 * day, 2).expect("count"),
        2
    );
    // The same attempt again counts once.
    assert_eq!(
        s.soft_bounce("a@x.test", day, 7 * day, 2).expect("count"),
        2
    );
    // Ten days later the first two are forgotten.
    assert_eq!(
        s.soft_bounce("a@x.test", 10 * day, 7 * day, 3)
            .expect("count"),
        1
    );
}

fn event(kind: EventKind, class: &str, tenant: &str) -> Event {
    let mut e = Event::new(kind);
    e.recipient = "r@x.test".into();
    e.class = class.into();
    e.tenant = tenant.into();
    e
}

fn bounced(category: &str, hard: bool) -> EventKind {
    EventKind::Bounced {
        site: String::new(),
        mx_host: String::new(),
        remote_ip: String::new(),
        source_ip: String::new(),
        reply: "550 5.1.1 x".into(),
        category: category.into(),
        hard,
        provider: String::new(),
    }
}

#[test]
fn policy_turns_hard_bounces_complaints_and_opt_outs_into_entries() {
    let policy = SuppressionConfig::default();
    let now = 1000;
    let add = |d: Decision| match d {
        Decision::Add(e) => Some((e.reason, e.tenant, e.stream, e.expires)),
        _ => None,
    };
    let unsub = |scope: &str, list: &str| EventKind::Unsubscribed {
        via: "one-click".into(),
        scope: scope.into(),
        list: list.into(),
    };
    type Want<'a> = Option<(&'a str, &'a str, &'a str)>;
    let cases: Vec<(EventKind, &str, Want<'_>)> = vec![
        (
            bounced("bad-mailbox", true),
            "promotional",
            Some(("hard-bounce", "*", "")),
        ),
        (bounced("reputation-block", false), "promotional", None),
        (
            EventKind::BounceReport {
                format: "dsn".into(),
                status: "5.1.1".into(),
                diagnostic: String::new(),
                category: "bad-mailbox".into(),
                hard: true,
                reporting_mta: String::new(),
            },
            "",
            Some(("hard-bounce", "*", "")),
        ),
        (
            EventKind::Complaint {
                feedback_type: "abuse".into(),
                user_agent: String::new(),
                reporter: String::new(),
            },
            "promotional",
            Some(("complaint", "*", "")),
        ),
        (
            unsub("acme", "list:news"),
            "promotional",
            Some(("unsubscribe", "acme", "list:news")),
        ),
        (
            unsub("acme", "news"),
            "promotional",
            Some(("unsubscribe", "acme", "list:news")),
        ),
        (
            unsub("acme", ""),
            "promotional",
            Some(("unsubscribe", "acme", "class:promotional")),
        ),
        (unsub("", ""), "", Some(("unsubscribe", "acme", ""))),
    ];
    for (kind, class, want) in cases {
        let label = format!("{kind:?}");
        let got = add(decide(&event(kind, class, "acme"), &policy, now));
        let want = want.map(|(r, t, s)| (r.to_string(), t.to_string(), s.to_string(), 0));
        assert_eq!(got, want, "{label}");
    }
    // Soft bounces of a counted category are counted, with an expiry.
    match decide(
        &event(bounced("mailbox-full", false), "p", ""),
        &policy,
        now,
    ) {
        Decision::SoftBounce(e) => {
            assert_eq!(e.reason, "soft-bounce");
            assert_eq!(e.expires, now + 30 * 86_400);
        }
        d => panic!("{d:?}"),
    }
}

/// Issue 17 review 4a: with the policy subscribed (durable), an event it does not act on is
/// durable at once: a `delivered` never waits for the policy task (here: not yet run at all,
/// on a current-thread runtime), while a hard bounce does wait until its entry is written.
#[tokio::test(flavor = "current_thread")]
async fn only_the_events_the_policy_acts_on_wait_for_it() {
    let bus = crate::events::EventBus::new(&prometheus::Registry::new());
    let store: SharedStore = std::sync::Arc::new(SqliteStore::temporary().expect("store"));
    let stop = tokio_util::sync::CancellationToken::new();
    let task = policy::start(
        SuppressionConfig::default(),
        store.clone(),
        &bus,
        stop.clone(),
    );
    let delivered = bus.publish(event(
        EventKind::Delivered {
            site: String::new(),
            mx_host: String::new(),
            remote_ip: String::new(),
            source_ip: String::new(),
            reply: "250 ok".into(),
            tls: None,
            queue_secs: 0.0,
            provider: String::new(),
        },
        "p",
        "",
    ));
    assert!(
        bus.durable_through() >= delivered,
        "a delivered event waits for the suppression policy"
    );
    let hard = bus.publish(event(bounced("bad-mailbox", true), "p", ""));
    assert!(
        bus.durable_through() < hard,
        "the hard bounce is not applied yet"
    );
    // Later unrelated events wait behind it (durability is in order)...
    let after = bus.publish(event(bounced("x", false), "p", ""));
    assert!(bus.durable_through() < after);
    // ...until the policy has written the entry.
    tokio::time::timeout(std::time::Duration::from_secs(10), bus.wait_durable(after))
        .await
        .expect("the policy applies the bounce");
    assert_eq!(
        store
            .check(&q("r@x.test", "", "p"), policy::now_secs())
            .expect("check")
            .map(|e| e.reason)
            .as_deref(),
        Some("hard-bounce")
    );
    stop.cancel();
    task.await.expect("policy task");
}

fn published(seq: u64, e: Event) -> crate::events::Published {
    crate::events::Published {
        seq,
        event: std::sync::Arc::new(e),
    }
}

/// Issue 17 review 4b: one failed attempt counts as one soft bounce, however often its event
/// is applied (a batch retried after a store error, an outcome re-published after a restart:
/// same queue id, recipient and attempt, new event id). Two different attempts do count.
#[test]
fn a_soft_bounce_reported_twice_counts_once() {
    let store = SqliteStore::temporary().expect("store");
    let policy = SuppressionConfig {
        soft_bounce_limit: 2,
        ..SuppressionConfig::default()
    };
    let soft = |attempt: u32| {
        let mut e = event(bounced("mailbox-full", false), "p", "");
        e.queue_id = "Q1".into();
        e.attempt = attempt;
        e
    };
    let once = vec![published(1, soft(1))];
    assert!(
        policy::apply(&store, &policy, &once)
            .expect("apply")
            .is_empty()
    );
    // The same batch again, and the same attempt re-published under a new event id.
    assert!(
        policy::apply(&store, &policy, &once)
            .expect("apply")
            .is_empty()
    );
    let again = vec![published(2, soft(1))];
    assert!(
        policy::apply(&store, &policy, &again)
            .expect("apply")
            .is_empty()
    );
    assert!(
        store
            .check(&q("r@x.test", "", "p"), policy::now_secs())
            .expect("check")
            .is_none()
    );
    // A second attempt is a second soft bounce: suppressed now.
    let second = vec![published(3, soft(2))];
    let added = policy::apply(&store, &policy, &second).expect("apply");
    assert_eq!(added.len(), 1);
    assert_eq!(added[0].0.reason, "soft-bounce");
}

/// Issue 17 review 4c: a hard bounce of an address that already has a manual entry keeps the
/// manual entry (its reason, source and created time) and announces nothing; a lapsed entry
/// is replaced.
#[test]
fn a_repeated_hard_bounce_keeps_the_manual_entry() {
    let store = SqliteStore::temporary().expect("store");
    let policy = SuppressionConfig::default();
    let manual = entry("r@x.test", "*", "", "manual", 0);
    store.add(&manual).expect("add");
    let hard = vec![published(1, event(bounced("bad-mailbox", true), "p", ""))];
    assert!(
        policy::apply(&store, &policy, &hard)
            .expect("apply")
            .is_empty()
    );
    assert_eq!(store.get("r@x.test").expect("get"), vec![manual.clone()]);
    // An entry that lapsed is replaced by the new one.
    store
        .add(&entry("r@x.test", "*", "", "soft-bounce", 2))
        .expect("add");
    let added = policy::apply(&store, &policy, &hard).expect("apply");
    assert_eq!(added.len(), 1);
    let now = store.get("r@x.test").expect("get");
    assert_eq!(now[0].reason, "hard-bounce");
    assert_eq!(now[0].source, hard[0].event.id);
}

#[test]
fn erasure_keeps_only_the_keyed_hash_and_refuses_the_address_in_every_scope() {
    let dir = tempfile::tempdir().unwrap();
    let key = crate::sendlog::MasterKey::from_bytes([7; 32]);
    let s = SqliteStore::open(dir.path(), key.clone()).unwrap();
    s.add(&entry(
        "erin@x.test",
        "acme",
        "class:promotional",
        "manual",
        0,
    ))
    .unwrap();
    s.soft_bounce("erin@x.test", 10, 100, 1).unwrap();
    let removed = s.erase("Erin@X.test", 50).unwrap();
    assert_eq!(removed, 1);
    assert!(s.get("erin@x.test").unwrap().is_empty());
    let hit = s
        .check(&q("<ERIN@x.test>", "other", "transactional"), 60)
        .unwrap()
        .expect("refused in every scope");
    assert_eq!(
        (hit.reason.as_str(), hit.address.as_str(), hit.created),
        (ERASED_REASON, "", 50)
    );
    assert!(s.check(&q("bob@x.test", "acme", ""), 60).unwrap().is_none());
    // Nothing is written for an erased address again (a late bounce, say).
    assert!(
        !s.add(&entry("erin@x.test", "*", "", "hard-bounce", 0))
            .unwrap()
    );
    assert!(s.get("erin@x.test").unwrap().is_empty());
    assert_eq!(s.soft_bounce("erin@x.test", 70, 100, 2).unwrap(), 0);
    assert_eq!(s.len(), 0, "no clear entry is left");
}

/// Entries are stored in the compact binary form and read back whole (the address opened
/// with its slot's key); a tenant with a control character is refused (it would make the key
/// ambiguous). (Entries of the earlier layout: `migrate`'s test.)
#[test]
fn entries_read_back_whole() {
    let s = SqliteStore::temporary().expect("store");
    let e = Entry {
        source: "api:ops".into(),
        ..entry("a@x.test", "acme", "list:news", "unsubscribe", 99)
    };
    s.add(&e).expect("add");
    assert_eq!(s.get("a@x.test").expect("get"), vec![e.clone()]);
    let page = s.list(&ListFilter::default(), None, 10).expect("list");
    assert_eq!(page.entries, vec![e]);
    let bad = entry("b@x.test", "ac\0me", "", "manual", 0);
    assert!(matches!(s.add(&bad), Err(StoreError::BadTenant(_))));
}

/// Two imports of the same entries at once: each entry is counted as new by exactly one of
/// them (the count is taken under the same lock as the write).
#[test]
fn concurrent_imports_count_each_new_entry_once() {
    for round in 0..5 {
        let s = std::sync::Arc::new(SqliteStore::temporary().expect("store"));
        let batch: Vec<Entry> = (0..5_000)
            .map(|i| entry(&format!("r{round}-{i}@x.test"), "*", "", "manual", 0))
            .collect();
        let threads: Vec<_> = (0..2)
            .map(|_| {
                let (s, batch) = (s.clone(), batch.clone());
                std::thread::spawn(move || {
                    batch
                        .chunks(500)
                        .map(|c| s.add_many(c).expect("add_many"))
                        .sum::<usize>()
                })
            })
            .collect();
        let created: usize = threads.into_iter().map(|t| t.join().expect("thread")).sum();
        assert_eq!(created, 5_000, "round {round}");
        assert_eq!(s.len(), 5_000);
    }
}

/// The index is rebuilt from the tree when the store opens again: every entry is found with
/// its scope, reason and expiry, removals stay removed, and an entry that cannot be read keeps
/// its address refused in its scope (reason `unreadable`). Another master key is refused.
#[test]
fn a_reopened_store_checks_from_the_index_it_loads() {
    let dir = tempfile::tempdir().expect("tmp");
    let path = dir.path().join("suppression");
    let key = crate::sendlog::MasterKey::from_bytes([8; 32]);
    {
        let s = SqliteStore::open(&path, key.clone()).expect("open");
        s.add(&entry(
            "a@x.test",
            "acme",
            "class:promotional",
            "unsubscribe",
            0,
        ))
        .expect("add");
        s.add(&entry("b@x.test", "*", "", "hard-bounce", 50))
            .expect("add");
        s.add(&entry("c@x.test", "*", "", "manual", 0))
            .expect("add");
        assert!(s.remove("c@x.test", "*", "").expect("remove").is_some());
        let mut k = key.address_hash("bad@x.test").to_vec();
        k.extend_from_slice(b"acme\0");
        s.raw_insert_for_tests(&k, b"\x07??");
        s.flush().expect("flush");
    }
    let other = crate::sendlog::MasterKey::from_bytes([9; 32]);
    assert!(matches!(
        SqliteStore::open(&path, other),
        Err(StoreError::WrongKey { .. })
    ));
    let s = SqliteStore::open(&path, key).expect("reopen");
    assert_eq!(s.len(), 3);
    let hit = |l: Lookup<'_>, t: u64| s.check(&l, t).expect("check").map(|e| e.reason);
    assert_eq!(
        hit(q("A@x.test", "acme", "promotional"), 5).as_deref(),
        Some("unsubscribe")
    );
    assert_eq!(hit(q("a@x.test", "acme", "transactional"), 5), None);
    assert_eq!(
        hit(q("b@x.test", "", ""), 49).as_deref(),
        Some("hard-bounce")
    );
    assert_eq!(hit(q("b@x.test", "", ""), 50), None);
    assert_eq!(hit(q("c@x.test", "", ""), 5), None);
    assert_eq!(
        hit(q("bad@x.test", "acme", ""), 5).as_deref(),
        Some("unreadable")
    );
    assert_eq!(hit(q("bad@x.test", "zeta", ""), 5), None);
}

/// sled lets go of its file lock some milliseconds after the last handle drops; the migration's
/// open of an old store must wait for it instead of failing (CI failed once on
/// `benches/suppression_lookup.rs` reopening its store, when the store was still sled).
#[test]
fn a_sled_lock_released_soon_is_waited_for_and_one_held_on_is_an_error() {
    let dir = tempfile::tempdir().expect("tempdir");
    let config = sled::Config::new().path(dir.path().join("tree"));
    let holder = config.open().expect("first open");
    let release = std::thread::spawn(move || {
        std::thread::sleep(std::time::Duration::from_millis(300));
        drop(holder);
    });
    let db = migrate::open_sled(&config).expect("opens once the lock is released");
    release.join().expect("holder thread");

    // Held for longer than the wait: the lock error, not a hang.
    let err = migrate::open_sled(&config).expect_err("a lock held on is refused");
    assert!(err.to_string().contains("could not acquire lock"), "{err}");
    drop(db);
}

/// An import large enough to be prepared (hashed and sealed) on several threads writes what
/// one by one would: a replaced entry counts as not new and takes the batch's fields, of two
/// lines for one key the later wins, an erased person is skipped, every entry's address opens
/// again (from a reopened store too), and a bad line anywhere fails the batch before anything
/// of it is written.
#[test]
fn a_large_import_prepared_on_several_threads_writes_what_one_by_one_would() {
    let dir = tempfile::tempdir().expect("tmp");
    let key = crate::sendlog::MasterKey::from_bytes([5; 32]);
    let s = SqliteStore::open(dir.path(), key.clone()).expect("open");
    for i in 0..100 {
        s.add(&entry(&format!("u{i}@x.test"), "*", "", "manual", 0))
            .expect("add");
    }
    s.erase("u100@x.test", 5).expect("erase");
    let mut batch: Vec<Entry> = (0..6_000)
        .map(|i| entry(&format!("U{i}@X.test"), "*", "", "hard-bounce", 0))
        .collect();
    batch.push(entry("u200@x.test", "*", "", "complaint", 0));
    let mut bad = batch.clone();
    bad.insert(4_321, entry("not an address", "*", "", "manual", 0));
    assert!(matches!(s.add_many(&bad), Err(StoreError::BadAddress(_))));
    assert_eq!(s.len(), 100, "nothing of a failed batch is written");
    assert_eq!(s.add_many(&batch).expect("import"), 6_000 - 100 - 1);
    assert_eq!(s.len(), 5_999);
    let reason = |a: &str| s.get(a).expect("get").pop().map(|e| e.reason);
    assert_eq!(
        reason("u5@x.test").as_deref(),
        Some("hard-bounce"),
        "replaced"
    );
    assert_eq!(
        reason("u200@x.test").as_deref(),
        Some("complaint"),
        "later wins"
    );
    assert_eq!(reason("u100@x.test"), None, "erased");
    s.flush().expect("flush");
    drop(s);
    let s = SqliteStore::open(dir.path(), key).expect("reopen");
    assert_eq!(s.len(), 5_999);
    let mut listed = std::collections::HashSet::new();
    let mut cursor = None;
    loop {
        let page = s
            .list(&ListFilter::default(), cursor.as_deref(), 1_000)
            .expect("every address opens");
        listed.extend(page.entries.into_iter().map(|e| e.address));
        match page.next {
            Some(c) => cursor = Some(c),
            None => break,
        }
    }
    assert_eq!(listed.len(), 5_999);
    assert!(listed.contains("u5999@x.test") && !listed.contains("u100@x.test"));
    let hit = s
        .check(&q("u4242@x.test", "acme", "promotional"), 10)
        .expect("check");
    assert_eq!(hit.map(|e| e.reason).as_deref(), Some("hard-bounce"));
}
