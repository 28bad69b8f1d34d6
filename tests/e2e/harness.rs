//! Self-tests of the e2e harness: the DNS server, the SMTP sink and the client tools checked
//! against each other and against independent implementations, with no Gannet involved. If
//! these fail, the Gannet tests' failures mean nothing.

use std::time::Duration;

use crate::common::tools::{PySend, python, python_send, smtp_source, swaks};
use crate::common::*;

/// Runs lookups with dnspython (an independent DNS client) against the test server, all in one
/// Python process (its startup dominates otherwise). One result per question:
/// `NOERROR rr | rr`, `NXDOMAIN` or `SERVFAIL`.
async fn lookups(dns: &TestDns, questions: &[(&str, &str)], tcp: bool) -> Vec<String> {
    let code = r#"
import json, sys, dns.resolver
args = json.load(sys.stdin)
r = dns.resolver.Resolver(configure=False)
r.nameservers = ["127.0.0.1"]
r.port = args["port"]
r.lifetime = 5
for name, rtype in args["questions"]:
    try:
        ans = r.resolve(name, rtype, tcp=args["tcp"], raise_on_no_answer=False)
        recs = sorted(x.to_text() for x in ans.rrset) if ans.rrset is not None else []
        print(("NOERROR " + " | ".join(recs)).strip())
    except dns.resolver.NXDOMAIN:
        print("NXDOMAIN")
    except dns.resolver.NoNameservers:
        print("SERVFAIL")
"#;
    let input = serde_json::json!({"port": dns.addr.port(), "questions": questions, "tcp": tcp});
    let out = python(code, &[], Some(input.to_string().as_bytes())).await;
    out.assert_success();
    out.stdout.lines().map(str::to_string).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dns_answers_records_nxdomain_nodata_and_servfail() {
    let dns = TestDns::start(
        Zone::new()
            .mx("example.test", 10, "mx1.example.test")
            .mx("example.test", 20, "mx2.example.test")
            .a("mx1.example.test", "127.0.0.11")
            .a("MX2.Example.Test.", "127.0.0.12")
            .aaaa("v6.example.test", "::1".parse().unwrap())
            .txt("sel._domainkey.example.test", &"k".repeat(300))
            .ptr("127.0.0.11", "mx1.example.test")
            .null_mx("nomail.test")
            .cname("alias.example.test", "mx1.example.test")
            .servfail("broken.test"),
    )
    .await;
    let questions = [
        ("example.test", "MX"),
        ("mx2.example.test", "A"),
        ("v6.example.test", "AAAA"),
        ("nomail.test", "MX"),
        ("missing.test", "MX"),
        // The name exists but has no MX: NODATA, which is what makes an implicit MX.
        ("mx1.example.test", "MX"),
        ("broken.test", "MX"),
        ("11.0.0.127.in-addr.arpa", "PTR"),
        ("alias.example.test", "A"),
        ("sel._domainkey.example.test", "TXT"),
    ];
    let expected = [
        "NOERROR 10 mx1.example.test. | 20 mx2.example.test.".to_string(),
        "NOERROR 127.0.0.12".to_string(),
        "NOERROR ::1".to_string(),
        "NOERROR 0 .".to_string(),
        "NXDOMAIN".to_string(),
        "NOERROR".to_string(),
        "SERVFAIL".to_string(),
        "NOERROR mx1.example.test.".to_string(),
        "NOERROR 127.0.0.11".to_string(),
        format!("NOERROR \"{}\" \"{}\"", "k".repeat(255), "k".repeat(45)),
    ];
    for tcp in [false, true] {
        let got = lookups(&dns, &questions, tcp).await;
        assert_eq!(got.len(), questions.len(), "{got:?}");
        for ((q, want), got) in questions.iter().zip(&expected).zip(&got) {
            assert_eq!(got, want, "{q:?} over {}", if tcp { "TCP" } else { "UDP" });
        }
    }
    assert!(
        dns.queries()
            .iter()
            .any(|q| q.name == "broken.test" && q.qtype == "MX")
    );

    dns.set_zone(Zone::new().a("example.test", "127.0.0.13"));
    assert_eq!(
        lookups(&dns, &[("example.test", "A")], false).await,
        ["NOERROR 127.0.0.13"]
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sink_records_a_python_smtplib_transaction_with_utf8_and_8bit() {
    let (_port, sinks) = bind_sinks(&["127.0.0.21"]).await;
    let sink = &sinks[0];
    let msg = "From: a@sender.test\r\nSubject: caf\u{e9}\r\n\r\n8-bit body: \u{e9}t\u{e9}\r\n.leading dot\r\n".as_bytes();
    let r = python_send(
        sink.addr(),
        &PySend::new(
            "a@sender.test",
            &[
                "\u{3b4}\u{3bf}\u{3ba}\u{3b9}\u{3bc}\u{3ae}@example.test",
                "b@example.test",
            ],
            msg,
        )
        .option("SMTPUTF8")
        .option("BODY=8BITMIME"),
    )
    .await;
    r.assert_ok();
    let got = sink.wait_for(1, WAIT).await;
    let t = &got[0];
    assert_eq!(t.mail_from, "a@sender.test");
    assert_eq!(
        t.rcpts,
        [
            "\u{3b4}\u{3bf}\u{3ba}\u{3b9}\u{3bc}\u{3ae}@example.test",
            "b@example.test"
        ]
    );
    assert!(
        t.mail_params
            .iter()
            .any(|p| p.eq_ignore_ascii_case("SMTPUTF8"))
    );
    assert_eq!(t.data, msg, "DATA must arrive byte for byte, dot-unstuffed");
    assert_eq!(t.ehlo, "client.test");
    assert_eq!(t.peer.ip().to_string(), "127.0.0.1");
    assert!(!t.tls);
    assert_eq!(t.header("subject").as_deref(), Some("caf\u{e9}"));
    assert_eq!(sink.connections_opened(), 1);
    assert_eq!(sink.max_concurrent(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sink_scripted_replies_rcpt_data_and_421() {
    let (_port, sinks) = bind_sinks(&["127.0.0.22"]).await;
    let sink = &sinks[0];
    sink.reject_rcpt("nobody@example.test", "550 5.1.1 no such user");
    sink.defer_first(1, "451 4.7.1 try later");

    let mut c = SmtpClient::connect(sink.addr()).await;
    let ehlo = c.hello("raw.test").await;
    for ext in ["PIPELINING", "8BITMIME", "SMTPUTF8", "ENHANCEDSTATUSCODES"] {
        assert!(
            ehlo.extensions().iter().any(|e| e == ext),
            "{ext} missing: {ehlo:?}"
        );
    }
    c.cmd("MAIL FROM:<a@sender.test>", "250").await;
    c.cmd("RCPT TO:<nobody@example.test>", "550 5.1.1").await;
    c.cmd("RCPT TO:<b@example.test>", "250").await;
    c.data(b"Subject: one\r\n\r\nx\r\n", "451 4.7.1").await;
    c.cmd("MAIL FROM:<a@sender.test>", "250").await;
    c.cmd("RCPT TO:<b@example.test>", "250").await;
    c.data(b"Subject: two\r\n\r\nx\r\n", "250").await;
    c.quit().await;

    let all = sink.transactions();
    assert_eq!(all.len(), 2);
    assert!(!all[0].accepted);
    assert_eq!(all[0].rejected_rcpts[0].0, "nobody@example.test");
    assert!(all[1].accepted);
    assert_eq!(sink.messages().len(), 1);

    sink.add_rule(
        Rule::new(Stage::Mail, "421 4.7.28 rate limited").for_duration(Duration::from_secs(60)),
    );
    let mut c = SmtpClient::connect(sink.addr()).await;
    c.hello("raw.test").await;
    c.cmd("MAIL FROM:<a@sender.test>", "421 4.7.28").await;
    c.expect_closed().await;
    sink.clear_rules();
    assert_eq!(sink.connections_opened(), 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sink_starttls_and_swaks() {
    let (_port, sinks) = bind_sinks(&["127.0.0.23"]).await;
    let sink = &sinks[0];
    sink.set_starttls(true);
    let out = swaks(
        sink.addr(),
        &[
            "--from",
            "a@sender.test",
            "--to",
            "b@example.test",
            "--ehlo",
            "swaks.test",
            "--tls",
            "--header",
            "Subject: via swaks",
            "--body",
            "hello from swaks",
        ],
    )
    .await;
    out.assert_success();
    let t = &sink.wait_for(1, WAIT).await[0];
    assert!(t.tls, "swaks --tls must have used STARTTLS");
    assert_eq!(t.ehlo, "swaks.test");
    assert_eq!(t.header("Subject").as_deref(), Some("via swaks"));
    assert!(t.text().contains("hello from swaks"));

    // Raw client STARTTLS against the same sink.
    let mut c = SmtpClient::connect(sink.addr()).await;
    let ehlo = c.hello("raw.test").await;
    assert!(ehlo.extensions().iter().any(|e| e == "STARTTLS"));
    c.starttls().await;
    let ehlo = c.cmd("EHLO raw.test", "250").await;
    assert!(!ehlo.extensions().iter().any(|e| e == "STARTTLS"));
    c.send(
        "a@sender.test",
        &["c@example.test"],
        b"Subject: tls\r\n\r\nx\r\n",
    )
    .await;
    c.quit().await;
    assert!(sink.wait_for(2, WAIT).await[1].tls);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sink_counts_concurrency_from_smtp_source_and_delays() {
    let (_port, sinks) = bind_sinks(&["127.0.0.24"]).await;
    let sink = &sinks[0];
    sink.set_delay(Duration::from_millis(200));
    let out = smtp_source(sink.addr(), 6, 3, "a@sender.test", "b@example.test", 512).await;
    out.assert_success();
    let msgs = sink.wait_for(6, WAIT).await;
    assert_eq!(msgs.len(), 6);
    assert_eq!(
        sink.connections_opened(),
        6,
        "smtp-source opens one session per message"
    );
    assert!(
        sink.max_concurrent() >= 2,
        "3 parallel sessions with a 200 ms delay overlap"
    );
    assert!(sink.max_concurrent() <= 3);
    assert_eq!(sink.per_second_counts().iter().sum::<usize>(), 6);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sink_chunking_and_pipelining() {
    let (_port, sinks) = bind_sinks(&["127.0.0.25"]).await;
    let sink = &sinks[0];
    sink.set_chunking(true);
    let mut c = SmtpClient::connect(sink.addr()).await;
    let ehlo = c.hello("raw.test").await;
    assert!(ehlo.extensions().iter().any(|e| e == "CHUNKING"));
    // Pipelined: all commands in one write, replies read in order.
    c.send_raw(b"MAIL FROM:<a@sender.test>\r\nRCPT TO:<b@example.test>\r\nBDAT 10\r\n0123456789BDAT 2 LAST\r\nab")
        .await
        .unwrap();
    c.expect("250").await;
    c.expect("250").await;
    c.expect("250").await;
    c.expect("250").await;
    c.quit().await;
    let t = &sink.wait_for(1, WAIT).await[0];
    assert!(t.bdat);
    assert_eq!(t.data, b"0123456789ab");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bind_sinks_shares_one_port_across_ips() {
    let (port, sinks) = bind_sinks(&["127.0.0.26", "127.0.0.27"]).await;
    assert_eq!(sinks.len(), 2);
    assert!(sinks.iter().all(|s| s.port() == port));
    assert_ne!(sinks[0].ip(), sinks[1].ip());
}

#[test]
fn config_template_is_valid_toml_with_placeholders() {
    // A stand-in address: building the text needs only the DNS address.
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async {
        let dns = TestDns::start(Zone::new()).await;
        let text = TestConfig::new(&dns, 2525)
            .route("routed.test", "127.0.0.9:2525")
            .listener_option("max_recipients = 3")
            .delivery_option("max_connections_per_destination = 2")
            .pool("tx", &[("127.0.0.2", "tx.gannet.test")])
            .class("transactional", "tx", 20)
            .class("bulk", "default", -1)
            .file("keys/a.pem", "KEY")
            .extra("[[listener]]\nname = \"tls\"\naddress = \"127.0.0.1:${PORT_TLS}\"\ntls = \"implicit\"\ntls_cert = \"${CERT}\"\ntls_key = \"${KEY}\"\n")
            .build();
        // Placeholders are quoted strings, so the template parses as TOML as it is.
        let v: toml::Value = toml::from_str(&text).expect("template is TOML");
        assert_eq!(v["delivery"]["port"].as_integer(), Some(2525));
        assert_eq!(v["route"][0]["domain"].as_str(), Some("routed.test"));
        assert_eq!(v["listener"][1]["tls"].as_str(), Some("implicit"));
        assert_eq!(v["pool"][1]["name"].as_str(), Some("tx"));
        assert_eq!(v["pool"][1]["sources"][0]["ip"].as_str(), Some("127.0.0.2"));
        assert_eq!(v["class"]["transactional"]["pool"].as_str(), Some("tx"));
        assert_eq!(v["class"]["transactional"]["priority"].as_integer(), Some(20));
        assert_eq!(v["class"]["promotional"]["pool"].as_str(), Some("default"));
        assert_eq!(v["class"]["bulk"]["priority"].as_integer(), Some(-1));
        assert_eq!(v["dns"]["nameservers"][0].as_str(), Some(dns.addr.to_string().as_str()));
    });
}

/// The resolver Gannet uses (hickory-resolver) reads the test server's answers the way the
/// delivery tests rely on: MX in preference order, NXDOMAIN, NODATA, SERVFAIL, null MX.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hickory_resolver_understands_the_test_dns() {
    use hickory_resolver::Resolver;
    use hickory_resolver::config::{ConnectionConfig, NameServerConfig, ResolverConfig};
    use hickory_resolver::net::runtime::TokioRuntimeProvider;

    let dns = TestDns::start(
        Zone::new()
            .mx("example.test", 20, "mx2.example.test")
            .mx("example.test", 10, "mx1.example.test")
            .a("mx1.example.test", "127.0.0.11")
            .null_mx("nomail.test")
            .servfail("broken.test"),
    )
    .await;
    let mut udp = ConnectionConfig::udp();
    udp.port = dns.addr.port();
    let mut tcp = ConnectionConfig::tcp();
    tcp.port = dns.addr.port();
    let ns = NameServerConfig::new(dns.addr.ip(), true, vec![udp, tcp]);
    let resolver = Resolver::builder_with_config(
        ResolverConfig::from_name_servers(vec![ns]),
        TokioRuntimeProvider::default(),
    )
    .build()
    .expect("resolver");

    let mx = resolver
        .mx_lookup("example.test.")
        .await
        .expect("MX lookup");
    let mut got: Vec<String> = mx.answers().iter().map(|r| r.data.to_string()).collect();
    got.sort();
    assert_eq!(got, ["10 mx1.example.test.", "20 mx2.example.test."]);

    let null = resolver
        .mx_lookup("nomail.test.")
        .await
        .expect("null MX lookup");
    assert_eq!(null.answers()[0].data.to_string(), "0 .");

    let nx = resolver
        .mx_lookup("missing.test.")
        .await
        .expect_err("NXDOMAIN");
    assert!(nx.is_nx_domain(), "{nx:?}");

    let nodata = resolver
        .mx_lookup("mx1.example.test.")
        .await
        .expect_err("NODATA");
    assert!(
        nodata.is_no_records_found() && !nodata.is_nx_domain(),
        "{nodata:?}"
    );

    let sf = resolver
        .mx_lookup("broken.test.")
        .await
        .expect_err("SERVFAIL");
    assert!(
        !sf.is_no_records_found(),
        "SERVFAIL must not look like 'no such domain': {sf:?}"
    );
}
