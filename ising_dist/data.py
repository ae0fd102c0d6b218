"""Torch datasets over a parallel-tempering HDF5 file (schema_version 1, see DESIGN.md).

One item is one stored configuration at one temperature:
    x  float32 [L, L]  spins mapped to {0, 1} (s = +1 → 1)
    T  float32 []      its temperature (the label of conditional models)

Splits are by sample index, per temperature, in time order: with S usable samples the first
``skip`` are dropped (burn-in), then train, validation and test follow one another, so no
sample later than a validation/test sample is ever trained on::

    0 … skip | train | validation | test … S

Reads are lazy: each process (DataLoader worker, Ray Train worker) opens its own read-only
SWMR handle on first use, so a dataset can be built in one process and used after a fork.
A file that is still being written is fine: the number of samples is fixed when the datasets
are made (``n_samples``, recorded in the :func:`fingerprint`), only complete samples are used,
and later growth of the file is ignored until new datasets are made.

Training reads through :func:`batches`, never one sample per HDF5 call: a
:class:`BatchSampler` (DistributedSampler's order and sharding, yielding index batches) and a
source that returns a whole batch tensor. A split of at most ``memory_mb`` is read into memory
in one slab per temperature row (:class:`InMemory`); a larger one streams (:class:`SlabStream`):
blocks of one HDF5 chunk length, read as slabs into a cache of ``memory_mb``, and the order is
shuffled in windows of blocks that fit the cache. The order depends on (seed, epoch,
shuffle window) only, so both sources deliver the same batches for the same window. Each rank
holds (or streams) the whole split: its shard is a fresh draw from it every epoch, as with
DistributedSampler, which is what makes N ranks see the global batches of one.
Measured (benchmarks/training.py, L = 16): 4–6 M samples/s in memory, ~0.5 M streaming,
against ~4 k through torch's DataLoader over single items and ~0.1 M from Ray Data's
iter_torch_batches; so the reader is ours, not Ray Data.
"""
from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Optional, Sequence

import h5py
import numpy as np
import torch
from torch.utils.data import Dataset

from .store import SCHEMA_VERSION, StoreError, open_read

SPLITS = ("train", "val", "test")
T_MATCH = 1e-6          # relative tolerance when matching requested temperatures to the ladder
CHUNK_CACHE = 64 * 2**20  # bytes of decompressed HDF5 chunks kept per open handle
MEMORY_MB = 1024.0      # default: a split up to this size is held in memory, larger ones stream
SPIN_DATASETS = ("spins", "energy", "magnetization", "replica")  # [R, S, ...]; /sweep is [S]


class DataError(ValueError):
    """A data file or selection that cannot be used; the message says why and what to do."""


@dataclass(frozen=True)
class FileInfo:
    """What a run file holds: its lattice, ladder and number of complete samples."""
    path: str                # absolute
    L: int
    temperatures: np.ndarray  # float64 [R], ascending
    n_samples: int           # complete samples per temperature at the time of reading
    seed: int
    config_sha256: str       # of the run's resolved config text (identifies the run)


def _open(path) -> h5py.File:
    try:
        return open_read(path)
    except StoreError as exc:
        raise DataError(f"data file: {exc}") from None


def complete_samples(f: h5py.File) -> int:
    """Samples stored for every temperature and fully written.

    A writer grows the datasets before filling them, so a live file can show trailing samples
    that are still fill values: those are spins equal to 0 and are not counted."""
    lengths = [f[name].shape[1] for name in SPIN_DATASETS if name in f]
    if "sweep" in f:
        lengths.append(f["sweep"].shape[0])
    n = min(lengths)
    spins = f["spins"]
    while n > 0 and not np.all(spins[:, n - 1] != 0):
        n -= 1
    return int(n)


def inspect(path) -> FileInfo:
    """Check that ``path`` is a schema-1 run file and describe it (DataError otherwise)."""
    with _open(path) as f:
        missing = [n for n in ("temperatures", "spins", "sweep") if n not in f]
        if missing:
            raise DataError(f"data file {str(path)!r} lacks dataset(s) {', '.join(missing)}: it "
                            f"is not a complete ising_dist run file; write one with "
                            f"`python -m ising_dist.pt`")
        spins = f["spins"]
        temps = np.asarray(f["temperatures"][()], np.float64)
        if spins.ndim != 4 or spins.shape[0] != temps.shape[0] or spins.shape[2] != spins.shape[3]:
            raise DataError(f"data file {str(path)!r}: /spins has shape {spins.shape}, expected "
                            f"[R={temps.shape[0]}, S, L, L] (schema_version {SCHEMA_VERSION})")
        text = f.attrs.get("config", "")
        text = text.decode() if isinstance(text, bytes) else str(text)
        return FileInfo(path=os.path.abspath(path), L=int(spins.shape[2]), temperatures=temps,
                        n_samples=complete_samples(f), seed=int(f.attrs.get("seed", -1)),
                        config_sha256=hashlib.sha256(text.encode()).hexdigest())


def _fmt(ts) -> str:
    return "[" + ", ".join(f"{t:.6g}" for t in ts) + "]"


def select_rows(available: np.ndarray, temperatures: Optional[Sequence[float]] = None,
                tmin: Optional[float] = None, tmax: Optional[float] = None,
                source: str = "the data file") -> list[int]:
    """Rows of the ladder to use: all (default), the listed temperatures, or tmin ≤ T ≤ tmax.

    Listed temperatures must be in the file (relative tolerance 1e-6)."""
    available = np.asarray(available, np.float64)
    if temperatures is not None and (tmin is not None or tmax is not None):
        raise DataError("give either temperatures (a list) or tmin/tmax (a range), not both")
    if temperatures is not None:
        if len(temperatures) == 0:
            raise DataError("temperatures=[] selects nothing; leave it out to use all "
                            f"temperatures of {source}: {_fmt(available)}")
        rows = []
        for t in temperatures:
            hit = np.flatnonzero(np.abs(available - t) <= T_MATCH * max(1.0, abs(t)))
            if hit.size == 0:
                near = available[np.argmin(np.abs(available - t))]
                raise DataError(f"temperature {t:.6g} is not in {source}, whose temperatures "
                                f"are {_fmt(available)}; use one of them (nearest: {near:.10g})"
                                f" or select a range with tmin/tmax")
            rows.append(int(hit[0]))
        if len(set(rows)) != len(rows):
            raise DataError(f"temperatures={list(temperatures)} names a temperature twice")
        return sorted(rows)
    lo = -np.inf if tmin is None else tmin
    hi = np.inf if tmax is None else tmax
    rows = [int(r) for r in np.flatnonzero((available >= lo * (1 - T_MATCH))
                                           & (available <= hi * (1 + T_MATCH)))]
    if not rows:
        raise DataError(f"tmin={tmin}, tmax={tmax} selects no temperature of {source}, whose "
                        f"temperatures are {_fmt(available)}; widen the range")
    return rows


def split_bounds(n_samples: int, val_fraction: float, test_fraction: float,
                 skip: int = 0) -> dict[str, tuple[int, int]]:
    """[start, stop) sample indices of train, val and test (time-ordered, see module doc)."""
    if not (0 <= val_fraction < 1 and 0 <= test_fraction < 1
            and val_fraction + test_fraction < 1):
        raise DataError(f"val_fraction={val_fraction}, test_fraction={test_fraction}: each must "
                        f"be in [0, 1) and together below 1 (e.g. 0.1 and 0.1)")
    if skip < 0:
        raise DataError(f"skip={skip}: must be ≥ 0")
    usable = n_samples - skip
    n_val = int(round(usable * val_fraction))
    n_test = int(round(usable * test_fraction))
    n_train = usable - n_val - n_test
    need_val = val_fraction > 0 and n_val == 0
    if n_train < 1 or need_val or (test_fraction > 0 and n_test == 0):
        raise DataError(f"the file holds {n_samples} complete samples per temperature; after "
                        f"skip={skip} that is too few for a train/val/test split of "
                        f"{1 - val_fraction - test_fraction:.2f}/{val_fraction}/{test_fraction}"
                        f"; sample longer (python -m ising_dist.pt --sweeps …), lower skip, or "
                        f"wait for a live run to write more")
    a = skip
    b = a + n_train
    c = b + n_val
    return {"train": (a, b), "val": (b, c), "test": (c, c + n_test)}


class IsingDataset(Dataset):
    """Stored configurations of the chosen ladder rows over sample range [start, stop).

    Item i is row ``rows[i // n]``, sample ``start + i % n`` with n = stop − start.
    The HDF5 handle is opened lazily, once per process."""

    def __init__(self, path, rows: Sequence[int], temperatures: Sequence[float],
                 start: int, stop: int):
        self.path = os.path.abspath(path)
        self.rows = [int(r) for r in rows]
        self.T = np.asarray(temperatures, np.float32)  # of each selected row
        self.start, self.stop = int(start), int(stop)
        self.n = self.stop - self.start
        self._file: Optional[h5py.File] = None
        self._pid: Optional[int] = None

    def __len__(self) -> int:
        return len(self.rows) * self.n

    def __getstate__(self):  # never pickle an open handle (Ray, spawn-based DataLoaders)
        state = dict(self.__dict__)
        state["_file"], state["_pid"] = None, None
        return state

    @property
    def spins(self) -> h5py.Dataset:
        """The /spins dataset through this process's handle (opened on first use)."""
        if self._file is None or self._pid != os.getpid():
            self._file = h5py.File(self.path, "r", swmr=True, rdcc_nbytes=CHUNK_CACHE,
                                   rdcc_nslots=10007)
            self._pid = os.getpid()
        ds = self._file["spins"]
        if ds.shape[1] < self.stop:   # a live file grown since this handle was opened
            ds.refresh()
        return ds

    @property
    def item_bytes(self) -> int:
        """Bytes of one item held in memory (uint8 {0, 1}, L×L)."""
        return int(self.spins.shape[2] * self.spins.shape[3])

    @property
    def chunk(self) -> int:
        """Samples per HDF5 chunk of /spins along S (the natural slab length)."""
        chunks = self.spins.chunks
        return int(chunks[1]) if chunks else 1024

    def read(self, a: int, b: int) -> np.ndarray:
        """Items [a, b) as uint8 {0, 1} [b − a, L, L]: one slab read per temperature row
        touched, never one call per sample. IndexError outside [0, len]."""
        if not 0 <= a <= b <= len(self):
            raise IndexError(f"items [{a}, {b}) out of range for {len(self)} items")
        ds = self.spins
        out = np.empty((b - a, ds.shape[2], ds.shape[3]), np.uint8)
        i = a
        while i < b:
            k, s = divmod(i, self.n)
            m = min(b - i, self.n - s)
            np.greater(ds[self.rows[k], self.start + s:self.start + s + m], 0,
                       out=out[i - a:i - a + m].view(np.bool_))
            i += m
        return out

    def _locate(self, index: int) -> tuple[int, int]:
        if not 0 <= index < len(self):
            raise IndexError(f"index {index} out of range for {len(self)} items")
        k, s = divmod(index, self.n)
        return k, self.start + s

    def __getitem__(self, index: int):
        k, s = self._locate(int(index))
        x = torch.from_numpy((self.spins[self.rows[k], s] > 0).astype(np.float32))
        return x, torch.tensor(self.T[k])

    def __getitems__(self, indices: Sequence[int]):
        """A batch read: one HDF5 selection per temperature row instead of one per item."""
        ks, ss = zip(*(self._locate(int(i)) for i in indices))
        ks, ss = np.asarray(ks), np.asarray(ss)
        out = np.empty((len(indices), self.spins.shape[2], self.spins.shape[3]), np.float32)
        ds = self.spins
        for k in np.unique(ks):
            where = np.flatnonzero(ks == k)
            wanted, inverse = np.unique(ss[where], return_inverse=True)  # h5py wants ascending
            block = ds[self.rows[k], wanted.tolist()] if len(wanted) > 1 else \
                ds[self.rows[k], int(wanted[0])][None]
            out[where] = block[inverse] > 0
        x = torch.from_numpy(out)
        T = torch.from_numpy(self.T[ks])
        return [(x[j], T[j]) for j in range(len(indices))]

    def close(self) -> None:
        if self._file is not None:
            self._file.close()
        self._file = None


# ---------------------------------------------------------------------------- batched reading
Batch = tuple[torch.Tensor, torch.Tensor]


class BatchSampler:
    """Index batches of one rank: DistributedSampler's order and sharding, whole batches.

    The global order of epoch e is a permutation of range(n) drawn from a generator seeded
    with seed + e. With ``window=None`` (or window ≥ n) it is DistributedSampler's
    (``torch.randperm(n)``), so batches equal those of DataLoader(DistributedSampler(…,
    drop_last=False), batch_size); otherwise it is shuffled in windows, for streaming: the
    blocks of ``block`` consecutive items are permuted, cut into windows of window // block
    blocks, and the items of each window permuted. The order is padded to a multiple of world
    by repeating its start; rank r takes positions r, r + world, …, in batches of ``batch``
    (the last one shorter). shuffle=False: items in order. Yields int64 tensors [≤ batch]."""

    def __init__(self, n: int, batch: int, rank: int = 0, world: int = 1, shuffle: bool = True,
                 seed: int = 0, window: Optional[int] = None, block: int = 1024):
        if n < 1 or batch < 1 or block < 1 or not 0 <= rank < world:
            raise ValueError(f"BatchSampler(n={n}, batch={batch}, rank={rank}, world={world}, "
                             f"block={block}): need n, batch, block ≥ 1 and 0 ≤ rank < world")
        if window is not None and window < 1:
            raise DataError(f"shuffle_window={window}: must be ≥ 1 sample (or unset: the "
                            f"whole split)")
        self.n, self.batch, self.rank, self.world = n, batch, rank, world
        self.shuffle, self.seed, self.window, self.block = shuffle, seed, window, block
        self.epoch = 0
        self.per_rank = -(-n // world)

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)

    def order(self) -> torch.Tensor:
        """The global order of this epoch, int64 [n] (before padding and sharding)."""
        if not self.shuffle:
            return torch.arange(self.n)
        g = torch.Generator()
        g.manual_seed(self.seed + self.epoch)
        if self.window is None or self.window >= self.n:
            return torch.randperm(self.n, generator=g)
        n_blocks = -(-self.n // self.block)
        per_window = max(1, self.window // self.block)
        blocks = torch.randperm(n_blocks, generator=g)
        pieces = []
        for w in range(0, n_blocks, per_window):
            items = (blocks[w:w + per_window, None] * self.block
                     + torch.arange(self.block)).flatten()
            items = items[items < self.n]
            pieces.append(items[torch.randperm(len(items), generator=g)])
        return torch.cat(pieces)

    def __iter__(self):
        order = self.order()
        pad = self.per_rank * self.world - self.n
        if pad:
            order = torch.cat([order] + [order] * (pad // self.n) + [order[:pad % self.n]])
        return iter(order[self.rank::self.world].split(self.batch))

    def __len__(self) -> int:
        return -(-self.per_rank // self.batch)


class InMemory:
    """A whole split held in this process as uint8 [len, L, L] (one byte a spin), read in one
    slab per temperature row. Calling it with int64 indices [B] gives (x float32 [B, L, L]
    {0, 1}, T float32 [B])."""
    in_memory = True

    def __init__(self, ds: IsingDataset):
        self.x = torch.from_numpy(ds.read(0, len(ds)))
        self.T, self.n = torch.from_numpy(ds.T), ds.n

    def __call__(self, idx: torch.Tensor) -> Batch:
        return torch.index_select(self.x, 0, idx).float(), self.T[idx // self.n]


class SlabStream:
    """A split too large for memory, read in blocks of ``block`` consecutive items (one HDF5
    slab per temperature row touched) into a cache of ``capacity`` blocks, least recently used
    evicted. Same call as :class:`InMemory`. ``blocks_read`` counts slab reads; with the
    windowed order of :class:`BatchSampler` and capacity ≥ 2 windows each block is read about
    once per epoch. ValueError when a batch touches more blocks than the cache holds."""
    in_memory = False

    def __init__(self, ds: IsingDataset, block: int, capacity: int):
        self.ds, self.block = ds, int(block)
        n_blocks = -(-len(ds) // self.block)
        self.capacity = min(int(capacity), n_blocks)
        L = ds.spins.shape[2]
        self.buf = torch.empty((self.capacity * self.block, L, L), dtype=torch.uint8)
        self.slot_of = np.full(n_blocks, -1, np.int64)      # block → cache slot (-1: absent)
        self.block_in = np.full(self.capacity, -1, np.int64)  # cache slot → block
        self.last_use = np.full(self.capacity, -1, np.int64)
        self.tick = 0
        self.blocks_read = 0
        self.T, self.n = torch.from_numpy(ds.T), ds.n

    def _load(self, blocks: np.ndarray) -> None:
        """Read the blocks not cached into free or least recently used slots (the blocks
        asked for are marked used first, so none of them is evicted)."""
        cached = self.slot_of[blocks]
        self.last_use[cached[cached >= 0]] = self.tick
        missing = blocks[cached < 0]
        victims = np.argsort(self.last_use, kind="stable")[:len(missing)]
        for blk, slot in zip(missing.tolist(), victims.tolist()):
            if self.block_in[slot] >= 0:
                self.slot_of[self.block_in[slot]] = -1
            a = blk * self.block
            b = min(a + self.block, len(self.ds))
            start = slot * self.block
            self.buf[start:start + b - a] = torch.from_numpy(self.ds.read(a, b))
            self.block_in[slot], self.slot_of[blk] = blk, slot
            self.blocks_read += 1

    def __call__(self, idx: torch.Tensor) -> Batch:
        i = idx.numpy()
        blocks = i // self.block
        need = np.unique(blocks)
        if len(need) > self.capacity:
            raise ValueError(f"a batch touches {len(need)} blocks of {self.block} samples but "
                             f"the streaming cache holds {self.capacity}; raise memory_mb")
        self.tick += 1
        self._load(need)
        slots = self.slot_of[blocks]
        self.last_use[slots] = self.tick
        x = torch.index_select(self.buf, 0, torch.from_numpy(slots * self.block + i
                                                            - blocks * self.block)).float()
        return x, self.T[idx // self.n]


class Batches:
    """(x float32 [B, L, L] {0, 1}, T float32 [B]) batches of one rank, built as whole
    tensors (no per-sample collation); ``set_epoch(e)`` reshuffles, ``len()`` counts batches,
    ``in_memory`` says which source feeds them."""

    def __init__(self, sampler: BatchSampler, source):
        self.sampler, self.source = sampler, source

    @property
    def in_memory(self) -> bool:
        return self.source.in_memory

    def set_epoch(self, epoch: int) -> None:
        self.sampler.set_epoch(epoch)

    def __len__(self) -> int:
        return len(self.sampler)

    def __iter__(self):
        for idx in self.sampler:
            yield self.source(idx)


def batches(ds: IsingDataset, batch_size: int, rank: int = 0, world: int = 1,
            shuffle: bool = True, seed: int = 0, memory_mb: float = MEMORY_MB,
            shuffle_window: Optional[int] = None, block: Optional[int] = None) -> Batches:
    """Batches of ``ds`` for rank ``rank`` of ``world`` (see :class:`BatchSampler`).

    A split of at most ``memory_mb`` MiB (1 byte a spin) is held in memory; a larger one
    streams in blocks of ``block`` samples (default: the file's chunk length, ~256 KiB) through
    a cache of two shuffle windows, or of one batch's blocks if that is more. shuffle_window
    (samples) sets the order: unset, the whole split is shuffled when held in memory and
    windows of half of ``memory_mb`` when streaming. DataError when an explicit window does not
    fit ``memory_mb`` twice."""
    if not memory_mb >= 0:
        raise DataError(f"memory_mb={memory_mb}: must be ≥ 0 (MiB of samples held per worker)")
    block = int(block or ds.chunk)
    budget = int(memory_mb * 2**20) // ds.item_bytes        # samples the budget holds
    if len(ds) <= budget:
        source = InMemory(ds)
        window = shuffle_window
    else:
        window = shuffle_window or max(block, budget // (2 * block) * block)
        if 2 * window > max(budget, 2 * block):
            raise DataError(f"shuffle_window={shuffle_window} samples does not fit twice in the "
                            f"streaming cache of memory_mb={memory_mb:g} MiB ({budget} samples);"
                            f" lower shuffle_window to ≤ {max(block, budget // 2)} or raise "
                            f"memory_mb")
        # two windows: a batch ending one window and starting the next reads each block once
        # an epoch; and at least the blocks one batch can touch (its size), so none fails
        capacity = max(2 * max(1, window // block), min(batch_size, -(-len(ds) // block)))
        source = SlabStream(ds, block, capacity)
    sampler = BatchSampler(len(ds), batch_size, rank, world, shuffle, seed, window, block)
    return Batches(sampler, source)


def fingerprint(info: FileInfo, rows: Sequence[int], bounds: dict[str, tuple[int, int]]
                ) -> dict:
    """Plain-data identity of the data a model was trained on (saved in checkpoints/models).

    Two runs used the same data when everything but ``path`` agrees."""
    return {"path": info.path, "schema_version": SCHEMA_VERSION, "L": info.L, "seed": info.seed,
            "config_sha256": info.config_sha256, "rows": [int(r) for r in rows],
            "temperatures": [float(info.temperatures[r]) for r in rows],
            "n_samples": int(info.n_samples),
            "splits": {k: [int(a), int(b)] for k, (a, b) in bounds.items()}}


def same_data(a: dict, b: dict) -> list[str]:
    """Keys in which two fingerprints differ (``path`` is ignored: files may move)."""
    return [k for k in sorted(set(a) | set(b)) if k != "path" and a.get(k) != b.get(k)]


def make_datasets(path, temperatures: Optional[Sequence[float]] = None,
                  tmin: Optional[float] = None, tmax: Optional[float] = None,
                  val_fraction: float = 0.1, test_fraction: float = 0.1, skip: int = 0,
                  n_samples: Optional[int] = None) -> tuple[dict[str, IsingDataset], dict]:
    """({"train", "val", "test"} → IsingDataset, fingerprint).

    n_samples fixes how many samples per temperature the split is made of (default: all
    complete ones now); pass a fingerprint's n_samples to rebuild exactly the same split from
    a file that has grown since."""
    if not Path(path).exists():
        raise DataError(f"data file {str(path)!r} does not exist; write one with `python -m "
                        f"ising_dist.pt --config configs/pt/demo.yaml --out {path}` or pass "
                        f"--data with an existing file")
    info = inspect(path)
    if n_samples is not None:
        if n_samples > info.n_samples:
            raise DataError(f"data file {str(path)!r} holds {info.n_samples} complete samples "
                            f"per temperature but {n_samples} are needed (the run was trained "
                            f"on them); use the original file")
        info = FileInfo(**{**info.__dict__, "n_samples": int(n_samples)})
    rows = select_rows(info.temperatures, temperatures, tmin, tmax, source=repr(str(path)))
    bounds = split_bounds(info.n_samples, val_fraction, test_fraction, skip)
    temps = [float(info.temperatures[r]) for r in rows]
    sets = {name: IsingDataset(info.path, rows, temps, a, b) for name, (a, b) in bounds.items()}
    return sets, fingerprint(info, rows, bounds)
