//! Cross-section checks on a parsed [`Config`]: references resolve, values are in range.
//! Every message names the key and says what was expected.

use super::Config;
use std::collections::HashSet;

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read config file {path}: {source}")]
    Read {
        path: String,
        source: std::io::Error,
    },
    #[error("config {origin}: {message}")]
    Parse { origin: String, message: String },
    #[error("config key `{key}`: {message}")]
    Invalid { key: String, message: String },
}

fn invalid(key: impl Into<String>, message: impl Into<String>) -> ConfigError {
    ConfigError::Invalid {
        key: key.into(),
        message: message.into(),
    }
}

pub(super) fn validate(c: &Config) -> Result<(), ConfigError> {
    validate_anomaly(c)?;
    super::ship::validate(c)?;
    validate_sendlog(c)?;
    if c.unsubscribe.key_file.is_some() && c.unsubscribe.secret.is_some() {
        return Err(invalid(
            "unsubscribe.secret",
            "give either key_file or secret, not both",
        ));
    }
    if let Some(url) = &c.unsubscribe.base_url
        && (!url.starts_with("https://") || url.contains(char::is_whitespace))
    {
        return Err(invalid(
            "unsubscribe.base_url",
            format!("expected an https:// URL without spaces, got {url:?} (RFC 8058 needs https)"),
        ));
    }
    if c.bounce.key_file.is_some() && c.bounce.secret.is_some() {
        return Err(invalid(
            "bounce.secret",
            "give either key_file or secret, not both",
        ));
    }
    if let Some(d) = &c.bounce.domain {
        let ok = d.contains('.')
            && d.split('.').all(|l| {
                !l.is_empty()
                    && l.len() <= 63
                    && l.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
            });
        if !ok {
            return Err(invalid(
                "bounce.domain",
                format!("expected a domain name such as bounces.example.com, got {d:?}"),
            ));
        }
    }
    for (i, a) in c.bounce.fbl_addresses.iter().enumerate() {
        if let Err(e) = crate::message::address::from_unquoted(a) {
            return Err(invalid(
                format!("bounce.fbl_addresses[{i}]"),
                format!("expected a mailbox such as fbl@bounces.example.com: {e}"),
            ));
        }
    }
    if c.hostname.trim().is_empty() || c.hostname.contains(char::is_whitespace) {
        return Err(invalid(
            "hostname",
            format!("expected a host name without spaces, got {:?}", c.hostname),
        ));
    }
    if let Some(class) = &c.default_class
        && !c.classes.contains_key(class)
    {
        let known: Vec<&str> = c.classes.keys().map(String::as_str).collect();
        return Err(invalid(
            "default_class",
            format!(
                "no [class.{class}] is defined (configured classes: {})",
                known.join(", ")
            ),
        ));
    }
    if c.dns.min_ttl > c.dns.max_ttl {
        return Err(invalid(
            "dns.min_ttl",
            format!(
                "the floor ({:?}) is above the ceiling dns.max_ttl ({:?}); lower min_ttl or raise max_ttl",
                c.dns.min_ttl, c.dns.max_ttl
            ),
        ));
    }
    if c.hop_limit == 0 {
        return Err(invalid(
            "hop_limit",
            "expected at least 1 (every relayed message carries a Received: header; 50 is usual)",
        ));
    }
    if let Some(pm) = &c.postmaster
        && let Err(e) = crate::message::address::from_unquoted(pm)
    {
        return Err(invalid(
            "postmaster",
            format!("expected a mailbox such as ops@example.com: {e}"),
        ));
    }
    let mut names = HashSet::new();
    for (i, l) in c.listeners.iter().enumerate() {
        let key = format!("listener[{i}]");
        if l.name == super::DSN_LISTENER || l.name == "http" {
            return Err(invalid(
                format!("{key}.name"),
                format!(
                    "listener name {:?} is reserved (Gannet's own DSNs and HTTP injection use it); choose another",
                    l.name
                ),
            ));
        }
        if !names.insert(l.name.as_str()) {
            return Err(invalid(
                format!("{key}.name"),
                format!("listener name {:?} is used twice", l.name),
            ));
        }
        if l.tls == super::TlsMode::Implicit && (l.tls_cert.is_none() || l.tls_key.is_none()) {
            return Err(invalid(
                format!("{key}.tls"),
                "implicit TLS needs tls_cert and tls_key",
            ));
        }
        if l.tls_cert.is_some() != l.tls_key.is_some() {
            return Err(invalid(
                format!("{key}.tls_cert"),
                "tls_cert and tls_key must be given together",
            ));
        }
        if let Some(class) = &l.default_class
            && !c.classes.contains_key(class)
        {
            return Err(invalid(
                format!("{key}.default_class"),
                format!("no [class.{class}] is defined"),
            ));
        }
        if l.max_line_length < 512 {
            return Err(invalid(
                format!("{key}.max_line_length"),
                "must be at least 512 (RFC 5321 §4.5.3.1.4)",
            ));
        }
        if !(1..=128).contains(&l.ipv6_prefix_length) {
            return Err(invalid(
                format!("{key}.ipv6_prefix_length"),
                format!(
                    "{} is not a prefix length; give 1 to 128 (64 is usual)",
                    l.ipv6_prefix_length
                ),
            ));
        }
        if l.stress_command_timeout.is_zero() {
            return Err(invalid(
                format!("{key}.stress_command_timeout"),
                "must be above 0 (e.g. \"10s\")",
            ));
        }
        if l.auth_max_delay < l.auth_fail_delay {
            return Err(invalid(
                format!("{key}.auth_max_delay"),
                format!(
                    "{:?} is below auth_fail_delay ({:?}); the delay grows from auth_fail_delay up to auth_max_delay",
                    l.auth_max_delay, l.auth_fail_delay
                ),
            ));
        }
        if l.auth_lockout_after > 0 && l.auth_lockout.is_zero() {
            return Err(invalid(
                format!("{key}.auth_lockout"),
                "must be above 0 when auth_lockout_after is set (or set auth_lockout_after = 0)",
            ));
        }
        if l.max_recipients == 0 || l.max_message_size == 0 {
            return Err(invalid(
                format!("{key}.max_recipients"),
                "max_recipients and max_message_size must be above 0",
            ));
        }
        if l.max_message_size > super::MAX_MESSAGE_SIZE {
            return Err(invalid(
                format!("{key}.max_message_size"),
                format!(
                    "{} is over the spool's limit of {} bytes (a larger message could be accepted but not read back); lower it",
                    l.max_message_size,
                    super::MAX_MESSAGE_SIZE
                ),
            ));
        }
        if l.max_inflight_bytes != 0 && l.max_inflight_bytes < l.max_message_size {
            return Err(invalid(
                format!("{key}.max_inflight_bytes"),
                format!(
                    "{} is below max_message_size ({}): a message of the largest allowed size could never be accepted; raise it, or 0 for no listener-wide limit",
                    l.max_inflight_bytes, l.max_message_size
                ),
            ));
        }
    }
    for (i, r) in c.routes.iter().enumerate() {
        if r.host
            .rsplit_once(':')
            .and_then(|(_, p)| p.parse::<u16>().ok())
            .is_none()
        {
            return Err(invalid(
                format!("route[{i}].host"),
                format!("expected host:port, got {:?}", r.host),
            ));
        }
    }
    let d = &c.delivery;
    if d.retry_schedule.is_empty() {
        return Err(invalid(
            "delivery.retry_schedule",
            "needs at least one delay, e.g. [\"1m\", \"5m\", \"1h\"]",
        ));
    }
    if !(0.0..1.0).contains(&d.retry_jitter) {
        return Err(invalid(
            "delivery.retry_jitter",
            "expected a fraction from 0.0 up to (not including) 1.0",
        ));
    }
    if d.max_connections_per_destination == 0 || d.max_messages_per_connection == 0 {
        return Err(invalid(
            "delivery.max_connections_per_destination",
            "connection and message caps must be above 0",
        ));
    }
    let mut pools = HashSet::new();
    for (i, p) in c.pools.iter().enumerate() {
        if !pools.insert(p.name.as_str()) {
            return Err(invalid(
                format!("pool[{i}].name"),
                format!("pool {:?} is defined twice", p.name),
            ));
        }
        if p.sources.is_empty() {
            return Err(invalid(
                format!("pool[{i}].sources"),
                format!("pool {:?} needs at least one source", p.name),
            ));
        }
        for (j, s) in p.sources.iter().enumerate() {
            if s.weight == 0 {
                return Err(invalid(
                    format!("pool[{i}].sources[{j}].weight"),
                    "must be at least 1",
                ));
            }
        }
    }
    for (i, p) in c.pools.iter().enumerate() {
        if let Some(o) = &p.overflow
            && !pools.contains(o.as_str())
        {
            return Err(invalid(
                format!("pool[{i}].overflow"),
                format!("no [[pool]] named {o:?}"),
            ));
        }
    }
    overflow_cycles(c)?;
    if c.classes.is_empty() {
        return Err(invalid(
            "class",
            "define at least one traffic class, e.g. [class.promotional] pool = \"default\"",
        ));
    }
    for (name, class) in &c.classes {
        if !pools.contains(class.pool.as_str()) {
            return Err(invalid(
                format!("class.{name}.pool"),
                format!("no [[pool]] named {:?}", class.pool),
            ));
        }
    }
    for (i, u) in c.smtp_users.iter().enumerate() {
        if argon2::PasswordHash::new(&u.password_hash).is_err() {
            return Err(invalid(
                format!("smtp_user[{i}].password_hash"),
                "expected a PHC string such as $argon2id$v=19$... (make one with `gannet hash-password`)",
            ));
        }
        if let Some(class) = &u.default_class
            && !c.classes.contains_key(class)
        {
            return Err(invalid(
                format!("smtp_user[{i}].default_class"),
                format!("no [class.{class}] is defined"),
            ));
        }
        if let Some(t) = &u.tenant
            && (t.is_empty()
                || t == "*"
                || t.len() > 128
                || t.chars().any(|c| c.is_control() || c.is_whitespace()))
        {
            return Err(invalid(
                format!("smtp_user[{i}].tenant"),
                format!(
                    "{t:?}: expected a tenant name of at most 128 printable characters without spaces (not *)"
                ),
            ));
        }
    }
    for (i, l) in c.listeners.iter().enumerate() {
        check_allowed(
            c,
            &format!("listener[{i}]"),
            &l.allowed_from_domains,
            &l.allowed_classes,
        )?;
    }
    for (i, u) in c.smtp_users.iter().enumerate() {
        check_allowed(
            c,
            &format!("smtp_user[{i}]"),
            &u.allowed_from_domains,
            &u.allowed_classes,
        )?;
    }
    for (i, t) in c.api_tokens.iter().enumerate() {
        check_allowed(
            c,
            &format!("api_token[{i}]"),
            &t.allowed_from_domains,
            &t.allowed_classes,
        )?;
    }
    if c.http.tls_cert.is_some() != c.http.tls_key.is_some() {
        return Err(invalid(
            "http.tls_cert".to_string(),
            "tls_cert and tls_key must be given together",
        ));
    }
    validate_console(c)?;
    for (i, t) in c.api_tokens.iter().enumerate() {
        if t.hash.len() != 64 || !t.hash.bytes().all(|b| b.is_ascii_hexdigit()) {
            return Err(invalid(
                format!("api_token[{i}].hash"),
                "expected the SHA-256 of the token as 64 hex digits",
            ));
        }
        for s in &t.scopes {
            if !["inject", "suppression", "logs", "admin"].contains(&s.as_str()) {
                return Err(invalid(
                    format!("api_token[{i}].scopes"),
                    format!("unknown scope {s:?}; expected inject, suppression, logs or admin"),
                ));
            }
        }
        if t.burst == Some(0) {
            return Err(invalid(
                format!("api_token[{i}].burst"),
                "expected at least 1 (or leave it out: the rate's count)",
            ));
        }
        if t.burst.is_some() && t.rate.is_none() {
            return Err(invalid(
                format!("api_token[{i}].burst"),
                "burst needs a rate (e.g. rate = \"20/s\")",
            ));
        }
    }
    Ok(())
}

/// `allowed_classes` name defined classes; `allowed_from_domains` are domain names, optionally
/// `*.` for subdomains.
fn check_allowed(
    c: &Config,
    key: &str,
    domains: &Option<Vec<String>>,
    classes: &Option<Vec<String>>,
) -> Result<(), ConfigError> {
    for class in classes.iter().flatten() {
        if !c.classes.contains_key(class) {
            return Err(invalid(
                format!("{key}.allowed_classes"),
                format!("no [class.{class}] is defined"),
            ));
        }
    }
    for d in domains.iter().flatten() {
        let name = d.strip_prefix("*.").unwrap_or(d);
        let ok = !name.is_empty()
            && name.split('.').all(|l| {
                !l.is_empty()
                    && l.chars()
                        .all(|ch| ch.is_alphanumeric() || ch == '-' || ch == '_')
            });
        if !ok {
            return Err(invalid(
                format!("{key}.allowed_from_domains"),
                format!(
                    "expected a domain such as \"example.com\" or \"*.example.com\", got {d:?}"
                ),
            ));
        }
    }
    Ok(())
}

/// A pool's `overflow` chain must end: a pool that overflows to itself, or A → B → A, would
/// hand a capped job round the cycle forever (a worker spinning at 100%). The error names the
/// whole cycle so the operator sees which `overflow` keys to change.
fn overflow_cycles(c: &Config) -> Result<(), ConfigError> {
    for (i, start) in c.pools.iter().enumerate() {
        let mut path = vec![start.name.as_str()];
        let mut current = start;
        while let Some(next) = current.overflow.as_deref() {
            if let Some(pos) = path.iter().position(|p| *p == next) {
                // Report each cycle once, from the pool listed first in it.
                if pos != 0 {
                    break;
                }
                path.push(next);
                return Err(invalid(
                    format!("pool[{i}].overflow"),
                    format!(
                        "warm-up overflow goes round in a cycle: {}; the last pool of a chain \
                         must have no overflow (capped mail then waits for the next day's cap)",
                        path.join(" → ")
                    ),
                ));
            }
            path.push(next);
            match c.pools.iter().find(|p| p.name == next) {
                Some(p) => current = p,
                None => break,
            }
        }
    }
    Ok(())
}

/// `[anomaly]`: rates are fractions (0.003 = 0.3%), warn at most critical, a window longer
/// than the evaluation interval, admins that are addresses, an alert class that exists.
fn validate_anomaly(c: &Config) -> Result<(), ConfigError> {
    let a = &c.anomaly;
    for (key, warn, critical) in [
        ("hard_bounce", a.hard_bounce_warn, a.hard_bounce_critical),
        ("complaint", a.complaint_warn, a.complaint_critical),
        ("unsubscribe", a.unsubscribe_warn, a.unsubscribe_critical),
    ] {
        for (suffix, v) in [("warn", warn), ("critical", critical)] {
            if !(v > 0.0 && v <= 1.0) {
                return Err(invalid(
                    format!("anomaly.{key}_{suffix}"),
                    format!("expected a fraction above 0 and at most 1 (0.003 = 0.3%), got {v}"),
                ));
            }
        }
        if warn > critical {
            return Err(invalid(
                format!("anomaly.{key}_warn"),
                format!("warn ({warn}) must not be above critical ({critical})"),
            ));
        }
    }
    if !(a.ewma_alpha > 0.0 && a.ewma_alpha <= 1.0) {
        return Err(invalid(
            "anomaly.ewma_alpha",
            format!(
                "expected a weight above 0 and at most 1, got {}",
                a.ewma_alpha
            ),
        ));
    }
    if a.deferral_factor < 1.0 {
        return Err(invalid(
            "anomaly.deferral_factor",
            format!(
                "expected at least 1 (3 = three times the baseline), got {}",
                a.deferral_factor
            ),
        ));
    }
    if a.interval.is_zero() || a.window < a.interval {
        return Err(invalid(
            "anomaly.window",
            format!(
                "the window ({:?}) must be at least the evaluation interval ({:?}), which must not be 0",
                a.window, a.interval
            ),
        ));
    }
    if let Some(bad) = a
        .admins
        .iter()
        .find(|m| crate::message::domain_of(m).is_none())
    {
        return Err(invalid(
            "anomaly.admins",
            format!("{bad:?} is not an email address"),
        ));
    }
    if let Some(class) = &a.alert_class
        && !c.classes.is_empty()
        && !c.classes.contains_key(class)
    {
        return Err(invalid(
            "anomaly.alert_class",
            format!("no [class.{class}] is defined"),
        ));
    }
    Ok(())
}

/// `[[console_user]]` and `[console]`: names unique, hashes parse, TOTP secrets decode and are
/// present for every role but viewer.
fn validate_console(c: &Config) -> Result<(), ConfigError> {
    use crate::config::ConsoleRole;
    let mut names = std::collections::HashSet::new();
    for (i, u) in c.console_users.iter().enumerate() {
        let key = |f: &str| format!("console_user[{i}].{f}");
        let name_ok = !u.name.is_empty()
            && u.name.len() <= 64
            && u.name
                .chars()
                .all(|ch| ch.is_ascii_alphanumeric() || "._-@".contains(ch));
        if !name_ok {
            return Err(invalid(
                key("name"),
                "expected 1 to 64 characters from letters, digits, '.', '_', '-', '@'",
            ));
        }
        if !names.insert(u.name.to_ascii_lowercase()) {
            return Err(invalid(
                key("name"),
                format!("{:?} is named twice (names are case-insensitive)", u.name),
            ));
        }
        if argon2::PasswordHash::new(&u.password_hash).is_err() {
            return Err(invalid(
                key("password_hash"),
                "expected a PHC string such as $argon2id$v=19$... (make one with `gannet hash-password`)",
            ));
        }
        match &u.totp_secret {
            None if u.role != ConsoleRole::Viewer => {
                return Err(invalid(
                    key("totp_secret"),
                    format!(
                        "role {} needs a second factor: run `gannet console enrol {}` and paste its totp_secret line",
                        u.role.as_str(),
                        u.name
                    ),
                ));
            }
            Some(s) if !crate::http::console::auth::totp_secret_ok(s) => {
                return Err(invalid(
                    key("totp_secret"),
                    "expected a base32 secret of at least 128 bits (make one with `gannet console enrol NAME`)",
                ));
            }
            _ => {}
        }
    }
    if c.console.lockout_after == 0 {
        return Err(invalid(
            "console.lockout_after".to_string(),
            "expected at least 1 failed sign-in before a lockout",
        ));
    }
    if c.console.session_ttl.is_zero() {
        return Err(invalid(
            "console.session_ttl".to_string(),
            "expected a duration such as \"8h\"",
        ));
    }
    Ok(())
}

/// The send log's journal and ingester: a zero interval would have the ingester spin, and
/// finished messages wait for the journal's commit.
fn validate_sendlog(c: &Config) -> Result<(), ConfigError> {
    let s = &c.sendlog;
    if s.ingest_interval < std::time::Duration::from_millis(1) {
        return Err(invalid(
            "sendlog.ingest_interval",
            "expected at least 1ms (how often the journal is moved into SQLite; 500ms is the default)",
        ));
    }
    for (key, v) in [
        ("ingest_batch", s.ingest_batch),
        ("batch", s.batch),
        ("bound", s.bound),
    ] {
        if v == 0 {
            return Err(invalid(format!("sendlog.{key}"), "expected at least 1"));
        }
    }
    if s.commit_interval > std::time::Duration::from_secs(1) {
        return Err(invalid(
            "sendlog.commit_interval",
            "expected at most 1s (finished messages wait for their events' journal append)",
        ));
    }
    Ok(())
}
