"""ising_dist: parallel-tempering Ising sampling, generative models, physics evaluation."""

import os

# OpenMP threads (numba's threading layer, the native kernels) spin-wait at barriers by
# default; on a shared or oversubscribed node that turned a 0.5 s run into 14-26 s here.
# Must be set before either runtime loads; a user's own setting wins.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

__version__ = "0.1.0"
