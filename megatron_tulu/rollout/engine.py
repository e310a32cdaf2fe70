"""RolloutEngine: vLLM engine(s) used by trainer global rank 0.

Process layout, ``placement="local"`` (``multiprocess=True``, vLLM's default): each of the
``num_engines`` engines is an ``LLM`` whose engine core runs in its own process (with its vLLM
TP workers beside it), children of trainer rank 0. ``placement="external"``: each engine is an
engine host started by the launcher on its own GPUs/nodes (``rollout.host``); rank 0 holds one
connection per engine (``rollout.client``). The two kinds of engine handle have the same
methods, so everything below is one code path. A weight push joins trainer rank 0 and every
worker of every engine in ONE private group (rank 0: the trainer; engine ``e``'s worker ``w``:
``1 + e * tp + w``), so one broadcast reaches all engines.

Every call into vLLM runs on a helper (daemon) thread while the calling thread polls it and the
engine processes, so a dead engine raises :class:`RolloutEngineDied` within ~1 s instead of
hanging (vLLM's client can wait forever on an engine that was killed). vLLM is imported lazily:
this module is cheap to import on every rank.
"""

from __future__ import annotations

import concurrent.futures as cf
import contextlib
import time
from collections.abc import Callable, Iterable
from typing import TYPE_CHECKING, Any

import torch

from megatron_tulu.rollout.checks import PushChecker, hf_tensor_shapes
from megatron_tulu.rollout.config import RolloutConfig
from megatron_tulu.rollout.engine_proc import EngineHandle, MultiNode, in_thread, make_llm
from megatron_tulu.rollout.transport import (
    BucketSender,
    close_group,
    device_backend,
    open_group,
    polling_wait,
)
from megatron_tulu.rollout.types import RolloutEngineDied, Sample, SyncStats, WeightSyncError

if TYPE_CHECKING:
    from megatron_tulu.config import ModelConfig

_POLL_S = 0.05
_BROKEN_GROUP_WAIT_S = 30.0


class RolloutEngine:
    """vLLM engine(s) for rollouts: generate, score, receive pushed weights.

    Use as a context manager (``with RolloutEngine(cfg) as engine:``) or ``start()``/``close()``.
    Owned by trainer global rank 0 only; see :func:`megatron_tulu.rollout.push_policy_weights`
    for the collective push from every trainer rank.
    """

    def __init__(
        self,
        config: RolloutConfig,
        *,
        model: ModelConfig | None = None,
        load_format: str = "auto",
        multinode: MultiNode | None = None,
    ) -> None:
        """``model``: the policy's config (required for external engines, whose weights come
        from the first push; otherwise read from ``model_dir``). ``load_format="dummy"``
        starts local engines from random weights; ``multinode``: this process is node rank 0
        of a multi-node engine (engine hosts only)."""
        external = config.placement == "external"
        if config.model_dir is None and not external:
            raise ValueError(
                "RolloutConfig.model_dir is None: the engine needs the HF directory to start "
                "from (a recipe's rollout section leaves it unset; build the engine's config "
                "with megatron_tulu.config.rollout.engine_config, or pass model_dir)"
            )
        if external and (model is None or config.rendezvous_dir is None):
            raise ValueError(
                "rollout.placement is 'external': the client needs the policy's ModelConfig "
                f"(model={model!r}) and rollout.rendezvous_dir ({config.rendezvous_dir!r})"
            )
        self.config = config
        self.model = model
        self.load_format = load_format
        self.multinode = multinode
        self.engines: list[Any] = []  # EngineHandle (local) or RemoteEngineHandle (external)
        self._group: Any = None
        self._expected: dict[str, tuple[int, ...]] = {}
        self._broken: str | None = None

    # ---------------------------------------------------------------- lifecycle
    @property
    def dtype(self) -> torch.dtype:
        return getattr(torch, self.config.dtype)

    @property
    def device(self) -> torch.device:
        """Where pushed tensors must be for the group's backend (CUDA under NCCL)."""
        if torch.cuda.is_available():
            return torch.device("cuda", torch.cuda.current_device())
        return torch.device("cpu")

    def start(self) -> RolloutEngine:
        from megatron_tulu.models.hf_io import read_hf_config

        if self.engines:
            return self
        cfg = self.config
        self.model = self.model or read_hf_config(cfg.model_dir)
        self._expected = hf_tensor_shapes(self.model)
        try:
            if cfg.placement == "external":
                from megatron_tulu.rollout.client import connect_engines

                self.engines = connect_engines(cfg, self._expected)
                return self
            for index in range(cfg.num_engines):
                llm = make_llm(cfg, load_format=self.load_format, multinode=self.multinode)
                self.engines.append(EngineHandle(index, llm))
        except BaseException:
            self.close()
            raise
        return self

    def on_engine(self, index: int, what: str, fn: Callable[[Any], Any]) -> Any:
        """``fn(handle)`` for engine ``index``, on a helper thread while watching the engine
        (RolloutEngineDied as soon as it dies; the engine hosts serve requests with this)."""
        self._require_started()
        handle = self.engines[index]
        fns: list[Callable[[], Any] | None] = [None] * len(self.engines)
        fns[index] = lambda: fn(handle)
        return self._call_all(fns, what)[0]

    @property
    def expected_shapes(self) -> dict[str, tuple[int, ...]]:
        """{HF name: shape} of every tensor a full push contains."""
        return dict(self._expected)

    def close(self) -> None:
        if self._group is not None:
            close_group(self._group)
            self._group = None
        for engine in self.engines:
            with contextlib.suppress(Exception):
                engine.shutdown()
        self.engines = []

    def __enter__(self) -> RolloutEngine:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.close()

    def engine_pids(self) -> list[int]:
        """The engine-core process ids (the trainer's own pid for an in-process engine; an
        external engine's host process id, on its own node)."""
        return [e.pid for e in self.engines]

    def check_alive(self) -> None:
        """Raises RolloutEngineDied if any engine process has exited."""
        self._require_started()
        for engine in self.engines:
            engine.check_alive("a liveness check")

    def _require_started(self) -> None:
        if not self.engines:
            raise RuntimeError("RolloutEngine is not started: call start() or use `with`")
        if self._broken is not None:
            raise WeightSyncError(self._broken)

    # ---------------------------------------------------------------- calls
    def _call_all(self, fns: list[Callable[[], Any] | None], what: str) -> list[Any]:
        """Runs fns[e] against engine e concurrently; waits while watching the engines."""
        futures = {
            e: in_thread(fn, f"rollout-{e}-{what}") for e, fn in enumerate(fns) if fn is not None
        }
        return self._await(futures, what)

    def _await(
        self, futures: dict[int, cf.Future], what: str, timeout_s: float | None = None
    ) -> list[Any]:
        """Results of ``futures`` (keyed by engine index, in key order) while checking that
        those engines live; RolloutEngineDied as soon as one has exited."""
        from vllm.v1.engine.exceptions import EngineDeadError

        limit = self.config.call_timeout_s if timeout_s is None else timeout_s
        deadline = time.monotonic() + limit
        pending = set(futures.values())
        while pending:
            _, pending = cf.wait(pending, timeout=_POLL_S, return_when=cf.FIRST_COMPLETED)
            for e, future in futures.items():
                if future in pending:
                    self.engines[e].check_alive(what)
            if pending and time.monotonic() > deadline:
                raise RolloutEngineDied(
                    f"rollout engine call {what!r} did not answer within {limit:g} s: "
                    "treating the engine as hung"
                )
        results = []
        for e in sorted(futures):
            try:
                results.append(futures[e].result())
            except EngineDeadError:
                self.engines[e].check_alive(what)
                raise RolloutEngineDied(
                    f"rollout engine {e} reported itself dead during {what}"
                ) from None
        return results

    # ---------------------------------------------------------------- generation
    def generate(
        self,
        prompts: list[list[int]],
        *,
        n: int,
        temperature: float,
        top_p: float = 1.0,
        max_tokens: int,
        seed: int | None = None,
        stop_token_ids: list[int] | None = None,
        ignore_eos: bool = False,
    ) -> list[list[Sample]]:
        """``n`` samples per prompt (token ids in, token ids out; see :class:`Sample` for the
        log-probs: processed, i.e. at ``temperature`` after top-p).

        Prompt ``i`` goes to engine ``i % num_engines``; with ``seed`` set, prompt ``i`` is
        sampled with seed ``seed + i`` whatever the number of engines. The engine has no
        tokenizer, so EOS is NOT implied: pass the tokenizer's end ids (EOS, end-of-turn) in
        ``stop_token_ids``; a sample that ends on one has ``finish_reason == "stop"`` and that
        id as its last token. ``ignore_eos`` generates exactly ``max_tokens`` (tests).
        """
        self._require_started()
        if n < 1 or max_tokens < 1:
            raise ValueError(f"n ({n}) and max_tokens ({max_tokens}) must be >= 1")
        if temperature < 0 or not 0 < top_p <= 1:
            raise ValueError(
                f"temperature ({temperature}) must be >= 0 (0: greedy) and top_p ({top_p}) "
                "in (0, 1]"
            )
        for i, prompt in enumerate(prompts):
            if not prompt:
                raise ValueError(f"prompt {i} is empty: every prompt needs at least one token")

        def params(i: int) -> dict[str, Any]:  # vLLM SamplingParams keywords
            return {
                "n": n,
                "temperature": temperature,
                "top_p": top_p,
                "max_tokens": max_tokens,
                "seed": None if seed is None else seed + i,
                "stop_token_ids": stop_token_ids,
                "ignore_eos": ignore_eos,
                "logprobs": 0,
                "detokenize": False,
            }

        count = len(self.engines)
        shares = [list(range(e, len(prompts), count)) for e in range(count)]

        def job(engine: Any, idx: list[int]) -> Callable[[], Any] | None:
            if not idx:
                return None
            mine = [list(prompts[i]) for i in idx]
            plist = [params(i) for i in idx]
            return lambda: engine.generate(mine, plist)

        jobs = [job(e, s) for e, s in zip(self.engines, shares, strict=True)]
        outputs = self._call_all(jobs, "generate")
        samples: list[list[Sample]] = [[] for _ in prompts]
        active = [s for s in shares if s]
        for idx, outs in zip(active, outputs, strict=True):
            for i, group in zip(idx, outs, strict=True):
                samples[i] = group
        return samples

    def score_logprobs(
        self, sequences: list[list[int]], prompt_lens: list[int]
    ) -> list[list[float]]:
        """vLLM's log-probs of ``seq[prompt_len:]`` given what precedes each token.

        Computed as prompt log-probs, which vLLM returns at temperature 1 (no processing):
        ``log_softmax(logits)``. For tests and trainer-vs-engine drift checks.
        """
        self._require_started()
        if len(sequences) != len(prompt_lens):
            raise ValueError(f"{len(sequences)} sequences but {len(prompt_lens)} prompt_lens")
        for i, (seq, plen) in enumerate(zip(sequences, prompt_lens, strict=True)):
            if not 1 <= plen < len(seq):
                raise ValueError(
                    f"sequence {i}: prompt_len ({plen}) must be in [1, len(seq) = {len(seq)})"
                )
        engine = self.engines[0]
        seqs, plens = [list(s) for s in sequences], list(prompt_lens)
        (scores,) = self._call_all([lambda: engine.score(seqs, plens)], "score_logprobs")
        return scores

    # ---------------------------------------------------------------- weights
    def _sync_host(self) -> str:
        """Trainer rank 0's address in the weight-sync group, as the engines must reach it."""
        if self.config.placement == "external":
            from megatron_tulu.rollout.client import resolve_sync_host

            return resolve_sync_host(self.config, self.engines)
        return self.config.sync_host

    def _join_group(self) -> None:
        from megatron_tulu.rollout.network import free_port_on

        cfg = self.config
        host = self._sync_host()
        port = free_port_on(host)
        backend = device_backend()
        tp = cfg.vllm_tp

        def join(engine: Any) -> Callable[[], Any]:
            kwargs = {
                "host": host,
                "port": port,
                "rank_offset": 1 + engine.index * tp,
                "world_size": cfg.group_size,
                "backend": backend,
                "timeout_s": cfg.sync_timeout_s,
            }
            return lambda: engine.collective_rpc("mt_join_weight_group", kwargs)

        futures = {e.index: in_thread(join(e), f"rollout-{e.index}-join") for e in self.engines}
        mine = in_thread(
            lambda: open_group(
                host=host,
                port=port,
                rank=0,
                world_size=cfg.group_size,
                backend=backend,
                timeout_s=cfg.sync_timeout_s,
                device=self.device,
            ),
            "rollout-trainer-join",
        )
        try:
            self._await(futures, "joining the weight-sync group")
        except Exception as exc:
            raise WeightSyncError(
                f"the engines could not join the weight-sync group: {exc}"
            ) from exc
        self._group = mine.result(timeout=cfg.sync_timeout_s)

    def push_weights(
        self,
        named_tensors: Iterable[tuple[str, torch.Tensor]],
        *,
        bucket_bytes: int | None = None,
        validate: bool = True,
    ) -> SyncStats:
        """Broadcasts HF-named tensors (cast to the engine dtype) into every engine, in place,
        then resets the prefix caches (stale KV of old weights would otherwise be reused).

        A push must contain every weight of the model once. ``validate=False`` skips the
        trainer-side name/shape checks (the workers check anyway; tests use it to exercise the
        engine-side error path). On failure raises :class:`WeightSyncError` (engines alive:
        push everything again) or :class:`RolloutEngineDied`.
        """
        self._require_started()
        for engine in self.engines:
            engine.check_alive("push_weights")
        start = time.perf_counter()
        if self._group is None:
            self._join_group()
        checker = PushChecker(self._expected, where="push_weights") if validate else None
        rpcs = {
            e.index: in_thread(
                (lambda eng=e: eng.collective_rpc("mt_receive_weights")),
                f"rollout-{e.index}-receive",
            )
            for e in self.engines
        }

        def health() -> None:
            for e, future in rpcs.items():
                self.engines[e].check_alive("push_weights")
                if future.done() and future.exception() is not None:
                    raise WeightSyncError(f"engine {e}: {future.exception()}")

        sender = BucketSender(
            self._group,
            device=self.device,
            bucket_bytes=self.config.bucket_bytes if bucket_bytes is None else bucket_bytes,
            wait=polling_wait(health, timeout_s=self.config.sync_timeout_s),
            **self._reshard_plan(),
        )
        failure: BaseException | None = None
        group_ok = True  # False while a group operation is in flight, and after it failed
        try:
            for name, tensor in named_tensors:
                if checker is not None:
                    checker.check(name, tuple(tensor.shape))
                cast = tensor.detach().to(self.dtype)
                group_ok = False
                sender.add(name, cast)
                group_ok = True
            if checker is not None:
                checker.finish()
            group_ok = False
            sender.end()
            group_ok = True
        except BaseException as exc:
            failure = exc
            if group_ok:  # the stream stopped between buckets: tell the workers to stop too
                try:
                    group_ok = False
                    sender.abort(f"{type(exc).__name__}: {exc}")
                    group_ok = True
                except Exception:
                    pass
            if not group_ok:  # a broadcast failed half-way: the group cannot be reused
                close_group(self._group)
                self._group = None
        slowest = {"seconds": 0.0, "wait_seconds": 0.0}
        try:
            if isinstance(failure, RolloutEngineDied):
                raise failure
            # After a broken group a worker may sit in a broadcast until its timeout.
            per_engine = self._await(
                rpcs, "push_weights", None if group_ok else _BROKEN_GROUP_WAIT_S
            )
            slowest = max((w for workers in per_engine for w in workers), key=_seconds)
        except RolloutEngineDied:
            raise
        except Exception as exc:
            failure = failure or exc
        finally:
            self._reset_prefix_caches()
        if failure is not None:
            if not isinstance(failure, Exception):
                raise failure  # KeyboardInterrupt, SystemExit
            self._note_broken()
            if isinstance(failure, WeightSyncError):
                raise failure
            raise WeightSyncError(
                f"weight push failed: {failure}. The engines may hold a mix of old and new "
                "weights: push all weights again before generating"
            ) from failure
        return SyncStats(
            tensors=sender.tensors,
            bytes=sender.bytes,
            seconds=time.perf_counter() - start,
            buckets=sender.buckets,
            engine_seconds=slowest["seconds"],
            engine_wait_seconds=slowest["wait_seconds"],
        )

    def _reshard_plan(self) -> dict[str, Any]:
        """BucketSender arguments of a resharded push (none: broadcast whole tensors)."""
        cfg = self.config
        if not cfg.resharded_push or cfg.vllm_tp == 1:
            return {}
        from megatron_tulu.rollout.reshard import ShardRule

        m = self.model
        assert m is not None
        rule = ShardRule(tp=cfg.vllm_tp, num_heads=m.num_attention_heads,
                         num_kv_heads=m.num_query_groups, head_dim=m.head_dim)  # fmt: skip
        return {"shard_rule": rule, "num_engines": len(self.engines)}

    def _reset_prefix_caches(self) -> None:
        """Drops KV blocks computed with the old weights (skipped for dead engines)."""
        fns = [
            (lambda e=e: e.reset_prefix_cache()) if e.dead_reason is None else None
            for e in self.engines
        ]
        with contextlib.suppress(RolloutEngineDied):
            done = self._call_all(fns, "reset_prefix_cache")
            if not all(done):
                raise WeightSyncError(
                    "vLLM refused to reset its prefix cache after a weight push (requests "
                    "still running?): cached KV of the old weights could be reused"
                )

    def _note_broken(self) -> None:
        """After a failed push: an engine whose reload could not be finalised is unusable."""
        with contextlib.suppress(Exception):
            reasons = self._call_all(
                [lambda e=e: e.collective_rpc("mt_broken_reason") for e in self.engines],
                "mt_broken_reason",
            )
            for e, per_worker in enumerate(reasons):
                for reason in per_worker:
                    if reason:
                        self._broken = f"rollout engine {e}: {reason}"


def _seconds(worker_stats: dict[str, Any]) -> float:
    return worker_stats["seconds"]
