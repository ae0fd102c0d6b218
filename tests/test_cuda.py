"""The cuda backend (ising_dist.gpu) against the numba kernels, bit for bit.

The CUDA kernels run in numba's CUDA simulator (NUMBA_ENABLE_CUDASIM=1), which must be
switched on before numba.cuda is first imported. So every check runs in a child process
(`_child`), leaving this pytest process and the other test modules untouched. The "gpu"
variant runs the same checks on a real GPU when one is present (skipped otherwise).
The simulator runs one Python thread per CUDA thread: lattices stay small (L ≤ 16).
"""

import functools
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

REPO = Path(__file__).resolve().parent.parent


def _env(simulator):
    """This process's environment with the CUDA simulator switched on or off."""
    env = {k: v for k, v in os.environ.items() if k != "NUMBA_ENABLE_CUDASIM"}
    if simulator:
        env["NUMBA_ENABLE_CUDASIM"] = "1"
    return env


def _run(args, simulator=False, timeout=600):
    return subprocess.run([sys.executable, *map(str, args)], env=_env(simulator), cwd=REPO,
                          capture_output=True, text=True, timeout=timeout)


@functools.cache
def _has_gpu():
    """numba.cuda sees a real GPU (asked in a child, without the simulator)."""
    proc = _run(["-c", "from numba import cuda; print(cuda.is_available())"])
    return proc.stdout.strip() == "True"


def _child(mode, check):
    """Entry point of the child process: check that the mode is what was asked, then run
    the check function _check_<check>()."""
    from numba import cuda

    from ising_dist import gpu
    if mode == "simulator":
        assert gpu.simulator(), "NUMBA_ENABLE_CUDASIM=1 did not switch the simulator on"
    else:
        assert not gpu.simulator() and cuda.is_available()
    globals()[f"_check_{check}"]()


MODES = ["simulator", "gpu"]

# low T (mostly ΔE = 8 moves rejected), near Tc, high T (ΔE = 0 and 4 moves common)
TEMPERATURES = np.array([1.2, 2.269, 4.0])


def _replicas(L, seed=11):
    from ising_dist import engine, kernels
    ids = np.arange(len(TEMPERATURES))
    keys, _, ikeys = engine.stream_keys(seed, ids)
    spins = np.stack([engine.initial_lattice(L, k) for k in ikeys])
    em = np.array([kernels.energy_magnetization(s) for s in spins], np.int64)
    return spins, keys, em[:, 0].copy(), em[:, 1].copy()


def _check_kernels():
    """advance_replicas: lattices, E, M equal the numba kernel's after every call, for L = 4,
    6, 8, 16, three temperatures, calls at several sweep offsets; and E, M equal the totals
    recomputed from the lattices (the bookkeeping is right, not just equally wrong)."""
    from ising_dist import gpu, kernels
    thr = kernels.metropolis_thresholds(1.0 / TEMPERATURES)
    R = len(TEMPERATURES)
    none = np.zeros(R, np.int64)
    for L in (4, 6, 8, 16):
        spins, keys, e, m = _replicas(L)
        ref = (spins.copy(), e.copy(), m.copy())
        flips = 0
        for sweep0, n_sweeps in ((0, 2), (5, 1), (1000, 2)):
            before = spins.copy()
            gpu.advance_replicas(spins, thr, None, keys, None, None, sweep0, n_sweeps, 1, none,
                                 e, m, None)
            kernels.advance_replicas(ref[0], thr, np.zeros(R, np.uint64), keys, keys,
                                     np.zeros(R, np.uint64), sweep0, n_sweeps, 1, none, ref[1],
                                     ref[2], none.copy())
            assert np.array_equal(spins, ref[0]), (L, sweep0)
            assert np.array_equal(e, ref[1]) and np.array_equal(m, ref[2]), (L, sweep0, e, ref[1])
            em = np.array([kernels.energy_magnetization(s) for s in spins])
            assert np.array_equal(em[:, 0], e) and np.array_equal(em[:, 1], m), (L, sweep0)
            flips += int((spins != before).sum())
        assert flips > 0  # the comparison saw moves


def _check_single_sweep():
    """metropolis_sweep (one lattice, one sweep) returns the numba kernel's (dE, dM) and
    lattice, at sweep indices that differ (the site numbering sweep·N + i·L + j)."""
    from ising_dist import gpu, kernels
    L = 8
    spins, keys, _, _ = _replicas(L, seed=3)
    lat, key = spins[1].copy(), keys[1]
    ref = lat.copy()
    thr = kernels.metropolis_thresholds(1.0 / 2.269)
    scratch = np.empty((L, L), np.int8)
    for sweep in (0, 1, 7, 123456):
        got = gpu.metropolis_sweep(lat, thr, key, sweep)
        want = kernels.metropolis_sweep(ref, thr, key, sweep, scratch)
        assert got == tuple(int(x) for x in want), (sweep, got, want)
        assert np.array_equal(lat, ref), sweep


def _check_launch_shapes():
    """Any launch shape gives the same result: one site per thread, several blocks per
    replica (the block sums and atomics), several sites per thread (the grid-stride loop)
    and a GPU's default shape."""
    from ising_dist import gpu, kernels
    L = 8
    thr = kernels.metropolis_thresholds(1.0 / TEMPERATURES)
    spins, keys, e, m = _replicas(L, seed=5)
    ref = None
    shapes = [gpu.launch_shape(L, 3), gpu.launch_shape(L, 3, 1, block=8),
              gpu.launch_shape(L, 3, 2, block=4), gpu.launch_shape(L, 3, gpu.SITES_PER_THREAD)]
    assert shapes[1][0][1] > 1 and shapes[2][0][1] > 1  # several blocks per replica
    for blocks, threads in shapes:
        dev = gpu.DeviceReplicas(spins, thr, keys, e, m)
        dev.blocks, dev.threads = blocks, threads
        dev.advance(3, 2)
        out = (np.empty_like(spins), np.empty_like(e), np.empty_like(m))
        dev.to_host(*out)
        if ref is None:
            ref = out
        for a, b in zip(out, ref):
            assert np.array_equal(a, b), (blocks, threads)


def _check_chains():
    """engine.Chains(backend="cuda") advances as Chains(backend="numba") does."""
    from ising_dist.engine import Chains
    ids = [0, 1, 2]
    cu = Chains.create(8, 21, ids, backend="cuda")
    nb = Chains.create(8, 21, ids, backend="numba")
    assert cu.kern.name == "cuda" and cu.kern.pt_segment is None
    for sweep0 in (0, 3):
        cu.advance(1.0 / TEMPERATURES, 3, sweep0)
        nb.advance(1.0 / TEMPERATURES, 3, sweep0)
        assert np.array_equal(cu.spins, nb.spins)
        assert np.array_equal(cu.energy, nb.energy) and np.array_equal(cu.magnet, nb.magnet)


def _check_refusals():
    """Wolff clusters and malformed arrays are refused with a ValueError naming them."""
    from ising_dist import gpu, kernels
    from ising_dist.engine import Chains
    spins, keys, e, m = _replicas(4)
    thr = kernels.metropolis_thresholds(1.0 / TEMPERATURES)
    with pytest.raises(ValueError, match=r"n_wolff=\[1, 1, 1\].*Metropolis only"):
        gpu.advance_replicas(spins, thr, None, keys, None, None, 0, 1, 1, np.ones(3, np.int64),
                             e, m, None)
    with pytest.raises(ValueError, match="Metropolis only"):
        Chains.create(4, 0, [0, 1], backend="cuda").advance([0.5, 0.4], 1, 0, "wolff")
    with pytest.raises(ValueError, match=r"spins: expected a C-contiguous int8"):
        gpu.advance_replicas(spins.astype(np.int32), thr, None, keys, None, None, 0, 1, 1,
                             np.zeros(3, np.int64), e, m, None)
    with pytest.raises(ValueError, match=r"thr: expected .*uint64 array of shape \[3, 3\]"):
        gpu.advance_replicas(spins, thr[:2], None, keys, None, None, 0, 1, 1,
                             np.zeros(3, np.int64), e, m, None)
    with pytest.raises(ValueError, match="L=5"):
        gpu.advance_replicas(np.ones((1, 5, 5), np.int8), thr[:1], None, keys[:1], None, None,
                             0, 1, 1, np.zeros(1, np.int64), e[:1], m[:1], None)
    with pytest.raises(ValueError, match="n_sweeps=-1"):
        gpu.advance_replicas(spins, thr, None, keys, None, None, 0, -1, 1,
                             np.zeros(3, np.int64), e, m, None)


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("check", ["kernels", "single_sweep", "launch_shapes", "chains",
                                   "refusals"])
def test_cuda_backend(check, mode):
    """_check_<check> in a child process, in the simulator or on a GPU."""
    if mode == "gpu" and not _has_gpu():
        pytest.skip("no CUDA GPU here (numba.cuda.is_available() is False)")
    proc = _run(["-c", "from tests.test_cuda import _child; "
                 f"_child({mode!r}, {check!r})"], simulator=mode == "simulator")
    assert proc.returncode == 0, proc.stdout + proc.stderr


# -- the tempering CLI ----------------------------------------------------------------------
def _pt(out, *args, simulator=False):
    return _run(["-m", "ising_dist.pt", "--no-progress", "--out", out, *args], simulator)


def _datasets(path):
    import h5py
    found = {}
    with h5py.File(path, "r") as f:
        f.visititems(lambda name, obj: found.__setitem__(name, obj[()])
                     if isinstance(obj, h5py.Dataset) else None)
    return found


@pytest.mark.parametrize("mode", MODES)
def test_pt_run_with_cuda_backend_equals_numba(tmp_path, mode):
    """The whole run (exchanges, samples, checkpoint) with --backend cuda writes the same
    file contents as with --backend numba, dataset for dataset."""
    args = ("--L", 8, "--replicas", 3, "--tmin", 1.5, "--tmax", 3.5, "--thermalize", 10,
            "--sweeps", 10, "--sample-every", 5, "--exchange-every", 2, "--seed", 4)
    if mode == "gpu" and not _has_gpu():
        pytest.skip("no CUDA GPU here (numba.cuda.is_available() is False)")
    cu = _pt(tmp_path / "cuda.h5", *args, "--backend", "cuda", simulator=mode == "simulator")
    assert cu.returncode == 0, cu.stderr
    assert "(cuda kernels)" in cu.stdout
    nb = _pt(tmp_path / "numba.h5", *args, "--backend", "numba")
    assert nb.returncode == 0, nb.stderr
    a, b = _datasets(tmp_path / "cuda.h5"), _datasets(tmp_path / "numba.h5")
    assert sorted(a) == sorted(b)
    assert a["spins"].shape == (3, 2, 8, 8)
    different = [k for k in a if not np.array_equal(a[k], b[k])]
    assert not different, different
    assert a["exchange/attempted"].sum() > 0


def test_pt_refuses_cluster_algorithms_with_cuda(tmp_path):
    from ising_dist.config import ConfigError, PTConfig
    proc = _pt(tmp_path / "x.h5", "--L", 8, "--algorithm", "wolff", "--backend", "cuda")
    assert proc.returncode == 2, proc.stderr
    assert "algorithm=wolff with backend=cuda: the CUDA kernels run Metropolis only" \
        in proc.stderr
    assert "Traceback" not in proc.stderr
    assert not (tmp_path / "x.h5").exists()
    with pytest.raises(ConfigError, match="algorithm=hybrid with backend=cuda"):
        PTConfig(algorithm="hybrid", backend="cuda").validate()
    PTConfig(algorithm="metropolis", backend="cuda").validate()


def test_pt_without_gpu_says_so(tmp_path):
    """Without a GPU and without the simulator, --backend cuda is refused before any work,
    naming both ways out (exit 2, no traceback)."""
    if _has_gpu():
        pytest.skip("a CUDA GPU is present")
    proc = _pt(tmp_path / "x.h5", "--L", 8, "--backend", "cuda")
    assert proc.returncode == 2, proc.stderr
    assert "backend=cuda: no usable CUDA GPU" in proc.stderr
    assert "--backend native or numba" in proc.stderr and "NUMBA_ENABLE_CUDASIM=1" in proc.stderr
    assert "Traceback" not in proc.stderr
    assert not (tmp_path / "x.h5").exists()


def test_benchmark_without_gpu_says_so():
    """`python -m benchmarks.kernels --backend cuda` without a GPU (or in the simulator)
    says so and times nothing, rather than failing or timing the simulator."""
    for sim in (False, True):
        proc = _run(["-m", "benchmarks.kernels", "--backend", "cuda", "--quick"], sim)
        assert proc.returncode == 0, proc.stderr
        if not sim and _has_gpu():
            assert "flips per ns: GPU" in proc.stdout, proc.stdout
            continue
        assert "nothing timed" in proc.stdout, proc.stdout
        assert "flips per ns" not in proc.stdout


def test_engine_backend_names():
    """engine.select_backend knows cuda (and refuses unknown names listing it); "auto" never
    picks it, so CPU runs do not import numba.cuda."""
    from ising_dist import engine
    with pytest.raises(ValueError, match="backend='gpu': choose one of auto, native, numba, cuda"):
        engine.select_backend("gpu")
    assert engine.select_backend("auto").name in ("native", "numba")
    code = ("import sys; from ising_dist.engine import Chains; "
            "Chains.create(4, 0, [0, 1], backend='auto').advance([0.5, 0.4], 2, 0); "
            "print('numba.cuda' in sys.modules)")
    proc = _run(["-c", code])
    assert proc.stdout.strip() == "False", proc.stdout + proc.stderr
