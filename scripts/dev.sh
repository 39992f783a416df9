#!/usr/bin/env bash
# Run the whole stack on this machine: local Redis, local Kafka-protocol broker, API,
# consumer and simulator (`leadscore dev --help` for options).
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/setup.sh"
exec .venv/bin/leadscore dev "$@"
