"""Reference log-probs for DPO: forward-only through every layout, against transformers, the
on-disk cache, and cached vs online reference values in a DPO step."""

from __future__ import annotations

import os
from functools import partial

import pytest
import torch

from megatron_tulu.config import OptimizerConfig, ParallelConfig, model_preset
from megatron_tulu.platform.spawn import run_ranks

pytestmark = pytest.mark.slow
MODEL = model_preset("tiny")
PAIRS, SEQ = 4, 16


def _pairs():
    """4 pairs as (chosen, rejected) rows [SEQ + 1] with response masks over labels."""
    gen = torch.Generator().manual_seed(5)
    tokens = torch.randint(3, MODEL.vocab_size, (2 * PAIRS, SEQ + 1), generator=gen)
    mask = torch.zeros(2 * PAIRS, SEQ)
    for r in range(2 * PAIRS):
        mask[r, 5 : 9 + r % 5] = 1.0
    return tokens, mask


def _micro(pair_ids: list[int]):
    """One micro-batch: the chosen rows of ``pair_ids`` then their rejected rows."""
    tokens, mask = _pairs()
    rows = list(pair_ids) + [PAIRS + i for i in pair_ids]
    t = tokens[rows]
    return {
        "tokens": t[:, :-1],
        "labels": t[:, 1:],
        "loss_mask": mask[rows],
        "position_ids": torch.arange(SEQ).unsqueeze(0).expand(len(rows), -1),
    }


def _worker(tp: int, pp: int, dp: int, cache_dir: str | None, online_step: bool):
    from megatron.core import parallel_state as ps

    from megatron_tulu.engine.build import build_engine
    from megatron_tulu.engine.forward import forward_step
    from megatron_tulu.engine.schedule import train_step
    from megatron_tulu.losses.dpo import dpo_pair_loss
    from megatron_tulu.models.hf_io import load_hf_weights
    from megatron_tulu.parallel import destroy_parallel, init_parallel
    from megatron_tulu.stages.dpo_reference import (
        ReferenceLogpCache,
        cache_key,
        compute_reference_logps,
        pair_logps,
    )

    hf_dir = os.environ["MT_TEST_HF_DIR"]
    dims = ParallelConfig(tp=tp, pp=pp, micro_batch_size=2, global_batch_size=2 * PAIRS).resolve(
        tp * pp * dp, MODEL
    )
    init_parallel(dims, seed=0)
    try:
        engine = build_engine(
            model=MODEL,
            dims=dims,
            train_steps=1,
            optimizer=OptimizerConfig(
                optimizer="sgd", lr=1.0, clip_grad=0.0, use_distributed_optimizer=False
            ),
            load_weights=lambda c: load_hf_weights(
                c, hf_dir, model=MODEL, tp=tp, tp_rank=ps.get_tensor_model_parallel_rank()
            ),
        )
        d = ps.get_data_parallel_rank()
        mine = list(range(d * PAIRS // dp, (d + 1) * PAIRS // dp))  # this DP rank's pairs
        micro = [_micro([i]) for i in mine]  # one pair (2 rows) per micro-batch
        table = compute_reference_logps(
            engine,
            [(torch.tensor(mine), micro)],
            num_pairs=PAIRS,
            vocab_size=MODEL.vocab_size,
        )
        out = {"table": table}
        if cache_dir is not None:
            cache = ReferenceLogpCache(cache_dir, cache_key(data="pairs-v1", ref=hf_dir))
            cached = cache.load()
            if cached is None:
                cache.save(table)
                cached = cache.load()
            out["cached"] = cached
        if online_step:  # DPO step with reference values computed right now (online) ...
            online = pair_logps(engine, micro, MODEL.vocab_size)
            for mb, row in zip(micro, online, strict=True):
                mb["ref_chosen"], mb["ref_rejected"] = row[0:1].float(), row[1:2].float()
            step = forward_step(
                partial(dpo_pair_loss, vocab_size=MODEL.vocab_size, beta=5.0, loss_type="dpo_norm")
            )
            out["online_loss"] = train_step(engine, micro, forward_step=step, report_key="dpo").loss
        return out
    finally:
        destroy_parallel()


@pytest.fixture(scope="module", autouse=True)
def hf_dir(hf_dir_env):
    return hf_dir_env  # conftest.py: MODEL's random HF dir, exported as MT_TEST_HF_DIR


def _hf_table(hf_dir) -> torch.Tensor:
    import transformers

    hf = transformers.LlamaForCausalLM.from_pretrained(str(hf_dir), dtype=torch.float32).eval()
    tokens, mask = _pairs()
    with torch.no_grad():
        logp = torch.log_softmax(hf(tokens[:, :-1]).logits, -1)
    token_logp = logp.gather(-1, tokens[:, 1:, None])[..., 0]
    sums = (token_logp * mask).sum(-1).double()
    return torch.stack([sums[:PAIRS], sums[PAIRS:]], dim=1)


def test_reference_logps_every_layout_match_transformers(hf_dir, tmp_path):
    ref = _hf_table(hf_dir)
    # Sums of 4-8 token log-probs of ~-7: float32 rounding ~1e-6 relative -> 1e-4 absolute.
    for tp, pp, dp in [(1, 1, 1), (2, 1, 1), (1, 2, 1), (1, 1, 2)]:
        table = run_ranks(_worker, tp * pp * dp, tp, pp, dp, None, False)[-1]["table"]
        assert (table - ref).abs().max().item() <= 1e-4, (tp, pp, dp)


def test_cache_roundtrip_and_cached_equals_online(tmp_path):
    cache_dir = str(tmp_path / "cache")
    first = run_ranks(_worker, 1, 1, 1, 1, cache_dir, False)[0]
    assert torch.equal(first["cached"], first["table"])  # written, then read back exactly
    assert len(list((tmp_path / "cache").glob("reference-logps-*.pt"))) == 1
    # TP2 run: reads the TP1 cache; its online values agree with it, and so does the loss.
    run = run_ranks(_worker, 2, 2, 1, 1, cache_dir, True)[-1]
    assert (run["table"] - run["cached"]).abs().max().item() <= 1e-4
    # The online DPO step (reference = current weights) has z = 0 for every pair: log 2.
    assert run["online_loss"] == pytest.approx(0.6931472, abs=1e-5)
