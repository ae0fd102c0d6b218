"""Restricted Boltzmann machines (family "rbm"): one Bernoulli–Bernoulli RBM per training
temperature, trained by contrastive divergence, sampled by block Gibbs chains, normalised by
annealed importance sampling.

Model (visible v ∈ {0,1}^N, N = L², the spins s = 2v − 1; hidden h ∈ {0,1}^H, H = latent_dim):

    E(v, h) = −b·v − c·h − vᵀ W h,      p(v) = e^{−F(v)} / Z,
    F(v)    = −b·v − Σ_j softplus(c_j + (vᵀW)_j)          (free energy, nats; Hinton 2002)
    p(h_j = 1 | v) = σ(c_j + (vᵀW)_j),   p(v_i = 1 | h) = σ(b_i + (W h)_i)

One RBM per temperature, not one conditioned on T through its visible biases: T enters the
Boltzmann weight as a coupling strength, and a T-dependent visible bias b(T) only adds a field
term b(T)·v to F(v), which cannot change the spin–spin correlations (and a Z2-symmetric ensemble
has no field to learn). An RBM per temperature is also what the physics literature trains
(Torlai & Melko, arXiv 1606.02718; D'Angelo & Böttcher, arXiv 2001.05361). The parameters of
all K = len(cfg.ladder) temperatures are stacked (W [K, N, H], b [K, N], c [K, H]) and trained
together by one run on the whole ladder: each sample's gradient reaches its own temperature's
RBM only. The price: it generates only at the training temperatures (others raise ValueError).

Training (``losses``): the CD-k gradient (Hinton 2002) is the gradient of the surrogate
    cd = ⟨F(v)⟩_data − ⟨F(v⁻)⟩,   v⁻ held fixed,
where v⁻ are the data after k block Gibbs steps (CD-k), or, with cfg.persistent, cfg.pcd_chains
persistent fantasy chains per temperature advanced k steps per batch (PCD, Tieleman 2008). Both
expectations are per temperature, weighted by that temperature's share of the batch.

Sampling (``sample``): cfg.gibbs_chains chains in parallel from a uniform random start, block
Gibbs (h | v, then v | h); the first sample of each chain after cfg.gibbs_burn_in steps, the
next ones every cfg.gibbs_thin steps. Samples of one chain are correlated unless the thinning
exceeds the chain's autocorrelation time; n ≤ gibbs_chains gives one sample per chain.

Partition function (``log_partition``): annealed importance sampling (Neal 2001; Salakhutdinov
& Murray 2008, eqs. 10–15) from the uniform distribution (β = 0, ln Z_0 = (N + H) ln 2) to the
RBM (β = 1) through p*_β(v) = exp(β b·v) Π_j (1 + exp(β (c_j + (vᵀW)_j))), linear in β over
cfg.ais_steps steps, cfg.ais_runs runs; one block Gibbs step at each β. ln Z = ln Z_0 + ln of
the mean importance weight; its standard error by the delta method, std(w) / (√R mean(w)).
(ln of an unbiased estimate of Z: biased low by about err²/2.)
"""
from __future__ import annotations

import math
from typing import Optional

import torch
import torch.nn.functional as F
from torch import nn

from .base import GenerativeModel, TLike, adam
from .condition import ladder_index
from .config import ModelConfig

INIT_STD = 0.01   # weights start N(0, 0.01²), biases 0 (Hinton 2010, "A practical guide", §8)


class RBM(GenerativeModel):
    """Stack of K Bernoulli–Bernoulli RBMs, one per ladder temperature (see the module doc)."""

    kind = "energy"

    def __init__(self, cfg: ModelConfig):
        super().__init__(cfg)
        if not cfg.ladder:
            raise ValueError("family='rbm' is one RBM per training temperature, but "
                             "model.ladder is empty: train it with python -m ising_dist.train "
                             "(which fills the ladder from the data) or set model.ladder")
        K, N, H = len(cfg.ladder), cfg.L * cfg.L, cfg.latent_dim
        self.n_visible, self.n_hidden = N, H
        self.W = nn.Parameter(INIT_STD * torch.randn(K, N, H))
        self.b = nn.Parameter(torch.zeros(K, N))
        self.c = nn.Parameter(torch.zeros(K, H))
        self.register_buffer("ladder", torch.tensor(cfg.ladder, dtype=torch.float64))
        # PCD fantasy particles per temperature, {0,1} (saved: a resumed run continues them)
        self.register_buffer("chains", torch.randint(0, 2, (K, cfg.pcd_chains, N)).float())

    # ------------------------------------------------------------------ temperatures
    def index(self, T: TLike, n: int) -> torch.Tensor:
        """Ladder index int64 [n] of T (scalar or [n]); ValueError for other temperatures."""
        t = self.temperatures(T, n)
        if t is None:
            if len(self.cfg.ladder) > 1:
                raise ValueError(f"family='rbm' holds one RBM per temperature "
                                 f"{self.cfg.ladder}: pass T")
            return torch.zeros(n, dtype=torch.long, device=self.device)
        return ladder_index(self.ladder, t, "family 'rbm' is one RBM per training temperature")

    @staticmethod
    def _groups(k: torch.Tensor):
        """(ladder index, rows int64 [n_k]) for each temperature present in k [n]."""
        for kk in torch.unique(k).tolist():
            yield kk, (k == kk).nonzero().squeeze(1)

    # ------------------------------------------------------------------ energies
    def _free_energy(self, v: torch.Tensor, k: int, beta: float = 1.0) -> torch.Tensor:
        """F_β(v) of RBM k for v [B, N] in {0,1}: −β b·v − Σ_j softplus(β (c_j + (vW)_j))."""
        return -(beta * (v @ self.b[k]) + F.softplus(beta * (self.c[k] + v @ self.W[k])).sum(1))

    def free_energy(self, x: torch.Tensor, T: TLike = None) -> torch.Tensor:
        """Free energy F(v) (nats) of lattices x [B, L, L] in {0, 1} under the RBM of each
        temperature T (scalar or [B]): float32 [B]; ln p(v) = −F(v) − ln Z(T)."""
        v = x.reshape(x.shape[0], -1).to(self.W.dtype)
        out = v.new_empty(v.shape[0])
        for kk, rows in self._groups(self.index(T, v.shape[0])):
            out[rows] = self._free_energy(v[rows], kk)
        return out

    # ------------------------------------------------------------------ Gibbs sampling
    def _hidden_given(self, v, k: int, beta: float = 1.0) -> torch.Tensor:
        return torch.sigmoid(beta * (self.c[k] + v @ self.W[k]))

    def _visible_logits(self, h, k: int, beta: float = 1.0) -> torch.Tensor:
        return beta * (self.b[k] + h @ self.W[k].T)

    @torch.no_grad()
    def _gibbs(self, v: torch.Tensor, k: int, steps: int,
               generator: Optional[torch.Generator] = None) -> tuple[torch.Tensor, torch.Tensor]:
        """``steps`` block Gibbs steps of RBM k from v [B, N] in {0,1}: (v, logits of the last
        p(v | h)), each [B, N]."""
        logits = None
        for _ in range(steps):
            h = torch.bernoulli(self._hidden_given(v, k), generator=generator)
            logits = self._visible_logits(h, k)
            v = torch.bernoulli(torch.sigmoid(logits), generator=generator)
        return v, logits

    @torch.no_grad()
    def sample(self, n: int, T: TLike = None, mode: Optional[str] = None,
               prior: Optional[str] = None, generator: Optional[torch.Generator] = None
               ) -> torch.Tensor:
        """n configurations int8 ±1 [n, L, L] at T (a training temperature; scalar or [n]) by
        block Gibbs chains (module doc: burn-in cfg.gibbs_burn_in, thinning cfg.gibbs_thin,
        cfg.gibbs_chains chains). mode "bernoulli" draws the last v | h, "sign" thresholds its
        probability at ½; prior must be None or "normal" (an RBM has no prior to choose)."""
        if prior not in (None, "normal"):
            raise ValueError(f"prior={prior!r}: an RBM samples by Gibbs chains, it has no prior "
                             f"to choose")
        L, cfg = self.cfg.L, self.cfg
        out = torch.empty(n, L, L, dtype=torch.int8, device=self.device)
        for kk, rows in self._groups(self.index(T, n)):
            m = len(rows)
            chains = min(m, cfg.gibbs_chains)
            v = torch.randint(0, 2, (chains, self.n_visible), generator=generator,
                              device=self.device).to(self.W.dtype)
            got, steps = [], cfg.gibbs_burn_in
            while sum(len(s) for s in got) < m:
                v, logits = self._gibbs(v, kk, max(steps, 1), generator)
                got.append(self.to_spins(logits, mode, generator))
                steps = cfg.gibbs_thin
            out[rows] = torch.cat(got)[:m].reshape(m, L, L)
        return out

    # ------------------------------------------------------------------ training
    def losses(self, x: torch.Tensor, T: TLike = None,
               log_z: Optional[torch.Tensor] = None, log_z_err: Optional[torch.Tensor] = None
               ) -> dict[str, torch.Tensor]:
        """Terms of a batch x [B, L, L] in {0, 1} at T [B]:
        cd         the CD-k / PCD-k surrogate ⟨F⟩_data − ⟨F(v⁻)⟩ (its gradient is the CD
                   gradient; not a likelihood); total = cd
        free_energy  ⟨F(v)⟩ over the batch (nats per configuration)
        recon      reconstruction cross-entropy of the data through one mean-field step,
                   −Σ_i [v ln p_i + (1 − v) ln(1 − p_i)], p = σ(b + W σ(c + Wᵀv)) (nats per
                   configuration, batch mean; Hinton 2010 §5: a monitor, not the objective)
        with log_z [K] (and log_z_err [K]) from log_partition: nll = ⟨F(v) + ln Z(T)⟩ / N,
        the negative log-likelihood in nats per spin, and nll_err = ⟨err ln Z(T)⟩ / N.
        In training mode the persistent chains (cfg.persistent) advance."""
        cfg = self.cfg
        v = x.reshape(x.shape[0], -1).to(self.W.dtype)
        B = v.shape[0]
        k = self.index(T, B)
        pos = v.new_empty(B)
        cd = v.new_zeros(())
        recon = v.new_zeros(())
        for kk, rows in self._groups(k):
            vk = v[rows]
            pos[rows] = self._free_energy(vk, kk)
            start = self.chains[kk] if cfg.persistent else vk
            neg, _ = self._gibbs(start, kk, cfg.cd_k)
            if cfg.persistent and self.training:
                self.chains[kk] = neg
            cd = cd + (pos[rows].sum() - len(rows) * self._free_energy(neg, kk).mean()) / B
            with torch.no_grad():
                logits = self._visible_logits(self._hidden_given(vk, kk), kk)
                recon = recon + F.binary_cross_entropy_with_logits(
                    logits, vk, reduction="none").sum() / B
        terms = {"cd": cd, "free_energy": pos.mean().detach(), "recon": recon, "total": cd}
        if log_z is not None:
            lz = log_z.to(pos.device, pos.dtype)[k]
            terms["nll"] = ((pos.detach() + lz).mean() / self.n_visible)
            if log_z_err is not None:
                terms["nll_err"] = log_z_err.to(pos.device, pos.dtype)[k].mean() / self.n_visible
        return terms

    def forward(self, x: torch.Tensor, T: TLike = None) -> dict[str, torch.Tensor]:
        """Same as losses() (training goes through forward so DDP syncs gradients)."""
        return self.losses(x, T)

    # ------------------------------------------------------------------ partition function
    @torch.no_grad()
    def log_partition(self, runs: Optional[int] = None, steps: Optional[int] = None,
                      generator: Optional[torch.Generator] = None
                      ) -> tuple[torch.Tensor, torch.Tensor]:
        """AIS estimate of ln Z of every ladder temperature's RBM (module doc):
        (ln Z float64 [K], standard error float64 [K]), nats. runs / steps default to
        cfg.ais_runs / cfg.ais_steps; all K temperatures are annealed together."""
        R = self.cfg.ais_runs if runs is None else int(runs)
        S = self.cfg.ais_steps if steps is None else int(steps)
        if R < 1 or S < 2:
            raise ValueError(f"runs={R}, steps={S}: AIS needs runs ≥ 1 and steps ≥ 2")
        K, N, H = self.W.shape
        W, b, c = self.W, self.b[:, None, :], self.c[:, None, :]

        def log_p(v, beta):        # ln p*_β(v) = −F_β(v), [K, R]
            return beta * (v * b).sum(2) + F.softplus(beta * (c + torch.bmm(v, W))).sum(2)

        v = torch.randint(0, 2, (K, R, N), generator=generator, device=W.device).to(W.dtype)
        log_w = torch.zeros(K, R, dtype=torch.float64, device=W.device)
        betas = torch.linspace(0.0, 1.0, S + 1).tolist()
        for s in range(1, S + 1):
            log_w += (log_p(v, betas[s]) - log_p(v, betas[s - 1])).double()
            if s < S:             # one block Gibbs step that leaves p_β(s) invariant
                h = torch.bernoulli(torch.sigmoid(betas[s] * (c + torch.bmm(v, W))),
                                    generator=generator)
                p_v = torch.sigmoid(betas[s] * (b + torch.bmm(h, W.transpose(1, 2))))
                v = torch.bernoulli(p_v, generator=generator)
        log_mean_w = torch.logsumexp(log_w, dim=1) - math.log(R)
        w = torch.exp(log_w - log_mean_w[:, None])                 # normalised: mean 1
        err = w.std(dim=1, unbiased=True) / math.sqrt(R) if R > 1 else torch.full_like(
            log_mean_w, float("inf"))
        return (N + H) * math.log(2.0) + log_mean_w, err

    # ------------------------------------------------------------------ the rest of the API
    def encode(self, x: torch.Tensor, T: TLike = None):
        raise NotImplementedError("family='rbm' has no encoder (its hidden units are binary "
                                  "and per temperature); latent analysis needs family 'ae', "
                                  "'vae' or 'cvae'")

    def fit_prior(self, codes_mu, T: TLike, codes_logvar=None) -> None:
        raise NotImplementedError("family='rbm' samples by Gibbs chains: it has no prior to fit")

    def configure_optimizers(self, lr: float) -> list[torch.optim.Optimizer]:
        """[Adam over W, b, c]."""
        return [adam(self.parameters(), lr)]
