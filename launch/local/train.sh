#!/usr/bin/env bash
# One-node launcher (CPU or GPU): torchrun with N processes running megatron_tulu.train.
#   bash launch/local/train.sh NPROC --recipe FILE [section.key=value ...]
#   DRY_RUN=1 bash launch/local/train.sh NPROC --recipe FILE ...   # print the rank layout only
# On CPU each rank gets cores/NPROC intra-op threads (at least 1).
#
# Graceful stop: SIGUSR1 or SIGTERM sent to this script (`kill -USR1 PID`) is passed to every
# rank; they finish the current optimizer step, save a checkpoint and exit 0, and the next run
# resumes from it (training.resume=auto). torchrun itself ignores both signals, also when Slurm
# signals every process of the step (by default it dies of SIGUSR1, and on SIGTERM it stops the
# ranks, kills them 30 s later and exits non-zero); Ctrl-C still stops everything at once.
#
# It is also each node's job step in launch/slurm/ (one srun task per node), configured by:
#   MT_NNODES        number of nodes (default 1); > 1 (or MT_RDZV=static) uses a static
#                    rendezvous, so global rank = node_rank * NPROC + local_rank
#   MT_NODE_RANK     this node's index (default: $SLURM_PROCID, the srun task index)
#   MASTER_ADDR, MASTER_PORT   rendezvous host (node 0) and port, for the static rendezvous
#   MT_RANK_LOG_DIR  per-rank stdout/stderr files under $MT_RANK_LOG_DIR/node<N>/ (torchrun --tee)
#   MT_CONSOLE_RANKS local ranks also echoed to the console with MT_RANK_LOG_DIR (e.g. "0,7")
#   MT_TRAIN_MODULE  the module each rank runs (default megatron_tulu.train)
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
nproc_per_node="${1:?usage: train.sh NPROC --recipe FILE [overrides...]}"
shift
py="${PYTHON:-$root/.venv/bin/python}"
export PYTHONWARNINGS="${PYTHONWARNINGS:-ignore}"
cd "$root"
nnodes="${MT_NNODES:-1}"
if [ "${DRY_RUN:-0}" = 1 ]; then
  exec "$py" -m megatron_tulu.tools.launch_plan --nodes "$nnodes" --gpus-per-node "$nproc_per_node" "$@"
fi
if [ -z "${OMP_NUM_THREADS:-}" ]; then
  cores="$(nproc)"
  export OMP_NUM_THREADS=$(( cores / nproc_per_node > 0 ? cores / nproc_per_node : 1 ))
fi

node_rank="${MT_NODE_RANK:-${SLURM_PROCID:-0}}"
run=(--nproc-per-node "$nproc_per_node")
if [ "$nnodes" -gt 1 ] || [ "${MT_RDZV:-}" = static ]; then
  run+=(--nnodes "$nnodes" --node-rank "$node_rank" --rdzv-id "${SLURM_JOB_ID:-local}"
        --master-addr "${MASTER_ADDR:?MASTER_ADDR must name node 0 for a multi-node run}"
        --master-port "${MASTER_PORT:-29500}")
else
  run+=(--standalone)
fi
if [ -n "${MT_RANK_LOG_DIR:-}" ]; then
  run+=(--log-dir "$MT_RANK_LOG_DIR/node$node_rank" --tee 3)
  if [ -n "${MT_CONSOLE_RANKS:-}" ]; then
    run+=(--local-ranks-filter "$MT_CONSOLE_RANKS")
  fi
fi

# torchrun (torch >= 2.9) installs a handler for each of --signals-to-handle (default
# SIGTERM,SIGINT,SIGHUP,SIGQUIT; it overwrites TORCHELASTIC_SIGNALS_TO_HANDLE from the flag):
# name all but SIGTERM. It and (until they install their own handler, stages/signals.py) the
# ranks then keep the "ignore" inherited from here for SIGUSR1 and SIGTERM.
run+=(--signals-to-handle "SIGINT,SIGHUP,SIGQUIT")
(
  trap '' USR1 TERM
  exec "$py" -m torch.distributed.run "${run[@]}" -m "${MT_TRAIN_MODULE:-megatron_tulu.train}" "$@"
) &
launcher=$!
forward() {  # the ranks are torchrun's children
  echo "train.sh: got SIG$1, passing it to the ranks (they save after this step and exit)" >&2
  pkill "-$1" -P "$launcher" || true
}
trap 'forward USR1' USR1
trap 'forward TERM' TERM
trap ':' INT  # Ctrl-C: torchrun stops the ranks; keep waiting for it
while :; do
  status=0
  wait "$launcher" || status=$?
  # wait returns > 128 when a trapped signal interrupts it: keep waiting while torchrun runs
  if [ "$status" -gt 128 ] && kill -0 "$launcher" 2>/dev/null; then
    continue
  fi
  exit "$status"
done
