"""The process side of a rollout engine: building the vLLM ``LLM``, watching its engine-core
process, shutting it down, and calling into it from helper threads (vLLM imported lazily)."""

from __future__ import annotations

import concurrent.futures as cf
import contextlib
import os
import signal
import threading
from collections.abc import Callable
from typing import Any, TypeVar

from megatron_tulu.rollout.config import RolloutConfig
from megatron_tulu.rollout.types import RolloutEngineDied, Sample

WORKER_EXTENSION = "megatron_tulu.rollout.worker_ext.WeightReceiver"
_T = TypeVar("_T")


def in_thread(fn: Callable[[], _T], name: str) -> cf.Future[_T]:
    """Runs ``fn`` on a daemon thread (never joined at exit, so a hung call cannot hang it)."""
    future: cf.Future[_T] = cf.Future()

    def run() -> None:
        try:
            future.set_result(fn())
        except BaseException as exc:
            future.set_exception(exc)

    threading.Thread(target=run, name=name, daemon=True).start()
    return future


def _exit_text(code: int | None) -> str:
    if code is None:
        return "exit code unknown"
    if code < 0:
        with contextlib.suppress(ValueError):
            return f"killed by {signal.Signals(-code).name}"
    return f"exit code {code}"


class EngineHandle:
    """One vLLM LLM plus the process that must stay alive for it to answer."""

    def __init__(self, index: int, llm: Any) -> None:
        self.index = index
        self.llm = llm
        self.process = None
        resources = getattr(llm.llm_engine.engine_core, "resources", None)
        manager = getattr(resources, "engine_manager", None)
        if manager is not None and getattr(manager, "processes", None):
            self.process = manager.processes[0]
        self.dead_reason: str | None = None

    @property
    def pid(self) -> int:
        return os.getpid() if self.process is None else int(self.process.pid)

    def check_alive(self, what: str) -> None:
        if self.dead_reason is None and self.process is not None and not self.process.is_alive():
            self.dead_reason = (
                f"rollout engine {self.index} (engine-core pid {self.process.pid}) died "
                f"({_exit_text(self.process.exitcode)}), noticed during {what}"
            )
            raise RolloutEngineDied(self.dead_reason)
        if self.dead_reason is not None:
            raise RolloutEngineDied(f"{what} refused: {self.dead_reason}")

    def shutdown(self, timeout_s: float = 30.0) -> None:
        client = self.llm.llm_engine.engine_core
        done = in_thread(lambda: client.shutdown(), f"rollout-{self.index}-shutdown")
        with contextlib.suppress(Exception):
            done.result(timeout=timeout_s)
        if self.process is not None and self.process.is_alive():
            self.process.kill()
            self.process.join(5.0)


def make_llm(cfg: RolloutConfig) -> Any:
    """One vLLM ``LLM`` as configured, with our worker extension and processed log-probs."""
    from vllm import LLM

    memory: dict[str, Any] = (
        {"kv_cache_memory_bytes": int(cfg.kv_cache_gib * 2**30)}
        if cfg.kv_cache_gib is not None
        else {"gpu_memory_utilization": cfg.gpu_memory_utilization}
    )
    key = "VLLM_ENABLE_V1_MULTIPROCESSING"
    saved = os.environ.get(key)
    os.environ[key] = "1" if cfg.multiprocess else "0"
    try:
        return LLM(
            model=cfg.model_dir,
            skip_tokenizer_init=True,
            tensor_parallel_size=cfg.vllm_tp,
            dtype=cfg.dtype,
            max_model_len=cfg.max_model_len,
            seed=cfg.seed,
            enforce_eager=cfg.enforce_eager,
            enable_prefix_caching=cfg.enable_prefix_caching,
            max_num_seqs=cfg.max_num_seqs,
            logprobs_mode="processed_logprobs",
            worker_extension_cls=WORKER_EXTENSION,
            **memory,
        )
    finally:
        if saved is None:
            os.environ.pop(key, None)
        else:
            os.environ[key] = saved


def sample_from_completion(completion: Any) -> Sample:
    ids = list(completion.token_ids)
    logprobs = [step[t].logprob for step, t in zip(completion.logprobs or [], ids, strict=True)]
    reason = completion.finish_reason
    return Sample(
        token_ids=ids, logprobs=logprobs, finish_reason="length" if reason == "length" else "stop"
    )
