"""Per-GPU memory of a training layout: weights, gradients, optimizer, activations, logits.

Static memory per parameter held by a GPU (megatron-core as this codebase builds it: bf16
parameters, gradient buffer in fp32 -- ``grad_reduce_in_fp32=True`` -- or bf16, Adam):

    bf16: 2 (weights) + g (grads: 4, or 2 with grad_reduce_dtype bf16)
          + 12 (fp32 master + m + v) / shards                             (= 18 plain, fp32 g)
    fp32: 4 (weights) + 4 (grads) +  8 (m + v; the weights are the master) / shards

where ``shards = dp * cp`` with the distributed optimizer, else 1. This is megatron's own
``theoretical_memory_usage`` count (18, or 6 + 12 / dp with the distributed optimizer;
tests/planner/test_memory_vs_megatron.py). Optimizer CPU offload (fraction ``f``, megatron-core's
HybridDeviceOptimizer) moves ``f`` of the state to host memory: all 12 bytes on the TE path
(megatron's precision-aware optimizer), only m and v (8 bytes) without TE, where the fp32
master stays on the device. A GPU holds its pipeline rank's layers / tp (norm weights are
replicated over tp), plus the vocab-sharded embedding on the first rank and the vocab-sharded
output layer and final norm on the last.

Weight-push transient (RLVR, :func:`push_transient_bytes`): streaming the policy to vLLM, each
pipeline stage's TP rank 0 gathers one *unit* (the embedding, a decoder layer, the final norm
with the output layer) whole in the model dtype before sending it; trainer rank 0 (pipeline
stage 0) also receives the other stages' tensors one at a time (the largest: the output layer,
V x h) and packs them into broadcast buckets (32 MiB, a pending bucket and its packed copy).
At 405B a whole decoder layer is 3.19B parameters (6.4 GB in bf16) and the embedding and the
output layer 2.1B each (4.2 GB): this happens after the step's activations are freed, so it is
a phase of its own (the largest phase counts).

Activations (Korthikanti et al. 2022, "Reducing Activation Recomputation in Large Transformer
Models", Table 2, re-derived for Llama as this codebase builds it: no dropout, RMSNorm, GQA,
unfused SwiGLU and RoPE; checked tensor by tensor with saved-tensor hooks on CPU). Per layer and
token, with ``a`` bytes per activation element (2 in bf16):

    norms (2 per layer)  te: the input (a h); local: an fp32 copy of the input plus the
                         normalised tensor ((4 + a) h, the input itself when fp32)
    linear inputs        h (QKV), d_q (out proj), h (fc1), F (fc2)
    attention            the QKV output d_q + 2 d_kv (V is a view of it, so it stays whole) plus
                         Q and K after RoPE, d_q + d_kv (flash attention keeps no s x s matrix)
    SwiGLU               gate|up 2F (silu keeps a view) + silu output F + (up + offset) F:
                         megatron's unfused GLU (bias_activation_fusion=False in this codebase;
                         ``swiglu_fusion=True`` plans the fused one: gate|up only)
    local, no recompute  instead of the attention line: roped Q + GQA-expanded K and V (3 d_q),
                         plus the softmax probabilities heads/tp x s (fp32, + an a-byte copy)
    RoPE tables          cos and sin [s, 1, 1, head_dim] for Q and K: 4 s head_dim a bytes per
                         layer and micro-batch (unfused RoPE, apply_rope_fusion=False)

With sequence parallelism everything is divided by tp; without it the h-wide tensors (norms, the
QKV and fc1 inputs) are replicated. Context parallelism divides the tokens per GPU by cp.
Megatron's Korthikanti-based estimate counts 18 h + 4 F bytes (GPT: dropout masks, MHA, GELU);
tests/planner/test_memory_vs_megatron.py itemises the difference.

Selective recompute (core attention) only matters for local kernels (drops the probabilities).
Full recompute keeps each layer's input (h, sharded by SP) per in-flight micro-batch, plus the
larger of one layer's full set (while it is recomputed) and the loss-time set below.

Micro-batches in flight on pipeline rank r (the first rank holds the most): 1F1B keeps
min(pp - r, m); the interleaved schedule keeps min(m * v, 2 (pp - r - 1) + (v - 1) pp + 1)
chunk-micro-batches of layers/v layers each (rank 0: L (1 + (pp - 1) / (pp v)) layer-micro-
batches in total, megatron's interleaving penalty).

Logits (last rank, one micro-batch): the vocab-parallel logits [s, b, V/tp] are kept in fp32 for
the log-prob backward (Float16Module casts the last stage's output to fp32) and their fp32
gradient exists at the same time: 8 bytes per element. Transient: the output layer's backward
then holds the gradient in the model dtype, a contiguous copy and the output weight's gradient
(its excess over the 8 bytes is counted), and every rank briefly holds its largest layer weight's
gradient before it is added into main_grad. Measured against this codebase on CPU:
benchmarks/results/planner_vs_measured_cpu.md.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

from kernels.chunking import default_linear_chunk_rows
from megatron_tulu.config import ModelConfig
from megatron_tulu.tools.planner.flops import kv_dim, layer_matrix_params, q_dim
from megatron_tulu.tools.planner.layout import ResolvedLayout, TrainLayout

LOGIT_BYTES = 8  # fp32 logits kept for backward + their fp32 gradient


PUSH_BUCKET_BYTES = 32 * 2**20  # RolloutConfig.bucket_bytes (the weight push's packing size)


@dataclass(frozen=True, kw_only=True)
class StaticBytes:
    params: float  # parameter count on this GPU
    weights: float
    grads: float
    optimizer: float  # on the device
    optimizer_host: float = 0.0  # offloaded to host memory (not counted against the GPU)

    @property
    def total(self) -> float:
        return self.weights + self.grads + self.optimizer


@dataclass(frozen=True, kw_only=True)
class RankMemory:
    """Bytes on one GPU of pipeline rank ``rank`` (the TP/DP/CP peers hold the same)."""

    rank: int
    params: float
    weights: float
    grads: float
    optimizer: float
    activations: float
    logits: float
    transient: float  # the largest parameter's gradient before it joins main_grad
    layer_microbatches_in_flight: float
    optimizer_host: float = 0.0  # offloaded optimizer state (host memory, not on the GPU)

    @property
    def total(self) -> float:
        return (
            self.weights
            + self.grads
            + self.optimizer
            + self.activations
            + self.logits
            + self.transient
        )

    def components(self) -> dict[str, float]:
        d = asdict(self)
        for k in ("rank", "params", "layer_microbatches_in_flight", "optimizer_host"):
            d.pop(k)
        return d


def act_bytes(precision: str) -> int:
    return 2 if precision == "bf16" else 4


def layer_params_local(model: ModelConfig, tp: int) -> float:
    """One layer's parameters on a GPU: the matrices split over tp, the two norms replicated."""
    return layer_matrix_params(model) / tp + 2 * model.hidden_size


def embedding_params_local(model: ModelConfig, tp: int) -> float:
    return model.padded_vocab_size(tp) * model.hidden_size / tp


def output_width(model: ModelConfig, layout: TrainLayout) -> float:
    """Columns of the output layer on one GPU: V/tp logits, or 1 for a value head."""
    if layout.head == "value":
        return 1.0
    return model.padded_vocab_size(layout.tp) / layout.tp


def rank_params(model: ModelConfig, rl: ResolvedLayout, rank: int) -> float:
    """Parameters on one GPU of pipeline rank ``rank``."""
    lay = rl.layout
    tp, pp = lay.tp, lay.pp
    params = rl.layers_per_rank[rank] * layer_params_local(model, tp)
    if rank == 0:
        params += embedding_params_local(model, tp)
    if rank == pp - 1:  # output layer (or value head) + final norm
        params += output_width(model, lay) * model.hidden_size + model.hidden_size
    return params


def static_bytes(
    params: float,
    precision: str,
    shards: int,
    *,
    grad_bytes: int = 4,
    offload: float = 0.0,
    master_offloaded: bool = True,
) -> StaticBytes:
    """Weights + gradients + Adam state for ``params`` parameters (see the module docstring);
    ``offload``: the fraction of the state in host memory (``master_offloaded``: the fp32
    master moves too, megatron's precision-aware path with TE)."""
    if precision == "bf16":
        weights, master = 2 * params, 4 * params / shards
    else:
        weights, master, grad_bytes = 4 * params, 0.0, 4  # the fp32 weights are the master
    moments = 8 * params / shards
    moved = offload * (moments + (master if master_offloaded else 0.0))
    return StaticBytes(
        params=params,
        weights=weights,
        grads=grad_bytes * params,
        optimizer=master + moments - moved,
        optimizer_host=moved,
    )


def _norm_bytes_per_elem(layout: TrainLayout) -> float:
    a = act_bytes(layout.precision)
    if layout.kernels in ("te", "triton"):  # the fused norms keep their input (+ rstd)
        return a
    return 4 + a  # fp32 copy of the input (the input itself in fp32) + the normalised tensor


def layer_activation_bytes_per_token(
    model: ModelConfig, layout: TrainLayout, *, seq_len: int | None = None, keep_probs: bool
) -> float:
    """Bytes one layer keeps per token of a micro-batch on one GPU (see the module docstring);
    ``keep_probs``: unfused attention without recompute (softmax probabilities and GQA-expanded
    K and V are kept instead of the QKV output and roped K)."""
    a = act_bytes(layout.precision)
    t = layout.tp
    h, f, dq, dkv = model.hidden_size, model.ffn_hidden_size, q_dim(model), kv_dim(model)
    sp_div = t if layout.sp else 1
    replicated = 2 * h * _norm_bytes_per_elem(layout) + 2 * h * a  # norms + QKV/fc1 inputs
    if keep_probs:
        kv = dq if model.num_query_groups != model.num_attention_heads else dkv
        attention = (dq + 2 * kv) * a  # roped Q, GQA-expanded K and V
    else:
        attention = (dq + 2 * dkv + dq + dkv) * a  # QKV output (V is a view) + roped Q and K
    glu = 3 * f if layout.swiglu_fused else 5 * f  # gate|up 2F (+ silu, + up+offset), fc2 in F
    sharded = attention + dq * a + glu * a  # + the out-proj input
    total = replicated / sp_div + sharded / t
    if keep_probs:
        s = (seq_len or layout.seq_len) / layout.cp
        probs_bytes = 4 + (a if a != 4 else 0)
        total += model.num_attention_heads / t * s * probs_bytes
    elif layout.flash_attention:
        total += model.num_attention_heads / t * 4  # flash attention's fp32 logsumexp
    return total


def rope_table_bytes(model: ModelConfig, layout: TrainLayout) -> float:
    """Per layer and micro-batch: unfused RoPE (megatron's, which the local spec runs on CPU)
    keeps cos and sin [s, 1, 1, head_dim] for Q and for K, whatever the batch and the heads
    (none with a fused RoPE: megatron's production fusions, or the Triton one the local spec
    runs on CUDA, ``kernels="triton"``: it saves only the shared frequency table)."""
    if layout.rope_fused:
        return 0.0
    return 4 * layout.seq_len / layout.cp * model.head_dim * act_bytes(layout.precision)


def keeps_probs(layout: TrainLayout) -> bool:
    """Unfused attention keeps the softmax probabilities unless core attention is recomputed."""
    return layout.kernels == "local" and layout.recompute == "none"


def in_flight(rl: ResolvedLayout, rank: int) -> float:
    """Layer-micro-batches whose activations rank ``rank`` holds at its peak."""
    lay, m = rl.layout, rl.num_microbatches
    layers = rl.layers_per_rank[rank]
    if lay.v == 1:
        return min(lay.pp - rank, m) * layers
    chunks = min(m * lay.v, 2 * (lay.pp - rank - 1) + (lay.v - 1) * lay.pp + 1)
    return chunks * layers / lay.v


def largest_layer_param_local(model: ModelConfig, tp: int) -> float:
    """Elements of a layer's largest weight on one GPU (gate|up or QKV): its gradient exists on
    its own before megatron's hook adds it into ``main_grad`` (no gradient-accumulation fusion
    here) while the activations are near their peak. The embedding's gradient comes last, when
    the micro-batch's activations are freed; the output layer's is counted with the logits."""
    h = model.hidden_size
    return max(h * 2 * model.ffn_hidden_size / tp, h * (q_dim(model) + 2 * kv_dim(model)) / tp)


def fused_output_bytes(model: ModelConfig, lay: TrainLayout, tokens: float) -> tuple[float, float]:
    """(held, transient) bytes of the fused output layer on the last rank
    (``training.fused_output``; kernels/linear_logprobs.py ``LinearLogprobSum``). Held from the
    loss to the backward: the hidden states Float16Module hands over in fp32, their copy in the
    model dtype and their gradient (made in the loss's forward). Transient, in the loss: one
    chunk's logits and logits gradient (``default_linear_chunk_rows`` tokens, model dtype) and
    the output weight's gradient, made there instead of in the backward."""
    a, h, width = act_bytes(lay.precision), model.hidden_size, output_width(model, lay)
    rows = min(tokens, default_linear_chunk_rows(int(tokens), int(width), h))
    held = tokens * h * (4 + 2 * a)
    return held, 2 * a * rows * width + a * width * h


def rank_memory(model: ModelConfig, rl: ResolvedLayout, rank: int) -> RankMemory:
    lay = rl.layout
    tokens = lay.micro_batch * lay.seq_len / lay.cp  # tokens of one micro-batch on one GPU
    a = act_bytes(lay.precision)
    static = static_bytes(
        rank_params(model, rl, rank), lay.precision, rl.optimizer_shards,
        grad_bytes=lay.grad_bytes, offload=lay.optimizer_offload,
        master_offloaded=lay.kernels == "te",
    )  # fmt: skip
    layer_mbs = in_flight(rl, rank)
    last = rank == lay.pp - 1
    # gradient-accumulation fusion writes weight gradients straight into main_grad
    transient = 0.0 if lay.fusions else largest_layer_param_local(model, lay.tp) * a
    logits = final = 0.0
    if last:
        h = model.hidden_size
        # final norm + output-layer input, for the one micro-batch in flight on the last rank
        final = tokens * (h * _norm_bytes_per_elem(lay) + h * a) / (lay.tp if lay.sp else 1)
        elems = tokens * output_width(model, lay)
        if lay.fused_output:
            logits, output_transient = fused_output_bytes(model, lay, tokens)
            transient = max(transient, output_transient)
        else:
            # fused cross entropy: the gradient overwrites the fp32 logits (4 bytes, not 8)
            logits = elems * (4 if lay.fusions else LOGIT_BYTES)
            # Output-layer backward: the logits' gradient in the model dtype, a contiguous copy
            # of it ([b, s] -> [s, b]) and the output weight's gradient; the fp32 logits gone.
            output_backward = 2 * a * elems + (
                0 if lay.fusions else a * output_width(model, lay) * h
            )
            transient = max(transient, output_backward - logits)
    if lay.recompute == "full":
        checkpoints = layer_mbs * tokens * model.hidden_size * a / (lay.tp if lay.sp else 1)
        # While a layer is recomputed and back-propagated it holds its full set (local kernels:
        # probabilities included); the logits are gone by then. Peak = checkpoints + the larger
        # of that working set and (final + logits + transient) at the loss.
        working = tokens * layer_activation_bytes_per_token(
            model, lay, keep_probs=lay.kernels == "local"
        ) + rope_table_bytes(model, lay)
        activations = checkpoints + max(working - logits - transient, final)
    else:
        full_layer = layer_activation_bytes_per_token(model, lay, keep_probs=keeps_probs(lay))
        activations = layer_mbs * (tokens * full_layer + rope_table_bytes(model, lay)) + final
    return RankMemory(
        rank=rank,
        params=static.params,
        weights=static.weights,
        grads=static.grads,
        optimizer=static.optimizer,
        activations=activations,
        logits=logits,
        transient=transient,
        layer_microbatches_in_flight=layer_mbs,
        optimizer_host=static.optimizer_host,
    )


def push_transient_bytes(
    model: ModelConfig, rl: ResolvedLayout, rank: int, *, bucket_bytes: int = PUSH_BUCKET_BYTES
) -> float:
    """Peak bytes of the weight push on pipeline rank ``rank``'s TP rank 0 (module docstring):
    its largest unit gathered whole plus the shard list of that unit's largest tensor while it
    is concatenated; on rank 0 at least the largest tensor received from another stage; and,
    on rank 0, a pending bucket plus its packed copy."""
    lay = rl.layout
    h, v = model.hidden_size, model.vocab_size  # HF tensors: the unpadded vocabulary
    a = act_bytes(lay.precision)
    layer_largest = max(h * 2 * model.ffn_hidden_size, h * (q_dim(model) + 2 * kv_dim(model)))
    units: list[tuple[float, float]] = []  # (whole unit, its largest tensor), parameters
    if rl.layers_per_rank[rank]:
        units.append((layer_matrix_params(model) + 2 * h, layer_largest))
    if rank == 0:
        units.append((v * h, v * h))
    if rank == lay.pp - 1 and lay.head == "lm":
        units.append((v * h + h, v * h))
    own = max((unit + largest for unit, largest in units), default=0.0)
    if rank != 0:
        return a * own
    received = v * h if lay.pp > 1 else 0.0  # the output layer, from the last stage
    return a * max(own, received) + 2 * bucket_bytes


def training_memory(model: ModelConfig, rl: ResolvedLayout) -> list[RankMemory]:
    """Memory of one GPU on every pipeline rank."""
    return [rank_memory(model, rl, r) for r in range(rl.layout.pp)]


def forward_only_activation_bytes(model: ModelConfig, rl: ResolvedLayout) -> float:
    """Peak activations of a forward-only pass (reference / old log-probs / value forward): one
    layer's working set of one micro-batch plus the fp32 logits (no gradient) on the last rank.
    With ``fused_output`` (the log-prob passes run the output layer in token chunks,
    ``ops.linear_logprobs``) the logits term becomes the hidden states (fp32 and a model-dtype
    copy) and one chunk's logits in the model dtype and in fp32."""
    lay = rl.layout
    tokens = lay.micro_batch * lay.seq_len / lay.cp
    layer = layer_activation_bytes_per_token(model, lay, keep_probs=lay.kernels == "local")
    width = output_width(model, lay)
    logits = tokens * width * 4
    if lay.fused_output and lay.head == "lm":
        a, h = act_bytes(lay.precision), model.hidden_size
        rows = min(tokens, default_linear_chunk_rows(int(tokens), int(width), h))
        logits = tokens * h * (4 + a) + rows * width * (a + 4)
    return tokens * layer + logits


def kv_bytes_per_token_per_gpu(model: ModelConfig, tp: int, dtype_bytes: int = 2) -> float:
    """KV cache bytes per token on one GPU of a TP group: 2 (K and V) x layers x KV heads on
    this GPU x head_dim x bytes. With tp > kv heads each KV head is replicated (vLLM), so a GPU
    holds max(1, kv_heads / tp) heads."""
    heads = max(1.0, model.num_query_groups / tp)
    return 2 * model.num_layers * heads * model.head_dim * dtype_bytes


def model_weight_bytes(model: ModelConfig, dtype_bytes: int = 2) -> float:
    return model.num_parameters() * dtype_bytes
