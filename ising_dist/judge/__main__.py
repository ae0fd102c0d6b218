"""``python -m ising_dist.judge``: the same command line as ``python -m ising_dist.evaluate``."""
import sys

from .cli import main

sys.exit(main())
