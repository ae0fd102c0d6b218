"""Neural MCMC judged by physics, and priced per effective sample (issue 12).

Used by the judge's driver (the ``nmcmc`` section of ``python -m ising_dist.evaluate``) and by
``python -m benchmarks.nmcmc``; its tables and picture are drawn by ising_dist.judge.report.

Judging (:func:`judge`), per temperature T of an nmcmc run (ising_dist.nmcmc):
  chain        acceptance, τ_int (in proposals), ESS/n of the importance weights, and the
               corrected observables ⟨e⟩, ⟨|m|⟩, C = N Var(e)/T², χ = N Var(|m|)/T of the MH
               chain, with blocked-jackknife errors sized by τ_int (observables.thermo).
  against      exact: Kaufman's finite-L ⟨e⟩ and C (Phys. Rev. 76, 1232 (1949)) and free
               energy F = −T ln Z / N; MCMC: the held-out samples of the run file, where the
               temperature is on its ladder. z = (a − b)/√(σ_a² + σ_b²).
  reliable     false when the chain never moved, is shorter than MIN_TAUS (30) τ_int, or its
               proposals' importance weights have an ESS below MIN_ESS (100): the error bars
               are then not to be trusted. The ESS guard is there because a short chain of a
               poor proposal sticks to a few heavy-weight states for stretches longer than its
               τ_int estimate sees (the independence sampler converges at the rate set by the
               largest weight, Liu, Stat. Comput. 6, 113 (1996)); the same heavy weights make
               the delta-method error of ln Z too small.

Cost per effective sample (:func:`cost_rows`), one core each, in seconds:
  neural MCMC  s_prop × max(1, 2 τ_int) (the chain; an effective sample is 2τ proposals, as in
               observables.tau_int's convention) and s_prop × n/ESS (importance sampling), s_prop
               = seconds per proposal with one torch thread, batched (draw, ln q, energy, MH
               step); "amortised" adds training seconds / ``amortise`` (a stated sample count).
  MCMC         Metropolis and Wolff as measured in the same run by judge.cost.mcmc_cost (native
               kernels where built, one core): s_sweep × max(1, 2 τ_int) in sweeps.
  break-even   effective samples at T from which training + sampling by neural MCMC costs less
               than the better MCMC: train / (c_mcmc − c_nmcmc); None (never) when c_nmcmc ≥
               c_mcmc.
(Raw generated samples that fail the fidelity test get no speed-up either: judge.cost.)

Device: proposals are drawn on the model's device (the driver's ``device``; nmcmc.run_chains
puts the chains' torch generators there), so on a GPU s_prop is the GPU's seconds per proposal
and the chains differ from a cpu run's of the same seed, with the same physics.
"""
from __future__ import annotations

import math
import time
import warnings
from pathlib import Path
from typing import Callable, Optional

import torch

from .. import exact, nmcmc
from .. import observables as obs
from .compare import finite, same_temperature, z_score

AMORTISE = 1_000_000      # effective samples over which training time is spread
MIN_TAUS = 30             # a chain shorter than this many τ_int has no trustworthy error bar
MIN_ESS = 100             # … nor one whose proposals' importance weights have a smaller ESS
KEYS = ("e", "abs_m", "C", "chi")


def judge(results: list[dict], L: int, mcmc: Optional[dict] = None) -> list[dict]:
    """Per temperature of ``results`` (nmcmc.run_chains or nmcmc.read_results rows): the chain's
    observables against exact and MCMC (see the module doc).

    mcmc: {T: {"e": [mean, err], "abs_m", "C", "chi"}} of the held-out MCMC samples (the
    driver's per_temperature[i]["mcmc"]), matched by T (relative 1e-6); missing ones compare with
    exact only. Returns dicts {"T", "n", "acceptance", "tau_int", "ess_fraction", "reliable",
    "chain": {key: [mean, err]}, "exact": {"e", "C", "free_energy"}, "mcmc": {…} | None,
    "z_exact": {"e", "C", "free_energy"}, "z_mcmc": {key} | None, "free_energy": [F, err],
    "max_abs_z"}."""
    out = []
    for r in results:
        T, n, tau = r["T"], len(r["e"]), r["tau_int"]
        reliable = bool(math.isfinite(tau) and n >= MIN_TAUS * tau
                        and r["ess_fraction"] * n >= MIN_ESS)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)
            th = obs.thermo(r["e"], r["m"], T, L, tau=tau if math.isfinite(tau) else n)
        chain = {k: [finite(th[k][0]), finite(th[k][1])] for k in KEYS}
        ex = {"e": float(exact.kaufman_energy(T, L)), "C": float(exact.kaufman_specific_heat(T, L)),
              "free_energy": r["free_energy_exact"]}
        F = [r["free_energy"], r["free_energy_error"]]
        z_exact = {"e": z_score(chain["e"], [ex["e"], 0.0]),
                   "C": z_score(chain["C"], [ex["C"], 0.0]),
                   "free_energy": z_score(F, [ex["free_energy"], 0.0])}
        ref = None
        for t, v in (mcmc or {}).items():
            if same_temperature(t, T):
                ref = {k: v[k] for k in KEYS}
        z_mcmc = None if ref is None else {k: z_score(chain[k], ref[k]) for k in KEYS}
        zs = [abs(z) for z in list(z_exact.values()) + list((z_mcmc or {}).values())
              if z is not None]
        out.append({"T": T, "n": n, "acceptance": r["acceptance"], "tau_int": finite(tau),
                    "tau_int_error": finite(r["tau_int_error"]),
                    "ess_fraction": r["ess_fraction"], "reliable": reliable,
                    "chain": chain, "exact": ex, "mcmc": ref, "z_exact": z_exact,
                    "z_mcmc": z_mcmc, "free_energy": F,
                    "max_abs_z": max(zs) if zs else None})
    return out


@torch.no_grad()
def proposal_seconds(proposal, T: float, n: int = 1024, threads: int = 1,
                     repeats: int = 3) -> float:
    """Seconds per proposal of one batch of n at T with ``threads`` torch threads: draw, ln q,
    energy and the MH step (shortest of ``repeats`` after a warm-up; other processes on the
    machine only ever add time)."""
    old = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        nmcmc.run_chains(proposal, [T], min(n, 64), batch=n, burn_in=0)     # warm-up
        best = math.inf
        for i in range(repeats):
            t0 = time.perf_counter()
            nmcmc.run_chains(proposal, [T], n, batch=n, burn_in=0, seed=i + 1)
            best = min(best, time.perf_counter() - t0)
        return best / n
    finally:
        torch.set_num_threads(old)


def cost_rows(judged: list[dict], s_per_proposal: list[float], mc: list[dict],
              train_seconds: Optional[float], amortise: int = AMORTISE) -> list[dict]:
    """Cost per effective sample per temperature (see the module doc). mc: rows of
    judge.cost.mcmc_cost at the same temperatures, same order. Seconds; None where undefined
    (a chain that never moved has no effective sample)."""
    rows = []
    for j, s, c in zip(judged, s_per_proposal, mc):
        tau = j["tau_int"]
        per_eff = None if tau is None else s * max(1.0, 2 * tau)
        per_eff_is = s / j["ess_fraction"] if j["ess_fraction"] > 0 else None
        best = min(("metropolis", "wolff"), key=lambda a: c[a]["s_per_independent"])
        t_best = c[best]["s_per_independent"]
        amort = None if per_eff is None or train_seconds is None else \
            per_eff + train_seconds / amortise
        gain = None if per_eff is None else t_best - per_eff
        rows.append({
            "T": j["T"], "s_per_proposal": s,
            "proposals_per_effective": None if tau is None else max(1.0, 2 * tau),
            "s_per_effective": per_eff, "s_per_effective_importance": per_eff_is,
            "s_per_effective_amortised": amort, "amortise_samples": amortise,
            "metropolis_s_per_effective": c["metropolis"]["s_per_independent"],
            "wolff_s_per_effective": c["wolff"]["s_per_independent"],
            "metropolis_tau_sweeps": max(c["metropolis"]["tau_e"], c["metropolis"]["tau_abs_m"]),
            "wolff_tau_sweeps": max(c["wolff"]["tau_e"], c["wolff"]["tau_abs_m"]),
            "best_mcmc": best,
            "speedup_vs_best_mcmc": None if per_eff is None else t_best / per_eff,
            "speedup_vs_best_mcmc_amortised": None if amort is None else t_best / amort,
            "break_even_samples": (None if gain is None or gain <= 0 or train_seconds is None
                                   else train_seconds / gain)})
    return rows


def evaluate_nmcmc(model, metrics: dict, nmcmc_file=None, steps: int = 0, k: int = 4,
                   seed: int = 0, mc: Optional[list[dict]] = None,
                   train_seconds: Optional[float] = None, amortise: int = AMORTISE,
                   progress: Optional[Callable[[str], None]] = None) -> dict:
    """The "nmcmc" section of the judge's metrics: chains from ``nmcmc_file`` (written by
    python -m ising_dist.nmcmc) or run here (``steps`` recorded proposals at each evaluated
    temperature), judged against exact and the MCMC of ``metrics["per_temperature"]``, and
    priced against ``mc`` (judge.cost.mcmc_cost rows at the same temperatures; no cost without
    them). Models without a likelihood get {"skipped": why}."""
    say = progress or (lambda s: None)
    L = metrics["L"]
    try:
        proposal = nmcmc.proposal_for(model, k)
    except nmcmc.NMCMCError as exc:
        return {"skipped": str(exc)}
    if nmcmc_file is not None:
        read = nmcmc.read_results(nmcmc_file)
        if read["L"] != L:
            raise ValueError(f"--nmcmc {nmcmc_file}: L={read['L']}, but the data file holds "
                             f"L={L}; give the nmcmc file of this model")
        results, source = read["per_temperature"], str(Path(nmcmc_file).absolute())
        steps = len(results[0]["e"])
    else:
        temps = [p["T"] for p in metrics["per_temperature"]]
        say(f"neural MCMC: {steps} proposals at each of {len(temps)} temperatures …")
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)
            results = nmcmc.run_chains(proposal, temps, steps, seed=seed,
                                       batch=min(1024, steps))
        source = "run by evaluate"
    ref = {p["T"]: p["mcmc"] for p in metrics["per_temperature"]}
    judged = judge(results, L, ref)
    out = {"source": source, "proposal": proposal.name, "k": proposal.k, "steps": steps,
           "per_temperature": judged, "min_taus": MIN_TAUS, "min_ess": MIN_ESS}
    if mc is not None:
        by_T = {c["T"]: c for c in mc}
        rows = [(j, by_T[p]) for j in judged for p in by_T if same_temperature(j["T"], p)]
        if rows:
            say("neural MCMC: seconds per proposal, one torch thread …")
            secs = [proposal_seconds(proposal, j["T"], min(1024, max(64, steps)))
                    for j, _ in rows]
            out["cost"] = cost_rows([j for j, _ in rows], secs, [c for _, c in rows],
                                    train_seconds, amortise)
    for j in judged:
        tau = "n/a" if j["tau_int"] is None else f"{j['tau_int']:.4g}"
        say(f"T={j['T']:.4f}: nmcmc acceptance {j['acceptance']:.3f}, tau {tau}, "
            f"ESS/n {j['ess_fraction']:.3g}, <e> {j['chain']['e'][0]:.4f} ± "
            f"{j['chain']['e'][1]:.4f} (exact {j['exact']['e']:.4f}), max |z| "
            f"{j['max_abs_z'] if j['max_abs_z'] is None else round(j['max_abs_z'], 2)}"
            + ("" if j["reliable"] else f"  UNRELIABLE: chain shorter than {MIN_TAUS} "
               f"tau_int or ESS below {MIN_ESS}"))
    return out
