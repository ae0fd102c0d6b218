"""The HDF5 file of a parallel-tempering run (schema_version 1, see DESIGN.md).

```
/                 attrs: schema_version=1, L, seed, config (YAML), code_version, sweeps_done
/temperatures     float64 [R]            the ladder, ascending
/spins            int8    [R, S, L, L]   ±1; chunked along S, compressed with HDF5's
                                         scale-offset filter (2 bits a spin; lossless, read
                                         by any HDF5 reader; 3.6x faster here than gzip)
/energy           float64 [R, S]         energy per spin
/magnetization    float64 [R, S]         signed magnetization per spin
/sweep            int64   [S]            Monte Carlo sweep at which sample s was taken
/replica          int32   [R, S]         which replica held temperature r at sample s
/exchange/attempted, /exchange/accepted   int64 [R-1]
/checkpoint/current                       int64 [1]   which slot holds the latest checkpoint
/checkpoint/slot{0,1}/...                 state to resume bit-for-bit (see CHECKPOINT_FIELDS)
```
Writing: one process (the writer rank) owns the file. It is created with libver v110 (so
Debian's h5ls/h5dump 1.10 read it) and switched to SWMR, so other processes can read it
while the run streams (open with ``h5py.File(path, "r", swmr=True)``; see :func:`open_read`).
Samples are buffered in memory, a chunk row of /spins at a time, already compressed: the
tempering loops capture spins packed 2 bits each (kernels.pack_spins), which with a header
is byte for byte HDF5's own scale-offset encoding (:func:`encode_scaleoffset_int8`). Each full
(or, at a flush, partial) chunk is written with ``write_direct_chunk``, bypassing HDF5's slow
filter path; everything is written and made visible to readers at least every
``flush_seconds``.

Crash safety: a checkpoint is written into the slot that is *not* current, flushed, and
only then is ``/checkpoint/current`` switched, so a kill at any moment leaves one complete
checkpoint; samples beyond that checkpoint are cut off on resume. A file whose writer was
killed still carries HDF5's "open for writing" flag: h5py opens it with ``swmr=True``;
resuming clears the flag (``h5clear -s``, from Debian's hdf5-tools) before reopening.

One writer per file: an entry point locks the file (:class:`ising_dist.runlock.RunLock`,
``<file>.lock``) before creating or reopening it and hands the lock to the writer, which
checks it at every checkpoint (:meth:`RunWriter.checkpoint`) and stops the run with
``RunLostError`` once the file was replaced or removed under it. Opened without a lock (from a
script), a writer refuses a file that a live run holds (``RunLockedError``).
"""

import collections
import fcntl
import os
import re
import shutil
import subprocess
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import h5py
import numba
import numpy as np
import yaml

from . import __version__
from .kernels import _pack, pack_spins, unpack_spins
from .runlock import RunLostError, refuse_if_live

SCHEMA_VERSION = 1
LIBVER = ("v110", "v110")
CHECKPOINT_FIELDS = {
    # name: (dtype, shape given R and L)
    "spins": (np.int8, lambda R, L: (R, L, L)),         # lattice of replica id k
    "counters": (np.uint64, lambda R, L: (R,)),         # Wolff stream position of replica k
    "slot_of": (np.int64, lambda R, L: (R,)),           # temperature slot of replica k
    "temperatures": (np.float64, lambda R, L: (R,)),    # ladder (adaptive ladders move)
    "n_wolff": (np.int64, lambda R, L: (R,)),           # Wolff clusters per sweep, per slot
    "direction": (np.int8, lambda R, L: (R,)),          # round-trip state of replica k
    "round_trips": (np.int64, lambda R, L: (R,)),       # completed round trips of replica k
    "attempted": (np.int64, lambda R, L: (R - 1,)),
    "accepted": (np.int64, lambda R, L: (R - 1,)),
    "window_attempted": (np.int64, lambda R, L: (R - 1,)),  # adaptive-ladder window
    "window_accepted": (np.int64, lambda R, L: (R - 1,)),
    "position": (np.int64, lambda R, L: (2,)),          # [sweep, samples written]
}


class StoreError(ValueError):
    """A file that cannot be used as asked; the message says why and what to do."""


def _chunk_samples(L):
    """Samples per chunk: about 256 KiB of int8 spins (64 KiB encoded) per (temperature,
    chunk). Larger chunks mean fewer chunk writes (about 11 us each with HDF5 here, plus the
    bytes); a reader of one sample decodes its whole chunk."""
    return int(max(1, min(1024, 2**18 // (L * L))))


SO_HEADER = 21  # scale-offset chunk header: minbits u32, sizeof(minval)=8, minval i64, zeros
PAD_CODE = 0x55  # four packed spins of value 0: "not yet written" (the fill value)


def _encoded_nbytes(n):
    """Bytes of a scale-offset chunk of n int8 values at minbits=2 (HDF5 adds one spare byte)."""
    return SO_HEADER + n * 2 // 8 + 1


@numba.njit(inline="always")
def _so_header(dst):
    """The header of a scale-offset chunk of int8 at minbits=2, minval=-1; zeros up to the
    packed values."""
    dst[0] = 2
    dst[1] = 0
    dst[2] = 0
    dst[3] = 0
    dst[4] = 8
    for i in range(5, 13):
        dst[i] = 0xFF                     # minval = -1 as little-endian int64
    for i in range(13, SO_HEADER):
        dst[i] = 0


@numba.njit(nogil=True, cache=True)
def encode_scaleoffset_int8(src, dst):
    """HDF5's scale-offset filter (scaleoffset=0 on int8) applied to ``src`` (int8 values in
    {-1, 0, 1}, 1-d) into ``dst`` (uint8, ``_encoded_nbytes(src.size)`` long), with minbits=2
    and minval=-1: a 21-byte header, then the values packed as kernels.pack_spins does (v + 1,
    2 bits each, most significant bits first), then one zero byte. HDF5 decodes it like its
    own output (for a chunk of one value it would pick minbits=1; minbits=2 reads back the
    same). Returns the bytes written."""
    n = src.size
    nbytes = SO_HEADER + n * 2 // 8 + 1
    _so_header(dst)
    q = n // 4
    _pack(src[:4 * q], dst[SO_HEADER:SO_HEADER + q])
    b = 0
    for i in range(4 * q, n):             # a last partial byte (n not a multiple of 4)
        b |= ((src[i] + 1) & 3) << (6 - 2 * (i - 4 * q))
    for i in range(SO_HEADER + q, nbytes):
        dst[i] = 0
    if n > 4 * q:
        dst[SO_HEADER + q] = b
    return nbytes


@numba.njit(nogil=True, cache=True)
def _new_row(R, cs, B):
    """A row of R encoded chunks of cs packed samples (B bytes each), all "not yet written"."""
    row = np.full((R, SO_HEADER + cs * B + 1), PAD_CODE, np.uint8)
    for r in range(R):
        _so_header(row[r])
        row[r, -1] = 0
    return row


def _has_scaleoffset(dset):
    plist = dset.id.get_create_plist()
    return any(plist.get_filter(i)[0] == h5py.h5z.FILTER_SCALEOFFSET
               for i in range(plist.get_nfilters()))


def open_read(path):
    """Open a run file for reading (works while it is written and after a crash)."""
    path = Path(path)
    if not path.is_file():
        raise StoreError(f"{str(path)!r} does not exist; give the HDF5 file written by "
                         f"`python -m ising_dist.pt`")
    try:
        f = h5py.File(path, "r", swmr=True)
    except OSError as exc:
        raise StoreError(f"{str(path)!r} is not a readable HDF5 file ({exc})") from None
    check_ours(f, path)
    return f


def check_ours(f, path):
    version = f.attrs.get("schema_version")
    if version is None or "spins" not in f or "temperatures" not in f:
        raise StoreError(f"{str(path)!r} is not an ising_dist parallel-tempering file "
                         f"(no schema_version attribute / spins dataset)")
    if int(version) != SCHEMA_VERSION:
        raise StoreError(f"{str(path)!r} has schema_version={int(version)}, this code reads "
                         f"{SCHEMA_VERSION}; use the ising_dist version that wrote it")


def stored_config(f):
    return yaml.safe_load(f.attrs["config"])


def _clear_crash_flag(path):
    """Clear HDF5's 'open for writing' superblock flag left by a killed writer."""
    exe = shutil.which("h5clear")
    if exe is None:
        raise StoreError(f"{str(path)!r} was left open by a killed run and needs `h5clear -s` "
                         f"before it can be resumed; install it with `apt-get install "
                         f"hdf5-tools` (the Makefile's setup does this)")
    subprocess.run([exe, "-s", str(path)], check=True, capture_output=True)


def _repair_truncated(path):
    """A write that failed (full file system, quota, file-size limit) can leave the file
    shorter than the size its superblock records, and HDF5 refuses to open it. Pad it with
    zeros to that size: what the failed writes held lies past the last checkpoint, which
    resuming cuts away. Other files are left alone."""
    try:
        h5py.File(path, "r").close()
        return
    except OSError as exc:
        m = re.search(r"truncated file: eof = (\d+),.*stored_eof = (\d+)", str(exc))
    if m and int(m.group(2)) > int(m.group(1)) == path.stat().st_size:
        os.truncate(path, int(m.group(2)))


def _refuse_if_locked(path):
    """Refuse to touch a file that another HDF5 program holds open without SWMR (HDF5 takes a
    flock then). A run's SWMR writer holds none: its RunLock guards it (refuse_if_live)."""
    with open(path, "rb") as fh:
        try:
            fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise StoreError(f"{str(path)!r} is open in another process (a run still going?); "
                             f"stop it first or write to another --out") from None
        fcntl.flock(fh, fcntl.LOCK_UN)


class RunWriter:
    """Owns the run file on the writer rank: creation, streaming samples, checkpoints.

    Appended samples are handled by one background thread, a job per append (the caller's
    kernels release the GIL meanwhile): it copies them into the current chunk row of /spins,
    ``_rowbuf``, R chunks of cs samples already in their encoded (scale-offset) form, spins
    packed 2 bits each (:func:`ising_dist.kernels.pack_spins`), ``_fill`` samples in; writes
    each full row; queues the small per-sample fields in ``_pend_*`` (``_npend`` samples);
    and makes everything visible to readers every ``flush_seconds``. Every other use of the
    file first waits for the jobs (:meth:`_drain`), so the file sees the same operations in
    the same order as without the thread. ``n_samples`` counts every sample appended."""

    def __init__(self, f, flush_seconds=0.5):
        self.f = f
        self.path = Path(f.filename)
        self.lock = None             # the run's RunLock (see attach_lock)
        self.last_checkpoint = None  # sweep of the newest checkpoint known to be on disk
        spins = f["spins"]
        self.R, self.L = spins.shape[0], spins.shape[2]
        self.chunk = cs = spins.chunks[1]
        self.flush_seconds = flush_seconds
        self._encoded = _has_scaleoffset(spins)
        self._spins = spins
        self._B = B = self.L * self.L // 4  # bytes of a packed sample
        self._rowbuf = _new_row(self.R, cs, B)
        # its packed samples: _samples[k, j] is sample j of slot k (a view)
        self._samples = np.lib.stride_tricks.as_strided(
            self._rowbuf[:, SO_HEADER:], (self.R, cs, B), (self._rowbuf.strides[0], B, 1))
        # unfiltered files (made for the collective writer) take the spins unpacked
        self._raw = None if self._encoded else np.empty((cs, self.L, self.L), np.int8)
        self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="ising-writer")
        self._jobs = collections.deque()  # futures of the appends not yet handled
        # single samples (append) wait here until a chunk's worth is handed over
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
        """A new run file. compress=False stores /spins unfiltered: for the collective writer,
        since filtered collective writes corrupted data or hung with parallel HDF5 1.10.8.
        lock: this run's RunLock on ``path`` (taken before), checked at every checkpoint;
        without one, a file held by a live run is refused (RunLockedError)."""
        path = Path(path)
        if lock is None:
            refuse_if_live(path)
        if path.exists() and not overwrite:
            raise StoreError(f"--out {str(path)!r} exists; pass --resume to continue it or "
                             f"--overwrite to replace it (its data would be lost)")
        if path.exists():
            _refuse_if_locked(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(path.name + ".creating")
        R = len(temperatures)
        cs = _chunk_samples(L)

        def dcpl():
            # parallel HDF5 writes only into allocated chunks: allocate each chunk as soon as
            # a resize creates it (the collective writer's files); serial files allocate late
            plist = h5py.h5p.create(h5py.h5p.DATASET_CREATE)
            if not compress:
                plist.set_alloc_time(h5py.h5d.ALLOC_TIME_EARLY)
            return plist

        with h5py.File(tmp, "w", libver=LIBVER) as f:
            f.attrs.update(schema_version=SCHEMA_VERSION, L=L, seed=seed, config=cfg_yaml,
                           code_version=__version__, sweeps_done=0)
            f.create_dataset("temperatures", data=np.asarray(temperatures, np.float64))
            f.create_dataset("spins", shape=(R, 0, L, L), maxshape=(R, None, L, L),
                             dtype=np.int8, chunks=(1, cs, L, L),
                             scaleoffset=0 if compress else None, dcpl=dcpl())
            for name, dtype in (("energy", np.float64), ("magnetization", np.float64),
                                ("replica", np.int32)):
                f.create_dataset(name, shape=(R, 0), maxshape=(R, None), dtype=dtype,
                                 chunks=(R, 1024), dcpl=dcpl())
            f.create_dataset("sweep", shape=(0,), maxshape=(None,), dtype=np.int64,
                             chunks=(1024,), dcpl=dcpl())
            g = f.create_group("exchange")
            for name in ("attempted", "accepted"):
                g.create_dataset(name, data=np.zeros(R - 1, np.int64))
            c = f.create_group("checkpoint")
            c.create_dataset("current", data=np.array([-1], np.int64))
            for slot in (0, 1):
                s = c.create_group(f"slot{slot}")
                for name, (dtype, shape) in CHECKPOINT_FIELDS.items():
                    s.create_dataset(name, shape=shape(R, L), dtype=dtype)
        tmp.replace(path)  # the file appears complete or not at all
        w = cls._open_swmr(path)
        w.attach_lock(lock)
        return w

    @classmethod
    def _open_swmr(cls, path):
        # /spins bypasses the chunk cache (write_direct_chunk); HDF5's default cache serves
        # the small datasets
        f = h5py.File(path, "r+", libver=LIBVER)
        f.swmr_mode = True
        return cls(f)

    @classmethod
    def reopen(cls, path, lock=None):
        """Open an existing run for resuming: refuse foreign/locked files, clear a crash flag,
        cut samples back to the latest checkpoint. Returns (writer, checkpoint dict).
        lock: as for :meth:`create` (or attach it later with :meth:`attach_lock`)."""
        path = Path(path)
        if not path.is_file():
            raise StoreError(f"--resume: {str(path)!r} does not exist; drop --resume to start "
                             f"a new run")
        if lock is None:
            refuse_if_live(path)
        _refuse_if_locked(path)
        size = path.stat().st_size
        _repair_truncated(path)
        try:
            h5py.File(path, "r").close()
        except OSError as exc:
            if "already open for write" not in str(exc):
                os.truncate(path, size)
                raise StoreError(f"{str(path)!r} is not a readable HDF5 file ({exc})") from None
            _clear_crash_flag(path)
        with h5py.File(path, "r") as f:
            try:
                check_ours(f, path)
            except StoreError:
                os.truncate(path, size)  # leave a foreign file as it was
                raise
        w = cls._open_swmr(path)
        w.attach_lock(lock)
        ckpt = w.read_checkpoint()
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
    MAX_JOBS = 2  # appends queued at once: the caller waits for the oldest beyond that

    def append(self, sweep, spins, energy, magnet, replica):
        """Queue one sample (copied): spins int8 [R, L, L], energy/magnet float64 [R] per spin,
        replica int32 [R], all ordered by temperature slot. Single samples are staged here
        and handed to the writer thread a chunk's worth at a time (or after flush_seconds):
        a job per sample would cost more than the sample."""
        i = self._nstage
        pack_spins(np.ascontiguousarray(spins, np.int8), self._stage_packed[i])
        self._stage_sweep[i] = sweep
        self._stage_energy[i] = energy
        self._stage_magnet[i] = magnet
        self._stage_replica[i] = replica
        self._nstage = i + 1
        self.n_samples += 1
        if self._nstage == self.chunk or \
                time.monotonic() - self._last_submit > self.flush_seconds:
            self._submit_stage()

    def _submit_stage(self):
        n, self._nstage = self._nstage, 0
        self._last_submit = time.monotonic()
        if n:
            slots = np.broadcast_to(np.arange(self.R, dtype=np.int64), (n, self.R))
            self._submit(self._stage_sweep[:n].copy(), [(slots, *(a[:n].copy() for a in (
                self._stage_packed, self._stage_energy, self._stage_magnet,
                self._stage_replica)))])

    def append_block(self, sweeps, spins, energy, magnet, replica, slots=None):
        """Queue k samples at once (copied): sweeps [k], spins int8 [k, R, L, L],
        energy/magnet float64 [k, R] per spin, replica int32 [k, R], rows ordered by
        temperature slot or by ``slots`` (row i of sample j is slot slots[j, i])."""
        spins = np.ascontiguousarray(spins, np.int8)
        packed = np.empty(spins.shape[:2] + (self._B,), np.uint8)
        pack_spins(spins, packed)
        if slots is None:
            slots = np.broadcast_to(np.arange(self.R, dtype=np.int64), np.shape(energy))
        self.append_parts(np.array(sweeps), [(np.array(slots), packed, np.array(energy),
                                              np.array(magnet), np.array(replica))])

    def append_parts(self, sweeps, parts):
        """Queue k samples given in parts (e.g. one per rank), each a tuple
        (slots int64 [k, n], packed uint8 [k, n, L·L/4], energy float64 [k, n],
        magnet float64 [k, n], replica int32 [k, n]): row i of sample j of a part is
        temperature slot slots[j, i]; together the parts cover every slot once. Spins come
        packed (:func:`ising_dist.kernels.pack_spins`), as the tempering loops capture them.
        NOT copied: the arrays must stay unchanged until the returned future is done
        (``.result()``, which also raises the writer's error, if any)."""
        self._submit_stage()  # samples keep their order
        self.n_samples += len(sweeps)
        return self._submit(sweeps, parts)

    def _submit(self, sweeps, parts):
        while len(self._jobs) >= self.MAX_JOBS:
            self._jobs.popleft().result()
        job = self._pool.submit(self._append, sweeps, parts)
        self._jobs.append(job)
        return job

    def _append(self, sweeps, parts):
        """The writer thread's part of :meth:`append_parts`."""
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
        """Wait for the queued appends (and raise the writer's error, if any)."""
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
        for name in ("spins", "energy", "magnetization", "replica"):
            self.f[name].resize(n, axis=1)
        self.f["sweep"].resize(n, axis=0)
        self._start_at(n)

    def set_temperatures(self, temperatures):
        self._drain()
        self.f["temperatures"][:] = temperatures

    # -- checkpoints --------------------------------------------------------------------
    def checkpoint(self, state):
        """Write ``state`` (CHECKPOINT_FIELDS; its position[1] is filled in here) into the
        spare slot, then switch to it.
        Queued samples are written first, so the checkpoint never points past the data.
        Raises RunLostError (writing nothing) if the file was replaced or the lock lost."""
        if self.lock is not None:
            self.lock.check(self.path)
        self.flush()
        state = dict(state)
        state["position"] = np.array([state["position"][0], self.n_samples], np.int64)
        cur = int(self.f["checkpoint/current"][0])
        spare = 0 if cur < 0 else 1 - cur
        slot = self.f[f"checkpoint/slot{spare}"]
        for name in CHECKPOINT_FIELDS:
            slot[name][...] = state[name]
        self.f["exchange/attempted"][...] = state["attempted"]
        self.f["exchange/accepted"][...] = state["accepted"]
        self.f.flush()  # the slot is on disk before it becomes current
        self.f["checkpoint/current"][0] = spare
        self.f.attrs["sweeps_done"] = int(state["position"][0])
        self.f.flush()
        self.last_checkpoint = int(state["position"][0])

    def read_checkpoint(self):
        cur = int(self.f["checkpoint/current"][0])
        if cur < 0:
            return None
        slot = self.f[f"checkpoint/slot{cur}"]
        return {name: slot[name][()] for name in CHECKPOINT_FIELDS}

    def close(self):
        self.flush()
        self._pool.shutdown()
        self.f.close()


# -- every rank calls a writer; the writer decides who writes ---------------------------------
def _assemble(parts, R, L):
    """Rows from every rank's (ids, rows...) tuples → full arrays indexed by id."""
    out = None
    for ids, *rows in parts:
        if out is None:
            out = [np.empty((R,) + np.shape(r)[1:], np.asarray(r).dtype) for r in rows]
        for o, r in zip(out, rows):
            o[ids] = r
    return out


class GatherWriter:
    """Ranks send their replicas to rank 0, which writes with a serial :class:`RunWriter`.
    The file is live-readable (SWMR). Costs rank 0 the gather and the compression."""

    def __init__(self, comm, run_writer):
        self.comm, self.w = comm, run_writer

    def sample(self, sweep, ids, slots, spins, energy, magnet):
        """Local replicas ``ids`` sit at temperature ``slots``; energy/magnet per spin."""
        parts = self.comm.gather((slots, spins, energy, magnet, ids.astype(np.int32)))
        if self.w is not None:
            spins, energy, magnet, replica = _assemble(parts, self.w.R, self.w.L)
            self.w.append(sweep, spins, energy, magnet, replica)

    def sample_packed(self, sweeps, ids, slots, packed, energy, magnet):
        """k samples at once of the local replicas ``ids``: sweeps [k], slots int64 [k, n]
        (temperature slot of each replica in each sample), packed uint8 [k, n, L·L/4] the
        spins packed (kernels.pack_spins), energy/magnet float64 [k, n] per spin. Two buffer
        gathers for the whole block; the writer takes every rank's part as it is. Rank 0
        returns the writer's job (:meth:`RunWriter.append_parts`: the arrays must stay
        unchanged until it is done), the others None."""
        meta = np.empty((len(sweeps), len(ids), 4), np.int64)  # one gather for the small fields
        meta[..., 0] = slots
        meta[..., 1] = energy.view(np.int64)
        meta[..., 2] = magnet.view(np.int64)
        meta[..., 3] = ids
        metas, packs = self.comm.gather_blocks(meta), self.comm.gather_blocks(packed)
        if self.w is None:
            return None
        parts = [(m[..., 0], p, m[..., 1].view(np.float64), m[..., 2].view(np.float64),
                  m[..., 3].astype(np.int32)) for m, p in zip(metas, packs)]
        return self.w.append_parts(sweeps, parts)

    def checkpoint(self, shared, ids, spins, counters):
        parts = self.comm.gather((ids, spins, counters))
        if self.w is not None:
            spins, counters = _assemble(parts, self.w.R, self.w.L)
            self.w.checkpoint(dict(shared, spins=spins, counters=counters))

    def set_temperatures(self, temperatures):
        if self.w is not None:
            self.w.set_temperatures(temperatures)

    @property
    def last_checkpoint(self):
        """Sweep of the newest checkpoint on disk (rank 0; None elsewhere or before one)."""
        return None if self.w is None else self.w.last_checkpoint

    def close(self):
        if self.w is not None:
            self.w.close()


class CollectiveWriter:
    """Every rank writes its own rows through parallel HDF5 (the mpio driver), collectively.

    Needs h5py built against parallel HDF5 (``h5py.get_config().mpi``). Gives up live reading
    (SWMR does not work with mpio: readers wait for the run to end or stop) and compression of
    /spins (filtered collective writes corrupted data or hung with parallel HDF5 1.10.8; the
    file is created uncompressed, the data are the same). Samples are buffered a chunk at a
    time (and at checkpoints), the same on every rank.
    """

    def __init__(self, comm, path, lock=None):
        """lock: the run's RunLock on rank 0 (None on the other ranks), checked at every
        checkpoint; the file must be the one it was bound to (RunWriter.attach_lock)."""
        self.comm, self.path, self.lock = comm, Path(path), lock
        self.last_checkpoint = None
        self.f = h5py.File(path, "r+", driver="mpio", comm=comm.comm, libver=LIBVER)
        self.R, self.L = self.f["spins"].shape[0], self.f["spins"].shape[2]
        self.chunk = self.f["spins"].chunks[1]
        self.n_samples = self.f["spins"].shape[1]
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

    def _rows(self, rows, n, index):
        """Hyperslabs selecting rows ``rows`` (sorted) at sample ``index`` of an [R, S, ...]
        dataset with trailing dims n."""
        return [((int(r), index) + (0,) * len(n), (1, 1) + tuple(n)) for r in rows]

    def sample(self, sweep, ids, slots, spins, energy, magnet):
        # copies: the caller's lattices keep evolving while samples wait in the buffer
        self._buf.append((sweep, ids.copy(), slots.copy(), spins.copy(), energy.copy(),
                          magnet.copy()))
        if len(self._buf) >= self.chunk:
            self.flush()

    def sample_packed(self, sweeps, ids, slots, packed, energy, magnet):
        """k samples at once (arguments as in GatherWriter.sample_packed)."""
        L = self.L
        spins = np.empty(packed.shape[:2] + (L, L), np.int8)
        unpack_spins(np.ascontiguousarray(packed), spins)
        for j in range(len(sweeps)):
            self.sample(int(sweeps[j]), ids, slots[j], spins[j], energy[j], magnet[j])

    def flush(self):
        k = len(self._buf)
        if k:
            f, n0 = self.f, self.n_samples
            for name in ("spins", "energy", "magnetization", "replica"):
                f[name].resize(n0 + k, axis=1)
            f["sweep"].resize(n0 + k, axis=0)
            L = self.L
            for j, (sweep, ids, slots, spins, energy, magnet) in enumerate(self._buf):
                order = np.argsort(slots)
                rows = slots[order]
                self._write(f["spins"], self._rows(rows, (L, L), n0 + j), spins[order])
                self._write(f["energy"], self._rows(rows, (), n0 + j), energy[order])
                self._write(f["magnetization"], self._rows(rows, (), n0 + j), magnet[order])
                self._write(f["replica"], self._rows(rows, (), n0 + j), ids[order])
            sweeps = np.array([b[0] for b in self._buf], np.int64)
            self._write(f["sweep"], [((n0,), (k,))] if self.comm.rank == 0 else None, sweeps)
            self.n_samples = n0 + k
            self._buf = []
        self.f.flush()

    def _shared(self, dset, data):
        """Rank 0 writes a dataset every rank holds identically (others select nothing)."""
        data = np.asarray(data)
        sel = [((0,) * data.ndim, data.shape)] if self.comm.rank == 0 else None
        self._write(dset, sel, data)

    def checkpoint(self, shared, ids, spins, counters):
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
        cur = int(self.f["checkpoint/current"][0])
        spare = 0 if cur < 0 else 1 - cur
        slot = self.f[f"checkpoint/slot{spare}"]
        order = np.argsort(ids)
        rows = ids[order]
        self._write(slot["spins"], [((int(r), 0, 0), (1, self.L, self.L)) for r in rows],
                    spins[order])
        self._write(slot["counters"], [((int(r),), (1,)) for r in rows], counters[order])
        state = dict(shared)
        state["position"] = np.array([shared["position"][0], self.n_samples], np.int64)
        for name in CHECKPOINT_FIELDS:
            if name not in ("spins", "counters"):
                self._shared(slot[name], state[name])
        self._shared(self.f["exchange/attempted"], state["attempted"])
        self._shared(self.f["exchange/accepted"], state["accepted"])
        self.f.flush()
        self._shared(self.f["checkpoint/current"], np.array([spare], np.int64))
        self.f.attrs["sweeps_done"] = int(state["position"][0])
        self.f.flush()
        self.last_checkpoint = int(state["position"][0])

    def set_temperatures(self, temperatures):
        self._shared(self.f["temperatures"], temperatures)

    def close(self):
        self.flush()
        self.f.close()
