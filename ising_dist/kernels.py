"""Numba kernels for the 2D Ising model: pure functions of arrays and scalars.

No I/O, no MPI, no globals beyond constants. Input validation and RNG ownership live in
:mod:`ising_dist.engine`; these functions trust their arguments.

Lattice: ``spins`` int8 [L, L], values ±1, periodic, L even (the checkerboard needs a
bipartite torus). Energies and magnetizations are integer *totals* here
(E = -Σ_<ij> s_i s_j, M = Σ s_i); per-spin values are formed by the callers.

Random numbers are counter-based (SplitMix64 finaliser of ``key + (counter+1)·γ``), so a
stream is fully described by (key, counter) and results do not depend on threads or ranks:

* Metropolis: the random number for site (i, j) in sweep t is ``rand(key, t·N + i·L + j)``.
  No state is carried between sweeps beyond the sweep index, so a row-parallel sweep is
  bit-identical to a serial one, and a replica's trajectory does not depend on who runs it.
* Wolff: a sequential stream ``rand(key, counter++)``; the caller stores the counter.

The acceptance test compares the top 32 bits of the random number with a precomputed
threshold ``2·floor(a(ΔE) · 2^31)`` for ΔE ∈ {0, 4, 8} (see :func:`metropolis_thresholds`);
moves with ΔE < 0 are always accepted.
"""

from typing import NamedTuple

import numba
import numpy as np
from numba import njit, prange

from .codec import _pack

_GAMMA = np.uint64(0x9E3779B97F4A7C15)
_M1 = np.uint64(0xBF58476D1CE4E5B9)
_M2 = np.uint64(0x94D049BB133111EB)
_S30 = np.uint64(30)
_S27 = np.uint64(27)
_S31 = np.uint64(31)
_S32 = np.uint64(32)
_ONE = np.uint64(1)


@njit(inline="always")
def rand64(key, counter):
    """SplitMix64 output number ``counter`` of the stream ``key`` (both uint64)."""
    z = key + (counter + _ONE) * _GAMMA
    z = (z ^ (z >> _S30)) * _M1
    z = (z ^ (z >> _S27)) * _M2
    return z ^ (z >> _S31)


# acceptance of a ΔE = 0 move (see metropolis_thresholds)
ZERO_MOVE_ACCEPTANCE = 15 / 16


def metropolis_thresholds(beta):
    """uint64 [..., 3]: acceptance thresholds ``2·floor(a(ΔE) · 2^31)`` on a 32-bit uniform
    (accept when below) for ΔE = 0, 4, 8 (beta = 1/T scalar or array, units of 1/J; nested,
    thr0 ≥ thr4 ≥ thr8, and even; a move with ΔE < 0 is always accepted).

    a(ΔE) = exp(-β ΔE) for ΔE > 0 (Metropolis et al., J. Chem. Phys. 21, 1087 (1953)), and
    a(0) = max(15/16, exp(-4β)) instead of 1. A move with ΔE = 0 has a reverse move with
    ΔE = 0, so any a(0) in (0, 1] keeps detailed balance; a(0) = 1 does not keep the
    checkerboard sweep irreducible: zero-field states (every site with h = 0, e.g. the
    stripes s_ij = (-1)^j at any even L) then flip as a whole, deterministically, sweep
    after sweep, and no other state leads into them (4 of the 16 states at L = 2, 36 of the
    2^16 at L = 4; tests/test_kernels.py enumerates this). Any a(0) < 1 makes it irreducible;
    15/16 keeps it fast: measured τ_int (e, |m|) at Tc, L = 16, in sweeps: 5.8, 10.7 for
    a(0) = 1; 6.3, 11.8 for 15/16; 11.7, 23.5 for 1/2; at L = 2 below 3 sweeps. The max keeps
    a(0) ≥ a(4), so that one uniform decides all three (hpc/ising_kernels.c relies on the
    nesting); even thresholds let it compare r without the hash's last xor-shift.
    """
    p = np.exp(-np.multiply.outer(beta, np.array([4.0, 8.0])))
    p0 = np.maximum(ZERO_MOVE_ACCEPTANCE, p[..., :1])
    return (2 * np.floor(np.concatenate([p0, p], axis=-1) * 2.0**31)).astype(np.uint64)


def wolff_threshold(beta):
    """uint64 (array like beta): threshold on a 32-bit uniform for adding a bond,
    p_add = 1 - exp(-2β)."""
    return np.floor(-np.expm1(-2.0 * np.asarray(beta)) * 2.0**32).astype(np.uint64)


@njit(inline="always")
def _update_row(spins, i, colour, thr0, thr4, thr8, key, base, out):
    """Metropolis update of the sites of one colour in row i. Returns (dE, dM) totals.

    With sh = s·h (h the sum of the four neighbours, ΔE = 2·sh): flip when sh < 0, else
    when the site's uniform r < thr0, thr4 or thr8 for sh = 0, 2 or 4.

    Branch-free over the whole row (the other colour is masked out) and written through
    the scratch row ``out`` (int8 [L]) so that LLVM can vectorise the hash; the random
    number of site j is the same as a site-by-site loop would draw.
    """
    L = spins.shape[0]
    row = spins[i]
    up = spins[i - 1 if i > 0 else L - 1]
    down = spins[i + 1 if i + 1 < L else 0]
    rowbase = base + np.uint64(i * L)
    parity = (i + colour) & 1
    de = 0
    dm = 0
    for j in range(L):
        s = np.int32(row[j])
        h = (np.int32(up[j]) + np.int32(down[j]) + np.int32(row[j - 1 if j > 0 else L - 1])
             + np.int32(row[j + 1 if j + 1 < L else 0]))
        sh = s * h
        r = rand64(key, rowbase + np.uint64(j)) >> _S32
        thr = thr0 if sh == 0 else (thr4 if sh == 2 else thr8)
        flip = np.int32(((sh < 0) | (r < thr)) & ((j & 1) == parity))
        out[j] = np.int8(s - 2 * s * flip)
        de += 2 * sh * flip
        dm -= 2 * s * flip
    row[:] = out
    return de, dm


@njit(inline="always")
def _metropolis_serial(spins, thr, key, sweep, out):
    """One sweep on one thread; thr uint64 [3] (thr0, thr4, thr8)."""
    L = spins.shape[0]
    base = np.uint64(sweep) * np.uint64(L * L)
    de = 0
    dm = 0
    for colour in range(2):
        for i in range(L):
            a, b = _update_row(spins, i, colour, thr[0], thr[1], thr[2], key, base, out)
            de += a
            dm += b
    return de, dm


# below this many sites a sweep is too short to pay for two thread barriers per sweep
# (measured: 2 threads ran at 0.15x of 1 thread at L=64 and 0.9x at L=256, 1.8x at L=1024)
PARALLEL_MIN_SITES = 512 * 512


@njit(parallel=True, cache=True)
def metropolis_sweep(spins, thr, key, sweep, scratch):
    """One checkerboard Metropolis sweep of one lattice, rows split over numba threads
    (lattices of PARALLEL_MIN_SITES sites and more; smaller ones run on one thread).

    spins: int8 [L, L] updated in place; thr: uint64 [3] from metropolis_thresholds;
    key: uint64 stream key; sweep: int, the sweep index that selects the random numbers;
    scratch: int8 [L, L] work array. Returns (dE, dM) as int64 totals. The result does not
    depend on the number of threads.
    """
    L = spins.shape[0]
    if L * L < PARALLEL_MIN_SITES:
        return _metropolis_serial(spins, thr, key, sweep, scratch[0])
    base = np.uint64(sweep) * np.uint64(L * L)
    de = 0
    dm = 0
    for colour in range(2):
        for i in prange(L):
            a, b = _update_row(spins, i, colour, thr[0], thr[1], thr[2], key, base,
                               scratch[i])
            de += a
            dm += b
    return de, dm


@njit(inline="always")
def _neighbours(site, L):
    """The four periodic neighbours of flat index site (row-major L×L)."""
    i = site // L
    j = site - i * L
    row = i * L
    return ((i - 1 if i > 0 else L - 1) * L + j, (i + 1 if i + 1 < L else 0) * L + j,
            row + (j - 1 if j > 0 else L - 1), row + (j + 1 if j + 1 < L else 0))


@njit(cache=True)
def _wolff_cluster(spins, padd, key, counter, stack, members, mark):
    """Grow and flip one Wolff cluster. Returns (size, dE, dM, counter).

    stack, members: int64 [N] work arrays; mark: bool [N], all False on entry and left all
    False on exit (cleared over the cluster only, so small clusters stay cheap).
    """
    L = spins.shape[0]
    N = L * L
    flat = spins.reshape(N)
    r = rand64(key, counter) >> _S32
    counter += _ONE
    seed = np.int64((r * np.uint64(N)) >> _S32)
    s0 = flat[seed]
    stack[0] = seed
    members[0] = seed
    mark[seed] = True
    top = 1
    n = 1
    while top > 0:
        top -= 1
        for nb in _neighbours(stack[top], L):
            if not mark[nb] and flat[nb] == s0:
                r = rand64(key, counter) >> _S32
                counter += _ONE
                if r < padd:
                    mark[nb] = True
                    stack[top] = nb
                    top += 1
                    members[n] = nb
                    n += 1
    de = 0
    for c in range(n):
        flat[members[c]] = -s0
    for c in range(n):
        for nb in _neighbours(members[c], L):
            if not mark[nb]:
                # bond to an outside spin: energy -s0·s_nb before, +s0·s_nb after
                de += 2 * np.int64(s0) * np.int64(flat[nb])
    for c in range(n):
        mark[members[c]] = False
    return n, de, -2 * np.int64(s0) * n, counter


@njit(inline="always")
def _advance_one(lat, thr, padd, key, wkey, c, step0, n_steps, n_metropolis, n_wolff,
                 stack, members, mark, out):
    """Steps step0 … step0+n_steps-1 of one replica (thr uint64 [3]). Returns
    (dE, dM, flipped, counter)."""
    de = 0
    dm = 0
    nf = 0
    for t in range(n_steps):
        for k in range(n_metropolis):
            a, b = _metropolis_serial(lat, thr, key, (step0 + t) * n_metropolis + k, out)
            de += a
            dm += b
        for _ in range(n_wolff):
            n, a, b, c = _wolff_cluster(lat, padd, wkey, c, stack, members, mark)
            de += a
            dm += b
            nf += n
    return de, dm, nf, c


@njit(parallel=True, cache=True)
def advance_replicas(spins, thr, padd, keys, wkeys, counters, sweep0, n_sweeps,
                     n_metropolis, n_wolff, energy, magnet, flipped):
    """Advance R independent replicas by n_sweeps steps, replicas split over threads.

    spins int8 [R, L, L]; thr uint64 [R, 3]; padd uint64 [R]; keys, wkeys uint64 [R]
    (Metropolis / Wolff stream keys); counters uint64 [R] Wolff stream positions (updated);
    n_wolff int64 [R] clusters per step; energy, magnet int64 [R] running totals (updated);
    flipped int64 [R] running count of spins flipped by Wolff clusters (updated).
    One step = n_metropolis Metropolis sweeps (sweep indices (sweep0+t)·n_metropolis + k)
    followed by n_wolff[r] Wolff clusters. The number of clusters must not depend on the
    configuration: a rule such as "clusters until N spins flipped" biases the samples.
    """
    R = spins.shape[0]
    N = spins.shape[1] * spins.shape[2]
    for r in prange(R):
        # Wolff work arrays only when clusters are grown (Metropolis-only calls skip 3N)
        W = N if n_wolff[r] > 0 else 1
        stack = np.empty(W, np.int64)
        members = np.empty(W, np.int64)
        mark = np.zeros(W, np.bool_)
        out = np.empty(spins.shape[2], np.int8)
        de, dm, nf, c = _advance_one(spins[r], thr[r], padd[r], keys[r],
                                     wkeys[r], counters[r], sweep0, n_sweeps, n_metropolis,
                                     n_wolff[r], stack, members, mark, out)
        counters[r] = c
        energy[r] += de
        magnet[r] += dm
        flipped[r] += nf


# -- parallel tempering ------------------------------------------------------------------
# exchange statistics, rows of the int64 [4, R-1] array `exch`
ATTEMPTED, ACCEPTED, WINDOW_ATTEMPTED, WINDOW_ACCEPTED = 0, 1, 2, 3


@njit(cache=True)
def exchange_round(round_index, xkey, beta_slot, energy, slot_of, exch, direction,
                   round_trips):
    """One round of temperature exchanges between neighbouring slots (k, k+1), k even in
    even rounds and odd in odd rounds, then round-trip bookkeeping.

    beta_slot float64 [R] inverse temperature of each slot (ascending T); energy int64 [R]
    total energy of replica id r; slot_of int64 [R] slot of replica r (updated); exch int64
    [4, R-1] attempted/accepted counts, overall and in the adaptive-ladder window (updated);
    direction int8 [R] (+1: last visited the lowest T, -1: the highest) and round_trips
    int64 [R] per replica (updated). The uniform of pair k is
    rand64(xkey, round_index·R + k) / 2^64 (53 bits): every rank computes the same decisions.
    """
    _exchange_round(round_index, xkey, beta_slot, energy, slot_of, exch, direction,
                    round_trips, np.empty(slot_of.shape[0], np.int64))


@njit(inline="always")
def _exchange_round(round_index, xkey, beta_slot, energy, slot_of, exch, direction,
                    round_trips, replica_at):
    """exchange_round with a work array replica_at int64 [R] (the inverse of slot_of)."""
    R = slot_of.shape[0]
    for r in range(R):
        replica_at[slot_of[r]] = r
    base = np.uint64(round_index) * np.uint64(R)
    for k in range(round_index % 2, R - 1, 2):
        a = replica_at[k]
        b = replica_at[k + 1]
        delta = (beta_slot[k] - beta_slot[k + 1]) * np.float64(energy[a] - energy[b])
        u = np.float64(rand64(xkey, base + np.uint64(k)) >> np.uint64(11)) * 2.0**-53
        exch[ATTEMPTED, k] += 1
        exch[WINDOW_ATTEMPTED, k] += 1
        if delta >= 0 or u < np.exp(delta):
            exch[ACCEPTED, k] += 1
            exch[WINDOW_ACCEPTED, k] += 1
            slot_of[a] = k + 1
            slot_of[b] = k
            replica_at[k] = b
            replica_at[k + 1] = a
    bottom = replica_at[0]
    top = replica_at[R - 1]
    if direction[bottom] == -1:
        round_trips[bottom] += 1
    direction[bottom] = 1
    if direction[top] == 1:
        direction[top] = -1


# -- the compiled tempering loop -----------------------------------------------------------
# Event table: int64 [n, 3] rows (sweep, flags, exchange round), sweeps ascending, built once
# per segment by ising_dist.tempering from its triggers (ising_dist.schedule). The loop
# advances every replica to a row's sweep, then does what its flags say: an exchange round
# (round index in the third column), then a sample. The last row is the segment's end,
# with flags 0: its events are the caller's. hpc/ising_kernels.h has the same flags.
EXCHANGE = 1
SAMPLE = 2

PT_PARALLEL_MIN_WORK = 1 << 20  # site updates in an interval between events


class SegmentState(NamedTuple):
    """The arrays a tempering segment reads and updates (one process holds every replica;
    row r of the per-replica arrays is replica id r).

    Per replica: spins int8 [R, L, L]; keys, wkeys uint64 [R] (Metropolis / Wolff stream
    keys); counters uint64 [R] Wolff stream positions; energy, magnet int64 [R] totals;
    flipped int64 [R] spins flipped by Wolff clusters. Per temperature slot: thr_slot uint64
    [R, 3] (:func:`metropolis_thresholds`), padd_slot uint64 [R] (:func:`wolff_threshold`),
    nw_slot int64 [R] Wolff clusters per step, beta_slot float64 [R]. Exchange state (as in
    :func:`exchange_round`): slot_of int64 [R], exch int64 [4, R-1], direction int8 [R],
    round_trips int64 [R], xkey uint64. n_metropolis: Metropolis sweeps per step (as in
    :func:`advance_replicas`). Updated in place: counters, energy, magnet, flipped, spins and
    the exchange state.
    """
    spins: np.ndarray
    keys: np.ndarray
    wkeys: np.ndarray
    counters: np.ndarray
    energy: np.ndarray
    magnet: np.ndarray
    flipped: np.ndarray
    thr_slot: np.ndarray
    padd_slot: np.ndarray
    nw_slot: np.ndarray
    beta_slot: np.ndarray
    slot_of: np.ndarray
    exch: np.ndarray
    direction: np.ndarray
    round_trips: np.ndarray
    xkey: np.uint64
    n_metropolis: int


class SampleBuffer(NamedTuple):
    """Samples a segment captures, C at most; sample j, row r (replica r): spins uint8
    [C, R, L·L/4] its lattice packed (:func:`ising_dist.codec.pack_spins`), energy, magnet
    float64 [C, R] per spin, slot int64 [C, R] its temperature slot; sweep int64 [C]."""
    spins: np.ndarray
    energy: np.ndarray
    magnet: np.ndarray
    slot: np.ndarray
    sweep: np.ndarray


@njit(inline="always")
def _advance_slot(spins, thr_slot, padd_slot, nw_slot, keys, wkeys, counters, slot_of, energy,
                  magnet, flipped, r, step0, n_steps, n_metropolis, stack, members, mark, out):
    """Replica r for n_steps steps at the parameters of its current slot (work arrays: its
    rows of the segment's)."""
    k = slot_of[r]
    de, dm, nf, c = _advance_one(spins[r], thr_slot[k], padd_slot[k], keys[r], wkeys[r],
                                 counters[r], step0, n_steps, n_metropolis, nw_slot[k],
                                 stack[r], members[r], mark[r], out[r])
    counters[r] = c
    energy[r] += de
    magnet[r] += dm
    flipped[r] += nf


def pt_segment(st, sweep0, events, out):
    """Parallel tempering of all R replicas from sweep0 through the event table ``events``
    (see :func:`_pt_segment`). Threads wake up for every parallel loop between two events:
    when the events are close together (less than PT_PARALLEL_MIN_WORK site updates apart
    on average) one thread runs the loop. Returns the number of samples written to out."""
    threads = numba.get_num_threads()
    gap = (int(events[-1, 0]) - sweep0) / len(events)  # sweeps between events, on average
    if threads == 1 or gap * st.spins.size >= PT_PARALLEL_MIN_WORK:
        return _pt_segment(st, sweep0, events, out)
    numba.set_num_threads(1)
    try:
        return _pt_segment(st, sweep0, events, out)
    finally:
        numba.set_num_threads(threads)


@njit(parallel=True, nogil=True, cache=True)  # nogil: the writer thread streams meanwhile
def _pt_segment(st, sweep0, events, out):
    """Parallel tempering of all R replicas (one process holds every replica, row r = id r)
    from sweep0 through the event table: for each row (s, flags, round) in turn, every
    replica advances to sweep s (:func:`advance_replicas`, at the parameters of its slot),
    then an exchange round ``round`` (:func:`exchange_round`) if flags has EXCHANGE, then a
    sample into out if flags has SAMPLE. Same trajectory as advance_replicas and
    exchange_round called in turn.

    st: :class:`SegmentState`; events int64 [n, 3], n >= 1, sweeps ascending after sweep0;
    out: :class:`SampleBuffer` with room for the samples (the caller counts them). Returns
    the number of samples written.
    """
    R = st.spins.shape[0]
    L = st.spins.shape[2]
    N = L * L
    n_out = 0
    # work arrays, allocated once: exchanges, Wolff clusters (when any), Metropolis rows
    replica_at = np.empty(R, np.int64)
    W = N if st.nw_slot.max() > 0 else 1
    stack = np.empty((R, W), np.int64)
    members = np.empty((R, W), np.int64)
    mark = np.zeros((R, W), np.bool_)
    rows = np.empty((R, L), np.int8)
    # the arrays out of the tuple before the parallel loop: numba 0.68's parfors lose writes
    # to arrays reached through a tuple inside prange
    spins, thr_slot, padd_slot, nw_slot, keys, wkeys, counters, slot_of, energy, magnet, \
        flipped = (st.spins, st.thr_slot, st.padd_slot, st.nw_slot, st.keys, st.wkeys,
                   st.counters, st.slot_of, st.energy, st.magnet, st.flipped)
    n_metropolis = st.n_metropolis
    s = sweep0
    for e in range(events.shape[0]):
        nxt = events[e, 0]
        for r in prange(R):
            _advance_slot(spins, thr_slot, padd_slot, nw_slot, keys, wkeys, counters, slot_of,
                          energy, magnet, flipped, r, s, nxt - s, n_metropolis, stack,
                          members, mark, rows)
        s = nxt
        flags = events[e, 1]
        if flags & EXCHANGE:
            _exchange_round(events[e, 2], st.xkey, st.beta_slot, st.energy, st.slot_of,
                            st.exch, st.direction, st.round_trips, replica_at)
        if flags & SAMPLE:
            for r in range(R):
                _pack(st.spins[r].reshape(N), out.spins[n_out, r])
                out.energy[n_out, r] = st.energy[r] / N
                out.magnet[n_out, r] = st.magnet[r] / N
                out.slot[n_out, r] = st.slot_of[r]
            out.sweep[n_out] = s
            n_out += 1
    return n_out


@njit(cache=True)
def energy_magnetization(spins):
    """Totals (E, M) of one lattice: E = -Σ_<ij> s_i s_j (right and down bonds), M = Σ s."""
    L = spins.shape[0]
    e = 0
    m = 0
    for i in range(L):
        down = spins[i + 1 if i + 1 < L else 0]
        row = spins[i]
        for j in range(L):
            s = np.int64(row[j])
            e -= s * (np.int64(row[j + 1 if j + 1 < L else 0]) + np.int64(down[j]))
            m += s
    return e, m
