"""The last word of a driver (``python -m ising_dist.train`` or ``ising_dist.tune``) whose Ray
cluster dies under it, or that dies itself: what happened and the ``--resume`` command.

:func:`watch_cluster` (a thread of the driver) TCP-connects to the cluster's GCS every
second; unreachable for CLUSTER_GRACE_S, it prints the driver's stopped message and ends the
process with exit code 1. Without it the driver waits until Ray's core worker exits it after
60 s with a log line and no advice.

Ray's core worker ends a driver whose local raylet has gone with ``_Exit(1)`` ("Exiting
because the Raylet IPC connection failed and the local Raylet is dead"): no Python handler,
``finally`` or atexit runs, so the driver cannot print where its run stopped. The same holds
for SIGKILL (an out-of-memory kill, ``kill -9``). :func:`start` spawns
``python -m ising_dist.deathwatch`` beside the driver, joined to it by a pipe:

- the driver tells it the cluster's GCS address once known (:meth:`Watch.tell_gcs`) and
  ``done`` when it has said its own last word (:meth:`Watch.done`: normal end, error message
  printed, stop after a signal);
- if the pipe closes without ``done`` (every writer is gone: the driver died), the watcher
  prints the driver's stopped message (:func:`ising_dist.train.stopped_message`,
  :func:`ising_dist.tune.stopped_message`) to the shared stderr: what happened (the cluster
  stopped, when its GCS no longer answers; otherwise the driver was killed), where the run
  stands and the ``--resume`` command.

The watcher ignores SIGINT, SIGTERM and SIGHUP (Ctrl-C and Slurm signal every process; the
driver handles them and then says ``done``), and reads nothing but the pipe. The pipe's write
end is not inherited by the driver's subprocesses (PEP 446), so no other process keeps the
watcher waiting.

A driver runs its work inside :func:`guard`, which starts both and ends them.
"""
from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

CLUSTER_GRACE_S = 10.0  # the GCS unreachable this long: the cluster is gone (Ray gives up at 60)
GCS_TRIES = 4           # connection attempts to the GCS; all must succeed for "up"
GCS_RETRY_S = 0.5       # between them (a GCS killed with its cluster accepts connections
                        # until its process is torn down, after Ray has ended the driver)
DONE = b"done\n"


class Watch:
    """The driver's end of the pipe to its watcher (:func:`start`)."""

    def __init__(self, proc: subprocess.Popen, fd: int):
        self._proc, self._fd = proc, fd
        self._lock = threading.Lock()

    def _send(self, line: bytes) -> None:
        with self._lock:
            if self._fd is None:
                return
            try:
                os.write(self._fd, line)
            except OSError:   # the watcher is gone (killed by hand): nothing to tell
                pass

    def tell_gcs(self, address: str) -> None:
        """The Ray cluster's GCS ("host:port"): the watcher checks it if the driver dies."""
        self._send(f"gcs {address}\n".encode())

    def done(self) -> None:
        """The driver has printed its own last word: the watcher ends silently. Idempotent;
        waits (≤ 5 s) for the watcher to exit."""
        self._send(DONE)
        with self._lock:
            if self._fd is None:
                return
            os.close(self._fd)
            self._fd = None
        try:
            self._proc.wait(timeout=5)
        except subprocess.TimeoutExpired:
            self._proc.kill()


DRIVERS = ("train", "tune")


def start(driver: str, *args) -> Watch:
    """Spawn the watcher of this process, a ``driver`` of :data:`DRIVERS`; ``args`` are those
    of its stopped message (:func:`message`). Call :meth:`Watch.done` once this process has
    printed its own last word."""
    if driver not in DRIVERS:
        raise ValueError(f"driver {driver!r}: use one of {DRIVERS}")
    r, w = os.pipe()
    try:
        proc = subprocess.Popen(
            [sys.executable, "-m", "ising_dist.deathwatch", str(r), str(os.getpid()), driver,
             *map(str, args)], pass_fds=(r,), stdin=subprocess.DEVNULL)
    finally:
        os.close(r)
    return Watch(proc, w)


def message(driver: str, args: list[str], what: str) -> str:
    """The stopped message of ``driver`` with ``args`` as :func:`start` was given them:
    train: run directory, epochs; tune: output directory."""
    if driver == "train":
        from .train import stopped_message   # torch and all: only when there is something to say
        return stopped_message(Path(args[0]), int(args[1]), what)
    from .tune import stopped_message
    return stopped_message(Path(args[0]), what)


def watch_cluster(stop: threading.Event, watch: Watch, say, interval: float = 1.0) -> None:
    """The driver's watchdog (a daemon thread): once Ray is up, tell ``watch`` the cluster's
    GCS address and TCP-connect to it every ``interval`` s until ``stop`` is set. If it stays
    unreachable for CLUSTER_GRACE_S, print ``say(what)`` to stderr and end the process with
    exit code 1."""
    import ray
    while not stop.wait(interval):
        if not ray.is_initialized():
            continue
        try:
            address = ray.get_runtime_context().gcs_address
        except Exception:  # noqa: BLE001 — not connected yet (or shutting down): look again
            continue
        watch.tell_gcs(address)
        lost = None
        while not stop.is_set():
            if _answers(address):
                lost = None
            else:
                lost = lost or time.monotonic()
                if time.monotonic() - lost >= CLUSTER_GRACE_S:
                    print(say(f"the Ray cluster stopped during the run (its GCS at {address} "
                              f"is unreachable)"), file=sys.stderr, flush=True)
                    watch.done()
                    os._exit(1)
            stop.wait(interval)
        return


def _answers(address: str) -> bool:
    """Whether a TCP connection to ``address`` ("host:port") succeeds within 2 s."""
    host, port = address.rsplit(":", 1)
    try:
        socket.create_connection((host, int(port)), timeout=2).close()
        return True
    except OSError:
        return False


def _reachable(address: str) -> bool:
    """:func:`_answers` at every one of GCS_TRIES attempts, GCS_RETRY_S apart: a cluster
    killed at once dies in some order, and its raylet's death ends the driver (Ray's
    ``_Exit``) while the GCS may still accept a connection for a moment."""
    for attempt in range(GCS_TRIES):
        if attempt:
            time.sleep(GCS_RETRY_S)
        if not _answers(address):
            return False
    return True


def cause(gcs: str | None, pid: int) -> str:
    """Why the driver ``pid`` died without a word, as far as can be seen from outside. Only a
    cluster the driver joined (RAY_ADDRESS, inherited) is judged by its GCS: a local Ray the
    driver started goes down with the driver, so its silence tells nothing."""
    if gcs and os.environ.get("RAY_ADDRESS") and not _reachable(gcs):
        return (f"the Ray cluster stopped during the run (its GCS at {gcs} is unreachable, "
                f"and Ray ended the driver, pid {pid})")
    return (f"the driver (pid {pid}) ended without a word: killed by a signal (an "
            f"out-of-memory kill?) or by Ray (see the lines above)")


@contextlib.contextmanager
def guard(driver: str, *args, say):
    """While the block runs: a watcher (:func:`start`, ``driver`` and ``args``) and the
    cluster watchdog (:func:`watch_cluster`, ``say``: what → the driver's stopped message).
    The block's own last word is printed inside it; on leaving, the watcher ends silently."""
    watch, stop = start(driver, *args), threading.Event()
    threading.Thread(target=watch_cluster, args=(stop, watch, say), daemon=True,
                     name="cluster-watch").start()
    try:
        yield
    finally:
        stop.set()
        watch.done()


def watch(fd: int, pid: int, driver: str, args: list[str]) -> int:
    """The watcher: read the pipe ``fd`` until ``done`` (return 0 silently) or its end (print
    the stopped message; return 1)."""
    for s in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
        signal.signal(s, signal.SIG_IGN)
    gcs = None
    with os.fdopen(fd, "rb") as pipe:
        for line in pipe:
            if line == DONE:
                return 0
            if line.startswith(b"gcs "):
                gcs = line[4:].decode().strip()
    try:
        print(message(driver, args, cause(gcs, pid)), file=sys.stderr, flush=True)
    except OSError:   # the terminal went with the driver (SIGHUP)
        pass
    return 1


if __name__ == "__main__":
    sys.exit(watch(int(sys.argv[1]), int(sys.argv[2]), sys.argv[3], sys.argv[4:]))
