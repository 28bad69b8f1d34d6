#!/usr/bin/env python3
"""A webhook receiver for the shipping tests, independent of Gannet's code.

Usage: webhook_receiver.py PORT SECRET OUT_FILE

Every POST is verified the way README documents it: header
`X-Gannet-Signature: t=T,v1=HEX`, HEX = HMAC-SHA256(SECRET, "T." + body), and T within the
replay window (300 s) of now. Each event of the JSON array is appended to OUT_FILE as one
line: {"path", "sig_ok", "event"}. `/gone` answers 410 (the test checks it is not retried),
every other path 200. Speaks HTTP/1.1 with keep-alive, as production receivers do (so a
restart of it also leaves Gannet a pooled connection that is dead). Runs until killed.
"""
import hashlib
import hmac
import json
import sys
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

PORT = int(sys.argv[1])
SECRET = sys.argv[2].encode()
OUT = sys.argv[3]
WINDOW = 300


def verify(header, body):
    parts = dict(p.split("=", 1) for p in header.split(",") if "=" in p)
    t = parts.get("t", "")
    if not t.isdigit() or abs(time.time() - int(t)) > WINDOW:
        return False
    want = hmac.new(SECRET, t.encode() + b"." + body, hashlib.sha256).hexdigest()
    return hmac.compare_digest(want, parts.get("v1", ""))


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def do_POST(self):
        body = self.rfile.read(int(self.headers.get("Content-Length", "0")))
        ok = verify(self.headers.get("X-Gannet-Signature", ""), body)
        events = json.loads(body)
        with open(OUT, "a") as f:
            for e in events:
                f.write(json.dumps({"path": self.path, "sig_ok": ok, "event": e}) + "\n")
        self.send_response(410 if self.path == "/gone" else 200)
        self.send_header("Content-Length", "0")
        self.end_headers()

    def log_message(self, *args):
        pass


ThreadingHTTPServer(("127.0.0.1", PORT), Handler).serve_forever()
