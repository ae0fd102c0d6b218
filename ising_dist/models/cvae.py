"""Conditional VAE (cfg.family == "cvae"): the VAE with the temperature fed to encoder and
decoder, a learned conditional prior p(z | T), and optionally (T, |m|) as the condition.

Conditioning lives in the network bodies (nets.py, cond = cfg.n_conditions). sample(n, T)
needs T (scalar or [n]).

Learned prior (cfg.prior "learned", the cvae default; issue 15). With p(z) = N(0, 1) at every T
the codes the encoder gives carry T, so decoding N(0, 1) codes at T mixes in codes of other
temperatures: the model barely followed T. Here p(z | T) = N(μ(T), diag e^{ℓ(T)}), a small
network (two Tanh layers of PRIOR_HIDDEN) of the condition, and the ELBO's KL term is
KL(q(z | x, T) ‖ p(z | T)) (Sohn, Lee & Yan 2015, eq. 4, "conditional prior network"), in closed
form for two diagonal Gaussians:
    KL = ½ Σ_d [ℓ_p − ℓ_q + (e^{ℓ_q} + (μ_q − μ_p)²) e^{−ℓ_p} − 1].
The prior network also gets the gradient of KL(sg q ‖ p) at unit weight through a term of value
0 added to the total (``prior_fit``: fit − fit.detach()), so it keeps fitting the codes when
kl_weight is 0 (the optimum of p is the same for any weight: the moments of the aggregate
posterior at T). Its last layer
starts at zero: training starts from p(z | T) = N(0, 1), the plain cVAE.

Condition on T and |m| (cfg.condition_m, seed 000): encoder, decoder and prior take (T, |m|);
training uses each lattice's own |m|, generation draws |m| from the MCMC table at T
(models/condition.py), so T must be a training temperature.
"""
from __future__ import annotations

from typing import Optional

import torch
from torch import nn

from .condition import MagnetizationTable
from .config import ModelConfig
from .nets import t_feature
from .vae import VAE

PRIOR_HIDDEN = 64


def gaussian_kl(mu_q, logvar_q, mu_p, logvar_p) -> torch.Tensor:
    """KL(N(mu_q, e^logvar_q) ‖ N(mu_p, e^logvar_p)) of diagonal Gaussians, summed over the
    last dimension: [..., d] → [...] (nats)."""
    return 0.5 * (logvar_p - logvar_q + (logvar_q.exp() + (mu_q - mu_p).pow(2))
                  * torch.exp(-logvar_p) - 1).sum(-1)


class CVAE(VAE):
    """VAE conditional on temperature (and |m|), with the learned prior p(z | T)."""

    variational = True

    def __init__(self, cfg: ModelConfig):
        super().__init__(cfg)
        d = cfg.latent_dim
        if cfg.prior == "learned":
            self.prior_net = nn.Sequential(
                nn.Linear(cfg.n_conditions, PRIOR_HIDDEN), nn.Tanh(),
                nn.Linear(PRIOR_HIDDEN, PRIOR_HIDDEN), nn.Tanh(),
                nn.Linear(PRIOR_HIDDEN, 2 * d))
            last = self.prior_net[-1]
            nn.init.zeros_(last.weight)
            nn.init.zeros_(last.bias)
        if cfg.condition_m:
            self.m_table = MagnetizationTable(cfg.ladder, cfg.L)

    def observe(self, x: torch.Tensor, T: torch.Tensor) -> None:
        """Count training lattices x [B, L, L] in {0,1} at T [B] into the |m| table
        (condition_m; loop.train_epoch calls this on every training batch)."""
        if self.cfg.condition_m:
            self.m_table.observe(x, T)

    def learned_prior(self, c: Optional[torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
        """p(z | c): (mean [B, d], log-variance [B, d]) for the condition c (temperatures [B],
        or (T, |m|) [B, 2] with condition_m; see ``condition``)."""
        if self.cfg.prior != "learned":
            return super().learned_prior(c)
        if c is None:
            raise ValueError("family 'cvae' is conditional on temperature: pass T")
        mean, logvar = self.prior_net(t_feature(c, self.cfg, c.shape[0])).chunk(2, dim=1)
        return mean, logvar

    def kl_divergence(self, mu: torch.Tensor, logvar: torch.Tensor,
                      c: Optional[torch.Tensor]) -> torch.Tensor:
        """KL(q(z | x, c) ‖ p(z | c)) per code [B] (module doc); with prior "normal" or
        "fitted", KL to N(0, 1) (the prior is fitted after training)."""
        if self.cfg.prior != "learned":
            return super().kl_divergence(mu, logvar, c)
        return gaussian_kl(mu, logvar, *self.learned_prior(c))

    def prior_fit(self, mu: torch.Tensor, logvar: torch.Tensor,
                  c: Optional[torch.Tensor]) -> torch.Tensor:
        """fit − fit.detach() (value 0), fit = batch mean of KL(sg q ‖ p(z | c)): its gradient
        fits the learned prior to the codes at unit weight, whatever kl_weight is."""
        if self.cfg.prior != "learned":
            return super().prior_fit(mu, logvar, c)
        fit = gaussian_kl(mu.detach(), logvar.detach(), *self.learned_prior(c)).mean()
        return fit - fit.detach()
