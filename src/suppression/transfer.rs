//! Bulk import and export of the suppression list as CSV or JSONL, one entry per line.
//!
//! Owns the two line formats and nothing else: [`LineReader`] turns input lines into
//! [`Entry`]s (or an error naming the line number), [`render`] turns an entry into a line.
//! Pure code, no I/O: the HTTP endpoint and the CLI move the bytes and decide what to do with
//! a bad line (the endpoint imports every good line and reports the bad ones).
//!
//! CSV (RFC 4180, parsed and written by the `csv` crate): columns `address, tenant, stream,
//! reason, source, created, expires`, in that order, or in any order when the first line is a
//! header naming them (`address` is required, every other column may be left out or empty).
//! A file of bare addresses, one per line, is a valid import. Exports start with the header.
//!
//! JSONL: one object per line, with the same field names (`address` required).
//!
//! Defaults for what a line leaves out: tenant `*` (every tenant), stream empty (every
//! stream), reason `manual`, source `import:ACTOR`, created now, expires 0 (never).
//! Blank lines are skipped (but counted, so line numbers match the file).

use serde::Deserialize;

use super::store::{ALL_TENANTS, Entry, normalize};

/// The two line formats.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    Csv,
    Jsonl,
}

impl Format {
    /// `csv`, `jsonl` (or `ndjson`).
    pub fn from_name(name: &str) -> Option<Format> {
        match name.to_ascii_lowercase().as_str() {
            "csv" => Some(Format::Csv),
            "jsonl" | "ndjson" => Some(Format::Jsonl),
            _ => None,
        }
    }

    /// The media type of a file in this format.
    pub fn content_type(self) -> &'static str {
        match self {
            Format::Csv => "text/csv; charset=utf-8",
            Format::Jsonl => "application/x-ndjson",
        }
    }
}

/// CSV columns, in export order.
pub const COLUMNS: [&str; 7] = [
    "address", "tenant", "stream", "reason", "source", "created", "expires",
];

/// A line that could not be imported.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("line {line}: {message}")]
pub struct LineError {
    /// 1-based line number in the input.
    pub line: u64,
    pub message: String,
}

/// The fields of one line before defaults and checks.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct Raw {
    address: String,
    #[serde(default)]
    tenant: Option<String>,
    #[serde(default)]
    stream: Option<String>,
    #[serde(default)]
    reason: Option<String>,
    #[serde(default)]
    source: Option<String>,
    #[serde(default)]
    created: Option<u64>,
    #[serde(default)]
    expires: Option<u64>,
}

/// Reads import lines in order; keeps the line count and the CSV column order.
pub struct LineReader {
    format: Format,
    /// Column index → field (COLUMNS index); export order until a header says otherwise.
    columns: Vec<usize>,
    line: u64,
    /// A line other than blank ones was read (a header can only come first).
    started: bool,
    source: String,
    now: u64,
}

impl LineReader {
    /// A reader for `format`; entries without a source get `import:ACTOR`, without a created
    /// time `now`.
    pub fn new(format: Format, actor: &str, now: u64) -> LineReader {
        LineReader {
            format,
            columns: (0..COLUMNS.len()).collect(),
            line: 0,
            started: false,
            source: format!("import:{actor}"),
            now,
        }
    }

    /// Lines read so far.
    pub fn lines(&self) -> u64 {
        self.line
    }

    /// The next line (without its line end). `Ok(None)`: nothing to import on this line
    /// (blank, or the CSV header).
    pub fn read(&mut self, line: &[u8]) -> Result<Option<Entry>, LineError> {
        self.line += 1;
        let err = |message: String| LineError {
            line: self.line,
            message,
        };
        let line = line.strip_suffix(b"\r").unwrap_or(line);
        if line.iter().all(u8::is_ascii_whitespace) {
            return Ok(None);
        }
        let first = !std::mem::replace(&mut self.started, true);
        let raw = match self.format {
            Format::Jsonl => serde_json::from_slice::<Raw>(line)
                .map_err(|e| err(format!("not a JSON object of a suppression: {e}")))?,
            Format::Csv => {
                let fields = csv_fields(line).map_err(err)?;
                if first && is_header(&fields) {
                    self.columns = header_columns(&fields).map_err(err)?;
                    return Ok(None);
                }
                self.csv_raw(&fields).map_err(err)?
            }
        };
        self.entry(raw).map(Some).map_err(err)
    }

    fn csv_raw(&self, fields: &[String]) -> Result<Raw, String> {
        if fields.len() > self.columns.len() {
            return Err(format!(
                "{} fields, at most {} expected ({})",
                fields.len(),
                self.columns.len(),
                self.columns
                    .iter()
                    .map(|&c| COLUMNS[c])
                    .collect::<Vec<_>>()
                    .join(",")
            ));
        }
        let mut raw = Raw::default();
        for (value, &col) in fields.iter().zip(&self.columns) {
            let value = value.trim();
            if value.is_empty() {
                continue;
            }
            let number = || {
                value.parse::<u64>().map_err(|_| {
                    format!("{} {value:?} is not a number (unix seconds)", COLUMNS[col])
                })
            };
            match COLUMNS[col] {
                "address" => raw.address = value.to_string(),
                "tenant" => raw.tenant = Some(value.to_string()),
                "stream" => raw.stream = Some(value.to_string()),
                "reason" => raw.reason = Some(value.to_string()),
                "source" => raw.source = Some(value.to_string()),
                "created" => raw.created = Some(number()?),
                _ => raw.expires = Some(number()?),
            }
        }
        Ok(raw)
    }

    fn entry(&self, raw: Raw) -> Result<Entry, String> {
        if raw.address.trim().is_empty() {
            return Err("no address".to_string());
        }
        let address = normalize(&raw.address).map_err(|e| e.to_string())?;
        let tenant = raw
            .tenant
            .filter(|t| !t.is_empty())
            .unwrap_or_else(|| ALL_TENANTS.to_string());
        if tenant.len() > 128 || tenant.chars().any(|c| c.is_control() || c.is_whitespace()) {
            return Err(format!(
                "tenant {tenant:?}: at most 128 printable characters without spaces, or * for every tenant"
            ));
        }
        let stream = raw.stream.unwrap_or_default();
        if !stream_ok(&stream) {
            return Err(format!(
                "stream {stream:?}: expected empty (every stream), class:NAME, list:NAME or campaign:NAME"
            ));
        }
        let reason = raw
            .reason
            .filter(|r| !r.is_empty())
            .unwrap_or_else(|| "manual".to_string());
        if reason.len() > 64 || reason.chars().any(|c| c.is_control()) {
            return Err(format!(
                "reason {reason:?}: at most 64 printable characters"
            ));
        }
        Ok(Entry {
            address,
            tenant,
            stream,
            reason,
            source: raw
                .source
                .filter(|s| !s.is_empty())
                .unwrap_or_else(|| self.source.clone()),
            created: raw.created.unwrap_or(self.now),
            expires: raw.expires.unwrap_or(0),
        })
    }
}

/// Whether `stream` names a scope an entry can have.
pub fn stream_ok(stream: &str) -> bool {
    stream.is_empty()
        || ["class:", "list:", "campaign:"]
            .iter()
            .any(|p| stream.starts_with(p) && stream.len() > p.len())
}

fn csv_fields(line: &[u8]) -> Result<Vec<String>, String> {
    let mut r = csv::ReaderBuilder::new()
        .has_headers(false)
        .flexible(true)
        .from_reader(line);
    let mut rec = csv::StringRecord::new();
    match r.read_record(&mut rec) {
        Ok(true) => Ok(rec.iter().map(str::to_string).collect()),
        Ok(false) => Ok(Vec::new()),
        Err(e) => Err(format!("not a CSV record: {e}")),
    }
}

/// A first line naming columns: no field is an address, and one is `address`.
fn is_header(fields: &[String]) -> bool {
    !fields.iter().any(|f| f.contains('@'))
        && fields
            .iter()
            .any(|f| f.trim().eq_ignore_ascii_case("address"))
}

fn header_columns(fields: &[String]) -> Result<Vec<usize>, String> {
    fields
        .iter()
        .map(|f| {
            let name = f.trim().to_ascii_lowercase();
            COLUMNS.iter().position(|c| *c == name).ok_or_else(|| {
                format!(
                    "header names an unknown column {name:?}; columns are {}",
                    COLUMNS.join(",")
                )
            })
        })
        .collect()
}

/// The first line of a CSV export (CRLF-terminated).
pub fn csv_header() -> String {
    let mut s = COLUMNS.join(",");
    s.push_str("\r\n");
    s
}

/// One entry as a line of `format` (CSV lines end in CRLF, JSONL lines in LF).
pub fn render(format: Format, e: &Entry) -> String {
    match format {
        Format::Jsonl => {
            let mut s = serde_json::json!({
                "address": e.address, "tenant": e.tenant, "stream": e.stream,
                "reason": e.reason, "source": e.source, "created": e.created,
                "expires": e.expires,
            })
            .to_string();
            s.push('\n');
            s
        }
        Format::Csv => {
            let mut w = csv::WriterBuilder::new()
                .terminator(csv::Terminator::CRLF)
                .from_writer(Vec::with_capacity(96));
            let created = e.created.to_string();
            let expires = e.expires.to_string();
            let fields = [
                e.address.as_str(),
                &e.tenant,
                &e.stream,
                &e.reason,
                &e.source,
                &created,
                &expires,
            ];
            // Writing into a Vec cannot fail.
            let _ = w.write_record(fields);
            let bytes = w.into_inner().unwrap_or_default();
            String::from_utf8_lossy(&bytes).into_owned()
        }
    }
}

/// Splits a byte stream arriving in chunks into lines (LF-terminated; a last line without
/// one is returned by [`Lines::finish`]). A line longer than `max` is an error for that line
/// and its bytes are skipped up to the next LF, so one bad line cannot fill memory.
pub struct Lines {
    buf: Vec<u8>,
    max: usize,
    /// Skipping the rest of an over-long line.
    skipping: bool,
}

/// One item out of [`Lines`].
#[derive(Debug, PartialEq, Eq)]
pub enum Line {
    Text(Vec<u8>),
    /// A line longer than the limit (its bytes are dropped).
    TooLong,
}

impl Lines {
    pub fn new(max: usize) -> Lines {
        Lines {
            buf: Vec::new(),
            max,
            skipping: false,
        }
    }

    /// Feed a chunk; complete lines are pushed to `out`.
    pub fn push(&mut self, mut chunk: &[u8], out: &mut Vec<Line>) {
        while !chunk.is_empty() {
            match memchr::memchr(b'\n', chunk) {
                Some(i) => {
                    if self.skipping {
                        self.skipping = false;
                    } else if self.buf.len() + i > self.max {
                        self.buf.clear();
                        out.push(Line::TooLong);
                    } else {
                        self.buf.extend_from_slice(&chunk[..i]);
                        out.push(Line::Text(std::mem::take(&mut self.buf)));
                    }
                    chunk = &chunk[i + 1..];
                }
                None => {
                    if !self.skipping {
                        if self.buf.len() + chunk.len() > self.max {
                            self.buf.clear();
                            self.skipping = true;
                            out.push(Line::TooLong);
                        } else {
                            self.buf.extend_from_slice(chunk);
                        }
                    }
                    return;
                }
            }
        }
    }

    /// The last line when the input did not end with LF.
    pub fn finish(&mut self) -> Option<Line> {
        if self.skipping {
            self.skipping = false;
            return None;
        }
        (!self.buf.is_empty()).then(|| Line::Text(std::mem::take(&mut self.buf)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn read_all(format: Format, input: &str) -> Vec<Result<Option<Entry>, LineError>> {
        let mut r = LineReader::new(format, "test", 100);
        input.split('\n').map(|l| r.read(l.as_bytes())).collect()
    }

    #[test]
    fn csv_lines_with_and_without_a_header() {
        let got = read_all(
            Format::Csv,
            "Alice@X.test\r\n\"\"\"a b\"\"@x.test\",acme,class:promotional,unsubscribe,,5,9\n\nbad",
        );
        let a = got[0].clone().expect("ok").expect("entry");
        assert_eq!(
            (a.address.as_str(), a.tenant.as_str(), a.reason.as_str()),
            ("alice@x.test", "*", "manual")
        );
        assert_eq!(
            (a.source.as_str(), a.created, a.expires),
            ("import:test", 100, 0)
        );
        let b = got[1].clone().expect("ok").expect("entry");
        assert_eq!(b.address, "\"a b\"@x.test");
        assert_eq!(
            (b.tenant.as_str(), b.stream.as_str(), b.reason.as_str()),
            ("acme", "class:promotional", "unsubscribe")
        );
        assert_eq!((b.created, b.expires), (5, 9));
        assert_eq!(got[2], Ok(None), "blank line");
        assert_eq!(got[3].clone().unwrap_err().line, 4);

        let got = read_all(Format::Csv, "reason,address\ncomplaint,c@x.test");
        assert_eq!(got[0], Ok(None), "header");
        let c = got[1].clone().expect("ok").expect("entry");
        assert_eq!(
            (c.address.as_str(), c.reason.as_str()),
            ("c@x.test", "complaint")
        );
    }

    #[test]
    fn bad_lines_name_their_line_and_what_is_wrong() {
        let cases = [
            (Format::Csv, "no-at-sign", "no-at-sign"),
            (Format::Csv, "a@x.test,*,stream-x", "stream"),
            (Format::Csv, "a@x.test,*,,manual,,yesterday", "created"),
            (Format::Csv, "a@x.test,*,,,,,,extra", "8 fields"),
            (Format::Csv, "a@x.test,ac me", "tenant"),
            (Format::Csv, "address,colour\n", "colour"),
            (Format::Jsonl, "{\"addr\": \"a@x.test\"}", "addr"),
            (Format::Jsonl, "not json", "JSON"),
            (Format::Jsonl, "{\"address\": \"\"}", "no address"),
        ];
        for (format, line, want) in cases {
            let mut r = LineReader::new(format, "t", 1);
            let _ = r.read(b"");
            let e = r.read(line.as_bytes()).expect_err(line);
            assert_eq!(e.line, 2, "{line}");
            assert!(e.message.contains(want), "{line}: {e}");
        }
    }

    #[test]
    fn rendered_lines_read_back_the_same() {
        let e = Entry {
            address: "\"a,b\"@x.test".into(),
            tenant: "acme".into(),
            stream: "list:news".into(),
            reason: "unsubscribe".into(),
            source: "policy".into(),
            created: 7,
            expires: 8,
        };
        for format in [Format::Csv, Format::Jsonl] {
            let line = render(format, &e);
            let mut r = LineReader::new(format, "t", 1);
            if format == Format::Csv {
                assert_eq!(r.read(csv_header().trim_end().as_bytes()), Ok(None));
            }
            let back = r
                .read(line.trim_end_matches(['\r', '\n']).as_bytes())
                .expect("ok")
                .expect("entry");
            assert_eq!(back, e, "{format:?}: {line}");
        }
    }

    #[test]
    fn lines_split_across_chunks_and_over_long_lines_are_bounded() {
        let mut l = Lines::new(10);
        let mut out = Vec::new();
        for chunk in [&b"ab"[..], b"c\nde", b"f\n0123456789abc", b"def\nok"] {
            l.push(chunk, &mut out);
        }
        assert_eq!(
            out,
            vec![
                Line::Text(b"abc".to_vec()),
                Line::Text(b"def".to_vec()),
                Line::TooLong
            ]
        );
        assert_eq!(l.finish(), Some(Line::Text(b"ok".to_vec())));
    }
}
