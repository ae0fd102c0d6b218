"""Domain decomposition (issue 14): --ranks-per-replica k splits each lattice into k strips
of rows over k MPI ranks. Real mpiexec, real HDF5 files read back: the runs equal the
one-rank run bit for bit, through checkpoints, kill -9, SIGTERM and resume on another P."""

import os
import random
import signal
import subprocess
import time

import h5py
import numpy as np
import pytest
import yaml

from ising_dist import kernels
from ising_dist.domain import StripChains
from ising_dist.engine import Chains
from ising_dist.mpi import SerialComm
from tests.test_pt import (ROOT, assert_same_data, env, pt_cmd, read_all, run_pt,
                           wait_for_checkpoint)

# L = 16 over up to 4 ranks: strips of 4 rows; exchanges, samples and checkpoints every few
# sweeps, so every operation meets the strips many times
BASE = ["--L", "16", "--tmin", "2.2", "--tmax", "2.4", "--thermalize", "60", "--sample-every",
        "4", "--exchange-every", "2", "--checkpoint-every", "50", "--seed", "9", "--backend",
        "numba", "--no-progress"]


def checkpoint_position(path):
    """(sweep, samples) of the run file's current checkpoint."""
    with h5py.File(path, "r", swmr=True) as f:
        return tuple(int(v) for v in f[f"checkpoint/slot{f['checkpoint/current'][0]}/position"])


def test_a_strip_of_the_whole_lattice_is_the_whole_lattice_sweep():
    """One rank holding all L rows as one strip (kernels._update_row row by row, halos
    exchanged with itself) advances exactly as engine.Chains: lattices, energies,
    magnetizations."""
    L, ids, betas = 12, [3, 5], np.array([0.3, 0.5])
    whole = Chains.create(L, 4, ids, backend="numba")
    strip = StripChains.create(L, 4, ids, SerialComm())
    whole.advance(betas, 37, 11)
    strip.advance(betas, 37, 11)
    assert np.array_equal(strip.spins, whole.spins)
    assert np.array_equal(strip.energy, whole.energy)
    assert np.array_equal(strip.magnet, whole.magnet)
    em = np.array([kernels.energy_magnetization(s) for s in whole.spins])
    assert np.array_equal(em[:, 0], strip.energy) and np.array_equal(em[:, 1], strip.magnet)
    with pytest.raises(ValueError, match="cluster moves across domains"):
        strip.advance(betas, 1, 0, "wolff")


@pytest.mark.mpi
@pytest.mark.parametrize("ranks,k,replicas,extra", [
    (4, 2, 2, []),
    (8, 4, 2, []),
    # two groups of two ranks with two replicas each; the adaptive ladder moves, and the
    # writer stores it at the end of thermalization
    (4, 2, 4, ["--ladder", "adaptive", "--adapt-every", "3"]),
])
def test_strips_equal_the_one_rank_run_bit_for_bit(tmp_path, ranks, k, replicas, extra):
    args = [*BASE, "--replicas", replicas, "--sweeps", "200", *extra]
    ref, out = tmp_path / "one.h5", tmp_path / "strips.h5"
    run_pt(*args, "--out", ref)
    res = run_pt(*args, "--ranks-per-replica", k, "--out", out, ranks=ranks)
    assert f"on {ranks} rank(s)" in res.stdout and "strips" in res.stdout
    a, b = read_all(ref), read_all(out)
    assert a["spins"].shape == (replicas, 50, 16, 16)
    assert_same_data(a, b)
    # something happened: exchanges were accepted, lattices changed between samples
    assert b["exchange/accepted"].sum() > 0 and not np.array_equal(b["spins"][:, 0],
                                                                  b["spins"][:, -1])
    with h5py.File(out, "r") as f:
        cur = f["checkpoint/current"][0]
        assert f[f"checkpoint/slot{cur}/spins"].shape == (replicas, 16, 16)  # whole lattices
        assert np.array_equal(f[f"checkpoint/slot{cur}/spins"][()],
                              h5py.File(ref, "r")[f"checkpoint/slot{cur}/spins"][()])


@pytest.mark.mpi
def test_kill9_of_a_strip_run_then_resume_on_one_rank_equals_uninterrupted(tmp_path):
    # long enough to be killed in the middle (strips run the Python loop: ~100 sweeps/s
    # here); the one-rank resume finishes it in compiled code, with rare checkpoints (their
    # cadence does not change the data)
    args = [*BASE, "--replicas", "2", "--sweeps", "100000", "--sample-every", "100"]
    rare = ["--checkpoint-every", "50000"]
    ref, out = tmp_path / "ref.h5", tmp_path / "killed.h5"
    run_pt(*args, *rare, "--out", ref)
    proc = subprocess.Popen(pt_cmd(*args, "--checkpoint-every", 300, "--ranks-per-replica", 2,
                                   "--out", out, ranks=4),
                            env=env(True), cwd=ROOT, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL, start_new_session=True)
    wait_for_checkpoint(out, proc)
    time.sleep(random.Random(1).uniform(0.0, 1.0))
    os.killpg(proc.pid, signal.SIGKILL)  # mpiexec and every rank, at an arbitrary moment
    proc.wait()
    done, n = checkpoint_position(out)
    assert 60 < done < 100060  # killed after a checkpoint of the strips, before the end
    with h5py.File(out, "r", swmr=True) as f, h5py.File(ref, "r") as r:
        assert np.array_equal(f["spins"][:, :n], r["spins"][:, :n])
    res = run_pt("--out", out, "--resume", "--no-progress", *rare, ranks=1)
    assert "done" in res.stdout and "on 1 rank(s)" in res.stdout
    assert_same_data(read_all(ref), read_all(out))


@pytest.mark.mpi
def test_sigterm_stops_a_strip_run_with_a_checkpoint(tmp_path):
    args = [*BASE, "--replicas", "2", "--sweeps", "100000", "--sample-every", "100",
            "--checkpoint-every", "10000000"]
    out = tmp_path / "term.h5"
    proc = subprocess.Popen(pt_cmd(*args, "--ranks-per-replica", 2, "--out", out, ranks=4),
                            env=env(True), cwd=ROOT, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    t0 = time.time()
    while not out.exists() and time.time() - t0 < 120:
        time.sleep(0.05)
    time.sleep(3.0)
    proc.send_signal(signal.SIGTERM)  # mpiexec forwards it to every rank
    stdout, stderr = proc.communicate(timeout=120)
    assert proc.returncode == 0, stderr
    assert "stopped at sweep" in stdout and "--resume" in stdout
    done, _ = checkpoint_position(out)
    with h5py.File(out, "r") as f:  # closed cleanly: opens without swmr
        assert 0 < done < 100060 and f.attrs["sweeps_done"] == done
    run_pt("--out", out, "--resume", "--no-progress")
    ref = tmp_path / "ref.h5"
    run_pt(*args, "--out", ref)
    assert_same_data(read_all(ref), read_all(out))


@pytest.mark.mpi
def test_a_one_rank_run_resumes_into_strips(tmp_path):
    """A checkpoint holds whole lattices: a run made on one rank continues as strips on 4
    ranks (extended by more production sweeps) and equals the one-rank run of that length."""
    args = [*BASE, "--replicas", "2"]
    ref, out = tmp_path / "ref.h5", tmp_path / "grown.h5"
    run_pt(*args, "--sweeps", "320", "--out", ref)
    run_pt(*args, "--sweeps", "160", "--out", out)
    run_pt("--out", out, "--resume", "--sweeps", "320", "--ranks-per-replica", 2,
           "--no-progress", ranks=4)
    assert_same_data(read_all(ref), read_all(out))


@pytest.mark.mpi
@pytest.mark.parametrize("ranks,args,message", [
    (3, ["--ranks-per-replica", "2"],
     "3 MPI ranks with ranks_per_replica=2: each replica's lattice is split over k ranks, so "
     "the rank count must be a multiple of 2; use -n 2 or -n 4"),
    (6, ["--ranks-per-replica", "2"],
     "replicas=2 < 6 MPI ranks / ranks_per_replica=2: every group of 2 ranks needs a "
     "replica; use --replicas 3 or -n 4"),
    (4, ["--ranks-per-replica", "1"],
     "replicas=2 < 4 MPI ranks: every rank needs a replica; use --replicas 4 or fewer "
     "ranks (or --ranks-per-replica 2: each lattice split over 2 ranks)"),
    (3, [], "3 MPI ranks for replicas=2: with more ranks than replicas each lattice is split "
            "over P/R ranks, so P must be a multiple of R; use -n 2 or -n 4, or --replicas 3"),
    (4, ["--algorithm", "wolff"],
     "algorithm=wolff with ranks_per_replica=2: cluster moves across domains are a later step"),
    (None, ["--ranks-per-replica", "3"],
     "ranks_per_replica=3 with L=16: each rank takes L/k rows, which must be a whole number "
     ">= 2; use --ranks-per-replica 2 or 4"),
    (None, ["--ranks-per-replica", "16"], "ranks_per_replica=16 with L=16"),
    (None, ["--ranks-per-replica", "2", "--algorithm", "wolff"],
     "algorithm=wolff with ranks_per_replica=2: cluster moves across domains are a later step"),
    (None, ["--ranks-per-replica", "2", "--algorithm", "hybrid"],
     "algorithm=hybrid with ranks_per_replica=2: cluster moves across domains are a later "
     "step"),
    (None, ["--ranks-per-replica", "2", "--backend", "native"],
     "backend=native with ranks_per_replica=2"),
    (None, ["--ranks-per-replica", "2", "--writer", "collective"],
     "writer=collective with ranks_per_replica=2"),
    (None, ["--ranks-per-replica", "0"], "ranks_per_replica=0: must be >= 1"),
])
def test_layouts_that_cannot_run_are_refused(tmp_path, ranks, args, message):
    out = tmp_path / "bad.h5"
    res = run_pt(*BASE, "--replicas", "2", "--sweeps", "100", *args, "--out", out,
                 ranks=ranks, check=False)
    assert res.returncode == 2 and message in res.stderr, res.stderr
    assert "Traceback" not in res.stderr + res.stdout and not out.exists()


@pytest.mark.mpi
def test_more_ranks_than_replicas_split_the_lattices_by_themselves(tmp_path):
    """Issue 14: with R given and P > R, k = P / R without the flag; the stored config
    records it, and the file equals the one-rank run's."""
    args = [*BASE, "--replicas", "2", "--sweeps", "160"]
    ref, out = tmp_path / "ref.h5", tmp_path / "auto.h5"
    run_pt(*args, "--out", ref)
    run_pt(*args, "--out", out, ranks=4)
    with h5py.File(out, "r") as f:
        assert yaml.safe_load(f.attrs["config"])["ranks_per_replica"] == 2
    assert_same_data(read_all(ref), read_all(out))
