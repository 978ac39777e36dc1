#!/usr/bin/env bash
# How Megalith's trusted ingest holds up as a store grows: generates COUNT
# events (`megalith generate --seed 1`, kept in target/peers-data/ like
# bench-peers.sh), splits them into parts of STEP events, and imports the
# parts one after another into one store with `megalith import --trusted`,
# printing each part's rate (a fresh process per part: each reopens the
# store, as a restarted relay would). The last part's rate against the
# first's is the slowdown from STEP to COUNT events.
#
#   scripts/ingest-scaling.sh [COUNT] [STEP]     (default 10000000 1000000)
#
# Needs about 2.1 KB of disk per event (the JSONL and the store).
set -euo pipefail
cd "$(dirname "$0")/.."
count="${1:-10000000}"
step="${2:-1000000}"
data_dir="${PEERS_DATA_DIR:-target/peers-data}"
mkdir -p "$data_dir"
cargo build --release --quiet --bin megalith
megalith=target/release/megalith

events="$data_dir/events-$count-seed1.jsonl"
if [ ! -s "$events" ]; then
  echo "generating $count events with 'megalith generate --seed 1'" >&2
  "$megalith" generate --count "$count" --seed 1 --out "$events.partial"
  mv "$events.partial" "$events"
fi

work="$(mktemp -d "${TMPDIR:-/tmp}/ingest-scaling.XXXXXX")"
trap 'rm -rf "$work"' EXIT
split -l "$step" -d -a 4 "$events" "$work/part-"
store="$work/store"
echo "| events in store after | part time (s) | events/s |"
echo "|---|---|---|"
total=0
for part in "$work"/part-*; do
  lines=$(wc -l < "$part")
  started=$(date +%s.%N)
  if ! "$megalith" import --data "$store" --trusted --durability always --quiet "$part" \
      2> "$work/import.log"; then
    cat "$work/import.log" >&2
    exit 1
  fi
  ended=$(date +%s.%N)
  rm "$part"
  total=$((total + lines))
  awk -v t="$total" -v n="$lines" -v a="$started" -v b="$ended" \
    'BEGIN { s = b - a; printf "| %d | %.1f | %.0f |\n", t, s, n / s }'
done
du -sh "$store" | awk '{ print "store size: " $1 }'
