"""The assumptions behind a plan, as printed in the "assumptions" section (text and JSON)."""

from __future__ import annotations

from megatron_tulu.tools.planner.fit import DEFAULT_RESERVED_GIB
from megatron_tulu.tools.planner.hardware import HardwareProfile
from megatron_tulu.tools.planner.layout import TrainLayout, codebase_gaps
from megatron_tulu.tools.planner.timing import TimeOptions


def hardware_assumptions(hw: HardwareProfile) -> list[str]:
    return [f"hardware {hw.describe()}", *(f"source: {s}" for s in hw.sources)]


def training_assumptions(
    hw: HardwareProfile,
    layout: TrainLayout,
    options: TimeOptions,
    *,
    reserved_gib: float = DEFAULT_RESERVED_GIB,
    efficiency_source: str = "calibrated",
) -> list[str]:
    e = hw.efficiency
    out = hardware_assumptions(hw)
    out += [
        f"compute efficiency {e.compute:.4g} of peak ({efficiency_source}; the H100 value is "
        "calibrated once on NVIDIA's 405B megatron-core run, 19.84 s/step on 1024 H100)",
        "model FLOPs: 6*[L*(h*(d_q+2*d_kv) + d_q*h + 3*h*F) + h*V] + 6*L*d_q*s per token "
        "(GQA, SwiGLU 3 matrices, logits; causal attention counted at s/2); hardware FLOPs add "
        "recomputation (full: one more forward per layer; selective: core attention forward)",
        "tensor-parallel collectives modelled and exposed (no TP-comm overlap in this codebase):"
        " with SP 2 all-gathers + 2 reduce-scatters of [s/cp, b, h] per layer each way",
        "pipeline bubble (pp-1)/(vpp*m) of the slowest rank's micro-batch time; p2p sends "
        "overlap steady-state compute (one fill counted)",
        "context parallel: ring attention K/V exchanges, exposed beyond the attention compute",
        f"data parallel over dp*cp: {layout.grad_reduce_dtype} gradient reduce-scatter "
        + ("overlapped with the last backward" if options.overlap_grad_reduce else "exposed")
        + "; bf16 parameter all-gather "
        + ("overlapped with the first forward" if options.overlap_param_gather else "exposed"),
        "collective bandwidth: ring bound, NVLink inside a node, one NIC per GPU across nodes; "
        "ranks ordered tp-cp-dp-pp (megatron default), 8 GPUs per node",
        f"memory per GPU: bf16 weights 2 B + {layout.grad_reduce_dtype} grads "
        f"{layout.grad_bytes} B + Adam (fp32 master, m, v) 12 B per parameter, the 12 B sharded "
        "over dp*cp with the distributed optimizer"
        + (
            f"; {layout.optimizer_offload:g} of the optimizer state offloaded to host memory "
            + (
                "(master, m and v: TE's precision-aware path)"
                if layout.kernels == "te"
                else "(m and v; the fp32 master stays)"
            )
            + ", its step on the CPU (PCIe 8 B/param, host memory 28 B/param, overlapped)"
            if layout.optimizer_offload
            else ""
        ),
        "activations: Korthikanti et al. 2022 re-derived for Llama as this codebase builds it "
        "(no dropout, RMSNorm, GQA, V a view of the QKV output, "
        + ("fused RoPE, " if layout.rope_fused else "unfused RoPE, ")
        + ("fused SwiGLU" if layout.swiglu_fused else "unfused SwiGLU: 5F per token")
        + (
            ", megatron's fusions (RoPE, grad accumulation, cross entropy)"
            if layout.fusions
            else ""
        )
        + f"), kernels '{layout.kernels}'"
        + {
            "te": " (TE: fused norm, flash attention)",
            "triton": " (local spec on CUDA: SDPA flash attention, Triton RMSNorm/SwiGLU/RoPE)",
        }.get(layout.kernels, " (local spec, unfused)")
        + "; first pipeline rank holds pp micro-batches (interleaved: megatron's warm-up count)",
        "logits: vocab-parallel fp32 [s, b, V/tp] kept for the backward + their fp32 gradient",
        f"reserved per GPU: {reserved_gib:g} GiB (CUDA context, NCCL buffers, fragmentation)",
        ("" if layout.rope_fused else "unfused RoPE keeps cos/sin tables per layer (counted); ")
        + "token inputs and small fp32 statistics (RMSNorm rstd) are not counted (negligible)",
        "transient: the largest layer weight's gradient before it joins main_grad, and the "
        "output layer's backward (logits gradient in the model dtype + a contiguous copy + the "
        "output weight's gradient) beyond the logits' 8 bytes",
    ]
    out += [f"needs a feature this codebase lacks: {g}" for g in codebase_gaps(layout)]
    return out


def zero3_assumptions(hw: HardwareProfile, efficiency: float) -> list[str]:
    return [
        *hardware_assumptions(hw),
        f"training engine: DeepSpeed ZeRO-3 model (megatron_tulu/tools/planner/zero3.py), "
        f"efficiency {efficiency:.4g} of peak, calibrated on Tülu 3's 405B training phase "
        "(~1,500 s)",
        "ZeRO-3: every micro-batch (1 sequence per GPU) all-gathers the bf16 weights forward and "
        "backward and reduce-scatters bf16 gradients; prefetch overlaps it with compute",
        "ZeRO-3 memory: 18 bytes per parameter / GPUs, reference 2 bytes / GPUs, activations of "
        "one sequence under full recompute + two gathered layers",
    ]


def rlvr_assumptions(
    *,
    vllm_tp: int,
    weight_sync: str,
    is_async: bool,
    recompute_old_logprobs: bool,
    value_model: str | None,
    value_tp: int | None,
    engine: str,
    offload_reference: bool = False,
    optimizer_steps_per_epoch: int = 1,
) -> list[str]:
    out = [
        "rollout: vLLM on dedicated GPUs (gpu_memory_utilization 0.9, max_num_seqs 256, 3 GiB "
        f"workspace), engines of TP {vllm_tp}; every response runs to --response-len (upper "
        "bound); continuous batching = sequences / concurrent waves",
        "decode step = max((weights/tp + KV read)/(HBM bw * hbm eff), FLOPs/(peak * compute "
        "eff)) + 2 all-reduces per layer (latency + bandwidth); prefill compute-bound and not "
        "overlapped with decode (conservative: chunked prefill can hide part of it)",
        "KV bytes/token/GPU = 2 * layers * max(1, kv_heads/tp) * head_dim * 2 (bf16, GQA; KV "
        "heads replicated when tp > kv_heads)",
        f"weight sync '{weight_sync}': "
        + (
            "every vLLM GPU receives the full bf16 weights over its NIC (open-instruct/Tülu)"
            if weight_sync == "broadcast"
            else "every vLLM GPU receives only its TP shard (needs a resharding transport)"
        ),
        "training phases per step: "
        + ("policy old-log-prob forward, " if recompute_old_logprobs else "")
        + "reference forward (a full policy copy, bf16 weights "
        + (
            "in host memory, copied to the device for its pass over PCIe), "
            if offload_reference
            else "resident on the training GPUs), "
        )
        + (
            f"value forward ({value_model}, TP {value_tp}, PP 1, scalar head), "
            if value_model
            else "no value model, "
        )
        + "then ppo_epochs x (policy forward+backward"
        + (" + value forward+backward)" if value_model else ")")
        + f"; {optimizer_steps_per_epoch} optimizer step(s) per epoch; sequences padded to "
        "prompt + response",
        "weight push: each pipeline stage's TP rank 0 gathers one unit (embedding, decoder "
        "layer, output layer) whole; trainer rank 0 also receives the other stages' tensors "
        "one by one and packs 32 MiB buckets (a phase of its own, after the activations)",
        "step = "
        + (
            "max(generation, training) + weight sync (one-step off-policy)"
            if is_async
            else "generation + weight sync + training (synchronous)"
        ),
        f"training engine: {engine}",
    ]
    return out
