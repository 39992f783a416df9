#!/usr/bin/env bash
# Run the performance benchmark: python -m bench.run with the given arguments (e.g. --quick,
# --repeats 5, --only pipeline,api). Results go to bench/results/latest.{json,md} and profile.txt.
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/setup.sh"

# wrk measures the API's maximum request rate; without it the benchmark falls back to its own
# Python client, whose figures are lower bounds.
if ! command -v wrk >/dev/null 2>&1; then
    sudo=()
    can_install=false
    if [[ $(id -u) -eq 0 ]]; then
        can_install=true
    elif command -v sudo >/dev/null 2>&1 && sudo -n true 2>/dev/null; then
        sudo=(sudo -n)
        can_install=true
    fi
    if $can_install && command -v apt-get >/dev/null 2>&1; then
        echo "bench: installing wrk with apt-get"
        "${sudo[@]}" apt-get update -qq
        DEBIAN_FRONTEND=noninteractive "${sudo[@]}" apt-get install -y -qq --no-install-recommends wrk >/dev/null
    else
        echo "bench: wrk not found; run 'sudo apt-get install -y wrk' for exact API figures" >&2
    fi
fi

exec .venv/bin/python -m bench.run "$@"
