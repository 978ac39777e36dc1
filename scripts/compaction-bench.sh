#!/usr/bin/env bash
# Compaction of a store where about a third of the events were deleted or
# replaced (tests/compaction_bench.rs at a larger size, in release): the
# store's bytes on disk before and after, and follow-feed read and write
# batch latencies idle and during the compaction. Answers are checked
# against the brute-force reference; the figures are printed, not asserted.
#
#   scripts/compaction-bench.sh [EVENTS] [SAMPLES] [background]
#   (default 1000000 2000; `background`: the pass `megalith serve` runs,
#   segments with a quarter removed at 32 MiB/s, active segments left)
set -euo pipefail
cd "$(dirname "$0")/.."
events="${1:-1000000}"
samples="${2:-2000}"
background=0
if [ "${3:-}" = background ]; then background=1; fi
MEGALITH_COMPACT_BENCH_EVENTS="$events" MEGALITH_COMPACT_BENCH_SAMPLES="$samples" \
  MEGALITH_COMPACT_BENCH_BACKGROUND="$background" \
  cargo test --release --quiet --test compaction_bench -- --nocapture 2>&1 \
  | grep "compaction bench"
