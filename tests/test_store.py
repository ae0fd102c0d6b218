"""Recovery of a run file: cutting back to the checkpoint, after a killed writer, after
writes failed on a full disk (also under mpiexec). Real files, real subprocesses."""

import fcntl
import os
import re
import subprocess
import sys
import time
from pathlib import Path

import h5py
import numpy as np
import pytest

from ising_dist.store import chunk_samples
from ising_dist.writers import RunWriter
from tests.test_writers import (assert_file_holds, checkpoint_state, create, feed, join,
                                make_samples, take)

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.parametrize("compress", [True, False])
def test_resume_mid_chunk_equals_an_uninterrupted_writer(tmp_path, compress):
    """Checkpoint mid-chunk, write more (flushed and not), reopen: cut back to the checkpoint,
    and continuing gives the file one writer would have written."""
    L, R = 8, 3
    cs = chunk_samples(L)                      # 1024
    rng = np.random.default_rng(11)
    first, lost, rest = (make_samples(rng, n, R, L, start=a) for n, a in
                         ((cs + 300, 0), (500, cs + 300), (cs + 50, cs + 300)))
    path = tmp_path / "resumed.h5"
    w = create(path, L, R, compress)
    feed(w, first, rng, flush_prob=0.1)
    w.checkpoint(checkpoint_state(R, L, 99))
    feed(w, take(lost, 0, 400), rng, flush_prob=0.1)
    w.flush()
    feed(w, take(lost, 400, 500), rng)
    w.close()
    w, ckpt = RunWriter.reopen(path)
    assert list(ckpt["position"]) == [99, cs + 300] and w.n_samples == cs + 300
    feed(w, rest, rng, flush_prob=0.1)
    w.close()

    ref = tmp_path / "straight.h5"
    w = create(ref, L, R, compress)
    feed(w, join(first, rest), rng, flush_prob=0.1)
    w.close()
    assert_file_holds(path, join(first, rest))
    assert_file_holds(ref, join(first, rest))
    with h5py.File(path, "r") as f, h5py.File(ref, "r") as g:
        assert (f["spins"].compression, f["spins"].scaleoffset) == \
            (g["spins"].compression, g["spins"].scaleoffset) == (None, 0 if compress else None)


KILLED_WRITER = """
import os, sys
import numpy as np
from ising_dist.writers import RunWriter
sys.path.insert(0, {tests!r})
from test_writers import checkpoint_state, feed, make_samples, take
L, R = 8, 3
rng = np.random.default_rng(5)
s = make_samples(rng, 1500, R, L)
w = RunWriter.create({path!r}, "L: 8\\n", L, 1, np.linspace(1.5, 3.0, R), compress={compress})
feed(w, take(s, 0, 1100), rng, flush_prob=0.1)
w.checkpoint(checkpoint_state(R, L, 7))
feed(w, take(s, 1100, 1500), rng, flush_prob=0.1)
w.flush()
os._exit(0)   # killed: no close, HDF5's "open for writing" flag stays set
"""


def run_writer_script(script, path, **fields):
    """Run a writer script (using this module's helpers) in a process of its own."""
    return subprocess.run([sys.executable, "-c", script.format(
        tests=str(ROOT / "tests"), path=str(path), **fields)], cwd=ROOT, capture_output=True,
        text=True, env=dict(os.environ, PYTHONPATH=str(ROOT)))


def assert_resumes_at(path, S, R, L, n):
    """``path`` was written by a script from make_samples(default_rng(5), S, R, L) with a
    checkpoint after n samples: reopening cuts it to those n, and appending continues them."""
    rng = np.random.default_rng(5)
    s = make_samples(rng, S, R, L)
    more = make_samples(rng, 200, R, L, start=n)
    w, ckpt = RunWriter.reopen(path)
    assert ckpt["position"][1] == n
    feed(w, more, rng, flush_prob=0.1)
    w.close()
    assert_file_holds(path, join(take(s, 0, n), more))


@pytest.mark.parametrize("compress", [True, False])
def test_resume_after_a_killed_writer(tmp_path, compress):
    path = tmp_path / "killed.h5"
    res = run_writer_script(KILLED_WRITER, path, compress=compress)
    assert res.returncode == 0, res.stderr
    assert_resumes_at(path, 1500, 3, 8, 1100)


FAILED_WRITER = """
import resource, sys
import numpy as np
from ising_dist.writers import RunWriter
sys.path.insert(0, {tests!r})
from test_writers import checkpoint_state, feed, make_samples, take
L, R = 32, 4
rng = np.random.default_rng(5)
s = make_samples(rng, 600, R, L)
w = RunWriter.create({path!r}, "L: 32\\n", L, 1, np.linspace(1.5, 3.0, R))
w.flush_seconds = 1e9  # flushes only where asked: the same file layout every time
feed(w, take(s, 0, 200), rng)
w.checkpoint(checkpoint_state(R, L, 7))
resource.setrlimit(resource.RLIMIT_FSIZE, (600_000, 600_000))  # the disk fills up
feed(w, take(s, 200, 600), rng, flush_prob=0.1)
w.flush()
"""


def test_resume_after_writes_failed_on_a_full_disk(tmp_path):
    """An unhandled write error (here: a file-size limit) whose clean-up still flushed HDF5's
    superblock leaves a file shorter than it records, which HDF5 refuses to open; resuming
    pads it back and cuts to the checkpoint."""
    path = tmp_path / "full.h5"
    res = run_writer_script(FAILED_WRITER, path)
    assert res.returncode != 0 and "File too large" in res.stderr, res.stderr
    with pytest.raises(OSError, match="truncated file"):
        h5py.File(path, "r")
    assert_resumes_at(path, 600, 4, 32, 200)


# -- a failed write under mpiexec: the error, then nothing ------------------------------------
FULL_DISK_UNDER_MPI = """
import resource, sys
from mpi4py import MPI  # MPI (and its shared memory) first: the limit is on the output only
resource.setrlimit(resource.RLIMIT_FSIZE, (2_000_000, 2_000_000))  # the disk fills up
from ising_dist.pt import main
sys.exit(main(sys.argv[1:]))
"""


@pytest.mark.mpi
def test_a_failed_write_under_mpiexec_claims_only_the_checkpoint_on_disk(tmp_path):
    """Writes fail on rank 0 of a 2-rank run: it prints the error naming the last checkpoint
    on disk and aborts. MPI_Abort returns for a moment with MPICH, and rank 0 used to go on to
    print "stopped at sweep … with a checkpoint" for a checkpoint never written: after the
    error nothing more comes. The file then resumes to an uninterrupted run's, bit for bit."""
    from tests.test_pt import BIN, SMALL, assert_same_data, env, read_all, run_pt
    args = [*SMALL, "--L", "32", "--replicas", "4", "--sweeps", "4000", "--sample-every", "1",
            "--checkpoint-every", "250"]  # about 4.5 MB of samples
    out = tmp_path / "full.h5"
    res = subprocess.run([str(BIN / "mpiexec"), "-n", "2", sys.executable, "-c",
                          FULL_DISK_UNDER_MPI, *args, "--out", str(out)], env=env(True),
                         cwd=ROOT, capture_output=True, text=True, timeout=600)
    m = re.search(r"failed: File too large\.\nThe file keeps every sample up to its last "
                  r"checkpoint, at sweep (\d+)\. Make room", res.stderr)
    assert res.returncode != 0 and m, res.stdout + res.stderr
    assert "stopped at sweep" not in res.stdout and "done:" not in res.stdout, res.stdout
    assert "output:" not in res.stdout and "Traceback" not in res.stderr
    # the output's lock is left as the abort found it: rank 0 did not go on (in ~9 runs of 10
    # it did, and released it, though mpiexec mostly dropped what it printed meanwhile)
    lock = out.with_name("full.h5.lock")
    assert lock.exists(), "rank 0 went on after MPI_Abort"
    with open(lock) as fh:  # mpiexec may return a moment before rank 0 is gone
        t0 = time.time()
        while True:
            try:
                fcntl.flock(fh, fcntl.LOCK_SH | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                assert time.time() - t0 < 60, "rank 0 lives on after MPI_Abort"
                time.sleep(0.05)
    claimed = int(m.group(1))
    assert 0 < claimed < 4200
    w, ckpt = RunWriter.reopen(out)  # (pads a file cut short by the failed write)
    w.close()
    assert int(ckpt["position"][0]) == claimed
    run_pt("--out", out, "--resume", "--no-progress")
    ref = tmp_path / "ref.h5"
    run_pt(*args, "--out", ref)
    assert_same_data(read_all(ref), read_all(out))
