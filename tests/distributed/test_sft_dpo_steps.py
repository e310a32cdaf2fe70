"""SFT packing and DPO steps through megatron's schedules.

- A packed row (three documents, positions restarting, block-diagonal causal attention, no loss
  across document boundaries) gives the same loss and the same gradients as the three documents
  as separate padded rows. Gradients are compared through one SGD step with lr 1 (weight change
  = gradient), tolerance 1e-6: the same sums in another order (loss: 5e-6, see the test).
- The sum reduction gives gradients equal to (mean gradient x token count).
- The DPO loss and gradients at TP2 and PP2 equal TP1's.
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
DOC_LENGTHS = (10, 7, 12)


def _docs() -> list[torch.Tensor]:
    gen = torch.Generator().manual_seed(11)
    return [torch.randint(3, MODEL.vocab_size, (n,), generator=gen) for n in DOC_LENGTHS]


def _unpacked_batch() -> list[dict[str, torch.Tensor]]:
    """One document per micro-batch row, right-padded; loss on every real next-token."""
    width = max(DOC_LENGTHS) - 1
    rows = []
    for doc in _docs():
        n = doc.numel() - 1
        tokens = torch.zeros(1, width, dtype=torch.long)
        labels = torch.zeros(1, width, dtype=torch.long)
        mask = torch.zeros(1, width)
        tokens[0, :n], labels[0, :n], mask[0, :n] = doc[:-1], doc[1:], 1.0
        rows.append(
            {
                "tokens": tokens,
                "labels": labels,
                "loss_mask": mask,
                "position_ids": torch.arange(width).unsqueeze(0),
            }
        )
    return rows


def _packed_batch() -> list[dict[str, torch.Tensor]]:
    """The three documents in one row: labels never cross a document boundary."""
    docs = _docs()
    stream = torch.cat(docs)
    doc_id = torch.cat([torch.full((d.numel(),), i) for i, d in enumerate(docs)])
    pos = torch.cat([torch.arange(d.numel()) for d in docs])
    tokens, labels = stream[:-1], stream[1:]
    same_doc = doc_id[:-1] == doc_id[1:]
    s = tokens.numel()
    ids = doc_id[:-1]
    causal = torch.ones(s, s, dtype=torch.bool).tril()
    allowed = causal & (ids[:, None] == ids[None, :])
    return [
        {
            "tokens": tokens[None],
            "labels": labels[None],
            "loss_mask": same_doc.float()[None],
            "position_ids": pos[:-1][None],
            "attention_mask": (~allowed)[None, None],
        }
    ]


def _sgd_worker(batches, tp: int, pp: int, forward: str, reduction: str = "mean"):
    from functools import partial

    from megatron.core import parallel_state as ps

    from megatron_tulu.engine.build import build_engine
    from megatron_tulu.engine.forward import forward_step
    from megatron_tulu.engine.schedule import train_step
    from megatron_tulu.losses.dpo import dpo_pair_loss, dpo_side_loss
    from megatron_tulu.losses.sft import sft_loss
    from megatron_tulu.models.hf_io import gather_hf_state_dict, load_hf_weights
    from megatron_tulu.parallel import destroy_parallel, init_parallel
    from megatron_tulu.stages.dpo import attach_pair_coefficients

    world = int(os.environ["WORLD_SIZE"])
    rows = sum(b["tokens"].shape[0] for b in batches)
    micro = batches[0]["tokens"].shape[0]
    sp = forward.endswith("_sp")  # sequence parallelism
    dims = ParallelConfig(
        tp=tp, pp=pp, micro_batch_size=micro, global_batch_size=rows, sequence_parallel=sp
    ).resolve(world, MODEL)
    init_parallel(dims, seed=0)
    try:
        hf_dir = os.environ["MT_TEST_HF_DIR"]
        engine = build_engine(
            model=MODEL,
            dims=dims,
            optimizer=SGD,
            train_steps=1,
            load_weights=lambda c: load_hf_weights(
                c, hf_dir, model=MODEL, tp=tp, tp_rank=ps.get_tensor_model_parallel_rank()
            ),
        )
        if forward == "dpo":
            loss = partial(dpo_pair_loss, vocab_size=MODEL.vocab_size, beta=5.0)
            step = forward_step(partial(loss, loss_type="dpo_norm"))
            result = train_step(engine, batches, forward_step=step, report_key="dpo")
        elif forward in ("dpo_separate", "dpo_separate_fused"):
            attach_pair_coefficients(
                batches, engine, MODEL.vocab_size, beta=5.0, loss_type="dpo_norm"
            )
            step = forward_step(
                partial(dpo_side_loss, vocab_size=MODEL.vocab_size),
                fused_output=forward == "dpo_separate_fused",
            )
            result = train_step(engine, batches, forward_step=step, report_key="dpo")
        else:
            loss = partial(sft_loss, vocab_size=MODEL.vocab_size, reduction=reduction)
            step = forward_step(loss, fused_output=forward.startswith("sft_fused"))
            result = train_step(engine, batches, forward_step=step)
        return result, gather_hf_state_dict(engine.raw_chunks(), model=MODEL)
    finally:
        destroy_parallel()


@pytest.fixture(scope="module", autouse=True)
def hf_dir(hf_dir_env):
    return hf_dir_env  # conftest.py: MODEL's random HF dir, exported as MT_TEST_HF_DIR


def _run(world, *args):
    from megatron_tulu.platform.spawn import run_ranks

    return run_ranks(_sgd_worker, world, *args)[-1]


def _max_diff(a, b):
    return max((a[k] - b[k]).abs().max().item() for k in a)


def test_packed_equals_unpacked_loss_and_gradients():
    unpacked, w_unpacked = _run(1, _unpacked_batch(), 1, 1, "sft")
    packed, w_packed = _run(1, _packed_batch(), 1, 1, "sft")
    assert packed.num_tokens == unpacked.num_tokens == sum(n - 1 for n in DOC_LENGTHS)
    # Mean of 26 token losses ~4.76 each, computed in matmuls of other shapes: float32 rounding
    # of ~2e-7 relative per token (observed 1.2e-6 abs on the mean).
    assert packed.loss == pytest.approx(unpacked.loss, abs=5e-6)
    assert _max_diff(w_packed, w_unpacked) <= 1e-6
    # Without the document mask the packed row attends across documents: a different loss.
    leaky = [{k: v for k, v in _packed_batch()[0].items() if k != "attention_mask"}]
    leaked, _ = _run(1, leaky, 1, 1, "sft")
    assert abs(leaked.loss - unpacked.loss) > 1e-3


def test_sum_reduction_scales_the_mean_gradient():
    mean, w_mean = _run(1, _unpacked_batch(), 1, 1, "sft", "mean")
    total, w_sum = _run(1, _unpacked_batch(), 1, 1, "sft", "sum")
    assert total.loss == pytest.approx(mean.loss, abs=1e-6)  # the report is the mean either way
    from megatron_tulu.models.hf_io import HFTensorReader

    reader = HFTensorReader(os.environ["MT_TEST_HF_DIR"])
    name = "model.layers.1.mlp.down_proj.weight"
    before = reader.get(name)
    grad_mean, grad_sum = before - w_mean[name], before - w_sum[name]
    torch.testing.assert_close(grad_sum, grad_mean * mean.num_tokens, rtol=1e-4, atol=1e-6)


@functools.cache
def _logits_path_step():
    return _run(1, _packed_batch(), 1, 1, "sft")


@pytest.mark.parametrize(
    ("tp", "pp", "mode"),
    [(1, 1, "sft_fused"), (2, 1, "sft_fused_sp"), (1, 2, "sft_fused")],
    ids=["tp1", "tp2-sp", "pp2"],
)
def test_fused_output_sft_step_equals_the_logits_path(tp, pp, mode):
    """training.fused_output: the last stage hands hidden states to the loss, which runs the
    output layer with the log-probs (ops.linear_logprob_sum). One SGD step (lr 1) on the packed
    row at TP1 / TP2 with sequence parallelism (vocab-sharded output layer, the sequence shards
    gathered without a reduce-scatter backward, the hidden gradient all-reduced inside the op) /
    PP2 (the head on the last stage only) against TP1 through full logits: the same fp32 sums
    in chunks of another shape (loss 5e-6 and weights 1e-6 as the packed/unpacked test). TP2
    without sequence parallelism: the fused DPO case of test_dpo_two_forwards_equal_one."""
    want, w_want = _logits_path_step()
    got, w_got = _run(tp * pp, _packed_batch(), tp, pp, mode)
    assert got.num_tokens == want.num_tokens
    assert got.loss == pytest.approx(want.loss, abs=5e-6)
    assert _max_diff(w_got, w_want) <= 1e-6
    from megatron_tulu.models.hf_io import HFTensorReader

    before = HFTensorReader(os.environ["MT_TEST_HF_DIR"]).get("lm_head.weight")
    assert (w_got["lm_head.weight"] - before).abs().max() > 1e-3  # the output layer trained


def _dpo_batches(pairs_per_micro: int, micro: int) -> list[dict[str, torch.Tensor]]:
    gen = torch.Generator().manual_seed(3)
    out = []
    for _ in range(micro):
        p, s = pairs_per_micro, 16
        tokens = torch.randint(3, MODEL.vocab_size, (2 * p, s + 1), generator=gen)
        mask = torch.zeros(2 * p, s)
        for r in range(2 * p):  # prompt of 5 tokens, then a response of varying length
            mask[r, 4 : 8 + r] = 1.0
        out.append(
            {
                "tokens": tokens[:, :-1],
                "labels": tokens[:, 1:],
                "loss_mask": mask,
                "position_ids": torch.arange(s).unsqueeze(0).expand(2 * p, -1),
                "ref_chosen": -torch.rand(p, generator=gen) * 30,
                "ref_rejected": -torch.rand(p, generator=gen) * 30,
            }
        )
    return out


@pytest.mark.parametrize(("tp", "pp"), [(2, 1), (1, 2)], ids=["tp2", "pp2"])
def test_dpo_step_matches_tp1(tp, pp):
    # Micro-batches of 2 rows = 1 pair; 2 micro-batches. megatron's micro_batch_size counts
    # rows of a micro-batch (2 here: chosen + rejected).
    batches = _dpo_batches(1, 2)
    base, w_base = _run(1, batches, 1, 1, "dpo")
    run, w_run = _run(tp * pp, batches, tp, pp, "dpo")
    assert base.num_tokens == 2  # pairs
    # Sequence log-prob sums of ~-50 carry float32 rounding of ~1e-5 absolute (reduction order
    # differs across TP/PP); dpo_norm divides by lengths >= 4 and beta 5 scales: |dz| < 5e-5.
    assert run.loss == pytest.approx(base.loss, abs=5e-5)
    assert run.totals[2:] == pytest.approx(base.totals[2:], abs=5e-5)  # accuracy, rewards
    # Gradients (= weight changes at lr 1) scale token gradients by beta * sigmoid / length (up
    # to ~1.25 here): float32 reduction-order differences of ~1e-6 relative, observed 1.4e-6.
    assert _max_diff(w_run, w_base) <= 1e-5
    assert _max_diff(w_base, _run(1, batches, 1, 1, "sft")[1]) > 1e-3  # the DPO loss moved it


def _separate_layout(batches: list[dict[str, torch.Tensor]]) -> list[dict[str, torch.Tensor]]:
    """The same pairs with chosen rows first, then rejected rows (dpo.forward=separate), in
    micro-batches of the same size; each carries the references of the pairs it holds."""
    keys = ("tokens", "labels", "loss_mask", "position_ids")
    p = [b["tokens"].shape[0] // 2 for b in batches]
    chosen = {k: torch.cat([b[k][:n] for b, n in zip(batches, p, strict=True)]) for k in keys}
    rejected = {k: torch.cat([b[k][n:] for b, n in zip(batches, p, strict=True)]) for k in keys}
    ref_c = torch.cat([b["ref_chosen"] for b in batches])
    ref_r = torch.cat([b["ref_rejected"] for b in batches])
    rows = {k: torch.cat([chosen[k], rejected[k]]) for k in keys}
    m, pairs = batches[0]["tokens"].shape[0], ref_c.shape[0]
    out = []
    for i in range(len(batches)):
        lo, hi = i * m, (i + 1) * m
        out.append({
            **{k: v[lo:hi] for k, v in rows.items()},
            "ref_chosen": ref_c[min(lo, pairs) : min(hi, pairs)],
            "ref_rejected": ref_r[max(lo - pairs, 0) : max(hi - pairs, 0)],
        })  # fmt: skip
    return out


@pytest.mark.parametrize(
    ("tp", "pp", "mode"),
    [(1, 1, "dpo_separate"), (1, 2, "dpo_separate"), (2, 1, "dpo_separate_fused")],
    ids=["tp1", "pp2", "tp2-fused-output"],
)
def test_dpo_two_forwards_equal_one(tp, pp, mode):
    """dpo.forward=separate (chosen and rejected in different micro-batches, exact loss
    derivatives from a forward-only pass) gives the concat mode's loss, metrics and update;
    also with training.fused_output (the output layer inside the second pass's loss, each token
    weighted by its row's coefficient; at TP2, the vocabulary-sharded head)."""
    batches = _dpo_batches(2, 2)  # 2 micro-batches x (2 chosen + 2 rejected rows)
    base, w_base = _run(1, batches, 1, 1, "dpo")
    run, w_run = _run(tp * pp, _separate_layout(batches), tp, pp, mode)
    assert run.num_tokens == base.num_tokens == 4  # pairs, each counted once
    # Same float32 log-prob sums by another reduction order (see test_dpo_step_matches_tp1).
    assert run.loss == pytest.approx(base.loss, abs=5e-5)
    assert run.totals[2:] == pytest.approx(base.totals[2:], abs=5e-5)
    assert _max_diff(w_run, w_base) <= 1e-5
    # It can fail: the concat rows read as if separate pair the wrong sides and move elsewhere.
    _, w_wrong = _run(1, batches, 1, 1, "dpo_separate")
    assert _max_diff(w_wrong, w_base) > 1e-4
