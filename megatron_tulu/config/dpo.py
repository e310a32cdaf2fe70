"""DPO stage settings (Tülu 3 stage 2: length-normalised DPO, beta 5)."""

from __future__ import annotations

from dataclasses import dataclass

from megatron_tulu.config._validate import check_choice, check_float, check_optional_str

DPO_LOSS_TYPES = ("dpo_norm", "sigmoid")


@dataclass(kw_only=True)
class DPOConfig:
    beta: float = 5.0
    loss_type: str = "dpo_norm"
    # Reference log-probs are computed once, with the initial weights, before the first step,
    # and cached here (default {training.output_dir}/reference_cache).
    reference_cache_dir: str | None = None

    def __post_init__(self) -> None:
        self.beta = check_float("beta", self.beta, gt=0.0)
        check_choice("loss_type", self.loss_type, DPO_LOSS_TYPES)
        check_optional_str("reference_cache_dir", self.reference_cache_dir)
