"""Domain decomposition: k MPI ranks share each replica's lattice, one horizontal strip each.

With ``ranks_per_replica`` k > 1 the P ranks of a run form P/k *groups* of k consecutive
ranks (:func:`groups`); a group holds a block of replicas, as one rank does when k = 1, and
group rank g holds rows g·L/k … (g+1)·L/k - 1 of each of them (:class:`StripChains`).
Every rank of a group runs the same tempering loop (ising_dist.tempering); the group's
leader (group rank 0) alone takes part in writing (ising_dist.writers.StripGatherWriter).

Metropolis only. One checkerboard sweep is: colour 0 over the strip, halo exchange, colour 1
over the strip, halo exchange (each rank sends its first row up and its last row down, and
receives the rows above and below its strip). The random number of site (i, j) in sweep t is
rand64(key, t·L² + i·L + j) (ising_dist.kernels) whichever rank updates it, so the lattices
equal those of the one-rank sweep bit for bit.
"""

import functools
import time
from types import SimpleNamespace

import numpy as np
from numba import njit, prange

from . import kernels
from .engine import check_beta, check_size, initial_lattice, stream_keys
from .kernels import _update_row


@functools.lru_cache(maxsize=None)
def groups(comm, k):
    """(group, leaders) communicators of the world communicator ``comm`` (size a multiple of
    k): ``group`` holds the k ranks p // k of this rank p, ranked p % k; ``leaders`` holds
    the ranks with the same p % k (for the group leaders, p % k = 0: one rank per group,
    ranked by group). Collective on the first call; the same objects afterwards."""
    return comm.split(comm.rank // k, comm.rank), comm.split(comm.rank % k, comm.rank)


# parallel=True (replicas over threads, as kernels.advance_replicas): numba's parfor
# pipeline also compiles the row loop faster, 9.1 against 11.7 ms per L=2048 sweep on one
# thread as a plain njit function
@njit(parallel=True, cache=True)
def strip_pass(spins, thr, keys, sweep, colour, r0, h, de, dm):
    """One colour of the checkerboard Metropolis sweep ``sweep`` over rows r0 … r0+h-1 of
    every lattice (kernels._update_row: the same random numbers as a whole-lattice sweep).

    spins int8 [n, L, L], of which rows r0-1 … r0+h (mod L) are current: the strip and its
    two halo rows (other rows are never read); thr uint64 [n, 3]
    (kernels.metropolis_thresholds); keys uint64 [n] Metropolis stream keys; de, dm int64
    [n]: the changes of the energy and magnetization totals are added.
    """
    L = spins.shape[2]
    base = np.uint64(sweep) * np.uint64(L * L)
    for r in prange(spins.shape[0]):
        lat = spins[r]
        out = np.empty(L, np.int8)
        e = 0
        m = 0
        for i in range(r0, r0 + h):
            a, b = _update_row(lat, i, colour, thr[r, 0], thr[r, 1], thr[r, 2], keys[r], base,
                               out)
            e += a
            m += b
        de[r] += e
        dm[r] += m


class StripChains:
    """This rank's strip of n replicas' lattices, with the interface of
    :class:`ising_dist.engine.Chains` that the tempering loop uses (Metropolis only).

    group: the replica group's communicator (ising_dist.mpi; its rank g holds rows
    g·h … (g+1)·h - 1, h = L / group.size). Attributes: replica_ids int64 [n]; spins int8
    [n, h, L], this rank's rows (a view: the kernels update it in place); energy, magnet
    int64 [n] totals of the whole lattices (the same on every rank of the group after each
    :meth:`advance`); counters uint64 [n] (zeros: no Wolff stream); keys uint64 [n];
    halo_seconds: time spent in halo exchanges so far.

    Each lattice lives in an L×L buffer of which only the strip and its halo rows are
    written: zero-initialised memory is mapped on first touch, so a rank's resident memory
    is about (h + 2)·L bytes per replica.
    """

    def __init__(self, seed, replica_ids, lattices, group):
        """From whole lattices int8 [n, L, L], e.g. checkpointed ones (every rank of the
        group passes the same); ValueError if L is not k strips of >= 2 rows."""
        lattices = np.asarray(lattices, np.int8)
        self.L = L = lattices.shape[-1]
        check_size(L)
        self.group = group
        k, g = group.size, group.rank
        if L % k or L // k < 2:
            raise ValueError(f"L={L} over {k} ranks: L/k must be a whole number >= 2")
        self.r0, self.h = g * (L // k), L // k
        self.seed = int(seed)
        self.replica_ids = np.asarray(replica_ids, np.int64)
        n = len(self.replica_ids)
        self.keys, _, _ = stream_keys(self.seed, self.replica_ids)
        self._buf = np.zeros((n, L, L), np.int8)
        rows = np.arange(self.r0 - 1, self.r0 + self.h + 1) % L  # strip and halos
        self._buf[:, rows] = lattices[:, rows]
        self.spins = self._buf[:, self.r0:self.r0 + self.h]
        em = np.array([kernels.energy_magnetization(s) for s in lattices], np.int64)
        em = em.reshape(-1, 2)
        self.energy, self.magnet = em[:, 0].copy(), em[:, 1].copy()
        self.counters = np.zeros(n, np.uint64)
        self.flipped = np.zeros(n, np.int64)
        self.kern = SimpleNamespace(name="numba (strips)", pt_segment=None)  # no compiled loop
        self._send = np.empty((n, L), np.int8)
        self._recv = np.empty((n, L), np.int8)
        self.halo_seconds = 0.0

    @classmethod
    def create(cls, L, seed, replica_ids, group, start="hot"):
        """Strips of the initial lattices of ``replica_ids`` (the same as
        engine.Chains.create's)."""
        check_size(L)
        _, _, ikeys = stream_keys(seed, replica_ids)
        lattices = [initial_lattice(L, key, start) for key in ikeys]
        return cls(seed, replica_ids, np.array(lattices, np.int8).reshape(-1, L, L), group)

    def advance(self, betas, n_sweeps, sweep0, algorithm="metropolis", n_metropolis=1,
                n_wolff=1):
        """Advance every replica by n_sweeps Metropolis sweeps, replica k at inverse
        temperature betas[k] (float64 [n]); sweep0: global index of the first sweep.
        Collective over the group. ValueError for any other algorithm (n_metropolis and
        n_wolff are accepted for engine.Chains' signature and ignored)."""
        if algorithm != "metropolis":
            raise ValueError(f"algorithm={algorithm!r} on lattice strips: cluster moves "
                             "across domains are a later step; use metropolis")
        betas = check_beta(betas).reshape(-1)
        if betas.shape[0] != len(self.replica_ids):
            raise ValueError(f"{betas.shape[0]} temperatures for {len(self.replica_ids)} "
                             "replicas")
        thr = kernels.metropolis_thresholds(betas)
        n = len(self.replica_ids)
        delta = np.zeros(2 * n, np.int64)
        de, dm = delta[:n], delta[n:]
        for t in range(int(n_sweeps)):
            for colour in (0, 1):
                strip_pass(self._buf, thr, self.keys, int(sweep0) + t, colour, self.r0,
                           self.h, de, dm)
                self.exchange_halos()
        total = self.group.allreduce_sum(delta)
        self.energy += total[:n]
        self.magnet += total[n:]

    def exchange_halos(self):
        """Send this strip's first row to the rank above and its last row to the rank below
        (periodically), and receive their boundary rows into the halo rows. Collective over
        the group."""
        t0 = time.perf_counter()
        k, g, L, b = self.group.size, self.group.rank, self.L, self._buf
        up, down = (g - 1) % k, (g + 1) % k
        first, last = self.r0, self.r0 + self.h - 1
        for send_row, dest, halo, source in ((first, up, (last + 1) % L, down),
                                             (last, down, (first - 1) % L, up)):
            self._send[:] = b[:, send_row]
            self.group.sendrecv_array(self._send, dest, self._recv, source)
            b[:, halo] = self._recv
        self.halo_seconds += time.perf_counter() - t0

    def per_spin(self):
        """(e, m) float64 [n]: energy and signed magnetization per spin."""
        n = float(self.L * self.L)
        return self.energy / n, self.magnet / n
