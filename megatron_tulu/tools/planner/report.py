"""Text rendering of plans (the JSON form is each plan's ``to_dict()``)."""

from __future__ import annotations

from megatron_tulu.tools.planner.fit import gib
from megatron_tulu.tools.planner.layout import codebase_gaps
from megatron_tulu.tools.planner.rlvr import RLVRPlan
from megatron_tulu.tools.planner.search import SearchResult
from megatron_tulu.tools.planner.training_plan import TrainingPlan


def _assumptions(lines: list[str], assumptions: list[str]) -> None:
    lines.append("")
    lines.append("assumptions")
    lines.extend(f"  - {a}" for a in assumptions)


def _memory_table(lines: list[str], components: dict[str, float], capacity: float) -> None:
    for name, value in components.items():
        lines.append(f"  {name:<20} {gib(value):8.2f} GiB")
    total = sum(components.values())
    lines.append(
        f"  {'total':<20} {gib(total):8.2f} GiB of {gib(capacity):.1f} GiB usable"
        + ("" if total <= capacity else "  (DOES NOT FIT)")
    )


def render_training(plan: TrainingPlan, *, with_assumptions: bool = True) -> str:
    rl, t = plan.resolved, plan.time
    lay = rl.layout
    worst = plan.worst
    bubble_pct = (lay.pp - 1) / (lay.v * rl.num_microbatches) * 100
    lines = [
        f"model {plan.model.name} ({plan.model.num_parameters() / 1e9:.2f}B params) on "
        f"{rl.gpus} x {plan.hw.name}",
        f"layout {lay.short()}  dp={rl.dp}  micro-batches={rl.num_microbatches}  "
        f"seq={lay.seq_len}  global batch={lay.global_batch}  layers/rank="
        f"{_layers(rl.layers_per_rank)}",
        "",
        f"step time        {t.step_s:10.3f} s",
        f"MFU              {t.mfu * 100:10.1f} %",
        f"TFLOP/s per GPU  {t.tflops_per_gpu:10.1f}",
        f"tokens/s per GPU {lay.global_batch * lay.seq_len / t.step_s / rl.gpus:10.1f}",
        "",
        "time breakdown",
        f"  compute          {t.compute_s:10.3f} s",
        f"  TP comm          {t.tp_comm_s:10.3f} s",
        f"  pipeline bubble  {t.bubble_s:10.3f} s  ({bubble_pct:.1f}% of busy time; + p2p fill "
        f"{t.p2p_fill_s:.3f} s)",
        f"  DP comm exposed  {t.dp_comm_s:10.3f} s  (wire {t.dp_comm_wire_s:.3f} s)",
        f"  optimizer        {t.optimizer_s:10.3f} s",
        "",
        f"memory per GPU (worst: pipeline rank {worst.rank}; by rank: "
        f"{_ranks([gib(r.total) for r in plan.memory])} GiB)",
    ]
    _memory_table(lines, worst.components(), plan.capacity)
    gaps = codebase_gaps(lay)
    if gaps:
        lines.append("")
        lines.append(
            "needs megatron-core features this codebase does not wire up yet: " + "; ".join(gaps)
        )
    if with_assumptions:
        _assumptions(lines, plan.assumptions)
    return "\n".join(lines)


def render_rlvr(plan: RLVRPlan, *, with_assumptions: bool = True) -> str:
    g, ro = plan.generation, plan.rollout
    mode = "async, one-step off-policy" if plan.settings.is_async else "synchronous"
    lines = [
        f"RLVR {plan.model.name} on {plan.gpus} x {plan.hw.name}: {ro.rollout_gpus} rollout GPUs "
        f"({ro.num_engines} vLLM engine(s) at TP {ro.vllm_tp}) + {plan.train_gpus} training GPUs",
        f"policy layout {_policy_layout(plan)}",
        f"batch {ro.num_sequences} sequences, prompt {ro.prompt_len} + response "
        f"{ro.response_len} tokens, PPO epochs {plan.settings.ppo_epochs}, {mode}",
        "",
        f"step time        {plan.step_s:10.1f} s  ({plan.step_s / 60:.1f} min)",
        f"  generation     {g.generation_s:10.1f} s  (prefill {g.prefill_s:.1f} s, decode "
        f"{g.decode_s:.1f} s: {g.waves:.2f} waves x {ro.response_len} steps x "
        f"{g.decode_step_s * 1e3:.1f} ms)",
        f"  weight sync    {plan.weight_sync_s:10.1f} s  ({ro.weight_sync})",
        f"  training       {plan.training_s:10.1f} s",
    ]
    lines += [f"    {k:<18} {v:10.1f} s" for k, v in plan.phases.items()]
    lines += [
        f"MFU (all GPUs)   {plan.mfu * 100:10.1f} %",
        f"generated tokens/s {g.tokens_per_s:8.0f}",
        "",
        f"memory per training GPU (worst: pipeline rank {plan.train_memory_rank})",
    ]
    _memory_table(lines, plan.train_memory, plan.capacity)
    m = plan.rollout_mem
    lines += [
        "memory per rollout GPU (vLLM)",
        f"  weights              {gib(m.weights):8.2f} GiB",
        f"  KV cache             {gib(m.kv_cache):8.2f} GiB  ({m.kv_tokens:,.0f} tokens/engine,"
        f" {m.concurrent_sequences} sequences at once)",
        f"  workspace            {gib(m.workspace):8.2f} GiB",
    ]
    if with_assumptions:
        _assumptions(lines, plan.assumptions)
    return "\n".join(lines)


def render_search(result: SearchResult, *, rlvr: bool) -> str:
    lines = [
        f"search: {result.evaluated} layouts evaluated, {result.fitting} fit; fastest "
        f"{len(result.plans)}:",
    ]
    if not result.plans:
        lines.append("  (none fits: raise the GPU count, shorten sequences or allow recompute)")
        return "\n".join(lines)
    if rlvr:
        lines.append(
            f"  {'#':>2} {'step s':>8} {'gen s':>7} {'sync s':>6} {'train s':>8} "
            f"{'rollout':>12} {'mem GiB':>8}  layout"
        )
        for i, p in enumerate(result.plans, 1):
            ro = p.rollout
            lines.append(
                f"  {i:>2} {p.step_s:8.1f} {p.generation.generation_s:7.1f} "
                f"{p.weight_sync_s:6.1f} {p.training_s:8.1f} "
                f"{f'{ro.rollout_gpus}@TP{ro.vllm_tp}':>12} "
                f"{gib(sum(p.train_memory.values())):8.1f}  {_policy_layout(p)}"
            )
    else:
        lines.append(f"  {'#':>2} {'step s':>9} {'MFU %':>6} {'TFLOP/s':>8} {'mem GiB':>8}  layout")
        for i, p in enumerate(result.plans, 1):
            lines.append(
                f"  {i:>2} {p.time.step_s:9.3f} {p.time.mfu * 100:6.1f} "
                f"{p.time.tflops_per_gpu:8.1f} {gib(p.worst.total):8.1f}  "
                f"{p.resolved.layout.short()} dp={p.resolved.dp}"
            )
    return "\n".join(lines)


def _policy_layout(plan: RLVRPlan) -> str:
    if plan.settings.engine == "zero3":
        return f"DeepSpeed ZeRO-3 over {plan.train_gpus} GPUs"
    return f"{plan.policy.layout.short()} dp={plan.policy.dp}"


def _layers(per_rank: tuple[int, ...]) -> str:
    if len(set(per_rank)) == 1:
        return f"{per_rank[0]} x {len(per_rank)}"
    return ",".join(map(str, per_rank))


def _ranks(values: list[float]) -> str:
    if len(values) <= 6:
        return ", ".join(f"{v:.1f}" for v in values)
    return f"{values[0]:.1f}, {values[1]:.1f}, ..., {values[-1]:.1f}"
