"""The simulation engine against exact answers, and its reproducibility contract.

Statistics: independent replicas (distinct streams) give honest error bars without
modelling autocorrelation; each test states where its σ comes from.
"""

import numba
import numpy as np
import pytest
from scipy import stats

from ising_dist import exact, kernels
from ising_dist.engine import Chains, check_lattice, clusters_per_sweep, initial_lattice

TC = exact.TC


def sample_chains(L, T, algorithm, replicas, thermalize, samples, every, seed=1):
    """Run `replicas` independent chains; return per-spin e, m of shape [replicas, samples]."""
    chains = Chains.create(L, seed, range(replicas))
    betas = np.full(replicas, 1.0 / T)
    chains.advance(betas, thermalize, 0, "metropolis")
    n_wolff = clusters_per_sweep(chains.mean_cluster_size(betas).mean(), L * L)
    e = np.empty((replicas, samples))
    m = np.empty((replicas, samples))
    sweep = thermalize
    for k in range(samples):
        chains.advance(betas, every, sweep, algorithm, n_wolff=n_wolff)
        sweep += every
        e[:, k], m[:, k] = chains.per_spin()
    return e, m


@pytest.mark.parametrize("algorithm", ["metropolis", "wolff", "hybrid"])
@pytest.mark.parametrize("T", [1.5, 2.269, 3.5])
def test_l4_matches_exact_enumeration(algorithm, T):
    """Chi-square of the joint (E, |M|) histogram against exact enumeration at L=4.

    Samples are 4 sweeps apart on 128 independent chains: at L=4 that is several τ_int
    (checked below), so the samples are close to independent and the chi-square is honest.
    """
    L, N = 4, 16
    e, m = sample_chains(L, T, algorithm, replicas=128, thermalize=200, samples=150, every=4)
    E = np.rint(e * N).astype(int).ravel()
    A = np.rint(np.abs(m) * N).astype(int).ravel()
    Ex, Ax, p = exact.exact_distribution(L, T)
    index = {(a, b): k for k, (a, b) in enumerate(zip(Ex, Ax))}
    observed = np.zeros(len(p))
    for a, b in zip(E, A):
        observed[index[(a, b)]] += 1  # a KeyError here would be an impossible state
    n = observed.sum()
    expected = n * p
    keep = expected >= 5  # standard validity rule; pool the rare states in one bin
    obs = np.append(observed[keep], observed[~keep].sum())
    exp_ = np.append(expected[keep], expected[~keep].sum())
    if exp_[-1] == 0:
        obs, exp_ = obs[:-1], exp_[:-1]
    chi2 = ((obs - exp_) ** 2 / exp_).sum()
    pvalue = stats.chi2.sf(chi2, len(obs) - 1)
    assert pvalue > 1e-3, f"{algorithm} T={T}: chi2={chi2:.1f} dof={len(obs)-1} p={pvalue:.2g}"
    # the samples must really be nearly independent for the test above to mean anything
    lag1 = np.mean([np.corrcoef(row[:-1], row[1:])[0, 1] for row in e])
    assert lag1 < 0.3, f"lag-1 autocorrelation {lag1:.2f}: samples too correlated"


def replica_jackknife(e, T, N):
    """(e_mean, e_err, c, c_err) with errors from leave-one-replica-out jackknife.

    e: [R, S] per-spin energies of R independent chains. The pooled estimators use all
    samples; the jackknife over independent replicas needs no autocorrelation model.
    """
    R = e.shape[0]
    def estimates(x):
        return x.mean(), N * x.var() / T**2
    full = np.array(estimates(e))
    jk = np.array([estimates(np.delete(e, r, axis=0)) for r in range(R)])
    err = np.sqrt((R - 1) / R * ((jk - jk.mean(axis=0)) ** 2).sum(axis=0))
    return full[0], err[0], full[1], err[1]


@pytest.mark.parametrize("algorithm,sweeps", [("metropolis", 8000), ("wolff", 3000)])
@pytest.mark.parametrize("T", [2.0, 2.269, 2.6])
def test_l16_matches_kaufman(algorithm, sweeps, T):
    L, N = 16, 256
    e, _ = sample_chains(L, T, algorithm, replicas=32, thermalize=1000, samples=sweeps, every=1)
    e_mean, e_err, c, c_err = replica_jackknife(e, T, N)
    e_exact = exact.kaufman_energy(T, L)
    c_exact = exact.kaufman_specific_heat(T, L)
    assert abs(e_mean - e_exact) < 3 * e_err, (e_mean, e_err, e_exact)
    assert abs(c - c_exact) < 3 * c_err, (c, c_err, c_exact)
    # the error bars must be small enough for the comparison to have teeth
    assert e_err < 2e-3 and c_err < 0.05 * c_exact


def test_same_seed_same_trajectory_and_streams_differ():
    a = Chains.create(8, 42, [0, 1, 2])
    b = Chains.create(8, 42, [0, 1, 2])
    betas = np.full(3, 0.44)
    for algorithm in ("metropolis", "wolff", "hybrid"):
        a.advance(betas, 20, 0, algorithm)
        b.advance(betas, 20, 0, algorithm)
    assert np.array_equal(a.spins, b.spins) and np.array_equal(a.counters, b.counters)
    # different replica ids: different initial lattices and different trajectories
    assert not np.array_equal(a.spins[0], a.spins[1])
    assert len(set(a.keys.tolist())) == 3 and len(set(a.wkeys.tolist())) == 3
    # a replica evolves identically whether alone or batched with others (rank-independence)
    c = Chains.create(8, 42, [2])
    for algorithm in ("metropolis", "wolff", "hybrid"):
        c.advance(betas[:1], 20, 0, algorithm)
    assert np.array_equal(c.spins[0], a.spins[2])
    # a different seed gives a different trajectory
    d = Chains.create(8, 43, [0, 1, 2])
    assert not np.array_equal(d.spins, Chains.create(8, 42, [0, 1, 2]).spins)


@pytest.mark.parametrize("L", [32, 512])  # below and above kernels.PARALLEL_MIN_SITES
def test_parallel_sweep_equals_batched_serial_sweep(L):
    """The row-parallel single-lattice sweep (1 and 2 threads) equals the batched kernel."""
    beta = 1 / 2.269
    assert (L * L >= kernels.PARALLEL_MIN_SITES) == (L == 512)
    chains = Chains.create(L, 7, [5])
    ref = chains.spins[0].copy()
    chains.advance(np.array([beta]), 10, 0, "metropolis")
    thr = kernels.metropolis_thresholds(beta)
    scratch = np.empty((L, L), np.int8)
    for threads in (1, 2):
        numba.set_num_threads(min(threads, numba.config.NUMBA_NUM_THREADS))
        s = ref.copy()
        E, M = kernels.energy_magnetization(s)
        for t in range(10):
            de, dm = kernels.metropolis_sweep(s, thr, chains.keys[0], t, scratch)
            E, M = E + de, M + dm
        assert np.array_equal(s, chains.spins[0])
        assert (E, M) == kernels.energy_magnetization(s)
    numba.set_num_threads(numba.config.NUMBA_NUM_THREADS)


@pytest.mark.parametrize("algorithm", ["metropolis", "wolff", "hybrid"])
def test_incremental_energy_and_magnetization(algorithm):
    chains = Chains.create(12, 3, range(4))
    chains.advance(np.linspace(0.2, 0.6, 4), 30, 0, algorithm, n_metropolis=2, n_wolff=3)
    for s, E, M in zip(chains.spins, chains.energy, chains.magnet):
        assert (E, M) == kernels.energy_magnetization(s)


def test_ground_state_and_infinite_temperature_limits():
    cold = Chains.create(8, 0, [0], start="cold")
    assert cold.per_spin() == (-2.0, 1.0)
    cold.advance(np.array([50.0]), 50, 0, "metropolis")  # T = 0.02: nothing can flip
    assert np.all(cold.spins == 1)
    # Wolff at very low T flips the whole lattice as one cluster
    assert cold.mean_cluster_size(np.array([50.0]), 3)[0] == 64
    assert np.all(cold.spins == -1)  # three whole-lattice flips


@pytest.mark.parametrize("bad,message", [
    (np.ones((5, 5), np.int8), "L=5"),
    (np.ones((1, 1), np.int8), "L=1"),
    (np.zeros((4, 4), np.int8), r"\+1 or -1"),
    (np.ones((4, 4), np.float64), "int8"),
    (np.ones((4, 6), np.int8), "square"),
])
def test_bad_lattices_are_refused(bad, message):
    with pytest.raises(ValueError, match=message):
        check_lattice(bad)


def test_bad_sizes_temperatures_and_algorithms_are_refused():
    with pytest.raises(ValueError, match="L=7"):
        Chains.create(7, 0, [0])
    with pytest.raises(ValueError, match="L=0"):
        Chains.create(0, 0, [0])
    chains = Chains.create(4, 0, [0])
    with pytest.raises(ValueError, match="T > 0"):
        chains.advance(np.array([-1.0]), 1, 0)
    with pytest.raises(ValueError, match="algorithm='heatbath'"):
        chains.advance(np.array([1.0]), 1, 0, "heatbath")
    with pytest.raises(ValueError, match="seed=-1"):
        Chains.create(4, -1, [0])


def test_initial_lattice_is_random_and_reproducible():
    a = initial_lattice(64, 123)
    assert np.array_equal(a, initial_lattice(64, 123))
    assert abs(a.mean()) < 4 / 64  # 4σ for 4096 fair coin flips


# ------------------------------------------------------------------ packed lattices
def test_pack_spins_layout_and_round_trip():
    """Two bits a spin, code s + 1, first spin in the most significant bits; 0 (the writer's
    "not yet written") survives too."""
    s = np.array([[-1, 1, 1, -1], [0, 0, 1, 1]], np.int8).reshape(1, 2, 4)
    packed = np.empty((1, 2), np.uint8)
    kernels.pack_spins(s, packed)
    assert packed.tolist() == [[0b00101000, 0b01011010]]
    rng = np.random.default_rng(0)
    s = rng.integers(-1, 2, (3, 5, 6, 6)).astype(np.int8)
    packed = np.empty((3, 5, 9), np.uint8)
    kernels.pack_spins(s, packed)
    back = np.empty_like(s)
    kernels.unpack_spins(packed, back)
    assert np.array_equal(back, s)


# ------------------------------------------------------------------ parallel-tempering segment
def pt_state(L, R, seed, algorithm, tmin=1.6, tmax=3.4):
    """Arguments of kernels.pt_segment for R replicas on a ladder from tmin to tmax."""
    beta = 1.0 / np.geomspace(tmin, tmax, R)
    ch = Chains.create(L, seed, range(R), backend="numba")
    nw = np.zeros(R, np.int64) if algorithm == "metropolis" else np.arange(R, dtype=np.int64) % 3 + 1
    nm = {"metropolis": 1, "wolff": 0, "hybrid": 2}[algorithm]
    return dict(spins=ch.spins, thr_slot=kernels.metropolis_thresholds(beta),
                padd_slot=kernels.wolff_threshold(beta), nw_slot=nw, beta_slot=beta,
                keys=ch.keys, wkeys=ch.wkeys, counters=ch.counters,
                slot_of=np.random.default_rng(seed).permutation(R).astype(np.int64),
                exch=np.zeros((4, R - 1), np.int64), direction=np.zeros(R, np.int8),
                round_trips=np.zeros(R, np.int64), xkey=np.uint64(12345 + seed), n_metropolis=nm,
                energy=ch.energy, magnet=ch.magnet, flipped=ch.flipped)


def run_segment(fn, st, sweep0, sweep1, exchange_every, sample_every, thermalize, cap, **kw):
    st = {k: (v.copy() if isinstance(v, np.ndarray) else v) for k, v in st.items()}
    R, L = st["spins"].shape[0], st["spins"].shape[2]
    out = dict(out_spins=np.zeros((cap, R, L * L // 4), np.uint8), out_energy=np.zeros((cap, R)),
               out_magnet=np.zeros((cap, R)), out_slot=np.zeros((cap, R), np.int64),
               out_sweep=np.zeros(cap, np.int64))
    s = st
    n = fn(s["spins"], s["thr_slot"], s["padd_slot"], s["nw_slot"], s["beta_slot"], s["keys"],
           s["wkeys"], s["counters"], s["slot_of"], s["exch"], s["direction"],
           s["round_trips"], s["xkey"], sweep0, sweep1, s["n_metropolis"], exchange_every,
           sample_every, thermalize, s["energy"], s["magnet"], s["flipped"], *out.values(), **kw)
    st.update({k: v[:n] for k, v in out.items()})
    st["out_spins"] = np.empty((n, R, L, L), np.int8)  # captured packed: unpack to compare
    kernels.unpack_spins(out["out_spins"][:n], st["out_spins"])
    return st


def reference_segment(st, sweep0, sweep1, exchange_every, sample_every, thermalize):
    """pt_segment's contract, one sweep at a time with advance_replicas and exchange_round."""
    st = {k: (v.copy() if isinstance(v, np.ndarray) else v) for k, v in st.items()}
    R, N = st["spins"].shape[0], st["spins"][0].size
    samples = []
    for s in range(sweep0 + 1, sweep1 + 1):
        k = st["slot_of"]
        kernels.advance_replicas(st["spins"], st["thr_slot"][k], st["padd_slot"][k], st["keys"],
                                 st["wkeys"], st["counters"], s - 1, 1, st["n_metropolis"],
                                 st["nw_slot"][k], st["energy"], st["magnet"], st["flipped"])
        if s == sweep1:
            break
        if s % exchange_every == 0:
            kernels.exchange_round(s // exchange_every, st["xkey"], st["beta_slot"],
                                   st["energy"], st["slot_of"], st["exch"], st["direction"],
                                   st["round_trips"])
        if s > thermalize and (s - thermalize) % sample_every == 0:
            samples.append((st["spins"].copy(), st["energy"] / N, st["magnet"] / N,
                            st["slot_of"].copy(), s))
    for name, j in (("out_spins", 0), ("out_energy", 1), ("out_magnet", 2),
                    ("out_slot", 3), ("out_sweep", 4)):
        st[name] = np.array([x[j] for x in samples])
    return st


@pytest.mark.parametrize("algorithm", ["metropolis", "wolff", "hybrid"])
@pytest.mark.parametrize("L,R,exchange_every,sample_every,n_samples", [
    (6, 5, 3, 5, 15),
    (64, 4, 200, 300, 3),  # intervals of >= 2^20 site updates: the prange branch
])
def test_pt_segment_equals_sweep_by_sweep_exchanges_and_samples(
        algorithm, L, R, exchange_every, sample_every, n_samples):
    # a ladder narrow enough for exchanges to be accepted at L=64 too
    st = pt_state(L, R, seed=3, algorithm=algorithm, tmax=3.4 if L < 64 else 1.62)
    # thermalization ends inside the segment; cadences coprime so events interleave
    sweep1 = 40 + n_samples * sample_every + 1
    got = run_segment(kernels.pt_segment, st, 7, sweep1, exchange_every, sample_every, 40,
                      cap=32)
    ref = reference_segment(st, 7, sweep1, exchange_every, sample_every, 40)
    assert len(got["out_sweep"]) == n_samples and got["out_sweep"][0] == 40 + sample_every
    for name, v in ref.items():
        assert np.array_equal(np.asarray(got[name]), np.asarray(v)), f"{name} differs"
    rounds = range(7 // exchange_every + 1, (sweep1 - 1) // exchange_every + 1)
    assert got["exch"][0].sum() == sum(len(range(n % 2, R - 1, 2)) for n in rounds)
    assert got["exch"][1].sum() > 0
    for r in range(R):
        assert (got["energy"][r], got["magnet"][r]) == \
            kernels.energy_magnetization(got["spins"][r])


def test_exchange_round_detailed_balance_two_levels():
    """Two replicas whose energies differ by dE: acceptance = min(1, exp(Δβ·dE)), within 4σ."""
    beta = np.array([0.5, 0.4])
    energy = np.array([-100, -90], np.int64)  # replica 0 at slot 0 (cold) has the lower E
    p = np.exp((beta[0] - beta[1]) * (energy[0] - energy[1]))  # Δβ·ΔE < 0: p = e^-1
    acc, n = 0, 20000
    for rnd in range(0, 2 * n, 2):  # even rounds attempt the pair (0, 1)
        slot_of = np.array([0, 1], np.int64)
        exch = np.zeros((4, 1), np.int64)
        kernels.exchange_round(rnd, np.uint64(99), beta, energy, slot_of, exch,
                               np.zeros(2, np.int8), np.zeros(2, np.int64))
        acc += exch[1, 0]
        assert slot_of.tolist() == ([1, 0] if exch[1, 0] else [0, 1])
    sigma = np.sqrt(p * (1 - p) / n)
    assert abs(acc / n - p) < 4 * sigma
