"""Network bodies shared by every family: lattice → vector (encoder/critic), vector → logits.

Shapes: lattices are [B, L, L] float in {0, 1} (or probabilities for GAN fakes); temperatures
are [B] (or conditions [B, k]: T, |m|); vectors are [B, D]; logits are [B, L, L]. ``cond`` is
the number of condition features (True = 1: T alone; 2: T and |m|); they enter standardised
(t_feature) as extra input features (MLP), extra constant input channels (conv encoder), or
extra entries of the code (decoders).
"""
from __future__ import annotations

import functools
import math
from typing import Callable, Optional

import torch
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
        conv = PeriodicConv2d if cfg.periodic_padding else nn.Conv2d
        layers, c_in = [], 1 + int(cond)
        for i, c in enumerate(cfg.channels):
            k = _kernel(i)
            layers += [conv(c_in, c, k, stride=2, padding=k // 2), act()]
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


class PeriodicConv2d(nn.Conv2d):
    """nn.Conv2d on a torus, circular padding by ``padding`` on each side (any pad ≥ 0, it
    may wrap more than once): x [B, C, N, N] float → [B, C', n, n], n = (N + 2·padding − k) //
    stride + 1, channels last (memory order [B, n, n, C']). Same parameters and state-dict keys
    as ``nn.Conv2d(..., padding_mode="circular")``, same outputs up to float rounding.

    Computed as one gather and one matmul (:func:`_sites`): the k·k sites under each output
    are read straight off the torus (index_select), so no padded copy is made and its
    gradient is one index_add; both are differentiable again (WGAN-GP's gradient penalty).
    See PERIODIC_GATHER for what it replaced and the figures.

    Raises ValueError when the padded lattice is smaller than the kernel (:func:`_sites`).
    """

    def __init__(self, c_in: int, c_out: int, k: int, stride: int = 1, padding: int = 0):
        super().__init__(c_in, c_out, k, stride=stride, padding=0)
        self.pad = padding

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        B, C, N, _ = x.shape
        k, s = self.kernel_size[0], self.stride[0]
        sites = _sites(N, k, s, self.pad, x.device)                    # [n·n·k·k]
        n = math.isqrt(sites.numel() // (k * k))
        cols = x.permute(0, 2, 3, 1).reshape(B, N * N, C).index_select(1, sites)
        cols = cols.view(B * n * n, k * k * C)             # rows (b, i, j), columns (a, c, C)
        # [(a, c, C), C']; from one channel the plain flatten, whose gradient comes back in the
        # weight's own strides (else DDP warns that they differ from its bucket's)
        w = (self.weight.flatten(1).t() if C == 1
             else self.weight.permute(2, 3, 1, 0).reshape(k * k * C, -1))
        y = cols @ w if self.bias is None else torch.addmm(self.bias, cols, w)
        return y.view(B, n, n, -1).permute(0, 3, 1, 2)


class PeriodicConvTranspose2d(nn.Module):
    """Stride-s transposed conv on a torus, odd k: x [B, C, n, n] float → [B, C', n·s, n·s],
    channels last. The exact adjoint of PeriodicConv2d(C', C, k, s, padding=k // 2): one
    matmul gives every (site, tap) contribution, and one index_add sums them onto the sites of
    the torus they land on (:func:`_sites`, the conv's own gather run backwards). Translating
    the input by one site translates the output by s sites. The weight keeps
    ``nn.ConvTranspose2d``'s layout [C, C', k, k] and state-dict key (``conv.weight``); the
    bias [C'] is added once per site.

    Raises ValueError for an even k (no centred tap: the output would not be n·s wide).
    """

    def __init__(self, c_in: int, c_out: int, k: int, stride: int = 2):
        super().__init__()
        if k % 2 == 0:
            raise ValueError(f"PeriodicConvTranspose2d: kernel size {k} is even; use an odd one")
        self.k, self.stride = k, stride
        self.conv = nn.ConvTranspose2d(c_in, c_out, k, stride=stride, bias=False)  # its weight
        self.bias = nn.Parameter(torch.zeros(c_out))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        B, C, n, _ = x.shape
        k, N = self.k, n * self.stride
        w = self.conv.weight                                           # [C, C', k, k]
        C_out = w.shape[1]
        w = w.flatten(1) if C_out == 1 else w.permute(0, 2, 3, 1).reshape(C, -1)  # as in the conv
        taps = x.permute(0, 2, 3, 1).reshape(B * n * n, C) @ w       # [(b, i, j), (a, c, C')]
        sites = _sites(N, k, self.stride, k // 2, x.device)
        y = x.new_zeros(B, N * N, C_out).index_add(1, sites, taps.view(B, -1, C_out))
        return (y + self.bias).view(B, N, N, C_out).permute(0, 3, 1, 2)


def _sites(N: int, k: int, stride: int, pad: int, device: torch.device) -> torch.Tensor:
    """The gather of a periodic conv: [n·n·k·k] int64 on ``device``, ordered (i, j, a, c) for
    output (i, j) of n × n, n = (N + 2·pad − k) // stride + 1, and kernel tap (a, c); entry
    the site r·N + r' of the N × N torus under it, r = (i·stride + a − pad) mod N, r' = (j·stride
    + c − pad) mod N: the index that circular padding by ``pad`` followed by an unpadded conv
    reads (cross-correlation, as torch's conv). Cached; computed afresh inside torch.compile,
    which traces it into the graph (and warns about a cache).

    Raises ValueError when the padded lattice is smaller than the kernel (n < 1)."""
    if torch.compiler.is_compiling():
        return _sites_of(N, k, stride, pad, device)
    return _cached_sites(N, k, stride, pad, device)


def _sites_of(N: int, k: int, stride: int, pad: int, device: torch.device) -> torch.Tensor:
    n = (N + 2 * pad - k) // stride + 1
    if n < 1:
        raise ValueError(f"periodic conv: a {N}×{N} lattice padded by {pad} is smaller than "
                         f"the kernel ({k}); use a smaller kernel or a larger lattice")
    r = (torch.arange(n, device=device)[:, None] * stride
         + torch.arange(k, device=device)[None, :] - pad) % N                  # [n, k]
    return (r[:, None, :, None] * N + r[None, :, None, :]).reshape(-1)


_cached_sites = functools.lru_cache(maxsize=None)(_sites_of)


# PERIODIC_GATHER: the convs above read the torus through one index_select and write it
# through one index_add. Before, each periodic conv padded its input (five copies, a Python
# autograd Function; its backward folded the gradient back by slice adds), then ran oneDNN's
# conv, or im2col and a matmul for ≤ 4 channels; each transposed conv ran oneDNN's or col2im,
# then folded the overhang back around the torus. Conv VAE ([64, 32], L = 16), batch 64: aten
# calls a training step 1 715 → 752. Training step, one thread, old and new in fresh processes
# taking turns, 3 rounds (ms, old → new): conv VAE batch 1 1.9–2.0 → 1.5, batch 64 9.4–10.4 →
# 7.9–9.5, batch 128 18.1–18.6 → 15.2–15.5; WGAN-GP batch 64 40.4–40.5 → 29.6–30.3, batch 128
# 72–80 → 56–58. The fixed cost of a step fell by a quarter, so two workers at half the batch
# each lose less to it (README, benchmarks.training).


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
