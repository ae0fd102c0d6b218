"""Temperature-conditional GANs: DCGAN (BCE, non-saturating generator), WGAN-GP, InfoGAN and
ACGAN (seed 003).

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

InfoGAN (Chen et al. 2016, arXiv 1606.03657): the generator also takes latent codes c, a
one-hot categorical of cfg.info_categories and cfg.info_continuous uniform(−1, 1) values, and
the critic has an auxiliary head Q(c | x) (it shares the critic's body). Both players also
minimise the variational bound of the mutual information I(c; G) (eq. 5 and §6 there),
L_I = λ_cat·CE(Q_cat(x̃), c_cat) + λ_cont·½ Σ (Q_cont(x̃) − c_cont)² (a unit-variance Gaussian
Q, up to a constant), on fakes x̃ = G(z, c, T), with λ_cat = cfg.info_weight (1) and λ_cont =
cfg.info_weight_continuous (0.1: §6 there uses a smaller λ for continuous codes, to keep the
term on the GAN objective's scale). With λ_cont = 1, on an L = 8 PT file across Tc (the
follow-T test, seeds 0–2), the continuous code made the generator vary where ordered data
hardly do: generated <|m|> at T = 1.6 was 0.874, 0.934, 0.926 against MCMC's 0.980 (seed 0's
upper quarter of the code gave 0.74).

ACGAN (Odena et al. 2017, arXiv 1610.09585): the class is the temperature, one of the ladder
(cfg.ladder). The generator takes T as the DCGAN's does; the discriminator does not read T but
predicts it: an auxiliary head of K = len(ladder) logits. With cfg.aux_twin false, Odena's
losses: the discriminator minimises BCE(real→1) + BCE(fake→0) + aux_weight·[CE(class(real), T)
+ CE(class(fake), T)], the generator BCE(fake→1) + aux_weight·CE(class(fake), T) (eqs. 2–3
there, non-saturating). That objective rewards fakes the classifier finds easy, not the data's
distribution at T (Shu, Bui & Ermon 2017, arXiv 1710.02542): on an L = 8 PT file (T = 1.8–3.0,
100 epochs) it generated <|m|> 0.48, 0.11, 0.46, 0.09 against MCMC's 0.96, 0.85, 0.59, 0.34.
With cfg.aux_twin (default) the twin auxiliary classifier of TAC-GAN (Gong et al. 2019,
arXiv 1907.02690, eq. 7) removes that bias: the classifier learns real lattices only, a twin
head learns the fakes' T, and the generator's aux term is CE(class(fake)) − CE(twin(fake));
same run: 0.89, 0.86, 0.62, 0.35.

With cfg.condition_m the condition is (T, |m|) instead of T (seed 000): fakes of a batch are
generated at the (T, |m|) of its real lattices, and the critic reads both; ``sample`` draws |m|
from the MCMC table at T (models/condition.py).

Under DDP (see loop.py) wrap with ``find_unused_parameters=True``: the critic step runs the
generator without gradient, so its parameters are unused in that backward.
"""
from __future__ import annotations

from typing import Optional

import torch
import torch.nn.functional as F
from torch import nn

from .base import GenerativeModel, TLike
from .condition import MagnetizationTable, ladder_index, make_condition
from .config import ModelConfig
from .nets import make_decoder, make_encoder


def _leaky() -> nn.Module:
    return nn.LeakyReLU(0.2)


class GAN(GenerativeModel):
    """cfg.family "dcgan", "wgan-gp", "infogan" or "acgan"; always conditional on T."""

    kind = "adversarial"

    def __init__(self, cfg: ModelConfig):
        super().__init__(cfg)
        self.wasserstein = cfg.family == "wgan-gp"
        info = cfg.family == "infogan"
        self.n_cat = cfg.info_categories if info else 0
        self.n_cont = cfg.info_continuous if info else 0
        self.n_classes = len(cfg.ladder) if cfg.family == "acgan" else 0
        if cfg.family == "acgan" and self.n_classes < 2:
            raise ValueError(f"family='acgan' classifies the temperature among the training "
                             f"temperatures, but model.ladder={cfg.ladder} holds fewer than "
                             f"two: train on two or more temperatures (python -m "
                             f"ising_dist.train fills the ladder from the data)")
        self.z_dim = cfg.noise_dim + self.n_cat + self.n_cont   # generator input size
        self.generator = make_decoder(cfg, self.z_dim, cond=cfg.n_conditions)
        critic_cond = 0 if cfg.family == "acgan" else cfg.n_conditions   # ACGAN predicts T
        self.n_twin = self.n_classes if cfg.aux_twin else 0           # TAC-GAN's twin head
        self.critic = make_encoder(cfg, 1 + self.n_cat + self.n_cont + self.n_classes + self.n_twin,
                                   cond=critic_cond, act=_leaky)
        if self.n_classes:
            self.register_buffer("ladder", torch.tensor(cfg.ladder, dtype=torch.float64))
        if cfg.condition_m:
            self.m_table = MagnetizationTable(cfg.ladder, cfg.L)
        self.critic_steps = 0  # advanced by loop.train_epoch (not saved): paces n_critic

    def observe(self, x: torch.Tensor, T: torch.Tensor) -> None:
        """Count training lattices x [B, L, L] in {0,1} at T [B] into the |m| table
        (condition_m; loop.train_epoch calls this on every training batch)."""
        if self.cfg.condition_m:
            self.m_table.observe(x, T)

    # ------------------------------------------------------------------ networks
    def encode(self, x: torch.Tensor, T: TLike = None):
        raise NotImplementedError(f"family={self.cfg.family!r} has no encoder; latent analysis "
                                  f"needs family 'ae', 'vae' or 'cvae'")

    def fit_prior(self, codes_mu: torch.Tensor, T: TLike) -> None:
        raise NotImplementedError(f"family={self.cfg.family!r} has no codes to fit a prior to; "
                                  f"its noise is always N(0, 1)")

    def condition(self, T: TLike, n: int, x: Optional[torch.Tensor] = None,
                  generator: Optional[torch.Generator] = None) -> Optional[torch.Tensor]:
        """The networks' condition: temperatures [n], or (T, |m|) [n, 2] with condition_m
        (models/condition.py: |m| of x when given, else drawn from the table at T)."""
        return make_condition(self, T, n, x, generator)

    def decode(self, z: torch.Tensor, T: TLike = None) -> torch.Tensor:
        """Generator: z [B, z_dim] (noise_dim, then InfoGAN's codes), T [B] (or (T, |m|)
        [B, 2] with condition_m; T alone draws |m| from the table) → logits [B, L, L]."""
        return self.generator(z, self.condition(T, z.shape[0]))

    def heads(self, x: torch.Tensor, c: Optional[torch.Tensor]
              ) -> tuple[torch.Tensor, torch.Tensor]:
        """Critic on lattices x [B, L, L] (values in [0, 1]) under condition c: (score [B] (a
        logit for the BCE GANs), auxiliary outputs [B, A]: InfoGAN's Q(c | x) (n_cat logits,
        then n_cont means), ACGAN's K class logits; A = 0 otherwise)."""
        out = self.critic(x, None if self.n_classes else c)
        return out[:, 0], out[:, 1:]

    def score(self, x: torch.Tensor, T: TLike) -> torch.Tensor:
        """Critic score [B] of lattices x [B, L, L] at T [B] (or a [B, 2] condition)."""
        return self.heads(x, self.condition(T, x.shape[0], x))[0]

    def latent(self, n: int, generator: Optional[torch.Generator] = None
               ) -> tuple[torch.Tensor, Optional[torch.Tensor], Optional[torch.Tensor]]:
        """Generator input z [n, z_dim] = (noise N(0, 1) [n, noise_dim], one-hot categorical
        code, uniform(−1, 1) continuous codes), with the categories int64 [n] and the
        continuous codes [n, n_cont] (None when the family has none)."""
        parts = [self.randn(n, self.cfg.noise_dim, generator)]
        cat = cont = None
        if self.n_cat:
            cat = torch.randint(0, self.n_cat, (n,), generator=generator, device=self.device)
            parts.append(F.one_hot(cat, self.n_cat).float())
        if self.n_cont:
            cont = 2 * torch.rand(n, self.n_cont, generator=generator, device=self.device) - 1
            parts.append(cont)
        return torch.cat(parts, dim=1), cat, cont

    def _draw(self, c: torch.Tensor, generator: Optional[torch.Generator] = None):
        """(fake spins {0, 1} [B, L, L] with the straight-through gradient, codes (cat, cont))
        generated under condition c [B] or [B, 2]."""
        z, cat, cont = self.latent(c.shape[0], generator)
        p = torch.sigmoid(self.generator(z, c))
        if self.cfg.sample_mode == "sign":
            hard = (p.detach() > 0.5).to(p.dtype)
        else:
            hard = torch.bernoulli(p.detach(), generator=generator)
        return hard + (p - p.detach()), (cat, cont)

    def fake(self, T: torch.Tensor, generator: Optional[torch.Generator] = None) -> torch.Tensor:
        """Spins in {0, 1} [B, L, L] generated at temperatures T [B], drawn as ``sample`` draws
        them (cfg.sample_mode: Bernoulli of p = sigmoid(logits), or p > 1/2), carrying the
        straight-through gradient d(spins)/d(p) = 1 (see the module doc)."""
        return self._draw(self.condition(T, T.shape[0], generator=generator), generator)[0]

    # ------------------------------------------------------------------ losses
    def _info_loss(self, aux: torch.Tensor, codes) -> torch.Tensor:
        """InfoGAN's weighted L_I (module doc) of the codes (cat int64 [B] or None, cont
        [B, n_cont] or None) under the Q head's outputs aux [B, n_cat + n_cont]."""
        cat, cont = codes
        loss = aux.new_zeros(())
        if cat is not None:
            loss = loss + self.cfg.info_weight * F.cross_entropy(aux[:, :self.n_cat], cat)
        if cont is not None:
            loss = loss + self.cfg.info_weight_continuous * 0.5 * (
                aux[:, self.n_cat:] - cont).pow(2).sum(1).mean()
        return loss

    def _labels(self, c: torch.Tensor) -> Optional[torch.Tensor]:
        """ACGAN class labels int64 [B] (ladder indices of the temperatures), else None."""
        if not self.n_classes:
            return None
        return ladder_index(self.ladder, c if c.ndim == 1 else c[:, 0],
                            "family 'acgan' classifies the training temperatures")

    def critic_loss(self, x: torch.Tensor, T: TLike) -> dict[str, torch.Tensor]:
        """Real batch x [B, L, L], T [B] against as many fakes at the same T (and |m|).

        WGAN-GP: total = D(fake) − D(real) + gp_weight·gp, keys total, wasserstein (D(real) −
        D(fake), the distance estimate), gp. DCGAN: total = BCE(real→1) + BCE(fake→0), keys
        total, real, fake; InfoGAN adds L_I (key info), ACGAN aux_weight·(class CE
        of real + of fake) (key aux). Gradients reach only the critic."""
        c = self.condition(T, x.shape[0], x)
        labels = self._labels(c)
        with torch.no_grad():
            fake, codes = self._draw(c)
        d_real, a_real = self.heads(x, c)
        d_fake, a_fake = self.heads(fake, c)
        if self.wasserstein:
            w = d_real.mean() - d_fake.mean()
            gp = self._gradient_penalty(x, fake, c)
            return {"total": -w + self.cfg.gp_weight * gp, "wasserstein": w, "gp": gp}
        real_loss = F.binary_cross_entropy_with_logits(d_real, torch.ones_like(d_real))
        fake_loss = F.binary_cross_entropy_with_logits(d_fake, torch.zeros_like(d_fake))
        out = {"total": real_loss + fake_loss, "real": real_loss, "fake": fake_loss}
        if self.n_cat or self.n_cont:
            out["info"] = self._info_loss(a_fake, codes)
            out["total"] = out["total"] + out["info"]
        if self.n_classes:
            K = self.n_classes
            # the classifier learns real lattices (and fakes, without the twin); the twin
            # learns the fakes
            out["aux"] = F.cross_entropy(a_real[:, :K], labels) + F.cross_entropy(
                a_fake[:, K:] if self.n_twin else a_fake, labels)
            out["total"] = out["total"] + self.cfg.aux_weight * out["aux"]
        return out

    def _gradient_penalty(self, real: torch.Tensor, fake: torch.Tensor, c: torch.Tensor
                          ) -> torch.Tensor:
        """mean over the batch of (‖∇_x D(x̂)‖ − 1)², x̂ on random real–fake segments."""
        eps = torch.rand(real.shape[0], 1, 1, device=real.device)
        mix = (eps * real + (1 - eps) * fake).requires_grad_(True)
        with torch.enable_grad():                       # also valid inside evaluate's no_grad
            grad, = torch.autograd.grad(self.heads(mix, c)[0].sum(), mix, create_graph=True)
        return (grad.flatten(1).norm(dim=1) - 1).pow(2).mean()

    def generator_loss(self, x: torch.Tensor, T: TLike) -> dict[str, torch.Tensor]:
        """Fakes at the batch's temperatures (and |m|: x sets only these and the batch size).
        WGAN: −D(fake); BCE GANs: BCE(fake→1) (non-saturating), plus L_I (InfoGAN,
        key info) or aux_weight·class CE (ACGAN, key aux). Gradients also reach the critic:
        the critic's optimizer zeroes them before its own step."""
        c = self.condition(T, x.shape[0], x)
        fake, codes = self._draw(c)
        d, aux = self.heads(fake, c)
        if self.wasserstein:
            return {"total": -d.mean()}
        out = {"total": F.binary_cross_entropy_with_logits(d, torch.ones_like(d))}
        if self.n_cat or self.n_cont:
            out["info"] = self._info_loss(aux, codes)
            out["total"] = out["total"] + out["info"]
        if self.n_classes:
            K, y = self.n_classes, self._labels(c)
            out["aux"] = F.cross_entropy(aux[:, :K], y)
            if self.n_twin:             # the generator also makes the twin's job hard
                out["aux"] = out["aux"] - F.cross_entropy(aux[:, K:], y)
            out["total"] = out["total"] + self.cfg.aux_weight * out["aux"]
        return out

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
        """n configurations int8 ±1 [n, L, L] at T (required; with condition_m a training
        temperature, |m| drawn from its table); noise and InfoGAN codes from their priors;
        prior must be None/"normal"."""
        if prior not in (None, "normal"):
            raise ValueError(f"prior={prior!r}: a GAN samples its noise from 'normal' only")
        if self.temperatures(T, n) is None:
            raise ValueError(f"family={self.cfg.family!r} is conditional on temperature: "
                             f"pass T (a scalar or an [n] tensor)")
        c = self.condition(T, n, generator=generator)
        z = self.latent(n, generator)[0]
        return self.to_spins(self.generator(z, c), mode, generator)

    def configure_optimizers(self, lr: float) -> list[torch.optim.Optimizer]:
        """[generator Adam, critic Adam]; betas (0.5, 0.999) for the BCE GANs (seed 003),
        (0.0, 0.9) for WGAN-GP (Gulrajani et al. 2017).

        Unfused torch.optim.Adam, unlike the other families (base.adam): fused saves 1–2% of a
        WGAN-GP step (its gradient penalty's double backward dominates), and its different
        rounding moves a trained WGAN-GP as much as another seed does. MLP 64-32, 30 epochs
        (test_conditional_models_follow_temperature_across_tc), generated <|m|> at T = 3.2
        against MCMC's 0.289, torch seeds 0-5: unfused 0.312 0.355 0.256 0.385 0.309 0.299,
        fused 0.430 0.301 0.229 0.372 0.352 0.392."""
        betas = (0.0, 0.9) if self.wasserstein else (0.5, 0.999)
        return [torch.optim.Adam(self.generator.parameters(), lr=lr, betas=betas),
                torch.optim.Adam(self.critic.parameters(), lr=lr, betas=betas)]
