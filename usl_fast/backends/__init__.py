"""Where USL's steps run: the ``Rows`` protocol and its back ends - ``engine`` (the C++
extension, numpy rows), ``portable`` (torch on any device, CUDA kernels handed in) and
``shard`` (rows split across torch.distributed ranks). ``resolve(x)`` chooses between the
single-process ones; ``usl_fast.distributed`` uses ``shard``."""

from ._resolve import ENGINE, Backend, resolve
from ._rows import KMeansResult, Rows

__all__ = ["Backend", "ENGINE", "KMeansResult", "Rows", "resolve"]
