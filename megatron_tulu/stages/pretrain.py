"""The plain-text language-model stage (``training.stage: pretrain``): a byte tokenizer over a
text file (or a generated corpus), packed rows, the mean token loss. The smallest stage: it
exercises the engine, layouts, checkpoints and the loop without any chat data."""

from __future__ import annotations

from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any

import torch.distributed as dist
from megatron.core import parallel_state as ps

from megatron_tulu.config import ParallelDims, RecipeConfig
from megatron_tulu.data.corpus import ByteTokenizer, write_corpus
from megatron_tulu.data.lm_dataset import PackedTextDataset
from megatron_tulu.engine.forward import ForwardStep, forward_step
from megatron_tulu.engine.microbatch import MicroBatch, split_global_batch
from megatron_tulu.losses.sft import sft_loss
from megatron_tulu.stages.loop import StageContext
from megatron_tulu.stages.supervised import SupervisedStage, TaskDefaults

GENERATED_CORPUS_LINES = 20_000


@dataclass(kw_only=True)
class TextTask(TaskDefaults):
    data: PackedTextDataset
    dims: ParallelDims
    forward_step: ForwardStep
    report_key: str = "lm loss"
    count_name: str = "tokens"
    tokenizer_ref: dict[str, Any] = field(default_factory=lambda: {"type": "byte"})

    def microbatches(self, consumed: int) -> list[MicroBatch]:
        rows = self.data.global_batch(consumed, self.dims.global_batch_size)
        return split_global_batch(rows, None, dims=self.dims, dp_rank=ps.get_data_parallel_rank())


def _dataset(recipe: RecipeConfig, tokenizer: ByteTokenizer) -> PackedTextDataset:
    path = recipe.training.data_path
    if path is None:  # generate the built-in corpus once (rank 0 writes, others wait)
        path = str(Path(recipe.training.output_dir) / "corpus.txt")
        if dist.get_rank() == 0:
            write_corpus(path, GENERATED_CORPUS_LINES, seed=recipe.training.seed)
        dist.barrier()
    return PackedTextDataset(
        path, seq_length=recipe.training.seq_length, tokenizer=tokenizer,
        seed=recipe.training.seed,
    )  # fmt: skip


def text_task(recipe: RecipeConfig, dims: ParallelDims) -> TextTask:
    tokenizer = ByteTokenizer()
    if tokenizer.vocab_size > recipe.model.vocab_size:
        raise ValueError(
            f"model.vocab_size ({recipe.model.vocab_size}) is smaller than the byte tokenizer's "
            f"{tokenizer.vocab_size} ids: use a preset with a larger vocabulary"
        )
    return TextTask(
        data=_dataset(recipe, tokenizer), dims=dims,
        forward_step=forward_step(
            partial(sft_loss, vocab_size=recipe.model.vocab_size),
            fused_output=recipe.training.fused_output,
        ),
    )  # fmt: skip


def pretrain_stage(ctx: StageContext) -> SupervisedStage:
    return SupervisedStage(ctx, text_task)
