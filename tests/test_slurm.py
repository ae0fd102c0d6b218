"""slurm/simulate.sh on a real one-node Slurm: sbatch, srun --mpi=pmi2, SIGTERM, requeue."""

import subprocess
import time
from pathlib import Path

import h5py
import pytest

from tests.slurm_cluster import SlurmCluster
from tests.test_pt import assert_same_data, read_all, run_pt
from tests.test_train import BIN, _own_lines, local_ray_head, session_pids

ROOT = Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.slurm


@pytest.fixture(scope="module")
def slurm(tmp_path_factory):
    cluster = SlurmCluster(tmp_path_factory.mktemp("slurm"))
    try:
        cluster.start()
        yield cluster
    finally:
        cluster.stop()


def sbatch(slurm, tmp_path, *args, wait=True, ntasks=4):
    cmd = ["sbatch", "--parsable", f"--ntasks={ntasks}", f"--output={tmp_path}/job-%j.out"]
    if wait:
        cmd.append("--wait")
    res = slurm.run(*cmd, "slurm/simulate.sh", *args, cwd=ROOT, check=False)
    job = res.stdout.strip().split(";")[0]
    log = tmp_path / f"job-{job}.out"
    return res, job, log


def test_sbatch_simulate_writes_a_valid_file_with_4_ranks(slurm, tmp_path):
    out = tmp_path / "sim.h5"
    res, job, log = sbatch(slurm, tmp_path, "configs/pt/demo.yaml", "--out", out,
                           "--sweeps", "400")
    text = log.read_text()
    assert res.returncode == 0, text + res.stderr
    assert "on 4 rank(s)" in text and f"HDF5 file: {out}" in text
    with h5py.File(out, "r") as f:
        assert f.attrs["schema_version"] == 1 and f["spins"].shape == (8, 100, 16, 16)
    # the same run without Slurm or MPI gives the same file: srun really formed one MPI job
    ref = tmp_path / "ref.h5"
    run_pt("--config", "configs/pt/demo.yaml", "--sweeps", "400", "--no-progress", "--out", ref)
    assert_same_data(read_all(ref), read_all(out))


def test_scancel_term_checkpoints_and_resubmission_resumes(slurm, tmp_path):
    out = tmp_path / "long.h5"
    common = ["configs/pt/demo.yaml", "--out", out, "--exchange-every", "10",
              "--checkpoint-every", "1000000"]
    # a run far too long to finish: it is stopped by SIGTERM once it streams samples
    res, job, log = sbatch(slurm, tmp_path, *common, "--sweeps", "2000000", wait=False)
    assert res.returncode == 0, res.stderr
    t0 = time.time()
    while time.time() - t0 < 180:
        try:
            with h5py.File(out, "r", swmr=True) as f:
                if f["spins"].shape[1] > 0:
                    break
        except (OSError, KeyError):
            pass
        time.sleep(0.2)
    slurm.run("scancel", "--signal=TERM", job)
    t0 = time.time()
    while slurm.job_state(job) in ("RUNNING", "PENDING", "COMPLETING") and time.time() - t0 < 120:
        time.sleep(0.5)
    text = log.read_text()
    assert "stopped at sweep" in text and slurm.job_state(job) == "COMPLETED", text
    with h5py.File(out, "r") as f:
        cur = f["checkpoint/current"][0]
        done = int(f[f"checkpoint/slot{cur}/position"][0])
        assert 1000 < done < 2001000
    # resubmitting resumes the file; finish 2000 sweeps past the checkpoint
    sweeps = str(done - 1000 + 2000)
    res, job2, log2 = sbatch(slurm, tmp_path, *common, "--sweeps", sweeps)
    text2 = log2.read_text()
    assert res.returncode == 0 and "resuming" in text2 and "done:" in text2, text2
    ref = tmp_path / "ref.h5"
    run_pt("--config", common[0], *map(str, common[3:]), "--sweeps", sweeps, "--no-progress",
           "--out", ref)
    assert_same_data(read_all(ref), read_all(out))


def _pids_with_arg(text):
    """Live processes whose command line contains ``text``."""
    found = set()
    for cmdline in Path("/proc").glob("[0-9]*/cmdline"):
        try:
            if text.encode() in cmdline.read_bytes():
                found.add(int(cmdline.parent.name))
        except OSError:
            pass
    return found


def test_sbatch_train_trains_through_its_own_ray_and_leaves_other_rays_running(slurm, tmp_path):
    """Issue 11 case 4: another Ray of the same user runs on the node the whole time (a head
    with its worker processes, as a second training would have); the job starts its own
    cluster, trains, and stops exactly that cluster, never `ray stop` (which stops them all)."""
    pt = tmp_path / "pt.h5"
    run_pt("--config", "configs/pt/demo.yaml", "--no-progress", "--out", pt)
    run = tmp_path / "run"
    with local_ray_head(tmp_path / "other-ray.log") as other:
        before = session_pids(other.proc.pid)
        assert len(before) >= 3, before          # ray start, GCS, raylet, …
        res = slurm.run("sbatch", "--parsable", "--wait", f"--output={tmp_path}/train-%j.out",
                        "slurm/train.sh", "train", "configs/train/demo.yaml", "--data", pt,
                        "--out", run, "--epochs", "2", cwd=ROOT, check=False)
        job = res.stdout.strip().split(";")[0]
        text = (tmp_path / f"train-{job}.out").read_text()
        assert res.returncode == 0, text
        assert "Ray head on" in text and (run / "model.pt").is_file(), text
        assert len((run / "metrics.csv").read_text().strip().splitlines()) == 3  # 2 epochs
        # the other Ray: every process it had is alive, and it still answers
        gone = before - session_pids(other.proc.pid)
        assert not gone and other.proc.poll() is None, (gone, text)
        for _ in range(30):                     # its autoscaler reports every few seconds
            status = subprocess.run([str(BIN / "ray"), "status", "--address", other.gcs],
                                    env=other.env, capture_output=True, text=True, timeout=60)
            if "/2.0 CPU" in status.stdout:
                break
            time.sleep(1)
        assert status.returncode == 0 and "/2.0 CPU" in status.stdout, (
            status.stdout + status.stderr)
    # the job's own Ray (its private temp dir is on every command line) is gone
    t0 = time.time()
    while _pids_with_arg(f"/tmp/ray-job{job}/") and time.time() - t0 < 30:
        time.sleep(0.5)
    assert not _pids_with_arg(f"/tmp/ray-job{job}/")
    assert not Path(f"/tmp/ray-job{job}").exists()


def test_scancel_term_stops_training_at_a_checkpoint_and_resubmission_resumes(slurm, tmp_path):
    """Issue 13: SIGTERM to the job's batch script — what `#SBATCH --signal=B:TERM@120` sends
    before the time limit, here `scancel --batch --signal=TERM` — reaches the training driver,
    which ends the run at the checkpoint of the epoch in progress, prints the --resume command
    and exits 0 (the job COMPLETED). Resubmitted with --resume, the run ends as an
    uninterrupted one (run here without Ray: a LocalSession trains as a 1-worker Ray run)."""
    import yaml

    from ising_dist import config as cfgmod
    from ising_dist import train
    from tests.test_data import PT_ARGS
    from tests.test_train import tiny

    pt = tmp_path / "pt.h5"
    run_pt("--config", "configs/pt/demo.yaml", *PT_ARGS, "--out", pt)
    run = tmp_path / "run"
    preset = tmp_path / "tiny.yaml"
    preset.write_text(yaml.safe_dump(tiny(pt, run)))
    def submit(*args, wait=False):
        return slurm.run("sbatch", "--parsable", *(["--wait"] if wait else []),
                         f"--output={tmp_path}/train-%j.out", "slurm/train.sh", "train", preset,
                         *args, cwd=ROOT, check=not wait)
    res = submit("--epochs", "1000")
    job = res.stdout.strip().split(";")[0]
    log = tmp_path / f"train-{job}.out"
    try:
        t0 = time.time()
        while not (run / "checkpoint_0002" / "trainer.pt").is_file():
            ended = slurm.job_state(job) in ("COMPLETED", "FAILED", "CANCELLED", "TIMEOUT")
            assert not ended and time.time() - t0 < 400, log.read_text() if log.exists() else job
            time.sleep(0.2)
        slurm.run("scancel", "--batch", "--signal=TERM", job)
        t0 = time.time()
        while (slurm.job_state(job) in ("RUNNING", "PENDING", "COMPLETING")
               and time.time() - t0 < 180):
            time.sleep(0.5)
    finally:   # a job left running would outlive the test's Slurm (its steps keep running)
        if slurm.job_state(job) in ("RUNNING", "PENDING"):
            slurm.run("scancel", job, check=False)
    text = log.read_text()
    assert slurm.job_state(job) == "COMPLETED", text
    last = train.checkpoints(run)[-1]
    done = train.load_state(last)["epoch"]
    assert 2 <= done < 1000 and not (run / "model.pt").exists(), text
    assert (f"stopped after epoch {done}/1000 with a checkpoint; continue with:\n"
            f"  python -m ising_dist.train --out {run} --resume") in text, text
    assert "Traceback" not in _own_lines(text), text   # (Ray's actors may log their own)

    # resubmitted with --resume: two epochs more
    epochs = str(done + 2)
    res = submit("--epochs", epochs, "--resume", wait=True)
    job2 = res.stdout.strip().split(";")[0]
    text2 = (tmp_path / f"train-{job2}.out").read_text()
    assert res.returncode == 0 and f"resuming after epoch {done}" in text2, text2
    assert f"done: {epochs} epochs" in text2, text2
    ref = tmp_path / "ref"
    train.run(cfgmod.from_dict(train.TrainConfig, tiny(pt, ref, epochs=done + 2)), local=True)
    rows, expect = train.read_metrics(run), train.read_metrics(ref)
    assert [r["epoch"] for r in rows] == list(range(1, done + 3))
    for r, q in zip(rows, expect):
        for k in ("train_total", "val_recon", "val_kl", "val_total"):
            assert r[k] == pytest.approx(q[k], rel=1e-5), (k, rows, expect)
    assert done in train.load_state(train.checkpoints(run)[-1])["resumed_at"]
