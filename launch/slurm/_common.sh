# shellcheck shell=bash
# The body shared by launch/slurm/*.sbatch (sourced by them, never run on its own). Each job
# script sets its #SBATCH lines and layout defaults, sources this file and calls `mt_main "$@"`.
# See docs/slurm.md for the whole story; in short:
#
#   * one `srun` task per trainer node runs launch/local/train.sh, i.e. torchrun with one rank
#     per GPU and a static rendezvous on the first node (MASTER_ADDR from `scontrol show
#     hostnames`), so global rank = node * ranks_per_node + local GPU, as the dry run prints;
#   * RLVR jobs keep their last MT_ROLLOUT_GPUS GPUs for vLLM engines (whole trailing nodes, or
#     the last GPUs of a one-node job); MT_ROLLOUT_CMD, when set, is started there as its own step;
#   * `#SBATCH --signal=B:USR1@S` sends SIGUSR1 to this batch shell S seconds before the time
#     limit; the trap passes it to the trainer step (`kill -USR1` on its srun, which forwards it
#     to the tasks, which pass it to the ranks); all ranks stop after the same step, save and
#     exit 0; the trainer's end state ($MT_STATUS_FILE) says "stopped", and this shell runs
#     `scontrol requeue $SLURM_JOB_ID`; the requeued job resumes from `latest`
#     (training.resume=auto);
#   * DRY_RUN=1 prints the rank layout (python -m megatron_tulu.tools.launch_plan) and exits.
#
# Settings (environment; the job scripts give defaults, anything set at submission wins):
#   MT_RECIPE             recipe file (relative to the repository root)
#   MT_NODES              node count for a dry run outside Slurm (in a job: $SLURM_NNODES)
#   MT_GPUS_PER_NODE      default $SLURM_GPUS_ON_NODE, else 8
#   MT_PLAN_TP MT_PLAN_PP MT_PLAN_VPP     the layout the job is sized for (job script): what a
#                         dry run shows before the recipe exists; checked against it after
#   MT_TP MT_PP MT_VPP MT_CP   a different layout: passed as parallel.* overrides (default: none,
#                         the recipe's parallel section decides)
#   MT_ROLLOUT_GPUS MT_VLLM_TP MT_NUM_ENGINES   RLVR rollout partition: the last MT_ROLLOUT_GPUS
#                         GPUs are kept out of the trainer (checked against rollout.* of the recipe)
#   MT_ROLLOUT_CMD        command run (bash -c) on the rollout nodes as a second job step
#   MT_OVERRIDES          extra section.key=value overrides (whitespace-separated); arguments
#                         given to the job script come last and win
#   MT_LOG_DIR            default <repo>/logs; per-rank logs go to
#                         $MT_LOG_DIR/<job name>-<job id>/restart<N>/node<K>/
#   MT_CONSOLE_RANKS      local ranks echoed to the job log (default: first and last)
#   MT_MASTER_PORT        default 20000 + job id % 20000
#   MT_SITE_ENV           a file of cluster-specific exports (NCCL_IB_HCA, NCCL_SOCKET_IFNAME,
#                         ...), sourced before the defaults below
#   MT_REQUEUE=0          do not requeue after a stop; MT_RECIPE_CHECK=0: dry run without recipe
#   DRY_RUN=1             print the layout only
#   PYTHON                the interpreter (default <repo>/.venv/bin/python)

MT_ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"

mt_log() {
  echo "[$(date '+%Y-%m-%d %H:%M:%S')] ${SLURM_JOB_NAME:-job} ${SLURM_JOB_ID:-}: $*"
}

# NCCL / torch.distributed settings (docs/slurm.md explains each). Defaults only: values set in
# the submitting shell or in $MT_SITE_ENV win.
mt_nccl_env() {
  if [ -n "${MT_SITE_ENV:-}" ]; then
    # shellcheck source=/dev/null
    source "$MT_SITE_ENV"
  fi
  # megatron's TP / sequence-parallel communication overlap needs kernels to reach the GPU in
  # issue order: one hardware queue per device.
  export CUDA_DEVICE_MAX_CONNECTIONS=1
  # A failed or timed-out collective aborts its communicator and the process (instead of a hang),
  # so torchrun exits, srun --kill-on-bad-exit ends the step and the job can be resubmitted.
  export TORCH_NCCL_ASYNC_ERROR_HANDLING="${TORCH_NCCL_ASYNC_ERROR_HANDLING:-1}"
  export NCCL_ASYNC_ERROR_HANDLING="${NCCL_ASYNC_ERROR_HANDLING:-1}"  # torch < 2.2 name
  # On a collective timeout, dump the flight recorder (the last collectives of every rank) so a
  # hang at scale can be traced to the rank that never joined. (torch < 2.8 names:
  # TORCH_NCCL_TRACE_BUFFER_SIZE, TORCH_NCCL_DEBUG_INFO_TEMP_FILE.)
  export TORCH_FR_BUFFER_SIZE="${TORCH_FR_BUFFER_SIZE:-2000}"
  export TORCH_FR_DUMP_TEMP_FILE="${TORCH_FR_DUMP_TEMP_FILE:-$MT_RUN_LOG_DIR/nccl_trace_rank_}"
  export TORCH_NCCL_DUMP_ON_TIMEOUT="${TORCH_NCCL_DUMP_ON_TIMEOUT:-1}"
  # InfiniBand: a larger retransmit timeout (4.096 us * 2^22 ~ 17 s) rides out fabric congestion
  # at scale instead of failing the job; 7 retries is the maximum.
  export NCCL_IB_TIMEOUT="${NCCL_IB_TIMEOUT:-22}"
  export NCCL_IB_RETRY_CNT="${NCCL_IB_RETRY_CNT:-7}"
  export NCCL_DEBUG="${NCCL_DEBUG:-WARN}"
  # NCCL_SOCKET_IFNAME / GLOO_SOCKET_IFNAME (bootstrap + gloo groups), NCCL_IB_HCA and
  # NCCL_IB_GID_INDEX (RoCE) are cluster-specific: set them in $MT_SITE_ENV when NCCL's
  # auto-detection picks the wrong interface (symptom: a hang in the first collective).
  export PYTHONUNBUFFERED=1 PYTHONFAULTHANDLER=1
  # Lines echoed to the job log start with the global rank ("[rank17]:"): a torchrun template.
  # shellcheck disable=SC2016
  local prefix='[rank${rank}]:'
  export TORCHELASTIC_LOG_LINE_PREFIX_TEMPLATE="${TORCHELASTIC_LOG_LINE_PREFIX_TEMPLATE:-$prefix}"
}

# Job geometry -> MT_HOSTS, MT_NNODES, MT_GPN, MASTER_ADDR/PORT, the partition, the log dirs.
mt_setup() {
  : "${MT_RECIPE:?the job script sets MT_RECIPE}"
  MT_PY="${PYTHON:-$MT_ROOT/.venv/bin/python}"
  if [ -n "${SLURM_JOB_NODELIST:-}" ]; then
    mapfile -t MT_HOSTS < <(scontrol show hostnames "$SLURM_JOB_NODELIST")
    MT_NNODES="${SLURM_NNODES:-${#MT_HOSTS[@]}}"
  else  # a dry run outside Slurm: placeholder host names
    MT_NNODES="${MT_NODES:?not in a Slurm job: set MT_NODES (or submit with sbatch)}"
    MT_HOSTS=()
    for ((i = 0; i < MT_NNODES; i++)); do MT_HOSTS+=("node$i"); done
  fi
  MT_GPN="${MT_GPUS_PER_NODE:-${SLURM_GPUS_ON_NODE:-8}}"
  export MASTER_ADDR="${MT_HOSTS[0]}"
  export MASTER_PORT="${MT_MASTER_PORT:-$(( 20000 + ${SLURM_JOB_ID:-0} % 20000 ))}"

  # The partition (validated, with everything else, by the launch plan).
  MT_ROLLOUT_GPUS="${MT_ROLLOUT_GPUS:-0}"
  MT_VLLM_TP="${MT_VLLM_TP:-1}"
  MT_NUM_ENGINES="${MT_NUM_ENGINES:-$(( MT_ROLLOUT_GPUS / MT_VLLM_TP ))}"
  MT_TRAIN_NODES="$MT_NNODES"
  MT_RANKS_PER_NODE="$MT_GPN"
  MT_ROLLOUT_NODES=0
  MT_TRAINER_GPU_IDS=""
  MT_ROLLOUT_GPU_IDS=""
  MT_ROLLOUT_HOSTS=""
  if [ "$MT_ROLLOUT_GPUS" -gt 0 ]; then
    if [ "$MT_NNODES" -eq 1 ]; then  # one node: trainer on the first GPUs, engines on the last
      MT_RANKS_PER_NODE=$(( MT_GPN - MT_ROLLOUT_GPUS ))
      MT_TRAINER_GPU_IDS="$(seq -s, 0 $(( MT_RANKS_PER_NODE - 1 )))"
      MT_ROLLOUT_GPU_IDS="$(seq -s, "$MT_RANKS_PER_NODE" $(( MT_GPN - 1 )))"
      MT_ROLLOUT_HOSTS="${MT_HOSTS[0]}"
    else  # whole trailing nodes
      MT_ROLLOUT_NODES=$(( MT_ROLLOUT_GPUS / MT_GPN ))
      MT_TRAIN_NODES=$(( MT_NNODES - MT_ROLLOUT_NODES ))
      MT_ROLLOUT_HOSTS="$(IFS=,; echo "${MT_HOSTS[*]:$MT_TRAIN_NODES}")"
    fi
  fi

  MT_LOG_DIR="${MT_LOG_DIR:-$MT_ROOT/logs}"
  MT_RUN_LOG_DIR="$MT_LOG_DIR/${SLURM_JOB_NAME:-job}-${SLURM_JOB_ID:-dry}/restart${SLURM_RESTART_COUNT:-0}"
  export MT_STATUS_FILE="$MT_RUN_LOG_DIR/status.json"

  # The trainer's arguments: resume from `latest` when there is one, the layout the user asked
  # for (MT_TP ...; by default the recipe's), then MT_OVERRIDES, then the job script's arguments.
  MT_TRAIN_ARGS=("training.resume=auto")
  local axis value
  for axis in tp pp vpp cp; do
    value="MT_${axis^^}"
    if [ -n "${!value:-}" ]; then MT_TRAIN_ARGS+=("parallel.$axis=${!value}"); fi
  done
  local extra=()
  read -r -a extra <<< "${MT_OVERRIDES:-}"
  MT_TRAIN_ARGS+=("${extra[@]}" "$@")
}

# Print the rank layout (and check the recipe resolves on this many trainer ranks).
mt_plan() {
  local plan=(--nodes "$MT_NNODES" --gpus-per-node "$MT_GPN")
  plan+=(--hosts "$(IFS=,; echo "${MT_HOSTS[*]}")")
  # The layout the job is sized for (MT_PLAN_*: the layout without a recipe; with one, a warning
  # when the recipe differs) and the partition it reserves (an error when the recipe differs).
  local axis value
  for axis in tp pp vpp cp; do
    value="MT_${axis^^}"
    value="${!value:-}"
    if [ -z "$value" ]; then value="MT_PLAN_${axis^^}"; value="${!value:-}"; fi
    if [ -n "$value" ]; then plan+=("--$axis" "$value"); fi
  done
  plan+=(--rollout-gpus "$MT_ROLLOUT_GPUS" --vllm-tp "$MT_VLLM_TP" --num-engines "$MT_NUM_ENGINES")
  if [ "${MT_RECIPE_CHECK:-1}" = 1 ] && [ -f "$MT_ROOT/$MT_RECIPE" ]; then
    plan+=(--recipe "$MT_RECIPE")
  elif [ "${MT_RECIPE_CHECK:-1}" = 1 ]; then
    mt_log "note: $MT_RECIPE does not exist (yet): layout from the job script's settings only"
  fi
  (cd "$MT_ROOT" && PYTHONWARNINGS=ignore "$MT_PY" -m megatron_tulu.tools.launch_plan "${plan[@]}" \
    "${MT_TRAIN_ARGS[@]}")
}

mt_on_usr1() {
  mt_log "got SIGUSR1 (time limit near): asking the trainer to save after this step and stop"
  kill -USR1 "$MT_TRAINER_PID" 2>/dev/null || true  # srun forwards it to the step's tasks
}

mt_on_term() {
  # Cancelled, preempted or out of time: Slurm signals the steps itself; no requeue from here.
  mt_log "got SIGTERM: the trainer saves if it can finish its step before Slurm's SIGKILL"
  MT_GOT_TERM=1
}

# Wait for a background pid; a trapped signal interrupts `wait` (status > 128) but not the job.
mt_wait() {
  local status
  while :; do
    status=0
    wait "$1" || status=$?
    if [ "$status" -gt 128 ] && kill -0 "$1" 2>/dev/null; then continue; fi
    return "$status"
  done
}

mt_launch() {
  if [ ! -f "$MT_ROOT/$MT_RECIPE" ]; then
    mt_log "error: recipe $MT_RECIPE not found under $MT_ROOT"
    return 2
  fi
  mkdir -p "$MT_RUN_LOG_DIR"
  rm -f "$MT_STATUS_FILE"
  mt_nccl_env
  export MT_NNODES="$MT_TRAIN_NODES" MT_RANK_LOG_DIR="$MT_RUN_LOG_DIR"
  export MT_CONSOLE_RANKS="${MT_CONSOLE_RANKS:-0,$(( MT_RANKS_PER_NODE - 1 ))}"
  export MT_ROLLOUT_HOSTS MT_ROLLOUT_GPU_IDS  # where the engines run, for the RLVR trainer
  if [ -n "$MT_TRAINER_GPU_IDS" ]; then export CUDA_VISIBLE_DEVICES="$MT_TRAINER_GPU_IDS"; fi
  MT_GOT_TERM=0
  MT_TRAINER_PID=""
  trap mt_on_usr1 USR1
  trap mt_on_term TERM
  mt_log "restart ${SLURM_RESTART_COUNT:-0}; trainer: $MT_TRAIN_NODES node(s) x" \
    "$MT_RANKS_PER_NODE ranks, rendezvous $MASTER_ADDR:$MASTER_PORT; logs $MT_RUN_LOG_DIR"
  local cpus=()
  if [ -n "${SLURM_CPUS_ON_NODE:-}" ]; then cpus=(--cpus-per-task="$SLURM_CPUS_ON_NODE"); fi
  # All options as --name=value: one task per node; one failed node ends the whole step.
  srun --nodes="$MT_TRAIN_NODES" --ntasks="$MT_TRAIN_NODES" --ntasks-per-node=1 \
    --relative=0 "${cpus[@]}" --cpu-bind=none --kill-on-bad-exit=1 \
    bash "$MT_ROOT/launch/local/train.sh" "$MT_RANKS_PER_NODE" --recipe "$MT_RECIPE" \
    "${MT_TRAIN_ARGS[@]}" &
  MT_TRAINER_PID=$!
  local rollout_pid=""
  if [ "$MT_ROLLOUT_GPUS" -gt 0 ] && [ -n "${MT_ROLLOUT_CMD:-}" ]; then
    if [ "$MT_ROLLOUT_NODES" -gt 0 ]; then
      srun --nodes="$MT_ROLLOUT_NODES" --ntasks="$MT_ROLLOUT_NODES" --ntasks-per-node=1 \
        --relative="$MT_TRAIN_NODES" --cpu-bind=none bash -c "$MT_ROLLOUT_CMD" &
    else  # the same node as the trainer: share it, on the rollout GPUs only
      srun --nodes=1 --ntasks=1 --overlap --cpu-bind=none \
        --export="ALL,CUDA_VISIBLE_DEVICES=$MT_ROLLOUT_GPU_IDS" bash -c "$MT_ROLLOUT_CMD" &
    fi
    rollout_pid=$!
    mt_log "rollout step started on $MT_ROLLOUT_HOSTS ($MT_ROLLOUT_GPUS GPUs)"
  elif [ "$MT_ROLLOUT_GPUS" -gt 0 ]; then
    mt_log "note: MT_ROLLOUT_CMD is empty: no rollout step started; the trainer gets" \
      "MT_ROLLOUT_HOSTS='$MT_ROLLOUT_HOSTS' MT_ROLLOUT_GPU_IDS='$MT_ROLLOUT_GPU_IDS'"
  fi
  local status=0
  mt_wait "$MT_TRAINER_PID" || status=$?
  if [ -n "$rollout_pid" ]; then
    kill -TERM "$rollout_pid" 2>/dev/null || true
    mt_wait "$rollout_pid" || true
  fi
  mt_after "$status"
}

# After the trainer step: requeue when it stopped early and cleanly (signal or exit_interval).
mt_after() {
  local status="$1" state="" body=""
  if [ -f "$MT_STATUS_FILE" ]; then
    body="$(cat "$MT_STATUS_FILE")"
    state="$(sed -n 's/.*"state": *"\([a-z]*\)".*/\1/p' "$MT_STATUS_FILE")"
  fi
  mt_log "trainer step exited with status $status; end state: ${body:-none}"
  if [ "$status" -ne 0 ] || [ "$state" != stopped ]; then
    return "$status"
  fi
  if [ "$MT_GOT_TERM" = 1 ] || [ "${MT_REQUEUE:-1}" = 0 ] \
      || grep -q '"reason": *"SIGTERM"' "$MT_STATUS_FILE"; then
    mt_log "stopped early; not requeueing (SIGTERM or MT_REQUEUE=0): resubmit to resume"
    return 0
  fi
  mt_log "requeueing job $SLURM_JOB_ID: it resumes from the latest checkpoint"
  scontrol requeue "$SLURM_JOB_ID"
}

mt_main() {
  mt_setup "$@"
  mt_log "recipe $MT_RECIPE; $MT_NNODES node(s) ${SLURM_JOB_NODELIST:-${MT_HOSTS[*]}}" \
    "x $MT_GPN GPUs; commit $(git -C "$MT_ROOT" rev-parse --short HEAD 2>/dev/null || echo '?')"
  mt_plan || return
  if [ "${DRY_RUN:-0}" = 1 ]; then return 0; fi
  mt_launch
}
