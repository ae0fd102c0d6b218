"""ctypes binding of the native kernel library (hpc/, built by CMake) and backend selection.

The native kernels are drop-in replacements for the numba ones in :mod:`ising_dist.kernels`:
same signatures, same counter-based random streams, bit-identical lattices and integer
(E, M) totals for the same (key, sweep), whatever the number of threads.

Build the library with ``cmake -S . -B build && cmake --build build``. It is looked up at
``$ISING_NATIVE_LIB``, then ``<repo>/build/libising_kernels.so``, then
``<repo>/build/hpc/libising_kernels.so``. Threads: ``n_threads`` argument, else
``OMP_NUM_THREADS`` as it was when the library was loaded, else the cores this process may
run on. The count is always passed explicitly: numba's OpenMP threading layer, once
launched, sets OpenMP's default for the whole process to its own thread count (it turned
OMP_NUM_THREADS=1 into 2 threads per MPI rank), so the library's default is never used.

Use :func:`select_backend` to get the kernel functions of one backend::

    kern = select_backend("auto")      # or "native" / "numba"
    kern.advance_replicas(spins, thr, padd, keys, wkeys, counters, sweep0, n_sweeps,
                          n_metropolis, n_wolff, energy, magnet, flipped)
"""

import ctypes
import os
from pathlib import Path
from types import SimpleNamespace

import numpy as np

BUILD_HINT = "cmake -S . -B build && cmake --build build"
LIB_NAME = "libising_kernels.so"
ABI_VERSION = 5  # must equal ISING_ABI_VERSION in hpc/ising_kernels.h

# "auto" prefers the native backend when the library is built: it was faster in every
# Metropolis and Wolff workload of `python -m benchmarks.native`
# (2-core AMD EPYC Zen 4 with AVX-512, gcc 12 -O3 -march=native, numba 0.68.1; a shared,
# loaded machine, so best-of-calls timings). native/numba:
#   Metropolis, 1 thread   L=256: 2.34 vs 0.46 flips/ns = 5.1x; L=1024: 2.98 vs 0.50 = 6.0x;
#                          L=64: 2.0x per single-sweep call (Python call overhead),
#                          4.0x batched (advance_replicas, 10 sweeps per call)
#   Metropolis, 2 threads  3.6-4.5x single sweeps, 4.3-6.3x batched (OMP_WAIT_POLICY=PASSIVE)
#   Wolff only, 1 thread   14.4, 13.8, 13.5 vs 38, 39, 46 ns per flipped spin at Tc for
#                          L = 16, 32, 64 (2.7-3.4x; native 35 ns before its one-pass
#                          cluster growth); 2.7-2.9x at L = 64, 256 (batched workload)
AUTO_PREFERS_NATIVE = True

_REPO = Path(__file__).resolve().parent.parent
_ERRORS = {-1: "L must be even, >= 2 and <= 46340", -2: "out of memory for the work arrays",
           -3: "negative count, sweep index or number of Wolff clusters, or thresholds "
               "not nested as thr[2] <= thr[1] <= thr[0] "
               "(use kernels.metropolis_thresholds(beta))"}

_lib = None
_lib_error = None

# Array arguments are passed as plain addresses (see _ptr), after their dtype, shape and
# layout were checked here: typed ctypes pointers cost microseconds per array per call,
# which is as long as a whole sweep of a small lattice.
_i8p = _u64p = _i64p = _f64p = ctypes.c_void_p
_i64 = ctypes.c_int64
_u64 = ctypes.c_uint64
_I8, _U8, _I64, _U64, _F64 = (np.dtype(t) for t in (np.int8, np.uint8, np.int64, np.uint64,
                                                   np.float64))




class _PTState(ctypes.Structure):
    """ising_pt_state of hpc/ising_kernels.h (array members as addresses)."""
    _fields_ = [(name, _i64) for name in ("L", "R", "R_local", "id0")] \
        + [(name, ctypes.c_void_p) for name in (
            "spins", "keys", "wkeys", "counters", "energy", "magnet", "flipped", "thr_slot",
            "padd_slot", "nw_slot", "beta_slot")] \
        + [("n_metropolis", _i64), ("xkey", _u64)] \
        + [(name, ctypes.c_void_p) for name in (
            "slot_of", "exch", "direction", "round_trips", "energy_all")]


class _PTSamples(ctypes.Structure):
    """ising_pt_samples of hpc/ising_kernels.h."""
    _fields_ = [(name, ctypes.c_void_p) for name in ("spins", "energy", "magnet", "slot",
                                                      "sweep")] + [("capacity", _i64)]


# ising_pt_segment_ranks / _mpi after their leading arguments: state, sweep0, events,
# n_events, [share, share_ctx,] samples, *n_out, n_threads
_SEGMENT_HEAD = [ctypes.POINTER(_PTState), _i64, _i64p, _i64]
_SEGMENT_TAIL = [ctypes.POINTER(_PTSamples), ctypes.POINTER(_i64), ctypes.c_int]


def candidate_paths():
    """Where the library is looked for, in order."""
    paths = []
    env = os.environ.get("ISING_NATIVE_LIB")
    if env:
        paths.append(Path(env))
    paths += [_REPO / "build" / LIB_NAME, _REPO / "build" / "hpc" / LIB_NAME]
    return paths


def _load():
    """Load the library once; remember why it failed so the error can say so."""
    global _lib, _lib_error
    if _lib is not None or _lib_error is not None:
        return _lib
    tried = []
    for path in candidate_paths():
        if not path.is_file():
            tried.append(f"{path} (not found)")
            continue
        try:
            lib = ctypes.CDLL(str(path))
        except OSError as exc:
            tried.append(f"{path} ({exc})")
            continue
        try:
            abi = lib.ising_abi_version()
            if abi != ABI_VERSION:
                tried.append(f"{path} (ABI {abi}, expected {ABI_VERSION}: rebuild it)")
                continue
            _declare(lib)
        except AttributeError as exc:  # a stale or foreign library
            tried.append(f"{path} ({exc}: rebuild it)")
            continue
        _lib = lib
        return lib
    _lib_error = "; ".join(tried)
    return None


def _declare(lib):
    lib.ising_max_threads.restype = ctypes.c_int
    lib.ising_metropolis_sweep.restype = ctypes.c_int
    lib.ising_metropolis_sweep.argtypes = [_i8p, _i64, _u64, _u64, _u64, _u64, _i64, _i8p,
                                           ctypes.c_int, ctypes.POINTER(_i64),
                                           ctypes.POINTER(_i64)]
    lib.ising_advance_replicas.restype = ctypes.c_int
    lib.ising_advance_replicas.argtypes = [_i8p, _i64, _i64, _u64p, _u64p, _u64p, _u64p, _u64p,
                                           _i64, _i64, _i64, _i64p, _i64p, _i64p, _i64p,
                                           ctypes.c_int]
    lib.ising_pt_segment_ranks.restype = ctypes.c_int
    lib.ising_pt_segment_ranks.argtypes = _SEGMENT_HEAD + [ctypes.c_void_p, ctypes.c_void_p] \
        + _SEGMENT_TAIL
    lib.ising_energy_magnetization.restype = ctypes.c_int
    lib.ising_energy_magnetization.argtypes = [_i8p, _i64, ctypes.POINTER(_i64),
                                               ctypes.POINTER(_i64)]
    lib.ising_simd_width.restype = ctypes.c_int
    lib.ising_set_min_sites_per_thread.restype = ctypes.c_int64
    lib.ising_set_min_sites_per_thread.argtypes = [ctypes.c_int64]


def available():
    """True when the native library is built and loadable."""
    return _load() is not None


MPI_LIB_NAME = "libising_pt_mpi.so"
_mpi_lib = None


def mpi_segment_available(comm):
    """True when libising_pt_mpi.so (built by CMake next to the kernel library when MPI was
    found) is loadable and calls the same, initialised MPI library as the communicator
    ``comm`` (:mod:`ising_dist.mpi`; its ``library_version()``, None without MPI); then
    :func:`pt_segment_mpi` can be used. A library linked against another MPI (e.g. Debian's
    MPICH under .venv-parallel) is left alone."""
    version = comm.library_version()
    if version is None:
        return False
    global _mpi_lib
    if _mpi_lib is not None:
        return bool(_mpi_lib)
    _mpi_lib = False
    lib = _load()
    if lib is None:
        return False
    kernels_path = Path(lib._name)
    path = kernels_path.with_name(MPI_LIB_NAME)
    if not path.is_file():
        return False
    try:
        mlib = ctypes.CDLL(str(path))
        if mlib.ising_pt_mpi_abi_version() != ABI_VERSION:
            return False
        buf = ctypes.create_string_buffer(8192)
        mlib.ising_pt_mpi_library_version(buf, len(buf))
    except (OSError, AttributeError):
        return False
    if mlib.ising_pt_mpi_initialized() != 1 or \
            buf.value.decode(errors="replace").strip() != version.strip():
        return False
    mlib.ising_pt_segment_mpi.restype = ctypes.c_int
    mlib.ising_pt_segment_mpi.argtypes = [ctypes.c_int, _i64p, _i64p] + _SEGMENT_HEAD \
        + _SEGMENT_TAIL
    _mpi_lib = mlib
    return True


def library():
    """The loaded ctypes library; RuntimeError naming the build command when it is missing."""
    lib = _load()
    if lib is None:
        raise RuntimeError(f"the native kernel library is not built (looked for: {_lib_error}). "
                           f"Build it from the repository root with `{BUILD_HINT}`, or set "
                           f"ISING_NATIVE_LIB to the path of {LIB_NAME}, or choose the "
                           f"numba backend")
    return lib


_default_threads = None


def max_threads():
    """Threads the native kernels use when n_threads is not given: OMP_NUM_THREADS when the
    library was first used, else the cores available to this process."""
    global _default_threads
    if _default_threads is None:
        library()
        value = os.environ.get("OMP_NUM_THREADS", "").split(",")[0].strip()
        _default_threads = int(value) if value.isdigit() and int(value) > 0 else \
            len(os.sched_getaffinity(0))
    return _default_threads


# ------------------------------------------------------------------------------ validation
def _array(name, a, dtype, shape=None, writeable=False):
    """Refuse anything but a C-contiguous ndarray of this dtype (and shape, writeability)."""
    if type(a) is np.ndarray and a.dtype == dtype and (shape is None or a.shape == shape) \
            and a.flags["C_CONTIGUOUS"] and (not writeable or a.flags["WRITEABLE"]):
        return a  # fast path; the checks below only build the error message
    if not isinstance(a, np.ndarray):
        raise ValueError(f"{name} must be a numpy array of dtype {np.dtype(dtype).name}, "
                         f"got {type(a).__name__}")
    if a.dtype != dtype:
        raise ValueError(f"{name} of dtype {a.dtype}: expected {np.dtype(dtype).name} "
                         f"(convert with .astype(np.{np.dtype(dtype).name}))")
    if shape is not None and a.shape != shape:
        raise ValueError(f"{name} of shape {a.shape}: expected {tuple(shape)}")
    if not a.flags.c_contiguous:
        raise ValueError(f"{name} must be C-contiguous (use np.ascontiguousarray)")
    if writeable and not a.flags.writeable:
        raise ValueError(f"{name} is read-only; the kernel updates it in place")
    return a


def _lattices(spins, ndim):
    """L of a stack of ndim-D square int8 lattices with even L, else ValueError."""
    what = "spins" if ndim == 2 else "spins [R, L, L]"
    if not isinstance(spins, np.ndarray) or spins.ndim != ndim or \
            spins.shape[-1] != spins.shape[-2]:
        shape = getattr(spins, "shape", None)
        raise ValueError(f"{what} of shape {shape}: expected "
                         f"{'[L, L]' if ndim == 2 else '[R, L, L]'} square lattice(s)")
    L = spins.shape[-1]
    if L < 2 or L % 2:
        raise ValueError(f"L={L}: the lattice size must be even and >= 2 (the checkerboard "
                         f"update needs a bipartite periodic lattice); use L={max(2, L + 1)}")
    _array("spins", spins, _I8, writeable=True)
    return L


def _threads(n_threads):
    if n_threads is None:
        return max_threads()
    if isinstance(n_threads, bool) or not isinstance(n_threads, (int, np.integer)) \
            or n_threads < 1:
        raise ValueError(f"n_threads={n_threads!r}: must be a positive integer or None")
    return int(n_threads)


def _count(name, value):
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 0:
        raise ValueError(f"{name}={value!r}: must be a non-negative integer")
    return int(value)


def _key(key):
    if isinstance(key, bool) or not isinstance(key, (int, np.integer)) or \
            not 0 <= int(key) < 2**64:
        raise ValueError(f"key={key!r}: the stream key must be an integer in [0, 2**64)")
    return int(key)


def _check(rc, what):
    """Turn the library's error codes into ValueError."""
    if rc != 0:
        raise ValueError(f"native {what} failed: {_ERRORS.get(rc, f'error code {rc}')}")


_byte = ctypes.c_char


def _ptr(a):
    """Address of a validated C-contiguous array (from_buffer is ~3x cheaper than .ctypes)."""
    if a.flags.writeable and a.nbytes:
        return ctypes.addressof(_byte.from_buffer(a))
    return a.ctypes.data


# ------------------------------------------------------------------------------- kernels
def metropolis_sweep(spins, thr, key, sweep, scratch, n_threads=None):
    """One checkerboard Metropolis sweep of one lattice (rows over OpenMP threads).

    Same contract as :func:`ising_dist.kernels.metropolis_sweep`: spins int8 [L, L] updated
    in place; thr uint64 [3] from metropolis_thresholds; key uint64 stream key; sweep the
    sweep index selecting the random numbers; scratch int8 [L, L] work array.
    Returns (dE, dM) int totals. n_threads: None = :func:`max_threads`.
    """
    lib = library()
    L = _lattices(spins, 2)
    _array("thr", thr, _U64, (3,))
    _array("scratch", scratch, _I8, (L, L), writeable=True)
    sweep = _count("sweep", sweep)
    t0, t4, t8 = thr.tolist()
    de, dm = _i64(), _i64()
    rc = lib.ising_metropolis_sweep(_ptr(spins), L, t0, t4, t8, _key(key), sweep,
                                    _ptr(scratch), _threads(n_threads), de, dm)
    _check(rc, "metropolis_sweep")
    return de.value, dm.value


def advance_replicas(spins, thr, padd, keys, wkeys, counters, sweep0, n_sweeps,
                     n_metropolis, n_wolff, energy, magnet, flipped, n_threads=None):
    """Advance R replicas; same contract as :func:`ising_dist.kernels.advance_replicas`.

    spins int8 [R, L, L]; thr uint64 [R, 3]; padd uint64 [R]; keys, wkeys uint64 [R];
    counters uint64 [R] (updated); n_wolff int64 [R]; energy, magnet, flipped int64 [R]
    (updated). Replicas over OpenMP threads (row-parallel sweeps when R < threads).
    """
    lib = library()
    L = _lattices(spins, 3)
    R = spins.shape[0]
    _array("thr", thr, _U64, (R, 3))
    for name, a in (("padd", padd), ("keys", keys), ("wkeys", wkeys)):
        _array(name, a, _U64, (R,))
    _array("counters", counters, _U64, (R,), writeable=True)
    _array("n_wolff", n_wolff, _I64, (R,))
    for name, a in (("energy", energy), ("magnet", magnet), ("flipped", flipped)):
        _array(name, a, _I64, (R,), writeable=True)
    if np.any(n_wolff < 0):
        raise ValueError(f"n_wolff={n_wolff.tolist()}: cluster counts must be >= 0")
    rc = lib.ising_advance_replicas(
        _ptr(spins), R, L, _ptr(thr), _ptr(padd), _ptr(keys),
        _ptr(wkeys), _ptr(counters), _count("sweep0", sweep0),
        _count("n_sweeps", n_sweeps), _count("n_metropolis", n_metropolis),
        _ptr(n_wolff), _ptr(energy), _ptr(magnet), _ptr(flipped),
        _threads(n_threads))
    _check(rc, "advance_replicas")


def _segment_args(st, id0, R, energy_all, sweep0, events, out):
    """Validated ctypes arguments of ising_pt_segment_ranks: (state, sweep0, events,
    n_events) and the samples. st: kernels.SegmentState of this rank's replicas id0 … (all R
    of them when energy_all is None, one rank); out: kernels.SampleBuffer."""
    L = _lattices(st.spins, 3)
    n_local = st.spins.shape[0]
    if not (1 <= n_local and 0 <= id0 and id0 + n_local <= R):
        raise ValueError(f"replica block id0={id0} of {n_local} replicas does not fit "
                         f"R={R} replicas")
    _array("thr_slot", st.thr_slot, _U64, (R, 3))
    for name, dt in (("padd_slot", _U64), ("nw_slot", _I64), ("beta_slot", _F64)):
        _array(name, getattr(st, name), dt, (R,))
    for name, dt in (("slot_of", _I64), ("direction", _I8), ("round_trips", _I64)):
        _array(name, getattr(st, name), dt, (R,), writeable=True)
    _array("exch", st.exch, _I64, (4, R - 1), writeable=True)
    for name in ("keys", "wkeys"):
        _array(name, getattr(st, name), _U64, (n_local,))
    for name, dt in (("counters", _U64), ("energy", _I64), ("magnet", _I64),
                     ("flipped", _I64)):
        _array(name, getattr(st, name), dt, (n_local,), writeable=True)
    if energy_all is not None:
        _array("energy_all", energy_all, _I64, (R,), writeable=True)
    _array("events", events, _I64)
    if events.ndim != 2 or events.shape[1] != 3 or len(events) < 1:
        raise ValueError(f"events of shape {events.shape}: expected [n >= 1, 3] rows "
                         "(sweep, flags, exchange round)")
    cap = out.sweep.shape[0] if isinstance(out.sweep, np.ndarray) else -1
    _array("out.spins", out.spins, _U8, (cap, n_local, L * L // 4), writeable=True)
    for name, dt in (("energy", _F64), ("magnet", _F64), ("slot", _I64)):
        _array(f"out.{name}", getattr(out, name), dt, (cap, n_local), writeable=True)
    _array("out.sweep", out.sweep, _I64, (cap,), writeable=True)
    state = _PTState(L, R, n_local, int(id0), *(_ptr(getattr(st, name)) for name in (
        "spins", "keys", "wkeys", "counters", "energy", "magnet", "flipped", "thr_slot",
        "padd_slot", "nw_slot", "beta_slot")), _count("n_metropolis", st.n_metropolis),
        _key(st.xkey), *(_ptr(getattr(st, name)) for name in (
            "slot_of", "exch", "direction", "round_trips")),
        None if energy_all is None else _ptr(energy_all))
    samples = _PTSamples(*(_ptr(a) for a in out), cap)
    # (byref keeps the structures alive through the call)
    return (ctypes.byref(state), _count("sweep0", sweep0), _ptr(events), len(events)), \
        (ctypes.byref(samples),)


def pt_segment(st, sweep0, events, out, n_threads=None):
    """Parallel tempering of all replicas from sweep0 through the event table ``events``;
    same contract as :func:`ising_dist.kernels.pt_segment` (st a kernels.SegmentState, out
    a kernels.SampleBuffer). Returns the number of samples written to out."""
    lib = library()
    R = st.spins.shape[0] if isinstance(st.spins, np.ndarray) else 0
    head, tail = _segment_args(st, 0, R, None, sweep0, events, out)
    n_out = _i64()
    rc = lib.ising_pt_segment_ranks(*head, None, None, *tail, n_out, _threads(n_threads))
    _check(rc, "pt_segment")
    return n_out.value


def pt_segment_mpi(comm, counts, displs, id0, st, energy_all, sweep0, events, out,
                   n_threads=None):
    """:func:`pt_segment` across MPI ranks (collective over ``comm``, an
    :mod:`ising_dist.mpi` communicator): this rank holds replicas id0 … id0+R_local-1 (the
    per-replica rows of st); counts, displs int32 [size] every rank's block. The exchange
    state of st (slot_of, exch, direction, round_trips) is global, identical on every rank;
    energy_all int64 [R] is a work array (energies by replica id at the last exchange
    round). Samples hold the local replicas (out rows R_local wide). Needs
    :func:`mpi_segment_available`."""
    if not _mpi_lib:
        raise RuntimeError("libising_pt_mpi.so is not usable here (see mpi_segment_available)")
    _array("counts", counts, np.dtype(np.int32), (comm.size,))
    _array("displs", displs, np.dtype(np.int32), (comm.size,))
    head, tail = _segment_args(st, id0, int(counts.sum()), energy_all, sweep0, events, out)
    n_out = _i64()
    rc = _mpi_lib.ising_pt_segment_mpi(comm.fortran_handle(), counts.ctypes.data,
                                       displs.ctypes.data, *head, *tail, n_out,
                                       _threads(n_threads))
    if rc >= 1000:
        raise RuntimeError(f"pt_segment_mpi: MPI error code {rc - 1000}")
    _check(rc, "pt_segment_mpi")
    return n_out.value


def energy_magnetization(spins):
    """Totals (E, M) of one int8 [L, L] lattice: E = -Σ right+down bonds, M = Σ s."""
    lib = library()
    if not isinstance(spins, np.ndarray) or spins.ndim != 2 or \
            spins.shape[0] != spins.shape[1] or spins.shape[0] < 1:
        raise ValueError(f"spins of shape {getattr(spins, 'shape', None)}: expected [L, L]")
    _array("spins", spins, np.int8)
    e, m = _i64(), _i64()
    _check(lib.ising_energy_magnetization(_ptr(spins), spins.shape[0], e, m),
           "energy_magnetization")
    return e.value, m.value


# ---------------------------------------------------------------------------- selection
def select_backend(name="auto"):
    """Kernel functions of the native or the numba backend, as a namespace with the
    attributes ``name, metropolis_sweep, advance_replicas, energy_magnetization,
    metropolis_thresholds, wolff_threshold, pt_segment`` (same signatures in both backends).

    name: "native" needs the built library (RuntimeError naming the build command
    otherwise); "numba" always works; "auto" is native when it is built (see
    AUTO_PREFERS_NATIVE), else numba; anything else: ValueError. Runs choose their backend
    through :func:`ising_dist.engine.select_backend` (the run config's choices, including
    cuda, and $ISING_BACKEND).
    """
    from . import kernels

    if name not in ("native", "numba", "auto"):
        raise ValueError(f"backend={name!r}: choose one of native, numba, auto")
    if name == "auto":
        name = "native" if AUTO_PREFERS_NATIVE and available() else "numba"
    if name == "native":
        library()
        return SimpleNamespace(name="native", metropolis_sweep=metropolis_sweep,
                               advance_replicas=advance_replicas,
                               energy_magnetization=energy_magnetization,
                               metropolis_thresholds=kernels.metropolis_thresholds,
                               wolff_threshold=kernels.wolff_threshold,
                               pt_segment=pt_segment)
    return SimpleNamespace(name="numba", metropolis_sweep=kernels.metropolis_sweep,
                           advance_replicas=kernels.advance_replicas,
                           energy_magnetization=kernels.energy_magnetization,
                           metropolis_thresholds=kernels.metropolis_thresholds,
                           wolff_threshold=kernels.wolff_threshold,
                           pt_segment=kernels.pt_segment)
