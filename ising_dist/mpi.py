"""The only module that imports mpi4py. Without mpiexec (or without mpi4py) it falls back to a
serial communicator of size 1, so every code path also runs in a plain Python process.

Only the few collective operations the package needs are exposed, on Python objects (and
buffer ones on numpy arrays, for the energy exchange of parallel tempering and blocks of
samples). No mpi4py object leaves this module except into h5py, which takes one: compiled code
gets the communicator's Fortran handle and checks the MPI library version
(ising_dist.native), the collective writer gets h5py's communicator (ising_dist.writers).
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

    def gather_array(self, a, root=0):
        """Every rank's array (same shape and dtype) stacked, [size, *a.shape], on root;
        None elsewhere."""
        return np.asarray(a)[None].copy()

    def allreduce_sum(self, a):
        """Elementwise sum over ranks of a numeric array (same shape and dtype everywhere),
        a new array on every rank."""
        return np.array(a)

    def sendrecv_array(self, send, dest, recv, source):
        """Send the array ``send`` to rank ``dest`` while receiving ``recv`` (an array of
        the same shape and dtype, filled in place) from rank ``source``."""
        recv[...] = send

    def split(self, color, key=0):
        """The communicator of the ranks that pass the same ``color`` (int >= 0), ranked by
        ``key`` then by rank: here this one."""
        return self

    def barrier(self):
        pass

    def fortran_handle(self):
        """No MPI communicator to hand to compiled code: RuntimeError."""
        raise RuntimeError("no MPI communicator: the process was not launched by mpiexec/srun")

    def library_version(self):
        """None: no MPI library in use."""
        return None

    def h5py_comm(self):
        """The communicator for h5py's mpio driver: none without MPI."""
        raise RuntimeError("parallel HDF5 (h5py's mpio driver) needs an MPI launch: run under "
                           "mpiexec/srun, or write with one process (--writer gather)")

    def abort(self, code=1):
        """Exit now, without clean-up (e.g. of an HDF5 file whose writes failed)."""
        _flush_output()
        os._exit(code)


class MPIComm:
    """COMM_WORLD of mpi4py (or a communicator split from it, :meth:`split`) with the
    methods of :class:`SerialComm`."""

    def __init__(self, MPI, comm=None):
        self._MPI = MPI
        self._comm = MPI.COMM_WORLD if comm is None else comm
        self.rank = self._comm.Get_rank()
        self.size = self._comm.Get_size()

    # one rank: no pickling round trip (mpi4py would copy every array, e.g. blocks of
    # samples, through fresh memory: page faults cost a quarter of a fast run)
    def bcast(self, obj, root=0):
        return obj if self.size == 1 else self._comm.bcast(obj, root=root)

    def gather(self, obj, root=0):
        return [obj] if self.size == 1 else self._comm.gather(obj, root=root)

    def allgather(self, obj):
        return [obj] if self.size == 1 else self._comm.allgather(obj)

    def allreduce_max(self, value):
        return self._comm.allreduce(value, op=self._MPI.MAX)

    def allgather_array(self, row):
        """Rows of every rank stacked: [size, *row.shape] (same shape and dtype everywhere).
        A buffer collective: microseconds, where the pickling allgather costs tens."""
        out = np.empty((self.size,) + row.shape, row.dtype)
        self._comm.Allgather(np.ascontiguousarray(row), out)
        return out

    def gather_blocks(self, a, root=0):
        """Every rank's array [k, n_rank, ...] (same k, trailing dims and dtype), a list by
        rank on root, else None. Buffer collectives: blocks of samples are megabytes, which
        the pickling gather copies twice through fresh memory."""
        if self.size == 1:
            return [a]
        a = np.ascontiguousarray(a)
        n = np.zeros(self.size if self.rank == root else 0, np.int64)
        self._comm.Gather(np.array([a.shape[1]], np.int64), n, root=root)
        if self.rank != root:
            self._comm.Gatherv(a, None, root=root)
            return None
        per = a.size // a.shape[1]  # elements per unit of axis 1 (every rank has replicas)
        counts = [int(m) * per for m in n]
        buf = np.empty(sum(counts), a.dtype)
        self._comm.Gatherv(a, (buf, counts), root=root)
        parts = np.split(buf, np.cumsum(counts)[:-1])
        return [p.reshape((a.shape[0], int(m)) + a.shape[2:]) for p, m in zip(parts, n)]

    def gather_array(self, a, root=0):
        """Every rank's array (same shape and dtype) stacked, [size, *a.shape], on root;
        None elsewhere. A buffer collective."""
        a = np.ascontiguousarray(a)
        out = np.empty((self.size,) + a.shape, a.dtype) if self.rank == root else None
        self._comm.Gather(a, out, root=root)
        return out

    def allreduce_sum(self, a):
        """Elementwise sum over ranks of a numeric array (same shape and dtype everywhere),
        a new array on every rank. A buffer collective."""
        a = np.ascontiguousarray(a)
        out = np.empty_like(a)
        self._comm.Allreduce(a, out, op=self._MPI.SUM)
        return out

    def sendrecv_array(self, send, dest, recv, source):
        """Send the contiguous array ``send`` to rank ``dest`` while receiving ``recv``
        (same shape and dtype, contiguous, filled in place) from rank ``source``
        (MPI_Sendrecv: no deadlock when every rank of a ring calls it at once)."""
        self._comm.Sendrecv(send, dest, 0, recv, source, 0)

    def split(self, color, key=0):
        """The communicator (an :class:`MPIComm`) of the ranks that pass the same ``color``
        (int >= 0), ranked by ``key`` then by rank (MPI_Comm_split). Collective: every rank
        calls it."""
        return MPIComm(self._MPI, self._comm.Split(color, key))

    def barrier(self):
        self._comm.Barrier()

    def fortran_handle(self):
        """The communicator's Fortran handle (MPI_Comm_c2f), an int, for compiled code that
        calls MPI itself (libising_pt_mpi.so converts it back with MPI_Comm_f2c)."""
        return self._comm.py2f()

    def library_version(self):
        """MPI_Get_library_version of the MPI library mpi4py calls (compiled code checks it
        calls the same one)."""
        return self._MPI.Get_library_version()

    def h5py_comm(self):
        """The communicator for h5py's mpio driver (``h5py.File(..., driver="mpio",
        comm=...)``): mpi4py's COMM_WORLD, which h5py takes as it is."""
        return self._comm

    def abort(self, code=1):
        """End every rank now (others may wait in a collective), without clean-up; never
        returns. MPI_Abort may return for a moment (MPICH does: the process manager kills the
        ranks a little later), so this process then exits at once: nothing after an abort is
        printed or written."""
        _flush_output()
        # mpiexec forwards a rank's output asynchronously, and an abort that reaches it first
        # loses what was just printed (MPICH's hydra, about 1 run in 15 here): give it a moment
        time.sleep(ABORT_GRACE_S)
        self._comm.Abort(code)
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
