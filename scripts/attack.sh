#!/usr/bin/env bash
# The attack suite (relay/benches/attack.rs): `megalith serve` (release build, a
# child process on 127.0.0.1) under each hostile pattern of issue 13, while a
# well-behaved probe publishes, reads back by id and receives live every
# 0.5 s. Prints the probe's latencies per attack, the recovery after the
# attacker leaves, the relay's peak RSS, the at-rest REQ p50 and the SIGTERM
# time; exits 1 if a target is missed. Loopback only; every loop bounded.
#
#   scripts/attack.sh [--secs S (10)] [--only close-storm,sub-memory,partial-http,count-flood,no-read,kind-labels,neg-flood]
set -euo pipefail
cd "$(dirname "$0")/.."
cargo build --release --quiet --bin megalith
# The partial-HTTP attack opens 2,000 sockets: make room if the shell's limit is lower.
ulimit -n 65536 2>/dev/null || ulimit -n "$(ulimit -Hn)" 2>/dev/null || true
exec cargo bench --quiet --bench attack -- --bin "$PWD/target/release/megalith" "$@"
