"""Llama 3.1 as megatron-core's GPTModel, with the layer spec chosen at run time.

The model is written once: megatron-core's ``GPTModel`` with Llama's choices (GQA, SwiGLU,
RMSNorm, no biases, untied embeddings, RoPE theta 500000 with llama3 frequency scaling). Which
layer implementation runs is a spec decision: Transformer Engine's layers when TE imports on a
CUDA machine, megatron-core's local layers (plus our :class:`LlamaRMSNorm` and
:class:`SwiGLUMLP`, and our fused RoPE where TE is absent: ``models/rope.py``) otherwise.
"""

from __future__ import annotations

import importlib.util
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from megatron.core import parallel_state
from megatron.core.models.gpt import GPTModel
from megatron.core.models.gpt.gpt_layer_specs import get_gpt_layer_local_spec
from megatron.core.process_groups_config import ProcessGroupCollection
from megatron.core.transformer.module import MegatronModule
from megatron.core.transformer.spec_utils import ModuleSpec
from megatron.core.transformer.transformer_block import (
    TransformerBlockSubmodules,
    get_num_layers_to_build,
)
from megatron.core.transformer.transformer_config import TransformerConfig

from megatron_tulu.config import ModelConfig, ParallelDims
from megatron_tulu.config.training import ATTENTION_BACKENDS
from megatron_tulu.models.mlp import SwiGLUMLP, quiet_unknown_mlp
from megatron_tulu.models.norm import LlamaRMSNorm
from megatron_tulu.models.rope import install_rope_fusion, llama3_inv_freq
from megatron_tulu.models.sdpa_attention import SDPAttention
from megatron_tulu.platform import ensure_platform, has_cuda

RECOMPUTE_CHOICES = ("none", "selective", "full")
# Core attention of the local spec: "auto" is SDPA on CUDA (the fast path without TE) and
# megatron's own DotProductAttention on CPU; either can be asked for anywhere.
ATTENTION_CHOICES = ATTENTION_BACKENDS


def transformer_engine_usable() -> bool:
    """TE's spec is used only where TE is installed and CUDA is present."""
    return has_cuda() and importlib.util.find_spec("transformer_engine") is not None


@dataclass(kw_only=True, frozen=True)
class BuildOptions:
    """How to build (not what to build): precision, recompute and backend choices."""

    precision: str = "fp32"
    recompute: str = "none"
    use_transformer_engine: bool | None = None  # None: decide from the machine
    attention: str = "auto"  # core attention when the local spec is used (ATTENTION_CHOICES)

    def __post_init__(self) -> None:
        if self.attention not in ATTENTION_CHOICES:
            raise ValueError(f"attention ({self.attention!r}) must be one of {ATTENTION_CHOICES}")
        if self.precision not in ("fp32", "bf16"):
            raise ValueError(f"precision ({self.precision!r}) must be 'fp32' or 'bf16'")
        if self.recompute not in RECOMPUTE_CHOICES:
            raise ValueError(f"recompute ({self.recompute!r}) must be one of {RECOMPUTE_CHOICES}")
        if self.use_transformer_engine and not transformer_engine_usable():
            raise ValueError(
                "use_transformer_engine=True, but Transformer Engine is not importable on a "
                "CUDA machine here: install transformer-engine[pytorch] on a GPU node, or set "
                "use_transformer_engine=None to fall back to the local spec"
            )

    def te(self) -> bool:
        if self.use_transformer_engine is None:
            return transformer_engine_usable()
        return self.use_transformer_engine

    def sdpa(self, cp: int = 1) -> bool:
        """Whether the local spec's core attention is SDPA (see models/sdpa_attention.py):
        "auto" picks it on CUDA, and under context parallelism (``cp`` > 1), which megatron's
        local DotProductAttention does not implement."""
        if self.attention == "auto":
            return has_cuda() or cp > 1
        return self.attention == "sdpa"


def transformer_config(
    model: ModelConfig, dims: ParallelDims, options: BuildOptions
) -> TransformerConfig:
    """The megatron-core TransformerConfig for a Llama model under a parallel layout."""
    on_gpu = has_cuda()
    bf16 = options.precision == "bf16"
    recompute: dict[str, object] = {}
    if options.recompute == "selective":
        recompute = {"recompute_granularity": "selective"}
    elif options.recompute == "full":
        recompute = {
            "recompute_granularity": "full",
            "recompute_method": "uniform",
            "recompute_num_layers": 1,
        }
    return TransformerConfig(
        num_layers=model.num_layers,
        hidden_size=model.hidden_size,
        ffn_hidden_size=model.ffn_hidden_size,
        num_attention_heads=model.num_attention_heads,
        num_query_groups=model.num_query_groups,
        kv_channels=model.head_dim,
        normalization="RMSNorm",
        layernorm_epsilon=model.norm_eps,
        gated_linear_unit=True,
        activation_func=F.silu,
        add_bias_linear=False,
        add_qkv_bias=False,
        hidden_dropout=0.0,
        attention_dropout=0.0,
        init_method_std=model.init_method_std,
        attention_softmax_in_fp32=True,
        tensor_model_parallel_size=dims.tp,
        pipeline_model_parallel_size=dims.pp,
        virtual_pipeline_model_parallel_size=dims.vpp,
        num_layers_in_first_pipeline_stage=dims.first_stage_layers,
        num_layers_in_last_pipeline_stage=dims.last_stage_layers,
        context_parallel_size=dims.cp,
        sequence_parallel=dims.sequence_parallel,
        params_dtype=torch.bfloat16 if bf16 else torch.float32,
        pipeline_dtype=torch.bfloat16 if bf16 else torch.float32,
        bf16=bf16,
        # Initialise full weights on the CPU from one generator, then shard: every TP/PP layout
        # starts from the same numbers, which the parity tests rely on.
        use_cpu_initialization=not on_gpu,
        # megatron's fused kernels are CUDA-only; the unfused paths compute the same function.
        bias_activation_fusion=False,
        bias_dropout_fusion=False,
        masked_softmax_fusion=False,
        persist_layer_norm=False,
        # Our fused RoPE in megatron's empty fused-RoPE slot for the local spec (Triton on CUDA,
        # megatron's unfused code on CPU); the TE spec keeps megatron's unfused RoPE, as before.
        apply_rope_fusion=install_rope_fusion(transformer_engine=options.te()),
        gradient_accumulation_fusion=False,
        # gloo pairs two-way batched p2p messages in post order: wrong results (platform notes).
        batch_p2p_comm=on_gpu,
        deallocate_pipeline_outputs=True,
        **recompute,
    )


def layer_spec(
    config: TransformerConfig,
    options: BuildOptions,
    vp_stage: int | None,
    pp_rank: int | None,
    pg: ProcessGroupCollection | None = None,
):
    """TE layer spec on CUDA with TE; otherwise the local spec with our RMSNorm and SwiGLU MLP
    (fused Triton kernels on CUDA, see ops/fused.py) and SDPA core attention where
    ``options.sdpa(cp)``. (The local spec's fused RoPE is chosen by the config's
    ``apply_rope_fusion``, see :func:`transformer_config`.)"""
    if options.te():
        from megatron.core.models.gpt.gpt_layer_specs import (
            get_gpt_layer_with_transformer_engine_spec,
        )

        return get_gpt_layer_with_transformer_engine_spec()
    local = get_gpt_layer_local_spec(normalization="RMSNorm")
    local.submodules.input_layernorm = LlamaRMSNorm
    local.submodules.pre_mlp_layernorm = LlamaRMSNorm
    local.submodules.mlp.module = SwiGLUMLP
    if pg is not None:
        # megatron's TransformerLayer hands its TP group only to an MLP of exactly class MLP; a
        # model on its own groups (the value helper at value.tp) passes it through the spec.
        local.submodules.mlp.params = {"tp_group": pg.tp}
    if options.sdpa(config.context_parallel_size):
        local.submodules.self_attention.submodules.core_attention = SDPAttention
    num_layers = get_num_layers_to_build(config, vp_stage=vp_stage, pp_rank=pp_rank)
    return TransformerBlockSubmodules(
        layer_specs=[local] * num_layers, layer_norm=ModuleSpec(module=LlamaRMSNorm)
    )


def build_model_chunks(
    model: ModelConfig,
    dims: ParallelDims,
    options: BuildOptions | None = None,
    *,
    pg: ProcessGroupCollection | None = None,
) -> list[MegatronModule]:
    """This rank's model chunks: one GPTModel, or ``vpp`` of them with interleaving.

    megatron parallel state must be initialised for ``dims`` first (see
    :func:`megatron_tulu.parallel.init_parallel`). Vocabulary rows are padded to
    ``model.padded_vocab_size(tp)``; padded logits are masked by the loss functions in
    :mod:`megatron_tulu.models.logits`. With ``pg`` (a model with its own layout, see
    :mod:`megatron_tulu.parallel.model_groups`) the model runs on those groups instead of the
    global ones: ``dims`` must then be that layout's (PP 1: the whole model on every rank).
    """
    ensure_platform()
    if model.tie_word_embeddings:
        raise ValueError(
            f"model {model.name!r}: tie_word_embeddings=true is not supported (Llama 3.1 has "
            "untied input and output embeddings); set model.tie_word_embeddings=false"
        )
    options = options or BuildOptions()
    if dims.cp > 1 and not options.te() and not options.sdpa(dims.cp):
        raise ValueError(
            f"parallel.cp ({dims.cp}) > 1 with training.attention {options.attention!r}: "
            "megatron-core's local DotProductAttention has no context parallelism; set "
            "training.attention to 'sdpa' or 'auto' (SDPA gathers K/V over the cp ranks; "
            "Transformer Engine's attention does its own where TE runs on CUDA), or parallel.cp=1"
        )
    if pg is not None and (dims.pp != 1 or dims.vpp is not None or pg.tp.size() != dims.tp):
        raise ValueError(
            f"a model on its own groups runs without pipelining at the groups' TP size "
            f"({pg.tp.size()}); got pp {dims.pp}, vpp {dims.vpp}, tp {dims.tp}"
        )
    config = transformer_config(model, dims, options)
    stages = [None] if dims.vpp is None else list(range(dims.vpp))
    chunks: list[MegatronModule] = []
    for vp_stage in stages:
        if pg is not None:
            pre = post = True
        else:
            pre = parallel_state.is_pipeline_first_stage(ignore_virtual=False, vp_stage=vp_stage)
            post = parallel_state.is_pipeline_last_stage(ignore_virtual=False, vp_stage=vp_stage)
        with quiet_unknown_mlp():  # our SwiGLUMLP spec, once per layer (models/mlp.py)
            chunk = GPTModel(
                config=config,
                transformer_layer_spec=layer_spec(
                    config, options, vp_stage, None if pg is None else pg.pp.rank(), pg
                ),
                vocab_size=model.padded_vocab_size(dims.tp),
                max_sequence_length=model.max_position_embeddings,
                pre_process=pre,
                post_process=post,
                share_embeddings_and_output_weights=model.tie_word_embeddings,
                position_embedding_type="rope",
                rotary_base=int(model.rope_theta),
                vp_stage=vp_stage,
                pg_collection=pg,
            )
        # Install the exact HF llama3 frequencies (see models/rope.py).
        rotary = chunk.rotary_pos_emb
        rotary.inv_freq = llama3_inv_freq(model).to(rotary.inv_freq.device)
        chunks.append(chunk)
    return chunks
