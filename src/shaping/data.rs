//! The shaping file: its TOML model, validation, and resolution of the limits that apply to one
//! destination.
//!
//! Owns [`Shaping`] (immutable once loaded), [`LimitSet`] and [`SiteLimits`], site keys and
//! provider matching by MX host. Resolution is per key: a domain override's value wins, then the
//! matched provider block's, then `[defaults]`, then (for per-connection keys) the `[delivery]`
//! section of the main config via [`Shaping::fill_defaults_from`]. Never does I/O: the file is read
//! by config ([`Config::shaping_file_text`]); this module parses text.

use super::ShapingError;
use super::backoff::{BackoffRule, BackoffRuleToml};
use super::common::parse_duration;
use super::schedule::WarmupSchedule;
use crate::config::{Config, DeliveryConfig};
use serde::{Deserialize, Deserializer};
use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::time::Duration;

/// The shipped shaping data (`config/shaping.toml`), used when no shaping file is configured.
pub const DEFAULT_SHAPING_TOML: &str = include_str!("../../config/shaping.toml");

/// Fallbacks for per-connection keys when neither the shaping file nor `[delivery]` sets them.
const FALLBACK_MESSAGES_PER_CONNECTION: u32 = 100;
const FALLBACK_RECIPIENTS_PER_TRANSACTION: u32 = 100;
const FALLBACK_IDLE_TIMEOUT: Duration = Duration::from_secs(5);

/// One layer of limits (PowerMTA names in brackets). `None` means "this layer says nothing":
/// the next layer down decides, and if no layer sets a key there is no limit of that kind.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct LimitSet {
    /// Concurrent connections (`max-smtp-out`).
    pub max_connections: Option<u32>,
    /// Messages per second, fractions allowed (`max-msg-rate 10/s`).
    pub max_messages_per_second: Option<f64>,
    /// Messages per hour (`max-msg-rate 5000/h`).
    pub max_messages_per_hour: Option<u64>,
    /// New connections opened per second, fractions allowed (`max-conn-rate`).
    pub max_connection_rate: Option<f64>,
    /// Messages sent over one connection before it is closed (`max-msg-per-connection`).
    pub max_messages_per_connection: Option<u32>,
    /// Recipients in one SMTP transaction (`max-rcpt-per-message`).
    pub max_recipients_per_transaction: Option<u32>,
    /// An idle connection is closed after this long (`smtp-pattern idle`, `max-idle-time`).
    pub idle_timeout: Option<Duration>,
}

impl LimitSet {
    /// Each key from `self`, or from `lower` where `self` does not set it.
    pub fn or(&self, lower: &LimitSet) -> LimitSet {
        LimitSet {
            max_connections: self.max_connections.or(lower.max_connections),
            max_messages_per_second: self
                .max_messages_per_second
                .or(lower.max_messages_per_second),
            max_messages_per_hour: self.max_messages_per_hour.or(lower.max_messages_per_hour),
            max_connection_rate: self.max_connection_rate.or(lower.max_connection_rate),
            max_messages_per_connection: self
                .max_messages_per_connection
                .or(lower.max_messages_per_connection),
            max_recipients_per_transaction: self
                .max_recipients_per_transaction
                .or(lower.max_recipients_per_transaction),
            idle_timeout: self.idle_timeout.or(lower.idle_timeout),
        }
    }

    fn validate(&self, origin: &str, key: &str) -> Result<(), ShapingError> {
        let bad = |field: &str, message: &str| ShapingError::Invalid {
            origin: origin.to_string(),
            key: format!("{key}.{field}"),
            message: message.to_string(),
        };
        let positive_rate = |v: Option<f64>| v.is_none_or(|r| r.is_finite() && r > 0.0);
        if self.max_connections == Some(0) {
            return Err(bad("max_connections", "expected at least 1"));
        }
        if !positive_rate(self.max_messages_per_second) {
            return Err(bad(
                "max_messages_per_second",
                "expected a number above 0 (e.g. 10 or 0.5); leave the key out for no limit",
            ));
        }
        if self.max_messages_per_hour == Some(0) {
            return Err(bad(
                "max_messages_per_hour",
                "expected at least 1; leave the key out for no limit",
            ));
        }
        if !positive_rate(self.max_connection_rate) {
            return Err(bad(
                "max_connection_rate",
                "expected new connections per second above 0 (e.g. 2 or 0.2)",
            ));
        }
        if self.max_messages_per_connection == Some(0) {
            return Err(bad("max_messages_per_connection", "expected at least 1"));
        }
        if self.max_recipients_per_transaction == Some(0) {
            return Err(bad("max_recipients_per_transaction", "expected at least 1"));
        }
        Ok(())
    }
}

/// The limits that apply to one destination site, resolved from the shaping data.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct SiteLimits {
    /// Name of the provider block that matched (`google`, `yahoo`...), for logs, metrics and
    /// warm-up schedules.
    pub provider: Option<Arc<str>>,
    /// Limits on the site as a whole, across all of our sources.
    pub site: LimitSet,
    /// Limits on each (site, source IP) pair.
    pub per_source: LimitSet,
}

impl SiteLimits {
    /// Messages per connection: the tighter of the site and per-source values.
    pub fn max_messages_per_connection(&self) -> u32 {
        min_opt(
            self.site.max_messages_per_connection,
            self.per_source.max_messages_per_connection,
        )
        .unwrap_or(FALLBACK_MESSAGES_PER_CONNECTION)
    }

    /// Recipients per transaction: the tighter of the site and per-source values.
    pub fn max_recipients_per_transaction(&self) -> u32 {
        min_opt(
            self.site.max_recipients_per_transaction,
            self.per_source.max_recipients_per_transaction,
        )
        .unwrap_or(FALLBACK_RECIPIENTS_PER_TRANSACTION)
    }

    /// Idle timeout of a connection: the shorter of the site and per-source values.
    pub fn idle_timeout(&self) -> Duration {
        min_opt(self.site.idle_timeout, self.per_source.idle_timeout)
            .unwrap_or(FALLBACK_IDLE_TIMEOUT)
    }
}

fn min_opt<T: Ord>(a: Option<T>, b: Option<T>) -> Option<T> {
    match (a, b) {
        (Some(a), Some(b)) => Some(a.min(b)),
        (a, b) => a.or(b),
    }
}

/// A host name as Gannet compares it: trimmed, lowercase, without the root dot.
pub fn normalize_host(host: &str) -> String {
    host.trim().trim_end_matches('.').to_ascii_lowercase()
}

/// The site of a destination: its MX host names, normalised, sorted, deduplicated and joined
/// with `,`. Domains with the same MX set share a site (and so share limits and backoff state).
/// For a domain without MX records, pass the domain itself (its implicit MX, RFC 5321 §5.1).
pub fn site_key(mx_hosts: &[String]) -> String {
    let mut hosts: Vec<String> = mx_hosts
        .iter()
        .map(|h| normalize_host(h))
        .filter(|h| !h.is_empty())
        .collect();
    hosts.sort();
    hosts.dedup();
    hosts.join(",")
}

/// Whether `host` matches an MX pattern from the shaping file: `*.google.com` matches any name
/// ending in `.google.com`; a pattern without `*` matches that exact name. Case-insensitive,
/// a trailing root dot on either side is ignored.
pub fn provider_matches(pattern: &str, host: &str) -> bool {
    let host = host.trim().trim_end_matches('.');
    let pattern = pattern.trim().trim_end_matches('.');
    match pattern.strip_prefix('*') {
        Some(suffix) => {
            // `suffix` starts with '.', validated at load.
            host.len() > suffix.len()
                && host.as_bytes()[host.len() - suffix.len()..]
                    .eq_ignore_ascii_case(suffix.as_bytes())
        }
        None => host.eq_ignore_ascii_case(pattern),
    }
}

#[derive(Debug, Clone, Default)]
struct Layer {
    site: LimitSet,
    per_source: LimitSet,
}

impl Layer {
    fn or(&self, lower: &Layer) -> Layer {
        Layer {
            site: self.site.or(&lower.site),
            per_source: self.per_source.or(&lower.per_source),
        }
    }
}

#[derive(Debug, Clone)]
struct Provider {
    name: Arc<str>,
    mx: Vec<String>,
    domains: Vec<String>,
    layer: Layer,
}

/// The parsed shaping data: limit presets, backoff rules and warm-up schedules.
/// Immutable; share it behind an `Arc` and replace it whole on reload.
#[derive(Debug, Clone)]
pub struct Shaping {
    origin: String,
    defaults: Layer,
    providers: Vec<Provider>,
    domains: HashMap<String, Layer>,
    rules: Arc<[BackoffRule]>,
    warmup: BTreeMap<String, WarmupSchedule>,
}

impl Shaping {
    /// The shaping data a configuration names (`[shaping] file`, relative to the config file's
    /// directory; the shipped data when unset), with unset defaults taken from `[delivery]`.
    /// Errors name the file, the key and what was expected.
    pub fn from_config(config: &Config) -> Result<Shaping, ShapingError> {
        let mut shaping = match config.shaping_file_text() {
            Ok(None) => Shaping::builtin(),
            Ok(Some((path, text))) => Shaping::from_toml(&text, &path.display().to_string())?,
            Err((path, source)) => {
                return Err(ShapingError::Read {
                    path: path.display().to_string(),
                    source,
                });
            }
        };
        shaping.fill_defaults_from(&config.delivery);
        Ok(shaping)
    }

    /// The shipped shaping data ([`DEFAULT_SHAPING_TOML`]). It is checked by a unit test, so
    /// this cannot fail in a released binary.
    pub fn builtin() -> Shaping {
        Shaping::from_toml(DEFAULT_SHAPING_TOML, "built-in config/shaping.toml")
            .expect("built-in config/shaping.toml is valid")
    }

    /// Parse shaping data from text; `origin` names it in error messages.
    pub fn from_toml(text: &str, origin: &str) -> Result<Shaping, ShapingError> {
        let raw: FileToml = toml::from_str(text).map_err(|e| ShapingError::Parse {
            origin: origin.to_string(),
            message: e.to_string().trim_end().to_string(),
        })?;
        let invalid = |key: String, message: String| ShapingError::Invalid {
            origin: origin.to_string(),
            key,
            message,
        };

        let defaults = raw.defaults.layer();
        defaults.site.validate(origin, "defaults")?;
        defaults
            .per_source
            .validate(origin, "defaults.per_source")?;

        let mut providers: Vec<Provider> = Vec::with_capacity(raw.providers.len());
        for (i, p) in raw.providers.iter().enumerate() {
            let key = format!("provider[{i}]");
            let name = p.name.trim();
            if name.is_empty() || name.contains(char::is_whitespace) {
                return Err(invalid(
                    format!("{key}.name"),
                    format!("expected a short name without spaces, got {:?}", p.name),
                ));
            }
            if name == "default" {
                return Err(invalid(
                    format!("{key}.name"),
                    "\"default\" is reserved for warm-up schedules; pick another name".into(),
                ));
            }
            if providers.iter().any(|q| &*q.name == name) {
                return Err(invalid(
                    format!("{key}.name"),
                    format!("provider {name:?} is defined twice"),
                ));
            }
            if p.mx.is_empty() && p.domains.is_empty() {
                return Err(invalid(
                    format!("{key}.mx"),
                    format!(
                        "provider {name:?} needs `mx` patterns (e.g. [\"*.google.com\"]) or `domains`"
                    ),
                ));
            }
            let mut mx = Vec::with_capacity(p.mx.len());
            for pattern in &p.mx {
                let norm = normalize_host(pattern);
                let body = norm.strip_prefix("*.").unwrap_or(&norm);
                if body.is_empty()
                    || body.contains('*')
                    || body.contains(char::is_whitespace)
                    || body.contains(',')
                    || body.starts_with('.')
                {
                    return Err(invalid(
                        format!("{key}.mx"),
                        format!(
                            "bad MX pattern {pattern:?}: expected a host name (\"mx.example.com\") or \"*.\" and a suffix (\"*.google.com\")"
                        ),
                    ));
                }
                mx.push(norm);
            }
            let layer = p.layer();
            layer.site.validate(origin, &key)?;
            layer
                .per_source
                .validate(origin, &format!("{key}.per_source"))?;
            providers.push(Provider {
                name: Arc::from(name),
                mx,
                domains: p.domains.iter().map(|d| normalize_host(d)).collect(),
                layer,
            });
        }

        let mut domains = HashMap::with_capacity(raw.domains.len());
        for (domain, block) in &raw.domains {
            let norm = normalize_host(domain);
            let key = format!("domain.\"{domain}\"");
            if norm.is_empty() || norm.contains(char::is_whitespace) || norm.contains('*') {
                return Err(invalid(
                    key,
                    "expected a recipient domain such as \"example.com\" (no wildcards)".into(),
                ));
            }
            let layer = block.layer();
            layer.site.validate(origin, &key)?;
            layer
                .per_source
                .validate(origin, &format!("{key}.per_source"))?;
            if domains.insert(norm, layer).is_some() {
                return Err(invalid(key, "this domain is listed twice".into()));
            }
        }

        let mut rules = Vec::with_capacity(raw.backoff.len());
        for (i, r) in raw.backoff.into_iter().enumerate() {
            let rule = BackoffRule::from_toml(r, origin, i)?;
            if rules.iter().any(|q: &BackoffRule| q.name == rule.name) {
                return Err(invalid(
                    format!("backoff[{i}].name"),
                    format!("rule name {:?} is used twice", rule.name),
                ));
            }
            rules.push(rule);
        }

        let mut warmup = BTreeMap::new();
        for (name, table) in raw.warmup {
            let schedule = WarmupSchedule::from_toml(&name, table, origin, |p| {
                providers.iter().any(|q| &*q.name == p)
            })?;
            warmup.insert(name, schedule);
        }

        Ok(Shaping {
            origin: origin.to_string(),
            defaults,
            providers,
            domains,
            rules: rules.into(),
            warmup,
        })
    }

    /// Fill keys that `[defaults]` leaves unset from the main config's `[delivery]` section, so
    /// `max_connections_per_destination` and friends keep working without a shaping file.
    pub fn fill_defaults_from(&mut self, delivery: &DeliveryConfig) {
        let from_delivery = LimitSet {
            max_connections: u32::try_from(delivery.max_connections_per_destination).ok(),
            max_messages_per_connection: u32::try_from(delivery.max_messages_per_connection).ok(),
            max_recipients_per_transaction: u32::try_from(delivery.max_recipients_per_transaction)
                .ok(),
            idle_timeout: Some(delivery.idle_timeout),
            ..LimitSet::default()
        };
        self.defaults.site = self.defaults.site.or(&from_delivery);
    }

    /// Where this data came from (a path, or "built-in ...").
    pub fn origin(&self) -> &str {
        &self.origin
    }

    /// The name of the first provider block (in file order) that one of `mx_hosts` matches, or
    /// whose `domains` list holds `domain`.
    pub fn provider_for(&self, domain: &str, mx_hosts: &[String]) -> Option<&str> {
        self.provider_block(domain, mx_hosts).map(|p| &*p.name)
    }

    fn provider_block(&self, domain: &str, mx_hosts: &[String]) -> Option<&Provider> {
        let domain = domain.trim().trim_end_matches('.');
        self.providers.iter().find(|p| {
            p.mx.iter()
                .any(|pat| mx_hosts.iter().any(|h| provider_matches(pat, h)))
                || p.domains.iter().any(|d| d.eq_ignore_ascii_case(domain))
        })
    }

    /// Names of all provider blocks, in file order.
    pub fn provider_names(&self) -> impl Iterator<Item = &str> {
        self.providers.iter().map(|p| &*p.name)
    }

    /// The limits for `domain` delivered through `mx_hosts`: per key, a `[domain."..."]`
    /// override wins, then the matched provider block, then `[defaults]`.
    ///
    /// Limits are enforced per site ([`site_key`] of `mx_hosts`); if two domains share a site
    /// but have different overrides, whichever limits the caller passes to the limiter apply.
    pub fn limits_for(&self, domain: &str, mx_hosts: &[String]) -> SiteLimits {
        let provider = self.provider_block(domain, mx_hosts);
        let mut layer = match provider {
            Some(p) => p.layer.or(&self.defaults),
            None => self.defaults.clone(),
        };
        if let Some(o) = self.domains.get(&normalize_host(domain)) {
            layer = o.or(&layer);
        }
        SiteLimits {
            provider: provider.map(|p| p.name.clone()),
            site: layer.site,
            per_source: layer.per_source,
        }
    }

    /// The backoff rules, in match order (first match wins).
    pub fn backoff_rules(&self) -> Arc<[BackoffRule]> {
        self.rules.clone()
    }

    /// A warm-up schedule by name.
    pub fn warmup_schedule(&self, name: &str) -> Option<&WarmupSchedule> {
        self.warmup.get(name)
    }

    /// Names of all warm-up schedules.
    pub fn warmup_schedule_names(&self) -> impl Iterator<Item = &str> {
        self.warmup.keys().map(|k| k.as_str())
    }

    /// Messages per day that a source on warm-up schedule `schedule` may send to `provider`
    /// (`None`: destinations without a provider block) on day `days_since_start` (0 is the
    /// `warmup_start` date; earlier days get day 0's cap). `None` means no cap: the schedule
    /// is over, unknown, or has neither an entry for the provider nor a `default`.
    pub fn warmup_cap(
        &self,
        schedule: &str,
        provider: Option<&str>,
        days_since_start: i64,
    ) -> Option<u64> {
        self.warmup.get(schedule)?.cap(provider, days_since_start)
    }
}

/// Parse an optional humantime duration with an error that shows examples.
fn opt_duration<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Duration>, D::Error> {
    let raw: Option<String> = Option::deserialize(d)?;
    raw.map(|s| parse_duration(&s).map_err(serde::de::Error::custom))
        .transpose()
}

/// Declares a TOML block struct with the limit keys plus `extra` fields, and its conversion to
/// a [`LimitSet`]. Written once so defaults, providers and domain overrides accept exactly the
/// same keys.
macro_rules! limits_toml {
    ($name:ident { $($extra:tt)* }) => {
        #[derive(Debug, Default, Deserialize)]
        #[serde(deny_unknown_fields)]
        struct $name {
            $($extra)*
            #[serde(default)]
            max_connections: Option<u32>,
            #[serde(default)]
            max_messages_per_second: Option<f64>,
            #[serde(default)]
            max_messages_per_hour: Option<u64>,
            #[serde(default)]
            max_connection_rate: Option<f64>,
            #[serde(default)]
            max_messages_per_connection: Option<u32>,
            #[serde(default)]
            max_recipients_per_transaction: Option<u32>,
            #[serde(default, deserialize_with = "opt_duration")]
            idle_timeout: Option<Duration>,
        }

        impl $name {
            fn limit_set(&self) -> LimitSet {
                LimitSet {
                    max_connections: self.max_connections,
                    max_messages_per_second: self.max_messages_per_second,
                    max_messages_per_hour: self.max_messages_per_hour,
                    max_connection_rate: self.max_connection_rate,
                    max_messages_per_connection: self.max_messages_per_connection,
                    max_recipients_per_transaction: self.max_recipients_per_transaction,
                    idle_timeout: self.idle_timeout,
                }
            }
        }
    };
}

limits_toml!(PerSourceToml {});
limits_toml!(BlockToml {
    #[serde(default)]
    per_source: PerSourceToml,
});
limits_toml!(ProviderToml {
    name: String,
    #[serde(default)]
    mx: Vec<String>,
    #[serde(default)]
    domains: Vec<String>,
    #[serde(default)]
    per_source: PerSourceToml,
});

impl BlockToml {
    fn layer(&self) -> Layer {
        Layer {
            site: self.limit_set(),
            per_source: self.per_source.limit_set(),
        }
    }
}

impl ProviderToml {
    fn layer(&self) -> Layer {
        Layer {
            site: self.limit_set(),
            per_source: self.per_source.limit_set(),
        }
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct FileToml {
    #[serde(default)]
    defaults: BlockToml,
    #[serde(default, rename = "provider")]
    providers: Vec<ProviderToml>,
    #[serde(default, rename = "domain")]
    domains: BTreeMap<String, BlockToml>,
    #[serde(default)]
    backoff: Vec<BackoffRuleToml>,
    #[serde(default)]
    warmup: BTreeMap<String, BTreeMap<String, Vec<u64>>>,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hosts(h: &[&str]) -> Vec<String> {
        h.iter().map(|s| s.to_string()).collect()
    }

    const GMAIL_MX: &[&str] = &[
        "gmail-smtp-in.l.google.com.",
        "alt1.gmail-smtp-in.l.google.com.",
        "alt2.gmail-smtp-in.l.google.com.",
        "alt3.gmail-smtp-in.l.google.com.",
        "alt4.gmail-smtp-in.l.google.com.",
    ];

    fn err_of(text: &str) -> String {
        Shaping::from_toml(text, "test-shaping.toml")
            .unwrap_err()
            .to_string()
    }

    #[test]
    fn builtin_shaping_file_is_valid() {
        let s = Shaping::builtin();
        for p in [
            "google",
            "yahoo",
            "outlook-consumer",
            "microsoft365",
            "icloud",
        ] {
            assert!(s.provider_names().any(|n| n == p), "missing provider {p}");
        }
        assert!(s.backoff_rules().len() >= 5);
        assert!(s.warmup_schedule("standard").is_some());
    }

    #[test]
    fn site_key_is_normalised_sorted_and_deduplicated() {
        let a = site_key(&hosts(&[
            "MX2.Example.COM.",
            "mx1.example.com",
            "mx1.example.com.",
        ]));
        assert_eq!(a, "mx1.example.com,mx2.example.com");
        assert_eq!(site_key(&hosts(&["", "  "])), "");
    }

    #[test]
    fn gmail_and_googlemail_share_one_site() {
        // googlemail.com publishes the same MX set as gmail.com, in another order.
        let mut googlemail = hosts(GMAIL_MX);
        googlemail.reverse();
        assert_eq!(site_key(&hosts(GMAIL_MX)), site_key(&googlemail));
    }

    #[test]
    fn gmail_mx_matches_the_google_block() {
        let s = Shaping::builtin();
        let l = s.limits_for("gmail.com", &hosts(GMAIL_MX));
        assert_eq!(l.provider.as_deref(), Some("google"));
        // A Google Workspace domain with its own name but Google's MX.
        let l = s.limits_for("example-corp.com", &hosts(&["aspmx.l.google.com"]));
        assert_eq!(l.provider.as_deref(), Some("google"));
        // AOL is Yahoo.
        let l = s.limits_for("aol.com", &hosts(&["mx-aol.mail.gm0.yahoodns.net"]));
        assert_eq!(l.provider.as_deref(), Some("yahoo"));
        // Consumer Outlook is matched before the broader Microsoft 365 pattern.
        let l = s.limits_for(
            "hotmail.com",
            &hosts(&["hotmail-com.olc.protection.outlook.com"]),
        );
        assert_eq!(l.provider.as_deref(), Some("outlook-consumer"));
        let l = s.limits_for(
            "contoso.com",
            &hosts(&["contoso-com.mail.protection.outlook.com"]),
        );
        assert_eq!(l.provider.as_deref(), Some("microsoft365"));
        let l = s.limits_for("unknown.example", &hosts(&["mx.unknown.example"]));
        assert_eq!(l.provider, None);
    }

    #[test]
    fn pattern_matching_is_suffix_on_label_boundary() {
        assert!(provider_matches("*.google.com", "ASPMX.L.GOOGLE.COM."));
        assert!(!provider_matches("*.google.com", "google.com"));
        assert!(!provider_matches("*.google.com", "evilgoogle.com"));
        assert!(provider_matches("google.com", "Google.com."));
        assert!(!provider_matches("google.com", "mx.google.com"));
    }

    const LAYERED: &str = r#"
[defaults]
max_connections = 20
max_messages_per_connection = 100
idle_timeout = "5s"
per_source = { max_connections = 10 }

[[provider]]
name = "google"
mx = ["*.google.com"]
max_connections = 50
max_messages_per_second = 100
per_source = { max_connections = 15, max_messages_per_second = 20 }

[domain."Example.COM"]
max_connections = 2
per_source = { max_messages_per_second = 1.5 }
"#;

    #[test]
    fn domain_override_beats_provider_beats_defaults_per_key() {
        let s = Shaping::from_toml(LAYERED, "t").unwrap();
        let mx = hosts(&["aspmx.l.google.com"]);

        let plain = s.limits_for("gmail.com", &mx);
        assert_eq!(plain.site.max_connections, Some(50)); // provider
        assert_eq!(plain.site.max_messages_per_connection, Some(100)); // defaults
        assert_eq!(plain.per_source.max_connections, Some(15));
        assert_eq!(plain.per_source.max_messages_per_second, Some(20.0));

        let o = s.limits_for("example.com.", &mx);
        assert_eq!(o.provider.as_deref(), Some("google"));
        assert_eq!(o.site.max_connections, Some(2)); // domain override
        assert_eq!(o.site.max_messages_per_second, Some(100.0)); // provider
        assert_eq!(o.site.idle_timeout, Some(Duration::from_secs(5))); // defaults
        assert_eq!(o.per_source.max_messages_per_second, Some(1.5)); // override
        assert_eq!(o.per_source.max_connections, Some(15)); // provider

        let none = s.limits_for("other.example", &hosts(&["mx.other.example"]));
        assert_eq!(none.site.max_connections, Some(20));
        assert_eq!(none.per_source.max_connections, Some(10));
        assert_eq!(none.site.max_messages_per_second, None);
    }

    #[test]
    fn delivery_section_fills_only_unset_defaults() {
        let mut s = Shaping::from_toml("[defaults]\nmax_connections = 7\n", "t").unwrap();
        let delivery = DeliveryConfig::default();
        s.fill_defaults_from(&delivery);
        let l = s.limits_for("x.example", &hosts(&["mx.x.example"]));
        assert_eq!(l.site.max_connections, Some(7));
        assert_eq!(
            l.max_messages_per_connection() as usize,
            delivery.max_messages_per_connection
        );
        assert_eq!(l.idle_timeout(), delivery.idle_timeout);
    }

    #[test]
    fn per_connection_values_take_the_tighter_layer() {
        let l = SiteLimits {
            provider: None,
            site: LimitSet {
                max_messages_per_connection: Some(50),
                ..LimitSet::default()
            },
            per_source: LimitSet {
                max_messages_per_connection: Some(20),
                idle_timeout: Some(Duration::from_secs(3)),
                ..LimitSet::default()
            },
        };
        assert_eq!(l.max_messages_per_connection(), 20);
        assert_eq!(l.idle_timeout(), Duration::from_secs(3));
        assert_eq!(l.max_recipients_per_transaction(), 100);
    }

    #[test]
    fn unknown_key_is_named_with_the_file() {
        let e = err_of("[defaults]\nmax_conections = 5\n");
        assert!(e.contains("test-shaping.toml"), "{e}");
        assert!(e.contains("max_conections"), "{e}");
        assert!(e.contains("max_connections"), "expected keys listed: {e}");
    }

    #[test]
    fn bad_duration_is_explained() {
        let e = err_of("[defaults]\nidle_timeout = \"soon\"\n");
        assert!(e.contains("idle_timeout") && e.contains("\"soon\""), "{e}");
        assert!(e.contains("expected e.g."), "{e}");
    }

    #[test]
    fn bad_values_name_the_key() {
        let e = err_of("[[provider]]\nname = \"g\"\nmx = [\"*.g.com\"]\nmax_connections = 0\n");
        assert!(e.contains("provider[0].max_connections"), "{e}");
        let e = err_of("[defaults.per_source]\nmax_messages_per_second = -1\n");
        assert!(
            e.contains("defaults.per_source.max_messages_per_second"),
            "{e}"
        );
        let e = err_of("[[provider]]\nname = \"g\"\nmx = [\"google.*\"]\n");
        assert!(
            e.contains("provider[0].mx") && e.contains("google.*"),
            "{e}"
        );
        let e = err_of("[[provider]]\nname = \"g\"\n");
        assert!(e.contains("needs `mx`"), "{e}");
        let e = err_of(
            "[[provider]]\nname = \"g\"\nmx = [\"a.b\"]\n[[provider]]\nname = \"g\"\nmx = [\"c.d\"]\n",
        );
        assert!(e.contains("provider[1].name") && e.contains("twice"), "{e}");
    }

    #[test]
    fn config_file_path_is_resolved_and_delivery_fills_defaults() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(
            dir.path().join("shaping.toml"),
            "[defaults]\nper_source = { max_connections = 3 }\n",
        )
        .unwrap();
        let cfg_path = dir.path().join("gannet.toml");
        std::fs::write(
            &cfg_path,
            "[shaping]\nfile = \"shaping.toml\"\n[delivery]\nmax_connections_per_destination = 9\n\
             [[pool]]\nname = \"p\"\nsources = [{ ip = \"127.0.0.1\", ehlo = \"h\" }]\n[class.c]\npool = \"p\"\n",
        )
        .unwrap();
        let config = Config::load(&cfg_path).unwrap();
        let s = Shaping::from_config(&config).unwrap();
        let l = s.limits_for("x.example", &hosts(&["mx.x.example"]));
        assert_eq!(l.site.max_connections, Some(9));
        assert_eq!(l.per_source.max_connections, Some(3));
        // No file configured: the shipped presets.
        let s = Shaping::from_config(&Config::embedded_default()).unwrap();
        assert!(s.provider_names().any(|p| p == "google"));
    }

    #[test]
    fn missing_file_is_named() {
        let mut config = Config::embedded_default();
        config.shaping.file = Some("/nonexistent/shaping.toml".into());
        let e = Shaping::from_config(&config).unwrap_err().to_string();
        assert!(e.contains("/nonexistent/shaping.toml"), "{e}");
    }
}
