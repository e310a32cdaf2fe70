"""HF <-> native conversion: bit-exact round trips, layout changes, bf16, bad input.

The tiny model has GQA (4 heads, 2 KV groups), llama3 RoPE scaling and a 1000-token vocabulary
that TP padding extends to 1024 rows.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

from megatron_tulu.checkpoint.convert import hf_to_native, native_to_hf
from megatron_tulu.config import OptimizerConfig, ParallelConfig, model_preset
from megatron_tulu.models.hf_io import HFTensorReader, read_hf_config
from megatron_tulu.models.synthetic import fixed_tokens, make_random_hf_dir
from megatron_tulu.platform.spawn import run_ranks

pytestmark = pytest.mark.slow
ROOT = Path(__file__).resolve().parents[2]
MODEL = model_preset("tiny")


def _all_tensors(hf_dir: Path) -> dict[str, torch.Tensor]:
    reader = HFTensorReader(hf_dir)
    return {name: reader.get(name) for name in reader.files}


@pytest.fixture(scope="module")
def hf_dir(tmp_path_factory):
    d = make_random_hf_dir(tmp_path_factory.mktemp("hf") / "hf", MODEL)
    (d / "tokenizer.json").write_text('{"version": "1.0", "model": {"type": "WordLevel"}}')
    (d / "generation_config.json").write_text('{"bos_token_id": 0, "eos_token_id": 1}')
    return d


def test_hf_native_tp2pp2_hf_is_bit_exact(hf_dir, tmp_path):
    native = hf_to_native(hf_dir, tmp_path / "native", tp=2, pp=2)
    meta = json.loads((native / "step_000000000" / "meta.json").read_text())
    assert meta["layout"]["padded_vocab_size"] == 1024 and meta["weights_only"] is True
    back = native_to_hf(native, tmp_path / "back", max_shard_bytes=200_000)
    src, out = _all_tensors(hf_dir), _all_tensors(back)
    assert set(src) == set(out)
    for name, tensor in src.items():
        assert out[name].dtype == tensor.dtype and torch.equal(out[name], tensor), name
    assert read_hf_config(back).__dict__ | {"name": ""} == read_hf_config(hf_dir).__dict__ | {
        "name": ""
    }
    cfg = json.loads((back / "config.json").read_text())
    assert cfg["rope_parameters"]["rope_type"] == "llama3"  # RoPE scaling kept
    assert len(list(back.glob("model-*.safetensors"))) > 1  # sharded by max_shard_bytes
    assert (back / "tokenizer.json").read_text() == (hf_dir / "tokenizer.json").read_text()
    assert json.loads((back / "generation_config.json").read_text())["eos_token_id"] == 1


def test_converted_model_passes_check_against_hf(hf_dir, tmp_path):
    native = hf_to_native(hf_dir, tmp_path / "native", tp=2, pp=2)
    back = native_to_hf(native, tmp_path / "back")
    (back / "tokenizer.json").unlink()  # our stand-in tokenizer file is not a real tokenizer
    out = subprocess.run(
        [
            sys.executable,
            str(ROOT / "tools" / "check_against_hf.py"),
            "--hf-dir",
            str(back),
            "--tp",
            "2",
            "--pp",
            "2",
        ],
        capture_output=True,
        text=True,
        cwd=ROOT,
        timeout=300,
        check=False,
    )
    assert out.returncode == 0, out.stderr[-3000:]
    assert float(out.stdout.strip().splitlines()[-1].split("=")[1]) <= 1e-4


def test_bf16_conversion_rounds_once(hf_dir, tmp_path):
    native = hf_to_native(hf_dir, tmp_path / "native", tp=1, dtype="bf16")
    back = native_to_hf(native, tmp_path / "back")
    src, out = _all_tensors(hf_dir), _all_tensors(back)
    for name, tensor in src.items():
        assert out[name].dtype == torch.bfloat16
        assert torch.equal(out[name], tensor.to(torch.bfloat16)), name
    assert json.loads((back / "config.json").read_text())["torch_dtype"] == "bfloat16"


def _train_and_save(root: str, tp: int, pp: int):
    import os

    from megatron.core import parallel_state as ps

    from megatron_tulu.checkpoint.native import save_checkpoint
    from megatron_tulu.engine.build import build_engine
    from megatron_tulu.engine.microbatch import split_global_batch
    from megatron_tulu.engine.schedule import train_step
    from megatron_tulu.parallel import destroy_parallel, init_parallel

    dims = ParallelConfig(tp=tp, pp=pp, global_batch_size=4).resolve(
        int(os.environ["WORLD_SIZE"]), MODEL
    )
    init_parallel(dims, seed=3)
    try:
        engine = build_engine(
            model=MODEL, dims=dims, optimizer=OptimizerConfig(lr=3e-3), train_steps=3
        )
        batches = split_global_batch(
            fixed_tokens(MODEL, rows=4, seq_plus_one=33, seed=1),
            None,
            dims=dims,
            dp_rank=ps.get_data_parallel_rank(),
        )
        for _ in range(3):
            train_step(engine, batches)
        save_checkpoint(engine, root, step=3, consumed_samples=12)
    finally:
        destroy_parallel()


def _logits(root: str, tp: int, pp: int, vpp: int | None = None):
    import os

    from megatron_tulu.checkpoint.native import load_checkpoint
    from megatron_tulu.engine.build import build_engine
    from megatron_tulu.engine.microbatch import split_global_batch
    from megatron_tulu.engine.schedule import forward_logits
    from megatron_tulu.parallel import destroy_parallel, init_parallel

    dims = ParallelConfig(tp=tp, pp=pp, vpp=vpp, global_batch_size=4).resolve(
        int(os.environ["WORLD_SIZE"]), MODEL
    )
    init_parallel(dims, seed=0)
    try:
        engine = build_engine(model=MODEL, dims=dims, optimizer=OptimizerConfig(), train_steps=1)
        load_checkpoint(engine, root, weights_only=True)
        batches = split_global_batch(
            fixed_tokens(MODEL, rows=4, seq_plus_one=33, seed=2), None, dims=dims, dp_rank=0
        )
        out = forward_logits(engine, batches, MODEL.vocab_size)
        return None if out is None else torch.cat(out)
    finally:
        destroy_parallel()


def _last(results):
    return next(r for r in reversed(results) if r is not None)


def test_native_tp2_to_hf_to_native_pp2_gives_identical_logits(tmp_path):
    trained = str(tmp_path / "trained")
    run_ranks(_train_and_save, 2, trained, 2, 1)  # a real training checkpoint, optimizer incl.
    hf = native_to_hf(trained, tmp_path / "hf")
    pp2 = hf_to_native(hf, tmp_path / "pp2", tp=1, pp=2)
    original_at_pp2 = _last(run_ranks(_logits, 2, trained, 1, 2))
    converted_at_pp2 = _last(run_ranks(_logits, 2, str(pp2), 1, 2))
    # Same weights, same layout: bit-identical.
    assert torch.equal(original_at_pp2, converted_at_pp2)
    # Against the TP2 layout the checkpoint was trained in: reduction order only.
    original_at_tp2 = _last(run_ranks(_logits, 2, trained, 2, 1))
    assert (original_at_tp2 - converted_at_pp2).abs().max().item() <= 1e-5
    # And into an interleaved layout (virtual pipeline stages) from the same files.
    at_vpp = _last(run_ranks(_logits, 2, str(pp2), 1, 2, 2))
    assert (at_vpp - converted_at_pp2).abs().max().item() <= 1e-5


def _no_leftovers(parent: Path, name: str) -> None:
    assert not (parent / name).exists()
    assert not list(parent.glob(f".tmp-*{name}*"))


def test_bad_inputs_fail_clearly_and_leave_nothing(hf_dir, tmp_path):
    def broken(tag: str) -> Path:
        d = tmp_path / tag
        shutil.copytree(hf_dir, d)
        return d

    # a missing tensor
    d = broken("missing")
    tensors = load_file(d / "model.safetensors")
    del tensors["model.layers.2.mlp.up_proj.weight"]
    save_file(tensors, d / "model.safetensors")
    with pytest.raises(KeyError, match=r"'model.layers.2.mlp.up_proj.weight' is missing"):
        hf_to_native(d, tmp_path / "out1", tp=2)
    _no_leftovers(tmp_path, "out1")

    # a tensor whose shape does not match config.json
    d = broken("shape")
    tensors = load_file(d / "model.safetensors")
    tensors["model.layers.1.self_attn.k_proj.weight"] = torch.zeros(16, 64)
    save_file(tensors, d / "model.safetensors")
    with pytest.raises(
        ValueError, match=r"k_proj.weight' has shape \(16, 64\), expected \(32, 64\)"
    ):
        hf_to_native(d, tmp_path / "out2", tp=2)
    _no_leftovers(tmp_path, "out2")

    # a config that does not match the weights
    d = broken("config")
    cfg = json.loads((d / "config.json").read_text())
    cfg["intermediate_size"] = 200
    (d / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(ValueError, match=r"gate_proj.weight' has shape \(176, 64\), expected"):
        hf_to_native(d, tmp_path / "out3", tp=1)
    _no_leftovers(tmp_path, "out3")

    # a corrupted (truncated) safetensors file
    d = broken("corrupt")
    data = (d / "model.safetensors").read_bytes()
    (d / "model.safetensors").write_bytes(data[: len(data) // 2])
    with pytest.raises(ValueError, match=r"model.safetensors"):
        hf_to_native(d, tmp_path / "out4", tp=1)
    _no_leftovers(tmp_path, "out4")

    # an output directory that already holds a checkpoint
    native = hf_to_native(hf_dir, tmp_path / "out5", tp=1)
    before = sorted(p.name for p in native.rglob("*"))
    with pytest.raises(FileExistsError, match="pass --overwrite"):
        hf_to_native(hf_dir, native, tp=1)
    assert sorted(p.name for p in native.rglob("*")) == before
    hf_to_native(hf_dir, native, tp=2, overwrite=True)
    back = native_to_hf(native, tmp_path / "back")
    with pytest.raises(FileExistsError, match="pass --overwrite"):
        native_to_hf(native, back)
