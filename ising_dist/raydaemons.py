"""A local Ray's own processes yield the CPU to the training workers (Linux's SCHED_IDLE).

On a machine whose cores all run DDP ranks, every burst of Ray's daemons (GCS, dashboard, log
monitor, agents) and of Ray Train's helper actors (controller, placement-group cleaner,
synchronization actor, …) preempts a rank, and its peers wait for it at the next all-reduce.
Those processes use 0.10–0.13 cores (each actor wakes every 10 ms, the log monitor polls every
0.1 s; benchmarks/training.py lists them). Under SCHED_IDLE (sched(7)) a waking process does
not preempt a running one. Measured (conv VAE of benchmarks/training.py, 2 workers on 2
cores, 8-epoch runs interleaved): the ranks' run-queue wait 7 % → 4.5 % of the time,
involuntary switches 600 → 320–450 a second, 12 000 → 12 900 samples/s.

Only for a Ray this process started itself (ising_dist.train.ensure_ray), and only for these
of its descendants (found in /proc), starting from its children that run a program of the
ray package (its other children, e.g. a subprocess of a test or a pipeline, are left alone):
- everything outside the raylet's subtree (GCS, dashboard and its modules, log monitor,
  autoscaler monitor);
- among the raylet's children, the processes whose title (the cmdline Ray gives a process)
  starts with one of HELPERS: its agents and the actors Ray Train and Ray Data start.
Never the raylet itself (the worker processes it starts would inherit the policy), nor its
pooled worker processes (ray::IDLE between tasks): one may become a training worker, and a
process cannot leave SCHED_IDLE again without CAP_SYS_NICE.

SCHED_IDLE gives each thread the weight 3 against a normal thread's 1024, so ~20 processes
that wake every 10 ms still take their share. Where this process may create a cgroup beside
its own in the cpu controller (root, cgroup v1's cpu hierarchy or a cgroup v2 that delegates
cpu; kernel ≥ 5.15 for cpu.idle), the same processes also go into one cgroup with cpu.idle = 1
(``ising_dist-ray-<pid>``): the whole group then weighs what one idle thread weighs
(sched(7), Documentation/admin-guide/cgroup-v2.rst "cpu.idle"). Measured (conv VAE, 2 workers
on 2 cores, 6-epoch runs, 7 interleaved pairs): 7 400–8 900 → 8 000–10 600 samples/s, faster in
every pair (1.01–1.23×, mean 1.14×). Elsewhere SCHED_IDLE alone applies. The group is removed
at exit; one left by a process that was killed goes when the next one starts.
"""

import atexit
import os
import signal
import threading
import time
from pathlib import Path
from typing import Optional

PERIOD_S = 2.0            # how often new processes are looked for
PROC = Path("/proc")
GROUP_PREFIX = "ising_dist-ray-"
HELPERS = ("ray::DashboardAgent", "ray::RuntimeEnvAgent", "ray::TrainController",
           "ray::PlacementGroupCleaner", "ray::SynchronizationActor", "ray::DatasetManager",
           "ray::_AutoscalingCoordinatorActor", "ray::_StatsActor")

EXIT_WAIT_S = 2.0         # how long, at exit, Ray's processes get to end by themselves
_started = threading.Lock()
_swept = threading.Lock()
_thread = None
_group: Optional[Path] = None
_done: set = set()        # (pid, tid) set to SCHED_IDLE
_found: dict = {}         # pid → start time of the daemons and helpers seen


def supported() -> bool:
    """Whether this system has SCHED_IDLE and /proc (Linux)."""
    return hasattr(os, "SCHED_IDLE") and (PROC / "self" / "task").is_dir()


def start() -> bool:
    """Start (once per process) the daemon thread that puts this process's Ray daemons and
    helper actors at SCHED_IDLE, and into the idle cgroup where one can be made
    (:func:`idle_group`), every PERIOD_S seconds. Returns whether it runs (False off Linux).
    Call it after starting a local Ray (ray.init)."""
    global _thread, _group
    if not supported():
        return False
    with _started:
        if _thread is None:
            _group = idle_group()
            atexit.register(_at_exit)   # after ray's own atexit registration: runs before it
            _thread = threading.Thread(target=_loop, name="ising_dist-ray-idle", daemon=True)
            _thread.start()
    return True


def current_group() -> Optional[Path]:
    """The idle cgroup that :func:`start` made for this process's Ray, or None."""
    return _group


def _loop() -> None:
    while True:
        _sweep()
        time.sleep(PERIOD_S)


def _sweep() -> None:
    global _done
    with _swept:
        _done = idle_ray_processes(os.getpid(), _done, _group)
        for pid, _ in _done:
            if pid not in _found:
                _found[pid] = _start_time(pid)


def _at_exit() -> None:
    """At interpreter exit: shut the local Ray down, then SIGKILL the daemons and helper
    actors found by the sweeps that outlive it by EXIT_WAIT_S (a ray::TrainController was
    seen to run on for 23 minutes, reparented to init, after its raylet had gone), and remove the
    idle cgroup."""
    import ray
    _sweep()                            # helpers started since the last sweep
    ray.shutdown()
    deadline = time.monotonic() + EXIT_WAIT_S
    alive = dict(_found)
    while alive:   # the same process: same pid and start time (its title changes, "….run")
        alive = {pid: t for pid, t in alive.items() if t and _start_time(pid) == t}
        if not alive or time.monotonic() > deadline:
            break
        time.sleep(0.05)
    for pid in alive:
        try:
            os.kill(pid, signal.SIGKILL)
        except OSError:
            pass
    while _group is not None:
        try:
            _group.rmdir()
            break
        except OSError:                 # busy until the killed processes have exited
            if time.monotonic() > deadline + 1.0:
                break
            time.sleep(0.05)


def _cpu_cgroup_dir() -> Optional[Path]:
    """The directory of this process's own cgroup in the hierarchy that has the cpu
    controller (cgroup v1's cpu mount, else the cgroup v2 mount), or None."""
    try:
        own = dict(line.split(":", 2)[1:] for line in
                   (PROC / "self" / "cgroup").read_text().splitlines())
        mounts = [line.split(" - ", 1) for line in
                  (PROC / "self" / "mountinfo").read_text().splitlines()]
    except (OSError, ValueError):
        return None
    v1 = next((k for k in own if "cpu" in k.split(",")), None)   # "cpu" or "cpu,cpuacct"
    for before, after in mounts:
        fstype, _, options = after.split(" ", 2)
        point = before.split(" ")[4]
        if fstype == "cgroup" and v1 and set(v1.split(",")) <= set(options.split(",")):
            return Path(point) / own[v1].lstrip("/")
        if fstype == "cgroup2" and not v1 and "" in own:
            return Path(point) / own[""].lstrip("/")
    return None


def idle_group() -> Optional[Path]:
    """Create this process's cgroup for Ray's daemons (see the module docstring), with
    cpu.idle = 1, beside its own cgroup; remove empty ones of earlier runs. Returns its
    directory, or None where that cannot be done (then nothing is left behind). The group is
    removed at exit (_at_exit)."""
    parent = _cpu_cgroup_dir()
    if parent is None:
        return None
    for old in parent.glob(GROUP_PREFIX + "*"):
        if (PROC / old.name.removeprefix(GROUP_PREFIX)).exists():
            continue                    # its process still runs
        try:
            old.rmdir()                 # fails while processes are in it
        except OSError:
            pass
    group = parent / f"{GROUP_PREFIX}{os.getpid()}"
    try:
        group.mkdir()
        (group / "cpu.idle").write_text("1")
    except OSError:
        try:
            group.rmdir()
        except OSError:
            pass
        return None
    return group


def idle_ray_processes(root: int, done: set = frozenset(),
                       group: Optional[Path] = None) -> set:
    """Set SCHED_IDLE on every thread of root's Ray daemons and helper actors (see the module
    docstring) not in ``done`` (a set of (pid, tid)), and move each such process into the
    cgroup directory ``group`` when given (from :func:`idle_group`). Returns the (pid, tid)
    now set. A process or thread that ends meanwhile is skipped."""
    children: dict[int, list[int]] = {}
    for entry in PROC.iterdir():
        if entry.name.isdigit():
            try:
                ppid = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
            except (OSError, IndexError, ValueError):
                continue
            children.setdefault(ppid, []).append(int(entry.name))
    import ray
    ray_dir = os.path.dirname(ray.__file__) + os.sep
    chosen, todo = [], [(c, False) for c in children.get(root, []) if ray_dir in _cmdline(c)]
    while todo:
        pid, under_raylet = todo.pop()
        name = _cmdline(pid)
        if not under_raylet and os.path.basename(name.split(" ", 1)[0]) == "raylet":
            todo += [(c, True) for c in children.get(pid, [])]
            continue
        if not under_raylet or name.startswith(HELPERS):
            chosen.append(pid)
            todo += [(c, under_raylet) for c in children.get(pid, [])]
    now = set()
    for pid in chosen:
        try:
            tids = [int(t) for t in os.listdir(PROC / str(pid) / "task")]
        except OSError:
            continue
        if group is not None and not any(p == pid for p, _ in done):
            try:
                (group / "cgroup.procs").write_text(str(pid))
            except OSError:
                pass
        for tid in tids:
            if (pid, tid) not in done:
                try:
                    os.sched_setscheduler(tid, os.SCHED_IDLE, os.sched_param(0))
                except OSError:
                    continue
            now.add((pid, tid))
    return now


def _start_time(pid: int) -> int:
    """A process's start time (clock ticks after boot, /proc/<pid>/stat field 22), 0 if gone:
    with the pid, it names one process (pids are reused)."""
    try:
        return int((PROC / str(pid) / "stat").read_text().rsplit(")", 1)[1].split()[19])
    except (OSError, IndexError, ValueError):
        return 0


def _cmdline(pid: int) -> str:
    try:
        return (PROC / str(pid) / "cmdline").read_bytes().replace(b"\0", b" ").decode(
            errors="replace").strip()
    except OSError:
        return ""
