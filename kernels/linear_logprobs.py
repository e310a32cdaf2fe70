"""Fused output layer + token log-probs (+ entropy): full logits never exist.

hidden [tokens, h] (replicated over the TP group) times this rank's output-layer shard
weight [V/t, h] gives logits [tokens, V/t]; they are produced ``chunk_rows`` tokens at a time,
reduced at once to the per-token statistics of ``kernels.logprobs`` / ``kernels.entropy`` and
dropped. The TP group combines the statistics as those ops do (all-reduces of [tokens]).
Backward recomputes each chunk's logits (one extra GEMM) and its logits gradient, then

    grad_hidden[chunk] = grad_logits @ weight,   grad_weight += grad_logits^T @ hidden[chunk]

and all-reduces grad_hidden over the TP group, as megatron's output layer does for its input
(``copy_to_tensor_model_parallel_region``): do not wrap ``hidden`` in that mapping as well.
Extra memory: O(chunk_rows x V/t) plus the gradients of hidden and weight. grad_weight is
accumulated in the weight's dtype across chunks (as Liger-Kernel's fused linear cross-entropy).
``LinearTokenLoss`` is the variant for a loss that is a sum of per-token functions of the
log-probs (SFT, DPO's second pass, PPO/GRPO): it returns the loss and makes the gradient in the
forward with three GEMMs per chunk, no recompute (see its docstring).
The per-chunk reductions use the Triton kernels (CUDA or interpreter) or the torch path; the
GEMMs are torch's either way.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.distributed as dist

from kernels.chunking import default_linear_chunk_rows
from kernels.entropy import combine_entropy, entropy_grad, entropy_stats
from kernels.logprobs import combine_logprobs, logprob_grad, logprob_stats
from kernels.vocab_parallel import VocabShard, all_reduce_, chunk_ranges, vocab_shard


def _chunking(
    hidden: torch.Tensor,
    weight: torch.Tensor,
    vocab_size: int | None,
    group: dist.ProcessGroup | None,
    chunk_rows: int | None,
) -> tuple[VocabShard, int]:
    """(this rank's vocabulary shard, tokens per chunk), the shapes checked."""
    if hidden.shape[-1] != weight.shape[-1]:
        raise ValueError(
            f"hidden {tuple(hidden.shape)} and weight {tuple(weight.shape)} disagree on the "
            "hidden size (weight is this rank's [V/t, h] output-layer shard)"
        )
    num_rows, num_cols = hidden.shape[0], weight.shape[0]
    shard = vocab_shard(num_cols, vocab_size, group)
    return shard, chunk_rows or default_linear_chunk_rows(num_rows, num_cols, hidden.shape[1])


class LinearLogprobs(torch.autograd.Function):
    """hidden [tokens, h], weight [V/t, h], labels [tokens] -> (logp, entropy) fp32 [tokens].

    ``entropy`` is an empty tensor unless ``with_entropy``.
    """

    @staticmethod
    def forward(
        ctx: torch.autograd.function.FunctionCtx,
        hidden: torch.Tensor,
        weight: torch.Tensor,
        labels: torch.Tensor,
        temperature: float,
        vocab_size: int | None,
        group: dist.ProcessGroup | None,
        ignore_index: int,
        with_entropy: bool,
        backend: str,
        chunk_rows: int | None,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        shard, rows = _chunking(hidden, weight, vocab_size, group, chunk_rows)
        num_rows = hidden.shape[0]
        labels = labels.contiguous()
        inv_temp = 1.0 / temperature
        lp_stats = torch.empty(3, num_rows, dtype=torch.float32, device=hidden.device)
        ent_stats = torch.empty(3, num_rows if with_entropy else 0, device=hidden.device)
        for a, b in chunk_ranges(num_rows, rows):
            logits = hidden[a:b] @ weight.t()  # [chunk, V/t]
            stats = logprob_stats(
                logits, labels[a:b], shard, inv_temp=inv_temp, backend=backend, chunk_rows=rows
            )
            lp_stats[:, a:b] = torch.stack(stats)
            if with_entropy:
                stats = entropy_stats(
                    logits, shard, inv_temp=inv_temp, backend=backend, chunk_rows=rows
                )
                ent_stats[:, a:b] = torch.stack(stats)
            del logits
        lse, logp = combine_logprobs(tuple(lp_stats), group)
        ent = combine_entropy(tuple(ent_stats), group)[1] if with_entropy else ent_stats[0]
        if not with_entropy:
            ctx.mark_non_differentiable(ent)
        ignored = labels == ignore_index
        ctx.save_for_backward(hidden, weight, labels, lse, ent, ignored)
        ctx.settings = (shard, inv_temp, with_entropy, group, backend, rows)
        ctx.set_materialize_grads(False)
        return torch.where(ignored, 0.0, logp), ent

    @staticmethod
    def backward(
        ctx: torch.autograd.function.FunctionCtx,
        grad_logp: torch.Tensor | None,
        grad_entropy: torch.Tensor | None,
    ):
        hidden, weight, labels, lse, ent, ignored = ctx.saved_tensors
        shard, inv_temp, with_entropy, group, backend, rows = ctx.settings
        nones = (None,) * 8
        if not with_entropy:
            grad_entropy = None
        if grad_logp is None and grad_entropy is None:
            return None, None, *nones
        if grad_logp is not None:
            grad_logp = torch.where(ignored, 0.0, grad_logp.float()).contiguous()
        if grad_entropy is not None:
            grad_entropy = grad_entropy.float().contiguous()
        need_hidden, need_weight = ctx.needs_input_grad[:2]
        grad_hidden = torch.empty_like(hidden) if need_hidden else None
        grad_weight = torch.zeros_like(weight) if need_weight else None
        opts = {"inv_temp": inv_temp, "backend": backend, "chunk_rows": rows}
        for a, b in chunk_ranges(hidden.shape[0], rows):
            logits = hidden[a:b] @ weight.t()
            grad_logits = torch.empty_like(logits)
            if grad_logp is not None:
                logprob_grad(
                    logits, labels[a:b], lse[a:b], grad_logp[a:b], shard, out=grad_logits, **opts
                )
            if grad_entropy is not None:
                entropy_grad(
                    logits, lse[a:b], ent[a:b], grad_entropy[a:b], shard,
                    out=grad_logits, accumulate=grad_logp is not None, **opts,
                )  # fmt: skip
            del logits
            _input_grads(grad_logits, hidden, weight, a, b, grad_hidden, grad_weight)
        if grad_hidden is not None:
            all_reduce_(grad_hidden, dist.ReduceOp.SUM, group)
        return grad_hidden, grad_weight, *nones


def _input_grads(
    grad_logits: torch.Tensor,
    hidden: torch.Tensor,
    weight: torch.Tensor,
    a: int,
    b: int,
    grad_hidden: torch.Tensor | None,
    grad_weight: torch.Tensor | None,
) -> None:
    """The two GEMMs of a chunk's logits gradient: grad_hidden[a:b] and grad_weight += ."""
    if grad_hidden is not None:
        torch.mm(grad_logits, weight, out=grad_hidden[a:b])
    if grad_weight is not None:
        grad_weight.addmm_(grad_logits.t(), hidden[a:b])


TokenLoss = Callable[[torch.Tensor, int, int], tuple[torch.Tensor, torch.Tensor]]


class LinearTokenLoss(torch.autograd.Function):
    """hidden [tokens, h], weight [V/t, h], labels [tokens] and a per-token loss ->
    (sum of the token losses, fp32 scalar; logp and entropy fp32 [tokens], without gradient).

    ``token_loss(logp, a, b) -> (loss, dloss_dlogp)``: the losses of tokens a..b (fp32 [b - a])
    given their log-probs (fp32 [b - a], the whole vocabulary's), and the losses' derivatives
    with respect to them. It runs once per chunk while the chunk's logits exist, so the logits
    gradient and both input gradients are made in the forward: three GEMMs per chunk as the
    unfused path, where :class:`LinearLogprobs` needs a fourth (its backward recomputes the
    logits because it cannot know the upstream gradient then). Any loss that is a sum of
    per-token functions of the log-probs fits: SFT's ``-mask * logp``, DPO's second pass
    ``coef * mask * logp``, PPO's clipped surrogate (+ GRPO's KL term) given the rollout's
    columns. Ignored tokens (``ignore_index``) count 0 and get no gradient. ``entropy`` is an
    empty tensor unless ``with_entropy``. The backward only scales the stored gradients by the
    scalar upstream gradient, so it can run once (``retain_graph`` is refused). The price:
    grad_weight [V/t, h] (in the weight's dtype) and grad_hidden exist from the forward on,
    instead of from the backward on.
    """

    @staticmethod
    def forward(
        ctx: torch.autograd.function.FunctionCtx,
        hidden: torch.Tensor,
        weight: torch.Tensor,
        labels: torch.Tensor,
        token_loss: TokenLoss,
        temperature: float,
        vocab_size: int | None,
        group: dist.ProcessGroup | None,
        ignore_index: int,
        with_entropy: bool,
        backend: str,
        chunk_rows: int | None,
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        shard, rows = _chunking(hidden, weight, vocab_size, group, chunk_rows)
        num_rows = hidden.shape[0]
        labels = labels.contiguous()
        ignored = labels == ignore_index
        need_hidden, need_weight = ctx.needs_input_grad[:2]
        grad_hidden = torch.empty_like(hidden) if need_hidden else None
        grad_weight = torch.zeros_like(weight) if need_weight else None
        opts = {"inv_temp": 1.0 / temperature, "backend": backend, "chunk_rows": rows}
        device = hidden.device
        logp = torch.empty(num_rows, dtype=torch.float32, device=device)
        ent = torch.empty(num_rows if with_entropy else 0, dtype=torch.float32, device=device)
        total = torch.zeros((), dtype=torch.float32, device=device)
        for a, b in chunk_ranges(num_rows, rows):
            logits = hidden[a:b] @ weight.t()
            stats = logprob_stats(logits, labels[a:b], shard, **opts)
            lse, chunk_logp = combine_logprobs(stats, group)  # one TP all-reduce per chunk
            logp[a:b] = chunk_logp = torch.where(ignored[a:b], 0.0, chunk_logp)
            if with_entropy:
                ent[a:b] = combine_entropy(entropy_stats(logits, shard, **opts), group)[1]
            loss, dlogp = token_loss(chunk_logp, a, b)
            total += torch.where(ignored[a:b], 0.0, loss.float()).sum()
            if need_hidden or need_weight:
                dlogp = torch.where(ignored[a:b], 0.0, dlogp.float()).contiguous()
                grad_logits = torch.empty_like(logits)
                logprob_grad(logits, labels[a:b], lse, dlogp, shard, out=grad_logits, **opts)
                del logits
                _input_grads(grad_logits, hidden, weight, a, b, grad_hidden, grad_weight)
        if grad_hidden is not None:
            all_reduce_(grad_hidden, dist.ReduceOp.SUM, group)
        ctx.grads = [grad_hidden, grad_weight]
        ctx.mark_non_differentiable(logp, ent)
        return total, logp, ent

    @staticmethod
    def backward(
        ctx: torch.autograd.function.FunctionCtx,
        grad_total: torch.Tensor,
        _grad_logp: None,
        _grad_entropy: None,
    ):
        if ctx.grads is None:
            raise RuntimeError(
                "linear_token_loss: backward ran twice through the same forward (retain_graph);"
                " its gradients were made in the forward and handed out once"
            )
        grads, ctx.grads = ctx.grads, None
        scaled = [None if g is None else g.mul_(grad_total.to(g.dtype)) for g in grads]
        return *scaled, *(None,) * 9
