#!/usr/bin/env bash
# Runs Megalith's cargo-fuzz targets (fuzz/) on nightly, one after the other.
#
#   scripts/fuzz.sh [TARGET] [SECONDS]
#
# TARGET: record_decoder, event_json, page_decoder, store_model, or all (default); SECONDS: how long each
# target runs (default 600). Installs cargo-fuzz if it is missing. The corpus
# grows in fuzz/corpus/TARGET (seeded with the bundled real events for
# event_json); a crash leaves its input in fuzz/artifacts/TARGET and makes the
# script exit non-zero. Each run's libFuzzer output is kept in fuzz/TARGET.log.
set -euo pipefail
cd "$(dirname "$0")/.."

all_targets=(record_decoder event_json page_decoder store_model)
target=${1:-all}
seconds=${2:-600}

case "$target" in
all) targets=("${all_targets[@]}") ;;
record_decoder | event_json | page_decoder | store_model) targets=("$target") ;;
*)
    echo "usage: $0 [record_decoder|event_json|page_decoder|store_model|all] [SECONDS]" >&2
    exit 2
    ;;
esac
if ! [[ "$seconds" =~ ^[0-9]+$ ]]; then
    echo "$0: SECONDS must be a whole number, not '$seconds'" >&2
    exit 2
fi
if ! cargo +nightly --version >/dev/null 2>&1; then
    echo "$0: cargo-fuzz needs the nightly toolchain (rustup toolchain install nightly)" >&2
    exit 2
fi
if ! cargo fuzz --version >/dev/null 2>&1; then
    cargo install cargo-fuzz --locked
fi

# Seeds: each real event of the bundled test data, one per file.
seed_events() {
    local corpus=fuzz/corpus/event_json data=../shared/data/nostrdb-testdata
    [ -d "$data" ] || return 0
    [ -n "$(ls -A "$corpus" 2>/dev/null)" ] && return 0
    mkdir -p "$corpus"
    local n=0
    for file in "$data"/*.json; do
        while IFS= read -r line && [ $n -lt 400 ]; do
            [ -n "$line" ] || continue
            printf '%s' "$line" >"$corpus/seed-$n"
            n=$((n + 1))
        done <"$file"
    done
}

status=0
for t in "${targets[@]}"; do
    mkdir -p "fuzz/corpus/$t" "fuzz/artifacts/$t"
    [ "$t" = event_json ] && seed_events
    echo "== fuzzing $t for $seconds s"
    if cargo +nightly fuzz run --fuzz-dir fuzz "$t" "fuzz/corpus/$t" -- \
        -max_total_time="$seconds" -print_final_stats=1 >"fuzz/$t.log" 2>&1; then
        result="no crash"
    else
        result="FAILED (see fuzz/$t.log and fuzz/artifacts/$t)"
        status=1
    fi
    runs=$(grep -o 'Done [0-9]* runs in [0-9]* second(s)' "fuzz/$t.log" | tail -1 || true)
    execs=$(grep 'stat::number_of_executed_units' "fuzz/$t.log" | awk '{print $2}' | tail -1 || true)
    rate=$(grep 'stat::average_exec_per_sec' "fuzz/$t.log" | awk '{print $2}' | tail -1 || true)
    cov=$(grep -o 'cov: [0-9]* ft: [0-9]*' "fuzz/$t.log" | tail -1 || true)
    echo "$t: $result; ${runs:-no run summary}; execs ${execs:-?} (${rate:-?}/s); ${cov:-}"
    echo "corpus: $(find "fuzz/corpus/$t" -type f | wc -l) inputs"
    [ $status -eq 0 ] || tail -40 "fuzz/$t.log"
done
exit $status
