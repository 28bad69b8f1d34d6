//! `gannet inject FILE.json`: post a personalised batch to the running instance's
//! `POST /api/v1/messages` and print each recipient's result as a table (or the JSON answer).
//! Only reads the file, sends it byte for byte (so a retry with the same `--idempotency-key`
//! matches the first request), and prints; the work is the HTTP API's.

use std::io::Read;
use std::path::PathBuf;

use anyhow::{Context, Result, bail};
use gannet::config::Config;
use gannet::http::inject::InjectResponse;

use crate::ConfigArg;

#[derive(clap::Args)]
pub struct InjectArgs {
    /// The batch (JSON, the body of POST /api/v1/messages); `-` reads standard input
    file: PathBuf,
    /// Idempotency-Key: a retry with the same key and file gets the first answer and sends
    /// nothing again (keys are kept 24 hours)
    #[arg(long, value_name = "KEY")]
    idempotency_key: Option<String>,
    /// API token (default: the GANNET_API_TOKEN environment variable, which keeps it out of
    /// the process list)
    #[arg(long, value_name = "TOKEN")]
    token: Option<String>,
    /// Print the answer as JSON instead of a table
    #[arg(long)]
    json: bool,
    #[command(flatten)]
    config: ConfigArg,
}

/// Largest answer read (10,000 recipients answer in ~2 MB).
const MAX_ANSWER: u64 = 256 * 1024 * 1024;

pub fn run(args: InjectArgs, load_config: fn(&ConfigArg) -> Result<Config>) -> Result<()> {
    let config = load_config(&args.config)?;
    let body = if args.file.as_os_str() == "-" {
        let mut b = Vec::new();
        std::io::stdin()
            .read_to_end(&mut b)
            .context("cannot read the batch from standard input")?;
        b
    } else {
        std::fs::read(&args.file)
            .with_context(|| format!("cannot read the batch file {}", args.file.display()))?
    };
    let url = format!("http://{}/api/v1/messages", config.http.address);
    let agent = ureq::Agent::new_with_defaults();
    let mut req = agent
        .post(&url)
        .config()
        .http_status_as_error(false)
        .build()
        .header("User-Agent", gannet::http::CLI_USER_AGENT)
        .header("Content-Type", "application/json");
    let token = args
        .token
        .clone()
        .or_else(|| std::env::var("GANNET_API_TOKEN").ok());
    if let Some(t) = &token {
        req = req.header("Authorization", &format!("Bearer {t}"));
    }
    if let Some(k) = &args.idempotency_key {
        req = req.header("Idempotency-Key", k);
    }
    let mut resp = req.send(&body[..]).with_context(|| {
        format!("cannot reach gannet's HTTP API at {url}: is `gannet serve` running with this config? (set GANNET_API_TOKEN if [[api_token]] is configured)")
    })?;
    let status = resp.status();
    let replayed = resp.headers().contains_key("idempotent-replayed");
    let text = resp
        .body_mut()
        .with_config()
        .limit(MAX_ANSWER)
        .read_to_string()
        .with_context(|| format!("{url}: cannot read the answer (HTTP {status})"))?;
    if !status.is_success() {
        let v: serde_json::Value = serde_json::from_str(&text).unwrap_or_default();
        let field = v["error"]["field"]
            .as_str()
            .map(|f| format!(" (field {f})"))
            .unwrap_or_default();
        let retry = resp
            .headers()
            .get("retry-after")
            .and_then(|v| v.to_str().ok())
            .map(|s| format!("; retry after {s} s"))
            .unwrap_or_default();
        bail!(
            "the batch was refused: HTTP {status}: {}{field}{retry}",
            v["error"]["message"].as_str().unwrap_or(text.trim())
        );
    }
    let answer: InjectResponse = serde_json::from_str(&text).with_context(|| {
        format!("{url} answered HTTP {status} with something other than a batch answer")
    })?;
    if args.json {
        println!("{text}");
    } else {
        print!("{}", table(&answer));
        println!(
            "{} queued, {} refused{}",
            answer.accepted,
            answer.rejected,
            if replayed {
                " (the answer to an earlier request with this Idempotency-Key; nothing was sent again)"
            } else {
                ""
            }
        );
    }
    if answer.rejected > 0 {
        bail!(
            "{} of {} recipients were refused (see the ERROR column)",
            answer.rejected,
            answer.results.len()
        );
    }
    Ok(())
}

/// EMAIL, STATUS, QUEUE ID, MESSAGE-ID or ERROR (code: message), aligned.
fn table(a: &InjectResponse) -> String {
    let rows: Vec<[String; 4]> = a
        .results
        .iter()
        .map(|r| match &r.error {
            None => [
                r.email.clone(),
                r.status.clone(),
                r.queue_id.clone().unwrap_or_default(),
                r.message_id.clone().unwrap_or_default(),
            ],
            Some(e) => [
                r.email.clone(),
                r.status.clone(),
                String::new(),
                format!("{}: {}", e.code, e.message),
            ],
        })
        .collect();
    let head = [
        "EMAIL".to_string(),
        "STATUS".to_string(),
        "QUEUE ID".to_string(),
        "MESSAGE-ID / ERROR".to_string(),
    ];
    let mut w = [0usize; 3];
    for r in rows.iter().chain(std::iter::once(&head)) {
        for (i, c) in r.iter().take(3).enumerate() {
            w[i] = w[i].max(c.chars().count());
        }
    }
    let mut out = String::new();
    for r in std::iter::once(&head).chain(rows.iter()) {
        out.push_str(&format!(
            "{:<w0$}  {:<w1$}  {:<w2$}  {}\n",
            r[0],
            r[1],
            r[2],
            r[3].replace(['\r', '\n'], " "),
            w0 = w[0],
            w1 = w[1],
            w2 = w[2]
        ));
    }
    out
}
