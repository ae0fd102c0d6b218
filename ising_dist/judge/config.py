"""EvaluateConfig: every choice of an evaluation (``python -m ising_dist.evaluate``), typed.

Built from YAML and command-line overrides with ising_dist.config.load (unknown keys, bad
types and values outside a field's choices refused); the flags of ``python -m
ising_dist.evaluate`` come from the fields (ising_dist.config.add_flags);
:meth:`EvaluateConfig.validate` refuses other bad values with the fix. Presets live
in configs/evaluate/.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Optional

from ..config import ConfigError, option
from ..models.config import SAMPLE_MODES
from ..models.vae import SAMPLE_PRIORS
from ..nmcmc import DEVICE_HELP, torch_device

SPLITS = ("heldout", "val", "test")


@dataclass
class EvaluateConfig:
    """One evaluation: which (file, model) pairs, which reference, what to generate and measure.

    Several (data, model) pairs add the finite-size trend of the latent Tc (out/<i>_<stem>/
    per pair, out/finite_size.json, out/index.html). Each field's help is its flag's.
    """

    data: list[str] = option([], "HDF5 run file(s) of python -m ising_dist.pt")
    model: list[str] = option([], "run directory(ies) of python -m ising_dist.train or model.pt "
                                  "file(s), one per --data file (same order)")
    out: str = option("report", "report directory")
    samples: int = option(2000, "generated configurations per temperature (≥ 2)")
    temperatures: Optional[list[float]] = option(
        None, "evaluate only these ladder temperatures T1,T2,… (J/k_B; default: every one)")
    tmin: Optional[float] = option(None, "… or only those in [tmin, tmax]")
    tmax: Optional[float] = option(None, "upper end of that range")
    split: str = option("heldout", "MCMC reference: heldout (validation + test), val or test",
                        choices=SPLITS)
    prior: Optional[str] = option(
        None, "codes of models with an encoder: fitted (a diagonal Gaussian fitted to the "
              "codes of that T's training configurations), aggregate (the mixture of their "
              "posteriors) or normal (N(0, 1)); default: fitted for unconditional models, the "
              "config's prior for conditional ones", choices=SAMPLE_PRIORS)
    mode: Optional[str] = option(None, "spins from the decoder (default: the model's "
                                       "sample_mode)", choices=SAMPLE_MODES)
    seed: int = option(0, "seed of generation, bootstraps and timing chains")
    device: str = option("cpu", DEVICE_HELP)
    cost: bool = option(True, "cost per independent sample (Metropolis / Wolff timing runs)")
    cost_sweeps: int = option(4000, "sweeps of those timing runs per temperature (≥ 100)")
    nmcmc: Optional[str] = option(None, "output of python -m ising_dist.nmcmc for this model: "
                                        "judge its chains")
    nmcmc_steps: int = option(2000, "without --nmcmc: neural MCMC proposals per T run here for "
                                    "models with a likelihood (0: none)")
    nmcmc_k: int = option(4, "codes per proposal of the VAE pseudo-marginal estimate (≥ 1)")
    embedding: bool = option(True, "PCA of the configurations and t-SNE of configurations "
                                   "and codes")
    tsne_points: int = option(800, "configurations (and codes) embedded by t-SNE, spread "
                                   "evenly over the ladder (0: no t-SNE)")
    pictures: bool = option(True, "PNGs and index.html besides metrics.json")
    tune: Optional[str] = option(None, "results.csv of python -m ising_dist.tune: add its "
                                       "heatmap to the report")

    def validate(self) -> None:
        """ConfigError naming the bad value and how to fix it (for --device also when it
        names a CUDA device torch does not see: nmcmc.torch_device)."""
        def need(ok, msg):
            if not ok:
                raise ConfigError(msg)
        try:
            torch_device(self.device)
        except ValueError as exc:
            raise ConfigError(str(exc)) from None
        need(self.data, "no --data: give the HDF5 file(s) written by `python -m ising_dist.pt`")
        need(self.model, "no --model: give the run directory(ies) of "
                         "`python -m ising_dist.train` or model.pt file(s)")
        need(len(self.data) == len(self.model),
             f"{len(self.data)} --data file(s) but {len(self.model)} --model(s); give one "
             f"model per data file (same order)")
        need(self.samples >= 2, f"--samples {self.samples}: generate at least 2 samples per "
                                f"temperature (e.g. 2000)")
        need(self.cost_sweeps >= 100, f"--cost-sweeps {self.cost_sweeps}: use at least 100")
        need(self.nmcmc_steps >= 0 and self.nmcmc_k >= 1,
             f"--nmcmc-steps {self.nmcmc_steps} / --nmcmc-k {self.nmcmc_k}: steps must be ≥ 0 "
             f"(0: no neural MCMC), k ≥ 1")
        need(self.tsne_points >= 0, f"--tsne-points {self.tsne_points}: must be ≥ 0 (0: no "
                                    f"t-SNE)")
        need(self.nmcmc is None or Path(self.nmcmc).is_file(),
             f"--nmcmc {self.nmcmc!r} does not exist; give the file written by "
             f"`python -m ising_dist.nmcmc` for this model")
        for d in self.data:
            need(Path(d).is_file(), f"--data {d!r} does not exist; give the HDF5 file written "
                                    f"by `python -m ising_dist.pt`")

    def evaluate_kwargs(self) -> dict:
        """Keyword arguments of driver.run for one (file, model) pair."""
        return dict(temperatures=self.temperatures, tmin=self.tmin, tmax=self.tmax,
                    split=self.split, prior=self.prior, mode=self.mode, seed=self.seed,
                    device=self.device,
                    cost=self.cost, cost_sweeps=self.cost_sweeps, pictures=self.pictures,
                    tune_results=self.tune, nmcmc_file=self.nmcmc,
                    nmcmc_steps=0 if self.nmcmc else self.nmcmc_steps, nmcmc_k=self.nmcmc_k,
                    embedding=self.embedding, tsne_points=self.tsne_points)
