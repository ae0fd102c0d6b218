"""Thin, validating wrapper over :mod:`ising_dist.kernels`: owns lattices and RNG streams.

A :class:`Chains` object holds R replicas of an L×L lattice. Each replica's random streams
are derived from ``(seed, replica_id)`` with numpy's SeedSequence, so a replica evolves the
same way whichever MPI rank or thread advances it. Its complete state is
(spins, Wolff stream counter) plus the global sweep index that the caller keeps;
keys are recomputed from (seed, replica_id).

Algorithms, and what one "sweep" means for each:
  metropolis  one checkerboard Metropolis sweep (N single-spin attempts)
  wolff       ``n_wolff`` Wolff clusters (per replica; choose it so that about N spins flip,
              see :func:`clusters_per_sweep`, then keep it fixed: a count that depends on
              the current configuration biases the samples)
  hybrid      ``n_metropolis`` Metropolis sweeps followed by ``n_wolff`` Wolff clusters
"""

import os
from dataclasses import dataclass

import numpy as np

from . import kernels, native
from .config import ALGORITHMS, BACKENDS  # the choice lists, defined once


def select_backend(name=None):
    """Kernel functions of one backend (see :func:`ising_dist.native.select_backend` for the
    namespace): "cuda" is :func:`ising_dist.gpu.select` (Metropolis only; numba.cuda is
    imported only then), the others come from :mod:`ising_dist.native`. "auto" never picks
    cuda. None: $ISING_BACKEND, else "auto". Raises ValueError for an unknown name and
    RuntimeError, naming the fix, for a backend that cannot run here.
    """
    if name is None:
        name = os.environ.get("ISING_BACKEND", "") or "auto"
    if name not in BACKENDS:
        raise ValueError(f"backend={name!r}: choose one of {', '.join(BACKENDS)}")
    if name == "cuda":
        from . import gpu
        return gpu.select()
    return native.select_backend(name)


def check_size(L):
    """Refuse lattice sizes the checkerboard cannot handle, naming the fix."""
    if isinstance(L, bool) or not isinstance(L, (int, np.integer)):
        raise ValueError(f"L={L!r}: the lattice size must be an integer (e.g. L=16)")
    if L < 2 or L % 2:
        raise ValueError(f"L={L}: the lattice size must be even and >= 2 (the checkerboard "
                         f"update needs a bipartite periodic lattice); use L={max(2, L + 1)}")


def check_lattice(spins):
    """Validate one lattice [L, L] or a stack [..., L, L] of int8 ±1 spins."""
    spins = np.asarray(spins)
    if spins.ndim < 2 or spins.shape[-1] != spins.shape[-2]:
        raise ValueError(f"spins of shape {spins.shape}: expected square lattices [..., L, L]")
    check_size(int(spins.shape[-1]))
    if spins.dtype != np.int8:
        raise ValueError(f"spins of dtype {spins.dtype}: expected int8 (convert with "
                         f"spins.astype(np.int8))")
    bad = (spins != 1) & (spins != -1)
    if bad.any():
        value = spins[bad].flat[0]
        raise ValueError(f"spins contain {value!r}: every spin must be +1 or -1")
    if not spins.flags.c_contiguous:
        raise ValueError("spins must be C-contiguous (use np.ascontiguousarray)")
    return spins


def check_beta(beta):
    beta = np.asarray(beta, dtype=np.float64)
    if not np.all(np.isfinite(beta)) or np.any(beta <= 0):
        raise ValueError(f"inverse temperature(s) {beta}: must be finite and > 0 (T > 0)")
    return beta


def clusters_per_sweep(mean_cluster_size, N):
    """Wolff clusters that flip about N spins on average: max(1, round(N / <|C|>))."""
    size = np.maximum(np.asarray(mean_cluster_size, np.float64), 1.0)
    return np.maximum(1, np.rint(N / size)).astype(np.int64)


def stream_keys(seed, replica_ids):
    """uint64 arrays (metropolis_keys, wolff_keys, init_keys) for each replica id."""
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or seed < 0:
        raise ValueError(f"seed={seed!r}: must be a non-negative integer")
    states = np.array([np.random.SeedSequence([int(seed), int(r)]).generate_state(3, np.uint64)
                       for r in replica_ids], dtype=np.uint64).reshape(-1, 3)
    return states[:, 0].copy(), states[:, 1].copy(), states[:, 2].copy()


def initial_lattice(L, init_key, start="hot"):
    """A hot (random ±1) or cold (all +1) int8 [L, L] lattice."""
    if start == "cold":
        return np.ones((L, L), np.int8)
    if start != "hot":
        raise ValueError(f"start={start!r}: must be 'hot' or 'cold'")
    rng = np.random.default_rng(int(init_key))
    return (2 * rng.integers(0, 2, size=(L, L)) - 1).astype(np.int8)


@dataclass
class Chains:
    """R replicas; row k of every array belongs to replica ``replica_ids[k]``.

    spins int8 [R, L, L]; counters uint64 [R] (Wolff stream positions); energy, magnet
    int64 [R] (totals, kept up to date incrementally by the kernels); flipped int64 [R]
    spins flipped by Wolff clusters so far (for measuring the mean cluster size).
    """
    seed: int
    replica_ids: np.ndarray
    spins: np.ndarray
    counters: np.ndarray
    energy: np.ndarray
    magnet: np.ndarray
    backend: str = None  # one of BACKENDS; None: $ISING_BACKEND, else auto

    def __post_init__(self):
        self.kern = select_backend(self.backend)
        self.keys, self.wkeys, _ = stream_keys(self.seed, self.replica_ids)
        self.flipped = np.zeros(len(self.replica_ids), np.int64)

    @classmethod
    def create(cls, L, seed, replica_ids, start="hot", backend=None):
        check_size(L)
        ids = np.asarray(replica_ids, dtype=np.int64)
        _, _, ikeys = stream_keys(seed, ids)
        spins = np.stack([initial_lattice(L, k, start) for k in ikeys]) if len(ids) else \
            np.zeros((0, L, L), np.int8)
        return cls.from_state(seed, ids, spins, np.zeros(len(ids), np.uint64), backend)

    @classmethod
    def from_state(cls, seed, replica_ids, spins, counters, backend=None):
        """Rebuild from checkpointed spins and Wolff counters (energies are recomputed)."""
        spins = np.ascontiguousarray(spins)
        if spins.size:
            check_lattice(spins)
        em = np.array([kernels.energy_magnetization(s) for s in spins], np.int64).reshape(-1, 2)
        return cls(int(seed), np.asarray(replica_ids, np.int64), spins,
                   np.asarray(counters, np.uint64).copy(), em[:, 0].copy(), em[:, 1].copy(),
                   backend)

    @property
    def L(self):
        return self.spins.shape[-1]

    def advance(self, betas, n_sweeps, sweep0, algorithm="metropolis", n_metropolis=1,
                n_wolff=1):
        """Advance every replica by n_sweeps; replica k at inverse temperature betas[k].

        sweep0 is the global index of the first sweep (it selects the Metropolis random
        numbers, so pass the same value whichever rank holds the replica). n_wolff is an
        int or an int array [R] of clusters per sweep (wolff and hybrid only).
        """
        if algorithm not in ALGORITHMS:
            raise ValueError(f"algorithm={algorithm!r}: choose one of {', '.join(ALGORITHMS)}")
        betas = check_beta(betas).reshape(-1)
        if betas.shape[0] != self.spins.shape[0]:
            raise ValueError(f"{betas.shape[0]} temperatures for {self.spins.shape[0]} replicas")
        R = self.spins.shape[0]
        if algorithm == "metropolis":
            n_metropolis, n_wolff = 1, 0
        elif algorithm == "wolff":
            n_metropolis = 0
        n_wolff = np.broadcast_to(np.asarray(n_wolff, np.int64), (R,)).copy()
        if n_metropolis < 0 or np.any(n_wolff < 0) or (n_metropolis == 0 and np.any(n_wolff == 0)):
            raise ValueError(f"n_metropolis={n_metropolis}, n_wolff={n_wolff.tolist()}: "
                             "counts must be >= 0 and each step must do some work")
        thr = kernels.metropolis_thresholds(betas)
        padd = kernels.wolff_threshold(betas)
        self.kern.advance_replicas(self.spins, thr, padd, self.keys, self.wkeys, self.counters,
                                 int(sweep0), int(n_sweeps), int(n_metropolis), n_wolff,
                                 self.energy, self.magnet, self.flipped)

    def mean_cluster_size(self, betas, n_clusters=100):
        """Grow n_clusters Wolff clusters per replica (this advances the chains: use it
        during thermalization) and return the mean cluster size per replica, float [R]."""
        before = self.flipped.copy()
        self.advance(betas, 1, 0, "wolff", n_wolff=n_clusters)
        return (self.flipped - before) / n_clusters

    def per_spin(self):
        """(e, m) float64 [R]: energy and signed magnetization per spin."""
        n = float(self.L * self.L)
        return self.energy / n, self.magnet / n
