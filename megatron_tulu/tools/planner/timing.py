"""Training step time of a megatron layout: compute, TP comm, pipeline bubble, DP comm, optimizer.

Model (all per GPU; the slowest pipeline rank sets the pace):

- compute: hardware FLOPs of one micro-batch on a rank (its layers, plus the logits layer on the
  last rank; forward + backward = 3x forward, plus recomputation) / (peak * compute efficiency);
  tokens and attention split evenly over tp * cp (load-balanced causal context parallelism);
- tensor parallel: modelled, not folded into the efficiency. With sequence parallelism each layer
  does 2 all-gathers + 2 reduce-scatters of [s/cp, b, h] forward and the same backward (megatron
  overlaps the wgrad re-gather with the dgrad GEMM, so it is not counted); without SP, 2
  all-reduces each way. Full recompute repeats the forward's. Exposed (not overlapped): this
  codebase does not enable Transformer Engine's userbuffer TP-comm overlap;
- pipeline: ``(m + (pp - 1) / v) * t_microbatch``, i.e. a bubble fraction ``(pp - 1) / (v m)``;
  point-to-point sends overlap steady-state compute and cost one fill, ``(pp - 1)`` sends;
- data parallel (over dp * cp ranks): reduce-scatter of the fp32 gradients and all-gather of the
  bf16 parameters (distributed optimizer), or an fp32 all-reduce. The reduce-scatter overlaps the
  last micro-batch's backward (megatron overlap_grad_reduce; only the excess is exposed); the
  parameter all-gather is exposed unless ``overlap_param_gather`` (megatron has it, this
  codebase does not wire it yet);
- context parallel (cp > 1, TE's ring attention): each layer passes K and V blocks
  [s/cp, b, 2 d_kv / tp] around the cp ring, cp - 1 hops forward and twice that backward (K, V
  and their gradients); each hop overlaps the attention block it feeds, so only the excess over
  the layer's attention compute is exposed;
- optimizer: Adam is memory-bound, ~30 bytes moved per local (sharded) parameter at the
  achieved HBM bandwidth. With CPU offload (fraction f) that share runs on the host: gradients
  down and parameters up the GPU's PCIe link (4 + 4 bytes per parameter) overlapped with
  torch's CPU AdamW (~28 bytes per parameter of host-memory traffic), megatron's
  ``overlap_cpu_optimizer_d2h_h2d``: the slower of the two counts.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

from megatron_tulu.config import ModelConfig
from megatron_tulu.tools.planner.comm import collective_seconds, group_per_node, p2p_seconds
from megatron_tulu.tools.planner.flops import (
    forward_flops_per_token,
    kv_dim,
    recompute_flops_per_layer_token,
)
from megatron_tulu.tools.planner.hardware import GB, HardwareProfile
from megatron_tulu.tools.planner.layout import ResolvedLayout
from megatron_tulu.tools.planner.memory import act_bytes, rank_params

OPTIMIZER_BYTES_PER_PARAM = 30  # read grad 4 + master/m/v 12, write master/m/v 12, param 2
CPU_ADAM_BYTES_PER_PARAM = 28  # read param/grad/m/v 16, write param/m/v 12 (fp32, host)
OFFLOAD_LINK_BYTES_PER_PARAM = 8  # fp32 gradient down, fp32 parameter up


@dataclass(frozen=True, kw_only=True)
class TimeOptions:
    overlap_grad_reduce: bool = True
    overlap_param_gather: bool = False  # megatron has it; this codebase does not wire it yet
    forward_only: bool = False


@dataclass(frozen=True, kw_only=True)
class TrainTime:
    step_s: float
    compute_s: float  # busy compute of the slowest rank over all micro-batches (no bubble)
    tp_comm_s: float  # exposed TP collectives (and CP ring exchanges), all micro-batches
    bubble_s: float  # pipeline fill/drain: (pp - 1) / v micro-batch times
    p2p_fill_s: float  # the fill's point-to-point sends
    dp_comm_s: float  # exposed data-parallel communication
    dp_comm_wire_s: float  # its full wire time (before overlap)
    optimizer_s: float
    microbatch_s: float  # one micro-batch on the slowest rank (compute + TP comm)
    model_flops: float  # whole step, all GPUs (MFU numerator)
    hardware_flops: float
    mfu: float
    tflops_per_gpu: float

    def breakdown(self) -> dict[str, float]:
        return asdict(self)


def _rank_flops(model: ModelConfig, rl: ResolvedLayout, rank: int, forward_only: bool) -> float:
    """Hardware FLOPs of one micro-batch on one GPU of pipeline rank ``rank``."""
    lay = rl.layout
    out = 1 if lay.head == "value" else model.padded_vocab_size(lay.tp)
    f = forward_flops_per_token(model, lay.seq_len, vocab_size=out)
    passes = 1.0 if forward_only else 3.0
    extra = (
        0.0 if forward_only else recompute_flops_per_layer_token(model, lay.seq_len, lay.recompute)
    )
    per_token = rl.layers_per_rank[rank] * (passes * f.layer + extra)
    if rank == lay.pp - 1:
        per_token += passes * f.logits
    return per_token * rl.tokens_per_microbatch / (lay.tp * lay.cp)


def _rank_tp_seconds(
    model: ModelConfig, rl: ResolvedLayout, rank: int, hw: HardwareProfile, forward_only: bool
) -> float:
    lay = rl.layout
    if lay.tp == 1:
        return 0.0
    nbytes = rl.tokens_per_microbatch / lay.cp * model.hidden_size * act_bytes(lay.precision)
    per_node = min(lay.tp, hw.gpus_per_node)
    if lay.sp:
        kind, per_pass = "all_gather", 4  # 2 AG + 2 RS, same cost
    else:
        kind, per_pass = "all_reduce", 2
    passes = 1 if forward_only else (3 if lay.recompute == "full" else 2)
    one = collective_seconds(nbytes, size=lay.tp, per_node=per_node, kind=kind, hw=hw)
    count = rl.layers_per_rank[rank] * per_pass * passes
    if rank == lay.pp - 1 and lay.sp:
        count += 1 if forward_only else 2  # gather before the logits layer (+ its backward)
    return count * one


def _rank_cp_seconds(
    model: ModelConfig, rl: ResolvedLayout, rank: int, hw: HardwareProfile, forward_only: bool
) -> float:
    """Exposed ring-attention exchanges of one micro-batch on pipeline rank ``rank``."""
    lay = rl.layout
    if lay.cp == 1:
        return 0.0
    a = act_bytes(lay.precision)
    block = rl.tokens_per_microbatch / lay.cp * 2 * kv_dim(model) / lay.tp * a  # K and V
    same_node = lay.tp * lay.cp <= hw.gpus_per_node
    hop = p2p_seconds(block, same_node=same_node, hw=hw)
    passes = 1 if forward_only else 3  # backward: K, V again and their gradients
    comm = (lay.cp - 1) * hop * passes
    f = forward_flops_per_token(model, lay.seq_len)
    attention = f.layer_attention * rl.tokens_per_microbatch / (lay.tp * lay.cp) * passes
    attention /= hw.peak_flops * hw.efficiency.compute
    return rl.layers_per_rank[rank] * max(0.0, comm - attention)


def optimizer_seconds(model: ModelConfig, rl: ResolvedLayout, hw: HardwareProfile) -> float:
    """One optimizer step of the slowest rank: HBM-bound Adam on the GPU share, the offloaded
    share on the host (the slower of its PCIe transfers and the CPU AdamW)."""
    lay = rl.layout
    local = max(rank_params(model, rl, r) for r in range(lay.pp)) / rl.optimizer_shards
    f = lay.optimizer_offload
    gpu = (1 - f) * local * OPTIMIZER_BYTES_PER_PARAM / (hw.hbm_tb_s * 1e12 * hw.efficiency.hbm)
    if f == 0:
        return gpu
    pcie = hw.host_link_gb_s * GB * hw.efficiency.network
    link = f * local * OFFLOAD_LINK_BYTES_PER_PARAM / pcie
    cpu = f * local * CPU_ADAM_BYTES_PER_PARAM / (hw.host_mem_gb_s * GB)
    return gpu + max(link, cpu)


def dp_wire_seconds(
    model: ModelConfig, rl: ResolvedLayout, hw: HardwareProfile
) -> tuple[float, float]:
    """(gradient reduction, parameter all-gather) wire seconds of the slowest rank."""
    lay = rl.layout
    size = rl.dp * lay.cp
    if size == 1:
        return 0.0, 0.0
    per_node = group_per_node(size, lay.tp, hw.gpus_per_node)
    params = max(rank_params(model, rl, r) for r in range(lay.pp))
    grads = params * lay.grad_bytes  # the gradient buffer (fp32, or bf16)
    if lay.distributed_optimizer:
        rs = collective_seconds(grads, size=size, per_node=per_node, kind="reduce_scatter", hw=hw)
        ag = collective_seconds(
            params * act_bytes(lay.precision),
            size=size,
            per_node=per_node,
            kind="all_gather",
            hw=hw,
        )
        return rs, ag
    return collective_seconds(grads, size=size, per_node=per_node, kind="all_reduce", hw=hw), 0.0


def training_time(
    model: ModelConfig,
    rl: ResolvedLayout,
    hw: HardwareProfile,
    options: TimeOptions | None = None,
) -> TrainTime:
    """Time of one step (one global batch) of ``rl`` on ``hw``."""
    opts = options or TimeOptions()
    lay = rl.layout
    fo = opts.forward_only
    peak = hw.peak_flops * hw.efficiency.compute
    per_rank = [
        (
            _rank_flops(model, rl, r, fo) / peak,
            _rank_tp_seconds(model, rl, r, hw, fo) + _rank_cp_seconds(model, rl, r, hw, fo),
        )
        for r in range(lay.pp)
    ]
    compute_mb, tp_mb = max(per_rank, key=lambda ct: ct[0] + ct[1])
    t_mb = compute_mb + tp_mb
    m = rl.num_microbatches
    bubble = t_mb * (lay.pp - 1) / lay.v
    p2p_fill = 0.0
    if lay.pp > 1:
        act = rl.tokens_per_microbatch / lay.cp * model.hidden_size * act_bytes(lay.precision)
        stride = lay.tp * lay.cp * rl.dp
        same_node = stride * lay.pp <= hw.gpus_per_node
        p2p_fill = (lay.pp - 1) * p2p_seconds(act, same_node=same_node, hw=hw)
    rs, ag = (0.0, 0.0) if fo else dp_wire_seconds(model, rl, hw)
    backward_window = 0.0 if fo else t_mb * 2.0 / 3.0
    forward_window = t_mb / 3.0
    exposed = max(0.0, rs - backward_window) if opts.overlap_grad_reduce else rs
    exposed += max(0.0, ag - forward_window) if opts.overlap_param_gather else ag
    optimizer = 0.0 if fo else optimizer_seconds(model, rl, hw)
    step = m * t_mb + bubble + p2p_fill + exposed + optimizer
    tokens = lay.global_batch * lay.seq_len
    f = forward_flops_per_token(model, lay.seq_len, vocab_size=1 if lay.head == "value" else None)
    model_flops = tokens * (model.num_layers * f.layer + f.logits) * (1.0 if fo else 3.0)
    hardware_flops = (
        sum(_rank_flops(model, rl, r, fo) for r in range(lay.pp)) * m * rl.dp * lay.tp * lay.cp
    )
    return TrainTime(
        step_s=step,
        compute_s=m * compute_mb,
        tp_comm_s=m * tp_mb,
        bubble_s=bubble,
        p2p_fill_s=p2p_fill,
        dp_comm_s=exposed,
        dp_comm_wire_s=rs + ag,
        optimizer_s=optimizer,
        microbatch_s=t_mb,
        model_flops=model_flops,
        hardware_flops=hardware_flops,
        mfu=model_flops / (rl.gpus * hw.peak_flops * step),
        tflops_per_gpu=model_flops / (rl.gpus * step) / 1e12,
    )
