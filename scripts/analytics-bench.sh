#!/usr/bin/env bash
# Issue 16's analytics benchmark: Megalith's video analytics against DuckDB
# and chDB (in-process ClickHouse) on the same generated events.
#
#   scripts/analytics-bench.sh                   # 1,000,000 events (about 5 min on 2 idle cores)
#   scripts/analytics-bench.sh --events 10000000 --runs 1   # the 10M run (~50 GB of disk, hours; not run so far)
#   scripts/analytics-bench.sh --events 100000 --runs 1     # a quick check (about 1 min)
#
# Options: --events N (1000000), --runs R (ingest runs per mode, 3),
# --seed S (1), --work DIR (benches/analytics/data), --api-reps N (200),
# --sql-reps N (20), --visibility-tries N (50).
#
# 1. `megalith generate --count N --start-time NOW-N/2.64-600`: events that
#    end shortly before now (trending covers 7 days, the series 30).
# 2. Trusted ingest (`megalith import --trusted`) of that file into fresh
#    stores, --analytics off and on alternately, R runs each: medians, on/off.
# 3. `megalith serve --analytics on --feed off` on the last analytics store,
#    on a free loopback port; benches/analytics/bench.py times the four
#    questions over HTTP (keep-alive, sequential), loads the JSONL into
#    DuckDB and chDB and asks them the same in SQL, checks every answer
#    equal (exit 1 and the differences if not), then publishes reactions
#    over WebSocket and polls the API until each is counted.
#
# Python packages are pinned in benches/analytics/requirements.txt and
# installed into benches/analytics/.venv; data and stores go to --work.
# Everything runs on loopback, each step under a timeout; the server is
# stopped on exit. Summary table on stdout, progress on stderr, all figures
# in WORK/results.json. WORK keeps the events and the analytics store for a
# look afterwards (about 2.7 GB at 1M events; the next run replaces them).
set -euo pipefail

ROOT="$(cd "$(dirname "$0")/.." && pwd)"
if [ -n "${MEGALITH_BIN:-}" ] && [ "${MEGALITH_BIN#/}" = "$MEGALITH_BIN" ]; then
    MEGALITH_BIN="$PWD/$MEGALITH_BIN"
fi
cd "$ROOT"

EVENTS=1000000
RUNS=3
SEED=1
WORK="$ROOT/benches/analytics/data"
API_REPS=200
SQL_REPS=20
VIS_TRIES=50
while [ $# -gt 0 ]; do
    case "$1" in
        --events) EVENTS="$2"; shift 2 ;;
        --runs) RUNS="$2"; shift 2 ;;
        --seed) SEED="$2"; shift 2 ;;
        --work) WORK="$2"; shift 2 ;;
        --api-reps) API_REPS="$2"; shift 2 ;;
        --sql-reps) SQL_REPS="$2"; shift 2 ;;
        --visibility-tries) VIS_TRIES="$2"; shift 2 ;;
        -h | --help) sed -n '2,/^set -euo/p' "$0" | sed '$d; s/^# \{0,1\}//'; exit 0 ;;
        *) echo "analytics-bench: unknown option $1" >&2; exit 2 ;;
    esac
done
case "$EVENTS$RUNS" in *[!0-9]*) echo "analytics-bench: --events and --runs take numbers" >&2; exit 2 ;; esac
[ "$RUNS" -ge 1 ] || { echo "analytics-bench: --runs must be at least 1" >&2; exit 2; }

log() { echo "analytics-bench: $*" >&2; }
die() { log "$*"; exit 1; }

mkdir -p "$WORK"
WORK="$(cd "$WORK" && pwd)"
BENCH_DIR="$ROOT/benches/analytics"
VENV="$BENCH_DIR/.venv"
SERVER_PID=""
BENCH_PID=""

cleanup() {
    if [ -n "$BENCH_PID" ]; then kill -TERM "$BENCH_PID" 2>/dev/null || true; fi
    if [ -n "$SERVER_PID" ] && kill -0 "$SERVER_PID" 2>/dev/null; then
        kill -TERM "$SERVER_PID" 2>/dev/null || true
        for _ in $(seq 1 100); do kill -0 "$SERVER_PID" 2>/dev/null || break; sleep 0.1; done
        kill -KILL "$SERVER_PID" 2>/dev/null || true
    fi
}
trap cleanup EXIT
trap 'exit 130' INT TERM

# ---- the binary and the Python packages ------------------------------------------
if [ -z "${MEGALITH_BIN:-}" ]; then
    log "cargo build --release -p megalith-cli"
    timeout 1800 cargo build --release -p megalith-cli >&2 || die "cargo build failed"
    MEGALITH_BIN="$ROOT/target/release/megalith"
fi
[ -x "$MEGALITH_BIN" ] || die "no binary at $MEGALITH_BIN"

if [ ! -x "$VENV/bin/python" ]; then
    log "creating $VENV"
    if ! python3 -m venv "$VENV"; then
        rm -rf "$VENV"
        { apt-get update -qq && apt-get install -y -qq python3-venv; } >&2 || die "could not install python3-venv"
        python3 -m venv "$VENV" || die "python3 -m venv failed"
    fi
fi
stamp="$VENV/.requirements.sha256"
if ! sha256sum -c --status "$stamp" 2>/dev/null; then
    log "pip install -r benches/analytics/requirements.txt"
    timeout 900 "$VENV/bin/python" -m pip install -q --disable-pip-version-check \
        -r "$BENCH_DIR/requirements.txt" >&2 || die "pip install failed"
    sha256sum "$BENCH_DIR/requirements.txt" >"$stamp"
fi

# ---- 1. the events, ending near now ----------------------------------------------
JSONL="$WORK/events.jsonl"
now=$(date +%s)
# The generator writes about 2.65 events per generated second; /2.64 and 10
# minutes of margin end the stream shortly before now (a store refuses events
# more than 15 minutes ahead of its clock, checked below).
START=$((now - EVENTS * 100 / 264 - 600))
log "generating $EVENTS events (seed $SEED) from $(date -u -d "@$START" +%FT%TZ)"
rm -f "$JSONL"
t0=$(date +%s)
timeout 3600 "$MEGALITH_BIN" generate --count "$EVENTS" --seed "$SEED" --start-time "$START" \
    --out "$JSONL" --quiet || die "megalith generate failed"
log "generated in $(($(date +%s) - t0)) s: $(du -h "$JSONL" | cut -f1)"
last=$(tail -n 2000 "$JSONL" | grep -o '"created_at":[0-9]*' | cut -d: -f2 | sort -n | tail -1)
log "last event at $(date -u -d "@$last" +%FT%TZ), $((last - $(date +%s))) s from now"
[ "$last" -le $(($(date +%s) + 600)) ] || die "the events end in the future; lower the rate estimate"

# ---- 2. trusted ingest, analytics off and on -------------------------------------
INGEST="$WORK/ingest.tsv"
# Trusted ingest slows as a store grows (docs/performance.md): bound each
# import by an hour or 2 ms per event, whichever is longer.
IMPORT_TIMEOUT=$((EVENTS / 500 > 3600 ? EVENTS / 500 : 3600))
printf 'run\tanalytics\tevents\tms\tcpu_s\n' >"$INGEST"
TIMEFORMAT='%3U+%3S'
for run in $(seq 1 "$RUNS"); do
    # Alternate which mode goes first, so drift on a shared machine falls on both.
    if [ $((run % 2)) -eq 1 ]; then order="off on"; else order="on off"; fi
    for mode in $order; do
        dir="$WORK/store-$mode"
        rm -rf "$dir"
        sync
        t0=$(date +%s%N)
        # bash's `time` gives the CPU seconds (user + sys) of the import too.
        { time timeout "$IMPORT_TIMEOUT" "$MEGALITH_BIN" import --trusted --data "$dir" --analytics "$mode" \
            --quiet --json "$JSONL" >"$WORK/import-$mode.json" 2>"$WORK/import-$mode.err"; } \
            2>"$WORK/import-$mode.time" || die "import (analytics $mode) failed: $(cat "$WORK/import-$mode.err")"
        t1=$(date +%s%N)
        ms=$(((t1 - t0) / 1000000))
        cpu=$(tail -n 1 "$WORK/import-$mode.time")
        log "run $run, analytics $mode: $EVENTS events in $ms ms = $((EVENTS * 1000 / ms)) events/s (CPU $cpu s)"
        printf '%s\t%s\t%s\t%s\t%s\n' "$run" "$mode" "$EVENTS" "$ms" "$cpu" >>"$INGEST"
        if [ "$mode" = off ]; then rm -rf "$dir"; fi
    done
done

# ---- 3. the API, DuckDB, chDB, visibility -----------------------------------------
PORT=$("$VENV/bin/python" -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
BASE="http://127.0.0.1:$PORT"
log "megalith serve on $BASE"
"$MEGALITH_BIN" serve --data "$WORK/store-on" --listen "127.0.0.1:$PORT" --analytics on \
    --feed off >"$WORK/serve.log" 2>&1 &
SERVER_PID=$!
for _ in $(seq 1 3000); do
    curl -sf "$BASE/health" >/dev/null 2>&1 && break
    kill -0 "$SERVER_PID" 2>/dev/null || die "megalith serve exited (see $WORK/serve.log)"
    sleep 0.1
done
curl -sf "$BASE/health" >/dev/null || die "megalith serve did not answer within 300 s"

status=0
# In the background with `wait`, so that a signal to this script runs the
# trap (stopping both) at once instead of after the benchmark.
timeout $((5400 + EVENTS / 1000)) "$VENV/bin/python" "$BENCH_DIR/bench.py" --jsonl "$JSONL" --base "$BASE" \
    --work "$WORK" --ingest "$INGEST" --api-reps "$API_REPS" --sql-reps "$SQL_REPS" \
    --visibility-tries "$VIS_TRIES" &
BENCH_PID=$!
wait "$BENCH_PID" || status=$?
BENCH_PID=""

kill -TERM "$SERVER_PID" 2>/dev/null || true
wait "$SERVER_PID" 2>/dev/null || log "megalith serve exited with status $?"
SERVER_PID=""
exit "$status"
