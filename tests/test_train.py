"""Ray Train on a real PT file: learning, DDP agreement, recovery of a killed worker, resume,
a job submitted to a real local cluster, and the errors a user meets."""
from __future__ import annotations

import contextlib
import json
import os
import re
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import types
import urllib.request
from pathlib import Path

import pytest
import torch
import yaml

from ising_dist import config as cfgmod
from ising_dist import train
from ising_dist.data import make_datasets
from ising_dist.models import evaluate_epoch, load_model
from ising_dist.session import STOP_FILE, LocalSession, request_stop
from tests.test_data import make_pt_file

ROOT = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent
EPOCHS = 3


def tiny(pt_file, out, **kw) -> dict:
    """A small VAE run: 1280 training samples of L=8, 3 epochs."""
    d = {"name": "t", "data": str(pt_file), "out": str(out), "epochs": EPOCHS,
         "batch_size": 64, "lr": 3.0e-3, "seed": 1, "max_failures": 0,
         "model": {"family": "vae", "arch": "mlp", "latent_dim": 2, "hidden": [32, 16]}}
    d.update(kw)
    return d


def cfg_of(d) -> train.TrainConfig:
    return cfgmod.from_dict(train.TrainConfig, d)


@pytest.fixture(scope="session")
def pt_file(tmp_path_factory):
    return make_pt_file(tmp_path_factory)


# Ray Train's controller polls its workers every 2 s by default; at 0.5 s a 3-epoch test run
# ends ~3 s sooner. A latency knob only (read by the controller actor from its environment).
FAST_POLL = {"RAY_TRAIN_HEALTH_CHECK_INTERVAL_S": "0.5"}


def start_local_ray() -> None:
    """The session's local Ray instance (started once, stops when pytest exits)."""
    os.environ.pop("RAY_ADDRESS", None)
    os.environ.update(FAST_POLL)   # inherited by the raylet and so by every actor
    train.ensure_ray()


@pytest.fixture(scope="module")
def ray_local():
    start_local_ray()


@pytest.fixture(scope="module")
def baseline(tmp_path_factory, pt_file, ray_local):
    """The reference: one worker, uninterrupted."""
    out = tmp_path_factory.mktemp("train") / "baseline"
    summary = train.run(cfg_of(tiny(pt_file, out)))
    return out, summary


def test_training_lowers_validation_loss_and_writes_a_self_describing_run(baseline, pt_file):
    out, summary = baseline
    rows = train.read_metrics(out)
    assert [r["epoch"] for r in rows] == [1, 2, 3]
    for split in ("train", "val"):
        for term in ("recon", "kl", "total"):
            assert all(f"{split}_{term}" in r for r in rows)
    assert rows[-1]["val_total"] < 0.85 * rows[0]["val_total"], rows
    assert rows[-1]["val_recon"] < rows[0]["val_recon"]

    # the final model: plain tensors and primitives, rebuilt from its own config
    raw = torch.load(out / "model.pt", weights_only=True)
    assert raw["format"] == "ising_dist.model" and raw["config"]["L"] == 8
    model, extra = load_model(out / "model.pt")
    assert extra["epoch"] == EPOCHS and extra["data"]["n_samples"] == 400
    # … and it is the model whose validation loss was reported
    sets, _ = make_datasets(pt_file, val_fraction=0.1, test_fraction=0.1)
    val = torch.utils.data.DataLoader(sets["val"], batch_size=160)
    torch.manual_seed(0)
    recon = evaluate_epoch(model, val, "cpu")["recon"]
    assert recon == pytest.approx(rows[-1]["val_recon"], rel=0.05)

    # checkpoints: the newest two, each with model, optimizer, epoch, config, data fingerprint
    names = sorted(p.name for p in train.checkpoints(out))
    assert names == ["checkpoint_0002", "checkpoint_0003"]
    state = train.load_state(out / "checkpoint_0003")
    assert state["epoch"] == 3 and state["resumed_at"] == []
    assert state["optimizers"][0]["state"], "optimizer state is saved"
    assert state["config"]["model"]["latent_dim"] == 2 and state["data"]["rows"] == [0, 1, 2, 3]
    saved = cfgmod.load(train.TrainConfig, out / "config.yaml")
    assert Path(saved.data).is_absolute() and saved.model["L"] == 8


def test_two_ddp_workers_agree_with_one_and_recover_a_killed_worker(tmp_path, pt_file,
                                                                      ray_local):
    """An AE (no sampling noise): 2 workers see the same global batches as 1 worker
    (DistributedSampler interleaves one permutation) and DDP averages their gradients, so the
    curves must agree to float precision. One of the 2 workers is SIGKILLed in epoch 2; Ray
    restarts the group from checkpoint 1, which must not change the curve either."""
    ae = {"family": "ae", "arch": "mlp", "latent_dim": 2, "hidden": [32, 16]}
    one = tmp_path / "one"
    train.run(cfg_of(tiny(pt_file, one, model=ae)))
    two = tmp_path / "two"
    train.run(cfg_of(tiny(pt_file, two, model=ae, workers=2, chaos_kill_epoch=1,
                          max_failures=1)))
    assert (two / ".chaos_kill_done").exists()
    state = train.load_state(train.checkpoints(two)[-1])
    assert state["resumed_at"] == [1] and state["epoch"] == EPOCHS
    rows, ref = train.read_metrics(two), train.read_metrics(one)
    assert [r["epoch"] for r in rows] == [1, 2, 3]
    assert rows[-1]["val_total"] < 0.85 * rows[0]["val_total"]
    for r, q in zip(rows, ref):
        for k in ("train_recon", "val_recon"):
            assert r[k] == pytest.approx(q[k], rel=1e-3), (k, rows, ref)


def test_resume_continues_exactly_where_an_uninterrupted_run_would_be(tmp_path, baseline,
                                                                      pt_file, capsys):
    preset = tmp_path / "tiny.yaml"
    out = tmp_path / "resumed"
    preset.write_text(yaml.safe_dump(tiny(pt_file, out)))
    assert train.main(["--config", str(preset), "--epochs", "2", "--quiet"]) == 0
    assert [r["epoch"] for r in train.read_metrics(out)] == [1, 2]
    # resume from the run directory alone (its config.yaml), asking for one more epoch
    assert train.main(["--out", str(out), "--resume", "--epochs", "3", "--quiet"]) == 0
    assert "done: 3 epochs" in capsys.readouterr().out
    assert train.load_state(train.checkpoints(out)[-1])["resumed_at"] == [2]
    rows, ref = train.read_metrics(out), train.read_metrics(baseline[0])
    assert [r["epoch"] for r in rows] == [1, 2, 3]
    for r, q in zip(rows, ref):
        for k in ("train_total", "val_recon", "val_kl", "val_total"):
            assert r[k] == pytest.approx(q[k], rel=1e-5), (k, rows, ref)


def _same_curve(rows, ref, rel, keys=("train_total", "val_recon", "val_kl", "val_total")):
    assert [r["epoch"] for r in rows] == [q["epoch"] for q in ref]
    for r, q in zip(rows, ref):
        for k in keys:
            assert r[k] == pytest.approx(q[k], rel=rel), (k, rows, ref)


def test_a_local_session_trains_as_a_one_worker_ray_run(tmp_path, baseline, pt_file):
    """The same train_loop in this process (LocalSession, no Ray) gives the baseline's run:
    its curve, its checkpoints and its final weights."""
    out = tmp_path / "local"
    summary = train.run(cfg_of(tiny(pt_file, out)), local=True)
    assert summary["epoch"] == EPOCHS and not summary["stopped"]
    _same_curve(train.read_metrics(out), train.read_metrics(baseline[0]), rel=1e-6)
    assert [p.name for p in train.checkpoints(out)] == ["checkpoint_0002", "checkpoint_0003"]
    mine, _ = load_model(out / "model.pt")
    ref, _ = load_model(baseline[0] / "model.pt")
    for (k, a), b in zip(mine.state_dict().items(), ref.state_dict().values()):
        assert torch.allclose(a, b, rtol=1e-5, atol=1e-7), k
    with pytest.raises(cfgmod.ConfigError, match="workers=2: a local run"):
        train.run(cfg_of(tiny(pt_file, tmp_path / "two", workers=2)), local=True)


class StopAfterFirstEpoch(LocalSession):
    """A session whose user asks the run to stop as soon as epoch 1 is reported."""

    def report(self, metrics, checkpoint_dir, name):
        super().report(metrics, checkpoint_dir, name)
        request_stop(self.run_dir)


def test_a_stop_request_ends_the_run_at_a_checkpoint_and_resume_finishes_it(tmp_path, baseline,
                                                                            pt_file):
    out = tmp_path / "stopped"
    cfg, fp, resume_from = train.prepare(cfg_of(tiny(pt_file, out)))
    loop = {"config": cfgmod.to_dict(cfg), "run_dir": str(out), "data": fp, "resume_from": None}
    threads = torch.get_num_threads()
    try:
        train.train_loop(loop, StopAfterFirstEpoch(out, keep_checkpoints=2))
    finally:
        torch.set_num_threads(threads)
    assert [p.name for p in train.checkpoints(out)] == ["checkpoint_0001"]
    assert [r["epoch"] for r in train.read_metrics(out)] == [1]
    summary = train.run(cfg_of(tiny(pt_file, out)), resume=True, local=True)
    assert summary["epoch"] == EPOCHS and not summary["stopped"]
    assert not (out / STOP_FILE).exists()           # the run cleared the old request
    assert train.load_state(train.checkpoints(out)[-1])["resumed_at"] == [1]
    _same_curve(train.read_metrics(out), train.read_metrics(baseline[0]), rel=1e-5)


class DiesAtItsFirstReport(LocalSession):
    """A worker killed after rank 0 wrote epoch 1's metrics row, before its checkpoint landed
    (the report that would register it never returns)."""

    def report(self, metrics, checkpoint_dir, name):
        raise KeyboardInterrupt("killed before checkpoint_0001 landed")


def test_a_run_that_died_before_its_first_checkpoint_starts_afresh(tmp_path, baseline,
                                                                    pt_file, capsys):
    """Its metrics.csv alone does not make it a run to keep: before, neither a new run
    ("already holds a run; pass --resume") nor --resume ("holds no checkpoint") could
    continue, and a Tune trial stopped there failed on its search's resume."""
    out = tmp_path / "died"
    cfg, fp, _ = train.prepare(cfg_of(tiny(pt_file, out)))
    loop = {"config": cfgmod.to_dict(cfg), "run_dir": str(out), "data": fp, "resume_from": None}
    threads = torch.get_num_threads()
    try:
        with pytest.raises(KeyboardInterrupt):
            train.train_loop(loop, DiesAtItsFirstReport(out, keep_checkpoints=2))
    finally:
        torch.set_num_threads(threads)
    assert [r["epoch"] for r in train.read_metrics(out)] == [1] and not train.checkpoints(out)
    capsys.readouterr()
    summary = train.run(cfg_of(tiny(pt_file, out)), local=True)
    assert ("holds metrics of 1 epoch(s) but no checkpoint" in capsys.readouterr().err
            and summary["epoch"] == EPOCHS)
    _same_curve(train.read_metrics(out), train.read_metrics(baseline[0]), rel=1e-6)


RAY_CHATTER = ("Reporting training result", "PreemptionWatcher", "multiple active Ray instances",
               "Token authentication", "Traceback")


def test_the_cli_prints_its_progress_and_none_of_rays_chatter(tmp_path, pt_file, ray_local):
    """Issue 13: on the embedded local cluster the user sees our lines only, none of Ray's
    per-report metrics dicts, preemption-watcher error, token notice or placement-group
    cleaner traceback (which another Ray on the machine, this test process's, provokes)."""
    preset = tmp_path / "tiny.yaml"
    preset.write_text(yaml.safe_dump(tiny(pt_file, tmp_path / "run")))
    env = {k: v for k, v in os.environ.items() if k not in ("RAY_ADDRESS", "RAY_AUTH_MODE")}
    res = subprocess.run([sys.executable, "-m", "ising_dist.train", "--config", str(preset)],
                         cwd=ROOT, env=env, capture_output=True, text=True, timeout=400)
    said = res.stdout + res.stderr
    assert res.returncode == 0, said[-4000:]
    for chatter in RAY_CHATTER:
        assert chatter not in said, said[-6000:]
    assert f"epoch {EPOCHS}/{EPOCHS}" in said and f"done: {EPOCHS} epochs" in said, said


@pytest.mark.validation
def test_compiled_training_follows_the_eager_run(tmp_path, baseline, pt_file):
    """compile: true (torch.compile on each worker, ~30 s of compiling) changes the speed, not
    the run: the baseline VAE, noise included, gives the same curve to float rounding."""
    out = tmp_path / "compiled"
    train.run(cfg_of(tiny(pt_file, out, compile=True)))
    rows, ref = train.read_metrics(out), train.read_metrics(baseline[0])
    assert [r["epoch"] for r in rows] == [1, 2, 3]
    for r, q in zip(rows, ref):
        for k in ("train_total", "val_recon", "val_kl"):
            assert r[k] == pytest.approx(q[k], rel=1e-4), (k, rows, ref)


FAULTS = """
import ctypes, ctypes.util, json, resource, sys, torch
from ising_dist.models import ModelConfig, build_model, train_epoch
from ising_dist.train import keep_freed_memory
# glibc's starting thresholds (128 KiB each, mallopt(3)), held fixed: left to themselves they
# grow with each freed mmapped chunk, and some processes already kept the freed memory then
libc = ctypes.CDLL(ctypes.util.find_library("c"))
pinned = bool(libc.mallopt(-3, 128 * 1024) and libc.mallopt(-1, 128 * 1024))
torch.set_num_threads(1)
torch.manual_seed(0)
model = build_model(ModelConfig.from_dict(
    {"family": "vae", "arch": "conv", "latent_dim": 8, "channels": [64, 32], "L": 16}))
opts = model.configure_optimizers(1e-3)
data = [(torch.randint(0, 2, (64, 16, 16)).float() * 2 - 1, torch.full((64,), 2.0))] * 30
def faults():
    train_epoch(model, data[:10], opts, "cpu")         # warm-up
    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    train_epoch(model, data, opts, "cpu")
    return (resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before) / len(data)
default = faults()
kept = keep_freed_memory()
print(json.dumps({"pinned": pinned, "default": default, "kept": kept, "after": faults()}))
"""


def test_keeping_freed_memory_ends_the_page_faults_of_each_step():
    """With glibc's starting thresholds each CPU step of the conv VAE maps some of its tensors
    afresh (hundreds of page faults a step); after train.keep_freed_memory (called by every
    worker) the steps reuse the pages. The starting thresholds are pinned for the first count:
    glibc's dynamic threshold sometimes keeps the freed memory by itself (0.4 faults a step in
    one run of the suite). In a fresh process: the setting lasts for the process. Counted
    per step over 30 steps after 10 of warm-up: the first steps after the setting still grow
    the heap to its high-water mark."""
    r = subprocess.run([sys.executable, "-c", FAULTS], capture_output=True, text=True,
                       cwd=ROOT, timeout=300)
    assert r.returncode == 0, r.stderr[-2000:]
    got = json.loads(r.stdout.splitlines()[-1])
    assert got["pinned"] and got["kept"], got       # Linux with glibc, as here and in CI
    # faults a step, measured over 12 runs: 5 310–5 411 with the thresholds pinned, 0.2–14
    # after (the ratio ≥ 380); counted over 10 steps after 2 of warm-up the ratio fell at times
    assert got["default"] > 1000, got
    assert got["after"] < got["default"] / 20, got


def _cpu_cgroup(pid: int) -> str:
    """The cpu-controller cgroup path of a process, as /proc/<pid>/cgroup gives it."""
    lines = (Path("/proc") / str(pid) / "cgroup").read_text().splitlines()
    by = {ctl: path for _, ctls, path in (line.split(":", 2) for line in lines)
          for ctl in ctls.split(",")}
    return by.get("cpu", by.get(""))


def test_a_local_rays_daemons_yield_the_cpu_but_its_workers_do_not(ray_local):
    """ising_dist.raydaemons on the local Ray of ensure_ray: the GCS and the raylet's agents
    run at SCHED_IDLE and, where this process may make cgroups (root, as here and in CI), in
    one cgroup with cpu.idle = 1; the raylet (its workers would inherit it) and a
    pooled worker process (it may become a training worker) keep the normal policy and
    cgroup, and so does a child of this process that is not Ray's."""
    import ray

    from ising_dist import raydaemons

    @ray.remote
    def policy():
        return os.getpid(), os.sched_getscheduler(0)

    worker, before = ray.get(policy.remote())
    group = raydaemons.current_group()
    parent = raydaemons._cpu_cgroup_dir()
    if parent is not None and os.access(parent, os.W_OK):
        assert group is not None and (group / "cpu.idle").read_text().strip() == "1", group
    with subprocess.Popen(["sleep", "60"]) as other:  # a child of this process, not Ray's
        raydaemons.idle_ray_processes(os.getpid(), group=group)  # what its thread does
        assert os.sched_getscheduler(other.pid) == os.SCHED_OTHER
        assert _cpu_cgroup(other.pid) == _cpu_cgroup(os.getpid())
        other.kill()
    cls = {}   # program name → the policies of its processes
    for pid in (int(p) for p in os.listdir("/proc") if p.isdigit()):
        args = raydaemons._cmdline(pid).split()
        with contextlib.suppress(OSError):
            cls.setdefault(args[0].rsplit("/", 1)[-1] if args else "", []).append(
                os.sched_getscheduler(pid))
    assert os.sched_getscheduler(worker) == os.SCHED_OTHER
    for name in ("gcs_server", "ray::DashboardAgent", "ray::RuntimeEnvAgent"):
        assert os.SCHED_IDLE in cls.get(name, []), (name, cls)
    if group is not None:
        own = _cpu_cgroup(os.getpid())
        assert _cpu_cgroup(worker) == own
        daemons = [pid for pid in (int(p) for p in os.listdir("/proc") if p.isdigit())
                   if raydaemons._cmdline(pid).startswith(("ray::DashboardAgent",
                                                           "ray::RuntimeEnvAgent"))
                   or raydaemons._cmdline(pid).split(" ")[0].endswith("/gcs_server")]
        assert daemons
        for pid in daemons:
            assert _cpu_cgroup(pid).rstrip("/").endswith("/" + group.name), (pid, group)
    assert cls["raylet"] and os.SCHED_IDLE not in cls["raylet"], cls["raylet"]
    assert before == os.SCHED_OTHER
    assert ray.get(policy.remote())[1] == os.SCHED_OTHER   # new and pooled workers alike


def test_presets_resolve_against_a_real_file(pt_file):
    presets = sorted((ROOT / "configs/train").glob("*.yaml"))
    assert {p.stem for p in presets} >= {"demo", "vae-mlp", "vae-conv", "cvae", "wgan-gp"}
    for p in presets:
        cfg = cfgmod.load(train.TrainConfig, p, {"data": str(pt_file)})
        resolved, fp, n_train = train.resolve(cfg)
        assert resolved.model["L"] == 8 and n_train > 0, p


@pytest.mark.parametrize("change, message", [
    ({"epoch": 3}, "unknown key(s) epoch"),
    ({"model": {"family": "vea"}}, "model: family='vea'"),
    ({"temperatures": [2.5]}, "temperature 2.5 is not in"),
    ({"data": "/nonexistent/pt.h5"}, "'/nonexistent/pt.h5' does not exist"),
    ({"model": {"L": 16}}, "model.L=16 but"),
    ({"lr": 0}, "lr=0.0: the learning rate must be > 0"),
    ({"workers": 3}, "workers=3 × 1 CPU needs 3 CPU"),
    ({"baseline": True}, "already holds a run"),
    ({"baseline": True, "resume": True, "model": {"latent_dim": 4}, "epochs": 5},
     "--resume of"),
    ({"resume": True}, "holds no checkpoint to continue from"),
    ({"data_memory_mb": -1}, "data_memory_mb=-1.0: must be ≥ 0"),
    ({"shuffle_window": 0}, "shuffle_window=0: must be ≥ 1 sample"),
    ({"compile": True, "model": {"family": "wgan-gp"}}, "compile=true with family 'wgan-gp'"),
])
def test_bad_configs_and_files_exit_2_with_a_clear_message(tmp_path, pt_file, baseline, capsys,
                                                           change, message):
    change = dict(change)
    resume = change.pop("resume", False)
    out = baseline[0] if change.pop("baseline", False) else tmp_path / "run"
    d = tiny(pt_file, out)
    if "model" in change:
        d["model"] = {**d["model"], **change.pop("model")}
    d.update(change)
    preset = tmp_path / "bad.yaml"
    preset.write_text(yaml.safe_dump(d))
    before = sorted(p.name for p in Path(baseline[0]).iterdir())
    rc = train.main(["--config", str(preset)] + (["--resume"] if resume else []))
    err = capsys.readouterr().err
    assert rc == 2 and err.startswith("error: ") and message in err, err
    assert "Traceback" not in err
    assert sorted(p.name for p in Path(baseline[0]).iterdir()) == before  # nothing touched


def test_cli_reports_bad_input_without_a_traceback(tmp_path):
    res = subprocess.run([sys.executable, "-m", "ising_dist.train", "--config",
                          "configs/train/demo.yaml", "--data", str(tmp_path / "none.h5"),
                          "--out", str(tmp_path / "run")], cwd=ROOT, capture_output=True,
                         text=True, timeout=120)
    assert res.returncode == 2, res.stderr
    assert res.stderr.startswith("error: data file") and "none.h5" in res.stderr
    assert "Traceback" not in res.stderr


# ------------------------------------------------------------------ a real local cluster
def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextlib.contextmanager
def local_ray_head(log_path: Path):
    """`ray start --head --block` on free ports with its own temp dir (so no other Ray user on
    this machine attaches to it), in a session of its own. Yields a namespace: address (the
    dashboard, for `ray job submit`), gcs (host:port, for RAY_ADDRESS), env, proc. Stopped by
    SIGTERM to that command, which takes down the processes it started (unlike `ray stop`,
    which stops every Ray on the machine); SIGKILL to its session if it does not stop."""
    temp = tempfile.mkdtemp(prefix="rj", dir="/tmp")  # short: Ray's socket paths are limited
    port, dash = _free_port(), _free_port()
    env = dict(os.environ, RAY_AUTH_MODE="disabled", PATH=f"{BIN}:{os.environ['PATH']}",
               RAY_GRACEFUL_SHUTDOWN_DRAIN_TIMEOUT_S="0", **FAST_POLL)
    env.pop("RAY_ADDRESS", None)
    log = open(log_path, "w")
    proc = subprocess.Popen(
        [str(BIN / "ray"), "start", "--head", "--block", f"--port={port}", "--num-cpus=2",
         "--disable-usage-stats", f"--temp-dir={temp}", "--dashboard-host=127.0.0.1",
         f"--dashboard-port={dash}", f"--ray-client-server-port={_free_port()}",
         f"--dashboard-agent-listen-port={_free_port()}",
         f"--dashboard-agent-grpc-port={_free_port()}",
         f"--runtime-env-agent-port={_free_port()}", f"--metrics-export-port={_free_port()}"],
        env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    address = f"http://127.0.0.1:{dash}"
    try:
        deadline = time.time() + 120
        while True:
            assert proc.poll() is None, Path(log_path).read_text()
            try:
                with urllib.request.urlopen(f"{address}/api/version", timeout=2) as r:
                    json.load(r)
                break
            except OSError:
                assert time.time() < deadline, "the Ray head did not come up in 120 s"
                time.sleep(1)
        yield types.SimpleNamespace(address=address, gcs=f"127.0.0.1:{port}", env=env,
                                    proc=proc)
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            pass
        kill_session(proc.pid)      # our own session: only what we started
        log.close()
        shutil.rmtree(temp, ignore_errors=True)


def session_pids(sid: int) -> set[int]:
    """Live processes of session ``sid`` (field 6 of /proc/PID/stat), zombies left out."""
    pids = set()
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[3]) == sid and fields[0] != "Z":
            pids.add(int(stat.parent.name))
    return pids


def kill_session(sid: int) -> None:
    """SIGKILL every process of session ``sid`` (one that this test started)."""
    for pid in session_pids(sid):
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass


@pytest.fixture
def ray_cluster(tmp_path):
    """A real local cluster of its own (see local_ray_head): (dashboard address, env)."""
    with local_ray_head(tmp_path / "ray-start.log") as head:
        yield head.address, head.env


def test_job_submitted_to_a_real_cluster_trains_and_checkpoints(ray_cluster, pt_file, tmp_path):
    address, env = ray_cluster
    out = tmp_path / "job-run"
    # the working dir is uploaded (up to 512 MiB); virtualenvs beside .venv/ are not always
    # git-ignored, so keep them out explicitly
    excludes = json.dumps({"excludes": [".venv*/", "runs/", "build/", "report/", ".git/"]})
    res = subprocess.run(
        [str(BIN / "ray"), "job", "submit", "--address", address, "--working-dir", ".",
         "--runtime-env-json", excludes, "--",
         "python", "-m", "ising_dist.train", "--config", "configs/train/demo.yaml",
         "--data", str(pt_file), "--out", str(out), "--epochs", "2", "--batch-size", "256"],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=400)
    assert res.returncode == 0, res.stdout[-4000:] + res.stderr[-4000:]
    assert "succeeded" in res.stdout and "epoch 2/2" in res.stdout
    assert [p.name for p in train.checkpoints(out)][-1] == "checkpoint_0002"
    model, extra = load_model(out / "model.pt")
    assert extra["epoch"] == 2 and model.cfg.L == 8


def _own_lines(stderr: str) -> str:
    """stderr without the worker and actor logs that Ray forwards ("(Name pid=…) …")."""
    return "\n".join(line for line in stderr.splitlines()
                     if not re.match(r"(\x1b\[\d+m)?\(\S+ pid=\d+", line))


# A driver as ising_dist.train or .tune runs it (argv: train or tune, its output directory, the
# GCS address or "none", how it ends), with a child of its own that outlives it, as Ray's do.
DRIVER = """
import os, signal, subprocess, sys
from ising_dist import deathwatch
driver, out, gcs, end = sys.argv[1:]
watch = deathwatch.start(driver, out, *([5] if driver == "train" else []))
if gcs != "none":
    watch.tell_gcs(gcs)
child = subprocess.Popen(["sleep", "120"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
print(child.pid, flush=True)
if end == "done":
    print("its own last word", file=sys.stderr, flush=True)
    watch.done()
    sys.exit(0)
if end == "_Exit":      # what Ray's core worker does when the local raylet is gone
    os._exit(1)
os.kill(os.getpid(), signal.SIGKILL)
"""


@pytest.mark.parametrize("driver, gcs, end, joined, code, cause", [
    ("train", "gone", "_Exit", True, 1,
     "error: the Ray cluster stopped during the run (its GCS at "),
    ("train", "alive", "SIGKILL", True, -9, "error: the driver (pid "),
    ("train", "gone", "SIGKILL", False, -9, "error: the driver (pid "),
    ("train", "none", "done", False, 0, None),
    ("tune", "gone", "_Exit", True, 1,
     "error: the Ray cluster stopped during the run (its GCS at ")])
def test_a_driver_that_dies_without_a_word_gets_its_message_from_its_watcher(
        tmp_path, pt_file, driver, gcs, end, joined, code, cause):
    """Issue 11 case 5, the race its test can lose: Ray's core worker ends the driver with
    _Exit(1) before the driver can print. The driver's watcher (ising_dist.deathwatch), which
    no child of the driver keeps waiting, then prints the one message: why (a cluster it
    joined, RAY_ADDRESS, whose GCS no longer answers; or a killed driver, whose own local Ray
    went down with it), where the run stands and the resume command. After the driver's own
    last word it says nothing."""
    out = tmp_path / "run"
    if driver == "train":
        train.run(cfg_of(tiny(pt_file, out, epochs=2)), local=True)
        where = (f"last checkpoint: {out / 'checkpoint_0002'} (epoch 2 of 5)\ncontinue with:"
                 f"\n  python -m ising_dist.train --out {out} --resume\n")
    else:
        where = (f"0 trial(s) finished, 0 started and unfinished; continue with:\n  "
                 f"python -m ising_dist.tune --out {out} --resume\n")
    with socket.create_server(("127.0.0.1", 0)) as listening:
        address = {"gone": f"127.0.0.1:{_free_port()}", "none": "none",
                   "alive": "127.0.0.1:%d" % listening.getsockname()[1]}[gcs]
        env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
        if joined:
            env["RAY_ADDRESS"] = address
        res = subprocess.run([sys.executable, "-c", DRIVER, driver, str(out), address, end],
                             cwd=ROOT, env=env, capture_output=True, text=True, timeout=60)
    os.kill(int(res.stdout.split()[0]), signal.SIGKILL)
    assert res.returncode == code, res.stderr
    if cause is None:
        assert res.stderr == "its own last word\n"
        return
    assert res.stderr.count("error: ") == 1 and "Traceback" not in res.stderr, res.stderr
    assert res.stderr.startswith(cause) and where in res.stderr, res.stderr


def test_a_gcs_still_dying_when_the_driver_ends_is_judged_by_its_end(monkeypatch):
    """A cluster killed all at once dies in some order: its raylet's death ends the driver
    (Ray's _Exit) while its GCS may still accept connections until its process is gone. The
    watcher then names the cluster, not the driver (this test's end-to-end twin above lost
    that race once). A GCS that keeps answering means the driver died on its own."""
    from ising_dist import deathwatch
    dying = socket.create_server(("127.0.0.1", 0))
    dying_at = "127.0.0.1:%d" % dying.getsockname()[1]
    threading.Timer(0.2, dying.close).start()
    monkeypatch.setenv("RAY_ADDRESS", dying_at)
    assert deathwatch.cause(dying_at, 123).startswith("the Ray cluster stopped")
    with socket.create_server(("127.0.0.1", 0)) as alive:
        alive_at = "127.0.0.1:%d" % alive.getsockname()[1]
        monkeypatch.setenv("RAY_ADDRESS", alive_at)
        assert deathwatch.cause(alive_at, 123).startswith("the driver (pid 123) ended")


def test_a_cluster_that_dies_mid_run_ends_with_one_message_and_the_resume_command(
        tmp_path, pt_file, ray_local, monkeypatch):
    """Issue 11 case 5: the cluster a training runs on is killed (SIGKILL to its processes,
    only those: the cluster's own session) after checkpoint 2. The driver ends with exit code
    1 and one message (what happened, the last checkpoint, the command to continue), no
    traceback; that command, run as printed, finishes the run."""
    out = tmp_path / "run"
    epochs = 25
    with local_ray_head(tmp_path / "ray-start.log") as head:
        proc = subprocess.Popen(
            [sys.executable, "-m", "ising_dist.train", "--config", "configs/train/demo.yaml",
             "--data", str(pt_file), "--out", str(out), "--epochs", str(epochs),
             "--batch-size", "64"], cwd=ROOT, env=dict(head.env, RAY_ADDRESS=head.gcs),
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        try:
            deadline = time.time() + 240
            while not (out / "checkpoint_0002" / "trainer.pt").is_file():
                assert proc.poll() is None and time.time() < deadline, proc.communicate()
                time.sleep(0.2)
            kill_session(head.proc.pid)
            stdout, stderr = proc.communicate(timeout=120)
        finally:
            proc.kill()
    own = _own_lines(stderr)
    assert proc.returncode == 1, stdout[-2000:] + stderr[-4000:]
    assert "Traceback" not in own and "ising_dist/train.py" not in own, own[-4000:]
    assert "error: " in own, stdout[-2000:] + stderr[-6000:]
    message = own[own.index("error: "):]
    assert "Ray cluster" in message, message
    last = train.checkpoints(out)[-1]
    epoch = train.load_state(last)["epoch"]
    assert 2 <= epoch < epochs
    assert f"last checkpoint: {last} (epoch {epoch} of {epochs})" in message, message
    command = message.split("continue with:\n", 1)[1].splitlines()[0].strip()
    assert command == f"python -m ising_dist.train --out {out} --resume", message

    # the command as printed finishes the run (here on this process's local Ray)
    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    assert train.main(shlex.split(command)[3:] + ["--quiet"]) == 0
    assert [r["epoch"] for r in train.read_metrics(out)] == list(range(1, epochs + 1))
    assert epoch in train.load_state(train.checkpoints(out)[-1])["resumed_at"]
