"""RolloutConfig: how the vLLM rollout engine(s) are started (pure Python, no vLLM import)."""

from __future__ import annotations

from dataclasses import dataclass

from megatron_tulu.config._validate import (
    check_bool,
    check_choice,
    check_float,
    check_int,
    check_str,
)

ENGINE_DTYPES = ("float32", "bfloat16")


@dataclass(kw_only=True)
class RolloutConfig:
    """vLLM engine settings, independent of the trainer's parallel layout.

    ``num_engines`` engines of ``tensor_parallel_size`` workers each are started by trainer
    global rank 0; prompts are shared round-robin between them. ``multiprocess=True`` (vLLM's
    default) runs each engine core in its own process, so a crashing engine raises
    :class:`~megatron_tulu.rollout.types.RolloutEngineDied` in the trainer instead of taking it
    down; ``False`` runs the engine inside the calling process (~10x faster start; tests and
    debugging; a single engine only).
    """

    model_dir: str  # HF directory the engine starts from (config.json + safetensors)
    tensor_parallel_size: int = 1
    num_engines: int = 1
    dtype: str = "bfloat16"
    max_model_len: int = 4096
    seed: int = 0
    kv_cache_gib: float | None = 1.0  # KV cache size; None: use gpu_memory_utilization (GPU)
    gpu_memory_utilization: float = 0.5
    enforce_eager: bool = True
    enable_prefix_caching: bool = True
    multiprocess: bool = True
    max_num_seqs: int = 256
    # Weight sync: rendezvous address of trainer rank 0 (engines run on its node), bucket size
    # for packing small tensors into one broadcast, and the limit on any one blocking step.
    sync_host: str = "127.0.0.1"
    bucket_bytes: int = 32 * 2**20
    sync_timeout_s: float = 600.0
    # How long an engine may take to answer anything before it counts as hung (generate of a
    # big batch can be long: this is a last resort; death is detected within ~1 s regardless).
    call_timeout_s: float = 3600.0

    def __post_init__(self) -> None:
        check_str("model_dir", self.model_dir)
        check_int("tensor_parallel_size", self.tensor_parallel_size, minimum=1)
        check_int("num_engines", self.num_engines, minimum=1)
        check_choice("dtype", self.dtype, ENGINE_DTYPES)
        check_int("max_model_len", self.max_model_len, minimum=2)
        check_int("seed", self.seed, minimum=0)
        if self.kv_cache_gib is not None:
            self.kv_cache_gib = check_float("kv_cache_gib", self.kv_cache_gib, gt=0.0)
        self.gpu_memory_utilization = check_float(
            "gpu_memory_utilization", self.gpu_memory_utilization, gt=0.0, le=1.0
        )
        check_bool("enforce_eager", self.enforce_eager)
        check_bool("enable_prefix_caching", self.enable_prefix_caching)
        check_bool("multiprocess", self.multiprocess)
        check_int("max_num_seqs", self.max_num_seqs, minimum=1)
        check_str("sync_host", self.sync_host)
        check_int("bucket_bytes", self.bucket_bytes, minimum=0)
        self.sync_timeout_s = check_float("sync_timeout_s", self.sync_timeout_s, gt=0.0)
        self.call_timeout_s = check_float("call_timeout_s", self.call_timeout_s, gt=0.0)
        if self.num_engines > 1 and not self.multiprocess:
            raise ValueError(
                f"num_engines ({self.num_engines}) > 1 needs multiprocess engines but "
                "multiprocess is false: set multiprocess=true, or num_engines=1"
            )

    @property
    def group_size(self) -> int:
        """Ranks in the weight-sync group: trainer rank 0 plus every worker of every engine."""
        return 1 + self.num_engines * self.tensor_parallel_size
