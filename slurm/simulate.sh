#!/bin/bash
# Parallel tempering on a Slurm cluster.
#
#   sbatch slurm/simulate.sh configs/pt/default.yaml [--L 64 --out runs/L64.h5 ...]
#   sbatch --ntasks=64 --time=12:00:00 slurm/simulate.sh configs/pt/default.yaml
#
# Arguments: a PT config (default configs/pt/default.yaml) then any `python -m ising_dist.pt`
# flags. Extra flags may also come from the environment: ISING_PT_ARGS="--L 64".
# Slurm sends SIGTERM to the ranks 120 s before the time limit: they write a checkpoint and
# exit 0. The job is requeue-safe: when the output file exists it is resumed (a file of another
# run is refused, never overwritten), so `scontrol requeue` or a resubmission continues it.
# Only one job writes an output: while a job runs, its writing rank holds <out>.lock, and a
# second job onto the same --out (a duplicate submission) fails at once with an error naming
# the live job (ising_dist.runlock); a requeued job takes over the lock its killed run left.
#SBATCH --job-name=ising-pt
#SBATCH --ntasks=4
#SBATCH --cpus-per-task=1
#SBATCH --time=01:00:00
#SBATCH --output=ising-pt-%j.out
#SBATCH --open-mode=append
#SBATCH --signal=TERM@120
#SBATCH --requeue
set -euo pipefail

# the project: where sbatch was called from (sbatch runs a copy of this script), or ISING_DIST_HOME
cd "${ISING_DIST_HOME:-${SLURM_SUBMIT_DIR:-$(dirname "$0")/..}}"
if [ -f .venv/bin/activate ]; then source .venv/bin/activate; fi   # README's install

config="${1:-configs/pt/default.yaml}"
shift || true
# shellcheck disable=SC2206
args=(--config "$config" "$@" ${ISING_PT_ARGS:-})

export NUMBA_NUM_THREADS="${SLURM_CPUS_PER_TASK:-1}"  # one numba thread per core of a rank
export MPIR_CVAR_CH4_PROGRESS_THROTTLE=1             # MPICH: no busy-polling when oversubscribed

out=$(python -m ising_dist.pt "${args[@]}" --dry-run | sed -n 's/^out: //p')
resume=()
if [ -f "$out" ]; then
    echo "resuming $out"
    resume=(--resume)
fi

if [ -n "${SLURM_JOB_ID:-}" ]; then
    echo "job $SLURM_JOB_ID: ${SLURM_NTASKS:-1} ranks on ${SLURM_JOB_NODELIST:-?}"
    srun --mpi=pmi2 python -m ising_dist.pt "${args[@]}" "${resume[@]}"
else  # outside Slurm: plain mpiexec
    mpiexec -n "${NTASKS:-2}" python -m ising_dist.pt "${args[@]}" "${resume[@]}"
fi
echo "HDF5 file: $(realpath "$out")"
