"""The only module that imports mpi4py. Without mpiexec (or without mpi4py) it falls back to a
serial communicator of size 1, so every code path also runs in a plain Python process.

Only the few collective operations the package needs are exposed, on Python objects (and one
on numpy rows, for the per-event energy exchange of parallel tempering).
"""

import os
import sys
import time

import numpy as np

_SERIAL_HINT = "not launched by mpiexec/srun"
ABORT_GRACE_S = 0.3  # seconds between printing an error and MPI_Abort (see MPIComm.abort)


def _launched_by_mpi():
    env = os.environ
    return any(k in env for k in ("PMI_RANK", "PMI_SIZE", "PMI_FD", "PMIX_RANK",
                                  "OMPI_COMM_WORLD_SIZE", "MPI_LOCALNRANKS", "HYDI_CONTROL_FD")) \
        or int(env.get("SLURM_STEP_NUM_TASKS", "1")) > 1


def _flush_output():
    """Flush stdout and stderr (what was printed before an abort reaches the user)."""
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except (OSError, ValueError):  # closed or broken pipe: nothing more can be shown
            pass


class SerialComm:
    """Size-1 stand-in with the same methods as :class:`MPIComm`."""
    rank = 0
    size = 1
    mpi = None

    def bcast(self, obj, root=0):
        return obj

    def gather(self, obj, root=0):
        return [obj]

    def allgather(self, obj):
        return [obj]

    def allreduce_max(self, value):
        return value

    def allgather_array(self, row):
        """Rows of every rank stacked: [size, *row.shape] (same shape and dtype everywhere)."""
        return row[None].copy()

    def gather_blocks(self, a, root=0):
        """Every rank's array [k, n_rank, ...], a list by rank on root, else None."""
        return [a]

    def barrier(self):
        pass

    def abort(self, code=1):
        """Exit now, without clean-up (e.g. of an HDF5 file whose writes failed)."""
        _flush_output()
        os._exit(code)


class MPIComm:
    """COMM_WORLD of mpi4py with the methods of :class:`SerialComm`."""

    def __init__(self, MPI):
        self.mpi = MPI
        self.comm = MPI.COMM_WORLD
        self.rank = self.comm.Get_rank()
        self.size = self.comm.Get_size()

    # one rank: no pickling round trip (mpi4py would copy every array, e.g. blocks of
    # samples, through fresh memory: page faults cost a quarter of a fast run)
    def bcast(self, obj, root=0):
        return obj if self.size == 1 else self.comm.bcast(obj, root=root)

    def gather(self, obj, root=0):
        return [obj] if self.size == 1 else self.comm.gather(obj, root=root)

    def allgather(self, obj):
        return [obj] if self.size == 1 else self.comm.allgather(obj)

    def allreduce_max(self, value):
        return self.comm.allreduce(value, op=self.mpi.MAX)

    def allgather_array(self, row):
        """Rows of every rank stacked: [size, *row.shape] (same shape and dtype everywhere).
        A buffer collective: microseconds, where the pickling allgather costs tens."""
        out = np.empty((self.size,) + row.shape, row.dtype)
        self.comm.Allgather(np.ascontiguousarray(row), out)
        return out

    def gather_blocks(self, a, root=0):
        """Every rank's array [k, n_rank, ...] (same k, trailing dims and dtype), a list by
        rank on root, else None. Buffer collectives: blocks of samples are megabytes, which
        the pickling gather copies twice through fresh memory."""
        if self.size == 1:
            return [a]
        a = np.ascontiguousarray(a)
        n = np.zeros(self.size if self.rank == root else 0, np.int64)
        self.comm.Gather(np.array([a.shape[1]], np.int64), n, root=root)
        if self.rank != root:
            self.comm.Gatherv(a, None, root=root)
            return None
        per = a.size // a.shape[1]  # elements per unit of axis 1 (every rank has replicas)
        counts = [int(m) * per for m in n]
        buf = np.empty(sum(counts), a.dtype)
        self.comm.Gatherv(a, (buf, counts), root=root)
        parts = np.split(buf, np.cumsum(counts)[:-1])
        return [p.reshape((a.shape[0], int(m)) + a.shape[2:]) for p, m in zip(parts, n)]

    def barrier(self):
        self.comm.Barrier()

    def abort(self, code=1):
        """End every rank now (others may wait in a collective), without clean-up; never
        returns. MPI_Abort may return for a moment (MPICH does: the process manager kills the
        ranks a little later), so this process then exits at once: nothing after an abort is
        printed or written."""
        _flush_output()
        # mpiexec forwards a rank's output asynchronously, and an abort that reaches it first
        # loses what was just printed (MPICH's hydra, about 1 run in 15 here): give it a moment
        time.sleep(ABORT_GRACE_S)
        self.comm.Abort(code)
        os._exit(code)


def world():
    """The world communicator: MPI when launched under mpiexec/srun, else serial."""
    if not _launched_by_mpi():
        return SerialComm()
    try:
        from mpi4py import MPI
    except ImportError as exc:  # launched by mpiexec but mpi4py is missing
        raise RuntimeError(f"launched under MPI but mpi4py cannot be imported ({exc}); "
                           "install it with `pip install mpi4py mpich`") from exc
    comm = MPIComm(MPI)
    tasks = int(os.environ.get("SLURM_STEP_NUM_TASKS", comm.size))
    if comm.size != tasks:  # e.g. srun without PMI: N independent one-rank jobs
        raise RuntimeError(f"srun started {tasks} tasks but MPI sees {comm.size}: launch with "
                           f"`srun --mpi=pmi2` (MPICH) so the tasks form one MPI job")
    return comm
