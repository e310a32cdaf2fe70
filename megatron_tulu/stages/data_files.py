"""Where a stage's data lives and how every rank gets it tokenised.

The data is the recipe's ``data.sources`` (a mixture, shuffled by ``training.seed``), its
``data.train_file`` (one source, file order), or the embedded task (built once, by rank 0).
:func:`tokenised_table` reads, mixes and tokenises it into the tokenised-data cache
(:mod:`megatron_tulu.data.token_cache`): global rank 0 computes the key and every node's local
rank 0 builds (several worker processes) or verifies the cache, the others wait and load it.
Rank 0 records the mixture (sources, rows taken, which row of which source sits where) in
``{training.output_dir}/data_mixture.json``.
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path
from typing import Any

import torch.distributed as dist
from megatron.core import parallel_state as ps

from megatron_tulu.config import ParallelDims, RecipeConfig
from megatron_tulu.data.build_task import TaskConfig, build_task
from megatron_tulu.data.rows import DataReport
from megatron_tulu.data.sampler import ShardedSampler
from megatron_tulu.data.sources import SourceSpec
from megatron_tulu.data.token_cache import TokenCache, load_or_build
from megatron_tulu.data.tokenised import (
    TokeniseSettings,
    build_table,
    data_key,
    preference_dataset,
    sft_dataset,
)
from megatron_tulu.data.tokenizers import Tokenizer


def task_files(recipe: RecipeConfig, task_file: str = "sft_train.jsonl") -> tuple[str, str]:
    """(train file, tokenizer path): the recipe's, or the embedded task's ``task_file``; with
    ``data.sources``, a label naming the mixture instead of a file."""
    data = recipe.data
    if data.sources:
        names = ", ".join(s.name or s.path for s in data.sources)
        return f"mixture of {len(data.sources)} source(s) [{names}]", str(data.tokenizer)
    if data.train_file is not None:
        return data.train_file, str(data.tokenizer)
    task_dir = Path(data.task_dir or Path(recipe.training.output_dir) / "task")
    if dist.get_rank() == 0 and not (task_dir / "task.json").exists():
        build_task(task_dir, TaskConfig(seed=data.task_seed, chat_template=data.chat_template))
    dist.barrier()
    return str(task_dir / task_file), str(task_dir / "tokenizer")


def source_specs(recipe: RecipeConfig, train_file: str) -> tuple[list[SourceSpec], bool]:
    """(sources, shuffle): the recipe's mixture (shuffled), or ``train_file`` alone (in order)."""
    if not recipe.data.sources:
        return [SourceSpec(path=train_file)], False
    specs = [
        SourceSpec(
            path=s.path,
            split=s.split,
            weight=s.weight,
            num_rows=s.num_rows,
            columns=tuple(sorted(s.columns.items())),
            name=s.name or "",
        )
        for s in recipe.data.sources
    ]
    return specs, True


def tokenise_settings(recipe: RecipeConfig, kind: str, tok_path: str) -> TokeniseSettings:
    options = data_options(recipe)
    return TokeniseSettings(
        kind=kind, tokenizer_path=tok_path, chat_template=recipe.data.chat_template,
        max_length=int(options["max_length"]), too_long=str(options["too_long"]),
    )  # fmt: skip


def tokenised_table(
    recipe: RecipeConfig, kind: str, tok_path: str, train_file: str
) -> tuple[Any, dict[str, Any], str]:
    """(table, meta, key) of the stage's data, through the cache unless ``data.cache`` is off."""
    data, seed = recipe.data, recipe.training.seed
    specs, shuffle = source_specs(recipe, train_file)
    settings = tokenise_settings(recipe, kind, tok_path)
    # Rank 0 alone fingerprints the sources (a hub source loads) and tells the others the key.
    key = data_key(specs, settings, seed=seed, shuffle=shuffle) if dist.get_rank() == 0 else ""
    key = _broadcast_key(key)

    def build() -> tuple[Any, dict[str, Any]]:
        table, plan, workers = build_table(
            specs, settings, seed=seed, shuffle=shuffle, num_proc=data.num_proc
        )
        return table, {"kind": kind, "mixture": plan.record(), "num_proc": workers}

    start = time.perf_counter()
    if not data.cache:
        table, meta = build()
        return table, {**meta, "cache": None}, key
    cache = TokenCache(data.cache_dir or Path(recipe.training.output_dir) / "data_cache", kind, key)
    table, meta, built = load_or_build(
        cache, build, builder=int(os.environ.get("LOCAL_RANK", dist.get_rank())) == 0,
        wait=dist.barrier,
    )  # fmt: skip
    if dist.get_rank() == 0:
        how = f"built with {meta['num_proc']} worker process(es)" if built else "reused"
        took = time.perf_counter() - start
        print(f"tokenised {kind} data in {cache.path}: {how} ({took:.1f}s)", flush=True)
    return table, {**meta, "cache": str(cache.path)}, key


def _broadcast_key(key: str) -> str:
    keys = [key]
    dist.broadcast_object_list(keys, src=0)
    return str(keys[0])


def record_mixture(recipe: RecipeConfig, meta: dict[str, Any], report: DataReport) -> None:
    """Rank 0 writes what the stage trains on to ``{output_dir}/data_mixture.json``."""
    if dist.get_rank() != 0:
        return
    out = Path(recipe.training.output_dir)
    out.mkdir(parents=True, exist_ok=True)
    record = {"cache": meta.get("cache"), "mixture": meta["mixture"], "report": report.to_dict()}
    tmp = out / f".data_mixture.json.{os.getpid()}"
    tmp.write_text(json.dumps(record), encoding="utf-8")
    os.replace(tmp, out / "data_mixture.json")


def chat_dataset(
    recipe: RecipeConfig, kind: str, tokenizer: Tokenizer, tok_path: str, train_file: str
) -> Any:
    """The stage's SFTDataset (``kind="sft"``) or PreferenceDataset (``"preference"``), with
    ``fingerprint`` (the data key, for caches derived from the data) set. Its examples stay in
    the (memory-mapped) tokenised table, decoded when batched."""
    table, meta, key = tokenised_table(recipe, kind, tok_path, train_file)
    make = {"sft": sft_dataset, "preference": preference_dataset}[kind]
    dataset = make(table, pad_id=tokenizer.pad_id, bad_rows=recipe.data.bad_rows)
    dataset.fingerprint = key
    record_mixture(recipe, meta, dataset.report)
    return dataset


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
