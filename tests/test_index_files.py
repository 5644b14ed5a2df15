"""Index files (the picks of ``usl-fast select`` read back as ``--labeled``, ``PICKS`` or
by ``usl_fast.ssl.read_labeled``): one reader, ``usl_fast._io.read_index_file``, parses
every one of them, once, with messages that name the file, the line and what is allowed.
The command-line cases run the real command in a child process (cwd outside the
checkout)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from test_cli import run_cli, subprocess_env
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
    with pytest.raises(ValueError, match=r"big.txt', line 2 holds the index 9+; indices must"):
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


@pytest.mark.skipif(not hasattr(os, "mkfifo"), reason="needs named pipes")
@pytest.mark.parametrize("kind", ["fifo", "device"])
def test_a_pipe_or_device_is_refused_unopened(tmp_path: Path, kind: str) -> None:
    # In a child with a timeout: opening a FIFO nobody writes to would wait forever.
    if kind == "fifo":
        path = tmp_path / "labeled.txt"
        os.mkfifo(path)
    else:
        path = Path(os.devnull)
    code = (
        "import sys\n"
        "from usl_fast._io import read_index_file\n"
        "try:\n"
        "    read_index_file(sys.argv[1], '--labeled')\n"
        "except ValueError as e:\n"
        "    print(e)\n"
    )
    r = subprocess.run(
        [sys.executable, "-c", code, os.fspath(path)],
        cwd=tmp_path,  # (not the checkout: the child imports the installed package)
        env=subprocess_env(),
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert r.returncode == 0, r.stderr
    assert "is not a regular file (a pipe, device or socket)" in r.stdout, r.stdout
    assert repr(os.fspath(path)) in r.stdout and "no such file" not in r.stdout


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
    assert "--labeled file 'big.txt', line 2 holds the index" in line and "at most" in line


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
    assert r.returncode == 2 and "got shape (1, 2)" in r.stderr, r.stderr


# ------------------------------------------- python -m usl_fast.distributed --labeled

DIST = "python -m usl_fast.distributed: rank 0: error: "


@pytest.mark.parametrize(
    "name, make",
    [
        ("cube.npy", lambda p: np.save(p, np.zeros((2, 2, 2), np.int64))),
        ("bad.txt", lambda p: p.write_text("1\nabc\n")),
        ("neg.txt", lambda p: p.write_text("-1\n")),
        ("far.npy", lambda p: np.save(p, np.array([3, 60]))),
        ("dup.npy", lambda p: np.save(p, np.array([1, 4, 1]))),
    ],
)
def test_distributed_refuses_a_bad_labeled_file_as_select_does(work: Path, name: str, make) -> None:
    # Exit status 2 and select's very words (which name --labeled and the file, the range
    # and repeats included), before the process group forms: a second rank that never
    # comes would otherwise keep this one waiting for the group.
    make(work / name)
    want = one_error_line(run([*SELECT, "--labeled", name, "-o", "s.npy"], work))
    argv = ["select", "small.npy", "-m", "3", "-k", "5", "--labeled", name, "-o", "d.npy"]
    r = run([*argv, "--no-progress", "--timeout", "20"], work, "usl_fast.distributed")
    line = one_error_line(r, DIST)
    assert line[len(DIST) :] == want[len("usl-fast: error: ") :]
    assert line.startswith(f"{DIST}--labeled {name!r}") or f"--labeled file {name!r}" in line
    assert not (work / "d.npy").exists() and not (work / "s.npy").exists()


def test_distributed_checks_labeled_before_the_process_group(work: Path) -> None:
    # Rank 0 of two, with no rank 1: the range error comes at once, not after the group's
    # timeout (or a hang waiting for the other rank).
    import socket

    (work / "neg.txt").write_text("-1\n")
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    env = dict(
        subprocess_env(), RANK="0", WORLD_SIZE="2", MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port)
    )
    argv = ["select", "small.npy", "-m", "3", "--labeled", "neg.txt", "-o", "d.npy"]
    r = subprocess.run(
        [sys.executable, "-m", "usl_fast.distributed", *argv, "--timeout", "30"],
        cwd=work,
        env=env,
        capture_output=True,
        text=True,
        timeout=25,
    )
    line = one_error_line(r, DIST)
    assert "--labeled 'neg.txt': indices must lie in [0, 60) for these features" in line


# ------------------------------------------------- read_labeled's own arguments


@pytest.mark.parametrize(
    "n, error, text",
    [
        ("600", TypeError, "`n` must be an integer, got '600' (str)"),
        (True, TypeError, "`n` must be an integer, got True (bool)"),
        (2.0, TypeError, "`n` must be an integer, got 2.0 (float)"),
        (0, ValueError, "`n` must be >= 1 (got n=0)"),
        (-1, ValueError, "`n` must be >= 1 (got n=-1)"),
    ],
)
def test_read_labeled_checks_n_before_the_file(tmp_path: Path, n, error, text) -> None:
    # The file does not exist: an error about n shows n was checked first.
    ssl = pytest.importorskip("usl_fast.ssl")
    with pytest.raises(error) as e:
        ssl.read_labeled(str(tmp_path / "missing.txt"), n)
    assert str(e.value) == text
    (tmp_path / "ok.txt").write_text("1\n")
    assert ssl.read_labeled(tmp_path / "ok.txt", np.int64(2)).tolist() == [1]


@pytest.mark.parametrize("path", [3, None, b"ok.txt", ["ok.txt"]])
def test_read_labeled_names_a_path_of_another_type(tmp_path: Path, path) -> None:
    ssl = pytest.importorskip("usl_fast.ssl")
    with pytest.raises(TypeError) as e:
        ssl.read_labeled(path, "600")  # path first: its own argument order
    msg = str(e.value)
    assert msg.startswith("`path` must be a str or os.PathLike") and repr(path) in msg
    assert ("os.fsdecode" in msg) == isinstance(path, bytes)


# ------------------------------------------------------------- plot's empty PICKS


@pytest.mark.parametrize("name", ["empty.txt", "empty.npy"])
def test_plot_names_an_empty_picks_file(work: Path, name: str) -> None:
    pytest.importorskip("matplotlib")
    if name.endswith(".npy"):
        np.save(work / name, np.zeros(0, np.int64))
    else:
        (work / name).write_text("# no picks\n")
    line = one_error_line(run(["plot", "small.npy", name, "-k", "5", "-o", "e.png"], work))
    assert line == f"usl-fast: error: PICKS {name!r} holds no index; it must hold at least one"
    assert not (work / "e.png").exists()


# ------------------------------------------------- text beyond int64, long lines


@pytest.mark.parametrize("fmt", [".txt", ".csv"])
def test_text_integer_beyond_int64_is_named_as_the_npy_reader_names_it(
    tmp_path: Path, fmt: str
) -> None:
    head = "Index\n" if fmt == ".csv" else ""
    first = 2 if head else 1
    edge = f"{head}{2**63 - 1}\n{-(2**63)}\n"
    (tmp_path / f"edge{fmt}").write_text(edge)  # the int64 bounds themselves are read
    assert read_index_file(tmp_path / f"edge{fmt}", "x").tolist() == [2**63 - 1, -(2**63)]
    cases = [
        (
            "9999999999999999999",
            f"holds the index 9999999999999999999; indices must be at most {2**63 - 1} (int64)",
        ),
        (f"+{2**63}", f"holds the index {2**63}; indices must be at most {2**63 - 1} (int64)"),
        (
            f"-{2**63 + 1}",
            f"holds the index -{2**63 + 1}; indices must be at least {-(2**63)} (int64)",
        ),
        ("7" * 5000, f"holds the index {'7' * 40}... (5000 digits); indices must be at most"),
    ]
    for value, text in cases:
        path = tmp_path / f"big{fmt}"
        path.write_text(f"{head}1\n{value}\n")
        with pytest.raises(ValueError) as e:
            read_index_file(path, "--labeled")
        want = f"--labeled file {str(path)!r}, line {first + 1} {text}"
        assert str(e.value).startswith(want), str(e.value)


def test_a_cut_line_in_a_message_ends_in_an_ellipsis(tmp_path: Path) -> None:
    (tmp_path / "long.txt").write_text("x" * 5000 + "\n")
    with pytest.raises(ValueError) as e:
        read_index_file(tmp_path / "long.txt", "--labeled")
    assert f"line 1: {'x' * 40!r}... is not an integer index" in str(e.value)
    (tmp_path / "short.txt").write_text("x" * 40 + "\n")  # exactly the limit: not cut
    with pytest.raises(ValueError) as e:
        read_index_file(tmp_path / "short.txt", "--labeled")
    assert f"line 1: {'x' * 40!r} is not an integer index" in str(e.value)
    (tmp_path / "head.csv").write_text("Id," + "c" * 100 + "\n1\n")
    with pytest.raises(ValueError) as e:
        read_index_file(tmp_path / "head.csv", "--labeled")
    assert f"got {('Id,' + 'c' * 100)[:60]!r}..." in str(e.value)


@pytest.mark.skipif(not hasattr(os, "mkfifo"), reason="needs named pipes")
def test_commands_refuse_a_pipe_unopened(work: Path) -> None:
    # Each command would wait forever reading a FIFO nobody writes to (run's timeout bounds
    # a regression): the features, a --labeled file and distributed's FEATS.npy.
    os.mkfifo(work / "pipe.npy")
    os.mkfifo(work / "pipe.txt")
    err = one_error_line(run(["select", "pipe.npy", "-m", "3", "-o", "p.npy"], work))
    assert "FEATURES 'pipe.npy' is not a regular file (a pipe, device or socket)" in err
    err = one_error_line(run([*SELECT, "-o", "p.npy", "--labeled", "pipe.txt"], work))
    assert "'pipe.txt' is not a regular file (a pipe, device or socket)" in err
    r = run(["select", "pipe.npy", "-m", "3", "-o", "o.npy"], work, module="usl_fast.distributed")
    assert r.returncode != 0 and "FEATS.npy: not a regular file" in r.stderr, r.stderr
