//! Inbound verification against a DNS zone on loopback, with messages signed by Gannet's signer
//! and by dkimpy (an independent signer).

use super::*;
use crate::auth::DkimSigner;
use crate::auth::keys::{DnsRecord, parse_private_key};
use crate::auth::signer::tests::{config_with, dkim_entry, fixture};
use crate::auth::testdns::{TestDns, soa};
use crate::config::DkimAlgorithm;
use std::process::Command;

fn key_record(domain: &str, selector: &str, file: &str, alg: DkimAlgorithm) -> String {
    let key = parse_private_key(&std::fs::read(fixture(file)).unwrap(), alg).unwrap();
    DnsRecord::for_key(domain, selector, &key).zone_line() + "\n"
}

async fn world() -> TestDns {
    let mut z = soa("test.");
    z.push_str("sender.test. IN TXT \"v=spf1 ip4:192.0.2.10 -all\"\n");
    z.push_str("mx1.sender.test. IN A 192.0.2.10\n");
    z.push_str("_dmarc.sender.test. IN TXT \"v=DMARC1; p=reject\"\n");
    z.push_str(&key_record(
        "sender.test",
        "rsa1",
        "rsa2048.pem",
        DkimAlgorithm::RsaSha256,
    ));
    z.push_str(&key_record(
        "sender.test",
        "ed1",
        "ed25519.pem",
        DkimAlgorithm::Ed25519Sha256,
    ));
    z.push_str(&key_record(
        "sender.test",
        "py",
        "rsa2048-b-pkcs1.pem",
        DkimAlgorithm::RsaSha256,
    ));
    let mut rev = soa("2.0.192.in-addr.arpa.");
    rev.push_str("10.2.0.192.in-addr.arpa. IN PTR mx1.sender.test.\n");
    TestDns::start(&[("test.", z), ("2.0.192.in-addr.arpa.", rev)]).await
}

fn verifier(dns: &TestDns) -> Verifier {
    let config = Config::from_toml(
        &format!(
            "hostname = \"mx.receiver.test\"\n[dns]\nnameservers = [\"{}\"]\ntimeout = \"2s\"\n\
             [[pool]]\nname = \"p\"\nsources = [{{ ip = \"127.0.0.1\", ehlo = \"h\" }}]\n\
             [class.c]\npool = \"p\"\n",
            dns.addr
        ),
        "t",
    )
    .unwrap();
    Verifier::from_config(&config).unwrap()
}

const MSG: &[u8] = b"From: News <news@sender.test>\r\nTo: you@receiver.test\r\nSubject: hello\r\nDate: Thu, 28 May 2026 10:00:00 +0000\r\n\r\nHi there,\r\n\r\nsee you  \r\n \r\n\t\r\n";

fn signed_by_gannet(msg: &[u8]) -> Vec<u8> {
    let signer = DkimSigner::from_config(&config_with(&format!(
        "{}{}",
        dkim_entry("sender.test", "rsa1", "rsa-sha256", "rsa2048.pem", ""),
        dkim_entry("sender.test", "ed1", "ed25519-sha256", "ed25519.pem", "")
    )))
    .unwrap();
    let mut out = signer.sign(msg, std::time::SystemTime::now()).unwrap();
    out.extend_from_slice(msg);
    out
}

fn signed_by_dkimpy(msg: &[u8], canon: &str) -> Vec<u8> {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("m.eml");
    std::fs::write(&path, msg).unwrap();
    let out = Command::new("python3")
        .arg(fixture("dkimpy_sign.py"))
        .arg(&path)
        .arg(fixture("rsa2048-b-pkcs1.pem"))
        .args(["sender.test", "py", canon])
        .output()
        .expect("python3 with dkimpy");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    out.stdout
}

const GOOD_IP: &str = "192.0.2.10";

#[tokio::test]
async fn gannet_signed_mail_passes_everything() {
    let dns = world().await;
    let v = verifier(&dns);
    let r = v
        .verify(
            &signed_by_gannet(MSG),
            GOOD_IP.parse().unwrap(),
            "mx1.sender.test",
            "bounce@sender.test",
        )
        .await;
    assert_eq!(r.spf.result, AuthResult::Pass, "{r:?}");
    assert_eq!(r.dkim.len(), 2);
    assert!(r.dkim.iter().all(|d| d.result == AuthResult::Pass), "{r:?}");
    assert_eq!(
        r.dkim
            .iter()
            .map(|d| d.algorithm.as_str())
            .collect::<Vec<_>>(),
        ["rsa-sha256", "ed25519-sha256"]
    );
    assert_eq!(r.dmarc.result, AuthResult::Pass);
    assert_eq!(
        (r.dmarc.header_from.as_str(), r.dmarc.policy.as_str()),
        ("sender.test", "reject")
    );
    assert_eq!(r.iprev.result, AuthResult::Pass);
    assert_eq!(r.iprev.ptr, ["mx1.sender.test"]);

    let h = r.header("mx.receiver.test");
    let b0 = &r.dkim[0].header_b;
    let b1 = &r.dkim[1].header_b;
    assert_eq!(
        h,
        format!(
            "Authentication-Results: mx.receiver.test;\r\n\
             \tspf=pass smtp.mailfrom=bounce@sender.test smtp.helo=mx1.sender.test;\r\n\
             \tdkim=pass header.d=sender.test header.s=rsa1 header.a=rsa-sha256 header.b={b0};\r\n\
             \tdkim=pass header.d=sender.test header.s=ed1 header.a=ed25519-sha256 header.b={b1};\r\n\
             \tdmarc=pass (p=reject) header.from=sender.test;\r\n\
             \tiprev=pass policy.iprev=192.0.2.10 (mx1.sender.test)\r\n"
        )
    );
}

#[tokio::test]
async fn independent_relaxed_signature_with_trailing_whitespace_lines_passes() {
    // dkimpy signs a body ending in whitespace-only lines. mail-auth 0.13 on its own fails it
    // (mail-auth#62); the verifier's corrected body hash passes it.
    let dns = world().await;
    let v = verifier(&dns);
    let signed = signed_by_dkimpy(MSG, "relaxed/relaxed");

    let parsed = AuthenticatedMessage::parse(&signed).unwrap();
    let plain = v.auth.verify_dkim(Parameters::new(&parsed)).await;
    assert_ne!(
        plain[0].result(),
        &DkimResult::Pass,
        "mail-auth#62 appears fixed"
    );

    let r = v
        .verify(
            &signed,
            GOOD_IP.parse().unwrap(),
            "mx1.sender.test",
            "b@sender.test",
        )
        .await;
    assert_eq!(r.dkim.len(), 1);
    assert_eq!(r.dkim[0].result, AuthResult::Pass, "{r:?}");
    assert_eq!(r.dkim[0].selector, "py");
    assert_eq!(r.dmarc.result, AuthResult::Pass);

    for canon in ["simple/simple", "relaxed/simple", "simple/relaxed"] {
        let signed = signed_by_dkimpy(MSG, canon);
        let r = v
            .verify(
                &signed,
                GOOD_IP.parse().unwrap(),
                "mx1.sender.test",
                "b@sender.test",
            )
            .await;
        assert_eq!(r.dkim[0].result, AuthResult::Pass, "{canon}: {r:?}");
    }
}

#[tokio::test]
async fn tampered_body_fails_dkim_and_wrong_ip_fails_spf() {
    let dns = world().await;
    let v = verifier(&dns);
    let mut signed = signed_by_gannet(MSG);
    let pos = signed.windows(8).position(|w| w == b"see you ").unwrap();
    signed[pos] = b'S';
    let r = v
        .verify(
            &signed,
            "198.51.100.7".parse().unwrap(),
            "evil.example",
            "x@sender.test",
        )
        .await;
    assert_eq!(r.spf.result, AuthResult::Fail);
    assert!(r.dkim.iter().all(|d| d.result == AuthResult::Fail), "{r:?}");
    assert!(
        r.dkim[0]
            .reason
            .as_deref()
            .unwrap()
            .to_lowercase()
            .contains("body hash")
    );
    assert_eq!(r.dmarc.result, AuthResult::Fail);
    let h = r.header("mx.receiver.test");
    assert!(
        h.contains("dkim=fail (calculated body hash does not match signature hash)"),
        "{h}"
    );
    assert!(
        h.contains("dmarc=fail (p=reject) header.from=sender.test"),
        "{h}"
    );

    // Untampered but from an address SPF does not list: DKIM still carries DMARC.
    let r = v
        .verify(
            &signed_by_gannet(MSG),
            "198.51.100.7".parse().unwrap(),
            "evil.example",
            "x@sender.test",
        )
        .await;
    assert_eq!(r.spf.result, AuthResult::Fail);
    assert_eq!(r.dmarc.result, AuthResult::Pass);
    // No PTR exists for 198.51.100.7 in the test world.
    assert_ne!(r.iprev.result, AuthResult::Pass);
}

#[tokio::test]
async fn unsigned_mail_and_null_sender() {
    let dns = world().await;
    let v = verifier(&dns);
    let r = v
        .verify(MSG, GOOD_IP.parse().unwrap(), "mx1.sender.test", "")
        .await;
    assert!(r.dkim.is_empty());
    // Null sender: SPF checks the HELO identity.
    assert_eq!(r.spf.domain, "mx1.sender.test");
    assert_eq!(r.dmarc.result, AuthResult::Fail);
    let h = r.header("mx.receiver.test");
    assert!(h.contains(";\r\n\tdkim=none;\r\n"), "{h}");
    assert!(!h.contains("smtp.mailfrom"), "{h}");
}

#[test]
fn header_values_cannot_inject_lines() {
    let r = AuthResults {
        spf: SpfCheck {
            result: AuthResult::None,
            domain: String::new(),
            mail_from: "a\"b c@x\r\nX-Evil: 1".to_string(),
            helo: "helo\r\n\r\nbody".to_string(),
        },
        dkim: vec![DkimCheck {
            result: AuthResult::Neutral,
            domain: "d.test".into(),
            selector: "s;x".into(),
            algorithm: "rsa-sha256".into(),
            header_b: "abcd/+==".into(),
            reason: Some("bad (thing)\r\n".into()),
        }],
        dmarc: DmarcCheck {
            result: AuthResult::None,
            header_from: String::new(),
            policy: String::new(),
        },
        iprev: IprevCheck {
            result: AuthResult::None,
            ip: "192.0.2.1".parse().unwrap(),
            ptr: vec!["a(b)".into()],
        },
    };
    let h = r.header("mx.test\r\nX-Evil: 2");
    // Every line break is a fold followed by a tab; the field ends in one CRLF.
    assert_eq!(
        h.matches("\r\n").count(),
        h.matches("\r\n\t").count() + 1,
        "{h}"
    );
    assert!(h.ends_with("\r\n") && !h.contains("\r\nX-Evil"), "{h}");
    assert!(h.contains("smtp.mailfrom=\"a\\\"b c@xX-Evil: 1\""), "{h}");
    assert!(h.contains("header.s=\"s;x\""), "{h}");
    assert!(h.contains("dkim=neutral (bad thing)"), "{h}");
}

#[test]
fn futures_can_be_spawned() {
    fn is_send<T: Send>(_: &T) {}
    let config = config_with("");
    let ip: IpAddr = "192.0.2.1".parse().unwrap();
    is_send(&verify(&config, b"", ip, "h", ""));
    is_send(&crate::auth::check_domain(&config, "example.test", None));
    fn is_send_sync<T: Send + Sync>() {}
    is_send_sync::<Verifier>();
}
