"""Generation benchmark: `python -m benchmarks.generation [--quick] [--model RUN_OR_CKPT]`,
or `python -m benchmarks.generation --fidelity-data F.h5 --epochs E` (every family, one table).

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

With --fidelity-data (issue 15): every family (FIDELITY_FAMILIES: the unconditional VAE, the cVAE
with its learned p(z|T), the four conditional GANs, the RBM per temperature, the T-conditional
MADE) is trained in this process for the same budget (--epochs over the file's training split,
batch --batch-size, one thread), then one table: training seconds, generator seconds per sample
at batch 1024 at the ladder temperature nearest Tc, physics fidelity (judge.compare.
physics_fidelity on --n-samples generated lattices per temperature against the held-out MCMC
ones; lower is better, ≈ 1 is MCMC's own noise), generated <|m|> at the ends of the ladder
against MCMC's, and the judge's verdicts (biased / ignores T / collapse). The budget is
the same (epochs, batch, data); each family keeps its own learning rate and widths
(FIDELITY_FAMILIES). Not in the table: the AE (no sampling prior of its own) and PixelCNN
(MADE stands for the autoregressive family).
"""

import argparse
import math
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


# family label → (model settings, learning rate); widths sized for L = 8-16 on a CPU
FIDELITY_FAMILIES = {
    "vae (unconditional)": ({"family": "vae", "hidden": [128, 64], "latent_dim": 2}, 3e-3),
    "cvae (learned p(z|T))": ({"family": "cvae", "hidden": [128, 64], "latent_dim": 2}, 3e-3),
    "dcgan": ({"family": "dcgan", "hidden": [128, 64]}, 1e-3),
    "wgan-gp": ({"family": "wgan-gp", "hidden": [128, 64], "n_critic": 1}, 2e-3),
    "infogan": ({"family": "infogan", "hidden": [128, 64]}, 1e-3),
    "acgan (twin)": ({"family": "acgan", "hidden": [128, 64]}, 1e-3),
    "rbm (CD-1, per T)": ({"family": "rbm", "latent_dim": 64, "gibbs_burn_in": 200,
                           "gibbs_thin": 1}, 1e-2),
    "made (T-conditional)": ({"family": "autoregressive", "body": "made", "ar_hidden": [256],
                              "t_conditional": True}, 1e-3),
}


def fidelity_table(path, epochs: int, batch_size: int, n_samples: int, seed: int = 0) -> list:
    """Train every FIDELITY_FAMILIES model on the PT file ``path`` for the same budget and
    judge it there; prints the table and returns its rows (dicts)."""
    from ising_dist.data import batches, make_datasets
    from ising_dist.models import ModelConfig, train_epoch

    sets, fp = make_datasets(path, val_fraction=0.1, test_fraction=0.1)
    ladder, L = fp["temperatures"], fp["L"]
    T_mid = min(ladder, key=lambda t: abs(t - TC))
    print(f"== fidelity after the same budget: {path} (L = {L}, T = "
          f"{', '.join(f'{t:.3f}' for t in ladder)}, {len(sets['train'])} training lattices); "
          f"{epochs} epochs of batch {batch_size}, {n_samples} generated lattices per T; "
          f"s/sample at batch 1024, T = {T_mid:.3f}")
    print(f"{'family':>22} {'train s':>8} {'s/sample':>9} {'fidelity':>9} "
          f"{'<|m|> T_lo gen/mcmc':>20} {'<|m|> T_hi gen/mcmc':>20}  verdicts")
    rows = []
    for name, (settings, lr) in FIDELITY_FAMILIES.items():
        torch.manual_seed(seed)
        model = build_model(ModelConfig(**{"arch": "mlp", "L": L, "ladder": ladder,
                                           **settings}))
        opts = model.configure_optimizers(lr)
        data = batches(sets["train"], batch_size, seed=seed)
        t0 = time.perf_counter()
        for epoch in range(epochs):
            data.set_epoch(epoch)
            train_epoch(model, data, opts, "cpu")
        train_s = time.perf_counter() - t0
        model.eval()
        with torch.no_grad():
            s_gen = per_sample(model, 1024, 1024, T_mid)
        m = driver.evaluate_model(model, path, n_samples, extra={"data": fp}, latent=False,
                                  seed=seed)
        pts = m["per_temperature"]
        ends = [(p["generated"]["abs_m"][0], p["mcmc"]["abs_m"][0]) for p in (pts[0], pts[-1])]
        said = [v.split(":")[0] for v in m["verdicts"]]
        fid = m["fidelity"] if m["fidelity"] is not None else math.inf
        rows.append({"family": name, "train_seconds": train_s, "s_per_sample": s_gen,
                     "fidelity": fid, "abs_m_ends": ends, "verdicts": said})
        print(f"{name:>22} {train_s:8.1f} {s_gen:9.2e} {fid:9.3g} "
              f"{ends[0][0]:11.3f}/{ends[0][1]:.3f} {ends[1][0]:14.3f}/{ends[1][1]:.3f}  "
              f"{', '.join(said) or '-'}", flush=True)
    return rows


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--quick", action="store_true", help="L=16 only, short MCMC runs")
    ap.add_argument("--model", help="a trained run directory or model.pt (its L is used)")
    ap.add_argument("--fidelity-data", metavar="F.h5",
                    help="train every family on this PT file for the same budget and print "
                         "one table (s/sample, physics fidelity); nothing else is measured")
    ap.add_argument("--epochs", type=int, default=10,
                    help="with --fidelity-data: training epochs of every family (default 10)")
    ap.add_argument("--batch-size", type=int, default=64,
                    help="with --fidelity-data: training batch (default 64)")
    ap.add_argument("--n-samples", type=int, default=1000,
                    help="with --fidelity-data: generated lattices per temperature (default "
                         "1000)")
    args = ap.parse_args()
    torch.set_num_threads(1)
    if args.fidelity_data:
        if args.epochs < 1 or args.batch_size < 1 or args.n_samples < 2:
            ap.error("--epochs and --batch-size must be ≥ 1, --n-samples ≥ 2")
        print(f"torch {torch.__version__}, 1 thread")
        fidelity_table(args.fidelity_data, args.epochs, args.batch_size, args.n_samples)
        return
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
