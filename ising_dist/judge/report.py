"""Pictures (PNG, matplotlib Agg) and the HTML page of an evaluation (the judge's report).

Units: T in J/k_B, e in J per spin, m per spin (dimensionless), C per spin in k_B, chi per
spin in 1/J. Every function writes into the report directory and returns the file name.
Reads the metrics dict of ising_dist.judge.driver and the model; imports nothing of the judge.
    draw_all(out, metrics, model, arts, latent_arts, loss_rows) -> [file names]
    write_html(out, metrics)            index.html: tables and pictures
    write_fss(out, finite_size)         fss.png + index.html of several sizes
    tune_heatmap(results_csv, png, metric="score")   latent_dim × kl_weight of a Tune search
"""
from __future__ import annotations

import csv
import html
import math
import os
from pathlib import Path
from typing import Optional

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402

from .. import exact  # noqa: E402
from ..models import has_encoder  # noqa: E402

MCMC_C, GEN_C, EXACT_C = "tab:blue", "tab:red", "0.25"
DPI = 110
LABELS = {"e": r"$\langle e\rangle$ (J per spin)", "abs_m": r"$\langle |m|\rangle$",
          "C": r"$C = N\,\mathrm{Var}(e)/T^2$ ($k_B$ per spin)",
          "chi": r"$\chi = N\,\mathrm{Var}(|m|)/T$", "U4": r"Binder $U_4$"}
T_LABEL = r"temperature $T$ ($J/k_B$)"


def _save(fig, out: Path, name: str) -> str:
    fig.savefig(out / name, dpi=DPI, bbox_inches="tight")
    plt.close(fig)
    return name


def _tc_line(ax, label=True):
    ax.axvline(exact.TC, color="0.5", ls=":", lw=1, label=r"exact $T_c$" if label else None)


def _pick(temps, k=4) -> list[int]:
    """Indices of about k temperatures: both ends, the one nearest Tc, then evenly spread."""
    n = len(temps)
    idx = {0, n - 1, int(np.argmin(np.abs(np.asarray(temps) - exact.TC)))}
    for i in np.linspace(0, n - 1, k + 2).round().astype(int)[1:-1]:
        if len(idx) < min(k, n):
            idx.add(int(i))
    return sorted(idx)


# ------------------------------------------------------------------------------ physics
def observables(out: Path, metrics: dict) -> str:
    pts, L = metrics["per_temperature"], metrics["L"]
    T = np.array([p["T"] for p in pts])
    fine = np.linspace(T.min() * 0.97, T.max() * 1.03, 300)
    exact_L = {"e": exact.kaufman_energy(fine, L), "C": exact.kaufman_specific_heat(fine, L)}
    inf = {"e": exact.onsager_energy(fine), "C": exact.onsager_specific_heat(fine),
           "abs_m": exact.onsager_magnetization(fine)}
    fig, axes = plt.subplots(2, 3, figsize=(13, 7.5))
    for ax, k in zip(axes.flat, ("e", "abs_m", "C", "chi", "U4")):
        for src, c, mk, off in (("mcmc", MCMC_C, "o", -0.004), ("generated", GEN_C, "s", 0.004)):
            v = np.array([[np.nan if x is None else x for x in p[src][k]] for p in pts], float)
            ax.errorbar(T * (1 + off), v[:, 0], yerr=v[:, 1], fmt=mk, ms=4, color=c, capsize=2,
                        label="MCMC (held-out)" if src == "mcmc" else "generated")
        if k in exact_L:
            ax.plot(fine, exact_L[k], color=EXACT_C, lw=1.2, label=f"exact, L={L} (Kaufman)")
        if k in inf:
            ax.plot(fine, np.minimum(inf[k], 10 * np.nanmax(exact_L.get(k, [1])) if k == "C"
                                     else inf[k]),
                    color=EXACT_C, lw=1, ls="--", label=r"exact, $L=\infty$ (Onsager/Yang)")
        _tc_line(ax)
        ax.set_xlabel(T_LABEL)
        ax.set_ylabel(LABELS[k])
        if k in ("C", "chi"):
            top_m = max(p["mcmc"][k][0] or 0 for p in pts)
            top_g = max(p["generated"][k][0] or 0 for p in pts)
            if top_g > 5 * top_m > 0:              # keep MCMC vs exact readable beside it
                ax.set_yscale("log")
                ax.set_ylim(0.3 * min(p["mcmc"][k][0] or top_m for p in pts), 2 * top_g)
            elif k == "C":
                ax.set_ylim(0, 1.3 * max(np.nanmax(exact_L["C"]), top_m, top_g))
    axes[0, 0].legend(fontsize=8)
    axes[0, 1].legend(fontsize=8)
    ax = axes[1, 2]
    ax.semilogy(T, [p["w1_e_over_floor"] for p in pts], "o-", label=r"$W_1(e)$ / noise floor")
    ax.semilogy(T, [p["w1_abs_m_over_floor"] for p in pts], "s-",
                label=r"$W_1(|m|)$ / noise floor")
    ax.axhline(1, color="k", lw=0.8)
    ax.set_xlabel(T_LABEL)
    ax.set_ylabel("distance to MCMC / MCMC-vs-MCMC floor")
    ax.legend(fontsize=8)
    _tc_line(ax, False)
    fig.suptitle(f"Observables vs T, L={L}: MCMC (held-out, error bars) vs generated "
                 f"({metrics['family']}); lines: exact")
    fig.tight_layout()
    return _save(fig, out, "observables.png")


def distances(out: Path, metrics: dict) -> str:
    pts = metrics["per_temperature"]
    T = [p["T"] for p in pts]
    fig, axes = plt.subplots(1, 2, figsize=(11, 4))
    for ax, k, name in ((axes[0], "w1_e", "e (J per spin)"), (axes[1], "w1_abs_m", "|m|")):
        ax.semilogy(T, [p[k] for p in pts], "o-", color=GEN_C, label="generated vs MCMC")
        ax.semilogy(T, [max(p["noise_floor"][k] or 0, 1e-6) for p in pts], "s--",
                    color=MCMC_C, label="noise floor: MCMC half vs MCMC half")
        _tc_line(ax)
        ax.set_xlabel(T_LABEL)
        ax.set_ylabel(f"Wasserstein-1 distance of {name}")
        ax.legend(fontsize=8)
    n = pts[0]["noise_floor"]["n_compared"]
    fig.suptitle(f"Distances to held-out MCMC at equal sample count ({n} per comparison)")
    fig.tight_layout()
    return _save(fig, out, "distances.png")


def histograms(out: Path, metrics: dict) -> str:
    pts = metrics["per_temperature"]
    idx = _pick([p["T"] for p in pts])
    fig, axes = plt.subplots(len(idx), 2, figsize=(10, 2.4 * len(idx)), squeeze=False)
    for row, i in zip(axes, idx):
        p = pts[i]
        for ax, k, xl in ((row[0], "e", "e (J per spin)"), (row[1], "abs_m", "|m|")):
            h = p["histograms"][k]
            edges = np.array(h["edges"])
            ax.stairs(h["mcmc"], edges, color=MCMC_C, lw=1.5, label="MCMC (held-out)")
            ax.stairs(h["generated"], edges, color=GEN_C, lw=1.5, ls="--", label="generated")
            ax.set_xlabel(xl)
            ax.set_ylabel("fraction of samples")
            ax.set_title(f"T = {p['T']:.3f}: {k.replace('abs_m', '|m|')}  (W1 = "
                         f"{p['w1_' + k]:.3g}, floor {p['noise_floor']['w1_' + k]:.3g})",
                         fontsize=9)
        row[0].legend(fontsize=8)
    fig.tight_layout()
    return _save(fig, out, "histograms.png")


def correlation(out: Path, metrics: dict) -> str:
    pts = metrics["per_temperature"]
    idx = _pick([p["T"] for p in pts])
    fig, ax = plt.subplots(figsize=(6.5, 4.5))
    colors = plt.cm.viridis(np.linspace(0, 0.9, len(idx)))
    for c, i in zip(colors, idx):
        g = pts[i]["G"]
        ax.plot(g["r"], g["mcmc"], "o-", color=c, label=f"T={pts[i]['T']:.3f} MCMC")
        ax.plot(g["r"], g["generated"], "x--", color=c, label=f"T={pts[i]['T']:.3f} generated")
    ax.set_xlabel("distance r (lattice spacings)")
    ax.set_ylabel(r"$G(r) = \langle s_i s_{i+r}\rangle$")
    ax.set_title("Spin-spin correlation: MCMC (solid) vs generated (dashed)")
    ax.legend(fontsize=7, ncol=2)
    fig.tight_layout()
    return _save(fig, out, "correlation.png")


def _mosaic(configs, gap=1, fill=0.5) -> np.ndarray:
    """Configurations [k, L, L] (±1 or probabilities in [0, 1]) side by side, values in [0, 1]."""
    c = np.asarray(configs, float)
    if c.min() < 0:
        c = (c + 1) / 2
    k, L, _ = c.shape
    img = np.full((L, k * (L + gap) - gap), fill)
    for i in range(k):
        img[:, i * (L + gap):i * (L + gap) + L] = c[i]
    return img


def samples(out: Path, metrics: dict, arts: dict, k: int = 6) -> str:
    pts = metrics["per_temperature"]
    idx = np.linspace(0, len(pts) - 1, min(8, len(pts))).round().astype(int)
    fig, axes = plt.subplots(len(idx), 2, figsize=(12, 1.2 * len(idx) + 0.8), squeeze=False)
    for row, i in zip(axes, idx):
        for ax, src, title in ((row[0], "mcmc", "MCMC (held-out)"),
                               (row[1], "generated", "generated")):
            ax.imshow(_mosaic(arts[src][i][:k]), cmap="gray", vmin=0, vmax=1,
                      interpolation="nearest")
            ax.set_xticks([])
            ax.set_yticks([])
            if i == idx[0]:
                ax.set_title(f"{title} (white = spin up)")
        row[0].set_ylabel(f"T={pts[i]['T']:.3f}", rotation=0, ha="right", va="center")
    fig.suptitle(f"Configurations per temperature, L={metrics['L']}")
    fig.tight_layout()
    return _save(fig, out, "samples.png")


# ------------------------------------------------------------------------------ model

def reconstructions(out: Path, metrics: dict, model, arts: dict, k: int = 8) -> str:
    pts = metrics["per_temperature"]
    idx = _pick([p["T"] for p in pts])
    fig, axes = plt.subplots(2 * len(idx), 1, figsize=(10, 1.25 * 2 * len(idx) + 0.6))
    for j, i in enumerate(idx):
        T = pts[i]["T"]
        real = arts["mcmc"][i][:k]
        rec = model.decode_probs(model.encode_spins(real, T)[0], T)
        for ax, img, name in ((axes[2 * j], _mosaic(real), "real"),
                              (axes[2 * j + 1], _mosaic(rec), "reconstruction p(up)")):
            ax.imshow(img, cmap="gray", vmin=0, vmax=1, interpolation="nearest")
            ax.set_xticks([])
            ax.set_yticks([])
            ax.set_ylabel(f"T={T:.3f}\n{name}", rotation=0, ha="right", va="center",
                          fontsize=8)
    fig.suptitle("Held-out configurations and their reconstructions (decoder mean at the "
                 "encoder mean; gray = uncertain)")
    fig.tight_layout()
    return _save(fig, out, "reconstructions.png")


def interpolation(out: Path, metrics: dict, model, arts: dict, steps: int = 10) -> str:
    """Decoded codes on the segment between the codes of two real configurations (seed 001 v):
    low T with m > 0 → low T with m < 0, and lowest T → highest T."""
    pts = metrics["per_temperature"]
    lo, hi = arts["heldout"][0], arts["heldout"][-1]
    m_lo = arts["mags"][0]
    up = lo[int(np.argmax(m_lo))]
    down = lo[int(np.argmin(m_lo))]
    pairs = [(up, down, pts[0]["T"], pts[0]["T"], "low T, m > 0 → low T, m < 0"),
             (up, hi[0], pts[0]["T"], pts[-1]["T"], "lowest T → highest T")]
    fig, axes = plt.subplots(len(pairs), 1, figsize=(12, 1.8 * len(pairs) + 0.5))
    ts = np.linspace(0, 1, steps)
    for ax, (a, b, ta, tb, name) in zip(axes, pairs):
        za, zb = model.encode_spins(a[None], ta)[0][0], model.encode_spins(b[None], tb)[0][0]
        z = (1 - ts)[:, None] * za + ts[:, None] * zb
        tt = torch.as_tensor((1 - ts) * ta + ts * tb, dtype=torch.float32)
        p = model.decode_probs(z, tt)
        row = np.concatenate([(a[None] + 1) / 2, p, (b[None] + 1) / 2])
        ax.imshow(_mosaic(row, gap=2, fill=1.0), cmap="gray", vmin=0, vmax=1,
                  interpolation="nearest")
        L = a.shape[-1]
        ax.set_xticks([(L + 2) * i + L / 2 for i in range(len(row))])
        ax.set_xticklabels(["real A"] + [f"{t:.2f}" for t in ts] + ["real B"], fontsize=7)
        ax.set_yticks([])
        ax.set_title(f"{name}: decoded p(up) at z = (1-t) z_A + t z_B, mean m of the decoded "
                     f"p: {2 * p[0].mean() - 1:+.2f} → {2 * p[-1].mean() - 1:+.2f}", fontsize=9)
    fig.tight_layout()
    return _save(fig, out, "interpolation.png")


def latent_scatter(out: Path, metrics: dict, la: dict) -> str:
    sc = la["scatter"]
    mu = np.concatenate([s["mu"] for s in sc])
    z1 = np.concatenate([s["z1"] for s in sc])
    m = np.concatenate([s["m"] for s in sc])
    T = np.concatenate([np.full(len(s["z1"]), s["T"]) for s in sc])
    d = mu.shape[1]
    if d == 2:
        xy, lab = mu, ("code $z_1$", "code $z_2$")
    elif d > 2:
        xy, lab = (mu - la["centre"]) @ la["axes2"].T, ("principal axis 1", "principal axis 2")
    else:
        xy = np.column_stack([mu[:, 0], T + np.random.default_rng(0).normal(0, 0.01, len(T))])
        lab = ("code $z$", T_LABEL + " (jittered)")
    fig, axes = plt.subplots(1, 3, figsize=(16, 4.6))
    for ax, c, cmap, name in ((axes[0], T, "coolwarm", T_LABEL), (axes[1], m, "PiYG", "m")):
        s = ax.scatter(xy[:, 0], xy[:, 1], c=c, cmap=cmap, s=5, alpha=0.7)
        fig.colorbar(s, ax=ax, label=name)
        ax.set_xlabel(lab[0])
        ax.set_ylabel(lab[1])
        ax.set_title(f"encoder means of held-out configurations, coloured by "
                     f"{'T' if c is T else 'm'}", fontsize=9)
    s = axes[2].scatter(z1, m, c=T, cmap="coolwarm", s=5, alpha=0.7)
    fig.colorbar(s, ax=axes[2], label=T_LABEL)
    axes[2].set_xlabel("latent order parameter $z_1$ (principal axis, latent units)")
    axes[2].set_ylabel("magnetization m per spin")
    axes[2].set_title(f"latent vs magnetization: corr = {metrics['latent']['corr_z1_m']:.3f}",
                      fontsize=9)
    fig.tight_layout()
    return _save(fig, out, "latent_scatter.png")


def latent_tc(out: Path, metrics: dict) -> str:
    lt = metrics["latent"]
    T = np.array(lt["temperatures"])
    pts = metrics["per_temperature"]
    chi_m = np.array([p["mcmc"]["chi"][0] or np.nan for p in pts])
    n = 3 if any(v is not None for v in lt["posterior_var"]) else 2
    fig, axes = plt.subplots(1, n, figsize=(5.2 * n, 4.2))
    ax = axes[0]
    cz = np.array(lt["chi_z"])
    ax.plot(T, cz / np.nanmax(cz), "o-", color=GEN_C, label=r"latent $\chi_z$ (encoder)")
    ax.plot(T, chi_m / np.nanmax(chi_m), "s--", color=MCMC_C, label=r"MCMC $\chi$ of $|m|$")
    ax.errorbar([lt["tc_estimate"]], [1.05], xerr=[lt["tc_error"]], fmt="v", color=GEN_C,
                capsize=3, label=f"latent Tc = {lt['tc_estimate']:.3f} ± {lt['tc_error']:.3f}")
    mp = lt["mcmc_chi_peak"]
    ax.errorbar([mp["tc_estimate"]], [1.12], xerr=[mp["tc_error"]], fmt="v", color=MCMC_C,
                capsize=3, label=f"MCMC chi peak = {mp['tc_estimate']:.3f} ± "
                                 f"{mp['tc_error']:.3f}")
    _tc_line(ax)
    ax.set_xlabel(T_LABEL)
    ax.set_ylabel("susceptibility / its maximum")
    ax.set_ylim(0, 1.25)
    ax.legend(fontsize=7, loc="upper left")
    ax.set_title(f"Tc from the latent susceptibility (L={metrics['L']})", fontsize=9)
    ax = axes[1]
    az = np.array(lt["mean_abs_z1"])
    ax.plot(T, az / az.max(), "o-", color=GEN_C, label=r"$\langle|z_1|\rangle$ / max")
    am = np.array([p["mcmc"]["abs_m"][0] for p in pts])
    ax.plot(T, am, "s--", color=MCMC_C, label=r"MCMC $\langle|m|\rangle$")
    _tc_line(ax)
    ax.set_xlabel(T_LABEL)
    ax.set_ylabel("order parameter")
    ax.legend(fontsize=8)
    ax.set_title("latent order parameter vs magnetization", fontsize=9)
    if n == 3:
        ax = axes[2]
        ax.plot(T, lt["posterior_var"], "o-", color="tab:purple")
        _tc_line(ax)
        vp = lt.get("tc_from_posterior_var") or {}
        if vp.get("exists"):
            ax.axvline(vp["tc_estimate"], color="tab:purple", ls="--", lw=1)
        peak = (f"peak at {vp['tc_estimate']:.3f} ± {vp['tc_error']:.3f}" if vp.get("exists")
                else "no peak inside the ladder")
        ax.set_xlabel(T_LABEL)
        ax.set_ylabel(r"mean posterior variance $\langle\sigma^2\rangle$ (latent units²)")
        ax.set_title(f"VAE posterior variance: {peak}\n(seed 000 reports a peak near Tc)",
                     fontsize=9)
    fig.tight_layout()
    return _save(fig, out, "latent_tc.png")


def decoded_grid(out: Path, metrics: dict, model, la: dict, n: int = 12) -> str:
    """Decoder means over a 2-d grid of codes in [-3, 3]² (seed 004 4.2): the code plane
    itself for latent_dim 2, else the plane of the two principal axes of the held-out codes
    (in units of their standard deviation) around their centre."""
    d = model.cfg.latent_dim
    temps = la["temperatures"] if "temperatures" in la else metrics["latent"]["temperatures"]
    T = float(min(temps, key=lambda t: abs(t - exact.TC)))
    g = np.linspace(-3, 3, n)
    a, b = np.meshgrid(g, g[::-1])
    labels = ("principal axis 1 (std of the codes)", "principal axis 2 (std of the codes)")
    if d == 2:
        z = np.column_stack([a.ravel(), b.ravel()])
        what, labels = "code plane (z1, z2)", ("code z1", "code z2")
    else:
        mu = np.concatenate([s["mu"] for s in la["scatter"]])
        ax2 = la["axes2"] if d > 1 else np.vstack([la["axes2"][0], np.zeros(d)])
        sd = np.std((mu - la["centre"]) @ ax2.T, axis=0) + 1e-12
        z = la["centre"] + (a.ravel()[:, None] * sd[0] * ax2[0]
                            + b.ravel()[:, None] * sd[1] * ax2[1])
        what = "plane of the two principal axes of the codes (units of their std)"
    p = model.decode_probs(z, T)
    p = p.reshape(n, n, *p.shape[1:])
    L = p.shape[-1]
    img = np.ones((n * (L + 1), n * (L + 1)))
    for i in range(n):
        for j in range(n):
            img[i * (L + 1):i * (L + 1) + L, j * (L + 1):j * (L + 1) + L] = p[i, j]
    fig, ax = plt.subplots(figsize=(8, 8))
    ax.imshow(img, cmap="gray", vmin=0, vmax=1, interpolation="nearest")
    ticks = [(L + 1) * i + L / 2 for i in range(n)]
    ax.set_xticks(ticks)
    ax.set_xticklabels([f"{v:.1f}" for v in g], fontsize=7)
    ax.set_yticks(ticks)
    ax.set_yticklabels([f"{v:.1f}" for v in g[::-1]], fontsize=7)
    ax.set_xlabel(labels[0])
    ax.set_ylabel(labels[1])
    cond = f", decoded at T={T:.3f}" if model.cfg.conditional else ""
    ax.set_title(f"Decoder p(up) over a grid in the {what}{cond}", fontsize=9)
    fig.tight_layout()
    return _save(fig, out, "decoded_grid.png")


def loss_curves(out: Path, rows: list[dict]) -> Optional[str]:
    terms = [t for t in ("recon", "kl", "total") if f"train_{t}" in rows[0]]
    if not terms:
        terms = sorted(k[len("train_"):] for k in rows[0] if k.startswith("train_")
                       and k.endswith("total"))
    if not terms:
        return None
    ep = [r.get("epoch", i + 1) for i, r in enumerate(rows)]
    fig, axes = plt.subplots(1, len(terms), figsize=(4.6 * len(terms), 3.8), squeeze=False)
    names = {"recon": "reconstruction (BCE summed over sites)", "kl": "KL divergence (nats)",
             "total": "total loss"}
    for ax, t in zip(axes[0], terms):
        for split, c in (("train", "tab:blue"), ("val", "tab:orange")):
            ys = [r.get(f"{split}_{t}", np.nan) for r in rows]
            ax.plot(ep, ys, "o-", color=c, ms=3, label="train" if split == "train" else
                    "validation")
        ax.set_xlabel("epoch")
        ax.set_ylabel("nats per sample" if t in names else t)
        ax.set_title(names.get(t, t), fontsize=9)
        ax.legend(fontsize=8)
    fig.suptitle("Loss curves (metrics.csv of the training run)")
    fig.tight_layout()
    return _save(fig, out, "loss_curves.png")


def cost(out: Path, metrics: dict) -> str:
    rows = metrics["cost"]["per_temperature"]
    T = [r["T"] for r in rows]
    fig, ax = plt.subplots(figsize=(7, 4.5))
    ax.semilogy(T, [r["generator_s_per_sample"] for r in rows], "o-", color=GEN_C,
                label="generator (1 thread, batched)")
    ax.semilogy(T, [r["metropolis"]["s_per_independent"] for r in rows], "s-",
                label="Metropolis, one chain")
    ax.semilogy(T, [r["wolff"]["s_per_independent"] for r in rows], "^-", label="Wolff, one chain")
    if all("pt_file" in r for r in rows):
        ax.semilogy(T, [r["pt_file"]["s_per_independent"] for r in rows], "x--",
                    label=f"the file's PT run ({rows[0]['pt_file']['algorithm']})")
    _tc_line(ax)
    ax.set_xlabel(T_LABEL)
    ax.set_ylabel("seconds per independent sample (one core)")
    tr = metrics["cost"]["train_seconds"]
    ax.set_title(f"Cost per independent sample, L={metrics['L']}; training "
                 f"{'unknown' if tr is None else f'{tr:.3g} s'} not included here", fontsize=9)
    ax.legend(fontsize=8)
    fig.tight_layout()
    return _save(fig, out, "cost.png")


# ------------------------------------------------------------------------------ PCA, t-SNE
def pca(out: Path, metrics: dict, ea: dict) -> str:
    """pca.png: explained-variance ratios, the first component against m (Wang, 1606.00318),
    the first component's weights on the lattice, and mean |p1|/√N per T beside <|m|>."""
    pc, a = metrics["embedding"]["pca"], ea["pca"]
    fig, axes = plt.subplots(1, 4, figsize=(19, 4.2))
    ev = pc["explained_variance_ratio"]
    axes[0].bar(np.arange(1, len(ev) + 1), ev, color=MCMC_C)
    axes[0].set_yscale("log")
    axes[0].set_xlabel("principal component")
    axes[0].set_ylabel("explained variance ratio")
    axes[0].set_title("PCA of the held-out configurations", fontsize=9)
    s = axes[1].scatter(a["m"], a["pc1_per_spin"], c=a["T"], cmap="coolwarm", s=4, alpha=0.6)
    fig.colorbar(s, ax=axes[1], label=T_LABEL)
    axes[1].set_xlabel("magnetization m per spin")
    axes[1].set_ylabel(r"first component $p_1/\sqrt{N}$")
    axes[1].set_title(f"first component vs m: corr = {pc['corr_pc1_m']:.4f}", fontsize=9)
    w = a["weights1"]
    lim = float(np.abs(w).max())
    im = axes[2].imshow(w, cmap="PiYG", vmin=-lim, vmax=lim, interpolation="nearest")
    fig.colorbar(im, ax=axes[2], label="weight")
    axes[2].set_xticks([])
    axes[2].set_yticks([])
    axes[2].set_title(f"first component's weights on the lattice\n(uniformity "
                      f"{pc['pc1_weight_uniformity']:.3f}; 1 = all equal)", fontsize=9)
    pts = metrics["per_temperature"]
    axes[3].plot(pc["temperatures"], pc["mean_abs_pc1_per_spin"], "o-", color=GEN_C,
                 label=r"$\langle|p_1|\rangle/\sqrt{N}$ (PCA)")
    axes[3].plot([p["T"] for p in pts], [p["mcmc"]["abs_m"][0] for p in pts], "s--",
                 color=MCMC_C, label=r"MCMC $\langle|m|\rangle$")
    _tc_line(axes[3])
    axes[3].set_xlabel(T_LABEL)
    axes[3].set_ylabel("order parameter")
    axes[3].legend(fontsize=8)
    axes[3].set_title("the first component as order parameter", fontsize=9)
    fig.tight_layout()
    return _save(fig, out, "pca.png")


def tsne(out: Path, metrics: dict, ea: dict) -> str:
    """tsne.png: t-SNE of configurations (and of codes) coloured by T, and by m."""
    ts, a = metrics["embedding"]["tsne"], ea["tsne"]
    sets = [k for k in ("configurations", "codes") if k in a]
    fig, axes = plt.subplots(len(sets), 2, figsize=(11, 4.6 * len(sets)), squeeze=False)
    norm = matplotlib.colors.TwoSlopeNorm(vcenter=exact.TC, vmin=min(a["T"].min(), exact.TC - 1e-3),
                                          vmax=max(a["T"].max(), exact.TC + 1e-3))
    for row, name in zip(axes, sets):
        xy = a[name]
        for ax, c, cmap, lab, kw in ((row[0], a["T"], "coolwarm", T_LABEL + " (white: Tc)",
                                      {"norm": norm}),
                                     (row[1], a["m"], "PiYG", "m", {"vmin": -1, "vmax": 1})):
            s = ax.scatter(xy[:, 0], xy[:, 1], c=c, cmap=cmap, s=5, alpha=0.8, **kw)
            fig.colorbar(s, ax=ax, label=lab)
            ax.set_xticks([])
            ax.set_yticks([])
        st = ts[name]
        row[0].set_title(f"t-SNE of the {name}, coloured by T: corr(T, neighbours' T) = "
                         f"{st['temperature_knn_corr']:.3f}", fontsize=9)
        row[1].set_title(f"… coloured by m; neighbours on the same side of Tc: "
                         f"{100 * st['phase_knn_agreement']:.1f}%", fontsize=9)
    fig.tight_layout()
    return _save(fig, out, "tsne.png")


def draw_all(out: Path, metrics: dict, model, arts: dict, latent_arts: Optional[dict],
             loss_rows: list[dict], embedding_arts: Optional[dict] = None) -> list[str]:
    """Every picture that applies to this model and to the sections measured; returns their
    file names."""
    out.mkdir(parents=True, exist_ok=True)
    names = [observables(out, metrics), distances(out, metrics), histograms(out, metrics),
             correlation(out, metrics), samples(out, metrics, arts)]
    if has_encoder(model):
        names += [reconstructions(out, metrics, model, arts),
                  interpolation(out, metrics, model, arts)]
        if latent_arts is not None:
            latent_arts = {**latent_arts, "temperatures": metrics["latent"]["temperatures"]}
            names += [latent_scatter(out, metrics, latent_arts), latent_tc(out, metrics),
                      decoded_grid(out, metrics, model, latent_arts)]
    if embedding_arts is not None:
        names.append(pca(out, metrics, embedding_arts))
        if "tsne" in embedding_arts:
            names.append(tsne(out, metrics, embedding_arts))
    if loss_rows:
        name = loss_curves(out, loss_rows)
        if name:
            names.append(name)
    if "per_temperature" in metrics.get("cost", {}):
        names.append(cost(out, metrics))
    if "per_temperature" in metrics.get("nmcmc", {}):
        names.append(nmcmc_plot(out, metrics["nmcmc"]))
    return names


# ------------------------------------------------------------------------------ Tune
def tune_heatmap(results_csv, png, metric: Optional[str] = None) -> str:
    """Heatmap latent_dim × kl_weight of a metric column of a Tune results table (mean over
    repeated trials; blank cells: no finished trial). metric default: "fidelity" if present,
    else "score". Returns the PNG's file name."""
    with open(results_csv, newline="") as fh:
        rows = list(csv.DictReader(fh))
    if not rows:
        raise ValueError(f"{results_csv} holds no trials")
    cols = rows[0].keys()
    metric = metric or next((c for c in ("fidelity", "score") if c in cols), None)
    for need in ("latent_dim", "kl_weight", metric):
        if need is None or need not in cols:
            raise ValueError(f"{results_csv} has no column {need!r} (columns: {list(cols)}); "
                             f"give the results.csv of python -m ising_dist.tune")
    def num(v):
        try:
            return float(v)
        except (TypeError, ValueError):
            return math.nan
    dims = sorted({int(float(r["latent_dim"])) for r in rows})
    kls = sorted({float(r["kl_weight"]) for r in rows})
    grid = np.full((len(dims), len(kls)), np.nan)
    for i, d in enumerate(dims):
        for j, w in enumerate(kls):
            v = [num(r[metric]) for r in rows
                 if int(float(r["latent_dim"])) == d and float(r["kl_weight"]) == w]
            v = [x for x in v if math.isfinite(x)]
            if v:
                grid[i, j] = np.mean(v)
    fig, ax = plt.subplots(figsize=(1.3 * len(kls) + 3, 0.9 * len(dims) + 2))
    pos = grid[np.isfinite(grid)]
    log = pos.size and pos.min() > 0 and pos.max() / pos.min() > 20
    shown = np.log10(grid) if log else grid
    cmap = matplotlib.colormaps["viridis_r"].with_extremes(bad="0.85")
    im = ax.imshow(np.ma.masked_invalid(shown), cmap=cmap, aspect="auto")
    for i in range(len(dims)):
        for j in range(len(kls)):
            txt = "—" if not math.isfinite(grid[i, j]) else f"{grid[i, j]:.3g}"
            ax.text(j, i, txt, ha="center", va="center", fontsize=9,
                    color="k" if not math.isfinite(grid[i, j]) else "w")
    ax.set_xticks(range(len(kls)))
    ax.set_xticklabels([f"{w:g}" for w in kls])
    ax.set_yticks(range(len(dims)))
    ax.set_yticklabels([str(d) for d in dims])
    ax.set_xlabel("KL weight")
    ax.set_ylabel("latent size")
    fig.colorbar(im, ax=ax, label=("log10 " if log else "") + f"{metric} (lower is better)")
    ax.set_title(f"Physics fidelity of the search: {metric}\n(mean W1 / noise floor over T; "
                 f"1 ≈ as good as MCMC)" if metric in ("score", "fidelity") else metric,
                 fontsize=9)
    fig.tight_layout()
    png = Path(png)
    png.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(png, dpi=DPI, bbox_inches="tight")
    plt.close(fig)
    return png.name


# ------------------------------------------------------------------------------ HTML
def _fmt(v, digits=4):
    """A number, a [mean, err] pair as "mean ± err", None (or a pair without a mean) as "—"."""
    if v is None:
        return "—"
    if isinstance(v, (list, tuple)) and len(v) == 2:
        return "—" if v[0] is None else f"{_fmt(v[0], digits)} ± {_fmt(v[1], 2)}"
    if isinstance(v, float):
        return "∞" if math.isinf(v) else f"{v:.{digits}g}"
    return html.escape(str(v))


def _table(head, rows) -> str:
    h = "".join(f"<th>{html.escape(c)}</th>" for c in head)
    body = "".join("<tr>" + "".join(f"<td>{c}</td>" for c in r) + "</tr>" for r in rows)
    return f"<table><tr>{h}</tr>{body}</table>"


CSS = ("body{font-family:sans-serif;max-width:1300px;margin:auto;padding:1em}"
       "table{border-collapse:collapse;font-size:13px;margin:.5em 0}"
       "td,th{border:1px solid #bbb;padding:2px 6px;text-align:right}"
       "th{background:#eee}img{max-width:100%;border:1px solid #ddd;margin:.5em 0}"
       ".bad{color:#b00;font-weight:bold}")


def _taus(r: dict) -> str:
    star = "" if r.get("tau_reliable", True) else "*"
    return f"{r['tau_e']:.3g} / {r['tau_abs_m']:.3g}{star}"


def _embedding_html(em: dict) -> str:
    """The "PCA and t-SNE" section."""
    pc = em["pca"]
    ev = ", ".join(f"{v:.3g}" for v in pc["explained_variance_ratio"][:4])
    p = ["<h2>PCA and t-SNE of the configurations</h2>",
         f"<p>PCA of {pc['n_configurations']} held-out configurations pooled over the ladder: "
         f"explained-variance ratios {ev}, …; the first component against m: correlation "
         f"<b>{pc['corr_pc1_m']:.4f}</b>, weight uniformity {pc['pc1_weight_uniformity']:.3f} "
         f"(1: the component is the magnetization, Wang, arXiv 1606.00318).</p>"]
    ts = em.get("tsne", {})
    rows = [[name, str(ts[name]["n_points"]), f"{ts[name]['kl_divergence']:.3g}",
             _fmt(ts[name]["temperature_knn_corr"], 3),
             f"{100 * ts[name]['phase_knn_agreement']:.1f}%"]
            for name in ("configurations", "codes") if name in ts]
    if rows:
        p.append(_table(["t-SNE of", "points", "KL divergence", "corr(T, neighbours' T)",
                         "neighbours on the same side of Tc"], rows))
    return "".join(p)


def write_html(out: Path, metrics: dict) -> str:
    pts = metrics["per_temperature"]
    p = []
    p.append(f"<h1>Evaluation: {html.escape(str(metrics['family']))} on L={metrics['L']}</h1>")
    # the verdicts first: words for what the numbers below show (evaluate.verdicts)
    if metrics.get("verdicts"):
        p.append("<div class='verdict'>" + "".join(
            f"<p class='bad'>{html.escape(v)}</p>" for v in metrics["verdicts"]) + "</div>")
    elif "verdicts" in metrics:
        p.append("<p class='verdict'>No bias, T-dependence or diversity problem found: W1 "
                 "within 3 noise floors at every T.</p>")
    p.append(f"<p>data <code>{html.escape(metrics['data'])}</code><br>model <code>"
             f"{html.escape(str(metrics.get('model_path', '')))}</code><br>MCMC reference: "
             f"{metrics['split']['evaluated']} samples {metrics['split']['range']} "
             f"({html.escape(metrics['split']['source'])}); generation: "
             f"{html.escape(str(metrics['generation']))}</p>")
    p.append(f"<p><b>Physics fidelity {_fmt(metrics['fidelity'])}</b>: "
             f"{html.escape(metrics['fidelity_definition'])}.</p>")
    rows = []
    for q in pts:
        def cell(x, bad):
            return f"<span class='bad'>{_fmt(x)}</span>" if bad else _fmt(x)
        z = q["z"]
        rows.append([f"{q['T']:.4f}" + ("" if q["trained_on"] else " (not trained)"),
                     _fmt(q["mcmc"]["e"]), _fmt(q["generated"]["e"]), _fmt(z["e"], 3),
                     _fmt(q["mcmc"]["abs_m"]), _fmt(q["generated"]["abs_m"]),
                     _fmt(z["abs_m"], 3), _fmt(q["mcmc"]["C"]), _fmt(q["generated"]["C"]),
                     _fmt(q["mcmc"]["chi"]), _fmt(q["generated"]["chi"]),
                     _fmt(q["mcmc"]["U4"]), _fmt(q["generated"]["U4"]),
                     cell(q["w1_e"], (q["w1_e_over_floor"] or 0) > 3),
                     _fmt(q["noise_floor"]["w1_e"]),
                     cell(q["w1_abs_m"], (q["w1_abs_m_over_floor"] or 0) > 3),
                     _fmt(q["noise_floor"]["w1_abs_m"]),
                     f"{q['z2']['generated_frac_m_pos']:.2f} / {q['z2']['mcmc_frac_m_pos']:.2f}",
                     f"{q['memorization']['generated_copy_fraction']:.3f} / "
                     f"{q['memorization']['mcmc_copy_fraction']:.3f}",
                     f"{q['mcmc']['tau_e_sweeps'] or 0:.3g}"])
    p.append("<h2>Per temperature: MCMC vs generated</h2>")
    p.append(_table(["T", "e MCMC", "e gen", "z(e)", "|m| MCMC", "|m| gen", "z(|m|)",
                     "C MCMC", "C gen", "χ MCMC", "χ gen", "U4 MCMC", "U4 gen", "W1(e)",
                     "floor", "W1(|m|)", "floor", "m>0 gen/MCMC", "copies gen/MCMC",
                     "τ_e (sweeps)"], rows))
    p.append("<p>W1 in red: more than 3× the MCMC-vs-MCMC noise floor. Copies: fraction of "
             "configurations identical to a training configuration (MCMC: the rate a perfect "
             "sampler shows).</p>")
    lt = metrics["latent"]
    p.append("<h2>Latent space</h2>")
    if lt.get("tc_estimate") is None:
        p.append(f"<p>{html.escape(lt['method'])}</p>")
    else:
        mp = lt["mcmc_chi_peak"]
        vp = lt.get("tc_from_posterior_var")
        peak = ("— (no posterior variance)" if vp is None else
                _fmt([vp["tc_estimate"], vp["tc_error"]]) if vp["exists"] else
                f"none: largest at T = {vp['tc_estimate']:.4f}, the ladder's end")
        p.append(_table(["latent Tc", "MCMC χ peak (same ladder)", "exact Tc (L=∞)",
                         "posterior-variance peak", "corr(z1, m)", "multiple corr(m; codes)",
                         "method"],
                        [[_fmt([lt["tc_estimate"], lt["tc_error"]]),
                          _fmt([mp["tc_estimate"], mp["tc_error"]]), f"{lt['exact_tc']:.6f}",
                          peak, _fmt(lt["corr_z1_m"]), _fmt(lt["r_linear_m"]),
                          f"<span style='text-align:left'>{html.escape(lt['method'])}</span>"]]))
    if "embedding" in metrics:
        p.append(_embedding_html(metrics["embedding"]))
    c = metrics.get("cost", {})
    p.append("<h2>Cost per independent sample</h2>")
    if "per_temperature" in c:
        rows = [[f"{r['T']:.4f}", _fmt(r["generator_s_per_sample"], 3),
                 _fmt(r["metropolis"]["s_per_independent"], 3),
                 _taus(r["metropolis"]), _fmt(r["wolff"]["s_per_independent"], 3),
                 _taus(r["wolff"]),
                 _fmt(r.get("pt_file", {}).get("s_per_independent"), 3),
                 r["best_mcmc"], "<span class='bad'>biased</span>" if r.get("biased")
                 else _fmt(r["speedup_vs_best_mcmc"], 3),
                 "—" if r.get("biased") else "never" if r["break_even_samples"] is None
                 else f"{r['break_even_samples']:.3g}"]
                for r in c["per_temperature"]]
        p.append(_table(["T", "generator s/sample", "Metropolis s/indep.", "τ e/|m| (sweeps)",
                         "Wolff s/indep.", "τ e/|m| (sweeps)", "PT file s/indep.", "best MCMC",
                         "best MCMC / generator", "break-even samples"], rows))
        p.append("<p>τ*: the timing run was shorter than 100 τ, so τ (and the cost) is "
                 "underestimated; raise --cost-sweeps.</p>")
        be = c["break_even_samples_every_T"]
        p.append(f"<p>Training: {_fmt(c['train_seconds'])} s "
                 f"({html.escape(c['train_seconds_source'])}). Break-even generating at every "
                 f"T: {'never' if be is None else f'{be:.3g} samples per T'}. "
                 f"{html.escape(c['note'])}. Generator with all {c.get('torch_threads')} torch "
                 f"threads: see metrics.json. The generated samples are only as good as the "
                 f"fidelity above; MCMC's are exact.</p>")
    else:
        p.append("<p>not measured (--no-cost)</p>")
    if "nmcmc" in metrics:
        p.append(nmcmc_html(metrics["nmcmc"]))
    if metrics.get("warnings"):
        p.append("<h2>Warnings</h2><ul>" + "".join(
            f"<li>{html.escape(w)}</li>" for w in metrics["warnings"][:30]) + "</ul>")
    p.append("<h2>Pictures</h2>")
    for name in metrics.get("pictures", []):
        p.append(f"<h3>{html.escape(name)}</h3><img src='{html.escape(name)}'>")
    page = ("<!doctype html><html><head><meta charset='utf-8'><title>ising_dist evaluation"
            f"</title><style>{CSS}</style></head><body>{''.join(p)}</body></html>")
    (out / "index.html").write_text(page)
    return "index.html"


# ------------------------------------------------------------------------------ neural MCMC
def nmcmc_html(nm: dict) -> str:
    """The "Neural MCMC" section (tables of judge.neural_mcmc.evaluate_nmcmc's output)."""
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


def nmcmc_plot(out: Path, nm: dict) -> Optional[str]:
    """nmcmc.png: ⟨e⟩ and C of the chain against MCMC and Kaufman, and acceptance / ESS."""
    if "skipped" in nm:
        return None
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
    return _save(fig, Path(out), "nmcmc.png")


def write_fss(out: Path, fss: dict, title: str = "Finite-size trend") -> str:
    """fss.png (Tc(L) against L^(-1/nu) with the extrapolations) and an index.html: the
    estimates per L, the extrapolations against the exact Tc, links to each size's report."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    nu = (fss.get("extrapolation") or {}).get("nu", 1.0)
    L = np.array(fss["L"], float)
    x = L ** (-1.0 / nu)
    fig, ax = plt.subplots(figsize=(7, 4.8))
    ax.errorbar(x, fss["tc_estimate"], yerr=fss["tc_error"], fmt="o", color=GEN_C,
                capsize=3, label="latent χ_z peak Tc(L)")
    ax.errorbar(x * 1.01, fss["mcmc_chi_peak"], yerr=fss["mcmc_chi_peak_error"], fmt="s",
                color=MCMC_C, capsize=3, label="MCMC χ peak Tc(L)")
    vp = [v for v in fss.get("posterior_var_peak", []) if v.get("exists")]
    if vp:
        ax.errorbar(np.array([v["L"] for v in vp], float) ** (-1.0 / nu) * 0.99,
                    [v["tc_estimate"] for v in vp], yerr=[v["tc_error"] for v in vp],
                    fmt="^", color="tab:purple", capsize=3, label="posterior-variance peak")
    xs = np.linspace(0, x.max() * 1.1, 50)
    for key, c, name in (("extrapolation", GEN_C, "latent"), ("mcmc_extrapolation", MCMC_C,
                                                              "MCMC"),
                         ("posterior_var_extrapolation", "tab:purple", "posterior var")):
        e = fss.get(key)
        if e:
            ax.plot(xs, e["tc_inf"] + e["slope"] * xs, "--", color=c,
                    label=f"{name}: Tc(∞) = {e['tc_inf']:.4f} ± {e['tc_inf_error']:.4f}")
    ax.axhline(exact.TC, color="k", lw=0.8, label=f"exact Tc = {exact.TC:.6f}")
    ax.set_xlabel(r"$L^{-1/\nu}$" + f" (ν = {nu:g})")
    ax.set_ylabel(r"$T_c(L)$ ($J/k_B$)")
    ax.set_title(r"Finite-size trend: $T_c(L) = T_c(\infty) + a L^{-1/\nu}$", fontsize=10)
    ax.legend(fontsize=7)
    fig.tight_layout()
    _save(fig, out, "fss.png")
    vp_by_L = {v["L"]: v for v in fss.get("posterior_var_peak", [])}

    def peak(v):
        if "exists" not in v:
            return "— (no posterior variance)"
        return (f"{v['tc_estimate']:.4f} ± {v['tc_error']:.4f}" if v["exists"]
                else "none (maximum at the ladder's end)")
    rows = [[str(Lk), _fmt([t, e]), _fmt([m, me]), peak(vp_by_L.get(Lk, {})),
             (f"<a href='{html.escape(os.path.relpath(r, out))}/index.html'>L={Lk}: "
              f"report</a>"
              if r else "—")]
            for Lk, t, e, m, me, r in zip(fss["L"], fss["tc_estimate"], fss["tc_error"],
                                          fss["mcmc_chi_peak"], fss["mcmc_chi_peak_error"],
                                          fss["reports"])]
    said = "".join(f"<p>{html.escape(fss[k]['against_exact']['sentence'])}</p>"
                   for k in ("extrapolation", "mcmc_extrapolation",
                             "posterior_var_extrapolation")
                   if k in fss and "against_exact" in fss[k])
    (out / "index.html").write_text(
        f"<!doctype html><html><head><meta charset='utf-8'><style>{CSS}</style></head><body>"
        f"<h1>{html.escape(title)}</h1>{said}"
        + _table(["L", "latent Tc(L)", "MCMC χ peak", "posterior-variance peak", ""], rows)
        + f"<p>{html.escape(fss.get('method', ''))}</p><img src='fss.png'></body></html>")
    return "fss.png"
