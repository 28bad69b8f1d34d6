//! Operator control: filters, suspensions (kept in the spool's sled database so they survive a
//! restart), and the matching rules shared by list, suspend, resume and purge.
//!
//! A suspension holds every job matching its filter out of the ready queues ("suspended"
//! state) until it is resumed; nothing is deferred or bounced because of it.

use std::sync::RwLock;
use std::time::{SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize};

use super::{Job, QueueRow};

/// Which queued mail an operator command is about. Every given field must match; an absent
/// field matches anything. `site` matches the site key or any of its MX hosts by suffix
/// (`google.com` matches `gmail-smtp-in.l.google.com`).
#[derive(
    Debug,
    Clone,
    Default,
    Serialize,
    Deserialize,
    PartialEq,
    Eq,
    utoipa::ToSchema,
    utoipa::IntoParams,
)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct Filter {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub domain: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub site: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tenant: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub campaign: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub class: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pool: Option<String>,
}

fn eq(want: &Option<String>, have: &str) -> bool {
    want.as_ref().is_none_or(|w| w.eq_ignore_ascii_case(have))
}

fn site_matches(want: &Option<String>, site: Option<&str>) -> bool {
    let Some(w) = want else { return true };
    let Some(site) = site else { return false };
    let w = w.trim_start_matches("*.").to_ascii_lowercase();
    site.eq_ignore_ascii_case(&w)
        || site
            .split(',')
            .any(|host| host == w || host.ends_with(&format!(".{w}")))
}

impl Filter {
    pub fn is_empty(&self) -> bool {
        *self == Filter::default()
    }

    /// Does a job (routed to `site` via `pool`, when known) match?
    pub fn matches(&self, job: &Job, site: Option<&str>, pool: &str) -> bool {
        eq(&self.domain, &job.domain)
            && eq(&self.tenant, &job.msg.tenant)
            && eq(&self.campaign, &job.msg.campaign)
            && eq(&self.class, &job.msg.class)
            && eq(&self.pool, pool)
            && site_matches(&self.site, site)
    }

    pub fn matches_row(&self, row: &QueueRow) -> bool {
        eq(&self.domain, &row.domain)
            && eq(&self.tenant, &row.tenant)
            && eq(&self.campaign, &row.campaign)
            && eq(&self.class, &row.class)
            && eq(&self.pool, &row.pool)
            && (self.site.is_none() || site_matches(&self.site, row.site.as_deref()))
    }
}

/// One active suspension.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct Suspension {
    pub id: u64,
    pub filter: Filter,
    pub created_at_ms: u64,
    /// Why, when not an operator's own decision (the anomaly that tripped the breaker).
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub reason: String,
}

/// The active suspensions: read on every dispatch (RwLock, read-mostly), written by operator
/// commands, persisted in a sled tree.
pub struct Suspensions {
    tree: sled::Tree,
    list: RwLock<Vec<Suspension>>,
}

impl Suspensions {
    pub fn load(tree: sled::Tree) -> Suspensions {
        let list = tree
            .iter()
            .values()
            .flatten()
            .filter_map(|v| serde_json::from_slice::<Suspension>(&v).ok())
            .collect();
        Suspensions {
            tree,
            list: RwLock::new(list),
        }
    }

    fn persist(&self) {
        if let Err(e) = self.tree.flush() {
            tracing::warn!(error = %e, "cannot write suspensions to the index; they may not survive a restart");
        }
    }

    pub fn add(&self, filter: Filter, reason: &str) -> Suspension {
        let mut list = self.list.write().unwrap_or_else(|p| p.into_inner());
        if let Some(s) = list.iter().find(|s| s.filter == filter) {
            return s.clone();
        }
        let id = list.iter().map(|s| s.id).max().unwrap_or(0) + 1;
        let s = Suspension {
            id,
            filter,
            created_at_ms: SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .unwrap_or_default()
                .as_millis() as u64,
            reason: reason.to_string(),
        };
        if let Ok(json) = serde_json::to_vec(&s) {
            let _ = self.tree.insert(id.to_be_bytes(), json);
        }
        list.push(s.clone());
        drop(list);
        self.persist();
        s
    }

    /// Remove suspensions with exactly this filter (or every one for an empty filter).
    pub fn remove(&self, filter: &Filter) -> usize {
        let mut list = self.list.write().unwrap_or_else(|p| p.into_inner());
        let before = list.len();
        list.retain(|s| {
            let keep = !(filter.is_empty() || s.filter == *filter);
            if !keep {
                let _ = self.tree.remove(s.id.to_be_bytes());
            }
            keep
        });
        let n = before - list.len();
        drop(list);
        self.persist();
        n
    }

    pub fn is_suspended(&self, job: &Job, site: Option<&str>, pool: &str) -> bool {
        let list = self.list.read().unwrap_or_else(|p| p.into_inner());
        !list.is_empty() && list.iter().any(|s| s.filter.matches(job, site, pool))
    }

    pub fn list(&self) -> Vec<Suspension> {
        self.list.read().unwrap_or_else(|p| p.into_inner()).clone()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn site_filter_matches_mx_suffix() {
        let site = Some("alt1.gmail-smtp-in.l.google.com,gmail-smtp-in.l.google.com");
        assert!(site_matches(&Some("google.com".into()), site));
        assert!(site_matches(&Some("*.google.com".into()), site));
        assert!(!site_matches(&Some("yahoodns.net".into()), site));
        assert!(!site_matches(&Some("ogle.com".into()), site));
        assert!(site_matches(&None, None));
        assert!(!site_matches(&Some("x".into()), None));
    }

    #[test]
    fn suspensions_persist() {
        let db = sled::Config::new().temporary(true).open().unwrap();
        let tree = db.open_tree("s").unwrap();
        let s = Suspensions::load(tree.clone());
        let f = Filter {
            campaign: Some("c1".into()),
            ..Filter::default()
        };
        let a = s.add(f.clone(), "");
        assert_eq!(
            s.add(f.clone(), "").id,
            a.id,
            "same filter is one suspension"
        );
        let again = Suspensions::load(tree.clone());
        assert_eq!(again.list(), vec![a]);
        assert_eq!(again.remove(&f), 1);
        assert!(Suspensions::load(tree).list().is_empty());
    }
}
