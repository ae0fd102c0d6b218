"""Training benchmark: `python -m benchmarks.training --data F.h5 [--epochs 4] [--repeats 2]`.

Prints, measured in one run on one local Ray instance, all at global batch --batch (128):
  1. the data path alone, samples/s delivered as (x, T) batch tensors with no model, 1 thread:
     torch's DataLoader over the per-item Dataset (the baseline), ising_dist.data.batches in
     memory and streaming slabs (forced by a small memory budget), and Ray Data
     (iter_torch_batches over the same spins, materialized in the object store);
  2. each model's bare-torch compute rate: ising_dist.models.train_epoch over batches already
     in memory, 1 thread, no Ray, first with glibc malloc's defaults, then keeping freed
     memory mapped as the workers do (ising_dist.train.keep_freed_memory): the ceiling of one
     worker (with --compile also the rate of torch.compile(model) and its compile time);
  3. each model's train rate through ising_dist.train at 1 and 2 workers, and at 2 workers
     with gloo's all-reduce instead of shared memory (shm_allreduce: false): runs interleaved
     (bare, 1, 2, 2 gloo, bare, …), each run's median epoch after the first, best of --repeats
     (bare: best of all its measurements); the ratios 1 worker / bare and 2 / 1 workers; the
     2 / 1 ratio the workers' CPU seconds an epoch imply with a free core each (2 × CPU of 1
     worker / CPU of both: robust to other load, blind to time a rank waits); and the CPU
     that Ray's own processes (GCS, raylet, dashboard, agents, Train controller and helper
     actors, this driver) used while the workers trained (epochs 2…N), in cores;
     For vae-conv and the PixelCNN also the machine's ceiling of 2 / 1 workers: two bare
     processes at half the batch at once over one at the whole batch (no DDP, no Ray),
     independent and in lock-step (a barrier before every step, as DDP ranks step: what
     data parallelism costs on this host with a free all-reduce), and the free cores: the
     same ratio for a loop that touches no memory (2.00 on two free cores; a busy host or
     shared vCPUs give less). Then 2w/1w round by round (a round's 1- and 2-worker runs are
     back to back; their spread is the best-of ratio's error bar) and every run in turn:
     samples/s, the workers' CPU seconds an epoch, and the cores the host stole from this
     guest meanwhile (/proc/stat's steal): the same work costing more CPU with no steal is
     the host's vCPUs running slower;
  4. with --tune, one Tune trial of the first model against the same run without Tune.
Targets (issue 17): 1 worker ≥ 0.8 × bare for every model; 2 workers ≥ 1.6 × 1 worker for
vae-conv and the PixelCNN (2 free cores). Other load on the machine lowers both: the load
average is printed. Without --data a small PT file is made first (L=16, 8 temperatures, 500
samples each); issue 17's figures use 5000 each (see configs/pt and `python -m ising_dist.pt`).
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
# name → model config: vae-mlp hidden [128, 64], vae-conv channels [64, 32], the WGAN-GP of
# configs/train/wgan-gp.yaml, the PixelCNN at its default size (T-conditional)
MODELS = {
    "vae-mlp": {"family": "vae", "arch": "mlp", "latent_dim": 2, "hidden": [128, 64]},
    "vae-conv": {"family": "vae", "arch": "conv", "latent_dim": 8, "channels": [64, 32]},
    "wgan-gp": {"family": "wgan-gp", "arch": "conv", "channels": [64, 32], "noise_dim": 16,
                "n_critic": 1, "gp_weight": 10.0},
}
OPTIONAL = {  # models of families that may not exist in this checkout yet
    "pixelcnn": {"family": "autoregressive", "body": "pixelcnn", "t_conditional": True},
}
SCALING_TARGETS = ("vae-conv", "pixelcnn")


def available_models() -> dict:
    from ising_dist.models.config import FAMILIES
    extra = {k: v for k, v in OPTIONAL.items() if v["family"] in FAMILIES}
    return {**MODELS, **extra}


def make_data(tmp: Path) -> Path:
    path = tmp / "pt.h5"
    cmd = [sys.executable, "-m", "ising_dist.pt", "--config", str(ROOT / "configs/pt/demo.yaml"),
           "--out", str(path), "--sweeps", "2000", "--thermalize", "500", "--no-progress"]
    subprocess.run(cmd, cwd=ROOT, check=True, capture_output=True)
    return path


def best_rate(fn, n_items: int, trials: int = 3) -> float:
    """Items per second of fn() (which handles n_items), best of trials."""
    best = 0.0
    for _ in range(trials):
        t0 = time.perf_counter()
        fn()
        best = max(best, n_items / (time.perf_counter() - t0))
    return best


# ---------------------------------------------------------------------------------- 1. data
def data_rates(train_set, batch: int) -> dict:
    """Samples/s of each data path over one epoch of the train split, 1 thread."""
    import torch
    from torch.utils.data import DataLoader
    from torch.utils.data.distributed import DistributedSampler

    from ising_dist.data import batches

    def drain(loader):
        def run():
            for x, T in loader:
                pass
        return run

    n = len(train_set)
    out = {}
    old = DataLoader(train_set, batch_size=batch, sampler=DistributedSampler(
        train_set, num_replicas=1, rank=0, shuffle=True, seed=0))
    out["DataLoader, per-item Dataset (before)"] = best_rate(drain(old), n, trials=1)
    t0 = time.perf_counter()
    mem = batches(train_set, batch)
    out["_load_s"] = time.perf_counter() - t0
    out["batches, in memory"] = best_rate(drain(mem), n)
    # a budget of 1/8 of the split: streams blocks of one chunk through a cache
    stream = batches(train_set, batch, memory_mb=n * train_set.item_bytes / 8 / 2**20)
    assert not stream.in_memory
    out["batches, streaming slabs"] = best_rate(drain(stream), n)

    import logging

    import ray.data
    logging.getLogger("ray.data").setLevel(logging.ERROR)
    ray.data.DataContext.get_current().enable_progress_bars = False
    x, T, per_row = mem.source.x.numpy(), train_set.T, train_set.n
    rds = ray.data.range(n).map_batches(
        lambda b: {"x": x[b["id"]], "T": T[b["id"] // per_row]}).materialize()

    def ray_epoch():
        for b in rds.iter_torch_batches(batch_size=batch, local_shuffle_buffer_size=4 * batch,
                                        dtypes=torch.float32):
            pass
    out["Ray Data, iter_torch_batches (materialized)"] = best_rate(ray_epoch, n, trials=2)
    del rds
    return out


# ---------------------------------------------------------------------------------- 2. bare
def bare_rate(train_set, model_cfg: dict, L: int, batch: int, lr: float,
              compile_model: bool = False) -> dict:
    """train_epoch over in-memory batches, 1 thread: samples/s (best of 3 passes over at least
    ~2 s of batches) and, compiled, the compile time of the first pass."""
    import torch

    from ising_dist.data import batches
    from ising_dist.models import ModelConfig, build_model, train_epoch

    torch.manual_seed(0)
    model = build_model(ModelConfig.from_dict({**model_cfg, "L": L}))
    opts = model.configure_optimizers(lr)
    data = list(batches(train_set, batch))
    out = {}
    if compile_model:
        from ising_dist.train import compile_model as compile_in_place
        compile_in_place(model)
        t0 = time.perf_counter()
        train_epoch(model, data[:2], opts, "cpu")
        out["compile_s"] = time.perf_counter() - t0
    train_epoch(model, data[:3], opts, "cpu")              # warm-up
    t0 = time.perf_counter()
    train_epoch(model, data[:10], opts, "cpu")
    per_batch = (time.perf_counter() - t0) / 10
    k = max(10, min(len(data), int(2.0 / per_batch)))
    out["samples_per_s"] = best_rate(lambda: train_epoch(model, data[:k], opts, "cpu"),
                                     sum(len(x) for x, _ in data[:k]))
    return out


def _timed_bare(data: str, model_cfg: dict, batch: int, lr: float, seconds: float, peer,
                start, rates) -> None:
    """In a process of its own: train_epoch over the in-memory train split at ``batch``, 1
    thread, freed memory kept as the workers keep it; after a warm-up, waits at ``start`` (a
    Barrier) and puts the samples/s of the next ``seconds`` on ``rates``. With ``peer`` (one
    end of a multiprocessing Pipe whose other end a second such process holds) the two step
    in lock-step as DDP ranks do: neither begins a step before both ended the last one, and
    both stop after the same step."""
    import torch

    from ising_dist.data import batches, make_datasets
    from ising_dist.models import ModelConfig, build_model, train_epoch
    from ising_dist.train import keep_freed_memory
    torch.set_num_threads(1)
    keep_freed_memory()
    sets, fp = make_datasets(data)
    torch.manual_seed(0)
    model = build_model(ModelConfig.from_dict({**model_cfg, "L": fp["L"]}))
    opts = model.configure_optimizers(lr)
    chunks = list(batches(sets["train"], batch))
    chunks = [chunks[i:i + 5] for i in range(0, len(chunks), 5)]   # 5 batches a clock read

    def lockstep(chunk):   # a barrier before every batch but the first (see the stop below)
        for j, b in enumerate(chunk):
            if j:
                peer.send_bytes(b"")
                peer.recv_bytes()
            yield b

    train_epoch(model, chunks[0], opts, "cpu")                    # warm-up
    start.wait()
    n, t0, i, done = 0, time.perf_counter(), 0, False
    while not done:
        chunk = chunks[i % len(chunks)]
        train_epoch(model, chunk if peer is None else lockstep(chunk), opts, "cpu")
        n += sum(len(x) for x, _ in chunk)
        i += 1
        done = time.perf_counter() - t0 >= seconds
        if peer is not None:   # stop together, when either one's time is up (a barrier too)
            peer.send_bytes(b"1" if done else b"0")
            done = done or peer.recv_bytes() == b"1"
    rates.put(n / (time.perf_counter() - t0))


CEILING_S = 5.0   # s each process of strong_scaling_ceiling is timed
CORES_S = 2.0     # s each process of core_ratio is timed


def _together(target, args: list[tuple]) -> float:
    """Run ``target(*args[i], start, rates)`` in one spawned process for each ``args[i]``;
    the processes start their timed part together (``start``: a Barrier) and each put one
    rate on ``rates``; returns the sum of their rates."""
    import multiprocessing as mp
    ctx = mp.get_context("spawn")
    start, rates = ctx.Barrier(len(args)), ctx.Queue()
    ps = [ctx.Process(target=target, args=(*a, start, rates)) for a in args]
    for pr in ps:
        pr.start()
    got = [rates.get(timeout=600) for _ in ps]
    for pr in ps:
        pr.join()
    return sum(got)


def strong_scaling_ceiling(data: Path, model_cfg: dict, batch: int, lr: float,
                           seconds: float = CEILING_S) -> tuple[float, float, float]:
    """What 2 workers could reach on this machine without DDP or Ray: (samples/s of one bare
    process at ``batch``; summed samples/s of two bare processes at ``batch // 2`` running at
    once, started together after their warm-up; the same two in lock-step, a barrier before
    every step). The second over the first bounds 2 workers / 1 worker at a fixed global
    batch: it holds the smaller batch's lower efficiency and the two processes' contention for
    caches, memory and the machine's other load. The third adds what data parallelism cannot
    avoid: each step waits for the slower rank, so the ranks' step-time jitter (a busy host's
    vCPUs change speed from millisecond to millisecond) costs throughput; it is the ceiling
    of DDP itself, with a free all-reduce."""
    import multiprocessing as mp
    a, b = mp.get_context("spawn").Pipe()
    half = (str(data), model_cfg, batch // 2, lr, seconds)
    return (_together(_timed_bare, [(str(data), model_cfg, batch, lr, seconds, None)]),
            _together(_timed_bare, [(*half, None), (*half, None)]),
            _together(_timed_bare, [(*half, a), (*half, b)]))


def _spin(seconds: float, start, rates) -> None:
    """In a process of its own: a pure-Python integer loop (its data stays in the L1 cache)
    for ``seconds`` after ``start``; puts its iterations/s on ``rates``."""
    start.wait()
    n, t0 = 0, time.perf_counter()
    while time.perf_counter() - t0 < seconds:
        x = 0
        for i in range(20_000):
            x += i ^ n
        n += 20_000
    rates.put(n / (time.perf_counter() - t0))


def core_rates(seconds: float = CORES_S) -> tuple[float, float]:
    """(iterations/s of one process of the loop of :func:`_spin`, summed iterations/s of two
    at once). The ratio of the best of each over several calls is how many free cores the
    machine gives two processes: 2.0 on two free cores; less where they are shared (other
    load; a virtual machine's vCPUs on a busy host, or on the two hardware threads of one
    core)."""
    return _together(_spin, [(seconds,)]), _together(_spin, [(seconds,), (seconds,)])


# ---------------------------------------------------------------------------------- 3. Ray
def steal_s() -> float:
    """CPU seconds the hypervisor has taken from this guest's vCPUs since boot, all of them
    together (the 'steal' column of /proc/stat, proc(5)); NaN where there is no /proc/stat."""
    try:
        with open("/proc/stat") as f:
            return int(f.readline().split()[8]) / os.sysconf("SC_CLK_TCK")
    except (OSError, IndexError, ValueError):
        return float("nan")


class RayCPU:
    """CPU used by this process's descendants (the local Ray instance) while the workers
    train: between the first and the last row of ``run_dir``/metrics.csv (epochs 2…N with
    their validation and checkpoints), by process name and split into Ray Train workers and
    the rest (GCS, raylet, dashboard, agents, the Train controller and helper actors, idle
    workers, and this driver); and the host's steal from the whole guest (:func:`steal_s`).

    The processes' CPU times are read (psutil, ~10 ms of this driver's CPU for ~25
    processes) when metrics.csv gains a row, which is looked for every PERIOD: once an
    epoch, so that the measurement takes little CPU from the workers it measures (this
    driver while 2 conv-VAE workers train: 0.013 cores read every 0.5 s, 0.008–0.010 so).
    A process that exits between two rows keeps the CPU it had at the earlier one."""

    PERIOD = 0.05   # s between looks at metrics.csv (a few KiB, written atomically)

    def __init__(self, run_dir: Path):
        from ray._private import utils  # noqa: F401  (puts Ray's bundled psutil on sys.path)
        import psutil
        self.psutil, self.metrics = psutil, Path(run_dir) / "metrics.csv"
        self.me = psutil.Process()
        self.first, self.last, self.kind, self.name = {}, {}, {}, {}
        self.marks: dict[int, tuple] = {}       # metrics rows → (time, totals, per process)
        self.stop_event = threading.Event()

    def _rows(self) -> int:
        try:
            return self.metrics.read_text().count("\n") - 1
        except FileNotFoundError:
            return 0

    def _poll(self, rows: int) -> None:
        for p in [self.me] + self.me.children(recursive=True):
            try:
                with p.oneshot():
                    t = p.cpu_times()
                    # a worker renames itself from ray::IDLE to ray::<actor class> once it
                    # holds an actor: read until then
                    if self.name.get(p.pid, "ray::IDLE") == "ray::IDLE" \
                            or not self.name[p.pid].startswith("ray::"):
                        self._name(p, p.cmdline() or [p.name()])
            except (self.psutil.NoSuchProcess, self.psutil.AccessDenied):
                continue
            self.first.setdefault(p.pid, t.user + t.system)
            self.last[p.pid] = t.user + t.system
        if rows >= 1:
            self.marks[rows] = (time.perf_counter(), self._totals(), dict(self.last))

    def _name(self, p, cmd: list[str]) -> None:
        name = cmd[0]
        if "python" in name:   # a Ray daemon script: name it by its file
            name = next((Path(a).name for a in cmd[1:] if a.endswith(".py")), name)
        self.name[p.pid] = Path(name).name
        self.kind[p.pid] = "workers" if "RayTrainWorker" in name else "ray"

    def _totals(self) -> dict[str, float]:
        out = {"workers": 0.0, "ray": 0.0, "steal": steal_s()}
        for pid, used in self.last.items():
            out[self.kind[pid]] += used - (self.first[pid] if pid in self.born_before else 0.0)
        return out

    def _loop(self):
        seen = 0
        while not self.stop_event.wait(self.PERIOD):
            rows = self._rows()
            if rows != seen:
                seen = rows
                self._poll(rows)

    def __enter__(self):
        self.born_before = set()
        self._poll(0)
        self.born_before = set(self.last)  # alive now: count from now; newer ones from 0
        self.first = dict(self.last)
        self.thread = threading.Thread(target=self._loop, daemon=True)
        self.thread.start()
        return self

    def __exit__(self, *exc):
        self.stop_event.set()
        self.thread.join()
        self.epochs, self.epochs_by_name, self.cpu_per_epoch = None, {}, None
        if len(self.marks) >= 2:
            (t1, c1, p1), (t2, c2, p2) = self.marks[min(self.marks)], self.marks[max(self.marks)]
            self.epochs = {k: (c2[k] - c1[k]) / (t2 - t1) for k in c1}               # cores
            n = max(self.marks) - min(self.marks)
            self.cpu_per_epoch = {k: (c2[k] - c1[k]) / n for k in c1}           # CPU seconds
            for pid, used in p2.items():
                name = self.name[pid]
                self.epochs_by_name[name] = (self.epochs_by_name.get(name, 0.0)
                                             + (used - p1.get(pid, 0.0)) / (t2 - t1))


def train_cfg(data, out, model, workers, epochs, batch, lr, shm_allreduce=True):
    from ising_dist import config as cfgmod
    from ising_dist.train import TrainConfig
    return cfgmod.from_dict(TrainConfig, {
        "name": "bench", "data": str(data), "out": str(out), "model": model, "epochs": epochs,
        "batch_size": batch, "lr": lr, "workers": workers, "progress": False,
        "max_failures": 0, "shm_allreduce": shm_allreduce})


# the train runs of section 3: name → (workers, shm_allreduce)
RUNS = {1: (1, True), 2: (2, True), "2g": (2, False)}


def throughput(run_dir) -> float:
    """Median samples/s of a run's epochs after the first (the first pays warm-up)."""
    from ising_dist.train import read_metrics
    rows = read_metrics(run_dir)
    return statistics.median(r["samples_per_s"] for r in rows[1:] or rows)


def load() -> str:
    return " ".join(f"{x:.1f}" for x in os.getloadavg())


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--data", help="PT file (default: make a small one)")
    p.add_argument("--epochs", type=int, default=4, help="epochs of each train run (≥ 2)")
    p.add_argument("--batch", type=int, default=128, help="global batch size")
    p.add_argument("--repeats", type=int, default=2, help="train runs per worker count")
    p.add_argument("--models", help="comma-separated subset of: " + ", ".join(
        available_models()))
    p.add_argument("--compile", action="store_true", help="also time torch.compile bare")
    p.add_argument("--skip-train", action="store_true", help="sections 1 and 2 only")
    p.add_argument("--tune", action="store_true", help="also time one Tune trial of the "
                                                        "first model against a plain run")
    p.add_argument("--json", help="write the figures here")
    args = p.parse_args(argv)
    models = available_models()
    if args.models:
        unknown = [m for m in args.models.split(",") if m not in models]
        if unknown:
            p.error(f"--models {','.join(unknown)}: not one of {', '.join(models)}")
        models = {m: models[m] for m in args.models.split(",")}
    if args.epochs < 2:
        p.error(f"--epochs {args.epochs}: need ≥ 2 (the first epoch is not timed)")
    import torch
    torch.set_num_threads(1)
    from ising_dist import train
    from ising_dist.data import make_datasets
    from ising_dist.models import ModelConfig

    lr = 1.0e-3
    results = {"cpus": os.cpu_count(), "epochs": args.epochs, "batch": args.batch,
               "data": {}, "models": {}}
    with tempfile.TemporaryDirectory(prefix="bench_train_") as tmp:
        tmp = Path(tmp)
        data = Path(args.data).absolute() if args.data else make_data(tmp)
        sets, fp = make_datasets(data)
        train_set = sets["train"]
        t0 = time.perf_counter()
        train.ensure_ray()
        print(f"data {data}: {len(train_set)} train samples, L={fp['L']}; Ray started in "
              f"{time.perf_counter() - t0:.1f} s; {os.cpu_count()} CPUs; global batch "
              f"{args.batch}; load average {load()}", flush=True)

        print("\n1. data path alone (1 thread, no model)", flush=True)
        rates = data_rates(train_set, args.batch)
        results["data"] = rates
        base = rates["DataLoader, per-item Dataset (before)"]
        print(f"   (loading the split into memory took {rates.pop('_load_s'):.2f} s)")
        for name, r in rates.items():
            print(f"   {name:45} {r:12.0f} samples/s {r / base:8.1f}x", flush=True)
        # Ray Data's actors (its stats actor, autoscaling coordinator) outlive the measurement
        # and wake every 10 ms like every actor: the train runs get a fresh local Ray, as a
        # `python -m ising_dist.train` run does
        import ray
        ray.shutdown()
        train.ensure_ray()

        print(f"\n2. bare torch, 1 thread, batch {args.batch} (load average {load()}): with "
              f"glibc malloc's defaults, then keeping freed memory as the workers do "
              f"(ising_dist.train.keep_freed_memory)")
        for name, model in models.items():   # defaults first: the setting cannot be undone
            row = results["models"].setdefault(name, {})
            row["bare_malloc_defaults"] = bare_rate(train_set, model, fp["L"], args.batch,
                                                    lr)["samples_per_s"]
        kept = train.keep_freed_memory()
        for name, model in models.items():
            row = results["models"][name]
            row["bare"] = bare_rate(train_set, model, fp["L"], args.batch, lr)["samples_per_s"]
            line = (f"   {name:18} {row['bare_malloc_defaults']:9.0f} → {row['bare']:6.0f} "
                    f"samples/s ({row['bare'] / row['bare_malloc_defaults']:.2f}x"
                    f"{'' if kept else ': not glibc, nothing changed'})")
            if args.compile and ModelConfig.from_dict({**model, "L": fp["L"]}).adversarial:
                line += "   compiled: n/a (double backward)"
            elif args.compile:
                c = bare_rate(train_set, model, fp["L"], args.batch, lr, compile_model=True)
                row["compiled"], row["compile_s"] = c["samples_per_s"], c["compile_s"]
                line += (f"   compiled {c['samples_per_s']:9.0f} ({c['samples_per_s'] / row['bare']:.2f}x"
                         f", compile {c['compile_s']:.0f} s)")
            print(line, flush=True)
        if args.skip_train:
            return _finish(results, args.json)

        print(f"\n3. ising_dist.train, {args.epochs} epochs a run, runs interleaved, best of "
              f"{args.repeats} (median epoch after the first)", flush=True)
        print(f"   {'model':10} {'bare':>7} {'1 worker':>9} {'2 workers':>9} {'1w/bare':>7} "
              f"{'2w/1w':>6} {'2w/1w by CPU':>12} {'Ray CPU cores 1w / 2w':>22} "
              f"{'2w gloo':>8} {'2w gloo/1w':>10}  load", flush=True)
        for name, model in models.items():
            row = results["models"][name]
            runs, ray_cores, worker_cpu, steal = ({k: [] for k in RUNS} for _ in range(4))
            ceiling = {"one": [], "two": [], "lock": [], "core_one": [], "core_two": []}
            for rep in range(args.repeats):
                if name in SCALING_TARGETS:
                    one, two, lock = strong_scaling_ceiling(data, model, args.batch, lr)
                    ceiling["one"].append(one)
                    ceiling["two"].append(two)
                    ceiling["lock"].append(lock)
                    one, two = core_rates()
                    ceiling["core_one"].append(one)
                    ceiling["core_two"].append(two)
                # bare torch again next to the runs it is compared with: best of all
                row["bare"] = max(row["bare"], bare_rate(train_set, model, fp["L"], args.batch,
                                                         lr)["samples_per_s"])
                for w, (workers, shm) in RUNS.items():
                    out = tmp / f"{name}-{w}-{rep}"
                    with RayCPU(out) as mon:
                        train.run(train_cfg(data, out, model, workers, args.epochs, args.batch,
                                            lr, shm))
                    runs[w].append(throughput(out))
                    ray_cores[w].append(mon.epochs["ray"] if mon.epochs else float("nan"))
                    worker_cpu[w].append(mon.cpu_per_epoch["workers"] if mon.epochs
                                         else float("nan"))
                    steal[w].append(mon.epochs["steal"] if mon.epochs else float("nan"))
                    row[f"ray_cores_by_process_{w}"] = {   # the last run's, busiest first
                        k: round(v, 4) for k, v in sorted(mon.epochs_by_name.items(),
                                                          key=lambda kv: -kv[1])}
            for w in RUNS:
                row[f"workers_{w}"] = max(runs[w])
                row[f"workers_{w}_all"] = runs[w]
                row[f"ray_cores_{w}"] = statistics.median(ray_cores[w])
                row[f"worker_cpu_s_per_epoch_{w}"] = min(worker_cpu[w])
                row[f"worker_cpu_s_per_epoch_{w}_all"] = worker_cpu[w]
                row[f"steal_cores_{w}_all"] = steal[w]
            # what 2 workers would give if each had a free core: 2 × CPU an epoch of 1 worker /
            # CPU an epoch of both (ignores time a rank waits for the other; holds under load)
            row["two_over_one_cpu"] = (2 * row["worker_cpu_s_per_epoch_1"]
                                       / row["worker_cpu_s_per_epoch_2"])
            row["one_over_bare"] = row["workers_1"] / row["bare"]
            row["two_over_one"] = row["workers_2"] / row["workers_1"]
            row["two_gloo_over_one"] = row["workers_2g"] / row["workers_1"]
            # the same ratio round by round: the 1- and 2-worker runs of a round are taken
            # back to back, so each ratio sees one state of the host; their spread is the
            # error bar of the best-of ratio above
            row["two_over_one_rounds"] = [b / a for a, b in zip(runs[1], runs[2])]
            if ceiling["one"]:
                row["ceiling_bare_one"], row["ceiling_bare_two"] = (max(ceiling["one"]),
                                                                    max(ceiling["two"]))
                row["ceiling_two_over_one"] = row["ceiling_bare_two"] / row["ceiling_bare_one"]
                row["ceiling_lockstep_two"] = max(ceiling["lock"])
                row["ceiling_lockstep_two_over_one"] = (row["ceiling_lockstep_two"]
                                                        / row["ceiling_bare_one"])
                row["ceiling_all"] = {k: ceiling[k] for k in ("one", "two", "lock")}
                row["free_cores"] = max(ceiling["core_two"]) / max(ceiling["core_one"])
            print(f"   {name:10} {row['bare']:7.0f} {row['workers_1']:9.0f} "
                  f"{row['workers_2']:9.0f} {row['one_over_bare']:7.2f} "
                  f"{row['two_over_one']:6.2f} {row['two_over_one_cpu']:12.2f} "
                  f"{row['ray_cores_1']:13.2f} / {row['ray_cores_2']:.2f}      "
                  f"{row['workers_2g']:8.0f} {row['two_gloo_over_one']:10.2f}  {load()}",
                  flush=True)
        print("\n   targets: 1w/bare ≥ 0.8 for every model; 2w/1w ≥ 1.6 for "
              + " and ".join(SCALING_TARGETS))
        ceilings = [m for m in models if m in SCALING_TARGETS]
        if ceilings:
            print(f"\n   the machine's ceiling of 2w/1w, no DDP or Ray: two bare processes at "
                  f"batch {args.batch // 2} at once, independent and in lock-step (a barrier "
                  f"before every step, as DDP ranks step), / one at batch {args.batch} "
                  f"({CEILING_S:.0f} s each, best of {args.repeats}, measured before each round "
                  f"of runs):")
        for name in ceilings:
            row = results["models"][name]
            print(f"   {name:10} independent {row['ceiling_bare_two']:7.0f} / "
                  f"{row['ceiling_bare_one']:5.0f} = {row['ceiling_two_over_one']:.2f}, "
                  f"lock-step {row['ceiling_lockstep_two']:7.0f} / {row['ceiling_bare_one']:5.0f}"
                  f" = {row['ceiling_lockstep_two_over_one']:.2f}; 2w/1w is "
                  f"{row['two_over_one'] / row['ceiling_two_over_one']:.2f} and "
                  f"{row['two_over_one'] / row['ceiling_lockstep_two_over_one']:.2f} of them; "
                  f"free cores {row['free_cores']:.2f}")
            print(f"   {'':10} each round (one | independent | lock-step): " + "   ".join(
                f"{o:5.0f} | {t:6.0f} | {k:6.0f}" for o, t, k in zip(
                    *(row["ceiling_all"][c] for c in ("one", "two", "lock")))))
        if ceilings:
            print(f"   (free cores: two processes of a pure-Python loop at once / one alone, "
                  f"{CORES_S:.0f} s each, best of {args.repeats}, measured with each ceiling; "
                  f"2.00 = two free cores)")
        print("\n   CPU of processes other than the workers while 2 workers trained (cores, "
              "the last run of each model, ≥ 0.005):")
        for name in models:
            busy = {k: v for k, v in results["models"][name]["ray_cores_by_process_2"].items()
                    if v >= 0.005 and "RayTrainWorker" not in k}
            print(f"   {name:10} " + ", ".join(f"{k} {v:.3f}" for k, v in busy.items()))
        print("\n   each run in turn (1, 2 workers; 2g: 2 over gloo): samples/s | the workers' "
              "CPU-s an epoch | the host's steal from this guest, cores (/proc/stat):")
        for name in models:
            row = results["models"][name]
            rounds = row["two_over_one_rounds"]
            print(f"   {name:10} 2w/1w round by round " + " ".join(f"{r:.2f}" for r in rounds)
                  + f"; median {statistics.median(rounds):.2f}")
            for w in RUNS:
                print(f"   {name:10} {w:>2} " + "   ".join(
                    f"{r:6.0f} | {c:5.2f} | {st:.3f}" for r, c, st in zip(
                        row[f"workers_{w}_all"], row[f"worker_cpu_s_per_epoch_{w}_all"],
                        row[f"steal_cores_{w}_all"])))
        if args.tune:
            results["tune"] = tune_trial(tmp, data, next(iter(models.values())), args, lr)
    return _finish(results, args.json)


def tune_trial(tmp: Path, data: Path, model: dict, args, lr: float) -> dict:
    """One Tune trial (a 1×1 grid, 1 worker) against the same train.run without Tune."""
    from ising_dist import config as cfgmod
    from ising_dist import train, tune
    t0 = time.perf_counter()
    train.run(train_cfg(data, tmp / "plain", model, 1, args.epochs, args.batch, lr))
    plain = time.perf_counter() - t0
    preset = tmp / "trial.yaml"
    preset.write_text(cfgmod.to_yaml(train_cfg(data, tmp / "unused", model, 1, args.epochs,
                                               args.batch, lr)))
    search = cfgmod.from_dict(tune.SearchConfig, {
        "name": "bench", "train": str(preset), "out": str(tmp / "tune"),
        "latent_dims": [model.get("latent_dim", 2)], "kl_weights": [1.0]})
    t0 = time.perf_counter()
    tune.run(search)
    wall = time.perf_counter() - t0
    print(f"\n4. one Tune trial (1 worker, {args.epochs} epochs): whole search {wall:.1f} s vs "
          f"the same train.run without Tune {plain:.1f} s ({wall / plain:.2f}x)", flush=True)
    return {"search_wall_s": wall, "plain_run_wall_s": plain}


def _finish(results: dict, path) -> int:
    results["load_average"] = os.getloadavg()
    if path:
        Path(path).write_text(json.dumps(results, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
