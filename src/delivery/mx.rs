//! Where a recipient domain's mail goes: static routes, then MX lookup (RFC 5321 §5.1).
//!
//! Owns: the DNS resolver (hickory; `[dns] nameservers` or the system configuration), a short
//! negative cache for temporary DNS failures (hickory does not cache SERVFAIL or timeouts), and
//! the turning of MX records into an ordered list of hosts with addresses.
//!
//! Rules: MX records in preference order, equal preferences shuffled again for every connection
//! ([`Destination::connection_order`]); a destination is valid for the smallest TTL of the
//! records it was built from, kept between `[dns] min_ttl` and `max_ttl`
//! ([`Destination::valid_until`]); a domain with no MX but
//! an A/AAAA record is its own MX (implicit MX); a single MX of "." is a null MX (RFC 7505) and
//! a permanent failure; NXDOMAIN is permanent; SERVFAIL and timeouts are temporary.
//! Loop protection (like Postfix): an MX host that resolves to one of Gannet's own listener
//! addresses (or to loopback, unless `[delivery] loopback_is_self = false`) is Gannet itself;
//! it and every MX host of equal or lower preference are dropped, and a domain left with none is
//! a permanent 5.4.6 "mail for D loops back to myself". `[[route]]` next hops are never checked.
//! Never does: connect anywhere.

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use hickory_resolver::TokioResolver;
use hickory_resolver::config::{NameServerConfig, ResolverConfig, ResolverOpts};
use hickory_resolver::net::runtime::TokioRuntimeProvider;
use rand::seq::SliceRandom;

use super::reply::Reply;
use crate::config::Config;

/// One host to try, with its addresses.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Host {
    pub name: String,
    pub addrs: Vec<SocketAddr>,
    /// MX preference (0 for routes and implicit MX); lower is tried first.
    pub preference: u16,
}

/// Where to deliver a domain's mail.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Destination {
    /// The site: the destination's MX host set (normalised), so domains sharing MX hosts share
    /// connection and rate limits.
    pub site: String,
    /// MX host names (for provider matching in shaping).
    pub mx_names: Vec<String>,
    /// Hosts in preference order (equal preferences in resolution order; connections use
    /// [`Destination::connection_order`]).
    pub hosts: Vec<Host>,
    /// Re-resolve after this: the records' smallest TTL, clamped to `[dns] min_ttl..=max_ttl`.
    pub valid_until: Instant,
    /// When this answer was built: of two answers for a site, the later one wins.
    pub resolved_at: Instant,
}

impl Destination {
    /// The hosts to try for one connection: preference order, hosts of equal preference in a
    /// fresh random order each time (RFC 5321 §5.1), so load spreads over them for as long as
    /// the destination is cached.
    pub fn connection_order(&self) -> Vec<Host> {
        let mut hosts = self.hosts.clone();
        let mut i = 0;
        while i < hosts.len() {
            let p = hosts[i].preference;
            let j = hosts[i..]
                .iter()
                .position(|h| h.preference != p)
                .map_or(hosts.len(), |k| i + k);
            hosts[i..j].shuffle(&mut rand::thread_rng());
            i = j;
        }
        hosts
    }

    /// Same hosts and addresses as `other` (ignoring order within a preference and validity).
    pub fn same_hosts(&self, other: &Destination) -> bool {
        let key = |d: &Destination| {
            let mut v: Vec<(u16, String, Vec<SocketAddr>)> = d
                .hosts
                .iter()
                .map(|h| {
                    let mut a = h.addrs.clone();
                    a.sort();
                    (h.preference, h.name.clone(), a)
                })
                .collect();
            v.sort();
            v
        };
        key(self) == key(other)
    }
}

/// Why there is nowhere to deliver right now.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ResolveError {
    /// Try again later.
    Temporary(Reply),
    /// Bounce.
    Permanent(Reply),
}

/// Normalised site key for a set of MX host names.
pub fn site_key(mx_names: &[String]) -> String {
    let mut v: Vec<String> = mx_names
        .iter()
        .map(|n| n.trim_end_matches('.').to_ascii_lowercase())
        .collect();
    v.sort();
    v.dedup();
    v.join(",")
}

/// Resolves destinations. Cheap to clone.
#[derive(Clone)]
pub struct MxResolver {
    resolver: TokioResolver,
    routes: Arc<Vec<(String, String)>>,
    port: u16,
    /// domain → (temporary failure, until). Short critical sections; std Mutex.
    negative: Arc<Mutex<HashMap<String, (Reply, Instant)>>>,
    negative_ttl: Duration,
    min_ttl: Duration,
    max_ttl: Duration,
    /// Addresses that are Gannet itself: every listener's socket address.
    own: Arc<Vec<SocketAddr>>,
    loopback_is_self: bool,
}

impl MxResolver {
    pub fn new(config: &Config) -> Result<MxResolver, String> {
        let mut opts = ResolverOpts::default();
        opts.timeout = config.dns.timeout;
        opts.attempts = 2;
        let provider = TokioRuntimeProvider::default();
        let builder = if config.dns.nameservers.is_empty() {
            TokioResolver::builder(provider).map_err(|e| {
                format!("cannot read the system DNS configuration (/etc/resolv.conf): {e}; set [dns] nameservers")
            })?
        } else {
            let servers = config
                .dns
                .nameservers
                .iter()
                .map(|sa| {
                    let mut ns = NameServerConfig::udp_and_tcp(sa.ip());
                    for c in &mut ns.connections {
                        c.port = sa.port();
                    }
                    ns
                })
                .collect();
            TokioResolver::builder_with_config(ResolverConfig::from_name_servers(servers), provider)
        };
        let mut builder = builder;
        *builder.options_mut() = opts;
        let resolver = builder
            .build()
            .map_err(|e| format!("cannot build the DNS resolver: {e}"))?;
        Ok(MxResolver {
            resolver,
            routes: Arc::new(
                config
                    .routes
                    .iter()
                    .map(|r| (r.domain.to_ascii_lowercase(), r.host.clone()))
                    .collect(),
            ),
            port: config.delivery.port,
            negative: Arc::new(Mutex::new(HashMap::new())),
            negative_ttl: config.dns.negative_ttl,
            min_ttl: config.dns.min_ttl,
            max_ttl: config.dns.max_ttl,
            own: Arc::new(config.listeners.iter().map(|l| l.address).collect()),
            loopback_is_self: config.delivery.loopback_is_self,
        })
    }

    /// Whether delivering to `addr` would connect to Gannet itself.
    fn is_self(&self, addr: SocketAddr) -> bool {
        let ip = addr.ip();
        if ip.is_unspecified() || (self.loopback_is_self && ip.is_loopback()) {
            return true;
        }
        self.own.iter().any(|l| {
            *l == addr
                || (l.ip().is_unspecified()
                    && l.port() == addr.port()
                    && (ip.is_loopback() || ip.is_unspecified()))
        })
    }

    /// Drop MX hosts that are Gannet itself and every host not preferred over them (they
    /// would be backups of ourselves); a domain left with nothing loops back to us.
    fn without_self(&self, domain: &str, hosts: Vec<Host>) -> Result<Vec<Host>, ResolveError> {
        let Some((me, addr)) = hosts
            .iter()
            .find_map(|h| h.addrs.iter().find(|a| self.is_self(**a)).map(|a| (h, *a)))
        else {
            return Ok(hosts);
        };
        let (pref, name) = (me.preference, me.name.clone());
        let kept: Vec<Host> = hosts.into_iter().filter(|h| h.preference < pref).collect();
        if kept.is_empty() {
            return Err(ResolveError::Permanent(Reply::new(
                554,
                "5.4.6",
                format!(
                    "mail for {domain} loops back to myself: MX host {name} resolves to {addr}, \
                     which is this Gannet (a listener address{}); fix the domain's MX records",
                    if self.loopback_is_self {
                        " or loopback"
                    } else {
                        ""
                    }
                ),
            )));
        }
        Ok(kept)
    }

    /// Forget remembered temporary failures and every cached record (an operator flush should
    /// ask DNS again, e.g. after an MX was renumbered).
    pub fn clear_negative_cache(&self) {
        self.negative
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clear();
        self.resolver.clear_cache();
    }

    /// Drop remembered temporary failures that have run out (the periodic sweep calls this,
    /// so failures for domains never seen again do not stay); returns how many are left.
    pub fn prune_negative_cache(&self, now: Instant) -> usize {
        let mut neg = self.negative.lock().unwrap_or_else(|p| p.into_inner());
        neg.retain(|_, (_, until)| *until > now);
        neg.len()
    }

    /// How long a temporary failure is remembered (`[dns] negative_ttl`).
    pub fn negative_ttl(&self) -> Duration {
        self.negative_ttl
    }

    /// When a destination built from records valid until `until` (None: no TTL, e.g. an IP
    /// literal) should be resolved again.
    fn expiry(&self, until: Option<Instant>) -> Instant {
        let now = Instant::now();
        let ttl = until.map_or(self.max_ttl, |u| u.saturating_duration_since(now));
        now + ttl.clamp(self.min_ttl, self.max_ttl)
    }

    /// The underlying resolver, for other stages that need DNS (domain checks).
    pub fn resolver(&self) -> &TokioResolver {
        &self.resolver
    }

    pub async fn resolve(&self, domain: &str) -> Result<Destination, ResolveError> {
        let domain = domain.trim_end_matches('.').to_ascii_lowercase();
        if let Some((_, host)) = self
            .routes
            .iter()
            .find(|(d, _)| *d == domain)
            .or_else(|| self.routes.iter().find(|(d, _)| d == "*"))
        {
            return self.resolve_route(host).await;
        }
        {
            let mut neg = self.negative.lock().unwrap_or_else(|p| p.into_inner());
            if let Some((reply, until)) = neg.get(&domain) {
                if *until > Instant::now() {
                    return Err(ResolveError::Temporary(reply.clone()));
                }
                neg.remove(&domain);
            }
        }
        let result = self.resolve_mx(&domain).await;
        if let Err(ResolveError::Temporary(r)) = &result {
            let mut neg = self.negative.lock().unwrap_or_else(|p| p.into_inner());
            if neg.len() > 100_000 {
                neg.clear();
            }
            neg.insert(domain, (r.clone(), Instant::now() + self.negative_ttl));
        }
        result
    }

    async fn resolve_route(&self, hostport: &str) -> Result<Destination, ResolveError> {
        let (host, port) = hostport
            .rsplit_once(':')
            .and_then(|(h, p)| Some((h.trim_matches(['[', ']']), p.parse::<u16>().ok()?)))
            .ok_or_else(|| {
                ResolveError::Permanent(Reply::new(
                    554,
                    "5.3.5",
                    format!("route host {hostport:?} is not host:port"),
                ))
            })?;
        let (addrs, until) = self.addresses(host, port).await?;
        Ok(Destination {
            valid_until: self.expiry(until),
            site: format!("route:{hostport}"),
            resolved_at: Instant::now(),
            mx_names: vec![host.to_string()],
            hosts: vec![Host {
                name: host.to_string(),
                addrs,
                preference: 0,
            }],
        })
    }

    /// A host's addresses and until when the answer is valid (None for IP literals and for
    /// names without addresses).
    async fn addresses(
        &self,
        host: &str,
        port: u16,
    ) -> Result<(Vec<SocketAddr>, Option<Instant>), ResolveError> {
        if let Ok(ip) = host.parse::<IpAddr>() {
            return Ok((vec![SocketAddr::new(ip, port)], None));
        }
        match self.resolver.lookup_ip(format!("{host}.")).await {
            Ok(l) => Ok((
                l.iter().map(|ip| SocketAddr::new(ip, port)).collect(),
                Some(l.valid_until()),
            )),
            Err(e) if e.is_nx_domain() || e.is_no_records_found() => Ok((Vec::new(), None)),
            Err(e) => Err(ResolveError::Temporary(Reply::new(
                451,
                "4.4.3",
                format!("address lookup for {host} failed: {e}"),
            ))),
        }
    }

    async fn resolve_mx(&self, domain: &str) -> Result<Destination, ResolveError> {
        let fqdn = format!("{domain}.");
        let mut until: Option<Instant> = None;
        let mx = match self.resolver.mx_lookup(fqdn.as_str()).await {
            Ok(l) => {
                until = Some(l.valid_until());
                let mut v: Vec<(u16, String)> = l
                    .answers()
                    .iter()
                    .filter_map(|r| match &r.data {
                        hickory_resolver::proto::rr::RData::MX(mx) => Some((
                            mx.preference,
                            mx.exchange
                                .to_ascii()
                                .trim_end_matches('.')
                                .to_ascii_lowercase(),
                        )),
                        _ => None,
                    })
                    .collect();
                v.sort_by_key(|(p, _)| *p);
                v
            }
            Err(e) if e.is_nx_domain() => {
                return Err(ResolveError::Permanent(Reply::new(
                    550,
                    "5.1.2",
                    format!("domain {domain} does not exist (NXDOMAIN)"),
                )));
            }
            Err(e) if e.is_no_records_found() => Vec::new(),
            Err(e) => {
                return Err(ResolveError::Temporary(Reply::new(
                    451,
                    "4.4.3",
                    format!("MX lookup for {domain} failed: {e}"),
                )));
            }
        };
        if mx.len() == 1 && mx[0].1.is_empty() {
            return Err(ResolveError::Permanent(Reply::new(
                556,
                "5.1.10",
                format!("{domain} does not accept mail (null MX, RFC 7505)"),
            )));
        }
        if mx.is_empty() {
            // Implicit MX (RFC 5321 §5.1): the domain itself, if it has an address.
            let (addrs, a_until) = self.addresses(domain, self.port).await?;
            if addrs.is_empty() {
                return Err(ResolveError::Permanent(Reply::new(
                    550,
                    "5.1.2",
                    format!("{domain} has no MX and no address record"),
                )));
            }
            let hosts = self.without_self(
                domain,
                vec![Host {
                    name: domain.to_string(),
                    addrs,
                    preference: 0,
                }],
            )?;
            return Ok(Destination {
                valid_until: self.expiry(a_until),
                resolved_at: Instant::now(),
                site: site_key(&[domain.to_string()]),
                mx_names: vec![domain.to_string()],
                hosts,
            });
        }
        // Shuffle equal preferences (RFC 5321 §5.1), keep preference order.
        let mut ordered: Vec<(u16, String)> = Vec::with_capacity(mx.len());
        let mut i = 0;
        while i < mx.len() {
            let j = mx[i..]
                .iter()
                .position(|(p, _)| *p != mx[i].0)
                .map_or(mx.len(), |k| i + k);
            let mut group: Vec<(u16, String)> = mx[i..j]
                .iter()
                .filter(|(_, n)| !n.is_empty())
                .cloned()
                .collect();
            group.shuffle(&mut rand::thread_rng());
            ordered.extend(group);
            i = j;
        }
        let mut hosts = Vec::with_capacity(ordered.len());
        let mut last_err = None;
        for (preference, name) in &ordered {
            match self.addresses(name, self.port).await {
                Ok((addrs, a_until)) if !addrs.is_empty() => {
                    until = match (until, a_until) {
                        (Some(a), Some(b)) => Some(a.min(b)),
                        (a, b) => a.or(b),
                    };
                    hosts.push(Host {
                        name: name.clone(),
                        addrs,
                        preference: *preference,
                    })
                }
                Ok(_) => {}
                Err(ResolveError::Temporary(r)) => last_err = Some(r),
                Err(ResolveError::Permanent(r)) => last_err = Some(r),
            }
        }
        if hosts.is_empty() {
            return Err(ResolveError::Temporary(last_err.unwrap_or_else(|| {
                Reply::new(
                    451,
                    "4.4.4",
                    format!("no MX host of {domain} has an address"),
                )
            })));
        }
        let hosts = self.without_self(domain, hosts)?;
        let names: Vec<String> = ordered.into_iter().map(|(_, n)| n).collect();
        Ok(Destination {
            valid_until: self.expiry(until),
            site: site_key(&names),
            resolved_at: Instant::now(),
            mx_names: names,
            hosts,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn host(name: &str, preference: u16, ip: &str) -> Host {
        Host {
            name: name.into(),
            addrs: vec![SocketAddr::new(ip.parse().unwrap(), 25)],
            preference,
        }
    }

    fn dest(hosts: Vec<Host>) -> Destination {
        Destination {
            site: "s".into(),
            mx_names: hosts.iter().map(|h| h.name.clone()).collect(),
            hosts,
            valid_until: Instant::now(),
            resolved_at: Instant::now(),
        }
    }

    /// Issue 15 item 3: equal-preference MX hosts are shuffled for every connection, not once
    /// per resolution; preference order always holds.
    #[test]
    fn equal_preference_hosts_are_shuffled_per_connection() {
        let d = dest(vec![
            host("a", 10, "192.0.2.1"),
            host("b", 10, "192.0.2.2"),
            host("c", 10, "192.0.2.3"),
            host("z", 20, "192.0.2.9"),
        ]);
        let mut firsts = std::collections::BTreeSet::new();
        for _ in 0..300 {
            let order = d.connection_order();
            let names: Vec<&str> = order.iter().map(|h| h.name.as_str()).collect();
            assert_eq!(names.len(), 4);
            assert_eq!(names[3], "z", "the backup MX stays last: {names:?}");
            firsts.insert(names[0].to_string());
        }
        // 300 draws: the chance that one of three equals is never first is ~3 * (2/3)^300.
        assert_eq!(
            firsts.len(),
            3,
            "every equal-preference host leads sometimes"
        );
    }

    #[test]
    fn same_hosts_ignores_order_and_validity() {
        let a = dest(vec![host("a", 10, "192.0.2.1"), host("b", 10, "192.0.2.2")]);
        let mut b = dest(vec![host("b", 10, "192.0.2.2"), host("a", 10, "192.0.2.1")]);
        b.valid_until += Duration::from_secs(60);
        assert!(a.same_hosts(&b));
        let renumbered = dest(vec![host("a", 10, "192.0.2.7"), host("b", 10, "192.0.2.2")]);
        assert!(!a.same_hosts(&renumbered));
    }
}
