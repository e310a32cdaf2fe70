"""DPO (Tülu 3 stage 2): preference pairs, cached reference log-probs, the pair loss.

:class:`DPOSource` feeds the shared training loop. Before the first step the reference
log-probs of every pair (chosen and rejected response sums under the INITIAL weights -- the SFT
checkpoint the run starts from) are computed forward-only through the same layout and cached
on disk (:mod:`megatron_tulu.stages.dpo_reference`); a resumed run reads the cache, since its
weights have moved. Each micro-batch holds ``micro_batch_size / 2`` pairs, chosen rows then
rejected rows, in one forward (so ``parallel.micro_batch_size`` and ``global_batch_size`` count
sequences, two per pair). With ``dpo.forward: separate`` the rank's chosen rows fill the first
half of its micro-batches and the rejected rows the second half (two forwards per pair, any
micro-batch size); a forward-only pass first gives the policy log-probs that couple the sides
(:func:`megatron_tulu.stages.dpo_step.pair_loss_coefficients`).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
from megatron.core import parallel_state as ps

from megatron_tulu.config import ParallelDims, RecipeConfig
from megatron_tulu.data.preference import PreferenceDataConfig, PreferenceDataset
from megatron_tulu.data.sampler import ShardedSampler
from megatron_tulu.data.tokenizers import load_tokenizer
from megatron_tulu.engine.forward import MicroBatch
from megatron_tulu.stages.dpo_reference import (
    ReferenceLogpCache,
    cache_key,
    compute_reference_logps,
    file_digest,
)
from megatron_tulu.stages.dpo_step import (
    attach_pair_coefficients,
    dpo_forward_step,
    dpo_separate_forward_step,
)
from megatron_tulu.stages.sft import task_files


@dataclass(kw_only=True)
class DPOSource:
    dataset: PreferenceDataset
    train_file: str
    sampler: ShardedSampler
    dims: ParallelDims
    seq_length: int
    forward_step: Any
    beta: float = 5.0
    loss_type: str = "dpo_norm"
    layout: str = "concat"  # dpo.forward: concat (one forward per pair) or separate (two)
    vocab_size: int = 0
    engine: Any = None  # set by prepare(); the separate layout's forward-only pass needs it
    cache: ReferenceLogpCache | None = None
    reference: torch.Tensor | None = None  # [pairs, 2], set by prepare()
    report_key: str = "dpo"
    count_name: str = "pairs"
    tokenizer_ref: dict[str, Any] = field(default_factory=dict)

    def metrics(self, totals: tuple[float, ...]) -> dict[str, float]:
        """From the summed "dpo" report [loss, pairs, accuracy, chosen reward, rejected reward]."""
        pairs = max(totals[1], 1.0)
        return {
            "preference_accuracy": totals[2] / pairs,
            "reward_chosen": totals[3] / pairs,
            "reward_rejected": totals[4] / pairs,
            "reward_margin": (totals[3] - totals[4]) / pairs,
        }

    @property
    def pairs_per_micro(self) -> int:
        return self.dims.micro_batch_size // 2

    def _micro(self, indices: list[int]) -> list[MicroBatch]:
        # Pad to the step's longest row (rounded up for TP/SP), not to seq_length: every rank of a
        # model replica reads the same pairs, so all its micro-batches share one length.
        longest = max(
            len(ids) - 1
            for i in indices
            for ids in (self.dataset.examples[i].chosen_ids, self.dataset.examples[i].rejected_ids)
        )
        multiple = math.lcm(8, self.dims.tp)
        width = min(self.seq_length, -(-longest // multiple) * multiple)
        batch = self.dataset.batch(indices, pad_to=width)
        keys = ("tokens", "labels", "loss_mask", "position_ids")
        if self.layout == "separate":
            rows = {k: torch.cat([getattr(batch, f"chosen_{k}"), getattr(batch, f"rejected_{k}")])
                    for k in keys}  # fmt: skip
            m = self.dims.micro_batch_size
            out = [{k: v[i * m : (i + 1) * m] for k, v in rows.items()}
                   for i in range(self.dims.num_microbatches)]  # fmt: skip
        else:
            p = self.pairs_per_micro
            out = [{k: torch.cat([getattr(batch, f"chosen_{k}")[i * p : (i + 1) * p],
                                  getattr(batch, f"rejected_{k}")[i * p : (i + 1) * p]])
                    for k in keys} for i in range(self.dims.num_microbatches)]  # fmt: skip
        if self.reference is not None:
            ref = self.reference[batch.sample_ids].float()  # [pairs, 2]
            for mb, (c, r) in zip(out, self._pair_slices(out), strict=True):
                mb["ref_chosen"], mb["ref_rejected"] = ref[c, 0], ref[r, 1]
        return out

    def _pair_slices(self, micro: list[MicroBatch]) -> list[tuple[slice, slice]]:
        """Per micro-batch: which pairs its chosen rows and its rejected rows belong to."""
        slices, start = [], 0
        if self.layout == "separate":
            half = sum(mb["tokens"].shape[0] for mb in micro) // 2
            for mb in micro:
                n = mb["tokens"].shape[0]
                c = slice(min(start, half), min(start + n, half))
                r = slice(max(start - half, 0), max(start + n - half, 0))
                slices.append((c, r))
                start += n
            return slices
        for mb in micro:
            p = mb["tokens"].shape[0] // 2
            slices.append((slice(start, start + p), slice(start, start + p)))
            start += p
        return slices

    def microbatches(self, consumed: int) -> list[MicroBatch]:
        if self.reference is None:
            raise RuntimeError("DPOSource.prepare() must run before training")
        micro = self._micro(self.sampler.rank_batch(consumed // 2))
        if self.layout == "separate":
            attach_pair_coefficients(
                micro, self.engine.chunks, self.dims, self.vocab_size,
                beta=self.beta, loss_type=self.loss_type,
            )  # fmt: skip
        return micro

    def prepare(self, engine, *, resuming: bool) -> None:
        """Loads the reference table from the cache, or computes it now (initial weights)."""
        self.engine = engine
        cache = self.cache
        if cache is None:
            raise RuntimeError("DPOSource.cache is not set")
        table = cache.load()
        if table is None:
            if resuming:
                raise FileNotFoundError(
                    f"resuming DPO but the reference log-probs cache {cache.path} is missing: "
                    "the weights have moved, so they can no longer be computed; restore the "
                    "cache or restart DPO from its initial checkpoint"
                )
            n, rank_pairs = len(self.dataset), self.sampler.rank_batch_size
            dp, d = self.dims.dp, ps.get_data_parallel_rank()
            step_pairs = rank_pairs * dp

            def batches():
                for start in range(0, n, step_pairs):
                    mine = [start + d * rank_pairs + k for k in range(rank_pairs)]
                    mine = [i if i < n else i % n for i in mine]  # wrap the last batch
                    yield torch.tensor(mine), self._micro(mine)

            table = compute_reference_logps(
                engine.chunks, self.dims, batches(), num_pairs=n,
                vocab_size=engine.model.vocab_size, layout=self.layout,
            )  # fmt: skip
            cache.save(table)
        self.reference = table


def dpo_source(recipe: RecipeConfig, dims: ParallelDims) -> DPOSource:
    data, seq = recipe.data, recipe.training.seq_length
    layout = recipe.dpo.forward
    if layout == "concat" and dims.micro_batch_size % 2:
        raise ValueError(
            f"parallel.micro_batch_size ({dims.micro_batch_size}) must be even for DPO with "
            "dpo.forward=concat: it counts sequences, a chosen and a rejected one per pair; use an "
            "even size or dpo.forward=separate"
        )
    if layout == "separate" and (dims.micro_batch_size * dims.num_microbatches) % 2:
        raise ValueError(
            f"dpo.forward=separate needs an even number of sequences per data-parallel rank, got "
            f"micro_batch_size {dims.micro_batch_size} x num_microbatches "
            f"{dims.num_microbatches}: raise parallel.global_batch_size"
        )
    train_file, tok_path = task_files(recipe, "pref_train.jsonl")
    tokenizer = load_tokenizer(tok_path)
    dataset = PreferenceDataset.from_jsonl(train_file, tokenizer, PreferenceDataConfig(
        chat_template=data.chat_template, max_length=min(data.max_length, seq + 1),
        too_long=data.too_long, bad_rows=data.bad_rows,
    ))  # fmt: skip
    if dist.get_rank() == 0:
        print(f"DPO data {train_file}: {dataset.report.summary()}", flush=True)
    sampler = ShardedSampler(
        num_samples=len(dataset), global_batch_size=dims.global_batch_size // 2,
        dp_rank=ps.get_data_parallel_rank(), dp_size=dims.dp, seed=recipe.training.seed,
    )  # fmt: skip
    source = DPOSource(
        dataset=dataset, train_file=train_file, sampler=sampler, dims=dims, seq_length=seq,
        forward_step=(
            dpo_separate_forward_step(recipe.model.vocab_size) if layout == "separate" else
            dpo_forward_step(recipe.model.vocab_size, beta=recipe.dpo.beta,
                             loss_type=recipe.dpo.loss_type)
        ),
        beta=recipe.dpo.beta, loss_type=recipe.dpo.loss_type, layout=layout,
        vocab_size=recipe.model.vocab_size,
        tokenizer_ref={"path": str(Path(tok_path).resolve()), "chat_template": data.chat_template},
    )  # fmt: skip
    source.cache = reference_cache(recipe, source)
    return source


def reference_cache(recipe: RecipeConfig, source: DPOSource) -> ReferenceLogpCache:
    t = recipe.training
    init = t.init_from_native or t.init_from_hf or "random-init"
    key = cache_key(
        data=file_digest(source.train_file),
        init=str(init), seq_length=t.seq_length, template=recipe.data.chat_template,
        max_length=recipe.data.max_length, seed=t.seed, model=recipe.model.name,
    )  # fmt: skip
    cache_dir = recipe.dpo.reference_cache_dir or str(Path(t.output_dir) / "reference_cache")
    return ReferenceLogpCache(cache_dir, key)
