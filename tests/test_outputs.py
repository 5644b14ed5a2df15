"""Output files of every command (usl_fast._io): checked before any work, never written
through a symbolic link (dangling or not), written to a temporary file and renamed, all or
nothing across one command's outputs, errors naming the user's path. Each CLI case runs in
its own process; the failure-injection cases (a writer or a rename that fails) run
in-process, where the failure can be injected."""

from __future__ import annotations

import errno
import os
import subprocess
import sys
from pathlib import Path
from typing import List, Sequence

import numpy as np
import pytest
from test_cli import subprocess_env

from usl_fast import _io, cli

TIMEOUT = 300  # seconds; each check fails before any work, so a run takes ~1-2 s


def run(argv: Sequence[object], cwd: Path, module: str = "usl_fast") -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", module, *[str(a) for a in argv]],
        cwd=cwd,
        env=subprocess_env(),
        capture_output=True,
        text=True,
        timeout=TIMEOUT,
    )


def one_error_line(r: subprocess.CompletedProcess, code: int = 2) -> str:
    """The single stderr line of a run refused before any work: no progress bar, note or
    traceback came before it (select shows progress bars on stderr once work starts)."""
    lines = r.stderr.splitlines()
    assert r.returncode == code, (r.returncode, r.stderr)
    assert len(lines) == 1, r.stderr
    return lines[0]


def entries(d: Path) -> List[str]:
    return sorted(os.listdir(d))


@pytest.fixture
def work(tmp_path: Path) -> Path:
    rng = np.random.default_rng(0)
    x = rng.standard_normal((400, 8)).astype(np.float32)
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    np.save(tmp_path / "f.npy", x)
    np.save(tmp_path / "picks.npy", np.arange(0, 400, 40))
    (tmp_path / "victim.txt").write_text("untouched\n")
    return tmp_path


def plant(link: Path, dangling: bool, work: Path) -> Path:
    """A symbolic link at ``link``: to victim.txt, or to a file that does not exist."""
    target = work / ("nowhere.bin" if dangling else "victim.txt")
    link.symlink_to(target)
    return target


def assert_untouched(link: Path, target: Path, dangling: bool) -> None:
    assert link.is_symlink() and os.readlink(link) == str(target)
    if dangling:
        assert not target.exists()
    else:
        assert target.read_text() == "untouched\n"


# ------------------------------------------------------------------- symbolic links


SELECT_OUTPUTS = [
    ("-o", "p.npy"),
    ("-o", "p.txt"),
    ("--save-info", "i.npz"),
    ("--csv", "p.csv"),
    ("--complement-csv", "c.csv"),
]


@pytest.mark.parametrize("dangling", [True, False], ids=["dangling", "to-a-file"])
@pytest.mark.parametrize("option, name", SELECT_OUTPUTS)
def test_select_refuses_a_link_at_any_output_before_work(work, option, name, dangling):
    link = work / name
    target = plant(link, dangling, work)
    argv = ["select", "f.npy", "-m", 5, "-k", 10, "--force", option, name]
    if option != "-o":
        argv += ["-o", "other.npy"]
    line = one_error_line(run(argv, work))
    assert line.startswith("usl-fast: error: ") and repr(name) in line
    assert "symbolic link" in line and ".tmp" not in line
    assert_untouched(link, target, dangling)
    assert not (work / "other.npy").exists()
    assert not [e for e in entries(work) if e.startswith(".")]  # no temporary left


@pytest.mark.parametrize("dangling", [True, False], ids=["dangling", "to-a-file"])
def test_plot_refuses_a_link_before_work(work, dangling):
    pytest.importorskip("matplotlib")
    link = work / "o.png"
    target = plant(link, dangling, work)
    # FEATURES is not a valid .npy: were the output checked only after loading it, the
    # error would be about FEATURES instead.
    (work / "bad.npy").write_bytes(b"not an array")
    for extra in ([], ["--force"]):
        r = run(["plot", "bad.npy", "picks.npy", "-o", "o.png", *extra], work)
        line = one_error_line(r)
        assert "'o.png'" in line and "symbolic link" in line
        assert_untouched(link, target, dangling)


@pytest.mark.parametrize("dangling", [True, False], ids=["dangling", "to-a-file"])
def test_distributed_select_refuses_a_link_before_work(work, dangling):
    pytest.importorskip("torch")
    link = work / "o.npy"
    target = plant(link, dangling, work)
    for extra in ([], ["--force"]):
        r = run(["select", "f.npy", "-m", 5, "-o", "o.npy", *extra], work, "usl_fast.distributed")
        line = one_error_line(r, code=1)  # the distributed CLI's convention: every rank exits 1
        assert "rank 0: error: -o/--output 'o.npy'" in line and "symbolic link" in line
        assert_untouched(link, target, dangling)


@pytest.mark.parametrize("name", ["log.txt", "checkpoint.pt"])
@pytest.mark.parametrize("dangling", [True, False], ids=["dangling", "to-a-file"])
def test_fixmatch_refuses_a_link_in_out_before_work(work, name, dangling):
    pytest.importorskip("torch")
    pytest.importorskip("sklearn")
    (work / "run").mkdir()
    link = work / "run" / name
    target = plant(link, dangling, work)
    argv = ["fixmatch", "--dataset", "digits", "--labeled", "picks.npy", "--out", "run"]
    r = run(argv + ["--steps", 1, "--no-progress", "--force"], work)
    line = one_error_line(r)
    assert f"'run/{name}'" in line and "symbolic link" in line
    assert "FixMatch on" not in r.stdout  # training never started
    assert_untouched(link, target, dangling)
    assert entries(work / "run") == [name]


@pytest.mark.slow  # a short FixMatch training in a child process (torch import, digits)
def test_fixmatch_checkpoint_never_goes_through_a_link_at_its_old_temporary_name(work):
    """The checkpoint used to be written to OUT/checkpoint.pt.tmp, following a link planted
    there; now the temporary is a fresh exclusive file."""
    pytest.importorskip("torch")
    pytest.importorskip("sklearn")
    (work / "run").mkdir()
    link = work / "run" / "checkpoint.pt.tmp"
    target = plant(link, True, work)
    argv = ["fixmatch", "--dataset", "digits", "--labeled", "picks.npy", "--out", "run"]
    argv += ["--steps", 2, "--eval-every", 1, "--batch-size", 4, "--mu", 2, "--no-progress"]
    r = run(argv, work)
    assert r.returncode == 0, r.stderr
    assert_untouched(link, target, True)
    assert entries(work / "run") == ["checkpoint.pt", "checkpoint.pt.tmp", "log.txt"]
    assert (work / "run" / "checkpoint.pt").is_file()
    assert not (work / "run" / "checkpoint.pt").is_symlink()


# ------------------------------------------------------------------- paths that fail late


@pytest.mark.parametrize(
    "argv, named",
    [
        (["-o", "p.npy", "--save-info", "nodir/../i.npz"], "'nodir/../i.npz'"),
        (["-o", "/proc/p.npy"], "'/proc/p.npy'"),
        (["-o", "p.npy", "--csv", "/proc/p.csv"], "'/proc/p.csv'"),
        (["-o", "f.npy/p.npy"], "'f.npy/p.npy'"),  # the "directory" is a file
        (["-o", "p.npy", "--csv", "sub/"], "'sub/'"),
    ],
    ids=["nodir-dotdot", "proc", "proc-csv", "file-as-dir", "dir-name"],
)
def test_select_paths_that_cannot_be_written_fail_before_work(work, argv, named):
    (work / "sub").mkdir()
    r = run(["select", "f.npy", "-m", 5, "-k", 10, *argv], work)
    line = one_error_line(r)
    assert named in line and ".tmp" not in line and "usl-fast-" not in line
    assert not (work / "p.npy").exists() and not (work / "i.npz").exists()
    assert not [e for e in entries(work) if e.startswith(".")]


@pytest.mark.slow  # two FixMatch command lines, each a child process importing torch
def test_fixmatch_out_that_cannot_be_created_fails_before_work(work):
    pytest.importorskip("torch")
    pytest.importorskip("sklearn")
    argv = ["fixmatch", "--dataset", "digits", "--labeled", "picks.npy", "--steps", 1]
    r = run(argv + ["--out", "/proc/run", "--no-progress"], work)
    line = one_error_line(r)
    assert "--out '/proc/run'" in line and "FixMatch on" not in r.stdout
    r = run(argv + ["--out", "f.npy/run", "--no-progress"], work)
    assert "'f.npy/run'" in one_error_line(r) and "not a directory" in r.stderr


def test_plot_and_distributed_paths_that_cannot_be_written_fail_before_work(work):
    pytest.importorskip("matplotlib")
    pytest.importorskip("torch")
    (work / "bad.npy").write_bytes(b"not an array")
    r = run(["plot", "bad.npy", "picks.npy", "-o", "nodir/../o.png"], work)
    assert "'nodir/../o.png'" in one_error_line(r)
    r = run(["select", "f.npy", "-m", 5, "-o", "/proc/o.npy"], work, "usl_fast.distributed")
    assert "'/proc/o.npy'" in one_error_line(r, code=1)


# ------------------------------------------------------------------- all or nothing


def _select_argv(work: Path, *extra: str) -> List[str]:
    return [
        "select",
        str(work / "f.npy"),
        "-m",
        "5",
        "-k",
        "10",
        "--no-progress",
        "-o",
        str(work / "p.npy"),
        "--save-info",
        str(work / "i.npz"),
        "--csv",
        str(work / "p.csv"),
        *extra,
    ]


def _main(argv: Sequence[str]) -> int:
    try:
        return cli.main(argv)
    except SystemExit as exc:
        return int(exc.code)


def test_a_failing_last_writer_leaves_no_output_and_no_temporary(work, monkeypatch, capsys):
    """-o and --save-info are written, then the --csv writer fails (disk full): nothing
    of the three is left, nor any temporary, and the message names --csv's path."""
    before = entries(work)

    def full(*a, **k):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(cli.csv, "writer", full)
    assert _main(_select_argv(work)) == 2
    err = capsys.readouterr().err.strip()
    assert err == f"usl-fast: error: --csv {str(work / 'p.csv')!r}: could not write it " \
        "(No space left on device)"
    assert entries(work) == before


def test_a_failing_rename_undoes_the_earlier_ones(work, monkeypatch, capsys):
    """With --force over existing outputs: the second rename fails; the first output is
    restored to its old content and the new ones are gone, no temporary left."""
    for name in ("p.npy", "i.npz", "p.csv"):
        (work / name).write_text(f"old {name}\n")
    (work / "p.csv").unlink()  # one output that did not exist before
    before = entries(work)
    real = os.replace
    calls = []

    def flaky(src, dst):
        calls.append(dst)
        if len(calls) == 2:
            raise OSError(errno.EIO, "Input/output error")
        return real(src, dst)

    monkeypatch.setattr(_io.os, "replace", flaky)
    assert _main(_select_argv(work, "--force")) == 2
    assert "'" + str(work / "i.npz") + "'" in capsys.readouterr().err
    monkeypatch.setattr(_io.os, "replace", real)
    assert entries(work) == before
    assert (work / "p.npy").read_text() == "old p.npy\n"
    assert (work / "i.npz").read_text() == "old i.npz\n"


def test_all_outputs_written_together_equal_the_library(work, capsys):
    import usl_fast

    assert _main(_select_argv(work)) == 0
    x = np.load(work / "f.npy")
    want = usl_fast.select(x, 5, k=10)
    np.testing.assert_array_equal(np.load(work / "p.npy"), want)
    with np.load(work / "i.npz") as z:
        np.testing.assert_array_equal(z["indices"], want)
    rows = (work / "p.csv").read_text().split()
    assert rows[0] == "Index" and [int(v) for v in rows[1:]] == sorted(want.tolist())
    assert not [e for e in entries(work) if e.startswith(".")]
    mode = (work / "p.npy").stat().st_mode & 0o777
    umask = os.umask(0)
    os.umask(umask)
    assert mode == 0o666 & ~umask  # what open() would give, not mkstemp's 0600


# ------------------------------------------------------------------- the machinery itself


def test_outputs_checks(tmp_path):
    (tmp_path / "d").mkdir()
    (tmp_path / "f").write_text("x")
    os.mkfifo(tmp_path / "fifo")
    outs = _io.Outputs(inputs=[str(tmp_path / "in.npy")])
    cases = [
        (tmp_path / "d", "is a directory"),
        (tmp_path / "fifo", "not a regular file"),
        (tmp_path / "f", "refusing to overwrite existing file"),
        (tmp_path / "no" / "x", "no such directory"),
        (tmp_path / "f" / "x", "is not a directory"),
        (tmp_path / "in.npy", "also an input file"),
        (str(tmp_path) + "/", "names a directory"),
    ]
    for path, msg in cases:
        with pytest.raises(_io.OutputError, match=msg) as e:
            outs.check(path, "--thing")
        assert str(e.value).count("\n") == 0 and "--thing" in str(e.value)
    outs.check(tmp_path / "f", "--thing", force=True)  # replacing a file: with force only
    outs.check(tmp_path / "a.npy", "-o")
    with pytest.raises(_io.OutputError, match="must be distinct"):
        outs.check(tmp_path / "d" / ".." / "a.npy", "--csv")
    with pytest.raises(TypeError, match="--thing must be a str"):
        outs.check(3, "--thing")


def test_a_link_planted_after_the_check_is_still_refused(tmp_path):
    target = tmp_path / "victim"
    with _io.Outputs() as outs:
        outs.check(tmp_path / "o.npy", "-o")
        outs.stage(tmp_path / "o.npy", lambda f: f.write(b"new"))
        (tmp_path / "o.npy").symlink_to(target)
        with pytest.raises(_io.OutputError, match="symbolic link"):
            outs.commit()
    assert not target.exists() and entries(tmp_path) == ["o.npy"]
    # the log file: O_NOFOLLOW, the link is neither followed nor replaced
    with pytest.raises(_io.OutputError, match="symbolic link"):
        _io.open_append(tmp_path / "o.npy", "--out log file")
    assert not target.exists()
    # and FixMatch.save refuses a link at its checkpoint path
    torch = pytest.importorskip("torch")
    with pytest.raises(_io.OutputError, match="symbolic link"):
        _io.write_atomic(tmp_path / "o.npy", lambda f: torch.save({}, f), what="checkpoint")
    assert not target.exists()


def test_an_interrupted_writer_leaves_nothing(tmp_path):
    def interrupted(f):
        f.write(b"partial")
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        with _io.Outputs() as outs:
            outs.check(tmp_path / "a.npy", "-o")
            outs.check(tmp_path / "b.npy", "--csv")
            outs.stage(tmp_path / "a.npy", lambda f: f.write(b"whole"))
            outs.stage(tmp_path / "b.npy", interrupted)
            outs.commit()
    assert entries(tmp_path) == []


def test_plot_library_path_is_written_atomically_and_not_through_a_link(tmp_path):
    pytest.importorskip("matplotlib")
    from usl_fast import plot

    x = np.random.default_rng(1).standard_normal((60, 4)).astype(np.float32)
    link = tmp_path / "fig.svg"
    link.symlink_to(tmp_path / "nowhere.svg")
    with pytest.raises(ValueError, match="symbolic link"):
        plot.plot_picks(x, [1, 2, 3], path=link, k=5)
    assert not (tmp_path / "nowhere.svg").exists()
    link.unlink()
    plot.plot_picks(x, [1, 2, 3], path=tmp_path / "fig.svg", k=5)
    assert (tmp_path / "fig.svg").read_text(encoding="utf-8").startswith("<?xml")
    assert entries(tmp_path) == ["fig.svg"]


# ------------------------------------------------------------------- review fixes


@pytest.mark.parametrize(
    "argv, named",
    [
        # the same string three times: the last writer used to win silently (exit 0, x.csv
        # holding only the complement)
        (["-o", "x.csv", "--csv", "x.csv", "--complement-csv", "x.csv"], ("-o/", "--csv")),
        (["-o", "p.npy", "--csv", "x.csv", "--complement-csv", "x.csv"], ("--csv", "--comp")),
        # different strings, one file: through ./ and through a link to the directory
        (["-o", "p.npy", "--csv", "x.csv", "--complement-csv", "./x.csv"], ("--csv", "--comp")),
        (["-o", "p.npy", "--csv", "x.csv", "--complement-csv", "here/x.csv"], ("--csv", "--comp")),
    ],
    ids=["same-string-x3", "same-string", "dot-slash", "dir-link"],
)
def test_select_refuses_one_file_named_by_two_outputs_before_work(work, argv, named):
    (work / "here").symlink_to(work, target_is_directory=True)
    before = entries(work)
    r = run(["select", "f.npy", "-m", 5, "-k", 10, *argv], work)
    line = one_error_line(r)
    assert "must be distinct" in line and "same file" in line, line
    for what in named:
        assert what in line, line
    assert entries(work) == before  # nothing written, no temporary


@pytest.mark.parametrize("length", [245, 255])
def test_a_long_valid_file_name_is_written(work, length):
    """A basename of 245 or 255 bytes is a valid file name, and check accepts it; the
    temporary beside it (".NAME.<random>.tmp", and ".old" for the undo link of a replaced
    file) must still fit NAME_MAX instead of failing after the work with "File name too
    long"."""
    name = "p" * (length - len(".npy")) + ".npy"
    r = run(["select", "f.npy", "-m", 5, "-k", 10, "--no-progress", "-o", name], work)
    assert r.returncode == 0, r.stderr
    assert np.load(work / name).shape == (5,)
    assert not [e for e in entries(work) if e.startswith(".")]


@pytest.mark.parametrize("stem", ["q" * 251, "\u00e9" * 125], ids=["ascii", "two-byte-utf8"])
def test_a_long_name_replaced_with_force_keeps_its_undo_link(tmp_path, monkeypatch, stem):
    name = tmp_path / (stem + ".npy")  # 255 and 254 bytes
    name.write_bytes(b"old")
    real_link, linked = os.link, []

    def link(src, dst, **kw):
        real_link(src, dst, **kw)  # raises ENAMETOOLONG were the ".old" name too long
        linked.append(dst)

    monkeypatch.setattr(_io.os, "link", link)
    _io.write_atomic(name, lambda f: f.write(b"new"), what="-o", force=True)
    assert name.read_bytes() == b"new" and len(linked) == 1
    assert entries(tmp_path) == [name.name]


_UMASK_CHILD = r"""
import os, sys, threading
os.umask(0o027)
calls = []
real_umask = os.umask
def spy(mask):
    # Setting the process umask, even for an instant, changes the mode of any file another
    # thread creates meanwhile (0o027 -> 0o000 made them 0666/0777).
    calls.append(threading.current_thread().name)
    return real_umask(mask)
os.umask = spy
from usl_fast import cli
code = cli.main(sys.argv[1:])
print("umask calls:", len(calls), file=sys.stderr)
sys.exit(code or (3 if calls else 0))
"""


def test_outputs_get_new_file_modes_without_touching_the_umask(work):
    """Under a umask of 0o027 (set in the child), the outputs are 0o640, as a new file
    from open() would be, and the process umask is never set, not even briefly: library
    paths (plot_picks(path=), FixMatch.save) run inside multi-threaded training processes."""
    (work / "old.csv").write_text("old\n")
    argv = ["select", "f.npy", "-m", 5, "-k", 10, "--no-progress", "-o", "p.npy"]
    argv += ["--save-info", "i.npz", "--csv", "old.csv", "--force"]  # one new, one replaced
    r = subprocess.run(
        [sys.executable, "-c", _UMASK_CHILD, *[str(a) for a in argv]],
        cwd=work,
        env=subprocess_env(),
        capture_output=True,
        text=True,
        timeout=TIMEOUT,
    )
    assert r.returncode == 0, r.stderr
    assert "umask calls: 0" in r.stderr
    for name in ("p.npy", "i.npz", "old.csv"):
        # a replaced file gets a new file's mode too (it is a new file renamed over it)
        assert (work / name).stat().st_mode & 0o777 == 0o640, name


def test_outputs_are_synced_before_their_renames_and_the_directory_after(tmp_path, monkeypatch):
    """Atomic across a crash too: each temporary's data reaches the disk (fsync) before the
    rename that makes it the output, and the directory holding the renames is synced after
    them (else a power cut could leave an empty or missing file under the final name)."""
    events = []
    real_fsync, real_replace = os.fsync, os.replace

    def fsync(fd):
        events.append(("fsync", os.readlink(f"/proc/self/fd/{fd}")))
        return real_fsync(fd)

    def replace(src, dst):
        events.append(("replace", os.fspath(src), os.fspath(dst)))
        return real_replace(src, dst)

    monkeypatch.setattr(_io.os, "fsync", fsync)
    monkeypatch.setattr(_io.os, "replace", replace)
    (tmp_path / "sub").mkdir()
    outs_ = [tmp_path / "a.npy", tmp_path / "sub" / "b.csv"]
    with _io.Outputs() as outs:
        for p in outs_:
            outs.check(p, "-o")
        for p in outs_:
            outs.stage(p, lambda f: f.write(b"data"))
        outs.commit()
    renames = [e for e in events if e[0] == "replace"]
    assert [e[2] for e in renames] == [str(p) for p in outs_]
    first_rename = events.index(renames[0])
    synced_before = {e[1] for e in events[:first_rename] if e[0] == "fsync"}
    assert synced_before == {e[1] for e in renames}  # every temporary, before any rename
    synced_after = {e[1] for e in events[events.index(renames[-1]) :] if e[0] == "fsync"}
    assert synced_after == {str(tmp_path), str(tmp_path / "sub")}
