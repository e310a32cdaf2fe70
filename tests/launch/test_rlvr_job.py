"""The RLVR job scripts' steps: the trainer and one step per vLLM engine, on disjoint GPUs.

- The DRY_RUN of every RLVR job script (8B, 70B, 405B) under a simulated allocation: the srun
  lines it prints put the trainer and each engine on disjoint (node, GPU) sets that together
  cover the allocation, with the step options the job relies on.
- rlvr-8b.sbatch run under a simulated Slurm: a fake `srun` that starts one task per node the
  way slurmstepd does (SLURM_PROCID, SLURMD_NODENAME, and CUDA_VISIBLE_DEVICES overwritten with
  the step's GPUs, whatever the batch shell exported) and a fake interpreter that records what
  the trainer (torchrun) and the engine hosts were started with, where, and with which GPUs.
  The engine hosts are stand-ins: what `python -m megatron_tulu.rollout.host` does is tested
  with the rollout package; here only the commands the launcher runs are.
"""

from __future__ import annotations

import json
import os
import re
import shlex
import subprocess
import sys
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
SLURM_DIR = ROOT / "launch" / "slurm"

SCONTROL = """#!/usr/bin/env bash
case "$1 $2" in
  "show hostnames") printf '%s\\n' $FAKE_NODES ;;
  requeue*) echo "requeue $2" >> "$FAKE_SLURM_LOG" ;;
  *) echo "fake scontrol: unsupported $*" >&2; exit 1 ;;
esac
"""

# One task per node from --relative, as slurmstepd starts them: the task's own variables, and the
# step's GPUs (all of the node's: no step asks for GPUs) in CUDA_VISIBLE_DEVICES over whatever
# the batch shell exported. Forwards SIGTERM/SIGUSR1 to its tasks; --kill-on-bad-exit=1 kills
# the other tasks when one fails; exits with the first failure's status.
SRUN = """#!/usr/bin/env bash
echo "srun $*" >> "$FAKE_SLURM_LOG"
nodes=1 relative=0 chdir="" kill_bad=0
while [ "$#" -gt 0 ] && [ "${1#-}" != "$1" ]; do
  case "$1" in
    --nodes=*) nodes="${1#*=}" ;;
    --relative=*) relative="${1#*=}" ;;
    --chdir=*) chdir="${1#*=}" ;;
    --kill-on-bad-exit=1) kill_bad=1 ;;
    --gpus*|--gres*|--gpu-bind*) echo "fake srun: $1 is not imitated" >&2; exit 97 ;;
  esac
  shift
done
read -r -a hosts <<< "$FAKE_NODES"
all_gpus="$(seq -s, 0 $(( FAKE_GPUS_PER_NODE - 1 )))"
pids=()
for ((i = 0; i < nodes; i++)); do
  node=$(( relative + i ))
  (
    if [ -n "$chdir" ]; then cd "$chdir" || exit 96; fi
    export SLURM_PROCID="$i" SLURM_NODEID="$node" SLURMD_NODENAME="${hosts[$node]}"
    export CUDA_VISIBLE_DEVICES="$all_gpus"
    exec "$@"
  ) &
  pids+=("$!")
done
trap 'kill -TERM "${pids[@]}" 2>/dev/null' TERM
trap 'kill -USR1 "${pids[@]}" 2>/dev/null' USR1
declare -A ended=()
status=0
while [ "${#ended[@]}" -lt "${#pids[@]}" ]; do
  for p in "${pids[@]}"; do
    if [ -n "${ended[$p]:-}" ] || kill -0 "$p" 2>/dev/null; then continue; fi
    s=0
    wait "$p" || s=$?
    ended[$p]=$s
    if [ "$s" -ne 0 ] && [ "$status" = 0 ]; then
      status=$s
      if [ "$kill_bad" = 1 ]; then kill -KILL "${pids[@]}" 2>/dev/null; fi
    fi
  done
  sleep 0.1
done
exit "$status"
"""

# The interpreter on the "compute nodes": records the trainer (torchrun) and engine host command
# lines with their node and environment, and stands in for them; anything else (the launch
# plan) is the real interpreter.
PYTHON = """#!{real}
import json, os, signal, sys, time
from pathlib import Path

argv = sys.argv[1:]
role = {{"torch.distributed.run": "trainer", "megatron_tulu.rollout.host": "engine"}}.get(
    argv[1] if argv[:1] == ["-m"] and len(argv) > 1 else "")
if not role:
    os.execv({real!r}, [{real!r}, *argv])
keys = ("SLURMD_NODENAME", "SLURM_PROCID", "CUDA_VISIBLE_DEVICES", "MT_SYNC_HOST",
        "TRITON_CACHE_DIR", "TORCHINDUCTOR_CACHE_DIR", "VLLM_CACHE_ROOT")
record = {{"role": role, "argv": argv, "env": {{k: os.environ.get(k) for k in keys}}}}
log = Path(os.environ["FAKE_RECORD"])

def write(entry):
    with log.open("a") as f:
        f.write(json.dumps(entry) + "\\n")

write(record)
if role == "trainer":
    rdv = next(a.split("=", 1)[1] for a in argv if a.startswith("rollout.rendezvous_dir="))
    want = [Path(rdv, f"engine-{{e}}.json") for e in range(int(os.environ["FAKE_ENGINES"]))]
    deadline = time.monotonic() + 30
    while not all(p.exists() and p.read_text() != "stale" for p in want):
        if time.monotonic() > deadline:
            sys.exit(7)  # no engine announced itself
        time.sleep(0.05)
    if os.environ.get("FAKE_TRAINER_HOLD"):  # stuck in a rollout: does not react to SIGTERM
        time.sleep(60)
    sys.exit(0)
engine = int(argv[argv.index("--engine-index") + 1])
node_rank = int(argv[argv.index("--node-rank") + 1]) if "--node-rank" in argv else 0

def stop(signum, frame):
    write({{"role": "engine-stopped", "engine": engine, "node_rank": node_rank}})
    sys.exit(0)

signal.signal(signal.SIGTERM, stop)
if node_rank == 0:
    rdv = argv[argv.index("--rendezvous") + 1]
    Path(rdv, f"engine-{{engine}}.json").write_text(json.dumps({{"engine": engine}}))
if os.environ.get("FAKE_ENGINE_FAIL") == str(engine):
    time.sleep(0.5)
    sys.exit(1)
time.sleep(60)
sys.exit(0)
"""


def _fake_bin(tmp_path: Path) -> Path:
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    for name, body in (
        ("srun", SRUN),
        ("scontrol", SCONTROL),
        ("python", PYTHON.format(real=sys.executable)),
    ):
        (bin_dir / name).write_text(body)
        (bin_dir / name).chmod(0o755)
    return bin_dir


def _env(tmp_path: Path, num_nodes: int, gpus_per_node: int, **extra: str) -> dict[str, str]:
    bin_dir = _fake_bin(tmp_path)
    env = {k: v for k, v in os.environ.items() if not k.startswith(("SLURM_", "MT_", "CUDA_"))}
    return {
        **env,
        "PATH": f"{bin_dir}:{env['PATH']}",
        "PYTHON": str(bin_dir / "python"),
        "FAKE_SLURM_LOG": str(tmp_path / "slurm.log"),
        "FAKE_RECORD": str(tmp_path / "record.jsonl"),
        "FAKE_NODES": " ".join(f"gpu-{i:03d}" for i in range(num_nodes)),
        "FAKE_GPUS_PER_NODE": str(gpus_per_node),
        "SLURM_JOB_ID": "777",
        "SLURM_JOB_NAME": "tulu3-rlvr-8b",
        "SLURM_JOB_NODELIST": f"gpu-[000-{num_nodes - 1:03d}]",
        "SLURM_NNODES": str(num_nodes),
        "SLURM_CPUS_ON_NODE": "16",
        "SLURM_GPUS_ON_NODE": str(gpus_per_node),
        "SLURM_SUBMIT_DIR": str(ROOT),
        "MT_LOG_DIR": str(tmp_path / "logs"),
        "MT_RECIPE_CHECK": "0",  # the stand-in layouts are not the recipe's (tested elsewhere)
        "MT_STOP_GRACE_S": "3",
        "TMPDIR": str(tmp_path / "node-local"),
        **extra,
    }


# ---- the dry runs of the three RLVR jobs -------------------------------------------------------
def _script_default(text: str, name: str) -> int:
    return int(re.search(rf"{name}:=(\d+)", text).group(1))


def _step_gpus(cmd: list[str]) -> tuple[set[tuple[int, int]], dict[str, str]]:
    """The (node, GPU) pairs an srun line's tasks use, and its --name=value options."""
    opts = dict(a[2:].split("=", 1) for a in cmd[1:] if a.startswith("--") and "=" in a)
    script = cmd[cmd.index("-c") + 1]
    ids = re.fullmatch(r'export CUDA_VISIBLE_DEVICES=([\d,]+); exec "\$@".*', script).group(1)
    first, count = int(opts["relative"]), int(opts["nodes"])
    assert opts["ntasks"] == str(count) and opts["ntasks-per-node"] == "1"
    return {(n, int(g)) for n in range(first, first + count) for g in ids.split(",")}, opts


@pytest.mark.parametrize("size", ["8b", "70b", "405b"])
def test_dry_run_puts_engines_and_trainer_on_disjoint_gpus(tmp_path, size):
    script = SLURM_DIR / f"rlvr-{size}.sbatch"
    text = script.read_text()
    nodes, rollout = _script_default(text, "MT_NODES"), _script_default(text, "MT_ROLLOUT_GPUS")
    vllm_tp = _script_default(text, "MT_VLLM_TP")
    env = _env(tmp_path, nodes, 8, DRY_RUN="1", SLURM_CPUS_ON_NODE="96")
    res = subprocess.run(
        ["bash", str(script)], cwd=ROOT, env=env, capture_output=True, text=True, timeout=60
    )
    assert res.returncode == 0, res.stdout + res.stderr
    assert not (tmp_path / "slurm.log").exists()  # a dry run starts no step
    lines = res.stdout.split("job steps")[1].splitlines()
    steps = {}
    for head, cmd in zip(lines[2::2], lines[3::2], strict=True):
        name = head.split(":")[0].strip()
        steps[name] = shlex.split(cmd)
    engines = [f"engine{e}" for e in range(rollout // vllm_tp)]
    assert list(steps) == ["trainer", *engines]
    used: set[tuple[int, int]] = set()
    rdv = None
    for name, cmd in steps.items():
        gpus, opts = _step_gpus(cmd)
        assert not gpus & used, f"{name} shares GPUs {sorted(gpus & used)}"
        used |= gpus
        assert opts["kill-on-bad-exit"] == "1" and opts["cpu-bind"] == "none"
        per_node = len({g for _, g in gpus})
        assert opts["cpus-per-task"] == str(96 * per_node // 8)  # the GPUs' share of the CPUs
        if name == "trainer":
            assert len(gpus) == nodes * 8 - rollout
            assert (0, 0) in gpus  # trainer rank 0 on node 0, GPU 0
            assert "rollout.placement=external" in cmd
            rdv = next(a for a in cmd if a.startswith("rollout.rendezvous_dir=")).split("=")[1]
            continue
        engine = int(name.removeprefix("engine"))
        assert len(gpus) == vllm_tp and "--overlap" in cmd
        host = cmd[cmd.index("-m") + 1 :]
        assert host[0] == "megatron_tulu.rollout.host"
        assert host[host.index("--engine-index") + 1] == str(engine)
        assert host[host.index("--rendezvous") + 1] == rdv
        assert "rollout.placement=external" in host  # the trainer's overrides, via --set
        engine_nodes = sorted({n for n, _ in gpus})
        if len(engine_nodes) > 1:  # head on its first node; node rank = the task's index
            assert host[host.index("--nnodes") + 1] == str(len(engine_nodes))
            assert host[host.index("--master-addr") + 1] == f"gpu-{engine_nodes[0]:03d}"
            assert cmd[cmd.index("-c") + 1].endswith('exec "$@" --node-rank "$SLURM_PROCID"')
        else:
            assert "--nnodes" not in host
    assert used == {(n, g) for n in range(nodes) for g in range(8)}  # no GPU left idle
    assert rdv and "MT_SYNC_HOST=gpu-000" in res.stdout


def test_rollout_cmd_replaces_the_engine_host_and_gets_its_flags(tmp_path):
    env = _env(tmp_path, 1, 8, DRY_RUN="1", MT_ROLLOUT_CMD='my-engine --x "$@"')
    res = subprocess.run(
        ["bash", str(SLURM_DIR / "rlvr-8b.sbatch")],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert res.returncode == 0, res.stdout + res.stderr
    cmds = [shlex.split(line) for line in res.stdout.splitlines() if "srun" in line]
    rdv = str(tmp_path / "logs" / "tulu3-rlvr-8b-777" / "restart0" / "engines")
    for engine, cmd in enumerate(cmds[1:]):
        tail = cmd[cmd.index("-c") + 2 :]
        name = f"mt-engine{engine}"
        flags = ["--engine-index", str(engine), "--rendezvous", rdv]
        assert tail == [name, "bash", "-c", 'my-engine --x "$@"', name, *flags]
    assert len(cmds) == 3


# ---- the jobs under a simulated Slurm ----------------------------------------------------------
def _run_job(tmp_path: Path, env: dict[str, str], timeout: float = 60) -> tuple[int, str, float]:
    """Run the batch script; its end is the job's end: then every step's process is killed
    (a step left running must not hold the test up, as Slurm would not let it outlive the job)."""
    started = time.monotonic()
    with (tmp_path / "job.out").open("w") as log:
        proc = subprocess.Popen(
            ["bash", "launch/slurm/rlvr-8b.sbatch"],
            cwd=ROOT,
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        try:
            rc = proc.wait(timeout=timeout)
        finally:
            subprocess.run(["pkill", "-KILL", "-s", str(proc.pid)], check=False)
    return rc, (tmp_path / "job.out").read_text(), time.monotonic() - started


def _records(tmp_path: Path) -> list[dict]:
    lines = (tmp_path / "record.jsonl").read_text().splitlines()
    return [json.loads(line) for line in lines]


def _arg(argv: list[str], flag: str) -> str:
    return argv[argv.index(flag) + 1]


def _node_gpus(record: dict) -> tuple[str, str]:
    """Where a recorded process ran: its node and the GPUs it saw."""
    return record["env"]["SLURMD_NODENAME"], record["env"]["CUDA_VISIBLE_DEVICES"]


LAYOUTS = {  # name: (nodes, gpus per node, rollout GPUs, vllm_tp)
    "one_node": (1, 8, 2, 1),  # as the 8B job: trainer GPUs 0-5, engines on GPUs 6 and 7
    "engine_on_two_other_nodes": (3, 2, 4, 4),  # trainer node 0; one engine on nodes 1-2
}


@pytest.mark.parametrize("layout", LAYOUTS)
def test_steps_start_where_and_as_planned(tmp_path, layout):
    nodes, gpn, rollout, vllm_tp = LAYOUTS[layout]
    num_engines = rollout // vllm_tp
    env = _env(
        tmp_path, nodes, gpn, MT_GPUS_PER_NODE=str(gpn), MT_ROLLOUT_GPUS=str(rollout),
        MT_VLLM_TP=str(vllm_tp), FAKE_ENGINES=str(num_engines),
    )  # fmt: skip
    rdv = tmp_path / "logs" / "tulu3-rlvr-8b-777" / "restart0" / "engines"
    rdv.mkdir(parents=True)
    (rdv / "engine-0.json").write_text("stale")  # an earlier run's: must not count
    rc, out, _ = _run_job(tmp_path, env)
    assert rc == 0, out[-3000:]
    records = _records(tmp_path)
    (trainer,) = [r for r in records if r["role"] == "trainer"]
    trainer_gpus = gpn - rollout if nodes == 1 else gpn
    assert trainer["env"]["SLURMD_NODENAME"] == "gpu-000"
    assert trainer["env"]["CUDA_VISIBLE_DEVICES"] == ",".join(map(str, range(trainer_gpus)))
    assert trainer["env"]["MT_SYNC_HOST"] == "gpu-000"  # rank 0's node, routable
    cache = str(tmp_path / "node-local" / "mt-777")
    assert trainer["env"]["TRITON_CACHE_DIR"] == f"{cache}/triton"
    assert trainer["env"]["VLLM_CACHE_ROOT"] == f"{cache}/vllm"
    argv = trainer["argv"]
    assert _arg(argv, "--signals-to-handle") == "SIGINT,SIGHUP,SIGQUIT"  # not SIGTERM
    assert _arg(argv, "--nproc-per-node") == str(trainer_gpus)
    assert _arg(argv, "-m") == "torch.distributed.run"
    assert argv[argv.index("--recipe") - 1] == "megatron_tulu.train"
    assert "rollout.placement=external" in argv
    assert f"rollout.rendezvous_dir={rdv}" in argv
    hosts = sorted(
        (r for r in records if r["role"] == "engine"),
        key=lambda r: (_arg(r["argv"], "--engine-index"), r["env"]["SLURM_PROCID"]),
    )
    if layout == "one_node":
        assert [_node_gpus(h) for h in hosts] == [("gpu-000", "6"), ("gpu-000", "7")]
        assert all("--nnodes" not in h["argv"] for h in hosts)
    else:
        where = [(*_node_gpus(h), _arg(h["argv"], "--node-rank")) for h in hosts]
        assert where == [("gpu-001", "0,1", "0"), ("gpu-002", "0,1", "1")]
        for h in hosts:
            assert _arg(h["argv"], "--nnodes") == "2"
            assert _arg(h["argv"], "--master-addr") == "gpu-001"  # the engine's head node
    for h in hosts:
        assert h["argv"][:2] == ["-m", "megatron_tulu.rollout.host"]
        assert _arg(h["argv"], "--recipe") == "recipes/tulu3-rlvr-8b.yaml"
        assert _arg(h["argv"], "--rendezvous") == str(rdv)
        assert "rollout.placement=external" in h["argv"]
    assert json.loads((rdv / "engine-0.json").read_text()) == {"engine": 0}  # not the stale one
    # the trainer ended: every engine host was stopped (SIGTERM through its srun)
    stopped = {(r["engine"], r["node_rank"]) for r in records if r["role"] == "engine-stopped"}
    assert len(stopped) == len(hosts)
    sruns = (tmp_path / "slurm.log").read_text().splitlines()
    engine_sruns = [s for s in sruns if "rollout.host" in s]
    assert len(engine_sruns) == num_engines
    for line in engine_sruns:
        assert "--overlap" in line and "--kill-on-bad-exit=1" in line
        assert f"--cpus-per-task={max(1, 16 * min(vllm_tp, gpn) // gpn)}" in line


def test_a_dead_engine_ends_the_job(tmp_path):
    """Engine 1 exits 1 while the trainer waits for rollouts (and ignores SIGTERM): the batch
    shell stops the trainer step and ends the job with a failure, within its grace period."""
    env = _env(
        tmp_path, 1, 8, MT_GPUS_PER_NODE="8", MT_ROLLOUT_GPUS="2", MT_VLLM_TP="1",
        FAKE_ENGINES="2", FAKE_ENGINE_FAIL="1", FAKE_TRAINER_HOLD="1", MT_STOP_GRACE_S="1",
    )  # fmt: skip
    rc, out, seconds = _run_job(tmp_path, env)
    assert rc != 0, out[-3000:]
    assert "engine step engine1 ended (status 1) while the trainer runs" in out
    assert "requeue" not in (tmp_path / "slurm.log").read_text()
    assert seconds < 30, out[-3000:]  # not the trainer's 60 s hold
