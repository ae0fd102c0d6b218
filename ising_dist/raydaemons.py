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
"""

import os
import threading
import time
from pathlib import Path

PERIOD_S = 2.0            # how often new processes are looked for
PROC = Path("/proc")
HELPERS = ("ray::DashboardAgent", "ray::RuntimeEnvAgent", "ray::TrainController",
           "ray::PlacementGroupCleaner", "ray::SynchronizationActor", "ray::DatasetManager",
           "ray::_AutoscalingCoordinatorActor", "ray::_StatsActor")

_started = threading.Lock()
_thread = None


def supported() -> bool:
    """Whether this system has SCHED_IDLE and /proc (Linux)."""
    return hasattr(os, "SCHED_IDLE") and (PROC / "self" / "task").is_dir()


def start() -> bool:
    """Start (once per process) the daemon thread that puts this process's Ray daemons and
    helper actors at SCHED_IDLE every PERIOD_S seconds. Returns whether it runs (False off
    Linux). Call it after starting a local Ray (ray.init)."""
    global _thread
    if not supported():
        return False
    with _started:
        if _thread is None:
            _thread = threading.Thread(target=_loop, name="ising_dist-ray-idle", daemon=True)
            _thread.start()
    return True


def _loop() -> None:
    done: set = set()
    while True:
        done = idle_ray_processes(os.getpid(), done)
        time.sleep(PERIOD_S)


def idle_ray_processes(root: int, done: set = frozenset()) -> set:
    """Set SCHED_IDLE on every thread of root's Ray daemons and helper actors (see the module
    docstring) not in ``done`` (a set of (pid, tid)). Returns the (pid, tid) now set. A process
    or thread that ends meanwhile is skipped."""
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
        for tid in tids:
            if (pid, tid) not in done:
                try:
                    os.sched_setscheduler(tid, os.SCHED_IDLE, os.sched_param(0))
                except OSError:
                    continue
            now.add((pid, tid))
    return now


def _cmdline(pid: int) -> str:
    try:
        return (PROC / str(pid) / "cmdline").read_bytes().replace(b"\0", b" ").decode(
            errors="replace").strip()
    except OSError:
        return ""
