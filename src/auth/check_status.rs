//! The last sending-domain check of every `[[dkim]]` domain, kept for the console's
//! operations page: when it ran and what `check_domain` found (or why it could not run).
//!
//! Owns: the results by domain and the `gannet_domain_check_ok` gauge, both fed by one call,
//! [`DomainChecks::run_once`] (`check::check_all_once`, the code behind `gannet check-domain`
//! and `/api/v1/domains/{domain}/check`), which the periodic task and the console's "check
//! now" use alike. Never asks DNS itself or keeps more than the newest result per domain.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::{SystemTime, UNIX_EPOCH};

use super::check::{DomainReport, check_all_once, dkim_domains, domain_check_gauge};
use crate::config::Config;

/// One domain's newest check.
#[derive(Debug, Clone)]
pub struct LastCheck {
    /// When it finished (Unix seconds).
    pub at_unix: u64,
    /// The report, or why the checks could not run (the resolver's error).
    pub result: Result<DomainReport, String>,
}

/// Cheap to clone: every clone sees the same results and gauge. The map sits behind a std
/// `Mutex`: a section only inserts or copies, never awaits. `run` serialises whole runs so
/// a "check now" and the periodic run do not ask DNS twice at the same time.
#[derive(Clone)]
pub struct DomainChecks {
    last: Arc<Mutex<BTreeMap<String, LastCheck>>>,
    gauge: prometheus::IntGaugeVec,
    run: Arc<tokio::sync::Mutex<()>>,
}

impl Default for DomainChecks {
    fn default() -> Self {
        DomainChecks::new()
    }
}

impl DomainChecks {
    pub fn new() -> DomainChecks {
        DomainChecks {
            last: Arc::default(),
            gauge: domain_check_gauge(),
            run: Arc::default(),
        }
    }

    /// `gannet_domain_check_ok{domain,check}`, to register on an instance's registry.
    pub fn gauge(&self) -> &prometheus::IntGaugeVec {
        &self.gauge
    }

    /// Check every `[[dkim]]` domain now, set the gauge and keep each result.
    pub async fn run_once(&self, config: &Config) {
        let _one_at_a_time = self.run.lock().await;
        let domains = dkim_domains(config);
        let reports = check_all_once(config, &self.gauge).await;
        let at_unix = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_secs())
            .unwrap_or(0);
        let mut last = self.last.lock().unwrap_or_else(|e| e.into_inner());
        for (domain, result) in domains.into_iter().zip(reports) {
            last.insert(
                domain,
                LastCheck {
                    at_unix,
                    result: result.map_err(|e| e.to_string()),
                },
            );
        }
    }

    /// The newest check of `domain` (normalised: lower case, no trailing dot), if any ran.
    pub fn last(&self, domain: &str) -> Option<LastCheck> {
        let key = super::names::normalize_domain(domain)?;
        self.last
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(&key)
            .cloned()
    }
}
