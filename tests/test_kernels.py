"""The simulation engine against exact answers, and its reproducibility contract.

Statistics: independent replicas (distinct streams) give honest error bars without
modelling autocorrelation; each test states where its σ comes from.
"""

import functools

import numba
import numpy as np
import pytest
from scipy import stats

from ising_dist import codec, exact, kernels, native
from ising_dist.engine import Chains, check_lattice, clusters_per_sweep, initial_lattice
from ising_dist.tempering import Cadence

TC = exact.TC
BACKENDS = ["numba", pytest.param("native", marks=pytest.mark.skipif(
    not native.available(), reason=f"native library not built (`{native.BUILD_HINT}`)"))]


def sample_chains(L, T, algorithm, replicas, thermalize, samples, every, seed=1, start="hot",
                  backend=None):
    """Run `replicas` independent chains of `algorithm` from a hot or cold start (Wolff
    clusters per step from the mean cluster size, measured with Wolff clusters first), and
    return per-spin e, m of shape [replicas, samples], samples `every` steps apart after
    `thermalize` steps."""
    chains = Chains.create(L, seed, range(replicas), start=start, backend=backend)
    betas = np.full(replicas, 1.0 / T)
    n_wolff = 1
    if algorithm != "metropolis":
        n_wolff = clusters_per_sweep(chains.mean_cluster_size(betas).mean(), L * L)
    chains.advance(betas, thermalize, 0, algorithm, n_wolff=n_wolff)
    e = np.empty((replicas, samples))
    m = np.empty((replicas, samples))
    sweep = thermalize
    for k in range(samples):
        chains.advance(betas, every, sweep, algorithm, n_wolff=n_wolff)
        sweep += every
        e[:, k], m[:, k] = chains.per_spin()
    return e, m


def chi2_against_enumeration(L, T, E, A):
    """(chi2, dof, p) of the histogram of total energies E and total |M| values A (int
    arrays, one entry per sample, samples independent) against the exact Boltzmann pmf of
    (E, |M|) from enumeration; expected counts below 5 are pooled into one bin (the
    standard validity rule of the chi-square test). A state that cannot exist raises."""
    Ex, Ax, p = exact.exact_distribution(L, T)
    index = {(a, b): k for k, (a, b) in enumerate(zip(Ex, Ax))}
    observed = np.zeros(len(p))
    for a, b in zip(E, A):
        observed[index[(a, b)]] += 1  # a KeyError here would be an impossible state
    expected = observed.sum() * p
    keep = expected >= 5
    obs = np.append(observed[keep], observed[~keep].sum())
    exp_ = np.append(expected[keep], expected[~keep].sum())
    if exp_[-1] == 0:
        obs, exp_ = obs[:-1], exp_[:-1]
    chi2 = ((obs - exp_) ** 2 / exp_).sum()
    return chi2, len(obs) - 1, stats.chi2.sf(chi2, len(obs) - 1)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("start", ["hot", "cold"])
@pytest.mark.parametrize("algorithm", ["metropolis", "wolff", "hybrid"])
@pytest.mark.parametrize("L,T", [(2, 1.5), (2, 3.0), (4, 1.5), (4, 2.269), (4, 3.5)])
def test_small_lattices_match_exact_enumeration(L, T, algorithm, start, backend):
    """Chi-square of the joint (E, |M|) histogram against exact enumeration, at L = 2 and 4,
    every algorithm on every backend, from hot and cold starts (p > 1e-3 for each of the 60
    cases: about 0.06 false alarms expected over all of them, fixed seeds).

    Samples are 4 steps apart on 128 independent chains: at L <= 4 that is several τ_int
    (checked below), so the samples are close to independent and the chi-square is honest.
    L = 2 was wrong before ΔE = 0 moves stopped being always accepted (hot starts stayed in
    zero-field states, cold starts never reached them: p ~ 0).
    """
    N = L * L
    e, m = sample_chains(L, T, algorithm, replicas=128, thermalize=200, samples=150, every=4,
                         start=start, backend=backend)
    E = np.rint(e * N).astype(int).ravel()
    A = np.rint(np.abs(m) * N).astype(int).ravel()
    chi2, dof, pvalue = chi2_against_enumeration(L, T, E, A)
    assert pvalue > 1e-3, f"{algorithm} L={L} T={T}: chi2={chi2:.1f} dof={dof} p={pvalue:.2g}"
    # the samples must really be nearly independent for the test above to mean anything
    lag1 = np.mean([np.corrcoef(row[:-1], row[1:])[0, 1] for row in e if row.std() > 0])
    assert lag1 < 0.3, f"lag-1 autocorrelation {lag1:.2f}: samples too correlated"


# ------------------------------------------------------------ ergodicity of the sweep
FORCED = np.uint64(2**32)  # a threshold every 32-bit uniform is below


@functools.lru_cache(maxsize=None)
def half_sweep_moves(L, colour, thr):
    """The moves of the half-sweep of one colour over all 2^(L²) states (row-major site
    k = bit k, spin +1 for a set bit): a list over the sites of that colour of
    (bit, stay, flip), stay/flip bool [2^N] telling whether the site may keep / may change
    its value from that state. The rule is the kernels': with sh = s·h, a site flips when
    sh < 0, else when its uniform is below thr[sh // 2] (thr: the 3 thresholds for
    ΔE = 0, 4, 8 as a tuple of ints, so that the tables are computed once):
    it may flip when that threshold is > 0 and may stay when it is < 2^32. Sites of one
    colour have neighbours of the other only, so their choices are independent."""
    N = L * L
    states = np.arange(2**N, dtype=np.int64)
    s = (2 * ((states[:, None] >> np.arange(N)) & 1) - 1).astype(np.int8).reshape(-1, L, L)
    h = (np.roll(s, 1, 1) + np.roll(s, -1, 1) + np.roll(s, 1, 2) + np.roll(s, -1, 2))
    sh = (s * h).astype(np.int64)
    thr_of = np.array([FORCED, FORCED, *thr], np.uint64)[(np.clip(sh, -4, 4) + 4) // 2]
    moves = []
    for i in range(L):
        for j in range(L):
            if (i + j) % 2 == colour:
                t = thr_of[:, i, j]
                moves.append((1 << (i * L + j), t < FORCED, t > 0))
    return moves


def successors(states, moves, reverse=False):
    """bool [2^N]: the states one half-sweep leads to from the set ``states`` (bool [2^N]),
    or with reverse=True the states that lead into it; site by site, since the sites of a
    half-sweep choose independently."""
    index = np.arange(states.size)
    for bit, stay, flip in moves:
        if reverse:
            states = (states & stay) | (states[index ^ bit] & flip)
        else:
            states = (states & stay) | (states & flip)[index ^ bit]
    return states


def sweep_successors(states, L, thr, reverse=False):
    """One sweep (colour 0, then colour 1) of :func:`successors`."""
    half = [half_sweep_moves(L, c, tuple(int(t) for t in thr)) for c in (0, 1)]
    for moves in (half[::-1] if reverse else half):
        states = successors(states, moves, reverse)
    return states


def reachable(L, thr, start, reverse=False):
    """bool [2^N]: the states some number of sweeps lead to from state `start` (reverse:
    the states that lead to it), by breadth-first search over whole sweeps."""
    seen = np.zeros(2 ** (L * L), bool)
    seen[start] = True
    frontier = seen.copy()
    while frontier.any():
        new = sweep_successors(frontier, L, thr, reverse) & ~seen
        seen |= new
        frontier = new
    return seen


@pytest.mark.parametrize("L", [2, 4])
@pytest.mark.parametrize("T", [1.0, 3.0, 10.0])
def test_metropolis_sweep_is_irreducible_and_aperiodic(L, T):
    """The transition graph of one shipped sweep, enumerated over all 2^(L²) states: the
    all-up state reaches every state and every state reaches it (irreducible), and it can
    stay put (a self-loop: an irreducible chain with one is aperiodic). With the thresholds
    of metropolis_thresholds(1/T); tests below check the graph against both backends."""
    thr = kernels.metropolis_thresholds(1.0 / T)
    up = 2 ** (L * L) - 1
    assert reachable(L, thr, up).all()
    assert reachable(L, thr, up, reverse=True).all()
    one = np.zeros(2 ** (L * L), bool)
    one[up] = True
    assert sweep_successors(one, L, thr)[up]


@pytest.mark.parametrize("L", [2, 4])
def test_always_accepting_zero_energy_moves_is_reducible(L):
    """Why a(ΔE = 0) < 1: with the former rule (thr0 = 2^32) some states cannot be reached
    from the ground state (4 of 16 at L = 2, 36 of 2^16 at L = 4), and they cannot reach it:
    the chain never samples them from a cold start, and stays among them from a hot start
    that lands there. They all have E = 0."""
    thr = kernels.metropolis_thresholds(1.0 / 3.0)
    thr[0] = FORCED
    up = 2 ** (L * L) - 1
    lost = ~reachable(L, thr, up)
    assert lost.sum() == {2: 4, 4: 36}[L]
    assert not (reachable(L, thr, int(np.flatnonzero(lost)[0])) & ~lost).any()
    for state in np.flatnonzero(lost):
        spins = (2 * ((state >> np.arange(L * L)) & 1) - 1).astype(np.int8).reshape(L, L)
        assert kernels.energy_magnetization(spins)[0] == 0


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("L,T,n", [(2, 3.0, 500), (2, None, 2000), (4, 3.0, 200)])
def test_sweep_transitions_are_those_of_the_enumerated_graph(L, T, n, backend):
    """The graph above is the kernels' sweep: from every state (L = 2) or 64 random ones
    (L = 4), n sweeps with different random numbers only ever lead to successors the graph
    allows, with the thresholds of T. With every threshold 2^31 (T None: the same graph,
    every optional move with probability 1/2, so each successor of an L = 2 state has
    probability >= 1/16) they lead to all of them."""
    kern = native.select_backend(backend)
    thr = kernels.metropolis_thresholds(1.0 / T) if T else np.full(3, 2**31, np.uint64)
    N = L * L
    starts = range(2**N) if L == 2 else np.random.default_rng(0).integers(0, 2**N, 64)
    scratch = np.empty((L, L), np.int8)
    weights = 1 << np.arange(N)
    for start in starts:
        one = np.zeros(2**N, bool)
        one[start] = True
        allowed = sweep_successors(one, L, thr)
        seen = np.zeros(2**N, bool)
        spins0 = (2 * ((start >> np.arange(N)) & 1) - 1).astype(np.int8).reshape(L, L)
        for t in range(n):
            spins = spins0.copy()
            kern.metropolis_sweep(spins, thr, np.uint64(12345), t, scratch)
            seen[int(((spins.ravel() > 0) * weights).sum())] = True
        assert not (seen & ~allowed).any(), f"start {start}: a move the graph forbids"
        if T is None:
            assert (seen == allowed).all(), f"start {start}: an allowed move never seen"


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("L", [4, 16])
def test_zero_field_stripes_are_left_at_every_size(L, backend):
    """The stripes s_ij = (-1)^j have h = 0 at every site, at any even L: with ΔE = 0 moves
    always accepted (thr0 = 2^32) a sweep flips every spin, forever (the chain is reducible
    at every L, not only at L = 2); with the shipped thresholds it leaves them within a few
    sweeps (a sweep stays among them with probability (15/16)^N: 0.36 at L = 4)."""
    kern = native.select_backend(backend)
    stripes = np.tile(np.array([1, -1], np.int8), (L, L // 2))
    scratch = np.empty_like(stripes)
    thr = kernels.metropolis_thresholds(1.0 / 2.5)
    always = thr.copy()
    always[0] = FORCED
    s = stripes.copy()
    for t in range(50):
        kern.metropolis_sweep(s, always, np.uint64(7), t, scratch)
        assert np.array_equal(s, stripes if t % 2 else -stripes)
    for t in range(50, 70):
        kern.metropolis_sweep(s, thr, np.uint64(7), t, scratch)
        if not (np.array_equal(s, stripes) or np.array_equal(s, -stripes)):
            break
    assert not (np.array_equal(s, stripes) or np.array_equal(s, -stripes))


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


@pytest.mark.validation
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


# ------------------------------------------------------------------ parallel-tempering segment
def pt_state(L, R, seed, algorithm, tmin=1.6, tmax=3.4):
    """The state (kernels.SegmentState fields) of R replicas on a ladder from tmin to tmax."""
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
    """fn (a backend's pt_segment) on a copy of st from sweep0 to sweep1, with the event table
    the tempering loop builds for this cadence."""
    st = {k: (v.copy() if isinstance(v, np.ndarray) else v) for k, v in st.items()}
    R, L = st["spins"].shape[0], st["spins"].shape[2]
    out = kernels.SampleBuffer(spins=np.zeros((cap, R, L * L // 4), np.uint8),
                               energy=np.zeros((cap, R)), magnet=np.zeros((cap, R)),
                               slot=np.zeros((cap, R), np.int64), sweep=np.zeros(cap, np.int64))
    events = Cadence(exchange_every, sample_every, thermalize).events(sweep0, sweep1)
    n = fn(kernels.SegmentState(**st), sweep0, events, out, **kw)
    st.update({f"out_{k}": v[:n] for k, v in out._asdict().items()})
    st["out_spins"] = np.empty((n, R, L, L), np.int8)  # captured packed: unpack to compare
    codec.unpack_spins(out.spins[:n], st["out_spins"])
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


@pytest.mark.parametrize("R,parity", [(2, 0), (3, 1), (5, 0), (5, 1)])
def test_exchange_round_detailed_balance(R, parity):
    """Rounds of one parity attempt the pairs (k, k+1) with k of that parity, and no other;
    a pair is swapped with probability min(1, exp(Δβ·ΔE)), Δβ = β_k − β_{k+1} > 0,
    ΔE = E(at k) − E(at k+1): with the lower energy at the colder slot k (Δβ·ΔE < 0) with
    probability exp(Δβ·ΔE), within 4σ; from the reverse placement (Δβ·ΔE > 0) always.
    The ratio of the two is the Boltzmann ratio of the placements: detailed balance."""
    beta = 1.0 / np.linspace(2.0, 3.0, R)
    n = 20000
    for sign in (1, -1):  # +1: lower energy at the colder slot; -1: the reverse placement
        energy = (-100 + sign * 10 * np.arange(R)).astype(np.int64)  # replica r at slot r
        accepted = np.zeros(R - 1)
        for i in range(n):
            slot_of = np.arange(R, dtype=np.int64)
            exch = np.zeros((4, R - 1), np.int64)
            kernels.exchange_round(parity + 2 * i, np.uint64(99), beta, energy, slot_of, exch,
                                   np.zeros(R, np.int8), np.zeros(R, np.int64))
            attempted = np.arange(R - 1) % 2 == parity
            assert exch[0].tolist() == attempted.astype(int).tolist()
            swapped = exch[1].astype(bool)
            assert not (swapped & ~attempted).any()
            for k in np.flatnonzero(swapped):
                assert slot_of[k] == k + 1 and slot_of[k + 1] == k
            accepted += swapped
        for k in np.flatnonzero(np.arange(R - 1) % 2 == parity):
            delta = (beta[k] - beta[k + 1]) * (energy[k] - energy[k + 1])
            p = min(1.0, np.exp(delta))
            if delta >= 0:
                assert accepted[k] == n, (sign, k)
            else:
                assert abs(accepted[k] / n - p) < 4 * np.sqrt(p * (1 - p) / n), (sign, k)
