"""Judge a generative model by physics: generated configurations against held-out MCMC ones.

    python -m ising_dist.evaluate --data F.h5 --model RUN_OR_CKPT [--out report/] [--samples N]
        [--temperatures T1,T2,… | --tmin A --tmax B] [--split heldout|val|test]
        [--prior fitted|aggregate|normal] [--mode bernoulli|sign] [--seed S]
        [--cost-sweeps N | --no-cost] [--no-pictures] [--tune results.csv]
        [--nmcmc FILE | --nmcmc-steps N] [--nmcmc-k K]
    Several sizes: --data A.h5 B.h5 --model RUN_A RUN_B (paired) adds the finite-size trend of
    the latent Tc estimate (out/L<L>/ per pair, out/finite_size.json, out/index.html).

For every temperature T of the file (or the chosen subset), with N = L² spins:
  mcmc        held-out samples of the file (default "heldout": everything after the training
              range, i.e. validation + test, read from the model file's split), a time series:
              <e>, <|m|>, C = N Var(e)/T², chi = N Var(|m|)/T, U4 with blocked-jackknife errors
              sized by tau_int (observables.thermo), tau_int in samples and in sweeps.
  generated   ``n_samples`` i.i.d. configurations of the model at T, same estimators (delete-1).
              Conditional models (cvae, GANs) sample at T; unconditional ones (ae, vae) sample
              the codes of that T's training configurations (DESIGN.md): prior "fitted" (a
              diagonal Gaussian fitted to them, seed 001; default), "aggregate" (the mixture of
              their posteriors) or "normal" (N(0, 1): T-independent).
  distances   w1_e, w1_abs_m: Wasserstein-1 between generated and MCMC, at the sample count
              of the noise floor: the held-out series is cut into an earlier half A and a later
              half B; noise_floor = W1(A thinned to m samples, B), w1 = mean over m-sample chunks
              of generated of W1(chunk, B), m = min(n_samples, |A|). w1 ≈ floor means "as close
              to B as independent MCMC data of that size"; z: (gen − mcmc)/√(err_g² + err_m²).
  also        Z2 balance (fraction m > 0, generated and MCMC), memorization (fraction of
              generated configurations identical to a training configuration of any T; the same
              fraction for held-out MCMC is the baseline a perfect sampler would show), e / m /
              |m| histograms, G(r) and the second-moment correlation length, diversity
              (fraction of distinct configurations, generated and MCMC, at the same count).
verdicts      sentences for the failures a number hides (see :func:`verdicts`): biased (W1 more
              than 3 noise floors), ignores T (flat across the ladder where MCMC is not),
              collapse (few distinct configurations); printed, at the top of the report, and in
              metrics.json ("verdicts", "verdict_statistics").
latent        (models with an encoder) codes of the held-out configurations; see latent_analysis.
cost          see cost_analysis: seconds per independent sample, generator vs Metropolis / Wolff
              / the file's PT run, training time, break-even sample counts; raw samples that
              fail the fidelity test are labelled biased, with no speed-up (neural_cost).
nmcmc         models with a likelihood: the model as proposal of an exact MH chain (--nmcmc FILE
              from python -m ising_dist.nmcmc, or --nmcmc-steps run here): acceptance, τ_int,
              ESS/n, corrected observables against MCMC and exact, F against Kaufman, cost per
              effective sample against Metropolis / Wolff (ising_dist.neural_cost).

Outputs (out/): metrics.json (shape below), PNG pictures and index.html (ising_dist.report).
    {"L", "model": {config}, "per_temperature": [{"T", "mcmc": {"e": [mean, err], "abs_m",
     "C", "chi", "U4", …}, "generated": {…}, "w1_e", "w1_abs_m", "noise_floor": {"w1_e",
     "w1_abs_m"}, "z", "z2", "memorization", "diversity", "histograms", "G", …}], "fidelity",
     "verdicts": [sentence, …], "verdict_statistics": {…},
     "latent": {"tc_estimate", "tc_error", "method", …}, "cost": {…}, …}
Non-finite numbers are written as null. In-process use (ising_dist.tune): evaluate_model,
physics_fidelity, score_trial; report.tune_heatmap draws the search's heatmap.
"""
from __future__ import annotations

import argparse
import csv
import json
import math
import os
import sys
import time
import warnings
from pathlib import Path
from typing import Callable, Optional

import numpy as np
import torch

from . import engine, neural_cost, observables as obs
from .config import ConfigError
from .data import DataError, inspect, select_rows, split_bounds
from .exact import TC
from .models import load_model
from .store import StoreError, open_read, stored_config

KEYS = ("e", "abs_m", "C", "chi", "U4")
SPLITS = ("heldout", "val", "test")
PRIORS = ("fitted", "aggregate", "normal")
MAX_FIT = 5000          # training configurations encoded per T to fit the generating prior
MAX_LATENT = 4096       # held-out configurations per T kept for the latent analysis
BATCH = 2048            # generation / encoding batch
N_BOOT = 400            # bootstrap replicates of the latent Tc estimate
N_BLOCKS = 20           # contiguous blocks per T in that bootstrap
T_MATCH = 1e-6
BIAS_RATIO = 3.0        # verdicts: W1 above this many noise floors is "biased" (issue 11)
FLAT_RATIO = 0.25       # … a T response below this fraction of MCMC's is "ignores T"
COLLAPSE_RATIO = 0.5    # … a distinct fraction below this fraction of MCMC's is "collapse"


# ============================================================================ loading
def load_run(path) -> dict:
    """A run directory (model.pt, metrics.csv) or a model file → {"model", "extra",
    "model_path", "loss_rows", "train_seconds", "train_seconds_source"}."""
    p = Path(path)
    if p.is_dir():
        model_path = p / "model.pt"
        if not model_path.is_file():
            raise ValueError(f"--model {str(p)!r} is a directory without model.pt; give a run "
                             f"directory of `python -m ising_dist.train` or a model.pt file")
    elif p.is_file():
        model_path = p
    else:
        raise ValueError(f"--model {str(p)!r} does not exist; give a run directory of "
                         f"`python -m ising_dist.train` (holding model.pt) or a model.pt file")
    model, extra = load_model(model_path)
    rows = _loss_rows(model_path, extra)
    secs, source = extra.get("train_seconds"), "model file (extra['train_seconds'])"
    if secs is None and rows and all("epoch_time_s" in r for r in rows):
        secs = float(sum(r["epoch_time_s"] for r in rows))
        source = ("sum of epoch_time_s in metrics.csv: training steps only (no validation, "
                  "checkpoints or startup), a lower bound")
    if secs is None:
        source = "unknown (no train_seconds in the model file, no metrics.csv)"
    return {"model": model, "extra": extra, "model_path": str(model_path.absolute()),
            "loss_rows": rows, "train_seconds": None if secs is None else float(secs),
            "train_seconds_source": source}


def _loss_rows(model_path: Path, extra: dict) -> list[dict]:
    """metrics.csv beside model.pt (or beside a checkpoint_NNNN folder, cut at its epoch)."""
    here = model_path.parent
    path = here / "metrics.csv"
    if not path.is_file() and here.name.startswith("checkpoint_"):
        path = here.parent / "metrics.csv"
    if not path.is_file():
        return []
    with open(path, newline="") as fh:
        rows = [{k: float(v) for k, v in r.items() if v not in ("", None)}
                for r in csv.DictReader(fh)]
    last = extra.get("epoch")
    return [r for r in rows if last is None or r.get("epoch", 0) <= last]


def resolve_split(info, extra: dict) -> dict:
    """Train/val/test sample ranges [start, stop) of the file, per temperature.

    The model file's data fingerprint (ising_dist.train) gives the exact split when it names
    this run file; otherwise its train config's fractions (or top-level val_fraction /
    test_fraction), else 0.8/0.1/0.1 by sample index."""
    fp = extra.get("data") if isinstance(extra.get("data"), dict) else {}
    same = bool(fp) and fp.get("config_sha256") == info.config_sha256 \
        and fp.get("seed") == info.seed
    if same and isinstance(fp.get("splits"), dict) and fp.get("n_samples", 0) <= info.n_samples:
        b = {k: tuple(int(x) for x in v) for k, v in fp["splits"].items()}
        source = "the model file's training split"
    else:
        tc = extra.get("train_config") if isinstance(extra.get("train_config"), dict) else {}
        val = float(tc.get("val_fraction", extra.get("val_fraction", 0.1)))
        test = float(tc.get("test_fraction", extra.get("test_fraction", 0.1)))
        b = split_bounds(info.n_samples, val, test, int(tc.get("skip", 0)))
        source = (f"fractions {1 - val - test:.2g}/{val:.2g}/{test:.2g} by sample index"
                  + ("" if fp else " (the model file names no training data)")
                  + (" (the model was trained on another file)" if fp and not same else ""))
    return {"train": b["train"], "val": b["val"], "test": b["test"],
            "heldout": (b["val"][0], info.n_samples), "source": source,
            "same_file_as_training": same}


# ============================================================================ generation
@torch.no_grad()
def _encode(model, spins: np.ndarray, T: float, flip: bool = False):
    """Encoder means and log-variances (None for an AE) of int8 ±1 spins [n, L, L]."""
    mus, lvs = [], []
    for i in range(0, len(spins), BATCH):
        x = torch.from_numpy((spins[i:i + BATCH] > 0).astype(np.float32)).to(model.device)
        if flip:
            x = 1.0 - x
        mu, lv = model.encode(x, T if model.cfg.conditional else None)
        mus.append(mu.float().cpu())
        lvs.append(None if lv is None else lv.float().cpu())
    mu = torch.cat(mus).numpy()
    lv = None if lvs[0] is None else torch.cat(lvs).numpy()
    return mu, lv


def has_encoder(model) -> bool:
    return getattr(model, "kind", "") == "likelihood" and hasattr(model, "encode")


def default_prior(model) -> str:
    """Unconditional likelihood models sample their codes of that T (DESIGN.md)."""
    if not has_encoder(model):
        return "normal"
    return model.cfg.prior if model.cfg.conditional else "fitted"


@torch.no_grad()
def generate(model, T: float, n: int, prior: str, codes=None, mode: Optional[str] = None,
             seed: int = 0) -> np.ndarray:
    """n configurations int8 ±1 [n, L, L] at T.

    Models without an encoder (GANs, or any object with ``sample(n, T, generator=…)``) sample
    directly. Likelihood models: z from N(0, 1) ("normal"), from a diagonal Gaussian fitted to
    ``codes`` = (mu, logvar) of training configurations at T ("fitted"), or from their
    aggregate posterior ("aggregate"), then decode at T and draw (cfg.sample_mode or mode)."""
    dev = getattr(model, "device", torch.device("cpu"))
    g = torch.Generator(device=dev)
    g.manual_seed(int(seed))
    out = []
    for i in range(0, n, BATCH):
        k = min(BATCH, n - i)
        if not has_encoder(model):
            x = model.sample(k, T, mode=mode, generator=g)
            out.append((x[0] if isinstance(x, tuple) else x).cpu())   # exact models: (x, ln q)
            continue
        eps = torch.randn(k, model.cfg.latent_dim, generator=g, device=dev)
        if prior == "normal":
            z = eps
        elif prior == "fitted":
            mu = torch.as_tensor(codes[0], device=dev)
            z = mu.mean(0) + mu.var(0, unbiased=False).sqrt() * eps
        else:
            mu = torch.as_tensor(codes[0], device=dev)
            pick = torch.randint(0, mu.shape[0], (k,), generator=g, device=dev)
            z = mu[pick]
            if codes[1] is not None:
                z = z + torch.exp(0.5 * torch.as_tensor(codes[1], device=dev)[pick]) * eps
        logits = model.decode(z, T if model.cfg.conditional else None)
        out.append(model.to_spins(logits, mode, g).cpu())
    return torch.cat(out).numpy().astype(np.int8)


# ============================================================================ comparison
def _finite(x):
    return float(x) if x is not None and math.isfinite(float(x)) else None


def _pair(v):
    return [_finite(v[0]), _finite(v[1])]


def _summary(th: dict, spacing: float) -> dict:
    out = {k: _pair(th[k]) for k in KEYS}
    out.update(tau_e=_finite(th["tau_e"]), tau_abs_m=_finite(th["tau_abs_m"]),
               tau_e_sweeps=_finite(th["tau_e"] * spacing),
               tau_abs_m_sweeps=_finite(th["tau_abs_m"] * spacing), block=th["block"])
    return out


def z_score(a, b) -> Optional[float]:
    """(a − b)/√(err_a² + err_b²) of two (mean, err) pairs; 0 if equal with zero errors."""
    d, s = a[0] - b[0], math.hypot(a[1], b[1])
    if s > 0:
        return _finite(d / s)
    return 0.0 if d == 0 else None


def w1_against_floor(gen, ref) -> tuple[float, float, int]:
    """(w1, noise_floor, m): see the module doc. gen i.i.d. [n_g], ref a time series [n]."""
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
    """One per_temperature entry (no memorization / timing): see the module doc."""
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
        "w1_e": _finite(w1e), "w1_abs_m": _finite(w1m),
        "noise_floor": {"w1_e": _finite(fe), "w1_abs_m": _finite(fm), "n_compared": m},
        "w1_e_over_floor": _finite(w1e / max(fe, 1.0 / N)),
        "w1_abs_m_over_floor": _finite(w1m / max(fm, 1.0 / N)),
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
        "xi": {"mcmc": _finite(obs.correlation_length(mcmc_spins)),
               "generated": _finite(obs.correlation_length(gen_spins))},
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


# ============================================================================ latent space
def peak_position(T, y) -> tuple[float, bool]:
    """Vertex of the parabola through the highest point and its neighbours; (T_peak, at_edge).
    A maximum at the end of the ladder is returned as that end with at_edge=True."""
    T, y = np.asarray(T, float), np.asarray(y, float)
    k = int(np.nanargmax(y))
    if k == 0 or k == len(T) - 1:
        return float(T[k]), True
    x0, x1, x2 = T[k - 1:k + 2]
    y0, y1, y2 = y[k - 1:k + 2]
    den = (x0 - x1) * (x0 - x2) * (x1 - x2)
    a = (x2 * (y1 - y0) + x1 * (y0 - y2) + x0 * (y2 - y1)) / den
    b = (x2 * x2 * (y0 - y1) + x1 * x1 * (y2 - y0) + x0 * x0 * (y1 - y2)) / den
    if a >= 0:
        return float(x1), False
    return float(np.clip(-b / (2 * a), x0, x2)), False


def susceptibility_peak(T, series: list[np.ndarray], N: int, rng, n_boot: int = N_BOOT) -> dict:
    """Peak of chi(T) = N Var(|x|)/T over a ladder, x[T] a time series per T; the error is
    the std of the peak over a block bootstrap (N_BLOCKS contiguous blocks per T)."""
    T = np.asarray(T, float)
    sums = []
    for x in series:
        a = np.abs(np.asarray(x, float))
        nb = min(N_BLOCKS, len(a))
        idx = np.array_split(np.arange(len(a)), nb)
        sums.append(np.array([[a[i].sum(), (a[i] ** 2).sum(), len(i)] for i in idx]))
    chi = np.array([N * (np.sum(s[:, 1]) / np.sum(s[:, 2]) - (np.sum(s[:, 0]) / np.sum(s[:, 2]))
                         ** 2) / t for s, t in zip(sums, T)])
    tc, edge = peak_position(T, chi)
    boots = []
    for _ in range(n_boot):
        c = []
        for s, t in zip(sums, T):
            pick = s[rng.integers(0, len(s), len(s))].sum(0)
            c.append(N * (pick[1] / pick[2] - (pick[0] / pick[2]) ** 2) / t)
        boots.append(peak_position(T, c)[0])
    stat = float(np.std(boots))
    # interpolation: a parabola through log(chi) (a Gaussian peak) instead of chi itself
    interp = abs(tc - peak_position(T, np.log(np.maximum(chi, 1e-300)))[0])
    err = math.hypot(stat, interp)
    if edge:
        k = int(np.argmin(np.abs(T - tc)))
        err = max(err, float(abs(T[k] - T[k - 1 if k else 1])))
    return {"tc_estimate": tc, "tc_error": err, "tc_error_stat": stat,
            "tc_error_interpolation": interp, "peak_at_edge": edge, "curve": chi.tolist()}


def latent_analysis(model, temps, spins: list[np.ndarray], mags: list[np.ndarray], L: int,
                    seed: int = 0, keep: int = 300) -> tuple[dict, dict]:
    """Latent space of the held-out configurations (1703.02435; seeds 000, 004).

    Codes mu of each configuration and of its spin flip give the Z2-symmetric centre c (the
    mean of their midpoints) and, from both sets, the first principal axis v; z1 = (mu − c)·v,
    oriented to correlate positively with m. Reported: the correlation of z1 with m (pooled over
    T) and the multiple correlation of m on all code components (the AE's code is close to
    linear in m, seed 000); per T the latent susceptibility chi_z = N Var(|z1|)/T and, for
    variational models, the mean posterior variance (seed 000's "variance peaks near Tc");
    Tc = the peak of chi_z (see susceptibility_peak). The same estimator on the MCMC |m| series
    (chi's peak) is reported beside it: on a finite lattice and a coarse ladder both sit above
    the exact Tc by a shift that the finite-size trend (several L) removes.
    Returns (summary for metrics.json, arrays for pictures)."""
    rng = np.random.default_rng(seed)
    N = L * L
    codes = [_encode(model, s, t) for s, t in zip(spins, temps)]
    flips = [_encode(model, s, t, flip=True)[0] for s, t in zip(spins, temps)]
    mu_all = np.concatenate([c[0] for c in codes])
    fl_all = np.concatenate(flips)
    centre = 0.5 * (mu_all + fl_all).mean(0)
    both = np.concatenate([mu_all, fl_all]) - centre
    _, sv, vt = np.linalg.svd(both, full_matrices=False)
    v = vt[0]
    m_all = np.concatenate(mags)
    z_all = (mu_all - centre) @ v
    if np.corrcoef(z_all, m_all)[0, 1] < 0:
        v = -v
        z_all = -z_all
    z_by_T = [(c[0] - centre) @ v for c in codes]
    X = np.column_stack([mu_all, np.ones(len(mu_all))])
    coef, *_ = np.linalg.lstsq(X, m_all, rcond=None)
    r_multi = float(np.corrcoef(X @ coef, m_all)[0, 1])
    peak = susceptibility_peak(temps, z_by_T, N, rng)
    mcmc_peak = susceptibility_peak(temps, mags, N, rng)
    var = [float(np.exp(c[1]).mean()) if c[1] is not None else None for c in codes]
    out = {"tc_estimate": peak["tc_estimate"], "tc_error": peak["tc_error"],
           "method": "peak of the latent susceptibility chi_z = N Var(|z1|)/T over the ladder "
                     "(z1: first principal axis of the Z2-symmetrized encoder means; parabola "
                     "through the highest point and its neighbours; error: block bootstrap "
                     "and, in quadrature, the shift when the parabola goes through log chi_z)",
           "tc_error_stat": peak["tc_error_stat"],
           "tc_error_interpolation": peak["tc_error_interpolation"],
           "peak_at_edge": peak["peak_at_edge"], "exact_tc": float(TC),
           "latent_dim": int(mu_all.shape[1]),
           "corr_z1_m": float(np.corrcoef(z_all, m_all)[0, 1]),
           "corr_dim_m": [_finite(np.corrcoef(mu_all[:, k], m_all)[0, 1])
                          if mu_all[:, k].std() > 0 else None for k in range(mu_all.shape[1])],
           "r_linear_m": r_multi,
           "explained_variance_z1": float(sv[0] ** 2 / np.sum(sv ** 2)),
           "temperatures": [float(t) for t in temps],
           "chi_z": peak["curve"],
           "mean_abs_z1": [float(np.abs(z).mean()) for z in z_by_T],
           "posterior_var": var,
           "mcmc_chi_peak": {k: mcmc_peak[k] for k in ("tc_estimate", "tc_error",
                                                       "peak_at_edge")}}
    if all(x is not None for x in var):
        tv, edge = peak_position(temps, var)
        out["tc_from_posterior_var"] = {"tc_estimate": tv, "peak_at_edge": edge}
    arts = {"centre": centre, "axis": v, "axes2": vt[:2], "scatter": []}
    for t, c, z, m in zip(temps, codes, z_by_T, mags):
        pick = rng.choice(len(z), min(keep, len(z)), replace=False)
        arts["scatter"].append({"T": float(t), "mu": c[0][pick], "z1": z[pick], "m": m[pick]})
    return out, arts


def finite_size(results: list[dict]) -> dict:
    """Finite-size trend of the latent Tc (and of the MCMC chi peak): weighted least squares
    of Tc(L) = Tc_inf + a / L (nu = 1 for 2D Ising), errors from the fit covariance (scaled by
    the reduced chi² when it exceeds 1 and there are more than two sizes)."""
    def fit(Ls, tc, err):
        Ls, tc, err = np.asarray(Ls, float), np.asarray(tc, float), np.asarray(err, float)
        w = 1.0 / np.maximum(err, 1e-6) ** 2
        A = np.column_stack([np.ones_like(Ls), 1.0 / Ls])
        cov = np.linalg.inv(A.T @ (A * w[:, None]))
        p = cov @ (A.T @ (w * tc))
        dof = len(Ls) - 2
        if dof > 0:
            chi2 = float(np.sum(w * (tc - A @ p) ** 2)) / dof
            cov = cov * max(1.0, chi2)
        return {"tc_inf": float(p[0]), "tc_inf_error": float(np.sqrt(cov[0, 0])),
                "slope": float(p[1]), "slope_error": float(np.sqrt(cov[1, 1]))}

    rows = sorted((r for r in results if r.get("latent", {}).get("tc_estimate") is not None),
                  key=lambda r: r["L"])
    out = {"L": [r["L"] for r in rows], "exact_tc": float(TC),
           "tc_estimate": [r["latent"]["tc_estimate"] for r in rows],
           "tc_error": [r["latent"]["tc_error"] for r in rows],
           "mcmc_chi_peak": [r["latent"]["mcmc_chi_peak"]["tc_estimate"] for r in rows],
           "mcmc_chi_peak_error": [r["latent"]["mcmc_chi_peak"]["tc_error"] for r in rows],
           "reports": [r.get("report_dir") for r in rows],
           "method": "Tc(L) = Tc_inf + a/L, weighted least squares (nu = 1)"}
    if len(set(out["L"])) >= 2:
        out["extrapolation"] = fit(out["L"], out["tc_estimate"], out["tc_error"])
        out["mcmc_extrapolation"] = fit(out["L"], out["mcmc_chi_peak"],
                                        out["mcmc_chi_peak_error"])
    return out


# ============================================================================ cost
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
    tau_reliable: the run is at least 100 tau long (shorter runs underestimate tau)."""
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
def generator_seconds(model, T: float, prior: str, codes, mode, n: int = 1024,
                      threads: Optional[int] = None) -> float:
    """Wall seconds per sample of generate() in batches, with ``threads`` torch threads."""
    old = torch.get_num_threads()
    if threads:
        torch.set_num_threads(threads)
    try:
        generate(model, T, min(n, 64), prior, codes, mode)              # warm-up
        return _timed(lambda: generate(model, T, n, prior, codes, mode, seed=1)) / n
    finally:
        torch.set_num_threads(old)


def cost_analysis(per_T: list[dict], mc: list[dict], train_seconds: Optional[float],
                  source: str, file_alg: str) -> dict:
    """Seconds per independent sample per T and the break-even sample counts.

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


# ============================================================================ driver
def _rows_for(info, temperatures=None, tmin=None, tmax=None) -> list[int]:
    return select_rows(info.temperatures, temperatures, tmin, tmax, source=repr(info.path))


def evaluate_model(model, data_path, n_samples: int = 2000, *, extra: Optional[dict] = None,
                   temperatures=None, tmin=None, tmax=None, split: str = "heldout",
                   prior: Optional[str] = None, mode: Optional[str] = None, seed: int = 0,
                   latent: bool = True, cost: bool = False, cost_sweeps: int = 4000,
                   train_seconds: Optional[float] = None, train_seconds_source: str = "",
                   pictures: bool = False, out=None, loss_rows=None,
                   progress: Optional[Callable[[str], None]] = None, nmcmc_file=None,
                   nmcmc_steps: int = 0, nmcmc_k: int = 4) -> dict:
    """The metrics dict (see the module doc) of ``model`` on the run file ``data_path``.
    nmcmc_file (a file of python -m ising_dist.nmcmc) or nmcmc_steps > 0 (chains run here)
    adds the "nmcmc" section (ising_dist.neural_cost.evaluate_nmcmc; k: VAE codes).

    model: a loaded model (ising_dist.models) or any object with .cfg.L and
    .sample(n, T, mode=, generator=); extra: its model file's extra (the training split).
    pictures=True draws the PNGs and index.html into ``out`` (ising_dist.report)."""
    say = progress or (lambda s: None)
    t_start = time.perf_counter()
    extra = extra or {}
    if split not in SPLITS:
        raise ValueError(f"split={split!r}: choose one of {', '.join(SPLITS)}")
    if n_samples < 2:
        raise ValueError(f"n_samples={n_samples}: generate at least 2 samples (e.g. 2000)")
    info = inspect(data_path)
    L = info.L
    if int(model.cfg.L) != L:
        trained = (extra.get("data") or {}).get("path", "the file it was trained on")
        raise ValueError(f"the model is for L={model.cfg.L} lattices but {data_path} holds "
                         f"L={L}; evaluate it on a file with L={model.cfg.L} (e.g. {trained})")
    prior = prior or default_prior(model)
    if prior not in PRIORS:
        raise ValueError(f"prior={prior!r}: choose one of {', '.join(PRIORS)}")
    if prior != "normal" and not has_encoder(model):
        raise ValueError(f"prior={prior!r} needs an encoder; family "
                         f"{getattr(model.cfg, 'family', '?')!r} samples its noise from "
                         f"'normal'")
    if hasattr(model, "eval"):
        model.eval()
    rows = _rows_for(info, temperatures, tmin, tmax)
    sp = resolve_split(info, extra)
    h0, h1 = sp[split]
    if h1 - h0 < 8:
        raise DataError(f"{data_path}: only {h1 - h0} {split} samples per temperature; "
                        f"sample longer (python -m ising_dist.pt --sweeps …)")
    trained_T = [float(t) for t in (extra.get("data") or {}).get("temperatures", [])]
    warns: list[str] = []
    per_T, arts = [], {"mcmc": [], "generated": [], "heldout": [], "mags": []}
    with open_read(data_path) as f:
        sweeps = f["sweep"][:info.n_samples]
        spacing = float(np.median(np.diff(sweeps))) if len(sweeps) > 1 else 1.0
        try:
            file_alg = str(stored_config(f).get("algorithm", "metropolis"))
        except Exception:  # noqa: BLE001 — a file without a readable config: assume the default
            file_alg = "metropolis"
        a, b = sp["train"]
        train_hashes = np.concatenate(
            [config_hashes(f["spins"][r, i:min(i + 8192, b)])
             for r in range(len(info.temperatures)) if
             not trained_T or any(abs(info.temperatures[r] - t) <= T_MATCH * t
                                  for t in trained_T) for i in range(a, b, 8192)]
            or [np.zeros(0, np.uint64)])
        train_hashes.sort()
        for j, r in enumerate(rows):
            T = float(info.temperatures[r])
            say(f"T={T:.4f} ({j + 1}/{len(rows)}): generating {n_samples} samples …")
            spins = f["spins"][r, h0:h1]
            e, m = f["energy"][r, h0:h1], f["magnetization"][r, h0:h1]
            codes, fit_s = None, 0.0
            if prior != "normal":
                step = max(1, (b - a) // MAX_FIT)
                t0 = time.perf_counter()
                codes = _encode(model, f["spins"][r, a:b:step], T)
                fit_s = time.perf_counter() - t0
            t0 = time.perf_counter()
            gen = generate(model, T, n_samples, prior, codes, mode, seed=seed * 7919 + r)
            gen_s = (time.perf_counter() - t0) / n_samples
            with warnings.catch_warnings(record=True) as caught:
                warnings.simplefilter("always")
                p = compare_temperature(T, L, e, m, spins, gen, spacing)
            warns += [f"T={T:.4f}: {w.message}" for w in caught]
            p["trained_on"] = (not trained_T) or any(abs(T - t) <= T_MATCH * T
                                                     for t in trained_T)
            copies = np.isin(config_hashes(gen), train_hashes)
            p["memorization"] = {
                "generated_copy_fraction": float(copies.mean()),
                "mcmc_copy_fraction": float(np.isin(config_hashes(spins), train_hashes).mean()),
                "n_train_configs": int(len(train_hashes))}
            p["cost"] = {"s_per_sample": gen_s, "prior_fit_seconds": fit_s}
            if cost:
                p["cost"]["s_per_sample_1thread"] = generator_seconds(
                    model, T, prior, codes, mode, min(n_samples, 1024), threads=1)
            per_T.append(p)
            arts["mcmc"].append(spins[np.linspace(0, len(spins) - 1, 16).astype(int)])
            arts["generated"].append(gen[:16])
            keep = np.unique(np.linspace(0, len(spins) - 1, min(len(spins), MAX_LATENT))
                             .astype(int))                  # time order kept (bootstrap blocks)
            arts["heldout"].append(spins[keep])
            arts["mags"].append(np.asarray(m)[keep])
            say(f"T={T:.4f}: <e> mcmc {p['mcmc']['e'][0]:.4f} gen {p['generated']['e'][0]:.4f}"
                f"  w1_e {p['w1_e']:.4g} (floor {p['noise_floor']['w1_e']:.3g})  w1_|m| "
                f"{p['w1_abs_m']:.4g} (floor {p['noise_floor']['w1_abs_m']:.3g})  "
                f"m>0 {p['z2']['generated_frac_m_pos']:.2f}  copies "
                f"{p['memorization']['generated_copy_fraction']:.3f}")
    temps = [p["T"] for p in per_T]
    metrics = {
        "L": L, "model": dict(model.cfg.to_dict()) if hasattr(model.cfg, "to_dict") else {},
        "family": getattr(model.cfg, "family", None), "data": os.path.abspath(data_path),
        "generation": {"prior": prior if has_encoder(model) else "normal",
                       "mode": mode or getattr(model.cfg, "sample_mode", None),
                       "n_samples": int(n_samples), "seed": int(seed)},
        "split": {"evaluated": split, "range": [int(h0), int(h1)], "source": sp["source"],
                  "train": list(sp["train"]), "val": list(sp["val"]), "test": list(sp["test"]),
                  "same_file_as_training": sp["same_file_as_training"],
                  "sweeps_between_samples": spacing},
        "exact_tc": float(TC), "per_temperature": per_T}
    metrics["fidelity"] = _finite(physics_fidelity(metrics))
    metrics["fidelity_definition"] = physics_fidelity.__doc__.split("(")[0].strip()
    metrics["verdicts"], metrics["verdict_statistics"] = verdicts(per_T)
    latent_arts = None
    if latent and has_encoder(model) and len(rows) >= 3:
        say("latent space: encoding held-out configurations …")
        metrics["latent"], latent_arts = latent_analysis(
            model, temps, arts["heldout"], arts["mags"], L, seed)
        lt = metrics["latent"]
        say(f"latent Tc {lt['tc_estimate']:.4f} ± {lt['tc_error']:.4f} (exact {TC:.6f}; MCMC "
            f"chi peak {lt['mcmc_chi_peak']['tc_estimate']:.4f}); corr(z1, m) "
            f"{lt['corr_z1_m']:.3f}")
    else:
        why = ("family has no encoder" if not has_encoder(model) else
               "needs at least 3 temperatures" if len(rows) < 3 else "not requested")
        metrics["latent"] = {"tc_estimate": None, "tc_error": None, "method": f"none: {why}"}
    if cost:
        say(f"cost: Metropolis and Wolff at {len(temps)} temperatures, {cost_sweeps} sweeps "
            f"each …")
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)
            mc = mcmc_cost(L, temps, cost_sweeps, seed)
        metrics["cost"] = cost_analysis(per_T, mc, train_seconds, train_seconds_source,
                                        file_alg)
        metrics["cost"]["torch_threads"] = torch.get_num_threads()
        neural_cost.label_biased(metrics, BIAS_RATIO)   # wrong samples get no speed-up
    else:
        mc = None
        metrics["cost"] = {"train_seconds": train_seconds, "note": "not measured"}
    if nmcmc_file is not None or nmcmc_steps > 0:
        metrics["nmcmc"] = neural_cost.evaluate_nmcmc(
            model, metrics, nmcmc_file, nmcmc_steps, nmcmc_k, seed, mc, train_seconds,
            progress=say)
    metrics["warnings"] = sorted(set(warns))
    metrics["seconds"] = time.perf_counter() - t_start
    if pictures:
        from . import report
        if out is None:
            raise ValueError("pictures=True needs out (the report directory)")
        metrics["pictures"] = report.draw_all(Path(out), metrics, model, arts, latent_arts,
                                              loss_rows or [])
    return metrics


def _json_safe(x):
    if isinstance(x, dict):
        return {str(k): _json_safe(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_json_safe(v) for v in x]
    if isinstance(x, (np.integer,)):
        return int(x)
    if isinstance(x, (float, np.floating)):
        return float(x) if math.isfinite(x) else None
    if isinstance(x, np.ndarray):
        return _json_safe(x.tolist())
    return x


def write_metrics(path, metrics: dict) -> None:
    Path(path).write_text(json.dumps(_json_safe(metrics), indent=1, allow_nan=False))


def run(data, model_path, out="report", n_samples: int = 2000, pictures: bool = True,
        progress: Optional[Callable[[str], None]] = print, tune_results=None, **kw) -> dict:
    """Evaluate one (file, run) pair into ``out``: metrics.json, pictures, index.html."""
    loaded = load_run(model_path)
    out = Path(out)
    metrics = evaluate_model(loaded["model"], data, n_samples, extra=loaded["extra"],
                             train_seconds=loaded["train_seconds"],
                             train_seconds_source=loaded["train_seconds_source"],
                             pictures=pictures, out=out, loss_rows=loaded["loss_rows"],
                             progress=progress, **kw)
    metrics["model_path"] = loaded["model_path"]
    metrics["report_dir"] = str(out)
    out.mkdir(parents=True, exist_ok=True)              # only once there is something to write
    if pictures and tune_results:
        from . import report
        metrics["pictures"].append(report.tune_heatmap(tune_results, out / "tune_heatmap.png"))
    write_metrics(out / "metrics.json", metrics)
    if pictures:
        from . import report
        report.write_html(out, metrics)
    return metrics


def score_trial(row: dict, n_samples: int = 1000) -> float:
    """A Tune scorer (``register_scorer("physics", score_trial)``): physics_fidelity of the
    trial's final model on its training file's validation split (the test split stays
    untouched by model selection). Lower is better."""
    loaded = load_run(row["model"])
    m = evaluate_model(loaded["model"], row["data"], n_samples, extra=loaded["extra"],
                       split="val", cost=False, latent=False)
    return physics_fidelity(m)


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m ising_dist.evaluate",
                                description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", nargs="+", required=True,
                   help="HDF5 run file(s) of python -m ising_dist.pt")
    p.add_argument("--model", nargs="+", required=True,
                   help="run directory(ies) of python -m ising_dist.train or model.pt file(s),"
                        " one per --data file")
    p.add_argument("--out", default="report", help="report directory (default: report/)")
    p.add_argument("--samples", type=int, default=2000,
                   help="generated configurations per temperature (default 2000)")
    p.add_argument("--temperatures", help="evaluate only these ladder temperatures T1,T2,…")
    p.add_argument("--tmin", type=float)
    p.add_argument("--tmax", type=float)
    p.add_argument("--split", choices=SPLITS, default="heldout",
                   help="MCMC reference: heldout (val+test, default), val or test")
    p.add_argument("--prior", choices=PRIORS,
                   help="codes of unconditional models (default fitted; see module doc)")
    p.add_argument("--mode", choices=("bernoulli", "sign"),
                   help="draw spins (default: the model's sample_mode)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--cost-sweeps", type=int, default=4000, dest="cost_sweeps",
                   help="sweeps of the Metropolis / Wolff timing runs per temperature")
    p.add_argument("--no-cost", action="store_true", help="skip the cost measurements")
    p.add_argument("--nmcmc", metavar="FILE",
                   help="output of python -m ising_dist.nmcmc for this model: judge its chains")
    p.add_argument("--nmcmc-steps", type=int, default=2000, dest="nmcmc_steps",
                   help="without --nmcmc: neural MCMC proposals per T run here for models "
                        "with a likelihood (default 2000; 0: none)")
    p.add_argument("--nmcmc-k", type=int, default=4, dest="nmcmc_k",
                   help="codes per proposal of the VAE pseudo-marginal estimate (default 4)")
    p.add_argument("--no-pictures", action="store_true", help="write metrics.json only")
    p.add_argument("--tune", help="results.csv of python -m ising_dist.tune: add its heatmap")
    return p.parse_args(argv)


def main(argv=None) -> int:
    args = parse_args(argv)
    try:
        if len(args.data) != len(args.model):
            raise ValueError(f"{len(args.data)} --data file(s) but {len(args.model)} --model(s);"
                             f" give one model per data file (same order)")
        temps = None
        if args.temperatures:
            try:
                temps = [float(t) for t in args.temperatures.replace(",", " ").split()]
            except ValueError:
                raise ValueError(f"--temperatures {args.temperatures!r}: give numbers, e.g. "
                                 f"--temperatures 2.0,2.27") from None
        if args.cost_sweeps < 100:
            raise ValueError(f"--cost-sweeps {args.cost_sweeps}: use at least 100")
        if args.nmcmc is not None and not Path(args.nmcmc).is_file():
            raise ValueError(f"--nmcmc {args.nmcmc!r} does not exist; give the file written "
                             f"by `python -m ising_dist.nmcmc` for this model")
        if args.nmcmc_steps < 0 or args.nmcmc_k < 1:
            raise ValueError(f"--nmcmc-steps {args.nmcmc_steps} / --nmcmc-k {args.nmcmc_k}: "
                             f"steps must be ≥ 0 (0: no neural MCMC), k ≥ 1")
        for d in args.data:
            if not Path(d).is_file():
                raise ValueError(f"--data {d!r} does not exist; give the HDF5 file written by "
                                 f"`python -m ising_dist.pt`")
        kw = dict(temperatures=temps, tmin=args.tmin, tmax=args.tmax, split=args.split,
                  prior=args.prior, mode=args.mode, seed=args.seed, cost=not args.no_cost,
                  cost_sweeps=args.cost_sweeps, pictures=not args.no_pictures,
                  tune_results=args.tune, nmcmc_file=args.nmcmc,
                  nmcmc_steps=0 if args.nmcmc else args.nmcmc_steps, nmcmc_k=args.nmcmc_k)
        out = Path(args.out)
        results = []
        for d, mp in zip(args.data, args.model):
            sub = out
            if len(args.data) > 1:
                sub = out / f"{len(results)}_{Path(d).stem}"
                print(f"== {d} with {mp} → {sub}", flush=True)
            m = run(d, mp, sub, args.samples, progress=lambda s: print(s, flush=True), **kw)
            results.append(m)
            print(f"report: {(sub / ('index.html' if kw['pictures'] else 'metrics.json'))}"
                  f"  (physics fidelity {m['fidelity']})", flush=True)
            print("\n".join(f"verdict: {v}" for v in m["verdicts"]) or
                  f"verdict: no bias, T-dependence or diversity problem found (W1 within "
                  f"{BIAS_RATIO:g} noise floors at every T)", flush=True)
        if len(results) > 1:
            fss = finite_size(results)
            write_metrics(out / "finite_size.json", fss)
            if kw["pictures"]:
                from . import report
                report.write_fss(out, fss)
            ext = fss.get("extrapolation")
            if ext:
                print(f"finite-size extrapolation of the latent Tc: {ext['tc_inf']:.4f} ± "
                      f"{ext['tc_inf_error']:.4f} (exact {TC:.6f})", flush=True)
            print(f"report: {out / ('index.html' if kw['pictures'] else 'finite_size.json')}",
                  flush=True)
    except (ValueError, ConfigError, StoreError, FileNotFoundError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
