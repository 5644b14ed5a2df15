"""The reference FixMatch (usl_fast.ssl): a few real steps on tiny data give finite losses,
a mask rate in [0, 1] that follows the threshold, an EMA model that differs from the raw one
and moves by the EMA rule; a checkpoint round-trips and resumes bit for bit; the labeled
batches only ever hold the given indices; the CIFAR reader and the labeled-index files work
and fail with clear messages; the WRN-28-2 is the published network's size."""

from __future__ import annotations

import copy
import pickle
from dataclasses import replace

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from usl_fast.ssl import (  # noqa: E402
    PRESETS,
    FixMatch,
    FixMatchConfig,
    ImageData,
    WideResNet,
    load_cifar,
    read_labeled,
)
from usl_fast.ssl.fixmatch import IndexStream  # noqa: E402

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def fake_data(n=120, classes=4, side=8, channels=1, seed=0, name="fake") -> ImageData:
    """Up to 4 classes of bright patterns on noise - horizontal bar, vertical bar, diagonal,
    checkerboard - that survive the digits augmentations (shifts, small rotations, cutout):
    learnable, tiny."""
    rng = np.random.default_rng(seed)
    y = rng.integers(0, classes, n + 40)
    x = rng.integers(0, 60, (n + 40, channels, side, side)).astype(np.uint8)
    h = side // 2
    pats = np.zeros((4, side, side), bool)
    pats[0, h - 1 : h + 1, :] = True
    pats[1, :, h - 1 : h + 1] = True
    pats[2] = np.eye(side, dtype=bool) | np.eye(side, k=1, dtype=bool)
    pats[3] = np.add.outer(np.arange(side), np.arange(side)) % 2 == 0
    for i, c in enumerate(y):
        x[i][:, pats[c]] = 250
    t = torch.from_numpy
    return ImageData(name, t(x[:n]), t(y[:n]), t(x[n:]), t(y[n:]), classes)


def tiny_config(**kw) -> FixMatchConfig:
    base = replace(PRESETS["digits"], steps=6, batch_size=4, mu=3, eval_every=3, ema=0.9)
    return replace(base, **kw)


def test_steps_are_finite_and_mask_rate_follows_threshold():
    data = fake_data()
    labeled = np.array([0, 5, 9, 17, 33, 40, 41, 90])
    run = FixMatch(data, labeled, tiny_config(), device="cpu")
    for _ in range(3):
        st = run.step()
        assert all(np.isfinite([st.loss, st.loss_x, st.loss_u]))
        assert 0.0 <= st.mask_rate <= 1.0
        assert st.loss == pytest.approx(st.loss_x + 1.0 * st.loss_u, rel=1e-5)
    # threshold 0: every pseudo-label counts; threshold 1: none does (loss_u exactly 0)
    all_in = FixMatch(data, labeled, tiny_config(threshold=0.0), device="cpu").step()
    none_in = FixMatch(data, labeled, tiny_config(threshold=1.0), device="cpu").step()
    assert all_in.mask_rate == 1.0 and all_in.loss_u > 0
    assert none_in.mask_rate == 0.0 and none_in.loss_u == 0.0


def test_lr_schedule_is_fixmatch_cosine():
    run = FixMatch(fake_data(), np.arange(8), tiny_config(steps=100, lr=0.03), device="cpu")
    assert run.lr_at(0) == pytest.approx(0.03)
    assert run.lr_at(50) == pytest.approx(0.03 * np.cos(7 * np.pi * 50 / 1600))
    assert run.lr_at(100) == pytest.approx(0.03 * np.cos(7 * np.pi / 16))
    st = run.step()
    assert st.lr == pytest.approx(0.03)
    assert run.opt.param_groups[0]["lr"] == pytest.approx(0.03)


def test_weight_decay_skips_biases_and_batchnorm():
    run = FixMatch(fake_data(), np.arange(8), tiny_config(weight_decay=5e-4), device="cpu")
    decay, no_decay = run.opt.param_groups
    assert decay["weight_decay"] == 5e-4 and no_decay["weight_decay"] == 0.0
    assert all(p.dim() > 1 for p in decay["params"])
    assert all(p.dim() == 1 for p in no_decay["params"])
    n_params = sum(1 for _ in run.model.parameters())
    assert len(decay["params"]) + len(no_decay["params"]) == n_params


def test_ema_differs_from_raw_and_follows_the_rule():
    data = fake_data()
    run = FixMatch(data, np.arange(10), tiny_config(ema=0.9), device="cpu")
    run.step()
    before = copy.deepcopy(run.ema_model.state_dict())
    run.step()
    raw = dict(run.model.named_parameters())
    for name, p in run.ema_model.named_parameters():
        want = 0.9 * before[name] + 0.1 * raw[name].detach()
        torch.testing.assert_close(p, want)
    diffs = [(p - raw[n]).abs().max().item() for n, p in run.ema_model.named_parameters()]
    assert max(diffs) > 0, "the EMA model must differ from the raw one"
    # BatchNorm running statistics are the live model's
    for (n, b), (_, be) in zip(run.model.named_buffers(), run.ema_model.named_buffers()):
        assert torch.equal(b, be), n
    assert not any(p.requires_grad for p in run.ema_model.parameters())


def test_labeled_batches_hold_only_the_given_indices(monkeypatch):
    data = fake_data()
    labeled = np.array([3, 7, 11])
    run = FixMatch(data, labeled, tiny_config(batch_size=8), device="cpu")
    seen = []
    orig = run.labeled_stream.next

    def spy(size):
        out = orig(size)
        seen.append(out.clone())
        return out

    monkeypatch.setattr(run.labeled_stream, "next", spy)
    for _ in range(4):
        run.step()
    allv = torch.cat(seen)
    assert allv.numel() == 32 and set(allv.tolist()) == {3, 7, 11}
    # evenly repeated: each index once per pass of 3
    counts = np.bincount(allv.numpy(), minlength=12)[[3, 7, 11]]
    assert counts.max() - counts.min() <= 1


def test_index_stream_passes_are_permutations():
    gen = torch.Generator().manual_seed(0)
    s = IndexStream(torch.tensor([5, 6, 7, 8, 9]), gen)
    draws = s.next(15)
    for k in range(3):
        assert sorted(draws[5 * k : 5 * k + 5].tolist()) == [5, 6, 7, 8, 9]


def test_checkpoint_round_trip_and_exact_resume(tmp_path):
    data = fake_data()
    cfg = tiny_config(steps=6, eval_every=3)
    a = FixMatch(data, np.arange(12), cfg, device="cpu")
    ck = tmp_path / "run" / "ckpt.pt"
    a.train(steps=3, log=None, checkpoint=str(ck))
    assert ck.is_file() and a.step_count == 3
    b = FixMatch.resume(str(ck), data, device="cpu")
    assert b.step_count == 3 and b.config == a.config
    assert torch.equal(b.labeled, a.labeled)
    for (n, p), (_, q) in zip(a.model.state_dict().items(), b.model.state_dict().items()):
        assert torch.equal(p, q), n
    for (n, p), (_, q) in zip(a.ema_model.state_dict().items(), b.ema_model.state_dict().items()):
        assert torch.equal(p, q), n
    assert b.history.steps == [3] and b.history.test_acc == a.history.test_acc
    # both continue identically: same batches, augmentations, updates
    a.train(log=None)
    b.train(log=None)
    assert a.step_count == b.step_count == 6
    for (n, p), (_, q) in zip(a.model.state_dict().items(), b.model.state_dict().items()):
        assert torch.equal(p, q), n
    assert a.history.test_acc == b.history.test_acc
    with pytest.raises(ValueError, match="trained on 'fake'"):
        FixMatch.resume(str(ck), fake_data(name="other"), device="cpu")


def test_same_seed_same_run_and_global_rng_untouched():
    data = fake_data()
    torch.manual_seed(123)
    ref = torch.rand(3)
    torch.manual_seed(123)
    a = FixMatch(data, np.arange(8), tiny_config(), device="cpu")
    a.step()
    assert torch.equal(torch.rand(3), ref), "FixMatch must not draw from torch's global RNG"
    b = FixMatch(data, np.arange(8), tiny_config(), device="cpu")
    b.step()
    for p, q in zip(a.model.parameters(), b.model.parameters()):
        assert torch.equal(p, q)


def test_training_learns_the_toy_task():
    data = fake_data(n=200, seed=1)
    for seed in (0, 1):
        cfg = tiny_config(steps=100, batch_size=8, mu=4, eval_every=100, lr=0.05, seed=seed)
        hist = FixMatch(data, np.arange(12), cfg, device="cpu").train(log=None)
        assert hist.steps == [100]
        assert hist.raw_test_acc[-1] >= 0.95 and hist.test_acc[-1] >= 0.95, hist
    # the control: the same run without learning stays far from that
    cfg = tiny_config(steps=100, batch_size=8, mu=4, eval_every=100, lr=0.0)
    hist = FixMatch(data, np.arange(12), cfg, device="cpu").train(log=None)
    assert hist.raw_test_acc[-1] < 0.8, hist


def test_cifar_configuration_steps_on_rgb_32x32():
    """The published CIFAR path (WRN-28-2, flip + translate + RandAugment + Cutout, grey
    fill), two steps on tiny random RGB data: finite losses, the EMA moves."""
    rng = np.random.default_rng(3)
    t = torch.from_numpy
    x = t(rng.integers(0, 256, (24, 3, 32, 32)).astype(np.uint8))
    y = t(rng.integers(0, 10, 24))
    data = ImageData("cifar10", x[:16], y[:16], x[16:], y[16:], 10)
    cfg = replace(PRESETS["cifar10"], batch_size=2, mu=2, steps=4, ema=0.5)
    assert cfg.model == "wrn28-2" and cfg.augment == "cifar" and cfg.threshold == 0.95
    run = FixMatch(data, np.array([1, 5, 9]), cfg, device="cpu")
    assert isinstance(run.model, WideResNet)
    before = [p.clone() for p in run.ema_model.parameters()]
    for _ in range(2):
        st = run.step()
        assert np.isfinite([st.loss, st.loss_x, st.loss_u]).all() and 0 <= st.mask_rate <= 1
    assert any(not torch.equal(a, b) for a, b in zip(before, run.ema_model.parameters()))
    assert 0.0 <= run.evaluate() <= 1.0


def test_wrn28_2_has_the_published_size():
    model = WideResNet(28, 2, 10)
    n = sum(p.numel() for p in model.parameters())
    assert 1.46e6 < n < 1.48e6, n  # FixMatch reports 1.5M parameters
    out = model(torch.rand(2, 3, 32, 32))
    assert out.shape == (2, 10)
    with pytest.raises(ValueError, match="`depth`"):
        WideResNet(27, 2, 10)


def test_config_and_labeled_errors():
    data = fake_data()
    with pytest.raises(ValueError, match="`threshold`"):
        FixMatch(data, np.arange(4), tiny_config(threshold=1.5))
    with pytest.raises(ValueError, match="`steps`"):
        FixMatch(data, np.arange(4), tiny_config(steps=0))
    with pytest.raises(ValueError, match="`model`"):
        FixMatch(data, np.arange(4), tiny_config(model="resnet"))
    with pytest.raises(ValueError, match="`ema`"):
        FixMatch(data, np.arange(4), tiny_config(ema=1.0))
    with pytest.raises(ValueError, match="`labeled`"):
        FixMatch(data, np.array([0, 0]), tiny_config())
    with pytest.raises(ValueError, match="`labeled`"):
        FixMatch(data, np.array([500]), tiny_config())
    with pytest.raises(ValueError, match="`labeled`"):
        FixMatch(data, np.array([0.5]), tiny_config())


def write_cifar10(root, n_per_batch=6):
    base = root / "cifar-10-batches-py"
    base.mkdir(parents=True)
    rng = np.random.default_rng(0)
    for name in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]:
        d = {
            b"data": rng.integers(0, 256, (n_per_batch, 3072)).astype(np.uint8),
            b"labels": rng.integers(0, 10, n_per_batch).tolist(),
        }
        with open(base / name, "wb") as fh:
            pickle.dump(d, fh)
    return base


def test_load_cifar10_python_batches(tmp_path):
    base = write_cifar10(tmp_path)
    data = load_cifar(str(tmp_path), "cifar10")
    assert data.train_x.shape == (30, 3, 32, 32) and data.train_x.dtype == torch.uint8
    assert data.test_x.shape == (6, 3, 32, 32) and data.num_classes == 10
    with open(base / "data_batch_2", "rb") as fh:
        d = pickle.load(fh, encoding="bytes")
    # row-major 3072 = 3 planes of 32 x 32 (R, G, B), batches in order
    np.testing.assert_array_equal(data.train_x[6].numpy().ravel(), d[b"data"][0])
    assert data.train_y[6:12].tolist() == d[b"labels"]


def test_missing_cifar_says_where_to_put_it(tmp_path):
    with pytest.raises(FileNotFoundError, match="never downloads") as e:
        load_cifar(str(tmp_path), "cifar10")
    assert "cifar-10-batches-py" in str(e.value) and "tar -xzf" in str(e.value)
    with pytest.raises(FileNotFoundError, match="cifar-100-python"):
        load_cifar(str(tmp_path), "cifar100")


def test_read_labeled_npy_and_reference_csv(tmp_path):
    import usl_fast
    from usl_fast import cli

    picks = np.array([9, 2, 31], dtype=np.int64)
    np.save(tmp_path / "p.npy", picks)
    np.testing.assert_array_equal(read_labeled(str(tmp_path / "p.npy"), 40), picks)
    # the CSV that `usl-fast select --csv` writes (sorted, with image ids)
    cli.write_index_csv(str(tmp_path / "p.csv"), picks, [f"img{i}" for i in range(40)])
    np.testing.assert_array_equal(read_labeled(str(tmp_path / "p.csv"), 40), np.sort(picks))
    (tmp_path / "bad.csv").write_text("Index,ImageID\n3,a\nx,b\n")
    with pytest.raises(ValueError, match="not an integer"):
        read_labeled(str(tmp_path / "bad.csv"), 40)
    (tmp_path / "nohead.csv").write_text("3,a\n")
    with pytest.raises(ValueError, match="Index,ImageID"):
        read_labeled(str(tmp_path / "nohead.csv"), 40)
    with pytest.raises(ValueError, match=r"\[0, 5\)"):
        read_labeled(str(tmp_path / "p.npy"), 5)
    np.save(tmp_path / "rep.npy", np.array([1, 1]))
    with pytest.raises(ValueError, match="repeat"):
        read_labeled(str(tmp_path / "rep.npy"), 5)
    with pytest.raises(ValueError, match=r"\.npy, \.txt or \.csv"):
        read_labeled(str(tmp_path / "p.dat"), 5)
    assert usl_fast is not None


# --------------------------------------------------------------------------- CLI and harness


def test_cli_fixmatch_digits_trains_checkpoints_and_resumes(tmp_path, capsys):
    pytest.importorskip("sklearn")
    from usl_fast import cli

    picks = tmp_path / "p.npy"
    np.save(picks, np.arange(0, 200, 10))
    out = tmp_path / "run"
    argv = ["fixmatch", "--dataset", "digits", "--labeled", str(picks), "--out", str(out)]
    argv += ["--steps", "4", "--eval-every", "2", "--batch-size", "4", "--mu", "2", "--no-progress"]
    assert cli.main(argv) == 0
    text = capsys.readouterr().out
    assert "20 labeled of 1347" in text and "step 2/4" in text and "step 4/4" in text
    assert "final test accuracy" in text
    assert (out / "checkpoint.pt").is_file() and "step 4/4" in (out / "log.txt").read_text()
    # a second start refuses to overwrite; --resume continues to a later step
    with pytest.raises(SystemExit) as e:
        cli.main(argv)
    assert e.value.code == 2 and "--resume" in capsys.readouterr().err
    ck = str(out / "checkpoint.pt")
    resume = ["fixmatch", "--dataset", "digits", "--resume", ck, "--out", str(out)]
    assert cli.main(resume + ["--steps", "6", "--no-progress"]) == 0
    assert "from step 4" in capsys.readouterr().out
    assert torch.load(ck, weights_only=False)["step"] == 6


def test_cli_fixmatch_errors(tmp_path, capsys):
    from usl_fast import cli

    def fails(argv, text):
        with pytest.raises(SystemExit) as e:
            cli.main(argv)
        err = capsys.readouterr().err
        assert e.value.code == 2 and text in err, err

    fails(["fixmatch", "--dataset", "cifar10", "--labeled", "x.npy"], "--root")
    fails(
        ["fixmatch", "--dataset", "cifar10", "--root", str(tmp_path), "--labeled", "x.npy"],
        "never downloads",
    )
    fails(["fixmatch", "--dataset", "digits", "--out", str(tmp_path / "o")], "--labeled")
    np.save(tmp_path / "big.npy", np.array([5000]))
    fails(
        [
            "fixmatch",
            "--dataset",
            "digits",
            "--labeled",
            str(tmp_path / "big.npy"),
            "--out",
            str(tmp_path / "o2"),
        ],
        "[0, 1347)",
    )


@pytest.mark.slow  # the quality harness end to end: every method, FixMatch training
def test_quality_harness_runs_at_tiny_size(tmp_path):
    """benchmarks/quality/digits_fixmatch.py end to end, every method, a few steps."""
    pytest.importorskip("sklearn")
    import importlib.util
    import json
    import pathlib

    path = (
        pathlib.Path(__file__).resolve().parent.parent
        / "benchmarks"
        / "quality"
        / "digits_fixmatch.py"
    )
    spec = importlib.util.spec_from_file_location("digits_fixmatch", path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    stem = tmp_path / "q"
    argv = ["--budgets", "10", "--seeds", "1", "--steps", "3", "--workers", "1"]
    argv += ["--round2", "20", "--out", str(stem)]
    assert mod.main(argv) == 0
    runs = json.loads(stem.with_suffix(".json").read_text())["runs"]
    first = [r for r in runs if not r["round2"]]
    second = [r for r in runs if r["round2"]]
    assert sorted(r["method"] for r in first) == sorted(mod.METHODS)
    assert sorted(r["method"] for r in second) == sorted(mod.METHODS)
    y = mod.__dict__  # the harness's own helpers, checked against hand cases below
    for r in runs:
        assert len(set(r["picks"])) == r["m"] and 0 <= r["accuracy"] <= 1
        assert 0 <= r["label_spreading"] <= 1
    for r in second:  # 10, then 10 new ones
        assert r["m"] == 20 and not set(r["picks"][:10]) & set(r["picks"][10:])
    strat = next(r for r in first if r["method"] == "stratified")
    assert strat["coverage"] == 10
    md = stem.with_suffix(".md").read_text()
    assert "stratified (uses labels)" in md and "| 10 | usl |" in md and "| 10 + 10 | usl |" in md
    labels = np.repeat(np.arange(10), 5)
    s = y["stratified"](labels, 23, seed=1)
    assert np.bincount(labels[s], minlength=10).tolist() == [3, 3, 3] + [2] * 7


# --------------------------------------------------------------------------- files that run code
# A checkpoint (--resume) and CIFAR's batches (--root) are pickles by format. Each case
# below builds one whose unpickling would create a marker file - through os.system or
# builtins.open - and runs the CLI on it in a process of its own: it must be refused with a
# one-line message and the marker must never appear.


class _RunsCommand:
    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        import os

        return (os.system, (f"touch '{self.marker}'",))


class _OpensFile:
    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        import builtins

        return (builtins.open, (self.marker, "w"))


def _cli(argv, cwd):
    import subprocess
    import sys

    from test_cli import subprocess_env

    return subprocess.run(
        [sys.executable, "-m", "usl_fast", *[str(a) for a in argv]],
        cwd=cwd,
        env=subprocess_env(),
        capture_output=True,
        text=True,
        timeout=300,
    )


@pytest.mark.parametrize("fmt", ["torch-zip", "plain-pickle"])
@pytest.mark.parametrize("payload", [_RunsCommand, _OpensFile])
def test_resume_refuses_a_checkpoint_that_would_run_code(tmp_path, fmt, payload):
    pytest.importorskip("sklearn")
    marker = tmp_path / "MARKER"
    evil = {"config": payload(marker), "step": 3, "weights": torch.zeros(2)}
    ck = tmp_path / "c.pt"
    if fmt == "torch-zip":
        torch.save(evil, ck)
    else:
        with open(ck, "wb") as fh:
            pickle.dump(evil, fh, protocol=2)
    r = _cli(["fixmatch", "--dataset", "digits", "--resume", ck, "--out", "run"], tmp_path)
    assert r.returncode == 2, r.stderr
    lines = r.stderr.splitlines()
    assert len(lines) == 1, r.stderr
    assert str(ck) in lines[0] and "not a checkpoint written by usl-fast fixmatch" in lines[0]
    assert "system" in lines[0] or "open" in lines[0]  # the refused global is named
    assert "weights_only" not in r.stderr
    assert not marker.exists()
    assert not (tmp_path / "run" / "checkpoint.pt").exists()


def test_resume_refuses_files_that_are_not_its_checkpoints(tmp_path):
    data = fake_data()
    torch.save({"weights": torch.zeros(3)}, tmp_path / "other.pt")
    with pytest.raises(ValueError, match=r"other.pt is not a checkpoint .*lacks config"):
        FixMatch.resume(str(tmp_path / "other.pt"), data, device="cpu")
    (tmp_path / "junk.pt").write_bytes(b"\x00garbage" * 10)
    with pytest.raises(ValueError, match=r"junk.pt is not a checkpoint .*not a readable torch"):
        FixMatch.resume(str(tmp_path / "junk.pt"), data, device="cpu")


def test_checkpoint_holds_only_what_weights_only_loading_admits(tmp_path):
    """What save writes loads under weights_only=True (torch's restricted unpickler):
    RNG state, optimizer state, history and config are tensors and plain values."""
    data = fake_data()
    a = FixMatch(data, np.arange(12), tiny_config(), device="cpu")
    a.train(steps=3, log=None, checkpoint=str(tmp_path / "ck.pt"))
    state = torch.load(tmp_path / "ck.pt", map_location="cpu", weights_only=True)
    assert state["step"] == 3 and torch.equal(state["generator"], a.gen.get_state())
    assert state["optimizer"]["state"], "momentum buffers saved"
    assert [p for p in tmp_path.iterdir()] == [tmp_path / "ck.pt"]  # no temporary left


@pytest.mark.parametrize("payload", [_RunsCommand, _OpensFile])
def test_cifar_loader_refuses_a_batch_that_would_run_code(tmp_path, payload):
    base = write_cifar10(tmp_path)
    marker = tmp_path / "MARKER"
    with open(base / "data_batch_3", "wb") as fh:
        pickle.dump({b"data": payload(marker), b"labels": [0]}, fh, protocol=2)
    np.save(tmp_path / "p.npy", np.arange(5))
    argv = ["fixmatch", "--dataset", "cifar10", "--root", tmp_path, "--labeled", "p.npy"]
    r = _cli(argv + ["--out", "run", "--steps", 1, "--no-progress"], tmp_path)
    assert r.returncode == 2, r.stderr
    lines = r.stderr.splitlines()
    assert len(lines) == 1, r.stderr
    assert str(base / "data_batch_3") in lines[0] and "not a CIFAR python batch" in lines[0]
    assert not marker.exists()
    # in-process too: a ValueError, and still no marker
    with pytest.raises(ValueError, match="which CIFAR batches never contain"):
        load_cifar(str(tmp_path), "cifar10")
    assert not marker.exists()


@pytest.mark.parametrize(
    "protocol, numpy_name", [(2, "numpy.core"), (2, "numpy._core"), (4, "numpy._core")]
)
def test_genuine_cifar_batches_still_load(tmp_path, protocol, numpy_name):
    """Batches as the originals hold them (a dict with a b'data' uint8 array, b'labels' a
    list, b'batch_label' and b'filenames' bytes), pickled with protocol 2 like the
    originals and with 4; arrays referred to by numpy 2's module name and by numpy 1's
    (the originals', ``numpy.core.multiarray``)."""
    base = tmp_path / "cifar-10-batches-py"
    base.mkdir()
    rng = np.random.default_rng(1)
    want_x, want_y = [], []
    for name in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]:
        x = rng.integers(0, 256, (4, 3072)).astype(np.uint8)
        y = rng.integers(0, 10, 4).tolist()
        d = {
            b"batch_label": b"training batch",
            b"labels": y,
            b"data": x,
            b"filenames": [b"img_%d.png" % i for i in range(4)],
        }
        blob = pickle.dumps(d, protocol=protocol)
        if numpy_name == "numpy.core":  # protocol 2's GLOBAL is "module\nname\n" text
            blob = blob.replace(b"numpy._core.multiarray\n", b"numpy.core.multiarray\n")
            assert b"numpy.core.multiarray" in blob and b"numpy._core" not in blob
        (base / name).write_bytes(blob)
        want_x.append(x)
        want_y.append(y)
    data = load_cifar(str(tmp_path), "cifar10")
    np.testing.assert_array_equal(
        data.train_x.numpy().reshape(-1, 3072), np.concatenate(want_x[:5])
    )
    assert data.train_y.tolist() == sum(want_y[:5], [])
    np.testing.assert_array_equal(data.test_x.numpy().reshape(-1, 3072), want_x[5])
    assert data.test_y.tolist() == want_y[5]


# --------------------------------------------------------------------------- corrupt CIFAR batches


def py2_style_batch(x: np.ndarray, labels) -> bytes:
    """A CIFAR batch as Python 2's cPickle wrote the originals (protocol 2): str keys and
    data as BINSTRING (bytes under encoding='bytes'), numpy.core's _reconstruct, a dtype
    built as dtype('u1', 0, 1) with state (3, '|', None, None, None, -1, -1, 0)."""
    import struct

    def s(b: bytes) -> bytes:  # SHORT_BINSTRING
        return b"U" + bytes([len(b)]) + b

    def i(v: int) -> bytes:  # BININT1 / BININT2
        return b"K" + bytes([v]) if v < 256 else b"M" + struct.pack("<H", v)

    raw = x.tobytes()
    out = b"\x80\x02}q\x01(" + s(b"batch_label") + s(b"training batch 1 of 5")
    out += s(b"labels") + b"]q\x02(" + b"".join(i(v) for v in labels) + b"e"
    out += s(b"data") + b"cnumpy.core.multiarray\n_reconstruct\nq\x03cnumpy\nndarray\nq\x04"
    out += i(0) + b"\x85" + s(b"b") + b"\x87R("
    out += i(1) + i(x.shape[0]) + i(x.shape[1]) + b"\x86cnumpy\ndtype\nq\x05" + s(b"u1")
    out += i(0) + i(1) + b"\x87R(" + i(3) + s(b"|") + b"NNN" + b"J\xff\xff\xff\xff" * 2
    out += i(0) + b"tb\x89T" + struct.pack("<i", len(raw)) + raw + b"tb"
    out += s(b"filenames") + b"](" + b"".join(s(b"img_%d.png" % k) for k in range(len(x)))
    out += b"eu."
    return out


def fuzz_seeds(tmp_path):
    """One genuine fake batch in each form a CIFAR batch can take: Python 2's (the
    originals), and Python 3's pickle protocols 2, 4 and 5 (5: numpy's _frombuffer)."""
    rng = np.random.default_rng(7)
    x = rng.integers(0, 128, (3, 3072)).astype(np.uint8)  # < 128: same bytes in latin1-utf8
    labels = [3, 0, 9]
    d = {
        b"batch_label": b"training batch 1 of 5",
        b"labels": labels,
        b"data": x,
        b"filenames": [b"img_%d.png" % k for k in range(3)],
    }
    seeds = {"py2": py2_style_batch(x, labels)}
    for protocol in (2, 4, 5):
        seeds[f"protocol{protocol}"] = pickle.dumps(d, protocol=protocol)
    for name, blob in seeds.items():
        (tmp_path / name).write_bytes(blob)
    np.save(tmp_path / "x.npy", x)
    return list(seeds)


_FUZZ_CHILD = r"""
import json, os, random, resource, sys
import numpy as np
from usl_fast.ssl.fixmatch import _read_cifar_batch

d, names, n = sys.argv[1], sys.argv[2].split(","), int(sys.argv[3])
x = np.load(os.path.join(d, "x.npy"))
with open("/proc/self/status") as fh:
    vm = next(int(line.split()[1]) * 1024 for line in fh if line.startswith("VmSize:"))
limit = vm + (1 << 30)  # a huge allocation fails here instead of taking the machine down
resource.setrlimit(resource.RLIMIT_AS, (limit, limit))
rng = random.Random(int(sys.argv[4]))
bad, counts = [], {"loaded": 0, "refused": 0}
path = os.path.join(d, "batch")

def check(blob, what):
    with open(path, "wb") as fh:
        fh.write(blob)
    try:
        got = _read_cifar_batch(path, (b"data", b"labels"), 10)
    except ValueError as exc:
        msg = str(exc)
        if msg.startswith(path + " is not a CIFAR python batch") and "\n" not in msg:
            counts["refused"] += 1
            return
        bad.append((what, "ValueError", msg[:300]))
        return
    except BaseException as exc:
        bad.append((what, type(exc).__name__, str(exc)[:300]))
        return
    data, labels = got.get(b"data"), got.get(b"labels")
    ok = (
        isinstance(got, dict) and type(data) is np.ndarray and data.dtype == np.uint8
        and data.ndim == 2 and data.shape[1] == 3072 and data.flags.c_contiguous
        and len(labels) == len(data) and all(0 <= int(v) < 10 for v in labels)
    )
    if ok:
        counts["loaded"] += 1
    else:
        bad.append((what, "loaded", repr(type(data)) + repr(getattr(data, "shape", None))))

for name in names:
    with open(os.path.join(d, name), "rb") as fh:
        seed = fh.read()
    got = _read_cifar_batch(os.path.join(d, name), (b"data", b"labels"), 10)
    assert np.array_equal(got[b"data"], x) and list(got[b"labels"]) == [3, 0, 9], name
    start = seed.find(x.tobytes())
    structure = [i for i in range(len(seed)) if not (start <= i < start + x.nbytes)]
    for k in range(n):
        blob = bytearray(seed)
        kind = rng.choice(["flip", "flip", "byte", "truncate", "flip+truncate"])
        if "flip" in kind:
            for _ in range(rng.choice([1, 1, 2, 4])):
                i = rng.choice(structure) if rng.random() < 0.9 else rng.randrange(len(blob))
                blob[i] ^= 1 << rng.randrange(8)
        if kind == "byte":
            i = rng.choice(structure)
            blob[i] = rng.choice([0, 1, 0x7F, 0x80, 0xFF, rng.randrange(256)])
        if "truncate" in kind:
            blob = blob[: rng.randrange(len(blob))]
        check(bytes(blob), f"{name} #{k} {kind}")
print(json.dumps({"counts": counts, "bad": bad[:20], "n_bad": len(bad)}))
sys.exit(1 if bad else 0)
"""


def test_fuzzed_cifar_batches_load_or_are_refused_in_one_line(tmp_path):
    """300 random mutations (bit flips, byte changes, truncations, mostly in the pickle's
    structure rather than the pixels) of a genuine fake batch in each of its forms: each
    either loads to a batch of CIFAR's shape or is the loader's own one-line ValueError -
    no numpy internal error (SystemError, RuntimeError), no OverflowError or IndexError, no
    crash. In a child under an address-space limit: a mutated length must not be able to
    allocate the machine's memory."""
    import json
    import subprocess
    import sys

    from test_cli import subprocess_env

    names = fuzz_seeds(tmp_path)
    r = subprocess.run(
        [sys.executable, "-W", "error", "-c", _FUZZ_CHILD, str(tmp_path), ",".join(names)]
        + ["300", "1"],  # mutations per form, random seed
        env=subprocess_env(),
        cwd=tmp_path,  # outside the checkout, whose sources have no compiled engine
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert r.returncode in (0, 1), (r.returncode, r.stderr[-3000:])  # not a signal
    out = json.loads(r.stdout.strip().splitlines()[-1])
    assert out["n_bad"] == 0, out
    assert out["counts"]["refused"] > 0 and out["counts"]["loaded"] > 0, out
    assert r.stderr == ""  # no warning, no "Exception ignored" from a buffer left exported


class _Forged:
    """Pickles as numpy pickles an array, ``_reconstruct(ndarray, (0,), b'b')``, but with
    the given state: what a crafted file can hand to the array's state."""

    def __init__(self, state):
        self.state = state

    def __reduce__(self):
        try:
            from numpy._core.multiarray import _reconstruct
        except ImportError:  # numpy 1.x
            from numpy.core.multiarray import _reconstruct
        return (_reconstruct, (np.ndarray, (0,), b"b"), self.state)


def _batch(data) -> bytes:
    return pickle.dumps({b"data": data, b"labels": [0, 1]}, protocol=2)


@pytest.mark.parametrize(
    "blob, reason",
    [
        (_batch(np.array([1, "a"], dtype=object)), "dtype"),
        (_batch(np.zeros(2, dtype=[("a", "u1")])), "dtype"),
        (_batch(np.zeros(2, dtype=np.float32)), "dtype"),
        (_batch(np.zeros((2, 2, 2), np.uint8)), "1 or 2 dimensions"),
        (_batch(_Forged((1, (2, 3072), np.dtype("u1"), False, b"\0" * 10))), "bytes of data"),
        (_batch(_Forged((1, (2**62, 2**62), np.dtype("u1"), False, b""))), "bytes of data"),
        (_batch(_Forged((1, (-1,), np.dtype("u1"), False, b""))), "1 or 2 dimensions"),
        (_batch(_Forged((1, (3,), np.dtype("u1"), True, b"abc"))), "Fortran"),
        (_batch(_Forged((1, (3,), "u1", False, b"abc"))), "dtype is 'u1'"),
        (_batch(_Forged((1, (3,), np.dtype("u1"), False, [1, 2, 3]))), "not bytes"),
        (b"\x80\x02cnumpy\nndarray\n}b.", "numpy.ndarray itself"),
        (b"\x80\x02}r\xff\xff\xff\x7f.", "memo index"),  # the memo grown to 2**31 slots
        (b"\x80\x04\x8e" + (2**60).to_bytes(8, "little") + b"x.", "bytes"),  # a 2**60 length
        (pickle.dumps(np.zeros(3, np.uint8), protocol=5, buffer_callback=lambda b: False), "band"),
    ],
    ids=[
        "object",
        "structured",
        "float",
        "3-d",
        "short-data",
        "huge-shape",
        "negative-shape",
        "fortran",
        "dtype-not-a-dtype",
        "data-a-list",
        "state-of-ndarray",
        "huge-memo-index",
        "huge-length",
        "out-of-band",
    ],
)
def test_crafted_cifar_batches_are_refused_before_numpy_sees_them(tmp_path, blob, reason):
    """What the stand-ins refuse: anything but a C-ordered plain-integer array of 1 or 2
    dimensions whose data is exactly its shape's length; lengths and memo indices the file
    cannot back. Each one line, naming the file."""
    from usl_fast.ssl.fixmatch import _read_cifar_batch

    path = tmp_path / "data_batch_1"
    path.write_bytes(blob)
    with pytest.raises(ValueError) as e:
        _read_cifar_batch(str(path), (b"data", b"labels"), 10)
    msg = str(e.value)
    assert msg.startswith(f"{path} is not a CIFAR python batch") and "\n" not in msg, msg
    assert reason in msg, msg


def test_labels_outside_the_classes_or_not_one_per_image_are_refused(tmp_path):
    from usl_fast.ssl.fixmatch import _read_cifar_batch

    x = np.zeros((2, 3072), np.uint8)
    cases = [([0, 10], "outside 0..9"), ([0], "list of 2 integer labels"), ([0, "a"], "integer")]
    cases += [(np.array([1, 2], np.int64), None), ([0, 9], None)]
    for labels, reason in cases:
        (tmp_path / "b").write_bytes(pickle.dumps({b"data": x, b"labels": labels}))
        if reason is None:
            got = _read_cifar_batch(str(tmp_path / "b"), (b"data", b"labels"), 10)
            assert list(got[b"labels"]) == list(labels)
            continue
        with pytest.raises(ValueError, match=reason):
            _read_cifar_batch(str(tmp_path / "b"), (b"data", b"labels"), 10)

    # an empty batch, pickled by Python 3 with protocol 2: its data is bytes() and loads
    blob = pickle.dumps({b"data": np.zeros((0, 3072), np.uint8), b"labels": []}, protocol=2)
    assert b"bytes" in blob
    (tmp_path / "b").write_bytes(blob)
    got = _read_cifar_batch(str(tmp_path / "b"), (b"data", b"labels"), 10)
    assert got[b"data"].shape == (0, 3072) and got[b"labels"] == []


def test_cli_corrupt_cifar_batch_is_one_line_exit_2(tmp_path):
    base = write_cifar10(tmp_path)
    blob = (base / "data_batch_2").read_bytes()
    np.save(tmp_path / "p.npy", np.arange(5))
    argv = ["fixmatch", "--dataset", "cifar10", "--root", tmp_path, "--labeled", "p.npy"]
    argv += ["--out", "run", "--steps", 1, "--no-progress"]
    for corrupt in (blob[: len(blob) // 2], blob.replace(b"labels", b"labelz")):
        (base / "data_batch_2").write_bytes(corrupt)
        r = _cli(argv, tmp_path)
        assert r.returncode == 2, r.stderr
        assert len(r.stderr.splitlines()) == 1, r.stderr
        assert f"{base / 'data_batch_2'} is not a CIFAR python batch" in r.stderr


def test_cifar_batch_too_large_for_memory_is_a_memory_error_naming_it(tmp_path, monkeypatch):
    from usl_fast.ssl import fixmatch

    write_cifar10(tmp_path)

    def no_memory(self):
        raise MemoryError

    monkeypatch.setattr(fixmatch._CifarUnpickler, "load", no_memory)
    with pytest.raises(MemoryError, match=r"data_batch_1: not enough memory .* \([\d,]+ bytes\)"):
        load_cifar(str(tmp_path), "cifar10")
