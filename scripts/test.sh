#!/usr/bin/env bash
# Lint, type-check and test: what CI runs. Extra arguments go to pytest
# (e.g. bash scripts/test.sh -m "not integration" -x).
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/setup.sh"
# the page's end-to-end test drives Debian's chromium (tests/e2e/test_page_e2e.py)
_system_package chromium chromium

failed=()

step() {
    local name=$1
    shift
    echo "==> $name"
    local status=0
    "$@" || status=$?
    if [[ $status -ne 0 ]]; then
        failed+=("$name (exit $status)")
    fi
    return 0
}

step ruff .venv/bin/ruff check .
step mypy .venv/bin/mypy
# pytest exits 5 when it collected no tests: non-zero, so it counts as a failure here too.
step pytest .venv/bin/pytest "$@"

if [[ ${#failed[@]} -gt 0 ]]; then
    echo "FAILED: ${failed[*]}" >&2
    exit 1
fi
echo "ruff, mypy and pytest passed"
