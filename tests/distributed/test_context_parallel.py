"""Context parallelism on gloo with the SDPA attention, against the same run without it.

Every run loads the same random HF weights (tiny model, fp32), computes full logits
(``forward_logits``: gathered over TP and CP) and takes one SGD step with lr 1 (weight change =
gradient); CP2 (and TP2 x CP2) must match CP1 with the same SDPA attention, for a causal batch
and a packed (block-diagonal) one, for the SFT token loss and the DPO pair loss (one and two
forwards). Both CP ranks must report the same loss and end with the same weights.

Tolerances: CP changes only the order of float32 reductions (attention rows are softmaxed
over the gathered keys in one piece, as without CP; the K/V gradients are summed over the two
ranks; the loss sums are added rank by rank), so differences are float32 rounding: logits
~1e-6 abs (values of O(1): 1e-5 bounds them), the mean SFT loss ~1e-7 (1e-6), weights after
one lr-1 step, i.e. gradients of O(1e-2), ~1e-8 (1e-6, as test_sft_dpo_steps.py). DPO sums
~-50 log-probs per row: the bounds of test_sft_dpo_steps.py (loss 5e-5, weights 1e-5). A wrong
chunk order, mask or gradient sum moves these by O(1e-2) or more (checked below: without the
count being zeroed on the second CP rank the step halves).
"""

from __future__ import annotations

import functools
import os

import pytest
import torch

from megatron_tulu.config import OptimizerConfig, ParallelConfig, model_preset

pytestmark = pytest.mark.slow
MODEL = model_preset("tiny")
SGD = OptimizerConfig(
    optimizer="sgd", lr=1.0, weight_decay=0.0, clip_grad=0.0, use_distributed_optimizer=False
)


def _causal_batches() -> list[dict[str, torch.Tensor]]:
    gen = torch.Generator().manual_seed(5)
    tokens = torch.randint(3, MODEL.vocab_size, (2, 33), generator=gen)
    mask = torch.ones(2, 32)
    mask[1, :5] = 0.0  # a prompt without loss
    return [{
        "tokens": tokens[:, :-1], "labels": tokens[:, 1:], "loss_mask": mask,
        "position_ids": torch.arange(32).expand(2, -1),
    }]  # fmt: skip


def _packed_batches() -> list[dict[str, torch.Tensor]]:
    """Three documents of 10, 7 and 15 tokens in one row of 32 (block-diagonal causal)."""
    from megatron_tulu.data.batching import packed_attention_mask

    gen = torch.Generator().manual_seed(11)
    lengths = (10, 7, 16)
    stream = torch.randint(3, MODEL.vocab_size, (sum(lengths),), generator=gen)
    doc = torch.cat([torch.full((n,), i) for i, n in enumerate(lengths)])
    pos = torch.cat([torch.arange(n) for n in lengths])
    return [{
        "tokens": stream[:-1][None], "labels": stream[1:][None],
        "loss_mask": (doc[:-1] == doc[1:]).float()[None], "position_ids": pos[:-1][None],
        "attention_mask": packed_attention_mask(doc[:-1][None]),
    }]  # fmt: skip


def _dpo_batches() -> list[dict[str, torch.Tensor]]:
    """2 micro-batches of one pair (chosen row, rejected row), 16 positions."""
    gen = torch.Generator().manual_seed(3)
    out = []
    for _ in range(2):
        tokens = torch.randint(3, MODEL.vocab_size, (2, 17), generator=gen)
        mask = torch.zeros(2, 16)
        mask[0, 4:12], mask[1, 4:9] = 1.0, 1.0  # responses across both CP ranks' chunks
        out.append({
            "tokens": tokens[:, :-1], "labels": tokens[:, 1:], "loss_mask": mask,
            "position_ids": torch.arange(16).expand(2, -1),
            "ref_chosen": -torch.rand(1, generator=gen) * 30,
            "ref_rejected": -torch.rand(1, generator=gen) * 30,
        })  # fmt: skip
    return out


def _worker(batches, tp: int, cp: int, loss: str, zero_count: bool = True):
    from functools import partial

    from megatron.core import parallel_state as ps

    import megatron_tulu.engine.forward as fwd
    from megatron_tulu.engine.build import build_engine
    from megatron_tulu.engine.schedule import forward_logits, train_step
    from megatron_tulu.losses.dpo import dpo_pair_loss, dpo_side_loss
    from megatron_tulu.models.hf_io import gather_hf_state_dict, load_hf_weights
    from megatron_tulu.models.llama import BuildOptions
    from megatron_tulu.parallel import destroy_parallel, init_parallel
    from megatron_tulu.stages.dpo import attach_pair_coefficients

    if not zero_count:  # the deliberate bug: every CP rank's count enters megatron's sum
        fwd._count_once_per_cp_group = lambda loss_fn, rank, batch, out: loss_fn(batch, out)
    world = int(os.environ["WORLD_SIZE"])
    rows = sum(b["tokens"].shape[0] for b in batches)
    dims = ParallelConfig(
        tp=tp, cp=cp, micro_batch_size=batches[0]["tokens"].shape[0], global_batch_size=rows
    ).resolve(world, MODEL)
    init_parallel(dims, seed=0)
    try:
        hf_dir = os.environ["MT_TEST_HF_DIR"]
        engine = build_engine(
            model=MODEL, dims=dims, optimizer=SGD, train_steps=1,
            # SDPA on both sides: "auto" picks it for cp > 1 (CPU), asked for by name at cp 1
            options=BuildOptions(attention="auto" if cp > 1 else "sdpa"),
            load_weights=lambda c: load_hf_weights(
                c, hf_dir, model=MODEL, tp=tp, tp_rank=ps.get_tensor_model_parallel_rank()
            ),
        )  # fmt: skip
        logits = torch.cat(forward_logits(engine, batches, MODEL.vocab_size))
        vocab = MODEL.vocab_size
        if loss == "dpo":
            step = fwd.forward_step(partial(dpo_pair_loss, vocab_size=vocab, beta=5.0))
            result = train_step(engine, batches, forward_step=step, report_key="dpo")
        elif loss == "dpo_separate":  # rows: chosen of both pairs, then rejected of both
            keys = ("tokens", "labels", "loss_mask", "position_ids")
            sides = [{k: torch.cat([b[k][i : i + 1] for b in batches]) for k in keys}
                     for i in (0, 1)]  # fmt: skip
            ref_c = torch.cat([b["ref_chosen"] for b in batches])
            ref_r = torch.cat([b["ref_rejected"] for b in batches])
            batches = [
                {**sides[0], "ref_chosen": ref_c, "ref_rejected": ref_r[:0]},
                {**sides[1], "ref_chosen": ref_c[:0], "ref_rejected": ref_r},
            ]
            attach_pair_coefficients(batches, engine, vocab, beta=5.0, loss_type="dpo_norm")
            step = fwd.forward_step(partial(dpo_side_loss, vocab_size=vocab))
            result = train_step(engine, batches, forward_step=step, report_key="dpo")
        else:
            result = train_step(engine, batches)  # the SFT token loss, mean
        return logits, result, gather_hf_state_dict(engine.raw_chunks(), model=MODEL)
    finally:
        destroy_parallel()


@pytest.fixture(scope="module", autouse=True)
def hf_dir(hf_dir_env):
    return hf_dir_env  # conftest.py: MODEL's random HF dir, exported as MT_TEST_HF_DIR


def _run(world: int, *args):
    from megatron_tulu.platform.spawn import run_ranks

    return run_ranks(_worker, world, *args)


BATCHES = {"causal": _causal_batches, "packed": _packed_batches, "dpo": _dpo_batches}


@functools.cache
def _cp1(batches: str, loss: str):
    """The single-process run (computed once per module: each spawn costs seconds)."""
    ((logits, result, weights),) = _run(1, BATCHES[batches](), 1, 1, loss)
    return logits, result, weights


def _max_diff(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> float:
    return max((a[k] - b[k]).abs().max().item() for k in a)


@pytest.mark.parametrize("batches", ["causal", "packed"])
def test_sft_logits_loss_and_step_at_cp2_equal_cp1(batches: str) -> None:
    logits1, base, w1 = _cp1(batches, "sft")
    for logits, result, weights in _run(2, BATCHES[batches](), 1, 2, "sft"):
        # both CP ranks: the whole sequence's logits, the same loss and step
        assert logits.shape == logits1.shape
        assert (logits - logits1).abs().max().item() <= 1e-5
        assert result.num_tokens == base.num_tokens  # counted once over the CP group
        assert result.loss == pytest.approx(base.loss, abs=1e-6)
        assert _max_diff(weights, w1) <= 1e-6


def test_tp2_cp2_equals_cp1() -> None:
    logits1, base, w1 = _cp1("packed", "sft")
    logits, result, weights = _run(4, _packed_batches(), 2, 2, "sft")[-1]
    assert (logits - logits1).abs().max().item() <= 1e-5
    assert result.loss == pytest.approx(base.loss, abs=1e-6)
    assert _max_diff(weights, w1) <= 1e-6


def test_the_count_must_enter_once_per_cp_group() -> None:
    """The tests above can fail: counting the tokens on both CP ranks halves the step."""
    _, _, w1 = _cp1("causal", "sft")
    _, _, w_bad = _run(2, _causal_batches(), 1, 2, "sft", False)[0]
    assert _max_diff(w_bad, w1) > 1e-4


@pytest.mark.parametrize("loss", ["dpo", "dpo_separate"])
def test_dpo_step_at_cp2_equals_cp1(loss: str) -> None:
    # Both against one forward per pair at CP1 (test_sft_dpo_steps.py checks that the two
    # forwards equal one without CP).
    _, base, w1 = _cp1("dpo", "dpo")
    for _, result, weights in _run(2, _dpo_batches(), 1, 2, loss):
        assert result.num_tokens == base.num_tokens == 2  # pairs, once
        assert result.loss == pytest.approx(base.loss, abs=5e-5)
        assert result.totals[2:] == pytest.approx(base.totals[2:], abs=5e-5)  # accuracy, rewards
        assert _max_diff(weights, w1) <= 1e-5
