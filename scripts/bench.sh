#!/usr/bin/env bash
# Run the busmp benchmark suite from the repository root.
#   scripts/bench.sh [--quick] [--only NAME] [--repeat N] ...
set -euo pipefail
cd "$(dirname "$0")/.."
exec "${PYTHON:-python}" -m benchmarks "$@"
