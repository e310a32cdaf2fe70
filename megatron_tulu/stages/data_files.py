"""Where a stage's data lives: the recipe's files, or the embedded task (built once, by rank 0)."""

from __future__ import annotations

from pathlib import Path

import torch.distributed as dist
from megatron.core import parallel_state as ps

from megatron_tulu.config import ParallelDims, RecipeConfig
from megatron_tulu.data.build_task import TaskConfig, build_task
from megatron_tulu.data.rows import DataReport
from megatron_tulu.data.sampler import ShardedSampler


def task_files(recipe: RecipeConfig, task_file: str = "sft_train.jsonl") -> tuple[str, str]:
    """(train file, tokenizer path): the recipe's, or the embedded task's ``task_file``."""
    data = recipe.data
    if data.train_file is not None:
        return data.train_file, str(data.tokenizer)
    task_dir = Path(data.task_dir or Path(recipe.training.output_dir) / "task")
    if dist.get_rank() == 0 and not (task_dir / "task.json").exists():
        build_task(task_dir, TaskConfig(seed=data.task_seed, chat_template=data.chat_template))
    dist.barrier()
    return str(task_dir / task_file), str(task_dir / "tokenizer")


def tokenizer_ref(tok_path: str, chat_template: str) -> dict[str, str]:
    """What checkpoints record of the tokenizer (exports ship it with the template)."""
    return {"path": str(Path(tok_path).resolve()), "chat_template": chat_template}


def data_options(recipe: RecipeConfig) -> dict[str, object]:
    """The dataset settings every chat-data stage shares (rows at most seq_length + 1 tokens)."""
    data = recipe.data
    return {
        "chat_template": data.chat_template,
        "max_length": min(data.max_length, recipe.training.seq_length + 1),
        "too_long": data.too_long, "bad_rows": data.bad_rows,
    }  # fmt: skip


def stage_sampler(
    recipe: RecipeConfig, dims: ParallelDims, *, what: str, path: str, report: DataReport,
    num_samples: int, global_batch_size: int,
) -> ShardedSampler:  # fmt: skip
    """Rank 0 reports what was read from ``path``; every rank gets its DP share of the seeded
    stream of ``num_samples`` samples."""
    if dist.get_rank() == 0:
        print(f"{what} data {path}: {report.summary()}", flush=True)
    return ShardedSampler(
        num_samples=num_samples, global_batch_size=global_batch_size,
        dp_rank=ps.get_data_parallel_rank(), dp_size=dims.dp, seed=recipe.training.seed,
    )  # fmt: skip
