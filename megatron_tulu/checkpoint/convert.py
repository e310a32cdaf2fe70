"""Streaming conversion between Hugging Face Llama directories and native checkpoints.

Both directions hold one layer at a time (plus, when writing HF, at most one output shard of
``max_shard_bytes``), so a 405B conversion fits on an ordinary node. Output is written into a
temporary directory and renamed into place only when complete: a failed conversion leaves
nothing that looks like a valid checkpoint. The tensor layouts come from
:mod:`megatron_tulu.models.hf_mapping` (the one mapping table), the parameters and their order
from :mod:`megatron_tulu.models.hf_walk`'s whole-model walk (:func:`iter_model_mappings`,
:func:`layer_mappings`). The chunk walk (``iter_hf_params``) and its TP load/gather helpers do
not apply here: a native checkpoint holds each parameter as one whole tensor under its checkpoint
key (layers stacked), not as live TP-sharded chunks, so conversion maps whole tensors
(``hf_to_local`` with ``tp=1``, ``local_to_hf`` of one shard) and reads/writes one layer slice
at a time.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import time
import uuid
from collections.abc import Iterator
from functools import partial
from pathlib import Path
from typing import Any

import torch

from megatron_tulu.checkpoint.layout import (
    META,
    MODEL_OPTIM,
    resolve_step_dir,
    step_dir_name,
    write_latest,
)
from megatron_tulu.config import ModelConfig, ParallelConfig
from megatron_tulu.models.hf_io import (
    SAFETENSORS_INDEX,
    HFTensorReader,
    hf_config_dict,
    read_hf_config,
)
from megatron_tulu.models.hf_mapping import (
    GLOBAL_PARAM_NAMES,
    ParamMapping,
    hf_to_local,
    local_to_hf,
    map_param,
)
from megatron_tulu.models.hf_walk import iter_model_mappings, layer_mappings

TOKENIZER_FILES = (
    "tokenizer.json",
    "tokenizer_config.json",
    "special_tokens_map.json",
    "tokenizer.model",
    "chat_template.jinja",
)
TOKENIZER_DIR = "tokenizer"
DTYPES = {"bf16": torch.bfloat16, "fp32": torch.float32, None: None}
EMBEDDING = GLOBAL_PARAM_NAMES[0]


@contextlib.contextmanager
def _staged_output(final: Path, kind: str) -> Iterator[Path]:
    """Yields a fresh temporary directory beside ``final``; renames it to ``final`` when the
    block succeeds and deletes it when the block fails, so a failed conversion leaves nothing
    that looks like a valid output."""
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = final.parent / f".tmp-{kind}-{final.name}-{uuid.uuid4().hex[:8]}"
    tmp.mkdir()
    try:
        yield tmp
        if final.exists():  # only reached with overwrite=True (checked before)
            shutil.rmtree(final)
        os.replace(tmp, final)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def _refuse_existing(path: Path, overwrite: bool, what: str) -> None:
    if not path.exists() or not any(path.iterdir()):
        return
    if not overwrite:
        raise FileExistsError(
            f"output directory {str(path)!r} already holds {what}; pass --overwrite to replace it"
        )


def _hf_to_full(
    reader: HFTensorReader, model: ModelConfig, mapping: ParamMapping, *, tp: int, dtype
) -> torch.Tensor:
    """The whole (unsplit) megatron tensor of ``mapping`` for a TP-``tp`` layout: the TP-1
    tensor, with a vocabulary padded for ``tp``."""
    tensors = [reader.get(n) for n in mapping.hf_names]
    padded = model.padded_vocab_size(tp)
    full = hf_to_local(mapping, tensors, model=model, tp=1, tp_rank=0, padded_vocab_size=padded)
    return full if dtype is None else full.to(dtype)


def hf_to_native(
    hf_dir: str | Path,
    out_root: str | Path,
    *,
    tp: int = 1,
    pp: int = 1,
    vpp: int | None = None,
    dtype: str | None = None,
    overwrite: bool = False,
) -> Path:
    """HF Llama directory -> native checkpoint root (step 0, weights only) for a TP/PP layout.

    The layout fixes the padded vocabulary (a multiple of ``make_vocab_size_divisible_by * tp``);
    the weights then load into any layout with the same padding.
    """
    from megatron_tulu.checkpoint.stream_writer import StreamingCheckpointWriter

    model = read_hf_config(hf_dir)
    ParallelConfig(tp=tp, pp=pp, vpp=vpp).check_model(model)
    root = Path(out_root)
    _refuse_existing(root, overwrite, "files (a checkpoint?)")
    reader = HFTensorReader(hf_dir)
    cast = DTYPES[dtype]
    with _staged_output(root, "convert") as tmp_root:
        step_dir = tmp_root / step_dir_name(0)
        writer = StreamingCheckpointWriter(step_dir / MODEL_OPTIM, num_layers=model.num_layers)
        to_full = partial(_hf_to_full, reader, model, tp=tp, dtype=cast)
        for layer in range(model.num_layers):
            writer.write_layer(layer, {m.checkpoint_key: to_full(m) for m in layer_mappings(layer)})
        for name in GLOBAL_PARAM_NAMES:  # one piece each: at most one big tensor held
            mapping = map_param(name)
            writer.write_global({mapping.checkpoint_key: to_full(mapping)})
        writer.finalize()
        tok_files = [f for f in TOKENIZER_FILES if (Path(hf_dir) / f).is_file()]
        if tok_files:
            (tmp_root / TOKENIZER_DIR).mkdir()
            for f in tok_files:
                shutil.copy2(Path(hf_dir) / f, tmp_root / TOKENIZER_DIR / f)
        for extra in ("generation_config.json",):
            if (Path(hf_dir) / extra).is_file():
                shutil.copy2(Path(hf_dir) / extra, tmp_root / extra)
        meta = {
            "format_version": 1,
            "step": 0,
            "consumed_samples": 0,
            "weights_only": True,
            "layout": {
                "tp": tp,
                "pp": pp,
                "vpp": vpp,
                "dp": None,
                "world_size": None,
                "padded_vocab_size": model.padded_vocab_size(tp),
                "distributed_optimizer": None,
            },
            "model": model.__dict__,
            "tokenizer": {"dir": TOKENIZER_DIR} if tok_files else None,
            "source": {"hf_dir": str(Path(hf_dir).resolve())},
            "saved_at": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        }
        (step_dir / META).write_text(json.dumps(meta, indent=2, default=str))
        write_latest(tmp_root, 0)
    return root


class _SliceRequest:
    """Asks PyTorch DCP for one slice of a saved global tensor (the DTensor-style protocol):
    a chunk at ``offsets`` of ``buffer.shape``, read straight into ``buffer``."""

    def __init__(self, buffer: torch.Tensor, offsets: tuple[int, ...]) -> None:
        from torch.distributed.checkpoint.metadata import ChunkStorageMetadata

        self.buffer = buffer
        self._chunk = ChunkStorageMetadata(offsets=torch.Size(offsets), sizes=buffer.shape)

    def __create_chunk_list__(self):
        return [self._chunk]

    def __get_tensor_shard__(self, index):
        return self.buffer


def _slice_planner():
    from torch.distributed.checkpoint.default_planner import DefaultLoadPlanner

    class _SliceLoadPlanner(DefaultLoadPlanner):
        """DefaultLoadPlanner minus its state-dict normalisation, which drops objects that are
        not tensors (our :class:`_SliceRequest`)."""

        def set_up_planner(self, state_dict, metadata=None, is_coordinator=False):
            self.original_state_dict = state_dict
            self.state_dict = state_dict
            self.metadata = metadata
            self.is_coordinator = is_coordinator

        def lookup_tensor(self, index):
            return self.state_dict[index.fqn].buffer

    return _SliceLoadPlanner(flatten_state_dict=False, flatten_sharded_tensors=False)


def _load_piece(
    ckpt_dir: Path, key: str, shape: tuple[int, ...], dtype: torch.dtype, layer: int | None
) -> torch.Tensor:
    """Global tensor ``key`` (layer is None) or its layer ``layer`` slice, nothing more."""
    import torch.distributed.checkpoint as dcp

    if layer is None:
        buffer = torch.empty(shape, dtype=dtype)
        request = _SliceRequest(buffer, (0,) * len(shape))
    else:
        buffer = torch.empty((1, *shape), dtype=dtype)
        request = _SliceRequest(buffer, (layer,) + (0,) * len(shape))
    dcp.load(
        {key: request},
        storage_reader=dcp.FileSystemReader(str(ckpt_dir)),
        planner=_slice_planner(),
        no_dist=True,
    )
    return buffer if layer is None else buffer[0]


def native_to_hf(
    native_root: str | Path,
    out_dir: str | Path,
    *,
    step: int | str | None = "latest",
    dtype: str | None = None,
    overwrite: bool = False,
    max_shard_bytes: int = 2 * 1024**3,
) -> Path:
    """Native checkpoint (any layout, training or converted) -> HF Llama directory."""
    from safetensors.torch import save_file
    from torch.distributed.checkpoint import FileSystemReader
    from torch.distributed.checkpoint.metadata import TensorStorageMetadata

    step_dir = resolve_step_dir(native_root, step)
    meta = json.loads((step_dir / META).read_text())
    model = ModelConfig(**meta["model"])
    padded = int(meta["layout"]["padded_vocab_size"])
    out = Path(out_dir)
    _refuse_existing(out, overwrite, "files")
    cast = DTYPES[dtype]
    ckpt = step_dir / MODEL_OPTIM
    with _staged_output(out, "export") as tmp:
        saved = FileSystemReader(str(ckpt)).read_metadata().state_dict_metadata
        files: list[tuple[str, list[str]]] = []
        pending: dict[str, torch.Tensor] = {}
        pending_bytes = 0

        def flush() -> None:
            nonlocal pending, pending_bytes
            if pending:
                name = f"part-{len(files):05d}.safetensors"
                save_file(pending, str(tmp / name), metadata={"format": "pt"})
                files.append((name, list(pending)))
                pending, pending_bytes = {}, 0

        def add(hf_tensors: dict[str, torch.Tensor]) -> None:
            nonlocal pending_bytes
            for name, t in hf_tensors.items():
                t = (t if cast is None else t.to(cast)).contiguous()
                pending[name] = t
                pending_bytes += t.numel() * t.element_size()
            if pending_bytes >= max_shard_bytes:
                flush()

        def piece(key: str, layer: int | None) -> torch.Tensor:
            info = saved.get(key)
            if not isinstance(info, TensorStorageMetadata):
                raise KeyError(f"{ckpt}: checkpoint has no tensor {key!r}")
            shape = tuple(info.size)[1:] if layer is not None else tuple(info.size)
            return _load_piece(ckpt, key, shape, info.properties.dtype, layer)

        for mapping in iter_model_mappings(model.num_layers):
            full = piece(mapping.checkpoint_key, mapping.layer)
            if mapping.megatron_name == EMBEDDING and full.shape[0] != padded:
                raise ValueError(
                    f"{ckpt}: {EMBEDDING} has {full.shape[0]} rows, meta.json "
                    f"says the padded vocabulary is {padded}"
                )
            add(dict(zip(mapping.hf_names, local_to_hf(mapping, [full], model=model), strict=True)))
        flush()
        _write_hf_metadata(tmp, files, model, meta, step_dir)
    return out


def _write_hf_metadata(
    tmp: Path,
    files: list[tuple[str, list[str]]],
    model: ModelConfig,
    meta: dict[str, Any],
    step_dir: Path,
) -> None:
    n = len(files)
    weight_map: dict[str, str] = {}
    total = 0
    for i, (old, names) in enumerate(files):
        new = f"model-{i + 1:05d}-of-{n:05d}.safetensors"
        os.replace(tmp / old, tmp / new)
        weight_map.update({name: new for name in names})
        total += (tmp / new).stat().st_size
    (tmp / SAFETENSORS_INDEX).write_text(
        json.dumps({"metadata": {"total_size": total}, "weight_map": weight_map}, indent=2)
    )
    dtypes = set()
    from safetensors import safe_open

    with safe_open(tmp / weight_map["model.norm.weight"], framework="pt") as f:
        dtypes.add(f.get_tensor("model.norm.weight").dtype)
    dtype = "bfloat16" if dtypes == {torch.bfloat16} else "float32"
    (tmp / "config.json").write_text(json.dumps(hf_config_dict(model, dtype=dtype), indent=2))
    root = step_dir.parent
    gen = root / "generation_config.json"
    if gen.is_file():
        shutil.copy2(gen, tmp / "generation_config.json")
    else:
        cfg = hf_config_dict(model)
        (tmp / "generation_config.json").write_text(
            json.dumps(
                {"bos_token_id": cfg["bos_token_id"], "eos_token_id": cfg["eos_token_id"]}, indent=2
            )
        )
    tok = meta.get("tokenizer") or {}
    tok_dir = root / tok["dir"] if isinstance(tok, dict) and tok.get("dir") else None
    if tok_dir is not None and tok_dir.is_dir():
        for f in tok_dir.iterdir():
            shutil.copy2(f, tmp / f.name)
    elif isinstance(tok, dict) and tok.get("path"):
        _export_training_tokenizer(tmp, tok)


def _export_training_tokenizer(out: Path, tok: dict[str, Any]) -> None:
    """A training checkpoint records the tokenizer it trained with (``path``) and the chat
    template (``chat_template``): the export carries the tokenizer files and the template, as
    ``chat_template.jinja`` and in ``tokenizer_config.json``, so HF's ``apply_chat_template``
    renders exactly the training format."""
    from megatron_tulu.data.chat_templates import jinja_template

    src = Path(tok["path"])
    files = [src] if src.is_file() else [src / n for n in TOKENIZER_FILES]
    found = [f for f in files if f.is_file()]
    if not found:
        raise FileNotFoundError(
            f"the checkpoint's tokenizer {src} (recorded at training time) is gone: restore it "
            "or export without it"
        )
    for f in found:
        shutil.copy2(f, out / f.name)
    name = tok.get("chat_template")
    if not name:
        return
    template = jinja_template(str(name))
    (out / "chat_template.jinja").write_text(template)
    cfg_path = out / "tokenizer_config.json"
    cfg = json.loads(cfg_path.read_text()) if cfg_path.is_file() else {}
    cfg["chat_template"] = template
    cfg_path.write_text(json.dumps(cfg, indent=2))
