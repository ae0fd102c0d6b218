"""Temperature-conditional GANs: DCGAN (BCE, non-saturating generator) and WGAN-GP.

Generator: noise [B, noise_dim] + T → logits [B, L, L] (the decoder body of nets.py).
Critic: lattice [B, L, L] + T → score [B] (the encoder body, LeakyReLU(0.2), no batch norm so
the gradient penalty is per sample). Real lattices enter the critic as {0,1}, and so do fakes:
spins drawn from sigmoid(logits) exactly as ``sample`` draws them, with the straight-through
gradient of their probabilities (Bengio, Léonard & Courville 2013, arXiv:1308.3432, eq. 13).

Why not the probabilities themselves (the usual continuous relaxation): a critic shown {0,1}
lattices against probability maps tells them apart by binariness alone, at every T, so it never
needs the temperature and the generator is never pushed to follow it (issue 16: the wgan-gp
preset generated <e> ≈ −0.7 at every T from 1.6 to 3.2); and the spins evaluation draws from
those maps were never judged. On two-temperature toy data (L = 8, T = 1.5 and 4.0, data <|m|>
0.90 and 0.10), 60 epochs of DCGAN gave <|m|> 0.53 / 0.54 relaxed and 0.94 / 0.11 with
straight-through spins; WGAN-GP after 400 epochs 0.64 / 0.49 against 0.85 / 0.14.

Under DDP (see loop.py) wrap with ``find_unused_parameters=True``: the critic step runs the
generator without gradient, so its parameters are unused in that backward.
"""
from __future__ import annotations

from typing import Optional

import torch
import torch.nn.functional as F
from torch import nn

from .base import GenerativeModel, TLike
from .config import ModelConfig
from .nets import make_decoder, make_encoder


def _leaky() -> nn.Module:
    return nn.LeakyReLU(0.2)


class GAN(GenerativeModel):
    """cfg.family "dcgan" or "wgan-gp"; always conditional on T."""

    kind = "adversarial"

    def __init__(self, cfg: ModelConfig):
        super().__init__(cfg)
        self.wasserstein = cfg.family == "wgan-gp"
        self.generator = make_decoder(cfg, cfg.noise_dim, cond=True)
        self.critic = make_encoder(cfg, 1, cond=True, act=_leaky)
        self.critic_steps = 0  # advanced by loop.train_epoch (not saved): paces n_critic

    # ------------------------------------------------------------------ networks
    def encode(self, x: torch.Tensor, T: TLike = None):
        raise NotImplementedError(f"family={self.cfg.family!r} has no encoder; latent analysis "
                                  f"needs family 'ae', 'vae' or 'cvae'")

    def fit_prior(self, codes_mu: torch.Tensor, T: TLike) -> None:
        raise NotImplementedError(f"family={self.cfg.family!r} has no codes to fit a prior to; "
                                  f"its noise is always N(0, 1)")

    def decode(self, z: torch.Tensor, T: TLike = None) -> torch.Tensor:
        """Generator: noise z [B, noise_dim], T [B] → logits [B, L, L]."""
        return self.generator(z, self.temperatures(T, z.shape[0]))

    def score(self, x: torch.Tensor, T: TLike) -> torch.Tensor:
        """Critic: lattice [B, L, L] (values in [0, 1]), T [B] → score [B] (a logit for DCGAN)."""
        return self.critic(x, self.temperatures(T, x.shape[0])).squeeze(1)

    def fake(self, T: torch.Tensor, generator: Optional[torch.Generator] = None) -> torch.Tensor:
        """Spins in {0, 1} [B, L, L] generated at temperatures T [B], drawn as ``sample`` draws
        them (cfg.sample_mode: Bernoulli of p = sigmoid(logits), or p > 1/2), carrying the
        straight-through gradient d(spins)/d(p) = 1 (see the module doc)."""
        z = self.randn(T.shape[0], self.cfg.noise_dim, generator)
        p = torch.sigmoid(self.decode(z, T))
        if self.cfg.sample_mode == "sign":
            hard = (p.detach() > 0.5).to(p.dtype)
        else:
            hard = torch.bernoulli(p.detach(), generator=generator)
        return hard + (p - p.detach())

    # ------------------------------------------------------------------ losses
    def critic_loss(self, x: torch.Tensor, T: TLike) -> dict[str, torch.Tensor]:
        """Real batch x [B, L, L], T [B] against as many fakes at the same T.

        WGAN-GP: total = D(fake) − D(real) + gp_weight·gp, keys total, wasserstein (D(real) −
        D(fake), the distance estimate), gp. DCGAN: total = BCE(real→1) + BCE(fake→0), keys
        total, real, fake. Gradients reach only the critic."""
        t = self.temperatures(T, x.shape[0])
        with torch.no_grad():
            fake = self.fake(t)
        d_real, d_fake = self.score(x, t), self.score(fake, t)
        if not self.wasserstein:
            real_loss = F.binary_cross_entropy_with_logits(d_real, torch.ones_like(d_real))
            fake_loss = F.binary_cross_entropy_with_logits(d_fake, torch.zeros_like(d_fake))
            return {"total": real_loss + fake_loss, "real": real_loss, "fake": fake_loss}
        w = d_real.mean() - d_fake.mean()
        gp = self._gradient_penalty(x, fake, t)
        return {"total": -w + self.cfg.gp_weight * gp, "wasserstein": w, "gp": gp}

    def _gradient_penalty(self, real: torch.Tensor, fake: torch.Tensor, t: torch.Tensor
                          ) -> torch.Tensor:
        """mean over the batch of (‖∇_x D(x̂)‖ − 1)², x̂ on random real–fake segments."""
        eps = torch.rand(real.shape[0], 1, 1, device=real.device)
        mix = (eps * real + (1 - eps) * fake).requires_grad_(True)
        with torch.enable_grad():                       # also valid inside evaluate's no_grad
            grad, = torch.autograd.grad(self.score(mix, t).sum(), mix, create_graph=True)
        return (grad.flatten(1).norm(dim=1) - 1).pow(2).mean()

    def generator_loss(self, x: torch.Tensor, T: TLike) -> dict[str, torch.Tensor]:
        """Fakes at the batch's temperatures (x sets only the batch size). WGAN: −D(fake);
        DCGAN: BCE(fake→1) (non-saturating). Keys: total. Gradients also reach the critic:
        the critic's optimizer zeroes them before its own step."""
        t = self.temperatures(T, x.shape[0])
        d = self.score(self.fake(t), t)
        if self.wasserstein:
            return {"total": -d.mean()}
        return {"total": F.binary_cross_entropy_with_logits(d, torch.ones_like(d))}

    def forward(self, x: torch.Tensor, T: TLike, part: str = "critic") -> dict[str, torch.Tensor]:
        """part="critic" → critic_loss, part="generator" → generator_loss (DDP entry point)."""
        if part == "critic":
            return self.critic_loss(x, T)
        if part == "generator":
            return self.generator_loss(x, T)
        raise ValueError(f"part={part!r}: must be 'critic' or 'generator'")

    # ------------------------------------------------------------------ sampling, optimizers
    @torch.no_grad()
    def sample(self, n: int, T: TLike = None, mode: Optional[str] = None,
               prior: Optional[str] = None, generator: Optional[torch.Generator] = None
               ) -> torch.Tensor:
        """n configurations int8 ±1 [n, L, L] at T (required); prior must be None/"normal"."""
        if prior not in (None, "normal"):
            raise ValueError(f"prior={prior!r}: a GAN samples its noise from 'normal' only")
        t = self.temperatures(T, n)
        if t is None:
            raise ValueError(f"family={self.cfg.family!r} is conditional on temperature: "
                             f"pass T (a scalar or an [n] tensor)")
        z = self.randn(n, self.cfg.noise_dim, generator)
        return self.to_spins(self.decode(z, t), mode, generator)

    def configure_optimizers(self, lr: float) -> list[torch.optim.Optimizer]:
        """[generator Adam, critic Adam]; betas (0.5, 0.999) for DCGAN (seed 003),
        (0.0, 0.9) for WGAN-GP (Gulrajani et al. 2017)."""
        betas = (0.0, 0.9) if self.wasserstein else (0.5, 0.999)
        return [torch.optim.Adam(self.generator.parameters(), lr=lr, betas=betas),
                torch.optim.Adam(self.critic.parameters(), lr=lr, betas=betas)]
