"""Plan one RLVR (PPO/GRPO) step: vLLM generation, weight sync, and the training phases.

The GPUs split into a rollout partition (vLLM engines) and the training GPUs, which hold the
policy (trained), the reference policy (a full copy, forward only, bf16 weights in the policy's
layout) and, for PPO, a value model (trained; its own layout: TP ``value_tp``, PP 1, over all
training GPUs, a scalar head instead of the vocabulary). Phases on the training GPUs run one
after another, so activation memory is the largest phase's while all weights stay resident.

Phases counted for memory (the largest over static memory): policy training (activations,
logits, transients), the forward-only passes, the value model's training, the reference pass
(with ``offload_reference`` the reference's bf16 weights are on the device only then, swapped in
over PCIe once per step: a time term) and the weight push (:func:`memory.push_transient_bytes`:
after the step, no activations). ``optimizer_steps_per_epoch``: mini-batches per PPO epoch
(rollouts / ``parallel.global_batch_size``), each one optimizer step over its own pipeline
schedule; the forward-only passes run the whole rollout batch at once.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any

from megatron_tulu.config import ModelConfig, ParallelConfig
from megatron_tulu.config._validate import check_choice, check_int
from megatron_tulu.config.parallel import valid_tp
from megatron_tulu.tools.planner.assumptions import (
    rlvr_assumptions,
    training_assumptions,
    zero3_assumptions,
)
from megatron_tulu.tools.planner.fit import DEFAULT_RESERVED_GIB, DoesNotFit, check_fit, gib
from megatron_tulu.tools.planner.hardware import GB, GIB, HardwareProfile
from megatron_tulu.tools.planner.layout import (
    PlanError,
    ResolvedLayout,
    TrainLayout,
    resolve,
)
from megatron_tulu.tools.planner.memory import (
    act_bytes,
    forward_only_activation_bytes,
    push_transient_bytes,
    rank_params,
    training_memory,
)
from megatron_tulu.tools.planner.rollout import (
    GenerationTime,
    RolloutMemory,
    RolloutWorkload,
    generation_time,
    rollout_memory,
    weight_sync_seconds,
)
from megatron_tulu.tools.planner.timing import TimeOptions, TrainTime, training_time
from megatron_tulu.tools.planner.training_plan import layout_dict
from megatron_tulu.tools.planner.zero3 import (
    DEEPSPEED_ZERO3_EFFICIENCY,
    zero3_memory,
    zero3_training,
)

ENGINES = ("megatron", "zero3")


@dataclass(frozen=True, kw_only=True)
class RLVRSettings:
    ppo_epochs: int = 1
    value_model: ModelConfig | None = None
    value_tp: int | None = None  # None: the largest valid tp <= 8 dividing the training GPUs
    recompute_old_logprobs: bool = True
    is_async: bool = False
    engine: str = "megatron"
    zero3_efficiency: float = DEEPSPEED_ZERO3_EFFICIENCY
    offload_reference: bool = False  # TrainingConfig.offload_reference
    optimizer_steps_per_epoch: int = 1  # mini-batches per PPO epoch

    def __post_init__(self) -> None:
        try:
            check_int("ppo_epochs", self.ppo_epochs, minimum=1)
            check_int("optimizer_steps_per_epoch", self.optimizer_steps_per_epoch, minimum=1)
            check_choice("engine", self.engine, ENGINES)
        except ValueError as exc:
            raise PlanError(str(exc)) from None


@dataclass(kw_only=True)
class RLVRPlan:
    model: ModelConfig
    hw: HardwareProfile
    gpus: int
    policy: ResolvedLayout
    settings: RLVRSettings
    rollout: RolloutWorkload
    rollout_mem: RolloutMemory
    generation: GenerationTime
    weight_sync_s: float
    phases: dict[str, float]  # training phase -> seconds
    training_s: float
    step_s: float
    model_flops: float
    train_memory: dict[str, float]  # worst training GPU, bytes by component
    train_memory_rank: int
    capacity: float
    assumptions: list[str] = field(default_factory=list)
    value: ResolvedLayout | None = None

    @property
    def train_gpus(self) -> int:
        return self.gpus - self.rollout.rollout_gpus

    @property
    def mfu(self) -> float:
        return self.model_flops / (self.gpus * self.hw.peak_flops * self.step_s)

    @property
    def fits(self) -> bool:
        try:
            self.check_fit()
        except DoesNotFit:
            return False
        return True

    def check_fit(self) -> None:
        check_fit(
            self.train_memory,
            self.capacity,
            f"training GPU (pipeline rank {self.train_memory_rank}, {self.policy.layout.short()})",
        )
        vllm = {
            "vllm_weights": self.rollout_mem.weights,
            "workspace": self.rollout_mem.workspace,
        }
        budget = self.rollout.vllm.gpu_memory_utilization * self.hw.hbm_bytes
        check_fit(vllm, budget, f"rollout GPU (vLLM TP {self.rollout.vllm_tp})")
        if self.rollout_mem.concurrent_sequences < 1:
            need = self.rollout.prompt_len + self.rollout.response_len
            raise_kv(self.rollout_mem, need)

    def to_dict(self) -> dict[str, Any]:
        g = self.generation
        return {
            "mode": "rlvr",
            "model": self.model.name,
            "hardware": self.hw.name,
            "gpus": self.gpus,
            "training_gpus": self.train_gpus,
            "rollout_gpus": self.rollout.rollout_gpus,
            "vllm_tp": self.rollout.vllm_tp,
            "vllm_engines": self.rollout.num_engines,
            "layout": layout_dict(self.policy)
            if self.settings.engine == "megatron"
            else {"engine": "zero3", "gpus": self.train_gpus},
            "value_layout": None if self.value is None else layout_dict(self.value),
            "step_time_s": self.step_s,
            "generation_s": g.generation_s,
            "weight_sync_s": self.weight_sync_s,
            "training_s": self.training_s,
            "async": self.settings.is_async,
            "offload_reference": self.settings.offload_reference,
            "optimizer_steps_per_epoch": self.settings.optimizer_steps_per_epoch,
            "mfu": self.mfu,
            "tflops_per_gpu": self.model_flops / (self.gpus * self.step_s) / 1e12,
            "fits": self.fits,
            "memory_gib_per_gpu": gib(sum(self.train_memory.values())),
            "rollout_memory_gib_per_gpu": gib(self.rollout_mem.total),
            "memory_capacity_gib": gib(self.capacity),
            "breakdown": {
                "training_phases_s": self.phases,
                "generation": g.breakdown(),
                "training_memory_gib": {k: gib(v) for k, v in self.train_memory.items()},
                "rollout_memory_gib": {
                    "weights": gib(self.rollout_mem.weights),
                    "kv_cache": gib(self.rollout_mem.kv_cache),
                    "workspace": gib(self.rollout_mem.workspace),
                    "kv_tokens_per_engine": self.rollout_mem.kv_tokens,
                    "concurrent_sequences_per_engine": self.rollout_mem.concurrent_sequences,
                },
            },
            "assumptions": self.assumptions,
        }


def raise_kv(mem: RolloutMemory, need_tokens: int) -> None:
    raise DoesNotFit(
        f"does not fit: the vLLM KV cache ({gib(mem.kv_cache):.1f} GiB per GPU) holds "
        f"{mem.kv_tokens:.0f} tokens per engine, less than one sequence of {need_tokens} "
        "tokens (prompt + response). Hint: raise --vllm-tp or shorten the sequences"
    )


def default_value_tp(value_model: ModelConfig, train_gpus: int) -> int:
    options = [t for t in valid_tp(value_model) if t <= 8 and train_gpus % t == 0]
    return max(options)


def value_layout(
    value_model: ModelConfig, policy: TrainLayout, train_gpus: int, value_tp: int
) -> ResolvedLayout:
    """The value model over all training GPUs (TP value_tp, PP 1); its batch is padded up to a
    multiple of micro_batch * dp when the sequences do not divide evenly."""
    try:
        dp = ParallelConfig(tp=value_tp).grid(train_gpus).dp
    except ValueError as exc:
        raise PlanError(f"the value model's layout: {exc}") from None
    per = policy.micro_batch * dp
    batch = -(-policy.global_batch // per) * per
    lay = dataclasses.replace(
        policy,
        tp=value_tp,
        pp=1,
        vpp=None,
        cp=1,
        sequence_parallel=None,
        global_batch=batch,
        head="value",
        uneven_pipeline=False,
        first_stage_layers=None,
        last_stage_layers=None,
    )
    return resolve(value_model, lay, train_gpus)


@dataclass(frozen=True, kw_only=True)
class RLVRTraining:
    policy: ResolvedLayout
    value: ResolvedLayout | None
    phases: dict[str, float]
    training_s: float
    model_flops: float
    memory: dict[str, float]
    memory_rank: int


def rlvr_training(
    model: ModelConfig,
    layout: TrainLayout,
    train_gpus: int,
    settings: RLVRSettings,
    hw: HardwareProfile,
    options: TimeOptions | None = None,
) -> RLVRTraining:
    """The training GPUs' side of an RLVR step: phase times, model FLOPs, worst-GPU memory."""
    opts = options or TimeOptions()
    vm = settings.value_model
    if settings.engine == "zero3":
        # No megatron layout: a one-GPU stand-in only supplies the model FLOPs.
        flat = dataclasses.replace(
            layout,
            tp=1,
            pp=1,
            vpp=None,
            cp=1,
            sequence_parallel=None,
            micro_batch=1,
            uneven_pipeline=False,
            first_stage_layers=None,
            last_stage_layers=None,
        )
        policy = resolve(model, flat, 1)
    else:
        policy = resolve(model, layout, train_gpus)
    k = settings.optimizer_steps_per_epoch if settings.engine == "megatron" else 1
    if layout.global_batch % k:
        raise PlanError(
            f"the {layout.global_batch} sequences per step do not split into "
            f"optimizer_steps_per_epoch ({k}) equal mini-batches"
        )
    # one optimizer step trains a mini-batch (parallel.global_batch_size) -- its pipeline
    # bubble and in-flight micro-batches are the mini-batch's; the forward passes run the
    # whole rollout batch as one global batch (stages/rlvr/batch.forward_per_token)
    mini = (
        policy
        if k == 1
        else resolve(
            model, dataclasses.replace(layout, global_batch=layout.global_batch // k), train_gpus
        )
    )
    v_rl = v_mini = None
    if vm is not None and settings.engine == "megatron":
        v_tp = settings.value_tp or default_value_tp(vm, train_gpus)
        v_rl = value_layout(vm, layout, train_gpus, v_tp)
        v_mini = value_layout(vm, mini.layout, train_gpus, v_tp)
    fwd_opts = dataclasses.replace(opts, forward_only=True)
    p_train: TrainTime = training_time(model, mini, hw, opts)
    p_fwd: TrainTime = training_time(model, policy, hw, fwd_opts)
    phases: dict[str, float] = {}
    flops = 0.0
    if settings.engine == "megatron":
        if settings.recompute_old_logprobs:
            phases["policy_forward"] = p_fwd.step_s
            flops += p_fwd.model_flops
        if settings.offload_reference:
            phases["reference_swap_in"] = reference_swap_seconds(model, policy, hw)
        phases["reference_forward"] = p_fwd.step_s
        phases["policy_train"] = settings.ppo_epochs * k * p_train.step_s
        flops += p_fwd.model_flops + settings.ppo_epochs * k * p_train.model_flops
        if v_rl is not None and v_mini is not None and vm is not None:
            v_train = training_time(vm, v_mini, hw, opts)
            v_fwd = training_time(vm, v_rl, hw, fwd_opts)
            phases["value_forward"] = v_fwd.step_s
            phases["value_train"] = settings.ppo_epochs * k * v_train.step_s
            flops += v_fwd.model_flops + settings.ppo_epochs * k * v_train.model_flops
    else:
        z = zero3_training(
            model,
            value_model=vm,
            sequences=layout.global_batch,
            seq_len=layout.seq_len,
            gpus=train_gpus,
            ppo_epochs=settings.ppo_epochs,
            hw=hw,
            recompute_old_logprobs=settings.recompute_old_logprobs,
            efficiency=settings.zero3_efficiency,
        )
        phases = z.passes
        flops = (1 + settings.recompute_old_logprobs) * p_fwd.model_flops
        flops += settings.ppo_epochs * p_train.model_flops
    if settings.engine == "zero3":
        mem = zero3_memory(model, value_model=vm, seq_len=layout.seq_len, gpus=train_gpus)
        rank = 0
    else:
        mem, rank = _train_memory(model, mini, v_mini, vm, settings.offload_reference)
    return RLVRTraining(
        policy=mini,
        value=v_mini,
        phases=phases,
        training_s=sum(phases.values()),
        model_flops=flops,
        memory=mem,
        memory_rank=rank,
    )


def plan_rlvr(
    model: ModelConfig,
    layout: TrainLayout,
    gpus: int,
    rollout: RolloutWorkload,
    settings: RLVRSettings,
    hw: HardwareProfile,
    *,
    reserved_gib: float = DEFAULT_RESERVED_GIB,
    options: TimeOptions | None = None,
) -> RLVRPlan:
    """``layout.global_batch`` is the number of sequences per step, ``layout.seq_len`` the
    padded prompt + response length."""
    train_gpus = gpus - rollout.rollout_gpus
    if train_gpus < 1:
        raise PlanError(
            f"rollout gpus ({rollout.rollout_gpus}) leaves no training GPU out of gpus "
            f"({gpus}): use fewer --rollout-gpus"
        )
    opts = options or TimeOptions()
    training = rlvr_training(model, layout, train_gpus, settings, hw, opts)
    rmem = rollout_memory(model, rollout, hw)
    gen = generation_time(model, rollout, hw, rmem) if rmem.concurrent_sequences >= 1 else None
    sync = weight_sync_seconds(model, rollout, hw, train_gpus)
    phases, training_s, flops = training.phases, training.training_s, training.model_flops
    policy, v_rl, vm = training.policy, training.value, settings.value_model
    mem, rank = training.memory, training.memory_rank
    gen_s = gen.generation_s if gen is not None else float("inf")
    if settings.is_async:
        step = max(gen_s, training_s) + sync
    else:
        step = gen_s + sync + training_s
    value_name = vm.name if vm is not None else None
    if settings.engine == "zero3":
        assumptions = zero3_assumptions(hw, settings.zero3_efficiency)
    else:
        assumptions = training_assumptions(hw, layout, opts, reserved_gib=reserved_gib)
    assumptions += rlvr_assumptions(
        vllm_tp=rollout.vllm_tp,
        weight_sync=rollout.weight_sync,
        is_async=settings.is_async,
        recompute_old_logprobs=settings.recompute_old_logprobs,
        value_model=value_name,
        value_tp=None if v_rl is None else v_rl.layout.tp,
        offload_reference=settings.offload_reference,
        optimizer_steps_per_epoch=settings.optimizer_steps_per_epoch,
        engine=settings.engine
        if settings.engine == "megatron"
        else f"zero3 (DeepSpeed model, efficiency {settings.zero3_efficiency:.4g}, "
        "calibrated on Tülu 3's 405B training phase)",
    )
    plan = RLVRPlan(
        model=model,
        hw=hw,
        gpus=gpus,
        policy=policy,
        settings=settings,
        rollout=rollout,
        rollout_mem=rmem,
        generation=gen or _empty_generation(),
        weight_sync_s=sync,
        phases=phases,
        training_s=training_s,
        step_s=step,
        model_flops=flops,
        train_memory=mem,
        train_memory_rank=rank,
        capacity=hw.hbm_bytes - reserved_gib * GIB,
        assumptions=assumptions,
        value=v_rl,
    )
    return plan


def _empty_generation() -> GenerationTime:
    inf = float("inf")
    return GenerationTime(
        generation_s=inf,
        prefill_s=inf,
        decode_s=inf,
        decode_step_s=inf,
        decode_step_memory_s=inf,
        decode_step_compute_s=inf,
        decode_step_allreduce_s=inf,
        waves=inf,
        sequences_per_engine=0,
        tokens_per_s=0.0,
    )


def reference_swap_seconds(model: ModelConfig, rl: ResolvedLayout, hw: HardwareProfile) -> float:
    """Copying the offloaded reference's weights to the device, once per RL step (the slowest
    rank's share over its PCIe link; eviction frees memory, no copy back)."""
    nbytes = max(rank_params(model, rl, r) for r in range(rl.layout.pp)) * 2
    return nbytes / (hw.host_link_gb_s * GB * hw.efficiency.network)


def _train_memory(
    model: ModelConfig,
    policy: ResolvedLayout,
    v_rl: ResolvedLayout | None,
    vm: ModelConfig | None,
    offload_reference: bool = False,
) -> tuple[dict[str, float], int]:
    """Bytes on the worst training GPU: static memory plus the largest phase (module
    docstring). Phase tuples: (activations, logits, transient, reference on device, push)."""
    ranks = training_memory(model, policy)
    fwd_act = forward_only_activation_bytes(model, policy)
    v_static = 0.0
    v_phase = (0.0, 0.0, 0.0, 0.0, 0.0)
    if v_rl is not None and vm is not None:
        v0 = training_memory(vm, v_rl)[0]
        v_static = v0.weights + v0.grads + v0.optimizer
        v_phase = (v0.activations, v0.logits, v0.transient, 0.0, 0.0)
    best: tuple[dict[str, float], int] = ({}, 0)
    for r in ranks:
        reference = act_bytes("bf16") * rank_params(model, policy, r.rank)
        resident = 0.0 if offload_reference else reference
        phases = [
            (r.activations, r.logits, r.transient, 0.0, 0.0),
            (fwd_act, 0.0, 0.0, reference - resident, 0.0),  # policy / reference forward
            v_phase,
            (0.0, 0.0, 0.0, 0.0, push_transient_bytes(model, policy, r.rank)),
        ]
        phase = max(phases, key=sum)
        comps = {
            "weights": r.weights,
            "grads": r.grads,
            "optimizer": r.optimizer,
            "reference_weights": resident + phase[3],
            "value_static": v_static,
            "activations": phase[0],
            "logits": phase[1],
            "transient": phase[2],
            "push_transient": phase[4],
        }
        if not best[0] or sum(comps.values()) > sum(best[0].values()):
            best = (comps, r.rank)
    return best
