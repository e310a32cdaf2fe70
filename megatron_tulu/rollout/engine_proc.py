"""The process side of a local rollout engine: building the vLLM ``LLM`` (one node or node rank 0
of a multi-node engine), watching its engine-core process, calling into it, shutting it down
(vLLM imported lazily)."""

from __future__ import annotations

import concurrent.futures as cf
import contextlib
import os
import signal
import threading
from collections.abc import Callable
from dataclasses import dataclass
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
    """One vLLM LLM in this process tree plus the process that must stay alive for it to
    answer. The calls below block; :class:`~megatron_tulu.rollout.engine.RolloutEngine` runs
    them on helper threads while it watches :meth:`check_alive`. The remote twin with the same
    methods is :class:`megatron_tulu.rollout.client.RemoteEngineHandle`."""

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

    def generate(
        self, prompts: list[list[int]], params: list[dict[str, Any]]
    ) -> list[list[Sample]]:
        """``params[i]``: vLLM ``SamplingParams`` keywords of prompt i."""
        from vllm import SamplingParams
        from vllm.inputs import TokensPrompt

        inputs = [TokensPrompt(prompt_token_ids=list(p)) for p in prompts]
        plist = [SamplingParams(**p) for p in params]
        outs = self.llm.generate(inputs, plist, use_tqdm=False)
        return [[sample_from_completion(c) for c in out.outputs] for out in outs]

    def score(self, sequences: list[list[int]], prompt_lens: list[int]) -> list[list[float]]:
        """Prompt log-probs (temperature 1, unprocessed) of ``seq[prompt_len:]``."""
        from vllm import SamplingParams
        from vllm.inputs import TokensPrompt

        params = SamplingParams(max_tokens=1, temperature=0.0, prompt_logprobs=0, detokenize=False)
        inputs = [TokensPrompt(prompt_token_ids=list(s)) for s in sequences]
        outs = self.llm.generate(inputs, params, use_tqdm=False)
        scores = []
        for seq, plen, out in zip(sequences, prompt_lens, outs, strict=True):
            per_pos = out.prompt_logprobs  # [None, {token: Logprob}, ...]
            scores.append([per_pos[j][seq[j]].logprob for j in range(plen, len(seq))])
        return scores

    def collective_rpc(self, method: str, kwargs: dict[str, Any] | None = None) -> list[Any]:
        """One of the worker extension's ``mt_*`` methods on every worker of this engine."""
        return self.llm.collective_rpc(method, kwargs=kwargs or {})

    def reset_prefix_cache(self) -> bool:
        return bool(self.llm.reset_prefix_cache())

    def shutdown(self, timeout_s: float = 30.0) -> None:
        client = self.llm.llm_engine.engine_core
        done = in_thread(lambda: client.shutdown(), f"rollout-{self.index}-shutdown")
        with contextlib.suppress(Exception):
            done.result(timeout=timeout_s)
        if self.process is not None and self.process.is_alive():
            self.process.kill()
            self.process.join(5.0)


@dataclass(frozen=True, kw_only=True)
class MultiNode:
    """vLLM's multi-node multiprocess executor for one engine: ``nnodes`` processes (one per
    node, ``vllm_tp / nnodes`` workers each) meet at ``master_addr:master_port`` (node rank
    0's torch.distributed store); node rank 0 runs the engine core, the others are headless."""

    nnodes: int
    node_rank: int
    master_addr: str
    master_port: int

    def engine_kwargs(self) -> dict[str, Any]:
        return {
            "nnodes": self.nnodes,
            "node_rank": self.node_rank,
            "master_addr": self.master_addr,
            "master_port": self.master_port,
            "distributed_executor_backend": "mp",
        }


def engine_kwargs(
    cfg: RolloutConfig, *, load_format: str = "auto", multinode: MultiNode | None = None
) -> dict[str, Any]:
    """vLLM engine arguments of one engine as configured (every node of an engine must build
    the same ones): our worker extension, processed log-probs, no tokenizer (token ids in and
    out). ``load_format="dummy"`` starts from random weights that the first push replaces."""
    memory: dict[str, Any] = (
        {"kv_cache_memory_bytes": int(cfg.kv_cache_gib * 2**30)}
        if cfg.kv_cache_gib is not None
        else {"gpu_memory_utilization": cfg.gpu_memory_utilization}
    )
    return {
        "model": cfg.model_dir,
        "skip_tokenizer_init": True,
        "tensor_parallel_size": cfg.vllm_tp,
        "dtype": cfg.dtype,
        "max_model_len": cfg.max_model_len,
        "seed": cfg.seed,
        "enforce_eager": cfg.enforce_eager,
        "enable_prefix_caching": cfg.enable_prefix_caching,
        "max_num_seqs": cfg.max_num_seqs,
        "logprobs_mode": "processed_logprobs",
        "worker_extension_cls": WORKER_EXTENSION,
        "load_format": load_format,
        **memory,
        **(multinode.engine_kwargs() if multinode is not None else {}),
    }


def make_llm(
    cfg: RolloutConfig, *, load_format: str = "auto", multinode: MultiNode | None = None
) -> Any:
    """One vLLM ``LLM`` (the engine core in its own process unless ``cfg.multiprocess`` is
    false); with ``multinode`` this is node rank 0 of a multi-node engine."""
    from vllm import LLM

    key = "VLLM_ENABLE_V1_MULTIPROCESSING"
    saved = os.environ.get(key)
    os.environ[key] = "1" if cfg.multiprocess else "0"
    try:
        return LLM(**engine_kwargs(cfg, load_format=load_format, multinode=multinode))
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
