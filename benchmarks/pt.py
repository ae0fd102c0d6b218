"""Parallel-tempering benchmark: `python -m benchmarks.pt [--quick]`.

Prints, measured in one run:
  1. kernel-only replica sweeps/s vs the full PT loop (exchange + streaming + checkpoints)
     at L=64, R=16, one process, one kernel thread — the overhead ratio (bar: < 1.05), for
     several exchange/sample cadences and both kernel backends (kernel-only and full-loop
     runs alternate, best of 3 each, so both see the same machine), and the cost of one
     checkpoint (so the overhead of any checkpoint cadence can be worked out);
  2. HDF5 write throughput of the streaming writer;
  3. speedup of `mpiexec -n 2` over `-n 1` at fixed R (bar on 2 cores: >= 1.7x), for several
     cadences and L; "none" (no exchanges, no samples) is the ceiling the two cores allow;
  4. domain decomposition (`--only domain` runs this section alone): strong scaling of one
     replica at L=2048 from one rank (whole lattice, the kernels of a one-rank run) to two
     ranks holding a strip of rows each (bar on 2 cores: >= 1.7x), and the share of the
     time the halo exchanges take.
"""

import os

os.environ.setdefault("OMP_NUM_THREADS", "1")  # native kernels: read when the library loads

import argparse  # noqa: E402
import re  # noqa: E402
import subprocess  # noqa: E402
import sys  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402

import numba  # noqa: E402
import numpy as np  # noqa: E402

from ising_dist import native  # noqa: E402
from ising_dist.config import PTConfig  # noqa: E402
from ising_dist.engine import Chains  # noqa: E402
from ising_dist.mpi import SerialComm  # noqa: E402
from ising_dist.tempering import ParallelTempering  # noqa: E402
from ising_dist.codec import pack  # noqa: E402
from ising_dist.writers import GatherWriter, RunWriter  # noqa: E402

L, R = 64, 16
CADENCES = ((1, 10), (1, 100), (10, 10), (10, 100))  # (exchange every, sample every) sweeps


def kernel_only(sweeps, backend):
    """Sweeps/s of all replicas, in one call of the kernels the PT loop uses."""
    chains = Chains.create(L, 1, range(R), backend=backend)
    betas = 1.0 / np.geomspace(1.8, 3.0, R)
    chains.advance(betas, 10, 0)
    t0 = time.perf_counter()
    chains.advance(betas, sweeps, 10)
    return sweeps / (time.perf_counter() - t0)


def full_loop(sweeps, backend, tmp, exchange_every, sample_every, checkpoint_every):
    """Sweeps/s of ParallelTempering.run on one process (file creation not timed)."""
    cfg = PTConfig(L=L, replicas=R, tmin=1.8, tmax=3.0, thermalize=0, sweeps=sweeps,
                   sample_every=sample_every, exchange_every=exchange_every,
                   checkpoint_every=checkpoint_every, progress=False, backend=backend,
                   out=str(tmp / f"loop{exchange_every}_{sample_every}.h5"))
    cfg.validate()
    comm = SerialComm()
    writer = GatherWriter(comm, RunWriter.create(cfg.out, "bench", L, 1,
                                                 cfg.ladder_temperatures(), overwrite=True))
    pt = ParallelTempering(cfg, comm, None, writer)
    t0 = time.perf_counter()
    pt.run()
    writer.close()
    rate = sweeps / (time.perf_counter() - t0)
    os.sync()  # the kernel's write-back of the file would otherwise slow the next run
    return rate


def checkpoint_ms(tmp, n=20):
    """Milliseconds per checkpoint of an R=16, L=64 run (spins, counters, ladder state)."""
    cfg = PTConfig(L=L, replicas=R, tmin=1.8, tmax=3.0, thermalize=0, sweeps=100,
                   progress=False, out=str(tmp / "ckpt.h5"))
    cfg.validate()
    comm = SerialComm()
    writer = GatherWriter(comm, RunWriter.create(cfg.out, "bench", L, 1,
                                                 cfg.ladder_temperatures(), overwrite=True))
    pt = ParallelTempering(cfg, comm, None, writer)
    pt._checkpoint()
    t0 = time.perf_counter()
    for _ in range(n):
        pt._checkpoint()
    dt = (time.perf_counter() - t0) / n
    writer.close()
    return 1e3 * dt


def write_throughput(tmp, samples, block):
    """MB/s of int8 spins through RunWriter.write, packing included: blocks of `block`
    samples (what an in-process run hands over) or one sample at a time (block=1, the
    per-sample path of the run loop)."""
    T = np.geomspace(1.8, 3.0, R)
    writer = RunWriter.create(tmp / f"write{block}.h5", "bench", L, 1, T, overwrite=True)
    rng = np.random.default_rng(0)
    spins = (2 * rng.integers(0, 2, (block, R, L, L)) - 1).astype(np.int8)
    e = np.zeros((block, R))
    rep = np.tile(np.arange(R, dtype=np.int32), (block, 1))
    t0 = time.perf_counter()
    for k in range(0, samples, block):
        sweeps = np.arange(k, k + block, dtype=np.int64)
        writer.write(sweeps, pack(spins), e, e, rep)
    writer.close()
    dt = time.perf_counter() - t0
    return samples * R * L * L / dt / 1e6


def mpi_time(ranks, sweeps, tmp, backend, exchange_every, sample_every, L=L):
    root = Path(__file__).resolve().parents[1]
    bindir = Path(sys.executable).parent
    env = dict(os.environ, NUMBA_NUM_THREADS="1", OMP_NUM_THREADS="1",
               MPIR_CVAR_CH4_PROGRESS_THROTTLE="1", PATH=f"{bindir}:{os.environ['PATH']}")
    cmd = [str(bindir / "mpiexec"), "-n", str(ranks), sys.executable, "-m", "ising_dist.pt",
           "--L", str(L), "--replicas", str(R), "--thermalize", "0", "--sweeps", str(sweeps),
           "--sample-every", str(sample_every), "--exchange-every", str(exchange_every),
           "--checkpoint-every", str(sweeps), "--no-progress", "--overwrite",
           "--backend", backend, "--out", str(tmp / f"mpi{ranks}.h5")]
    out = subprocess.run(cmd, env=env, cwd=root, capture_output=True, text=True, check=True)
    os.sync()  # (as in full_loop)
    return float(re.search(r"in ([0-9.]+) s", out.stdout).group(1))


DOMAIN_L = 2048


def domain_worker(sweeps, strips):
    """Under mpiexec -n k: advance one replica of DOMAIN_L×DOMAIN_L by ``sweeps``
    Metropolis sweeps after a warm-up, as strips over the k ranks (strips=True) or, on one
    rank, as a whole lattice (engine.Chains); rank 0 prints "seconds halo_seconds
    cpu_seconds exchange_seconds": the largest halo and CPU time of any rank (on a loaded
    machine the CPU time still shows how the work was split), and the time of one halo
    exchange alone, after a barrier (no waiting for a slower neighbour; 0 without strips)."""
    from ising_dist.domain import StripChains
    from ising_dist.mpi import world
    comm = world()
    beta = np.array([1 / 2.269])
    chains = (StripChains.create(DOMAIN_L, 1, [0], comm) if strips else
              Chains.create(DOMAIN_L, 1, [0], backend="numba"))
    chains.advance(beta, 2, 0)  # compile, touch the memory
    comm.barrier()
    halo0 = getattr(chains, "halo_seconds", 0.0)
    t0, c0 = time.perf_counter(), time.process_time()
    chains.advance(beta, sweeps, 2)
    cpu = comm.allreduce_max(time.process_time() - c0)
    comm.barrier()
    dt = time.perf_counter() - t0
    halo = comm.allreduce_max(getattr(chains, "halo_seconds", 0.0) - halo0)
    alone, n = 0.0, 200
    if strips:
        comm.barrier()
        t0 = time.perf_counter()
        for _ in range(n):
            chains.exchange_halos()
        alone = comm.allreduce_max(time.perf_counter() - t0) / n
    if comm.rank == 0:
        print(dt, halo, cpu, alone, flush=True)


def domain_time(ranks, sweeps, strips):
    """(seconds, halo seconds, CPU seconds, seconds of one exchange) of
    :func:`domain_worker` on ``ranks`` ranks."""
    bindir = Path(sys.executable).parent
    env = dict(os.environ, NUMBA_NUM_THREADS="1", OMP_NUM_THREADS="1",
               MPIR_CVAR_CH4_PROGRESS_THROTTLE="1", PATH=f"{bindir}:{os.environ['PATH']}")
    cmd = [str(bindir / "mpiexec"), "-n", str(ranks), sys.executable, "-m", "benchmarks.pt",
           "--domain-worker", str(sweeps)] + (["--strips"] if strips else [])
    out = subprocess.run(cmd, env=env, cwd=Path(__file__).resolve().parents[1],
                         capture_output=True, text=True, check=True)
    return tuple(map(float, out.stdout.split()))


def domain_section(quick):
    sweeps = 10 if quick else 100
    print(f"4. domain decomposition: one replica, L={DOMAIN_L}, {sweeps} Metropolis sweeps, "
          f"best of 3")
    best = {}
    for name, ranks, strips in (("1 rank, whole lattice", 1, False),
                                ("1 rank, one strip", 1, True), ("2 ranks, 2 strips", 2, True)):
        best[name] = min((domain_time(ranks, sweeps, strips) for _ in range(3)),
                         key=lambda t: t[0])
        dt, halo, cpu, alone = best[name]
        print(f"   {name:22s}: {dt:6.2f} s ({sweeps * DOMAIN_L**2 / dt / 1e9:.3f} spin "
              f"flips/ns), halo exchanges {halo:.3f} s ({100 * halo / dt:.1f}% of the time), "
              f"CPU {cpu:.2f} s on the busiest rank")
        if ranks > 1:
            print(f"   {'':22s}  one halo exchange alone {1e6 * alone:.0f} us: 2 a sweep are "
                  f"{100 * 2 * alone * sweeps / dt:.2f}% of the time")
    (t1, _, c1, _), (t2, _, c2, _) = best["1 rank, whole lattice"], best["2 ranks, 2 strips"]
    print(f"   strong scaling, 1 -> 2 ranks: speedup {t1 / t2:.2f}x (bar on 2 cores: >= 1.7x); "
          f"CPU of the busiest rank {c1 / c2:.2f}x less; load average "
          f"{os.getloadavg()[0]:.1f} on {os.cpu_count()} cores")


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--quick", action="store_true", help="short runs (a smoke test)")
    ap.add_argument("--only", choices=("domain",),
                    help="run one section only (domain: section 4)")
    ap.add_argument("--domain-worker", type=int, metavar="SWEEPS", help=argparse.SUPPRESS)
    ap.add_argument("--strips", action="store_true", help=argparse.SUPPRESS)
    args = ap.parse_args()
    numba.set_num_threads(1)
    if args.domain_worker is not None:
        return domain_worker(args.domain_worker, args.strips)
    if args.only == "domain":
        return domain_section(args.quick)
    backends = ["numba"] + (["native"] if native.available() else [])
    ckpt_every = 20000
    with tempfile.TemporaryDirectory() as d:
        tmp = Path(d)
        print(f"1. L={L}, R={R}, one process, one kernel thread; checkpoint every {ckpt_every} "
              f"sweeps; best of 3 runs each after a warm-up")
        for backend in backends:
            full_loop(200, backend, tmp, 1, 10, 100)  # compile / load everything once
            kernel_only(100, backend)
            k = max(kernel_only(2000, backend) for _ in range(2))
            sweeps = int(min(200000, max(2000, 4 * k)))  # about 4 s of kernel time
            if args.quick:
                sweeps = 2000
            sweeps -= sweeps % 100
            print(f"   {backend:6s} {sweeps} sweeps per run")
            for ex, every in CADENCES:
                k = f = 0.0
                for _ in range(3):  # alternating: a slow spell of the machine hits both
                    k = max(k, kernel_only(sweeps, backend))
                    f = max(f, full_loop(sweeps, backend, tmp, ex, every, ckpt_every))
                print(f"   {backend:6s} exchange every {ex:3d}, sample every {every:3d}: "
                      f"kernel-only {k:8.1f} sweeps/s ({k * R * L * L / 1e9:.2f} spin flips/ns), "
                      f"full PT loop {f:8.1f}: overhead ratio {k / f:.3f}")
        ms = checkpoint_ms(tmp)
        print(f"   one checkpoint: {ms:.2f} ms (R={R} lattices of {L}x{L} plus the ladder "
              f"state, two flushes)")
        n = 512 if args.quick else 8192
        print(f"2. HDF5 streaming writer (scale-offset chunks encoded in process): "
              f"{write_throughput(tmp, n, 128):.0f} MB/s of int8 spins in blocks of 128 "
              f"samples, {write_throughput(tmp, n // 4, 1):.0f} MB/s one sample at a time")
        print(f"3. mpiexec -n 2 vs -n 1, R={R}, about 7 s on one rank")
        for backend in backends:
            for size in ((L, 2 * L) if backend == "native" else (L,)):
                sweeps = 2000 if args.quick else {"numba": 40000, "native": 200000}[backend]
                sweeps = sweeps * L * L // (size * size)
                for ex, every in ((1, 10), (1, 100), (10, 100), (sweeps, sweeps)):
                    t1 = mpi_time(1, sweeps, tmp, backend, ex, every, size)
                    t2 = mpi_time(2, sweeps, tmp, backend, ex, every, size)
                    what = ("none" if ex == sweeps else
                            f"exchange every {ex:2d}, sample every {every:3d}")
                    print(f"   {backend:6s} L={size:3d}, {what:36s}: -n 1 {t1:5.2f} s, "
                          f"-n 2 {t2:5.2f} s: speedup {t1 / t2:.2f}x")
    domain_section(args.quick)


if __name__ == "__main__":
    main()
