"""Training-loop config (steps, sequence length, precision, recompute, memory, paths).

``offload_reference``: RLVR's frozen reference policy lives in host memory and is copied to the
device only for its forward pass each step (then freed again): its bf16 weights (2 bytes per
parameter on the policy's layout) leave the device between reference passes, at the cost of one
host -> device copy per RL step (:func:`megatron_tulu.engine.build.on_device`).
"""

from __future__ import annotations

from dataclasses import dataclass

from megatron_tulu.config._validate import (
    check_bool,
    check_choice,
    check_int,
    check_optional_str,
    check_str,
)

PRECISIONS = ("fp32", "bf16")
STAGES = ("pretrain", "sft", "dpo", "rlvr")
RECOMPUTE_MODES = ("none", "selective", "full")
ATTENTION_BACKENDS = ("auto", "local", "sdpa")


@dataclass(kw_only=True)
class TrainingConfig:
    """Run length, numerics and I/O locations."""

    stage: str = "pretrain"  # pretrain (plain text), sft (conversations) or dpo (pairs)
    train_steps: int = 10
    seq_length: int = 128
    seed: int = 1234
    precision: str = "fp32"
    recompute: str = "none"  # activation recomputation
    # Core attention without Transformer Engine: "auto" (SDPA on CUDA or with parallel.cp > 1,
    # megatron's own on CPU otherwise), "local" (megatron's DotProductAttention; no context
    # parallelism) or "sdpa" (models/sdpa_attention.py). With TE installed on CUDA, TE's
    # attention is used whatever this says.
    attention: str = "auto"
    log_interval: int = 1
    output_dir: str = "runs/default"
    data_path: str | None = None
    init_from_hf: str | None = None  # local HF directory to initialise weights from
    init_from_native: str | None = None  # native checkpoint root: initial weights only
    checkpoint_dir: str | None = None  # where saves go; None means {output_dir}/checkpoints
    save_interval: int = 0  # save every N steps and at the end; 0 saves nothing
    keep_last: int = 3  # committed checkpoints kept (0 keeps all)
    resume: str = "auto"  # auto (latest if any), latest (must exist), none, or a step number
    load_optimizer: bool = True  # false: resume weights + position, fresh optimizer
    exit_interval: int = 0  # stop (saving first) after N steps in this invocation; 0: never
    offload_reference: bool = False  # RLVR reference weights in host memory between its passes
    # The output layer runs inside the training pass's loss, fused with the log-probs
    # (models/output_head.py, ops.linear_token_loss): no [tokens, V] logits or logits gradient.
    # SFT, pretraining, DPO with dpo.forward=separate, RLVR's policy loss (PPO and GRPO).
    fused_output: bool = False

    def __post_init__(self) -> None:
        check_choice("stage", self.stage, STAGES)
        check_int("train_steps", self.train_steps, minimum=1)
        check_int("seq_length", self.seq_length, minimum=1)
        check_int("seed", self.seed, minimum=0)
        check_choice("precision", self.precision, PRECISIONS)
        check_choice("recompute", self.recompute, RECOMPUTE_MODES)
        check_choice("attention", self.attention, ATTENTION_BACKENDS)
        check_int("log_interval", self.log_interval, minimum=1)
        check_str("output_dir", self.output_dir)
        check_optional_str("data_path", self.data_path)
        check_optional_str("init_from_hf", self.init_from_hf)
        check_optional_str("init_from_native", self.init_from_native)
        check_optional_str("checkpoint_dir", self.checkpoint_dir)
        check_int("save_interval", self.save_interval, minimum=0)
        check_int("keep_last", self.keep_last, minimum=0)
        check_bool("load_optimizer", self.load_optimizer)
        check_int("exit_interval", self.exit_interval, minimum=0)
        check_bool("offload_reference", self.offload_reference)
        check_bool("fused_output", self.fused_output)
        self.resume = str(self.resume)
        if self.resume not in ("auto", "latest", "none") and not self.resume.isdigit():
            raise ValueError(
                f"resume ({self.resume!r}) must be 'auto', 'latest', 'none' or a step number"
            )
        if self.init_from_hf is not None and self.init_from_native is not None:
            raise ValueError(
                f"init_from_hf ({self.init_from_hf!r}) and init_from_native "
                f"({self.init_from_native!r}) are both set: give one source of initial weights"
            )

    def resolved_checkpoint_dir(self) -> str:
        return self.checkpoint_dir or f"{self.output_dir.rstrip('/')}/checkpoints"
