#!/usr/bin/env bash
# The video API against its own OpenAPI document, with Schemathesis (PyPI,
# pinned in clients/schemathesis/requirements.txt; settings in
# clients/schemathesis/schemathesis.toml): every operation of
# /api/openapi.json, with all checks (no 5xx, status codes, content types,
# headers and bodies as documented, schema-violating requests refused,
# schema-valid ones accepted, auth enforced).
#
#   scripts/api-schema-test.sh
#
# Installs clients/schemathesis/.venv if missing, uses $MEGALITH_BIN or builds
# target/release/megalith, seeds a fresh store (`megalith generate` +
# `megalith import --analytics on`), then runs Schemathesis twice, each
# against `megalith serve` on a free loopback port: open (`--analytics on
# --feed off`), then with `api_token` set in a config file, passing
# `Authorization: Bearer ...`. Each run has a fixed seed and examples per
# operation, bounded by `timeout`; each server must exit 0 on SIGTERM.
# Exits non-zero if anything failed, naming what. CI runs it.
set -uo pipefail

ROOT="$(cd "$(dirname "$0")/.." && pwd)"
# A relative MEGALITH_BIN means relative to where the script was started.
if [ -n "${MEGALITH_BIN:-}" ] && [ "${MEGALITH_BIN#/}" = "$MEGALITH_BIN" ]; then
    MEGALITH_BIN="$PWD/$MEGALITH_BIN"
fi
cd "$ROOT"
case "${1:-}" in
    "") ;;
    -h | --help) sed -n '2,18p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
    *) echo "api-schema-test: unknown option $1" >&2; exit 2 ;;
esac

log() { echo "api-schema-test: $*" >&2; }
die() { log "$*"; exit 1; }

# Same seed, same requests: a failure here is reproduced by running it again.
SEED=1
EXAMPLES=100  # test cases per operation and phase
RUN_TIMEOUT=120
EVENTS=5000
TOKEN="schema-test-$$"

DIR="$ROOT/clients/schemathesis"
VENV="$DIR/.venv"

# ---- install -----------------------------------------------------------------
t_install=$SECONDS
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
    log "pip install -r clients/schemathesis/requirements.txt"
    "$VENV/bin/python" -m pip install -q --disable-pip-version-check -r "$DIR/requirements.txt" >&2 \
        || die "pip install -r clients/schemathesis/requirements.txt failed"
    sha256sum "$DIR/requirements.txt" >"$stamp"
fi
t_install=$((SECONDS - t_install))

# ---- the binary ----------------------------------------------------------------
if [ -n "${MEGALITH_BIN:-}" ]; then
    BIN="$MEGALITH_BIN"
else
    log "building megalith (cargo build --release --bin megalith)"
    cargo build --release --bin megalith >&2 || die "cargo build failed"
    BIN="$ROOT/${CARGO_TARGET_DIR:-target}/release/megalith"
fi
[ -x "$BIN" ] || die "no megalith binary at $BIN"

# ---- a seeded store --------------------------------------------------------------
WORK="$(mktemp -d "${TMPDIR:-/tmp}/megalith-api-schema.XXXXXX")"
SERVER_PID=""
SERVER_LOG=""
cleanup() {
    if [ -n "$SERVER_PID" ] && kill -0 "$SERVER_PID" 2>/dev/null; then
        kill -KILL "$SERVER_PID" 2>/dev/null
        wait "$SERVER_PID" 2>/dev/null
    fi
    rm -rf "$WORK"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

t_seed=$SECONDS
timeout 60 "$BIN" generate --count "$EVENTS" --seed "$SEED" --out "$WORK/events.jsonl" >"$WORK/generate.log" 2>&1 \
    || { cat "$WORK/generate.log" >&2; die "megalith generate failed"; }
timeout 60 "$BIN" import --data "$WORK/store" --analytics on "$WORK/events.jsonl" >"$WORK/import.log" 2>&1 \
    || { cat "$WORK/import.log" >&2; die "megalith import failed"; }
t_seed=$((SECONDS - t_seed))

free_port() {
    python3 -c 'import socket;s=socket.socket();s.bind(("127.0.0.1",0));print(s.getsockname()[1])'
}

# GET /health answers 200 (python's urllib: curl may be missing).
health_ok() {
    python3 - "$1" <<'EOF' 2>/dev/null
import sys, urllib.request
with urllib.request.urlopen(f"http://127.0.0.1:{sys.argv[1]}/health", timeout=2) as r:
    sys.exit(0 if r.status == 200 else 1)
EOF
}

# start_server NAME PORT ARGS...: runs `megalith serve ARGS...`, waits for /health.
start_server() {
    local name=$1 port=$2
    shift 2
    SERVER_LOG="$WORK/serve-$name.log"
    "$BIN" serve "$@" >"$SERVER_LOG" 2>&1 &
    SERVER_PID=$!
    local t0=$SECONDS
    until health_ok "$port"; do
        if ! kill -0 "$SERVER_PID" 2>/dev/null; then
            cat "$SERVER_LOG" >&2
            die "megalith serve ($name) exited before answering /health"
        fi
        if [ $((SECONDS - t0)) -ge 30 ]; then
            cat "$SERVER_LOG" >&2
            die "megalith serve ($name) did not answer /health within 30 s"
        fi
        sleep 0.2
    done
    log "server ($name) up on 127.0.0.1:$port (pid $SERVER_PID)"
}

# stop_server NAME: SIGTERM must give a clean exit 0 within 30 s.
stop_server() {
    local name=$1
    kill -TERM "$SERVER_PID"
    for _ in $(seq 1 150); do
        kill -0 "$SERVER_PID" 2>/dev/null || break
        sleep 0.2
    done
    local problem=""
    if kill -0 "$SERVER_PID" 2>/dev/null; then
        problem="still running 30 s after SIGTERM"
        kill -KILL "$SERVER_PID" 2>/dev/null
        wait "$SERVER_PID" 2>/dev/null
    else
        wait "$SERVER_PID"
        local rc=$?
        [ "$rc" = 0 ] || problem="exit status $rc after SIGTERM"
    fi
    SERVER_PID=""
    if [ -n "$problem" ]; then
        failed+=("server shutdown ($name: $problem)")
        log "server ($name) log, last 20 lines:"
        tail -n 20 "$SERVER_LOG" >&2
    fi
}

# run_schemathesis NAME PORT [ARGS...]: one run against the document the server serves.
run_schemathesis() {
    local name=$1 port=$2 rc=0
    shift 2
    log "schemathesis ($name): seed $SEED, $EXAMPLES examples per operation"
    # From $WORK: nothing (a .hypothesis directory, reports) lands in the tree.
    (cd "$WORK" && timeout "$RUN_TIMEOUT" "$VENV/bin/schemathesis" --no-color \
        --config-file "$DIR/schemathesis.toml" \
        run "http://127.0.0.1:$port/api/openapi.json" \
        --checks all --seed "$SEED" --max-examples "$EXAMPLES" \
        --generation-database none --request-timeout 10 --wait-for-schema 10 "$@") || rc=$?
    case "$rc" in
        0) ;;
        124) failed+=("schemathesis ($name): not done within ${RUN_TIMEOUT} s") ;;
        *) failed+=("schemathesis ($name): exit status $rc (its FAILURES and SUMMARY are above)") ;;
    esac
}

failed=()
t_runs=$SECONDS

# ---- run 1: the open API -------------------------------------------------------------
PORT="$(free_port)"
start_server open "$PORT" --data "$WORK/store" --listen "127.0.0.1:$PORT" --analytics on --feed off
run_schemathesis open "$PORT"
stop_server open

# ---- run 2: with a bearer token, from a config file -------------------------------------
PORT="$(free_port)"
cat >"$WORK/serve.toml" <<EOF
data = "$WORK/store"
listen = "127.0.0.1:$PORT"
analytics = true
api_token = "$TOKEN"

[feed]
enabled = false
EOF
start_server token "$PORT" --config "$WORK/serve.toml"
# The token is asked for (Schemathesis' ignored_auth checks it too, as the
# served document then requires it), and the document stays open.
if ! python3 - "$PORT" "$TOKEN" <<'EOF'; then
import json, sys, urllib.error, urllib.request
port, token = sys.argv[1], sys.argv[2]
def status(path, headers={}):
    request = urllib.request.Request(f"http://127.0.0.1:{port}{path}", headers=headers)
    try:
        with urllib.request.urlopen(request, timeout=10) as r:
            return r.status, r.read()
    except urllib.error.HTTPError as e:
        return e.code, e.read()
code, _ = status("/api/stats")
assert code == 401, f"/api/stats without the token: {code}, not 401"
code, _ = status("/api/stats", {"Authorization": f"Bearer {token}"})
assert code == 200, f"/api/stats with the token: {code}, not 200"
code, body = status("/api/openapi.json")
assert code == 200, f"/api/openapi.json without the token: {code}, not 200"
security = json.loads(body)["security"]
assert security == [{"bearer": []}], f"the served document's security is {security}"
EOF
    failed+=("token check (the server with api_token)")
fi
run_schemathesis token "$PORT" --header "Authorization: Bearer $TOKEN"
stop_server token
t_runs=$((SECONDS - t_runs))

if [ "${#failed[@]}" -gt 0 ]; then
    for f in "${failed[@]}"; do log "FAILED: $f"; done
    echo "api-schema-test: ${#failed[@]} failed"
    exit 1
fi
log "install/check ${t_install}s, seed ${t_seed}s, schemathesis runs ${t_runs}s"
echo "api-schema-test: 2 schemathesis runs passed, servers exited 0"
