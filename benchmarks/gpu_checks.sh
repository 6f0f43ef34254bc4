#!/usr/bin/env bash
# Every check that needs a CUDA GPU, in one go (torch and triton installed; no torchrec needed):
# the compiled-Triton tests, `ctr bench kernels` (lookup suite), `ctr bench train` on the
# Criteo-scale recipe (plain and with trainer.compile), the host-device synchronisations left
# in a training step (torch's sync debug mode), and `ctr train` of that recipe on the GPU.
# Reports go to $OUT (default gpu-checks/) and to stdout.
#
#   bash benchmarks/gpu_checks.sh
set -uo pipefail
cd "$(dirname "$0")/.."
out=${OUT:-gpu-checks}
mkdir -p "$out"
unset TRITON_INTERPRET
export PYTHONUNBUFFERED=1 CTR_CACHE=/tmp/ctr-cache
python3 -c "import ctr.kernels" 2>/dev/null ||
    python3 -m pip install -q --no-deps --no-build-isolation --no-index -e . >"$out/install.log" 2>&1 ||
    { echo "could not install ctr (see $out/install.log)"; exit 1; }
ctr=(python3 -c "import sys; from ctr.cli import main; sys.exit(main())")  # the CLI of this python3 (no console script needed)
recipe=recipes/criteo_synth/dlrm_gpu.yaml
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader | tee "$out/gpu.txt"
python3 -c "import torch, triton; print('torch', torch.__version__, 'triton', triton.__version__)" | tee -a "$out/gpu.txt"

echo "== compiled-Triton tests"
timeout 150 python3 -m pytest -q -p no:cacheprovider tests/kernels -m gpu 2>&1 | tee "$out/tests.txt" | tail -4
echo "== ctr data prepare $recipe"
( time timeout 240 "${ctr[@]}" data prepare "$recipe" ) 2>&1 | tail -8 | tee "$out/prepare.txt"
echo "== ctr bench train (plain)"
timeout 150 "${ctr[@]}" bench train "$recipe" --device cuda --steps 50 --warmup 10 2>&1 | tee "$out/bench_train.txt"
echo "== ctr bench train (trainer.compile=true)"
timeout 200 "${ctr[@]}" bench train "$recipe" --device cuda --steps 50 --warmup 10 -o trainer.compile=true 2>&1 |
    tail -12 | tee "$out/bench_train_compile.txt"
echo "== synchronisations inside training steps (torch.cuda sync debug mode, unique call sites)"
timeout 120 python3 -W default -c "
import sys, torch
from ctr.bench.train import TrainBenchConfig, run_train_bench, _Window
start = _Window.on_train_batch_start
def watch(self, *args):
    start(self, *args)
    if self.step == 4:
        torch.cuda.set_sync_debug_mode('warn')
_Window.on_train_batch_start = watch
run_train_bench(TrainBenchConfig('$recipe', [], 'cuda', 2, 4, 0))
" 2>&1 | grep -A3 "synchronizing" | head -60 | tee "$out/syncs.txt"
echo "== ctr bench kernels (lookup)"
timeout 240 "${ctr[@]}" bench kernels --device cuda --iters 20 --warmup 3 2>&1 | tee "$out/lookup.txt"
echo "== ctr train $recipe"
timeout 200 "${ctr[@]}" train "$recipe" --out /tmp/ctr-gpu-run 2>&1 | tail -12 | tee "$out/train.txt"
cp /tmp/ctr-gpu-run/metrics.json "$out/train_metrics.json" 2>/dev/null
