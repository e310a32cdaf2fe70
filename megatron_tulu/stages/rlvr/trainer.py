"""The RLVR loop (Tülu 3 stage 3): generate with vLLM, verify, learn, push weights.

One step (``training.train_steps`` counts them):
  1. rank 0 generates ``samples_per_prompt`` samples for ``prompts_per_step`` prompts through
     the vLLM engine it owns and scores them with the verifiers; every rank receives them;
  2. policy (old) and reference log-probs and, for PPO, values, forward-only;
  3. rewards (verifier score, no-EOS penalty, KL) -> GAE (PPO) or group-normalised (GRPO)
     advantages; ``ppo_epochs`` sweeps of mini-batch optimizer steps;
  4. the new policy weights are pushed into vLLM (layer by layer, gloo on CPU, NCCL on GPU).
With ``rlvr.asynchronous`` the samples of step t+1 are generated (with the weights of step t-1)
while step t trains: one step off-policy; the staleness is logged.

The whole RL state -- policy and value weights and optimizers, LR schedules, the prompt
position (the step number), every rank's RNG -- is saved under ``checkpoint_dir/policy`` and
``checkpoint_dir/value`` and resumes exactly (synchronous mode). If vLLM dies, the trainer saves
its state and exits with a clear error.
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.distributed as dist
from megatron.core import parallel_state as ps

from megatron_tulu.checkpoint.layout import read_latest
from megatron_tulu.checkpoint.native import load_checkpoint, save_checkpoint
from megatron_tulu.config import RecipeConfig, recipe_to_dict, save_resolved
from megatron_tulu.data.chat_templates import get_chat_template
from megatron_tulu.data.tokenizers import load_tokenizer
from megatron_tulu.models.llama import BuildOptions
from megatron_tulu.parallel import destroy_parallel, init_parallel
from megatron_tulu.stages.metrics import MetricsWriter
from megatron_tulu.stages.progress import Progress
from megatron_tulu.stages.rlvr.batch import build_rollout_batch
from megatron_tulu.stages.rlvr.engine_start import start_rollout_engine
from megatron_tulu.stages.rlvr.generation import (
    Generator,
    broadcast_rollouts,
    greedy_accuracy,
    stop_token_ids,
)
from megatron_tulu.stages.rlvr.models import build_policy, build_reference, build_value
from megatron_tulu.stages.rlvr.prompts import RLPrompt, read_rl_prompts
from megatron_tulu.stages.rlvr.update import learn
from megatron_tulu.stages.signals import StopSignal, write_status


@dataclass(kw_only=True)
class RLSummary:
    steps: int
    first_reward: float
    last_reward: float
    eval_accuracy: list[tuple[int, float]]
    output_dir: str


def _data(recipe: RecipeConfig):
    from megatron_tulu.stages.sft import task_files

    rl, data = recipe.rlvr, recipe.data
    if rl.prompt_file:
        if not data.tokenizer:
            raise ValueError(f"rlvr.prompt_file ({rl.prompt_file!r}) needs data.tokenizer")
        train, tok, evalf = rl.prompt_file, data.tokenizer, rl.eval_file
    else:
        train, tok = task_files(recipe, "rl_train.jsonl")
        evalf = rl.eval_file or str(Path(train).parent / "eval.jsonl")
    tokenizer = load_tokenizer(tok)
    template = get_chat_template(data.chat_template, tokenizer)
    prompts, report = read_rl_prompts(
        train, template, max_prompt_tokens=rl.max_prompt_tokens, bad_rows=data.bad_rows
    )
    eval_prompts: list[RLPrompt] = []
    if evalf and rl.eval_interval:
        eval_prompts, _ = read_rl_prompts(
            evalf, template, max_prompt_tokens=rl.max_prompt_tokens, bad_rows=data.bad_rows
        )
        eval_prompts = eval_prompts[: rl.eval_limit]
    if dist.get_rank() == 0:
        print(f"RL prompts {train}: {report.summary()}", flush=True)
    ref = {"path": str(Path(tok).resolve()), "chat_template": data.chat_template}
    return tokenizer, stop_token_ids(tokenizer, template), prompts, eval_prompts, ref


def step_prompts(prompts: list[RLPrompt], step: int, per_step: int, seed: int) -> list[RLPrompt]:
    """The prompts of RL step ``step`` (1-based): consecutive slices of a seeded permutation per
    pass over the data, so the position is a function of the step alone (exact resume)."""
    n = len(prompts)
    start = (step - 1) * per_step
    out = []
    for k in range(start, start + per_step):
        epoch, i = divmod(k, n)
        order = torch.randperm(n, generator=torch.Generator().manual_seed(seed + epoch))
        out.append(prompts[int(order[i])])
    return out


def _resume_step(recipe: RecipeConfig, root: Path, ppo: bool) -> int | None:
    mode = recipe.training.resume
    if mode == "none":
        return None
    found = [read_latest(root / "policy")] + ([read_latest(root / "value")] if ppo else [])
    common = None if any(s is None for s in found) else min(found)
    if mode == "latest" and common is None:
        raise FileNotFoundError(f"training.resume=latest but no RL checkpoint under {root}")
    if mode not in ("auto", "latest"):
        return int(mode)
    return common


def run_rlvr(recipe: RecipeConfig) -> RLSummary:
    from megatron_tulu.rollout.policy_sync import push_policy_weights

    world = int(os.environ.get("WORLD_SIZE", "1"))
    dims = recipe.resolve_parallel(world)
    t, rl = recipe.training, recipe.rlvr
    stop = StopSignal().install()  # SIGUSR1/SIGTERM: save after the step, all ranks together
    engine = generator = None
    try:
        init_parallel(dims, seed=t.seed)
        is_logger = dist.get_rank() == dist.get_world_size() - 1
        root = Path(t.resolved_checkpoint_dir())
        ppo = rl.algorithm == "ppo"
        resume = _resume_step(recipe, root, ppo)
        if dist.get_rank() == 0:
            save_resolved(recipe, Path(t.output_dir) / "config.yaml")
        options = BuildOptions(precision=t.precision, recompute=t.recompute)
        policy = build_policy(recipe, dims, options)
        value = build_value(recipe, dims, options) if ppo else None
        reference = build_reference(recipe, dims, options) if rl.kl_beta > 0 else None
        tokenizer, stop_ids, prompts, eval_prompts, tok_ref = _data(recipe)
        first = 1
        if resume is not None:
            info = load_checkpoint(policy, root / "policy", step=resume)
            if value is not None:
                load_checkpoint(value, root / "value", step=resume)
            first = info.step + 1
        writer = MetricsWriter(t.output_dir, enabled=is_logger, append=resume is not None)
        engine = start_rollout_engine(recipe)
        sync = push_policy_weights(policy.raw_chunks(), model=recipe.model, engine=engine)
        if dist.get_rank() == 0:
            generator = Generator(engine, tokenizer, stop_ids, rl, seed=t.seed)
        save_kwargs = {"recipe": recipe_to_dict(recipe), "tokenizer": tok_ref,
                       "keep_last": t.keep_last or None}  # fmt: skip

        saved = [first - 1]

        def save(step: int) -> None:
            if step <= saved[0] and step != 0:
                return  # already committed (e.g. the step just resumed from)
            saved[0] = step
            if value is not None:
                save_checkpoint(value, root / "value", step=step, consumed_samples=0, **save_kwargs)
            save_checkpoint(policy, root / "policy", step=step,
                            consumed_samples=step * rl.prompts_per_step, **save_kwargs)  # fmt: skip

        def evaluate(step: int) -> dict[str, float]:
            holder = [None]
            if dist.get_rank() == 0:
                holder[0] = greedy_accuracy(
                    engine, eval_prompts, tokenizer, stop_ids, rl.max_response_tokens
                )
            dist.broadcast_object_list(holder, src=0)
            return holder[0]

        evals: list[tuple[int, float]] = []
        if eval_prompts and resume is None:
            acc = evaluate(0)
            evals.append((0, acc["eval_accuracy"]))
            writer.log(0, acc)
        rewards: list[float] = []
        version = first - 1
        with Progress(t.train_steps, enabled=is_logger, label="rlvr", completed=first - 1) as bar:
            for step in range(first, t.train_steps + 1):
                t0 = time.perf_counter()
                batch_prompts = step_prompts(prompts, step, rl.prompts_per_step, t.seed)
                payload = None
                if generator is not None:
                    if generator.has_pending(step):
                        payload = generator.wait()
                    else:
                        payload = generator.now(batch_prompts, step, version)
                    if (
                        rl.asynchronous
                        and step < t.train_steps
                        and not isinstance(payload, BaseException)
                    ):  # the next step's samples, with these weights, while this step trains
                        nxt = step_prompts(prompts, step + 1, rl.prompts_per_step, t.seed)
                        generator.start(nxt, step + 1, version)
                try:
                    rollouts = broadcast_rollouts(payload)
                except Exception:
                    if step > 1:
                        save(step - 1)  # the weights of the last finished step
                    raise
                t_gen = time.perf_counter() - t0
                batch = build_rollout_batch(
                    rollouts.prompt_ids, rollouts.response_ids, rollouts.vllm_logprobs,
                    pad_id=tokenizer.pad_id, multiple=max(8, dims.tp),
                )  # fmt: skip
                outcome = learn(
                    recipe, step, rollouts, batch, policy=policy, value=value, reference=reference
                )
                version = step
                if generator is not None:
                    generator.wait_idle()  # the engine must be idle before weights change
                t1 = time.perf_counter()
                try:
                    sync = push_policy_weights(
                        policy.raw_chunks(), model=recipe.model, engine=engine
                    )
                except Exception:
                    save(step)
                    raise
                t_sync = time.perf_counter() - t1
                metrics = dict(outcome.metrics)
                metrics.update(
                    time_generation_s=t_gen, time_weight_sync_s=t_sync,
                    time_step_s=time.perf_counter() - t0,
                    staleness=step - 1 - rollouts.policy_version,
                    lr=policy.optimizer.param_groups[0]["lr"],
                )  # fmt: skip
                # rank 0 pushed; the logging rank reports what it sent
                sent = [None if sync is None else (sync.bytes, sync.bytes_per_s)]
                dist.broadcast_object_list(sent, src=0)
                if sent[0] is not None:
                    metrics["weight_sync_bytes"], metrics["weight_sync_bytes_per_s"] = sent[0]
                if (
                    eval_prompts
                    and rl.eval_interval
                    and (step % rl.eval_interval == 0 or step == t.train_steps)
                ):
                    acc = evaluate(step)
                    evals.append((step, acc["eval_accuracy"]))
                    metrics.update(acc)
                writer.log(step, metrics)
                rewards.append(metrics["reward"])
                bar.update(reward=metrics["reward"], acc=metrics["verifier_accuracy"])
                if t.save_interval and (step % t.save_interval == 0 or step == t.train_steps):
                    save(step)
                signalled = stop.should_stop()  # collective
                if signalled or (t.exit_interval and step - first + 1 >= t.exit_interval):
                    save(step)
                    if dist.get_rank() == 0:
                        why = f"signal {stop.name}" if signalled else "exit_interval"
                        print(f"saved checkpoint at step {step} after {why}; exiting", flush=True)
                        write_status("stopped", step=step, reason=why, checkpoint=str(root))
                    break
        writer.plot("reward", "reward.png", title="RLVR reward")
        if evals:
            writer.plot("eval_accuracy", "eval_accuracy.png", title="held-out verifier accuracy")
        writer.close()
        return RLSummary(
            steps=len(rewards), first_reward=rewards[0] if rewards else float("nan"),
            last_reward=rewards[-1] if rewards else float("nan"), eval_accuracy=evals,
            output_dir=t.output_dir,
        )  # fmt: skip
    finally:
        stop.uninstall()
        if generator is not None:
            generator.close()
        if engine is not None:
            engine.close()
        if ps.model_parallel_is_initialized():
            destroy_parallel()
