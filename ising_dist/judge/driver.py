"""The judge's driver: one model on one run file, every section of the metrics, then the report.

For every temperature T of the file (or the chosen subset), with N = L² spins:
  mcmc        held-out samples of the file (default "heldout": everything after the training
              range, i.e. validation + test, read from the model file's split), a time series;
  generated   ``n_samples`` i.i.d. configurations of the model at T (ising_dist.models.generate).
              Conditional models (cvae, GANs) sample at T; unconditional ones (ae, vae) sample
              the codes of that T's training configurations (DESIGN.md): prior "fitted" (a
              diagonal Gaussian fitted to them by the model's fit_prior, seed 001; default),
              "aggregate" (the mixture of their posteriors) or "normal" (N(0, 1): T-independent);
  compared    by judge.compare: observables with errors, W1 against the noise floor, z-scores,
              Z2 balance, histograms, G(r), diversity; here also memorization (fraction of
              generated configurations identical to a training configuration of any T; the same
              fraction for held-out MCMC is the baseline a perfect sampler would show).
Across the ladder: fidelity and verdicts (judge.compare), latent (judge.latent: models with an
encoder), embedding (judge.embedding: PCA of the configurations, t-SNE of configurations and
codes), cost (judge.cost: seconds per independent sample, generator vs Metropolis / Wolff / the
file's PT run), nmcmc (judge.neural_mcmc: models with a likelihood as proposals of an exact MH
chain), and the pictures and index.html (judge.report).

Outputs (out/): metrics.json (shape below), PNG pictures and index.html.
    {"L", "model": {config}, "per_temperature": [{"T", "mcmc": {"e": [mean, err], "abs_m",
     "C", "chi", "U4", …}, "generated": {…}, "w1_e", "w1_abs_m", "noise_floor": {"w1_e",
     "w1_abs_m"}, "z", "z2", "memorization", "diversity", "histograms", "G", …}], "fidelity",
     "verdicts": [sentence, …], "verdict_statistics": {…},
     "latent": {"tc_estimate", "tc_error", "method", …}, "embedding": {"pca": {…},
     "tsne": {…}}, "cost": {…}, …}
Non-finite numbers are written as null. In-process use (ising_dist.tune): evaluate_model,
physics_fidelity (judge.compare), score_trial.

Device (``device``: "cpu", "cuda", "cuda:N"; ``--device``): the model is moved there and
generation, encoding (prior fit, latent analysis, pictures) and neural-MCMC proposals run
there; what the sections measure comes back to the CPU as numpy. Generation's torch generator
lives on that device, so a cuda run's samples differ from a cpu run's of the same seed (other
random streams) while its physics must agree within the error bars. The generator's seconds
(cost) are then the GPU's; Metropolis / Wolff stay on the CPU.
"""
from __future__ import annotations

import csv
import json
import math
import os
import time
import warnings
from pathlib import Path
from typing import Callable, Optional

import numpy as np
import torch

from ..data import DataError, inspect, select_rows, split_bounds
from ..exact import TC
from ..models import generate, has_encoder, load_model
from ..models.vae import FITTED_PRIORS, SAMPLE_PRIORS
from ..nmcmc import torch_device
from ..store import open_read, stored_config
from . import cost as cost_mod
from . import embedding as embedding_mod
from .compare import (BIAS_RATIO, compare_temperature, config_hashes, finite, physics_fidelity,
                      same_temperature, verdicts)
from .config import SPLITS
from .latent import latent_analysis
from .neural_mcmc import evaluate_nmcmc

MAX_FIT = 5000          # training configurations encoded per T to fit the generating prior
MAX_LATENT = 4096       # held-out configurations per T kept for the latent analysis
HASH_BLOCK = 8192       # training configurations hashed per HDF5 read


# ============================================================================ loading
def load_run(path) -> dict:
    """A run directory (model.pt, metrics.csv) or a model file → {"model", "extra",
    "model_path", "loss_rows", "train_seconds", "train_seconds_source"}; ValueError naming the
    path when it is neither."""
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


def default_prior(model) -> str:
    """Unconditional models with an encoder sample their codes of that T (DESIGN.md);
    conditional ones their config's prior; models without an encoder their noise, "normal"."""
    if not has_encoder(model):
        return "normal"
    return model.cfg.prior if model.cfg.conditional else "fitted"


# ============================================================================ pieces
def _trained_on(T: float, trained_T: list[float]) -> bool:
    """Whether T is one of the training temperatures (all are, when the model file names none)."""
    return not trained_T or any(same_temperature(T, t) for t in trained_T)


def _train_hashes(f, temps, train: tuple[int, int], trained_T: list[float]) -> np.ndarray:
    """Sorted hashes (compare.config_hashes) of every training configuration the model saw."""
    a, b = train
    hashes = [config_hashes(f["spins"][r, i:min(i + HASH_BLOCK, b)])
              for r in range(len(temps)) if _trained_on(float(temps[r]), trained_T)
              for i in range(a, b, HASH_BLOCK)]
    out = np.concatenate(hashes or [np.zeros(0, np.uint64)])
    out.sort()
    return out


def _fit_prior(model, f, rows: list[int], temps, train: tuple[int, int]) -> list[float]:
    """Fit the model's prior (model.fit_prior) to the codes of up to MAX_FIT training
    configurations at each evaluated temperature; returns the encoding seconds per row."""
    a, b = train
    step = max(1, (b - a) // MAX_FIT)
    mus, lvs, ts, secs = [], [], [], []
    for r in rows:
        T = float(temps[r])
        t0 = time.perf_counter()
        mu, lv = model.encode_spins(f["spins"][r, a:b:step], T)
        secs.append(time.perf_counter() - t0)
        mus.append(mu)
        lvs.append(lv)
        ts.append(np.full(len(mu), T, np.float32))
    model.fit_prior(np.concatenate(mus), torch.from_numpy(np.concatenate(ts)),
                    None if lvs[0] is None else np.concatenate(lvs))
    return secs


def _check(model, info, data_path, extra: dict, split: str, n_samples: int,
           prior: Optional[str]) -> str:
    """The prior to use; ValueError naming the bad argument and its fix."""
    if split not in SPLITS:
        raise ValueError(f"split={split!r}: choose one of {', '.join(SPLITS)}")
    if n_samples < 2:
        raise ValueError(f"n_samples={n_samples}: generate at least 2 samples (e.g. 2000)")
    if int(model.cfg.L) != info.L:
        trained = (extra.get("data") or {}).get("path", "the file it was trained on")
        raise ValueError(f"the model is for L={model.cfg.L} lattices but {data_path} holds "
                         f"L={info.L}; evaluate it on a file with L={model.cfg.L} (e.g. "
                         f"{trained})")
    prior = prior or default_prior(model)
    if prior not in SAMPLE_PRIORS:
        raise ValueError(f"prior={prior!r}: choose one of {', '.join(SAMPLE_PRIORS)}")
    if prior != "normal" and not has_encoder(model):
        raise ValueError(f"prior={prior!r} needs an encoder; family "
                         f"{getattr(model.cfg, 'family', '?')!r} samples its noise from "
                         f"'normal'")
    return prior


# ============================================================================ driver
def evaluate_model(model, data_path, n_samples: int = 2000, *, extra: Optional[dict] = None,
                   temperatures=None, tmin=None, tmax=None, split: str = "heldout",
                   prior: Optional[str] = None, mode: Optional[str] = None, seed: int = 0,
                   device: str = "cpu", latent: bool = True, cost: bool = False,
                   cost_sweeps: int = 4000,
                   train_seconds: Optional[float] = None, train_seconds_source: str = "",
                   pictures: bool = False, out=None, loss_rows=None,
                   progress: Optional[Callable[[str], None]] = None, nmcmc_file=None,
                   nmcmc_steps: int = 0, nmcmc_k: int = 4, embedding: bool = False,
                   tsne_points: int = 1000) -> dict:
    """The metrics dict (see the module doc) of ``model`` on the run file ``data_path``.

    model: a loaded model (ising_dist.models) or any object with .cfg.L and
    .sample(n, T, mode=, generator=); extra: its model file's extra (the training split).
    Priors "fitted" and "aggregate" fit the model's prior (fit_prior) to the codes of the
    training configurations at the evaluated temperatures: the model keeps that fit.
    nmcmc_file (a file of python -m ising_dist.nmcmc) or nmcmc_steps > 0 (chains run here)
    adds the "nmcmc" section (judge.neural_mcmc; k: VAE codes per proposal); embedding=True
    the "embedding" section (judge.embedding; t-SNE of ``tsne_points`` configurations, 0:
    none). pictures=True draws the PNGs into ``out`` (judge.report). device: "cpu", "cuda"
    or "cuda:N" (see the module doc); the model is moved there (``model.to``) and stays there.
    Errors: ValueError / DataError / StoreError naming the bad argument or file (nmcmc.NMCMCError,
    a ValueError, for a device torch cannot use, before any work)."""
    say = progress or (lambda s: None)
    t_start = time.perf_counter()
    dev = torch_device(device)
    if hasattr(model, "to"):
        model.to(dev)
    extra = extra or {}
    info = inspect(data_path)
    L = info.L
    prior = _check(model, info, data_path, extra, split, n_samples, prior)
    if hasattr(model, "eval"):
        model.eval()
    rows = select_rows(info.temperatures, temperatures, tmin, tmax, source=repr(info.path))
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
        train_hashes = _train_hashes(f, info.temperatures, sp["train"], trained_T)
        fit_s = [0.0] * len(rows)
        if has_encoder(model) and prior in FITTED_PRIORS:
            say(f"prior {prior!r}: encoding training configurations at {len(rows)} "
                f"temperatures …")
            fit_s = _fit_prior(model, f, rows, info.temperatures, sp["train"])
        for j, r in enumerate(rows):
            T = float(info.temperatures[r])
            say(f"T={T:.4f} ({j + 1}/{len(rows)}): generating {n_samples} samples …")
            spins = f["spins"][r, h0:h1]
            e, m = f["energy"][r, h0:h1], f["magnetization"][r, h0:h1]
            t0 = time.perf_counter()
            gen = generate(model, T, n_samples, prior if has_encoder(model) else None, mode,
                           seed=seed * 7919 + r)
            gen_s = (time.perf_counter() - t0) / n_samples
            with warnings.catch_warnings(record=True) as caught:
                warnings.simplefilter("always")
                p = compare_temperature(T, L, e, m, spins, gen, spacing)
            warns += [f"T={T:.4f}: {w.message}" for w in caught]
            p["trained_on"] = _trained_on(T, trained_T)
            p["memorization"] = {
                "generated_copy_fraction": float(np.isin(config_hashes(gen),
                                                         train_hashes).mean()),
                "mcmc_copy_fraction": float(np.isin(config_hashes(spins), train_hashes).mean()),
                "n_train_configs": int(len(train_hashes))}
            p["cost"] = {"s_per_sample": gen_s, "prior_fit_seconds": fit_s[j]}
            if cost:
                p["cost"]["s_per_sample_1thread"] = cost_mod.generator_seconds(
                    model, T, prior if has_encoder(model) else None, mode,
                    min(n_samples, 1024), threads=1)
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
                       "n_samples": int(n_samples), "seed": int(seed), "device": str(dev)},
        "split": {"evaluated": split, "range": [int(h0), int(h1)], "source": sp["source"],
                  "train": list(sp["train"]), "val": list(sp["val"]), "test": list(sp["test"]),
                  "same_file_as_training": sp["same_file_as_training"],
                  "sweeps_between_samples": spacing},
        "exact_tc": float(TC), "per_temperature": per_T}
    metrics["fidelity"] = finite(physics_fidelity(metrics))
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
    embedding_arts = None
    if embedding:
        say(f"embedding: PCA of the configurations{', t-SNE' if tsne_points else ''} …")
        metrics["embedding"], embedding_arts = embedding_mod.embedding_analysis(
            temps, arts["heldout"], arts["mags"],
            latent_arts["codes"] if latent_arts is not None else None, tsne_points, seed)
        say(f"PCA: first component explains "
            f"{metrics['embedding']['pca']['explained_variance_ratio'][0]:.3f} of the variance;"
            f" corr(PC1, m) {metrics['embedding']['pca']['corr_pc1_m']:.3f}")
    if cost:
        say(f"cost: Metropolis and Wolff at {len(temps)} temperatures, {cost_sweeps} sweeps "
            f"each …")
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)
            mc = cost_mod.mcmc_cost(L, temps, cost_sweeps, seed)
        metrics["cost"] = cost_mod.cost_analysis(per_T, mc, train_seconds, train_seconds_source,
                                                 file_alg)
        metrics["cost"]["torch_threads"] = torch.get_num_threads()
        cost_mod.label_biased(metrics, BIAS_RATIO)      # wrong samples get no speed-up
    else:
        mc = None
        metrics["cost"] = {"train_seconds": train_seconds, "note": "not measured"}
    if nmcmc_file is not None or nmcmc_steps > 0:
        metrics["nmcmc"] = evaluate_nmcmc(model, metrics, nmcmc_file, nmcmc_steps, nmcmc_k,
                                          seed, mc, train_seconds, progress=say)
    metrics["warnings"] = sorted(set(warns))
    metrics["seconds"] = time.perf_counter() - t_start
    if pictures:
        from . import report
        if out is None:
            raise ValueError("pictures=True needs out (the report directory)")
        metrics["pictures"] = report.draw_all(Path(out), metrics, model, arts, latent_arts,
                                              loss_rows or [], embedding_arts)
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
    """metrics as JSON at path (non-finite numbers as null, numpy values as Python ones)."""
    Path(path).write_text(json.dumps(_json_safe(metrics), indent=1, allow_nan=False))


def run(data, model_path, out="report", n_samples: int = 2000, pictures: bool = True,
        progress: Optional[Callable[[str], None]] = print, tune_results=None, **kw) -> dict:
    """Evaluate one (file, run) pair into ``out``: metrics.json, pictures, index.html.
    kw: evaluate_model's keyword arguments (cost, latent, embedding, nmcmc_file, …)."""
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
