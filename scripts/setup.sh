#!/usr/bin/env bash
# Sets up onebit in a project-local virtual environment .venv (works with an externally managed system Python,
# PEP 668): torch/torchvision pinned to the builds this project is tested with, then onebit with its test extras
# (editable). Needs Python >= 3.10 with the venv module; $PYTHON picks the interpreter (default: python3).
# Idempotent: a stamp in .venv holds a hash of pyproject.toml and this script; when it matches and a quick
# check passes, the script stops after one line. Afterwards: `source .venv/bin/activate` or call .venv/bin/...
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
VENV=.venv
TORCH="torch==2.14.1"
TORCHVISION="torchvision==0.29.1"
STAMP="$VENV/.onebit-setup-stamp"
PIP=("$VENV/bin/python" -m pip --disable-pip-version-check)

say() { echo "setup: $*"; }
size() { du -sh "$VENV" 2>/dev/null | cut -f1; }
# pip, without this machine's harmless warnings about index folders that lack a package
pip_install() {
    { "${PIP[@]}" install --quiet "$@" 2>&1 1>&3 |
        { grep -v "is ignored: it is neither a file nor a directory" || true; } >&2; } 3>&1
}
# quick (no torch import): the pinned versions are installed, every dependency is present, the CLI imports
QUICK_CHECK='
import importlib.metadata as md, importlib.util as iu, sys
assert md.version("torch").split("+")[0] == sys.argv[1] and md.version("torchvision").split("+")[0] == sys.argv[2]
assert all(iu.find_spec(m) for m in ("numpy", "safetensors", "tqdm", "matplotlib", "scipy", "onnx", "onnxruntime",
                                     "onnxscript", "pytest", "hypothesis", "xdist"))
import onebit.cli
print(md.version("torch"))
'
quick_check() {
    [ -x "$VENV/bin/onebit" ] && "$VENV/bin/python" -c "$QUICK_CHECK" "${TORCH#*==}" "${TORCHVISION#*==}" 2>/dev/null
}

t0=$SECONDS
want=$(cat pyproject.toml scripts/setup.sh | sha256sum | cut -d' ' -f1)
if [ -f "$STAMP" ] && [ "$(cat "$STAMP")" = "$want" ] && version=$(quick_check); then
    say "up to date ($VENV: torch $version, onebit and its test extras; nothing to do)"
    exit 0
fi

if [ -x "$VENV/bin/python" ]; then
    say "reusing virtual environment $VENV ($("$VENV/bin/python" --version 2>&1))"
else
    command -v "$PY" >/dev/null || { echo "setup: error: no $PY found; set PYTHON=/path/to/python3 (>= 3.10)" >&2; exit 1; }
    "$PY" -c 'import sys; sys.exit(sys.version_info < (3, 10))' ||
        { echo "setup: error: $PY is $("$PY" --version 2>&1); onebit needs Python >= 3.10" >&2; exit 1; }
    say "creating virtual environment $VENV with $("$PY" --version 2>&1) ($(command -v "$PY"))"
    "$PY" -m venv "$VENV" || { echo "setup: error: '$PY -m venv' failed (on Debian/Ubuntu: apt install python3-venv)" >&2; exit 1; }
fi

if command -v nvidia-smi >/dev/null 2>&1 && nvidia-smi -L >/dev/null 2>&1; then
    device="a CUDA device is present"
elif [ "$(uname -m)" = x86_64 ]; then
    device="no CUDA device found, but PyPI's $TORCH for x86_64 is the CUDA build, ~5.5 GB installed; see README"
else
    device="no CUDA device found"
fi
say "installing $TORCH $TORCHVISION ($device; venv now $(size)) ..."
pip_install "$TORCH" "$TORCHVISION"
say "torch $("$VENV/bin/python" -c 'import torch; print(torch.__version__, "CUDA", torch.version.cuda)') installed; venv now $(size)"

say "installing onebit (editable) with its test extras: pip install -e \".[dev]\" ..."
pip_install -e ".[dev]"
say "onebit installed; venv now $(size)"

say "checking imports ..."
if ! "$VENV/bin/python" -c "import torch, torchvision, onnxscript, onebit.cli" || ! quick_check >/dev/null; then
    echo "setup: error: the environment does not import cleanly (see above)" >&2
    exit 1
fi
echo "$want" >"$STAMP"
say "done in $((SECONDS - t0)) s: $VENV ($(size)). Use .venv/bin/onebit, .venv/bin/python, or: source .venv/bin/activate"
