#!/usr/bin/env bash
# How Megalith's trusted ingest rate depends on the store's size, with the
# data held fixed. scripts/ingest-scaling.sh times successive parts of one
# generated stream, but later parts of that stream are heavier (contact
# lists grow, so events carry more tags): its slowdown mixes store size with
# data. Here every measurement imports a probe of PROBE events from a
# second stream (seed 2, never in the store) twice: into a fresh store, and
# into the big store after each STEP events of the main stream (seed 1).
# The ratio of the two rates is the cost of the store's size alone.
#
#   scripts/ingest-probe.sh [COUNT] [STEP] [PROBE]   (default 4000000 1000000 100000)
#   INGEST_PROBE_KEEP=DIR keeps the big store in DIR at the end.
set -euo pipefail
cd "$(dirname "$0")/.."
count="${1:-4000000}"
step="${2:-1000000}"
probe="${3:-100000}"
data_dir="${PEERS_DATA_DIR:-target/peers-data}"
mkdir -p "$data_dir"
cargo build --release --quiet --bin megalith
megalith=target/release/megalith

main_events="$data_dir/events-$count-seed1.jsonl"
if [ ! -s "$main_events" ] && [ -s "$data_dir/events-10000000-seed1.jsonl" ]; then
  # The first COUNT events of the 10M stream, if that was generated.
  head -n "$count" "$data_dir/events-10000000-seed1.jsonl" > "$main_events.partial"
  mv "$main_events.partial" "$main_events"
fi
if [ ! -s "$main_events" ]; then
  "$megalith" generate --count "$count" --seed 1 --quiet --out "$main_events.partial"
  mv "$main_events.partial" "$main_events"
fi
steps=$((count / step))
probe_events="$data_dir/probe-$((steps * probe))-seed2.jsonl"
if [ ! -s "$probe_events" ]; then
  "$megalith" generate --count $((steps * probe)) --seed 2 --quiet --out "$probe_events.partial"
  mv "$probe_events.partial" "$probe_events"
fi

work="$(mktemp -d "${TMPDIR:-/tmp}/ingest-probe.XXXXXX")"
trap 'rm -rf "$work"' EXIT
# INGEST_PROBE_KEEP=DIR keeps the big store there at the end (to profile
# a probe into it); DIR must not exist.
keep="${INGEST_PROBE_KEEP:-}"
split -l "$step" -d -a 4 "$main_events" "$work/part-"
split -l "$probe" -d -a 4 "$probe_events" "$work/probe-"

# Seconds to import FILE into STORE (trusted, fsync per batch, as W1b).
import_time() {
  local started ended
  started=$(date +%s.%N)
  if ! "$megalith" import --data "$2" --trusted --durability always --quiet "$1" \
      2> "$work/import.log"; then
    cat "$work/import.log" >&2
    exit 1
  fi
  ended=$(date +%s.%N)
  awk -v a="$started" -v b="$ended" 'BEGIN { printf "%.3f", b - a }'
}

echo "| store size | main part events/s | probe into fresh store (events/s) | probe into this store (events/s) | size cost (fresh ÷ this) |"
echo "|---|---|---|---|---|"
total=0
k=0
for part in "$work"/part-*; do
  lines=$(wc -l < "$part")
  t=$(import_time "$part" "$work/store")
  rm "$part"
  total=$((total + lines))
  probe_part=$(printf "%s/probe-%04d" "$work" "$k")
  fresh_t=$(import_time "$probe_part" "$work/fresh-$k")
  rm -rf "$work/fresh-$k"
  big_t=$(import_time "$probe_part" "$work/store")
  awk -v t="$total" -v n="$lines" -v s="$t" -v p="$probe" -v f="$fresh_t" -v b="$big_t" \
    'BEGIN { printf "| %d | %.0f | %.0f | %.0f | %.2f× |\n", t, n / s, p / f, p / b, b / f }'
  k=$((k + 1))
done
du -sh "$work/store" | awk '{ print "store size: " $1 }'
if [ -n "$keep" ]; then
  mv "$work/store" "$keep"
  echo "store kept in $keep"
fi
