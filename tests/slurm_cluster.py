"""A real one-node Slurm (Debian's slurmctld + slurmd + munge) started and stopped by tests.

Everything lives under a temporary directory (config, state, spool, logs); clients find it
through SLURM_CONF. Daemons are stopped by pid in :meth:`stop`, even after a failing test.
"""

import os
import shutil
import socket
import subprocess
import time
from pathlib import Path

PACKAGES = "apt-get install slurmctld slurmd slurm-client munge"


def _free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class SlurmCluster:
    def __init__(self, root, cpus=8):
        for exe in ("slurmctld", "slurmd", "munged", "sbatch"):
            if shutil.which(exe) is None and not Path(f"/usr/sbin/{exe}").exists():
                raise RuntimeError(f"{exe} not found: install Slurm with `{PACKAGES}` "
                                   f"(`make setup` does this)")
        self.root = Path(root)
        self.cpus = cpus
        self.conf = self.root / "slurm.conf"
        self.pids = {}
        self.env = dict(os.environ, SLURM_CONF=str(self.conf))

    def write_config(self):
        r = self.root
        for d in ("state", "spool", "log"):
            (r / d).mkdir(parents=True, exist_ok=True)
        self.conf.write_text(f"""\
ClusterName=isingtest
SlurmctldHost=localhost(127.0.0.1)
SlurmctldPort={_free_port()}
SlurmdPort={_free_port()}
SlurmUser=root
AuthType=auth/munge
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
MpiDefault=pmi2
SelectType=select/cons_tres
SelectTypeParameters=CR_Core
SlurmdParameters=config_overrides
EnforcePartLimits=ALL
ReturnToService=2
StateSaveLocation={r}/state
SlurmdSpoolDir={r}/spool
SlurmctldPidFile={r}/slurmctld.pid
SlurmdPidFile={r}/slurmd.pid
SlurmctldLogFile={r}/log/slurmctld.log
SlurmdLogFile={r}/log/slurmd.log
JobCompType=jobcomp/none
KillWait=10
NodeName=localhost NodeAddr=127.0.0.1 CPUs={self.cpus} State=UNKNOWN
PartitionName=debug Nodes=localhost Default=YES MaxTime=INFINITE State=UP
""")

    def start(self):
        self.write_config()
        self._start_munge()
        subprocess.run(["slurmctld", "-f", str(self.conf)], check=True, env=self.env)
        self.pids["slurmctld"] = self._read_pid("slurmctld.pid")
        subprocess.run(["slurmd", "-f", str(self.conf), "-N", "localhost"], check=True,
                       env=self.env)
        self.pids["slurmd"] = self._read_pid("slurmd.pid")
        t0 = time.time()
        while time.time() - t0 < 60:
            out = subprocess.run(["sinfo", "-h", "-o", "%t"], capture_output=True, text=True,
                                 env=self.env).stdout.strip()
            if out in ("idle", "mix", "alloc"):
                return self
            time.sleep(0.5)
        raise RuntimeError(f"Slurm node did not come up (state {out!r}); see {self.root}/log")

    def _start_munge(self):
        if subprocess.run(["pgrep", "-x", "munged"], capture_output=True).returncode == 0:
            return  # a munged is already serving /run/munge
        run = Path("/run/munge")
        run.mkdir(exist_ok=True)
        shutil.chown(run, "munge", "munge")
        subprocess.run(["runuser", "-u", "munge", "--", "/usr/sbin/munged"], check=True)
        pid_file = run / "munged.pid"
        t0 = time.time()
        while not pid_file.exists() and time.time() - t0 < 10:
            time.sleep(0.1)
        self.pids["munged"] = int(pid_file.read_text())

    def _read_pid(self, name):
        path = self.root / name
        t0 = time.time()
        while time.time() - t0 < 10:
            if path.exists() and path.read_text().strip():
                return int(path.read_text())
            time.sleep(0.1)
        raise RuntimeError(f"{name} did not appear; see {self.root}/log")

    def run(self, *cmd, check=True, timeout=600, **kw):
        res = subprocess.run(list(map(str, cmd)), capture_output=True, text=True,
                             env=kw.pop("env", self.env), timeout=timeout, **kw)
        if check and res.returncode != 0:
            raise AssertionError(f"{cmd} failed ({res.returncode}):\n{res.stdout}\n{res.stderr}")
        return res

    def job_state(self, job_id):
        out = self.run("scontrol", "show", "job", job_id, check=False).stdout
        for word in out.split():
            if word.startswith("JobState="):
                return word.split("=", 1)[1]
        return "UNKNOWN"

    def stop(self):
        subprocess.run(["scontrol", "shutdown"], env=self.env, capture_output=True, timeout=30)
        for name in ("slurmd", "slurmctld", "munged"):
            pid = self.pids.get(name)
            if pid is None:
                continue
            t0 = time.time()
            while time.time() - t0 < 15:
                try:
                    os.kill(pid, 0)
                except ProcessLookupError:
                    break
                if time.time() - t0 > 5:
                    os.kill(pid, 15)
                time.sleep(0.2)
            else:
                try:
                    os.kill(pid, 9)
                except ProcessLookupError:
                    pass
