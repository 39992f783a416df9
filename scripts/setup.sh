#!/usr/bin/env bash
# Idempotent project setup shared by scripts/dev.sh and scripts/test.sh (source it or run it):
# a Python >= 3.11 venv in .venv with the locked dependencies, and redis-server on PATH (scripts/test.sh adds
# chromium, which the page's browser test drives).
# It does not start any Redis: devtools/servers.py runs its own redis-server on a free port.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

_setup_fail() {
    echo "setup: $*" >&2
    exit 1
}

_python_ok() {
    "$1" -c 'import sys; sys.exit(0 if sys.version_info >= (3, 11) else 1)' 2>/dev/null
}

_find_python() {
    local candidate
    for candidate in ${PYTHON:-} python3.11 python3.12 python3.13 python3; do
        if command -v "$candidate" >/dev/null 2>&1 && _python_ok "$candidate"; then
            echo "$candidate"
            return 0
        fi
    done
    return 1
}

# --- the virtualenv --------------------------------------------------------------------------
if [[ -x .venv/bin/python ]] && ! _python_ok .venv/bin/python; then
    _setup_fail ".venv uses Python < 3.11: remove it (rm -rf .venv) and run again"
fi
if [[ ! -x .venv/bin/python ]]; then
    python=$(_find_python) || _setup_fail "Python >= 3.11 not found: install it, or set PYTHON=/path/to/python3.11"
    echo "setup: creating .venv with $("$python" --version)"
    "$python" -m venv .venv
fi

# Reinstall only when the inputs changed: keeps `dev` and `test` quick on the second run.
stamp=.venv/.leadscore-setup
inputs_hash=$(cat pyproject.toml requirements.lock | sha256sum | cut -d' ' -f1)
if [[ ! -f $stamp || $(cat "$stamp") != "$inputs_hash" ]] || ! .venv/bin/python -c 'import app' 2>/dev/null; then
    echo "setup: installing dependencies (pinned by requirements.lock)"
    # -qq: errors only (pip's -q still prints warnings).
    .venv/bin/python -m pip install -qq --disable-pip-version-check -c requirements.lock -e '.[dev]' \
        || _setup_fail "pip install failed (see above)"
    echo "$inputs_hash" > "$stamp"
fi

# --- system packages --------------------------------------------------------------------------
# _system_package COMMAND PACKAGE: install PACKAGE with apt-get when COMMAND is not on PATH.
_system_package() {
    local command=$1 package=$2
    command -v "$command" >/dev/null 2>&1 && return 0
    if ! command -v apt-get >/dev/null 2>&1; then
        _setup_fail "$command not found on PATH: install $package with your package manager"
    fi
    local sudo=()
    if [[ $(id -u) -ne 0 ]]; then
        if command -v sudo >/dev/null 2>&1 && sudo -n true 2>/dev/null; then
            sudo=(sudo -n)
        else
            _setup_fail "$command not found on PATH: run 'sudo apt-get update && sudo apt-get install -y $package'"
        fi
    fi
    echo "setup: installing $package with apt-get"
    "${sudo[@]}" apt-get update -qq
    DEBIAN_FRONTEND=noninteractive "${sudo[@]}" apt-get install -y -qq --no-install-recommends "$package" >/dev/null
    command -v "$command" >/dev/null 2>&1 || _setup_fail "$command still not on PATH after apt-get install $package"
}

# redis-server: the local stack and the tests start their own
_system_package redis-server redis-server
