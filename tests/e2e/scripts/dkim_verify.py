#!/usr/bin/env python3
"""Verify every DKIM-Signature of some messages with dkimpy, fetching keys from a real DNS server.

Reads JSON on stdin: {"dns": "127.0.0.1:PORT", "files": ["/path/msg1.eml", ...]}.
dnspython's default resolver is pointed at that server only (no system resolver, no search
list), so dkimpy asks the test's loopback DNS for `selector._domainkey.domain TXT` exactly as a
receiver would. Prints one JSON object on the last line:
{"files": [{"file": ..., "signatures": [{"d", "s", "a", "c", "h", "ok", "error"}]}]}.
Exit status 0 whenever it could run; the caller judges the results.

Ed25519 verification in dkimpy needs PyNaCl; when it is missing, the stand-in from
tests/fixtures/dkim/dkimpy_verify.py (built on `cryptography`) is installed first.
"""
import json
import os
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
FIXTURES = os.path.join(HERE, "..", "..", "fixtures", "dkim")


def tags_of(value):
    value = value.decode("latin-1") if isinstance(value, bytes) else value
    out = {}
    for part in value.replace("\r\n", "").replace("\n", "").split(";"):
        if "=" in part:
            k, v = part.split("=", 1)
            out[k.strip()] = "".join(v.split())
    return out


def main():
    sys.path.insert(0, FIXTURES)
    from dkimpy_verify import install_nacl_shim

    install_nacl_shim()
    import dkim
    import dns.resolver

    args = json.load(sys.stdin)
    host, port = args["dns"].rsplit(":", 1)
    resolver = dns.resolver.Resolver(configure=False)
    resolver.nameservers = [host]
    resolver.port = int(port)
    resolver.timeout = 3
    resolver.lifetime = 5
    dns.resolver.default_resolver = resolver

    results = []
    for path in args["files"]:
        with open(path, "rb") as f:
            message = f.read()
        headers = [v for (k, v) in dkim.DKIM(message).headers if k.lower() == b"dkim-signature"]
        sigs = []
        for i, value in enumerate(headers):
            tags = tags_of(value)
            entry = {
                "d": tags.get("d"),
                "s": tags.get("s"),
                "a": tags.get("a"),
                "c": tags.get("c", "simple/simple"),
                "h": tags.get("h"),
                "t": tags.get("t"),
                "ok": False,
                "error": None,
            }
            checker = dkim.DKIM(message)
            try:
                entry["ok"] = bool(checker.verify(idx=i))
                if not entry["ok"]:
                    entry["error"] = "signature did not verify"
            except Exception as e:  # dkimpy raises for malformed input and DNS failures
                entry["error"] = repr(e)
            sigs.append(entry)
        results.append({"file": path, "signatures": sigs})
    print(json.dumps({"files": results}))


if __name__ == "__main__":
    main()
