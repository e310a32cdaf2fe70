"""Per-GPU memory of a training layout: weights, gradients, optimizer, activations, logits.

Static memory per parameter held by a GPU (megatron-core as this codebase builds it: bf16
parameters, fp32 gradient buffer ``grad_reduce_in_fp32=True``, Adam):

    bf16: 2 (weights) + 4 (grads) + 12 (fp32 master + m + v) / shards      (= 18 plain)
    fp32: 4 (weights) + 4 (grads) +  8 (m + v; the weights are the master) / shards

where ``shards = dp * cp`` with the distributed optimizer, else 1. A GPU holds its pipeline
rank's layers / tp (norm weights are replicated over tp), plus the vocab-sharded embedding on the
first rank and the vocab-sharded output layer and final norm on the last.

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

from megatron_tulu.config import ModelConfig
from megatron_tulu.tools.planner.flops import kv_dim, layer_matrix_params, q_dim
from megatron_tulu.tools.planner.layout import ResolvedLayout, TrainLayout

LOGIT_BYTES = 8  # fp32 logits kept for backward + their fp32 gradient


@dataclass(frozen=True, kw_only=True)
class StaticBytes:
    params: float  # parameter count on this GPU
    weights: float
    grads: float
    optimizer: float

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
        for k in ("rank", "params", "layer_microbatches_in_flight"):
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


def static_bytes(params: float, precision: str, shards: int) -> StaticBytes:
    """Weights + gradients + Adam state for ``params`` parameters (see the module docstring)."""
    if precision == "bf16":
        return StaticBytes(
            params=params, weights=2 * params, grads=4 * params, optimizer=12 * params / shards
        )
    return StaticBytes(
        params=params, weights=4 * params, grads=4 * params, optimizer=8 * params / shards
    )


def _norm_bytes_per_elem(layout: TrainLayout) -> float:
    a = act_bytes(layout.precision)
    if layout.kernels == "te":
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
    glu = 3 * f if layout.swiglu_fusion else 5 * f  # gate|up 2F (+ silu, + up+offset), fc2 in F
    sharded = attention + dq * a + glu * a  # + the out-proj input
    total = replicated / sp_div + sharded / t
    if keep_probs:
        s = (seq_len or layout.seq_len) / layout.cp
        probs_bytes = 4 + (a if a != 4 else 0)
        total += model.num_attention_heads / t * s * probs_bytes
    elif layout.kernels == "te":
        total += model.num_attention_heads / t * 4  # flash attention's fp32 logsumexp
    return total


def rope_table_bytes(model: ModelConfig, layout: TrainLayout) -> float:
    """Per layer and micro-batch: unfused RoPE (this codebase: apply_rope_fusion=False) keeps
    cos and sin [s, 1, 1, head_dim] for Q and for K, whatever the batch and the heads."""
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


def rank_memory(model: ModelConfig, rl: ResolvedLayout, rank: int) -> RankMemory:
    lay = rl.layout
    tokens = lay.micro_batch * lay.seq_len / lay.cp  # tokens of one micro-batch on one GPU
    a = act_bytes(lay.precision)
    static = static_bytes(rank_params(model, rl, rank), lay.precision, rl.optimizer_shards)
    layer_mbs = in_flight(rl, rank)
    last = rank == lay.pp - 1
    transient = largest_layer_param_local(model, lay.tp) * a
    logits = final = 0.0
    if last:
        h = model.hidden_size
        # final norm + output-layer input, for the one micro-batch in flight on the last rank
        final = tokens * (h * _norm_bytes_per_elem(lay) + h * a) / (lay.tp if lay.sp else 1)
        elems = tokens * output_width(model, lay)
        logits = elems * LOGIT_BYTES
        # Output-layer backward: the logits' gradient in the model dtype, a contiguous copy of
        # it ([b, s] -> [s, b]) and the output weight's gradient; the fp32 logits are gone.
        output_backward = 2 * a * elems + a * output_width(model, lay) * h
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
    )


def training_memory(model: ModelConfig, rl: ResolvedLayout) -> list[RankMemory]:
    """Memory of one GPU on every pipeline rank."""
    return [rank_memory(model, rl, r) for r in range(rl.layout.pp)]


def forward_only_activation_bytes(model: ModelConfig, rl: ResolvedLayout) -> float:
    """Peak activations of a forward-only pass (reference / old log-probs / value forward): one
    layer's working set of one micro-batch plus the fp32 logits (no gradient) on the last rank."""
    lay = rl.layout
    tokens = lay.micro_batch * lay.seq_len / lay.cp
    layer = layer_activation_bytes_per_token(model, lay, keep_probs=lay.kernels == "local")
    logits = tokens * output_width(model, lay) * 4
    return tokens * layer + logits


def kv_bytes_per_token_per_gpu(model: ModelConfig, tp: int, dtype_bytes: int = 2) -> float:
    """KV cache bytes per token on one GPU of a TP group: 2 (K and V) x layers x KV heads on
    this GPU x head_dim x bytes. With tp > kv heads each KV head is replicated (vLLM), so a GPU
    holds max(1, kv_heads / tp) heads."""
    heads = max(1.0, model.num_query_groups / tp)
    return 2 * model.num_layers * heads * model.head_dim * dtype_bytes


def model_weight_bytes(model: ModelConfig, dtype_bytes: int = 2) -> float:
    return model.num_parameters() * dtype_bytes
