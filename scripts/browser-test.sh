#!/usr/bin/env bash
# The feed pages in a real browser: Debian's chromium and chromium-driver
# through PyPI selenium (clients/browser/feed_browser.py). Installs what is
# missing (the Debian packages with apt-get, clients/browser/.venv from
# clients/browser/requirements.txt), uses $MEGALITH_BIN or builds
# target/release/megalith, and saves screenshots under target/browser/.
# Loopback only; bounded by `timeout 300`. CI runs it.
#
#   scripts/browser-test.sh
set -uo pipefail

ROOT="$(cd "$(dirname "$0")/.." && pwd)"
if [ -n "${MEGALITH_BIN:-}" ] && [ "${MEGALITH_BIN#/}" = "$MEGALITH_BIN" ]; then
    MEGALITH_BIN="$PWD/$MEGALITH_BIN"
fi
cd "$ROOT"
log() { echo "browser-test: $*" >&2; }
die() { log "$*"; exit 1; }

if ! command -v chromium >/dev/null || ! command -v chromedriver >/dev/null; then
    log "installing Debian's chromium and chromium-driver"
    { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium chromium-driver; } >&2 \
        || die "could not install chromium and chromium-driver"
fi

DIR="$ROOT/clients/browser"
VENV="$DIR/.venv"
if [ ! -x "$VENV/bin/python" ]; then
    if ! python3 -m venv "$VENV"; then
        rm -rf "$VENV"
        { apt-get update -qq && apt-get install -y -qq python3-venv; } >&2 || die "could not install python3-venv"
        python3 -m venv "$VENV" || die "python3 -m venv failed again"
    fi
fi
stamp="$VENV/.requirements.sha256"
if ! sha256sum -c --status "$stamp" 2>/dev/null; then
    log "pip install -r clients/browser/requirements.txt"
    "$VENV/bin/python" -m pip install -q --disable-pip-version-check -r "$DIR/requirements.txt" >&2 \
        || die "pip install -r clients/browser/requirements.txt failed"
    sha256sum "$DIR/requirements.txt" >"$stamp"
fi

if [ -n "${MEGALITH_BIN:-}" ]; then
    BIN="$MEGALITH_BIN"
else
    cargo build --release --bin megalith >&2 || die "cargo build failed"
    BIN="$ROOT/target/release/megalith"
fi
[ -x "$BIN" ] || die "no megalith binary at $BIN"

OUT="$ROOT/target/browser"
rm -rf "$OUT"
# Selenium must not look for (or download) a driver of its own.
export SE_OFFLINE=true
timeout 300 "$VENV/bin/python" "$DIR/feed_browser.py" "$BIN" "$OUT" || die "the browser test failed (screenshots so far in $OUT)"
log "passed; screenshots in $OUT"
