//! Templates for personalised mail (minijinja): compile once per request, render per recipient.
//!
//! Owns: the template environment of one injection request ([`Templates`]) with the rules that
//! keep rendering safe — strict-enough undefined handling (printing or looping over a variable
//! a recipient lacks is that recipient's error naming the variable; `{% if x %}` on a missing
//! `x` is simply false), HTML auto-escaping in the `html` template, a fuel bound on work per
//! render, and *header context*: in templates whose output lands in a header (subject, custom
//! header values, the header part of a raw `content` template) a substituted value may not
//! carry CR, LF, NUL or another control character, nor an RFC 2047 encoded-word.
//! Never builds MIME (that is `compose`) and never sees the network.

use minijinja::value::Value;
use minijinja::{AutoEscape, Environment, ErrorKind, UndefinedBehavior};

/// Names of the templates one request can hold.
pub const SUBJECT: &str = "subject";
pub const TEXT: &str = "text";
pub const HTML: &str = "html";
/// Header part of a raw RFC 5322 `content` template (up to the first blank line).
pub const CONTENT_HEADERS: &str = "content.headers";
/// Body part of a raw `content` template.
pub const CONTENT_BODY: &str = "content.body";
/// Prefix of custom header value templates: `headers.NAME`.
pub const HEADER_PREFIX: &str = "headers.";

/// Bounds on what one request may ask of the renderer.
#[derive(Debug, Clone, Copy)]
pub struct TemplateLimits {
    /// Largest single template source, in bytes.
    pub max_template_bytes: usize,
    /// Largest rendered message (all parts), in bytes.
    pub max_rendered_bytes: usize,
    /// Template instructions one render may execute (minijinja fuel).
    pub fuel: u64,
}

impl Default for TemplateLimits {
    fn default() -> Self {
        TemplateLimits {
            max_template_bytes: 256 * 1024,
            max_rendered_bytes: 2 * 1024 * 1024,
            fuel: 2_000_000,
        }
    }
}

/// A template that cannot be used: the whole request is refused before anything is queued.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CompileError {
    #[error("template `{field}` does not compile at line {line}: {message}")]
    Syntax {
        /// Request field holding the template (`html`, `subject`, `headers.X-Foo`...).
        field: String,
        line: usize,
        message: String,
    },
    #[error("template `{field}` is {size} bytes, over the limit of {limit} bytes")]
    TooLarge {
        field: String,
        size: usize,
        limit: usize,
    },
}

impl CompileError {
    pub fn field(&self) -> &str {
        match self {
            CompileError::Syntax { field, .. } | CompileError::TooLarge { field, .. } => field,
        }
    }
}

/// Why one recipient's message could not be rendered (other recipients are unaffected).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RenderError {
    #[error(
        "template `{field}` line {line}: variable `{variable}` is not defined for this recipient"
    )]
    Undefined {
        field: String,
        line: usize,
        variable: String,
    },
    #[error(
        "template `{field}`: a substituted value contains {what}, which cannot appear in a header; send one line of plain text (Gannet encodes it)"
    )]
    HeaderUnsafe { field: String, what: String },
    #[error(
        "template `{field}` used more than the {fuel} steps one recipient may use (a loop too long?)"
    )]
    OutOfFuel { field: String, fuel: u64 },
    #[error("template `{field}` line {line}: {message}")]
    Other {
        field: String,
        line: usize,
        message: String,
    },
}

/// Compiled templates of one request. Immutable; render from many threads at once.
pub struct Templates {
    env: Environment<'static>,
    limits: TemplateLimits,
}

impl std::fmt::Debug for Templates {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Templates").finish_non_exhaustive()
    }
}

/// True for template names whose output is a header value or header block.
fn is_header_context(name: &str) -> bool {
    name == SUBJECT || name == CONTENT_HEADERS || name.starts_with(HEADER_PREFIX)
}

/// Marker put into the error detail by the header-context formatter, so `render` can tell the
/// formatter's refusal from other errors.
const UNSAFE_MARK: &str = "header-unsafe: ";

/// What makes a value unfit for a header, described for the error message; None when fine.
pub fn header_unsafe(value: &str) -> Option<String> {
    if let Some(c) = value.chars().find(|&c| c != '\t' && (c.is_control())) {
        let what = match c {
            '\r' => "a carriage return (CR)".to_string(),
            '\n' => "a line feed (LF)".to_string(),
            '\0' => "a NUL character".to_string(),
            c => format!("the control character U+{:04X}", c as u32),
        };
        return Some(what);
    }
    if let Some(start) = value.find("=?")
        && value[start + 2..].contains("?=")
    {
        return Some("an RFC 2047 encoded-word (=?...?=)".to_string());
    }
    None
}

impl Templates {
    /// Compile `(field, source)` pairs. Field names are the constants above; a `content`
    /// template is given with [`split_content`] first.
    pub fn compile<'a>(
        sources: impl IntoIterator<Item = (String, &'a str)>,
        limits: TemplateLimits,
    ) -> Result<Templates, CompileError> {
        let mut env = Environment::new();
        env.set_undefined_behavior(UndefinedBehavior::SemiStrict);
        env.set_fuel(Some(limits.fuel));
        // Keep a template's final newline: a text part or header block must end the way the
        // author wrote it.
        if let Ok(syntax) = minijinja::syntax::SyntaxConfig::builder()
            .keep_trailing_newline(true)
            .build()
        {
            env.set_syntax(syntax);
        }
        env.set_auto_escape_callback(|name| {
            if name == HTML {
                AutoEscape::Html
            } else {
                AutoEscape::None
            }
        });
        env.set_formatter(|out, state, value| {
            if is_header_context(state.name())
                && !value.is_undefined()
                && !value.is_none()
                && let Some(what) = header_unsafe(&value.to_string())
            {
                return Err(minijinja::Error::new(
                    ErrorKind::InvalidOperation,
                    format!("{UNSAFE_MARK}{what}"),
                ));
            }
            minijinja::escape_formatter(out, state, value)
        });
        for (field, source) in sources {
            if source.len() > limits.max_template_bytes {
                return Err(CompileError::TooLarge {
                    field,
                    size: source.len(),
                    limit: limits.max_template_bytes,
                });
            }
            if let Err(e) = env.add_template_owned(field.clone(), source.to_string()) {
                return Err(CompileError::Syntax {
                    field,
                    line: e.line().unwrap_or(1),
                    message: e
                        .detail()
                        .unwrap_or(e.kind().to_string().as_str())
                        .to_string(),
                });
            }
        }
        Ok(Templates { env, limits })
    }

    pub fn limits(&self) -> TemplateLimits {
        self.limits
    }

    /// Whether a template called `field` was compiled.
    pub fn has(&self, field: &str) -> bool {
        self.env.get_template(field).is_ok()
    }

    /// Render one template for one recipient's context. Ok(None) when there is no such template.
    pub fn render(&self, field: &str, ctx: &Value) -> Result<Option<String>, RenderError> {
        let Ok(t) = self.env.get_template(field) else {
            return Ok(None);
        };
        t.render(ctx.clone()).map(Some).map_err(|e| {
            let field = field.to_string();
            let line = e.line().unwrap_or(1);
            let detail = e.detail().unwrap_or_default();
            match e.kind() {
                ErrorKind::UndefinedError => RenderError::Undefined {
                    field,
                    line,
                    variable: e
                        .range()
                        .and_then(|r| t.source().get(r))
                        .map(str::to_string)
                        .or_else(|| detail.split('`').nth(1).map(str::to_string))
                        .unwrap_or_else(|| "?".to_string()),
                },
                ErrorKind::OutOfFuel => RenderError::OutOfFuel {
                    field,
                    fuel: self.limits.fuel,
                },
                _ if detail.starts_with(UNSAFE_MARK) => RenderError::HeaderUnsafe {
                    field,
                    what: detail[UNSAFE_MARK.len()..].to_string(),
                },
                _ => RenderError::Other {
                    field,
                    line,
                    message: detail.to_string(),
                },
            }
        })
    }
}

/// Split a raw RFC 5322 template into its header part and body part at the first empty line
/// (`\n\n` or `\r\n\r\n`), so the header part is rendered in header context. The header part
/// keeps its final line end; the body excludes the separator line.
pub fn split_content(source: &str) -> (&str, &str) {
    let crlf = source.find("\r\n\r\n").map(|p| (p + 2, p + 4));
    let lf = source.find("\n\n").map(|p| (p + 1, p + 2));
    let cut = match (crlf, lf) {
        (Some(a), Some(b)) => Some(if a.0 <= b.0 { a } else { b }),
        (a, b) => a.or(b),
    };
    match cut {
        Some((head_end, body_start)) => (&source[..head_end], &source[body_start..]),
        None => (source, ""),
    }
}

#[cfg(test)]
#[path = "template_tests.rs"]
mod tests;
