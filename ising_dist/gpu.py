"""CUDA backend (``--backend cuda``): checkerboard Metropolis on a GPU with numba-cuda.

The kernels draw the same counter-based random numbers as :mod:`ising_dist.kernels` (the
random number of site (i, j) in sweep t is ``rand64(key, t·N + i·L + j)``, compared in its
top 32 bits with the thresholds (thr0, thr4, thr8) of :func:`kernels.metropolis_thresholds`),
so they give the same lattices, bit for bit, and the same integer (E, M) totals as the numba
and native backends. The hash is compiled from the very function the CPU kernels use
(``kernels.rand64.py_func``), not a copy of it.

A CUDA thread updates a few sites of one row of the colour being updated, for every replica
at once (grid: row segments × rows × replicas, :func:`launch_shape`); a block sums its ΔE, ΔM
in shared memory and adds them to the replica's totals with one atomic each (integer sums:
exact in any order). A sweep is two launches, colour 0 then colour 1, as in the CPU kernels.
The kernel compiles for a real GPU (checked: PTX for sm_90 with NVVM 13.5) but has not run on
one in this project yet, and its launch shape is untuned.

Two layers:
  :class:`DeviceReplicas`  lattices, thresholds, keys and (E, M) totals held on the GPU;
                           ``advance`` runs sweeps there without host copies (what the
                           benchmark times)
  drop-in functions        ``metropolis_sweep``, ``advance_replicas`` with the signatures of
                           :mod:`ising_dist.kernels`, on host arrays: each call copies the
                           lattices to the GPU and back (2·R·L² bytes over PCIe), so batch
                           many sweeps per call
Metropolis only: Wolff clusters (``n_wolff`` > 0) are refused with a ValueError.

Without a GPU, ``NUMBA_ENABLE_CUDASIM=1`` (set before numba.cuda is first imported) runs the
same kernels in numba's CUDA simulator, one Python thread per CUDA thread: slow, for tests at
small L. :func:`select` refuses to run without either, naming both fixes.
"""

import warnings
from types import SimpleNamespace

import numpy as np
from numba import cuda

from . import kernels

# most threads per block (the block sums ΔE, ΔM by halving: launch_shape makes the block
# a power of two, shrunk for small lattices so that no idle threads run)
BLOCK = 256
MAX_BLOCK_X = 128  # threads across a row in one block
# sites of a row per thread on a GPU (a grid-stride loop: neighbouring threads take
# neighbouring sites, so a warp reads contiguous bytes); not tuned on hardware yet
SITES_PER_THREAD = 4

_rand64 = cuda.jit(device=True, inline="always")(kernels.rand64.py_func)
_S32 = np.uint64(32)


def simulator():
    """True when numba.cuda is numba's CUDA simulator (NUMBA_ENABLE_CUDASIM=1 at import)."""
    from numba.cuda.core import config
    return bool(config.ENABLE_CUDASIM)


def available():
    """True when the CUDA kernels can run: a usable GPU, or the simulator."""
    return cuda.is_available()


def unavailable_reason():
    """Why :func:`available` is False, in words (None when it is True)."""
    if available():
        return None
    err = cuda.cuda_error()
    return " ".join(str(err).split()) if err is not None else \
        "numba.cuda.is_available() is False"


UNAVAILABLE = ("backend=cuda: no usable CUDA GPU ({reason}); use --backend native or numba, "
               "or set NUMBA_ENABLE_CUDASIM=1 to run the CUDA kernels in numba's simulator "
               "(slow: small lattices only)")


def require():
    """Raise RuntimeError naming the fixes when no GPU (and no simulator) is usable."""
    if not available():
        raise RuntimeError(UNAVAILABLE.format(reason=unavailable_reason()))


def device_name():
    """The GPU's name, or 'numba CUDA simulator'."""
    if simulator():
        return "numba CUDA simulator"
    name = cuda.get_current_device().name
    return name.decode() if isinstance(name, bytes) else str(name)


@cuda.jit
def _half_sweep(spins, thr, keys, sweep, colour, energy, magnet):
    """Metropolis update of the sites of one colour ((i + j) % 2 == colour) of every replica.

    spins int8 [R, L, L] (updated); thr uint64 [R, 3]; keys uint64 [R]; sweep int64 (the
    sweep index that selects the random numbers); colour int64 0 or 1; energy, magnet int64
    [R] totals (updated). Block (bx, by, r), thread (x, y): replica r, row i = by·blockDim.y
    + y, half-columns jj = bx·blockDim.x + x + k·gridDim.x·blockDim.x (site j = 2·jj + the
    row's parity), so any launch shape covers the lattice and gives the same result.
    """
    sde = cuda.shared.array(BLOCK, np.int32)
    sdm = cuda.shared.array(BLOCK, np.int32)
    L = spins.shape[1]
    x, i = cuda.grid(2)
    r = cuda.blockIdx.z
    stride = cuda.gridDim.x * cuda.blockDim.x
    tid = cuda.threadIdx.y * cuda.blockDim.x + cuda.threadIdx.x
    de = np.int32(0)
    dm = np.int32(0)
    if i < L:
        up = i - 1 if i > 0 else L - 1
        down = i + 1 if i + 1 < L else 0
        base = np.uint64(sweep) * np.uint64(L * L) + np.uint64(i * L)
        t0, t4, t8 = thr[r, 0], thr[r, 1], thr[r, 2]
        key = keys[r]
        for jj in range(x, L // 2, stride):
            j = 2 * jj + ((i + colour) & 1)
            s = np.int32(spins[r, i, j])
            h = (np.int32(spins[r, up, j]) + np.int32(spins[r, down, j])
                 + np.int32(spins[r, i, j - 1 if j > 0 else L - 1])
                 + np.int32(spins[r, i, j + 1 if j + 1 < L else 0]))
            sh = s * h  # ΔE = 2·sh; the rule of kernels._update_row
            u = _rand64(key, base + np.uint64(j)) >> _S32
            if sh < 0 or u < (t0 if sh == 0 else (t4 if sh == 2 else t8)):
                spins[r, i, j] = np.int8(-s)
                de += np.int32(2 * sh)
                dm -= np.int32(2 * s)
    sde[tid] = de
    sdm[tid] = dm
    cuda.syncthreads()
    half = (cuda.blockDim.x * cuda.blockDim.y) // 2  # a power of two (launch_shape)
    while half > 0:
        if tid < half:
            sde[tid] += sde[tid + half]
            sdm[tid] += sdm[tid + half]
        cuda.syncthreads()
        half //= 2
    if tid == 0:
        cuda.atomic.add(energy, r, np.int64(sde[0]))
        cuda.atomic.add(magnet, r, np.int64(sdm[0]))


def _pow2_at_least(n):
    return 1 << max(0, int(n - 1).bit_length())


def launch_shape(L, R, sites_per_thread=None, block=BLOCK):
    """(blocks, threads) of one half-sweep of R replicas of size L, each thread updating
    about sites_per_thread sites of a row (default: SITES_PER_THREAD on a GPU, the whole
    half-row in the simulator, whose cost is per thread and per block). Threads (bx, by):
    powers of two, bx·by ≤ block ≤ BLOCK (a power of two), no wider than the lattice needs."""
    if block > BLOCK or block < 1 or block & (block - 1):
        raise ValueError(f"block={block}: must be a power of two <= {BLOCK}")
    if sites_per_thread is None:
        sites_per_thread = L // 2 if simulator() else SITES_PER_THREAD
    xs = max(1, -(-(L // 2) // max(1, int(sites_per_thread))))  # threads across a row
    bx = min(MAX_BLOCK_X, _pow2_at_least(xs), block)
    by = min(block // bx, _pow2_at_least(L))
    return (-(-xs // bx), -(-L // by), R), (bx, by)


class _quiet_simulator:
    """In the simulator the uint64 hash runs as numpy scalars, which warn on the (intended)
    wrap-around modulo 2^64; silence that there, and only there."""

    def __enter__(self):
        self._ctx = warnings.catch_warnings() if simulator() else None
        if self._ctx is not None:
            self._ctx.__enter__()
            warnings.filterwarnings("ignore", "overflow encountered", RuntimeWarning)

    def __exit__(self, *exc):
        if self._ctx is not None:
            self._ctx.__exit__(*exc)


def _array(name, a, dtype, shape):
    if not isinstance(a, np.ndarray) or a.dtype != dtype or a.shape != shape \
            or not a.flags.c_contiguous:
        got = (f"{a.dtype} {list(a.shape)}" if isinstance(a, np.ndarray) else type(a).__name__)
        raise ValueError(f"{name}: expected a C-contiguous {np.dtype(dtype)} array of shape "
                         f"{list(shape)}, got {got}")
    return a


def _lattices(spins):
    if not isinstance(spins, np.ndarray) or spins.ndim != 3 \
            or spins.shape[1] != spins.shape[2]:
        raise ValueError(f"spins of shape {getattr(spins, 'shape', None)}: expected "
                         "int8 [R, L, L]")
    R, L, _ = spins.shape
    if L < 2 or L % 2:
        raise ValueError(f"L={L}: the lattice size must be even and >= 2")
    _array("spins", spins, np.int8, spins.shape)
    return R, L


def _count(name, value):
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 0:
        raise ValueError(f"{name}={value!r}: must be an integer >= 0")
    return int(value)


class DeviceReplicas:
    """R replicas held on the GPU: spins int8 [R, L, L], thr uint64 [R, 3] (from
    :func:`kernels.metropolis_thresholds`), keys uint64 [R] (Metropolis stream keys),
    energy, magnet int64 [R] running totals E = -Σ s_i s_j, M = Σ s (units of J and of
    one spin). Arrays are copied in; :meth:`to_host` copies them out."""

    def __init__(self, spins, thr, keys, energy, magnet):
        require()
        R, L = _lattices(spins)
        for name, a, dtype, shape in (("thr", thr, np.uint64, (R, 3)),
                                      ("keys", keys, np.uint64, (R,)),
                                      ("energy", energy, np.int64, (R,)),
                                      ("magnet", magnet, np.int64, (R,))):
            _array(name, a, dtype, shape)
        self.R, self.L = R, L
        self.blocks, self.threads = launch_shape(L, R)
        self.spins = cuda.to_device(spins)
        self.thr = cuda.to_device(thr)
        self.keys = cuda.to_device(keys)
        self.energy = cuda.to_device(energy)
        self.magnet = cuda.to_device(magnet)

    def advance(self, sweep0, n_sweeps, n_metropolis=1):
        """n_sweeps steps of n_metropolis Metropolis sweeps each, with sweep indices
        (sweep0 + t)·n_metropolis + k, as kernels.advance_replicas numbers them."""
        sweep0, n_sweeps = _count("sweep0", sweep0), _count("n_sweeps", n_sweeps)
        n_metropolis = _count("n_metropolis", n_metropolis)
        if self.R == 0:
            return
        launch = _half_sweep[self.blocks, self.threads]
        with _quiet_simulator():
            for t in range(n_sweeps):
                for k in range(n_metropolis):
                    sweep = np.int64((sweep0 + t) * n_metropolis + k)
                    for colour in (np.int64(0), np.int64(1)):
                        launch(self.spins, self.thr, self.keys, sweep, colour, self.energy,
                               self.magnet)

    def synchronize(self):
        """Wait for the launched sweeps to finish (launches return at once on a GPU)."""
        cuda.synchronize()

    def to_host(self, spins, energy, magnet):
        """Copy lattices and totals into host arrays of the shapes given at creation."""
        self.spins.copy_to_host(spins)
        self.energy.copy_to_host(energy)
        self.magnet.copy_to_host(magnet)


def advance_replicas(spins, thr, padd, keys, wkeys, counters, sweep0, n_sweeps, n_metropolis,
                     n_wolff, energy, magnet, flipped):
    """:func:`kernels.advance_replicas` on the GPU, Metropolis only (host arrays in and out).

    spins int8 [R, L, L], energy and magnet int64 [R] are updated; thr uint64 [R, 3], keys
    uint64 [R]; padd, wkeys, counters, flipped are accepted for the common signature and left
    alone. Raises ValueError for n_wolff > 0 (use the numba or native backend for Wolff and
    hybrid) and for arrays of the wrong dtype or shape.
    """
    n_wolff = np.asarray(n_wolff)
    if np.any(n_wolff != 0):
        raise ValueError(f"n_wolff={n_wolff.tolist()}: the cuda backend runs Metropolis only; "
                         "use --backend native or numba for --algorithm wolff or hybrid")
    dev = DeviceReplicas(spins, thr, keys, energy, magnet)
    dev.advance(sweep0, n_sweeps, n_metropolis)
    dev.to_host(spins, energy, magnet)


def metropolis_sweep(spins, thr, key, sweep, scratch=None):
    """:func:`kernels.metropolis_sweep` on the GPU: one sweep of one int8 [L, L] lattice
    (updated in place), thr uint64 [3], key uint64, sweep int ≥ 0. Returns (dE, dM) as int
    totals. scratch is accepted for the common signature and unused."""
    if not isinstance(spins, np.ndarray) or spins.ndim != 2:
        raise ValueError(f"spins of shape {getattr(spins, 'shape', None)}: expected int8 [L, L]")
    _array("spins", spins, np.int8, spins.shape)  # C-contiguous: the reshape is a view
    _array("thr", thr, np.uint64, (3,))
    de, dm = np.zeros(1, np.int64), np.zeros(1, np.int64)
    # one step of one sweep: advance_replicas numbers it (sweep0 + 0)·1 + 0 = sweep
    advance_replicas(spins.reshape(1, *spins.shape), thr.reshape(1, 3), None,
                     np.array([key], np.uint64), None, None, sweep, 1, 1, 0, de, dm, None)
    return int(de[0]), int(dm[0])


def select():
    """The kernel namespace of the cuda backend, as :func:`ising_dist.native.select_backend`
    returns for the CPU ones. ``pt_segment`` is None: the tempering loop then runs exchanges
    and samples in Python between batched advances. Raises RuntimeError when no GPU (and no
    simulator) is usable."""
    require()
    return SimpleNamespace(name="cuda", metropolis_sweep=metropolis_sweep,
                           advance_replicas=advance_replicas,
                           energy_magnetization=kernels.energy_magnetization,
                           metropolis_thresholds=kernels.metropolis_thresholds,
                           wolff_threshold=kernels.wolff_threshold, pt_segment=None)
