//! The DNS side of `auth`: a mail-auth resolver built from `[dns]`, plus raw TXT lookups and
//! tag-list parsing used to explain findings (mail-auth parses records but does not say why one
//! is missing or wrong).
//!
//! Owns no cache of its own: each checker builds its resolver, whose cache follows record TTLs.

use std::time::Duration;

use hickory_resolver::config::{ConnectionConfig, NameServerConfig, ResolverConfig, ResolverOpts};
use hickory_resolver::proto::rr::RData;
use mail_auth::MessageAuthenticator;

use crate::config::DnsConfig;

/// A resolver using `[dns] nameservers` (UDP with TCP fallback), or the system resolver when
/// none are configured.
pub fn authenticator(dns: &DnsConfig) -> Result<MessageAuthenticator, String> {
    let (config, mut opts) = if dns.nameservers.is_empty() {
        hickory_resolver::system_conf::read_system_conf()
            .map_err(|e| format!("cannot read the system resolver configuration: {e}"))?
    } else {
        let servers = dns
            .nameservers
            .iter()
            .map(|addr| {
                let mut udp = ConnectionConfig::udp();
                udp.port = addr.port();
                let mut tcp = ConnectionConfig::tcp();
                tcp.port = addr.port();
                NameServerConfig::new(addr.ip(), true, vec![udp, tcp])
            })
            .collect();
        (
            ResolverConfig::from_name_servers(servers),
            ResolverOpts::default(),
        )
    };
    opts.timeout = if dns.timeout.is_zero() {
        Duration::from_secs(5)
    } else {
        dns.timeout
    };
    opts.attempts = 2;
    opts.edns0 = true; // DKIM keys and SPF records often exceed 512 bytes
    MessageAuthenticator::new(config, opts).map_err(|e| format!("cannot start the resolver: {e}"))
}

/// Outcome of a raw TXT lookup.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Txt {
    /// Each record's strings joined (RFC 7208 §3.3 / RFC 6376 §3.6.2.2).
    Records(Vec<String>),
    /// NXDOMAIN, or the name exists without TXT records.
    NotFound,
    /// Timeout, SERVFAIL, refused...: the answer is unknown.
    Error(String),
}

pub async fn txt(auth: &MessageAuthenticator, name: &str) -> Txt {
    let fqdn = format!("{}.", name.trim_end_matches('.'));
    match auth.resolver().txt_lookup(fqdn.as_str()).await {
        Ok(lookup) => {
            let records: Vec<String> = lookup
                .answers()
                .iter()
                .filter_map(|r| match &r.data {
                    RData::TXT(txt) => Some(
                        txt.txt_data
                            .iter()
                            .map(|s| String::from_utf8_lossy(s))
                            .collect::<String>(),
                    ),
                    _ => None,
                })
                .collect();
            if records.is_empty() {
                Txt::NotFound
            } else {
                Txt::Records(records)
            }
        }
        Err(e) if e.is_no_records_found() => Txt::NotFound,
        Err(e) => Txt::Error(e.to_string()),
    }
}

/// Parse a DKIM/DMARC-style tag list (`v=DKIM1; k=rsa; p=...`) into (tag, value) pairs, with
/// folding whitespace removed around tags and values. Tags are lowercased.
pub fn tags(record: &str) -> Vec<(String, String)> {
    record
        .split(';')
        .filter_map(|part| {
            let (k, v) = part.split_once('=')?;
            Some((k.trim().to_ascii_lowercase(), v.trim().to_string()))
        })
        .collect()
}

pub fn tag<'a>(tags: &'a [(String, String)], name: &str) -> Option<&'a str> {
    tags.iter()
        .find(|(k, _)| k == name)
        .map(|(_, v)| v.as_str())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tag_lists_parse_with_whitespace() {
        let t = tags(" v = DKIM1 ;K=rsa; p=MIIB\r\n\tAQAB ; t=y;");
        assert_eq!(tag(&t, "v"), Some("DKIM1"));
        assert_eq!(tag(&t, "k"), Some("rsa"));
        assert_eq!(tag(&t, "p"), Some("MIIB\r\n\tAQAB"));
        assert_eq!(tag(&t, "x"), None);
    }
}
