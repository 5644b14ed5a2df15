"""Index files (the picks of ``usl-fast select`` read back as ``--labeled``, ``PICKS`` or
by ``usl_fast.ssl.read_labeled``): one reader, ``usl_fast._io.read_index_file``, parses
every one of them, once, with messages that name the file, the line and what is allowed.
The command-line cases run the real command in a child process (cwd outside the
checkout)."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
from test_cli import run_cli
from test_cli_files import one_error_line, run

import usl_fast
from usl_fast._io import read_index_file

# ------------------------------------------------------------------ the reader itself


def test_npy_of_one_column_is_its_indices(tmp_path: Path) -> None:
    # numpy.argwhere's shape, and a column sliced with x[:, :1]: one index a row.
    np.save(tmp_path / "col.npy", np.array([[4], [0], [9]], dtype=np.int32))
    got = read_index_file(tmp_path / "col.npy", "--labeled")
    assert got.dtype == np.int64 and got.tolist() == [4, 0, 9]


@pytest.mark.parametrize("shape", [(1, 3), (2, 2), (), (3, 1, 1)])
def test_npy_of_another_shape_is_refused_naming_it(tmp_path: Path, shape: tuple) -> None:
    # (1, n) too: whether its rows or its columns hold the indices would be a guess.
    np.save(tmp_path / "p.npy", np.arange(int(np.prod(shape)), dtype=np.int64).reshape(shape))
    with pytest.raises(ValueError) as e:
        read_index_file(str(tmp_path / "p.npy"), "PICKS")
    msg = str(e.value)
    assert msg.startswith(f"PICKS {str(tmp_path / 'p.npy')!r} must hold a 1-D array")
    assert f"got shape {shape}, dtype int64" in msg and "shape (n, 1)" in msg


def test_feature_matrix_given_as_indices_is_refused_from_its_header(tmp_path: Path) -> None:
    # A (n, d) float file: refused by its header (named), not loaded and flattened.
    np.save(tmp_path / "feats.npy", np.zeros((50, 8), np.float32))
    with pytest.raises(ValueError, match=r"got shape \(50, 8\), dtype float32"):
        read_index_file(str(tmp_path / "feats.npy"), "--labeled")


def test_text_files_as_editors_and_numpy_write_them(tmp_path: Path) -> None:
    # A byte-order mark (Windows editors, Excel's "CSV UTF-8"), \r\n line ends, blank
    # lines and numpy.savetxt's "# header" line.
    (tmp_path / "p.txt").write_bytes(b"\xef\xbb\xbf# picks\r\n3\r\n\r\n 7 \r\n1\r\n")
    assert read_index_file(str(tmp_path / "p.txt"), "x").tolist() == [3, 7, 1]
    (tmp_path / "p.csv").write_bytes(b"\xef\xbb\xbfIndex,ImageID\r\n3,a.png\r\n7,b.png\r\n")
    assert read_index_file(str(tmp_path / "p.csv"), "x").tolist() == [3, 7]
    (tmp_path / "empty.txt").write_text("")
    assert read_index_file(str(tmp_path / "empty.txt"), "x").size == 0


def test_bad_lines_are_named_by_their_line_in_the_file(tmp_path: Path) -> None:
    # A quoted ImageID holding a line end: the row that follows starts on line 4.
    (tmp_path / "p.csv").write_text('Index,ImageID\n1,"a\nb"\nx,c\n')
    with pytest.raises(ValueError) as e:
        read_index_file(str(tmp_path / "p.csv"), "--labeled")
    assert "p.csv', line 4: 'x' is not an integer" in str(e.value)
    # Beyond int64: an error naming the line, not an OverflowError from numpy.
    (tmp_path / "big.txt").write_text("1\n99999999999999999999999\n")
    with pytest.raises(ValueError, match=r"big.txt', line 2: '9+' is not an integer index"):
        read_index_file(str(tmp_path / "big.txt"), "--labeled")


@pytest.mark.parametrize(
    "name, content, text",
    [
        ("p.dat", "1\n", "must be a .npy, .txt or .csv file of indices"),
        ("gone.dat", None, "no such file; it must be a .npy, .txt or .csv file"),
        ("missing.txt", None, "no such file"),
        ("nohead.csv", "3,a\n", "must start with the header Index,ImageID (or Index alone)"),
        ("empty.csv", "", "got an empty file"),
        ("latin1.txt", b"\xe9\n", "is not UTF-8 text"),
    ],
)
def test_refusals_name_the_source_and_what_is_allowed(
    tmp_path: Path, name: str, content: object, text: str
) -> None:
    path = tmp_path / name
    if isinstance(content, bytes):
        path.write_bytes(content)
    elif content is not None:
        path.write_text(content)
    with pytest.raises(ValueError) as e:
        read_index_file(os.fspath(path), "--labeled")
    assert text in str(e.value) and repr(os.fspath(path)) in str(e.value)


@pytest.mark.parametrize("value", ["1_000", "\u0663", "\uff17", "0x10", "1e3", "+-3"])
@pytest.mark.parametrize("fmt", [".txt", ".csv"])
def test_only_ascii_digits_are_an_index(tmp_path: Path, fmt: str, value: str) -> None:
    # int() alone reads "1_000" as 1000 and other scripts' digits ("\u0663" is 3); no file
    # usl-fast writes holds them, so they are named like any other bad line.
    head = "Index,ImageID\n" if fmt == ".csv" else ""
    path = tmp_path / f"p{fmt}"
    path.write_text(f"{head}4\n{value}\n", encoding="utf-8")
    with pytest.raises(ValueError) as e:
        read_index_file(path, "--labeled")
    assert f"p{fmt}', line {3 if head else 2}: {value!r} is not an integer index" in str(e.value)


def test_signs_and_spaces_around_ascii_digits_are_read(tmp_path: Path) -> None:
    (tmp_path / "p.txt").write_text("+4\n -0 \n007\n")
    assert read_index_file(tmp_path / "p.txt", "x").tolist() == [4, 0, 7]


def test_uint64_beyond_int64_is_refused_naming_the_value(tmp_path: Path) -> None:
    # astype(int64) would wrap 2**63 + 5 to a negative index in silence.
    np.save(tmp_path / "u.npy", np.array([3, 2**63 + 5], dtype=np.uint64))
    with pytest.raises(ValueError) as e:
        read_index_file(tmp_path / "u.npy", "PICKS")
    msg = str(e.value)
    assert msg.startswith(f"PICKS {str(tmp_path / 'u.npy')!r} holds the index {2**63 + 5}")
    assert f"must be at most {2**63 - 1}" in msg
    np.save(tmp_path / "ok.npy", np.array([3, 2**63 - 1], dtype=np.uint64))
    assert read_index_file(tmp_path / "ok.npy", "PICKS").tolist() == [3, 2**63 - 1]


def test_blank_lines_before_the_csv_header_are_skipped(tmp_path: Path) -> None:
    # As the command line's reader did before read_index_file; the header is still required.
    (tmp_path / "p.csv").write_text("\n\r\nIndex,ImageID\n\n3,a.png\n7,b.png\n")
    assert read_index_file(tmp_path / "p.csv", "x").tolist() == [3, 7]
    (tmp_path / "nohead.csv").write_text("\n3,a.png\n")
    with pytest.raises(
        ValueError, match=r"must start with the header Index,ImageID .* got '3,a.png'"
    ):
        read_index_file(tmp_path / "nohead.csv", "x")
    (tmp_path / "blank.csv").write_text("\n\n")
    with pytest.raises(ValueError, match="got an empty file"):
        read_index_file(tmp_path / "blank.csv", "x")


# ------------------------------------------------------------------ ssl.read_labeled


def test_read_labeled_uses_the_one_reader(tmp_path: Path) -> None:
    ssl = pytest.importorskip("usl_fast.ssl")
    np.save(tmp_path / "wide.npy", np.array([[1, 2], [3, 4]]))
    with pytest.raises(ValueError, match=r"got shape \(2, 2\)"):  # not flattened
        ssl.read_labeled(str(tmp_path / "wide.npy"), 10)
    np.save(tmp_path / "col.npy", np.array([[1], [3]]))
    assert ssl.read_labeled(tmp_path / "col.npy", 10).tolist() == [1, 3]
    (tmp_path / "bad.txt").write_text("1\n2\nabc\n")
    with pytest.raises(ValueError) as e:
        ssl.read_labeled(str(tmp_path / "bad.txt"), 10)
    assert "`labeled` file" in str(e.value) and "line 3: 'abc' is not an integer" in str(e.value)


def test_read_labeled_words_its_refusals_as_the_commands_do(tmp_path: Path) -> None:
    # The same problem, the same words as select's --labeled check, and what is allowed.
    ssl = pytest.importorskip("usl_fast.ssl")
    np.save(tmp_path / "rep.npy", np.array([1, 4, 1]))
    with pytest.raises(ValueError) as e:
        ssl.read_labeled(tmp_path / "rep.npy", 10)
    want = f"`labeled` {str(tmp_path / 'rep.npy')!r}: indices must be distinct (some repeat)"
    assert str(e.value) == want
    (tmp_path / "none.txt").write_text("# picks\n")
    with pytest.raises(ValueError) as e:
        ssl.read_labeled(tmp_path / "none.txt", 10)
    want = f"`labeled` {str(tmp_path / 'none.txt')!r} holds no index; it must hold at least one"
    assert str(e.value) == want


# ------------------------------------------------------------------ the command lines


@pytest.fixture
def work(tmp_path: Path) -> Path:
    x = np.random.RandomState(0).randn(60, 8)
    np.save(
        tmp_path / "small.npy", (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)
    )
    return tmp_path


SELECT = ["select", "small.npy", "-m", "3", "-k", "5", "--seed", "1", "--no-progress"]


def test_select_reads_a_column_npy_as_its_indices(work: Path) -> None:
    np.save(work / "flat.npy", np.array([3, 50, 12]))
    np.save(work / "col.npy", np.array([[3], [50], [12]]))
    for lab in ("flat", "col"):
        r = run([*SELECT, "--labeled", f"{lab}.npy", "-o", f"out_{lab}.npy"], work)
        assert r.returncode == 0, r.stderr
    np.testing.assert_array_equal(np.load(work / "out_col.npy"), np.load(work / "out_flat.npy"))


def test_select_refuses_an_index_beyond_int64_in_one_line(work: Path) -> None:
    (work / "big.txt").write_text("1\n99999999999999999999999\n")
    line = one_error_line(run([*SELECT, "--labeled", "big.txt", "-o", "o.npy"], work))
    assert "--labeled file 'big.txt', line 2:" in line and "is not an integer index" in line


def test_fixmatch_refuses_a_2d_npy_naming_its_shape(work: Path) -> None:
    pytest.importorskip("torch")
    pytest.importorskip("sklearn")
    np.save(work / "wide.npy", np.array([[1, 2], [3, 4]]))
    tiny = ["--steps", "2", "--eval-every", "2", "--batch-size", "4", "--mu", "2"]
    argv = ["fixmatch", "--dataset", "digits", "--labeled", "wide.npy", "--out", "run", *tiny]
    line = one_error_line(run(argv, work))
    assert "--labeled 'wide.npy' must hold a 1-D array of integer indices" in line
    assert "got shape (2, 2)" in line and not (work / "run").exists()


def test_fixmatch_parses_labeled_once(
    work: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture
) -> None:
    pytest.importorskip("torch")
    pytest.importorskip("sklearn")
    from usl_fast.ssl import fixmatch

    calls = []

    def counted(path, what):
        calls.append(path)
        return read_index_file(path, what)

    monkeypatch.setattr(fixmatch, "read_index_file", counted)
    (work / "bad.txt").write_text("1\n2\nabc\n")
    argv = ["fixmatch", "--dataset", "digits", "--labeled", work / "bad.txt"]
    code, _, err = run_cli([*argv, "--out", work / "run"], capsys)
    assert code == 2 and "--labeled file" in err and "line 3: 'abc'" in err, err
    assert len(calls) == 1  # no second parse for a better message


def test_distributed_reads_the_same_index_files(work: Path) -> None:
    # One rank (no torchrun): the picks of a later round from a .txt, as select reads it.
    pytest.importorskip("torch")
    (work / "lab.txt").write_text("3\n50\n12\n")
    argv = ["select", "small.npy", "-m", "3", "-k", "5", "--labeled", "lab.txt", "-o", "d.npy"]
    r = run([*argv, "--no-progress"], work, "usl_fast.distributed")
    assert r.returncode == 0, r.stderr
    x = np.load(work / "small.npy")
    want = usl_fast.select(x, 3, k=5, labeled=[3, 50, 12])
    np.testing.assert_array_equal(np.load(work / "d.npy"), want)
    np.save(work / "wide.npy", np.array([[3, 50]]))
    argv[7] = "wide.npy"
    r = run(argv, work, "usl_fast.distributed")
    assert r.returncode == 1 and "got shape (1, 2)" in r.stderr, r.stderr
