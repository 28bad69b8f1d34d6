//! Sender authorisation: which From domains and traffic classes a submitter may use.
//!
//! Owns one decision, made in intake for every submission whatever the way in (SMTP now, HTTP
//! injection through `Origin::api_token`): each scope that applies — the listener, the
//! authenticated `[[smtp_user]]`, the `[[api_token]]` — may carry `allowed_from_domains` and
//! `allowed_classes`; a scope without a list allows everything (so existing configs keep
//! working), and a submission must satisfy every scope that has one. Outside them the answer is
//! `550 5.7.1` naming the domain or class and who may not use it. The From domains checked are
//! those of every address in every `From:` field, so DKIM (whose key follows the first From
//! domain) never signs for a domain the submitter was not given.
//!
//! Never: signs, changes the message, or looks anything up outside the config.

use crate::config::Config;
use crate::message::{Origin, Rejection};

/// One scope's lists.
struct Scope<'c> {
    who: String,
    domains: Option<&'c [String]>,
    classes: Option<&'c [String]>,
}

fn scopes<'c>(config: &'c Config, origin: &Origin) -> Vec<Scope<'c>> {
    let mut out = Vec::new();
    if let Some(l) = config.listeners.iter().find(|l| l.name == origin.listener) {
        out.push(Scope {
            who: format!("listener {:?}", l.name),
            domains: l.allowed_from_domains.as_deref(),
            classes: l.allowed_classes.as_deref(),
        });
    }
    if let Some(u) = origin
        .auth_user
        .as_ref()
        .and_then(|name| config.smtp_users.iter().find(|u| &u.name == name))
    {
        out.push(Scope {
            who: format!("SMTP user {:?}", u.name),
            domains: u.allowed_from_domains.as_deref(),
            classes: u.allowed_classes.as_deref(),
        });
    }
    if let Some(t) = origin
        .api_token
        .as_ref()
        .and_then(|name| config.api_tokens.iter().find(|t| &t.name == name))
    {
        out.push(Scope {
            who: format!("API token {:?}", t.name),
            domains: t.allowed_from_domains.as_deref(),
            classes: t.allowed_classes.as_deref(),
        });
    }
    out
}

/// `domain` (lowercase) is `pattern` or, for `*.example.com`, a subdomain of example.com.
fn domain_matches(pattern: &str, domain: &str) -> bool {
    let pattern = pattern.trim_end_matches('.').to_ascii_lowercase();
    match pattern.strip_prefix("*.") {
        Some(parent) => domain
            .strip_suffix(parent)
            .is_some_and(|head| head.ends_with('.') && head.len() > 1),
        None => domain == pattern,
    }
}

/// The domain of every address in every `From:` field, lowercase, without a trailing dot.
pub fn from_domains(message: &[u8]) -> Vec<String> {
    let mut out = Vec::new();
    for (name, value, _) in crate::message::headers::fields(message) {
        if !name.eq_ignore_ascii_case("From") {
            continue;
        }
        let parsed = mail_parser::parsers::MessageStream::new(value).parse_address();
        if let mail_parser::HeaderValue::Address(list) = &parsed {
            for addr in list.iter() {
                if let Some(d) = addr.address.as_deref().and_then(crate::message::domain_of) {
                    out.push(d);
                }
            }
        }
    }
    out
}

/// Refuse the submission when `class` or a From domain of `message` is outside a list of a
/// scope that applies to `origin`.
pub fn check(
    config: &Config,
    origin: &Origin,
    class: &str,
    rcpts: &[String],
    message: &[u8],
) -> Result<(), Rejection> {
    // Mail only to our postmaster is accepted from anyone (RFC 5321 §4.5.1): a reporter writes
    // From its own domain.
    let postmaster = config.postmaster_address();
    if !rcpts.is_empty() && rcpts.iter().all(|r| r.eq_ignore_ascii_case(&postmaster)) {
        return Ok(());
    }
    let scopes = scopes(config, origin);
    if scopes
        .iter()
        .all(|s| s.domains.is_none() && s.classes.is_none())
    {
        return Ok(());
    }
    for s in &scopes {
        if let Some(classes) = s.classes
            && !classes.iter().any(|c| c == class)
        {
            return Err(Rejection::new(
                550,
                "5.7.1",
                format!(
                    "traffic class {class:?} is not allowed for {}; it may use: {}",
                    s.who,
                    classes.join(", ")
                ),
            )
            .with_field("class"));
        }
    }
    let domains = from_domains(message);
    for s in &scopes {
        let Some(allowed) = s.domains else { continue };
        if domains.is_empty() {
            return Err(Rejection::new(
                550,
                "5.7.1",
                format!(
                    "no From address: {} may only send From {}",
                    s.who,
                    allowed.join(", ")
                ),
            )
            .with_field("from"));
        }
        if let Some(d) = domains
            .iter()
            .find(|d| !allowed.iter().any(|p| domain_matches(p, d)))
        {
            return Err(Rejection::new(
                550,
                "5.7.1",
                format!(
                    "From domain {d} is not allowed for {}; it may send From: {}",
                    s.who,
                    allowed.join(", ")
                ),
            )
            .with_field("from"));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(extra: &str) -> Config {
        Config::from_toml(
            &format!(
                "[[listener]]\nname = \"l\"\naddress = \"127.0.0.1:0\"\n{extra}\n\
                 [[pool]]\nname = \"p\"\nsources = [{{ ip = \"127.0.0.1\", ehlo = \"h\" }}]\n\
                 [class.promo]\npool = \"p\"\n[class.tx]\npool = \"p\"\n\
                 [[smtp_user]]\nname = \"bob\"\npassword_hash = \"$argon2id$v=19$m=256,t=1,p=1$MDEyMzQ1Njc4OWFiY2RlZg$L5Bb0gLBfRXxWPDMCkIUsfTMYiWcPq7U7r8Y1Pjq2ZQ\"\n\
                 allowed_from_domains = [\"bob.test\", \"*.news.test\"]\nallowed_classes = [\"promo\"]\n\
                 [[api_token]]\nname = \"app\"\nhash = \"{}\"\nscopes = [\"inject\"]\n\
                 allowed_classes = [\"tx\"]\n",
                "0".repeat(64)
            ),
            "t",
        )
        .unwrap()
    }

    fn rcpts() -> Vec<String> {
        vec!["r@dest.test".to_string()]
    }

    fn origin(user: Option<&str>, token: Option<&str>) -> Origin {
        Origin {
            listener: "l".into(),
            client_ip: "127.0.0.1".parse().unwrap(),
            helo: "h".into(),
            auth_user: user.map(str::to_string),
            api_token: token.map(str::to_string),
        }
    }

    /// Issue 15 item 13: (scope, class, From header) → Ok, or the field of the 550 5.7.1.
    #[test]
    fn sender_authorisation_table() {
        let c = config("");
        type Row<'a> = (
            Option<&'a str>,
            Option<&'a str>,
            &'a str,
            &'a str,
            Result<(), &'a str>,
        );
        let table: &[Row] = &[
            // No lists apply: anything goes, as before.
            (None, None, "tx", "From: a@any.test", Ok(())),
            (Some("nobody"), None, "tx", "From: a@any.test", Ok(())),
            // bob: his domains (and subdomains of news.test), class promo only.
            (Some("bob"), None, "promo", "From: Bob <b@bob.test>", Ok(())),
            (Some("bob"), None, "promo", "From: b@BOB.test.", Ok(())),
            (Some("bob"), None, "promo", "From: b@x.news.test", Ok(())),
            (Some("bob"), None, "promo", "From: b@news.test", Err("from")),
            (
                Some("bob"),
                None,
                "promo",
                "From: b@evilbob.test",
                Err("from"),
            ),
            (
                Some("bob"),
                None,
                "promo",
                "From: b@bob.test.evil",
                Err("from"),
            ),
            (Some("bob"), None, "tx", "From: b@bob.test", Err("class")),
            (Some("bob"), None, "promo", "Subject: no from", Err("from")),
            // Every From address counts, not only the first (DKIM picks the first).
            (
                Some("bob"),
                None,
                "promo",
                "From: b@bob.test, c@other.test",
                Err("from"),
            ),
            (
                Some("bob"),
                None,
                "promo",
                "From: b@bob.test\r\nFrom: c@other.test",
                Err("from"),
            ),
            // The token: class tx only, any domain.
            (None, Some("app"), "tx", "From: a@any.test", Ok(())),
            (None, Some("app"), "promo", "From: a@any.test", Err("class")),
        ];
        for (user, token, class, headers, want) in table {
            let msg = format!("{headers}\r\n\r\nbody\r\n");
            let got = check(&c, &origin(*user, *token), class, &rcpts(), msg.as_bytes());
            let got = got.map_err(|r| {
                assert_eq!((r.code, r.enhanced.as_str()), (550, "5.7.1"), "{r}");
                r.field.unwrap()
            });
            assert_eq!(
                got.as_ref().map_err(String::as_str),
                want.as_ref().map_err(|e| *e),
                "user {user:?} token {token:?} class {class} headers {headers:?}"
            );
        }
    }

    #[test]
    fn listener_lists_apply_to_everyone_on_it_and_name_the_domain() {
        let c = config("allowed_from_domains = [\"corp.test\"]");
        let e = check(
            &c,
            &origin(None, None),
            "tx",
            &rcpts(),
            b"From: a@other.test\r\n\r\n",
        )
        .unwrap_err();
        assert!(
            e.message.contains("other.test") && e.message.contains("listener \"l\""),
            "{e}"
        );
        check(
            &c,
            &origin(None, None),
            "tx",
            &rcpts(),
            b"From: a@corp.test\r\n\r\n",
        )
        .unwrap();
        // Mail only to the postmaster is exempt (RFC 5321 §4.5.1).
        let pm = vec![c.postmaster_address()];
        check(
            &c,
            &origin(None, None),
            "tx",
            &pm,
            b"From: a@other.test\r\n\r\n",
        )
        .unwrap();
        // bob's own list is checked as well: corp.test is not his.
        let e = check(
            &c,
            &origin(Some("bob"), None),
            "promo",
            &rcpts(),
            b"From: a@corp.test\r\n\r\n",
        )
        .unwrap_err();
        assert!(e.message.contains("SMTP user \"bob\""), "{e}");
    }
}
