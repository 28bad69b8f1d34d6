//! `gannet bounce ...`: classify an SMTP reply, or returned mails (DSN, ARF, auto-reply), with
//! the configured bounce rules, offline. Only parses arguments, reads the files and prints; the
//! work is `gannet::bounce` (the same code as `POST /api/v1/bounces/classify`).

use std::io::Read;

use anyhow::{Context, Result, bail};
use gannet::bounce::Classifier;
use gannet::bounce::report::{Analysis, ReportRules};
use gannet::bounce::verp::VerpKey;
use gannet::config::Config;
use gannet::shaping::Shaping;

use crate::ConfigArg;

#[derive(clap::Subcommand)]
pub enum BounceAction {
    /// Classify an SMTP reply (--reply): category, hard/soft and the rule (file:line) that
    /// matched; or returned mails (FILE.eml ..., `-` for stdin): DSN, ARF, auto-reply or not a
    /// bounce, with each recipient's status and category
    Classify {
        /// Returned mails to classify (`-` reads one from stdin); with --json one JSON object
        /// per line, in the order given
        files: Vec<std::path::PathBuf>,
        /// The reply, e.g. "550 5.1.1 no such user"
        #[arg(long)]
        reply: Option<String>,
        /// MX host that answered: picks the provider whose rules apply first
        #[arg(long)]
        mx: Option<String>,
        /// Print JSON instead of text
        #[arg(long)]
        json: bool,
        #[command(flatten)]
        config: ConfigArg,
    },
    /// Decode a VERP return path (`b-<token>@<[bounce] domain>`) with this instance's bounce
    /// key: the queue id and recipient index it names, or an error if it is forged or altered
    Verp {
        /// The address, e.g. b-aebagbafaydqqcikbmga2dqpcaireeyu@bounces.example.com
        address: String,
        /// Print JSON instead of text
        #[arg(long)]
        json: bool,
        #[command(flatten)]
        config: ConfigArg,
    },
}

pub fn run(action: BounceAction, load_config: fn(&ConfigArg) -> Result<Config>) -> Result<()> {
    match action {
        BounceAction::Verp {
            address,
            json,
            config,
        } => {
            let config = load_config(&config)?;
            let Some(key) = VerpKey::from_config(&config)? else {
                bail!("VERP is off: set [bounce] domain (and key_file or secret) in the config");
            };
            let Some(t) = key.decode(&address) else {
                bail!(
                    "{address} is not a VERP address of this instance (forged, altered, another domain than {}, or another key)",
                    key.domain()
                );
            };
            let queue_id = t.key.queue_id();
            if json {
                println!(
                    "{}",
                    serde_json::json!({"queue_id": queue_id, "recipient_index": t.rcpt})
                );
            } else {
                println!("queue id:        {queue_id}");
                println!("recipient index: {}", t.rcpt);
            }
            Ok(())
        }
        BounceAction::Classify {
            files,
            reply,
            mx,
            json,
            config,
        } => {
            let config = load_config(&config)?;
            let classifier = Classifier::from_config(&config)?;
            let shaping = Shaping::from_config(&config)?;
            let Some(reply) = reply else {
                if files.is_empty() {
                    bail!(
                        "nothing to classify: give --reply \"550 5.1.1 ...\", or files (FILE.eml ..., - for stdin)"
                    );
                }
                return classify_files(&files, classifier, shaping, json);
            };
            let provider = mx
                .as_ref()
                .and_then(|h| classifier.provider_for(Some(&shaping), "", std::slice::from_ref(h)));
            let c = classifier.classify_line(&reply, provider.as_deref());
            let rule = c.rule.as_ref().map(|r| r.to_string());
            if json {
                let v = serde_json::json!({
                    "category": &*c.category,
                    "hard": c.hard,
                    "rule": rule,
                    "provider": provider,
                });
                println!("{v}");
            } else {
                println!("category: {}", c.category);
                println!(
                    "hard:     {}",
                    if c.hard {
                        "yes (address suppressed)"
                    } else {
                        "no (soft)"
                    }
                );
                println!(
                    "rule:     {}",
                    rule.as_deref().unwrap_or("none (no rule matched)")
                );
                println!("provider: {}", provider.as_deref().unwrap_or("none"));
            }
            Ok(())
        }
    }
}

fn classify_files(
    files: &[std::path::PathBuf],
    classifier: Classifier,
    shaping: Shaping,
    json: bool,
) -> Result<()> {
    let rules = ReportRules {
        classifier: std::sync::Arc::new(classifier),
        shaping: Some(std::sync::Arc::new(shaping)),
    };
    for path in files {
        let raw = if path.as_os_str() == "-" {
            let mut buf = Vec::new();
            std::io::stdin()
                .read_to_end(&mut buf)
                .context("cannot read the message from stdin")?;
            buf
        } else {
            std::fs::read(path)
                .with_context(|| format!("cannot read {} (give an .eml file)", path.display()))?
        };
        let analysis = rules.analyse(&raw);
        if json {
            println!("{}", serde_json::to_string(&analysis)?);
        } else {
            print_analysis(&path.display().to_string(), &analysis);
        }
    }
    Ok(())
}

fn print_analysis(name: &str, a: &Analysis) {
    println!("{name}: {}", a.kind.as_str());
    if let Some(f) = &a.feedback_type {
        println!("  feedback type:       {f}");
    }
    if let Some(id) = &a.original_message_id {
        println!("  original message id: {id}");
    }
    for r in &a.recipients {
        println!(
            "  {}  status {}  {} ({})  rule {}",
            r.address,
            if r.status.is_empty() { "-" } else { &r.status },
            r.category,
            if r.hard { "hard" } else { "soft" },
            r.rule.as_deref().unwrap_or("none"),
        );
        if !r.diagnostic.is_empty() {
            println!("    {}", r.diagnostic);
        }
    }
}
