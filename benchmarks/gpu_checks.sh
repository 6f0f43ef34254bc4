#!/usr/bin/env bash
# Every check that needs a CUDA GPU, in one go (torch and triton installed; no torchrec needed):
# the compiled-Triton tests, `ctr bench kernels` (both suites), the Triton tile sweep, and
# the quickstart recipe trained on the GPU with the fused (Triton) embedding update.
# Reports go to $OUT (default gpu-checks/) and to stdout.
#
#   bash benchmarks/gpu_checks.sh
set -uo pipefail
cd "$(dirname "$0")/.."
out=${OUT:-gpu-checks}
mkdir -p "$out"
unset TRITON_INTERPRET
python3 -c "import ctr.kernels" 2>/dev/null ||
    python3 -m pip install -q --no-deps --no-build-isolation --no-index -e . >"$out/install.log" 2>&1 ||
    { echo "could not install ctr (see $out/install.log)"; exit 1; }
ctr=(python3 -c "import sys; from ctr.cli import main; sys.exit(main())")  # the CLI of this python3 (no console script needed)
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader | tee "$out/gpu.txt"
python3 -c "import torch, triton; print('torch', torch.__version__, 'triton', triton.__version__)" | tee -a "$out/gpu.txt"

echo "== compiled-Triton tests"
timeout 150 python3 -m pytest -q -p no:cacheprovider tests/kernels -m gpu 2>&1 | tee "$out/tests.txt" | tail -4
echo "== ctr bench kernels (lookup)"
timeout 200 "${ctr[@]}" bench kernels --device cuda --iters 20 --warmup 3 2>&1 | tee "$out/lookup.txt"
echo "== ctr bench kernels (step)"
timeout 60 "${ctr[@]}" bench kernels --device cuda --suite step --iters 20 --warmup 3 2>&1 | tee "$out/step.txt"
echo "== Triton tile sweep"
timeout 200 python3 benchmarks/triton_tiles.py 2>&1 | tee "$out/tiles.txt"
echo "== ctr train recipes/quickstart.yaml on the GPU, fused Triton update"
timeout 240 "${ctr[@]}" train recipes/quickstart.yaml --out /tmp/ctr-gpu-run -o trainer.accelerator=gpu \
    -o train.embedding_optimizer.fused=true 2>&1 | tail -15 | tee "$out/train.txt"
cp /tmp/ctr-gpu-run/metrics.json "$out/train_metrics.json" 2>/dev/null
