#!/usr/bin/env bash
# The kill test at length: a child process writes with Durability::Always and
# is killed with SIGKILL at random moments; after each kill the store must
# reopen with every acknowledged event, no holes per writer, and nothing from
# earlier rounds missing. CI runs 100 rounds; this runs as many as you ask.
#
#   scripts/kill-test.sh [ROUNDS]      (default 1000)
set -euo pipefail
cd "$(dirname "$0")/.."
rounds="${1:-1000}"
MEGALITH_KILL_ITERATIONS="$rounds" cargo test --release --all-features \
  --test recover_after_kill -- --nocapture kill_at_random_moments
