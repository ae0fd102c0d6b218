"""Native (C/OpenMP) vs numba Metropolis and Wolff throughput, printed as ratios from one run.

    python -m benchmarks.native [--sizes 64 256 1024] [--threads 1 2] [--seconds 0.5]
                                [--wolff-sizes 16 32 64]

Three workloads per lattice size L and thread count:
  sweep    one lattice, one checkerboard sweep per call, rows split over threads
           (kernels.metropolis_sweep vs native.metropolis_sweep; includes the call overhead)
  batched  R = 2·threads replicas, 10 sweeps per call, replicas split over threads
           (kernels.advance_replicas vs native.advance_replicas; what the PT engine calls)
  wolff    the same with Wolff clusters only (about N flipped spins per step at Tc);
           only for L <= --wolff-max-L (default 256: L = 1024 takes minutes)
Throughput is in spin-flip attempts per nanosecond (N·sweeps / wall time), for wolff in
flipped spins per nanosecond, from the fastest call; the backends take turns in five rounds
so that load from other processes hits both alike: the ratio native/numba is the figure
that matters. Threads wait for each other at barriers, so 2-thread figures on a machine
whose cores are busy with other work are noisy for both backends; there, run with
OMP_WAIT_POLICY=PASSIVE (numba's threading layer is OpenMP too, so it affects both alike).
The native library gives each sweep thread at least 4096 sites
(ising_set_min_sites_per_thread), so "2 threads" at L = 64 means one thread there.

Last, the cost of a Wolff cluster update at Tc on one thread for --wolff-sizes: nanoseconds
per flipped spin, numba and native, from calls of about 2^16 flipped spins (so the Python
call overhead does not count), and their ratio; the native kernel's target is <= 15 ns.
"""

import argparse
import os
import platform
import time

import numba
import numpy as np

from ising_dist import kernels, native

BETA = 0.4406868  # 1/Tc: the temperature where the acceptance branch matters most


def compare(fns, sites_per_call, seconds, rounds=5):
    """Best attempts/ns of each ``fn(t)`` in ``fns`` (t = call number, so every call draws
    new random numbers); sites_per_call None: each call returns its own count.

    Every call is timed on its own and the fastest counts (as timeit advises: slower calls
    measure other processes, not the code). The backends take turns, rounds times, so a
    burst of load cannot favour one of them."""
    best = dict.fromkeys(fns, 0.0)
    calls = dict.fromkeys(fns, 0)
    for fn in fns.values():
        fn(0)  # warm-up: numba compilation, page faults
    for _ in range(rounds):
        for name, fn in fns.items():
            t_end = time.perf_counter() + seconds / rounds
            while True:
                calls[name] += 1
                t0 = time.perf_counter()
                done = fn(calls[name])
                dt = time.perf_counter() - t0
                best[name] = max(best[name], (sites_per_call or done) / dt / 1e9)
                if time.perf_counter() >= t_end and calls[name] >= 2:
                    break
    return best


def sweep_workload(backend, L, threads):
    rng = np.random.default_rng(1)
    s = (2 * rng.integers(0, 2, (L, L)) - 1).astype(np.int8)
    scratch = np.empty_like(s)
    thr = kernels.metropolis_thresholds(BETA)
    key = np.uint64(12345)
    if backend == "numba":
        return lambda t: kernels.metropolis_sweep(s, thr, key, t, scratch)
    return lambda t: native.metropolis_sweep(s, thr, key, t, scratch, n_threads=threads)


def batched_workload(backend, L, threads, n_sweeps=10):
    R = 2 * threads
    rng = np.random.default_rng(2)
    spins = (2 * rng.integers(0, 2, (R, L, L)) - 1).astype(np.int8)
    thr = np.stack([kernels.metropolis_thresholds(BETA)] * R)
    padd = np.zeros(R, np.uint64)
    keys = np.arange(1, R + 1, dtype=np.uint64)
    counters = np.zeros(R, np.uint64)
    n_wolff = np.zeros(R, np.int64)
    energy, magnet, flipped = (np.zeros(R, np.int64) for _ in range(3))
    args = (spins, thr, padd, keys, keys, counters)
    tail = (energy, magnet, flipped)
    if backend == "numba":
        def run(t):
            kernels.advance_replicas(*args, t * n_sweeps, n_sweeps, 1, n_wolff, *tail)
    else:
        def run(t):
            native.advance_replicas(*args, t * n_sweeps, n_sweeps, 1, n_wolff, *tail,
                                    n_threads=threads)
    return run, R * L * L * n_sweeps


def wolff_workload(backend, L, threads, steps=2):
    """Wolff-only steps at Tc on R = 2·threads thermalized replicas, `steps` steps per call;
    returns (fn, None): the rate is measured from the flipped-spin counter instead of a
    fixed site count."""
    from ising_dist.engine import Chains, clusters_per_sweep

    R = 2 * threads
    betas = np.full(R, 1.0 / 2.269185)
    chains = Chains.create(L, 3, range(R))
    chains.advance(betas, 100, 0, "metropolis")
    n_wolff = np.full(R, clusters_per_sweep(chains.mean_cluster_size(betas, 20).mean(), L * L),
                      np.int64)
    thr = np.stack([kernels.metropolis_thresholds(b) for b in betas])
    padd = np.array([kernels.wolff_threshold(b) for b in betas], np.uint64)
    args = (chains.spins, thr, padd, chains.keys, chains.wkeys, chains.counters)
    tail = (chains.energy, chains.magnet, chains.flipped)
    kw = {} if backend == "numba" else {"n_threads": threads}
    fn = kernels.advance_replicas if backend == "numba" else native.advance_replicas

    def run(t):
        before = int(chains.flipped.sum())
        fn(*args, 0, steps, 0, n_wolff, *tail, **kw)
        return int(chains.flipped.sum()) - before
    return run, None


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--sizes", type=int, nargs="+", default=[64, 256, 1024])
    p.add_argument("--threads", type=int, nargs="+", default=[1, 2])
    p.add_argument("--wolff-max-L", type=int, default=256)
    p.add_argument("--wolff-sizes", type=int, nargs="+", default=[16, 32, 64],
                   help="sizes of the Wolff ns-per-flipped-spin figure (one thread)")
    p.add_argument("--seconds", type=float, default=0.5,
                   help="timing per backend per figure (default 0.5)")
    args = p.parse_args(argv)
    if not native.available():
        raise SystemExit(f"native library not built: run `{native.BUILD_HINT}` first")
    max_numba = numba.config.NUMBA_NUM_THREADS
    print(f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores; numba "
          f"{numba.__version__} ({max_numba} threads max); native SIMD width "
          f"{native.library().ising_simd_width()} bits; beta = {BETA}")
    print(f"{'workload':8} {'L':>5} {'thr':>3} {'numba':>9} {'native':>9} {'ratio':>7}   "
          f"(flip attempts per ns)")
    ratios = {}
    for L in args.sizes:
        for threads in args.threads:
            numba.set_num_threads(min(threads, max_numba))
            for workload in ("sweep", "batched", "wolff"):
                if workload == "wolff" and L > args.wolff_max_L:
                    continue
                fns = {}
                for backend in ("numba", "native"):
                    if workload == "sweep":
                        fns[backend], sites = sweep_workload(backend, L, threads), L * L
                    elif workload == "batched":
                        fns[backend], sites = batched_workload(backend, L, threads)
                    else:
                        fns[backend], sites = wolff_workload(backend, L, threads)
                rate = compare(fns, sites, args.seconds)
                ratio = rate["native"] / rate["numba"]
                ratios[(workload, L, threads)] = ratio
                print(f"{workload:8} {L:5d} {threads:3d} {rate['numba']:9.3f} "
                      f"{rate['native']:9.3f} {ratio:6.2f}x", flush=True)
    numba.set_num_threads(max_numba)
    for workload in ("sweep", "batched", "wolff"):
        r = np.array([v for k, v in ratios.items() if k[0] == workload])
        if not len(r):
            continue
        print(f"{workload:8} native/numba: geometric mean {np.exp(np.log(r).mean()):.2f}x, "
              f"range {r.min():.2f}x to {r.max():.2f}x over {len(r)} figures")
    ratios.update(wolff_cost(args.wolff_sizes, args.seconds))
    return ratios


WOLFF_TARGET_NS = 15.0  # native, per flipped spin, one core, near Tc


def wolff_cost(sizes, seconds):
    """Print and return {("wolff_ns", L, backend): ns per flipped spin} of Wolff clusters at
    Tc on one thread (numba's threads set to 1), calls of about 2^16 flipped spins."""
    numba.set_num_threads(1)
    print(f"\nWolff at Tc, one thread: ns per flipped spin (target native <= "
          f"{WOLFF_TARGET_NS:.0f} ns)")
    print(f"{'L':>5} {'numba':>8} {'native':>8} {'numba/native':>13}")
    out = {}
    for L in sizes:
        steps = max(2, 2**16 // (L * L))
        fns = {b: wolff_workload(b, L, 1, steps)[0] for b in ("numba", "native")}
        rate = compare(fns, None, seconds)
        ns = {b: 1.0 / rate[b] for b in fns}
        out.update({("wolff_ns", L, b): v for b, v in ns.items()})
        print(f"{L:5d} {ns['numba']:8.1f} {ns['native']:8.1f} {ns['numba'] / ns['native']:12.2f}x"
              f"{'' if ns['native'] <= WOLFF_TARGET_NS else '   above target'}", flush=True)
    numba.set_num_threads(numba.config.NUMBA_NUM_THREADS)
    return out


if __name__ == "__main__":
    main()
