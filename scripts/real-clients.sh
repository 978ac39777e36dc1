#!/usr/bin/env bash
# Real-client round trips against `megalith serve`: rust-nostr's Python SDK
# (clients/python) and nostr-tools (clients/node), installed from PyPI and npm
# at the versions pinned there, and the SDK's NIP-77 sync (Client.sync, both
# ways; clients/python/sync.py). Then the other way round: Megalith's
# ingester (`megalith mirror`, `megalith publish`, `megalith sync`) against
# the SDK's LocalRelay, a relay that is not Megalith (clients/python/interop.py).
#
#   scripts/real-clients.sh [--python-only | --node-only]
#
# Installs what is missing (clients/python/.venv, clients/node/node_modules),
# uses $MEGALITH_BIN or builds target/release/megalith, starts the relay on a
# free loopback port with a fresh data dir, runs each client against it
# (each bounded by `timeout 120`), then stops the relay with SIGTERM and checks
# it exits 0. Exits non-zero if anything failed, naming what.
set -uo pipefail

ROOT="$(cd "$(dirname "$0")/.." && pwd)"
# A relative MEGALITH_BIN means relative to where the script was started.
if [ -n "${MEGALITH_BIN:-}" ] && [ "${MEGALITH_BIN#/}" = "$MEGALITH_BIN" ]; then
    MEGALITH_BIN="$PWD/$MEGALITH_BIN"
fi
cd "$ROOT"

run_python=1
run_node=1
for arg in "$@"; do
    case "$arg" in
        --python-only) run_node=0 ;;
        --node-only) run_python=0 ;;
        -h | --help) sed -n '2,12p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
        *) echo "real-clients: unknown option $arg" >&2; exit 2 ;;
    esac
done
if [ "$run_python" = 0 ] && [ "$run_node" = 0 ]; then
    echo "real-clients: --python-only and --node-only exclude each other" >&2
    exit 2
fi

log() { echo "real-clients: $*" >&2; }
die() { log "$*"; exit 1; }

PY_DIR="$ROOT/clients/python"
NODE_DIR="$ROOT/clients/node"
VENV="$PY_DIR/.venv"

# ---- install -----------------------------------------------------------------
t_install=$SECONDS
if [ "$run_python" = 1 ]; then
    if [ ! -x "$VENV/bin/python" ]; then
        log "creating $VENV"
        if ! python3 -m venv "$VENV"; then
            rm -rf "$VENV"
            log "python3 -m venv failed; installing python3-venv"
            { apt-get update -qq && apt-get install -y -qq python3-venv; } >&2 || die "could not install python3-venv"
            python3 -m venv "$VENV" || die "python3 -m venv failed again"
        fi
    fi
    # Reinstall only when requirements.txt changed since the last install.
    stamp="$VENV/.requirements.sha256"
    if ! sha256sum -c --status "$stamp" 2>/dev/null; then
        log "pip install -r clients/python/requirements.txt"
        "$VENV/bin/python" -m pip install -q --disable-pip-version-check -r "$PY_DIR/requirements.txt" >&2 \
            || die "pip install -r clients/python/requirements.txt failed"
        sha256sum "$PY_DIR/requirements.txt" >"$stamp"
    fi
fi
if [ "$run_node" = 1 ]; then
    command -v npm >/dev/null || die "npm not found (install Debian's nodejs and npm)"
    # npm ci wipes and reinstalls node_modules: only when package-lock.json changed.
    stamp="$NODE_DIR/node_modules/.package-lock.sha256"
    if ! sha256sum -c --status "$stamp" 2>/dev/null; then
        log "npm ci in clients/node"
        (cd "$NODE_DIR" && npm ci --no-audit --no-fund --loglevel=error) >&2 || die "npm ci in clients/node failed"
        sha256sum "$NODE_DIR/package-lock.json" >"$stamp"
    fi
fi
t_install=$((SECONDS - t_install))

# ---- the relay binary ----------------------------------------------------------
if [ -n "${MEGALITH_BIN:-}" ]; then
    BIN="$MEGALITH_BIN"
else
    log "building megalith (cargo build --release --bin megalith)"
    cargo build --release --bin megalith >&2 || die "cargo build failed"
    BIN="${CARGO_TARGET_DIR:-target}/release/megalith" # relative to $ROOT, as cargo sees it
fi
[ -x "$BIN" ] || die "no megalith binary at $BIN"

# ---- start the relay -------------------------------------------------------------
DATA="$(mktemp -d "${TMPDIR:-/tmp}/megalith-real-clients.XXXXXX")"
SERVER_LOG="$DATA.log"
SERVER_PID=""
cleanup() {
    if [ -n "$SERVER_PID" ] && kill -0 "$SERVER_PID" 2>/dev/null; then
        kill -KILL "$SERVER_PID" 2>/dev/null
        wait "$SERVER_PID" 2>/dev/null
    fi
    rm -rf "$DATA" "$SERVER_LOG"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

PORT="$(python3 -c 'import socket;s=socket.socket();s.bind(("127.0.0.1",0));print(s.getsockname()[1])')"
URL="ws://127.0.0.1:$PORT/"
"$BIN" serve --data "$DATA/store" --listen "127.0.0.1:$PORT" >"$SERVER_LOG" 2>&1 &
SERVER_PID=$!

# Wait for GET /health to answer 200 (python's urllib: curl may be missing).
health_ok() {
    python3 - "$PORT" <<'EOF' 2>/dev/null
import sys, urllib.request
with urllib.request.urlopen(f"http://127.0.0.1:{sys.argv[1]}/health", timeout=2) as r:
    sys.exit(0 if r.status == 200 else 1)
EOF
}
t_ready=$SECONDS
until health_ok; do
    if ! kill -0 "$SERVER_PID" 2>/dev/null; then
        cat "$SERVER_LOG" >&2
        die "megalith serve exited before answering /health"
    fi
    if [ $((SECONDS - t_ready)) -ge 30 ]; then
        cat "$SERVER_LOG" >&2
        die "megalith serve did not answer /health within 30 s"
    fi
    sleep 0.2
done
log "relay up at $URL (pid $SERVER_PID, data $DATA/store)"

# ---- the clients -------------------------------------------------------------------
failed=()
total=$((3 * run_python + run_node + 1)) # the clients, the sync, the interop, and the relay's clean shutdown
t_clients=$SECONDS
if [ "$run_python" = 1 ]; then
    log "python (nostr-sdk) client"
    if ! timeout 120 "$VENV/bin/python" "$PY_DIR/roundtrip.py" "$URL"; then
        failed+=("python client (clients/python/roundtrip.py)")
    fi
    log "python (nostr-sdk) NIP-77 sync"
    if ! timeout 120 "$VENV/bin/python" "$PY_DIR/sync.py" "$URL"; then
        failed+=("python sync (clients/python/sync.py)")
    fi
    log "ingester against nostr-sdk's LocalRelay"
    if ! timeout 180 "$VENV/bin/python" "$PY_DIR/interop.py" "$BIN"; then
        failed+=("ingester interop (clients/python/interop.py)")
    fi
fi
if [ "$run_node" = 1 ]; then
    log "node (nostr-tools) client"
    if ! timeout 120 node "$NODE_DIR/roundtrip.mjs" "$URL"; then
        failed+=("node client (clients/node/roundtrip.mjs)")
    fi
fi
t_clients=$((SECONDS - t_clients))

# ---- stop the relay: SIGTERM must give a clean exit 0 ------------------------------
kill -TERM "$SERVER_PID"
for _ in $(seq 1 150); do
    kill -0 "$SERVER_PID" 2>/dev/null || break
    sleep 0.2
done
if kill -0 "$SERVER_PID" 2>/dev/null; then
    failed+=("relay shutdown (still running 30 s after SIGTERM)")
else
    wait "$SERVER_PID"
    rc=$?
    SERVER_PID=""
    [ "$rc" = 0 ] || failed+=("relay shutdown (exit status $rc after SIGTERM)")
fi

if [ "${#failed[@]}" -gt 0 ]; then
    log "relay log (last 40 lines):"
    tail -n 40 "$SERVER_LOG" >&2
    for f in "${failed[@]}"; do log "FAILED: $f"; done
    echo "real-clients: $((total - ${#failed[@]})) passed, ${#failed[@]} failed"
    exit 1
fi
log "install/check ${t_install}s, clients ${t_clients}s"
echo "real-clients: $total passed, 0 failed"
