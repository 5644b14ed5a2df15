#!/usr/bin/env bash
# Where nvcc is found: builds the CUDA kernels strictly (warnings and ptxas spills are
# errors) and checks the module loads. Then builds the engine twice more, beside the
# installed package, and runs tests against each:
#   1. USL_FAST_ISA_BUILD=portable: no SIMD code compiled in; the engine tests must pass.
#   2. USL_FAST_SANITIZE=address,undefined: AddressSanitizer + UBSan; the core suite must
#      run clean (any report aborts the run).
# (Both without the CUDA kernels, USL_FAST_CUDA=OFF, the default: the strict build above
# and tools/build_wheels.sh compile those wherever nvcc is found.)
# Needs the test extras installed (pip install ".[test]"). About 4 minutes on 2 cores.
set -euo pipefail
cd "$(dirname "$0")/.."
root=$(pwd)
work=$(mktemp -d)
python3 -m pip install -q "scikit-build-core>=0.10" "pybind11>=2.12"
trap 'rm -rf "$work"' EXIT
core_tests=(tests/test_exact.py tests/test_knn.py tests/test_kmeans.py tests/test_regularizer.py
            tests/test_engine_paths.py tests/test_errors.py tests/test_select.py
            tests/test_methods.py tests/test_shard_ops.py tests/test_dedup.py
            tests/test_dense_paths.py)

if command -v nvcc >/dev/null; then
  echo "== CUDA kernels, strict: warnings and ptxas local-memory spills are errors"
  USL_FAST_CUDA=ON USL_FAST_CUDA_STRICT=ON python3 -m pip install --no-deps \
    --no-build-isolation -q --target "$work/cuda" . 2>&1 | { grep -iE "error|spill" || true; }
  test -n "$(ls "$work"/cuda/usl_fast/_cuda*.so 2>/dev/null)" || {
    echo "the strict CUDA build failed"; exit 1; }
  (cd "$work" && PYTHONPATH="$work/cuda" python3 -c \
    "from usl_fast import _cuda; print('usl_fast._cuda loads; CUDA devices:', _cuda.device_count())")
fi

echo "== portable build"
USL_FAST_CUDA=OFF USL_FAST_ISA_BUILD=portable python3 -m pip install --no-deps --no-build-isolation -q \
  --target "$work/portable" .
(cd "$work" && PYTHONPATH="$work/portable" python3 -c \
  "from usl_fast._backend import _cpu; assert _cpu.active_isa() == 0, 'portable build runs SIMD'")
PYTHONPATH="$work/portable" python3 -m pytest -q -p no:cacheprovider --rootdir="$root" \
  tests/test_exact.py tests/test_knn.py tests/test_engine_paths.py tests/test_methods.py \
  tests/test_shard_ops.py tests/test_dedup.py

echo "== AddressSanitizer + UBSan build"
USL_FAST_CUDA=OFF USL_FAST_SANITIZE=address,undefined python3 -m pip install --no-deps --no-build-isolation -q \
  --target "$work/asan" .
asan=$(g++ -print-file-name=libasan.so)
ubsan=$(g++ -print-file-name=libubsan.so)
LD_PRELOAD="$asan $ubsan" ASAN_OPTIONS=detect_leaks=0,abort_on_error=1 \
  UBSAN_OPTIONS=halt_on_error=1,print_stacktrace=1 PYTHONPATH="$work/asan" \
  python3 -m pytest -q -p no:cacheprovider --rootdir="$root" "${core_tests[@]}"
