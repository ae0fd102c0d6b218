"""ising_dist: parallel-tempering Ising sampling, generative models, physics evaluation."""

__version__ = "0.1.0"
