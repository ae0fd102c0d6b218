"""The torch Dataset over real parallel-tempering files: content, splits, selection, live files,
and the errors a user meets with the wrong file or temperature."""
from __future__ import annotations

import pickle
import subprocess
import sys
from pathlib import Path

import h5py
import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader

from torch.utils.data.distributed import DistributedSampler

from ising_dist.data import (BatchSampler, DataError, batches, complete_samples, make_datasets,
                             split_bounds)
from ising_dist.codec import pack
from ising_dist.writers import RunWriter

ROOT = Path(__file__).resolve().parents[1]
# A real PT run (metropolis, 4 temperatures across Tc, L=8): 400 samples per temperature.
PT_ARGS = ["--L", "8", "--replicas", "4", "--tmin", "1.8", "--tmax", "3.0", "--thermalize",
           "200", "--sweeps", "800", "--sample-every", "2", "--seed", "3", "--no-progress"]
N_SAMPLES = 400


def make_pt_file(tmp_path_factory) -> Path:
    """The session's PT file, written once by the real `python -m ising_dist.pt` CLI (shared
    by every test module that asks: the path is fixed under the session's base temp dir)."""
    path = tmp_path_factory.getbasetemp() / "pt" / "run.h5"
    if not path.exists():
        path.parent.mkdir(exist_ok=True)
        res = subprocess.run([sys.executable, "-m", "ising_dist.pt", "--config",
                              str(ROOT / "configs/pt/demo.yaml"), "--out", str(path), *PT_ARGS],
                             cwd=ROOT, capture_output=True, text=True, timeout=300)
        assert res.returncode == 0, res.stdout + res.stderr
    return path


@pytest.fixture(scope="session")
def pt_file(tmp_path_factory) -> Path:
    return make_pt_file(tmp_path_factory)


def stored(path):
    with h5py.File(path, "r", swmr=True) as f:
        return f["spins"][()], f["temperatures"][()]


def test_items_are_stored_spins_as_01_with_their_temperature(pt_file):
    spins, temps = stored(pt_file)
    sets, fp = make_datasets(pt_file, temperatures=[temps[1], temps[3]], val_fraction=0.1,
                             test_fraction=0.1)
    train = sets["train"]
    a, b = fp["splits"]["train"]
    assert len(train) == 2 * (b - a) and fp["rows"] == [1, 3]
    expect_x = (spins[[1, 3], a:b] > 0).reshape(-1, 8, 8).astype(np.float32)
    expect_T = np.repeat(temps[[1, 3]], b - a).astype(np.float32)
    # two DataLoader worker processes, each with its own lazily opened handle, batched reads
    loader = DataLoader(train, batch_size=37, shuffle=False, num_workers=2)
    xs, Ts = zip(*loader)
    x, T = torch.cat(xs).numpy(), torch.cat(Ts).numpy()
    assert x.dtype == np.float32 and set(np.unique(x)) == {0.0, 1.0}
    np.testing.assert_array_equal(x, expect_x)
    np.testing.assert_array_equal(T, expect_T)
    # single items agree with batches, and a used dataset pickles without its handle
    clone = pickle.loads(pickle.dumps(train))
    for i in (0, b - a - 1, b - a, len(train) - 1):
        xi, Ti = clone[i]
        np.testing.assert_array_equal(xi.numpy(), expect_x[i])
        assert float(Ti) == pytest.approx(expect_T[i])


def test_splits_are_time_ordered_and_never_leak_later_samples(pt_file):
    sets, fp = make_datasets(pt_file, val_fraction=0.2, test_fraction=0.1, skip=50)
    s = fp["splits"]
    assert s["train"][0] == 50 and s["train"][1] == s["val"][0] and s["val"][1] == s["test"][0]
    assert s["test"][1] == N_SAMPLES == fp["n_samples"]
    assert (s["val"][1] - s["val"][0], s["test"][1] - s["test"][0]) == (70, 35)
    assert [len(sets[k]) for k in ("train", "val", "test")] == [4 * 245, 4 * 70, 4 * 35]
    assert fp["temperatures"] == pytest.approx(list(stored(pt_file)[1]))
    with pytest.raises(DataError, match="too few"):
        split_bounds(10, 0.1, 0.1, skip=9)


def test_temperature_selection_by_list_and_range_and_a_missing_one(pt_file):
    temps = stored(pt_file)[1]
    _, fp = make_datasets(pt_file, tmin=2.0, tmax=float(temps[-1]))
    assert fp["rows"] == [k for k, t in enumerate(temps) if t >= 2.0]
    _, fp = make_datasets(pt_file, temperatures=[float(temps[2]) * (1 + 1e-9)])  # YAML rounding
    assert fp["rows"] == [2]
    with pytest.raises(DataError) as err:
        make_datasets(pt_file, temperatures=[2.5])
    msg = str(err.value)
    assert "temperature 2.5 is not in" in msg and f"{temps[2]:.6g}" in msg and "nearest" in msg
    with pytest.raises(DataError, match="selects no temperature"):
        make_datasets(pt_file, tmin=5.0)


def test_live_file_counts_only_complete_samples_and_keeps_a_fixed_split(tmp_path):
    path = tmp_path / "live.h5"
    L, R = 4, 2
    w = RunWriter.create(path, "L: 4\n", L, 1, [2.0, 3.0])
    rng = np.random.default_rng(0)
    written = []

    def append(n, s0):
        for s in range(s0, s0 + n):
            spins = rng.choice(np.array([-1, 1], np.int8), size=(R, L, L))
            written.append(spins)
            w.write([s], pack(spins[None]), np.zeros((1, R)), np.zeros((1, R)),
                    np.arange(R, dtype=np.int32))
        w.flush()

    def trained_on(train):
        """Every (row, sample) a training epoch delivers, in memory and streamed by slabs."""
        seen = []
        for memory_mb in (1.0, 0.0):
            loader = batches(train, 8, memory_mb=memory_mb, block=4, shuffle=False)
            assert loader.in_memory == (memory_mb > 0)
            seen.append((torch.cat([x for x, _ in loader]), torch.cat([T for _, T in loader])))
        assert torch.equal(seen[0][0], seen[1][0]) and torch.equal(seen[0][1], seen[1][1])
        return seen[0]
    try:
        append(40, 0)
        sets, fp = make_datasets(path, val_fraction=0.25, test_fraction=0.25)
        assert fp["n_samples"] == 40 and len(sets["train"]) == 2 * 20
        # the writer grows the datasets before filling them: the unfilled tail is not data
        for name in ("spins", "energy", "magnetization", "replica"):
            w.f[name].resize(43, axis=1)
        w.f["sweep"].resize(43, axis=0)
        w.f.flush()
        with h5py.File(path, "r", swmr=True) as f:
            assert f["spins"].shape[1] == 43 and complete_samples(f) == 40
        # a run started now trains on the 40 complete samples only: the split of make_datasets
        # ends at 40 (the train split at 20), and the batches are exactly the written spins
        live, live_fp = make_datasets(path, val_fraction=0.0, test_fraction=0.0)
        assert live_fp["n_samples"] == 40
        x, T = trained_on(live["train"])
        expect = (np.stack(written[:40], axis=1) > 0).reshape(-1, L, L)   # [R·40, L, L]
        np.testing.assert_array_equal(x.numpy(), expect)
        np.testing.assert_array_equal(T.numpy(), np.repeat(np.float32([2.0, 3.0]), 40))
        w.truncate(40)
        append(40, 40)
        grown, fp2 = make_datasets(path, val_fraction=0.25, test_fraction=0.25)
        assert fp2["n_samples"] == 80 and len(grown["train"]) == 2 * 40
        again, fp3 = make_datasets(path, val_fraction=0.25, test_fraction=0.25, n_samples=40)
        assert fp3 == fp
        x_old = torch.stack([sets["test"][i][0] for i in range(len(sets["test"]))])
        x_new = torch.stack([again["test"][i][0] for i in range(len(again["test"]))])
        assert torch.equal(x_old, x_new)   # read while the writer still holds the file
        # … and the datasets made before the file grew still deliver their 40 samples only
        x, _ = trained_on(sets["train"])
        np.testing.assert_array_equal(
            x.numpy(), (np.stack(written[:20], axis=1) > 0).reshape(-1, L, L))
    finally:
        w.close()


@pytest.mark.parametrize("n, batch, world", [(1280, 64, 1), (1280, 32, 2), (1001, 50, 3),
                                             (5, 4, 3)])
def test_batch_sampler_gives_distributed_samplers_batches(n, batch, world):
    """Same order, padding and sharding as DataLoader(DistributedSampler(drop_last=False)), so
    training on whole-batch reads repeats what the per-item loader did, for every epoch."""
    ds = torch.utils.data.TensorDataset(torch.arange(n))
    for shuffle in (True, False):
        for rank in range(world):
            ref = DistributedSampler(ds, num_replicas=world, rank=rank, shuffle=shuffle, seed=7)
            mine = BatchSampler(n, batch, rank, world, shuffle, seed=7)
            for epoch in (0, 3):
                ref.set_epoch(epoch)
                mine.set_epoch(epoch)
                expect = [b for (b,) in DataLoader(ds, batch_size=batch, sampler=ref)]
                got = list(mine)
                assert len(got) == len(mine) == len(expect)
                for g, e in zip(got, expect):
                    assert torch.equal(g, e)


def test_in_memory_batches_are_the_stored_spins_in_sampler_order(pt_file):
    spins, temps = stored(pt_file)
    sets, fp = make_datasets(pt_file, temperatures=[temps[0], temps[2]], skip=30)
    train = sets["train"]
    a, b = fp["splits"]["train"]
    assert (a, b) == (30, 326)
    every_x = torch.from_numpy((spins[[0, 2], a:b] > 0).reshape(-1, 8, 8).astype(np.float32))
    every_T = torch.from_numpy(np.repeat(temps[[0, 2]], b - a).astype(np.float32))
    for rank in range(2):
        loader = batches(train, 48, rank, 2, shuffle=True, seed=3)
        order = BatchSampler(len(train), 48, rank, 2, shuffle=True, seed=3)
        assert loader.in_memory
        loader.set_epoch(2)
        order.set_epoch(2)
        got = list(loader)
        assert len(got) == len(order) == 7          # 592 samples over 2 ranks, 48 a batch
        for idx, (x, T) in zip(order, got):
            assert x.dtype == torch.float32 and T.dtype == torch.float32
            assert torch.equal(x, every_x[idx]) and torch.equal(T, every_T[idx])


def test_streaming_gives_the_in_memory_batches_reading_each_slab_about_once(pt_file):
    """A budget below the split's size streams blocks of 16 samples through a cache; with the
    same shuffle window the batches equal the in-memory ones, for every rank and epoch, and
    the windowed order reads each block about once an epoch."""
    sets, _ = make_datasets(pt_file)
    train = sets["train"]                               # 4 × 320 samples of 64 bytes
    n_blocks = -(-len(train) // 16)                     # 80
    for rank in range(2):
        kw = dict(batch_size=40, rank=rank, world=2, seed=5, shuffle_window=128, block=16)
        mem = batches(train, memory_mb=1.0, **kw)
        stream = batches(train, memory_mb=len(train) * 64 / 4 / 2**20, **kw)  # a quarter
        assert mem.in_memory and not stream.in_memory
        assert stream.source.capacity < n_blocks
        for epoch in range(3):
            mem.set_epoch(epoch)
            stream.set_epoch(epoch)
            before = stream.source.blocks_read
            pairs = list(zip(mem, stream, strict=True))
            assert len(pairs) == 16
            for (xm, Tm), (xs, Ts) in pairs:
                assert torch.equal(xm, xs) and torch.equal(Tm, Ts)
            assert n_blocks // 2 <= stream.source.blocks_read - before <= n_blocks + 2
    # a window of one block: one batch spans five windows, more than the two the cache is
    # sized for, and the cache holds one batch's blocks instead
    kw = dict(batch_size=40, rank=1, world=2, seed=5, shuffle_window=16, block=16)
    stream = batches(train, memory_mb=len(train) * 64 / 4 / 2**20, **kw)
    assert not stream.in_memory and stream.source.capacity == 40
    for (xm, Tm), (xs, Ts) in zip(batches(train, memory_mb=1.0, **kw), stream, strict=True):
        assert torch.equal(xm, xs) and torch.equal(Tm, Ts)
    # the windowed order is still a permutation of the whole split each epoch
    seen = torch.cat([torch.cat(list(BatchSampler(len(train), 40, r, 2, True, 5, 128, 16)))
                      for r in range(2)])
    assert torch.equal(seen.sort().values, torch.arange(len(train)))
    order = BatchSampler(len(train), 40, 0, 1, True, 5, 128, 16).order()
    assert (order[:16].diff() != 1).any()     # samples, not just blocks, are shuffled
    # unset, the window is the whole split in memory and half the cache when streaming
    assert batches(train, 40).sampler.window is None
    assert batches(train, 40, memory_mb=0.02, block=32).sampler.window == 160


def test_a_streaming_window_that_does_not_fit_the_cache_is_refused(pt_file):
    train = make_datasets(pt_file)[0]["train"]
    with pytest.raises(DataError, match=r"shuffle_window=1000 .* lower shuffle_window to ≤ 163"):
        batches(train, 40, memory_mb=0.02, shuffle_window=1000, block=32)
    with pytest.raises(DataError, match=r"memory_mb=-1: must be ≥ 0"):
        batches(train, 40, memory_mb=-1)


def _foreign_hdf5(path):
    with h5py.File(path, "w") as f:
        f["x"] = np.arange(3)


def _wrong_version(path, pt_file):
    path.write_bytes(Path(pt_file).read_bytes())
    with h5py.File(path, "r+") as f:
        f.attrs["schema_version"] = 2


@pytest.mark.parametrize("kind, message", [
    ("missing", "does not exist; write one with `python -m ising_dist.pt"),
    ("text", "is not a readable HDF5 file"),
    ("foreign", "is not an ising_dist parallel-tempering file"),
    ("version", "has schema_version=2, this code reads 1"),
])
def test_bad_files_say_what_is_wrong(tmp_path, pt_file, kind, message):
    path = tmp_path / "bad.h5"
    if kind == "text":
        path.write_text("spins\n")
    elif kind == "foreign":
        _foreign_hdf5(path)
    elif kind == "version":
        _wrong_version(path, pt_file)
    with pytest.raises(DataError) as err:
        make_datasets(path)
    assert message in str(err.value) and "bad.h5" in str(err.value)
