"""Neural MCMC cost race: `python -m benchmarks.nmcmc [--quick] [--train-steps N] [--steps N]`.

For L = 16 and 32, at T = Tc and T = 2.6, measured in one run on one core (torch and numba
one thread each):
  1. training: a VAN (PixelCNN, Z2 symmetric; Wu, Wang & Zhang, PRL 122, 080602) trained at
     that (L, T) for --train-steps gradient steps (ising_dist.models.loop); seconds and F_q;
  2. neural MCMC with it as proposal (ising_dist.nmcmc, batches of 1024): acceptance, τ_int of
     the chain (proposals), ESS/n of the importance weights, seconds per proposal;
  3. Metropolis and Wolff on the same L and T (judge.cost.mcmc_cost: native kernels where
     built, one chain, one core): seconds per sweep and τ_int in sweeps;
  4. the cost per effective sample of each (judge.neural_mcmc.cost_rows: nmcmc = s/proposal ×
     max(1, 2τ); MCMC = s/sweep × max(1, 2τ)), the nmcmc one also with training amortised over
     10⁶ effective samples, as a ratio to Wolff's and to the better MCMC, and the break-even
     count of effective samples.
The target (issue 12): at Tc, L = 32, nmcmc's amortised cost per effective sample below
Wolff's. The last line says how far we are.
"""
from __future__ import annotations

import argparse
import math
import time
import warnings

import numba
import torch

from ising_dist import exact, nmcmc
from ising_dist.judge import neural_mcmc
from ising_dist.judge.cost import mcmc_cost
from ising_dist.models import ModelConfig, build_model
from ising_dist.models.loop import train_variational_epoch

AMORTISE = 1_000_000


def train_van(L: int, T: float, steps: int, seed: int = 0):
    """(model, training seconds, F_q per spin of the last epoch) of a VAN at (L, T)."""
    torch.manual_seed(seed)
    per_epoch = 25
    epochs = max(1, steps // per_epoch)
    model = build_model(ModelConfig(family="autoregressive", body="pixelcnn", L=L, z2=True,
                                    objective="variational", temperature=T, ar_channels=16,
                                    ar_blocks=2, van_batch=256, van_steps=per_epoch,
                                    beta_anneal=0.3 * epochs))  # β rises over 30% of training
    opt = model.configure_optimizers(2e-3)
    t0 = time.perf_counter()
    for epoch in range(epochs):
        out = train_variational_epoch(model, opt, epoch, "cpu")
    return model.eval(), time.perf_counter() - t0, out["free_energy"]


def race(L: int, T: float, train_steps: int, steps: int, sweeps: int) -> dict:
    model, train_s, fq = train_van(L, T, train_steps)
    prop = nmcmc.proposal_for(model)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        res = nmcmc.run_chains(prop, [T], steps, batch=1024, burn_in=1024, seed=1)[0]
        judged, = neural_mcmc.judge([res], L)
        mc = mcmc_cost(L, [T], sweeps, seed=0)
    cost, = neural_mcmc.cost_rows([judged], [res["seconds_per_proposal"]], mc, train_s,
                                  AMORTISE)
    return {"L": L, "T": T, "train_s": train_s, "F_q": fq,
            "F_exact": -T * exact.kaufman_log_z(T, L) / L ** 2, "judged": judged,
            "cost": cost, "mc": mc[0]}


def _g(x, digits=3):
    return "—" if x is None else f"{x:.{digits}g}"


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--quick", action="store_true",
                    help="a smoke test: L = 16 only, 50 training steps, 4096 proposals")
    ap.add_argument("--train-steps", type=int, default=200,
                    help="VAN gradient steps per (L, T) (batch 256; default 200)")
    ap.add_argument("--steps", type=int, default=20000,
                    help="recorded nmcmc proposals per (L, T) (default 20000)")
    ap.add_argument("--sweeps", type=int, default=4000,
                    help="Metropolis / Wolff sweeps for τ_int (default 4000)")
    args = ap.parse_args()
    torch.set_num_threads(1)
    numba.set_num_threads(1)
    sizes = (16,) if args.quick else (16, 32)
    train_steps = 50 if args.quick else args.train_steps
    steps = 4096 if args.quick else args.steps
    rows = []
    for L in sizes:
        for T in (exact.TC, 2.6):
            print(f"L={L} T={T:.4f}: training a VAN ({train_steps} steps), then {steps} "
                  f"proposals …", flush=True)
            rows.append(race(L, T, train_steps, steps, args.sweeps))
    print(f"\none core each (torch, numba: 1 thread); nmcmc batches of 1024; training "
          f"amortised over {AMORTISE:.0e} effective samples")
    head = (f"{'L':>3} {'T':>6} {'train s':>8} {'F_q-F':>8} {'accept':>7} {'tau':>7} "
            f"{'ESS/n':>7} {'s/prop':>9} {'nmcmc s/eff':>11} {'+train':>9} "
            f"{'Metro s/eff':>11} {'Wolff s/eff':>11} {'Wolff/nmcmc':>11} {'break-even':>10} "
            f"{'reliable':>8}")
    print(head)
    for r in rows:
        j, c = r["judged"], r["cost"]
        wolff = c["wolff_s_per_effective"]
        amort = c["s_per_effective_amortised"]
        print(f"{r['L']:>3} {r['T']:6.4f} {r['train_s']:8.1f} {r['F_q'] - r['F_exact']:8.4f} "
              f"{j['acceptance']:7.3f} {_g(j['tau_int']):>7} {j['ess_fraction']:7.4f} "
              f"{c['s_per_proposal']:9.2e} {_g(c['s_per_effective']):>11} {_g(amort):>9} "
              f"{_g(c['metropolis_s_per_effective']):>11} {_g(wolff):>11} "
              f"{_g(None if amort is None else wolff / amort):>11} "
              f"{_g(c['break_even_samples']):>10} {str(j['reliable']):>8}")
    target = [r for r in rows if r["L"] == 32 and abs(r["T"] - exact.TC) < 1e-9]
    if target:
        c = target[0]["cost"]
        amort = c["s_per_effective_amortised"]
        if amort is None:
            print("target (L=32, Tc): the chain never moved; no effective sample at all")
        else:
            ratio = amort / c["wolff_s_per_effective"]
            print(f"target (L=32, Tc, training over {AMORTISE:.0e} samples): nmcmc costs "
                  f"{ratio:.3g}× Wolff per effective sample — "
                  + ("target met" if ratio < 1 else f"{ratio:.3g}× too dear; without training "
                     f"{c['s_per_effective'] / c['wolff_s_per_effective']:.3g}×"))
    else:
        print("target (L=32, Tc): not measured (--quick)")


if __name__ == "__main__":
    main()
