"""The files the command lines read, as a new user meets them (findings of a cold new-user
test): every bad input is refused
with one error line that names the option or file and what is allowed, and no message
suggests unpickling. Each case runs the real command in a child process (cwd outside the
checkout) and reads its stderr."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path
from typing import List, Sequence

import numpy as np
import pytest
from test_cli import subprocess_env

from usl_fast._presets import PARAMS, PRESETS

DOCS_CLI = Path(__file__).resolve().parent.parent / "docs" / "cli.md"


def run(argv: Sequence[object], cwd: Path, module: str = "usl_fast") -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", module, *[str(a) for a in argv]],
        cwd=cwd,
        env=subprocess_env(),
        capture_output=True,
        text=True,
        timeout=300,
    )


def one_error_line(r: subprocess.CompletedProcess, prefix: str = "usl-fast: error: ") -> str:
    """The single stderr line of a refused command (exit status 2), without a traceback."""
    assert r.returncode == 2, (r.returncode, r.stderr)
    lines = r.stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith(prefix), r.stderr
    return lines[0]


def never_unsafe(line: str) -> None:
    assert "allow_pickle" not in line and "pickled" not in line, line


@pytest.fixture
def work(tmp_path: Path) -> Path:
    """small.npy (60 x 8 float32), garbage.npy (text, not a .npy) and p1.npy (5 picks)."""
    rng = np.random.RandomState(0)
    np.save(tmp_path / "small.npy", rng.randn(60, 8).astype(np.float32))
    (tmp_path / "garbage.npy").write_text("not a numpy file at all")
    np.save(tmp_path / "p1.npy", np.arange(5, dtype=np.int64))
    return tmp_path


SELECT = ["select", "small.npy", "-m", "3", "-k", "5", "--no-progress", "-o", "out.npy"]


# ------------------------------------------------ a --labeled file that is not .npy


def test_select_labeled_not_a_npy_is_said_so_without_unpickling_advice(work: Path) -> None:
    line = one_error_line(run([*SELECT, "--labeled", "garbage.npy"], work))
    assert "--labeled file 'garbage.npy' is not a valid .npy file" in line
    assert "\\x93NUMPY signature" in line
    never_unsafe(line)
    assert not (work / "out.npy").exists()


def test_select_labeled_object_npy_is_refused_unloaded(work: Path) -> None:
    np.save(work / "obj.npy", np.array([1, "a"], dtype=object), allow_pickle=True)
    line = one_error_line(run([*SELECT, "--labeled", "obj.npy"], work))
    assert "--labeled file 'obj.npy' holds Python objects" in line
    never_unsafe(line)


@pytest.mark.parametrize("which", ["PICKS", "--labeled"])
def test_plot_index_files_not_a_npy(work: Path, which: str) -> None:
    pytest.importorskip("matplotlib")
    argv = ["plot", "small.npy", "p1.npy", "-o", "f.png"]
    if which == "PICKS":
        argv[2] = "garbage.npy"
    else:
        argv += ["--labeled", "garbage.npy"]
    line = one_error_line(run(argv, work))
    assert f"{which} file 'garbage.npy' is not a valid .npy file" in line
    never_unsafe(line)


def test_fixmatch_labeled_not_a_npy(work: Path) -> None:
    pytest.importorskip("torch")
    pytest.importorskip("sklearn")
    argv = ["fixmatch", "--dataset", "digits", "--labeled", "garbage.npy", "--out", "run"]
    line = one_error_line(run(argv, work))
    assert "--labeled file 'garbage.npy' is not a valid .npy file" in line
    never_unsafe(line)
    assert not (work / "run").exists()


# ------------------------------------------- python -m usl_fast.distributed's FEATS

DIST = "python -m usl_fast.distributed: rank 0: error: "


def dist_error(argv: List[str], cwd: Path, code: int = 1) -> str:
    """The one error line of a refused distributed command (every rank exits 1; 2 for a
    bad --labeled file, as usl-fast's commands)."""
    r = run(["select", *argv, "-m", "3", "-k", "5", "-o", "d.npy"], cwd, "usl_fast.distributed")
    assert r.returncode == code, (r.returncode, r.stderr)
    lines = r.stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith(DIST), r.stderr
    assert not (cwd / "d.npy").exists()
    return lines[0]


def test_distributed_refuses_npz_up_front(work: Path) -> None:
    np.savez(work / "z.npz", feats=np.zeros((20, 4), np.float32), other=np.zeros(3))
    line = dist_error(["z.npz"], work)
    assert "FEATS.npy 'z.npz': must be a .npy file" in line and "NpzFile" not in line


@pytest.mark.parametrize(
    "name, array, expected",
    [
        ("one.npy", np.zeros(5, np.float32), "must hold a 2-D (n_points, dim) array"),
        ("obj.npy", np.array([1, "a"], dtype=object), "holds Python objects (dtype object)"),
    ],
)
def test_distributed_refuses_bad_npy(
    work: Path, name: str, array: np.ndarray, expected: str
) -> None:
    np.save(work / name, array, allow_pickle=True)
    line = dist_error([name], work)
    assert repr(name) in line and expected in line
    never_unsafe(line)


def test_distributed_refuses_missing_and_garbage(work: Path) -> None:
    assert "FEATS.npy: no such file: missing.npy" in dist_error(["missing.npy"], work)
    line = dist_error(["garbage.npy"], work)
    assert "FEATS.npy file 'garbage.npy' is not a valid .npy file" in line
    never_unsafe(line)
    line = dist_error(["small.npy", "--labeled", "garbage.npy"], work, code=2)
    assert "--labeled file 'garbage.npy' is not a valid .npy file" in line
    never_unsafe(line)


# ------------------------------------------------------- a bad line in --labeled


def test_labeled_txt_bad_line_names_file_line_and_format(work: Path) -> None:
    (work / "badlab.txt").write_text("1\n2\nabc\n")
    line = one_error_line(run([*SELECT, "--labeled", "badlab.txt"], work))
    assert "--labeled file 'badlab.txt', line 3: 'abc' is not an integer" in line
    assert "each line must hold one integer index" in line
    assert "invalid literal" not in line and "\\n" not in line


def test_labeled_csv_bad_row_names_file_and_line(work: Path) -> None:
    (work / "bad.csv").write_text("Index,ImageID\n1,a\nx,b\n")
    line = one_error_line(run([*SELECT, "--labeled", "bad.csv"], work))
    assert "--labeled file 'bad.csv', line 3: 'x' is not an integer" in line
    assert "invalid literal" not in line


def test_fixmatch_labeled_txt_bad_line_names_the_line(work: Path) -> None:
    pytest.importorskip("torch")
    pytest.importorskip("sklearn")
    (work / "badlab.txt").write_text("1\n2\nabc\n")
    argv = ["fixmatch", "--dataset", "digits", "--labeled", "badlab.txt", "--out", "run"]
    line = one_error_line(run(argv, work))
    assert "--labeled file 'badlab.txt', line 3: 'abc' is not an integer" in line
    assert "row 2" not in line and not (work / "run").exists()


# ------------------------------------------------------------ FEATURES a directory


def test_features_directory_is_said_to_be_one(work: Path) -> None:
    line = one_error_line(run(["select", ".", "-m", "3", "-o", "p.npy"], work))
    assert "FEATURES '.' is a directory" in line and ".npy, .npz, .pt or .pth" in line
    assert "not found" not in line


# ----------------------------------------------------- the doc that explains it


def test_fixmatch_out_of_range_points_to_docs_fixmatch(work: Path) -> None:
    pytest.importorskip("torch")
    pytest.importorskip("sklearn")
    np.save(work / "far.npy", np.array([1, 1500]))
    argv = ["fixmatch", "--dataset", "digits", "--labeled", "far.npy", "--out", "run"]
    line = one_error_line(run(argv, work))
    assert "digits_train_features" in line and "see docs/fixmatch.md" in line
    assert "README" not in line
    doc = (DOCS_CLI.parent / "fixmatch.md").read_text(encoding="utf-8")
    assert "digits_train_features" in doc  # the page named does explain it


# ----------------------------------------------------------- plot --info checks


@pytest.fixture
def infos(work: Path) -> Path:
    """sel.npy + sel_info.npz, and other_info.npz of another selection on the same rows."""
    pytest.importorskip("matplotlib")
    base = ["select", "small.npy", "-m", "3", "--no-progress", "--normalize"]
    for k, name in ((5, "sel"), (9, "other")):
        argv = [*base, "-k", k, "-o", f"{name}.npy", "--save-info", f"{name}_info.npz"]
        r = run(argv, work)
        assert r.returncode == 0, r.stderr
    assert not np.array_equal(np.load(work / "sel.npy"), np.load(work / "other.npy"))
    return work


def test_plot_info_of_other_features_names_info(infos: Path) -> None:
    np.save(infos / "bigger.npy", np.random.RandomState(1).randn(90, 8).astype(np.float32))
    line = one_error_line(
        run(["plot", "bigger.npy", "sel.npy", "--info", "sel_info.npz", "-o", "f.png"], infos)
    )
    assert "--info 'sel_info.npz' does not match FEATURES" in line and "90 rows" in line
    assert "`labels`" not in line
    assert not (infos / "f.png").exists()


def test_plot_info_of_another_selection_is_refused(infos: Path) -> None:
    argv = ["plot", "small.npy", "sel.npy", "--info", "other_info.npz", "-o", "f.png"]
    line = one_error_line(run(argv, infos))
    assert "--info 'other_info.npz' is of another selection" in line and "'sel.npy'" in line
    # its own archive is accepted, also with the picks as a (sorted) .csv
    r = run(
        [
            "select",
            "small.npy",
            "-m",
            "3",
            "-k",
            "5",
            "--no-progress",
            "--normalize",
            "-o",
            "sel.csv",
        ],
        infos,
    )
    assert r.returncode == 0, r.stderr
    for picks in ("sel.npy", "sel.csv"):
        out = f"f_{picks[-3:]}.png"
        r = run(["plot", "small.npy", picks, "--info", "sel_info.npz", "-o", out], infos)
        assert r.returncode == 0, r.stderr
        assert (infos / out).stat().st_size > 0


# ----------------------------------------------------- --help names every preset


def test_select_help_preset_defaults_name_every_preset(work: Path) -> None:
    r = run(["select", "--help"], work)
    assert r.returncode == 0, r.stderr
    flat = " ".join(r.stdout.split())
    lines = re.findall(r"\[default: the preset's: ([^\]]*)\]", flat)
    assert len(lines) >= 5  # -k, --kmeans-iter, --rounds, --weight, ...
    for vals in lines:
        for name in PARAMS["defaults"].choices:
            assert re.search(rf"(^|[ (]){re.escape(name)}[ )]", vals), (name, vals)
    # imagenet-moco is declared equal to imagenet, and the line says so
    assert PRESETS["imagenet-moco"] == PRESETS["imagenet"]
    assert "imagenet 20 (also imagenet-moco)" in flat


# ------------------------------------------------ a .pt dict with a single entry


def test_pt_dict_with_one_non_tensor_entry(work: Path) -> None:
    torch = pytest.importorskip("torch")
    torch.save({"a": 1}, work / "oneint.pt")
    line = one_error_line(run(["select", "oneint.pt", "-m", "1", "-o", "q.npy"], work))
    assert "'oneint.pt' holds one entry, 'a' (a Python int), not a tensor or array" in line
    assert "holds several entries" not in line


# ---------------------------------------- docs/cli.md readable in the repository


def test_docs_cli_help_sections_say_where_the_text_is() -> None:
    text = DOCS_CLI.read_text(encoding="utf-8")
    blocks = re.findall(r"```\{cli-help\} (\S+)([^\n]*)\n```\n\n([^\n]*)\n", text)
    assert len(blocks) == text.count("{cli-help}") >= 7
    for target, subs, note in blocks:
        cmd = "usl-fast" if target.startswith("usl_fast.cli:") else "python -m usl_fast.distributed"
        cmd = " ".join([cmd, *subs.split()])
        assert "generated on the docs site" in note and f"`{cmd} --help`" in note, note


def test_a_filled_selection_is_noted_once(tmp_path):
    # USL's fill warning already explains the filled picks; the CLI's own note must not
    # repeat it (six distinct rows, 20 copies each: k-means leaves clusters empty).
    rng = np.random.default_rng(0)
    base = rng.standard_normal((6, 8)).astype(np.float32)
    base /= np.linalg.norm(base, axis=1, keepdims=True)
    np.save(tmp_path / "dup.npy", np.repeat(base, 20, axis=0))
    r = run(["select", "dup.npy", "-m", 10, "-k", 5, "--no-progress", "-o", "p.npy"], tmp_path)
    assert r.returncode == 0, r.stderr
    notes = [line for line in r.stderr.splitlines() if "filled" in line]
    assert len(notes) == 1 and "n_filled" in notes[0], r.stderr
