//! The `gannet` command: parses the command line, loads config, and calls the library.

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::{Context, Result, bail};
use clap::{Parser, Subcommand};
use gannet::config::Config;

mod cli_bounce;
mod cli_inject;
mod cli_suppress;

#[derive(Parser)]
#[command(
    name = "gannet",
    version,
    about = "High-throughput SMTP delivery gateway"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(clap::Args, Clone)]
pub(crate) struct ConfigArg {
    /// Configuration file (default: the embedded config/gannet.toml)
    #[arg(long, short = 'c', value_name = "FILE")]
    pub(crate) config: Option<PathBuf>,
}

#[derive(Subcommand)]
enum Command {
    /// Run the gateway: SMTP listeners, HTTP API, queue and delivery
    Serve(ConfigArg),
    /// Post a personalised batch (JSON) to the running instance and print each recipient's
    /// result (exit status 1 when any recipient was refused)
    Inject(cli_inject::InjectArgs),
    /// Inspect and control the queue of a running instance (through its HTTP API)
    Queue {
        #[command(subcommand)]
        action: QueueAction,
    },
    /// Search the send log of a running instance (through its HTTP API; every query is recorded)
    Logs {
        #[command(subcommand)]
        action: LogsAction,
    },
    /// GDPR requests about one person (through the running instance's HTTP API)
    Gdpr {
        #[command(subcommand)]
        action: GdprAction,
    },
    /// Check a configuration file and exit
    CheckConfig(ConfigArg),
    /// Hash a password (read from standard input) for [[smtp_user]] password_hash
    HashPassword,
    /// DKIM key management
    Dkim {
        #[command(subcommand)]
        action: DkimAction,
    },
    /// Check a sending domain's DNS: SPF for every pool address, DKIM keys, DMARC, alignment, PTR
    CheckDomain {
        /// The From domain to check
        domain: String,
        /// Return-Path (MAIL FROM) domain, when it differs from the From domain
        #[arg(long)]
        return_path: Option<String>,
        /// Print the report as JSON
        #[arg(long)]
        json: bool,
        #[command(flatten)]
        config: ConfigArg,
    },
    /// Bounce tools: classify a reply or a bounce mail with the configured rules
    Bounce {
        #[command(subcommand)]
        action: cli_bounce::BounceAction,
    },
    /// The suppression list of a running instance: add, remove, list, import, export (through
    /// its HTTP API)
    Suppress {
        #[command(subcommand)]
        action: cli_suppress::SuppressAction,
    },
    /// The web console: enrol a user's authenticator app
    Console {
        #[command(subcommand)]
        action: ConsoleAction,
    },
    /// Write a self-signed development certificate and key (PEM) for STARTTLS
    DevCert {
        /// Directory to write cert.pem and key.pem into
        #[arg(long, default_value = "certs/dev")]
        out: PathBuf,
        /// Host names the certificate is for
        #[arg(long = "name", default_value = "gannet.localhost")]
        names: Vec<String>,
    },
}

#[derive(Subcommand)]
enum ConsoleAction {
    /// Make a new TOTP secret for NAME: prints the otpauth URI (and its QR code) for the
    /// authenticator app, and the totp_secret line for [[console_user]]
    Enrol {
        /// The console user's name (as in [[console_user]] name)
        name: String,
        /// Do not draw the QR code
        #[arg(long)]
        no_qr: bool,
    },
}

/// Which queued mail a queue command is about; every given field must match.
#[derive(clap::Args, Clone, Default)]
struct FilterArgs {
    /// Recipient domain
    #[arg(long)]
    domain: Option<String>,
    /// Site: an MX host suffix such as google.com, or a full site key
    #[arg(long)]
    site: Option<String>,
    #[arg(long)]
    tenant: Option<String>,
    #[arg(long)]
    campaign: Option<String>,
    /// Traffic class
    #[arg(long)]
    class: Option<String>,
    /// IP pool
    #[arg(long)]
    pool: Option<String>,
}

impl FilterArgs {
    fn to_json(&self) -> serde_json::Value {
        let mut m = serde_json::Map::new();
        for (k, v) in [
            ("domain", &self.domain),
            ("site", &self.site),
            ("tenant", &self.tenant),
            ("campaign", &self.campaign),
            ("class", &self.class),
            ("pool", &self.pool),
        ] {
            if let Some(v) = v {
                m.insert(k.to_string(), serde_json::Value::String(v.clone()));
            }
        }
        serde_json::Value::Object(m)
    }

    fn to_query(&self) -> String {
        let v = self.to_json();
        let pairs: Vec<String> = v
            .as_object()
            .into_iter()
            .flatten()
            .map(|(k, v)| format!("{k}={}", urlencode(v.as_str().unwrap_or(""))))
            .collect();
        if pairs.is_empty() {
            String::new()
        } else {
            format!("?{}", pairs.join("&"))
        }
    }
}

pub(crate) fn urlencode(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}

#[derive(Subcommand)]
enum GdprAction {
    /// Erase a person (Art. 17): they are suppressed by keyed hash (never mailed again), their
    /// queued mail is dropped, their send-log rows become unreadable (key destroyed); the
    /// erasure is recorded without the address
    Erase {
        address: String,
        #[command(flatten)]
        config: ConfigArg,
    },
    /// Everything held about a person (Art. 15), as JSON
    Export {
        address: String,
        #[command(flatten)]
        config: ConfigArg,
    },
}

#[derive(Subcommand)]
enum LogsAction {
    /// Events matching the filters, oldest first (a table; --json or --csv for programs)
    Query {
        #[command(flatten)]
        config: ConfigArg,
        #[arg(long)]
        recipient: Option<String>,
        /// A Message-ID or a queue id
        #[arg(long)]
        message_id: Option<String>,
        #[arg(long)]
        campaign: Option<String>,
        #[arg(long)]
        tenant: Option<String>,
        /// Event type: received, delivered, deferred, bounced, expired, dsn, ...
        #[arg(long = "type")]
        kind: Option<String>,
        /// From this time on: RFC 3339, a date (2026-12-03) or Unix seconds
        #[arg(long)]
        since: Option<String>,
        /// Before this time
        #[arg(long)]
        until: Option<String>,
        /// Most events printed (table and --json; --csv exports everything)
        #[arg(long, default_value_t = 1000)]
        limit: usize,
        /// Print JSON (`{"events": [...], "next": cursor}`)
        #[arg(long, conflicts_with = "csv")]
        json: bool,
        /// Print CSV (every matching event, streamed)
        #[arg(long)]
        csv: bool,
    },
    /// The story of one message: every recipient, attempt, IP and reply
    Message {
        /// A Message-ID or a queue id
        id: String,
        #[command(flatten)]
        config: ConfigArg,
    },
    /// Check the send log's hash chain from the first record to the last and every signed
    /// checkpoint (reads the database directly; works with gannet stopped). Names the first
    /// broken record; exit status 1 then
    Verify {
        /// The checkpoint key's public half (64 hex digits) to check signatures against;
        /// default: derived from `[sendlog] checkpoint_key`
        #[arg(long)]
        public_key: Option<String>,
        #[command(flatten)]
        config: ConfigArg,
    },
    /// Statistics of a campaign by variant and provider
    Stats {
        campaign: String,
        #[command(flatten)]
        config: ConfigArg,
    },
}

#[derive(Subcommand)]
enum DkimAction {
    /// Write a new private key (mode 0600) and print the DNS TXT record to publish
    Keygen {
        #[arg(long)]
        domain: String,
        #[arg(long)]
        selector: String,
        /// rsa or ed25519
        #[arg(long, default_value = "rsa")]
        algorithm: String,
        /// RSA key size
        #[arg(long, default_value_t = 2048)]
        bits: usize,
        /// Where to write the private key (PEM)
        #[arg(long)]
        out: PathBuf,
    },
}

#[derive(Subcommand)]
enum QueueAction {
    /// Destinations with recipient counts and oldest age
    List {
        #[command(flatten)]
        config: ConfigArg,
        #[command(flatten)]
        filter: FilterArgs,
        /// Print JSON instead of a table
        #[arg(long)]
        json: bool,
    },
    /// Retry every deferred message now
    Flush {
        #[command(flatten)]
        config: ConfigArg,
    },
    /// Hold matching mail out of delivery until resumed (survives restarts)
    Suspend {
        #[command(flatten)]
        config: ConfigArg,
        #[command(flatten)]
        filter: FilterArgs,
    },
    /// Lift the suspension with exactly these filters (all suspensions when none is given)
    Resume {
        #[command(flatten)]
        config: ConfigArg,
        #[command(flatten)]
        filter: FilterArgs,
    },
    /// Delete matching queued mail without DSNs (at least one filter is required)
    Purge {
        #[command(flatten)]
        config: ConfigArg,
        #[command(flatten)]
        filter: FilterArgs,
    },
}

fn load_config(arg: &ConfigArg) -> Result<Config> {
    match &arg.config {
        Some(p) => Ok(Config::load(p)?),
        None => Ok(Config::embedded_default()),
    }
}

fn init_logging() {
    use tracing_subscriber::EnvFilter;
    let filter = EnvFilter::try_from_env("GANNET_LOG").unwrap_or_else(|_| EnvFilter::new("info"));
    tracing_subscriber::fmt()
        .json()
        .flatten_event(true)
        .with_current_span(false)
        .with_env_filter(filter)
        .with_writer(std::io::stdout)
        .init();
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match run(cli) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("gannet: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn run(cli: Cli) -> Result<()> {
    match cli.command {
        Command::Serve(arg) => {
            let config = load_config(&arg)?;
            init_logging();
            let _ = rustls::crypto::aws_lc_rs::default_provider().install_default();
            let rt = tokio::runtime::Builder::new_multi_thread()
                .enable_all()
                .build()
                .context("cannot start the async runtime")?;
            rt.block_on(async {
                let token = tokio_util::sync::CancellationToken::new();
                gannet::serve::cancel_on_signals(token.clone());
                gannet::serve::run(config, token, None).await
            })?;
            Ok(())
        }
        Command::CheckConfig(arg) => {
            let config = load_config(&arg)?;
            // Everything `serve` refuses at start, short of binding sockets.
            gannet::auth::DkimSigner::from_config(&config)?;
            let shaping = gannet::shaping::Shaping::from_config(&config)?;
            gannet::shaping::Warmup::new(&shaping, &config.pools)?;
            if config.default_class.is_none()
                && config.classes.len() > 1
                && let Some(class) = config.fallback_class()
            {
                println!(
                    "note: mail that names no class goes to class {class:?} (the alphabetically \
                     first); set default_class at the top of the config to choose"
                );
            }
            println!("configuration is valid");
            Ok(())
        }
        Command::Queue { action } => queue_command(action),
        Command::Inject(args) => cli_inject::run(args, load_config),
        Command::Logs { action } => logs_command(action),
        Command::Gdpr { action } => match action {
            GdprAction::Erase { address, config } => {
                let config = load_config(&config)?;
                let v = api(
                    &config,
                    "POST",
                    "/api/v1/erasures",
                    Some(serde_json::json!({ "address": address })),
                )?;
                println!(
                    "erased: subject {}, {} send-log rows can no longer be read, {} queued recipients dropped, {} spool records shredded, {} suppression entries replaced by the keyed-hash entry, {} outbox events shredded, {} idempotent answers shredded",
                    v["erased"]["subject"].as_str().unwrap_or("?"),
                    v["erased"]["send_log_rows"],
                    v["erased"]["queued_recipients_dropped"],
                    v["erased"]["spool_records_shredded"],
                    v["erased"]["suppression_entries_removed"],
                    v["erased"]["outbox_events_shredded"],
                    v["erased"]["idempotent_answers_shredded"]
                );
                Ok(())
            }
            GdprAction::Export { address, config } => {
                let config = load_config(&config)?;
                let v = api(
                    &config,
                    "GET",
                    &format!("/api/v1/subjects/{}", urlencode(&address)),
                    None,
                )?;
                println!("{}", serde_json::to_string_pretty(&v)?);
                Ok(())
            }
        },
        Command::HashPassword => {
            let mut line = String::new();
            std::io::stdin()
                .read_line(&mut line)
                .context("cannot read the password from standard input")?;
            let pw = line.trim_end_matches(['\r', '\n']);
            if pw.is_empty() {
                bail!("empty password: type it on standard input");
            }
            println!("{}", gannet::smtp::hash_password(pw)?);
            Ok(())
        }
        Command::DevCert { out, names } => dev_cert(&out, &names),
        Command::Console {
            action: ConsoleAction::Enrol { name, no_qr },
        } => {
            let (secret, uri) =
                gannet::http::console::auth::enrol(&name).map_err(anyhow::Error::msg)?;
            println!("otpauth URI (add it to the authenticator app):\n{uri}\n");
            if !no_qr {
                // The URI as a QR code in the terminal (two rows per character).
                let code = qrcode::QrCode::new(uri.as_bytes())
                    .context("cannot draw the otpauth URI as a QR code")?;
                let art = code
                    .render::<qrcode::render::unicode::Dense1x2>()
                    .quiet_zone(true)
                    .build();
                println!("{art}\n");
            }
            println!("In the [[console_user]] entry of {name}:\ntotp_secret = \"{secret}\"");
            Ok(())
        }
        Command::Bounce { action } => cli_bounce::run(action, load_config),
        Command::Suppress { action } => cli_suppress::run(action, load_config),
        Command::Dkim {
            action:
                DkimAction::Keygen {
                    domain,
                    selector,
                    algorithm,
                    bits,
                    out,
                },
        } => {
            let algorithm: gannet::auth::KeyAlgorithm =
                algorithm.parse().map_err(|e: String| anyhow::anyhow!(e))?;
            let record = gannet::auth::keygen(&domain, &selector, algorithm, bits, &out)?;
            eprintln!("wrote {}; publish this record:", out.display());
            println!("{record}");
            Ok(())
        }
        Command::CheckDomain {
            domain,
            return_path,
            json,
            config,
        } => {
            let config = load_config(&config)?;
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .context("cannot start the async runtime")?;
            let report = rt.block_on(gannet::auth::check_domain(
                &config,
                &domain,
                return_path.as_deref(),
            ))?;
            if json {
                println!("{}", serde_json::to_string_pretty(&report)?);
            } else {
                print!("{}", report.render_human());
            }
            if !report.all_ok() {
                bail!("{domain}: some checks failed (see above)");
            }
            Ok(())
        }
    }
}

fn dev_cert(out: &Path, names: &[String]) -> Result<()> {
    let (cert, key) = gannet::smtp::generate_dev_cert(names)?;
    std::fs::create_dir_all(out).with_context(|| format!("cannot create {}", out.display()))?;
    let cert_path = out.join("cert.pem");
    let key_path = out.join("key.pem");
    std::fs::write(&cert_path, cert)
        .with_context(|| format!("cannot write {}", cert_path.display()))?;
    {
        use std::io::Write;
        use std::os::unix::fs::OpenOptionsExt;
        let mut f = std::fs::OpenOptions::new()
            .create(true)
            .write(true)
            .truncate(true)
            .mode(0o600)
            .open(&key_path)
            .with_context(|| format!("cannot write {}", key_path.display()))?;
        f.write_all(key.as_bytes())?;
    }
    println!(
        "wrote {} and {} (self-signed, for development only)",
        cert_path.display(),
        key_path.display()
    );
    Ok(())
}

/// Talk to the running instance's HTTP API (address from the same config file).
fn api(
    config: &Config,
    method: &str,
    path: &str,
    body: Option<serde_json::Value>,
) -> Result<serde_json::Value> {
    let url = format!("http://{}{}", config.http.address, path);
    let agent = ureq::Agent::new_with_defaults();
    let token = std::env::var("GANNET_API_TOKEN").ok();
    let resp = match method {
        "POST" => {
            let mut req = agent
                .post(&url)
                .config()
                .http_status_as_error(false)
                .build();
            req = req.header("User-Agent", gannet::http::CLI_USER_AGENT);
            if let Some(t) = &token {
                req = req.header("Authorization", &format!("Bearer {t}"));
            }
            match body {
                Some(b) => req.send_json(b),
                None => req.send_empty(),
            }
        }
        _ => {
            let mut req = agent.get(&url).config().http_status_as_error(false).build();
            req = req.header("User-Agent", gannet::http::CLI_USER_AGENT);
            if let Some(t) = &token {
                req = req.header("Authorization", &format!("Bearer {t}"));
            }
            req.call()
        }
    };
    let mut resp = resp.with_context(|| {
        format!("cannot reach gannet's HTTP API at {url}: is `gannet serve` running with this config? (set GANNET_API_TOKEN if [[api_token]] is configured)")
    })?;
    let status = resp.status();
    let v: serde_json::Value = resp
        .body_mut()
        .read_json()
        .with_context(|| format!("{url} did not answer JSON (HTTP {status})"))?;
    if !status.is_success() {
        bail!(
            "{url}: HTTP {status}: {}",
            v["error"]["message"].as_str().unwrap_or("no error message")
        );
    }
    Ok(v)
}

/// GET `path` from the running instance and return the body as text (CSV exports).
fn api_text(config: &Config, path: &str) -> Result<String> {
    let url = format!("http://{}{}", config.http.address, path);
    let agent = ureq::Agent::new_with_defaults();
    let mut req = agent.get(&url).config().http_status_as_error(false).build();
    if let Ok(t) = std::env::var("GANNET_API_TOKEN") {
        req = req.header("Authorization", &format!("Bearer {t}"));
    }
    let mut resp = req.call().with_context(|| {
        format!("cannot reach gannet's HTTP API at {url}: is `gannet serve` running with this config? (set GANNET_API_TOKEN if [[api_token]] is configured)")
    })?;
    let status = resp.status();
    let text = resp
        .body_mut()
        .with_config()
        .limit(u64::MAX)
        .read_to_string()
        .with_context(|| format!("{url}: cannot read the answer (HTTP {status})"))?;
    if !status.is_success() {
        let msg = serde_json::from_str::<serde_json::Value>(&text)
            .ok()
            .and_then(|v| v["error"]["message"].as_str().map(String::from))
            .unwrap_or(text);
        bail!("{url}: HTTP {status}: {msg}");
    }
    Ok(text)
}

fn logs_command(action: LogsAction) -> Result<()> {
    match action {
        LogsAction::Query {
            config,
            recipient,
            message_id,
            campaign,
            tenant,
            kind,
            since,
            until,
            limit,
            json,
            csv,
        } => {
            let config = load_config(&config)?;
            let mut q: Vec<String> = [
                ("recipient", &recipient),
                ("message_id", &message_id),
                ("campaign", &campaign),
                ("tenant", &tenant),
                ("type", &kind),
                ("since", &since),
                ("until", &until),
            ]
            .iter()
            .filter_map(|(k, v)| v.as_ref().map(|v| format!("{k}={}", urlencode(v))))
            .collect();
            if csv {
                q.push("format=csv".into());
                print!(
                    "{}",
                    api_text(&config, &format!("/api/v1/events?{}", q.join("&")))?
                );
                return Ok(());
            }
            // Page through until `limit` events are gathered or the log ends.
            let mut events: Vec<serde_json::Value> = Vec::new();
            let mut cursor: Option<String> = None;
            let mut next = serde_json::Value::Null;
            while events.len() < limit {
                let mut page = q.clone();
                page.push(format!("limit={}", (limit - events.len()).min(1000)));
                if let Some(c) = &cursor {
                    page.push(format!("cursor={c}"));
                }
                let v = api(
                    &config,
                    "GET",
                    &format!("/api/v1/events?{}", page.join("&")),
                    None,
                )?;
                events.extend(v["events"].as_array().cloned().unwrap_or_default());
                next = v["next"].clone();
                match next.as_str() {
                    Some(c) => cursor = Some(c.to_string()),
                    None => break,
                }
            }
            if json {
                println!(
                    "{}",
                    serde_json::to_string_pretty(
                        &serde_json::json!({"events": events, "next": next})
                    )?
                );
            } else {
                print!("{}", gannet::sendlog::render::table(&events));
                if !next.is_null() {
                    eprintln!("(more events: raise --limit, or use --csv to export everything)");
                }
            }
            Ok(())
        }
        LogsAction::Verify { public_key, config } => {
            let config = load_config(&config)?;
            let mut reader = gannet::sendlog::open_reader(&config).with_context(|| {
                format!(
                    "cannot open the send log {}",
                    gannet::sendlog::describe(&config)
                )
            })?;
            let public: [u8; 32] = match public_key {
                Some(hex_key) => hex::decode(hex_key.trim())
                    .ok()
                    .and_then(|b| b.try_into().ok())
                    .context("--public-key must be 64 hexadecimal digits (the 32-byte Ed25519 public key)")?,
                None => {
                    let path = config.resolve_path(&config.sendlog.checkpoint_key);
                    gannet::sendlog::keys::CheckpointKey::load(&path)
                        .with_context(|| {
                            "cannot check the signed checkpoints without the checkpoint key; give its public half with --public-key".to_string()
                        })?
                        .public()
                }
            };
            let report = reader.verify(Some(&public))?;
            match report.first_broken {
                None => {
                    println!(
                        "send log verified: {} records, hash chain intact, {} signed checkpoints valid (public key {})",
                        report.rows,
                        report.checkpoints,
                        hex::encode(public)
                    );
                    Ok(())
                }
                Some(b) => bail!(
                    "send log record seq {} (event id {}) is broken: {}; {} records were checked up to it",
                    b.seq,
                    b.id,
                    b.reason,
                    report.rows
                ),
            }
        }
        LogsAction::Message { id, config } => {
            let config = load_config(&config)?;
            let v = api(
                &config,
                "GET",
                &format!("/api/v1/messages/{}", urlencode(&id)),
                None,
            )?;
            println!("{}", serde_json::to_string_pretty(&v)?);
            Ok(())
        }
        LogsAction::Stats { campaign, config } => {
            let config = load_config(&config)?;
            let v = api(
                &config,
                "GET",
                &format!("/api/v1/campaigns/{}/stats", urlencode(&campaign)),
                None,
            )?;
            println!("{}", serde_json::to_string_pretty(&v)?);
            Ok(())
        }
    }
}

fn queue_command(action: QueueAction) -> Result<()> {
    match action {
        QueueAction::List {
            config,
            filter,
            json,
        } => {
            let config = load_config(&config)?;
            let path = format!("/api/v1/queues{}", filter.to_query());
            let v = api(&config, "GET", &path, None)?;
            if json {
                println!("{}", serde_json::to_string_pretty(&v)?);
                return Ok(());
            }
            println!(
                "{:<32} {:<14} {:<10} {:<12} {:<14} {:<10} {:>10} {:>10}",
                "DOMAIN", "CLASS", "POOL", "TENANT", "CAMPAIGN", "STATE", "RCPTS", "OLDEST"
            );
            for q in v["queues"].as_array().into_iter().flatten() {
                println!(
                    "{:<32} {:<14} {:<10} {:<12} {:<14} {:<10} {:>10} {:>9}s",
                    q["domain"].as_str().unwrap_or(""),
                    q["class"].as_str().unwrap_or(""),
                    q["pool"].as_str().unwrap_or(""),
                    q["tenant"].as_str().unwrap_or(""),
                    q["campaign"].as_str().unwrap_or(""),
                    q["state"].as_str().unwrap_or(""),
                    q["recipients"].as_u64().unwrap_or(0),
                    q["oldest_age_secs"].as_u64().unwrap_or(0),
                );
            }
            println!(
                "total queued recipients: {}",
                v["queued_recipients"].as_u64().unwrap_or(0)
            );
            for d in v["damaged"].as_array().into_iter().flatten() {
                println!(
                    "DAMAGED spool record: segment {} offset {} ({} bytes, {}); copy in {}; {} other message(s) of the segment still queued (delete the segment by hand once 0)",
                    d["segment"].as_str().unwrap_or("?"),
                    d["offset"].as_u64().unwrap_or(0),
                    d["length"].as_u64().unwrap_or(0),
                    d["error"].as_str().unwrap_or(""),
                    d["quarantine"].as_str().unwrap_or("(copy failed)"),
                    d["segment_live_messages"].as_u64().unwrap_or(0),
                );
            }
            Ok(())
        }
        QueueAction::Flush { config } => {
            let config = load_config(&config)?;
            let v = api(&config, "POST", "/api/v1/queues/flush", None)?;
            println!(
                "released {} deferred deliveries for an immediate retry",
                v["flushed"].as_u64().unwrap_or(0)
            );
            Ok(())
        }
        QueueAction::Suspend { config, filter } => {
            let config = load_config(&config)?;
            let v = api(
                &config,
                "POST",
                "/api/v1/queues/suspend",
                Some(filter.to_json()),
            )?;
            println!(
                "suspension {} active for {}; {} recipients held now",
                v["suspension"]["id"],
                v["suspension"]["filter"],
                v["held"].as_u64().unwrap_or(0)
            );
            Ok(())
        }
        QueueAction::Resume { config, filter } => {
            let config = load_config(&config)?;
            let v = api(
                &config,
                "POST",
                "/api/v1/queues/resume",
                Some(filter.to_json()),
            )?;
            println!(
                "removed {} suspension(s); {} recipients released for delivery",
                v["removed"].as_u64().unwrap_or(0),
                v["released"].as_u64().unwrap_or(0)
            );
            Ok(())
        }
        QueueAction::Purge { config, filter } => {
            let config = load_config(&config)?;
            let v = api(
                &config,
                "POST",
                "/api/v1/queues/purge",
                Some(filter.to_json()),
            )?;
            println!("purged {} recipients", v["purged"].as_u64().unwrap_or(0));
            Ok(())
        }
    }
}
