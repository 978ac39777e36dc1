#!/usr/bin/env bash
# Megalith against its peers (nostr-lmdb, nostrdb, SQLite with nostr-rs-relay's
# schema) on one generated dataset: generates COUNT signed events once (kept in
# target/peers-data/ for later runs), then runs the benches/peers harness in
# release mode and writes its markdown report beside the dataset.
#
#   scripts/bench-peers.sh [COUNT] [HARNESS FLAGS...]     (default 1000000 events)
#   scripts/bench-peers.sh 200000 --queries 500 --peers megalith,nostrdb
#
# PEERS_GENERATE adds flags to `megalith generate` (the dataset's name says
# which), for example the follow-feed case where the 500 followed authors
# are a uniform sample of 20,000, most of them posting rarely:
#
#   PEERS_GENERATE="--authors 20000 --follows uniform" scripts/bench-peers.sh 1000000 --peers megalith,nostrdb
#
# Needs a C compiler (nostrdb, libsodium and SQLite are built from source).
set -euo pipefail
cd "$(dirname "$0")/.."
count="${1:-1000000}"
shift || true
data_dir="${PEERS_DATA_DIR:-target/peers-data}"
mkdir -p "$data_dir"

generate="${PEERS_GENERATE:-}"
tag="$(printf '%s' "$generate" | tr -c 'A-Za-z0-9' '-' | tr -s '-' | sed 's/^-*//; s/-*$//')"
events="$data_dir/events-$count-seed1${tag:+-$tag}.jsonl"
if [ ! -s "$events" ]; then
  echo "generating $count events with 'megalith generate --seed 1 $generate'" >&2
  # shellcheck disable=SC2086 # the flags are meant to split
  cargo run --release --quiet -- generate --count "$count" --seed 1 $generate --out "$events.partial"
  mv "$events.partial" "$events"
fi

report="$data_dir/report-$count${tag:+-$tag}.md"
cargo run --release --manifest-path benches/peers/Cargo.toml -- \
  --events "$events" --report "$report" "$@"
echo "report written to $report" >&2
