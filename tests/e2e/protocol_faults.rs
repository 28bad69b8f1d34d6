//! Protocol, configuration and authorisation faults of issue 15 (items 6, 11, 13, 12), each
//! shown end to end: a real client in, the real binary, a sink (or the HTTP API) out.

use crate::common::gannet::hash_password;
use crate::common::*;

/// dest.test's MX is sink 127.0.0.72.
async fn world(configure: impl FnOnce(TestConfig) -> TestConfig) -> World {
    World::start(
        &["127.0.0.72"],
        Zone::new()
            .mail_domain("dest.test", "127.0.0.72")
            .mail_domain("origin.test", "127.0.0.72"),
        configure,
    )
    .await
}

/// Issue 15 item 6: smtp-proto strips the quotes of a quoted local part, so `"a b"@d` left as
/// `a b@d` and `"x> NOTIFY=NEVER"@d` put `NOTIFY=NEVER` into the next hop's RCPT. Both must
/// reach the sink as the same mailboxes, quoted (RFC 5321 §4.1.2 Quoted-string), with no
/// parameter on the RCPT line; the quoted sender too.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn quoted_local_parts_reach_the_next_hop_quoted_without_injected_parameters() {
    let w = world(|c| c).await;
    let rcpts = ["\"a b\"@dest.test", "\"x> NOTIFY=NEVER\"@dest.test"];
    let mut c = SmtpClient::connect(w.gannet.smtp_addr()).await;
    c.send_message(
        "\"s e\"@origin.test",
        &rcpts,
        b"Subject: quoted\r\nMessage-ID: <quoted@origin.test>\r\n\r\nhi\r\n",
    )
    .await;
    let ts = w.sinks[0]
        .wait_until(WAIT, |ts| ts.iter().any(|t| t.accepted))
        .await
        .unwrap_or_else(|e| panic!("nothing delivered: {e}"));
    let t = ts.iter().find(|t| t.accepted).unwrap();
    assert_eq!(
        t.mail_from,
        "\"s e\"@origin.test",
        "{}",
        w.sinks[0].transcript()
    );
    let mut got = t.rcpts.clone();
    got.sort();
    assert_eq!(got, rcpts, "{}", w.sinks[0].transcript());
    let transcript = w.sinks[0].transcript();
    assert!(
        !transcript.contains("NOTIFY=NEVER@") && !transcript.contains("TO:<x>"),
        "a parameter was injected:\n{transcript}"
    );
}

/// Issue 15 item 11: `MAIL FROM:<a@>` and `RCPT TO:<a@>` have an empty domain: refused with
/// 501 (5.1.7 for the sender, RFC 3463 "bad sender's mailbox address syntax"; 5.1.3 for the
/// recipient); nothing is queued.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn empty_domain_in_mail_or_rcpt_is_501() {
    let w = world(|c| c).await;
    let mut c = SmtpClient::connect(w.gannet.smtp_addr()).await;
    c.hello("client.test").await;
    c.cmd("MAIL FROM:<a@>", "501 5.1.7").await;
    c.cmd("MAIL FROM:<s@origin.test>", "250").await;
    c.cmd("RCPT TO:<a@>", "501 5.1.3").await;
    c.cmd("DATA", "554").await;
    c.quit().await;
    assert_eq!(w.gannet.queue_status().await.queued_recipients, 0);
}

/// Issue 15 item 11: RFC 5321 §4.5.1: `RCPT TO:<postmaster>` (no domain) is accepted, even
/// from a client that may not relay, and delivered to the configured `postmaster` address.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rcpt_to_postmaster_is_delivered_to_the_configured_postmaster() {
    let w = world(|c| {
        c.top_level("postmaster = \"ops@dest.test\"")
            .relay_from(&["127.0.0.1/32"])
    })
    .await;
    let outsider: std::net::IpAddr = "127.0.0.5".parse().unwrap();
    let mut c = SmtpClient::connect_from(outsider, w.gannet.smtp_addr()).await;
    c.hello("outsider.test").await;
    c.cmd("MAIL FROM:<someone@origin.test>", "250").await;
    c.cmd("RCPT TO:<elsewhere@dest.test>", "550 5.7.1").await;
    c.cmd("RCPT TO:<Postmaster>", "250").await;
    c.data(
        b"Subject: to the postmaster\r\nMessage-ID: <pm@origin.test>\r\n\r\nhello\r\n",
        "250",
    )
    .await;
    c.quit().await;
    let ts = w.sinks[0]
        .wait_until(WAIT, |ts| ts.iter().any(|t| t.accepted))
        .await
        .unwrap_or_else(|e| panic!("postmaster mail not delivered: {e}"));
    let t = ts.iter().find(|t| t.accepted).unwrap();
    assert_eq!(t.rcpts, ["ops@dest.test"]);
    assert_eq!(
        t.header("Subject").as_deref().map(str::trim),
        Some("to the postmaster")
    );
}

/// Issue 15 item 13: any client allowed to relay got DKIM signatures for any configured
/// domain and could pick any class. With `allowed_from_domains` / `allowed_classes` on an
/// `[[smtp_user]]` (and on the listener), mail outside them is refused with 550 5.7.1 naming
/// the domain or class; mail inside them is delivered; a user without lists is not limited
/// beyond the listener's.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sender_authorisation_limits_from_domains_and_classes_per_user_and_listener() {
    let hash = hash_password("news-pass").await;
    let w = world(|c| {
        c.listener_option("tls_cert = \"${CERT}\"")
            .listener_option("tls_key = \"${KEY}\"")
            .listener_option("allowed_from_domains = [\"origin.test\", \"*.origin.test\"]")
            .extra(&format!(
                "[[smtp_user]]\nname = \"news\"\npassword_hash = \"{hash}\"\n\
                 allowed_from_domains = [\"news.origin.test\"]\n\
                 allowed_classes = [\"promotional\"]\n"
            ))
    })
    .await;
    let msg = |from: &str, class: Option<&str>, id: &str| {
        let mut m = format!("From: {from}\r\nSubject: authz\r\nMessage-ID: <{id}@origin.test>\r\n");
        if let Some(c) = class {
            m.push_str(&format!("X-Gannet-Class: {c}\r\n"));
        }
        m.push_str("\r\nhello\r\n");
        m.into_bytes()
    };
    // The listener's list applies to every client on it, authenticated or not.
    let mut c = SmtpClient::connect(w.gannet.smtp_addr()).await;
    c.hello("client.test").await;
    let r = transaction(
        &mut c,
        "bad-l@dest.test",
        msg("a@other.test", None, "l1"),
        "550 5.7.1",
    )
    .await;
    assert!(r.text().contains("other.test"), "{}", r.text());
    transaction(
        &mut c,
        "good-l@dest.test",
        msg("a@origin.test", None, "l2"),
        "250",
    )
    .await;
    c.quit().await;

    // The user's lists: only news.origin.test, only promotional.
    let mut c = SmtpClient::connect(w.gannet.smtp_addr()).await;
    c.hello("client.test").await;
    c.starttls().await;
    c.cmd("EHLO client.test", "250").await;
    let plain = crate::common::tools::base64_lite::encode(b"\0news\0news-pass");
    c.cmd(&format!("AUTH PLAIN {plain}"), "235").await;
    let r = transaction(
        &mut c,
        "bad-u1@dest.test",
        msg("a@origin.test", None, "u1"),
        "550 5.7.1",
    )
    .await;
    assert!(
        r.text().contains("origin.test") && r.text().contains("news"),
        "{}",
        r.text()
    );
    let r = transaction(
        &mut c,
        "bad-u2@dest.test",
        msg("a@news.origin.test", Some("transactional"), "u2"),
        "550 5.7.1",
    )
    .await;
    assert!(r.text().contains("transactional"), "{}", r.text());
    transaction(
        &mut c,
        "good-u@dest.test",
        msg("a@news.origin.test", Some("promotional"), "u3"),
        "250",
    )
    .await;
    c.quit().await;

    let ts = w.sinks[0].wait_for(2, WAIT).await;
    let mut got: Vec<String> = ts.iter().flat_map(|t| t.rcpts.clone()).collect();
    got.sort();
    assert_eq!(got, ["good-l@dest.test", "good-u@dest.test"]);
    assert!(
        w.gannet
            .outcomes()
            .iter()
            .all(|o| !o.recipient.starts_with("bad")),
        "a refused message was queued"
    );
}

/// MAIL, one RCPT, DATA with `body`; the final reply must start with `want`.
async fn transaction(
    c: &mut SmtpClient,
    rcpt: &str,
    body: Vec<u8>,
    want: &str,
) -> crate::common::tools::Reply {
    c.cmd("MAIL FROM:<bounce@origin.test>", "250").await;
    c.cmd(&format!("RCPT TO:<{rcpt}>"), "250").await;
    c.data(&body, want).await
}

/// Issue 15 item 12: with no `[[api_token]]` the admin API is loopback-only. A client on a
/// non-loopback address is refused, and so is a loopback request whose `Host:` is a foreign
/// name (what a browser sends after DNS rebinding); `localhost`, the listener's address and
/// `[http] allowed_hosts` names are served. A non-loopback client needs a non-loopback
/// address: the test runs Gannet and curl in a private network namespace (`unshare --net`,
/// root) where 192.0.2.10 is added to `lo`, with HTTP on 0.0.0.0; nothing leaves that
/// namespace.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn loopback_only_admin_api_refuses_non_loopback_clients_and_rebound_host_names() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = dir.path().join("gannet.toml");
    std::fs::write(
        &cfg,
        format!(
            "hostname = \"gannet.test\"\n[spool]\npath = \"{}\"\n\
             [[listener]]\nname = \"default\"\naddress = \"127.0.0.1:2525\"\ndefault_class = \"c\"\n\
             [http]\naddress = \"0.0.0.0:8025\"\nallowed_hosts = [\"gannet.admin.test\"]\n\
             [[pool]]\nname = \"p\"\nsources = [{{ ip = \"127.0.0.1\", ehlo = \"h\" }}]\n\
             [class.c]\npool = \"p\"\n",
            dir.path().join("spool").display()
        ),
    )
    .unwrap();
    let script = r#"
set -e
ip link set lo up
ip addr add 192.0.2.10/32 dev lo
"$GANNET" serve --config "$CFG" >"$DIR/log" 2>&1 &
pid=$!
trap 'kill $pid 2>/dev/null || true' EXIT
up=no
for i in $(seq 1 300); do
  if curl -s -o /dev/null http://127.0.0.1:8025/health; then up=yes; break; fi
  sleep 0.1
done
echo "up $up"
q() { curl -s -o /dev/null -w '%{http_code}' "$@" || true; }
echo "remote $(q http://192.0.2.10:8025/api/v1/queues)"
echo "loopback $(q http://127.0.0.1:8025/api/v1/queues)"
echo "localhost $(q -H 'Host: localhost:8025' http://127.0.0.1:8025/api/v1/queues)"
echo "named $(q -H 'Host: gannet.admin.test:8025' http://127.0.0.1:8025/api/v1/queues)"
echo "rebound $(q -H 'Host: evil.example:8025' http://127.0.0.1:8025/api/v1/queues)"
echo "rebound-post $(q -X POST -H 'Host: evil.example:8025' http://127.0.0.1:8025/api/v1/queues/flush)"
"#;
    let mut cmd = tokio::process::Command::new("unshare");
    cmd.args(["--net", "sh", "-c", script])
        .env("GANNET", crate::common::gannet::GANNET_BIN)
        .env("CFG", &cfg)
        .env("DIR", dir.path());
    let out = crate::common::tools::run(cmd, None, std::time::Duration::from_secs(120)).await;
    let log = std::fs::read_to_string(dir.path().join("log")).unwrap_or_default();
    let ctx = format!("{out}\n--- gannet log ---\n{log}");
    let get = |key: &str| {
        out.stdout
            .lines()
            .find_map(|l| l.strip_prefix(&format!("{key} ")))
            .map(str::to_string)
    };
    assert_eq!(get("up").as_deref(), Some("yes"), "{ctx}");
    for (key, status) in [
        ("remote", "403"),
        ("loopback", "200"),
        ("localhost", "200"),
        ("named", "200"),
        ("rebound", "403"),
        ("rebound-post", "403"),
    ] {
        assert_eq!(get(key).as_deref(), Some(status), "{key}\n{ctx}");
    }
}
