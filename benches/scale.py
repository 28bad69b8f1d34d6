#!/usr/bin/env python3
"""A million recipients queued behind a blocked provider (issue 21 item 6).

Starts Postfix's smtp-sink on loopback answering every MAIL FROM with a 4xx, and Gannet
(GANNET_BIN, else $CARGO_TARGET_DIR/release/gannet) routing --domains test domains to it.
Injects --recipients recipients over SMTP (--per-message RCPTs per message, spread over the
domains, pipelined, --connections sessions), waits until every recipient has been tried once
and deferred, then reports:

  - Gannet's RSS with everything queued (and its peak), against its RSS idle after start
    (the baseline of the same run)
  - the spool's disk use (segments, journal, index, send log...), per recipient
  - a restart: SIGTERM, the sink now accepts, start again; the time from the new process's
    start to the first delivery (and to /health answering), against the same restart with
    an empty spool in the same run
  - the drain rate (recipients/s) from the first delivery to the last.

    benches/scale.py [--recipients N] [--per-message R] [--domains D] [--connections C]
                     [--size BYTES] [--keep]

Targets (issue 21): RSS <= 300 MB with 1M queued; restart to first delivery <= 5 s.
Run it on a release build: cargo build --release (under nice on a shared machine).
"""

import argparse
import asyncio
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def binary():
    if os.environ.get("GANNET_BIN"):
        return os.environ["GANNET_BIN"]
    target = os.environ.get("CARGO_TARGET_DIR", os.path.join(ROOT, "target"))
    p = os.path.join(target, "release", "gannet")
    if os.path.exists(p):
        return p
    sys.exit("no release gannet binary: cargo build --release (or set GANNET_BIN)")


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def metrics(port):
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as r:
        return r.read().decode()


def outcome_total(text, outcome):
    return int(
        sum(
            float(line.rsplit(" ", 1)[1])
            for line in text.splitlines()
            if line.startswith("gannet_recipients_total{") and f'outcome="{outcome}"' in line
        )
    )


def gauge(text, name):
    for line in text.splitlines():
        if line.startswith(name + " ") or line.startswith(name + "{"):
            return float(line.rsplit(" ", 1)[1])
    return 0.0


def proc_kib(pid, field):
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    return 0


def du(path):
    if not os.path.isdir(path):
        try:
            return os.lstat(path).st_blocks * 512
        except OSError:
            return 0
    total = 0
    for dirpath, _, files in os.walk(path):
        for name in files:
            try:
                total += os.lstat(os.path.join(dirpath, name)).st_blocks * 512
            except OSError:
                pass
    return total


def mib(n):
    return n / (1024 * 1024)


class Sink:
    """Postfix's smtp-sink on loopback: refusing MAIL with 4xx, or accepting everything."""

    def __init__(self, port):
        self.port = port
        self.proc = None

    def start(self, refuse):
        args = ["smtp-sink"]
        if os.geteuid() == 0:
            args += ["-u", "nobody"]
        if refuse:
            args += ["-r", "MAIL"]
        args += [f"127.0.0.1:{self.port}", "1000"]
        self.proc = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.time() + 10
        while time.time() < deadline:
            try:
                socket.create_connection(("127.0.0.1", self.port), timeout=1).close()
                return
            except OSError:
                time.sleep(0.05)
        sys.exit("smtp-sink did not start")

    def stop(self):
        if self.proc:
            self.proc.terminate()
            self.proc.wait()
            self.proc = None


class Gannet:
    def __init__(self, work, args, sink_port):
        self.work = work
        self.smtp = free_port()
        self.http = free_port()
        self.proc = None
        routes = "".join(
            f'[[route]]\ndomain = "d{k}.scale.test"\nhost = "127.0.0.1:{sink_port}"\n'
            for k in range(args.domains)
        )
        self.config = os.path.join(work, "gannet.toml")
        with open(self.config, "w") as f:
            f.write(
                f"""hostname = "gannet.scale.test"
[spool]
path = "{work}/spool"
[[listener]]
name = "default"
address = "127.0.0.1:{self.smtp}"
relay_from = ["127.0.0.0/8"]
default_class = "promotional"
max_recipients = {max(args.per_message, 100)}
[http]
address = "127.0.0.1:{self.http}"
[delivery]
max_connections_per_destination = 20
# One attempt while blocked: the retry after it is the restart's.
retry_schedule = ["1h"]
max_age = "3d"
[[pool]]
name = "default"
sources = [{{ ip = "127.0.0.1", ehlo = "out.scale.test" }}]
[class.promotional]
pool = "default"
{routes}
{os.environ.get("GANNET_SCALE_EXTRA", "")}
"""
            )

    def start(self):
        self.log = open(os.path.join(self.work, "gannet.log"), "a")
        self.started = time.monotonic()
        self.proc = subprocess.Popen(
            [binary(), "serve", "--config", self.config], stdout=self.log, stderr=self.log
        )

    def stop(self):
        """SIGTERM and wait; returns the seconds the graceful stop took."""
        t = time.monotonic()
        self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(timeout=300)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
            print("  (graceful stop took over 300 s: killed)")
        self.proc = None
        self.log.close()
        return time.monotonic() - t

    def metrics(self):
        return metrics(self.http)

    def wait_health(self, timeout=600):
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                sys.exit(f"gannet exited with {self.proc.returncode}; see {self.work}/gannet.log")
            try:
                urllib.request.urlopen(f"http://127.0.0.1:{self.http}/health", timeout=1).read()
                return time.monotonic() - self.started
            except OSError:
                time.sleep(0.02)
        sys.exit("gannet did not answer /health")

    def wait_first_delivery(self, timeout=600):
        """Seconds from the process's start to the first delivered recipient."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                if outcome_total(self.metrics(), "delivered") > 0:
                    return time.monotonic() - self.started
            except OSError:
                pass
            time.sleep(0.02)
        return float("nan")


async def expect(reader, n, ok, what):
    """Read n replies; every one must start with a code in `ok`."""
    for _ in range(n):
        while True:
            line = await reader.readline()
            if not line:
                raise ConnectionError(f"closed during {what}")
            if line[3:4] != b"-":
                break
        if line[:1] not in ok:
            raise RuntimeError(f"{what}: {line.decode(errors='replace').strip()}")


async def session(port, first, count, args, body, counter):
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    await expect(reader, 1, b"2", "greeting")
    writer.write(b"EHLO inject.scale.test\r\n")
    await expect(reader, 1, b"2", "EHLO")
    for m in range(first, first + count):
        cmds = [b"MAIL FROM:<campaign@sender.scale.test>\r\n"]
        for r in range(args.per_message):
            n = m * args.per_message + r
            cmds.append(b"RCPT TO:<u%d@d%d.scale.test>\r\n" % (n, n % args.domains))
        cmds.append(b"DATA\r\n")
        writer.write(b"".join(cmds))
        await expect(reader, 1, b"2", "MAIL")
        await expect(reader, args.per_message, b"2", "RCPT")
        await expect(reader, 1, b"3", "DATA")
        writer.write(b"Message-ID: <scale.%d@sender.scale.test>\r\n" % m + body + b".\r\n")
        await expect(reader, 1, b"2", "end of data")
        counter[0] += args.per_message
    writer.write(b"QUIT\r\n")
    await writer.drain()
    writer.close()


async def inject(port, args):
    messages = args.recipients // args.per_message
    line = b"X" * 76 + b"\r\n"
    body = (
        b"From: campaign@sender.scale.test\r\nTo: list@scale.test\r\nSubject: scale\r\n\r\n"
        + line * max(1, args.size // len(line))
    )
    counter = [0]
    per = messages // args.connections
    tasks = []
    for c in range(args.connections):
        first = c * per
        count = per if c < args.connections - 1 else messages - first
        tasks.append(session(port, first, count, args, body, counter))

    async def progress():
        while True:
            await asyncio.sleep(10)
            print(f"  injected {counter[0]:,} recipients", flush=True)

    p = asyncio.ensure_future(progress())
    try:
        await asyncio.gather(*tasks)
    finally:
        p.cancel()
    return messages * args.per_message


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--recipients", type=int, default=1_000_000)
    ap.add_argument("--per-message", type=int, default=100)
    ap.add_argument("--domains", type=int, default=10)
    ap.add_argument("--connections", type=int, default=8)
    ap.add_argument("--size", type=int, default=2000, help="body bytes per message")
    ap.add_argument("--keep", action="store_true", help="keep the work directory")
    args = ap.parse_args()
    if not shutil.which("smtp-sink"):
        sys.exit("smtp-sink not found: apt-get install postfix (scripts/test does)")

    work = tempfile.mkdtemp(prefix="gannet-scale.", dir="/var/tmp")
    print(f"machine: {os.cpu_count()} cores, load {open('/proc/loadavg').read().split()[:3]}; work dir {work}")
    sink = Sink(free_port())
    g = Gannet(work, args, sink.port)
    try:
        # Baseline, same run: an empty Gannet's RSS and its restart to first delivery.
        sink.start(refuse=False)
        g.start()
        g.wait_health()
        idle_rss = proc_kib(g.proc.pid, "VmRSS")
        g.stop()
        g.start()
        empty_health = g.wait_health()
        asyncio.run(inject(g.smtp, argparse.Namespace(**{**vars(args), "recipients": 1, "per_message": 1, "connections": 1})))
        empty_first = g.wait_first_delivery()
        g.stop()
        sink.stop()
        shutil.rmtree(os.path.join(work, "spool"))
        print(f"baseline: idle RSS {idle_rss / 1024:.0f} MiB; empty spool: /health after {empty_health:.2f} s, "
              f"first delivery {empty_first:.2f} s after start (one message injected after /health)")

        # Queue everything behind the refusing sink.
        sink.start(refuse=True)
        g.start()
        g.wait_health()
        t0 = time.monotonic()
        n = asyncio.run(inject(g.smtp, args))
        t_inj = time.monotonic() - t0
        print(f"injected {n:,} recipients ({n // args.per_message:,} messages) in {t_inj:.1f} s = {n / t_inj:,.0f} rcpt/s")
        while True:
            text = g.metrics()
            deferred = outcome_total(text, "deferred")
            if deferred >= n:
                break
            print(f"  deferred {deferred:,} of {n:,}", flush=True)
            time.sleep(5)
        t_def = time.monotonic() - t0
        time.sleep(2)
        rss = proc_kib(g.proc.pid, "VmRSS")
        anon = proc_kib(g.proc.pid, "RssAnon")
        hwm = proc_kib(g.proc.pid, "VmHWM")
        queued = int(gauge(g.metrics(), "gannet_queued_recipients"))
        spool = os.path.join(work, "spool")
        parts = {d: du(os.path.join(spool, d)) for d in sorted(os.listdir(spool))}
        total = du(spool)
        print(f"all {n:,} deferred once after {t_def:.1f} s; queued gauge {queued:,}")
        print(f"RSS with {n:,} queued: {rss / 1024:.0f} MiB (peak {hwm / 1024:.0f} MiB; idle baseline "
              f"{idle_rss / 1024:.0f} MiB; {(rss - idle_rss) * 1024 / n:.0f} bytes per queued recipient; "
              f"anonymous {anon / 1024:.0f} MiB, file-backed {(rss - anon) / 1024:.0f} MiB)")
        print(f"spool on disk: {mib(total):.0f} MiB ({total / n:.0f} bytes per recipient): "
              + ", ".join(f"{k} {mib(v):.1f} MiB" for k, v in parts.items()))

        # Restart with the sink accepting again.
        stop_s = g.stop()
        sink.stop()
        sink.start(refuse=False)
        g.start()
        health = g.wait_health()
        first = g.wait_first_delivery()
        print(f"restart: graceful stop {stop_s:.1f} s; /health after {health:.2f} s; first delivery "
              f"{first:.2f} s after start (empty-spool baseline {empty_first:.2f} s; target <= 5 s)")
        t_first = time.monotonic()
        peak_drain = 0
        last_print = t_first
        while True:
            d = outcome_total(g.metrics(), "delivered")
            peak_drain = max(peak_drain, proc_kib(g.proc.pid, "VmRSS"))
            if d >= n:
                break
            if time.monotonic() - last_print > 10:
                print(f"  delivered {d:,} of {n:,}", flush=True)
                last_print = time.monotonic()
            time.sleep(0.2)
        drain = time.monotonic() - t_first
        hwm2 = proc_kib(g.proc.pid, "VmHWM")
        print(f"drain: {n:,} recipients in {drain:.1f} s = {n / drain:,.0f} rcpt/s "
              f"({n / args.per_message / drain:,.0f} msg/s); peak RSS while draining {hwm2 / 1024:.0f} MiB")
        print(f"targets: RSS {rss / 1024:.0f} MiB <= 300 MB: {'met' if rss * 1024 <= 300e6 else 'MISSED'}; "
              f"restart to first delivery {first:.2f} s <= 5 s: {'met' if first <= 5 else 'MISSED'}")
        print(f"machine at the end: load {open('/proc/loadavg').read().split()[:3]}")
        g.stop()
    finally:
        if g.proc:
            g.proc.kill()
        sink.stop()
        if args.keep:
            print(f"kept {work}")
        else:
            shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
