# Two commands matter (see README): `make demo` and `make test`. Both set everything up first.
PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed
# Debian packages: hdf5-tools gives h5ls/h5dump/h5clear (used by tests and by --resume of a
# killed run). MPI comes from PyPI (mpich), so no system MPI is needed.
APT_PACKAGES := hdf5-tools slurmctld slurmd slurm-client munge openssh-server openssh-client rsync
SUDO   := $(shell [ "$$(id -u)" = 0 ] || echo sudo)
export PATH := $(CURDIR)/$(VENV)/bin:$(PATH)
export MPIR_CVAR_CH4_PROGRESS_THROTTLE := 1

# The cluster option: parallel HDF5 (h5py over Debian's MPICH + libhdf5-mpich) in a venv of its
# own, for `--writer collective`. The default venv keeps PyPI MPICH + serial h5py.
PVENV  := .venv-parallel
PSTAMP := $(PVENV)/.installed
APT_PARALLEL := mpich libmpich-dev libhdf5-mpich-dev pkg-config

NATIVE := build/libising_kernels.so

.PHONY: setup setup-parallel demo test test-fast bench clean latent-tc latent-tc-small

setup: $(STAMP) $(NATIVE)

# the native C kernels (hpc/): CMake finds the venv's MPI and python; `--backend auto` uses them
$(NATIVE): $(STAMP) CMakeLists.txt $(wildcard hpc/*.c hpc/*.h)
	cmake -S . -B build -DISING_PYTHON=$(CURDIR)/$(PY) > build.log 2>&1 || { cat build.log; exit 1; }
	cmake --build build -j 2 >> build.log 2>&1 || { cat build.log; exit 1; }

setup-parallel: $(PSTAMP)

$(PSTAMP): pyproject.toml
	@dpkg -s $(APT_PARALLEL) >/dev/null 2>&1 || { $(SUDO) apt-get update -qq && \
	  DEBIAN_FRONTEND=noninteractive $(SUDO) apt-get install -y -qq $(APT_PARALLEL); }
	test -x $(PVENV)/bin/python || $(PYTHON) -m venv $(PVENV)
	$(PVENV)/bin/python -m pip install -q --upgrade pip
	$(PVENV)/bin/python -m pip install -q numpy==2.4.6 numba==0.68.1 scipy==1.17.1 \
	  pyyaml==6.0.3 tqdm==4.70.1 "Cython>=3" pkgconfig "setuptools>=77" wheel
	MPICC=/usr/bin/mpicc.mpich $(PVENV)/bin/python -m pip install -q --no-binary=mpi4py mpi4py==4.1.2
	# --no-build-isolation: otherwise the build compiles an mpi4py of its own (and ate 21 GB)
	CC=/usr/bin/mpicc.mpich HDF5_MPI=ON HDF5_PKGCONFIG_NAME=hdf5-mpich $(PVENV)/bin/python -m pip \
	  install -q --no-build-isolation --no-binary=h5py h5py==3.16.0
	$(PVENV)/bin/python -m pip install -q --no-deps -e .
	$(PVENV)/bin/python -c "import h5py; assert h5py.get_config().mpi, 'h5py without MPI'"
	touch $@

$(STAMP): pyproject.toml
	@dpkg -s $(APT_PACKAGES) >/dev/null 2>&1 || { $(SUDO) apt-get update -qq && \
	  DEBIAN_FRONTEND=noninteractive $(SUDO) apt-get install -y -qq $(APT_PACKAGES); }
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q torch==2.13.0     # first, exactly: the CPU wheel
	$(PY) -m pip install -q -e '.[dev]'
	touch $@

# sample -> train -> evaluate -> report, on the small embedded defaults (a few minutes on
# 2 cores). It re-creates runs/demo/ each time: copy results you want to keep elsewhere.
DEMO := runs/demo
# The second half: an autoregressive model (exact ln q) as the proposal of neural MCMC at every
# temperature of the demo ladder; its report compares the corrected observables with MCMC.
# 40000 proposals per T: shorter chains of an independence sampler miss the rare long stays
# in states the proposal underweights, so they underestimate tau_int and their errors.
DEMO_TEMPS = $(PY) -c "import h5py; print(','.join(repr(float(t)) for t in \
  h5py.File('$(DEMO)/pt.h5', 'r')['temperatures'][()]))"
demo: setup
	rm -rf $(DEMO)/train $(DEMO)/report $(DEMO)/train-ar $(DEMO)/report-ar
	NUMBA_NUM_THREADS=1 mpiexec -n 2 $(PY) -m ising_dist.pt --config configs/pt/demo.yaml \
	  --out $(DEMO)/pt.h5 --overwrite
	$(PY) -m ising_dist.train --config configs/train/demo.yaml --data $(DEMO)/pt.h5 \
	  --out $(DEMO)/train --workers 2
	$(PY) -m ising_dist.evaluate --data $(DEMO)/pt.h5 --model $(DEMO)/train --out $(DEMO)/report
	$(PY) -m ising_dist.train --config configs/train/demo-ar.yaml --data $(DEMO)/pt.h5 \
	  --out $(DEMO)/train-ar --workers 2
	$(PY) -m ising_dist.nmcmc --model $(DEMO)/train-ar --temperatures "$$($(DEMO_TEMPS))" \
	  --steps 40000 --out $(DEMO)/nmcmc.h5 --overwrite
	$(PY) -m ising_dist.evaluate --data $(DEMO)/pt.h5 --model $(DEMO)/train-ar \
	  --nmcmc $(DEMO)/nmcmc.h5 --out $(DEMO)/report-ar
	@echo "report: $(CURDIR)/$(DEMO)/report/index.html"
	@echo "report (autoregressive + neural MCMC): $(CURDIR)/$(DEMO)/report-ar/index.html"

test: setup setup-parallel
	ctest --test-dir build -L '^(c|mpi)$$' --output-on-failure
	$(PY) -m pytest

test-fast: setup setup-parallel
	$(PY) -m pytest -m "not validation"

# The latent Tc by finite-size scaling (issue 15): tc-scan PT at L = 16, 32, 64, an AE and a VAE
# trained on each, judged together (python -m ising_dist.judge.tc_scan; runs/latent-tc/).
# About 20 minutes on 2 cores; a rerun continues where one stopped. latent-tc-small: the same
# pipeline with shorter runs.
latent-tc: setup
	$(PY) -m ising_dist.judge.tc_scan --L 16 32 64 --out runs/latent-tc

latent-tc-small: setup
	$(PY) -m ising_dist.judge.tc_scan --L 16 32 64 --sweeps 10000 --thermalize 2000 \
	  --sample-every 5 --epochs 8 --samples 1000 --out runs/latent-tc-small

bench: setup
	$(PY) -m benchmarks.kernels
	$(PY) -m benchmarks.pt

clean:
	rm -rf runs report build .pytest_cache
