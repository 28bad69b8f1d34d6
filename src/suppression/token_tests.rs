//! Table tests for the unsubscribe token: round trips, tampering, foreign keys, key files.

use super::*;

fn claims(address: &str) -> Claims {
    Claims {
        address: address.to_string(),
        tenant: Some("acme".into()),
        scope: "class:promotional".into(),
        campaign: Some("spring-sale".into()),
        issued: 20_000,
    }
}

fn key(byte: u8) -> UnsubscribeKey {
    UnsubscribeKey::from_bytes(&[byte; 32])
}

#[test]
fn round_trips_every_kind_of_claims() {
    let k = key(7);
    let cases = [
        claims("alice@example.com"),
        claims("Ünïcødé.Näme+tag@exämple.org"),
        Claims {
            address: "bob@example.net".into(),
            tenant: None,
            scope: "list:weekly".into(),
            campaign: None,
            issued: 0,
        },
        Claims {
            address: "\"quoted local\"@example.com".into(),
            tenant: Some(String::new()),
            scope: "campaign:x".into(),
            campaign: Some("x".into()),
            issued: u32::MAX,
        },
    ];
    for c in cases {
        let t = k.issue(&c).unwrap();
        assert_eq!(k.verify(&t).unwrap(), c, "token {t}");
    }
}

#[test]
fn token_carries_no_readable_address_and_is_url_and_localpart_safe() {
    let k = key(1);
    let t = k.issue(&claims("alice@example.com")).unwrap();
    assert!(!t.contains("alice"), "{t}");
    assert!(!t.contains("example"), "{t}");
    assert!(
        t.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_'),
        "{t}"
    );
    let raw = URL_SAFE_NO_PAD.decode(&t).unwrap();
    assert_eq!(raw[0], 1, "version byte");
    // Two tokens for the same claims differ (fresh nonce), both verify.
    let t2 = k.issue(&claims("alice@example.com")).unwrap();
    assert_ne!(t, t2);
    assert!(k.verify(&t2).is_ok());
}

#[test]
fn altered_forged_or_foreign_tokens_fail() {
    let k = key(2);
    let good = k.issue(&claims("alice@example.com")).unwrap();
    let raw = URL_SAFE_NO_PAD.decode(&good).unwrap();

    // Flip every single byte after the version: each must fail the tag.
    for i in 1..raw.len() {
        let mut bad = raw.clone();
        bad[i] ^= 0x01;
        let t = URL_SAFE_NO_PAD.encode(&bad);
        assert!(
            matches!(k.verify(&t), Err(TokenError::Forged)),
            "byte {i} flipped still verified"
        );
    }
    // (input, what verify must say)
    let mut wrong_version = raw.clone();
    wrong_version[0] = 2;
    type Expect = fn(&TokenError) -> bool;
    let table: Vec<(String, Expect)> = vec![
        (String::new(), |e| matches!(e, TokenError::TooShort)),
        ("!!!not base64!!!".into(), |e| {
            matches!(e, TokenError::Malformed)
        }),
        ("A".repeat(5000), |e| matches!(e, TokenError::Malformed)),
        (URL_SAFE_NO_PAD.encode([1u8; 10]), |e| {
            matches!(e, TokenError::TooShort)
        }),
        (URL_SAFE_NO_PAD.encode(&wrong_version), |e| {
            matches!(e, TokenError::UnknownVersion(2))
        }),
        (URL_SAFE_NO_PAD.encode(&raw[..raw.len() - 1]), |e| {
            matches!(e, TokenError::Forged)
        }),
        // Issued with another key.
        (key(3).issue(&claims("alice@example.com")).unwrap(), |e| {
            matches!(e, TokenError::Forged)
        }),
        // Plain JSON claims with a made-up nonce and tag.
        (
            {
                let mut v = vec![1u8];
                v.extend_from_slice(&[0u8; 12]);
                v.extend_from_slice(br#"{"a":"x@y","s":"class:p","i":1}"#);
                v.extend_from_slice(&[0u8; 16]);
                URL_SAFE_NO_PAD.encode(v)
            },
            |e| matches!(e, TokenError::Forged),
        ),
    ];
    for (input, expect) in table {
        let got = k.verify(&input);
        match got {
            Err(e) if expect(&e) => {}
            other => panic!("verify({input:?}) gave {other:?}"),
        }
    }
}

#[test]
fn secret_derivation_is_stable_and_distinct() {
    let a = UnsubscribeKey::from_secret("correct horse");
    let b = UnsubscribeKey::from_secret("correct horse");
    let c = UnsubscribeKey::from_secret("correct horse ");
    let t = a.issue(&claims("a@b.c")).unwrap();
    assert!(b.verify(&t).is_ok());
    assert!(matches!(c.verify(&t), Err(TokenError::Forged)));
}

#[test]
fn key_file_is_created_0600_then_reused_and_bad_files_are_named() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("sub/unsubscribe.key");
    let k1 = UnsubscribeKey::from_file(&path).unwrap();
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(&path).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
    }
    let k2 = UnsubscribeKey::from_file(&path).unwrap();
    let t = k1.issue(&claims("a@b.c")).unwrap();
    assert!(k2.verify(&t).is_ok(), "second load reads the same key");

    let raw = dir.path().join("raw.key");
    std::fs::write(&raw, [9u8; 32]).unwrap();
    let t = key(9).issue(&claims("a@b.c")).unwrap();
    assert!(UnsubscribeKey::from_file(&raw).unwrap().verify(&t).is_ok());

    let bad = dir.path().join("bad.key");
    for content in [&b"short"[..], &[b'z'; 64][..], &[0u8; 33][..]] {
        std::fs::write(&bad, content).unwrap();
        let e = UnsubscribeKey::from_file(&bad).unwrap_err();
        assert!(e.to_string().contains("bad.key"), "{e}");
    }
}

#[test]
fn from_config_prefers_secret_and_defaults_to_the_spool() {
    const BASE: &str = "[[pool]]\nname = \"p\"\nsources = [{ ip = \"127.0.0.1\", ehlo = \"x\" }]\n[class.promotional]\npool = \"p\"\n";
    let dir = tempfile::tempdir().unwrap();
    let toml = format!(
        "{BASE}[spool]\npath = {:?}\n",
        dir.path().display().to_string()
    );
    let config = Config::from_toml(&toml, "test").unwrap();
    UnsubscribeKey::from_config(&config).unwrap();
    assert!(dir.path().join("unsubscribe.key").exists());

    let config =
        Config::from_toml(&format!("{BASE}[unsubscribe]\nsecret = \"s\"\n"), "test").unwrap();
    let t = UnsubscribeKey::from_secret("s")
        .issue(&claims("a@b.c"))
        .unwrap();
    assert!(
        UnsubscribeKey::from_config(&config)
            .unwrap()
            .verify(&t)
            .is_ok()
    );

    for bad in [
        "[unsubscribe]\nsecret = \"s\"\nkey_file = \"k\"\n",
        "[unsubscribe]\nbase_url = \"http://x\"\n",
    ] {
        let e = Config::from_toml(&format!("{BASE}{bad}"), "test")
            .unwrap_err()
            .to_string();
        assert!(e.contains("unsubscribe."), "{e}");
    }
}

#[test]
fn urls_and_mailto_addresses() {
    let table = [
        (
            "https://gannet.example",
            "T0k",
            "https://gannet.example/u/T0k",
        ),
        (
            "https://gannet.example/",
            "T0k",
            "https://gannet.example/u/T0k",
        ),
    ];
    for (base, token, want) in table {
        assert_eq!(https_url(base, token), want);
    }
    let m = mailto_address("ab-_9", "bounce.example");
    assert_eq!(m, "unsub-ab-_9@bounce.example");
    let parse = [
        ("unsub-ab-_9@bounce.example", Some("ab-_9")),
        ("UNSUB-abc@x", Some("abc")),
        ("unsub-@x", None),
        ("postmaster@x", None),
        ("uns@x", None),
        ("unsub-xyz", Some("xyz")),
    ];
    for (addr, want) in parse {
        assert_eq!(token_from_mailto(addr), want, "{addr}");
    }
}
