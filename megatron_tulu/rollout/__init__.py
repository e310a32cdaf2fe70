"""vLLM rollouts for RLVR: the engine (owned by trainer rank 0) and weight pushes from any
trainer layout.

Importing this package imports neither vLLM nor megatron-core (each is imported on use), so
every trainer rank can import it.
"""

from megatron_tulu.rollout.config import RolloutConfig
from megatron_tulu.rollout.engine import RolloutEngine
from megatron_tulu.rollout.policy_sync import (
    iter_hf_dir,
    push_policy_weights,
    stream_policy_hf_weights,
)
from megatron_tulu.rollout.types import (
    RolloutEngineDied,
    RolloutError,
    Sample,
    SyncStats,
    WeightSyncError,
)

__all__ = [
    "RolloutConfig",
    "RolloutEngine",
    "RolloutEngineDied",
    "RolloutError",
    "Sample",
    "SyncStats",
    "WeightSyncError",
    "iter_hf_dir",
    "push_policy_weights",
    "stream_policy_hf_weights",
]
