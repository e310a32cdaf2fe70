"""DPO stage settings (Tülu 3 stage 2: length-normalised DPO, beta 5)."""

from __future__ import annotations

from dataclasses import dataclass

from megatron_tulu.config._validate import check_choice, check_float, check_optional_str

DPO_LOSS_TYPES = ("dpo_norm", "sigmoid")
DPO_FORWARD_MODES = ("concat", "separate")


@dataclass(kw_only=True)
class DPOConfig:
    beta: float = 5.0
    loss_type: str = "dpo_norm"
    # Reference log-probs are computed once, with the initial weights, before the first step,
    # and cached here (default {training.output_dir}/reference_cache).
    reference_cache_dir: str | None = None
    # concat: chosen and rejected rows of a pair in one micro-batch (one forward; micro_batch_size
    # even). separate: chosen and rejected in different micro-batches (two forwards, as Tülu 3;
    # any micro_batch_size, e.g. 1, for half the activation memory). The pair loss couples both
    # sides, so separate mode first runs a forward-only pass for the policy log-probs and then
    # back-propagates each side with its exact loss derivative: ~1/3 more compute, same update.
    forward: str = "concat"

    def __post_init__(self) -> None:
        self.beta = check_float("beta", self.beta, gt=0.0)
        check_choice("loss_type", self.loss_type, DPO_LOSS_TYPES)
        check_optional_str("reference_cache_dir", self.reference_cache_dir)
        check_choice("forward", self.forward, DPO_FORWARD_MODES)
