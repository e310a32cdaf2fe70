"""Launch settings shared by the Triton kernels, and the check that a launch can run here.

Triton kernels run on CUDA tensors, or on CPU tensors under the Triton interpreter, which is
chosen when ``triton.jit`` decorates a kernel: ``TRITON_INTERPRET=1`` must be set before the
kernel modules are imported (in practice: before anything imports triton).
"""

from __future__ import annotations

import torch
import triton
from triton.runtime.interpreter import InterpretedFunction

# Columns per block on CUDA: 4,096 fp32 values over 8 warps (16 per thread). Not tuned on a GPU
# yet (no device in the task that wrote this); Liger-Kernel's cross-entropy uses up to 32,768.
MAX_BLOCK_V_CUDA = 4096
NUM_WARPS_CUDA = 8
# Under the interpreter: small blocks, so that the tests' small vocabularies take the same
# multi-block online-softmax loop (and a ragged last block) that 128k-column shards take on GPU.
MAX_BLOCK_V_INTERPRETER = 128


def is_interpreted(kernel: object) -> bool:
    return isinstance(kernel, InterpretedFunction)


def check_launchable(kernel: object, tensor: torch.Tensor) -> None:
    """Raises a clear error (not a driver failure) for CPU tensors without the interpreter."""
    if tensor.is_cuda or is_interpreted(kernel):
        return
    raise RuntimeError(
        f"the Triton backend got a {tensor.device.type} tensor but the kernels were compiled for "
        "CUDA: set TRITON_INTERPRET=1 before anything imports triton to run them on CPU under "
        "the interpreter, or use backend='torch'"
    )


def block_v(kernel: object, num_cols: int) -> int:
    cap = MAX_BLOCK_V_INTERPRETER if is_interpreted(kernel) else MAX_BLOCK_V_CUDA
    return min(triton.next_power_of_2(max(num_cols, 1)), cap)


def launch_options(kernel: object) -> dict[str, int]:
    return {} if is_interpreted(kernel) else {"num_warps": NUM_WARPS_CUDA}
