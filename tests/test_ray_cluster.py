"""`ray up` / `ray submit` / `ray down` with configs/ray/cluster.yaml, for real: the cluster
launcher's local provider reaches this machine over an sshd that the test starts on 127.0.0.1
with a key it generates (no dotfiles are touched), and stops again.

The launcher runs `ray stop` on its nodes (before `ray start`, and in `ray down`), which stops
every Ray process of the user on the node. So the sshd, and every command the launcher runs
through it, lives in a PID namespace of its own (`unshare --pid`): there `ray stop` sees only
the test cluster's processes, and ending the namespace ends all of them. A Ray running outside
on this machine (another test, a user's training) is untouched, which the test checks."""

import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from tests.test_pt import run_pt
from tests.test_train import local_ray_head, session_pids

ROOT = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent
PROFILE = Path("/etc/profile.d/ising_dist.sh")
pytestmark = pytest.mark.ray


@pytest.fixture(scope="module")
def sshd(tmp_path_factory):
    d = tmp_path_factory.mktemp("sshd")
    key = d / "id_ed25519"
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(key)], check=True)
    (d / "authorized_keys").write_text((d / "id_ed25519.pub").read_text())
    os.chmod(d / "authorized_keys", 0o600)
    Path("/run/sshd").mkdir(exist_ok=True)
    if not list(Path("/etc/ssh").glob("ssh_host_*_key")):
        subprocess.run(["ssh-keygen", "-A"], check=True)
    conf = d / "sshd_config"
    conf.write_text(f"""ListenAddress 127.0.0.1
Port 22
PermitRootLogin prohibit-password
PasswordAuthentication no
KbdInteractiveAuthentication no
UsePAM no
StrictModes no
AuthorizedKeysFile {d}/authorized_keys
PidFile {d}/sshd.pid
""")
    # -D: sshd stays in the foreground as the namespace's first process; --kill-child: when
    # unshare dies (it ignores SIGTERM while it waits, so SIGKILL), sshd gets SIGKILL, and the
    # end of a namespace's first process ends every process in it
    proc = subprocess.Popen(["unshare", "--pid", "--fork", "--kill-child", "--mount-proc",
                             "/usr/sbin/sshd", "-D", "-f", str(conf)])
    try:
        t0 = time.time()
        while True:
            assert proc.poll() is None, "sshd exited; is port 22 of 127.0.0.1 taken?"
            try:
                socket.create_connection(("127.0.0.1", 22), timeout=1).close()
                break
            except OSError:
                assert time.time() - t0 < 10, "sshd did not listen on 127.0.0.1:22 in 10 s"
                time.sleep(0.1)
        yield key
    finally:
        proc.kill()
        proc.wait(timeout=30)


def cluster_yaml(tmp, key):
    """configs/ray/cluster.yaml with its placeholders filled for this machine. The project is
    already installed here, so the file mount carries only the configs and the setup command
    points PATH at this checkout's venv (the shipped YAML syncs and installs the project)."""
    cfg = yaml.safe_load((ROOT / "configs/ray/cluster.yaml").read_text())
    cfg["cluster_name"] = f"ising-test-{os.getpid()}"
    cfg["provider"].update(head_ip="127.0.0.1", worker_ips=[])
    cfg["auth"] = {"ssh_user": "root", "ssh_private_key": str(key)}
    cfg["max_workers"] = 0
    cfg["file_mounts"] = {str(tmp / "mounted_configs"): str(ROOT / "configs")}
    cfg["setup_commands"] = [c.replace("$HOME/ising_dist", str(ROOT))
                             for c in cfg["setup_commands"] if "make" not in c]
    path = tmp / "cluster.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path


def test_ray_up_submit_down_leaves_other_rays_running(sshd, tmp_path):
    with local_ray_head(tmp_path / "other-ray.log") as other:   # another Ray of the same user
        before = session_pids(other.proc.pid)
        _up_submit_down(sshd, tmp_path)
        gone = before - session_pids(other.proc.pid)
        assert not gone and other.proc.poll() is None, f"`ray down` stopped {sorted(gone)}"


def _up_submit_down(sshd, tmp_path):
    pt = tmp_path / "pt.h5"
    run_pt("--config", "configs/pt/demo.yaml", "--no-progress", "--out", pt)
    yml = cluster_yaml(tmp_path, sshd)
    env = dict(os.environ, PATH=f"{BIN}:{os.environ['PATH']}", RAY_AUTH_MODE="disabled")
    ray = str(BIN / "ray")
    backup = PROFILE.read_text() if PROFILE.exists() else None
    try:
        up = subprocess.run([ray, "up", "-y", "--no-config-cache", str(yml)], env=env, cwd=ROOT,
                            capture_output=True, text=True, timeout=600)
        assert up.returncode == 0, up.stdout[-3000:] + up.stderr[-3000:]
        run = tmp_path / "run"
        sub = subprocess.run([ray, "submit", str(yml), "configs/ray/submit.py", "--", "train",
                              "--config", str(tmp_path / "mounted_configs/train/demo.yaml"),
                              "--data", str(pt), "--out", str(run), "--epochs", "1"],
                             env=env, cwd=ROOT, capture_output=True, text=True, timeout=900)
        assert sub.returncode == 0, sub.stdout[-3000:] + sub.stderr[-3000:]
        assert (run / "model.pt").is_file() and (run / "metrics.csv").is_file()
    finally:
        subprocess.run([ray, "down", "-y", str(yml)], env=env, cwd=ROOT, capture_output=True,
                       timeout=300)
        if backup is None:
            PROFILE.unlink(missing_ok=True)
        else:
            PROFILE.write_text(backup)
