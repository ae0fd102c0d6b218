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
    """nn.Conv2d on a torus: circular padding by ``padding`` on each side of the last two axes
    (:func:`circular_pad`), then the conv without padding: as a matmul for a few input
    channels (GEMM_MAX_CHANNELS), else torch's conv on a channels-last input. Same parameters
    and state-dict keys as ``nn.Conv2d(..., padding_mode="circular")``, same outputs up to
    float rounding; the output is channels last (see CHANNELS_LAST). Its backward folds the
    padded gradient back with a few slice adds instead of the zero-filled copies of F.pad's
    backward, which took a quarter of the conv VAE's training step at batch 64 (1.7 ms of
    zero fills, 2 ms of copies in 14.6 ms)."""

    def __init__(self, c_in: int, c_out: int, k: int, stride: int = 1, padding: int = 0):
        super().__init__(c_in, c_out, k, stride=stride, padding=0)
        self.pad = padding

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = circular_pad(x, self.pad, self.pad)
        if self.in_channels <= GEMM_MAX_CHANNELS:
            return _conv_gemm(x, self.weight, self.bias, self.stride[0])
        return super().forward(x.contiguous(memory_format=torch.channels_last))


class PeriodicConvTranspose2d(nn.Module):
    """Stride-s transposed conv on a torus: [B, C, n, n] → [B, C', n·s, n·s].

    The exact adjoint of a circular-padded stride-s conv with padding k//2: run the transposed
    conv without padding, then fold the overhanging border back around the torus (sum positions
    equal modulo n·s, :func:`circular_fold`). Translating the input by one site translates the
    output by s sites.
    """

    def __init__(self, c_in: int, c_out: int, k: int, stride: int = 2):
        super().__init__()
        self.k, self.stride = k, stride
        self.conv = nn.ConvTranspose2d(c_in, c_out, k, stride=stride, bias=False)
        self.bias = nn.Parameter(torch.zeros(c_out))  # added once per site, after folding

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        N = x.shape[-1] * self.stride
        if self.conv.out_channels <= GEMM_MAX_CHANNELS:   # side (n-1)·s + k
            y = _conv_transpose_gemm(x, self.conv.weight, self.stride)
        else:
            y = self.conv(x.contiguous(memory_format=torch.channels_last))
        p = self.k // 2                                           # full index q ↦ site (q-p) mod N
        return circular_fold(y, p, y.shape[-1] - N - p) + self.bias[:, None, None]


# oneDNN, torch's CPU conv, is slow at a transposed conv to a few channels, and so at the input
# gradient of a conv from a few channels (the critic's first conv under WGAN-GP's gradient
# penalty). With at most this many channels there, they run as im2col/col2im and one matmul
# (_conv_gemm, _conv_transpose_gemm). Forward and backward, batch 64, k = 5, 64 channels on the
# other side, one thread (ms, oneDNN → matmul form): conv from 1, 2, 3, 4, 8 channels with the
# input's gradient 3.2 → 1.2, 3.6 → 2.0, 3.9 → 2.9, 5.0 → 3.9, 5.6 → 7.2, from 1 channel
# without it 0.67 → 0.96 (kept: its output comes out channels last for free, see
# CHANNELS_LAST); transposed conv to 1, 2, 4 channels 3.3 → 1.3, 4.2 → 2.3, 5.1 → 3.9; a
# 64 → 32 conv 2.2 → 4.5.
#
# CHANNELS_LAST: the activations between periodic convs are [B, C, H, W] with the channels
# fastest in memory (torch.channels_last). oneDNN converts a conv's input to that layout
# anyway, forward or backward: the conv VAE's 64 → 32 conv, batch 64, fwd + bwd 3.7 ms on an
# NCHW input, 2.3 ms on a channels-last one, and the conversion itself costs what it saves.
# The matmul forms produce and read that layout as plain views. Training step, one thread,
# two interleaved rounds (with the fused Adam of base.adam and _pad's five copies): conv VAE
# batch 64 9.8–11.6 → 8.5–10.3 ms, batch 128 18.7–22.3 → 16.4–17.8 ms; WGAN-GP batch 64
# 36.5–36.8 → 33.5–35.2 ms, batch 128 69.1–72.5 → 64.4–66.6 ms.
GEMM_MAX_CHANNELS = 4


def _conv_gemm(x: torch.Tensor, w: torch.Tensor, b: Optional[torch.Tensor], stride: int
               ) -> torch.Tensor:
    """F.conv2d(x, w, b, stride=stride) without padding, as im2col (F.unfold) and one matmul:
    x [B, C, S, S], w [C', C, k, k], b [C'] or None → [B, C', (S − k) // stride + 1, same],
    channels last."""
    B, C, S, _ = x.shape
    k = w.shape[-1]
    n = (S - k) // stride + 1
    cols = nn.functional.unfold(x, k, stride=stride)                    # [B, C·k·k, n·n]
    y = cols.transpose(1, 2) @ w.reshape(w.shape[0], -1).t()             # [B, n·n, C']
    if b is not None:
        y = y + b
    return y.view(B, n, n, -1).permute(0, 3, 1, 2)                      # channels last


def _conv_transpose_gemm(x: torch.Tensor, w: torch.Tensor, stride: int) -> torch.Tensor:
    """F.conv_transpose2d(x, w, stride=stride) without padding, as one matmul and col2im
    (F.fold): x [B, C, n, n] (read without a copy when channels last), w [C, C', k, k] →
    [B, C', (n−1)·stride + k, same]."""
    B, C, n, _ = x.shape
    k = w.shape[-1]
    xl = x.permute(0, 2, 3, 1).reshape(B, n * n, C)            # a view when x is channels last
    cols = (xl @ w.reshape(C, -1)).transpose(1, 2)              # [B, C'k², n²]
    side = (n - 1) * stride + k
    return nn.functional.fold(cols, (side, side), k, stride=stride)


def circular_pad(x: torch.Tensor, before: int, after: int) -> torch.Tensor:
    """Periodic padding of the last two axes: x [..., N, N] → y [..., S, S], S = before + N +
    after, y[..., q, q'] = x[..., (q − before) mod N, (q' − before) mod N]. Any pad ≥ 0 (it may
    wrap more than once). Its gradient is :func:`circular_fold` and the fold's is this, so
    double backward (WGAN-GP's gradient penalty) works too."""
    return _CircularPad.apply(x, before, after)


def circular_fold(y: torch.Tensor, before: int, after: int) -> torch.Tensor:
    """The adjoint of :func:`circular_pad`: y [..., S, S] → x [..., N, N], N = S − before −
    after ≥ 1, each x site the sum of the y entries at positions q with (q − before) mod N
    equal to it, on both axes."""
    return _CircularFold.apply(y, before, after)


def _wrap_runs(S: int, before: int, N: int):
    """(start, length, site) of the runs of positions 0 … S−1 outside [before, before + N) that
    land on consecutive sites of a ring of N (position q ↦ site (q − before) mod N)."""
    q = 0
    while q < S:
        if before <= q < before + N:
            q = before + N
            continue
        site = (q - before) % N
        n = min(N - site, (before if q < before else S) - q)
        yield q, n, site
        q += n


def _pad(x: torch.Tensor, before: int, after: int) -> torch.Tensor:
    """circular_pad's forward, in five copies into a tensor of x's layout: x into the middle,
    the wrapped columns of the middle rows, then whole wrapped rows (corners included) copied
    within the output. Conv VAE shapes, one thread: 25 µs a call less than copying the 3 × 3
    blocks of x (55 → 30 µs at batch 1, 243 → 206 µs at batch 64, 64 channels)."""
    N = x.shape[-1]
    S = before + N + after
    runs = list(_wrap_runs(S, before, N))
    out = torch.empty(*x.shape[:-2], S, S, dtype=x.dtype, device=x.device,
                      memory_format=_layout(x))
    middle = out.narrow(-2, before, N)
    middle.narrow(-1, before, N).copy_(x)
    for q, n, site in runs:
        middle.narrow(-1, q, n).copy_(x.narrow(-1, site, n))
    for q, n, site in runs:
        out.narrow(-2, q, n).copy_(out.narrow(-2, before + site, n))
    return out


def _layout(x: torch.Tensor) -> torch.memory_format:
    """channels_last for a [B, C, H, W] tensor stored with its channels fastest, else
    contiguous: what the convolutions around it produce and read fastest."""
    if x.dim() == 4 and x.shape[1] > 1 and x.stride(1) == 1:
        return torch.channels_last
    return torch.contiguous_format


def _fold_axis(y: torch.Tensor, dim: int, before: int, after: int) -> torch.Tensor:
    S = y.shape[dim]
    N = S - before - after
    out = y.narrow(dim, before, N).clone()
    for q, n, site in _wrap_runs(S, before, N):
        out.narrow(dim, site, n).add_(y.narrow(dim, q, n))
    return out


class _CircularPad(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, before, after):
        ctx.pads = (before, after)
        return _pad(x, before, after)

    @staticmethod
    def backward(ctx, g):
        return _CircularFold.apply(g, *ctx.pads), None, None


class _CircularFold(torch.autograd.Function):
    @staticmethod
    def forward(ctx, y, before, after):
        ctx.pads = (before, after)
        return _fold_axis(_fold_axis(y, -1, before, after), -2, before, after)

    @staticmethod
    def backward(ctx, g):
        return _CircularPad.apply(g, *ctx.pads), None, None


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
