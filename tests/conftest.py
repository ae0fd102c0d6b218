"""Fixtures shared by several test modules."""
from pathlib import Path

import pytest
import torch


def _one_torch_thread():
    """One torch thread while a test (or a module's fixtures) runs: on a shared 2-core machine
    more threads make tiny models slower."""
    old = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(old)


one_torch_thread_per_module = pytest.fixture(scope="module", name="one_torch_thread_per_module")(
    _one_torch_thread)


@pytest.fixture
def seeded_one_thread():
    """torch seeded with 0, and one torch thread, for one test."""
    torch.manual_seed(0)
    yield from _one_torch_thread()


SHM = Path("/dev/shm")


def _mapped_shm() -> set[str]:
    """The /dev/shm files some process maps now (from /proc/<pid>/maps)."""
    found = set()
    for maps in Path("/proc").glob("[0-9]*/maps"):
        try:
            text = maps.read_text()
        except OSError:             # the process ended, or is not ours to read
            continue
        for line in text.splitlines():
            fields = line.split(None, 5)
            if len(fields) == 6 and fields[5].startswith(str(SHM) + "/"):
                found.add(fields[5].removesuffix(" (deleted)"))
    return found


@pytest.fixture(scope="session", autouse=True)
def no_leaked_mpich_segments():
    """MPICH's shared-memory segments (/dev/shm/mpich_shm_*, 2–4 MiB each) outlive the
    ranks that tests kill with SIGKILL. Removes those made during the session that no process
    maps any more; an MPI job of someone else's still maps its own."""
    before = set(SHM.glob("mpich_shm_*"))
    yield
    mapped = _mapped_shm()
    for path in set(SHM.glob("mpich_shm_*")) - before:
        if str(path) not in mapped:
            path.unlink(missing_ok=True)
