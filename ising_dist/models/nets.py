"""Network bodies shared by every family: lattice → vector (encoder/critic), vector → logits.

Shapes: lattices are [B, L, L] float in {0, 1} (or probabilities for GAN fakes); temperatures
are [B] (or conditions [B, k]: T, |m|); vectors are [B, D]; logits are [B, L, L]. ``cond`` is
the number of condition features (True = 1: T alone; 2: T and |m|); they enter standardised
(t_feature) as extra input features (MLP), extra constant input channels (conv encoder), or
extra entries of the code (decoders).
"""
from __future__ import annotations

from typing import Callable, Optional

import torch
import torch.nn.functional as F
from torch import nn

from .config import ModelConfig

Act = Callable[[], nn.Module]


def t_feature(T: Optional[torch.Tensor], cfg: ModelConfig, B: int) -> torch.Tensor:
    """Network input of the condition: temperatures [B] → [B, 1]; conditions [B, k] (column 0
    T, column 1 |m|, ModelConfig.condition_m) → [B, k]. Each feature spans about [−1, 1]:
    T as (T − centre) / half-width of the training ladder (cfg.ladder; without one, T / t_scale
    as before, so older model files behave as trained), |m| as 2|m| − 1.

    Why standardise (issue 15): T / Tc spans only 0.7–1.4 over a usual ladder, an input close to
    a constant that the networks learned to ignore. On an L = 8 PT file (T = 1.8–3.0, 100
    epochs) the DCGAN generated <|m|> 0.89 at every T; with the standardised input 0.84, 0.83,
    0.62, 0.35 against MCMC's 0.96, 0.85, 0.59, 0.34."""
    if T is None:
        raise ValueError(f"family={cfg.family!r} is conditional on temperature: pass T "
                         f"(a scalar or a [B] tensor)")
    t = T[:, :1] if T.ndim == 2 else T.reshape(B, 1)
    if len(cfg.ladder) > 1:
        lo, hi = cfg.ladder[0], cfg.ladder[-1]
        t = (t - 0.5 * (lo + hi)) / (0.5 * (hi - lo))
    else:
        t = t / cfg.t_scale
    if T.ndim == 2:
        t = torch.cat([t, 2 * T[:, 1:] - 1], dim=1)
    return t.float()


class MLPEncoder(nn.Module):
    """x [B, L, L] (+ T [B]) → [B, out_dim]; widths L² → hidden[0] → … → out_dim (seed 004)."""

    def __init__(self, cfg: ModelConfig, out_dim: int, cond: bool, act: Act):
        super().__init__()
        self.cfg, self.cond = cfg, cond
        layers, d = [], cfg.L * cfg.L + int(cond)
        for h in cfg.hidden:
            layers += [nn.Linear(d, h), act()]
            d = h
        layers.append(nn.Linear(d, out_dim))
        self.net = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor, T: Optional[torch.Tensor] = None) -> torch.Tensor:
        h = x.reshape(x.shape[0], -1)
        if self.cond:
            h = torch.cat([h, t_feature(T, self.cfg, x.shape[0])], dim=1)
        return self.net(h)


class MLPDecoder(nn.Module):
    """z [B, in_dim] (+ T [B]) → logits [B, L, L]; widths mirror the encoder's."""

    def __init__(self, cfg: ModelConfig, in_dim: int, cond: bool, act: Act):
        super().__init__()
        self.cfg, self.cond = cfg, cond
        layers, d = [], in_dim + int(cond)
        for h in reversed(cfg.hidden):
            layers += [nn.Linear(d, h), act()]
            d = h
        layers.append(nn.Linear(d, cfg.L * cfg.L))
        self.net = nn.Sequential(*layers)

    def forward(self, z: torch.Tensor, T: Optional[torch.Tensor] = None) -> torch.Tensor:
        if self.cond:
            z = torch.cat([z, t_feature(T, self.cfg, z.shape[0])], dim=1)
        return self.net(z).reshape(z.shape[0], self.cfg.L, self.cfg.L)


def _kernel(i: int) -> int:
    """Seed 001: the first conv is 5x5, later ones 3x3 (all stride 2)."""
    return 5 if i == 0 else 3


class ConvEncoder(nn.Module):
    """x [B, L, L] (+ T) → [B, out_dim]: stride-2 convs channels[0], channels[1], … then dense.

    Each conv halves the lattice, so the dense layer sees channels[-1] × (L / 2**n)².
    """

    def __init__(self, cfg: ModelConfig, out_dim: int, cond: bool, act: Act):
        super().__init__()
        self.cfg, self.cond = cfg, cond
        mode = "circular" if cfg.periodic_padding else "zeros"
        layers, c_in = [], 1 + int(cond)
        for i, c in enumerate(cfg.channels):
            k = _kernel(i)
            layers += [nn.Conv2d(c_in, c, k, stride=2, padding=k // 2, padding_mode=mode), act()]
            c_in = c
        side = cfg.L // 2 ** len(cfg.channels)
        self.convs = nn.Sequential(*layers)
        self.dense = nn.Linear(c_in * side * side, out_dim)

    def forward(self, x: torch.Tensor, T: Optional[torch.Tensor] = None) -> torch.Tensor:
        h = x.unsqueeze(1)                                        # [B, 1, L, L]
        if self.cond:
            t = t_feature(T, self.cfg, x.shape[0])[:, :, None, None]
            h = torch.cat([h, t.expand(-1, -1, *h.shape[2:])], dim=1)   # [B, 1 + k, L, L]
        return self.dense(self.convs(h).flatten(1))


class PeriodicConvTranspose2d(nn.Module):
    """Stride-s transposed conv on a torus: [B, C, n, n] → [B, C', n·s, n·s].

    The exact adjoint of a circular-padded stride-s conv with padding k//2: run the transposed
    conv without padding, then fold the overhanging border back around the torus (sum positions
    equal modulo n·s). Translating the input by one site translates the output by s sites.
    The fold adds the few overhanging rows and columns where they wrap to (:func:`_fold`): a
    reshape-and-sum over a padded copy took a third of the conv VAE's training step.
    """

    def __init__(self, c_in: int, c_out: int, k: int, stride: int = 2):
        super().__init__()
        self.k, self.stride = k, stride
        self.conv = nn.ConvTranspose2d(c_in, c_out, k, stride=stride, bias=False)
        self.bias = nn.Parameter(torch.zeros(c_out))  # added once per site, after folding

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        N = x.shape[-1] * self.stride
        y = self.conv(x)                                          # side (n-1)·s + k
        p = self.k // 2                                           # full index q ↦ site (q-p) mod N
        return _fold(_fold(y, -1, p, N), -2, p, N) + self.bias[:, None, None]


def _fold(y: torch.Tensor, dim: int, p: int, N: int) -> torch.Tensor:
    """Wrap axis ``dim`` (negative) of y onto a ring of N sites, index q going to site
    (q - p) mod N, summing what lands on the same site: y [..., S, ...] → [..., N, ...].
    Each run of indices between wrap points is one slice, padded to N and added."""
    S, out = y.shape[dim], None
    a = 0
    while a < S:
        b = min(S, p + ((a - p) // N + 1) * N)                  # next wrap point after a
        site = (a - p) % N
        part = y.narrow(dim, a, b - a)
        if b - a < N:
            part = F.pad(part, [0, 0] * (-dim - 1) + [site, N - site - (b - a)])
        out = part if out is None else out + part
        a = b
    return out


class ConvDecoder(nn.Module):
    """z [B, in_dim] (+ T) → logits [B, L, L]: dense, then transposed convs mirroring the
    ConvEncoder."""

    def __init__(self, cfg: ModelConfig, in_dim: int, cond: bool, act: Act):
        super().__init__()
        self.cfg, self.cond = cfg, cond
        n = len(cfg.channels)
        self.side, self.c0 = cfg.L // 2 ** n, cfg.channels[-1]
        self.dense = nn.Sequential(nn.Linear(in_dim + int(cond), self.c0 * self.side ** 2), act())
        layers = []
        for i in reversed(range(n)):                  # channels[i] → channels[i-1] (or 1)
            c_in, c_out, k = cfg.channels[i], (cfg.channels[i - 1] if i else 1), _kernel(i)
            if cfg.periodic_padding:
                layers.append(PeriodicConvTranspose2d(c_in, c_out, k))
            else:
                layers.append(nn.ConvTranspose2d(c_in, c_out, k, stride=2, padding=k // 2,
                                                 output_padding=1))
            if i:
                layers.append(act())
        self.deconvs = nn.Sequential(*layers)

    def forward(self, z: torch.Tensor, T: Optional[torch.Tensor] = None) -> torch.Tensor:
        if self.cond:
            z = torch.cat([z, t_feature(T, self.cfg, z.shape[0])], dim=1)
        h = self.dense(z).reshape(z.shape[0], self.c0, self.side, self.side)
        return self.deconvs(h).squeeze(1)


def make_encoder(cfg: ModelConfig, out_dim: int, cond: bool, act: Act = nn.ReLU) -> nn.Module:
    """Lattice → vector body chosen by cfg.arch."""
    return (MLPEncoder if cfg.arch == "mlp" else ConvEncoder)(cfg, out_dim, cond, act)


def make_decoder(cfg: ModelConfig, in_dim: int, cond: bool, act: Act = nn.ReLU) -> nn.Module:
    """Vector → logits body chosen by cfg.arch."""
    return (MLPDecoder if cfg.arch == "mlp" else ConvDecoder)(cfg, in_dim, cond, act)
