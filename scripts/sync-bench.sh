#!/usr/bin/env bash
# NIP-77 sync between two Megaliths (issue 18): each holds N events, and
# each lacks a different P percent of the other's. `megalith serve` on one,
# `megalith sync --dir both` from the other; then a dry run must find no
# difference left and both stores must hold the same count.
#
#   scripts/sync-bench.sh [N] [PERCENT]     # default 1000000 1
#
# Generated data (megalith generate, seed 7) and the stores are kept under
# target/sync-bench/ (about 2.5 GB at 1M); the report (reconcile time and
# rounds, bytes each way, the whole sync's time and what moved) is printed
# as JSON lines and as a summary. Uses $MEGALITH_BIN or builds
# target/release/megalith. Loopback only.
set -euo pipefail

N="${1:-1000000}"
PERCENT="${2:-1}"
ROOT="$(cd "$(dirname "$0")/.." && pwd)"
cd "$ROOT"
BIN="${MEGALITH_BIN:-}"
if [ -z "$BIN" ]; then
    cargo build --release -q -p megalith-cli
    BIN="target/release/megalith"
fi
OUT="target/sync-bench"
mkdir -p "$OUT"
log() { echo "sync-bench: $*" >&2; }

# N + N*P/100 events: A lacks one slice of P percent, B another.
DIFF=$((N * PERCENT / 100))
TOTAL=$((N + DIFF))
ALL="$OUT/all-$TOTAL.jsonl"
if [ ! -s "$ALL" ]; then
    log "generating $TOTAL events"
    "$BIN" generate --count "$TOTAL" --seed 7 --authors 20000 --quiet --out "$ALL.tmp"
    mv "$ALL.tmp" "$ALL"
fi
# Lines 1..DIFF only in B, lines DIFF+1..2*DIFF only in A (spread evenly
# would be kinder to negentropy; slices of the stream are the usual case:
# a relay that was down for a while).
A_DATA="$OUT/a-$N-$PERCENT"
B_DATA="$OUT/b-$N-$PERCENT"
rm -rf "$A_DATA" "$B_DATA"
log "importing A and B ($N events each)"
awk -v d="$DIFF" 'NR > d' "$ALL" | "$BIN" import --trusted --quiet --data "$A_DATA" -
awk -v d="$DIFF" 'NR <= d || NR > 2 * d' "$ALL" | "$BIN" import --trusted --quiet --data "$B_DATA" -

PORT="$(python3 -c 'import socket;s=socket.socket();s.bind(("127.0.0.1",0));print(s.getsockname()[1])')"
CONFIG="$OUT/serve.toml"
# A relay that takes what a sync sends as fast as it comes.
cat >"$CONFIG" <<EOF
[limits]
events_per_second = 1000000
events_burst = 1000000
ingress_bytes_per_second = 1073741824
ingress_burst_bytes = 1073741824
max_sync_events = 10000000
EOF
"$BIN" serve --data "$A_DATA" --listen "127.0.0.1:$PORT" --config "$CONFIG" >"$OUT/serve.log" 2>&1 &
SERVER=$!
trap 'kill $SERVER 2>/dev/null; wait $SERVER 2>/dev/null' EXIT
for _ in $(seq 1 100); do
    python3 -c "import urllib.request;urllib.request.urlopen('http://127.0.0.1:$PORT/health',timeout=1)" 2>/dev/null && break
    sleep 0.2
done

URL="ws://127.0.0.1:$PORT"
log "dry run (reconcile only)"
"$BIN" sync "$URL" --data "$B_DATA" --dry-run --json | tee "$OUT/dry.json"
log "sync --dir both"
"$BIN" sync "$URL" --data "$B_DATA" --dir both --json | tee "$OUT/both.json"
log "dry run again: nothing may differ"
"$BIN" sync "$URL" --data "$B_DATA" --dry-run --json | tee "$OUT/after.json"
python3 - "$OUT" "$N" "$DIFF" <<'EOF'
import json, sys
out, n, diff = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
dry, both, after = (json.load(open(f"{out}/{f}.json")) for f in ("dry", "both", "after"))
print(f"sync-bench: {n} events each side, {diff} only on each")
print(f"  reconcile: {dry['rounds']} rounds, {dry['reconcile_seconds']:.2f} s "
      f"(of which {dry['local_items_seconds']:.2f} s reading this side's items), "
      f"{dry['reconcile_bytes_sent']} bytes sent, {dry['reconcile_bytes_received']} received; "
      f"{dry['only_here']} only here, {dry['only_there']} only there")
print(f"  sync both: {both['seconds']:.2f} s in all ({both['reconcile_seconds']:.2f} s reconciling), "
      f"{both['stored']} fetched and stored, {both['accepted']} sent and accepted, "
      f"{both['bytes_sent']} bytes sent, {both['bytes_received']} received")
print(f"  after: {after['only_here']} only here, {after['only_there']} only there")
# Refusals are not failures: an event one side sends may be one the other
# side's deletion removes (the two stores then agree without it).
print(f"  refused by the relay: {both['refused']} {both['refusals'][:3]}; "
      f"kept out here (replaced or deleted): {both['superseded']}")
ok = after["only_here"] == 0 and after["only_there"] == 0 and both["missing"] == 0
sys.exit(0 if ok else 1)
EOF
