"""Comparison statistics: generated configurations against held-out MCMC ones, per temperature.

For one temperature T (J/k_B), with N = L² spins (:func:`compare_temperature`):
  mcmc        the held-out time series: <e>, <|m|>, C = N Var(e)/T², chi = N Var(|m|)/T, U4,
              with blocked-jackknife errors sized by tau_int (observables.thermo); tau_int in
              samples and in sweeps.
  generated   i.i.d. configurations of the model, same estimators (delete-1 jackknife).
  distances   w1_e, w1_abs_m: Wasserstein-1 between generated and MCMC at the sample count of
              the noise floor (:func:`w1_against_floor`); z: (gen − mcmc)/√(err_g² + err_m²).
  also        Z2 balance (fraction m > 0), e / m / |m| histograms, G(r) and the second-moment
              correlation length, diversity (fraction of distinct configurations, generated
              and MCMC, at the same count).
Across the ladder: :func:`physics_fidelity` (one number, lower is better) and :func:`verdicts`
(sentences for the failures a number hides: biased, ignores T, collapse; issue 11).
"""
from __future__ import annotations

import math
from typing import Optional

import numpy as np

from .. import observables as obs

KEYS = ("e", "abs_m", "C", "chi", "U4")
T_MATCH = 1e-6          # two temperatures are the same when they differ by less than this × T
BIAS_RATIO = 3.0        # verdicts: W1 above this many noise floors is "biased" (issue 11)
FLAT_RATIO = 0.25       # … a T response below this fraction of MCMC's is "ignores T"
COLLAPSE_RATIO = 0.5    # … a distinct fraction below this fraction of MCMC's is "collapse"


def finite(x) -> Optional[float]:
    """float(x), or None for None, nan and ±inf (JSON has no non-finite numbers)."""
    return float(x) if x is not None and math.isfinite(float(x)) else None


def same_temperature(a: float, b: float) -> bool:
    """True when a and b (J/k_B) are the same ladder temperature (relative T_MATCH)."""
    return abs(a - b) <= T_MATCH * b


def z_score(a, b) -> Optional[float]:
    """(a − b)/√(err_a² + err_b²) of two (mean, err) pairs (an error may be None or 0: an exact
    value); 0 if equal with zero errors; None when a mean is missing or the ratio undefined."""
    if a is None or b is None or a[0] is None or b[0] is None:
        return None
    d, s = a[0] - b[0], math.hypot(a[1] or 0.0, b[1] or 0.0)
    if s > 0:
        return finite(d / s)
    return 0.0 if d == 0 else None


def _summary(th: dict, spacing: float) -> dict:
    out = {k: [finite(th[k][0]), finite(th[k][1])] for k in KEYS}
    out.update(tau_e=finite(th["tau_e"]), tau_abs_m=finite(th["tau_abs_m"]),
               tau_e_sweeps=finite(th["tau_e"] * spacing),
               tau_abs_m_sweeps=finite(th["tau_abs_m"] * spacing), block=th["block"])
    return out


def w1_against_floor(gen, ref) -> tuple[float, float, int]:
    """(w1, noise_floor, m) of generated values ``gen`` (i.i.d., [n_g]) against a time series
    ``ref`` [n]: ref is cut into an earlier half A and a later half B; noise_floor = W1(A
    thinned to m samples, B), w1 = mean over m-sample chunks of gen of W1(chunk, B), m =
    min(n_g, |A|). w1 ≈ floor means "as close to B as independent MCMC data of that size"."""
    ref = np.asarray(ref, np.float64)
    h = len(ref) // 2
    a, b = ref[:h], ref[h:]
    m = int(min(len(gen), h))
    thin = a[np.linspace(0, h - 1, m).round().astype(int)]
    floor = obs.wasserstein1(thin, b)
    chunks = [gen[i * m:(i + 1) * m] for i in range(len(gen) // m)]
    w1 = float(np.mean([obs.wasserstein1(c, b) for c in chunks]))
    return w1, float(floor), m


def _histogram(a, b, step: float, max_bins: int = 30) -> dict:
    """Fractions per bin of a and b on common bins aligned with the lattice levels (step)."""
    lo, hi = min(a.min(), b.min()), max(a.max(), b.max())
    width = step * max(1, math.ceil((hi - lo) / step / max_bins))
    edges = np.arange(lo - step / 2, hi + width, width)
    if len(edges) < 2:
        edges = np.array([lo - step / 2, lo + step / 2])
    ha = np.histogram(a, edges)[0] / len(a)
    hb = np.histogram(b, edges)[0] / len(b)
    return {"edges": edges.tolist(), "mcmc": ha.tolist(), "generated": hb.tolist()}


def config_hashes(spins: np.ndarray) -> np.ndarray:
    """64-bit hashes uint64 [n] of ±1 configurations [n, L, L] (exact copies hash equal)."""
    bits = np.packbits(spins.reshape(len(spins), -1) > 0, axis=1)
    pad = (-bits.shape[1]) % 8
    words = np.pad(bits, ((0, 0), (0, pad))).view(np.uint64)
    mult = np.random.default_rng(12345).integers(1, 2**63, words.shape[1], dtype=np.uint64) | 1
    h = np.zeros(len(words), np.uint64)
    for k in range(words.shape[1]):
        x = (words[:, k] ^ (words[:, k] >> np.uint64(29))) * mult[k]
        h = (h ^ x) * np.uint64(0x9E3779B97F4A7C15) + np.uint64(k + 1)
    return h


def distinct_fraction(spins: np.ndarray) -> float:
    """Fraction of distinct configurations among ±1 configurations [n, L, L] (1: no repeats,
    1/n: one configuration n times)."""
    return float(len(np.unique(config_hashes(spins))) / max(1, len(spins)))


def compare_temperature(T: float, L: int, mcmc_e, mcmc_m, mcmc_spins, gen_spins,
                        spacing: float = 1.0) -> dict:
    """One per_temperature entry of the metrics (no memorization / timing): see the module doc.

    mcmc_e, mcmc_m: float64 [n] held-out energy and signed magnetization per spin (a time
    series, ``spacing`` sweeps apart); mcmc_spins, gen_spins: int8 ±1 [n, L, L], [n_g, L, L]."""
    N = L * L
    k = min(len(gen_spins), len(mcmc_spins))            # diversity at the same count
    even = np.linspace(0, len(mcmc_spins) - 1, k).round().astype(int)
    ge, gm = obs.energy_magnetization(gen_spins)
    mc = obs.thermo(mcmc_e, mcmc_m, T, L)
    gn = obs.thermo(ge, gm, T, L, iid=True)
    w1e, fe, m = w1_against_floor(ge, mcmc_e)
    w1m, fm, _ = w1_against_floor(np.abs(gm), np.abs(mcmc_m))
    r = np.arange(L // 2 + 1)
    return {
        "T": float(T), "n_mcmc": int(len(mcmc_e)), "n_generated": int(len(ge)),
        "mcmc": _summary(mc, spacing), "generated": _summary(gn, 1.0),
        "z": {k: z_score(gn[k], mc[k]) for k in KEYS},
        "w1_e": finite(w1e), "w1_abs_m": finite(w1m),
        "noise_floor": {"w1_e": finite(fe), "w1_abs_m": finite(fm), "n_compared": m},
        "w1_e_over_floor": finite(w1e / max(fe, 1.0 / N)),
        "w1_abs_m_over_floor": finite(w1m / max(fm, 1.0 / N)),
        "w1_full": {"e": obs.wasserstein1(ge, mcmc_e),
                    "abs_m": obs.wasserstein1(np.abs(gm), np.abs(mcmc_m))},
        "z2": {"generated_frac_m_pos": float(np.mean(gm > 0) + 0.5 * np.mean(gm == 0)),
               "mcmc_frac_m_pos": float(np.mean(mcmc_m > 0) + 0.5 * np.mean(mcmc_m == 0))},
        "histograms": {"e": _histogram(mcmc_e, ge, 4.0 / N),
                       "m": _histogram(mcmc_m, gm, 2.0 / N),
                       "abs_m": _histogram(np.abs(mcmc_m), np.abs(gm), 2.0 / N)},
        "G": {"r": r.tolist(), "mcmc": obs.correlation_function(mcmc_spins).tolist(),
              "generated": obs.correlation_function(gen_spins).tolist()},
        "diversity": {"generated_distinct_fraction": distinct_fraction(gen_spins[:k]),
                      "mcmc_distinct_fraction": distinct_fraction(mcmc_spins[even]),
                      "n_compared": int(k)},
        "xi": {"mcmc": finite(obs.correlation_length(mcmc_spins)),
               "generated": finite(obs.correlation_length(gen_spins))},
    }


def physics_fidelity(metrics: dict) -> float:
    """Mean over temperatures and over {e, |m|} of w1 / noise_floor (lower is better; ≈ 1 or
    below: the model is as close to the MCMC data as independent MCMC data of that size). The
    floor is clamped at 1/N (a quarter of an energy level) so a zero floor cannot divide."""
    ratios = []
    for p in metrics["per_temperature"]:
        ratios += [p["w1_e_over_floor"], p["w1_abs_m_over_floor"]]
    ratios = [math.inf if r is None else r for r in ratios]
    return float(np.mean(ratios)) if ratios else math.nan


def _spread(pts: list[dict], src: str, key: str) -> tuple[float, float]:
    """(max − min over T of the mean of ``key``, the error of that difference)."""
    means = np.array([p[src][key][0] for p in pts], float)
    errs = np.array([p[src][key][1] for p in pts], float)
    hi, lo = int(np.argmax(means)), int(np.argmin(means))
    return float(means[hi] - means[lo]), float(math.hypot(errs[hi], errs[lo]))


def verdicts(per_T: list[dict]) -> tuple[list[str], dict]:
    """Sentences for the failures of a generator that the numbers alone hide (issue 11).

    biased      at some T, W1 of e or |m| exceeds BIAS_RATIO (3) noise floors.
    ignores T   the response to T: for o in {<e>, <|m|>}, (max − min over the ladder of the
                generated mean) / (the same for MCMC); judged on the observables whose MCMC
                spread exceeds 3 of its errors, from at least 2 temperatures. The largest
                response below FLAT_RATIO (0.25) means flat across the ladder where MCMC is not.
    collapse    at some T, the fraction of distinct configurations among the generated ones
                is below COLLAPSE_RATIO (0.5) × the same fraction for as many held-out MCMC
                configurations (evenly spaced in the series).
    Returns (sentences, empty when nothing is wrong; statistics behind each verdict)."""
    out: list[str] = []
    stats: dict = {"bias_ratio": BIAS_RATIO, "flat_ratio": FLAT_RATIO,
                   "collapse_ratio": COLLAPSE_RATIO}
    if not per_T:
        return out, stats

    def ratio(p, key):
        r = p[f"{key}_over_floor"]
        return math.inf if r is None else r
    worst = max(per_T, key=lambda p: max(ratio(p, "w1_e"), ratio(p, "w1_abs_m")))
    biased = [p["T"] for p in per_T if max(ratio(p, "w1_e"), ratio(p, "w1_abs_m")) > BIAS_RATIO]
    stats["biased"] = {"temperatures": biased, "worst_T": worst["T"],
                       "worst_w1_e_over_floor": ratio(worst, "w1_e"),
                       "worst_w1_abs_m_over_floor": ratio(worst, "w1_abs_m")}
    if biased:
        out.append(f"biased: at {len(biased)} of {len(per_T)} temperatures the generated e or "
                   f"|m| distribution is more than {BIAS_RATIO:g}× the MCMC noise floor away "
                   f"from MCMC (worst T={worst['T']:.4f}: W1(e) {ratio(worst, 'w1_e'):.3g}× "
                   f"and W1(|m|) {ratio(worst, 'w1_abs_m'):.3g}× the floor).")

    response = {}
    for key, name in (("e", "<e>"), ("abs_m", "<|m|>")):
        gen, _ = _spread(per_T, "generated", key)
        mc, mc_err = _spread(per_T, "mcmc", key)
        judged = len(per_T) >= 2 and mc > 3 * mc_err
        response[key] = {"generated_spread": gen, "mcmc_spread": mc, "mcmc_spread_error": mc_err,
                         "response": gen / mc if judged else None}
    judged = [r["response"] for r in response.values() if r["response"] is not None]
    stats["ignores_T"] = {**response, "max_response": max(judged) if judged else None}
    if judged and max(judged) < FLAT_RATIO:
        e, m = response["e"], response["abs_m"]
        out.append(f"ignores T: from T={per_T[0]['T']:.4f} to {per_T[-1]['T']:.4f} the generated "
                   f"<e> spans {e['generated_spread']:.3g} and <|m|> {m['generated_spread']:.3g}"
                   f", where MCMC's span {e['mcmc_spread']:.3g} and {m['mcmc_spread']:.3g}: the "
                   f"model responds to temperature with at most {100 * max(judged):.2g}% of the "
                   f"physical change (below {100 * FLAT_RATIO:.0f}%).")

    div = [(p["T"], p["diversity"]) for p in per_T]
    low = [(T, d) for T, d in div if d["generated_distinct_fraction"]
           < COLLAPSE_RATIO * d["mcmc_distinct_fraction"]]
    stats["collapse"] = {"temperatures": [T for T, _ in low]}
    if low:
        T, d = min(low, key=lambda x: x[1]["generated_distinct_fraction"]
                   / x[1]["mcmc_distinct_fraction"])
        out.append(f"collapse: at {len(low)} of {len(per_T)} temperatures the generator repeats "
                   f"itself (worst T={T:.4f}: {100 * d['generated_distinct_fraction']:.1f}% of "
                   f"{d['n_compared']} generated configurations are distinct, against "
                   f"{100 * d['mcmc_distinct_fraction']:.1f}% of as many MCMC ones).")
    return out, stats
