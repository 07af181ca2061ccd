#!/usr/bin/env bash
# Installs everything onebit and its tests need on a fresh machine (Python >= 3.10 with pip, a C compiler).
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
# torch/torchvision first, pinned to the builds this project is tested with
"$PY" -m pip install --quiet --disable-pip-version-check "torch==2.14.1" "torchvision==0.29.1"
"$PY" -m pip install --quiet --disable-pip-version-check -e ".[dev]"
