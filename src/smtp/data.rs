//! DATA content decoding (sans-I/O): finds the end of the message, removes dot-stuffing, and
//! turns bare CR / bare LF into CRLF for what is handed on.
//!
//! Owns the byte-level rules for message content after `354`. Built on smtp-proto's
//! `DataReceiver`, with two corrections made here rather than in the dependency:
//!
//! - smtp-proto#14: a fresh receiver does not treat its first byte as the start of a line, so an
//!   empty message (`.` right after 354) or a leading `..` on the first line are mishandled.
//!   [`DataDecoder`] primes every receiver with a synthetic CRLF written to a scratch buffer.
//! - smtp-proto ends DATA on `CRLF . CR… CR LF` (extra CRs before the LF). Only `CRLF . CRLF`
//!   ends DATA here: anything else could let a client smuggle commands past an upstream MTA
//!   that sees the same bytes as content. When the receiver stops on such a line, the decoder
//!   restores the bytes it dropped and carries on.
//!
//! A bare LF never ends DATA (`\n.\n`, `\r\n.\n`, `\n.\r\n` are content). Never does I/O.

use smtp_proto::request::receiver::DataReceiver;

/// Incremental decoder for one DATA section. Feed it the bytes that follow `354` in any
/// chunking; it appends the unstuffed content to the caller's buffer and says when the
/// terminating `CRLF.CRLF` has been consumed.
pub struct DataDecoder {
    rx: DataReceiver,
    scratch: Vec<u8>,
}

impl Default for DataDecoder {
    fn default() -> Self {
        Self::new()
    }
}

impl DataDecoder {
    pub fn new() -> Self {
        let mut decoder = DataDecoder {
            rx: DataReceiver::new(),
            scratch: Vec::with_capacity(2),
        };
        decoder.prime();
        decoder
    }

    /// Reset the receiver to "at the start of a line" (the smtp-proto#14 work-around).
    fn prime(&mut self) {
        self.rx = DataReceiver::new();
        self.scratch.clear();
        let done = self.rx.ingest(&mut b"\r\n".iter(), &mut self.scratch);
        debug_assert!(!done, "a lone CRLF never ends DATA");
    }

    /// Consume bytes from `input`, appending decoded content to `out`. Returns true once the
    /// end-of-data line has been consumed; `input` then starts with whatever the client sent
    /// after it (pipelined commands). Returns false when `input` is exhausted.
    ///
    /// `out` must hold only this message's content (or be empty): the decoder looks at its last
    /// byte. A caller trimming `out` (oversized messages) must keep its last two bytes.
    pub fn feed(&mut self, input: &mut &[u8], out: &mut Vec<u8>) -> bool {
        loop {
            let mut bytes = input.iter();
            let done = self.rx.ingest(&mut bytes, out);
            *input = bytes.as_slice();
            if !done {
                return false;
            }
            // On a real `CRLF . CRLF` smtp-proto pops the CR it pushed after the dot, leaving
            // `out` empty or ending in the LF of the previous line. Ending in CR means it
            // stopped on `. CR CR… LF`: put back the CR it popped and the LF it consumed, and
            // continue at the start of the next line.
            if out.last() == Some(&b'\r') {
                out.extend_from_slice(b"\r\n");
                self.prime();
                continue;
            }
            return true;
        }
    }
}

/// Does `content` contain a CR or LF that is not part of a CRLF pair?
pub fn has_bare_line_ends(content: &[u8]) -> bool {
    let mut at = 0;
    while let Some(p) = memchr::memchr2(b'\r', b'\n', &content[at..]) {
        let p = at + p;
        if content[p] == b'\n' || content.get(p + 1) != Some(&b'\n') {
            return true;
        }
        at = p + 2;
    }
    false
}

/// Append `content` to `out` with every bare CR and bare LF replaced by CRLF (DKIM and the
/// SMTP client downstream need CRLF line ends). CRLF pairs are copied unchanged; the scan is
/// memchr-based, so content that is already clean costs one pass and one copy.
pub fn append_normalised(content: &[u8], out: &mut Vec<u8>) {
    out.reserve(content.len());
    let mut copied = 0;
    let mut at = 0;
    while let Some(p) = memchr::memchr2(b'\r', b'\n', &content[at..]) {
        let p = at + p;
        if content[p] == b'\r' && content.get(p + 1) == Some(&b'\n') {
            at = p + 2;
            continue;
        }
        out.extend_from_slice(&content[copied..p]);
        out.extend_from_slice(b"\r\n");
        copied = p + 1;
        at = p + 1;
    }
    out.extend_from_slice(&content[copied..]);
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Feed `chunks` in order; return (content, rest of the chunk that held the end) once the
    /// end of data is seen, or None if it never is.
    fn decode(chunks: &[&[u8]]) -> Option<(Vec<u8>, Vec<u8>)> {
        let mut d = DataDecoder::new();
        let mut out = Vec::new();
        for chunk in chunks {
            let mut input = *chunk;
            if d.feed(&mut input, &mut out) {
                return Some((out, input.to_vec()));
            }
            assert!(input.is_empty(), "decoder stopped early without finishing");
        }
        None
    }

    /// (what, chunks, Some((content, bytes left after the end)) or None = DATA not ended)
    #[allow(clippy::type_complexity)]
    const TABLE: &[(&str, &[&[u8]], Option<(&[u8], &[u8])>)] = &[
        (
            "simple message",
            &[b"Subject: x\r\n\r\nhello\r\n.\r\n"],
            Some((b"Subject: x\r\n\r\nhello\r\n", b"")),
        ),
        (
            "empty message: '.' right after 354 (smtp-proto#14)",
            &[b".\r\n"],
            Some((b"", b"")),
        ),
        (
            "empty message split into single bytes",
            &[b".", b"\r", b"\n"],
            Some((b"", b"")),
        ),
        (
            "leading '..' on the first line is unstuffed (smtp-proto#14)",
            &[b"..hidden\r\nb\r\n.\r\n"],
            Some((b".hidden\r\nb\r\n", b"")),
        ),
        (
            "first line is a lone stuffed dot",
            &[b"..\r\n.\r\n"],
            Some((b".\r\n", b"")),
        ),
        (
            "stuffed dots on later lines, split across reads",
            &[b"a\r\n", b".", b".b\r\n.", b"\r\n"],
            Some((b"a\r\n.b\r\n", b"")),
        ),
        (
            "end split between CR and LF",
            &[b"a\r\n.\r", b"\n"],
            Some((b"a\r\n", b"")),
        ),
        (
            "pipelined command after the end is left in the input",
            &[b"a\r\n.\r\nQUIT\r\n"],
            Some((b"a\r\n", b"QUIT\r\n")),
        ),
        (
            "bare LF smuggling: \\n.\\n does not end DATA",
            &[b"a\n.\nMAIL FROM:<x@y>\r\n"],
            None,
        ),
        (
            "bare LF smuggling: \\n.\\n is content, the real end follows",
            &[b"a\n.\nMAIL FROM:<x@y>\r\n.\r\n"],
            Some((b"a\n.\nMAIL FROM:<x@y>\r\n", b"")),
        ),
        (
            "\\r\\n.\\n does not end DATA (dot removed as stuffing)",
            &[b"a\r\n.\nRCPT TO:<x@y>\r\n.\r\n"],
            Some((b"a\r\n\nRCPT TO:<x@y>\r\n", b"")),
        ),
        (
            "\\n.\\r\\n does not end DATA",
            &[b"a\n.\r\nDATA\r\n.\r\n"],
            Some((b"a\n.\r\nDATA\r\n", b"")),
        ),
        (
            "\\r.\\r\\n does not end DATA",
            &[b"a\r.\r\nb\r\n.\r\n"],
            Some((b"a\r.\r\nb\r\n", b"")),
        ),
        (
            "CRLF . CR CR LF does not end DATA (smtp-proto would stop here)",
            &[b"a\r\n.\r\r\nb\r\n.\r\n"],
            Some((b"a\r\n\r\r\nb\r\n", b"")),
        ),
        (
            "CRLF . CR CR LF split across reads",
            &[b"a\r\n.\r", b"\r", b"\nb\r\n.\r\n"],
            Some((b"a\r\n\r\r\nb\r\n", b"")),
        ),
        (
            "first line '.\\r\\r\\n' is not the end either",
            &[b".\r\r\n.\r\n"],
            Some((b"\r\r\n", b"")),
        ),
        (
            "8-bit content passes untouched",
            &[b"Subject: caf\xc3\xa9\r\n\r\n\xff\xfe\x00\r\n.\r\n"],
            Some((b"Subject: caf\xc3\xa9\r\n\r\n\xff\xfe\x00\r\n", b"")),
        ),
    ];

    #[test]
    fn data_table() {
        for (what, chunks, expected) in TABLE {
            let got = decode(chunks);
            let expected = expected.map(|(c, r)| (c.to_vec(), r.to_vec()));
            assert_eq!(
                got.as_ref().map(|(c, r)| (
                    String::from_utf8_lossy(c).into_owned(),
                    String::from_utf8_lossy(r).into_owned()
                )),
                expected.as_ref().map(|(c, r)| (
                    String::from_utf8_lossy(c).into_owned(),
                    String::from_utf8_lossy(r).into_owned()
                )),
                "{what}"
            );
            assert_eq!(got, expected, "{what} (bytes)");
        }
    }

    /// Every table entry decodes the same when fed one byte at a time.
    #[test]
    fn data_table_byte_by_byte() {
        for (what, chunks, expected) in TABLE {
            let all: Vec<u8> = chunks.concat();
            let mut d = DataDecoder::new();
            let mut out = Vec::new();
            let mut result = None;
            for (i, b) in all.iter().enumerate() {
                let mut input: &[u8] = std::slice::from_ref(b);
                if d.feed(&mut input, &mut out) {
                    result = Some((out.clone(), all[i + 1..].to_vec()));
                    break;
                }
            }
            let expected = expected.map(|(c, r)| (c.to_vec(), r.to_vec()));
            assert_eq!(result, expected, "{what} (byte by byte)");
        }
    }

    #[test]
    fn normalises_bare_line_ends() {
        for (input, expected) in [
            (&b"a\r\nb\r\n"[..], &b"a\r\nb\r\n"[..]),
            (b"a\nb\n", b"a\r\nb\r\n"),
            (b"a\rb\r", b"a\r\nb\r\n"),
            (b"a\r\r\nb", b"a\r\n\r\nb"),
            (b"\n\r", b"\r\n\r\n"),
            (b"\n.\n", b"\r\n.\r\n"),
            (b"", b""),
            (b"no line end", b"no line end"),
        ] {
            let mut out = b"X".to_vec();
            append_normalised(input, &mut out);
            assert_eq!(
                String::from_utf8_lossy(&out[1..]),
                String::from_utf8_lossy(expected),
                "{:?}",
                String::from_utf8_lossy(input)
            );
            assert_eq!(
                has_bare_line_ends(input),
                input != expected,
                "{:?}",
                String::from_utf8_lossy(input)
            );
        }
    }
}
