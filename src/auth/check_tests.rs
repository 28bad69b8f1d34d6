//! check_domain against a DNS zone served on loopback: one domain where everything is right and
//! one domain per failure the checker must name.

use super::*;
use crate::auth::keys::{DnsRecord, parse_private_key};
use crate::auth::signer::tests::{dkim_entry, fixture};
use crate::auth::testdns::{TestDns, soa};
use crate::config::DkimAlgorithm;

fn record(domain: &str, selector: &str, key_file: &str, alg: DkimAlgorithm) -> String {
    let key = parse_private_key(&std::fs::read(fixture(key_file)).unwrap(), alg).unwrap();
    // The very line `gannet dkim keygen` prints, loaded by a real DNS server.
    DnsRecord::for_key(domain, selector, &key).zone_line() + "\n"
}

const RSA: DkimAlgorithm = DkimAlgorithm::RsaSha256;
const ED: DkimAlgorithm = DkimAlgorithm::Ed25519Sha256;

/// The DNS world of these tests. Pool sources are 192.0.2.10 (mx1) and 192.0.2.11 (mx2):
/// documentation addresses, because hickory answers PTR queries for 127.0.0.0/8 itself
/// ("localhost", RFC 6761). The checks only ask DNS about them; nothing binds to them.
fn zones(extra_source_ptr: bool) -> Vec<(&'static str, String)> {
    let mut test = soa("test.");
    test.push_str("mx1.example.test. IN A 192.0.2.10\nmx2.example.test. IN A 192.0.2.11\n");
    test.push_str("mx3.example.test. IN A 192.0.2.99\n"); // PTR of .12 points here: not confirmed
    // example.test: everything right.
    test.push_str("example.test. IN TXT \"v=spf1 ip4:192.0.2.10 ip4:192.0.2.11 -all\"\n");
    test.push_str(&record("example.test", "rsa1", "rsa2048.pem", RSA));
    test.push_str(&record("example.test", "ed1", "ed25519.pem", ED));
    test.push_str(
        "_dmarc.example.test. IN TXT \"v=DMARC1; p=reject; rua=mailto:d@example.test\"\n",
    );
    // Return-Path domain of another organisation, with SPF passing.
    test.push_str("bounces.other.test. IN TXT \"v=spf1 ip4:192.0.2.0/24 -all\"\n");
    // spf-missing-ip.test: SPF lists only one of the two sources.
    test.push_str("spf-missing-ip.test. IN TXT \"v=spf1 ip4:192.0.2.10 ~all\"\n");
    test.push_str(&record("spf-missing-ip.test", "s1", "ed25519.pem", ED));
    test.push_str("_dmarc.spf-missing-ip.test. IN TXT \"v=DMARC1; p=none\"\n");
    // spf-all-only.test: "v=spf1 -all" (the domain sends no mail, says its SPF).
    test.push_str("spf-all-only.test. IN TXT \"v=spf1 -all\"\n");
    test.push_str(&record("spf-all-only.test", "s1", "ed25519.pem", ED));
    test.push_str("_dmarc.spf-all-only.test. IN TXT \"v=DMARC1; p=reject\"\n");
    // wrong-key.test: selector s1 publishes another key than the configured one.
    test.push_str("wrong-key.test. IN TXT \"v=spf1 ip4:192.0.2.10 ip4:192.0.2.11 -all\"\n");
    test.push_str(&record("wrong-key.test", "s1", "rsa2048-b.pem", RSA));
    test.push_str("_dmarc.wrong-key.test. IN TXT \"v=DMARC1; p=quarantine\"\n");
    // missing-key.test: no record for the configured selector.
    test.push_str("missing-key.test. IN TXT \"v=spf1 ip4:192.0.2.10 ip4:192.0.2.11 -all\"\n");
    test.push_str("_dmarc.missing-key.test. IN TXT \"v=DMARC1; p=quarantine\"\n");
    // no-dmarc.test: SPF and DKIM fine, no DMARC anywhere.
    test.push_str("no-dmarc.test. IN TXT \"v=spf1 ip4:192.0.2.10 ip4:192.0.2.11 -all\"\n");
    test.push_str(&record("no-dmarc.test", "s1", "ed25519.pem", ED));
    // strict.test: adkim=s and aspf=s, signed by the parent-less domain itself.
    test.push_str("strict.test. IN TXT \"v=spf1 ip4:192.0.2.0/24 -all\"\n");
    test.push_str("news.strict.test. IN TXT \"v=spf1 ip4:192.0.2.0/24 -all\"\n");
    test.push_str(&record("strict.test", "s1", "ed25519.pem", ED));
    test.push_str("_dmarc.strict.test. IN TXT \"v=DMARC1; p=reject; adkim=s; aspf=s\"\n");

    let mut rev = soa("2.0.192.in-addr.arpa.");
    rev.push_str("10.2.0.192.in-addr.arpa. IN PTR mx1.example.test.\n");
    rev.push_str("11.2.0.192.in-addr.arpa. IN PTR mx2.example.test.\n");
    if extra_source_ptr {
        rev.push_str("12.2.0.192.in-addr.arpa. IN PTR mx3.example.test.\n");
    }
    vec![("test.", test), ("2.0.192.in-addr.arpa.", rev)]
}

fn config(dns: &TestDns, sources: &str, dkim: &str) -> Config {
    let text = format!(
        "hostname = \"gannet.example.test\"\n[dns]\nnameservers = [\"{}\"]\ntimeout = \"2s\"\n\
         [[pool]]\nname = \"p\"\nsources = [{sources}]\n[class.c]\npool = \"p\"\n{dkim}",
        dns.addr
    );
    Config::from_toml(&text, "test.toml").unwrap()
}

const SOURCES: &str = "{ ip = \"192.0.2.10\", ehlo = \"mx1.example.test\" }, { ip = \"192.0.2.11\", ehlo = \"mx2.example.test\" }";

fn all_keys() -> String {
    [
        dkim_entry("example.test", "rsa1", "rsa-sha256", "rsa2048.pem", ""),
        dkim_entry("example.test", "ed1", "ed25519-sha256", "ed25519.pem", ""),
        dkim_entry(
            "spf-missing-ip.test",
            "s1",
            "ed25519-sha256",
            "ed25519.pem",
            "",
        ),
        dkim_entry(
            "spf-all-only.test",
            "s1",
            "ed25519-sha256",
            "ed25519.pem",
            "",
        ),
        dkim_entry("wrong-key.test", "s1", "rsa-sha256", "rsa2048.pem", ""),
        dkim_entry(
            "missing-key.test",
            "s1",
            "ed25519-sha256",
            "ed25519.pem",
            "",
        ),
        dkim_entry("no-dmarc.test", "s1", "ed25519-sha256", "ed25519.pem", ""),
        dkim_entry("strict.test", "s1", "ed25519-sha256", "ed25519.pem", ""),
    ]
    .concat()
}

fn failing(report: &DomainReport) -> Vec<(CheckKind, String)> {
    report
        .checks
        .iter()
        .filter(|c| !c.ok)
        .map(|c| (c.check, c.subject.clone()))
        .collect()
}

fn get<'r>(report: &'r DomainReport, kind: CheckKind, subject: &str) -> &'r Finding {
    report
        .checks
        .iter()
        .find(|c| c.check == kind && c.subject == subject)
        .unwrap_or_else(|| panic!("no {kind:?} {subject} in\n{}", report.render_human()))
}

#[tokio::test]
async fn correct_domain_passes_every_check() {
    let dns = TestDns::start(&zones(false)).await;
    let c = config(&dns, SOURCES, &all_keys());
    let r = check_domain(&c, "Example.TEST", None).await.unwrap();
    assert!(r.all_ok(), "{}", r.render_human());
    // One finding per source for SPF and PTR, one per selector, DMARC, two alignments.
    let kinds: Vec<CheckKind> = r.checks.iter().map(|c| c.check).collect();
    use CheckKind::*;
    assert_eq!(
        kinds,
        [Spf, Spf, Dkim, Dkim, Dmarc, Alignment, Alignment, Ptr, Ptr]
    );
    assert!(get(&r, Dmarc, "example.test").detail.contains("p=reject"));
    assert!(
        get(&r, Ptr, "192.0.2.10")
            .detail
            .contains("mx1.example.test")
    );
    assert!(r.render_human().contains("All 9 checks passed."));
    let json: serde_json::Value = serde_json::from_str(&r.to_json()).unwrap();
    assert_eq!(json["checks"][0]["check"], "spf");
    assert_eq!(json["checks"][0]["subject"], "192.0.2.10");
    assert_eq!(json["checks"][0]["ok"], true);
    assert!(json["checks"][0]["fix"].is_null());
}

#[tokio::test]
async fn spf_missing_a_pool_ip_is_named_with_the_record_to_publish() {
    let dns = TestDns::start(&zones(false)).await;
    let c = config(&dns, SOURCES, &all_keys());
    let r = check_domain(&c, "spf-missing-ip.test", None).await.unwrap();
    assert_eq!(
        failing(&r),
        [(CheckKind::Spf, "192.0.2.11".to_string())],
        "{}",
        r.render_human()
    );
    let f = get(&r, CheckKind::Spf, "192.0.2.11");
    assert!(f.detail.contains("softfail"), "{}", f.detail);
    assert_eq!(
        f.fix.as_deref(),
        Some(
            "publish spf-missing-ip.test. TXT \"v=spf1 ip4:192.0.2.10 ip4:192.0.2.11 ~all\" \
             (replacing \"v=spf1 ip4:192.0.2.10 ~all\")"
        )
    );
    let human = r.render_human();
    assert!(human.contains("FAIL spf       192.0.2.11"), "{human}");
    assert!(
        human.contains("fix: publish spf-missing-ip.test. TXT"),
        "{human}"
    );
}

#[tokio::test]
async fn spf_dash_all_only_fails_every_source() {
    let dns = TestDns::start(&zones(false)).await;
    let c = config(&dns, SOURCES, &all_keys());
    let r = check_domain(&c, "spf-all-only.test", None).await.unwrap();
    assert_eq!(
        failing(&r),
        [
            (CheckKind::Spf, "192.0.2.10".to_string()),
            (CheckKind::Spf, "192.0.2.11".to_string())
        ],
        "{}",
        r.render_human()
    );
    let f = get(&r, CheckKind::Spf, "192.0.2.10");
    assert!(f.detail.contains("gives fail"), "{}", f.detail);
    assert!(
        f.fix
            .as_deref()
            .unwrap()
            .contains("\"v=spf1 ip4:192.0.2.10 ip4:192.0.2.11 -all\""),
        "{:?}",
        f.fix
    );
}

#[tokio::test]
async fn wrong_and_missing_dkim_keys_are_different_findings() {
    let dns = TestDns::start(&zones(false)).await;
    let c = config(&dns, SOURCES, &all_keys());

    let r = check_domain(&c, "wrong-key.test", None).await.unwrap();
    assert_eq!(
        failing(&r),
        [(CheckKind::Dkim, "s1._domainkey.wrong-key.test".to_string())],
        "{}",
        r.render_human()
    );
    let f = get(&r, CheckKind::Dkim, "s1._domainkey.wrong-key.test");
    assert!(
        f.detail
            .contains("does not match the private key of dkim[4]"),
        "{}",
        f.detail
    );
    let expected = record("wrong-key.test", "s1", "rsa2048.pem", RSA);
    assert_eq!(
        f.fix.as_deref(),
        Some(format!("publish {}", expected.trim_end()).as_str())
    );

    let r = check_domain(&c, "missing-key.test", None).await.unwrap();
    assert_eq!(
        failing(&r),
        [(
            CheckKind::Dkim,
            "s1._domainkey.missing-key.test".to_string()
        )],
        "{}",
        r.render_human()
    );
    let f = get(&r, CheckKind::Dkim, "s1._domainkey.missing-key.test");
    assert!(
        f.detail
            .starts_with("no DKIM key record at s1._domainkey.missing-key.test"),
        "{}",
        f.detail
    );
    assert!(
        f.fix
            .as_deref()
            .unwrap()
            .contains("s1._domainkey.missing-key.test. 3600 IN TXT \"v=DKIM1; k=ed25519; p=")
    );
}

#[tokio::test]
async fn missing_dmarc_is_named() {
    let dns = TestDns::start(&zones(false)).await;
    let c = config(&dns, SOURCES, &all_keys());
    let r = check_domain(&c, "no-dmarc.test", None).await.unwrap();
    assert_eq!(
        failing(&r),
        [(CheckKind::Dmarc, "no-dmarc.test".to_string())],
        "{}",
        r.render_human()
    );
    let f = get(&r, CheckKind::Dmarc, "no-dmarc.test");
    assert!(
        f.fix
            .as_deref()
            .unwrap()
            .starts_with("publish _dmarc.no-dmarc.test. TXT \"v=DMARC1; p=none")
    );
}

#[tokio::test]
async fn misaligned_return_path_is_named() {
    let dns = TestDns::start(&zones(false)).await;
    let c = config(&dns, SOURCES, &all_keys());
    let r = check_domain(&c, "example.test", Some("bounces.other.test"))
        .await
        .unwrap();
    // SPF passes for the Return-Path domain too, but it does not align with example.test.
    assert_eq!(
        failing(&r),
        [(
            CheckKind::Alignment,
            "return-path bounces.other.test".to_string()
        )],
        "{}",
        r.render_human()
    );
    assert!(get(&r, CheckKind::Spf, "192.0.2.10 (Return-Path)").ok);
    let f = get(&r, CheckKind::Alignment, "return-path bounces.other.test");
    assert!(
        f.detail.contains("DKIM alignment alone can still pass"),
        "{}",
        f.detail
    );
    assert!(f.fix.as_deref().unwrap().contains("bounces@example.test"));
}

#[tokio::test]
async fn strict_alignment_refuses_a_subdomain_return_path() {
    let dns = TestDns::start(&zones(false)).await;
    let c = config(&dns, SOURCES, &all_keys());
    // Relaxed would accept news.strict.test; aspf=s does not.
    let r = check_domain(&c, "strict.test", Some("news.strict.test"))
        .await
        .unwrap();
    assert_eq!(
        failing(&r),
        [(
            CheckKind::Alignment,
            "return-path news.strict.test".to_string()
        )],
        "{}",
        r.render_human()
    );
    assert!(get(&r, CheckKind::Alignment, "dkim d=strict.test").ok);
}

#[tokio::test]
async fn missing_and_unconfirmed_ptr_are_named() {
    let dns = TestDns::start(&zones(false)).await;
    let sources = format!("{SOURCES}, {{ ip = \"192.0.2.12\", ehlo = \"mx3.example.test\" }}");
    let c = config(&dns, &sources, &all_keys());
    let r = check_domain(&c, "example.test", None).await.unwrap();
    eprintln!("{}", r.render_human());
    let f = get(&r, CheckKind::Ptr, "192.0.2.12");
    assert!(
        !f.ok && f.detail.contains("no PTR record"),
        "{}",
        r.render_human()
    );
    assert!(
        f.fix
            .as_deref()
            .unwrap()
            .contains("12.2.0.192.in-addr.arpa. PTR mx3.example.test.")
    );
    // SPF of example.test does not list .12 either: that is named too, nothing else.
    assert_eq!(
        failing(&r),
        [
            (CheckKind::Spf, "192.0.2.12".to_string()),
            (CheckKind::Ptr, "192.0.2.12".to_string())
        ]
    );

    // With a PTR whose name does not resolve back.
    let dns = TestDns::start(&zones(true)).await;
    let c = config(&dns, &sources, &all_keys());
    let r = check_domain(&c, "example.test", None).await.unwrap();
    let f = get(&r, CheckKind::Ptr, "192.0.2.12");
    assert!(
        !f.ok && f.detail.contains("does not resolve back"),
        "{}",
        f.detail
    );
}

#[tokio::test]
async fn unconfigured_domain_and_fallback_are_reported() {
    let dns = TestDns::start(&zones(false)).await;
    let c = config(&dns, SOURCES, &all_keys());
    let r = check_domain(&c, "bounces.other.test", None).await.unwrap();
    assert!(r.signing_domain.is_none());
    assert!(!get(&r, CheckKind::Dkim, "bounces.other.test").ok);

    let c = config(
        &dns,
        SOURCES,
        &format!(
            "{}[dkim_policy]\nfallback_domain = \"example.test\"\n",
            all_keys()
        ),
    );
    let r = check_domain(&c, "bounces.other.test", None).await.unwrap();
    assert_eq!(r.signing_domain.as_deref(), Some("example.test"));
    let f = get(&r, CheckKind::Dkim, "bounces.other.test");
    assert!(
        !f.ok && f.detail.contains("fallback domain example.test"),
        "{}",
        f.detail
    );
    assert!(get(&r, CheckKind::Dkim, "rsa1._domainkey.example.test").ok);
}

#[tokio::test]
async fn unreachable_dns_is_not_ok_and_says_why() {
    // A port nobody answers on: every DNS-based check fails with a DNS error, none passes.
    let sock = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
    let text = format!(
        "[dns]\nnameservers = [\"{}\"]\ntimeout = \"200ms\"\n[[pool]]\nname = \"p\"\nsources = [{SOURCES}]\n[class.c]\npool = \"p\"\n{}",
        sock.local_addr().unwrap(),
        dkim_entry("example.test", "ed1", "ed25519-sha256", "ed25519.pem", "")
    );
    let c = Config::from_toml(&text, "t").unwrap();
    let r = check_domain(&c, "example.test", None).await.unwrap();
    for kind in [
        CheckKind::Spf,
        CheckKind::Dkim,
        CheckKind::Dmarc,
        CheckKind::Ptr,
    ] {
        assert_eq!(
            r.kind_ok(kind),
            Some(false),
            "{kind:?}\n{}",
            r.render_human()
        );
    }
}

#[test]
fn spf_suggestions_keep_the_existing_policy() {
    let ip = |s: &str| s.parse::<IpAddr>().unwrap();
    assert_eq!(
        suggest_spf(None, &[ip("192.0.2.1")]),
        "v=spf1 ip4:192.0.2.1 -all"
    );
    assert_eq!(
        suggest_spf(
            Some("v=spf1 include:_spf.example.net ~all"),
            &[ip("2001:db8::1")]
        ),
        "v=spf1 include:_spf.example.net ip6:2001:db8::1 ~all"
    );
    assert_eq!(
        suggest_spf(
            Some("v=spf1 mx redirect=_spf.example.net"),
            &[ip("192.0.2.1")]
        ),
        "v=spf1 mx ip4:192.0.2.1 redirect=_spf.example.net"
    );
    assert_eq!(
        suggest_spf(Some("v=spf1 a"), &[ip("192.0.2.1")]),
        "v=spf1 a ip4:192.0.2.1"
    );
}

#[tokio::test]
async fn periodic_checks_set_the_gauge_and_stop_on_shutdown() {
    let dns = TestDns::start(&zones(false)).await;
    let c = Arc::new(config(
        &dns,
        SOURCES,
        &[
            dkim_entry("example.test", "ed1", "ed25519-sha256", "ed25519.pem", ""),
            dkim_entry("no-dmarc.test", "s1", "ed25519-sha256", "ed25519.pem", ""),
        ]
        .concat(),
    ));
    // One round, directly.
    let gauge = domain_check_gauge();
    let reports = check_all_once(&c, &gauge).await;
    assert_eq!(reports.len(), 2);
    assert_eq!(gauge.with_label_values(&["example.test", "dmarc"]).get(), 1);
    assert_eq!(
        gauge.with_label_values(&["no-dmarc.test", "dmarc"]).get(),
        0
    );
    assert_eq!(gauge.with_label_values(&["no-dmarc.test", "spf"]).get(), 1);

    // The runner registers the gauge on the instance's registry, checks at once, and returns
    // when shut down.
    let metrics = crate::metrics::Metrics::new();
    let shutdown = CancellationToken::new();
    let checks = crate::auth::DomainChecks::new();
    let task = tokio::spawn(run_periodic_checks(
        c.clone(),
        metrics.clone(),
        checks.clone(),
        Duration::from_secs(3600),
        shutdown.clone(),
    ));
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    let wanted = "gannet_domain_check_ok{check=\"dmarc\",domain=\"no-dmarc.test\"} 0";
    while !metrics.render().contains(wanted) {
        assert!(
            tokio::time::Instant::now() < deadline,
            "{}",
            metrics.render()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(
        metrics
            .render()
            .contains("gannet_domain_check_ok{check=\"alignment\",domain=\"example.test\"} 1")
    );
    shutdown.cancel();
    tokio::time::timeout(Duration::from_secs(5), task)
        .await
        .expect("runner stops on shutdown")
        .unwrap();
    // The run kept each domain's report for the console, with its time.
    let kept = checks
        .last("No-DMARC.test.")
        .expect("a result for no-dmarc.test");
    assert!(kept.at_unix > 0);
    let report = kept.result.expect("the checks ran");
    assert_eq!(report.kind_ok(CheckKind::Dmarc), Some(false));
    assert_eq!(
        report.kind_ok(CheckKind::Dkim),
        Some(true),
        "{}",
        report.render_human()
    );
    assert!(checks.last("example.test").is_some());
    assert!(checks.last("other.test").is_none(), "no [[dkim]] for it");

    // check_interval = "0s" turns it off; the default is an hour.
    assert_eq!(c.dkim_policy.check_interval, Duration::from_secs(3600));
    let off = crate::metrics::Metrics::new();
    run_periodic_checks(
        c,
        off.clone(),
        crate::auth::DomainChecks::new(),
        Duration::ZERO,
        CancellationToken::new(),
    )
    .await;
    assert!(!off.render().contains("gannet_domain_check_ok"));
}

/// Issue 15 item 15: the record at `_dmarc.x.walkfail` exists, but the RFC 9989 tree walk's
/// next lookup (`_dmarc.walkfail`, outside every zone the test server holds, so it answers
/// REFUSED) fails. The finding must say that a DNS lookup failed and which one, not that the
/// record is unusable.
#[tokio::test]
async fn dmarc_message_names_the_failed_tree_walk_lookup() {
    let mut zone = soa("x.walkfail.");
    zone.push_str("_dmarc.x.walkfail. IN TXT \"v=DMARC1; p=reject\"\n");
    let dns = TestDns::start(&[("x.walkfail.", zone)]).await;
    let c = config(&dns, SOURCES, "");
    let r = check_domain(&c, "x.walkfail", None).await.unwrap();
    let f = get(&r, CheckKind::Dmarc, "x.walkfail");
    assert!(!f.ok, "{}", r.render_human());
    assert!(
        !f.detail.contains("not usable"),
        "blames the record for a DNS failure: {}",
        f.detail
    );
    assert!(
        f.detail.contains("DNS lookup") && f.detail.contains("_dmarc.walkfail"),
        "does not name the failed lookup: {}",
        f.detail
    );
}

#[test]
fn dmarc_tree_walk_names_follow_rfc_9989() {
    assert_eq!(
        tree_walk_names("a.b.example.com"),
        [
            "_dmarc.a.b.example.com",
            "_dmarc.b.example.com",
            "_dmarc.example.com",
            "_dmarc.com"
        ]
    );
    assert_eq!(
        tree_walk_names("1.2.3.4.5.6.7.8.9")[..2],
        ["_dmarc.1.2.3.4.5.6.7.8.9", "_dmarc.3.4.5.6.7.8.9"]
    );
    assert!(tree_walk_names("localhost").is_empty());
}
