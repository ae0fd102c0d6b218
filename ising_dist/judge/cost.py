"""What an independent sample costs: the generator against Metropolis, Wolff and the file's PT run.

:func:`mcmc_cost`         Metropolis and Wolff on one core, one chain per T: seconds per sweep
                          and tau_int in sweeps (native kernels where built).
:func:`generator_seconds` seconds per generated sample, batched, with a chosen thread count.
:func:`cost_analysis`     seconds per independent sample per T and the break-even counts.
:func:`label_biased`      raw samples that fail the fidelity test get no speed-up (issue 12).
An independent sample costs max(1, 2 tau_int) sweeps (the tau_int convention of
ising_dist.observables: i.i.d. data give tau_int = 0.5). Timings are the shortest of repeated
runs: other processes on the machine only ever add time.
"""
from __future__ import annotations

import math
import time
import warnings
from typing import Optional

import numpy as np
import torch

from .. import engine
from .. import observables as obs
from ..models import generate
from .compare import BIAS_RATIO


def _timed(fn, repeats: int = 3) -> float:
    """Shortest wall time of ``repeats`` calls (other processes only ever add time)."""
    best = math.inf
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t0)
    return best


def mcmc_cost(L: int, temps, sweeps: int = 4000, seed: int = 0) -> list[dict]:
    """Metropolis and Wolff on one core (numba threads = 1), one chain per T: seconds per sweep
    (a Wolff "sweep" is clusters_per_sweep clusters, ≈ N flipped spins) and tau_int of e and |m|
    in sweeps from a ``sweeps``-long run after ``sweeps // 4`` of thermalization (cold start).
    tau_reliable: the run is at least 100 tau long (shorter runs underestimate tau).
    Returns one dict per T: {"T", "metropolis": {"s_per_sweep", "tau_e", "tau_abs_m",
    "s_per_independent", "tau_reliable", "clusters_per_sweep"}, "wolff": {…}}."""
    import numba
    threads = numba.get_num_threads()
    numba.set_num_threads(1)
    try:
        temps = np.asarray(temps, float)
        betas = 1.0 / temps
        N = L * L
        warm = engine.Chains.create(L, seed, [0])
        warm.advance(betas[:1], 2, 0, "metropolis")
        warm.advance(betas[:1], 2, 0, "wolff", n_wolff=1)
        out = [{"T": float(t)} for t in temps]
        for alg in ("metropolis", "wolff"):
            ch = engine.Chains.create(L, seed, np.arange(len(temps)), start="cold")
            n_w = engine.clusters_per_sweep(ch.mean_cluster_size(betas, 200), N) \
                if alg == "wolff" else np.ones(len(temps), np.int64)
            ch.advance(betas, max(50, sweeps // 4), 0, alg, n_wolff=n_w)
            e, m = np.empty((sweeps, len(temps))), np.empty((sweeps, len(temps)))
            for s in range(sweeps):
                ch.advance(betas, 1, sweeps + s, alg, n_wolff=n_w)
                e[s], m[s] = ch.per_spin()
            for k, t in enumerate(temps):
                one = engine.Chains.create(L, seed + 1, [k], start="cold")
                n_t, dt = 16, 0.0
                while dt < 0.02 and n_t < 1 << 22:       # long enough to time reliably
                    n_t *= 2
                    dt = _timed(lambda: one.advance(betas[k:k + 1], n_t, 0, alg,
                                                    n_wolff=n_w[k:k + 1]), 1)
                dt = min(dt, _timed(lambda: one.advance(betas[k:k + 1], n_t, 0, alg,
                                                        n_wolff=n_w[k:k + 1]), 2))
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore", RuntimeWarning)
                    te, ta = obs.tau_int(e[:, k])[0], obs.tau_int(np.abs(m[:, k]))[0]
                tau = max(te, ta)
                out[k][alg] = {"s_per_sweep": dt / n_t, "tau_e": te, "tau_abs_m": ta,
                               "s_per_independent": max(1.0, 2 * tau) * dt / n_t,
                               "tau_reliable": bool(sweeps >= 100 * tau),
                               "clusters_per_sweep": int(n_w[k]) if alg == "wolff" else None}
        return out
    finally:
        numba.set_num_threads(threads)


@torch.no_grad()
def generator_seconds(model, T: float, prior: Optional[str], mode: Optional[str],
                      n: int = 1024, threads: Optional[int] = None) -> float:
    """Wall seconds per sample of ising_dist.models.generate at T in batches of n, with
    ``threads`` torch threads (None: as set); shortest of 3 after a warm-up."""
    old = torch.get_num_threads()
    if threads:
        torch.set_num_threads(threads)
    try:
        generate(model, T, min(n, 64), prior, mode)                    # warm-up
        return _timed(lambda: generate(model, T, n, prior, mode, seed=1)) / n
    finally:
        torch.set_num_threads(old)


def cost_analysis(per_T: list[dict], mc: list[dict], train_seconds: Optional[float],
                  source: str, file_alg: str) -> dict:
    """Seconds per independent sample per T and the break-even sample counts.

    per_T: the driver's per_temperature entries (with "cost": {"s_per_sample_1thread",
    "s_per_sample"}); mc: :func:`mcmc_cost` rows at the same temperatures, same order.
    One core each: the generator with one torch thread, batched; MCMC one chain per core.
    An independent sample costs max(1, 2 tau) sweeps (tau_int convention of observables: i.i.d.
    gives 0.5); tau = max(tau_e, tau_|m|). break_even: samples at that T for which training +
    generating costs as much as the best MCMC (Metropolis or Wolff): train / (t_mcmc − t_gen);
    null when the generator is not cheaper per sample (never breaks even)."""
    rows = []
    for p, c in zip(per_T, mc):
        g = p["cost"]
        best = min(("metropolis", "wolff"), key=lambda a: c[a]["s_per_independent"])
        t_best = c[best]["s_per_independent"]
        row = {"T": p["T"], "generator_s_per_sample": g["s_per_sample_1thread"],
               "generator_s_per_sample_all_threads": g["s_per_sample"],
               "metropolis": c["metropolis"], "wolff": c["wolff"], "best_mcmc": best,
               "speedup_vs_best_mcmc": t_best / g["s_per_sample_1thread"]}
        tau_f = p["mcmc"]["tau_e_sweeps"], p["mcmc"]["tau_abs_m_sweeps"]
        if file_alg in ("metropolis", "wolff") and None not in tau_f:
            tau = max(tau_f)
            row["pt_file"] = {"algorithm": file_alg, "tau_sweeps": tau,
                              "s_per_independent": max(1.0, 2 * tau)
                              * c[file_alg]["s_per_sweep"]}
        gain = t_best - g["s_per_sample_1thread"]
        row["break_even_samples"] = (None if train_seconds is None or gain <= 0
                                     else train_seconds / gain)
        rows.append(row)
    gain = sum(r[r["best_mcmc"]]["s_per_independent"] - r["generator_s_per_sample"]
               for r in rows)
    return {"train_seconds": train_seconds, "train_seconds_source": source,
            "per_temperature": rows,
            "break_even_samples_every_T": (None if train_seconds is None or gain <= 0
                                           else train_seconds / gain),
            "note": "seconds on one core (shortest of repeated timings); an independent sample "
                    "= max(1, 2 tau_int) sweeps; the file's tau is resolved only down to its "
                    "sample spacing; thermalization, prior fitting and I/O are not counted; "
                    "break-even "
                    "includes the training time and compares with the better of Metropolis "
                    "and Wolff"}


def label_biased(metrics: dict, ratio: float = BIAS_RATIO) -> None:
    """In the cost table (metrics["cost"]), mark the temperatures whose raw generated samples
    fail the fidelity test (W1 of e or |m| above ``ratio`` noise floors, compare.verdicts'
    "biased") as biased and drop their speed-up and break-even figures: a wrong sample has no
    price. The every-T break-even is dropped when any T is biased. Modifies metrics in place."""
    cost = metrics.get("cost", {})
    if "per_temperature" not in cost:
        return
    by_T = {p["T"]: p for p in metrics["per_temperature"]}
    any_biased = False
    for row in cost["per_temperature"]:
        p = by_T.get(row["T"], {})
        worst = max((p.get(k) if p.get(k) is not None else math.inf)
                    for k in ("w1_e_over_floor", "w1_abs_m_over_floor"))
        row["biased"] = bool(worst > ratio)
        if row["biased"]:
            any_biased = True
            row["speedup_vs_best_mcmc"] = None
            row["break_even_samples"] = None
    if any_biased:
        cost["break_even_samples_every_T"] = None
    cost["bias_rule"] = (f"raw samples with W1(e) or W1(|m|) above {ratio:g} noise floors are "
                         f"biased: no speed-up or break-even figure")
