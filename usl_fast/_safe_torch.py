"""The oldest torch whose ``torch.load(weights_only=True)`` usl_fast relies on.

Up to and including torch 2.5.1, a crafted file could run code through
``torch.load(weights_only=True)`` (CVE-2025-32434; fixed in 2.6.0). usl_fast loads .pt/.pth
feature files and FixMatch checkpoints that way, trusting it not to run anything, so on an
older torch it refuses to load them at all. Nothing else in usl_fast calls ``torch.load``,
so everything else keeps working on older torch.
"""

from __future__ import annotations

import re
from typing import Optional, Tuple

__all__ = ["MIN_TORCH_LOAD", "check_torch_load"]

#: (major, minor) of the first torch release with the fix.
MIN_TORCH_LOAD = (2, 6)


def _major_minor(version: str) -> Optional[Tuple[int, int]]:
    # "2.6.0", "2.13.0+cpu", "2.6.0a0+git1234": the release's major.minor leads. A 2.6
    # pre-release counts as 2.6 (the fix went in before 2.6.0 was cut).
    m = re.match(r"\s*(\d+)\.(\d+)", version)
    return (int(m.group(1)), int(m.group(2))) if m else None


def check_torch_load(what: str) -> None:
    """Raise unless the installed torch's ``torch.load(weights_only=True)`` is safe.

    Parameters
    ----------
    what : str
        What needs it, for the message ("reading .pt files", "--resume").

    Raises
    ------
    ImportError
        torch older than 2.6 (or a version that cannot be read): one line saying to
        upgrade. An ImportError like a missing optional dependency: the fix is to install.
    """
    import torch

    version = str(torch.__version__)
    got = _major_minor(version)
    if got is None or got < MIN_TORCH_LOAD:
        need = ".".join(map(str, MIN_TORCH_LOAD))
        raise ImportError(
            f"{what} needs torch >= {need}: up to torch 2.5.1, torch.load(weights_only=True) "
            f"can run code from a crafted file (CVE-2025-32434), and this is torch {version}; "
            f"upgrade it: pip install -U 'torch>={need}'"
        )
