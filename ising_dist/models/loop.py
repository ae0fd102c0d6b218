"""One epoch of training or evaluation, plain PyTorch (Ray stays outside, in ising_dist.train).

``loader`` yields (x [B, L, L] float {0,1}, T [B] float) batches. ``model`` is a model from
build_model or that model wrapped in DistributedDataParallel:
- likelihood models: every loss goes through ``model(x, T)`` (forward returns the losses dict),
  so DDP all-reduces gradients in backward;
- GANs: ``model(x, T, "critic")`` and ``model(x, T, "generator")`` are two forward paths of one
  DDP module, each followed by its own backward and optimizer step. Wrap GANs with
  ``DistributedDataParallel(model, find_unused_parameters=True)``: the critic path runs the
  generator without gradient. A GAN wrapped otherwise is refused with that advice.
- energy models (family "rbm"): as likelihood models; ``total`` is the CD surrogate, and
  evaluate_epoch first estimates ln Z of every ladder temperature by AIS (log_partition), so
  its terms add ``nll`` (nats per spin) and ``nll_err``;
- models that keep statistics of their training data (``observe(x, T)``: the |m| table of a
  condition_m model) see every training batch before its step;
- exact models (family "autoregressive") with objective "likelihood": as likelihood models;
  with objective "variational" (VAN) there is no data: ``train_variational_epoch`` draws each
  rank's own batch from the model (the caller seeds each rank differently) and DDP averages
  the gradients; ``evaluate_variational`` estimates F_q on fresh samples.
Returned dicts hold the batch-size-weighted mean of each term over the epoch (this rank only),
except ``*_variational``, whose free energy and its error are over all ranks.
"""
from __future__ import annotations

import math
from collections import defaultdict
from typing import Iterable, Optional, Sequence

import torch
import torch.distributed as dist
from torch import nn

Batch = tuple[torch.Tensor, torch.Tensor]


def unwrap(model: nn.Module) -> nn.Module:
    """The model itself, whether or not it is wrapped in DDP (or DataParallel)."""
    return model.module if isinstance(model, (nn.parallel.DistributedDataParallel,
                                              nn.DataParallel)) else model


class _Means:
    """Batch-size-weighted running means of named scalar tensors."""

    def __init__(self) -> None:
        self.sums: dict[str, float] = defaultdict(float)
        self.counts: dict[str, int] = defaultdict(int)

    def add(self, terms: dict[str, torch.Tensor], n: int, prefix: str = "") -> None:
        values = torch.stack([v.detach().float() for v in terms.values()]).tolist()  # one sync
        for k, v in zip(terms, values):
            self.sums[prefix + k] += v * n
            self.counts[prefix + k] += n

    def result(self) -> dict[str, float]:
        return {k: self.sums[k] / self.counts[k] for k in self.sums}


def _step(opt: torch.optim.Optimizer, loss: torch.Tensor) -> None:
    opt.zero_grad(set_to_none=True)
    loss.backward()
    opt.step()


def _check_ddp_gan(model: nn.Module) -> None:
    if (isinstance(model, nn.parallel.DistributedDataParallel)
            and not getattr(model, "find_unused_parameters", False)):
        raise ValueError("a GAN under DistributedDataParallel needs find_unused_parameters=True "
                         "(the critic step runs the generator without gradient): wrap it as "
                         "DistributedDataParallel(model, find_unused_parameters=True)")


def train_epoch(model: nn.Module, loader: Iterable[Batch],
                optimizers: Sequence[torch.optim.Optimizer], device) -> dict[str, float]:
    """One pass over loader with optimizers from configure_optimizers.

    Likelihood, exact and energy models: one step per batch on losses["total"]; keys recon,
    kl, mag, binarize, total (VAEs), nll, total (exact), cd, free_energy, recon, total (RBM).
    GANs: a critic step every batch and a generator step after every n_critic-th critic step
    (WGAN-GP, counted across epochs; the BCE GANs alternate 1:1); keys critic_<term> and
    gen_<term>."""
    net = unwrap(model)
    _check_not_variational(net)
    model.train()
    means = _Means()
    observe = getattr(net, "observe", None)
    if net.kind in ("likelihood", "exact", "energy"):
        opt, = optimizers
        for x, T in loader:
            x, T = x.to(device, torch.float32), T.to(device, torch.float32)
            if observe is not None:
                observe(x, T)
            terms = model(x, T)
            _step(opt, terms["total"])
            means.add(terms, x.shape[0])
        return means.result()
    _check_ddp_gan(model)
    g_opt, c_opt = optimizers
    n_critic = net.cfg.n_critic if net.cfg.family == "wgan-gp" else 1
    for x, T in loader:
        x, T = x.to(device, torch.float32), T.to(device, torch.float32)
        if observe is not None:
            observe(x, T)
        terms = model(x, T, "critic")
        _step(c_opt, terms["total"])
        means.add(terms, x.shape[0], "critic_")
        net.critic_steps += 1                      # counted across epochs: short epochs still
        if net.critic_steps % n_critic == 0:       # train the generator
            terms = model(x, T, "generator")
            _step(g_opt, terms["total"])
            means.add(terms, x.shape[0], "gen_")
    return means.result()


@torch.no_grad()
def evaluate_epoch(model: nn.Module, loader: Iterable[Batch], device) -> dict[str, float]:
    """Same keys as train_epoch, no parameter updates (the WGAN gradient penalty still
    differentiates the critic with respect to its input); energy models add nll and nll_err
    from one AIS estimate of ln Z per temperature, made first (RBM.log_partition)."""
    net = unwrap(model)
    _check_not_variational(net)
    was_training = net.training
    net.eval()
    means = _Means()
    z = {}
    try:
        if net.kind == "energy":
            z["log_z"], z["log_z_err"] = net.log_partition()
        for x, T in loader:
            x, T = x.to(device, torch.float32), T.to(device, torch.float32)
            if net.kind in ("likelihood", "exact", "energy"):
                means.add(net.losses(x, T, **z), x.shape[0])
            else:
                means.add(net.critic_loss(x, T), x.shape[0], "critic_")
                means.add(net.generator_loss(x, T), x.shape[0], "gen_")
    finally:
        net.train(was_training)
    return means.result()


# ---------------------------------------------------------------------------- VAN (no data)
def _check_not_variational(net: nn.Module) -> None:
    if getattr(net.cfg, "objective", "likelihood") == "variational":
        raise ValueError("objective='variational' trains without data: use "
                         "train_variational_epoch / evaluate_variational")


def van_beta(target_T: float, beta_anneal: float, step: int, steps_per_epoch: int) -> float:
    """Inverse temperature of VAN gradient step ``step`` (0-based, counted from the start of
    the run): rises linearly from β_t / n_a to β_t = 1 / target_T over the first
    n_a = beta_anneal · steps_per_epoch steps (beta_anneal in epochs), then stays at β_t
    (n_a < 1: β_t throughout). Annealing from small β keeps q from collapsing onto one ordered
    state early (Wu, Wang & Zhang 2019)."""
    beta_t = 1.0 / target_T
    n_a = beta_anneal * steps_per_epoch
    return beta_t if n_a < 1 else beta_t * min(1.0, (step + 1) / n_a)


def _world() -> int:
    return dist.get_world_size() if dist.is_available() and dist.is_initialized() else 1


def _global_mean_err(values: list[torch.Tensor]) -> tuple[float, float]:
    """Mean of all samples of all ranks and its standard error (i.i.d. samples)."""
    v = torch.cat(values).double().cpu()
    t = torch.stack([v.sum(), (v * v).sum(), torch.tensor(float(v.numel()), dtype=torch.float64)])
    if _world() > 1:
        if dist.get_backend() == "nccl":
            t = t.cuda()
        dist.all_reduce(t)
        t = t.cpu()
    s, s2, n = t.tolist()
    mean = s / n
    var = max(s2 / n - mean * mean, 0.0) * n / max(n - 1, 1)
    return mean, math.sqrt(var / n)


def train_variational_epoch(model: nn.Module, optimizers: Sequence[torch.optim.Optimizer],
                            epoch: int, device) -> dict[str, float]:
    """One VAN epoch: cfg.van_steps gradient steps, each on van_batch // world samples of
    this rank drawn from the model itself at the annealed β (van_beta), the gradient of the
    score-function surrogate averaged over ranks by DDP.

    Returns the means over the epoch of free_energy (F_q per spin at the target T, J), energy,
    entropy, total (= free_energy), beta (the last step's), and free_energy_err: the standard
    error of free_energy over all samples of all ranks (q changes within the epoch; the
    evaluate_variational figure is the model's own)."""
    net = unwrap(model)
    cfg = net.cfg
    opt, = optimizers
    model.train()
    batch = max(1, cfg.van_batch // _world())
    means, f_all = _Means(), []
    beta = 0.0
    for i in range(cfg.van_steps):
        beta = van_beta(cfg.temperature, cfg.beta_anneal, epoch * cfg.van_steps + i,
                        cfg.van_steps)
        spins, _ = net.sample(batch)
        terms = model((spins.to(device, torch.float32) + 1) / 2, beta=beta)
        _step(opt, terms.pop("surrogate"))
        f_all.append(terms.pop("free_energy_per_sample"))
        means.add(terms, batch)
    out = means.result()
    out["free_energy"], out["free_energy_err"] = _global_mean_err(f_all)
    out["total"], out["beta"] = out["free_energy"], beta
    return out


@torch.no_grad()
def evaluate_variational(model: nn.Module, device, n: Optional[int] = None
                         ) -> dict[str, float]:
    """F_q per spin of the current model at its target temperature, from n (default
    cfg.van_batch) fresh samples split over the ranks: free_energy ± free_energy_err
    (standard error), energy, entropy (per spin), total (= free_energy)."""
    net = unwrap(model)
    was_training = net.training
    net.eval()
    try:
        n = max(1, (n or net.cfg.van_batch) // _world())
        spins, _ = net.sample(n)
        terms = net.variational_losses((spins.to(device, torch.float32) + 1) / 2,
                                       beta=1.0 / net.cfg.temperature)
    finally:
        net.train(was_training)
    f = terms.pop("free_energy_per_sample")
    terms.pop("surrogate")
    means = _Means()
    means.add(terms, n)
    out = means.result()
    out["free_energy"], out["free_energy_err"] = _global_mean_err([f])
    out["total"] = out["free_energy"]
    return out
