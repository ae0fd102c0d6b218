"""Writers of the run file (schema in :mod:`ising_dist.store`): serial, gather, collective.

Every rank of a run makes the same calls on its writer; the writer decided, when it was made,
which rank writes what (as HOOMD-blue's ``hoomd/write/hdf5.py`` does), so the run loop never
asks which rank it is on:

  :class:`RunWriter`         one process owns the file (SWMR: readable while it streams)
  :func:`gather_writer`      ranks send their replicas to rank 0, whose RunWriter writes;
                             every other rank gets a :class:`GatherSender`, which only sends
  :class:`CollectiveWriter`  every rank writes its own rows through parallel HDF5 (mpio)
  :class:`StripGatherWriter` lattices split into strips over a group of ranks: the group's
                             leader gathers them and writes through one of the above

All take samples one way, a block of k samples of the n replicas a rank holds::

    writer.write(sweep, spins, energy, magnet, replica, slot=None)

sweep int64 [k]; spins uint8 [k, n, L·L/4], the lattices packed 2 bits a spin
(:func:`ising_dist.codec.pack_spins`, as the tempering loops capture them; unpacked spins go
through :func:`ising_dist.codec.pack`); energy, magnet float64 [k, n] per spin; replica
int32 [k, n] (or [n]: the same in every sample) the replica ids; slot int64 [k, n] (or [n])
the temperature slot, i.e. row of the file, of each replica (None: row i is slot i). The
arrays are NOT copied: they must stay unchanged until the returned job is done
(``.result()``, which also raises the writer's error); None means nothing holds them.

Checkpoints: ``writer.checkpoint(state, ids)`` with the loop's
:class:`ising_dist.tempering.PTState`, whose per-replica fields (``PTState.names(local=True)``)
hold the rows of replica ids ``ids`` (this rank's) and whose other fields are the same on
every rank. (:meth:`RunWriter.checkpoint` takes the complete state.) The slot switch is
:func:`ising_dist.store.write_checkpoint`.

One writer per file: an entry point locks the file (:class:`ising_dist.runlock.RunLock`,
``<file>.lock``) before creating or reopening it and hands the lock to the writer, which
checks it at every checkpoint and stops the run with ``RunLostError`` once the file was
replaced or removed under it. Opened without a lock (from a script), a writer refuses a file
that a live run holds (``RunLockedError``).
"""

import collections
import dataclasses
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import h5py
import numpy as np

from . import store
from .codec import PAD_CODE, SO_HEADER, new_chunk_row, pack, pack_spins, unpack_spins
from .runlock import RunLostError, refuse_if_live
from .store import LIBVER, StoreError
from .tempering import PTState


def _per_sample(a, k, n):
    """``a`` ([k, n] or [n]) as [k, n], without copying."""
    return np.broadcast_to(a, (k, n))


def _at(arrays, n_samples):
    """{PTState field: array} ``arrays`` with position = [its sweep, n_samples]."""
    return dict(arrays, position=np.array([arrays["position"][0], n_samples], np.int64))


def _assign(dset, name, value):
    """Serial write of a whole dataset (the ``put`` of store.write_checkpoint)."""
    dset[...] = value


class RunWriter:
    """Owns the run file in one process: creation, reopening, streaming samples, checkpoints.

    Samples are buffered in memory, a chunk row of /spins at a time, already encoded: packed
    spins with a header are byte for byte HDF5's scale-offset encoding
    (:mod:`ising_dist.codec`). Each full (or, at a flush, partial) chunk is written with
    ``write_direct_chunk``, bypassing HDF5's slow filter path; everything is written and made
    visible to readers at least every ``flush_seconds``.

    Blocks of samples are handled by one background thread, a job per block (the caller's
    kernels release the GIL meanwhile): it copies them into the current chunk row of /spins,
    ``_rowbuf``, R chunks of cs samples in their encoded form, ``_fill`` samples in; writes
    each full row; queues the small per-sample fields in ``_pend_*`` (``_npend`` samples);
    and makes everything visible to readers every ``flush_seconds``. A single sample is
    copied into a staging block instead (``_stage_*``, ``_nstage`` samples), handed to the
    thread a chunk's worth at a time (or after flush_seconds): a job per sample would cost
    more than the sample. Every other use of the file first waits for the jobs
    (:meth:`_drain`), so the file sees the same operations in the same order as without the
    thread. ``n_samples`` counts every sample handed over."""

    MAX_JOBS = 2  # blocks queued at once: the caller waits for the oldest beyond that

    def __init__(self, f, flush_seconds=0.5):
        """A writer of the open (r+, SWMR) run file ``f``; see :meth:`create`, :meth:`reopen`."""
        self.f = f
        self.path = Path(f.filename)
        self.lock = None             # the run's RunLock (see attach_lock)
        self.last_checkpoint = None  # sweep of the newest checkpoint known to be on disk
        spins = f["spins"]
        self.R, self.L = spins.shape[0], spins.shape[2]
        self.chunk = cs = spins.chunks[1]
        self.flush_seconds = flush_seconds
        self._encoded = store.has_scaleoffset(spins)
        self._spins = spins
        self._B = B = self.L * self.L // 4  # bytes of a packed sample
        self._rowbuf = new_chunk_row(self.R, cs, B)
        # its packed samples: _samples[k, j] is sample j of slot k (a view)
        self._samples = np.lib.stride_tricks.as_strided(
            self._rowbuf[:, SO_HEADER:], (self.R, cs, B), (self._rowbuf.strides[0], B, 1))
        # unfiltered files (made for the collective writer) take the spins unpacked
        self._raw = None if self._encoded else np.empty((cs, self.L, self.L), np.int8)
        self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="ising-writer")
        self._jobs = collections.deque()  # futures of the blocks not yet handled
        self._all_slots = np.arange(self.R, dtype=np.int64)
        self._nstage = 0
        self._last_submit = time.monotonic()
        self._stage_packed = np.empty((cs, self.R, B), np.uint8)
        self._stage_sweep = np.empty(cs, np.int64)
        self._stage_energy, self._stage_magnet = np.empty((cs, self.R)), np.empty((cs, self.R))
        self._stage_replica = np.empty((cs, self.R), np.int32)
        self._cap = 0
        self._grow(max(cs, 256))
        self._last_flush = time.monotonic()
        self._start_at(spins.shape[1])

    def _start_at(self, n):
        """State for a file holding exactly n samples in every dataset, nothing pending;
        a partial chunk row is read back so that appending continues it."""
        self.n_samples = n
        self._n_small = n           # extent of the small datasets in the file
        self._npend = 0
        self._row_start = n - n % self.chunk
        self._fill = self._written = n - self._row_start
        self._rowbuf[:, SO_HEADER:-1] = PAD_CODE
        if self._fill:
            part = np.ascontiguousarray(self._spins[:, self._row_start:n])
            packed = np.empty((self.R, self._fill * self._B), np.uint8)
            pack_spins(part, packed)
            self._rowbuf[:, SO_HEADER:SO_HEADER + packed.shape[1]] = packed

    def _grow(self, cap):
        R, k = self.R, self._cap
        new = (np.empty(cap, np.int64), np.empty((cap, R), np.float64),
               np.empty((cap, R), np.float64), np.empty((cap, R), np.int32))
        if k:
            for dst, src in zip(new, (self._pend_sweep, self._pend_energy, self._pend_magnet,
                                      self._pend_replica)):
                dst[:k] = src
        self._pend_sweep, self._pend_energy, self._pend_magnet, self._pend_replica = new
        self._cap = cap

    # -- creation and reopening -------------------------------------------------------
    @classmethod
    def create(cls, path, cfg_yaml, L, seed, temperatures, overwrite=False, compress=True,
               lock=None):
        """A new run file (:func:`ising_dist.store.create_file`; compress=False: for the
        collective writer), written whole under a temporary name and renamed.
        lock: this run's RunLock on ``path`` (taken before), checked at every checkpoint;
        without one, a file held by a live run is refused (RunLockedError). StoreError for
        an existing file without ``overwrite``, or one another program holds open."""
        path = Path(path)
        if lock is None:
            refuse_if_live(path)
        if path.exists() and not overwrite:
            raise StoreError(f"--out {str(path)!r} exists; pass --resume to continue it or "
                             f"--overwrite to replace it (its data would be lost)")
        if path.exists():
            store.refuse_if_open(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(path.name + ".creating")
        store.create_file(tmp, cfg_yaml, L, seed, temperatures, compress)
        tmp.replace(path)  # the file appears complete or not at all
        w = cls.open(path)
        w.attach_lock(lock)
        return w

    @classmethod
    def open(cls, path):
        """A writer of the run file ``path`` as it is (no recovery: see :meth:`reopen`),
        appending after its last sample, in SWMR mode."""
        # /spins bypasses the chunk cache (write_direct_chunk); HDF5's default cache serves
        # the small datasets
        f = h5py.File(path, "r+", libver=LIBVER)
        f.swmr_mode = True
        return cls(f)

    @classmethod
    def reopen(cls, path, lock=None):
        """Open an existing run for resuming: refuse foreign/locked files, repair it
        (:func:`ising_dist.store.recover`), cut samples back to the latest checkpoint.
        Returns (writer, checkpoint {PTState field: array}); StoreError for a missing file or
        one without a checkpoint. lock: as for :meth:`create` (or attach it later with
        :meth:`attach_lock`)."""
        path = Path(path)
        if not path.is_file():
            raise StoreError(f"--resume: {str(path)!r} does not exist; drop --resume to start "
                             f"a new run")
        if lock is None:
            refuse_if_live(path)
        store.recover(path)
        w = cls.open(path)
        w.attach_lock(lock)
        ckpt = store.read_checkpoint(w.f)
        if ckpt is None:
            w.close()
            raise StoreError(f"{str(path)!r} holds no checkpoint yet (the run was stopped "
                             f"before its first one); start again with --overwrite")
        w.last_checkpoint = int(ckpt["position"][0])
        w.truncate(int(ckpt["position"][1]))
        return w, ckpt

    def attach_lock(self, lock):
        """Hand this writer the run's RunLock (None: none): the file it has open is the run's
        output from now on, and every checkpoint first checks that it still is."""
        self.lock = lock
        if lock is not None:
            lock.bind(fd=self.f.id.get_vfd_handle())

    # -- streaming ----------------------------------------------------------------------
    def write(self, sweep, spins, energy, magnet, replica, slot=None):
        """Hand over k samples of every temperature slot (arguments in the module
        docstring; slot None: row i is slot i). Returns the job holding the arrays, or None
        (a single sample is copied)."""
        sweep = np.asarray(sweep, np.int64)
        k, n = np.shape(energy)
        slot = self._all_slots if slot is None else slot
        return self.write_parts(sweep, [(_per_sample(slot, k, n), spins, energy, magnet,
                                         _per_sample(replica, k, n))])

    def write_parts(self, sweep, parts):
        """Hand over k samples given in parts (e.g. one per rank), each a tuple (slot
        int64 [k, n], spins packed uint8 [k, n, L·L/4], energy float64 [k, n], magnet
        float64 [k, n], replica int32 [k, n]): row i of sample j of a part is temperature
        slot slot[j, i]; together the parts cover every slot once. Returns as :meth:`write`."""
        if len(sweep) == 1:
            self._stage(sweep[0], parts)
            return None
        self._submit_stage()  # samples keep their order
        self.n_samples += len(sweep)
        while len(self._jobs) >= self.MAX_JOBS:
            self._jobs.popleft().result()
        job = self._pool.submit(self._append, sweep, parts)
        self._jobs.append(job)
        return job

    def _stage(self, sweep, parts):
        """Copy one sample into the staging block; hand the block over when it holds a
        chunk's worth or after flush_seconds."""
        i = self._nstage
        for slot, packed, energy, magnet, replica in parts:
            s = slot[0]
            self._stage_packed[i, s] = packed[0]
            self._stage_energy[i, s] = energy[0]
            self._stage_magnet[i, s] = magnet[0]
            self._stage_replica[i, s] = replica[0]
        self._stage_sweep[i] = sweep
        self._nstage = i + 1
        self.n_samples += 1
        if self._nstage == self.chunk or \
                time.monotonic() - self._last_submit > self.flush_seconds:
            self._submit_stage()

    def _submit_stage(self):
        n, self._nstage = self._nstage, 0
        self._last_submit = time.monotonic()
        if n:
            slots = np.broadcast_to(self._all_slots, (n, self.R))
            while len(self._jobs) >= self.MAX_JOBS:
                self._jobs.popleft().result()
            self._jobs.append(self._pool.submit(
                self._append, self._stage_sweep[:n].copy(),
                [(slots, *(a[:n].copy() for a in (self._stage_packed, self._stage_energy,
                                                   self._stage_magnet, self._stage_replica)))]))

    def _append(self, sweeps, parts):
        """The writer thread's part of :meth:`write_parts`."""
        k = len(sweeps)
        if self._npend + k > self._cap:
            self._grow(max(2 * self._cap, self._npend + k))
        i = self._npend
        self._pend_sweep[i:i + k] = sweeps
        for slots, _, energy, magnet, replica in parts:
            for pend, values in ((self._pend_energy, energy), (self._pend_magnet, magnet),
                                 (self._pend_replica, replica)):
                np.put_along_axis(pend[i:i + k], slots, values, axis=1)
        self._npend = i + k
        j = 0
        while j < k:
            m = min(k - j, self.chunk - self._fill)
            at = self._fill + np.arange(m)[:, None]
            for slots, packed, *_ in parts:  # one copy: 25 GB/s here, a numba loop 3
                self._samples[slots[j:j + m], at] = packed[j:j + m]
            self._fill += m
            j += m
            if self._fill == self.chunk:
                self._write_row()
        if time.monotonic() - self._last_flush > self.flush_seconds:
            self._flush()

    def _write_row(self):
        """Write the current chunk row of /spins (R chunks), full or (at a flush) partial;
        a full row makes room for the next."""
        fill, n = self._fill, self._row_start + self._fill
        if fill < self.chunk:
            self._rowbuf[:, SO_HEADER + fill * self._B:-1] = PAD_CODE
        dset = self._spins
        if n > dset.shape[1]:  # grown first: readers see 0 ("not yet written") until written
            dset.resize(n, axis=1)
        write = dset.id.write_direct_chunk
        for r in range(self.R):
            if self._encoded:
                write((r, self._row_start, 0, 0), self._rowbuf[r], filter_mask=0)
            else:
                unpack_spins(self._rowbuf[r, SO_HEADER:-1], self._raw)
                write((r, self._row_start, 0, 0), self._raw, filter_mask=0)
        if fill < self.chunk:
            self._written = fill
        else:
            self._row_start += self.chunk
            self._fill = self._written = 0

    def _drain(self):
        """Wait for the queued blocks (and raise the writer's error, if any)."""
        self._submit_stage()
        while self._jobs:
            self._jobs.popleft().result()

    def _flush(self):
        if self._fill > self._written:
            self._write_row()
        k = self._npend
        if k:
            f, n0, n1 = self.f, self._n_small, self._n_small + k
            for name in ("energy", "magnetization", "replica"):
                f[name].resize(n1, axis=1)
            f["sweep"].resize(n1, axis=0)
            f["energy"][:, n0:n1] = self._pend_energy[:k].T
            f["magnetization"][:, n0:n1] = self._pend_magnet[:k].T
            f["replica"][:, n0:n1] = self._pend_replica[:k].T
            f["sweep"][n0:n1] = self._pend_sweep[:k]
            self._n_small, self._npend = n1, 0
        self.f.flush()
        self._last_flush = time.monotonic()

    def flush(self):
        """Write the queued samples and make them visible to readers."""
        self._drain()
        self._flush()

    def truncate(self, n):
        """Cut the run back to n samples (queued ones are written first); appending goes on
        from there."""
        self.flush()
        store.cut_samples(self.f, n)
        self._start_at(n)

    def set_temperatures(self, temperatures):
        """Store the ladder (float64 [R], ascending) in /temperatures."""
        self._drain()
        self.f["temperatures"][:] = temperatures

    # -- checkpoints --------------------------------------------------------------------
    def checkpoint(self, state):
        """Write the complete PTState ``state`` as the new checkpoint, position[1] the
        samples handed over (:func:`ising_dist.store.write_checkpoint`). Queued samples are
        written first, so the checkpoint never points past the data. Raises RunLostError
        (writing nothing) if the file was replaced or the lock lost."""
        self.checkpoint_arrays(state.arrays())

    def checkpoint_arrays(self, arrays):
        """:meth:`checkpoint` of a complete state given as {PTState field: array}."""
        if self.lock is not None:
            self.lock.check(self.path)
        self.flush()
        arrays = _at(arrays, self.n_samples)
        store.write_checkpoint(self.f, arrays, _assign)
        self.last_checkpoint = int(arrays["position"][0])

    def read_checkpoint(self):
        """The file's current checkpoint ({PTState field: array}), or None."""
        return store.read_checkpoint(self.f)

    def close(self):
        """Write everything queued and close the file."""
        self.flush()
        self._pool.shutdown()
        self.f.close()


# -- every rank calls a writer; the writer decides who writes ---------------------------------
def gather_writer(comm, run_writer):
    """The gather writer of this rank: on rank 0 a :class:`GatherWriter` around
    ``run_writer`` (the file's :class:`RunWriter`), elsewhere a :class:`GatherSender`
    (``run_writer`` is None there)."""
    return GatherWriter(comm, run_writer) if comm.rank == 0 else GatherSender(comm)


class GatherSender:
    """The gather writer of every rank but 0: it takes part in the gathers that carry its
    replicas' samples and checkpoint rows to rank 0, and writes nothing."""

    last_checkpoint = None  # sweep of the newest checkpoint on disk: only rank 0 knows

    def __init__(self, comm):
        self.comm = comm

    def _gather_samples(self, sweep, spins, energy, magnet, replica, slot):
        """Every rank's block (arguments of :meth:`write`) as parts of
        :meth:`RunWriter.write_parts`, a list by rank on rank 0; None elsewhere. Two buffer
        gathers for the whole block: the small fields travel as one int64 array."""
        k, n = np.shape(energy)
        meta = np.empty((k, n, 4), np.int64)
        meta[..., 0] = np.arange(n) if slot is None else slot
        meta[..., 1] = np.asarray(energy, np.float64).view(np.int64)
        meta[..., 2] = np.asarray(magnet, np.float64).view(np.int64)
        meta[..., 3] = replica
        metas, packs = self.comm.gather_blocks(meta), self.comm.gather_blocks(spins)
        if metas is None:
            return None
        return [(m[..., 0], p, m[..., 1].view(np.float64), m[..., 2].view(np.float64),
                 m[..., 3].astype(np.int32)) for m, p in zip(metas, packs)]

    def _gather_rows(self, state, ids):
        """Every rank's (ids, {per-replica PTState field: rows of ids}), a list by rank on
        rank 0; None elsewhere."""
        return self.comm.gather((ids, state.arrays(local=True)))

    def write(self, sweep, spins, energy, magnet, replica, slot=None):
        """Send k samples of this rank's replicas (module docstring) to rank 0. Returns None:
        the gather has sent them."""
        self._gather_samples(sweep, spins, energy, magnet, replica, slot)

    def checkpoint(self, state, ids):
        """Send this rank's rows of the per-replica fields of ``state`` (replica ids ``ids``)
        to rank 0, which writes the checkpoint."""
        self._gather_rows(state, ids)

    def set_temperatures(self, temperatures):
        """Nothing: rank 0 stores the ladder."""

    def close(self):
        """Nothing: rank 0 owns the file."""


class GatherWriter(GatherSender):
    """Rank 0's gather writer: ranks send their replicas to rank 0, which writes with a
    serial :class:`RunWriter`. The file is live-readable (SWMR). Costs rank 0 the gather and
    the encoding."""

    def __init__(self, comm, run_writer):
        super().__init__(comm)
        self.w = run_writer

    def write(self, sweep, spins, energy, magnet, replica, slot=None):
        """Gather k samples of every rank's replicas (module docstring) and hand them to the
        RunWriter. Returns its job (which holds the gathered arrays: on one rank, the
        caller's), or None."""
        parts = self._gather_samples(sweep, spins, energy, magnet, replica, slot)
        return self.w.write_parts(np.asarray(sweep, np.int64), parts)

    def checkpoint(self, state, ids):
        """Gather every rank's rows of the per-replica fields of ``state`` (this rank's:
        replica ids ``ids``) and write the checkpoint (:meth:`RunWriter.checkpoint`)."""
        local = {}
        for rank_ids, rows in self._gather_rows(state, ids):
            for name, a in rows.items():
                if name not in local:
                    local[name] = np.empty((self.w.R,) + a.shape[1:], a.dtype)
                local[name][rank_ids] = a
        self.w.checkpoint_arrays(dict(state.arrays(), **local))

    def set_temperatures(self, temperatures):
        """Store the ladder (float64 [R], ascending)."""
        self.w.set_temperatures(temperatures)

    @property
    def last_checkpoint(self):
        """Sweep of the newest checkpoint on disk (None before one)."""
        return self.w.last_checkpoint

    def close(self):
        """Write everything queued and close the file."""
        self.w.close()


class StripGatherWriter:
    """The writer of a rank of a replica group under domain decomposition (ising_dist.domain:
    each of the group's k ranks holds a strip of rows of the group's lattices). Samples and
    checkpoints gather the strips to the group's leader (group rank 0), which hands whole
    lattices to its writer over the leaders' communicator (one rank per group, e.g. a
    :func:`gather_writer`); the other ranks write nothing.

    Its calls are those of the module docstring, except that ``spins`` of :meth:`write` are
    this rank's strips unpacked, int8 [k, n, L/g, L] (g ranks in the group), and the spins
    of the state given to :meth:`checkpoint` are strips int8 [n, L/g, L].
    """

    def __init__(self, group, inner):
        """group: the replica group's communicator (ising_dist.mpi); inner: the leader's
        writer of whole lattices (None on the other ranks)."""
        self.group, self.inner = group, inner

    def _lattices(self, strips):
        """Whole lattices [..., L, L] from every group rank's strips [..., L/g, L] (rows in
        group-rank order) on the leader; None elsewhere."""
        parts = self.group.gather_array(strips)
        return None if parts is None else np.concatenate(list(parts), axis=-2)

    def write(self, sweep, spins, energy, magnet, replica, slot=None):
        """Gather k samples' strips (int8 [k, n, L/g, L]) and, on the leader, hand the
        whole lattices, packed, to its writer. Returns its job, or None."""
        lattices = self._lattices(spins)
        if lattices is None:
            return None
        return self.inner.write(sweep, pack(lattices), energy, magnet, replica, slot=slot)

    def checkpoint(self, state, ids):
        """Gather the strips of ``state.spins`` (PTState, replica ids ``ids``) and, on the
        leader, checkpoint the state with whole lattices through its writer."""
        lattices = self._lattices(state.spins)
        if lattices is not None:
            self.inner.checkpoint(dataclasses.replace(state, spins=lattices), ids)

    def set_temperatures(self, temperatures):
        """Store the ladder (float64 [R], ascending): the leader's writer does."""
        if self.inner is not None:
            self.inner.set_temperatures(temperatures)

    @property
    def last_checkpoint(self):
        """Sweep of the newest checkpoint known on disk (None before one, or not known
        on this rank)."""
        return None if self.inner is None else self.inner.last_checkpoint

    def close(self):
        """Close the leader's writer (the others hold none)."""
        if self.inner is not None:
            self.inner.close()


def _row_slabs(rows, shape, at=()):
    """Hyperslabs (start, count) selecting the rows ``rows`` of a dataset, at index ``at``
    of the axes after the first, whole along the trailing axes of ``shape``."""
    return [((int(r),) + at + (0,) * len(shape), (1,) * (1 + len(at)) + tuple(shape))
            for r in rows]


class CollectiveWriter:
    """Every rank writes its own rows through parallel HDF5 (the mpio driver), collectively;
    rank 0 also writes what every rank holds identically (the sweeps, the ladder, the
    global checkpoint fields), decided when the writer is made.

    Needs h5py built against parallel HDF5 (``h5py.get_config().mpi``). Gives up live reading
    (SWMR does not work with mpio: readers wait for the run to end or stop) and compression of
    /spins (filtered collective writes corrupted data or hung with parallel HDF5 1.10.8; the
    file is created uncompressed, the data are the same). Samples are buffered a chunk at a
    time (and at checkpoints), the same on every rank.
    """

    def __init__(self, comm, path, lock=None):
        """Open the run file ``path`` (created or cut back by a :class:`RunWriter`, closed
        since) on every rank of ``comm``. lock: the run's RunLock on rank 0 (None on the
        other ranks), checked at every checkpoint; the file must be the one it was bound to
        (RunWriter.attach_lock)."""
        self.comm, self.path, self.lock = comm, Path(path), lock
        self.last_checkpoint = None
        self.f = h5py.File(path, "r+", driver="mpio", comm=comm.h5py_comm(), libver=LIBVER)
        self.R, self.L = self.f["spins"].shape[0], self.f["spins"].shape[2]
        self.chunk = self.f["spins"].chunks[1]
        self.n_samples = self.f["spins"].shape[1]
        self._writes_shared = comm.rank == 0
        self._local = PTState.names(local=True)
        self._buf = []

    def _write(self, dset, selection, data):
        """Collective write of ``data`` into ``dset[selection]``; selection None: nothing."""
        dxpl = h5py.h5p.create(h5py.h5p.DATASET_XFER)
        dxpl.set_dxpl_mpio(h5py.h5fd.MPIO_COLLECTIVE)
        fspace = dset.id.get_space()
        data = np.ascontiguousarray(data, dtype=dset.dtype)
        mspace = h5py.h5s.create_simple(data.shape if data.ndim else (1,))
        if selection is None:
            fspace.select_none()
            mspace.select_none()
        else:
            fspace.select_none()
            for start, count in selection:
                fspace.select_hyperslab(start, count, op=h5py.h5s.SELECT_OR)
        dset.id.write(mspace, fspace, data.reshape(data.shape or (1,)), dxpl=dxpl)

    def _shared(self, dset, data):
        """Rank 0 writes a dataset every rank holds identically (others select nothing)."""
        data = np.asarray(data)
        self._write(dset, [((0,) * data.ndim, data.shape)] if self._writes_shared else None,
                    data)

    def write(self, sweep, spins, energy, magnet, replica, slot=None):
        """Buffer k samples of this rank's replicas (module docstring); every rank writes
        its rows when a chunk's worth is buffered. Returns None (the samples are copied)."""
        k, n = np.shape(energy)
        unpacked = np.empty((k, n, self.L, self.L), np.int8)
        unpack_spins(np.ascontiguousarray(spins), unpacked)
        slot = _per_sample(np.arange(n) if slot is None else slot, k, n)
        replica = _per_sample(replica, k, n)
        for j in range(k):
            self._buf.append((int(sweep[j]), replica[j].copy(), slot[j].copy(), unpacked[j],
                              np.array(energy[j]), np.array(magnet[j])))
            if len(self._buf) >= self.chunk:
                self.flush()

    def flush(self):
        """Write the buffered samples (collectively) and flush the file."""
        k = len(self._buf)
        if k:
            f, n0 = self.f, self.n_samples
            for name in store.SAMPLE_DATASETS:
                f[name].resize(n0 + k, axis=1)
            f["sweep"].resize(n0 + k, axis=0)
            L = self.L
            for j, (sweep, ids, slots, spins, energy, magnet) in enumerate(self._buf):
                order = np.argsort(slots)
                rows = slots[order]
                self._write(f["spins"], _row_slabs(rows, (L, L), (n0 + j,)), spins[order])
                self._write(f["energy"], _row_slabs(rows, (), (n0 + j,)), energy[order])
                self._write(f["magnetization"], _row_slabs(rows, (), (n0 + j,)), magnet[order])
                self._write(f["replica"], _row_slabs(rows, (), (n0 + j,)), ids[order])
            sweeps = np.array([b[0] for b in self._buf], np.int64)
            self._write(f["sweep"], [((n0,), (k,))] if self._writes_shared else None, sweeps)
            self.n_samples = n0 + k
            self._buf = []
        self.f.flush()

    def checkpoint(self, state, ids):
        """Write the checkpoint collectively (:func:`ising_dist.store.write_checkpoint`):
        each rank the rows of its replicas ``ids`` of the per-replica fields of ``state``,
        rank 0 the rest. Raises RunLostError on every rank, writing nothing, if rank 0's lock
        says the file was replaced or the lock lost."""
        lost = None
        if self.lock is not None:
            try:
                self.lock.check(self.path)
            except RunLostError as exc:
                lost = str(exc)
        lost = self.comm.bcast(lost)  # every rank stops together, before writing anything
        if lost is not None:
            raise RunLostError(lost)
        self.flush()
        order = np.argsort(ids)
        rows = ids[order]

        def put(dset, name, value):
            if name in self._local:
                value = np.asarray(value)[order]
                self._write(dset, _row_slabs(rows, value.shape[1:]), value)
            else:
                self._shared(dset, value)
        arrays = _at(state.arrays(), self.n_samples)
        store.write_checkpoint(self.f, arrays, put)
        self.last_checkpoint = int(arrays["position"][0])

    def set_temperatures(self, temperatures):
        """Store the ladder (float64 [R], ascending)."""
        self._shared(self.f["temperatures"], temperatures)

    def close(self):
        """Write the buffered samples and close the file."""
        self.flush()
        self.f.close()
