#!/usr/bin/env bash
# The feed pages under load (issue 15): 20 simulated people with distinct
# npubs start at once against 3 local relays holding 1M generated events,
# polling /timeline; then /timeline on a 1M-event store while a mirror
# writes into it (web/benches/feed_load.rs). Loopback only, bounded (each
# person gives up after 90 s).
#
#   scripts/feed-load.sh
#   FEED_LOAD_PEOPLE=10 scripts/feed-load.sh
#
# Uses the feed-jobs benchmark's data (generated once into target/feed-bench
# by its `prepare`). Prints a summary on stderr and one JSON line on stdout.
set -euo pipefail
cd "$(dirname "$0")/.."
cargo build --release --bin megalith >&2
export MEGALITH_BIN="${MEGALITH_BIN:-$PWD/target/release/megalith}"
cargo bench -p megalith-ingest --bench feed_jobs -- prepare >&2
cargo bench -p megalith-web --bench feed_load
