#!/usr/bin/env bash
# Regenerate requirements.lock: resolve pyproject.toml's `.[dev]` in a brand-new venv and pin
# everything it installed. Run after changing a dependency in pyproject.toml, then commit both.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

python=${PYTHON:-python3}
scratch=$(mktemp -d)
trap 'rm -rf "$scratch"' EXIT

"$python" -m venv "$scratch/venv"
"$scratch/venv/bin/python" -m pip install --quiet --disable-pip-version-check -e '.[dev]'

py_version=$("$scratch/venv/bin/python" -c 'import platform; print(platform.python_version())')
{
    echo "# Full pin of the dev environment (pip install -e '.[dev]'), resolved on Python $py_version, $(uname -sm)."
    echo "# Used as constraints: pip install -c requirements.lock -e '.[dev]'  (and by the Dockerfile)."
    echo "# Regenerate after changing dependencies in pyproject.toml: bash scripts/lock.sh"
    "$scratch/venv/bin/python" -m pip freeze --exclude-editable --disable-pip-version-check
} > requirements.lock.new
mv requirements.lock.new requirements.lock
echo "requirements.lock: $(grep -c '==' requirements.lock) pins"
