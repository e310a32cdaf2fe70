"""The chunked torch path never allocates a [tokens, V] tensor besides the logits' gradient.

An ``AllocationLog`` (a TorchDispatchMode) records the size of every new storage an aten op
returns during forward + backward (views, in-place and ``out=`` results reuse storage and are not
counted). It is shown to catch the naive ``log_softmax(...).gather(...)``; the ops' values are
checked against the naive result as well.
"""

from __future__ import annotations

import torch
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_leaves

from kernels.chunking import DEFAULT_CHUNK_ELEMS, default_chunk_rows, default_linear_chunk_rows
from megatron_tulu.ops import entropy, linear_logprobs, token_logprobs

N, V, VOCAB = 64, 65536, 65000
CHUNK = 16  # tokens: 4 chunks
FP32 = 4


class AllocationLog(TorchDispatchMode):
    def __init__(self) -> None:
        super().__init__()
        self.sizes: list[int] = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        out = func(*args, **kwargs)
        inputs = {
            t.untyped_storage().data_ptr()
            for t in tree_leaves((args, kwargs))
            if isinstance(t, torch.Tensor)
        }
        for t in tree_leaves(out):
            if isinstance(t, torch.Tensor) and t.untyped_storage().data_ptr() not in inputs:
                self.sizes.append(t.untyped_storage().nbytes())
        return out


def _inputs() -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    gen = torch.Generator().manual_seed(0)
    logits = 3 * torch.randn(N, V, generator=gen)
    logits[:, VOCAB:] = 30.0
    return logits, torch.randint(0, VOCAB, (N,), generator=gen), torch.randn(N, generator=gen)


def _naive(logits: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    logp = torch.log_softmax(logits[:, :VOCAB], -1)
    return logp.gather(1, labels[:, None]).squeeze(1), -(logp.exp() * logp).sum(-1)


def _large(sizes: list[int], limit: int) -> list[int]:
    return sorted(s for s in sizes if s > limit)


def test_the_log_catches_the_naive_log_softmax() -> None:
    logits, labels, grad = _inputs()
    logits.requires_grad_()
    with AllocationLog() as log:
        _naive(logits, labels)[0].backward(grad)
    # log_softmax's output [N, V] and more, beyond the gradient itself
    assert len(_large(log.sizes, CHUNK * V * FP32)) >= 2


def test_token_logprobs_and_entropy_extra_memory_is_one_chunk() -> None:
    logits, labels, grad = _inputs()
    expected_logp, expected_ent = _naive(logits, labels)
    for op in (
        lambda x: token_logprobs(x, labels, vocab_size=VOCAB, backend="torch", chunk_tokens=CHUNK),
        lambda x: entropy(x, vocab_size=VOCAB, backend="torch", chunk_tokens=CHUNK),
    ):
        x = logits.clone().requires_grad_()
        with AllocationLog() as log:
            out = op(x)
            out.backward(grad)
        # Only the gradient [N, V] is larger than one fp32 chunk [CHUNK, V].
        assert _large(log.sizes, CHUNK * V * FP32) == [N * V * FP32]
        assert torch.count_nonzero(x.grad[:, VOCAB:]) == 0
    # Values, chunked and with the default chunk (atol: fp32 sums of 65k terms, observed ~1e-6).
    for chunk in (CHUNK, None):
        logp = token_logprobs(logits, labels, vocab_size=VOCAB, backend="torch", chunk_tokens=chunk)
        ent = entropy(logits, vocab_size=VOCAB, backend="torch", chunk_tokens=chunk)
        torch.testing.assert_close(logp, expected_logp, atol=2e-5, rtol=1e-5)
        torch.testing.assert_close(ent, expected_ent, atol=2e-5, rtol=1e-5)


def test_default_chunk_is_a_fixed_number_of_elements() -> None:
    assert default_chunk_rows(128256) == DEFAULT_CHUNK_ELEMS // 128256 == 261
    assert default_chunk_rows(16032) == DEFAULT_CHUNK_ELEMS // 16032  # V/t at tp 8
    assert default_chunk_rows(DEFAULT_CHUNK_ELEMS * 2) == 1  # at least one row


def test_linear_logprobs_never_holds_the_logits() -> None:
    num_tokens, hidden_size, num_cols = 256, 64, 4096
    rows = 4  # logits chunks [4, 4096]: as large as hidden [256, 64]
    gen = torch.Generator().manual_seed(1)
    hidden = torch.randn(num_tokens, hidden_size, generator=gen, requires_grad=True)
    weight = torch.randn(num_cols, hidden_size, generator=gen).div_(8).requires_grad_()
    labels = torch.randint(0, num_cols, (num_tokens,), generator=gen)
    with AllocationLog() as log:
        out = linear_logprobs(
            hidden, weight, labels, with_entropy=True, backend="torch", chunk_tokens=rows
        )
        (out.logprobs.sum() + out.entropy.sum()).backward()
    # Nothing beyond grad_weight [V, h]; the logits [tokens, V] would be 4x as large.
    assert max(log.sizes) == num_cols * hidden_size * FP32
    logp_all = torch.log_softmax(hidden.detach() @ weight.detach().t(), -1)
    expected = logp_all.gather(1, labels[:, None]).squeeze(1)
    torch.testing.assert_close(out.logprobs.detach(), expected, atol=1e-5, rtol=1e-5)


def test_default_linear_chunk_is_liger_rule_at_least_the_torch_budget() -> None:
    # Liger's rule: tokens / ceil(V / h), as a power of two -> 128 for 4,096 x 4,096 x 128,256
    # raised to the budget (261 rows of 128,256), as a power of two (GEMM tiles)
    assert default_linear_chunk_rows(4096, 128256, 4096) == 256
    assert default_linear_chunk_rows(64, 512, 64) == 1 << 16  # a tiny vocabulary: the budget
    assert default_linear_chunk_rows(1 << 20, 128256, 4096) == 1 << 15  # Liger's rule
