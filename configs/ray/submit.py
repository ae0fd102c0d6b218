"""The one file that `ray submit` ships: runs a stage of ising_dist on the cluster it lands on.

    ray submit configs/ray/cluster.yaml configs/ray/submit.py -- train --config CFG [flags]
    ray submit configs/ray/cluster.yaml configs/ray/submit.py -- tune --config CFG [flags]

It runs on the head node with the project's python (the cluster YAML puts it on PATH) and
connects to the running Ray cluster.
"""

import os
import sys

STAGES = ("train", "tune")


def main(argv):
    if not argv or argv[0] not in STAGES:
        print(f"usage: submit.py {{{','.join(STAGES)}}} [flags of python -m ising_dist.<stage>]",
              file=sys.stderr)
        return 2
    os.environ.setdefault("RAY_ADDRESS", "auto")  # the cluster this head belongs to
    os.environ.setdefault("RAY_AUTH_MODE", "disabled")
    if argv[0] == "train":
        from ising_dist.train import main as stage_main
    else:
        from ising_dist.tune import main as stage_main
    return stage_main(argv[1:])


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
