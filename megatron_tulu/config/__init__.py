"""Run configuration: small validated dataclasses and YAML recipes (no torch/megatron imports)."""

from megatron_tulu.config._validate import ConfigTypeError
from megatron_tulu.config.data import DataConfig
from megatron_tulu.config.dpo import DPOConfig
from megatron_tulu.config.model import MODEL_PRESETS, ModelConfig, model_preset
from megatron_tulu.config.optim import LR_DECAY_STYLES, OPTIMIZERS, OptimizerConfig
from megatron_tulu.config.parallel import ParallelConfig, ParallelDims, RankCoords, RankGrid
from megatron_tulu.config.recipe import (
    DEFAULT_MODEL_PRESET,
    SECTIONS,
    RecipeConfig,
    load_recipe,
    parse_override,
    recipe_from_dict,
    recipe_to_dict,
    save_resolved,
)
from megatron_tulu.config.rlvr import RLVRConfig, ValueModelConfig
from megatron_tulu.config.rollout import RolloutConfig, engine_config
from megatron_tulu.config.training import PRECISIONS, RECOMPUTE_MODES, TrainingConfig

__all__ = [
    "DEFAULT_MODEL_PRESET",
    "LR_DECAY_STYLES",
    "MODEL_PRESETS",
    "OPTIMIZERS",
    "PRECISIONS",
    "RECOMPUTE_MODES",
    "SECTIONS",
    "ConfigTypeError",
    "DPOConfig",
    "DataConfig",
    "ModelConfig",
    "OptimizerConfig",
    "ParallelConfig",
    "ParallelDims",
    "RLVRConfig",
    "RankCoords",
    "RankGrid",
    "RecipeConfig",
    "RolloutConfig",
    "TrainingConfig",
    "ValueModelConfig",
    "engine_config",
    "load_recipe",
    "model_preset",
    "parse_override",
    "recipe_from_dict",
    "recipe_to_dict",
    "save_resolved",
]
