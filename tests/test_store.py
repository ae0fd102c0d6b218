"""RunWriter streaming /spins through its own scale-offset encoder: real files, real h5dump,
a real concurrent SWMR reader."""

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

from ising_dist.store import (CHECKPOINT_FIELDS, LIBVER, RunWriter, _chunk_samples,
                              _encoded_nbytes, encode_scaleoffset_int8)

ROOT = Path(__file__).resolve().parents[1]
H5DUMP = "/usr/bin/h5dump"
SMALL = ("energy", "magnetization", "replica", "sweep")


def random_spins(rng, shape):
    return (2 * rng.integers(0, 2, shape) - 1).astype(np.int8)


def hdf5_encoded(path, values):
    """The chunk HDF5 itself writes for ``values`` (one chunk, scale-offset filter)."""
    with h5py.File(path, "w", libver=LIBVER) as f:
        # (an extensible dataset, like /spins: h5py cannot read back HDF5's single-chunk index)
        d = f.create_dataset("x", data=values, chunks=values.shape, scaleoffset=0,
                             maxshape=(None,) + values.shape[1:])
        mask, raw = d.id.read_direct_chunk((0,) * values.ndim)
    assert mask == 0
    return raw


def ours(values):
    dst = np.zeros(_encoded_nbytes(values.size), np.uint8)
    assert encode_scaleoffset_int8(values.reshape(-1), dst) == dst.size
    return bytes(dst)


@pytest.mark.parametrize("n", [4, 8, 7, 128, 1024 * 16, _chunk_samples(6) * 36,
                               _chunk_samples(64) * 64 * 64])
def test_encoder_matches_hdf5_byte_for_byte(tmp_path, n):
    rng = np.random.default_rng(n)
    values = random_spins(rng, n)
    values[:2] = [-1, 1]  # both values present: HDF5 picks minbits=2 as we do
    raw = hdf5_encoded(tmp_path / "ref.h5", values)
    assert len(raw) == _encoded_nbytes(n) == 21 + n * 2 // 8 + 1
    assert ours(values) == raw


def write_and_read_one_chunk(path, values):
    """Write our encoding of ``values`` as the only chunk of a scale-offset dataset; read the
    dataset back through HDF5's decoder."""
    with h5py.File(path, "w", libver=LIBVER) as f:
        d = f.create_dataset("spins", shape=values.shape, dtype=np.int8, chunks=values.shape,
                             scaleoffset=0)
        d.id.write_direct_chunk((0, 0, 0, 0), ours(values), filter_mask=0)
    with h5py.File(path, "r") as f:
        return f["spins"][()]


@pytest.mark.parametrize("value", [1, -1])
def test_uniform_chunks_read_back(tmp_path, value):
    """HDF5 would store a one-valued chunk with minbits=1; our minbits=2 chunk reads the same."""
    L, cs = 4, 8
    values = np.full((1, cs, L, L), value, np.int8)
    assert ours(values) != hdf5_encoded(tmp_path / "ref.h5", values)
    assert np.array_equal(write_and_read_one_chunk(tmp_path / "uniform.h5", values), values)


def test_padding_value_zero_reads_back_as_unwritten(tmp_path):
    values = random_spins(np.random.default_rng(0), (1, 8, 2, 2))
    values[0, 5:] = 0
    assert np.array_equal(write_and_read_one_chunk(tmp_path / "pad.h5", values), values)


# -- RunWriter ------------------------------------------------------------------------------
def make_samples(rng, S, R, L, start=0):
    return dict(sweep=np.arange(start, start + S, dtype=np.int64) * 3 + 7,
                spins=random_spins(rng, (S, R, L, L)),
                energy=rng.normal(size=(S, R)), magnet=rng.normal(size=(S, R)),
                replica=rng.integers(0, R, (S, R)).astype(np.int32))


def take(s, a, b):
    return {k: v[a:b] for k, v in s.items()}


def join(*parts):
    return {k: np.concatenate([p[k] for p in parts]) for k in parts[0]}


def feed(w, s, rng, flush_prob=0.0):
    """Append ``s`` through a random mix of append and append_block (passing reused
    buffers, which the writer must copy), with flushes at random points."""
    S, i = len(s["sweep"]), 0
    scratch = np.empty_like(s["spins"][0])
    while i < S:
        if rng.random() < 0.4:
            scratch[...] = s["spins"][i]
            w.append(s["sweep"][i], scratch, s["energy"][i], s["magnet"][i], s["replica"][i])
            scratch[...] = 0  # the writer holds a copy
            i += 1
        else:
            k = min(S - i, int(rng.integers(1, 40)))
            block = s["spins"][i:i + k].copy()
            w.append_block(s["sweep"][i:i + k], block, s["energy"][i:i + k],
                           s["magnet"][i:i + k], s["replica"][i:i + k])
            block[...] = 0
            i += k
        if rng.random() < flush_prob:
            w.flush()


def assert_file_holds(path, s):
    with h5py.File(path, "r", swmr=True) as f:
        assert_holds(f, s)


def assert_holds(f, s):
    assert np.array_equal(f["spins"][()], s["spins"].swapaxes(0, 1))
    assert np.array_equal(f["energy"][()], s["energy"].T)
    assert np.array_equal(f["magnetization"][()], s["magnet"].T)
    assert np.array_equal(f["replica"][()], s["replica"].T)
    assert np.array_equal(f["sweep"][()], s["sweep"])


def create(path, L, R, compress=True):
    return RunWriter.create(path, f"L: {L}\n", L, 1, np.linspace(1.5, 3.0, R), overwrite=True,
                            compress=compress)


@pytest.mark.parametrize("L,R,S", [(4, 3, 2500), (6, 2, 1900), (64, 4, 85)])
def test_writer_round_trips_samples(tmp_path, L, R, S):
    cs = _chunk_samples(L)
    assert S % cs and S > cs                   # a full chunk row and a partial last one
    rng = np.random.default_rng(L)
    s = make_samples(rng, S, R, L)
    path = tmp_path / "run.h5"
    w = create(path, L, R)
    assert w.f["spins"].chunks == (1, cs, L, L)
    feed(w, take(s, 0, S // 2), rng, flush_prob=0.2)
    w.flush()                                   # mid-chunk: the file holds exactly these
    with h5py.File(path, "r", swmr=True) as f:  # (same process: shares the writer's file)
        assert_holds(f, take(s, 0, S // 2))
    feed(w, take(s, S // 2, S), rng, flush_prob=0.05)
    assert w.n_samples == S
    w.close()
    assert_file_holds(path, s)
    with h5py.File(path, "r") as f:             # the format is unchanged
        d = f["spins"]
        assert d.dtype == np.int8 and d.shape == (R, S, L, L) and d.chunks == (1, cs, L, L)
        assert d.scaleoffset == 0 and d.compression is None and d.maxshape == (R, None, L, L)


def h5dump_values(path, dataset):
    out = subprocess.run([H5DUMP, "-d", dataset, "-y", "-w", "0", str(path)], check=True,
                         capture_output=True, text=True).stdout
    data = out[out.index("DATA {"):]
    return np.array([int(x) for x in re.findall(r"-?\d+", data)])


@pytest.mark.skipif(not os.path.exists(H5DUMP), reason="needs Debian's hdf5-tools (h5dump)")
def test_h5dump_reads_the_spins(tmp_path):
    L, R, S = 4, 2, 1030                        # one full chunk row (1024) and a partial one
    rng = np.random.default_rng(3)
    s = make_samples(rng, S, R, L)
    path = tmp_path / "run.h5"
    w = create(path, L, R)
    feed(w, s, rng, flush_prob=0.1)
    w.close()
    values = h5dump_values(path, "/spins")
    assert np.array_equal(values, s["spins"].swapaxes(0, 1).reshape(-1))
    assert np.array_equal(h5dump_values(path, "/sweep"), s["sweep"])


def checkpoint_state(R, L, sweep):
    state = {name: np.zeros(shape(R, L), dtype) for name, (dtype, shape) in
             CHECKPOINT_FIELDS.items()}
    state["position"] = np.array([sweep, -1], np.int64)
    return state


@pytest.mark.parametrize("compress", [True, False])
def test_resume_mid_chunk_equals_an_uninterrupted_writer(tmp_path, compress):
    """Checkpoint mid-chunk, write more (flushed and not), reopen: cut back to the checkpoint,
    and continuing gives the file one writer would have written."""
    L, R = 8, 3
    cs = _chunk_samples(L)                      # 1024
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
from ising_dist.store import RunWriter
sys.path.insert(0, {tests!r})
from test_store import checkpoint_state, feed, make_samples, take
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
from ising_dist.store import RunWriter
sys.path.insert(0, {tests!r})
from test_store import checkpoint_state, feed, make_samples, take
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


def test_uncompressed_file_round_trips(tmp_path):
    """Files made for the collective writer (compress=False, chunks allocated early) take raw
    chunks; a gather-writer resume of such a file appends to it."""
    L, R, S = 6, 2, 2000
    rng = np.random.default_rng(2)
    s = make_samples(rng, S, R, L)
    path = tmp_path / "raw.h5"
    w = create(path, L, R, compress=False)
    assert w.f["spins"].scaleoffset is None
    feed(w, take(s, 0, 1000), rng, flush_prob=0.1)
    w.close()
    w = RunWriter._open_swmr(path)
    assert w.n_samples == 1000
    feed(w, take(s, 1000, S), rng, flush_prob=0.1)
    w.close()
    assert_file_holds(path, s)


# -- a live reader --------------------------------------------------------------------------
LIVE_L, LIVE_R = 8, 4


def live_sample(i):
    """Sample i of the live test: spins and energies a reader can recompute."""
    spins = random_spins(np.random.default_rng(i), (LIVE_R, LIVE_L, LIVE_L))
    return spins, i + np.arange(LIVE_R) / 10


READER = """
import os, sys, time
import numpy as np, h5py
sys.path.insert(0, {tests!r})
from test_store import live_sample
from ising_dist.data import complete_samples
path, done, started = {path!r}, {done!r}, {started!r}
reads = grown = 0
last = 0
while True:
    finished = os.path.exists(done)
    with h5py.File(path, "r", swmr=True) as f:
        n = complete_samples(f)               # then the data: they only get more written
        spins = f["spins"][()]
        bad = np.setdiff1d(np.unique(spins), [-1, 0, 1])
        assert bad.size == 0, f"spins read back as {{bad}}"
        assert n >= last
        grown += n > last
        last = n
        energy = f["energy"][:, :n]
        for i in range(max(0, n - 40), n):   # the newest complete samples are the right ones
            sp, e = live_sample(i)
            assert np.array_equal(spins[:, i], sp) and np.array_equal(energy[:, i], e), i
    reads += 1
    if reads == 1:
        open(started, "w").close()
    if finished:
        break
print(reads, grown, last)
"""


def test_a_concurrent_reader_sees_only_written_samples(tmp_path):
    path, done, started = tmp_path / "live.h5", tmp_path / "done", tmp_path / "started"
    w = RunWriter.create(path, "L: 8\n", LIVE_L, 1, np.linspace(1.5, 3.0, LIVE_R))
    w.flush_seconds = 0.02
    reader = subprocess.Popen([sys.executable, "-c", READER.format(
        tests=str(ROOT / "tests"), path=str(path), done=str(done), started=str(started))],
        cwd=ROOT,
        env=dict(os.environ, PYTHONPATH=str(ROOT)), stdout=subprocess.PIPE,
        stderr=subprocess.PIPE, text=True)
    try:
        # stream for 2.5 s from the reader's first read (its start-up is slow on a busy machine)
        i, t0, t_start = 0, None, time.monotonic()
        while t0 is None or time.monotonic() - t0 < 2.5:
            if t0 is None and started.exists():
                t0 = time.monotonic()
            assert time.monotonic() - t_start < 120, "the reader never read the file"
            assert reader.poll() is None, reader.communicate()[1]
            k = 7 if i % 3 else 1
            batch = [live_sample(j) for j in range(i, i + k)]
            spins = np.stack([b[0] for b in batch])
            energy = np.stack([b[1] for b in batch])
            replica = np.tile(np.arange(LIVE_R, dtype=np.int32), (k, 1))
            if k == 1:
                w.append(i, spins[0], energy[0], energy[0], replica[0])
            else:
                w.append_block(np.arange(i, i + k), spins, energy, energy, replica)
            i += k
            time.sleep(0.002)
        w.flush()
    finally:
        w.close()
        done.touch()
    out, err = reader.communicate(timeout=120)
    assert reader.returncode == 0, err
    reads, grown, last = map(int, out.split())
    assert i > 2 * _chunk_samples(LIVE_L)       # the writer crossed chunk rows
    assert reads > 10 and grown > 3 and last == i


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
