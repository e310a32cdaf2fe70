"""The generation phase of an RLVR step: rank 0 asks vLLM for samples, scores them with the
verifiers, and broadcasts the result to every trainer rank.

Only global rank 0 owns the :class:`~megatron_tulu.rollout.RolloutEngine`. A failure on rank 0
(the engine died) travels in the broadcast payload, so every rank raises the same
:class:`RolloutPhaseError` at the same point and the trainer can save collectively.
"""

from __future__ import annotations

import concurrent.futures as cf
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import torch.distributed as dist

from megatron_tulu.stages.rlvr.prompts import RLPrompt


class RolloutPhaseError(RuntimeError):
    """Generation failed on rank 0 (e.g. the vLLM engine died); raised on every rank."""


@dataclass(kw_only=True)
class Rollouts:
    """One step's samples, flattened prompt-major: row ``i * n + j`` is sample j of prompt i."""

    prompt_ids: list[list[int]]
    response_ids: list[list[int]]
    vllm_logprobs: list[list[float]]
    has_eos: list[bool]
    correct: list[bool]
    datasets: list[str]
    policy_version: int  # optimizer-step count of the weights that generated them
    seconds: float = 0.0
    verify_seconds: float = 0.0
    texts: list[str] = field(default_factory=list)


def stop_token_ids(tokenizer: Any, template: Any) -> list[int]:
    """The ids that end an assistant turn: EOS, and the template's end-of-turn token if any."""
    ids = [tokenizer.eos_id]
    eot = getattr(template, "special_ids", {}).get("<|eot_id|>")
    return ids + ([eot] if eot is not None and eot not in ids else [])


def generate_and_verify(
    engine: Any,
    prompts: Sequence[RLPrompt],
    *,
    tokenizer: Any,
    stop_ids: Sequence[int],
    n: int,
    temperature: float,
    max_tokens: int,
    seed: int | None,
    policy_version: int,
) -> Rollouts:
    """On rank 0: n samples per prompt, each scored by its prompt's verifier."""
    from megatron_tulu.rewards import verify

    t0 = time.perf_counter()
    samples = engine.generate(
        [p.prompt_ids for p in prompts], n=n, temperature=temperature, max_tokens=max_tokens,
        seed=seed, stop_token_ids=list(stop_ids),
    )  # fmt: skip
    t1 = time.perf_counter()
    out = Rollouts(
        prompt_ids=[], response_ids=[], vllm_logprobs=[], has_eos=[], correct=[], datasets=[],
        policy_version=policy_version, seconds=t1 - t0,
    )  # fmt: skip
    for prompt, group in zip(prompts, samples, strict=True):
        for s in group:
            ended = s.finish_reason == "stop" and bool(s.token_ids) and s.token_ids[-1] in stop_ids
            body = s.token_ids[:-1] if ended else s.token_ids
            text = tokenizer.decode(body, skip_special_tokens=True)
            result = verify(prompt.verifier, text, prompt.ground_truth)
            out.prompt_ids.append(list(prompt.prompt_ids))
            out.response_ids.append(list(s.token_ids))
            out.vllm_logprobs.append(list(s.logprobs))
            out.has_eos.append(ended)
            out.correct.append(bool(result.correct))
            out.datasets.append(prompt.dataset)
            out.texts.append(text)
    out.verify_seconds = time.perf_counter() - t1
    return out


def broadcast_rollouts(payload: Rollouts | BaseException | None) -> Rollouts:
    """Rank 0's rollouts (or its error) on every rank."""
    holder: list[Any] = [None]
    if dist.get_rank() == 0:
        holder[0] = (
            ("error", f"{type(payload).__name__}: {payload}")
            if isinstance(payload, BaseException)
            else ("ok", payload)
        )
    dist.broadcast_object_list(holder, src=0)
    kind, value = holder[0]
    if kind == "error":
        raise RolloutPhaseError(f"rollout generation failed on rank 0: {value}")
    return value


class Generator:
    """Rank 0's access to the engine, synchronous or one step ahead (asynchronous RLVR)."""

    def __init__(
        self, engine: Any, tokenizer: Any, stop_ids: Sequence[int], recipe_rl: Any, seed: int
    ) -> None:
        self.engine, self.tokenizer, self.rl, self.seed = engine, tokenizer, recipe_rl, seed
        self.stop_ids = list(stop_ids)
        self._pool = cf.ThreadPoolExecutor(max_workers=1, thread_name_prefix="mt-rollout")
        self._pending: tuple[int, cf.Future] | None = None

    def _run(self, prompts: Sequence[RLPrompt], step: int, version: int) -> Rollouts:
        return generate_and_verify(
            self.engine, prompts, tokenizer=self.tokenizer, stop_ids=self.stop_ids,
            n=self.rl.samples_per_prompt,
            temperature=self.rl.temperature, max_tokens=self.rl.max_response_tokens,
            seed=self.seed + 100_003 * step, policy_version=version,
        )  # fmt: skip

    def now(self, prompts: Sequence[RLPrompt], step: int, version: int) -> Rollouts | BaseException:
        try:
            return self._run(prompts, step, version)
        except Exception as exc:  # reported to every rank by broadcast_rollouts
            return exc

    def start(self, prompts: Sequence[RLPrompt], step: int, version: int) -> None:
        self._pending = (step, self._pool.submit(self._run, prompts, step, version))

    def has_pending(self, step: int) -> bool:
        return self._pending is not None and self._pending[0] == step

    def wait(self) -> Rollouts | BaseException:
        assert self._pending is not None
        _, future = self._pending
        self._pending = None
        try:
            return future.result()
        except Exception as exc:
            return exc

    def wait_idle(self) -> None:
        """Block until a generation started ahead (asynchronous mode) has finished; its result
        stays pending for :meth:`wait`."""
        if self._pending is not None:
            self._pending[1].exception()

    def close(self) -> None:
        self._pool.shutdown(wait=True, cancel_futures=True)


def greedy_accuracy(
    engine: Any,
    prompts: Sequence[RLPrompt],
    tokenizer: Any,
    stop_ids: Sequence[int],
    max_tokens: int,
) -> dict[str, float]:
    """On rank 0: greedy answers to held-out prompts, scored by their verifiers; accuracy
    overall and per dataset."""
    from megatron_tulu.rewards import verify

    samples = engine.generate(
        [p.prompt_ids for p in prompts], n=1, temperature=0.0, max_tokens=max_tokens,
        seed=0, stop_token_ids=list(stop_ids),
    )  # fmt: skip
    per: dict[str, list[bool]] = {}
    for prompt, (s,) in zip(prompts, samples, strict=True):
        ids = s.token_ids[:-1] if s.token_ids and s.token_ids[-1] in stop_ids else s.token_ids
        ok = verify(prompt.verifier, tokenizer.decode(ids, skip_special_tokens=True),
                    prompt.ground_truth).correct  # fmt: skip
        per.setdefault(prompt.dataset, []).append(bool(ok))
    every = [x for v in per.values() for x in v]
    out = {"eval_accuracy": sum(every) / max(len(every), 1)}
    out.update({f"eval_accuracy/{k}": sum(v) / len(v) for k, v in per.items()})
    return out
