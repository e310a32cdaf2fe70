"""Results and errors of the rollout engine (no vLLM import: cheap to import on every rank)."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True, kw_only=True)
class Sample:
    """One generated continuation of one prompt.

    ``logprobs[i]`` is vLLM's log-probability of ``token_ids[i]`` given the prompt and the tokens
    before it, as *processed* log-probs (``logprobs_mode="processed_logprobs"``): the log-softmax
    of ``logits / temperature`` after top-p/top-k masking and renormalisation. With ``top_p=1``
    that is ``log_softmax(logits / temperature)``, the quantity a policy-gradient trainer
    computes at the sampling temperature; with greedy decoding (temperature 0) no scaling is
    applied, i.e. ``log_softmax(logits)``.
    """

    token_ids: list[int]
    logprobs: list[float]
    finish_reason: str  # "stop" (EOS or a stop token) | "length" (max_tokens reached)


@dataclass(frozen=True, kw_only=True)
class SyncStats:
    """One weight push: what was sent and how long it took on trainer rank 0."""

    tensors: int
    bytes: int
    seconds: float  # trainer rank 0, wall: gathers (if any) + broadcasts + engines' reload
    buckets: int = 0
    engine_seconds: float = 0.0  # slowest vLLM worker: receiving + vLLM's reload/repack
    engine_wait_seconds: float = 0.0  # of which that worker sat in broadcasts (sender-bound)

    @property
    def bytes_per_s(self) -> float:
        return self.bytes / self.seconds if self.seconds > 0 else float("inf")

    def __str__(self) -> str:
        return (
            f"{self.tensors} tensors, {self.bytes / 2**20:.1f} MiB in {self.seconds:.3f} s "
            f"({self.bytes_per_s / 2**20:.0f} MiB/s, {self.buckets} buckets)"
        )


class RolloutError(RuntimeError):
    """Base class of the rollout engine's errors."""


class RolloutEngineDied(RolloutError):
    """A vLLM engine process exited (crash, OOM kill, signal). Not recoverable in place: save
    state and exit, or start a new engine and push the weights again."""


class WeightSyncError(RolloutError):
    """A weight push failed. The engine may hold a mix of old and new weights: push every
    tensor again (a full push) before generating."""
