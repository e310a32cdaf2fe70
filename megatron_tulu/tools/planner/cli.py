"""Command line of the planner (``tools/plan.py``).

Exit codes: 0 planned (and fits), 2 invalid input (a layout that does not divide, an unknown
model...), 3 does not fit in memory (the message names the overflowing component). A layout
that does not fit is still planned: its step time and breakdown are printed, under a warning.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from megatron_tulu.config import MODEL_PRESETS, ModelConfig, model_preset
from megatron_tulu.tools.planner.fit import DEFAULT_RESERVED_GIB, DoesNotFit
from megatron_tulu.tools.planner.hardware import HARDWARE, get_hardware
from megatron_tulu.tools.planner.layout import (
    GRAD_DTYPES,
    KERNELS,
    PRECISIONS,
    RECOMPUTE,
    PlanError,
    TrainLayout,
)
from megatron_tulu.tools.planner.report import render_rlvr, render_search, render_training
from megatron_tulu.tools.planner.rlvr import ENGINES, RLVRSettings, plan_rlvr
from megatron_tulu.tools.planner.rollout import WEIGHT_SYNC, RolloutWorkload, engines_on
from megatron_tulu.tools.planner.search import SearchSpace, search_rlvr, search_training
from megatron_tulu.tools.planner.timing import TimeOptions
from megatron_tulu.tools.planner.training_plan import plan_training

BIG_POLICY_PARAMS = 30e9  # policies above this get the 8B value model by default


def load_model(spec: str) -> ModelConfig:
    """A preset name, or a YAML/JSON file: a recipe (its ``model`` section) or ModelConfig fields,
    either with ``preset`` plus overrides or every required field."""
    if spec in MODEL_PRESETS:
        return model_preset(spec)
    path = Path(spec)
    if not path.is_file():
        raise PlanError(
            f"--model {spec!r} is neither a preset ({', '.join(sorted(MODEL_PRESETS))}) nor a "
            "YAML/JSON file"
        )
    text = path.read_text()
    if path.suffix == ".json":
        data = json.loads(text)
    else:
        import yaml

        data = yaml.safe_load(text)
    if not isinstance(data, dict):
        raise PlanError(f"{path}: expected a mapping of model fields, got {type(data).__name__}")
    if isinstance(data.get("model"), dict):
        data = data["model"]
    data = dict(data)
    preset = data.pop("preset", None)
    try:
        if preset is not None:
            return model_preset(preset, **data)
        return ModelConfig(**{"name": path.stem, **data})
    except TypeError as exc:
        raise PlanError(f"{path}: {exc}") from None


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="plan.py",
        description="Per-GPU memory and step time of a megatron layout (or an RLVR step); "
        "--search ranks the layouts that fit.",
    )
    p.add_argument("--model", default="llama3.1-8b", help="preset name or YAML/JSON config")
    p.add_argument("--gpus", type=int, default=8, help="total GPUs (RLVR: rollout + training)")
    p.add_argument("--hardware", default="H100", choices=sorted(HARDWARE))
    p.add_argument("--tp", type=int, default=1)
    p.add_argument("--pp", type=int, default=1)
    p.add_argument("--vpp", type=int, default=None, help="virtual stages per pipeline rank")
    p.add_argument("--cp", type=int, default=1)
    p.add_argument(
        "--sp",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="sequence parallelism (default: on when tp > 1)",
    )
    p.add_argument("--micro-batch", type=int, default=1)
    p.add_argument(
        "--global-batch",
        type=int,
        default=None,
        help="sequences per step (default micro * dp); RLVR: prompts per step",
    )
    p.add_argument("--seq-len", type=int, default=4096)
    p.add_argument("--recompute", choices=RECOMPUTE, default="selective")
    p.add_argument("--distributed-optimizer", action=argparse.BooleanOptionalAction, default=True)
    p.add_argument("--precision", choices=PRECISIONS, default="bf16")
    p.add_argument(
        "--kernels",
        choices=KERNELS,
        default="te",
        help="te: Transformer Engine's spec (fused norm, flash attention); triton: the local "
        "spec as this codebase runs it on CUDA without TE (SDPA flash attention, Triton "
        "RMSNorm / SwiGLU / RoPE); local: megatron's local spec unfused (as on CPU)",
    )
    p.add_argument(
        "--uneven-pipeline",
        action="store_true",
        help="megatron's account_for_embedding/loss_in_pipeline_split",
    )
    p.add_argument(
        "--swiglu-fusion",
        action="store_true",
        help="plan a fused SwiGLU (megatron's, or the local spec's Triton one on CUDA)",
    )
    p.add_argument(
        "--fusions",
        action="store_true",
        help="plan megatron's production fusions (SwiGLU, RoPE, gradient accumulation, cross "
        "entropy), as NVIDIA's recipes run; off in this codebase",
    )
    p.add_argument(
        "--fused-output",
        action="store_true",
        help="training.fused_output: the output layer inside the loss, no full logits (SFT)",
    )
    p.add_argument("--first-stage-layers", type=int, default=None, help="uneven pipeline")
    p.add_argument("--last-stage-layers", type=int, default=None, help="uneven pipeline")
    p.add_argument(
        "--grad-reduce-dtype",
        choices=GRAD_DTYPES,
        default="fp32",
        help="gradient buffer / DP reduction dtype (optimizer.grad_reduce_dtype)",
    )
    p.add_argument(
        "--optimizer-offload",
        type=float,
        default=0.0,
        help="fraction of the optimizer state in host memory (optimizer.cpu_offload + "
        "offload_fraction); 0: none",
    )
    p.add_argument(
        "--efficiency",
        type=float,
        default=None,
        help="override the compute efficiency (fraction of peak)",
    )
    p.add_argument("--reserved-gib", type=float, default=DEFAULT_RESERVED_GIB)
    p.add_argument("--overlap-param-gather", action="store_true")
    p.add_argument("--json", action="store_true", help="print one JSON object")
    p.add_argument("--search", action="store_true", help="rank the layouts that fit")
    p.add_argument("--top", type=int, default=10)
    p.add_argument(
        "--codebase-only",
        action="store_true",
        help="search only what this codebase runs today (cp 1, even pipeline)",
    )
    r = p.add_argument_group("RLVR")
    r.add_argument("--rlvr", action="store_true")
    r.add_argument("--rollout-gpus", type=int, default=None)
    r.add_argument("--vllm-tp", type=int, default=None)
    r.add_argument("--prompt-len", type=int, default=2048)
    r.add_argument("--response-len", type=int, default=1024)
    r.add_argument("--samples-per-prompt", type=int, default=1)
    r.add_argument("--ppo-epochs", type=int, default=1)
    r.add_argument(
        "--value-model",
        default=None,
        help="preset/config, or 'none' (GRPO); default: 8B beside a >30B policy, "
        "else a copy of the policy's architecture",
    )
    r.add_argument("--value-tp", type=int, default=None)
    r.add_argument(
        "--async",
        dest="is_async",
        action="store_true",
        help="one-step off-policy: generation overlaps training",
    )
    r.add_argument("--weight-sync", choices=WEIGHT_SYNC, default="broadcast")
    r.add_argument("--engine", choices=ENGINES, default="megatron")
    r.add_argument(
        "--no-old-logprob-pass",
        action="store_true",
        help="skip the policy forward that recomputes old log-probs",
    )
    r.add_argument(
        "--offload-reference",
        action="store_true",
        help="reference weights in host memory between its passes (training.offload_reference)",
    )
    r.add_argument(
        "--minibatches",
        type=int,
        default=1,
        help="optimizer steps per PPO epoch (rollouts / parallel.global_batch_size)",
    )
    r.add_argument("--vllm-max-seqs", type=int, default=256)
    r.add_argument("--vllm-memory-utilization", type=float, default=0.9)
    return p


def _value_model(args: argparse.Namespace, model: ModelConfig) -> ModelConfig | None:
    if args.value_model is not None:
        return None if args.value_model.lower() == "none" else load_model(args.value_model)
    if model.num_parameters() > BIG_POLICY_PARAMS:
        return model_preset("llama3.1-8b")
    return model


def run(args: argparse.Namespace) -> tuple[dict[str, Any], str]:
    model = load_model(args.model)
    hw = get_hardware(args.hardware, compute_efficiency=args.efficiency)
    opts = TimeOptions(overlap_param_gather=args.overlap_param_gather)
    source = "overridden by --efficiency" if args.efficiency is not None else "calibrated"
    if args.rlvr:
        return _run_rlvr(args, model, hw, opts)
    gb = args.global_batch
    if gb is None:
        if args.search:
            raise PlanError("--search needs --global-batch (the batch is fixed while dp varies)")
        replica = args.tp * args.pp * args.cp
        gb = args.micro_batch * max(1, args.gpus // replica)
    base = _base_layout(args, global_batch=gb, seq_len=args.seq_len)
    if args.search:
        space = SearchSpace(codebase_only=args.codebase_only, uneven_pipeline=args.uneven_pipeline)
        res = search_training(
            model,
            args.gpus,
            hw,
            base,
            space=space,
            top=args.top,
            options=opts,
            reserved_gib=args.reserved_gib,
        )
        return _search_output(res, rlvr=False)
    plan = plan_training(
        model,
        base,
        args.gpus,
        hw,
        options=opts,
        reserved_gib=args.reserved_gib,
        efficiency_source=source,
    )
    return _checked(plan.to_dict(), render_training(plan), plan.check_fit)


def _base_layout(args: argparse.Namespace, *, global_batch: int, seq_len: int) -> TrainLayout:
    return TrainLayout(
        tp=args.tp,
        pp=args.pp,
        vpp=args.vpp,
        cp=args.cp,
        sequence_parallel=args.sp,
        recompute=args.recompute,
        distributed_optimizer=args.distributed_optimizer,
        micro_batch=args.micro_batch,
        global_batch=global_batch,
        seq_len=seq_len,
        precision=args.precision,
        kernels=args.kernels,
        uneven_pipeline=args.uneven_pipeline,
        swiglu_fusion=args.swiglu_fusion,
        fusions=args.fusions,
        fused_output=args.fused_output,
        first_stage_layers=args.first_stage_layers,
        last_stage_layers=args.last_stage_layers,
        grad_reduce_dtype=args.grad_reduce_dtype,
        optimizer_offload=args.optimizer_offload,
    )


def _run_rlvr(args, model, hw, opts) -> tuple[dict[str, Any], str]:
    if args.global_batch is None:
        raise PlanError("--rlvr needs --global-batch (prompts per RLVR step)")
    sequences = args.global_batch * args.samples_per_prompt
    base = _base_layout(args, global_batch=sequences, seq_len=args.prompt_len + args.response_len)
    settings = RLVRSettings(
        ppo_epochs=args.ppo_epochs,
        value_model=_value_model(args, model),
        value_tp=args.value_tp,
        recompute_old_logprobs=not args.no_old_logprob_pass,
        is_async=args.is_async,
        engine=args.engine,
        offload_reference=args.offload_reference,
        optimizer_steps_per_epoch=args.minibatches,
    )
    searching = args.search and (args.rollout_gpus is None or args.vllm_tp is None)
    if searching:  # placeholders: the search replaces the rollout GPUs and vLLM TP
        vllm_tp = args.vllm_tp or 8
        rollout_gpus = args.rollout_gpus or vllm_tp
    else:
        rollout_gpus = _required(args.rollout_gpus, "--rollout-gpus")
        vllm_tp = _required(args.vllm_tp, "--vllm-tp")
    engines = engines_on(
        rollout_gpus,
        vllm_tp,
        gpu_memory_utilization=args.vllm_memory_utilization,
        max_num_seqs=args.vllm_max_seqs,
    )
    rollout = RolloutWorkload(
        vllm=engines,
        prompt_len=args.prompt_len,
        response_len=args.response_len,
        num_sequences=sequences,
        weight_sync=args.weight_sync,
    )
    if args.search:
        space = SearchSpace(
            codebase_only=args.codebase_only,
            uneven_pipeline=args.uneven_pipeline,
            micro_batches=(1, 2, 4),
        )
        res = search_rlvr(
            model,
            args.gpus,
            hw,
            base,
            rollout,
            settings,
            rollout_gpus=None if args.rollout_gpus is None else (args.rollout_gpus,),
            vllm_tps=None if args.vllm_tp is None else (args.vllm_tp,),
            space=space,
            top=args.top,
            options=opts,
            reserved_gib=args.reserved_gib,
        )
        return _search_output(res, rlvr=True)
    plan = plan_rlvr(
        model, base, args.gpus, rollout, settings, hw, reserved_gib=args.reserved_gib, options=opts
    )
    return _checked(plan.to_dict(), render_rlvr(plan), plan.check_fit)


class PlanDoesNotFit(DoesNotFit):
    """DoesNotFit carrying the plan, so the CLI can still print its breakdown."""

    def __init__(self, message: str, out: dict[str, Any], text: str) -> None:
        super().__init__(message)
        self.out, self.text = out, text


def _checked(out: dict[str, Any], text: str, check) -> tuple[dict[str, Any], str]:
    try:
        check()
    except DoesNotFit as exc:
        raise PlanDoesNotFit(str(exc), {**out, "fits": False}, text) from None
    return out, text


def _required(value: int | None, flag: str) -> int:
    if value is None:
        raise PlanError(f"--rlvr needs {flag} (or pass --search to search it)")
    return value


def _search_output(res, *, rlvr: bool) -> tuple[dict[str, Any], str]:
    text = render_search(res, rlvr=rlvr)
    if not res.plans:
        raise DoesNotFit(
            f"does not fit: none of the {res.evaluated} layouts searched fits in memory"
        )
    best = res.plans[0]
    best_dict = best.to_dict()
    assumptions = best_dict.pop("assumptions")
    results = []
    for p in res.plans:
        d = p.to_dict()
        d.pop("assumptions")
        results.append(d)
    out = {
        **best_dict,
        "mode": "search-rlvr" if rlvr else "search",
        "evaluated": res.evaluated,
        "fitting": res.fitting,
        "results": results,
        "assumptions": assumptions,
    }
    detail = render_rlvr(best) if rlvr else render_training(best)
    return out, text + "\n\nfastest layout in detail\n" + detail


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        out, text = run(args)
    except DoesNotFit as exc:
        out = getattr(exc, "out", {"fits": False})
        if args.json:
            print(json.dumps({**out, "error": str(exc)}, indent=2))
        elif hasattr(exc, "text"):
            print(exc.text)
            step = out.get("step_time_s", float("nan"))
            print(
                f"\nWARNING: this layout does not fit; the step time above ({step:.1f} s) is "
                f"what it would take if it did. {exc}"
            )
        print(str(exc), file=sys.stderr)
        return 3
    except ValueError as exc:  # PlanError and config validation errors
        if args.json:
            print(json.dumps({"error": str(exc)}))
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(json.dumps(out, indent=2) if args.json else text)
    return 0
