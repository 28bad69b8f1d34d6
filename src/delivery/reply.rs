//! SMTP replies as the delivery side sees them, and what each one means for a recipient.

use std::fmt;

/// One SMTP reply: code, enhanced status code (may be empty), text (multi-line joined by " ").
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reply {
    pub code: u16,
    pub enhanced: String,
    pub text: String,
}

impl Reply {
    pub fn new(code: u16, enhanced: &str, text: impl Into<String>) -> Reply {
        Reply {
            code,
            enhanced: enhanced.to_string(),
            text: text.into(),
        }
    }

    pub fn from_proto(r: &smtp_proto::Response<String>) -> Reply {
        let enhanced = if r.esc[0] != 0 {
            format!("{}.{}.{}", r.esc[0], r.esc[1], r.esc[2])
        } else {
            String::new()
        };
        Reply {
            code: r.code,
            enhanced,
            text: r.message.replace(['\r', '\n'], " ").trim().to_string(),
        }
    }

    pub fn is_positive(&self) -> bool {
        (200..300).contains(&self.code)
    }

    pub fn is_intermediate(&self) -> bool {
        (300..400).contains(&self.code)
    }

    pub fn is_permanent(&self) -> bool {
        self.code >= 500
    }
}

impl fmt::Display for Reply {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.enhanced.is_empty() {
            write!(f, "{} {}", self.code, self.text)
        } else {
            write!(f, "{} {} {}", self.code, self.enhanced, self.text)
        }
    }
}

/// What happened to one recipient in one delivery attempt.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    Delivered(Reply),
    /// Try again later (4xx, connection or TLS failure, DNS trouble).
    Deferred(Reply),
    /// Permanent failure (5xx, null MX, unknown domain).
    Bounced(Reply),
}

impl Outcome {
    /// Classify a final reply for a recipient.
    pub fn from_reply(r: Reply) -> Outcome {
        if r.is_positive() {
            Outcome::Delivered(r)
        } else if r.is_permanent() {
            Outcome::Bounced(r)
        } else {
            Outcome::Deferred(r)
        }
    }

    pub fn reply(&self) -> &Reply {
        match self {
            Outcome::Delivered(r) | Outcome::Deferred(r) | Outcome::Bounced(r) => r,
        }
    }

    pub fn name(&self) -> &'static str {
        match self {
            Outcome::Delivered(_) => "delivered",
            Outcome::Deferred(_) => "deferred",
            Outcome::Bounced(_) => "bounced",
        }
    }
}
