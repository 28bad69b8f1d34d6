#!/usr/bin/env bash
# End-to-end load benchmark: Postfix's smtp-source injects messages into Gannet over SMTP,
# Gannet relays every one to Postfix's smtp-sink on another loopback port. Prints messages
# per second from the first connection to the last delivery, p50/p99 time-to-250 (server
# side, from gannet_accept_latency_seconds), and Gannet's peak RSS. Then runs the Postfix
# baseline (../shared/bench/postfix-baseline.sh, or $POSTFIX_BASELINE) in the same run and
# prints the ratio. Durability is always on: every 250 follows an fdatasync.
#
#   benches/e2e.sh [--dkim] [--mix] [--no-sendlog] [--no-spool-encrypt] [--messages N] [--sessions S] [--size BYTES] [--no-baseline]
#
#   --dkim   sign every message with RSA-2048 (compared with Postfix + OpenDKIM)
#   --mix    two classes on two pools: 10% transactional, 90% promotional, in parallel;
#            reports transactional time-to-delivery p99 while the promotional backlog drains
#   --no-sendlog  run Gannet with [sendlog] enabled = false (the send log's cost is the
#            difference in CPU ms/msg against a run without it, same binary, same machine)
#   --no-spool-encrypt  run Gannet with [spool] encrypt = false (spool records in clear: the
#            cost of sealing every record, measured the same way)
# GANNET_BENCH_PORT_BASE (default 2500) moves every port Gannet and the sink use, so two
# runs on one machine do not collide.
# Needs root (Postfix baseline) and installs postfix/opendkim from Debian when missing.
set -euo pipefail
cd "$(dirname "$0")/.."
DKIM=0; MIX=0; SENDLOG=1; SPOOL_ENCRYPT=true; N=20000; S=20; L=4000; BASELINE=1
while [ $# -gt 0 ]; do
  case "$1" in
    --dkim) DKIM=1 ;;
    --mix) MIX=1 ;;
    --no-sendlog) SENDLOG=0 ;;
    --no-spool-encrypt) SPOOL_ENCRYPT=false ;;
    --messages) N=$2; shift ;;
    --sessions) S=$2; shift ;;
    --size) L=$2; shift ;;
    --no-baseline) BASELINE=0 ;;
    *) echo "usage: $0 [--dkim] [--mix] [--no-sendlog] [--no-spool-encrypt] [--messages N] [--sessions S] [--size BYTES] [--no-baseline]" >&2; exit 2 ;;
  esac
  shift
done

if ! command -v smtp-source >/dev/null; then
  apt-get update -q >/dev/null
  DEBIAN_FRONTEND=noninteractive apt-get install -y -q postfix >/dev/null
fi
# A noninteractive install ("No configuration") leaves no main.cf; the baseline's postconf
# needs one.
[ -f /etc/postfix/main.cf ] || cp /etc/postfix/main.cf.proto /etc/postfix/main.cf
# GANNET_BIN: use an already-built binary instead of building target/release/gannet.
# GANNET_BENCH_EXTRA: TOML appended to Gannet's config (e.g. "[anomaly] enabled = false" to
# measure the anomaly detector's share, $'[suppression]\nenabled = false' the suppression checks).
# GANNET_BENCH_WAIT_SHIP: set when GANNET_BENCH_EXTRA configures event shipping: before the
# CPU is read, wait until every destination took every event, and print the catch-up time
# and the CPU of shipping's own threads (gannet-ship).
if [ -z "${GANNET_BIN:-}" ]; then
  cargo build --release -q
fi
BIN=${GANNET_BIN:-$PWD/target/release/gannet}

work=$(mktemp -d /var/tmp/gannet-bench.XXXXXX)
cleanup() {
  [ -n "${GPID:-}" ] && kill "$GPID" 2>/dev/null || true
  [ -n "${SPID:-}" ] && kill "$SPID" 2>/dev/null || true
  wait 2>/dev/null || true
  rm -rf "$work"
}
trap cleanup EXIT

PB0=${GANNET_BENCH_PORT_BASE:-2500}
SINK_PORT=$((PB0 + 100)); SMTP_PORT=$((PB0 + 25)); SMTP_TX_PORT=$((PB0 + 27)); HTTP_PORT=$((PB0 + 5525))
sendlog_conf=""
[ "$SENDLOG" = 0 ] && sendlog_conf="[sendlog]
enabled = false"
dkim_conf=""
if [ "$DKIM" = 1 ]; then
  "$BIN" dkim keygen --domain sender.test --selector bench --algorithm rsa --bits 2048 --out "$work/bench.key" >/dev/null
  dkim_conf="[[dkim]]
domain = \"sender.test\"
selector = \"bench\"
algorithm = \"rsa-sha256\"
key = \"$work/bench.key\""
fi
if [ "$MIX" = 1 ]; then
  pools="[[pool]]
name = \"tx\"
sources = [{ ip = \"127.0.0.10\", ehlo = \"tx.bench.test\" }]
[[pool]]
name = \"promo\"
sources = [{ ip = \"127.0.0.20\", ehlo = \"promo.bench.test\" }]
[class.transactional]
pool = \"tx\"
priority = 10
[class.promotional]
pool = \"promo\""
  tx_listener="[[listener]]
name = \"tx\"
address = \"127.0.0.1:$SMTP_TX_PORT\"
relay_from = [\"127.0.0.0/8\"]
default_class = \"transactional\""
else
  pools="[[pool]]
name = \"default\"
sources = [{ ip = \"127.0.0.1\", ehlo = \"out.bench.test\" }]
[class.promotional]
pool = \"default\""
  tx_listener=""
fi
# The relay host takes what Postfix's baseline gives it: 20 connections (Postfix's
# smtp_destination_concurrency_limit), from one source or split over the pools.
cat >"$work/shaping.toml" <<SHAPING
[defaults]
max_connection_rate = 50
[domain."dest.test"]
max_connections = 20
per_source = { max_connections = 20 }
SHAPING
cat >"$work/gannet.toml" <<CONF
hostname = "gannet.bench.test"
[spool]
path = "$work/spool"
encrypt = $SPOOL_ENCRYPT
[[listener]]
name = "default"
address = "127.0.0.1:$SMTP_PORT"
relay_from = ["127.0.0.0/8"]
default_class = "promotional"
max_sessions_per_ip = 1000
$tx_listener
[http]
address = "127.0.0.1:$HTTP_PORT"
[delivery]
max_connections_per_destination = 20
[shaping]
file = "$work/shaping.toml"
[[route]]
domain = "dest.test"
host = "127.0.0.1:$SINK_PORT"
$pools
$dkim_conf
$sendlog_conf
${GANNET_BENCH_EXTRA:-}
CONF

smtp-sink -u nobody 127.0.0.1:$SINK_PORT 1000 >/dev/null 2>&1 &
SPID=$!
"$BIN" serve --config "$work/gannet.toml" >"$work/gannet.log" 2>&1 &
GPID=$!
for _ in $(seq 100); do
  python3 - "$HTTP_PORT" <<'PY' >/dev/null 2>&1 && break
import sys, urllib.request
urllib.request.urlopen(f"http://127.0.0.1:{sys.argv[1]}/health", timeout=1)
PY
  sleep 0.1
done
if ! kill -0 "$GPID" 2>/dev/null; then
  echo "gannet did not start; its log:" >&2; tail -20 "$work/gannet.log" >&2; exit 1
fi

delivered() { # recipients delivered so far, from /metrics
  python3 - "$HTTP_PORT" <<'PY'
import sys, urllib.request
text = urllib.request.urlopen(f"http://127.0.0.1:{sys.argv[1]}/metrics", timeout=5).read().decode()
print(int(sum(float(l.rsplit(" ", 1)[1]) for l in text.splitlines()
              if l.startswith("gannet_recipients_total{") and 'outcome="delivered"' in l)))
PY
}

t0=$(date +%s.%N)
if [ "$MIX" = 1 ]; then
  NT=$((N / 10)); NP=$((N - NT))
  # Same 20 sessions in all as the plain run: 18 promotional, 2 transactional.
  smtp-source -s $((S > 2 ? S - 2 : 1)) -l "$L" -m "$NP" -f bench@sender.test -t user@dest.test 127.0.0.1:$SMTP_PORT &
  P1=$!
  sleep 0.5  # let the promotional backlog start first
  smtp-source -s 2 -l "$L" -m "$NT" -f bench@sender.test -t user@dest.test 127.0.0.1:$SMTP_TX_PORT &
  P2=$!
  wait $P1 $P2
else
  smtp-source -s "$S" -l "$L" -m "$N" -f bench@sender.test -t user@dest.test 127.0.0.1:$SMTP_PORT
fi
t_inj=$(date +%s.%N)
while :; do
  d=$(delivered 2>/dev/null || echo 0)
  [ "${d:-0}" -ge "$N" ] && break
  sleep 0.05
done
t1=$(date +%s.%N)
ship_line=""
if [ -n "${GANNET_BENCH_WAIT_SHIP:-}" ]; then
  # Event shipping configured (benches/ship_e2e.sh): wait until every destination has taken
  # every event, so the CPU below includes shipping all of them.
  ship_line=$(python3 - "$HTTP_PORT" "$t1" <<'PY'
import sys, time, urllib.request
port, t1 = sys.argv[1], float(sys.argv[2])
def ship():
    text = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5).read().decode()
    val = lambda p: sum(float(l.rsplit(" ", 1)[1]) for l in text.splitlines() if l.startswith(p))
    return val("gannet_ship_backlog_events{"), val("gannet_ship_sent_total{")
backlog_at_end, _ = ship()
while True:
    backlog, sent = ship()
    if backlog == 0 or time.time() - t1 > 600:
        break
    time.sleep(0.05)
print(f"  shipping: backlog {backlog_at_end:.0f} events at the last delivery, all destinations caught up "
      f"{time.time() - t1:.2f} s after it; {sent:.0f} events shipped in all, backlog now {backlog:.0f}")
PY
)
fi
if [ "$SENDLOG" = 1 ]; then
  # The send log moves its journal into SQLite lazily (every [sendlog] ingest_interval); a
  # query first waits until every event published before it is in SQLite, so the CPU read
  # below includes storing every event of the run.
  python3 - "$HTTP_PORT" <<'PY'
import sys, urllib.request
urllib.request.urlopen(f"http://127.0.0.1:{sys.argv[1]}/api/v1/events?limit=1", timeout=60).read()
PY
fi
rss_kb=$(awk '/VmHWM/ {print $2}' /proc/$GPID/status)
# Gannet's own CPU (user + system, clock ticks) over the whole run, start-up included.
cpu_ticks=$(awk '{print $14 + $15}' /proc/$GPID/stat)
# Context switches of all of Gannet's threads (a wake-up per event or per message shows here
# before it shows in throughput).
ctx=$(cat /proc/$GPID/task/*/status 2>/dev/null | awk '/ctxt_switches/ {s += $2} END {print s + 0}')
if [ -n "$ship_line" ]; then
  # Shipping runs on threads of its own (gannet-ship): their CPU is what shipping itself
  # costs, read exactly rather than as the difference of two noisy runs.
  ship_ticks=$(cat /proc/$GPID/task/*/stat 2>/dev/null |
    awk '$2 == "(gannet-ship)" {s += $14 + $15} END {print s + 0}')
  ship_line="$ship_line
$(awk -v s="$ship_ticks" -v a="$cpu_ticks" -v hz="$(getconf CLK_TCK)" -v n="$N" 'BEGIN {
    printf "  shipping threads: CPU %.3f ms/msg, %.1f%% of Gannet'"'"'s", s * 1000 / hz / n, a ? 100 * s / a : 0 }')"
fi
python3 - "$HTTP_PORT" "$N" "$t0" "$t_inj" "$t1" "$rss_kb" "$DKIM" "$MIX" "$cpu_ticks" "$(getconf CLK_TCK)" "$SENDLOG" "$ctx" <<'PY' | tee "$work/gannet.result"
import sys, urllib.request
port, n, t0, tinj, t1, rss, dkim, mix, ticks, hz, sendlog, ctx = sys.argv[1:]
cpu_ms = int(ticks) * 1000 / int(hz) / int(n)
n = int(n); t0, tinj, t1 = float(t0), float(tinj), float(t1)
text = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5).read().decode()
def quantiles(name, label=""):
    buckets = []
    for l in text.splitlines():
        if l.startswith(name + "_bucket{") and label in l:
            le = l.split('le="')[1].split('"')[0]
            buckets.append((float("inf") if le == "+Inf" else float(le), float(l.rsplit(" ", 1)[1])))
    buckets.sort()
    total = buckets[-1][1] if buckets else 0
    def q(p):
        if not total: return float("nan")
        want, prev_le, prev_c = p * total, 0.0, 0.0
        for le, c in buckets:
            if c >= want:
                if le == float("inf"): return prev_le
                return prev_le + (le - prev_le) * ((want - prev_c) / max(c - prev_c, 1e-9))
            prev_le, prev_c = le, c
        return prev_le
    return q(0.5), q(0.99)
p50, p99 = quantiles("gannet_accept_latency_seconds")
dels = [l for l in text.splitlines() if l.startswith("gannet_recipients_total{")]
print(f"gannet: {n} messages in {t1 - t0:.1f} s = {n / (t1 - t0):.0f} msg/s end-to-end "
      f"(injection done after {tinj - t0:.1f} s); time-to-250 p50 {p50 * 1000:.2f} ms, p99 {p99 * 1000:.2f} ms; "
      f"peak RSS {int(rss) / 1024:.0f} MiB; CPU {cpu_ms:.3f} ms/msg; {int(ctx) / n:.1f} context switches/msg"
      f"{' (DKIM rsa-2048)' if dkim == '1' else ''}"
      f"{'' if sendlog == '1' else ' (send log off)'}")
for l in dels: print("  " + l)
if mix == "1":
    t50, t99 = quantiles("gannet_delivery_latency_seconds", 'class="transactional"')
    pp50, pp99 = quantiles("gannet_delivery_latency_seconds", 'class="promotional"')
    print(f"  transactional acceptance-to-delivery p50 {t50 * 1000:.0f} ms, p99 {t99 * 1000:.0f} ms; "
          f"promotional p50 {pp50 * 1000:.0f} ms, p99 {pp99 * 1000:.0f} ms")
PY
[ -n "$ship_line" ] && echo "$ship_line"
g_rate=$(awk '{for(i=1;i<=NF;i++) if($i=="msg/s") {print $(i-1); exit}}' "$work/gannet.result")
kill "$GPID"; wait "$GPID" 2>/dev/null || true; GPID=
kill "$SPID"; wait "$SPID" 2>/dev/null || true; SPID=

if [ "$BASELINE" = 1 ]; then
  PB=${POSTFIX_BASELINE:-$PWD/../shared/bench/postfix-baseline.sh}
  if [ ! -x "$PB" ]; then
    echo "postfix baseline script not found at $PB (set POSTFIX_BASELINE)"; exit 0
  fi
  args=(--messages "$N" --sessions "$S" --size "$L")
  [ "$DKIM" = 1 ] && args+=(--dkim)
  out=$("$PB" "${args[@]}" | tail -1)
  echo "$out"
  p_rate=$(echo "$out" | awk '{for(i=1;i<=NF;i++) if($i=="msg/s") {print $(i-1); exit}}')
  awk -v g="$g_rate" -v p="$p_rate" 'BEGIN { if (p > 0) printf "ratio gannet/postfix: %.2fx\n", g / p }'
fi
