"""The parallel-tempering run loop and its state (PTState = the checkpoint layout).

R replicas are split over P ≤ R ranks (contiguous blocks, uneven allowed), or, with
ranks_per_replica k > 1, over P/k groups of k ranks, each rank of a group holding a strip of
L/k rows of the group's lattices (ising_dist.domain; Metropolis only, the Python loop below,
and every rank of a group runs it alike). Temperature labels, not lattices, are exchanged.
Every replica owns its random streams (derived from (seed, replica id)), and exchange
decisions use a stream of their own that every rank evaluates identically, so the output
does not depend on P.

The run loop (:meth:`ParallelTempering.run`) advances all local replicas to the next stop
s, then at s runs the operations whose trigger (ising_dist.schedule) fires, in this order:
  1. calibrate   Wolff only, On(thermalize): clusters per sweep for each temperature
                 (it grows clusters, so it comes before the energies are shared)
  2. sync        at every stop: all ranks share every replica's energy and any stop
                 request (SIGTERM/INT)
  3. exchange    Periodic(exchange_every): neighbour swaps, even/odd pairs alternating
                 (round s // exchange_every)
  4. adapt       adaptive ladder only, Doubling(adapt_every·exchange_every) &
                 Before(3/4·thermalize + 1): after windows of adapt_every, 2·adapt_every,
                 4·adapt_every, ... exchange rounds, during the first 3/4 of thermalization
  5. production  On(thermalize): freeze the ladder, reset exchange statistics
  6. sample      Periodic(sample_every, phase=thermalize) & After(thermalize) (every rank
                 calls the writer; the writer decides who writes: see ising_dist.writers)
  7. checkpoint  Periodic(checkpoint_every) | On(total), and on a stop request
  8. progress    Periodic(max_segment) | On(total), and on a stop request (rank 0 draws
                 it, rate-limited; every rank stops there, so stop requests stay prompt)
A checkpoint at s holds the state after all operations at s, so a resumed run continues
exactly.

The loop stops at every sweep at which an operation fires that only Python runs. Exchanges
(3) and samples (6) between those stops run in compiled code when they can
(:meth:`ParallelTempering._segment`): one rank holding every replica (kernels.pt_segment,
numba or C), or several ranks with the native kernels and libising_pt_mpi.so
(native.pt_segment_mpi). They get an event table built from the same triggers
(:meth:`Cadence.events`), and the loop then also stops when the sample buffer is full.
Otherwise exchanges and samples stop the loop too.
"""

import sys
from dataclasses import dataclass, field, fields
from typing import Callable, NamedTuple

import numpy as np

from . import domain, kernels, native
from .codec import pack
from .engine import Chains, clusters_per_sweep
from .kernels import ACCEPTED, ATTEMPTED, WINDOW_ACCEPTED, WINDOW_ATTEMPTED
from .schedule import After, Before, Doubling, On, Periodic, Trigger, event_table


def _field(dtype, shape, doc, local=False):
    """A PTState field: its dtype, its shape as a function of (R, L), what it holds, and
    whether its rows belong to replica ids held by one rank (``local``) or the whole array is
    identical on every rank."""
    return field(metadata=dict(dtype=np.dtype(dtype), shape=shape, doc=doc, local=local))


@dataclass(eq=False)
class PTState:
    """Everything a tempering run needs to continue bit for bit, and the layout of a
    checkpoint (/checkpoint/slot0 and slot1 of the HDF5 file, one dataset per field, in this
    order; see ising_dist.store).

    Rows of the ``local`` fields (spins, counters) are replica ids; in the run loop each rank
    holds the rows of its own replicas (``Chains.spins``, ``Chains.counters``), in a
    checkpoint they are all R. Every other field is global and identical on every rank.
    The four exchange counters are rows of one int64 [4, R-1] block, :attr:`exchange`
    (row order kernels.ATTEMPTED, ACCEPTED, WINDOW_ATTEMPTED, WINDOW_ACCEPTED), which the
    compiled loops update in place.
    """
    spins: np.ndarray = _field(np.int8, lambda R, L: (R, L, L),
                               "lattice of replica id k, ±1", local=True)
    counters: np.ndarray = _field(np.uint64, lambda R, L: (R,),
                                  "Wolff stream position of replica k", local=True)
    slot_of: np.ndarray = _field(np.int64, lambda R, L: (R,), "temperature slot of replica k")
    temperatures: np.ndarray = _field(np.float64, lambda R, L: (R,),
                                      "ladder, ascending (adaptive ladders move)")
    n_wolff: np.ndarray = _field(np.int64, lambda R, L: (R,),
                                 "Wolff clusters per sweep, per slot")
    direction: np.ndarray = _field(np.int8, lambda R, L: (R,),
                                   "round-trip state of replica k: +1 last at the lowest T, "
                                   "-1 at the highest, 0 neither yet")
    round_trips: np.ndarray = _field(np.int64, lambda R, L: (R,),
                                     "completed round trips of replica k")
    attempted: np.ndarray = _field(np.int64, lambda R, L: (R - 1,),
                                   "exchanges attempted between slots k, k+1 (production)")
    accepted: np.ndarray = _field(np.int64, lambda R, L: (R - 1,),
                                  "exchanges accepted between slots k, k+1 (production)")
    window_attempted: np.ndarray = _field(np.int64, lambda R, L: (R - 1,),
                                          "attempted since the last ladder adaptation")
    window_accepted: np.ndarray = _field(np.int64, lambda R, L: (R - 1,),
                                         "accepted since the last ladder adaptation")
    position: np.ndarray = _field(np.int64, lambda R, L: (2,),
                                  "[sweep, samples written]; the writer fills in the second")

    def __post_init__(self):
        self.exchange = np.array([self.attempted, self.accepted, self.window_attempted,
                                  self.window_accepted], np.int64)
        rows = dict(zip((ATTEMPTED, ACCEPTED, WINDOW_ATTEMPTED, WINDOW_ACCEPTED),
                        self.exchange))
        # views of the block: whoever updates one updates the other
        self.attempted, self.accepted = rows[ATTEMPTED], rows[ACCEPTED]
        self.window_attempted, self.window_accepted = rows[WINDOW_ATTEMPTED], rows[WINDOW_ACCEPTED]
        self.position = np.array(self.position, np.int64).reshape(2)

    @classmethod
    def layout(cls, R, L):
        """{field name: (numpy dtype, shape)} of a complete state of R replicas of L×L, in
        checkpoint order."""
        return {f.name: (f.metadata["dtype"], f.metadata["shape"](R, L)) for f in fields(cls)}

    @classmethod
    def names(cls, local=None):
        """Field names in checkpoint order; local=True/False: only the per-replica-id /
        only the global ones."""
        return tuple(f.name for f in fields(cls)
                     if local is None or f.metadata["local"] == local)

    @classmethod
    def from_arrays(cls, arrays):
        """A state from {field name: array} (e.g. a checkpoint read back), with copies in
        each field's dtype; KeyError names a missing field."""
        return cls(**{f.name: np.array(arrays[f.name], f.metadata["dtype"])
                      for f in fields(cls)})

    def arrays(self, local=None):
        """{field name: array} in checkpoint order (the arrays themselves, not copies);
        local as in :meth:`names`."""
        return {name: getattr(self, name) for name in self.names(local)}

    @property
    def sweep(self):
        """Sweeps done (position[0])."""
        return int(self.position[0])

    @sweep.setter
    def sweep(self, value):
        self.position[0] = value


def exchange_key(seed):
    """uint64 key of the exchange decisions' random stream (the same on every rank)."""
    return np.random.SeedSequence(entropy=int(seed), spawn_key=(7,)).generate_state(1, np.uint64)[0]


@dataclass(frozen=True)
class Cadence:
    """When the operations that compiled loops can run happen: exchange rounds every
    exchange_every sweeps, production samples every sample_every sweeps after thermalize."""
    exchange_every: int
    sample_every: int
    thermalize: int

    @property
    def exchange(self):
        return Periodic(self.exchange_every)

    @property
    def sample(self):
        return Periodic(self.sample_every, phase=self.thermalize) & After(self.thermalize)

    def round(self, s):
        """Index of the exchange round at sweep s (it selects the pairs, even or odd, and
        the random numbers of the round)."""
        return s // self.exchange_every

    def events(self, sweep0, sweep1):
        """Event table of the compiled loops from sweep0 to sweep1 > sweep0: int64 [n, 3]
        rows (sweep, flags, exchange round) for the sweeps sweep0 < s < sweep1 with an
        exchange (kernels.EXCHANGE) or a sample (kernels.SAMPLE), then (sweep1, 0, 0): the
        events at sweep1 are the caller's."""
        sweeps, flags = event_table([(kernels.EXCHANGE, self.exchange),
                                     (kernels.SAMPLE, self.sample)], sweep0, sweep1)
        table = np.zeros((len(sweeps) + 1, 3), np.int64)
        table[:-1, 0] = sweeps
        table[:-1, 1] = flags
        table[:-1, 2] = self.round(sweeps)
        table[-1, 0] = sweep1
        return table


class Operation(NamedTuple):
    """An operation subscribed to the run loop: action(s) runs at every stop s where
    trigger(s) fires, and, with on_stop, at the stop a stop request ends the run with.
    flag: kernels.EXCHANGE or SAMPLE when the compiled loops can run it between stops
    (then it does not make the loop stop), else 0."""
    name: str
    trigger: Trigger
    action: Callable
    flag: int = 0
    on_stop: bool = False


class ParallelTempering:
    """The run loop. Its state: :attr:`state` (PTState: global fields identical on every
    rank, per-replica fields for this rank's replicas), the chains of this rank's replicas
    (:attr:`chains`: lattices, random streams, energies), and every replica's energy at the
    last sync (:attr:`energy`, int64 [R] by replica id).

    cfg: a validated PTConfig; comm: an ising_dist.mpi communicator; ckpt: a checkpoint to
    resume ({PTState field: array}, all R replicas) or None; writer: every rank's writer
    (ising_dist.writers).
    """

    def __init__(self, cfg, comm, ckpt=None, writer=None):
        self.cfg, self.comm, self.writer = cfg, comm, writer
        R, L = cfg.replicas, cfg.L
        self.R, self.L, self.N = R, L, L * L
        self.total = cfg.thermalize + cfg.sweeps
        self.xkey = exchange_key(cfg.seed)
        # replicas in contiguous blocks, one per group of k ranks (k = 1: one per rank)
        self.k = k = cfg.ranks_per_replica
        self._blocks = np.array_split(np.arange(R), comm.size // k)
        self._sync_row = np.zeros(max(map(len, self._blocks)) + 1, np.int64)
        ids = self._blocks[comm.rank // k]
        self.chains = self._make_chains(ids, ckpt)
        if ckpt is None:
            shared = dict(slot_of=np.arange(R), temperatures=cfg.ladder_temperatures(),
                          n_wolff=np.full(R, cfg.n_wolff), direction=np.zeros(R),
                          round_trips=np.zeros(R), position=np.zeros(2))
            shared.update((name, np.zeros(R - 1)) for name in (
                "attempted", "accepted", "window_attempted", "window_accepted"))
        else:
            shared = {name: ckpt[name] for name in PTState.names(local=False)}
        # the state's per-replica fields are the chains' arrays, which the kernels update
        layout = PTState.layout(R, L)
        self.state = PTState(spins=self.chains.spins, counters=self.chains.counters, **{
            name: np.array(shared[name], layout[name][0]) for name in PTState.names(local=False)})
        self._set_ladder(self.state.temperatures)
        self.energy = np.zeros(R, np.int64)
        # samples go to the writer packed; strips go unpacked (its gather assembles rows)
        self._encode = pack if k == 1 else np.ascontiguousarray
        # a segment is a few tens of ms of work: stop requests and progress stay prompt
        self.max_segment = max(1, 2**26 // (R * self.N))
        self.cadence = Cadence(cfg.exchange_every, cfg.sample_every, cfg.thermalize)
        self.before_sync, self.operations = self._subscribe()
        # The sweeps between stops, with their exchanges and samples, run in compiled code
        # when one rank holds every replica (kernels.pt_segment, either backend) or, across
        # ranks, with the native kernels and libising_pt_mpi.so (native.pt_segment_mpi).
        # A backend without a compiled loop (cuda: kern.pt_segment is None) advances in
        # batches between this loop's own exchanges and samples.
        self.compiled = self.chains.kern.pt_segment is not None and (comm.size == 1 or (
            self.chains.kern.name == "native" and native.mpi_segment_available(comm)))
        if self.compiled:
            n = len(ids)
            # capacity depends only on (R, L): the same on every rank
            cap = max(1, min(1024, 2**23 // (R * self.N)))  # ≤ 8 MiB of samples (unpacked)
            # two sample buffers: one fills while the writer thread takes the other
            self.bufs = [kernels.SampleBuffer(
                spins=np.empty((cap, n, self.N // 4), np.uint8), energy=np.empty((cap, n)),
                magnet=np.empty((cap, n)), slot=np.empty((cap, n), np.int64),
                sweep=np.empty(cap, np.int64)) for _ in range(2)]
            self._buf_jobs = [None, None]  # the writer's job holding each buffer
            self._counts = np.array([len(b) for b in self._blocks], np.int32)
            self._displs = np.array([b[0] for b in self._blocks], np.int32)
        if ckpt is None and cfg.algorithm == "wolff":
            self._calibrate_wolff()
        self.stop_requested = False
        self.stopped = False
        self.progress = None

    def _make_chains(self, ids, ckpt):
        """This rank's chains of replica ids ``ids``, new or from the checkpoint ``ckpt``:
        whole lattices (engine.Chains) or, with k > 1 ranks per replica, this rank's strip
        of them (domain.StripChains, numba kernels, no compiled loop)."""
        cfg = self.cfg
        if self.k > 1:
            group = domain.groups(self.comm, self.k)[0]
            if ckpt is None:
                return domain.StripChains.create(cfg.L, cfg.seed, ids, group, start=cfg.start)
            return domain.StripChains(cfg.seed, ids, ckpt["spins"][ids], group)
        if ckpt is None:
            return Chains.create(cfg.L, cfg.seed, ids, start=cfg.start, backend=cfg.backend)
        return Chains.from_state(cfg.seed, ids, ckpt["spins"][ids], ckpt["counters"][ids],
                                 backend=cfg.backend)

    def _subscribe(self):
        """The operations (before the sync, after it), in the order they run at a stop."""
        cfg, cad = self.cfg, self.cadence
        before = []
        if cfg.algorithm == "wolff":
            before.append(Operation("calibrate", On(cfg.thermalize),
                                    lambda s: self._calibrate_wolff()))
        after = [Operation("exchange", cad.exchange,
                           lambda s: self._exchange(cad.round(s)), kernels.EXCHANGE)]
        if cfg.ladder == "adaptive":
            adapt_until = (3 * cfg.thermalize) // 4
            after.append(Operation("adapt", Doubling(cfg.adapt_every * cfg.exchange_every)
                                   & Before(adapt_until + 1), lambda s: self._adapt()))
        after += [
            Operation("production", On(cfg.thermalize), lambda s: self._start_production()),
            Operation("sample", cad.sample, lambda s: self._sample(), kernels.SAMPLE),
            Operation("checkpoint", Periodic(cfg.checkpoint_every) | On(self.total),
                      lambda s: self._checkpoint(), on_stop=True),
            Operation("progress", Periodic(self.max_segment) | On(self.total),
                      lambda s: self._update_progress(), on_stop=True)]
        return before, after

    # -- the loop ------------------------------------------------------------------------
    @property
    def sweep(self):
        """Sweeps done."""
        return self.state.sweep

    def run(self):
        """Run to the end or to a stop request (then with a checkpoint); see the module
        docstring for the order of the operations at each stop."""
        self._start_progress()
        while self.sweep < self.total and not self.stopped:
            s = self._next_stop()
            if self.compiled:
                self._segment(s)
            else:
                slots = self.state.slot_of[self.chains.replica_ids]
                self.chains.advance(self._beta[slots], s - self.sweep, self.sweep,
                                    self.cfg.algorithm, self.cfg.n_metropolis,
                                    self.state.n_wolff[slots])
            self.state.sweep = s
            self._run_operations(self.before_sync, s, False)
            stop = self._sync()
            self._run_operations(self.operations, s, stop)
            self.stopped = stop
        if self.progress is not None:
            self.progress.close()

    @staticmethod
    def _run_operations(operations, s, stop):
        for op in operations:
            if op.trigger(s) or (stop and op.on_stop):
                op.action(s)

    def _next_stop(self):
        """The next sweep with operations that this loop runs itself: the first firing of
        any trigger of an operation that compiled code does not run, the end of the run,
        and, with compiled segments, the sweep before which the sample buffer is full."""
        s = self.sweep
        stop = min([self.total] + [op.trigger.next_after(s)
                                   for op in self.before_sync + self.operations
                                   if not (op.flag and self.compiled)])
        if self.compiled:  # at most cap samples strictly before the stop
            cap = self.bufs[0].sweep.shape[0]
            samples = self.cadence.sample.events(s, stop - 1)
            if len(samples) > cap:
                stop = int(samples[cap])
        return stop

    def _segment(self, s):
        """Advance to sweep s in compiled code, with the exchanges and samples of the sweeps
        in between (event table: :meth:`Cadence.events`); hand the samples to the writer
        (its thread takes them while the next segment fills the other buffer)."""
        cfg, ch, st, out = self.cfg, self.chains, self.state, self.bufs[0]
        if self._buf_jobs[0] is not None:
            self._buf_jobs[0].result()
        algorithm = cfg.algorithm
        seg = kernels.SegmentState(
            spins=ch.spins, keys=ch.keys, wkeys=ch.wkeys, counters=ch.counters,
            energy=ch.energy, magnet=ch.magnet, flipped=ch.flipped, thr_slot=self._thr,
            padd_slot=self._padd,
            nw_slot=np.zeros(self.R, np.int64) if algorithm == "metropolis" else st.n_wolff,
            beta_slot=self._beta, slot_of=st.slot_of, exch=st.exchange,
            direction=st.direction, round_trips=st.round_trips, xkey=self.xkey,
            n_metropolis=0 if algorithm == "wolff" else (
                1 if algorithm == "metropolis" else cfg.n_metropolis))
        events = self.cadence.events(self.sweep, s)
        if self.comm.size == 1:
            n = ch.kern.pt_segment(seg, self.sweep, events, out)
        else:
            n = native.pt_segment_mpi(self.comm, self._counts, self._displs,
                                      int(ch.replica_ids[0]), seg, self.energy, self.sweep,
                                      events, out)
        if n:
            self._buf_jobs[0] = self.writer.write(
                out.sweep[:n], out.spins[:n], out.energy[:n], out.magnet[:n],
                ch.replica_ids, slot=out.slot[:n])
            self.bufs.reverse()
            self._buf_jobs.reverse()

    def _sync(self):
        """Share energies of all replicas and whether any rank was asked to stop."""
        if self.comm.size == 1:
            self.energy[:] = self.chains.energy
            return self.stop_requested
        # groups of k ranks hold contiguous blocks of replica ids (np.array_split): one int64
        # row each rank, [energies of its group's block, padding, stop flag]
        row = self._sync_row
        n = len(self.chains.replica_ids)
        row[:n] = self.chains.energy
        row[-1] = self.stop_requested
        rows = self.comm.allgather_array(row)
        self.energy[:] = np.concatenate([rows[g * self.k, :len(ids)]  # group leaders' rows
                                         for g, ids in enumerate(self._blocks)])
        return bool(rows[:, -1].any())

    # -- operations -----------------------------------------------------------------------
    def _exchange(self, round_index):
        st = self.state
        kernels.exchange_round(round_index, self.xkey, self._beta, self.energy, st.slot_of,
                               st.exchange, st.direction, st.round_trips)

    def _adapt(self):
        """Move the inner temperatures so neighbour acceptance becomes equal (feedback on
        the acceptance measured since the last adaptation); the end points stay fixed."""
        st = self.state
        if st.window_attempted.sum() == 0:
            return
        acc = np.clip((st.window_accepted + 0.5) / (st.window_attempted + 1.0), 0.01, 0.99)
        beta = 1.0 / st.temperatures
        gaps = beta[:-1] - beta[1:]
        # for near-Gaussian energy distributions A ≈ exp(-c·Δβ²): equal acceptance after the
        # move needs Δβ ∝ Δβ / sqrt(-ln A)
        gaps = gaps / np.sqrt(-np.log(acc))
        gaps *= (beta[0] - beta[-1]) / gaps.sum()
        beta = beta[0] - np.concatenate([[0.0], np.cumsum(gaps)])
        beta[-1] = 1.0 / st.temperatures[-1]
        st.temperatures[:] = 1.0 / beta
        self._set_ladder(st.temperatures)
        st.window_attempted[:] = 0
        st.window_accepted[:] = 0

    def _set_ladder(self, temps):
        """The kernels' per-slot parameters of the ladder temps (computed here, before the
        run's clock starts, also on ranks whose first numba call this is)."""
        self._beta = 1.0 / temps
        self._thr = kernels.metropolis_thresholds(self._beta)
        self._padd = kernels.wolff_threshold(self._beta)

    def _calibrate_wolff(self):
        st = self.state
        slots = st.slot_of[self.chains.replica_ids]
        size = self.chains.mean_cluster_size(self._beta[slots], n_clusters=50)
        mean = np.zeros(self.R)
        for ids, sz in self.comm.allgather((self.chains.replica_ids, size)):
            mean[st.slot_of[ids]] = sz
        st.n_wolff[:] = clusters_per_sweep(mean, self.N)

    def _start_production(self):
        self.state.attempted[:] = 0
        self.state.accepted[:] = 0
        if self.cfg.ladder == "adaptive":
            self.writer.set_temperatures(self.state.temperatures)

    def _sample(self):
        ids = self.chains.replica_ids
        self.writer.write([self.sweep], self._encode(self.chains.spins[None]),
                          self.energy[ids][None] / self.N, self.chains.magnet[None] / self.N,
                          ids, slot=self.state.slot_of[ids])

    def _checkpoint(self):
        self.writer.checkpoint(self.state, self.chains.replica_ids)

    # -- progress -------------------------------------------------------------------------
    def _start_progress(self):
        if self.comm.rank != 0 or not self.cfg.progress:
            return
        from tqdm import tqdm
        self.progress = tqdm(total=self.total, initial=self.sweep, unit="sweep",
                             desc=f"PT L={self.L} R={self.R} P={self.comm.size}",
                             mininterval=0.5 if sys.stderr.isatty() else 10.0,
                             dynamic_ncols=True, file=sys.stderr)
        self._shown = self.sweep

    def _update_progress(self):
        if self.progress is None:
            return
        acc = self.state.accepted / np.maximum(self.state.attempted, 1)
        phase = "thermalize" if self.sweep <= self.cfg.thermalize else "sample"
        self.progress.set_postfix_str(f"{phase} exch.acc {acc.min():.2f}-{acc.max():.2f}",
                                      refresh=False)
        self.progress.update(self.sweep - self._shown)
        self._shown = self.sweep
