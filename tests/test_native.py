"""The native (C/OpenMP) kernels against the numba ones, and against exact physics.

Contract: for the same (key, sweep) the native backend produces bit-identical lattices and
the same integer (E, M) totals as ising_dist.kernels, whatever the number of threads; so
every physics test of the numba kernels also holds for it. The physics is also checked
directly: tests/test_kernels.py runs its exact-enumeration chi-square tests (L = 2, 4) and
its sweep-graph tests on both backends.

Tests that need the library are skipped when it is not built (build it with
`cmake -S . -B build && cmake --build build`; CTest sets ISING_NATIVE_LIB).
"""

import hashlib
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest

from ising_dist import kernels, native
from ising_dist.engine import initial_lattice, stream_keys

REPO = Path(__file__).resolve().parent.parent
needs_lib = pytest.mark.skipif(
    not native.available(),
    reason=f"native library not built: run `{native.BUILD_HINT}` from the repository root "
           f"(or set ISING_NATIVE_LIB)")


@pytest.fixture
def thread_small_lattices():
    """Row-parallel sweeps even for tiny lattices (the library normally keeps them on one
    thread), so that the threaded code path is what gets compared."""
    lib = native.library()
    old = lib.ising_set_min_sites_per_thread(1)
    yield
    lib.ising_set_min_sites_per_thread(old)


def hot(L, seed):
    return (2 * np.random.default_rng(seed).integers(0, 2, (L, L)) - 1).astype(np.int8)


# ------------------------------------------------------------------ bit-identity: sweeps
@needs_lib
@pytest.mark.parametrize("n_threads", [1, 2])
@pytest.mark.parametrize("L", [2, 4, 6, 8, 64, 66, 130])
def test_metropolis_sweep_is_bit_identical_to_numba(L, n_threads, thread_small_lattices):
    # beta 0.01: thr0 = thr4; see also the odd thresholds below (exact-comparison path)
    for seed, beta in [(1, 0.01), (2, 0.4406868), (3, 1.0), (4, 25.0)]:
        key = np.uint64(stream_keys(seed, [L])[0][0])
        a = hot(L, seed)
        b = a.copy()
        sa, sb = np.empty_like(a), np.empty_like(b)
        thr = kernels.metropolis_thresholds(beta)
        E, M = kernels.energy_magnetization(b)
        for t in range(6):
            sweep = 1000 * seed + t
            ref = kernels.metropolis_sweep(a, thr, key, sweep, sa)
            got = native.metropolis_sweep(b, thr, key, sweep, sb, n_threads=n_threads)
            assert np.array_equal(a, b), f"L={L} beta={beta} sweep {sweep}: lattices differ"
            assert got == ref, f"L={L} beta={beta} sweep {sweep}: (dE, dM) {got} != {ref}"
            E, M = E + got[0], M + got[1]
        assert (E, M) == native.energy_magnetization(b) == kernels.energy_magnetization(b)


@needs_lib
@pytest.mark.parametrize("parity", ["odd", "even"])
def test_thresholds_at_a_sites_uniform_are_bit_identical(parity):
    """Thresholds equal to a site's own uniform r ≥ 2^31, made odd or even: where the
    native kernel's comparison without the hash's last xor-shift (even thresholds) and the
    exact one could differ. Row 0 of L = 66, every position (SIMD lanes and a tail), the
    all-up lattice (sh = 4 at every site, so every site compares with the threshold)."""
    L = 66
    scratch = np.empty((L, L), np.int8)
    for j in range(L):
        key = j
        while (r := int(kernels.rand64(np.uint64(key), np.uint64(j))) >> 32) < 2**31:
            key += 1000
        t = r | 1 if parity == "odd" else r & ~1
        thr = np.full(3, t, np.uint64)
        a, b = np.ones((L, L), np.int8), np.ones((L, L), np.int8)
        ref = kernels.metropolis_sweep(a, thr, np.uint64(key), 0, scratch)
        got = native.metropolis_sweep(b, thr, np.uint64(key), 0, scratch, n_threads=1)
        assert got == ref and np.array_equal(a, b), f"threshold {t} at site (0, {j})"


# ------------------------------------------------------- bit-identity: batched advance
def make_batch(L, R, seed, betas):
    keys, wkeys, ikeys = stream_keys(seed, range(R))
    spins = np.stack([initial_lattice(L, k) for k in ikeys])
    thr = np.stack([kernels.metropolis_thresholds(b) for b in betas])
    padd = np.array([kernels.wolff_threshold(b) for b in betas], np.uint64)
    em = np.array([kernels.energy_magnetization(s) for s in spins], np.int64).reshape(R, 2)
    return dict(spins=spins, thr=thr, padd=padd, keys=keys, wkeys=wkeys,
                counters=np.arange(R, dtype=np.uint64) * 7, energy=em[:, 0].copy(),
                magnet=em[:, 1].copy(), flipped=np.zeros(R, np.int64))


def advance(fn, batch, sweep0, n_sweeps, n_metropolis, n_wolff, **kw):
    b = {k: v.copy() for k, v in batch.items()}
    fn(b["spins"], b["thr"], b["padd"], b["keys"], b["wkeys"], b["counters"], sweep0, n_sweeps,
       n_metropolis, n_wolff, b["energy"], b["magnet"], b["flipped"], **kw)
    return b


@needs_lib
@pytest.mark.parametrize("algorithm", ["metropolis", "wolff", "hybrid"])
@pytest.mark.parametrize("L,R", [(2, 3), (4, 1), (16, 5), (64, 2)])
def test_advance_replicas_is_bit_identical_to_numba(algorithm, L, R, thread_small_lattices):
    betas = np.linspace(0.25, 0.6, R)
    batch = make_batch(L, R, seed=11, betas=betas)
    n_metropolis = {"metropolis": 1, "wolff": 0, "hybrid": 2}[algorithm]
    n_wolff = np.zeros(R, np.int64) if algorithm == "metropolis" else \
        (np.arange(R, dtype=np.int64) % 3) + 1
    ref = advance(kernels.advance_replicas, batch, 5, 9, n_metropolis, n_wolff)
    for n_threads in (1, 2, 3):
        got = advance(native.advance_replicas, batch, 5, 9, n_metropolis, n_wolff,
                      n_threads=n_threads)
        for name in ("spins", "counters", "energy", "magnet", "flipped"):
            assert np.array_equal(got[name], ref[name]), \
                f"{algorithm} L={L} R={R} threads={n_threads}: {name} differs"
    for k in range(R):
        assert (got["energy"][k], got["magnet"][k]) == \
            kernels.energy_magnetization(got["spins"][k])


@needs_lib
def test_omp_num_threads_does_not_change_results():
    """Default thread count from OMP_NUM_THREADS (1 and 2) in fresh processes."""
    script = textwrap.dedent("""
        import hashlib, numpy as np
        from ising_dist import kernels, native
        native.library().ising_set_min_sites_per_thread(1)
        L = 96
        s = (2 * np.random.default_rng(5).integers(0, 2, (L, L)) - 1).astype(np.int8)
        sc = np.empty_like(s)
        thr = kernels.metropolis_thresholds(0.44)
        tot = [native.metropolis_sweep(s, thr, np.uint64(123456789), t, sc) for t in range(7)]
        print(native.max_threads(), hashlib.sha256(s.tobytes()).hexdigest(), tot)
    """)
    s = hot(96, 5)
    sc = np.empty_like(s)
    thr = kernels.metropolis_thresholds(0.44)
    tot = [kernels.metropolis_sweep(s, thr, np.uint64(123456789), t, sc) for t in range(7)]
    expected = f"{hashlib.sha256(s.tobytes()).hexdigest()} {tot}"
    for threads in ("1", "2"):
        env = dict(os.environ, OMP_NUM_THREADS=threads, OMP_WAIT_POLICY="PASSIVE")
        out = subprocess.run([sys.executable, "-c", script], env=env, cwd=REPO, check=True,
                             capture_output=True, text=True).stdout.strip()
        n, rest = out.split(" ", 1)
        assert n == threads
        assert rest == expected, f"OMP_NUM_THREADS={threads}: result differs from numba"


@needs_lib
def test_thread_count_survives_numba_launching_its_openmp_layer():
    """numba's OpenMP layer sets OpenMP's process-wide default to its own thread count when
    it starts; the kernels must keep the OMP_NUM_THREADS the run asked for (MPI ranks)."""
    script = textwrap.dedent("""
        import numba
        from ising_dist import native
        print(native.max_threads())
        numba.set_num_threads(1)  # launches numba's threading layer
        print(native.max_threads(), native.library().ising_max_threads(),
              numba.threading_layer())
    """)
    env = dict(os.environ, OMP_NUM_THREADS="1", NUMBA_NUM_THREADS="2")
    out = subprocess.run([sys.executable, "-c", script], env=env, cwd=REPO, check=True,
                         capture_output=True, text=True).stdout.split()
    assert out[:2] == ["1", "1"], out
    if out[3] == "omp":  # the situation that motivated passing the count explicitly
        assert out[2] == "2", out


# ---------------------------------------------------------------------------- bad input
@needs_lib
def test_bad_inputs_raise_value_error():
    thr = kernels.metropolis_thresholds(0.4)
    good = np.ones((4, 4), np.int8)
    sc = np.empty_like(good)
    cases = [
        (np.ones((5, 5), np.int8), sc, "even"),                    # odd L
        (np.ones((4, 4), np.int32), sc, "int8"),                   # wrong dtype
        (np.ones((4, 6), np.int8), sc, "square"),                  # not square
        (np.ones((8, 8), np.int8)[::2, ::2], sc, "contiguous"),    # a strided view
        (good, np.empty((2, 2), np.int8), "scratch"),              # wrong scratch shape
        (good, sc.astype(np.int16), "int8"),                       # wrong scratch dtype
    ]
    for spins, scratch, message in cases:
        with pytest.raises(ValueError, match=message):
            native.metropolis_sweep(spins, thr, np.uint64(1), 0, scratch)
    with pytest.raises(ValueError, match="uint64"):
        native.metropolis_sweep(good, thr.astype(np.int64), np.uint64(1), 0, sc)
    with pytest.raises(ValueError, match="sweep"):
        native.metropolis_sweep(good, thr, np.uint64(1), -1, sc)
    with pytest.raises(ValueError, match="metropolis_thresholds"):
        native.metropolis_sweep(good, thr[::-1].copy(), np.uint64(1), 0, sc)
    with pytest.raises(ValueError, match="n_threads"):
        native.metropolis_sweep(good, thr, np.uint64(1), 0, sc, n_threads=0)
    ro = good.copy()
    ro.setflags(write=False)
    with pytest.raises(ValueError, match="read-only"):
        native.metropolis_sweep(ro, thr, np.uint64(1), 0, sc)

    batch = make_batch(4, 2, seed=1, betas=[0.3, 0.4])
    nw = np.zeros(2, np.int64)
    with pytest.raises(ValueError, match="even"):
        advance(native.advance_replicas, {**batch, "spins": np.ones((2, 3, 3), np.int8)},
                0, 1, 1, nw)
    with pytest.raises(ValueError, match="int64"):
        advance(native.advance_replicas, {**batch, "energy": batch["energy"].astype(float)},
                0, 1, 1, nw)
    with pytest.raises(ValueError, match=r"thr of shape"):
        advance(native.advance_replicas, {**batch, "thr": batch["thr"][:1]}, 0, 1, 1, nw)
    with pytest.raises(ValueError, match="n_wolff"):
        advance(native.advance_replicas, batch, 0, 1, 1, np.array([1, -1], np.int64))


# --------------------------------------------------------------------- backend selection
def test_select_backend():
    numba_kern = native.select_backend("numba")
    assert numba_kern.name == "numba" and numba_kern.advance_replicas is kernels.advance_replicas
    auto = native.select_backend("auto")
    assert auto.name == ("native" if native.available() else "numba")
    with pytest.raises(ValueError, match="native, numba, auto"):
        native.select_backend("cuda")
    if native.available():
        kern = native.select_backend("native")
        assert kern.metropolis_sweep is native.metropolis_sweep


def test_select_backend_from_environment(monkeypatch):
    """Runs pick their backend through engine.select_backend, which reads $ISING_BACKEND."""
    from ising_dist import engine
    monkeypatch.setenv("ISING_BACKEND", "numba")
    assert engine.select_backend().name == "numba"
    monkeypatch.setenv("ISING_BACKEND", "")
    assert engine.select_backend().name == native.select_backend("auto").name
    monkeypatch.setenv("ISING_BACKEND", "fortran")
    with pytest.raises(ValueError, match="fortran"):
        engine.select_backend()


def test_missing_library_names_the_build_command(monkeypatch, tmp_path):
    monkeypatch.setattr(native, "_lib", None)
    monkeypatch.setattr(native, "_lib_error", None)
    monkeypatch.setattr(native, "candidate_paths", lambda: [tmp_path / native.LIB_NAME])
    assert not native.available()
    assert native.select_backend("auto").name == "numba"
    with pytest.raises(RuntimeError, match=r"cmake -S \. -B build && cmake --build build"):
        native.select_backend("native")
    with pytest.raises(RuntimeError, match="not built"):
        native.metropolis_sweep(np.ones((4, 4), np.int8), kernels.metropolis_thresholds(0.4),
                                np.uint64(1), 0, np.empty((4, 4), np.int8))


# ------------------------------------------------------ bit-identity: tempering segment
@needs_lib
@pytest.mark.parametrize("algorithm", ["metropolis", "wolff", "hybrid"])
@pytest.mark.parametrize("L,R,exchange_every,sample_every,n_samples", [
    (4, 2, 2, 7, 21), (8, 6, 2, 7, 21), (64, 3, 2, 7, 21),
    (64, 4, 200, 300, 3),  # intervals of >= 2^20 site updates: threads in the C loop
])
def test_pt_segment_is_bit_identical_to_numba(algorithm, L, R, exchange_every, sample_every,
                                              n_samples):
    from tests.test_kernels import pt_state, run_segment
    st = pt_state(L, R, seed=R, algorithm=algorithm)
    cadence = (3, 50 + n_samples * sample_every + 1, exchange_every, sample_every, 50)
    ref = run_segment(kernels.pt_segment, st, *cadence, cap=40)
    assert len(ref["out_sweep"]) == n_samples
    for n_threads in (1, 2, 3):
        got = run_segment(native.pt_segment, st, *cadence, cap=40, n_threads=n_threads)
        for name, v in ref.items():
            assert np.array_equal(np.asarray(got[name]), np.asarray(v)), \
                f"{algorithm} L={L} R={R} threads={n_threads}: {name} differs"


@needs_lib
def test_pt_segment_refuses_a_too_small_sample_buffer():
    from tests.test_kernels import pt_state, run_segment
    st = pt_state(4, 3, seed=1, algorithm="metropolis")
    with pytest.raises(ValueError, match="pt_segment failed"):
        run_segment(native.pt_segment, st, 0, 100, 1, 10, 0, cap=5)
