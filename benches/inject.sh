#!/usr/bin/env bash
# HTTP injection benchmark (issue 16): one POST /api/v1/messages with N recipients (default
# 10,000) and a realistic template (benches/data/inject_template.json: HTML + text, a loop of
# four products, one-click unsubscribe headers), relayed to Postfix's smtp-sink. Prints the
# time until the durable answer, the delivery rate from the request's start to the last
# delivery, and Gannet's peak RSS (VmHWM of a fresh process: start-up, the request and the
# deliveries). Then, in the same run, a fresh Gannet gets N messages of the same size over
# SMTP (smtp-source, S sessions) and the script prints that delivery rate and the ratio.
# Render cost per recipient: `cargo bench --bench inject_render`.
#
#   benches/inject.sh [--recipients N] [--sessions S] [--dkim]
#
# GANNET_BIN: an already-built binary instead of target/release/gannet.
# GANNET_BENCH_PORT_BASE (default 2600) moves every port used.
set -euo pipefail
cd "$(dirname "$0")/.."
N=10000; S=20; DKIM=0
while [ $# -gt 0 ]; do
  case "$1" in
    --recipients) N=$2; shift ;;
    --sessions) S=$2; shift ;;
    --dkim) DKIM=1 ;;
    *) echo "usage: $0 [--recipients N] [--sessions S] [--dkim]" >&2; exit 2 ;;
  esac
  shift
done
command -v smtp-source >/dev/null || { apt-get update -q >/dev/null; DEBIAN_FRONTEND=noninteractive apt-get install -y -q postfix >/dev/null; }
command -v curl >/dev/null || { apt-get update -q >/dev/null; DEBIAN_FRONTEND=noninteractive apt-get install -y -q curl >/dev/null; }
if [ -z "${GANNET_BIN:-}" ]; then
  cargo build --release -q
fi
BIN=${GANNET_BIN:-${CARGO_TARGET_DIR:-$PWD/target}/release/gannet}

work=$(mktemp -d /var/tmp/gannet-inject-bench.XXXXXX)
cleanup() {
  [ -n "${GPID:-}" ] && kill "$GPID" 2>/dev/null || true
  [ -n "${SPID:-}" ] && kill "$SPID" 2>/dev/null || true
  wait 2>/dev/null || true
  rm -rf "$work"
}
trap cleanup EXIT

PB0=${GANNET_BENCH_PORT_BASE:-2600}
SINK_PORT=$((PB0 + 100)); SMTP_PORT=$((PB0 + 25)); HTTP_PORT=$((PB0 + 5525))
dkim_conf=""
if [ "$DKIM" = 1 ]; then
  "$BIN" dkim keygen --domain sender.test --selector bench --algorithm rsa --bits 2048 --out "$work/bench.key" >/dev/null
  dkim_conf="[[dkim]]
domain = \"sender.test\"
selector = \"bench\"
algorithm = \"rsa-sha256\"
key = \"$work/bench.key\""
fi
cat >"$work/shaping.toml" <<SHAPING
[defaults]
max_connection_rate = 50
[domain."dest.test"]
max_connections = 20
per_source = { max_connections = 20 }
SHAPING
config() { # $1 = spool directory
  cat <<CONF
hostname = "gannet.bench.test"
[spool]
path = "$1"
[[listener]]
name = "default"
address = "127.0.0.1:$SMTP_PORT"
relay_from = ["127.0.0.0/8"]
default_class = "promotional"
max_sessions_per_ip = 1000
[http]
address = "127.0.0.1:$HTTP_PORT"
[delivery]
max_connections_per_destination = 20
[shaping]
file = "$work/shaping.toml"
[[route]]
domain = "dest.test"
host = "127.0.0.1:$SINK_PORT"
[[pool]]
name = "default"
sources = [{ ip = "127.0.0.1", ehlo = "out.bench.test" }]
[class.promotional]
pool = "default"
list_unsubscribe = true
[unsubscribe]
base_url = "https://unsub.sender.test"
$dkim_conf
CONF
}
start() { # $1 = run name
  config "$work/spool-$1" >"$work/$1.toml"
  "$BIN" serve --config "$work/$1.toml" >"$work/$1.log" 2>&1 &
  GPID=$!
  for _ in $(seq 200); do
    curl -sf -o /dev/null "http://127.0.0.1:$HTTP_PORT/health" && return 0
    sleep 0.1
  done
  echo "gannet did not start"; cat "$work/$1.log"; exit 1
}
delivered() {
  curl -sf "http://127.0.0.1:$HTTP_PORT/metrics" |
    awk '/^gannet_recipients_total\{/ && /outcome="delivered"/ {s += $NF} END {printf "%d\n", s}'
}
wait_delivered() {
  while :; do
    d=$(delivered || echo 0)
    [ "${d:-0}" -ge "$N" ] && break
    sleep 0.05
  done
}
stop() { kill "$GPID"; wait "$GPID" 2>/dev/null || true; GPID=; }

python3 benches/data/make_inject_batch.py "$N" dest.test >"$work/batch.json"
smtp-sink -u nobody 127.0.0.1:$SINK_PORT 1000 >/dev/null 2>&1 &
SPID=$!

# 1. HTTP injection.
start http
rss0=$(awk '/VmRSS/ {print $2}' /proc/$GPID/status)
t0=$(date +%s.%N)
curl -sS -o "$work/answer.json" -w '%{http_code} %{time_total}\n' -H 'Content-Type: application/json' \
  -H 'Expect:' --data-binary @"$work/batch.json" "http://127.0.0.1:$HTTP_PORT/api/v1/messages" >"$work/curl.out"
t_resp=$(date +%s.%N)
read -r code resp_s <"$work/curl.out"
[ "$code" = 200 ] || { echo "POST answered $code"; head -c 2000 "$work/answer.json"; exit 1; }
accepted=$(python3 -c 'import json,sys; print(json.load(open(sys.argv[1]))["accepted"])' "$work/answer.json")
[ "$accepted" = "$N" ] || { echo "only $accepted of $N accepted"; exit 1; }
wait_delivered
t1=$(date +%s.%N)
rss=$(awk '/VmHWM/ {print $2}' /proc/$GPID/status)
msg_bytes=$(curl -sf "http://127.0.0.1:$HTTP_PORT/metrics" | awk '/^gannet_message_size_bytes_sum/ {print $NF}')
stop
# The SMTP run sends messages of the rendered size (signing and headers added by Gannet alike).
size=$(python3 -c 'import sys; b=sys.argv[1]; n=int(sys.argv[2]); print(int(float(b)/n) if b else 7000)' "${msg_bytes:-}" "$N")

# 2. SMTP injection of as many messages of that size, fresh process, same sink.
start smtp
s0=$(date +%s.%N)
smtp-source -s "$S" -l "$size" -m "$N" -f news@sender.test -t user@dest.test 127.0.0.1:$SMTP_PORT
wait_delivered
s1=$(date +%s.%N)
srss=$(awk '/VmHWM/ {print $2}' /proc/$GPID/status)
stop

python3 - "$N" "$t0" "$t_resp" "$resp_s" "$t1" "$rss0" "$rss" "$s0" "$s1" "$srss" "$size" "$DKIM" <<'PY'
import sys
n, t0, tr, resp, t1, rss0, rss, s0, s1, srss, size, dkim = sys.argv[1:]
n = int(n); t0, tr, t1, s0, s1 = map(float, (t0, tr, t1, s0, s1))
http_rate = n / (t1 - t0); smtp_rate = n / (s1 - s0)
tag = " (DKIM rsa-2048)" if dkim == "1" else ""
print(f"http inject{tag}: {n} recipients, durable answer after {float(resp):.2f} s; all delivered after {t1 - t0:.1f} s = {http_rate:.0f} msg/s; peak RSS {int(rss) / 1024:.0f} MiB (at start {int(rss0) / 1024:.0f} MiB)")
print(f"smtp inject{tag}: {n} messages of {size} bytes over smtp-source, all delivered after {s1 - s0:.1f} s = {smtp_rate:.0f} msg/s; peak RSS {int(srss) / 1024:.0f} MiB")
print(f"ratio http/smtp delivery rate: {http_rate / smtp_rate:.2f}x")
PY
