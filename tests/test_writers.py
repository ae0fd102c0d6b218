"""RunWriter streaming /spins through its own scale-offset encoder: real files, real h5dump,
a real concurrent SWMR reader. (Recovery and resuming: test_store.py.)"""

import os
import re
import subprocess
import sys
import time
from pathlib import Path

import h5py
import numpy as np
import pytest

from ising_dist.codec import pack
from ising_dist.store import chunk_samples
from ising_dist.tempering import PTState
from ising_dist.writers import RunWriter

ROOT = Path(__file__).resolve().parents[1]
H5DUMP = "/usr/bin/h5dump"


def random_spins(rng, shape):
    return (2 * rng.integers(0, 2, shape) - 1).astype(np.int8)


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
    """Write ``s`` through a random mix of single samples and blocks, from buffers reused as
    soon as the writer is done with them (write returned None, or its job finished), with
    flushes at random points."""
    S, i = len(s["sweep"]), 0
    spins = pack(s["spins"])
    scratch = {name: np.empty((40,) + a.shape[1:], a.dtype)
               for name, a in dict(s, spins=spins).items()}
    while i < S:
        k = 1 if rng.random() < 0.4 else min(S - i, int(rng.integers(1, 40)))
        buf = {name: a[:k] for name, a in scratch.items()}
        for name, a in dict(s, spins=spins).items():
            buf[name][...] = a[i:i + k]
        job = w.write(buf["sweep"], buf["spins"], buf["energy"], buf["magnet"], buf["replica"])
        if job is not None:
            job.result()
        for a in buf.values():
            a[...] = 0  # the writer holds what it still needs
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
    cs = chunk_samples(L)
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
    """A PTState of zeros at ``sweep``."""
    state = PTState.from_arrays({name: np.zeros(shape, dtype) for name, (dtype, shape) in
                                 PTState.layout(R, L).items()})
    state.sweep = sweep
    return state


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
    w = RunWriter.open(path)
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
from test_writers import live_sample
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
            w.write(np.arange(i, i + k), pack(spins), energy, energy, replica)
            i += k
            time.sleep(0.002)
        w.flush()
    finally:
        w.close()
        done.touch()
    out, err = reader.communicate(timeout=120)
    assert reader.returncode == 0, err
    reads, grown, last = map(int, out.split())
    assert i > 2 * chunk_samples(LIVE_L)       # the writer crossed chunk rows
    assert reads > 10 and grown > 3 and last == i
