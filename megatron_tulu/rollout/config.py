"""RolloutConfig lives in :mod:`megatron_tulu.config.rollout` (the recipe's ``rollout:`` section
is the engine's config); re-exported here beside the engine that takes it."""

from megatron_tulu.config.rollout import RolloutConfig

__all__ = ["RolloutConfig"]
