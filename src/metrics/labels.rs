//! Bounded label values: what keeps the number of series fixed however many domains, tenants
//! and campaigns are mailed.
//!
//! Owns: the set of provider names a `provider` label may carry (the shaping file's providers;
//! anything else is `other`) and the campaign slots of `gannet_campaign_recipients_total` (at
//! most `top` (tenant, campaign) pairs have their own series; others count as
//! `tenant="other", campaign="other"`; a campaign idle for `idle` gives its slot up and its
//! series are removed). Used only by the metrics subscriber's task (no lock: one owner).
//! Never does: touch a metric itself (the caller removes the series it is told about).

use std::collections::{HashMap, HashSet};

/// The label value for everything outside the bounded set.
pub const OTHER: &str = "other";

/// A (tenant, campaign) label pair.
pub type CampaignLabels = (String, String);

/// Provider names and campaign slots (see the module doc).
pub struct Labels {
    providers: HashSet<String>,
    top: usize,
    idle_secs: u64,
    /// (tenant, campaign) → last seen (seconds, the caller's clock).
    slots: HashMap<CampaignLabels, u64>,
    /// When the slots were last scanned for idle ones (a full table is scanned at most once
    /// per [`SCAN_EVERY_SECS`], not on every event of an `other` campaign).
    last_scan: u64,
}

const SCAN_EVERY_SECS: u64 = 60;

impl Labels {
    /// `providers`: the shaping file's provider names; `top`: campaigns with their own series
    /// (0 = none: every campaign is `other`); `idle_secs`: inactivity that frees a slot.
    pub fn new(providers: impl IntoIterator<Item = String>, top: usize, idle_secs: u64) -> Labels {
        Labels {
            providers: providers.into_iter().collect(),
            top,
            idle_secs,
            slots: HashMap::new(),
            last_scan: 0,
        }
    }

    /// The `provider` label for a provider name from an event: itself when the shaping file
    /// defines it, else `other`.
    pub fn provider<'a>(&self, name: &'a str) -> &'a str {
        if self.providers.contains(name) {
            name
        } else {
            OTHER
        }
    }

    /// The provider names (for series created at start with zero values).
    pub fn providers(&self) -> impl Iterator<Item = &str> {
        self.providers.iter().map(String::as_str)
    }

    /// The (tenant, campaign) labels for an event of `campaign` at `now` (seconds), plus the
    /// slots freed to make room (whose series the caller removes). Mail without a campaign
    /// returns None: it is counted by class and pool only.
    pub fn campaign(
        &mut self,
        tenant: &str,
        campaign: &str,
        now: u64,
    ) -> (Option<CampaignLabels>, Vec<CampaignLabels>) {
        if campaign.is_empty() {
            return (None, Vec::new());
        }
        let key = (tenant.to_string(), campaign.to_string());
        if let Some(seen) = self.slots.get_mut(&key) {
            *seen = now;
            return (Some(key), Vec::new());
        }
        let mut freed = Vec::new();
        if self.slots.len() >= self.top && now >= self.last_scan + SCAN_EVERY_SECS {
            self.last_scan = now;
            let idle = self.idle_secs;
            self.slots.retain(|k, seen| {
                let keep = now.saturating_sub(*seen) < idle;
                if !keep {
                    freed.push(k.clone());
                }
                keep
            });
        }
        if self.slots.len() < self.top {
            self.slots.insert(key.clone(), now);
            return (Some(key), freed);
        }
        (Some((OTHER.to_string(), OTHER.to_string())), freed)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn providers_outside_the_shaping_file_are_other() {
        let l = Labels::new(["google".to_string()], 2, 60);
        assert_eq!(l.provider("google"), "google");
        assert_eq!(l.provider(""), OTHER);
        assert_eq!(l.provider("mx.example.com"), OTHER);
    }

    #[test]
    fn campaigns_beyond_top_n_are_other_until_a_slot_goes_idle() {
        let mut l = Labels::new([], 2, 600);
        let named = |t: &str, c: &str| Some((t.to_string(), c.to_string()));
        assert_eq!(l.campaign("t", "a", 0).0, named("t", "a"));
        assert_eq!(l.campaign("t", "b", 10).0, named("t", "b"));
        assert_eq!(l.campaign("t", "c", 20).0, named(OTHER, OTHER));
        assert_eq!(
            l.campaign("t", "", 20).0,
            None,
            "no campaign, no campaign series"
        );
        // `a` stays busy, `b` goes idle: after 600 s of silence its slot goes to `c`.
        assert_eq!(l.campaign("t", "a", 500).0, named("t", "a"));
        let (c, freed) = l.campaign("t", "c", 700);
        assert_eq!(c, named("t", "c"));
        assert_eq!(freed, vec![("t".to_string(), "b".to_string())]);
        assert_eq!(l.campaign("t", "b", 701).0, named(OTHER, OTHER));
    }
}
