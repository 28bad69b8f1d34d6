//! The configuration data model: plain serde structs with defaults. Validation that crosses
//! sections lives in `validate.rs`.

use ipnet::IpNet;
use serde::Deserialize;
use std::collections::BTreeMap;
use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::time::Duration;

/// The whole configuration. Immutable once loaded.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// Our own name: SMTP greeting, `Received:`, `Message-ID`, DSN reporting MTA.
    #[serde(default = "default_hostname")]
    pub hostname: String,
    /// A message with more `Received:` headers than this is refused at DATA with 554 5.4.6
    /// (a mail loop; Postfix's `hopcount_limit`).
    #[serde(default = "default_hop_limit")]
    pub hop_limit: usize,
    /// Where mail to the bare `<postmaster>` recipient goes (RFC 5321 §4.5.1); None means
    /// `postmaster@` + `hostname`. Use [`Config::postmaster_address`].
    #[serde(default)]
    pub postmaster: Option<String>,
    /// The class of mail that names none (no injection field, no `X-Gannet-Class`, no SMTP
    /// user's or listener's `default_class`). None: the only class when there is one, else the
    /// alphabetically first (`check-config` says which). Use [`Config::fallback_class`].
    #[serde(default)]
    pub default_class: Option<String>,
    #[serde(default)]
    pub spool: SpoolConfig,
    #[serde(default, rename = "listener")]
    pub listeners: Vec<ListenerConfig>,
    #[serde(default)]
    pub http: HttpConfig,
    #[serde(default)]
    pub dns: DnsConfig,
    #[serde(default, rename = "route")]
    pub routes: Vec<RouteConfig>,
    #[serde(default)]
    pub delivery: DeliveryConfig,
    #[serde(default, rename = "pool")]
    pub pools: Vec<PoolConfig>,
    #[serde(default, rename = "class")]
    pub classes: BTreeMap<String, ClassConfig>,
    #[serde(default, rename = "smtp_user")]
    pub smtp_users: Vec<SmtpUserConfig>,
    #[serde(default, rename = "api_token")]
    pub api_tokens: Vec<ApiTokenConfig>,
    #[serde(default, rename = "dkim")]
    pub dkim: Vec<DkimConfig>,
    #[serde(default)]
    pub dkim_policy: DkimPolicyConfig,
    #[serde(default)]
    pub shaping: ShapingRef,
    #[serde(default)]
    pub unsubscribe: UnsubscribeConfig,
    #[serde(default)]
    pub sendlog: SendlogConfig,
    #[serde(default)]
    pub storage: StorageConfig,
    #[serde(default)]
    pub inject: InjectConfig,
    #[serde(default)]
    pub bounce: BounceConfig,
    #[serde(default)]
    pub suppression: SuppressionConfig,
    #[serde(default)]
    pub metrics: MetricsConfig,
    #[serde(default)]
    pub anomaly: AnomalyConfig,
    /// Users of the web console at `/console` (none: the console answers 404).
    #[serde(default, rename = "console_user")]
    pub console_users: Vec<ConsoleUserConfig>,
    #[serde(default)]
    pub console: ConsoleConfig,
    /// Event shipping (`ship/`): the outbox and its destinations.
    #[serde(default)]
    pub outbox: super::ship::OutboxConfig,
    #[serde(default, rename = "webhook")]
    pub webhooks: Vec<super::ship::WebhookConfig>,
    #[serde(default)]
    pub amqp: Vec<super::ship::AmqpConfig>,
    #[serde(default)]
    pub jsonl: Vec<super::ship::JsonlConfig>,
    /// Directory of the config file, for resolving relative paths. Not a TOML key.
    #[serde(skip)]
    pub base_dir: Option<PathBuf>,
}

fn default_hop_limit() -> usize {
    50
}

impl Config {
    /// The address `RCPT TO:<postmaster>` is delivered to.
    pub fn postmaster_address(&self) -> String {
        self.postmaster
            .clone()
            .unwrap_or_else(|| format!("postmaster@{}", self.hostname))
    }
}

fn default_hostname() -> String {
    "gannet.localhost".to_string()
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SpoolConfig {
    /// Directory holding body segments and the sled queue index.
    #[serde(default = "default_spool_path")]
    pub path: PathBuf,
    /// A segment file is closed and a new one started past this size.
    #[serde(default = "default_segment_bytes")]
    pub max_segment_bytes: u64,
    /// At most this many bytes are gathered into one group commit (one fdatasync).
    #[serde(default = "default_commit_bytes")]
    pub max_commit_bytes: usize,
    /// Accepted-but-unsynced submissions that may wait for the writer; past this the listeners
    /// push back with 421/451 instead of buffering.
    #[serde(default = "default_commit_queue")]
    pub commit_queue: usize,
    /// New mail is refused (SMTP 452 4.3.1, HTTP 507) while the spool's file system has less
    /// free space than this, so what is queued can still be finished (state journal, index,
    /// send log) and free space again. 0 = only when a write fails for lack of space.
    #[serde(default = "default_min_free_bytes")]
    pub min_free_bytes: u64,
    /// Seal every new record (envelope, body, attributes) under its own AES-256-GCM key
    /// derived from `[storage] key_file` (crypto-shredded by an erasure). Off only to measure
    /// its cost: records written in clear cannot be erased before their segment is deleted.
    #[serde(default = "default_true")]
    pub encrypt: bool,
}

fn default_spool_path() -> PathBuf {
    PathBuf::from("./data")
}
fn default_segment_bytes() -> u64 {
    64 * 1024 * 1024
}
fn default_commit_bytes() -> usize {
    8 * 1024 * 1024
}
fn default_commit_queue() -> usize {
    4096
}
fn default_min_free_bytes() -> u64 {
    64 * 1024 * 1024
}

impl Default for SpoolConfig {
    fn default() -> Self {
        SpoolConfig {
            path: default_spool_path(),
            max_segment_bytes: default_segment_bytes(),
            max_commit_bytes: default_commit_bytes(),
            commit_queue: default_commit_queue(),
            min_free_bytes: default_min_free_bytes(),
            encrypt: true,
        }
    }
}

/// How a listener speaks TLS.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum TlsMode {
    /// Offer STARTTLS when a certificate is configured (the default).
    #[default]
    Starttls,
    /// TLS from the first byte (RFC 8314 implicit TLS, e.g. port 465).
    Implicit,
    /// Never offer TLS.
    None,
}

/// What a listener is for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum ListenerRole {
    /// Mail to relay (the default): relay rules, intake, the spool, delivery.
    #[default]
    Relay,
    /// The bounce domain's MX: accepts only VERP, FBL and unsubscribe-mailto recipients (550
    /// 5.1.1 otherwise), relays nothing; each mail is parsed and reported as events.
    Bounces,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ListenerConfig {
    #[serde(default = "default_listener_name")]
    pub name: String,
    /// `relay` (default) or `bounces`.
    #[serde(default)]
    pub role: ListenerRole,
    pub address: SocketAddr,
    #[serde(default)]
    pub tls: TlsMode,
    /// PEM certificate chain and key; required for `tls = "implicit"`, enables STARTTLS otherwise.
    pub tls_cert: Option<PathBuf>,
    pub tls_key: Option<PathBuf>,
    /// Client networks allowed to relay without authenticating.
    #[serde(default)]
    pub relay_from: Vec<IpNet>,
    /// Reject MAIL FROM until the client has authenticated.
    #[serde(default)]
    pub require_auth: bool,
    /// Traffic class for messages that name none (header, user default).
    pub default_class: Option<String>,
    #[serde(default = "default_max_message_size")]
    pub max_message_size: usize,
    /// Message bytes all sessions of this listener may hold together while reading content
    /// and waiting for the spool (memory in flight); past it a message gets 452 4.3.1.
    /// At least `max_message_size`; 0 = no listener-wide limit.
    #[serde(default = "default_max_inflight_bytes")]
    pub max_inflight_bytes: usize,
    #[serde(default = "default_max_recipients")]
    pub max_recipients: usize,
    /// Longest command line accepted (RFC 5321 §4.5.3.1.4 says 512; we allow more by default).
    #[serde(default = "default_max_line_length")]
    pub max_line_length: usize,
    #[serde(default = "default_max_sessions")]
    pub max_sessions: usize,
    #[serde(default = "default_max_sessions_per_ip")]
    pub max_sessions_per_ip: usize,
    #[serde(default = "default_command_timeout", with = "humantime_serde")]
    pub command_timeout: Duration,
    #[serde(default = "default_data_timeout", with = "humantime_serde")]
    pub data_timeout: Duration,
    /// After a shutdown starts, a session in the middle of a message gets this long to finish
    /// it; then it gets `421 4.3.2` and is closed (its message was not acknowledged, so the
    /// client sends it again later). Bounds how long SIGTERM can take.
    #[serde(default = "default_shutdown_grace", with = "humantime_serde")]
    pub shutdown_grace: Duration,
    /// Errors (bad commands) tolerated before the session is closed with 421.
    #[serde(default = "default_max_errors")]
    pub max_errors: usize,
    /// `max_sessions_per_ip` and AUTH failures count IPv6 clients by this prefix (a host
    /// usually holds a whole /64, so one address per session would be no limit); IPv4 clients
    /// count by address.
    #[serde(default = "default_ipv6_prefix_length")]
    pub ipv6_prefix_length: u8,
    /// Under stress (90% of `max_sessions` in use) a session waiting for a command gets this
    /// instead of `command_timeout`, so idle connections (slowloris) cannot hold every slot.
    #[serde(default = "default_stress_command_timeout", with = "humantime_serde")]
    pub stress_command_timeout: Duration,
    /// AUTH brute force: a failed AUTH is answered after this delay, doubled for each further
    /// failure of the same client network or user name, up to `auth_max_delay`.
    #[serde(default = "default_auth_fail_delay", with = "humantime_serde")]
    pub auth_fail_delay: Duration,
    #[serde(default = "default_auth_max_delay", with = "humantime_serde")]
    pub auth_max_delay: Duration,
    /// After this many failures (of one client network, or of one user name), AUTH is refused
    /// with `454 4.7.0` for `auth_lockout` without checking the password; 0 turns lockout off.
    #[serde(default = "default_auth_lockout_after")]
    pub auth_lockout_after: u32,
    #[serde(default = "default_auth_lockout", with = "humantime_serde")]
    pub auth_lockout: Duration,
    /// Sender authorisation: From domains this listener may send as (`example.com`, or
    /// `*.example.com` for its subdomains); absent means any. Outside it: 550 5.7.1.
    #[serde(default)]
    pub allowed_from_domains: Option<Vec<String>>,
    /// Traffic classes this listener may use; absent means any. Outside it: 550 5.7.1.
    #[serde(default)]
    pub allowed_classes: Option<Vec<String>>,
}

fn default_listener_name() -> String {
    "default".to_string()
}
fn default_max_inflight_bytes() -> usize {
    512 * 1024 * 1024
}
fn default_max_message_size() -> usize {
    25 * 1024 * 1024
}
fn default_max_recipients() -> usize {
    1000
}
fn default_max_line_length() -> usize {
    4096
}
fn default_max_sessions() -> usize {
    2000
}
fn default_max_sessions_per_ip() -> usize {
    200
}
fn default_command_timeout() -> Duration {
    Duration::from_secs(300)
}
fn default_data_timeout() -> Duration {
    Duration::from_secs(600)
}
fn default_shutdown_grace() -> Duration {
    Duration::from_secs(30)
}
fn default_max_errors() -> usize {
    10
}
fn default_ipv6_prefix_length() -> u8 {
    64
}
fn default_stress_command_timeout() -> Duration {
    Duration::from_secs(10)
}
fn default_auth_fail_delay() -> Duration {
    Duration::from_secs(1)
}
fn default_auth_max_delay() -> Duration {
    Duration::from_secs(30)
}
fn default_auth_lockout_after() -> u32 {
    10
}
fn default_auth_lockout() -> Duration {
    Duration::from_secs(15 * 60)
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HttpConfig {
    #[serde(default = "default_http_address")]
    pub address: SocketAddr,
    /// Host names the loopback-only admin API answers to besides `localhost` and the
    /// listener's address (a `Host:` check against DNS rebinding; only used while no
    /// `[[api_token]]` is configured).
    #[serde(default)]
    pub allowed_hosts: Vec<String>,
    /// PEM certificate chain and key: the API speaks HTTPS only (the same files and formats
    /// as `[[listener]] tls_cert` / `tls_key`).
    #[serde(default)]
    pub tls_cert: Option<PathBuf>,
    #[serde(default)]
    pub tls_key: Option<PathBuf>,
}

fn default_http_address() -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], 8025))
}

impl Default for HttpConfig {
    fn default() -> Self {
        HttpConfig {
            address: default_http_address(),
            allowed_hosts: Vec::new(),
            tls_cert: None,
            tls_key: None,
        }
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DnsConfig {
    /// `IP:PORT` of resolvers to ask; empty means the system resolver (/etc/resolv.conf).
    #[serde(default)]
    pub nameservers: Vec<SocketAddr>,
    /// Query timeout per attempt.
    #[serde(default = "default_dns_timeout", with = "humantime_serde")]
    pub timeout: Duration,
    /// How long a temporary DNS failure (SERVFAIL, timeout) is remembered before asking again.
    #[serde(default = "default_negative_ttl", with = "humantime_serde")]
    pub negative_ttl: Duration,
    /// A resolved destination (MX and address records) is reused for the records' TTL, but at
    /// least this long (a floor, so TTL 0 records do not mean a lookup per message)...
    #[serde(default = "default_min_ttl", with = "humantime_serde")]
    pub min_ttl: Duration,
    /// ...and at most this long (a ceiling, so a renumbered MX is noticed within it).
    #[serde(default = "default_max_ttl", with = "humantime_serde")]
    pub max_ttl: Duration,
    /// When re-resolving an expired destination fails temporarily (SERVFAIL, timeout), keep
    /// using the previous answer for at most this long past its expiry (logged); after that
    /// the domain's mail is deferred. Cached destinations are dropped after expiry + this.
    #[serde(default = "default_stale_grace", with = "humantime_serde")]
    pub stale_grace: Duration,
}

fn default_stale_grace() -> Duration {
    Duration::from_secs(3600)
}

fn default_min_ttl() -> Duration {
    Duration::from_secs(30)
}

fn default_max_ttl() -> Duration {
    Duration::from_secs(3600)
}

fn default_negative_ttl() -> Duration {
    Duration::from_secs(30)
}

fn default_dns_timeout() -> Duration {
    Duration::from_secs(5)
}

impl Default for DnsConfig {
    fn default() -> Self {
        DnsConfig {
            nameservers: Vec::new(),
            timeout: default_dns_timeout(),
            negative_ttl: default_negative_ttl(),
            min_ttl: default_min_ttl(),
            max_ttl: default_max_ttl(),
            stale_grace: default_stale_grace(),
        }
    }
}

/// A static next hop for a domain, like a Postfix transport map entry. Skips MX lookup.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RouteConfig {
    /// Recipient domain this route is for (exact match, case-insensitive), or `*` for all.
    pub domain: String,
    /// `host:port`; host may be an IP or a name resolved through A/AAAA.
    pub host: String,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DeliveryConfig {
    /// TCP port of MX hosts (25 in production; tests point it elsewhere).
    #[serde(default = "default_mx_port")]
    pub port: u16,
    /// Default connection cap per destination site when shaping says nothing more specific.
    #[serde(default = "default_max_conn")]
    pub max_connections_per_destination: usize,
    #[serde(default = "default_max_msgs_per_conn")]
    pub max_messages_per_connection: usize,
    #[serde(default = "default_max_rcpts_per_txn")]
    pub max_recipients_per_transaction: usize,
    /// An idle outbound connection is closed after this long without work.
    #[serde(default = "default_idle_timeout", with = "humantime_serde")]
    pub idle_timeout: Duration,
    /// A ready queue (per site and pool) with no waiting mail and no connection for this long
    /// is dropped, so domains mailed once do not hold memory forever.
    #[serde(default = "default_ready_queue_idle", with = "humantime_serde")]
    pub ready_queue_idle: Duration,
    #[serde(default = "default_connect_timeout", with = "humantime_serde")]
    pub connect_timeout: Duration,
    /// Timeout for each command/reply exchange (greeting, EHLO, MAIL, RCPT...).
    #[serde(default = "default_command_timeout_out", with = "humantime_serde")]
    pub command_timeout: Duration,
    /// Timeout for the final reply after the message body.
    #[serde(default = "default_data_timeout_out", with = "humantime_serde")]
    pub data_timeout: Duration,
    /// Delay before each retry; the last entry repeats.
    #[serde(default = "default_retry_schedule", with = "humantime_serde_vec")]
    pub retry_schedule: Vec<Duration>,
    /// Fraction of each retry delay added or removed at random (0.1 = ±10%).
    #[serde(default = "default_jitter")]
    pub retry_jitter: f64,
    /// A message still undelivered after this long is bounced.
    #[serde(default = "default_max_age", with = "humantime_serde")]
    pub max_age: Duration,
    /// Try STARTTLS when the server offers it (opportunistic, certificates not verified).
    #[serde(default = "default_true")]
    pub opportunistic_tls: bool,
    /// Never deliver in plaintext: a host without STARTTLS, or whose STARTTLS fails, is
    /// deferred. Off by default: a failed STARTTLS is retried in plaintext (Postfix `may`).
    #[serde(default)]
    pub require_tls: bool,
    /// An MX (not a `[[route]]`) resolving to any loopback address counts as Gannet itself: the
    /// domain is bounced 5.4.6 "loops back to myself". MX addresses equal to a listener's
    /// address always count. Turn off only where MX hosts live on loopback (tests).
    #[serde(default = "default_true")]
    pub loopback_is_self: bool,
}

fn default_mx_port() -> u16 {
    25
}
fn default_max_conn() -> usize {
    20
}
fn default_max_msgs_per_conn() -> usize {
    1000
}
fn default_max_rcpts_per_txn() -> usize {
    100
}
fn default_ready_queue_idle() -> Duration {
    Duration::from_secs(600)
}
fn default_idle_timeout() -> Duration {
    Duration::from_secs(5)
}
fn default_connect_timeout() -> Duration {
    Duration::from_secs(30)
}
fn default_command_timeout_out() -> Duration {
    Duration::from_secs(300)
}
fn default_data_timeout_out() -> Duration {
    Duration::from_secs(600)
}
fn default_retry_schedule() -> Vec<Duration> {
    [60, 300, 900, 1800, 3600]
        .iter()
        .map(|s| Duration::from_secs(*s))
        .collect()
}
fn default_jitter() -> f64 {
    0.1
}
fn default_max_age() -> Duration {
    Duration::from_secs(3 * 24 * 3600)
}
fn default_true() -> bool {
    true
}

impl Default for DeliveryConfig {
    fn default() -> Self {
        toml::from_str("").expect("empty delivery config takes defaults")
    }
}

/// A list of humantime durations (`["1m", "5m"]`).
mod humantime_serde_vec {
    use serde::{Deserialize, Deserializer};
    use std::time::Duration;

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<Duration>, D::Error> {
        let raw: Vec<String> = Vec::deserialize(d)?;
        raw.iter()
            .map(|s| {
                humantime::parse_duration(s).map_err(|e| {
                    serde::de::Error::custom(format!(
                        "invalid duration {s:?}: {e} (expected e.g. \"30s\", \"5m\", \"1h\")"
                    ))
                })
            })
            .collect()
    }
}

/// A named set of source addresses that outbound connections bind to.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PoolConfig {
    pub name: String,
    pub sources: Vec<SourceConfig>,
    /// Another pool whose sources may be used when all of this pool's are capped (warm-up).
    pub overflow: Option<String>,
    /// What to do with a message when every source of this pool has reached its warm-up cap
    /// for the destination's provider today: `"overflow"` (default) sends it through the
    /// `overflow` pool (or defers it when there is none), `"defer"` keeps it queued until a
    /// cap allows it (the next day at the latest).
    #[serde(default)]
    pub on_warmup_cap: WarmupCapAction,
}

/// `PoolConfig.on_warmup_cap`: where mail goes when warm-up caps are reached.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum WarmupCapAction {
    /// Use the pool's `overflow` pool; defer when it has none.
    #[default]
    Overflow,
    /// Keep the message queued.
    Defer,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SourceConfig {
    /// Local address to bind (`0.0.0.0` lets the kernel choose).
    pub ip: IpAddr,
    /// Name said in EHLO from this address.
    pub ehlo: String,
    #[serde(default = "default_weight")]
    pub weight: u32,
    /// Optional name for logs and metrics (defaults to the IP).
    pub name: Option<String>,
    /// Start of this source's warm-up (`YYYY-MM-DD`); its caps come from `warmup`.
    pub warmup_start: Option<String>,
    /// Name of a warm-up schedule in the shaping data.
    pub warmup: Option<String>,
}

fn default_weight() -> u32 {
    1
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ClassConfig {
    pub pool: String,
    /// Higher goes first when classes wait for the same site.
    #[serde(default)]
    pub priority: i32,
    /// Promotional mail: add `List-Unsubscribe` (https + mailto with a signed token),
    /// `List-Unsubscribe-Post` (RFC 8058 one-click) and `Feedback-ID` to each message.
    #[serde(default)]
    pub list_unsubscribe: bool,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SmtpUserConfig {
    pub name: String,
    /// PHC string (argon2id), e.g. made with `gannet hash-password`.
    pub password_hash: String,
    pub default_class: Option<String>,
    /// The tenant every message of this user belongs to (an `X-Gannet-Tenant` header is then
    /// ignored). Known from AUTH on, so `RCPT TO` also refuses addresses suppressed for this
    /// tenant, not only those suppressed for every tenant.
    #[serde(default)]
    pub tenant: Option<String>,
    /// Sender authorisation: From domains this user may send as (`example.com`, or
    /// `*.example.com` for its subdomains); absent means any. Outside it: 550 5.7.1.
    #[serde(default)]
    pub allowed_from_domains: Option<Vec<String>>,
    /// Traffic classes this user may use; absent means any. Outside it: 550 5.7.1.
    #[serde(default)]
    pub allowed_classes: Option<Vec<String>>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ApiTokenConfig {
    pub name: String,
    /// SHA-256 of the token, hex. The token itself never appears in config.
    pub hash: String,
    #[serde(default)]
    pub scopes: Vec<String>,
    /// Sender authorisation: From domains this token (HTTP injection) may send as (`example.com`, or
    /// `*.example.com` for its subdomains); absent means any. Outside it: 550 5.7.1.
    #[serde(default)]
    pub allowed_from_domains: Option<Vec<String>>,
    /// Traffic classes this token (HTTP injection) may use; absent means any. Outside it: 550 5.7.1.
    #[serde(default)]
    pub allowed_classes: Option<Vec<String>>,
    /// Requests per period this token may make (`"20/s"`, `"600/m"`, `"5000/h"`); absent means
    /// unlimited. Over it: 429 with `Retry-After`.
    #[serde(default)]
    pub rate: Option<RequestRate>,
    /// Requests that may come at once before `rate` paces them; default: the rate's count.
    #[serde(default)]
    pub burst: Option<u32>,
}

/// `N/s`, `N/m` or `N/h`: a request rate.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RequestRate {
    pub count: u32,
    pub per: Duration,
}

impl std::str::FromStr for RequestRate {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        let bad =
            || format!("invalid rate {s:?}: expected N/s, N/m or N/h with N ≥ 1, e.g. \"20/s\"");
        let (n, unit) = s.trim().split_once('/').ok_or_else(bad)?;
        let count: u32 = n.trim().parse().map_err(|_| bad())?;
        let per = match unit.trim() {
            "s" | "sec" | "second" => Duration::from_secs(1),
            "m" | "min" | "minute" => Duration::from_secs(60),
            "h" | "hour" => Duration::from_secs(3600),
            _ => return Err(bad()),
        };
        if count == 0 {
            return Err(bad());
        }
        Ok(RequestRate { count, per })
    }
}

impl<'de> Deserialize<'de> for RequestRate {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}

/// DKIM signing algorithms Gannet supports.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
pub enum DkimAlgorithm {
    #[serde(rename = "rsa-sha256")]
    RsaSha256,
    #[serde(rename = "ed25519-sha256")]
    Ed25519Sha256,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DkimConfig {
    pub domain: String,
    pub selector: String,
    pub algorithm: DkimAlgorithm,
    /// PEM private key (PKCS#8 or PKCS#1 for RSA).
    pub key: PathBuf,
    /// Header fields to sign; empty means the default set.
    #[serde(default)]
    pub headers: Vec<String>,
    /// `relaxed/relaxed` (default), `relaxed/simple`, `simple/simple`, `simple/relaxed`.
    pub canonicalization: Option<String>,
    /// Signature lifetime (`x=` tag), e.g. "7d".
    #[serde(default, with = "humantime_serde")]
    pub expire: Option<Duration>,
    /// RFC 3339 instants bounding when this key signs (rotation without restart).
    pub active_from: Option<String>,
    pub active_until: Option<String>,
}

/// What to do with mail whose From domain has no DKIM key, and how often to check the DNS of
/// the signing domains.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DkimPolicyConfig {
    /// Sign with this domain's keys instead (third-party signature).
    pub fallback_domain: Option<String>,
    /// Reject at injection with 550 5.7.x when no key and no fallback applies.
    #[serde(default)]
    pub reject_unsigned: bool,
    /// How often `serve` re-checks the DNS of every `[[dkim]]` domain (SPF for the pool
    /// addresses, published keys, DMARC, PTR) and updates `gannet_domain_check_ok`;
    /// "0s" turns the periodic checks off.
    #[serde(default = "default_check_interval", with = "humantime_serde")]
    pub check_interval: Duration,
}

fn default_check_interval() -> Duration {
    Duration::from_secs(3600)
}

impl Default for DkimPolicyConfig {
    fn default() -> Self {
        DkimPolicyConfig {
            fallback_domain: None,
            reject_unsigned: false,
            check_interval: default_check_interval(),
        }
    }
}

/// Where the shaping data lives.
#[derive(Debug, Clone, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct ShapingRef {
    /// Shaping data file (limits, provider presets, backoff rules, warm-up schedules; see
    /// `config/shaping.toml`). None means the shipped `config/shaping.toml`, embedded in the binary.
    pub file: Option<PathBuf>,
}

/// The one-click unsubscribe token key and URL (`suppression::token`).
#[derive(Debug, Clone, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct UnsubscribeConfig {
    /// 32-byte key file (64 hex characters or 32 raw bytes). Created with mode 0600 on first
    /// start when absent. Default: `unsubscribe.key` in the spool directory.
    pub key_file: Option<PathBuf>,
    /// Derive the key from this secret (HKDF-SHA256) instead of a key file, so every node of a
    /// cluster that shares the secret accepts the same tokens.
    pub secret: Option<String>,
    /// Base of the https unsubscribe URL: `{base_url}/u/{token}`. Default:
    /// `https://{hostname}`.
    pub base_url: Option<String>,
}

/// The send log (`sendlog/`): every event, queryable, kept `retention_days`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SendlogConfig {
    /// Record events at all. Off: no send log, the queries answer 503.
    #[serde(default = "default_true")]
    pub enabled: bool,
    /// SQLite database file; None = `sendlog.sqlite` in the spool directory.
    pub path: Option<PathBuf>,
    /// Days an event is kept; whole days older than this are pruned. 0 = keep forever.
    #[serde(default = "default_retention_days")]
    pub retention_days: u32,
    /// Most events appended to the send log's journal with one fdatasync.
    #[serde(default = "default_sendlog_batch")]
    pub batch: usize,
    /// Events the send log may fall behind before intake waits (lossless back-pressure): in
    /// its journal's append, and again in SQLite behind the journal.
    #[serde(default = "default_sendlog_bound")]
    pub bound: usize,
    /// How long an event may wait for others to share its journal append (fewer fdatasyncs,
    /// but finished messages wait for it too, so more are delivered again after a crash).
    /// 0 = append whatever is waiting at once; default 10 ms, as `[outbox] commit_interval`.
    #[serde(default = "default_sendlog_commit_interval", with = "humantime_serde")]
    pub commit_interval: Duration,
    /// How often the journal's new events are moved into SQLite, in one transaction (a
    /// query first waits for the events published before it, so this only sets how large
    /// and how rare the SQLite commits are).
    #[serde(default = "default_sendlog_ingest_interval", with = "humantime_serde")]
    pub ingest_interval: Duration,
    /// Most events in one SQLite transaction; a journal backlog this large is moved at once.
    #[serde(default = "default_sendlog_ingest_batch")]
    pub ingest_batch: usize,
    /// What the log is kept for, quoted in access exports (GDPR Art. 15).
    #[serde(default = "default_purposes")]
    pub purposes: Vec<String>,
    /// Ed25519 key (32-byte seed, hex) that signs the hash chain's checkpoints; created with
    /// mode 0600 on first start when absent. Keep it (or its public half, printed by
    /// `gannet logs verify`) apart from the data directory.
    #[serde(default = "default_checkpoint_key")]
    pub checkpoint_key: PathBuf,
    /// How often the head of the hash chain is signed (at the first commit after this much
    /// time); 0 = at every commit.
    #[serde(default = "default_checkpoint_interval", with = "humantime_serde")]
    pub checkpoint_interval: Duration,
}

fn default_checkpoint_key() -> PathBuf {
    PathBuf::from("gannet-checkpoint.key")
}
fn default_checkpoint_interval() -> Duration {
    Duration::from_secs(60)
}

fn default_retention_days() -> u32 {
    365
}
fn default_sendlog_batch() -> usize {
    2000
}
fn default_sendlog_bound() -> usize {
    100_000
}
fn default_sendlog_commit_interval() -> Duration {
    // A delivered message's spool state waits for its event's journal append, and what is
    // delivered in that window is delivered again after a crash. With the journal (one
    // fdatasync, no SQLite on that path), the crash loop (15 kills, debug build, 2026-12-05)
    // gave 11.6 duplicates per kill at 0 s, 13.5 at 5 ms, 16.9 at 10 ms (target <= 20),
    // while at 0 s the journal's fdatasyncs (a few events each) cost ~8% of Gannet's CPU in
    // `benches/e2e.sh` and at 10 ms under 1%.
    Duration::from_millis(10)
}
fn default_sendlog_ingest_interval() -> Duration {
    Duration::from_millis(500)
}
fn default_sendlog_ingest_batch() -> usize {
    10_000
}
fn default_purposes() -> Vec<String> {
    vec![
        "delivery of mail the sender asked us to send".to_string(),
        "proof of delivery and consent disputes".to_string(),
        "suppression of addresses that bounced, complained or unsubscribed".to_string(),
    ]
}

impl Default for SendlogConfig {
    fn default() -> Self {
        SendlogConfig {
            enabled: true,
            path: None,
            retention_days: default_retention_days(),
            batch: default_sendlog_batch(),
            bound: default_sendlog_bound(),
            commit_interval: default_sendlog_commit_interval(),
            ingest_interval: default_sendlog_ingest_interval(),
            ingest_batch: default_sendlog_ingest_batch(),
            purposes: default_purposes(),
            checkpoint_key: default_checkpoint_key(),
            checkpoint_interval: default_checkpoint_interval(),
        }
    }
}

/// Encryption at rest.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StorageConfig {
    /// Master key (32 random bytes, hex). Created with mode 0600 on first start when absent;
    /// keep it apart from the data directory: without it nothing personal there is readable.
    #[serde(default = "default_key_file")]
    pub key_file: PathBuf,
}

fn default_key_file() -> PathBuf {
    PathBuf::from("gannet.key")
}

impl Default for StorageConfig {
    fn default() -> Self {
        StorageConfig {
            key_file: default_key_file(),
        }
    }
}

/// HTTP injection (`POST /api/v1/messages`) limits.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct InjectConfig {
    /// Most recipients in one request (413 above it).
    #[serde(default = "default_inject_recipients")]
    pub max_recipients: usize,
    /// Largest request body in bytes (413 above it).
    #[serde(default = "default_inject_request_bytes")]
    pub max_request_bytes: usize,
    /// Largest single template in bytes (413 above it).
    #[serde(default = "default_inject_template_bytes")]
    pub max_template_bytes: usize,
    /// Largest rendered message in bytes (that recipient is refused above it).
    #[serde(default = "default_inject_rendered_bytes")]
    pub max_rendered_bytes: usize,
    /// Messages of one request handed to intake at once (they share group commits).
    #[serde(default = "default_inject_concurrency")]
    pub concurrency: usize,
}

fn default_inject_recipients() -> usize {
    10_000
}
fn default_inject_request_bytes() -> usize {
    32 * 1024 * 1024
}
fn default_inject_template_bytes() -> usize {
    256 * 1024
}
fn default_inject_rendered_bytes() -> usize {
    2 * 1024 * 1024
}
fn default_inject_concurrency() -> usize {
    512
}

impl Default for InjectConfig {
    fn default() -> Self {
        InjectConfig {
            max_recipients: default_inject_recipients(),
            max_request_bytes: default_inject_request_bytes(),
            max_template_bytes: default_inject_template_bytes(),
            max_rendered_bytes: default_inject_rendered_bytes(),
            concurrency: default_inject_concurrency(),
        }
    }
}

/// Bounce processing (`[bounce]`).
#[derive(Debug, Clone, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct BounceConfig {
    /// Bounce rules file (categories and reply rules; see `config/bounce_rules.toml`), relative
    /// to the config file. None means the shipped rules, embedded in the binary.
    pub rules_file: Option<PathBuf>,
    /// VERP bounce domain: when set, each delivery's envelope sender is
    /// `b-<token>@<domain>` (one transaction per recipient). Its MX should point at a
    /// `role = "bounces"` listener. None: the original sender is used.
    pub domain: Option<String>,
    /// 32-byte VERP HMAC key file (64 hex characters or 32 raw bytes), created 0600 when
    /// absent. Default: `bounce.key` in the spool directory.
    pub key_file: Option<PathBuf>,
    /// Derive the VERP key from this secret (HKDF-SHA256) instead of a key file (cluster nodes
    /// sharing it accept each other's tokens).
    pub secret: Option<String>,
    /// Feedback-loop addresses the bounces listener accepts ARF reports for.
    #[serde(default)]
    pub fbl_addresses: Vec<String>,
    /// Keep every DSN owed in the spool instead of sending it (during an incident that fails
    /// recipients by mistake). The messages stay in the spool; set it back to false and
    /// restart to send the DSNs.
    #[serde(default)]
    pub hold_dsns: bool,
}

/// The suppression list (`[suppression]`): where it lives and the policy that fills it.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SuppressionConfig {
    /// false: no list at all (nothing is checked, nothing recorded, the suppression API
    /// answers 503). For senders that keep the list elsewhere, and for measuring what the
    /// checks cost.
    #[serde(default = "default_true")]
    pub enabled: bool,
    /// Directory of the embedded store; None = `suppression` in the spool directory.
    pub path: Option<PathBuf>,
    /// What SMTP intake does with a suppressed recipient: `reject` (550 5.7.1 at RCPT) or
    /// `drop` (accept it, never send, publish `suppressed`).
    #[serde(default)]
    pub smtp_action: SuppressedAction,
    /// Soft bounces of one address that suppress it, counted over `soft_bounce_days`.
    /// 0 = soft bounces never suppress.
    #[serde(default = "default_soft_bounce_limit")]
    pub soft_bounce_limit: u32,
    #[serde(default = "default_soft_bounce_days")]
    pub soft_bounce_days: u32,
    /// Categories of soft bounce that count (about the address, not about us).
    #[serde(default = "default_soft_bounce_categories")]
    pub soft_bounce_categories: Vec<String>,
    /// Days a soft-bounce suppression lasts (0 = until removed).
    #[serde(default = "default_soft_bounce_expiry_days")]
    pub soft_bounce_expiry_days: u32,
    /// Events the policy subscriber may fall behind before intake waits.
    #[serde(default = "default_suppression_bound")]
    pub bound: usize,
}

/// SMTP intake's answer to a suppressed recipient.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum SuppressedAction {
    /// `550 5.7.1` at RCPT.
    #[default]
    Reject,
    /// Accepted, never delivered (a `suppressed` event says so).
    Drop,
}

fn default_soft_bounce_limit() -> u32 {
    3
}
fn default_soft_bounce_days() -> u32 {
    7
}
fn default_soft_bounce_categories() -> Vec<String> {
    vec!["mailbox-full".to_string(), "expired".to_string()]
}
fn default_soft_bounce_expiry_days() -> u32 {
    30
}
fn default_suppression_bound() -> usize {
    100_000
}

impl Default for SuppressionConfig {
    fn default() -> Self {
        SuppressionConfig {
            enabled: true,
            path: None,
            smtp_action: SuppressedAction::default(),
            soft_bounce_limit: default_soft_bounce_limit(),
            soft_bounce_days: default_soft_bounce_days(),
            soft_bounce_categories: default_soft_bounce_categories(),
            soft_bounce_expiry_days: default_soft_bounce_expiry_days(),
            bound: default_suppression_bound(),
        }
    }
}

/// Metrics (`[metrics]`): how many label values the bounded series may take.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MetricsConfig {
    /// Campaigns with their own `gannet_campaign_recipients_total` series; the rest are
    /// counted as `campaign="other"`. 0 = none.
    #[serde(default = "default_top_campaigns")]
    pub top_campaigns: usize,
    /// A campaign without outcomes for this long gives its slot to the next one.
    #[serde(default = "default_campaign_idle", with = "humantime_serde")]
    pub campaign_idle: Duration,
}

fn default_top_campaigns() -> usize {
    20
}
fn default_campaign_idle() -> Duration {
    Duration::from_secs(3600)
}

impl Default for MetricsConfig {
    fn default() -> Self {
        MetricsConfig {
            top_campaigns: default_top_campaigns(),
            campaign_idle: default_campaign_idle(),
        }
    }
}

/// The anomaly detector (`[anomaly]`): windows, thresholds, who is told, and the breaker.
/// Defaults: complaints 0.1% warn / 0.3% critical (Gmail and Yahoo bulk-sender rules), hard
/// bounces 2% / 5%, deferrals 3x the key's baseline, unsubscribes 1% / 2%.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AnomalyConfig {
    #[serde(default = "default_true")]
    pub enabled: bool,
    /// Sliding window the rates are computed over.
    #[serde(default = "default_anomaly_window", with = "humantime_serde")]
    pub window: Duration,
    /// How often the windows are evaluated.
    #[serde(default = "default_anomaly_interval", with = "humantime_serde")]
    pub interval: Duration,
    /// Weight of the newest window in the EWMA baseline (0..1).
    #[serde(default = "default_ewma_alpha")]
    pub ewma_alpha: f64,
    #[serde(default = "default_hard_bounce_warn")]
    pub hard_bounce_warn: f64,
    #[serde(default = "default_hard_bounce_critical")]
    pub hard_bounce_critical: f64,
    /// Final outcomes (delivered + bounced) a key needs in the window before its hard-bounce
    /// rate counts.
    #[serde(default = "default_hard_bounce_min")]
    pub hard_bounce_min_sample: u64,
    #[serde(default = "default_complaint_warn")]
    pub complaint_warn: f64,
    #[serde(default = "default_complaint_critical")]
    pub complaint_critical: f64,
    /// Deliveries a key needs in the window before its complaint rate counts.
    #[serde(default = "default_complaint_min")]
    pub complaint_min_sample: u64,
    /// Deferral rate over this many times the key's baseline is a warning...
    #[serde(default = "default_deferral_factor")]
    pub deferral_factor: f64,
    /// ...when the rate is also at least this (a baseline near 0 makes any deferral "3x").
    #[serde(default = "default_deferral_floor")]
    pub deferral_min_rate: f64,
    /// Attempts a key needs in the window before its deferral rate counts.
    #[serde(default = "default_deferral_min")]
    pub deferral_min_sample: u64,
    #[serde(default = "default_unsubscribe_warn")]
    pub unsubscribe_warn: f64,
    #[serde(default = "default_unsubscribe_critical")]
    pub unsubscribe_critical: f64,
    #[serde(default = "default_complaint_min")]
    pub unsubscribe_min_sample: u64,
    /// Keys (tenant, campaign, pool, provider) tracked at most; events of further keys are
    /// not evaluated (counted in `gannet_anomaly_keys_dropped_total`).
    #[serde(default = "default_anomaly_max_keys")]
    pub max_keys: usize,
    /// Addresses told of every anomaly raised, by mail sent through Gannet itself.
    #[serde(default)]
    pub admins: Vec<String>,
    /// Envelope and header sender of those mails; None = `gannet@` + `hostname`.
    #[serde(default)]
    pub alert_from: Option<String>,
    /// Class the alert mails go out in; None = `transactional` when that class exists, else
    /// the fallback class.
    #[serde(default)]
    pub alert_class: Option<String>,
    /// Circuit breaker: a critical anomaly of a campaign suspends that campaign (tenant +
    /// campaign) until an operator resumes it.
    #[serde(default)]
    pub breaker: bool,
}

fn default_anomaly_window() -> Duration {
    Duration::from_secs(600)
}
fn default_anomaly_interval() -> Duration {
    Duration::from_secs(5)
}
fn default_ewma_alpha() -> f64 {
    0.2
}
fn default_hard_bounce_warn() -> f64 {
    0.02
}
fn default_hard_bounce_critical() -> f64 {
    0.05
}
fn default_hard_bounce_min() -> u64 {
    100
}
fn default_complaint_warn() -> f64 {
    0.001
}
fn default_complaint_critical() -> f64 {
    0.003
}
fn default_complaint_min() -> u64 {
    1000
}
fn default_deferral_factor() -> f64 {
    3.0
}
fn default_deferral_floor() -> f64 {
    0.05
}
fn default_deferral_min() -> u64 {
    100
}
fn default_unsubscribe_warn() -> f64 {
    0.01
}
fn default_unsubscribe_critical() -> f64 {
    0.02
}
fn default_anomaly_max_keys() -> usize {
    10_000
}

impl Default for AnomalyConfig {
    fn default() -> Self {
        AnomalyConfig {
            enabled: true,
            window: default_anomaly_window(),
            interval: default_anomaly_interval(),
            ewma_alpha: default_ewma_alpha(),
            hard_bounce_warn: default_hard_bounce_warn(),
            hard_bounce_critical: default_hard_bounce_critical(),
            hard_bounce_min_sample: default_hard_bounce_min(),
            complaint_warn: default_complaint_warn(),
            complaint_critical: default_complaint_critical(),
            complaint_min_sample: default_complaint_min(),
            deferral_factor: default_deferral_factor(),
            deferral_min_rate: default_deferral_floor(),
            deferral_min_sample: default_deferral_min(),
            unsubscribe_warn: default_unsubscribe_warn(),
            unsubscribe_critical: default_unsubscribe_critical(),
            unsubscribe_min_sample: default_complaint_min(),
            max_keys: default_anomaly_max_keys(),
            admins: Vec::new(),
            alert_from: None,
            alert_class: None,
            breaker: false,
        }
    }
}

/// What a console user may do (see `http::console::auth::Right`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum ConsoleRole {
    /// Reads the queue, the suppression list and the send log; changes nothing.
    Viewer,
    /// Send-log search and export, data-subject requests (access, four-eyes erasure),
    /// suppressions.
    Compliance,
    /// Queue control (suspend/resume), suppressions, send-log search.
    Operator,
    /// Everything, and the audit trail.
    Admin,
}

impl ConsoleRole {
    pub fn as_str(self) -> &'static str {
        match self {
            ConsoleRole::Viewer => "viewer",
            ConsoleRole::Compliance => "compliance",
            ConsoleRole::Operator => "operator",
            ConsoleRole::Admin => "admin",
        }
    }
}

/// `[[console_user]]`: one person who signs in to the web console.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ConsoleUserConfig {
    pub name: String,
    /// PHC string (argon2id), made with `gannet hash-password`.
    pub password_hash: String,
    pub role: ConsoleRole,
    /// Base32 TOTP secret (RFC 6238, SHA-1, 6 digits, 30 s), made with `gannet console enrol
    /// NAME`. Required for every role but `viewer`.
    #[serde(default)]
    pub totp_secret: Option<String>,
}

/// `[console]`: sessions and sign-in throttling of the web console.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ConsoleConfig {
    /// A session cookie stops working this long after sign-in.
    #[serde(default = "default_console_session_ttl", with = "humantime_serde")]
    pub session_ttl: Duration,
    /// The answer to the first failed sign-in of a user waits this long; each further failure
    /// in a row doubles it (at most 32 times this).
    #[serde(default = "default_console_failure_delay", with = "humantime_serde")]
    pub failure_delay: Duration,
    /// After this many failed sign-ins in a row, the user is locked out (the next attempt is
    /// refused even with the right password)...
    #[serde(default = "default_console_lockout_after")]
    pub lockout_after: u32,
    /// ...for this long.
    #[serde(default = "default_console_lockout", with = "humantime_serde")]
    pub lockout: Duration,
}

fn default_console_session_ttl() -> Duration {
    Duration::from_secs(8 * 3600)
}
fn default_console_failure_delay() -> Duration {
    Duration::from_secs(1)
}
fn default_console_lockout_after() -> u32 {
    5
}
fn default_console_lockout() -> Duration {
    Duration::from_secs(15 * 60)
}

impl Default for ConsoleConfig {
    fn default() -> Self {
        ConsoleConfig {
            session_ttl: default_console_session_ttl(),
            failure_delay: default_console_failure_delay(),
            lockout_after: default_console_lockout_after(),
            lockout: default_console_lockout(),
        }
    }
}
