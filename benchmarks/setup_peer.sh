#!/usr/bin/env bash
# Creates benchmarks/.venv-peer: DeepCTR-Torch 0.3.0 beside the project's torch==2.13.0 (CPU),
# plus ctr itself, so one process can train both sides on the same batches.
# torch is installed first and pinned, so deepctr-torch's "torch>=1.2" never pulls another build.
set -euo pipefail
cd "$(dirname "$0")/.."
VENV=benchmarks/.venv-peer
PYTHON=${PYTHON:-python3}
[ -x "$VENV/bin/python" ] || "$PYTHON" -m venv "$VENV"
PIP="$VENV/bin/pip install -q --disable-pip-version-check"
$PIP torch==2.13.0
$PIP -r requirements/cpu.txt
$PIP --no-deps torchrec==1.8.0
$PIP scikit-learn requests tqdm
$PIP --no-deps deepctr-torch==0.3.0
$PIP --no-deps --no-build-isolation -e .
"$VENV/bin/python" - <<'PY'
import torch, deepctr_torch
assert torch.__version__.startswith("2.13.0"), torch.__version__
print(f"peer env ready: torch {torch.__version__}, deepctr-torch {deepctr_torch.__version__}")
PY
