#!/bin/bash
# Train (or search) generative models with Ray across a Slurm allocation.
#
#   sbatch slurm/train.sh train configs/train/demo.yaml --data runs/demo/pt.h5 [--epochs 20 ...]
#   sbatch --nodes=4 --cpus-per-task=32 slurm/train.sh tune configs/tune/latent-kl.yaml --data /abs/pt.h5
#   sbatch --dependency=afterok:<simulate job id> slurm/train.sh train configs/train/vae-mlp.yaml --data ...
#
# A Ray head starts on the first node of the allocation and a worker on every other node (one
# srun task per node, all CPUs of that task given to Ray); the stage then runs against that
# cluster (RAY_ADDRESS) and the cluster is stopped at the end, also on failure or SIGTERM.
# Paths given to --data/--out are made absolute (Ray workers run in their own directories).
#SBATCH --job-name=ising-train
#SBATCH --nodes=1
#SBATCH --ntasks-per-node=1
#SBATCH --cpus-per-task=2
#SBATCH --time=01:00:00
#SBATCH --output=ising-train-%j.out
set -euo pipefail

cd "${ISING_DIST_HOME:-${SLURM_SUBMIT_DIR:-$(dirname "$0")/..}}"
if [ -f .venv/bin/activate ]; then source .venv/bin/activate; fi   # README's install

stage="${1:-train}"
config="${2:-configs/$stage/demo.yaml}"
shift $(( $# < 2 ? $# : 2 ))
case "$stage" in train|tune) ;; *) echo "error: stage '$stage': use train or tune" >&2; exit 2;; esac

args=()   # absolute --data/--out
while [ $# -gt 0 ]; do
    case "$1" in
        --data|--out) args+=("$1" "$(realpath -m "$2")"); shift 2;;
        *) args+=("$1"); shift;;
    esac
done

# a private cluster for this job: auth off (the ports live only as long as the job), a port
# derived from the job id so that jobs sharing a node do not collide
export RAY_AUTH_MODE=disabled
cpus="${SLURM_CPUS_PER_TASK:-2}"
port=$(( 20000 + ${SLURM_JOB_ID:-0} % 20000 ))
mapfile -t nodes < <(scontrol show hostnames "${SLURM_JOB_NODELIST:-localhost}")
head="${nodes[0]}"
head_ip=$(srun --overlap --nodes=1 --ntasks=1 -w "$head" hostname -i | awk '{print $1}')
export RAY_ADDRESS="$head_ip:$port"

steps=()
cleanup() {
    for node in "${nodes[@]}"; do
        srun --overlap --nodes=1 --ntasks=1 -w "$node" ray stop --force >/dev/null 2>&1 || true
    done
    for pid in "${steps[@]}"; do kill "$pid" 2>/dev/null || true; done
    wait 2>/dev/null || true
}
trap cleanup EXIT
trap 'exit 143' TERM

echo "job ${SLURM_JOB_ID:-?}: Ray head on $head ($RAY_ADDRESS), ${#nodes[@]} node(s), $cpus CPUs each"
srun --overlap --nodes=1 --ntasks=1 -w "$head" ray start --head --node-ip-address="$head_ip" \
    --port="$port" --num-cpus="$cpus" --include-dashboard=false --disable-usage-stats --block &
steps+=($!)
for _ in $(seq 120); do ray status >/dev/null 2>&1 && break; sleep 1; done
ray status >/dev/null || { echo "error: the Ray head did not come up" >&2; exit 1; }
for node in "${nodes[@]:1}"; do
    srun --overlap --nodes=1 --ntasks=1 -w "$node" ray start --address="$RAY_ADDRESS" \
        --num-cpus="$cpus" --disable-usage-stats --block &
    steps+=($!)
done

python -m "ising_dist.$stage" --config "$config" "${args[@]}"
