#!/usr/bin/env bash
# Load test of `megalith serve`'s relay, on loopback only and bounded in
# count and time: 200 connections each holding 20 live subscriptions while
# 5 publishers send 20,000 signed events. Every subscription must receive
# exactly the events its filters match (checked against the brute-force
# matcher), none twice; prints events/s in, deliveries/s out, delivery
# latency and peak memory as a markdown table. Extra arguments go to the
# load tester (see relay/benches/relay_load.rs), e.g. --events 5000.
#
#   scripts/relay-load.sh [--subscribers N] [--subs N] [--publishers N] [--events N]
#                         [--durability always|batch|never] [--seed S] [--timeout-secs S] [--window N]
set -euo pipefail
cd "$(dirname "$0")/.."
exec cargo bench --quiet --bench relay_load -- "$@"
