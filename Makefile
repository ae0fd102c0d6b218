# Two commands matter (see README): `make demo` and `make test`. Both set everything up first.
PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed
# Debian packages: hdf5-tools gives h5ls/h5dump/h5clear (used by tests and by --resume of a
# killed run). MPI comes from PyPI (mpich), so no system MPI is needed.
APT_PACKAGES := hdf5-tools slurmctld slurmd slurm-client munge
SUDO   := $(shell [ "$$(id -u)" = 0 ] || echo sudo)
export PATH := $(CURDIR)/$(VENV)/bin:$(PATH)
export MPIR_CVAR_CH4_PROGRESS_THROTTLE := 1

.PHONY: setup demo test test-fast bench clean

setup: $(STAMP)

$(STAMP): pyproject.toml
	@dpkg -s $(APT_PACKAGES) >/dev/null 2>&1 || { $(SUDO) apt-get update -qq && \
	  DEBIAN_FRONTEND=noninteractive $(SUDO) apt-get install -y -qq $(APT_PACKAGES); }
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q torch==2.13.0     # first, exactly: the CPU wheel
	$(PY) -m pip install -q -e '.[dev]'
	touch $@

# sample -> train -> evaluate -> report, on the small embedded defaults
demo: setup
	NUMBA_NUM_THREADS=1 mpiexec -n 2 $(PY) -m ising_dist.pt --config configs/pt/demo.yaml --overwrite

test: setup
	$(PY) -m pytest

test-fast: setup
	$(PY) -m pytest -m "not validation"

bench: setup
	$(PY) -m benchmarks.kernels
	$(PY) -m benchmarks.pt

clean:
	rm -rf runs report build .pytest_cache
