"""Check that parallel-tempering outputs of the same config on different rank counts agree.

Usage: python hpc/compare_pt_runs.py run_n1.h5 run_n2.h5 [run_n4.h5 ...]

/spins and /energy must be identical (bit for bit) across all files: every replica has its
own random streams, so the number of MPI ranks must not change the samples. Registered as
the CTest test ``mpi_pt_identical`` after ``mpi_pt_n{1,2,4}``. Exit status 1 on a mismatch.
"""

import sys

import h5py
import numpy as np

REQUIRED = ("spins", "energy")
ALSO_IF_PRESENT = ("magnetization", "temperatures", "sweep")


def main(paths):
    if len(paths) < 2:
        print(__doc__)
        return 2
    ref_path, others = paths[0], paths[1:]
    failed = False
    with h5py.File(ref_path, "r") as ref:
        for name in REQUIRED:
            if name not in ref:
                print(f"{ref_path}: no /{name} dataset")
                return 1
        for path in others:
            with h5py.File(path, "r") as f:
                for name in REQUIRED + ALSO_IF_PRESENT:
                    if name not in ref and name not in f:
                        continue
                    if name not in f or name not in ref:
                        print(f"/{name}: present in only one of {ref_path}, {path}")
                        failed = True
                        continue
                    a, b = ref[name][()], f[name][()]
                    if a.shape != b.shape:
                        print(f"/{name}: shape {a.shape} in {ref_path} but {b.shape} in {path}")
                        failed = True
                    elif not np.array_equal(a, b):
                        bad = np.argwhere(a != b)
                        print(f"/{name}: {len(bad)} values differ between {ref_path} and "
                              f"{path}, first at index {tuple(bad[0])}")
                        failed = True
        shape = ref["spins"].shape
    if failed:
        return 1
    print(f"identical /spins {shape} and /energy in {len(paths)} files")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
