"""torch.load(weights_only=True) could run code from a crafted file up to and including
torch 2.5.1 (CVE-2025-32434). usl_fast loads .pt/.pth feature files and FixMatch
checkpoints that way, so on such a torch it refuses both, in one line saying to upgrade,
before torch.load is called; everything else keeps working there. The old torch is
simulated by setting ``torch.__version__`` (what the check reads)."""

from __future__ import annotations

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from usl_fast import _safe_torch, cli  # noqa: E402


def _main(argv):
    try:
        return cli.main([str(a) for a in argv])
    except SystemExit as exc:
        return int(exc.code)


@pytest.fixture
def old_torch(monkeypatch):
    """torch reports 2.5.1, and torch.load fails the test if it is reached."""
    monkeypatch.setattr(torch, "__version__", "2.5.1+cpu")

    def forbidden(*a, **k):
        raise AssertionError("torch.load called on a torch without the CVE-2025-32434 fix")

    monkeypatch.setattr(torch, "load", forbidden)


def _one_upgrade_line(err: str) -> str:
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    line = lines[0]
    assert line.startswith("usl-fast: error: ") and "traceback" not in err.lower()
    assert "torch >= 2.6" in line and "CVE-2025-32434" in line and "2.5.1+cpu" in line, line
    assert "pip install" in line
    return line


@pytest.mark.parametrize(
    "version, ok",
    [
        ("2.5.1", False),
        ("2.5.1+cu124", False),
        ("2.1.0", False),
        ("1.13.1", False),
        ("not a version", False),
        ("2.6.0", True),
        ("2.6.0+cpu", True),
        ("2.13.0+cpu", True),
        ("3.0.0", True),
        ("10.1", True),
    ],
)
def test_version_check(monkeypatch, version, ok):
    monkeypatch.setattr(torch, "__version__", version)
    if ok:
        _safe_torch.check_torch_load("reading .pt files")
    else:
        with pytest.raises(ImportError, match=r"needs torch >= 2\.6") as e:
            _safe_torch.check_torch_load("reading .pt files")
        assert version in str(e.value) and "\n" not in str(e.value)


@pytest.mark.parametrize("suffix", [".pt", ".pth"])
def test_select_refuses_a_pt_feature_file_on_old_torch(tmp_path, old_torch, capsys, suffix):
    feats = tmp_path / f"f{suffix}"
    feats.write_bytes(b"whatever: never opened by torch")
    code = _main(["select", feats, "-m", 5, "-k", 10, "-o", tmp_path / "p.npy"])
    assert code == 2
    line = _one_upgrade_line(capsys.readouterr().err)
    assert suffix in line
    assert not (tmp_path / "p.npy").exists()


def test_fixmatch_resume_is_refused_on_old_torch_before_any_work(tmp_path, old_torch, capsys):
    ck = tmp_path / "c.pt"
    ck.write_bytes(b"whatever: never opened by torch")
    argv = ["fixmatch", "--dataset", "digits", "--resume", ck, "--out", tmp_path / "run"]
    assert _main(argv + ["--no-progress"]) == 2
    line = _one_upgrade_line(capsys.readouterr().err)
    assert "--resume" in line
    assert not (tmp_path / "run" / "checkpoint.pt").exists()


def test_fixmatch_resume_in_the_library_is_refused_on_old_torch(tmp_path, old_torch):
    from usl_fast.ssl import FixMatch
    from usl_fast.ssl.fixmatch import ImageData

    ck = tmp_path / "c.pt"
    ck.write_bytes(b"whatever")
    x = torch.zeros((4, 1, 8, 8), dtype=torch.uint8)
    y = torch.zeros(4, dtype=torch.int64)
    data = ImageData("fake", x, y, x, y, 2)
    with pytest.raises(ImportError, match=r"needs torch >= 2\.6.*CVE-2025-32434"):
        FixMatch.resume(str(ck), data, device="cpu")


def test_everything_else_works_on_old_torch(tmp_path, old_torch, capsys):
    """.npy features, and writing a FixMatch checkpoint (torch.save), need no torch.load."""
    rng = np.random.default_rng(0)
    x = rng.standard_normal((200, 8)).astype(np.float32)
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    np.save(tmp_path / "f.npy", x)
    argv = ["select", tmp_path / "f.npy", "-m", 5, "-k", 10, "--no-progress"]
    assert _main(argv + ["-o", tmp_path / "p.npy"]) == 0
    assert np.load(tmp_path / "p.npy").shape == (5,)
