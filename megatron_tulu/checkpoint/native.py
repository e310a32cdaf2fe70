"""Save and resume training state with megatron-core dist_checkpointing, atomically.

What a checkpoint holds: model weights (sharded, layout-independent keys), the optimizer state
(distributed optimizer in megatron's ``dp_reshardable`` form, or the plain optimizer's), the LR
scheduler, the step and consumed samples (the data-loader position: our datasets are addressed
by position), every rank's RNG states, the resolved recipe and the tokenizer reference.

Which layout changes a resume allows (checked before anything is read, with this message):
- model weights: any TP / PP / virtual-PP / DP layout, as long as the padded vocabulary size is
  the same (it depends on TP: ``make_vocab_size_divisible_by * tp``);
- optimizer state: same TP and PP (and virtual PP), any DP size for the distributed optimizer,
  same DP size for the plain optimizer; otherwise resume with ``load_optimizer=False`` (weights
  only: a fresh optimizer, counted from the saved step);
- RNG states: restored only on the identical layout (each rank's own file); otherwise re-seeded.
"""

from __future__ import annotations

import json
import os
import random
import shutil
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
from megatron.core import dist_checkpointing
from megatron.core.tensor_parallel import get_cuda_rng_tracker

from megatron_tulu.checkpoint.layout import (
    META,
    MODEL_OPTIM,
    RNG_DIR,
    apply_retention,
    resolve_step_dir,
    step_dir_name,
    write_latest,
)
from megatron_tulu.engine.adam import apply_adam_impl
from megatron_tulu.engine.build import Engine

FORMAT_VERSION = 1
# Crash-test hook: called with a phase name at each stage of a save ("written" after every rank
# wrote its shards, "meta" after meta.json, "committed" after the rename). Tests set it to
# os._exit to simulate a job killed mid-save. Never set in production code.
FAULT_HOOK: Callable[[str], None] | None = None
OPTIM_SHARDING = {"distrib_optim_sharding_type": "dp_reshardable"}


@dataclass(frozen=True, kw_only=True)
class ResumeState:
    step: int
    consumed_samples: int
    meta: dict[str, Any]
    path: Path
    optimizer_loaded: bool
    rng_restored: bool


def _layout(engine: Engine) -> dict[str, Any]:
    d = engine.dims
    return {
        "tp": d.tp,
        "pp": d.pp,
        "vpp": d.vpp,
        "dp": d.dp,
        "world_size": d.world_size,
        "padded_vocab_size": engine.model.padded_vocab_size(d.tp),
        # A frozen model (no DDP wrapper, no optimizer) reports False.
        "distributed_optimizer": bool(
            getattr(getattr(engine.chunks[0], "ddp_config", None), "use_distributed_optimizer", 0)
        ),
    }


def _model_sharded_state(chunk: torch.nn.Module, pg: Any) -> dict[str, Any]:
    """The chunk's sharded state without ``_extra_state`` entries: those carry Transformer
    Engine's FP8 scaling metadata (empty for the local spec and for bf16/fp32 training), and
    leaving them out keeps checkpoints identical across specs and conversions. Replicas are told
    apart by the model's own data-parallel group (``pg``: the global groups, or a model's own)."""
    state = chunk.sharded_state_dict(metadata={"dp_cp_group": pg.dp_cp})
    return {k: v for k, v in state.items() if not k.endswith("._extra_state")}


def _sharded_state(engine: Engine, *, with_optimizer: bool, is_loading: bool) -> dict:
    chunks = engine.raw_chunks()
    model: dict[str, Any] = {}
    pg = engine.pg
    if len(chunks) == 1:
        model["model"] = _model_sharded_state(chunks[0], pg)
    else:
        for i, chunk in enumerate(chunks):
            model[f"model{i}"] = _model_sharded_state(chunk, pg)
    state = dict(model)
    if with_optimizer:
        state["optimizer"] = engine.optimizer.sharded_state_dict(
            model, is_loading=is_loading, metadata=OPTIM_SHARDING
        )
    return state


def _ensure_optimizer_state(optimizer: Any) -> None:
    """A fresh torch Adam has no per-parameter state (no ``step``), and megatron's distributed
    optimizer cannot build its loading state dict without it (it reads one shared ``step``). The
    distributed optimizer's own dummy initialisation (a zero-gradient step) creates the state;
    the load then overwrites weights and state in place."""
    from megatron.core.optimizer.distrib_optimizer import DistributedOptimizer

    for opt in getattr(optimizer, "chained_optimizers", [optimizer]):
        if isinstance(opt, DistributedOptimizer) and len(opt.optimizer.state) == 0:
            opt._init_optimizer_states_with_dummy_values()


def _saved_adam_steps(state: Any) -> set[float]:
    """All ``step`` values in the ``param_groups`` of a (nested) loaded optimizer state dict."""
    found: set[float] = set()
    if isinstance(state, dict):
        for key, value in state.items():
            if key == "param_groups" and isinstance(value, list):
                found |= {float(g["step"]) for g in value if isinstance(g, dict) and "step" in g}
            else:
                found |= _saved_adam_steps(value)
    elif isinstance(state, list | tuple):
        for value in state:
            found |= _saved_adam_steps(value)
    return found


def _restore_adam_steps(optimizer: Any, loaded_optimizer_state: Any) -> None:
    """megatron-core 0.16.1's DistributedOptimizer.load_state_dict (torch-optimizer path) puts
    ONE shared ``step`` tensor into the Adam state of its parameters, and misses parameters of
    the second (no-weight-decay) group, which keep the dummy initialisation's step. torch's
    foreach AdamW increments a shared tensor once per parameter, so bias correction goes wrong
    from the first step after a resume. Give every parameter its own tensor holding the saved
    step."""
    steps = _saved_adam_steps(loaded_optimizer_state)
    if not steps:
        return
    if len(steps) != 1:
        raise ValueError(f"optimizer state holds several Adam steps {sorted(steps)}; expected one")
    step = steps.pop()
    for opt in getattr(optimizer, "chained_optimizers", [optimizer]):
        inner = getattr(opt, "optimizer", None)
        for state in getattr(inner, "state", {}).values():
            if "step" in state:
                state["step"] = torch.tensor(step, dtype=torch.float32)


def _rng_state() -> dict[str, Any]:
    state: dict[str, Any] = {
        "python": random.getstate(),
        "torch": torch.get_rng_state(),
        "tracker": get_cuda_rng_tracker().get_states(),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state()
    return state


def _set_rng_state(state: dict[str, Any]) -> None:
    random.setstate(state["python"])
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state(state["cuda"])
    get_cuda_rng_tracker().set_states(state["tracker"])


def save_checkpoint(
    engine: Engine,
    root: str | Path,
    *,
    step: int,
    consumed_samples: int,
    recipe: dict[str, Any] | None = None,
    tokenizer: dict[str, Any] | None = None,
    keep_last: int | None = None,
    extra: dict[str, Any] | None = None,
) -> Path:
    """Collective: every rank calls it. Returns the committed step directory."""
    base = Path(root)
    rank = dist.get_rank()
    tmp_holder: list[str | None] = [None]
    if rank == 0:
        base.mkdir(parents=True, exist_ok=True)
        apply_retention(base, None)  # clears .tmp-* left by a killed save
        tmp = base / f".tmp-{step_dir_name(step)}-{uuid.uuid4().hex[:8]}"
        (tmp / MODEL_OPTIM).mkdir(parents=True)
        (tmp / RNG_DIR).mkdir()
        tmp_holder[0] = str(tmp)
    dist.broadcast_object_list(tmp_holder, src=0)
    tmp = Path(tmp_holder[0])
    state = _sharded_state(engine, with_optimizer=True, is_loading=False)
    dist_checkpointing.save(state, str(tmp / MODEL_OPTIM))
    torch.save(_rng_state(), tmp / RNG_DIR / f"rank_{rank:05d}.pt")
    dist.barrier()
    _fault("written")
    final = base / step_dir_name(step)
    if rank == 0:
        import megatron.core

        meta = {
            "format_version": FORMAT_VERSION,
            "step": step,
            "consumed_samples": consumed_samples,
            "scheduler": engine.scheduler.state_dict(),
            "layout": _layout(engine),
            "model": engine.model.__dict__,
            "recipe": recipe,
            "tokenizer": tokenizer,
            "extra": extra or {},
            "versions": {"megatron_core": megatron.core.__version__, "torch": torch.__version__},
            "saved_at": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        }
        meta_tmp = tmp / (META + ".tmp")
        meta_tmp.write_text(json.dumps(meta, indent=2, default=str))
        os.replace(meta_tmp, tmp / META)
        _fault("meta")
        replaced = None
        if final.exists():  # re-saving a step (training restarted from an earlier one)
            replaced = base / f".tmp-replaced-{final.name}-{uuid.uuid4().hex[:8]}"
            os.replace(final, replaced)
        os.replace(tmp, final)
        _fault("committed")
        write_latest(base, step)
        if replaced is not None:
            shutil.rmtree(replaced, ignore_errors=True)
        apply_retention(base, keep_last)
    dist.barrier()
    return final


def _fault(phase: str) -> None:
    if FAULT_HOOK is not None:
        FAULT_HOOK(phase)


def _check_layout(saved: dict[str, Any], now: dict[str, Any], load_optimizer: bool, path: Path):
    if saved["padded_vocab_size"] != now["padded_vocab_size"]:
        raise ValueError(
            f"{path}: saved with padded vocabulary {saved['padded_vocab_size']} (tp "
            f"{saved['tp']}), this layout pads to {now['padded_vocab_size']} (tp {now['tp']}); "
            "weights load into any TP/PP/VPP/DP layout with the same padded vocabulary size"
        )
    if not load_optimizer:
        return
    same_mp = all(saved[k] == now[k] for k in ("tp", "pp", "vpp"))
    dp_ok = saved["dp"] == now["dp"] or (
        saved["distributed_optimizer"] and now["distributed_optimizer"]
    )
    same_kind = saved["distributed_optimizer"] == now["distributed_optimizer"]
    if not (same_mp and dp_ok and same_kind):
        raise ValueError(
            f"{path}: optimizer state was saved at tp={saved['tp']} pp={saved['pp']} "
            f"vpp={saved['vpp']} dp={saved['dp']} (distributed optimizer: "
            f"{saved['distributed_optimizer']}); this run is tp={now['tp']} pp={now['pp']} "
            f"vpp={now['vpp']} dp={now['dp']} (distributed optimizer: "
            f"{now['distributed_optimizer']}). Optimizer state reshards only across the "
            "data-parallel size, with the distributed optimizer on both sides; for other "
            "layout changes resume with load_optimizer=false (weights only)"
        )


def load_checkpoint(
    engine: Engine,
    root: str | Path,
    *,
    step: int | str | None = "latest",
    load_optimizer: bool = True,
    weights_only: bool = False,
) -> ResumeState:
    """Collective: restores model (+ optimizer, scheduler, RNG) in place; returns positions.

    ``weights_only`` loads the model weights and nothing else (initialising a new run from a
    checkpoint); ``load_optimizer=False`` resumes weights, position and LR schedule with a
    fresh optimizer.
    """
    path = resolve_step_dir(root, step)
    meta = json.loads((path / META).read_text())
    if meta.get("format_version") != FORMAT_VERSION:
        raise ValueError(
            f"{path / META}: format_version {meta.get('format_version')!r} is not {FORMAT_VERSION}"
        )
    now = _layout(engine)
    weights_only = weights_only or bool(meta.get("weights_only"))
    if weights_only:  # a converted checkpoint, or initialising from one: weights only
        load_optimizer = False
    _check_layout(meta["layout"], now, load_optimizer, path)
    if load_optimizer:
        _ensure_optimizer_state(engine.optimizer)
    state = _sharded_state(engine, with_optimizer=load_optimizer, is_loading=True)
    loaded = dist_checkpointing.load(state, str(path / MODEL_OPTIM))
    chunks = engine.raw_chunks()
    for i, chunk in enumerate(chunks):
        missing, unexpected = chunk.load_state_dict(
            loaded["model" if len(chunks) == 1 else f"model{i}"], strict=False
        )
        missing = [k for k in missing if not k.endswith("._extra_state")]
        if missing or unexpected:
            raise ValueError(
                f"{path}: checkpoint does not match the model: missing "
                f"{missing}, unexpected {unexpected}"
            )
    if load_optimizer:
        with torch.no_grad():  # fp32 main params are views of the (grad-requiring) weights
            engine.optimizer.load_state_dict(loaded["optimizer"])
        _restore_adam_steps(engine.optimizer, loaded["optimizer"])
        # the saved param groups bring back the saving run's kernel flags; this run's choice
        # holds, with each step where its kernel keeps it (engine/adam.py)
        apply_adam_impl(engine.optimizer, engine.adam_impl)
        engine.scheduler.load_state_dict(meta["scheduler"])
    elif meta["step"] and not weights_only:
        engine.scheduler.step(increment=meta["step"])  # continue the schedule from the step
    same_layout = all(meta["layout"][k] == now[k] for k in ("tp", "pp", "vpp", "dp"))
    rng_file = path / RNG_DIR / f"rank_{dist.get_rank():05d}.pt"
    rng_restored = same_layout and rng_file.is_file() and not weights_only
    if rng_restored:
        _set_rng_state(torch.load(rng_file, weights_only=False))
    return ResumeState(
        step=meta["step"],
        consumed_samples=meta["consumed_samples"],
        meta=meta,
        path=path,
        optimizer_loaded=load_optimizer,
        rng_restored=rng_restored,
    )
