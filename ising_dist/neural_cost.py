"""Neural MCMC judged by physics, and every sampler priced per effective sample (issue 12).

Used by ``python -m ising_dist.evaluate`` (its ``nmcmc`` section and the cost table) and by
``python -m benchmarks.nmcmc``.

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
  MCMC         Metropolis and Wolff as measured in the same run by evaluate.mcmc_cost (native
               kernels where built, one core): s_sweep × max(1, 2 τ_int) in sweeps.
  break-even   effective samples at T from which training + sampling by neural MCMC costs less
               than the better MCMC: train / (c_mcmc − c_nmcmc); None (never) when c_nmcmc ≥
               c_mcmc.
Raw generated samples (evaluate's cost table, :func:`label_biased`) that fail the fidelity test
(W1 of e or |m| more than BIAS_RATIO = 3 noise floors, evaluate.w1_against_floor) are labelled
biased and get no speed-up or break-even figure: a wrong sample has no price.
"""
from __future__ import annotations

import html
import math
import time
import warnings
from pathlib import Path
from typing import Callable, Optional

import numpy as np
import torch

from . import exact, nmcmc
from . import observables as obs

AMORTISE = 1_000_000      # effective samples over which training time is spread
MIN_TAUS = 30             # a chain shorter than this many τ_int has no trustworthy error bar
MIN_ESS = 100             # … nor one whose proposals' importance weights have a smaller ESS
BIAS_RATIO = 3.0          # W1 above this many noise floors: biased (as evaluate's verdicts)
KEYS = ("e", "abs_m", "C", "chi")


def _z(a, b) -> Optional[float]:
    """(a − b)/√(σ_a² + σ_b²) of two (mean, err) pairs (b's error may be 0: an exact value)."""
    if a is None or b is None or a[0] is None or b[0] is None:
        return None
    s = math.hypot(a[1] or 0.0, b[1] or 0.0)
    d = a[0] - b[0]
    return d / s if s > 0 else (0.0 if d == 0 else None)


def _finite(x):
    return float(x) if x is not None and math.isfinite(float(x)) else None


def judge(results: list[dict], L: int, mcmc: Optional[dict] = None) -> list[dict]:
    """Per temperature of ``results`` (nmcmc.run_chains or nmcmc.read_results rows): the chain's
    observables against exact and MCMC (see the module doc).

    mcmc: {T: {"e": [mean, err], "abs_m", "C", "chi"}} of the held-out MCMC samples (evaluate's
    per_temperature[i]["mcmc"]), matched by T (relative 1e-6); missing temperatures compare with
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
        chain = {k: [_finite(th[k][0]), _finite(th[k][1])] for k in KEYS}
        ex = {"e": float(exact.kaufman_energy(T, L)), "C": float(exact.kaufman_specific_heat(T, L)),
              "free_energy": r["free_energy_exact"]}
        F = [r["free_energy"], r["free_energy_error"]]
        z_exact = {"e": _z(chain["e"], [ex["e"], 0.0]), "C": _z(chain["C"], [ex["C"], 0.0]),
                   "free_energy": _z(F, [ex["free_energy"], 0.0])}
        ref = None
        for t, v in (mcmc or {}).items():
            if abs(t - T) <= 1e-6 * T:
                ref = {k: v[k] for k in KEYS}
        z_mcmc = None if ref is None else {k: _z(chain[k], ref[k]) for k in KEYS}
        zs = [abs(z) for z in list(z_exact.values()) + list((z_mcmc or {}).values())
              if z is not None]
        out.append({"T": T, "n": n, "acceptance": r["acceptance"], "tau_int": _finite(tau),
                    "tau_int_error": _finite(r["tau_int_error"]),
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
    evaluate.mcmc_cost at the same temperatures, same order. Seconds; None where undefined
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


def label_biased(metrics: dict, ratio: float = BIAS_RATIO) -> None:
    """In evaluate's cost table (metrics["cost"]), mark the temperatures whose raw generated
    samples fail the fidelity test (W1 of e or |m| above ``ratio`` noise floors) as biased and
    drop their speed-up and break-even figures; the every-T break-even is dropped when any T
    is biased. Modifies metrics in place."""
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


def evaluate_nmcmc(model, metrics: dict, nmcmc_file=None, steps: int = 0, k: int = 4,
                   seed: int = 0, mc: Optional[list[dict]] = None,
                   train_seconds: Optional[float] = None, amortise: int = AMORTISE,
                   progress: Optional[Callable[[str], None]] = None) -> dict:
    """The "nmcmc" section of evaluate's metrics: chains from ``nmcmc_file`` (written by
    python -m ising_dist.nmcmc) or run here (``steps`` recorded proposals at each evaluated
    temperature), judged against exact and the MCMC of ``metrics["per_temperature"]``, and
    priced against ``mc`` (evaluate.mcmc_cost rows at the same temperatures; no cost without
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
        rows = [(j, by_T[p]) for j in judged for p in by_T if abs(p - j["T"]) <= 1e-6 * p]
        if rows:
            say("neural MCMC: seconds per proposal, one torch thread …")
            secs = [proposal_seconds(proposal, j["T"], min(1024, max(64, steps)))
                    for j, _ in rows]
            out["cost"] = cost_rows([j for j, _ in rows], secs, [c for _, c in rows],
                                    train_seconds, amortise)
    for j in judged:
        say(f"T={j['T']:.4f}: nmcmc acceptance {j['acceptance']:.3f}, tau {j['tau_int']}, "
            f"ESS/n {j['ess_fraction']:.3g}, <e> {j['chain']['e'][0]:.4f} ± "
            f"{j['chain']['e'][1]:.4f} (exact {j['exact']['e']:.4f}), max |z| "
            f"{j['max_abs_z'] if j['max_abs_z'] is None else round(j['max_abs_z'], 2)}"
            + ("" if j["reliable"] else f"  UNRELIABLE: chain shorter than {MIN_TAUS} "
               f"tau_int or ESS below {MIN_ESS}"))
    return out


# ------------------------------------------------------------------------------ report
def _fmt(v, digits=4):
    if v is None:
        return "—"
    if isinstance(v, (list, tuple)):
        return "—" if v[0] is None else f"{v[0]:.{digits}g} ± {_fmt(v[1], 2)}"
    if isinstance(v, float):
        return "∞" if math.isinf(v) else f"{v:.{digits}g}"
    return html.escape(str(v))


def _table(head, rows) -> str:
    h = "".join(f"<th>{html.escape(c)}</th>" for c in head)
    body = "".join("<tr>" + "".join(f"<td>{c}</td>" for c in r) + "</tr>" for r in rows)
    return f"<table><tr>{h}</tr>{body}</table>"


def html_section(nm: dict) -> str:
    """The report's "Neural MCMC" section (tables of :func:`evaluate_nmcmc`'s output)."""
    p = ["<h2>Neural MCMC: the model as proposal of an exact Metropolis–Hastings chain</h2>"]
    if "skipped" in nm:
        return p[0] + f"<p>not run: {html.escape(nm['skipped'])}</p>"

    def z(x):
        return "—" if x is None else (f"<span class='bad'>{x:.2f}</span>" if abs(x) > 3
                                      else f"{x:.2f}")
    rows = []
    for j in nm["per_temperature"]:
        mc, zm = j["mcmc"] or {}, j["z_mcmc"] or {}
        rows.append([f"{j['T']:.4f}", f"{j['acceptance']:.3g}", _fmt(j["tau_int"], 3),
                     _fmt(j["ess_fraction"], 3),
                     _fmt(j["chain"]["e"]), _fmt(mc.get("e")), z(zm.get("e")),
                     f"{j['exact']['e']:.5f}", z(j["z_exact"]["e"]),
                     _fmt(j["chain"]["abs_m"]), _fmt(mc.get("abs_m")), z(zm.get("abs_m")),
                     _fmt(j["chain"]["C"]), _fmt(mc.get("C")), f"{j['exact']['C']:.4f}",
                     z(j["z_exact"]["C"]), _fmt(j["chain"]["chi"]), _fmt(mc.get("chi")),
                     z(zm.get("chi")), _fmt(j["free_energy"], 6),
                     f"{j['exact']['free_energy']:.6f}", z(j["z_exact"]["free_energy"]),
                     "yes" if j["reliable"] else "<span class='bad'>no</span>"])
    p.append(f"<p>{html.escape(nm['proposal'])} proposals (k={nm['k']}), {nm['steps']} per T, "
             f"from {html.escape(nm['source'])}. The chain is exact however poor the model; "
             f"the model's quality shows in acceptance, τ_int (proposals) and ESS/n. z: "
             f"difference in combined standard errors (red: |z| > 3); reliable: the chain is "
             f"at least {nm['min_taus']} τ_int long and the weights' ESS at least "
             f"{nm['min_ess']}; otherwise τ_int and the errors are underestimated.</p>")
    p.append(_table(["T", "accept", "τ_int", "ESS/n", "e chain", "e MCMC", "z", "e exact",
                     "z", "|m| chain", "|m| MCMC", "z", "C chain", "C MCMC", "C exact", "z",
                     "χ chain", "χ MCMC", "z", "F = −T lnZ/N", "F exact", "z", "reliable"],
                    rows))
    if "cost" in nm:
        rows = []
        for c in nm["cost"]:
            rows.append([f"{c['T']:.4f}", _fmt(c["s_per_proposal"], 3),
                         _fmt(c["proposals_per_effective"], 3), _fmt(c["s_per_effective"], 3),
                         _fmt(c["s_per_effective_importance"], 3),
                         _fmt(c["s_per_effective_amortised"], 3),
                         _fmt(c["metropolis_s_per_effective"], 3),
                         _fmt(c["wolff_s_per_effective"], 3), c["best_mcmc"],
                         _fmt(c["speedup_vs_best_mcmc_amortised"], 3),
                         "never" if c["break_even_samples"] is None
                         else f"{c['break_even_samples']:.3g}"])
        a = nm["cost"][0]["amortise_samples"]
        p.append(f"<h3>Cost per effective sample (one core, seconds)</h3>")
        p.append(_table(["T", "s/proposal", "proposals/eff.", "nmcmc s/eff. (chain)",
                         "s/eff. (importance)", f"chain + training/{a:.0e}",
                         "Metropolis s/eff.", "Wolff s/eff.", "best MCMC",
                         "best MCMC / nmcmc (amortised)", "break-even eff. samples"], rows))
    return "".join(p)


def plot(out: Path, nm: dict) -> Optional[str]:
    """nmcmc.png: ⟨e⟩ and C of the chain against MCMC and Kaufman, and acceptance / ESS."""
    if "skipped" in nm:
        return None
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    pts = nm["per_temperature"]
    T = np.array([j["T"] for j in pts])
    fig, ax = plt.subplots(1, 3, figsize=(13, 3.8))
    for a, key, name in ((ax[0], "e", r"$\langle e\rangle$"), (ax[1], "C", "C")):
        a.errorbar(T, [j["chain"][key][0] for j in pts], [j["chain"][key][1] or 0 for j in pts],
                   fmt="o", color="tab:green", capsize=3, label="neural MCMC chain")
        mc = [j["mcmc"] for j in pts]
        if any(m is not None for m in mc):
            a.errorbar([t for t, m in zip(T, mc) if m], [m[key][0] for m in mc if m],
                       [m[key][1] for m in mc if m], fmt="s", mfc="none", color="tab:blue",
                       capsize=3, label="MCMC (held out)")
        a.plot(T, [j["exact"][key] for j in pts], "k_", ms=14, label="Kaufman (exact, this L)")
        a.set_xlabel(r"$T$ ($J/k_B$)")
        a.set_title(name)
        a.legend(fontsize=7)
    ax[2].semilogy(T, [max(j["acceptance"], 1e-6) for j in pts], "o-", label="acceptance")
    ax[2].semilogy(T, [max(j["ess_fraction"], 1e-6) for j in pts], "s-", label="ESS / n")
    ax[2].set_xlabel(r"$T$ ($J/k_B$)")
    ax[2].legend(fontsize=7)
    ax[2].set_title("proposal quality")
    fig.tight_layout()
    fig.savefig(Path(out) / "nmcmc.png", dpi=110, bbox_inches="tight")
    plt.close(fig)
    return "nmcmc.png"
