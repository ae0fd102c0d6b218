"""One writer per output: a lock file held by the run that writes it, for the run's whole life.

Every entry point that writes an output takes a :class:`RunLock` on it before it creates,
truncates or reopens anything (under MPI: the writing rank, rank 0, only), and keeps it until
the run ends::

    lock = RunLock.acquire("runs/a.h5", role="pt")           # runs/a.h5.lock beside a file
    lock = RunLock.acquire("runs/train/demo", role="train")  # runs/train/demo/.lock in a run dir
    ...
    lock.check("runs/a.h5")   # at every checkpoint: RunLostError if the output was replaced
                              # or removed, or the lock lost, under the run
    lock.release()            # or: ``with RunLock.acquire(...) as lock:``

A second process asking for a live output gets :class:`RunLockedError`, whose text names the
live run (role, host, pid, Slurm job and step, start time, command) and how to proceed; entry
points print it as ``error: …`` and exit 2.

The lock file holds its owner as JSON: host, boot id, pid, the process's start time (clock
ticks since boot, /proc/<pid>/stat field 22), Slurm job id, step and restart count, command,
start time and a random token. The owner holds ``flock(LOCK_EX)`` on an open descriptor of it
until it releases the lock (the file is then removed) or dies.

What this relies on:
- flock(2) first. The kernel drops it when its owner dies, kill -9 included, so a lock file
  left behind whose flock can be taken is stale. It excludes every process of one host; across
  hosts it depends on the file system: NFS (Linux emulates flock with NLM/NFSv4 byte-range
  locks) unless mounted ``nolock`` or ``local_lock=flock|all``; Lustre only when mounted
  ``-o flock`` (``localflock``: per node; neither: flock fails); GPFS and CephFS: cluster-wide;
  BeeGFS by default, and anything unknown: taken to be per node (:func:`flock_is_cluster_wide`).
- The owner record is the fallback wherever flock is missing or may be per node, and a check
  wherever it works: an owner on this host (same host name and boot id) is alive iff its pid
  exists with the recorded start time (Linux /proc; a reboot or a reused pid make the record
  stale);
  under Slurm, an owner on another node is alive iff ``squeue`` shows its job running (an
  earlier instance of the same, requeued job is not). An owner on another host whose liveness
  cannot be told from here is taken as alive unless flock is cluster-wide on this file system;
  the message then names the lock file to delete once that run is known to be over.
- Without working flock, two runs starting within the same moment can both pass (creating the
  record is not atomic there); :meth:`RunLock.check` at the first checkpoint then stops the run
  whose record was overwritten.
"""

import errno
import fcntl
import json
import os
import shlex
import socket
import subprocess
import sys
import time
import uuid
from datetime import datetime
from pathlib import Path

DIR_ROLES = ("train", "tune")  # roles whose target is a run directory (others: a file)
DIR_LOCK = ".lock"             # the lock file inside a run directory
# flock fails with these where the file system does not support it (e.g. Lustre without -o flock)
_NO_FLOCK = {errno.ENOLCK, errno.EOPNOTSUPP, errno.ENOSYS, errno.EINVAL}
# Slurm job states in which a job's processes may still run
_SLURM_LIVE = {"RUNNING", "COMPLETING", "CONFIGURING", "SUSPENDED", "STOPPED", "SIGNALING",
               "STAGE_OUT", "RESIZING"}
# file systems of one host: flock there excludes every process that can open the file
_LOCAL_FS = {"ext2", "ext3", "ext4", "xfs", "btrfs", "tmpfs", "ramfs", "zfs", "overlay", "f2fs",
             "bcachefs", "jfs", "reiserfs", "vfat", "exfat"}


class RunLockedError(RuntimeError):
    """The output is in use by a live run (or, as :class:`RunLostError`, this run lost it).
    ``str()`` is the full message for the user: who holds it and how to proceed."""


class RunLostError(RunLockedError):
    """The output was replaced or removed, or the lock lost, under a live run."""


# -- who is running ---------------------------------------------------------------------------
def _boot_id():
    try:
        return Path("/proc/sys/kernel/random/boot_id").read_text().strip()
    except OSError:
        return None


def process_start(pid):
    """Start time of process ``pid`` in clock ticks since boot (/proc/<pid>/stat field 22),
    None if there is no such process or it has exited (a zombie: its files, and so its
    flocks, are closed). With the boot id it tells a process from a later one that reuses
    its pid."""
    try:
        stat = Path(f"/proc/{int(pid)}/stat").read_text()
    except (OSError, ValueError):
        return None
    fields = stat.rsplit(")", 1)[1].split()  # fields after "(comm)", from field 3 (state)
    return None if fields[0] in ("Z", "X") else int(fields[19])


def owner_record(role, target):
    """This process as a lock owner: a JSON-able dict (see the module docstring)."""
    env = os.environ
    spec = getattr(sys.modules.get("__main__"), "__spec__", None)  # python -m <module>
    command = [Path(sys.executable).name] + (["-m", spec.name] if spec else sys.argv[:1]) \
        + sys.argv[1:]
    return {"role": role, "target": str(target), "host": socket.gethostname(),
            "boot_id": _boot_id(), "pid": os.getpid(), "pid_start": process_start(os.getpid()),
            "slurm_job_id": env.get("SLURM_JOB_ID"), "slurm_step_id": env.get("SLURM_STEP_ID"),
            "slurm_restart_count": env.get("SLURM_RESTART_COUNT", "0"),
            "command": shlex.join(command),
            "started": datetime.now().astimezone().isoformat(timespec="seconds"),
            "token": uuid.uuid4().hex}


def _slurm_job_running(job):
    """True/False from squeue for job ``job``; None when squeue cannot answer."""
    try:
        res = subprocess.run(["squeue", "-h", "-j", str(job), "-o", "%T"], capture_output=True,
                             text=True, timeout=15)
    except (OSError, subprocess.TimeoutExpired):
        return None
    if res.returncode != 0:
        return False if "invalid job id" in res.stderr.lower() else None
    return bool(set(res.stdout.split()) & _SLURM_LIVE)


def owner_alive(owner):
    """Whether the process an owner record names still runs: True, False, or None when that
    cannot be told from this host."""
    if owner.get("host") == socket.gethostname():
        boot = _boot_id()
        if boot and owner.get("boot_id") and owner["boot_id"] != boot:
            return False                      # the host rebooted since
        start = process_start(owner.get("pid", -1))
        return start is not None and start == owner.get("pid_start")
    job = owner.get("slurm_job_id")
    if job:
        env = os.environ
        if job == env.get("SLURM_JOB_ID") and \
                owner.get("slurm_restart_count", "0") != env.get("SLURM_RESTART_COUNT", "0"):
            return False                      # an earlier instance of this requeued job
        return _slurm_job_running(job)
    return None


def describe(owner):
    """One line naming a lock owner: role, pid, host, Slurm job, start time, command."""
    if not owner:
        return "a process whose owner record is not written yet (it is starting)"
    slurm = ""
    if owner.get("slurm_job_id"):
        step = owner.get("slurm_step_id")
        slurm = f", Slurm job {owner['slurm_job_id']}" + (f" step {step}" if step else "")
    return (f"{owner.get('role', '?')} run, pid {owner.get('pid')} on host {owner.get('host')}"
            f"{slurm}, started {owner.get('started')}: {owner.get('command')}")


# -- file systems -----------------------------------------------------------------------------
def _mount_of(path, mounts):
    """(fstype, options) of the mount holding ``path`` (longest mount point prefix)."""
    best = ("", None, [])
    for line in mounts.splitlines():
        fields = line.split()
        if len(fields) < 4:
            continue
        point = fields[1].replace("\\040", " ")
        inside = path == point or path.startswith(point.rstrip("/") + "/")
        if inside and len(point) >= len(best[0]):
            best = (point, fields[2], fields[3].split(","))
    return best[1], best[2]


def flock_is_cluster_wide(path, mounts=None):
    """Whether flock on ``path``'s file system also excludes processes on other hosts
    (``mounts``: the text of /proc/self/mounts, read when None). See the module docstring."""
    if mounts is None:
        try:
            mounts = Path("/proc/self/mounts").read_text()
        except OSError:
            return False
    fstype, opts = _mount_of(os.path.realpath(path), mounts)
    if fstype in ("nfs", "nfs4"):
        return "nolock" not in opts and "local_lock=flock" not in opts \
            and "local_lock=all" not in opts
    if fstype == "lustre":
        return "flock" in opts
    return fstype in ("gpfs", "ceph") or fstype in _LOCAL_FS


# -- the lock ---------------------------------------------------------------------------------
def lock_path(target, role="pt"):
    """The lock file of an output: ``<dir>/.lock`` inside the run directory of a role in
    DIR_ROLES (train, tune), else ``<file>.lock`` beside the output file (pt, nmcmc, …).
    It depends on the role only, not on what exists now, so every run of a role meets the
    same lock file; symbolic links are resolved."""
    real = Path(os.path.realpath(target))
    return real / DIR_LOCK if role in DIR_ROLES else real.with_name(real.name + ".lock")


def _read_owner(path):
    """The owner record in a lock file: a dict, {} when empty or unreadable, None if absent."""
    try:
        text = Path(path).read_text()
    except FileNotFoundError:
        return None
    except OSError:
        return {}
    try:
        owner = json.loads(text)
    except ValueError:
        return {}
    return owner if isinstance(owner, dict) else {}


def _same_file(fd, path):
    """Whether the open descriptor fd is the file at path now (not removed or replaced)."""
    try:
        st = os.stat(path)
    except FileNotFoundError:
        return False
    fs = os.fstat(fd)
    return (fs.st_dev, fs.st_ino) == (st.st_dev, st.st_ino)


def _try_flock(fd, how):
    """True: locked; False: another process holds it; None: no flock on this file system."""
    try:
        fcntl.flock(fd, how | fcntl.LOCK_NB)
        return True
    except BlockingIOError:
        return False
    except OSError as exc:
        if exc.errno in _NO_FLOCK:
            return None
        raise


def _holder_is_live(owner, path, kernel):
    """Decide over a previous owner's record found in a lock file whose flock this process
    could take (kernel True) or that has no flock (kernel None). Returns (live, why unknown)."""
    alive = owner_alive(owner)
    if alive is not None:
        return alive, None
    if kernel and flock_is_cluster_wide(path):
        return False, None                    # its flock is gone: it ended
    why = ("flock on this file system does not reach other hosts" if kernel else
           "this file system has no flock")
    return True, f"its host is not this one ({socket.gethostname()}) and {why}"


def _locked_message(target, path, owner, unknown=None):
    stop = (f"`scancel {owner['slurm_job_id']}`" if owner and owner.get("slurm_job_id") else
            f"`kill -TERM {owner.get('pid')}` on {owner.get('host')}" if owner else "")
    msg = (f"{target} is in use by a live {describe(owner)}.\nWriting to it now would destroy "
           f"that run's data: wait until it ends" + (f" or stop it ({stop})" if stop else "")
           + ", then run again; or write to another output.")
    if unknown:
        msg += (f"\nWhether that run still goes cannot be told from here ({unknown}); if it "
                f"has ended, delete {path} and run again.")
    return msg


class RunLock:
    """The lock of one output, held by this process (see the module docstring).

    Attributes: ``target`` (Path as given), ``path`` (the lock file), ``owner`` (this
    process's record), ``kernel`` (True: flock held; None: no flock here, record only)."""

    def __init__(self, target, path, fd, owner, kernel, made=()):
        self.target, self.path, self._fd, self.owner, self.kernel = target, path, fd, owner, kernel
        self._identity = None                 # (st_dev, st_ino) of the output this run writes
        self._made = list(made)               # directories acquire created, deepest first

    @classmethod
    def acquire(cls, target, role="pt"):
        """Lock ``target`` for this process: the output file of a pt/nmcmc/… run, or the run
        directory of a train/tune run (see :func:`lock_path`); creates the lock file's
        directory. Takes over a stale lock (its owner is gone: killed, or its host rebooted)
        with a note on stderr. Returns the RunLock.

        Raises RunLockedError naming the live owner when another process holds it."""
        target = Path(target)
        path = lock_path(target, role)
        made = [d for d in (path.parent, *path.parent.parents) if not d.exists()]
        path.parent.mkdir(parents=True, exist_ok=True)
        me = owner_record(role, target)
        for _ in range(50):
            try:
                fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o644)
                created = True
            except FileExistsError:
                try:
                    fd = os.open(path, os.O_RDWR | os.O_CLOEXEC)
                except FileNotFoundError:     # released in between: try again
                    continue
                created = False
            try:
                kernel = _try_flock(fd, fcntl.LOCK_EX)
                if kernel is False:
                    raise RunLockedError(_locked_message(target, path, _read_owner(path)))
                if not _same_file(fd, path):  # released or replaced before we locked it
                    os.close(fd)
                    continue
                previous = _read_owner(path)
                if kernel is None and not created and not previous:
                    time.sleep(0.5)           # no flock: its creator may be writing its record
                    previous = _read_owner(path)
                if previous:
                    live, unknown = _holder_is_live(previous, path, kernel)
                    if live:
                        raise RunLockedError(_locked_message(target, path, previous, unknown))
                    print(f"note: {path} was left by a run that has ended ({describe(previous)});"
                          f" taking it over", file=sys.stderr)
                data = json.dumps(me, indent=1).encode() + b"\n"
                os.ftruncate(fd, 0)
                os.pwrite(fd, data, 0)
                os.fsync(fd)
            except BaseException:
                os.close(fd)
                _remove_empty(made)
                raise
            lock = cls(target, path, fd, me, kernel, made)
            if role in DIR_ROLES:             # a run directory: it is the output itself
                lock.bind(target)
            return lock
        raise RunLockedError(f"could not lock {target}: its lock file {path} keeps being "
                             f"replaced by other processes; retry")

    def bind(self, target=None, fd=None):
        """The output this run writes is the file (or directory) now at ``target``, or the one
        open as descriptor ``fd``: :meth:`check` stops the run once ``target`` is another file.
        Call it right after creating or reopening the output (check() binds on first use)."""
        st = os.fstat(fd) if fd is not None else os.stat(target if target is not None
                                                           else self.target)
        self._identity = (st.st_dev, st.st_ino)

    def check(self, target=None):
        """Raise RunLostError if the lock is no longer this run's (its file removed or taken
        over) or ``target`` (default: the locked target) is not the output this run opened
        (replaced or removed). Cheap: a stat and a small read; call it at every checkpoint."""
        target = Path(target) if target is not None else self.target
        if self._fd is None:
            raise RunLostError(f"the lock of {target} was released; this run cannot go on "
                               f"writing it")
        current = _read_owner(self.path)
        if not _same_file(self._fd, self.path) or not current \
                or current.get("token") != self.owner["token"]:
            now = ("it was removed" if current is None else
                   f"it now names {describe(current)}")
            raise RunLostError(f"this run lost its lock {self.path} ({now}): another process "
                               f"may be writing {target}. This run stops here rather than "
                               f"write over it; look at who took the output before resuming.")
        if self._identity is None:
            if os.path.exists(target):
                self.bind(target)
            return
        try:
            st = os.stat(target)
        except FileNotFoundError:
            raise RunLostError(f"{target} was removed while this run (pid {os.getpid()}) was "
                               f"writing it; what it wrote went with it. This run stops here."
                               ) from None
        if (st.st_dev, st.st_ino) != self._identity:
            raise RunLostError(f"{target} was replaced by another file while this run (pid "
                               f"{os.getpid()}) was writing it (inode {self._identity[1]} -> "
                               f"{st.st_ino}); what this run wrote is in the replaced file, "
                               f"now gone. This run stops here rather than report success.")

    def release(self):
        """Remove the lock file (if it is still this run's) and drop the lock; remove the
        directories acquire created if they stayed empty (a run refused at its start leaves
        nothing behind). Idempotent."""
        if self._fd is None:
            return
        try:
            owner = _read_owner(self.path)
            if _same_file(self._fd, self.path) and owner \
                    and owner.get("token") == self.owner["token"]:
                os.unlink(self.path)          # before the flock goes: no one sees it unlocked
        finally:
            os.close(self._fd)
            self._fd = None
        _remove_empty(self._made)

    @property
    def held(self):
        return self._fd is not None

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.release()


def _remove_empty(dirs):
    for d in dirs:                            # deepest first
        try:
            d.rmdir()
        except OSError:                       # not empty (the run wrote there) or gone
            return


def refuse_if_live(target, role="pt"):
    """Raise RunLockedError if a process other than this one holds ``target``'s lock; takes
    nothing (for writers opened without a lock, e.g. from a script)."""
    path = lock_path(target, role)
    owner = _read_owner(path)
    if owner is None:
        return
    if owner.get("pid") == os.getpid() and owner.get("host") == socket.gethostname():
        return                                # this process holds it
    try:
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    except FileNotFoundError:
        return
    try:
        kernel = _try_flock(fd, fcntl.LOCK_SH)
    finally:
        os.close(fd)                          # drops a shared lock taken just now
    if kernel is False:
        raise RunLockedError(_locked_message(target, path, owner))
    if owner:
        live, unknown = _holder_is_live(owner, path, kernel)
        if live:
            raise RunLockedError(_locked_message(target, path, owner, unknown))
