"""Neural MCMC: a generative model as the proposal of an exact Metropolis–Hastings chain.

    python -m ising_dist.nmcmc --model RUN_DIR --temperatures T1,T2,… --steps N --out F.h5
        [--seed S] [--k K] [--batch B] [--burn-in B] [--L L] [--device cpu|cuda|cuda:N]
        [--overwrite]

Independence Metropolis–Hastings (Nicoli et al., PRE 101, 023304 (2020), arXiv 1910.13496):
proposals x' are drawn from the model q, independently of the chain's state, and accepted with

    min(1, w(x') / w(x)),   w(x) = exp(−β E(x)) / q(x),   β = 1/T, E = H in units of J.

The chain's stationary distribution is the Boltzmann distribution however poor q is; a poor q
only makes the chain stick (low acceptance, long τ_int). Proposals are drawn in batches and the
chain then runs through each batch in order, which is the same chain. The same proposals are
i.i.d. draws of q, so their weights give importance sampling (Wu, Wang & Zhang, PRL 122, 080602
(2019), arXiv 1809.10606): Ẑ = mean(w) estimates the partition function, ESS = (Σw)²/Σw²
(Kish), and by the delta method σ²(ln Ẑ) = Var(w)/(n w̄²) = 1/ESS − 1/n. The free energy per
spin F = −T ln Z / N is compared with Kaufman's exact value (ising_dist.exact).

Proposals (:func:`proposal_for`):
  exact           families with an exact, normalised ln q(x|T) (model.kind == "exact": the
                  autoregressive family): ``model.sample(n, T, generator)`` → (spins, ln q).
  pseudo-marginal VAE and cVAE, whose q(x) = ∫ p(x|z) p(z) dz is intractable. A proposal is
                  drawn as z_1 ~ p(z) = N(0, I), x ~ p(x|z_1) (Bernoulli decoder), then
                  z_2…z_K ~ r(z|x) (the encoder), and q is replaced by the importance estimate
                      q̂(x) = (1/K) Σ_k p(x|z_k) p(z_k) / r(z_k|x).
                  This is independence MH on the space (x, z_1…z_K) with target
                  π(x) Π_k r(z_k|x), whose x-marginal is π, and proposal density
                  (1/K) Σ_j p(z_j) p(x|z_j) Π_{k≠j} r(z_k|x) = q̂(x) Π_k r(z_k|x) (the index of
                  the generating z is uniform; q̂ is symmetric in the z's); its weight is
                  π(x)/q̂(x). So the chain is exact, keeping the current state's q̂ and refreshing
                  only the proposal's: the pseudo-marginal construction of Andrieu & Roberts,
                  Ann. Stat. 37, 697 (2009), with the extended-space proposal of Cremer, Morris &
                  Duvenaud, arXiv 1704.02916 (2017). Note that z_1 is the code x was generated
                  from: drawing all K codes from the encoder would give an unbiased q̂, but an
                  estimate of 1/q (what the weight needs) that is biased, and an inexact chain.
                  K = 1 is exact too (q̂ = p(x|z_1) p(z_1) / r(z_1|x)); larger K brings q̂ closer
                  to q and the acceptance up, at K decoder passes per proposal.
  refused         AE (a deterministic code without a prior) and GANs (a generator without a
                  density) have no likelihood, so nothing can correct their samples.

Output: an HDF5 file of the run-file contract (DESIGN.md, schema_version 1; ising_dist.writers
writes it), so ``evaluate``, ``train`` and h5ls read it. Row r of /spins, /energy,
/magnetization is the chain at /temperatures[r]; sample s is the chain's state after proposal s
(/sweep[s] = s + 1, counting recorded proposals; burn-in proposals are not recorded). Also:
    /nmcmc/acceptance, tau_int, tau_int_error, ess_fraction, ln_z, ln_z_error, free_energy,
        free_energy_error, free_energy_exact, seconds_per_proposal           float64 [R]
        (τ_int = max of τ_int(e) and τ_int(|m|) of the chain, in proposals; +inf for a chain
        that never moved; free energies per spin in units of J)
    /nmcmc/log_weight, proposal_energy, proposal_magnetization          float64 [R, S]
        ln w of each recorded proposal and its energy / signed magnetization per spin
    /nmcmc attrs: proposal ("exact" | "pseudo-marginal"), k, family, model, batch, burn_in,
        torch_threads, device, method
The file is written as F.h5.partial and renamed when complete; a lock (ising_dist.runlock)
keeps two runs from writing the same --out.

Device (``--device``, :func:`torch_device`): the model draws its proposals and their ln q on
that torch device (the torch generators live there too); spins and ln q come back to the CPU as
numpy, where energies, weights and the MH steps are computed. A cuda run draws from CUDA's
random streams, so its chains differ from a cpu run's of the same seed (and may differ in the
last bits of ln q); its physics (observables, F, acceptance within their errors) must agree.
"""
from __future__ import annotations

import argparse
import math
import os
import re
import sys
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Optional

import h5py
import numba
import numpy as np
import torch
import torch.nn.functional as F
import yaml

from . import __version__
from . import config as cfgmod
from . import observables as obs
from .config import option
from .exact import kaufman_log_z
from .models import load_model
from .codec import pack
from .store import LIBVER, StoreError
from .writers import RunWriter

LOG_2PI = math.log(2 * math.pi)
TAU_FLOOR = 0.5          # τ_int of i.i.d. data (observables' convention)


class NMCMCError(ValueError):
    """Input that neural MCMC cannot use; the message says why and what to do instead."""


# ============================================================================ device
DEVICE_HELP = ("torch device of the model: cpu, cuda or cuda:N (a GPU: samples differ from a "
               "cpu run's of the same seed, CUDA's random streams; the physics must agree)")


def torch_device(name: str) -> torch.device:
    """The torch.device named by ``name``: "cpu", "cuda" or "cuda:N" (N ≥ 0).

    Checked before any work, so a run that cannot use its device stops at once. Raises
    NMCMCError (a ValueError) naming the value and the fix: for any other name; for cuda when
    torch sees no CUDA device (a CPU build of torch, or no GPU: torch.cuda.is_available() is
    False); for cuda:N with N ≥ torch.cuda.device_count()."""
    text = str(name)
    match = re.fullmatch(r"cpu|cuda(?::(\d+))?", text)
    if match is None:
        raise NMCMCError(f"--device {text!r}: choose cpu, cuda or cuda:N (N: the GPU's index, "
                         f"e.g. cuda:0)")
    if text == "cpu":
        return torch.device("cpu")
    if not torch.cuda.is_available():
        raise NMCMCError(f"device={text}: torch sees no CUDA device here "
                         f"(torch.cuda.is_available() is False); use --device cpu, or install a "
                         f"CUDA build of torch on a GPU machine")
    count = torch.cuda.device_count()
    if int(match.group(1) or 0) >= count:
        raise NMCMCError(f"device={text}: torch sees {count} CUDA device(s), cuda:0 … "
                         f"cuda:{count - 1}; choose one of them")
    return torch.device(text)


def model_device(model) -> torch.device:
    """The device of ``model``'s parameters or buffers (models.base.GenerativeModel.device);
    CPU for an object that has neither."""
    dev = getattr(model, "device", None)
    if isinstance(dev, torch.device):
        return dev
    if isinstance(model, torch.nn.Module):
        tensors = [*model.parameters(), *model.buffers()]
        if tensors:
            return tensors[0].device
    return torch.device("cpu")


# ============================================================================ proposals
def _conditional(model) -> bool:
    return bool(getattr(model.cfg, "conditional", False))


def _family(model) -> str:
    return str(getattr(model.cfg, "family", type(model).__name__))


class _Proposal:
    """What both proposals share: the model, L, and the device the model draws on."""

    def __init__(self, model):
        self.model = model
        self.L = int(model.cfg.L)

    @property
    def device(self) -> torch.device:
        """Where the model's tensors live; draw's torch generator must live there too."""
        return model_device(self.model)


class ExactProposal(_Proposal):
    """A model with an exact, normalised ln q(x|T) (model.kind == "exact")."""

    name = "exact"
    k = 1

    @torch.no_grad()
    def draw(self, n: int, T: float, generator: torch.Generator):
        """n proposals at T: (spins int8 ±1 numpy [n, L, L], ln q float64 numpy [n], nats),
        drawn on the model's device with ``generator`` (a torch.Generator on that device)."""
        spins, log_q = self.model.sample(n, T if _conditional(self.model) else None,
                                         generator=generator)
        return (spins.cpu().numpy().astype(np.int8, copy=False),
                log_q.detach().cpu().double().numpy())


class PseudoMarginalProposal(_Proposal):
    """VAE / cVAE with the K-sample importance estimate q̂ (see the module doc)."""

    name = "pseudo-marginal"

    def __init__(self, model, k: int):
        super().__init__(model)
        self.k = int(k)
        self.d = int(model.cfg.latent_dim)

    @torch.no_grad()
    def draw(self, n: int, T: float, generator: torch.Generator):
        """n proposals at T: (spins int8 ±1 numpy [n, L, L], ln q̂ float64 numpy [n], nats).

        Codes: z_1 ~ N(0, I) generates x ~ Bernoulli(sigmoid(decode(z_1))); z_2…z_K ~
        N(mu(x), exp(logvar(x))) from the encoder. ln q̂ = logsumexp_k [ln p(x|z_k) + ln p(z_k)
        − ln r(z_k|x)] − ln K, summed in float64 from the float32 network outputs. Drawn
        on the model's device with ``generator`` (a torch.Generator on that device)."""
        m, K, d = self.model, self.k, self.d
        t = T if _conditional(m) else None
        dev = self.device
        z1 = torch.randn(n, d, generator=generator, device=dev)
        logits1 = m.decode(z1, t)
        x = torch.bernoulli(torch.sigmoid(logits1), generator=generator)        # {0,1} [n,L,L]
        mu, logvar = m.encode(x, t)
        std = torch.exp(0.5 * logvar)
        eps = torch.randn(n, K - 1, d, generator=generator, device=dev)
        z = torch.cat([z1[:, None], mu[:, None] + std[:, None] * eps], dim=1)  # [n, K, d]
        logits = logits1[:, None]                                              # [n, K, L, L]
        if K > 1:
            rest = m.decode(z[:, 1:].reshape(-1, d), t).reshape(n, K - 1, self.L, self.L)
            logits = torch.cat([logits, rest], dim=1)
        xk = x[:, None].expand_as(logits)
        log_px = -F.binary_cross_entropy_with_logits(logits.double(), xk.double(),
                                                     reduction="none").sum((2, 3))
        zd = z.double()
        log_pz = -0.5 * (zd ** 2).sum(2) - 0.5 * d * LOG_2PI
        mu_d, lv_d = mu.double()[:, None], logvar.double()[:, None]
        log_r = (-0.5 * ((zd - mu_d) ** 2 / lv_d.exp()).sum(2) - 0.5 * lv_d.sum(2)
                 - 0.5 * d * LOG_2PI)
        log_q = torch.logsumexp(log_px + log_pz - log_r, dim=1) - math.log(K)
        spins = (2 * x - 1).to(torch.int8)
        return spins.cpu().numpy(), log_q.cpu().numpy()


def proposal_for(model, k: int = 4):
    """The proposal for ``model`` (see the module doc); NMCMCError for models without a
    likelihood. k: codes per proposal of the pseudo-marginal estimate (VAE, cVAE), ≥ 1."""
    family = _family(model)
    if getattr(model, "kind", "") == "exact":
        return ExactProposal(model)
    if getattr(model, "kind", "") == "adversarial":
        raise NMCMCError(f"family {family!r} is a GAN: its generator defines no density q(x), "
                         f"so its samples cannot be weighted or corrected; use a model with a "
                         f"likelihood (autoregressive, vae, cvae)")
    if not getattr(model, "variational", False) or not hasattr(model, "encode"):
        raise NMCMCError(f"family {family!r} has no likelihood: its code is deterministic and "
                         f"has no prior, so q(x) is undefined and samples cannot be corrected; "
                         f"use a model with a likelihood (autoregressive, vae, cvae)")
    if isinstance(k, bool) or not isinstance(k, (int, np.integer)) or k < 1:
        raise NMCMCError(f"--k {k!r}: the pseudo-marginal estimate needs k ≥ 1 codes per "
                         f"proposal (e.g. --k 4)")
    return PseudoMarginalProposal(model, int(k))


# ============================================================================ the chain
@numba.njit(cache=True)
def _independence_mh(log_w, log_u, log_w_current):
    """Independence MH through proposals in order. log_w [n] of the proposals, log_u [n] =
    ln of uniform(0, 1) draws, log_w_current of the state before (−inf: none yet, the first
    proposal is taken). Returns (held int64 [n]: index of the proposal the chain holds after
    step s, −1 for the state from before; ln w of the final state; accepted moves, not
    counting the first proposal, taken when there was no state yet)."""
    n = log_w.size
    held = np.empty(n, np.int64)
    cur, lw, acc = -1, log_w_current, 0
    for s in range(n):
        if log_u[s] < log_w[s] - lw:
            if lw != -np.inf:
                acc += 1
            cur, lw = s, log_w[s]
        held[s] = cur
    return held, lw, acc


@dataclass
class _Chain:
    """One temperature's chain: its current state and what was recorded."""
    T: float
    torch_gen: torch.Generator
    rng: np.random.Generator
    spins: Optional[np.ndarray] = None         # int8 [L, L], current state
    e: float = 0.0
    m: float = 0.0
    log_w: float = -math.inf
    accepted: int = 0
    seconds: float = 0.0
    proposals: int = 0
    rec: dict = field(default_factory=lambda: {k: [] for k in (
        "e", "m", "log_w", "prop_e", "prop_m")})


def _streams(seed: int, row: int, device=None):
    """(torch generator on ``device`` (None: CPU), numpy generator) of chain ``row`` from
    (seed, row) via SeedSequence. The same seed gives another stream on cuda than on cpu."""
    a, b = np.random.SeedSequence([int(seed), int(row)]).generate_state(2, np.uint64)
    g = torch.Generator(device=device if device is not None else "cpu")
    g.manual_seed(int(a) & (2**63 - 1))
    return g, np.random.default_rng(int(b))


def _advance(proposal, ch: _Chain, n: int, record: bool):
    """Draw n proposals at ch.T and run the chain through them; returns the chain's states
    int8 [n, L, L] when recording (else None)."""
    t0 = time.perf_counter()
    spins, log_q = proposal.draw(n, ch.T, ch.torch_gen)
    e, m = obs.energy_magnetization(spins)
    N = spins.shape[-1] * spins.shape[-2]
    log_w = -np.rint(e * N) / ch.T - log_q        # E = e·N is an integer
    held, ch.log_w, acc = _independence_mh(log_w, np.log(ch.rng.random(n)), ch.log_w)
    states = None
    if record:
        ext = np.concatenate([(ch.spins if ch.spins is not None else spins[0])[None], spins])
        states = ext[held + 1]
        ch.accepted += acc
        ch.proposals += n
        for key, a, b in (("e", e, ch.e), ("m", m, ch.m)):
            ch.rec[key].append(np.concatenate([[b], a])[held + 1])
        ch.rec["log_w"].append(log_w)
        ch.rec["prop_e"].append(e)
        ch.rec["prop_m"].append(m)
    if held[-1] >= 0:
        j = held[-1]
        ch.spins, ch.e, ch.m = spins[j].copy(), float(e[j]), float(m[j])
    if record:
        ch.seconds += time.perf_counter() - t0
    return states


def _chunks(total: int, size: int):
    while total > 0:
        yield min(size, total)
        total -= min(size, total)


def run_chains(proposal, temperatures, steps: int, *, batch: int = 1024, burn_in: int = 1000,
               seed: int = 0, sink: Optional[Callable] = None,
               progress: Optional[Callable[[int], None]] = None) -> list[dict]:
    """Run one independence-MH chain per temperature, in lock step, batch by batch.

    proposal: from :func:`proposal_for`; temperatures: floats > 0 (units of J/k_B); steps:
    recorded proposals per temperature, after burn_in unrecorded ones. sink(s0, states int8
    [b, R, L, L], e [b, R], m [b, R]) receives the chain's states of each batch (s0: index of
    the batch's first recorded step); progress(b) is called after each recorded batch.
    Returns per temperature {"T", "e", "m" (chain, per spin, float64 [steps]), "log_w",
    "proposal_e", "proposal_m" (float64 [steps]), "accepted", "seconds_per_proposal"} and
    the summary of :func:`chain_statistics`. The torch generators live on the proposal's
    device (proposal.device, the model's): a model on cuda gives other chains than on cpu for
    the same seed, with the same physics."""
    chains = []
    dev = getattr(proposal, "device", None)
    for r, T in enumerate(temperatures):
        g, rng = _streams(seed, r, dev)
        chains.append(_Chain(float(T), g, rng))
    for b in _chunks(burn_in, batch):
        for ch in chains:
            _advance(proposal, ch, b, record=False)
    s0 = 0
    for b in _chunks(steps, batch):
        states = [_advance(proposal, ch, b, record=True) for ch in chains]
        if sink is not None:
            sink(s0, np.stack(states, axis=1),
                 np.stack([ch.rec["e"][-1] for ch in chains], axis=1),
                 np.stack([ch.rec["m"][-1] for ch in chains], axis=1))
        s0 += b
        if progress is not None:
            progress(b)
    out = []
    L = proposal.L
    for ch in chains:
        r = {"T": ch.T, "e": np.concatenate(ch.rec["e"]), "m": np.concatenate(ch.rec["m"]),
             "log_w": np.concatenate(ch.rec["log_w"]),
             "proposal_e": np.concatenate(ch.rec["prop_e"]),
             "proposal_m": np.concatenate(ch.rec["prop_m"]),
             "accepted": ch.accepted, "seconds_per_proposal": ch.seconds / ch.proposals}
        r.update(chain_statistics(r["e"], r["m"], r["log_w"], ch.accepted, ch.T, L))
        out.append(r)
    return out


# ============================================================================ statistics
def importance_sampling(log_w, T: float, L: int) -> dict:
    """Importance-sampling summary of i.i.d. proposals with log weights ln w = −βE − ln q.

    Returns {"ess_fraction": ESS/n with ESS = (Σw)²/Σw² (Kish), "ln_z": ln(mean w),
    "ln_z_error": sqrt(1/ESS − 1/n) (delta method: σ²(ln w̄) = Var(w)/(n w̄²)),
    "free_energy": −T ln Z / N, "free_energy_error": T σ(ln Z)/N, "free_energy_exact":
    −T ln Z_Kaufman / N} (free energies per spin, units of J; Kaufman, Phys. Rev. 76, 1232
    (1949)). The delta-method error assumes the weights' variance is finite and sampled;
    with ESS of a few it is unreliable (look at ess_fraction first)."""
    lw = np.asarray(log_w, np.float64)
    n, N = lw.size, L * L
    a = np.logaddexp.reduce(lw)
    ess = math.exp(2 * a - np.logaddexp.reduce(2 * lw))
    ln_z = a - math.log(n)
    err = math.sqrt(max(0.0, 1.0 / ess - 1.0 / n))
    return {"ess_fraction": ess / n, "ln_z": float(ln_z), "ln_z_error": err,
            "free_energy": -T * ln_z / N, "free_energy_error": T * err / N,
            "free_energy_exact": float(-T * kaufman_log_z(T, L) / N)}


def chain_statistics(e, m, log_w, accepted: int, T: float, L: int) -> dict:
    """Acceptance, τ_int (max of τ_int(e) and τ_int(|m|) of the chain, in proposals, with the
    Madras–Sokal window of observables.tau_int; +inf when the chain never moved) and the
    importance-sampling summary (:func:`importance_sampling`)."""
    n = len(e)
    if accepted == 0:
        tau, tau_err = math.inf, math.inf
    else:
        te, ta = obs.tau_int(e), obs.tau_int(np.abs(m))
        tau, tau_err = max((te[0], te[1]), (ta[0], ta[1]))
    out = {"acceptance": accepted / n, "tau_int": float(tau), "tau_int_error": float(tau_err)}
    out.update(importance_sampling(log_w, T, L))
    return out


SUMMARY_KEYS = ("acceptance", "tau_int", "tau_int_error", "ess_fraction", "ln_z", "ln_z_error",
                "free_energy", "free_energy_error", "free_energy_exact", "seconds_per_proposal")
SERIES_KEYS = {"log_weight": "log_w", "proposal_energy": "proposal_e",
               "proposal_magnetization": "proposal_m"}


# ============================================================================ files
def load_proposal_model(path):
    """(model, model file path) from a training run directory (its model.pt) or a model file."""
    p = Path(path)
    model_path = p / "model.pt" if p.is_dir() else p
    if not model_path.is_file():
        raise NMCMCError(f"--model {str(p)!r}: " + (
            "a directory without model.pt" if p.is_dir() else "does not exist") +
            "; give a run directory of `python -m ising_dist.train` or its model.pt")
    try:
        model, _ = load_model(model_path)
    except ValueError as exc:
        raise NMCMCError(str(exc)) from None
    return model.eval(), model_path


def read_results(path) -> dict:
    """What an nmcmc file holds: {"L", "config" (dict), "attrs" (of /nmcmc), "per_temperature":
    [{"T", "e", "m" (chain series), "log_w", "proposal_e", "proposal_m", and the SUMMARY_KEYS
    }]}. NMCMCError for a file without an /nmcmc group."""
    with h5py.File(path, "r") as f:
        if "nmcmc" not in f:
            raise NMCMCError(f"{str(path)!r} has no /nmcmc group: it was not written by "
                             f"`python -m ising_dist.nmcmc` (or that run did not finish)")
        g = f["nmcmc"]
        temps = f["temperatures"][()]
        per_T = []
        for r, T in enumerate(temps):
            row = {"T": float(T), "e": f["energy"][r], "m": f["magnetization"][r]}
            row.update({k: float(g[k][r]) for k in SUMMARY_KEYS})
            row.update({v: g[k][r] for k, v in SERIES_KEYS.items()})
            per_T.append(row)
        return {"L": int(f.attrs["L"]), "config": yaml.safe_load(f.attrs["config"]),
                "attrs": {k: (v.item() if hasattr(v, "item") else v)
                          for k, v in g.attrs.items()},
                "per_temperature": per_T}


def _write_summary(path, results, attrs: dict, steps: int) -> None:
    with h5py.File(path, "r+", libver=LIBVER) as f:
        g = f.create_group("nmcmc")
        for k in SUMMARY_KEYS:
            g.create_dataset(k, data=np.array([r[k] for r in results], np.float64))
        for k, v in SERIES_KEYS.items():
            g.create_dataset(k, data=np.stack([r[v] for r in results]), chunks=True)
        g.attrs.update(attrs)
        f.attrs["sweeps_done"] = steps


# ============================================================================ CLI
def parse_temperatures(text: str) -> list[float]:
    """'T1,T2,…' → sorted floats; NMCMCError for non-numbers, T ≤ 0 and repeats."""
    try:
        temps = [float(t) for t in str(text).replace(",", " ").split()]
    except ValueError:
        raise NMCMCError(f"--temperatures {text!r}: give numbers, e.g. --temperatures "
                         f"2.269,2.6") from None
    if not temps:
        raise NMCMCError("--temperatures is empty: give at least one, e.g. --temperatures 2.269")
    for t in temps:
        if not math.isfinite(t) or t <= 0:
            raise NMCMCError(f"--temperatures: T={t} is not a temperature; every T must be "
                             f"finite and > 0 (units of J/k_B, e.g. 2.269)")
    if len(set(temps)) != len(temps):
        raise NMCMCError(f"--temperatures {text!r} names a temperature twice")
    return sorted(temps)


@dataclass
class NMCMCConfig:
    """One neural-MCMC run (the flags of ``python -m ising_dist.nmcmc``; the values are
    checked by :func:`run`, whose errors name the flag)."""
    model: str = option(help="run directory of python -m ising_dist.train (or its model.pt)")
    temperatures: str = option(help="T1,T2,… (units of J/k_B)")
    steps: int = option(help="recorded proposals (= chain steps) per temperature")
    out: str = option(help="HDF5 file to write")
    seed: int = option(0, "random seed")
    k: int = option(4, "codes per proposal of the VAE/cVAE pseudo-marginal estimate")
    batch: int = option(1024, "proposals drawn at once")
    burn_in: int = option(1000, "unrecorded proposals before the recorded ones")
    L: Optional[int] = option(None, "refuse a model of another lattice size")
    device: str = option("cpu", DEVICE_HELP)
    overwrite: bool = option(False, "replace an existing --out")
    quiet: bool = option(False, "no progress bar")


def parse_args(argv=None) -> NMCMCConfig:
    """The command line as an NMCMCConfig (argparse exits 2 on a missing or non-integer
    value)."""
    p = argparse.ArgumentParser(prog="python -m ising_dist.nmcmc",
                                description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    cfgmod.add_flags(p, NMCMCConfig)
    return NMCMCConfig(**cfgmod.given_flags(p.parse_args(argv), NMCMCConfig))


def _check_args(args) -> list[float]:
    torch_device(args.device)                       # first: a run that cannot start stops now
    temps = parse_temperatures(args.temperatures)
    for name, v, low in (("--steps", args.steps, 2), ("--batch", args.batch, 1), ("--k", args.k, 1),
                         ("--burn-in", args.burn_in, 0), ("--seed", args.seed, 0)):
        if v < low:
            raise NMCMCError(f"{name} {v}: must be ≥ {low}")
    out = Path(args.out)
    if out.exists() and not args.overwrite:
        raise NMCMCError(f"--out {str(out)!r} exists; pass --overwrite to replace it (its "
                         f"data would be lost) or choose another --out")
    if out.is_dir():
        raise NMCMCError(f"--out {str(out)!r} is a directory; give a file name, e.g. "
                         f"{out / 'nmcmc.h5'}")
    return temps


def run(args: NMCMCConfig) -> tuple[list[dict], int]:
    """The CLI's work after parsing: checks, sampling, the file. Returns (results of
    :func:`run_chains`, L). Raises NMCMCError, StoreError or RunLockedError with a user
    message."""
    from .runlock import RunLock
    temps = _check_args(args)
    model, model_path = load_proposal_model(args.model)
    model.to(torch_device(args.device))
    L = int(model.cfg.L)
    if args.L is not None and args.L != L:
        raise NMCMCError(f"the model {str(model_path)!r} is for L={L} lattices, not --L "
                         f"{args.L}; train a model at L={args.L} or drop --L")
    proposal = proposal_for(model, args.k)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    partial = out.with_name(out.name + ".partial")
    config = {"algorithm": "nmcmc", "model": str(Path(model_path).absolute()),
              "model_config": model.cfg.to_dict(), "proposal": proposal.name,
              "k": proposal.k, "temperatures": temps, "steps": args.steps,
              "batch": args.batch, "burn_in": args.burn_in, "seed": args.seed, "L": L,
              "device": args.device}
    with RunLock.acquire(out, role="nmcmc") as lock:
        w = RunWriter.create(partial, yaml.safe_dump(config, sort_keys=False), L, args.seed,
                             temps, overwrite=True)
        rows = np.arange(len(temps), dtype=np.int32)

        def sink(s0, states, e, m):
            b = states.shape[0]
            w.write(np.arange(s0 + 1, s0 + b + 1), pack(states), e, m, rows)  # (new arrays)

        bar = None
        if not args.quiet:
            from tqdm import tqdm
            bar = tqdm(total=args.steps, unit="step", file=sys.stderr, dynamic_ncols=True,
                       desc=f"nmcmc L={L} {proposal.name} R={len(temps)}",
                       mininterval=0.5 if sys.stderr.isatty() else 10.0)
        try:
            results = run_chains(proposal, temps, args.steps, batch=args.batch,
                                 burn_in=args.burn_in, seed=args.seed, sink=sink,
                                 progress=bar.update if bar else None)
        finally:
            if bar:
                bar.close()
            w.close()
        _write_summary(partial, results, {
            "proposal": proposal.name, "k": proposal.k, "family": _family(model),
            "model": str(Path(model_path).absolute()), "batch": args.batch,
            "burn_in": args.burn_in, "torch_threads": torch.get_num_threads(),
            "device": args.device,
            "method": "independence Metropolis-Hastings with the model as proposal; "
                      "importance weights of the same proposals for ESS and ln Z"}, args.steps)
        lock.check(out)
        os.replace(partial, out)
    return results, L


def summary_table(results, L: int) -> str:
    head = (f"{'T':>7} {'accept':>7} {'tau_int':>8} {'ESS/n':>7} {'<e> chain':>17} "
            f"{'F = -T lnZ/N':>20} {'F exact':>10} {'s/prop':>9}")
    lines = [head]
    for r in results:
        th = obs.thermo(r["e"], r["m"], r["T"], L, tau=r["tau_int"] if math.isfinite(
            r["tau_int"]) else None)
        lines.append(f"{r['T']:7.4f} {r['acceptance']:7.3f} {r['tau_int']:8.2f} "
                     f"{r['ess_fraction']:7.4f} {th['e'][0]:9.5f}±{th['e'][1]:.5f} "
                     f"{r['free_energy']:11.6f}±{r['free_energy_error']:.6f} "
                     f"{r['free_energy_exact']:10.6f} {r['seconds_per_proposal']:9.2e}")
    return "\n".join(lines)


def main(argv=None) -> int:
    args = parse_args(argv)
    from .runlock import RunLockedError
    try:
        results, L = run(args)
    except (NMCMCError, StoreError, RunLockedError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)   # short chains: τ windows
        print(summary_table(results, L))
    print(f"output: {os.path.abspath(args.out)}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
