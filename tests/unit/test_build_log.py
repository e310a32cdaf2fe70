"""Building the local spec does not log megatron's "Unknown MLP type" warning once per layer
(models/mlp.py ``quiet_unknown_mlp``), and the filter drops only that message."""

from __future__ import annotations

import contextlib
import logging

from megatron_tulu.platform.spawn import run_ranks

LOGGER = "megatron.core.transformer.transformer_layer"


def _build_and_listen(filtered: bool) -> list[str]:
    import megatron_tulu.models.llama as llama
    from megatron_tulu.config import ParallelConfig, model_preset
    from megatron_tulu.models.mlp import quiet_unknown_mlp
    from megatron_tulu.parallel import destroy_parallel, init_parallel

    seen: list[str] = []

    class Listen(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            seen.append(record.getMessage())

    logger = logging.getLogger(LOGGER)
    logger.addHandler(Listen())
    logger.setLevel(logging.INFO)
    if not filtered:  # the build as it was before the filter
        llama.quiet_unknown_mlp = contextlib.nullcontext
    model = model_preset("tiny", num_layers=2)
    dims = ParallelConfig().resolve(1, model)
    init_parallel(dims, seed=0)
    try:
        llama.build_model_chunks(model, dims)
        with quiet_unknown_mlp():
            logger.warning("another warning")
        return seen
    finally:
        destroy_parallel()


def test_the_local_spec_builds_without_unknown_mlp_warnings() -> None:
    quiet = run_ranks(_build_and_listen, 1, True)[0]
    assert not [m for m in quiet if m.startswith("Unknown MLP type")], quiet
    assert "another warning" in quiet
    loud = run_ranks(_build_and_listen, 1, False)[0]
    assert sum(m.startswith("Unknown MLP type") for m in loud) == 2  # once per layer
