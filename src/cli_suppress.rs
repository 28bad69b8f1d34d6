//! `gannet suppress add|remove|list|import|export`: the suppression list of a running instance,
//! through its HTTP API (`/api/v1/suppressions`; the list itself is locked by `gannet serve`).
//! Only parses arguments, moves bytes and prints; imports and exports are streamed, so a file
//! of ten million lines never sits in memory. Set `GANNET_API_TOKEN` when `[[api_token]]` is
//! configured (scope `suppression`).

use std::io::{Read, Write};
use std::path::PathBuf;

use anyhow::{Context, Result, bail};
use gannet::config::Config;
use serde_json::Value;

use crate::ConfigArg;

#[derive(clap::Args, Clone, Default)]
pub struct ListArgs {
    /// Address prefix, e.g. `alice` or `alice@example.`
    #[arg(long)]
    prefix: Option<String>,
    /// Domain of the address
    #[arg(long)]
    domain: Option<String>,
    /// Reason (hard-bounce, complaint, unsubscribe, manual, ...)
    #[arg(long)]
    reason: Option<String>,
    /// Tenant scope (`*` for entries that apply to every tenant)
    #[arg(long)]
    tenant: Option<String>,
}

impl ListArgs {
    fn query(&self) -> Vec<String> {
        [
            ("prefix", &self.prefix),
            ("domain", &self.domain),
            ("reason", &self.reason),
            ("tenant", &self.tenant),
        ]
        .iter()
        .filter_map(|(k, v)| v.as_ref().map(|v| format!("{k}={}", crate::urlencode(v))))
        .collect()
    }
}

#[derive(clap::Subcommand)]
pub enum SuppressAction {
    /// Suppress an address (default: every tenant, every stream, reason `manual`)
    Add {
        address: String,
        /// Only for this tenant (default `*`: every tenant)
        #[arg(long)]
        tenant: Option<String>,
        /// Only for this stream: class:NAME, list:NAME or campaign:NAME (default: every stream)
        #[arg(long)]
        stream: Option<String>,
        #[arg(long)]
        reason: Option<String>,
        /// Unix seconds when the entry lapses (default: never)
        #[arg(long)]
        expires: Option<u64>,
        #[command(flatten)]
        config: ConfigArg,
    },
    /// Lift one suppression (the entry with this address, tenant and stream)
    Remove {
        address: String,
        #[arg(long, default_value = "*")]
        tenant: String,
        #[arg(long, default_value = "")]
        stream: String,
        #[command(flatten)]
        config: ConfigArg,
    },
    /// List entries (paged through the API)
    List {
        #[command(flatten)]
        filter: ListArgs,
        /// At most this many entries
        #[arg(long, default_value_t = 100)]
        limit: usize,
        /// Print JSON lines instead of a table
        #[arg(long)]
        json: bool,
        #[command(flatten)]
        config: ConfigArg,
    },
    /// Import entries from a CSV or JSONL file (`-` reads stdin). Every good line is imported;
    /// bad lines are listed with their line numbers and the command fails
    Import {
        file: PathBuf,
        /// csv or jsonl (default: from the file name's extension)
        #[arg(long)]
        format: Option<String>,
        #[command(flatten)]
        config: ConfigArg,
    },
    /// Export entries as CSV (with a header line) or JSONL, to a file or stdout
    Export {
        /// csv or jsonl (default: from --output's extension, else jsonl)
        #[arg(long)]
        format: Option<String>,
        /// File to write (default: stdout)
        #[arg(long, short = 'o')]
        output: Option<PathBuf>,
        #[command(flatten)]
        filter: ListArgs,
        #[command(flatten)]
        config: ConfigArg,
    },
}

pub fn run(action: SuppressAction, load_config: fn(&ConfigArg) -> Result<Config>) -> Result<()> {
    match action {
        SuppressAction::Add {
            address,
            tenant,
            stream,
            reason,
            expires,
            config,
        } => {
            let config = load_config(&config)?;
            let mut body = serde_json::json!({ "address": address });
            for (k, v) in [("tenant", tenant), ("stream", stream), ("reason", reason)] {
                if let Some(v) = v {
                    body[k] = Value::String(v);
                }
            }
            if let Some(e) = expires {
                body["expires"] = e.into();
            }
            let v = call(&config, "POST", "/api/v1/suppressions", Some(body))?;
            let e = &v["entry"];
            println!(
                "{} {} (tenant {}, stream {}, reason {})",
                if v["created"] == true {
                    "suppressed"
                } else {
                    "updated"
                },
                text(&e["address"]),
                text(&e["tenant"]),
                or_every(&e["stream"]),
                text(&e["reason"])
            );
            Ok(())
        }
        SuppressAction::Remove {
            address,
            tenant,
            stream,
            config,
        } => {
            let config = load_config(&config)?;
            let path = format!(
                "/api/v1/suppressions/{}?tenant={}&stream={}",
                crate::urlencode(&address),
                crate::urlencode(&tenant),
                crate::urlencode(&stream)
            );
            let v = call(&config, "DELETE", &path, None)?;
            let e = &v["removed"];
            println!(
                "removed {} (tenant {}, stream {}, reason {})",
                text(&e["address"]),
                text(&e["tenant"]),
                or_every(&e["stream"]),
                text(&e["reason"])
            );
            Ok(())
        }
        SuppressAction::List {
            filter,
            limit,
            json,
            config,
        } => {
            let config = load_config(&config)?;
            let mut entries: Vec<Value> = Vec::new();
            let mut cursor: Option<String> = None;
            let mut more = false;
            while entries.len() < limit {
                let mut q = filter.query();
                q.push(format!("limit={}", (limit - entries.len()).min(1000)));
                if let Some(c) = &cursor {
                    q.push(format!("cursor={c}"));
                }
                let v = call(
                    &config,
                    "GET",
                    &format!("/api/v1/suppressions?{}", q.join("&")),
                    None,
                )?;
                entries.extend(v["entries"].as_array().cloned().unwrap_or_default());
                match v["next_cursor"].as_str() {
                    Some(c) => {
                        cursor = Some(c.to_string());
                        more = true;
                    }
                    None => {
                        more = false;
                        break;
                    }
                }
            }
            let mut out = std::io::stdout().lock();
            if json {
                for e in &entries {
                    writeln!(out, "{e}")?;
                }
            } else {
                writeln!(
                    out,
                    "{:<40} {:<10} {:<24} {:<12} CREATED",
                    "ADDRESS", "TENANT", "STREAM", "REASON"
                )?;
                for e in &entries {
                    writeln!(
                        out,
                        "{:<40} {:<10} {:<24} {:<12} {}",
                        text(&e["address"]),
                        text(&e["tenant"]),
                        or_every(&e["stream"]),
                        text(&e["reason"]),
                        e["created"]
                    )?;
                }
            }
            if more {
                eprintln!("(more entries: raise --limit, or use `gannet suppress export`)");
            }
            Ok(())
        }
        SuppressAction::Import {
            file,
            format,
            config,
        } => {
            let config = load_config(&config)?;
            let format = match format {
                Some(f) => f,
                None => format_from_name(&file).with_context(|| {
                    format!(
                        "cannot tell the format of {} from its name: add --format csv or --format jsonl",
                        file.display()
                    )
                })?,
            };
            let reader: Box<dyn Read> = if file.as_os_str() == "-" {
                Box::new(std::io::stdin())
            } else {
                Box::new(
                    std::fs::File::open(&file)
                        .with_context(|| format!("cannot open {}", file.display()))?,
                )
            };
            let path = format!(
                "/api/v1/suppressions/import?format={}",
                crate::urlencode(&format)
            );
            let url = url(&config, &path);
            let resp = request(ureq::Agent::new_with_defaults().post(&url))
                .send(ureq::SendBody::from_owned_reader(reader));
            let (status, v) = answer(&url, resp)?;
            let summary = format!(
                "{} lines read, {} entries imported ({} new), {} lines rejected",
                v["lines"], v["imported"], v["created"], v["rejected"]
            );
            if status == 200 {
                println!("{summary}");
                return Ok(());
            }
            if v["lines"].is_null() {
                bail!("{url}: HTTP {status}: {}", error_message(&v));
            }
            println!("{summary}");
            for e in v["errors"].as_array().into_iter().flatten() {
                eprintln!("line {}: {}", e["line"], text(&e["message"]));
            }
            if v["errors_truncated"] == true {
                eprintln!("(only the first bad lines are listed)");
            }
            bail!(
                "{} of {} lines were not imported; fix them and import those lines again (the others are in)",
                v["rejected"],
                v["lines"]
            )
        }
        SuppressAction::Export {
            format,
            output,
            filter,
            config,
        } => {
            let config = load_config(&config)?;
            let format = format
                .or_else(|| output.as_deref().and_then(format_from_name))
                .unwrap_or_else(|| "jsonl".to_string());
            let mut q = filter.query();
            q.push(format!("format={}", crate::urlencode(&format)));
            let url = url(
                &config,
                &format!("/api/v1/suppressions/export?{}", q.join("&")),
            );
            let resp = request(ureq::Agent::new_with_defaults().get(&url))
                .call()
                .with_context(|| unreachable_hint(&url))?;
            let status = resp.status();
            let mut body = resp.into_body();
            if !status.is_success() {
                let v: Value = body.read_json().unwrap_or(Value::Null);
                bail!("{url}: HTTP {status}: {}", error_message(&v));
            }
            let mut reader = body.with_config().limit(u64::MAX).reader();
            let n = match &output {
                Some(p) => {
                    let mut f = std::fs::File::create(p)
                        .with_context(|| format!("cannot create {}", p.display()))?;
                    let n = std::io::copy(&mut reader, &mut f)
                        .with_context(|| format!("export from {url} broke off"))?;
                    f.sync_all()
                        .with_context(|| format!("cannot write {}", p.display()))?;
                    n
                }
                None => std::io::copy(&mut reader, &mut std::io::stdout().lock())
                    .with_context(|| format!("export from {url} broke off"))?,
            };
            if let Some(p) = &output {
                eprintln!("wrote {n} bytes to {}", p.display());
            }
            Ok(())
        }
    }
}

fn format_from_name(p: &std::path::Path) -> Option<String> {
    match p.extension()?.to_str()?.to_ascii_lowercase().as_str() {
        "csv" => Some("csv".into()),
        "jsonl" | "ndjson" => Some("jsonl".into()),
        _ => None,
    }
}

fn text(v: &Value) -> String {
    v.as_str()
        .map(str::to_string)
        .unwrap_or_else(|| v.to_string())
}

fn or_every(v: &Value) -> String {
    match v.as_str() {
        Some("") | None => "(every)".to_string(),
        Some(s) => s.to_string(),
    }
}

fn error_message(v: &Value) -> String {
    v["error"]["message"]
        .as_str()
        .unwrap_or("no error message")
        .to_string()
}

fn url(config: &Config, path: &str) -> String {
    format!("http://{}{}", config.http.address, path)
}

fn unreachable_hint(url: &str) -> String {
    format!(
        "cannot reach gannet's HTTP API at {url}: is `gannet serve` running with this config? (set GANNET_API_TOKEN if [[api_token]] is configured)"
    )
}

/// The CLI's User-Agent and, when set, the bearer token.
fn request<B>(req: ureq::RequestBuilder<B>) -> ureq::RequestBuilder<B> {
    let mut req = req
        .config()
        .http_status_as_error(false)
        .build()
        .header("User-Agent", gannet::http::CLI_USER_AGENT);
    if let Ok(t) = std::env::var("GANNET_API_TOKEN") {
        req = req.header("Authorization", &format!("Bearer {t}"));
    }
    req
}

/// Status and JSON body of an answer.
fn answer(
    url: &str,
    resp: Result<ureq::http::Response<ureq::Body>, ureq::Error>,
) -> Result<(u16, Value)> {
    let mut resp = resp.with_context(|| unreachable_hint(url))?;
    let status = resp.status().as_u16();
    let v: Value = resp
        .body_mut()
        .read_json()
        .with_context(|| format!("{url} did not answer JSON (HTTP {status})"))?;
    Ok((status, v))
}

/// A JSON call; an error answer becomes an error naming the API's message.
fn call(config: &Config, method: &str, path: &str, body: Option<Value>) -> Result<Value> {
    let url = url(config, path);
    let agent = ureq::Agent::new_with_defaults();
    let resp = match (method, body) {
        ("POST", Some(b)) => request(agent.post(&url)).send_json(b),
        ("DELETE", _) => request(agent.delete(&url)).call(),
        _ => request(agent.get(&url)).call(),
    };
    let (status, v) = answer(&url, resp)?;
    if !(200..300).contains(&status) {
        bail!("{url}: HTTP {status}: {}", error_message(&v));
    }
    Ok(v)
}
