"""A small process that outlives the training driver, to say what happened when the driver
dies without a word.

Ray's core worker ends a driver whose local raylet has gone with ``_Exit(1)`` ("Exiting
because the Raylet IPC connection failed and the local Raylet is dead"): no Python handler,
``finally`` or atexit runs, so the driver cannot print where its run stopped. The same holds
for SIGKILL (an out-of-memory kill, ``kill -9``). :func:`start` spawns
``python -m ising_dist.deathwatch`` beside the driver, joined to it by a pipe:

- the driver tells it the cluster's GCS address once known (:meth:`Watch.tell_gcs`) and
  ``done`` when it has said its own last word (:meth:`Watch.done`: normal end, error message
  printed, stop after a signal);
- if the pipe closes without ``done`` (every writer is gone: the driver died), the watcher
  prints :func:`ising_dist.train.stopped_message` to the shared stderr: what happened (the
  cluster stopped, when its GCS no longer answers; otherwise the driver was killed), the last
  checkpoint and the ``--resume`` command.

The watcher ignores SIGINT, SIGTERM and SIGHUP (Ctrl-C and Slurm signal every process; the
driver handles them and then says ``done``), and reads nothing but the pipe. The pipe's write
end is not inherited by the driver's subprocesses (PEP 446), so no other process keeps the
watcher waiting.
"""
from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

GCS_TRIES = 3           # connection attempts to the GCS before calling the cluster gone
GCS_RETRY_S = 0.5       # between them
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


def start(run_dir: Path, epochs: int) -> Watch:
    """Spawn the watcher of this process, for the run in ``run_dir`` (``epochs`` epochs in
    all). Call :meth:`Watch.done` once this process has printed its own last word."""
    r, w = os.pipe()
    try:
        proc = subprocess.Popen(
            [sys.executable, "-m", "ising_dist.deathwatch", str(r), str(run_dir), str(epochs),
             str(os.getpid())], pass_fds=(r,), stdin=subprocess.DEVNULL)
    finally:
        os.close(r)
    return Watch(proc, w)


def _reachable(address: str) -> bool:
    host, port = address.rsplit(":", 1)
    for attempt in range(GCS_TRIES):
        if attempt:
            time.sleep(GCS_RETRY_S)
        try:
            socket.create_connection((host, int(port)), timeout=2).close()
            return True
        except OSError:
            pass
    return False


def cause(gcs: str | None, pid: int) -> str:
    """Why the driver ``pid`` died without a word, as far as can be seen from outside."""
    if gcs and not _reachable(gcs):
        return (f"the Ray cluster stopped during the run (its GCS at {gcs} is unreachable, "
                f"and Ray ended the driver, pid {pid})")
    return (f"the training driver (pid {pid}) ended without a word: killed by a signal (an "
            f"out-of-memory kill?) or by Ray (see the lines above)")


def watch(fd: int, run_dir: Path, epochs: int, pid: int) -> int:
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
    from .train import stopped_message   # torch and all: only when there is something to say
    try:
        print(stopped_message(run_dir, epochs, cause(gcs, pid)), file=sys.stderr, flush=True)
    except OSError:   # the terminal went with the driver (SIGHUP)
        pass
    return 1


if __name__ == "__main__":
    sys.exit(watch(int(sys.argv[1]), Path(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4])))
