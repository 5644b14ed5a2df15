#!/usr/bin/env bash
# The GPU check, in one call on a machine with a GPU and no network (its image has torch,
# nvcc, CMake, ninja, pybind11, scikit-build-core, pytest and compute-sanitizer):
#   1. build and install usl_fast with its CUDA kernels;
#   2. the GPU tests (the CPU engine's results as the oracle, bit for bit);
#   3. compute-sanitizer memcheck and racecheck on each kernel, small inputs;
#   4. the GPU benchmarks -> benchmarks/results/gpu.{json,md}.
# Usage: bash benchmarks/gpu/check.sh [seconds for the benchmarks, default 300]
# NOT YET RUN ON A GPU: written without one (see docs/gpu.md).
set -euo pipefail
cd "$(dirname "$0")/../.."
root=$(pwd)
budget=${1:-300}
start=$(date +%s)

echo "== build"
USL_FAST_CUDA=ON python -m pip install --no-build-isolation --no-deps -q .
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader || true
(cd /tmp && python -c "
from usl_fast import _cuda
import torch
n = _cuda.device_count()
print('CUDA devices seen by usl_fast._cuda:', n, '/ by torch:', torch.cuda.device_count())
assert n > 0, 'the kernels see no GPU: is the driver older than the CUDA toolkit that built them?'
")

echo "== GPU tests"
(cd /tmp && python -m pytest -q -p no:cacheprovider --rootdir="$root" \
  "$root/tests/test_portable.py" "$root/tests/test_ssl_augment.py")

echo "== compute-sanitizer (memcheck, racecheck) on the kernels"
for tool in memcheck racecheck; do
  (cd /tmp && compute-sanitizer --tool "$tool" --error-exitcode 1 \
    python "$root/benchmarks/gpu/kernels_smoke.py")
done

echo "== GPU benchmarks (budget ${budget} s)"
(cd /tmp && python "$root/benchmarks/gpu/gpu_bench.py" --budget-s "$budget" \
  --out "$root/benchmarks/results")
echo "== done in $(( $(date +%s) - start )) s"
