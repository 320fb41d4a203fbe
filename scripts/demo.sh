#!/usr/bin/env bash
# Quick start: a three-step workflow end to end on the embedded local gateway.
# Needs only python3 and the package registries: no OpenClaw, no API keys.
# The demo agents answer deterministically and label their output as demo output.
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/bootstrap.sh
exec workflow run material-trade-study \
  --config examples/quickstart/orchestrator.yaml \
  --input materials="Zerodur, ULE, Clearceram-Z HS" \
  --input requirements="CTE < 0.01 ppm/K over 0-50 °C; polishable to λ/20" \
  --non-interactive "$@"
