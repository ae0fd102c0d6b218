"""Parallel-tempering benchmark: `python -m benchmarks.pt [--quick]`.

Prints, measured in one run:
  1. kernel-only replica sweeps/s vs the full PT loop (exchange + streaming + checkpoints)
     at L=64, R=16, one process with 1 numba thread — the overhead ratio (bar: < 1.05);
  2. HDF5 write throughput of the streaming writer (MB/s of int8 spins);
  3. speedup of `mpiexec -n 2` over `-n 1` at fixed R (bar on 2 cores: >= 1.7x).
"""

import argparse
import os
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numba
import numpy as np

from ising_dist.config import PTConfig
from ising_dist.engine import Chains
from ising_dist.mpi import SerialComm
from ising_dist.pt import ParallelTempering
from ising_dist.store import GatherWriter, RunWriter

L, R = 64, 16


def kernel_only(sweeps):
    chains = Chains.create(L, 1, range(R))  # the same kernels ("auto") as the PT loop
    betas = 1.0 / np.geomspace(1.8, 3.0, R)
    chains.advance(betas, 10, 0)
    t0 = time.perf_counter()
    chains.advance(betas, sweeps, 10)
    return sweeps / (time.perf_counter() - t0)


def full_loop(sweeps, exchange_every, tmp, sample_every=10):
    cfg = PTConfig(L=L, replicas=R, tmin=1.8, tmax=3.0, thermalize=0, sweeps=sweeps,
                   sample_every=sample_every, exchange_every=exchange_every,
                   checkpoint_every=1000, progress=False,
                   out=str(tmp / f"loop{exchange_every}_{sample_every}.h5"))
    cfg.validate()
    comm = SerialComm()
    writer = GatherWriter(comm, RunWriter.create(cfg.out, "bench", L, 1,
                                                 cfg.ladder_temperatures(), overwrite=True))
    pt = ParallelTempering(cfg, comm, None, writer)
    t0 = time.perf_counter()
    pt.run()
    writer.close()
    return sweeps / (time.perf_counter() - t0)


def write_throughput(tmp, samples):
    T = np.geomspace(1.8, 3.0, R)
    writer = RunWriter.create(tmp / "write.h5", "bench", L, 1, T, overwrite=True)
    rng = np.random.default_rng(0)
    spins = [(2 * rng.integers(0, 2, (R, L, L)) - 1).astype(np.int8) for _ in range(8)]
    e = np.zeros(R)
    rep = np.arange(R, dtype=np.int32)
    t0 = time.perf_counter()
    for k in range(samples):
        writer.append(k, spins[k % 8], e, e, rep)
    writer.close()
    dt = time.perf_counter() - t0
    return samples * R * L * L / dt / 1e6


def mpi_time(ranks, sweeps, tmp, backend):
    root = Path(__file__).resolve().parents[1]
    bindir = Path(sys.executable).parent
    env = dict(os.environ, NUMBA_NUM_THREADS="1", MPIR_CVAR_CH4_PROGRESS_THROTTLE="1",
               PATH=f"{bindir}:{os.environ['PATH']}")
    cmd = [str(bindir / "mpiexec"), "-n", str(ranks), sys.executable, "-m", "ising_dist.pt",
           "--L", str(L), "--replicas", str(R), "--thermalize", "0", "--sweeps", str(sweeps),
           "--sample-every", "100", "--exchange-every", "10", "--no-progress", "--overwrite",
           "--backend", backend, "--out", str(tmp / f"mpi{ranks}.h5")]
    out = subprocess.run(cmd, env=env, cwd=root, capture_output=True, text=True, check=True)
    return float(re.search(r"in ([0-9.]+) s", out.stdout).group(1))


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--quick", action="store_true")
    args = ap.parse_args()
    sweeps = 500 if args.quick else 20000
    numba.set_num_threads(1)
    with tempfile.TemporaryDirectory() as d:
        tmp = Path(d)
        full_loop(20, 1, tmp)  # compile everything once
        kernel_only(100)
        k = max(kernel_only(sweeps) for _ in range(3))
        name = Chains.create(4, 0, [0]).kern.name
        print(f"1. L={L}, R={R}, one process, 1 thread, {name} kernels: kernel-only {k:.1f} "
              f"sweeps/s (all replicas)")
        # the spins stream at R·L² bytes per sample: with fast kernels and frequent samples the
        # HDF5 write rate (item 2), not the loop, sets the pace
        for ex, every in ((1, 10), (10, 10), (10, 100), (100, 100)):
            f = full_loop(sweeps, ex, tmp, every)
            print(f"   full PT loop, exchange every {ex:3d}, sample every {every:3d} sweeps: "
                  f"{f:8.1f} sweeps/s, overhead ratio {k / f:.3f}")
        mbs = write_throughput(tmp, 200 if args.quick else 2000)
        print(f"2. HDF5 streaming writer: {mbs:.0f} MB/s of int8 spins (scale-offset filter)")
        for backend in ("numba", "native"):
            t1 = mpi_time(1, sweeps, tmp, backend)
            t2 = mpi_time(2, sweeps, tmp, backend)
            print(f"3. {backend:6s} kernels, mpiexec -n 1: {t1:.2f} s, -n 2: {t2:.2f} s for "
                  f"{sweeps} sweeps of R={R} (exchange every 10, sample every 100): "
                  f"speedup {t1 / t2:.2f}x")


if __name__ == "__main__":
    main()
