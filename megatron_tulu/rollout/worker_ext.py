"""The vLLM worker extension that receives pushed weights.

Passed to vLLM as ``worker_extension_cls="megatron_tulu.rollout.worker_ext.WeightReceiver"``;
vLLM mixes it into every worker (one per vLLM TP rank, in the engine's own processes), and the
trainer calls its ``mt_*`` methods through ``LLM.collective_rpc``. Only small control values
travel through the RPC; tensors travel through the private group (see ``transport``).

Weights are applied with the worker's ``reload_weights(weights_iterator=...)``, vLLM's in-place
layer-wise reload, which re-runs each layer's post-load processing (CPU weight prepacking):
plain ``model.load_weights`` does NOT work on CPU (updates are silently ignored). The stream is
consumed lazily, so each layer is processed as soon as its tensors have arrived.

Why not vLLM 0.32's built-in weight-transfer API (``weight_transfer_config``,
``WeightTransferEngineFactory.register_engine``)? Evaluated and not used: (1) its base
``update_weights`` calls ``torch.accelerator.synchronize()``, which raises on a CPU-only build;
(2) a custom (gloo) engine must be registered inside each engine process before the model loads,
i.e. through a vLLM plugin entry point or an import side effect; (3) on a failed
``update_weights`` the worker drops the session without finalising the layer-wise reload, which
leaves layers on the meta device (the engine dies at the next generate). Its NCCL engine would
cover only the GPU half, so CPU and GPU would run different code. This extension is one code
path for both: the group backend is the only switch.

Error path: a tensor is checked (known name, right shape) before vLLM sees it. If anything
fails while receiving, the layer-wise reload is finalised at once (layers that received nothing
keep their old weights; a partly received layer holds garbage), the rest of the stream is
drained so the trainer never blocks, and the RPC raises with the cause. Recovery is a full push.
The GPU path (NCCL group, CUDA tensors) has not been run here: no GPU on the dev machines.
"""

from __future__ import annotations

import os
import time
from typing import Any

from megatron_tulu.rollout.transport import BucketReceiver, PushAborted, close_group, open_group


class WeightReceiver:
    """Mixed into vLLM's worker class: ``self`` is the worker (``self.rank``, ``self.device``,
    ``self.vllm_config``, ``self.model_runner``, ``self.reload_weights``)."""

    def mt_join_weight_group(
        self,
        *,
        host: str,
        port: int,
        rank_offset: int,
        world_size: int,
        backend: str,
        timeout_s: float,
    ) -> int:
        """Joins the trainer's private weight-sync group (closing any previous one); returns
        this worker's rank in it (``rank_offset`` + its vLLM rank)."""
        self.mt_leave_weight_group()
        self._mt_expected = self._mt_expected_shapes()
        rank = rank_offset + int(self.rank)
        self._mt_group = open_group(
            host=host,
            port=port,
            rank=rank,
            world_size=world_size,
            backend=backend,
            timeout_s=timeout_s,
            device=self.device,
        )
        return rank

    def mt_leave_weight_group(self) -> None:
        group = getattr(self, "_mt_group", None)
        self._mt_group = None
        if group is not None:
            close_group(group)

    def mt_process_id(self) -> int:
        return os.getpid()

    def mt_broken_reason(self) -> str | None:
        """Set when a failed push could not even be finalised: restart the engine."""
        return getattr(self, "_mt_broken", None)

    def mt_receive_weights(self) -> dict[str, Any]:
        """Receives one push and applies it in place; returns {tensors, bytes, seconds,
        wait_seconds} (seconds in this call; of them, blocked in broadcasts)."""
        group = getattr(self, "_mt_group", None)
        if group is None:
            raise RuntimeError("mt_receive_weights before mt_join_weight_group")
        from megatron_tulu.rollout.checks import PushChecker

        checker = PushChecker(self._mt_expected, where=f"vLLM worker rank {self.rank}")
        stream = BucketReceiver(
            group, device=self.device, check=checker.check, tp_rank=int(self.rank)
        )
        start = time.perf_counter()
        try:
            self.reload_weights(weights_iterator=iter(stream))
        except BaseException as exc:
            cause = f"{type(exc).__name__}: {exc}"
            if isinstance(exc, PushAborted):
                cause = f"the trainer aborted the push: {exc}"
            self._mt_finalize_after_error(cause)
            try:
                stream.drain()
            except BaseException as drain_exc:
                cause += f" (and draining the rest of the push failed: {drain_exc})"
            raise RuntimeError(
                f"weight push failed on vLLM worker rank {self.rank}: {cause}. Layers that "
                "received nothing keep their old weights, a partly received one is garbage: "
                "push all weights again"
            ) from exc
        return {
            "tensors": stream.tensors,
            "bytes": stream.bytes,
            "seconds": time.perf_counter() - start,
            "wait_seconds": stream.wait_seconds,
        }

    def _mt_finalize_after_error(self, cause: str) -> None:
        from vllm.config import set_current_vllm_config
        from vllm.model_executor.model_loader.reload import finalize_layerwise_reload

        try:
            with set_current_vllm_config(self.vllm_config):
                finalize_layerwise_reload(
                    self.model_runner.get_model(), self.vllm_config.model_config
                )
        except BaseException as exc:
            self._mt_broken = (
                f"a failed weight push ({cause}) could not be finalised ({exc}); the model "
                "is unusable: restart the engine"
            )

    def _mt_expected_shapes(self) -> dict[str, tuple[int, ...]]:
        from megatron_tulu.models.hf_io import read_hf_config
        from megatron_tulu.rollout.checks import hf_tensor_shapes

        return hf_tensor_shapes(read_hf_config(self.vllm_config.model_config.model))
