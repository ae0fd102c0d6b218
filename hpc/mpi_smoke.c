/* MPI toolchain smoke test: the MPI found by CMake compiles, links and runs under its
 * mpiexec. Every rank contributes its rank to an allreduce; the sum must be n(n-1)/2. */
#include <mpi.h>
#include <stdio.h>

int main(int argc, char **argv)
{
    MPI_Init(&argc, &argv);
    int rank, size;
    MPI_Comm_rank(MPI_COMM_WORLD, &rank);
    MPI_Comm_size(MPI_COMM_WORLD, &size);
    long mine = rank, sum = -1;
    MPI_Allreduce(&mine, &sum, 1, MPI_LONG, MPI_SUM, MPI_COMM_WORLD);
    const int ok = sum == (long)size * (size - 1) / 2;
    if (rank == 0)
        printf("mpi_smoke: %d ranks, allreduce %s\n", size, ok ? "ok" : "WRONG");
    MPI_Finalize();
    return ok ? 0 : 1;
}
