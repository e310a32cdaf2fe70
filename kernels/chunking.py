"""Chunk sizes of the chunked ops (pure Python: the planner imports them without torch).

``DEFAULT_CHUNK_ELEMS``: the extra memory budget of the chunked torch path, in fp32 elements per
chunk (128 MiB): chunk rows = budget // columns, e.g. 261 rows of a 128,256-column shard. From a
sweep on the 2-core dev machine (forward + backward, 4,096 x 128,256 fp32, 2 threads):
cache-sized chunks (8-64 rows) were fastest with idle cores (1.0 s vs 1.3 s; naive 1.7-1.9 s) but
1.4-4x slower than naive when another process competed for a core (each op is a short OpenMP
region that waits for the descheduled thread); ~256 rows stayed at or under naive's time in both
conditions.
"""

from __future__ import annotations

DEFAULT_CHUNK_ELEMS = 1 << 25


def default_chunk_rows(num_cols: int) -> int:
    """Rows per chunk of the torch path: ``DEFAULT_CHUNK_ELEMS`` fp32 elements, at least one row."""
    return max(1, DEFAULT_CHUNK_ELEMS // max(1, num_cols))


def default_linear_chunk_rows(num_rows: int, num_cols: int, hidden_size: int) -> int:
    """Tokens per chunk of the fused output layer: Liger-Kernel's rule (a logits chunk about as
    large as the hidden states, a power of two), raised to the torch path's budget of
    DEFAULT_CHUNK_ELEMS values per chunk: larger GEMMs run faster (on 2 CPU cores 512 rows
    reached 385 GFLOP/s, 128 rows 275), and that budget is small next to the weight shard.
    The budget's rows are rounded down to a power of two too: a chunk is the M dimension of
    three GEMMs, and GPU GEMM kernels tile M by 64-256 rows, so 261 rows (the budget at
    V = 128,256) would run a nearly empty last tile in each (256 rows: none)."""
    blowup = -(-num_cols // max(1, hidden_size))
    rows = max(1, -(-num_rows // max(1, blowup)))
    liger = 1 << (rows - 1).bit_length()  # the next power of two >= rows
    budget = 1 << (default_chunk_rows(num_cols).bit_length() - 1)  # power of two <= budget
    return max(liger, budget)
