"""Parallel tempering of the 2D Ising model over MPI ranks, streaming into one HDF5 file.

    mpiexec -n P python -m ising_dist.pt --config configs/pt/default.yaml [--L 64 ...]

R replicas are split over P ≤ R ranks (contiguous blocks, uneven allowed). Temperature
labels, not lattices, are exchanged. Every replica owns its random streams (derived from
(seed, replica id)), and exchange decisions use a stream of their own that every rank
evaluates identically, so the output does not depend on P.

The run loop (:meth:`ParallelTempering.run`) advances all local replicas to the next event
sweep s, then at s, in this order:
  1. calibrate   Wolff only: clusters per sweep for each temperature, at s = thermalize
                 (it grows clusters, so it comes before the energies are shared)
  2. sync        all ranks share every replica's energy and any stop request (SIGTERM/INT)
  3. exchange    if s % exchange_every == 0: neighbour swaps, even/odd pairs alternating
  4. adapt       adaptive ladder, thermalization only (first 3/4), after windows of
                 adapt_every, 2·adapt_every, 4·adapt_every, ... exchange rounds
  5. production  at s = thermalize: freeze the ladder, reset exchange statistics
  6. sample      production only, every sample_every sweeps (every rank calls the writer;
                 the writer decides who writes: see ising_dist.store)
  7. checkpoint  every checkpoint_every sweeps, at the end, and on a stop request
  8. progress    rank 0, rate-limited
A checkpoint at s holds the state after all events at s, so a resumed run continues exactly.

Exchanges (3) and samples (6) between the sweeps this loop stops at run in compiled code when
they can (:meth:`ParallelTempering._segment`): one rank holding every replica
(kernels.pt_segment, numba or C), or several ranks with the native kernels and
libising_pt_mpi.so (native.pt_segment_mpi). The loop then stops only at checkpoints, the end
of thermalization, adaptive-ladder rounds, a full sample buffer, and every few tens of
milliseconds of work (stop requests, progress). Otherwise it stops at every event.
"""

import argparse
import os
import signal
import sys
import time
import warnings

import h5py
import numpy as np

from . import config as cfgmod
from . import kernels, native, observables
from .config import ConfigError, PTConfig
from .engine import Chains, clusters_per_sweep
from .mpi import world
from .runlock import RunLock, RunLockedError, RunLostError
from .store import (CollectiveWriter, GatherWriter, RunWriter, StoreError, open_read,
                    stored_config)

RESUME_MAY_CHANGE = ("out", "progress", "sweeps", "checkpoint_every", "backend", "writer")


def exchange_key(seed):
    return np.random.SeedSequence(entropy=int(seed), spawn_key=(7,)).generate_state(1, np.uint64)[0]


def is_adapt_round(n, a):
    """Adaptations happen at exchange rounds a·(2^k − 1), k ≥ 1: windows that double, so
    later adjustments rest on more attempts and the ladder settles instead of jittering."""
    q, r = divmod(n, a)
    return n > 0 and r == 0 and (q + 1) & q == 0


def next_multiple(s, period, offset=0):
    """Smallest x > s with (x - offset) % period == 0."""
    return offset + ((s - offset) // period + 1) * period


class ParallelTempering:
    """State shared by all ranks (identical everywhere) plus this rank's replicas."""

    def __init__(self, cfg, comm, ckpt=None, writer=None):
        self.cfg, self.comm, self.writer = cfg, comm, writer
        R, L = cfg.replicas, cfg.L
        self.R, self.L, self.N = R, L, L * L
        self.total = cfg.thermalize + cfg.sweeps
        self.adapt_until = (3 * cfg.thermalize) // 4 if cfg.ladder == "adaptive" else 0
        self.xkey = exchange_key(cfg.seed)
        self._blocks = np.array_split(np.arange(R), comm.size)
        self._sync_row = np.zeros(max(map(len, self._blocks)) + 1, np.int64)
        ids = self._blocks[comm.rank]
        if ckpt is None:
            self.chains = Chains.create(L, cfg.seed, ids, start=cfg.start, backend=cfg.backend)
            self.temps = cfg.ladder_temperatures()
            self.slot_of = np.arange(R, dtype=np.int64)
            self.direction = np.zeros(R, np.int8)
            self.round_trips = np.zeros(R, np.int64)
            self.exch = np.zeros((4, R - 1), np.int64)
            self.n_wolff = np.full(R, cfg.n_wolff, np.int64)
            self.sweep = 0
            if cfg.algorithm == "wolff":
                self._calibrate_wolff()
        else:
            self.chains = Chains.from_state(cfg.seed, ids, ckpt["spins"][ids],
                                            ckpt["counters"][ids], backend=cfg.backend)
            self.temps = ckpt["temperatures"].copy()
            self.slot_of = ckpt["slot_of"].copy()
            self.direction = ckpt["direction"].copy()
            self.round_trips = ckpt["round_trips"].copy()
            self.exch = np.array([ckpt[name][:R - 1] for name in (
                "attempted", "accepted", "window_attempted", "window_accepted")], np.int64)
            self.n_wolff = ckpt["n_wolff"].copy()
            self.sweep = int(ckpt["position"][0])
        self._set_ladder(self.temps)
        # views of the exchange statistics (rows of exch, updated in place by the kernels)
        self.attempted, self.accepted, self.win_att, self.win_acc = self.exch
        self.energy = np.zeros(R, np.int64)
        # The sweeps between Python-level events, with their exchanges and samples, run in
        # compiled code when one rank holds every replica (kernels.pt_segment, either
        # backend) or, across ranks, with the native kernels and libising_pt_mpi.so
        # (native.pt_segment_mpi); otherwise this loop handles every exchange and sample.
        self.compiled = comm.size == 1 or (
            self.chains.kern.name == "native" and native.mpi_segment_available(comm.mpi))
        if self.compiled:
            n = len(ids)
            # boundaries depend only on (R, L): the same on every rank
            cap = max(1, min(1024, 2**23 // (R * self.N)))  # ≤ 8 MiB of samples (unpacked)
            # two sample buffers: one fills while the writer thread takes the other
            self.bufs = [dict(spins=np.empty((cap, n, self.N // 4), np.uint8),  # packed
                              energy=np.empty((cap, n)), magnet=np.empty((cap, n)),
                              slot=np.empty((cap, n), np.int64), sweep=np.empty(cap, np.int64))
                         for _ in range(2)]
            self._buf_jobs = [None, None]  # the writer's job holding each buffer
            # a segment is a few tens of ms of work: stop requests and progress stay prompt
            self.max_segment = max(1, 2**26 // (R * self.N))
            self._counts = np.array([len(b) for b in self._blocks], np.int32)
            self._displs = np.array([b[0] for b in self._blocks], np.int32)
        self.stop_requested = False
        self.stopped = False
        self.progress = None

    # -- the loop ------------------------------------------------------------------------
    def run(self):
        cfg = self.cfg
        self._start_progress()
        while self.sweep < self.total and not self.stopped:
            s = self._next_event()
            if self.compiled:
                self._segment(s)
            else:
                slots = self.slot_of[self.chains.replica_ids]
                self.chains.advance(1.0 / self.temps[slots], s - self.sweep, self.sweep,
                                    cfg.algorithm, cfg.n_metropolis, self.n_wolff[slots])
            self.sweep = s
            if cfg.algorithm == "wolff" and s == cfg.thermalize:
                self._calibrate_wolff()  # its clusters change the lattices: before the sync
            stop = self._sync()
            if s % cfg.exchange_every == 0:
                self._exchange(s // cfg.exchange_every)
            if s <= self.adapt_until and s % cfg.exchange_every == 0 \
                    and is_adapt_round(s // cfg.exchange_every, cfg.adapt_every):
                self._adapt()
            if s == cfg.thermalize:
                self._start_production()
            if s > cfg.thermalize and (s - cfg.thermalize) % cfg.sample_every == 0:
                self._sample()
            if s % cfg.checkpoint_every == 0 or s == self.total or stop:
                self._checkpoint()
            self.stopped = stop
            self._update_progress()
        if self.progress is not None:
            self.progress.close()

    def _next_event(self):
        """The next sweep with events handled here, in Python. Compiled segments do the
        exchanges and samples of the sweeps before the one returned."""
        cfg, s = self.cfg, self.sweep
        candidates = [self.total, next_multiple(s, cfg.checkpoint_every)]
        if s < cfg.thermalize:
            candidates.append(cfg.thermalize)
        if not self.compiled:
            candidates.append(next_multiple(s, cfg.exchange_every))
            if s >= cfg.thermalize:
                candidates.append(next_multiple(s, cfg.sample_every, cfg.thermalize))
            return min(candidates)
        candidates.append(s + self.max_segment)
        if s >= cfg.thermalize:  # at most cap samples strictly before the returned sweep
            cap = self.bufs[0]["sweep"].shape[0]
            candidates.append(next_multiple(s, cfg.sample_every, cfg.thermalize)
                              + cap * cfg.sample_every)
        if s < self.adapt_until:
            n = s // cfg.exchange_every  # next exchange round a·(2^k − 1) after sweep s
            a, k = cfg.adapt_every, 1
            while a * (2**k - 1) <= n:
                k += 1
            candidates.append(a * (2**k - 1) * cfg.exchange_every)
        return min(candidates)

    def _segment(self, s):
        """Advance to sweep s in compiled code, with the exchanges and samples of the sweeps
        in between; hand the samples to the writer (its thread takes them while the next
        segment fills the other buffer)."""
        cfg, ch, b = self.cfg, self.chains, self.bufs[0]
        if self._buf_jobs[0] is not None:
            self._buf_jobs[0].result()
        algorithm = cfg.algorithm
        n_metropolis = 0 if algorithm == "wolff" else (1 if algorithm == "metropolis"
                                                       else cfg.n_metropolis)
        n_wolff = np.zeros(self.R, np.int64) if algorithm == "metropolis" else self.n_wolff
        common = (self._thr, self._padd, n_wolff, self._beta, ch.keys, ch.wkeys, ch.counters,
                  self.slot_of, self.exch, self.direction, self.round_trips, self.xkey,
                  self.sweep, s, n_metropolis, cfg.exchange_every, cfg.sample_every,
                  cfg.thermalize, ch.energy, ch.magnet, ch.flipped)
        out = (b["spins"], b["energy"], b["magnet"], b["slot"], b["sweep"])
        if self.comm.size == 1:
            n = ch.kern.pt_segment(ch.spins, *common, *out)
        else:
            n = native.pt_segment_mpi(self.comm.comm, self._counts, self._displs,
                                      int(ch.replica_ids[0]), ch.spins, *common, self.energy,
                                      *out)
        if n:
            self._buf_jobs[0] = self.writer.sample_packed(
                b["sweep"][:n], ch.replica_ids, b["slot"][:n], b["spins"][:n], b["energy"][:n],
                b["magnet"][:n])
            self.bufs.reverse()
            self._buf_jobs.reverse()

    def _sync(self):
        """Share energies of all replicas and whether any rank was asked to stop."""
        if self.comm.size == 1:
            self.energy[:] = self.chains.energy
            return self.stop_requested
        # ranks hold contiguous blocks of replica ids (np.array_split): one int64 row each,
        # [energies of the block, padding, stop flag]
        row = self._sync_row
        n = len(self.chains.replica_ids)
        row[:n] = self.chains.energy
        row[-1] = self.stop_requested
        rows = self.comm.allgather_array(row)
        self.energy[:] = np.concatenate([rows[p, :len(ids)]
                                         for p, ids in enumerate(self._blocks)])
        return bool(rows[:, -1].any())

    # -- events ---------------------------------------------------------------------------
    def _exchange(self, round_index):
        kernels.exchange_round(round_index, self.xkey, self._beta, self.energy,
                               self.slot_of, self.exch, self.direction, self.round_trips)

    def _adapt(self):
        """Move the inner temperatures so neighbour acceptance becomes equal (feedback on
        the acceptance measured since the last adaptation); the end points stay fixed."""
        if self.win_att.sum() == 0:
            return
        acc = np.clip((self.win_acc + 0.5) / (self.win_att + 1.0), 0.01, 0.99)
        beta = 1.0 / self.temps
        gaps = beta[:-1] - beta[1:]
        # for near-Gaussian energy distributions A ≈ exp(-c·Δβ²): equal acceptance after the
        # move needs Δβ ∝ Δβ / sqrt(-ln A)
        gaps = gaps / np.sqrt(-np.log(acc))
        gaps *= (beta[0] - beta[-1]) / gaps.sum()
        beta = beta[0] - np.concatenate([[0.0], np.cumsum(gaps)])
        beta[-1] = 1.0 / self.temps[-1]
        self._set_ladder(1.0 / beta)
        self.win_att[:] = 0
        self.win_acc[:] = 0

    def _set_ladder(self, temps):
        """The temperatures and the kernels' per-slot parameters (computed here, before the
        run's clock starts, also on ranks whose first numba call this is)."""
        self.temps = temps
        self._beta = 1.0 / temps
        self._thr = kernels.metropolis_thresholds(self._beta)
        self._padd = kernels.wolff_threshold(self._beta)

    def _calibrate_wolff(self):
        slots = self.slot_of[self.chains.replica_ids]
        size = self.chains.mean_cluster_size(1.0 / self.temps[slots], n_clusters=50)
        mean = np.zeros(self.R)
        for ids, sz in self.comm.allgather((self.chains.replica_ids, size)):
            mean[self.slot_of[ids]] = sz
        self.n_wolff = clusters_per_sweep(mean, self.N)

    def _start_production(self):
        self.attempted[:] = 0
        self.accepted[:] = 0
        if self.cfg.ladder == "adaptive":
            self.writer.set_temperatures(self.temps)

    def _sample(self):
        ids = self.chains.replica_ids
        self.writer.sample(self.sweep, ids, self.slot_of[ids], self.chains.spins,
                           self.energy[ids] / self.N, self.chains.magnet / self.N)

    def shared_state(self):
        """The part of the checkpoint that every rank holds identically."""
        return dict(slot_of=self.slot_of, temperatures=self.temps, n_wolff=self.n_wolff,
                    direction=self.direction, round_trips=self.round_trips,
                    attempted=self.attempted, accepted=self.accepted,
                    window_attempted=self.win_att, window_accepted=self.win_acc,
                    position=np.array([self.sweep, 0]))

    def _checkpoint(self):
        self.writer.checkpoint(self.shared_state(), self.chains.replica_ids, self.chains.spins,
                               self.chains.counters)

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
        att = np.maximum(self.attempted, 1)
        acc = self.accepted / att
        phase = "thermalize" if self.sweep <= self.cfg.thermalize else "sample"
        self.progress.set_postfix_str(f"{phase} exch.acc {acc.min():.2f}-{acc.max():.2f}",
                                      refresh=False)
        self.progress.update(self.sweep - self._shown)
        self._shown = self.sweep


def summary_table(path):
    """Per-temperature summary of a run file: ⟨e⟩, ⟨|m|⟩, C, χ with errors, τ_int(e) and
    exchange acceptance of the pair (T_k, T_k+1). Returns the table as text."""
    with open_read(path) as f:
        T = f["temperatures"][:]
        e, m = f["energy"][:], f["magnetization"][:]
        att, acc = f["exchange/attempted"][:], f["exchange/accepted"][:]
        L = int(f.attrs["L"])
    lines = [f"{'T':>7} {'<e>':>18} {'<|m|>':>18} {'C':>16} {'chi':>16} {'tau_e':>7} {'acc':>5}"]
    for k, t in enumerate(T):
        if e.shape[1] < 8:
            break
        with warnings.catch_warnings():  # short runs: the table is a summary, not a result
            warnings.simplefilter("ignore", RuntimeWarning)
            r = observables.thermo(e[k], m[k], t, L)
        a = acc[k] / att[k] if k < len(T) - 1 and att[k] else float("nan")
        fmt = lambda v: f"{v[0]:.5f}±{v[1]:.5f}"
        lines.append(f"{t:7.4f} {fmt(r['e']):>18} {fmt(r['abs_m']):>18} "
                     f"{r['C'][0]:8.3f}±{r['C'][1]:.3f} {r['chi'][0]:8.3f}±{r['chi'][1]:.3f} "
                     f"{r['tau_e']:7.1f} {a:5.2f}")
    return "\n".join(lines)


# -- command line ---------------------------------------------------------------------------
def parse_args(argv):
    p = argparse.ArgumentParser(prog="python -m ising_dist.pt", description=__doc__.split("\n")[0])
    p.add_argument("--config", help="YAML preset (configs/pt/*.yaml); flags override it")
    p.add_argument("--L", type=int)
    p.add_argument("--tmin", type=float)
    p.add_argument("--tmax", type=float)
    p.add_argument("--replicas", type=int, help="R, number of temperatures")
    p.add_argument("--ladder", choices=cfgmod.LADDERS)
    p.add_argument("--temperatures", help="explicit ladder T1,T2,... (ascending)")
    p.add_argument("--thermalize", type=int, help="sweeps before sampling")
    p.add_argument("--sweeps", type=int, help="sweeps after thermalization")
    p.add_argument("--sample-every", type=int, dest="sample_every")
    p.add_argument("--exchange-every", type=int, dest="exchange_every")
    p.add_argument("--algorithm", choices=("metropolis", "wolff", "hybrid"))
    p.add_argument("--n-metropolis", type=int, dest="n_metropolis",
                   help="hybrid: Metropolis sweeps per step")
    p.add_argument("--n-wolff", type=int, dest="n_wolff", help="hybrid: Wolff clusters per step")
    p.add_argument("--adapt-every", type=int, dest="adapt_every",
                   help="adaptive ladder: exchange rounds between adjustments")
    p.add_argument("--seed", type=int)
    p.add_argument("--out", help="HDF5 output path")
    p.add_argument("--checkpoint-every", type=int, dest="checkpoint_every")
    p.add_argument("--writer", choices=cfgmod.WRITERS)
    p.add_argument("--backend", choices=cfgmod.BACKENDS,
                   help="kernels: native (C, built by CMake), numba, or auto (native if built)")
    p.add_argument("--start", choices=("hot", "cold"))
    p.add_argument("--no-progress", action="store_false", dest="progress", default=None)
    p.add_argument("--resume", action="store_true", help="continue the run in --out")
    p.add_argument("--overwrite", action="store_true", help="replace an existing --out")
    p.add_argument("--dry-run", action="store_true", dest="dry_run",
                   help="validate the config, print it resolved (YAML) and exit")
    return p.parse_args(argv)


def resolve_config(args):
    """The run's PTConfig and, when resuming, the opened writer and checkpoint (rank 0)."""
    overrides = {k: v for k, v in vars(args).items()
                 if k not in ("config", "resume", "overwrite", "dry_run") and v is not None}
    if args.resume and args.overwrite:
        raise ConfigError("--resume and --overwrite contradict each other; pick one")
    if not args.resume:
        return cfgmod.load(PTConfig, args.config, overrides), None, None
    out = overrides.get("out")
    if out is None:
        out = cfgmod.load(PTConfig, args.config, {}).out
    with open_read(out) as f:
        stored = stored_config(f)
    requested = cfgmod.read_yaml(args.config) if args.config else dict(stored)
    requested.update(overrides)
    mismatch = [f"{k}: file has {stored.get(k)!r}, asked {v!r}" for k, v in requested.items()
                if k not in RESUME_MAY_CHANGE and k in stored and stored[k] != v
                and not (k == "replicas" and v is None)]
    if mismatch:
        raise ConfigError(f"--resume of {out!r} with a different run setup ("
                          + "; ".join(mismatch) + "); resume with the same settings or start a "
                          "new file")
    data = dict(stored)
    data.update({k: v for k, v in requested.items() if k in RESUME_MAY_CHANGE})
    data["out"] = out
    cfg = cfgmod.from_dict(PTConfig, data, source=out)
    writer, ckpt = RunWriter.reopen(out)
    if cfg.sweeps < int(ckpt["position"][0]) - cfg.thermalize:
        writer.close()
        raise ConfigError(f"--sweeps {cfg.sweeps}: the file already holds "
                          f"{int(ckpt['position'][0]) - cfg.thermalize} production sweeps")
    writer.f.attrs["config"] = cfgmod.to_yaml(cfg)
    return cfg, writer, ckpt


def setup(args, comm):
    """Validate everything on rank 0 before any work; all ranks get the config or exit.

    Rank 0 locks the output (ising_dist.runlock) before it creates, replaces or reopens it,
    and holds the lock for the run. Returns (cfg, writer, checkpoint or None, lock: rank 0's
    RunLock, None on the other ranks); raises ConfigError (also for an output that a live
    run holds)."""
    result, lock = None, None
    try:
        if comm.rank == 0:
            if args.resume:  # resolving a resume repairs and cuts back the file: lock first
                out = args.out if args.out is not None else \
                    cfgmod.load(PTConfig, args.config, {}).out
                if os.path.isfile(out):  # (a missing file: resolve_config says so)
                    lock = RunLock.acquire(out, role="pt")
            cfg, writer, ckpt = resolve_config(args)
            if cfg.replicas < comm.size:
                raise ConfigError(f"replicas={cfg.replicas} < {comm.size} MPI ranks: every rank "
                                  f"needs a replica; use --replicas {comm.size} or fewer ranks")
            if cfg.backend == "native" and not native.available():
                raise ConfigError("backend=native: the native kernel library is not built; "
                                  f"run `{native.BUILD_HINT}` or use --backend numba")
            if cfg.writer == "collective" and not h5py.get_config().mpi:
                raise ConfigError(
                    "writer=collective needs h5py built against parallel HDF5 "
                    "(h5py.get_config().mpi is False here); build it with `make setup-parallel` "
                    "(README, 'Writers') and run .venv-parallel/bin/python under "
                    "/usr/bin/mpiexec.mpich, or use --writer gather (live-readable)")
            if writer is None:
                lock = RunLock.acquire(cfg.out, role="pt")
                writer = RunWriter.create(cfg.out, cfgmod.to_yaml(cfg), cfg.L, cfg.seed,
                                          cfg.ladder_temperatures(), overwrite=args.overwrite,
                                          compress=not (cfg.writer == "collective"
                                                        and comm.size > 1), lock=lock)
            else:
                writer.attach_lock(lock)
            result = ("ok", cfgmod.to_dict(cfg), ckpt)
    except (ConfigError, StoreError, RunLockedError) as exc:
        result = ("error", str(exc), None)
        if lock is not None:
            lock.release()
    status, payload, ckpt = comm.bcast(result if comm.rank == 0 else None)
    if status == "error":
        raise ConfigError(payload)
    cfg = cfgmod.from_dict(PTConfig, payload)
    if cfg.writer == "collective" and comm.size > 1:
        if comm.rank == 0:
            writer.close()  # created or cut back serially; now every rank opens it with mpio
        comm.barrier()
        return cfg, CollectiveWriter(comm, cfg.out, lock), ckpt, lock
    # gather: "auto" picks it too, for a file that can be read while it is written
    return cfg, GatherWriter(comm, writer if comm.rank == 0 else None), ckpt, lock


def main(argv=None):
    try:
        comm = world()
    except RuntimeError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    if comm.size > 1:  # one core per rank unless the user splits threads on purpose
        os.environ.setdefault("OMP_NUM_THREADS", "1")  # native kernels (read at library load)
        if "NUMBA_NUM_THREADS" not in os.environ:
            import numba
            numba.set_num_threads(1)
    args = parse_args(argv)
    try:
        if args.dry_run:
            if comm.rank == 0:
                print(cfgmod.to_yaml(cfgmod.load(PTConfig, args.config, {
                    k: v for k, v in vars(args).items()
                    if k not in ("config", "resume", "overwrite", "dry_run") and v is not None})),
                    end="")
            return 0
        cfg, writer, ckpt, lock = setup(args, comm)
    except ConfigError as exc:
        if comm.rank == 0:
            print(f"error: {exc}", file=sys.stderr)
        return 2
    pt = ParallelTempering(cfg, comm, ckpt, writer)

    def request_stop(signum, frame):
        pt.stop_requested = True
    signal.signal(signal.SIGTERM, request_stop)
    signal.signal(signal.SIGINT, request_stop)
    comm.barrier()  # the clock starts when every rank is set up
    t0 = time.perf_counter()
    try:
        pt.run()
        writer.close()
        if lock is not None:  # the file is still this run's (checked at every checkpoint)
            lock.check(cfg.out)
    except OSError as exc:  # the file system is full, a quota or file-size limit is reached, …
        why = os.strerror(exc.errno) if exc.errno else str(exc)
        done = writer.last_checkpoint
        if done is None and ckpt is not None:
            done = int(ckpt["position"][0])
        kept = (f"every sample up to its last checkpoint, at sweep {done}" if done is not None
                else "no checkpoint yet (the run stopped before its first one)")
        print(f"error: writing {cfg.out} failed: {why}.\nThe file keeps {kept}. Make room, "
              f"then continue with:\n  python -m ising_dist.pt --out {cfg.out} --resume",
              file=sys.stderr)
        comm.abort(1)  # HDF5 cannot close the file cleanly now; other ranks may be waiting
    except RunLostError as exc:  # the output was replaced or removed under this run
        if comm.rank == 0:
            print(f"error: {exc}", file=sys.stderr)
            lock.release()  # (removes the lock file only if it is still this run's)
        comm.abort(1)  # other ranks may be waiting; nothing more is written or printed
    if lock is not None:  # (a run that ends otherwise leaves a stale lock: the next one takes it)
        lock.release()
    if comm.rank == 0:
        elapsed = time.perf_counter() - t0
        if pt.sweep < pt.total:
            print(f"stopped at sweep {pt.sweep}/{pt.total} with a checkpoint; continue with:\n"
                  f"  python -m ising_dist.pt --out {cfg.out} --resume", flush=True)
        else:
            print(summary_table(cfg.out))
            trips = int(pt.round_trips.sum())
            print(f"done: {pt.total} sweeps of {cfg.replicas} replicas (L={cfg.L}) on "
                  f"{comm.size} rank(s) in {elapsed:.2f} s ({pt.chains.kern.name} kernels); "
                  f"replica round trips: {trips}")
        print(f"output: {os.path.abspath(cfg.out)}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
