#!/usr/bin/env bash
# Install what `make bench` needs where it is missing: wrk, hey, nginx, haproxy (Debian packages)
# and py-spy (into the project's venv). Idempotent: does nothing when everything is there.
# Packages are installed without starting their system services (the benchmarks run their own).
set -euo pipefail
cd "$(dirname "$0")/.."
VENV="${VENV:-.venv}"

missing=()
for pair in wrk:wrk hey:hey nginx:nginx haproxy:haproxy taskset:util-linux; do
  tool="${pair%%:*}"
  command -v "$tool" >/dev/null || [ -x "/usr/sbin/$tool" ] || missing+=("${pair#*:}")
done

if [ "${#missing[@]}" -gt 0 ]; then
  if ! command -v apt-get >/dev/null; then
    echo "bench-tools: cannot install ${missing[*]}: no apt-get" >&2
    exit 1
  fi
  echo "bench-tools: installing ${missing[*]}"
  policy=/usr/sbin/policy-rc.d
  if [ ! -e "$policy" ]; then
    # 101 = "action not allowed": keeps the packages from starting nginx/haproxy services.
    printf '#!/bin/sh\nexit 101\n' >"$policy" && chmod +x "$policy"
    trap 'rm -f "$policy"' EXIT
  fi
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi

if [ -x "$VENV/bin/python" ] && [ ! -x "$VENV/bin/py-spy" ]; then
  echo "bench-tools: installing py-spy into $VENV"
  "$VENV/bin/python" -m pip install --quiet py-spy
fi
