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

typedef struct {
    MPI_Comm comm;
    const int *counts, *displs;
    int n_local;
} share_ctx;

/* Every rank's energies, by replica id (ising_share_fn). */
static int share_energies(void *ctx, const int64_t *energy, int64_t *energy_all)
{
    const share_ctx *c = ctx;
    const int err = MPI_Allgatherv(energy, c->n_local, MPI_INT64_T, energy_all, c->counts,
                                   c->displs, MPI_INT64_T, c->comm);
    return err == MPI_SUCCESS ? ISING_OK : 1000 + err;
}

/* ising_pt_segment_ranks across the ranks of the communicator with Fortran handle comm_f:
 * counts/displs int [size] give every rank's block of replica ids; energy_all int64 [R] is
 * a work array (energies by id at the last exchange round). Collective: every rank calls it
 * with the same sweep range and global state. Returns 0, an ISING_E* code, or 1000 + the
 * MPI error code. */
int ising_pt_segment_mpi(int comm_f, const int *counts, const int *displs, int8_t *spins,
                         int64_t R_local, int64_t id0, int64_t R, int64_t L,
                         const uint64_t *thr_slot, const uint64_t *padd_slot,
                         const int64_t *nw_slot, const double *beta_slot, const uint64_t *keys,
                         const uint64_t *wkeys, uint64_t *counters, int64_t *slot_of,
                         int64_t *exch, int8_t *direction, int64_t *round_trips, uint64_t xkey,
                         int64_t sweep0, int64_t sweep1, int64_t n_metropolis,
                         int64_t exchange_every, int64_t sample_every, int64_t thermalize,
                         int64_t *energy, int64_t *magnet, int64_t *flipped,
                         int64_t *energy_all, uint8_t *out_spins, double *out_energy,
                         double *out_magnet, int64_t *out_slot, int64_t *out_sweep,
                         int64_t capacity, int64_t *n_out, int n_threads)
{
    share_ctx ctx = {MPI_Comm_f2c(comm_f), counts, displs, (int)R_local};
    return ising_pt_segment_ranks(spins, R_local, id0, R, L, thr_slot, padd_slot, nw_slot,
                                  beta_slot, keys, wkeys, counters, slot_of, exch, direction,
                                  round_trips, xkey, sweep0, sweep1, n_metropolis,
                                  exchange_every, sample_every, thermalize, energy, magnet,
                                  flipped, energy_all, share_energies, &ctx, out_spins,
                                  out_energy, out_magnet, out_slot, out_sweep, capacity, n_out,
                                  n_threads);
}
