#!/bin/bash
# Train (or search) generative models with Ray across a Slurm allocation.
#
#   sbatch slurm/train.sh train configs/train/demo.yaml --data runs/demo/pt.h5 [--epochs 20 ...]
#   sbatch --nodes=4 --cpus-per-task=32 slurm/train.sh tune configs/tune/latent-kl.yaml --data /abs/pt.h5
#   sbatch --dependency=afterok:<simulate job id> slurm/train.sh train configs/train/vae-mlp.yaml --data ...
#
# A Ray head starts on the first node of the allocation and a worker on every other node (one
# srun task per node, all CPUs of that task given to Ray); the stage then runs against that
# cluster (RAY_ADDRESS) and the cluster is stopped at the end, also on failure or SIGTERM:
# only this job's Ray processes, so other Ray users on the same nodes are left alone.
# Paths given to --data/--out are made absolute (Ray workers run in their own directories).
#
# Stopping early: SIGTERM to this script (Slurm sends it --signal=B:TERM@120, i.e. 120 s before
# the time limit; by hand: `scancel --batch --signal=TERM JOB`) is passed on to the stage, which
# writes the checkpoint of the epoch in progress, prints the command that continues, and exits
# 0 (tune: SIGINT, which stops the search as Ctrl-C does). Give --signal more seconds than one
# epoch takes. Resubmit with the same arguments and --resume to continue. (A plain `scancel
# --signal=TERM` signals the job steps, which here are the Ray nodes: the cluster stops and the
# stage ends with the newest checkpoint and the same command.)
#SBATCH --job-name=ising-train
#SBATCH --nodes=1
#SBATCH --ntasks-per-node=1
#SBATCH --cpus-per-task=2
#SBATCH --time=01:00:00
#SBATCH --signal=B:TERM@120
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

# A private cluster for this job, so that it can share nodes with other Ray users (another job
# of the same user included): auth off (the ports live only as long as the job), its own temp
# dir on every node, and every port Ray would otherwise take at a fixed default (6379, 10001,
# 52365, …) derived from the job id, below Linux's ephemeral range (32768+).
export RAY_AUTH_MODE=disabled
export RAY_TRAIN_ENABLE_PREEMPTION_WATCHER=0   # Ray never drains a Slurm node; its actor logs an error
cpus="${SLURM_CPUS_PER_TASK:-2}"
base=$(( 20000 + ${SLURM_JOB_ID:-0} % 1200 * 10 ))
port=$base
temp="/tmp/ray-job${SLURM_JOB_ID:-$$}"     # short: Ray's socket paths are limited to 107 bytes
mapfile -t nodes < <(scontrol show hostnames "${SLURM_JOB_NODELIST:-localhost}")
head="${nodes[0]}"
head_ip=$(srun --overlap --nodes=1 --ntasks=1 -w "$head" hostname -i | awk '{print $1}')
export RAY_ADDRESS="$head_ip:$port"
node_args=(--temp-dir="$temp" --num-cpus="$cpus" --disable-usage-stats
            --node-manager-port=$((base + 1)) --object-manager-port=$((base + 2))
            --dashboard-agent-listen-port=$((base + 3)) --dashboard-agent-grpc-port=$((base + 4))
            --runtime-env-agent-port=$((base + 5)) --metrics-export-port=$((base + 6)))

# Ray runs only inside these srun steps (`ray start --block` stays in the foreground and owns
# the processes it starts). Stopping = SIGTERM to the steps: srun forwards it, and each
# `ray start --block` stops exactly its own processes; Slurm's process tracking ends whatever
# is left when the job ends. Never `ray stop`: it stops every Ray of the user on the node.
steps=()
cleanup() {
    for pid in "${steps[@]}"; do kill -TERM "$pid" 2>/dev/null || true; done
    for _ in $(seq 60); do
        alive=0
        for pid in "${steps[@]}"; do kill -0 "$pid" 2>/dev/null && alive=1; done
        [ $alive = 0 ] && break
        sleep 0.5
    done
    for pid in "${steps[@]}"; do kill -KILL "$pid" 2>/dev/null || true; done
    wait 2>/dev/null || true
    for node in "${nodes[@]}"; do   # this job's temp dir only
        srun --overlap --nodes=1 --ntasks=1 -w "$node" rm -rf "$temp" 2>/dev/null || true
    done
}
trap cleanup EXIT
driver=""
stop() {   # pass the stop on to the stage (see the top); before it runs, just end
    if [ -z "$driver" ]; then exit 143; fi
    kill -"$1" "$driver" 2>/dev/null || true
}
stop_signal=TERM; [ "$stage" = tune ] && stop_signal=INT
trap "stop $stop_signal" TERM INT

echo "job ${SLURM_JOB_ID:-?}: Ray head on $head ($RAY_ADDRESS), ${#nodes[@]} node(s), $cpus CPUs each"
srun --overlap --nodes=1 --ntasks=1 -w "$head" ray start --head --block \
    --node-ip-address="$head_ip" --port="$port" --ray-client-server-port=$((base + 7)) \
    --include-dashboard=false --dashboard-port=$((base + 8)) \
    "${node_args[@]}" &
steps+=($!)
for _ in $(seq 120); do ray status >/dev/null 2>&1 && break; sleep 1; done
ray status >/dev/null || { echo "error: the Ray head did not come up" >&2; exit 1; }
for node in "${nodes[@]:1}"; do
    srun --overlap --nodes=1 --ntasks=1 -w "$node" ray start --block --address="$RAY_ADDRESS" \
        "${node_args[@]}" &
    steps+=($!)
done

# in the background, so that this shell can pass a signal on while the stage runs
python -m "ising_dist.$stage" --config "$config" "${args[@]}" &
driver=$!
while :; do
    rc=0; wait "$driver" || rc=$?
    kill -0 "$driver" 2>/dev/null || break   # ended: rc is its exit code (else a signal came)
done
exit "$rc"
