"""Supervised fine-tuning (Tülu 3 stage 1): conversations in, assistant-token loss out.

Conversations in Tülu 3's `messages` layout (``data.train_file``, a mixture of ``data.sources``,
or the embedded arithmetic task, built on first use) are tokenised with a chat template (once,
into the tokenised-data cache: :mod:`megatron_tulu.stages.data_files`), packed into rows of
``training.seq_length`` tokens (documents never attend to or predict each other: block-diagonal
causal masks, positions restarting per document), and read in a seeded, data-parallel-sharded
order addressed by ``consumed_samples`` so a resume continues exactly. The loss is a sum over
response tokens (Tülu 3) or their mean (``data.loss_reduction``):
:func:`megatron_tulu.losses.sft.sft_loss`.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from functools import partial
from typing import Any

from megatron_tulu.config import ParallelDims, RecipeConfig
from megatron_tulu.data.batching import SFTBatch, packed_attention_mask
from megatron_tulu.data.packing import PackedSFTDataset
from megatron_tulu.data.sampler import ShardedSampler
from megatron_tulu.data.tokenizers import load_tokenizer
from megatron_tulu.engine.forward import ForwardStep, forward_step
from megatron_tulu.engine.microbatch import MicroBatch, slice_rows
from megatron_tulu.losses.sft import sft_loss
from megatron_tulu.stages.data_files import (
    chat_dataset,
    stage_sampler,
    task_files,
    tokenizer_ref,
)
from megatron_tulu.stages.loop import StageContext
from megatron_tulu.stages.supervised import SupervisedStage, TaskDefaults


@dataclass(kw_only=True)
class SFTTask(TaskDefaults):
    rows: Any  # PackedSFTDataset, or SFTDataset (one conversation per row)
    sampler: ShardedSampler
    dims: ParallelDims
    seq_length: int
    forward_step: ForwardStep
    report_key: str = "lm loss"
    count_name: str = "tokens"
    tokenizer_ref: dict[str, Any] = field(default_factory=dict)

    def _batch(self, indices: list[int]) -> SFTBatch:
        if isinstance(self.rows, PackedSFTDataset):
            return self.rows.batch(indices)
        return self.rows.batch(indices, pad_to=self.seq_length)

    def microbatches(self, consumed: int) -> list[MicroBatch]:
        batch = self._batch(self.sampler.rank_batch(consumed))
        columns = {
            "tokens": batch.tokens, "labels": batch.labels, "loss_mask": batch.loss_mask,
            "position_ids": batch.position_ids,
            "attention_mask": packed_attention_mask(batch.document_ids),
        }  # fmt: skip
        return slice_rows(columns, self.dims.micro_batch_size, self.dims.num_microbatches)


def sft_task(recipe: RecipeConfig, dims: ParallelDims) -> SFTTask:
    data, seq = recipe.data, recipe.training.seq_length
    train_file, tok_path = task_files(recipe)
    tokenizer = load_tokenizer(tok_path)
    if tokenizer.vocab_size > recipe.model.vocab_size:
        raise ValueError(
            f"tokenizer {tok_path!r} has {tokenizer.vocab_size} ids but model.vocab_size is "
            f"{recipe.model.vocab_size}: use a model with a vocabulary at least that large"
        )
    if not data.pack and data.max_length > seq + 1:
        raise ValueError(
            f"data.max_length ({data.max_length}) exceeds training.seq_length + 1 ({seq + 1}) "
            "with data.pack=false: lower data.max_length or raise training.seq_length"
        )
    dataset = chat_dataset(recipe, "sft", tokenizer, tok_path, train_file)
    rows = PackedSFTDataset(dataset, seq_length=seq) if data.pack else dataset
    sampler = stage_sampler(
        recipe, dims, what="SFT", path=train_file, report=dataset.report,
        num_samples=len(rows), global_batch_size=dims.global_batch_size,
    )  # fmt: skip
    loss = partial(sft_loss, vocab_size=recipe.model.vocab_size, reduction=data.loss_reduction)
    step = forward_step(loss, fused_output=recipe.training.fused_output)
    return SFTTask(
        rows=rows, sampler=sampler, dims=dims, seq_length=seq, forward_step=step,
        tokenizer_ref=tokenizer_ref(tok_path, data.chat_template),
    )  # fmt: skip


def sft_stage(ctx: StageContext) -> SupervisedStage:
    return SupervisedStage(ctx, sft_task)
