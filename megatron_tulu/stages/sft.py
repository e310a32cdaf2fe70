"""Supervised fine-tuning (Tülu 3 stage 1): conversations in, assistant-token loss out.

The SFT stage feeds the shared training loop (:func:`megatron_tulu.stages.loop.run_training`)
through :class:`SFTSource`: conversations from a `messages` JSONL (or the embedded arithmetic
task, built on first use) are tokenised with a chat template, packed into rows of
``training.seq_length`` tokens (documents never attend to or predict each other: block-diagonal
causal masks, positions restarting per document), and read in a seeded, data-parallel-sharded
order addressed by ``consumed_samples`` so a resume continues exactly. The loss is a sum over
response tokens (Tülu 3) or their mean (``data.loss_reduction``).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch.distributed as dist
from megatron.core import parallel_state as ps

from megatron_tulu.config import ParallelDims, RecipeConfig
from megatron_tulu.data.batching import SFTBatch, packed_attention_mask
from megatron_tulu.data.build_task import TaskConfig, build_task
from megatron_tulu.data.packing import PackedSFTDataset
from megatron_tulu.data.sampler import ShardedSampler
from megatron_tulu.data.sft import SFTDataConfig, SFTDataset
from megatron_tulu.data.tokenizers import load_tokenizer
from megatron_tulu.engine.forward import MicroBatch, sft_forward_step


@dataclass(kw_only=True)
class SFTSource:
    rows: Any  # PackedSFTDataset, or SFTDataset (one conversation per row)
    sampler: ShardedSampler
    dims: ParallelDims
    seq_length: int
    forward_step: Any
    report_key: str = "lm loss"
    tokenizer_ref: dict[str, Any] = field(default_factory=dict)

    def _batch(self, indices: list[int]) -> SFTBatch:
        if isinstance(self.rows, PackedSFTDataset):
            return self.rows.batch(indices)
        return self.rows.batch(indices, pad_to=self.seq_length)

    def microbatches(self, consumed: int) -> list[MicroBatch]:
        batch = self._batch(self.sampler.rank_batch(consumed))
        mask = packed_attention_mask(batch.document_ids)
        mbs = self.dims.micro_batch_size
        out = []
        for i in range(self.dims.num_microbatches):
            sl = slice(i * mbs, (i + 1) * mbs)
            out.append({
                "tokens": batch.tokens[sl], "labels": batch.labels[sl],
                "loss_mask": batch.loss_mask[sl], "position_ids": batch.position_ids[sl],
                "attention_mask": mask[sl],
            })  # fmt: skip
        return out


def task_files(recipe: RecipeConfig, task_file: str = "sft_train.jsonl") -> tuple[str, str]:
    """(train file, tokenizer path): the recipe's, or the embedded task's ``task_file`` (the
    task is built once, by rank 0)."""
    data = recipe.data
    if data.train_file is not None:
        return data.train_file, str(data.tokenizer)
    task_dir = Path(data.task_dir or Path(recipe.training.output_dir) / "task")
    if dist.get_rank() == 0 and not (task_dir / "task.json").exists():
        build_task(task_dir, TaskConfig(seed=data.task_seed, chat_template=data.chat_template))
    dist.barrier()
    return str(task_dir / task_file), str(task_dir / "tokenizer")


def sft_source(recipe: RecipeConfig, dims: ParallelDims) -> SFTSource:
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
    dataset = SFTDataset.from_jsonl(train_file, tokenizer, SFTDataConfig(
        chat_template=data.chat_template, max_length=min(data.max_length, seq + 1),
        too_long=data.too_long, bad_rows=data.bad_rows,
    ))  # fmt: skip
    if dist.get_rank() == 0:
        print(f"SFT data {train_file}: {dataset.report.summary()}", flush=True)
    rows = PackedSFTDataset(dataset, seq_length=seq) if data.pack else dataset
    sampler = ShardedSampler(
        num_samples=len(rows), global_batch_size=dims.global_batch_size,
        dp_rank=ps.get_data_parallel_rank(), dp_size=dims.dp, seed=recipe.training.seed,
    )  # fmt: skip
    return SFTSource(
        rows=rows, sampler=sampler, dims=dims, seq_length=seq,
        forward_step=sft_forward_step(recipe.model.vocab_size, data.loss_reduction),
        tokenizer_ref={"path": str(Path(tok_path).resolve()), "chat_template": data.chat_template},
    )  # fmt: skip
