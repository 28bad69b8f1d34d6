"""Send one message with Python's smtplib, for Gannet's end-to-end tests.

Reads a JSON object on stdin:
  host, port, from, rcpts (list), message_b64 (the exact bytes), mail_options (list, e.g.
  ["SMTPUTF8", "BODY=8BITMIME"]), ehlo, source_ip (or null), starttls, implicit_tls.
Prints one JSON line on stdout:
  {"ok": bool, "mail_reply": str, "data_reply": str, "refused": {rcpt: [code, text]},
   "error": str | null, "code": int | null}
smtplib's debug transcript (set_debuglevel(1)) goes to stderr.
"""

import base64
import json
import smtplib
import ssl
import sys


def text(b):
    return b.decode("utf-8", "replace") if isinstance(b, bytes) else str(b)


def main():
    a = json.load(sys.stdin)
    result = {"ok": False, "mail_reply": "", "data_reply": "", "refused": {}, "error": None, "code": None}
    ctx = ssl.create_default_context()
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    source = (a["source_ip"], 0) if a.get("source_ip") else None
    try:
        if a.get("implicit_tls"):
            s = smtplib.SMTP_SSL(a["host"], a["port"], local_hostname=a["ehlo"],
                                 source_address=source, timeout=30, context=ctx)
        else:
            s = smtplib.SMTP(a["host"], a["port"], local_hostname=a["ehlo"],
                             source_address=source, timeout=30)
        s.set_debuglevel(1)
        s.ehlo()
        if a.get("starttls"):
            s.starttls(context=ctx)
            s.ehlo()
        # smtplib's mail() switches to UTF-8 commands when SMTPUTF8 is among the options.
        code, resp = s.mail(a["from"], a.get("mail_options") or [])
        result["mail_reply"] = f"{code} {text(resp)}"
        if code != 250:
            result.update(error="SMTPSenderRefused", code=code)
            raise StopIteration
        for r in a["rcpts"]:
            code, resp = s.rcpt(r)
            if code not in (250, 251):
                result["refused"][r] = [code, text(resp)]
        if len(result["refused"]) == len(a["rcpts"]):
            result.update(error="SMTPRecipientsRefused")
            s.rset()
            raise StopIteration
        msg = base64.b64decode(a["message_b64"])
        code, resp = s.data(msg)
        result["data_reply"] = f"{code} {text(resp)}"
        result["ok"] = 200 <= code < 300
        try:
            s.quit()
        except Exception:
            pass
    except StopIteration:
        pass
    except smtplib.SMTPResponseException as e:
        result.update(error=type(e).__name__, code=e.smtp_code,
                      data_reply=f"{e.smtp_code} {text(e.smtp_error)}")
    except Exception as e:  # connection errors, TLS errors, timeouts
        result.update(error=f"{type(e).__name__}: {e}")
    print(json.dumps(result))


if __name__ == "__main__":
    main()
