#!/usr/bin/env bash
# The prepared GPU run (one call on a lent machine): Triton kernel tests on CUDA, then the
# projector benchmark (Triton vs cuBLAS + separate GELU vs torch.compile, against the
# measured bf16 ceiling) and the normalisation benchmark. Needs only torch + triton.
#   OUT=/tmp/gpu bash benchmarks/kernels/gpu_check.sh
set -uo pipefail
OUT=${OUT:-/tmp/gpu_check}
mkdir -p "$OUT"
export PYTHONPATH=. PYTHONUNBUFFERED=1
nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.sm --format=csv | tee "$OUT/gpu.txt"
python3 -c "import torch, triton; print('torch', torch.__version__, 'triton', triton.__version__)" | tee -a "$OUT/gpu.txt"
LLAVA_TRITON_AUTOTUNE=0 timeout 180 python3 -m pytest -q -p no:cacheprovider -o addopts="" \
    tests/test_triton_kernels.py 2>&1 | tee "$OUT/tests.log" | tail -4
timeout 300 python3 -m benchmarks.kernels.projector --device cuda --dtype bfloat16 --shape llava-1.5-7b \
    --json "$OUT/projector_cuda.json" 2>&1 | tee "$OUT/projector.log" | grep -v Warning | tail -44
timeout 60 python3 -m benchmarks.kernels.normalize --device cuda 2>&1 | tee "$OUT/normalize.log" | tail -9
