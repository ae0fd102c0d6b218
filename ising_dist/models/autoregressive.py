"""Autoregressive generators with an exact, normalised likelihood (family "autoregressive").

    q(x | T) = Π_i q(x_i | x_<i, T),   q(x_i = +1 | x_<i, T) = sigmoid(logit_i(x_<i, T))

over the N = L² sites in raster order (i = row·L + column). Every conditional is a Bernoulli,
so q is normalised for any weights: Σ_x q(x | T) = 1 exactly (up to float64 rounding of the
sum of logsigmoids). ln q(x) = Σ_i logsigmoid(s_i · logit_i) for spins s = ±1.

Bodies (cfg.body):
- "pixelcnn" (van den Oord et al. 2016, arXiv 1601.06759; used for the Ising model by VAN,
  Wu, Wang & Zhang, PRL 122, 080602, arXiv 1809.10606). An exclusive ('A') masked convolution
  whose half-kernel spans the whole lattice (L rows × 2L−1 columns: every row above and the
  sites to the left), so every site sees every earlier site directly — no blind spot; then
  ``ar_blocks`` residual blocks h ← h + conv_B(act(h)) with 'B'-masked ar_kernel × ar_kernel
  kernels (the centre included), then a 1×1 convolution to one logit per site.
- "made" (Germain et al. 2015, arXiv 1502.03509): masked dense layers N → ar_hidden → N with
  hidden degrees spread evenly over 1 … N−1, plus a masked direct input → output connection.
Boundary: convolutions pad with zeros (open boundary for the network). Any autoregressive
order gives an exact q, so periodicity is not needed for correctness; a circular pad would
wrap the left neighbour of column 0 onto column L−1 of the same row, a later site, and break
the autoregressive property. Spins enter the networks as ±1, so the zero pad is distinct.

Options: t_conditional (T enters every layer as a bias, a linear function of (T/t_scale,
t_scale/T): one network for the whole ladder); z2 (q_s(x) = ½ (q(x) + q(−x)), sampled by a
global flip with probability ½).

Sampling is batched and incremental: N sequential steps over the whole batch, each computing
only what the new site needs. PixelCNN: features of a site depend only on earlier sites, so
each layer's feature at the current site is computed from the cached features of the sites
before it (Ramachandran et al. 2017, arXiv 1704.06001). MADE: the hidden units of degree i are
computed at step i, once, from the units of lower degree (in total one forward pass).

Objectives (cfg.objective): "likelihood" — forward(x) returns the negative log-likelihood per
spin; "variational" (VAN) — forward(x, beta=β) on the model's own samples returns the
score-function (REINFORCE) surrogate of β F_q = E_q[β E(x) + ln q(x)] with the batch mean of
the reward as baseline, and F_q per spin at the target temperature.
"""
from __future__ import annotations

import math
from typing import Optional

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from .base import GenerativeModel, TLike, adam
from .config import SAMPLE_MODES, ModelConfig

SAMPLE_CHUNK = 4096   # samples drawn together by sample(); bounds the feature caches' memory


def ising_energy(spins: torch.Tensor) -> torch.Tensor:
    """Total energy H = −Σ_<ij> s_i s_j (J = 1) of ±1 spins [B, L, L] on the periodic L×L
    lattice, float64 [B] (units of J; at L = 2 each bond is counted twice, as in
    ising_dist.exact and ising_dist.observables)."""
    s = spins.to(torch.float64)
    return -(s * (torch.roll(s, -1, dims=-1) + torch.roll(s, -1, dims=-2))).sum(dim=(-2, -1))


def _t_features(t: torch.Tensor, t_scale: float) -> torch.Tensor:
    """[B] temperatures → [B, 2] inputs (T / t_scale, t_scale / T)."""
    tau = t.reshape(-1, 1).float() / t_scale
    return torch.cat([tau, 1.0 / tau], dim=1)


# ============================================================================ PixelCNN
class _MaskedConv(nn.Module):
    """A raster-order masked convolution, input [B, C_in, L, L] → [B, C_out, L, L], zero
    padded. The kernel has kh rows, the last one through the centre, and 2·kh − 1 columns
    (rows below the centre would be masked entirely, so they are not stored unless
    ``full``): in the centre row the columns right of the centre are masked; ``exclusive``
    ('A' mask) masks the centre too. ``full`` stores the square (2·kh − 1)² kernel with its
    lower rows masked: the same function, which CPU convolution libraries run faster for
    small kernels (measured: 3×3 vs 2×3)."""

    def __init__(self, c_in: int, c_out: int, kh: int, exclusive: bool, full: bool = False):
        super().__init__()
        self.kh, self.full = kh, full
        k = 2 * kh - 1
        self.weight = nn.Parameter(torch.empty(c_out, c_in, k if full else kh, k))
        self.bias = nn.Parameter(torch.zeros(c_out))
        mask = torch.zeros(k if full else kh, k)
        mask[:kh - 1] = 1
        mask[kh - 1, :kh - 1 + (0 if exclusive else 1)] = 1
        self.register_buffer("mask", mask, persistent=False)
        fan_in = c_in * int(mask.sum().item())                     # taps that are used
        nn.init.uniform_(self.weight, -1 / math.sqrt(fan_in), 1 / math.sqrt(fan_in))

    def masked_weight(self) -> torch.Tensor:
        return self.weight * self.mask

    def upper_weight(self) -> torch.Tensor:
        """The masked kernel's rows above and through the centre: [C_out, C_in, kh, 2kh−1]."""
        return self.masked_weight()[:, :, :self.kh]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        p = self.kh - 1
        if self.full:
            return F.conv2d(x, self.masked_weight(), self.bias, padding=p)
        return F.conv2d(F.pad(x, (p, p, p, 0)), self.masked_weight(), self.bias)


class PixelCNN(nn.Module):
    """Spins ±1 [B, L, L] (+ T features [B, 2]) → logits [B, L, L]; see the module doc."""

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        L, C, K = cfg.L, cfg.ar_channels, cfg.ar_blocks
        self.L, self.C, self.h = L, C, cfg.ar_kernel // 2
        self.first = _MaskedConv(1, C, L, exclusive=True)
        self.blocks = nn.ModuleList(_MaskedConv(C, C, self.h + 1, exclusive=False, full=True)
                                    for _ in range(K))
        self.acts = nn.ModuleList(nn.PReLU(C, init=0.5) for _ in range(K + 1))
        self.out = nn.Linear(C, 1)
        # per-layer biases as a function of T: K + 1 feature layers of C, one logit
        self.t_bias = nn.Linear(2, (K + 1) * C + 1) if cfg.conditional else None
        if self.t_bias is not None:
            nn.init.zeros_(self.t_bias.weight)
            nn.init.zeros_(self.t_bias.bias)

    def _biases(self, tf: Optional[torch.Tensor]) -> list[torch.Tensor]:
        """The T-dependent biases of the K + 1 feature layers ([B, C] each) and of the logit
        ([B, 1]); zeros of batch size 1 for an unconditional model."""
        K, C = len(self.blocks), self.C
        b = (self.out.bias.new_zeros(1, (K + 1) * C + 1) if self.t_bias is None
             else self.t_bias(tf))
        return [b[:, k * C:(k + 1) * C] for k in range(K + 1)] + [b[:, -1:]]

    def forward(self, s: torch.Tensor, tf: Optional[torch.Tensor] = None) -> torch.Tensor:
        bias = self._biases(tf)
        h = self.first(s[:, None].float()) + bias[0][:, :, None, None]
        for k, conv in enumerate(self.blocks):
            h = h + conv(self.acts[k](h)) + bias[k + 1][:, :, None, None]
        a = self.acts[-1](h).permute(0, 2, 3, 1)                   # [B, L, L, C]
        return self.out(a)[..., 0] + bias[-1][:, :, None]

    @torch.no_grad()
    def sample(self, n: int, tf: Optional[torch.Tensor], u: torch.Tensor,
               greedy: bool) -> tuple[torch.Tensor, torch.Tensor]:
        """n samples: (±1 float [n, L, L], ln q float64 [n]); u [n, N] uniforms decide the
        draws (site i is +1 when u_i < q(x_i = +1 | x_<i), or when the logit is > 0 if greedy).

        Incremental: at site (r, c) each layer's feature is computed from the cached features
        of the sites before it (all final, since features depend only on earlier sites):
        the first layer from the rows above (for the whole row r at once, when it starts: one
        large matrix product instead of L thin ones) plus the sites left of c in row r,
        block k from the window of rows
        r−h…r, columns c−h…c+h of act(h_k), cached for those h + 1 rows only, zero padded,
        as [n, column, row, channel] so that each sample's window is one contiguous block
        (a view, no copy); the rows shift up by one at each new row."""
        L, C, h, K = self.L, self.C, self.h, len(self.blocks)
        dev = u.device
        bias = self._biases(tf)
        xt = torch.zeros(L * L, n, device=dev)        # site-major: rows 0…r are a prefix view
        logq = torch.zeros(n, dtype=torch.float64, device=dev)
        w1 = self.first.upper_weight()[:, 0]                       # [C, L, 2L−1]
        b1 = self.first.bias + bias[0]                             # [1 or n, C]
        # block weights as [(2h+1)(h+1)·C_in, C_out] in the cache's (column, row, channel) order
        wb = [conv.upper_weight().permute(3, 2, 1, 0).reshape(-1, C) for conv in self.blocks]
        bb = [conv.bias + bias[k + 1] for k, conv in enumerate(self.blocks)]
        cache = [torch.zeros(n, L + 2 * h, h + 1, C, device=dev) for _ in range(K)]
        w_out = self.out.weight[0]
        b_out = self.out.bias + bias[-1][:, 0]                     # [1 or n]
        w_left = w1[:, L - 1, :L - 1]              # current row: column c − 1 − j ↔ L − 2 − j
        for r in range(L):
            if r == 0:
                row = b1[:, None, :].expand(n, L, C)
            else:      # the rows above, for every column: [n, rL] @ [rL, L·C]
                w = w1[:, L - 1 - r:L - 1].unfold(2, L, 1).flip(2)  # [C, r, c, c']
                w = w.permute(1, 3, 2, 0).reshape(r * L, L * C)
                row = (xt[:r * L].t() @ w).view(n, L, C) + b1[:, None, :]
                for buf in cache:                                  # rows r−h…r in the cache
                    buf[:, :, :h] = buf[:, :, 1:].clone()
                    buf[:, :, h] = 0
            for c in range(L):
                f = row[:, c]                                      # first layer at (r, c)
                if c:
                    f = torch.addmm(f, xt[r * L:r * L + c].t(), w_left[:, L - 1 - c:].t())
                for k in range(K):
                    cache[k][:, c + h, h] = self.acts[k](f)
                    win = cache[k][:, c:c + 2 * h + 1].reshape(n, -1)     # a view
                    f = f + torch.addmm(bb[k], win, wb[k])
                logit = self.acts[-1](f) @ w_out + b_out           # [n]
                i = r * L + c
                up = (logit > 0) if greedy else (u[:, i] < torch.sigmoid(logit))
                spin = up.float() * 2 - 1
                xt[i] = spin
                logq += F.logsigmoid(spin.double() * logit.double())
        return xt.t().reshape(n, L, L), logq


# ============================================================================ MADE
class _MaskedLinear(nn.Linear):
    """nn.Linear whose weight is multiplied by a fixed 0/1 mask [out, in] in every forward."""

    def __init__(self, d_in: int, d_out: int, mask: torch.Tensor, bias: bool = True):
        super().__init__(d_in, d_out, bias=bias)
        self.register_buffer("mask", mask.float(), persistent=False)

    def masked_weight(self) -> torch.Tensor:
        return self.weight * self.mask

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.linear(x, self.masked_weight(), self.bias)


class MADE(nn.Module):
    """Spins ±1 [B, L, L] (+ T features [B, 2]) → logits [B, L, L] (Germain et al. 2015).

    Degrees: input site i has degree i + 1 (raster order, 1…N); hidden unit k of a layer of
    width H has degree 1 + ⌊k (N − 1) / H⌋ ∈ [1, N − 1]. A hidden unit of degree m sees units
    of degree ≤ m below it; output i (degree i + 1) sees hidden units of degree ≤ i and, through
    the direct connection, the inputs 0…i−1."""

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        L, N = cfg.L, cfg.L * cfg.L
        self.L, self.N = L, N
        d_in = torch.arange(1, N + 1)
        degrees, layers, prev = [], [], d_in
        for H in cfg.ar_hidden:
            m = 1 + (torch.arange(H) * (N - 1)) // H
            layers.append(_MaskedLinear(prev.numel(), H, m[:, None] >= prev[None, :]))
            degrees.append(m)
            prev = m
        self.hidden = nn.ModuleList(layers)
        self.acts = nn.ModuleList(nn.PReLU(H, init=0.5) for H in cfg.ar_hidden)
        self.out = _MaskedLinear(prev.numel(), N, d_in[:, None] > prev[None, :])
        self.direct = _MaskedLinear(N, N, d_in[:, None] > d_in[None, :], bias=False)
        self.t_in = nn.Linear(2, cfg.ar_hidden[0]) if cfg.conditional else None
        self.t_out = nn.Linear(2, N) if cfg.conditional else None
        # units of each degree, per hidden layer: computed at the sampling step of that degree
        self.groups = [[torch.nonzero(m == d)[:, 0] for d in range(N)] for m in degrees]

    def forward(self, s: torch.Tensor, tf: Optional[torch.Tensor] = None) -> torch.Tensor:
        B = s.shape[0]
        x = s.reshape(B, self.N).float()
        a = x
        for k, (lin, act) in enumerate(zip(self.hidden, self.acts)):
            z = lin(a)
            if k == 0 and self.t_in is not None:
                z = z + self.t_in(tf)
            a = act(z)
        logits = self.out(a) + self.direct(x)
        if self.t_out is not None:
            logits = logits + self.t_out(tf)
        return logits.reshape(B, self.L, self.L)

    @torch.no_grad()
    def sample(self, n: int, tf: Optional[torch.Tensor], u: torch.Tensor,
               greedy: bool) -> tuple[torch.Tensor, torch.Tensor]:
        """As PixelCNN.sample. At step i the hidden units of degree i (inputs 0…i−1 known)
        are computed once, layer by layer, then output i."""
        N, dev = self.N, u.device
        # unit-major layouts [units, n]: the rows computed at a step are contiguous
        xt = torch.zeros(N, n, device=dev)
        logq = torch.zeros(n, dtype=torch.float64, device=dev)
        ws = [lin.masked_weight() for lin in self.hidden]
        bs = [lin.bias[:, None].expand(-1, n) for lin in self.hidden]
        if self.t_in is not None:
            bs[0] = bs[0] + self.t_in(tf).t()
        acts = [torch.zeros(w.shape[0], n, device=dev) for w in ws]
        slopes = [act.weight[:, None] for act in self.acts]
        w_out, w_dir = self.out.masked_weight(), self.direct.masked_weight()
        b_out = self.out.bias[:, None].expand(-1, n)
        if self.t_out is not None:
            b_out = b_out + self.t_out(tf).t()
        for i in range(N):
            below = xt[:i]                                     # inputs 0…i−1
            for k, w in enumerate(ws):
                idx = self.groups[k][i]
                if idx.numel():
                    z = torch.addmm(bs[k][idx], w[idx, :below.shape[0]], below)
                    acts[k][idx] = torch.where(z >= 0, z, slopes[k][idx] * z)
                below = acts[k]
            logit = w_out[i] @ below + w_dir[i, :i] @ xt[:i] + b_out[i]
            up = (logit > 0) if greedy else (u[:, i] < torch.sigmoid(logit))
            spin = up.float() * 2 - 1
            xt[i] = spin
            logq += F.logsigmoid(spin.double() * logit.double())
        return xt.t().reshape(n, self.L, self.L), logq


BODY_CLASSES = {"pixelcnn": PixelCNN, "made": MADE}


# ============================================================================ the model
class Autoregressive(GenerativeModel):
    """Exact-likelihood generator of ±1 configurations; see the module doc and
    ``ising_dist.models`` for the interface (log_prob, sample, losses, forward)."""

    kind = "exact"

    def __init__(self, cfg: ModelConfig):
        super().__init__(cfg)
        self.body = BODY_CLASSES[cfg.body](cfg)

    @property
    def n_sites(self) -> int:
        return self.cfg.L * self.cfg.L

    # ------------------------------------------------------------------ inputs
    def _t_features(self, T: TLike, n: int) -> Optional[torch.Tensor]:
        """[n, 2] network inputs of T, or None for an unconditional model (T ignored)."""
        if not self.cfg.conditional:
            return None
        if T is None:
            raise ValueError("this autoregressive model is T-conditional (t_conditional: "
                             "true): pass T (a scalar or a [B] tensor)")
        t = self.temperatures(T, n)
        if not bool(torch.all(t > 0)):
            raise ValueError(f"T={t[t <= 0][0].item()}: temperatures must be > 0")
        return _t_features(t, self.cfg.t_scale)

    def _spins(self, spins) -> torch.Tensor:
        """±1 spins (tensor or numpy, any dtype) [B, L, L] → float32 on the model's device."""
        s = torch.as_tensor(np.asarray(spins) if not isinstance(spins, torch.Tensor) else spins)
        L = self.cfg.L
        if s.ndim != 3 or tuple(s.shape[1:]) != (L, L):
            raise ValueError(f"spins have shape {tuple(s.shape)}: expected [B, {L}, {L}] "
                             f"(this model is for L={L})")
        return s.to(self.device, torch.float32)

    # ------------------------------------------------------------------ likelihood
    def logits(self, spins, T: TLike = None) -> torch.Tensor:
        """Logits [B, L, L] of q(x_i = +1 | x_<i, T) for ±1 spins [B, L, L] (float32)."""
        s = self._spins(spins)
        return self.body(s, self._t_features(T, s.shape[0]))

    def _log_q(self, s: torch.Tensor, tf: Optional[torch.Tensor]) -> torch.Tensor:
        """ln q(s) without the Z2 symmetrisation, float64 [B]."""
        logits = self.body(s, tf).double()
        return F.logsigmoid(s.double() * logits).sum(dim=(1, 2))

    def log_prob(self, spins, T: TLike = None) -> torch.Tensor:
        """Exact, normalised ln q(x | T) in nats, float64 [B] (differentiable).

        spins: ±1 [B, L, L] (torch or numpy, any dtype); T: scalar or [B] tensor, required when
        the model is T-conditional (ignored otherwise). With z2: ln ½ (q(x) + q(−x)).
        Raises ValueError for a wrong shape or a missing / non-positive T."""
        s = self._spins(spins)
        tf = self._t_features(T, s.shape[0])
        if not self.cfg.z2:
            return self._log_q(s, tf)
        B = s.shape[0]
        both = self._log_q(torch.cat([s, -s]), None if tf is None else torch.cat([tf, tf]))
        return torch.logaddexp(both[:B], both[B:]) - math.log(2.0)

    @torch.no_grad()
    def sample(self, n: int, T: TLike = None, generator: Optional[torch.Generator] = None,
               mode: Optional[str] = None) -> tuple[torch.Tensor, torch.Tensor]:
        """n configurations and their ln q: (int8 ±1 [n, L, L], float64 [n]).

        Drawn site by site in raster order, batched (chunks of SAMPLE_CHUNK), reusing cached
        features (module doc); with z2 each sample is then flipped globally with probability
        ½. log_q equals log_prob(spins, T) up to float error. T: scalar or [n] tensor, required
        when T-conditional (ignored otherwise). mode: "bernoulli" (default) draws each site;
        "sign" takes the likelier value at each site (not a sample of q). ``generator`` must
        live on the model's device."""
        if isinstance(n, bool) or not isinstance(n, (int, np.integer)) or n < 0:
            raise ValueError(f"n={n!r}: the number of samples must be an integer ≥ 0")
        mode = "bernoulli" if mode is None else mode
        if mode not in SAMPLE_MODES:
            raise ValueError(f"mode={mode!r}: must be one of {list(SAMPLE_MODES)}")
        n = int(n)
        tf = self._t_features(T, n)
        N, dev = self.n_sites, self.device
        spins, logq = [], []
        for a in range(0, n, SAMPLE_CHUNK):
            b = min(n, a + SAMPLE_CHUNK)
            u = torch.rand(b - a, N, generator=generator, device=dev)
            x, lq = self.body.sample(b - a, None if tf is None else tf[a:b], u,
                                     greedy=(mode == "sign"))
            if self.cfg.z2:   # ln q_s is the same for x and −x: one pass for ln q(−x)
                lq_twin = self._log_q(-x, None if tf is None else tf[a:b])
                lq = torch.logaddexp(lq, lq_twin) - math.log(2.0)
                flip = torch.rand(b - a, generator=generator, device=dev) < 0.5
                x = torch.where(flip[:, None, None], -x, x)
            spins.append(x.to(torch.int8))
            logq.append(lq)
        if not spins:
            L = self.cfg.L
            return (torch.zeros(0, L, L, dtype=torch.int8, device=dev),
                    torch.zeros(0, dtype=torch.float64, device=dev))
        return torch.cat(spins), torch.cat(logq)

    # ------------------------------------------------------------------ objectives
    def losses(self, x: torch.Tensor, T: TLike = None) -> dict[str, torch.Tensor]:
        """Maximum likelihood on data x [B, L, L] in {0, 1} (s = 2x − 1): nll = −mean ln q(s|T)
        / N (nats per spin, float32 scalar); total = nll."""
        nll = -(self.log_prob(2 * x - 1, T).mean() / self.n_sites).float()
        return {"nll": nll, "total": nll}

    def variational_losses(self, x: torch.Tensor, beta: float) -> dict[str, torch.Tensor]:
        """VAN terms (Wu, Wang & Zhang 2019, eqs. 2–4) for x [B, L, L] in {0, 1}: samples of
        this model itself, drawn without gradient.

        reward R(s) = β E(s) + ln q(s); surrogate = mean((R − mean R) ln q) / N, whose gradient
        is the score-function estimate of ∇ E_q[R] / N (E_q[∇ ln q] = 0; the batch mean is the
        baseline). Reported per spin at the target temperature T_t = cfg.temperature:
        free_energy = mean(E + T_t ln q) / N (F_q ≥ F, J per spin), energy = mean E / N,
        entropy = −mean ln q / N (nats); total = free_energy (float32 scalars), and
        free_energy_per_sample (E + T_t ln q) / N, float64 [B], for error bars."""
        s = 2 * x - 1
        N, T_t = self.n_sites, self.cfg.temperature
        logq = self.log_prob(s)
        E = ising_energy(s)
        with torch.no_grad():
            reward = beta * E + logq
            adv = reward - reward.mean()
            f = (E + T_t * logq) / N
        surrogate = (adv * logq).mean() / N
        return {"surrogate": surrogate.float(), "free_energy": f.mean().float(),
                "free_energy_per_sample": f, "energy": (E.mean() / N).float(),
                "entropy": (-logq.detach().mean() / N).float(), "total": f.mean().float()}

    def forward(self, x: torch.Tensor, T: TLike = None, beta: Optional[float] = None
                ) -> dict[str, torch.Tensor]:
        """losses(x, T) (beta None) or variational_losses(x, beta); training goes through
        forward so DDP all-reduces the gradients."""
        if beta is None:
            return self.losses(x, T)
        return self.variational_losses(x, beta)

    def configure_optimizers(self, lr: float) -> list[torch.optim.Optimizer]:
        """[Adam over all parameters]."""
        return [adam(self.parameters(), lr)]
