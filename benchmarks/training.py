"""Training benchmark: `python -m benchmarks.training [--data F.h5] [--epochs 6] [--quick]`.

Prints, measured in one run on one local Ray instance:
  1. training throughput (samples/s, training passes only, median over epochs after the
     first) of 1 and 2 DDP workers at the same global batch, for a small MLP VAE and a
     convolutional VAE; the 2-worker/1-worker ratio (ideal 2.0 with 2 free cores);
  2. wall time of a whole `train.run` (Ray Train start, epochs, checkpoints, teardown) —
     the fixed cost that dominates short runs;
  3. the time of one Tune trial (a 1×1 grid): Tune's time_total_s of the trial and the wall
     time of the whole search, against the same train.run without Tune.
Without --data, a PT file (L=16, 8 temperatures, 500 samples each) is made with the real
`python -m ising_dist.pt` first. Results also go to --json.
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
MODELS = {
    "vae-mlp [128,64]": {"family": "vae", "arch": "mlp", "latent_dim": 2, "hidden": [128, 64]},
    "vae-conv [64,32]": {"family": "vae", "arch": "conv", "latent_dim": 8,
                         "channels": [64, 32]},
}


def make_data(tmp: Path) -> Path:
    path = tmp / "pt.h5"
    cmd = [sys.executable, "-m", "ising_dist.pt", "--config", str(ROOT / "configs/pt/demo.yaml"),
           "--out", str(path), "--sweeps", "2000", "--thermalize", "500", "--no-progress"]
    subprocess.run(cmd, cwd=ROOT, check=True, capture_output=True)
    return path


def train_cfg(data, out, model, workers, epochs, batch):
    from ising_dist import config as cfgmod
    from ising_dist.train import TrainConfig
    return cfgmod.from_dict(TrainConfig, {
        "name": "bench", "data": str(data), "out": str(out), "model": model, "epochs": epochs,
        "batch_size": batch, "lr": 1.0e-3, "workers": workers, "progress": False,
        "max_failures": 0})


def throughput(run_dir) -> float:
    from ising_dist.train import read_metrics
    rows = read_metrics(run_dir)
    return statistics.median(r["samples_per_s"] for r in rows[1:] or rows)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--data", help="PT file (default: make one)")
    p.add_argument("--epochs", type=int, default=6)
    p.add_argument("--batch", type=int, default=256, help="global batch size")
    p.add_argument("--quick", action="store_true", help="2 epochs, MLP only")
    p.add_argument("--json", help="write the figures here")
    args = p.parse_args(argv)
    os.environ.setdefault("RAY_TRAIN_HEALTH_CHECK_INTERVAL_S", "0.5")
    from ising_dist import train, tune
    from ising_dist import config as cfgmod

    epochs = 2 if args.quick else args.epochs
    models = dict(list(MODELS.items())[:1]) if args.quick else MODELS
    results = {"cpus": os.cpu_count(), "epochs": epochs, "batch": args.batch, "models": {}}
    with tempfile.TemporaryDirectory(prefix="bench_train_") as tmp:
        tmp = Path(tmp)
        data = Path(args.data).absolute() if args.data else make_data(tmp)
        t0 = time.perf_counter()
        train.ensure_ray()
        results["ray_init_s"] = time.perf_counter() - t0
        print(f"data {data}; Ray started in {results['ray_init_s']:.1f} s; {epochs} epochs, "
              f"global batch {args.batch}, {os.cpu_count()} CPUs", flush=True)
        print(f"{'model':18} {'workers':>7} {'samples/s':>10} {'run wall s':>10}", flush=True)
        for name, model in models.items():
            row = {}
            for w in (1, 2):
                out = tmp / f"{name.split()[0]}-{w}"
                t0 = time.perf_counter()
                train.run(train_cfg(data, out, model, w, epochs, args.batch))
                wall = time.perf_counter() - t0
                row[w] = {"samples_per_s": throughput(out), "wall_s": wall}
                print(f"{name:18} {w:7d} {row[w]['samples_per_s']:10.0f} {wall:10.1f}",
                      flush=True)
            row["scaling_2_over_1"] = row[2]["samples_per_s"] / row[1]["samples_per_s"]
            print(f"{name:18} scaling 2 workers / 1 worker: {row['scaling_2_over_1']:.2f}x",
                  flush=True)
            results["models"][name] = row

        # one Tune trial: the first model, 1 worker, as a 1×1 grid, against the same plain
        # run measured right before it (the first runs above also pay Ray's warm-up)
        name, model = next(iter(models.items()))
        t0 = time.perf_counter()
        train.run(train_cfg(data, tmp / "plain", model, 1, epochs, args.batch))
        plain = time.perf_counter() - t0
        preset = tmp / "trial.yaml"
        preset.write_text(cfgmod.to_yaml(train_cfg(data, tmp / "unused", model, 1, epochs,
                                                   args.batch)))
        search = cfgmod.from_dict(tune.SearchConfig, {
            "name": "bench", "train": str(preset), "out": str(tmp / "tune"),
            "latent_dims": [model["latent_dim"]], "kl_weights": [1.0]})
        t0 = time.perf_counter()
        summary = tune.run(search)
        tune_wall = time.perf_counter() - t0
        with open(Path(summary["rows"][0]["trial_dir"]) / "result.json") as fh:
            last = [json.loads(line) for line in fh if line.strip()][-1]
        results["tune"] = {"search_wall_s": tune_wall, "trial_time_total_s":
                           last["time_total_s"], "plain_run_wall_s": plain}
        print(f"one Tune trial ({name}, 1 worker, {epochs} epochs): trial "
              f"{last['time_total_s']:.1f} s, whole search {tune_wall:.1f} s, vs the same train.run without Tune "
              f"{plain:.1f} s ({tune_wall / plain:.2f}x)", flush=True)
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
