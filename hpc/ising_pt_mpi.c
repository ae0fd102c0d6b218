/* Parallel tempering across MPI ranks in compiled code: libising_pt_mpi.so, loaded by
 * ising_dist/native.py when a run has more than one rank and uses the native kernels.
 *
 * Each rank holds a contiguous block of replica ids; every exchange round needs the energies
 * of all replicas, so the Python event loop would pay tens of microseconds per round, as
 * long as the sweeps between rounds take with fast kernels. Here a round costs one
 * MPI_Allgatherv of R int64 energies; the exchange decisions (ising_exchange_round) use a
 * stream every rank evaluates identically, so the result does not depend on the rank count.
 *
 * The library must call the same MPI library instance as the caller (mpi4py): the loader
 * checks ising_pt_mpi_initialized() == 1, which a second, uninitialised copy of MPI fails.
 */
#include <mpi.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "ising_kernels.h"

int ising_pt_mpi_abi_version(void) { return ISING_ABI_VERSION; }

/* 1 when the MPI library this code calls is initialised (it is the caller's). */
int ising_pt_mpi_initialized(void)
{
    int flag = 0;
    MPI_Initialized(&flag);
    return flag;
}

/* MPI_Get_library_version of the MPI this code calls, into buf (len bytes). */
void ising_pt_mpi_library_version(char *buf, int len)
{
    char v[MPI_MAX_LIBRARY_VERSION_STRING];
    int n = 0;
    MPI_Get_library_version(v, &n);
    if (len < 1)
        return;
    if (n > len - 1)
        n = len - 1;
    memcpy(buf, v, (size_t)n);
    buf[n] = 0;
}

/* Smallest x > s with (x - offset) % every == 0 and x > offset. */
static int64_t next_event(int64_t s, int64_t every, int64_t offset)
{
    if (s < offset)
        return offset + every;
    return offset + ((s - offset) / every + 1) * every;
}

/* ising_pt_segment across the ranks of the communicator with Fortran handle comm_f: this
 * rank holds R_local replicas (ids id0 … id0+R_local-1; counts/displs int [size] give every
 * rank's block) of the R in the ladder. slot_of, exch, direction, round_trips and
 * energy_all (int64 [R], work array: energies by id at the last round) are global and kept
 * identical on every rank; spins, counters, energy, magnet, flipped and the keys are local.
 * Samples hold the local replicas: out_spins [capacity, R_local, L, L], out_energy,
 * out_magnet [capacity, R_local], out_slot int64 [capacity, R_local], out_sweep [capacity].
 * Collective: every rank calls it with the same sweep range and global state.
 * Returns 0, an ISING_E* code, or 1000 + the MPI error code. */
int ising_pt_segment_mpi(int comm_f, const int *counts, const int *displs, int64_t id0,
                         int8_t *spins, int64_t R_local, int64_t R, int64_t L,
                         const uint64_t *thr_slot, const uint64_t *padd_slot,
                         const int64_t *nw_slot, const double *beta_slot, const uint64_t *keys,
                         const uint64_t *wkeys, uint64_t *counters, int64_t *slot_of,
                         int64_t *exch, int8_t *direction, int64_t *round_trips, uint64_t xkey,
                         int64_t sweep0, int64_t sweep1, int64_t n_metropolis,
                         int64_t exchange_every, int64_t sample_every, int64_t thermalize,
                         int64_t *energy, int64_t *magnet, int64_t *flipped,
                         int64_t *energy_all, int8_t *out_spins, double *out_energy,
                         double *out_magnet, int64_t *out_slot, int64_t *out_sweep,
                         int64_t capacity, int64_t *n_out, int n_threads)
{
    *n_out = 0;
    if (R < 1 || R_local < 1 || id0 < 0 || id0 + R_local > R || sweep0 < 0 ||
        sweep1 < sweep0 || exchange_every < 1 || sample_every < 1 || thermalize < 0 ||
        capacity < 0)
        return ISING_EBADARG;
    for (int64_t k = 0; k < R; k++)
        if (slot_of[k] < 0 || slot_of[k] >= R)
            return ISING_EBADARG;
    MPI_Comm comm = MPI_Comm_f2c(comm_f);
    const int64_t N = L * L;
    uint64_t *thr = malloc((size_t)R_local * 2 * sizeof *thr);
    uint64_t *padd = malloc((size_t)R_local * sizeof *padd);
    int64_t *nw = malloc((size_t)R_local * sizeof *nw);
    int rc = (thr && padd && nw) ? ISING_OK : ISING_ENOMEM;
    int64_t s = sweep0;
    while (rc == ISING_OK && s < sweep1) {
        int64_t nxt = next_event(s, exchange_every, 0);
        const int64_t ns = next_event(s, sample_every, thermalize);
        if (ns < nxt)
            nxt = ns;
        if (sweep1 < nxt)
            nxt = sweep1;
        for (int64_t r = 0; r < R_local; r++) {
            const int64_t k = slot_of[id0 + r];
            thr[2 * r] = thr_slot[2 * k];
            thr[2 * r + 1] = thr_slot[2 * k + 1];
            padd[r] = padd_slot[k];
            nw[r] = nw_slot[k];
        }
        rc = ising_advance_replicas(spins, R_local, L, thr, padd, keys, wkeys, counters, s,
                                    nxt - s, n_metropolis, nw, energy, magnet, flipped,
                                    n_threads);
        s = nxt;
        if (rc != ISING_OK || s == sweep1)
            break;
        if (s % exchange_every == 0) {
            const int err = MPI_Allgatherv(energy, (int)R_local, MPI_INT64_T, energy_all,
                                           counts, displs, MPI_INT64_T, comm);
            if (err != MPI_SUCCESS) {
                rc = 1000 + err;
                break;
            }
            rc = ising_exchange_round(R, s / exchange_every, xkey, beta_slot, energy_all,
                                      slot_of, exch, direction, round_trips);
        }
        if (rc == ISING_OK && s > thermalize && (s - thermalize) % sample_every == 0) {
            const int64_t j = *n_out;
            if (j >= capacity) {
                rc = ISING_EBADARG;
                break;
            }
            memcpy(out_spins + j * R_local * N, spins, (size_t)(R_local * N));
            for (int64_t r = 0; r < R_local; r++) {
                out_energy[j * R_local + r] = (double)energy[r] / (double)N;
                out_magnet[j * R_local + r] = (double)magnet[r] / (double)N;
                out_slot[j * R_local + r] = slot_of[id0 + r];
            }
            out_sweep[j] = s;
            *n_out = j + 1;
        }
    }
    free(nw);
    free(padd);
    free(thr);
    return rc;
}
