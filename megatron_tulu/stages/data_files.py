"""Where a stage's data lives: the recipe's files, or the embedded task (built once, by rank 0)."""

from __future__ import annotations

from pathlib import Path

import torch.distributed as dist

from megatron_tulu.config import RecipeConfig
from megatron_tulu.data.build_task import TaskConfig, build_task


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
