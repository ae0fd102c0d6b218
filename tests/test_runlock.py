"""One writer per output (ising_dist.runlock): real processes hold and contend for real lock
files; a second pt (--overwrite, --resume, plain, a duplicate Slurm job), a second training and
a second search are refused while a run is live, and the live run's file ends up bit-identical
to an undisturbed run's; a killed run's lock is taken over; a run whose output is replaced,
removed or whose lock is stolen stops with an error at its next checkpoint."""

import json
import os
import re
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import h5py
import numpy as np
import pytest
import yaml

from ising_dist import runlock
from ising_dist.runlock import (RunLock, RunLockedError, RunLostError, flock_is_cluster_wide,
                                lock_path, owner_alive, process_start, refuse_if_live)
from ising_dist.tempering import PTState
from tests.test_pt import DATASETS, SMALL, env, pt_cmd, run_pt, wait_for_checkpoint

ROOT = Path(__file__).resolve().parents[1]
HOST = socket.gethostname()
# long enough to be live for minutes (it is stopped or killed by the tests)
LONG = [*SMALL, "--L", "16", "--sweeps", "4000000", "--sample-every", "100",
        "--checkpoint-every", "20000"]

HOLDER = """
import sys
from ising_dist.runlock import RunLock
lock = RunLock.acquire(sys.argv[1], role=sys.argv[2])
print("ready", flush=True)
sys.stdin.read()          # hold it until the test closes stdin (or kills this process)
lock.release()
"""


def start_holder(target, role="pt"):
    """Another process holding the lock of ``target``; returns once it holds it."""
    proc = subprocess.Popen([sys.executable, "-c", HOLDER, str(target), role], cwd=ROOT,
                            env=dict(os.environ, PYTHONPATH=str(ROOT)), stdin=subprocess.PIPE,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    line = proc.stdout.readline()
    assert line == "ready\n", proc.communicate()[1]
    return proc


def wait_live(out, proc):
    """Wait for the first checkpoint of the run ``proc`` writing ``out`` (its output, if it
    ended before that, in the failure)."""
    try:
        wait_for_checkpoint(out, proc)
    except AssertionError:
        streams = [s.read() for s in (proc.stdout, proc.stderr) if s is not None]
        raise AssertionError(f"run ended (exit {proc.poll()}) before its first checkpoint: "
                             + "".join(streams)) from None


def owner_of(target, role="pt"):
    return json.loads(lock_path(target, role).read_text())


# -- the lock itself, between real processes ----------------------------------------------------
def test_a_live_holder_is_named_and_a_killed_one_is_taken_over(tmp_path, capsys):
    out = tmp_path / "run.h5"
    holder = start_holder(out)
    try:
        for attempt in (lambda: RunLock.acquire(out, role="pt"), lambda: refuse_if_live(out)):
            with pytest.raises(RunLockedError) as err:
                attempt()
            msg = str(err.value)
            assert f"{out} is in use by a live pt run, pid {holder.pid} on host {HOST}" in msg
            assert "started " in msg and f"kill -TERM {holder.pid}" in msg
        rec = owner_of(out)
        assert rec["pid"] == holder.pid and rec["pid_start"] == process_start(holder.pid)
        assert rec["host"] == HOST and rec["role"] == "pt" and rec["boot_id"]
    finally:
        holder.kill()          # kill -9: the kernel drops its flock; its record stays behind
        holder.wait()
    assert owner_of(out)["pid"] == holder.pid
    with RunLock.acquire(out, role="pt") as lock:
        assert owner_of(out)["token"] == lock.owner["token"] and lock.kernel is True
        assert f"pid {holder.pid}" in capsys.readouterr().err  # "note: … taking it over"
        refuse_if_live(out)    # this process holds it: no refusal
    assert not lock_path(out).exists()


def test_release_leaves_nothing_behind_and_directories_lock_inside(tmp_path):
    target = tmp_path / "new" / "deeper" / "run.h5"
    lock = RunLock.acquire(target, role="pt")
    assert lock.path == tmp_path / "new" / "deeper" / "run.h5.lock" and lock.path.exists()
    lock.release()
    lock.release()             # idempotent
    assert not (tmp_path / "new").exists()  # a refused run leaves no directories either
    run_dir = tmp_path / "train-run"
    with RunLock.acquire(run_dir, role="train") as lock:
        assert lock.path == run_dir / ".lock"
        (run_dir / "metrics.csv").write_text("epoch\n")
        lock.check(run_dir)
    assert run_dir.is_dir() and not lock.path.exists()  # kept: the run wrote into it


def test_the_owner_record_decides_where_flock_cannot(tmp_path, monkeypatch, capsys):
    """A lock file whose flock is free but whose record names a live process on this host
    (as on a file system whose flock does not reach the owner) is refused; a dead pid, a
    reused pid and a rebooted host are stale."""
    out = tmp_path / "run.h5"
    path = lock_path(out)
    other = subprocess.Popen(["sleep", "60"])
    try:
        live = dict(runlock.owner_record("pt", out), pid=other.pid,
                    pid_start=process_start(other.pid), command="sleep 60")
        path.write_text(json.dumps(live))
        with pytest.raises(RunLockedError, match=f"pid {other.pid} on host {HOST}"):
            RunLock.acquire(out)
        # a file system without flock (e.g. Lustre mounted without -o flock): the record alone
        monkeypatch.setattr(runlock, "_try_flock", lambda fd, how: None)
        with pytest.raises(RunLockedError, match=f"pid {other.pid}"):
            RunLock.acquire(out)
        for stale in (dict(live, pid_start=live["pid_start"] + 1),   # pid reused since
                      dict(live, boot_id="another-boot")):            # host rebooted since
            path.write_text(json.dumps(stale))
            RunLock.acquire(out).release()
    finally:
        other.kill()
        other.wait()
    path.write_text(json.dumps(live))
    with RunLock.acquire(out) as lock:   # its process is gone
        assert lock.kernel is None and owner_of(out)["pid"] == os.getpid()
    assert "taking it over" in capsys.readouterr().err


def test_an_owner_on_another_host(tmp_path, monkeypatch):
    """Liveness of an owner on another host cannot be told from here (no Slurm job): with
    cluster-wide flock (this local file system) a free flock means it ended; where flock is
    per node, the lock is refused with the lock file to delete."""
    out = tmp_path / "run.h5"
    path = lock_path(out)
    remote = dict(runlock.owner_record("pt", out), host="node-elsewhere", pid=12345,
                  slurm_job_id=None)
    assert owner_alive(remote) is None
    path.write_text(json.dumps(remote))
    assert flock_is_cluster_wide(path)
    RunLock.acquire(out).release()
    path.write_text(json.dumps(remote))
    monkeypatch.setattr(runlock, "flock_is_cluster_wide", lambda p, mounts=None: False)
    with pytest.raises(RunLockedError) as err:
        RunLock.acquire(out)
    assert "pid 12345 on host node-elsewhere" in str(err.value)
    assert f"delete {path} and run again" in str(err.value)


def test_owner_liveness_on_this_host():
    me = runlock.owner_record("pt", "x")
    assert owner_alive(me) is True
    done = subprocess.run(["true"])
    gone = dict(me, pid=os.getpid() + 10**6)
    assert done.returncode == 0 and owner_alive(gone) is False
    assert owner_alive(dict(me, pid_start=me["pid_start"] - 1)) is False
    assert owner_alive(dict(me, boot_id="not-this-boot")) is False


MOUNTS = """\
/dev/sda1 / ext4 rw,relatime 0 0
srv:/home /home nfs4 rw,vers=4.2,hard 0 0
srv:/old /old nfs rw,vers=3,nolock 0 0
srv:/loc /loc nfs4 rw,local_lock=flock 0 0
10.0.0.1@o2ib:/fs /lustre lustre rw,flock 0 0
10.0.0.1@o2ib:/fs2 /lustre2 lustre rw,localflock 0 0
beegfs_nodev /beegfs beegfs rw 0 0
gpfs1 /gpfs gpfs rw 0 0
tmpfs /dev/shm tmpfs rw 0 0
"""


@pytest.mark.parametrize("path,wide", [
    ("/work/x.h5", True), ("/home/u/x.h5", True), ("/old/x.h5", False), ("/loc/x.h5", False),
    ("/lustre/u/x.h5", True), ("/lustre2/u/x.h5", False), ("/beegfs/x.h5", False),
    ("/gpfs/x", True), ("/dev/shm/x", True)])
def test_which_file_systems_have_cluster_wide_flock(path, wide):
    assert flock_is_cluster_wide(path, MOUNTS) is wide


def test_check_stops_a_run_whose_output_was_replaced_removed_or_lock_stolen(tmp_path):
    out = tmp_path / "run.h5"
    lock = RunLock.acquire(out)
    out.write_bytes(b"ours")
    lock.bind(out)
    lock.check(out)
    spare = tmp_path / "spare"
    spare.write_bytes(b"theirs")
    os.replace(spare, out)
    with pytest.raises(RunLostError, match="was replaced by another file"):
        lock.check(out)
    lock.bind(out)
    out.unlink()
    with pytest.raises(RunLostError, match="was removed"):
        lock.check(out)
    out.write_bytes(b"ours")
    lock.bind(out)
    lock.path.unlink()         # someone deletes the lock file, and another run takes it
    thief = start_holder(out)
    try:
        with pytest.raises(RunLostError, match=f"lost its lock .* pid {thief.pid}"):
            lock.check(out)
        lock.release()         # not ours any more: left to its owner
        assert owner_of(out)["pid"] == thief.pid
    finally:
        thief.communicate("")
    assert thief.returncode == 0 and not lock_path(out).exists()


# -- pt: every way in is refused while a run is live ---------------------------------------------
def read_run(path):
    """Every dataset, the attributes (config without its `out`) and the current checkpoint."""
    with h5py.File(path, "r", swmr=True) as f:
        d = {k: f[k][()] for k in DATASETS}
        attrs = dict(f.attrs)
        attrs["config"] = {k: v for k, v in yaml.safe_load(attrs["config"]).items() if k != "out"}
        cur = int(f["checkpoint/current"][0])
        ckpt = {k: f[f"checkpoint/slot{cur}/{k}"][()] for k in PTState.names()}
    return d, attrs, ckpt


def assert_same_run(a, b):
    (da, aa, ca), (db, ab, cb) = read_run(a), read_run(b)
    assert aa.keys() == ab.keys()
    for k in aa:
        assert np.array_equal(aa[k], ab[k]) if not isinstance(aa[k], dict) else aa[k] == ab[k], k
    for k in DATASETS:
        assert np.array_equal(da[k], db[k]), f"{k} differs"
    for k in PTState.names():
        assert np.array_equal(ca[k], cb[k]), f"checkpoint {k} differs"


def checkpoint_sweep(path):
    with h5py.File(path, "r", swmr=True) as f:
        return int(f[f"checkpoint/slot{int(f['checkpoint/current'][0])}/position"][0])


def finish_at(done, thermalize=200, sample_every=100, extra=1000):
    """A --sweeps value past a checkpoint at sweep ``done`` (a multiple of sample_every)."""
    return -(-(done - thermalize) // sample_every) * sample_every + extra


@pytest.mark.mpi
def test_a_second_pt_cannot_touch_a_live_run(tmp_path):
    """A 2-rank run is live (rank 0 holds the lock). pt --overwrite, pt --resume and a plain
    pt onto its file all exit 2 naming it; the live run goes on untouched: stopped, resumed
    and finished, its file is bit-identical to an undisturbed run's."""
    out = tmp_path / "live.h5"
    live = subprocess.Popen(pt_cmd(*LONG, "--out", out, ranks=2), env=env(True), cwd=ROOT,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            start_new_session=True)
    try:
        wait_live(out, live)
        # suspended (mpiexec and its ranks: this test's own process group), it stays live,
        # lock held, while the others try, and the undisturbed reference stays short
        os.killpg(live.pid, signal.SIGSTOP)
        second = [pt_cmd("--L", "8", "--replicas", "2", "--tmin", "2.0", "--tmax", "2.6",
                         "--sweeps", "1000", "--out", out, "--overwrite", "--no-progress"),
                  pt_cmd("--out", out, "--resume", "--no-progress"),
                  pt_cmd(*LONG, "--out", out)]
        procs = [subprocess.Popen(c, env=env(), cwd=ROOT, stdout=subprocess.PIPE,
                                  stderr=subprocess.PIPE, text=True) for c in second]
        for p in procs:
            stdout, stderr = p.communicate(timeout=300)
            assert p.returncode == 2, stdout + stderr
            m = re.match(rf"error: {re.escape(str(out))} is in use by a live pt run, pid (\d+) "
                         rf"on host {re.escape(HOST)}, started ", stderr)
            assert m and "Traceback" not in stderr, stderr
        rank0 = int(m.group(1))  # the writing rank holds the lock, not mpiexec
        assert rank0 != live.pid and owner_of(out)["pid"] == rank0
        assert "ising_dist.pt" in Path(f"/proc/{rank0}/cmdline").read_text()
        os.killpg(live.pid, signal.SIGCONT)
        assert live.poll() is None, "the live run ended while the others were refused"
        os.kill(rank0, signal.SIGTERM)   # rank 0 passes the stop request on to rank 1
        stdout, stderr = live.communicate(timeout=120)
    finally:
        if live.poll() is None:
            os.killpg(live.pid, signal.SIGKILL)
            live.wait()
    assert live.returncode == 0 and "stopped at sweep" in stdout, stdout + stderr
    assert not lock_path(out).exists()
    sweeps = finish_at(checkpoint_sweep(out))
    run_pt("--out", out, "--resume", "--sweeps", sweeps, "--no-progress")
    ref = tmp_path / "ref.h5"
    run_pt(*LONG, "--sweeps", sweeps, "--out", ref)
    assert_same_run(out, ref)


def test_a_run_killed_with_sigkill_leaves_a_lock_the_next_run_takes_over(tmp_path):
    out = tmp_path / "killed.h5"
    live = subprocess.Popen(pt_cmd(*LONG, "--out", out), env=env(), cwd=ROOT,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    wait_live(out, live)
    live.kill()
    live.wait()
    assert owner_of(out)["pid"] == live.pid          # left behind, its flock gone
    sweeps = finish_at(checkpoint_sweep(out), extra=100)
    res = run_pt("--out", out, "--resume", "--sweeps", sweeps, "--no-progress")
    assert f"pid {live.pid}" in res.stderr and "taking it over" in res.stderr
    assert "done:" in res.stdout and not lock_path(out).exists()


@pytest.mark.parametrize("how,ranks", [pytest.param("replace", 2, marks=pytest.mark.mpi),
                                       ("remove", None), ("steal", None)])
def test_a_run_whose_output_is_replaced_stops_at_its_next_checkpoint(tmp_path, how, ranks):
    out = tmp_path / "run.h5"
    live = subprocess.Popen(pt_cmd(*LONG, "--out", out, ranks=ranks), env=env(bool(ranks)),
                            cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        wait_live(out, live)
        if how == "replace":
            (tmp_path / "other").write_bytes(b"another run's data")
            os.replace(tmp_path / "other", out)
        elif how == "remove":
            out.unlink()
        else:
            lock_path(out).unlink()
        stdout, stderr = live.communicate(timeout=120)
    finally:
        if live.poll() is None:
            live.kill()
    expected = {"replace": f"{out} was replaced by another file while this run",
                "remove": f"{out} was removed while this run",
                "steal": "this run lost its lock"}[how]
    assert live.returncode != 0 and f"error: {expected}" in stderr, stdout + stderr
    assert "done:" not in stdout and "stopped at sweep" not in stdout, stdout
    if how == "replace":
        assert out.read_bytes() == b"another run's data"  # nothing written into it
    if how == "remove":
        assert not out.exists()


# -- training and search directories --------------------------------------------------------------
@pytest.mark.ray
def test_a_second_training_into_a_live_run_directory_is_refused(tmp_path, tmp_path_factory):
    """While a training runs (in this process), a second one into its --out and a --resume of
    it exit 2 naming it; the live run's metrics equal an undisturbed run's."""
    from ising_dist import train
    from tests.test_data import make_pt_file
    from tests.test_train import cfg_of, start_local_ray, tiny
    pt_file = make_pt_file(tmp_path_factory)
    start_local_ray()
    out, ref = tmp_path / "live", tmp_path / "undisturbed"
    preset = tmp_path / "tiny.yaml"
    preset.write_text(yaml.safe_dump(tiny(pt_file, out)))
    others = [[sys.executable, "-m", "ising_dist.train", "--config", str(preset), "--quiet"],
              [sys.executable, "-m", "ising_dist.train", "--out", str(out), "--resume",
               "--epochs", "5", "--quiet"]]
    results = []

    def contend():  # once the live training holds its directory, two more try it
        deadline = time.time() + 120
        while not (out / ".lock").exists() and time.time() < deadline:
            time.sleep(0.05)
        procs = [subprocess.Popen(c, cwd=ROOT, env=dict(os.environ, PYTHONPATH=str(ROOT)),
                                  stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
                 for c in others]
        results.extend((p.wait(timeout=300), p.stderr.read()) for p in procs)
    watcher = threading.Thread(target=contend)
    watcher.start()
    summary = train.run(cfg_of(tiny(pt_file, out)))
    watcher.join()
    assert summary["epoch"] == 3 and not (out / ".lock").exists()
    for rc, err in results:
        assert rc == 2 and err.startswith(f"error: {out} is in use by a live train run, pid "
                                          f"{os.getpid()} on host {HOST}"), err
        assert "Traceback" not in err
    train.run(cfg_of(tiny(pt_file, ref)))
    rows, expect = train.read_metrics(out), train.read_metrics(ref)
    assert [r["epoch"] for r in rows] == [1, 2, 3]
    for r, q in zip(rows, expect):
        for k in r:
            if k not in ("epoch_time_s", "samples_per_s"):
                assert r[k] == q[k], (k, rows, expect)


def test_a_second_search_into_a_live_search_directory_is_refused(tmp_path):
    out = tmp_path / "search-out"
    holder = start_holder(out, role="tune")   # a live search holds its output directory
    try:
        res = subprocess.run([sys.executable, "-m", "ising_dist.tune", "--config",
                              "configs/tune/demo.yaml", "--out", str(out)], cwd=ROOT,
                             capture_output=True, text=True, timeout=300)
        assert res.returncode == 2 and res.stderr.startswith(
            f"error: {out} is in use by a live tune run, pid {holder.pid}"), res.stderr
        assert [p.name for p in out.iterdir()] == [".lock"]  # the search wrote nothing there
    finally:
        holder.communicate("")


# -- a duplicate Slurm job ------------------------------------------------------------------------
@pytest.mark.slurm
def test_a_duplicate_slurm_job_onto_a_live_output_fails_naming_the_live_job(tmp_path,
                                                                             tmp_path_factory,
                                                                             monkeypatch):
    """Two sbatch slurm/simulate.sh with one --out (the second resumes an existing file by
    itself): the second job fails at once naming the first; the first goes on, and its file,
    stopped by SIGTERM and resumed, equals an undisturbed run's."""
    from tests.slurm_cluster import SlurmCluster
    from tests.test_slurm import sbatch
    slurm = SlurmCluster(tmp_path_factory.mktemp("slurm"))
    out = tmp_path / "dup.h5"
    common = ["configs/pt/demo.yaml", "--out", out, "--exchange-every", "10",
              "--checkpoint-every", "1000000"]
    try:
        slurm.start()
        # long enough never to finish (the native MPI loop runs ~70k sweeps/s here): the
        # first job must still be live when the second starts, however slowly that is
        res, job1, log1 = sbatch(slurm, tmp_path, *common, "--sweeps", "2000000000", wait=False)
        assert res.returncode == 0, res.stderr
        t0 = time.time()
        while not lock_path(out).exists() or not owner_of(out).get("slurm_job_id"):
            assert time.time() - t0 < 180, f"job {job1} never locked {out}"
            time.sleep(0.2)
        res, job2, log2 = sbatch(slurm, tmp_path, *common, "--sweeps", "2000000000")
        text2 = log2.read_text()
        assert res.returncode != 0 and slurm.job_state(job2) == "FAILED", text2
        assert f"error: {out} is in use by a live pt run, pid {owner_of(out)['pid']} on host " \
               f"{HOST}, Slurm job {job1} step 0" in text2 and f"scancel {job1}" in text2, text2
        assert "Traceback" not in text2 and "HDF5 file:" not in text2
        assert slurm.job_state(job1) == "RUNNING"
        # seen from another node, the owner's liveness is its job's state in squeue
        monkeypatch.setenv("SLURM_CONF", slurm.env["SLURM_CONF"])
        elsewhere = dict(owner_of(out), host="another-node")
        assert owner_alive(elsewhere) is True
        slurm.run("scancel", "--signal=TERM", job1)
        t0 = time.time()
        while slurm.job_state(job1) in ("RUNNING", "COMPLETING") and time.time() - t0 < 120:
            time.sleep(0.5)
        text1 = log1.read_text()
        assert "stopped at sweep" in text1 and slurm.job_state(job1) == "COMPLETED", text1
        assert owner_alive(elsewhere) is False
    finally:
        slurm.stop()
    sweeps = finish_at(checkpoint_sweep(out), thermalize=1000, sample_every=4, extra=2000)
    run_pt("--out", out, "--resume", "--sweeps", sweeps, "--no-progress")
    ref = tmp_path / "ref.h5"
    run_pt("--config", common[0], *map(str, common[3:]), "--sweeps", sweeps, "--no-progress",
           "--out", ref)
    assert_same_run(out, ref)
