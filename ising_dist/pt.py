"""Parallel tempering of the 2D Ising model over MPI ranks, streaming into one HDF5 file.

    mpiexec -n P python -m ising_dist.pt --config configs/pt/default.yaml [--L 64 ...]

The run loop, its state and the order of its operations: ising_dist.tempering. This module
is the command line: flags and config, resume checks, output locking, the writer, signals,
and the summary printed at the end.
"""

import argparse
import os
import signal
import sys
import time
import warnings

import h5py

from . import config as cfgmod
from . import domain, native, observables
from .config import ConfigError, PTConfig
from .mpi import world
from .runlock import RunLock, RunLockedError, RunLostError
from .store import StoreError, open_read, stored_config
from .tempering import ParallelTempering
from .writers import CollectiveWriter, RunWriter, StripGatherWriter, gather_writer

RESUME_MAY_CHANGE = cfgmod.resume_may_change(PTConfig)   # the rest must match the file
LAUNCH_LAYOUT = ("ranks_per_replica",)  # how this launch's ranks share lattices: not the file's


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
    p.add_argument("--resume", action="store_true", help="continue the run in --out")
    p.add_argument("--overwrite", action="store_true", help="replace an existing --out")
    p.add_argument("--dry-run", action="store_true", dest="dry_run",
                   help="validate the config, print it resolved (YAML) and exit")
    cfgmod.add_flags(p, PTConfig, "settings (override the preset)")
    return p.parse_args(argv)


def resolve_config(args):
    """The run's PTConfig and, when resuming, the opened writer and checkpoint (rank 0)."""
    overrides = cfgmod.given_flags(args, PTConfig)
    if args.resume and args.overwrite:
        raise ConfigError("--resume and --overwrite contradict each other; pick one")
    if not args.resume:
        return cfgmod.load(PTConfig, args.config, overrides), None, None
    out = overrides.get("out")
    if out is None:
        out = cfgmod.load(PTConfig, args.config, {}).out
    with open_read(out) as f:
        stored = stored_config(f)
    for key in LAUNCH_LAYOUT:  # (a resumed run can use any P)
        stored.pop(key, None)
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
    data.update({k: v for k, v in requested.items()
                 if k in RESUME_MAY_CHANGE or k in LAUNCH_LAYOUT})
    data["out"] = out
    cfg = cfgmod.from_dict(PTConfig, data, source=out)
    writer, ckpt = RunWriter.reopen(out)
    if cfg.sweeps < int(ckpt["position"][0]) - cfg.thermalize:
        writer.close()
        raise ConfigError(f"--sweeps {cfg.sweeps}: the file already holds "
                          f"{int(ckpt['position'][0]) - cfg.thermalize} production sweeps")
    writer.f.attrs["config"] = cfgmod.to_yaml(cfg)
    return cfg, writer, ckpt


DEFAULT_REPLICAS = 8   # PTConfig's R when neither replicas nor temperatures are given


def _default_replicas_to_ranks(args, ranks: int) -> None:
    """R = max(8, P): a run on P > 8 ranks that gives neither ``replicas`` nor
    ``temperatures`` (flag or --config file) uses P temperatures over the same tmin..tmax,
    so that every rank holds a replica. Sets ``args.replicas``."""
    given = dict(cfgmod.read_yaml(args.config)) if args.config else {}
    given.update(cfgmod.given_flags(args, PTConfig))
    if given.get("replicas") is None and not given.get("temperatures"):
        args.replicas = ranks


def _strips_for_extra_ranks(cfg, args, P):
    """With R given and P > R ranks, and ranks_per_replica not given (flag or --config
    file): each lattice is split over k = P / R ranks (ising_dist.domain). Returns the
    config with that k; raises ConfigError when P is not a multiple of R (naming the nearest
    valid P) or when the strips cannot run (PTConfig.validate names why)."""
    given = "ranks_per_replica" in cfgmod.given_flags(args, PTConfig) or (
        args.config and "ranks_per_replica" in (cfgmod.read_yaml(args.config) or {}))
    R = cfg.replicas
    if given or P <= R:
        return cfg
    if P % R:
        lower, upper = P - P % R, P - P % R + R
        raise ConfigError(
            f"{P} MPI ranks for replicas={R}: with more ranks than replicas each lattice is "
            f"split over P/R ranks, so P must be a multiple of R; use -n {lower} or -n {upper}"
            f", or --replicas {P}")
    return cfgmod.from_dict(PTConfig, {**cfgmod.to_dict(cfg), "ranks_per_replica": P // R},
                            source=f"{P} MPI ranks for {R} replicas")


def check_ranks(cfg, P):
    """Refuse a run of ``cfg`` (ranks_per_replica k) on P ranks that leaves a rank without
    work: P must be a multiple of k, and the P/k groups of k ranks need a replica each.
    Raises ConfigError naming the valid rank counts."""
    k, R = cfg.ranks_per_replica, cfg.replicas
    if P % k:
        lower, upper = max(k, P - P % k), P - P % k + k
        raise ConfigError(
            f"{P} MPI ranks with ranks_per_replica={k}: each replica's lattice is split over "
            f"k ranks, so the rank count must be a multiple of {k}; use -n "
            f"{' or -n '.join(map(str, sorted({lower, upper})))}")
    if R < P // k:
        if k == 1:
            split = P // R  # the strips that would use every rank, where they fit
            fits = P % R == 0 and cfg.L % split == 0 and cfg.L // split >= 2
            hint = (f" (or --ranks-per-replica {split}: each lattice split over {split} "
                    f"ranks)" if fits and cfg.algorithm == "metropolis" else "")
            raise ConfigError(f"replicas={R} < {P} MPI ranks: every rank needs a replica; use "
                              f"--replicas {P} or fewer ranks{hint}")
        raise ConfigError(f"replicas={R} < {P} MPI ranks / ranks_per_replica={k}: every group "
                          f"of {k} ranks needs a replica; use --replicas {P // k} or -n "
                          f"{R * k}")


def setup(args, comm):
    """Validate everything on rank 0 before any work; all ranks get the config or exit.

    Rank 0 locks the output (ising_dist.runlock) before it creates, replaces or reopens it,
    and holds the lock for the run. Returns (cfg, writer, checkpoint or None, lock: rank 0's
    RunLock, None on the other ranks); raises ConfigError (also for an output that a live
    run holds)."""
    result, lock, writer = None, None, None  # (rank 0 opens the writer)
    try:
        if comm.rank == 0:
            if args.resume:  # resolving a resume repairs and cuts back the file: lock first
                out = args.out if args.out is not None else \
                    cfgmod.load(PTConfig, args.config, {}).out
                if os.path.isfile(out):  # (a missing file: resolve_config says so)
                    lock = RunLock.acquire(out, role="pt")
            if not args.resume and comm.size > DEFAULT_REPLICAS:
                _default_replicas_to_ranks(args, comm.size)
            cfg, writer, ckpt = resolve_config(args)
            cfg = _strips_for_extra_ranks(cfg, args, comm.size)
            check_ranks(cfg, comm.size)
            if cfg.backend == "native" and not native.available():
                raise ConfigError("backend=native: the native kernel library is not built; "
                                  f"run `{native.BUILD_HINT}` or use --backend numba")
            if cfg.backend == "cuda":
                from . import gpu  # (numba.cuda is imported for this backend only)
                if not gpu.available():
                    raise ConfigError(gpu.UNAVAILABLE.format(reason=gpu.unavailable_reason()))
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
    if cfg.ranks_per_replica > 1:  # strips: each group's leader writes through a gather
        group, leaders = domain.groups(comm, cfg.ranks_per_replica)
        return cfg, StripGatherWriter(group, gather_writer(leaders, writer)
                                      if group.rank == 0 else None), ckpt, lock
    # gather: "auto" picks it too, for a file that can be read while it is written
    return cfg, gather_writer(comm, writer), ckpt, lock


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
                print(cfgmod.to_yaml(cfgmod.load(PTConfig, args.config,
                                                 cfgmod.given_flags(args, PTConfig))), end="")
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
            trips = int(pt.state.round_trips.sum())
            print(f"done: {pt.total} sweeps of {cfg.replicas} replicas (L={cfg.L}) on "
                  f"{comm.size} rank(s) in {elapsed:.2f} s ({pt.chains.kern.name} kernels); "
                  f"replica round trips: {trips}")
        print(f"output: {os.path.abspath(cfg.out)}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
