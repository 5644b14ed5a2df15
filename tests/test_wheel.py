"""How usl_fast is built and installed: the CUDA kernels are opt-in and a build with them
is named for it (wheel build tag 1cuda, usl_fast.build_info()), an install says what it
holds, and two installs of one checkout can run at the same time (no shared build folder).
tools/check_wheel.sh runs this file against the repaired wheel; USL_FAST_WHEEL_SITE then
names the site-packages that wheel went into."""

from __future__ import annotations

import importlib.metadata
import importlib.util
import os
import pathlib
import re
import shutil
import subprocess
import sys
import textwrap
import threading

import pytest

try:
    import tomllib
except ImportError:  # Python < 3.11
    tomllib = None

import usl_fast

ROOT = pathlib.Path(__file__).resolve().parent.parent


def _pyproject() -> dict:
    if tomllib is None:
        pytest.skip("reading pyproject.toml needs tomllib (Python 3.11+)")
    with open(ROOT / "pyproject.toml", "rb") as f:
        return tomllib.load(f)


def _cmake_spellings() -> tuple:
    # The two sets CMakeLists.txt accepts for USL_FAST_CUDA, as written there.
    text = (ROOT / "CMakeLists.txt").read_text(encoding="utf-8")
    on = re.search(r'if\(_cuda_request MATCHES "([^"]+)"\)', text)
    off = re.search(r'elseif\(_cuda_request MATCHES "([^"]+)"\)', text)
    assert on and off, "CMakeLists.txt no longer spells out USL_FAST_CUDA's ON and OFF sets"
    return on.group(1), off.group(1)


def test_cuda_kernels_are_opt_in_and_a_cuda_build_is_tagged():
    sk = _pyproject()["tool"]["scikit-build"]
    # A plain `pip install .` builds the CPU engine only, even with nvcc on PATH.
    assert sk["cmake"]["define"]["USL_FAST_CUDA"] == {"env": "USL_FAST_CUDA", "default": "OFF"}
    tagging = [o for o in sk.get("overrides", []) if o.get("wheel", {}).get("build-tag")]
    assert len(tagging) == 1, tagging
    assert tagging[0]["wheel"]["build-tag"] == "1cuda"
    assert set(tagging[0]["if"]) == {"env"} and set(tagging[0]["if"]["env"]) == {"USL_FAST_CUDA"}
    pattern = tagging[0]["if"]["env"]["USL_FAST_CUDA"]
    # scikit-build-core tags the wheel when the variable matches `pattern` (re.search);
    # CMake builds the kernels when its upper-cased value matches the ON set, skips them
    # for the OFF set and refuses anything else. Tagged exactly when built:
    cmake_on, cmake_off = _cmake_spellings()
    values = ["ON", "on", "On", "1", "TRUE", "true", "Yes", "YES", "OFF", "off", "0", "false",
              "No", "", "AUTO", "auto", "y", "t", "2", "01", "cuda", " ON", "ON ", "onn", "xon"]
    for v in values:
        tagged = re.search(pattern, v) is not None
        built = re.match(cmake_on, v.upper()) is not None
        skipped = re.match(cmake_off, v.upper()) is not None
        assert not (built and skipped), v
        assert tagged == built, (v, tagged, built)
    assert any(re.search(pattern, v) for v in values)


def test_no_shared_persistent_build_folder():
    # build-dir = "build/{wheel_tag}" made two installs of one checkout collide in CMake's
    # try_compile (test_two_installs_at_once below runs them); each build now gets its own
    # temporary folder.
    assert "build-dir" not in _pyproject()["tool"]["scikit-build"]


@pytest.mark.parametrize(
    "value, env, message",
    [
        ("AUTO", {}, "USL_FAST_CUDA='AUTO': use ON"),
        ("maybe", {}, "USL_FAST_CUDA='maybe': use ON"),
        # ON never falls back to a CPU-only build (which its wheel's tag would misname)
        ("ON", {"CUDACXX": "/bin/false"}, "USL_FAST_CUDA=ON: no working CUDA compiler"),
    ],
)
def test_cmake_refuses_a_cuda_request_it_cannot_honour(tmp_path, value, env, message):
    cmake = shutil.which("cmake")
    if cmake is None or shutil.which("c++") is None:
        pytest.skip("needs cmake and a C++ compiler on PATH")
    r = subprocess.run(
        [cmake, "-S", str(ROOT), "-B", str(tmp_path / "b"), f"-DUSL_FAST_CUDA={value}"],
        capture_output=True, text=True, timeout=300, env={**os.environ, **env},
    )
    out = re.sub(r"\s+", " ", r.stdout + r.stderr)
    assert r.returncode != 0, out
    assert message in out, out


def _own_distribution():
    """The installed distribution the imported usl_fast belongs to, or None for a source
    checkout (no .dist-info beside the package)."""
    site = pathlib.Path(usl_fast.__file__).resolve().parent.parent
    for dist in importlib.metadata.distributions(path=[str(site)]):
        if dist.metadata["Name"].replace("-", "_").lower() == "usl_fast":
            return dist
    return None


def test_the_install_says_what_it_holds():
    expected_site = os.environ.get("USL_FAST_WHEEL_SITE")
    here = pathlib.Path(usl_fast.__file__).resolve()
    if expected_site:  # tools/check_wheel.sh: these tests must run on the wheel's install
        assert here.is_relative_to(pathlib.Path(expected_site).resolve()), here
    dist = _own_distribution()
    if dist is None:
        pytest.skip(f"usl_fast is imported from a source checkout ({here.parent})")
    info = usl_fast.build_info()
    assert set(info) == {"cuda", "cuda_version", "cuda_architectures", "isa", "sanitize",
                         "cxx_compiler", "build_type"}
    has_cuda_module = importlib.util.find_spec("usl_fast._cuda") is not None
    assert info["cuda"] is has_cuda_module
    assert (info["cuda_version"] is not None) is info["cuda"]
    wheel = dist.read_text("WHEEL") or ""
    builds = re.findall(r"^Build: (\S+)$", wheel, re.MULTILINE)
    assert builds == (["1cuda"] if info["cuda"] else []), wheel
    assert info["isa"] in ("dispatch", "portable")
    if info["isa"] == "portable":
        assert usl_fast._cpu.active_isa() == 0


_IMPORT_CHECK = textwrap.dedent(
    """
    import pathlib, sys
    import numpy as np
    import usl_fast
    target = pathlib.Path(sys.argv[1]).resolve()
    assert pathlib.Path(usl_fast.__file__).resolve().is_relative_to(target), usl_fast.__file__
    rng = np.random.default_rng(0)
    x = rng.standard_normal((500, 16)).astype(np.float32)
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    d, i = usl_fast.knn(x, 5)
    assert i.shape == (500, 5) and (i[:, 0] == np.arange(500)).all()
    print(usl_fast.build_info())
    """
)


def _need_build_requirements():
    if shutil.which("c++") is None or shutil.which("cmake") is None:
        pytest.skip("needs a C++ compiler and cmake")
    missing = []
    for req in _pyproject()["build-system"]["requires"]:
        name = re.match(r"[A-Za-z0-9_.-]+", req).group(0)
        try:
            importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            missing.append(req)
    if missing:
        pytest.skip(f"the build requirements are not installed: pip install {' '.join(missing)}")


def _pip_install_checkout(target: pathlib.Path, env: dict) -> subprocess.CompletedProcess:
    # pip's default verbosity: what a user sees. --no-build-isolation: the build
    # requirements of this environment, no download.
    return subprocess.run(
        [sys.executable, "-m", "pip", "install", "--no-deps", "--no-cache-dir",
         "--no-build-isolation", "--target", str(target), str(ROOT)],
        capture_output=True, text=True, timeout=900, env=env, cwd=target.parent,
    )


@pytest.mark.slow
def test_two_installs_at_once(tmp_path):
    # Two `pip install .` of this checkout started at the same moment, each into its own
    # --target (as two virtual environments or two CI jobs would). With the former shared
    # build/{wheel_tag} folder the two builds wrote into one tree: an install failed in each
    # of 7 runs of this test with that pyproject.toml ("CMake Error ... (try_compile)" or
    # "(configure_file)" in CMake's compiler checks, or the LTO link crashing on object files
    # the other build was rewriting). --no-build-isolation starts both CMake runs within a
    # moment of each other, where pip's isolated build environments would stagger them.
    _need_build_requirements()
    had_build_dir = (ROOT / "build").exists()
    env = {**os.environ, "USL_FAST_CUDA": "OFF"}
    results = {}

    def install(name):
        results[name] = _pip_install_checkout(tmp_path / name, env)

    threads = [threading.Thread(target=install, args=(n,)) for n in ("a", "b")]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    for name in ("a", "b"):
        r = results[name]
        assert r.returncode == 0, f"install {name} failed:\n{r.stdout[-3000:]}\n{r.stderr[-3000:]}"
        # pip's own (non -v) output names the wheel it built: no 1cuda tag here
        built = re.findall(r"Created wheel for usl_fast: filename=(\S+\.whl)", r.stdout)
        assert len(built) == 1 and "-1cuda-" not in built[0], r.stdout
        c = subprocess.run(
            [sys.executable, "-c", _IMPORT_CHECK, str(tmp_path / name)],
            capture_output=True, text=True, timeout=120, cwd=tmp_path,
            env={**os.environ, "PYTHONPATH": str(tmp_path / name)},
        )
        assert c.returncode == 0, c.stderr
        assert "'cuda': False" in c.stdout, c.stdout
    if not had_build_dir:
        assert not (ROOT / "build").exists(), "an install left a build/ folder in the checkout"


@pytest.mark.slow
def test_a_cuda_build_names_itself_in_pips_output(tmp_path):
    # USL_FAST_CUDA=ON: pip's normal output (no -v) names the wheel it built with the 1cuda
    # tag, and the install holds the kernels and says so.
    if shutil.which("nvcc") is None:
        pytest.skip("needs nvcc")
    _need_build_requirements()
    r = _pip_install_checkout(tmp_path / "t", {**os.environ, "USL_FAST_CUDA": "ON"})
    assert r.returncode == 0, f"{r.stdout[-3000:]}\n{r.stderr[-3000:]}"
    built = re.findall(r"Created wheel for usl_fast: filename=(\S+\.whl)", r.stdout)
    assert len(built) == 1 and re.fullmatch(r"usl_fast-[^-]+-1cuda-[^-]+-[^-]+-[^-]+\.whl",
                                            built[0]), r.stdout
    assert list((tmp_path / "t" / "usl_fast").glob("_cuda*.so")), "no usl_fast._cuda module"
    c = subprocess.run(
        [sys.executable, "-c", _IMPORT_CHECK, str(tmp_path / "t")],
        capture_output=True, text=True, timeout=120, cwd=tmp_path,
        env={**os.environ, "PYTHONPATH": str(tmp_path / "t")},
    )
    assert c.returncode == 0, c.stderr
    assert "'cuda': True" in c.stdout, c.stdout
