#!/usr/bin/env bash
# Runs every cargo-fuzz target (or those named) for a bounded time each, on nightly.
#
#   fuzz/run.sh [SECONDS_PER_TARGET] [TARGET...]      (default 120 s, every target)
#
# Inputs that add coverage are written back to fuzz/corpus/<target>/ (commit the useful ones;
# `cargo +nightly fuzz cmin <target>` shrinks a corpus first). A crash stops that target and
# leaves its input in fuzz/artifacts/<target>/: fix it, copy the input into the corpus, and
# tests/fuzz_corpus.rs replays it on stable from then on. Prints each target's executions.
set -euo pipefail
cd "$(dirname "$0")"
secs=${1:-120}
shift || true
targets=("$@")
if [ ${#targets[@]} -eq 0 ]; then
    mapfile -t targets < <(cargo +nightly fuzz list)
fi
command -v cargo-fuzz >/dev/null || cargo install cargo-fuzz --locked
status=0
for t in "${targets[@]}"; do
    mkdir -p "corpus/$t"
    log=$(mktemp)
    # bounce_report also reads the bounce fixtures as seeds (new inputs go to corpus/$t).
    seeds=()
    if [ "$t" = bounce_report ]; then seeds=(../tests/fixtures/bounces); fi
    if cargo +nightly fuzz run -O "$t" "corpus/$t" "${seeds[@]}" -- -max_total_time="$secs" -max_len=65536 \
        -rss_limit_mb=2048 -print_final_stats=1 >"$log" 2>&1; then
        result=ok
    else
        result=CRASH
        status=1
    fi
    execs=$(grep -o 'stat::number_of_executed_units: *[0-9]*' "$log" | grep -o '[0-9]*$' || echo '?')
    echo "$t: $result, $execs executions in ${secs}s"
    [ "$result" = ok ] || tail -40 "$log"
    rm -f "$log"
done
exit $status
