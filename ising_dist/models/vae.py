"""VAE (seed 004's MLP, seed 001's conv net): the likelihood family's shared implementation.

AE (ae.py) is this class without sampling of the code and without KL; CVAE (cvae.py) is this
class with the temperature fed to encoder and decoder (cfg.conditional).
"""
from __future__ import annotations

from typing import Optional

import numpy as np
import torch
import torch.nn.functional as F

from .base import BATCH, GenerativeModel, TLike, adam, spins_to_unit
from .condition import make_condition
from .config import PRIORS, ModelConfig
from .nets import make_decoder, make_encoder

_PRIOR_BUFFERS = ("prior_T", "prior_mean", "prior_var")
# sample() also takes "aggregate": the mixture of the fitted codes' posteriors (kept in memory
# by fit_prior, not saved with the model)
SAMPLE_PRIORS = tuple(PRIORS) + ("aggregate",)
FITTED_PRIORS = ("fitted", "aggregate")        # the priors that need fit_prior first


class VAE(GenerativeModel):
    """x [B, L, L] in {0,1}, T [B] → code [B, latent_dim] → Bernoulli logits [B, L, L]."""

    kind = "likelihood"
    variational = True

    def __init__(self, cfg: ModelConfig):
        super().__init__(cfg)
        d = cfg.latent_dim
        self.encoder = make_encoder(cfg, 2 * d if self.variational else d, cfg.n_conditions)
        self.decoder = make_decoder(cfg, d, cfg.n_conditions)
        # fitted prior (seed 001): one Gaussian per training temperature; empty until fit_prior
        self.register_buffer("prior_T", torch.zeros(0))
        self.register_buffer("prior_mean", torch.zeros(0, d))
        self.register_buffer("prior_var", torch.zeros(0, d))
        # the codes themselves, for prior="aggregate" (not saved: sized by the fit)
        self.register_buffer("prior_codes_T", torch.zeros(0), persistent=False)
        self.register_buffer("prior_codes_mu", torch.zeros(0, d), persistent=False)
        self.register_buffer("prior_codes_logvar", torch.zeros(0, d), persistent=False)

    # ------------------------------------------------------------------ networks
    def encode(self, x: torch.Tensor, T: TLike = None
               ) -> tuple[torch.Tensor, Optional[torch.Tensor]]:
        """x [B, L, L] → (mu [B, d], logvar [B, d]); an AE returns (code, None)."""
        h = self.encoder(x, self.condition(T, x.shape[0], x))
        if not self.variational:
            return h, None
        mu, logvar = h.chunk(2, dim=1)
        return mu, logvar

    def decode(self, z: torch.Tensor, T: TLike = None) -> torch.Tensor:
        """z [B, d] → logits [B, L, L] (T ignored by unconditional models)."""
        return self.decoder(z, self.condition(T, z.shape[0]))

    def condition(self, T: TLike, n: int, x: Optional[torch.Tensor] = None,
                  generator: Optional[torch.Generator] = None) -> Optional[torch.Tensor]:
        """What encoder and decoder are conditioned on: temperatures [n] (ignored by
        unconditional models), or (T, |m|) [n, 2] for a cvae with condition_m (see
        models/condition.py)."""
        return make_condition(self, T, n, x, generator)

    def kl_divergence(self, mu: torch.Tensor, logvar: torch.Tensor,
                      c: Optional[torch.Tensor]) -> torch.Tensor:
        """KL(N(mu, e^logvar) ‖ p(z)) per code [B], p = N(0, 1) (Kingma & Welling 2014,
        appendix B); CVAE with prior "learned" uses its p(z | T) instead."""
        return -0.5 * (1 + logvar - mu.pow(2) - logvar.exp()).sum(dim=1)

    def prior_fit(self, mu: torch.Tensor, logvar: torch.Tensor,
                  c: Optional[torch.Tensor]) -> torch.Tensor:
        """A term of value 0 added to the total whose gradient fits a learned prior to the
        codes whatever kl_weight is (CVAE); 0 for a fixed prior."""
        return mu.new_zeros(())

    def learned_prior(self, c: Optional[torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
        raise ValueError(f"prior='learned' needs family 'cvae' with prior: learned (this is "
                         f"family {self.cfg.family!r}, prior {self.cfg.prior!r})")

    @torch.no_grad()
    def encode_spins(self, spins, T: TLike = None, flip: bool = False, batch: int = BATCH
                     ) -> tuple[np.ndarray, Optional[np.ndarray]]:
        """Encoder means and log-variances of ±1 spins [n, L, L] (numpy or torch), in batches:
        (mu float32 numpy [n, d], logvar float32 numpy [n, d], None for an AE). flip=True
        encodes the spin-flipped configurations −s. T: scalar (unconditional models ignore
        it)."""
        mus, lvs = [], []
        for i in range(0, len(spins), batch):
            x = spins_to_unit(spins[i:i + batch]).to(self.device)
            if flip:
                x = 1.0 - x
            mu, lv = self.encode(x, T if self.cfg.conditional else None)
            mus.append(mu.float().cpu())
            lvs.append(None if lv is None else lv.float().cpu())
        mu = torch.cat(mus).numpy()
        return mu, (None if lvs[0] is None else torch.cat(lvs).numpy())

    @torch.no_grad()
    def decode_probs(self, z, T: TLike = None) -> np.ndarray:
        """Decoder means p(s = +1) float32 numpy [n, L, L] of codes z [n, d] (numpy or torch);
        T scalar or [n] (unconditional models ignore it)."""
        zt = torch.as_tensor(np.asarray(z, np.float32), device=self.device)
        logits = self.decode(zt, T if self.cfg.conditional else None)
        return torch.sigmoid(logits).cpu().numpy()

    # ------------------------------------------------------------------ loss
    def losses(self, x: torch.Tensor, T: TLike = None) -> dict[str, torch.Tensor]:
        """Scalar terms: recon (BCE summed over sites, mean over batch), kl (mean over batch;
        0 for AE), mag (mean of (m_in − m_out)², m = mean spin in ±1 units, m_out from the
        probabilities; seed 000's magnetization matching), binarize (mean p(1−p) = 0.25 −
        mean (p−½)², seed 000's push to 0/1 up to a constant), total (weighted sum with the
        cfg weights). The code is sampled (reparameterised) in train and eval mode alike."""
        cfg = self.cfg
        T = self.condition(T, x.shape[0], x)    # (T, |m| of x) for a condition_m cvae
        mu, logvar = self.encode(x, T)
        if self.variational:
            z = mu + torch.exp(0.5 * logvar) * torch.randn_like(mu)   # reparameterisation
            kl = self.kl_divergence(mu, logvar, T).mean()
        else:
            z, kl = mu, mu.new_zeros(())
        logits = self.decode(z, T)
        recon = F.binary_cross_entropy_with_logits(logits, x, reduction="none").sum((1, 2)).mean()
        p = torch.sigmoid(logits)
        mag = ((2 * x - 1).mean((1, 2)) - (2 * p - 1).mean((1, 2))).pow(2).mean()
        binarize = (p * (1 - p)).mean()
        total = (recon + cfg.kl_weight * kl + cfg.mag_weight * mag
                 + cfg.binarize_weight * binarize)
        if self.variational:
            total = total + self.prior_fit(mu, logvar, T)
        return {"recon": recon, "kl": kl, "mag": mag, "binarize": binarize, "total": total}

    def forward(self, x: torch.Tensor, T: TLike = None) -> dict[str, torch.Tensor]:
        """Same as losses(); training goes through forward so DDP syncs gradients."""
        return self.losses(x, T)

    # ------------------------------------------------------------------ prior and sampling
    @torch.no_grad()
    def fit_prior(self, codes_mu, T: TLike, codes_logvar=None) -> None:
        """Fit the generating prior to encoder outputs of training configurations (seed 001).

        codes_mu [N, d] (torch or numpy), T scalar or [N], codes_logvar [N, d] or None.
        Stores per-temperature mean and variance (population, ddof 0) of the codes as buffers
        prior_T [K], prior_mean [K, d], prior_var [K, d] (saved with the state_dict: the
        "fitted" prior, a diagonal Gaussian per T), and keeps the codes themselves (with their
        log-variances, when given) in memory for the "aggregate" prior. Replaces any earlier
        fit."""
        codes = torch.as_tensor(codes_mu).detach().to(self.device, torch.float32)
        t = self.temperatures(T, codes.shape[0])
        if t is None:
            raise ValueError("fit_prior needs the temperature of each code: pass T")
        temps = torch.unique(t)
        self.prior_T = temps
        self.prior_mean = torch.stack([codes[t == s].mean(0) for s in temps])
        self.prior_var = torch.stack([codes[t == s].var(0, unbiased=False) for s in temps])
        self.prior_codes_T, self.prior_codes_mu = t.clone(), codes
        self.prior_codes_logvar = (codes.new_zeros(0, codes.shape[1]) if codes_logvar is None
                                   else torch.as_tensor(codes_logvar).to(self.device,
                                                                         torch.float32))

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs):
        # the fitted prior's size is only known from the file: resize the buffers before loading
        for name in _PRIOR_BUFFERS:
            if prefix + name in state_dict:
                setattr(self, name, torch.empty_like(state_dict[prefix + name], device=self.device))
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)

    @torch.no_grad()
    def sample(self, n: int, T: TLike = None, mode: Optional[str] = None,
               prior: Optional[str] = None, generator: Optional[torch.Generator] = None
               ) -> torch.Tensor:
        """n configurations, int8 ±1 [n, L, L]: code from the prior, decode, Bernoulli or sign.

        prior "normal": N(0, 1); "learned" (cvae): its p(z | T) (CVAE.learned_prior);
        "fitted": the Gaussian fitted (fit_prior) at the fitted temperature nearest to each
        T; "aggregate": the mixture of the posteriors of the codes fitted there (a code picked
        uniformly, plus its posterior noise; the code itself for an AE). With condition_m, |m|
        is drawn from the model's table at T. ``generator`` must live on the model's device."""
        prior = self.cfg.prior if prior is None else prior
        if prior not in SAMPLE_PRIORS:
            raise ValueError(f"prior={prior!r}: must be one of {list(SAMPLE_PRIORS)}")
        t = self.temperatures(T, n)
        c = self.condition(t, n, generator=generator)   # draws |m| at T for condition_m
        eps = self.randn(n, self.cfg.latent_dim, generator)
        if prior == "normal":
            z = eps
        elif prior == "learned":
            mean, logvar = self.learned_prior(c)
            z = mean + torch.exp(0.5 * logvar) * eps
        elif prior == "fitted":
            k = self._nearest_fitted(t, n)
            z = self.prior_mean[k] + self.prior_var[k].sqrt() * eps
        else:
            z = self._aggregate_codes(self._nearest_fitted(t, n), eps, generator)
        return self.to_spins(self.decode(z, c), mode, generator)

    def _aggregate_codes(self, k: torch.Tensor, eps: torch.Tensor,
                         generator: Optional[torch.Generator]) -> torch.Tensor:
        """Codes [n, d] from the aggregate posterior at fitted temperature prior_T[k[i]]."""
        if self.prior_codes_mu.shape[0] == 0:
            raise ValueError("prior='aggregate' needs the codes in memory: call "
                             "fit_prior(codes_mu, T, codes_logvar) in this session first")
        z = torch.empty_like(eps)
        noisy = self.prior_codes_logvar.shape[0] > 0
        for j in torch.unique(k):
            rows = (k == j).nonzero()[:, 0]
            pool = (self.prior_codes_T == self.prior_T[j]).nonzero()[:, 0]
            pick = pool[torch.randint(0, len(pool), (len(rows),), generator=generator,
                                      device=self.device)]
            z[rows] = self.prior_codes_mu[pick]
            if noisy:
                z[rows] += torch.exp(0.5 * self.prior_codes_logvar[pick]) * eps[rows]
        return z

    def _nearest_fitted(self, t: Optional[torch.Tensor], n: int) -> torch.Tensor:
        """Index [n] into prior_T of the fitted temperature nearest each requested T."""
        K = self.prior_T.numel()
        if K == 0:
            raise ValueError("prior='fitted' but no prior is fitted: call "
                             "fit_prior(codes_mu, T) with the training codes first")
        if t is None:
            if K > 1:
                raise ValueError(f"prior='fitted' holds {K} temperatures "
                                 f"{self.prior_T.tolist()}: pass T to choose")
            return torch.zeros(n, dtype=torch.long, device=self.device)
        return (t[:, None] - self.prior_T[None, :]).abs().argmin(dim=1)

    def configure_optimizers(self, lr: float) -> list[torch.optim.Optimizer]:
        """[Adam over all parameters]."""
        return [adam(self.parameters(), lr)]
