"""The one file that `ray submit` ships: runs a stage of ising_dist on the cluster it lands on.

    ray submit configs/ray/cluster.yaml configs/ray/submit.py -- train --config CFG [flags]
    ray submit configs/ray/cluster.yaml configs/ray/submit.py -- tune --config CFG [flags]

It runs on the head node and connects to the running Ray cluster. Started by whatever
`python` the login shell finds, it re-executes itself with the project's python
($ISING_DIST_PYTHON, set by the cluster YAML) when that one cannot import ising_dist.
"""

import os
import sys

STAGES = ("train", "tune")


def main(argv):
    if not argv or argv[0] not in STAGES:
        print(f"usage: submit.py {{{','.join(STAGES)}}} [flags of python -m ising_dist.<stage>]",
              file=sys.stderr)
        return 2
    try:
        import ising_dist  # noqa: F401
    except ImportError:
        project_python = os.environ.get("ISING_DIST_PYTHON")
        if not project_python or os.environ.get("ISING_DIST_REEXEC"):
            print("error: ising_dist is not importable and $ISING_DIST_PYTHON does not name the "
                  "project's python; run the cluster YAML's setup_commands (ray up)",
                  file=sys.stderr)
            return 2
        os.environ["ISING_DIST_REEXEC"] = "1"  # once: a venv python is a symlink, no path test
        os.execv(project_python, [project_python, os.path.abspath(__file__), *argv])
    os.environ.setdefault("RAY_ADDRESS", "auto")  # the cluster this head belongs to
    os.environ.setdefault("RAY_AUTH_MODE", "disabled")
    if argv[0] == "train":
        from ising_dist.train import main as stage_main
    else:
        from ising_dist.tune import main as stage_main
    return stage_main(argv[1:])


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
