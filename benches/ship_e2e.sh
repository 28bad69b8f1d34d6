#!/usr/bin/env bash
# What event shipping costs end to end (issue 19: <= 5%): benches/e2e.sh with every event
# shipped to a signed webhook, RabbitMQ and JSONL files at once, against the same e2e.sh run
# without shipping, alternating off/on, in the same session. Needs what e2e.sh needs plus
# rabbitmq-server and python3-pika (scripts/test installs both).
#
#   benches/ship_e2e.sh [--rounds R] [--only webhook|amqp|jsonl] [--against BIN] [--busy F]
#                       [E2E.SH ARGS...]   (e.g. --messages 10000 --dkim)
# --only: ship to that destination alone (which one costs what).
# --against BIN: a third run per round, another build's "on" (a before/after in the same
#   rounds); the order of the runs rotates from round to round.
# --busy F: a third run per round without shipping, beside a memory-heavy Python loop busy F
#   of a core (0.6 is about what the receivers take): does a co-located process alone raise
#   Gannet's CPU per message?
#
# The receivers are real and run on the same machine (their CPU counts against the "on" runs,
# as it would for an operator running them beside Gannet): tests/e2e/scripts/webhook_receiver.py
# (verifies each signature, writes each event), a RabbitMQ node of this run only (its own
# epmd, node name, ports and data directory; exchange `gannet`, durable queue `events`), and
# a JSONL directory. After each "on" run e2e.sh waits until every destination has taken every
# event (GANNET_BENCH_WAIT_SHIP) and prints how long that took after the last delivery (the
# catch-up) and the backlog at that moment, and the CPU of shipping's own threads (gannet-ship:
# what shipping itself costs, read exactly; the rest of on/off is its indirect cost and noise).
# Prints one line per run and the on/off ratios.
set -euo pipefail
cd "$(dirname "$0")/.."
ROUNDS=3
ONLY=""
AGAINST=""
BUSY=""
ARGS=()
while [ $# -gt 0 ]; do
  case "$1" in
    --rounds) ROUNDS=$2; shift ;;
    --only) ONLY=$2; shift ;;
    --against) AGAINST=$2; shift ;;
    --busy) BUSY=$2; shift ;;
    *) ARGS+=("$1") ;;
  esac
  shift
done
base=${GANNET_BENCH_PORT_BASE:-3500}
AMQP_PORT=$((base + 120)); DIST_PORT=$((base + 121)); EPMD_PORT=$((base + 122)); HOOK_PORT=$((base + 123))
work=$(mktemp -d /var/tmp/gannet-ship-bench.XXXXXX)
pids=()
cleanup() {
  for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
  kill "$(cat "$work/rabbit.pid" 2>/dev/null)" 2>/dev/null || true
  wait 2>/dev/null || true
  rm -rf "$work"
}
trap cleanup EXIT

if [ -z "${GANNET_BIN:-}" ]; then
  cargo build --release -q
  export GANNET_BIN=$PWD/target/release/gannet
fi

epmd -port "$EPMD_PORT" >/dev/null 2>&1 &
pids+=($!)
mkdir -p "$work/rabbit"
echo "[]." >"$work/rabbit/enabled_plugins"
echo "disk_free_limit.absolute = 1MB" >"$work/rabbit/rabbitmq.conf"
HOME="$work/rabbit" RABBITMQ_NODENAME="gannetbench$$@localhost" RABBITMQ_NODE_IP_ADDRESS=127.0.0.1 \
  RABBITMQ_NODE_PORT=$AMQP_PORT RABBITMQ_DIST_PORT=$DIST_PORT ERL_EPMD_PORT=$EPMD_PORT \
  RABBITMQ_MNESIA_BASE="$work/rabbit/mnesia" RABBITMQ_LOG_BASE="$work/rabbit/log" RABBITMQ_LOGS=- \
  RABBITMQ_ENABLED_PLUGINS_FILE="$work/rabbit/enabled_plugins" RABBITMQ_CONFIG_FILE="$work/rabbit/rabbitmq" \
  RABBITMQ_PID_FILE="$work/rabbit.pid" \
  /usr/lib/rabbitmq/bin/rabbitmq-server >"$work/rabbit.log" 2>&1 &
pids+=($!)
for _ in $(seq 1200); do
  (exec 3<>"/dev/tcp/127.0.0.1/$AMQP_PORT") 2>/dev/null && break
  sleep 0.1
done
python3 tests/e2e/scripts/amqp_client.py "$AMQP_PORT" setup
python3 tests/e2e/scripts/webhook_receiver.py "$HOOK_PORT" bench-secret-for-the-hmac "$work/hook.jsonl" &
pids+=($!)

webhook_conf="[[webhook]]
url = \"http://127.0.0.1:$HOOK_PORT/events\"
secret = \"bench-secret-for-the-hmac\""
amqp_conf="[[amqp]]
url = \"amqp://guest:guest@127.0.0.1:$AMQP_PORT/%2f\"
exchange = \"gannet\"
routing_key = \"gannet.{tenant}.{type}\""
jsonl_conf="[[jsonl]]
dir = \"$work/jsonl\""
case "$ONLY" in
  "") ship_conf="$webhook_conf
$amqp_conf
$jsonl_conf" ;;
  webhook) ship_conf=$webhook_conf ;;
  amqp) ship_conf=$amqp_conf ;;
  jsonl) ship_conf=$jsonl_conf ;;
  *) echo "--only webhook|amqp|jsonl" >&2; exit 2 ;;
esac
# SHIP_BENCH_EXTRA: more TOML for the shipping runs only (e.g. "[outbox] commit_interval = \"0s\"").
ship_conf="$ship_conf
${SHIP_BENCH_EXTRA:-}"

field() { # field NAME LINE: the number before NAME in e2e.sh's result line
  awk -v n="$1" '{for(i=2;i<=NF;i++) if($i==n) {print $(i-1); exit}}' <<<"$2"
}
# CPU (user + system, clock ticks) of a receiver process so far; 0 when it is not running.
ticks() { awk '{print $14 + $15}' "/proc/$1/stat" 2>/dev/null || echo 0; }
hook_pid=${pids[-1]}
rabbit_pid=$(cat "$work/rabbit.pid" 2>/dev/null || echo 0)
hz=$(getconf CLK_TCK)
arms="off on"
[ -n "$AGAINST" ] && arms="$arms against"
[ -n "$BUSY" ] && arms="$arms busy"
read -ra arm_list <<<"$arms"
results=()  # "round arm cpu rate receivers-cpu shipping-threads-cpu" (ms per message)
for r in $(seq "$ROUNDS"); do
  # Rotate the order (with a third arm each takes every place in turn).
  k=$(( (r - 1) % ${#arm_list[@]} ))
  order=("${arm_list[@]:k}" "${arm_list[@]:0:k}")
  for mode in "${order[@]}"; do
    case "$mode" in
      on | against)
        bin=$GANNET_BIN
        [ "$mode" = against ] && bin=$AGAINST
        h0=$(ticks "$hook_pid"); r0=$(ticks "$rabbit_pid")
        out=$(GANNET_BIN=$bin GANNET_BENCH_EXTRA="$ship_conf" GANNET_BENCH_WAIT_SHIP=1 benches/e2e.sh --no-baseline "${ARGS[@]}")
        h1=$(ticks "$hook_pid"); r1=$(ticks "$rabbit_pid") ;;
      busy)
        python3 - "$BUSY" <<'PY' &
import sys, time
# Memory-heavy work (64 KiB copies over a 16 MiB buffer, as a broker churns messages), busy
# this fraction of each 10 ms.
duty = float(sys.argv[1])
buf, chunk = bytearray(16 << 20), bytes(range(256)) * 256
n, i = len(buf) // len(chunk), 0
while True:
    t = time.perf_counter()
    while time.perf_counter() - t < 0.01 * duty:
        o = (i % n) * len(chunk)
        buf[o:o + len(chunk)] = chunk
        i += 7
    time.sleep(0.01 * (1 - duty))
PY
        busy_pid=$!
        out=$(benches/e2e.sh --no-baseline "${ARGS[@]}")
        kill "$busy_pid"; wait "$busy_pid" 2>/dev/null || true ;;
      *) out=$(benches/e2e.sh --no-baseline "${ARGS[@]}") ;;
    esac
    line=$(grep '^gannet:' <<<"$out")
    rate=$(field msg/s "$line")
    cpu=$(awk '{for(i=1;i<=NF;i++) if($i=="CPU") {print $(i+1); exit}}' <<<"$line")
    ctx=$(awk '{for(i=1;i<=NF;i++) if($i=="context") {print $(i-1); exit}}' <<<"$line")
    echo "round $r shipping $mode: $rate msg/s, CPU $cpu ms/msg, $ctx context switches/msg, load $(cut -d' ' -f1 /proc/loadavg)"
    grep '^  shipping' <<<"$out" || true
    rc=0
    if [ "$mode" = on ] || [ "$mode" = against ]; then
      # The receivers share the two cores with Gannet: their CPU over the run, per message.
      n=$(field messages "$line")
      rc=$(awk -v h=$((h1 - h0)) -v r=$((r1 - r0)) -v hz="$hz" -v n="$n" \
        'BEGIN { printf "%.3f", (h + r) * 1000 / hz / n }')
      awk -v h=$((h1 - h0)) -v r=$((r1 - r0)) -v hz="$hz" -v n="$n" 'BEGIN {
        printf "  receivers CPU: webhook receiver %.3f ms/msg, RabbitMQ %.3f ms/msg\n",
          h * 1000 / hz / n, r * 1000 / hz / n }'
    fi
    st=$(awk '/shipping threads:/ {for(i=1;i<=NF;i++) if($i=="CPU") {print $(i+1); exit}}' <<<"$out")
    results+=("$r $mode $cpu $rate $rc ${st:-0}")
  done
done
[ -f "$work/hook.jsonl" ] && echo "webhook receiver: $(wc -l <"$work/hook.jsonl") events, $(grep -c '"sig_ok": false' "$work/hook.jsonl" || true) with a bad signature"
printf '%s\n' "${results[@]}" >"$work/results"
python3 - "$work/results" <<'PY'
import random, statistics as st, sys
runs = {}
for l in open(sys.argv[1]):
    r, arm, cpu, rate, recv, ship = l.split()
    runs.setdefault(int(r), {})[arm] = (float(cpu), float(rate), float(recv), float(ship))
def med(arm, i):
    return st.median(v[arm][i] for v in runs.values() if arm in v)
on = [v["on"] for v in runs.values() if "on" in v]
print(f"throughput on/off: {med('on', 1) / med('off', 1):.3f} "
      f"(medians {med('on', 1):.0f} / {med('off', 1):.0f} msg/s over {len(on)} rounds)")
print(f"CPU per message on/off: {med('on', 0) / med('off', 0):.3f} "
      f"(medians {med('on', 0):.3f} / {med('off', 0):.3f} ms)")
# Per round ratios (the runs of a round ran next to each other): their median, with a 95%
# bootstrap interval, says more than one ratio of medians when single runs spread +-10%.
for a, b in (("on", "off"), ("against", "off"), ("on", "against"), ("busy", "off"), ("on", "busy")):
    rs = [v[a][0] / v[b][0] for v in runs.values() if a in v and b in v]
    if not rs:
        continue
    random.seed(1)
    boot = sorted(st.median(random.choices(rs, k=len(rs))) for _ in range(2000))
    print(f"CPU per message {a}/{b}, per round: median {st.median(rs):.3f} "
          f"(95% bootstrap {boot[50]:.3f}-{boot[1949]:.3f}), mean {st.mean(rs):.3f}, {len(rs)} rounds")
# Shipping's own threads (gannet-ship), read per thread: what shipping itself costs, without
# the noise of a difference of two runs; the rest of on/off is its indirect cost (caches,
# scheduling beside the SMTP workers).
for a in ("on", "against"):
    sh = [v[a][3] / v["off"][0] for v in runs.values() if a in v and "off" in v and v[a][3]]
    if sh:
        print(f"shipping threads' CPU per message ({a}) / CPU per message off: median {st.median(sh):.3f} "
              f"(range {min(sh):.3f}-{max(sh):.3f}), {len(sh)} rounds")
recv = [x[2] for x in on]
if any(recv):
    # Gannet and the receivers share the two cores: the receivers' CPU per message is what
    # the "on" runs lose to them (throughput is CPU-bound here, so roughly that fraction).
    share = st.median(recv) / (med("on", 0) + st.median(recv))
    print(f"receivers' CPU per message (median): {st.median(recv):.3f} ms, "
          f"{share:.0%} of Gannet + receivers in the shipping runs")
PY
