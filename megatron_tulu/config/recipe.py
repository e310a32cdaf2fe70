"""A full run recipe: model + parallel + optimizer + training, loaded from YAML plus overrides.

YAML layout (every section and key optional)::

    model:
      preset: llama3.1-8b      # start from a preset; other keys override its fields
      num_layers: 2
    parallel: {tp: 2, pp: 1}
    optimizer: {lr: 5.0e-6, lr_decay_style: linear}
    training: {train_steps: 100, precision: bf16}

A missing or empty ``model`` section means ``preset: tiny``. A ``model`` section without
``preset`` must give every required ModelConfig field. Command-line overrides have the form
``section.field=value`` (``parallel.tp=2``, ``model.preset=small``, ``training.data_path=null``)
and are applied on top of the file before anything is built.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from megatron_tulu.config._coerce import coerce_value, field_types
from megatron_tulu.config._validate import ConfigTypeError, fmt_set
from megatron_tulu.config.data import DataConfig
from megatron_tulu.config.dpo import DPOConfig
from megatron_tulu.config.model import MODEL_PRESETS, ModelConfig, model_preset
from megatron_tulu.config.optim import OptimizerConfig
from megatron_tulu.config.parallel import ParallelConfig, ParallelDims
from megatron_tulu.config.rlvr import RLVRConfig, ValueModelConfig
from megatron_tulu.config.rollout import RolloutConfig
from megatron_tulu.config.training import TrainingConfig

DEFAULT_MODEL_PRESET = "tiny"
SECTIONS: dict[str, type] = {
    "model": ModelConfig,
    "parallel": ParallelConfig,
    "optimizer": OptimizerConfig,
    "training": TrainingConfig,
    "data": DataConfig,
    "dpo": DPOConfig,
    "rlvr": RLVRConfig,
    "value": ValueModelConfig,
    "rollout": RolloutConfig,
}
# Keys recipes once had, or that look like recipe keys but are not: a clear error naming the
# key to use instead of "unknown field".
NOT_RECIPE_KEYS: dict[str, str] = {
    "rlvr.prompt_file": "rlvr.prompt_file was removed: the RL prompts file is data.train_file "
    "(with data.tokenizer), as for SFT and DPO; write data.train_file=PATH instead",
    "rollout.weight_sync": "rollout.weight_sync was removed (nothing read it: the policy's "
    "weights always reach the engines by one broadcast, gloo on CPU and NCCL on GPU); delete it",
    "rollout.model_dir": "rollout.model_dir is not a recipe key: the RLVR stage starts the "
    "engine from the policy's initial weights (training.init_from_hf or init_from_native)",
    "rollout.max_model_len": "rollout.max_model_len is not a recipe key: the engine's context "
    "is rlvr.max_prompt_tokens + rlvr.max_response_tokens",
    "rollout.seed": "rollout.seed is not a recipe key: the engine samples with training.seed",
}


@dataclass(kw_only=True)
class RecipeConfig:
    """Everything needed to launch a run. Cross-section checks run in ``__post_init__``."""

    model: ModelConfig = field(default_factory=lambda: model_preset(DEFAULT_MODEL_PRESET))
    parallel: ParallelConfig = field(default_factory=ParallelConfig)
    optimizer: OptimizerConfig = field(default_factory=OptimizerConfig)
    training: TrainingConfig = field(default_factory=TrainingConfig)
    data: DataConfig = field(default_factory=DataConfig)
    dpo: DPOConfig = field(default_factory=DPOConfig)
    rlvr: RLVRConfig = field(default_factory=RLVRConfig)
    value: ValueModelConfig = field(default_factory=ValueModelConfig)
    rollout: RolloutConfig = field(default_factory=RolloutConfig)

    def __post_init__(self) -> None:
        for name, cls in SECTIONS.items():
            value = getattr(self, name)
            if not isinstance(value, cls):
                raise ConfigTypeError(
                    f"RecipeConfig.{name} ({value!r}) must be a {cls.__name__}: "
                    f"build it with {cls.__name__}(...)"
                )
        m, p, t = self.model, self.parallel, self.training
        if t.seq_length > m.max_position_embeddings:
            raise ValueError(
                f"training.seq_length ({t.seq_length}) exceeds model.max_position_embeddings "
                f"({m.max_position_embeddings}) of model {m.name!r}: lower training.seq_length "
                f"or raise model.max_position_embeddings"
            )
        if t.fused_output and t.stage == "dpo" and self.dpo.forward != "separate":
            raise ValueError(
                f"training.fused_output (true) with dpo.forward {self.dpo.forward!r}: the pair "
                "loss of one forward is not linear in the log-probs; set dpo.forward=separate "
                "(two forwards: the coefficients first, then the fused pass) or fused_output=false"
            )
        p.check_model(m)
        p.check_seq_length(t.seq_length, name="training.seq_length")
        self.optimizer.warmup_steps(t.train_steps)

    def resolve_parallel(self, world_size: int) -> ParallelDims:
        """The trainer's layout: ``self.parallel.resolve(world_size, self.model)``, refusing
        what the stages cannot run yet (the planner plans it all the same): context
        parallelism with megatron's local attention, or with PPO's value model on its own
        groups (docs/architecture.md, "Context parallelism")."""
        cp, t = self.parallel.cp, self.training
        own_value_groups = self.rlvr.algorithm == "ppo" and self.value.tp is not None
        if cp > 1 and t.stage == "rlvr" and own_value_groups:
            raise ValueError(
                f"parallel.cp ({cp}) > 1 with value.tp ({self.value.tp}): PPO's value model on "
                f"its own groups has no context parallelism (its losses reduce over the "
                f"trainer's cp group); leave value.tp unset so it runs on the trainer's layout "
                f"(with cp), or set parallel.cp to 1"
            )
        if cp > 1 and t.attention == "local":
            raise ValueError(
                f"parallel.cp ({cp}) > 1 with training.attention 'local': megatron-core's "
                f"DotProductAttention has no context parallelism; set training.attention to "
                f"'sdpa' or 'auto' (SDPA without Transformer Engine, TE's attention with it)"
            )
        return self.parallel.resolve(world_size, self.model)


def parse_override(text: str) -> tuple[str, str, str]:
    """Split ``"section.field=value"`` into (section, field, value), checking the names."""
    key, sep, value = text.partition("=")
    section, dot, name = key.strip().partition(".")
    if not sep or not dot or not section or not name or "." in name:
        raise ValueError(
            f"override {text!r} is not of the form section.field=value: write e.g. "
            f"parallel.tp=2 or optimizer.lr=3e-4"
        )
    _check_key(section, name, f"override {text!r}")
    return section, name, value


def _valid_fields(section: str) -> list[str]:
    names = [n for n in field_types(SECTIONS[section]) if f"{section}.{n}" not in NOT_RECIPE_KEYS]
    return ["preset", *names] if section == "model" else names


def _check_key(section: str, name: str | None, where: str) -> None:
    if section not in SECTIONS:
        raise ValueError(
            f"unknown section {section!r} in {where}: valid sections are {fmt_set(SECTIONS)}"
        )
    if name is not None and f"{section}.{name}" in NOT_RECIPE_KEYS:
        raise ValueError(f"{NOT_RECIPE_KEYS[f'{section}.{name}']} (in {where})")
    if name is not None and name not in _valid_fields(section):
        raise ValueError(
            f"unknown field {name!r} in section {section!r} of {where}: valid fields are "
            f"{fmt_set(_valid_fields(section), limit=100)}"
        )


def _build_section(section: str, raw: Mapping[str, Any], where: str) -> Any:
    cls = SECTIONS[section]
    types_ = field_types(cls)
    # "preset" is the model section's own key (not a ModelConfig field); the value section has a
    # real preset field, kept like any other.
    values = {
        k: coerce_value(f"{section}.{k}", v, types_[k])
        for k, v in raw.items()
        if not (section == "model" and k == "preset")
    }
    if section != "model":
        return cls(**values)
    preset = raw.get("preset")
    if preset is not None:
        return model_preset(coerce_value("model.preset", preset, str), **values)
    required = [
        f.name
        for f in dataclasses.fields(ModelConfig)
        if f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING
    ]
    missing = [k for k in required if k not in values]
    if missing:
        raise ValueError(
            f"model section of {where} has no preset and is missing required field(s) "
            f"{fmt_set(missing)}: add 'preset: NAME' (one of {fmt_set(sorted(MODEL_PRESETS))}) "
            f"or give all of them"
        )
    return ModelConfig(**values)


def recipe_from_dict(
    data: Mapping[str, Any] | None,
    overrides: Sequence[str] = (),
    *,
    source: str = "recipe dict",
) -> RecipeConfig:
    """Build a RecipeConfig from nested section dicts plus ``section.field=value`` overrides.

    ``source`` names where ``data`` came from (e.g. a file path) in error messages.
    """
    if data is None:
        data = {}
    if not isinstance(data, Mapping):
        raise ConfigTypeError(
            f"{source} must be a mapping of sections {fmt_set(SECTIONS)}, "
            f"got {type(data).__name__}: write 'model:', 'parallel:', ... at the top level"
        )
    raw: dict[str, dict[str, Any]] = {}
    for section, value in data.items():
        _check_key(str(section), None, source)
        body = {} if value is None else value
        if not isinstance(body, Mapping):
            raise ConfigTypeError(
                f"section {section!r} of {source} must be a mapping of field: value, "
                f"got {body!r}: write e.g. '{section}:' followed by indented 'field: value' lines"
            )
        for name in body:
            _check_key(section, str(name), source)
        raw[section] = dict(body)
    if not raw.get("model"):  # no (or an empty) model section: start from the default preset
        raw["model"] = {"preset": DEFAULT_MODEL_PRESET}
    for text in overrides:
        section, name, value = parse_override(text)
        raw.setdefault(section, {})[name] = value
    built = {s: _build_section(s, raw.get(s, {}), source) for s in SECTIONS}
    return RecipeConfig(**built)


def load_recipe(path: str | Path | None, overrides: Sequence[str] = ()) -> RecipeConfig:
    """Read a YAML recipe (or use all defaults when ``path`` is None) and apply overrides."""
    if path is None:
        return recipe_from_dict({}, overrides, source="default recipe")
    p = Path(path)
    if not p.is_file():
        what = "is a directory, not a file" if p.is_dir() else "does not exist"
        raise FileNotFoundError(
            f"recipe file {str(p)!r} {what} (resolved to {str(p.resolve())!r}): check the path"
        )
    try:
        data = yaml.safe_load(p.read_text(encoding="utf-8"))
    except yaml.YAMLError as exc:
        raise ValueError(f"recipe file {str(p)!r} is not valid YAML: {exc}") from exc
    return recipe_from_dict(data, overrides, source=f"recipe file {str(p)!r}")


def recipe_to_dict(cfg: RecipeConfig) -> dict[str, dict[str, Any]]:
    """Plain nested dict (YAML-serialisable); the model is fully expanded, with no preset key
    (nor fields that are not recipe keys: the rollout section's engine inputs)."""
    return {
        name: {
            k: v
            for k, v in dataclasses.asdict(getattr(cfg, name)).items()
            if f"{name}.{k}" not in NOT_RECIPE_KEYS
        }
        for name in SECTIONS
    }


def save_resolved(cfg: RecipeConfig, path: str | Path) -> Path:
    """Write ``recipe_to_dict(cfg)`` as YAML (creating parent dirs); returns the path."""
    p = Path(path)
    p.parent.mkdir(parents=True, exist_ok=True)
    text = yaml.safe_dump(recipe_to_dict(cfg), sort_keys=False, default_flow_style=False)
    p.write_text(
        "# Resolved megatron-tulu recipe (load with load_recipe).\n" + text, encoding="utf-8"
    )
    return p
