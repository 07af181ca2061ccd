#!/usr/bin/env bash
# The prepared device run (scripts/gpu-check/README.md): on the device machine
#   bash scripts/gpu-check.sh            -> $OUT/gpu-check.json, $OUT/gpu-check.log, $OUT/runs.db (<= 9 min)
#   bash scripts/gpu-check.sh --cpu-smoke  (anywhere: the same code paths on the CPU, tiny sizes)
# Runs onebit from the source tree; needs python3 with torch, numpy, safetensors, tqdm, pytest.
set -euo pipefail
cd "$(dirname "$0")/.."
export PYTHONPATH="$PWD/src${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1
exec "${PYTHON:-python3}" scripts/gpu-check/gpu_check.py "$@"
