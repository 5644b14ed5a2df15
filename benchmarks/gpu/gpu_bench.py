"""GPU benchmarks (run by check.sh on a GPU machine; NOT YET RUN ON A GPU).

Synthetic ImageNet-scale unit vectors from a 1,000-component mixture. Per size: the kNN
graph (k = 20) by the portable path and by the CUDA kernels against torch's blocked
x @ y.T + topk (a peer that is not exact: the same blocks, no refine), and
select(m = 2,911, defaults="imagenet") by each path, with peak GPU memory beyond the
input. Sizes run in increasing order until the time budget is spent; results go to
<out>/gpu.{json,md}.
"""

import argparse
import json
import os
import time

import torch

import usl_fast


def mixture(n, d, seed=0):
    g = torch.Generator(device="cuda").manual_seed(seed)
    centers = torch.randn(1000, d, device="cuda", generator=g)
    centers /= centers.norm(dim=1, keepdim=True)
    lab = torch.randint(0, 1000, (n,), device="cuda", generator=g)
    x = centers[lab] + (0.5 / d**0.5) * torch.randn(n, d, device="cuda", generator=g)
    return x / x.norm(dim=1, keepdim=True)


def timed(fn, *args, **kw):
    torch.cuda.synchronize()
    base = torch.cuda.memory_allocated()
    torch.cuda.reset_peak_memory_stats()
    t0 = time.perf_counter()
    out = fn(*args, **kw)
    torch.cuda.synchronize()
    return out, time.perf_counter() - t0, (torch.cuda.max_memory_allocated() - base) / 2**30


def torch_knn(x, k, rows=4096):
    out = []
    for r0 in range(0, x.shape[0], rows):
        xr = x[r0 : r0 + rows]
        dist = (xr * xr).sum(1, keepdim=True) + (x * x).sum(1)[None] - 2 * xr @ x.T
        out.append(torch.topk(dist, k, dim=1, largest=False).indices)
    return torch.cat(out)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--budget-s", type=float, default=300)
    ap.add_argument("--out", default="benchmarks/results")
    args = ap.parse_args()
    start = time.perf_counter()
    rows = []
    for n, d in [(100_000, 128), (400_000, 128), (1_281_167, 128), (1_281_167, 512)]:
        if time.perf_counter() - start > args.budget_s:
            break
        x = mixture(n, d)
        row = dict(n=n, d=d, gpu=torch.cuda.get_device_name())
        _, row["torch_knn_s"], row["torch_knn_gib"] = timed(torch_knn, x, 20)
        for backend in ("portable", "cuda"):
            os.environ["USL_FAST_BACKEND"] = backend
            _, s, g = timed(usl_fast.knn, x, 20)
            row[f"{backend}_knn_s"], row[f"{backend}_knn_gib"] = s, g
            if time.perf_counter() - start > args.budget_s:
                break
            _, s, g = timed(usl_fast.select, x, 2911, defaults="imagenet")
            row[f"{backend}_select_s"], row[f"{backend}_select_gib"] = s, g
        rows.append(row)
        print(row, flush=True)
        write(rows, args.out)  # after every size: a run cut short keeps what it measured
        del x
        torch.cuda.empty_cache()
    write(rows, args.out)


def write(rows, out):
    os.makedirs(out, exist_ok=True)
    with open(os.path.join(out, "gpu.json"), "w") as f:
        json.dump(rows, f, indent=1)
    lines = ["# GPU benchmarks (benchmarks/gpu/check.sh)", ""]
    keys = sorted({k for r in rows for k in r})
    lines.append("| " + " | ".join(keys) + " |")
    lines.append("|" + " --- |" * len(keys))
    for r in rows:
        lines.append("| " + " | ".join(str(r.get(k, "")) for k in keys) + " |")
    with open(os.path.join(out, "gpu.md"), "w") as f:
        f.write("\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
