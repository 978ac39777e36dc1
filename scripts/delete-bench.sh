#!/usr/bin/env bash
# `megalith delete` (a dry run, then the delete) on a store of generated
# events, for three filters: every reaction, the older half of the notes,
# and everything older than the middle second; the same with strfry's
# `delete` in the same run when STRFRY names a strfry binary (not part of
# this project: build it from github.com/hoytech/strfry). Prints wall times
# and what each counted and kept; nothing is asserted.
#
#   scripts/delete-bench.sh [EVENTS]          (default 1000000)
#   STRFRY=/path/to/strfry scripts/delete-bench.sh 1000000
set -euo pipefail
cd "$(dirname "$0")/.."
events="${1:-1000000}"
cargo build --release --quiet -p megalith-cli --bin megalith
megalith="$PWD/target/release/megalith"
work="$(mktemp -d /tmp/megalith-delete-bench.XXXXXX)"
trap 'rm -rf "$work"' EXIT

"$megalith" generate --count "$events" --seed 1 --quiet --out "$work/events.jsonl"
"$megalith" import --data "$work/megalith" --trusted "$work/events.jsonl" >/dev/null 2>&1
middle="$(python3 -c '
import json, sys
times = sorted(json.loads(line)["created_at"] for line in open(sys.argv[1]))
print(times[len(times) // 2])' "$work/events.jsonl")"

strfry() {
  "$STRFRY" --config "$work/strfry.conf" "$@" 2>&1
}
if [ -n "${STRFRY:-}" ]; then
  mkdir -p "$work/strfry-db"
  cat > "$work/strfry.conf" <<EOF
db = "$work/strfry-db/"
dbParams { maxreaders = 256
  mapsize = 10995116277760
  noReadAhead = false }
events { maxEventSize = 65536
  rejectEventsNewerThanSeconds = 900
  rejectEventsOlderThanSeconds = 3000000000
  rejectEphemeralEventsOlderThanSeconds = 3000000000
  ephemeralEventsLifetimeSeconds = 300
  maxNumTags = 2000
  maxTagValSize = 1024 }
relay { nofiles = 0 }
EOF
  strfry import --no-verify < "$work/events.jsonl" >/dev/null
fi

wall() { # prints the wall seconds of "$@" (its output to $work/out)
  local start end
  start=$(date +%s.%N)
  "$@" > "$work/out" 2>&1
  end=$(date +%s.%N)
  python3 -c "print(f'{$end - $start:.2f}')"
}

printf '%-40s %-9s %10s %10s %10s\n' filter store "dry run s" "delete s" "left"
for filter in '{"kinds":[7]}' "{\"kinds\":[1],\"until\":$middle}" "{\"until\":$middle}"; do
  dry=$(wall "$megalith" delete --data "$work/megalith" --filter "$filter" --dry-run --json)
  matched=$(python3 -c 'import json,sys; print(json.load(open(sys.argv[1]))["matched"])' "$work/out")
  real=$(wall "$megalith" delete --data "$work/megalith" --filter "$filter" --json)
  left=$("$megalith" count --data "$work/megalith" '{}' 2>/dev/null)
  printf '%-40s %-9s %10s %10s %10s   (matched %s)\n' "$filter" megalith "$dry" "$real" "$left" "$matched"
  if [ -n "${STRFRY:-}" ]; then
    dry=$(wall strfry delete --filter "$filter" --dry-run)
    matched=$(sed -n 's/.*Would delete \([0-9]*\) events.*/\1/p' "$work/out")
    real=$(wall strfry delete --filter "$filter")
    left=$(strfry scan --count '{}' | grep -E '^[0-9]+$' | tail -1)
    printf '%-40s %-9s %10s %10s %10s   (matched %s)\n' "$filter" strfry "$dry" "$real" "$left" "$matched"
  fi
done
