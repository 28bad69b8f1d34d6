//! Store and rendering tests against real SQLite files in a temporary directory.

use super::*;
use crate::events::{Event, EventKind};

fn ev(kind: EventKind, rcpt: &str, queue_id: &str, campaign: &str) -> Event {
    let mut e = Event::new(kind);
    e.recipient = rcpt.to_string();
    e.sender = "news@shop.example".to_string();
    e.queue_id = queue_id.to_string();
    e.message_id = format!("{queue_id}@gannet.test");
    e.campaign = campaign.to_string();
    e.tenant = "acme".to_string();
    e
}

/// An operator event with no person in it (`flushed`, no sender).
fn flushed() -> Event {
    let mut e = ev(
        EventKind::Flushed {
            actor: "cli".into(),
            released: 7,
        },
        "",
        "",
        "",
    );
    e.sender.clear();
    e
}

fn received(queue_id: &str, variant: &str) -> Event {
    ev(
        EventKind::Received {
            listener: "default".into(),
            client_ip: "127.0.0.1".into(),
            auth: String::new(),
            size: 100,
            recipients: 2,
            variant: variant.into(),
            replayed: false,
        },
        "",
        queue_id,
        "spring",
    )
}

fn delivered(rcpt: &str, queue_id: &str) -> Event {
    ev(
        EventKind::Delivered {
            site: "example.org".into(),
            mx_host: "mx.example.org".into(),
            remote_ip: "127.0.0.5".into(),
            source_ip: "127.0.0.1".into(),
            tls: None,
            reply: format!("250 2.0.0 ok <{rcpt}>"),
            queue_secs: 0.5,
            provider: String::new(),
        },
        rcpt,
        queue_id,
        "spring",
    )
}

fn bounced(rcpt: &str, queue_id: &str, category: &str) -> Event {
    ev(
        EventKind::Bounced {
            site: "example.org".into(),
            mx_host: "mx.example.org".into(),
            remote_ip: "127.0.0.5".into(),
            source_ip: "127.0.0.1".into(),
            reply: "550 5.1.1 no such user".into(),
            category: category.into(),
            hard: true,
            provider: String::new(),
        },
        rcpt,
        queue_id,
        "spring",
    )
}

fn open_tmp(dir: &std::path::Path) -> Writer {
    let key = MasterKey::load_or_create(&dir.join("k"), &dir.join("db")).unwrap();
    store::open_writer(&dir.join("db"), key, &dir.join("k")).unwrap()
}

fn all(w: &Writer, f: EventFilter) -> Vec<serde_json::Value> {
    let mut r = Reader::open(w.info()).unwrap();
    r.events(&EventFilter { limit: 1000, ..f }).unwrap()
}

#[test]
fn events_are_found_by_recipient_message_campaign_and_type_in_order() {
    let dir = tempfile::tempdir().unwrap();
    let mut w = open_tmp(dir.path());
    let evs = [
        received("Q1", "A"),
        delivered("ann@example.org", "Q1"),
        bounced("bob@example.org", "Q1", "bad-mailbox"),
        received("Q2", "B"),
        delivered("Ann@Example.org", "Q2"),
    ];
    w.append(evs.iter()).unwrap();
    let ann = all(
        &w,
        EventFilter {
            recipient: Some("ann@example.org".into()),
            ..Default::default()
        },
    );
    assert_eq!(ann.len(), 2, "{ann:#?}");
    assert_eq!(ann[0]["queue_id"], "Q1");
    assert_eq!(ann[1]["recipient"], "Ann@Example.org");
    assert_eq!(ann[0]["reply"], "250 2.0.0 ok <ann@example.org>");
    assert_eq!(ann[0]["sender"], "news@shop.example");
    assert_eq!(ann[0]["mx_host"], "mx.example.org");
    assert_eq!(
        ann[1]["variant"], "B",
        "variant is carried from the received event"
    );
    let q1 = all(
        &w,
        EventFilter {
            message_id: Some("<Q1@gannet.test>".into()),
            ..Default::default()
        },
    );
    assert_eq!(
        q1.iter()
            .map(|e| e["type"].as_str().unwrap())
            .collect::<Vec<_>>(),
        ["received", "delivered", "bounced"]
    );
    let by_qid = all(
        &w,
        EventFilter {
            message_id: Some("Q1".into()),
            ..Default::default()
        },
    );
    assert_eq!(by_qid, q1);
    let b = all(
        &w,
        EventFilter {
            campaign: Some("spring".into()),
            kind: Some("bounced".into()),
            ..Default::default()
        },
    );
    assert_eq!(b.len(), 1);
    assert_eq!(b[0]["recipient"], "bob@example.org");
    // Cursor paging: two pages of 3 and 2 cover everything once, in order.
    let mut r = Reader::open(w.info()).unwrap();
    let p1 = r
        .events(&EventFilter {
            limit: 3,
            ..Default::default()
        })
        .unwrap();
    let after = p1.last().unwrap()["seq"].as_u64().unwrap();
    let p2 = r
        .events(&EventFilter {
            limit: 3,
            after,
            ..Default::default()
        })
        .unwrap();
    assert_eq!(p1.len() + p2.len(), 5);
    assert!(p2[0]["seq"].as_u64().unwrap() > after);
}

#[test]
fn no_clear_address_or_reply_reaches_the_database_file() {
    let dir = tempfile::tempdir().unwrap();
    let mut w = open_tmp(dir.path());
    w.append([delivered("zed.unique@example.org", "Q9")].iter())
        .unwrap();
    drop(w);
    for entry in std::fs::read_dir(dir.path()).unwrap() {
        let p = entry.unwrap().path();
        let bytes = std::fs::read(&p).unwrap();
        for needle in ["zed.unique", "news@shop", "250 2.0.0 ok"] {
            assert!(
                !bytes.windows(needle.len()).any(|w| w == needle.as_bytes()),
                "{needle} found in {}",
                p.display()
            );
        }
    }
}

#[test]
fn a_different_key_is_refused_and_a_missing_key_is_not_recreated() {
    let dir = tempfile::tempdir().unwrap();
    drop(open_tmp(dir.path()));
    std::fs::remove_file(dir.path().join("k")).unwrap();
    let e = MasterKey::load_or_create(&dir.path().join("k"), &dir.path().join("db")).unwrap_err();
    assert!(matches!(e, KeyError::Missing { .. }), "{e}");
    assert!(!dir.path().join("k").exists());
    let other = MasterKey::from_bytes([7; 32]);
    let e = store::open_writer(&dir.path().join("db"), other, &dir.path().join("k"))
        .err()
        .unwrap();
    assert!(matches!(e, StoreError::WrongKey { .. }), "{e}");
}

#[test]
fn key_file_is_created_with_mode_0600() {
    use std::os::unix::fs::PermissionsExt;
    let dir = tempfile::tempdir().unwrap();
    let _ = open_tmp(dir.path());
    let mode = std::fs::metadata(dir.path().join("k"))
        .unwrap()
        .permissions()
        .mode();
    assert_eq!(mode & 0o777, 0o600);
}

#[test]
fn campaign_stats_count_by_variant_provider_and_category() {
    let dir = tempfile::tempdir().unwrap();
    let mut w = open_tmp(dir.path());
    w.append(
        [
            received("Q1", "A"),
            delivered("a@example.org", "Q1"),
            bounced("b@example.org", "Q1", "bad-mailbox"),
            received("Q2", "B"),
            bounced("c@example.org", "Q2", "policy"),
        ]
        .iter(),
    )
    .unwrap();
    let mut r = Reader::open(w.info()).unwrap();
    let s = render::campaign_stats("spring", &r.campaign_counts("spring").unwrap());
    assert_eq!(s.total.accepted, 4);
    assert_eq!(s.total.sent, 3);
    assert_eq!(s.total.delivered, 1);
    assert_eq!(s.total.bounced, 2);
    assert_eq!(s.total.bounced_by_category["policy"], 1);
    let a = s
        .by_variant_provider
        .iter()
        .find(|l| l.variant == "A" && l.provider == "example.org")
        .unwrap();
    assert_eq!((a.delivered, a.bounced), (1, 1));
}

#[test]
fn csv_quotes_commas_quotes_and_newlines() {
    let v = serde_json::json!({"seq": 1, "type": "bounced", "reply": "550 \"no\", really\r\nbye", "extra": 3});
    let row = render::csv_row(&v);
    assert!(row.contains("\"550 \"\"no\"\", really\r\nbye\""), "{row}");
    assert!(row.contains("\"{\"\"extra\"\":3}\""), "{row}");
}

#[test]
fn prune_cutoff_is_a_day_boundary() {
    let day = 86_400_000_000i64;
    assert_eq!(prune_cutoff(10 * day + 5, 3), 7 * day);
    assert_eq!(prune_cutoff(10 * day, 0), 10 * day);
}

#[test]
fn time_filters_parse() {
    assert_eq!(parse_time("10"), Some(10_000_000));
    assert_eq!(parse_time("1970-01-02"), Some(86_400_000_000));
    assert_eq!(parse_time("1970-01-01T00:00:01Z"), Some(1_000_000));
    assert_eq!(parse_time("yesterday"), None);
}

#[test]
fn checkpoints_are_signed_and_checked_against_the_public_key() {
    let dir = tempfile::tempdir().unwrap();
    let mut w = open_tmp(dir.path());
    let cp_file = dir.path().join("cp.key");
    let cp = keys::CheckpointKey::load_or_create(&cp_file, &dir.path().join("none")).unwrap();
    let public = cp.public();
    w.sign_checkpoints(cp, &cp_file, std::time::Duration::ZERO)
        .unwrap();
    w.append([&received("q1", "A")]).unwrap();
    w.append([&delivered("a@example.org", "q1")]).unwrap();
    let mut r = Reader::open(w.info()).unwrap();
    let ok = r.verify(Some(&public)).unwrap();
    assert_eq!((ok.rows, ok.checkpoints, ok.first_broken), (2, 2, None));
    // Another key's public half: the first checkpoint reads as forged.
    let other =
        keys::CheckpointKey::load_or_create(&dir.path().join("o.key"), &dir.path().join("none"))
            .unwrap()
            .public();
    let bad = r.verify(Some(&other)).unwrap().first_broken.unwrap();
    assert_eq!(bad.seq, 1);
    assert!(bad.reason.contains("forged"), "{bad:?}");
    // The store remembers its signer: another key is refused at start.
    drop(r);
    let other_key = keys::CheckpointKey::load(&dir.path().join("o.key")).unwrap();
    let e = w
        .sign_checkpoints(
            other_key,
            &dir.path().join("o.key"),
            std::time::Duration::ZERO,
        )
        .unwrap_err();
    assert!(matches!(e, StoreError::WrongCheckpointKey { .. }), "{e}");
}

/// The CSV export written straight from the columns (`Reader::export_csv`) is byte for byte
/// what rendering each row's JSON gives (`Reader::events` + `render::csv_row`): nested
/// objects (sorted keys), floats, quotes, commas and line breaks, rows without a recipient,
/// a clear (unsealed) row, and an erased person's rows (which take the slow path), also when
/// read in chunks through the cursor.
#[test]
fn csv_export_from_columns_matches_the_json_rendering() {
    let dir = tempfile::tempdir().unwrap();
    let mut w = open_tmp(dir.path());
    let mut tls = delivered("tls@example.org", "Q1");
    if let EventKind::Delivered {
        tls: t,
        reply,
        queue_secs,
        ..
    } = &mut tls.kind
    {
        *t = Some(crate::events::TlsInfo {
            version: "TLSv1.3".into(),
            cipher: "TLS13_AES_256_GCM_SHA384".into(),
        });
        *reply = "250 2.0.0 \"quoted\", with a comma\r\nand a line \\ break é".into();
        *queue_secs = 0.1 + 0.2;
    }
    let mut access = ev(
        EventKind::LogAccess {
            actor: "loopback".into(),
            action: "events".into(),
            filter: serde_json::json!({"z": 1, "a": {"y": [1.5, "x"], "b": null}, "m": "a\"b,c\r\nd"}),
            format: "csv".into(),
            rows: 3,
        },
        "Looked, Up@example.org",
        "",
        "",
    );
    access.sender.clear();
    let clear = flushed();
    let evs = [
        received("Q1", "A"),
        tls,
        bounced("gone@example.org", "Q1", "bad-mailbox"),
        delivered("ann@example.org", "Q1"),
        access,
        clear,
        received("Q2", ""),
        bounced("gone@example.org", "Q2", "policy"),
    ];
    w.append(evs.iter()).unwrap();
    w.erase(&w.info().key.address_hash("gone@example.org"), 1)
        .unwrap();

    let mut r = Reader::open(w.info()).unwrap();
    let rows = r
        .events(&EventFilter {
            limit: 1000,
            ..Default::default()
        })
        .unwrap();
    assert_eq!(rows.len(), evs.len());
    assert!(rows.iter().any(|e| e["erased"] == true), "{rows:#?}");
    let want: String = rows.iter().map(render::csv_row).collect();

    let mut r = Reader::open(w.info()).unwrap();
    let mut got = Vec::new();
    let c = r
        .export_csv(
            &EventFilter {
                limit: 1000,
                ..Default::default()
            },
            &mut got,
        )
        .unwrap();
    assert_eq!((c.rows, c.last_seq), (evs.len(), evs.len() as u64));
    assert_eq!(String::from_utf8(got).unwrap(), want);

    // In chunks of three, each with a fresh reader, as the API streams it.
    let mut got = Vec::new();
    let mut f = EventFilter {
        limit: 3,
        ..Default::default()
    };
    loop {
        let c = Reader::open(w.info())
            .unwrap()
            .export_csv(&f, &mut got)
            .unwrap();
        if c.rows < f.limit {
            break;
        }
        f.after = c.last_seq;
    }
    assert_eq!(String::from_utf8(got).unwrap(), want);
}

/// The `data` column's JSON: in the format rows were written in before
/// (`DataFormat::Event`) what serialising a copy of the event with the recipient and sender
/// cleared gave; now (`DataFormat::Kind`) the kind's JSON alone.
#[test]
fn stored_json_is_the_event_without_its_addresses_or_only_its_kind() {
    let mut e = delivered("ann@example.org", "Q1");
    if let EventKind::Delivered { tls, .. } = &mut e.kind {
        *tls = Some(crate::events::TlsInfo {
            version: "TLSv1.3".into(),
            cipher: "X".into(),
        });
    }
    e.attempt = 3;
    let mut cleared = e.clone();
    cleared.recipient.clear();
    cleared.sender.clear();
    assert_eq!(
        String::from_utf8(store::data_json(&e, store::DataFormat::Event)).unwrap(),
        serde_json::to_string(&cleared).unwrap()
    );
    assert_eq!(
        String::from_utf8(store::data_json(&e, store::DataFormat::Kind)).unwrap(),
        serde_json::to_string(&e.kind).unwrap()
    );
}

/// Logs written before `data` held only the kind's facts (`DataFormat::Event`) read as
/// before: a store written all in the old format, one all in the new and one that switched
/// half way (an upgrade) give the same events, JSON and CSV, erased rows included; the mixed
/// one verifies with its signed checkpoints, and changing a byte of a row on either side of
/// the switch is found and named.
#[test]
fn logs_in_the_earlier_data_format_read_and_verify_as_before() {
    let mut evs = vec![
        received("Q1", "A"),
        delivered("ann@example.org", "Q1"),
        bounced("gone@example.org", "Q1", "bad-mailbox"),
    ];
    evs.push(flushed());
    evs.push(received("Q2", ""));
    let mut tls = delivered("bob@example.org", "Q2");
    if let EventKind::Delivered { tls: t, reply, .. } = &mut tls.kind {
        *t = Some(crate::events::TlsInfo {
            version: "TLSv1.3".into(),
            cipher: "TLS13_AES_256_GCM_SHA384".into(),
        });
        *reply = "250 2.0.0 \"quoted\", with a comma".into();
    }
    tls.attempt = 2;
    evs.push(tls);
    evs.push(bounced("gone@example.org", "Q2", "policy"));
    let key = [9u8; 32];
    let dir = tempfile::tempdir().unwrap();
    let write = |name: &str, old_rows: usize| {
        let path = dir.path().join(name);
        let mut w =
            store::open_writer(&path, MasterKey::from_bytes(key), &dir.path().join("k")).unwrap();
        let cp_file = dir.path().join("cp.key");
        let cp = keys::CheckpointKey::load_or_create(&cp_file, &dir.path().join("none")).unwrap();
        w.sign_checkpoints(cp, &cp_file, std::time::Duration::ZERO)
            .unwrap();
        w.write_data_as(store::DataFormat::Event);
        w.append(&evs[..old_rows]).unwrap();
        w.write_data_as(store::DataFormat::Kind);
        w.append(&evs[old_rows..]).unwrap();
        w.erase(&w.info().key.address_hash("gone@example.org"), 1)
            .unwrap();
        w
    };
    let read = |w: &Writer| {
        let rows = all(w, EventFilter::default());
        let mut csv = Vec::new();
        Reader::open(w.info())
            .unwrap()
            .export_csv(
                &EventFilter {
                    limit: 1000,
                    ..Default::default()
                },
                &mut csv,
            )
            .unwrap();
        (rows, String::from_utf8(csv).unwrap())
    };
    let old = write("old", evs.len());
    let new = write("new", 0);
    let mixed = write("mixed", 3);
    let (old_rows, old_csv) = read(&old);
    assert_eq!(old_rows.len(), evs.len());
    assert_eq!(old_rows[1]["reply"], "250 2.0.0 ok <ann@example.org>");
    assert_eq!(old_rows[5]["attempt"], 2);
    assert_eq!(old_rows[2]["erased"], true);
    for w in [&new, &mixed] {
        let (rows, csv) = read(w);
        assert_eq!(rows, old_rows, "{}", w.info().path.display());
        assert_eq!(csv, old_csv, "{}", w.info().path.display());
        assert_eq!(
            csv,
            rows.iter().map(render::csv_row).collect::<String>(),
            "the CSV from the columns is the JSON's"
        );
    }
    let data_len = |w: &Writer, seq: i64| -> i64 {
        let c = rusqlite::Connection::open(&w.info().path).unwrap();
        c.query_row(
            "SELECT length(data) FROM events WHERE seq = ?1",
            [seq],
            |r| r.get(0),
        )
        .unwrap()
    };
    assert!(
        data_len(&new, 2) + 100 < data_len(&old, 2),
        "a row of the kind's facts only is smaller: {} against {}",
        data_len(&new, 2),
        data_len(&old, 2)
    );
    let cp_public = keys::CheckpointKey::load(&dir.path().join("cp.key"))
        .unwrap()
        .public();
    let ok = Reader::open(mixed.info())
        .unwrap()
        .verify(Some(&cp_public))
        .unwrap();
    assert!(ok.checkpoints >= 2, "{ok:?}");
    assert_eq!((ok.rows, ok.first_broken), (evs.len() as u64, None));
    // One byte changed in the `data` of an old-format row, then of a new-format one.
    let path = mixed.info().path.clone();
    drop((old, new, mixed));
    for seq in [2i64, 6] {
        let c = rusqlite::Connection::open(&path).unwrap();
        let mut data: Vec<u8> = c
            .query_row("SELECT data FROM events WHERE seq = ?1", [seq], |r| {
                r.get(0)
            })
            .unwrap();
        data[20] ^= 1;
        c.execute(
            "UPDATE events SET data = ?1 WHERE seq = ?2",
            rusqlite::params![data, seq],
        )
        .unwrap();
        let info = StoreInfo {
            path: path.clone(),
            key: MasterKey::from_bytes(key),
        };
        let bad = Reader::open(&info)
            .unwrap()
            .verify(Some(&cp_public))
            .unwrap()
            .first_broken
            .unwrap();
        assert_eq!(bad.seq, seq, "the changed row is named: {bad:?}");
        data[20] ^= 1;
        if seq == 2 {
            c.execute(
                "UPDATE events SET data = ?1 WHERE seq = ?2",
                rusqlite::params![data, seq],
            )
            .unwrap();
            let ok = Reader::open(&info)
                .unwrap()
                .verify(Some(&cp_public))
                .unwrap();
            assert_eq!(ok.first_broken, None, "restored");
        }
    }
}

/// The query plan SQLite picks for `f` (one line per step).
fn plan(r: &Reader, f: &EventFilter) -> String {
    let (sql, args) = r.select(f);
    let mut stmt = r
        .conn
        .prepare(&format!("EXPLAIN QUERY PLAN {sql}"))
        .unwrap();
    let rows = stmt
        .query_map(rusqlite::params_from_iter(args), |row| {
            row.get::<_, String>(3)
        })
        .unwrap();
    rows.map(Result::unwrap).collect::<Vec<_>>().join("; ")
}

/// Issue 18: indexes by recipient, message id, campaign, tenant and time. Every such query
/// is answered through its index, in a new store (partial campaign and tenant indexes: rows
/// without either are not in them; time blocks instead of a time index) and in one created
/// with the earlier full indexes (and the time index).
#[test]
fn every_filter_is_answered_through_its_index() {
    let filters = |rcpt: &str| {
        [
            (
                "events_rcpt",
                EventFilter {
                    recipient: Some(rcpt.into()),
                    ..Default::default()
                },
            ),
            (
                "events_message",
                EventFilter {
                    message_id: Some("<m1@x>".into()),
                    ..Default::default()
                },
            ),
            (
                "events_queue",
                EventFilter {
                    queue_id: Some("Q1".into()),
                    ..Default::default()
                },
            ),
            (
                "events_campaign",
                EventFilter {
                    campaign: Some("spring".into()),
                    ..Default::default()
                },
            ),
            (
                "events_tenant",
                EventFilter {
                    tenant: Some("acme".into()),
                    ..Default::default()
                },
            ),
            (
                "events_time",
                EventFilter {
                    since_us: Some(1),
                    until_us: Some(2),
                    ..Default::default()
                },
            ),
        ]
    };
    for old_layout in [false, true] {
        let dir = tempfile::tempdir().unwrap();
        if old_layout {
            // The key first: a key file is created only for a store that does not exist yet.
            MasterKey::load_or_create(&dir.path().join("k"), &dir.path().join("db")).unwrap();
            let c = rusqlite::Connection::open(dir.path().join("db")).unwrap();
            c.execute_batch(
                "CREATE TABLE events (seq INTEGER PRIMARY KEY, id TEXT NOT NULL, time_us INTEGER NOT NULL, \
                 type TEXT NOT NULL, queue_id TEXT NOT NULL, message_id TEXT NOT NULL, tenant TEXT NOT NULL, \
                 campaign TEXT NOT NULL, class TEXT NOT NULL, pool TEXT NOT NULL, attempt INTEGER NOT NULL, \
                 variant TEXT NOT NULL, site TEXT NOT NULL, category TEXT NOT NULL, rcpt_hash BLOB, \
                 sender_hash BLOB, rcpt BLOB, sender BLOB, data_key BLOB, data BLOB NOT NULL, \
                 prev BLOB NOT NULL, hash BLOB NOT NULL);
                 CREATE INDEX events_campaign ON events (campaign, seq);
                 CREATE INDEX events_tenant ON events (tenant, seq);",
            )
            .unwrap();
        }
        let mut w = open_tmp(dir.path());
        let mut no_campaign = delivered("bob@example.org", "Q2");
        no_campaign.campaign.clear();
        w.append([
            &received("Q1", "A"),
            &delivered("ann@example.org", "Q1"),
            &no_campaign,
        ])
        .unwrap();
        let r = Reader::open(w.info()).unwrap();
        for (index, f) in filters("ann@example.org") {
            // A new store has no time index: a time filter reads the seq range of the time
            // blocks that can match (see time_filters_and_pruning_find_the_same_rows...).
            let index = match index {
                "events_time" if !old_layout => "INTEGER PRIMARY KEY",
                i => i,
            };
            let p = plan(&r, &f);
            assert!(
                p.contains(index) && !p.contains("SCAN events"),
                "old layout {old_layout}: {f:?} is not answered through {index}: {p}"
            );
        }
        let partial: i64 = r
            .conn
            .query_row(
                "SELECT COUNT(*) FROM events INDEXED BY events_campaign WHERE campaign <> ''",
                [],
                |r| r.get(0),
            )
            .unwrap();
        assert_eq!(partial, 2, "old layout {old_layout}");
        let ddl: String = r
            .conn
            .query_row(
                "SELECT sql FROM sqlite_master WHERE name = 'events_campaign'",
                [],
                |r| r.get(0),
            )
            .unwrap();
        assert_eq!(ddl.contains("WHERE campaign <> ''"), !old_layout, "{ddl}");
        let by_campaign = all(
            &w,
            EventFilter {
                campaign: Some("spring".into()),
                ..Default::default()
            },
        );
        assert_eq!(by_campaign.len(), 2, "old layout {old_layout}");
        let none = all(
            &w,
            EventFilter {
                campaign: Some(String::new()),
                ..Default::default()
            },
        );
        assert_eq!(
            none.len(),
            1,
            "old layout {old_layout}: the event without a campaign"
        );
    }
}

/// Journal lines that were acked but not yet in SQLite at a crash are ingested at the next
/// open, each once: the position commits with the rows, so an ingester that starts again
/// (twice here) neither repeats nor skips a line.
#[test]
fn the_journal_is_ingested_once_across_restarts() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("db");
    let line = |e: &Event| {
        let mut b = serde_json::to_vec(e).unwrap();
        b.push(b'\n');
        b
    };
    let batch = |evs: &[Event]| evs.iter().flat_map(line).collect::<Vec<u8>>();
    let first: Vec<Event> = (0..5)
        .map(|i| delivered(&format!("j{i}@dest.test"), &format!("q{i}")))
        .collect();
    let second: Vec<Event> = (5..8)
        .map(|i| delivered(&format!("j{i}@dest.test"), &format!("q{i}")))
        .collect();
    {
        let w = open_tmp(dir.path());
        let (j, mut app) = journal::open(&db, &w.info().key).unwrap();
        app.append(&batch(&first), 5).unwrap();
        let mut ing = journal::Ingester::new(w, j, 3).unwrap();
        // One transaction of 3, then the "crash": the other 2 are only in the journal.
        assert_eq!(ing.step(ing.journal_end()).unwrap(), 3);
    }
    {
        let w = open_tmp(dir.path());
        let (j, mut app) = journal::open(&db, &w.info().key).unwrap();
        app.append(&batch(&second), 3).unwrap();
        let mut ing = journal::Ingester::new(w, j, 1000).unwrap();
        assert_eq!(journal::catch_up_at_start(&mut ing).unwrap(), 5);
    }
    let w = open_tmp(dir.path());
    let (j, _app) = journal::open(&db, &w.info().key).unwrap();
    let mut ing = journal::Ingester::new(w, j, 1000).unwrap();
    assert_eq!(journal::catch_up_at_start(&mut ing).unwrap(), 0);
    let w = open_tmp(dir.path());
    let rows = all(&w, EventFilter::default());
    let mut ids: Vec<&str> = rows.iter().map(|r| r["id"].as_str().unwrap()).collect();
    let want: Vec<&str> = first.iter().chain(&second).map(|e| e.id.as_str()).collect();
    assert_eq!(ids, want, "every journal line once, in order");
    ids.dedup();
    assert_eq!(ids.len(), 8);
    assert_eq!(rows[7]["recipient"], "j7@dest.test");
}

/// Issue 19, one journal: shipping destinations read the send log's journal, so the ingester
/// deletes only segments every registered reader has passed. A destination down (its hold at
/// the start) keeps every segment the ingester has stored; once it moves, they go.
#[test]
fn journal_segments_stay_until_every_reader_has_passed_them() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("db");
    let w = open_tmp(dir.path());
    // Small segments, so a few events fill several.
    let (j, mut app) =
        crate::ship::outbox::Outbox::open(&journal::dir_for(&db), 4096, &w.info().key).unwrap();
    j.hold("crm", j.end());
    for i in 0..60 {
        let e = delivered(&format!("s{i}@dest.test"), &format!("q{i}"));
        let mut b = serde_json::to_vec(&e).unwrap();
        b.push(b'\n');
        app.append(&b, 1).unwrap();
    }
    let segments = || {
        std::fs::read_dir(j.dir())
            .unwrap()
            .filter(|e| e.as_ref().unwrap().path().extension() == Some("seg".as_ref()))
            .count()
    };
    let before = segments();
    assert!(before > 3, "{before} segments");
    let mut ing = journal::Ingester::new(w, j.clone(), 1000).unwrap();
    assert_eq!(journal::catch_up_at_start(&mut ing).unwrap(), 60);
    assert_eq!(ing.at(), j.end(), "everything is in SQLite");
    assert_eq!(segments(), before, "the destination has not passed them");
    // The destination catches up half way, then all the way.
    let half = {
        let mut r = j.reader(crate::ship::outbox::Pos::default());
        r.read(30, j.end()).unwrap().last().unwrap().next
    };
    j.hold("crm", half);
    j.compact_held().unwrap();
    let mid = segments();
    assert!(mid < before && mid > 1, "{mid} of {before}");
    assert!(j.start() <= half);
    j.hold("crm", j.end());
    j.compact_held().unwrap();
    assert_eq!(segments(), 1, "only the segment being appended to stays");
}

/// A store in `layout` under `dir` (the key beside it).
fn open_layout(dir: &std::path::Path, layout: store::Layout) -> Writer {
    let key = MasterKey::load_or_create(&dir.join("k"), &dir.join("db")).unwrap();
    store::open_writer_as(
        &dir.join("db"),
        key,
        &dir.join("k"),
        layout,
        store::WAL_AUTOCHECKPOINT_PAGES,
    )
    .unwrap()
}

fn pragma_i64(w: &Writer, name: &str) -> i64 {
    let c = rusqlite::Connection::open(&w.info().path).unwrap();
    c.query_row(&format!("PRAGMA {name}"), [], |r| r.get(0))
        .unwrap()
}

fn schema_has(w: &Writer, name: &str) -> bool {
    let c = rusqlite::Connection::open(&w.info().path).unwrap();
    c.query_row(
        "SELECT COUNT(*) FROM sqlite_master WHERE name = ?1",
        [name],
        |r| r.get::<_, i64>(0),
    )
    .unwrap()
        == 1
}

/// Issue 18, ingest cost: a new store has 16 KiB pages, time blocks and per-sender counts
/// instead of the `time_us` and `sender_hash` indexes; a store created before keeps its 4 KiB
/// pages and both indexes when the current code opens it, and reads, appends and verifies.
#[test]
fn new_stores_get_the_new_layout_and_old_stores_keep_theirs() {
    let dir = tempfile::tempdir().unwrap();
    let w = open_tmp(dir.path());
    assert_eq!(pragma_i64(&w, "page_size"), 16384);
    assert!(schema_has(&w, "time_blocks") && schema_has(&w, "sender_rows"));
    assert!(!schema_has(&w, "events_time") && !schema_has(&w, "events_sender"));

    let old_dir = tempfile::tempdir().unwrap();
    let mut old = open_layout(old_dir.path(), store::Layout::BEFORE);
    old.append([&received("Q1", "A"), &delivered("ann@example.org", "Q1")])
        .unwrap();
    drop(old);
    let mut old = open_tmp(old_dir.path());
    assert_eq!(pragma_i64(&old, "page_size"), 4096);
    assert!(schema_has(&old, "events_time") && schema_has(&old, "events_sender"));
    assert!(!schema_has(&old, "time_blocks") && !schema_has(&old, "sender_rows"));
    old.append([&delivered("bob@example.org", "Q2")]).unwrap();
    let rows = all(&old, EventFilter::default());
    assert_eq!(rows.len(), 3);
    assert_eq!(rows[2]["recipient"], "bob@example.org");
    let report = Reader::open(old.info()).unwrap().verify(None).unwrap();
    assert_eq!((report.rows, report.first_broken), (3, None));
}

/// Time filters (`since`, `until`, both, paged) and pruning find the same rows in a store with
/// time blocks as in one with the `time_us` index, and the rows a brute-force filter finds:
/// also across block boundaries and with a replayed event whose time is far older than its
/// neighbours'. In the new store the filter reads a `seq` range, not the whole table.
#[test]
fn time_filters_and_pruning_find_the_same_rows_without_the_time_index() {
    const BASE: u64 = 1_790_000_000_000_000;
    const N: u64 = 3_000;
    // Event i at BASE + i ms, but for a replayed `received` at i = 2,600 that carries the time
    // of i = 100 (and one at i = 2,601 that is 1 µs older than its predecessor).
    let time_of = |i: u64| match i {
        2_600 => BASE + 100 * 1000 + 500,
        2_601 => BASE + 2_600 * 1000 - 1,
        i => BASE + i * 1000,
    };
    let evs: Vec<Event> = (0..N)
        .map(|i| {
            let mut e = if i == 2_600 {
                received(&format!("Q{i}"), "")
            } else {
                delivered(&format!("p{}@dest.test", i % 7), &format!("Q{i}"))
            };
            e.time_us = time_of(i);
            e
        })
        .collect();
    let dirs = [tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap()];
    let mut stores: Vec<Writer> = [store::Layout::BEFORE, store::Layout::NOW]
        .iter()
        .zip(&dirs)
        .map(|(l, d)| open_layout(d.path(), *l))
        .collect();
    for w in &mut stores {
        for chunk in evs.chunks(700) {
            w.append(chunk).unwrap();
        }
    }
    let seqs = |w: &Writer, f: &EventFilter| -> Vec<u64> {
        let mut r = Reader::open(w.info()).unwrap();
        let mut out = Vec::new();
        let mut f = EventFilter {
            limit: 400,
            ..f.clone()
        };
        loop {
            let page = r.events(&f).unwrap();
            out.extend(page.iter().map(|e| e["seq"].as_u64().unwrap()));
            if page.len() < f.limit {
                return out;
            }
            f.after = *out.last().unwrap();
        }
    };
    let windows: [(Option<u64>, Option<u64>); 8] = [
        (Some(BASE + 50 * 1000), Some(BASE + 150 * 1000)),
        (Some(BASE + 100 * 1000), Some(BASE + 100 * 1000 + 501)),
        (Some(BASE + 1_020 * 1000), Some(BASE + 1_030 * 1000)),
        (Some(BASE + 2_599 * 1000), None),
        (None, Some(BASE + 10 * 1000)),
        (Some(BASE + 2_999 * 1000), Some(BASE + 5_000 * 1000)),
        (Some(BASE + 9_000 * 1000), None),
        (None, Some(BASE)),
    ];
    let check = |stores: &[Writer], kept: &dyn Fn(u64) -> bool| {
        for (since, until) in windows {
            let f = EventFilter {
                since_us: since.map(|t| t as i64),
                until_us: until.map(|t| t as i64),
                ..Default::default()
            };
            // Row i has seq i + 1 in both stores.
            let want: Vec<u64> = (0..N)
                .filter(|&i| kept(i))
                .filter(|&i| since.is_none_or(|s| time_of(i) >= s))
                .filter(|&i| until.is_none_or(|u| time_of(i) < u))
                .map(|i| i + 1)
                .collect();
            for w in stores {
                assert_eq!(
                    seqs(w, &f),
                    want,
                    "{since:?}..{until:?} in {}",
                    w.info().path.display()
                );
            }
        }
    };
    check(&stores, &|_| true);
    let around_100 = EventFilter {
        since_us: Some((BASE + 100 * 1000) as i64),
        until_us: Some((BASE + 100 * 1000 + 501) as i64),
        ..Default::default()
    };
    assert_eq!(
        seqs(&stores[1], &around_100),
        [101, 2_601],
        "the replayed event is found beside the one of its time"
    );
    let r = Reader::open(stores[1].info()).unwrap();
    let p = plan(
        &r,
        &EventFilter {
            since_us: Some((BASE + 1_020 * 1000) as i64),
            until_us: Some((BASE + 1_030 * 1000) as i64),
            ..Default::default()
        },
    );
    assert!(
        p.contains("INTEGER PRIMARY KEY") && !p.contains("SCAN events"),
        "a time filter reads a seq range: {p}"
    );
    let p = plan(
        &r,
        &EventFilter {
            recipient: Some("p1@dest.test".into()),
            since_us: Some((BASE + 1_020 * 1000) as i64),
            ..Default::default()
        },
    );
    assert!(p.contains("events_rcpt"), "{p}");
    drop(r);
    // Pruning removes every row up to the last one (in seq order) older than the cutoff, as
    // it did with the index: before 50 ms, rows 0..50; before 1.5 s, up to the replayed row.
    for w in &mut stores {
        assert_eq!(w.prune_before((BASE + 50 * 1000) as i64).unwrap(), 50);
    }
    check(&stores, &|i| i >= 50);
    for w in &mut stores {
        assert_eq!(w.prune_before((BASE + 1_500 * 1000) as i64).unwrap(), 2_551);
    }
    check(&stores, &|i| i > 2_600);
    assert!(!schema_has(&stores[0], "time_blocks"));
    let blocks: i64 = rusqlite::Connection::open(&stores[1].info().path)
        .unwrap()
        .query_row("SELECT MIN(block) FROM time_blocks", [], |r| r.get(0))
        .unwrap();
    assert_eq!(
        blocks, 2,
        "blocks 0 and 1 (seq 1-2,047) went with their rows"
    );
    for w in &stores {
        let report = Reader::open(w.info()).unwrap().verify(None).unwrap();
        assert_eq!(report.first_broken, None);
    }
}

/// An erasure counts the rows that name the person as recipient and as sender alike in
/// both layouts (the new one counts senders' rows as it appends and prunes them), also after
/// pruning.
#[test]
fn erasure_counts_sender_rows_in_both_layouts() {
    const BASE: u64 = 1_790_000_000_000_000;
    let mut counts = Vec::new();
    for layout in [store::Layout::BEFORE, store::Layout::NOW] {
        let dir = tempfile::tempdir().unwrap();
        let mut w = open_layout(dir.path(), layout);
        let evs: Vec<Event> = (0..40u64)
            .map(|i| {
                let mut e = delivered(&format!("r{}@dest.test", i % 3), &format!("Q{i}"));
                if i % 4 == 0 {
                    e.sender = "other@shop.example".into();
                }
                if i == 5 {
                    // The sender writes to themselves: one row, named twice.
                    e.recipient = "news@shop.example".into();
                }
                e.time_us = BASE + i * 1000;
                e
            })
            .collect();
        w.append(&evs[..25]).unwrap();
        w.append(&evs[25..]).unwrap();
        let hash = w.info().key.address_hash("news@shop.example");
        let other = w.info().key.address_hash("other@shop.example");
        w.prune_before((BASE + 10 * 1000) as i64).unwrap();
        let after_prune = w.erase(&other, 1).unwrap();
        let news = w.erase(&hash, 2).unwrap();
        // Rows after it in the same layout still count the sender.
        let more: Vec<Event> = (40..44u64)
            .map(|i| {
                let mut e = delivered("r9@dest.test", &format!("Q{i}"));
                e.time_us = BASE + i * 1000;
                e
            })
            .collect();
        w.append(&more).unwrap();
        let again = w.erase(&hash, 3).unwrap();
        counts.push((after_prune, news, again));
    }
    // 30 rows kept (10..40): "other" sent 12, 16, ... 36 (7 rows); "news" the other 23, plus
    // row 5 was pruned; then 4 more.
    assert_eq!(counts[0], (7, 23, 27), "old layout");
    assert_eq!(counts[1], counts[0], "new layout");
}

/// A new store that an older Gannet opened and wrote to (its schema adds the `time_us` and
/// `sender_hash` indexes; it appends without time blocks or sender counts) gets its blocks
/// and counts rebuilt at the next open, so time filters and erasure counts see those rows.
#[test]
fn rows_an_older_gannet_wrote_into_a_new_store_are_found_after_the_next_open() {
    const BASE: u64 = 1_790_000_000_000_000;
    let dir = tempfile::tempdir().unwrap();
    let mut w = open_tmp(dir.path());
    let evs: Vec<Event> = (0..3u64)
        .map(|i| {
            let mut e = delivered(&format!("o{i}@dest.test"), &format!("Q{i}"));
            e.time_us = BASE + i * 1000;
            e
        })
        .collect();
    w.append(&evs).unwrap();
    drop(w);
    // What an older Gannet does: its schema, then a row of its own (without time blocks or
    // sender counts), much later.
    let c = rusqlite::Connection::open(dir.path().join("db")).unwrap();
    c.execute_batch(
        "CREATE INDEX IF NOT EXISTS events_sender ON events (sender_hash) WHERE sender_hash IS NOT NULL;
         CREATE INDEX IF NOT EXISTS events_time ON events (time_us);
         INSERT INTO events (id, time_us, type, queue_id, message_id, tenant, campaign, class, pool, \
         attempt, variant, site, category, rcpt_hash, sender_hash, rcpt, sender, data_key, data, prev, hash) \
         SELECT id || '-old', time_us + 86400000000, type, queue_id, message_id, tenant, campaign, class, \
         pool, attempt, variant, site, category, rcpt_hash, sender_hash, rcpt, sender, data_key, data, prev, hash \
         FROM events WHERE seq = 1;",
    )
    .unwrap();
    drop(c);
    let since = EventFilter {
        since_us: Some((BASE + 86_400_000_000) as i64),
        ..Default::default()
    };
    let mut w = open_tmp(dir.path());
    assert!(!schema_has(&w, "events_time") && !schema_has(&w, "events_sender"));
    let found = all(&w, since.clone());
    assert_eq!(found.len(), 1, "{found:?}");
    assert_eq!(found[0]["seq"], 4);
    let hash = w.info().key.address_hash("news@shop.example");
    assert_eq!(
        w.erase(&hash, 1).unwrap(),
        4,
        "the older Gannet's row is counted"
    );
    // Opened again: nothing more to rebuild, the same answers.
    drop(w);
    let w = open_tmp(dir.path());
    assert_eq!(all(&w, since).len(), 1);
}

#[test]
fn column_indexes_name_the_selected_columns() {
    use super::store::{EVENT_COLUMNS, col};
    let names: Vec<&str> = EVENT_COLUMNS.split(',').map(str::trim).collect();
    for (at, name) in [
        (col::SEQ, "seq"),
        (col::ID, "id"),
        (col::TIME_US, "time_us"),
        (col::KIND, "type"),
        (col::QUEUE_ID, "queue_id"),
        (col::MESSAGE_ID, "message_id"),
        (col::TENANT, "tenant"),
        (col::CAMPAIGN, "campaign"),
        (col::CLASS, "class"),
        (col::POOL, "pool"),
        (col::ATTEMPT, "attempt"),
        (col::VARIANT, "variant"),
        (col::SITE, "site"),
        (col::CATEGORY, "category"),
        (col::RCPT_HASH, "rcpt_hash"),
        (col::SENDER_HASH, "sender_hash"),
        (col::RCPT, "rcpt"),
        (col::SENDER, "sender"),
        (col::DATA_KEY, "data_key"),
        (col::DATA, "data"),
    ] {
        assert_eq!(names.get(at), Some(&name), "column {at}");
    }
    assert_eq!(
        names.len(),
        col::PREV,
        "verify selects prev and hash after them"
    );
    assert_eq!(col::HASH, col::PREV + 1);
}
