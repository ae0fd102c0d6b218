"""Search latent size × KL weight with Ray Tune; every trial is a Ray Train run.

    python -m ising_dist.tune --config configs/tune/<name>.yaml [--data F.h5] [--out DIR]
                              [--resume]

Each trial is ``ising_dist.train.run`` (a TorchTrainer of ``workers_per_trial`` DDP workers)
started from a Tune function trainable, its metrics passed to Tune by TuneReportCallback.
A trial's driver holds 0.01 CPU, taken out of its workers' share, so one trial costs exactly
workers_per_trial × cpus_per_worker CPUs and ``max_concurrent_trials`` (default: as many as
the cluster's CPUs hold) never over-commits the cluster: trials never wait on each other.

Ranking. Trials are ranked on a score, lower is better, that must not reward the KL weight
itself (the total loss contains kl_weight·KL, so kl_weight=0 would trivially win it):
``rank_by`` names a function in :data:`SCORERS`, ``row -> float``, computed after the search
from each trial's table row (hyperparameters, final metrics, ``model`` path, ``data`` path).
"val_recon" is the final validation reconstruction; a physics fidelity score plugs in as one
more entry (see :func:`register_scorer`).

The output directory (default runs/tune/<name>) holds:
    search/             the Tune experiment (one folder per trial, each a train run directory
                        under train/); ``--resume`` continues a stopped search (Tuner.restore)
    results.csv, results.md   every trial: hyperparameters, final metrics, score, rank
    best/model.pt, best/config.yaml   the best trial's final model and its train config
The console shows one line a trial start, epoch and end (:class:`SearchProgress`).
A Ray cluster that dies under the search, or a driver that Ray ends without a word, ends
it with exit code 1 and one message: the trials finished and the ``--resume`` command
(ising_dist.deathwatch).
"""
from __future__ import annotations

import argparse
import csv
import functools
import logging
import math
import os
import shutil
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Optional

from ray.tune import Callback

from . import config as cfgmod
from . import deathwatch
from . import train as trainmod
from .config import ConfigError, option
from .runlock import RunLock, RunLockedError
from .train import TrainConfig, say

EXPERIMENT = "search"
ASHA_STOPPED = "asha_stopped.txt"   # trial ids that ASHA stopped early, one a line
TRIAL_DRIVER_CPU = 0.01
SEARCHES = ("grid", "random")
SCHEDULERS = ("fifo", "asha")

Scorer = Callable[[dict], float]


def score_val_recon(row: dict) -> float:
    """Final validation reconstruction loss (BCE summed over sites, per sample)."""
    return float(row["val_recon"])


def score_physics(row: dict) -> float:
    """Physics fidelity of the trial's final model on its file's validation split
    (:func:`ising_dist.judge.driver.score_trial`): the mean over temperatures of the
    Wasserstein-1 distances of e and |m| to MCMC, in units of the MCMC noise floor (≈1 is
    indistinguishable from MCMC). Answers "which latent size and KL weight generate the
    right physics" without rewarding the KL weight itself."""
    from .judge.driver import score_trial
    return score_trial(row)


SCORERS: dict[str, Scorer] = {"val_recon": score_val_recon, "physics": score_physics}


def register_scorer(name: str, fn: Scorer) -> None:
    """Make ``rank_by: name`` rank trials by fn(row) (lower is better). A row holds the
    trial's latent_dim, kl_weight, final train_/val_ metrics, ``model`` (path of its final
    model file) and ``data`` (path of the training file), e.g. for a physics score."""
    SCORERS[name] = fn


@dataclass
class SearchConfig:
    """A search over model.latent_dim × model.kl_weight of a train preset."""
    name: str = option("demo", "search name (the default output is runs/tune/<name>)")
    train: str = option("configs/train/demo.yaml",
                        "the train preset every trial starts from (configs/train/*.yaml)")
    data: Optional[str] = option(None, "HDF5 file of python -m ising_dist.pt (overrides the "
                                       "preset's)")
    out: Optional[str] = option(None, "output directory (default runs/tune/<name>)")
    latent_dims: list[int] = option([2, 8, 32, 100, 200], "latent sizes to try")
    kl_weights: list[float] = option([0.0, 0.1, 1.0, 10.0, 100.0], "KL weights to try")
    search: str = option("grid", "grid: every latent_dims × kl_weights pair, num_samples times "
                                 "each; random: num_samples trials drawing each value from "
                                 "the lists", choices=SEARCHES)
    num_samples: int = option(1, "trials per grid point (grid) or in all (random)")
    scheduler: str = option("fifo", "fifo: every trial runs all epochs; asha: stops poor trials "
                                    "early on rank_by's metric, after grace_period epochs",
                            choices=SCHEDULERS)
    grace_period: int = option(1, "asha: epochs before a trial may be stopped")
    reduction_factor: int = option(2, "asha: reduction factor (≥ 2)")
    epochs: Optional[int] = option(None, "epochs of every trial (default: the preset's)")
    workers_per_trial: int = option(1, "DDP workers of each trial's TorchTrainer")
    max_concurrent_trials: Optional[int] = option(
        None, "trials at once (default: as many as the cluster's CPUs hold)")
    rank_by: str = option("val_recon", "a name in SCORERS (lower is better): val_recon, "
                                       "physics, or one registered by register_scorer")
    seed: int = option(0, "seed of the random search")

    def validate(self) -> None:
        def need(cond, msg):
            if not cond:
                raise ConfigError(msg)
        need(bool(self.name) and "/" not in self.name,
             f"name={self.name!r}: give a plain search name (e.g. demo)")
        need(len(self.latent_dims) > 0 and all(d >= 1 for d in self.latent_dims),
             f"latent_dims={self.latent_dims}: give a non-empty list of sizes ≥ 1, e.g. [2, 8]")
        need(len(self.kl_weights) > 0 and all(w >= 0 for w in self.kl_weights),
             f"kl_weights={self.kl_weights}: give a non-empty list of weights ≥ 0, e.g. [0, 1]")
        for key in ("num_samples", "grace_period", "workers_per_trial"):
            need(getattr(self, key) >= 1, f"{key}={getattr(self, key)}: must be ≥ 1")
        need(self.reduction_factor >= 2, f"reduction_factor={self.reduction_factor}: must be ≥ 2")
        need(self.epochs is None or self.epochs >= 1, f"epochs={self.epochs}: must be ≥ 1")
        need(self.max_concurrent_trials is None or self.max_concurrent_trials >= 1,
             f"max_concurrent_trials={self.max_concurrent_trials}: must be ≥ 1 (or leave it "
             f"out to fit the cluster)")
        need(self.rank_by in SCORERS, f"rank_by={self.rank_by!r}: choose one of "
                                      f"{', '.join(sorted(SCORERS))}")

    @property
    def out_dir(self) -> Path:
        return Path(self.out or f"runs/tune/{self.name}").absolute()

    def base_train_config(self) -> TrainConfig:
        """The preset with this search's overrides; refused if it is not a VAE-like model."""
        overrides = {"data": self.data, "epochs": self.epochs, "workers": self.workers_per_trial,
                     "progress": False}
        base = cfgmod.load(TrainConfig, self.train, overrides)
        family = base.model.get("family", "vae")
        if family not in ("vae", "cvae"):
            raise ConfigError(f"train preset {self.train!r} has model.family={family!r}: the "
                              f"search varies latent_dim × kl_weight, which needs family vae or"
                              f" cvae; point train: at such a preset")
        base.data = os.path.abspath(base.data)
        return base


# ---------------------------------------------------------------------------------- trial
def trial(config: dict) -> None:
    """One Tune trial: a Ray Train run with this trial's latent_dim and kl_weight.

    A trial restarted by Tuner.restore continues its own newest checkpoint."""
    import ray.tune
    from ray.tune.integration.ray_train import TuneReportCallback

    base = dict(config["base"])
    base["model"] = {**base["model"], "latent_dim": int(config["latent_dim"]),
                     "kl_weight": float(config["kl_weight"])}
    # the trial's folder in the experiment's storage (get_trial_dir() is a local staging copy)
    trial_name = Path(ray.tune.get_context().get_trial_dir()).name
    base["out"] = str(Path(config["experiment_dir"]) / trial_name / "train")
    cfg = cfgmod.from_dict(TrainConfig, base, source="trial config")
    done = trainmod.checkpoints(cfg.run_dir)
    if done and trainmod.load_state(done[-1])["epoch"] >= cfg.epochs:
        # finished before the search stopped, but Tune had not recorded it: report it again
        state = trainmod.load_state(done[-1])
        ray.tune.report({**state["metrics"], "checkpoint_path": str(done[-1])})
        return
    trainmod.run(cfg, resume=bool(done), callbacks=[TuneReportCallback()], start_ray=False,
                 lock=False)  # the search's lock covers its trials' directories


# ---------------------------------------------------------------------------------- driver
PROGRESS_TERMS = ("val_recon", "val_kl", "val_total")


class SearchProgress(Callback):
    """Prints one line when a trial starts, after each of its epochs (its val_recon, val_kl,
    val_total), and when it ends, with the count of trials done, in place of Tune's own
    reporter (a table of every trial's whole configuration at its start, and status tables
    every 30 s). Pickled with the search (by reference), so a resumed search prints the same.

    expected: the search's number of trials; asha_record: the file of the trials that ASHA
    stopped early (RecordingASHA)."""

    def __init__(self, expected: int, asha_record: Path):
        self.expected, self.asha_record = expected, Path(asha_record)

    def _what(self, trial) -> str:
        c = trial.config
        return f"{trial} (latent_dim {c['latent_dim']}, kl_weight {c['kl_weight']:g})"

    def _ended(self, trial) -> Optional[str]:
        """How a trial ended: "finished", "stopped early by ASHA", or None (not ended: a
        stopped search reports its running trials as terminated too)."""
        epoch = (trial.last_result or {}).get("epoch", 0)
        if epoch >= trial.config["base"]["epochs"]:
            return "finished"
        stopped = self.asha_record.read_text().split() if self.asha_record.is_file() else []
        return "stopped early by ASHA" if trial.trial_id in stopped else None

    def _done(self, trials, trial) -> str:
        """"[k/N trials done]", ``trial`` (ending now, its status not yet set) included."""
        ended = {t.trial_id for t in trials if t.status == "ERROR" or (
            t.status == "TERMINATED" and self._ended(t) is not None)} | {trial.trial_id}
        return f"[{len(ended)}/{self.expected} trials done]"

    def on_trial_start(self, iteration, trials, trial, **info):
        say(f"{self._what(trial)} started")

    def on_trial_result(self, iteration, trials, trial, result, **info):
        terms = "  ".join(f"{k} {result[k]:.4g}" for k in PROGRESS_TERMS if k in result)
        say(f"{self._what(trial)} epoch {result.get('epoch', '?')}/"
            f"{trial.config['base']['epochs']}  {terms}")

    def on_trial_complete(self, iteration, trials, trial, **info):
        how = self._ended(trial)
        if how:
            say(f"{self._what(trial)} {how} {self._done(trials, trial)}")

    def on_trial_error(self, iteration, trials, trial, **info):
        say(f"{self._what(trial)} failed; its error: {trial.error_file} "
            f"{self._done(trials, trial)}")


class _DropTunesResumeHint(logging.Filter):
    """Tune's "Resume experiment with: Tuner.restore(...)" after a stop: the search prints
    its own resume command (``python -m ising_dist.tune --out DIR --resume``)."""

    def filter(self, record: logging.LogRecord) -> bool:
        return "Tuner.restore" not in record.getMessage()


DROP_TUNES_RESUME_HINT = _DropTunesResumeHint()


def fit_concurrency(cfg: SearchConfig, base: TrainConfig, cluster_cpus: float) -> int:
    """Trials that fit the cluster at once (each costs workers × cpus_per_worker CPUs)."""
    per_trial = base.workers * base.cpus_per_worker
    fitted = int(math.floor(cluster_cpus / per_trial + 1e-9))
    if fitted < 1:
        raise ConfigError(f"one trial needs {per_trial:g} CPUs (workers_per_trial="
                          f"{base.workers} × cpus_per_worker={base.cpus_per_worker:g}) but the "
                          f"Ray cluster has {cluster_cpus:g}; lower workers_per_trial")
    if cfg.max_concurrent_trials is None:
        return fitted
    if cfg.max_concurrent_trials > fitted:
        raise ConfigError(f"max_concurrent_trials={cfg.max_concurrent_trials} × {per_trial:g} "
                          f"CPUs per trial exceeds the cluster's {cluster_cpus:g} CPUs, so "
                          f"trials would wait on each other for workers; use at most {fitted} "
                          f"(or leave it out)")
    return cfg.max_concurrent_trials


def param_space(cfg: SearchConfig, base: TrainConfig) -> dict:
    from ray import tune
    # the driver's 0.01 CPU comes out of the workers' share (see module doc)
    trial_base = {**cfgmod.to_dict(base),
                  "cpus_per_worker": base.cpus_per_worker - TRIAL_DRIVER_CPU / base.workers,
                  "threads": base.threads_per_worker}
    if cfg.search == "grid":
        space = {"latent_dim": tune.grid_search(list(cfg.latent_dims)),
                 "kl_weight": tune.grid_search(list(cfg.kl_weights))}
    else:
        space = {"latent_dim": tune.choice(list(cfg.latent_dims)),
                 "kl_weight": tune.choice(list(cfg.kl_weights))}
    return {"base": trial_base, "experiment_dir": str(cfg.out_dir / EXPERIMENT), **space}


def _recording_asha():
    from ray.tune.schedulers import ASHAScheduler, TrialScheduler

    class RecordingASHA(ASHAScheduler):
        """ASHA that writes the trials it stops early to a file: after a Ctrl-C, Tune reports
        every trial as terminated, so "stopped by ASHA" must be known from elsewhere."""

        def __init__(self, record: Path, **kw):
            super().__init__(**kw)
            self.record = str(record)

        def on_trial_result(self, tune_controller, trial, result):
            decision = super().on_trial_result(tune_controller, trial, result)
            if decision == TrialScheduler.STOP:
                with open(self.record, "a") as fh:
                    fh.write(trial.trial_id + "\n")
            return decision
    return RecordingASHA


def expected_trials(cfg: SearchConfig) -> int:
    if cfg.search == "grid":
        return len(cfg.latent_dims) * len(cfg.kl_weights) * cfg.num_samples
    return cfg.num_samples


def _tuner(cfg: SearchConfig, base: TrainConfig, concurrency: int, resume: bool):
    from ray import tune
    from ray.tune.schedulers import FIFOScheduler
    from ray.tune.search.basic_variant import BasicVariantGenerator

    RecordingASHA = _recording_asha()

    trainable = tune.with_resources(trial, {"cpu": TRIAL_DRIVER_CPU})
    path = cfg.out_dir / EXPERIMENT
    if resume:
        return tune.Tuner.restore(str(path), trainable=trainable, resume_unfinished=True,
                                  resume_errored=True)
    scheduler = FIFOScheduler() if cfg.scheduler == "fifo" else RecordingASHA(
        cfg.out_dir / ASHA_STOPPED, time_attr="epoch", max_t=base.epochs,
        grace_period=cfg.grace_period, reduction_factor=cfg.reduction_factor)
    return tune.Tuner(
        trainable, param_space=param_space(cfg, base),
        tune_config=tune.TuneConfig(metric="val_recon", mode="min", scheduler=scheduler,
                                    num_samples=cfg.num_samples,
                                    # Tune ignores max_concurrent_trials when given a
                                    # search_alg: the generator itself must limit it
                                    search_alg=BasicVariantGenerator(max_concurrent=concurrency,
                                                                     random_state=cfg.seed)),
        run_config=tune.RunConfig(name=EXPERIMENT, storage_path=str(cfg.out_dir), verbose=0,
                                  callbacks=[SearchProgress(expected_trials(cfg),
                                                            cfg.out_dir / ASHA_STOPPED)]))


def trial_rows(out_dir: Path) -> list[dict]:
    """One row per trial that started, read from the trial run directories (the source of
    truth, identical whether the search finished, stopped or was resumed)."""
    rows = []
    for cfg_path in sorted((out_dir / EXPERIMENT).glob("*/train/config.yaml")):
        run_dir = cfg_path.parent
        tcfg = cfgmod.load(TrainConfig, cfg_path)
        metrics = trainmod.read_metrics(run_dir)
        ckpts = trainmod.checkpoints(run_dir)
        last = metrics[-1] if metrics else {}
        epochs = int(last.get("epoch", 0))
        model = run_dir / "model.pt" if (run_dir / "model.pt").is_file() else (
            ckpts[-1] / "model.pt" if ckpts else None)
        rows.append({
            "trial": "_".join(run_dir.parent.name.split("_")[:3]),  # trial_<exp>_<index>
            "trial_dir": str(run_dir.parent),
            "trial_id": "_".join(run_dir.parent.name.split("_")[1:3]),
            "latent_dim": int(tcfg.model["latent_dim"]),
            "kl_weight": float(tcfg.model["kl_weight"]), "epochs": epochs,
            "status": ("complete" if epochs >= tcfg.epochs else
                       "stopped" if epochs > 0 else "no epoch"),
            **{k: v for k, v in last.items() if k.startswith(("train_", "val_"))},
            "model": str(model) if model else "", "data": tcfg.data,
            "config": str(cfg_path)})
    return rows


def rank(rows: list[dict], rank_by: str) -> list[dict]:
    """Rows with ``score`` and ``rank`` (1 = best) added, best first; rows without a score
    (no finished epoch, or a scorer that failed) come last with rank blank."""
    scorer = SCORERS[rank_by]
    for r in rows:
        try:
            r["score"] = float(scorer(r)) if r["epochs"] > 0 else math.nan
        except (KeyError, ValueError) as exc:
            r["score"], r["status"] = math.nan, f"{r['status']}; score failed: {exc}"
    scored = sorted((r for r in rows if math.isfinite(r["score"])), key=lambda r: r["score"])
    for i, r in enumerate(scored, 1):
        r["rank"] = i
    rest = [r for r in rows if not math.isfinite(r["score"])]
    for r in rest:
        r["rank"] = ""
    return scored + rest


TABLE = ("rank", "trial", "latent_dim", "kl_weight", "score", "epochs", "status", "val_recon",
         "val_kl", "val_total", "train_recon", "train_kl", "train_total")


def write_tables(out_dir: Path, rows: list[dict], rank_by: str) -> None:
    cols = list(TABLE) + sorted({k for r in rows for k in r} - set(TABLE))
    with open(out_dir / "results.csv", "w", newline="") as fh:
        w = csv.DictWriter(fh, fieldnames=cols, extrasaction="ignore")
        w.writeheader()
        for r in rows:
            w.writerow({k: (f"{v:.6g}" if isinstance(v, float) else v) for k, v in r.items()})

    def cell(v):
        return f"{v:.4g}" if isinstance(v, float) else str(v)
    shown = [c for c in TABLE if any(c in r for r in rows)]
    lines = [f"# Search {out_dir.name}: latent_dim × kl_weight, ranked by {rank_by} "
             f"(lower is better)", "",
             "| " + " | ".join(shown) + " |", "|" + "---|" * len(shown)]
    lines += ["| " + " | ".join(cell(r.get(c, "")) for c in shown) + " |" for r in rows]
    (out_dir / "results.md").write_text("\n".join(lines) + "\n")


def keep_best(out_dir: Path, rows: list[dict]) -> Optional[dict]:
    best = next((r for r in rows if r["rank"] == 1 and r["model"]), None)
    if best is None:
        return None
    dest = out_dir / "best"
    dest.mkdir(exist_ok=True)
    shutil.copyfile(best["model"], dest / "model.pt")
    shutil.copyfile(best["config"], dest / "config.yaml")
    return best


def run(cfg: SearchConfig, resume: bool = False) -> dict:
    """Run (or resume) the search; returns {"rows", "best", "unfinished", "out"}.
    The output directory is locked for the whole search (ising_dist.runlock): RunLockedError,
    naming the live search, when another process searches into it."""
    with RunLock.acquire(cfg.out_dir, role="tune"):
        return _run_locked(cfg, resume)


def _run_locked(cfg: SearchConfig, resume: bool) -> dict:
    """:func:`run`, holding the output directory's lock."""
    out_dir = cfg.out_dir
    exp = out_dir / EXPERIMENT
    base = cfg.base_train_config()
    # check data and model before any trial starts (errors name the bad value)
    trainmod.resolve(base)
    if resume and not exp.is_dir():
        raise ConfigError(f"--resume: {exp} does not exist; drop --resume to start the search")
    if not resume and exp.exists():
        raise ConfigError(f"--out {out_dir} already holds a search; pass --resume to continue "
                          f"it or choose another --out")
    mode = trainmod.ensure_ray()
    import ray
    concurrency = fit_concurrency(cfg, base, ray.cluster_resources().get("CPU", 0))
    out_dir.mkdir(parents=True, exist_ok=True)
    if not resume:
        (out_dir / "config.yaml").write_text(cfgmod.to_yaml(cfg))
    tuner = _tuner(cfg, base, concurrency, resume)
    total = expected_trials(cfg)
    if resume:
        say(f"resuming search {out_dir}: {len(list(exp.glob('*/train/model.pt')))} of {total} "
            f"trial(s) finished")
    else:
        say(f"search {out_dir}: {total} trial(s) ({cfg.search} over latent_dims "
            f"{list(cfg.latent_dims)} × kl_weights {list(cfg.kl_weights)}), {concurrency} at "
            f"once, {base.workers} worker(s) and {base.epochs} epoch(s) each; ranked by "
            f"{cfg.rank_by}")
    logging.getLogger("ray.tune.tune").addFilter(DROP_TUNES_RESUME_HINT)   # once
    # Tune's older reporter, which at verbose=0 prints nothing (the newer one still prints an
    # experiment box and a TensorBoard command): SearchProgress speaks instead
    os.environ.setdefault("RAY_AIR_NEW_OUTPUT", "0")
    grid = tuner.fit()
    rows = rank(trial_rows(out_dir), cfg.rank_by)
    # Done = complete, stopped by ASHA, or errored. Tune's own statuses cannot tell: after a
    # Ctrl-C it reports every trial as terminated, so count from the trial directories.
    asha = out_dir / ASHA_STOPPED
    stopped = set(asha.read_text().split()) if asha.is_file() else set()
    complete = sum(r["status"] == "complete" for r in rows)
    early = sum(r["status"] != "complete" and r["trial_id"] in stopped for r in rows)
    unfinished = max(0, expected_trials(cfg) - complete - early - grid.num_errors)
    write_tables(out_dir, rows, cfg.rank_by)
    if cfg.rank_by == "physics" and rows:
        from .judge.report import tune_heatmap
        tune_heatmap(out_dir / "results.csv", out_dir / "fidelity_heatmap.png", metric="score")
    best = keep_best(out_dir, rows) if unfinished == 0 else None
    return {"rows": rows, "best": best, "unfinished": unfinished, "errors": grid.num_errors,
            "out": str(out_dir), "ray": mode}


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m ising_dist.tune", description=__doc__.split(
        "\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--config", help="YAML preset, e.g. configs/tune/demo.yaml (with --resume: "
                                    "default is the output directory's config.yaml)")
    p.add_argument("--resume", action="store_true", help="continue a stopped search in --out")
    cfgmod.add_flags(p, SearchConfig, "settings (override the preset)")
    return p.parse_args(argv)


def locate_preset(train: str, tune_config) -> str:
    """The train preset path as given if it exists from here, else relative to a folder above
    the tune config (so configs/train/x.yaml works from any working directory)."""
    if Path(train).is_absolute() or Path(train).exists():
        return str(Path(train).absolute())
    for parent in Path(tune_config).absolute().parents:
        if (parent / train).is_file():
            return str(parent / train)
    return train


def resolve_config(args) -> SearchConfig:
    overrides = cfgmod.given_flags(args, SearchConfig)
    if args.config:
        cfg = cfgmod.load(SearchConfig, args.config, overrides)
        cfg.train = locate_preset(cfg.train, args.config)
        return cfg
    if args.resume and args.out:
        return cfgmod.load_saved(SearchConfig, args.out, overrides, "ising_dist.tune")
    raise ConfigError("no --config given: pass a preset (e.g. --config configs/tune/demo.yaml) "
                      "or --resume --out SEARCH_DIR")


def resume_command(out_dir: Path) -> str:
    return f"python -m ising_dist.tune --out {out_dir} --resume"


def stopped_message(out_dir: Path, what: str) -> str:
    """What happened, the trials finished so far in ``out_dir``, and the command that
    continues the search."""
    runs = out_dir / EXPERIMENT
    started = len(list(runs.glob("*/train/config.yaml")))
    finished = len(list(runs.glob("*/train/model.pt")))
    return (f"error: {what}\n{finished} trial(s) finished, {started - finished} started and "
            f"unfinished; continue with:\n  {resume_command(out_dir)}{trainmod.cluster_hint()}")


def main(argv=None) -> int:
    args = parse_args(argv)
    try:
        cfg = resolve_config(args)
    except (ConfigError, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    with deathwatch.guard("tune", cfg.out_dir, say=functools.partial(stopped_message,
                                                                     cfg.out_dir)):
        return _main(args, cfg)


def _main(args: argparse.Namespace, cfg: SearchConfig) -> int:
    """main, once the configuration is known; returns the exit code."""
    try:
        summary = run(cfg, resume=args.resume)
    except (ConfigError, ValueError, RunLockedError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except Exception as exc:  # noqa: BLE001 — the cluster failed: say so without a traceback
        from ray.exceptions import RayError
        if not isinstance(exc, RayError):
            raise
        first = (str(exc).strip().splitlines() or [""])[0]
        print(stopped_message(cfg.out_dir, f"the Ray cluster failed during the search "
                                           f"({type(exc).__name__}: {first})"),
              file=sys.stderr, flush=True)
        return 1
    out = Path(summary["out"])
    print((out / "results.md").read_text())
    if summary["unfinished"]:
        print(f"search stopped with {summary['unfinished']} trial(s) unfinished; continue with:"
              f"\n  {resume_command(out)}", flush=True)
        return 1
    if summary["best"] is None:
        print(f"error: no trial finished an epoch ({summary['errors']} errored); see the trial "
              f"logs under {out / EXPERIMENT}", file=sys.stderr)
        return 1
    b = summary["best"]
    print(f"best: latent_dim={b['latent_dim']} kl_weight={b['kl_weight']:g} "
          f"({cfg.rank_by} {b['score']:.4g})\nmodel: {out / 'best' / 'model.pt'}\n"
          f"tables: {out / 'results.csv'}, {out / 'results.md'}", flush=True)
    return 0


if __name__ == "__main__":
    from ising_dist.tune import main as _main  # Ray pickles `trial` by reference
    sys.exit(_main())
