"""Generation benchmark: `python -m benchmarks.generation [--quick] [--model RUN_OR_CKPT]`.

The seed's question (000: "a more efficient way to generate configurations"), counted honestly.
Prints, measured in one run on this machine, everything on one core (torch 1 thread, numba 1
thread) unless said otherwise:
  1. generator seconds per sample by batch size (1, 64, 1024) and the batched/unbatched ratio,
     for seed 004's MLP VAE and seed 001's conv VAE (untrained: cost does not depend on the
     weights), or for --model;
  2. MCMC seconds per independent sample, max(1, 2 tau_int) sweeps × seconds per sweep, for
     Metropolis and Wolff at T below, near and above Tc (ising_dist.judge.cost.mcmc_cost);
  3. the ratio best MCMC / generator per T and the break-even sample count
     n* = train_seconds / (t_mcmc − t_gen): with --model its recorded training time, else per
     second of training. "never" when the generator is not cheaper per sample than MCMC.
The generated samples are only as good as the model's physics fidelity (ising_dist.judge);
MCMC's are exact.
"""

import argparse
import time

import torch

from ising_dist.judge import cost, driver
from ising_dist.exact import TC
from ising_dist.models import build_model


def per_sample(model, n, batch, T, reps=3):
    """Shortest of reps timings of n samples drawn in batches of `batch`, per sample."""
    def draw():
        for i in range(0, n, batch):
            model.sample(min(batch, n - i), T if model.cfg.conditional else None)
    draw()
    best = float("inf")
    for _ in range(reps):
        t0 = time.perf_counter()
        draw()
        best = min(best, time.perf_counter() - t0)
    return best / n


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--quick", action="store_true", help="L=16 only, short MCMC runs")
    ap.add_argument("--model", help="a trained run directory or model.pt (its L is used)")
    args = ap.parse_args()
    torch.set_num_threads(1)
    sweeps = 2000 if args.quick else 8000
    temps = [1.8, TC * 1.02, 3.0]
    train_s = None
    if args.model:
        run = driver.load_run(args.model)
        models = {f"{run['model'].cfg.family} (--model)": run["model"]}
        sizes = [run["model"].cfg.L]
        train_s = run["train_seconds"]
    else:
        sizes = [16] if args.quick else [16, 32]
    print(f"torch {torch.__version__}, 1 thread; MCMC one chain on one core; temperatures "
          f"{', '.join(f'{t:.3f}' for t in temps)}\n")
    for L in sizes:
        if not args.model:
            models = {
                "MLP VAE 256-128-64-2 (seed 004)": build_model(
                    {"family": "vae", "arch": "mlp", "L": L, "latent_dim": 2,
                     "hidden": [128, 64]}),
                "conv VAE 64c5-32c3-50 (seed 001)": build_model(
                    {"family": "vae", "arch": "conv", "L": L, "latent_dim": 50,
                     "channels": [64, 32]})}
        print(f"== L = {L}")
        print("1. generator seconds per sample by batch size")
        print(f"{'model':>34} {'batch 1':>10} {'batch 64':>10} {'batch 1024':>11} "
              f"{'1/1024':>8}")
        gen = {}
        for name, model in models.items():
            model.eval()
            t = {b: per_sample(model, 1024 if b > 1 else 64, b, temps[1]) for b in (1, 64, 1024)}
            gen[name] = t[1024]
            print(f"{name:>34} {t[1]:10.2e} {t[64]:10.2e} {t[1024]:11.2e} "
                  f"{t[1] / t[1024]:7.0f}x")
        print(f"\n2. MCMC seconds per independent sample ({sweeps} sweeps per T)")
        mc = cost.mcmc_cost(L, temps, sweeps)
        print(f"{'T':>7} {'Metropolis':>11} {'tau':>6} {'Wolff':>10} {'tau':>6}")
        for r in mc:
            tm = max(r["metropolis"]["tau_e"], r["metropolis"]["tau_abs_m"])
            tw = max(r["wolff"]["tau_e"], r["wolff"]["tau_abs_m"])
            print(f"{r['T']:7.3f} {r['metropolis']['s_per_independent']:11.2e} {tm:6.2f} "
                  f"{r['wolff']['s_per_independent']:10.2e} {tw:6.2f}")
        unit = "samples" if train_s else "samples per second of training"
        print(f"\n3. best MCMC / generator (batch 1024) and break-even "
              f"({'training ' + format(train_s, '.3g') + ' s' if train_s else unit})")
        print(f"{'model':>34} {'T':>7} {'best MCMC':>10} {'ratio':>8} {'break-even':>12}")
        for name, tg in gen.items():
            for r in mc:
                best = min(("metropolis", "wolff"), key=lambda a: r[a]["s_per_independent"])
                tb = r[best]["s_per_independent"]
                be = "never" if tb <= tg else f"{(train_s or 1.0) / (tb - tg):.3g}"
                print(f"{name:>34} {r['T']:7.3f} {best:>10} {tb / tg:7.2f}x {be:>12}")
        print()


if __name__ == "__main__":
    main()
