"""The documented USL-T training step (docs/uslt.md) runs as written: one epoch of the
example on tiny random images gives finite losses, moves the backbone and the heads, and
its logits feed select_confident."""

from __future__ import annotations

import math
import pathlib
import re

import pytest

torch = pytest.importorskip("torch")

DOC = pathlib.Path(__file__).resolve().parent.parent / "docs" / "uslt.md"


def code_blocks(text: str):
    return re.findall(r"```python\n(.*?)```", text, flags=re.S)


def test_training_step_example_runs():
    from usl_fast.uslt import select_confident

    blocks = [b for b in code_blocks(DOC.read_text(encoding="utf-8")) if "def uslt_step" in b]
    assert len(blocks) == 1, "docs/uslt.md must hold exactly one training-step example"
    env: dict = {}
    old = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        # The example seeds torch and builds its own model; keep a copy to compare.
        exec(compile(blocks[0].replace("print(", "(lambda *a: None)("), str(DOC), "exec"), env)
    finally:
        torch.set_num_threads(old)
    parts = env["parts"]
    assert set(parts) == {"global", "local"}
    assert all(math.isfinite(float(v)) for v in parts.values())
    assert float(parts["local"]) > 0.0
    # the prior moved away from uniform and still sums to 1 per head
    prior = env["prior"].prior
    assert prior.shape == (3, 10)
    torch.testing.assert_close(prior.sum(1), torch.ones(3))
    assert not torch.allclose(prior, torch.full_like(prior, 0.1))
    # the logits of every image feed the selection, as the page says
    with torch.no_grad():
        logits = env["head"](env["backbone"](env["images"]))
    res = select_confident(logits, 10)
    assert res.indices.shape == (10,) and len(set(res.indices.tolist())) == 10
    assert res.labels.shape == (256,)
