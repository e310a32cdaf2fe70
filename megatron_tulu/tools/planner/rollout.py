"""Rollout generation on vLLM engines and the trainer -> vLLM weight sync.

Generation (per engine of ``vllm_tp`` GPUs; engines run in parallel on their share of the
sequences):

- memory: vLLM takes ``gpu_memory_utilization`` of each GPU; after the bf16 weights (W / tp) and
  a profiled activation workspace the rest is the KV cache. KV bytes per token per GPU are
  ``2 * layers * max(1, kv_heads / tp) * head_dim * 2`` (GQA; a KV head is replicated when tp
  exceeds the KV heads). At most ``min(max_num_seqs, kv_tokens // (prompt + response))``
  sequences run at once (every sequence is assumed to reach ``prompt + response`` tokens);
- prefill is compute-bound: forward FLOPs of the prompt tokens / (tp * peak * compute
  efficiency), plus its TP all-reduces;
- decode is memory-bandwidth-bound: each step streams the weights once for the whole batch and
  each sequence's KV cache (mean context ``prompt + response / 2``):
  ``t_step = max((W / tp + KV read) / (HBM bw * hbm efficiency), FLOPs / (peak * compute eff))
  + 2 * layers * all-reduce([batch, h])`` (the all-reduces are latency + bandwidth);
- continuous batching: ``sequences / concurrent`` waves of ``response_len`` decode steps.

Weight sync (bf16 weights, W bytes):

- ``broadcast`` (open-instruct / Tülu 3: the full weights are broadcast to every vLLM GPU, which
  keeps its shard): every rollout GPU receives W over its own NIC;
- ``sharded`` (each vLLM GPU receives only its TP shard, sent from many trainer GPUs): W / tp
  per rollout GPU, or the trainer side's ``engines * W / train_gpus`` if larger.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING, Any

from megatron_tulu.config import ModelConfig, RolloutConfig
from megatron_tulu.config._validate import check_choice, check_float, check_int
from megatron_tulu.tools.planner.comm import collective_seconds
from megatron_tulu.tools.planner.flops import forward_flops_per_token, forward_model_flops_per_token
from megatron_tulu.tools.planner.hardware import GB, GIB, HardwareProfile
from megatron_tulu.tools.planner.layout import PlanError
from megatron_tulu.tools.planner.memory import kv_bytes_per_token_per_gpu, model_weight_bytes

if TYPE_CHECKING:
    from megatron_tulu.config import RecipeConfig

WEIGHT_SYNC = ("broadcast", "sharded")


def engines_on(rollout_gpus: int, vllm_tp: int, **settings: Any) -> RolloutConfig:
    """The engines filling ``rollout_gpus`` GPUs at ``vllm_tp`` each, as a :class:`RolloutConfig`
    (``settings``: its other fields, e.g. ``gpu_memory_utilization``). PlanError if they do not
    split."""
    try:
        check_int("rollout_gpus", rollout_gpus, minimum=1)
        check_int("vllm_tp", vllm_tp, minimum=1)
        if rollout_gpus % vllm_tp:
            raise PlanError(
                f"rollout gpus ({rollout_gpus}) is not divisible by vllm tp ({vllm_tp}): use a "
                f"multiple of {vllm_tp} rollout GPUs"
            )
        return RolloutConfig(
            vllm_tp=vllm_tp,
            num_engines=rollout_gpus // vllm_tp,
            engine_gpus=rollout_gpus,
            **settings,
        )
    except ValueError as exc:
        raise PlanError(str(exc)) from None


@dataclass(frozen=True, kw_only=True)
class RolloutWorkload:
    """One RLVR step's generation: the engines (``vllm``, the recipe's ``rollout`` section:
    vllm_tp, num_engines, gpu_memory_utilization, max_num_seqs) and what only the planner
    models: the sequence lengths and count, vLLM's workspace, and the weight-sync scheme."""

    vllm: RolloutConfig
    prompt_len: int
    response_len: int
    num_sequences: int  # prompts * samples per prompt, per RLVR step
    workspace_gib: float = 3.0  # vLLM's profiled activation peak + CUDA graphs (nominal)
    # broadcast: what this codebase does; sharded: a what-if (each vLLM GPU gets its shard)
    weight_sync: str = "broadcast"

    def __post_init__(self) -> None:
        try:
            for name in ("prompt_len", "response_len", "num_sequences"):
                check_int(name, getattr(self, name), minimum=1)
            check_float("workspace_gib", self.workspace_gib, ge=0.0)
            check_choice("weight_sync", self.weight_sync, WEIGHT_SYNC)
        except ValueError as exc:
            raise PlanError(str(exc)) from None

    @classmethod
    def from_recipe(cls, recipe: RecipeConfig, **planner_only: Any) -> RolloutWorkload:
        """A recipe's RL step: its rollout section, prompt / response limits and rollouts."""
        rl = recipe.rlvr
        return cls(
            vllm=recipe.rollout,
            prompt_len=rl.max_prompt_tokens,
            response_len=rl.max_response_tokens,
            num_sequences=rl.rollouts_per_step,
            **planner_only,
        )

    @property
    def vllm_tp(self) -> int:
        return self.vllm.vllm_tp

    @property
    def num_engines(self) -> int:
        return self.vllm.num_engines

    @property
    def rollout_gpus(self) -> int:
        return self.vllm.vllm_tp * self.vllm.num_engines


@dataclass(frozen=True, kw_only=True)
class RolloutMemory:
    weights: float
    kv_cache: float
    workspace: float
    kv_tokens: float  # KV capacity of one engine, tokens
    concurrent_sequences: int

    @property
    def total(self) -> float:
        return self.weights + self.kv_cache + self.workspace


@dataclass(frozen=True, kw_only=True)
class GenerationTime:
    generation_s: float
    prefill_s: float
    decode_s: float
    decode_step_s: float
    decode_step_memory_s: float
    decode_step_compute_s: float
    decode_step_allreduce_s: float
    waves: float
    sequences_per_engine: int
    tokens_per_s: float  # generated tokens per second, all engines

    def breakdown(self) -> dict[str, float]:
        return asdict(self)


def check_vllm_tp(model: ModelConfig, vllm_tp: int) -> None:
    """:meth:`RolloutConfig.check_model` for ``vllm_tp`` (PlanError)."""
    try:
        RolloutConfig(vllm_tp=vllm_tp).check_model(model)
    except ValueError as exc:
        raise PlanError(str(exc)) from None


def rollout_memory(model: ModelConfig, cfg: RolloutWorkload, hw: HardwareProfile) -> RolloutMemory:
    """vLLM memory on one rollout GPU. The caller checks that it fits
    (``concurrent_sequences >= 1``, see
    :func:`megatron_tulu.tools.planner.fit.check_rollout_fit`)."""
    check_vllm_tp(model, cfg.vllm_tp)
    budget = cfg.vllm.gpu_memory_utilization * hw.hbm_bytes
    weights = model_weight_bytes(model) / cfg.vllm_tp
    workspace = cfg.workspace_gib * GIB
    kv = max(0.0, budget - weights - workspace)
    kv_tokens = kv / kv_bytes_per_token_per_gpu(model, cfg.vllm_tp)
    per_seq = cfg.prompt_len + cfg.response_len
    per_engine = math.ceil(cfg.num_sequences / cfg.num_engines)
    concurrent = int(min(cfg.vllm.max_num_seqs, kv_tokens // per_seq, per_engine))
    return RolloutMemory(
        weights=weights,
        kv_cache=kv,
        workspace=workspace,
        kv_tokens=kv_tokens,
        concurrent_sequences=concurrent,
    )


def generation_time(
    model: ModelConfig, cfg: RolloutWorkload, hw: HardwareProfile, mem: RolloutMemory
) -> GenerationTime:
    if mem.concurrent_sequences < 1:
        raise ValueError("no sequence fits the KV cache; check rollout_memory first")
    tp, eff = cfg.vllm_tp, hw.efficiency
    per_engine = math.ceil(cfg.num_sequences / cfg.num_engines)
    batch = mem.concurrent_sequences
    per_node = min(tp, hw.gpus_per_node)
    h = model.hidden_size
    # prefill: compute-bound, plus two all-reduces per layer of the prompt activations
    prefill_tokens = per_engine * cfg.prompt_len
    prefill_flops = prefill_tokens * forward_model_flops_per_token(model, cfg.prompt_len) / tp
    prefill = prefill_flops / (hw.peak_flops * eff.compute)
    prefill += (
        2
        * model.num_layers
        * collective_seconds(
            prefill_tokens * h * 2, size=tp, per_node=per_node, kind="all_reduce", hw=hw
        )
    )
    # decode: one token per running sequence per step
    mean_ctx = cfg.prompt_len + cfg.response_len / 2
    kv_read = batch * mean_ctx * kv_bytes_per_token_per_gpu(model, tp)
    t_mem = (mem.weights + kv_read) / (hw.hbm_tb_s * 1e12 * eff.hbm)
    f = forward_flops_per_token(model, 2 * mean_ctx)  # causal halving: mean context = mean_ctx
    step_flops = batch * (model.num_layers * f.layer + f.logits) / tp
    t_compute = step_flops / (hw.peak_flops * eff.compute)
    t_ar = (
        2
        * model.num_layers
        * collective_seconds(
            batch * h * 2, size=tp, per_node=per_node, kind="all_reduce", hw=hw, latency=True
        )
    )
    step = max(t_mem, t_compute) + t_ar
    waves = per_engine / batch
    decode = waves * cfg.response_len * step
    total = prefill + decode
    return GenerationTime(
        generation_s=total,
        prefill_s=prefill,
        decode_s=decode,
        decode_step_s=step,
        decode_step_memory_s=t_mem,
        decode_step_compute_s=t_compute,
        decode_step_allreduce_s=t_ar,
        waves=waves,
        sequences_per_engine=per_engine,
        tokens_per_s=cfg.num_sequences * cfg.response_len / total,
    )


def weight_sync_seconds(
    model: ModelConfig, cfg: RolloutWorkload, hw: HardwareProfile, train_gpus: int
) -> float:
    link = hw.network_gb_s * GB * hw.efficiency.network
    weights = model_weight_bytes(model)
    if cfg.weight_sync == "broadcast":
        return weights / link
    receive = weights / cfg.vllm_tp / link
    send = cfg.num_engines * weights / max(train_gpus, 1) / link
    return max(receive, send)
