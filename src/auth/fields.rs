//! Splitting a message's header section into fields, for DKIM: sans-I/O, bytes in, slices out.
//!
//! Each field comes back as (raw name, raw value) where the value starts after the colon and
//! keeps its folding and final CRLF: the shape mail-auth's header canonicalisation expects.
//! A line without a colon comes back as (line, ""). The header section ends at the first empty
//! line; the body starts after it (or is empty when there is none).

use mail_auth::common::headers::HeaderStream;

pub struct Fields<'a> {
    message: &'a [u8],
    pos: usize,
    body_start: Option<usize>,
}

impl<'a> Fields<'a> {
    pub fn new(message: &'a [u8]) -> Self {
        Fields {
            message,
            pos: 0,
            body_start: None,
        }
    }

    /// The body: everything after the empty line ending the header section. Reads past any
    /// fields not yet iterated.
    pub fn body(&mut self) -> &'a [u8] {
        while self.next().is_some() {}
        self.body_start
            .and_then(|s| self.message.get(s..))
            .unwrap_or_default()
    }
}

impl<'a> Iterator for Fields<'a> {
    type Item = (&'a [u8], &'a [u8]);

    fn next(&mut self) -> Option<Self::Item> {
        let msg = self.message;
        let rest = msg.get(self.pos..).filter(|r| !r.is_empty())?;
        if self.body_start.is_some() {
            return None;
        }
        for sep in [&b"\r\n"[..], b"\n"] {
            if rest.starts_with(sep) {
                self.body_start = Some(self.pos + sep.len());
                self.pos = msg.len();
                return None;
            }
        }
        // The field ends at a line end not followed by WSP (a folded line continues it).
        let mut end = self.pos;
        loop {
            match memchr::memchr(b'\n', &msg[end..]) {
                Some(nl) => {
                    end += nl + 1;
                    if !matches!(msg.get(end), Some(b' ' | b'\t')) {
                        break;
                    }
                }
                None => {
                    end = msg.len();
                    break;
                }
            }
        }
        let field = &msg[self.pos..end];
        self.pos = end;
        Some(match memchr::memchr(b':', field) {
            Some(colon) => (&field[..colon], &field[colon + 1..]),
            None => (field, &b""[..]),
        })
    }
}

impl<'a> HeaderStream<'a> for Fields<'a> {
    fn next_header(&mut self) -> Option<(&'a [u8], &'a [u8])> {
        self.next()
    }

    fn body(&mut self) -> &'a [u8] {
        Fields::body(self)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// (message, fields as (name, value), body)
    type Case = (
        &'static str,
        &'static [(&'static str, &'static str)],
        &'static str,
    );

    #[test]
    fn splits_fields_and_body() {
        let table: &[Case] = &[
            (
                "A: 1\r\nB:2\r\n\r\nbody",
                &[("A", " 1\r\n"), ("B", "2\r\n")],
                "body",
            ),
            (
                "A: 1\r\n  more\r\n\tand more\r\nB: x\r\n\r\n\r\nb\r\n",
                &[("A", " 1\r\n  more\r\n\tand more\r\n"), ("B", " x\r\n")],
                "\r\nb\r\n",
            ),
            ("A: 1\r\nB: 2\r\n", &[("A", " 1\r\n"), ("B", " 2\r\n")], ""),
            ("A: 1", &[("A", " 1")], ""),
            ("\r\nbody only", &[], "body only"),
            ("", &[], ""),
            (
                "Subject : x\r\nnocolon\r\n\r\n",
                &[("Subject ", " x\r\n"), ("nocolon\r\n", "")],
                "",
            ),
            (
                "A: 1\r\n\r\nB: not a header\r\n",
                &[("A", " 1\r\n")],
                "B: not a header\r\n",
            ),
        ];
        for (msg, fields, body) in table {
            let mut it = Fields::new(msg.as_bytes());
            let got: Vec<(String, String)> = (&mut it)
                .map(|(n, v)| {
                    (
                        String::from_utf8_lossy(n).into_owned(),
                        String::from_utf8_lossy(v).into_owned(),
                    )
                })
                .collect();
            let want: Vec<(String, String)> = fields
                .iter()
                .map(|(n, v)| (n.to_string(), v.to_string()))
                .collect();
            assert_eq!(got, want, "{msg:?}");
            assert_eq!(String::from_utf8_lossy(it.body()), *body, "{msg:?}");
        }
    }
}
