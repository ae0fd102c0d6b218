"""Train a generative model on a parallel-tempering file with Ray Train (DDP).

    python -m ising_dist.train --config configs/train/demo.yaml [--data F.h5] [--out DIR]
                               [--workers N] [--gpus G] [--epochs E] [--resume]

Every flag is a TrainConfig field (``--help``); flags override the preset.

Ray sits at the edge only: :func:`train_loop` (one per worker) is plain PyTorch around
``ising_dist.models.train_epoch`` / ``evaluate_epoch``; rank, device, DDP, reports,
checkpoints and stop requests reach it through a session (ising_dist.session): a RaySession
per Ray Train worker, or a LocalSession that runs it in this process without Ray
(``run(cfg, local=True)``: tests, notebooks). Without a cluster Ray is started locally, and
kept quiet (only our progress lines reach the terminal; ``--verbose`` shows Ray's own logs);
with ``RAY_ADDRESS`` set, or under ``ray job submit --working-dir . -- python -m
ising_dist.train …``, the run uses that cluster (give absolute --data/--out there).

SIGTERM or SIGINT (Ctrl-C, Slurm's time-limit warning: slurm/train.sh) stops the run after
the checkpoint of the epoch in progress and exits 0, printing the ``--resume`` command; a
second signal stops at once (exit 1), keeping the newest checkpoint.

The run directory (--out, default runs/train/<name>) holds:
    config.yaml          the resolved TrainConfig (model L filled in, absolute paths)
    metrics.csv          one row per epoch: train_/val_ recon, kl, total (…), time, samples/s
    checkpoint_NNNN/     after epoch NNNN: model.pt (a model file) + trainer.pt (optimizer
                         state, epoch, config, data fingerprint, resumed_at: the epochs the
                         run restarted from); the newest keep_checkpoints are kept
    model.pt             the final model: ``ising_dist.models.load_model`` /
                         ``torch.load(weights_only=True)``, no pickled code
A model with ``objective: variational`` (VAN, family autoregressive) reads no data: --data is
optional and ignored, model.L sets the lattice, each epoch is model.van_steps gradient steps on
samples each worker draws from the model itself, and the loss printed is F_q per spin (an
upper bound of the exact free energy per spin at model.temperature) ± its standard error.
Resuming (``--resume``) continues from the newest checkpoint; a worker that dies mid-run is
restarted by Ray (``max_failures``) from the newest checkpoint too. Every epoch reseeds from
(seed, epoch, rank) and shuffles with DistributedSampler(seed, epoch), so a resumed run
repeats what an uninterrupted one would have done.
"""
from __future__ import annotations

import argparse
import contextlib
import csv
import functools
import glob
import os
import shutil
import signal
import socket
import sys
import tempfile
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional

import torch

from . import config as cfgmod
from . import deathwatch, raydaemons
from .allreduce import use_shared_memory
from .config import ConfigError, option
from .runlock import RunLock, RunLockedError
from .session import LocalSession, RaySession, clear_stop, request_stop
from .data import MEMORY_MB, DataError, batches, make_datasets, same_data
from .models import ModelConfig, build_model, evaluate_epoch, save_model, train_epoch
from .models.loop import evaluate_variational, train_variational_epoch, unwrap

STATE_FORMAT = "ising_dist.train_state"
STATE_VERSION = 1
@dataclass
class TrainConfig:
    """One training run. Sizes: batch_size is the global batch (split over workers).

    A model with ``compile: true`` is torch.compiled on every worker (not GANs: their
    gradient penalty needs double backward, which compiled autograd lacks). Measured
    (benchmarks/training.py --compile, L = 16, batch 128, 1 thread; needs a C++ compiler):
    ×1.36 on the MLP VAE after 2–6 s of compiling, ×1.12–1.14 on the PixelCNN, ×0.45 (slower)
    on the conv VAE (×0.78 before its periodic convs went channels last, models/nets.py).
    """
    name: str = option("demo", "run name (the default run directory is runs/train/<name>)")
    data: str = option("runs/demo/pt.h5", "HDF5 file written by python -m ising_dist.pt "
                                          "(absolute under a cluster)", resume=True)
    out: Optional[str] = option(None, "run directory (default runs/train/<name>)", resume=True)
    temperatures: Optional[list[float]] = option(
        None, "train on these ladder temperatures (default: all) …")
    tmin: Optional[float] = option(None, "… or on the range tmin ≤ T ≤ tmax")
    tmax: Optional[float] = option(None, "upper end of that range")
    skip: int = option(0, "samples per temperature dropped at the start (burn-in)")
    val_fraction: float = option(0.1, "time-ordered validation split (see ising_dist.data)")
    test_fraction: float = option(0.1, "time-ordered test split (see ising_dist.data)")
    data_memory_mb: float = option(
        MEMORY_MB, "MiB of spins (1 byte each) a worker holds per split: a split up to this "
                   "size is read into memory, a larger one streams in slabs through a cache "
                   "of this size (ising_dist.data.batches)")
    shuffle_window: Optional[int] = option(
        None, "samples shuffled together (default: the whole split in memory, half the cache "
              "when streaming); the batches depend on it, not on memory vs stream")
    model: dict = option({}, "a ModelConfig mapping (L is taken from the data when left out)",
                         cli=False)
    epochs: int = option(10, "epochs to train (with --resume: the new total)", resume=True)
    batch_size: int = option(128, "global batch size (split over the workers)")
    lr: float = option(1.0e-3, "learning rate")
    seed: int = option(0, "seed of the weights, the shuffling and the noise")
    workers: int = option(1, "Ray Train workers (DDP ranks)", resume=True)
    gpus: float = option(0.0, "GPUs per worker (0: CPU, gloo)", resume=True)
    cpus_per_worker: float = option(1.0, "CPUs Ray reserves per worker", resume=True)
    threads: Optional[int] = option(
        None, "torch threads per worker (default: cpus_per_worker rounded down, at least 1)",
        resume=True)
    max_failures: int = option(2, "worker failures Ray recovers from (restarting from the last "
                                  "checkpoint; -1: forever)", resume=True)
    keep_checkpoints: int = option(2, "newest checkpoints kept in the run directory",
                                   resume=True)
    progress: bool = option(True, "per-epoch progress lines", flag="--quiet", resume=True)
    shm_allreduce: bool = option(
        True, "shared-memory gradient all-reduce for CPU workers on one machine, instead of "
              "gloo's (same mean gradient, ~1.5 ms less a step: ising_dist.allreduce)",
        resume=True)
    compile: bool = option(False, "torch.compile the model on every worker (not GANs; pays in long runs: TrainConfig)")
    chaos_kill_epoch: Optional[int] = option(
        None, "fault drill: the last rank SIGKILLs itself once, in the epoch after this one's "
              "checkpoint, to exercise recovery (leave unset in real runs)", resume=True)

    def validate(self) -> None:
        def need(cond, msg):
            if not cond:
                raise ConfigError(msg)
        need(bool(self.name) and "/" not in self.name,
             f"name={self.name!r}: give a plain run name (e.g. demo)")
        need(bool(self.data) or self.variational,
             "data is empty: give the HDF5 file of `python -m ising_dist.pt`, "
             "e.g. --data runs/demo/pt.h5")
        for key in ("epochs", "batch_size", "workers"):
            need(getattr(self, key) >= 1, f"{key}={getattr(self, key)}: must be ≥ 1")
        need(self.keep_checkpoints >= 1, f"keep_checkpoints={self.keep_checkpoints}: must be ≥ 1 "
                                         f"(resuming needs the newest checkpoint)")
        need(self.lr > 0, f"lr={self.lr}: the learning rate must be > 0 (e.g. 1.0e-3)")
        need(self.gpus >= 0, f"gpus={self.gpus}: GPUs per worker must be ≥ 0 (0 trains on CPU)")
        need(self.cpus_per_worker > 0, f"cpus_per_worker={self.cpus_per_worker}: must be > 0")
        need(self.threads is None or self.threads >= 1, f"threads={self.threads}: must be ≥ 1")
        need(self.max_failures >= -1, f"max_failures={self.max_failures}: must be ≥ 0 "
                                      f"(or -1: retry forever)")
        need(self.seed >= 0, f"seed={self.seed}: must be ≥ 0")
        need(self.chaos_kill_epoch is None or self.chaos_kill_epoch >= 1,
             f"chaos_kill_epoch={self.chaos_kill_epoch}: must be ≥ 1 (or unset)")
        need(self.skip >= 0, f"skip={self.skip}: must be ≥ 0")
        need(self.data_memory_mb >= 0, f"data_memory_mb={self.data_memory_mb}: must be ≥ 0 "
                                       f"(MiB of spins a worker holds in memory, e.g. 1024)")
        need(self.shuffle_window is None or self.shuffle_window >= 1,
             f"shuffle_window={self.shuffle_window}: must be ≥ 1 sample (or unset)")
        need(self.batch_size >= self.workers,
             f"batch_size={self.batch_size} < workers={self.workers}: the global batch is split "
             f"over the workers; use batch_size ≥ {self.workers}")
        need(not (self.temperatures is not None and (self.tmin is not None
                                                     or self.tmax is not None)),
             "give either temperatures (a list) or tmin/tmax (a range), not both")
        need(0 <= self.val_fraction < 1 and 0 <= self.test_fraction < 1
             and self.val_fraction + self.test_fraction < 1,
             f"val_fraction={self.val_fraction}, test_fraction={self.test_fraction}: each in "
             f"[0, 1), together below 1")
        need(self.val_fraction > 0, "val_fraction=0 leaves no validation data; use e.g. 0.1")
        need(isinstance(self.model, dict),
             f"model={self.model!r}: expected a mapping of model settings, e.g. "
             f"model: {{family: vae, latent_dim: 2}}")
        model = self.model_config(self.model.get("L", 16))
        need(not (self.compile and model.adversarial),
             f"compile=true with family {model.family!r}: the gradient penalty / GAN steps "
             f"need double backward, which torch.compile does not support; use compile: false")

    def model_config(self, L: int, ladder: Optional[list[float]] = None) -> ModelConfig:
        """The ModelConfig for lattice side L (an explicit model.L must agree with it); a
        model built for its training temperatures (ModelConfig.needs_ladder: rbm, acgan,
        condition_m) gets ``ladder`` (the data's) as model.ladder when that is left out."""
        try:
            cfg = ModelConfig.from_dict({**self.model, "L": self.model.get("L", L)})
            if ladder is not None and cfg.needs_ladder and not cfg.ladder:
                cfg = ModelConfig.from_dict({**cfg.to_dict(), "ladder": list(ladder)})
            elif ladder is not None and cfg.needs_ladder and (
                    len(cfg.ladder) != len(ladder)
                    or any(abs(a - b) > 1e-6 * b for a, b in zip(cfg.ladder, ladder))):
                raise ValueError(f"ladder={cfg.ladder} but the training temperatures are "
                                 f"{list(ladder)}; drop model.ladder (it is taken from the "
                                 f"data)")
            return cfg
        except (TypeError, ValueError) as exc:
            raise ConfigError(f"model: {exc}") from None

    @property
    def run_dir(self) -> Path:
        return Path(self.out or f"runs/train/{self.name}").absolute()

    @property
    def variational(self) -> bool:
        """True for objective "variational" (VAN): trained on its own samples, no data."""
        return isinstance(self.model, dict) and self.model.get("objective") == "variational"

    @property
    def threads_per_worker(self) -> int:
        return self.threads or max(1, int(self.cpus_per_worker))


# keys a --resume may change; everything else must match the run being resumed
RESUME_MAY_CHANGE = cfgmod.resume_may_change(TrainConfig)


# ---------------------------------------------------------------------------------- files
def _atomic_torch_save(obj: Any, path: Path) -> None:
    tmp = path.with_name(f"{path.name}.tmp.{os.getpid()}")
    torch.save(obj, tmp)
    os.replace(tmp, path)


def checkpoints(run_dir: Path) -> list[Path]:
    """Complete checkpoint directories of a run, oldest first."""
    found = [Path(p).parent for p in glob.glob(str(run_dir / "checkpoint_*" / "trainer.pt"))]
    return sorted(p for p in found if (p / "model.pt").is_file())


def load_state(ckpt_dir) -> dict:
    """trainer.pt of a checkpoint directory (ValueError if it is not ours)."""
    path = Path(ckpt_dir) / "trainer.pt"
    try:
        state = torch.load(path, weights_only=True, map_location="cpu")
    except FileNotFoundError:
        raise ValueError(f"{ckpt_dir} is not a training checkpoint (no trainer.pt)") from None
    if not isinstance(state, dict) or state.get("format") != STATE_FORMAT:
        raise ValueError(f"{path} is not an ising_dist training state")
    if state.get("version") != STATE_VERSION:
        raise ValueError(f"{path}: training state version {state.get('version')!r} is not "
                         f"supported (this code reads {STATE_VERSION})")
    return state


def read_metrics(run_dir) -> list[dict]:
    """metrics.csv of a run as a list of {column: float} (epoch as int)."""
    path = Path(run_dir) / "metrics.csv"
    if not path.is_file():
        return []
    with open(path, newline="") as fh:
        rows = list(csv.DictReader(fh))
    return [{k: (int(v) if k == "epoch" else float(v)) for k, v in r.items() if v != ""}
            for r in rows]


def _write_metrics(run_dir: Path, rows: list[dict]) -> None:
    """Rewrite metrics.csv atomically (small: one row per epoch)."""
    if not rows:
        return
    cols = ["epoch"] + sorted({k for r in rows for k in r} - {"epoch"})
    tmp = run_dir / f"metrics.csv.tmp.{os.getpid()}"
    with open(tmp, "w", newline="") as fh:
        w = csv.DictWriter(fh, fieldnames=cols)
        w.writeheader()
        for r in rows:
            w.writerow({k: (f"{v:.8g}" if isinstance(v, float) else v) for k, v in r.items()})
    os.replace(tmp, run_dir / "metrics.csv")


# ---------------------------------------------------------------------------------- worker
def _all_mean(terms: dict[str, float]) -> dict[str, float]:
    """Mean of each term over DDP ranks (each rank saw an equal share, DistributedSampler)."""
    import torch.distributed as dist
    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return terms
    keys = sorted(terms)
    t = torch.tensor([terms[k] for k in keys], dtype=torch.float64)
    if dist.get_backend() == "nccl":
        t = t.cuda()
    dist.all_reduce(t)
    return dict(zip(keys, (t.cpu() / dist.get_world_size()).tolist()))


def _loader(ds, cfg: TrainConfig, batch: int, rank: int, world: int, shuffle: bool):
    """This rank's batches of ds as whole tensors (DistributedSampler's order and shards;
    held in memory or streamed in slabs by size, see ising_dist.data.batches)."""
    return batches(ds, batch, rank, world, shuffle, cfg.seed, cfg.data_memory_mb,
                   cfg.shuffle_window)


def compile_model(model: torch.nn.Module) -> torch.nn.Module:
    """torch.compile ``model`` in place (same module, same state_dict keys; compiles on its
    first call). Random draws (VAE noise) stay eager's (inductor's fallback_random), so a
    compiled run follows the eager one to float rounding."""
    import torch._inductor.config
    torch._inductor.config.fallback_random = True
    model.compile()
    return model


def ddp_options(model: torch.nn.Module, gpus: float) -> dict:
    """DistributedDataParallel settings (see benchmarks/training.py for the figures).

    On CPU all gradients go in one bucket, one all-reduce a step: each rank has one thread
    and no idle core to overlap smaller buckets with backward, and every collective costs a
    round trip (measured: 0.1 MB buckets cost more CPU a sample than one bucket). With every
    rank on one machine that all-reduce goes through shared memory, not gloo
    (ising_dist.allreduce, TrainConfig.shm_allreduce).
    Gradients are views into that bucket (gradient_as_bucket_view), not copied into it and
    back after the all-reduce: conv VAE, batch 64, one thread, 9.45 → 9.29 ms a step (9.17
    without DDP).
    Buffers are not broadcast before each forward (forward_sync_buffers=False): every rank
    builds the same model from the same seed or checkpoint, and the only buffers (a VAE's
    fitted prior) change after training. GANs need find_unused_parameters (models/loop.py)."""
    grad_mb = sum(p.numel() * p.element_size() for p in model.parameters()) / 2**20
    opts = {"forward_sync_buffers": False, "gradient_as_bucket_view": True}
    if gpus == 0:
        opts["bucket_cap_mb"] = max(1.0, grad_mb)
    if model.cfg.adversarial:
        opts["find_unused_parameters"] = True
    return opts


MMAP_THRESHOLD = 32 * 2**20   # bytes: glibc's largest (DEFAULT_MMAP_THRESHOLD_MAX, 64-bit)
TRIM_THRESHOLD = 2**30        # bytes of free heap top kept before any is returned


def keep_freed_memory() -> bool:
    """Make glibc's malloc keep freed memory in this process instead of returning it to the
    kernel, so each training step's tensors reuse pages already mapped. Returns whether the
    setting took (False off glibc, e.g. macOS; nothing else changes then).

    With glibc's defaults a CPU step frees its activations and gradients (hundreds of KiB
    each) back to the kernel (munmap, or heap trimming) and maps them again the next step:
    the conv VAE of benchmarks/training.py takes 170–440 page faults a step at batch 64 on
    one thread (700–1 900 before its convs went channels last, models/nets.py).
    mallopt(M_MMAP_THRESHOLD, 32 MiB) serves allocations below 32 MiB from the heap;
    mallopt(M_TRIM_THRESHOLD, 1 GiB) keeps up to 1 GiB of freed heap top. Measured
    (benchmarks/training.py, section 2): 1–14 faults a step; 1.12× the samples/s of the
    WGAN-GP on one thread, 0.99× (noise) for the VAEs and the PixelCNN (the conv VAE gained
    1.40× before its transposed convs stopped copying, 1.03× before its convs went channels
    last). Memory then stays at the run's high-water mark. Source: mallopt(3)."""
    import ctypes
    import ctypes.util
    name = ctypes.util.find_library("c")
    if sys.platform != "linux" or name is None:
        return False
    try:
        libc = ctypes.CDLL(name)
        m_trim_threshold, m_mmap_threshold = -1, -3          # <malloc.h>
        return bool(libc.mallopt(m_mmap_threshold, MMAP_THRESHOLD)
                    and libc.mallopt(m_trim_threshold, TRIM_THRESHOLD))
    except (OSError, AttributeError):   # a libc without mallopt (musl)
        return False


def say(message: str) -> None:
    """A progress line on stdout. Written directly: Ray Train patches ``print`` on workers to
    go through its logger (which would show it twice, or not at all at log level WARNING);
    Ray forwards worker stdout to the driver / job log."""
    sys.stdout.write(message + "\n")
    sys.stdout.flush()


def _progress(epoch: int, total: int, m: dict, variational: bool) -> str:
    if variational:   # VAN: F_q per spin, an upper bound of the exact F
        return (f"epoch {epoch}/{total}  F_q/N train {m['train_free_energy']:.5f} ± "
                f"{m['train_free_energy_err']:.5f}  val {m['val_free_energy']:.5f} ± "
                f"{m['val_free_energy_err']:.5f}  (β {m['train_beta']:.4g})  "
                f"{m['samples_per_s']:.0f} samples/s  {m['epoch_time_s']:.1f} s")

    def terms(prefix):
        keys = [k for k in ("recon", "kl", "total") if f"{prefix}{k}" in m]
        if not keys:   # GANs: critic_/gen_ totals
            keys = [k[len(prefix):] for k in sorted(m) if k.startswith(prefix)
                    and k.endswith("total")]
        return " ".join(f"{k} {m[prefix + k]:.4g}" for k in keys)
    return (f"epoch {epoch}/{total}  train: {terms('train_')}  val: {terms('val_')}  "
            f"{m['samples_per_s']:.0f} samples/s  {m['epoch_time_s']:.1f} s")


def _chaos_kill(run_dir: Path, done: int) -> None:
    """Fault drill: SIGKILL this worker once, during epoch done+1. It first waits two of the
    controller's health-check periods, so checkpoint ``done`` has been registered (a worker
    that dies within a poll of its report loses that report, and Ray restarts one earlier)."""
    marker = run_dir / ".chaos_kill_done"
    if marker.exists():
        return
    marker.touch()
    time.sleep(2 * float(os.environ.get("RAY_TRAIN_HEALTH_CHECK_INTERVAL_S", 2.0)) + 0.5)
    say(f"chaos_kill_epoch={done}: worker {os.getpid()} kills itself (SIGKILL) in epoch "
        f"{done + 1}; Ray should restart the workers from checkpoint_{done:04d}")
    os.kill(os.getpid(), signal.SIGKILL)


def _load_checkpoint(d: Path, model: torch.nn.Module) -> dict:
    """Weights of checkpoint directory ``d`` into ``model``; returns its trainer state."""
    state = load_state(d)
    model.load_state_dict(torch.load(Path(d) / "model.pt", weights_only=True,
                                     map_location="cpu")["state_dict"])
    return state


def train_loop(loop: dict, session) -> None:
    """One worker of a run: plain PyTorch. Everything from outside — rank, world size,
    device, DDP, restored checkpoints, reports, stop requests — comes through ``session``
    (ising_dist.session: RaySession under Ray Train, LocalSession in-process).

    loop: {"config": TrainConfig as a dict, "run_dir", "data": fingerprint, "resume_from":
    checkpoint directory or None}. Per epoch: train, validate, average the terms over the
    ranks, rank 0 appends metrics.csv and writes the checkpoint, every rank reports; then all
    ranks stop together if a stop was requested (ising_dist.session.request_stop)."""
    cfg = cfgmod.from_dict(TrainConfig, loop["config"], source="train config")
    run_dir = Path(loop["run_dir"])
    rank, world, device = session.rank, session.world_size, session.device
    torch.set_num_threads(cfg.threads_per_worker)
    keep_freed_memory()

    fp = loop["data"]
    if cfg.variational:   # VAN: no data, each rank samples the model (see the epoch loop)
        sets = fp_here = None
    else:
        sets, fp_here = make_datasets(cfg.data, cfg.temperatures, cfg.tmin, cfg.tmax,
                                      cfg.val_fraction, cfg.test_fraction, cfg.skip,
                                      n_samples=fp["n_samples"])
    if fp_here is not None and same_data(fp, fp_here):
        raise DataError(f"{cfg.data} changed under the run: {same_data(fp, fp_here)} differ")

    torch.manual_seed(cfg.seed)               # identical initial weights on every rank
    model = build_model(cfg.model_config(fp["L"]))
    state = None
    # Ray's checkpoint (a restarted worker, or a run Ray restores by name) or the one --resume
    # continues, whichever is newer: a cluster killed between writing a checkpoint and Ray
    # registering it leaves Ray one epoch behind the files
    with session.restored() as d:
        found = [Path(p) for p in (d, loop.get("resume_from"))
                 if p and (Path(p) / "trainer.pt").is_file()]
        if found:
            newest = max(found, key=lambda p: int(load_state(p)["epoch"]))
            state = _load_checkpoint(newest, model)
    start, resumed_at = 0, []
    if state is not None:
        start = int(state["epoch"])
        resumed_at = list(state.get("resumed_at", [])) + [start]  # provenance of restarts
        if hasattr(model, "critic_steps"):
            model.critic_steps = int(state.get("critic_steps", 0))

    if cfg.compile:
        compile_model(model)
    model = session.prepare_model(model, ddp_options(model, cfg.gpus))
    # collective; leaves single workers, GPUs and ranks on several machines to DDP's backend
    shm = cfg.shm_allreduce and use_shared_memory(model)
    optimizers = unwrap(model).configure_optimizers(cfg.lr)
    if state is not None:
        for opt, sd in zip(optimizers, state["optimizers"]):
            opt.load_state_dict(sd)

    per_rank = max(1, cfg.batch_size // world)
    if not cfg.variational:
        train_dl = _loader(sets["train"], cfg, per_rank, rank, world, shuffle=True)
        val_dl = _loader(sets["val"], cfg, per_rank, rank, world, shuffle=False)
    if rank == 0:
        rows = [r for r in read_metrics(run_dir) if r["epoch"] <= start]
        _write_metrics(run_dir, rows)     # drop epochs past the checkpoint we resume from
        if cfg.progress:
            how = f"resuming after epoch {start}" if start else "starting"
            mc = unwrap(model).cfg
            say(f"{how}: variational (VAN) at T={mc.temperature}, {mc.van_steps} steps × "
                f"{mc.van_batch} samples per epoch, {world} worker(s), device {device}"
                if cfg.variational else
                f"{how}: {len(sets['train'])} train / {len(sets['val'])} val samples, "
                f"{world} worker(s), batch {per_rank}×{world}, device {device}"
                + (", gradients all-reduced in shared memory" if shm else ""))

    for epoch in range(start, cfg.epochs):
        if cfg.chaos_kill_epoch == epoch and rank == world - 1:
            _chaos_kill(run_dir, epoch)
        torch.manual_seed(cfg.seed * 1_000_003 + epoch * 1009 + rank)  # VAE noise, per epoch
        t0 = time.perf_counter()
        if cfg.variational:   # every rank draws its own samples (seeded by rank above)
            tr = train_variational_epoch(model, optimizers, epoch, device)
            dt = time.perf_counter() - t0
            va = evaluate_variational(model, device)
            n_seen = unwrap(model).cfg.van_steps * unwrap(model).cfg.van_batch
        else:
            train_dl.set_epoch(epoch)
            tr = train_epoch(model, train_dl, optimizers, device)
            dt = time.perf_counter() - t0
            va = evaluate_epoch(model, val_dl, device)
            n_seen = len(sets["train"])
        metrics = {f"train_{k}": v for k, v in _all_mean(tr).items()}
        metrics.update({f"val_{k}": v for k, v in _all_mean(va).items()})
        metrics.update(epoch=epoch + 1, epoch_time_s=dt, samples_per_s=n_seen / dt)

        tmp = None
        if rank == 0:
            rows.append(metrics)
            _write_metrics(run_dir, rows)
            tmp = Path(tempfile.mkdtemp(prefix="ising_ckpt_"))
            extra = {"epoch": epoch + 1, "metrics": metrics, "data": fp,
                     "train_config": cfgmod.to_dict(cfg), "resumed_at": resumed_at}
            save_model(tmp / "model.pt", model, extra)
            net = unwrap(model)
            _atomic_torch_save({"format": STATE_FORMAT, "version": STATE_VERSION,
                                "epoch": epoch + 1, "config": cfgmod.to_dict(cfg), "data": fp,
                                "optimizers": [o.state_dict() for o in optimizers],
                                "critic_steps": int(getattr(net, "critic_steps", 0)),
                                "resumed_at": resumed_at, "metrics": metrics},
                               tmp / "trainer.pt")
            if cfg.progress:
                say(_progress(epoch + 1, cfg.epochs, metrics, cfg.variational))
        session.report(metrics, tmp, f"checkpoint_{epoch + 1:04d}")
        if tmp is not None:
            shutil.rmtree(tmp, ignore_errors=True)
        if epoch + 1 < cfg.epochs and session.stop_requested():
            return


def _ray_worker(loop: dict) -> None:
    """The Ray Train entry point of each worker: :func:`train_loop` with a RaySession."""
    train_loop(loop, RaySession(loop["run_dir"], verbose=loop.get("verbose", False)))


# ---------------------------------------------------------------------------------- driver
def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def ensure_ray(num_cpus: Optional[int] = None, verbose: bool = False) -> str:
    """Connect to the cluster in RAY_ADDRESS (or the one already joined), else start Ray
    locally. Returns "cluster" or "local".

    A local Ray is quiet unless ``verbose``: its start-up lines, the token-authentication
    notice (token authentication stays on, Ray's default), the preemption watcher (a one-
    machine cluster is never drained; creating its actor logs an error line) are left out,
    and Ray Train's placement-group cleaner is pointed at this instance's own dashboard
    (with "auto" it fails with a traceback when another Ray runs on the machine). Its
    daemons and Ray Train's helper actors run at SCHED_IDLE, in one cgroup with cpu.idle where
    one can be made, and those that outlive Ray's shutdown are killed at exit
    (ising_dist.raydaemons)."""
    import logging

    import ray
    if ray.is_initialized():
        return "cluster" if os.environ.get("RAY_ADDRESS") else "local"
    if os.environ.get("RAY_ADDRESS"):
        ray.init(log_to_driver=True)
        return "cluster"
    level = logging.INFO if verbose else logging.WARNING
    logging.getLogger("ray._private.authentication.authentication_token_setup").setLevel(
        logging.INFO if verbose else logging.ERROR)
    dash = _free_port()
    # Ray starts its workers at nice 15 so that its daemons stay responsive; here the workers
    # are the job: at nice 15 every burst of the GCS, raylet, dashboard or log monitor (nice 0),
    # or of any other program, preempts a DDP rank and stalls its peers at the next all-reduce.
    env = {"RAY_worker_niceness": "0", "RAY_API_SERVER_ADDRESS": f"http://127.0.0.1:{dash}",
           "RAY_TRAIN_ENABLE_PREEMPTION_WATCHER": "0"}
    ray.init(address="local", num_cpus=num_cpus or os.cpu_count() or 1, log_to_driver=True,
             include_dashboard=True, dashboard_host="127.0.0.1", dashboard_port=dash,
             logging_level=level, runtime_env={"env_vars": env})
    raydaemons.start()   # its daemons and helper actors yield the CPU to the workers
    return "local"


def _run_artifacts(run_dir: Path) -> list[str]:
    """What a new run in ``run_dir`` would overwrite: its final model and checkpoints. A
    metrics.csv without them (a run stopped before its first checkpoint landed) is not: its
    epochs' weights are gone, and --resume has nothing to continue from."""
    names = ["model.pt"] + [p.name for p in checkpoints(run_dir)]
    return [n for n in names if (run_dir / n).exists()]


def resolve(cfg: TrainConfig, n_samples: Optional[int] = None
            ) -> tuple[TrainConfig, dict, int]:
    """Check the data file, temperature selection, split and model against each other.

    Returns (config with absolute paths and the full model config, data fingerprint, number
    of training samples); writes nothing. A variational run reads no data (_resolve_van)."""
    if cfg.variational:
        return _resolve_van(cfg)
    data = os.path.abspath(cfg.data)
    sets, fp = make_datasets(data, cfg.temperatures, cfg.tmin, cfg.tmax, cfg.val_fraction,
                             cfg.test_fraction, cfg.skip, n_samples=n_samples)
    if "L" in cfg.model and cfg.model["L"] != fp["L"]:
        raise ConfigError(f"model.L={cfg.model['L']} but {data} holds L={fp['L']} lattices; drop "
                          f"model.L (it is taken from the data) or use a file with L="
                          f"{cfg.model['L']}")
    model_cfg = cfg.model_config(fp["L"], fp["temperatures"])
    resolved = cfgmod.from_dict(TrainConfig, {**cfgmod.to_dict(cfg), "data": data,
                                              "out": str(cfg.run_dir),
                                              "model": model_cfg.to_dict()})
    return resolved, fp, len(sets["train"])


def _resolve_van(cfg: TrainConfig) -> tuple[TrainConfig, dict, int]:
    """resolve() of a VAN run: data is set to "" (not read); L is model.L (default 16); the
    fingerprint names the objective and temperature instead of a file; the sample count is
    the samples drawn per epoch."""
    model_cfg = cfg.model_config(cfg.model.get("L", ModelConfig.L))
    fp = {"path": None, "objective": "variational", "L": model_cfg.L,
          "temperatures": [model_cfg.temperature], "n_samples": 0}
    resolved = cfgmod.from_dict(TrainConfig, {**cfgmod.to_dict(cfg), "data": "",
                                              "out": str(cfg.run_dir),
                                              "model": model_cfg.to_dict()})
    return resolved, fp, model_cfg.van_steps * model_cfg.van_batch


def prepare(cfg: TrainConfig, resume: bool = False) -> tuple[TrainConfig, dict, Optional[Path]]:
    """Check config, data and run directory before any Ray work; write config.yaml. A run
    directory that holds metrics.csv but no checkpoint nor model.pt (stopped before its first
    checkpoint landed) starts afresh, with a note on stderr.

    Returns (resolved config, data fingerprint, checkpoint to resume from or None)."""
    run_dir = cfg.run_dir
    resume_from = None
    saved = None
    if resume:
        found = checkpoints(run_dir)
        if not found:
            raise ConfigError(f"--resume: {run_dir} holds no checkpoint to continue from; drop "
                              f"--resume to start a new run there")
        resume_from = found[-1]
        saved = load_state(resume_from)
        if cfg.epochs <= int(saved["epoch"]):
            raise ConfigError(f"--resume: {run_dir} is already at epoch {saved['epoch']} of "
                              f"epochs={cfg.epochs}; raise --epochs to train further")
    else:
        existing = _run_artifacts(run_dir) if run_dir.is_dir() else []
        if existing:
            raise ConfigError(f"--out {run_dir} already holds a run ({', '.join(existing[:3])}); "
                              f"pass --resume to continue it or choose another --out")
    resolved, fp, n_train = resolve(cfg, saved["data"]["n_samples"] if saved else None)
    if saved is not None:
        # a key the run's config lacks was added since: the run had its default
        old = {**cfgmod.to_dict(TrainConfig()), **saved["config"]}
        new = cfgmod.to_dict(resolved)
        diff = [f"{k}: run has {old.get(k)!r}, asked {new[k]!r}" for k in new
                if k not in RESUME_MAY_CHANGE and old.get(k) != new[k]]
        if diff:
            raise ConfigError(f"--resume of {run_dir} with a different setup (" + "; ".join(diff)
                              + "); resume with the same settings (only "
                              + ", ".join(RESUME_MAY_CHANGE) + " may change) or choose a new "
                              "--out")
        changed = same_data(saved["data"], fp)
        if changed:
            raise DataError(f"--resume: the data differ from the run's ({', '.join(changed)}); "
                            f"resume with the file the run was trained on")
    if n_train < cfg.batch_size:
        print(f"note: batch_size={cfg.batch_size} exceeds the {n_train} training samples; "
              f"each epoch is one smaller batch", file=sys.stderr)
    orphan = run_dir / "metrics.csv"
    if not resume and orphan.is_file():   # no checkpoint (see _run_artifacts): nothing to keep
        print(f"note: {run_dir} holds metrics of {len(read_metrics(run_dir))} epoch(s) but no "
              f"checkpoint (the run stopped before its first checkpoint landed); starting it "
              f"afresh", file=sys.stderr)
        orphan.unlink()
    run_dir.mkdir(parents=True, exist_ok=True)
    (run_dir / "config.yaml").write_text(cfgmod.to_yaml(resolved))
    return resolved, fp, resume_from


def run(cfg: TrainConfig, resume: bool = False, callbacks: Optional[list] = None,
        start_ray: bool = True, verbose: bool = False, lock: bool = True, local: bool = False,
        stop_on_signals: bool = False) -> dict:
    """Train (see module doc); returns {"run_dir", "model", "epoch", "metrics", "stopped"}:
    the final model file (None when the run stopped early), the epochs done, their last
    metrics, and whether a stop request (ising_dist.session.request_stop) ended it early.

    local: train in this process, one worker, no Ray (a LocalSession: tests, notebooks);
    ConfigError for workers ≠ 1, chaos_kill_epoch (needs Ray's restarts) or gpus without CUDA.
    callbacks: Ray Train UserCallbacks (Tune passes TuneReportCallback). start_ray=False when
    already inside a Ray task (a Tune trial). verbose: Ray's own INFO logs too.
    lock: hold the run directory's lock for the whole run (ising_dist.runlock,
    <run_dir>/.lock; RunLockedError, naming the live run, when another process trains into
    it); False for a Tune trial, whose directory its search's lock covers.
    stop_on_signals: (main thread only) the first SIGTERM/SIGINT stops the run after its
    current epoch's checkpoint; a second one raises :class:`Interrupted` at once."""
    if not lock:
        return _run_locked(cfg, resume, callbacks, start_ray, verbose, local, stop_on_signals)
    with RunLock.acquire(cfg.run_dir, role="train"):
        return _run_locked(cfg, resume, callbacks, start_ray, verbose, local, stop_on_signals)


def _run_locked(cfg, resume, callbacks, start_ray, verbose, local, stop_on_signals) -> dict:
    """:func:`run`, holding the run directory's lock."""
    if local:
        _check_local(cfg)
    cfg, fp, resume_from = prepare(cfg, resume)
    run_dir = cfg.run_dir
    loop = {"config": cfgmod.to_dict(cfg), "run_dir": str(run_dir), "data": fp,
            "resume_from": str(resume_from) if resume_from else None, "verbose": verbose}
    if start_ray and not local:   # in the main thread, before our signal handlers: ray.init
        _check_resources(cfg, ensure_ray(verbose=verbose))   # sets a SIGTERM handler of its own
    clear_stop(run_dir)   # a request left by a driver that died before its run ended
    try:
        with _stop_on_signals(run_dir, stop_on_signals):
            if local:
                final = _fit_local(cfg, loop)
            else:
                fit = functools.partial(_fit_ray, cfg, loop, callbacks, verbose)
                # Ray's fit() replaces the SIGINT handler when called from the main thread
                final = _wait_in_main_thread(fit) if stop_on_signals else fit()
    finally:
        clear_stop(run_dir)
    state = load_state(final)
    done = int(state["epoch"]) >= cfg.epochs
    if done:
        tmp = run_dir / f"model.pt.tmp.{os.getpid()}"
        shutil.copyfile(final / "model.pt", tmp)
        os.replace(tmp, run_dir / "model.pt")
    return {"run_dir": str(run_dir), "model": str(run_dir / "model.pt") if done else None,
            "epoch": int(state["epoch"]), "metrics": state["metrics"], "stopped": not done}


def _check_local(cfg: TrainConfig) -> None:
    """A run without Ray: one worker, no fault drill, a GPU only where torch sees one."""
    if cfg.workers != 1:
        raise ConfigError(f"workers={cfg.workers}: a local run (no Ray) has one worker; use "
                          f"workers: 1, or train through Ray for DDP")
    if cfg.chaos_kill_epoch is not None:
        raise ConfigError(f"chaos_kill_epoch={cfg.chaos_kill_epoch}: the fault drill needs Ray "
                          f"to restart the killed worker; unset it for a local run")
    if cfg.gpus > 0 and not torch.cuda.is_available():
        raise ConfigError(f"gpus={cfg.gpus:g}: torch sees no CUDA device here; use gpus: 0")


def _fit_local(cfg: TrainConfig, loop: dict) -> Path:
    """train_loop in this process (LocalSession); returns the newest checkpoint directory."""
    threads = torch.get_num_threads()
    try:
        train_loop(loop, LocalSession(cfg.run_dir, cfg.keep_checkpoints,
                                      "cuda" if cfg.gpus > 0 else "cpu"))
    finally:
        torch.set_num_threads(threads)   # train_loop sets the worker's threads
    return checkpoints(cfg.run_dir)[-1]


def _fit_ray(cfg: TrainConfig, loop: dict, callbacks, verbose: bool) -> Path:
    """train_loop on cfg.workers Ray Train workers (RaySession each), on the Ray this process
    has joined; returns the newest checkpoint directory."""
    from ray.train import (CheckpointConfig, FailureConfig, LoggingConfig, RunConfig,
                           ScalingConfig)
    from ray.train.torch import TorchConfig, TorchTrainer

    run_dir = cfg.run_dir
    use_gpu = cfg.gpus > 0
    resources = {"CPU": cfg.cpus_per_worker, **({"GPU": cfg.gpus} if use_gpu else {})}
    trainer = TorchTrainer(
        _ray_worker, train_loop_config=loop,
        torch_config=TorchConfig(backend="nccl" if use_gpu else "gloo"),
        scaling_config=ScalingConfig(num_workers=cfg.workers, use_gpu=use_gpu,
                                     resources_per_worker=resources),
        run_config=RunConfig(
            name=run_dir.name, storage_path=str(run_dir.parent),
            failure_config=FailureConfig(max_failures=cfg.max_failures),
            checkpoint_config=CheckpointConfig(num_to_keep=cfg.keep_checkpoints),
            logging_config=LoggingConfig(log_level="INFO" if verbose else "WARNING"),
            callbacks=callbacks or None))
    result = trainer.fit()
    if result.checkpoint is None:
        raise RuntimeError(f"training in {run_dir} finished without a checkpoint")
    return Path(result.checkpoint.path)


class Interrupted(Exception):
    """A second SIGTERM/SIGINT during a run: stop at once, without the current epoch."""


@contextlib.contextmanager
def _stop_on_signals(run_dir: Path, enabled: bool):
    """While the run trains: the first SIGTERM or SIGINT requests a stop after the current
    epoch's checkpoint (every worker sees it: ising_dist.session); a second one raises
    Interrupted. The previous handlers come back afterwards."""
    if not enabled:
        yield
        return
    received = []

    def handler(signum, frame):
        name = signal.Signals(signum).name
        received.append(name)
        if len(received) > 1:
            raise Interrupted(f"stopped by a second {name} before the epoch in progress "
                              f"finished")
        request_stop(run_dir)
        print(f"{name}: the run stops after the checkpoint of the epoch in progress "
              f"({name} again: stop at once, without it)", file=sys.stderr, flush=True)

    previous = {s: signal.signal(s, handler) for s in (signal.SIGTERM, signal.SIGINT)}
    try:
        yield
    finally:
        for s, h in previous.items():
            signal.signal(s, h)


def _wait_in_main_thread(fn):
    """fn() in a daemon thread while the main thread waits in short joins, so that the main
    thread's signal handlers run (and a second signal can leave without waiting)."""
    box = {}

    def target():
        try:
            box["value"] = fn()
        except BaseException as exc:  # noqa: BLE001 — handed to the main thread below
            box["error"] = exc
    worker = threading.Thread(target=target, daemon=True, name="train-fit")
    worker.start()
    while worker.is_alive():
        worker.join(0.2)
    if "error" in box:
        raise box["error"]
    return box["value"]


def _check_resources(cfg: TrainConfig, mode: str) -> None:
    """Refuse (local Ray) or warn about (cluster: it may scale) a run the cluster cannot hold:
    Ray would wait for the missing CPUs/GPUs forever."""
    import ray
    have = ray.cluster_resources()
    for res, per in (("CPU", cfg.cpus_per_worker), ("GPU", cfg.gpus)):
        need, avail = per * cfg.workers, have.get(res, 0)
        if need <= avail + 1e-9:
            continue
        fits = max(1, int(avail // per)) if avail >= per else 0
        fix = (f"use --workers {fits}" if fits else
               "use --gpus 0" if res == "GPU" else "lower cpus_per_worker")
        msg = (f"workers={cfg.workers} × {per:g} {res} needs {need:g} {res} but the Ray "
               f"{'cluster' if mode == 'cluster' else 'instance'} has {avail:g}; {fix}")
        if mode == "local" or res == "GPU":
            raise ConfigError(msg)
        print(f"warning: {msg} (waiting for the cluster to scale)", file=sys.stderr)


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m ising_dist.train", description=__doc__.split(
        "\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--config", help="YAML preset, e.g. configs/train/demo.yaml (with --resume: "
                                    "default is the run directory's config.yaml)")
    p.add_argument("--resume", action="store_true", help="continue the run in --out from its "
                                                         "newest checkpoint")
    p.add_argument("--verbose", action="store_true", help="also Ray's own INFO logs")
    cfgmod.add_flags(p, TrainConfig, "settings (override the preset)")
    return p.parse_args(argv)


def resolve_config(args: argparse.Namespace) -> TrainConfig:
    overrides = cfgmod.given_flags(args, TrainConfig)
    if args.config:
        return cfgmod.load(TrainConfig, args.config, overrides)
    if args.resume and args.out:
        return cfgmod.load_saved(TrainConfig, args.out, overrides, "ising_dist.train")
    raise ConfigError("no --config given: pass a preset (e.g. --config configs/train/demo.yaml)"
                      " or --resume --out RUN_DIR")


def resume_command(run_dir: Path) -> str:
    return f"python -m ising_dist.train --out {run_dir} --resume"


def stopped_message(run_dir: Path, epochs: int, what: str) -> str:
    """What happened, the newest checkpoint of the run in ``run_dir`` (``epochs`` in all), and
    the command that continues it."""
    found = checkpoints(run_dir)
    if found:
        where = (f"last checkpoint: {found[-1]} (epoch {load_state(found[-1])['epoch']} of "
                 f"{epochs})\ncontinue with:\n  {resume_command(run_dir)}")
    else:
        where = (f"no checkpoint was written to {run_dir}; start the run again (remove that "
                 f"directory, or give another --out)")
    return f"error: {what}\n{where}{cluster_hint()}"


def cluster_hint() -> str:
    """Under RAY_ADDRESS, a line on which cluster a resumed run would use; else ""."""
    return (f"\n(RAY_ADDRESS={os.environ['RAY_ADDRESS']}: bring that cluster back up first, "
            f"or unset RAY_ADDRESS to continue on a local Ray)"
            if os.environ.get("RAY_ADDRESS") else "")


def main(argv=None) -> int:
    args = parse_args(argv)
    try:
        cfg = resolve_config(args)
    except (ConfigError, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    with deathwatch.guard("train", cfg.run_dir, cfg.epochs,
                          say=functools.partial(stopped_message, cfg.run_dir, cfg.epochs)):
        return _main(args, cfg)


def _main(args: argparse.Namespace, cfg: TrainConfig) -> int:
    """main, once the configuration is known; returns the exit code."""
    try:
        summary = run(cfg, resume=args.resume, verbose=args.verbose, stop_on_signals=True)
    except (ConfigError, ValueError, RunLockedError) as exc:  # DataError, StoreError: ValueErrors
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except Interrupted as exc:
        print(stopped_message(cfg.run_dir, cfg.epochs, str(exc)), file=sys.stderr, flush=True)
        return 1
    except Exception as exc:  # noqa: BLE001 — a failed Ray run: say so without a traceback wall
        from ray.exceptions import RayError
        from ray.train import TrainingFailedError
        first = (str(exc).strip().splitlines() or [""])[0]
        if isinstance(exc, TrainingFailedError):
            what = f"training failed after retries: {exc}"
        elif isinstance(exc, RayError):     # ActorDiedError, RaySystemError, …: Ray itself
            what = f"the Ray cluster failed during the run ({type(exc).__name__}: {first})"
        else:
            raise
        print(stopped_message(cfg.run_dir, cfg.epochs, what), file=sys.stderr, flush=True)
        return 1
    if summary["stopped"]:   # SIGTERM/SIGINT: the newest checkpoint is this epoch's
        print(f"stopped after epoch {summary['epoch']}/{cfg.epochs} with a checkpoint; "
              f"continue with:\n  {resume_command(cfg.run_dir)}", flush=True)
        return 0
    m = summary["metrics"]
    vals = ", ".join(f"{k} {v:.4g}" for k, v in m.items() if k.startswith("val_"))
    print(f"done: {summary['epoch']} epochs; {vals}\nmodel: {summary['model']}\n"
          f"run directory: {summary['run_dir']}", flush=True)
    return 0


if __name__ == "__main__":
    # run the imported module's main so Ray pickles train_loop by reference, not from __main__
    from ising_dist.train import main as _main
    sys.exit(_main())
