#!/usr/bin/env bash
# Megalith against its peers (nostr-lmdb, nostrdb, SQLite with nostr-rs-relay's
# schema) on one generated dataset: generates COUNT signed events once (kept in
# target/peers-data/ for later runs), then runs the benches/peers harness in
# release mode and writes its markdown report beside the dataset.
#
#   scripts/bench-peers.sh [COUNT] [HARNESS FLAGS...]     (default 1000000 events)
#   scripts/bench-peers.sh 200000 --queries 500 --peers megalith,nostrdb
#
# Needs a C compiler (nostrdb, libsodium and SQLite are built from source).
set -euo pipefail
cd "$(dirname "$0")/.."
count="${1:-1000000}"
shift || true
data_dir="${PEERS_DATA_DIR:-target/peers-data}"
mkdir -p "$data_dir"

events="$data_dir/events-$count-seed1.jsonl"
if [ ! -s "$events" ]; then
  echo "generating $count events with 'megalith generate --seed 1'" >&2
  cargo run --release --quiet -- generate --count "$count" --seed 1 --out "$events.partial"
  mv "$events.partial" "$events"
fi

report="$data_dir/report-$count.md"
cargo run --release --manifest-path benches/peers/Cargo.toml -- \
  --events "$events" --report "$report" "$@"
echo "report written to $report" >&2
