"""One epoch of training or evaluation, plain PyTorch (Ray stays outside, in ising_dist.train).

``loader`` yields (x [B, L, L] float {0,1}, T [B] float) batches. ``model`` is a model from
build_model or that model wrapped in DistributedDataParallel:
- likelihood models: every loss goes through ``model(x, T)`` (forward returns the losses dict),
  so DDP all-reduces gradients in backward;
- GANs: ``model(x, T, "critic")`` and ``model(x, T, "generator")`` are two forward paths of one
  DDP module, each followed by its own backward and optimizer step. Wrap GANs with
  ``DistributedDataParallel(model, find_unused_parameters=True)``: the critic path runs the
  generator without gradient. A GAN wrapped otherwise is refused with that advice.
Returned dicts hold the batch-size-weighted mean of each term over the epoch (this rank only).
"""
from __future__ import annotations

from collections import defaultdict
from typing import Iterable, Sequence

import torch
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

    Likelihood models: one step per batch on losses["total"]; keys recon, kl, mag, binarize,
    total. GANs: a critic step every batch and a generator step after every n_critic-th
    critic step (WGAN-GP, counted across epochs; DCGAN alternates 1:1); keys critic_<term>
    and gen_<term>."""
    net = unwrap(model)
    model.train()
    means = _Means()
    if net.kind == "likelihood":
        opt, = optimizers
        for x, T in loader:
            x, T = x.to(device, torch.float32), T.to(device, torch.float32)
            terms = model(x, T)
            _step(opt, terms["total"])
            means.add(terms, x.shape[0])
        return means.result()
    _check_ddp_gan(model)
    g_opt, c_opt = optimizers
    n_critic = net.cfg.n_critic if net.cfg.family == "wgan-gp" else 1
    for x, T in loader:
        x, T = x.to(device, torch.float32), T.to(device, torch.float32)
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
    differentiates the critic with respect to its input)."""
    net = unwrap(model)
    was_training = net.training
    net.eval()
    means = _Means()
    try:
        for x, T in loader:
            x, T = x.to(device, torch.float32), T.to(device, torch.float32)
            if net.kind == "likelihood":
                means.add(net.losses(x, T), x.shape[0])
            else:
                means.add(net.critic_loss(x, T), x.shape[0], "critic_")
                means.add(net.generator_loss(x, T), x.shape[0], "gen_")
    finally:
        net.train(was_training)
    return means.result()
