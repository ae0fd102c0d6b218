"""The HDF5 file of a parallel-tempering run (schema_version 1, see DESIGN.md): its schema,
reading it, and recovering it after a crash. The writers are in :mod:`ising_dist.writers`.

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
/checkpoint/slot{0,1}/...                 state to resume bit-for-bit: one dataset per field of
                                          ising_dist.tempering.PTState, in its order
```
The file is created with libver v110 (so Debian's h5ls/h5dump 1.10 read it); its writer
switches it to SWMR, so other processes can read it while the run streams (open with
``h5py.File(path, "r", swmr=True)``; see :func:`open_read`).

Crash safety: a checkpoint is written into the slot that is *not* current, flushed, and
only then is ``/checkpoint/current`` switched (:func:`write_checkpoint`), so a kill at any
moment leaves one complete checkpoint; samples beyond that checkpoint are cut off on resume
(:func:`cut_samples`). A file whose writer was killed still carries HDF5's "open for writing"
flag: h5py opens it with ``swmr=True``; :func:`recover` clears the flag (``h5clear -s``, from
Debian's hdf5-tools) and pads a file that failed writes left short, before it is reopened.
"""

import fcntl
import os
import re
import shutil
import subprocess
from pathlib import Path

import h5py
import numpy as np
import yaml

from . import __version__
from .tempering import PTState

SCHEMA_VERSION = 1
LIBVER = ("v110", "v110")
SAMPLE_DATASETS = ("spins", "energy", "magnetization", "replica")  # [R, S, ...]; /sweep is [S]


class StoreError(ValueError):
    """A file that cannot be used as asked; the message says why and what to do."""


# -- the schema ---------------------------------------------------------------------------------
def chunk_samples(L):
    """Samples per chunk: about 256 KiB of int8 spins (64 KiB encoded) per (temperature,
    chunk). Larger chunks mean fewer chunk writes (about 11 us each with HDF5 here, plus the
    bytes); a reader of one sample decodes its whole chunk."""
    return int(max(1, min(1024, 2**18 // (L * L))))


def create_file(path, cfg_yaml, L, seed, temperatures, compress=True):
    """Write an empty run file (no samples, no checkpoint) at ``path``: R = len(temperatures)
    temperatures of L×L lattices; ``cfg_yaml`` (str) becomes the config attribute.
    compress=False stores /spins unfiltered with every chunk allocated as soon as a resize
    creates it: parallel HDF5 writes only into allocated chunks, and filtered collective
    writes corrupted data or hung with parallel HDF5 1.10.8 (the collective writer's files)."""
    R = len(temperatures)
    cs = chunk_samples(L)

    def dcpl():
        plist = h5py.h5p.create(h5py.h5p.DATASET_CREATE)
        if not compress:
            plist.set_alloc_time(h5py.h5d.ALLOC_TIME_EARLY)
        return plist

    with h5py.File(path, "w", libver=LIBVER) as f:
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
            for name, (dtype, shape) in PTState.layout(R, L).items():
                s.create_dataset(name, shape=shape, dtype=dtype)


def has_scaleoffset(dset):
    """Whether the h5py dataset ``dset`` is stored through HDF5's scale-offset filter."""
    plist = dset.id.get_create_plist()
    return any(plist.get_filter(i)[0] == h5py.h5z.FILTER_SCALEOFFSET
               for i in range(plist.get_nfilters()))


def cut_samples(f, n):
    """Resize the sample datasets of the open file ``f`` to n samples (cutting back to a
    checkpoint: what lies beyond it is dropped)."""
    for name in SAMPLE_DATASETS:
        f[name].resize(n, axis=1)
    f["sweep"].resize(n, axis=0)


def write_checkpoint(f, arrays, put):
    """The one checkpoint slot switch. Write ``arrays`` ({PTState field: array}, complete, in
    PTState order; position = [sweep, samples in the file]) into the slot that is not
    current, with /exchange; flush; only then make that slot current and set the
    sweeps_done attribute; flush. ``put(dset, name, value)`` writes one array into one
    dataset (a serial assignment, or a collective write: :mod:`ising_dist.writers`)."""
    cur = int(f["checkpoint/current"][0])
    spare = 0 if cur < 0 else 1 - cur
    slot = f[f"checkpoint/slot{spare}"]
    for name, value in arrays.items():
        put(slot[name], name, value)
    put(f["exchange/attempted"], "attempted", arrays["attempted"])
    put(f["exchange/accepted"], "accepted", arrays["accepted"])
    f.flush()  # the slot is on disk before it becomes current
    put(f["checkpoint/current"], "current", np.array([spare], np.int64))
    f.attrs["sweeps_done"] = int(arrays["position"][0])
    f.flush()


def read_checkpoint(f):
    """The current checkpoint of the open file ``f``: {PTState field: array}, or None if the
    run has written none yet."""
    cur = int(f["checkpoint/current"][0])
    if cur < 0:
        return None
    slot = f[f"checkpoint/slot{cur}"]
    return {name: slot[name][()] for name in PTState.names()}


# -- reading ------------------------------------------------------------------------------------
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
    """Raise StoreError unless the open h5py file ``f`` (read from ``path``, for the message)
    is a run file of this schema_version."""
    version = f.attrs.get("schema_version")
    if version is None or "spins" not in f or "temperatures" not in f:
        raise StoreError(f"{str(path)!r} is not an ising_dist parallel-tempering file "
                         f"(no schema_version attribute / spins dataset)")
    if int(version) != SCHEMA_VERSION:
        raise StoreError(f"{str(path)!r} has schema_version={int(version)}, this code reads "
                         f"{SCHEMA_VERSION}; use the ising_dist version that wrote it")


def stored_config(f):
    """The run's resolved config (dict) from the config attribute of the open file ``f``."""
    return yaml.safe_load(f.attrs["config"])


# -- recovery -----------------------------------------------------------------------------------
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


def refuse_if_open(path):
    """Refuse to touch a file that another HDF5 program holds open without SWMR (HDF5 takes a
    flock then). A run's SWMR writer holds none: its RunLock guards it (refuse_if_live)."""
    with open(path, "rb") as fh:
        try:
            fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise StoreError(f"{str(path)!r} is open in another process (a run still going?); "
                             f"stop it first or write to another --out") from None
        fcntl.flock(fh, fcntl.LOCK_UN)


def recover(path):
    """Make the run file ``path`` (a Path) left by a stopped, killed or failed writer
    openable for writing: refuse it while another HDF5 program holds it open
    (:func:`refuse_if_open`), pad a file that failed writes left short, clear a killed
    writer's "open for writing" flag, and check that it is a run file of this schema. Raises
    StoreError (leaving a file that is not ours as it was). Samples past the checkpoint stay:
    the writer cuts them (:func:`cut_samples`)."""
    refuse_if_open(path)
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
