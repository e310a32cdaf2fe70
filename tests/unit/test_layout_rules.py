"""One layout vocabulary: ParallelConfig's context-parallel degree, and the planner and the launch
dry run rejecting exactly what ParallelConfig rejects, with its message (pure Python)."""

from __future__ import annotations

import re

import pytest

from megatron_tulu.config import ParallelConfig, RankCoords, load_recipe, model_preset
from megatron_tulu.tools.launch_plan import LaunchPlan
from megatron_tulu.tools.planner import PlanError, TrainLayout, resolve

M8 = model_preset("llama3.1-8b")  # 32 heads, 8 KV groups, 32 layers


# ------------------------------------------------------------------------------------ cp itself


@pytest.mark.parametrize(("kwargs", "pattern"), [
    ({"cp": 0}, r"cp \(0\) must be >= 1"),
    ({"cp": 1.5}, r"cp \(1\.5\) must be an integer"),
    ({"cp": True}, r"cp \(True\) must be an integer"),
])  # fmt: skip
def test_cp_must_be_a_positive_integer(kwargs: dict, pattern: str) -> None:
    with pytest.raises(ValueError, match=pattern):
        ParallelConfig(**kwargs)


def test_cp_counts_in_the_world_size_but_not_in_dp() -> None:
    d = ParallelConfig(tp=2, cp=2, pp=2, global_batch_size=8).resolve(16)
    assert (d.cp, d.dp, d.num_microbatches) == (2, 2, 4)  # 16 / (2 * 2 * 2); 8 / (1 * 2)
    with pytest.raises(ValueError, match=re.escape(
        "world size (12) is not tp (2) * cp (4) * pp (1) * dp: it must be a multiple of "
        "tp * cp * pp = 8; launch 8 or 16 ranks")):  # fmt: skip
        ParallelConfig(tp=2, cp=4).resolve(12)


def test_cp_needs_the_sequence_in_2cp_chunks() -> None:
    ParallelConfig(cp=4).check_seq_length(4096)
    with pytest.raises(
        ValueError,
        match=re.escape(
            "seq_length (4100) is not divisible by 2 * cp (8): context parallelism splits"
        ),
    ):
        ParallelConfig(cp=4).check_seq_length(4100)
    with pytest.raises(ValueError, match=r"training\.seq_length \(6\) is not divisible by 2 \* cp"):
        load_recipe(None, ["parallel.cp=2", "training.seq_length=6"])


def test_rank_order_with_cp_is_megatrons() -> None:
    # rank = tp + tp * (cp + cp * (dp + dp * pp)), tp 2, cp 2, dp 2, pp 2
    d = ParallelConfig(tp=2, cp=2, pp=2).resolve(16)
    assert d.coords(5) == RankCoords(tp_rank=1, cp_rank=0, dp_rank=1, pp_rank=0)
    assert d.coords(10) == RankCoords(tp_rank=0, cp_rank=1, dp_rank=0, pp_rank=1)
    assert all(d.rank_of(**vars(d.coords(r))) == r for r in range(16))
    assert d.grid.groups("cp")[:2] == [[0, 2], [1, 3]]
    assert d.grid.groups("dp")[0] == [0, 4]


@pytest.mark.parametrize("stage", ["pretrain", "sft", "dpo"])
@pytest.mark.parametrize("attention", ["auto", "sdpa"])
def test_the_trainer_takes_cp_for_supervised_stages(stage: str, attention: str) -> None:
    recipe = load_recipe(
        None, ["parallel.cp=2", "training.seq_length=64", f"training.stage={stage}",
               f"training.attention={attention}"],
    )  # fmt: skip
    assert recipe.resolve_parallel(4).cp == 2


def test_the_trainer_refuses_cp_with_the_local_attention() -> None:
    # (RLVR takes cp > 1: tests/distributed/test_context_parallel_rlvr.py)
    local = load_recipe(
        None, ["parallel.cp=2", "training.seq_length=64", "training.stage=sft",
               "training.attention=local"],
    )  # fmt: skip
    with pytest.raises(ValueError, match=r"parallel\.cp \(2\) > 1 with training\.attention "
                                         r"'local': megatron-core's DotProductAttention has no "
                                         r"context parallelism"):  # fmt: skip
        local.resolve_parallel(2)


# ------------------------------------------------------------- the planner: ParallelConfig's rules

# (ParallelConfig fields, world size, sequence length); the model is Llama 3.1 8B
LAYOUTS = [
    ({"tp": 3}, 8, 4096),  # tp does not split the heads
    ({"pp": 3}, 6, 4096),  # nor pp the layers
    ({"tp": 8}, 12, 4096),  # the world is not tp * pp * dp
    ({"tp": 2, "cp": 4}, 12, 4096),  # ... nor tp * cp * pp * dp
    ({"cp": 4}, 8, 4100),  # the sequence does not split into 2 * cp chunks
    ({"tp": 2, "sequence_parallel": True}, 8, 4095),  # nor over tp
    ({"tp": 2, "global_batch_size": 6}, 8, 4096),  # the batch does not split over dp
    ({"pp": 2, "vpp": 2, "global_batch_size": 6}, 4, 4096),  # interleaving: 3 micro-batches
    ({"vpp": 2}, 8, 4096),  # interleaving without a pipeline
    ({"tp": 1, "sequence_parallel": True}, 8, 4096),  # SP without TP
    ({"cp": 0}, 8, 4096),
    ({"tp": 2, "cp": 2, "pp": 2, "vpp": 4, "sequence_parallel": True}, 16, 4096),  # valid
    ({"tp": 8, "pp": 4, "global_batch_size": 64}, 64, 8192),  # valid
]


def _parallel_error(kwargs: dict, world: int, seq_len: int) -> str | None:
    """ParallelConfig's verdict, in the trainer's order (recipe load, then resolve)."""
    try:
        parallel = ParallelConfig(**kwargs)
        parallel.check_model(M8)
        parallel.check_seq_length(seq_len, name="seq_len")
        parallel.resolve(world, M8)
    except ValueError as exc:
        return str(exc)
    return None


@pytest.mark.parametrize(("kwargs", "world", "seq_len"), LAYOUTS)
def test_planner_rejects_exactly_what_parallel_config_rejects(
    kwargs: dict, world: int, seq_len: int
) -> None:
    kwargs = {"global_batch_size": 8, "sequence_parallel": False, **kwargs}
    expected = _parallel_error(kwargs, world, seq_len)
    layout = {
        "tp": kwargs.get("tp", 1),
        "pp": kwargs.get("pp", 1),
        "vpp": kwargs.get("vpp"),
        "cp": kwargs.get("cp", 1),
        "sequence_parallel": kwargs["sequence_parallel"],
        "global_batch": kwargs["global_batch_size"],
        "seq_len": seq_len,
    }
    if expected is None:
        got = resolve(M8, TrainLayout(**layout), world)
        assert got.dims == ParallelConfig(**kwargs).resolve(world, M8)
        return
    with pytest.raises(PlanError) as err:
        resolve(M8, TrainLayout(**layout), world)
    assert str(err.value) == expected


# --------------------------------------------------------- the launch dry run: the same rules

GRIDS = [  # (tp, pp, cp, vpp, trainer GPUs)
    (8, 3, 1, None, 16),
    (2, 1, 4, None, 12),
    (1, 1, 1, 2, 8),  # vpp without pp
    (0, 1, 1, None, 8),
    (1, 2, 0, None, 8),
    (2, 2, 2, 3, 16),  # valid (the batch rules need a recipe)
]


@pytest.mark.parametrize(("tp", "pp", "cp", "vpp", "gpus"), GRIDS)
def test_launch_plan_rejects_exactly_what_parallel_config_rejects(
    tp: int, pp: int, cp: int, vpp: int | None, gpus: int
) -> None:
    try:
        grid = ParallelConfig(tp=tp, pp=pp, cp=cp, vpp=vpp).grid(gpus)
        expected = None
    except ValueError as exc:
        expected = str(exc)
    if expected is None:
        plan = LaunchPlan(num_nodes=1, gpus_per_node=gpus, tp=tp, pp=pp, cp=cp, vpp=vpp)
        assert plan.grid == grid and plan.dp == grid.dp
        return
    with pytest.raises(ValueError) as err:
        LaunchPlan(num_nodes=1, gpus_per_node=gpus, tp=tp, pp=pp, cp=cp, vpp=vpp)
    assert str(err.value) == expected


def test_launch_plan_rollout_partition_is_rollout_config_rule() -> None:
    with pytest.raises(ValueError, match=re.escape(
        "rollout.engine_gpus (8) must equal vllm_tp (4) x num_engines (1) = 4: every rollout "
        "GPU belongs to exactly one engine; set num_engines to 2")):  # fmt: skip
        LaunchPlan(num_nodes=4, gpus_per_node=8, rollout_gpus=8, vllm_tp=4, num_engines=1)
    plan = LaunchPlan(num_nodes=4, gpus_per_node=8, rollout_gpus=8, vllm_tp=4, num_engines=2)
    assert plan.rollout is not None and plan.rollout.group_size == 1 + 8
