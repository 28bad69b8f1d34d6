//! Real-world SMTP replies of large providers with the category the shipped rules must give
//! them. Shared by the classification table test, the benchmark and the e2e scripted sink, so
//! all three exercise the same replies. Data only; never used on the delivery path.
//!
//! Sources: Google "SMTP error reference" (support.google.com/a/answer/3726730), Yahoo
//! "SMTP error codes" (senders.yahooinc.com/smtp-error-codes), Microsoft "NDRs in Exchange
//! Online" (learn.microsoft.com), Apple "If your email to iCloud is rejected"
//! (support.apple.com/102322), Interia help "Dlaczego wiadomość nie została dostarczona?",
//! Orange postmaster OFR codes; GMX/WEB.DE, Mail.ru, WP and Onet replies as quoted from
//! delivery logs in public forum threads. IP addresses replaced by documentation addresses.

/// (provider, reply line, expected category).
pub const REAL_REPLIES: &[(&str, &str, &str)] = &[
    // Gmail
    (
        "google",
        "550-5.1.1 The email account that you tried to reach does not exist. Please try double-checking the recipient's email address for typos or unnecessary spaces. Learn more at https://support.google.com/mail/?p=NoSuchUser",
        "bad-mailbox",
    ),
    (
        "google",
        "550-5.2.1 The email account that you tried to reach is disabled. Learn more at https://support.google.com/mail/?p=DisabledUser",
        "inactive-mailbox",
    ),
    (
        "google",
        "552-5.2.2 The email account that you tried to reach is over quota. Please direct the recipient to https://support.google.com/mail/?p=OverQuotaPerm",
        "mailbox-full",
    ),
    (
        "google",
        "452-4.2.2 The email account that you tried to reach is over quota. Please direct the recipient to https://support.google.com/mail/?p=OverQuotaTemp",
        "mailbox-full",
    ),
    (
        "google",
        "450-4.2.1 The user you are trying to contact is receiving mail at a rate that prevents additional messages from being delivered. Please resend your message at a later point.",
        "rate-limited",
    ),
    (
        "google",
        "421-4.7.28 Our system has detected an unusual rate of unsolicited mail originating from your IP address. To protect our users from spam, mail sent from your IP address has been temporarily rate limited.",
        "rate-limited",
    ),
    (
        "google",
        "550-5.7.1 Our system has detected an unusual rate of unsolicited mail originating from your IP address. To protect our users from spam, mail sent from your IP address has been blocked.",
        "reputation-block",
    ),
    (
        "google",
        "550-5.7.1 [192.0.2.1] Our system has detected that this message is likely unsolicited mail. To reduce the amount of spam sent to Gmail, this message has been blocked.",
        "spam-content",
    ),
    (
        "google",
        "552-5.7.0 This message was blocked because its content presents a potential security issue. Please visit https://support.google.com/mail/?p=BlockedMessage",
        "spam-content",
    ),
    (
        "google",
        "550-5.7.26 This mail is unauthenticated, which poses a security risk to the sender and Gmail users, and has been blocked. The sender must authenticate with at least one of SPF or DKIM.",
        "auth-failure",
    ),
    (
        "google",
        "550-5.7.26 Unauthenticated email from example.com is not accepted due to domain's DMARC policy. Please contact the administrator of example.com domain.",
        "auth-failure",
    ),
    (
        "google",
        "421-4.7.26 This mail has been rate limited because it is unauthenticated. Gmail requires all senders to authenticate with either SPF or DKIM.",
        "auth-failure",
    ),
    (
        "google",
        "550-5.7.25 The IP address sending this message does not have a PTR record setup, or the corresponding forward DNS entry does not point to the sending IP.",
        "auth-failure",
    ),
    (
        "google",
        "421-4.7.0 [192.0.2.1] Our system has detected that this message is suspicious due to the very low reputation of the sending IP address.",
        "reputation-block",
    ),
    (
        "google",
        "552-5.3.4 Your message exceeded Google's message size limits. Please visit https://support.google.com/mail/?p=MaxSizeError",
        "message-too-large",
    ),
    (
        "google",
        "421-4.3.0 Temporary System Problem. Try again later.",
        "server-error",
    ),
    (
        "google",
        "550-5.7.1 The user or domain that you are sending to (or from) has a policy that prohibited the mail that you sent.",
        "policy",
    ),
    // Yahoo / AOL
    (
        "yahoo",
        "554 delivery error: dd This user doesn't have a yahoo.com account (someone@yahoo.com) [0] - mta1234.mail.ne1.yahoo.com",
        "bad-mailbox",
    ),
    (
        "yahoo",
        "554 delivery error: dd Sorry your message to someone@yahoo.com cannot be delivered. This mailbox is disabled (554.30). - mta1234.mail.bf1.yahoo.com",
        "inactive-mailbox",
    ),
    (
        "yahoo",
        "552 1 Requested mail action aborted, mailbox not found",
        "bad-mailbox",
    ),
    (
        "yahoo",
        "421 4.7.0 [TSS04] Messages from 192.0.2.1 temporarily deferred due to unexpected volume or user complaints - 4.16.55.1; see https://postmaster.yahooinc.com/error-codes",
        "rate-limited",
    ),
    (
        "yahoo",
        "553 5.7.2 [TSS09] All messages from 192.0.2.1 will be permanently deferred; Retrying will NOT succeed. See https://postmaster.yahooinc.com/error-codes",
        "reputation-block",
    ),
    (
        "yahoo",
        "421 4.7.1 [TS03] All messages from 192.0.2.1 will be permanently deferred; Retrying will NOT succeed.",
        "reputation-block",
    ),
    (
        "yahoo",
        "550 5.7.9 This mail has been blocked because the sender is unauthenticated. Yahoo requires all senders to authenticate with either SPF or DKIM.",
        "auth-failure",
    ),
    (
        "yahoo",
        "554 5.7.9 Message not accepted for policy reasons. See https://postmaster.yahooinc.com/error-codes",
        "policy",
    ),
    (
        "yahoo",
        "421 4.7.0 [TSS11] Excessive unknown recipients - possible Open Relay (#4.7.1)",
        "rate-limited",
    ),
    // Outlook.com / Hotmail
    (
        "outlook-consumer",
        "550 5.5.0 Requested action not taken: mailbox unavailable (-2034147455:308:-2147467259)",
        "bad-mailbox",
    ),
    (
        "outlook-consumer",
        "550 5.7.1 Unfortunately, messages from [192.0.2.1] weren't sent. Please contact your Internet service provider since part of their network is on our block list (S3150). You can also refer your provider to http://mail.live.com/mail/troubleshooting.aspx#errors.",
        "reputation-block",
    ),
    (
        "outlook-consumer",
        "550 5.7.1 Unfortunately, messages from [192.0.2.1] weren't sent. Please contact your Internet service provider since part of their network is on our block list (S3140).",
        "reputation-block",
    ),
    (
        "outlook-consumer",
        "451 4.7.650 The mail server [192.0.2.1] has been temporarily rate limited due to IP reputation. For e-mail delivery information, see https://postmaster.live.com (S775)",
        "reputation-block",
    ),
    (
        "outlook-consumer",
        "451 4.7.500 Server busy. Please try again later from [192.0.2.1]. (S77714)",
        "rate-limited",
    ),
    (
        "outlook-consumer",
        "550 5.7.509 Access denied, sending domain example.com does not pass DMARC verification and has a DMARC policy of reject.",
        "auth-failure",
    ),
    (
        "outlook-consumer",
        "550 5.7.515 Access denied, sending domain [example.com] doesn't meet the required authentication level.",
        "auth-failure",
    ),
    (
        "outlook-consumer",
        "550 5.4.1 Recipient address rejected: Access denied. AS(201806281) [DB5EUR03FT012.eop-EUR03.prod.protection.outlook.com]",
        "bad-mailbox",
    ),
    // Microsoft 365 / Exchange Online
    (
        "microsoft365",
        "550 5.1.10 RESOLVER.ADR.RecipientNotFound; Recipient not found by SMTP address lookup",
        "bad-mailbox",
    ),
    (
        "microsoft365",
        "550 5.4.1 Recipient address rejected: Access denied. AS(201806281) [AM5EUR02FT043.eop-EUR02.prod.protection.outlook.com]",
        "bad-mailbox",
    ),
    (
        "microsoft365",
        "550 5.7.606 Access denied, banned sending IP [192.0.2.1]. To request removal from this list please visit https://sender.office.com/",
        "reputation-block",
    ),
    (
        "microsoft365",
        "550 5.7.708 Service unavailable. Access denied, traffic not accepted from this IP.",
        "reputation-block",
    ),
    (
        "microsoft365",
        "421 4.3.2 The maximum number of concurrent server connections has exceeded a limit, closing transmission channel",
        "rate-limited",
    ),
    (
        "microsoft365",
        "554 5.2.2 mailbox full; STOREDRV.Deliver.Exception:QuotaExceededException.MapiExceptionShutoffQuotaExceeded",
        "mailbox-full",
    ),
    (
        "microsoft365",
        "554 5.6.211 Invalid MIME Content: Single text value size (32780) exceeded allowed maximum (32768) for the 'X-Header' property.",
        "protocol",
    ),
    (
        "microsoft365",
        "550 5.7.520 Access denied, Your organization does not allow external forwarding.",
        "policy",
    ),
    (
        "microsoft365",
        "550 5.4.310 DNS domain example.invalid does not exist [Message=InfoDomainNonexistent] [LastAttemptedServerName=example.invalid]",
        "bad-domain",
    ),
    (
        "microsoft365",
        "550 5.4.316 Message expired, connection refused(Socket error code 10061)",
        "expired",
    ),
    // Apple iCloud
    (
        "icloud",
        "550 5.1.1 <someone@icloud.com>: user does not exist",
        "bad-mailbox",
    ),
    (
        "icloud",
        "552 5.2.2 <someone@icloud.com>: user is over quota",
        "mailbox-full",
    ),
    (
        "icloud",
        "554 5.7.1 [CS01] Message rejected due to local policy. Please visit https://support.apple.com/en-us/HT204137",
        "policy",
    ),
    (
        "icloud",
        "554 5.7.1 [HM08] Message rejected due to local policy. Please visit https://support.apple.com/en-us/HT204137",
        "policy",
    ),
    (
        "icloud",
        "550 5.7.0 Blocked - see https://support.proofpoint.com/dnsbl-lookup.cgi?ip=192.0.2.1",
        "reputation-block",
    ),
    // GMX / WEB.DE
    (
        "united-internet",
        "550 Requested action not taken: mailbox unavailable",
        "bad-mailbox",
    ),
    (
        "united-internet",
        "550 Requested action not taken: mailbox unavailable invalid DNS PTR resource record, IP=192.0.2.1",
        "policy",
    ),
    (
        "united-internet",
        "554-gmx.net (mxgmx016) Nemesis ESMTP Service not available 554-No SMTP service 554-IP address is block listed.",
        "reputation-block",
    ),
    (
        "united-internet",
        "554-Transaction failed 554-Reject due to policy restrictions. 554 For explanation visit https://web.de/email/senderguidelines?ip=192.0.2.1&c=hi",
        "policy",
    ),
    (
        "united-internet",
        "421-mx.gmx.net (mxgmx117) Nemesis ESMTP Service not available 421-Service unavailable 421-Reject due to temporary policy restrictions",
        "reputation-block",
    ),
    (
        "united-internet",
        "552 Requested mail action aborted: exceeded storage allocation",
        "mailbox-full",
    ),
    // Orange / Wanadoo
    (
        "orange",
        "550 5.1.1 Adresse d au moins un destinataire invalide. Invalid recipient. OFR_416 [416]",
        "bad-mailbox",
    ),
    (
        "orange",
        "552 5.2.2 Boite du destinataire pleine. Recipient overquota. OFR_417 [417]",
        "mailbox-full",
    ),
    (
        "orange",
        "421 mwinf5c10 ME Trop de connexions, veuillez verifier votre configuration. Too many connections, slow down. OFR005_104 [104]",
        "rate-limited",
    ),
    (
        "orange",
        "421 mwinf5c78 ME Service refuse. Veuillez essayer plus tard. Service refused, please try later. OFR006_102 Ref http://csi.cloudmark.com [102]",
        "reputation-block",
    ),
    // Mail.ru
    (
        "mailru",
        "550 Message was not accepted -- invalid mailbox. Local mailbox someone@mail.ru is unavailable: user not found",
        "bad-mailbox",
    ),
    (
        "mailru",
        "550 Message was not accepted -- invalid mailbox. Local mailbox someone@mail.ru is unavailable: account is disabled",
        "inactive-mailbox",
    ),
    (
        "mailru",
        "550 spam message rejected. Please visit https://help.mail.ru/notspam-support/id?c=abc or report details to abuse@corp.mail.ru. Error code: ABC. ID: 123.",
        "spam-content",
    ),
    (
        "mailru",
        "451 Ratelimit exceeded for mailbox someone@mail.ru. Try again later.",
        "rate-limited",
    ),
    (
        "mailru",
        "552 Message was not accepted -- mailbox is full",
        "mailbox-full",
    ),
    // WP / o2
    (
        "wp",
        "550 5.1.1 <someone@wp.pl>: Recipient address rejected: User unknown",
        "bad-mailbox",
    ),
    (
        "wp",
        "552 5.2.2 <someone@wp.pl>: Mailbox full, quota exceeded",
        "mailbox-full",
    ),
    ("wp", "550 5.7.1 Message rejected as spam", "spam-content"),
    // Onet
    (
        "onet",
        "550 5.1.1 <someone@onet.pl>: Recipient address rejected: User unknown in virtual mailbox table",
        "bad-mailbox",
    ),
    (
        "onet",
        "450 4.7.1 Sending limit exceeded, try again later",
        "rate-limited",
    ),
    // Interia
    ("interia", "550 5.1.1 Account not found", "bad-mailbox"),
    (
        "interia",
        "550 5.2.1 Mailbox not available",
        "inactive-mailbox",
    ),
    (
        "interia",
        "550 5.7.1 Recipient doesn't want your mail",
        "policy",
    ),
    (
        "interia",
        "550 5.7.0 [SPF] 192.0.2.1 is not allowed to send mail from example.com",
        "auth-failure",
    ),
    // Generic MTAs (no provider): Postfix, Exim, Sendmail, qmail
    (
        "",
        "550 5.1.1 <someone@example.org>: Recipient address rejected: User unknown in local recipient table",
        "bad-mailbox",
    ),
    (
        "",
        "550 5.7.1 Service unavailable; client [192.0.2.1] blocked using zen.spamhaus.org",
        "reputation-block",
    ),
    ("", "452 4.2.2 Mailbox full", "mailbox-full"),
    (
        "",
        "550 sorry, no mailbox here by that name. (#5.1.1)",
        "bad-mailbox",
    ),
    (
        "",
        "554 5.3.4 Message too big for system",
        "message-too-large",
    ),
    (
        "",
        "450 4.1.8 <bounce@example.com>: Sender address rejected: Domain not found",
        "policy",
    ),
];
