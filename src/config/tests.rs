use super::*;

#[test]
fn embedded_default_is_valid() {
    let c = Config::embedded_default();
    assert_eq!(c.listeners[0].address.to_string(), "127.0.0.1:2525");
    assert_eq!(c.http.address.to_string(), "127.0.0.1:8025");
    assert_eq!(c.spool.path, std::path::PathBuf::from("./data"));
}

fn err_of(text: &str) -> String {
    Config::from_toml(text, "test.toml")
        .unwrap_err()
        .to_string()
}

const MIN: &str = "[[pool]]\nname = \"p\"\nsources = [{ ip = \"127.0.0.1\", ehlo = \"h\" }]\n[class.c]\npool = \"p\"\n";

#[test]
fn unknown_key_is_named() {
    let e = err_of(&format!("hostnme = \"x\"\n{MIN}"));
    assert!(e.contains("hostnme"), "{e}");
}

#[test]
fn bad_type_names_the_key() {
    let e = err_of(&format!(
        "[[listener]]\naddress = \"not an address\"\n{MIN}"
    ));
    assert!(e.contains("address"), "{e}");
}

#[test]
fn class_with_unknown_pool() {
    let e = err_of(
        "[[pool]]\nname = \"p\"\nsources = [{ ip = \"127.0.0.1\", ehlo = \"h\" }]\n[class.c]\npool = \"nope\"\n",
    );
    assert!(e.contains("class.c.pool") && e.contains("nope"), "{e}");
}

#[test]
fn bad_duration_is_explained() {
    let e = err_of(&format!("[delivery]\nretry_schedule = [\"soon\"]\n{MIN}"));
    assert!(e.contains("soon"), "{e}");
}

#[test]
fn listener_default_class_must_exist() {
    let e = err_of(&format!(
        "[[listener]]\naddress = \"127.0.0.1:1\"\ndefault_class = \"x\"\n{MIN}"
    ));
    assert!(e.contains("default_class"), "{e}");
}

fn pools(overflows: &[(&str, Option<&str>)]) -> String {
    let mut t = String::new();
    for (name, o) in overflows {
        t.push_str(&format!(
            "[[pool]]\nname = \"{name}\"\nsources = [{{ ip = \"127.0.0.1\", ehlo = \"h\" }}]\n"
        ));
        if let Some(o) = o {
            t.push_str(&format!("overflow = \"{o}\"\n"));
        }
    }
    t + "[class.c]\npool = \"a\"\n"
}

/// Issue 15 item 9: an overflow cycle spun a dispatcher at 100% once a warm-up cap was hit.
#[test]
fn warmup_overflow_cycles_are_rejected_naming_the_cycle() {
    let e = err_of(&pools(&[("a", Some("a"))]));
    assert!(e.contains("pool[0].overflow") && e.contains("a → a"), "{e}");
    let e = err_of(&pools(&[("a", Some("b")), ("b", Some("a"))]));
    assert!(
        e.contains("pool[0].overflow") && e.contains("a → b → a"),
        "{e}"
    );
    // A chain that enters a cycle further on names the cycle, not the way in.
    let e = err_of(&pools(&[
        ("a", Some("b")),
        ("b", Some("c")),
        ("c", Some("d")),
        ("d", Some("b")),
    ]));
    assert!(
        e.contains("pool[1].overflow") && e.contains("b → c → d → b"),
        "{e}"
    );
    // Chains that end are fine.
    Config::from_toml(
        &pools(&[("a", Some("b")), ("b", Some("c")), ("c", None)]),
        "t",
    )
    .unwrap();
}

/// Issue 15 item 1: `max_message_size` had no upper bound, while a spool record over the
/// record format's limit can be written but never read back.
#[test]
fn max_message_size_over_the_spool_record_limit_is_rejected() {
    let over = super::MAX_MESSAGE_SIZE + 1;
    let e = err_of(&format!(
        "[[listener]]\naddress = \"127.0.0.1:1\"\nmax_message_size = {over}\n{MIN}"
    ));
    assert!(
        e.contains("max_message_size") && e.contains(&over.to_string()),
        "{e}"
    );
    let at = super::MAX_MESSAGE_SIZE;
    Config::from_toml(
        &format!("[[listener]]\naddress = \"127.0.0.1:1\"\nmax_message_size = {at}\n{MIN}"),
        "test.toml",
    )
    .unwrap();
}

#[test]
fn top_level_default_class_must_exist_and_is_the_fallback() {
    let e = Config::from_toml(&format!("default_class = \"x\"\n{MIN}"), "t")
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("default_class") && e.contains("[class.x]"),
        "{e}"
    );
    let two = "[class.alpha]\npool = \"p\"\n[class.beta]\npool = \"p\"\n";
    let c = Config::from_toml(&format!("{MIN}\n{two}"), "t").unwrap();
    assert_eq!(
        c.fallback_class(),
        Some("alpha"),
        "unset: the alphabetically first"
    );
    let c = Config::from_toml(&format!("default_class = \"beta\"\n{MIN}\n{two}"), "t").unwrap();
    assert_eq!(c.fallback_class(), Some("beta"));
}

/// `[anomaly]`: rates are fractions, warn ≤ critical, admins are addresses, the alert class
/// exists; each error names the key.
#[test]
fn anomaly_settings_are_checked_and_named() {
    for (toml, key, says) in [
        (
            "complaint_warn = 0.5\ncomplaint_critical = 0.3",
            "anomaly.complaint_warn",
            "must not be above critical",
        ),
        (
            "hard_bounce_critical = 5",
            "anomaly.hard_bounce_critical",
            "fraction",
        ),
        (
            "admins = [\"ops\"]",
            "anomaly.admins",
            "not an email address",
        ),
        (
            "alert_class = \"nope\"",
            "anomaly.alert_class",
            "[class.nope]",
        ),
        (
            "window = \"1s\"\ninterval = \"5s\"",
            "anomaly.window",
            "evaluation interval",
        ),
        ("ewma_alpha = 0", "anomaly.ewma_alpha", "weight"),
    ] {
        let e = err_of(&format!("{MIN}[anomaly]\n{toml}\n"));
        assert!(e.contains(key) && e.contains(says), "{toml}: {e}");
    }
    let c = Config::from_toml(
        &format!("{MIN}[anomaly]\nbreaker = true\nadmins = [\"ops@example.com\"]\n"),
        "t",
    )
    .expect("valid");
    assert_eq!(
        c.anomaly.complaint_critical, 0.003,
        "Gmail/Yahoo's 0.3% line by default"
    );
    assert_eq!(c.anomaly.hard_bounce_warn, 0.02);
    assert!(c.anomaly.breaker);
}

/// Issue 21 item 3: a listener's budget of bytes in flight below its largest message could
/// never accept such a message; the error names the key and both values.
#[test]
fn max_inflight_bytes_below_max_message_size_is_rejected() {
    let e = err_of(&format!(
        "[[listener]]\naddress = \"127.0.0.1:1\"\nmax_message_size = 2000\nmax_inflight_bytes = 1999\n{MIN}"
    ));
    assert!(
        e.contains("listener[0].max_inflight_bytes") && e.contains("1999") && e.contains("2000"),
        "{e}"
    );
    for ok in ["2000", "0"] {
        Config::from_toml(
            &format!("[[listener]]\naddress = \"127.0.0.1:1\"\nmax_message_size = 2000\nmax_inflight_bytes = {ok}\n{MIN}"),
            "test.toml",
        )
        .unwrap();
    }
}

/// Issue 22: `[[console_user]]` entries are checked and errors name the entry's key.
#[test]
fn console_users_are_checked_and_named() {
    const HASH: &str = "$argon2id$v=19$m=19456,t=2,p=1$8nbpC5bJMcUh0lUMUZmn2A$7fMcxRZjGpt1i/6EHtWiotTpHVpbJnXPLTfnQ0lP5Kg";
    const SECRET: &str = "JBSWY3DPEHPK3PXPJBSWY3DPEHPK3PXP";
    let user = |name: &str, role: &str, hash: &str, totp: Option<&str>| {
        format!(
            "[[console_user]]\nname = \"{name}\"\npassword_hash = \"{hash}\"\nrole = \"{role}\"\n{}",
            totp.map(|t| format!("totp_secret = \"{t}\"\n"))
                .unwrap_or_default()
        )
    };
    let ok = format!(
        "{}{}{MIN}",
        user("vera", "viewer", HASH, None),
        user("adam", "admin", HASH, Some(SECRET))
    );
    let c = Config::from_toml(&ok, "t").unwrap();
    assert_eq!(c.console_users.len(), 2);
    for (toml, key, says) in [
        (
            user("adam", "admin", HASH, None),
            "console_user[0].totp_secret",
            "needs a second factor",
        ),
        (
            user("adam", "operator", HASH, Some("not base32!")),
            "console_user[0].totp_secret",
            "base32",
        ),
        (
            user("adam", "operator", HASH, Some("JBSWY3DP")),
            "console_user[0].totp_secret",
            "128 bits",
        ),
        (
            user("adam", "viewer", "plain", None),
            "console_user[0].password_hash",
            "PHC",
        ),
        (
            user("a b", "viewer", HASH, None),
            "console_user[0].name",
            "letters",
        ),
        (
            format!(
                "{}{}",
                user("Vera", "viewer", HASH, None),
                user("vera", "viewer", HASH, None)
            ),
            "console_user[1].name",
            "named twice",
        ),
        (
            format!(
                "{}[console]\nlockout_after = 0\n",
                user("vera", "viewer", HASH, None)
            ),
            "console.lockout_after",
            "at least 1",
        ),
    ] {
        let e = err_of(&format!("{toml}{MIN}"));
        assert!(e.contains(key) && e.contains(says), "{toml}: {e}");
    }
    let e = err_of(&format!("{}{MIN}", user("x", "root", HASH, None)));
    assert!(e.contains("role"), "{e}");
}

/// `[[smtp_user]] tenant` must be a tenant name (not `*`, no spaces); errors name the key.
#[test]
fn smtp_user_tenant_is_checked_and_named() {
    const HASH: &str = "$argon2id$v=19$m=19456,t=2,p=1$8nbpC5bJMcUh0lUMUZmn2A$7fMcxRZjGpt1i/6EHtWiotTpHVpbJnXPLTfnQ0lP5Kg";
    let user = |tenant: &str| {
        format!(
            "[[smtp_user]]\nname = \"crm\"\npassword_hash = \"{HASH}\"\ntenant = \"{tenant}\"\n{MIN}"
        )
    };
    let c = Config::from_toml(&user("acme"), "t").unwrap();
    assert_eq!(c.smtp_users[0].tenant.as_deref(), Some("acme"));
    for bad in ["*", "ac me", ""] {
        let e = err_of(&user(bad));
        assert!(e.contains("smtp_user[0].tenant"), "{bad:?}: {e}");
    }
}

#[test]
fn outbox_commit_interval_defaults_to_10ms_and_is_capped_at_a_second() {
    let c = Config::from_toml(MIN, "test.toml").unwrap();
    assert_eq!(
        c.outbox.commit_interval,
        std::time::Duration::from_millis(10)
    );
    let c = Config::from_toml(&format!("[outbox]\ncommit_interval = \"0s\"\n{MIN}"), "t").unwrap();
    assert!(c.outbox.commit_interval.is_zero());
    let e = err_of(&format!("[outbox]\ncommit_interval = \"2s\"\n{MIN}"));
    assert!(
        e.contains("outbox.commit_interval") && e.contains("at most 1s"),
        "{e}"
    );
}

#[test]
fn sendlog_journal_defaults_and_limits() {
    let c = Config::from_toml(MIN, "t").unwrap();
    assert_eq!(
        c.sendlog.commit_interval,
        std::time::Duration::from_millis(10)
    );
    assert_eq!(
        c.sendlog.ingest_interval,
        std::time::Duration::from_millis(500)
    );
    assert_eq!(c.sendlog.ingest_batch, 10_000);
    let e = err_of(&format!("[sendlog]\ningest_interval = \"0s\"\n{MIN}"));
    assert!(e.contains("sendlog.ingest_interval"), "{e}");
    let e = err_of(&format!("[sendlog]\ncommit_interval = \"2s\"\n{MIN}"));
    assert!(
        e.contains("sendlog.commit_interval") && e.contains("at most 1s"),
        "{e}"
    );
    for key in ["ingest_batch", "batch", "bound"] {
        let e = err_of(&format!("[sendlog]\n{key} = 0\n{MIN}"));
        assert!(e.contains(&format!("sendlog.{key}")), "{key}: {e}");
    }
}

#[test]
fn amqp_urls_are_read_when_the_config_is() {
    let amqp = |url: &str| format!("{MIN}[[amqp]]\nurl = \"{url}\"\n");
    Config::from_toml(&amqp("amqp://u:p@127.0.0.1:5672/%2f?heartbeat=30"), "t").unwrap();
    Config::from_toml(&amqp("amqps://broker.example/events"), "t").unwrap();
    let e = err_of(&amqp("http://broker"));
    assert!(e.contains("amqp[0].url") && e.contains("amqp://"), "{e}");
    let e = err_of(&amqp("amqp://h:notaport/"));
    assert!(
        e.contains("amqp[0].url") && e.contains("cannot read"),
        "{e}"
    );
    let e = err_of(&amqp("amqp://h/?auth_mechanism=external"));
    assert!(e.contains("amqp[0].url") && e.contains("EXTERNAL"), "{e}");
    let e = err_of(&format!(
        "{}exchange = \"{}\"\n",
        amqp("amqp://h"),
        "x".repeat(256)
    ));
    assert!(e.contains("amqp[0].exchange"), "{e}");
}

#[test]
fn max_backlog_bytes_is_zero_or_at_least_a_mebibyte() {
    let hook = |v: &str| {
        format!(
            "{MIN}[[webhook]]\nurl = \"http://h/\"\nsecret = \"0123456789abcdef\"\nmax_backlog_bytes = {v}\n"
        )
    };
    let c = Config::from_toml(&hook("0"), "t").unwrap();
    assert_eq!(c.webhooks[0].max_backlog_bytes, 0);
    Config::from_toml(&hook("10_000_000_000"), "t").unwrap();
    let e = err_of(&hook("500"));
    assert!(e.contains("webhook[0].max_backlog_bytes"), "{e}");
    let e = err_of(&format!(
        "{MIN}[[jsonl]]\ndir = \"d\"\nmax_backlog_bytes = 10\n"
    ));
    assert!(e.contains("jsonl[0].max_backlog_bytes"), "{e}");
    let e = err_of(&format!(
        "{MIN}[[amqp]]\nurl = \"amqp://h\"\nmax_backlog_bytes = 10\n"
    ));
    assert!(e.contains("amqp[0].max_backlog_bytes"), "{e}");
}
