"""Autoregressive sampler benchmark: `python -m benchmarks.autoregressive [--quick]`.

Seconds per sample of ``model.sample`` (family "autoregressive", untrained: the cost does not
depend on the weights), torch with one thread, for PixelCNN and MADE at L = 16 and 32, against
the baseline measured in the same run: the textbook sampler that runs the whole network on the
whole lattice once per site (N = L² full forward passes over the batch). The baseline's steps
all cost the same, so it is timed on its first ``--naive-sites`` sites and scaled by N / sites.
Printed: both figures and their ratio (baseline / incremental), and the arithmetic of each.
"""
from __future__ import annotations

import argparse
import time

import torch
import torch.nn.functional as F

from ising_dist.models import build_model

SIZES = {"pixelcnn": {"ar_channels": 32, "ar_blocks": 3, "ar_kernel": 3},
         "made": {"ar_hidden": [512]}}


@torch.no_grad()
def naive_seconds_per_sample(model, n: int, sites: int) -> float:
    """Seconds per sample of the full-forward sampler (logits of the whole lattice at every
    site, one site drawn per pass), timed on the first ``sites`` sites, scaled to N."""
    L = model.cfg.L
    x = torch.zeros(n, L, L)
    t0 = time.perf_counter()
    for i in range(sites):
        r, c = divmod(i, L)
        logit = model.logits(x)[:, r, c]
        x[:, r, c] = torch.where(torch.rand(n) < torch.sigmoid(logit), 1.0, -1.0)
        F.logsigmoid(x[:, r, c] * logit)
    return (time.perf_counter() - t0) * (L * L / sites) / n


def incremental_seconds_per_sample(model, n: int, reps: int) -> float:
    model.sample(min(n, 16))                                  # warm-up
    best = float("inf")
    for _ in range(reps):
        t0 = time.perf_counter()
        model.sample(n)
        best = min(best, time.perf_counter() - t0)
    return best / n


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--quick", action="store_true", help="L = 16 only")
    ap.add_argument("--batch", type=int, default=1024, help="samples per sample() call")
    ap.add_argument("--naive-sites", type=int, default=16)
    ap.add_argument("--reps", type=int, default=3)
    args = ap.parse_args(argv)
    torch.set_num_threads(1)
    torch.manual_seed(0)
    print(f"torch {torch.__version__}, 1 thread, batch {args.batch}; seconds per sample "
          f"(shortest of {args.reps}); baseline = full network pass per site")
    print(f"{'body':9} {'L':>3} {'params':>8} {'baseline s':>11} {'incremental s':>14} "
          f"{'ratio':>7}")
    for L in ([16] if args.quick else [16, 32]):
        for body, sizes in SIZES.items():
            model = build_model({"family": "autoregressive", "L": L, "body": body, **sizes})
            model.eval()
            n_params = sum(p.numel() for p in model.parameters())
            naive = naive_seconds_per_sample(model, min(args.batch, 256), args.naive_sites)
            fast = incremental_seconds_per_sample(model, args.batch, args.reps)
            print(f"{body:9} {L:3d} {n_params:8d} {naive:11.3e} {fast:14.3e} "
                  f"{naive / fast:6.0f}×", flush=True)


if __name__ == "__main__":
    main()
