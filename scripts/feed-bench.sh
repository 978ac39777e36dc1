#!/usr/bin/env bash
# Feed jobs under load (issue 14): N feed jobs at once against 3 `megalith
# serve` processes on loopback holding generated data (ingest/benches/feed_jobs.rs).
#
#   scripts/feed-bench.sh            # 1M events, 10,000 authors, 20 jobs
#   FEED_BENCH_EVENTS=200000 FEED_BENCH_JOBS=10 scripts/feed-bench.sh
#
# The data is generated once into target/feed-bench (FEED_BENCH_DIR) and
# reused; each run starts from a fresh ingest store. Prints a summary on
# stderr and one JSON line on stdout. Loopback only; nothing dials out.
set -euo pipefail
cd "$(dirname "$0")/.."
cargo build --release --bin megalith >&2
export MEGALITH_BIN="${MEGALITH_BIN:-$PWD/target/release/megalith}"
cargo bench -p megalith-ingest --bench feed_jobs -- prepare >&2
cargo bench -p megalith-ingest --bench feed_jobs -- run
