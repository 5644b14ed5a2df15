"""What a new user of ``usl-fast`` reported, one test (or more) per item: the subcommand
list comes from the registered subcommands, parse errors are one line and options are
never abbreviated, ``-o``'s extension sets the format, path errors name the option,
``--help`` shows defaults, the demo says when USL-T is skipped, progress bars start with
a total and name their unit, ``--save-info`` round-trips ``SelectResult``, and the
FixMatch-on-digits lines of docs/fixmatch.md (moved there from README) run as written."""

from __future__ import annotations

import argparse
import dataclasses
import io
import json
import re
import shlex
import sys
import time
from pathlib import Path
from typing import Any, Dict, List

import numpy as np
import pytest

# The CLI suite's sizes, options and runner (its `feats` / `npy` fixtures: conftest.py).
from test_cli import FAST, FAST_KW, D, M, N, run_cli  # noqa: E402,F401

import usl_fast
from usl_fast import _progress, cli

FIXMATCH_DOC = Path(__file__).resolve().parent.parent / "docs" / "fixmatch.md"


def subcommands() -> Dict[str, argparse.ArgumentParser]:
    parser = cli.build_parser()
    (sub,) = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]
    return dict(sub.choices)


def all_parsers() -> List[argparse.ArgumentParser]:
    return [cli.build_parser(), *subcommands().values()]


def tqdm_to(buf: io.StringIO, monkeypatch: pytest.MonkeyPatch) -> List[Dict[str, Any]]:
    """Make every ``from tqdm.auto import tqdm`` draw into ``buf``; returns the kwargs of
    each bar created."""
    import tqdm.auto
    import tqdm.std

    made: List[Dict[str, Any]] = []

    def make(*args: Any, **kwargs: Any) -> Any:
        made.append(kwargs)
        return tqdm.std.tqdm(*args, file=buf, mininterval=0, **kwargs)

    monkeypatch.setattr(tqdm.auto, "tqdm", make)
    return made


def frames(buf: io.StringIO) -> List[str]:
    """The bar states tqdm drew, in order (it rewrites one line with '\\r')."""
    return [f.strip() for f in re.split(r"[\r\n]", buf.getvalue()) if f.strip()]


# ----------------------------------------------- 1. the subcommand list, 4. parsing


def test_help_and_bare_command_list_every_registered_subcommand(
    capsys: pytest.CaptureFixture,
) -> None:
    names = list(subcommands())
    assert {"select", "fixmatch", "demo"} <= set(names)
    code, out, _ = run_cli(["--help"], capsys)
    assert code == 0 and "{" + ",".join(names) + "}" in out
    code, _, err = run_cli([], capsys)
    assert code == 2 and "{" + ",".join(names) + "}" in err


@pytest.mark.parametrize(
    "argv, prog, text",
    [
        (["select", "f.npy"], "usl-fast select", "-m/--budget"),
        (["select", "f.npy", "-m", "ten"], "usl-fast select", "-m/--budget"),
        (["select", "f.npy", "-m", "3", "--kmeans", "3"], "usl-fast select", "--kmeans"),
        (["demo", "--seeds", "0"], "usl-fast demo", "--seeds"),
        (["fixmatch"], "usl-fast fixmatch", "--dataset"),
        (["nope"], "usl-fast", "invalid choice"),
    ],
)
def test_parse_errors_are_one_line_with_a_hint(
    argv: List[str], prog: str, text: str, capsys: pytest.CaptureFixture
) -> None:
    code, out, err = run_cli(argv, capsys)
    assert code == 2 and out == ""
    assert err.endswith("\n") and err.count("\n") == 1, err
    assert err.startswith(f"{prog}: error: ") and text in err
    assert err.rstrip().endswith(f"; see {prog} --help")


def test_no_option_is_abbreviated() -> None:
    for p in all_parsers():
        assert p.allow_abbrev is False, p.prog


def test_double_dash_k_is_exactly_k(
    tmp_path: Path, npy: Path, feats: np.ndarray, capsys: pytest.CaptureFixture
) -> None:
    fast = [o if o != "-k" else "--k" for o in FAST]
    code, _, err = run_cli(["select", npy, "-m", M, "-o", tmp_path / "a.npy", *fast], capsys)
    assert code == 0, err
    np.testing.assert_array_equal(np.load(tmp_path / "a.npy"), usl_fast.select(feats, M, **FAST_KW))


# ------------------------------------------------------------------ 7. defaults shown


def test_help_shows_every_default() -> None:
    for p in all_parsers():
        fmt = p._get_formatter()
        for a in p._actions:
            d = a.default
            if d is None or d is False or d is argparse.SUPPRESS:
                continue
            help_text = fmt._get_help_string(a) % {"default": d}
            assert "default" in help_text, (p.prog, a.dest, help_text)
    text = subcommands()["fixmatch"].format_help()
    assert "[default: fixmatch_run]" in " ".join(text.split())
    assert "[default: 0]" in subcommands()["fixmatch"].format_help()  # --seed 0 too


# ----------------------------------------------------- 5. -o format, 8. CSV columns


def test_output_txt_is_one_index_per_line_in_pick_order(
    tmp_path: Path, npy: Path, feats: np.ndarray, capsys: pytest.CaptureFixture
) -> None:
    out = tmp_path / "picks.txt"
    code, _, err = run_cli(["select", npy, "-m", M, "-o", out, *FAST], capsys)
    assert code == 0, err
    want = usl_fast.select(feats, M, **FAST_KW)
    assert out.read_text() == "".join(f"{int(i)}\n" for i in want)
    np.testing.assert_array_equal(np.loadtxt(out, dtype=np.int64), want)


def test_output_csv_is_the_csv_format(
    tmp_path: Path, npy: Path, capsys: pytest.CaptureFixture
) -> None:
    a, b = tmp_path / "a.csv", tmp_path / "b.csv"
    code, _, err = run_cli(["select", npy, "-m", M, "-o", a, "--csv", b, *FAST], capsys)
    assert code == 0, err
    assert a.read_text() == b.read_text() and a.read_text().startswith("Index\n")
    ids = tmp_path / "ids.txt"
    ids.write_text("".join(f"img{i}\n" for i in range(N)))
    c = tmp_path / "c.csv"
    code, _, err = run_cli(["select", npy, "-m", M, "-o", c, "--image-ids", ids, *FAST], capsys)
    assert code == 0, err
    lines = c.read_text().splitlines()
    assert lines[0] == "Index,ImageID" and all(
        line == f"{line.split(',')[0]},img{line.split(',')[0]}" for line in lines[1:]
    )


@pytest.mark.parametrize(
    "option, name, allowed",
    [
        ("-o", "picks.bin", ".npy"),
        ("-o", "picks", ".txt"),
        ("--csv", "picks.txt", ".csv"),
        ("--complement-csv", "rest.npy", ".csv"),
        ("--save-info", "info.json", ".npz"),
    ],
)
def test_unknown_output_extension_is_refused_before_any_work(
    tmp_path: Path, option: str, name: str, allowed: str, capsys: pytest.CaptureFixture
) -> None:
    # FEATURES does not exist: the extension error must come first.
    argv = ["select", tmp_path / "missing.npy", "-m", M, option, tmp_path / name]
    if option != "-o" and option != "--csv":
        argv += ["-o", tmp_path / "p.npy"]
    code, _, err = run_cli(argv, capsys)
    assert code == 2 and option in err and name in err and allowed in err, err
    assert "FEATURES" not in err and not (tmp_path / name).exists()


# ----------------------------------------------------------------- 12. --save-info


def test_save_info_round_trips_select_result(
    tmp_path: Path, npy: Path, feats: np.ndarray, capsys: pytest.CaptureFixture
) -> None:
    info = tmp_path / "info.npz"
    code, _, err = run_cli(
        ["select", npy, "-m", M, "-o", tmp_path / "p.npy", "--save-info", info, *FAST], capsys
    )
    assert code == 0, err
    want = usl_fast.select(feats, M, return_info=True, **FAST_KW)
    with np.load(info, allow_pickle=False) as z:
        saved = {k: z[k] for k in z.files}
    expected = {f.name for f in dataclasses.fields(want) if getattr(want, f.name) is not None}
    assert set(saved) == expected
    np.testing.assert_array_equal(saved["indices"], want.indices)
    np.testing.assert_array_equal(saved["labels"], want.labels)
    np.testing.assert_array_equal(saved["density"], want.density)
    assert int(saved["n_filled"]) == want.n_filled
    params = json.loads(str(saved["params"]))
    assert params == json.loads(json.dumps(want.params, default=cli._json_default))
    assert set(json.loads(str(saved["timings"]))) == set(want.timings)


def test_save_info_saves_fields_added_later() -> None:
    @dataclasses.dataclass
    class Later:
        indices: Any
        method: str = "usl"
        scores: Any = None
        labeled: Any = None
        extra: Dict[str, Any] = dataclasses.field(default_factory=dict)

    arrays = cli.info_arrays(
        Later(np.arange(3), labeled=np.array([5, 7]), extra={"a": np.float32(1.5)})
    )
    assert set(arrays) == {"indices", "method", "labeled", "extra"}  # None skipped
    assert str(arrays["method"]) == "usl" and arrays["labeled"].tolist() == [5, 7]
    assert json.loads(str(arrays["extra"])) == {"a": 1.5}
    assert all(a.dtype.kind != "O" for a in arrays.values())


def test_save_info_for_another_method(
    tmp_path: Path, npy: Path, feats: np.ndarray, capsys: pytest.CaptureFixture
) -> None:
    info = tmp_path / "i.npz"
    argv = ["select", npy, "-m", M, "-o", tmp_path / "p.npy", "--method", "kcenter", "--seed", 3]
    code, _, err = run_cli(argv + ["--save-info", info, "--no-progress"], capsys)
    assert code == 0, err
    want = usl_fast.select(feats, M, method="kcenter", seed=3, return_info=True)
    with np.load(info, allow_pickle=False) as z:
        assert str(z["method"]) == "kcenter"
        np.testing.assert_array_equal(z["indices"], want.indices)
        np.testing.assert_array_equal(z["scores"], want.scores)
        assert ("labels" in z.files) == (want.labels is not None)


# ---------------------------------------------------------- 6. fixmatch path errors


@pytest.mark.parametrize("option", ["--resume", "--labeled"])
def test_fixmatch_missing_file_names_the_option(
    tmp_path: Path, option: str, capsys: pytest.CaptureFixture
) -> None:
    pytest.importorskip("torch")
    pytest.importorskip("sklearn")
    missing = tmp_path / "missing.pt"
    argv = ["fixmatch", "--dataset", "digits", option, missing, "--out", tmp_path / "run"]
    code, _, err = run_cli(argv, capsys)
    assert code == 2 and err.startswith("usl-fast: error: ")
    assert option in err and str(missing) in err and "no such file" in err
    assert "Errno" not in err and not (tmp_path / "run").exists()


# ------------------------------------------------------------ 2. demo without torch


def test_demo_without_torch_says_uslt_was_skipped(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture
) -> None:
    pytest.importorskip("sklearn")
    monkeypatch.setitem(sys.modules, "torch", None)  # `import torch` raises ImportError
    code, out, err = run_cli(["demo", "--seeds", 1, "--budgets", 10], capsys)
    assert code == 0, err
    lines = out.splitlines()
    assert lines[0].startswith("USL / random picks") and "USL-T" not in lines[0]
    (note,) = [line for line in lines if "USL-T" in line]
    assert "skipped" in note and "PyTorch is not installed" in note
    assert "pip install torch==2.13.0" in note and "usl_fast[torch]" in note
    assert not re.search(r"\| uslt", out)
    # asking for it explicitly is an error naming the option, before any work
    code, out, err = run_cli(["demo", "--seeds", 1, "--methods", "uslt"], capsys)
    assert code == 2 and "--methods uslt" in err and "pip install torch==2.13.0" in err


def test_demo_header_names_the_methods_run(capsys: pytest.CaptureFixture) -> None:
    pytest.importorskip("sklearn")
    code, out, err = run_cli(["demo", "--seeds", 1, "--budgets", 10, "--methods", "random"], capsys)
    assert code == 0, err
    assert out.splitlines()[0].startswith("random picks on scikit-learn digits")
    assert "skipped" not in out


# -------------------------------------------------------------- 9. progress bars


def test_engine_bar_starts_with_total_percentage_and_unit(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    buf = io.StringIO()
    made = tqdm_to(buf, monkeypatch)

    def engine(ctl: np.ndarray) -> str:
        ctl[0] = 2  # work counted before the total is known must not show as "2it"
        time.sleep(0.15)
        ctl[1] = 6
        for _ in range(4):
            time.sleep(0.05)
            ctl[0] += 1
        return "done"

    assert _progress.run(engine, desc="kNN", unit="tile", progress=True) == "done"
    assert len(made) == 1 and made[0]["total"] == 6 and made[0]["unit"].strip() == "tiles"
    shown = frames(buf)
    assert shown[0].startswith("kNN:   0%") and "0/6 tiles" in shown[0]
    assert shown[-1].startswith("kNN: 100%") and "6/6 tiles" in shown[-1]
    assert not any(re.search(r"\d+(it|tile)\b", f) for f in shown)


def test_engine_bar_never_ends_past_its_total(monkeypatch: pytest.MonkeyPatch) -> None:
    buf = io.StringIO()
    tqdm_to(buf, monkeypatch)

    def engine(ctl: np.ndarray) -> None:
        ctl[1], ctl[0] = 3, 5  # an engine that counts more than it announced

    _progress.run(engine, desc="x", progress=True)
    assert "5/5 tiles" in frames(buf)[-1] and "100%" in frames(buf)[-1]


def test_knn_bar_shows_total_from_its_first_frame(monkeypatch: pytest.MonkeyPatch) -> None:
    buf = io.StringIO()
    made = tqdm_to(buf, monkeypatch)
    x = np.random.default_rng(1).standard_normal((700, 8)).astype(np.float32)
    usl_fast.knn(x, 5, progress=True)
    assert made and made[0]["total"] > 0
    first, last = frames(buf)[0], frames(buf)[-1]
    assert re.search(r"0/\d+ tiles", first), first
    total = made[0]["total"]
    assert "100%" in last and re.search(r"(\d+)/\1 tiles", last), last
    assert total <= int(re.search(r"/(\d+) tiles", last).group(1))


# ------------------------------------------------------------------ 10. USL-T bar


def test_uslt_bar_names_its_figures_and_pluralises(
    monkeypatch: pytest.MonkeyPatch, feats: np.ndarray
) -> None:
    uslt = pytest.importorskip("usl_fast.uslt")
    for epochs, unit in [(1, "1/1 epoch "), (2, "2/2 epochs ")]:
        buf = io.StringIO()
        tqdm_to(buf, monkeypatch)
        uslt.USLT(6, epochs=epochs, batch_size=64, n_neighbors=10, progress=True).fit(feats)
        bars = [f for f in frames(buf) if f.startswith("USL-T training")]
        last = bars[-1]
        assert unit in last, last
        assert re.search(r"loss \d+\.\d{3}, \d+% confident \(p > 0\.95\), clusters used \d/6", last)
        assert "conf=" not in last and "used=" not in last
    doc = uslt.USLT.__doc__
    assert "confident" in doc and "clusters used" in doc


# ------------------------------------------ 11. docs/fixmatch.md's FixMatch on digits


def readme_digits_lines() -> List[str]:
    text = FIXMATCH_DOC.read_text(encoding="utf-8")
    blocks = re.findall(r"```bash\n(.*?)```", text, flags=re.S)
    (block,) = [b for b in blocks if "--dataset digits" in b]
    return [line for line in block.splitlines() if line.strip()]


def test_readme_fixmatch_digits_example_runs(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture
) -> None:
    pytest.importorskip("torch")
    pytest.importorskip("sklearn")
    monkeypatch.chdir(tmp_path)
    lines = readme_digits_lines()
    assert [shlex.split(line)[0] for line in lines] == ["python", "usl-fast", "usl-fast"]
    for line in lines:
        argv = shlex.split(line)
        if argv[0] == "python":
            assert argv[1] == "-c"
            exec(compile(argv[2], "docs/fixmatch.md", "exec"), {})
            continue
        assert argv[0] == "usl-fast"
        tiny = ["--no-progress"]  # and, for FixMatch, a few small steps
        if argv[1] == "fixmatch":
            tiny += ["--steps", "2", "--eval-every", "2", "--batch-size", "4", "--mu", "2"]
        code, out, err = run_cli(argv[1:] + tiny, capsys)
        assert code == 0, (line, err)
    assert "40 labeled of 1347" in out and "final test accuracy" in out
    from usl_fast.demo import digits_train_features

    np.testing.assert_array_equal(np.load("digits_train.npy"), digits_train_features())


def test_fixmatch_out_of_range_picks_say_which_split(
    tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    pytest.importorskip("torch")
    pytest.importorskip("sklearn")
    picks = tmp_path / "p.npy"
    np.save(picks, np.array([1, 1500]))  # an index into all 1,797 digits
    argv = ["fixmatch", "--dataset", "digits", "--labeled", picks, "--out", tmp_path / "r"]
    code, _, err = run_cli(argv, capsys)
    assert code == 2 and "--labeled" in err and "[0, 1347)" in err
    assert "digits_train_features" in err


# ---------------------------------------------- 13. --method, --labeled, usl-fast plot


def test_method_choices_are_the_methods_select_accepts() -> None:
    choices = cli.method_choices()
    assert choices[0] == "usl" and set(usl_fast.METHODS) <= set(choices)
    doc = re.search(r"method : \{([^}]*)\}", usl_fast.select.__doc__).group(1)
    assert set(re.findall(r'"([a-z]+)"', doc)) == set(choices)
    (method,) = [a for a in subcommands()["select"]._actions if a.dest == "method"]
    assert tuple(method.choices) == choices


@pytest.mark.parametrize(
    "method, opts, kw",
    [
        # -k / --kmeans-iter / --alpha / --n-clusters are also select()'s USL keywords;
        # select passes them on to the methods that take them
        (
            "typiclust",
            ["-k", 10, "--kmeans-iter", 50, "--max-clusters", 50],
            dict(k=10, kmeans_iter=50, max_clusters=50),
        ),
        ("probcover", ["--delta", 0.5], dict(delta=0.5)),
        ("probcover", ["--n-classes", 6, "--alpha", 0.9], dict(n_classes=6, alpha=0.9)),
        ("kcenter", [], {}),
        ("random", [], {}),
        (
            "uslt",
            ["--epochs", 2, "--batch-size", 64, "--n-neighbors", 10, "--n-clusters", 24],
            dict(epochs=2, batch_size=64, n_neighbors=10, n_clusters=24),
        ),
    ],
)
def test_method_and_labeled_equal_the_library(
    tmp_path: Path,
    npy: Path,
    feats: np.ndarray,
    method: str,
    opts: List[Any],
    kw: Dict[str, Any],
    capsys: pytest.CaptureFixture,
) -> None:
    if method == "uslt":
        pytest.importorskip("torch")
    base = ["select", npy, "-m", M, "--method", method, "--seed", 1, "--no-progress", *opts]
    first = tmp_path / "first.txt"
    code, _, err = run_cli(base + ["-o", first], capsys)
    assert code == 0, err
    want = usl_fast.select(feats, M, method=method, seed=1, **kw)
    np.testing.assert_array_equal(np.loadtxt(first, dtype=np.int64), want)
    # a second round from the first round's .txt
    second = tmp_path / "second.npy"
    code, out, err = run_cli(base + ["-o", second, "--labeled", first], capsys)
    assert code == 0, err
    want2 = usl_fast.select(feats, M, method=method, seed=1, labeled=want, **kw)
    np.testing.assert_array_equal(np.load(second), want2)
    assert not set(np.load(second).tolist()) & set(want.tolist())
    assert f"{M} labeled before" in out


def test_usl_later_round_equals_the_library(
    tmp_path: Path, npy: Path, feats: np.ndarray, capsys: pytest.CaptureFixture
) -> None:
    lab = tmp_path / "lab.npy"
    np.save(lab, np.array([3, 50, 120]))
    out = tmp_path / "p.npy"
    code, _, err = run_cli(["select", npy, "-m", M, "-o", out, "--labeled", lab, *FAST], capsys)
    assert code == 0, err
    want = usl_fast.select(feats, M, labeled=np.array([3, 50, 120]), **FAST_KW)
    np.testing.assert_array_equal(np.load(out), want)


def test_options_a_method_does_not_take_are_errors(
    tmp_path: Path, npy: Path, capsys: pytest.CaptureFixture
) -> None:
    argv = ["select", npy, "-m", M, "-o", tmp_path / "p.npy", "--method", "kcenter"]
    code, _, err = run_cli(argv + ["--rounds", 3, "--delta", 0.5, "--defaults", "cifar100"], capsys)
    assert code == 2 and not (tmp_path / "p.npy").exists()
    assert "--method kcenter does not take --rounds, --delta, --defaults" in err
    assert len(err.strip().splitlines()) == 1


@pytest.mark.parametrize(
    "content, text",
    [
        (None, "no such file"),
        (np.array([0, N]), f"[0, {N})"),
        (np.array([4, 4]), "distinct"),
        (np.array([[1, 2]]), "1-D"),
        (np.array([0.5]), "integer"),
    ],
)
def test_labeled_errors_name_the_option(
    tmp_path: Path, npy: Path, content: Any, text: str, capsys: pytest.CaptureFixture
) -> None:
    lab = tmp_path / "lab.npy"
    if content is not None:
        np.save(lab, content)
    out = tmp_path / "p.npy"
    code, _, err = run_cli(["select", npy, "-m", M, "-o", out, "--labeled", lab, *FAST], capsys)
    assert code == 2 and "--labeled" in err and text in err, err
    assert not out.exists()


def test_plot_writes_a_png(
    tmp_path: Path, npy: Path, feats: np.ndarray, capsys: pytest.CaptureFixture
) -> None:
    pytest.importorskip("matplotlib")
    import matplotlib.image

    picks, lab, info = tmp_path / "p.npy", tmp_path / "lab.npy", tmp_path / "i.npz"
    np.save(lab, np.array([1, 2, 3]))
    code, _, err = run_cli(
        ["select", npy, "-m", M, "-o", picks, "--save-info", info, *FAST], capsys
    )
    assert code == 0, err
    png = tmp_path / "fig.png"
    argv = ["plot", npy, picks, "-o", png, "--labeled", lab, "--info", info, "--seed", 2]
    code, out, err = run_cli(argv, capsys)
    assert code == 0, err
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    img = matplotlib.image.imread(png)
    assert img.ndim == 3 and img.shape[2] in (3, 4) and min(img.shape[:2]) > 100
    assert f"wrote {png}" in out
    # the same figure as the library draws from the same inputs
    from usl_fast.plot import plot_picks

    ref = tmp_path / "ref.png"
    res = usl_fast.select(feats, M, return_info=True, **FAST_KW)
    plot_picks(
        feats,
        np.load(picks),
        labeled=np.array([1, 2, 3]),
        labels=res.labels,
        density=res.density,
        path=ref,
        seed=2,
    )
    assert matplotlib.image.imread(ref).shape == img.shape


@pytest.mark.parametrize(
    "extra, text",
    [
        (["-o", "fig.jpg"], ".png, .pdf, .svg"),
        (["-o", "fig.png", "--projection", "umap"], "--projection"),
        (["-o", "fig.png", "--labeled", "missing.npy"], "--labeled"),
        (["-o", "fig.png", "--info", "i.json"], "--info"),
    ],
)
def test_plot_errors_name_the_argument(
    tmp_path: Path,
    npy: Path,
    monkeypatch: pytest.MonkeyPatch,
    extra: List[str],
    text: str,
    capsys: pytest.CaptureFixture,
) -> None:
    pytest.importorskip("matplotlib")
    monkeypatch.chdir(tmp_path)
    np.save(tmp_path / "p.npy", np.arange(5))
    code, _, err = run_cli(["plot", npy, "p.npy", *extra], capsys)
    assert code == 2 and text in err, err
    assert not (tmp_path / "fig.png").exists() and not (tmp_path / "fig.jpg").exists()


def test_fixmatch_reads_txt_picks_and_help_shows_library_defaults(
    tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    from usl_fast.ssl import read_labeled

    p = tmp_path / "p.txt"
    p.write_text("3\n7\n1\n")
    assert read_labeled(str(p), 10).tolist() == [3, 7, 1]
    p.write_text("3\n3\n")
    with pytest.raises(ValueError, match="repeat"):
        read_labeled(str(p), 10)
    code, out, _ = run_cli(["select", "--help"], capsys)
    flat = " ".join(out.split())
    assert "cifar10 400, cifar100 400, imagenet 20" in flat  # -k's preset values
    assert "most k-means clusters [default: 500]" in flat  # TypiClust's own default
