"""Each CUDA kernel once on small inputs, against the CPU engine (run under
compute-sanitizer by check.sh). Exits non-zero on a mismatch."""

import os

import numpy as np
import torch

os.environ["USL_FAST_BACKEND"] = "cuda"
import usl_fast  # noqa: E402
from usl_fast import _dispatch  # noqa: E402
from usl_fast import backends  # noqa: E402
from usl_fast.backends import portable as P  # noqa: E402

rng = np.random.default_rng(0)
x = rng.standard_normal((600, 37)).astype(np.float32)
x /= np.linalg.norm(x, axis=1, keepdims=True)
t = torch.from_numpy(x).cuda()
# The CUDA kernels as the back-end resolver hands them to the portable path (it is the only
# reader of USL_FAST_BACKEND); None here would silently test torch against the engine.
kernels = backends.resolve(t).kernels
assert kernels is not None, "USL_FAST_BACKEND=cuda: no CUDA kernels resolved"
d0, i0 = usl_fast.knn(x, 9)  # numpy in: the CPU engine
d1, i1 = usl_fast.knn(t, 9)  # exact_gather kernel in the refine step
assert np.array_equal(d1.cpu().numpy(), d0) and np.array_equal(i1.cpu().numpy(), i0)
lab = rng.integers(0, 11, 600)
s0, _ = _dispatch.segment_sum(x, lab.astype(np.int32), 11, 1)
s1, _ = P.segment_sum(t, torch.from_numpy(lab).cuda(), 11, kernels=kernels)  # segment_sum kernel
assert np.array_equal(s1.cpu().numpy(), s0)
picks = x[:25]
tag = np.arange(25, dtype=np.int32)
r0 = _dispatch.regularizer(x, picks, lab.astype(np.int32), tag, 0.5, 4.0, 0, False, 1)
r1 = P.regularizer(
    t,
    torch.from_numpy(picks).cuda(),
    torch.from_numpy(lab).cuda(),
    torch.from_numpy(tag.astype(np.int64)).cuda(),
    0.5,
    4.0,
    0,
    False,
    kernels=kernels,
)  # exact_grid kernel
torch.cuda.synchronize()
assert np.array_equal(r1.cpu().numpy(), r0)
print("kernels: identical to the CPU engine")
