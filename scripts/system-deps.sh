#!/usr/bin/env bash
# Installs the Debian packages the test suite and benchmarks drive for real:
#   prometheus (prometheus + promtool), libb64-0d (perf_analyzer), wrk and hey (load generators).
# Idempotent; without root or apt it says what is missing and the tests that need it skip.
set -uo pipefail
need=()
command -v promtool >/dev/null 2>&1 || need+=(prometheus)
command -v prometheus >/dev/null 2>&1 || need+=(prometheus)
ldconfig -p 2>/dev/null | grep -q 'libb64\.so\.0d' || need+=(libb64-0d)
command -v wrk >/dev/null 2>&1 || need+=(wrk)
command -v hey >/dev/null 2>&1 || need+=(hey)
if [ ${#need[@]} -eq 0 ]; then exit 0; fi
mapfile -t need < <(printf '%s\n' "${need[@]}" | sort -u)
if [ "$(id -u)" -ne 0 ] || ! command -v apt-get >/dev/null 2>&1; then
    echo "system-deps: missing ${need[*]} (needs root and apt-get); tests that use them will skip" >&2
    exit 0
fi
export DEBIAN_FRONTEND=noninteractive
apt-get update -q >/dev/null || echo "system-deps: apt-get update failed" >&2
apt-get install -y -q --no-install-recommends "${need[@]}" >/dev/null \
    || echo "system-deps: could not install ${need[*]}; tests that use them will skip" >&2
exit 0
