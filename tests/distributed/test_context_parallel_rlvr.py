"""RLVR's learning phase with context parallelism on gloo (SDPA attention), against CP1.

One RL step's learning phase (:func:`megatron_tulu.stages.rlvr.update.learn`) on a fixed
synthetic rollout batch -- no vLLM: random prompts and responses, fixed verifier outcomes --
for PPO (policy, helper value model on the trainer's layout, reference) and GRPO. Every run
loads the same random HF weights (tiny model, fp32) and steps with SGD of lr 1, two PPO epochs
over one mini-batch: the first step's update is the gradient; the second starts from moved
weights, so the ratios differ from 1 and the clip fraction, the approximate KL(old || new) and
GRPO's k3 term are not trivially 0. Checked at CP2 against CP1: the per-token old log-probs
and values collected by ``forward_per_token`` (whole rows, global order), the weights after the
phase, and every reported metric but the timings; both CP ranks report the same.

Tolerances: CP changes only the order of float32 reductions (attention over the gathered keys
in one piece, K/V gradients summed over the two ranks, loss sums added rank by rank), so
differences are float32 rounding. Log-probs (O(10)) and values ~1e-6 abs (bound 1e-5); the
weights after two lr-1 SGD steps (gradients O(1e-2)) ~1e-7 (bound 1e-5, as
test_sft_dpo_steps.py's DPO); metrics are means of O(1) terms: relative 1e-4 with 1e-5 abs
(the whitened advantages and GAE amplify rounding a little). A missing CP reduction in the
losses (checked below) changes the step by O(1e-2) or more.
"""

from __future__ import annotations

import functools
import os

import pytest
import torch

from megatron_tulu.config import model_preset

pytestmark = pytest.mark.slow
MODEL = "tiny"
ROWS, PROMPTS = 8, 4  # 4 prompts x 2 samples; one mini-batch of 8, micro-batches of 2
TIMING = ("time_forward_s", "time_train_s")


def _rollouts():
    """Fixed rollouts: prompts of 4-8 tokens, responses of 9-19 (response tokens in every
    CP chunk of the 24 token positions the rows pad to), mixed verifier outcomes, one response
    without EOS."""
    from megatron_tulu.stages.rlvr.generation import Rollouts

    gen = torch.Generator().manual_seed(7)
    vocab = model_preset(MODEL).vocab_size
    prompts = [torch.randint(3, vocab, (4 + i % 5,), generator=gen).tolist() for i in range(ROWS)]
    responses = [
        torch.randint(3, vocab, (9 + (5 * i) % 15,), generator=gen).tolist() for i in range(ROWS)
    ]
    logps = [(-torch.rand(len(r), generator=gen) * 5).tolist() for r in responses]
    return Rollouts(
        prompt_ids=prompts, response_ids=responses, vllm_logprobs=logps,
        has_eos=[i != 3 for i in range(ROWS)], correct=[i % 3 == 0 for i in range(ROWS)],
        datasets=["gsm8k" if i % 2 else "math" for i in range(ROWS)], policy_version=0,
    )  # fmt: skip


def _worker(algorithm: str, cp: int, skip_cp_sums: bool = False, fused_output: bool = False):
    from megatron.core import parallel_state as ps

    import megatron_tulu.losses.ppo as ppo
    from megatron_tulu.config import recipe_from_dict
    from megatron_tulu.engine.forward import measure_step
    from megatron_tulu.models.llama import BuildOptions
    from megatron_tulu.parallel import destroy_parallel, init_parallel
    from megatron_tulu.stages.rlvr.batch import build_rollout_batch, forward_per_token
    from megatron_tulu.stages.rlvr.models import build_policy, build_reference, build_value
    from megatron_tulu.stages.rlvr.stage import rollout_width_multiple
    from megatron_tulu.stages.rlvr.update import learn, response_logprobs, response_values

    if skip_cp_sums:  # the deliberate bug: each CP rank's loss, count and report stay local
        ppo._whole_over_cp = lambda sums: sums
    hf_dir = os.environ["MT_TEST_HF_DIR"]
    world = int(os.environ["WORLD_SIZE"])
    recipe = recipe_from_dict({}, [
        f"model.preset={MODEL}", f"parallel.cp={cp}", "parallel.micro_batch_size=2",
        f"parallel.global_batch_size={ROWS}", "training.stage=rlvr", "training.train_steps=1",
        # SDPA on both sides: "auto" picks it for cp > 1 (CPU), asked for by name at cp 1
        f"training.attention={'auto' if cp > 1 else 'sdpa'}", f"training.init_from_hf={hf_dir}",
        f"rlvr.algorithm={algorithm}", f"rlvr.prompts_per_step={PROMPTS}",
        "rlvr.samples_per_prompt=2", "rlvr.ppo_epochs=2", "rlvr.kl_beta=0.05",
        "value.num_layers=2", f"value.init_from_hf={hf_dir}", "value.lr=1.0",
        "optimizer.optimizer=sgd", "optimizer.lr=1.0", "optimizer.weight_decay=0.0",
        "optimizer.clip_grad=0.0", "optimizer.use_distributed_optimizer=false",
        f"training.fused_output={str(fused_output).lower()}",
    ])  # fmt: skip
    dims = recipe.resolve_parallel(world)
    init_parallel(dims, seed=0)
    try:
        options = BuildOptions(attention=recipe.training.attention)
        policy = build_policy(recipe, dims, options)
        value = build_value(recipe, dims, options) if algorithm == "ppo" else None
        reference = build_reference(recipe, dims, options)
        rollouts = _rollouts()
        batch = build_rollout_batch(
            rollouts.prompt_ids, rollouts.response_ids, rollouts.vllm_logprobs, pad_id=0,
            multiple=rollout_width_multiple(dims),
        )  # fmt: skip
        logp_step = measure_step("token_logp", functools.partial(
            response_logprobs, vocab_size=recipe.model.vocab_size, temperature=1.0,
        ))  # fmt: skip
        collected = {"old_logp": forward_per_token(policy, batch, logp_step, "token_logp")}
        if value is not None:
            values_step = measure_step("values", response_values)
            collected["values"] = forward_per_token(value, batch, values_step, "values")
            # the zero head gives zero values: check the body's hidden states gathered too
            collected["values_random_head"] = _values_with_head(value, batch, values_step)
        outcome = learn(recipe, 1, rollouts, batch, policy=policy, value=value, reference=reference)
        weights = {"policy": _params(policy)}  # TP1: whole tensors on every rank
        if value is not None:
            weights["value"] = _params(value)
        metrics = {k: v for k, v in outcome.metrics.items() if k not in TIMING}
        return {"cp_rank": ps.get_context_parallel_rank(), "width": batch.seq.shape[1],
                "collected": collected, "weights": weights, "metrics": metrics}  # fmt: skip
    finally:
        destroy_parallel()


def _params(engine) -> dict[str, torch.Tensor]:
    return {
        f"{i}.{name}": p.detach().float().clone()
        for i, chunk in enumerate(engine.raw_chunks())
        for name, p in chunk.named_parameters()
    }


@torch.no_grad()
def _values_with_head(value, batch, step) -> torch.Tensor:
    """Values under a fixed random head (restored afterwards)."""
    head = value.raw_chunks()[-1].output_layer.weight
    saved = head.detach().clone()
    head.copy_(torch.randn(head.shape, generator=torch.Generator().manual_seed(1)))
    from megatron_tulu.stages.rlvr.batch import forward_per_token

    try:
        return forward_per_token(value, batch, step, "values")
    finally:
        head.copy_(saved)


@pytest.fixture(scope="module", autouse=True)
def hf_dir(tmp_path_factory):
    from megatron_tulu.models.synthetic import make_random_hf_dir

    d = make_random_hf_dir(tmp_path_factory.mktemp("hf") / "hf", model_preset(MODEL))
    os.environ["MT_TEST_HF_DIR"] = str(d)
    yield d
    os.environ.pop("MT_TEST_HF_DIR", None)


def _run(world: int, *args):
    from megatron_tulu.platform.spawn import run_ranks

    return run_ranks(_worker, world, *args)


@functools.cache
def _cp1(algorithm: str):
    return _run(1, algorithm, 1)[0]


def _max_diff(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> float:
    return max((a[k] - b[k]).abs().max().item() for k in a)


def _assert_metrics_equal(mine: dict[str, float], base: dict[str, float]) -> None:
    assert mine.keys() == base.keys()
    for key, expected in base.items():
        assert mine[key] == pytest.approx(expected, rel=1e-4, abs=1e-5), key


@pytest.mark.parametrize("algorithm", ["ppo", "grpo"])
def test_rlvr_learn_at_cp2_equals_cp1(algorithm: str) -> None:
    base = _cp1(algorithm)
    m = base["metrics"]
    # the step did something: responses moved, so the second epoch clipped and drifted
    assert m["approx_kl_old_new"] > 1e-6 and m["clip_fraction"] > 0.0
    outs = _run(2, algorithm, 2)
    assert [o["cp_rank"] for o in outs] == [0, 1]
    for out in outs:  # both CP ranks: whole rows in global order, the same step and report
        assert out["width"] == base["width"]
        for key, expected in base["collected"].items():
            got = out["collected"][key]
            assert got.shape == expected.shape, key
            torch.testing.assert_close(got, expected, rtol=0, atol=1e-5, msg=key)
        for name, weights in base["weights"].items():
            assert out["weights"][name].keys() == weights.keys()
            assert _max_diff(out["weights"][name], weights) <= 1e-5, name
        _assert_metrics_equal(out["metrics"], m)
    if algorithm == "ppo":
        assert base["collected"]["values_random_head"].abs().max() > 1e-2
        assert m["value_loss"] > 0.0
    else:
        assert m["kl_k3_loss_term"] > 0.0


@pytest.mark.parametrize("algorithm", ["ppo", "grpo"])
def test_rlvr_learn_with_the_fused_output_equals_the_logits_path(algorithm: str) -> None:
    """training.fused_output: the policy loss runs the output layer itself
    (ops.linear_token_loss; each token's derivative of the clipped surrogate, + GRPO's KL term,
    taken per chunk). At CP2 against CP1 through full logits: the same weights and metrics
    within the tolerances above (fp32 sums in chunks of another shape)."""
    base = _cp1(algorithm)
    for out in _run(2, algorithm, 2, False, True):
        for name, weights in base["weights"].items():
            assert _max_diff(out["weights"][name], weights) <= 1e-5, name
        _assert_metrics_equal(out["metrics"], base["metrics"])


def test_the_ppo_sums_must_be_whole_over_cp() -> None:
    """The test above can fail: losses summed per CP rank only (the count then entering once,
    from rank 0's half) give another step and other reports."""
    base = _cp1("ppo")
    out = _run(2, "ppo", 2, True)[0]
    assert _max_diff(out["weights"]["policy"], base["weights"]["policy"]) > 1e-4
    assert out["metrics"]["policy_loss"] != pytest.approx(base["metrics"]["policy_loss"])


def test_recipes_take_cp_for_rlvr_but_not_the_value_models_own_groups() -> None:
    from megatron_tulu.config import load_recipe

    common = ["parallel.cp=2", "training.seq_length=64", "training.stage=rlvr"]
    for algorithm in ("ppo", "grpo"):
        recipe = load_recipe(None, [*common, f"rlvr.algorithm={algorithm}",
                                    "rlvr.samples_per_prompt=2"])  # fmt: skip
        assert recipe.resolve_parallel(4).cp == 2
    own = load_recipe(None, [*common, "value.tp=1"])
    with pytest.raises(ValueError, match=r"parallel\.cp \(2\) > 1 with value\.tp \(1\): PPO's "
                                         r"value model on its own groups"):  # fmt: skip
        own.resolve_parallel(2)
    grpo = load_recipe(None, [*common, "value.tp=1", "rlvr.algorithm=grpo",
                              "rlvr.samples_per_prompt=2"])  # fmt: skip
    assert grpo.resolve_parallel(2).cp == 2  # GRPO builds no value model
    local = load_recipe(None, [*common, "training.attention=local"])
    with pytest.raises(ValueError, match=r"parallel\.cp \(2\) > 1 with training\.attention "
                                         r"'local'"):  # fmt: skip
        local.resolve_parallel(2)
