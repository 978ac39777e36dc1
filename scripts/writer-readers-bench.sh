#!/usr/bin/env bash
# The writer's batch latency with and without heavy readers on every core
# (tests/writer_beside_readers.rs at a larger size, in release): the readers'
# answers are checked exactly; the latencies are printed, not asserted.
# Runs it twice: readers at the writer's CPU priority, then at nice 19,
# which separates the cost of sharing the CPU from the cost of sharing the
# index lock.
#
#   scripts/writer-readers-bench.sh [PRELOAD] [BATCHES]   (default 50000 200)
set -euo pipefail
cd "$(dirname "$0")/.."
preload="${1:-50000}"
batches="${2:-200}"
for nice in 0 19; do
  MEGALITH_READERS_BENCH_EVENTS="$preload" MEGALITH_READERS_BENCH_BATCHES="$batches" \
    MEGALITH_READERS_BENCH_NICE="$nice" \
    cargo test --release --quiet --test writer_beside_readers -- --nocapture 2>&1 \
    | grep "writer beside readers" | sed "s/^/readers at nice $nice: /"
done
