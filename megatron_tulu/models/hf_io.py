"""Reading Hugging Face Llama directories, loading them into megatron chunks, gathering back.

Tensors are read lazily, one at a time, from ``model.safetensors`` or the shards listed in
``model.safetensors.index.json``, so loading never holds a second full copy of the model.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch
from safetensors import safe_open

from megatron_tulu.config import ModelConfig
from megatron_tulu.models.hf_walk import (
    HFParam,
    gather_hf_tensors,
    iter_hf_params,
    load_hf_params,
)

SAFETENSORS_INDEX = "model.safetensors.index.json"
SAFETENSORS_SINGLE = "model.safetensors"


def _unsupported(path: Path, field: str, value: Any, supported: str) -> ValueError:
    return ValueError(
        f"{path}: field {field!r} = {value!r} is not supported (supported: {supported})"
    )


def _rope_block(raw: dict[str, Any]) -> tuple[float, dict[str, Any] | None]:
    """(theta, scaling dict or None) from transformers 5 ``rope_parameters`` or legacy fields."""
    params = raw.get("rope_parameters")
    if isinstance(params, dict):
        theta = params.get("rope_theta", raw.get("rope_theta", 10000.0))
        rope_type = params.get("rope_type", params.get("type", "default"))
        return float(theta), (None if rope_type == "default" else params)
    scaling = raw.get("rope_scaling")
    return float(raw.get("rope_theta", 10000.0)), scaling


def read_hf_config(hf_dir: str | Path) -> ModelConfig:
    """A ModelConfig from ``HF_DIR/config.json``; unsupported fields raise, naming the field."""
    hf_path = Path(hf_dir)
    if not hf_path.is_dir():
        raise FileNotFoundError(f"Hugging Face model directory {str(hf_path)!r} does not exist")
    cfg_path = hf_path / "config.json"
    if not cfg_path.is_file():
        raise FileNotFoundError(f"{cfg_path} not found: a Hugging Face model directory needs one")
    raw = json.loads(cfg_path.read_text())
    if raw.get("model_type") != "llama":
        raise _unsupported(cfg_path, "model_type", raw.get("model_type"), "'llama'")
    if raw.get("hidden_act", "silu") != "silu":
        raise _unsupported(cfg_path, "hidden_act", raw.get("hidden_act"), "'silu'")
    for field in ("attention_bias", "mlp_bias"):
        if raw.get(field, False):
            raise _unsupported(cfg_path, field, raw[field], "false")
    if raw.get("tie_word_embeddings", False):
        raise _unsupported(
            cfg_path, "tie_word_embeddings", True, "false (Llama 3.1 has untied embeddings)"
        )
    heads = raw["num_attention_heads"]
    head_dim = raw.get("head_dim")
    if head_dim is not None and head_dim * heads != raw["hidden_size"]:
        raise _unsupported(
            cfg_path,
            "head_dim",
            head_dim,
            f"hidden_size / num_attention_heads = {raw['hidden_size'] // heads}",
        )
    theta, scaling = _rope_block(raw)
    rope: dict[str, Any] = {"rope_theta": theta, "rope_scaling": scaling is not None}
    if scaling is not None:
        rope_type = scaling.get("rope_type", scaling.get("type"))
        if rope_type != "llama3":
            raise _unsupported(cfg_path, "rope_scaling.rope_type", rope_type, "'llama3' or none")
        rope.update(
            rope_scaling_factor=float(scaling["factor"]),
            rope_low_freq_factor=float(scaling["low_freq_factor"]),
            rope_high_freq_factor=float(scaling["high_freq_factor"]),
            rope_original_max_position_embeddings=int(scaling["original_max_position_embeddings"]),
        )
    return ModelConfig(
        name=hf_path.name,
        num_layers=raw["num_hidden_layers"],
        hidden_size=raw["hidden_size"],
        ffn_hidden_size=raw["intermediate_size"],
        num_attention_heads=heads,
        num_query_groups=raw.get("num_key_value_heads", heads),
        vocab_size=raw["vocab_size"],
        max_position_embeddings=raw.get("max_position_embeddings", 131072),
        norm_eps=float(raw.get("rms_norm_eps", 1e-5)),
        **rope,
    )


class HFTensorReader:
    """Lazy access to the tensors of an HF directory by name."""

    def __init__(self, hf_dir: str | Path) -> None:
        self.root = Path(hf_dir)
        index = self.root / SAFETENSORS_INDEX
        if index.is_file():
            self.files = {
                name: self.root / fname
                for name, fname in json.loads(index.read_text())["weight_map"].items()
            }
        elif (self.root / SAFETENSORS_SINGLE).is_file():
            single = self.root / SAFETENSORS_SINGLE
            try:
                with safe_open(single, framework="pt") as f:
                    self.files = {name: single for name in f.keys()}
            except Exception as exc:
                raise ValueError(f"{single}: not a readable safetensors file: {exc}") from exc
        else:
            raise FileNotFoundError(
                f"{self.root}: neither {SAFETENSORS_INDEX} nor {SAFETENSORS_SINGLE} found"
            )

    def get(self, name: str) -> torch.Tensor:
        path = self.files.get(name)
        if path is None:
            raise KeyError(f"{self.root}: tensor {name!r} is missing from the checkpoint")
        if not path.is_file():
            raise FileNotFoundError(f"{path} (listed for tensor {name!r}) does not exist")
        try:
            with safe_open(path, framework="pt") as f:
                return f.get_tensor(name)
        except Exception as exc:  # a truncated or corrupted file: name it
            raise ValueError(f"{path}: cannot read tensor {name!r}: {exc}") from exc


@torch.no_grad()
def load_hf_weights(
    chunks: list[torch.nn.Module], hf_dir: str | Path, *, model: ModelConfig, tp: int, tp_rank: int
) -> int:
    """Copies HF weights into this rank's chunks (any TP/PP/VPP layout); returns tensors set."""

    def shape_error(item: HFParam, shape: tuple[int, ...]) -> str:
        return (
            f"{item.name}: built shard shape {shape} != parameter shape "
            f"{tuple(item.param.shape)} (tp={tp}, rank {tp_rank})"
        )

    return load_hf_params(
        iter_hf_params(chunks),
        HFTensorReader(hf_dir).get,
        model=model,
        tp=tp,
        tp_rank=tp_rank,
        shape_error=shape_error,
    )


@torch.no_grad()
def gather_hf_state_dict(
    chunks: list[torch.nn.Module], *, model: ModelConfig
) -> dict[str, torch.Tensor]:
    """The full model in HF names, on every rank (small models: tests and tools only).

    All-gathers TP shards, then exchanges the per-stage dicts across the pipeline group.
    """
    import torch.distributed as dist
    from megatron.core import parallel_state as ps

    tp_group = ps.get_tensor_model_parallel_group()
    mine: dict[str, torch.Tensor] = {}
    for item in iter_hf_params(chunks):
        for hf_name, tensor in gather_hf_tensors(item, model=model, tp_group=tp_group) or []:
            mine[hf_name] = tensor.clone()
    pp = ps.get_pipeline_model_parallel_world_size()
    if pp == 1:
        return mine
    gathered: list[dict[str, torch.Tensor] | None] = [None] * pp
    dist.all_gather_object(gathered, mine, group=ps.get_pipeline_model_parallel_group())
    merged: dict[str, torch.Tensor] = {}
    for part in gathered:
        merged.update(part or {})
    return merged


def hf_config_dict(model: ModelConfig, *, dtype: str = "float32") -> dict[str, Any]:
    """The transformers ``config.json`` content for a ModelConfig (Llama architecture)."""
    rope: dict[str, Any] = {"rope_type": "default", "rope_theta": model.rope_theta}
    if model.rope_scaling:
        rope = {
            "rope_type": "llama3",
            "rope_theta": model.rope_theta,
            "factor": model.rope_scaling_factor,
            "low_freq_factor": model.rope_low_freq_factor,
            "high_freq_factor": model.rope_high_freq_factor,
            "original_max_position_embeddings": model.rope_original_max_position_embeddings,
        }
    return {
        "architectures": ["LlamaForCausalLM"],
        "model_type": "llama",
        "hidden_size": model.hidden_size,
        "intermediate_size": model.ffn_hidden_size,
        "num_hidden_layers": model.num_layers,
        "num_attention_heads": model.num_attention_heads,
        "num_key_value_heads": model.num_query_groups,
        "head_dim": model.head_dim,
        "vocab_size": model.vocab_size,
        "max_position_embeddings": model.max_position_embeddings,
        "rms_norm_eps": model.norm_eps,
        "rope_theta": model.rope_theta,
        "rope_parameters": rope,
        "rope_scaling": rope if model.rope_scaling else None,
        "hidden_act": "silu",
        "attention_bias": False,
        "mlp_bias": False,
        "tie_word_embeddings": model.tie_word_embeddings,
        "torch_dtype": dtype,
        "dtype": dtype,
        "bos_token_id": 0,
        "eos_token_id": 1,
    }


def write_hf_dir(
    out_dir: str | Path,
    model: ModelConfig,
    state_dict: dict[str, torch.Tensor],
    *,
    max_shard_bytes: int | None = None,
) -> Path:
    """Writes config.json and safetensors (sharded with an index when over max_shard_bytes)."""
    from safetensors.torch import save_file

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    dtypes = {t.dtype for t in state_dict.values()}
    dtype = "bfloat16" if dtypes == {torch.bfloat16} else "float32"
    (out / "config.json").write_text(json.dumps(hf_config_dict(model, dtype=dtype), indent=2))
    tensors = {k: v.detach().contiguous() for k, v in state_dict.items()}
    if max_shard_bytes is None:
        save_file(tensors, str(out / SAFETENSORS_SINGLE), metadata={"format": "pt"})
        return out
    shards: list[dict[str, torch.Tensor]] = [{}]
    size = 0
    for name, tensor in tensors.items():
        nbytes = tensor.numel() * tensor.element_size()
        if shards[-1] and size + nbytes > max_shard_bytes:
            shards.append({})
            size = 0
        shards[-1][name] = tensor
        size += nbytes
    weight_map = {}
    for i, shard in enumerate(shards):
        fname = f"model-{i + 1:05d}-of-{len(shards):05d}.safetensors"
        save_file(shard, str(out / fname), metadata={"format": "pt"})
        weight_map.update({name: fname for name in shard})
    total = sum(t.numel() * t.element_size() for t in tensors.values())
    index = {"metadata": {"total_size": total}, "weight_map": weight_map}
    (out / SAFETENSORS_INDEX).write_text(json.dumps(index, indent=2))
    return out
