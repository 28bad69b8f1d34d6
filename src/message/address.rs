//! Envelope address syntax (RFC 5321 §4.1.2 `Mailbox`, RFC 6531 for UTF-8): the one place that
//! decides how an address is kept and how it is written to the next hop.
//!
//! Owns two conversions. [`from_unquoted`] turns what the SMTP parser hands over (smtp-proto
//! removes the quotes of a quoted local part, so `"a b"@d` arrives as `a b@d`) into the stored
//! form: a local part that is not a dot-atom is quoted again (RFC 5321 Quoted-string). The
//! stored form is what the spool, logs and DSNs carry. [`to_wire`] is what the delivery client
//! writes between `<` and `>`: a stored address that is already a valid `Mailbox` goes out as
//! it is; anything else (an older record, a future injection path) is quoted, and what cannot
//! be written safely (control characters, a bad domain) is refused, so no address can end the
//! path early and smuggle an ESMTP parameter (`"x> NOTIFY=NEVER"@d`).
//!
//! Pure functions; never does I/O.

use std::borrow::Cow;

/// Why an address cannot be used. The text goes into SMTP replies after the code.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AddressError {
    #[error("address {0:?} has no @domain")]
    NoDomain(String),
    #[error("address {0:?} has an empty domain after @")]
    EmptyDomain(String),
    #[error("address {0:?} has an invalid domain")]
    BadDomain(String),
    #[error("address {0:?} has an empty local part")]
    EmptyLocalPart(String),
    #[error("address {0:?} has a control character in its local part")]
    BadLocalPart(String),
}

/// RFC 5322 `atext`, plus any non-ASCII character (RFC 6531 `UTF8-non-ascii`).
fn is_atext(c: char) -> bool {
    c.is_ascii_alphanumeric() || "!#$%&'*+-/=?^_`{|}~".contains(c) || !c.is_ascii()
}

/// `Dot-string`: atoms of atext separated by single dots.
pub fn is_dot_string(s: &str) -> bool {
    !s.is_empty()
        && s.split('.')
            .all(|a| !a.is_empty() && a.chars().all(is_atext))
}

/// RFC 5321 `qtextSMTP` (and RFC 6531 UTF-8).
fn is_qtext(c: char) -> bool {
    matches!(c, ' ' | '!' | '#'..='[' | ']'..='~') || !c.is_ascii()
}

/// `Quoted-string`: `"` (qtextSMTP / `\` followed by a printable ASCII character)* `"`.
pub fn is_quoted_string(s: &str) -> bool {
    let Some(inner) = s.strip_prefix('"').and_then(|s| s.strip_suffix('"')) else {
        return false;
    };
    let mut chars = inner.chars();
    while let Some(c) = chars.next() {
        if c == '\\' {
            match chars.next() {
                Some(e) if (' '..='~').contains(&e) => {}
                _ => return false,
            }
        } else if !is_qtext(c) {
            return false;
        }
    }
    true
}

/// Quote the (unquoted) text of a local part, or None when it holds a character no
/// Quoted-string can carry (controls, DEL).
fn quote(raw: &str) -> Option<String> {
    let mut out = String::with_capacity(raw.len() + 2);
    out.push('"');
    for c in raw.chars() {
        match c {
            '"' | '\\' => {
                out.push('\\');
                out.push(c);
            }
            c if is_qtext(c) => out.push(c),
            _ => return None,
        }
    }
    out.push('"');
    Some(out)
}

/// A domain as RFC 5321 allows it after `@`: dot-separated labels of letters, digits, `-` (and
/// `_`, which real senders use; UTF-8 with SMTPUTF8), or an address literal `[...]`. A single
/// trailing dot is tolerated.
fn is_domain(d: &str) -> bool {
    if let Some(lit) = d.strip_prefix('[') {
        let Some(inner) = lit.strip_suffix(']') else {
            return false;
        };
        // dtext: printable ASCII except [ \ ]
        return !inner.is_empty()
            && inner
                .chars()
                .all(|c| matches!(c, '!'..='Z' | '^'..='~') && c != '\\');
    }
    let d = d.strip_suffix('.').unwrap_or(d);
    !d.is_empty()
        && d.split('.').all(|label| {
            !label.is_empty()
                && label
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_' || !c.is_ascii())
        })
}

fn split(address: &str) -> Result<(&str, &str), AddressError> {
    let (local, domain) = address
        .rsplit_once('@')
        .ok_or_else(|| AddressError::NoDomain(address.to_string()))?;
    if domain.is_empty() {
        return Err(AddressError::EmptyDomain(address.to_string()));
    }
    if !is_domain(domain) {
        return Err(AddressError::BadDomain(address.to_string()));
    }
    if local.is_empty() {
        return Err(AddressError::EmptyLocalPart(address.to_string()));
    }
    Ok((local, domain))
}

/// The stored form of an address smtp-proto parsed (quotes already removed): the local part is
/// quoted again when it is not a dot-string. Not for the null path (`""`).
pub fn from_unquoted(address: &str) -> Result<String, AddressError> {
    let (local, domain) = split(address)?;
    if is_dot_string(local) {
        return Ok(address.to_string());
    }
    let quoted = quote(local).ok_or_else(|| AddressError::BadLocalPart(address.to_string()))?;
    Ok(format!("{quoted}@{domain}"))
}

/// The text to write between `<` and `>` in MAIL FROM / RCPT TO. The null path stays empty.
pub fn to_wire(stored: &str) -> Result<Cow<'_, str>, AddressError> {
    if stored.is_empty() {
        return Ok(Cow::Borrowed(""));
    }
    let (local, domain) = split(stored)?;
    if is_dot_string(local) || is_quoted_string(local) {
        return Ok(Cow::Borrowed(stored));
    }
    let quoted = quote(local).ok_or_else(|| AddressError::BadLocalPart(stored.to_string()))?;
    Ok(Cow::Owned(format!("{quoted}@{domain}")))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stored_form_requotes_what_smtp_proto_unquoted() {
        let table: &[(&str, Result<&str, ()>)] = &[
            ("user@example.test", Ok("user@example.test")),
            (
                "first.last+tag@example.test",
                Ok("first.last+tag@example.test"),
            ),
            ("a b@d.test", Ok("\"a b\"@d.test")),
            ("x> NOTIFY=NEVER@d.test", Ok("\"x> NOTIFY=NEVER\"@d.test")),
            ("a\"b@d.test", Ok("\"a\\\"b\"@d.test")),
            ("a\\b@d.test", Ok("\"a\\\\b\"@d.test")),
            ("a@b@d.test", Ok("\"a@b\"@d.test")),
            ("a..b@d.test", Ok("\"a..b\"@d.test")),
            ("jöran@bücher.test", Ok("jöran@bücher.test")),
            ("u@[192.0.2.1]", Ok("u@[192.0.2.1]")),
            ("a@", Err(())),
            ("a", Err(())),
            ("@d.test", Err(())),
            ("a@d test", Err(())),
            ("a@d>x", Err(())),
            ("a@[1.2.3.4", Err(())),
            ("a\u{0}b@d.test", Err(())),
            ("a\tb@d.test", Err(())),
        ];
        for (input, want) in table {
            let got = from_unquoted(input).map_err(|_| ());
            assert_eq!(got.as_deref(), want.as_deref(), "input {input:?}");
        }
    }

    #[test]
    fn wire_form_never_breaks_the_path() {
        let table: &[(&str, Result<&str, ()>)] = &[
            ("", Ok("")),
            ("user@example.test", Ok("user@example.test")),
            ("\"a b\"@d.test", Ok("\"a b\"@d.test")),
            ("\"a\\\"b\"@d.test", Ok("\"a\\\"b\"@d.test")),
            // Stored unquoted (an older record, another injection path): quoted on the way out.
            ("a b@d.test", Ok("\"a b\"@d.test")),
            ("x> NOTIFY=NEVER@d.test", Ok("\"x> NOTIFY=NEVER\"@d.test")),
            ("\"unbalanced@d.test", Ok("\"\\\"unbalanced\"@d.test")),
            ("a\r\nRSET@d.test", Err(())),
            ("a@d.test> NOTIFY=NEVER", Err(())),
            ("a@", Err(())),
        ];
        for (input, want) in table {
            let got = to_wire(input).map_err(|_| ());
            assert_eq!(got.as_deref(), want.as_deref(), "input {input:?}");
        }
    }

    #[test]
    fn wire_form_of_a_stored_form_is_itself() {
        for raw in ["a b@d", "x> NOTIFY=NEVER@d", "a\"b@d", "plain@d", "a@b@d"] {
            let stored = from_unquoted(raw).unwrap();
            assert_eq!(to_wire(&stored).unwrap(), stored, "{raw:?}");
        }
    }
}
