"""ModelConfig: the one place where a generative model's family, architecture and size are chosen.

A config is plain data (YAML → dict → ``ModelConfig.from_dict``) and is saved into every model file
(``to_dict``), so a model can always be rebuilt without editing code.
"""
from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field
from typing import Any, Mapping

TC = 2.269185314213022  # exact critical temperature 2/ln(1+√2), J = k_B = 1

FAMILIES = ("ae", "vae", "cvae", "dcgan", "wgan-gp", "infogan", "acgan", "autoregressive",
            "rbm")
GAN_FAMILIES = ("dcgan", "wgan-gp", "infogan", "acgan")
ARCHS = ("mlp", "conv")
BODIES = ("pixelcnn", "made")                  # family "autoregressive"
OBJECTIVES = ("likelihood", "variational")     # family "autoregressive"
SAMPLE_MODES = ("bernoulli", "sign")
PRIORS = ("normal", "fitted", "learned")


@dataclass
class ModelConfig:
    """Every field of a generative model, validated on construction.

    family           "ae" | "vae" | "cvae" | "dcgan" | "wgan-gp" | "infogan" | "acgan" |
                     "autoregressive" | "rbm"
    arch             "mlp" (any L) | "conv" (L divisible by 2**len(channels))
    L                lattice side; inputs/outputs are [B, L, L]
    latent_dim       code size of AE/VAE/CVAE; number of hidden units of an RBM (its latent
                     layer, so a latent_dim sweep sizes it too)
    hidden           MLP widths, input → hidden[0] → … → (μ, logσ²), mirrored back (seed 004)
    channels         conv widths, each a stride-2 conv (5x5 first, 3x3 after), then a dense
                     layer to the code; transposed convs back (seed 001)
    periodic_padding circular padding in convs (the lattice is a torus)
    kl_weight        ≥ 0, weight of KL in the loss (0 and 100 are studied, seed 001)
    mag_weight       ≥ 0, weight of (m_in − m_out)² (seed 000's magnetization matching)
    binarize_weight  ≥ 0, weight of mean p(1−p) (seed 000's push of outputs to 0/1)
    sample_mode      "bernoulli" (draw each site) | "sign" (threshold p > 0.5, seed 000)
    prior            "normal" (N(0, 1)) | "fitted" (per-T Gaussian fitted to codes, seed 001) |
                     "learned" (cvae only: p(z|T) = N(μ(T), σ²(T)) from a small network trained
                     in the ELBO, issue 15). Default "": "learned" for cvae, else "normal"
    t_scale          temperatures enter networks as T / t_scale when the model has no ladder
                     (with one: standardised over it, see nets.t_feature)
    gp_weight        WGAN-GP gradient-penalty weight
    n_critic         critic steps per generator step (WGAN-GP; DCGAN always uses 1)
    noise_dim        GAN generator noise size
    ladder           the training temperatures, ascending (filled from the data by
                     ``python -m ising_dist.train``; [] until then). Needed by family "rbm" (one
                     RBM per temperature), "acgan" (its classes) and condition_m (|m| tables);
                     networks conditional on T take T standardised over it (nets.t_feature)
    condition_m      cvae, dcgan, wgan-gp, infogan: condition on (T, |m|) instead of T (seed 000);
                     at generation |m| is drawn from the MCMC distribution of |m| at T, stored in
                     the model (models/condition.py), so T must be a ladder temperature
  family "infogan" (Chen et al. 2016, arXiv 1606.03657) / "acgan" (Odena et al. 2017,
  arXiv 1610.09585), both BCE GANs conditional on T like "dcgan":
    info_categories  InfoGAN categorical code size (0: none); info_continuous: uniform(−1, 1)
                     codes; info_weight: λ of the categorical code's term of the mutual-
                     information bound L_I, info_weight_continuous: λ of the continuous codes'
                     (smaller, as Chen et al. 2016 §6 advise, so that it stays on the scale of
                     the GAN objective)
    aux_weight       ACGAN weight of the auxiliary classifier's cross-entropy over the ladder
    aux_twin         ACGAN with TAC-GAN's twin classifier (Gong et al. 2019), which removes
                     ACGAN's bias towards easily classified fakes (see gan.py); false: Odena's
  family "rbm" (Bernoulli–Bernoulli restricted Boltzmann machine, models/rbm.py):
    cd_k             block Gibbs steps of the negative phase of CD-k / PCD-k (≥ 1)
    persistent       persistent CD (Tieleman 2008): negatives continue pcd_chains fantasy
                     chains per temperature instead of restarting at the data
    pcd_chains       persistent chains per temperature
    gibbs_burn_in    sampling: block Gibbs steps from a uniform random start before the first
                     sample; gibbs_thin: steps between two samples of one chain;
                     gibbs_chains: chains run in parallel by one sample() call
    ais_runs, ais_steps   annealed importance sampling of ln Z (evaluation): independent runs
                     and intermediate distributions (linear in β from the uniform distribution)
  family "autoregressive" only (exact, normalised q(x|T); see models/autoregressive.py):
    body             "pixelcnn" (masked convolutions) | "made" (masked dense, arXiv 1502.03509)
    t_conditional    one network for the whole ladder: T enters every layer (then
                     ``conditional`` is true and log_prob/sample need T)
    z2               q_s(x) = ½(q(x) + q(−x)), sampled with a random global flip
    objective        "likelihood" (maximum likelihood on the PT file) | "variational" (VAN,
                     arXiv 1809.10606: minimise F_q at ``temperature``, no data)
    ar_channels      PixelCNN channels of every layer
    ar_blocks        PixelCNN residual blocks after the exclusive first layer
    ar_kernel        PixelCNN kernel size of the residual blocks (odd ≥ 3)
    ar_hidden        MADE hidden widths
    temperature      VAN target temperature T > 0 (J/k_B); required when objective is
                     "variational" (0: not set)
    beta_anneal      VAN: epochs (fractions allowed) over which β rises linearly to
                     1/temperature (0: no annealing). Counted in epochs, not as a fraction of
                     the run, so that a run resumed with more --epochs keeps its schedule
    van_batch        VAN global batch of samples per gradient step (split over workers)
    van_steps        VAN gradient steps per epoch
    """

    family: str = "vae"
    arch: str = "mlp"
    L: int = 16
    latent_dim: int = 2
    hidden: list[int] = field(default_factory=lambda: [128, 64])
    channels: list[int] = field(default_factory=lambda: [64, 32])
    periodic_padding: bool = True
    kl_weight: float = 1.0
    mag_weight: float = 0.0
    binarize_weight: float = 0.0
    sample_mode: str = "bernoulli"
    prior: str = ""
    t_scale: float = TC
    gp_weight: float = 10.0
    n_critic: int = 5
    noise_dim: int = 16
    ladder: list[float] = field(default_factory=list)
    condition_m: bool = False
    info_categories: int = 2
    info_continuous: int = 1
    info_weight: float = 1.0
    info_weight_continuous: float = 0.1
    aux_weight: float = 1.0
    aux_twin: bool = True
    cd_k: int = 1
    persistent: bool = False
    pcd_chains: int = 64
    gibbs_burn_in: int = 500
    gibbs_thin: int = 10
    gibbs_chains: int = 1024
    ais_runs: int = 64
    ais_steps: int = 1000
    body: str = "pixelcnn"
    t_conditional: bool = False
    z2: bool = False
    objective: str = "likelihood"
    ar_channels: int = 32
    ar_blocks: int = 3
    ar_kernel: int = 3
    ar_hidden: list[int] = field(default_factory=lambda: [256])
    temperature: float = 0.0
    beta_anneal: float = 5.0
    van_batch: int = 256
    van_steps: int = 50

    def __post_init__(self) -> None:
        if self.prior == "":   # the family's default (issue 15: a cvae follows T through p(z|T))
            self.prior = "learned" if self.family == "cvae" else "normal"
        self.validate()
        # normalise after validation so to_dict() and saved files are canonical
        self.hidden, self.channels = list(self.hidden), list(self.channels)
        self.ar_hidden = list(self.ar_hidden)
        self.ladder = [float(t) for t in self.ladder]
        for name in ("kl_weight", "mag_weight", "binarize_weight", "gp_weight", "t_scale",
                     "beta_anneal", "temperature", "info_weight", "info_weight_continuous",
                     "aux_weight"):
            setattr(self, name, float(getattr(self, name)))

    # ------------------------------------------------------------------ construction
    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> "ModelConfig":
        """Build from a plain dict (e.g. YAML); unknown keys and bad values raise ValueError."""
        if not isinstance(d, Mapping):
            raise ValueError(f"model config must be a mapping, got {type(d).__name__}: {d!r}")
        known = [f.name for f in dataclasses.fields(cls)]
        unknown = [k for k in d if k not in known]
        if unknown:
            raise ValueError(f"unknown model config key(s) {unknown}: remove them; "
                             f"known keys are {known}")
        return cls(**dict(d))

    def to_dict(self) -> dict[str, Any]:
        """Plain primitives only (str/int/float/bool/list), safe for YAML and weights_only loads."""
        out = {}
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            out[f.name] = list(value) if isinstance(value, (list, tuple)) else value
        return out

    @property
    def conditional(self) -> bool:
        """True when sampling needs the temperature: the networks take it as an input (cvae,
        GANs, an autoregressive model with t_conditional) or it picks the model (rbm)."""
        return (self.family in ("cvae", "rbm") + GAN_FAMILIES
                or (self.family == "autoregressive" and self.t_conditional))

    @property
    def adversarial(self) -> bool:
        return self.family in GAN_FAMILIES

    @property
    def n_conditions(self) -> int:
        """Condition features the generator / decoder networks take: 0 (unconditional), 1 (T)
        or 2 (T and |m|, condition_m)."""
        if not self.conditional or self.family in ("rbm", "autoregressive"):
            return 0
        return 1 + int(self.condition_m)

    @property
    def needs_ladder(self) -> bool:
        """True when the model is built for the training temperatures (cfg.ladder): one RBM per
        temperature, ACGAN's classes, condition_m's |m| tables, and the standardised T input
        of every network conditional on T (nets.t_feature)."""
        return self.family in ("rbm", "cvae") + GAN_FAMILIES

    # ------------------------------------------------------------------ validation
    def validate(self) -> None:
        _choice("family", self.family, FAMILIES)
        _choice("arch", self.arch, ARCHS)
        _choice("sample_mode", self.sample_mode, SAMPLE_MODES)
        _choice("prior", self.prior, PRIORS)
        _int("L", self.L, 2)
        _int("latent_dim", self.latent_dim, 1)
        _int("n_critic", self.n_critic, 1)
        _int("noise_dim", self.noise_dim, 1)
        _int_list("hidden", self.hidden)
        _int_list("channels", self.channels)
        if not isinstance(self.periodic_padding, bool):
            raise ValueError(f"periodic_padding={self.periodic_padding!r}: must be true or false")
        for name in ("kl_weight", "mag_weight", "binarize_weight", "gp_weight"):
            _float(name, getattr(self, name), positive=False)
        _float("t_scale", self.t_scale, positive=True)
        if self.arch == "conv":
            k = 2 ** len(self.channels)
            if self.L % k:
                raise ValueError(
                    f"L={self.L}: arch='conv' with channels={self.channels} halves the lattice "
                    f"{len(self.channels)} times, so L must be divisible by {k}; choose such an L, "
                    f"fewer channels, or arch='mlp' (any L)")
        self._validate_autoregressive()
        if self.adversarial and self.prior == "fitted":
            raise ValueError(f"prior='fitted' with family={self.family!r}: a GAN has no encoder to "
                             f"fit codes to; use prior='normal'")
        if self.prior == "learned" and self.family != "cvae":
            raise ValueError(f"prior='learned' with family={self.family!r}: the learned prior "
                             f"p(z|T) belongs to family 'cvae'; use prior 'normal' or 'fitted'")
        self._validate_ladder()
        self._validate_gan_codes()
        self._validate_rbm()

    def _validate_ladder(self) -> None:
        if (not isinstance(self.ladder, (list, tuple))
                or any(isinstance(t, (bool, str)) or not isinstance(t, (int, float))
                       or not math.isfinite(t) or t <= 0 for t in self.ladder)
                or any(b <= a for a, b in zip(self.ladder, self.ladder[1:]))):
            raise ValueError(f"ladder={self.ladder!r}: must be a list of ascending temperatures "
                             f"> 0 (leave it out: python -m ising_dist.train fills it from the "
                             f"data)")
        if not isinstance(self.condition_m, bool):
            raise ValueError(f"condition_m={self.condition_m!r}: must be true or false")
        if self.condition_m and self.family not in ("cvae", "dcgan", "wgan-gp", "infogan"):
            raise ValueError(f"condition_m=true with family={self.family!r}: conditioning on T "
                             f"and |m| is for families cvae, dcgan, wgan-gp and infogan (an "
                             f"acgan's discriminator classifies T instead of reading it)")
        if self.family == "acgan" and len(self.ladder) == 1:
            raise ValueError(f"family='acgan' classifies the temperature of each lattice among "
                             f"the training temperatures, but ladder={self.ladder} holds one: "
                             f"train on two or more temperatures, or use family 'dcgan'")

    def _validate_gan_codes(self) -> None:
        for name in ("info_categories", "info_continuous"):
            _int(name, getattr(self, name), 0)
        for name in ("info_weight", "info_weight_continuous", "aux_weight"):
            _float(name, getattr(self, name), positive=False)
        if self.family == "infogan" and self.info_categories + self.info_continuous == 0:
            raise ValueError("family='infogan' with info_categories=0 and info_continuous=0 has "
                             "no latent codes to keep informative: set one of them ≥ 1 (or use "
                             "family 'dcgan')")
        if not isinstance(self.aux_twin, bool):
            raise ValueError(f"aux_twin={self.aux_twin!r}: must be true or false")
        if self.info_categories == 1:
            raise ValueError("info_categories=1: a categorical code needs ≥ 2 categories (0: "
                             "none)")

    def _validate_rbm(self) -> None:
        if isinstance(self.cd_k, int) and not isinstance(self.cd_k, bool) and self.cd_k < 1:
            raise ValueError(f"cd_k={self.cd_k}: CD-k needs k ≥ 1 block Gibbs steps in its "
                             f"negative phase (CD-1 is the usual choice)")
        for name in ("cd_k", "pcd_chains", "gibbs_chains", "gibbs_thin", "ais_runs"):
            _int(name, getattr(self, name), 1)
        _int("gibbs_burn_in", self.gibbs_burn_in, 0)
        _int("ais_steps", self.ais_steps, 2)
        if not isinstance(self.persistent, bool):
            raise ValueError(f"persistent={self.persistent!r}: must be true or false")


    def _validate_autoregressive(self) -> None:
        _choice("body", self.body, BODIES)
        _choice("objective", self.objective, OBJECTIVES)
        for name in ("t_conditional", "z2"):
            if not isinstance(getattr(self, name), bool):
                raise ValueError(f"{name}={getattr(self, name)!r}: must be true or false")
        for name in ("ar_channels", "ar_blocks", "van_batch", "van_steps"):
            _int(name, getattr(self, name), 0 if name == "ar_blocks" else 1)
        _int("ar_kernel", self.ar_kernel, 3)
        if self.ar_kernel % 2 == 0:
            raise ValueError(f"ar_kernel={self.ar_kernel}: must be odd (3, 5, …) so the "
                             f"kernel has a centre site")
        _int_list("ar_hidden", self.ar_hidden)
        _float("beta_anneal", self.beta_anneal, positive=False)
        _float("temperature", self.temperature, positive=False)
        if self.family != "autoregressive":
            if self.t_conditional or self.z2 or self.objective != "likelihood":
                raise ValueError(f"family={self.family!r}: t_conditional, z2 and objective="
                                 f"'variational' belong to family 'autoregressive' (the "
                                 f"T-conditional VAE is family 'cvae')")
            return
        if self.objective == "variational":
            if self.temperature == 0:
                raise ValueError("objective='variational' trains at one temperature: set "
                                 "model.temperature (e.g. 3.0)")
            if self.t_conditional:
                raise ValueError("objective='variational' trains at one temperature "
                                 f"(temperature={self.temperature}): set t_conditional: false")


def _choice(name: str, value: Any, allowed: tuple[str, ...]) -> None:
    if value not in allowed:
        raise ValueError(f"{name}={value!r}: must be one of {list(allowed)}")


def _int(name: str, value: Any, minimum: int) -> None:
    if isinstance(value, bool) or not isinstance(value, int):
        raise ValueError(f"{name}={value!r}: must be an integer ≥ {minimum}")
    if value < minimum:
        raise ValueError(f"{name}={value}: must be ≥ {minimum}")


def _int_list(name: str, value: Any) -> None:
    if (not isinstance(value, (list, tuple)) or not value
            or any(isinstance(v, bool) or not isinstance(v, int) or v < 1 for v in value)):
        raise ValueError(f"{name}={value!r}: must be a non-empty list of positive integers, "
                         f"e.g. [64, 32]")


def _float(name: str, value: Any, positive: bool) -> None:
    if isinstance(value, str):
        raise ValueError(f"{name}={value!r}: must be a number, got a string (YAML reads 1e-3 as "
                         f"text; write 1.0e-3 or 0.001)")
    if (isinstance(value, bool) or not isinstance(value, (int, float))
            or not math.isfinite(value)):
        raise ValueError(f"{name}={value!r}: must be a finite number")
    if positive and value <= 0:
        raise ValueError(f"{name}={value}: must be > 0")
    if not positive and value < 0:
        raise ValueError(f"{name}={value}: must be ≥ 0")
