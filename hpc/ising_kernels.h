/* Native (C99 + OpenMP) kernels for the 2D Ising model, callable through ctypes.
 *
 * Bit-identical to the numba kernels of ising_dist/kernels.py: same lattice layout
 * (int8 [L, L], ±1, periodic, L even), same counter-based SplitMix64 streams, same order of
 * random-number use, same integer totals (E = -Σ right+down bonds, M = Σ s).
 *
 *   Metropolis: the random number of site (i, j) in sweep t is rand64(key, t·N + i·L + j);
 *               a move with ΔE < 0 is accepted; top 32 bits < thr[0], thr[1], thr[2]
 *               accepts ΔE = 0, 4, 8. The kernels require thr[2] <= thr[1] <= thr[0], which
 *               kernels.metropolis_thresholds satisfies (thr0 = floor(max(1/2, e^-4β)·2^32),
 *               thr4, thr8 = floor(e^-βΔE·2^32); see there why ΔE = 0 is not always accepted).
 *   Wolff:      a sequential stream rand64(wkey, counter++), counter owned by the caller.
 *
 * All functions return 0 on success or a negative ISING_E* code; they never print or exit.
 * n_threads <= 0 means "OpenMP's default" (OMP_NUM_THREADS or the number of cores).
 */
#ifndef ISING_KERNELS_H
#define ISING_KERNELS_H

#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

#define ISING_ABI_VERSION 4

#define ISING_OK 0
#define ISING_EBADSIZE (-1)   /* L odd or L < 2 */
#define ISING_ENOMEM (-2)     /* work-array allocation failed */
#define ISING_EBADARG (-3)    /* negative count or sweep index, or thresholds not nested */

/* ABI version of this library (the Python loader refuses a mismatch). */
int ising_abi_version(void);

/* Threads an OpenMP parallel region would use by default (1 without OpenMP). */
int ising_max_threads(void);

/* 512 when the AVX-512 row kernels were compiled in, 0 for the portable C99 ones. */
int ising_simd_width(void);

/* A row-parallel sweep uses at most L·L / n threads (default n = 4096: smaller lattices
 * are faster on one thread). Results do not depend on it. Returns the previous value;
 * n < 1 leaves it unchanged. Process-wide, not thread-safe: set it before sweeping. */
int64_t ising_set_min_sites_per_thread(int64_t n);

/* One checkerboard Metropolis sweep of one lattice, rows split over n_threads.
 * spins int8 [L*L] updated in place; scratch int8 [L*L] work array (its contents are
 * overwritten); sweep_index >= 0 selects the random numbers (counters
 * sweep_index·N + i·L + j). thr0, thr4, thr8: thresholds on a 32-bit uniform for ΔE = 0, 4
 * and 8. *de, *dm receive the change of the energy and magnetization totals. */
int ising_metropolis_sweep(int8_t *spins, int64_t L, uint64_t thr0, uint64_t thr4,
                           uint64_t thr8, uint64_t key, int64_t sweep_index, int8_t *scratch,
                           int n_threads, int64_t *de, int64_t *dm);

/* Advance R independent replicas, equivalent to kernels.advance_replicas:
 * spins int8 [R, L, L]; thr uint64 [R, 3]; padd uint64 [R]; keys, wkeys uint64 [R];
 * counters uint64 [R] (Wolff stream positions, updated); n_wolff int64 [R];
 * energy, magnet, flipped int64 [R] running totals (updated).
 * One step = n_metropolis sweeps with indices (sweep0 + t)·n_metropolis + k, then
 * n_wolff[r] Wolff clusters. Replicas are split over threads; when there are fewer
 * replicas than threads the Metropolis sweeps are row-parallel instead. */
int ising_advance_replicas(int8_t *spins, int64_t R, int64_t L, const uint64_t *thr,
                           const uint64_t *padd, const uint64_t *keys, const uint64_t *wkeys,
                           uint64_t *counters, int64_t sweep0, int64_t n_sweeps,
                           int64_t n_metropolis, const int64_t *n_wolff, int64_t *energy,
                           int64_t *magnet, int64_t *flipped, int n_threads);

/* One round of parallel-tempering exchanges, equivalent to kernels.exchange_round:
 * pairs of slots (k, k+1), k = round_index % 2, +2, ...; accept when
 * delta = (beta_slot[k] - beta_slot[k+1])·(E_a - E_b) >= 0 or u < exp(delta), with
 * u = (rand64(xkey, round_index·R + k) >> 11)·2^-53. beta_slot double [R]; energy int64 [R]
 * by replica id; slot_of int64 [R] (updated); exch int64 [4, R-1] attempted, accepted,
 * window attempted, window accepted (updated); direction int8 [R], round_trips int64 [R]
 * (updated: a replica back at the lowest T after visiting the highest completes a trip). */
int ising_exchange_round(int64_t R, int64_t round_index, uint64_t xkey, const double *beta_slot,
                         const int64_t *energy, int64_t *slot_of, int64_t *exch,
                         int8_t *direction, int64_t *round_trips);

/* Parallel tempering of a block of replicas, equivalent to kernels.pt_segment when one rank
 * holds all R (R_local = R, id0 = 0, share = NULL): from sweep0 to sweep1, for every sweep
 * s with sweep0 < s < sweep1, an exchange round when s % exchange_every == 0, then a sample
 * into out_* when s > thermalize and (s - thermalize) % sample_every == 0. Per-slot
 * parameters thr_slot [R, 3], padd_slot [R], nw_slot [R], beta_slot [R]. Sample j, row r
 * (local replica r): out_spins uint8 [capacity, R_local, L·L/4] its lattice packed as
 * ising_pack_spins does, out_energy, out_magnet
 * double [capacity, R_local] per spin, out_slot int64 [capacity, R_local] its slot,
 * out_sweep int64 [capacity]; *n_out receives the number of samples (ISING_EBADARG when
 * more than capacity would be needed).
 * Several ranks: this rank holds ids id0 … id0+R_local-1 of R; spins, keys, wkeys, counters,
 * energy, magnet, flipped and the samples are local; slot_of, exch, direction, round_trips
 * are global and kept identical on every rank. Before each exchange round
 * share(share_ctx, energy, energy_all) must fill energy_all int64 [R] with every replica's
 * energy by id (shared memory or MPI_Allgatherv: libising_pt_mpi.so) and return 0, else its error code is
 * returned. share may be NULL only when R_local == R. Other arguments as in
 * ising_advance_replicas and ising_exchange_round. */
typedef int (*ising_share_fn)(void *share_ctx, const int64_t *energy, int64_t *energy_all);
int ising_pt_segment_ranks(int8_t *spins, int64_t R_local, int64_t id0, int64_t R, int64_t L,
                           const uint64_t *thr_slot, const uint64_t *padd_slot,
                           const int64_t *nw_slot, const double *beta_slot,
                           const uint64_t *keys, const uint64_t *wkeys, uint64_t *counters,
                           int64_t *slot_of, int64_t *exch, int8_t *direction,
                           int64_t *round_trips, uint64_t xkey, int64_t sweep0, int64_t sweep1,
                           int64_t n_metropolis, int64_t exchange_every, int64_t sample_every,
                           int64_t thermalize, int64_t *energy, int64_t *magnet,
                           int64_t *flipped, int64_t *energy_all, ising_share_fn share,
                           void *share_ctx, uint8_t *out_spins, double *out_energy,
                           double *out_magnet, int64_t *out_slot, int64_t *out_sweep,
                           int64_t capacity, int64_t *n_out, int n_threads);

/* Pack n spins (n a multiple of 4, values -1, 0, 1) two bits each, code s + 1, four a
 * byte, the first in the most significant bits (kernels.pack_spins): out uint8 [n / 4].
 * The body of HDF5's scale-offset encoding of int8 at minbits=2, minval=-1. */
void ising_pack_spins(const int8_t *spins, int64_t n, uint8_t *out);

/* Totals of one lattice: *e = -Σ s_ij (s_i,j+1 + s_i+1,j), *m = Σ s_ij. */
int ising_energy_magnetization(const int8_t *spins, int64_t L, int64_t *e, int64_t *m);

#ifdef __cplusplus
}
#endif

#endif
