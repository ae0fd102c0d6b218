"""``python -m ising_dist.evaluate``: the judge stage's command line.

The implementation lives in the ising_dist.judge package (cli, driver, compare, latent,
embedding, cost, neural_mcmc, report); see ``python -m ising_dist.evaluate --help``.
"""
import sys

from .judge.cli import main

if __name__ == "__main__":
    sys.exit(main())
