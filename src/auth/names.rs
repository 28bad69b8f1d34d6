//! DNS names as DKIM uses them: the signing domain (`d=`) in lowercase A-label form and the
//! selector (`s=`). Owns only these two checks, shared by key loading, key generation and the
//! domain checks, so none of those has to import another for them.

/// Lowercase A-label form of a domain, without a trailing dot; None if it is not a plausible
/// DNS name.
pub fn normalize_domain(domain: &str) -> Option<String> {
    let d = domain.trim().trim_end_matches('.');
    let d = mail_auth::common::to_a_label(d).to_ascii_lowercase();
    let ok = !d.is_empty()
        && d.len() <= 253
        && d.split('.').all(|label| {
            !label.is_empty()
                && label.len() <= 63
                && label
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
        });
    ok.then_some(d)
}

/// Selectors are DNS labels (RFC 6376 §3.1), possibly several separated by dots.
pub fn valid_selector(selector: &str) -> bool {
    !selector.is_empty()
        && selector.split('.').all(|label| {
            !label.is_empty()
                && label.len() <= 63
                && label
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
        })
}
