//! Header-level edits Gannet makes to messages: find the header block, read a field, add
//! `Message-ID` / `Date` when missing, remove Gannet's own control headers (`X-Gannet-*`).
//!
//! Works on raw bytes with CRLF line ends; never re-encodes or reorders what it does not touch,
//! so DKIM signatures made later cover exactly what is delivered.

/// Byte offset where the body starts (just after the blank line), or the message length when
/// there is no body separator (a header-only message).
pub fn header_end(msg: &[u8]) -> usize {
    if msg.starts_with(b"\r\n") {
        return 2;
    }
    // Built once: a searcher per call was a visible share of intake's CPU.
    static BLANK_LINE: std::sync::LazyLock<memchr::memmem::Finder<'static>> =
        std::sync::LazyLock::new(|| memchr::memmem::Finder::new(b"\r\n\r\n"));
    match BLANK_LINE.find(msg) {
        Some(p) => p + 4,
        None => msg.len(),
    }
}

/// Iterate over header fields as (name, raw value including folded continuation lines, byte
/// range of the whole field including its final CRLF).
pub fn fields(msg: &[u8]) -> Vec<(String, &[u8], std::ops::Range<usize>)> {
    let end = header_end(msg);
    let block = &msg[..end];
    let mut out = Vec::new();
    let mut pos = 0;
    while pos < block.len() {
        // Just past the next CRLF at or after `from` (a bare LF does not end a line).
        let line_end = |from: usize| {
            let mut at = from;
            while let Some(p) = memchr::memchr(b'\n', &block[at..]) {
                let nl = at + p;
                if nl > from && block[nl - 1] == b'\r' {
                    return nl + 1;
                }
                at = nl + 1;
            }
            block.len()
        };
        let mut end = line_end(pos);
        if end - pos <= 2 {
            break; // the blank separator line
        }
        while end < block.len() && matches!(block[end], b' ' | b'\t') {
            end = line_end(end);
        }
        let field = &block[pos..end];
        if let Some(colon) = memchr::memchr(b':', field) {
            let name = String::from_utf8_lossy(&field[..colon]).trim().to_string();
            out.push((name, &field[colon + 1..], pos..end));
        }
        pos = end;
    }
    out
}

/// The unfolded, trimmed value of the first field called `name` (case-insensitive).
pub fn get(msg: &[u8], name: &str) -> Option<String> {
    fields(msg)
        .into_iter()
        .find(|(n, _, _)| n.eq_ignore_ascii_case(name))
        .map(|(_, v, _)| {
            let v = String::from_utf8_lossy(v);
            v.replace("\r\n", "").trim().to_string()
        })
}

/// Remove every field called `name` (case-insensitive). Returns whether anything was removed.
pub fn remove(msg: &mut Vec<u8>, name: &str) -> bool {
    let ranges: Vec<_> = fields(msg)
        .into_iter()
        .filter(|(n, _, _)| n.eq_ignore_ascii_case(name))
        .map(|(_, _, r)| r)
        .collect();
    for r in ranges.iter().rev() {
        msg.drain(r.clone());
    }
    !ranges.is_empty()
}

/// Insert header lines (each ending in CRLF) at the top of the message.
pub fn prepend(msg: &mut Vec<u8>, lines: &[u8]) {
    msg.splice(0..0, lines.iter().copied());
}

/// Append a field at the end of the header block (before the blank line).
pub fn append(msg: &mut Vec<u8>, line: &[u8]) {
    let end = header_end(msg);
    let at = if end >= 2 && msg[..end].ends_with(b"\r\n\r\n") {
        end - 2
    } else if end == 2 && msg.starts_with(b"\r\n") {
        0
    } else {
        // No separator: the message is all headers; make sure it ends in CRLF first.
        if !msg.ends_with(b"\r\n") && !msg.is_empty() {
            msg.extend_from_slice(b"\r\n");
        }
        msg.len()
    };
    msg.splice(at..at, line.iter().copied());
}

/// Add `Message-ID` and `Date` when the submission lacks them (RFC 5321 §6.4 allows a
/// submission server to add them). `id_seed` must be unique (the queue id works).
pub fn ensure_message_id_and_date(msg: &mut Vec<u8>, hostname: &str, id_seed: &str) {
    let present = fields(msg);
    let has = |n: &str| present.iter().any(|(f, _, _)| f.eq_ignore_ascii_case(n));
    let (has_id, has_date) = (has("Message-ID"), has("Date"));
    if !has_date {
        append(msg, format!("Date: {}\r\n", rfc2822_now()).as_bytes());
    }
    if !has_id {
        append(
            msg,
            format!("Message-ID: <{id_seed}@{hostname}>\r\n").as_bytes(),
        );
    }
}

/// The current time as an RFC 5322 date-time in UTC.
pub fn rfc2822_now() -> String {
    httpdate::fmt_http_date(std::time::SystemTime::now()).replace("GMT", "+0000")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_folded_fields() {
        let m = b"Subject: a\r\n b\r\nFrom: x@y\r\n\r\nbody";
        assert_eq!(get(m, "subject").as_deref(), Some("a b"));
        assert_eq!(get(m, "FROM").as_deref(), Some("x@y"));
        assert_eq!(get(m, "To"), None);
    }

    #[test]
    fn removes_all_instances() {
        let mut m =
            b"X-Gannet-Class: a\r\nFrom: x@y\r\nx-gannet-class: b\r\n c\r\n\r\nbody".to_vec();
        assert!(remove(&mut m, "X-Gannet-Class"));
        assert_eq!(m, b"From: x@y\r\n\r\nbody");
    }

    #[test]
    fn adds_missing_id_and_date_in_header_block() {
        let mut m = b"From: x@y\r\n\r\nbody\r\n".to_vec();
        ensure_message_id_and_date(&mut m, "h.test", "abc");
        let s = String::from_utf8(m).unwrap();
        assert!(s.contains("Message-ID: <abc@h.test>\r\n\r\nbody"), "{s}");
        assert!(s.contains("\r\nDate: "), "{s}");
    }

    #[test]
    fn keeps_existing_id() {
        let mut m = b"Message-ID: <x@y>\r\nDate: Mon, 1 Jan 2024 00:00:00 +0000\r\n\r\nb".to_vec();
        let before = m.clone();
        ensure_message_id_and_date(&mut m, "h", "abc");
        assert_eq!(m, before);
    }

    /// A bare LF or CR inside a field does not end it; CRLF does.
    #[test]
    fn only_crlf_ends_a_field() {
        let m = b"A: x\ny\r\nB: \r\r\nC: z\r\n\r\nbody";
        let f = fields(m);
        let names: Vec<&str> = f.iter().map(|(n, _, _)| n.as_str()).collect();
        assert_eq!(names, ["A", "B", "C"]);
        assert_eq!(f[0].1, b" x\ny\r\n");
        assert_eq!(f[1].2, 8..14);
    }

    #[test]
    fn header_only_message() {
        let mut m = b"From: x@y\r\n".to_vec();
        append(&mut m, b"Date: d\r\n");
        assert_eq!(m, b"From: x@y\r\nDate: d\r\n");
    }
}
