/* Parallel tempering across MPI ranks in compiled code: libising_pt_mpi.so, loaded by
 * ising_dist/native.py when a run has more than one rank and uses the native kernels.
 *
 * Each rank holds a contiguous block of replica ids; every exchange round needs the energies
 * of all replicas, so the Python event loop would pay tens of microseconds per round, as
 * long as the sweeps between rounds take with fast kernels. Here a round costs one
 * exchange of R int64 energies; the exchange decisions (ising_exchange_round) use a stream
 * every rank evaluates identically, so the result does not depend on the rank count.
 *
 * When every rank runs on one node, the energies go through an MPI shared-memory window:
 * each rank writes its block and raises its round counter, then waits for everyone's
 * (0.1 us a round on 2 ranks here, against 1.3 us for MPI_Allgatherv, which synchronises
 * as much). Across nodes, MPI_Allgatherv.
 *
 * The library must call the same MPI library instance as the caller (mpi4py): the loader
 * checks ising_pt_mpi_initialized() == 1, which a second, uninitialised copy of MPI fails.
 */
#include <mpi.h>
#include <sched.h>
#include <stdatomic.h>
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

/* The shared-memory channel: a round counter per rank, one cache line each, then two
 * copies of the R energies, used by alternate rounds. Opened on first use for a
 * communicator and kept (a window costs a collective allocation), freed at MPI_Finalize. */
typedef struct {
    int checked;              /* whether `round` below was decided for comm, size, R */
    MPI_Comm comm;
    int rank, size;
    int64_t R;
    MPI_Win win;
    _Atomic int64_t *round;   /* NULL: no shared memory (ranks on several nodes) */
    int64_t *energies;
    int64_t seq;              /* rounds shared so far */
} shared_channel;

static shared_channel channel;

#define LINE 8  /* int64 per cache line */

static void close_channel(void)
{
    if (channel.round) {
        MPI_Win_unlock_all(channel.win);
        MPI_Win_free(&channel.win);  /* collective: every rank closes at the same point */
    }
    memset(&channel, 0, sizeof channel);
}

static int close_at_finalize(MPI_Comm comm, int keyval, void *value, void *extra)
{
    (void)comm, (void)keyval, (void)value, (void)extra;
    close_channel();
    return MPI_SUCCESS;
}

/* Collective: the channel for comm and R, opened when all ranks are on one node (and not
 * ISING_PT_SHM=0, set alike on every rank: tests use it for the path across nodes). */
static void open_channel(MPI_Comm comm, int64_t R)
{
    int size;
    MPI_Comm_size(comm, &size);
    if (channel.checked && channel.comm == comm && channel.size == size && channel.R == R)
        return;
    if (channel.checked)
        close_channel();
    else {  /* first use: free the window when MPI finalizes (it deletes COMM_SELF's attributes first) */
        int keyval;
        if (MPI_Comm_create_keyval(MPI_COMM_NULL_COPY_FN, close_at_finalize, &keyval, NULL) ==
            MPI_SUCCESS)
            MPI_Comm_set_attr(MPI_COMM_SELF, keyval, NULL);
    }
    channel.checked = 1;
    channel.comm = comm;
    channel.size = size;
    channel.R = R;
    MPI_Comm_rank(comm, &channel.rank);
    const char *use = getenv("ISING_PT_SHM");
    MPI_Comm node;
    int node_size = 0;
    if ((use && strcmp(use, "0") == 0) ||
        MPI_Comm_split_type(comm, MPI_COMM_TYPE_SHARED, 0, MPI_INFO_NULL, &node) != MPI_SUCCESS)
        return;
    MPI_Comm_size(node, &node_size);
    MPI_Comm_free(&node);
    if (node_size != size)  /* the same answer on every rank */
        return;
    const MPI_Aint bytes = channel.rank == 0 ? (MPI_Aint)((LINE * size + 2 * R) * 8) : 0;
    char *base = NULL;
    if (MPI_Win_allocate_shared(bytes, 8, MPI_INFO_NULL, comm, &base, &channel.win) !=
        MPI_SUCCESS)
        return;
    MPI_Aint got;
    int unit;
    MPI_Win_shared_query(channel.win, 0, &got, &unit, &base);
    MPI_Win_lock_all(MPI_MODE_NOCHECK, channel.win);
    channel.round = (_Atomic int64_t *)base;
    channel.energies = (int64_t *)base + LINE * size;
    if (channel.rank == 0)
        for (int p = 0; p < size; p++)
            atomic_store(&channel.round[LINE * p], -1);
    MPI_Barrier(comm);
    channel.seq = 0;
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
    shared_channel *ch = &channel;
    if (!ch->round) {
        const int err = MPI_Allgatherv(energy, c->n_local, MPI_INT64_T, energy_all, c->counts,
                                       c->displs, MPI_INT64_T, c->comm);
        return err == MPI_SUCCESS ? ISING_OK : 1000 + err;
    }
    /* a rank writes copy seq % 2 only after everyone has raised its counter to seq - 1,
     * i.e. has finished reading copy (seq - 2) % 2 */
    const int64_t seq = ch->seq++;
    int64_t *copy = ch->energies + (seq & 1) * ch->R;
    memcpy(copy + c->displs[ch->rank], energy, (size_t)c->n_local * sizeof *energy);
    atomic_store_explicit(&ch->round[LINE * ch->rank], seq, memory_order_release);
    for (int p = 0; p < ch->size; p++)
        for (long spins = 0;
             atomic_load_explicit(&ch->round[LINE * p], memory_order_acquire) < seq; spins++)
            if (spins > 4096)
                sched_yield();  /* more ranks than cores: let the others run */
    memcpy(energy_all, copy, (size_t)ch->R * sizeof *energy_all);
    return ISING_OK;
}

/* ising_pt_segment_ranks across the ranks of the communicator with Fortran handle comm_f:
 * counts/displs int [size] give every rank's block of replica ids; st->energy_all int64 [R]
 * is a work array (energies by id at the last exchange round). Collective: every rank calls
 * it with the same event table and global state. Returns 0, an ISING_E* code, or 1000 + the
 * MPI error code. */
int ising_pt_segment_mpi(int comm_f, const int *counts, const int *displs,
                         const ising_pt_state *st, int64_t sweep0, const int64_t *events,
                         int64_t n_events, const ising_pt_samples *out, int64_t *n_out,
                         int n_threads)
{
    share_ctx ctx = {MPI_Comm_f2c(comm_f), counts, displs, (int)st->R_local};
    open_channel(ctx.comm, st->R);
    return ising_pt_segment_ranks(st, sweep0, events, n_events, share_energies, &ctx, out,
                                  n_out, n_threads);
}
