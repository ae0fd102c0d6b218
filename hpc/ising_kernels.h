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

#define ISING_ABI_VERSION 5

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

/* Parallel tempering of a block of replicas (ising_pt_segment_ranks).
 *
 * The state, as kernels.SegmentState when one rank holds all R replicas (R_local = R,
 * id0 = 0). Several ranks: this rank holds ids id0 … id0+R_local-1 of R; the per-replica
 * arrays are local rows, the exchange state is global and kept identical on every rank. */
typedef struct {
    int64_t L, R;              /* lattice size (even), replicas in all */
    int64_t R_local, id0;      /* this rank's block of replica ids */
    /* per local replica, row r = id id0 + r */
    int8_t *spins;             /* [R_local, L, L] */
    const uint64_t *keys, *wkeys;  /* [R_local] Metropolis / Wolff stream keys */
    uint64_t *counters;        /* [R_local] Wolff stream positions */
    int64_t *energy, *magnet, *flipped;  /* [R_local] totals */
    /* per temperature slot */
    const uint64_t *thr_slot;  /* [R, 3] */
    const uint64_t *padd_slot; /* [R] */
    const int64_t *nw_slot;    /* [R] Wolff clusters per step */
    const double *beta_slot;   /* [R] */
    int64_t n_metropolis;      /* Metropolis sweeps per step */
    /* exchange state, global (as in ising_exchange_round) */
    uint64_t xkey;
    int64_t *slot_of;          /* [R] */
    int64_t *exch;             /* [4, R-1] */
    int8_t *direction;         /* [R] */
    int64_t *round_trips;      /* [R] */
    int64_t *energy_all;       /* [R] work array, energies by id (R_local < R), else NULL */
} ising_pt_state;

/* Samples of the local replicas: sample j, row r: spins uint8 [capacity, R_local, L·L/4]
 * its lattice packed as ising_pack_spins does, energy, magnet double [capacity, R_local]
 * per spin, slot int64 [capacity, R_local] its temperature slot; sweep int64 [capacity]. */
typedef struct {
    uint8_t *spins;
    double *energy, *magnet;
    int64_t *slot, *sweep;
    int64_t capacity;
} ising_pt_samples;

/* Flags of an event table row (kernels.EXCHANGE, kernels.SAMPLE). */
#define ISING_EVENT_EXCHANGE 1
#define ISING_EVENT_SAMPLE 2

/* Before each exchange round of several ranks, share(share_ctx, energy, energy_all) must
 * fill energy_all int64 [R] with every replica's energy by id (shared memory or
 * MPI_Allgatherv: libising_pt_mpi.so) and return 0, else its error code is returned. */
typedef int (*ising_share_fn)(void *share_ctx, const int64_t *energy, int64_t *energy_all);

/* From sweep0 through the event table events int64 [n_events, 3], rows (sweep, flags,
 * exchange round), sweeps strictly ascending after sweep0 (built by ising_dist.tempering
 * from its triggers): for each row in turn, every local replica advances to its sweep at
 * the parameters of its slot (as ising_advance_replicas), then an exchange round with that
 * round index if flags has ISING_EVENT_EXCHANGE (as ising_exchange_round), then a sample
 * into out if flags has ISING_EVENT_SAMPLE. Equivalent to kernels.pt_segment when one rank
 * holds all replicas (share = NULL). *n_out receives the number of samples (ISING_EBADARG
 * when more than out->capacity would be needed, or for a bad state or table). share may be
 * NULL only when R_local == R. */
int ising_pt_segment_ranks(const ising_pt_state *st, int64_t sweep0, const int64_t *events,
                           int64_t n_events, ising_share_fn share, void *share_ctx,
                           const ising_pt_samples *out, int64_t *n_out, int n_threads);

/* Pack n spins (n a multiple of 4, values -1, 0, 1) two bits each, code s + 1, four a
 * byte, the first in the most significant bits (codec.pack_spins): out uint8 [n / 4].
 * The body of HDF5's scale-offset encoding of int8 at minbits=2, minval=-1. */
void ising_pack_spins(const int8_t *spins, int64_t n, uint8_t *out);

/* Totals of one lattice: *e = -Σ s_ij (s_i,j+1 + s_i+1,j), *m = Σ s_ij. */
int ising_energy_magnetization(const int8_t *spins, int64_t L, int64_t *e, int64_t *m);

#ifdef __cplusplus
}
#endif

#endif
