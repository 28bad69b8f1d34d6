//! Rendering send-log rows for people and programs: CSV (RFC 4180), NDJSON, the text table of
//! `gannet logs query`, and campaign statistics assembled from the stored counters.
//!
//! Owns: the CSV column list (a public interface: the columns are the JSON fields of the same
//! name, kind-specific fields the CSV has no column for go into `details` as JSON).
//! Never does: read the database or the network.

use std::collections::BTreeMap;

use serde::Serialize;
use serde_json::{Map, Value};

use super::store::CountRow;

/// CSV columns, in order. Each is the JSON field of the same name.
pub const CSV_COLUMNS: &[&str] = &[
    "seq",
    "id",
    "time_us",
    "type",
    "queue_id",
    "message_id",
    "recipient",
    "sender",
    "tenant",
    "campaign",
    "class",
    "pool",
    "attempt",
    "variant",
    "site",
    "mx_host",
    "remote_ip",
    "source_ip",
    "reply",
    "category",
    "details",
];

/// The CSV header line (CRLF-terminated).
pub fn csv_header() -> String {
    let mut s = CSV_COLUMNS.join(",");
    s.push_str("\r\n");
    s
}

fn csv_field(out: &mut String, v: &str) {
    if v.contains([',', '"', '\r', '\n']) {
        out.push('"');
        out.push_str(&v.replace('"', "\"\""));
        out.push('"');
    } else {
        out.push_str(v);
    }
}

/// A JSON value as a CSV/table cell: strings as is, null as empty, others as JSON.
pub fn cell(v: Option<&Value>) -> String {
    match v {
        None | Some(Value::Null) => String::new(),
        Some(Value::String(s)) => s.clone(),
        Some(v) => v.to_string(),
    }
}

/// The fields of `event` that have no CSV column, as a JSON object (empty string when none).
pub fn details(event: &Value) -> String {
    let Value::Object(m) = event else {
        return String::new();
    };
    let rest: Map<String, Value> = m
        .iter()
        .filter(|(k, _)| !CSV_COLUMNS.contains(&k.as_str()))
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect();
    if rest.is_empty() {
        String::new()
    } else {
        Value::Object(rest).to_string()
    }
}

/// One event as a CSV record (CRLF-terminated).
pub fn csv_row(event: &Value) -> String {
    let mut out = String::new();
    for (i, col) in CSV_COLUMNS.iter().enumerate() {
        if i > 0 {
            out.push(',');
        }
        let v = if *col == "details" {
            details(event)
        } else {
            cell(event.get(*col))
        };
        csv_field(&mut out, &v);
    }
    out.push_str("\r\n");
    out
}

/// One event as an NDJSON line.
pub fn ndjson_row(event: &Value) -> String {
    let mut s = event.to_string();
    s.push('\n');
    s
}

/// Columns of the text table `gannet logs query` prints.
const TABLE_COLUMNS: &[&str] = &[
    "time",
    "type",
    "recipient",
    "queue_id",
    "campaign",
    "attempt",
    "site",
    "reply",
];

/// A plain text table of `events` for a terminal.
pub fn table(events: &[Value]) -> String {
    let rows: Vec<Vec<String>> = events
        .iter()
        .map(|e| {
            TABLE_COLUMNS
                .iter()
                .map(|c| match *c {
                    "time" => e
                        .get("time_us")
                        .and_then(Value::as_u64)
                        .map(rfc3339_us)
                        .unwrap_or_default(),
                    c => {
                        let mut s = cell(e.get(c));
                        if s.chars().count() > 60 {
                            s = s.chars().take(57).collect::<String>() + "...";
                        }
                        s
                    }
                })
                .collect()
        })
        .collect();
    let mut width: Vec<usize> = TABLE_COLUMNS.iter().map(|c| c.len()).collect();
    for r in &rows {
        for (i, c) in r.iter().enumerate() {
            width[i] = width[i].max(c.chars().count());
        }
    }
    let line = |cells: Vec<&str>| {
        let mut s = String::new();
        for (i, c) in cells.iter().enumerate() {
            if i > 0 {
                s.push_str("  ");
            }
            s.push_str(c);
            if i + 1 < cells.len() {
                s.push_str(&" ".repeat(width[i].saturating_sub(c.chars().count())));
            }
        }
        s.push('\n');
        s
    };
    let mut out = line(TABLE_COLUMNS.to_vec());
    for r in &rows {
        out.push_str(&line(r.iter().map(String::as_str).collect()));
    }
    out
}

/// Microseconds since the epoch as RFC 3339 UTC.
pub fn rfc3339_us(us: u64) -> String {
    let mut e = crate::events::Event::new(crate::events::EventKind::Flushed {
        actor: String::new(),
        released: 0,
    });
    e.time_us = us;
    e.time_rfc3339()
}

/// Statistics of one campaign: totals and one line per (variant, provider).
#[derive(Debug, Clone, Default, Serialize, PartialEq)]
pub struct CampaignStats {
    pub campaign: String,
    pub total: StatLine,
    pub by_variant_provider: Vec<StatLine>,
}

/// Counts for one (variant, provider). `provider` is the destination site (MX rollup).
/// `accepted` counts recipients of accepted messages (known per variant only, so it is zero in
/// per-provider lines); `sent` counts final outcomes (delivered + bounced + expired).
#[derive(Debug, Clone, Default, Serialize, PartialEq)]
pub struct StatLine {
    pub variant: String,
    pub provider: String,
    pub accepted: i64,
    pub sent: i64,
    pub delivered: i64,
    pub deferred: i64,
    pub bounced: i64,
    pub bounced_by_category: BTreeMap<String, i64>,
    pub expired: i64,
    pub complaints: i64,
    pub unsubscribes: i64,
}

impl StatLine {
    fn add(&mut self, r: &CountRow) {
        match r.kind.as_str() {
            "received" => self.accepted += r.n,
            "delivered" => {
                self.delivered += r.n;
                self.sent += r.n;
            }
            "deferred" => self.deferred += r.n,
            "bounced" => {
                self.bounced += r.n;
                self.sent += r.n;
                let cat = if r.category.is_empty() {
                    "unclassified"
                } else {
                    &r.category
                };
                *self.bounced_by_category.entry(cat.to_string()).or_default() += r.n;
            }
            "expired" => {
                self.expired += r.n;
                self.sent += r.n;
            }
            "complaint" => self.complaints += r.n,
            "unsubscribed" => self.unsubscribes += r.n,
            _ => {}
        }
    }
}

/// Fold stored counters into statistics.
pub fn campaign_stats(campaign: &str, rows: &[CountRow]) -> CampaignStats {
    let mut total = StatLine::default();
    let mut lines: BTreeMap<(String, String), StatLine> = BTreeMap::new();
    for r in rows {
        total.add(r);
        let line = lines
            .entry((r.variant.clone(), r.site.clone()))
            .or_insert_with(|| StatLine {
                variant: r.variant.clone(),
                provider: r.site.clone(),
                ..StatLine::default()
            });
        line.add(r);
    }
    CampaignStats {
        campaign: campaign.to_string(),
        total,
        by_variant_provider: lines.into_values().collect(),
    }
}
