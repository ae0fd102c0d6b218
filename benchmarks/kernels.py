"""Kernel benchmark: `python -m benchmarks.kernels [--quick]`.

Prints, measured in one run on this machine:
  1. Metropolis spin-flip attempts per ns for L = 64, 256, 1024 on 1 and 2 threads, and the
     ratio to a plain vectorised NumPy checkerboard (the baseline, same run);
  2. Wolff spins flipped per ns (clusters at Tc);
  3. at Tc for L = 16, 32, 64: τ_int of |m| and e in sweeps for Metropolis and Wolff, and the
     wall-clock cost of one independent sample (2·τ_int·time per sweep).
Wolff τ is converted to sweeps with the measured mean cluster size (sweeps = clusters·⟨|C|⟩/N).

`python -m benchmarks.kernels --backend cuda [--quick]` instead prints Metropolis flips per ns
at T = Tc for L = 1024 … 16384 on the GPU (lattice kept on the device; and with the host copies
of one call per sweep, as the tempering loop pays them) against the numba and native kernels
on all CPU threads, measured in the same run. Without a GPU it says so and times nothing.
"""

import argparse
import time

import numba
import numpy as np

from ising_dist import exact, kernels, observables
from ising_dist.engine import Chains, clusters_per_sweep, initial_lattice

TC = exact.TC


def numpy_checkerboard(spins, beta, rng, n_sweeps):
    """Baseline: a plain vectorised NumPy checkerboard Metropolis sweep."""
    L = spins.shape[0]
    ii, jj = np.indices((L, L))
    masks = [(ii + jj) % 2 == c for c in (0, 1)]
    # acceptance as in kernels.metropolis_thresholds (ΔE = 0: max(1/2, e^-4β))
    table = {0: max(0.5, np.exp(-4 * beta)), 4: np.exp(-4 * beta), 8: np.exp(-8 * beta)}
    for _ in range(n_sweeps):
        for mask in masks:
            h = (np.roll(spins, 1, 0) + np.roll(spins, -1, 0) + np.roll(spins, 1, 1)
                 + np.roll(spins, -1, 1))
            de = 2 * spins * h
            p = np.select([de == 0, de == 4, de == 8], [table[0], table[4], table[8]], 1.0)
            flip = mask & (rng.random((L, L)) < p)
            spins[flip] *= -1


def time_it(fn, min_seconds):
    fn()  # warm-up (and compilation)
    n, t = 0, 0.0
    t0 = time.perf_counter()
    while t < min_seconds:
        fn()
        n += 1
        t = time.perf_counter() - t0
    return t / n


def metropolis_rates(sizes, seconds):
    print("1. Metropolis checkerboard, attempts per ns at T = Tc")
    print(f"{'L':>6} {'numpy':>8} {'1 thread':>9} {'2 threads':>10} {'1t/numpy':>9} {'2t/1t':>6}")
    beta = 1 / TC
    thr = kernels.metropolis_thresholds(beta)
    for L in sizes:
        base = initial_lattice(L, 1).astype(np.int64)
        rng = np.random.default_rng(0)
        t_np = time_it(lambda: numpy_checkerboard(base, beta, rng, 1), seconds)
        rates = []
        for threads in (1, 2):
            numba.set_num_threads(threads)
            s = initial_lattice(L, 1)
            scratch = np.empty_like(s)
            sweeps = max(1, 2**22 // (L * L))
            def run():
                for t in range(sweeps):
                    kernels.metropolis_sweep(s, thr, np.uint64(9), t, scratch)
            rates.append(sweeps * L * L / time_it(run, seconds) / 1e9)
        numba.set_num_threads(numba.config.NUMBA_NUM_THREADS)
        r_np = L * L / t_np / 1e9
        print(f"{L:6d} {r_np:8.4f} {rates[0]:9.3f} {rates[1]:10.3f} {rates[0] / r_np:8.0f}x "
              f"{rates[1] / rates[0]:5.2f}x")


def autocorrelation_costs(sizes, sweeps_metropolis, sweeps_wolff):
    backend = Chains.create(4, 0, [0]).kern.name
    print(f"\n3. At Tc: tau_int in sweeps and wall time per independent sample (2 tau t_sweep),"
          f" {backend} kernels, one chain per thread")
    print(f"{'L':>4} {'algorithm':>10} {'tau |m|':>10} {'tau e':>8} {'t/sweep':>10} "
          f"{'t/indep. sample':>16}")
    for L in sizes:
        N = L * L
        for algorithm in ("metropolis", "wolff"):
            R = 2  # two independent chains, one per thread
            chains = Chains.create(L, 3, range(R))
            betas = np.full(R, 1 / TC)
            chains.advance(betas, 2000, 0, "metropolis")
            n_wolff, every, sweeps = 1, max(1, N // 256), sweeps_metropolis
            if algorithm == "wolff":
                size = chains.mean_cluster_size(betas, 2000).mean()
                n_wolff, every, sweeps = int(clusters_per_sweep(size, N)), 1, sweeps_wolff
            n = sweeps // every
            e, m = np.empty((R, n)), np.empty((R, n))
            flipped0 = chains.flipped.copy()
            for k in range(n):  # a sample every `every` sweeps
                chains.advance(betas, every, 2000 + k * every, algorithm, n_wolff=n_wolff)
                e[:, k], m[:, k] = chains.per_spin()
            # Wolff: sweeps really done = spins flipped / N (n_wolff clusters ≈ one sweep)
            per_step = every if algorithm == "metropolis" else \
                (chains.flipped - flipped0).mean() / n / N
            # time per sweep from one bulk call (no Python overhead per sweep), per chain
            bulk = max(1, 2**22 // N)
            t0 = time.perf_counter()
            chains.advance(betas, bulk, 10**9, algorithm, n_wolff=n_wolff)
            steps_per_chain_per_s = bulk / (time.perf_counter() - t0) * min(R, numba.get_num_threads()) / R
            t_sweep = 1.0 / steps_per_chain_per_s / (1.0 if algorithm == "metropolis" else per_step)
            tau_m = np.mean([observables.tau_int(np.abs(x))[0] for x in m]) * per_step
            tau_e = np.mean([observables.tau_int(x)[0] for x in e]) * per_step
            cost = 2 * max(tau_m, tau_e) * t_sweep
            print(f"{L:4d} {algorithm:>10} {tau_m:10.2f} {tau_e:8.2f} {t_sweep * 1e6:8.1f}us "
                  f"{cost * 1e3:14.3f}ms")


GPU_FLIPS_PER_CALL = 2**30  # sweeps timed per call on the GPU: launches queue, one sync


def cuda_rates(sizes, seconds):
    """Metropolis flips/ns on the GPU against the CPU backends (one lattice at Tc)."""
    from ising_dist import gpu, native
    if gpu.simulator():
        print("NUMBA_ENABLE_CUDASIM=1: numba's CUDA simulator is not a GPU; nothing timed "
              "(unset it on a machine with an NVIDIA GPU)")
        return
    if not gpu.available():
        print(f"no CUDA GPU here ({gpu.unavailable_reason()}); nothing timed. Run "
              "`python -m benchmarks.kernels --backend cuda` on a machine with an NVIDIA GPU.")
        return
    cpus = ["numba"] + (["native"] if native.available() else [])
    print(f"Metropolis at Tc, flips per ns: GPU {gpu.device_name()} against "
          f"{' and '.join(cpus)} on {numba.config.NUMBA_NUM_THREADS} CPU threads")
    print(f"{'L':>6} {'gpu':>9} {'gpu+copies':>11} " + " ".join(f"{c:>8}" for c in cpus)
          + " " + " ".join(f"{'gpu/' + c:>11}" for c in cpus))
    beta = 1 / TC
    thr = kernels.metropolis_thresholds(beta)
    key = np.uint64(9)
    for L in sizes:
        N = L * L
        spins = initial_lattice(L, 1)[None].copy()
        e = np.zeros(1, np.int64)
        m = np.zeros(1, np.int64)
        dev = gpu.DeviceReplicas(spins, thr[None].copy(), np.array([key]), e, m)
        sweeps = max(1, GPU_FLIPS_PER_CALL // N)

        def on_device():
            dev.advance(0, sweeps)
            dev.synchronize()
        rate_gpu = sweeps * N / time_it(on_device, seconds) / 1e9
        none = np.zeros(1, np.int64)
        rate_copies = N / time_it(lambda: gpu.advance_replicas(
            spins, thr[None], None, np.array([key]), None, None, 0, 1, 1, none, e, m, None),
            seconds) / 1e9
        rates = []
        for name in cpus:
            kern = native.select_backend(name)
            lat = initial_lattice(L, 1)
            scratch = np.empty_like(lat)
            rates.append(N / time_it(lambda: kern.metropolis_sweep(lat, thr, key, 0, scratch),
                                     seconds) / 1e9)
        print(f"{L:6d} {rate_gpu:9.2f} {rate_copies:11.3f} "
              + " ".join(f"{r:8.3f}" for r in rates) + " "
              + " ".join(f"{rate_gpu / r:10.1f}x" for r in rates))


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--quick", action="store_true", help="small sizes, short timings")
    ap.add_argument("--backend", choices=("cpu", "cuda"), default="cpu",
                    help="cuda: the GPU kernel against the CPU backends (L = 1024 … 16384)")
    args = ap.parse_args()
    if args.backend == "cuda":
        cuda_rates((1024, 2048) if args.quick else (1024, 2048, 4096, 8192, 16384),
                   0.3 if args.quick else 1.5)
        return
    sizes = (64, 256) if args.quick else (64, 256, 1024)
    seconds = 0.3 if args.quick else 1.5
    print(f"numba {numba.__version__}, threads available: {numba.config.NUMBA_NUM_THREADS}\n")
    metropolis_rates(sizes, seconds)
    print("\n2. Wolff at Tc, spins flipped per ns (one thread)")
    for L in sizes:
        chains = Chains.create(L, 1, [0])
        beta = np.array([1 / TC])
        chains.advance(beta, 500, 0, "metropolis")
        before = int(chains.flipped[0])
        t0 = time.perf_counter()
        calls = 0
        while time.perf_counter() - t0 < seconds:
            chains.advance(beta, 1, 0, "wolff", n_wolff=50)
            calls += 1
        rate = (int(chains.flipped[0]) - before) / (time.perf_counter() - t0) / 1e9
        print(f"{L:6d} {rate:8.3f} flips/ns  (mean cluster {(int(chains.flipped[0]) - before) / (50 * calls):.0f} spins)")
    if args.quick:
        autocorrelation_costs((16, 32), 50_000, 5_000)
    else:
        autocorrelation_costs((16, 32, 64), 400_000, 40_000)


if __name__ == "__main__":
    main()
