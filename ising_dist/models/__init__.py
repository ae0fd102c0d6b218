"""Generative models of Ising configurations, chosen and sized by ``ModelConfig`` alone.

Data convention: x float32 [B, L, L] with spins mapped to {0, 1} (s = +1 → 1); T float32 [B]
temperatures (scalars are broadcast). Networks output Bernoulli logits over the L×L sites;
samples are int8 ±1 [n, L, L].

Families (cfg.family) and their modules:
    "ae"       ae.AE       deterministic code, no KL                        kind "likelihood"
    "vae"      vae.VAE     Gaussian code, recon + kl_weight·KL              kind "likelihood"
    "cvae"     cvae.CVAE   VAE with T (and |m|) fed to encoder and decoder, learned prior
                           p(z|T)                                           kind "likelihood"
    "dcgan"    gan.GAN     T-conditional generator / BCE discriminator      kind "adversarial"
    "wgan-gp"  gan.GAN     T-conditional generator / critic + grad penalty  kind "adversarial"
    "infogan"  gan.GAN     DCGAN + latent codes kept informative (Q head)   kind "adversarial"
    "acgan"    gan.GAN     DCGAN whose discriminator classifies T           kind "adversarial"
    "rbm"      rbm.RBM     one Bernoulli–Bernoulli RBM per training T, CD-k / PCD, Gibbs
                           sampling, AIS for ln Z                           kind "energy"
    "autoregressive"  autoregressive.Autoregressive  exact ln q(x|T) (PixelCNN | MADE)  kind "exact"
Bodies (cfg.arch "mlp" or "conv", periodic padding optional) live in nets.py; the
autoregressive bodies (cfg.body) in autoregressive.py.

Interface of every model returned by ``build_model(cfg)``:
    model.cfg, model.kind                      ModelConfig; "likelihood" | "adversarial" |
                                               "exact" | "energy"
    model.encode(x, T) -> (mu, logvar)         [B, d] each; AE (code, None); GAN raises
                                               NotImplementedError
    model.decode(z, T) -> logits [B, L, L]     z [B, latent_dim] (GAN: [B, noise_dim])
    model.sample(n, T=None, mode=None, prior=None, generator=None) -> int8 ±1 [n, L, L]
        mode "bernoulli" | "sign" and prior "normal" | "fitted" default to the config's;
        conditional models need T; prior="fitted" uses the Gaussian of the nearest fitted T.
    model.fit_prior(codes_mu [N, d], T [N], codes_logvar=None)   per-T mean/variance buffers
                                               (saved in state_dict) and the codes (for
                                               prior="aggregate", in memory only)
    model.encode_spins(spins ±1 [n, L, L], T) -> (mu, logvar) numpy [n, d], batched
    model.decode_probs(z [n, d], T) -> p(s = +1) numpy [n, L, L]
    model.configure_optimizers(lr) -> [opt] (likelihood) | [generator opt, critic opt] (GAN)
  likelihood models:
    model.losses(x, T) == model(x, T) -> {"recon", "kl", "mag", "binarize", "total"}
        total = recon + kl_weight·kl + mag_weight·mag + binarize_weight·binarize
  adversarial models:
    model.critic_loss(x, T) == model(x, T, "critic")       -> {"total", ...}
    model.generator_loss(x, T) == model(x, T, "generator") -> {"total"}
  energy models (family "rbm"; no encode/decode/fit_prior; T must be a ladder temperature):
    model.losses(x, T, log_z=None, log_z_err=None) == model(x, T) -> {"cd", "free_energy",
        "recon", "total" (= cd, the CD surrogate)} (+ "nll", "nll_err" nats per spin with
        log_z from log_partition)
    model.free_energy(x, T) -> [B] F(v) (nats);  model.log_partition() -> (ln Z [K], err [K])
    model.sample(n, T, mode=None, generator=None) -> int8 ±1 [n, L, L] (block Gibbs chains)
  conditional models with cfg.condition_m (cvae, dcgan, wgan-gp, infogan): T may also be a
    (T, |m|) tensor [B, 2]; T alone draws |m| from the model's MCMC table (condition.py),
    filled by model.observe(x, T), which loop.train_epoch calls on every training batch.
  exact models (family "autoregressive"; no encode/decode/fit_prior):
    model.log_prob(spins, T=None) -> float64 [B]  exact, normalised ln q(x|T) in nats;
                                               spins ±1 [B, L, L] (torch or numpy)
    model.sample(n, T=None, generator=None, mode=None) -> (int8 ±1 [n, L, L], log_q float64 [n])
    model.losses(x, T) == model(x, T) -> {"nll", "total"}    (cfg.objective "likelihood")
    model.variational_losses(x, beta) == model(x, beta=beta) -> {"surrogate", "free_energy",
        "energy", "entropy", "total"}                        (cfg.objective "variational")

Helpers of every family (base.py): generate(model, T, n, prior, mode, seed) -> int8 ±1
numpy [n, L, L] in seeded batches; has_encoder(model); spins_to_unit / unit_to_spins (±1 ↔
{0, 1}, the networks' input convention).

Training and files:
    loop.train_epoch(model, loader, optimizers, device) -> {term: epoch mean}   (DDP-aware)
    loop.evaluate_epoch(model, loader, device) -> {term: epoch mean}
    loop.train_variational_epoch / loop.evaluate_variational   (VAN: no data; DDP-aware)
    io.save_model(path, model, extra) / io.load_model(path) -> (model, extra)
DDP: wrap likelihood models as they are; wrap GANs with find_unused_parameters=True (the critic
step runs the generator without gradient). The loop unwraps ``.module`` for everything else.
"""
from __future__ import annotations

from .ae import AE
from .autoregressive import Autoregressive
from .base import GenerativeModel, generate, has_encoder, spins_to_unit, unit_to_spins
from .config import ModelConfig
from .cvae import CVAE
from .gan import GAN
from .io import load_model, save_model
from .loop import evaluate_epoch, train_epoch
from .rbm import RBM
from .vae import VAE

FAMILY_CLASSES = {"ae": AE, "vae": VAE, "cvae": CVAE, "dcgan": GAN, "wgan-gp": GAN,
                  "infogan": GAN, "acgan": GAN, "autoregressive": Autoregressive, "rbm": RBM}


def build_model(cfg: ModelConfig | dict) -> GenerativeModel:
    """The model of cfg.family with cfg's architecture and sizes (a dict is validated first)."""
    if not isinstance(cfg, ModelConfig):
        cfg = ModelConfig.from_dict(cfg)
    return FAMILY_CLASSES[cfg.family](cfg)


__all__ = ["AE", "Autoregressive", "CVAE", "GAN", "RBM", "VAE", "GenerativeModel", "ModelConfig",
           "build_model", "evaluate_epoch", "generate", "has_encoder", "load_model", "save_model",
           "spins_to_unit", "train_epoch", "unit_to_spins"]
