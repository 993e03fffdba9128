#!/usr/bin/env bash
# The GPU path in one short run (under 10 minutes on one GPU), on a machine that has torch and
# transformers but not Ray or this project's other needs:
#   benchmarks/gpu_wheels.sh            # here: the wheels it lacks into .whl/ (Ray trimmed)
#   benchmarks/gpu_smoke.sh [OUT_DIR]   # there: installs .whl/, runs benchmarks/gpu_smoke.py
# Figures: OUT_DIR/gpu_smoke.json (and the log beside it); see benchmarks/gpu_smoke.py.
set -euo pipefail
cd "$(dirname "$0")/.."
OUT_DIR=${1:-${OUT:-/tmp/gpu-smoke}}
mkdir -p "$OUT_DIR"
if compgen -G ".whl/*.whl" > /dev/null; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
    --target /tmp/site .whl/*.whl
  export PYTHONPATH=/tmp/site:$PWD
else
  export PYTHONPATH=$PWD
fi
export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 PYTHONUNBUFFERED=1
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv | tee "$OUT_DIR/gpu.txt"
python3 -c "import torch, transformers; print('torch', torch.__version__, 'transformers', transformers.__version__)"
timeout 560 python3 benchmarks/gpu_smoke.py --out "$OUT_DIR/gpu_smoke.json" "$@" 2>&1 \
  | tee "$OUT_DIR/gpu_smoke.log"
