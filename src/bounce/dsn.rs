//! Building RFC 3464 delivery status notifications with mail-builder.
//!
//! The DSN is `multipart/report; report-type=delivery-status` with three parts: a human
//! explanation, the machine-readable status (`message/delivery-status`, or
//! `message/global-delivery-status` per RFC 6533 when an address is not ASCII), and the
//! original message's header (`text/rfc822-headers`).

use mail_builder::MessageBuilder;
use mail_builder::headers::content_type::ContentType;
use mail_builder::headers::raw::Raw;
use mail_builder::mime::MimePart;

use crate::delivery::Reply;
use crate::message::headers;

/// One failed recipient.
pub struct FailedRecipient<'a> {
    pub address: &'a str,
    pub reply: &'a Reply,
    /// Remote MTA that gave the reply, if any.
    pub remote_host: Option<&'a str>,
}

/// Everything needed to write the notification.
pub struct DsnInput<'a> {
    /// Our host name (Reporting-MTA, From: MAILER-DAEMON@...).
    pub reporting_mta: &'a str,
    /// Who gets the DSN: the original envelope sender.
    pub to: &'a str,
    pub queue_id: &'a str,
    /// RFC 5322 date of arrival.
    pub arrival_date: String,
    pub failed: Vec<FailedRecipient<'a>>,
    /// The original message (only its header is included).
    pub original: &'a [u8],
}

fn status_of(r: &Reply) -> String {
    if r.enhanced.is_empty() {
        if r.is_permanent() { "5.0.0" } else { "4.0.0" }.to_string()
    } else {
        r.enhanced.clone()
    }
}

/// Build the DSN message (CRLF line ends).
pub fn build(input: &DsnInput<'_>) -> std::io::Result<Vec<u8>> {
    let global = !input.failed.iter().all(|f| f.address.is_ascii());
    let mut human = format!(
        "This is the mail system at host {}.\r\n\r\n\
         Your message (queue id {}) could not be delivered to one or more recipients.\r\n\
         It has been returned with the details below.\r\n\r\n",
        input.reporting_mta, input.queue_id
    );
    for f in &input.failed {
        human.push_str(&format!(
            "<{}>: {}{}\r\n",
            f.address,
            f.remote_host
                .map(|h| format!("host {h} said: "))
                .unwrap_or_default(),
            f.reply
        ));
    }
    let mut status = format!(
        "Reporting-MTA: dns; {}\r\nX-Gannet-Queue-ID: {}\r\nArrival-Date: {}\r\n",
        input.reporting_mta, input.queue_id, input.arrival_date
    );
    for f in &input.failed {
        let addr_type = if f.address.is_ascii() {
            "rfc822"
        } else {
            "utf-8"
        };
        status.push_str(&format!(
            "\r\nFinal-Recipient: {addr_type}; {}\r\nAction: failed\r\nStatus: {}\r\n",
            f.address,
            status_of(f.reply)
        ));
        if let Some(h) = f.remote_host {
            status.push_str(&format!("Remote-MTA: dns; {h}\r\n"));
        }
        status.push_str(&format!(
            "Diagnostic-Code: smtp; {}\r\n",
            f.reply.to_string().replace(['\r', '\n'], " ")
        ));
    }
    let header_end = headers::header_end(input.original);
    let original_headers = input.original[..header_end].to_vec();
    let status_type = if global {
        "message/global-delivery-status"
    } else {
        "message/delivery-status"
    };
    let report = MimePart::new(
        ContentType::new("multipart/report").attribute("report-type", "delivery-status"),
        vec![
            MimePart::new(
                ContentType::new("text/plain").attribute("charset", "utf-8"),
                human,
            )
            .transfer_encoding(if global { "8bit" } else { "7bit" }),
            MimePart::new(ContentType::new(status_type), status).transfer_encoding(if global {
                "8bit"
            } else {
                "7bit"
            }),
            MimePart::new(ContentType::new("text/rfc822-headers"), original_headers)
                .transfer_encoding("8bit"),
        ],
    );
    let daemon = format!("MAILER-DAEMON@{}", input.reporting_mta);
    // mail-builder would name the machine in the Message-ID; use our configured host name.
    let message_id = format!(
        "dsn.{}.{:016x}@{}",
        input.queue_id,
        rand::random::<u64>(),
        input.reporting_mta
    );
    MessageBuilder::new()
        .message_id(message_id)
        .from(("Mail Delivery System", daemon.as_str()))
        .to(input.to)
        .subject("Undelivered Mail Returned to Sender")
        .header("Auto-Submitted", Raw::new("auto-replied"))
        .body(report)
        .write_to_vec()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dsn_has_report_structure_and_original_headers() {
        let reply = Reply::new(550, "5.1.1", "no such user");
        let dsn = build(&DsnInput {
            reporting_mta: "gannet.test",
            to: "sender@a.test",
            queue_id: "Q1",
            arrival_date: "Mon, 1 Jan 2024 00:00:00 +0000".into(),
            failed: vec![FailedRecipient {
                address: "bad@b.test",
                reply: &reply,
                remote_host: Some("mx.b.test"),
            }],
            original: b"Subject: orig\r\nFrom: sender@a.test\r\n\r\nsecret body\r\n",
        })
        .unwrap();
        let s = String::from_utf8_lossy(&dsn);
        assert!(s.contains("multipart/report"), "{s}");
        assert!(
            s.contains("report-type=\"delivery-status\"")
                || s.contains("report-type=delivery-status"),
            "{s}"
        );
        assert!(s.contains("Final-Recipient: rfc822; bad@b.test"), "{s}");
        assert!(s.contains("Status: 5.1.1"), "{s}");
        assert!(s.contains("Action: failed"), "{s}");
        assert!(
            s.contains("Diagnostic-Code: smtp; 550 5.1.1 no such user"),
            "{s}"
        );
        assert!(s.contains("Subject: orig"), "{s}");
        assert!(!s.contains("secret body"), "{s}");
        let parsed = mail_parser::MessageParser::default().parse(&dsn).unwrap();
        assert_eq!(parsed.parts.len(), 4, "{s}");
    }
}
