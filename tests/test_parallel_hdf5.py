"""--writer collective (parallel HDF5 through the mpio driver) against --writer gather.

Runs under the parallel environment that `make setup-parallel` builds (Debian MPICH, mpi4py
and h5py built against libhdf5-mpich), as a cluster user would.
"""

import os
import signal
import subprocess
import time
from pathlib import Path

import h5py
import pytest

from tests.test_pt import SMALL, assert_same_data, read_all, run_pt

ROOT = Path(__file__).resolve().parents[1]
PY = ROOT / ".venv-parallel" / "bin" / "python"
MPIEXEC = "/usr/bin/mpiexec.mpich"
pytestmark = pytest.mark.mpi


@pytest.fixture(scope="module", autouse=True)
def parallel_env():
    if not PY.exists() or not Path(MPIEXEC).exists():
        pytest.fail("the parallel-HDF5 environment is missing: run `make setup-parallel`")
    ok = subprocess.run([PY, "-c", "import h5py; print(h5py.get_config().mpi)"],
                        capture_output=True, text=True)
    assert ok.stdout.strip() == "True", ok.stderr


def parallel_cmd(*args, ranks=2):
    return [MPIEXEC, "-n", str(ranks), str(PY), "-m", "ising_dist.pt", *map(str, args)]


def penv():
    return dict(os.environ, NUMBA_NUM_THREADS="1", PYTHONPATH=str(ROOT))


def test_collective_and_gather_writers_produce_the_same_file(tmp_path):
    args = [*SMALL, "--sweeps", "400", "--checkpoint-every", "150"]
    files = {}
    for writer in ("collective", "gather"):
        out = tmp_path / f"{writer}.h5"
        res = subprocess.run(parallel_cmd(*args, "--writer", writer, "--out", out), env=penv(),
                             cwd=ROOT, capture_output=True, text=True, timeout=600)
        assert res.returncode == 0, res.stdout + res.stderr
        files[writer] = read_all(out)
    serial = tmp_path / "serial.h5"
    run_pt(*args, "--out", serial)  # the default environment, one process
    assert_same_data(files["collective"], files["gather"])
    assert_same_data(files["collective"], read_all(serial))
    with h5py.File(tmp_path / "collective.h5", "r") as f:
        assert f.attrs["sweeps_done"] == 600 and f["spins"].shape == (6, 200, 8, 8)
    assert subprocess.run(["h5ls", "-r", str(tmp_path / "collective.h5")],
                          capture_output=True).returncode == 0


def test_collective_writer_checkpoints_on_sigterm_and_resumes(tmp_path):
    args = [*SMALL, "--L", "16", "--exchange-every", "10", "--checkpoint-every", "1000000"]
    out = tmp_path / "coll.h5"
    proc = subprocess.Popen(parallel_cmd(*args, "--sweeps", "2000000", "--writer", "collective",
                                         "--out", out), env=penv(), cwd=ROOT,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    time.sleep(8.0)
    assert proc.poll() is None
    proc.send_signal(signal.SIGTERM)  # Hydra forwards it to both ranks
    stdout, stderr = proc.communicate(timeout=120)
    assert proc.returncode == 0 and "stopped at sweep" in stdout, stdout + stderr
    with h5py.File(out, "r") as f:
        cur = f["checkpoint/current"][0]
        done = int(f[f"checkpoint/slot{cur}/position"][0])
    assert done > 200
    sweeps = str(done - 200 + 1000)
    res = subprocess.run(parallel_cmd("--out", out, "--resume", "--sweeps", sweeps,
                                      "--writer", "collective", "--no-progress"),
                         env=penv(), cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert res.returncode == 0, res.stdout + res.stderr
    ref = tmp_path / "ref.h5"
    run_pt(*args, "--sweeps", sweeps, "--out", ref)
    assert_same_data(read_all(ref), read_all(out))


def test_collective_without_parallel_h5py_is_refused(tmp_path):
    res = run_pt(*SMALL, "--sweeps", "100", "--writer", "collective", "--out",
                 tmp_path / "x.h5", check=False)  # the default venv: serial h5py
    assert res.returncode == 2 and "parallel HDF5" in res.stderr and "--writer gather" in res.stderr
