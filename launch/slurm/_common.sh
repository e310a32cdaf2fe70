# shellcheck shell=bash
# The body shared by launch/slurm/*.sbatch (sourced by them, never run on its own). Each job
# script sets its #SBATCH lines and layout defaults, sources this file and calls `mt_main "$@"`.
# See docs/slurm.md for the whole story; in short:
#
#   * one `srun` task per trainer node runs launch/local/train.sh, i.e. torchrun with one rank
#     per GPU and a static rendezvous on the first node (MASTER_ADDR from `scontrol show
#     hostnames`), so global rank = node * ranks_per_node + local GPU, as the dry run prints;
#   * RLVR jobs keep their last MT_ROLLOUT_GPUS GPUs for vLLM engines (whole trailing nodes, or
#     the last GPUs of a one-node job): one job step per engine, one engine host per node of the
#     engine (python -m megatron_tulu.rollout.host), announcing itself in MT_ENGINE_DIR; the
#     trainer gets rollout.placement=external rollout.rendezvous_dir=MT_ENGINE_DIR and
#     MT_SYNC_HOST; the job ends when the trainer ends, and fails when an engine step ends first;
#   * every step sets CUDA_VISIBLE_DEVICES inside its task (slurmstepd overwrites what the batch
#     shell exports), so trainer and engine GPU sets are disjoint (DRY_RUN prints the steps);
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
#   MT_ROLLOUT_CMD        replaces the engine host command: run as bash -c "$MT_ROLLOUT_CMD"
#                         on each node of each engine, its arguments ("$@") the host's flags
#                         (--engine-index E --rendezvous DIR [--nnodes N --master-addr A
#                         --master-port P --node-rank K]), CUDA_VISIBLE_DEVICES already set
#   MT_ENGINE_DIR         where engine hosts announce themselves (shared file system; default
#                         the run's log dir /engines; emptied at job start)
#   MT_SYNC_HOST          trainer rank 0's address for the weight push (default: its node name)
#   MT_CPUS_PER_NODE      default $SLURM_CPUS_ON_NODE: each step gets its GPUs' share of them
#   MT_CACHE_ROOT         node-local compile caches (Triton, Inductor, vLLM); default
#                         ${TMPDIR:-/tmp}/mt-<job id>
#   MT_STOP_GRACE_S       seconds a step gets to exit after SIGTERM from this shell (default 60)
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

# Compile caches on node-local disk, one set per job (the same path names a different directory
# on every node): by default Triton compiles into ~/.triton, vLLM into ~/.cache/vllm -- a shared
# home written by every rank of every node. Their writers are safe for concurrent processes on
# one local file system (atomic renames, file locks), so one directory per node suffices.
mt_cache_env() {
  local root="${MT_CACHE_ROOT:-${TMPDIR:-/tmp}/mt-${SLURM_JOB_ID:-dry}}"
  export TRITON_CACHE_DIR="${TRITON_CACHE_DIR:-$root/triton}"
  export TORCHINDUCTOR_CACHE_DIR="${TORCHINDUCTOR_CACHE_DIR:-$root/inductor}"
  export VLLM_CACHE_ROOT="${VLLM_CACHE_ROOT:-$root/vllm}"
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

  # The partition (validated, with everything else, by the launch plan; mt_steps reads it).
  MT_ROLLOUT_GPUS="${MT_ROLLOUT_GPUS:-0}"
  MT_VLLM_TP="${MT_VLLM_TP:-1}"
  MT_NUM_ENGINES="${MT_NUM_ENGINES:-$(( MT_ROLLOUT_GPUS / MT_VLLM_TP ))}"

  MT_LOG_DIR="${MT_LOG_DIR:-$MT_ROOT/logs}"
  MT_RUN_LOG_DIR="$MT_LOG_DIR/${SLURM_JOB_NAME:-job}-${SLURM_JOB_ID:-dry}/restart${SLURM_RESTART_COUNT:-0}"
  export MT_STATUS_FILE="$MT_RUN_LOG_DIR/status.json"
  MT_ENGINE_DIR="${MT_ENGINE_DIR:-$MT_RUN_LOG_DIR/engines}"

  # The trainer's arguments: resume from `latest` when there is one, the layout the user asked
  # for (MT_TP ...; by default the recipe's), then MT_OVERRIDES, then the job script's arguments.
  MT_TRAIN_ARGS=("training.resume=auto")
  local axis value
  for axis in tp pp vpp cp; do
    value="MT_${axis^^}"
    if [ -n "${!value:-}" ]; then MT_TRAIN_ARGS+=("parallel.$axis=${!value}"); fi
  done
  if [ "$MT_ROLLOUT_GPUS" -gt 0 ]; then  # engines run as their own steps (mt_step)
    MT_TRAIN_ARGS+=("rollout.placement=external" "rollout.rendezvous_dir=$MT_ENGINE_DIR")
  fi
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

# The job steps, from the launch plan's arithmetic (python -m megatron_tulu.tools.launch_plan
# --steps; the same as the dry run's layout): MT_STEP_NAMES (trainer, engine0, ...),
# MT_STEP_FIRST (first node), MT_STEP_NODES (node count), MT_STEP_GPUS (local GPU ids of each
# task, comma-separated).
mt_steps() {
  local out name first nodes gpus
  out="$(cd "$MT_ROOT" && PYTHONWARNINGS=ignore "$MT_PY" -m megatron_tulu.tools.launch_plan \
    --steps --nodes "$MT_NNODES" --gpus-per-node "$MT_GPN" --rollout-gpus "$MT_ROLLOUT_GPUS" \
    --vllm-tp "$MT_VLLM_TP" --num-engines "$MT_NUM_ENGINES" "${MT_TRAIN_ARGS[@]}")" || return
  MT_STEP_NAMES=() MT_STEP_FIRST=() MT_STEP_NODES=() MT_STEP_GPUS=()
  while read -r name first nodes gpus; do
    MT_STEP_NAMES+=("$name") MT_STEP_FIRST+=("$first") MT_STEP_NODES+=("$nodes")
    MT_STEP_GPUS+=("$gpus")
  done <<< "$out"
  if [ "${MT_STEP_NAMES[0]:-}" != trainer ]; then
    mt_log "error: unexpected launch plan steps: $out"
    return 2
  fi
}

# --cpus-per-task for a task using $1 of the node's GPUs: that share of the node's CPUs.
mt_cpus() {
  local cpus="${MT_CPUS_PER_NODE:-${SLURM_CPUS_ON_NODE:-}}" share
  if [ -z "$cpus" ]; then return 0; fi  # a dry run outside Slurm: srun's default
  share=$(( cpus * $1 / MT_GPN ))
  echo "--cpus-per-task=$(( share > 0 ? share : 1 ))"
}

# MT_STEP: the srun command line of step $1 (0: the trainer, E + 1: engine E). Every task sets
# CUDA_VISIBLE_DEVICES itself (bash -c ...; exec): slurmstepd overwrites the batch shell's value
# with the step's GPUs (all of the node's: no step asks for GPUs), so exporting it here would
# not reach the task. Engine steps overlap the trainer's (a one-node job) and each other's.
mt_step() {
  local i="$1" first="${MT_STEP_FIRST[$1]}" nodes="${MT_STEP_NODES[$1]}" gpus="${MT_STEP_GPUS[$1]}"
  local ids=() cpus
  IFS=, read -r -a ids <<< "$gpus"
  cpus="$(mt_cpus "${#ids[@]}")"
  MT_STEP=(srun --nodes="$nodes" --ntasks="$nodes" --ntasks-per-node=1 --relative="$first")
  if [ "$i" -gt 0 ]; then MT_STEP+=(--overlap); fi
  if [ -n "$cpus" ]; then MT_STEP+=("$cpus"); fi
  MT_STEP+=(--cpu-bind=none --kill-on-bad-exit=1)  # one failed task ends the whole step
  if [ "$i" = 0 ]; then
    if [ "$MT_ROLLOUT_GPUS" -gt 0 ]; then
      MT_STEP+=(bash -c "export CUDA_VISIBLE_DEVICES=$gpus; exec \"\$@\"" mt-trainer)
    fi
    MT_STEP+=(bash "$MT_ROOT/launch/local/train.sh" "${#ids[@]}" --recipe "$MT_RECIPE"
      "${MT_TRAIN_ARGS[@]}")
    return 0
  fi
  local engine=$(( i - 1 )) node_rank="" cmd=() flags=() arg
  flags=(--engine-index "$engine" --rendezvous "$MT_ENGINE_DIR")
  if [ "$nodes" -gt 1 ]; then  # node rank K = the task's index in the step; 0 is the head
    flags+=(--nnodes "$nodes" --master-addr "${MT_HOSTS[$first]}"
      --master-port "$(( MASTER_PORT + 1 + engine ))")
    # shellcheck disable=SC2016  # expanded by the task's bash, on its node
    node_rank=' --node-rank "$SLURM_PROCID"'
  fi
  if [ -n "${MT_ROLLOUT_CMD:-}" ]; then
    cmd=(bash -c "$MT_ROLLOUT_CMD" "mt-engine$engine")
  else
    cmd=("$MT_PY" -m megatron_tulu.rollout.host --recipe "$MT_RECIPE")
    for arg in "${MT_TRAIN_ARGS[@]}"; do cmd+=(--set "$arg"); done
  fi
  MT_STEP+=(--chdir="$MT_ROOT"
    bash -c "export CUDA_VISIBLE_DEVICES=$gpus; exec \"\$@\"$node_rank" "mt-engine$engine"
    "${cmd[@]}" "${flags[@]}")
}

# A command line as bash reads it: plain words as they are, others single-quoted.
mt_quote() {
  local word out=()
  for word; do
    if [[ "$word" =~ ^[A-Za-z0-9_./=,:@%+-]+$ ]]; then out+=("$word"); else out+=("${word@Q}"); fi
  done
  echo "${out[*]}"
}

# DRY_RUN: the job steps exactly as mt_launch would start them, and where each runs.
mt_print_steps() {
  local i last where
  echo "job steps (started by the batch shell on node 0; each task sets CUDA_VISIBLE_DEVICES):"
  echo "  env: MT_SYNC_HOST=$MT_SYNC_HOST TRITON_CACHE_DIR=$TRITON_CACHE_DIR" \
    "TORCHINDUCTOR_CACHE_DIR=$TORCHINDUCTOR_CACHE_DIR VLLM_CACHE_ROOT=$VLLM_CACHE_ROOT"
  for i in "${!MT_STEP_NAMES[@]}"; do
    last=$(( MT_STEP_FIRST[i] + MT_STEP_NODES[i] - 1 ))
    if [ "$last" -gt "${MT_STEP_FIRST[i]}" ]; then last="-$last"; else last=""; fi
    where="$(IFS=,; echo "${MT_HOSTS[*]:${MT_STEP_FIRST[i]}:${MT_STEP_NODES[i]}}")"
    if [ "${MT_STEP_NODES[i]}" -gt 3 ]; then where="${where%%,*} ... ${where##*,}"; fi
    echo "  ${MT_STEP_NAMES[i]}: node(s) ${MT_STEP_FIRST[i]}$last ($where)," \
      "CUDA_VISIBLE_DEVICES=${MT_STEP_GPUS[i]}"
    mt_step "$i"
    echo "    $(mt_quote "${MT_STEP[@]}")"
  done
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

# One second, during which a trapped signal is handled at once (a foreground sleep defers it).
mt_nap() {
  sleep 1 &
  wait "$!" || true
}

# SIGTERM to the steps whose srun pids are given (srun passes it to their tasks), then up to
# MT_STOP_GRACE_S seconds for them to end; the job's end stops whatever is left.
mt_stop() {
  local pid left=0 deadline=$(( SECONDS + ${MT_STOP_GRACE_S:-60} ))
  for pid; do kill -TERM "$pid" 2>/dev/null || true; done
  while :; do
    left=0
    for pid; do if kill -0 "$pid" 2>/dev/null; then left=1; fi; done
    if [ "$left" = 0 ] || [ "$SECONDS" -ge "$deadline" ]; then break; fi
    mt_nap
  done
  if [ "$left" = 1 ]; then mt_log "steps still running after SIGTERM: the job's end stops them"; fi
}

# Wait for the trainer step. An engine step that ends first (with any status: the trainer
# cannot go on without its engine) stops the trainer and fails the job -- unless this shell got
# SIGTERM (Slurm is stopping every step; the trainer may still save).
mt_watch() {
  local i pid status
  while kill -0 "$MT_TRAINER_PID" 2>/dev/null; do
    for i in "${!MT_ENGINE_PIDS[@]}"; do
      pid="${MT_ENGINE_PIDS[$i]}"
      if [ "$MT_GOT_TERM" = 1 ] || kill -0 "$pid" 2>/dev/null; then continue; fi
      status=0
      wait "$pid" || status=$?
      mt_log "error: engine step ${MT_STEP_NAMES[i + 1]} ended (status $status) while the" \
        "trainer runs: stopping the trainer; the job fails (engine logs: the job log and" \
        "$MT_ENGINE_DIR/*.error)"
      mt_stop "$MT_TRAINER_PID"
      MT_ENGINE_FAILED=1
      return $(( status > 0 ? status : 1 ))
    done
    mt_nap
  done
  mt_wait "$MT_TRAINER_PID"
}

mt_launch() {
  if [ ! -f "$MT_ROOT/$MT_RECIPE" ]; then
    mt_log "error: recipe $MT_RECIPE not found under $MT_ROOT"
    return 2
  fi
  mkdir -p "$MT_RUN_LOG_DIR"
  rm -f "$MT_STATUS_FILE"
  mt_nccl_env
  local i num_steps="${#MT_STEP_NAMES[@]}" ranks
  ranks="$(( $(tr -cd , <<< "${MT_STEP_GPUS[0]}" | wc -c) + 1 ))"
  if [ "$num_steps" -gt 1 ]; then  # no announcement of an earlier run may be taken for live
    rm -rf "$MT_ENGINE_DIR"
    mkdir -p "$MT_ENGINE_DIR"
  fi
  export MT_NNODES="${MT_STEP_NODES[0]}" MT_RANK_LOG_DIR="$MT_RUN_LOG_DIR"
  export MT_CONSOLE_RANKS="${MT_CONSOLE_RANKS:-0,$(( ranks - 1 ))}"
  MT_GOT_TERM=0
  MT_TRAINER_PID=""
  MT_ENGINE_PIDS=()
  trap mt_on_usr1 USR1
  trap mt_on_term TERM
  mt_log "restart ${SLURM_RESTART_COUNT:-0}; trainer: ${MT_STEP_NODES[0]} node(s) x $ranks" \
    "ranks (GPUs ${MT_STEP_GPUS[0]}), rendezvous $MASTER_ADDR:$MASTER_PORT; logs $MT_RUN_LOG_DIR"
  mt_step 0
  "${MT_STEP[@]}" &
  MT_TRAINER_PID=$!
  for ((i = 1; i < num_steps; i++)); do
    mt_step "$i"
    "${MT_STEP[@]}" &
    MT_ENGINE_PIDS+=($!)
    mt_log "${MT_STEP_NAMES[i]}: ${MT_STEP_NODES[i]} node(s) from" \
      "${MT_HOSTS[${MT_STEP_FIRST[i]}]}, GPUs ${MT_STEP_GPUS[i]}; announces in $MT_ENGINE_DIR"
  done
  local status=0
  if [ "$num_steps" = 1 ]; then
    mt_wait "$MT_TRAINER_PID" || status=$?
  else
    MT_ENGINE_FAILED=0
    mt_watch || status=$?
    mt_stop "${MT_ENGINE_PIDS[@]}"  # the trainer ended: its engines are done too
    if [ "$MT_ENGINE_FAILED" = 1 ]; then return "$status"; fi
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
  mt_steps || return
  mt_cache_env
  export MT_SYNC_HOST="${MT_SYNC_HOST:-$MASTER_ADDR}"  # trainer rank 0's node, for the push
  if [ "${DRY_RUN:-0}" = 1 ]; then
    mt_print_steps
    return 0
  fi
  mt_launch
}
