#!/usr/bin/env bash
# The damage sweep at full size (tests/damage_sweep.rs, in release mode): a
# one-shard store of EVENTS generated events with log segments of SEGMENT
# bytes; one byte is flipped at every 97th offset of a middle segment, one
# flip per trial, on a fresh copy each time. Each trial must be refused
# naming the damage, then repaired (what `megalith repair` runs) and, on
# another copy, rebuilt by `index-doctor rebuild`, to exactly the events of
# the brute-force reference less the one whose record was hit. Two more
# trials zero a 512-byte sector and destroy the last frame's checksum. CI
# runs 1,000 events with 64 KiB segments.
#
#   scripts/damage-sweep.sh [EVENTS] [SEGMENT]   (default 20000 and 512K; SEGMENT takes K/M)
#
# MEGALITH_SWEEP_THREADS (default: the cores) sets how many trials run at
# once; MEGALITH_SWEEP_OFFSETS=O1,O2,sector,last reruns single trials.
# Trials copy the store into $TMPDIR (default /tmp). Prints a summary at the
# end; the whole output is kept in target/damage-sweep-EVENTS.log. Exits
# non-zero if any trial failed.
set -euo pipefail
cd "$(dirname "$0")/.."
events="${1:-20000}"
segment="${2:-512K}"
if ! [[ "$events" =~ ^[0-9]+$ ]]; then
    echo "$0: EVENTS must be a whole number, not '$events'" >&2
    exit 2
fi
mkdir -p target
log="target/damage-sweep-$events.log"
started=$SECONDS
status=0
MEGALITH_SWEEP_EVENTS="$events" MEGALITH_SWEEP_SEGMENT="$segment" \
    cargo test --release --all-features --test damage_sweep -- --nocapture --test-threads=1 \
    2>&1 | tee "$log" || status=$?
elapsed=$((SECONDS - started))

echo
echo "== damage sweep: $events events, segments of $segment bytes, $((elapsed / 60)) min $((elapsed % 60)) s (with the build)"
grep -o 'sweep: .*' "$log" | grep -Ev '^sweep: [0-9]+/[0-9]+ trials' || true
if grep -q '^trial ' "$log"; then
    echo "== failed trials"
    grep '^trial ' "$log" | cut -c1-600
fi
echo "== full output: $log"
exit "$status"
