"""The ``usl-fast`` command line and the digits demo: outputs equal the library's on the
same input and options, the reference CSV format, every documented error exits 2 with a
message, and the demo's rows are sane. Mostly in-process (``cli.main(argv)``); two
subprocess runs check ``python -m usl_fast``."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path
from typing import List, Optional, Sequence, Tuple

import numpy as np
import pytest

import usl_fast
from usl_fast import cli

N, D, M = 300, 16, 10
# Small, fast options (the cifar10 preset's k=400 would exceed N=300).
FAST = ["-k", "15", "--kmeans-iter", "30", "--rounds", "4", "--no-progress"]
FAST_KW = dict(k=15, kmeans_iter=30, rounds=4)


# `feats` (a few blobs on the unit sphere, N x D) and `npy` (them saved as a .npy) are
# fixtures in conftest.py, shared with test_cli_newcomer.py.


def run_cli(argv: Sequence[object], capsys: pytest.CaptureFixture) -> Tuple[int, str, str]:
    """main(argv) -> (exit status, stdout, stderr); errors arrive as SystemExit."""
    try:
        code = cli.main([str(a) for a in argv])
    except SystemExit as exc:
        code = exc.code
    out, err = capsys.readouterr()
    return code, out, err


def read_csv_rows(path: Path) -> List[Tuple[int, Optional[str]]]:
    """(Index, ImageID) rows; ImageID is None in a file written without --image-ids."""
    text = path.read_text(encoding="utf-8")
    lines = text.split("\n")
    assert lines[0] in ("Index,ImageID", "Index")
    assert lines[-1] == "", "file must end with a newline"
    rows: List[Tuple[int, Optional[str]]] = []
    for line in lines[1:-1]:
        if lines[0] == "Index":
            rows.append((int(line), None))
        else:
            idx, image_id = line.split(",", 1)
            rows.append((int(idx), image_id))
    return rows


def subprocess_env() -> dict:
    # The child must import the same usl_fast as this process (the installed one with
    # the compiled core), not a source tree that happens to be the working directory.
    env = dict(os.environ)
    site = str(Path(usl_fast.__file__).resolve().parent.parent)
    env["PYTHONPATH"] = site + os.pathsep + env.get("PYTHONPATH", "")
    return env


# ------------------------------------------------------------------- entry points


def test_python_m_help_lists_subcommands(tmp_path: Path) -> None:
    r = subprocess.run(
        [sys.executable, "-m", "usl_fast", "--help"],
        cwd=tmp_path,
        env=subprocess_env(),
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert r.returncode == 0, r.stderr
    assert "usage: usl-fast" in r.stdout
    assert "select" in r.stdout and "demo" in r.stdout


def test_python_m_select_matches_library(tmp_path: Path, npy: Path, feats: np.ndarray) -> None:
    out = tmp_path / "picks.npy"
    r = subprocess.run(
        [sys.executable, "-m", "usl_fast", "select", str(npy), "-m", str(M), "-o", str(out), *FAST],
        cwd=tmp_path,
        env=subprocess_env(),
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert r.returncode == 0, r.stderr
    np.testing.assert_array_equal(np.load(out), usl_fast.select(feats, M, **FAST_KW))


def test_defaults_choices_are_the_presets() -> None:
    assert set(cli.DEFAULTS_CHOICES) == set(usl_fast.PRESETS)


def test_usl_options_are_the_declared_parameters(tmp_path: Path) -> None:
    """select's USL options and the distributed entry point's are generated from
    usl_fast._presets: same flag, type or choices, and None ("not given") as the argparse
    default; the distributed entry point does not import the CLI at all."""
    import argparse

    from usl_fast._presets import PARAMS, USL_PARAMS
    from usl_fast.distributed.__main__ import _parser

    def select_actions(parser: argparse.ArgumentParser) -> dict:
        (sub,) = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]
        return {a.dest: a for a in sub.choices["select"]._actions}

    ours, dist = select_actions(cli.build_parser()), select_actions(_parser())
    for p in USL_PARAMS:
        a = ours[p.name]
        assert p.option in a.option_strings and a.default is None, p.name
        assert tuple(a.choices or ()) == (p.choices or ()), p.name
        if p.type is not bool and p.choices is None:
            assert a.type is p.type, p.name
    assert tuple(dist["defaults"].choices) == PARAMS["defaults"].choices
    assert dist["defaults"].default == PARAMS["defaults"].default
    for name in ("k", "n_clusters", "kmeans_iter", "rounds", "weight"):
        assert dist[name].type is PARAMS[name].type and dist[name].default is None
    child = "import sys, usl_fast.distributed.__main__ as m; m._parser(); "
    child += "sys.exit('usl_fast.cli' in sys.modules)"
    r = subprocess.run(
        [sys.executable, "-c", child], cwd=tmp_path, env=subprocess_env(), timeout=60
    )
    assert r.returncode == 0, "python -m usl_fast.distributed imported usl_fast.cli"


def test_subcommand_required(capsys: pytest.CaptureFixture) -> None:
    code, _, err = run_cli([], capsys)
    assert code == 2 and "{select,fixmatch,demo" in err


# ------------------------------------------------------------------------- select


def test_npy_is_memory_mapped(npy: Path) -> None:
    assert isinstance(cli.load_features(str(npy)), np.memmap)


def test_select_npy_equals_library(
    tmp_path: Path, npy: Path, feats: np.ndarray, capsys: pytest.CaptureFixture
) -> None:
    out = tmp_path / "picks.npy"
    opts = [
        "--seed",
        "3",
        "--weight",
        "1.0",
        "--momentum",
        "0.5",
        "--alpha",
        "1.0",
        "--own-cluster",
        "cluster",
        "--threads",
        "1",
    ]
    code, stdout, err = run_cli(["select", npy, "-m", M, "-o", out, *FAST, *opts], capsys)
    assert code == 0, err
    got = np.load(out)
    assert got.dtype == np.int64 and got.shape == (M,)
    want = usl_fast.select(
        feats, M, seed=3, weight=1.0, momentum=0.5, alpha=1.0, own_cluster="cluster", **FAST_KW
    )
    np.testing.assert_array_equal(got, want)  # same values in the same (pick) order


@pytest.mark.parametrize("defaults", ["cifar100", "imagenet", "imagenet-clip"])
def test_select_presets_equal_library(
    tmp_path: Path, npy: Path, feats: np.ndarray, defaults: str, capsys: pytest.CaptureFixture
) -> None:
    out = tmp_path / "picks.npy"
    code, _, err = run_cli(
        [
            "select",
            npy,
            "-m",
            M,
            "-o",
            out,
            "--defaults",
            defaults,
            "-k",
            15,
            "--kmeans-iter",
            30,
            "--no-progress",
        ],
        capsys,
    )
    assert code == 0, err
    want = usl_fast.select(feats, M, defaults=defaults, k=15, kmeans_iter=30)
    np.testing.assert_array_equal(np.load(out), want)


def test_horizon_option_replaces_the_presets_other_horizon(
    tmp_path: Path, npy: Path, feats: np.ndarray, capsys: pytest.CaptureFixture
) -> None:
    out = tmp_path / "picks.npy"
    # cifar10 sets horizon_dist; giving --horizon-num must switch to the ImageNet flavour.
    code, _, err = run_cli(["select", npy, "-m", M, "-o", out, *FAST, "--horizon-num", 3], capsys)
    assert code == 0, err
    want = usl_fast.select(feats, M, horizon_num=3, horizon_dist=None, **FAST_KW)
    np.testing.assert_array_equal(np.load(out), want)


def test_normalize(tmp_path: Path, feats: np.ndarray, capsys: pytest.CaptureFixture) -> None:
    raw = feats * np.linspace(0.5, 3.0, N, dtype=np.float32)[:, None]  # unequal row norms
    src = tmp_path / "raw.npy"
    np.save(src, raw.astype(np.float64))
    out = tmp_path / "picks.npy"
    code, _, err = run_cli(["select", src, "-m", M, "-o", out, *FAST, "--normalize"], capsys)
    assert code == 0, err
    unit = (raw / np.linalg.norm(raw, axis=1, keepdims=True)).astype(np.float32)
    np.testing.assert_array_equal(np.load(out), usl_fast.select(unit, M, **FAST_KW))


def test_normalize_near_zero_rows_as_the_library(tmp_path: Path, feats: np.ndarray) -> None:
    """--normalize scales rows as select(normalize=True) does, rows of norm far below 1e-6
    included (the CLI once floored norms at 1e-12, so a row of norm 1e-14 kept norm 0.01
    there and became a unit row in the library): the same picks, from the installed command
    in a child process."""
    x = feats.copy()
    tiny = np.arange(0, N, 7)  # 43 rows spread over the blobs
    scales = np.logspace(-7, -30, tiny.size).astype(np.float32)  # every norm < 1e-6
    x[tiny] *= scales[:, None]
    x[tiny[-1]] = 0.0  # and one all-zero row, which stays zero in both
    norms = np.linalg.norm(x.astype(np.float64), axis=1)
    assert norms[tiny].max() < 1e-6 and (norms[tiny] < 1e-12).sum() > 20
    src = tmp_path / "tiny.npy"
    np.save(src, x)
    out = tmp_path / "picks.npy"
    r = subprocess.run(
        [sys.executable, "-m", "usl_fast", "select", str(src), "-m", str(M), "-o", str(out)]
        + [*FAST, "--normalize"],
        cwd=tmp_path,
        env=subprocess_env(),
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert r.returncode == 0, r.stderr
    want = usl_fast.select(x, M, normalize=True, **FAST_KW)
    np.testing.assert_array_equal(np.load(out), want)


def test_select_pt_tensor_and_dict(
    tmp_path: Path, feats: np.ndarray, capsys: pytest.CaptureFixture
) -> None:
    torch = pytest.importorskip("torch")
    want = usl_fast.select(feats, M, **FAST_KW)
    single = tmp_path / "feats.pt"
    torch.save(torch.from_numpy(feats), single)
    in_dict = tmp_path / "feats.pth"
    torch.save({"feats": torch.from_numpy(feats), "targets": torch.zeros(N)}, in_dict)

    for src, extra, name in [(single, [], "a.npy"), (in_dict, ["--key", "feats"], "b.npy")]:
        code, _, err = run_cli(
            ["select", src, "-m", M, "-o", tmp_path / name, *FAST, *extra], capsys
        )
        assert code == 0, err
        np.testing.assert_array_equal(np.load(tmp_path / name), want)

    # A dict with several tensors needs --key; a wrong key lists the available ones.
    code, _, err = run_cli(["select", in_dict, "-m", M, "-o", tmp_path / "c.npy", *FAST], capsys)
    assert code == 2 and "--key" in err and "feats" in err
    code, _, err = run_cli(
        ["select", in_dict, "-m", M, "-o", tmp_path / "c.npy", *FAST, "--key", "nope"], capsys
    )
    assert code == 2 and "'nope' not found" in err and "targets" in err


def test_select_npz(tmp_path: Path, feats: np.ndarray, capsys: pytest.CaptureFixture) -> None:
    src = tmp_path / "feats.npz"
    np.savez(src, feats=feats, targets=np.arange(N))
    out = tmp_path / "p.npy"
    code, _, err = run_cli(["select", src, "--key", "feats", "-m", M, "-o", out, *FAST], capsys)
    assert code == 0, err
    np.testing.assert_array_equal(np.load(out), usl_fast.select(feats, M, **FAST_KW))
    code, _, err = run_cli(["select", src, "-m", M, "-o", tmp_path / "q.npy", *FAST], capsys)
    assert code == 2 and "--key" in err


def test_pt_without_torch_says_how_to_install(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture
) -> None:
    src = tmp_path / "feats.pt"
    src.write_bytes(b"not read")
    monkeypatch.setitem(sys.modules, "torch", None)  # makes `import torch` raise ImportError
    code, _, err = run_cli(["select", src, "-m", M, "-o", tmp_path / "p.npy"], capsys)
    assert code == 2
    assert "usl-fast: error:" in err and "pip install usl_fast[torch]" in err


def test_output_name_kept_exactly(tmp_path: Path, npy: Path, capsys: pytest.CaptureFixture) -> None:
    out = tmp_path / "picks.NPY"  # np.save(path) would have written picks.NPY.npy
    code, _, err = run_cli(["select", npy, "-m", M, "-o", out, *FAST], capsys)
    assert code == 0, err
    assert out.exists() and not (tmp_path / "picks.NPY.npy").exists()
    assert np.load(out).shape == (M,)


def test_csv_and_complement_format(
    tmp_path: Path, npy: Path, feats: np.ndarray, capsys: pytest.CaptureFixture
) -> None:
    ids = [f"class{i % 7}/img_{i:05d}.JPEG" for i in range(N)]
    id_file = tmp_path / "ids.txt"
    id_file.write_text("\n".join(ids) + "\n", encoding="utf-8")
    sel, rest = tmp_path / "sel.csv", tmp_path / "rest.csv"
    code, _, err = run_cli(
        [
            "select",
            npy,
            "-m",
            M,
            "--csv",
            sel,
            "--complement-csv",
            rest,
            "--image-ids",
            id_file,
            *FAST,
        ],
        capsys,
    )
    assert code == 0, err

    picks = usl_fast.select(feats, M, **FAST_KW)
    sel_rows, rest_rows = read_csv_rows(sel), read_csv_rows(rest)
    assert [i for i, _ in sel_rows] == sorted(picks.tolist())
    assert all(image_id == ids[i] for i, image_id in sel_rows + rest_rows)
    sel_idx, rest_idx = [i for i, _ in sel_rows], [i for i, _ in rest_rows]
    assert rest_idx == sorted(rest_idx)
    assert not set(sel_idx) & set(rest_idx)
    assert sorted(sel_idx + rest_idx) == list(range(N))
    # Exact bytes of the first lines, as pandas.to_csv(index=False) writes them.
    first = sorted(picks.tolist())[0]
    assert sel.read_text().startswith(f"Index,ImageID\n{first},{ids[first]}\n")


def test_csv_without_image_ids_has_only_the_index_column(
    tmp_path: Path, npy: Path, feats: np.ndarray, capsys: pytest.CaptureFixture
) -> None:
    sel = tmp_path / "sel.csv"
    code, _, err = run_cli(["select", npy, "-m", M, "--csv", sel, *FAST], capsys)
    assert code == 0, err
    want = sorted(usl_fast.select(feats, M, **FAST_KW).tolist())
    assert sel.read_text() == "Index\n" + "".join(f"{i}\n" for i in want)
    # and usl-fast fixmatch reads it back
    ssl = pytest.importorskip("usl_fast.ssl")
    np.testing.assert_array_equal(ssl.read_labeled(str(sel), N), want)


@pytest.mark.parametrize("n_lines", [N - 1, N + 1])
def test_image_ids_wrong_line_count(
    tmp_path: Path, npy: Path, n_lines: int, capsys: pytest.CaptureFixture
) -> None:
    id_file = tmp_path / "ids.txt"
    id_file.write_text("".join(f"x/{i}\n" for i in range(n_lines)))
    sel = tmp_path / "sel.csv"
    code, _, err = run_cli(
        ["select", npy, "-m", M, "--csv", sel, "--image-ids", id_file, *FAST], capsys
    )
    assert code == 2
    assert f"expected {N} lines, got {n_lines}" in err and "Traceback" not in err
    assert not sel.exists()


def test_bad_m(tmp_path: Path, npy: Path, capsys: pytest.CaptureFixture) -> None:
    out = tmp_path / "p.npy"
    for m, named in [(0, "`m`"), (N + 1, "`m`"), ("ten", "-m/--budget")]:
        code, _, err = run_cli(["select", npy, "-m", m, "-o", out, *FAST], capsys)
        assert code == 2, (m, err)
        assert named in err and "Traceback" not in err
        assert not out.exists()


def test_library_type_error_exits_2(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    src = tmp_path / "text.npy"
    np.save(src, np.array([["a", "b"], ["c", "d"]]))
    code, _, err = run_cli(["select", src, "-m", 1, "-o", tmp_path / "p.npy"], capsys)
    assert code == 2 and err.startswith("usl-fast: error: `features` must be a real numeric")


def test_refuses_to_overwrite_without_force(
    tmp_path: Path, npy: Path, feats: np.ndarray, capsys: pytest.CaptureFixture
) -> None:
    out = tmp_path / "p.npy"
    out.write_bytes(b"keep me")
    code, _, err = run_cli(["select", npy, "-m", M, "-o", out, *FAST], capsys)
    assert code == 2 and "refusing to overwrite" in err and "--force" in err
    assert out.read_bytes() == b"keep me"
    code, _, err = run_cli(["select", npy, "-m", M, "-o", out, *FAST, "--force"], capsys)
    assert code == 0, err
    np.testing.assert_array_equal(np.load(out), usl_fast.select(feats, M, **FAST_KW))


def test_an_output_is_required(npy: Path, capsys: pytest.CaptureFixture) -> None:
    code, _, err = run_cli(["select", npy, "-m", M, *FAST], capsys)
    assert code == 2 and "-o" in err and "--csv" in err


def test_method_random_equals_random_select(
    tmp_path: Path, npy: Path, capsys: pytest.CaptureFixture
) -> None:
    out, sel = tmp_path / "p.npy", tmp_path / "p.csv"
    code, stdout, err = run_cli(
        ["select", npy, "-m", M, "-o", out, "--csv", sel, "--method", "random", "--seed", 7], capsys
    )
    assert code == 0, err
    want = usl_fast.random_select(N, M, seed=7)
    np.testing.assert_array_equal(np.load(out), want)
    assert [i for i, _ in read_csv_rows(sel)] == sorted(want.tolist())
    assert re.fullmatch(
        rf"selected {M} of {N} in \d+\.\d\d s \(load .*, --method random, seed 7, .*\)\n",
        stdout,
    ), stdout


def test_method_uslt_equals_library(
    tmp_path: Path, npy: Path, feats: np.ndarray, capsys: pytest.CaptureFixture
) -> None:
    uslt = pytest.importorskip("usl_fast.uslt")
    out = tmp_path / "p.npy"
    argv = ["select", npy, "-m", 6, "-o", out, "--method", "uslt", "--seed", 2]
    argv += ["--epochs", 5, "--batch-size", 64, "--n-neighbors", 10]
    code, _, err = run_cli(argv + ["-k", 15], capsys)  # USL-T has no k: an error, no work
    assert code == 2 and "--method uslt does not take -k" in err and not out.exists()
    code, stdout, err = run_cli(argv, capsys)
    assert code == 0, err
    want = uslt.USLT(6, epochs=5, batch_size=64, n_neighbors=10, seed=2).fit(feats).indices_
    np.testing.assert_array_equal(np.load(out), want)
    assert re.fullmatch(
        rf"selected 6 of {N} in \d+\.\d\d s \(load .*, --method uslt, seed 2, "
        r"validate .*train .*select .*\)\n",
        stdout,
    ), stdout
    # USL-T options given to USL are an error, not silently dropped
    code, _, err = run_cli(
        ["select", npy, "-m", M, "-o", tmp_path / "q.npy", "--lr", 0.1, *FAST], capsys
    )
    assert code == 2 and "--method usl does not take --lr" in err
    # and bad USL-T values are errors that name the argument
    code, _, err = run_cli(argv[:-4] + ["--epochs", 0, "--force"], capsys)
    assert code == 2 and "`epochs`" in err


def test_timing_summary_and_progress(
    tmp_path: Path, npy: Path, capsys: pytest.CaptureFixture
) -> None:
    opts = [o for o in FAST if o != "--no-progress"]  # progress bars are on by default
    code, stdout, err = run_cli(["select", npy, "-m", M, "-o", tmp_path / "p.npy", *opts], capsys)
    assert code == 0, err
    pattern = (
        rf"selected {M} of {N} in \d+\.\d\d s \(load \d+\.\d\d s, density \d+\.\d\d s, "
        r"kmeans \d+\.\d\d s, selection \d+\.\d\d s\)\n"
    )
    assert re.fullmatch(pattern, stdout), stdout
    assert "k-means" in err  # a tqdm bar went to stderr


# --------------------------------------------------------------------------- demo


def test_demo_rows_and_coverage() -> None:
    pytest.importorskip("sklearn")
    from usl_fast.demo import run_demo

    lines: List[str] = []
    rows = run_demo(budgets=(10,), seeds=range(5), print_fn=lines.append, methods=("usl", "random"))
    assert [(r["budget"], r["method"]) for r in rows] == [(10, "usl"), (10, "random")]
    for r in rows:
        assert len(r["coverage"]) == len(r["accuracy"]) == 5
        assert all(1 <= c <= 10 for c in r["coverage"])
        assert all(0.0 <= a <= 1.0 for a in r["accuracy"])
        assert r["coverage_mean"] == pytest.approx(np.mean(r["coverage"]))
    usl, rnd = rows
    assert usl["coverage_mean"] >= rnd["coverage_mean"]
    assert any("budget | method | classes covered (mean)" in line for line in lines)


# USL-T at its default length: torch's tiny ops on 2 threads were 5-10x slower beside other
# jobs on 2 cores (126 s instead of 7 s here), so one thread.
@pytest.mark.usefixtures("one_torch_thread")
def test_demo_command(capsys: pytest.CaptureFixture) -> None:
    pytest.importorskip("sklearn")
    code, stdout, err = run_cli(["demo", "--seeds", 1, "--budgets", 10], capsys)
    assert code == 0, err
    assert re.search(r"^\s+10 \| usl\s+\|", stdout, re.M)
    assert re.search(r"^\s+10 \| random\s+\|", stdout, re.M)
    from usl_fast.demo import have_torch

    assert bool(re.search(r"^\s+10 \| uslt\s+\|", stdout, re.M)) == have_torch()
    code, stdout, err = run_cli(
        ["demo", "--seeds", 1, "--budgets", 10, "--methods", "random"], capsys
    )
    assert code == 0 and "| usl " not in stdout and "| random" in stdout


@pytest.mark.usefixtures("one_torch_thread")  # two default-length USL-T fits (see above)
def test_demo_uslt_rows_match_the_library() -> None:
    pytest.importorskip("sklearn")
    uslt = pytest.importorskip("usl_fast.uslt")
    from usl_fast.demo import digits_features, evaluate_picks, run_demo

    rows = run_demo(budgets=(10,), seeds=[3], print_fn=None, methods=("uslt",))
    x, y = digits_features()
    picks = uslt.USLT(n_clusters=10, seed=3).fit(x).indices_
    cov, acc = evaluate_picks(x, y, picks)
    assert rows[0]["method"] == "uslt" and rows[0]["coverage"] == [cov]
    assert rows[0]["accuracy"] == [acc]
    with pytest.raises(ValueError, match="`methods`"):
        run_demo(budgets=(10,), seeds=[0], print_fn=None, methods=("kmeans",))


def test_demo_without_sklearn_says_how_to_install(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture
) -> None:
    monkeypatch.setitem(sys.modules, "sklearn", None)
    code, _, err = run_cli(["demo", "--seeds", 1], capsys)
    assert code == 2 and "pip install usl_fast[demo]" in err
