"""The RLVR stage (Tülu 3 stage 3): generate with vLLM, verify, learn, push weights.

One step (``training.train_steps`` counts them):
  1. rank 0 generates ``samples_per_prompt`` samples for ``prompts_per_step`` prompts through
     the vLLM engine it owns and scores them with the verifiers; every rank receives them;
  2. policy (old) and reference log-probs and, for PPO, values, forward-only;
  3. rewards (verifier score, no-EOS penalty, KL) -> GAE (PPO) or group-normalised (GRPO)
     advantages; ``ppo_epochs`` sweeps of mini-batch optimizer steps (:mod:`.update`);
  4. the new policy weights are pushed into vLLM (layer by layer, gloo on CPU, NCCL on GPU).
With ``rlvr.asynchronous`` the samples of step t+1 are generated (with the weights of step t-1)
while step t trains: one step off-policy; the staleness is logged.

The whole RL state -- policy and value weights and optimizers, LR schedules, the prompt
position (the step number), every rank's RNG -- is saved under ``checkpoint_dir/policy`` and
``checkpoint_dir/value`` and resumes exactly (synchronous mode). If vLLM dies, the stage saves
the last finished step and every rank raises the same error. Start-up, signals, resume, metrics,
saving and the summary are the shared loop's (:func:`megatron_tulu.stages.loop.run_stage`).
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch.distributed as dist

from megatron_tulu.checkpoint.native import load_checkpoint, save_checkpoint
from megatron_tulu.config import ParallelDims, RecipeConfig, recipe_to_dict
from megatron_tulu.data.chat_templates import get_chat_template
from megatron_tulu.data.sampler import ShardedSampler
from megatron_tulu.data.tokenizers import load_tokenizer
from megatron_tulu.models.llama import BuildOptions
from megatron_tulu.rollout.policy_sync import push_policy_weights
from megatron_tulu.stages.data_files import (
    record_mixture,
    task_files,
    tokenised_table,
    tokenizer_ref,
)
from megatron_tulu.stages.loop import StageContext, StepOutput
from megatron_tulu.stages.rlvr.batch import build_rollout_batch
from megatron_tulu.stages.rlvr.engine_start import start_rollout_engine
from megatron_tulu.stages.rlvr.generation import (
    Generator,
    broadcast_rollouts,
    greedy_accuracy,
    stop_token_ids,
)
from megatron_tulu.stages.rlvr.models import build_policy, build_reference, build_value
from megatron_tulu.stages.rlvr.prompts import RLPrompt, prompts_from_table, read_rl_prompts
from megatron_tulu.stages.rlvr.update import learn


@dataclass(kw_only=True)
class RLSummary:
    steps: int
    first_reward: float
    last_reward: float
    eval_accuracy: list[tuple[int, float]]
    output_dir: str
    stopped_by: str = ""

    def done_line(self) -> str:
        evals = ", ".join(f"step {s}: {a:.3f}" for s, a in self.eval_accuracy)
        return (
            f"done: {self.steps} RLVR steps, reward {self.first_reward:.3f} -> "
            f"{self.last_reward:.3f}; held-out accuracy {evals or 'not evaluated'}; "
            f"metrics in {self.output_dir}/metrics.jsonl"
        )


def _data(recipe: RecipeConfig):
    rl, data = recipe.rlvr, recipe.data
    train, tok = task_files(recipe, "rl_train.jsonl")  # data.train_file, or the embedded task's
    evalf = rl.eval_file or (None if data.sources else _default_eval_file(Path(train).parent))
    tokenizer = load_tokenizer(tok)
    template = get_chat_template(data.chat_template, tokenizer)
    table, meta, _ = tokenised_table(recipe, "rl", str(tok), train)
    prompts, report = prompts_from_table(
        table, label=train, max_prompt_tokens=rl.max_prompt_tokens, bad_rows=data.bad_rows
    )
    record_mixture(recipe, meta, report)
    eval_prompts: list[RLPrompt] = []
    if evalf and rl.eval_interval:
        eval_prompts, _ = read_rl_prompts(
            evalf, template, max_prompt_tokens=rl.max_prompt_tokens, bad_rows=data.bad_rows
        )
        eval_prompts = eval_prompts[: rl.eval_limit]
    if dist.get_rank() == 0:
        print(f"RL prompts {train}: {report.summary()}", flush=True)
    ref = tokenizer_ref(str(tok), data.chat_template)
    return tokenizer, stop_token_ids(tokenizer, template), prompts, eval_prompts, ref


def _default_eval_file(data_dir: Path) -> str:
    """In-training evaluation reads the validation split (``valid.jsonl``, which the embedded
    task writes) so that the test split (``eval.jsonl``) is only ever used to report; a data
    directory without a validation file falls back to ``eval.jsonl``."""
    valid = data_dir / "valid.jsonl"
    return str(valid if valid.exists() else data_dir / "eval.jsonl")


def rollout_width_multiple(dims: ParallelDims) -> int:
    """What the rollout batch's token width (``L - 1``) is rounded up to: 8, and a multiple of
    ``2 * cp`` (context parallelism's chunks) whose ``1 / cp`` share still splits over ``tp``
    (sequence parallelism cuts each CP rank's positions over the TP ranks)."""
    return math.lcm(8, dims.tp * dims.cp, 2 * dims.cp)


def prompt_stream(num_prompts: int, per_step: int, seed: int) -> ShardedSampler:
    """The RL prompts as the data stream every stage reads (:class:`ShardedSampler`: a seeded
    permutation per pass over the data); rank 0 draws whole steps from it."""
    return ShardedSampler(num_samples=num_prompts, global_batch_size=per_step, seed=seed)


def step_prompts(prompts: list[RLPrompt], stream: ShardedSampler, step: int) -> list[RLPrompt]:
    """The prompts of RL step ``step`` (1-based): the stream's global batch at position
    ``(step - 1) * per_step``, so the position is a function of the step alone (exact resume)."""
    start = (step - 1) * stream.global_batch_size
    return [prompts[i] for i in stream.global_batch(start)]


class RLVRStage:
    label = "rlvr"

    def __init__(self, ctx: StageContext) -> None:
        self.ctx, self.recipe = ctx, ctx.recipe
        self.t, self.rl = ctx.recipe.training, ctx.recipe.rlvr
        self.root = Path(self.t.resolved_checkpoint_dir())
        self.ppo = self.rl.algorithm == "ppo"
        self.engine: Any = None
        self.generator: Generator | None = None
        self.evals: list[tuple[int, float]] = []
        self.rewards: list[float] = []
        self.last_saved = 0

    @property
    def plots(self) -> list[tuple[str, str, str]]:
        out = [("reward", "reward.png", "RLVR reward")]
        if self.evals:
            out.append(("eval_accuracy", "eval_accuracy.png", "held-out verifier accuracy"))
        return out

    def checkpoint_dirs(self) -> list[Path]:
        return [self.root / "policy"] + ([self.root / "value"] if self.ppo else [])

    def can_save(self) -> bool:
        return True

    def setup(self, resume_step: int | None) -> int:
        recipe, t, dims = self.recipe, self.t, self.ctx.dims
        options = BuildOptions(precision=t.precision, recompute=t.recompute, attention=t.attention)
        self.policy = build_policy(recipe, dims, options)
        self.value = build_value(recipe, dims, options) if self.ppo else None
        self.reference = build_reference(recipe, dims, options) if self.rl.kl_beta > 0 else None
        self.tokenizer, self.stop_ids, self.prompts, self.eval_prompts, self.tok_ref = _data(recipe)
        self.stream = prompt_stream(len(self.prompts), self.rl.prompts_per_step, t.seed)
        first = 1
        if resume_step is not None:
            info = load_checkpoint(self.policy, self.root / "policy", step=resume_step)
            if self.value is not None:
                load_checkpoint(self.value, self.root / "value", step=resume_step)
            first = info.step + 1
        self.last_saved = first - 1
        self.version = first - 1
        self.engine = start_rollout_engine(recipe)
        self._push()
        if dist.get_rank() == 0:
            self.generator = Generator(
                self.engine, self.tokenizer, self.stop_ids, self.rl, seed=t.seed
            )
        if self.eval_prompts and resume_step is None:
            acc = self._evaluate()
            self.evals.append((0, acc["eval_accuracy"]))
            assert self.ctx.writer is not None
            self.ctx.writer.log(0, acc)
        return first

    def _push(self):
        return push_policy_weights(
            self.policy.raw_chunks(), model=self.recipe.model, engine=self.engine
        )

    def _evaluate(self) -> dict[str, float]:
        holder: list[Any] = [None]
        if dist.get_rank() == 0:
            holder[0] = greedy_accuracy(
                self.engine, self.eval_prompts, self.tokenizer, self.stop_ids,
                self.rl.max_response_tokens,
            )  # fmt: skip
        dist.broadcast_object_list(holder, src=0)
        return holder[0]

    def _generate(self, step: int) -> Any:
        """Rank 0: this step's samples (started one step ahead in asynchronous mode)."""
        gen, rl, t = self.generator, self.rl, self.t
        if gen is None:
            return None
        if gen.has_pending(step):
            payload = gen.wait()
        else:
            payload = gen.now(step_prompts(self.prompts, self.stream, step), step, self.version)
        if rl.asynchronous and step < t.train_steps and not isinstance(payload, BaseException):
            # the next step's samples, with these weights, while this step trains
            nxt = step_prompts(self.prompts, self.stream, step + 1)
            gen.start(nxt, step + 1, self.version)
        return payload

    def step(self, step: int) -> StepOutput:
        t0 = time.perf_counter()
        try:
            rollouts = broadcast_rollouts(self._generate(step))
        except Exception:
            if step > 1:
                self.save(step - 1)  # the weights of the last finished step
            raise
        t_gen = time.perf_counter() - t0
        batch = build_rollout_batch(
            rollouts.prompt_ids, rollouts.response_ids, rollouts.vllm_logprobs,
            pad_id=self.tokenizer.pad_id, multiple=rollout_width_multiple(self.ctx.dims),
        )  # fmt: skip
        outcome = learn(
            self.recipe, step, rollouts, batch, policy=self.policy, value=self.value,
            reference=self.reference,
        )  # fmt: skip
        self.version = step
        if self.generator is not None:
            self.generator.wait_idle()  # the engine must be idle before weights change
        t1 = time.perf_counter()
        try:
            sync = self._push()
        except Exception:
            self.save(step)
            raise
        metrics = dict(outcome.metrics)
        metrics.update(
            time_generation_s=t_gen, time_weight_sync_s=time.perf_counter() - t1,
            time_step_s=time.perf_counter() - t0,
            staleness=step - 1 - rollouts.policy_version,
            lr=self.policy.optimizer.param_groups[0]["lr"],
        )  # fmt: skip
        # rank 0 pushed; the logging rank reports what it sent
        sent = [None if sync is None else (sync.bytes, sync.bytes_per_s)]
        dist.broadcast_object_list(sent, src=0)
        if sent[0] is not None:
            metrics["weight_sync_bytes"], metrics["weight_sync_bytes_per_s"] = sent[0]
        evaluated = bool(
            self.eval_prompts and self.rl.eval_interval
            and (step % self.rl.eval_interval == 0 or step == self.t.train_steps)
        )  # fmt: skip
        if evaluated:
            acc = self._evaluate()
            self.evals.append((step, acc["eval_accuracy"]))
            metrics.update(acc)
        self.rewards.append(metrics["reward"])
        bar = {"reward": metrics["reward"], "acc": metrics["verifier_accuracy"]}
        return StepOutput(metrics=metrics, bar=bar, force_log=evaluated)

    def save(self, step: int) -> Path | None:
        if step <= self.last_saved and step != 0:
            return self.root  # already committed (e.g. the step just resumed from)
        self.last_saved = step
        kwargs = {"recipe": recipe_to_dict(self.recipe), "tokenizer": self.tok_ref,
                  "keep_last": self.t.keep_last or None}  # fmt: skip
        if self.value is not None:
            save_checkpoint(self.value, self.root / "value", step=step, consumed_samples=0,
                            **kwargs)  # fmt: skip
        save_checkpoint(self.policy, self.root / "policy", step=step,
                        consumed_samples=step * self.rl.prompts_per_step, **kwargs)  # fmt: skip
        return self.root

    def summary(self, *, stopped_by: str, elapsed_s: float) -> RLSummary:
        del elapsed_s
        r = self.rewards
        return RLSummary(
            steps=len(r), first_reward=r[0] if r else float("nan"),
            last_reward=r[-1] if r else float("nan"), eval_accuracy=self.evals,
            output_dir=self.t.output_dir, stopped_by=stopped_by,
        )  # fmt: skip

    def close(self) -> None:
        if self.generator is not None:
            self.generator.close()
        if self.engine is not None:
            self.engine.close()


def rlvr_stage(ctx: StageContext) -> RLVRStage:
    return RLVRStage(ctx)
