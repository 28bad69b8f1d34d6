//! `gannet bounce ...`: classify an SMTP reply (and, later, bounce mails) with the configured
//! bounce rules, offline. Only parses arguments and prints; the work is `gannet::bounce`.

use anyhow::{Result, bail};
use gannet::bounce::Classifier;
use gannet::config::Config;
use gannet::shaping::Shaping;

use crate::ConfigArg;

#[derive(clap::Subcommand)]
pub enum BounceAction {
    /// Classify an SMTP reply: category, hard/soft and the rule (file:line) that matched
    Classify {
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
}

pub fn run(action: BounceAction, load_config: fn(&ConfigArg) -> Result<Config>) -> Result<()> {
    match action {
        BounceAction::Classify {
            reply,
            mx,
            json,
            config,
        } => {
            let config = load_config(&config)?;
            let classifier = Classifier::from_config(&config)?;
            let shaping = Shaping::from_config(&config)?;
            let Some(reply) = reply else {
                bail!("nothing to classify: give --reply \"550 5.1.1 ...\"");
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
