#!/usr/bin/env bash
# CI: the wheel a user would install, checked the way a user would get it.
#   1. tools/build_wheels.sh: the sdist and the repaired manylinux wheel into dist/ (one
#      engine build; the CUDA kernels too where nvcc is found, tagged 1cuda).
#   2. A fresh virtual environment gets the test dependencies from the package index
#      (torch==2.13.0, usl_fast's own dependencies, its `test` extra and its build
#      requirements, all read from pyproject.toml), then usl_fast from dist/ ONLY:
#      --no-index --only-binary usl_fast --no-deps, with no compiler reachable (CC/CXX=
#      /bin/false, compilers and cmake shadowed on PATH), from outside the checkout; pip
#      must not have built anything.
#   3. The whole test suite, slow tests included, against that install, from a directory
#      where the checkout's usl_fast is not importable.
# Prints the wheel's name, size and platform tag and how long `pip install <wheel>` took.
# Needs python3 (3.11+: pyproject.toml is read with tomllib), a C++ compiler for step 1,
# and network access to the package index.
set -euo pipefail
cd "$(dirname "$0")/.."
root=$(pwd)
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
t_start=$(date +%s)

had_build_dir=0
[[ -e build ]] && had_build_dir=1
bash tools/build_wheels.sh
t_wheel=$(( $(date +%s) - t_start ))
if [[ $had_build_dir == 0 && -e build ]]; then
  echo "check_wheel: building the wheel left a build/ folder in the checkout"; exit 1
fi
wheels=(dist/usl_fast-*.whl)
[[ ${#wheels[@]} == 1 ]] || { echo "check_wheel: expected one wheel in dist/: ${wheels[*]}"; exit 1; }
wheel=${wheels[0]}
name=$(basename "$wheel")

echo "== fresh environment: test dependencies from the package index"
python3 -m venv "$work/venv"
py="$work/venv/bin/python"
mapfile -t deps < <(python3 - <<'EOF'
import tomllib
with open("pyproject.toml", "rb") as f:
    toml = tomllib.load(f)
project = toml["project"]
# The build requirements too: tests/test_wheel.py::test_two_installs_at_once builds the
# checkout with --no-build-isolation.
for req in (project["dependencies"] + project["optional-dependencies"]["test"]
            + toml["build-system"]["requires"]):
    print(req)
EOF
)
t0=$(date +%s)
"$py" -m pip install -q torch==2.13.0 "${deps[@]}"
echo "installed torch==2.13.0 ${deps[*]} in $(( $(date +%s) - t0 )) s"

echo "== usl_fast from dist/ only, no compiler reachable"
# Every compiler and build tool a source build could reach is shadowed by /bin/false.
mkdir "$work/nocc"
for tool in cc c++ gcc g++ clang clang++ nvcc cmake ninja make ld; do
  ln -s /bin/false "$work/nocc/$tool"
done
t0=$(date +%s.%N)
(cd "$work" && CC=/bin/false CXX=/bin/false CUDACXX=/bin/false PATH="$work/nocc:$PATH" \
  "$py" -m pip install --only-binary usl_fast --no-index --find-links "$root/dist" --no-deps \
  usl_fast) 2>&1 | tee "$work/install.log"
t_install=$(python3 -c "import sys; print(f'{float(sys.argv[2]) - float(sys.argv[1]):.1f}')" \
  "$t0" "$(date +%s.%N)")
if grep -qiE "building wheel|created wheel|setup\.py|preparing metadata|build dependencies" \
    "$work/install.log"; then
  echo "check_wheel: pip built usl_fast instead of installing the wheel"; exit 1
fi
grep -q "Successfully installed usl_fast" "$work/install.log"
"$py" -m pip check
site=$("$py" -c "import sysconfig; print(sysconfig.get_paths()['platlib'])")
(cd "$work" && "$py" - "$site" "$name" <<'EOF'
import importlib.metadata as md
import pathlib
import sys

import usl_fast

site, name = pathlib.Path(sys.argv[1]).resolve(), sys.argv[2]
where = pathlib.Path(usl_fast.__file__).resolve()
assert where.is_relative_to(site), f"usl_fast imported from {where}, not from {site}"
# The install is that wheel: its WHEEL file has the file name's tags and build tag, and
# the build tag agrees with what the build recorded about the CUDA kernels.
wheel_file = md.distribution("usl_fast").read_text("WHEEL")
parts = name[: -len(".whl")].split("-")  # name, version, [build,] python, abi, platform
build = parts[2] if len(parts) == 6 else None
assert f"Tag: {'-'.join(parts[-3:])}" in wheel_file, wheel_file
assert (f"Build: {build}" in wheel_file) if build else ("Build:" not in wheel_file), wheel_file
info = usl_fast.build_info()
assert info["cuda"] == (build == "1cuda"), (info, name)
print("installed:", where.parent, info)
EOF
)
summary() {
  echo "wheel: $name"
  echo "size: $(stat -c %s "$wheel") bytes"
  echo "platform tag: $(echo "${name%.whl}" | awk -F- '{print $NF}')"
  echo "pip install of the wheel (--no-index --no-deps, no compiler): ${t_install} s"
}
summary

echo "== the whole test suite (slow tests included) against the installed wheel"
mapfile -t testpaths < <(python3 - <<'EOF'
import tomllib
with open("pyproject.toml", "rb") as f:
    for p in tomllib.load(f)["tool"]["pytest"]["ini_options"]["testpaths"]:
        print(p)
EOF
)
t0=$(date +%s)
# From $work: neither the checkout nor its usl_fast/ is on sys.path (tests/conftest.py also
# drops the root when the checkout holds no compiled engine, as in CI).
# USL_FAST_WHEEL_SITE tells tests/test_wheel.py which install it must be testing.
rc=0
(cd "$work" && USL_FAST_WHEEL_SITE="$site" "$py" -m pytest -p no:cacheprovider \
  --rootdir="$root" -m "slow or not slow" "${testpaths[@]/#/$root/}") || rc=$?
t_tests=$(( $(date +%s) - t0 ))

echo "== check_wheel summary"
summary
echo "build_wheels.sh: ${t_wheel} s; test suite: ${t_tests} s (exit code $rc);" \
  "check_wheel.sh: $(( $(date +%s) - t_start )) s"
exit $rc
