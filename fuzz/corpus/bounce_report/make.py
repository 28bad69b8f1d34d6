#!/usr/bin/env python3
"""Writes the bounce fixtures (*.eml) of this folder. Each mail is written by hand from an RFC
example or the public documentation / widely published samples of the MTA or provider named in
its X-Fixture-Origin header; X-Fixture-Expect says what `gannet bounce classify` must find
(kind; rcpt; status; category; msgid). Run it again after editing; the .eml files are committed.
Every returned message has Message-ID <orig-NN@gannet.test> and recipient rcptNN@example.net so
the e2e test can substitute a real send's values."""
import os
HERE = os.path.dirname(os.path.abspath(__file__))

def orig(n, rcpt=None, headers_only=False):
    rcpt = rcpt or f"rcpt{n:02d}@example.net"
    h = (f"From: News <news@sender.example>\r\nTo: {rcpt}\r\nSubject: Our December offers\r\n"
         f"Date: Thu, 03 Dec 2026 10:00:00 +0000\r\nMessage-ID: <orig-{n:02d}@gannet.test>\r\n"
         "MIME-Version: 1.0\r\nContent-Type: text/plain; charset=utf-8\r\n")
    return h if headers_only else h + "\r\nHello, here are our offers.\r\n"

def write(name, origin, expect, headers, body):
    text = f"X-Fixture-Origin: {origin}\r\nX-Fixture-Expect: {expect}\r\n" + headers + "\r\n" + body
    with open(os.path.join(HERE, name), "w", newline="") as f:
        f.write(text.replace("\r\n", "\n").replace("\n", "\r\n"))

def dsn(n, name, origin, category, reporting, human, recip_fields, status, from_="MAILER-DAEMON@mx.example.net (Mail Delivery System)",
        subject="Undelivered Mail Returned to Sender", global_=False, headers_only=False, extra_msg_fields="", rcpt=None):
    rcpt = rcpt or f"rcpt{n:02d}@example.net"
    b = f"b{n:02d}=_report"
    ds = "message/global-delivery-status" if global_ else "message/delivery-status"
    ret_type = ("message/global-headers" if global_ else "text/rfc822-headers") if headers_only else ("message/global" if global_ else "message/rfc822")
    headers = (f"From: {from_}\r\nTo: news@sender.example\r\nSubject: {subject}\r\n"
               f"Date: Thu, 03 Dec 2026 10:05:00 +0000\r\nMessage-ID: <dsn-{n:02d}@mx.example.net>\r\n"
               "Auto-Submitted: auto-replied\r\nMIME-Version: 1.0\r\n"
               f"Content-Type: multipart/report; report-type=delivery-status;\r\n\tboundary=\"{b}\"\r\n")
    body = (f"This is a MIME-encapsulated message.\r\n\r\n--{b}\r\nContent-Type: text/plain; charset=us-ascii\r\n\r\n{human}\r\n\r\n"
            f"--{b}\r\nContent-Type: {ds}\r\n\r\nReporting-MTA: dns; {reporting}\r\n{extra_msg_fields}\r\n{recip_fields}\r\n\r\n"
            f"--{b}\r\nContent-Type: {ret_type}\r\n\r\n{orig(n, rcpt, headers_only)}\r\n--{b}--\r\n")
    write(name, origin, f"kind=dsn; rcpt={rcpt}; status={status}; category={category}; msgid=orig-{n:02d}@gannet.test", headers, body)

def rf(n, status, diag, action="failed", remote=None, original=True, rcpt=None, typ="rfc822"):
    rcpt = rcpt or f"rcpt{n:02d}@example.net"
    s = ""
    if original:
        s += f"Original-Recipient: {typ}; {rcpt}\r\n"
    s += f"Final-Recipient: {typ}; {rcpt}\r\nAction: {action}\r\nStatus: {status}\r\n"
    if remote:
        s += f"Remote-MTA: dns; {remote}\r\n"
    if diag:
        s += f"Diagnostic-Code: smtp; {diag}\r\n"
    return s

# ---- RFC 3464 / 6533 DSNs from MTAs and providers ----------------------------------------
dsn(1, "01-rfc3464-example.eml", "RFC 3464 appendix C (example of a failed delivery), adapted",
    "bad-mailbox", "cs.utk.edu", "Your message could not be delivered to one recipient.",
    rf(1, "5.1.1", "550 5.1.1 <rcpt01@example.net>... User unknown", remote="mx.example.net"), "5.1.1")
dsn(2, "02-postfix-user-unknown.eml", "Postfix bounce(8) DSN as documented in postfix.org DSN_README, user unknown",
    "bad-mailbox", "mail.sender.example",
    "This is the mail system at host mail.sender.example.\r\n\r\nI'm sorry to have to inform you that your message could not\r\nbe delivered to one or more recipients.",
    rf(2, "5.1.1", "550 5.1.1 <rcpt02@example.net>: Recipient address rejected: User unknown in virtual mailbox table", remote="mx.example.net"),
    "5.1.1", extra_msg_fields="X-Postfix-Queue-ID: 4F2C91E0A1\r\nArrival-Date: Thu,  3 Dec 2026 10:00:00 +0000\r\n")
dsn(3, "03-postfix-mailbox-full.eml", "Postfix DSN, remote answered 552 5.2.2 (RFC 3463 mailbox full)",
    "mailbox-full", "mail.sender.example", "This is the mail system at host mail.sender.example.",
    rf(3, "5.2.2", "552 5.2.2 <rcpt03@example.net>: Mailbox full", remote="mx.example.net"), "5.2.2")
dsn(4, "04-postfix-delayed.eml", "Postfix delay notification (Action: delayed), postfix.org DSN_README",
    "rate-limited", "mail.sender.example", "This is the mail system at host mail.sender.example.\r\n\r\n####################################################################\r\n# THIS IS A WARNING ONLY.  YOU DO NOT NEED TO RESEND YOUR MESSAGE. #\r\n####################################################################",
    rf(4, "4.7.0", "421 4.7.0 Too many connections, try again later", action="delayed", remote="mx.example.net"), "4.7.0",
    subject="Delayed Mail (still being retried)")
dsn(5, "05-exim-dsn.eml", "Exim 4 bounce with DSN (bounce_message_file default text, exim.org spec ch. 48)",
    "bad-mailbox", "mx1.sender.example",
    "This message was created automatically by mail delivery software.\r\n\r\nA message that you sent could not be delivered to one or more of its\r\nrecipients. This is a permanent error.",
    rf(5, "5.0.0", "550 No Such User Here", remote="mx.example.net", original=False), "5.0.0",
    from_="Mail Delivery System <Mailer-Daemon@mx1.sender.example>", subject="Mail delivery failed: returning message to sender")
dsn(6, "06-sendmail-dsn.eml", "Sendmail 8 DSN (RFC 3464 output of sendmail, cf/README), user unknown",
    "bad-mailbox", "mail.sender.example",
    "The original message was received at Thu, 3 Dec 2026 10:00:00 GMT\r\nfrom localhost [127.0.0.1]\r\n\r\n   ----- The following addresses had permanent fatal errors -----\r\n<rcpt06@example.net>\r\n    (reason: 550 5.1.1 <rcpt06@example.net>... User unknown)",
    rf(6, "5.1.1", "550 5.1.1 <rcpt06@example.net>... User unknown", remote="mx.example.net"), "5.1.1",
    subject="Returned mail: see transcript for details")
dsn(7, "07-gmail-dsn.eml", "Gmail DSN 'Address not found' (support.google.com/mail/answer/6596, reply text of answer 6596)",
    "bad-mailbox", "googlemail.com",
    "** Address not found **\r\n\r\nYour message wasn't delivered to rcpt07@example.net because the address couldn't be found, or is unable to receive mail.",
    rf(7, "5.1.1", "550-5.1.1 The email account that you tried to reach does not exist. Please try double-checking the recipient's email address for typos or unnecessary spaces. Learn more at https://support.google.com/mail/?p=NoSuchUser", remote="gmail-smtp-in.l.google.com", original=False),
    "5.1.1", from_="Mail Delivery Subsystem <mailer-daemon@googlemail.com>", subject="Delivery Status Notification (Failure)")
dsn(8, "08-gmail-over-quota.eml", "Gmail DSN, 552 5.2.2 over quota (Gmail SMTP error reference, support.google.com/a/answer/3726730)",
    "mailbox-full", "googlemail.com", "** Message not delivered **",
    rf(8, "5.2.2", "552-5.2.2 The recipient's inbox is out of storage space. Please direct the recipient to https://support.google.com/mail/?p=OverQuotaPerm", remote="gmail-smtp-in.l.google.com"),
    "5.2.2", from_="Mail Delivery Subsystem <mailer-daemon@googlemail.com>", subject="Delivery Status Notification (Failure)")
dsn(9, "09-o365-ndr.eml", "Exchange Online NDR 550 5.1.10 RecipientNotFound (learn.microsoft.com, 'Fix email delivery issues for error code 5.1.10')",
    "bad-mailbox", "AM0PR01MB1234.eurprd01.prod.exchangelabs.com",
    "Your message to rcpt09@example.net couldn't be delivered.\r\nrcpt09 wasn't found at example.net.",
    rf(9, "5.1.10", "smtp;550 5.1.10 RESOLVER.ADR.RecipientNotFound; Recipient not found by SMTP address lookup", remote="example-net.mail.protection.outlook.com"),
    "5.1.10", from_="Microsoft Outlook <MicrosoftExchange329e71ec88ae4615bbc36ab6ce41109e@sender.example>", subject="Undeliverable: Our December offers")
dsn(10, "10-exchange-onprem.eml", "Exchange Server 2016 NDR 550 5.1.1 RESOLVER.ADR.RecipNotFound (learn.microsoft.com, NDRs in Exchange Server)",
    "bad-mailbox", "EX01.sender.example", "Delivery has failed to these recipients or groups:\r\n\r\nrcpt10@example.net\r\nThe email address you entered couldn't be found.",
    rf(10, "5.1.1", "smtp;550 5.1.1 RESOLVER.ADR.RecipNotFound; not found"), "5.1.1",
    from_="Microsoft Exchange <postmaster@sender.example>", subject="Undeliverable: Our December offers")
dsn(11, "11-ses-dsn.eml", "Amazon SES bounce DSN (docs.aws.amazon.com/ses, 'Email bounce notifications', mailbox simulator bounce@simulator.amazonses.com)",
    "bad-mailbox", "a8-70.smtp-out.amazonses.com", "An error occurred while trying to deliver the mail to the following recipients:\r\nrcpt11@example.net",
    rf(11, "5.1.1", "smtp; 550 5.1.1 user unknown", remote="mx.example.net"), "5.1.1",
    from_="MAILER-DAEMON@amazonses.com", subject="Delivery Status Notification (Failure)")
dsn(12, "12-yahoo-dsn.eml", "Yahoo DSN 554 delivery error: dd This user doesn't have a yahoo.com account (senders.yahooinc.com/smtp-error-codes)",
    "bad-mailbox", "sonic.mail.yahoo.com", "Sorry, we were unable to deliver your message to the following address.",
    rf(12, "5.0.0", "554 delivery error: dd This user doesn't have a yahoo.com account (rcpt12@example.net) [0] - mta1234.mail.ne1.yahoo.com", remote="mta5.am0.yahoodns.net"),
    "5.0.0", from_="MAILER-DAEMON@yahoo.com", subject="Failure Notice")
dsn(13, "13-courier-dsn.eml", "Courier MTA DSN (courier-mta.org courierdsn(8) wording)",
    "bad-mailbox", "mail.sender.example",
    "This is a delivery status notification from mail.sender.example,\r\nrunning the Courier mail server.\r\n\r\nThe original message was received on Thu, 03 Dec 2026 10:00:00 +0000\r\n\r\n<rcpt13@example.net>: delivery to this address failed.",
    rf(13, "5.0.0", "smtp; 550 5.1.1 No such user here", remote="mx.example.net"), "5.0.0",
    from_="Courier mail server at mail.sender.example <MAILER-DAEMON@mail.sender.example>", subject="NOTICE: mail delivery status.")
dsn(14, "14-domino-dsn.eml", "HCL/IBM Domino DSN (Domino SMTP router DSN, help.hcltechsw.com 'Delivery status notifications')",
    "bad-mailbox", "domino.example.net",
    "Your message\r\n\r\n  Subject: Our December offers\r\n\r\nwas not delivered to:\r\n\r\n  rcpt14@example.net\r\n\r\nbecause:\r\n\r\n  User rcpt14 (rcpt14@example.net) not listed in Domino Directory",
    rf(14, "5.0.0", "X-Notes; User rcpt14 (rcpt14@example.net) not listed in Domino Directory"), "5.0.0",
    from_="Postmaster@domino.example.net", subject="DELIVERY FAILURE: User rcpt14 (rcpt14@example.net) not listed in Domino Directory")
dsn(15, "15-rfc6533-global.eml", "RFC 6533 section 6 (message/global-delivery-status with a UTF-8 address)",
    "bad-mailbox", "mail.example.net", "Delivery failed for a recipient with an internationalised address.",
    rf(15, "5.1.1", "550 5.1.1 mailbox unavailable", rcpt="jürgen15@example.net", typ="utf-8"), "5.1.1",
    global_=True, rcpt="jürgen15@example.net")
dsn(16, "16-headers-only.eml", "RFC 3462/6522 report returning text/rfc822-headers only (Postfix with bounce_size_limit / headers-only DSN)",
    "bad-domain", "mail.sender.example", "Host or domain name not found.",
    rf(16, "5.1.2", "Host or domain name not found. Name service error for name=example.net type=MX: Host not found"), "5.1.2", headers_only=True)
dsn(17, "17-outlook-com-blocked.eml", "Outlook.com 550 5.7.1 S3150 blocklist (sendersupport.olc.protection.outlook.com)",
    "reputation-block", "outlook.com", "Delivery has failed.",
    rf(17, "5.7.1", "550 5.7.1 Unfortunately, messages from [203.0.113.7] weren't sent. Please contact your Internet service provider since part of their network is on our block list (S3150).", remote="eur.olc.protection.outlook.com"),
    "5.7.1")
dsn(18, "18-expired.eml", "Postfix DSN for a message that expired in the queue (maximal_queue_lifetime), 4.4.7",
    "expired", "mail.sender.example", "Message could not be delivered for 5 days.",
    rf(18, "4.4.7", "", action="failed"), "4.4.7")
dsn(19, "19-gmx-spam.eml", "GMX/WEB.DE 554 policy restrictions (postmaster.gmx.net error codes; GMX's own rule says policy)",
    "policy", "mout.gmx.net", "Your message was rejected.",
    rf(19, "5.7.0", "554-Transaction failed 554 Reject due to policy restrictions. Message was classified as spam", remote="mx00.emig.gmx.net"), "5.7.0")
dsn(20, "20-dmarc-reject.eml", "DSN for a DMARC rejection (Gmail 550 5.7.26, support.google.com/a/answer/81126)",
    "auth-failure", "googlemail.com", "** Message blocked **",
    rf(20, "5.7.26", "550-5.7.26 Unauthenticated email from sender.example is not accepted due to domain's DMARC policy.", remote="gmail-smtp-in.l.google.com"), "5.7.26")

# ---- non-standard bounces -----------------------------------------------------------------
def plain(n, name, origin, category, status, from_, subject, body, rcpt=None, attach=False):
    rcpt = rcpt or f"rcpt{n:02d}@example.net"
    expect = f"kind=dsn; rcpt={rcpt}; status={status}; category={category}; msgid=orig-{n:02d}@gannet.test"
    if attach:
        b = f"np{n:02d}"
        headers = (f"From: {from_}\r\nTo: news@sender.example\r\nSubject: {subject}\r\nDate: Thu, 03 Dec 2026 10:05:00 +0000\r\n"
                   f"MIME-Version: 1.0\r\nContent-Type: multipart/mixed; boundary=\"{b}\"\r\n")
        body = (f"--{b}\r\nContent-Type: text/plain; charset=us-ascii\r\n\r\n{body}\r\n\r\n--{b}\r\n"
                f"Content-Type: message/rfc822\r\n\r\n{orig(n, rcpt)}\r\n--{b}--\r\n")
    else:
        headers = f"From: {from_}\r\nTo: news@sender.example\r\nSubject: {subject}\r\nDate: Thu, 03 Dec 2026 10:05:00 +0000\r\n"
        body = body + "\r\n" + orig(n, rcpt)
    write(name, origin, expect, headers, body)

plain(21, "21-qmail.eml", "qmail-send bounce format (cr.yp.to/proto/qsbmf.txt, QSBMF)", "bad-mailbox", "5.1.1",
      "MAILER-DAEMON@mail.sender.example", "failure notice",
      "Hi. This is the qmail-send program at mail.sender.example.\r\nI'm afraid I wasn't able to deliver your message to the following addresses.\r\nThis is a permanent error; I've given up. Sorry it didn't work out.\r\n\r\n<rcpt21@example.net>:\r\n192.0.2.25 does not like recipient.\r\nRemote host said: 550 5.1.1 <rcpt21@example.net>: Recipient address rejected: User unknown\r\nGiving up on 192.0.2.25.\r\n\r\n--- Below this line is a copy of the message.\r\n")
plain(22, "22-qmail-quota.eml", "qmail (vpopmail) over-quota bounce, QSBMF", "mailbox-full", "5.2.2",
      "MAILER-DAEMON@mail.sender.example", "failure notice",
      "Hi. This is the qmail-send program at mail.sender.example.\r\nI'm afraid I wasn't able to deliver your message to the following addresses.\r\nThis is a permanent error; I've given up. Sorry it didn't work out.\r\n\r\n<rcpt22@example.net>:\r\nRemote host said: 552 5.2.2 Mailbox quota exceeded\r\n\r\n--- Below this line is a copy of the message.\r\n")
plain(23, "23-exim-plain.eml", "Exim 4 default bounce without DSN (exim.org spec, 'bounce_message_text')", "bad-mailbox", "5.1.1",
      "Mail Delivery System <Mailer-Daemon@mx1.sender.example>", "Mail delivery failed: returning message to sender",
      "This message was created automatically by mail delivery software.\r\n\r\nA message that you sent could not be delivered to one or more of its\r\nrecipients. This is a permanent error. The following address(es) failed:\r\n\r\n  rcpt23@example.net\r\n    host mx.example.net [192.0.2.25]\r\n    SMTP error from remote mail server after RCPT TO:<rcpt23@example.net>:\r\n    550 5.1.1 <rcpt23@example.net>: Recipient address rejected: User unknown\r\n\r\n------ This is a copy of the message, including all the headers. ------\r\n")
plain(24, "24-exim-quota.eml", "Exim 4 appendfile quota bounce ('mailbox is full'), exim.org spec ch. 26", "mailbox-full", "",
      "Mail Delivery System <Mailer-Daemon@mx1.example.net>", "Mail delivery failed: returning message to sender",
      "This message was created automatically by mail delivery software.\r\n\r\nA message that you sent could not be delivered to one or more of its\r\nrecipients. This is a permanent error. The following address(es) failed:\r\n\r\n  rcpt24@example.net\r\n    mailbox is full: retry timeout exceeded\r\n\r\n------ This is a copy of the message, including all the headers. ------\r\n")
plain(25, "25-postfix-plain.eml", "Postfix bounce without MIME report (notify_classes, old 'mail system' format)", "bad-mailbox", "5.1.1",
      "MAILER-DAEMON@mail.sender.example (Mail Delivery System)", "Undelivered Mail Returned to Sender",
      "This is the mail system at host mail.sender.example.\r\n\r\nI'm sorry to have to inform you that your message could not\r\nbe delivered to one or more recipients.\r\n\r\n<rcpt25@example.net>: host mx.example.net[192.0.2.25] said: 550 5.1.1\r\n    <rcpt25@example.net>: Recipient address rejected: User unknown (in reply to\r\n    RCPT TO command)\r\n", attach=True)
plain(26, "26-sendmail-plain.eml", "Sendmail 'Returned mail' without DSN (sendmail transcript format)", "bad-mailbox", "5.1.1",
      "Mail Delivery Subsystem <MAILER-DAEMON@mail.sender.example>", "Returned mail: see transcript for details",
      "The original message was received at Thu, 3 Dec 2026 10:00:00 GMT\r\n\r\n   ----- The following addresses had permanent fatal errors -----\r\n<rcpt26@example.net>\r\n    (reason: 550 5.1.1 <rcpt26@example.net>... User unknown)\r\n\r\n   ----- Transcript of session follows -----\r\n... while talking to mx.example.net.:\r\n>>> RCPT To:<rcpt26@example.net>\r\n<<< 550 5.1.1 <rcpt26@example.net>... User unknown\r\n", attach=True)
plain(27, "27-gmail-legacy.eml", "Gmail legacy text bounce ('Delivery to the following recipient failed permanently')", "bad-mailbox", "5.1.1",
      "Mail Delivery Subsystem <mailer-daemon@googlemail.com>", "Delivery Status Notification (Failure)",
      "Delivery to the following recipient failed permanently:\r\n\r\n     rcpt27@example.net\r\n\r\nTechnical details of permanent failure:\r\nGoogle tried to deliver your message, but it was rejected by the server for the recipient domain example.net by mx.example.net. [192.0.2.25].\r\n\r\nThe error that the other server returned was:\r\n550 5.1.1 <rcpt27@example.net>: Recipient address rejected: User unknown\r\n\r\n----- Original message -----\r\n")
plain(28, "28-yahoo-plain.eml", "Yahoo 'Failure Notice' text bounce, 554.30 disabled mailbox (senders.yahooinc.com/smtp-error-codes)", "inactive-mailbox", "5.0.0",
      "MAILER-DAEMON@yahoo.com", "Failure Notice",
      "Sorry, we were unable to deliver your message to the following address.\r\n\r\n<rcpt28@example.net>:\r\nRemote host said: 554 delivery error: dd Sorry your message to rcpt28@example.net cannot be delivered. This mailbox is disabled (554.30). - mta4003.mail.gq1.yahoo.com\r\n\r\n--- Below this line is a copy of the message.\r\n")
plain(29, "29-exchange-2003.eml", "Exchange 2003 text NDR with '#5.1.1' (Microsoft KB 284204)", "bad-mailbox", "5.1.1",
      "System Administrator <postmaster@example.net>", "Undeliverable: Our December offers",
      "Your message did not reach some or all of the intended recipients.\r\n\r\n      Subject:\tOur December offers\r\n      Sent:\t03/12/2026 10:00\r\n\r\nThe following recipient(s) could not be reached:\r\n\r\n      rcpt29@example.net on 03/12/2026 10:05\r\n            The e-mail account does not exist at the organization this message was sent to.\r\n            <ex.example.net #5.1.1>\r\n", attach=True)
plain(30, "30-domino-plain.eml", "Lotus Domino text failure report (Domino 'was not delivered to' wording)", "bad-mailbox", "",
      "Postmaster@domino.example.net", "DELIVERY FAILURE: User rcpt30 (rcpt30@example.net) not listed in Domino Directory",
      "Your message\r\n\r\n  Subject: Our December offers\r\n\r\nwas not delivered to:\r\n\r\n  rcpt30@example.net\r\n\r\nbecause:\r\n\r\n  User rcpt30 (rcpt30@example.net) not listed in Domino Directory\r\n", attach=True)

# ---- ARF (RFC 5965) ------------------------------------------------------------------------
def arf(n, name, origin, ftype, rcpt_field=True, headers_only=False, ua="SomeGenerator/1.0"):
    rcpt = f"rcpt{n:02d}@example.net"
    b = f"arf{n:02d}"
    headers = (f"From: <abusedesk@fbl.example.com>\r\nTo: fbl@bounces.sender.example\r\nSubject: FW: Our December offers\r\n"
               f"Date: Thu, 03 Dec 2026 11:00:00 +0000\r\nMessage-ID: <arf-{n:02d}@fbl.example.com>\r\nMIME-Version: 1.0\r\n"
               f"Content-Type: multipart/report; report-type=feedback-report;\r\n\tboundary=\"{b}\"\r\n")
    fields = f"Feedback-Type: {ftype}\r\nUser-Agent: {ua}\r\nVersion: 1\r\nOriginal-Mail-From: <news@sender.example>\r\n"
    if rcpt_field:
        fields += f"Original-Rcpt-To: <{rcpt}>\r\n"
    fields += "Arrival-Date: Thu, 03 Dec 2026 10:00:05 +0000\r\nReporting-MTA: dns; mail.fbl.example.com\r\nSource-IP: 192.0.2.1\r\n"
    ret = "text/rfc822-headers" if headers_only else "message/rfc822"
    body = (f"--{b}\r\nContent-Type: text/plain; charset=\"US-ASCII\"\r\nContent-Transfer-Encoding: 7bit\r\n\r\n"
            "This is an email abuse report for an email message received from IP\r\n192.0.2.1 on Thu, 03 Dec 2026 10:00:05 +0000.\r\n\r\n"
            f"--{b}\r\nContent-Type: message/feedback-report\r\n\r\n{fields}\r\n"
            f"--{b}\r\nContent-Type: {ret}\r\nContent-Disposition: inline\r\n\r\n{orig(n, headers_only=headers_only)}\r\n--{b}--\r\n")
    write(name, origin, f"kind=arf; rcpt={rcpt}; status=; category=complaint; msgid=orig-{n:02d}@gannet.test; feedback={ftype}", headers, body)

arf(31, "31-arf-rfc5965.eml", "RFC 5965 appendix B.2 (example with original recipient)", "abuse")
arf(32, "32-arf-headers-only.eml", "RFC 5965 section 2 item f (text/rfc822-headers only, recipient only in To)", "abuse", rcpt_field=False, headers_only=True, ua="Yahoo!-Mail-Feedback/2.0")
arf(33, "33-arf-microsoft-jmrp.eml", "Microsoft JMRP report (sendersupport.olc.protection.outlook.com/pm/junkemail.aspx)", "abuse", ua="Microsoft Junk Mail Reporting Program")
arf(34, "34-arf-fraud.eml", "RFC 5965 section 7.3 (feedback type fraud)", "fraud")

# ---- auto-replies (RFC 3834) and a normal mail ----------------------------------------------
def auto(n, name, origin, headers_extra, subject):
    headers = (f"From: Jane <rcpt{n:02d}@example.net>\r\nTo: news@sender.example\r\nSubject: {subject}\r\n"
               f"Date: Thu, 03 Dec 2026 10:05:00 +0000\r\nIn-Reply-To: <orig-{n:02d}@gannet.test>\r\n{headers_extra}")
    write(name, origin, f"kind=auto-reply; rcpt=; status=; category=; msgid=orig-{n:02d}@gannet.test", headers,
          "I am out of the office until 4 January with no access to email.\r\n")

auto(35, "35-rfc3834-auto-replied.eml", "RFC 3834 section 5 (Auto-Submitted: auto-replied)", "Auto-Submitted: auto-replied\r\n", "Re: Our December offers")
auto(36, "36-exchange-ooo.eml", "Exchange 'Automatic reply' (X-Auto-Response-Suppress, learn.microsoft.com MS-OXCMAIL 2.2.3.2.20)",
     "X-Auto-Response-Suppress: All\r\nAuto-Submitted: auto-generated\r\n", "Automatic reply: Our December offers")
auto(37, "37-vacation-x-autoreply.eml", "vacation(1)/Zimbra style (X-Autoreply: yes, Precedence: bulk)", "X-Autoreply: yes\r\nPrecedence: bulk\r\n", "Out of Office: Our December offers")
auto(38, "38-precedence-auto-reply.eml", "Precedence: auto_reply (de-facto header of several responders)", "Precedence: auto_reply\r\n", "Away")
write("39-not-a-bounce.eml", "an ordinary reply from a person (negative example)", "kind=not-a-bounce; rcpt=; status=; category=; msgid=",
      "From: Jane <rcpt39@example.net>\r\nTo: news@sender.example\r\nSubject: Re: Our December offers\r\nDate: Thu, 03 Dec 2026 10:05:00 +0000\r\n",
      "Thanks, I will have a look.\r\n")
