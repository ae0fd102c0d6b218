"""VAE (seed 004's MLP, seed 001's conv net): the likelihood family's shared implementation.

AE (ae.py) is this class without sampling of the code and without KL; CVAE (cvae.py) is this
class with the temperature fed to encoder and decoder (cfg.conditional).
"""
from __future__ import annotations

from typing import Optional

import torch
import torch.nn.functional as F

from .base import GenerativeModel, TLike
from .config import PRIORS, ModelConfig
from .nets import make_decoder, make_encoder

_PRIOR_BUFFERS = ("prior_T", "prior_mean", "prior_var")


class VAE(GenerativeModel):
    """x [B, L, L] in {0,1}, T [B] → code [B, latent_dim] → Bernoulli logits [B, L, L]."""

    kind = "likelihood"
    variational = True

    def __init__(self, cfg: ModelConfig):
        super().__init__(cfg)
        d = cfg.latent_dim
        self.encoder = make_encoder(cfg, 2 * d if self.variational else d, cfg.conditional)
        self.decoder = make_decoder(cfg, d, cfg.conditional)
        # fitted prior (seed 001): one Gaussian per training temperature; empty until fit_prior
        self.register_buffer("prior_T", torch.zeros(0))
        self.register_buffer("prior_mean", torch.zeros(0, d))
        self.register_buffer("prior_var", torch.zeros(0, d))

    # ------------------------------------------------------------------ networks
    def encode(self, x: torch.Tensor, T: TLike = None
               ) -> tuple[torch.Tensor, Optional[torch.Tensor]]:
        """x [B, L, L] → (mu [B, d], logvar [B, d]); an AE returns (code, None)."""
        h = self.encoder(x, self.temperatures(T, x.shape[0]))
        if not self.variational:
            return h, None
        mu, logvar = h.chunk(2, dim=1)
        return mu, logvar

    def decode(self, z: torch.Tensor, T: TLike = None) -> torch.Tensor:
        """z [B, d] → logits [B, L, L] (T ignored by unconditional models)."""
        return self.decoder(z, self.temperatures(T, z.shape[0]))

    # ------------------------------------------------------------------ loss
    def losses(self, x: torch.Tensor, T: TLike = None) -> dict[str, torch.Tensor]:
        """Scalar terms: recon (BCE summed over sites, mean over batch), kl (mean over batch;
        0 for AE), mag (mean of (m_in − m_out)², m = mean spin in ±1 units, m_out from the
        probabilities; seed 000's magnetization matching), binarize (mean p(1−p) = 0.25 −
        mean (p−½)², seed 000's push to 0/1 up to a constant), total (weighted sum with the
        cfg weights). The code is sampled (reparameterised) in train and eval mode alike."""
        cfg = self.cfg
        mu, logvar = self.encode(x, T)
        if self.variational:
            z = mu + torch.exp(0.5 * logvar) * torch.randn_like(mu)   # reparameterisation
            kl = -0.5 * (1 + logvar - mu.pow(2) - logvar.exp()).sum(dim=1).mean()
        else:
            z, kl = mu, mu.new_zeros(())
        logits = self.decode(z, T)
        recon = F.binary_cross_entropy_with_logits(logits, x, reduction="none").sum((1, 2)).mean()
        p = torch.sigmoid(logits)
        mag = ((2 * x - 1).mean((1, 2)) - (2 * p - 1).mean((1, 2))).pow(2).mean()
        binarize = (p * (1 - p)).mean()
        total = (recon + cfg.kl_weight * kl + cfg.mag_weight * mag
                 + cfg.binarize_weight * binarize)
        return {"recon": recon, "kl": kl, "mag": mag, "binarize": binarize, "total": total}

    def forward(self, x: torch.Tensor, T: TLike = None) -> dict[str, torch.Tensor]:
        """Same as losses(); training goes through forward so DDP syncs gradients."""
        return self.losses(x, T)

    # ------------------------------------------------------------------ prior and sampling
    @torch.no_grad()
    def fit_prior(self, codes_mu: torch.Tensor, T: TLike) -> None:
        """Store per-temperature mean and variance of codes [N, d] (T scalar or [N]) as buffers
        prior_T [K], prior_mean [K, d], prior_var [K, d] (saved with the state_dict)."""
        codes = codes_mu.detach().to(self.device, torch.float32)
        t = self.temperatures(T, codes.shape[0])
        if t is None:
            raise ValueError("fit_prior needs the temperature of each code: pass T")
        temps = torch.unique(t)
        self.prior_T = temps
        self.prior_mean = torch.stack([codes[t == s].mean(0) for s in temps])
        self.prior_var = torch.stack([codes[t == s].var(0, unbiased=False) for s in temps])

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

        prior="fitted" draws from the Gaussian fitted (fit_prior) at the fitted temperature
        nearest to each T. ``generator`` must live on the model's device."""
        prior = self.cfg.prior if prior is None else prior
        if prior not in PRIORS:
            raise ValueError(f"prior={prior!r}: must be one of {list(PRIORS)}")
        t = self.temperatures(T, n)
        eps = self.randn(n, self.cfg.latent_dim, generator)
        if prior == "normal":
            z = eps
        else:
            k = self._nearest_fitted(t, n)
            z = self.prior_mean[k] + self.prior_var[k].sqrt() * eps
        return self.to_spins(self.decode(z, t), mode, generator)

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
        return [torch.optim.Adam(self.parameters(), lr=lr)]
