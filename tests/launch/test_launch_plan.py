"""The dry-run rank layout: pure arithmetic against megatron-core's RankGenerator (up to 256
ranks, no processes), against parallel_state on 4 gloo ranks, and the 405B RLVR job script's
DRY_RUN output under a simulated 32-node Slurm allocation."""

from __future__ import annotations

import os
import re
import subprocess
from pathlib import Path

import pytest
from megatron.core.parallel_state import RankGenerator

from megatron_tulu.platform.spawn import run_ranks
from megatron_tulu.tools.launch_plan import LaunchPlan, _ranges, main

ROOT = Path(__file__).resolve().parents[2]

LAYOUTS = [  # (nodes, gpus_per_node, tp, cp, pp, rollout_gpus, vllm_tp)
    (32, 8, 8, 1, 6, 16, 16),  # the 405B RLVR job: 240 trainer ranks
    (28, 8, 8, 1, 14, 0, 1),  # 405B SFT/DPO
    (8, 8, 8, 1, 4, 0, 1),
    (6, 8, 4, 1, 5, 8, 4),  # 70B RLVR
    (1, 8, 2, 1, 1, 2, 1),  # 8B RLVR: trainer GPUs 0-5
    (4, 8, 2, 2, 2, 0, 1),  # context parallel too
    (2, 8, 1, 4, 1, 0, 1),
]


@pytest.mark.parametrize("layout", LAYOUTS, ids=lambda v: "x".join(map(str, v)))
def test_groups_equal_megatron_rank_generator(layout):
    nodes, gpn, tp, cp, pp, rollout, vllm_tp = layout
    plan = LaunchPlan(
        num_nodes=nodes,
        gpus_per_node=gpn,
        tp=tp,
        cp=cp,
        pp=pp,
        rollout_gpus=rollout,
        vllm_tp=vllm_tp,
        num_engines=rollout // vllm_tp,
    )
    gen = RankGenerator(tp=tp, ep=1, dp=plan.dp, pp=pp, cp=cp, order="tp-cp-ep-dp-pp")
    for axis in ("tp", "cp", "dp", "pp"):
        assert plan.groups(axis) == sorted(gen.get_ranks(axis)), axis
    for rank in range(plan.trainer_gpus):
        assert plan.rank_of(**plan.coords(rank)) == rank


def test_405b_rlvr_layout():
    plan = LaunchPlan(
        num_nodes=32, gpus_per_node=8, tp=8, pp=6, rollout_gpus=16, vllm_tp=16, num_engines=1
    )
    assert (plan.trainer_gpus, plan.trainer_nodes, plan.ranks_per_node, plan.dp) == (240, 30, 8, 5)
    p = plan.place(0)
    assert (p.node, p.gpu, p.tp, p.cp, p.dp, p.pp) == (0, 0, 0, 0, 0, 0)
    p = plan.place(8)  # the next node is the next data-parallel replica of stage 0
    assert (p.node, p.gpu, p.tp, p.dp, p.pp) == (1, 0, 0, 1, 0)
    p = plan.place(45)
    assert (p.node, p.gpu, p.tp, p.dp, p.pp) == (5, 5, 5, 0, 1)
    p = plan.place(239)
    assert (p.node, p.gpu, p.tp, p.dp, p.pp) == (29, 7, 7, 4, 5)
    (engine,) = plan.engines()
    assert engine.gpus == tuple((n, g) for n in (30, 31) for g in range(8))


def test_one_node_rollout_takes_the_last_gpus():
    plan = LaunchPlan(num_nodes=1, gpus_per_node=8, tp=2, rollout_gpus=2, vllm_tp=1, num_engines=2)
    assert plan.ranks_per_node == 6 and plan.dp == 3
    assert [e.gpus for e in plan.engines()] == [((0, 6),), ((0, 7),)]


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"num_nodes": 4, "rollout_gpus": 4, "vllm_tp": 4, "num_engines": 1}, "whole nodes"),
        ({"num_nodes": 4, "rollout_gpus": 8, "vllm_tp": 4, "num_engines": 1}, "num_engines"),
        ({"num_nodes": 2, "tp": 8, "pp": 3}, "world size (16) is not tp (8) * pp (3) * dp"),
        ({"num_nodes": 1, "rollout_gpus": 8}, "rollout_gpus (8) must be in"),
        ({"num_nodes": 4, "rollout_gpus": 24, "vllm_tp": 12, "num_engines": 2}, "one must divide"),
    ],
)
def test_bad_partitions_are_refused_with_the_fix(kwargs, message):
    with pytest.raises(ValueError, match=re.escape(message)):
        LaunchPlan(gpus_per_node=8, **kwargs)


def test_job_steps_one_per_engine_on_disjoint_gpus():
    """The steps launch/slurm/_common.sh starts (--steps): (name, first node, nodes, GPU ids)."""

    def steps(**kw: int) -> list[tuple[str, int, int, tuple[int, ...]]]:
        plan = LaunchPlan(gpus_per_node=8, **kw)
        return [(s.name, s.first_node, s.num_nodes, s.gpu_ids) for s in plan.steps()]

    all8 = tuple(range(8))
    assert steps(num_nodes=1, tp=2, rollout_gpus=2, num_engines=2) == [
        ("trainer", 0, 1, (0, 1, 2, 3, 4, 5)),
        ("engine0", 0, 1, (6,)),
        ("engine1", 0, 1, (7,)),
    ]
    assert steps(num_nodes=6, tp=4, pp=5, rollout_gpus=8, vllm_tp=4, num_engines=2) == [
        ("trainer", 0, 5, all8),
        ("engine0", 5, 1, (0, 1, 2, 3)),
        ("engine1", 5, 1, (4, 5, 6, 7)),
    ]
    assert steps(num_nodes=32, tp=8, pp=14, rollout_gpus=32, vllm_tp=16, num_engines=2) == [
        ("trainer", 0, 28, all8),
        ("engine0", 28, 2, all8),
        ("engine1", 30, 2, all8),
    ]
    assert steps(num_nodes=2, tp=8) == [("trainer", 0, 2, all8)]
    assert main(["--steps", "--nodes", "1", "--gpus-per-node", "4", "--rollout-gpus", "1"]) == 0


def test_ranges():
    assert _ranges([5, 0, 1, 2, 7, 8]) == "0-2,5,7-8"
    assert _ranges([3]) == "3"


def test_cli_reads_recipe_and_checks_it(capsys):
    rc = main(["--nodes", "1", "--gpus-per-node", "2", "--recipe", "recipes/tiny-cpu.yaml"])
    out = capsys.readouterr().out
    assert rc == 0
    assert "world 2 = tp 2 x cp 1 x dp 1 x pp 1" in out
    assert "recipe check: ok" in out
    # 3 ranks cannot hold tp 2: refused before anything starts
    assert main(["--nodes", "1", "--gpus-per-node", "3", "--recipe", "recipes/tiny-cpu.yaml"]) == 2


def _rank_coords(configs):
    """On each gloo rank: megatron's (tp, cp, dp, pp) rank for every (tp, cp, pp) config."""
    import torch.distributed as dist
    from megatron.core import parallel_state as ps

    from megatron_tulu.config import ParallelConfig
    from megatron_tulu.parallel import destroy_parallel, init_parallel
    from megatron_tulu.platform import ensure_platform

    ensure_platform()
    rank, world = int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"])
    dist.init_process_group("gloo", rank=rank, world_size=world)
    out = []
    for tp, cp, pp in configs:
        ps.initialize_model_parallel(
            tensor_model_parallel_size=tp,
            pipeline_model_parallel_size=pp,
            context_parallel_size=cp,
        )
        out.append(
            (
                ps.get_tensor_model_parallel_rank(),
                ps.get_context_parallel_rank(),
                ps.get_data_parallel_rank(),
                ps.get_pipeline_model_parallel_rank(),
            )
        )
        ps.destroy_model_parallel()
    # and once through the trainer's own set-up (megatron_tulu.parallel, no cp there)
    init_parallel(ParallelConfig(tp=1, pp=2).resolve(world), seed=0)
    out.append(
        (
            ps.get_tensor_model_parallel_rank(),
            0,
            ps.get_data_parallel_rank(),
            ps.get_pipeline_model_parallel_rank(),
        )
    )
    destroy_parallel()
    return out


@pytest.mark.slow
def test_order_matches_parallel_state_on_4_gloo_ranks():
    # every pair of axes at size 2 (the third derived), so each relative order is observed
    configs = [(2, 1, 2), (2, 2, 1), (1, 2, 2), (1, 2, 1), (2, 1, 1), (1, 1, 2)]
    per_rank = run_ranks(_rank_coords, 4, configs)
    for i, (tp, cp, pp) in enumerate([*configs, (1, 1, 2)]):
        plan = LaunchPlan(num_nodes=2, gpus_per_node=2, tp=tp, cp=cp, pp=pp)
        for rank in range(4):
            c = plan.coords(rank)
            assert per_rank[rank][i] == (c["tp"], c["cp"], c["dp"], c["pp"]), (tp, cp, pp, rank)


def _fake_slurm_bin(tmp_path: Path, num_nodes: int) -> Path:
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    hosts = " ".join(f"gpu-{i:03d}" for i in range(num_nodes))
    (bin_dir / "scontrol").write_text(
        f'#!/usr/bin/env bash\n[ "$1 $2" = "show hostnames" ] && printf "%s\\n" {hosts}\n'
    )
    (bin_dir / "srun").write_text("#!/usr/bin/env bash\necho 'srun must not run' >&2; exit 9\n")
    for f in bin_dir.iterdir():
        f.chmod(0o755)
    return bin_dir


def test_rlvr_405b_dry_run_prints_the_layout(tmp_path):
    bin_dir = _fake_slurm_bin(tmp_path, 32)
    env = {
        **os.environ,
        "PATH": f"{bin_dir}:{os.environ['PATH']}",
        "DRY_RUN": "1",
        "MT_RECIPE_CHECK": "0",  # the script's own layout (the recipe may differ: tested below)
        "SLURM_JOB_ID": "4242",
        "SLURM_JOB_NAME": "tulu3-rlvr-405b",
        "SLURM_JOB_NODELIST": "gpu-[000-031]",
        "SLURM_NNODES": "32",
        "SLURM_GPUS_ON_NODE": "8",
        "MT_LOG_DIR": str(tmp_path / "logs"),
    }
    res = subprocess.run(
        ["bash", "launch/slurm/rlvr-405b.sbatch"],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert res.returncode == 0, res.stderr
    out = res.stdout
    assert "world 240 = tp 8 x cp 1 x dp 3 x pp 10" in out
    assert "rollout: 16 GPUs on node(s) 30-31: 1 vLLM engine(s) x TP16" in out
    assert "engine 0: node 30 (gpu-030) gpu 0-7, node 31 (gpu-031) gpu 0-7" in out
    assert "node 0 (gpu-000) gpu 0-7: rank 0-7  tp 0-7  cp 0  dp 0  pp 0" in out
    assert "node 5 (gpu-005) gpu 0-7: rank 40-47  tp 0-7  cp 0  dp 2  pp 1" in out
    assert "node 29 (gpu-029) gpu 0-7: rank 232-239  tp 0-7  cp 0  dp 2  pp 9" in out
    assert "node 30 (gpu-030) gpu" not in out.split("trainer ranks:")[1]  # no trainer there
    assert not (tmp_path / "logs").exists()  # a dry run writes nothing


SCRIPTS = sorted((ROOT / "launch" / "slurm").glob("*.sbatch"))


@pytest.mark.parametrize("script", SCRIPTS, ids=lambda p: p.stem)
def test_job_script_agrees_with_its_recipe(tmp_path, script):
    """Where the job's recipe exists, it resolves on the job's trainer ranks (batch sizes,
    layers per stage) with the layout the script states (no warning)."""
    text = script.read_text()
    recipe = re.search(r'MT_RECIPE:=([^}"]+)', text).group(1)
    if not (ROOT / recipe).is_file():
        pytest.skip(f"{recipe} does not exist yet")
    env = {**os.environ, "DRY_RUN": "1"}
    for key in [k for k in env if k.startswith(("SLURM_", "MT_"))]:
        del env[key]
    res = subprocess.run(
        ["bash", str(script)], cwd=ROOT, env=env, capture_output=True, text=True, timeout=120
    )
    assert res.returncode == 0, res.stdout + res.stderr
    assert "recipe check: ok" in res.stdout
    assert "warning" not in res.stderr, res.stderr
