#!/usr/bin/env python3
"""Probe latency under hostile clients (issue 21 item 4).

Starts Gannet (GANNET_BIN, else target/release/gannet, else target/debug/gannet) on loopback
and measures an ordinary client's time-to-250 (connect, greeting, EHLO, MAIL, RCPT, DATA, the
final 250 after the message is durable) in three phases of the same run:

  baseline  nothing else connected
  idle      --idle connections (default 3000, more than max_sessions = 1000) from 50 loopback
            addresses that never send a byte (slowloris), held for the whole phase
  garbage   --garbage clients (default 50) sending 1 MB lines, binary junk and bad commands
            in a loop

and prints p50/p99 per phase and the p99 ratio against the baseline. The listener runs with
its defaults except max_sessions = 1000 (stress_command_timeout 10 s); pass
--stress-timeout to change that key.

    benches/smtp_flood.py [--probes N] [--idle N] [--garbage N] [--stress-timeout 10s]
"""

import argparse
import os
import random
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def binary():
    if os.environ.get("GANNET_BIN"):
        return os.environ["GANNET_BIN"]
    target = os.environ.get("CARGO_TARGET_DIR", os.path.join(ROOT, "target"))
    for profile in ("release", "debug"):
        p = os.path.join(target, profile, "gannet")
        if os.path.exists(p):
            return p
    sys.exit("no gannet binary: build one (cargo build --release) or set GANNET_BIN")


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def read_reply(f):
    """One (possibly multi-line) SMTP reply; returns its last line."""
    while True:
        line = f.readline()
        if not line:
            raise ConnectionError("closed")
        if len(line) < 4 or line[3:4] != b"-":
            return line


def probe(port, n):
    """Time from connect to the final 250 of one message, in seconds."""
    t0 = time.monotonic()
    s = socket.create_connection(("127.0.0.1", port), timeout=120)
    f = s.makefile("rb")
    try:
        assert read_reply(f).startswith(b"220")
        for cmd, want in (
            (b"EHLO probe.bench.test", b"250"),
            (b"MAIL FROM:<probe@origin.test>", b"250"),
            (b"RCPT TO:<probe%d@dest.test>" % n, b"250"),
            (b"DATA", b"354"),
        ):
            s.sendall(cmd + b"\r\n")
            r = read_reply(f)
            assert r.startswith(want), (cmd, r)
        s.sendall(b"Subject: probe\r\n\r\nprobe body\r\n.\r\n")
        r = read_reply(f)
        assert r.startswith(b"250"), r
        elapsed = time.monotonic() - t0
        s.sendall(b"QUIT\r\n")
        return elapsed
    finally:
        s.close()


def quantile(xs, p):
    xs = sorted(xs)
    return xs[min(len(xs) - 1, int(p * len(xs)))]


def run_probes(port, count, label):
    times = []
    for i in range(count):
        times.append(probe(port, i))
        time.sleep(0.02)
    p50, p99 = quantile(times, 0.5), quantile(times, 0.99)
    print(f"{label:9} probes={count:4}  p50={p50 * 1000:8.1f} ms  p99={p99 * 1000:8.1f} ms", flush=True)
    return p99


def idle_flood(port, count, stop):
    socks = []
    for i in range(count):
        if stop.is_set():
            break
        try:
            s = socket.socket()
            s.setblocking(True)
            s.settimeout(10)
            s.bind((f"127.0.5.{1 + i % 50}", 0))
            s.connect(("127.0.0.1", port))
            socks.append(s)
        except OSError:
            pass
    stop.wait()
    for s in socks:
        s.close()


def garbage_client(port, i, stop):
    junk = [
        b"MAIL FROM:<" + b"a" * (1 << 20) + b">\r\n",
        bytes(random.getrandbits(8) for _ in range(65536)),
        b"FOO\r\nRCPT TO:<a@b>\r\nDATA\r\nAUTH X\r\nBDAT x\r\nHELO\r\n" * 20,
    ][i % 3]
    while not stop.is_set():
        try:
            s = socket.socket()
            s.settimeout(5)
            s.bind((f"127.0.6.{1 + i % 50}", 0))
            s.connect(("127.0.0.1", port))
            s.sendall(junk)
            while s.recv(65536):
                pass
        except OSError:
            pass
        finally:
            s.close()


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--probes", type=int, default=200)
    ap.add_argument("--idle", type=int, default=3000)
    ap.add_argument("--garbage", type=int, default=50)
    ap.add_argument("--stress-timeout", default="10s")
    args = ap.parse_args()

    work = tempfile.mkdtemp(prefix="gannet-flood.")
    smtp, http = free_port(), free_port()
    with open(os.path.join(work, "gannet.toml"), "w") as f:
        f.write(f"""hostname = "gannet.bench.test"
[spool]
path = "{work}/spool"
[[listener]]
name = "default"
address = "127.0.0.1:{smtp}"
relay_from = ["127.0.0.0/8"]
default_class = "promotional"
max_sessions = 1000
stress_command_timeout = "{args.stress_timeout}"
[http]
address = "127.0.0.1:{http}"
[[route]]
domain = "dest.test"
host = "127.0.0.1:9"
[[pool]]
name = "default"
sources = [{{ ip = "127.0.0.1", ehlo = "out.bench.test" }}]
[class.promotional]
pool = "default"
""")
    log = open(os.path.join(work, "gannet.log"), "w")
    g = subprocess.Popen([binary(), "serve", "--config", os.path.join(work, "gannet.toml")], stdout=log, stderr=log)
    try:
        for _ in range(200):
            try:
                urllib.request.urlopen(f"http://127.0.0.1:{http}/health", timeout=1)
                break
            except OSError:
                time.sleep(0.1)
        base = run_probes(smtp, args.probes, "baseline")

        stop = threading.Event()
        t = threading.Thread(target=idle_flood, args=(smtp, args.idle, stop))
        t.start()
        time.sleep(3)
        idle = run_probes(smtp, args.probes, "idle")
        stop.set()
        t.join()

        stop = threading.Event()
        ts = [threading.Thread(target=garbage_client, args=(smtp, i, stop)) for i in range(args.garbage)]
        for x in ts:
            x.start()
        time.sleep(1)
        garbage = run_probes(smtp, args.probes, "garbage")
        stop.set()
        for x in ts:
            x.join()
        with open(f"/proc/{g.pid}/status") as st:
            hwm = next(l.split()[1] for l in st if l.startswith("VmHWM"))
        print(f"p99 ratio vs baseline: idle {idle / base:.1f}x, garbage {garbage / base:.1f}x; "
              f"Gannet peak RSS {int(hwm) // 1024} MiB")
    finally:
        g.terminate()
        try:
            g.wait(timeout=30)
        except subprocess.TimeoutExpired:
            g.kill()
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
