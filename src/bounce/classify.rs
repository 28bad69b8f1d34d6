//! Reply classification: which bounce category an SMTP reply (or a connection, TLS or DNS
//! failure, which delivery/ reports as a 4.4.x reply) falls into, and whether it is hard.
//!
//! Owns [`Classifier`] (immutable once loaded from `config/bounce_rules.toml` or the file
//! `[bounce] rules_file` names), [`Classification`] and [`RuleRef`] (file and line of the rule
//! that matched, so an operator can find it). Pure code: no I/O except reading the rules file
//! in [`Classifier::load`], no clocks, no statics. Never decides retries (queue/ does, from the
//! reply code) and never suppresses anything (suppression/ applies policy to the category).

use std::collections::HashMap;
use std::fmt;
use std::path::Path;
use std::sync::Arc;

use regex::{Regex, RegexBuilder};
use serde::Deserialize;

use crate::shaping::{Shaping, provider_matches};

/// The shipped bounce rules, used when no rules file is configured.
pub const DEFAULT_BOUNCE_RULES_TOML: &str = include_str!("../../config/bounce_rules.toml");

/// What went wrong loading a rules file.
#[derive(Debug, thiserror::Error)]
pub enum RulesError {
    #[error(
        "cannot read bounce rules file {path}: {source} (check `bounce.rules_file` in the config)"
    )]
    Read {
        path: String,
        source: std::io::Error,
    },
    #[error("bounce rules file {origin}: {message}")]
    Parse { origin: String, message: String },
    #[error("bounce rules file {origin}, line {line}: {message}")]
    Invalid {
        origin: String,
        line: usize,
        message: String,
    },
}

/// Where a rule is: the file (or "built-in config/bounce_rules.toml") and the line of its
/// `[[rule]]` header.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RuleRef {
    pub origin: Arc<str>,
    pub line: usize,
}

impl fmt::Display for RuleRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}", self.origin, self.line)
    }
}

/// The verdict on one reply.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Classification {
    /// e.g. `bad-mailbox`, `rate-limited`, `unknown`.
    pub category: Arc<str>,
    /// The address itself is bad (suppress at once).
    pub hard: bool,
    /// The rule that matched; `None` only when the file has no catch-all rule and none matched.
    pub rule: Option<RuleRef>,
}

/// One reply to classify, borrowed from wherever it lives.
#[derive(Debug, Clone, Copy)]
pub struct ReplyView<'a> {
    pub code: u16,
    /// Enhanced status code (`5.1.1`), or empty.
    pub enhanced: &'a str,
    pub text: &'a str,
}

impl<'a> From<&'a crate::delivery::Reply> for ReplyView<'a> {
    fn from(r: &'a crate::delivery::Reply) -> Self {
        ReplyView {
            code: r.code,
            enhanced: &r.enhanced,
            text: &r.text,
        }
    }
}

/// Parse `"550 5.1.1 text"`, `"550-5.1.1 text"`, `"550 text"` or `"5.1.1 text"` (as found in a
/// DSN's Diagnostic-Code) into code, enhanced code and text. A missing code is 0.
pub fn split_reply(line: &str) -> (u16, &str, &str) {
    let s = line.trim();
    let (code, rest) = match s.get(..3).and_then(|c| c.parse::<u16>().ok()) {
        Some(c)
            if (200..600).contains(&c)
                && s[3..]
                    .chars()
                    .next()
                    .is_none_or(|ch| ch == ' ' || ch == '-') =>
        {
            (c, s[3..].trim_start_matches(['-', ' ']))
        }
        _ => (0, s),
    };
    let (enhanced, text) = leading_enhanced(rest);
    (code, enhanced, text)
}

/// An enhanced status code (`d.ddd.ddd`) at the start of `text`, and the rest.
fn leading_enhanced(text: &str) -> (&str, &str) {
    let t = text.trim_start_matches('#');
    let end = t.find([' ', '\t']).unwrap_or(t.len());
    let candidate = &t[..end];
    let mut parts = candidate.split('.');
    let ok = matches!(parts.next(), Some("2" | "4" | "5"))
        && parts
            .next()
            .is_some_and(|p| (1..=3).contains(&p.len()) && p.bytes().all(|b| b.is_ascii_digit()))
        && parts
            .next()
            .is_some_and(|p| (1..=3).contains(&p.len()) && p.bytes().all(|b| b.is_ascii_digit()))
        && parts.next().is_none();
    if ok {
        (candidate, t[end..].trim_start())
    } else {
        ("", text)
    }
}

#[derive(Debug, Clone)]
struct CodePattern([Option<u8>; 3]);

impl CodePattern {
    fn parse(s: &str) -> Option<CodePattern> {
        let b = s.as_bytes();
        if b.len() != 3 {
            return None;
        }
        let mut out = [None; 3];
        for (i, c) in b.iter().enumerate() {
            out[i] = match c {
                b'0'..=b'9' => Some(c - b'0'),
                b'x' | b'X' => None,
                _ => return None,
            };
        }
        Some(CodePattern(out))
    }

    fn matches(&self, code: u16) -> bool {
        if !(100..1000).contains(&code) {
            return false;
        }
        let d = [
            (code / 100) as u8,
            (code / 10 % 10) as u8,
            (code % 10) as u8,
        ];
        self.0.iter().zip(d).all(|(p, d)| p.is_none_or(|p| p == d))
    }
}

#[derive(Debug, Clone)]
struct Rule {
    at: RuleRef,
    code: Option<CodePattern>,
    enhanced: Option<Regex>,
    text: Option<Regex>,
    category: u16,
}

impl Rule {
    fn matches(&self, code: u16, enhanced: &str, text: &str) -> bool {
        if let Some(c) = &self.code
            && !c.matches(code)
        {
            return false;
        }
        if let Some(e) = &self.enhanced
            && !e.is_match(enhanced)
        {
            return false;
        }
        if let Some(t) = &self.text
            && !t.is_match(text)
        {
            return false;
        }
        true
    }
}

#[derive(Debug, Clone)]
struct Category {
    name: Arc<str>,
    hard: bool,
}

/// The loaded bounce rules. Immutable; share it behind an `Arc`.
#[derive(Debug, Clone)]
pub struct Classifier {
    origin: Arc<str>,
    categories: Vec<Category>,
    rules: Vec<Rule>,
    /// Provider name → indexes of its rules, in file order.
    by_provider: HashMap<String, Vec<usize>>,
    /// Rules without a provider, in file order.
    generic: Vec<usize>,
    /// Providers this file defines by MX pattern (for providers shaping.toml lacks).
    providers: Vec<(String, Vec<String>)>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct FileToml {
    #[serde(default)]
    categories: std::collections::BTreeMap<String, CategoryToml>,
    #[serde(default, rename = "provider")]
    providers: Vec<ProviderToml>,
    #[serde(default, rename = "rule")]
    rules: Vec<RuleToml>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct CategoryToml {
    hard: bool,
    #[serde(default)]
    #[allow(dead_code)]
    description: String,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ProviderToml {
    name: String,
    mx: Vec<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RuleToml {
    provider: Option<String>,
    code: Option<String>,
    enhanced: Option<String>,
    text: Option<String>,
    category: String,
}

/// Line numbers (1-based) of each `[[rule]]` header, in order.
fn rule_lines(text: &str) -> Vec<usize> {
    text.lines()
        .enumerate()
        .filter(|(_, l)| l.trim_start().starts_with("[[rule]]"))
        .map(|(i, _)| i + 1)
        .collect()
}

impl Classifier {
    /// Load the rules file at `path`, or the shipped rules when `path` is `None`.
    pub fn load(path: Option<&Path>) -> Result<Classifier, RulesError> {
        match path {
            None => Classifier::from_toml(
                DEFAULT_BOUNCE_RULES_TOML,
                "built-in config/bounce_rules.toml",
            ),
            Some(path) => {
                let text = std::fs::read_to_string(path).map_err(|e| RulesError::Read {
                    path: path.display().to_string(),
                    source: e,
                })?;
                Classifier::from_toml(&text, &path.display().to_string())
            }
        }
    }

    /// The rules a configuration names (`[bounce] rules_file`, relative to the config file's
    /// directory; the shipped rules when unset).
    pub fn from_config(config: &crate::config::Config) -> Result<Classifier, RulesError> {
        let path = config
            .bounce
            .rules_file
            .as_ref()
            .map(|p| config.resolve_path(p));
        Classifier::load(path.as_deref())
    }

    /// The shipped rules. Checked by a unit test, so this cannot fail in a released binary.
    pub fn builtin() -> Classifier {
        Classifier::load(None).expect("built-in config/bounce_rules.toml is valid")
    }

    /// Parse rules from text; `origin` names the file in errors and in [`RuleRef`]s.
    pub fn from_toml(text: &str, origin: &str) -> Result<Classifier, RulesError> {
        let raw: FileToml = toml::from_str(text).map_err(|e| RulesError::Parse {
            origin: origin.to_string(),
            message: e.to_string().trim_end().to_string(),
        })?;
        let origin: Arc<str> = Arc::from(origin);
        let lines = rule_lines(text);
        let categories: Vec<Category> = raw
            .categories
            .iter()
            .map(|(name, c)| Category {
                name: Arc::from(name.as_str()),
                hard: c.hard,
            })
            .collect();
        let mut providers = Vec::new();
        for p in raw.providers {
            if let Some(bad) =
                p.mx.iter()
                    .find(|m| m.contains('*') && !m.starts_with("*."))
            {
                return Err(RulesError::Parse {
                    origin: origin.to_string(),
                    message: format!(
                        "provider {:?}: mx pattern {bad:?} must be a host name or start with \"*.\"",
                        p.name
                    ),
                });
            }
            providers.push((p.name, p.mx));
        }
        let mut rules = Vec::with_capacity(raw.rules.len());
        let mut by_provider: HashMap<String, Vec<usize>> = HashMap::new();
        let mut generic = Vec::new();
        for (i, r) in raw.rules.into_iter().enumerate() {
            let line = lines.get(i).copied().unwrap_or(0);
            let invalid = |message: String| RulesError::Invalid {
                origin: origin.to_string(),
                line,
                message,
            };
            let category = categories
                .iter()
                .position(|c| *c.name == *r.category)
                .ok_or_else(|| {
                    invalid(format!(
                        "category {:?} is not defined under [categories]",
                        r.category
                    ))
                })? as u16;
            let code = match &r.code {
                None => None,
                Some(c) => Some(CodePattern::parse(c).ok_or_else(|| {
                    invalid(format!(
                        "code {c:?}: expected three characters, digits or x (\"550\", \"55x\", \"5xx\")"
                    ))
                })?),
            };
            let enhanced = match &r.enhanced {
                None => None,
                Some(e) => Some(enhanced_regex(e).ok_or_else(|| {
                    invalid(format!(
                        "enhanced {e:?}: expected three dot-separated parts, each digits, x or a [..] class (\"5.1.1\", \"x.7.x\")"
                    ))
                })?),
            };
            let text_re = match &r.text {
                None => None,
                Some(t) => Some(
                    RegexBuilder::new(t)
                        .case_insensitive(true)
                        .build()
                        .map_err(|e| invalid(format!("text {t:?} is not a valid regex: {e}")))?,
                ),
            };
            match &r.provider {
                Some(p) => by_provider.entry(p.clone()).or_default().push(i),
                None => generic.push(i),
            }
            rules.push(Rule {
                at: RuleRef {
                    origin: origin.clone(),
                    line,
                },
                code,
                enhanced,
                text: text_re,
                category,
            });
        }
        Ok(Classifier {
            origin,
            categories,
            rules,
            by_provider,
            generic,
            providers,
        })
    }

    /// Where the rules came from.
    pub fn origin(&self) -> &str {
        &self.origin
    }

    /// Whether `category` is defined and hard.
    pub fn is_hard(&self, category: &str) -> Option<bool> {
        self.categories
            .iter()
            .find(|c| &*c.name == category)
            .map(|c| c.hard)
    }

    /// The provider a destination belongs to: the shaping provider its MX hosts (or domain)
    /// matched, else a `[[provider]]` block of this file.
    pub fn provider_for(
        &self,
        shaping: Option<&Shaping>,
        domain: &str,
        mx_hosts: &[String],
    ) -> Option<String> {
        if let Some(p) = shaping.and_then(|s| s.provider_for(domain, mx_hosts)) {
            return Some(p.to_string());
        }
        self.providers
            .iter()
            .find(|(_, pats)| {
                pats.iter()
                    .any(|pat| mx_hosts.iter().any(|h| provider_matches(pat, h)))
            })
            .map(|(n, _)| n.clone())
    }

    /// Classify one reply: the provider's rules first (when `provider` is given), then the
    /// generic rules; the first match wins. No rule matching gives `unknown` (soft).
    pub fn classify(&self, reply: ReplyView<'_>, provider: Option<&str>) -> Classification {
        let (enhanced, text) = if reply.enhanced.is_empty() {
            leading_enhanced(reply.text.trim_start())
        } else {
            (reply.enhanced, reply.text)
        };
        let provider_rules = provider
            .and_then(|p| self.by_provider.get(p))
            .map(|v| v.as_slice())
            .unwrap_or(&[]);
        for &i in provider_rules.iter().chain(self.generic.iter()) {
            let rule = &self.rules[i];
            if rule.matches(reply.code, enhanced, text) {
                let c = &self.categories[rule.category as usize];
                return Classification {
                    category: c.name.clone(),
                    hard: c.hard,
                    rule: Some(rule.at.clone()),
                };
            }
        }
        Classification {
            category: Arc::from("unknown"),
            hard: false,
            rule: None,
        }
    }

    /// Classify a reply given as one line (`"550 5.1.1 no such user"`).
    pub fn classify_line(&self, line: &str, provider: Option<&str>) -> Classification {
        let (code, enhanced, text) = split_reply(line);
        self.classify(
            ReplyView {
                code,
                enhanced,
                text,
            },
            provider,
        )
    }
}

/// `5.1.x` → `^5\.1\.\d{1,3}$`; parts may be digits, `x`, or digits with `[..]` classes.
fn enhanced_regex(pattern: &str) -> Option<Regex> {
    let parts: Vec<&str> = pattern.split('.').collect();
    if parts.len() != 3 {
        return None;
    }
    let mut re = String::from("^");
    for (i, p) in parts.iter().enumerate() {
        if i > 0 {
            re.push_str("\\.");
        }
        if p.eq_ignore_ascii_case("x") {
            re.push_str("\\d{1,3}");
        } else if !p.is_empty()
            && p.bytes()
                .all(|b| b.is_ascii_digit() || matches!(b, b'[' | b']' | b'-'))
        {
            re.push_str(p);
        } else {
            return None;
        }
    }
    re.push('$');
    Regex::new(&re).ok()
}

#[cfg(test)]
#[path = "classify_tests.rs"]
mod tests;
