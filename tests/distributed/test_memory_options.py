"""The memory options that make 405B RLVR fit 80 GB, run on CPU with a tiny Llama (gloo):

- uneven pipeline stages (``parallel.first_stage_layers`` / ``last_stage_layers``): PP2 with 1
  and 3 of the 4 layers against the single-process run, forward logits and one SGD step (lr 1,
  no clipping: the weight change IS the gradient). Tolerance 1e-6 absolute: a pipeline split
  moves activations and their gradients between ranks unchanged and computes every layer with
  the same kernels, so only the order of float32 additions in the loss sum and the gradient
  scaling can differ (values O(1), ulp ~1e-7; observed 0 here);
- bf16 gradient reduction (``optimizer.grad_reduce_dtype: bf16``, megatron DDP
  ``grad_reduce_in_fp32=False``): the gradient buffer is bf16; at DP2 over 3 AdamW steps the
  loss tracks the fp32-reduction run within 0.02 nats (bf16 rounding of gradients, ~2^-9
  relative per addition, perturbs Adam's direction by that much; observed 1.3e-4), and the first
  step's gradient norm within 1% (each element rounded to bf16: 2^-9 relative, well under 1%;
  observed 1.2e-5);
- optimizer CPU offload (``optimizer.cpu_offload``): on a host without a GPU megatron-core's
  HybridDeviceOptimizer cannot run (it offloads only CUDA tensors and fails without one), and
  the state is in host memory anyway, so the engine builds the ordinary optimizer: a step runs
  and equals the run without the option bit for bit. The megatron config a GPU gets is checked
  in tests/unit/test_memory_options_config.py. What only a GPU shows: the device bytes saved and
  the host transfer and CPU-Adam time;
- the reference policy offloaded to host memory (``training.offload_reference``): between
  passes its parameters hold no storage; under ``on_device`` its log-probs equal the resident
  reference's bit for bit (the same values are copied back); an error inside the pass still
  evicts it. On CPU "device" and host are both host memory: the swap bookkeeping and the numbers
  are tested, the device memory saved and the copy time need a GPU.
"""

from __future__ import annotations

import os

import pytest
import torch

from megatron_tulu.config import OptimizerConfig, ParallelConfig, model_preset
from megatron_tulu.models.synthetic import fixed_tokens, make_random_hf_dir
from megatron_tulu.platform.spawn import run_ranks

pytestmark = pytest.mark.slow

MODEL = model_preset("tiny")
SGD = OptimizerConfig(
    optimizer="sgd", lr=1.0, weight_decay=0.0, clip_grad=0.0, use_distributed_optimizer=False
)
ADAM = OptimizerConfig(lr=1e-3, clip_grad=1.0)
PIPELINE_ATOL = 1e-6
BF16_LOSS_ATOL = 0.02
BF16_GRAD_NORM_RTOL = 0.01


def _init(pp: int, first: int | None, last: int | None, gbs: int):
    from megatron_tulu.parallel import init_parallel

    world = int(os.environ["WORLD_SIZE"])
    dims = ParallelConfig(
        pp=pp, first_stage_layers=first, last_stage_layers=last, global_batch_size=gbs
    ).resolve(world, MODEL)
    init_parallel(dims, seed=1234)
    return dims


def _pipeline_run(hf_dir: str, tokens: torch.Tensor, pp: int, first: int | None, last: int | None):
    """Logits of the batch and the HF-named weights after one SGD step (lr 1: w - grad)."""
    from megatron.core import parallel_state as ps

    from megatron_tulu.engine.build import build_engine
    from megatron_tulu.engine.microbatch import split_global_batch
    from megatron_tulu.engine.schedule import forward_logits, train_step
    from megatron_tulu.models.hf_io import gather_hf_state_dict, load_hf_weights
    from megatron_tulu.models.hf_walk import layer_numbers

    dims = _init(pp, first, last, tokens.shape[0])
    try:
        engine = build_engine(
            model=MODEL, dims=dims, optimizer=SGD, train_steps=1,
            load_weights=lambda chunks: load_hf_weights(chunks, hf_dir, model=MODEL, tp=1,
                                                        tp_rank=0),
        )  # fmt: skip
        layers = layer_numbers(engine.raw_chunks()[0])
        batches = split_global_batch(tokens, None, dims=dims, dp_rank=ps.get_data_parallel_rank())
        logits = torch.cat(forward_logits(engine, batches, MODEL.vocab_size))
        train_step(engine, batches)
        return logits, gather_hf_state_dict(engine.raw_chunks(), model=MODEL), layers
    finally:
        ps.destroy_model_parallel()  # the gloo world stays for the next layout


def _adam_losses(tokens: torch.Tensor, grad_reduce_dtype: str, cpu_offload: bool = False):
    """Three AdamW steps at DP = world size, bf16 parameters; the gradient buffer's dtype."""
    import dataclasses

    from megatron.core import parallel_state as ps

    from megatron_tulu.engine.build import build_engine
    from megatron_tulu.engine.microbatch import split_global_batch
    from megatron_tulu.engine.schedule import train_step
    from megatron_tulu.models.llama import BuildOptions

    dims = _init(1, None, None, tokens.shape[0])
    try:
        opt = dataclasses.replace(ADAM, grad_reduce_dtype=grad_reduce_dtype,
                                  cpu_offload=cpu_offload)  # fmt: skip
        engine = build_engine(model=MODEL, dims=dims, optimizer=opt, train_steps=3,
                              options=BuildOptions(precision="bf16"))  # fmt: skip
        buffer_dtypes = {p.main_grad.dtype for p in engine.raw_chunks()[0].parameters()}
        batches = split_global_batch(tokens, None, dims=dims, dp_rank=ps.get_data_parallel_rank())
        results = [train_step(engine, batches) for _ in range(3)]
        inner = getattr(engine.optimizer, "chained_optimizers", [engine.optimizer])[0]
        return (
            [r.loss for r in results], results[0].grad_norm, buffer_dtypes,
            type(inner.optimizer).__name__,
        )  # fmt: skip
    finally:
        ps.destroy_model_parallel()  # the gloo world stays for the next layout


def _reference_offload(hf_dir: str, tokens: torch.Tensor):
    """Reference log-probs resident, then offloaded and swapped in; bytes while out."""
    from megatron.core import parallel_state as ps

    from megatron_tulu.engine.build import build_frozen, freeze, offload_to_host, on_device
    from megatron_tulu.engine.microbatch import split_global_batch
    from megatron_tulu.engine.schedule import forward_logits
    from megatron_tulu.models.hf_io import load_hf_weights

    dims = _init(1, None, None, tokens.shape[0])
    try:
        ref = build_frozen(model=MODEL, dims=dims)
        load_hf_weights(ref.chunks, hf_dir, model=MODEL, tp=1, tp_rank=0)
        ref = freeze(ref)
        batches = split_global_batch(tokens, None, dims=dims, dp_rank=0)

        def logps() -> torch.Tensor:
            logits = torch.cat(forward_logits(ref, batches, MODEL.vocab_size))
            labels = torch.cat([b["labels"] for b in batches])
            return torch.log_softmax(logits, -1).gather(-1, labels[..., None])[..., 0]

        resident = logps()
        bytes_resident = sum(p.numel() * p.element_size() for p in ref.chunks[0].parameters())
        offload_to_host(ref)
        out_bytes = ref.offload.device_bytes()
        with on_device(ref):
            in_bytes = ref.offload.device_bytes()
            swapped = logps()
        after = ref.offload.device_bytes()
        try:
            with on_device(ref):
                raise RuntimeError("a failing pass")
        except RuntimeError:
            pass
        after_error = ref.offload.device_bytes()
        with on_device(ref):
            again = logps()
        return dict(
            resident=resident, swapped=swapped, again=again, bytes_resident=bytes_resident,
            host_bytes=ref.offload.host_bytes, out=out_bytes, inside=in_bytes, after=after,
            after_error=after_error,
        )  # fmt: skip
    finally:
        ps.destroy_model_parallel()  # the gloo world stays for the next layout


def _one_rank(hf_dir: str, tokens: torch.Tensor):
    from megatron_tulu.parallel import destroy_parallel

    try:
        return {
            "pp1": _pipeline_run(hf_dir, tokens, 1, None, None),
            "reference": _reference_offload(hf_dir, tokens),
            "adam_plain": _adam_losses(tokens, "fp32"),
            "adam_offload": _adam_losses(tokens, "fp32", cpu_offload=True),
        }
    finally:
        destroy_parallel()


def _two_ranks(hf_dir: str, tokens: torch.Tensor):
    from megatron_tulu.parallel import destroy_parallel

    try:
        return {
            "pp2_uneven": _pipeline_run(hf_dir, tokens, 2, 1, 3),
            "dp2_fp32": _adam_losses(tokens, "fp32"),
            "dp2_bf16": _adam_losses(tokens, "bf16"),
        }
    finally:
        destroy_parallel()


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    hf_dir = str(make_random_hf_dir(tmp_path_factory.mktemp("hf"), MODEL))
    tokens = fixed_tokens(MODEL, rows=4, seq_plus_one=33)
    one = run_ranks(_one_rank, 1, hf_dir, tokens)[0]
    two = run_ranks(_two_ranks, 2, hf_dir, tokens)
    return one, two


def test_uneven_pipeline_matches_single_process(runs):
    one, two = runs
    ref_logits, ref_weights, _ = one["pp1"]
    layers = [two[r]["pp2_uneven"][2] for r in range(2)]
    assert layers == [[1], [2, 3, 4]]  # first_stage_layers 1, last_stage_layers 3
    logits, weights, _ = two[1]["pp2_uneven"]  # the last stage
    assert logits.shape == ref_logits.shape
    assert (logits - ref_logits).abs().max() <= PIPELINE_ATOL
    assert weights.keys() == ref_weights.keys()
    for name, w in ref_weights.items():  # SGD lr 1: w - grad, so the gradients agree
        assert (weights[name] - w).abs().max() <= PIPELINE_ATOL, name


def test_bf16_gradient_reduction_tracks_fp32(runs):
    _, two = runs
    fp32_losses, fp32_norm, fp32_buf, _ = two[0]["dp2_fp32"]
    bf16_losses, bf16_norm, bf16_buf, _ = two[0]["dp2_bf16"]
    assert fp32_buf == {torch.float32} and bf16_buf == {torch.bfloat16}
    assert bf16_losses[-1] < bf16_losses[0]  # it learns
    assert max(abs(a - b) for a, b in zip(bf16_losses, fp32_losses, strict=True)) <= BF16_LOSS_ATOL
    assert bf16_norm == pytest.approx(fp32_norm, rel=BF16_GRAD_NORM_RTOL)
    assert two[1]["dp2_bf16"][0] == bf16_losses  # both DP ranks report the same losses


def test_optimizer_offload_step_runs_on_cpu(runs):
    one, _ = runs
    plain, offload = one["adam_plain"], one["adam_offload"]
    assert offload[0] == plain[0]  # no GPU: the ordinary optimizer, bit for bit
    assert offload[3] == plain[3] != "HybridDeviceOptimizer"


def test_offloaded_reference_swaps_and_matches(runs):
    ref = runs[0]["reference"]
    assert torch.equal(ref["swapped"], ref["resident"])
    assert torch.equal(ref["again"], ref["resident"])
    assert ref["out"] == 0 and ref["after"] == 0 and ref["after_error"] == 0
    assert ref["inside"] == ref["bytes_resident"] == ref["host_bytes"] > 0
