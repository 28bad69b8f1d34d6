//! The CSV export of the send log, written straight from the stored columns.
//!
//! Owns: [`Reader::export_csv`], which reads the rows of a filter and writes their CSV
//! records (the columns of [`render::CSV_COLUMNS`]) without building a JSON value per row:
//! seals are opened into reused buffers, the event's JSON is split into its top-level fields
//! without copying them, and each cell is written into the output as it is found (from the
//! JSON, or from its column when the row's `data` holds only the kind's facts). The result
//! is byte for byte what `render::csv_row` makes of the row's JSON (`Reader::events`); a row
//! this path does not cover (an erased person, unreadable JSON, a field name with escapes)
//! goes through that slower path instead.
//! Never does: decide which rows match (the SQL is `Reader::select`'s), or write anything but
//! into the caller's buffer.
//!
//! Why by hand: the `csv` crate writes records of owned or borrowed cells, but the cells here
//! come from three places (columns, opened seals, raw JSON) with JSON-specific rules for
//! `details`; going through `serde_json::Value` first cost about 40% of an export's time.

use std::collections::BTreeMap;
use std::io::Write;

use rusqlite::types::{FromSqlError, Type};
use serde_json::value::RawValue;

use super::render::{self, CSV_COLUMNS};
use super::store::{EventFilter, RawRow, Reader, StoreError, col, person_key, render_row};

/// Rows an export reads per call of [`Reader::export_csv`] (the API's streamed exports: one
/// chunk per read, each with a fresh reader so an erasure between chunks takes effect).
pub const CHUNK_ROWS: usize = 5000;

/// What one call of [`Reader::export_csv`] wrote.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ExportChunk {
    /// Rows written (`f.limit` of them when more may follow).
    pub rows: usize,
    /// `seq` of the last row written (the cursor of the next call), 0 when none.
    pub last_seq: u64,
}

/// A CSV cell as `render::csv_row` writes it: quoted when it holds a comma, a quote or a line
/// break, with quotes doubled.
fn put_field(out: &mut Vec<u8>, v: &[u8]) {
    if memchr::memchr3(b',', b'"', b'\r', v).is_some() || memchr::memchr(b'\n', v).is_some() {
        out.push(b'"');
        for part in v.split_inclusive(|&b| b == b'"') {
            out.extend_from_slice(part);
            if part.last() == Some(&b'"') {
                out.push(b'"');
            }
        }
        out.push(b'"');
    } else {
        out.extend_from_slice(v);
    }
}

/// The JSON text of `raw` as `serde_json::Value::to_string` would print it after parsing:
/// the stored JSON was written by serde_json, so strings without escapes, integers, booleans
/// and null print as they are; floats, escaped strings, objects (whose keys a `Value` sorts)
/// and arrays go through a `Value` so the text matches exactly.
fn canonical(raw: &RawValue) -> std::borrow::Cow<'_, str> {
    let t = raw.get();
    let verbatim = match t.as_bytes().first() {
        Some(b'"') => !t.contains('\\'),
        Some(b't' | b'f' | b'n') => true,
        Some(b'-' | b'0'..=b'9') => !t.contains(['.', 'e', 'E']),
        _ => false,
    };
    if verbatim {
        return t.into();
    }
    match serde_json::from_str::<serde_json::Value>(t) {
        Ok(v) => v.to_string().into(),
        Err(_) => t.into(),
    }
}

/// A JSON field as a CSV cell (`render::cell`): strings unquoted, null empty, others as JSON.
fn put_cell(out: &mut Vec<u8>, raw: Option<&RawValue>, scratch: &mut String) {
    let Some(raw) = raw else { return };
    let t = raw.get();
    match t.as_bytes().first() {
        Some(b'n') => {}
        Some(b'"') if !t.contains('\\') => put_field(out, &t.as_bytes()[1..t.len() - 1]),
        Some(b'"') => {
            scratch.clear();
            if let Ok(s) = serde_json::from_str::<String>(t) {
                scratch.push_str(&s);
            }
            put_field(out, scratch.as_bytes());
        }
        _ => put_field(out, canonical(raw).as_bytes()),
    }
}

/// Reused buffers of one export.
#[derive(Default)]
struct Scratch {
    rcpt: Vec<u8>,
    sender: Vec<u8>,
    data: Vec<u8>,
    cell: String,
    details: Vec<u8>,
}

impl Reader {
    /// Append to `out` the CSV records (no header: `render::csv_header`) of the events
    /// matching `f`, after `f.after`, at most `f.limit`, in log order.
    pub fn export_csv(
        &mut self,
        f: &EventFilter,
        out: &mut Vec<u8>,
    ) -> Result<ExportChunk, StoreError> {
        let info = self.info.clone();
        self.export_csv_inner(f, out).map_err(info.err())
    }

    fn export_csv_inner(
        &mut self,
        f: &EventFilter,
        out: &mut Vec<u8>,
    ) -> rusqlite::Result<ExportChunk> {
        let (sql, args) = self.select(f);
        let mut s = Scratch::default();
        let mut chunk = ExportChunk {
            rows: 0,
            last_seq: 0,
        };
        {
            let mut stmt = self.conn.prepare_cached(&sql)?;
            let mut rows = stmt.query(rusqlite::params_from_iter(args))?;
            while let Some(r) = rows.next()? {
                let seq: i64 = r.get(col::SEQ)?;
                chunk.rows += 1;
                chunk.last_seq = seq.max(0) as u64;
                let bad = |i: usize, t: Type| {
                    move |e: FromSqlError| rusqlite::Error::FromSqlConversionFailure(i, t, e.into())
                };
                let text = |i: usize| -> rusqlite::Result<&str> {
                    r.get_ref(i)?.as_str().map_err(bad(i, Type::Text))
                };
                let blob = |i: usize| -> rusqlite::Result<Option<&[u8]>> {
                    r.get_ref(i)?.as_blob_or_null().map_err(bad(i, Type::Blob))
                };
                let id = text(col::ID)?;
                let aad = id.as_bytes();
                let (rcpt_hash, sender_hash) = (blob(col::RCPT_HASH)?, blob(col::SENDER_HASH)?);
                let (rcpt, sender, data_key) =
                    (blob(col::RCPT)?, blob(col::SENDER)?, blob(col::DATA_KEY)?);
                let data = r
                    .get_ref(col::DATA)?
                    .as_blob()
                    .map_err(bad(col::DATA, Type::Blob))?;
                let mut open = |hash: Option<&[u8]>,
                                sealed: Option<&[u8]>,
                                buf: &mut Vec<u8>|
                 -> rusqlite::Result<bool> {
                    buf.clear();
                    let (Some(h), Some(sealed)) = (hash, sealed) else {
                        return Ok(false);
                    };
                    Ok(
                        match person_key(&self.conn, &mut self.salts, &self.info.key, h)? {
                            Some(k) => k.open_into(aad, sealed, buf),
                            None => false,
                        },
                    )
                };
                let rcpt_ok = open(rcpt_hash, rcpt, &mut s.rcpt)?;
                let sender_ok = open(sender_hash, sender, &mut s.sender)?;
                let data_ok = match data_key {
                    None => true,
                    Some(_) => open(data_key, Some(data), &mut s.data)?,
                };
                let json: &[u8] = if data_key.is_none() { data } else { &s.data };
                let fields = if data_ok {
                    serde_json::from_slice::<BTreeMap<&str, &RawValue>>(json).ok()
                } else {
                    None
                };
                let readable =
                    (rcpt_hash.is_none() || rcpt_ok) && (sender_hash.is_none() || sender_ok);
                let Some(fields) = fields.filter(|_| readable) else {
                    let raw = RawRow::from_row(r)?;
                    let row = render_row(&self.conn, &mut self.salts, &self.info.key, raw)?;
                    out.extend_from_slice(render::csv_row(&row).as_bytes());
                    continue;
                };
                let variant = text(col::VARIANT)?;
                for (i, column) in CSV_COLUMNS.iter().enumerate() {
                    if i > 0 {
                        out.push(b',');
                    }
                    match *column {
                        "seq" => {
                            let _ = write!(out, "{seq}");
                        }
                        "recipient" => put_field(out, String::from_utf8_lossy(&s.rcpt).as_bytes()),
                        "sender" => put_field(out, String::from_utf8_lossy(&s.sender).as_bytes()),
                        "variant" if !variant.is_empty() => put_field(out, variant.as_bytes()),
                        "details" => {
                            s.details.clear();
                            for (k, v) in fields.iter().filter(|(k, _)| !CSV_COLUMNS.contains(k)) {
                                s.details
                                    .push(if s.details.is_empty() { b'{' } else { b',' });
                                // A key borrowed from the JSON has no escapes, so it
                                // prints as it was stored.
                                s.details.push(b'"');
                                s.details.extend_from_slice(k.as_bytes());
                                s.details.extend_from_slice(b"\":");
                                s.details.extend_from_slice(canonical(v).as_bytes());
                            }
                            if !s.details.is_empty() {
                                s.details.push(b'}');
                            }
                            put_field(out, &s.details);
                        }
                        name => match fields.get(name) {
                            Some(v) => put_cell(out, Some(v), &mut s.cell),
                            // A row of `DataFormat::Kind`: its column holds the field.
                            None => match name {
                                "time_us" | "attempt" => {
                                    let at = if name == "time_us" {
                                        col::TIME_US
                                    } else {
                                        col::ATTEMPT
                                    };
                                    let n: i64 = r.get(at)?;
                                    let _ = write!(out, "{n}");
                                }
                                "id" => put_field(out, id.as_bytes()),
                                "type" => put_field(out, text(col::KIND)?.as_bytes()),
                                "queue_id" => put_field(out, text(col::QUEUE_ID)?.as_bytes()),
                                "message_id" => put_field(out, text(col::MESSAGE_ID)?.as_bytes()),
                                "tenant" => put_field(out, text(col::TENANT)?.as_bytes()),
                                "campaign" => put_field(out, text(col::CAMPAIGN)?.as_bytes()),
                                "class" => put_field(out, text(col::CLASS)?.as_bytes()),
                                "pool" => put_field(out, text(col::POOL)?.as_bytes()),
                                _ => {}
                            },
                        },
                    }
                }
                out.extend_from_slice(b"\r\n");
            }
        }
        Ok(chunk)
    }
}
