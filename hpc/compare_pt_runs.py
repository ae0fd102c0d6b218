"""Check parallel-tempering outputs of one config run on different rank counts: identical, and
right.

Usage: python hpc/compare_pt_runs.py run_n1.h5 run_n2.h5 [run_n4.h5 ...]

1. Identical: every dataset (/spins, /energy, /magnetization, /sweep, /replica,
   /temperatures, /exchange/*, /checkpoint/...) bit for bit, and the root attributes (the
   stored config up to its `out` path): every replica has its own random streams and the
   exchange decisions a stream of their own, so the number of MPI ranks must not change
   anything.
2. Right (on the first file): /energy and /magnetization are those of the stored /spins;
   every column of /replica is a permutation of the replicas; exchanges were attempted and
   accepted <= attempted; and at every temperature the mean energy per spin is within 4σ
   (σ by binning, which accounts for the autocorrelation) of Kaufman's exact e(T, L).

Registered as the CTest tests ``mpi_pt_identical`` (Metropolis), ``mpi_pt_wolff_identical``
and ``mpi_pt_hybrid_identical`` after the runs on 1, 2 and 4 ranks they compare.
Exit status 0 when everything holds, 1 on a mismatch or a failed check, 2 on bad usage.
"""

import sys

import h5py
import numpy as np
import yaml

from ising_dist import exact, observables

N_SIGMA = 4.0


def datasets(f):
    """{path: dataset} of every dataset in the open file f."""
    found = {}
    f.visititems(lambda name, obj: found.update({name: obj}) if isinstance(obj, h5py.Dataset)
                 else None)
    return found


def root_attributes(f):
    """The root attributes, with the config's `out` path (which differs by design) left out."""
    attrs = {k: f.attrs[k] for k in f.attrs}
    if "config" in attrs:
        config = yaml.safe_load(attrs["config"])
        config.pop("out", None)
        attrs["config"] = config
    return attrs


def differences(ref, ref_path, f, path):
    """Lines describing how the open file f differs from the open file ref."""
    out = []
    a_sets, b_sets = datasets(ref), datasets(f)
    for name in sorted(set(a_sets) ^ set(b_sets)):
        out.append(f"/{name}: present in only one of {ref_path}, {path}")
    for name in sorted(set(a_sets) & set(b_sets)):
        a, b = a_sets[name][()], b_sets[name][()]
        if a.shape != b.shape or a.dtype != b.dtype:
            out.append(f"/{name}: {a.dtype}{list(a.shape)} in {ref_path} but "
                       f"{b.dtype}{list(b.shape)} in {path}")
        elif not np.array_equal(a, b):
            bad = np.argwhere(a != b)
            out.append(f"/{name}: {len(bad)} values differ between {ref_path} and {path}, "
                       f"first at index {tuple(int(i) for i in bad[0])}")
    a_attrs, b_attrs = root_attributes(ref), root_attributes(f)
    for key in sorted(set(a_attrs) | set(b_attrs)):
        if key not in a_attrs or key not in b_attrs or \
                not np.array_equal(np.asarray(a_attrs[key], dtype=object),
                                   np.asarray(b_attrs[key], dtype=object)):
            out.append(f"attribute {key!r}: {a_attrs.get(key)!r} in {ref_path} but "
                       f"{b_attrs.get(key)!r} in {path}")
    return out


def physics_failures(f):
    """Lines describing every physics check (module docstring, 2.) that the open file fails."""
    out = []
    L = int(f.attrs["L"])
    T = f["temperatures"][()]
    spins, e, m = f["spins"][()], f["energy"][()], f["magnetization"][()]
    e_spins, m_spins = observables.energy_magnetization(spins)
    if not (np.allclose(e, e_spins, rtol=0, atol=1e-12)
            and np.allclose(m, m_spins, rtol=0, atol=1e-12)):
        out.append("/energy or /magnetization differ from those of the stored /spins")
    replica = f["replica"][()]
    if not (replica.shape == e.shape and
            np.array_equal(np.sort(replica, axis=0),
                           np.broadcast_to(np.arange(len(T))[:, None], replica.shape))):
        out.append("a column of /replica is not a permutation of the replicas")
    att, acc = f["exchange/attempted"][()], f["exchange/accepted"][()]
    if not (np.all(att > 0) and np.all(acc <= att)):
        out.append(f"exchange statistics impossible: attempted {att}, accepted {acc}")
    for k, t in enumerate(T):
        mean, err = e[k].mean(), observables.binning_error(e[k])
        ref = exact.kaufman_energy(float(t), L)
        if not abs(mean - ref) < N_SIGMA * err:
            out.append(f"T={t:.4f}: <e> = {mean:.5f} ± {err:.5f}, Kaufman {ref:.5f} "
                       f"({abs(mean - ref) / err:.1f}σ off)")
    return out


def main(paths):
    if len(paths) < 2:
        print(__doc__)
        return 2
    ref_path, others = paths[0], paths[1:]
    with h5py.File(ref_path, "r") as ref:
        problems = []
        for path in others:
            with h5py.File(path, "r") as f:
                problems += differences(ref, ref_path, f, path)
        problems += [f"{ref_path}: {line}" for line in physics_failures(ref)]
        shape, n_sets = ref["spins"].shape, len(datasets(ref))
    for line in problems:
        print(line)
    if problems:
        return 1
    print(f"{len(paths)} files identical ({n_sets} datasets, /spins {shape}); energies, "
          f"replica permutations and exchange statistics check out, <e> within "
          f"{N_SIGMA:.0f}σ of Kaufman at every temperature")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
