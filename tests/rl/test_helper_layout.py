"""PPO's helper value model on its own groups (``value.tp``: TP of its own, no pipeline, data
parallel over the rest) computes what the single-process value model computes: values, two SGD
steps of the value loss, and a save / load round trip -- beside a policy at PP2, where the
trainer-layout helper would be split over the pipeline."""

from __future__ import annotations

import pytest
import torch
from mt_testing.helper_layout import value_layout_worker

from megatron_tulu.config import model_preset
from megatron_tulu.models.synthetic import make_random_hf_dir
from megatron_tulu.platform.spawn import run_ranks

pytestmark = pytest.mark.slow
ARGS = {"rows": 8, "seq": 24, "micro_batch_size": 2}


@pytest.fixture(scope="module")
def single(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("helper")
    hf = str(make_random_hf_dir(tmp / "hf", model_preset("tiny-task"), seed=4))
    out = run_ranks(
        value_layout_worker, 1, hf_dir=hf, ckpt_dir=str(tmp / "c1"), policy_tp=1, policy_pp=1,
        value_tp=None, **ARGS,
    )[0]  # fmt: skip
    return hf, tmp, out


@pytest.mark.parametrize(
    ("policy_tp", "policy_pp", "value_tp", "layout"),
    [
        (1, 2, 1, (1, 1, 2)),  # policy PP2; helper whole on both ranks, DP2
        (1, 2, 2, (2, 1, 1)),  # policy PP2; helper TP2
        (2, 1, 1, (1, 1, 2)),  # policy TP2; helper TP1 x DP2
        (1, 2, None, (1, 2, 1)),  # the trainer's layout (PP2), for comparison
    ],
)
def test_value_model_layout_matches_single_process(single, policy_tp, policy_pp, value_tp, layout):
    hf, tmp, ref = single
    name = f"c-{policy_tp}-{policy_pp}-{value_tp}"
    outs = run_ranks(
        value_layout_worker, 2, hf_dir=hf, ckpt_dir=str(tmp / name), policy_tp=policy_tp,
        policy_pp=policy_pp, value_tp=value_tp, **ARGS,
    )  # fmt: skip
    assert float(ref["after"].abs().max()) > 1e-2  # the steps changed the values
    for out in outs:  # every rank holds every row's values
        assert out["value_dims"] == layout
        assert torch.equal(out["before"], torch.zeros_like(out["before"]))  # zero head
        # fp32; only the order of reductions differs (TP all-reduce, DP gradient sum)
        torch.testing.assert_close(out["after"], ref["after"], rtol=0, atol=1e-5)
        for mine, theirs in zip(out["loss"], ref["loss"], strict=True):
            assert mine == pytest.approx(theirs, rel=1e-6)
        assert torch.equal(out["loaded"], out["after"])  # the checkpoint round trip is exact


@pytest.mark.parametrize("value_tp", [1, 2])
def test_value_model_own_layout_resumes_exactly(tmp_path, single, value_tp):
    """AdamW with the distributed optimizer sharded over the helper's own DP group: the whole
    state (weights, optimizer shards, schedule) saves and loads so that the next step of the
    loaded model equals the next step of the one that kept running."""
    hf, _, _ = single
    outs = run_ranks(
        value_layout_worker, 2, hf_dir=hf, ckpt_dir=str(tmp_path / "c"), policy_tp=1,
        policy_pp=2, value_tp=value_tp, optimizer="adam-dist", **ARGS,
    )  # fmt: skip
    for out in outs:
        assert not torch.equal(out["continued"], out["after"])  # the third step moved it
        assert torch.equal(out["resumed"], out["continued"])


def test_helper_tp_must_divide_the_world():
    from megatron_tulu.parallel.model_groups import own_layout_dims

    with pytest.raises(ValueError, match=r"value.tp=3\) on 4 ranks: world size \(4\)"):
        own_layout_dims(4, 3, micro_batch_size=1, global_batch_size=4)
    with pytest.raises(ValueError, match="not divisible by micro_batch_size"):
        own_layout_dims(4, 1, micro_batch_size=2, global_batch_size=4)
    dims = own_layout_dims(4, 2, micro_batch_size=2, global_batch_size=8)
    assert (dims.tp, dims.pp, dims.dp, dims.num_microbatches) == (2, 1, 2, 2)
