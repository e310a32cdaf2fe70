"""RolloutConfig: the vLLM rollout engines, one class for every user of them.

It is the recipe's ``rollout:`` section, what :class:`megatron_tulu.rollout.RolloutEngine` takes,
and what the planner (``tools/planner``) and the launch dry run read the engine layout from.
Pure Python: no vLLM, no torch.

Three fields are not recipe keys (``model_dir``, ``max_model_len``, ``seed``; see
``NOT_RECIPE_KEYS`` in :mod:`megatron_tulu.config.recipe`): whoever starts the engine knows
them. The RLVR stage sets them with :func:`engine_config` (the exported policy, prompt + response
tokens, the run's seed); tools that start an engine themselves pass them directly.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import TYPE_CHECKING

from megatron_tulu.config._validate import (
    check_bool,
    check_choice,
    check_float,
    check_int,
    check_optional_str,
    check_str,
)
from megatron_tulu.config.model import ModelConfig

if TYPE_CHECKING:
    from megatron_tulu.config.recipe import RecipeConfig

ENGINE_DTYPES = ("float32", "bfloat16")
PLACEMENTS = ("local", "external")


@dataclass(kw_only=True)
class RolloutConfig:
    """vLLM engine settings, independent of the trainer's parallel layout.

    ``placement="local"``: ``num_engines`` engines of ``vllm_tp`` workers each are started by
    trainer global rank 0, in its own process tree (one node, CPU runs, tests).
    ``placement="external"``: the launcher starts each engine as its own process(es) on the
    rollout GPUs/nodes (``python -m megatron_tulu.rollout.host``, see docs/rollout.md); they
    announce themselves in ``rendezvous_dir`` and trainer rank 0 only holds a thin client.
    Either way prompts are shared round-robin between the engines. ``multiprocess=True``
    (vLLM's default) runs each engine core in its own process, so a crashing engine raises
    :class:`~megatron_tulu.rollout.types.RolloutEngineDied` in the trainer instead of taking it
    down; ``False`` runs the engine inside the calling process (~10x faster start; tests and
    debugging; a single engine only).
    """

    # Engine inputs (not recipe keys): the HF directory the engine starts from (config.json +
    # safetensors), its context length and its sampling seed.
    model_dir: str | None = None
    max_model_len: int = 4096
    seed: int = 0
    vllm_tp: int = 1  # the engine's tensor parallel size, independent of the trainer's
    num_engines: int = 1
    engine_gpus: int = 0  # GPUs set aside for vLLM on a cluster (0: beside the trainer, CPU)
    dtype: str = "float32"
    kv_cache_gib: float | None = 1.0  # KV cache size (CPU); None: use gpu_memory_utilization
    gpu_memory_utilization: float = 0.9
    enforce_eager: bool = True
    enable_prefix_caching: bool = True
    multiprocess: bool = True
    max_num_seqs: int = 256
    # Where the engines run: "local" (started by trainer rank 0) or "external" (engine hosts
    # started by the launcher, found through rendezvous_dir; default <training.output_dir>/
    # engines, filled in by engine_config); connect_timeout_s: how long rank 0 waits for them.
    placement: str = "local"
    rendezvous_dir: str | None = None
    connect_timeout_s: float = 1800.0
    # Weight sync: rendezvous address of trainer rank 0 ("auto" for external engines: the
    # MT_SYNC_HOST environment variable, else this node's address on the route to the first
    # engine), bucket size for packing small tensors into one broadcast, and the limit on any
    # one blocking step.
    sync_host: str = "127.0.0.1"
    bucket_bytes: int = 32 * 2**20
    # Resharded push: each engine TP rank receives only its slice of each tensor, point to
    # point (bytes sent = the model once per engine), instead of a broadcast of whole tensors.
    resharded_push: bool = False
    sync_timeout_s: float = 600.0
    # How long an engine may take to answer anything before it counts as hung (generate of a
    # big batch can be long: this is a last resort; death is detected within ~1 s regardless).
    call_timeout_s: float = 3600.0

    def __post_init__(self) -> None:
        check_optional_str("model_dir", self.model_dir)
        check_int("max_model_len", self.max_model_len, minimum=2)
        check_int("seed", self.seed, minimum=0)
        check_int("vllm_tp", self.vllm_tp, minimum=1)
        check_int("num_engines", self.num_engines, minimum=1)
        check_int("engine_gpus", self.engine_gpus, minimum=0)
        check_choice("dtype", self.dtype, ENGINE_DTYPES)
        if self.kv_cache_gib is not None:
            self.kv_cache_gib = check_float("kv_cache_gib", self.kv_cache_gib, gt=0.0)
        self.gpu_memory_utilization = check_float(
            "gpu_memory_utilization", self.gpu_memory_utilization, gt=0.0, le=1.0
        )
        check_bool("enforce_eager", self.enforce_eager)
        check_bool("enable_prefix_caching", self.enable_prefix_caching)
        check_bool("multiprocess", self.multiprocess)
        check_int("max_num_seqs", self.max_num_seqs, minimum=1)
        check_choice("placement", self.placement, PLACEMENTS)
        check_optional_str("rendezvous_dir", self.rendezvous_dir)
        self.connect_timeout_s = check_float("connect_timeout_s", self.connect_timeout_s, gt=0.0)
        check_str("sync_host", self.sync_host)
        check_int("bucket_bytes", self.bucket_bytes, minimum=0)
        check_bool("resharded_push", self.resharded_push)
        self.sync_timeout_s = check_float("sync_timeout_s", self.sync_timeout_s, gt=0.0)
        self.call_timeout_s = check_float("call_timeout_s", self.call_timeout_s, gt=0.0)
        if self.placement == "local" and self.num_engines > 1 and not self.multiprocess:
            raise ValueError(
                f"num_engines ({self.num_engines}) > 1 needs multiprocess engines but "
                "multiprocess is false: set multiprocess=true, or num_engines=1 (or "
                "placement=external: each engine host then holds one engine)"
            )
        per_engines = self.vllm_tp * self.num_engines
        if self.engine_gpus and self.engine_gpus != per_engines:
            fix = (
                f"set num_engines to {self.engine_gpus // self.vllm_tp}"
                if self.engine_gpus % self.vllm_tp == 0
                else f"use a multiple of vllm_tp ({self.vllm_tp}) GPUs"
            )
            raise ValueError(
                f"rollout.engine_gpus ({self.engine_gpus}) must equal vllm_tp ({self.vllm_tp}) "
                f"x num_engines ({self.num_engines}) = {per_engines}: every rollout GPU "
                f"belongs to exactly one engine; {fix}"
            )

    @property
    def group_size(self) -> int:
        """Ranks in the weight-sync group: trainer rank 0 plus every worker of every engine."""
        return 1 + self.num_engines * self.vllm_tp

    def check_model(self, model: ModelConfig) -> None:
        """vLLM's tensor-parallel rule: ``vllm_tp`` divides the attention heads, and divides the
        KV heads or is a multiple of them (a KV head is then replicated)."""
        tp, kv, heads = self.vllm_tp, model.num_query_groups, model.num_attention_heads
        if heads % tp or (kv % tp and tp % kv):
            raise ValueError(
                f"vllm tp ({tp}) must divide the attention heads ({heads}) and either divide "
                f"or be a multiple of the KV heads ({kv}) of model {model.name!r}"
            )


def default_rendezvous_dir(recipe: RecipeConfig) -> str:
    """Where external engine hosts announce themselves unless ``rollout.rendezvous_dir`` says
    otherwise: ``<training.output_dir>/engines``."""
    return f"{recipe.training.output_dir.rstrip('/')}/engines"


def engine_config(recipe: RecipeConfig, model_dir: str | None, *, on_gpu: bool) -> RolloutConfig:
    """The RLVR stage's engine: the recipe's rollout section with the engine inputs filled in
    (context = ``rlvr.max_prompt_tokens + max_response_tokens``, seed = ``training.seed``,
    the rendezvous directory). On a GPU the KV cache is sized by ``gpu_memory_utilization``
    (``kv_cache_gib`` is the CPU one). Engine hosts (``rollout.host``) and the trainer's client
    both call it, so both see the same engine."""
    ro, rl = recipe.rollout, recipe.rlvr
    return dataclasses.replace(
        ro,
        model_dir=model_dir,
        rendezvous_dir=ro.rendezvous_dir or default_rendezvous_dir(recipe),
        max_model_len=rl.max_prompt_tokens + rl.max_response_tokens,
        seed=recipe.training.seed,
        kv_cache_gib=None if on_gpu else ro.kv_cache_gib,
    )
